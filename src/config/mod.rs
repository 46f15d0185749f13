//! Every operator setting, read from the environment into one typed,
//! validated [`Config`].
//!
//! Call [`Env::from_process`] (or build an [`Env`] in tests), then
//! [`Config::load`]. Loading never stops at the first problem: it returns the
//! configuration (defaults in place of bad values) with every error and
//! warning found, each naming the variable, showing the bad value unless the
//! variable is a secret, and saying what is expected.

pub mod parse;
pub mod token;
pub mod vars;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::Serialize;

pub use parse::Mount;
pub use token::{Broker, Token};

/// A snapshot of the environment. Tests build one from pairs.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
    /// Variables whose value is not UTF-8 (reported, never used).
    not_utf8: Vec<String>,
}

impl Env {
    pub fn from_process() -> Self {
        let mut env = Env::default();
        for (k, v) in std::env::vars_os() {
            match (k.into_string(), v.into_string()) {
                (Ok(k), Ok(v)) => {
                    env.vars.insert(k, v);
                }
                (Ok(k), Err(_)) => env.not_utf8.push(k),
                (Err(_), _) => {}
            }
        }
        env
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.get(name).map(String::as_str)
    }

    /// Variables whose names start with `prefix`, in name order.
    pub fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.vars
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Env {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Env {
            vars: iter
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            not_utf8: Vec::new(),
        }
    }
}

/// A problem with one variable. The message already shows the value when the
/// variable is not a secret, and says what is expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub var: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.var, self.message)
    }
}

/// A secret value: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where the pool's private key came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum KeySource {
    /// `SPACELIFT_POOL_PRIVATE_KEY` (base64 of PEM).
    Env,
    /// `LIFTOFF_POOL_PRIVATE_KEY_FILE`.
    File(PathBuf),
}

/// The private key as configured: PEM bytes and where they came from.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub pem: Secret,
    pub source: KeySource,
}

impl KeyConfig {
    /// The variable to name in errors about the key.
    pub fn var(&self) -> &'static str {
        match self.source {
            KeySource::Env => "SPACELIFT_POOL_PRIVATE_KEY",
            KeySource::File(_) => "LIFTOFF_POOL_PRIVATE_KEY_FILE",
        }
    }
}

/// Which runs a whitelisted variable goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunScope {
    All,
    ReadOnly,
    WriteOnly,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WhitelistEntry {
    pub name: String,
    pub scope: RunScope,
}

/// `SPACELIFT_WORKER_NETWORK`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Network {
    Host,
    None,
    /// A named namespace: /run/netns/NAME, joined by each run.
    Named(String),
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Network::Host => f.write_str("host"),
            Network::None => f.write_str("none"),
            Network::Named(n) => f.write_str(n),
        }
    }
}

/// Where named network namespaces live (`ip netns add NAME`).
pub const NETNS_DIR: &str = "/run/netns";

/// `SPACELIFT_LAUNCHER_LOGS_TIMEOUT` when unset (the seed's 7m).
pub const DEFAULT_LOGS_TIMEOUT: Duration = Duration::from_secs(7 * 60);
/// `SPACELIFT_LAUNCHER_RUN_TIMEOUT` when unset (the seed's 70m).
pub const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(70 * 60);
/// `LIFTOFF_KILL_GRACE` when unset: SIGTERM to SIGKILL.
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(10);

impl Network {
    /// Parses `host`, `none` or a network namespace name; a name must exist
    /// under `netns_dir`.
    pub fn parse(text: &str, netns_dir: &Path) -> Result<Network, String> {
        match text.trim() {
            "host" => Ok(Network::Host),
            "none" => Ok(Network::None),
            "bridge" => Err("\"bridge\" is Docker's network and liftoff runs without Docker: use host, none, or the name of a namespace under /run/netns".into()),
            name if name.is_empty() || name.contains('/') || name.starts_with('.') => {
                Err("expected host, none, or the name of a network namespace under /run/netns".into())
            }
            name => {
                if netns_dir.join(name).exists() {
                    Ok(Network::Named(name.to_string()))
                } else {
                    Err(format!(
                        "no network namespace {name:?} in {}: create it with `ip netns add {name}`, or use host or none",
                        netns_dir.display()
                    ))
                }
            }
        }
    }
}

