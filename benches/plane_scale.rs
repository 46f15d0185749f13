//! The plane under load: N fake workers (a load generator in this process
//! that speaks the HTTPS long-poll binding: session, hello, status, polls,
//! and `accepted`/`started`/`finished` for every assign) held idle, then N
//! runs submitted through the admin API and dispatched to them.
//!
//! Prints the plane's RSS with no worker (the peer: the same process idle)
//! and with N idle pollers (target ≤ 100 MiB for N = 1,000), the cost per
//! poller, and the time from the first submit to the last `finished`
//! (target ≤ 10 s for 1,000 runs), with ratios to the targets.
//!
//! `cargo bench --bench plane_scale` runs N = 1,000; without `--bench` in
//! the arguments N = 50 (a smoke run).

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::bench::status_kib;
use support::plane_server::{Binding, PlaneProc};

fn fake_worker(
    b: Binding,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
) {
    let will = b.msg(
        "gone",
        None,
        json!({"worker_id": b.worker, "crashed": true}),
    );
    while b.post("session", &will) != Ok(200) {
        std::thread::sleep(Duration::from_millis(200));
    }
    let hello = b.hello(will["id"].as_str().unwrap());
    while b.post("messages", &json!([hello, b.status("IDLE", &[], None)])) != Ok(200) {
        std::thread::sleep(Duration::from_millis(200));
    }
    ready.fetch_add(1, Ordering::Relaxed);
    let mut cursor: Option<String> = None;
    let mut seq = 0u64;
    let mut seen = std::collections::HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        let Ok((200, v)) = b.poll(cursor.as_deref(), 50) else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        cursor = v["cursor"].as_str().map(str::to_string);
        for c in v["commands"].as_array().into_iter().flatten() {
            if c["type"] != "assign" || !seen.insert(c["id"].as_str().unwrap_or("").to_string()) {
                continue;
            }
            let run = c["run_id"].clone();
            let mut batch: Vec<Value> = Vec::new();
            for (phase, extra) in [
                ("accepted", json!({"command_id": c["id"]})),
                ("started", json!({})),
                (
                    "finished",
                    json!({"exit_code": 0, "duration_ms": 1, "steps": []}),
                ),
            ] {
                seq += 1;
                let mut fields = json!({"run_id": run, "phase": phase});
                if let (Value::Object(m), Value::Object(e)) = (&mut fields, extra) {
                    m.extend(e);
                }
                batch.push(b.msg("run", Some(seq), fields));
            }
            batch.push(b.status("IDLE", &[], Some(seq)));
            while b.post("messages", &Value::Array(batch.clone())) != Ok(200) {
                std::thread::sleep(Duration::from_millis(100));
            }
            finished.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n: usize = if full { 1000 } else { 50 };
    let plane = PlaneProc::start();
    let pool = plane.pool("bench", 2048);
    let pid = plane.pid();
    std::thread::sleep(Duration::from_secs(1));
    let base = status_kib(pid, "VmRSS:");

    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut threads = Vec::new();
    for _ in 0..n {
        let b = Binding::new(&plane, &pool, &pool.cert_pem, &pool.key);
        let (stop, ready, finished) = (stop.clone(), ready.clone(), finished.clone());
        threads.push(
            std::thread::Builder::new()
                .stack_size(512 * 1024)
                .spawn(move || fake_worker(b, stop, ready, finished))
                .unwrap(),
        );
    }
    while ready.load(Ordering::Relaxed) < n {
        assert!(
            t0.elapsed() < Duration::from_secs(600),
            "only {} of {n} workers connected",
            ready.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let connect = t0.elapsed();
    // Idle: every worker holds a long poll.
    std::thread::sleep(Duration::from_secs(if full { 10 } else { 3 }));
    let idle = status_kib(pid, "VmRSS:");
    let threads_plane = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.count())
        .unwrap_or(0);

    // Dispatch N runs.
    let admin = plane.admin_agent();
    let token = format!("Bearer {}", plane.admin_token());
    let spec =
        json!({"run_id": "x", "run_type": "proposed", "steps": [{"name": "a", "argv": ["true"]}]});
    let t1 = Instant::now();
    for i in 0..n {
        let r = admin
            .post(format!("{}/admin/v1/runs", plane.url()))
            .header("Authorization", &token)
            .send(json!({"pool": "bench", "spec": spec, "stack": format!("s{i}")}).to_string())
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let submitted = t1.elapsed();
    while finished.load(Ordering::Relaxed) < n {
        assert!(
            t1.elapsed() < Duration::from_secs(600),
            "only {} of {n} runs finished",
            finished.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let dispatched = t1.elapsed();
    let peak = status_kib(pid, "VmHWM:");
    stop.store(true, Ordering::Relaxed);

    let mib = |k: u64| k as f64 / 1024.0;
    println!(
        "plane_scale: {n} long-polling workers (connected in {:.1} s), plane threads {threads_plane}",
        connect.as_secs_f64()
    );
    println!(
        "  RSS idle with no worker (peer): {:.1} MiB; with {n} idle pollers: {:.1} MiB ({:.1}x the peer; {:.1} KiB per poller); target <= 100 MiB for 1,000: {:.2}x of target",
        mib(base),
        mib(idle),
        idle as f64 / base.max(1) as f64,
        (idle.saturating_sub(base)) as f64 / n as f64,
        mib(idle) / 100.0
    );
    println!(
        "  {n} runs: submitted in {:.2} s, all finished {:.2} s after the first submit ({:.0} runs/s); target <= 10 s for 1,000: {:.2}x of target; peak RSS {:.1} MiB",
        submitted.as_secs_f64(),
        dispatched.as_secs_f64(),
        n as f64 / dispatched.as_secs_f64(),
        dispatched.as_secs_f64() / 10.0,
        mib(peak)
    );
    // Workers' polls end with the plane.
    drop(plane);
    for t in threads {
        let _ = t.join();
    }
}
