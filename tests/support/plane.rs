//! A control-plane double that speaks docs/protocol.md from both regions
//! with rumqttc: it subscribes to every worker's outbound topic in both
//! brokers, de-duplicates events by id, acks durable events (those with a
//! `seq`) to the region they came from, and sends commands to both regions
//! (the worker de-duplicates by id).
//!
//! Order: [`Plane::start`] after the brokers are up; then `wait_for`,
//! `events`, `send`; dropping stops its threads.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use super::brokers::Brokers;

pub const POOL: &str = "01JD6Z8X5N4T3K2M1P0Q9R8S7T";

#[derive(Default)]
pub struct Seen {
    /// Unique messages, in the order first received, with their region.
    pub unique: Vec<(String, Value)>,
    ids: HashSet<String>,
    /// How many times each id arrived.
    pub copies: HashMap<String, usize>,
    /// Every message as it arrived (copies too), with its region.
    pub arrivals: Vec<(String, Value)>,
    /// Per worker: the consumer's stream of durable events, delivered in
    /// `seq` order (events ahead of a gap wait until the re-send fills it).
    pub consumer: HashMap<String, Consumer>,
}

#[derive(Default)]
pub struct Consumer {
    next_seq: u64,
    held: std::collections::BTreeMap<u64, Value>,
    pub delivered: Vec<Value>,
}

impl Consumer {
    fn offer(&mut self, v: Value) {
        let Some(seq) = v["seq"].as_u64() else { return };
        if self.next_seq == 0 {
            self.next_seq = 1;
        }
        if seq >= self.next_seq {
            self.held.entry(seq).or_insert(v);
        }
        while let Some(v) = self.held.remove(&self.next_seq) {
            self.delivered.push(v);
            self.next_seq += 1;
        }
    }
}

/// What a plane double received, and the queries tests make on it (both
/// doubles, MQTT here and long-poll in `poll_plane.rs`, record into one).
/// Waiters sleep on a condition variable that every new message wakes, so
/// a wait returns within microseconds of the arrival (latency benches).
#[derive(Clone, Default)]
pub struct Record(pub Arc<(Mutex<Seen>, std::sync::Condvar)>);

impl Record {
    /// Records one message from `worker` received in `region`; true when it
    /// was new (not a copy of an id seen before).
    pub fn record(&self, region: &str, worker: &str, v: Value) -> bool {
        let Some(id) = v["id"].as_str().map(str::to_string) else {
            return false;
        };
        let mut s = self.0.0.lock().unwrap();
        s.arrivals.push((region.to_string(), v.clone()));
        *s.copies.entry(id.clone()).or_default() += 1;
        if !s.ids.insert(id) {
            drop(s);
            self.0.1.notify_all();
            return false;
        }
        if v.get("seq").is_some() {
            s.consumer
                .entry(worker.to_string())
                .or_default()
                .offer(v.clone());
        }
        s.unique.push((region.to_string(), v));
        drop(s);
        self.0.1.notify_all();
        true
    }
}

impl std::ops::Deref for Plane {
    type Target = Record;
    fn deref(&self) -> &Record {
        &self.seen
    }
}

pub struct Plane {
    seen: Record,
    clients: Vec<Client>,
    pub auto_ack: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

fn tls(b: &Brokers) -> Arc<rustls::ClientConfig> {
    liftoff::identity::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(b.pool.ca.cert_path()).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&b.plane_cert)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&b.plane_key).unwrap();
    Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap(),
    )
}

pub fn command(ty: &str, fields: Value) -> Value {
    let mut v = json!({"v": 1, "type": ty, "id": liftoff::link::protocol::ulid(), "ts": 0});
    if let (Value::Object(m), Value::Object(f)) = (&mut v, fields) {
        m.extend(f);
    }
    v
}