/// `SPACELIFT_WORKER_RUNTIME`: how much isolation runs get.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// Namespaces, pivot_root, landlock, seccomp, cgroups, rlimits.
    Liftoff,
    /// No namespaces: landlock, seccomp, rlimits, cgroups where possible.
    Landlock,
    /// No isolation at all; allowed only when set explicitly.
    None,
}

impl Runtime {
    pub fn parse(text: &str) -> Result<Runtime, String> {
        match text.trim() {
            "liftoff" => Ok(Runtime::Liftoff),
            "landlock" => Ok(Runtime::Landlock),
            "none" => Ok(Runtime::None),
            other => Err(format!(
                "unknown runtime {other:?}: expected liftoff (full sandbox), landlock (no namespaces) or none (no isolation)"
            )),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Runtime::Liftoff => "liftoff",
            Runtime::Landlock => "landlock",
            Runtime::None => "none",
        }
    }
}

/// `LIFTOFF_LANDLOCK`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LandlockMode {
    BestEffort,
    Require,
}

/// `LIFTOFF_LOG_FORMAT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

/// One VCS agent mapping: runs whose source names the pool `name` fetch it
/// from `base_endpoint`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VcsMapping {
    pub index: u32,
    pub name: String,
    pub base_endpoint: String,
}

/// Proxies for the one HTTP agent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Proxies {
    pub http: Option<String>,
    pub https: Option<String>,
    pub no_proxy: Vec<String>,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub token: Option<Token>,
    pub private_key: Option<KeyConfig>,
    pub mask_envs: Vec<String>,
    pub sensitive_output_upload: bool,
    pub run_initialization_policy: Option<PathBuf>,
    pub logs_timeout: Duration,
    pub run_timeout: Duration,
    pub debug: bool,
    pub whitelist_envs: Vec<WhitelistEntry>,
    pub extra_mounts: Vec<Mount>,
    pub ro_extra_mounts: Vec<Mount>,
    pub wo_extra_mounts: Vec<Mount>,
    /// `LIFTOFF_ALLOW_UNSAFE_MOUNTS`: mounts that break isolation are
    /// warnings, not errors.
    pub allow_unsafe_mounts: bool,
    pub network: Network,
    pub runtime: Runtime,
    pub docker_config_dir: Option<PathBuf>,
    pub metadata: BTreeMap<String, String>,
    pub vcs_mappings: Vec<VcsMapping>,
    pub run_logs_on_stdout: bool,
    pub disk_usage_threshold: u8,
    pub proxies: Proxies,
    pub additional_root_cas: Vec<CertificateDer<'static>>,
    pub state_dir: PathBuf,
    pub provider_cache_dir: PathBuf,
    pub provider_cache_max_bytes: u64,
    pub workers: u16,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub shutdown_grace: Duration,
    pub kill_grace: Duration,
    pub landlock: LandlockMode,
    /// `None` = auto (host memory minus the reserve).
    pub job_memory: Option<u64>,
    pub job_pids: u64,
    pub job_cpus: Option<f64>,
    /// Link timing (`LIFTOFF_MQTT_KEEPALIVE`, ...).
    pub mqtt_keepalive: Duration,
    pub heartbeat_interval: Duration,
    pub probe_interval: Duration,
    pub failback_after: Duration,
    pub resend_after: Duration,
}

/// The result of reading the environment: a configuration with defaults in
/// place of bad values, and everything wrong with it.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Loaded {
    /// The configuration, or every error found.
    pub fn into_result(self) -> Result<Config, Vec<Problem>> {
        if self.errors.is_empty() {
            Ok(self.config)
        } else {
            Err(self.errors)
        }
    }
}

/// Most workers a host may run at once.
pub const MAX_WORKERS: u16 = 64;

/// Reads variables one at a time, collecting problems.
struct Reader<'a> {
    env: &'a Env,
    netns_dir: &'a Path,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
}

impl<'a> Reader<'a> {
    fn error(&mut self, var: &str, message: impl Into<String>) {
        self.errors.push(Problem {
            var: var.to_string(),
            message: message.into(),
        });
    }

    fn warn(&mut self, var: &str, message: impl Into<String>) {
        self.warnings.push(Problem {
            var: var.to_string(),
            message: message.into(),
        });
    }

