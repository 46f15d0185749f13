//! The worker: the state machine behind `liftoff run`. It registers through
//! the link, reports IDLE/BUSY/DRAINED (heartbeat every 30 s and on every
//! change), takes `assign`s into run slots through a [`RunExecutor`], and
//! handles `drain`, `cancel`, `cycle`, the pool reset (exit 78) and signals.
//!
//! Call order: [`Worker::new`] with a started link session, an executor and
//! a signal channel (`crate::launcher::run_from_env` makes them all), then
//! [`Worker::run`] until the worker leaves; [`Outcome::exit_code`] maps the
//! result. The worker never knows which transport the session talks
//! through. Tests may build a [`Worker`] with their own executor.
//!
//! Shutdown rules:
//! - first SIGTERM/SIGINT: stop taking runs (DRAINED), let the current runs
//!   finish within `LIFTOFF_SHUTDOWN_GRACE` (then cancel them), flush the
//!   outbox, `bye`, exit 0;
//! - second SIGTERM/SIGINT: cancel the runs gracefully now, then as above;
//! - `cycle`: stop taking runs, cancel them, `bye`, exit 0 within 20 s;
//! - every broker refuses the certificate: cancel runs, exit 78.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::link::protocol::{Command, CommandBody, RunPhase, StepResult, WorkerMsg, WorkerState};
use crate::link::session::{Session, SessionEvent};
use crate::run::{RunEvent, RunEvents, RunExecutor};

/// The message printed (and the exit status 78 used) when the pool was reset.
pub const RESET_MESSAGE: &str = "the control plane rejected this pool's certificate: was the worker pool reset? Generate a new token";

/// How long `cycle` may take, as the seed promises.
pub const CYCLE_LIMIT: Duration = Duration::from_secs(20);

/// Worker settings.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    pub worker_id: String,
    pub slots: u16,
    pub heartbeat: Duration,
    pub shutdown_grace: Duration,
    pub kill_grace: Duration,
    pub region_hint: String,
    /// The state directory: its filesystem's usage gates taking runs.
    pub state_dir: std::path::PathBuf,
    /// `SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD`.
    pub disk_threshold: u8,
    /// Host warnings observed here are published to the runs on this board.
    pub host_notes: Arc<crate::hostwatch::Board>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaving {
    /// First signal: runs may finish until the deadline.
    Signal,
    /// Second signal or deadline: runs were cancelled.
    Cancelled,
    Cycle,
}

/// Why the worker stopped; [`Outcome::exit_code`] maps it for the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Bye(String),
    Reset,
    Failed(String),
}

impl Outcome {
    pub fn exit_code(&self) -> i32 {
        match self {
            Outcome::Bye(_) => 0,
            Outcome::Reset => crate::EXIT_CONFIG,
            Outcome::Failed(_) => 1,
        }
    }
}

/// Remembers the last few thousand ids.
struct Seen {
    set: HashSet<String>,
    order: VecDeque<String>,
}

