//! A control-plane double that serves the HTTPS long-poll binding of
//! docs/protocol.md: a real HTTPS/1.1 server (rustls, a thread per
//! connection, keep-alive) that requires a client certificate from the pool
//! CA (optionally checking a CRL), records every message into a
//! [`Record`] (the MQTT double's), acks durable events with `ack` commands,
//! keeps one command queue per worker with numeric cursors, holds polls
//! until a command is waiting, and declares a worker `gone` (its will) when
//! it has no poll held and sent nothing for the poll grace.
//!
//! Each region is an [`Endpoint`]: its own listener behind a `socat` relay
//! process (Debian's socat), so a test can SIGKILL or SIGSTOP the relay's
//! process group, which is what the worker sees when a plane process dies or
//! freezes. All endpoints share one state (one queue behind every region).
//! [`Fault`]s make an endpoint answer badly.
//!
//! Order: [`PollPlane::start`] (the pool from `pki.rs`), then the token from
//! [`PollPlane::token`], `launch_with` a worker, then `send`/`wait_for`
//! (through `Deref` to [`Record`]).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use serde_json::{Value, json};

use super::brokers::{free_ports, listens};
use super::http_head::{Head, read_head};
use super::pki::{self, Pool};
use super::plane::{POOL, Record, command};

/// How an endpoint misbehaves.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    None,
    /// Every request answered with this status (and `Retry-After: 1` for
    /// 429/503).
    Status(u16),
    /// Polls answered `200` with HTML.
    PollNotJson,
    /// Polls answered `200` with a 9 MiB JSON body.
    PollOversized,
    /// Polls answered `200` with `{"cursor": 5, "commands": "x"}`.
    PollWrongTypes,
    /// Polls answered at once with no command (a plane that never holds).
    PollNoHold,
    /// Polls never answered (held until the connection goes away).
    PollNeverAnswers,
    /// Every request answered `308` to itself.
    RedirectLoop,
    /// Every request answered `308` to the same path under this base.
    MovedTo(String),
}

#[derive(Default)]
struct Queue {
    /// (position, command JSON)
    commands: Vec<(u64, Vec<u8>)>,
    confirmed: u64,
}

#[derive(Default)]
struct Worker {
    will: Option<Value>,
    will_region: String,
    polls_held: usize,
    /// Bumped by every poll: an older poll still held sees it and ends.
    poll_gen: u64,
    last_request: Option<Instant>,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, Queue>,
    workers: HashMap<String, Worker>,
    next_pos: u64,
    /// (endpoint index, method, path) of every request, with its time.
    requests: Vec<(usize, String, String, Instant)>,
}

struct Shared {
    state: Mutex<State>,
    changed: Condvar,
    record: Record,
    auto_ack: AtomicBool,
    grace: Duration,
    stop: AtomicBool,
    faults: Mutex<Vec<Fault>>,
    /// Longest hold of a poll (the binding's 50 s, shorter in tests).
    hold_max: Duration,
    /// Commands sent per poll at most.
    batch: usize,
    polls_answered: AtomicUsize,
    /// The public (relay) port of each endpoint.
    ports: Vec<u16>,
    /// TLS connections accepted (each a full handshake).
    connections: AtomicUsize,
}

/// One region's listener and the socat relay in front of it.
pub struct Endpoint {
    pub region: String,
    /// The port the worker connects to (socat's).
    pub port: u16,
    backend: u16,
    relay: Option<Child>,
}