    /// A non-empty value, trimmed of surrounding whitespace.
    fn get(&self, var: &str) -> Option<&'a str> {
        self.env.get(var).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Reads `var` with `parse`, reporting `"VALUE": problem` on failure and
    /// returning `default` then.
    fn parsed<T>(
        &mut self,
        var: &str,
        default: T,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> T {
        let Some(raw) = self.get(var) else {
            return default;
        };
        match parse(raw) {
            Ok(v) => v,
            Err(e) => {
                self.error(var, format!("{raw:?}: {e}"));
                default
            }
        }
    }

    /// A duration longer than 0 and at most `max` (so that adding it to an
    /// `Instant` can never overflow).
    fn duration(&mut self, var: &str, default: Duration, max: Duration) -> Duration {
        self.parsed(var, default, |v| parse::bounded_duration(v, max))
    }

    fn boolean(&mut self, var: &str, default: bool) -> bool {
        self.parsed(var, default, parse::boolean)
    }

    fn path(&mut self, var: &str, default: &str) -> PathBuf {
        self.parsed(var, PathBuf::from(default), |v| {
            if Path::new(v).is_absolute() {
                Ok(PathBuf::from(v))
            } else {
                Err("expected an absolute path".into())
            }
        })
    }

    /// A mount list. A mount whose host path breaks isolation
    /// ([`parse::mount_risk`]) is an error, or a warning when `allow_unsafe`.
    fn mounts(&mut self, var: &str, state_dir: &Path, allow_unsafe: bool) -> Vec<Mount> {
        let Some(raw) = self.get(var) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in parse::mount_list(raw) {
            match parse::mount(item) {
                Ok(m) => {
                    if let Some(risk) = parse::mount_risk(&m, state_dir) {
                        if allow_unsafe {
                            self.warn(
                                var,
                                format!(
                                    "{item:?} {risk}: every run can reach it (allowed by {}=true)",
                                    parse::ALLOW_UNSAFE_MOUNTS
                                ),
                            );
                        } else {
                            self.error(var, format!("{item:?} {risk}: that breaks the sandbox's isolation; remove it, or set {}=true to allow it", parse::ALLOW_UNSAFE_MOUNTS));
                            continue;
                        }
                    }
                    out.push(m);
                }
                Err(e) => self.error(var, e),
            }
        }
        out
    }

    fn names(&mut self, var: &str) -> Vec<String> {
        let Some(raw) = self.get(var) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for item in parse::list(raw) {
            if parse::is_env_name(item) {
                out.push(item.to_string());
            } else {
                self.error(var, format!("{item:?} is not a variable name: expected names like AWS_REGION, comma-separated"));
            }
        }
        out
    }
}

impl Config {
    /// Reads and validates everything. Never fails: see [`Loaded`].
    pub fn load(env: &Env) -> Loaded {
        Self::load_with_netns_dir(env, Path::new(NETNS_DIR))
    }

