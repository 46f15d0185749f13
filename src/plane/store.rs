//! The plane's state: pools and their certificates, workers, the command
//! queue of each worker, the worker events received (for de-duplication and
//! the lost-run rule), runs and their log chunks. [`Store`] is the one
//! interface the rest of the plane uses; [`Sqlite`] implements it with an
//! embedded SQLite database in WAL mode, fsync'd on every commit, in
//! portable SQL (no SQLite-only types or upserts) so a PostgreSQL store can
//! follow for several plane replicas.
//!
//! Every method is one transaction: it happens whole or not at all (a full
//! disk rolls it back and returns [`Error::Storage`]).
//!
//! Call order: [`Sqlite::open`] at start (creates the schema), then any method
//! from any thread (one connection behind a mutex).
//!
//! Workers are also kept in memory (read on every dispatch round: decoding
//! a thousand rows each time was most of a round's cost): the cache is
//! written after its row is written, and dropped (re-read on the next use)
//! when a transaction rolls back, so it never holds a change the database
//! does not.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;

use parking_lot::ReentrantMutex;
use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};

use super::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolRow {
    pub id: String,
    pub name: String,
    pub cert_pem: String,
    pub fingerprint: String,
    #[serde(skip)]
    pub spki: Vec<u8>,
    pub created_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerRow {
    pub id: String,
    pub pool_id: String,
    /// IDLE, BUSY, DRAINED (from `status`), or GONE.
    pub state: String,
    pub drain: bool,
    pub region: String,
    pub transport: String,
    pub version: String,
    pub slots: u32,
    pub hostname: String,
    pub health: Vec<String>,
    pub last_seen_ms: u64,
    pub gone: bool,
    /// Why it is gone: `bye: cycle`, `gone (last will)`, `poll grace`.
    pub gone_reason: String,
    /// The will (a `gone` message, JSON) of its long-poll session.
    #[serde(skip)]
    pub will: String,
    pub hello_ts: u64,
    pub will_id: String,
    /// The drain state the plane asked for, and the id of that `drain`.
    pub want_drain: Option<bool>,
    #[serde(skip)]
    pub drain_cmd: String,
    /// The id of the `cycle` sent to it, while it has not left.
    #[serde(skip)]
    pub cycle_cmd: String,
    /// A `hello` came and its first complete `status` was not checked for
    /// lost runs yet.
    #[serde(skip)]
    pub lost_check: bool,
    #[serde(skip)]
    pub resend_ms: u64,
    pub runs: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRow {
    pub name: String,
    pub exit_code: i32,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRow {
    pub id: String,
    /// Submission order (FIFO).
    pub seqno: i64,
    pub pool_id: String,
    pub stack: String,
    /// `proposed` or `tracked`.
    pub run_type: String,
    pub idempotency_key: Option<String>,
    #[serde(skip)]
    pub spec: String,
    pub has_source: bool,
    /// queued, assigned, accepted, started, finished, failed, rejected,
    /// cancelled.
    pub phase: String,
    pub reason: String,
    pub worker_id: String,
    #[serde(skip)]
    pub assign_cmd: String,
    pub assigned_ms: u64,
    #[serde(skip)]
    pub resend_ms: u64,
    pub exit_code: Option<i32>,
    pub steps: Vec<StepRow>,
    pub duration_ms: Option<u64>,
    pub submitted_ms: u64,
    pub started_ms: u64,
    pub ended_ms: u64,
    #[serde(skip)]
    pub cancel_cmd: String,
    pub cancel_reason: String,
    /// How many log chunk URLs were handed out.
    #[serde(skip)]
    pub log_urls: u64,
    /// How many times the run went back to the queue.
    pub requeued: u32,
}

impl RunRow {
    pub fn is_final(&self) -> bool {
        matches!(
            self.phase.as_str(),
            "finished" | "failed" | "rejected" | "cancelled"
        )
    }

    /// On a worker (assigned, accepted or started).
    pub fn is_active(&self) -> bool {
        matches!(self.phase.as_str(), "assigned" | "accepted" | "started")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRow {
    pub chunk: u64,
    pub key: String,
    pub bytes: u64,
}

/// A worker's queued command: its position (the cursor) and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandRow {
    pub seq: i64,
    pub body: String,
}

/// The plane's storage.
pub trait Store: Send + Sync {
    /// Runs `f` as one transaction: every store call it makes (from this
    /// thread) commits together, or, when `f` fails, none does.
    fn transaction(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<()>;

    fn create_pool(&self, pool: &PoolRow) -> Result<()>;
    fn pool(&self, id_or_name: &str) -> Result<Option<PoolRow>>;
    fn pools(&self) -> Result<Vec<PoolRow>>;
    /// Replaces a pool's certificate and revokes the old one.
    fn reset_pool(&self, pool: &PoolRow) -> Result<()>;
    /// Every certificate issued: (fingerprint, pool id, revoked).
    fn certs(&self) -> Result<Vec<(String, String, bool)>>;

    fn put_worker(&self, w: &WorkerRow) -> Result<()>;
    fn worker(&self, id: &str) -> Result<Option<WorkerRow>>;
    fn workers(&self) -> Result<Vec<WorkerRow>>;

    /// Records a worker event; false when its id was seen before.
    fn record_event(&self, worker: &str, id: &str, seq: Option<u64>, body: &str) -> Result<bool>;
    /// True when every `seq` from 1 to `last_seq` of `worker` was received.
    fn seqs_complete(&self, worker: &str, last_seq: u64) -> Result<bool>;

    /// Queues a command for a worker; returns its position.
    fn enqueue(&self, worker: &str, body: &str) -> Result<i64>;
    /// Commands after `cursor`, oldest first, at most `limit`; forgets
    /// those up to `cursor` (the worker confirmed them).
    fn commands_after(&self, worker: &str, cursor: i64, limit: usize) -> Result<Vec<CommandRow>>;

    /// Adds a run; with an idempotency key already used, returns that run
    /// and adds nothing.
    fn insert_run(&self, run: &RunRow) -> Result<RunRow>;
    fn run(&self, id: &str) -> Result<Option<RunRow>>;
    /// Runs in submission order; `open` only those not final.
    fn runs(&self, open: bool) -> Result<Vec<RunRow>>;
    fn put_run(&self, run: &RunRow) -> Result<()>;
    /// Ended runs counted by (pool id, final phase).
    fn run_results(&self) -> Result<Vec<(String, String, u64)>>;
    /// Saves `run` and queues `command` for `worker` in one transaction.
    fn put_run_and_enqueue(&self, run: &RunRow, worker: &str, command: &str) -> Result<i64>;

    fn add_chunk(&self, run: &str, chunk: &ChunkRow) -> Result<()>;
    fn chunks(&self, run: &str) -> Result<Vec<ChunkRow>>;
}

/// SQLite in WAL mode.
pub struct Sqlite {
    conn: ReentrantMutex<Inner>,
}

struct Inner {
    conn: RefCell<Connection>,
    /// Inside [`Store::transaction`]: calls do not begin or commit their own.
    depth: Cell<u32>,
    /// Every worker row by id, as written (`None`: read it again).
    workers: RefCell<Option<BTreeMap<String, WorkerRow>>>,
}

fn db_err(e: rusqlite::Error) -> Error {
    let full = matches!(
        &e,
        rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull
    );
    if full {
        Error::DiskFull(format!(
            "the disk under the data directory is full ({e}): free space; nothing was written"
        ))
    } else {
        Error::Storage(format!("the plane's database failed: {e}"))
    }
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS pools (
  id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, cert_pem TEXT NOT NULL,
  fingerprint TEXT NOT NULL, spki BLOB NOT NULL, created_ms BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS certs (
  fingerprint TEXT PRIMARY KEY, pool_id TEXT NOT NULL, revoked INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS workers (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  id TEXT PRIMARY KEY, worker_id TEXT NOT NULL, seq BIGINT, body TEXT NOT NULL,
  received_ms BIGINT NOT NULL);
CREATE INDEX IF NOT EXISTS events_seq ON events (worker_id, seq);
CREATE TABLE IF NOT EXISTS commands (
  seq INTEGER PRIMARY KEY AUTOINCREMENT, worker_id TEXT NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS commands_worker ON commands (worker_id, seq);
CREATE TABLE IF NOT EXISTS runs (
  id TEXT PRIMARY KEY, seqno INTEGER NOT NULL, idempotency_key TEXT UNIQUE,
  final INTEGER NOT NULL, spec TEXT NOT NULL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS runs_open ON runs (final, seqno);
CREATE TABLE IF NOT EXISTS chunks (
  run_id TEXT NOT NULL, chunk BIGINT NOT NULL, key TEXT NOT NULL, bytes BIGINT NOT NULL,
  PRIMARY KEY (run_id, chunk));
";

/// The columns of a run kept outside its JSON document.
#[derive(Serialize, Deserialize)]
struct RunDoc {
    #[serde(flatten)]
    run: RunRow,
    assign_cmd: String,
    resend_ms: u64,
    cancel_cmd: String,
    log_urls: u64,
}

#[derive(Serialize, Deserialize)]
struct WorkerDoc {
    #[serde(flatten)]
    worker: WorkerRow,
    will: String,
    drain_cmd: String,
    cycle_cmd: String,
    lost_check: bool,
    resend_ms: u64,
}

fn to_json<T: Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Storage(format!("cannot encode a row: {e}")))
}

fn run_from_row(r: &Row) -> rusqlite::Result<(String, String)> {
    Ok((r.get(0)?, r.get(1)?))
}

fn decode_run(spec: String, doc: String) -> Result<RunRow> {
    let d: RunDoc = serde_json::from_str(&doc)
        .map_err(|e| Error::Storage(format!("a stored run is unreadable: {e}")))?;
    let mut run = d.run;
    run.spec = spec;
    run.assign_cmd = d.assign_cmd;
    run.resend_ms = d.resend_ms;
    run.cancel_cmd = d.cancel_cmd;
    run.log_urls = d.log_urls;
    Ok(run)
}

fn encode_run(run: &RunRow) -> Result<String> {
    to_json(&RunDoc {
        run: run.clone(),
        assign_cmd: run.assign_cmd.clone(),
        resend_ms: run.resend_ms,
        cancel_cmd: run.cancel_cmd.clone(),
        log_urls: run.log_urls,
    })
}

fn decode_worker(doc: &str) -> Result<WorkerRow> {
    let d: WorkerDoc = serde_json::from_str(doc)
        .map_err(|e| Error::Storage(format!("a stored worker is unreadable: {e}")))?;
    let mut w = d.worker;
    w.will = d.will;
    w.drain_cmd = d.drain_cmd;
    w.cycle_cmd = d.cycle_cmd;
    w.lost_check = d.lost_check;
    w.resend_ms = d.resend_ms;
    Ok(w)
}

fn pool_from(r: &Row) -> rusqlite::Result<PoolRow> {
    Ok(PoolRow {
        id: r.get(0)?,
        name: r.get(1)?,
        cert_pem: r.get(2)?,
        fingerprint: r.get(3)?,
        spki: r.get(4)?,
        created_ms: r.get::<_, i64>(5)? as u64,
    })
}

impl Sqlite {
    pub fn open(path: &std::path::Path) -> Result<Sqlite> {
        let conn = Connection::open(path).map_err(|e| {
            Error::Config(format!("cannot open the database {}: {e}", path.display()))
        })?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(db_err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        Ok(Sqlite {
            conn: ReentrantMutex::new(Inner {
                conn: RefCell::new(conn),
                depth: Cell::new(0),
                workers: RefCell::new(None),
            }),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&Connection) -> Result<T>) -> Result<T> {
        let inner = self.conn.lock();
        let conn = inner.conn.borrow();
        if inner.depth.get() > 0 {
            return f(&conn);
        }
        conn.execute_batch("BEGIN IMMEDIATE").map_err(db_err)?;
        match f(&conn) {
            Ok(out) => match conn.execute_batch("COMMIT") {
                Ok(()) => Ok(out),
                Err(e) => {
                    let _ = conn.execute_batch("ROLLBACK");
                    Err(db_err(e))
                }
            },
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

impl Sqlite {
    /// `f` on the worker cache, loaded from the table first if needed.
    fn with_workers<T>(&self, f: impl FnOnce(&BTreeMap<String, WorkerRow>) -> T) -> Result<T> {
        let inner = self.conn.lock();
        if inner.workers.borrow().is_none() {
            let docs: Vec<String> = self.with(|tx| {
                let mut s = tx.prepare("SELECT doc FROM workers").map_err(db_err)?;
                let rows = s.query_map([], |r| r.get(0)).map_err(db_err)?;
                rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
            })?;
            let mut m = BTreeMap::new();
            for d in docs {
                let w = decode_worker(&d)?;
                m.insert(w.id.clone(), w);
            }
            *inner.workers.borrow_mut() = Some(m);
        }
        let cache = inner.workers.borrow();
        Ok(f(cache.as_ref().expect("loaded above")))
    }
}

impl Store for Sqlite {
    fn transaction(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<()> {
        let inner = self.conn.lock();
        if inner.depth.get() > 0 {
            return f();
        }
        inner
            .conn
            .borrow()
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(db_err)?;
        inner.depth.set(1);
        let out = f();
        inner.depth.set(0);
        let conn = inner.conn.borrow();
        let out = match out {
            Ok(()) => conn.execute_batch("COMMIT").map_err(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                db_err(e)
            }),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        };
        if out.is_err() {
            // Worker rows written in it are rolled back: read them again.
            *inner.workers.borrow_mut() = None;
        }
        out
    }

    fn create_pool(&self, p: &PoolRow) -> Result<()> {
        self.with(|tx| {
            let exists: Option<String> = tx
                .query_row("SELECT id FROM pools WHERE name = ?1", [&p.name], |r| r.get(0))
                .optional()
                .map_err(db_err)?;
            if exists.is_some() {
                return Err(Error::Conflict(format!(
                    "a pool named {:?} exists already: choose another name, or `pool reset` it",
                    p.name
                )));
            }
            tx.execute(
                "INSERT INTO pools (id, name, cert_pem, fingerprint, spki, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![p.id, p.name, p.cert_pem, p.fingerprint, p.spki, p.created_ms as i64],
            )
            .map_err(db_err)?;
            tx.execute(
                "INSERT INTO certs (fingerprint, pool_id, revoked) VALUES (?1, ?2, 0)",
                params![p.fingerprint, p.id],
            )
            .map_err(db_err)?;
            Ok(())
        })
    }

    fn pool(&self, id_or_name: &str) -> Result<Option<PoolRow>> {
        self.with(|tx| {
            tx.query_row(
                "SELECT id, name, cert_pem, fingerprint, spki, created_ms FROM pools WHERE id = ?1 OR name = ?1",
                [id_or_name],
                pool_from,
            )
            .optional()
            .map_err(db_err)
        })
    }

    fn pools(&self) -> Result<Vec<PoolRow>> {
        self.with(|tx| {
            let mut s = tx
                .prepare("SELECT id, name, cert_pem, fingerprint, spki, created_ms FROM pools ORDER BY name")
                .map_err(db_err)?;
            let rows = s.query_map([], pool_from).map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
    }

    fn reset_pool(&self, p: &PoolRow) -> Result<()> {
        self.with(|tx| {
            tx.execute("UPDATE certs SET revoked = 1 WHERE pool_id = ?1", [&p.id])
                .map_err(db_err)?;
            tx.execute(
                "UPDATE pools SET cert_pem = ?2, fingerprint = ?3, spki = ?4 WHERE id = ?1",
                params![p.id, p.cert_pem, p.fingerprint, p.spki],
            )
            .map_err(db_err)?;
            tx.execute(
                "INSERT INTO certs (fingerprint, pool_id, revoked) VALUES (?1, ?2, 0)",
                params![p.fingerprint, p.id],
            )
            .map_err(db_err)?;
            Ok(())
        })
    }

    fn certs(&self) -> Result<Vec<(String, String, bool)>> {
        self.with(|tx| {
            let mut s = tx
                .prepare("SELECT fingerprint, pool_id, revoked FROM certs")
                .map_err(db_err)?;
            let rows = s
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? != 0)))
                .map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
    }

    fn put_worker(&self, w: &WorkerRow) -> Result<()> {
        let doc = to_json(&WorkerDoc {
            worker: w.clone(),
            will: w.will.clone(),
            drain_cmd: w.drain_cmd.clone(),
            cycle_cmd: w.cycle_cmd.clone(),
            lost_check: w.lost_check,
            resend_ms: w.resend_ms,
        })?;
        self.with(|tx| {
            let n = tx
                .execute(
                    "UPDATE workers SET doc = ?2 WHERE id = ?1",
                    params![w.id, doc],
                )
                .map_err(db_err)?;
            if n == 0 {
                tx.execute(
                    "INSERT INTO workers (id, doc) VALUES (?1, ?2)",
                    params![w.id, doc],
                )
                .map_err(db_err)?;
            }
            Ok(())
        })?;
        let inner = self.conn.lock();
        if let Some(m) = inner.workers.borrow_mut().as_mut() {
            m.insert(w.id.clone(), w.clone());
        }
        Ok(())
    }

    fn worker(&self, id: &str) -> Result<Option<WorkerRow>> {
        self.with_workers(|m| m.get(id).cloned())
    }

    fn workers(&self) -> Result<Vec<WorkerRow>> {
        self.with_workers(|m| m.values().cloned().collect())
    }

    fn record_event(&self, worker: &str, id: &str, seq: Option<u64>, body: &str) -> Result<bool> {
        self.with(|tx| {
            let seen: Option<i64> = tx
                .query_row("SELECT 1 FROM events WHERE id = ?1", [id], |r| r.get(0))
                .optional()
                .map_err(db_err)?;
            if seen.is_some() {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO events (id, worker_id, seq, body, received_ms) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, worker, seq.map(|s| s as i64), body, super::now_ms() as i64],
            )
            .map_err(db_err)?;
            Ok(true)
        })
    }

    fn seqs_complete(&self, worker: &str, last_seq: u64) -> Result<bool> {
        self.with(|tx| {
            let n: i64 = tx
                .query_row(
                    "SELECT COUNT(DISTINCT seq) FROM events WHERE worker_id = ?1 AND seq >= 1 AND seq <= ?2",
                    params![worker, last_seq as i64],
                    |r| r.get(0),
                )
                .map_err(db_err)?;
            Ok(n as u64 >= last_seq)
        })
    }

    fn enqueue(&self, worker: &str, body: &str) -> Result<i64> {
        self.with(|tx| {
            tx.execute(
                "INSERT INTO commands (worker_id, body) VALUES (?1, ?2)",
                params![worker, body],
            )
            .map_err(db_err)?;
            Ok(tx.last_insert_rowid())
        })
    }

    fn commands_after(&self, worker: &str, cursor: i64, limit: usize) -> Result<Vec<CommandRow>> {
        self.with(|tx| {
            if cursor > 0 {
                tx.execute(
                    "DELETE FROM commands WHERE worker_id = ?1 AND seq <= ?2",
                    params![worker, cursor],
                )
                .map_err(db_err)?;
            }
            let mut s = tx
                .prepare("SELECT seq, body FROM commands WHERE worker_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")
                .map_err(db_err)?;
            let rows = s
                .query_map(params![worker, cursor, limit as i64], |r| {
                    Ok(CommandRow {
                        seq: r.get(0)?,
                        body: r.get(1)?,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
    }

    fn insert_run(&self, run: &RunRow) -> Result<RunRow> {
        let doc = encode_run(run)?;
        let existing = self.with(|tx| {
            if let Some(key) = &run.idempotency_key {
                let found = tx
                    .query_row(
                        "SELECT spec, doc FROM runs WHERE idempotency_key = ?1",
                        [key],
                        run_from_row,
                    )
                    .optional()
                    .map_err(db_err)?;
                if found.is_some() {
                    return Ok(found);
                }
            }
            let seqno: i64 = tx
                .query_row("SELECT COALESCE(MAX(seqno), 0) + 1 FROM runs", [], |r| r.get(0))
                .map_err(db_err)?;
            let mut run = run.clone();
            run.seqno = seqno;
            let doc = encode_run(&run)?;
            tx.execute(
                "INSERT INTO runs (id, seqno, idempotency_key, final, spec, doc) VALUES (?1, ?2, ?3, 0, ?4, ?5)",
                params![run.id, seqno, run.idempotency_key, run.spec, doc],
            )
            .map_err(db_err)?;
            Ok(None)
        })?;
        let _ = doc;
        match existing {
            Some((spec, doc)) => decode_run(spec, doc),
            None => self
                .run(&run.id)?
                .ok_or_else(|| Error::Storage("a run vanished right after its insert".into())),
        }
    }

    fn run(&self, id: &str) -> Result<Option<RunRow>> {
        let found = self.with(|tx| {
            tx.query_row(
                "SELECT spec, doc FROM runs WHERE id = ?1",
                [id],
                run_from_row,
            )
            .optional()
            .map_err(db_err)
        })?;
        found.map(|(s, d)| decode_run(s, d)).transpose()
    }

    fn runs(&self, open: bool) -> Result<Vec<RunRow>> {
        let rows = self.with(|tx| {
            let sql = if open {
                "SELECT spec, doc FROM runs WHERE final = 0 ORDER BY seqno"
            } else {
                "SELECT spec, doc FROM runs ORDER BY seqno"
            };
            let mut s = tx.prepare(sql).map_err(db_err)?;
            let rows = s.query_map([], run_from_row).map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })?;
        rows.into_iter().map(|(s, d)| decode_run(s, d)).collect()
    }

    fn put_run(&self, run: &RunRow) -> Result<()> {
        let doc = encode_run(run)?;
        self.with(|tx| {
            tx.execute(
                "UPDATE runs SET doc = ?2, final = ?3 WHERE id = ?1",
                params![run.id, doc, run.is_final() as i64],
            )
            .map_err(db_err)?;
            Ok(())
        })
    }

    fn run_results(&self) -> Result<Vec<(String, String, u64)>> {
        self.with(|tx| {
            let mut s = tx
                .prepare(
                    "SELECT json_extract(doc, '$.pool_id'), json_extract(doc, '$.phase'), COUNT(*) \
                     FROM runs WHERE final = 1 GROUP BY 1, 2",
                )
                .map_err(db_err)?;
            let rows = s
                .query_map([], |r| {
                    Ok((
                        r.get::<_, Option<String>>(0)?.unwrap_or_default(),
                        r.get::<_, Option<String>>(1)?.unwrap_or_default(),
                        r.get::<_, i64>(2)? as u64,
                    ))
                })
                .map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
    }

    fn put_run_and_enqueue(&self, run: &RunRow, worker: &str, command: &str) -> Result<i64> {
        let doc = encode_run(run)?;
        self.with(|tx| {
            tx.execute(
                "UPDATE runs SET doc = ?2, final = ?3 WHERE id = ?1",
                params![run.id, doc, run.is_final() as i64],
            )
            .map_err(db_err)?;
            tx.execute(
                "INSERT INTO commands (worker_id, body) VALUES (?1, ?2)",
                params![worker, command],
            )
            .map_err(db_err)?;
            Ok(tx.last_insert_rowid())
        })
    }

    fn add_chunk(&self, run: &str, c: &ChunkRow) -> Result<()> {
        self.with(|tx| {
            tx.execute(
                "DELETE FROM chunks WHERE run_id = ?1 AND chunk = ?2",
                params![run, c.chunk as i64],
            )
            .map_err(db_err)?;
            tx.execute(
                "INSERT INTO chunks (run_id, chunk, key, bytes) VALUES (?1, ?2, ?3, ?4)",
                params![run, c.chunk as i64, c.key, c.bytes as i64],
            )
            .map_err(db_err)?;
            Ok(())
        })
    }

    fn chunks(&self, run: &str) -> Result<Vec<ChunkRow>> {
        self.with(|tx| {
            let mut s = tx
                .prepare("SELECT chunk, key, bytes FROM chunks WHERE run_id = ?1 ORDER BY chunk")
                .map_err(db_err)?;
            let rows = s
                .query_map([run], |r| {
                    Ok(ChunkRow {
                        chunk: r.get::<_, i64>(0)? as u64,
                        key: r.get(1)?,
                        bytes: r.get::<_, i64>(2)? as u64,
                    })
                })
                .map_err(db_err)?;
            rows.collect::<rusqlite::Result<Vec<_>>>().map_err(db_err)
        })
    }
}
