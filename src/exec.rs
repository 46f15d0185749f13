//! `liftoff exec`: run one program in the sandbox from the command line.
//!
//! Order: [`ExecArgs`] (parsed by main) → [`run`]: read the sandbox settings
//! of the configuration, build the [`SandboxSpec`], spawn, wait for the job,
//! the timeout, or SIGINT/SIGTERM/SIGHUP (cancel: SIGTERM to the tree, the
//! kill grace, SIGKILL), remove the temporary workspace. When anything must
//! be masked (`--mask`, `SPACELIFT_MASK_ENVS`, the pool token and key), or
//! with `--log-file` or `--logs-timeout`, the job's merged output goes through
//! the run-log pipeline (`crate::logs`): masked, chunked, spooled, delivered
//! to the terminal or the file; the timeouts are the pipeline's watchdog. Returns the exit
//! status: the job's own, 128+N for signal N, 124 on timeout, 125 when
//! liftoff itself failed (the reason on stderr, prefixed `liftoff:`).

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::config::{Config, Env, Network, parse};
use crate::logs::Pipeline;
use crate::logs::redact::{Matcher, RedactorBuilder};
use crate::logs::sink::{DeliverError, FileSink, Sink, StdoutSink};
use crate::logs::spool::Chunk;
use crate::sandbox::cancel::{CancelSignals, Event, wait_event};
use crate::sandbox::{self, BindMount, Exit, Limits, SandboxSpec, Stdio};

/// Exit status when the timeout killed the job (as timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when liftoff itself failed.
pub const EXIT_LIFTOFF: i32 = 125;

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Host directory mounted read-write at /mnt/workspace (default: a fresh temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// A root directory (an unpacked runner image) instead of the host's /usr, /bin, /sbin, /lib.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Extra bind mount SRC:DST[:ro|rw] (read-write by default).
    #[arg(long = "mount", value_name = "SRC:DST[:ro|rw]")]
    pub mounts: Vec<String>,
    /// host, none (loopback only), or a namespace name under /run/netns (default: SPACELIFT_WORKER_NETWORK, else host).
    #[arg(long, value_name = "host|none|NAME")]
    pub network: Option<String>,
    /// Set a variable in the job's environment.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Pass a variable of liftoff's own environment to the job.
    #[arg(long = "pass-env", value_name = "NAME")]
    pub pass_env: Vec<String>,
    /// Memory limit in bytes (or 512MiB, 2GiB...; default LIFTOFF_JOB_MEMORY, else host memory minus 384MiB).
    #[arg(long, value_name = "BYTES")]
    pub memory: Option<String>,
    /// Maximum number of processes (default LIFTOFF_JOB_PIDS, else 4096).
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Kill the job after this long (Go duration: 30s, 5m, 1h30m); exit status 124.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Working directory inside the sandbox (default /mnt/workspace).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Hostname inside the sandbox (default: one of its own).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Mask the value of variable NAME (in the job's environment, else liftoff's) in the output; SPACELIFT_MASK_ENVS is honoured too.
    #[arg(long = "mask", value_name = "NAME")]
    pub masks: Vec<String>,
    /// Write the (masked) output to FILE instead of the terminal.
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
    /// Kill the job when it prints nothing for this long (Go duration); exit status 124.
    #[arg(long, value_name = "DURATION")]
    pub logs_timeout: Option<String>,
    /// Run a plain (unencrypted) run spec (JSON, see docs/protocol.md) through the whole run pipeline locally: policy, source, environment, provider cache, sandboxed steps, masked logs on the terminal (or --log-file). No control plane.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["workspace", "root", "mounts", "network", "env", "pass_env", "memory", "pids", "timeout", "cwd", "hostname", "logs_timeout", "masks"])]
    pub spec: Option<PathBuf>,
    /// The program and its arguments.
    #[arg(
        last = true,
        required_unless_present = "spec",
        value_name = "PROGRAM [ARGS]..."
    )]
    pub command: Vec<String>,
}

impl ExecArgs {
    /// No flags: everything from the configuration (as the run executor and
    /// the benchmarks build their sandboxes).
    pub fn for_command(command: Vec<String>) -> ExecArgs {
        ExecArgs {
            workspace: None,
            root: None,
            mounts: Vec::new(),
            network: None,
            env: Vec::new(),
            pass_env: Vec::new(),
            memory: None,
            pids: None,
            timeout: None,
            cwd: None,
            hostname: None,
            masks: Vec::new(),
            log_file: None,
            logs_timeout: None,
            spec: None,
            command,
        }
    }
}

