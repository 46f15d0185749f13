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
    let skip = plane.events().len();
    l.signal(Signal::SIGTERM);
    // the second signal once the first was seen (DRAINED)
    plane
        .wait_after(skip, T, |v| {
            is_type(v, "status") && v["worker_id"] == wid.as_str() && v["state"] == "DRAINED"
        })
        .expect("DRAINED on the first SIGTERM");
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
    plane.set_auto_ack(false);
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

    plane.set_auto_ack(true);
    let l2 = plane::launch(&b, &state, &[]);
    assert_eq!(l2.worker_id(), wid, "the worker keeps its id");
    // the plane, not having seen an ack-able answer, re-sends the assign:
    // the restarted worker must not run it again, but answers it
    // (re-sent with the same id until answered, as a plane does: one sent
    // before the worker is connected is lost)
    let again = assign("K1", "exit 7");
    let end = std::time::Instant::now() + T;
    loop {
        plane.send(&wid, &again);
        let answered = plane.wait_for(Duration::from_secs(2), |v| {
            is_run(v, "K1", "accepted") && v["command_id"] == again["id"]
        });
        if answered.is_some() {
            break;
        }
        assert!(
            std::time::Instant::now() < end,
            "the repeated assign was not answered: {}",
            l2.stderr()
        );
    }
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
        l.stderr().contains("the control plane rejected this pool's certificate: was the worker pool reset? Generate a new token"),
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

