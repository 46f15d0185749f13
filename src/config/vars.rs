//! The one declaration of every variable liftoff reads: its name, default,
//! whether it is a secret, one line of help, how its value is read into
//! [`Config`] and how `liftoff config` shows it.
//!
//! Everything else comes from [`VARIABLES`]: [`Config::load`] reads each
//! entry's default text with the entry's own reader (so a default is written
//! once, as text) and then each variable that is set, in table order;
//! [`Config::effective`] shows each entry; `liftoff config --variables`
//! prints [`markdown_table`] (carried by the README and
//! docs/configuration.md) and packaging/liftoff.env carries
//! [`example_env`]; the unknown-variable warnings use [`is_known`] and
//! [`closest`]. Tests keep the documents in step.
//!
//! To find where variable X is parsed, find X below: its `read` is either a
//! one-line parser call or names a function in `config/read.rs`.
//!
//! The [`FAMILIES`] (`SPACELIFT_METADATA_<tag>`, the VCS mappings) have
//! user-chosen names: they are documented here but read by
//! `read::metadata` and `read::vcs_mappings` after the table.

use std::path::PathBuf;
use std::time::Duration;

use super::read::{self, Reader, set};
use super::{
    CommsProtocol, Config, KeyConfig, KeySource, LandlockMode, LogFormat, Mount, Network, RunScope,
};
use super::{parse, redact_userinfo, token};

/// Reads a variable's value (trimmed, never empty) into the configuration.
/// `Err(problem)` is reported as `"VALUE": problem` (only `problem` for a
/// secret) and leaves the configuration as it was; see [`super::read`].
pub(super) type Read = fn(&str, &mut Config, &mut Reader<'_>) -> Result<(), String>;

/// Shows a variable's effective value for `liftoff config`, in a form it
/// could be set to again; a secret shows only whether it is set.
pub(super) type Show = fn(&Config) -> String;

/// One variable.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    /// The default as a user would write it; empty when there is none.
    /// Loading reads it with `read`, so it is the default value too.
    pub default: &'static str,
    /// Secrets are never printed, in errors or in `liftoff config`.
    pub secret: bool,
    /// Another name read when `name` is unset (the lowercase proxy
    /// variables).
    pub alias: Option<&'static str>,
    pub help: &'static str,
    pub(super) read: Read,
    pub(super) show: Show,
}

/// A variable family: names that end in a user-chosen part.
#[derive(Debug, Clone, Copy)]
pub struct Family {
    pub prefix: &'static str,
    /// What follows the prefix, as the documents write it.
    pub placeholder: &'static str,
    pub help: &'static str,
    /// An example (suffix, value) for packaging/liftoff.env.
    pub example: (&'static str, &'static str),
}

/// Variable families whose names end in a user-chosen part.
pub const METADATA_PREFIX: &str = "SPACELIFT_METADATA_";
pub const VCS_NAME_PREFIX: &str = "SPACELIFT_PRIVATEVCS_MAPPING_NAME_";
pub const VCS_ENDPOINT_PREFIX: &str = "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_";

/// The families, read by `read::metadata` and `read::vcs_mappings`.
pub const FAMILIES: &[Family] = &[
    Family {
        prefix: METADATA_PREFIX,
        placeholder: "<tag>",
        help: "Each becomes a worker metadata tag named `<tag>`.",
        example: ("instance_id", "i-0123456789abcdef0"),
    },
    Family {
        prefix: VCS_NAME_PREFIX,
        placeholder: "<N>",
        help: "VCS Agent Pool name of mapping N (from 0, no gaps).",
        example: ("0", "github_pool"),
    },
    Family {
        prefix: VCS_ENDPOINT_PREFIX,
        placeholder: "<N>",
        help: "http(s) base address of mapping N's VCS.",
        example: ("0", "https://internal-github.net"),
    },
];