/// Settings of the configuration `liftoff exec` uses.
const SANDBOX_VARS: &[&str] = &[
    "SPACELIFT_WORKER_NETWORK",
    "SPACELIFT_WORKER_RUNTIME",
    "LIFTOFF_LANDLOCK",
    "LIFTOFF_JOB_MEMORY",
    "LIFTOFF_JOB_PIDS",
    "LIFTOFF_JOB_CPUS",
    "LIFTOFF_KILL_GRACE",
    "SPACELIFT_MASK_ENVS",
];

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("liftoff: {msg}");
    EXIT_LIFTOFF
}

/// A temporary workspace removed on drop.
struct TempWorkspace(PathBuf);

impl Drop for TempWorkspace {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_workspace() -> std::io::Result<TempWorkspace> {
    let base = std::env::temp_dir();
    for i in 0..16 {
        let p = base.join(format!("{}-ws{i}", sandbox::unique_name()));
        match std::fs::create_dir(&p) {
            Ok(()) => return Ok(TempWorkspace(p)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other("no free temporary directory name"))
}

/// Builds the spec from the flags and the configuration.
pub fn build_spec(
    args: &ExecArgs,
    env: &Env,
    config: &Config,
    workspace: PathBuf,
) -> Result<SandboxSpec, String> {
    let mut spec = SandboxSpec::new(workspace, args.command.clone());
    spec.runtime = config.runtime;
    spec.landlock = config.landlock;
    spec.root = args.root.clone();
    spec.network = match &args.network {
        Some(n) => Network::parse(n, std::path::Path::new(crate::config::NETNS_DIR))
            .map_err(|e| format!("--network {n}: {e}"))?,
        None => config.network.clone(),
    };
    for m in &args.mounts {
        let m = parse::mount(m).map_err(|e| format!("--mount: {e}"))?;
        spec.mounts.push(BindMount {
            source: m.host,
            target: m.sandbox,
            writable: !m.read_only,
        });
    }
    for item in &args.env {
        let Some((k, v)) = item.split_once('=') else {
            return Err(format!("--env {item:?}: expected NAME=VALUE"));
        };
        if !parse::is_env_name(k) {
            return Err(format!("--env {item:?}: {k:?} is not a variable name"));
        }
        spec.env.retain(|(n, _)| n != k);
        spec.env.push((k.to_string(), v.to_string()));
    }
    for name in &args.pass_env {
        if !parse::is_env_name(name) {
            return Err(format!("--pass-env {name:?}: not a variable name"));
        }
        if let Some(v) = env.get(name) {
            spec.env.retain(|(n, _)| n != name);
            spec.env.push((name.clone(), v.to_string()));
        }
    }
    let memory = match &args.memory {
        Some(m) => Some(parse::byte_size(m).map_err(|e| format!("--memory {m}: {e}"))?),
        None => config.job_memory.or_else(sandbox::auto_memory_limit),
    };
    spec.limits = Limits {
        memory,
        pids: Some(args.pids.unwrap_or(config.job_pids)),
        cpus: config.job_cpus,
        ..Limits::default()
    };
    if let Some(c) = &args.cwd {
        if !c.is_absolute() {
            return Err(format!("--cwd {}: must be an absolute path", c.display()));
        }
        spec.cwd = Some(c.clone());
    }
    if let Some(h) = &args.hostname {
        spec.hostname = h.clone();
    } else {
        spec.hostname = "liftoff".into();
    }
    spec.stdin = Stdio::Inherit;
    spec.stdout = Stdio::Inherit;
    spec.stderr = Stdio::Inherit;
    Ok(spec)
}

/// Runs `liftoff exec`; returns the process exit status.
pub fn run(args: ExecArgs, env: &Env) -> i32 {
    if let Some(spec) = &args.spec {
        return run_spec(spec, args.log_file.as_deref(), env);
    }
    let loaded = Config::load(env);
    let errors: Vec<String> = loaded
        .errors
        .iter()
        .filter(|e| SANDBOX_VARS.contains(&e.var.as_str()))
        .map(|e| format!("{}: {}", e.var, e.message))
        .collect();
    if !errors.is_empty() {
        return fail(errors.join("; "));
    }
    let config = loaded.config;
    let timeout = match &args.timeout {
        Some(t) => match parse::duration(t) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => return fail(format!("--timeout {t}: must be longer than 0s")),
            Err(e) => return fail(format!("--timeout {t}: {e}")),
        },
        None => None,
    };
    let logs_timeout = match &args.logs_timeout {
        Some(t) => match parse::duration(t) {
            Ok(d) if !d.is_zero() => Some(d),
            Ok(_) => return fail(format!("--logs-timeout {t}: must be longer than 0s")),
            Err(e) => return fail(format!("--logs-timeout {t}: {e}")),
        },
        None => None,
    };
    let (workspace, _temp) = match &args.workspace {
        Some(w) => (w.clone(), None),
        None => match temp_workspace() {
            Ok(t) => (t.0.clone(), Some(t)),
            Err(e) => return fail(format!("create a temporary workspace: {e}")),
        },
    };
    let mut spec = match build_spec(&args, env, &config, workspace) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let masking = match masking(&args, env, &config, &spec) {
        Ok(m) => m,
        Err(e) => return fail(e),
    };
    if !masking.is_empty() || args.log_file.is_some() || logs_timeout.is_some() {
        spec.stdout = Stdio::Piped;
        spec.stderr = Stdio::Merged;
        let run = PipedRun {
            masking,
            timeout,
            logs_timeout,
            log_file: args.log_file.clone(),
            stdout_json: config.run_logs_on_stdout,
        };
        return run_piped(spec, &config, run);
    }
    let signals = CancelSignals::block();
    let mut sb = match sandbox::spawn(&spec) {
        Ok(sb) => sb,
        Err(e) => return fail(e),
    };
    for w in &sb.warnings {
        eprintln!("liftoff: warning: {w}");
    }
    let show_timings = env.get("LIFTOFF_EXEC_TIMINGS").is_some();
    if show_timings {
        for (what, t) in &sb.timings {
            eprintln!(
                "liftoff: timing: {:8.3} ms  {what}",
                t.as_secs_f64() * 1000.0
            );
        }
    }
    let waited = Instant::now();
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut timed_out = false;
    let outcome = match wait_event(&sb, signals.as_ref(), deadline) {
        Event::Exited => sb.wait(),
        Event::Cancel(_) => sb.terminate(config.kill_grace),
        Event::Deadline => {
            timed_out = true;
            sb.terminate(config.kill_grace)
        }
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if show_timings {
        eprintln!(
            "liftoff: timing: {:8.3} ms  job ran, tree ended, cgroups removed",
            waited.elapsed().as_secs_f64() * 1000.0
        );
    }
    if timed_out {
        eprintln!(
            "liftoff: the job timed out after {} and was killed",
            parse::format_duration(timeout.unwrap_or_default())
        );
        return EXIT_TIMEOUT;
    }
    if outcome.oom_killed {
        eprintln!(
            "liftoff: the job ran out of memory (limit {} bytes) and was killed",
            spec.limits.memory.unwrap_or(0)
        );
    }
    match outcome.exit {
        Exit::Code(c) => c,
        Exit::Signal(_) => outcome.exit_code(),
    }
}

/// The secrets `liftoff exec` masks: `--mask` and `SPACELIFT_MASK_ENVS`
/// values (from the job's environment, else liftoff's), and the pool token
/// and key when liftoff has them.
fn masking(
    args: &ExecArgs,
    env: &Env,
    config: &Config,
    spec: &SandboxSpec,
) -> Result<Arc<Matcher>, String> {
    let mut builder = RedactorBuilder::new();
    for name in &args.masks {
        if !parse::is_env_name(name) {
            return Err(format!("--mask {name:?}: not a variable name"));
        }
    }
    let lookup = |name: &str| -> Option<String> {
        spec.env
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| env.get(name).map(str::to_string))
    };
    let names = config
        .mask_envs
        .iter()
        .chain(args.masks.iter())
        .map(String::as_str);
    for w in crate::logs::mask_env_secrets(&mut builder, names, &lookup) {
        eprintln!("liftoff: warning: {w}");
    }
    crate::logs::mask_pool_secrets(&mut builder, config, &|n| env.get(n).map(str::to_string));
    Ok(builder.build())
}

struct PipedRun {
    masking: Arc<Matcher>,
    timeout: Option<Duration>,
    logs_timeout: Option<Duration>,
    log_file: Option<PathBuf>,
    stdout_json: bool,
}

/// Effectively no limit, and still safe to add to an `Instant`.
const NO_LIMIT: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The masked raw output on the terminal.
struct TerminalSink;

impl Sink for TerminalSink {
    fn describe(&self) -> String {
        "the terminal".into()
    }

