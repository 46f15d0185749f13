//! Failover time: from killing the primary broker (SIGKILL) to the first
//! event acked through the secondary, median of 10 (target ≤ 3 s). The plane
//! double keeps offering a fresh `assign` every 100 ms; the clock stops when
//! the worker's `accepted` for one arrives through eu-central-1.
//!
//! `cargo bench --bench link_failover` measures; without `--bench` in the
//! arguments (as under `cargo test --all-targets`) it does one smoke round.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::bench::until_accepted_in;
use support::brokers::Brokers;
use support::plane::{self, Plane, is_type};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 10 } else { 1 };
    let dir = tempfile::tempdir().unwrap();
    let mut b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let l = plane::launch(
        &b,
        &dir.path().join("state"),
        &[("LIFTOFF_FAILBACK_AFTER", "1s"), ("LIFTOFF_LOG", "warn")],
    );
    let wid = l.worker_id();
    let t = Duration::from_secs(30);
    plane
        .wait_for(t, |v| is_type(v, "hello") && v["region"] == "eu-west-1")
        .expect("hello");
    let mut times = Vec::new();
    for round in 0..rounds {
        let skip = plane.events().len();
        let t0 = Instant::now();
        b.primary().kill();
        let took = until_accepted_in(
            "eu-central-1",
            &plane,
            &|c| plane.send(&wid, c),
            round,
            (skip, t0),
            t,
            &|| l.stderr(),
        );
        times.push(took);
        eprintln!("round {round}: {:.3} s", took.as_secs_f64());
        // bring the primary back and wait for the fail-back
        b.primary().start();
        let skip = plane.events().len();
        plane
            .wait_after(skip, t, |v| {
                is_type(v, "hello") && v["region"] == "eu-west-1"
            })
            .expect("fail-back");
        std::thread::sleep(Duration::from_millis(1100));
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "failover time: median {:.3} s over {} rounds (min {:.3} s, max {:.3} s); target ≤ 3 s: {:.2}× of target",
        median.as_secs_f64(),
        times.len(),
        times[0].as_secs_f64(),
        times[times.len() - 1].as_secs_f64(),
        median.as_secs_f64() / 3.0
    );
}
