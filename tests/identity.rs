//! Pool identity, the way a user makes it: a key and CSR from the seed's
//! openssl command, signed by a test CA (as the control plane would), wrapped
//! in a token; then liftoff's checks on match, mismatch, expiry and bad keys.

mod support;

use std::path::Path;
use std::sync::OnceLock;

use liftoff::config::token;
use liftoff::identity::{Identity, PoolKey, now};
use support::pki::{self, Pool, TestCa};

struct Fixture {
    _dir: tempfile::TempDir,
    pool: Pool,
}

/// One pool for the whole file: RSA 4096, exactly as the seed's command.
fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(
            dir.path(),
            4096,
            &[
                ("eu-west-1", "mqtts://127.0.0.1:8883"),
                ("eu-central-1", "mqtts://127.0.0.1:8884"),
            ],
        );
        Fixture { _dir: dir, pool }
    })
}

fn key(path: &Path) -> PoolKey {
    PoolKey::from_pem(&std::fs::read(path).unwrap()).unwrap()
}

#[test]
fn matching_key_and_certificate() {
    let f = fixture();
    let tok = token::parse(&f.pool.token).unwrap();
    let k = key(&f.pool.key);
    assert_eq!(k.bits(), 4096);
    let (id, warnings) = Identity::new(&tok, k, "SPACELIFT_POOL_PRIVATE_KEY", now()).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(id.cert.subject_cn.as_deref(), Some("spacelift"));
    assert!(id.cert.not_after > now() + 300 * 86_400);
    // The mTLS client configuration builds, with and without ALPN.
    assert!(
        id.client_config(&tok, &[], None)
            .unwrap()
            .alpn_protocols
            .is_empty()
    );
    let cfg = id
        .client_config(&tok, &[], Some(b"x-amzn-mqtt-ca"))
        .unwrap();
    assert_eq!(cfg.alpn_protocols, vec![b"x-amzn-mqtt-ca".to_vec()]);
}

#[test]
fn key_from_another_pool_is_a_mismatch() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let (other, _) = pki::pool_key_and_csr(dir.path(), "other", 2048);
    let tok = token::parse(&f.pool.token).unwrap();
    let err = Identity::new(&tok, key(&other), "SPACELIFT_POOL_PRIVATE_KEY", now()).unwrap_err();
    assert_eq!(err.var, "SPACELIFT_POOL_PRIVATE_KEY");
    assert_eq!(
        err.message,
        "the token's certificate does not match SPACELIFT_POOL_PRIVATE_KEY: was the pool reset, or is this another pool's key?"
    );
}

#[test]
fn expired_and_expiring_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new(&dir.path().join("ca"), "ca");
    let (k, csr) = pki::pool_key_and_csr(dir.path(), "pool", 2048);

    let expired = dir.path().join("expired.crt");
    ca.sign_window(&csr, &expired, "20200101000000Z", "20210101000000Z");
    let tok = token::parse(&pki::token(
        "p",
        &std::fs::read_to_string(&expired).unwrap(),
        None,
        &[("r", "mqtts://h:8883")],
    ))
    .unwrap();
    let err = Identity::new(&tok, key(&k), "SPACELIFT_POOL_PRIVATE_KEY", now()).unwrap_err();
    assert_eq!(err.var, "SPACELIFT_TOKEN");
    assert!(
        err.message.contains("expired on 2021-01-01"),
        "{}",
        err.message
    );

    let soon = dir.path().join("soon.crt");
    ca.sign(&csr, &soon, 10);
    let tok = token::parse(&pki::token(
        "p",
        &std::fs::read_to_string(&soon).unwrap(),
        None,
        &[("r", "mqtts://h:8883")],
    ))
    .unwrap();
    let (_, warnings) = Identity::new(&tok, key(&k), "SPACELIFT_POOL_PRIVATE_KEY", now()).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].message.contains("within 30 days"));

    let future = dir.path().join("future.crt");
    ca.sign_window(&csr, &future, "20990101000000Z", "20991231000000Z");
    let tok = token::parse(&pki::token(
        "p",
        &std::fs::read_to_string(&future).unwrap(),
        None,
        &[("r", "mqtts://h:8883")],
    ))
    .unwrap();
    let err = Identity::new(&tok, key(&k), "SPACELIFT_POOL_PRIVATE_KEY", now()).unwrap_err();
    assert!(err.message.contains("clock"), "{}", err.message);
}