    fn deliver(&mut self, _chunk: &Chunk, body: &mut File) -> Result<(), DeliverError> {
        let mut out = std::io::stdout().lock();
        std::io::copy(body, &mut out)
            .and_then(|_| out.flush())
            .map_err(|e| DeliverError::fatal(format!("cannot write to standard output: {e}")))
    }
}

/// SIGTERM / SIGKILL of the job's tree, and its exit (the top process's
/// pidfd), for the pipeline's watchdog.
struct TreeKill<'a>(&'a sandbox::Sandbox);

impl crate::logs::Kill for TreeKill<'_> {
    fn terminate(&mut self) {
        let _ = self.0.signal(libc::SIGTERM);
    }
    fn kill(&mut self) {
        self.0.kill();
    }
    fn wait_exit(&mut self, wait: Duration) -> bool {
        crate::logs::fd_ready(self.0.pidfd(), wait)
    }
}

/// Runs the job with its output through the log pipeline.
fn run_piped(spec: SandboxSpec, config: &Config, run: PipedRun) -> i32 {
    let run_id = spec.name.clone();
    let spool = match tempfile_dir() {
        Ok(d) => d,
        Err(e) => return fail(format!("create a spool directory: {e}")),
    };
    let sink: Box<dyn Sink> = match (&run.log_file, run.stdout_json) {
        (Some(path), _) => match FileSink::create(path) {
            Ok(f) => Box::new(f),
            Err(e) => return fail(e),
        },
        (None, true) => Box::new(StdoutSink::stdout(&run_id)),
        (None, false) => Box::new(TerminalSink),
    };
    let opts = crate::logs::Options {
        logs_timeout: run.logs_timeout.unwrap_or(NO_LIMIT),
        run_timeout: run.timeout.unwrap_or(NO_LIMIT),
        kill_grace: config.kill_grace,
        ..crate::logs::Options::new(&run_id, spool.0.clone())
    };
    let mut pipeline = match Pipeline::start(opts, run.masking, sink, None) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    let signals = CancelSignals::block();
    let mut sb = match sandbox::spawn(&spec) {
        Ok(sb) => sb,
        Err(e) => return fail(e),
    };
    for w in &sb.warnings {
        let _ = pipeline.line(&format!("liftoff: warning: {w}"));
    }
    let Some(output) = sb.stdout.take() else {
        return fail("the job's output pipe is missing");
    };
    let ended = std::thread::scope(|s| {
        let sbr = &sb;
        let grace = config.kill_grace;
        s.spawn(move || {
            // Cancel signals while the output is pumped: SIGTERM the tree,
            // SIGKILL it after the grace period.
            if let Event::Cancel(_) = wait_event(sbr, signals.as_ref(), None) {
                let _ = sbr.signal(libc::SIGTERM);
                if let Event::Deadline = wait_event(sbr, None, Some(Instant::now() + grace)) {
                    sbr.kill();
                }
            }
        });
        let r = pipeline.pump(output, &mut TreeKill(sbr));
        if r.is_err() {
            sbr.kill();
        }
        r
    });
    let outcome = sb.wait();
    let report = pipeline.finish();
    for w in &report.warnings {
        eprintln!("liftoff: warning: {w}");
    }
    if let Some(e) = &report.delivered.error {
        return fail(format!("the job's output was not delivered: {e}"));
    }
    let ended = match ended {
        Ok(e) => e,
        Err(e) => return fail(e),
    };
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    if let Some(reason) = ended.reason() {
        eprintln!("liftoff: {reason}");
        if ended == crate::logs::Ended::DiskFull {
            return EXIT_LIFTOFF;
        }
        return EXIT_TIMEOUT;
    }
    if outcome.oom_killed {
        eprintln!(
            "liftoff: the job ran out of memory (limit {} bytes) and was killed",
            spec.limits.memory.unwrap_or(0)
        );
    }
    outcome.exit_code()
}

