//! The long-poll link beside the MQTT link, in one process:
//!
//! 1. idle footprint: a `liftoff run` over long-poll and one over MQTT (a
//!    real mosquitto), both connected and idle for 60 s: peak RSS (VmHWM)
//!    and CPU (user + system). Targets: poll RSS ≤ 1.0× MQTT's; poll CPU
//!    ≤ 0.05 s per minute;
//! 2. command latency while a poll is held: the plane queues a `drain`
//!    (on, then off, …) and the clock stops when the worker's `status` with
//!    that drain state arrives, so the figure is a full round trip (plane →
//!    worker → plane), an upper bound of the one-way latency; median of 20,
//!    beside the same round trip over MQTT. Target: poll median ≤ 20 ms;
//! 3. failover: from SIGKILL of the primary endpoint's relay to the first
//!    `accepted` through the secondary (the plane offers a fresh `assign`
//!    every 100 ms), median of 5. Target ≤ 3 s.
//!
//! Set `LIFTOFF_TEST_BIN` to the static musl build to measure the shipped
//! binary (the RSS figure is a musl figure; a glibc build maps libc too).
//!
//! `cargo bench --bench link_poll` measures; without `--bench` in the
//! arguments (as under `cargo test --all-targets`) it does a short smoke
//! round of each.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::bench::{cpu_secs, median, status_kib, until_accepted_in};
use support::brokers::Brokers;
use support::pki::Pool;
use support::plane::{self, Launcher, Plane, Record, command, is_type};
use support::poll_plane::PollPlane;

const T: Duration = Duration::from_secs(30);

/// Round trips of `drain` commands: queue one, wait for the status that
/// shows it.
fn drain_round_trips(
    n: usize,
    record: &Record,
    send: &dyn Fn(&Value),
    before_each: &dyn Fn(),
) -> Vec<Duration> {
    let mut times = Vec::new();
    for i in 0..n {
        let on = i % 2 == 0;
        before_each();
        let skip = record.events().len();
        let t0 = Instant::now();
        send(&command("drain", json!({"on": on})));
        record
            .wait_after(skip, T, |v| is_type(v, "status") && v["drain"] == on)
            .expect("status after drain");
        times.push(t0.elapsed());
    }
    times
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let dir = support::runs::open_tempdir();
    let quiet = [
        ("LIFTOFF_HEARTBEAT_INTERVAL", "30s"),
        ("LIFTOFF_MQTT_KEEPALIVE", "30s"),
        ("LIFTOFF_LOG", "warn"),
    ];

    // the MQTT side
    let b = Brokers::start(&dir.path().join("mqtt"));
    let mqtt_plane = Plane::start(&b);
    let mqtt = plane::launch(&b, &dir.path().join("mqtt-state"), &quiet);
    let mqtt_id = mqtt.worker_id();
    mqtt_plane
        .wait_for(T, |v| is_type(v, "hello"))
        .expect("MQTT hello");

    // the long-poll side
    let pool = Pool::new(&dir.path().join("poll"), 2048, &[]);
    let mut poll_plane = PollPlane::start(&pool, &dir.path().join("poll-plane"));
    let token = poll_plane.token(&pool);
    let poll = plane::launch_with(
        &token,
        &pool.key_base64(),
        &dir.path().join("poll-state"),
        &quiet,
    );
    let poll_id = poll.worker_id();
    poll_plane
        .wait_for(T, |v| is_type(v, "hello"))
        .expect("poll hello");

    // 1. idle
    let idle = Duration::from_secs(if full { 60 } else { 2 });
    std::thread::sleep(Duration::from_secs(1));
    let (pp, mp) = (poll.child.id(), mqtt.child.id());
    let (p0, m0) = (cpu_secs(pp), cpu_secs(mp));
    std::thread::sleep(idle);
    let (p1, m1) = (cpu_secs(pp), cpu_secs(mp));
    let (pr, mr) = (status_kib(pp, "VmHWM:"), status_kib(mp, "VmHWM:"));
    let per_minute = (p1 - p0) * 60.0 / idle.as_secs_f64();
    println!(
        "idle {} s: long-poll peak RSS {pr} KiB, CPU {:.2} s ({per_minute:.3} s/min); MQTT peak RSS {mr} KiB, CPU {:.2} s; RSS ratio {:.2}× (target ≤ 1.0×; CPU ≤ 0.05 s/min)",
        idle.as_secs(),
        p1 - p0,
        m1 - m0,
        pr as f64 / mr.max(1) as f64
    );

    // 2. command latency while a poll is held
    let n = if full { 20 } else { 2 };
    let held = || {
        let end = Instant::now() + T;
        while !poll_plane.poll_held(&poll_id) {
            assert!(Instant::now() < end, "no poll held: {}", poll.stderr());
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let mut poll_rt = drain_round_trips(n, &poll_plane, &|c| poll_plane.send(&poll_id, c), &held);
    let mut mqtt_rt = drain_round_trips(n, &mqtt_plane, &|c| mqtt_plane.send(&mqtt_id, c), &|| {
        std::thread::sleep(Duration::from_millis(20))
    });
    let (pm, mm) = (median(&mut poll_rt), median(&mut mqtt_rt));
    println!(
        "command round trip while a poll is held: long-poll median {:.1} ms, MQTT median {:.1} ms over {n}; ratio {:.2}×; target ≤ 20 ms: {:.2}× of target",
        pm.as_secs_f64() * 1000.0,
        mm.as_secs_f64() * 1000.0,
        pm.as_secs_f64() / mm.as_secs_f64().max(1e-6),
        pm.as_secs_f64() / 0.020
    );
    drop(mqtt);
    drop(mqtt_plane);
    drop(b);

    // 3. failover
    let rounds = if full { 5 } else { 1 };
    let mut times = Vec::new();
    for round in 0..rounds {
        let skip = poll_plane.events().len();
        let t0 = Instant::now();
        poll_plane.endpoints[0].kill();
        let took = until_accepted_in(
            "eu-central-1",
            &poll_plane,
            &|c| poll_plane.send(&poll_id, c),
            round,
            (skip, t0),
            T,
            &|| poll.stderr(),
        );
        eprintln!("round {round}: {:.3} s", took.as_secs_f64());
        times.push(took);
        poll_plane.endpoints[0].start();
        let skip = poll_plane.events().len();
        poll_plane
            .wait_after(skip, Duration::from_secs(180), |v| {
                is_type(v, "hello") && v["region"] == "eu-west-1"
            })
            .expect("fail-back");
    }
    let m = median(&mut times);
    println!(
        "long-poll failover: median {:.3} s over {rounds} rounds; target ≤ 3 s: {:.2}× of target",
        m.as_secs_f64(),
        m.as_secs_f64() / 3.0
    );
    let _: &Launcher = &poll;
}
