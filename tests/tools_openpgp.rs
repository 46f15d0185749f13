//! OpenPGP verification against the vendors' real releases and against
//! keys made with Debian's gpg during the test.
//!
//! The fixtures in tests/fixtures/tools/ are published vendor files:
//! OpenTofu 1.8.5's `SHA256SUMS` with its `.gpgsig` (an old-format packet,
//! SHA-512, by the primary key E3E6…9F80) and Terraform 1.9.8's with its
//! `.sig` (a new-format packet, SHA-256, by HashiCorp's subkey 374E…AB87
//! bound to C874…468F). They check the compiled-in keys as shipped; gpg
//! agrees with every answer (checked when the fixtures were added).

mod support;

use liftoff::tools::keys;
use liftoff::tools::openpgp::{Keyring, PgpError, crc24};
use support::tool_release::keys as test_keys;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("tests/fixtures/tools/{name}")).unwrap()
}

#[test]
fn real_vendor_signatures_verify_with_the_compiled_in_keys() {
    let ring = keys::vendors().unwrap();
    let tofu = ring
        .verify_detached(
            &fixture("tofu_1.8.5_SHA256SUMS"),
            &fixture("tofu_1.8.5_SHA256SUMS.gpgsig"),
        )
        .unwrap();
    assert_eq!(tofu, keys::OPENTOFU_FPR);
    let tf = ring
        .verify_detached(
            &fixture("terraform_1.9.8_SHA256SUMS"),
            &fixture("terraform_1.9.8_SHA256SUMS.sig"),
        )
        .unwrap();
    assert_eq!(tf, keys::HASHICORP_FPR);
}

#[test]
fn tampered_documents_and_wrong_pairings_are_refused() {
    let ring = keys::vendors().unwrap();
    let doc = fixture("terraform_1.9.8_SHA256SUMS");
    let sig = fixture("terraform_1.9.8_SHA256SUMS.sig");
    let mut changed = doc.clone();
    changed[0] = b'c';
    assert!(matches!(
        ring.verify_detached(&changed, &sig),
        Err(PgpError::BadSignature(_))
    ));
    let mut longer = doc.clone();
    longer.push(b'\n');
    assert!(matches!(
        ring.verify_detached(&longer, &sig),
        Err(PgpError::BadSignature(_))
    ));
    // Each vendor's genuine signature over the other's document.
    let tofu_doc = fixture("tofu_1.8.5_SHA256SUMS");
    let tofu_sig = fixture("tofu_1.8.5_SHA256SUMS.gpgsig");
    assert!(ring.verify_detached(&tofu_doc, &sig).is_err());
    assert!(ring.verify_detached(&doc, &tofu_sig).is_err());
    // A changed signature value.
    let mut bad = sig.clone();
    let last = bad.len() - 3;
    bad[last] ^= 0x40;
    assert!(matches!(
        ring.verify_detached(&doc, &bad),
        Err(PgpError::BadSignature(_))
    ));
    // A cut signature packet.
    assert!(matches!(
        ring.verify_detached(&doc, &sig[..sig.len() / 2]),
        Err(PgpError::Malformed(_))
    ));
    // Only HashiCorp's key: OpenTofu's signature has an unknown signer.
    let hc_only = Keyring::parse(include_bytes!("../src/tools/keys/hashicorp.asc")).unwrap();
    match hc_only.verify_detached(&tofu_doc, &tofu_sig) {
        Err(PgpError::UnknownSigner(who)) => assert!(who.contains(keys::OPENTOFU_FPR), "{who}"),
        other => panic!("{other:?}"),
    }
}

