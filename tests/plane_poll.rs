//! The plane with real `liftoff run` workers over the HTTPS long-poll
//! binding (the default transport, no broker): `liftoff-plane dev`, pool
//! reset (the worker exits 78 with the reset message), pool cycle (every
//! worker exits 0 within 20 s), run cancel, and a worker SIGKILLed mid-run
//! that never comes back (the poll grace fails its run as lost). Needs root
//! (the sandbox) and the openssl CLI.

mod support;

/// The tests of this file run one at a time: a starting `liftoff run`
/// sweeps empty job cgroups under the cgroup it shares with every other
/// launcher of this test process, which can remove another test's job
/// cgroup between its creation and its job joining it (reported; the
/// launchers of a real host each have their own systemd cgroup).
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::plane_server::{PlaneProc, PoolKeys, launch_worker, plane_bin, spec_file};

fn done(v: &Value) -> bool {
    matches!(
        v["phase"].as_str(),
        Some("finished" | "failed" | "rejected" | "cancelled")
    )
}

fn poll_worker(plane: &PlaneProc, pool: &PoolKeys, name: &str) -> support::plane::Launcher {
    launch_worker(
        pool,
        &plane.dir.path().join(name),
        &plane.data.join("ca.crt"),
        &[
            ("SPACELIFT_WORKER_COMMS_PROTOCOL", "poll"),
            ("LIFTOFF_POLL_WAIT", "20s"),
        ],
    )
}

fn idle(plane: &PlaneProc, id: &str) {
    plane.wait_workers(Duration::from_secs(30), |l| {
        l.iter()
            .any(|x| x["id"] == id && x["state"] == "IDLE" && x["transport"] == "poll")
    });
}

fn submit(plane: &PlaneProc, pool: &str, spec: &Path) -> String {
    let v = plane.cli_json(&["run", "submit", pool, "--spec", spec.to_str().unwrap()]);
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn dev_prints_the_hello_run_and_exits_with_the_run_exit_code() {
    let _serial = serial();
    support::sandbox::require_root();
    let tmp = support::runs::open_tempdir();
    let out = Command::new(plane_bin())
        .args(["dev", "--spec", "examples/runs/hello.json"])
        .env("LIFTOFF_BIN", support::liftoff_bin())
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("hello from a sandboxed run"), "{stdout}");
    assert!(
        stdout.contains("step look around exited with 0"),
        "{stdout}"
    );
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "dev left files behind"
    );

    // A failing step: the run's exit code is dev's, with a source directory.
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("input.txt"), "from the source\n").unwrap();
    let spec = spec_file(tmp.path(), "fail", "tracked", "s", "cat input.txt; exit 3");
    let out = Command::new(plane_bin())
        .args([
            "dev",
            "--spec",
            spec.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
        ])
        .env("LIFTOFF_BIN", support::liftoff_bin())
        .env("TMPDIR", tmp.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("from the source"));
}