impl Endpoint {
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Starts (or restarts) the relay and waits until it listens.
    pub fn start(&mut self) {
        assert!(self.relay.is_none(), "{} is already running", self.region);
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new("socat")
                .arg(format!(
                    "TCP-LISTEN:{},bind=127.0.0.1,reuseaddr,fork,nodelay",
                    self.port
                ))
                .arg(format!("TCP:127.0.0.1:{},nodelay", self.backend))
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("socat is installed (the test command installs it)");
            loop {
                if listens(child.id(), self.port) {
                    self.relay = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                assert!(
                    Instant::now() < end,
                    "socat for {} did not listen on {}",
                    self.region,
                    self.port
                );
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < end,
                "socat for {} keeps exiting",
                self.region
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn signal_group(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.relay {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    /// SIGKILL to the relay's process group: every connection of this
    /// region dies at once and nothing listens.
    pub fn kill(&mut self) {
        self.signal_group(nix::sys::signal::Signal::SIGCONT);
        self.signal_group(nix::sys::signal::Signal::SIGKILL);
        if let Some(mut c) = self.relay.take() {
            let _ = c.wait();
        }
    }

    /// SIGSTOP to the relay's process group: connections stay open and
    /// nothing is answered; [`Endpoint::resume`] undoes it.
    pub fn pause(&self) {
        self.signal_group(nix::sys::signal::Signal::SIGSTOP);
    }

    pub fn resume(&self) {
        self.signal_group(nix::sys::signal::Signal::SIGCONT);
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Options of [`PollPlane::start_with`].
pub struct Options {
    pub regions: Vec<String>,
    pub grace: Duration,
    pub hold_max: Duration,
    /// A CRL (PEM) the TLS layer checks client certificates against.
    pub crl: Option<std::path::PathBuf>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            regions: vec!["eu-west-1".into(), "eu-central-1".into()],
            grace: Duration::from_secs(3),
            hold_max: Duration::from_secs(50),
            crl: None,
        }
    }
}

pub struct PollPlane {
    shared: Arc<Shared>,
    pub endpoints: Vec<Endpoint>,
    pub pool_ca_pem: String,
}

impl std::ops::Deref for PollPlane {
    type Target = Record;
    fn deref(&self) -> &Record {
        &self.shared.record
    }
}

fn server_config(pool: &Pool, dir: &Path, crl: Option<&Path>) -> Arc<rustls::ServerConfig> {
    liftoff::identity::install_crypto_provider();
    let (key, csr) = pki::pool_key_and_csr(&dir.join("poll-server"), "poll-server", 2048);
    let crt = dir.join("poll-server").join("server.crt");
    pool.ca.sign(&csr, &crt, 30);
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(pool.ca.cert_path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let mut verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots));
    if let Some(crl) = crl {
        let crls: Vec<CertificateRevocationListDer<'static>> =
            CertificateRevocationListDer::pem_file_iter(crl)
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
        verifier = verifier.with_crls(crls);
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    Arc::new(
        rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier.build().unwrap())
            .with_single_cert(chain, PrivateKeyDer::from_pem_file(&key).unwrap())
            .unwrap(),
    )
}

impl PollPlane {
    pub fn start(pool: &Pool, dir: &Path) -> PollPlane {
        Self::start_with(pool, dir, Options::default())
    }

    pub fn start_with(pool: &Pool, dir: &Path, opts: Options) -> PollPlane {
        let tls = server_config(pool, dir, opts.crl.as_deref());
        let ports = free_ports(opts.regions.len());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            record: Record::default(),
            auto_ack: AtomicBool::new(true),
            grace: opts.grace,
            stop: AtomicBool::new(false),
            faults: Mutex::new(vec![Fault::None; opts.regions.len()]),
            hold_max: opts.hold_max,
            batch: 64,
            polls_answered: AtomicUsize::new(0),
            ports: ports.clone(),
            connections: AtomicUsize::new(0),
        });
        let mut endpoints = Vec::new();
        for (i, region) in opts.regions.iter().enumerate() {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let backend = listener.local_addr().unwrap().port();
            let (sh, tls, region_name) = (shared.clone(), tls.clone(), region.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if sh.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(conn) = conn else { continue };
                    let (sh, tls, region) = (sh.clone(), tls.clone(), region_name.clone());
                    std::thread::spawn(move || serve(conn, tls, &sh, i, &region));
                }
            });
            let mut e = Endpoint {
                region: region.clone(),
                port: ports[i],
                backend,
                relay: None,
            };
            e.start();
            endpoints.push(e);
        }
        let sh = shared.clone();
        std::thread::spawn(move || watch_gone(&sh));
        PollPlane {
            shared,
            endpoints,
            pool_ca_pem: pool.ca.cert_pem(),
        }
    }

