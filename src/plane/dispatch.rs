//! The plane's brain: what worker messages mean ([`Plane::record`]), what
//! runs go where ([`Plane::tick`]: FIFO per pool, one tracked run per stack
//! at a time, slots and drain respected), what is re-sent until its effect
//! is seen (assign, drain, cycle, cancel), and when a worker is gone (the
//! long-poll grace, a non-stale `gone`, a `bye`), with its runs re-queued
//! (not started yet) or failed (lost mid-way). docs/protocol.md's "What the
//! control plane must do" rules 1–8 live here.
//!
//! Call order: [`Plane::new`] at `serve`; the binding and the MQTT
//! subscriber call [`Plane::record`] for every batch and [`Hub`] for polls;
//! the admin API calls `submit`, `cancel`, `drain`, `cycle_worker`,
//! `cycle_pool`, `reset_pool`; [`Plane::run_loop`] calls `tick` every 200 ms
//! or when woken. One mutex (`brain`) orders every state change.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use super::config::Data;
use super::objects::{DiskObjects, Objects};
use super::pki::{ClientCheck, KnownCert};
use super::store::{ChunkRow, PoolRow, RunRow, StepRow, Store, WorkerRow};
use super::{Error, Result, now_ms};
use crate::link::protocol::{Envelope, RunPhase, WorkerMsg, ulid};

/// Log chunk URLs handed out at a time.
const LOG_URL_BATCH: u64 = 16;

/// Where commands for MQTT workers go (the MQTT transport implements it).
pub trait Outbound: Send + Sync {
    /// Publishes `body` to `worker`'s command topic in `region`.
    fn publish(&self, region: &str, pool: &str, worker: &str, body: &str);
}

/// Per-worker long-poll state, in memory.
#[derive(Default)]
pub struct SlotState {
    /// Bumped by every new poll: an older poll ends when it changes.
    pub poll_gen: u64,
    /// Bumped when a command is queued.
    pub notify_gen: u64,
    pub polls_open: u32,
    pub last_seen_ms: u64,
}

pub type Slot = Arc<(Mutex<SlotState>, Condvar)>;

/// The long-poll slots of every worker.
#[derive(Default)]
pub struct Hub {
    slots: Mutex<HashMap<String, Slot>>,
}

impl Hub {
    pub fn slot(&self, worker: &str) -> Slot {
        let mut s = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        s.entry(worker.to_string())
            .or_insert_with(|| {
                Arc::new((
                    Mutex::new(SlotState {
                        last_seen_ms: now_ms(),
                        ..SlotState::default()
                    }),
                    Condvar::new(),
                ))
            })
            .clone()
    }

    /// Wakes the poll of `worker`: a command is waiting.
    pub fn notify(&self, worker: &str) {
        let slot = self.slot(worker);
        let mut st = slot.0.lock().unwrap_or_else(|e| e.into_inner());
        st.notify_gen += 1;
        slot.1.notify_all();
    }

    /// Notes a request from `worker`.
    pub fn seen(&self, worker: &str) {
        let slot = self.slot(worker);
        slot.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last_seen_ms = now_ms();
    }

    /// True while a poll is held or the last request is within `grace_ms`.
    pub fn alive(&self, worker: &str, grace_ms: u64) -> bool {
        let slot = self.slot(worker);
        let st = slot.0.lock().unwrap_or_else(|e| e.into_inner());
        st.polls_open > 0 || st.last_seen_ms + grace_ms > now_ms()
    }
}

/// The running plane.
pub struct Plane {
    pub data: Data,
    pub store: Arc<dyn Store>,
    pub objects: Arc<DiskObjects>,
    pub check: Arc<ClientCheck>,
    pub hub: Hub,
    pub mqtt: Mutex<Option<Arc<dyn Outbound>>>,
    brain: Mutex<()>,
    /// MQTT publishes waiting for their transaction to commit.
    pending: Mutex<Vec<(String, String, String, String)>>,
    wake: (Mutex<bool>, Condvar),
    pub stopping: std::sync::atomic::AtomicBool,
}

fn command(ty: &str, id: &str, fields: Value) -> Value {
    let mut v = json!({"v": 1, "type": ty, "id": id, "ts": now_ms()});
    if let (Value::Object(m), Value::Object(f)) = (&mut v, fields) {
        m.extend(f);
    }
    v
}

fn log_key(run: &str, chunk: u64) -> String {
    format!("runs/{run}/log/{chunk:06}")
}

pub fn source_key(run: &str) -> String {
    format!("runs/{run}/source.tar.gz")
}

