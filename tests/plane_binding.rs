//! The plane's side of the HTTPS long-poll binding, driven by hand with a
//! pool certificate made from an openssl CSR (the messages a worker would
//! send), against a real `liftoff-plane` process with its SQLite store on
//! disk: mTLS and revocation, the will and the poll grace, cursors, acks,
//! de-duplication, assign → accepted → log → finished, the log readable
//! through `run logs`, and a plane SIGKILL + restart keeping it all.

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::plane_server::{Binding, PlaneProc};

fn open_state(pool: &support::plane_server::PoolKeys, assign: &Value) -> Value {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut doc: Value = serde_json::from_slice(&b64.decode(&pool.token).unwrap()).unwrap();
    assert!(
        doc["endpoints"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("https://")
    );
    assert!(doc["ca"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    // A token parser without `endpoints` (before the long-poll transport)
    // wants `brokers`.
    if doc.get("brokers").is_none() {
        doc["brokers"] = json!([{"region": "unused", "url": "mqtts://127.0.0.1:1"}]);
    }
    let token = liftoff::config::token::parse(&b64.encode(doc.to_string()))
        .expect("the printed token parses");
    let key = liftoff::identity::PoolKey::from_pem(&std::fs::read(&pool.key).unwrap()).unwrap();
    let (id, _) = liftoff::identity::Identity::new(
        &token,
        key,
        "SPACELIFT_POOL_PRIVATE_KEY",
        liftoff::identity::now(),
    )
    .unwrap();
    let env: liftoff::identity::Envelope = serde_json::from_value(assign["state"].clone()).unwrap();
    let plain = id
        .decrypt_run_state(&env, assign["run_id"].as_str().unwrap())
        .unwrap();
    serde_json::from_slice(&plain).unwrap()
}

/// Polls until a command of `ty` arrives; returns it and the cursor.
fn poll_for(b: &Binding, cursor: &mut Option<String>, ty: &str, timeout: Duration) -> Value {
    let end = Instant::now() + timeout;
    loop {
        let (status, v) = b.poll(cursor.as_deref(), 2).unwrap();
        assert_eq!(status, 200, "{v}");
        *cursor = v["cursor"].as_str().map(str::to_string);
        if let Some(c) = v["commands"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == ty)
        {
            return c.clone();
        }
        assert!(Instant::now() < end, "no {ty} command arrived");
    }
}

#[test]
fn a_run_goes_through_the_binding_and_survives_a_plane_restart() {
    let mut plane = PlaneProc::start();
    let pool = plane.pool("edge", 2048);
    let b = Binding::new(&plane, &pool, &pool.cert_pem, &pool.key);
    // Ping and the session (the will).
    let ping = b.agent.get(format!("{}/ping", b.base)).call().unwrap();
    assert_eq!(ping.status().as_u16(), 200);
    let will = b.msg(
        "gone",
        None,
        json!({"worker_id": b.worker, "crashed": true}),
    );
    assert_eq!(b.post("session", &will).unwrap(), 200);
    let hello = b.hello(will["id"].as_str().unwrap());
    assert_eq!(
        b.post("messages", &json!([hello, b.status("IDLE", &[], None)]))
            .unwrap(),
        200
    );
    plane.wait_workers(Duration::from_secs(10), |w| {
        w.iter()
            .any(|w| w["id"] == b.worker && w["state"] == "IDLE" && w["transport"] == "poll")
    });

    // A run with a source directory.
    let src = plane.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("main.tf"), "# hello\n").unwrap();
    let spec = plane.dir.path().join("spec.json");
    std::fs::write(&spec, r#"{"run_id":"ignored","run_type":"tracked","stack":{"id":"net"},"steps":[{"name":"plan","argv":["true"]}]}"#).unwrap();
    let run = plane.cli_json(&[
        "run",
        "submit",
        "edge",
        "--spec",
        spec.to_str().unwrap(),
        "--source",
        src.to_str().unwrap(),
    ]);
    let run_id = run["id"].as_str().unwrap().to_string();
    assert_eq!(run["phase"], "queued");

    let mut cursor = None;
    let assign = poll_for(&b, &mut cursor, "assign", Duration::from_secs(10));
    assert_eq!(
        (assign["run_id"].as_str(), assign["run_type"].as_str()),
        (Some(run_id.as_str()), Some("write"))
    );
    let spec = open_state(&pool, &assign);
    assert_eq!(
        spec["run_id"],
        run_id.as_str(),
        "the plane's run id is in the sealed spec"
    );
    liftoff::run::spec::RunSpec::from_json(spec.to_string().as_bytes())
        .expect("the sealed spec is valid");
    // The source is served through its signed GET URL.
    let src_url = spec["source"]["url"].as_str().unwrap();
    let got = plane.admin_agent().get(src_url).call().unwrap();
    assert_eq!(got.status().as_u16(), 200);
    assert!(
        got.into_body()
            .read_to_vec()
            .unwrap()
            .starts_with(&[0x1f, 0x8b])
    );
    // A tampered signature is refused.
    let bad = src_url.replace("sig=", "sig=00");
    assert_eq!(
        plane
            .admin_agent()
            .get(bad)
            .call()
            .unwrap()
            .status()
            .as_u16(),
        403
    );

    // Accepted, started, a log chunk PUT to its URL, finished.
    let log_url = spec["uploads"]["logs"][0].as_str().unwrap();
    let put = plane
        .admin_agent()
        .put(log_url)
        .send(&b"hello from the run\n"[..])
        .unwrap();
    assert_eq!(put.status().as_u16(), 200);
    let cmd = assign["id"].as_str().unwrap();
    let accepted = b.msg(
        "run",
        Some(1),
        json!({"run_id": run_id, "phase": "accepted", "command_id": cmd}),
    );
    let started = b.msg(
        "run",
        Some(2),
        json!({"run_id": run_id, "phase": "started"}),
    );
    let log = b.msg(
        "log",
        Some(3),
        json!({"run_id": run_id, "chunk": 0, "key": "o/x", "bytes": 19}),
    );
    let finished = b.msg("run", Some(4), json!({"run_id": run_id, "phase": "finished", "exit_code": 3, "duration_ms": 5, "steps": [{"name": "plan", "exit_code": 3, "duration_ms": 5}]}));
    assert_eq!(
        b.post("messages", &json!([accepted, started, log, finished]))
            .unwrap(),
        200
    );
    // Every durable event is acked.
    let mut acked: Vec<String> = Vec::new();
    let end = Instant::now() + Duration::from_secs(10);
    while acked.len() < 4 {
        let ack = poll_for(&b, &mut cursor, "ack", Duration::from_secs(10));
        acked.extend(
            ack["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i.as_str().unwrap().to_string()),
        );
        assert!(Instant::now() < end);
    }
    for m in [&accepted, &started, &log, &finished] {
        assert!(acked.contains(&m["id"].as_str().unwrap().to_string()));
    }
    let shown = plane.wait_run(&run_id, Duration::from_secs(10), |v| {
        v["phase"] == "finished"
    });
    assert_eq!(shown["exit_code"], 3);
    assert_eq!(shown["steps"][0]["name"], "plan");
    let logs = plane.cli(&["run", "logs", &run_id]);
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout),
        "hello from the run\n"
    );

    // A re-send (same ids) is de-duplicated but acked again.
    assert_eq!(b.post("messages", &json!([finished])).unwrap(), 200);
    let ack = poll_for(&b, &mut cursor, "ack", Duration::from_secs(10));
    assert_eq!(ack["ids"], json!([finished["id"]]));

    // Confirmed commands are forgotten; a poll without a cursor gets only
    // the unconfirmed ones (none here).
    let (_, v) = b.poll(cursor.as_deref(), 1).unwrap();
    assert_eq!(v["commands"], json!([]));
    let (_, v) = b.poll(None, 1).unwrap();
    assert_eq!(
        v["commands"],
        json!([]),
        "confirmed commands came back: {v}"
    );

    // SIGKILL the plane and restart it: the run and the worker are still there.
    plane.restart();
    let shown = plane.cli_json(&["run", "show", &run_id]);
    assert_eq!(
        (shown["phase"].as_str(), shown["exit_code"].as_i64()),
        (Some("finished"), Some(3))
    );
    let logs = plane.cli(&["run", "logs", &run_id]);
    assert_eq!(
        String::from_utf8_lossy(&logs.stdout),
        "hello from the run\n"
    );
    let workers = plane.cli_json(&["worker", "list"]);
    assert!(
        workers["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["id"] == b.worker)
    );
}

#[test]
fn certificates_are_checked_and_a_reset_revokes_the_old_one() {
    let plane = PlaneProc::start();
    let pool = plane.pool("one", 2048);
    let other = plane.pool("two", 2048);
    let b = Binding::new(&plane, &pool, &pool.cert_pem, &pool.key);
    assert_eq!(
        b.agent
            .get(format!("{}/ping", b.base))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
    // Another pool's certificate on this pool's path: 403.
    let cross = Binding::new(&plane, &pool, &other.cert_pem, &other.key);
    assert_eq!(
        cross
            .agent
            .get(format!("{}/ping", cross.base))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        403
    );
    // No certificate: 401.
    let anon = plane
        .admin_agent()
        .get(format!("{}/ping", b.base))
        .call()
        .unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    // A certificate from a foreign CA: the handshake fails.
    let foreign_dir = plane.dir.path().join("foreign");
    let foreign = support::pki::Pool::new(&foreign_dir, 2048, &[("x", "mqtts://127.0.0.1:1")]);
    let f = Binding::new(
        &plane,
        &pool,
        &std::fs::read_to_string(&foreign.cert).unwrap(),
        &foreign.key,
    );
    assert!(
        f.agent.get(format!("{}/ping", f.base)).call().is_err(),
        "a foreign certificate was accepted"
    );

    // Reset with a new CSR: the old certificate is refused in the handshake,
    // the new one works.
    let (key2, csr2) =
        support::pki::pool_key_and_csr(&plane.dir.path().join("reset"), "spacelift", 2048);
    let v = plane.cli_json(&["pool", "reset", "one", "--csr", csr2.to_str().unwrap()]);
    let cert2 = v["pool"]["cert_pem"].as_str().unwrap();
    let old = Binding::new(&plane, &pool, &pool.cert_pem, &pool.key);
    let refused = old.agent.get(format!("{}/ping", old.base)).call();
    assert!(
        refused.is_err(),
        "the revoked certificate was accepted: {:?}",
        refused.map(|r| r.status())
    );
    let new = Binding::new(&plane, &pool, cert2, &key2);
    assert_eq!(
        new.agent
            .get(format!("{}/ping", new.base))
            .call()
            .unwrap()
            .status()
            .as_u16(),
        200
    );
}

#[test]
fn the_poll_grace_declares_a_silent_worker_gone_and_requeues_its_unstarted_run() {
    let plane = PlaneProc::start();
    // A short grace keeps the test quick (plane.json's poll_grace_s).
    let cfg_path = plane.data.join("plane.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["poll_grace_s"] = 2.into();
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let mut plane = plane;
    plane.restart();
    let pool = plane.pool("p", 2048);
    let b = Binding::new(&plane, &pool, &pool.cert_pem, &pool.key);
    let will = b.msg(
        "gone",
        None,
        json!({"worker_id": b.worker, "crashed": true}),
    );
    b.post("session", &will).unwrap();
    b.post(
        "messages",
        &json!([
            b.hello(will["id"].as_str().unwrap()),
            b.status("IDLE", &[], None)
        ]),
    )
    .unwrap();
    let spec = plane.dir.path().join("spec.json");
    std::fs::write(
        &spec,
        r#"{"run_id":"x","run_type":"proposed","steps":[{"name":"a","argv":["true"]}]}"#,
    )
    .unwrap();
    let run = plane.cli_json(&["run", "submit", "p", "--spec", spec.to_str().unwrap()]);
    let run_id = run["id"].as_str().unwrap();
    let mut cursor = None;
    let assign = poll_for(&b, &mut cursor, "assign", Duration::from_secs(10));
    // Accepted, then silence: no poll, no request.
    let acc = b.msg(
        "run",
        Some(1),
        json!({"run_id": run_id, "phase": "accepted", "command_id": assign["id"]}),
    );
    b.post("messages", &json!([acc])).unwrap();
    plane.wait_run(run_id, Duration::from_secs(5), |v| v["phase"] == "accepted");
    let v = plane.wait_run(run_id, Duration::from_secs(15), |v| v["phase"] == "queued");
    assert!(
        v["reason"].as_str().unwrap().contains("before starting it"),
        "{v}"
    );
    let w = plane.wait_workers(Duration::from_secs(5), |w| {
        w.iter().any(|w| w["id"] == b.worker && w["gone"] == true)
    });
    assert!(w.iter().any(|w| {
        w["gone_reason"]
            .as_str()
            .unwrap_or("")
            .contains("poll grace")
    }));
}

#[test]
fn the_admin_api_needs_the_token_and_bad_input_gets_clear_errors() {
    let plane = PlaneProc::start();
    let url = format!("{}/admin/v1/pools", plane.url());
    let agent = plane.admin_agent();
    assert_eq!(agent.get(&url).call().unwrap().status().as_u16(), 401);
    let wrong = agent
        .get(&url)
        .header("Authorization", "Bearer nope")
        .call()
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 403);
    let right = agent
        .get(&url)
        .header("Authorization", &format!("Bearer {}", plane.admin_token()))
        .call()
        .unwrap();
    assert_eq!(right.status().as_u16(), 200);
    // Remote CLI use: --url, --token, --ca; a wrong token exits 77.
    let ca = plane.data.join("ca.crt");
    let out = std::process::Command::new(support::plane_server::plane_bin())
        .args([
            "pool",
            "list",
            "--url",
            &plane.url(),
            "--token",
            "nope",
            "--ca",
            ca.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(77),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong admin token"));

    // CSRs: too short, not RSA, not a CSR → exit 2 naming the problem;
    // a taken name → exit 4; nothing half-made (no pool listed).
    let dir = plane.dir.path().join("csrs");
    let (_, short) = support::pki::pool_key_and_csr(&dir, "short", 1024);
    let out = plane.cli(&["pool", "create", "p", "--csr", short.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("1024-bit RSA key"));
    let (_, ec) = support::pki::ec_key_and_csr(&dir, "ec");
    let out = plane.cli(&["pool", "create", "p", "--csr", ec.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not RSA"));
    std::fs::write(dir.join("junk.csr"), "hello").unwrap();
    let out = plane.cli(&[
        "pool",
        "create",
        "p",
        "--csr",
        dir.join("junk.csr").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        plane.cli_json(&["pool", "list"])["pools"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    plane.pool("p", 2048);
    let (_, again) = support::pki::pool_key_and_csr(&dir, "again", 2048);
    let out = plane.cli(&["pool", "create", "p", "--csr", again.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(4));

    // Specs: the same errors as `liftoff exec --spec`; an unknown pool; the
    // same idempotency key twice queues one run.
    let bad = dir.join("bad.json");
    std::fs::write(&bad, r#"{"run_id":"x","run_type":"proposed","steps":[]}"#).unwrap();
    let out = plane.cli(&["run", "submit", "p", "--spec", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let exec = std::process::Command::new(support::liftoff_bin())
        .args(["exec", "--spec", bad.to_str().unwrap()])
        .output()
        .unwrap();
    let plane_err = String::from_utf8_lossy(&out.stderr).to_string();
    let first_line = String::from_utf8_lossy(&exec.stderr)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    let core = first_line
        .split("run spec")
        .nth(1)
        .unwrap_or("")
        .trim()
        .to_string();
    assert!(
        !core.is_empty() && plane_err.contains(&core),
        "plane: {plane_err}\nexec: {first_line}"
    );
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"run_id":"x","run_type":"proposed","steps":[{"name":"a","argv":["true"]}]}"#,
    )
    .unwrap();
    let out = plane.cli(&["run", "submit", "nope", "--spec", good.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(3));
    let submit_k1 = || {
        plane.cli_json(&[
            "run",
            "submit",
            "p",
            "--spec",
            good.to_str().unwrap(),
            "--idempotency-key",
            "k1",
        ])
    };
    let (a, b) = (submit_k1(), submit_k1());
    assert_eq!(a["id"], b["id"]);
    assert_eq!(
        (a["created"].as_bool(), b["created"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(
        plane.cli_json(&["run", "list"])["runs"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
}
