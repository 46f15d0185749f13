//! The real run executor: an `assign` becomes a sandboxed run.
//!
//! [`SandboxExecutor::new`] once at start-up (loads the run initialization
//! policy, opens the provider cache, builds the one HTTP agent). Then, per
//! run, [`RunExecutor::start`] spawns one thread that goes, in this order:
//!
//! 1. envelope → [`Identity::decrypt_run_state`] (AAD = the run id) →
//!    [`RunSpec::from_json`]; the spec's run id must be the assignment's;
//! 2. environment, mounts and secrets ([`env::build`]) and the log pipeline
//!    (secrets masked; pre-signed sink fed by `uploads.logs` and later
//!    `uploads` commands; each delivered chunk becomes a [`RunEvent::Log`]);
//! 3. the initialization policy (`deny` → its messages end the log and the
//!    run fails as rejected; `sample` → input and decision to stderr);
//! 4. the workspace `<state dir>/runs/<run id>/workspace`, the source
//!    (resolved through the VCS mappings, fetched with the one agent, safely
//!    extracted into `<workspace>/source`), the run's provider-cache layer,
//!    the runner image (`runner.image` or `SPACELIFT_DEFAULT_RUNNER_IMAGE`,
//!    from [`crate::image`]'s cache, pulled when missing, leased until the
//!    run ends);
//!    the run's `tool` ([`crate::tools::Tools::provide`]: cached, or
//!    downloaded and verified; leased until the run ends, bound read-only
//!    at `/mnt/tools/bin`, first on PATH, and over `/bin` (`/bin/terraform`));
//! 5. [`RunEvent::Started`], then each step in its own sandbox (cwd
//!    `/mnt/workspace/source`), output masked into the log; a step marked
//!    `outputs` is not logged: its stdout is filtered and PUT to the outputs
//!    URL; the first failing step stops the run;
//! 6. artifacts PUT (opened beneath the source directory with the job's
//!    identity, regular files only: [`crate::beneath`]); on success the
//!    cache layer is merged, marked used and the cache pruned; the log is
//!    finished (delivery waited for); exactly one terminal event:
//!    `Finished{exit_code}` or `Failed{reason}`;
//! 7. the run directory is removed (undelivered log chunks stay in the spool).
//!
//! Timeouts: the stricter of the spec's and the launcher's, enforced by the
//! log pipeline over the whole run. Cancel: SIGTERM to the step's tree,
//! SIGKILL after `LIFTOFF_KILL_GRACE`, no further steps.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::config::{Config, Env};
use crate::identity::{Envelope, Identity};
use crate::link::protocol::{Assignment, Upload};
use crate::logs::redact::RedactorBuilder;
use crate::logs::sink::{PresignedSink, Sink, StdoutSink, UrlQueue};
use crate::logs::{Kill, Options, Pipeline};
use crate::sandbox::{self, BindMount, Sandbox, Stdio};

use super::cache::ProviderCache;
use super::env::{self, WORKSPACE};
use super::error::{RunError, SetupError, StartError};
use super::interface::{RunEvent, RunEvents, RunExecutor};
use super::outputs;
use super::policy::{self, Policy};
use super::source::{self, SourceError};
use super::spec::RunSpec;

/// Largest artifact uploaded (bytes).
const MAX_ARTIFACT_BYTES: u64 = 2 << 30;

/// How long the log sink waits for a chunk's pre-signed URL before retrying.
const URL_WAIT: Duration = Duration::from_secs(30);

/// What every run of this launcher shares.
struct Shared {
    /// Masks the pool token and key in the launcher's own log.
    _pool_mask: crate::launcher_log::MaskGuard,
    config: Config,
    launcher_env: Env,
    identity: Option<Arc<Identity>>,
    policy: Option<Policy>,
    agent: ureq::Agent,
    cache: ProviderCache,
    tools: crate::tools::Tools,
    urls: Arc<UrlQueue>,
    /// Host warnings for running runs' logs (see [`SandboxExecutor::with_host_notes`]).
    host_notes: Arc<crate::hostwatch::Board>,
    /// The object key (URL path) of each offered log chunk URL, for `log`
    /// events; looked up without waiting.
    keys: Arc<Mutex<HashMap<(String, u64), String>>>,
}

impl Shared {
    fn offer(&self, run_id: &str, seq: u64, url: String) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((run_id.to_string(), seq), object_key(&url));
        self.urls.offer(run_id, seq, url);
    }

    fn forget_keys(&self, run_id: &str) {
        self.keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(r, _), _| r != run_id);
    }
}

/// `https://host/a/b?sig` → `a/b`.
fn object_key(url: &str) -> String {
    let no_query = url.split(['?', '#']).next().unwrap_or("");
    let after_scheme = no_query.split_once("://").map_or(no_query, |(_, r)| r);
    after_scheme
        .split_once('/')
        .map_or("", |(_, path)| path)
        .to_string()
}

/// One run's handle for cancel and kill.
#[derive(Default)]
struct Control {
    /// Shared with the run's image pull, which stops at its next check.
    cancelled: Arc<AtomicBool>,
    /// The step running now.
    current: Mutex<Option<Arc<Mutex<Sandbox>>>>,
}

