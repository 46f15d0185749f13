//! The library side of the end-to-end logs bench (until `liftoff exec`
//! exists): reads a job's output on stdin through the whole pipeline (mask
//! with N secrets, chunk, spool, deliver to a log file) and prints the run's
//! figures, peak RSS included, on stderr.
//!
//! `some-job | logs_pipe --log-file FILE [--masks 100] [--state-dir DIR]`
//! See benches/e2e_logs.sh.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use liftoff::logs::redact::RedactorBuilder;
use liftoff::logs::sink::FileSink;
use liftoff::logs::{Kill, Options, Pipeline};

struct NoTree;
impl Kill for NoTree {
    fn terminate(&mut self) {}
    fn kill(&mut self) {}
}

fn main() {
    let mut log_file = None;
    let mut masks = 100usize;
    let mut state_dir = std::env::temp_dir().join("liftoff-logs-pipe");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--log-file" => log_file = args.next().map(PathBuf::from),
            "--masks" => masks = args.next().and_then(|v| v.parse().ok()).unwrap_or(masks),
            "--state-dir" => state_dir = args.next().map(PathBuf::from).unwrap_or(state_dir),
            _ => {
                eprintln!("usage: logs_pipe --log-file FILE [--masks N] [--state-dir DIR]");
                std::process::exit(2);
            }
        }
    }
    let Some(log_file) = log_file else {
        eprintln!("logs_pipe: --log-file FILE is required");
        std::process::exit(2);
    };
    let mut b = RedactorBuilder::new();
    let mut seed = 0x1234_5678_u64;
    for i in 0..masks {
        let secret: Vec<u8> = (0..32)
            .map(|_| {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                    [(seed >> 33) as usize % 62]
            })
            .collect();
        b.secret(&format!("SECRET_{i}"), &secret);
    }
    let opts = Options {
        logs_timeout: Duration::from_secs(3600),
        run_timeout: Duration::from_secs(3600),
        ..Options::new(
            &format!("E2E{}", std::process::id()),
            state_dir.join("spool"),
        )
    };
    let sink = match FileSink::create(&log_file) {
        Ok(s) => Box::new(s),
        Err(e) => {
            eprintln!("logs_pipe: {e}");
            std::process::exit(1);
        }
    };
    let t = Instant::now();
    let mut p = match Pipeline::start(opts, b.build(), sink, None) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("logs_pipe: {e}");
            std::process::exit(1);
        }
    };
    // The pipe itself, not the buffered `Stdin` over it: the pump polls it.
    let stdin = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            eprintln!("logs_pipe: cannot use standard input: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = p.pump(stdin, &mut NoTree) {
        eprintln!("logs_pipe: {e}");
        std::process::exit(1);
    }
    let report = p.finish();
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.trim_start_matches("VmHWM:").trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    eprintln!(
        "logs_pipe: {} bytes in {} chunks in {:.2}s; peak RSS {peak}; error: {:?}",
        report.bytes,
        report.delivered.chunks,
        t.elapsed().as_secs_f64(),
        report.delivered.error
    );
    if report.delivered.error.is_some() {
        std::process::exit(1);
    }
}
