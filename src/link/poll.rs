//! The HTTPS long-poll transport (docs/protocol.md, "The HTTPS long-poll
//! binding"): the session's [`Transport`] over plain HTTPS requests with
//! mutual TLS, on a ureq agent built by [`crate::http::mtls_agent`] (one TLS
//! configuration, connections reused, `HTTPS_PROXY`/`NO_PROXY` honoured by a
//! CONNECT tunnel with TLS end to end).
//!
//! Call order: [`PollSettings::from_config`], [`PollTransport::new`], then
//! hand it to [`super::session::Session::start`], which calls the
//! [`Transport`] methods from its own thread:
//! - `connect` = `POST …/session` with the will (a refusal of the
//!   certificate or `401`/`403` is [`ConnectError::CertificateRejected`]),
//!   a ping that opens the second connection (both TLS handshakes on the
//!   session's thread), then one thread for the connection, the *poller*
//!   (`GET …/commands`, held by the plane, commands handed to `next` in
//!   order, the cursor advanced past them);
//! - `publish` queues (never blocks); `in_flight` counts what is queued
//!   until its batch is answered `2xx`;
//! - `next` first sends what is queued (`POST …/messages`, one batch at a
//!   time, in order, each bounded by the request timeout), then waits for a
//!   command, for the poller to report the connection [`Lost`] (failed
//!   request, bad answer, timeout), or for the session's [`Waker`]
//!   (something to send: no idle tick delays it);
//! - `disconnect` lets the last batch (`bye`) go, then `DELETE …/session`.
//!
//! Every request of a connection checks one stop flag, so an old
//! connection's threads never touch a newer one: a poll still held when its
//! connection ends is left to finish on its own (the plane answers it with
//! no commands when the next poll arrives) and its answer is dropped without
//! advancing the cursor, so the plane answers those commands again.
//!
//! Moved endpoints (`307`/`308` with a `Location` ending in the request's
//! path) change the region's base URL for the life of the process; more
//! than [`MAX_MOVES`] in a row is a redirect loop. `Retry-After` on `429`/`503`
//! keeps the region closed for that long (at most a minute). An empty
//! answer to a poll that came back within a second is followed by a pause
//! that makes it a second, so a plane that does not hold polls cannot make
//! the worker spin.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ureq::Agent;

use super::probe::{self, ProbeErrorKind};
use super::session::{ConnectError, Lost, PublishError, Transport, Waker};
use crate::config::{Config, Endpoint};
use crate::identity::Identity;

/// Most consecutive moved-endpoint answers followed for one request.
pub const MAX_MOVES: usize = 3;
/// Largest answer body read (docs/protocol.md: 8 MiB).
pub const MAX_ANSWER: u64 = 8 * 1024 * 1024;
/// Most messages in one `POST …/messages`.
pub const MAX_BATCH: usize = 32;
/// Longest `next_poll_ms` or `Retry-After` honoured.
pub const MAX_HINT: Duration = Duration::from_secs(60);
/// A poll answer that comes back sooner than this with no command is padded
/// to it.
const MIN_POLL_SPACING: Duration = Duration::from_secs(1);

/// Why the long-poll transport cannot be set up, or a poll's answer was
/// refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollError {
    /// The configuration gives no long-poll transport: no token, no
    /// endpoint, an id that cannot go into a URL.
    Config(String),
    /// The mTLS agent could not be built (the token's CA, the worker's key,
    /// `ADDITIONAL_ROOT_CAS`, the proxy).
    Agent(String),
    /// The plane's answer to a poll is not what the protocol says.
    Answer(String),
}