impl Control {
    fn current(&self) -> Option<Arc<Mutex<Sandbox>>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn cancelled(&self) -> bool {
        self.cancelled.load(Ordering::SeqCst)
    }
}

fn lock(sb: &Mutex<Sandbox>) -> std::sync::MutexGuard<'_, Sandbox> {
    sb.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs assignments as sandboxed runs (see the module doc).
pub struct SandboxExecutor {
    shared: Arc<Shared>,
    runs: Arc<Mutex<HashMap<String, Arc<Control>>>>,
}

impl SandboxExecutor {
    /// Loads the policy (an error is a configuration error: exit 78), opens
    /// the provider cache and builds the HTTP agent. `identity` decrypts run
    /// states (`None`: only plain specs through [`SandboxExecutor::run_plain`]).
    pub fn new(
        config: Config,
        launcher_env: Env,
        identity: Option<Arc<Identity>>,
    ) -> Result<SandboxExecutor, SetupError> {
        let policy = match &config.run_initialization_policy {
            Some(p) => Some(Policy::load(p).map_err(SetupError::Policy)?),
            None => None,
        };
        let cache =
            ProviderCache::open(&config.provider_cache_dir, config.provider_cache_max_bytes)
                .map_err(SetupError::Cache)?;
        let agent = crate::http::agent_from_config(&config).map_err(SetupError::Agent)?;
        let tools =
            crate::tools::Tools::open(crate::tools::Settings::from_config(&config), agent.clone())
                .map_err(SetupError::Tools)?;
        fs::create_dir_all(config.state_dir.join("runs")).map_err(|e| {
            SetupError::StateDir(format!(
                "cannot create {}: {e}; LIFTOFF_STATE_DIR must be a writable directory",
                config.state_dir.join("runs").display()
            ))
        })?;
        // Runtime liftoff binds the workspace by file descriptor (opened by
        // the launcher), so the state directory may stay private. Without a
        // mount namespace the job (a root launcher's unprivileged host id)
        // reaches its workspace by host path: it must pass through (not
        // list) the state directory and runs/ on the way.
        let by_path = match config.runtime {
            crate::config::Runtime::Liftoff => Vec::new(),
            _ => vec![config.state_dir.clone(), config.state_dir.join("runs")],
        };
        for dir in by_path {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(m) = fs::metadata(&dir) {
                let mode = m.permissions().mode() & 0o7777;
                if mode & 0o011 != 0o011 {
                    fs::set_permissions(&dir, fs::Permissions::from_mode(mode | 0o011)).map_err(
                        |e| {
                            SetupError::StateDir(format!(
                                "cannot let runs pass through {}: {e}",
                                dir.display()
                            ))
                        },
                    )?;
                }
            }
        }
        // The launcher's own log is masked with the pool's secrets while
        // the executor lives.
        let pool_mask = {
            let mut b = RedactorBuilder::new();
            crate::logs::mask_pool_secrets(&mut b, &config, &|n| {
                launcher_env.get(n).map(str::to_string)
            });
            crate::launcher_log::mask_while(b.build())
        };
        Ok(SandboxExecutor {
            shared: Arc::new(Shared {
                _pool_mask: pool_mask,
                config,
                launcher_env,
                identity,
                policy,
                agent,
                cache,
                tools,
                urls: UrlQueue::new(URL_WAIT),
                host_notes: Arc::default(),
                keys: Arc::default(),
            }),
            runs: Arc::default(),
        })
    }

    /// Runs hear host warnings published on `board` (the worker's) in their
    /// logs. Call before the first run; without it runs hear none.
    pub fn with_host_notes(mut self, board: Arc<crate::hostwatch::Board>) -> SandboxExecutor {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.host_notes = board;
        }
        self
    }

    /// A handle that cancels this executor's runs from another thread (a
    /// signal watcher while [`SandboxExecutor::run_plain`] holds the caller).
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle {
            runs: self.runs.clone(),
            grace: self.shared.config.kill_grace,
        }
    }

    /// Runs a plain (unencrypted) spec on this thread, logs to `sink`
    /// (default: JSON lines on stdout), events to `events`. For
    /// `liftoff exec --spec`.
    pub fn run_plain(&self, spec: RunSpec, sink: Option<Box<dyn Sink>>, events: RunEvents) {
        let control = Arc::new(Control::default());
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(spec.run_id.clone(), control.clone());
        let ev = match run(&self.shared, Ok(spec), sink, &events, &control) {
            Ok(code) => RunEvent::Finished { exit_code: code },
            Err(reason) => ending(reason),
        };
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(events.run_id());
        events.send(ev);
    }
}

/// Cancels runs of a [`SandboxExecutor`]: see [`CancelHandle::cancel`].
#[derive(Clone)]
pub struct CancelHandle {
    runs: Arc<Mutex<HashMap<String, Arc<Control>>>>,
    grace: Duration,
}

