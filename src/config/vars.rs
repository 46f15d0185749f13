//! The table of every variable liftoff reads: its name, default, whether it is
//! a secret, and one line of help. `liftoff config`, the unknown-variable
//! warnings, docs/configuration.md and the README table all come from here.

/// One documented variable.
#[derive(Debug, Clone, Copy)]
pub struct Var {
    pub name: &'static str,
    /// The default as a user would write it; empty when there is none.
    pub default: &'static str,
    /// Secrets are never printed, in errors or in `liftoff config`.
    pub secret: bool,
    pub help: &'static str,
}

const fn v(name: &'static str, default: &'static str, help: &'static str) -> Var {
    Var {
        name,
        default,
        secret: false,
        help,
    }
}

const fn secret(name: &'static str, help: &'static str) -> Var {
    Var {
        name,
        default: "",
        secret: true,
        help,
    }
}

/// Variable families whose names end in a user-chosen part.
pub const METADATA_PREFIX: &str = "SPACELIFT_METADATA_";
pub const VCS_NAME_PREFIX: &str = "SPACELIFT_PRIVATEVCS_MAPPING_NAME_";
pub const VCS_ENDPOINT_PREFIX: &str = "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_";

/// Every variable with a fixed name, in the order `liftoff config` prints them.
pub const VARIABLES: &[Var] = &[
    secret(
        "SPACELIFT_TOKEN",
        "The worker pool token (base64 of a JSON document) the control plane gave when the pool was created.",
    ),
    secret(
        "SPACELIFT_POOL_PRIVATE_KEY",
        "The pool's RSA private key: base64 of the PEM file (`base64 -w 0 spacelift.key`).",
    ),
    v(
        "LIFTOFF_POOL_PRIVATE_KEY_FILE",
        "",
        "Path of the PEM private key, instead of SPACELIFT_POOL_PRIVATE_KEY.",
    ),
    v(
        "SPACELIFT_MASK_ENVS",
        "",
        "Comma-separated names of variables whose values never appear in run logs.",
    ),
    v(
        "SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED",
        "false",
        "Upload sensitive run outputs (needed for stack dependencies on sensitive outputs).",
    ),
    v(
        "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY",
        "",
        "Path of a Rego worker-side run initialization policy (package spacelift).",
    ),
    v(
        "SPACELIFT_LAUNCHER_LOGS_TIMEOUT",
        "7m",
        "Kill a run that printed nothing for this long (Go duration, e.g. 1000s).",
    ),
    v(
        "SPACELIFT_LAUNCHER_RUN_TIMEOUT",
        "70m",
        "Kill a run that has been running for this long (Go duration, e.g. 120m).",
    ),
    v(
        "SPACELIFT_DEBUG",
        "false",
        "Write the exact command of each step to the run log, and log the launcher at debug level.",
    ),
    v(
        "SPACELIFT_WHITELIST_ENVS",
        "",
        "Comma-separated launcher variables passed to runs; prefix ro_ for read-only runs only, wo_ for write runs only.",
    ),
    v(
        "SPACELIFT_WORKER_EXTRA_MOUNTS",
        "",
        "Mounts for every run: /host/path:/sandbox/path[:ro|:rw], comma-separated; write `:`, `,` or `\\` inside a path as `\\:`, `\\,`, `\\\\`. Not over /mnt/workspace, /proc, /sys or /dev.",
    ),
    v(
        "LIFTOFF_ALLOW_UNSAFE_MOUNTS",
        "false",
        "Allow extra mounts that break isolation (/, /proc, /sys, /dev, /boot, container runtime sockets, the state or /etc/liftoff directory); `liftoff check` warns about each.",
    ),
    v(
        "SPACELIFT_WORKER_RO_EXTRA_MOUNTS",
        "",
        "Mounts for read-only (proposed) runs only.",
    ),
    v(
        "SPACELIFT_WORKER_WO_EXTRA_MOUNTS",
        "",
        "Mounts for write (tracked) runs only.",
    ),
    v(
        "SPACELIFT_WORKER_NETWORK",
        "host",
        "Run network: host, none (loopback only), or the name of a namespace under /run/netns.",
    ),
    v(
        "SPACELIFT_WORKER_RUNTIME",
        "liftoff",
        "Isolation: liftoff (full sandbox), landlock (no namespaces), none (no isolation; explicit only).",
    ),
    v(
        "SPACELIFT_DOCKER_CONFIG_DIR",
        "",
        "Directory with registry credentials (config.json) for runner images.",
    ),
    v(
        "SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED",
        "false",
        "Also write run logs to the launcher's standard output as JSON lines.",
    ),
    v(
        "SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD",
        "90",
        "Percent used of the state directory's filesystem above which the worker stops taking runs.",
    ),
    v(
        "HTTP_PROXY",
        "",
        "Proxy for http:// requests (also http_proxy).",
    ),
    v(
        "HTTPS_PROXY",
        "",
        "Proxy for https:// requests: source downloads, log and output uploads (also https_proxy).",
    ),
    v(
        "NO_PROXY",
        "",
        "Comma-separated hosts or domains reached without the proxy (also no_proxy).",
    ),
    v(
        "ADDITIONAL_ROOT_CAS",
        "",
        "Extra trusted CA certificates: a PEM bundle, inline or as a file path.",
    ),
    v(
        "LIFTOFF_STATE_DIR",
        "/var/lib/liftoff",
        "State: outbox, log spool, run workspaces.",
    ),
    v(
        "LIFTOFF_PROVIDER_CACHE_DIR",
        "/var/cache/liftoff/providers",
        "The shared OpenTofu/Terraform provider cache, mounted into every run.",
    ),
    v(
        "LIFTOFF_PROVIDER_CACHE_MAX_BYTES",
        "5GiB",
        "Prune the provider cache to this size between runs, least recently used first.",
    ),
    v(
        "LIFTOFF_WORKERS",
        "1",
        "Concurrent runs on this host (one worker per run).",
    ),
    v(
        "LIFTOFF_LOG",
        "info",
        "The launcher's own log filter, in RUST_LOG syntax (e.g. info,liftoff::link=debug).",
    ),
    v(
        "LIFTOFF_LOG_FORMAT",
        "text",
        "The launcher's own log format: text or json.",
    ),
    v(
        "LIFTOFF_SHUTDOWN_GRACE",
        "10m",
        "On the first SIGTERM, how long the current run may go on before it is cancelled.",
    ),
    v(
        "LIFTOFF_KILL_GRACE",
        "10s",
        "Between SIGTERM and SIGKILL of a run's process tree.",
    ),
    v(
        "LIFTOFF_LANDLOCK",
        "best-effort",
        "best-effort (use what the kernel has, report the rest) or require (refuse to run without the full set).",
    ),
    v(
        "LIFTOFF_JOB_MEMORY",
        "auto",
        "Memory limit of each run: a size, or auto (host memory minus 384MiB, shared by the workers).",
    ),
    v(
        "LIFTOFF_JOB_PIDS",
        "4096",
        "Maximum processes and threads of each run.",
    ),
    v(
        "LIFTOFF_JOB_CPUS",
        "",
        "CPU limit of each run in CPUs (e.g. 1.5); empty means no limit.",
    ),
    v(
        "LIFTOFF_MQTT_KEEPALIVE",
        "30s",
        "MQTT keepalive; a silent broker is given up on within one keepalive.",
    ),
    v(
        "LIFTOFF_HEARTBEAT_INTERVAL",
        "30s",
        "How often the worker sends its status (also on every change).",
    ),
    v(
        "LIFTOFF_PROBE_INTERVAL",
        "15s",
        "While on the secondary region, how often the primary is probed.",
    ),
    v(
        "LIFTOFF_FAILBACK_AFTER",
        "2m",
        "How long the primary must stay healthy before the worker fails back to it.",
    ),
    v(
        "LIFTOFF_RESEND_AFTER",
        "30s",
        "Re-send an unacknowledged event after this long on the same connection.",
    ),
];

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
    find(name).is_some()
        || name.starts_with(METADATA_PREFIX)
        || name.starts_with(VCS_NAME_PREFIX)
        || name.starts_with(VCS_ENDPOINT_PREFIX)
}

/// The known variable closest to an unknown one, when it is close enough to
/// be a likely typo.
pub fn closest(name: &str) -> Option<&'static str> {
    let candidates = VARIABLES.iter().map(|v| v.name).chain([
        METADATA_PREFIX,
        VCS_NAME_PREFIX,
        VCS_ENDPOINT_PREFIX,
    ]);
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
    out.push_str(&format!(
        "| `{METADATA_PREFIX}<tag>` | | Each becomes a worker metadata tag named `<tag>`. |\n"
    ));
    out.push_str(&format!(
        "| `{VCS_NAME_PREFIX}<N>` | | VCS Agent Pool name of mapping N (from 0, no gaps). |\n"
    ));
    out.push_str(&format!(
        "| `{VCS_ENDPOINT_PREFIX}<N>` | | http(s) base address of mapping N's VCS. |\n"
    ));
    out
}
