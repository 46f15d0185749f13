//! Issue 12, item 17, spool side: when the disk holding the log spool fills
//! (here a job-like producer fills an 8 MiB tmpfs that holds the spool), a
//! spooled pipeline keeps the output from before and after the fill, stops
//! the producer, and ends the log with the reason.
//!
//! Only network sinks (pre-signed URLs) are spooled; no object store runs
//! here, so a sink that collects what it is given stands in for one (it is
//! not `direct`, so every byte goes through the real spool on the small
//! disk). Needs root to mount the tmpfs; fails with the reason otherwise.

mod support;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use liftoff::logs::redact::RedactorBuilder;
use liftoff::logs::sink::{DeliverError, Sink};
use liftoff::logs::spool::Chunk;
use liftoff::logs::{Ended, Kill, Options, Pipeline};
use support::tmpfs::Tmpfs;

/// Stands in for a network sink (see the module comment): keeps every
/// delivered byte, in order.
struct Collect(Arc<Mutex<Vec<u8>>>);

impl Sink for Collect {
    fn describe(&self) -> String {
        "a collecting test sink".into()
    }

    fn deliver(&mut self, chunk: &Chunk, body: &mut std::fs::File) -> Result<(), DeliverError> {
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(body, chunk.len), &mut bytes)
            .map_err(|e| DeliverError::retry(e.to_string()))?;
        self.0.lock().unwrap().extend_from_slice(&bytes);
        Ok(())
    }
}

/// Terminating the "tree" stops the producer.
struct Stop(Arc<AtomicBool>);

impl Kill for Stop {
    fn terminate(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
    fn kill(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_producer_filling_the_spool_disk_keeps_its_spooled_log_and_the_reason() {
    let fs = Tmpfs::mount("size=8m,mode=0755");
    let got = Arc::new(Mutex::new(Vec::new()));
    let opts = Options::new("01DISKFULL00000000000000", fs.path.join("spool"));
    let mut b = RedactorBuilder::new();
    b.secret("S", b"not-in-the-output");
    let mut p = Pipeline::start(opts, b.build(), Box::new(Collect(got.clone())), None).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let (r, w) = nix::unistd::pipe().unwrap();
    let producer = {
        let stop = stop.clone();
        let fill = fs.path.join("fill");
        std::thread::spawn(move || {
            let mut w = std::fs::File::from(w);
            writeln!(w, "before-the-fill")?;
            // Like `head -c 64M /dev/zero > fill` on the 8 MiB disk.
            let mut f = std::fs::File::create(&fill)?;
            let zeros = vec![0u8; 64 << 10];
            let filled = (0..1024).try_for_each(|_| f.write_all(&zeros));
            writeln!(w, "fill ended: {}", i32::from(filled.is_err()))?;
            let mut i = 0u64;
            while !stop.load(Ordering::SeqCst) {
                i += 1;
                writeln!(w, "line {i} after the fill")?;
            }
            Ok::<(), std::io::Error>(())
        })
    };
    let ended = p.pump(std::fs::File::from(r), &mut Stop(stop)).unwrap();
    // The producer ends at the stop or when its pipe closes.
    let _ = producer.join().unwrap();
    let report = p.finish();
    assert_eq!(ended, Ended::DiskFull, "{:?}", report.warnings);
    assert_eq!(report.delivered.error, None);
    let log = String::from_utf8(std::mem::take(&mut *got.lock().unwrap())).unwrap();
    let tail = &log[log.len().saturating_sub(2000)..];
    assert!(log.contains("before-the-fill"), "{log:.2000}");
    assert!(log.contains("fill ended: 1"), "{log:.2000}");
    assert!(log.contains("after the fill"), "{log:.2000}");
    assert!(
        tail.contains("the disk holding the run's log is full"),
        "the reason does not end the log: {tail}"
    );
}
