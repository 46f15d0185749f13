//! The worker ⇄ control-plane protocol: topics, limits, the message envelope
//! and every message type. `docs/protocol.md` is the contract this file
//! implements; keep both in step.
//!
//! Outbound: build a [`WorkerMsg`], wrap it with [`Envelope::new`] (fresh id,
//! timestamp) and [`Envelope::to_bytes`] (checks the size limit). Inbound:
//! [`parse_command`] validates one MQTT payload (size, JSON, version, id,
//! type, fields) and returns a [`Command`] or a [`Rejection`] that says what
//! was wrong; it never panics on any input.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The protocol version this build speaks (`"v"` in every message).
pub const VERSION: u32 = 1;
/// Largest MQTT payload either side may send (AWS IoT Core's limit).
pub const MAX_PAYLOAD: usize = 128 * 1024;
/// Most topic levels AWS IoT Core allows.
pub const MAX_TOPIC_LEVELS: usize = 7;
/// Longest MQTT client id AWS IoT Core allows, in bytes.
pub const MAX_CLIENT_ID: usize = 128;
/// Longest id the protocol carries (message ids, `run_id`, `ref_id`,
/// `command_id`; also the run spec's `run_id`): 1 to 64 of
/// `[A-Za-z0-9_-]`, checked inbound by [`parse_command`].
pub const MAX_ID_LEN: usize = 64;

/// The two topics of one worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// plane → worker: `{ns}/readonly/{pool}/{worker}`.
    pub inbound: String,
    /// worker → plane: `{ns}/writeonly/{pool}/{worker}`.
    pub outbound: String,
}

impl Topics {
    pub fn new(namespace: &str, pool_id: &str, worker_id: &str) -> Result<Topics, String> {
        for (what, part) in [
            ("namespace", namespace),
            ("pool id", pool_id),
            ("worker id", worker_id),
        ] {
            if part.is_empty() || part.contains(['/', '+', '#', '\0']) {
                return Err(format!(
                    "the {what} {part:?} cannot be used in an MQTT topic: it must be non-empty without '/', '+', '#'"
                ));
            }
        }
        let t = Topics {
            inbound: format!("{namespace}/readonly/{pool_id}/{worker_id}"),
            outbound: format!("{namespace}/writeonly/{pool_id}/{worker_id}"),
        };
        debug_assert!(t.inbound.split('/').count() <= MAX_TOPIC_LEVELS);
        Ok(t)
    }

    /// The plane's subscription for every worker of a pool.
    pub fn plane_filter(namespace: &str, pool_id: &str) -> String {
        format!("{namespace}/writeonly/{pool_id}/+")
    }
}

/// The MQTT client id of a worker: `{pool}-{worker}`, ≤ 128 bytes.
pub fn client_id(pool_id: &str, worker_id: &str) -> Result<String, String> {
    let id = format!("{pool_id}-{worker_id}");
    if id.len() > MAX_CLIENT_ID {
        return Err(format!(
            "the MQTT client id {id:?} is longer than {MAX_CLIENT_ID} bytes: the pool id in the token is too long"
        ));
    }
    Ok(id)
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A new ULID: 48 bits of milliseconds, 80 random bits, Crockford base32.
pub fn ulid() -> String {
    let mut rand = [0u8; 10];
    if aws_lc_rs::rand::fill(&mut rand).is_err() {
        rand = fallback_bits();
    }
    encode_ulid(now_ms(), rand)
}

/// The 80 "random" bits when the system's random source fails: a
/// process-wide counter (unique within the process) in the low 64 bits and
/// the process id in the high 16 (apart between processes started the same
/// millisecond), so ids never collide within a process.
fn fallback_bits() -> [u8; 10] {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let pid = std::process::id() as u16;
    let mut out = [0u8; 10];
    out[..2].copy_from_slice(&pid.to_be_bytes());
    out[2..].copy_from_slice(&n.to_be_bytes());
    out
}

fn encode_ulid(ms: u64, rand: [u8; 10]) -> String {
    let mut value: u128 = u128::from(ms & 0xFFFF_FFFF_FFFF) << 80;
    for (i, b) in rand.iter().enumerate() {
        value |= u128::from(*b) << (72 - 8 * i);
    }
    let mut out = [0u8; 26];
    for (i, c) in out.iter_mut().enumerate() {
        let shift = 125 - 5 * i as u32;
        *c = CROCKFORD[((value >> shift) & 0x1F) as usize];
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Worker states as the seed names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WorkerState {
    Idle,
    Busy,
    Drained,
}

/// Host facts sent in `hello`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub os: String,
    pub arch: String,
    pub cpus: u32,
    pub memory_bytes: u64,
}

/// What a run turned into, as reported in a `run` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunPhase {
    Accepted,
    Rejected,
    Started,
    Finished,
    Failed,
}

/// One step of a finished run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub name: String,
    pub exit_code: i32,
    pub duration_ms: u64,
}

