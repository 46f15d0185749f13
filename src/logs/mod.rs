//! The run-log pipeline: mask, chunk, spool, upload; and the watchdog that
//! kills a job on `SPACELIFT_LAUNCHER_LOGS_TIMEOUT` (no output) or
//! `SPACELIFT_LAUNCHER_RUN_TIMEOUT` (total time).
//!
//! Call order:
//! 1. build a [`redact::Matcher`] from the run's secrets
//!    ([`redact::RedactorBuilder`], [`mask_env_secrets`]);
//! 2. choose a [`sink::Sink`] (pre-signed URLs, a file, stdout JSON lines);
//! 3. [`Pipeline::start`] (opens the run's spool; chunks an earlier process
//!    left for the same run go first);
//! 4. any launcher lines: [`Pipeline::line`], [`Pipeline::debug_command`]
//!    (with `SPACELIFT_DEBUG=true`, before each step runs);
//! 5. [`Pipeline::pump`] the job's merged stdout+stderr pipe with a [`Kill`]
//!    for its tree: it returns when the pipe has closed and the tree has
//!    exited, or after a timeout (or a full disk: [`Ended::DiskFull`])
//!    killed the tree, saying which ([`Ended`]); the reason line ends the
//!    log (the spool and the file sink keep room for it);
//! 6. [`Pipeline::finish`] once: flushes the masked tail, seals the last
//!    chunk, waits for delivery and reports.
//!
//! At launcher start-up, [`upload::recover`] delivers what an earlier process
//! left in the spool.
//!
//! Network sinks (pre-signed URLs) get every chunk through the spool: written
//! there first, delivered by an upload thread, removed once delivered. Sinks
//! on this host (a file, stdout: [`sink::Sink::direct`]) take chunks of at
//! most [`DIRECT_CHUNK_MAX`] straight from memory on the pump thread; the
//! spool would only double their disk traffic.
//!
//! The pump reads the job's pipe on the calling thread (poll, read, mask,
//! chunk, write), so the pipe pushes back whenever the sink is slow and
//! there is no hand-over between threads (with two threads each read woke
//! both). After a short read it pauses up to 1 ms (`coalescing_pause`) so
//! that output gathers in the pipe: a job writing 4 KiB at a time (`base64`)
//! would otherwise wake the launcher once per write.
//!
//! Memory is bounded whatever the job's output rate: one 128 KiB read
//! buffer, the chunk being built (at most [`CHUNK_MAX`] plus one read), the
//! redactor's held-back bytes, and nothing for delivery (spooled chunks are
//! streamed from disk; direct sinks write the chunk being sealed).
//! [`Report::peak_buffered`] measures it; tests/logs_backpressure.rs holds
//! it under [`BUFFER_LIMIT`] (2 MiB) with a fast job and a slow sink.

pub mod error;
pub mod redact;
pub mod sink;
pub mod spool;
pub mod upload;

pub use error::LogError;

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::config::Config;
use crate::config::parse::format_duration;
use redact::{Matcher, Redactor};
use sink::Sink;
use spool::{Chunk, Spool, sha256};
use upload::{Delivered, OnDelivered, Retry, Uploader, deliver_direct};

/// Largest chunk.
pub const CHUNK_MAX: usize = 1 << 20;
/// A chunk for sinks on this host ([`sink::Sink::direct`]: a file, stdout)
/// is sealed once it holds this much (it may hold up to one read more).
/// Their chunks are writes, not objects: 1 MiB writes into a file,
/// taken turn about with the job's pipe, made the 1 GiB `--log-file` bench
/// (benches/exec_logs.sh) about 25% slower than 128 KiB ones, the size
/// `cat` writes.
pub const DIRECT_CHUNK_MAX: usize = 128 * 1024;
/// A chunk is sealed at most this long after its first byte arrived.
pub const CHUNK_INTERVAL: Duration = Duration::from_secs(1);
/// How often an attached [`Notes`] inbox is looked at while the job is quiet.
const NOTE_POLL: Duration = Duration::from_secs(1);

/// An inbox of lines for a running pipeline (see [`Pipeline::attach_notes`]).
#[derive(Debug, Default)]
pub struct Notes(std::sync::Mutex<Vec<String>>);

impl Notes {
    pub fn push(&self, line: String) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push(line);
    }

    fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Size of one read from the job's pipe.
