//! Delivery of spooled chunks to a sink: in sequence order, each retried with
//! exponential backoff and jitter up to a bound, removed from the spool only
//! once delivered.
//!
//! Call order: [`Uploader::start`] (a thread owning the sink), then
//! [`Uploader::send`] for each chunk as it is spooled, then
//! [`Uploader::finish`] once (waits for the queue to drain). At start-up,
//! [`recover`] delivers what earlier processes left in the spool.
//!
//! When a chunk cannot be delivered within the bound, delivery of the run
//! stops there (later chunks would arrive out of order): the chunk and all
//! later ones stay in the spool for the next start, and the report says so.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use super::error::LogError;
use super::sink::{DeliverError, Sink};
use super::spool::{Chunk, Spool, runs};

pub use crate::http::Retry;
use crate::http::seed;

/// Delivers one spooled chunk with retries; removes it from the spool once
/// delivered. `verify`: check its length and SHA-256 first (chunks an earlier
/// process left); this process's own chunks are trusted.
pub fn deliver(
    spool: &Spool,
    sink: &mut dyn Sink,
    chunk: &Chunk,
    verify: bool,
    retry: &Retry,
    rng: &mut u64,
) -> Result<(), LogError> {
    let tried = with_retries(chunk, retry, rng, || {
        let mut file = if verify {
            spool.open_chunk(chunk)
        } else {
            spool.open_unchecked(chunk)
        }
        .map_err(|e| DeliverError::fatal(e.to_string()))?;
        sink.deliver(chunk, &mut file)
    });
    match tried {
        Ok(()) => {
            spool.remove(chunk);
            crate::metrics::LAUNCHER.log_uploaded_bytes.add(chunk.len);
            Ok(())
        }
        Err(Failed::Fatal(message)) => Err(LogError::Delivery(message)),
        Err(Failed::GaveUp(last)) => Err(LogError::Delivery(format!(
            "{last} (gave up after {} tries; the chunk stays in the spool {} and is uploaded at the next start)",
            retry.attempts,
            spool.dir().display()
        ))),
    }
}

/// Delivers one chunk from memory to a direct sink, with retries.
pub fn deliver_direct(
    sink: &mut dyn Sink,
    chunk: &Chunk,
    bytes: &[u8],
    retry: &Retry,
    rng: &mut u64,
) -> Result<(), LogError> {
    with_retries(chunk, retry, rng, || sink.deliver_bytes(chunk, bytes)).map_err(|f| match f {
        Failed::Fatal(message) => LogError::Delivery(message),
        Failed::GaveUp(last) => {
            LogError::Delivery(format!("{last} (gave up after {} tries)", retry.attempts))
        }
    })
}

/// Why [`with_retries`] stopped short of delivering.
enum Failed {
    /// An attempt failed in a way another attempt cannot mend.
    Fatal(String),
    /// Every attempt failed; the last one's message.
    GaveUp(String),
}

/// Calls `attempt` until it succeeds, fails for good, or `retry.attempts`
/// tries are spent, sleeping with backoff and jitter between tries.
fn with_retries(
    chunk: &Chunk,
    retry: &Retry,
    rng: &mut u64,
    mut attempt: impl FnMut() -> Result<(), DeliverError>,
) -> Result<(), Failed> {
    crate::http::with_retries(
        retry,
        rng,
        |_| attempt(),
        |e| e.retryable,
        |n, e| {
            crate::metrics::LAUNCHER.log_upload_retries.inc();
            tracing::warn!(run = %chunk.run_id, seq = chunk.seq, attempt = n, "{}; retrying", e.message);
        },
    )
    .map_err(|e| {
        if e.retryable {
            Failed::GaveUp(e.message)
        } else {
            Failed::Fatal(e.message)
        }
    })
}

/// What delivery did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivered {
    /// How many chunks were delivered, in order (each was handed to the
    /// `on_delivered` callback, if any; they are not kept: a long run's log
    /// has tens of thousands).
    pub chunks: usize,
    /// The first failure; later chunks were left in the spool.
    pub error: Option<LogError>,
    /// Chunks left in the spool.
    pub left: usize,
}

enum Msg {
    /// A chunk and whether to verify it (left by an earlier process).
    Chunk(Chunk, bool),
}