/// Messages from the worker to the plane (`type` is the snake_case name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMsg {
    /// First message of every connection.
    Hello {
        worker_id: String,
        version: String,
        region: String,
        slots: u16,
        metadata: BTreeMap<String, String>,
        host: HostFacts,
        sandbox: BTreeMap<String, Value>,
        /// The `id` of the `gone` (last will) registered for this
        /// connection (the session fills it in): a `gone` with another id
        /// and an earlier `ts` than this hello is stale.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        will_id: Option<String>,
        /// The binding this worker speaks: `mqtt` or `poll`.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        transport: String,
    },
    /// Heartbeat and state change. Not durable: the latest one wins.
    Status {
        worker_id: String,
        state: WorkerState,
        drain: bool,
        runs: Vec<String>,
        region: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        health: Vec<String>,
        /// The `seq` of the newest durable event recorded so far (the
        /// session fills it in; absent before the first one): once the
        /// plane holds every `seq` up to it, it knows all this worker said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seq: Option<u64>,
    },
    /// A run's progress. Durable.
    Run {
        run_id: String,
        phase: RunPhase,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exit_code: Option<i32>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
        /// The `assign` command id this event answers (accepted/rejected).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        command_id: Option<String>,
        /// `finished`: the run's wall time from start to its last step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_ms: Option<u64>,
        /// `finished`: each step that ran, in order.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        steps: Vec<StepResult>,
    },
    /// A log chunk was stored in object storage. Durable.
    Log {
        run_id: String,
        chunk: u64,
        key: String,
        bytes: u64,
    },
    /// An inbound message was refused. Durable.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ref_id: Option<String>,
        code: String,
        message: String,
    },
    /// The worker is leaving on purpose.
    Bye { worker_id: String, reason: String },
    /// The last will, published by the broker when the worker vanishes.
    Gone { worker_id: String, crashed: bool },
}

impl WorkerMsg {
    /// Durable messages wait in the outbox until the plane acks them.
    pub fn durable(&self) -> bool {
        matches!(
            self,
            WorkerMsg::Run { .. } | WorkerMsg::Log { .. } | WorkerMsg::Error { .. }
        )
    }
}

/// The envelope around every message: `{"v":1,"type":…,"id":…,"ts":…,…}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub id: String,
    /// Milliseconds since the epoch at the sender.
    pub ts: u64,
    /// Durable worker events only: the worker's sequence number, increasing
    /// across reconnects and restarts (the plane may order by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(flatten)]
    pub msg: WorkerMsg,
}

impl Envelope {
    pub fn new(msg: WorkerMsg) -> Envelope {
        Envelope {
            v: VERSION,
            id: ulid(),
            ts: now_ms(),
            seq: None,
            msg,
        }
    }

    /// The JSON payload; an error when it would exceed [`MAX_PAYLOAD`].
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        let bytes = serde_json::to_vec(self).map_err(|e| format!("cannot encode message: {e}"))?;
        if bytes.len() > MAX_PAYLOAD {
            return Err(format!(
                "a {} message of {} bytes is larger than the {MAX_PAYLOAD}-byte limit",
                type_name(&self.msg),
                bytes.len()
            ));
        }
        Ok(bytes)
    }

    /// A bare run event (`run` in `phase`, nothing more), for the link's
    /// unit tests.
    #[cfg(test)]
    pub(crate) fn bare_run(run: &str, phase: RunPhase) -> Envelope {
        Envelope::new(WorkerMsg::Run {
            run_id: run.into(),
            phase,
            exit_code: None,
            reason: None,
            command_id: None,
            duration_ms: None,
            steps: Vec::new(),
        })
    }
}

fn type_name(msg: &WorkerMsg) -> &'static str {
    match msg {
        WorkerMsg::Hello { .. } => "hello",
        WorkerMsg::Status { .. } => "status",
        WorkerMsg::Run { .. } => "run",
        WorkerMsg::Log { .. } => "log",
        WorkerMsg::Error { .. } => "error",
        WorkerMsg::Bye { .. } => "bye",
        WorkerMsg::Gone { .. } => "gone",
    }
}

/// Read or write run, as the plane says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunType {
    Read,
    Write,
}

/// One pre-signed upload URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Upload {
    pub chunk: u64,
    pub url: String,
    #[serde(default)]
    pub expires_ms: u64,
}

/// An assignment: everything a run executor gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub run_id: String,
    pub run_type: RunType,
    /// The encrypted run state (see docs/protocol.md); opaque to the link.
    pub state: Value,
}

/// Commands from the plane, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandBody {
    Assign(Assignment),
    Cancel { run_id: String, reason: String },
    Drain { on: bool },
    Cycle,
    Ack { ids: Vec<String> },
    Uploads { run_id: String, urls: Vec<Upload> },
}