const READ_SIZE: usize = 128 * 1024;
/// Room in the chunk buffer for launcher notes written between reads.
const NOTE_ROOM: usize = 4096;
/// The most a run's pipeline holds in memory (read buffers, the chunk being
/// built, the redactor's held-back bytes): [`Report::peak_buffered`] stays
/// under it whatever the job's output rate, because the job's pipe pushes
/// back.
pub const BUFFER_LIMIT: usize = 2 << 20;
/// See [`coalescing_pause`]: output rate (bytes/s) a job may keep up
/// without filling its pipe while the pump pauses.
const COALESCE_RATE: u64 = 1 << 30;
/// The longest pause after a short read (log latency stays well under the
/// chunk interval).
const COALESCE_MAX: Duration = Duration::from_millis(1);
/// Shorter pauses are not worth a timer.
const COALESCE_MIN: Duration = Duration::from_micros(200);
/// After SIGKILL, how long to wait for the pipe to close before giving up
/// on it (a process outside the killed tree still holds it).
const AFTER_KILL_WAIT: Duration = Duration::from_secs(5);

/// Settings of one run's pipeline.
#[derive(Debug, Clone)]
pub struct Options {
    /// The run's ULID: names the spool directory and the stdout JSON lines.
    pub run_id: String,
    /// `<state dir>/spool`.
    pub spool_root: PathBuf,
    /// No output for this long kills the job (`SPACELIFT_LAUNCHER_LOGS_TIMEOUT`).
    pub logs_timeout: Duration,
    /// The run may take this long in all (`SPACELIFT_LAUNCHER_RUN_TIMEOUT`).
    pub run_timeout: Duration,
    /// Between SIGTERM and SIGKILL (`LIFTOFF_KILL_GRACE`).
    pub kill_grace: Duration,
    pub chunk_max: usize,
    pub chunk_interval: Duration,
    pub retry: Retry,
}

impl Options {
    /// The defaults (those of an empty configuration) for run `run_id`
    /// spooling under `spool_root`; change fields with struct update syntax.
    pub fn new(run_id: &str, spool_root: PathBuf) -> Options {
        Options {
            run_id: run_id.to_string(),
            spool_root,
            logs_timeout: crate::config::DEFAULT_LOGS_TIMEOUT,
            run_timeout: crate::config::DEFAULT_RUN_TIMEOUT,
            kill_grace: crate::config::DEFAULT_KILL_GRACE,
            chunk_max: CHUNK_MAX,
            chunk_interval: CHUNK_INTERVAL,
            retry: Retry::default(),
        }
    }

    pub fn from_config(config: &Config, run_id: &str) -> Options {
        Options {
            logs_timeout: config.logs_timeout,
            run_timeout: config.run_timeout,
            kill_grace: config.kill_grace,
            ..Options::new(run_id, spool_root(config))
        }
    }
}

/// Where chunks are spooled: `<state dir>/spool`.
pub fn spool_root(config: &Config) -> PathBuf {
    config.state_dir.join("spool")
}

/// Adds the values of the variables named in `SPACELIFT_MASK_ENVS` (and any
/// `extra` names, e.g. `liftoff exec --mask NAME`) found in `env` to
/// `builder`. Returns warnings: names not set, values too short (from the
/// builder).
pub fn mask_env_secrets<'a>(
    builder: &mut redact::RedactorBuilder,
    names: impl IntoIterator<Item = &'a str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<String> {
    let mut warnings = Vec::new();
    for name in names {
        match env(name) {
            Some(v) => {
                builder.secret(name, v.as_bytes());
            }
            None => warnings.push(format!(
                "{name} is listed for masking but is not set; nothing to mask for it"
            )),
        }
    }
    warnings.extend(builder.warnings().iter().cloned());
    warnings
}

/// Adds the launcher's own secrets to `builder`: the pool token
/// (`SPACELIFT_TOKEN`, as set) and the pool private key (its PEM, the base64
/// of it as set in `SPACELIFT_POOL_PRIVATE_KEY`, and each line of the PEM
/// body on its own, so a partial print is masked too).
pub fn mask_pool_secrets(
    builder: &mut redact::RedactorBuilder,
    config: &Config,
    env: &dyn Fn(&str) -> Option<String>,
) {
    if let Some(token) = env("SPACELIFT_TOKEN") {
        builder.secret("SPACELIFT_TOKEN", token.trim().as_bytes());
        // The decoded document too: a job that finds the token and prints
        // it decoded is masked as well.
        let compact: String = token.chars().filter(|c| !c.is_whitespace()).collect();
        if let Ok(json) = crate::config::token::decode_base64(&compact) {
            builder.secret("SPACELIFT_TOKEN", &json);
        }
    }
    if let Some(raw) = env("SPACELIFT_POOL_PRIVATE_KEY") {
        builder.secret("SPACELIFT_POOL_PRIVATE_KEY", raw.trim().as_bytes());
    }
    if let Some(key) = &config.private_key {
        let pem = &key.pem.0;
        builder.secret(key.var(), pem);
        let text = String::from_utf8_lossy(pem);
        let body: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .collect();
        for line in &body {
            builder.literal(line.as_bytes());
        }
        builder.literal(body.concat().as_bytes());
    }
}

