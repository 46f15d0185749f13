//! The launcher's own log (not run logs): tracing-subscriber on stderr, human
//! text by default or JSON lines with `LIFTOFF_LOG_FORMAT=json`, filtered by
//! `LIFTOFF_LOG` (debug when `SPACELIFT_DEBUG=true`). Call [`init`] once, after
//! the configuration is read.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. A second call does nothing.
pub fn init(format: LogFormat, filter: &str) {
    let filter = EnvFilter::builder()
        .parse(filter)
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.with_ansi(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
