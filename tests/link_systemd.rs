//! `liftoff run` under systemd's notify protocol, with a real broker: READY=1
//! once the link has started, STATUS= lines that follow the worker's state,
//! WATCHDOG=1 pings from the main loop; and the host-health figures in its
//! heartbeats.

mod support;

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use serde_json::json;
use support::brokers::Brokers;
use support::plane::{self, Plane, command, is_type};

#[test]
fn ready_status_and_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let sock_str = sock_path.display().to_string();
    let mut l = plane::launch(
        &b,
        &dir.path().join("state"),
        &[
            ("NOTIFY_SOCKET", sock_str.as_str()),
            ("WATCHDOG_USEC", "2000000"),
        ],
    );
    let wid = l.worker_id();
    plane
        .wait_for(Duration::from_secs(20), |v| is_type(v, "hello"))
        .unwrap_or_else(|| panic!("no hello: {}", l.stderr()));

    let assign = command(
        "assign",
        json!({"run_id": "RUNSD", "run_type": "write", "state": {"command": "sleep 2"}}),
    );
    plane.send(&wid, &assign);

    let mut got: Vec<String> = Vec::new();
    let until = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 512];
    while Instant::now() < until {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let busy = got.iter().any(|m| m.starts_with("STATUS=BUSY run RUNSD"));
        let idle_after = got
            .iter()
            .skip_while(|m| !m.starts_with("STATUS=BUSY"))
            .any(|m| m.starts_with("STATUS=IDLE"));
        let pings = got.iter().filter(|m| *m == "WATCHDOG=1").count();
        if busy && idle_after && pings >= 3 {
            break;
        }
    }
    assert!(got.iter().any(|m| m == "READY=1"), "no READY=1: {got:?}");
    assert!(got.iter().any(|m| m.starts_with("STATUS=IDLE")), "{got:?}");
    assert!(
        got.iter().any(|m| m.starts_with("STATUS=BUSY run RUNSD")),
        "{got:?}"
    );
    assert!(
        got.iter().filter(|m| *m == "WATCHDOG=1").count() >= 3,
        "watchdog pings: {got:?}"
    );

    // Heartbeats carry the host's figures.
    let status = plane
        .wait_for(Duration::from_secs(10), |v| {
            is_type(v, "status") && v["health"].as_array().is_some_and(|h| !h.is_empty())
        })
        .expect("a status with host health");
    let health: Vec<String> = status["health"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    assert!(
        health
            .iter()
            .any(|h| h.starts_with("memory_available_pct=")),
        "{health:?}"
    );
    assert!(
        health.iter().any(|h| h.starts_with("disk_state_used_pct=")),
        "{health:?}"
    );
    l.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(l.wait(Duration::from_secs(20)), Some(0));
}
