//! `LIFTOFF_METRICS_ADDR` end to end, with real mosquitto brokers, the MQTT
//! plane double (and the long-poll one) and the launcher binary:
//! `/healthz`, `/readyz` and `/metrics` (checked by `promtool check
//! metrics`) as a worker takes runs, is drained, fails over and back, loses
//! every region, keeps events unacknowledged, fills its disk (a real tmpfs),
//! is reset, and leaves; a taken or invalid address is exit 78; and a flood
//! of scrapes and half-open clients leaves heartbeats and runs alone.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;
use support::brokers::{Brokers, free_ports};
use support::plane::{self, Plane, command, is_run, is_type};
use support::scrape::{get, promtool_check, value, wait, wait_metric};

const T: Duration = Duration::from_secs(30);

fn assign(run: &str, cmd: &str) -> serde_json::Value {
    command(
        "assign",
        json!({"run_id": run, "run_type": "write", "state": {"command": cmd}}),
    )
}

fn addr() -> String {
    format!("127.0.0.1:{}", free_ports(1)[0])
}

const PRIMARY: &str = "liftoff_link_connected{region=\"eu-west-1\",transport=\"mqtt\"}";
const SECONDARY: &str = "liftoff_link_connected{region=\"eu-central-1\",transport=\"mqtt\"}";

