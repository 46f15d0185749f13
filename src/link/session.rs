//! The transport-neutral link session: what the worker talks to. It owns
//! the durable outbox's delivery (cursor, window, re-send after
//! `resend_after`, acks), `hello` and `status` on every connection, regional
//! failover (next region in the token's order, jittered backoff, never two
//! connects closer than `min_connect_interval`) and fail-back to the primary,
//! the pool-reset detection, and the clean close (`bye`, disconnect). How
//! bytes reach the plane is the job of one [`Transport`] (`mqtt.rs` today;
//! an HTTPS long-poll transport fits the same trait, see its doc).
//!
//! Call order: build [`SessionOptions`] and a transport, then
//! [`Session::start`] with the opened [`Outbox`] and the `hello` template;
//! call [`Session::status`] once right away (durable events are published
//! after the current `status` on every connection, so none flows before the
//! first one); read [`SessionEvent`]s from the returned receiver; call
//! [`Session::emit`] for events and [`Session::status`] on every change; end
//! with [`Session::close`] (flush, `bye`, clean disconnect) or drop the
//! process (the transport's peer then reports `gone`).
//!
//! On every connection the session publishes, in this order: `hello` (its
//! `region` filled in), the latest `status` (its `region` filled in), then
//! every unacknowledged durable event, oldest first (docs/protocol.md).
//!
//! The session runs on one dedicated thread (`liftoff-link`) that drives the
//! transport synchronously; the handle talks to it through channels.

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::outbox::Outbox;
use super::protocol::{self, Command, CommandBody, Envelope, Rejection, RunPhase, WorkerMsg};

/// Why a connection attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// The peer refused this pool's certificate (TLS alert, or "not
    /// authorized"): when every region says so, the pool was reset.
    CertificateRejected(String),
    /// Anything else (network, TLS verification, timeout, protocol).
    Failed(String),
}

/// Why a publish was not taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishError {
    /// The transport's window is full: try again after some progress.
    Full,
    /// Not connected.
    NotConnected,
}

/// The connection is dead (the transport already dropped it); the reason
/// is for the launcher log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lost(pub String);

/// One way of carrying the protocol's messages between the worker and the
/// plane, for one connection at a time to one region's endpoint. The
/// session calls it from its own thread only, in this order:
/// [`connect`](Transport::connect), then any number of
/// [`publish`](Transport::publish) / [`next`](Transport::next), then either
/// [`disconnect`](Transport::disconnect) (leaving on purpose) or nothing
/// when `next` reported [`Lost`]; then `connect` again, perhaps to another
/// region. Payloads are whole protocol messages (JSON bytes); the transport
/// never looks inside them, and parsing, acks, re-sends and ordering are the
/// session's.
///
/// MQTT (`mqtt.rs`): `connect` = TCP, TLS, CONNECT with the will, CONNACK,
/// SUBSCRIBE to the inbound topic; `publish` = one QoS 1 PUBLISH, in flight
/// until its PUBACK; `next` = the next PUBLISH on the inbound topic, while
/// pings and the no-progress rule decide liveness; `disconnect` = MQTT
/// DISCONNECT (the broker drops the will).
///
/// HTTPS long-poll (a future `poll.rs`) maps onto it like this:
/// - `connect(region)`: mutual TLS to the region's endpoint and a first
///   request that the endpoint answers (a certificate refusal there is
///   [`ConnectError::CertificateRejected`]); `will` is kept and may be posted
///   by the transport never (the plane notices the polls stop) or on an
///   abrupt end it can still report;
/// - `publish(bytes)`: appended to the next batch of events; the transport
///   POSTs batches and counts each event in [`in_flight`](Transport::in_flight)
///   until the POST carrying it is answered 2xx; [`PublishError::Full`] when
///   its batch queue is at its bound;
/// - `next(timeout)`: hands over the commands of the current long poll's
///   answer one by one; the transport keeps the command cursor, advances it
///   past each command it handed over, and re-issues the poll (held ≤ 50 s
///   by the plane) with that cursor; [`Lost`] when a poll or a POST fails or
///   nothing answers within its keepalive;
/// - `disconnect()`: stops polling after the last batch is answered.
pub trait Transport: Send {
    /// The regions this transport can reach, in order of preference (the
    /// token's order); `connect` takes an index into this list.
    fn regions(&self) -> Vec<String>;

    /// Connects to `region` (an index into [`regions`](Transport::regions)),
    /// blocking at most the transport's connection timeout. `will` is the
    /// `gone` message the peer should publish if this connection dies
    /// without [`disconnect`](Transport::disconnect).
    fn connect(&mut self, region: usize, will: &[u8]) -> Result<(), ConnectError>;

