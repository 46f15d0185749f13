//! Idle footprint: `liftoff run` connected over TLS and idle for 60 s, beside
//! `mosquitto_sub` connected to the same broker with the same certificate in
//! the same run: peak RSS (VmHWM) and CPU time (user + system) over the
//! idle window. Targets: RSS ≤ 2× mosquitto_sub and ≤ 8 MiB; CPU ≤ 0.1 s.
//!
//! `cargo bench --bench link_idle` measures 60 s; without `--bench` in the
//! arguments it idles 2 s as a smoke run.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::bench::{cpu_secs, status_kib};
use support::brokers::Brokers;
use support::plane::{self, Plane, is_type};

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let idle = Duration::from_secs(if full { 60 } else { 2 });
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let state = dir.path().join("state");
    let l = plane::launch(
        &b,
        &state,
        &[
            ("LIFTOFF_HEARTBEAT_INTERVAL", "30s"),
            ("LIFTOFF_MQTT_KEEPALIVE", "30s"),
            ("LIFTOFF_LOG", "warn"),
        ],
    );
    let wid = l.worker_id();
    plane
        .wait_for(Duration::from_secs(30), |v| is_type(v, "hello"))
        .expect("hello");
    let mut sub = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &b.brokers[0].port.to_string(),
            "-q",
            "1",
            "-k",
            "30",
        ])
        .arg("--cafile")
        .arg(b.pool.ca.cert_path())
        .arg("--cert")
        .arg(&b.pool.cert)
        .arg("--key")
        .arg(&b.pool.key)
        .args([
            "-i",
            "bench-sub",
            "-t",
            &format!("spacelift/readonly/{}/{wid}-sub", plane::POOL),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mosquitto_sub is installed");
    std::thread::sleep(Duration::from_secs(1));
    let (lp, sp) = (l.child.id(), sub.id());
    let (l0, s0) = (cpu_secs(lp), cpu_secs(sp));
    std::thread::sleep(idle);
    let (l1, s1) = (cpu_secs(lp), cpu_secs(sp));
    let (lr, sr) = (status_kib(lp, "VmHWM:"), status_kib(sp, "VmHWM:"));
    let _ = sub.kill();
    let _ = sub.wait();
    println!(
        "idle {} s over TLS: liftoff run peak RSS {} KiB, CPU {:.2} s; mosquitto_sub peak RSS {} KiB, CPU {:.2} s; RSS ratio {:.2}× (target ≤ 2×, ≤ 8192 KiB; CPU ≤ 0.1 s)",
        idle.as_secs(),
        lr,
        l1 - l0,
        sr,
        s1 - s0,
        lr as f64 / sr.max(1) as f64
    );
}