/// Every variable with a fixed name, in the order it is read and the order
/// `liftoff config` prints them. A variable whose reader looks at another's
/// value comes after it: the mount lists after `LIFTOFF_STATE_DIR` and
/// `LIFTOFF_ALLOW_UNSAFE_MOUNTS`, `LIFTOFF_LOG` after `SPACELIFT_DEBUG`.
pub const VARIABLES: &[Var] = &[
    Var {
        name: "SPACELIFT_TOKEN",
        default: "",
        secret: true,
        alias: None,
        help: "The worker pool token (base64 of a JSON document) the control plane gave when the pool was created.",
        read: |v, c, _| set(&mut c.token, token::parse(v).map(Some)),
        show: show_token,
    },
    Var {
        name: "SPACELIFT_POOL_PRIVATE_KEY",
        default: "",
        secret: true,
        alias: None,
        help: "The pool's RSA private key: base64 of the PEM file (`base64 -w 0 spacelift.key`).",
        read: read::private_key,
        show: |c| redacted(matches!(&c.private_key, Some(k) if k.source == KeySource::Env)),
    },
    Var {
        name: "LIFTOFF_POOL_PRIVATE_KEY_FILE",
        default: "",
        secret: false,
        alias: None,
        help: "Path of the PEM private key, instead of SPACELIFT_POOL_PRIVATE_KEY.",
        read: read::private_key_file,
        show: show_key_file,
    },
    Var {
        name: "SPACELIFT_MASK_ENVS",
        default: "",
        secret: false,
        alias: None,
        help: "Comma-separated names of variables whose values never appear in run logs.",
        read: |v, c, r| set(&mut c.mask_envs, Ok(read::names(v, r))),
        show: |c| c.mask_envs.join(","),
    },
    Var {
        name: "SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED",
        default: "false",
        secret: false,
        alias: None,
        help: "Upload sensitive run outputs (needed for stack dependencies on sensitive outputs).",
        read: |v, c, _| set(&mut c.sensitive_output_upload, parse::boolean(v)),
        show: |c| c.sensitive_output_upload.to_string(),
    },
    Var {
        name: "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY",
        default: "",
        secret: false,
        alias: None,
        help: "Path of a Rego worker-side run initialization policy (package spacelift).",
        read: read::policy,
        show: |c| opt_path(&c.run_initialization_policy),
    },
    Var {
        name: "SPACELIFT_LAUNCHER_LOGS_TIMEOUT",
        default: "7m",
        secret: false,
        alias: None,
        help: "Kill a run that printed nothing for this long (Go duration, e.g. 1000s).",
        read: |v, c, _| set(&mut c.logs_timeout, timeout(v)),
        show: |c| duration(c.logs_timeout),
    },
    Var {
        name: "SPACELIFT_LAUNCHER_RUN_TIMEOUT",
        default: "70m",
        secret: false,
        alias: None,
        help: "Kill a run that has been running for this long (Go duration, e.g. 120m).",
        read: |v, c, _| set(&mut c.run_timeout, timeout(v)),
        show: |c| duration(c.run_timeout),
    },
    Var {
        name: "SPACELIFT_DEBUG",
        default: "false",
        secret: false,
        alias: None,
        help: "Write the exact command of each step to the run log, and log the launcher at debug level.",
        read: read_debug,
        show: |c| c.debug.to_string(),
    },
    Var {
        name: "SPACELIFT_WHITELIST_ENVS",
        default: "",
        secret: false,
        alias: None,
        help: "Comma-separated launcher variables passed to runs; prefix ro_ for read-only runs only, wo_ for write runs only.",
        read: read::whitelist,
        show: show_whitelist,
    },
    Var {
        name: "LIFTOFF_STATE_DIR",
        default: "/var/lib/liftoff",
        secret: false,
        alias: None,
        help: "State: outbox, log spool, run workspaces.",
        read: |v, c, _| set(&mut c.state_dir, read::path(v)),
        show: |c| c.state_dir.display().to_string(),
    },
    Var {
        name: "LIFTOFF_ALLOW_UNSAFE_MOUNTS",
        default: "false",
        secret: false,
        alias: None,
        help: "Allow extra mounts that break isolation (/, /proc, /sys, /dev, /boot, container runtime sockets, the state or /etc/liftoff directory); `liftoff check` warns about each.",
        read: |v, c, _| set(&mut c.allow_unsafe_mounts, parse::boolean(v)),
        show: |c| c.allow_unsafe_mounts.to_string(),
    },
    Var {
        name: "SPACELIFT_WORKER_EXTRA_MOUNTS",
        default: "",
        secret: false,
        alias: None,
        help: "Mounts for every run: /host/path:/sandbox/path[:ro|:rw], comma-separated; write `:`, `,` or `\\` inside a path as `\\:`, `\\,`, `\\\\`. Not over /mnt/workspace, /proc, /sys or /dev.",
        read: |v, c, r| {
            c.extra_mounts = read::mounts(v, c, r);
            Ok(())
        },
        show: |c| mounts(&c.extra_mounts),
    },
    Var {
        name: "SPACELIFT_WORKER_RO_EXTRA_MOUNTS",
        default: "",
        secret: false,
        alias: None,
        help: "Mounts for read-only (proposed) runs only.",
        read: |v, c, r| {
            c.ro_extra_mounts = read::mounts(v, c, r);
            Ok(())
        },
        show: |c| mounts(&c.ro_extra_mounts),
    },
    Var {
        name: "SPACELIFT_WORKER_WO_EXTRA_MOUNTS",
        default: "",
        secret: false,
        alias: None,
        help: "Mounts for write (tracked) runs only.",
        read: |v, c, r| {
            c.wo_extra_mounts = read::mounts(v, c, r);
            Ok(())
        },
        show: |c| mounts(&c.wo_extra_mounts),
    },
    Var {
        name: "SPACELIFT_WORKER_NETWORK",
        default: "host",
        secret: false,
        alias: None,
        help: "Run network: host, none (loopback only), or the name of a namespace under /run/netns.",
        read: |v, c, r| set(&mut c.network, Network::parse(v, r.netns_dir)),
        show: |c| c.network.to_string(),
    },
    Var {
        name: "SPACELIFT_WORKER_RUNTIME",
        default: "liftoff",
        secret: false,
        alias: None,
        help: "Isolation: liftoff (full sandbox), landlock (no namespaces), none (no isolation; explicit only).",
        read: read::runtime,
        show: |c| c.runtime.name().to_string(),
    },
    Var {
        name: "SPACELIFT_DOCKER_CONFIG_DIR",
        default: "",
        secret: false,
        alias: None,
        help: "Directory with registry credentials (config.json) for runner images.",
        read: read::docker_config_dir,
        show: |c| opt_path(&c.docker_config_dir),
    },
    Var {
        name: "SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED",
        default: "false",
        secret: false,
        alias: None,
        help: "Also write run logs to the launcher's standard output as JSON lines.",
        read: |v, c, _| set(&mut c.run_logs_on_stdout, parse::boolean(v)),
        show: |c| c.run_logs_on_stdout.to_string(),
    },
    Var {
        name: "SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD",
        default: "90",
        secret: false,
        alias: None,
        help: "Percent used of the state directory's filesystem above which the worker stops taking runs.",
        read: |v, c, _| set(&mut c.disk_usage_threshold, parse::percent(v)),
        show: |c| format!("{}%", c.disk_usage_threshold),
    },
    Var {
        name: "HTTP_PROXY",
        default: "",
        secret: false,
        alias: Some("http_proxy"),
        help: "Proxy for http:// requests (also http_proxy).",
        read: |v, c, r| set(&mut c.proxies.http, Ok(read::proxy(v, r))),
        show: |c| opt_proxy(&c.proxies.http),
    },
    Var {
        name: "HTTPS_PROXY",
        default: "",
        secret: false,
        alias: Some("https_proxy"),
        help: "Proxy for https:// requests: source downloads, log and output uploads (also https_proxy).",
        read: |v, c, r| set(&mut c.proxies.https, Ok(read::proxy(v, r))),
        show: |c| opt_proxy(&c.proxies.https),
    },
    Var {
        name: "NO_PROXY",
        default: "",
        secret: false,
        alias: Some("no_proxy"),
        help: "Comma-separated hosts or domains reached without the proxy (also no_proxy).",
        read: |v, c, _| {
            set(
                &mut c.proxies.no_proxy,
                Ok(parse::list(v).map(str::to_string).collect()),
            )
        },
        show: |c| c.proxies.no_proxy.join(","),
    },
    Var {
        name: "ADDITIONAL_ROOT_CAS",
        default: "",
        secret: false,
        alias: None,
        help: "Extra trusted CA certificates: a PEM bundle, inline or as a file path.",
        read: read::root_cas,
        show: show_root_cas,
    },
    Var {
        name: "LIFTOFF_PROVIDER_CACHE_DIR",
        default: "/var/cache/liftoff/providers",
        secret: false,
        alias: None,
        help: "The shared OpenTofu/Terraform provider cache, mounted into every run.",
        read: |v, c, _| set(&mut c.provider_cache_dir, read::path(v)),
        show: |c| c.provider_cache_dir.display().to_string(),
    },
    Var {
        name: "LIFTOFF_PROVIDER_CACHE_MAX_BYTES",
        default: "5GiB",
        secret: false,
        alias: None,
        help: "Prune the provider cache to this size between runs, least recently used first.",
        read: |v, c, _| set(&mut c.provider_cache_max_bytes, parse::byte_size(v)),
        show: |c| c.provider_cache_max_bytes.to_string(),
    },
    Var {
        name: "LIFTOFF_WORKERS",
        default: "1",
        secret: false,
        alias: None,
        help: "Concurrent runs on this host (one worker per run).",
        read: |v, c, _| set(&mut c.workers, read::workers(v)),
        show: |c| c.workers.to_string(),
    },
    Var {
        name: "LIFTOFF_LOG",
        default: "info",
        secret: false,
        alias: None,
        help: "The launcher's own log filter, in RUST_LOG syntax (e.g. info,liftoff::link=debug).",
        read: |v, c, _| set(&mut c.log_filter, read::log_filter(v)),
        show: |c| c.log_filter.clone(),
    },
    Var {
        name: "LIFTOFF_LOG_FORMAT",
        default: "text",
        secret: false,
        alias: None,
        help: "The launcher's own log format: text or json.",
        read: |v, c, _| set(&mut c.log_format, read::log_format(v)),
        show: show_log_format,
    },
    Var {
        name: "LIFTOFF_SHUTDOWN_GRACE",
        default: "10m",
        secret: false,
        alias: None,
        help: "On the first SIGTERM, how long the current run may go on before it is cancelled.",
        read: |v, c, _| set(&mut c.shutdown_grace, timeout(v)),
        show: |c| duration(c.shutdown_grace),
    },
    Var {
        name: "LIFTOFF_KILL_GRACE",
        default: "10s",
        secret: false,
        alias: None,
        help: "Between SIGTERM and SIGKILL of a run's process tree.",
        read: |v, c, _| set(&mut c.kill_grace, interval(v)),
        show: |c| duration(c.kill_grace),
    },
    Var {
        name: "LIFTOFF_LANDLOCK",
        default: "best-effort",
        secret: false,
        alias: None,
        help: "best-effort (use what the kernel has, report the rest) or require (refuse to run without the full set).",
        read: |v, c, _| set(&mut c.landlock, read::landlock(v)),
        show: show_landlock,
    },
    Var {
        name: "LIFTOFF_JOB_MEMORY",
        default: "auto",
        secret: false,
        alias: None,
        help: "Memory limit of each run: a size, or auto (host memory minus 384MiB, shared by the workers).",
        read: |v, c, _| set(&mut c.job_memory, read::job_memory(v)),
        show: |c| {
            c.job_memory
                .map_or_else(|| "auto".into(), |m| m.to_string())
        },
    },
    Var {
        name: "LIFTOFF_JOB_PIDS",
        default: "4096",
        secret: false,
        alias: None,
        help: "Maximum processes and threads of each run.",
        read: |v, c, _| set(&mut c.job_pids, read::job_pids(v)),
        show: |c| c.job_pids.to_string(),
    },
    Var {
        name: "LIFTOFF_JOB_CPUS",
        default: "",
        secret: false,
        alias: None,
        help: "CPU limit of each run in CPUs (e.g. 1.5); empty means no limit.",
        read: |v, c, _| set(&mut c.job_cpus, read::job_cpus(v)),
        show: |c| c.job_cpus.map(|n| n.to_string()).unwrap_or_default(),
    },
    Var {
        name: "SPACELIFT_WORKER_COMMS_PROTOCOL",
        default: "",
        secret: false,
        alias: None,
        help: "How the worker talks to the control plane: mqtt or poll (HTTPS long-poll). Unset: poll when the token has endpoints (or SPACELIFT_WORKER_COMMS_URL is set), else mqtt.",
        read: |v, c, _| set(&mut c.comms_protocol, comms_protocol(v).map(Some)),
        show: |c| c.comms_protocol.map(|p| p.to_string()).unwrap_or_default(),
    },
    Var {
        name: "SPACELIFT_WORKER_COMMS_URL",
        default: "",
        secret: false,
        alias: None,
        help: "One https:// long-poll endpoint used instead of the token's endpoints.",
        read: |v, c, _| set(&mut c.comms_url, token::endpoint_url(v).map(Some)),
        show: |c| c.comms_url.clone().unwrap_or_default(),
    },
    Var {
        name: "LIFTOFF_POLL_WAIT",
        default: "50s",
        secret: false,
        alias: None,
        help: "Long-poll binding: how long the control plane may hold a poll (1s to 50s); a poll unanswered 10s after it is given up on.",
        read: |v, c, _| set(&mut c.poll_wait, poll_wait(v)),
        show: |c| duration(c.poll_wait),
    },
    Var {
        name: "LIFTOFF_MQTT_KEEPALIVE",
        default: "30s",
        secret: false,
        alias: None,
        help: "MQTT keepalive; a silent broker is given up on within one keepalive.",
        read: |v, c, _| set(&mut c.mqtt_keepalive, interval(v)),
        show: |c| duration(c.mqtt_keepalive),
    },
    Var {
        name: "LIFTOFF_HEARTBEAT_INTERVAL",
        default: "30s",
        secret: false,
        alias: None,
        help: "How often the worker sends its status (also on every change).",
        read: |v, c, _| set(&mut c.heartbeat_interval, interval(v)),
        show: |c| duration(c.heartbeat_interval),
    },
    Var {
        name: "LIFTOFF_PROBE_INTERVAL",
        default: "15s",
        secret: false,
        alias: None,
        help: "While on the secondary region, how often the primary is probed.",
        read: |v, c, _| set(&mut c.probe_interval, interval(v)),
        show: |c| duration(c.probe_interval),
    },
    Var {
        name: "LIFTOFF_FAILBACK_AFTER",
        default: "2m",
        secret: false,
        alias: None,
        help: "How long the primary must stay healthy before the worker fails back to it.",
        read: |v, c, _| set(&mut c.failback_after, interval(v)),
        show: |c| duration(c.failback_after),
    },
    Var {
        name: "LIFTOFF_RESEND_AFTER",
        default: "30s",
        secret: false,
        alias: None,
        help: "Re-send an unacknowledged event after this long on the same connection.",
        read: |v, c, _| set(&mut c.resend_after, interval(v)),
        show: |c| duration(c.resend_after),
    },
];