#[test]
fn pkcs1_and_pkcs8_keys() {
    let f = fixture();
    let pkcs8 = std::fs::read_to_string(&f.pool.key).unwrap();
    assert!(
        pkcs8.contains("BEGIN PRIVATE KEY"),
        "the seed's command writes PKCS#8"
    );
    let dir = tempfile::tempdir().unwrap();
    let pkcs1 = dir.path().join("pkcs1.key");
    pki::openssl(
        dir.path(),
        &[
            "rsa",
            "-in",
            f.pool.key.to_str().unwrap(),
            "-traditional",
            "-out",
            pkcs1.to_str().unwrap(),
        ],
    );
    assert!(
        std::fs::read_to_string(&pkcs1)
            .unwrap()
            .contains("BEGIN RSA PRIVATE KEY")
    );
    let tok = token::parse(&f.pool.token).unwrap();
    // Both forms of the same key match the certificate.
    Identity::new(&tok, key(&pkcs1), "LIFTOFF_POOL_PRIVATE_KEY_FILE", now()).unwrap();
    Identity::new(
        &tok,
        key(&f.pool.key),
        "LIFTOFF_POOL_PRIVATE_KEY_FILE",
        now(),
    )
    .unwrap();
}

#[test]
fn bad_keys_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    pki::openssl(
        d,
        &[
            "ecparam",
            "-genkey",
            "-name",
            "prime256v1",
            "-out",
            "ec.key",
        ],
    );
    pki::openssl(
        d,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "ec.key", "-out", "ec8.key",
        ],
    );
    pki::openssl(d, &["genpkey", "-algorithm", "ed25519", "-out", "ed.key"]);
    pki::openssl(d, &["genrsa", "-out", "small.key", "1024"]);
    for (file, needle) in [
        ("ec.key", "RSA"),
        ("ec8.key", "RSA"),
        ("ed.key", "RSA"),
        ("small.key", "2048"),
    ] {
        let err = PoolKey::from_pem(&std::fs::read(d.join(file)).unwrap()).unwrap_err();
        assert!(err.contains(needle), "{file}: {err}");
    }
    let garbage = [
        &b"not a pem file at all"[..],
        b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        b"",
    ];
    for g in garbage {
        let err = PoolKey::from_pem(g).unwrap_err();
        assert!(err.contains("expected"), "{err}");
    }
}

#[test]
fn certificate_for_an_ec_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new(&d.join("ca"), "ca");
    let (_, csr) = pki::ec_key_and_csr(d, "ec");
    ca.sign(&csr, &d.join("ec.crt"), 30);
    let tok = token::parse(&pki::token(
        "p",
        &std::fs::read_to_string(d.join("ec.crt")).unwrap(),
        None,
        &[("r", "h")],
    ))
    .unwrap();
    let f = fixture();
    let err =
        Identity::new(&tok, key(&f.pool.key), "SPACELIFT_POOL_PRIVATE_KEY", now()).unwrap_err();
    assert!(
        err.message.contains("not for an RSA key"),
        "{}",
        err.message
    );
}

#[test]
fn version_1_certificate_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = TestCa::new(&d.join("ca"), "ca");
    let (k, csr) = pki::pool_key_and_csr(d, "v1", 2048);
    // No extensions: openssl writes an X.509 v1 certificate.
    pki::openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            csr.to_str().unwrap(),
            "-CA",
            ca.cert_path().to_str().unwrap(),
            "-CAkey",
            ca.key_path().to_str().unwrap(),
            "-CAcreateserial",
            "-out",
            "v1.crt",
            "-days",
            "30",
        ],
    );
    let tok = token::parse(&pki::token(
        "p",
        &std::fs::read_to_string(d.join("v1.crt")).unwrap(),
        None,
        &[("r", "h")],
    ))
    .unwrap();
    let err = Identity::new(&tok, key(&k), "SPACELIFT_POOL_PRIVATE_KEY", now()).unwrap_err();
    assert!(err.message.contains("v1"), "{}", err.message);
}

