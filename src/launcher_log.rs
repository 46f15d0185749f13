//! The launcher's own log (not run logs): tracing-subscriber on stderr, human
//! text by default or JSON lines with `LIFTOFF_LOG_FORMAT=json`, filtered by
//! `LIFTOFF_LOG` (debug when `SPACELIFT_DEBUG=true`). Call [`init`] once, after
//! the configuration is read.

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;

/// Installs the global subscriber. A second call does nothing. `filter` is
/// in RUST_LOG syntax (`info`, `warn,liftoff::link=debug`); the configuration
/// has already validated it.
pub fn init(format: LogFormat, filter: &str) {
    let targets = filter
        .parse::<Targets>()
        .unwrap_or_else(|_| Targets::new().with_default(LevelFilter::INFO));
    let registry = tracing_subscriber::registry().with(targets);
    let _ = match format {
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}
