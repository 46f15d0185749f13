//! The plane's Prometheus metrics (`metrics_listen` in plane.json) with a
//! real `liftoff-plane serve` and a real `liftoff run` worker over the
//! long-poll binding: the pending/running gauges, the workers by state and
//! transport, the dispatch histogram and the ended runs move as runs are
//! submitted, dispatched, cancelled and finished; `promtool check metrics`
//! passes on every scrape; a bad address is a configuration error (exit
//! 78). Needs root (the worker's sandbox), the openssl CLI and promtool.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use support::plane_server::{PlaneProc, launch_worker, plane_bin, spec_file};
use support::scrape::{get, promtool_check, value, wait_metric};

const T: Duration = Duration::from_secs(60);

fn set_metrics_listen(plane: &PlaneProc, addr: &str) {
    let cfg_path = plane.data.join("plane.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["metrics_listen"] = addr.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
}

fn submit(plane: &PlaneProc, shell: &str, name: &str) -> String {
    let spec = spec_file(plane.dir.path(), name, "proposed", name, shell);
    let v = plane.cli_json(&["run", "submit", "edge", "--spec", spec.to_str().unwrap()]);
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn metrics_follow_runs_and_workers_and_pass_promtool() {
    support::sandbox::require_root();
    let mut plane = PlaneProc::start();
    let port = support::brokers::free_ports(1)[0];
    let addr = format!("127.0.0.1:{port}");
    set_metrics_listen(&plane, &addr);
    plane.restart();
    let (status, body) = get(&addr, "/healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(get(&addr, "/nope").0, 404);

    let pool = plane.pool("edge", 2048);
    let text = wait_metric(
        &addr,
        r#"liftoff_plane_runs_pending{pool="edge"}"#,
        T,
        |v| v == 0.0,
    );
    promtool_check(&text);
    assert_eq!(
        value(&text, "liftoff_plane_dispatch_seconds_count"),
        Some(0.0)
    );

    // A run with no worker is pending: the autoscaling signal.
    let long = submit(&plane, "echo long; sleep 60", "long");
    let text = wait_metric(
        &addr,
        r#"liftoff_plane_runs_pending{pool="edge"}"#,
        T,
        |v| v == 1.0,
    );
    promtool_check(&text);
    assert_eq!(
        value(&text, r#"liftoff_plane_runs_running{pool="edge"}"#),
        Some(0.0)
    );

    // A worker comes: the run is dispatched and running, the worker busy.
    let worker = launch_worker(
        &pool,
        &plane.dir.path().join("w"),
        &plane.data.join("ca.crt"),
        &[
            ("SPACELIFT_WORKER_COMMS_PROTOCOL", "poll"),
            ("LIFTOFF_POLL_WAIT", "20s"),
        ],
    );
    plane.wait_run(&long, T, |v| v["phase"] == "started");
    let text = wait_metric(
        &addr,
        r#"liftoff_plane_workers{pool="edge",state="busy",transport="poll"}"#,
        T,
        |v| v == 1.0,
    );
    promtool_check(&text);
    assert_eq!(
        value(&text, r#"liftoff_plane_runs_pending{pool="edge"}"#),
        Some(0.0)
    );
    assert_eq!(
        value(&text, r#"liftoff_plane_runs_running{pool="edge"}"#),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "liftoff_plane_dispatch_seconds_count"),
        Some(1.0)
    );

    // Cancelled, then a run that finishes.
    plane.cli_json(&["run", "cancel", &long]);
    wait_metric(
        &addr,
        r#"liftoff_plane_runs_total{pool="edge",result="cancelled"}"#,
        T,
        |v| v == 1.0,
    );
    let short = submit(&plane, "echo short", "short");
    let text = wait_metric(
        &addr,
        r#"liftoff_plane_runs_total{pool="edge",result="finished"}"#,
        T,
        |v| v == 1.0,
    );
    let v = plane.wait_run(&short, T, |v| v["phase"] == "finished");
    assert_eq!(v["phase"], "finished", "{v}");
    promtool_check(&text);
    assert_eq!(
        value(&text, "liftoff_plane_dispatch_seconds_count"),
        Some(2.0)
    );
    assert_eq!(
        value(&text, r#"liftoff_plane_runs_running{pool="edge"}"#),
        Some(0.0)
    );
    let text = wait_metric(
        &addr,
        r#"liftoff_plane_workers{pool="edge",state="idle",transport="poll"}"#,
        T,
        |v| v == 1.0,
    );
    promtool_check(&text);
    drop(worker);

    // The ended-run counts come from the store: they survive a restart.
    plane.restart();
    let text = wait_metric(
        &addr,
        r#"liftoff_plane_runs_total{pool="edge",result="finished"}"#,
        T,
        |v| v == 1.0,
    );
    promtool_check(&text);
}

#[test]
fn a_bad_metrics_address_is_a_config_error() {
    let mut plane = PlaneProc::start();
    // Its HTTPS port must be free for `serve` to reach the metrics address.
    plane.kill9();
    for bad in ["nonsense", "127.0.0.1:99999"] {
        set_metrics_listen(&plane, bad);
        let out = Command::new(plane_bin())
            .args(["serve", "--data"])
            .arg(&plane.data)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(78), "{bad}: {err}");
        assert!(err.contains("metrics_listen"), "{bad}: {err}");
    }
}
