//! 20 random broker kills and restarts during a stream of runs: no event is
//! lost and none reaches the plane's consumer twice (after de-duplication by
//! id), in order. The seed of the random schedule is printed first thing;
//! `LIFTOFF_SOAK_SEED=<n>` replays one. The whole test is bounded by
//! [`TOTAL`]: every wait takes what is left of it.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::brokers::Brokers;
use support::plane::{self, Plane, command, is_run, is_type};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.next() % (hi - lo))
    }
}

/// The most the whole test may take.
const TOTAL: Duration = Duration::from_secs(300);

/// The seed: `LIFTOFF_SOAK_SEED` when set, else from the clock (never 0:
/// xorshift would stay at 0).
fn seed() -> u64 {
    match std::env::var("LIFTOFF_SOAK_SEED") {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .expect("LIFTOFF_SOAK_SEED must be an unsigned integer")
            .max(1),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        }
    }
}

#[test]
fn twenty_random_broker_kills_lose_nothing() {
    let seed = seed();
    eprintln!("chaos seed: {seed} (replay with LIFTOFF_SOAK_SEED={seed})");
    let end = Instant::now() + TOTAL;
    let left = move || end.saturating_duration_since(Instant::now());
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let l = plane::launch(&b, &dir.path().join("state"), &[]);
    let wid = l.worker_id();
    plane
        .wait_for(Duration::from_secs(20).min(left()), |v| is_type(v, "hello"))
        .expect("hello");

    let done = Arc::new(AtomicBool::new(false));
    let chaos_done = done.clone();
    let chaos = std::thread::spawn(move || {
        let mut b = b;
        let mut rng = Rng(seed);
        for _ in 0..20 {
            std::thread::sleep(rng.ms(200, 1200));
            let i = (rng.next() % 2) as usize;
            b.brokers[i].kill();
            std::thread::sleep(rng.ms(100, 1500));
            b.brokers[i].start();
        }
        chaos_done.store(true, Ordering::Relaxed);
        b
    });

    // a stream of runs, one at a time; the plane re-sends an assign until
    // the worker answers it (commands sent while it is between brokers are
    // lost; the worker de-duplicates the re-sends by id)
    let mut runs = Vec::new();
    let mut i = 0;
    while !done.load(Ordering::Relaxed) || i < 5 {
        assert!(
            Instant::now() < end,
            "the stream did not finish within {TOTAL:?} (seed {seed}): {}",
            l.stderr()
        );
        let run = format!("SOAK{i}");
        let cmd = command(
            "assign",
            json!({"run_id": run, "run_type": "write", "state": {"command": "sleep 0.2"}}),
        );
        loop {
            plane.send(&wid, &cmd);
            if plane
                .wait_for(Duration::from_secs(2).min(left()), |v| {
                    is_run(v, &run, "accepted")
                })
                .is_some()
            {
                break;
            }
            assert!(
                Instant::now() < end,
                "{run} never accepted (seed {seed}): {}",
                l.stderr()
            );
        }
        plane
            .wait_for(Duration::from_secs(60).min(left()), |v| {
                is_run(v, &run, "finished")
            })
            .unwrap_or_else(|| panic!("{run} never finished (seed {seed}): {}", l.stderr()));
        runs.push(run);
        i += 1;
    }
    let _b = chaos.join().unwrap();

    // everything the worker recorded reaches the consumer exactly once, in order
    let want: Vec<(String, String)> = runs
        .iter()
        .flat_map(|r| {
            ["accepted", "started", "finished"]
                .iter()
                .map(move |p| (r.clone(), p.to_string()))
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60).min(left());
    let delivered = loop {
        let d = plane.delivered(&wid);
        if d.len() >= want.len() {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "consumer got {} of {} events (seed {seed}): {}",
            d.len(),
            want.len(),
            l.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let got: Vec<(String, String)> = delivered
        .iter()
        .filter(|v| is_type(v, "run"))
        .map(|v: &Value| {
            (
                v["run_id"].as_str().unwrap().to_string(),
                v["phase"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, want, "seed {seed}");
    let seqs: Vec<u64> = delivered
        .iter()
        .map(|v| v["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    eprintln!(
        "{} runs, {} events through 20 broker kills",
        runs.len(),
        delivered.len()
    );
}