/// The pump's handle on the job's process tree. `terminate` is SIGTERM to
/// the whole tree; `kill` (after the grace period) is SIGKILL of everything
/// in it; `wait_exit` says whether the tree has exited. The sandbox supplies
/// one that kills its cgroup and watches its top process; tests kill a
/// process group.
///
/// The timeouts belong to the tree, not to the pipe: a job that closes its
/// output and runs on is still timed, because after the pipe closes the
/// pump keeps its watchdog going until `wait_exit` says the tree is gone.
pub trait Kill {
    fn terminate(&mut self);
    fn kill(&mut self);
    /// Waits up to `wait` for the tree to exit; true once it has. The
    /// default, for a handle that cannot tell, takes the closing of the pipe
    /// for the tree's exit (the timeouts then stop with the pipe): every
    /// handle on a real job should implement it ([`fd_ready`] on a pidfd).
    fn wait_exit(&mut self, wait: Duration) -> bool {
        let _ = wait;
        true
    }
}

/// Waits up to `wait` for `fd` to be readable (for a pidfd: the process has
/// exited; for a pipe: input or end of file). For [`Kill::wait_exit`].
pub fn fd_ready(fd: BorrowedFd<'_>, wait: Duration) -> bool {
    // A poll error on a pidfd means there is nothing left to wait for.
    wait_readable(fd, wait).unwrap_or(true)
}

/// How a [`Pipeline::pump`] ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The pipe closed and the tree exited.
    Closed,
    /// No output for this long: the tree was killed.
    NoOutput(Duration),
    /// The run took longer than this: the tree was killed.
    RunTimeout(Duration),
    /// The disk holding the log is full (a chunk went into the spool's
    /// reserve, or a file sink could not keep room ahead): the tree was
    /// killed so that the log keeps its end.
    DiskFull,
}

impl Ended {
    /// The last log line for a timeout ("no output for 7m0s: killed").
    pub fn reason(&self) -> Option<String> {
        match self {
            Ended::Closed => None,
            Ended::NoOutput(d) => Some(format!("no output for {}: killed", format_duration(*d))),
            Ended::RunTimeout(d) => Some(format!("run exceeded {}: killed", format_duration(*d))),
            Ended::DiskFull => Some(
                "the disk holding the run's log is full (did the job fill it?): killed so that the log is kept; free disk space there (LIFTOFF_STATE_DIR, or the log file's directory)"
                    .to_string(),
            ),
        }
    }
}

/// What the pipeline did, from [`Pipeline::finish`].
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Masked bytes written to chunks.
    pub bytes: u64,
    /// Chunks delivered in order; an error when delivery stopped.
    pub delivered: Delivered,
    /// Non-fatal problems (spool recovery notes, a pipe left open).
    pub warnings: Vec<String>,
    /// The most memory the pipeline's buffers held at once (the allocated
    /// read buffers, chunk and redactor buffers), in bytes: at most
    /// [`BUFFER_LIMIT`].
    pub peak_buffered: usize,
}

/// How chunks reach the sink.
enum Delivery {
    /// Spooled, then delivered by the upload thread (network sinks).
    Spooled(Uploader),
    /// Straight from memory on the pump thread (sinks on this host).
    Direct {
        sink: Box<dyn Sink>,
        on_delivered: Option<OnDelivered>,
        done: Delivered,
        rng: u64,
    },
}

/// One run's log pipeline.
pub struct Pipeline {
    /// Lines from outside the job (host health) written between reads.
    notes: Option<Arc<Notes>>,
    opts: Options,
    redactor: Redactor,
    spool: Arc<Spool>,
    delivery: Delivery,
    /// Masked bytes of the chunk being built.
    chunk: Vec<u8>,
    /// When the chunk's first byte arrived.
    chunk_started: Option<Instant>,
    next_seq: u64,
    started: Instant,
    bytes: u64,
    warnings: Vec<String>,
    /// The last byte of the last sealed chunk (a launcher line starts on a
    /// line of its own).
    last_sealed: Option<u8>,
    /// See [`Report::peak_buffered`].
    peak_buffered: usize,
}