#[test]
fn metrics_and_readiness_follow_a_real_worker() {
    let dir = support::runs::open_tempdir();
    let mut b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let a = addr();
    let mut l = plane::launch(
        &b,
        &dir.path().join("state"),
        &[("LIFTOFF_METRICS_ADDR", &a), ("LIFTOFF_WORKERS", "2")],
    );
    let wid = l.worker_id();
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    wait(&a, "/readyz", T, "ready once connected", |s, b| {
        s == 200 && b == "ready\n"
    });
    assert_eq!(get(&a, "/healthz"), (200, "ok\n".into()));
    let (status, body) = get(&a, "/nope");
    assert_eq!(status, 404, "{body}");
    let text = get(&a, "/metrics").1;
    promtool_check(&text);
    assert_eq!(value(&text, PRIMARY), Some(1.0), "{text}");
    assert_eq!(value(&text, SECONDARY), Some(0.0));
    assert_eq!(value(&text, "liftoff_slots"), Some(2.0));
    assert_eq!(value(&text, "liftoff_ready"), Some(1.0));
    assert_eq!(
        value(&text, "liftoff_worker_state{state=\"idle\"}"),
        Some(1.0)
    );
    assert!(text.contains("liftoff_build_info{version=\""));
    assert!(value(&text, "liftoff_host_memory_available_bytes").unwrap() > 0.0);

    // Runs: one succeeds, one exits 3, one runs while we look (BUSY).
    plane.send(&wid, &assign("M1", "true"));
    plane.send(&wid, &assign("M2", "exit 3"));
    plane.wait_for(T, |v| is_run(v, "M1", "finished")).unwrap();
    plane.wait_for(T, |v| is_run(v, "M2", "finished")).unwrap();
    let text = wait_metric(&a, "liftoff_runs_total{result=\"finished\"}", T, |v| {
        v == 2.0
    });
    assert_eq!(
        value(&text, "liftoff_run_exit_codes_total{class=\"success\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "liftoff_run_exit_codes_total{class=\"failure\"}"),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "liftoff_run_duration_seconds_count"),
        Some(2.0)
    );
    assert!(value(&text, "liftoff_commands_received_total{type=\"assign\"}") == Some(2.0));
    wait_metric(
        &a,
        "liftoff_commands_received_total{type=\"ack\"}",
        T,
        |v| v >= 1.0,
    );
    plane.send(&wid, &assign("M3", "sleep 30"));
    plane.wait_for(T, |v| is_run(v, "M3", "started")).unwrap();
    let text = wait_metric(&a, "liftoff_slots_busy", T, |v| v == 1.0);
    assert_eq!(
        value(&text, "liftoff_worker_state{state=\"busy\"}"),
        Some(1.0)
    );
    assert_eq!(get(&a, "/readyz").0, 200, "a busy worker stays ready");
    plane.send(
        &wid,
        &command("cancel", json!({"run_id": "M3", "reason": "test"})),
    );
    plane.wait_for(T, |v| is_run(v, "M3", "failed")).unwrap();
    wait_metric(&a, "liftoff_runs_total{result=\"failed\"}", T, |v| v == 1.0);

    // Drain: 503 with the reason, runs rejected; undrain: ready again.
    plane.send(&wid, &command("drain", json!({"on": true})));
    let why = wait(&a, "/readyz", T, "not ready while drained", |s, _| s == 503);
    assert!(why.contains("drained"), "{why}");
    plane.send(&wid, &assign("M4", "true"));
    plane.wait_for(T, |v| is_run(v, "M4", "rejected")).unwrap();
    let text = wait_metric(&a, "liftoff_runs_total{result=\"rejected\"}", T, |v| {
        v == 1.0
    });
    assert_eq!(
        value(&text, "liftoff_worker_state{state=\"drained\"}"),
        Some(1.0)
    );
    assert_eq!(value(&text, "liftoff_ready"), Some(0.0));
    assert_eq!(value(&text, "liftoff_healthy"), Some(1.0));
    plane.send(&wid, &command("drain", json!({"on": false})));
    wait(&a, "/readyz", T, "ready after undrain", |s, _| s == 200);

    // Events the plane does not acknowledge wait in the outbox, and age.
    plane.set_auto_ack(false);
    plane.send(&wid, &assign("M5", "true"));
    plane.wait_for(T, |v| is_run(v, "M5", "finished")).unwrap();
    let text = wait_metric(&a, "liftoff_outbox_pending_events", T, |v| v >= 3.0);
    assert!(value(&text, "liftoff_outbox_oldest_event_age_seconds").unwrap() >= 0.0);
    wait_metric(&a, "liftoff_outbox_oldest_event_age_seconds", T, |v| {
        v >= 1.0
    });
    plane.set_auto_ack(true);
    // The re-send (LIFTOFF_RESEND_AFTER=3s) is acknowledged.
    let text = wait_metric(&a, "liftoff_outbox_pending_events", T, |v| v == 0.0);
    assert_eq!(
        value(&text, "liftoff_outbox_oldest_event_age_seconds"),
        Some(0.0)
    );

    // Failover: the primary dies; the secondary takes over.
    b.primary().kill();
    let text = wait_metric(&a, SECONDARY, T, |v| v == 1.0);
    assert_eq!(value(&text, PRIMARY), Some(0.0));
    assert_eq!(value(&text, "liftoff_link_failovers_total"), Some(1.0));
    assert!(value(&text, "liftoff_link_reconnects_total").unwrap() >= 1.0);
    wait(&a, "/readyz", T, "ready on the secondary", |s, _| s == 200);
    // Fail-back once the primary is healthy again.
    b.primary().start();
    let text = wait_metric(&a, "liftoff_link_failbacks_total", T, |v| v == 1.0);
    promtool_check(&text);
    wait_metric(&a, PRIMARY, T, |v| v == 1.0);

    // No region at all: 503 "no link", still healthy; back when one returns.
    for br in &mut b.brokers {
        br.kill();
    }
    let why = wait(&a, "/readyz", T, "not ready without a link", |s, _| {
        s == 503
    });
    assert!(why.contains("no link"), "{why}");
    assert_eq!(get(&a, "/healthz").0, 200, "the loops still turn");
    let text = wait_metric(&a, "liftoff_link_connect_failures_total", T, |v| v >= 1.0);
    assert_eq!(value(&text, PRIMARY), Some(0.0));
    b.brokers[1].start();
    wait(&a, "/readyz", T, "ready again", |s, _| s == 200);

    // Leaving (SIGTERM with a run in flight): 503 "leaving" until the end.
    plane.send(&wid, &assign("M6", "sleep 3"));
    plane.wait_for(T, |v| is_run(v, "M6", "started")).unwrap();
    l.signal(Signal::SIGTERM);
    let why = wait(&a, "/readyz", T, "not ready while leaving", |s, _| s == 503);
    assert!(why.contains("leaving"), "{why}");
    assert_eq!(l.wait(T), Some(0), "{}", l.stderr());
}