impl Seen {
    const CAP: usize = 4096;
    fn new() -> Seen {
        Seen {
            set: HashSet::new(),
            order: VecDeque::new(),
        }
    }
    fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// True when `id` was new.
    fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() >= Self::CAP
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        self.set.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// The worker state machine.
pub struct Worker<E: RunExecutor> {
    opts: WorkerOptions,
    link: Session,
    link_rx: smol::channel::Receiver<SessionEvent>,
    executor: E,
    run_tx: smol::channel::Sender<(String, RunEvent)>,
    run_rx: smol::channel::Receiver<(String, RunEvent)>,
    signals: smol::channel::Receiver<i32>,
    /// Running runs and when each was accepted.
    runs: BTreeMap<String, Instant>,
    drain: bool,
    leaving: Option<(Leaving, Instant)>,
    commands: Seen,
    /// Runs this worker accepted (in this process, or before a restart
    /// with events still unacked): a later `assign` for one is answered,
    /// never started again.
    assigned: Seen,
    region: String,
    /// systemd: READY, STATUS, WATCHDOG.
    notifier: crate::notify::Notifier,
    /// Host health: figures for heartbeats, warnings for the launcher log.
    hostwatch: crate::hostwatch::HostWatch,
    host_sources: crate::hostwatch::Sources,
    disk_gate: crate::hostwatch::DiskGate,
    /// Why runs are not taken (the disk is too full), while it lasts.
    disk_full: Option<String>,
    started: Instant,
    /// Finished runs' duration and steps, until their `finished` event.
    summaries: std::sync::Mutex<BTreeMap<String, (u64, Vec<StepResult>)>>,
}

enum Wake {
    Link(Option<SessionEvent>),
    Run(Option<(String, RunEvent)>),
    Signal(Option<i32>),
    Tick,
}

impl<E: RunExecutor> Worker<E> {
    pub fn new(
        opts: WorkerOptions,
        link: Session,
        link_rx: smol::channel::Receiver<SessionEvent>,
        executor: E,
        signals: smol::channel::Receiver<i32>,
    ) -> Worker<E> {
        let (run_tx, run_rx) = smol::channel::unbounded();
        let region = opts.region_hint.clone();
        let opts_state_dir = opts.state_dir.clone();
        let opts_disk_threshold = opts.disk_threshold;
        // Runs accepted before a restart whose events the plane has not
        // acked yet: a re-sent assign for them must not start them again.
        // (A run whose only answer was a refusal may be assigned afresh.)
        let mut assigned = Seen::new();
        for p in link.pending_runs() {
            let refused = p.phase == RunPhase::Rejected && p.command_id.is_some();
            if !refused {
                assigned.insert(&p.run_id);
            }
        }
        Worker {
            opts,
            link,
            link_rx,
            executor,
            run_tx,
            run_rx,
            signals,
            runs: BTreeMap::new(),
            drain: false,
            leaving: None,
            commands: Seen::new(),
            assigned,
            region,
            notifier: crate::notify::Notifier::from_env(),
            hostwatch: crate::hostwatch::HostWatch::new(crate::hostwatch::Thresholds::default()),
            host_sources: crate::hostwatch::Sources::host(&opts_state_dir),
            disk_gate: crate::hostwatch::DiskGate::new(opts_disk_threshold),
            disk_full: None,
            started: Instant::now(),
            summaries: Default::default(),
        }
    }

    fn state(&self) -> WorkerState {
        if self.drain || self.leaving.is_some() || self.disk_full.is_some() {
            WorkerState::Drained
        } else if self.runs.is_empty() {
            WorkerState::Idle
        } else {
            WorkerState::Busy
        }
    }

    fn status_msg(&self) -> WorkerMsg {
        WorkerMsg::Status {
            worker_id: self.opts.worker_id.clone(),
            state: self.state(),
            drain: self.drain || self.leaving.is_some() || self.disk_full.is_some(),
            runs: self.runs.keys().cloned().collect(),
            region: self.region.clone(),
            health: self.health(),
            last_seq: None,
        }
    }

    /// Host figures and the reason runs are not taken, for heartbeats.
    fn health(&self) -> Vec<String> {
        let f = self.hostwatch.figures();
        let mut out = Vec::new();
        let mut put = |name: &str, v: Option<f64>| {
            if let Some(v) = v {
                out.push(format!("{name}={v}"));
            }
        };
        put("cpu_steal_pct", f.cpu_steal_pct);
        put("cpu_pressure_pct", f.cpu_pressure_pct);
        put("memory_pressure_pct", f.memory_pressure_pct);
        put("io_pressure_pct", f.io_pressure_pct);
        put("memory_available_pct", f.memory_available_pct);
        for (disk, used) in &f.disk_used_pct {
            out.push(format!("disk_{disk}_used_pct={used}"));
        }
        if let Some(why) = &self.disk_full {
            out.push(format!("drained: {why}"));
        }
        out
    }

