//! The plane's Prometheus metrics and health check, served over plain HTTP
//! on `metrics_listen` (plane.json; `init --metrics-listen`) with the
//! launcher's listener and exposition writer (`crate::metrics::server`,
//! `crate::metrics::registry`).
//!
//! Call order: [`dispatched`] is called by the dispatch room when a run
//! first leaves `assigned` (accepted, or started without an accept);
//! `serve` calls [`start`] (binds: a taken or bad address is exit 78) before
//! the HTTPS listener; every scrape calls [`exposition`], which reads the
//! gauges and the ended-run counts from the store (so they survive a
//! restart and need no bookkeeping) and the dispatch histogram from memory.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::metrics::registry::{self, Exposition, Histogram, Kind};
use crate::metrics::server;

use super::dispatch::Plane;
use super::store::RunRow;
use super::{Error, Result, now_ms};

/// Seconds from a run's submission to a worker accepting it (first
/// dispatch only: a run requeued after a lost or refused assignment is not
/// observed again).
pub static DISPATCH: Histogram<12> = Histogram::new([
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
]);

/// Records a run leaving `assigned` for the first time.
pub fn dispatched(run: &RunRow) {
    if run.requeued == 0 && run.submitted_ms > 0 {
        let ms = now_ms().saturating_sub(run.submitted_ms);
        DISPATCH.observe(ms as f64 / 1000.0);
    }
}

/// Binds `addr` and serves `/metrics` and `/healthz` from a thread.
pub fn start(plane: Arc<Plane>, addr: &str) -> Result<()> {
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| {
        Error::Config(format!(
            "metrics_listen {addr:?} is not ADDR:PORT ({e}); fix it in plane.json, e.g. \"127.0.0.1:9465\""
        ))
    })?;
    let listener = server::bind(sock)
        .map_err(|e| Error::Config(format!("{e} (metrics_listen in plane.json)")))?;
    let handler: server::Handler = Arc::new(move |path: &str| match path {
        "/metrics" => match exposition(&plane) {
            Ok(body) => server::Response {
                status: 200,
                content_type: registry::CONTENT_TYPE,
                body,
            },
            Err(e) => server::Response::text(503, format!("{e}\n")),
        },
        "/healthz" => match plane.store.pools() {
            Ok(_) => server::Response::text(200, "ok\n"),
            Err(e) => server::Response::text(503, format!("{e}\n")),
        },
        _ => server::Response::text(404, "not found: try /metrics or /healthz\n"),
    });
    server::serve(listener, "plane-metrics", handler).map_err(|e| Error::Config(e.to_string()))?;
    Ok(())
}

/// The text exposition of the plane's metrics now.
pub fn exposition(plane: &Plane) -> Result<String> {
    let pools = plane.store.pools()?;
    let name_of: BTreeMap<&str, &str> = pools
        .iter()
        .map(|p| (p.id.as_str(), p.name.as_str()))
        .collect();
    let name = |id: &str| name_of.get(id).copied().unwrap_or(id).to_string();
    let mut pending: BTreeMap<String, u64> = BTreeMap::new();
    let mut running: BTreeMap<String, u64> = BTreeMap::new();
    for p in &pools {
        pending.insert(p.name.clone(), 0);
        running.insert(p.name.clone(), 0);
    }
    for r in plane.store.runs(true)? {
        if r.phase == "queued" {
            *pending.entry(name(&r.pool_id)).or_default() += 1;
        } else if r.is_active() {
            *running.entry(name(&r.pool_id)).or_default() += 1;
        }
    }
    let mut workers: BTreeMap<(String, String, String), u64> = BTreeMap::new();
    for w in plane.store.workers()?.into_iter().filter(|w| !w.gone) {
        let state = if w.drain || w.state == "DRAINED" {
            "drained".to_string()
        } else {
            w.state.to_ascii_lowercase()
        };
        *workers
            .entry((name(&w.pool_id), state, w.transport.clone()))
            .or_default() += 1;
    }
    let mut results: BTreeMap<(String, String), u64> = BTreeMap::new();
    for (pool, phase, n) in plane.store.run_results()? {
        *results.entry((name(&pool), phase)).or_default() += n;
    }

    let mut e = Exposition::new();
    e.family(
        "liftoff_plane_runs_pending",
        Kind::Gauge,
        "Runs waiting for a worker, per pool: the autoscaling signal.",
    );
    for (pool, n) in &pending {
        e.sample("liftoff_plane_runs_pending", &[("pool", pool)], *n as f64);
    }
    e.family(
        "liftoff_plane_runs_running",
        Kind::Gauge,
        "Runs on a worker now (assigned, accepted or started), per pool.",
    );
    for (pool, n) in &running {
        e.sample("liftoff_plane_runs_running", &[("pool", pool)], *n as f64);
    }
    e.family(
        "liftoff_plane_workers",
        Kind::Gauge,
        "Workers not gone, by pool, state and transport.",
    );
    for ((pool, state, transport), n) in &workers {
        e.sample(
            "liftoff_plane_workers",
            &[("pool", pool), ("state", state), ("transport", transport)],
            *n as f64,
        );
    }
    e.histogram(
        "liftoff_plane_dispatch_seconds",
        "From a run's submission to a worker accepting it (first dispatch only).",
        &DISPATCH,
    );
    e.family(
        "liftoff_plane_runs_total",
        Kind::Counter,
        "Runs that ended, by pool and result (finished, failed, rejected, cancelled).",
    );
    for ((pool, result), n) in &results {
        e.sample(
            "liftoff_plane_runs_total",
            &[("pool", pool), ("result", result)],
            *n as f64,
        );
    }
    Ok(e.finish())
}