impl Pipeline {
    /// Opens the run's spool and starts delivery to `sink`. `on_delivered` is
    /// called (on the upload thread) after each chunk is delivered.
    pub fn start(
        opts: Options,
        matcher: Arc<Matcher>,
        sink: Box<dyn Sink>,
        on_delivered: Option<OnDelivered>,
    ) -> Result<Pipeline, LogError> {
        if opts.chunk_max == 0 {
            return Err(LogError::Options(
                "the log chunk size must be at least 1 byte".into(),
            ));
        }
        let mut opts = opts;
        if sink.direct() {
            opts.chunk_max = opts.chunk_max.min(DIRECT_CHUNK_MAX);
        }
        let spool = Arc::new(Spool::open(&opts.spool_root, &opts.run_id)?);
        let (leftover, warnings) = spool.existing()?;
        let next_seq = leftover.last().map_or(0, |c| c.seq + 1);
        let delivery = if sink.direct() {
            let mut sink = sink;
            let mut on_delivered = on_delivered;
            let mut done = Delivered::default();
            let mut rng = crate::http::seed();
            // What an earlier process left for this run goes first.
            for chunk in leftover {
                upload::deliver(&spool, sink.as_mut(), &chunk, true, &opts.retry, &mut rng)?;
                if let Some(f) = on_delivered.as_mut() {
                    f(&chunk);
                }
                done.chunks += 1;
            }
            Delivery::Direct {
                sink,
                on_delivered,
                done,
                rng,
            }
        } else {
            let uploader = Uploader::start(spool.clone(), sink, opts.retry, on_delivered);
            for chunk in leftover {
                uploader.send_leftover(chunk);
            }
            Delivery::Spooled(uploader)
        };
        Ok(Pipeline {
            notes: None,
            redactor: Redactor::new(matcher.clone()),
            spool,
            delivery,
            // Room for a full chunk, one read and what the redactor held
            // back, so the buffer never grows again.
            chunk: Vec::with_capacity(
                opts.chunk_max.min(CHUNK_MAX) + READ_SIZE + matcher.max_len() + NOTE_ROOM,
            ),
            chunk_started: None,
            next_seq,
            started: Instant::now(),
            bytes: 0,
            warnings,
            last_sealed: None,
            peak_buffered: 0,
            opts,
        })
    }

