//! Where chunks of masked run output go: a small trait and its three sinks.
//!
//! - [`PresignedSink`]: HTTP PUT to pre-signed object-storage URLs, one URL
//!   per chunk sequence number, asked of a [`UrlSource`] (the control-plane
//!   link feeds a [`UrlQueue`] from its `uploads` messages).
//! - [`FileSink`]: one local file (`liftoff exec --log-file FILE`).
//! - [`StdoutSink`]: JSON lines `{"run_ulid","ts","msg"}` on standard output
//!   (`SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED=true`).
//! - [`TerminalSink`]: the masked raw bytes on standard output (`liftoff
//!   exec` without `--log-file`).
//!
//! The uploader calls [`Sink::deliver`] once per chunk in sequence order,
//! again for the same chunk after a retryable error, and [`Sink::finish`]
//! once at the end. A repeated `deliver` of the same chunk must overwrite, not
//! append, so the receiver sees each chunk exactly once.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use super::error::LogError;
use super::spool::Chunk;

/// A failed delivery: `retryable` ones are tried again with backoff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverError {
    pub retryable: bool,
    pub message: String,
}

impl DeliverError {
    pub fn retry(message: impl Into<String>) -> Self {
        DeliverError {
            retryable: true,
            message: message.into(),
        }
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        DeliverError {
            retryable: false,
            message: message.into(),
        }
    }
}

/// A destination for chunks.
pub trait Sink: Send {
    /// A short description for messages ("pre-signed URLs", "file /x").
    fn describe(&self) -> String;
    /// Delivers one chunk; `body` reads exactly `chunk.len` bytes.
    fn deliver(&mut self, chunk: &Chunk, body: &mut File) -> Result<(), DeliverError>;
    /// End of the run's output.
    fn finish(&mut self) -> Result<(), LogError> {
        Ok(())
    }
    /// Sinks that keep the bytes on this host (a file, standard output) take
    /// chunks straight from memory through [`Sink::deliver_bytes`], without
    /// the spool, which exists to survive failed or interrupted network
    /// uploads (it doubled the disk traffic of `--log-file`).
    fn direct(&self) -> bool {
        false
    }
    /// True once the sink's disk is full (it kept room for the end of the
    /// log): the pipeline then stops the job and writes the reason.
    fn disk_full(&self) -> bool {
        false
    }
    /// Delivers one chunk from memory (direct sinks only).
    fn deliver_bytes(&mut self, chunk: &Chunk, bytes: &[u8]) -> Result<(), DeliverError> {
        let _ = bytes;
        Err(DeliverError::fatal(format!(
            "{} takes chunk {} only from the spool",
            self.describe(),
            chunk.seq
        )))
    }
}

/// Gives the pre-signed URL for a run's chunk.
pub trait UrlSource: Send + Sync {
    fn url(&self, run_id: &str, seq: u64) -> Result<String, DeliverError>;
    /// The URL given for this chunk was refused as expired (HTTP 403): the
    /// next [`UrlSource::url`] should give a fresh one.
    fn expired(&self, _run_id: &str, _seq: u64) {}
}

impl<F> UrlSource for F
where
    F: Fn(&str, u64) -> Result<String, DeliverError> + Send + Sync,
{
    fn url(&self, run_id: &str, seq: u64) -> Result<String, DeliverError> {
        self(run_id, seq)
    }
}

/// URLs handed over by the control plane, waited for when not there yet.
/// The link calls [`UrlQueue::offer`]; the sink asks with [`UrlSource::url`].
#[derive(Default)]
pub struct UrlQueue {
    urls: Mutex<HashMap<(String, u64), String>>,
    arrived: Condvar,
    wait: Duration,
}

impl UrlQueue {
    /// `wait`: how long `url` waits for a missing URL before a retryable error.
    pub fn new(wait: Duration) -> Arc<UrlQueue> {
        Arc::new(UrlQueue {
            wait,
            ..UrlQueue::default()
        })
    }

