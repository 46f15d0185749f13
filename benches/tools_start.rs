//! What a cached tool adds to a run's start: the same run (one step that
//! prints `date +%s%N` first thing) with and without `tool` in its spec, the
//! tool already in the cache (installed through the cache's own API, as an
//! earlier run would have). The figure is the step's printed instant minus
//! the instant before `run_plain`. Interleaved, median of 20; prints both
//! medians side by side and the difference (target ≤ 2 ms).
//!
//! `cargo bench --bench tools_start` (needs root: the sandbox maps the job
//! to an unprivileged host id); without `--bench` (cargo test) it is a
//! 2-run smoke test.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use liftoff::config::{Config, Env};
use liftoff::logs::sink::FileSink;
use liftoff::run::executor::SandboxExecutor;
use liftoff::run::spec::RunSpec;
use liftoff::run::{RunEvent, RunEvents};
use liftoff::tools::ToolName;
use liftoff::tools::cache::Cache;
use liftoff::tools::version::Version;
use support::bench::median;

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Runs one spec; returns nanoseconds from the call to the step's `date`.
fn one(ex: &SandboxExecutor, dir: &Path, run: &str, tool: bool) -> u128 {
    let mut spec = serde_json::json!({
        "run_id": run, "run_type": "proposed",
        "steps": [{"name": "t", "shell": "date +%s%N; tofu version >/dev/null 2>&1 || true"}],
    });
    if tool {
        spec["tool"] = serde_json::json!({"name": "opentofu", "version": "1.8.5"});
    }
    let spec = RunSpec::from_json(spec.to_string().as_bytes()).unwrap();
    let (tx, rx) = smol::channel::unbounded();
    let events = RunEvents::new(run, tx);
    let log = dir.join(format!("{run}.log"));
    let start = now_ns();
    ex.run_plain(
        spec,
        Some(Box::new(FileSink::create(&log).unwrap())),
        events,
    );
    let mut ok = false;
    while let Ok((_, ev)) = rx.try_recv() {
        ok |= ev == RunEvent::Finished { exit_code: 0 };
    }
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(ok, "run {run} did not finish: {text}");
    let printed: u128 = text
        .lines()
        .find_map(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no date in {text}"));
    printed.saturating_sub(start)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 20 } else { 2 };
    assert!(
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0),
        "tools_start needs root (the sandbox maps the job to an unprivileged host id): run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cache_dir = d.join("tools");
    let cache = Cache::open(&cache_dir, 1 << 30).unwrap();
    let v = Version::parse("1.8.5").unwrap();
    drop(
        cache
            .install(ToolName::OpenTofu, &v, b"#!/bin/sh\necho tofu v1.8.5\n")
            .unwrap(),
    );
    let env: Env = [
        ("LIFTOFF_STATE_DIR", d.join("state")),
        ("LIFTOFF_PROVIDER_CACHE_DIR", d.join("providers")),
        ("LIFTOFF_TOOLS_CACHE_DIR", cache_dir.clone()),
        // Nothing is downloaded: a mirror nobody listens on.
        ("LIFTOFF_TOOLS_MIRROR", "http://127.0.0.1:9/none".into()),
        ("LIFTOFF_JOB_MEMORY", "512MiB".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.display().to_string()))
    .collect();
    let config = Config::load(&env).config;
    let ex = SandboxExecutor::new(config, env, None).unwrap();
    // Warm up both paths once.
    one(&ex, d, "warm-a", false);
    one(&ex, d, "warm-b", true);
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for i in 0..n {
        without.push(one(&ex, d, &format!("plain-{i}"), false));
        with.push(one(&ex, d, &format!("tool-{i}"), true));
    }
    // medians in ms
    let (a, b) = (
        median(&mut without) as f64 / 1e6,
        median(&mut with) as f64 / 1e6,
    );
    println!(
        "run start, median of {n} (ms): without tool {a:.2}   with cached tool {b:.2}   difference {:+.2} (target <= 2 ms)",
        b - a
    );
}