    /// A token for `pool` naming this plane's endpoints (and no broker).
    pub fn token(&self, pool: &Pool) -> String {
        use base64::Engine as _;
        let endpoints: Vec<Value> = self
            .endpoints
            .iter()
            .map(|e| json!({"region": e.region, "url": e.url()}))
            .collect();
        let doc = json!({
            "version": 1,
            "pool_id": POOL,
            "namespace": "spacelift",
            "endpoints": endpoints,
            "certificate": std::fs::read_to_string(&pool.cert).unwrap(),
            "ca": self.pool_ca_pem,
        });
        base64::engine::general_purpose::STANDARD.encode(doc.to_string())
    }

    /// Queues a command for `worker` (one queue behind every endpoint).
    pub fn send(&self, worker: &str, cmd: &Value) {
        self.send_raw(worker, cmd.to_string().into_bytes());
    }

    /// Queues raw command bytes (they must be valid JSON: they travel
    /// inside the poll answer's `commands` list).
    pub fn send_raw(&self, worker: &str, payload: Vec<u8>) {
        queue(&self.shared, worker, payload);
    }

    pub fn set_fault(&self, endpoint: usize, fault: Fault) {
        self.shared.faults.lock().unwrap()[endpoint] = fault;
        self.shared.changed.notify_all();
    }

    pub fn set_auto_ack(&self, on: bool) {
        self.shared.auto_ack.store(on, Ordering::SeqCst);
    }

    /// Every request so far: (endpoint index, method, path without query,
    /// when).
    pub fn requests(&self) -> Vec<(usize, String, String, Instant)> {
        self.shared.state.lock().unwrap().requests.clone()
    }

    /// Requests to `endpoint` since `since`.
    pub fn requests_to(&self, endpoint: usize, since: Instant) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.0 == endpoint && r.3 >= since)
            .count()
    }

    /// TLS connections accepted so far, every endpoint.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Polls answered so far.
    pub fn polls_answered(&self) -> usize {
        self.shared.polls_answered.load(Ordering::SeqCst)
    }

    /// Commands queued for `worker` and not yet confirmed by a poll's cursor.
    pub fn unconfirmed(&self, worker: &str) -> usize {
        let st = self.shared.state.lock().unwrap();
        st.queues.get(worker).map_or(0, |q| {
            q.commands.iter().filter(|(p, _)| *p > q.confirmed).count()
        })
    }

    /// True while `worker` has a poll held by the plane.
    pub fn poll_held(&self, worker: &str) -> bool {
        let st = self.shared.state.lock().unwrap();
        st.workers.get(worker).is_some_and(|w| w.polls_held > 0)
    }
}

impl Drop for PollPlane {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.changed.notify_all();
        for e in &mut self.endpoints {
            e.kill();
        }
    }
}

fn queue(sh: &Shared, worker: &str, payload: Vec<u8>) {
    let mut st = sh.state.lock().unwrap();
    st.next_pos += 1;
    let pos = st.next_pos;
    st.queues
        .entry(worker.to_string())
        .or_default()
        .commands
        .push((pos, payload));
    drop(st);
    sh.changed.notify_all();
}