impl CancelHandle {
    /// Cancels the run: no further step starts; the running step's tree gets
    /// SIGTERM, then SIGKILL after the kill grace. False when no such run is
    /// going (not started yet, or ended).
    pub fn cancel(&self, run_id: &str) -> bool {
        let Some(control) = self
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .cloned()
        else {
            return false;
        };
        if control.cancelled.swap(true, Ordering::SeqCst) {
            return true;
        }
        if let Some(sb) = control.current() {
            let _ = lock(&sb).signal(libc::SIGTERM);
            let grace = self.grace;
            let _ = std::thread::Builder::new()
                .name("liftoff-kill".into())
                .spawn(move || {
                    std::thread::sleep(grace);
                    lock(&sb).kill();
                });
        }
        true
    }
}

/// A run that did not finish: why (typed), and the reason as shown
/// (masked with the run's secrets, URLs without credentials or query).
struct Ending {
    error: RunError,
    reason: String,
}

/// The terminal event for a run that did not finish: `rejected` when the
/// policy denied it or could not be evaluated (nothing ran), else `failed`.
fn ending(e: Ending) -> RunEvent {
    if e.error.rejected() {
        RunEvent::Rejected { reason: e.reason }
    } else {
        RunEvent::Failed { reason: e.reason }
    }
}

impl RunExecutor for SandboxExecutor {
    fn start(&mut self, a: Assignment, events: RunEvents) -> Result<(), StartError> {
        let control = Arc::new(Control::default());
        self.runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(a.run_id.clone(), control.clone());
        let shared = self.shared.clone();
        let runs = self.runs.clone();
        let run_id = a.run_id.clone();
        let spawned = std::thread::Builder::new()
            .name("liftoff-run".into())
            .spawn(move || {
                let spec = open_spec(&shared, &a);
                let ev = match run(&shared, spec, None, &events, &control) {
                    Ok(code) => RunEvent::Finished { exit_code: code },
                    Err(reason) => ending(reason),
                };
                runs.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(events.run_id());
                events.send(ev);
            });
        if let Err(e) = spawned {
            self.runs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&run_id);
            return Err(StartError::Spawn(format!("cannot start a run thread: {e}")));
        }
        Ok(())
    }

    fn cancel(&mut self, run_id: &str) {
        self.cancel_handle().cancel(run_id);
    }

    fn uploads(&mut self, run_id: &str, urls: Vec<Upload>) {
        for u in urls {
            self.shared.offer(run_id, u.chunk, u.url);
        }
    }

    fn kill_all(&mut self) {
        let runs: Vec<Arc<Control>> = self
            .runs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        for c in runs {
            c.cancelled.store(true, Ordering::SeqCst);
            if let Some(sb) = c.current() {
                lock(&sb).kill();
            }
        }
    }

    fn capabilities(&self) -> BTreeMap<String, serde_json::Value> {
        let c = &self.shared.config;
        BTreeMap::from([
            ("executor".to_string(), "sandbox".into()),
            ("runtime".to_string(), format!("{:?}", c.runtime).into()),
            (
                "policy".to_string(),
                serde_json::Value::Bool(self.shared.policy.is_some()),
            ),
        ])
    }
}