    /// Hands one message over for sending; it must not block on the network.
    fn publish(&mut self, payload: Vec<u8>) -> Result<(), PublishError>;

    /// Messages handed over and not yet confirmed by the peer.
    fn in_flight(&self) -> usize;

    /// Waits at most `timeout` for the next inbound command; `Ok(None)` when
    /// none came. `Err` when the connection is dead by the transport's own
    /// rules (it is already dropped then).
    fn next(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, Lost>;

    /// Leaves the current connection on purpose (no will), waiting briefly
    /// for it to be written. Harmless when not connected.
    fn disconnect(&mut self);

    /// A self-contained health check of `region` that the session runs on
    /// a thread of its own while connected elsewhere: true when the region
    /// would take a connection now.
    fn probe(&self, region: usize) -> Box<dyn FnOnce() -> bool + Send>;

    /// A handle that makes a blocked [`next`](Transport::next) return
    /// `Ok(None)` at once, callable from any thread: the session calls it
    /// when the worker hands it something to send, so an idle connection
    /// does not delay outgoing messages. `None` (the default) when the
    /// transport cannot be woken: the session then sends within its idle
    /// tick (200 ms).
    fn waker(&self) -> Option<Waker> {
        None
    }
}

/// See [`Transport::waker`].
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// Session tuning. [`SessionOptions::new`] gives production defaults.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    pub worker_id: String,
    /// While on a secondary, probe the primary this often …
    pub probe_every: Duration,
    /// … and fail back once it has been healthy this long.
    pub failback_after: Duration,
    /// Re-send events the plane has not acked after this long.
    pub resend_after: Duration,
    /// Never two connects closer than this (AWS IoT's one CONNECT a second).
    pub min_connect_interval: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
}

impl SessionOptions {
    pub fn new(worker_id: String) -> SessionOptions {
        SessionOptions {
            worker_id,
            probe_every: Duration::from_secs(15),
            failback_after: Duration::from_secs(120),
            resend_after: Duration::from_secs(30),
            min_connect_interval: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// What the session tells the worker.
#[derive(Debug, Clone)]
pub enum SessionEvent {
    /// Connected to a region (`hello` and `status` are on their way).
    Connected { region: String, primary: bool },
    /// The connection to a region was lost or could not be made.
    Disconnected { region: String, reason: String },
    /// A valid command from the plane (acks are handled by the session).
    Command(Command),
    /// An inbound payload was refused; the worker reports it.
    Rejected(Rejection),
    /// Every region refused this pool's certificate: the pool was reset.
    CertificateRejected { detail: String },
    /// The session stopped (after [`Session::close`]).
    Closed,
}

/// A run named by an event still waiting for the plane's ack, with that
/// event's phase (after a restart: what this worker answered before).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingRun {
    pub run_id: String,
    pub phase: RunPhase,
    /// Set for the answer to an `assign` (`accepted`/`rejected`).
    pub command_id: Option<String>,
}

/// Why the session could not start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    NoRegion,
    Thread(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::NoRegion => write!(
                f,
                "the token names no broker: generate a new token for this pool"
            ),
            StartError::Thread(e) => write!(f, "cannot start the link thread: {e}"),
        }
    }
}

enum Request {
    Wake,
    Status(WorkerMsg),
    Close {
        bye: Option<WorkerMsg>,
        deadline: Instant,
        done: Sender<()>,
    },
}

/// The worker's handle on the session thread.
pub struct Session {
    outbox: Arc<Mutex<Outbox>>,
    tx: Sender<Request>,
    waker: Option<Waker>,
    thread: Option<JoinHandle<()>>,
}

fn lock(outbox: &Mutex<Outbox>) -> MutexGuard<'_, Outbox> {
    outbox.lock().unwrap_or_else(|p| p.into_inner())
}

/// The outbox's figures for the metrics (after every push and ack).
fn outbox_metrics(ob: &Outbox) {
    crate::metrics::LAUNCHER.outbox(ob.len(), ob.oldest_ts_ms());
}