#[test]
fn dev_cleans_up_on_ctrl_c() {
    let _serial = serial();
    support::sandbox::require_root();
    let tmp = support::runs::open_tempdir();
    let spec = spec_file(
        tmp.path(),
        "long",
        "proposed",
        "s",
        "echo started-long; sleep 60",
    );
    let spec_copy = tmp
        .path()
        .join("..")
        .join(format!("spec-{}.json", std::process::id()));
    std::fs::rename(&spec, &spec_copy).unwrap();
    let mut child = Command::new(plane_bin())
        .args(["dev", "--spec", spec_copy.to_str().unwrap()])
        .env("LIFTOFF_BIN", support::liftoff_bin())
        .env("TMPDIR", tmp.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait for the run's first output, then Ctrl-C.
    use std::io::BufRead as _;
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let l = lines
            .next()
            .expect("dev ended before the run printed")
            .unwrap();
        if l.contains("started-long") {
            break;
        }
        assert!(Instant::now() < end);
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let status = child.wait().unwrap();
    let _ = std::fs::remove_file(&spec_copy);
    assert_eq!(status.code(), Some(130));
    assert_eq!(
        std::fs::read_dir(tmp.path()).unwrap().count(),
        0,
        "dev left files behind after Ctrl-C"
    );
}

#[test]
fn reset_cycle_cancel_and_a_vanished_worker_over_long_poll() {
    let _serial = serial();
    support::sandbox::require_root();
    let mut plane = PlaneProc::start();
    // A short poll grace keeps the vanished-worker part quick.
    let cfg_path = plane.data.join("plane.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["poll_grace_s"] = 3.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    plane.restart();
    let pool = plane.pool("edge", 2048);
    let dir = plane.dir.path().to_path_buf();

    // Cancel a running run.
    let mut a = poll_worker(&plane, &pool, "a");
    let ida = a.worker_id();
    idle(&plane, &ida);
    let run = submit(
        &plane,
        "edge",
        &spec_file(&dir, "c", "proposed", "c", "echo cancel-me; sleep 60"),
    );
    plane.wait_run(&run, Duration::from_secs(60), |v| v["phase"] == "started");
    plane.cli_json(&["run", "cancel", &run]);
    let v = plane.wait_run(&run, Duration::from_secs(30), done);
    assert_eq!(v["phase"], "cancelled", "{v}");
    // A queued run is cancelled at once.
    plane.cli_json(&["worker", "drain", &ida]);
    plane.wait_workers(Duration::from_secs(30), |l| {
        l.iter()
            .any(|x| x["id"] == ida.as_str() && x["state"] == "DRAINED")
    });
    let queued = submit(
        &plane,
        "edge",
        &spec_file(&dir, "q", "proposed", "q", "true"),
    );
    let v = plane.cli_json(&["run", "cancel", &queued]);
    assert_eq!(v["phase"], "cancelled");
    plane.cli_json(&["worker", "undrain", &ida]);
    idle(&plane, &ida);

    // The worker is SIGKILLed mid-run and does not come back: after the
    // poll grace it is gone and its run failed as lost.
    let run = submit(
        &plane,
        "edge",
        &spec_file(&dir, "k", "proposed", "k", "sleep 60"),
    );
    plane.wait_run(&run, Duration::from_secs(60), |v| v["phase"] == "started");
    a.kill9();
    let v = plane.wait_run(&run, Duration::from_secs(30), done);
    assert_eq!(v["phase"], "failed");
    assert!(v["reason"].as_str().unwrap().contains("poll grace"), "{v}");

    // Pool cycle: both workers say bye and exit 0 within 20 s.
    let mut b = poll_worker(&plane, &pool, "b");
    let mut c = poll_worker(&plane, &pool, "c");
    let (idb, idc) = (b.worker_id(), c.worker_id());
    idle(&plane, &idb);
    idle(&plane, &idc);
    let v = plane.cli_json(&["pool", "cycle", "edge"]);
    assert_eq!(v["cycled"].as_array().unwrap().len(), 2, "{v}");
    let t0 = Instant::now();
    assert_eq!(b.wait(Duration::from_secs(20)), Some(0), "{}", b.stderr());
    assert_eq!(
        c.wait(Duration::from_secs(20) - t0.elapsed().min(Duration::from_secs(19))),
        Some(0),
        "{}",
        c.stderr()
    );

    // Pool reset: a worker still using the old certificate exits 78 with
    // the reset message; one with the new token works.
    let mut d = poll_worker(&plane, &pool, "d");
    let idd = d.worker_id();
    idle(&plane, &idd);
    let (key2, csr2) = support::pki::pool_key_and_csr(&dir.join("reset"), "spacelift", 2048);
    let v = plane.cli_json(&["pool", "reset", "edge", "--csr", csr2.to_str().unwrap()]);
    assert_eq!(d.wait(Duration::from_secs(90)), Some(78), "{}", d.stderr());
    assert!(
        d.stderr().contains("was the worker pool reset?"),
        "{}",
        d.stderr()
    );
    let new_pool = PoolKeys {
        token: v["token"].as_str().unwrap().to_string(),
        key: key2,
        csr: csr2,
        cert_pem: v["pool"]["cert_pem"].as_str().unwrap().to_string(),
        ..pool
    };
    let e = poll_worker(&plane, &new_pool, "e");
    let ide = e.worker_id();
    idle(&plane, &ide);
    let run = submit(
        &plane,
        "edge",
        &spec_file(&dir, "n", "proposed", "n", "echo new-cert"),
    );
    let v = plane.wait_run(&run, Duration::from_secs(60), done);
    assert_eq!(
        (v["phase"].as_str(), v["worker_id"].as_str()),
        (Some("finished"), Some(ide.as_str()))
    );
    // pool show: its workers, its queue, the stacks that used it.
    let show = plane.cli_json(&["pool", "show", "edge"]);
    let used: Vec<&str> = show["used_by"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(used.contains(&"k") && used.contains(&"n"), "{show}");
}
