//! Why the log pipeline failed, typed by the part that failed.
//!
//! Built where the failure happens (the spool, a sink, delivery, the job's
//! output); `Display` is the message alone, so callers prefix what they
//! were doing ("the run log cannot be started: …").

use std::fmt;

/// A failure of the log pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogError {
    /// The options cannot work (a chunk size of 0).
    Options(String),
    /// The spool under the state directory could not be created, listed,
    /// written or read back (a bad run id, permissions, a full disk, a
    /// damaged chunk).
    Spool(String),
    /// A sink could not be opened or finished (a log file, the terminal).
    Sink(String),
    /// A chunk was not delivered: the sink refused it, or every retry
    /// failed (it stays in the spool).
    Delivery(String),
    /// The job's output could not be read (no pipe, no reader thread).
    Output(String),
}

impl fmt::Display for LogError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LogError::Options(m)
            | LogError::Spool(m)
            | LogError::Sink(m)
            | LogError::Delivery(m)
            | LogError::Output(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LogError {}