/// After a restart with unacked events in the outbox, the new connection
/// carries `hello`, then `status`, then the re-sent events, oldest first
/// (docs/protocol.md, "Regions and failover").
#[test]
fn restart_sends_hello_then_status_then_unacked_events() {
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    plane.set_auto_ack(false);
    let state = dir.path().join("state");
    let mut l = plane::launch(&b, &state, &[]);
    let wid = l.worker_id();
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    plane.send(&wid, &assign("O1", "exit 0"));
    plane
        .wait_for(T, |v| is_run(v, "O1", "finished"))
        .expect("finished");
    let ids: Vec<serde_json::Value> = ["accepted", "started", "finished"]
        .iter()
        .map(|p| plane.wait_for(T, |v| is_run(v, "O1", p)).unwrap()["id"].clone())
        .collect();
    l.kill9();
    // everything from the first process has arrived once its last will has
    plane
        .wait_for(T, |v| is_type(v, "gone") && v["worker_id"] == wid.as_str())
        .expect("the last will of the killed launcher");
    let skip = plane.arrivals().len();

    let l2 = plane::launch(&b, &state, &[]);
    let end = std::time::Instant::now() + T;
    let after = loop {
        let after: Vec<serde_json::Value> = plane.arrivals()[skip..]
            .iter()
            .filter(|(region, _)| region == "eu-west-1")
            .map(|(_, v)| v.clone())
            .collect();
        if ids.iter().all(|id| after.iter().any(|v| v["id"] == *id)) {
            break after;
        }
        assert!(
            std::time::Instant::now() < end,
            "unacked events were not re-sent: {}",
            l2.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let kinds: Vec<String> = after
        .iter()
        .take(5)
        .map(|v| match v["phase"].as_str() {
            Some(p) => format!("run:{p}"),
            None => v["type"].as_str().unwrap().to_string(),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "hello",
            "status",
            "run:accepted",
            "run:started",
            "run:finished"
        ],
        "{}",
        l2.stderr()
    );
    assert_eq!(
        after[2..5]
            .iter()
            .map(|v| v["id"].clone())
            .collect::<Vec<_>>(),
        ids,
        "the re-sends keep their ids and order"
    );
    // the status says which seq the plane must hold to know everything,
    // and that no run is running (O1 is over; a lost one would be missing)
    assert_eq!(after[1]["last_seq"], after[4]["seq"], "{}", after[1]);
    assert_eq!(after[1]["runs"], json!([]));
}

/// The plane re-sends an `assign` until it sees an answer; a repeat under
/// a new command id for a run the worker already took is answered with
/// `accepted` for that id (the run is not started again), whether the run
/// is still running or over. A run the worker refused may be assigned
/// again later.
#[test]
fn a_repeated_assign_under_a_new_id_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let l = plane::launch(&b, &dir.path().join("state"), &[]);
    let wid = l.worker_id();
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    let first = assign("DUP1", "sleep 2");
    plane.send(&wid, &first);
    plane
        .wait_for(T, |v| is_run(v, "DUP1", "started"))
        .expect("started");
    for _ in 0..2 {
        // while it runs, then once it is over
        let again = assign("DUP1", "sleep 2");
        plane.send(&wid, &again);
        plane
            .wait_for(T, |v| {
                is_run(v, "DUP1", "accepted") && v["command_id"] == again["id"]
            })
            .unwrap_or_else(|| panic!("no answer to the repeated assign: {}", l.stderr()));
        plane
            .wait_for(T, |v| is_run(v, "DUP1", "finished"))
            .expect("finished");
    }
    let started = plane
        .events()
        .into_iter()
        .filter(|v| is_run(v, "DUP1", "started"))
        .count();
    assert_eq!(started, 1, "the run ran once");

    // refused while drained, taken once undrained
    plane.send(&wid, &command("drain", json!({"on": true})));
    plane
        .wait_for(T, |v| is_type(v, "status") && v["state"] == "DRAINED")
        .expect("DRAINED");
    plane.send(&wid, &assign("DUP2", "true"));
    plane
        .wait_for(T, |v| is_run(v, "DUP2", "rejected"))
        .expect("rejected while drained");
    plane.send(&wid, &command("drain", json!({"on": false})));
    let skip = plane.events().len();
    plane
        .wait_after(skip, T, |v| is_type(v, "status") && v["state"] == "IDLE")
        .expect("IDLE again");
    plane.send(&wid, &assign("DUP2", "true"));
    plane
        .wait_for(T, |v| is_run(v, "DUP2", "finished"))
        .unwrap_or_else(|| panic!("a refused run can be assigned again: {}", l.stderr()));
}

/// docs/protocol.md, "Lost runs": a run that was running when its launcher
/// was SIGKILLed gets no `failed` from the worker; the plane finds it with
/// the documented rule (missing from the `runs` of the status after the new
/// `hello`, no terminal event up to its `last_seq`), and a run that ended
/// before the kill is not counted. The killed launcher's `gone` is stale
/// once the new `hello` is in.
#[test]
fn a_run_lost_with_a_killed_launcher_is_found_by_the_plane() {
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let state = dir.path().join("state");
    let mut l = plane::launch(&b, &state, &[("LIFTOFF_WORKERS", "2")]);
    let wid = l.worker_id();
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    let pidfile = dir.path().join("lost.pid");
    plane.send(
        &wid,
        &assign(
            "LOST1",
            &format!("echo $$ > {}; exec sleep 60", pidfile.display()),
        ),
    );
    plane.send(&wid, &assign("DONE1", "exit 0"));
    plane
        .wait_for(T, |v| is_run(v, "LOST1", "started"))
        .expect("started");
    plane
        .wait_for(T, |v| is_run(v, "DONE1", "finished"))
        .expect("finished");
    let hellos = plane
        .events()
        .iter()
        .filter(|v| is_type(v, "hello"))
        .count();
    l.kill9();
    plane
        .wait_for(T, |v| is_type(v, "gone") && v["worker_id"] == wid.as_str())
        .expect("gone");
    assert!(plane.is_gone(&wid));

    let l2 = plane::launch(&b, &state, &[("LIFTOFF_WORKERS", "2")]);
    let end = std::time::Instant::now() + T;
    let lost = loop {
        let new_hello = plane
            .events()
            .iter()
            .filter(|v| is_type(v, "hello"))
            .count()
            > hellos;
        if new_hello && let Some(lost) = plane.lost_runs(&wid, &["LOST1", "DONE1"]) {
            break lost;
        }
        assert!(
            std::time::Instant::now() < end,
            "no status after the new hello: {}",
            l2.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(lost, ["LOST1"]);
    assert!(
        !plane.is_gone(&wid),
        "the old gone is stale after the new hello"
    );
    assert!(
        !plane.events().iter().any(|v| is_run(v, "LOST1", "failed")),
        "the worker does not report a run it lost"
    );
    // the orphaned job of the killed launcher (no sandbox in test mode)
    if let Ok(pid) = std::fs::read_to_string(&pidfile) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid.trim().parse().unwrap()),
            Signal::SIGKILL,
        );
    }
}
