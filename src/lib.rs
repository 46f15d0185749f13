//! liftoff: a lightweight, single-binary launcher for private worker pools.
//!
//! The module map follows ../shared/DESIGN.md: `config` reads every operator
//! setting, `identity` holds the pool's key and certificate, `check` builds the
//! host report of `liftoff check`, and `launcher_log` sets up the launcher's own
//! log (run logs live elsewhere).

pub mod beneath;
pub mod cli;
pub mod config;
pub mod hostwatch;
pub mod http;
pub mod identity;
pub mod image;
pub mod launcher;
pub mod launcher_log;
pub mod link;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod plane;
pub mod report;
pub mod run;
pub mod sandbox;
pub mod time;
pub mod tools;
pub mod worker;

/// Exit status for configuration errors (EX_CONFIG): systemd's unit does not
/// restart on it.
pub const EXIT_CONFIG: i32 = 78;

/// The version `liftoff version` prints: version, git commit, build target.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("LIFTOFF_GIT_COMMIT"),
    ", ",
    env!("LIFTOFF_BUILD_TARGET"),
    ")"
);