/// `liftoff exec --spec FILE`: one run through the run pipeline, locally.
/// State (workspace, spool) goes to `LIFTOFF_STATE_DIR` when set, else to a
/// temporary directory removed afterwards; the provider cache is
/// `LIFTOFF_PROVIDER_CACHE_DIR` when set, else one inside that state.
/// Exit status: the run's (its failing step's exit code), 1 when the run
/// failed or was rejected (the reason on stderr), 125 when liftoff failed.
fn run_spec(path: &std::path::Path, log_file: Option<&std::path::Path>, env: &Env) -> i32 {
    use crate::run::executor::SandboxExecutor;
    use crate::run::spec::RunSpec;
    use crate::worker::{RunEvent, RunEvents};
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) => return fail(format!("--spec {}: {e}", path.display())),
    };
    let spec = match RunSpec::from_json(&text) {
        Ok(s) => s,
        Err(e) => return fail(format!("--spec {}: {e}", path.display())),
    };
    let loaded = Config::load(env);
    let errors: Vec<String> = loaded
        .errors
        .iter()
        .filter(|e| e.var != "SPACELIFT_TOKEN" && !e.var.contains("PRIVATE_KEY"))
        .map(|e| e.to_string())
        .collect();
    if !errors.is_empty() {
        return fail(errors.join("; "));
    }
    let mut config = loaded.config;
    let _temp_state = if env.get("LIFTOFF_STATE_DIR").is_none() {
        match tempfile_dir() {
            Ok(t) => {
                config.state_dir = t.0.clone();
                Some(t)
            }
            Err(e) => return fail(format!("create a state directory: {e}")),
        }
    } else {
        None
    };
    if env.get("LIFTOFF_PROVIDER_CACHE_DIR").is_none() {
        config.provider_cache_dir = config.state_dir.join("providers");
    }
    let sink: Box<dyn Sink> = match log_file {
        Some(p) => match FileSink::create(p) {
            Ok(f) => Box::new(f),
            Err(e) => return fail(e),
        },
        None if config.run_logs_on_stdout => Box::new(StdoutSink::stdout(&spec.run_id)),
        None => Box::new(TerminalSink),
    };
    let executor = match SandboxExecutor::new(config, env.clone(), None) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let (tx, rx) = smol::channel::unbounded();
    let run_id = spec.run_id.clone();
    executor.run_plain(spec, Some(sink), RunEvents::new(&run_id, tx));
    let mut code = EXIT_LIFTOFF;
    while let Ok((_, event)) = rx.try_recv() {
        match event {
            RunEvent::Finished { exit_code } => {
                eprintln!("liftoff: run {run_id} finished: exit code {exit_code}");
                code = exit_code;
            }
            RunEvent::Failed { reason } => {
                eprintln!("liftoff: run {run_id} failed: {reason}");
                code = 1;
            }
            RunEvent::Rejected { reason } => {
                eprintln!("liftoff: run {run_id} {reason}");
                code = 1;
            }
            _ => {}
        }
    }
    code
}