// ---- Readers and shows used by several entries ---------------------------

/// A duration up to [`parse::MAX_TIMEOUT`] (run and log timeouts, grace).
fn timeout(v: &str) -> Result<Duration, String> {
    parse::bounded_duration(v, parse::MAX_TIMEOUT)
}

/// A duration up to [`parse::MAX_INTERVAL`] (link timing, kill grace).
fn comms_protocol(v: &str) -> Result<CommsProtocol, String> {
    match v.to_ascii_lowercase().as_str() {
        "mqtt" => Ok(CommsProtocol::Mqtt),
        "poll" => Ok(CommsProtocol::Poll),
        _ => Err("expected mqtt or poll (HTTPS long-poll)".into()),
    }
}

fn poll_wait(v: &str) -> Result<Duration, String> {
    let d = parse::bounded_duration(v, Duration::from_secs(50))?;
    if d < Duration::from_secs(1) {
        return Err("is shorter than 1s; expected 1s to 50s".into());
    }
    Ok(d)
}

fn interval(v: &str) -> Result<Duration, String> {
    parse::bounded_duration(v, parse::MAX_INTERVAL)
}

/// `SPACELIFT_DEBUG`; true also makes the launcher's own log filter `debug`,
/// unless `LIFTOFF_LOG` (read later) sets it.
fn read_debug(v: &str, c: &mut Config, _: &mut Reader<'_>) -> Result<(), String> {
    c.debug = parse::boolean(v)?;
    if c.debug {
        c.log_filter = "debug".into();
    }
    Ok(())
}