impl std::fmt::Display for PollError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollError::Config(m) | PollError::Agent(m) | PollError::Answer(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for PollError {}

fn bad_answer(m: impl Into<String>) -> PollError {
    PollError::Answer(m.into())
}

/// What the long-poll transport needs.
#[derive(Clone)]
pub struct PollSettings {
    /// Ordered, primary first.
    pub endpoints: Vec<Endpoint>,
    /// The mTLS agent ([`crate::http::mtls_agent`]).
    pub agent: Agent,
    pub pool_id: String,
    pub worker_id: String,
    /// The most the plane may hold a poll (`LIFTOFF_POLL_WAIT`, 1–50 s).
    pub wait: Duration,
    /// `session`, `messages`, `DELETE` and `ping` must be answered within
    /// this; a poll within `wait` plus this.
    pub request_timeout: Duration,
    /// Most messages queued or in flight.
    pub window: usize,
}

impl PollSettings {
    /// The endpoints (`SPACELIFT_WORKER_COMMS_URL`, else the token's), the
    /// mTLS agent, the worker's ids and `LIFTOFF_POLL_WAIT`.
    pub fn from_config(
        config: &Config,
        identity: &Identity,
        worker_id: &str,
    ) -> Result<PollSettings, PollError> {
        let token = config
            .token
            .as_ref()
            .ok_or_else(|| PollError::Config("SPACELIFT_TOKEN is not set".into()))?;
        let endpoints = endpoints(config);
        if endpoints.is_empty() {
            return Err(PollError::Config("SPACELIFT_WORKER_COMMS_PROTOCOL is poll, but the token names no endpoint and SPACELIFT_WORKER_COMMS_URL is not set: generate a new token or set SPACELIFT_WORKER_COMMS_URL=https://…".into()));
        }
        let request_timeout = Duration::from_secs(10);
        let agent = crate::http::mtls_agent(
            &config.proxies,
            &token.ca,
            &config.additional_root_cas,
            identity,
            crate::http::Timeouts {
                connect: request_timeout,
                call: config.poll_wait + request_timeout,
            },
        )
        .map_err(PollError::Agent)?;
        check_id("pool_id", &token.pool_id)?;
        check_id("worker id", worker_id)?;
        Ok(PollSettings {
            endpoints,
            agent,
            pool_id: token.pool_id.clone(),
            worker_id: worker_id.to_string(),
            wait: config.poll_wait,
            request_timeout,
            window: 64,
        })
    }

    fn worker_path(&self, what: &str) -> String {
        format!(
            "/v1/pools/{}/workers/{}/{what}",
            self.pool_id, self.worker_id
        )
    }
}

/// The endpoints a worker uses: `SPACELIFT_WORKER_COMMS_URL` (named after the
/// token's first endpoint's region, else `default`), else the token's.
pub fn endpoints(config: &Config) -> Vec<Endpoint> {
    let token_endpoints = config
        .token
        .as_ref()
        .map(|t| t.endpoints.clone())
        .unwrap_or_default();
    match &config.comms_url {
        Some(url) => vec![Endpoint {
            region: token_endpoints
                .first()
                .map_or_else(|| "default".to_string(), |e| e.region.clone()),
            url: url.clone(),
        }],
        None => token_endpoints,
    }
}

/// Ids go into URL paths: only the protocol's id characters.
fn check_id(what: &str, id: &str) -> Result<(), PollError> {
    if id.is_empty()
        || id.len() > 128
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(PollError::Config(format!(
            "the {what} {id:?} cannot be used in a long-poll URL: expected 1-128 of A-Z a-z 0-9 - _"
        )));
    }
    Ok(())
}

/// A cursor as the binding allows it: 1–128 of `A-Z a-z 0-9 . _ ~ -`.
pub fn valid_cursor(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 128
        && c.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// Why a request did not get a `2xx`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    pub kind: ProbeErrorKind,
    pub detail: String,
}

impl RequestError {
    fn new(kind: ProbeErrorKind, detail: impl Into<String>) -> RequestError {
        RequestError {
            kind,
            detail: detail.into(),
        }
    }
}

impl std::fmt::Display for RequestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} error: {}", self.kind.name(), self.detail)
    }
}

/// Sorts a ureq error into the layer that failed: DNS, TCP, proxy, TLS
/// (our trust, or the peer's refusal of our certificate), timeout.
pub fn classify(e: &ureq::Error) -> ProbeErrorKind {
    match e {
        ureq::Error::HostNotFound => ProbeErrorKind::Dns,
        ureq::Error::ConnectionFailed => ProbeErrorKind::Tcp,
        ureq::Error::ConnectProxyFailed(_) | ureq::Error::InvalidProxyUrl => ProbeErrorKind::Proxy,
        ureq::Error::Timeout(_) => ProbeErrorKind::Timeout,
        ureq::Error::Rustls(t) => probe::classify_tls(t),
        ureq::Error::Tls(_) => ProbeErrorKind::Tls,
        ureq::Error::Io(io) => probe::classify_io(io),
        _ => ProbeErrorKind::Http,
    }
}

