//! The pool's identity: its RSA private key and the certificate the control
//! plane issued for it (carried in the token).
//!
//! Order: [`install_crypto_provider`] once per process; [`PoolKey::from_pem`];
//! [`Identity::new`] (checks that certificate and key belong together and
//! that the certificate is valid now); then [`Identity::client_config`] for
//! mTLS to the brokers. Per run, [`Identity::decrypt_run_state`] opens the
//! end-to-end encrypted run state ([`seal_run_state`] is the plane's side).

mod der;

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa;
use aws_lc_rs::signature::KeyPair as _;
use rustls::ClientConfig;
use rustls_pki_types::pem::{PemObject as _, SectionKind};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::token::Token;

use crate::time::format_time;

/// A certificate expiring sooner than this gets a warning.
pub const EXPIRY_WARNING_SECS: i64 = 30 * 86_400;

/// Installs aws-lc-rs as the process's one rustls crypto provider. Idempotent.
pub fn install_crypto_provider() {
    // Err means a provider is already installed: ours, by an earlier call.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The pool's RSA private key.
pub struct PoolKey {
    pair: rsa::KeyPair,
    /// PKCS#8 DER, for rustls and for decryption.
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for PoolKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolKey(RSA {} bits)", self.bits())
    }
}

impl PoolKey {
    /// Reads an RSA key (2048 to 8192 bits) from PEM: PKCS#8 (`BEGIN PRIVATE
    /// KEY`, what `openssl req -newkey rsa:4096 -nodes` writes) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`). The error says what is wrong, never what the
    /// key holds.
    pub fn from_pem(pem: &[u8]) -> Result<PoolKey, String> {
        let mut found = None;
        for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
            match section {
                Ok((kind @ (SectionKind::PrivateKey | SectionKind::RsaPrivateKey | SectionKind::EcPrivateKey), der)) => {
                    found = Some((kind, der));
                    break;
                }
                Ok(_) => continue,
                Err(_) => return Err("is not a readable PEM file: expected the PEM private key made by `openssl req -new -newkey rsa:4096 -nodes`".into()),
            }
        }
        let (kind, der) = found.ok_or(
            "holds no PEM private key (-----BEGIN PRIVATE KEY-----): expected the key made by `openssl req -new -newkey rsa:4096 -nodes`",
        )?;
        let pair = match kind {
            SectionKind::EcPrivateKey => return Err(ec_error()),
            SectionKind::RsaPrivateKey => rsa::KeyPair::from_der(&der).map_err(|e| {
                format!("is not a usable RSA key ({e}): expected RSA 2048 to 8192 bits")
            })?,
            _ => match rsa::KeyPair::from_pkcs8(&der) {
                Ok(pair) => pair,
                Err(e) => {
                    let algorithm = pkcs8_algorithm(&der);
                    return Err(
                        if algorithm == Some(der::OID_EC_PUBLIC_KEY)
                            || algorithm == Some(der::OID_ED25519)
                        {
                            ec_error()
                        } else {
                            format!("is not a usable RSA key ({e}): expected RSA 2048 to 8192 bits")
                        },
                    );
                }
            },
        };
        let bits = pair.public_modulus_len() * 8;
        if !(2048..=8192).contains(&bits) {
            return Err(format!(
                "is an RSA key of {bits} bits: expected 2048 to 8192 bits (the seed uses rsa:4096)"
            ));
        }
        let pkcs8 = pair
            .as_der()
            .map_err(|_| "cannot be re-encoded as PKCS#8".to_string())?
            .as_ref()
            .to_vec();
        Ok(PoolKey { pair, pkcs8 })
    }

    pub fn bits(&self) -> usize {
        self.pair.public_modulus_len() * 8
    }

    /// (modulus, exponent) without leading zeros.
    fn public_components(&self) -> Option<(Vec<u8>, Vec<u8>)> {
        rsa_public_components(self.pair.public_key().as_ref()).ok()
    }

    /// The key as PKCS#8 DER (for rustls and run-state decryption).
    pub fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }
}

fn ec_error() -> String {
    "is not an RSA key (it looks like an EC or Ed25519 key): the pool key must be RSA, as made by `openssl req -new -newkey rsa:4096 -nodes`".into()
}

/// The algorithm OID of a PKCS#8 PrivateKeyInfo.
fn pkcs8_algorithm(der: &[u8]) -> Option<&[u8]> {
    let mut info = Der::new(der).nested(der::SEQUENCE, "").ok()?;
    info.expect(der::INTEGER, "").ok()?;
    let mut alg = info.nested(der::SEQUENCE, "").ok()?;
    alg.expect(der::OID, "").ok()
}

