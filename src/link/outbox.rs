//! The durable outbox: every worker event that must reach the plane is
//! appended here (and fsync'd) before it is published, and stays until the
//! plane acks its id. After a reconnect, a failover or a launcher restart the
//! link re-sends [`Outbox::pending`] in order.
//!
//! Call order: [`Outbox::open`] once per process (it reads back what a
//! previous process left, drops torn or corrupt records with a warning, and
//! compacts), then [`Outbox::push`] for each event and [`Outbox::ack`] for
//! each plane ack, from any thread through a `Mutex`.
//!
//! File format (`outbox.jsonl` in the state directory), one JSON record a
//! line: `{"next_seq":N}` (first line after compaction), `{"add":{"id":…,
//! "seq":N,"payload":"<the JSON message>"}}`, `{"ack":"<id>"}`. The file is
//! rewritten (temp file, fsync, rename, fsync of the directory) when acked
//! records make up most of it.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::protocol::{Envelope, MAX_PAYLOAD};

/// File name inside the state directory.
pub const FILE_NAME: &str = "outbox.jsonl";

/// Size bounds: pushing beyond them is an error, never a silent drop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events: 10_000,
            max_bytes: 32 * 1024 * 1024,
        }
    }
}

/// One event waiting for the plane's ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub id: String,
    pub seq: u64,
    pub payload: Vec<u8>,
}

#[derive(Serialize, Deserialize)]
struct AddRecord {
    id: String,
    seq: u64,
    payload: String,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Record {
    Add { add: AddRecord },
    Ack { ack: String },
    Header { next_seq: u64 },
}

/// The outbox. See the module documentation.
#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    file: File,
    pending: BTreeMap<u64, Pending>,
    by_id: HashMap<String, u64>,
    next_seq: u64,
    live_bytes: usize,
    file_bytes: u64,
    limits: Limits,
}

fn io_err(path: &Path, what: &str, e: std::io::Error) -> String {
    format!(
        "outbox {}: cannot {what}: {e}; check LIFTOFF_STATE_DIR is a writable directory on a local disk with free space",
        path.display()
    )
}