    /// Stores (or replaces, for an expired one) the URL of `run_id`'s chunk `seq`.
    pub fn offer(&self, run_id: &str, seq: u64, url: String) {
        if let Ok(mut m) = self.urls.lock() {
            m.insert((run_id.to_string(), seq), url);
        }
        self.arrived.notify_all();
    }

    /// Forgets a URL that failed (expired), so the next ask waits for a new one.
    pub fn forget(&self, run_id: &str, seq: u64) {
        if let Ok(mut m) = self.urls.lock() {
            m.remove(&(run_id.to_string(), seq));
        }
    }
}

impl UrlSource for UrlQueue {
    fn expired(&self, run_id: &str, seq: u64) {
        self.forget(run_id, seq);
    }

    fn url(&self, run_id: &str, seq: u64) -> Result<String, DeliverError> {
        let key = (run_id.to_string(), seq);
        let now = Instant::now();
        let deadline = now
            .checked_add(self.wait)
            .unwrap_or(now + Duration::from_secs(86_400));
        let mut m = self
            .urls
            .lock()
            .map_err(|_| DeliverError::fatal("the URL queue is poisoned"))?;
        loop {
            if let Some(u) = m.get(&key) {
                return Ok(u.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(DeliverError::retry(format!(
                    "no pre-signed upload URL for run {run_id} chunk {seq} yet (the control plane sends them)"
                )));
            }
            m = match self.arrived.wait_timeout(m, deadline - now) {
                Ok((g, _)) => g,
                Err(_) => return Err(DeliverError::fatal("the URL queue is poisoned")),
            };
        }
    }
}

/// HTTP PUT of each chunk to its pre-signed URL, always with Content-Length.
pub struct PresignedSink {
    agent: ureq::Agent,
    urls: Arc<dyn UrlSource>,
}

impl PresignedSink {
    pub fn new(agent: ureq::Agent, urls: Arc<dyn UrlSource>) -> Self {
        PresignedSink { agent, urls }
    }
}

impl Sink for PresignedSink {
    fn describe(&self) -> String {
        "pre-signed upload URLs".into()
    }

    fn deliver(&mut self, chunk: &Chunk, body: &mut File) -> Result<(), DeliverError> {
        use crate::http::PutError;
        let url = self.urls.url(&chunk.run_id, chunk.seq)?;
        // `&File` makes ureq send Content-Length (the file's size), never a
        // chunked body, which object storage rejects.
        let what = format!("log chunk {}", chunk.seq);
        match crate::http::presigned_put(
            &self.agent,
            &url,
            &*body,
            "application/octet-stream",
            &what,
        ) {
            Ok(()) => Ok(()),
            // The URL expired: a new one is asked for on the retry.
            Err(PutError::Expired(m)) => {
                self.urls.expired(&chunk.run_id, chunk.seq);
                Err(DeliverError::retry(m))
            }
            Err(PutError::Transient(m)) => Err(DeliverError::retry(m)),
            Err(PutError::Refused(m)) => Err(DeliverError::fatal(m)),
        }
    }
}

/// All chunks, in order, into one local file (created or truncated).
pub struct FileSink {
    path: PathBuf,
    file: File,
    /// Bytes of chunks already delivered: a retried chunk is written here
    /// again, over whatever a failed attempt left.
    committed: u64,
    /// A failed attempt may have left bytes past `committed`. Only then is
    /// the file cut back: a truncate per chunk costs an ext4 truncate each
    /// time, and a truncate to 0 makes ext4 write the whole file back on
    /// close (its `auto_da_alloc` rule for files replaced by truncation).
    torn: bool,
    /// Disk blocks are allocated (`fallocate`, size kept) up to here, past
    /// what is written, so a full disk does not lose the end of the log.
    reserved_to: u64,
    /// Allocating room ahead failed for lack of space.
    disk_full: bool,
}

/// How far ahead of what is written a [`FileSink`] keeps disk blocks
/// allocated; it tops them up once less than half is left, so when the disk
/// fills at least half of this is left for the log's end (the reason line).
pub const FILE_RESERVE: u64 = 4 << 20;

impl FileSink {
    pub fn create(path: &Path) -> Result<FileSink, LogError> {
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| {
                LogError::Sink(format!(
                    "cannot create the log file {}: {e}",
                    path.display()
                ))
            })?;
        let mut sink = FileSink {
            path: path.to_path_buf(),
            file,
            committed: 0,
            torn: false,
            reserved_to: 0,
            disk_full: false,
        };
        sink.reserve();
        Ok(sink)
    }

