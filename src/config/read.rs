//! How [`Config::load`](super::Config::load) reads the environment, and the
//! readers that take more than one line, named by the entries of
//! [`vars::VARIABLES`](super::vars::VARIABLES).
//!
//! Call order: [`defaults`] (each entry's default text read by its own
//! reader onto [`blank`]), then [`read_variable`] for each entry that is set,
//! in table order, then the families ([`metadata`], [`vcs_mappings`]), then
//! [`warn_unknown`].
//!
//! A reader gets the variable's value (trimmed, never empty), the
//! configuration to write into, and the [`Reader`] to report to. Its
//! `Err(problem)` is reported as `"VALUE": problem` (only `problem` for a
//! secret) and leaves the field as it was, so the default stands in for a bad
//! value. A reader whose messages take another shape (one error per list
//! item, a redacted value) reports through [`Reader::error`] itself.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::vars::{self, Var};
use super::{
    Config, Env, KeyConfig, KeySource, LandlockMode, LogFormat, MAX_WORKERS, Mount, Network,
    Problem, Proxies, RunScope, Runtime, Secret, VcsMapping, WhitelistEntry, parse, token,
};

/// Reads variables one at a time, collecting problems.
pub(super) struct Reader<'a> {
    pub(super) env: &'a Env,
    pub(super) netns_dir: &'a Path,
    /// The variable being read: [`Reader::error`] and [`Reader::warn`] name it.
    var: &'static str,
    pub(super) errors: Vec<Problem>,
    pub(super) warnings: Vec<Problem>,
}