    /// Publishes the status and tells systemd.
    fn report_status(&self) {
        self.link.status(self.status_msg());
        self.notify_status();
    }

    /// Tells systemd the state (STATUS=), and the metrics.
    fn notify_status(&self) {
        use crate::metrics::launcher::NotReady;
        let not_ready = if self.leaving.is_some() {
            NotReady::Leaving
        } else if self.drain {
            NotReady::Drained
        } else if self.disk_full.is_some() {
            NotReady::Disk
        } else {
            NotReady::None
        };
        crate::metrics::LAUNCHER.worker_state(self.state() as usize, self.runs.len(), not_ready);
        let runs: Vec<&str> = self.runs.keys().map(String::as_str).collect();
        let status = match self.state() {
            WorkerState::Idle => format!("IDLE (via {})", self.region),
            WorkerState::Busy => format!("BUSY run {} (via {})", runs.join(", "), self.region),
            WorkerState::Drained => match &self.disk_full {
                Some(why) => format!("DRAINED: {why}"),
                None => format!("DRAINED (via {})", self.region),
            },
        };
        self.notifier.status(&status);
    }

    /// Samples the host; on a disk-gate change, reports the new state.
    fn sample_host(&mut self) {
        let sample = crate::hostwatch::sample(&self.host_sources);
        let now = self.started.elapsed().as_secs();
        for w in self.hostwatch.observe(now, &sample) {
            tracing::warn!("{}", w.line);
            self.opts.host_notes.publish(&w.line);
        }
        let f = self.hostwatch.figures();
        let ratio = |v: Option<f64>| v.map(|p| p / 100.0);
        crate::metrics::LAUNCHER.host(crate::metrics::launcher::Host {
            cpu_steal_ratio: ratio(f.cpu_steal_pct),
            cpu_pressure_ratio: ratio(f.cpu_pressure_pct),
            memory_pressure_ratio: ratio(f.memory_pressure_pct),
            io_pressure_ratio: ratio(f.io_pressure_pct),
            memory_available_bytes: f.memory_available_bytes.map(|b| b as f64),
            disk_used_ratio: f
                .disk_used_pct
                .iter()
                .map(|(d, p)| (d.clone(), p / 100.0))
                .collect(),
        });
        if let Some((_, path, used)) = sample.disks.first() {
            match self.disk_gate.observe(path, *used) {
                Some(crate::hostwatch::GateChange::Close(why)) => {
                    tracing::warn!("{why}");
                    self.disk_full = Some(why);
                    self.report_status();
                }
                Some(crate::hostwatch::GateChange::Open) => {
                    tracing::info!(
                        "disk usage fell below SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD: taking runs again"
                    );
                    self.disk_full = None;
                    self.report_status();
                }
                None => {}
            }
        }
    }

    fn emit(&self, msg: WorkerMsg) {
        if let Err(e) = self.link.emit(msg) {
            tracing::error!("cannot record an event for the control plane: {e}");
        }
    }

    fn run_event(
        &self,
        run_id: &str,
        phase: RunPhase,
        exit_code: Option<i32>,
        reason: Option<String>,
        command_id: Option<String>,
    ) {
        let (duration_ms, steps) = match phase {
            RunPhase::Finished => self
                .summaries
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(run_id)
                .map_or((None, Vec::new()), |(d, s)| (Some(d), s)),
            _ => (None, Vec::new()),
        };
        self.emit(WorkerMsg::Run {
            run_id: run_id.to_string(),
            phase,
            exit_code,
            reason,
            command_id,
            duration_ms,
            steps,
        });
    }

