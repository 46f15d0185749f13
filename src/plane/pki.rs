//! The plane's certificates: the pool CA that signs pool certificates and
//! the plane's own server certificate ([`new_ca`], [`server_cert`] at
//! `init`), pool certificates from users' CSRs ([`sign_csr`], refusing
//! anything but RSA ≥ 2048), and the client-certificate check of every TLS
//! handshake ([`ClientCheck`]: signed by the pool CA, issued by this plane,
//! not revoked by a pool reset).
//!
//! Call order: `init` calls [`new_ca`] then [`server_cert`]; `pool create`
//! and `pool reset` call [`sign_csr`]; `serve` builds one [`ClientCheck`]
//! from the store's certificates and updates it on every reset.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::{Error, Result};

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

fn rcgen_err(what: &str) -> impl Fn(rcgen::Error) -> Error + '_ {
    move |e| Error::Config(format!("cannot {what}: {e}"))
}

fn random_serial() -> SerialNumber {
    let mut b = [0u8; 16];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b[0] &= 0x7f;
    b[0] |= 0x01;
    SerialNumber::from_slice(&b)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + time::Duration::days(days);
}

/// A new pool CA (ECDSA P-256, 20 years).
pub fn new_ca(name: &str) -> Result<Pem> {
    let key = KeyPair::generate().map_err(rcgen_err("make the CA key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        format!("liftoff-plane pool CA ({name})"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.serial_number = Some(random_serial());
    validity(&mut params, 20 * 365);
    let cert = params.self_signed(&key).map_err(rcgen_err("sign the CA"))?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn issuer(ca: &Pem) -> Result<Issuer<'static, KeyPair>> {
    let key = KeyPair::from_pem(&ca.key).map_err(rcgen_err("read the CA key"))?;
    Issuer::from_ca_cert_pem(&ca.cert, key).map_err(rcgen_err("read the CA certificate"))
}

/// The plane's server certificate for `names` (DNS names or IP addresses),
/// signed by the pool CA, so a pool token's `ca` verifies it.
pub fn server_cert(ca: &Pem, names: &[String]) -> Result<Pem> {
    let key = KeyPair::generate().map_err(rcgen_err("make the server key"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_default(),
    );
    for n in names {
        let san = match n.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(n.clone().try_into().map_err(|_| {
                Error::BadInput(format!(
                    "--name {n:?} is neither a DNS name nor an IP address"
                ))
            })?),
        };
        params.subject_alt_names.push(san);
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.serial_number = Some(random_serial());
    validity(&mut params, 5 * 365);
    let cert = params
        .signed_by(&key, &issuer(ca)?)
        .map_err(rcgen_err("sign the server certificate"))?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A pool certificate signed from a CSR.
#[derive(Debug, Clone)]
pub struct PoolCert {
    pub cert_pem: String,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub fingerprint: String,
    /// The certificate's SubjectPublicKeyInfo (to seal run states).
    pub spki_der: Vec<u8>,
    pub bits: usize,
}

/// Signs `csr_pem` (made with the seed's `openssl req -new -newkey rsa:4096
/// …`) as a client certificate for `pool_id`, valid 10 years. Refuses
/// anything that is not a PEM CSR with a valid signature and an RSA key of
/// at least 2048 bits.
pub fn sign_csr(ca: &Pem, csr_pem: &str, pool_id: &str) -> Result<PoolCert> {
    let bad = |why: String| {
        Error::BadInput(format!(
            "the CSR {why}; make one with: openssl req -new -newkey rsa:4096 -nodes -keyout spacelift.key -out spacelift.csr -subj \"/CN=my-pool\""
        ))
    };
    if !csr_pem.contains("-----BEGIN CERTIFICATE REQUEST-----")
        && !csr_pem.contains("-----BEGIN NEW CERTIFICATE REQUEST-----")
    {
        return Err(bad(
            "is not a PEM certificate request (no BEGIN CERTIFICATE REQUEST line)".into(),
        ));
    }
    precheck(csr_pem).map_err(bad)?;
    let req = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| match e {
        rcgen::Error::InvalidCertificationRequestSignature => {
            bad("has a signature that does not verify (it was altered)".into())
        }
        rcgen::Error::UnsupportedExtension => {
            bad("asks for extensions the plane does not sign (only subjectAltName, keyUsage, extendedKeyUsage)".into())
        }
        rcgen::Error::UnsupportedSignatureAlgorithm => {
            bad("uses a key or signature algorithm the plane does not sign: it must be RSA".into())
        }
        e => bad(format!("cannot be read ({e})")),
    })?;
    let mut params = CertificateParams::default();
    params.distinguished_name = req.params.distinguished_name.clone();
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, format!("pool {pool_id}"));
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.serial_number = Some(random_serial());
    validity(&mut params, 10 * 365);
    let cert = params
        .signed_by(&req.public_key, &issuer(ca)?)
        .map_err(rcgen_err("sign the pool certificate"))?;
    let info = crate::identity::certificate_info(cert.der())
        .map_err(|e| Error::Config(format!("the signed certificate {e}")))?;
    let Some((modulus, _)) = &info.rsa_public else {
        return Err(bad(
            "holds a key that is not RSA (the run state is sealed with RSA-OAEP)".into(),
        ));
    };
    let bits = rsa_bits(modulus);
    if bits < 2048 {
        return Err(bad(format!(
            "holds a {bits}-bit RSA key: at least 2048 bits are needed"
        )));
    }
    Ok(PoolCert {
        cert_pem: cert.pem(),
        fingerprint: fingerprint(cert.der()),
        spki_der: info.spki_der,
        bits,
    })
}

/// The key of the CSR must be RSA ≥ 2048 (checked before its signature,
/// which some libraries refuse to verify for short keys).
fn precheck(csr_pem: &str) -> std::result::Result<(), String> {
    use rustls::pki_types::CertificateSigningRequestDer;
    use rustls::pki_types::pem::PemObject as _;
    use x509_parser::prelude::FromDer as _;
    use x509_parser::public_key::PublicKey;
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .map_err(|e| format!("is not PEM ({e})"))?;
    let (_, req) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| format!("cannot be read ({e})"))?;
    match req.certification_request_info.subject_pki.parsed() {
        Ok(PublicKey::RSA(k)) => {
            let bits = rsa_bits(k.modulus);
            if bits < 2048 {
                return Err(format!(
                    "holds a {bits}-bit RSA key: at least 2048 bits are needed"
                ));
            }
            Ok(())
        }
        Ok(_) => Err("holds a key that is not RSA (the run state is sealed with RSA-OAEP)".into()),
        Err(e) => Err(format!("holds an unreadable public key ({e})")),
    }
}

fn rsa_bits(modulus: &[u8]) -> usize {
    let m: Vec<u8> = modulus.iter().copied().skip_while(|b| *b == 0).collect();
    match m.first() {
        Some(first) => m.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// A CRL (PEM) signed by the pool CA revoking every certificate in
/// `revoked_pem` (a PEM bundle): for MQTT brokers (mosquitto `crlfile`,
/// AWS IoT Core's certificate status), which check pool certificates
/// themselves. Valid one year.
pub fn crl(ca: &Pem, revoked_pem: &str, number: u64) -> Result<String> {
    use rustls::pki_types::pem::PemObject as _;
    let mut revoked = Vec::new();
    let now = time::OffsetDateTime::now_utc();
    for c in CertificateDer::pem_slice_iter(revoked_pem.as_bytes()) {
        let c = c.map_err(|e| Error::Config(format!("revoked.pem is not PEM: {e}")))?;
        let (_, x) = x509_parser::parse_x509_certificate(c.as_ref()).map_err(|e| {
            Error::Config(format!("revoked.pem holds an unreadable certificate: {e}"))
        })?;
        revoked.push(rcgen::RevokedCertParams {
            serial_number: SerialNumber::from_slice(x.raw_serial()),
            revocation_time: now,
            reason_code: Some(rcgen::RevocationReason::Superseded),
            invalidity_date: None,
        });
    }
    let params = rcgen::CertificateRevocationListParams {
        this_update: now - time::Duration::minutes(5),
        next_update: now + time::Duration::days(365),
        crl_number: SerialNumber::from_slice(&number.max(1).to_be_bytes()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: rcgen::KeyIdMethod::Sha256,
    };
    let crl = params
        .signed_by(&issuer(ca)?)
        .map_err(rcgen_err("sign the CRL"))?;
    crl.pem().map_err(rcgen_err("encode the CRL"))
}

/// SHA-256 of `der`, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// What the plane knows of one pool certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownCert {
    pub pool_id: String,
    pub revoked: bool,
}

/// The client-certificate check of the plane's TLS listener: the chain must
/// lead to the pool CA (rustls' webpki verifier), and the leaf must be one
/// this plane issued and has not revoked. Clients without a certificate
/// are let through the handshake (the admin API and object URLs need none);
/// the binding refuses them with 401.
#[derive(Debug)]
pub struct ClientCheck {
    inner: Arc<dyn ClientCertVerifier>,
    known: RwLock<HashMap<String, KnownCert>>,
}

impl ClientCheck {
    pub fn new(ca_pem: &str, known: HashMap<String, KnownCert>) -> Result<Arc<ClientCheck>> {
        use rustls::pki_types::pem::PemObject as _;
        crate::identity::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            let c = c.map_err(|e| Error::Config(format!("the pool CA is not PEM: {e}")))?;
            roots
                .add(c)
                .map_err(|e| Error::Config(format!("the pool CA is unusable: {e}")))?;
        }
        let inner = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::aws_lc_rs::default_provider()),
        )
        .allow_unauthenticated()
        .build()
        .map_err(|e| Error::Config(format!("cannot check client certificates: {e}")))?;
        Ok(Arc::new(ClientCheck {
            inner,
            known: RwLock::new(known),
        }))
    }

    /// Adds (or updates) a certificate: a new pool, a reset, a revocation.
    pub fn set(&self, fingerprint: &str, cert: KnownCert) {
        if let Ok(mut k) = self.known.write() {
            k.insert(fingerprint.to_string(), cert);
        }
    }

    /// True when the certificate with this fingerprint was revoked (a pool
    /// reset) after its connection was accepted.
    pub fn revoked(&self, fingerprint: &str) -> bool {
        self.known
            .read()
            .map(|k| k.get(fingerprint).is_none_or(|c| c.revoked))
            .unwrap_or(true)
    }

    /// The pool of an accepted leaf certificate.
    pub fn pool_of(&self, leaf: &[u8]) -> Option<String> {
        let k = self.known.read().ok()?;
        k.get(&fingerprint(leaf))
            .filter(|c| !c.revoked)
            .map(|c| c.pool_id.clone())
    }
}

impl ClientCertVerifier for ClientCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let known = self
            .known
            .read()
            .map_err(|_| rustls::Error::General("poisoned".into()))?;
        match known.get(&fingerprint(end_entity)) {
            Some(c) if !c.revoked => Ok(ClientCertVerified::assertion()),
            Some(_) => Err(rustls::Error::InvalidCertificate(CertificateError::Revoked)),
            None => Err(rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
