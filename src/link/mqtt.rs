//! The MQTT link: rumqttc's sync `Client`/`Connection` on one dedicated
//! thread, bridged to the (smol) worker with channels; TLS through our own
//! rustls `ClientConfig`; regional failover and fail-back; delivery of the
//! durable outbox.
//!
//! Call order: build [`LinkOptions`], then [`Link::start`] with the opened
//! [`Outbox`] and the `hello` template; read [`LinkEvent`]s from the returned
//! receiver; call [`Link::emit`] for events and [`Link::status`] for state;
//! end with [`Link::close`] (flush, `bye`, clean DISCONNECT) or drop the
//! process (the broker publishes the last will, `gone`).
//!
//! How the rumqttc traps are handled:
//! - a new `Client`/`Connection` is built for every connection attempt, so
//!   no state (pending packets, packet-id collisions) survives a reconnect;
//!   what must survive is in the outbox, which is re-sent after every CONNACK
//!   (session_present is always 0: clean sessions);
//! - no progress (publishes not acknowledged by the broker, or nothing at all
//!   received, for one keepalive) is treated as a dead connection and the
//!   client is rebuilt: this also breaks the collision livelock (#1014);
//!   besides, at most [`LinkOptions::window`] (32) publishes are in flight,
//!   below rumqttc's 100 packet ids, so ids do not wrap onto unacked ones;
//! - rumqttc pings every keepalive/2, so a healthy connection always hears
//!   from the broker within one keepalive;
//! - rumqttc has no backoff: attempts here are spaced by jittered
//!   exponential backoff and never closer than 1 s (AWS IoT's CONNECT limit);
//! - the 10 KiB default packet size is raised (see [`MAX_PACKET`]).

