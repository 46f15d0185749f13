//! Pieces the benches share: the median of samples, a process's memory
//! and CPU read from `/proc`
//! (`status_kib`, `cpu_secs`), and the failover clock (`until_accepted_in`):
//! the caller notes the event count and the time, kills the primary, then
//! calls it to offer fresh `assign`s until one is accepted through the
//! secondary region.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::plane::{Record, command};

/// The median of `v` (the upper one of an even count); sorts `v`.
pub fn median<T: PartialOrd + Copy>(v: &mut [T]) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).expect("a sample is not NaN"));
    v[v.len() / 2]
}

/// A `kB` field of `/proc/<pid>/status` (`"VmHWM:"`, `"VmRSS:"`), in KiB;
/// 0 when the process or field is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime in seconds, all threads.
pub fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

/// After the primary was killed at `t0` (with `skip` events recorded before):
/// send a fresh `assign` (`F<round>x<n>`) every 100 ms until the worker's
/// `accepted` for one arrives through `region`; the time since `t0`. Panics
/// with `stderr()` (the launcher's) after `timeout`.
pub fn until_accepted_in(
    region: &str,
    record: &Record,
    send: &dyn Fn(&Value),
    round: usize,
    (skip, t0): (usize, Instant),
    timeout: Duration,
    stderr: &dyn Fn() -> String,
) -> Duration {
    let mut n = 0;
    loop {
        let run = format!("F{round}x{n}");
        n += 1;
        send(&command(
            "assign",
            json!({"run_id": run, "run_type": "read", "state": {"command": "true"}}),
        ));
        let got = record
            .events_with_region()
            .into_iter()
            .skip(skip)
            .any(|(r, v)| r == region && v["type"] == "run" && v["phase"] == "accepted");
        if got {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < timeout, "no failover: {}", stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
}
