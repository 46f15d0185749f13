//! Regional failover with two real brokers: the primary killed in the middle
//! of a run, events continue through the secondary, exactly once after
//! de-duplication and in order; fail-back once the primary is back.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::brokers::Brokers;
use support::plane::{self, Plane, command, is_run, is_type};

const T: Duration = Duration::from_secs(30);

fn durable(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|v| v.get("seq").is_some()).collect()
}

#[test]
fn primary_lost_mid_run_then_fail_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let l = plane::launch(&b, &dir.path().join("state"), &[]);
    let wid = l.worker_id();
    plane
        .wait_for(T, |v| is_type(v, "hello") && v["region"] == "eu-west-1")
        .expect("hello in the primary");

    let assign = command(
        "assign",
        json!({"run_id": "RUNA", "run_type": "write", "state": {"command": "sleep 3"}}),
    );
    plane.send(&wid, &assign);
    plane
        .wait_for(T, |v| is_run(v, "RUNA", "started"))
        .unwrap_or_else(|| panic!("started: {}", l.stderr()));
    b.primary().kill();

    let hello2 = plane.wait_for(T, |v| is_type(v, "hello") && v["region"] == "eu-central-1");
    assert!(hello2.is_some(), "hello in the secondary: {}", l.stderr());
    let fin = plane
        .wait_for(T, |v| is_run(v, "RUNA", "finished"))
        .expect("finished via the secondary");
    assert_eq!(fin["exit_code"], 0);
    let region_of_fin = plane
        .events_with_region()
        .into_iter()
        .find(|(_, v)| v["id"] == fin["id"])
        .map(|(r, _)| r)
        .unwrap();
    assert_eq!(region_of_fin, "eu-central-1");

    // a run entirely on the secondary
    plane.send(
        &wid,
        &command(
            "assign",
            json!({"run_id": "RUNB", "run_type": "read", "state": {"command": "true"}}),
        ),
    );
    plane
        .wait_for(T, |v| is_run(v, "RUNB", "finished"))
        .expect("run on the secondary");

    // the primary returns: fail back after it has been healthy a while
    b.primary().start();
    let skip = plane.events().len();
    plane
        .wait_after(skip, T, |v| {
            is_type(v, "hello") && v["region"] == "eu-west-1"
        })
        .unwrap_or_else(|| panic!("fail-back hello: {}", l.stderr()));
    plane.send(
        &wid,
        &command(
            "assign",
            json!({"run_id": "RUNC", "run_type": "read", "state": {"command": "true"}}),
        ),
    );
    plane
        .wait_for(T, |v| is_run(v, "RUNC", "finished"))
        .expect("run after fail-back");

    // every durable event exactly once after de-duplication, in seq order
    let events = plane.events();
    let d = durable(&events);
    let delivered = plane.delivered(&wid);
    assert_eq!(
        delivered.len(),
        d.len(),
        "the consumer got every durable event, in seq order"
    );
    let seqs: Vec<u64> = d.iter().map(|v| v["seq"].as_u64().unwrap()).collect();
    let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "no loss, no duplicate, in order");
    let phases: Vec<(String, String)> = d
        .iter()
        .filter(|v| is_type(v, "run"))
        .map(|v| {
            (
                v["run_id"].as_str().unwrap().into(),
                v["phase"].as_str().unwrap().into(),
            )
        })
        .collect();
    let want: Vec<(String, String)> = ["RUNA", "RUNB", "RUNC"]
        .iter()
        .flat_map(|r| {
            ["accepted", "started", "finished"]
                .iter()
                .map(move |p| (r.to_string(), p.to_string()))
        })
        .collect();
    assert_eq!(phases, want);
    assert!(!l.stderr().contains("panicked"));
}

/// A primary that stops answering (no RST, no FIN: a dead path) is noticed
/// by the keepalive watchdog and the worker moves to the secondary, keeping
/// its events.
#[test]
fn silent_primary_is_detected_by_keepalive() {
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let l = plane::launch(
        &b,
        &dir.path().join("state"),
        &[("LIFTOFF_FAILBACK_AFTER", "1h")],
    );
    let wid = l.worker_id();
    plane
        .wait_for(T, |v| is_type(v, "hello") && v["region"] == "eu-west-1")
        .expect("hello");
    b.brokers[0].pause();
    plane.send(
        &wid,
        &command(
            "assign",
            json!({"run_id": "SIL1", "run_type": "read", "state": {"command": "true"}}),
        ),
    );
    plane
        .wait_for(T, |v| is_type(v, "hello") && v["region"] == "eu-central-1")
        .unwrap_or_else(|| panic!("no failover from a silent primary: {}", l.stderr()));
    // the assign went to the paused broker too; the plane re-sends it
    let cmd = command(
        "assign",
        json!({"run_id": "SIL2", "run_type": "read", "state": {"command": "true"}}),
    );
    plane.send(&wid, &cmd);
    plane
        .wait_for(T, |v| is_run(v, "SIL2", "finished"))
        .expect("runs on the secondary");
    let log = l.stderr();
    assert!(
        log.contains("keepalive") || log.contains("acknowledged none") || log.contains("pingreq"),
        "{log}"
    );
    b.brokers[0].resume();
}