impl Session {
    /// Starts the session thread over `transport`. `hello` is published
    /// first on every connection (its `region` filled in).
    pub fn start(
        opts: SessionOptions,
        transport: Box<dyn Transport>,
        outbox: Outbox,
        hello: WorkerMsg,
    ) -> Result<(Session, smol::channel::Receiver<SessionEvent>), StartError> {
        let regions = transport.regions();
        let waker = transport.waker();
        if regions.is_empty() {
            return Err(StartError::NoRegion);
        }
        let (events, events_rx) = smol::channel::unbounded();
        crate::metrics::LAUNCHER.link_regions(&regions);
        outbox_metrics(&outbox);
        let outbox = Arc::new(Mutex::new(outbox));
        let (tx, rx) = mpsc::channel();
        let state = SessionThread::new(opts, regions, transport, outbox.clone(), hello, events, rx);
        let thread = std::thread::Builder::new()
            .name("liftoff-link".into())
            .spawn(move || state.run())
            .map_err(|e| StartError::Thread(e.to_string()))?;
        Ok((
            Session {
                outbox,
                tx,
                waker,
                thread: Some(thread),
            },
            events_rx,
        ))
    }

    /// Sends a worker message. Durable messages (see
    /// [`WorkerMsg::durable`]) are written to the outbox (fsync'd) before
    /// this returns, and delivered until acked; a `status` goes to
    /// [`Session::status`]. Returns the message id.
    pub fn emit(&self, msg: WorkerMsg) -> Result<String, String> {
        let mut env = Envelope::new(msg);
        if env.msg.durable() {
            let mut ob = lock(&self.outbox);
            ob.push(&mut env)?;
            outbox_metrics(&ob);
            drop(ob);
            self.request(Request::Wake);
            Ok(env.id)
        } else if let WorkerMsg::Status { .. } = env.msg {
            let id = env.id.clone();
            self.status(env.msg);
            Ok(id)
        } else {
            Err("only durable events and status go through emit".into())
        }
    }

    /// Records the current status and publishes it now if connected; it is
    /// also published after `hello` on every connection.
    pub fn status(&self, status: WorkerMsg) {
        self.request(Request::Status(status));
    }

    /// Hands a request to the session thread and wakes it.
    fn request(&self, r: Request) {
        let _ = self.tx.send(r);
        if let Some(w) = &self.waker {
            w();
        }
    }

    /// Runs named by events still waiting for the plane's ack, oldest
    /// first (after a restart: runs this worker already answered for).
    pub fn pending_runs(&self) -> Vec<PendingRun> {
        lock(&self.outbox)
            .pending()
            .filter_map(|p| {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).ok()?;
                let run_id = v.get("run_id")?.as_str()?.to_string();
                let phase = match v.get("phase") {
                    Some(ph) => serde_json::from_value(ph.clone()).ok()?,
                    // a `log` event: the run was running
                    None => RunPhase::Started,
                };
                let command_id = v
                    .get("command_id")
                    .and_then(|c| c.as_str())
                    .map(str::to_string);
                Some(PendingRun {
                    run_id,
                    phase,
                    command_id,
                })
            })
            .collect()
    }

    /// Events not yet acked by the plane.
    pub fn unacked(&self) -> usize {
        lock(&self.outbox).len()
    }

    /// Flushes the outbox (until acked or `deadline`), publishes `bye`,
    /// disconnects cleanly (no will) and stops the thread.
    pub fn close(mut self, bye: Option<WorkerMsg>, deadline: Instant) {
        let (done, wait) = mpsc::channel();
        if self
            .tx
            .send(Request::Close {
                bye,
                deadline,
                done,
            })
            .is_ok()
        {
            let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(3);
            let _ = wait.recv_timeout(left);
        }
        if let Some(t) = self.thread.take()
            && t.is_finished()
        {
            let _ = t.join();
        }
    }
}

/// The session's view of one live connection.
struct Conn {
    region: usize,
    /// Highest outbox seq published on this connection.
    cursor: u64,
    /// When each published outbox seq was last sent.
    sent_at: BTreeMap<u64, Instant>,
    /// The status went out after hello: durable events may follow.
    status_sent: bool,
    bye_sent: bool,
}

struct Closing {
    bye: Option<WorkerMsg>,
    deadline: Instant,
    done: Sender<()>,
}

struct SessionThread {
    opts: SessionOptions,
    regions: Vec<String>,
    transport: Box<dyn Transport>,
    outbox: Arc<Mutex<Outbox>>,
    hello: WorkerMsg,
    status: Option<WorkerMsg>,
    events: smol::channel::Sender<SessionEvent>,
    rx: Receiver<Request>,
    conn: Option<Conn>,
    /// Region to try next.
    next_region: usize,
    next_attempt: Instant,
    last_connect: Option<Instant>,
    failures: u32,
    /// Regions that refused the certificate since the last success.
    rejected_by: Vec<bool>,
    rejections: u32,
    probe: Option<Receiver<bool>>,
    next_probe: Instant,
    primary_healthy_since: Option<Instant>,
    closing: Option<Closing>,
}

