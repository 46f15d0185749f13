//! The rumqttc no-progress trap: a broker that answers CONNECT, SUBSCRIBE
//! and pings but never acknowledges a PUBLISH (what the collision livelock
//! looks like from outside). The link must notice within one keepalive,
//! rebuild the client, move to the next region and deliver the event there.
//! Uses the library's `Session` over the MQTT transport directly, with a fake TLS broker as primary and
//! a real mosquitto as secondary.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use liftoff::config::{Config, Env};
use liftoff::identity::{Identity, PoolKey};
use liftoff::link::mqtt::{MqttSettings, MqttTransport};
use liftoff::link::outbox::{Limits, Outbox};
use liftoff::link::protocol::{RunPhase, WorkerMsg, WorkerState};
use liftoff::link::session::{Session, SessionEvent};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use support::brokers::Brokers;
use support::plane::{Plane, is_run};

/// Reads one MQTT packet: (first byte, body).
fn packet(s: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut b = [0u8; 1];
    s.read_exact(&mut b).ok()?;
    let (mut len, mut mul) = (0usize, 1usize);
    loop {
        let mut x = [0u8; 1];
        s.read_exact(&mut x).ok()?;
        len += usize::from(x[0] & 0x7f) * mul;
        mul *= 128;
        if x[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((b[0], body))
}

/// A TLS MQTT "broker" that never PUBACKs. Returns its port and counters
/// (connections, publishes).
fn stuck_broker(dir: &std::path::Path) -> (u16, Arc<AtomicUsize>, Arc<AtomicUsize>) {
    liftoff::identity::install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(dir.join("server/server.crt"))
            .unwrap()
            .map(|c| c.unwrap())
            .collect();
    let key = PrivateKeyDer::from_pem_file(dir.join("server/server.key")).unwrap();
    let config = Arc::new(
        rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
    );
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (conns, pubs) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (c2, p2) = (conns.clone(), pubs.clone());
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            let (config, conns, pubs) = (config.clone(), c2.clone(), p2.clone());
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut s = rustls::StreamOwned::new(conn, tcp);
                while let Some((h, body)) = packet(&mut s) {
                    let reply: Vec<u8> = match h >> 4 {
                        1 => {
                            conns.fetch_add(1, Ordering::Relaxed);
                            vec![0x20, 2, 0, 0]
                        }
                        8 => vec![0x90, 3, body[0], body[1], 1],
                        12 => vec![0xd0, 0],
                        3 => {
                            pubs.fetch_add(1, Ordering::Relaxed);
                            continue; // never acknowledged
                        }
                        14 => break,
                        _ => continue,
                    };
                    if s.write_all(&reply).and_then(|_| s.flush()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, conns, pubs)
}

#[test]
fn publishes_without_progress_rebuild_the_client_and_fail_over() {
    let dir = tempfile::tempdir().unwrap();
    let b = Brokers::start(dir.path());
    let plane = Plane::start(&b);
    let (port, conns, pubs) = stuck_broker(dir.path());

    let env: Env = [
        ("SPACELIFT_TOKEN", b.pool.token.clone()),
        ("SPACELIFT_POOL_PRIVATE_KEY", b.pool.key_base64()),
        (
            "LIFTOFF_STATE_DIR",
            dir.path().join("state").display().to_string(),
        ),
        ("LIFTOFF_MQTT_KEEPALIVE", "3s".to_string()),
        ("LIFTOFF_FAILBACK_AFTER", "1h".to_string()),
    ]
    .into_iter()
    .collect();
    let config = Config::load(&env).into_result().unwrap();
    let token = config.token.clone().unwrap();
    let key = PoolKey::from_pem(&config.private_key.as_ref().unwrap().pem.0).unwrap();
    let (identity, _) = Identity::new(
        &token,
        key,
        "SPACELIFT_POOL_PRIVATE_KEY",
        liftoff::identity::now(),
    )
    .unwrap();
    let wid = liftoff::launcher::worker_id(&config.state_dir).unwrap();
    let mut settings = MqttSettings::from_config(&config, &identity, &wid).unwrap();
    settings.brokers[0].0.port = port; // the primary is the stuck one

    let (outbox, _) = Outbox::open(&config.state_dir, Limits::default()).unwrap();
    let hello = WorkerMsg::Hello {
        worker_id: wid.clone(),
        version: "test".into(),
        region: String::new(),
        slots: 1,
        metadata: Default::default(),
        host: liftoff::launcher::host_facts(),
        sandbox: Default::default(),
        will_id: None,
        transport: String::new(),
    };
    let (link, rx) = Session::start(
        liftoff::link::session_options(&config, &wid),
        Box::new(MqttTransport::new(settings)),
        outbox,
        hello,
    )
    .unwrap();
    // durable events follow the first status on every connection
    link.status(WorkerMsg::Status {
        worker_id: wid.clone(),
        state: WorkerState::Idle,
        drain: false,
        runs: Vec::new(),
        region: String::new(),
        health: Vec::new(),
        last_seq: None,
    });
    let first = rx.recv_blocking().unwrap();
    assert!(
        matches!(&first, SessionEvent::Connected { region, .. } if region == "eu-west-1"),
        "{first:?}"
    );
    link.emit(WorkerMsg::Run {
        run_id: "STUCK1".into(),
        phase: RunPhase::Started,
        exit_code: None,
        reason: None,
        command_id: None,
        duration_ms: None,
        steps: Vec::new(),
    })
    .unwrap();

    // the stuck broker swallows it; the link gives up on it and moves on
    let mut lost = None;
    for _ in 0..10 {
        match rx.recv_blocking().unwrap() {
            SessionEvent::Disconnected { region, reason } => {
                assert_eq!(region, "eu-west-1");
                lost = Some(reason);
            }
            SessionEvent::Connected { region, .. } => {
                assert_eq!(region, "eu-central-1");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let lost = lost.expect("the stuck connection was dropped");
    assert!(lost.contains("acknowledged none"), "{lost}");
    assert!(pubs.load(Ordering::Relaxed) >= 1);
    assert_eq!(conns.load(Ordering::Relaxed), 1);
    plane
        .wait_for(Duration::from_secs(20), |v| is_run(v, "STUCK1", "started"))
        .expect("the event arrives through the secondary");
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while link.unacked() > 0 {
        assert!(std::time::Instant::now() < end, "never acked");
        std::thread::sleep(Duration::from_millis(20));
    }
    link.close(None, std::time::Instant::now() + Duration::from_secs(2));
}