fn describe(e: &ureq::Error) -> RequestError {
    let kind = classify(e);
    let text = crate::http::redact_urls(&e.to_string()).into_owned();
    let detail = match kind {
        ProbeErrorKind::CertificateRejected => {
            format!("the control plane refused this pool's certificate ({text})")
        }
        ProbeErrorKind::TlsVerification => format!(
            "the control plane's certificate is not trusted ({text}): check the token's CA and ADDITIONAL_ROOT_CAS"
        ),
        ProbeErrorKind::Proxy => format!("{text}: check HTTPS_PROXY and NO_PROXY"),
        _ => text,
    };
    RequestError::new(kind, detail)
}

/// The shared HTTP side: the agent, each region's current base URL (moved
/// endpoints) and when each region may be asked again (`Retry-After`).
struct Client {
    settings: PollSettings,
    bases: Mutex<Vec<String>>,
    closed_until: Mutex<Vec<Option<Instant>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

enum Method<'a> {
    Get,
    Delete,
    Post(&'a [u8]),
}

impl Client {
    fn new(settings: PollSettings) -> Client {
        let bases = settings.endpoints.iter().map(|e| e.url.clone()).collect();
        let n = settings.endpoints.len();
        Client {
            settings,
            bases: Mutex::new(bases),
            closed_until: Mutex::new(vec![None; n]),
        }
    }

    fn base(&self, region: usize) -> String {
        lock(&self.bases).get(region).cloned().unwrap_or_default()
    }

    /// One request to `region`: `path` (with its query) under the region's
    /// base. Follows moved endpoints; `Ok(body)` for a `2xx` only.
    fn request(
        &self,
        region: usize,
        method: Method<'_>,
        path: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>, RequestError> {
        let path_only = path.split('?').next().unwrap_or(path);
        let mut answer = self.call(region, method, path, timeout)?;
        answer
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => RequestError::new(
                    ProbeErrorKind::Http,
                    format!("the answer to {path_only} is over {MAX_ANSWER} bytes"),
                ),
                e => describe(&e),
            })
    }