fn redacted(present: bool) -> String {
    if present {
        "(set, redacted)".to_string()
    } else {
        "(not set)".to_string()
    }
}

fn show_token(c: &Config) -> String {
    match &c.token {
        Some(t) => format!(
            "(set, redacted) pool {} with brokers {} and endpoints {}",
            t.pool_id,
            join(&t.brokers, |b| b.to_string()),
            join(&t.endpoints, |e| e.to_string())
        ),
        None => redacted(false),
    }
}

fn show_key_file(c: &Config) -> String {
    match &c.private_key {
        Some(KeyConfig {
            source: KeySource::File(p),
            ..
        }) => p.display().to_string(),
        _ => String::new(),
    }
}

fn show_whitelist(c: &Config) -> String {
    join(&c.whitelist_envs, |w| match w.scope {
        RunScope::All => w.name.clone(),
        RunScope::ReadOnly => format!("ro_{}", w.name),
        RunScope::WriteOnly => format!("wo_{}", w.name),
    })
}

fn show_root_cas(c: &Config) -> String {
    match c.additional_root_cas.len() {
        0 => String::new(),
        n => format!("{n} certificate(s)"),
    }
}

fn show_log_format(c: &Config) -> String {
    match c.log_format {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    }
    .into()
}

fn show_landlock(c: &Config) -> String {
    match c.landlock {
        LandlockMode::BestEffort => "best-effort",
        LandlockMode::Require => "require",
    }
    .into()
}

