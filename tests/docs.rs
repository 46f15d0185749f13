//! The variable tables in README.md and docs/configuration.md are the ones
//! `liftoff config --variables` prints: no variable undocumented, no stale row.

use std::process::Command;

fn table() -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_liftoff"))
        .args(["config", "--variables"])
        .output()
        .unwrap();
    assert!(o.status.success());
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn readme_and_configuration_guide_carry_the_current_table() {
    let table = table();
    assert!(table.lines().count() > 30, "{table}");
    for doc in ["README.md", "docs/configuration.md"] {
        let text = std::fs::read_to_string(doc).unwrap();
        assert!(
            text.contains(&table),
            "{doc} is out of date: paste the output of `liftoff config --variables` into it"
        );
    }
}

/// packaging/liftoff.env lists every variable commented out with its
/// default and help, as `liftoff::config::vars::example_env` writes them.
#[test]
fn example_env_file_carries_every_variable() {
    let body = liftoff::config::vars::example_env();
    let env = std::fs::read_to_string("packaging/liftoff.env").unwrap();
    assert!(
        env.contains(&body),
        "packaging/liftoff.env is out of date: below its header it should read\n{body}"
    );
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = std::fs::read_to_string("README.md").unwrap();
    let ci = std::fs::read_to_string(".ci/run").unwrap();
    assert!(readme.contains("scripts/test.sh") && ci.contains("scripts/test.sh"));
}

/// The worked example of the run-state envelope in docs/protocol.md: its
/// AES-256-GCM part is deterministic (fixed key and nonce), so the
/// ciphertext printed there must be what the spec, key, nonce and AAD give.
/// (The RSA-OAEP-wrapped key is randomized and needs the example's private
/// key, which the document does not hold.)
#[test]
fn protocol_envelope_example_is_correct() {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use base64::Engine as _;
    let doc = std::fs::read_to_string("docs/protocol.md").unwrap();
    let run_id = "01JD7A1RUN0000000000000001";
    let spec = r#"{"run_id":"01JD7A1RUN0000000000000001","run_type":"tracked","steps":[{"name":"hello","argv":["echo","hello"]}]}"#;
    let key: Vec<u8> = (0u8..32).collect();
    let nonce = *b"defghijklmno";
    assert!(
        doc.contains(spec)
            && doc.contains("6465666768696a6b6c6d6e6f")
            && doc.contains("000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f")
    );
    let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).unwrap());
    let mut data = spec.as_bytes().to_vec();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(run_id.as_bytes()),
            &mut data,
        )
        .unwrap();
    let b64 = base64::engine::general_purpose::STANDARD;
    let expected = format!("\"ciphertext\": \"{}\"", b64.encode(&data));
    assert!(
        doc.contains(&expected),
        "docs/protocol.md's example ciphertext is wrong; it should be {expected}"
    );
    assert!(doc.contains(&format!("\"nonce\": \"{}\"", b64.encode(nonce))));
}