impl Plane {
    pub fn start(b: &Brokers) -> Plane {
        let tls = tls(b);
        let seen = Record::default();
        let auto_ack = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let mut clients = Vec::new();
        for broker in &b.brokers {
            let region = broker.region.clone();
            let mut o = MqttOptions::new(format!("plane-{region}"), "127.0.0.1", broker.port);
            o.set_keep_alive(Duration::from_secs(5));
            o.set_max_packet_size(512 * 1024, 512 * 1024);
            o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                tls.clone(),
            )));
            let (client, mut conn) = Client::new(o, 1000);
            clients.push(client.clone());
            let (seen, auto_ack, stop) = (seen.clone(), auto_ack.clone(), stop.clone());
            let filter = format!("spacelift/writeonly/{POOL}/+");
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match conn.recv_timeout(Duration::from_millis(200)) {
                        Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                            let _ = client.try_subscribe(&filter, QoS::AtLeastOnce);
                        }
                        Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                            let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                                continue;
                            };
                            let Some(id) = v["id"].as_str().map(str::to_string) else {
                                continue;
                            };
                            let worker = p.topic.rsplit('/').next().unwrap_or_default().to_string();
                            if v.get("seq").is_some() && auto_ack.load(Ordering::Relaxed) {
                                let ack = command("ack", json!({"ids": [id]}));
                                let _ = client.try_publish(
                                    format!("spacelift/readonly/{POOL}/{worker}"),
                                    QoS::AtLeastOnce,
                                    false,
                                    ack.to_string(),
                                );
                            }
                            seen.record(&region, &worker, v);
                        }
                        Ok(Ok(_)) | Err(rumqttc::RecvTimeoutError::Timeout) => {}
                        Ok(Err(_)) => std::thread::sleep(Duration::from_millis(300)),
                        Err(rumqttc::RecvTimeoutError::Disconnected) => break,
                    }
                }
            });
        }
        Plane {
            seen,
            clients,
            auto_ack,
            stop,
        }
    }

    /// Whether the double acks the durable events it receives (on by
    /// default).
    pub fn set_auto_ack(&self, on: bool) {
        self.auto_ack.store(on, Ordering::Relaxed);
    }

    /// Sends a command to a worker in both regions.
    pub fn send(&self, worker: &str, cmd: &Value) {
        self.send_raw(worker, cmd.to_string().into_bytes());
    }

    pub fn send_raw(&self, worker: &str, payload: Vec<u8>) {
        for c in &self.clients {
            let _ = c.try_publish(
                format!("spacelift/readonly/{POOL}/{worker}"),
                QoS::AtLeastOnce,
                false,
                payload.clone(),
            );
        }
    }
}

impl Record {
    /// Unique messages so far.
    pub fn events(&self) -> Vec<Value> {
        self.0
            .0
            .lock()
            .unwrap()
            .unique
            .iter()
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Every message as it arrived, re-sends included, with its region.
    pub fn arrivals(&self) -> Vec<(String, Value)> {
        self.0.0.lock().unwrap().arrivals.clone()
    }

    /// Unique messages with the region each first came from.
    pub fn events_with_region(&self) -> Vec<(String, Value)> {
        self.0.0.lock().unwrap().unique.clone()
    }

    /// The durable events the plane's consumer got from `worker`, in order.
    pub fn delivered(&self, worker: &str) -> Vec<Value> {
        self.0
            .0
            .lock()
            .unwrap()
            .consumer
            .get(worker)
            .map(|c| c.delivered.clone())
            .unwrap_or_default()
    }

    /// docs/protocol.md, "Lost runs": of `believed` (runs the plane thinks
    /// are on `worker`), those missing from `runs` of the first `status`
    /// after the worker's latest `hello` and with no `finished`/`rejected`/
    /// `failed` among its durable events up to that status's `last_seq`.
    /// `None` until the plane holds that status and every `seq` up to it.
    pub fn lost_runs(&self, worker: &str, believed: &[&str]) -> Option<Vec<String>> {
        let events = self.events();
        let of_worker = |v: &Value| v["worker_id"] == worker;
        let hello = events
            .iter()
            .rposition(|v| is_type(v, "hello") && of_worker(v))?;
        let status = events[hello..]
            .iter()
            .find(|v| is_type(v, "status") && of_worker(v))?;
        let last_seq = status["last_seq"].as_u64().unwrap_or(0);
        let delivered = self.delivered(worker);
        if (delivered.len() as u64) < last_seq {
            return None;
        }
        let running: Vec<&str> = status["runs"]
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let ended = |run: &str| {
            delivered.iter().any(|v| {
                v["seq"].as_u64().is_some_and(|s| s <= last_seq)
                    && ["finished", "rejected", "failed"]
                        .iter()
                        .any(|phase| is_run(v, run, phase))
            })
        };
        Some(
            believed
                .iter()
                .filter(|r| !running.contains(r) && !ended(r))
                .map(|r| r.to_string())
                .collect(),
        )
    }

    /// docs/protocol.md, `gone`: true when `worker`'s latest `gone` is
    /// not stale, i.e. no later `hello` (a greater `ts` and another
    /// `will_id` than the gone's `id`) came after it.
    pub fn is_gone(&self, worker: &str) -> bool {
        let events = self.events();
        let latest = |ty: &str| {
            events
                .iter()
                .filter(|v| is_type(v, ty) && v["worker_id"] == worker)
                .max_by_key(|v| v["ts"].as_u64())
                .cloned()
        };
        match (latest("gone"), latest("hello")) {
            (Some(gone), Some(hello)) => {
                let stale =
                    hello["ts"].as_u64() > gone["ts"].as_u64() && hello["will_id"] != gone["id"];
                !stale
            }
            (Some(_), None) => true,
            _ => false,
        }
    }

    pub fn copies(&self, id: &str) -> usize {
        self.0
            .0
            .lock()
            .unwrap()
            .copies
            .get(id)
            .copied()
            .unwrap_or(0)
    }

    /// Waits (bounded) for a unique message matching `pred`, newest first
    /// not required: returns the first match in arrival order.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        self.wait_after(0, timeout, pred)
    }