/// A thread delivering one run's chunks in order.
pub struct Uploader {
    tx: Option<Sender<Msg>>,
    handle: Option<JoinHandle<Delivered>>,
}

/// Called after each chunk is delivered (the run sends a `log` event).
pub type OnDelivered = Box<dyn FnMut(&Chunk) + Send>;

impl Uploader {
    pub fn start(
        spool: Arc<Spool>,
        mut sink: Box<dyn Sink>,
        retry: Retry,
        mut on_delivered: Option<OnDelivered>,
    ) -> Uploader {
        let (tx, rx): (Sender<Msg>, Receiver<Msg>) = channel();
        let handle = std::thread::Builder::new()
            .name("log-upload".into())
            .spawn(move || {
                let mut rng = seed();
                let mut done = Delivered::default();
                for Msg::Chunk(chunk, verify) in rx {
                    if done.error.is_some() {
                        done.left += 1;
                        continue;
                    }
                    match deliver(&spool, sink.as_mut(), &chunk, verify, &retry, &mut rng) {
                        Ok(()) => {
                            if let Some(f) = on_delivered.as_mut() {
                                f(&chunk);
                            }
                            done.chunks += 1;
                        }
                        Err(e) => {
                            tracing::error!(run = %chunk.run_id, seq = chunk.seq, "{e}");
                            done.error = Some(e);
                            done.left += 1;
                        }
                    }
                }
                if let Err(e) = sink.finish() {
                    done.error.get_or_insert(e);
                }
                done
            });
        match handle {
            Ok(h) => Uploader {
                tx: Some(tx),
                handle: Some(h),
            },
            Err(e) => {
                tracing::error!("cannot start the log upload thread: {e}");
                Uploader {
                    tx: None,
                    handle: None,
                }
            }
        }
    }

    /// Queues a chunk this process spooled (never blocks: chunks wait on
    /// disk).
    pub fn send(&self, chunk: Chunk) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Chunk(chunk, false));
        }
    }

    /// Queues a chunk an earlier process left (verified before delivery).
    pub fn send_leftover(&self, chunk: Chunk) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(Msg::Chunk(chunk, true));
        }
    }

    /// Waits until every queued chunk is delivered or given up on.
    pub fn finish(mut self) -> Delivered {
        self.tx = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(d)) => d,
            Some(Err(_)) => Delivered {
                error: Some(LogError::Delivery(
                    "the log upload thread panicked; chunks stay in the spool".into(),
                )),
                ..Delivered::default()
            },
            None => Delivered {
                error: Some(LogError::Delivery(
                    "the log upload thread could not start; chunks stay in the spool".into(),
                )),
                ..Delivered::default()
            },
        }
    }
}

/// At start-up: delivers, in order, the chunks of every run an earlier
/// process left under `root`. `sink_for` gives the sink of a run (None skips
/// the run, leaving its chunks). Returns each run's outcome.
pub fn recover(
    root: &Path,
    mut sink_for: impl FnMut(&str) -> Option<Box<dyn Sink>>,
    retry: &Retry,
) -> Result<Vec<(String, Delivered)>, LogError> {
    let mut rng = seed();
    let mut out = Vec::new();
    for run_id in runs(root)? {
        let spool = Spool::open(root, &run_id)?;
        let (chunks, warnings) = spool.existing()?;
        // Recovery writes no new chunks: no disk-full reserve is needed.
        spool.release_reserves();
        for w in warnings {
            tracing::warn!("{w}");
        }
        if chunks.is_empty() {
            spool.close();
            continue;
        }
        let Some(mut sink) = sink_for(&run_id) else {
            continue;
        };
        let mut done = Delivered::default();
        let total = chunks.len();
        for chunk in chunks {
            match deliver(&spool, sink.as_mut(), &chunk, true, retry, &mut rng) {
                Ok(()) => done.chunks += 1,
                Err(e) => {
                    done.error = Some(e);
                    break;
                }
            }
        }
        if let Err(e) = sink.finish() {
            done.error.get_or_insert(e);
        }
        done.left = total - done.chunks;
        if done.left == 0 {
            spool.close();
        }
        out.push((run_id, done));
    }
    Ok(out)
}