    /// As [`Config::load`], with named network namespaces looked up in
    /// `netns_dir` (tests use a temporary directory).
    pub fn load_with_netns_dir(env: &Env, netns_dir: &Path) -> Loaded {
        let mut r = Reader {
            env,
            netns_dir,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        for name in &env.not_utf8 {
            if vars::is_known(name) {
                r.error(name, "is not valid UTF-8: set it to a UTF-8 value");
            }
        }

        let token = r
            .get("SPACELIFT_TOKEN")
            .and_then(|t| match token::parse(t) {
                Ok(t) => Some(t),
                Err(e) => {
                    r.error("SPACELIFT_TOKEN", e);
                    None
                }
            });
        let private_key = read_private_key(&mut r);

        let mask_envs = r.names("SPACELIFT_MASK_ENVS");
        let sensitive_output_upload = r.boolean("SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED", false);
        let run_initialization_policy = r.get("SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY").and_then(|p| {
            match std::fs::File::open(p).and_then(|f| f.metadata()) {
                Ok(m) if m.is_file() => Some(PathBuf::from(p)),
                Ok(_) => {
                    r.error("SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY", format!("{p:?} is not a file: expected the path of a Rego policy file"));
                    None
                }
                Err(e) => {
                    r.error("SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY", format!("{p:?} cannot be read ({e}): expected the path of a readable Rego policy file"));
                    None
                }
            }
        });
        let logs_timeout = r.duration(
            "SPACELIFT_LAUNCHER_LOGS_TIMEOUT",
            DEFAULT_LOGS_TIMEOUT,
            parse::MAX_TIMEOUT,
        );
        let run_timeout = r.duration(
            "SPACELIFT_LAUNCHER_RUN_TIMEOUT",
            DEFAULT_RUN_TIMEOUT,
            parse::MAX_TIMEOUT,
        );
        let debug = r.boolean("SPACELIFT_DEBUG", false);

        let whitelist_envs = r
            .names("SPACELIFT_WHITELIST_ENVS")
            .into_iter()
            .map(|item| {
                if let Some(n) = item.strip_prefix("ro_").filter(|n| !n.is_empty()) {
                    WhitelistEntry {
                        name: n.to_string(),
                        scope: RunScope::ReadOnly,
                    }
                } else if let Some(n) = item.strip_prefix("wo_").filter(|n| !n.is_empty()) {
                    WhitelistEntry {
                        name: n.to_string(),
                        scope: RunScope::WriteOnly,
                    }
                } else {
                    WhitelistEntry {
                        name: item,
                        scope: RunScope::All,
                    }
                }
            })
            .collect::<Vec<_>>();
        for w in &whitelist_envs {
            if vars::is_launcher_secret(&w.name) {
                r.warn(
                    "SPACELIFT_WHITELIST_ENVS",
                    format!(
                        "names {}, liftoff's own secret: it is never passed to runs; remove it from the list",
                        w.name
                    ),
                );
            }
        }
        let state_dir = r.path("LIFTOFF_STATE_DIR", "/var/lib/liftoff");
        let allow_unsafe_mounts = r.boolean(parse::ALLOW_UNSAFE_MOUNTS, false);
        let extra_mounts = r.mounts(
            "SPACELIFT_WORKER_EXTRA_MOUNTS",
            &state_dir,
            allow_unsafe_mounts,
        );
        let ro_extra_mounts = r.mounts(
            "SPACELIFT_WORKER_RO_EXTRA_MOUNTS",
            &state_dir,
            allow_unsafe_mounts,
        );
        let wo_extra_mounts = r.mounts(
            "SPACELIFT_WORKER_WO_EXTRA_MOUNTS",
            &state_dir,
            allow_unsafe_mounts,
        );
        let netns_dir = r.netns_dir;
        let network = r.parsed("SPACELIFT_WORKER_NETWORK", Network::Host, |v| {
            Network::parse(v, netns_dir)
        });
        let runtime = r.parsed("SPACELIFT_WORKER_RUNTIME", Runtime::Liftoff, Runtime::parse);
        if runtime == Runtime::None {
            r.warn(
                "SPACELIFT_WORKER_RUNTIME",
                "is none: runs get NO isolation from this host; every run will say so in its log",
            );
        }
        let docker_config_dir = r.get("SPACELIFT_DOCKER_CONFIG_DIR").and_then(|d| {
            if Path::new(d).is_dir() {
                Some(PathBuf::from(d))
            } else {
                r.error(
                    "SPACELIFT_DOCKER_CONFIG_DIR",
                    format!("{d:?} is not a directory: expected the directory holding config.json"),
                );
                None
            }
        });

        let mut metadata = BTreeMap::new();
        for (name, value) in env.with_prefix(vars::METADATA_PREFIX) {
            let tag = &name[vars::METADATA_PREFIX.len()..];
            if tag.is_empty() {
                r.error(name, "has no tag name: expected SPACELIFT_METADATA_<tag>, e.g. SPACELIFT_METADATA_instance_id");
            } else {
                metadata.insert(tag.to_string(), value.to_string());
            }
        }
        let vcs_mappings = read_vcs_mappings(&mut r);
        let run_logs_on_stdout = r.boolean("SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED", false);
        let disk_usage_threshold = r.parsed(
            "SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD",
            90,
            parse::percent,
        );
        let proxies = read_proxies(&mut r);
        let additional_root_cas = r.get("ADDITIONAL_ROOT_CAS").map_or_else(Vec::new, |v| {
            let (text, origin) = if v.contains("-----BEGIN") {
                (Ok(v.to_string()), "the inline value".to_string())
            } else {
                (std::fs::read_to_string(v), format!("file {v:?}"))
            };
            match text {
                Ok(t) => token::pem_certificates(&t).unwrap_or_else(|e| {
                    r.error("ADDITIONAL_ROOT_CAS", format!("{origin} {e}: expected PEM certificates, inline or as a file path"));
                    Vec::new()
                }),
                Err(e) => {
                    r.error("ADDITIONAL_ROOT_CAS", format!("{origin} cannot be read ({e}): expected PEM certificates, inline or as a file path"));
                    Vec::new()
                }
            }
        });

        let provider_cache_dir =
            r.path("LIFTOFF_PROVIDER_CACHE_DIR", "/var/cache/liftoff/providers");
        let provider_cache_max_bytes = r.parsed(
            "LIFTOFF_PROVIDER_CACHE_MAX_BYTES",
            5 << 30,
            parse::byte_size,
        );
        let workers = r.parsed("LIFTOFF_WORKERS", 1, |v| match v.parse::<u16>() {
            Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
            _ => Err(format!(
                "expected a whole number of concurrent runs from 1 to {MAX_WORKERS}"
            )),
        });
        let default_filter = if debug { "debug" } else { "info" };
        let log_filter = r.parsed("LIFTOFF_LOG", default_filter.to_string(), |v| {
            v.parse::<tracing_subscriber::filter::Targets>()
                .map(|_| v.to_string())
                .map_err(|e| format!("{e}: expected a filter in RUST_LOG syntax, such as info or info,liftoff::link=debug"))
        });
        let log_format = r.parsed("LIFTOFF_LOG_FORMAT", LogFormat::Text, |v| match v {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err("expected text or json".into()),
        });
        let shutdown_grace = r.duration(
            "LIFTOFF_SHUTDOWN_GRACE",
            Duration::from_secs(600),
            parse::MAX_TIMEOUT,
        );
        let kill_grace = r.duration(
            "LIFTOFF_KILL_GRACE",
            DEFAULT_KILL_GRACE,
            parse::MAX_INTERVAL,
        );
        let landlock = r.parsed("LIFTOFF_LANDLOCK", LandlockMode::BestEffort, |v| match v {
            "best-effort" => Ok(LandlockMode::BestEffort),
            "require" => Ok(LandlockMode::Require),
            _ => Err("expected best-effort or require".into()),
        });
        let job_memory = r.parsed("LIFTOFF_JOB_MEMORY", None, |v| {
            if v == "auto" {
                return Ok(None);
            }
            match parse::byte_size(v) {
                Ok(n) if n >= 16 << 20 => Ok(Some(n)),
                Ok(_) => Err(
                    "is below the 16MiB minimum: expected a size such as 1536MiB, or auto".into(),
                ),
                Err(e) => Err(format!("{e}, or auto")),
            }
        });
        let job_pids = r.parsed("LIFTOFF_JOB_PIDS", 4096, |v| match v.parse::<u64>() {
            Ok(n) if n >= 16 => Ok(n),
            _ => Err("expected a whole number of processes, at least 16".into()),
        });
        let job_cpus = r.parsed("LIFTOFF_JOB_CPUS", None, |v| match v.parse::<f64>() {
            Ok(n) if n.is_finite() && n >= 0.01 => Ok(Some(n)),
            _ => Err("expected a number of CPUs such as 1 or 1.5".into()),
        });

        let interval = |r: &mut Reader<'_>, var: &str, secs: u64| {
            r.duration(var, Duration::from_secs(secs), parse::MAX_INTERVAL)
        };
        let mqtt_keepalive = interval(&mut r, "LIFTOFF_MQTT_KEEPALIVE", 30);
        let heartbeat_interval = interval(&mut r, "LIFTOFF_HEARTBEAT_INTERVAL", 30);
        let probe_interval = interval(&mut r, "LIFTOFF_PROBE_INTERVAL", 15);
        let failback_after = interval(&mut r, "LIFTOFF_FAILBACK_AFTER", 120);
        let resend_after = interval(&mut r, "LIFTOFF_RESEND_AFTER", 30);

        warn_unknown(&mut r);

        let config = Config {
            token,
            private_key,
            mask_envs,
            sensitive_output_upload,
            run_initialization_policy,
            logs_timeout,
            run_timeout,
            debug,
            whitelist_envs,
            extra_mounts,
            ro_extra_mounts,
            wo_extra_mounts,
            allow_unsafe_mounts,
            network,
            runtime,
            docker_config_dir,
            metadata,
            vcs_mappings,
            run_logs_on_stdout,
            disk_usage_threshold,
            proxies,
            additional_root_cas,
            state_dir,
            provider_cache_dir,
            provider_cache_max_bytes,
            workers,
            log_filter,
            log_format,
            shutdown_grace,
            kill_grace,
            landlock,
            job_memory,
            job_pids,
            job_cpus,
            mqtt_keepalive,
            heartbeat_interval,
            probe_interval,
            failback_after,
            resend_after,
        };
        Loaded {
            config,
            errors: r.errors,
            warnings: r.warnings,
        }
    }