/// A private temporary directory, removed on drop.
fn tempfile_dir() -> std::io::Result<TempWorkspace> {
    let d = temp_workspace()?;
    std::fs::set_permissions(&d.0, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrap {
        #[command(flatten)]
        args: ExecArgs,
    }

    fn args(v: &[&str]) -> ExecArgs {
        let mut all = vec!["exec"];
        all.extend_from_slice(v);
        Wrap::try_parse_from(all).unwrap().args
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn spec_from_flags() {
        let e = env(&[("PASSME", "1"), ("SECRET", "x")]);
        let config = Config::load(&e).config;
        let a = args(&[
            "--env",
            "A=b=c",
            "--pass-env",
            "PASSME",
            "--pass-env",
            "UNSET",
            "--memory",
            "512MiB",
            "--pids",
            "100",
            "--cwd",
            "/tmp",
            "--hostname",
            "h1",
            "--network",
            "none",
            "--mount",
            "/usr:/opt/u:ro",
            "--",
            "prog",
            "arg",
        ]);
        let s = build_spec(&a, &e, &config, "/tmp".into()).unwrap();
        assert_eq!(s.argv, vec!["prog", "arg"]);
        assert!(s.env.contains(&("A".into(), "b=c".into())));
        assert!(s.env.contains(&("PASSME".into(), "1".into())));
        assert!(!s.env.iter().any(|(k, _)| k == "SECRET" || k == "UNSET"));
        assert_eq!(s.limits.memory, Some(512 << 20));
        assert_eq!(s.limits.pids, Some(100));
        assert_eq!(s.hostname, "h1");
        assert_eq!(s.network, Network::None);
        assert_eq!(s.mounts.len(), 1);
        assert!(!s.mounts[0].writable);
    }

    #[test]
    fn bad_flags_are_errors() {
        let e = env(&[]);
        let config = Config::load(&e).config;
        for bad in [
            vec!["--env", "NOVALUE", "--", "x"],
            vec!["--env", "1X=2", "--", "x"],
            vec!["--memory", "lots", "--", "x"],
            vec!["--cwd", "relative", "--", "x"],
            vec!["--network", "bridge", "--", "x"],
        ] {
            assert!(
                build_spec(&args(&bad), &e, &config, "/tmp".into()).is_err(),
                "{bad:?}"
            );
        }
    }
}
