//! The launcher's own log (not run logs): tracing-subscriber on stderr, human
//! text by default or JSON lines with `LIFTOFF_LOG_FORMAT=json`, filtered by
//! `LIFTOFF_LOG` (debug when `SPACELIFT_DEBUG=true`). Call [`init`] once, after
//! the configuration is read.
//!
//! Every line goes through the same masking as a run's log: each event is
//! formatted whole, its URLs shown without credentials or query
//! ([`crate::http::redact_urls`]), then masked with every secret set
//! registered with [`mask_while`] (the pool token and key for the executor's
//! life, each run's secrets while it runs), then written to stderr.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::LogFormat;
use crate::logs::redact::{Matcher, mask_text};

/// Secret sets the launcher's own lines are masked with, by registration.
static MASKS: Mutex<Vec<(u64, Arc<Matcher>)>> = Mutex::new(Vec::new());
static NEXT_MASK: AtomicU64 = AtomicU64::new(0);

/// Masks the launcher's own log lines with `matcher` until the guard is
/// dropped.
#[must_use = "the secrets are masked only while the guard lives"]
pub fn mask_while(matcher: Arc<Matcher>) -> MaskGuard {
    let id = NEXT_MASK.fetch_add(1, Ordering::Relaxed);
    if !matcher.is_empty() {
        MASKS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((id, matcher));
    }
    MaskGuard(id)
}

/// See [`mask_while`].
#[derive(Debug)]
pub struct MaskGuard(u64);

impl Drop for MaskGuard {
    fn drop(&mut self) {
        MASKS
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|(id, _)| *id != self.0);
    }
}

/// `line` as the launcher's log shows it: URLs redacted, every registered
/// secret masked.
pub fn mask_line(line: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(line);
    let mut out = crate::http::redact_urls(&text).into_owned().into_bytes();
    let masks: Vec<Arc<Matcher>> = MASKS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(_, m)| m.clone())
        .collect();
    for m in masks {
        out = mask_text(&m, &out);
    }
    out
}

/// One event's writer: gathers the formatted event, writes it masked to
/// stderr when dropped (the formatter writes each event whole, then drops
/// the writer).
struct MaskingWriter(Vec<u8>);

impl Write for MaskingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for MaskingWriter {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let masked = mask_line(&self.0);
        let _ = std::io::stderr().lock().write_all(&masked);
    }
}

struct MakeMasking;

impl<'a> MakeWriter<'a> for MakeMasking {
    type Writer = MaskingWriter;
    fn make_writer(&'a self) -> MaskingWriter {
        MaskingWriter(Vec::with_capacity(256))
    }
}

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
                    .with_writer(MakeMasking),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(MakeMasking),
            )
            .try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::redact::RedactorBuilder;

    #[test]
    fn lines_are_masked_while_registered() {
        let mut b = RedactorBuilder::new();
        b.secret("TOKEN", b"launcher-log-secret-1");
        let line =
            b"cannot fetch https://u:launcher-log-secret-1@h/a?sig=1 (launcher-log-secret-1)\n";
        {
            let _g = mask_while(b.build());
            let out = String::from_utf8(mask_line(line)).unwrap();
            assert_eq!(out, "cannot fetch https://***@h/a (***)\n");
        }
        let out = String::from_utf8(mask_line(line)).unwrap();
        assert_eq!(
            out,
            "cannot fetch https://***@h/a (launcher-log-secret-1)\n"
        );
    }
}