impl CommandBody {
    /// The command's `type`, as the protocol names it.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandBody::Assign(_) => "assign",
            CommandBody::Cancel { .. } => "cancel",
            CommandBody::Drain { .. } => "drain",
            CommandBody::Cycle => "cycle",
            CommandBody::Ack { .. } => "ack",
            CommandBody::Uploads { .. } => "uploads",
        }
    }
}

/// A validated plane command with its id.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    pub id: String,
    pub body: CommandBody,
}

/// Why an inbound payload was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The message's id when one could be read.
    pub ref_id: Option<String>,
    /// `oversized`, `malformed`, `unsupported_version`, `unknown_type`.
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    /// Unknown types are only warned about (newer planes may send them).
    pub fn is_unknown_type(&self) -> bool {
        self.code == "unknown_type"
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum RawCommand {
    Assign {
        run_id: String,
        run_type: RunType,
        #[serde(default)]
        state: Value,
    },
    Cancel {
        run_id: String,
        #[serde(default)]
        reason: String,
    },
    Drain {
        on: bool,
    },
    Cycle {},
    Ack {
        ids: Vec<String>,
    },
    Uploads {
        run_id: String,
        urls: Vec<Upload>,
    },
}

const KNOWN_COMMANDS: &[&str] = &["assign", "cancel", "drain", "cycle", "ack", "uploads"];

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Validates one inbound payload.
pub fn parse_command(payload: &[u8]) -> Result<Command, Rejection> {
    let reject = |ref_id: Option<String>, code, message: String| Rejection {
        ref_id,
        code,
        message,
    };
    if payload.len() > MAX_PAYLOAD {
        return Err(reject(
            None,
            "oversized",
            format!(
                "a payload of {} bytes is larger than the {MAX_PAYLOAD}-byte limit",
                payload.len()
            ),
        ));
    }
    let doc: Value = serde_json::from_slice(payload)
        .map_err(|e| reject(None, "malformed", format!("the payload is not JSON: {e}")))?;
    let Value::Object(obj) = &doc else {
        return Err(reject(
            None,
            "malformed",
            "the payload is not a JSON object".into(),
        ));
    };
    let id = match obj.get("id") {
        Some(Value::String(s)) if valid_id(s) => s.clone(),
        _ => {
            return Err(reject(
                None,
                "malformed",
                format!(
                    "\"id\" is missing or not an id of 1-{MAX_ID_LEN} characters [A-Za-z0-9_-]"
                ),
            ));
        }
    };
    match obj.get("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(u64::from(VERSION)) => {}
        Some(Value::Number(n)) => {
            return Err(reject(
                Some(id),
                "unsupported_version",
                format!(
                    "protocol version {n} is not supported: this worker speaks version {VERSION}; upgrade liftoff"
                ),
            ));
        }
        _ => {
            return Err(reject(
                Some(id),
                "malformed",
                "\"v\" is missing or not a number".into(),
            ));
        }
    }
    let ty = match obj.get("type") {
        Some(Value::String(t)) => t.clone(),
        _ => {
            return Err(reject(
                Some(id),
                "malformed",
                "\"type\" is missing or not a string".into(),
            ));
        }
    };
    if !KNOWN_COMMANDS.contains(&ty.as_str()) {
        return Err(reject(
            Some(id),
            "unknown_type",
            format!("unknown command type {ty:?}"),
        ));
    }
    let raw: RawCommand = serde_json::from_value(doc).map_err(|e| {
        reject(
            Some(id.clone()),
            "malformed",
            format!("a {ty:?} command is invalid: {e}"),
        )
    })?;
    let body = match raw {
        RawCommand::Assign {
            run_id,
            run_type,
            state,
        } => {
            check_id(&id, "run_id", &run_id)?;
            CommandBody::Assign(Assignment {
                run_id,
                run_type,
                state,
            })
        }
        RawCommand::Cancel { run_id, reason } => {
            check_id(&id, "run_id", &run_id)?;
            CommandBody::Cancel { run_id, reason }
        }
        RawCommand::Drain { on } => CommandBody::Drain { on },
        RawCommand::Cycle {} => CommandBody::Cycle,
        RawCommand::Ack { ids } => CommandBody::Ack { ids },
        RawCommand::Uploads { run_id, urls } => {
            check_id(&id, "run_id", &run_id)?;
            CommandBody::Uploads { run_id, urls }
        }
    };
    Ok(Command { id, body })
}

fn check_id(id: &str, field: &str, value: &str) -> Result<(), Rejection> {
    if valid_id(value) {
        Ok(())
    } else {
        Err(Rejection {
            ref_id: Some(id.to_string()),
            code: "malformed",
            message: format!("{field:?} is not an id of 1-{MAX_ID_LEN} characters [A-Za-z0-9_-]"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulids_are_26_crockford_characters_and_sort_by_time() {
        let a = ulid();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = ulid();
        assert_eq!(a.len(), 26);
        assert!(a.bytes().all(|c| CROCKFORD.contains(&c)));
        assert!(a < b);
        assert_ne!(ulid(), ulid());
    }

    #[test]
    fn fallback_ids_are_unique_within_one_millisecond() {
        // what ulid() makes when the random source fails: many ids in the
        // same millisecond, all distinct
        let ms = now_ms();
        let ids: std::collections::HashSet<String> = (0..10_000)
            .map(|_| encode_ulid(ms, fallback_bits()))
            .collect();
        assert_eq!(ids.len(), 10_000);
        assert!(ids.iter().all(|i| i.len() == 26));
    }

    #[test]
    fn topics_follow_the_seed_and_refuse_wildcards() {
        let t = Topics::new("spacelift", "POOL", "W1").unwrap();
        assert_eq!(t.inbound, "spacelift/readonly/POOL/W1");
        assert_eq!(t.outbound, "spacelift/writeonly/POOL/W1");
        assert!(Topics::new("spacelift", "a/b", "W").is_err());
        assert!(Topics::new("spacelift", "P", "#").is_err());
        assert!(client_id(&"x".repeat(120), "0123456789").is_err());
    }

    #[test]
    fn envelope_is_flat_json_with_type() {
        let mut e = Envelope::bare_run("R1", RunPhase::Started);
        e.seq = Some(7);
        let v: Value = serde_json::from_slice(&e.to_bytes().unwrap()).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["type"], "run");
        assert_eq!(v["phase"], "started");
        assert_eq!(v["seq"], 7);
        assert_eq!(v["id"].as_str().unwrap().len(), 26);
        let back: Envelope = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn oversized_outbound_is_an_error() {
        let e = Envelope::new(WorkerMsg::Error {
            ref_id: None,
            code: "x".into(),
            message: "y".repeat(MAX_PAYLOAD),
        });
        assert!(e.to_bytes().unwrap_err().contains("limit"));
    }

    #[test]
    fn commands_parse() {
        let c = parse_command(br#"{"v":1,"type":"assign","id":"C1","ts":1,"run_id":"R1","run_type":"write","state":{"a":1}}"#).unwrap();
        assert_eq!(c.id, "C1");
        assert!(
            matches!(c.body, CommandBody::Assign(ref a) if a.run_id == "R1" && a.run_type == RunType::Write)
        );
        let c = parse_command(br#"{"v":1,"type":"ack","id":"C2","ids":["a","b"]}"#).unwrap();
        assert_eq!(
            c.body,
            CommandBody::Ack {
                ids: vec!["a".into(), "b".into()]
            }
        );
        let c = parse_command(br#"{"v":1,"type":"cycle","id":"C3"}"#).unwrap();
        assert_eq!(c.body, CommandBody::Cycle);
        let c = parse_command(br#"{"v":1,"type":"drain","id":"C4","on":false}"#).unwrap();
        assert_eq!(c.body, CommandBody::Drain { on: false });
    }

    #[test]
    fn bad_payloads_are_rejected_with_a_reason() {
        let cases: &[(&[u8], &str)] = &[
            (b"not json", "malformed"),
            (b"[1,2]", "malformed"),
            (br#"{"v":1,"type":"cycle"}"#, "malformed"),
            (br#"{"v":1,"type":"cycle","id":"a/b"}"#, "malformed"),
            (br#"{"v":2,"type":"cycle","id":"X"}"#, "unsupported_version"),
            (br#"{"type":"cycle","id":"X"}"#, "malformed"),
            (br#"{"v":1,"type":"reboot","id":"X"}"#, "unknown_type"),
            (
                br#"{"v":1,"type":"assign","id":"X","run_id":"R"}"#,
                "malformed",
            ),
            (
                br#"{"v":1,"type":"assign","id":"X","run_id":"../x","run_type":"read"}"#,
                "malformed",
            ),
            (
                br#"{"v":1,"type":"drain","id":"X","on":"yes"}"#,
                "malformed",
            ),
        ];
        for (payload, code) in cases {
            let r = parse_command(payload).unwrap_err();
            assert_eq!(r.code, *code, "{}", String::from_utf8_lossy(payload));
            assert!(!r.message.is_empty());
        }
        let big = vec![b' '; MAX_PAYLOAD + 1];
        assert_eq!(parse_command(&big).unwrap_err().code, "oversized");
        assert_eq!(
            parse_command(br#"{"v":2,"type":"cycle","id":"X"}"#)
                .unwrap_err()
                .ref_id
                .as_deref(),
            Some("X")
        );
    }
}
