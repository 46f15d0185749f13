//! Health and Prometheus metrics (`LIFTOFF_METRICS_ADDR`).
//!
//! - [`registry`]: counters, gauges and histograms of atomics, and the text
//!   exposition writer (reusable by `liftoff-plane`);
//! - [`server`]: the small std::net HTTP/1.1 listener (reusable too);
//! - [`launcher`]: the launcher's metrics ([`LAUNCHER`]), bumped by one-line
//!   hooks in the worker, the link session, the run executor and the log
//!   pipeline, and what `/healthz`, `/readyz` and `/metrics` answer.
//!
//! Call order: anything may record into [`LAUNCHER`] at any time (a relaxed
//! atomic; nothing blocks); `crate::launcher` binds the listener right after
//! reading the configuration ([`server::bind`]: a taken address is exit 78)
//! and then [`server::serve`]s [`launcher::handler`]. This room imports no
//! other room, so every room above may record into it.
//!
//! Another binary (`liftoff-plane`) serves its own metrics the same way:
//!
//! ```text
//! static DISPATCH: Histogram<8> = Histogram::new([0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0]);
//! let listener = server::bind(addr)?;            // a taken address: exit 78
//! server::serve(listener, "plane-metrics", Arc::new(|path: &str| match path {
//!     "/metrics" => {
//!         let mut e = Exposition::new();
//!         e.family("liftoff_plane_runs_pending", Kind::Gauge, "Runs waiting for a worker.");
//!         for (pool, n) in pending_by_pool() { e.sample("liftoff_plane_runs_pending", &[("pool", &pool)], n as f64) }
//!         e.histogram("liftoff_plane_dispatch_seconds", "Pending to accepted.", &DISPATCH);
//!         Response { status: 200, content_type: registry::CONTENT_TYPE, body: e.finish() }
//!     }
//!     _ => Response::text(404, "not found\n"),
//! }))?;
//! ```

pub mod launcher;
pub mod registry;
pub mod server;

pub use launcher::LAUNCHER;