impl Plane {
    pub fn new(data: Data, store: Arc<dyn Store>) -> Result<Arc<Plane>> {
        let known: HashMap<String, KnownCert> = store
            .certs()?
            .into_iter()
            .map(|(f, pool_id, revoked)| (f, KnownCert { pool_id, revoked }))
            .collect();
        let check = ClientCheck::new(&data.ca.cert, known)?;
        let objects = Arc::new(DiskObjects::new(
            data.objects_dir(),
            &data.config.objects_url,
            &data.object_key,
        ));
        Ok(Arc::new(Plane {
            data,
            store,
            objects,
            check,
            hub: Hub::default(),
            mqtt: Mutex::new(None),
            brain: Mutex::new(()),
            pending: Mutex::new(Vec::new()),
            wake: (Mutex::new(false), Condvar::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.brain.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the dispatch loop to look again now.
    pub fn wake(&self) {
        *self.wake.0.lock().unwrap_or_else(|e| e.into_inner()) = true;
        self.wake.1.notify_all();
    }

    /// Queues `body` for `w` (long-poll) and publishes it (MQTT).
    fn send(&self, w: &WorkerRow, body: &Value) -> Result<()> {
        let text = body.to_string();
        if w.transport == "mqtt" {
            // Published once the state that caused it is committed.
            self.pending
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((w.region.clone(), w.pool_id.clone(), w.id.clone(), text));
            return Ok(());
        }
        self.store.enqueue(&w.id, &text)?;
        self.hub.notify(&w.id);
        Ok(())
    }

    /// Publishes the MQTT commands of a committed transaction (or drops
    /// them when it failed: the re-send rules send them again).
    fn flush(&self, committed: bool) {
        let items = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
        if !committed {
            return;
        }
        if let Some(m) = self.mqtt.lock().unwrap_or_else(|e| e.into_inner()).clone() {
            for (region, pool, worker, body) in items {
                m.publish(&region, &pool, &worker, &body);
            }
        }
    }

    // ---- worker messages -------------------------------------------------

    /// Records a batch of worker messages from `worker` of `pool`, arrived
    /// over `transport` (in `region`). Each message is validated,
    /// de-duplicated by id and applied; durable ones are acked (also
    /// duplicates: the first ack may have been lost). Malformed messages
    /// are logged and skipped, never fatal to the batch.
    pub fn record(
        &self,
        pool: &str,
        worker: &str,
        transport: &str,
        region: &str,
        batch: &[Value],
    ) -> Result<()> {
        let _g = self.lock();
        let out = self
            .store
            .transaction(&mut || self.record_batch(pool, worker, transport, region, batch));
        self.flush(out.is_ok());
        self.wake();
        out
    }

    fn record_batch(
        &self,
        pool: &str,
        worker: &str,
        transport: &str,
        region: &str,
        batch: &[Value],
    ) -> Result<()> {
        let mut acks = Vec::new();
        for raw in batch {
            let env: Envelope = match serde_json::from_value(raw.clone()) {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(worker, error = %e, "skipped a malformed worker message");
                    continue;
                }
            };
            if let Some(w) = msg_worker(&env.msg) {
                if w != worker {
                    tracing::warn!(
                        worker,
                        claimed = w,
                        "skipped a message naming another worker"
                    );
                    continue;
                }
            }
            let durable = env.msg.durable();
            let new = self
                .store
                .record_event(worker, &env.id, env.seq, &raw.to_string())?;
            if durable {
                acks.push(env.id.clone());
            }
            if new {
                self.apply(pool, worker, transport, region, &env)?;
            }
        }
        if !acks.is_empty() {
            if let Some(w) = self.store.worker(worker)? {
                self.send(&w, &command("ack", &ulid(), json!({"ids": acks})))?;
            }
        }
        Ok(())
    }

    fn worker_or_new(&self, pool: &str, worker: &str) -> Result<WorkerRow> {
        Ok(self.store.worker(worker)?.unwrap_or_else(|| WorkerRow {
            id: worker.to_string(),
            pool_id: pool.to_string(),
            state: "CONNECTING".into(),
            ..WorkerRow::default()
        }))
    }

    /// The will of a long-poll session.
    pub fn open_session(&self, pool: &str, worker: &str, will: &Value) -> Result<()> {
        let _g = self.lock();
        let mut w = self.worker_or_new(pool, worker)?;
        w.pool_id = pool.to_string();
        w.will = will.to_string();
        w.transport = "poll".into();
        w.last_seen_ms = now_ms();
        self.store.put_worker(&w)
    }

    /// `DELETE …/session`: the worker left on purpose; no `gone` follows.
    pub fn close_session(&self, worker: &str) -> Result<()> {
        let _g = self.lock();
        if let Some(mut w) = self.store.worker(worker)? {
            w.will.clear();
            self.store.put_worker(&w)?;
        }
        Ok(())
    }

    fn apply(
        &self,
        pool: &str,
        worker: &str,
        transport: &str,
        region: &str,
        env: &Envelope,
    ) -> Result<()> {
        let mut w = self.worker_or_new(pool, worker)?;
        w.pool_id = pool.to_string();
        w.last_seen_ms = now_ms();
        if !region.is_empty() {
            w.region = region.to_string();
        }
        match &env.msg {
            WorkerMsg::Hello {
                version,
                region,
                slots,
                host,
                will_id,
                ..
            } => {
                w.version = version.clone();
                w.region = region.clone();
                w.slots = u32::from(*slots);
                w.hostname = host.hostname.clone();
                w.transport = transport.to_string();
                w.hello_ts = env.ts;
                w.will_id = will_id.clone().unwrap_or_default();
                w.gone = false;
                w.gone_reason.clear();
                w.lost_check = true;
                if w.state == "GONE" || w.state.is_empty() {
                    w.state = "CONNECTING".into();
                }
                self.store.put_worker(&w)
            }
            WorkerMsg::Status {
                state,
                drain,
                runs,
                region,
                health,
                last_seq,
                ..
            } => {
                w.state = format!("{state:?}").to_uppercase();
                w.drain = *drain;
                w.runs = runs.clone();
                w.region = region.clone();
                w.health = health.clone();
                w.gone = false;
                if w.want_drain == Some(*drain) {
                    w.drain_cmd.clear();
                }
                if w.lost_check && self.store.seqs_complete(worker, last_seq.unwrap_or(0))? {
                    w.lost_check = false;
                    self.close_lost_runs(&w, Some(runs))?;
                }
                self.store.put_worker(&w)
            }
            WorkerMsg::Run {
                run_id,
                phase,
                exit_code,
                reason,
                command_id,
                duration_ms,
                steps,
            } => {
                self.store.put_worker(&w)?;
                let Some(mut run) = self.store.run(run_id)? else {
                    tracing::warn!(
                        worker,
                        run_id,
                        "a run event for a run this plane does not know"
                    );
                    return Ok(());
                };
                if run.worker_id != worker || run.is_final() {
                    return Ok(());
                }
                let reason = reason.clone().unwrap_or_default();
                match phase {
                    RunPhase::Accepted => {
                        if run.phase == "assigned" {
                            super::metrics::dispatched(&run);
                            run.phase = "accepted".into();
                        }
                    }
                    RunPhase::Rejected if command_id.is_some() => {
                        if run.phase == "assigned" && command_id.as_deref() == Some(&run.assign_cmd)
                        {
                            requeue(&mut run, &format!("worker {worker} refused it: {reason}"));
                        }
                    }
                    RunPhase::Rejected => end(&mut run, "rejected", &reason, env.ts),
                    RunPhase::Started => {
                        if matches!(run.phase.as_str(), "assigned" | "accepted") {
                            if run.phase == "assigned" {
                                super::metrics::dispatched(&run);
                            }
                            run.phase = "started".into();
                            run.started_ms = env.ts;
                        }
                    }
                    RunPhase::Finished => {
                        run.exit_code = *exit_code;
                        run.duration_ms = *duration_ms;
                        run.steps = steps
                            .iter()
                            .map(|s| StepRow {
                                name: s.name.clone(),
                                exit_code: s.exit_code,
                                duration_ms: s.duration_ms,
                            })
                            .collect();
                        end(&mut run, "finished", "", env.ts);
                    }
                    RunPhase::Failed => {
                        let phase = if run.cancel_cmd.is_empty() {
                            "failed"
                        } else {
                            "cancelled"
                        };
                        end(&mut run, phase, &reason, env.ts);
                    }
                }
                self.store.put_run(&run)
            }
            WorkerMsg::Log {
                run_id,
                chunk,
                key,
                bytes,
            } => {
                self.store.put_worker(&w)?;
                let Some(mut run) = self.store.run(run_id)? else {
                    return Ok(());
                };
                self.store.add_chunk(
                    run_id,
                    &ChunkRow {
                        chunk: *chunk,
                        key: key.clone(),
                        bytes: *bytes,
                    },
                )?;
                if !run.is_final() && chunk + LOG_URL_BATCH / 2 >= run.log_urls {
                    let from = run.log_urls;
                    run.log_urls += LOG_URL_BATCH;
                    let urls: Vec<Value> = (from..run.log_urls)
                        .map(|c| json!({"chunk": c, "url": self.objects.put_url(&log_key(run_id, c)), "expires_ms": now_ms() + super::objects::URL_TTL_MS}))
                        .collect();
                    self.store.put_run(&run)?;
                    self.send(
                        &w,
                        &command("uploads", &ulid(), json!({"run_id": run_id, "urls": urls})),
                    )?;
                }
                Ok(())
            }
            WorkerMsg::Error {
                ref_id,
                code,
                message,
            } => {
                tracing::warn!(
                    worker,
                    ?ref_id,
                    code,
                    message,
                    "the worker refused a command"
                );
                self.store.put_worker(&w)
            }
            WorkerMsg::Bye { reason, .. } => {
                w.gone = true;
                w.state = "GONE".into();
                w.gone_reason = format!("left ({reason})");
                w.cycle_cmd.clear();
                w.will.clear();
                self.store.put_worker(&w)?;
                self.close_lost_runs(&w, None)
            }
            WorkerMsg::Gone { .. } => {
                let stale = w.hello_ts > env.ts && w.will_id != env.id;
                if stale || w.gone {
                    return Ok(());
                }
                self.mark_gone(w, "vanished (last will)")
            }
        }
    }

    fn mark_gone(&self, mut w: WorkerRow, why: &str) -> Result<()> {
        w.gone = true;
        w.state = "GONE".into();
        w.gone_reason = why.to_string();
        w.will.clear();
        self.store.put_worker(&w)?;
        self.close_lost_runs(&w, None)
    }

    /// docs/protocol.md "Lost runs": runs this plane believes are on `w`
    /// and that it is not running (`running`: its status's `runs`; `None`:
    /// it is gone). Not started yet: back to the queue; started: failed.
    fn close_lost_runs(&self, w: &WorkerRow, running: Option<&Vec<String>>) -> Result<()> {
        for mut run in self.store.runs(true)? {
            if run.worker_id != w.id || !run.is_active() {
                continue;
            }
            if running.is_some_and(|r| r.contains(&run.id)) {
                continue;
            }
            match (run.phase.as_str(), running.is_some()) {
                // After a restart, an assign not yet answered is judged
                // afresh by the re-send.
                ("assigned", true) => continue,
                ("assigned" | "accepted", _) => {
                    requeue(
                        &mut run,
                        &format!(
                            "worker {} {} before starting it",
                            w.id,
                            if running.is_some() {
                                "restarted"
                            } else {
                                &w.gone_reason
                            }
                        ),
                    );
                }
                _ => {
                    let why = if running.is_some() {
                        format!("lost: the launcher of worker {} restarted mid-run", w.id)
                    } else {
                        format!("lost: worker {} {} mid-run", w.id, w.gone_reason)
                    };
                    end(&mut run, "failed", &why, now_ms());
                }
            }
            self.store.put_run(&run)?;
        }
        Ok(())
    }

    // ---- dispatch --------------------------------------------------------

    /// Runs forever (until `stopping`): a dispatch round when woken (at
    /// most one per 10 ms: a burst of submits and events makes one round),
    /// and a full round (poll grace, re-sends) every 200 ms.
    pub fn run_loop(self: &Arc<Self>) {
        let mut last_full = std::time::Instant::now();
        while !self.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            let full = last_full.elapsed() >= Duration::from_millis(200);
            if full {
                last_full = std::time::Instant::now();
            }
            if let Err(e) = self.tick_with(full) {
                tracing::error!(error = %e, "dispatch failed; retrying");
            }
            std::thread::sleep(Duration::from_millis(10));
            let mut woken = self.wake.0.lock().unwrap_or_else(|e| e.into_inner());
            if !*woken {
                woken = self
                    .wake
                    .1
                    .wait_timeout(woken, Duration::from_millis(200))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            *woken = false;
        }
    }

    /// One round: the poll grace, new assignments, re-sends.
    pub fn tick(&self) -> Result<()> {
        self.tick_with(true)
    }

    /// `full`: also the poll grace and the re-sends; else only dispatch,
    /// and only when a run is queued.
    fn tick_with(&self, full: bool) -> Result<()> {
        let _g = self.lock();
        let out = self.store.transaction(&mut || self.tick_locked(full));
        self.flush(out.is_ok());
        out
    }

    fn tick_locked(&self, full: bool) -> Result<()> {
        let now = now_ms();
        if !full {
            let runs = self.store.runs(true)?;
            if !runs.iter().any(|r| r.phase == "queued") {
                return Ok(());
            }
            let workers = self.store.workers()?;
            return self.dispatch(&workers, &runs, now);
        }
        let grace = self.data.config.poll_grace_s * 1000;
        let resend = self.data.config.resend_s * 1000;
        let mut workers = self.store.workers()?;
        for w in workers.iter_mut() {
            if !w.gone && w.transport == "poll" && !self.hub.alive(&w.id, grace) {
                self.mark_gone(w.clone(), "vanished (no poll within the poll grace)")?;
                w.gone = true;
            }
        }
        let runs = self.store.runs(true)?;
        // Re-sends.
        for w in workers.iter_mut().filter(|w| !w.gone) {
            let mut changed = false;
            if let Some(on) = w.want_drain {
                if !w.drain_cmd.is_empty() && w.drain != on && w.resend_ms + resend <= now {
                    self.send(
                        w,
                        &command("drain", &w.drain_cmd.clone(), json!({"on": on})),
                    )?;
                    w.resend_ms = now;
                    changed = true;
                }
            }
            if !w.cycle_cmd.is_empty() && w.resend_ms + resend <= now {
                self.send(w, &command("cycle", &w.cycle_cmd.clone(), json!({})))?;
                w.resend_ms = now;
                changed = true;
            }
            if changed {
                self.store.put_worker(w)?;
            }
        }
        let by_id: HashMap<&str, &WorkerRow> = workers.iter().map(|w| (w.id.as_str(), w)).collect();
        for run in &runs {
            let Some(w) = by_id.get(run.worker_id.as_str()) else {
                continue;
            };
            if w.gone || run.resend_ms + resend > now {
                continue;
            }
            let mut run = run.clone();
            if run.phase == "assigned" {
                let body = self.assign_body(&mut run)?;
                run.resend_ms = now;
                self.store.put_run(&run)?;
                self.send(w, &body)?;
            } else if run.is_active() && !run.cancel_cmd.is_empty() {
                run.resend_ms = now;
                self.store.put_run(&run)?;
                self.send(
                    w,
                    &command(
                        "cancel",
                        &run.cancel_cmd,
                        json!({"run_id": run.id, "reason": run.cancel_reason}),
                    ),
                )?;
            }
        }
        self.dispatch(&workers, &runs, now)
    }

    /// Assigns queued runs, oldest first per pool, to workers with a free
    /// slot; a tracked run waits while another tracked run of its stack is
    /// on a worker or queued before it.
    fn dispatch(&self, workers: &[WorkerRow], runs: &[RunRow], now: u64) -> Result<()> {
        let mut load: HashMap<&str, u32> = HashMap::new();
        let mut busy_stacks: HashSet<(&str, &str)> = HashSet::new();
        for r in runs.iter().filter(|r| r.is_active()) {
            *load.entry(r.worker_id.as_str()).or_default() += 1;
            if r.run_type == "tracked" {
                busy_stacks.insert((r.pool_id.as_str(), r.stack.as_str()));
            }
        }
        for run in runs.iter().filter(|r| r.phase == "queued") {
            let key = (run.pool_id.as_str(), run.stack.as_str());
            if run.run_type == "tracked" {
                if busy_stacks.contains(&key) {
                    continue;
                }
                busy_stacks.insert(key);
            }
            if run.resend_ms > now {
                continue;
            }
            let best = workers
                .iter()
                .filter(|w| eligible(w) && w.pool_id == run.pool_id)
                .filter(|w| load.get(w.id.as_str()).copied().unwrap_or(0) < w.slots)
                .min_by_key(|w| {
                    (
                        load.get(w.id.as_str()).copied().unwrap_or(0),
                        w.last_seen_ms,
                    )
                });
            let Some(w) = best else { continue };
            let mut run = run.clone();
            run.phase = "assigned".into();
            run.worker_id = w.id.clone();
            run.assign_cmd = ulid();
            run.assigned_ms = now;
            run.resend_ms = now;
            run.reason.clear();
            let body = self.assign_body(&mut run)?;
            if w.transport == "mqtt" {
                self.store.put_run(&run)?;
                self.send(w, &body)?;
            } else {
                self.store
                    .put_run_and_enqueue(&run, &w.id, &body.to_string())?;
                self.hub.notify(&w.id);
            }
            *load.entry(w.id.as_str()).or_default() += 1;
        }
        Ok(())
    }

    /// The `assign` of `run`, its spec sealed to the pool's key (fresh
    /// upload URLs each time; the command id stays the same).
    fn assign_body(&self, run: &mut RunRow) -> Result<Value> {
        let pool = self
            .store
            .pool(&run.pool_id)?
            .ok_or_else(|| Error::NotFound(format!("pool {} is gone", run.pool_id)))?;
        let mut spec: Value = serde_json::from_str(&run.spec)
            .map_err(|e| Error::Storage(format!("run {} has an unreadable spec: {e}", run.id)))?;
        if run.log_urls == 0 {
            run.log_urls = LOG_URL_BATCH;
        }
        let logs: Vec<String> = (0..run.log_urls)
            .map(|c| self.objects.put_url(&log_key(&run.id, c)))
            .collect();
        spec["uploads"] = json!({"logs": logs, "outputs": self.objects.put_url(&format!("runs/{}/outputs.json", run.id))});
        if run.has_source {
            spec["source"] = json!({"url": self.objects.get_url(&source_key(&run.id))});
        }
        let plain = spec.to_string();
        let state = crate::identity::seal_run_state(&pool.spki, &run.id, plain.as_bytes())
            .map_err(|e| Error::Config(format!("cannot seal the run state of {}: {e}", run.id)))?;
        let run_type = if run.run_type == "tracked" {
            "write"
        } else {
            "read"
        };
        Ok(command(
            "assign",
            &run.assign_cmd,
            json!({"run_id": run.id, "run_type": run_type, "state": state}),
        ))
    }

    // ---- admin operations ------------------------------------------------

    /// Queues a run. `spec`: the run spec JSON (its `run_id` is replaced by
    /// the plane's); `source`: a tar.gz to serve to the worker.
    pub fn submit(
        &self,
        pool: &str,
        stack: Option<&str>,
        spec: &[u8],
        source: Option<&[u8]>,
        idempotency_key: Option<&str>,
    ) -> Result<(RunRow, bool)> {
        let pool = self.store.pool(pool)?.ok_or_else(|| {
            Error::NotFound(format!(
                "no pool {pool:?}: `liftoff-plane pool list` shows the pools"
            ))
        })?;
        let mut doc: Value = serde_json::from_slice(spec)
            .map_err(|e| Error::BadInput(format!("the run spec is not JSON: {e}")))?;
        let Some(obj) = doc.as_object_mut() else {
            return Err(Error::BadInput("the run spec is not a JSON object".into()));
        };
        if obj.contains_key("uploads") {
            return Err(Error::BadInput(
                "the run spec has `uploads`: the plane signs its own upload URLs; remove the field"
                    .into(),
            ));
        }
        if source.is_some() && obj.contains_key("source") {
            return Err(Error::BadInput(
                "the run spec has a `source` and --source was given: use one".into(),
            ));
        }
        let id = ulid();
        obj.insert("run_id".into(), json!(id));
        if let Some(stack) = stack {
            let s = obj.entry("stack").or_insert_with(|| json!({}));
            s["id"] = json!(stack);
        }
        // Validate as `liftoff exec --spec` would, with the fields the
        // plane fills at assignment.
        let mut check = doc.clone();
        check["uploads"] = json!({"logs": ["https://plane.invalid/o/x"]});
        if source.is_some() {
            check["source"] = json!({"url": "https://plane.invalid/o/s"});
        }
        let parsed = crate::run::spec::RunSpec::from_json(check.to_string().as_bytes())
            .map_err(Error::BadInput)?;
        if let Some(key) = idempotency_key {
            if key.is_empty() || key.len() > 128 {
                return Err(Error::BadInput(
                    "the idempotency key must be 1–128 characters".into(),
                ));
            }
        }
        let stack = if parsed.stack.id.is_empty() {
            "default".to_string()
        } else {
            parsed.stack.id.clone()
        };
        let run = RunRow {
            id: id.clone(),
            pool_id: pool.id.clone(),
            stack,
            run_type: if parsed.run_type.read_only() {
                "proposed"
            } else {
                "tracked"
            }
            .into(),
            idempotency_key: idempotency_key.map(str::to_string),
            spec: doc.to_string(),
            has_source: source.is_some(),
            phase: "queued".into(),
            submitted_ms: now_ms(),
            ..RunRow::default()
        };
        let _g = self.lock();
        if let Some(key) = idempotency_key {
            if let Some(existing) = self
                .store
                .runs(false)?
                .into_iter()
                .find(|r| r.idempotency_key.as_deref() == Some(key))
            {
                return Ok((existing, false));
            }
        }
        if let Some(src) = source {
            self.objects.put(&source_key(&id), src)?;
        }
        // The insert and its first dispatch round are one transaction (one
        // fsync, not two): with an idle worker, the run is assigned by the
        // time the submit is answered.
        let mut stored = None;
        let out = self.store.transaction(&mut || {
            let s = self.store.insert_run(&run)?;
            if s.id == id {
                self.tick_locked(false)?;
            }
            stored = Some(s);
            Ok(())
        });
        self.flush(out.is_ok());
        if let Err(e) = out {
            // Nothing half-written: the run was not stored, so neither is
            // its source.
            if source.is_some() {
                let _ = self.objects.remove(&source_key(&id));
            }
            return Err(e);
        }
        drop(_g);
        let stored = stored.ok_or_else(|| Error::Storage("a run vanished in its insert".into()))?;
        // Runs of a busy stack or pool wait for the next round. The answer
        // is the run as queued (its assignment, if any, shows in `run show`).
        self.wake();
        let new = stored.id == id;
        Ok((stored, new))
    }

    pub fn cancel(&self, run_id: &str, reason: &str) -> Result<RunRow> {
        let _g = self.lock();
        let mut run = self.run(run_id)?;
        if run.is_final() {
            return Err(Error::Conflict(format!(
                "run {run_id} is already {}",
                run.phase
            )));
        }
        run.cancel_reason = if reason.is_empty() {
            "cancelled by a user".into()
        } else {
            reason.to_string()
        };
        if run.phase == "queued" {
            let why = run.cancel_reason.clone();
            end(&mut run, "cancelled", &why, now_ms());
        } else if run.cancel_cmd.is_empty() {
            run.cancel_cmd = ulid();
            run.resend_ms = 0;
        }
        self.store.put_run(&run)?;
        drop(_g);
        self.wake();
        Ok(run)
    }

    pub fn run(&self, run_id: &str) -> Result<RunRow> {
        found(self.store.run(run_id)?, "run", run_id)
    }

    pub fn worker(&self, id: &str) -> Result<WorkerRow> {
        found(self.store.worker(id)?, "worker", id)
    }

    pub fn drain(&self, worker: &str, on: bool) -> Result<WorkerRow> {
        self.command_live_worker(worker, |w| {
            w.want_drain = Some(on);
            w.drain_cmd = ulid();
            w.resend_ms = 0;
        })
    }

    pub fn cycle_worker(&self, worker: &str) -> Result<WorkerRow> {
        self.command_live_worker(worker, |w| {
            if w.cycle_cmd.is_empty() {
                w.cycle_cmd = ulid();
                w.resend_ms = 0;
            }
        })
    }

    /// Applies `set` (a command to send) to a worker that is not gone,
    /// stores it and wakes the dispatcher to send it.
    fn command_live_worker(
        &self,
        worker: &str,
        set: impl FnOnce(&mut WorkerRow),
    ) -> Result<WorkerRow> {
        let _g = self.lock();
        let mut w = self.worker(worker)?;
        if w.gone {
            return Err(Error::Conflict(format!(
                "worker {worker} is gone ({})",
                w.gone_reason
            )));
        }
        set(&mut w);
        self.store.put_worker(&w)?;
        drop(_g);
        self.wake();
        Ok(w)
    }

    /// Cycles every live worker of a pool; returns their ids.
    pub fn cycle_pool(&self, pool: &str) -> Result<Vec<String>> {
        let pool = self.pool(pool)?;
        let ids: Vec<String> = self
            .store
            .workers()?
            .into_iter()
            .filter(|w| w.pool_id == pool.id && !w.gone)
            .map(|w| w.id)
            .collect();
        for id in &ids {
            self.cycle_worker(id)?;
        }
        Ok(ids)
    }

    pub fn pool(&self, name: &str) -> Result<PoolRow> {
        found(self.store.pool(name)?, "pool", name)
    }

    /// Creates a pool from a CSR; returns it and its token.
    pub fn create_pool(&self, name: &str, csr: &str) -> Result<(PoolRow, String)> {
        valid_name(name)?;
        let id = ulid();
        let cert = super::pki::sign_csr(&self.data.ca, csr, &id)?;
        let pool = PoolRow {
            id,
            name: name.to_string(),
            cert_pem: cert.cert_pem,
            fingerprint: cert.fingerprint.clone(),
            spki: cert.spki_der,
            created_ms: now_ms(),
        };
        let _g = self.lock();
        self.store.create_pool(&pool)?;
        self.check.set(
            &cert.fingerprint,
            KnownCert {
                pool_id: pool.id.clone(),
                revoked: false,
            },
        );
        let token = self.token(&pool);
        Ok((pool, token))
    }

    /// A new certificate for a pool from a new CSR; the old one is revoked
    /// at once (workers still using it are refused and exit 78).
    pub fn reset_pool(&self, name: &str, csr: &str) -> Result<(PoolRow, String)> {
        let mut pool = self.pool(name)?;
        let old = pool.fingerprint.clone();
        let old_pem = pool.cert_pem.clone();
        let cert = super::pki::sign_csr(&self.data.ca, csr, &pool.id)?;
        pool.cert_pem = cert.cert_pem;
        pool.fingerprint = cert.fingerprint.clone();
        pool.spki = cert.spki_der;
        let _g = self.lock();
        self.store.reset_pool(&pool)?;
        for (f, p, _) in self.store.certs()? {
            if p == pool.id && f != pool.fingerprint {
                self.check.set(
                    &f,
                    KnownCert {
                        pool_id: p.clone(),
                        revoked: true,
                    },
                );
            }
        }
        self.check.set(
            &old,
            KnownCert {
                pool_id: pool.id.clone(),
                revoked: true,
            },
        );
        self.check.set(
            &cert.fingerprint,
            KnownCert {
                pool_id: pool.id.clone(),
                revoked: false,
            },
        );
        self.write_crl(&old_pem)?;
        let token = self.token(&pool);
        Ok((pool, token))
    }

    /// Adds `revoked_pem` to DATA/revoked.pem and rewrites DATA/crl.pem
    /// (for MQTT brokers: reload them to apply it).
    fn write_crl(&self, revoked_pem: &str) -> Result<()> {
        let bundle_path = self.data.dir.join("revoked.pem");
        let mut bundle = std::fs::read_to_string(&bundle_path).unwrap_or_default();
        bundle.push_str(revoked_pem);
        let count = bundle.matches("BEGIN CERTIFICATE").count() as u64;
        let crl = super::pki::crl(&self.data.ca, &bundle, count + 1)?;
        super::write_file(&bundle_path, bundle.as_bytes(), 0o644)?;
        super::write_file(&self.data.dir.join("crl.pem"), crl.as_bytes(), 0o644)
    }

    /// The pool token: the documented format with `endpoints`, `brokers`
    /// (when configured) and the CA.
    pub fn token(&self, pool: &PoolRow) -> String {
        use base64::Engine as _;
        let c = &self.data.config;
        let mut doc = json!({
            "version": 1,
            "pool_id": pool.id,
            "namespace": c.namespace,
            "certificate": pool.cert_pem,
            "ca": self.data.ca.cert,
            "endpoints": c.endpoints,
        });
        if !c.brokers.is_empty() {
            doc["brokers"] = json!(c.brokers);
        }
        base64::engine::general_purpose::STANDARD.encode(doc.to_string())
    }

    /// The log of a run as stored: chunks 0, 1, 2… concatenated, from
    /// chunk `from`; stops at the first missing chunk. Returns the bytes and
    /// the next chunk number.
    pub fn log(&self, run_id: &str, from: u64) -> Result<(Vec<u8>, u64)> {
        self.run(run_id)?;
        let chunks = self.store.chunks(run_id)?;
        let mut out = Vec::new();
        let mut next = from;
        for c in chunks.iter().filter(|c| c.chunk >= from) {
            if c.chunk != next {
                break;
            }
            match self.objects.get(&log_key(run_id, c.chunk))? {
                Some(d) => out.extend_from_slice(&d),
                None => break,
            }
            next += 1;
        }
        Ok((out, next))
    }

    /// Why a queued run waits (the seed's "Queued" view).
    pub fn wait_reason(&self, run: &RunRow, runs: &[RunRow], workers: &[WorkerRow]) -> String {
        if run.phase != "queued" {
            return String::new();
        }
        if run.run_type == "tracked" {
            if let Some(other) = runs.iter().find(|r| {
                r.id != run.id
                    && r.pool_id == run.pool_id
                    && r.stack == run.stack
                    && r.run_type == "tracked"
                    && (r.is_active() || (r.phase == "queued" && r.seqno < run.seqno))
            }) {
                return format!(
                    "a tracked run is waiting on another tracked run ({}) of stack {}",
                    other.id, run.stack
                );
            }
        }
        let live: Vec<&WorkerRow> = workers
            .iter()
            .filter(|w| w.pool_id == run.pool_id && !w.gone)
            .collect();
        if live.is_empty() {
            return "no worker of the pool is connected".into();
        }
        if !live.iter().any(|w| eligible(w)) {
            return "every worker of the pool is drained".into();
        }
        "waiting for a free worker".into()
    }
}

/// The `what` (run, worker, pool) named `id`, or a not-found error that
/// says which command lists them.
fn found<T>(row: Option<T>, what: &str, id: &str) -> Result<T> {
    row.ok_or_else(|| {
        Error::NotFound(format!(
            "no {what} {id:?}: `liftoff-plane {what} list` shows the {what}s"
        ))
    })
}

fn eligible(w: &WorkerRow) -> bool {
    !w.gone
        && w.slots > 0
        && w.state != "DRAINED"
        && w.state != "CONNECTING"
        && !w.drain
        && w.want_drain != Some(true)
        && w.cycle_cmd.is_empty()
}

fn requeue(run: &mut RunRow, why: &str) {
    run.phase = "queued".into();
    run.reason = why.to_string();
    run.worker_id.clear();
    run.assign_cmd.clear();
    run.requeued += 1;
    // Not at once to the same worker in a loop.
    run.resend_ms = now_ms() + 1000;
}

fn end(run: &mut RunRow, phase: &str, reason: &str, ts: u64) {
    run.phase = phase.to_string();
    run.reason = reason.to_string();
    run.ended_ms = ts.max(run.started_ms);
    if run.ended_ms == 0 {
        run.ended_ms = now_ms();
    }
}

fn msg_worker(m: &WorkerMsg) -> Option<&str> {
    match m {
        WorkerMsg::Hello { worker_id, .. }
        | WorkerMsg::Status { worker_id, .. }
        | WorkerMsg::Bye { worker_id, .. }
        | WorkerMsg::Gone { worker_id, .. } => Some(worker_id),
        _ => None,
    }
}

/// Pool names: 1–64 of `A-Z a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Error::BadInput(format!(
            "the pool name {name:?} is not 1–64 of A-Z a-z 0-9 . _ -"
        )));
    }
    Ok(())
}