    /// Keeps [`FILE_RESERVE`] bytes allocated past what is written, topped
    /// up when less than half is left. A file system without `fallocate`
    /// gets no reserve; one without space sets `disk_full`.
    fn reserve(&mut self) {
        if self.disk_full || self.reserved_to >= self.committed + FILE_RESERVE / 2 {
            return;
        }
        let (Ok(from), Ok(len)) = (i64::try_from(self.committed), i64::try_from(FILE_RESERVE))
        else {
            return;
        };
        match nix::fcntl::fallocate(
            &self.file,
            nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            from,
            len,
        ) {
            Ok(()) => self.reserved_to = self.committed + FILE_RESERVE,
            Err(nix::errno::Errno::ENOSPC | nix::errno::Errno::EDQUOT) => self.disk_full = true,
            // Not supported here: write as before, without a reserve.
            Err(_) => self.reserved_to = u64::MAX,
        }
    }

    /// Writes one chunk after the delivered ones, first cutting back
    /// whatever a failed attempt left.
    fn append(
        &mut self,
        chunk: &Chunk,
        write: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> Result<(), DeliverError> {
        let written = (|| {
            if self.torn {
                self.file.set_len(self.committed)?;
                self.file.seek(SeekFrom::Start(self.committed))?;
                // Cutting back freed the blocks past the end.
                self.reserved_to = self.reserved_to.min(self.committed);
            }
            self.torn = true;
            write(&mut self.file)?;
            self.torn = false;
            Ok(())
        })();
        written.map_err(|e: std::io::Error| {
            DeliverError::retry(format!(
                "cannot write log chunk {} to {}: {e}",
                chunk.seq,
                self.path.display()
            ))
        })?;
        self.committed += chunk.len;
        self.reserve();
        Ok(())
    }
}

impl Sink for FileSink {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn deliver(&mut self, chunk: &Chunk, body: &mut File) -> Result<(), DeliverError> {
        self.append(chunk, |file| {
            let copied = std::io::copy(&mut body.take(chunk.len), file)?;
            if copied != chunk.len {
                return Err(std::io::Error::other(format!(
                    "the spooled chunk was shorter than its {} bytes",
                    chunk.len
                )));
            }
            Ok(())
        })
    }

    fn direct(&self) -> bool {
        true
    }

    fn deliver_bytes(&mut self, chunk: &Chunk, bytes: &[u8]) -> Result<(), DeliverError> {
        self.append(chunk, |file| file.write_all(bytes))
    }

    fn disk_full(&self) -> bool {
        self.disk_full
    }

