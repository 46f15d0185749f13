//! Memory stays bounded whatever the job's output rate: a producer writing
//! 48 MiB as fast as it can into a real pipe, read by the pipeline into a
//! slow sink. The pipeline's buffers never hold more than
//! `logs::BUFFER_LIMIT` (2 MiB); with a sink on this host the pipe pushes
//! back on the producer (it cannot run ahead of delivery by more than the
//! pipeline's buffers and the pipe); with a network sink the spool on disk
//! takes the excess. Every byte arrives, in order, once.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use liftoff::logs::redact::RedactorBuilder;
use liftoff::logs::sink::{DeliverError, Sink};
use liftoff::logs::spool::Chunk;
use liftoff::logs::{BUFFER_LIMIT, Ended, Kill, Options, Pipeline};

const TOTAL: usize = 48 << 20;
/// Linux's default pipe capacity (the test's pipe is not resized).
const PIPE_CAPACITY: usize = 64 << 10;

struct NoKill;
impl Kill for NoKill {
    fn terminate(&mut self) {}
    fn kill(&mut self) {}
}

/// A sink that takes `delay` per chunk and keeps what it got.
struct SlowSink {
    direct: bool,
    delay: Duration,
    got: Arc<Mutex<Vec<u8>>>,
    count: Arc<AtomicU64>,
}

impl SlowSink {
    fn take(&mut self, bytes: &[u8]) {
        std::thread::sleep(self.delay);
        self.got.lock().unwrap().extend_from_slice(bytes);
        self.count.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    }
}

impl Sink for SlowSink {
    fn describe(&self) -> String {
        "a slow test sink".into()
    }

    fn deliver(&mut self, chunk: &Chunk, body: &mut std::fs::File) -> Result<(), DeliverError> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(body, chunk.len), &mut bytes)
            .map_err(|e| DeliverError::retry(e.to_string()))?;
        self.take(&bytes);
        Ok(())
    }

    fn direct(&self) -> bool {
        self.direct
    }

    fn deliver_bytes(&mut self, _chunk: &Chunk, bytes: &[u8]) -> Result<(), DeliverError> {
        self.take(bytes);
        Ok(())
    }
}

/// Lines of text no secret matches (so output equals input).
fn content() -> Vec<u8> {
    let mut t = Vec::with_capacity(TOTAL + 100);
    let mut i = 0u64;
    while t.len() < TOTAL {
        writeln!(t, "{i:010} the quick brown fox jumps over the lazy dog").unwrap();
        i += 1;
    }
    t.truncate(TOTAL);
    t
}

struct Outcome {
    /// Bytes the sink had when the producer's last write returned.
    delivered_when_written: u64,
    got: Vec<u8>,
    peak_buffered: usize,
    bytes: u64,
}

fn run(direct: bool, delay: Duration) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::new("01BACKPRESSURE", dir.path().join("spool"));
    let got = Arc::new(Mutex::new(Vec::new()));
    let count = Arc::new(AtomicU64::new(0));
    let sink = SlowSink {
        direct,
        delay,
        got: got.clone(),
        count: count.clone(),
    };
    // Secrets that never occur: the text is masked (scanned) but unchanged.
    let mut b = RedactorBuilder::new();
    for i in 0..100 {
        b.secret(
            &format!("S{i}"),
            format!("not-in-the-text-{i:04}").as_bytes(),
        );
    }
    let mut p = Pipeline::start(opts, b.build(), Box::new(sink), None).unwrap();

    let (r, w) = nix::unistd::pipe().unwrap();
    let text = content();
    let producer = {
        let text = text.clone();
        let count = count.clone();
        std::thread::spawn(move || {
            let mut w = std::fs::File::from(w);
            // As fast as the pipe takes it, in 64 KiB writes.
            for piece in text.chunks(64 << 10) {
                w.write_all(piece).unwrap();
            }
            count.load(Ordering::SeqCst)
        })
    };
    let ended = p.pump(std::fs::File::from(r), &mut NoKill).unwrap();
    assert_eq!(ended, Ended::Closed);
    let delivered_when_written = producer.join().unwrap();
    let report = p.finish();
    assert_eq!(report.delivered.error, None);
    assert_eq!(report.delivered.left, 0);
    let got = std::mem::take(&mut *got.lock().unwrap());
    assert!(
        got == text,
        "the sink got {} bytes, not the text",
        got.len()
    );
    Outcome {
        delivered_when_written,
        got,
        peak_buffered: report.peak_buffered,
        bytes: report.bytes,
    }
}

#[test]
fn a_slow_direct_sink_pushes_back_on_the_job_and_memory_stays_under_2_mib() {
    // 128 KiB chunks at 2 ms each: ~64 MB/s, far slower than the producer.
    let o = run(true, Duration::from_millis(2));
    assert_all_delivered_within_the_limit(&o);
    // The producer could not run ahead of delivery by more than the
    // pipeline's buffers and the pipe: it was held back.
    let ahead = TOTAL as u64 - o.delivered_when_written;
    assert!(
        ahead <= (BUFFER_LIMIT + PIPE_CAPACITY) as u64,
        "the producer finished {ahead} bytes ahead of delivery: nothing pushed back"
    );
}

#[test]
fn a_slow_network_sink_spools_the_excess_to_disk_and_memory_stays_under_2_mib() {
    // 1 MiB chunks at 20 ms each; the spool takes what the sink cannot yet.
    let o = run(false, Duration::from_millis(20));
    assert_all_delivered_within_the_limit(&o);
}

fn assert_all_delivered_within_the_limit(o: &Outcome) {
    assert_eq!(o.bytes, TOTAL as u64);
    assert_eq!(o.got.len(), TOTAL);
    assert!(
        o.peak_buffered <= BUFFER_LIMIT,
        "the pipeline held {} bytes at its peak (limit {BUFFER_LIMIT})",
        o.peak_buffered
    );
    assert!(o.peak_buffered > 0, "the peak was not measured");
}
