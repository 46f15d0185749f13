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
//! A bad flag is such a failure: every flag is checked ([`validate_workspace`],
//! [`build_spec`], the durations) before anything is created or changed, and
//! the message names the flag.
//!
//! With `--spec`, SIGINT, SIGTERM and SIGHUP cancel the run as the control
//! plane's cancel does (SIGTERM to the job's tree, the kill grace, SIGKILL);
//! the run's directory and cgroups are removed and the exit status is 128+N.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;

use crate::config::{Config, Env, Network, parse};
use crate::logs::Pipeline;
use crate::logs::redact::{Matcher, RedactorBuilder};
use crate::logs::sink::{FileSink, Sink, StdoutSink, TerminalSink};
use crate::sandbox::cancel::{CancelSignals, Event, wait_event};
use crate::sandbox::{self, BindMount, Exit, SandboxSpec, Stdio};

/// Exit status when the timeout killed the job (as timeout(1)).
pub const EXIT_TIMEOUT: i32 = 124;
/// Exit status when liftoff itself failed.
pub const EXIT_LIFTOFF: i32 = 125;

#[derive(Args, Debug, Clone)]
pub struct ExecArgs {
    /// Host directory mounted read-write at /mnt/workspace, dedicated to the job: as root it is given to the job's host id (default: a fresh temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    pub workspace: Option<PathBuf>,
    /// A root directory (an unpacked runner image holding usr/ or bin/; never / nor a host system directory) instead of the host's /usr, /bin, /sbin, /lib.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Extra bind mount SRC:DST[:ro|rw] (read-write by default); write a : or , inside a path as \: or \,. Not over /mnt/workspace, /proc, /sys or /dev; SRC that breaks isolation needs LIFTOFF_ALLOW_UNSAFE_MOUNTS=true.
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
    /// Memory limit in bytes, at least 16MiB (or 512MiB, 2GiB...; default LIFTOFF_JOB_MEMORY, else host memory minus 384MiB).
    #[arg(long, value_name = "BYTES")]
    pub memory: Option<String>,
    /// Maximum number of processes (default LIFTOFF_JOB_PIDS, else 4096).
    #[arg(long, value_name = "N")]
    pub pids: Option<u64>,
    /// Kill the job after this long (Go duration: 30s, 5m, 1h30m; at most 720h); exit status 124.
    #[arg(long, value_name = "DURATION")]
    pub timeout: Option<String>,
    /// Working directory inside the sandbox (default /mnt/workspace).
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,
    /// Hostname inside the sandbox (default liftoff).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
    /// Make the job's whole root in its own mount namespace instead of
    /// copying the ready-made one (a root launcher keeps those under
    /// /run/liftoff/roots): slower, for comparison and diagnosis.
    #[arg(long)]
    pub fresh_root: bool,
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
    #[arg(long, value_name = "FILE", conflicts_with_all = ["workspace", "root", "mounts", "network", "env", "pass_env", "memory", "pids", "timeout", "cwd", "hostname", "fresh_root", "logs_timeout", "masks"])]
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
            fresh_root: false,
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

/// Largest run spec `--spec` reads.
pub const MAX_SPEC_BYTES: u64 = crate::run::spec::MAX_SPEC_BYTES as u64;
/// Smallest `--memory` (as `LIFTOFF_JOB_MEMORY`).
pub const MIN_MEMORY: u64 = 16 << 20;
/// Fewest `--pids` (as `LIFTOFF_JOB_PIDS`).
pub const MIN_PIDS: u64 = 16;

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
    let mut spec = SandboxSpec::from_config(config, workspace, args.command.clone());
    spec.root = match &args.root {
        Some(r) => Some(parse::image_root(r).map_err(|e| format!("--root {e}"))?),
        None => None,
    };
    spec.network = match &args.network {
        Some(n) => Network::parse(n, std::path::Path::new(crate::config::NETNS_DIR))
            .map_err(|e| format!("--network {n}: {e}"))?,
        None => spec.network.clone(),
    };
    for m in &args.mounts {
        let item = m;
        let m = parse::mount(m).map_err(|e| format!("--mount: {e}"))?;
        if let Some(risk) = parse::mount_risk(&m, &config.state_dir) {
            if config.allow_unsafe_mounts {
                eprintln!(
                    "liftoff: warning: --mount {item:?} {risk} (allowed by {}=true)",
                    parse::ALLOW_UNSAFE_MOUNTS
                );
            } else {
                return Err(format!(
                    "--mount {item:?} {risk}: that breaks the sandbox's isolation; remove it, or set {}=true to allow it",
                    parse::ALLOW_UNSAFE_MOUNTS
                ));
            }
        }
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
        if crate::config::vars::is_launcher_secret(name) {
            return Err(format!(
                "--pass-env {name}: liftoff's own secret is never passed to a job; give the job its own value with --env if it really needs one"
            ));
        }
        if let Some(v) = env.get(name) {
            spec.env.retain(|(n, _)| n != name);
            spec.env.push((name.clone(), v.to_string()));
        }
    }
    let memory = match &args.memory {
        Some(m) => match parse::byte_size(m) {
            Ok(n) if n >= MIN_MEMORY => Some(n),
            Ok(_) => {
                return Err(format!(
                    "--memory {m}: is below the 16MiB minimum; expected a size such as 512MiB"
                ));
            }
            Err(e) => return Err(format!("--memory {m}: {e}")),
        },
        None => spec.limits.memory,
    };
    if let Some(p) = args.pids.filter(|p| *p < MIN_PIDS) {
        return Err(format!(
            "--pids {p}: expected a number of processes, at least {MIN_PIDS}"
        ));
    }
    spec.limits.memory = memory;
    if let Some(p) = args.pids {
        spec.limits.pids = Some(p);
    }
    if let Some(c) = &args.cwd {
        if !c.is_absolute() || c.to_str().is_none_or(|t| t.chars().any(char::is_control)) {
            return Err(format!(
                "--cwd {:?}: must be an absolute path without control characters",
                c
            ));
        }
        spec.cwd = Some(c.clone());
    }
    if let Some(h) = &args.hostname {
        parse::hostname(h).map_err(|e| format!("--hostname {h:?}: {e}"))?;
        spec.hostname = h.clone();
    } else {
        spec.hostname = "liftoff".into();
    }
    spec.ready_root = !args.fresh_root;
    spec.stdin = Stdio::Inherit;
    spec.stdout = Stdio::Inherit;
    spec.stderr = Stdio::Inherit;
    Ok(spec)
}

