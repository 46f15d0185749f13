//! `liftoff check`'s connectivity check against real brokers: time taken
//! when fine, and the precise error class: TCP, DNS, TLS verification,
//! certificate rejected (exit 78).

mod support;

use std::process::Command;

use serde_json::Value;
use support::brokers::Brokers;
use support::pki::{self, TestCa};

fn check(b: &Brokers, token: &str) -> (i32, Vec<Value>) {
    let out = Command::new(support::liftoff_bin())
        .args(["check", "--json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("SPACELIFT_TOKEN", token)
        .env("SPACELIFT_POOL_PRIVATE_KEY", b.pool.key_base64())
        .env("LIFTOFF_STATE_DIR", "/tmp")
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    let brokers = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("broker "))
        .cloned()
        .collect();
    (out.status.code().unwrap(), brokers)
}

fn msg(c: &Value) -> &str {
    c["message"].as_str().unwrap()
}

#[test]
fn connectivity_check_names_the_failure() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Brokers::start(dir.path());
    let token = b.pool.token.clone();

    let (code, checks) = check(&b, &token);
    assert_eq!(checks.len(), 2, "{checks:?}");
    for c in &checks {
        assert_eq!(c["status"], "ok", "{c}");
        assert!(msg(c).contains("ms"), "{c}");
    }
    assert_eq!(code, 0, "{checks:?}");

    // secondary down: TCP
    b.secondary().kill();
    let (code, checks) = check(&b, &token);
    assert_eq!(checks[0]["status"], "ok");
    assert_eq!(checks[1]["status"], "error");
    assert!(msg(&checks[1]).contains("TCP error"), "{}", checks[1]);
    assert_eq!(code, 1);
    b.secondary().start();

    // unresolvable host: DNS
    let cert = std::fs::read_to_string(&b.pool.cert).unwrap();
    let ca = b.pool.ca.cert_pem();
    let dns = pki::token(
        support::plane::POOL,
        &cert,
        Some(&ca),
        &[("eu-west-1", "mqtts://no-such-host.invalid:8883")],
    );
    let (_, checks) = check(&b, &dns);
    assert!(msg(&checks[0]).contains("DNS error"), "{}", checks[0]);

    // the broker's certificate is not from the token's CA: TLS verification
    let other = TestCa::new(&dir.path().join("other"), "other");
    let url = b.brokers[0].url();
    let wrong_ca = pki::token(
        support::plane::POOL,
        &cert,
        Some(&other.cert_pem()),
        &[("eu-west-1", url.as_str())],
    );
    let (_, checks) = check(&b, &wrong_ca);
    assert!(
        msg(&checks[0]).contains("TLS verification error"),
        "{}",
        checks[0]
    );

    // the brokers no longer trust the pool: certificate rejected, exit 78
    for br in &mut b.brokers {
        br.distrust(&other);
    }
    let (code, checks) = check(&b, &token);
    for c in &checks {
        assert!(msg(c).contains("certificate rejected"), "{c}");
        assert!(msg(c).contains("was the worker pool reset?"), "{c}");
    }
    assert_eq!(code, 78);
}
