//! Sandbox start latency, measured in one run on one host: `/bin/true`
//! bare, `bwrap --unshare-all --die-with-parent` with read-only binds
//! equivalent to liftoff's root, and `liftoff exec -- /bin/true` (full
//! runtime: namespaces, pivot_root, landlock, seccomp, cgroups), with the
//! default host network and with `--network none` (bwrap's --unshare-all
//! makes a network namespace too). The runs are interleaved so load changes
//! hit every variant alike. Prints median, p95 and the liftoff/bwrap ratio.
//!
//! `cargo bench --bench sandbox_start` runs 200 starts of each (needs root
//! for liftoff's cgroups, and bwrap installed); `cargo test --all-targets`
//! runs it as a 3-start smoke test. `LIFTOFF_BENCH_BIN` times another build
//! (the static musl one); `LIFTOFF_BENCH_BASE` times an earlier build in the
//! same rounds, for a before/after ratio on a loaded host.
//!
//! `liftoff exec` returns when init reports the job's status: init's exit
//! (the namespaces' teardown) and the cgroups' removal finish after it, as
//! bwrap's namespaces' teardown finishes after bwrap: every timed start is
//! preceded by a short pause ([`SETTLE`]) so that it does not pay for the
//! previous one's tail (on a loaded 2-core host that tail otherwise lands on
//! whichever variant runs next).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn bwrap_args() -> Vec<String> {
    let mut a: Vec<String> = ["--unshare-all", "--die-with-parent", "--new-session"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for d in ["usr", "bin", "sbin", "lib", "lib64"] {
        let host = format!("/{d}");
        match std::fs::read_link(&host) {
            Ok(target) => a.extend(["--symlink".into(), target.display().to_string(), host]),
            Err(_) if std::path::Path::new(&host).is_dir() => {
                a.extend(["--ro-bind".into(), host.clone(), host])
            }
            Err(_) => {}
        }
    }
    for f in [
        "/etc/ld.so.cache",
        "/etc/passwd",
        "/etc/group",
        "/etc/hosts",
        "/etc/resolv.conf",
        "/etc/nsswitch.conf",
        "/etc/ssl/certs/ca-certificates.crt",
    ] {
        if std::path::Path::new(f).exists() {
            a.extend(["--ro-bind".into(), f.into(), f.into()]);
        }
    }
    a.extend(
        [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/home/spacelift",
            "--bind",
            "/tmp",
            "/mnt/workspace",
            "--uid",
            "1983",
            "--gid",
            "1983",
            "--hostname",
            "liftoff",
            "--chdir",
            "/mnt/workspace",
            "--clearenv",
            "/bin/true",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    a
}

/// Pause before each timed start (see the module doc).
const SETTLE: Duration = Duration::from_millis(5);

fn time_one(cmd: &mut Command) -> Duration {
    std::thread::sleep(SETTLE);
    let t = Instant::now();
    let st = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let d = t.elapsed();
    assert!(st.success(), "{cmd:?} failed: {st}");
    d
}

fn stats(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = ms(v[v.len() / 2]);
    let p95 = ms(v[((v.len() as f64 * 0.95) as usize).min(v.len() - 1)]);
    (median, p95)
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 200 } else { 3 };
    // LIFTOFF_BENCH_BIN: another build to time (e.g. the static musl one).
    let liftoff_bin = std::env::var("LIFTOFF_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_liftoff").to_string());
    let liftoff = liftoff_bin.as_str();
    // LIFTOFF_BENCH_BASE: an earlier build, timed in the same rounds (a
    // before/after comparison on a loaded host).
    let base_bin = std::env::var("LIFTOFF_BENCH_BASE").ok();
    let bwrap = std::process::Command::new("bwrap")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        bwrap,
        "the benchmark needs bubblewrap (apt-get install bubblewrap)"
    );
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the benchmark runs liftoff as root (cgroups): run it as root"
    );
    let bargs = bwrap_args();
    let ws = std::env::temp_dir().join(format!("liftoff-bench-{}", std::process::id()));
    std::fs::create_dir_all(&ws).unwrap();
    let ws_s = ws.display().to_string();
    let mut bare = Vec::with_capacity(n);
    let mut bw = Vec::with_capacity(n);
    let mut lo = Vec::with_capacity(n);
    let mut lo_none = Vec::with_capacity(n);
    let mut base = Vec::with_capacity(n);
    for _ in 0..n {
        bare.push(time_one(&mut Command::new("/bin/true")));
        if let Some(b) = &base_bin {
            base.push(time_one(Command::new(b).env_clear().args([
                "exec",
                "--workspace",
                &ws_s,
                "--",
                "/bin/true",
            ])));
        }
        bw.push(time_one(Command::new("bwrap").args(&bargs)));
        lo.push(time_one(Command::new(liftoff).env_clear().args([
            "exec",
            "--workspace",
            &ws_s,
            "--",
            "/bin/true",
        ])));
        lo_none.push(time_one(Command::new(liftoff).env_clear().args([
            "exec",
            "--workspace",
            &ws_s,
            "--network",
            "none",
            "--",
            "/bin/true",
        ])));
    }
    let _ = std::fs::remove_dir_all(&ws);
    let (bm, bp) = stats(&mut bare);
    let (wm, wp) = stats(&mut bw);
    let (lm, lp) = stats(&mut lo);
    let (nm, np) = stats(&mut lo_none);
    println!(
        "sandbox start, {n} starts each (interleaved), wall time of spawn to exit ({liftoff}):"
    );
    println!(
        "  {:<52} median {bm:7.3} ms   p95 {bp:7.3} ms",
        "/bin/true (bare)"
    );
    println!(
        "  {:<52} median {wm:7.3} ms   p95 {wp:7.3} ms",
        "bwrap --unshare-all --die-with-parent (ro binds)"
    );
    println!(
        "  {:<52} median {lm:7.3} ms   p95 {lp:7.3} ms",
        "liftoff exec -- /bin/true (host network)"
    );
    println!(
        "  {:<52} median {nm:7.3} ms   p95 {np:7.3} ms",
        "liftoff exec --network none -- /bin/true"
    );
    println!(
        "  ratio liftoff/bwrap (median): {:.2} (host network), {:.2} (network none)",
        lm / wm,
        nm / wm
    );
    println!(
        "  ratio liftoff/bwrap (p95):    {:.2} (host network), {:.2} (network none)",
        lp / wp,
        np / wp
    );
    if let Some(b) = &base_bin {
        let (xm, xp) = stats(&mut base);
        println!(
            "  base {b}: median {xm:7.3} ms   p95 {xp:7.3} ms, ratio/bwrap {:.2} (host network)",
            xm / wm
        );
    }
    println!("  target (issue 19): ratio <= 0.6 with the full sandbox");
}