    /// [`Client::request`] up to a `2xx` answer whose body is still unread:
    /// its connection stays out of the pool until the body is read or the
    /// answer dropped.
    fn call(
        &self,
        region: usize,
        method: Method<'_>,
        path: &str,
        timeout: Duration,
    ) -> Result<ureq::http::Response<ureq::Body>, RequestError> {
        let path_only = path.split('?').next().unwrap_or(path);
        for _ in 0..=MAX_MOVES {
            let base = self.base(region);
            let url = format!("{base}{path}");
            let agent = &self.settings.agent;
            let result = match method {
                Method::Get => agent
                    .get(&url)
                    .config()
                    .timeout_global(Some(timeout))
                    .build()
                    .call(),
                Method::Delete => agent
                    .delete(&url)
                    .config()
                    .timeout_global(Some(timeout))
                    .build()
                    .call(),
                Method::Post(body) => agent
                    .post(&url)
                    .config()
                    .timeout_global(Some(timeout))
                    .build()
                    .header("content-type", "application/json")
                    .send(body),
            };
            let mut answer = result.map_err(|e| describe(&e))?;
            let status = answer.status().as_u16();
            let header = |name: &str| {
                answer
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            match status {
                200..=299 => return Ok(answer),
                307 | 308 => {
                    let location = header("location").unwrap_or_default();
                    let moved = location
                        .split(['?', '#'])
                        .next()
                        .and_then(|l| l.strip_suffix(path_only))
                        .map(crate::config::token::endpoint_url);
                    match moved {
                        Some(Ok(new_base)) => {
                            tracing::info!(
                                region = self.settings.endpoints[region].region,
                                from = crate::http::redact_url(&base),
                                to = crate::http::redact_url(&new_base),
                                "the control plane moved this endpoint"
                            );
                            lock(&self.bases)[region] = new_base;
                            continue;
                        }
                        _ => {
                            return Err(RequestError::new(
                                ProbeErrorKind::Http,
                                format!(
                                    "bad redirect: HTTP {status} to {:?} is not an https:// URL ending in {path_only}",
                                    crate::http::redact_url(&location)
                                ),
                            ));
                        }
                    }
                }
                401 | 403 => {
                    return Err(RequestError::new(
                        ProbeErrorKind::CertificateRejected,
                        format!(
                            "the control plane refused this pool's certificate: HTTP {status} to {path_only}"
                        ),
                    ));
                }
                _ => {
                    if status == 429 || status == 503 {
                        let wait = header("retry-after")
                            .and_then(|v| v.trim().parse::<u64>().ok())
                            .map(|s| Duration::from_secs(s).min(MAX_HINT));
                        if let Some(w) = wait {
                            lock(&self.closed_until)[region] = Some(Instant::now() + w);
                        }
                    }
                    let body = answer
                        .body_mut()
                        .with_config()
                        .limit(512)
                        .read_to_vec()
                        .unwrap_or_default();
                    let text: String = String::from_utf8_lossy(&body)
                        .chars()
                        .filter(|c| !c.is_control())
                        .take(200)
                        .collect();
                    return Err(RequestError::new(
                        ProbeErrorKind::Http,
                        format!("HTTP {status} to {path_only}: {text}"),
                    ));
                }
            }
        }
        Err(RequestError::new(
            ProbeErrorKind::Http,
            format!("redirect loop: more than {MAX_MOVES} moves in a row for {path_only}"),
        ))
    }
}

/// A poll's answer, checked.
#[derive(Debug, PartialEq, Eq)]
pub struct PollAnswer {
    pub cursor: String,
    /// Each command's JSON, exactly as the plane sent it.
    pub commands: Vec<Vec<u8>>,
    pub next_poll: Option<Duration>,
}

/// Parses a `2xx` answer to `GET …/commands`.
pub fn parse_poll_answer(body: &[u8]) -> Result<PollAnswer, PollError> {
    #[derive(serde::Deserialize)]
    struct Raw<'a> {
        #[serde(borrow)]
        cursor: Option<&'a serde_json::value::RawValue>,
        #[serde(borrow)]
        commands: Option<&'a serde_json::value::RawValue>,
        next_poll_ms: Option<serde_json::Value>,
    }
    let raw: Raw<'_> = serde_json::from_slice(body).map_err(|e| {
        let start: String = String::from_utf8_lossy(&body[..body.len().min(60)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        bad_answer(format!(
            "not a JSON object with cursor and commands ({e}); it starts {start:?}"
        ))
    })?;
    let cursor: String = match raw.cursor {
        None => return Err(bad_answer("no \"cursor\"")),
        Some(c) => {
            serde_json::from_str(c.get()).map_err(|_| bad_answer("\"cursor\" is not a string"))?
        }
    };
    if !valid_cursor(&cursor) {
        return Err(bad_answer("\"cursor\" is not 1-128 of A-Z a-z 0-9 . _ ~ -"));
    }
    let list: Vec<&serde_json::value::RawValue> = serde_json::from_str(
        raw.commands
            .ok_or_else(|| bad_answer("no \"commands\" list"))?
            .get(),
    )
    .map_err(|_| bad_answer("\"commands\" is not a list"))?;
    if list.iter().any(|c| !c.get().starts_with('{')) {
        return Err(bad_answer(
            "\"commands\" holds something that is not a JSON object",
        ));
    }
    let commands = list.iter().map(|c| c.get().as_bytes().to_vec()).collect();
    let next_poll = match raw.next_poll_ms {
        None | Some(serde_json::Value::Null) => None,
        Some(v) => Some(
            v.as_u64()
                .map(|ms| Duration::from_millis(ms).min(MAX_HINT))
                .ok_or_else(|| {
                    bad_answer("\"next_poll_ms\" is not a whole number of milliseconds")
                })?,
        ),
    };
    Ok(PollAnswer {
        cursor,
        commands,
        next_poll,
    })
}