    /// Runs until the worker leaves; returns why.
    pub fn run(mut self) -> Outcome {
        self.report_status();
        // Configuration, identity and the link are up (a broker need not
        // answer yet: a regional outage must not fail the unit's start).
        self.notifier.ready();
        let outcome = smol::block_on(self.main_loop());
        self.notifier.stopping();
        match &outcome {
            Outcome::Bye(reason) => {
                if reason == "cycle" {
                    // For the optional poweroff-after-cycle drop-in.
                    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
                        let _ = std::fs::write(std::path::Path::new(&dir).join("cycled"), b"");
                    }
                }
                let bye = WorkerMsg::Bye {
                    worker_id: self.opts.worker_id.clone(),
                    reason: reason.clone(),
                };
                self.link
                    .close(Some(bye), Instant::now() + Duration::from_secs(4));
            }
            Outcome::Reset | Outcome::Failed(_) => {
                self.executor.kill_all();
            }
        }
        self.executor.kill_all();
        outcome
    }

    async fn main_loop(&mut self) -> Outcome {
        let mut next_heartbeat = Instant::now() + self.opts.heartbeat;
        let sample_every = Duration::from_secs(crate::hostwatch::SAMPLE_EVERY_SECS);
        let mut next_sample = Instant::now();
        let watchdog_every = self
            .notifier
            .watchdog_every()
            .unwrap_or(Duration::from_secs(3600));
        let mut next_watchdog = Instant::now();
        loop {
            crate::metrics::LAUNCHER.worker_beat();
            let now = Instant::now();
            if now >= next_watchdog {
                self.notifier.watchdog();
                next_watchdog = now + watchdog_every;
            }
            if now >= next_sample {
                self.sample_host();
                next_sample = now + sample_every;
            }
            if let Some((why, deadline)) = self.leaving {
                if self.runs.is_empty() {
                    return Outcome::Bye(
                        match why {
                            Leaving::Cycle => "cycle",
                            Leaving::Signal | Leaving::Cancelled => "shutdown",
                        }
                        .into(),
                    );
                }
                let now = Instant::now();
                if now >= deadline {
                    match why {
                        Leaving::Signal => {
                            tracing::warn!(
                                "LIFTOFF_SHUTDOWN_GRACE is over: cancelling the current run"
                            );
                            self.cancel_all();
                            self.leaving = Some((
                                Leaving::Cancelled,
                                now + self.opts.kill_grace + Duration::from_secs(2),
                            ));
                        }
                        Leaving::Cancelled | Leaving::Cycle => {
                            tracing::warn!("runs did not end in time: killing them");
                            self.executor.kill_all();
                            for (run, t) in std::mem::take(&mut self.runs) {
                                crate::metrics::LAUNCHER.run_ended(
                                    "failed",
                                    None,
                                    Some(t.elapsed()),
                                );
                                self.run_event(
                                    &run,
                                    RunPhase::Failed,
                                    None,
                                    Some("killed: the launcher is leaving".into()),
                                    None,
                                );
                            }
                        }
                    }
                    continue;
                }
            }
            let soonest = next_heartbeat.min(next_sample).min(next_watchdog);
            let wake_at = match self.leaving {
                Some((_, d)) => d.min(soonest),
                None => soonest,
            };
            let link_rx = self.link_rx.clone();
            let run_rx = self.run_rx.clone();
            let signals = self.signals.clone();
            let wake = smol::future::or(
                async { Wake::Link(link_rx.recv().await.ok()) },
                smol::future::or(
                    async { Wake::Run(run_rx.recv().await.ok()) },
                    smol::future::or(async { Wake::Signal(signals.recv().await.ok()) }, async {
                        smol::Timer::at(wake_at).await;
                        Wake::Tick
                    }),
                ),
            )
            .await;
            match wake {
                Wake::Link(Some(ev)) => {
                    if let Some(out) = self.on_link(ev) {
                        return out;
                    }
                }
                Wake::Link(None) => return Outcome::Failed("the link thread stopped".into()),
                Wake::Run(Some((run, ev))) => self.on_run(run, ev),
                Wake::Run(None) => {}
                Wake::Signal(Some(sig)) => self.on_signal(sig),
                Wake::Signal(None) => {
                    // no signal source (tests): never wake on it again
                    self.signals = smol::channel::unbounded().1;
                }
                Wake::Tick => {}
            }
            if Instant::now() >= next_heartbeat {
                self.report_status();
                next_heartbeat = Instant::now() + self.opts.heartbeat;
            }
        }
    }