fn duration(d: Duration) -> String {
    parse::format_duration(d)
}

fn opt_path(p: &Option<PathBuf>) -> String {
    p.as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// A proxy URL with its user and password redacted.
fn opt_proxy(url: &Option<String>) -> String {
    url.as_deref().map(redact_userinfo).unwrap_or_default()
}

fn join<T>(items: &[T], f: impl Fn(&T) -> String) -> String {
    items.iter().map(f).collect::<Vec<_>>().join(",")
}

/// A mount list as it would be written, paths escaped.
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

// ---- Questions about names, and the documents ----------------------------

/// Variables holding liftoff's own credentials (or where to read them):
/// never passed to a job, whatever `SPACELIFT_WHITELIST_ENVS` or
/// `liftoff exec --pass-env` say.
pub fn is_launcher_secret(name: &str) -> bool {
    find(name).is_some_and(|v| v.secret) || name == "LIFTOFF_POOL_PRIVATE_KEY_FILE"
}

/// The variable with this name, if liftoff knows it.
pub fn find(name: &str) -> Option<&'static Var> {
    VARIABLES.iter().find(|v| v.name == name)
}

/// Is `name` read by liftoff (a fixed name or one of the families)?
pub fn is_known(name: &str) -> bool {
    find(name).is_some() || FAMILIES.iter().any(|f| name.starts_with(f.prefix))
}