/// What the poller (and the waker) tell `next`: one channel lives as long
/// as the transport; `next` hands over every command in it, whichever
/// connection brought it, and ignores a `Lost` tagged with an older
/// connection.
enum Inbound {
    Command(Vec<u8>),
    Lost(u64, String),
    Wake,
}

/// One live connection.
struct Conn {
    region: usize,
    /// Tags this connection's [`Inbound`] messages.
    generation: u64,
    /// What `publish` queued, oldest first; sent by `next` in batches.
    queue: VecDeque<Vec<u8>>,
    stop: Arc<AtomicBool>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The HTTPS long-poll [`Transport`]. See the module documentation.
pub struct PollTransport {
    client: Arc<Client>,
    /// The position after the last command handed over, kept across
    /// connections, regions and failovers.
    cursor: Arc<Mutex<Option<String>>>,
    conn: Option<Conn>,
    generation: u64,
    inbound_tx: Sender<Inbound>,
    inbound: Receiver<Inbound>,
}

impl PollTransport {
    pub fn new(settings: PollSettings) -> PollTransport {
        let (inbound_tx, inbound) = mpsc::channel();
        PollTransport {
            client: Arc::new(Client::new(settings)),
            cursor: Arc::new(Mutex::new(None)),
            conn: None,
            generation: 0,
            inbound_tx,
            inbound,
        }
    }

    fn drop_conn(&mut self, reason: String) -> Lost {
        self.conn = None;
        Lost(reason)
    }

    /// Sends what `publish` queued, one batch at a time, in order, until
    /// the queue is empty or `end` has passed; a batch leaves the queue
    /// when it is answered `2xx`. Runs on the session's thread: a batch is
    /// small, and its request is bounded by the request timeout.
    fn send_batches(&mut self, end: Instant) -> Result<(), RequestError> {
        let s = &self.client.settings;
        let path = s.worker_path("messages");
        while let Some(c) = self.conn.as_mut() {
            if c.queue.is_empty() || Instant::now() >= end {
                break;
            }
            let n = c.queue.len().min(MAX_BATCH);
            let mut body =
                Vec::with_capacity(2 + c.queue.iter().take(n).map(Vec::len).sum::<usize>());
            body.push(b'[');
            for (i, m) in c.queue.iter().take(n).enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(m);
            }
            body.push(b']');
            let region = c.region;
            self.client
                .request(region, Method::Post(&body), &path, s.request_timeout)?;
            if let Some(c) = self.conn.as_mut() {
                c.queue.drain(..n);
            }
        }
        Ok(())
    }
}

impl Transport for PollTransport {
    fn regions(&self) -> Vec<String> {
        self.client
            .settings
            .endpoints
            .iter()
            .map(|e| e.region.clone())
            .collect()
    }

    fn connect(&mut self, region: usize, will: &[u8]) -> Result<(), ConnectError> {
        self.conn = None;
        let s = &self.client.settings;
        let Some(endpoint) = s.endpoints.get(region) else {
            return Err(ConnectError::Failed(format!("no endpoint number {region}")));
        };
        if let Some(until) = lock(&self.client.closed_until)[region] {
            let left = until.saturating_duration_since(Instant::now());
            if !left.is_zero() {
                return Err(ConnectError::Failed(format!(
                    "{} asked to be left alone for {} s more (Retry-After)",
                    endpoint.region,
                    left.as_secs() + 1
                )));
            }
        }
        let path = s.worker_path("session");
        let held = match self
            .client
            .call(region, Method::Post(will), &path, s.request_timeout)
        {
            Ok(answer) => answer,
            Err(e) if e.kind == ProbeErrorKind::CertificateRejected => {
                return Err(ConnectError::CertificateRejected(e.detail));
            }
            Err(e) => return Err(ConnectError::Failed(e.to_string())),
        };
        // While the session's connection is still out of the pool, a ping
        // opens the second one: both TLS handshakes happen here, on the
        // session thread, and the poller and sender find them pooled (their
        // own small stacks never run a handshake).
        if let Err(e) = ping(&self.client, region) {
            return Err(match e.kind {
                ProbeErrorKind::CertificateRejected => ConnectError::CertificateRejected(e.detail),
                _ => ConnectError::Failed(e.to_string()),
            });
        }
        // read to its end, so the session's connection goes back to the pool
        let _ = held
            .into_body()
            .with_config()
            .limit(MAX_ANSWER)
            .read_to_vec();
        let stop = Arc::new(AtomicBool::new(false));
        self.generation += 1;
        let generation = self.generation;
        let poller = {
            let (client, cursor, stop, tx) = (
                self.client.clone(),
                self.cursor.clone(),
                stop.clone(),
                self.inbound_tx.clone(),
            );
            move || poll_loop(&client, region, generation, &cursor, &stop, &tx)
        };
        if let Err(e) = std::thread::Builder::new()
            .name("liftoff-poll".into())
            .stack_size(256 * 1024)
            .spawn(poller)
        {
            stop.store(true, Ordering::SeqCst);
            return Err(ConnectError::Failed(format!(
                "cannot start the long-poll thread: {e}"
            )));
        }
        self.conn = Some(Conn {
            region,
            generation,
            queue: VecDeque::new(),
            stop,
        });
        Ok(())
    }