impl Outbox {
    /// Opens (or creates) the outbox in `dir`. Returns the outbox and
    /// warnings about records that could not be read back.
    pub fn open(dir: &Path, limits: Limits) -> Result<(Outbox, Vec<String>), String> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, "create the directory", e))?;
        let path = dir.join(FILE_NAME);
        let mut warnings = Vec::new();
        let mut pending = BTreeMap::new();
        let mut by_id = HashMap::new();
        let mut next_seq = 1u64;
        match File::open(&path) {
            Ok(f) => {
                let mut reader = BufReader::new(f);
                let mut line = Vec::new();
                let mut n = 0usize;
                loop {
                    line.clear();
                    let read = reader
                        .read_until(b'\n', &mut line)
                        .map_err(|e| io_err(&path, "read", e))?;
                    if read == 0 {
                        break;
                    }
                    n += 1;
                    if line.last() != Some(&b'\n') {
                        warnings.push(format!(
                            "outbox {}: line {n} is incomplete (the launcher stopped while writing it); it is dropped",
                            path.display()
                        ));
                        break;
                    }
                    match serde_json::from_slice::<Record>(&line) {
                        Ok(Record::Header { next_seq: s }) => next_seq = next_seq.max(s),
                        Ok(Record::Add { add }) => {
                            next_seq = next_seq.max(add.seq + 1);
                            if add.payload.len() > MAX_PAYLOAD || by_id.contains_key(&add.id) {
                                warnings.push(format!(
                                    "outbox {}: line {n} is oversized or a duplicate; it is dropped",
                                    path.display()
                                ));
                                continue;
                            }
                            by_id.insert(add.id.clone(), add.seq);
                            pending.insert(
                                add.seq,
                                Pending {
                                    id: add.id,
                                    seq: add.seq,
                                    payload: add.payload.into_bytes(),
                                },
                            );
                        }
                        Ok(Record::Ack { ack }) => {
                            if let Some(seq) = by_id.remove(&ack) {
                                pending.remove(&seq);
                            }
                        }
                        Err(e) => warnings.push(format!(
                            "outbox {}: line {n} is not a valid record ({e}); it is dropped",
                            path.display()
                        )),
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&path, "open", e)),
        }
        let live_bytes = pending.values().map(|p: &Pending| p.payload.len()).sum();
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, "open for writing", e))?;
        let mut outbox = Outbox {
            path,
            file,
            pending,
            by_id,
            next_seq,
            live_bytes,
            file_bytes: 0,
            limits,
        };
        outbox.compact()?;
        Ok((outbox, warnings))
    }

    /// Number of events waiting for an ack.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// The `seq` of the newest event ever pushed (acked or not); 0 when
    /// none was.
    pub fn last_seq(&self) -> u64 {
        self.next_seq.saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The events waiting for an ack, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &Pending> {
        self.pending.values()
    }

    /// The events after `seq`, oldest first.
    pub fn pending_after(&self, seq: u64) -> impl Iterator<Item = &Pending> {
        self.pending.range(seq.saturating_add(1)..).map(|(_, p)| p)
    }

    /// Whether the event numbered `seq` is still waiting for an ack.
    pub fn has_seq(&self, seq: u64) -> bool {
        self.pending.contains_key(&seq)
    }

    /// When the oldest pending event was made: its envelope's `ts`
    /// (milliseconds since the epoch).
    pub fn oldest_ts_ms(&self) -> Option<u64> {
        #[derive(Deserialize)]
        struct Ts {
            ts: u64,
        }
        let p = self.pending.values().next()?;
        serde_json::from_slice::<Ts>(&p.payload).ok().map(|t| t.ts)
    }

    /// Whether `id` is still waiting for an ack.
    pub fn contains(&self, id: &str) -> bool {
        self.by_id.contains_key(id)
    }

    /// Numbers `envelope` (its `seq`), appends it durably and returns its
    /// payload. An error when the outbox is full or the disk fails: the event
    /// is then not recorded.
    pub fn push(&mut self, envelope: &mut Envelope) -> Result<Pending, String> {
        if self.pending.len() >= self.limits.max_events {
            return Err(format!(
                "the outbox holds {} unacknowledged events, its limit: the control plane has not acknowledged events for a long time; check connectivity with `liftoff check`",
                self.pending.len()
            ));
        }
        envelope.seq = Some(self.next_seq);
        let payload = envelope.to_bytes()?;
        if self.live_bytes + payload.len() > self.limits.max_bytes {
            return Err(format!(
                "the outbox holds {} bytes of unacknowledged events, over its {}-byte limit: the control plane has not acknowledged events for a long time; check connectivity with `liftoff check`",
                self.live_bytes, self.limits.max_bytes
            ));
        }
        let text = String::from_utf8(payload.clone())
            .map_err(|e| format!("cannot record an event that is not UTF-8: {e}"))?;
        let record = Record::Add {
            add: AddRecord {
                id: envelope.id.clone(),
                seq: self.next_seq,
                payload: text,
            },
        };
        self.append(&record)?;
        let p = Pending {
            id: envelope.id.clone(),
            seq: self.next_seq,
            payload,
        };
        self.next_seq += 1;
        self.live_bytes += p.payload.len();
        self.by_id.insert(p.id.clone(), p.seq);
        self.pending.insert(p.seq, p.clone());
        Ok(p)
    }

    /// Removes acked events. Unknown ids (already acked, or another
    /// worker's) are ignored. Returns how many were removed.
    pub fn ack<S: AsRef<str>>(&mut self, ids: &[S]) -> Result<usize, String> {
        let mut removed = 0;
        for id in ids {
            let id = id.as_ref();
            if let Some(seq) = self.by_id.remove(id) {
                if let Some(p) = self.pending.remove(&seq) {
                    self.live_bytes -= p.payload.len();
                }
                self.append_nosync(&Record::Ack {
                    ack: id.to_string(),
                })?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.file
                .sync_data()
                .map_err(|e| io_err(&self.path, "sync", e))?;
            if self.file_bytes > 64 * 1024 && self.file_bytes > 2 * self.live_bytes as u64 + 4096 {
                self.compact()?;
            }
        }
        Ok(removed)
    }

    fn append_nosync(&mut self, record: &Record) -> Result<(), String> {
        let mut line = serde_json::to_vec(record).map_err(|e| format!("outbox encode: {e}"))?;
        line.push(b'\n');
        self.file
            .write_all(&line)
            .map_err(|e| io_err(&self.path, "write", e))?;
        self.file_bytes += line.len() as u64;
        Ok(())
    }

    fn append(&mut self, record: &Record) -> Result<(), String> {
        self.append_nosync(record)?;
        self.file
            .sync_data()
            .map_err(|e| io_err(&self.path, "sync", e))
    }

    /// Rewrites the file with only the pending events.
    pub fn compact(&mut self) -> Result<(), String> {
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut out = Vec::with_capacity(self.live_bytes + 64 * (self.pending.len() + 1));
        let mut push = |r: &Record| -> Result<(), String> {
            serde_json::to_writer(&mut out, r).map_err(|e| format!("outbox encode: {e}"))?;
            out.push(b'\n');
            Ok(())
        };
        push(&Record::Header {
            next_seq: self.next_seq,
        })?;
        for p in self.pending.values() {
            push(&Record::Add {
                add: AddRecord {
                    id: p.id.clone(),
                    seq: p.seq,
                    payload: String::from_utf8_lossy(&p.payload).into_owned(),
                },
            })?;
        }
        let mut f = File::create(&tmp).map_err(|e| io_err(&tmp, "create", e))?;
        f.write_all(&out).map_err(|e| io_err(&tmp, "write", e))?;
        f.sync_all().map_err(|e| io_err(&tmp, "sync", e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| io_err(&self.path, "replace", e))?;
        if let Some(dir) = self.path.parent()
            && let Ok(d) = File::open(dir)
        {
            let _ = d.sync_all();
        }
        self.file = OpenOptions::new()
            .append(true)
            .open(&self.path)
            .map_err(|e| io_err(&self.path, "reopen", e))?;
        self.file_bytes = out.len() as u64;
        Ok(())
    }

    /// Size of the file on disk (for tests and the status line).
    pub fn file_bytes(&self) -> u64 {
        self.file_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::protocol::RunPhase;

    fn ev(run: &str) -> Envelope {
        Envelope::bare_run(run, RunPhase::Started)
    }

    fn tmp() -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("liftoff-outbox-{}", crate::link::protocol::ulid()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn survives_reopen_in_order_and_forgets_acked() {
        let dir = tmp();
        let (mut o, w) = Outbox::open(&dir, Limits::default()).unwrap();
        assert!(w.is_empty());
        let ids: Vec<String> = (0..5)
            .map(|i| o.push(&mut ev(&format!("R{i}"))).unwrap().id)
            .collect();
        assert_eq!(o.ack(&[&ids[1], &ids[3], "unknown"]).unwrap(), 2);
        drop(o);
        let (o, w) = Outbox::open(&dir, Limits::default()).unwrap();
        assert!(w.is_empty(), "{w:?}");
        let left: Vec<&str> = o.pending().map(|p| p.id.as_str()).collect();
        assert_eq!(
            left,
            vec![ids[0].as_str(), ids[2].as_str(), ids[4].as_str()]
        );
        let seqs: Vec<u64> = o.pending().map(|p| p.seq).collect();
        assert_eq!(seqs, vec![1, 3, 5]);
        // sequence numbers continue after a restart, even when all were acked
        let mut o = o;
        let all: Vec<String> = o.pending().map(|p| p.id.clone()).collect();
        o.ack(&all).unwrap();
        drop(o);
        let (mut o, _) = Outbox::open(&dir, Limits::default()).unwrap();
        assert!(o.is_empty());
        assert_eq!(o.push(&mut ev("R9")).unwrap().seq, 6);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn pending_after_a_sequence_number() {
        let dir = tmp();
        let (mut o, _) = Outbox::open(&dir, Limits::default()).unwrap();
        let ids: Vec<String> = (0..4).map(|_| o.push(&mut ev("R")).unwrap().id).collect();
        o.ack(&[&ids[2]]).unwrap();
        let after: Vec<u64> = o.pending_after(1).map(|p| p.seq).collect();
        assert_eq!(after, vec![2, 4]);
        assert!(o.has_seq(4) && !o.has_seq(3));
        assert_eq!(o.pending_after(u64::MAX).count(), 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn torn_and_corrupt_lines_are_dropped_with_a_warning() {
        let dir = tmp();
        let (mut o, _) = Outbox::open(&dir, Limits::default()).unwrap();
        let a = o.push(&mut ev("A")).unwrap();
        drop(o);
        let path = dir.join(FILE_NAME);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(b"{garbage}\n\xff\xfe\n{\"add\":{\"id\":\"x\",\"se")
            .unwrap();
        drop(f);
        let (o, w) = Outbox::open(&dir, Limits::default()).unwrap();
        assert_eq!(w.len(), 3, "{w:?}");
        assert_eq!(
            o.pending().map(|p| p.id.clone()).collect::<Vec<_>>(),
            vec![a.id]
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bounded_with_a_clear_error() {
        let dir = tmp();
        let limits = Limits {
            max_events: 3,
            max_bytes: 1 << 20,
        };
        let (mut o, _) = Outbox::open(&dir, limits).unwrap();
        for _ in 0..3 {
            o.push(&mut ev("R")).unwrap();
        }
        let e = o.push(&mut ev("R")).unwrap_err();
        assert!(e.contains("limit"), "{e}");
        assert_eq!(o.len(), 3);
        let limits = Limits {
            max_events: 100,
            max_bytes: 300,
        };
        let dir2 = tmp();
        let (mut o, _) = Outbox::open(&dir2, limits).unwrap();
        o.push(&mut ev("R")).unwrap();
        o.push(&mut ev("R")).unwrap();
        assert!(o.push(&mut ev("R")).unwrap_err().contains("byte limit"));
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(dir2).unwrap();
    }

    #[test]
    fn compacts_when_mostly_acked() {
        let dir = tmp();
        let (mut o, _) = Outbox::open(&dir, Limits::default()).unwrap();
        let mut keep = None;
        for i in 0..600 {
            let p = o.push(&mut ev(&format!("R{i}"))).unwrap();
            if i == 300 {
                keep = Some(p.id);
            } else {
                o.ack(&[p.id]).unwrap();
            }
        }
        let len = std::fs::metadata(dir.join(FILE_NAME)).unwrap().len();
        assert!(len < 80 * 1024, "file is {len} bytes");
        drop(o);
        let (o, _) = Outbox::open(&dir, Limits::default()).unwrap();
        assert_eq!(o.len(), 1);
        assert!(o.contains(keep.as_deref().unwrap()));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