    fn on_link(&mut self, ev: SessionEvent) -> Option<Outcome> {
        match ev {
            SessionEvent::Connected { region, primary } => {
                // the session published hello and the status (in this region)
                tracing::info!(region, primary, "connected to the control plane");
                self.region = region;
                self.notify_status();
            }
            SessionEvent::Disconnected { region, reason } => {
                tracing::debug!(region, reason, "not connected; events wait in the outbox");
            }
            SessionEvent::Command(c) => self.on_command(c),
            SessionEvent::Rejected(r) => {
                if r.is_unknown_type() {
                    tracing::warn!(id = r.ref_id, "ignoring a command: {}", r.message);
                } else {
                    tracing::warn!(
                        id = r.ref_id,
                        code = r.code,
                        "refusing a command: {}",
                        r.message
                    );
                    self.emit(WorkerMsg::Error {
                        ref_id: r.ref_id,
                        code: r.code.to_string(),
                        message: r.message,
                    });
                }
            }
            SessionEvent::CertificateRejected { detail } => {
                tracing::error!(detail, "{RESET_MESSAGE}");
                let reset = crate::metrics::launcher::NotReady::Reset;
                crate::metrics::LAUNCHER.worker_state(2, self.runs.len(), reset);
                eprintln!("liftoff: {RESET_MESSAGE} ({detail})");
                self.cancel_all();
                return Some(Outcome::Reset);
            }
            SessionEvent::Closed => return Some(Outcome::Failed("the link closed".into())),
        }
        None
    }

    fn on_command(&mut self, c: Command) {
        if !self.commands.insert(&c.id) {
            tracing::debug!(id = c.id, "duplicate command ignored");
            return;
        }
        match c.body {
            CommandBody::Assign(a) => {
                if self.assigned.contains(&a.run_id) {
                    // The plane re-sends an assign until it sees an answer
                    // for it: answer again (the run is not started twice;
                    // its other events are in the outbox until acked).
                    tracing::info!(
                        run = a.run_id,
                        command = c.id,
                        "run already accepted here: answering the repeated assign"
                    );
                    self.run_event(&a.run_id, RunPhase::Accepted, None, None, Some(c.id));
                    return;
                }
                let refuse = if self.leaving.is_some() {
                    Some("the worker is shutting down")
                } else if self.drain {
                    Some("the worker is drained")
                } else if self.disk_full.is_some() {
                    Some("the worker is drained: its disk is too full")
                } else if self.runs.len() >= usize::from(self.opts.slots) {
                    Some("the worker has no free slot")
                } else {
                    None
                };
                if let Some(reason) = refuse {
                    tracing::info!(run = a.run_id, "rejecting a run: {reason}");
                    crate::metrics::LAUNCHER.run_ended("rejected", None, None);
                    self.run_event(
                        &a.run_id,
                        RunPhase::Rejected,
                        None,
                        Some(reason.into()),
                        Some(c.id),
                    );
                    return;
                }
                let run_id = a.run_id.clone();
                self.assigned.insert(&run_id);
                tracing::info!(run = run_id, "run accepted");
                self.run_event(&run_id, RunPhase::Accepted, None, None, Some(c.id));
                self.runs.insert(run_id.clone(), Instant::now());
                self.report_status();
                let events = RunEvents::new(&run_id, self.run_tx.clone());
                if let Err(e) = self.executor.start(a, events) {
                    tracing::error!(run = run_id, "run failed to start: {e}");
                    self.ended(&run_id, "failed", None);
                    self.run_event(&run_id, RunPhase::Failed, None, Some(e.to_string()), None);
                    self.report_status();
                }
            }
            CommandBody::Cancel { run_id, reason } => {
                if self.runs.contains_key(&run_id) {
                    tracing::info!(run = run_id, reason, "cancelling a run");
                    self.executor.cancel(&run_id);
                }
            }
            CommandBody::Drain { on } => {
                tracing::info!(on, "drain");
                self.drain = on;
                self.report_status();
            }
            CommandBody::Cycle => {
                if !matches!(self.leaving, Some((Leaving::Cycle, _))) {
                    tracing::info!("cycle: cancelling runs and leaving");
                    // runs get 10 s to end; flushing, bye and DISCONNECT take at most 7 more
                    let deadline = Instant::now() + CYCLE_LIMIT - Duration::from_secs(10);
                    self.leaving = Some((Leaving::Cycle, deadline));
                    self.cancel_all();
                    self.report_status();
                }
            }
            CommandBody::Uploads { run_id, urls } => self.executor.uploads(&run_id, urls),
            CommandBody::Ack { .. } => {}
        }
    }