    fn publish(&mut self, payload: Vec<u8>) -> Result<(), PublishError> {
        let window = self.client.settings.window;
        let Some(c) = self.conn.as_mut() else {
            return Err(PublishError::NotConnected);
        };
        if c.queue.len() >= window {
            return Err(PublishError::Full);
        }
        c.queue.push_back(payload);
        Ok(())
    }

    fn in_flight(&self) -> usize {
        self.conn.as_ref().map_or(0, |c| c.queue.len())
    }

    fn next(&mut self, timeout: Duration) -> Result<Option<Vec<u8>>, Lost> {
        let Some(current) = self.conn.as_ref().map(|c| c.generation) else {
            return Err(Lost("not connected".into()));
        };
        let end = Instant::now() + timeout;
        if let Err(e) = self.send_batches(end) {
            return Err(self.drop_conn(format!("sending a batch failed: {e}")));
        }
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.inbound.recv_timeout(left) {
                // A command is handed over whichever connection brought it:
                // the poller advanced the cursor past it, so dropping it
                // would lose it (the worker de-duplicates by id).
                Ok(Inbound::Command(bytes)) => return Ok(Some(bytes)),
                Ok(Inbound::Lost(g, reason)) if g == current => {
                    return Err(self.drop_conn(reason));
                }
                Ok(Inbound::Wake) => return Ok(None),
                // an older connection's end
                Ok(Inbound::Lost(..)) => continue,
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.drop_conn("the long-poll channel closed".into()));
                }
            }
        }
    }

    fn waker(&self) -> Option<Waker> {
        let tx = Mutex::new(self.inbound_tx.clone());
        Some(Arc::new(move || {
            let _ = lock(&tx).send(Inbound::Wake);
        }))
    }

    fn disconnect(&mut self) {
        let Some(c) = self.conn.take() else {
            return;
        };
        let region = c.region;
        self.conn = Some(c);
        // The last batch (the `bye`), briefly.
        let _ = self.send_batches(Instant::now() + Duration::from_secs(3));
        self.conn = None;
        let s = &self.client.settings;
        let path = s.worker_path("session");
        if let Err(e) = self
            .client
            .request(region, Method::Delete, &path, Duration::from_secs(2))
        {
            tracing::debug!(error = %e, "closing the long-poll session");
        }
    }

    fn probe(&self, region: usize) -> Box<dyn FnOnce() -> bool + Send> {
        let client = self.client.clone();
        Box::new(move || ping(&client, region).is_ok())
    }
}

fn ping(client: &Client, region: usize) -> Result<(), RequestError> {
    let s = &client.settings;
    let path = format!("/v1/pools/{}/ping", s.pool_id);
    client
        .request(region, Method::Get, &path, s.request_timeout)
        .map(drop)
}

/// Sleeps up to `d`, waking early when `stop` is set.
fn pause(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    while !stop.load(Ordering::SeqCst) {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        std::thread::sleep(left.min(Duration::from_millis(100)));
    }
}