fn jitter(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if aws_lc_rs::rand::fill(&mut b).is_ok() {
        u16::from_le_bytes(b) as u32
    } else {
        32768
    };
    // between 50 % and 100 % of d
    d / 2 + d.mul_f64(f64::from(r) / 131_070.0)
}

/// `msg` as published on a connection to `region`: `hello` and `status`
/// name the region; `hello` also the id of this connection's will,
/// `status` the newest durable event's `seq`.
fn in_region(
    mut msg: WorkerMsg,
    region: &str,
    will: Option<&str>,
    outbox: &Mutex<Outbox>,
) -> WorkerMsg {
    match &mut msg {
        WorkerMsg::Hello {
            region: r, will_id, ..
        } => {
            *r = region.to_string();
            *will_id = will.map(str::to_string);
        }
        WorkerMsg::Status {
            region: r,
            last_seq,
            ..
        } => {
            *r = region.to_string();
            *last_seq = Some(lock(outbox).last_seq()).filter(|s| *s > 0);
        }
        _ => {}
    }
    msg
}

impl SessionThread {
    fn new(
        opts: SessionOptions,
        regions: Vec<String>,
        transport: Box<dyn Transport>,
        outbox: Arc<Mutex<Outbox>>,
        hello: WorkerMsg,
        events: smol::channel::Sender<SessionEvent>,
        rx: Receiver<Request>,
    ) -> SessionThread {
        let n = regions.len();
        let now = Instant::now();
        SessionThread {
            opts,
            regions,
            transport,
            outbox,
            hello,
            status: None,
            events,
            rx,
            conn: None,
            next_region: 0,
            next_attempt: now,
            last_connect: None,
            failures: 0,
            rejected_by: vec![false; n],
            rejections: 0,
            probe: None,
            next_probe: now,
            primary_healthy_since: None,
            closing: None,
        }
    }

    fn send(&self, e: SessionEvent) {
        let _ = self.events.send_blocking(e);
    }

