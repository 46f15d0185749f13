//! Every operator setting, read from the environment into one typed,
//! validated [`Config`].
//!
//! Each variable is declared once, in [`vars::VARIABLES`]: name, default,
//! help, whether it is a secret, how it is read and how it is shown.
//!
//! Call [`Env::from_process`] (or build an [`Env`] in tests), then
//! [`Config::load`]. Loading never stops at the first problem: it returns the
//! configuration (defaults in place of bad values) with every error and
//! warning found, each naming the variable, showing the bad value unless the
//! variable is a secret, and saying what is expected.

pub mod parse;
mod read;
pub mod token;
pub mod vars;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use serde::Serialize;

pub use parse::Mount;
pub use token::{Broker, Endpoint, Token};

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

/// `SPACELIFT_WORKER_COMMS_PROTOCOL`: the binding of the control-plane
/// link (docs/protocol.md, "Transports").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommsProtocol {
    Mqtt,
    Poll,
}

impl fmt::Display for CommsProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CommsProtocol::Mqtt => "mqtt",
            CommsProtocol::Poll => "poll",
        })
    }
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

// The defaults below are for rooms that work without a configuration; each
// must equal its variable's default text in `vars::VARIABLES` (a test checks).

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
    /// `SPACELIFT_WORKER_COMMS_PROTOCOL`; `None`: chosen from the token
    /// (see [`Config::comms_protocol`]).
    pub comms_protocol: Option<CommsProtocol>,
    /// `SPACELIFT_WORKER_COMMS_URL`: one long-poll endpoint instead of the
    /// token's.
    pub comms_url: Option<String>,
    /// `LIFTOFF_POLL_WAIT`: how long the plane may hold a long poll.
    pub poll_wait: Duration,
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

impl Config {
    /// Reads and validates everything. Never fails: see [`Loaded`].
    pub fn load(env: &Env) -> Loaded {
        Self::load_with_netns_dir(env, Path::new(NETNS_DIR))
    }

    /// As [`Config::load`], with named network namespaces looked up in
    /// `netns_dir` (tests use a temporary directory).
    ///
    /// Walks [`vars::VARIABLES`]: every default first, then every variable
    /// that is set, in table order; then the families; then the warnings
    /// about unknown `SPACELIFT_*`/`LIFTOFF_*` names.
    pub fn load_with_netns_dir(env: &Env, netns_dir: &Path) -> Loaded {
        let (mut config, default_problems) = read::defaults(netns_dir);
        let mut r = read::Reader::new(env, netns_dir);
        // A wrong default text is a bug; it must not pass silently.
        r.errors.extend(default_problems);
        for name in &env.not_utf8 {
            if vars::is_known(name) {
                r.error_on(name, "is not valid UTF-8: set it to a UTF-8 value");
            }
        }
        for var in vars::VARIABLES {
            read::read_variable(&mut r, var, &mut config);
        }
        config.metadata = read::metadata(&mut r);
        config.vcs_mappings = read::vcs_mappings(&mut r);
        read::warn_unknown(&mut r);
        Loaded {
            config,
            errors: r.errors,
            warnings: r.warnings,
        }
    }

    /// The effective configuration as (variable, value) pairs, secrets
    /// redacted, for `liftoff config`: each entry of [`vars::VARIABLES`] in
    /// order, then each member of a family that is set.
    pub fn effective(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = vars::VARIABLES
            .iter()
            .map(|v| (v.name.to_string(), (v.show)(self)))
            .collect();
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

#[cfg(test)]
mod tests;