    /// Waits for a match among messages after the first `skip`.
    pub fn wait_after(
        &self,
        skip: usize,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Option<Value> {
        let end = Instant::now() + timeout;
        let mut seen = self.0.0.lock().unwrap();
        loop {
            if let Some((_, v)) = seen.unique.iter().skip(skip).find(|(_, v)| pred(v)) {
                return Some(v.clone());
            }
            let now = Instant::now();
            if now > end {
                return None;
            }
            seen = self.0.1.wait_timeout(seen, end - now).unwrap().0;
        }
    }
}

impl Drop for Plane {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for c in &self.clients {
            let _ = c.try_disconnect();
        }
    }
}

/// Predicates.
pub fn is_type(v: &Value, ty: &str) -> bool {
    v["type"] == ty
}

pub fn is_run(v: &Value, run: &str, phase: &str) -> bool {
    v["type"] == "run" && v["run_id"] == run && v["phase"] == phase
}

/// A `liftoff run` process configured for the brokers, with short
/// heartbeat/keepalive/fail-back intervals so tests stay quick.
pub struct Launcher {
    pub child: std::process::Child,
    pub state: std::path::PathBuf,
    pub log: std::path::PathBuf,
}

pub fn launch(b: &Brokers, state: &std::path::Path, extra: &[(&str, &str)]) -> Launcher {
    launch_with(&b.pool.token, &b.pool.key_base64(), state, extra)
}

/// A `liftoff run` process for `token` and the base64 pool key `key`.
pub fn launch_with(
    token: &str,
    key: &str,
    state: &std::path::Path,
    extra: &[(&str, &str)],
) -> Launcher {
    spawn_run(
        token,
        key,
        state,
        &[
            ("LIFTOFF_FAILBACK_AFTER", "2s"),
            ("LIFTOFF_PROBE_INTERVAL", "1s"),
            ("SPACELIFT_METADATA_instance_id", "i-test"),
        ],
        extra,
    )
}

/// `liftoff run` with a clean environment: the token, the base64 pool key,
/// the state directory, debug logs to a file in it and short intervals so
/// tests stay quick; then `env` (the caller's fixed settings), then
/// `extra` (the test's).
pub fn spawn_run(
    token: &str,
    key: &str,
    state: &std::path::Path,
    env: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> Launcher {
    use std::process::{Command, Stdio};
    std::fs::create_dir_all(state).unwrap();
    let log = state.join(format!("launcher-{}.log", liftoff::link::protocol::ulid()));
    let mut cmd = Command::new(super::liftoff_bin());
    cmd.arg("run")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPACELIFT_TOKEN", token)
        .env("SPACELIFT_POOL_PRIVATE_KEY", key)
        .env("LIFTOFF_STATE_DIR", state)
        .env("LIFTOFF_PROVIDER_CACHE_DIR", state.join("providers"))
        .env("LIFTOFF_LOG", "info,liftoff=debug")
        .env("LIFTOFF_HEARTBEAT_INTERVAL", "1s")
        .env("LIFTOFF_MQTT_KEEPALIVE", "4s")
        .env("LIFTOFF_RESEND_AFTER", "3s")
        .env("LIFTOFF_KILL_GRACE", "2s")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env.iter().chain(extra) {
        cmd.env(k, v);
    }
    Launcher {
        child: cmd.spawn().unwrap(),
        state: state.to_path_buf(),
        log,
    }
}

impl Launcher {
    /// The worker id, once the launcher has made it.
    pub fn worker_id(&self) -> String {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(t) = std::fs::read_to_string(self.state.join("worker-id")) {
                if t.trim().len() == 26 {
                    return t.trim().to_string();
                }
            }
            assert!(Instant::now() < end, "no worker id: {}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), sig).unwrap();
    }

    /// The exit code, waiting at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<i32> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s.code().unwrap_or(-1));
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        self.kill9();
    }
}