use std::collections::BTreeMap;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rumqttc::{
    Client, Connection, ConnectionError, Event, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use rustls::ClientConfig;

use super::outbox::Outbox;
use super::probe::{self, ProbeErrorKind};
use super::protocol::{self, Command, CommandBody, Envelope, Rejection, Topics, WorkerMsg};
use crate::config::Broker;

/// Largest MQTT packet rumqttc will send or accept: room for a
/// [`protocol::MAX_PAYLOAD`] payload plus topic and headers, and for brokers
/// whose own limit is a little above the payload limit. Payloads over
/// [`protocol::MAX_PAYLOAD`] are refused by [`protocol::parse_command`].
pub const MAX_PACKET: usize = 256 * 1024;

/// Tuning of the link. [`LinkOptions::new`] gives production defaults.
#[derive(Clone)]
pub struct LinkOptions {
    /// Ordered, primary first; one TLS configuration per broker (ALPN).
    pub brokers: Vec<(Broker, Arc<ClientConfig>)>,
    pub client_id: String,
    pub worker_id: String,
    pub topics: Topics,
    /// A dead connection is detected within this (≥ 2 s).
    pub keepalive: Duration,
    /// While on a secondary, probe the primary this often …
    pub probe_every: Duration,
    /// … and fail back once it has been healthy this long.
    pub failback_after: Duration,
    /// Re-send events the plane has not acked after this long.
    pub resend_after: Duration,
    /// Never two CONNECTs closer than this.
    pub min_connect_interval: Duration,
    /// Backoff ceiling.
    pub backoff_max: Duration,
    /// Most QoS 1 publishes in flight.
    pub window: usize,
}

impl LinkOptions {
    pub fn new(
        brokers: Vec<(Broker, Arc<ClientConfig>)>,
        client_id: String,
        worker_id: String,
        topics: Topics,
    ) -> LinkOptions {
        LinkOptions {
            brokers,
            client_id,
            worker_id,
            topics,
            keepalive: Duration::from_secs(30),
            probe_every: Duration::from_secs(15),
            failback_after: Duration::from_secs(120),
            resend_after: Duration::from_secs(30),
            min_connect_interval: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
            window: 32,
        }
    }
}

/// What the link tells the worker.
#[derive(Debug, Clone)]
pub enum LinkEvent {
    /// Connected (after CONNACK and SUBSCRIBE were sent) to a region.
    Connected { region: String, primary: bool },
    /// The connection to a region was lost or could not be made.
    Disconnected { region: String, reason: String },
    /// A valid command from the plane (acks are handled by the link).
    Command(Command),
    /// An inbound payload was refused; the worker reports it.
    Rejected(Rejection),
    /// Every broker refused this pool's certificate: the pool was reset.
    CertificateRejected { detail: String },
    /// The link stopped (after [`Link::close`]).
    Closed,
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

/// The worker's handle on the link thread.
pub struct Link {
    outbox: Arc<Mutex<Outbox>>,
    tx: Sender<Request>,
    thread: Option<JoinHandle<()>>,
}

fn lock(outbox: &Mutex<Outbox>) -> MutexGuard<'_, Outbox> {
    outbox.lock().unwrap_or_else(|p| p.into_inner())
}

impl Link {
    /// Starts the link thread. `hello` is published first on every
    /// connection (its `region` filled in); `events` receives [`LinkEvent`]s.
    pub fn start(
        opts: LinkOptions,
        outbox: Outbox,
        hello: WorkerMsg,
        events: smol::channel::Sender<LinkEvent>,
    ) -> Result<Link, String> {
        if opts.brokers.is_empty() {
            return Err("the token names no broker".into());
        }
        let outbox = Arc::new(Mutex::new(outbox));
        let (tx, rx) = mpsc::channel();
        let state = LinkThread::new(opts, outbox.clone(), hello, events, rx);
        let thread = std::thread::Builder::new()
            .name("liftoff-link".into())
            .spawn(move || state.run())
            .map_err(|e| format!("cannot start the link thread: {e}"))?;
        Ok(Link {
            outbox,
            tx,
            thread: Some(thread),
        })
    }

    /// Sends a worker message. Durable messages (see
    /// [`WorkerMsg::durable`]) are written to the outbox (fsync'd) before
    /// this returns, and delivered until acked; others are published once
    /// if connected. Returns the message id.
    pub fn emit(&self, msg: WorkerMsg) -> Result<String, String> {
        let mut env = Envelope::new(msg);
        if env.msg.durable() {
            lock(&self.outbox).push(&mut env)?;
            let _ = self.tx.send(Request::Wake);
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
    /// also re-published after every reconnect.
    pub fn status(&self, status: WorkerMsg) {
        let _ = self.tx.send(Request::Status(status));
    }

    /// Run ids named by events still waiting for the plane's ack (after a
    /// restart: runs this worker already answered for).
    pub fn pending_run_ids(&self) -> Vec<String> {
        lock(&self.outbox)
            .pending()
            .filter_map(|p| {
                let v: serde_json::Value = serde_json::from_slice(&p.payload).ok()?;
                v.get("run_id")?.as_str().map(str::to_string)
            })
            .collect()
    }

    /// Events not yet acked by the plane.
    pub fn unacked(&self) -> usize {
        lock(&self.outbox).len()
    }

    /// Flushes the outbox (until acked or `deadline`), publishes `bye`,
    /// disconnects cleanly (no last will) and stops the thread.
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

/// One live connection.
struct Conn {
    client: Client,
    connection: Connection,
    index: usize,
    connected: bool,
    last_inbound: Instant,
    /// Publishes handed to rumqttc and not yet acked by the broker.
    in_flight: usize,
    /// When the broker last made progress on our publishes.
    progress_at: Instant,
    /// Highest outbox seq published on this connection.
    cursor: u64,
    /// When each published outbox seq was last sent.
    sent_at: BTreeMap<u64, Instant>,
    bye_sent: bool,
}

struct Closing {
    bye: Option<WorkerMsg>,
    deadline: Instant,
    done: Sender<()>,
}

struct LinkThread {
    opts: LinkOptions,
    outbox: Arc<Mutex<Outbox>>,
    hello: WorkerMsg,
    status: Option<WorkerMsg>,
    events: smol::channel::Sender<LinkEvent>,
    rx: Receiver<Request>,
    conn: Option<Conn>,
    /// Broker to try next.
    next_index: usize,
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

impl LinkThread {
    fn new(
        opts: LinkOptions,
        outbox: Arc<Mutex<Outbox>>,
        hello: WorkerMsg,
        events: smol::channel::Sender<LinkEvent>,
        rx: Receiver<Request>,
    ) -> LinkThread {
        let n = opts.brokers.len();
        let now = Instant::now();
        LinkThread {
            opts,
            outbox,
            hello,
            status: None,
            events,
            rx,
            conn: None,
            next_index: 0,
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

    fn send(&self, e: LinkEvent) {
        let _ = self.events.send_blocking(e);
    }

    fn region(&self, i: usize) -> String {
        self.opts.brokers[i].0.region.clone()
    }

    fn run(mut self) {
        loop {
            // Requests from the worker.
            let busy =
                self.conn.as_ref().is_some_and(|c| c.in_flight > 0) || self.closing.is_some();
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
                self.send(LinkEvent::Closed);
                return;
            }
            if self.conn.is_none() && Instant::now() >= self.next_attempt {
                self.connect();
            }
            if self.conn.is_some() {
                self.flush();
                if self.poll(tick).is_err() {
                    return;
                }
                self.check_health();
                self.failback();
            }
        }
    }

    fn request(&mut self, r: Request) {
        match r {
            Request::Wake => {}
            Request::Status(s) => {
                self.status = Some(s.clone());
                self.publish_plain(s);
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

    /// Returns true when the link should stop now.
    fn finish_closing(&mut self) -> bool {
        let Some(closing) = &mut self.closing else {
            return false;
        };
        let now = Instant::now();
        let flushed = lock(&self.outbox).is_empty();
        let Some(conn) = self.conn.as_mut().filter(|c| c.connected) else {
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
                && conn
                    .client
                    .try_publish(&self.opts.topics.outbound, QoS::AtLeastOnce, false, bytes)
                    .is_ok()
            {
                conn.in_flight += 1;
                return false;
            }
        }
        if conn.in_flight > 0 && now < closing.deadline + Duration::from_secs(2) {
            return false;
        }
        let _ = conn.client.try_disconnect();
        // Let rumqttc write the DISCONNECT.
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            match conn.connection.recv_timeout(Duration::from_millis(100)) {
                Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
                Ok(Ok(_)) => {}
                _ => break,
            }
        }
        let _ = closing.done.send(());
        true
    }

    fn mqtt_options(&self, index: usize) -> MqttOptions {
        let (broker, tls) = &self.opts.brokers[index];
        let mut o = MqttOptions::new(&self.opts.client_id, &broker.host, broker.port);
        let half = (self.opts.keepalive / 2).max(Duration::from_secs(1));
        o.set_keep_alive(Duration::from_secs(half.as_secs().max(1)));
        o.set_clean_session(true);
        o.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        o.set_inflight(100);
        o.set_request_channel_capacity(self.opts.window + 16);
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            tls.clone(),
        )));
        let will = Envelope::new(WorkerMsg::Gone {
            worker_id: self.opts.worker_id.clone(),
            crashed: true,
        });
        if let Ok(bytes) = will.to_bytes() {
            o.set_last_will(LastWill::new(
                &self.opts.topics.outbound,
                bytes,
                QoS::AtLeastOnce,
                false,
            ));
        }
        o
    }

    fn connect(&mut self) {
        let index = self.next_index;
        let region = self.region(index);
        let (client, mut connection) = Client::new(self.mqtt_options(index), self.opts.window + 16);
        let mut net = connection.eventloop.network_options();
        net.set_connection_timeout(self.opts.keepalive.as_secs().clamp(2, 10));
        connection.eventloop.set_network_options(net);
        self.last_connect = Some(Instant::now());
        tracing::debug!(region, "connecting");
        // The first poll performs TCP, TLS and CONNECT/CONNACK (bounded by the
        // connection timeout); it must not be cut short.
        match connection.recv() {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                let now = Instant::now();
                if let Err(e) = client.try_subscribe(&self.opts.topics.inbound, QoS::AtLeastOnce) {
                    self.lost(format!("cannot subscribe: {e}"));
                    return;
                }
                self.conn = Some(Conn {
                    client,
                    connection,
                    index,
                    connected: true,
                    last_inbound: now,
                    in_flight: 0,
                    progress_at: now,
                    cursor: 0,
                    sent_at: BTreeMap::new(),
                    bye_sent: false,
                });
                self.failures = 0;
                self.rejections = 0;
                self.rejected_by.iter_mut().for_each(|r| *r = false);
                self.primary_healthy_since = None;
                self.next_probe = now + self.opts.probe_every;
                tracing::info!(region, "connected");
                let mut hello = self.hello.clone();
                if let WorkerMsg::Hello { region: r, .. } = &mut hello {
                    *r = region.clone();
                }
                self.publish_plain(hello);
                if let Some(s) = self.status.clone() {
                    self.publish_plain(s);
                }
                self.send(LinkEvent::Connected {
                    region,
                    primary: index == 0,
                });
            }
            Ok(Ok(other)) => self.failed(index, format!("expected CONNACK, got {other:?}"), false),
            Ok(Err(e)) => {
                let (reason, rejected) = describe(&e);
                self.failed(index, reason, rejected);
            }
            Err(_) => self.failed(index, "the MQTT client stopped".into(), false),
        }
    }

    fn failed(&mut self, index: usize, reason: String, rejected: bool) {
        let region = self.region(index);
        tracing::warn!(region, reason, "cannot connect");
        if rejected {
            self.rejected_by[index] = true;
            self.rejections += 1;
            let n = self.opts.brokers.len() as u32;
            if self.rejected_by.iter().all(|r| *r) || self.rejections > 2 * n.max(1) {
                self.send(LinkEvent::CertificateRejected { detail: reason });
                // Stay quiet from now on: the worker exits.
                self.next_attempt = Instant::now() + Duration::from_secs(3600);
                self.next_index = index;
                return;
            }
        }
        self.send(LinkEvent::Disconnected {
            region,
            reason: reason.clone(),
        });
        self.failures += 1;
        self.schedule((index + 1) % self.opts.brokers.len());
    }

    fn schedule(&mut self, next: usize) {
        self.next_index = next;
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

    /// Drops the connection (no DISCONNECT: the broker may send the will).
    fn lost(&mut self, reason: String) {
        if let Some(c) = self.conn.take() {
            let region = self.region(c.index);
            tracing::warn!(region, reason, "connection lost");
            self.send(LinkEvent::Disconnected {
                region,
                reason: reason.clone(),
            });
            self.failures = 0;
            self.schedule((c.index + 1) % self.opts.brokers.len());
        }
    }

    fn poll(&mut self, tick: Duration) -> Result<(), ()> {
        let deadline = Instant::now() + tick;
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Ok(());
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let ev = match conn
                .connection
                .recv_timeout(left.max(Duration::from_millis(1)))
            {
                Ok(Ok(ev)) => ev,
                Ok(Err(e)) => {
                    let (reason, _) = describe(&e);
                    self.lost(reason);
                    return Ok(());
                }
                Err(rumqttc::RecvTimeoutError::Timeout) => return Ok(()),
                Err(rumqttc::RecvTimeoutError::Disconnected) => {
                    self.lost("the MQTT client stopped".into());
                    return Ok(());
                }
            };
            let now = Instant::now();
            match ev {
                Event::Incoming(p) => {
                    conn.last_inbound = now;
                    match p {
                        Packet::PubAck(_) => {
                            conn.in_flight = conn.in_flight.saturating_sub(1);
                            conn.progress_at = now;
                        }
                        Packet::SubAck(ack)
                            if ack
                                .return_codes
                                .iter()
                                .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) =>
                        {
                            let topic = self.opts.topics.inbound.clone();
                            self.lost(format!(
                                "the broker refused the subscription to {topic}: check the broker's policy for this pool's certificate"
                            ));
                            return Ok(());
                        }
                        Packet::Publish(p) if p.topic == self.opts.topics.inbound => {
                            self.inbound(&p.payload);
                        }
                        _ => {}
                    }
                }
                Event::Outgoing(_) => {}
            }
            if Instant::now() >= deadline {
                return Ok(());
            }
        }
    }

    fn inbound(&mut self, payload: &[u8]) {
        match protocol::parse_command(payload) {
            Ok(Command {
                body: CommandBody::Ack { ids },
                ..
            }) => {
                if let Err(e) = lock(&self.outbox).ack(&ids) {
                    tracing::error!("{e}");
                }
                if let Some(c) = self.conn.as_mut() {
                    // acked entries no longer need re-sending
                    let ob = lock(&self.outbox);
                    c.sent_at.retain(|seq, _| ob.has_seq(*seq));
                }
            }
            Ok(cmd) => self.send(LinkEvent::Command(cmd)),
            Err(r) => self.send(LinkEvent::Rejected(r)),
        }
    }

    fn check_health(&mut self) {
        let Some(c) = self.conn.as_ref() else { return };
        let now = Instant::now();
        let k = self.opts.keepalive;
        if now.duration_since(c.last_inbound) > k {
            self.lost(format!(
                "nothing received from the broker for {} s (keepalive)",
                k.as_secs()
            ));
        } else if c.in_flight > 0 && now.duration_since(c.progress_at) > k {
            self.lost(format!(
                "the broker acknowledged none of {} publishes for {} s; rebuilding the client",
                c.in_flight,
                k.as_secs()
            ));
        }
    }

    fn publish_plain(&mut self, msg: WorkerMsg) {
        let Some(c) = self.conn.as_mut().filter(|c| c.connected) else {
            return;
        };
        match Envelope::new(msg).to_bytes() {
            Ok(bytes) => {
                if c.client
                    .try_publish(&self.opts.topics.outbound, QoS::AtLeastOnce, false, bytes)
                    .is_ok()
                {
                    if c.in_flight == 0 {
                        c.progress_at = Instant::now();
                    }
                    c.in_flight += 1;
                }
            }
            Err(e) => tracing::error!("{e}"),
        }
    }

    /// Publishes outbox events in order, within the window; re-sends the
    /// unacked ones after `resend_after`.
    fn flush(&mut self) {
        let Some(c) = self.conn.as_mut().filter(|c| c.connected) else {
            return;
        };
        let now = Instant::now();
        let ob = lock(&self.outbox);
        if let Some(first) = ob.pending().next()
            && c.sent_at
                .get(&first.seq)
                .is_some_and(|t| now.duration_since(*t) > self.opts.resend_after)
            && c.in_flight == 0
        {
            // The plane has not acked: send everything pending again, in order.
            c.cursor = 0;
        }
        for p in ob.pending_after(c.cursor) {
            if c.in_flight >= self.opts.window {
                break;
            }
            if c.client
                .try_publish(
                    &self.opts.topics.outbound,
                    QoS::AtLeastOnce,
                    false,
                    p.payload.clone(),
                )
                .is_err()
            {
                break;
            }
            if c.in_flight == 0 {
                c.progress_at = now;
            }
            c.in_flight += 1;
            c.cursor = p.seq;
            c.sent_at.insert(p.seq, now);
        }
    }

    /// While on a secondary: probe the primary; once healthy for
    /// `failback_after`, move back between events.
    fn failback(&mut self) {
        let Some(c) = self.conn.as_ref() else { return };
        if c.index == 0 || self.closing.is_some() {
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
            let (broker, tls) = self.opts.brokers[0].clone();
            let id = format!("{}-probe", self.opts.client_id);
            let id = if id.len() > protocol::MAX_CLIENT_ID {
                protocol::ulid()
            } else {
                id
            };
            let timeout = self.opts.keepalive.min(Duration::from_secs(10));
            let spawned = std::thread::Builder::new()
                .name("liftoff-probe".into())
                .spawn(move || {
                    let ok = probe::probe(&broker, tls, &id, timeout).is_ok();
                    let _ = tx.send(ok);
                });
            if spawned.is_ok() {
                self.probe = Some(rx);
            }
        }
        let healthy_long = self
            .primary_healthy_since
            .is_some_and(|t| now.duration_since(t) >= self.opts.failback_after);
        let quiet = self.conn.as_ref().is_some_and(|c| c.in_flight == 0);
        let spaced = self
            .last_connect
            .is_none_or(|t| now.duration_since(t) >= self.opts.min_connect_interval);
        if healthy_long && quiet && spaced {
            if let Some(mut c) = self.conn.take() {
                let region = self.region(c.index);
                tracing::info!(
                    from = region,
                    "the primary region is healthy again: failing back"
                );
                let _ = c.client.try_disconnect();
                let end = Instant::now() + Duration::from_millis(500);
                while Instant::now() < end {
                    match c.connection.recv_timeout(Duration::from_millis(50)) {
                        Ok(Ok(Event::Outgoing(Outgoing::Disconnect))) => break,
                        Ok(Ok(_)) => {}
                        _ => break,
                    }
                }
                self.send(LinkEvent::Disconnected {
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

/// A short reason and whether the broker refused our certificate.
fn describe(e: &ConnectionError) -> (String, bool) {
    let kind = match e {
        ConnectionError::ConnectionRefused(
            rumqttc::ConnectReturnCode::NotAuthorized
            | rumqttc::ConnectReturnCode::BadUserNamePassword,
        ) => Some(ProbeErrorKind::CertificateRejected),
        _ => {
            // rustls errors arrive wrapped in I/O, state or TLS errors: walk
            // the chain.
            let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
            let mut found = None;
            while let Some(err) = cur {
                if let Some(io) = err.downcast_ref::<std::io::Error>() {
                    found = Some(probe::classify_io(io));
                    break;
                }
                if let Some(t) = err.downcast_ref::<rustls::Error>() {
                    found = Some(probe::classify_tls(t));
                    break;
                }
                cur = err.source();
            }
            found
        }
    };
    let text = e.to_string();
    match kind {
        Some(ProbeErrorKind::CertificateRejected) => (
            format!("the broker refused this pool's certificate ({text})"),
            true,
        ),
        Some(ProbeErrorKind::TlsVerification) => (
            format!(
                "the broker's certificate is not trusted ({text}): check the token's CA and ADDITIONAL_ROOT_CAS"
            ),
            false,
        ),
        _ => (text, false),
    }
}
