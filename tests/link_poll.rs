//! The HTTPS long-poll link end to end: a real `liftoff run` against the
//! long-poll plane double (tests/support/poll_plane.rs: a real HTTPS server
//! that verifies client certificates, behind socat relays that are killed or
//! frozen with real signals), a real tinyproxy for the CONNECT tunnel, and
//! certificates made with the openssl CLI.

mod support;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use support::pki::{Pool, TestCa};
use support::plane::{Launcher, command, is_run, is_type, launch_with};
use support::poll_plane::{Fault, Options, PollPlane};
use support::runs::open_tempdir;

const T: Duration = Duration::from_secs(30);

struct World {
    _dir: tempfile::TempDir,
    dir: std::path::PathBuf,
    pool: Pool,
    plane: PollPlane,
    token: String,
}

fn world_with(opts: Options) -> World {
    let dir = open_tempdir();
    let path = dir.path().to_path_buf();
    let pool = Pool::new(&path.join("pki"), 2048, &[]);
    let plane = PollPlane::start_with(&pool, &path.join("plane"), opts);
    let token = plane.token(&pool);
    World {
        _dir: dir,
        dir: path,
        pool,
        plane,
        token,
    }
}

fn world() -> World {
    world_with(Options::default())
}

impl World {
    fn launch(&self, state: &str, extra: &[(&str, &str)]) -> Launcher {
        launch_with(
            &self.token,
            &self.pool.key_base64(),
            &self.dir.join(state),
            extra,
        )
    }