mod run_state {
    use super::*;
    use base64::Engine as _;
    use liftoff::identity::{Envelope, seal_run_state};

    fn identity() -> (Identity, Vec<u8>) {
        let f = fixture();
        let tok = token::parse(&f.pool.token).unwrap();
        let (id, _) =
            Identity::new(&tok, key(&f.pool.key), "SPACELIFT_POOL_PRIVATE_KEY", now()).unwrap();
        let spki = id.cert.spki_der.clone();
        (id, spki)
    }

    #[test]
    fn round_trip() {
        let (id, spki) = identity();
        let state = br#"{"run_id":"01JRUN","run_type":"proposed","steps":[]}"#;
        let env = seal_run_state(&spki, "01JRUN", state).unwrap();
        assert_eq!(id.decrypt_run_state(&env, "01JRUN").unwrap(), state);
        // The spki from our DER reader is what openssl prints for the certificate.
        let out = std::process::Command::new("openssl")
            .args(["x509", "-in"])
            .arg(&fixture().pool.cert)
            .args(["-pubkey", "-noout"])
            .output()
            .unwrap();
        let pem = String::from_utf8(out.stdout).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        assert_eq!(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
            spki
        );
    }

    fn flip(field: &str, b64: &str) -> String {
        let e = base64::engine::general_purpose::STANDARD;
        let mut raw = e.decode(b64).unwrap();
        let i = raw.len() / 2;
        raw[i] ^= 0x01;
        let _ = field;
        e.encode(raw)
    }

    #[test]
    fn tampering_is_refused_with_a_reason() {
        let (id, spki) = identity();
        let env = seal_run_state(&spki, "01JRUN", b"secret state").unwrap();
        let cases: Vec<(Envelope, &str, &str)> = vec![
            (
                Envelope {
                    ciphertext: flip("ciphertext", &env.ciphertext),
                    ..env.clone()
                },
                "01JRUN",
                "tampered",
            ),
            (
                Envelope {
                    nonce: flip("nonce", &env.nonce),
                    ..env.clone()
                },
                "01JRUN",
                "tampered",
            ),
            (
                Envelope {
                    key: flip("key", &env.key),
                    ..env.clone()
                },
                "01JRUN",
                "another pool",
            ),
            (env.clone(), "01OTHER", "another run"),
            (
                Envelope {
                    alg: "none".into(),
                    ..env.clone()
                },
                "01JRUN",
                "algorithm",
            ),
            (
                Envelope {
                    key: "%%%".into(),
                    ..env.clone()
                },
                "01JRUN",
                "not base64",
            ),
            (
                Envelope {
                    nonce: "AAAA".into(),
                    ..env.clone()
                },
                "01JRUN",
                "12 bytes",
            ),
            (
                Envelope {
                    ciphertext: String::new(),
                    ..env.clone()
                },
                "01JRUN",
                "tampered",
            ),
        ];
        for (e, run, needle) in cases {
            let err = id.decrypt_run_state(&e, run).unwrap_err();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
    }

    #[test]
    fn envelope_for_another_pools_key() {
        let (id, _) = identity();
        let dir = tempfile::tempdir().unwrap();
        let ca = TestCa::new(&dir.path().join("ca"), "ca");
        let (_, csr) = pki::pool_key_and_csr(dir.path(), "other", 2048);
        ca.sign(&csr, &dir.path().join("other.crt"), 30);
        let other = liftoff::identity::certificate_info(
            &token::pem_certificates(
                &std::fs::read_to_string(dir.path().join("other.crt")).unwrap(),
            )
            .unwrap()[0],
        )
        .unwrap();
        let env = seal_run_state(&other.spki_der, "01JRUN", b"for someone else").unwrap();
        let err = id.decrypt_run_state(&env, "01JRUN").unwrap_err();
        assert!(err.contains("another pool's key"), "{err}");
    }
}