/// A `--timeout` / `--logs-timeout` value: longer than 0, at most 30 days.
pub fn flag_duration(flag: &str, value: Option<&str>) -> Result<Option<Duration>, String> {
    value
        .map(|t| {
            parse::bounded_duration(t, parse::MAX_TIMEOUT).map_err(|e| format!("{flag} {t:?}: {e}"))
        })
        .transpose()
}

/// Every flag but `--workspace` checked without touching anything: the
/// durations, `--mask` names, and [`build_spec`] on a placeholder workspace
/// (its spec, for the caller to set the workspace). `liftoff exec` calls it
/// before it creates or changes anything; tests call it to see what a flag
/// does.
pub fn validate_flags(args: &ExecArgs, env: &Env, config: &Config) -> Result<SandboxSpec, String> {
    flag_duration("--timeout", args.timeout.as_deref())?;
    flag_duration("--logs-timeout", args.logs_timeout.as_deref())?;
    for name in &args.masks {
        if !parse::is_env_name(name) {
            return Err(format!("--mask {name:?}: not a variable name"));
        }
    }
    if let Some(n) = &args.network {
        if n.chars().any(char::is_control) {
            return Err(format!(
                "--network {n:?}: expected host, none, or a namespace name"
            ));
        }
    }
    build_spec(args, env, config, PathBuf::from("/nonexistent-workspace"))
}

/// Host directories `--workspace` may never be, nor lie inside: the job
/// would own them.
const SYSTEM_TREES: &[&str] = &[
    "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/boot", "/proc",
    "/sys", "/dev", "/run",
];