#[test]
fn a_reset_pool_is_not_ready_then_exits_78() {
    let dir = support::runs::open_tempdir();
    let mut b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let a = addr();
    let mut l = plane::launch(
        &b,
        &dir.path().join("state"),
        &[("LIFTOFF_METRICS_ADDR", &a)],
    );
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    wait(&a, "/readyz", T, "ready", |s, _| s == 200);
    // The pool is reset: the brokers now trust another CA only. The
    // refusals make the worker not ready ("no link") until it exits 78
    // (the "pool reset" reason itself lasts only until the exit: the unit
    // test in src/metrics/launcher.rs checks it).
    let other = support::pki::TestCa::new(&dir.path().join("ca2"), "ca2");
    for br in &mut b.brokers {
        br.distrust(&other);
    }
    let mut saw_503 = false;
    let end = Instant::now() + T;
    while l.child.try_wait().unwrap().is_none() && Instant::now() < end {
        let (s, body) = get(&a, "/readyz");
        if s == 503 {
            assert!(
                body.contains("no link") || body.contains("pool reset"),
                "{body}"
            );
            saw_503 = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(l.wait(T), Some(78), "{}", l.stderr());
    assert!(saw_503, "readyz never said 503 before the exit");
}

#[test]
fn a_taken_or_invalid_address_is_a_configuration_error() {
    let dir = support::runs::open_tempdir();
    let b = Brokers::start(dir.path());
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = taken.local_addr().unwrap().to_string();
    let mut l = plane::launch(&b, &dir.path().join("s1"), &[("LIFTOFF_METRICS_ADDR", &a)]);
    assert_eq!(l.wait(T), Some(78), "{}", l.stderr());
    assert!(
        l.stderr()
            .contains(&format!("LIFTOFF_METRICS_ADDR: cannot listen on {a}")),
        "{}",
        l.stderr()
    );
    let mut l = plane::launch(
        &b,
        &dir.path().join("s2"),
        &[("LIFTOFF_METRICS_ADDR", "localhost")],
    );
    assert_eq!(l.wait(T), Some(78), "{}", l.stderr());
    assert!(
        l.stderr().contains("LIFTOFF_METRICS_ADDR") && l.stderr().contains("127.0.0.1:9464"),
        "{}",
        l.stderr()
    );
}

#[test]
fn scrape_floods_and_half_open_clients_leave_heartbeats_and_runs_alone() {
    let dir = support::runs::open_tempdir();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let a = addr();
    let l = plane::launch(
        &b,
        &dir.path().join("state"),
        &[("LIFTOFF_METRICS_ADDR", &a)],
    );
    let wid = l.worker_id();
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    wait(&a, "/readyz", T, "ready", |s, _| s == 200);

    // 100 clients that connect and never finish a request (more than the
    // listener serves at once), and 8 threads scraping without pause.
    let mut half_open = Vec::new();
    for _ in 0..100 {
        let mut s = TcpStream::connect(&a).unwrap();
        let _ = s.write_all(b"GET /metr");
        half_open.push(s);
    }
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let scrapers: Vec<_> = (0..8)
        .map(|_| {
            let (a, stop, served) = (a.clone(), stop.clone(), served.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let (s, body) = get(&a, "/metrics");
                    // 503: every connection slot was taken by a half-open client.
                    assert!(s == 200 || s == 503, "{s}: {body}");
                    if s == 200 {
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // Meanwhile the worker heartbeats (every 1 s) and runs as usual.
    let skip = plane.events().len();
    for i in 0..3 {
        let run = format!("F{i}");
        plane.send(&wid, &assign(&run, "true"));
        plane
            .wait_for(T, |v| is_run(v, &run, "finished"))
            .unwrap_or_else(|| panic!("{run} did not finish under the flood: {}", l.stderr()));
    }
    let started = Instant::now();
    let mut beats = 0;
    while beats < 5 {
        let n = plane.events()[skip..]
            .iter()
            .filter(|v| is_type(v, "status"))
            .count();
        beats = n;
        // A liveness bound, not a timing figure: 5 heartbeats 1 s apart
        // must not take 4x as long.
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "heartbeats stalled under the flood: {n}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(half_open);
    // Once the half-open clients are gone every scrape is answered.
    wait(&a, "/metrics", T, "scrapes after the flood", |s, _| {
        s == 200
    });
    stop.store(true, Ordering::Relaxed);
    for s in scrapers {
        s.join().unwrap();
    }
    assert!(served.load(Ordering::Relaxed) > 0);
    assert_eq!(get(&a, "/healthz").0, 200);
    promtool_check(&get(&a, "/metrics").1);
}

/// The same figures over the HTTPS long-poll transport (the poll plane
/// double: a real HTTPS server behind socat relays).
#[test]
fn the_long_poll_transport_is_labelled_and_counted() {
    use support::poll_plane::PollPlane;
    let dir = support::runs::open_tempdir();
    let pool = support::pki::Pool::new(&dir.path().join("pki"), 2048, &[]);
    let plane = PollPlane::start(&pool, &dir.path().join("plane"));
    let token = plane.token(&pool);
    let a = addr();
    let l = plane::launch_with(
        &token,
        &pool.key_base64(),
        &dir.path().join("state"),
        &[("LIFTOFF_METRICS_ADDR", &a)],
    );
    let wid = l.worker_id();
    wait(&a, "/readyz", T, "ready over long-poll", |s, _| s == 200);
    let connected = "liftoff_link_connected{region=\"eu-west-1\",transport=\"poll\"}";
    let text = wait_metric(&a, connected, T, |v| v == 1.0);
    promtool_check(&text);
    plane.send(&wid, &assign("P1", "true"));
    plane
        .wait_for(T, |v| is_run(v, "P1", "finished"))
        .unwrap_or_else(|| panic!("no finished: {}", l.stderr()));
    wait_metric(&a, "liftoff_runs_total{result=\"finished\"}", T, |v| {
        v == 1.0
    });
    wait_metric(
        &a,
        "liftoff_commands_received_total{type=\"assign\"}",
        T,
        |v| v == 1.0,
    );
    wait_metric(&a, "liftoff_outbox_pending_events", T, |v| v == 0.0);
}

/// The state directory's filesystem over `SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD`
/// (a real 8 MiB tmpfs, filled and emptied): 503 "disk threshold", then
/// ready again. Needs root to mount the tmpfs.
#[test]
fn a_full_disk_is_not_ready_until_it_has_room_again() {
    let dir = support::runs::open_tempdir();
    let state = dir.path().join("state");
    let _unmount = support::tmpfs::Tmpfs::mount_at(&state, "size=8m");
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let a = addr();
    let l = plane::launch(
        &b,
        &state,
        &[
            ("LIFTOFF_METRICS_ADDR", &a),
            (
                "LIFTOFF_PROVIDER_CACHE_DIR",
                dir.path().join("p").to_str().unwrap(),
            ),
        ],
    );
    plane.wait_for(T, |v| is_type(v, "hello")).expect("hello");
    wait(&a, "/readyz", T, "ready", |s, _| s == 200);
    let fill = state.join("fill");
    std::fs::write(&fill, vec![7u8; 7800 * 1024]).unwrap();
    let why = wait(&a, "/readyz", T, "not ready on a full disk", |s, _| {
        s == 503
    });
    assert!(why.contains("disk threshold"), "{why}");
    let text = wait_metric(&a, "liftoff_host_disk_used_ratio{disk=\"state\"}", T, |v| {
        v > 0.9
    });
    assert_eq!(
        value(&text, "liftoff_worker_state{state=\"drained\"}"),
        Some(1.0)
    );
    std::fs::remove_file(&fill).unwrap();
    wait(&a, "/readyz", T, "ready once there is room", |s, _| {
        s == 200
    });
    drop(l);
}
