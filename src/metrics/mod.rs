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

pub mod launcher;
pub mod registry;
pub mod server;

pub use launcher::LAUNCHER;
