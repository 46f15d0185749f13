//! Host-health warnings reach the log of a running run: a starved host
//! (recorded /proc/stat format, 63% steal) observed while a job runs puts the
//! warning line into that run's log, on a line of its own, between the job's
//! lines, without breaking the masking of a secret the job is printing.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use liftoff::hostwatch::{self, HostWatch, Sources, Thresholds};
use liftoff::logs::redact::RedactorBuilder;
use liftoff::logs::sink::FileSink;
use liftoff::logs::{Kill, Options, Pipeline};
use support::sandbox::eventually;

struct NoKill;
impl Kill for NoKill {
    fn terminate(&mut self) {}
    fn kill(&mut self) {}
}

fn proc_fixture(stat: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(
        Path::new("tests/fixtures/proc").join(stat),
        d.path().join("stat"),
    )
    .unwrap();
    d
}

/// The bound of a wait for the job or the log (for a stuck test, not a
/// timing).
const BOUND: Duration = Duration::from_secs(30);

#[test]
fn a_starved_host_warns_in_the_running_runs_log() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let opts = Options {
        chunk_interval: Duration::from_millis(200),
        ..Options::new("01STARVED", dir.path().join("spool"))
    };
    let mut b = RedactorBuilder::new();
    b.secret("TOKEN", b"hunter2-very-secret");
    let mut p = Pipeline::start(
        opts,
        b.build(),
        Box::new(FileSink::create(&log).unwrap()),
        None,
    )
    .unwrap();
    let board = std::sync::Arc::new(hostwatch::Board::default());
    p.attach_notes(board.subscribe());

    // The job prints a line, then half a secret, says so (a marker file),
    // waits until the test lets it go on (another marker), then the rest.
    let printed = dir.path().join("printed");
    let go = dir.path().join("go");
    let mut child = Command::new("/bin/sh")
        .args([
            "-c",
            "echo compiling; printf 'token=hunter2-v'; touch \"$1\"; \
             i=0; while [ ! -e \"$2\" ] && [ $i -lt 6000 ]; do sleep 0.01; i=$((i+1)); done; \
             echo 'ery-secret'; echo done",
            "job",
        ])
        .arg(&printed)
        .arg(&go)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();

    // Meanwhile the launcher's sampler sees the starved host, once the job
    // is in the middle of its secret; the job goes on once the warning is
    // in the log.
    let sampler_board = board.clone();
    let log_seen = log.clone();
    let sampler = std::thread::spawn(move || {
        let mut w = HostWatch::new(Thresholds::default());
        let a = proc_fixture("stat-starved.0");
        let b = proc_fixture("stat-starved.1");
        let src = |d: &tempfile::TempDir| Sources {
            proc_dir: d.path().into(),
            job_cpu_stat: None,
            disks: vec![],
        };
        w.observe(0, &hostwatch::sample(&src(&a)));
        let job_printed = eventually(BOUND, || printed.exists());
        for warning in w.observe(60, &hostwatch::sample(&src(&b))) {
            sampler_board.publish(&warning.line);
        }
        let logged = eventually(BOUND, || {
            std::fs::read_to_string(&log_seen).is_ok_and(|t| t.contains("host CPU steal"))
        });
        std::fs::write(&go, "").unwrap();
        assert!(job_printed, "the job never printed the first half");
        assert!(logged, "the warning never reached the run log");
    });
    p.pump(out, &mut NoKill).unwrap();
    sampler.join().unwrap();
    child.wait().unwrap();
    let report = p.finish();
    assert!(report.delivered.error.is_none(), "{:?}", report.delivered);
    let text = std::fs::read_to_string(&log).unwrap();
    let warning = "liftoff: host CPU steal 63% over the last 60 s: on burstable instances (t3) this usually means CPU credits are exhausted; runs will be slow";
    assert!(
        text.lines().any(|l| l == warning),
        "no warning line in the run log:\n{text}"
    );
    assert!(text.starts_with("compiling\n"), "{text}");
    assert!(
        !text.contains("hunter2"),
        "the secret split around the warning leaked:\n{text}"
    );
    // The secret the job was in the middle of printing is masked when it ends.
    assert!(
        text.contains("\n***\n") && text.trim_end().ends_with("done"),
        "{text}"
    );
}
