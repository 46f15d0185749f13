//! Submit → first log line readable through the plane's admin API (what
//! `run logs` reads), with one real `liftoff run` worker on loopback
//! long-poll, sandbox start included; beside the peer `liftoff exec --spec`
//! of the same spec (spawn → its first output line on stdout, the same
//! sandbox start without a plane). Interleaved, median of 20; prints both
//! medians and the ratio (target: plane ≤ 100 ms).
//!
//! `cargo bench --bench plane_latency` (needs root and the openssl CLI);
//! without `--bench` it is a 3-run smoke test.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::BufRead as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use support::bench::median;
use support::plane_server::{PlaneProc, launch_worker};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 20 } else { 3 };
    support::sandbox::require_root();
    let plane = PlaneProc::start();
    let pool = plane.pool("bench", 2048);
    let mut worker = launch_worker(
        &pool,
        &plane.dir.path().join("w"),
        &plane.data.join("ca.crt"),
        &[
            ("SPACELIFT_WORKER_COMMS_PROTOCOL", "poll"),
            ("LIFTOFF_LOG", "warn"),
        ],
    );
    let id = worker.worker_id();
    plane.wait_workers(Duration::from_secs(60), |l| {
        l.iter()
            .any(|x| x["id"] == id.as_str() && x["state"] == "IDLE")
    });
    let spec = json!({"run_id": "01BENCHLATENCY000000000000", "run_type": "proposed",
        "steps": [{"name": "a", "shell": "echo first-line"}]});
    let spec_path = plane.dir.path().join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).unwrap();
    let admin = plane.admin_agent();
    let token = format!("Bearer {}", plane.admin_token());
    let (mut planes, mut execs) = (Vec::new(), Vec::new());
    for _ in 0..n {
        // Through the plane.
        let t0 = Instant::now();
        let r = admin
            .post(format!("{}/admin/v1/runs", plane.url()))
            .header("Authorization", &token)
            .send(json!({"pool": "bench", "spec": spec}).to_string())
            .unwrap();
        let run: serde_json::Value =
            serde_json::from_slice(&r.into_body().read_to_vec().unwrap()).unwrap();
        let run_id = run["id"].as_str().unwrap().to_string();
        loop {
            let r = admin
                .get(format!("{}/admin/v1/runs/{run_id}/logs", plane.url()))
                .header("Authorization", &token)
                .call()
                .unwrap();
            let body = r.into_body().read_to_vec().unwrap();
            if String::from_utf8_lossy(&body).contains("first-line") {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "no log for {run_id}: {}",
                worker.stderr()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        planes.push(t0.elapsed().as_secs_f64() * 1000.0);
        plane.wait_run(&run_id, Duration::from_secs(60), |v| {
            v["phase"] == "finished"
        });

        // The peer: liftoff exec --spec.
        let t0 = Instant::now();
        let mut child = Command::new(support::liftoff_bin())
            .args(["exec", "--spec"])
            .arg(&spec_path)
            .env("LIFTOFF_STATE_DIR", plane.dir.path().join("exec"))
            .env(
                "LIFTOFF_PROVIDER_CACHE_DIR",
                plane.dir.path().join("exec-providers"),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        while let Some(Ok(l)) = lines.next() {
            if l.contains("first-line") {
                break;
            }
        }
        execs.push(t0.elapsed().as_secs_f64() * 1000.0);
        let _ = child.wait();
    }
    let (p, e) = (median(&mut planes.clone()), median(&mut execs.clone()));
    println!(
        "plane_latency: submit -> first log line readable through the plane, median of {n}: {p:.1} ms (target <= 100 ms: {:.2}x)",
        p / 100.0
    );
    println!(
        "  peer liftoff exec --spec (spawn -> first output line), median of {n}: {e:.1} ms; plane / peer = {:.2}",
        p / e
    );
    println!("  all plane samples (ms): {planes:.0?}");
    worker.kill9();
}