/// `--workspace DIR`, checked before anything changes: an existing
/// directory (symlinks resolved), not a host system directory nor inside
/// one, not a top-level directory. As root, liftoff gives the directory to
/// the job's host id and says so on stderr when it changes the owner.
/// Returns the resolved path.
pub fn validate_workspace(dir: &std::path::Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(dir).map_err(|e| {
        format!(
            "--workspace {}: {e}; expected an existing directory dedicated to the job",
            dir.display()
        )
    })?;
    let meta =
        std::fs::metadata(&real).map_err(|e| format!("--workspace {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "--workspace {}: is not a directory; expected a directory dedicated to the job",
            dir.display()
        ));
    }
    let system = SYSTEM_TREES.iter().find(|t| real.starts_with(t));
    if let Some(t) = system {
        return Err(format!(
            "--workspace {}: lies in the host's {t}, and the job would own it: give the job a dedicated directory, such as one made with mktemp -d",
            dir.display()
        ));
    }
    if real.components().count() < 3 || meta.mode() & 0o1000 != 0 {
        return Err(format!(
            "--workspace {}: is a shared or top-level directory, and the job would own it: give the job a dedicated directory, such as one made with mktemp -d",
            dir.display()
        ));
    }
    let host = sandbox::namespaces::host_ids(sandbox::DEFAULT_HOST_ID);
    // /proc/self belongs to the effective uid.
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root && meta.uid() != host.0 {
        eprintln!(
            "liftoff: --workspace {}: its owner changes from uid {} to the job's host id {} (files inside keep theirs)",
            real.display(),
            meta.uid(),
            host.0
        );
    }
    Ok(real)
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
    let (timeout, logs_timeout) = match (
        flag_duration("--timeout", args.timeout.as_deref()),
        flag_duration("--logs-timeout", args.logs_timeout.as_deref()),
    ) {
        (Ok(t), Ok(l)) => (t, l),
        (Err(e), _) | (_, Err(e)) => return fail(e),
    };
    let mut spec = match validate_flags(&args, env, &config) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let (workspace, _temp) = match &args.workspace {
        Some(w) => match validate_workspace(w) {
            Ok(w) => (w, None),
            Err(e) => return fail(e),
        },
        None => match temp_workspace() {
            Ok(t) => (t.0.clone(), Some(t)),
            Err(e) => return fail(format!("create a temporary workspace: {e}")),
        },
    };
    spec.workspace = workspace;
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
    let show_timings = env.get("LIFTOFF_EXEC_TIMINGS").is_some();
    sandbox::time_child_phases(show_timings);
    let mut sb = match sandbox::spawn(&spec) {
        Ok(sb) => sb,
        Err(e) => return fail(e),
    };
    for w in &sb.warnings {
        eprintln!("liftoff: warning: {w}");
    }
    // The cgroups' remover waits for init from now on: nothing to start
    // once the job has ended.
    sb.remove_cgroups_at_exit();
    if show_timings {
        for (what, t) in &sb.timings {
            eprintln!(
                "liftoff: timing: {:8.3} ms  {what}",
                t.as_secs_f64() * 1000.0
            );
        }
    }
    let waited = Instant::now();
    let deadline = timeout.map(|t| parse::later(Instant::now(), t));
    let mut timed_out = false;
    let outcome = match wait_event(&sb, signals.as_ref(), deadline) {
        // The status as soon as init reports it: the namespaces' teardown
        // and the cgroups' removal finish after this process exits.
        Event::Exited => sb.wait_detached(),
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
            "liftoff: timing: {:8.3} ms  job ran and ended (cgroups removed when its init is gone)",
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
        (None, false) => match TerminalSink::stdout() {
            Ok(t) => Box::new(t),
            Err(e) => return fail(e),
        },
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
    sb.remove_cgroups_at_exit();
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
        // The job comes first: the pump's wake-ups do not preempt it.
        let _batch = sandbox::sched::Batch::enter();
        let r = pipeline.pump(output, &mut TreeKill(sbr));
        if r.is_err() {
            sbr.kill();
        }
        r
    });
    // As in `run`: the status without waiting for the namespaces' teardown.
    let outcome = sb.wait_detached();
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
    use crate::run::{RunEvent, RunEvents};
    let text = match read_spec(path) {
        Ok(t) => t,
        Err(e) => return fail(e),
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
        None => match TerminalSink::stdout() {
            Ok(t) => Box::new(t),
            Err(e) => return fail(e),
        },
    };
    // Blocked before any thread starts, so every thread inherits the mask
    // and the signals wait in the signalfd.
    let signals = SpecSignals::block();
    let executor = match SandboxExecutor::new(config, env.clone(), None) {
        Ok(x) => x,
        Err(e) => return fail(e),
    };
    let (tx, rx) = smol::channel::unbounded();
    let run_id = spec.run_id.clone();
    let cancel = executor.cancel_handle();
    let received = std::thread::scope(|s| {
        let (done_rx, done_tx) = match std::os::unix::net::UnixStream::pair() {
            Ok(p) => p,
            Err(e) => {
                eprintln!("liftoff: warning: signals will not cancel the run: {e}");
                executor.run_plain(spec, Some(sink), RunEvents::new(&run_id, tx));
                return None;
            }
        };
        let (signals, cancel, id) = (&signals, &cancel, &run_id);
        let watcher = s.spawn(move || {
            signals
                .as_ref()
                .and_then(|sig| sig.wait_and_cancel(&done_rx, cancel, id))
        });
        executor.run_plain(spec, Some(sink), RunEvents::new(&run_id, tx));
        drop(done_tx);
        watcher.join().ok().flatten()
    });
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
    if let Some(signo) = received {
        eprintln!("liftoff: run {run_id} cancelled by signal {signo}");
        return 128 + signo;
    }
    code
}

