//! The vendors' release-signing keys compiled into liftoff, and the
//! operator's own (`LIFTOFF_TOOLS_KEYS`, a file of armored public keys, for
//! mirrors that re-sign their `SHA256SUMS`).
//!
//! Call order: [`trusted`] once when the tool room is opened; each compiled
//! key is parsed and its primary fingerprint checked against the one
//! published by its vendor, so a damaged key file can never widen trust.
//!
//! - OpenTofu: E3E6 E43D 84CB 852E ADB0 051D 0C0A F313 E5FD 9F80 (signs
//!   with the primary key).
//! - HashiCorp: C874 011F 0AB4 0511 0D02 1055 3436 5D94 72D7 468F (signs
//!   with its subkey 374E C75B 4859 1360 4A83 1CC7 C820 C6D5 CD27 AB87).

use std::path::Path;

use super::openpgp::{Keyring, PgpError};

/// OpenTofu's primary key fingerprint.
pub const OPENTOFU_FPR: &str = "E3E6E43D84CB852EADB0051D0C0AF313E5FD9F80";
/// HashiCorp's primary key fingerprint.
pub const HASHICORP_FPR: &str = "C874011F0AB405110D02105534365D9472D7468F";

const OPENTOFU_KEY: &str = include_str!("keys/opentofu.asc");
const HASHICORP_KEY: &str = include_str!("keys/hashicorp.asc");

/// The compiled-in vendor keys, each checked against its fingerprint.
pub fn vendors() -> Result<Keyring, String> {
    let mut ring = Keyring::default();
    for (name, text, fpr) in [
        ("OpenTofu", OPENTOFU_KEY, OPENTOFU_FPR),
        ("HashiCorp", HASHICORP_KEY, HASHICORP_FPR),
    ] {
        let k = Keyring::parse(text.as_bytes())
            .map_err(|e| format!("the compiled-in {name} key: {e}"))?;
        if k.certs.len() != 1 || k.certs[0].fingerprint() != fpr {
            return Err(format!(
                "the compiled-in {name} key is not {fpr}: this liftoff build is damaged"
            ));
        }
        ring.extend(k);
    }
    Ok(ring)
}

/// The vendor keys plus the operator's file of armored keys, if any.
pub fn trusted(extra: Option<&Path>) -> Result<Keyring, String> {
    let mut ring = vendors()?;
    if let Some(path) = extra {
        ring.extend(operator_keys(path)?);
    }
    Ok(ring)
}

/// Reads an operator's key file.
pub fn operator_keys(path: &Path) -> Result<Keyring, String> {
    let data = std::fs::read(path).map_err(|e| {
        format!(
            "LIFTOFF_TOOLS_KEYS {}: {e}; give a readable file of armored OpenPGP public keys",
            path.display()
        )
    })?;
    Keyring::parse(&data).map_err(|e: PgpError| {
        format!(
            "LIFTOFF_TOOLS_KEYS {}: {e}; give armored RSA public keys (gpg --armor --export KEYID)",
            path.display()
        )
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn vendor_keys_parse_with_their_fingerprints() {
        let ring = super::vendors().unwrap();
        assert_eq!(ring.certs.len(), 2);
        // HashiCorp signs with a subkey bound to the primary.
        let hc = &ring.certs[1];
        assert_eq!(hc.subkeys.len(), 1);
        assert_eq!(
            super::super::openpgp::hex(&hc.subkeys[0].0.fingerprint),
            "374EC75B485913604A831CC7C820C6D5CD27AB87"
        );
    }
}
