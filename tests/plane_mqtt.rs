//! The plane with real `liftoff run` workers over MQTT through two real
//! mosquitto brokers (two regions): runs dispatched, run to the end in the
//! real sandbox, logs uploaded to the plane's signed URLs and read back
//! with `run logs`; drain, undrain and cycle from the CLI with the workers'
//! observed reactions; tracked runs of one stack one at a time. Needs root
//! (the sandbox), mosquitto and the openssl CLI.

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

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use support::brokers::Brokers;
use support::pki::TestCa;
use support::plane_server::{PlaneProc, PoolKeys, launch_worker, spec_file};

struct World {
    plane: PlaneProc,
    brokers: Brokers,
    pool: PoolKeys,
    roots: PathBuf,
}

/// A plane whose tokens name both brokers, subscribed to both with the
/// brokers' plane certificate; brokers trusting the plane's pool CA.
fn world() -> World {
    support::sandbox::require_root();
    let mut plane = PlaneProc::start();
    let bdir = plane.dir.path().join("brokers");
    let mut brokers = Brokers::start(&bdir);
    // plane.json: the brokers and the plane's MQTT identity.
    let cfg_path = plane.data.join("plane.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["brokers"] = brokers
        .brokers
        .iter()
        .map(|b| serde_json::json!({"region": b.region, "url": b.url()}))
        .collect();
    cfg["mqtt"] = serde_json::json!({
        "cert": brokers.plane_cert, "key": brokers.plane_key, "ca": brokers.pool.ca.cert_path()});
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    // Brokers trust both CAs (the test CA signs the plane's MQTT client
    // certificate, the plane CA the pools'); workers trust both too.
    let bundle_dir = plane.dir.path().join("bundle");
    std::fs::create_dir_all(&bundle_dir).unwrap();
    let roots = bundle_dir.join("bundle.crt");
    std::fs::write(
        &roots,
        format!("{}{}", brokers.pool.ca.cert_pem(), plane.ca_pem()),
    )
    .unwrap();
    let bundle = TestCa {
        dir: bundle_dir,
        name: "bundle".into(),
    };
    for b in brokers.brokers.iter_mut() {
        b.distrust(&bundle);
    }
    plane.restart();
    let pool = plane.pool("edge", 2048);
    World {
        plane,
        brokers,
        pool,
        roots,
    }
}

fn mqtt_worker(w: &World, name: &str) -> support::plane::Launcher {
    launch_worker(
        &w.pool,
        &w.plane.dir.path().join(name),
        &w.roots,
        &[("SPACELIFT_WORKER_COMMS_PROTOCOL", "mqtt")],
    )
}

fn submit(w: &World, spec: &std::path::Path) -> String {
    let v = w
        .plane
        .cli_json(&["run", "submit", "edge", "--spec", spec.to_str().unwrap()]);
    v["id"].as_str().unwrap().to_string()
}

fn done(v: &Value) -> bool {
    matches!(
        v["phase"].as_str(),
        Some("finished" | "failed" | "rejected" | "cancelled")
    )
}

#[test]
fn runs_drain_undrain_and_cycle_over_mqtt_with_real_workers() {
    let _serial = serial();
    let w = world();
    let a = mqtt_worker(&w, "a");
    let b = mqtt_worker(&w, "b");
    let (ida, idb) = (a.worker_id(), b.worker_id());
    let workers = w.plane.wait_workers(Duration::from_secs(30), |l| {
        [&ida, &idb].iter().all(|id| {
            l.iter()
                .any(|x| x["id"] == id.as_str() && x["state"] == "IDLE")
        })
    });
    assert!(
        workers.iter().all(|x| x["transport"] == "mqtt"),
        "{workers:?}"
    );

    // Six proposed runs across both workers, each finished once, each log complete.
    let dir = w.plane.dir.path().to_path_buf();
    let mut runs = Vec::new();
    for i in 0..6 {
        let spec = spec_file(
            &dir,
            &format!("r{i}"),
            "proposed",
            &format!("s{i}"),
            &format!("echo marker-{i}; echo \"run $SPACELIFT_RUN_ID\""),
        );
        runs.push((i, submit(&w, &spec)));
    }
    let mut used = HashSet::new();
    for (i, run) in &runs {
        let v = finished_ok(&w, run, Duration::from_secs(120), || a.stderr());
        used.insert(v["worker_id"].as_str().unwrap().to_string());
        let log = w.plane.cli(&["run", "logs", run, "--follow"]);
        let text = String::from_utf8_lossy(&log.stdout);
        assert!(
            text.contains(&format!("marker-{i}")) && text.contains(&format!("run {run}")),
            "log of {run}: {text}"
        );
        assert!(log.status.success());
    }
    assert_eq!(used.len(), 2, "both workers took runs: {used:?}");

    // Drain a: it reports DRAINED, and new runs go to b only.
    w.plane.cli_json(&["worker", "drain", &ida]);
    w.plane.wait_workers(Duration::from_secs(30), |l| {
        l.iter()
            .any(|x| x["id"] == ida.as_str() && x["state"] == "DRAINED")
    });
    for i in 0..3 {
        let spec = spec_file(&dir, &format!("d{i}"), "proposed", "d", "echo drained-test");
        let run = submit(&w, &spec);
        let v = w.plane.wait_run(&run, Duration::from_secs(120), done);
        assert_eq!(v["worker_id"], idb.as_str(), "a drained worker got a run");
    }
    w.plane.cli_json(&["worker", "undrain", &ida]);
    w.plane.wait_workers(Duration::from_secs(30), |l| {
        l.iter()
            .any(|x| x["id"] == ida.as_str() && x["state"] == "IDLE")
    });

    // Tracked runs of one stack: one at a time, in order.
    let slow: Vec<String> = (0..3)
        .map(|i| {
            submit(
                &w,
                &spec_file(
                    &dir,
                    &format!("t{i}"),
                    "tracked",
                    "net",
                    "sleep 1; echo tracked",
                ),
            )
        })
        .collect();
    let list = w.plane.cli_json(&["run", "list"]);
    let waiting: Vec<&Value> = list["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["phase"] == "queued")
        .collect();
    assert!(
        waiting.iter().any(|r| r["waiting"]
            .as_str()
            .unwrap_or("")
            .contains("waiting on another tracked run")),
        "{list}"
    );
    let ends: Vec<Value> = slow
        .iter()
        .map(|r| w.plane.wait_run(r, Duration::from_secs(120), done))
        .collect();
    for pair in ends.windows(2) {
        assert!(
            pair[0]["ended_ms"].as_u64() <= pair[1]["started_ms"].as_u64(),
            "tracked runs overlapped: {pair:?}"
        );
    }

    // Cycle b: it says bye and exits 0; the plane shows it gone.
    let mut b = b;
    w.plane.cli_json(&["worker", "cycle", &idb]);
    assert_eq!(b.wait(Duration::from_secs(20)), Some(0), "{}", b.stderr());
    w.plane.wait_workers(Duration::from_secs(10), |l| {
        l.iter().any(|x| {
            x["id"] == idb.as_str()
                && x["gone"] == true
                && x["gone_reason"].as_str().unwrap_or("").contains("cycle")
        })
    });
    drop(a);
    let _ = &w.brokers;
}

/// Waits for `run` to end, which must be `finished` with exit code 0;
/// `context` (e.g. a worker's stderr) is shown when it is not.
fn finished_ok(w: &World, run: &str, within: Duration, context: impl Fn() -> String) -> Value {
    let v = w.plane.wait_run(run, within, done);
    assert_eq!(
        (v["phase"].as_str(), v["exit_code"].as_i64()),
        (Some("finished"), Some(0)),
        "{v}\n{}",
        context()
    );
    v
}

/// `run logs --follow`: the run's whole log.
fn run_log(w: &World, run: &str) -> String {
    let log = w.plane.cli(&["run", "logs", run, "--follow"]);
    String::from_utf8_lossy(&log.stdout).into_owned()
}

/// Waits until `run` is `started`.
fn started(w: &World, run: &str) {
    w.plane
        .wait_run(run, Duration::from_secs(60), |v| v["phase"] == "started");
}

#[test]
fn crashes_mid_run_worker_sigkill_plane_sigkill_and_primary_broker_killed() {
    let _serial = serial();
    let mut w = world();
    let dir = w.plane.dir.path().to_path_buf();
    let mut a = mqtt_worker(&w, "a");
    let ida = a.worker_id();
    w.plane.wait_workers(Duration::from_secs(30), |l| {
        l.iter()
            .any(|x| x["id"] == ida.as_str() && x["state"] == "IDLE")
    });

    // 1. The worker is SIGKILLed mid-run and comes back: the run is failed
    //    as lost (never run twice), and the worker takes the next run.
    let run = submit(
        &w,
        &spec_file(&dir, "k", "proposed", "k", "echo before; sleep 60"),
    );
    started(&w, &run);
    a.kill9();
    let mut a = mqtt_worker(&w, "a");
    let v = w.plane.wait_run(&run, Duration::from_secs(60), done);
    assert_eq!(v["phase"], "failed", "{v}");
    assert!(v["reason"].as_str().unwrap().starts_with("lost"), "{v}");
    let next = submit(
        &w,
        &spec_file(&dir, "k2", "proposed", "k", "echo after-restart"),
    );
    let v = w.plane.wait_run(&next, Duration::from_secs(60), done);
    assert_eq!(
        (v["phase"].as_str(), v["worker_id"].as_str()),
        (Some("finished"), Some(ida.as_str())),
        "{v}"
    );

    // 2. The plane is SIGKILLed mid-run and restarted: the run's events are
    //    re-sent by the worker, the run finishes once, its log is complete.
    let run = submit(
        &w,
        &spec_file(&dir, "p", "proposed", "p", "echo one; sleep 3; echo two"),
    );
    started(&w, &run);
    w.plane.restart();
    finished_ok(&w, &run, Duration::from_secs(90), || a.stderr());
    let text = run_log(&w, &run);
    assert!(text.contains("one") && text.contains("two"), "{text}");

    // 3. The primary broker dies mid-run: the worker fails over, the plane
    //    (subscribed in both regions) sees the run finish.
    let run = submit(
        &w,
        &spec_file(&dir, "b", "proposed", "b", "echo x; sleep 4; echo y"),
    );
    started(&w, &run);
    w.brokers.primary().kill();
    finished_ok(&w, &run, Duration::from_secs(90), || a.stderr());
    w.plane.wait_workers(Duration::from_secs(30), |l| {
        l.iter()
            .any(|x| x["id"] == ida.as_str() && x["region"] == "eu-central-1")
    });
    // Commands follow it to the secondary: a drain is seen.
    w.plane.cli_json(&["worker", "drain", &ida]);
    w.plane.wait_workers(Duration::from_secs(30), |l| {
        l.iter()
            .any(|x| x["id"] == ida.as_str() && x["state"] == "DRAINED")
    });
    a.kill9();
}

/// Run events the plane recorded, from its SQLite file: (run id, phase).
fn recorded_phases(w: &World) -> Vec<(String, String)> {
    let db = rusqlite::Connection::open_with_flags(
        w.plane.data.join("plane.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut s = db.prepare("SELECT body FROM events").unwrap();
    let rows = s.query_map([], |r| r.get::<_, String>(0)).unwrap();
    rows.filter_map(|b| serde_json::from_str::<Value>(&b.unwrap()).ok())
        .filter(|v| v["type"] == "run")
        .map(|v| {
            (
                v["run_id"].as_str().unwrap().to_string(),
                v["phase"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_hundred_runs_across_two_long_poll_and_two_mqtt_workers_each_finish_once() {
    let _serial = serial();
    let w = world();
    let dir = w.plane.dir.path().to_path_buf();
    let mut workers = Vec::new();
    for (name, proto) in [
        ("p1", "poll"),
        ("p2", "poll"),
        ("m1", "mqtt"),
        ("m2", "mqtt"),
    ] {
        let l = launch_worker(
            &w.pool,
            &dir.join(name),
            &w.roots,
            &[
                ("SPACELIFT_WORKER_COMMS_PROTOCOL", proto),
                ("LIFTOFF_POLL_WAIT", "20s"),
            ],
        );
        workers.push((l.worker_id(), proto, l));
    }
    w.plane.wait_workers(Duration::from_secs(60), |l| {
        workers.iter().all(|(id, proto, _)| {
            l.iter()
                .any(|x| x["id"] == id.as_str() && x["state"] == "IDLE" && x["transport"] == *proto)
        })
    });
    let spec = spec_file(
        &dir,
        "many",
        "proposed",
        "many",
        "echo \"begin $SPACELIFT_RUN_ID\"; seq 1 200; echo \"end $SPACELIFT_RUN_ID\"",
    );
    let runs: Vec<String> = (0..100)
        .map(|i| {
            let v = w.plane.cli_json(&[
                "run",
                "submit",
                "edge",
                "--spec",
                spec.to_str().unwrap(),
                "--stack",
                &format!("s{}", i % 7),
            ]);
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    let mut by_worker: std::collections::HashMap<String, usize> = Default::default();
    for run in &runs {
        let v = finished_ok(&w, run, Duration::from_secs(600), String::new);
        *by_worker
            .entry(v["worker_id"].as_str().unwrap().to_string())
            .or_default() += 1;
        let text = run_log(&w, run);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            text.contains(&format!("begin {run}")) && text.contains(&format!("end {run}")),
            "{run}: {text}"
        );
        for n in 1..=200 {
            assert!(
                lines.contains(&n.to_string().as_str()),
                "line {n} missing in the log of {run}"
            );
        }
    }
    // Every worker took runs, over both transports.
    for (id, proto, l) in &workers {
        assert!(
            by_worker.get(id).copied().unwrap_or(0) > 0,
            "{proto} worker {id} took no run: {by_worker:?}\n{}",
            l.stderr()
        );
    }
    // Exactly once: one accepted, one started, one finished per run.
    let phases = recorded_phases(&w);
    for run in &runs {
        for phase in ["accepted", "started", "finished"] {
            let n = phases
                .iter()
                .filter(|(r, p)| r == run && p == phase)
                .count();
            assert_eq!(n, 1, "run {run} has {n} {phase} events");
        }
    }
}

#[test]
fn pool_reset_over_mqtt_the_brokers_use_the_planes_crl() {
    let _serial = serial();
    let mut w = world();
    let dir = w.plane.dir.path().to_path_buf();
    // The plane's MQTT identity from the plane's own CA: the brokers trust
    // only that CA and check its CRL (DATA/crl.pem).
    let plane_ca = TestCa {
        dir: w.plane.data.clone(),
        name: "ca".into(),
    };
    let (key, csr) = support::pki::pool_key_and_csr(&dir.join("planemqtt"), "planemqtt", 2048);
    let crt = dir.join("planemqtt").join("planemqtt.crt");
    plane_ca.sign(&csr, &crt, 30);
    let cfg_path = w.plane.data.join("plane.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["mqtt"]["cert"] = crt.to_str().unwrap().into();
    cfg["mqtt"]["key"] = key.to_str().unwrap().into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let crl = w.plane.data.join("crl.pem");
    for b in w.brokers.brokers.iter_mut() {
        b.distrust(&plane_ca);
        b.check_crl(&crl);
    }
    w.plane.restart();
    let mut a = mqtt_worker(&w, "a");
    let ida = a.worker_id();
    w.plane.wait_workers(Duration::from_secs(30), |l| {
        l.iter()
            .any(|x| x["id"] == ida.as_str() && x["state"] == "IDLE")
    });

    let (_, csr2) = support::pki::pool_key_and_csr(&dir.join("reset"), "spacelift", 2048);
    w.plane
        .cli_json(&["pool", "reset", "edge", "--csr", csr2.to_str().unwrap()]);
    // The operator reloads the brokers with the new CRL.
    for b in w.brokers.brokers.iter_mut() {
        b.check_crl(&crl);
    }
    assert_eq!(a.wait(Duration::from_secs(90)), Some(78), "{}", a.stderr());
    assert!(
        a.stderr().contains("was the worker pool reset?"),
        "{}",
        a.stderr()
    );
}