use der::Der;

/// RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }.
fn rsa_public_components(der: &[u8]) -> der::Result<(Vec<u8>, Vec<u8>)> {
    let mut seq = Der::new(der).nested(der::SEQUENCE, "RSA public key is not a SEQUENCE")?;
    let n = seq.expect(der::INTEGER, "RSA modulus missing")?;
    let e = seq.expect(der::INTEGER, "RSA exponent missing")?;
    Ok((der::unsigned(n).to_vec(), der::unsigned(e).to_vec()))
}

/// What liftoff reads from the pool certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The SubjectPublicKeyInfo, DER (to encrypt run state to this pool).
    pub spki_der: Vec<u8>,
    /// X.509 version: 1 or 3 (TLS needs 3).
    pub version: u32,
    pub subject_cn: Option<String>,
    /// Seconds since the epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// RSA (modulus, exponent); `None` when the key is not RSA.
    pub rsa_public: Option<(Vec<u8>, Vec<u8>)>,
}

/// Reads validity, subject CN and public key from a DER certificate.
pub fn certificate_info(cert: &[u8]) -> Result<CertInfo, String> {
    parse_certificate(cert).map_err(|e| format!("is not a readable X.509 certificate ({e})"))
}

fn parse_certificate(cert: &[u8]) -> der::Result<CertInfo> {
    let mut outer = Der::new(cert).nested(der::SEQUENCE, "not a SEQUENCE")?;
    let mut tbs = outer.nested(der::SEQUENCE, "no TBSCertificate")?;
    let mut version = 1;
    if tbs.peek_tag() == Some(der::CONTEXT_0) {
        let explicit = tbs.expect(der::CONTEXT_0, "bad version")?;
        let v = Der::new(explicit).expect(der::INTEGER, "bad version")?;
        version = v.last().map_or(1, |b| u32::from(*b) + 1);
    }
    tbs.expect(der::INTEGER, "no serial number")?;
    tbs.expect(der::SEQUENCE, "no signature algorithm")?;
    tbs.expect(der::SEQUENCE, "no issuer")?;
    let mut validity = tbs.nested(der::SEQUENCE, "no validity")?;
    let (t1, v1) = validity.any()?;
    let (t2, v2) = validity.any()?;
    let not_before = der::time(t1, v1)?;
    let not_after = der::time(t2, v2)?;
    let subject = tbs.expect(der::SEQUENCE, "no subject")?;
    let subject_cn = common_name(subject);
    let spki_start = tbs;
    let mut spki = tbs.nested(der::SEQUENCE, "no subject public key info")?;
    let spki_der = spki_start.consumed_until(&tbs).to_vec();
    let mut alg = spki.nested(der::SEQUENCE, "no public key algorithm")?;
    let oid = alg.expect(der::OID, "no public key algorithm OID")?;
    let bits = spki.expect(der::BIT_STRING, "no public key")?;
    let rsa_public = if oid == der::OID_RSA_ENCRYPTION {
        let key = bits
            .split_first()
            .filter(|(unused, _)| **unused == 0)
            .ok_or("bad public key bits")?
            .1;
        Some(rsa_public_components(key)?)
    } else {
        None
    };
    Ok(CertInfo {
        spki_der,
        version,
        subject_cn,
        not_before,
        not_after,
        rsa_public,
    })
}

fn common_name(name: &[u8]) -> Option<String> {
    let mut rdns = Der::new(name);
    while !rdns.is_empty() {
        let mut set = rdns.nested(der::SET, "").ok()?;
        while !set.is_empty() {
            let mut atv = set.nested(der::SEQUENCE, "").ok()?;
            let oid = atv.expect(der::OID, "").ok()?;
            let (tag, value) = atv.any().ok()?;
            if oid == der::OID_COMMON_NAME
                && matches!(
                    tag,
                    der::UTF8_STRING | der::PRINTABLE_STRING | der::IA5_STRING
                )
            {
                return String::from_utf8(value.to_vec()).ok();
            }
        }
    }
    None
}

/// The pool's checked identity: key, certificate chain and what the
/// certificate says.
#[derive(Debug)]
pub struct Identity {
    pub key: PoolKey,
    pub chain: Vec<CertificateDer<'static>>,
    pub cert: CertInfo,
}

/// A problem found while checking the identity; `warning`s do not stop the
/// launcher.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub var: &'static str,
    pub message: String,
}

