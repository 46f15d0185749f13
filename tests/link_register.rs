//! `liftoff run` against two real mosquitto brokers: registration, hello,
//! heartbeats, status changes, runs, duplicate and bad commands, the last
//! will on SIGKILL.

mod support;

use std::time::Duration;

use serde_json::json;
use support::brokers::Brokers;
use support::plane::{self, Plane, command, is_run, is_type};

const T: Duration = Duration::from_secs(20);

#[test]
fn registers_reports_runs_and_handles_bad_commands() {
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let mut l = plane::launch(&b, &dir.path().join("state"), &[]);
    let wid = l.worker_id();

    // hello first, in the primary region, with tags and host facts
    let hello = plane
        .wait_for(T, |v| is_type(v, "hello"))
        .unwrap_or_else(|| panic!("no hello: {}", l.stderr()));
    assert_eq!(hello["v"], 1);
    assert_eq!(hello["worker_id"], wid.as_str());
    assert_eq!(hello["region"], "eu-west-1");
    assert_eq!(hello["metadata"]["instance_id"], "i-test");
    assert!(hello["host"]["cpus"].as_u64().unwrap() >= 1);
    assert!(hello["host"]["memory_bytes"].as_u64().unwrap() > 0);
    assert_eq!(hello["slots"], 1);

    // heartbeats keep coming (interval 1s in tests)
    let n0 = plane
        .events()
        .iter()
        .filter(|v| is_type(v, "status"))
        .count();
    let skip = plane.events().len();
    for _ in 0..2 {
        let at = plane.events().len().max(skip);
        plane
            .wait_after(at, T, |v| is_type(v, "status"))
            .expect("heartbeat");
    }
    let n1 = plane
        .events()
        .iter()
        .filter(|v| is_type(v, "status"))
        .count();
    assert!(n1 >= n0 + 2, "heartbeats: {n0} then {n1}");

    // a run: accepted, started, BUSY, finished, IDLE
    let assign = command(
        "assign",
        json!({"run_id": "RUN1", "run_type": "write", "state": {"command": "sleep 1; exit 3"}}),
    );
    plane.send(&wid, &assign);
    plane.send(&wid, &assign); // the same command twice
    let again = command(
        "assign",
        json!({"run_id": "RUN1", "run_type": "write", "state": {"command": "exit 0"}}),
    );
    plane.send(&wid, &again); // same run, another command id
    let acc = plane
        .wait_for(T, |v| is_run(v, "RUN1", "accepted"))
        .expect("accepted");
    assert_eq!(acc["command_id"], assign["id"]);
    plane
        .wait_for(T, |v| {
            is_type(v, "status") && v["state"] == "BUSY" && v["runs"][0] == "RUN1"
        })
        .expect("BUSY");
    let fin = plane
        .wait_for(T, |v| is_run(v, "RUN1", "finished"))
        .expect("finished");
    assert_eq!(fin["exit_code"], 3);
    let skip = plane.events().len();
    plane
        .wait_after(skip, T, |v| is_type(v, "status") && v["state"] == "IDLE")
        .expect("IDLE after the run");
    let run_events: Vec<String> = plane
        .events()
        .iter()
        .filter(|v| is_type(v, "run") && v["run_id"] == "RUN1")
        .map(|v| v["phase"].as_str().unwrap().to_string())
        .collect();
    // one answer per command id (the repeat under the first id is not
    // answered again; the one under a new id is, for that id); one run
    let answers: Vec<serde_json::Value> = plane
        .events()
        .into_iter()
        .filter(|v| is_run(v, "RUN1", "accepted"))
        .collect();
    assert_eq!(answers.len(), 2, "{answers:?}");
    assert!(answers.iter().any(|v| v["command_id"] == assign["id"]));
    assert!(answers.iter().any(|v| v["command_id"] == again["id"]));
    let ran: Vec<String> = run_events.into_iter().filter(|p| p != "accepted").collect();
    assert_eq!(ran, vec!["started", "finished"], "one run, once");

    // bad payloads: error events, never a crash
    plane.send_raw(&wid, b"{not json".to_vec());
    plane
        .wait_for(T, |v| is_type(v, "error") && v["code"] == "malformed")
        .expect("malformed reported");
    let v2 = command("assign", json!({"run_id": "R2", "run_type": "read"}));
    let mut v2 = v2;
    v2["v"] = json!(2);
    plane.send(&wid, &v2);
    let e = plane
        .wait_for(T, |v| {
            is_type(v, "error") && v["code"] == "unsupported_version"
        })
        .expect("version reported");
    assert_eq!(e["ref_id"], v2["id"]);
    let big = command(
        "assign",
        json!({"run_id": "R3", "run_type": "read", "state": {"pad": "x".repeat(130 * 1024)}}),
    );
    plane.send(&wid, &big);
    plane
        .wait_for(T, |v| is_type(v, "error") && v["code"] == "oversized")
        .expect("oversized reported");
    plane.send(&wid, &command("reboot", json!({})));
    let bad_field = command("assign", json!({"run_id": "../etc", "run_type": "read"}));
    plane.send(&wid, &bad_field);
    plane
        .wait_for(T, |v| is_type(v, "error") && v["ref_id"] == bad_field["id"])
        .expect("bad run id reported");
    assert!(
        plane
            .events()
            .iter()
            .all(|v| !(is_type(v, "error")
                && v["message"].as_str().unwrap_or("").contains("reboot")))
    );
    assert!(
        l.stderr().contains("reboot"),
        "unknown types are logged: {}",
        l.stderr()
    );
    // still alive and working
    plane.send(
        &wid,
        &command(
            "assign",
            json!({"run_id": "RUN4", "run_type": "read", "state": {"command": "true"}}),
        ),
    );
    plane
        .wait_for(T, |v| is_run(v, "RUN4", "finished"))
        .expect("still takes runs");
    assert!(l.wait(Duration::from_millis(10)).is_none());

    // SIGKILL: the broker publishes the last will
    l.kill9();
    let gone = plane
        .wait_for(T, |v| is_type(v, "gone"))
        .expect("last will");
    assert_eq!(gone["crashed"], true);
    assert_eq!(gone["worker_id"], wid.as_str());
}