    fn finish(&mut self) -> Result<(), LogError> {
        // The reserve past the end is no longer needed: free its blocks.
        if self.reserved_to > self.committed && self.reserved_to != u64::MAX {
            if let (Ok(from), Ok(len)) = (
                i64::try_from(self.committed),
                i64::try_from(self.reserved_to - self.committed),
            ) {
                let _ = nix::fcntl::fallocate(
                    &self.file,
                    nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                        | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    from,
                    len,
                );
            }
            // Some file systems free blocks past the end only on a
            // truncate (ext4, xfs), others only on a punched hole (tmpfs).
            let _ = self.file.set_len(self.committed);
            self.reserved_to = self.committed;
        }
        // No fsync: like a job writing its own file, the page cache has it
        // (an fsync of a 1.4 GB log doubled the end-to-end bench's time).
        self.file.flush().map_err(|e| {
            LogError::Sink(format!(
                "cannot write the log file {}: {e}",
                self.path.display()
            ))
        })
    }
}

/// The masked raw output on standard output, each chunk one `write_all` of
/// its bytes straight to the descriptor (no spool, no buffer in between: a
/// spooled terminal sink wrote every byte to disk and read it back, which
/// made the masked `liftoff exec` about three times as costly as a pipe).
pub struct TerminalSink {
    /// A duplicate of standard output's descriptor (unbuffered).
    out: File,
}

impl TerminalSink {
    /// Standard output. Anything already buffered in Rust's `Stdout` is
    /// flushed first so nothing is reordered.
    pub fn stdout() -> Result<TerminalSink, LogError> {
        use std::os::fd::AsFd as _;
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.flush();
        let fd = stdout.as_fd().try_clone_to_owned().map_err(|e| {
            LogError::Sink(format!(
                "cannot use standard output for the job's output: {e}"
            ))
        })?;
        Ok(TerminalSink {
            out: File::from(fd),
        })
    }
}

impl Sink for TerminalSink {
    fn describe(&self) -> String {
        "the terminal".into()
    }

    fn deliver(&mut self, chunk: &Chunk, body: &mut File) -> Result<(), DeliverError> {
        // Not retried: a retry would repeat what was already written.
        std::io::copy(&mut body.take(chunk.len), &mut self.out)
            .map(|_| ())
            .map_err(|e| DeliverError::fatal(format!("cannot write to standard output: {e}")))
    }

    fn direct(&self) -> bool {
        true
    }

    fn deliver_bytes(&mut self, _chunk: &Chunk, bytes: &[u8]) -> Result<(), DeliverError> {
        self.out
            .write_all(bytes)
            .map_err(|e| DeliverError::fatal(format!("cannot write to standard output: {e}")))
    }
}

/// JSON lines `{"run_ulid","ts","msg"}` on a writer (standard output).
pub struct StdoutSink<W: Write + Send> {
    run_id: String,
    out: W,
    /// The unfinished last line, carried to the next chunk (bounded).
    partial: Vec<u8>,
}

/// Longest line kept whole; longer ones are split into several messages.
const MAX_LINE: usize = 64 * 1024;

impl StdoutSink<std::io::Stdout> {
    pub fn stdout(run_id: &str) -> Self {
        StdoutSink::new(run_id, std::io::stdout())
    }
}

impl<W: Write + Send> StdoutSink<W> {
    pub fn new(run_id: &str, out: W) -> Self {
        StdoutSink {
            run_id: run_id.to_string(),
            out,
            partial: Vec::new(),
        }
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    /// Writes the whole lines of `block` (after what was carried) and
    /// carries the unfinished rest.
    fn feed(&mut self, block: &[u8]) -> std::io::Result<()> {
        let mut all = std::mem::take(&mut self.partial);
        all.extend_from_slice(block);
        let mut start = 0;
        while let Some(nl) = all[start..].iter().position(|&b| b == b'\n') {
            self.emit(&all[start..start + nl])?;
            start += nl + 1;
        }
        let mut rest = all.split_off(start);
        while rest.len() > MAX_LINE {
            let tail = rest.split_off(MAX_LINE);
            self.emit(&rest)?;
            rest = tail;
        }
        self.partial = rest;
        Ok(())
    }

    fn emit(&mut self, line: &[u8]) -> std::io::Result<()> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let msg = String::from_utf8_lossy(line);
        let record = serde_json::json!({
            "run_ulid": self.run_id,
            "ts": crate::time::rfc3339_now(),
            "msg": msg,
        });
        let mut text = record.to_string();
        text.push('\n');
        self.out.write_all(text.as_bytes())
    }
}

impl<W: Write + Send> Sink for StdoutSink<W> {
    fn describe(&self) -> String {
        "standard output (JSON lines)".into()
    }