impl Identity {
    /// Checks that the token's certificate was issued for `key` and is valid
    /// at `now` (seconds since the epoch). `key_var` names the variable the key
    /// came from, for messages. Returns the identity and warnings (a
    /// certificate expiring within 30 days).
    pub fn new(
        token: &Token,
        key: PoolKey,
        key_var: &'static str,
        now: i64,
    ) -> Result<(Identity, Vec<Finding>), Finding> {
        let err = |var: &'static str, message: String| Finding { var, message };
        let leaf = token
            .certificate
            .first()
            .ok_or_else(|| err("SPACELIFT_TOKEN", "holds no certificate".into()))?;
        let cert = certificate_info(leaf).map_err(|e| {
            err(
                "SPACELIFT_TOKEN",
                format!("the token's certificate {e}: ask for a new token"),
            )
        })?;
        let Some(cert_key) = &cert.rsa_public else {
            return Err(err("SPACELIFT_TOKEN", "the token's certificate is not for an RSA key: pool keys are RSA; generate the key and CSR again with `openssl req -new -newkey rsa:4096 -nodes`".into()));
        };
        if cert.version < 3 {
            return Err(err(
                "SPACELIFT_TOKEN",
                format!(
                    "the token's certificate is an X.509 v{} certificate, which TLS refuses: it must be v3; ask the control plane for a new token",
                    cert.version
                ),
            ));
        }
        if key.public_components().as_ref() != Some(cert_key) {
            return Err(err(
                key_var,
                format!(
                    "the token's certificate does not match {key_var}: was the pool reset, or is this another pool's key?"
                ),
            ));
        }
        if now > cert.not_after {
            return Err(err(
                "SPACELIFT_TOKEN",
                format!(
                    "the token's certificate expired on {}: reset the worker pool with a new CSR and use the new token",
                    format_time(cert.not_after)
                ),
            ));
        }
        if now < cert.not_before {
            return Err(err(
                "SPACELIFT_TOKEN",
                format!(
                    "the token's certificate is not valid before {}: check this host's clock",
                    format_time(cert.not_before)
                ),
            ));
        }
        let mut warnings = Vec::new();
        if cert.not_after - now < EXPIRY_WARNING_SECS {
            warnings.push(err(
                "SPACELIFT_TOKEN",
                format!("the token's certificate expires on {} (within 30 days): plan a pool reset with a new CSR", format_time(cert.not_after)),
            ));
        }
        Ok((
            Identity {
                key,
                chain: token.certificate.clone(),
                cert,
            },
            warnings,
        ))
    }

    /// The rustls client configuration for mTLS to a broker: our certificate
    /// and key; the token's CA (self-hosted brokers) or else the system roots,
    /// plus `ADDITIONAL_ROOT_CAS`. `alpn` is e.g. `x-amzn-mqtt-ca` for port 443.
    pub fn client_config(
        &self,
        token: &Token,
        additional_roots: &[CertificateDer<'static>],
        alpn: Option<&[u8]>,
    ) -> Result<Arc<ClientConfig>, String> {
        install_crypto_provider();
        let roots = root_store(&token.ca, additional_roots)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.pkcs8.clone()));
        let mut config = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(self.chain.clone(), key)
            .map_err(|e| format!("the pool certificate and key cannot be used for TLS: {e}"))?;
        if let Some(p) = alpn {
            config.alpn_protocols = vec![p.to_vec()];
        }
        Ok(Arc::new(config))
    }
}

/// Trust anchors: `primary` (the token's CA) when given, else the system
/// store; `additional` always.
pub fn root_store(
    primary: &[CertificateDer<'static>],
    additional: &[CertificateDer<'static>],
) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    if primary.is_empty() {
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
    } else {
        for c in primary {
            roots
                .add(c.clone())
                .map_err(|e| format!("the token's CA certificate cannot be used: {e}"))?;
        }
    }
    for c in additional {
        roots.add(c.clone()).map_err(|e| {
            format!("ADDITIONAL_ROOT_CAS: a certificate cannot be used as a root: {e}")
        })?;
    }
    if roots.is_empty() {
        return Err("no trusted CA certificates: install the system CA bundle (ca-certificates) or set ADDITIONAL_ROOT_CAS".into());
    }
    Ok(roots)
}

/// Seconds since the epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The run-state envelope: the run state encrypted with AES-256-GCM under a
/// fresh key, that key wrapped with RSA-OAEP-SHA256 to the pool key; the AAD
/// is the run id. docs/protocol.md has a worked example.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    /// Always `RSA-OAEP-256+A256GCM`.
    pub alg: String,
    /// base64 of the RSA-OAEP-SHA256-wrapped 32-byte AES key.
    pub key: String,
    /// base64 of the 12-byte GCM nonce.
    pub nonce: String,
    /// base64 of the ciphertext followed by the 16-byte GCM tag.
    pub ciphertext: String,
}

