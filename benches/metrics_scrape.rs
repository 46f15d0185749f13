//! Scrape cost and idle wake-ups of the metrics listener.
//!
//! 1. Scrape cost: the launcher's handler served by the real listener on
//!    loopback in this process; the median time of one whole `GET /metrics`
//!    (connect, request, full answer) and of rendering alone, beside a
//!    trivial peer: reading /proc/self/status. Target: median ≤ 1 ms.
//! 2. Idle wake-ups: two `liftoff run` processes connected to the same real
//!    broker and idle side by side, one with `LIFTOFF_METRICS_ADDR` and one
//!    without; voluntary context switches (all threads, from
//!    /proc/PID/task/*/status) over the window, and those of the listener
//!    thread itself. Target: no extra wake-ups while nobody scrapes.
//!
//! `cargo bench --bench metrics_scrape` idles 60 s; without `--bench` in
//! the arguments it idles 3 s as a smoke run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use support::bench::median;
use support::brokers::{Brokers, free_ports};
use support::plane::{self, Plane, is_type};

fn time_n(n: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..n / 10 {
        f();
    }
    median(
        &mut (0..n)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed()
            })
            .collect::<Vec<_>>(),
    )
}

/// (voluntary switches of all threads, of the thread named `thread`).
fn switches(pid: u32, thread: &str) -> (u64, u64) {
    let mut all = 0;
    let mut named = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let n: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        all += n;
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == thread {
            named += n;
        }
    }
    (all, named)
}

fn scrape_cost() {
    use liftoff::metrics::{LAUNCHER, launcher, server};
    LAUNCHER.link_regions(&["eu-west-1".into(), "eu-central-1".into()]);
    LAUNCHER.link_transport("mqtt");
    LAUNCHER.link_up(0);
    LAUNCHER.worker_beat();
    LAUNCHER.link_beat();
    for i in 0..100 {
        LAUNCHER.run_ended("finished", Some(i % 3), Some(Duration::from_secs(i as u64)));
        LAUNCHER.sandbox_start.observe(0.004);
    }
    let listener = server::bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    server::serve(listener, "bench-metrics", launcher::handler()).unwrap();
    let n = 2000;
    let size = support::scrape::get(&addr, "/metrics").1.len();
    let scrape = time_n(n, || {
        let (s, _) = support::scrape::get(&addr, "/metrics");
        assert_eq!(s, 200);
    });
    let render = time_n(n, || {
        std::hint::black_box(LAUNCHER.render());
    });
    let peer = time_n(n, || {
        std::hint::black_box(std::fs::read_to_string("/proc/self/status").unwrap());
    });
    println!("scrape cost ({n} scrapes, {size}-byte exposition), medians:");
    println!(
        "  GET /metrics over loopback   {:>9.1} µs",
        scrape.as_secs_f64() * 1e6
    );
    println!(
        "  render alone                 {:>9.1} µs",
        render.as_secs_f64() * 1e6
    );
    println!(
        "  peer: read /proc/self/status {:>9.1} µs",
        peer.as_secs_f64() * 1e6
    );
    println!(
        "  ratios: scrape/peer {:.1}x, render/peer {:.1}x; target scrape ≤ 1 ms: {}",
        scrape.as_secs_f64() / peer.as_secs_f64(),
        render.as_secs_f64() / peer.as_secs_f64(),
        if scrape <= Duration::from_millis(1) {
            "met"
        } else {
            "MISSED"
        }
    );
}

fn idle_wakeups(idle: Duration) {
    let dir = support::runs::open_tempdir();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let quiet = [
        ("LIFTOFF_HEARTBEAT_INTERVAL", "30s"),
        ("LIFTOFF_MQTT_KEEPALIVE", "30s"),
        ("LIFTOFF_LOG", "warn"),
    ];
    let addr = format!("127.0.0.1:{}", free_ports(1)[0]);
    let mut with = quiet.to_vec();
    with.push(("LIFTOFF_METRICS_ADDR", &addr));
    let l_without = plane::launch(&b, &dir.path().join("without"), &quiet);
    let l_with = plane::launch(&b, &dir.path().join("with"), &with);
    for l in [&l_without, &l_with] {
        let wid = l.worker_id();
        plane
            .wait_for(Duration::from_secs(30), |v| {
                is_type(v, "hello") && v["worker_id"] == wid.as_str()
            })
            .expect("hello");
    }
    // One scrape first, so the listener thread exists and has served.
    support::scrape::wait(
        &addr,
        "/readyz",
        Duration::from_secs(30),
        "ready",
        |s, _| s == 200,
    );
    std::thread::sleep(Duration::from_secs(1));
    let (pa, pb) = (l_without.child.id(), l_with.child.id());
    let a0 = switches(pa, "liftoff-metrics");
    let b0 = switches(pb, "liftoff-metrics");
    std::thread::sleep(idle);
    let a1 = switches(pa, "liftoff-metrics");
    let b1 = switches(pb, "liftoff-metrics");
    let without = a1.0 - a0.0;
    let with_total = b1.0 - b0.0;
    let listener = b1.1 - b0.1;
    println!(
        "idle wake-ups over {} s (voluntary context switches, all threads):",
        idle.as_secs()
    );
    println!("  liftoff run without LIFTOFF_METRICS_ADDR {without:>6}");
    println!("  liftoff run with    LIFTOFF_METRICS_ADDR {with_total:>6}");
    println!("  of which the listener thread             {listener:>6}");
    println!(
        "  ratio with/without {:.2}; target: the listener thread wakes 0 times: {}",
        with_total as f64 / without.max(1) as f64,
        if listener == 0 { "met" } else { "MISSED" }
    );
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    scrape_cost();
    idle_wakeups(Duration::from_secs(if full { 60 } else { 3 }));
}