impl<'a> Reader<'a> {
    pub(super) fn new(env: &'a Env, netns_dir: &'a Path) -> Self {
        Reader {
            env,
            netns_dir,
            var: "",
            errors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// An error about the variable being read.
    pub(super) fn error(&mut self, message: impl Into<String>) {
        let var = self.var;
        self.error_on(var, message);
    }

    /// A warning about the variable being read.
    pub(super) fn warn(&mut self, message: impl Into<String>) {
        let var = self.var;
        self.warn_on(var, message);
    }

    pub(super) fn error_on(&mut self, var: &str, message: impl Into<String>) {
        self.errors.push(Problem {
            var: var.to_string(),
            message: message.into(),
        });
    }

    pub(super) fn warn_on(&mut self, var: &str, message: impl Into<String>) {
        self.warnings.push(Problem {
            var: var.to_string(),
            message: message.into(),
        });
    }

    /// A non-empty value, trimmed of surrounding whitespace.
    pub(super) fn get(&self, var: &str) -> Option<&'a str> {
        self.env.get(var).map(str::trim).filter(|v| !v.is_empty())
    }

    /// Reads `value` into `config` with `var`'s reader, as `name` (the
    /// variable's name, or its alias when that is what was set).
    fn apply(&mut self, var: &Var, name: &'static str, value: &str, config: &mut Config) {
        self.var = name;
        if let Err(problem) = (var.read)(value, config, self) {
            let message = if var.secret {
                problem
            } else {
                format!("{value:?}: {problem}")
            };
            self.error(message);
        }
    }
}

/// Sets `field` from a parser's result, leaving it as it was on an error.
/// The usual body of a table entry's reader:
/// `|v, c, _| set(&mut c.debug, parse::boolean(v))`.
pub(super) fn set<T>(field: &mut T, parsed: Result<T, String>) -> Result<(), String> {
    *field = parsed?;
    Ok(())
}

/// The value of each field before its variable's default text is read:
/// empty, zero or `None`. A variable with a default overwrites its field in
/// [`defaults`]; one without (empty default text) keeps this value, which
/// `liftoff config` shows as empty or `(not set)`.
fn blank() -> Config {
    Config {
        token: None,
        private_key: None,
        mask_envs: Vec::new(),
        sensitive_output_upload: false,
        run_initialization_policy: None,
        logs_timeout: Duration::ZERO,
        run_timeout: Duration::ZERO,
        debug: false,
        whitelist_envs: Vec::new(),
        extra_mounts: Vec::new(),
        ro_extra_mounts: Vec::new(),
        wo_extra_mounts: Vec::new(),
        allow_unsafe_mounts: false,
        network: Network::None,
        runtime: Runtime::Liftoff,
        docker_config_dir: None,
        metadata: BTreeMap::new(),
        vcs_mappings: Vec::new(),
        run_logs_on_stdout: false,
        disk_usage_threshold: 0,
        proxies: Proxies::default(),
        additional_root_cas: Vec::new(),
        state_dir: PathBuf::new(),
        provider_cache_dir: PathBuf::new(),
        provider_cache_max_bytes: 0,
        workers: 0,
        log_filter: String::new(),
        log_format: LogFormat::Text,
        shutdown_grace: Duration::ZERO,
        kill_grace: Duration::ZERO,
        landlock: LandlockMode::BestEffort,
        job_memory: None,
        job_pids: 0,
        job_cpus: None,
        comms_protocol: None,
        comms_url: None,
        poll_wait: Duration::ZERO,
        mqtt_keepalive: Duration::ZERO,
        heartbeat_interval: Duration::ZERO,
        probe_interval: Duration::ZERO,
        failback_after: Duration::ZERO,
        resend_after: Duration::ZERO,
    }
}

/// The configuration of an empty environment: every entry's default text
/// read by the entry's own reader, so a default is written once, as text.
/// The problems are empty unless a default text is wrong (a unit test checks
/// that they are).
pub(super) fn defaults(netns_dir: &Path) -> (Config, Vec<Problem>) {
    let empty = Env::default();
    let mut r = Reader::new(&empty, netns_dir);
    let mut config = blank();
    for var in vars::VARIABLES {
        if !var.default.is_empty() {
            r.apply(var, var.name, var.default, &mut config);
        }
    }
    r.errors.extend(r.warnings);
    (config, r.errors)
}

/// Reads `var` into `config` if it (or its alias) is set.
pub(super) fn read_variable(r: &mut Reader<'_>, var: &Var, config: &mut Config) {
    let set = r
        .get(var.name)
        .map(|v| (var.name, v))
        .or_else(|| var.alias.and_then(|a| r.get(a).map(|v| (a, v))));
    if let Some((name, value)) = set {
        r.apply(var, name, value, config);
    }
}

// ---- Readers of one value, named by the table ----------------------------

/// `SPACELIFT_POOL_PRIVATE_KEY`: base64 of the PEM file. When the key file
/// is set too, neither is read (`LIFTOFF_POOL_PRIVATE_KEY_FILE` reports it).
pub(super) fn private_key(v: &str, c: &mut Config, r: &mut Reader<'_>) -> Result<(), String> {
    if r.get("LIFTOFF_POOL_PRIVATE_KEY_FILE").is_some() {
        return Ok(());
    }
    let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    match token::decode_base64(&compact) {
        Ok(pem) => {
            c.private_key = Some(KeyConfig {
                pem: Secret(pem),
                source: KeySource::Env,
            });
            Ok(())
        }
        Err(_) if v.contains("-----BEGIN") => Err(
            "holds PEM text, not base64 of it: set it to the output of `base64 -w 0 spacelift.key`"
                .into(),
        ),
        Err(_) => {
            Err("is not valid base64: set it to the output of `base64 -w 0 spacelift.key`".into())
        }
    }
}

/// `LIFTOFF_POOL_PRIVATE_KEY_FILE`: the PEM file, read now.
pub(super) fn private_key_file(v: &str, c: &mut Config, r: &mut Reader<'_>) -> Result<(), String> {
    if r.get("SPACELIFT_POOL_PRIVATE_KEY").is_some() {
        r.error("is set together with SPACELIFT_POOL_PRIVATE_KEY: set only one of them");
        return Ok(());
    }
    match std::fs::read(v) {
        Ok(pem) => {
            c.private_key = Some(KeyConfig {
                pem: Secret(pem),
                source: KeySource::File(PathBuf::from(v)),
            })
        }
        Err(e) => r.error(format!("{v:?} cannot be read ({e}): expected the path of the pool's PEM private key, readable by the launcher")),
    }
    Ok(())
}

/// A comma-separated list of variable names; each bad item is an error.
pub(super) fn names(v: &str, r: &mut Reader<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for item in parse::list(v) {
        if parse::is_env_name(item) {
            out.push(item.to_string());
        } else {
            r.error(format!(
                "{item:?} is not a variable name: expected names like AWS_REGION, comma-separated"
            ));
        }
    }
    out
}

/// `SPACELIFT_WHITELIST_ENVS`: names, each optionally prefixed `ro_`/`wo_`;
/// naming one of liftoff's own secrets is warned about.
pub(super) fn whitelist(v: &str, c: &mut Config, r: &mut Reader<'_>) -> Result<(), String> {
    let entries: Vec<WhitelistEntry> = names(v, r)
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
        .collect();
    for w in &entries {
        if vars::is_launcher_secret(&w.name) {
            r.warn(format!(
                "names {}, liftoff's own secret: it is never passed to runs; remove it from the list",
                w.name
            ));
        }
    }
    c.whitelist_envs = entries;
    Ok(())
}

/// `SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY`: a readable file.
pub(super) fn policy(v: &str, c: &mut Config, r: &mut Reader<'_>) -> Result<(), String> {
    match std::fs::File::open(v).and_then(|f| f.metadata()) {
        Ok(m) if m.is_file() => c.run_initialization_policy = Some(PathBuf::from(v)),
        Ok(_) => r.error(format!(
            "{v:?} is not a file: expected the path of a Rego policy file"
        )),
        Err(e) => r.error(format!(
            "{v:?} cannot be read ({e}): expected the path of a readable Rego policy file"
        )),
    }
    Ok(())
}

/// A mount list. A mount whose host path breaks isolation
/// ([`parse::mount_risk`], which needs the state directory) is an error, or
/// a warning when `allow_unsafe`. The table reads `LIFTOFF_STATE_DIR` and
/// `LIFTOFF_ALLOW_UNSAFE_MOUNTS` before the mount lists.
pub(super) fn mounts(v: &str, c: &Config, r: &mut Reader<'_>) -> Vec<Mount> {
    let (state_dir, allow_unsafe) = (&c.state_dir, c.allow_unsafe_mounts);
    let mut out = Vec::new();
    for item in parse::mount_list(v) {
        match parse::mount(item) {
            Ok(m) => {
                if let Some(risk) = parse::mount_risk(&m, state_dir) {
                    if allow_unsafe {
                        r.warn(format!(
                            "{item:?} {risk}: every run can reach it (allowed by {}=true)",
                            parse::ALLOW_UNSAFE_MOUNTS
                        ));
                    } else {
                        r.error(format!("{item:?} {risk}: that breaks the sandbox's isolation; remove it, or set {}=true to allow it", parse::ALLOW_UNSAFE_MOUNTS));
                        continue;
                    }
                }
                out.push(m);
            }
            Err(e) => r.error(e),
        }
    }
    out
}

/// An absolute path.
pub(super) fn path(v: &str) -> Result<PathBuf, String> {
    if Path::new(v).is_absolute() {
        Ok(PathBuf::from(v))
    } else {
        Err("expected an absolute path".into())
    }
}

/// `SPACELIFT_WORKER_RUNTIME`; `none` is warned about.
pub(super) fn runtime(v: &str, c: &mut Config, r: &mut Reader<'_>) -> Result<(), String> {
    c.runtime = Runtime::parse(v)?;
    if c.runtime == Runtime::None {
        r.warn("is none: runs get NO isolation from this host; every run will say so in its log");
    }
    Ok(())
}

/// `SPACELIFT_DOCKER_CONFIG_DIR`: an existing directory.
pub(super) fn docker_config_dir(v: &str, c: &mut Config, r: &mut Reader<'_>) -> Result<(), String> {
    if Path::new(v).is_dir() {
        c.docker_config_dir = Some(PathBuf::from(v));
    } else {
        r.error(format!(
            "{v:?} is not a directory: expected the directory holding config.json"
        ));
    }
    Ok(())
}

/// `HTTP_PROXY`/`HTTPS_PROXY`: an http URL (`http://` added when there is no
/// scheme). The value is shown with its user and password redacted.
pub(super) fn proxy(v: &str, r: &mut Reader<'_>) -> Option<String> {
    let with_scheme = if v.contains("://") {
        v.to_string()
    } else {
        format!("http://{v}")
    };
    match parse::http_url(&with_scheme) {
        Ok(u) => Some(u),
        Err(e) => {
            let shown = super::redact_userinfo(v);
            r.error(format!("{shown:?}: {e} (proxies are http://host:port)"));
            None
        }
    }
}

/// `ADDITIONAL_ROOT_CAS`: PEM certificates, inline or as a file path.
pub(super) fn root_cas(v: &str, c: &mut Config, r: &mut Reader<'_>) -> Result<(), String> {
    let (text, origin) = if v.contains("-----BEGIN") {
        (Ok(v.to_string()), "the inline value".to_string())
    } else {
        (std::fs::read_to_string(v), format!("file {v:?}"))
    };
    match text.map(|t| token::pem_certificates(&t)) {
        Ok(Ok(certs)) => c.additional_root_cas = certs,
        Ok(Err(e)) => r.error(format!(
            "{origin} {e}: expected PEM certificates, inline or as a file path"
        )),
        Err(e) => r.error(format!(
            "{origin} cannot be read ({e}): expected PEM certificates, inline or as a file path"
        )),
    }
    Ok(())
}

/// `LIFTOFF_WORKERS`: 1 to [`MAX_WORKERS`].
pub(super) fn workers(v: &str) -> Result<u16, String> {
    match v.parse::<u16>() {
        Ok(n) if (1..=MAX_WORKERS).contains(&n) => Ok(n),
        _ => Err(format!(
            "expected a whole number of concurrent runs from 1 to {MAX_WORKERS}"
        )),
    }
}

/// `LIFTOFF_LOG`: a filter in `RUST_LOG` syntax.
pub(super) fn log_filter(v: &str) -> Result<String, String> {
    v.parse::<tracing_subscriber::filter::Targets>()
        .map(|_| v.to_string())
        .map_err(|e| format!("{e}: expected a filter in RUST_LOG syntax, such as info or info,liftoff::link=debug"))
}

/// `LIFTOFF_LOG_FORMAT`.
pub(super) fn log_format(v: &str) -> Result<LogFormat, String> {
    match v {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err("expected text or json".into()),
    }
}

/// `LIFTOFF_LANDLOCK`.
pub(super) fn landlock(v: &str) -> Result<LandlockMode, String> {
    match v {
        "best-effort" => Ok(LandlockMode::BestEffort),
        "require" => Ok(LandlockMode::Require),
        _ => Err("expected best-effort or require".into()),
    }
}

/// `LIFTOFF_JOB_MEMORY`: a size of at least 16MiB, or `auto` (`None`).
pub(super) fn job_memory(v: &str) -> Result<Option<u64>, String> {
    if v == "auto" {
        return Ok(None);
    }
    match parse::byte_size(v) {
        Ok(n) if n >= 16 << 20 => Ok(Some(n)),
        Ok(_) => Err("is below the 16MiB minimum: expected a size such as 1536MiB, or auto".into()),
        Err(e) => Err(format!("{e}, or auto")),
    }
}

/// `LIFTOFF_JOB_PIDS`: at least 16.
pub(super) fn job_pids(v: &str) -> Result<u64, String> {
    match v.parse::<u64>() {
        Ok(n) if n >= 16 => Ok(n),
        _ => Err("expected a whole number of processes, at least 16".into()),
    }
}

/// `LIFTOFF_JOB_CPUS`: at least 0.01.
pub(super) fn job_cpus(v: &str) -> Result<Option<f64>, String> {
    match v.parse::<f64>() {
        Ok(n) if n.is_finite() && n >= 0.01 => Ok(Some(n)),
        _ => Err("expected a number of CPUs such as 1 or 1.5".into()),
    }
}

// ---- The families (see vars::FAMILIES) -----------------------------------

/// `SPACELIFT_METADATA_<tag>`: each a worker metadata tag.
pub(super) fn metadata(r: &mut Reader<'_>) -> BTreeMap<String, String> {
    let mut metadata = BTreeMap::new();
    for (name, value) in r.env.with_prefix(vars::METADATA_PREFIX) {
        let tag = &name[vars::METADATA_PREFIX.len()..];
        if tag.is_empty() {
            r.error_on(name, "has no tag name: expected SPACELIFT_METADATA_<tag>, e.g. SPACELIFT_METADATA_instance_id");
        } else {
            metadata.insert(tag.to_string(), value.to_string());
        }
    }
    metadata
}

/// `SPACELIFT_PRIVATEVCS_MAPPING_NAME_<N>` and `..._BASE_ENDPOINT_<N>`:
/// numbered from 0 without gaps, each name with its endpoint.
pub(super) fn vcs_mappings(r: &mut Reader<'_>) -> Vec<VcsMapping> {
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
                _ => r.error_on(var, format!("{suffix:?} is not a mapping number: expected {prefix}<N> with N = 0, 1, 2, ...")),
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
                    r.error_on(nvar, "is empty: expected the name of the VCS Agent Pool");
                    continue;
                }
                match parse::http_url(endpoint) {
                    Ok(url) => out.push(VcsMapping {
                        index: n,
                        name: name.clone(),
                        base_endpoint: url,
                    }),
                    Err(e) => r.error_on(evar, format!("{endpoint:?}: {e}")),
                }
            }
            (Some((nvar, _)), None) => r.error_on(
                nvar,
                format!(
                    "has no {}{n}: set the VCS system's address, e.g. https://internal-github.net",
                    vars::VCS_ENDPOINT_PREFIX
                ),
            ),
            (None, Some((evar, _))) => r.error_on(
                evar,
                format!(
                    "has no {}{n}: set the VCS Agent Pool's name",
                    vars::VCS_NAME_PREFIX
                ),
            ),
            (None, None) => r.error_on(
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
            r.warn_on(
                &format!("{}{}", vars::VCS_NAME_PREFIX, m.index),
                format!(
                    "repeats the name {:?} of mapping {first}: the first mapping wins",
                    m.name
                ),
            );
        }
    }
    out
}

/// Variables named like liftoff's (`SPACELIFT_*`, `LIFTOFF_*`) that it does
/// not read: warned about, with the closest known name.
pub(super) fn warn_unknown(r: &mut Reader<'_>) {
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
        r.warn_on(&name, message);
    }
}