/// Reads `--spec FILE`: a regular file (opened without blocking, so a FIFO
/// or a device is refused, never read) of at most [`MAX_SPEC_BYTES`].
fn read_spec(path: &std::path::Path) -> Result<Vec<u8>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("--spec {shown}: {e}"))?;
    let meta = file
        .metadata()
        .map_err(|e| format!("--spec {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "--spec {shown}: is not a regular file; expected a JSON run spec file"
        ));
    }
    if meta.len() > MAX_SPEC_BYTES {
        return Err(format!(
            "--spec {shown}: is {} bytes, more than the {MAX_SPEC_BYTES}-byte limit of a run spec",
            meta.len()
        ));
    }
    let mut text = Vec::new();
    file.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("--spec {shown}: {e}"))?;
    if text.len() as u64 > MAX_SPEC_BYTES {
        return Err(format!(
            "--spec {shown}: is more than the {MAX_SPEC_BYTES}-byte limit of a run spec"
        ));
    }
    Ok(text)
}

/// SIGINT, SIGTERM and SIGHUP for `liftoff exec --spec`, blocked and read
/// from a signalfd by a watcher thread while the run holds the caller.
struct SpecSignals(nix::sys::signalfd::SignalFd);

impl SpecSignals {
    fn set() -> nix::sys::signal::SigSet {
        use nix::sys::signal::{SigSet, Signal};
        let mut set = SigSet::empty();
        for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
            set.add(s);
        }
        set
    }

    /// Blocks the signals in this thread (and the threads it starts) and
    /// opens the signalfd; `None` (with a warning) when that fails.
    fn block() -> Option<SpecSignals> {
        let set = Self::set();
        let opened = set
            .thread_block()
            .and_then(|()| nix::sys::signalfd::SignalFd::new(&set));
        match opened {
            Ok(fd) => Some(SpecSignals(fd)),
            Err(e) => {
                eprintln!("liftoff: warning: signals will not cancel the run: {e}");
                None
            }
        }
    }

    /// Waits until `done` closes (the run ended: `None`) or a signal arrives;
    /// then cancels the run (retrying until it has started or ended) and
    /// returns the signal's number.
    fn wait_and_cancel(
        &self,
        done: &std::os::unix::net::UnixStream,
        cancel: &crate::run::executor::CancelHandle,
        run_id: &str,
    ) -> Option<i32> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd;
        let signo = loop {
            let mut fds = [
                PollFd::new(self.0.as_fd(), PollFlags::POLLIN),
                PollFd::new(done.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) => {}
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => return None,
            }
            if fds[1].any().unwrap_or(false) {
                return None;
            }
            if fds[0].any().unwrap_or(false) {
                match self.0.read_signal() {
                    Ok(Some(info)) => break info.ssi_signo as i32,
                    _ => continue,
                }
            }
        };
        eprintln!("liftoff: signal {signo}: cancelling run {run_id}");
        // The run may not be registered yet: retry until it is, or it ended.
        while !cancel.cancel(run_id) {
            let mut fds = [PollFd::new(done.as_fd(), PollFlags::POLLIN)];
            if !matches!(poll(&mut fds, PollTimeout::from(20u8)), Ok(0)) {
                break;
            }
        }
        Some(signo)
    }
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