    fn deliver(&mut self, chunk: &Chunk, body: &mut File) -> Result<(), DeliverError> {
        // Read in blocks (memory stays small); a line goes out once whole.
        // Errors are not retried: a retry would repeat lines already written.
        let fail = |e: std::io::Error| {
            DeliverError::fatal(format!(
                "cannot write log chunk {} to standard output: {e}",
                chunk.seq
            ))
        };
        let mut block = vec![0u8; 64 * 1024];
        let mut body = body.take(chunk.len);
        loop {
            let n = match body.read(&mut block) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(fail(e)),
            };
            self.feed(&block[..n]).map_err(fail)?;
        }
        self.out.flush().map_err(fail)?;
        Ok(())
    }

    fn direct(&self) -> bool {
        true
    }

    fn deliver_bytes(&mut self, chunk: &Chunk, bytes: &[u8]) -> Result<(), DeliverError> {
        let fail = |e: std::io::Error| {
            DeliverError::fatal(format!(
                "cannot write log chunk {} to standard output: {e}",
                chunk.seq
            ))
        };
        self.feed(bytes).map_err(fail)?;
        self.out.flush().map_err(fail)
    }

    fn finish(&mut self) -> Result<(), LogError> {
        if !self.partial.is_empty() {
            let last = std::mem::take(&mut self.partial);
            self.emit(&last)
                .map_err(|e| LogError::Sink(format!("cannot write to standard output: {e}")))?;
        }
        self.out
            .flush()
            .map_err(|e| LogError::Sink(format!("cannot write to standard output: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::spool::Spool;

    #[test]
    fn url_queue_waits_for_and_replaces_urls() {
        let q = UrlQueue::new(Duration::from_millis(50));
        assert!(q.url("R", 0).unwrap_err().retryable);
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(10));
            q2.offer("R", 0, "http://a".into());
        });
        let q3 = UrlQueue::new(Duration::from_secs(5));
        q3.offer("R", 0, "http://b".into());
        assert_eq!(q3.url("R", 0).unwrap(), "http://b");
        q3.expired("R", 0);
        assert!(q3.urls.lock().unwrap().is_empty());
        t.join().unwrap();
        assert_eq!(q.url("R", 0).unwrap(), "http://a");
    }

    #[test]
    fn file_sink_overwrites_a_failed_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(&dir.path().join("spool"), "R").unwrap();
        let a = spool.write(0, b"first\n").unwrap();
        let b = spool.write(1, b"second\n").unwrap();
        let log = dir.path().join("log");
        let mut sink = FileSink::create(&log).unwrap();
        sink.deliver(&a, &mut spool.open_chunk(&a).unwrap())
            .unwrap();
        // A half-written attempt of chunk 1, then its retry.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&log)
            .unwrap()
            .write_all(b"sec")
            .unwrap();
        sink.deliver(&b, &mut spool.open_chunk(&b).unwrap())
            .unwrap();
        sink.finish().unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"first\nsecond\n");
    }

    #[test]
    fn file_sink_keeps_room_ahead_and_frees_it_at_the_end() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let mut sink = FileSink::create(&log).unwrap();
        let chunk = Chunk {
            run_id: "R".into(),
            seq: 0,
            len: 6,
            sha256: [0; 32],
        };
        sink.deliver_bytes(&chunk, b"first\n").unwrap();
        assert!(!sink.disk_full());
        let during = std::fs::metadata(&log).unwrap();
        assert_eq!(during.len(), 6);
        if sink.reserved_to != u64::MAX {
            // fallocate works here: the room is allocated past the end.
            assert!(during.blocks() * 512 >= FILE_RESERVE, "{during:?}");
        }
        sink.finish().unwrap();
        let after = std::fs::metadata(&log).unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"first\n");
        assert!(after.blocks() * 512 < FILE_RESERVE / 2, "{after:?}");
    }

    #[test]
    fn timestamps_are_rfc3339() {
        let ts = crate::time::rfc3339_now();
        assert_eq!(ts.len(), 24, "{ts}");
        assert!(ts.starts_with("20") && ts.ends_with('Z') && ts.as_bytes()[10] == b'T');
    }
}