    fn run(mut self) {
        loop {
            crate::metrics::LAUNCHER.link_beat();
            let busy = self.transport.in_flight() > 0 || self.closing.is_some();
            let tick = if busy {
                Duration::from_millis(20)
            } else {
                Duration::from_millis(200)
            };
            if self.conn.is_none() {
                // Not connected: wait for requests until the next attempt.
                let wait = self
                    .next_attempt
                    .saturating_duration_since(Instant::now())
                    .min(tick);
                match self.rx.recv_timeout(wait) {
                    Ok(r) => self.request(r),
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
            while let Ok(r) = self.rx.try_recv() {
                self.request(r);
            }
            if self.finish_closing() {
                self.send(SessionEvent::Closed);
                return;
            }
            if self.conn.is_none() && Instant::now() >= self.next_attempt {
                self.connect();
            }
            if self.conn.is_some() {
                self.flush();
                self.poll(tick);
                self.failback();
            }
        }
    }

    fn request(&mut self, r: Request) {
        match r {
            Request::Wake => {}
            Request::Status(s) => {
                self.status = Some(s.clone());
                if let Some(c) = &self.conn {
                    let s = in_region(s, &self.regions[c.region], None, &self.outbox);
                    if self.publish_plain(s)
                        && let Some(c) = self.conn.as_mut()
                    {
                        c.status_sent = true;
                    }
                }
            }
            Request::Close {
                bye,
                deadline,
                done,
            } => {
                self.closing = Some(Closing {
                    bye,
                    deadline,
                    done,
                })
            }
        }
    }

    /// Returns true when the session should stop now.
    fn finish_closing(&mut self) -> bool {
        let Some(closing) = &mut self.closing else {
            return false;
        };
        let now = Instant::now();
        let flushed = lock(&self.outbox).is_empty();
        let Some(conn) = self.conn.as_mut() else {
            if now >= closing.deadline {
                let _ = closing.done.send(());
                return true;
            }
            return false;
        };
        if !(flushed || now >= closing.deadline) {
            return false;
        }
        if !conn.bye_sent {
            conn.bye_sent = true;
            if let Some(bye) = closing.bye.take()
                && let Ok(bytes) = Envelope::new(bye).to_bytes()
                && self.transport.publish(bytes).is_ok()
            {
                return false;
            }
        }
        if self.transport.in_flight() > 0 && now < closing.deadline + Duration::from_secs(2) {
            return false;
        }
        self.transport.disconnect();
        self.conn = None;
        crate::metrics::LAUNCHER.link_down();
        let _ = closing.done.send(());
        true
    }

    fn connect(&mut self) {
        let index = self.next_region;
        let region = self.regions[index].clone();
        self.last_connect = Some(Instant::now());
        tracing::debug!(region, "connecting");
        let will = Envelope::new(WorkerMsg::Gone {
            worker_id: self.opts.worker_id.clone(),
            crashed: true,
        });
        let will_id = will.id.clone();
        let will = will.to_bytes().unwrap_or_default();
        match self.transport.connect(index, &will) {
            Ok(()) => {
                let now = Instant::now();
                self.conn = Some(Conn {
                    region: index,
                    cursor: 0,
                    sent_at: BTreeMap::new(),
                    status_sent: false,
                    bye_sent: false,
                });
                self.failures = 0;
                self.rejections = 0;
                self.rejected_by.iter_mut().for_each(|r| *r = false);
                self.primary_healthy_since = None;
                self.next_probe = now + self.opts.probe_every;
                crate::metrics::LAUNCHER.link_up(index);
                tracing::info!(region, "connected");
                // hello, then status, then (in flush) the outbox
                let hello = in_region(self.hello.clone(), &region, Some(&will_id), &self.outbox);
                self.publish_plain(hello);
                if let Some(s) = self.status.clone()
                    && self.publish_plain(in_region(s, &region, None, &self.outbox))
                    && let Some(c) = self.conn.as_mut()
                {
                    c.status_sent = true;
                }
                self.send(SessionEvent::Connected {
                    region,
                    primary: index == 0,
                });
            }
            Err(ConnectError::CertificateRejected(reason)) => self.failed(index, reason, true),
            Err(ConnectError::Failed(reason)) => self.failed(index, reason, false),
        }
    }

    fn failed(&mut self, index: usize, reason: String, rejected: bool) {
        let region = self.regions[index].clone();
        tracing::warn!(region, reason, "cannot connect");
        crate::metrics::LAUNCHER.connect_failures.inc();
        if rejected {
            self.rejected_by[index] = true;
            self.rejections += 1;
            let n = self.regions.len() as u32;
            if self.rejected_by.iter().all(|r| *r) || self.rejections > 2 * n.max(1) {
                self.send(SessionEvent::CertificateRejected { detail: reason });
                // Stay quiet from now on: the worker exits.
                self.next_attempt = Instant::now() + Duration::from_secs(3600);
                self.next_region = index;
                return;
            }
        }
        self.send(SessionEvent::Disconnected { region, reason });
        self.failures += 1;
        self.schedule((index + 1) % self.regions.len());
    }

    fn schedule(&mut self, next: usize) {
        self.next_region = next;
        let base = Duration::from_millis(250);
        let exp = base
            .saturating_mul(1u32 << self.failures.saturating_sub(1).min(16))
            .min(self.opts.backoff_max);
        let delay = if self.failures == 0 {
            Duration::ZERO
        } else {
            jitter(exp)
        };
        let mut at = Instant::now() + delay;
        if let Some(last) = self.last_connect {
            at = at.max(last + self.opts.min_connect_interval);
        }
        self.next_attempt = at;
    }

    /// The transport dropped the connection (the peer may publish the will).
    fn lost(&mut self, reason: String) {
        if let Some(c) = self.conn.take() {
            crate::metrics::LAUNCHER.link_down();
            let region = self.regions[c.region].clone();
            tracing::warn!(region, reason, "connection lost");
            self.send(SessionEvent::Disconnected { region, reason });
            self.failures = 0;
            self.schedule((c.region + 1) % self.regions.len());
        }
    }

    /// Reads inbound commands for up to `tick`.
    fn poll(&mut self, tick: Duration) {
        let deadline = Instant::now() + tick;
        while self.conn.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.transport.next(left.max(Duration::from_millis(1))) {
                Ok(Some(payload)) => self.inbound(&payload),
                Ok(None) => return,
                Err(Lost(reason)) => {
                    self.lost(reason);
                    return;
                }
            }
            if Instant::now() >= deadline {
                return;
            }
        }
    }

    fn inbound(&mut self, payload: &[u8]) {
        let parsed = protocol::parse_command(payload);
        crate::metrics::LAUNCHER.command(match &parsed {
            Ok(c) => c.body.kind(),
            Err(_) => "invalid",
        });
        match parsed {
            Ok(Command {
                body: CommandBody::Ack { ids },
                ..
            }) => {
                let mut ob = lock(&self.outbox);
                if let Err(e) = ob.ack(&ids) {
                    tracing::error!("{e}");
                }
                outbox_metrics(&ob);
                drop(ob);
                if let Some(c) = self.conn.as_mut() {
                    // acked entries no longer need re-sending
                    let ob = lock(&self.outbox);
                    c.sent_at.retain(|seq, _| ob.has_seq(*seq));
                }
            }
            Ok(cmd) => self.send(SessionEvent::Command(cmd)),
            Err(r) => self.send(SessionEvent::Rejected(r)),
        }
    }

    /// Publishes a non-durable message once; true when the transport took it.
    fn publish_plain(&mut self, msg: WorkerMsg) -> bool {
        if self.conn.is_none() {
            return false;
        }
        match Envelope::new(msg).to_bytes() {
            Ok(bytes) => self.transport.publish(bytes).is_ok(),
            Err(e) => {
                tracing::error!("{e}");
                false
            }
        }
    }

    /// Publishes outbox events in order, as far as the transport takes
    /// them; re-sends the unacked ones after `resend_after`. Nothing before
    /// this connection's `status`.
    fn flush(&mut self) {
        let Some(c) = self.conn.as_mut().filter(|c| c.status_sent) else {
            return;
        };
        let now = Instant::now();
        let ob = lock(&self.outbox);
        if let Some(first) = ob.pending().next()
            && c.sent_at
                .get(&first.seq)
                .is_some_and(|t| now.duration_since(*t) > self.opts.resend_after)
            && self.transport.in_flight() == 0
        {
            // The plane has not acked: send everything pending again, in order.
            c.cursor = 0;
        }
        for p in ob.pending_after(c.cursor) {
            if self.transport.publish(p.payload.clone()).is_err() {
                break;
            }
            c.cursor = p.seq;
            c.sent_at.insert(p.seq, now);
        }
    }

    /// While on a secondary: probe the primary; once healthy for
    /// `failback_after`, move back between events.
    fn failback(&mut self) {
        let Some(c) = self.conn.as_ref() else { return };
        if c.region == 0 || self.closing.is_some() {
            self.probe = None;
            return;
        }
        let now = Instant::now();
        if let Some(rx) = &self.probe {
            match rx.try_recv() {
                Ok(ok) => {
                    self.probe = None;
                    if ok {
                        self.primary_healthy_since.get_or_insert(now);
                    } else {
                        self.primary_healthy_since = None;
                    }
                }
                Err(mpsc::TryRecvError::Empty) => {}
                Err(mpsc::TryRecvError::Disconnected) => self.probe = None,
            }
        } else if now >= self.next_probe {
            self.next_probe = now + self.opts.probe_every;
            let (tx, rx) = mpsc::channel();
            let check = self.transport.probe(0);
            let spawned = std::thread::Builder::new()
                .name("liftoff-probe".into())
                .spawn(move || {
                    let _ = tx.send(check());
                });
            if spawned.is_ok() {
                self.probe = Some(rx);
            }
        }
        let healthy_long = self
            .primary_healthy_since
            .is_some_and(|t| now.duration_since(t) >= self.opts.failback_after);
        let quiet = self.transport.in_flight() == 0;
        let spaced = self
            .last_connect
            .is_none_or(|t| now.duration_since(t) >= self.opts.min_connect_interval);
        if healthy_long && quiet && spaced {
            if let Some(c) = self.conn.take() {
                crate::metrics::LAUNCHER.link_down();
                crate::metrics::LAUNCHER.failbacks.inc();
                let region = self.regions[c.region].clone();
                tracing::info!(
                    from = region,
                    "the primary region is healthy again: failing back"
                );
                self.transport.disconnect();
                self.send(SessionEvent::Disconnected {
                    region,
                    reason: "failing back to the primary region".into(),
                });
            }
            self.primary_healthy_since = None;
            self.failures = 0;
            self.schedule(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::outbox::Limits;
    use crate::link::protocol::WorkerState;
    use std::collections::VecDeque;

    /// What the fake transport saw and will answer.
    #[derive(Default)]
    struct Fake {
        /// (region index, the whole message), in order.
        published: Vec<(usize, serde_json::Value)>,
        connects: Vec<usize>,
        /// The id of each connection's will.
        wills: Vec<String>,
        nexts: usize,
        inbound: VecDeque<Vec<u8>>,
        /// The next `next` reports the connection lost.
        lose: bool,
        /// Regions that refuse the certificate.
        refuse: Vec<usize>,
    }

    struct FakeTransport {
        state: Arc<Mutex<Fake>>,
        region: Option<usize>,
    }

    impl Transport for FakeTransport {
        fn regions(&self) -> Vec<String> {
            vec!["east".into(), "west".into()]
        }
        fn connect(&mut self, region: usize, will: &[u8]) -> Result<(), ConnectError> {
            let mut s = self.state.lock().unwrap();
            s.connects.push(region);
            let will: serde_json::Value = serde_json::from_slice(will).unwrap();
            assert_eq!(will["type"], "gone");
            s.wills.push(will["id"].as_str().unwrap().to_string());
            if s.refuse.contains(&region) {
                return Err(ConnectError::CertificateRejected("bad_certificate".into()));
            }
            self.region = Some(region);
            Ok(())
        }
        fn publish(&mut self, payload: Vec<u8>) -> Result<(), PublishError> {
            let region = self.region.ok_or(PublishError::NotConnected)?;
            let v = serde_json::from_slice(&payload).unwrap();
            self.state.lock().unwrap().published.push((region, v));
            Ok(())
        }
        fn in_flight(&self) -> usize {
            0
        }
        fn next(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, Lost> {
            let mut s = self.state.lock().unwrap();
            s.nexts += 1;
            if std::mem::take(&mut s.lose) {
                self.region = None;
                return Err(Lost("test".into()));
            }
            if let Some(p) = s.inbound.pop_front() {
                return Ok(Some(p));
            }
            drop(s);
            std::thread::sleep(timeout.min(Duration::from_millis(5)));
            Ok(None)
        }
        fn disconnect(&mut self) {
            self.region = None;
        }
        fn probe(&self, _region: usize) -> Box<dyn FnOnce() -> bool + Send> {
            Box::new(|| false)
        }
    }

    fn opts() -> SessionOptions {
        let mut o = SessionOptions::new("W1".into());
        o.min_connect_interval = Duration::from_millis(1);
        o.backoff_max = Duration::from_millis(10);
        o
    }

    fn hello() -> WorkerMsg {
        WorkerMsg::Hello {
            worker_id: "W1".into(),
            version: "test".into(),
            region: String::new(),
            slots: 1,
            metadata: Default::default(),
            host: Default::default(),
            sandbox: Default::default(),
            will_id: None,
            transport: String::new(),
        }
    }

    fn status() -> WorkerMsg {
        WorkerMsg::Status {
            worker_id: "W1".into(),
            state: WorkerState::Idle,
            drain: false,
            runs: Vec::new(),
            region: "stale".into(),
            health: Vec::new(),
            last_seq: None,
        }
    }

    /// Polls `cond` on the fake's state (bounded; no fixed sleeps).
    fn wait(state: &Arc<Mutex<Fake>>, what: &str, cond: impl Fn(&Fake) -> bool) {
        let end = Instant::now() + Duration::from_secs(20);
        while !cond(&state.lock().unwrap()) {
            assert!(Instant::now() < end, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn types(f: &Fake, from: usize) -> Vec<String> {
        f.published[from..]
            .iter()
            .map(|(_, v)| match v["type"].as_str().unwrap() {
                "run" => format!("run:{}", v["run_id"].as_str().unwrap()),
                t => t.to_string(),
            })
            .collect()
    }

    #[test]
    fn every_connection_sends_hello_then_status_then_unacked_events() {
        let dir = tempfile::tempdir().unwrap();
        // events a previous launcher process left unacked
        let (mut outbox, _) = Outbox::open(dir.path(), Limits::default()).unwrap();
        outbox
            .push(&mut Envelope::bare_run("R1", RunPhase::Accepted))
            .unwrap();
        outbox
            .push(&mut Envelope::bare_run("R1", RunPhase::Started))
            .unwrap();
        let state = Arc::new(Mutex::new(Fake::default()));
        let transport = FakeTransport {
            state: state.clone(),
            region: None,
        };
        let (session, events) =
            Session::start(opts(), Box::new(transport), outbox, hello()).unwrap();

        // connected, hello out; the session keeps polling but publishes no
        // durable event before it has a status to send
        wait(&state, "hello and several polls", |f| {
            !f.published.is_empty() && f.nexts >= 5
        });
        assert_eq!(types(&state.lock().unwrap(), 0), ["hello"]);
        session.status(status());
        wait(&state, "status and the outbox", |f| f.published.len() >= 4);
        {
            let f = state.lock().unwrap();
            assert_eq!(types(&f, 0), ["hello", "status", "run:R1", "run:R1"]);
            assert_eq!(f.published[0].1["region"], "east");
            assert_eq!(
                f.published[1].1["region"], "east",
                "status names the region"
            );
            assert_eq!(f.published[1].1["last_seq"], 2, "and the newest seq");
            assert_eq!(f.published[0].1["will_id"], f.wills[0].as_str());
            assert_eq!(f.published[2].1["phase"], "accepted");
        }

        // the connection is lost: the next region, and the same order again
        state.lock().unwrap().lose = true;
        wait(&state, "a reconnect and its messages", |f| {
            f.published.len() >= 8
        });
        {
            let f = state.lock().unwrap();
            assert_eq!(f.connects, [0, 1]);
            assert_eq!(types(&f, 4), ["hello", "status", "run:R1", "run:R1"]);
            assert!(f.published[4..].iter().all(|(r, _)| *r == 1));
            assert_eq!(f.published[5].1["region"], "west");
            // re-sends keep their ids
            assert_eq!(f.published[2].1["id"], f.published[6].1["id"]);
        }
        let mut got = Vec::new();
        while let Ok(e) = events.try_recv() {
            got.push(e);
        }
        assert!(
            matches!(&got[0], SessionEvent::Connected { region, primary: true } if region == "east")
        );
        assert!(got.iter().any(
            |e| matches!(e, SessionEvent::Connected { region, primary: false } if region == "west")
        ));

        // the plane acks both: nothing is left to re-send
        let ids: Vec<String> = {
            let f = state.lock().unwrap();
            f.published[6..8]
                .iter()
                .map(|(_, v)| v["id"].as_str().unwrap().to_string())
                .collect()
        };
        let ack = serde_json::json!({"v": 1, "type": "ack", "id": "A1", "ids": ids});
        state
            .lock()
            .unwrap()
            .inbound
            .push_back(ack.to_string().into_bytes());
        let end = Instant::now() + Duration::from_secs(20);
        while session.unacked() > 0 {
            assert!(Instant::now() < end, "the ack was not applied");
            std::thread::sleep(Duration::from_millis(2));
        }
        session.close(None, Instant::now() + Duration::from_secs(1));
    }

    #[test]
    fn every_region_refusing_the_certificate_is_a_pool_reset() {
        let dir = tempfile::tempdir().unwrap();
        let (outbox, _) = Outbox::open(dir.path(), Limits::default()).unwrap();
        let state = Arc::new(Mutex::new(Fake {
            refuse: vec![0, 1],
            ..Fake::default()
        }));
        let transport = FakeTransport {
            state: state.clone(),
            region: None,
        };
        let (_session, events) =
            Session::start(opts(), Box::new(transport), outbox, hello()).unwrap();
        let mut seen = Vec::new();
        loop {
            match events.recv_blocking().unwrap() {
                SessionEvent::CertificateRejected { detail } => {
                    assert!(detail.contains("bad_certificate"));
                    break;
                }
                SessionEvent::Disconnected { region, .. } => seen.push(region),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, ["east"], "tried in the token's order");
        assert_eq!(state.lock().unwrap().connects, [0, 1]);
    }

    #[test]
    fn pending_runs_name_each_unacked_run_event() {
        let dir = tempfile::tempdir().unwrap();
        let (mut outbox, _) = Outbox::open(dir.path(), Limits::default()).unwrap();
        let mut refused = Envelope::new(WorkerMsg::Run {
            run_id: "R2".into(),
            phase: RunPhase::Rejected,
            exit_code: None,
            reason: Some("drained".into()),
            command_id: Some("C2".into()),
            duration_ms: None,
            steps: Vec::new(),
        });
        outbox
            .push(&mut Envelope::bare_run("R1", RunPhase::Accepted))
            .unwrap();
        outbox.push(&mut refused).unwrap();
        let state = Arc::new(Mutex::new(Fake {
            refuse: vec![0, 1],
            ..Fake::default()
        }));
        let transport = FakeTransport {
            state,
            region: None,
        };
        let (session, _events) =
            Session::start(opts(), Box::new(transport), outbox, hello()).unwrap();
        let p = session.pending_runs();
        assert_eq!(p.len(), 2);
        assert_eq!(
            (p[0].run_id.as_str(), p[0].phase),
            ("R1", RunPhase::Accepted)
        );
        assert_eq!(p[1].phase, RunPhase::Rejected);
        assert_eq!(p[1].command_id.as_deref(), Some("C2"));
    }
}