impl Drop for SandboxExecutor {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Decrypts and parses the assignment's run state.
fn open_spec(shared: &Shared, a: &Assignment) -> Result<RunSpec, String> {
    let identity = shared
        .identity
        .as_ref()
        .ok_or("this launcher has no pool key to decrypt run states")?;
    let envelope: Envelope = serde_json::from_value(a.state.clone())
        .map_err(|e| format!("the run state is not an envelope: {e}"))?;
    let plain = identity.decrypt_run_state(&envelope, &a.run_id)?;
    let spec = RunSpec::from_json(&plain)?;
    if spec.run_id != a.run_id {
        return Err(format!(
            "the run state is for run {}, not {}",
            spec.run_id, a.run_id
        ));
    }
    let read = a.run_type == crate::link::protocol::RunType::Read;
    if spec.run_type.read_only() != read {
        return Err(format!(
            "the run state says the run is {}, the assignment says otherwise",
            spec.run_type.name()
        ));
    }
    Ok(spec)
}

/// Removes a run's directory when the run ends, whatever happened.
/// `std::fs::remove_dir_all` never follows a symlink (it walks with
/// `openat(O_NOFOLLOW)` and `unlinkat`), so a job's link out of its
/// workspace is removed, not what it points to (tests/host_paths.rs checks).
struct RunDir(PathBuf);

impl RunDir {
    /// Removes what a crashed earlier run with the same id left (a job's
    /// links included, never followed) so that every later create and chown
    /// starts from a directory liftoff made itself. A leftover that cannot
    /// be removed fails the run: it is never built upon.
    fn fresh(path: PathBuf) -> Result<RunDir, RunError> {
        match fs::remove_dir_all(&path) {
            Ok(()) => Ok(RunDir(path)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RunDir(path)),
            Err(e) => Err(RunError::Workspace(format!(
                "cannot remove what an earlier run left in {}: {e}; remove it by hand",
                path.display()
            ))),
        }
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// One run, start to end. `Ok(exit code)` or `Err(reason)`. A spec that
/// failed to open fails the run before any log exists.
fn run(
    shared: &Shared,
    spec: Result<RunSpec, String>,
    sink: Option<Box<dyn Sink>>,
    events: &RunEvents,
    control: &Control,
) -> Result<i32, Ending> {
    let spec = spec.map_err(|m| {
        let error = RunError::State(m);
        let reason = crate::http::redact_urls(&error.to_string()).into_owned();
        Ending { error, reason }
    })?;
    let config = &shared.config;
    let run_dir = config.state_dir.join("runs").join(&spec.run_id);
    let workspace = run_dir.join("workspace");
    let layer = run_dir.join("providers");
    let launch = env::build(&spec, config, &shared.launcher_env, &layer);

    // The log pipeline first: everything after this can be told in the log.
    let mut builder = RedactorBuilder::new();
    for (name, value) in &launch.secrets {
        builder.secret(name, value.as_bytes());
    }
    let launcher_env = &shared.launcher_env;
    crate::logs::mask_pool_secrets(&mut builder, config, &|n| {
        launcher_env.get(n).map(str::to_string)
    });
    for (i, url) in spec.uploads.logs.iter().enumerate() {
        shared.offer(&spec.run_id, i as u64, url.clone());
    }
    let sink: Box<dyn Sink> = match sink {
        Some(s) => s,
        None if config.run_logs_on_stdout => Box::new(StdoutSink::stdout(&spec.run_id)),
        None => Box::new(PresignedSink::new(
            shared.agent.clone(),
            shared.urls.clone(),
        )),
    };
    let mut opts = Options::from_config(config, &spec.run_id);
    opts.run_timeout = spec.run_timeout(config.run_timeout);
    opts.logs_timeout = spec.logs_timeout(config.logs_timeout);
    let on_delivered = {
        let events = events.clone();
        let keys = shared.keys.clone();
        Box::new(move |c: &crate::logs::spool::Chunk| {
            let key = keys
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(&(c.run_id.clone(), c.seq))
                .cloned()
                .unwrap_or_else(|| format!("{}/{:04}", c.run_id, c.seq));
            events.send(RunEvent::Log {
                chunk: c.seq,
                key,
                bytes: c.len,
            });
        }) as crate::logs::upload::OnDelivered
    };
    let matcher = builder.build();
    // The launcher's own log lines are masked with the run's secrets too.
    let _masked = crate::launcher_log::mask_while(matcher.clone());
    // Every line liftoff writes about the run (the reason of the terminal
    // event, `liftoff exec --spec`'s last line) is masked like its log.
    let shown = |error: RunError| {
        let reason =
            crate::logs::redact::mask_str(&matcher, &crate::http::redact_urls(&error.to_string()));
        Ending { error, reason }
    };
    let mut log = Pipeline::start(opts, matcher.clone(), sink, Some(on_delivered))
        .map_err(|e| shown(RunError::LogStart(e)))?;
    // Host trouble (CPU steal, memory, disk) is told in the run's log.
    log.attach_notes(shared.host_notes.subscribe());
    for w in builder.warnings() {
        tracing::warn!(run = spec.run_id, "{w}");
    }
    for name in &launch.missing_whitelist {
        let _ = log.line(&format!(
            "liftoff: {name} is whitelisted (SPACELIFT_WHITELIST_ENVS) but not set on this worker"
        ));
    }

    let result = RunDir::fresh(run_dir.clone())
        .and_then(|_dir| {
            run_logged(
                shared, &spec, &launch, &workspace, &layer, &mut log, events, control,
            )
        })
        .map_err(shown);
    if let Err(e) = &result {
        let _ = log.line(&format!("liftoff: run failed: {}", e.reason));
    }
    let report = log.finish();
    shared.forget_keys(&spec.run_id);
    for w in &report.warnings {
        tracing::warn!(run = spec.run_id, "run log: {w}");
    }
    if let Some(e) = &report.delivered.error {
        tracing::warn!(
            run = spec.run_id,
            left = report.delivered.left,
            "run log delivery stopped (chunks stay in the spool): {e}"
        );
    }
    result
}

/// The part of a run whose problems go into its log.
#[allow(clippy::too_many_arguments)]
fn run_logged(
    shared: &Shared,
    spec: &RunSpec,
    launch: &env::Launch,
    workspace: &Path,
    layer: &Path,
    log: &mut Pipeline,
    events: &RunEvents,
    control: &Control,
) -> Result<i32, RunError> {
    let config = &shared.config;
    if let Some(policy) = &shared.policy {
        let input = policy::input(spec, crate::VERSION, config.default_runner_image.as_deref());
        let decision = policy.evaluate(&input).map_err(RunError::Policy)?;
        if decision.sample {
            tracing::info!(
                run = spec.run_id,
                input = %input,
                deny = ?decision.deny,
                "run initialization policy sample"
            );
        }
        if !decision.deny.is_empty() {
            for m in &decision.deny {
                let _ = log.line(&format!("liftoff: run initialization policy: deny: {m}"));
            }
            return Err(RunError::Denied(decision.deny));
        }
    }

    // /proc/self belongs to the effective uid.
    let root = {
        use std::os::unix::fs::MetadataExt;
        fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
    };
    let host = sandbox::namespaces::host_ids(sandbox::DEFAULT_HOST_ID);
    let owner = root.then_some(host);
    // The workspace and its source directory are the job's: created (and
    // given to it) beneath the run directory's fd, never through a link.
    let ws_error = |e: &dyn std::fmt::Display| {
        RunError::Workspace(format!(
            "cannot create the workspace {}: {e}",
            workspace.display()
        ))
    };
    let (Some(run_dir), Some(ws_name)) = (workspace.parent(), workspace.file_name()) else {
        return Err(ws_error(&"not a directory below the run directory"));
    };
    crate::beneath::Root::create(run_dir)
        .and_then(|r| r.mkdir_all(&Path::new(ws_name).join("source"), 0o755, owner))
        .map_err(|e| ws_error(&e))?;
    let source_dir = workspace.join("source");
    if let Some(src) = &spec.source {
        let url = source::resolve_url(&src.url, &config.vcs_mappings).map_err(RunError::Source)?;
        let run_timeout = spec.run_timeout(config.run_timeout);
        fetch_source(
            &shared.agent,
            &url,
            &source_dir,
            owner,
            (log.started() + run_timeout, run_timeout),
        )
        .map_err(RunError::Source)?;
    }
    shared.cache.layer(layer, owner).map_err(RunError::Cache)?;
    let image = runner_image(shared, spec, log, control)?;
    // The run's tool, leased (kept in the cache) until the run ends.
    let tool = match &spec.tool {
        Some(t) => {
            let bound = crate::tools::Bound {
                deadline: Some(log.started() + spec.run_timeout(config.run_timeout)),
                cancel: Some(control.cancelled.clone()),
            };
            let lease = shared
                .tools
                .provide(t.name, &t.version, &bound, &mut |m| {
                    let _ = log.line(&format!("liftoff: tool: {m}"));
                })
                .map_err(|e| match *e.problem {
                    crate::tools::Problem::Source(crate::tools::source::SourceError::Cancelled) => {
                        RunError::Cancelled { step: None }
                    }
                    _ => RunError::Tool(e),
                })?;
            Some(lease)
        }
        None => None,
    };
    if control.cancelled() {
        return Err(RunError::Cancelled { step: None });
    }

    events.send(RunEvent::Started);
    let run_started = Instant::now();
    let mut results = Vec::with_capacity(spec.steps.len());
    let mut exit_code = 0;
    for (i, step) in spec.steps.iter().enumerate() {
        let step_started = Instant::now();
        if control.cancelled() {
            let previous = i.checked_sub(1).map(|p| spec.steps[p].name.clone());
            return Err(RunError::Cancelled { step: previous });
        }
        let argv = step.command();
        let _ = log.line(&format!(
            "liftoff: step {}/{}: {}",
            i + 1,
            spec.steps.len(),
            step.name
        ));
        if config.debug {
            let _ = log.debug_command(&argv);
        }
        let mut sbspec = sandbox_spec(config, spec, launch, workspace, argv, tool.as_ref())
            .map_err(RunError::State)?;
        if let Some(lease) = &image {
            sbspec.root = Some(lease.root().to_path_buf());
        }
        let deadline =
            crate::config::parse::later(log.started(), spec.run_timeout(config.run_timeout));
        let outcome = run_step(config, &sbspec, step, log, control, deadline)?;
        if control.cancelled() {
            return Err(RunError::Cancelled {
                step: Some(step.name.clone()),
            });
        }
        if let Some(reason) = outcome.timed_out {
            return Err(RunError::TimedOut {
                step: step.name.clone(),
                reason,
            });
        }
        if outcome.oom_killed {
            let _ = log.line(&format!(
                "liftoff: step {} ran out of memory and was killed",
                step.name
            ));
        }
        let _ = log.line(&format!(
            "liftoff: step {} exited with {}",
            step.name, outcome.exit_code
        ));
        if let Some(out) = outcome.stdout {
            if outcome.exit_code == 0 {
                upload_outputs(shared, spec, &out, log).map_err(RunError::Upload)?;
            }
        }
        exit_code = outcome.exit_code;
        results.push(crate::link::protocol::StepResult {
            name: step.name.clone(),
            exit_code,
            duration_ms: step_started.elapsed().as_millis() as u64,
        });
        if exit_code != 0 {
            break;
        }
    }
    let duration_ms = run_started.elapsed().as_millis() as u64;

    // Artifacts are the job's files: opened beneath the source directory
    // (itself found beneath the workspace, never through a link: the job
    // owns the workspace), symlinks followed only while they stay inside,
    // with the job's filesystem identity, regular files only, non-blocking,
    // size-bounded.
    let source_root = crate::beneath::Root::open(workspace)
        .and_then(|ws| ws.dir(Path::new("source"), crate::beneath::Follow::Never));
    for a in &spec.uploads.artifacts {
        let opened = source_root
            .as_ref()
            .map_err(|e| e.to_string())
            .and_then(|root| {
                crate::beneath::as_identity(owner, || {
                    root.open_regular(
                        Path::new(&a.path),
                        crate::beneath::Follow::InsideRoot,
                        MAX_ARTIFACT_BYTES,
                    )
                })
                .map_err(|e| e.to_string())
            });
        match opened {
            Ok((f, _)) => {
                let what = format!("artifact {}", a.path);
                let rewind = || {
                    use std::io::{Seek, SeekFrom};
                    (&f).seek(SeekFrom::Start(0))
                        .map(|_| &f)
                        .map_err(|e| format!("{what}: cannot read it again: {e}"))
                };
                put(
                    &shared.agent,
                    &a.url,
                    rewind,
                    "application/octet-stream",
                    &what,
                )
                .map_err(RunError::Upload)?;
                let _ = log.line(&format!("liftoff: artifact {} uploaded", a.path));
            }
            Err(e) => {
                let _ = log.line(&format!("liftoff: artifact {} not uploaded: {e}", a.path));
            }
        }
    }

    if exit_code == 0 {
        let merged = match shared.cache.merge(layer) {
            Ok(s) if s.packages > 0 => {
                let _ = log.line(&format!(
                    "liftoff: provider cache: {} new package(s) kept for later runs",
                    s.packages
                ));
                s.packages
            }
            Ok(_) => 0,
            Err(e) => {
                tracing::warn!(run = spec.run_id, "{e}");
                0
            }
        };
        let used = shared
            .cache
            .mark_used(workspace, &config.provider_cache_dir);
        // Used packages it did not download itself were in the cache: hits.
        let hits = used.saturating_sub(merged);
        crate::metrics::launcher::PROVIDER_CACHE.hits.add(hits);
        if let Err(e) = shared.cache.prune() {
            tracing::warn!(run = spec.run_id, "{e}");
        }
    }
    events.send(RunEvent::Summary {
        duration_ms,
        steps: results,
    });
    Ok(exit_code)
}

/// GETs the source archive and extracts it into `dest`, within the run's
/// timeout (`run_deadline`: when it ends, and how long it is).
fn fetch_source(
    agent: &ureq::Agent,
    url: &str,
    dest: &Path,
    owner: Option<(u32, u32)>,
    (run_deadline, run_timeout): (Instant, Duration),
) -> Result<(), SourceError> {
    let shown = crate::http::redact_url(url);
    let timed_out = || {
        SourceError::TimedOut(format!(
            "timed out downloading the source from {shown}: the run timeout ({}) passed; raise timeouts.run or SPACELIFT_LAUNCHER_RUN_TIMEOUT, or make the source faster to fetch",
            crate::config::parse::format_duration(run_timeout)
        ))
    };
    let left = run_deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(timed_out());
    }
    // The whole download, body included, is bounded by what is left of the
    // run's timeout.
    let response = agent
        .get(url)
        .config()
        .timeout_global(Some(left))
        .build()
        .call()
        .map_err(|e| match e {
            ureq::Error::Timeout(_) => timed_out(),
            e => SourceError::Fetch(format!("cannot fetch the source from {shown}: {e}")),
        })?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        return Err(SourceError::Fetch(format!(
            "cannot fetch the source from {shown}: HTTP {status}"
        )));
    }
    let reader = response
        .into_body()
        .into_with_config()
        .limit(u64::MAX)
        .reader();
    source::extract_tar_gz(reader, dest, source::Limits::default(), owner).map_err(|e| {
        if Instant::now() >= run_deadline {
            timed_out()
        } else {
            source::prefix(e, &format!("the source archive from {shown} was refused: "))
        }
    })?;
    Ok(())
}

/// PUT with Content-Length; a non-2xx answer is an error.
/// Artifacts and outputs go to URLs from the run spec, which cannot be
/// renewed: transient failures are retried, an expired URL is not.
const UPLOAD_RETRY: crate::http::Retry = crate::http::Retry {
    attempts: 5,
    base: Duration::from_millis(500),
    max: Duration::from_secs(8),
};

/// PUTs what `body` gives (called again for each try) to a pre-signed URL
/// from the spec, with [`UPLOAD_RETRY`].
fn put<B: ureq::AsSendBody>(
    agent: &ureq::Agent,
    url: &str,
    mut body: impl FnMut() -> Result<B, String>,
    content_type: &str,
    what: &str,
) -> Result<(), String> {
    use crate::http::PutError;
    crate::http::with_retries(
        &UPLOAD_RETRY,
        &mut crate::http::seed(),
        |_| {
            let b = body().map_err(PutError::Refused)?;
            crate::http::presigned_put(agent, url, b, content_type, what)
        },
        |e| matches!(e, PutError::Transient(_)),
        |n, e| tracing::warn!(attempt = n, "{e}; retrying"),
    )
    .map_err(|e| e.to_string())
}

fn upload_outputs(
    shared: &Shared,
    spec: &RunSpec,
    stdout: &[u8],
    log: &mut Pipeline,
) -> Result<(), String> {
    let out = outputs::filter(stdout, shared.config.sensitive_output_upload)
        .map_err(|e| e.to_string())?;
    if !out.dropped.is_empty() {
        let _ = log.line(&format!(
            "liftoff: sensitive outputs not uploaded (SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED is not true): {}",
            out.dropped.join(", ")
        ));
    }
    let Some(url) = &spec.uploads.outputs else {
        let _ = log.line("liftoff: the run has no outputs URL: outputs not uploaded");
        return Ok(());
    };
    let body = serde_json::to_vec(&out.document).map_err(|e| format!("outputs: {e}"))?;
    put(
        &shared.agent,
        url,
        || Ok(&body[..]),
        "application/json",
        "outputs",
    )?;
    let _ = log.line(&format!(
        "liftoff: outputs uploaded ({} output(s))",
        out.document.as_object().map_or(0, |m| m.len())
    ));
    Ok(())
}

/// The run's image (`runner.image`, else `SPACELIFT_DEFAULT_RUNNER_IMAGE`)
/// from the image cache, pulled when missing; `None` when the spec gives a
/// `runner.root` or no image is named (the host's /usr). The lease keeps
/// the image in the cache until the run ends.
fn runner_image(
    shared: &Shared,
    spec: &RunSpec,
    log: &mut Pipeline,
    control: &Control,
) -> Result<Option<crate::image::Lease>, RunError> {
    let config = &shared.config;
    let named = spec
        .runner
        .image
        .as_ref()
        .or(config.default_runner_image.as_ref());
    let (None, Some(name)) = (&spec.runner.root, named) else {
        return Ok(None);
    };
    let mut store = crate::image::Store::from_config(config);
    store.deadline = Some(log.started() + spec.run_timeout(config.run_timeout));
    store.cancel = Some(control.cancelled.clone());
    let mut say = |m: &str| {
        let _ = log.line(&format!("liftoff: {m}"));
    };
    let lease = store
        .ensure(&shared.agent, name, false, &mut say)
        .map_err(|e| match e {
            crate::image::Error::Cancelled { .. } => RunError::Cancelled { step: None },
            e => RunError::Image(e),
        })?;
    say(&format!("image {name}: {} as the root", lease.id()));
    Ok(Some(lease))
}

/// The sandbox spec of one step, from the configuration as `liftoff exec`
/// reads it plus the run's environment, mounts, root and working directory.
fn sandbox_spec(
    config: &Config,
    spec: &RunSpec,
    launch: &env::Launch,
    workspace: &Path,
    argv: Vec<String>,
    tool: Option<&crate::tools::cache::Lease>,
) -> Result<sandbox::SandboxSpec, String> {
    let mut s = sandbox::SandboxSpec::from_config(config, workspace, argv);
    if let Some(r) = &spec.runner.root {
        s.root = Some(
            crate::config::parse::image_root(r)
                .map_err(|e| format!("run spec: runner.root {e}"))?,
        );
    }
    s.env = launch
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    s.mounts = launch
        .mounts
        .iter()
        .map(|m| BindMount {
            source: m.host.clone(),
            target: m.sandbox.clone(),
            writable: !m.read_only,
        })
        .collect();
    if let Some(t) = tool {
        // Read-only, first on PATH.
        s.mounts.push(BindMount {
            source: t.bin_dir.clone(),
            target: crate::tools::JOB_BIN_DIR.into(),
            writable: false,
        });
        for (k, v) in &mut s.env {
            if k == "PATH" {
                *v = format!("{}:{v}", crate::tools::JOB_BIN_DIR);
            }
        }
        // And in /bin, as the seed's runs call `/bin/terraform`.
        s.bin_overlay = Some(crate::tools::JOB_BIN_DIR.into());
    }
    s.cwd = Some(PathBuf::from(WORKSPACE).join("source"));
    if s.runtime != sandbox::Runtime::Liftoff {
        host_view(&mut s, workspace, tool);
    }
    s.hostname = "spacelift".into();
    s.stdin = Stdio::Null;
    s.stdout = Stdio::Piped;
    s.stderr = Stdio::Piped;
    Ok(s)
}

/// Without a mount namespace (runtime landlock or none) nothing is mounted
/// where the job looks: its paths are the host's. The working directory,
/// `SPACELIFT_WORKSPACE_ROOT` and every variable naming a mount's sandbox
/// path (`TF_PLUGIN_CACHE_DIR`: the run's provider-cache layer) become the
/// host paths the landlock rules allow, and the tool's host directory goes
/// first on PATH (there is no `/bin` overlay).
fn host_view(
    s: &mut sandbox::SandboxSpec,
    workspace: &Path,
    tool: Option<&crate::tools::cache::Lease>,
) {
    s.cwd = Some(workspace.join("source"));
    s.bin_overlay = None;
    let mut moved: Vec<(String, String)> = s
        .mounts
        .iter()
        .map(|m| {
            (
                m.target.display().to_string(),
                m.source.display().to_string(),
            )
        })
        .collect();
    moved.push((WORKSPACE.into(), workspace.display().to_string()));
    for (k, v) in &mut s.env {
        if k == "PATH" {
            if let Some(t) = tool {
                let rest = v
                    .strip_prefix(crate::tools::JOB_BIN_DIR)
                    .map_or(v.as_str(), |r| r.trim_start_matches(':'));
                *v = format!("{}:{rest}", t.bin_dir.display());
            }
            continue;
        }
        if let Some((_, host)) = moved.iter().find(|(sandbox, _)| sandbox == v) {
            *v = host.clone();
        }
    }
    // The mounts' sources stay as they are: the landlock rules allow them
    // (read-only or read-write) where they are on the host.
}

struct StepOutcome {
    exit_code: i32,
    oom_killed: bool,
    /// The timeout that killed the step (the log already says it).
    timed_out: Option<String>,
    /// An outputs step's stdout.
    stdout: Option<Vec<u8>>,
}

/// The pipeline's handle on the step's tree: signals, and the exit of its
/// top process (a copy of its pidfd, so waiting never holds the lock).
struct TreeKill(Arc<Mutex<Sandbox>>, Option<std::os::fd::OwnedFd>);

impl Kill for TreeKill {
    fn terminate(&mut self) {
        let _ = lock(&self.0).signal(libc::SIGTERM);
    }
    fn kill(&mut self) {
        lock(&self.0).kill();
    }
    fn wait_exit(&mut self, wait: Duration) -> bool {
        use std::os::fd::AsFd;
        match &self.1 {
            Some(fd) => crate::logs::fd_ready(fd.as_fd(), wait),
            // No copy of the pidfd: look now and then, never holding the
            // lock while waiting.
            None => {
                std::thread::sleep(wait.min(Duration::from_millis(50)));
                lock(&self.0).try_wait().map_or(true, |o| o.is_some())
            }
        }
    }
}

fn run_step(
    config: &Config,
    sbspec: &sandbox::SandboxSpec,
    step: &super::spec::Step,
    log: &mut Pipeline,
    control: &Control,
    run_deadline: Instant,
) -> Result<StepOutcome, RunError> {
    let outputs_step = step.outputs;
    let failed = |message: String| RunError::Step {
        step: step.name.clone(),
        message,
    };
    // One pipe for stdout and stderr, in the order the job wrote them;
    // an outputs step keeps stdout apart (captured, never logged).
    let mut sbspec = sbspec.clone();
    sbspec.stdout = Stdio::Piped;
    sbspec.stderr = if outputs_step {
        Stdio::Piped
    } else {
        Stdio::Merged
    };
    let spawn_started = Instant::now();
    let mut sb = sandbox::spawn(&sbspec).map_err(|error| RunError::Sandbox {
        step: step.name.clone(),
        error,
    })?;
    crate::metrics::LAUNCHER
        .sandbox_start
        .observe_duration(spawn_started.elapsed());
    for w in std::mem::take(&mut sb.warnings) {
        let _ = log.line(&format!("liftoff: warning: {w}"));
    }
    let stdout = sb.stdout.take();
    let stderr = sb.stderr.take();
    let sb = Arc::new(Mutex::new(sb));
    *control.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(sb.clone());
    if control.cancelled() {
        // cancel arrived between the check and the spawn
        let _ = lock(&sb).terminate(config.kill_grace);
    }
    let mut captured = None;
    let logged = if outputs_step {
        if let Some(out) = stdout {
            let (ctx, crx) = std::sync::mpsc::channel();
            let _ = std::thread::Builder::new()
                .name("outputs".into())
                .spawn(move || {
                    let mut data = Vec::new();
                    let _ = out
                        .take(outputs::MAX_OUTPUTS as u64 + 1)
                        .read_to_end(&mut data);
                    let _ = ctx.send(data);
                });
            captured = Some(crx);
        }
        stderr
    } else {
        stdout
    };
    let Some(merged) = logged else {
        return Err(failed("the step's output pipe is missing".into()));
    };
    let pidfd = lock(&sb).pidfd().try_clone_to_owned().ok();
    let mut kill = TreeKill(sb.clone(), pidfd);
    let ended = {
        // The job comes first: the pump's wake-ups do not preempt it.
        let _batch = sandbox::sched::Batch::enter();
        log.pump(merged, &mut kill)
    };
    // The pipe closed (or a timeout killed the tree): wait for the top
    // process, never holding the lock long (cancel needs it).
    let deadline_kill = Instant::now() + Duration::from_secs(5);
    let mut late = None;
    let outcome = loop {
        let r = lock(&sb).wait_timeout(Duration::from_millis(100));
        match r {
            Ok(Some(o)) => break Ok(o),
            Ok(None) => {
                let now = Instant::now();
                if now >= run_deadline && late.is_none() {
                    late = Some(format!(
                        "run exceeded {}: killed",
                        crate::config::parse::format_duration(
                            run_deadline.saturating_duration_since(log.started())
                        )
                    ));
                    lock(&sb).kill();
                }
                if ended.is_err() || now >= deadline_kill && control.cancelled() {
                    lock(&sb).kill();
                }
            }
            Err(e) => break Err(failed(format!("waiting for the step: {e}"))),
        }
    };
    *control.current.lock().unwrap_or_else(|p| p.into_inner()) = None;
    let ended = ended.map_err(RunError::Log)?;
    let outcome = outcome?;
    let stdout = captured.map(|crx| crx.recv_timeout(Duration::from_secs(5)).unwrap_or_default());
    Ok(StepOutcome {
        exit_code: outcome.exit_code(),
        oom_killed: outcome.oom_killed,
        timed_out: ended.reason().or(late),
        stdout,
    })
}

#[cfg(test)]
mod tests {
    use super::object_key;

    #[test]
    fn object_keys_from_urls() {
        assert_eq!(
            object_key("https://b.s3.amazonaws.com/runs/01J/0000?X-Amz-Signature=x"),
            "runs/01J/0000"
        );
        assert_eq!(object_key("http://127.0.0.1:9/a"), "a");
        assert_eq!(object_key("http://h"), "");
    }
}
