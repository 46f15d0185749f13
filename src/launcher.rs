//! Wiring for `liftoff run`: everything the worker needs, made once at
//! start-up and handed down. Nothing here decides anything at run time.
//!
//! Call order in [`run_from_env`]: configuration (errors: exit 78) → the
//! launcher's own log → the metrics listener (`LIFTOFF_METRICS_ADDR`; a
//! taken address is exit 78) → pool identity → worker id ([`worker_id`]) →
//! link (transport chosen from the configuration) → outbox → the host-notes board
//! → run executor (+ the development executor in debug builds) → `hello`
//! (with [`host_facts`]) → signals → stale cgroups swept → [`Worker::run`]
//! until the worker leaves → exit code.

use std::path::Path;
use std::sync::Arc;

use crate::config::{Config, Env};
use crate::identity::{self, Identity, PoolKey};
use crate::link::outbox::{Limits, Outbox};
use crate::link::protocol::{self, HostFacts, WorkerMsg};
use crate::run::RunExecutor as _;
use crate::worker::{Worker, WorkerOptions};

/// Host facts for `hello`.
pub fn host_facts() -> HostFacts {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let memory_bytes = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    HostFacts {
        hostname: read("/proc/sys/kernel/hostname").trim().to_string(),
        os: std::env::consts::OS.into(),
        arch: std::env::consts::ARCH.into(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        memory_bytes,
    }
}

/// The worker id kept in the state directory, made on first start.
pub fn worker_id(state_dir: &Path) -> Result<String, String> {
    let path = state_dir.join("worker-id");
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim();
        if id.len() == 26 && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Ok(id.to_string());
        }
        tracing::warn!(path = %path.display(), "the stored worker id is invalid: making a new one");
    }
    let id = protocol::ulid();
    std::fs::create_dir_all(state_dir)
        .and_then(|_| std::fs::write(&path, format!("{id}\n")))
        .map_err(|e| {
            format!(
                "cannot write {}: {e}; LIFTOFF_STATE_DIR must be a writable directory",
                path.display()
            )
        })?;
    Ok(id)
}

fn signal_channel() -> Result<smol::channel::Receiver<i32>, String> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot handle signals: {e}"))?;
    let (tx, rx) = smol::channel::unbounded();
    std::thread::Builder::new()
        .name("liftoff-signals".into())
        .spawn(move || {
            for s in signals.forever() {
                if tx.send_blocking(s).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| format!("cannot start the signal thread: {e}"))?;
    Ok(rx)
}

/// `liftoff run`: returns the process exit code.
pub fn run_from_env(env: &Env) -> i32 {
    let loaded = Config::load(env);
    crate::launcher_log::init(loaded.config.log_format, &loaded.config.log_filter);
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let config = match loaded.into_result() {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("liftoff: error: {e}");
            }
            return crate::EXIT_CONFIG;
        }
    };
    let fail = |m: String| {
        eprintln!("liftoff: error: {m}");
        crate::EXIT_CONFIG
    };
    let metrics = crate::metrics::LAUNCHER.start(config.metrics_addr, config.workers);
    if let Err(e) = metrics {
        return fail(format!("LIFTOFF_METRICS_ADDR: {e}"));
    }
    let (Some(token), Some(key)) = (&config.token, &config.private_key) else {
        return fail("SPACELIFT_TOKEN and SPACELIFT_POOL_PRIVATE_KEY must be set".into());
    };
    let pool_key = match PoolKey::from_pem(&key.pem.0) {
        Ok(k) => k,
        Err(e) => return fail(format!("{}: {e}", key.var())),
    };
    let identity = match Identity::new(token, pool_key, key.var(), identity::now()) {
        Ok((i, warnings)) => {
            for w in warnings {
                tracing::warn!("{}: {}", w.var, w.message);
            }
            i
        }
        Err(f) => return fail(format!("{}: {}", f.var, f.message)),
    };
    let wid = match worker_id(&config.state_dir) {
        Ok(w) => w,
        Err(e) => return fail(e),
    };
    let link = match crate::link::prepare(&config, &identity, &wid) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    let heartbeat = config.heartbeat_interval;
    let (outbox, warnings) = match Outbox::open(&config.state_dir, Limits::default()) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    for w in warnings {
        tracing::warn!("{w}");
    }
    if !outbox.is_empty() {
        tracing::info!(
            events = outbox.len(),
            "re-sending events the control plane has not acknowledged"
        );
    }
    // The real run executor. The link tests' plain command states (no
    // sandbox) are accepted by debug builds only: a release binary has no
    // code that runs anything outside the sandbox.
    let host_notes = Arc::new(crate::hostwatch::Board::default());
    let executor = match crate::run::executor::SandboxExecutor::new(
        config.clone(),
        env.clone(),
        Some(Arc::new(identity)),
    ) {
        Ok(sandbox) => sandbox.with_host_notes(host_notes.clone()),
        Err(e) => return fail(e.to_string()),
    };
    #[cfg(debug_assertions)]
    let executor = crate::run::process::DevExecutor::new(executor, config.kill_grace);
    let hello = WorkerMsg::Hello {
        worker_id: wid.clone(),
        version: crate::VERSION.to_string(),
        region: String::new(),
        slots: config.workers,
        metadata: config.metadata.clone(),
        host: host_facts(),
        sandbox: executor.capabilities(),
        will_id: None,
        transport: link.transport_name().to_string(),
    };
    let signals = match signal_channel() {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let region_hint = link.primary_region().to_string();
    crate::metrics::LAUNCHER.link_transport(link.transport_name());
    let (link, rx) = match link.start(outbox, hello) {
        Ok(l) => l,
        Err(e) => return fail(e),
    };
    tracing::info!(
        worker = wid,
        slots = config.workers,
        "liftoff run: starting"
    );
    let swept = crate::sandbox::cgroup::sweep_stale();
    if swept > 0 {
        tracing::info!(
            cgroups = swept,
            "removed job cgroups an earlier launcher left behind"
        );
    }
    let worker = Worker::new(
        WorkerOptions {
            worker_id: wid,
            slots: config.workers,
            heartbeat,
            shutdown_grace: config.shutdown_grace,
            kill_grace: config.kill_grace,
            region_hint,
            state_dir: config.state_dir.clone(),
            disk_threshold: config.disk_usage_threshold,
            host_notes,
        },
        link,
        rx,
        executor,
        signals,
    );
    let outcome = worker.run();
    match &outcome {
        crate::worker::Outcome::Bye(r) => tracing::info!(reason = r, "bye"),
        crate::worker::Outcome::Reset => {}
        crate::worker::Outcome::Failed(e) => eprintln!("liftoff: error: {e}"),
    }
    outcome.exit_code()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worker_id_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("liftoff-wid-{}", protocol::ulid()));
        let a = worker_id(&dir).unwrap();
        assert_eq!(worker_id(&dir).unwrap(), a);
        std::fs::write(dir.join("worker-id"), "garbage").unwrap();
        let b = worker_id(&dir).unwrap();
        assert_ne!(a, b);
        assert_eq!(b.len(), 26);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn host_facts_are_filled_in() {
        let h = host_facts();
        assert!(h.cpus >= 1);
        assert!(h.memory_bytes > 0);
        assert_eq!(h.os, "linux");
    }
}
