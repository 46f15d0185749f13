//! The run interface between the worker and whatever runs an assignment:
//! [`RunExecutor`] (start, cancel, uploads, kill_all, capabilities), the
//! [`RunEvent`]s a run reports, and [`RunEvents`], the sender a run reports
//! through. The worker owns the executor; the executor never sees the
//! worker, the link or which transport the events travel over.
//!
//! Order: the worker calls [`RunExecutor::start`] once per run; the run
//! sends [`RunEvent::Started`], any number of [`RunEvent::Log`], then (for a
//! run that finished) [`RunEvent::Summary`] and exactly one terminal event.

use std::collections::BTreeMap;

use crate::link::protocol::{Assignment, StepResult, Upload};

/// What a run reports while it runs. Every run ends with exactly one
/// [`RunEvent::Finished`], [`RunEvent::Failed`] or [`RunEvent::Rejected`],
/// also after a cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEvent {
    /// The job process tree started.
    Started,
    /// A log chunk was stored (the logs pipeline reports these).
    Log { chunk: u64, key: String, bytes: u64 },
    /// The job ended with an exit code (non-zero is still "finished").
    Finished { exit_code: i32 },
    /// The run could not run or was killed (cancel, timeout, signal).
    Failed { reason: String },
    /// The worker-side run initialization policy denied the run (nothing
    /// of it ran); the reason holds the deny messages.
    Rejected { reason: String },
    /// Sent just before `Finished`: the run's duration and each step's
    /// result, carried by the `finished` event.
    Summary {
        duration_ms: u64,
        steps: Vec<StepResult>,
    },
}

/// Where an executor sends its events. Cheap to clone, usable from any
/// thread (`send` never blocks for long).
#[derive(Clone)]
pub struct RunEvents {
    run_id: String,
    tx: smol::channel::Sender<(String, RunEvent)>,
}

impl RunEvents {
    /// Events of `run_id` into `tx` (the worker makes these; tests and
    /// `liftoff exec --spec` make their own).
    pub fn new(run_id: &str, tx: smol::channel::Sender<(String, RunEvent)>) -> RunEvents {
        RunEvents {
            run_id: run_id.to_string(),
            tx,
        }
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn send(&self, event: RunEvent) {
        let _ = self.tx.send_blocking((self.run_id.clone(), event));
    }
}

/// How the worker runs an assignment. The real implementation is
/// [`super::executor::SandboxExecutor`]; debug builds add the unsandboxed
/// development one in `super::process`.
pub trait RunExecutor: Send {
    /// Starts the run and returns at once; the run reports through `events`
    /// (at least the terminal event). An `Err` means it never started: the
    /// worker reports the run failed with that reason.
    fn start(
        &mut self,
        assignment: Assignment,
        events: RunEvents,
    ) -> Result<(), super::error::StartError>;

    /// Graceful cancel: SIGTERM the job's process tree, SIGKILL it after
    /// `kill_grace`; then the run reports [`RunEvent::Failed`] (or
    /// `Finished` if it ended on its own first). Must not block. Unknown
    /// run ids are ignored. Calling it twice must be harmless.
    fn cancel(&mut self, run_id: &str);

    /// Pre-signed upload URLs for a run's log chunks.
    fn uploads(&mut self, _run_id: &str, _urls: Vec<Upload>) {}

    /// Kills every job process now (the launcher is leaving).
    fn kill_all(&mut self) {}

    /// Capabilities reported in `hello` (`sandbox`).
    fn capabilities(&self) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::new()
    }
}