/// The poller: long polls in a loop, commands handed over in order, the
/// cursor advanced once they are.
fn poll_loop(
    client: &Client,
    region: usize,
    generation: u64,
    cursor: &Mutex<Option<String>>,
    stop: &AtomicBool,
    tx: &Sender<Inbound>,
) {
    let s = &client.settings;
    let wait = s.wait.as_secs().clamp(1, 50);
    let timeout = Duration::from_secs(wait) + s.request_timeout;
    while !stop.load(Ordering::SeqCst) {
        let mut path = format!("{}?wait={wait}", s.worker_path("commands"));
        if let Some(c) = lock(cursor).as_deref() {
            path.push_str("&cursor=");
            path.push_str(c);
        }
        let started = Instant::now();
        let answer = client
            .request(region, Method::Get, &path, timeout)
            .map_err(|e| format!("the long poll failed: {e}"))
            .and_then(|body| {
                parse_poll_answer(&body).map_err(|e| format!("bad answer to the long poll: {e}"))
            });
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let answer = match answer {
            Ok(a) => a,
            Err(reason) => {
                let _ = tx.send(Inbound::Lost(generation, reason));
                return;
            }
        };
        let empty = answer.commands.is_empty();
        for c in answer.commands {
            if tx.send(Inbound::Command(c)).is_err() {
                return;
            }
        }
        *lock(cursor) = Some(answer.cursor);
        let mut delay = answer.next_poll.unwrap_or_default();
        if empty {
            delay = delay.max(MIN_POLL_SPACING.saturating_sub(started.elapsed()));
        }
        pause(delay, stop);
    }
}

/// `liftoff check`'s test of one endpoint: TLS with the pool certificate
/// and one authenticated request (`GET …/ping`). Returns the time it took.
pub fn check_endpoint(settings: &PollSettings, region: usize) -> Result<Duration, RequestError> {
    let client = Client::new(settings.clone());
    let started = Instant::now();
    ping(&client, region)?;
    Ok(started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_answers_are_checked() {
        let a = parse_poll_answer(
            br#"{"cursor":"c-7","commands":[{"v":1,"type":"drain","id":"a","on":true}],"next_poll_ms":250,"x":1}"#,
        )
        .unwrap();
        assert_eq!(a.cursor, "c-7");
        assert_eq!(
            a.commands,
            vec![br#"{"v":1,"type":"drain","id":"a","on":true}"#.to_vec()]
        );
        assert_eq!(a.next_poll, Some(Duration::from_millis(250)));
        let a =
            parse_poll_answer(br#"{"cursor":"1","commands":[],"next_poll_ms":999999}"#).unwrap();
        assert_eq!(a.next_poll, Some(MAX_HINT), "hints are capped");
        for (bad, why) in [
            (&b"<html>busy</html>"[..], "not a JSON object"),
            (b"[]", "not a JSON object"),
            (br#"{"commands":[]}"#, "no \"cursor\""),
            (br#"{"cursor":5,"commands":[]}"#, "not a string"),
            (br#"{"cursor":"a b","commands":[]}"#, "1-128"),
            (br#"{"cursor":"","commands":[]}"#, "1-128"),
            (br#"{"cursor":"c"}"#, "no \"commands\""),
            (br#"{"cursor":"c","commands":{}}"#, "is not a list"),
            (br#"{"cursor":"c","commands":[1]}"#, "not a JSON object"),
            (
                br#"{"cursor":"c","commands":[],"next_poll_ms":-1}"#,
                "next_poll_ms",
            ),
        ] {
            let e = parse_poll_answer(bad).unwrap_err();
            assert!(matches!(e, PollError::Answer(_)), "{e:?}");
            assert!(
                e.to_string().contains(why),
                "{}: {e}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn cursors_and_ids_are_url_safe() {
        assert!(valid_cursor("01JD.7_~-x"));
        assert!(!valid_cursor(&"a".repeat(129)));
        for bad in ["a/b", "a&b", "a%20", "a?b", "é"] {
            assert!(!valid_cursor(bad), "{bad}");
        }
        assert!(check_id("pool_id", "01JD-pool_1").is_ok());
        assert!(check_id("pool_id", "a/b").is_err());
        assert!(check_id("pool_id", "").is_err());
    }
}