    fn cancel_all(&mut self) {
        let runs: Vec<String> = self.runs.keys().cloned().collect();
        for r in runs {
            self.executor.cancel(&r);
        }
    }

    fn on_run(&mut self, run: String, ev: RunEvent) {
        if !self.runs.contains_key(&run) {
            return;
        }
        match ev {
            RunEvent::Started => self.run_event(&run, RunPhase::Started, None, None, None),
            RunEvent::Log { chunk, key, bytes } => self.emit(WorkerMsg::Log {
                run_id: run,
                chunk,
                key,
                bytes,
            }),
            RunEvent::Finished { exit_code } => {
                tracing::info!(run, exit_code, "run finished");
                self.ended(&run, "finished", Some(exit_code));
                self.run_event(&run, RunPhase::Finished, Some(exit_code), None, None);
                self.report_status();
            }
            RunEvent::Failed { reason } => {
                tracing::info!(run, reason, "run failed");
                self.ended(&run, "failed", None);
                self.run_event(&run, RunPhase::Failed, None, Some(reason), None);
                self.report_status();
            }
            RunEvent::Summary { duration_ms, steps } => {
                self.summaries
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(run, (duration_ms, steps));
            }
            RunEvent::Rejected { reason } => {
                tracing::info!(run, reason, "run rejected by the initialization policy");
                self.ended(&run, "rejected", None);
                self.run_event(&run, RunPhase::Rejected, None, Some(reason), None);
                self.report_status();
            }
        }
    }

    /// A run ended: it leaves its slot; the metrics count it.
    fn ended(&mut self, run: &str, result: &str, exit_code: Option<i32>) {
        let took = self.runs.remove(run).map(|t| t.elapsed());
        crate::metrics::LAUNCHER.run_ended(result, exit_code, took);
    }

    fn on_signal(&mut self, sig: i32) {
        let now = Instant::now();
        match self.leaving {
            None => {
                tracing::info!(
                    sig,
                    "signal: draining; the current run may finish (LIFTOFF_SHUTDOWN_GRACE), then leaving"
                );
                self.leaving = Some((Leaving::Signal, now + self.opts.shutdown_grace));
                self.report_status();
            }
            Some((Leaving::Signal, _)) | Some((Leaving::Cycle, _)) => {
                tracing::info!(sig, "second signal: cancelling the current run");
                self.cancel_all();
                self.leaving = Some((
                    Leaving::Cancelled,
                    now + self.opts.kill_grace + Duration::from_secs(2),
                ));
            }
            Some((Leaving::Cancelled, _)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_is_bounded_and_remembers_recent_ids() {
        let mut s = Seen::new();
        assert!(s.insert("a"));
        assert!(!s.insert("a"));
        for i in 0..Seen::CAP {
            s.insert(&i.to_string());
        }
        assert!(s.set.len() <= Seen::CAP);
        assert!(s.insert("a"), "the oldest id was forgotten");
        assert!(!s.insert(&(Seen::CAP - 1).to_string()));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Outcome::Bye("cycle".into()).exit_code(), 0);
        assert_eq!(Outcome::Reset.exit_code(), 78);
        assert_eq!(Outcome::Failed("x".into()).exit_code(), 1);
    }
}