/// The known variable closest to an unknown one, when it is close enough to
/// be a likely typo.
pub fn closest(name: &str) -> Option<&'static str> {
    let candidates = VARIABLES
        .iter()
        .map(|v| v.name)
        .chain(FAMILIES.iter().map(|f| f.prefix));
    candidates
        .map(|c| (super::parse::edit_distance(name, c), c))
        .filter(|(d, c)| *d <= (c.len() / 3).max(3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Every variable as a Markdown table (`liftoff config --variables`); the
/// README and docs/configuration.md carry this table, and a test keeps them
/// in step.
pub fn markdown_table() -> String {
    let mut out = String::from("| variable | default | meaning |\n|---|---|---|\n");
    for v in VARIABLES {
        let default = match (v.secret, v.default) {
            (true, _) => "(secret)".to_string(),
            (false, "") => "".to_string(),
            (false, d) => format!("`{d}`"),
        };
        out.push_str(&format!("| `{}` | {default} | {} |\n", v.name, v.help));
    }
    for f in FAMILIES {
        out.push_str(&format!(
            "| `{}{}` | | {} |\n",
            f.prefix, f.placeholder, f.help
        ));
    }
    out
}

/// Every variable commented out with its default (the families with an
/// example), each under its help: the body of packaging/liftoff.env, which
/// a test keeps in step.
pub fn example_env() -> String {
    let variables = VARIABLES
        .iter()
        .map(|v| (v.help, format!("#{}={}", v.name, v.default)));
    let families = FAMILIES.iter().map(|f| {
        let (suffix, value) = f.example;
        (f.help, format!("#{}{suffix}={value}", f.prefix))
    });
    variables
        .chain(families)
        .map(|(help, line)| format!("{}{line}\n", comment(help)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` as `# ` comment lines of at most 78 characters.
fn comment(text: &str) -> String {
    let mut out = String::new();
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() > 1 && line.len() + 1 + word.len() > 78 {
            out.push_str(&line);
            out.push('\n');
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    out.push_str(&line);
    out.push('\n');
    out
}