    /// When the run's clock started (the run timeout counts from here).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Writes a launcher line into the log (masked like job output).
    pub fn line(&mut self, text: &str) -> Result<(), LogError> {
        // The job's output so far is final: the line interrupts it.
        self.flush_redactor(Instant::now());
        let at_line_start = self
            .chunk
            .last()
            .or(self.last_sealed.as_ref())
            .is_none_or(|&b| b == b'\n');
        let mut bytes = Vec::with_capacity(text.len() + 2);
        if !at_line_start {
            bytes.push(b'\n');
        }
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b'\n');
        self.input(&bytes, Instant::now())?;
        self.flush_redactor(Instant::now());
        Ok(())
    }

    /// The disk the log goes to is full: the spool used its reserve, or a
    /// direct sink (a file) could not keep room ahead.
    fn disk_full(&self) -> bool {
        self.spool.disk_full()
            || matches!(&self.delivery, Delivery::Direct { sink, .. } if sink.disk_full())
    }

    /// Appends what the redactor holds back (end of a stream) to the chunk.
    fn flush_redactor(&mut self, now: Instant) {
        let before = self.chunk.len();
        self.redactor.flush(&mut self.chunk);
        if self.chunk.len() > before {
            self.chunk_started.get_or_insert(now);
        }
    }

    /// With `SPACELIFT_DEBUG=true`: writes the exact command of a step, masked,
    /// before it runs: `+ 'arg 0' 'arg 1'` (each argument single-quoted as a
    /// shell would need).
    pub fn debug_command<S: AsRef<OsStr>>(&mut self, argv: &[S]) -> Result<(), LogError> {
        let words: Vec<String> = argv
            .iter()
            .map(|a| shell_quote(&a.as_ref().to_string_lossy()))
            .collect();
        self.line(&format!("+ {}", words.join(" ")))
    }

    /// Lines pushed into `notes` (e.g. by the host watcher) appear in this
    /// run's log, each on a line of its own, while the job runs.
    pub fn attach_notes(&mut self, notes: Arc<Notes>) {
        self.notes = Some(notes);
    }

    /// Writes pending notes after the masked output so far. The redactor's
    /// held-back bytes stay held: a secret the job is in the middle of
    /// printing is still masked when the rest arrives.
    fn take_notes(&mut self, now: Instant) -> Result<(), LogError> {
        let Some(notes) = &self.notes else {
            return Ok(());
        };
        let pending = notes.take();
        for text in pending {
            let mut bytes = Vec::with_capacity(text.len() + 2);
            if self
                .chunk
                .last()
                .or(self.last_sealed.as_ref())
                .is_some_and(|&b| b != b'\n')
            {
                bytes.push(b'\n');
            }
            bytes.extend_from_slice(text.as_bytes());
            bytes.push(b'\n');
            self.chunk.extend_from_slice(&bytes);
            self.chunk_started.get_or_insert(now);
            self.track_buffers();
            if self.chunk.len() >= self.opts.chunk_max {
                self.seal()?;
            }
        }
        Ok(())
    }

    /// Masks and chunks `data`.
    fn input(&mut self, data: &[u8], now: Instant) -> Result<(), LogError> {
        // Feed in pieces so the chunk never grows past chunk_max + READ_SIZE.
        for piece in data.chunks(READ_SIZE) {
            let before = self.chunk.len();
            self.redactor.write(piece, &mut self.chunk);
            if self.chunk.len() > before && self.chunk_started.is_none() {
                self.chunk_started = Some(now);
            }
            if self.chunk.len() >= self.opts.chunk_max
                && matches!(self.delivery, Delivery::Direct { .. })
            {
                // A direct sink's chunk is a write: all of it goes at once
                // (at most DIRECT_CHUNK_MAX plus one read), nothing is moved.
                self.seal()?;
            }
            while self.chunk.len() >= self.opts.chunk_max {
                // One buffer for the run: the full chunk goes out from it
                // and the rest (less than one read) moves to its front.
                let chunk = std::mem::take(&mut self.chunk);
                let sealed = self.seal_bytes(&chunk[..self.opts.chunk_max]);
                self.chunk = chunk;
                sealed?;
                self.chunk.drain(..self.opts.chunk_max);
                self.chunk_started = if self.chunk.is_empty() {
                    None
                } else {
                    Some(now)
                };
            }
        }
        self.track_buffers();
        Ok(())
    }

    /// Notes the memory the buffers hold now (see [`Report::peak_buffered`]).
    fn track_buffers(&mut self) {
        let now = READ_SIZE + self.chunk.capacity() + self.redactor.buffered();
        self.peak_buffered = self.peak_buffered.max(now);
    }

    /// Spools the chunk being built (if any) and queues it for delivery.
    fn seal(&mut self) -> Result<(), LogError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let body = std::mem::take(&mut self.chunk);
        let sealed = self.seal_bytes(&body);
        self.chunk = body;
        sealed?;
        self.chunk.clear();
        self.chunk_started = None;
        Ok(())
    }

    fn seal_bytes(&mut self, body: &[u8]) -> Result<(), LogError> {
        let seq = self.next_seq;
        match &mut self.delivery {
            Delivery::Spooled(uploader) => {
                let chunk: Chunk = self.spool.write(seq, body)?;
                uploader.send(chunk);
            }
            Delivery::Direct {
                sink,
                on_delivered,
                done,
                rng,
            } => {
                let chunk = Chunk {
                    run_id: self.opts.run_id.clone(),
                    seq,
                    len: body.len() as u64,
                    // Only worth its cost when someone reads it.
                    sha256: if on_delivered.is_some() {
                        sha256(body)
                    } else {
                        [0; 32]
                    },
                };
                deliver_direct(sink.as_mut(), &chunk, body, &self.opts.retry, rng)?;
                if let Some(f) = on_delivered.as_mut() {
                    f(&chunk);
                }
                done.chunks += 1;
            }
        }
        self.last_sealed = body.last().copied().or(self.last_sealed);
        self.next_seq += 1;
        self.bytes += body.len() as u64;
        Ok(())
    }

    /// Reads the job's merged output pipe until it closes and the tree has
    /// exited ([`Kill::wait_exit`]), masking, chunking and spooling it, on
    /// this thread: one `poll` then one `read` per wake-up, no hand-over
    /// between threads. On
    /// `SPACELIFT_LAUNCHER_LOGS_TIMEOUT` (no output) or
    /// `SPACELIFT_LAUNCHER_RUN_TIMEOUT` (counted from [`Pipeline::start`]) it
    /// calls `kill.terminate()`, then `kill.kill()` after the grace period
    /// (or as soon as the pipe closes, whichever is first, for what is left
    /// of the tree), writes the reason as the last log line and returns
    /// which timeout it was. An error means the spool could not be written
    /// (the job is killed then too: its output would be lost).
    ///
    /// `pipe` must be pollable (a pipe, a socket, a terminal); for any other
    /// reader use [`Pipeline::pump_reader`]. Callers that run a job put the
    /// calling thread under `SCHED_BATCH` for the call
    /// (`sandbox::sched::Batch`), so the pump's wake-ups never preempt it.
    pub fn pump<P: Read + AsFd>(
        &mut self,
        pipe: P,
        kill: &mut dyn Kill,
    ) -> Result<Ended, LogError> {
        let mut pipe = pipe;
        let mut buf = vec![0u8; READ_SIZE];
        let pause = coalescing_pause(pipe.as_fd());
        let mut last_output = Instant::now();
        let mut timed_out: Option<Ended> = None;
        let mut terminated_at: Option<Instant> = None;
        let mut killed_at: Option<Instant> = None;
        let mut failure: Option<LogError> = None;
        // The pipe is at end of file; the tree may still run (the timeouts
        // keep counting until it exits).
        let mut closed = false;
        loop {
            let now = Instant::now();
            // Timeouts (only the first one counts).
            if timed_out.is_none() {
                if self.disk_full() {
                    timed_out = Some(Ended::DiskFull);
                } else if now >= after(self.started, self.opts.run_timeout) {
                    timed_out = Some(Ended::RunTimeout(self.opts.run_timeout));
                } else if now >= after(last_output, self.opts.logs_timeout) {
                    timed_out = Some(Ended::NoOutput(self.opts.logs_timeout));
                }
                if timed_out.is_some() {
                    kill.terminate();
                    terminated_at = Some(now);
                }
            }
            if let (Some(t), None) = (terminated_at, killed_at) {
                if now >= after(t, self.opts.kill_grace) {
                    kill.kill();
                    killed_at = Some(now);
                }
            }
            if let Some(k) = killed_at {
                if now >= k + AFTER_KILL_WAIT {
                    self.warnings.push(if closed {
                        format!(
                            "the job's tree had not exited {} after it was killed; stopped waiting for it",
                            format_duration(AFTER_KILL_WAIT)
                        )
                    } else {
                        format!(
                            "the job's output pipe stayed open {} after its tree was killed; stopped reading it",
                            format_duration(AFTER_KILL_WAIT)
                        )
                    });
                    break;
                }
            }
            if let Some(t) = self.chunk_started {
                if now >= after(t, self.opts.chunk_interval) {
                    if let Err(e) = self.seal() {
                        failure = Some(e);
                        break;
                    }
                }
            }
            // Sleep until the next deadline or input.
            let mut next = if timed_out.is_none() {
                after(self.started, self.opts.run_timeout)
                    .min(after(last_output, self.opts.logs_timeout))
            } else if let Some(k) = killed_at {
                k + AFTER_KILL_WAIT
            } else {
                after(terminated_at.unwrap_or(now), self.opts.kill_grace)
            };
            if let Some(t) = self.chunk_started {
                next = next.min(after(t, self.opts.chunk_interval));
            }
            let mut wait = next.saturating_duration_since(Instant::now());
            if self.notes.is_some() {
                wait = wait.min(NOTE_POLL);
            }
            if closed {
                if kill.wait_exit(wait) {
                    break;
                }
                if let Err(e) = self.take_notes(Instant::now()) {
                    failure = Some(e);
                    break;
                }
                continue;
            }
            match wait_readable(pipe.as_fd(), wait) {
                Ok(true) => match pipe.read(&mut buf) {
                    // End of file: the timeouts go on until the tree exits.
                    Ok(0) => closed = true,
                    Ok(n) => {
                        let now = Instant::now();
                        last_output = now;
                        if let Err(e) = self.input(&buf[..n], now) {
                            failure = Some(e);
                            break;
                        }
                        if n < READ_SIZE / 2 && !pause.is_zero() {
                            // The pipe is drained: let output gather.
                            std::thread::sleep(pause);
                        }
                    }
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
                        ) => {}
                    Err(e) => {
                        self.warnings
                            .push(format!("reading the job's output failed: {e}"));
                        break;
                    }
                },
                Ok(false) => {}
                Err(e) => {
                    self.warnings
                        .push(format!("waiting for the job's output failed: {e}"));
                    break;
                }
            }
            if let Err(e) = self.take_notes(Instant::now()) {
                failure = Some(e);
                break;
            }
        }
        if let Some(e) = failure {
            // Output can no longer be kept: stop the job rather than lose it.
            if timed_out.is_none() {
                kill.terminate();
                std::thread::sleep(self.opts.kill_grace.min(Duration::from_secs(1)));
            }
            kill.kill();
            return Err(e);
        }
        if terminated_at.is_some() && killed_at.is_none() {
            // The pipe closed within the grace period; whatever of the tree
            // still lives without holding it (ignoring SIGTERM) dies now.
            kill.kill();
        }
        // The masked tail of this step's output is final now.
        self.flush_redactor(Instant::now());
        if let Some(reason) = timed_out.as_ref().and_then(Ended::reason) {
            self.line(&reason)?;
        }
        self.seal()?;
        Ok(timed_out.unwrap_or(Ended::Closed))
    }

    /// [`Pipeline::pump`] for any reader (a file, a chain of readers, a test's
    /// reader that splits at random): a thread copies it into a pipe, which
    /// is pumped. If the pump ends before the reader does (a timeout), the
    /// thread stops at its next write (the pipe is closed).
    pub fn pump_reader<R: Read + Send + 'static>(
        &mut self,
        reader: R,
        kill: &mut dyn Kill,
    ) -> Result<Ended, LogError> {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| {
            LogError::Output(format!("cannot create a pipe for the log reader: {e}"))
        })?;
        std::thread::Builder::new()
            .name("log-reader".into())
            .spawn(move || {
                let mut reader = reader;
                let _ = std::io::copy(&mut reader, &mut std::fs::File::from(w));
            })
            .map_err(|e| LogError::Output(format!("cannot start the log reader thread: {e}")))?;
        self.pump(std::fs::File::from(r), kill)
    }

    /// Seals the last chunk, waits for delivery, and reports.
    pub fn finish(mut self) -> Report {
        self.flush_redactor(Instant::now());
        let mut warnings = std::mem::take(&mut self.warnings);
        if let Err(e) = self.seal() {
            warnings.push(e.to_string());
        }
        // Nothing more is written: the disk-full reserve goes.
        self.spool.release_reserves();
        let delivered = match self.delivery {
            Delivery::Spooled(uploader) => uploader.finish(),
            Delivery::Direct {
                mut sink, mut done, ..
            } => {
                if let Err(e) = sink.finish() {
                    done.error.get_or_insert(e);
                }
                done
            }
        };
        if delivered.error.is_none() && delivered.left == 0 {
            if let Ok(s) = Arc::try_unwrap(self.spool) {
                s.close();
            }
        }
        Report {
            bytes: self.bytes,
            delivered,
            warnings,
            peak_buffered: self.peak_buffered,
        }
    }
}