    /// The effective configuration as (variable, value) pairs, secrets
    /// redacted, for `liftoff config`.
    pub fn effective(&self) -> Vec<(String, String)> {
        fn join<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
            items.iter().map(f).collect::<Vec<_>>().join(",")
        }
        fn mounts(m: &[Mount]) -> String {
            join(m, |m| {
                format!(
                    "{}:{}:{}",
                    parse::escape(&m.host.display().to_string()),
                    parse::escape(&m.sandbox.display().to_string()),
                    if m.read_only { "ro" } else { "rw" }
                )
            })
        }
        let d = parse::format_duration;
        let set = |present: bool| {
            if present {
                "(set, redacted)".to_string()
            } else {
                "(not set)".to_string()
            }
        };
        let mut out: Vec<(String, String)> = vec![
            (
                "SPACELIFT_TOKEN".into(),
                match &self.token {
                    Some(t) => format!(
                        "(set, redacted) pool {} with brokers {}",
                        t.pool_id,
                        join(&t.brokers, |b| b.to_string())
                    ),
                    None => set(false),
                },
            ),
            (
                "SPACELIFT_POOL_PRIVATE_KEY".into(),
                set(matches!(&self.private_key, Some(k) if k.source == KeySource::Env)),
            ),
            (
                "LIFTOFF_POOL_PRIVATE_KEY_FILE".into(),
                match &self.private_key {
                    Some(KeyConfig {
                        source: KeySource::File(p),
                        ..
                    }) => p.display().to_string(),
                    _ => String::new(),
                },
            ),
            ("SPACELIFT_MASK_ENVS".into(), self.mask_envs.join(",")),
            (
                "SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED".into(),
                self.sensitive_output_upload.to_string(),
            ),
            (
                "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY".into(),
                self.run_initialization_policy
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            (
                "SPACELIFT_LAUNCHER_LOGS_TIMEOUT".into(),
                d(self.logs_timeout),
            ),
            ("SPACELIFT_LAUNCHER_RUN_TIMEOUT".into(), d(self.run_timeout)),
            ("SPACELIFT_DEBUG".into(), self.debug.to_string()),
            (
                "SPACELIFT_WHITELIST_ENVS".into(),
                join(&self.whitelist_envs, |w| match w.scope {
                    RunScope::All => w.name.clone(),
                    RunScope::ReadOnly => format!("ro_{}", w.name),
                    RunScope::WriteOnly => format!("wo_{}", w.name),
                }),
            ),
            (
                "SPACELIFT_WORKER_EXTRA_MOUNTS".into(),
                mounts(&self.extra_mounts),
            ),
            (
                parse::ALLOW_UNSAFE_MOUNTS.into(),
                self.allow_unsafe_mounts.to_string(),
            ),
            (
                "SPACELIFT_WORKER_RO_EXTRA_MOUNTS".into(),
                mounts(&self.ro_extra_mounts),
            ),
            (
                "SPACELIFT_WORKER_WO_EXTRA_MOUNTS".into(),
                mounts(&self.wo_extra_mounts),
            ),
            ("SPACELIFT_WORKER_NETWORK".into(), self.network.to_string()),
            (
                "SPACELIFT_WORKER_RUNTIME".into(),
                self.runtime.name().into(),
            ),
            (
                "SPACELIFT_DOCKER_CONFIG_DIR".into(),
                self.docker_config_dir
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
            ),
            (
                "SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED".into(),
                self.run_logs_on_stdout.to_string(),
            ),
            (
                "SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD".into(),
                format!("{}%", self.disk_usage_threshold),
            ),
            (
                "HTTP_PROXY".into(),
                self.proxies
                    .http
                    .as_deref()
                    .map(redact_userinfo)
                    .unwrap_or_default(),
            ),
            (
                "HTTPS_PROXY".into(),
                self.proxies
                    .https
                    .as_deref()
                    .map(redact_userinfo)
                    .unwrap_or_default(),
            ),
            ("NO_PROXY".into(), self.proxies.no_proxy.join(",")),
            (
                "ADDITIONAL_ROOT_CAS".into(),
                match self.additional_root_cas.len() {
                    0 => String::new(),
                    n => format!("{n} certificate(s)"),
                },
            ),
            (
                "LIFTOFF_STATE_DIR".into(),
                self.state_dir.display().to_string(),
            ),
            (
                "LIFTOFF_PROVIDER_CACHE_DIR".into(),
                self.provider_cache_dir.display().to_string(),
            ),
            (
                "LIFTOFF_PROVIDER_CACHE_MAX_BYTES".into(),
                self.provider_cache_max_bytes.to_string(),
            ),
            ("LIFTOFF_WORKERS".into(), self.workers.to_string()),
            ("LIFTOFF_LOG".into(), self.log_filter.clone()),
            (
                "LIFTOFF_LOG_FORMAT".into(),
                match self.log_format {
                    LogFormat::Text => "text",
                    LogFormat::Json => "json",
                }
                .into(),
            ),
            ("LIFTOFF_SHUTDOWN_GRACE".into(), d(self.shutdown_grace)),
            ("LIFTOFF_KILL_GRACE".into(), d(self.kill_grace)),
            (
                "LIFTOFF_LANDLOCK".into(),
                match self.landlock {
                    LandlockMode::BestEffort => "best-effort",
                    LandlockMode::Require => "require",
                }
                .into(),
            ),
            (
                "LIFTOFF_JOB_MEMORY".into(),
                self.job_memory
                    .map_or_else(|| "auto".into(), |m| m.to_string()),
            ),
            ("LIFTOFF_JOB_PIDS".into(), self.job_pids.to_string()),
            (
                "LIFTOFF_JOB_CPUS".into(),
                self.job_cpus.map(|c| c.to_string()).unwrap_or_default(),
            ),
            ("LIFTOFF_MQTT_KEEPALIVE".into(), d(self.mqtt_keepalive)),
            (
                "LIFTOFF_HEARTBEAT_INTERVAL".into(),
                d(self.heartbeat_interval),
            ),
            ("LIFTOFF_PROBE_INTERVAL".into(), d(self.probe_interval)),
            ("LIFTOFF_FAILBACK_AFTER".into(), d(self.failback_after)),
            ("LIFTOFF_RESEND_AFTER".into(), d(self.resend_after)),
        ];
        for (tag, value) in &self.metadata {
            out.push((format!("{}{tag}", vars::METADATA_PREFIX), value.clone()));
        }
        for m in &self.vcs_mappings {
            out.push((
                format!("{}{}", vars::VCS_NAME_PREFIX, m.index),
                m.name.clone(),
            ));
            out.push((
                format!("{}{}", vars::VCS_ENDPOINT_PREFIX, m.index),
                m.base_endpoint.clone(),
            ));
        }
        out
    }
}

/// `http://user:pass@proxy:3128` → `http://***@proxy:3128`.
fn redact_userinfo(url: &str) -> String {
    let (prefix, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{prefix}***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

fn read_private_key(r: &mut Reader<'_>) -> Option<KeyConfig> {
    let inline = r.get("SPACELIFT_POOL_PRIVATE_KEY");
    let file = r.get("LIFTOFF_POOL_PRIVATE_KEY_FILE");
    match (inline, file) {
        (Some(_), Some(_)) => {
            r.error(
                "LIFTOFF_POOL_PRIVATE_KEY_FILE",
                "is set together with SPACELIFT_POOL_PRIVATE_KEY: set only one of them",
            );
            None
        }
        (Some(b64), None) => {
            let compact: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
            match token::decode_base64(&compact) {
                Ok(pem) => Some(KeyConfig {
                    pem: Secret(pem),
                    source: KeySource::Env,
                }),
                Err(_) if b64.contains("-----BEGIN") => {
                    r.error("SPACELIFT_POOL_PRIVATE_KEY", "holds PEM text, not base64 of it: set it to the output of `base64 -w 0 spacelift.key`");
                    None
                }
                Err(_) => {
                    r.error(
                        "SPACELIFT_POOL_PRIVATE_KEY",
                        "is not valid base64: set it to the output of `base64 -w 0 spacelift.key`",
                    );
                    None
                }
            }
        }
        (None, Some(path)) => match std::fs::read(path) {
            Ok(pem) => Some(KeyConfig {
                pem: Secret(pem),
                source: KeySource::File(PathBuf::from(path)),
            }),
            Err(e) => {
                r.error("LIFTOFF_POOL_PRIVATE_KEY_FILE", format!("{path:?} cannot be read ({e}): expected the path of the pool's PEM private key, readable by the launcher"));
                None
            }
        },
        (None, None) => None,
    }
}

fn read_vcs_mappings(r: &mut Reader<'_>) -> Vec<VcsMapping> {
    let mut names: BTreeMap<u32, (String, String)> = BTreeMap::new();
    let mut endpoints: BTreeMap<u32, (String, String)> = BTreeMap::new();
    for (prefix, map) in [
        (vars::VCS_NAME_PREFIX, &mut names),
        (vars::VCS_ENDPOINT_PREFIX, &mut endpoints),
    ] {
        for (var, value) in r.env.with_prefix(prefix) {
            let suffix = &var[prefix.len()..];
            match suffix.parse::<u32>() {
                Ok(n) if n.to_string() == suffix => {
                    map.insert(n, (var.to_string(), value.trim().to_string()));
                }
                _ => r.errors.push(Problem {
                    var: var.to_string(),
                    message: format!("{suffix:?} is not a mapping number: expected {prefix}<N> with N = 0, 1, 2, ..."),
                }),
            }
        }
    }
    let max = names.keys().chain(endpoints.keys()).max().copied();
    let mut out = Vec::new();
    let Some(max) = max else { return out };
    for n in 0..=max {
        match (names.get(&n), endpoints.get(&n)) {
            (Some((nvar, name)), Some((evar, endpoint))) => {
                if name.is_empty() {
                    r.error(nvar, "is empty: expected the name of the VCS Agent Pool");
                    continue;
                }
                match parse::http_url(endpoint) {
                    Ok(url) => out.push(VcsMapping {
                        index: n,
                        name: name.clone(),
                        base_endpoint: url,
                    }),
                    Err(e) => r.error(evar, format!("{endpoint:?}: {e}")),
                }
            }
            (Some((nvar, _)), None) => r.error(
                nvar,
                format!(
                    "has no {}{n}: set the VCS system's address, e.g. https://internal-github.net",
                    vars::VCS_ENDPOINT_PREFIX
                ),
            ),
            (None, Some((evar, _))) => r.error(
                evar,
                format!(
                    "has no {}{n}: set the VCS Agent Pool's name",
                    vars::VCS_NAME_PREFIX
                ),
            ),
            (None, None) => r.error(
                &format!("{}{n}", vars::VCS_NAME_PREFIX),
                format!(
                    "is missing, but mapping {max} is set: number mappings from 0 without gaps"
                ),
            ),
        }
    }
    let mut seen = BTreeMap::new();
    for m in &out {
        if let Some(first) = seen.insert(m.name.clone(), m.index) {
            r.warnings.push(Problem {
                var: format!("{}{}", vars::VCS_NAME_PREFIX, m.index),
                message: format!(
                    "repeats the name {:?} of mapping {first}: the first mapping wins",
                    m.name
                ),
            });
        }
    }
    out
}

fn read_proxies(r: &mut Reader<'_>) -> Proxies {
    let mut proxy = |upper: &str, lower: &str| -> Option<String> {
        let (var, raw) = match (r.get(upper), r.get(lower)) {
            (Some(v), _) => (upper, v),
            (None, Some(v)) => (lower, v),
            (None, None) => return None,
        };
        let with_scheme = if raw.contains("://") {
            raw.to_string()
        } else {
            format!("http://{raw}")
        };
        match parse::http_url(&with_scheme) {
            Ok(u) => Some(u),
            Err(e) => {
                let shown = redact_userinfo(raw);
                r.error(
                    var,
                    format!("{shown:?}: {e} (proxies are http://host:port)"),
                );
                None
            }
        }
    };
    let http = proxy("HTTP_PROXY", "http_proxy");
    let https = proxy("HTTPS_PROXY", "https_proxy");
    let no_proxy = r
        .get("NO_PROXY")
        .or_else(|| r.get("no_proxy"))
        .map(|v| parse::list(v).map(str::to_string).collect())
        .unwrap_or_default();
    Proxies {
        http,
        https,
        no_proxy,
    }
}

fn warn_unknown(r: &mut Reader<'_>) {
    let unknown: Vec<String> = r
        .env
        .vars
        .keys()
        .filter(|k| {
            (k.starts_with("SPACELIFT_") || k.starts_with("LIFTOFF_")) && !vars::is_known(k)
        })
        .cloned()
        .collect();
    for name in unknown {
        let message = match vars::closest(&name) {
            Some(c) if c.ends_with('_') => {
                format!("is not a variable liftoff reads; did you mean {c}<...>?")
            }
            Some(c) => format!("is not a variable liftoff reads; did you mean {c}?"),
            None => "is not a variable liftoff reads; it is ignored".to_string(),
        };
        r.warn(&name, message);
    }
}

#[cfg(test)]
mod tests;