    /// The durable events the consumer got from `wid` are seq 1, 2, …
    /// with no gap and no repeat.
    fn assert_seqs_gapless(&self, wid: &str) {
        let seqs: Vec<u64> = self
            .plane
            .delivered(wid)
            .iter()
            .map(|v| v["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }

    fn hello(&self, l: &Launcher, region: &str, skip: usize) -> Value {
        self.plane
            .wait_after(skip, T, |v| is_type(v, "hello") && v["region"] == region)
            .unwrap_or_else(|| panic!("no hello from {region}: {}", l.stderr()))
    }
}

fn assign(run: &str, cmd: &str) -> Value {
    command(
        "assign",
        json!({"run_id": run, "run_type": "write", "state": {"command": cmd}}),
    )
}

/// hello (transport `poll`, the primary's region) then status, run events
/// for an assign, acks that empty the outbox, and a drain round trip.
#[test]
fn round_trips_over_long_poll() {
    let w = world();
    let l = w.launch("s", &[]);
    let wid = l.worker_id();
    let hello = w.hello(&l, "eu-west-1", 0);
    assert_eq!(hello["transport"], "poll", "{hello}");
    assert!(hello["will_id"].as_str().is_some(), "{hello}");
    w.plane
        .wait_for(T, |v| is_type(v, "status"))
        .expect("status");
    let events = w.plane.events();
    let h = events.iter().position(|v| is_type(v, "hello")).unwrap();
    let s = events
        .iter()
        .position(|v| is_type(v, "status"))
        .expect("status");
    assert!(h < s, "hello comes before status: {events:?}");

    w.plane.send(&wid, &assign("P1", "echo hi; exit 3"));
    let fin = w
        .plane
        .wait_for(T, |v| is_run(v, "P1", "finished"))
        .unwrap_or_else(|| panic!("no finished: {}", l.stderr()));
    assert_eq!(fin["exit_code"], 3, "{fin}");
    for phase in ["accepted", "started"] {
        assert!(
            w.plane.events().iter().any(|v| is_run(v, "P1", phase)),
            "{phase}"
        );
    }
    // every durable event acked over the poll: none re-sent afterwards
    let durable: Vec<String> = w
        .plane
        .events()
        .iter()
        .filter(|v| v.get("seq").is_some())
        .map(|v| v["id"].as_str().unwrap().to_string())
        .collect();
    assert!(durable.len() >= 3, "{durable:?}");
    let handshakes = w.plane.connections();
    std::thread::sleep(Duration::from_secs(5)); // LIFTOFF_RESEND_AFTER=3s has passed
    // five heartbeats later: the batch and poll connections were reused
    assert_eq!(
        w.plane.connections(),
        handshakes,
        "a new TLS connection per request: {}",
        l.stderr()
    );
    for id in &durable {
        assert_eq!(w.plane.copies(id), 1, "{id} re-sent although acked");
    }
    w.assert_seqs_gapless(&wid);

    // a command while a poll is held: taken at once
    let end = Instant::now() + T;
    while !w.plane.poll_held(&wid) {
        assert!(Instant::now() < end, "no poll held");
        std::thread::sleep(Duration::from_millis(10));
    }
    let skip = w.plane.events().len();
    w.plane.send(&wid, &command("drain", json!({"on": true})));
    w.plane
        .wait_after(skip, T, |v| is_type(v, "status") && v["state"] == "DRAINED")
        .expect("DRAINED");
    // the poll after the drain (made as soon as the command is handed
    // over) confirms it with its cursor
    let end = Instant::now() + T;
    while w.plane.unconfirmed(&wid) > 0 {
        assert!(Instant::now() < end, "the drain was never confirmed");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A full run through the real sandbox executor: a sealed run state, the
/// steps' output in the log chunks, `finished` with the steps.
#[test]
fn a_sealed_run_through_the_sandbox() {
    support::sandbox::require_root();
    let w = world();
    let l = w.launch("s", &[("LIFTOFF_JOB_MEMORY", "512MiB")]);
    let wid = l.worker_id();
    w.hello(&l, "eu-west-1", 0);
    let spki = {
        use rustls_pki_types::pem::PemObject;
        let pem = std::fs::read(&w.pool.cert).unwrap();
        let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
        liftoff::identity::certificate_info(der.as_ref())
            .unwrap()
            .spki_der
    };
    let id = "01RUNPOLL0000000000000000A";
    let store = support::http_server::HttpServer::start(0);
    let spec = json!({
        "run_id": id, "run_type": "tracked",
        "steps": [{"name": "plan", "shell": "echo planned over long-poll; exit 0"}],
        "uploads": {"logs": [store.url(&format!("/logs/{id}/0")), store.url(&format!("/logs/{id}/1"))]}
    });
    let sealed = liftoff::identity::seal_run_state(&spki, id, spec.to_string().as_bytes()).unwrap();
    w.plane.send(
        &wid,
        &command(
            "assign",
            json!({"run_id": id, "run_type": "write", "state": sealed}),
        ),
    );
    let fin = w
        .plane
        .wait_for(T, |v| is_run(v, id, "finished") || is_run(v, id, "failed"))
        .unwrap_or_else(|| panic!("no end of run: {}", l.stderr()));
    assert_eq!(fin["phase"], "finished", "{fin}\n{}", l.stderr());
    assert_eq!(fin["steps"][0]["name"], "plan", "{fin}");
    assert!(
        w.plane
            .events()
            .iter()
            .any(|v| is_type(v, "log") && v["run_id"] == id),
        "log events"
    );
    let log: Vec<u8> = store.stored().into_iter().flat_map(|s| s.body).collect();
    let log = String::from_utf8_lossy(&log);
    assert!(log.contains("planned over long-poll"), "{log}");
}

/// Primary killed: the worker is on the secondary, events made meanwhile
/// arrive once past de-duplication; primary back: fail-back. Then the
/// primary frozen (SIGSTOP): the same.
#[test]
fn failover_when_killed_and_when_frozen_and_fail_back() {
    let mut w = world();
    let l = w.launch("s", &[]);
    let wid = l.worker_id();
    w.hello(&l, "eu-west-1", 0);

    let skip = w.plane.events().len();
    w.plane.endpoints[0].kill();
    let killed = Instant::now();
    w.hello(&l, "eu-central-1", skip);
    println!("failover after a kill: {:?}", killed.elapsed());
    w.plane.send(&wid, &assign("F1", "true"));
    w.plane
        .wait_for(T, |v| is_run(v, "F1", "finished"))
        .unwrap_or_else(|| panic!("no run on the secondary: {}", l.stderr()));

    let skip = w.plane.events().len();
    w.plane.endpoints[0].start();
    w.hello(&l, "eu-west-1", skip);

    let skip = w.plane.events().len();
    w.plane.endpoints[0].pause();
    w.plane.send(&wid, &assign("F2", "true"));
    w.hello(&l, "eu-central-1", skip);
    w.plane
        .wait_for(T, |v| is_run(v, "F2", "finished"))
        .unwrap_or_else(|| panic!("no run after the freeze: {}", l.stderr()));
    w.plane.endpoints[0].resume();
    let skip = w.plane.events().len();
    w.hello(&l, "eu-west-1", skip);

    // nothing durable lost or doubled past de-duplication
    w.assert_seqs_gapless(&wid);
    for run in ["F1", "F2"] {
        let n = w
            .plane
            .events()
            .iter()
            .filter(|v| is_run(v, run, "accepted"))
            .count();
        assert_eq!(n, 1, "{run} accepted once");
    }
}

/// SIGKILL of the launcher with unacked events, then a restart on the same
/// state: the events are re-sent with their ids; the plane records `gone`
/// after the poll grace for the killed process and never for a clean stop.
/// (The double holds polls 2 s here: a held poll of a dead worker counts
/// until the plane answers it, so `gone` comes a hold plus the grace later.)
#[test]
fn sigkill_restart_resends_and_gone_follows_the_grace() {
    let w = world_with(Options {
        hold_max: Duration::from_secs(2),
        ..Options::default()
    });
    w.plane.set_auto_ack(false);
    let mut l = w.launch("s", &[]);
    let wid = l.worker_id();
    w.hello(&l, "eu-west-1", 0);
    w.plane.send(&wid, &assign("K1", "true"));
    let fin = w
        .plane
        .wait_for(T, |v| is_run(v, "K1", "finished"))
        .expect("finished");
    let id = fin["id"].as_str().unwrap().to_string();
    l.kill9();
    let end = Instant::now() + T;
    while !w.plane.is_gone(&wid) {
        assert!(Instant::now() < end, "no gone after the poll grace");
        std::thread::sleep(Duration::from_millis(50));
    }
    w.plane.set_auto_ack(true);
    let skip = w.plane.events().len();
    let mut l2 = w.launch("s", &[]);
    assert_eq!(l2.worker_id(), wid);
    w.hello(&l2, "eu-west-1", skip);
    let end = Instant::now() + T;
    while w.plane.copies(&id) < 2 {
        assert!(Instant::now() < end, "{id} not re-sent: {}", l2.stderr());
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!w.plane.is_gone(&wid), "the new hello makes the gone stale");

    // a clean stop: bye, the session deleted, no gone after the grace
    l2.signal(Signal::SIGTERM);
    assert_eq!(l2.wait(T), Some(0), "{}", l2.stderr());
    w.plane
        .wait_for(T, |v| is_type(v, "bye") && v["worker_id"] == wid)
        .expect("bye");
    std::thread::sleep(Duration::from_secs(4)); // the grace (3 s) passes
    assert!(!w.plane.is_gone(&wid), "a clean stop leaves no gone");
}

fn tinyproxy(dir: &std::path::Path) -> (std::process::Child, u16, std::path::PathBuf) {
    let port = support::brokers::free_ports(1)[0];
    let log = dir.join("tinyproxy.log");
    let conf = dir.join("tinyproxy.conf");
    // No ConnectPort line: CONNECT to any port (the plane's test port).
    std::fs::write(
        &conf,
        format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 600\nLogFile \"{}\"\nLogLevel Connect\nMaxClients 50\nAllow 127.0.0.1\n",
            log.display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new("tinyproxy")
        .args(["-d", "-c"])
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("tinyproxy is installed (the test command installs it)");
    let end = Instant::now() + Duration::from_secs(10);
    while !support::brokers::listens(child.id(), port) {
        assert!(Instant::now() < end, "tinyproxy did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    (child, port, log)
}

/// Through a real HTTP CONNECT proxy (tinyproxy): the tunnel carries mutual
/// TLS end to end; with NO_PROXY naming the plane, the proxy is not used.
#[test]
fn through_a_connect_proxy_and_around_it_with_no_proxy() {
    let w = world();
    let (mut proxy, port, log) = tinyproxy(&w.dir);
    let proxy_url = format!("http://127.0.0.1:{port}");
    let l = w.launch("via", &[("HTTPS_PROXY", &proxy_url)]);
    let wid = l.worker_id();
    w.hello(&l, "eu-west-1", 0);
    w.plane.send(&wid, &assign("X1", "true"));
    w.plane
        .wait_for(T, |v| is_run(v, "X1", "finished"))
        .unwrap_or_else(|| panic!("no run through the proxy: {}", l.stderr()));
    let plane_port = w.plane.endpoints[0].port;
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains(&format!("127.0.0.1:{plane_port}")),
        "tinyproxy saw no CONNECT to the plane: {text}"
    );
    drop(l);

    let before = std::fs::read_to_string(&log).unwrap_or_default().len();
    let skip = w.plane.events().len();
    let l = w.launch(
        "around",
        &[("HTTPS_PROXY", &proxy_url), ("NO_PROXY", "127.0.0.1")],
    );
    w.hello(&l, "eu-west-1", skip);
    let after = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !after[before..].contains(&format!("127.0.0.1:{plane_port}")),
        "NO_PROXY was not honoured: {}",
        &after[before..]
    );
    let _ = proxy.kill();
    let _ = proxy.wait();
}

fn assert_reset(l: &mut Launcher) {
    let code = l.wait(Duration::from_secs(60));
    assert_eq!(code, Some(78), "{}", l.stderr());
    assert!(
        l.stderr().contains(
            "the control plane rejected this pool's certificate: was the worker pool reset? Generate a new token"
        ),
        "{}",
        l.stderr()
    );
}

/// A certificate from another CA is refused in the TLS handshake by every
/// endpoint: exit 78 with the reset message.
#[test]
fn an_unknown_certificate_is_a_pool_reset() {
    let w = world();
    let other = TestCa::new(&w.dir.join("other-ca"), "other");
    let (key, csr) = support::pki::pool_key_and_csr(&w.dir.join("other"), "spacelift", 2048);
    let cert = w.dir.join("other").join("spacelift.crt");
    other.sign(&csr, &cert, 30);
    let foreign = Pool {
        dir: w.dir.join("other"),
        ca: other,
        key,
        cert,
        token: String::new(),
    };
    // the token trusts the plane (pool CA) but carries the foreign cert
    let token = w.plane.token(&foreign);
    let mut l = launch_with(&token, &foreign.key_base64(), &w.dir.join("s"), &[]);
    assert_reset(&mut l);
}

/// A revoked certificate (the plane's TLS checks a CRL made with openssl).
#[test]
fn a_revoked_certificate_is_a_pool_reset() {
    let dir = open_tempdir();
    let pool = Pool::new(&dir.path().join("pki"), 2048, &[]);
    let crl = support::brokers::revoke(&pool.ca, &pool.cert);
    let plane = PollPlane::start_with(
        &pool,
        &dir.path().join("plane"),
        Options {
            crl: Some(crl),
            ..Options::default()
        },
    );
    let mut l = launch_with(
        &plane.token(&pool),
        &pool.key_base64(),
        &dir.path().join("s"),
        &[],
    );
    assert_reset(&mut l);
}

/// 401 and 403 from every endpoint: exit 78; from one only: failover.
#[test]
fn http_401_and_403_are_a_pool_reset_only_from_every_endpoint() {
    let w = world();
    w.plane.set_fault(0, Fault::Status(401));
    w.plane.set_fault(1, Fault::Status(403));
    let mut l = w.launch("both", &[]);
    assert_reset(&mut l);

    w.plane.set_fault(1, Fault::None);
    let l = w.launch("one", &[]);
    w.hello(&l, "eu-central-1", 0);
    assert!(
        l.stderr().contains("HTTP 401"),
        "the refusal is logged: {}",
        l.stderr()
    );
}

/// A bad answer from the primary: one clear launcher log line, the worker
/// moves to the secondary, keeps working, and never tries the bad endpoint
/// more than about once a second (an attempt is a few requests: `session`,
/// a batch and a poll, or a fail-back probe; a redirect loop is
/// `MAX_MOVES` + 1 requests).
fn bad_answer(fault: Fault, logged: &str, extra: &[(&str, &str)]) {
    let per_attempt = if fault == Fault::RedirectLoop {
        liftoff::link::poll::MAX_MOVES as f64 + 1.0
    } else {
        3.0
    };
    let w = world();
    let l = w.launch("s", extra);
    let wid = l.worker_id();
    w.hello(&l, "eu-west-1", 0);
    let skip = w.plane.events().len();
    let since = Instant::now();
    w.plane.set_fault(0, fault.clone());
    // a command makes the poll come back (held polls answer at once)
    w.plane.send(&wid, &assign("B1", "true"));
    w.hello(&l, "eu-central-1", skip);
    w.plane
        .wait_for(T, |v| is_run(v, "B1", "finished"))
        .unwrap_or_else(|| panic!("{fault:?}: no run after the bad answer: {}", l.stderr()));
    let stderr = l.stderr();
    assert!(
        stderr.contains(logged),
        "{fault:?}: no {logged:?} in {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    let elapsed = since.elapsed().as_secs_f64();
    let asked = w.plane.requests_to(0, since) as f64;
    assert!(
        asked <= per_attempt * (elapsed + 2.0),
        "{fault:?}: {asked} requests to the bad endpoint in {elapsed:.1} s"
    );
}

#[test]
fn a_poll_answer_that_is_not_json() {
    bad_answer(Fault::PollNotJson, "bad answer to the long poll", &[]);
}

#[test]
fn an_oversized_poll_answer() {
    bad_answer(Fault::PollOversized, "is over 8388608 bytes", &[]);
}

#[test]
fn a_poll_answer_of_wrong_types() {
    bad_answer(Fault::PollWrongTypes, "\\\"cursor\\\" is not a string", &[]);
}

#[test]
fn a_5xx_storm() {
    bad_answer(Fault::Status(500), "HTTP 500", &[]);
}

#[test]
fn a_redirect_loop() {
    bad_answer(Fault::RedirectLoop, "redirect loop", &[]);
}

#[test]
fn a_poll_that_never_returns() {
    // the poll is given up on LIFTOFF_POLL_WAIT + 10 s after it was sent
    bad_answer(
        Fault::PollNeverAnswers,
        "the long poll failed",
        &[("LIFTOFF_POLL_WAIT", "1s")],
    );
}

/// A plane that never holds a poll (answers at once, empty) is not an
/// error, but the worker does not spin: at most about one poll a second.
#[test]
fn a_plane_that_does_not_hold_polls_is_not_hammered() {
    let w = world();
    w.plane.set_fault(0, Fault::PollNoHold);
    let l = w.launch("s", &[]);
    w.hello(&l, "eu-west-1", 0);
    let since = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let polls = w
        .plane
        .requests()
        .iter()
        .filter(|r| r.0 == 0 && r.3 >= since && r.2.ends_with("/commands"))
        .count();
    assert!(polls <= 5, "{polls} polls in 4 s: {}", l.stderr());
    assert!(polls >= 2, "the worker stopped polling: {}", l.stderr());
}

/// A moved endpoint (308 to another base): followed, and the worker stays
/// in its region.
#[test]
fn a_moved_endpoint_is_followed() {
    let w = world();
    let target = w.plane.endpoints[1].url();
    w.plane.set_fault(0, Fault::MovedTo(target));
    let l = w.launch("s", &[]);
    let hello = w.hello(&l, "eu-west-1", 0);
    assert_eq!(hello["region"], "eu-west-1");
    assert!(
        l.stderr().contains("the control plane moved this endpoint"),
        "{}",
        l.stderr()
    );
}

/// `liftoff check` over the long-poll binding: each endpoint's TLS and an
/// authenticated request, the failing layer named; a refused certificate
/// is exit 78.
#[test]
fn check_tests_each_endpoint() {
    let mut w = world();
    let run = |w: &World| {
        std::process::Command::new(support::liftoff_bin())
            .arg("check")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("SPACELIFT_TOKEN", &w.token)
            .env("SPACELIFT_POOL_PRIVATE_KEY", w.pool.key_base64())
            // the check reads the state directory only; /tmp passes its
            // traversal check (a 0700 test directory would not)
            .env("LIFTOFF_STATE_DIR", "/tmp")
            .output()
            .unwrap()
    };
    let o = run(&w);
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    for region in ["eu-west-1", "eu-central-1"] {
        assert!(
            text.lines()
                .any(|l| l.contains(&format!("endpoint {region}"))
                    && l.contains("TLS handshake and an authenticated request")),
            "{text}"
        );
    }
    assert!(text.contains("the link speaks poll"), "{text}");

    w.plane.endpoints[1].kill();
    w.plane.set_fault(0, Fault::Status(403));
    let o = run(&w);
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(78), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("endpoint eu-central-1") && l.contains("TCP error")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.contains("endpoint eu-west-1") && l.contains("was the worker pool reset")),
        "{text}"
    );
}

/// Bad configuration: exit 78 naming the variable.
#[test]
fn bad_comms_configuration_is_exit_78() {
    let w = world();
    for (extra, named) in [
        (
            vec![("SPACELIFT_WORKER_COMMS_PROTOCOL", "carrier-pigeon")],
            "SPACELIFT_WORKER_COMMS_PROTOCOL",
        ),
        (
            vec![("SPACELIFT_WORKER_COMMS_URL", "http://127.0.0.1:1")],
            "SPACELIFT_WORKER_COMMS_URL",
        ),
        (
            vec![("SPACELIFT_WORKER_COMMS_PROTOCOL", "mqtt")],
            "the token names no broker",
        ),
        (vec![("LIFTOFF_POLL_WAIT", "90s")], "LIFTOFF_POLL_WAIT"),
    ] {
        let mut l = w.launch("bad", &extra);
        assert_eq!(l.wait(T), Some(78), "{extra:?}: {}", l.stderr());
        assert!(l.stderr().contains(named), "{extra:?}: {}", l.stderr());
    }
    // SPACELIFT_WORKER_COMMS_URL overrides the token's endpoints
    let url = w.plane.endpoints[1].url();
    let l = w.launch("override", &[("SPACELIFT_WORKER_COMMS_URL", &url)]);
    let hello = w.hello(&l, "eu-west-1", 0);
    let first = w
        .plane
        .requests()
        .into_iter()
        .find(|r| r.2.ends_with("/session"))
        .unwrap();
    assert_eq!(first.0, 1, "the override URL was used: {hello}");
}
