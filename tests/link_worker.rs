//! Worker behaviour through real brokers: drain, cycle, first and second
//! SIGTERM, the shutdown grace, SIGKILL + restart re-sending unacked
//! events, and a reset pool (exit 78).

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;
use support::brokers::Brokers;
use support::pki::TestCa;
use support::plane::{self, Plane, command, is_run, is_type};

const T: Duration = Duration::from_secs(20);

fn assign(run: &str, cmd: &str) -> serde_json::Value {
    command(
        "assign",
        json!({"run_id": run, "run_type": "write", "state": {"command": cmd}}),
    )
}

/// No job process outlives the launcher: the pid written by the job is gone
/// (or a zombie awaiting its reaper).
fn assert_gone(pidfile: &std::path::Path) {
    let pid = std::fs::read_to_string(pidfile).unwrap();
    let proc_dir = format!("/proc/{}", pid.trim());
    let end = std::time::Instant::now() + Duration::from_secs(5);
    while std::path::Path::new(&proc_dir).exists() {
        let stat = std::fs::read_to_string(format!("{proc_dir}/stat")).unwrap_or_default();
        if stat.contains(") Z ") {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "job {pid} outlived the launcher"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn drain_then_first_and_second_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);

    // drain: DRAINED, runs rejected; undrain: IDLE, runs taken
    let mut l = plane::launch(&b, &dir.path().join("s1"), &[]);
    let wid = l.worker_id();
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    plane.send(&wid, &command("drain", json!({"on": true})));
    plane
        .wait_for(T, |v| is_type(v, "status") && v["state"] == "DRAINED")
        .expect("DRAINED");
    plane.send(&wid, &assign("D1", "true"));
    let r = plane
        .wait_for(T, |v| is_run(v, "D1", "rejected"))
        .expect("rejected while drained");
    assert!(r["reason"].as_str().unwrap().contains("drained"));
    plane.send(&wid, &command("drain", json!({"on": false})));
    let skip = plane.events().len();
    plane
        .wait_after(skip, T, |v| is_type(v, "status") && v["state"] == "IDLE")
        .expect("IDLE again");
    plane.send(&wid, &assign("D2", "true"));
    plane
        .wait_for(T, |v| is_run(v, "D2", "finished"))
        .expect("runs again");

    // first SIGTERM: DRAINED, the current run finishes, bye, exit 0
    plane.send(&wid, &assign("S1", "sleep 2; exit 0"));
    plane
        .wait_for(T, |v| is_run(v, "S1", "started"))
        .expect("started");
    l.signal(Signal::SIGTERM);
    let skip = plane.events().len();
    plane
        .wait_after(skip, T, |v| is_type(v, "status") && v["state"] == "DRAINED")
        .expect("DRAINED on SIGTERM");
    assert_eq!(l.wait(T), Some(0), "{}", l.stderr());
    let fin = plane
        .wait_for(T, |v| is_run(v, "S1", "finished"))
        .expect("run finished");
    assert_eq!(fin["exit_code"], 0);
    let bye = plane
        .wait_for(T, |v| is_type(v, "bye") && v["worker_id"] == wid.as_str())
        .expect("bye");
    assert_eq!(bye["reason"], "shutdown");
    let ev = plane.events();
    let fin_at = ev.iter().position(|v| v["id"] == fin["id"]).unwrap();
    let bye_at = ev.iter().position(|v| v["id"] == bye["id"]).unwrap();
    assert!(fin_at < bye_at, "the run's end is reported before bye");
    assert!(
        !ev.iter()
            .any(|v| is_type(v, "gone") && v["worker_id"] == wid.as_str()),
        "no last will on a clean exit"
    );

    // second SIGTERM: the run is cancelled gracefully, then exit 0
    let mut l = plane::launch(&b, &dir.path().join("s2"), &[]);
    let wid = l.worker_id();
    plane
        .wait_for(T, |v| is_type(v, "hello") && v["worker_id"] == wid.as_str())
        .expect("hello");
    let pidfile = dir.path().join("s2.pid");
    plane.send(
        &wid,
        &assign(
            "S2",
            &format!("echo $$ > {}; exec sleep 60", pidfile.display()),
        ),
    );
    plane
        .wait_for(T, |v| is_run(v, "S2", "started"))
        .expect("started");
    l.signal(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(300));
    l.signal(Signal::SIGINT);
    assert_eq!(l.wait(T), Some(0), "{}", l.stderr());
    assert_gone(&pidfile);
    let failed = plane
        .wait_for(T, |v| is_run(v, "S2", "failed"))
        .expect("cancelled run reported");
    assert!(
        failed["reason"].as_str().unwrap().contains("signal"),
        "{failed}"
    );
    plane
        .wait_for(T, |v| is_type(v, "bye") && v["worker_id"] == wid.as_str())
        .expect("bye");

    // shutdown grace over: the run is cancelled, exit 0
    let mut l = plane::launch(
        &b,
        &dir.path().join("s3"),
        &[("LIFTOFF_SHUTDOWN_GRACE", "1s")],
    );
    let wid = l.worker_id();
    plane
        .wait_for(T, |v| is_type(v, "hello") && v["worker_id"] == wid.as_str())
        .expect("hello");
    plane.send(&wid, &assign("S3", "sleep 60"));
    plane
        .wait_for(T, |v| is_run(v, "S3", "started"))
        .expect("started");
    l.signal(Signal::SIGTERM);
    assert_eq!(l.wait(T), Some(0), "{}", l.stderr());
    plane
        .wait_for(T, |v| is_run(v, "S3", "failed"))
        .expect("run cancelled after the grace");
}

#[test]
fn cycle_cancels_and_leaves_within_20s() {
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let mut l = plane::launch(
        &b,
        &dir.path().join("state"),
        &[("LIFTOFF_KILL_GRACE", "30s")],
    );
    let wid = l.worker_id();
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    // a job that ignores SIGTERM: cycle must still end within 20 s
    let pidfile = dir.path().join("c1.pid");
    plane.send(
        &wid,
        &assign(
            "C1",
            &format!("trap '' TERM; echo $$ > {}; sleep 60", pidfile.display()),
        ),
    );
    plane
        .wait_for(T, |v| is_run(v, "C1", "started"))
        .expect("started");
    plane.send(&wid, &command("cycle", json!({})));
    assert_eq!(l.wait(Duration::from_secs(20)), Some(0), "{}", l.stderr());
    assert_gone(&pidfile);
    plane
        .wait_for(T, |v| is_run(v, "C1", "failed"))
        .expect("run reported");
    let bye = plane.wait_for(T, |v| is_type(v, "bye")).expect("bye");
    assert_eq!(bye["reason"], "cycle");
}

#[test]
fn sigkill_then_restart_resends_unacked_events() {
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    plane
        .auto_ack
        .store(false, std::sync::atomic::Ordering::Relaxed);
    let state = dir.path().join("state");
    let mut l = plane::launch(&b, &state, &[]);
    let wid = l.worker_id();
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    plane.send(&wid, &assign("K1", "exit 7"));
    let fin = plane
        .wait_for(T, |v| is_run(v, "K1", "finished"))
        .expect("finished");
    let acc = plane.wait_for(T, |v| is_run(v, "K1", "accepted")).unwrap();
    l.kill9();
    let before = plane.copies(fin["id"].as_str().unwrap());

    plane
        .auto_ack
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let l2 = plane::launch(&b, &state, &[]);
    assert_eq!(l2.worker_id(), wid, "the worker keeps its id");
    // the plane, not having seen an ack-able answer, re-sends the assign:
    // the restarted worker must not run it again
    plane.send(&wid, &assign("K1", "exit 7"));
    let end = std::time::Instant::now() + T;
    while plane.copies(fin["id"].as_str().unwrap()) <= before {
        assert!(
            std::time::Instant::now() < end,
            "unacked events were not re-sent: {}",
            l2.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(plane.copies(acc["id"].as_str().unwrap()) >= 2);
    // after the plane's acks the outbox empties (only its header line left)
    let end = std::time::Instant::now() + T;
    loop {
        let text = std::fs::read_to_string(state.join("outbox.jsonl")).unwrap();
        let adds = text.lines().filter(|l| l.contains("\"add\"")).count();
        let acks = text.lines().filter(|l| l.contains("\"ack\"")).count();
        if adds == acks {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "outbox not emptied: {text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // the run itself is not started again
    let runs: Vec<_> = plane
        .events()
        .into_iter()
        .filter(|v| is_run(v, "K1", "started"))
        .collect();
    assert_eq!(runs.len(), 1);
}

#[test]
fn revoked_certificate_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let mut l = plane::launch(&b, &dir.path().join("state"), &[]);
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    // the pool's certificate is revoked; the plane's is not
    let crl = support::brokers::revoke(&b.pool.ca, &b.pool.cert);
    for br in &mut b.brokers {
        br.check_crl(&crl);
    }
    assert_eq!(l.wait(Duration::from_secs(30)), Some(78), "{}", l.stderr());
    assert!(
        l.stderr()
            .contains("was the worker pool reset? Generate a new token"),
        "{}",
        l.stderr()
    );
    assert!(l.stderr().contains("CertificateRevoked"), "{}", l.stderr());
}

#[test]
fn reset_pool_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let mut l = plane::launch(&b, &dir.path().join("state"), &[]);
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    // the pool is reset: the brokers now trust another CA only
    let other = TestCa::new(&dir.path().join("ca2"), "ca2");
    for br in &mut b.brokers {
        br.distrust(&other);
    }
    assert_eq!(l.wait(Duration::from_secs(30)), Some(78), "{}", l.stderr());
    assert!(
        l.stderr().contains("the broker rejected this pool's certificate: was the worker pool reset? Generate a new token"),
        "{}",
        l.stderr()
    );
}

#[test]
fn slots_bound_concurrent_runs() {
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let l = plane::launch(&b, &dir.path().join("state"), &[("LIFTOFF_WORKERS", "2")]);
    let wid = l.worker_id();
    let hello = plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    assert_eq!(hello["slots"], 2);
    plane.send(&wid, &assign("P1", "sleep 3"));
    plane.send(&wid, &assign("P2", "sleep 3"));
    plane
        .wait_for(T, |v| is_run(v, "P1", "started"))
        .expect("P1");
    plane
        .wait_for(T, |v| is_run(v, "P2", "started"))
        .expect("P2 runs beside P1");
    plane
        .wait_for(T, |v| {
            is_type(v, "status") && v["state"] == "BUSY" && v["runs"].as_array().unwrap().len() == 2
        })
        .expect("BUSY with two runs");
    plane.send(&wid, &assign("P3", "true"));
    let r = plane
        .wait_for(T, |v| is_run(v, "P3", "rejected"))
        .expect("third rejected");
    assert!(r["reason"].as_str().unwrap().contains("slot"), "{r}");
    plane
        .wait_for(T, |v| is_run(v, "P2", "finished"))
        .expect("P2 done");
}