/// Keys as gpg exports them (armored, primary RSA 4096 with an RSA 2048
/// signing subkey and its back-signature), signatures by primary and
/// subkey over SHA-256 and SHA-512, armored or binary.
#[test]
fn gpg_made_keys_and_signatures_verify() {
    let k = test_keys();
    let ring = Keyring::parse(&k.a.export()).unwrap();
    assert_eq!(ring.certs.len(), 1);
    assert_eq!(ring.certs[0].fingerprint(), k.a.fpr);
    assert_eq!(ring.certs[0].subkeys.len(), 1);
    let data = b"0123  tofu_1.8.5_linux_amd64.zip\n";
    for (digest, by_subkey) in [
        ("SHA256", false),
        ("SHA512", false),
        ("SHA256", true),
        ("SHA512", true),
    ] {
        let sig = k.a.sign(data, digest, by_subkey);
        assert_eq!(
            ring.verify_detached(data, &sig).unwrap(),
            k.a.fpr,
            "{digest} {by_subkey}"
        );
        assert!(ring.verify_detached(b"other", &sig).is_err());
    }
    // Key b (RSA 2048) is unknown to a's ring, and verifies in its own.
    let sig = k.b.sign(data, "SHA512", false);
    assert!(matches!(
        ring.verify_detached(data, &sig),
        Err(PgpError::UnknownSigner(_))
    ));
    let mut both = ring.clone();
    both.extend(Keyring::parse(&k.b.export()).unwrap());
    assert_eq!(both.verify_detached(data, &sig).unwrap(), k.b.fpr);
    // Several armored keys in one file (LIFTOFF_TOOLS_KEYS).
    let mut file = k.a.export();
    file.extend(k.b.export());
    assert_eq!(Keyring::parse(&file).unwrap().certs.len(), 2);
}

/// OpenPGP packets of `data`: (tag, body), old or new framing.
fn packets(mut data: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let h = data[0];
        let (tag, len, hl) = if h & 0x40 != 0 {
            let o = data[1] as usize;
            match o {
                0..=191 => (h & 0x3F, o, 2),
                192..=223 => (h & 0x3F, ((o - 192) << 8) + data[2] as usize + 192, 3),
                _ => (
                    h & 0x3F,
                    u32::from_be_bytes(data[2..6].try_into().unwrap()) as usize,
                    6,
                ),
            }
        } else {
            match h & 3 {
                0 => ((h >> 2) & 15, data[1] as usize, 2),
                1 => (
                    (h >> 2) & 15,
                    u16::from_be_bytes([data[1], data[2]]) as usize,
                    3,
                ),
                _ => (
                    (h >> 2) & 15,
                    u32::from_be_bytes(data[1..5].try_into().unwrap()) as usize,
                    5,
                ),
            }
        };
        out.push((tag, data[hl..hl + len].to_vec()));
        data = &data[hl + len..];
    }
    out
}

/// A new-format packet.
fn packet(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0xC0 | tag, 0xFF];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Anyone can append packets to a public key: a foreign key grafted on as
/// a subkey, with no binding or with the binding of another subkey, is not
/// trusted; a signature by it is refused.
#[test]
fn a_grafted_subkey_is_not_trusted() {
    let k = test_keys();
    let a = packets(&k.a.export_binary());
    let b = packets(&k.b.export_binary());
    let b_key = &b.iter().find(|(t, _)| *t == 6).unwrap().1;
    let a_binding = a
        .iter()
        .skip_while(|(t, _)| *t != 14)
        .find(|(t, _)| *t == 2)
        .unwrap()
        .1
        .clone();
    let head: Vec<u8> = a
        .iter()
        .take_while(|(t, _)| *t != 14)
        .flat_map(|(t, b)| packet(*t, b))
        .collect();
    let sig = k.b.sign(b"x", "SHA256", false);
    for with_binding in [false, true] {
        let mut key = head.clone();
        key.extend(packet(14, b_key));
        if with_binding {
            key.extend(packet(2, &a_binding));
        }
        let ring = Keyring::parse(&key).unwrap();
        assert_eq!(ring.certs[0].fingerprint(), k.a.fpr);
        assert!(
            ring.certs[0].subkeys.is_empty(),
            "grafted subkey kept (binding: {with_binding})"
        );
        assert!(ring.verify_detached(b"x", &sig).is_err());
    }
    // The genuine key, rebuilt from its packets, keeps its subkey.
    let whole: Vec<u8> = a.iter().flat_map(|(t, b)| packet(*t, b)).collect();
    assert_eq!(Keyring::parse(&whole).unwrap().certs[0].subkeys.len(), 1);
}

#[test]
fn armor_checksums_are_checked() {
    let text = String::from_utf8(test_keys().a.export()).unwrap();
    // Corrupt one base64 character of the body: CRC-24 (or the packets)
    // refuse it.
    let lines: Vec<&str> = text.lines().collect();
    let i = lines.iter().position(|l| l.len() == 64).unwrap() + 1;
    let mut changed: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
    let c = changed[i].remove(5);
    changed[i].insert(5, if c == 'A' { 'B' } else { 'A' });
    let err = Keyring::parse(changed.join("\n").as_bytes()).unwrap_err();
    assert!(matches!(err, PgpError::Malformed(_)), "{err}");
    assert_eq!(crc24(b""), 0xB704CE);
}