/// The poll grace: a worker with no poll held and no request for `grace`
/// is gone; its will is recorded (once).
fn watch_gone(sh: &Shared) {
    while !sh.stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(100));
        let mut gone = Vec::new();
        {
            let mut st = sh.state.lock().unwrap();
            for (id, w) in st.workers.iter_mut() {
                let idle =
                    w.polls_held == 0 && w.last_request.is_some_and(|t| t.elapsed() > sh.grace);
                if idle && let Some(will) = w.will.take() {
                    gone.push((w.will_region.clone(), id.clone(), will));
                }
            }
        }
        for (region, worker, will) in gone {
            sh.record.record(&region, &worker, will);
        }
    }
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(r: &mut impl BufRead) -> Option<Request> {
    let Head {
        method,
        target,
        headers,
    } = read_head(r)?;
    if method.is_empty() || target.is_empty() {
        return None;
    }
    let mut length = 0usize;
    for (k, v) in &headers {
        if k == "content-length" {
            length = v.parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(Request {
        method,
        path: path.to_string(),
        query,
        body,
    })
}

/// One write per answer (head and body together), on a socket with
/// TCP_NODELAY: no Nagle delay between them.
fn respond(w: &mut impl Write, status: u16, extra: &str, body: &[u8]) -> bool {
    let mut answer = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{extra}\r\n",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(body);
    w.write_all(&answer).is_ok() && w.flush().is_ok()
}

fn serve(conn: TcpStream, tls: Arc<rustls::ServerConfig>, sh: &Shared, ep: usize, region: &str) {
    let _ = conn.set_nodelay(true);
    sh.connections.fetch_add(1, Ordering::SeqCst);
    let Ok(server) = rustls::ServerConnection::new(tls) else {
        return;
    };
    let mut stream = BufReader::new(rustls::StreamOwned::new(server, conn));
    while let Some(req) = read_request(&mut stream) {
        let (status, extra, body) = handle(sh, ep, region, &req);
        if !respond(stream.get_mut(), status, &extra, &body) {
            return;
        }
    }
}

/// `/v1/pools/{pool}/workers/{worker}/{what}` → (worker, what).
fn worker_route(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix(&format!("/v1/pools/{POOL}/workers/"))?;
    rest.split_once('/')
}

fn handle(sh: &Shared, ep: usize, region: &str, req: &Request) -> (u16, String, Vec<u8>) {
    {
        let mut st = sh.state.lock().unwrap();
        st.requests
            .push((ep, req.method.clone(), req.path.clone(), Instant::now()));
        if let Some((worker, _)) = worker_route(&req.path) {
            st.workers
                .entry(worker.to_string())
                .or_default()
                .last_request = Some(Instant::now());
        }
    }
    let fault = sh.faults.lock().unwrap()[ep].clone();
    let is_poll = req.path.ends_with("/commands");
    match &fault {
        Fault::Status(code) => {
            let extra = if *code == 429 || *code == 503 {
                "retry-after: 1\r\n".to_string()
            } else {
                String::new()
            };
            return (*code, extra, b"{\"error\":\"injected\"}".to_vec());
        }
        Fault::RedirectLoop => {
            let port = sh.ports[ep];
            return (
                308,
                format!("location: https://127.0.0.1:{port}{}\r\n", req.path),
                Vec::new(),
            );
        }
        Fault::MovedTo(base) => {
            return (308, format!("location: {base}{}\r\n", req.path), Vec::new());
        }
        Fault::PollNotJson if is_poll => {
            return (200, String::new(), b"<html>busy</html>".to_vec());
        }
        Fault::PollOversized if is_poll => {
            let mut b = b"{\"cursor\":\"1\",\"commands\":[],\"pad\":\"".to_vec();
            b.resize(b.len() + 9 * 1024 * 1024, b'x');
            b.extend_from_slice(b"\"}");
            return (200, String::new(), b);
        }
        Fault::PollWrongTypes if is_poll => {
            return (
                200,
                String::new(),
                br#"{"cursor":5,"commands":"x"}"#.to_vec(),
            );
        }
        Fault::PollNoHold if is_poll => {
            return (
                200,
                String::new(),
                br#"{"cursor":"0","commands":[]}"#.to_vec(),
            );
        }
        Fault::PollNeverAnswers if is_poll => {
            while !sh.stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            return (503, String::new(), Vec::new());
        }
        _ => {}
    }
    if req.path == format!("/v1/pools/{POOL}/ping") && req.method == "GET" {
        return (200, String::new(), b"{}".to_vec());
    }
    let Some((worker, what)) = worker_route(&req.path) else {
        return (404, String::new(), b"{\"error\":\"no such path\"}".to_vec());
    };
    match (req.method.as_str(), what) {
        ("POST", "session") => {
            let Ok(will) = serde_json::from_slice::<Value>(&req.body) else {
                return (
                    400,
                    String::new(),
                    b"{\"error\":\"the will is not JSON\"}".to_vec(),
                );
            };
            let mut st = sh.state.lock().unwrap();
            let w = st.workers.entry(worker.to_string()).or_default();
            w.will = Some(will);
            w.will_region = region.to_string();
            (200, String::new(), b"{}".to_vec())
        }
        ("DELETE", "session") => {
            let mut st = sh.state.lock().unwrap();
            if let Some(w) = st.workers.get_mut(worker) {
                w.will = None;
            }
            (200, String::new(), b"{}".to_vec())
        }
        ("POST", "messages") => {
            let Ok(Value::Array(list)) = serde_json::from_slice::<Value>(&req.body) else {
                return (
                    400,
                    String::new(),
                    b"{\"error\":\"not a JSON array\"}".to_vec(),
                );
            };
            let mut acks = Vec::new();
            for v in list {
                if v.get("seq").is_some()
                    && let Some(id) = v["id"].as_str()
                {
                    acks.push(id.to_string());
                }
                sh.record.record(region, worker, v);
            }
            if !acks.is_empty() && sh.auto_ack.load(Ordering::SeqCst) {
                let ack = command("ack", json!({"ids": acks}));
                queue(sh, worker, ack.to_string().into_bytes());
            }
            (200, String::new(), b"{}".to_vec())
        }
        ("GET", "commands") => poll(sh, worker, req),
        _ => (405, String::new(), b"{\"error\":\"method\"}".to_vec()),
    }
}

fn poll(sh: &Shared, worker: &str, req: &Request) -> (u16, String, Vec<u8>) {
    let wait = req
        .query
        .get("wait")
        .and_then(|w| w.parse::<u64>().ok())
        .unwrap_or(50)
        .min(50);
    let hold = Duration::from_secs(wait).min(sh.hold_max);
    let cursor: Option<u64> = req.query.get("cursor").and_then(|c| c.parse().ok());
    let end = Instant::now() + hold;
    let mut st = sh.state.lock().unwrap();
    let q = st.queues.entry(worker.to_string()).or_default();
    if let Some(c) = cursor {
        q.confirmed = q.confirmed.max(c);
        let confirmed = q.confirmed;
        q.commands.retain(|(p, _)| *p > confirmed);
    }
    let after = cursor.unwrap_or(q.confirmed);
    let generation = {
        let w = st.workers.entry(worker.to_string()).or_default();
        w.polls_held += 1;
        w.poll_gen += 1;
        w.poll_gen
    };
    sh.changed.notify_all();
    let answer = loop {
        let q = st.queues.entry(worker.to_string()).or_default();
        let waiting: Vec<(u64, Vec<u8>)> = q
            .commands
            .iter()
            .filter(|(p, _)| *p > after)
            .take(sh.batch)
            .cloned()
            .collect();
        let now = Instant::now();
        let superseded = st
            .workers
            .get(worker)
            .is_some_and(|w| w.poll_gen != generation);
        if superseded {
            break Vec::new();
        }
        if !waiting.is_empty() || now >= end || sh.stop.load(Ordering::SeqCst) {
            break waiting;
        }
        st = sh.changed.wait_timeout(st, end - now).unwrap().0;
    };
    let w = st.workers.entry(worker.to_string()).or_default();
    w.polls_held -= 1;
    w.last_request = Some(Instant::now());
    drop(st);
    let new_cursor = answer.last().map_or(after, |(p, _)| *p);
    let mut body = format!("{{\"cursor\":\"{new_cursor}\",\"commands\":[").into_bytes();
    for (i, (_, c)) in answer.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(c);
    }
    body.extend_from_slice(b"]}");
    sh.polls_answered.fetch_add(1, Ordering::SeqCst);
    (200, String::new(), body)
}
