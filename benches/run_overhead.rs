//! The run pipeline's own overhead: time from an `assign` handed to the
//! executor (`RunExecutor::start`: decrypt, spec, policy, log pipeline,
//! workspace, 1 MiB source fetched over loopback HTTP and extracted, provider
//! cache layer, sandbox) to the first step's process running, beside the
//! sandbox start alone (`sandbox::spawn` of the same program with the same
//! configuration). Both jobs print `date +%s%N` first thing; the figures are
//! that instant minus the instant before `start` / `spawn`. Interleaved,
//! median of 20; prints both medians and the difference (target ≤ 50 ms).
//!
//! `cargo bench --bench run_overhead` (needs root, and the openssl CLI for
//! the pool key and certificate); without `--bench` (cargo test) it is a
//! 2-run smoke test.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::io::Read;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use liftoff::config::{Config, Env};
use liftoff::identity::{self, Identity, PoolKey};
use liftoff::link::protocol::{Assignment, RunType};
use liftoff::run::executor::SandboxExecutor;
use liftoff::run::{RunEvent, RunEvents, RunExecutor};
use support::bench::median;
use support::pki::Pool;
use support::runs::FileServer;

/// A 1 MiB tar.gz of incompressible bytes.
fn source_archive() -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    let data: Vec<u8> = (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "blob.bin", &data[..]).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// The first all-digits line of `text`, as ns since the epoch.
fn stamp(text: &str) -> u128 {
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            (l.len() >= 18 && l.bytes().all(|b| b.is_ascii_digit())).then(|| l.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no timestamp in {text:?}"))
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let n = if full { 20 } else { 2 };
    assert!(
        std::fs::metadata("/proc/self").is_ok_and(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0),
        "run_overhead needs root (the sandbox maps the job to an unprivileged host id): run as root"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    let pool = Pool::new(&d.join("pki"), 2048, &[("r", "mqtts://127.0.0.1:1")]);
    let key = pool.key_base64();
    let env: Env = [
        ("SPACELIFT_TOKEN", pool.token.as_str()),
        ("SPACELIFT_POOL_PRIVATE_KEY", key.as_str()),
        ("LIFTOFF_STATE_DIR", d.join("state").to_str().unwrap()),
        (
            "LIFTOFF_PROVIDER_CACHE_DIR",
            d.join("providers").to_str().unwrap(),
        ),
        ("LIFTOFF_JOB_MEMORY", "512MiB"),
    ]
    .into_iter()
    .collect();
    let config: Config = Config::load(&env).into_result().expect("configuration");
    let pk = config.private_key.as_ref().unwrap();
    let id = Identity::new(
        config.token.as_ref().unwrap(),
        PoolKey::from_pem(&pk.pem.0).unwrap(),
        pk.var(),
        identity::now(),
    )
    .map_err(|f| f.message)
    .unwrap()
    .0;
    let spki = id.cert.spki_der.clone();
    let mut ex = SandboxExecutor::new(config.clone(), env.clone(), Some(Arc::new(id))).unwrap();

    let server = FileServer::start();
    server.serve_file("/src.tar.gz", source_archive());
    let addr = server.addr;
    let argv: Vec<String> = ["/bin/sh", "-c", "date +%s%N"]
        .iter()
        .map(|s| s.to_string())
        .collect();

    let (mut runs, mut bare) = (Vec::new(), Vec::new());
    for i in 0..n {
        // The run.
        let run_id = format!("01BENCH{i:019}");
        let spec = serde_json::json!({
            "run_id": run_id, "run_type": "proposed",
            "steps": [{"name": "stamp", "argv": argv}],
            "source": {"url": format!("http://{addr}/src.tar.gz")},
            "uploads": {"logs": (0..8).map(|c| format!("http://{addr}/logs/{run_id}/{c}")).collect::<Vec<_>>()}
        });
        let sealed = identity::seal_run_state(&spki, &run_id, spec.to_string().as_bytes()).unwrap();
        let a = Assignment {
            run_id: run_id.clone(),
            run_type: RunType::Read,
            state: serde_json::to_value(sealed).unwrap(),
        };
        let (tx, rx) = smol::channel::unbounded();
        let t0 = now_ns();
        ex.start(a, RunEvents::new(&run_id, tx)).unwrap();
        loop {
            match smol::block_on(rx.recv()).unwrap().1 {
                RunEvent::Finished { exit_code: 0 } => break,
                RunEvent::Log { .. } | RunEvent::Started | RunEvent::Summary { .. } => {}
                other => panic!("run {run_id}: {other:?}"),
            }
        }
        let log: String = {
            let f: HashMap<String, Vec<u8>> = server
                .puts(&format!("/logs/{run_id}/"))
                .into_iter()
                .collect();
            (0..8)
                .filter_map(|c| f.get(&format!("/logs/{run_id}/{c}")))
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .collect()
        };
        runs.push((stamp(&log) - t0) as f64 / 1e6);

        // The sandbox alone, same configuration and program.
        let ws = d.join(format!("bare-{i}"));
        std::fs::create_dir_all(&ws).unwrap();
        let args = liftoff::cli::exec::ExecArgs::for_command(argv.clone());
        let mut spec =
            liftoff::cli::exec::build_spec(&args, &Env::default(), &config, ws.clone()).unwrap();
        spec.stdout = liftoff::sandbox::Stdio::Piped;
        spec.stderr = liftoff::sandbox::Stdio::Null;
        spec.stdin = liftoff::sandbox::Stdio::Null;
        let t0 = now_ns();
        let mut sb = liftoff::sandbox::spawn(&spec).unwrap();
        let mut out = String::new();
        sb.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        sb.wait().unwrap();
        bare.push((stamp(&out) - t0) as f64 / 1e6);
        std::thread::sleep(Duration::from_millis(20));
    }
    let (r, b) = (median(&mut runs), median(&mut bare));
    println!(
        "run_overhead: assign → first step running {r:.1} ms, sandbox start alone {b:.1} ms (median of {n}); pipeline overhead {:.1} ms (target ≤ 50 ms)",
        r - b
    );
}