/// The one envelope algorithm.
pub const ENVELOPE_ALG: &str = "RSA-OAEP-256+A256GCM";
/// Largest run state accepted (decrypted), 8 MiB.
pub const MAX_RUN_STATE: usize = 8 << 20;

impl Identity {
    /// Opens a run-state envelope addressed to this pool for `run_id`. Any
    /// tampering (key, nonce, ciphertext, tag, or another run's id) and any
    /// envelope for another pool's key fail with a reason; nothing panics.
    pub fn decrypt_run_state(&self, envelope: &Envelope, run_id: &str) -> Result<Vec<u8>, String> {
        use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        use aws_lc_rs::rsa::{
            OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey, PrivateDecryptingKey,
        };
        if envelope.alg != ENVELOPE_ALG {
            return Err(format!(
                "run state uses algorithm {:?}; this liftoff reads {ENVELOPE_ALG}",
                envelope.alg
            ));
        }
        let b64 = |field: &str, v: &str| {
            crate::config::token::decode_base64(v)
                .map_err(|_| format!("run state field {field:?} is not base64"))
        };
        let wrapped = b64("key", &envelope.key)?;
        let nonce = b64("nonce", &envelope.nonce)?;
        let mut data = b64("ciphertext", &envelope.ciphertext)?;
        if data.len() > MAX_RUN_STATE + 16 {
            return Err(format!("run state is larger than {MAX_RUN_STATE} bytes"));
        }
        let private = PrivateDecryptingKey::from_pkcs8(&self.key.pkcs8)
            .map_err(|_| "the pool key cannot decrypt".to_string())?;
        let oaep = OaepPrivateDecryptingKey::new(private)
            .map_err(|_| "the pool key cannot decrypt".to_string())?;
        let mut key = vec![0u8; oaep.min_output_size()];
        let key = oaep
            .decrypt(&OAEP_SHA256_MGF1SHA256, &wrapped, &mut key, None)
            .map_err(|_| "the run state's key cannot be unwrapped: it was encrypted for another pool's key, or tampered with".to_string())?;
        let unbound = UnboundKey::new(&AES_256_GCM, key).map_err(|_| {
            "the run state's key is not 32 bytes: the envelope is malformed".to_string()
        })?;
        let nonce = Nonce::try_assume_unique_for_key(&nonce)
            .map_err(|_| "the run state's nonce is not 12 bytes".to_string())?;
        let plain = LessSafeKey::new(unbound)
            .open_in_place(nonce, Aad::from(run_id.as_bytes()), &mut data)
            .map_err(|_| format!("the run state does not authenticate for run {run_id}: it was tampered with, or belongs to another run"))?;
        Ok(plain.to_vec())
    }
}

/// The control plane's side of [`Identity::decrypt_run_state`]: seals
/// `plaintext` for the pool whose certificate has `spki_der`, bound to
/// `run_id`. Used by tests and by the plane double.
pub fn seal_run_state(spki_der: &[u8], run_id: &str, plaintext: &[u8]) -> Result<Envelope, String> {
    use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    use aws_lc_rs::rsa::{OAEP_SHA256_MGF1SHA256, OaepPublicEncryptingKey, PublicEncryptingKey};
    use base64::Engine as _;
    let rng = SystemRandom::new();
    let mut key = [0u8; 32];
    let mut nonce = [0u8; 12];
    rng.fill(&mut key).map_err(|_| "no randomness")?;
    rng.fill(&mut nonce).map_err(|_| "no randomness")?;
    let public = PublicEncryptingKey::from_der(spki_der)
        .map_err(|e| format!("not an RSA public key: {e}"))?;
    let oaep = OaepPublicEncryptingKey::new(public).map_err(|_| "not an RSA public key")?;
    let mut wrapped = vec![0u8; oaep.ciphertext_size()];
    let wrapped = oaep
        .encrypt(&OAEP_SHA256_MGF1SHA256, &key, &mut wrapped, None)
        .map_err(|_| "RSA-OAEP failed")?;
    let sealing = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &key).map_err(|_| "bad key")?);
    let mut data = plaintext.to_vec();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(run_id.as_bytes()),
            &mut data,
        )
        .map_err(|_| "AES-GCM failed")?;
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(Envelope {
        alg: ENVELOPE_ALG.into(),
        key: b64.encode(wrapped),
        nonce: b64.encode(nonce),
        ciphertext: b64.encode(data),
    })
}