/// How long the pump pauses after a short read (the pipe drained), so that
/// a job writing in small pieces (`base64` writes 4 KiB at a time) wakes the
/// launcher once per pause rather than once per write: the time a job
/// writing [`COALESCE_RATE`] takes to fill the pipe, at most
/// [`COALESCE_MAX`]. Zero when that is under [`COALESCE_MIN`] (a 64 KiB
/// pipe: pausing would throttle the job) or `fd` is not a pipe.
///
/// On the 1 GiB bench (benches/exec_logs.sh) a 1 ms pause took the
/// launcher's wake-ups from about 190,000 to about 20,000 and its CPU time
/// down by a third.
fn coalescing_pause(fd: BorrowedFd<'_>) -> Duration {
    let Ok(capacity) = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETPIPE_SZ) else {
        return Duration::ZERO;
    };
    let fill = Duration::from_secs_f64(f64::from(capacity.max(0)) / COALESCE_RATE as f64);
    if fill < COALESCE_MIN {
        Duration::ZERO
    } else {
        fill.min(COALESCE_MAX)
    }
}

/// Waits up to `wait` (rounded up to a millisecond) for `fd` to have input
/// or to be closed at the other end: true when a read will not block.
fn wait_readable(fd: BorrowedFd<'_>, wait: Duration) -> std::io::Result<bool> {
    let ms = wait.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(
        &mut fds,
        PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
    ) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `t + d`, with `d` capped at 100 years (configured durations come from
/// outside and must not overflow).
fn after(t: Instant, d: Duration) -> Instant {
    const CAP: Duration = Duration::from_secs(100 * 365 * 86_400);
    t.checked_add(d.min(CAP)).unwrap_or(t)
}

fn shell_quote(word: &str) -> String {
    if !word.is_empty()
        && word
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@%+".contains(&b))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons() {
        assert_eq!(
            Ended::NoOutput(Duration::from_secs(420)).reason().unwrap(),
            "no output for 7m0s: killed"
        );
        assert_eq!(
            Ended::RunTimeout(Duration::from_secs(4200))
                .reason()
                .unwrap(),
            "run exceeded 1h10m0s: killed"
        );
        assert_eq!(Ended::Closed.reason(), None);
    }

    #[test]
    fn options_and_masks_from_config() {
        let env: crate::config::Env = [
            ("SPACELIFT_LAUNCHER_LOGS_TIMEOUT", "2m"),
            ("SPACELIFT_LAUNCHER_RUN_TIMEOUT", "1h"),
            ("SPACELIFT_MASK_ENVS", "DB_PASSWORD,SHORT,MISSING"),
            ("LIFTOFF_STATE_DIR", "/var/lib/liftoff-test"),
        ]
        .into_iter()
        .collect();
        let config = Config::load(&env).config;
        let o = Options::from_config(&config, "01RUN");
        assert_eq!(o.logs_timeout, Duration::from_secs(120));
        assert_eq!(o.run_timeout, Duration::from_secs(3600));
        assert_eq!(o.spool_root, PathBuf::from("/var/lib/liftoff-test/spool"));
        let mut b = redact::RedactorBuilder::new();
        let lookup = |name: &str| match name {
            "DB_PASSWORD" => Some("correct horse".to_string()),
            "SHORT" => Some("ab".to_string()),
            _ => None,
        };
        let warnings =
            mask_env_secrets(&mut b, config.mask_envs.iter().map(String::as_str), &lookup);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings.iter().any(|w| w.contains("MISSING")));
        assert!(warnings.iter().any(|w| w.contains("SHORT")));
        assert!(b.patterns().iter().any(|p| p == b"correct horse"));
    }

    #[test]
    fn pool_key_and_token_are_masked() {
        use base64::Engine as _;
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQDM0123456789ab\n-----END PRIVATE KEY-----\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        let env: crate::config::Env = [("SPACELIFT_POOL_PRIVATE_KEY", b64.as_str())]
            .into_iter()
            .collect();
        let config = Config::load(&env).config;
        let mut b = redact::RedactorBuilder::new();
        let lookup = |name: &str| match name {
            "SPACELIFT_POOL_PRIVATE_KEY" => Some(b64.clone()),
            "SPACELIFT_TOKEN" => Some("eyJ2ZXJzaW9uIjoxfQ==".to_string()),
            _ => None,
        };
        mask_pool_secrets(&mut b, &config, &lookup);
        let mut r = redact::Redactor::new(b.build());
        let mut out = Vec::new();
        let text = format!(
            "a {b64} b {pem} c BKcwggSjAgEAAoIBAQDM0123456789ab d eyJ2ZXJzaW9uIjoxfQ== e\n"
        );
        r.write(text.as_bytes(), &mut out);
        r.flush(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "a *** b *** c *** d *** e\n"
        );
    }

    #[test]
    fn pauses_only_on_pipes_that_hold_a_millisecond_of_output() {
        use nix::fcntl::{FcntlArg, OFlag, fcntl};
        use std::os::fd::AsFd;
        let (r, _w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).unwrap();
        fcntl(r.as_fd(), FcntlArg::F_SETPIPE_SZ(64 << 10)).unwrap();
        assert_eq!(coalescing_pause(r.as_fd()), Duration::ZERO, "64 KiB pipe");
        // 1 MiB is the default /proc/sys/fs/pipe-max-size.
        fcntl(r.as_fd(), FcntlArg::F_SETPIPE_SZ(1 << 20)).unwrap();
        let p = coalescing_pause(r.as_fd());
        assert!(p > Duration::from_micros(900) && p <= COALESCE_MAX, "{p:?}");
        let f = tempfile::tempfile().unwrap();
        assert_eq!(coalescing_pause(f.as_fd()), Duration::ZERO, "regular file");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("terraform"), "terraform");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
