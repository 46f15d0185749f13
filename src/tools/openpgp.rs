//! Just enough OpenPGP (RFC 4880 / RFC 9580, version 4) to check a vendor's
//! detached signature over its `SHA256SUMS`: ASCII armor with its CRC-24,
//! the packet framing (old and new formats), RSA public keys and subkeys,
//! user ids, and version 4 signatures with hashed and unhashed subpackets.
//! RSA PKCS#1 v1.5 verification is aws-lc-rs's; nothing else signs or
//! decrypts here.
//!
//! Call order: [`Keyring::parse`] (armored or binary keys; every user-id
//! self-certification, subkey binding and its embedded back-signature is
//! checked, revoked keys and subkeys are dropped), [`Keyring::extend`] to
//! merge several sources, then [`Keyring::verify_detached`] with the signed
//! bytes and the signature file (armored or binary). It answers which key
//! signed, or a [`PgpError`] saying why not.
//!
//! Only SHA-256, SHA-384 and SHA-512 signatures by RSA keys of 2048 to 8192
//! bits are accepted; SHA-1, DSA and the elliptic-curve algorithms are
//! refused by name (no vendor of ours signs with them).

use std::fmt;

use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, RsaParameters, RsaPublicKeyComponents};

/// Largest key or signature input accepted, in bytes.
pub const MAX_INPUT: usize = 1 << 20;

/// Why a key or a signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgpError {
    /// The armor or the packets are malformed.
    Malformed(String),
    /// The signature's issuer is none of the trusted keys.
    UnknownSigner(String),
    /// The signature does not match the signed bytes (they changed, or the
    /// signature is not over them).
    BadSignature(String),
    /// A valid packet uses something this parser refuses (SHA-1, DSA...).
    Unsupported(String),
    /// No trusted key at all.
    NoKeys,
}

impl fmt::Display for PgpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PgpError::Malformed(m) => write!(f, "malformed OpenPGP data: {m}"),
            PgpError::UnknownSigner(who) => write!(
                f,
                "signed by {who}, which is not a trusted key (the vendors' keys, or LIFTOFF_TOOLS_KEYS for a self-built mirror)"
            ),
            PgpError::BadSignature(m) => write!(f, "bad signature: {m}"),
            PgpError::Unsupported(m) => write!(f, "unsupported OpenPGP signature: {m}"),
            PgpError::NoKeys => f.write_str("no trusted OpenPGP key"),
        }
    }
}

fn malformed(m: impl Into<String>) -> PgpError {
    PgpError::Malformed(m.into())
}

/// An upper-case hex fingerprint or key id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

// ---- armor ---------------------------------------------------------------

/// CRC-24 of RFC 4880 §6.1.
pub fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0x00B7_04CE;
    for &b in data {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x0100_0000 != 0 {
                crc ^= 0x0186_4CFB;
            }
        }
    }
    crc & 0x00FF_FFFF
}

/// The binary of every armored block in `text` (keys or signatures);
/// `Ok(None)` when `text` holds no armor at all (it is binary).
fn dearmor(text: &[u8]) -> Result<Option<Vec<Vec<u8>>>, PgpError> {
    use base64::Engine;
    let Ok(text) = std::str::from_utf8(text) else {
        return Ok(None);
    };
    if !text.contains("-----BEGIN PGP ") {
        return Ok(None);
    }
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim_end);
    while let Some(line) = lines.next() {
        let Some(kind) = line
            .strip_prefix("-----BEGIN PGP ")
            .and_then(|r| r.strip_suffix("-----"))
        else {
            continue;
        };
        // Armor headers ("Version: …") up to the first blank line.
        let mut body = String::new();
        let mut in_headers = true;
        let mut checksum = None;
        let mut ended = false;
        for l in lines.by_ref() {
            let l = l.trim();
            if l.starts_with("-----END PGP ") {
                if l != format!("-----END PGP {kind}-----") {
                    return Err(malformed(format!(
                        "armor block BEGIN PGP {kind} ends with {l}"
                    )));
                }
                ended = true;
                break;
            }
            if in_headers {
                if l.is_empty() {
                    in_headers = false;
                    continue;
                }
                if l.contains(": ") {
                    continue;
                }
                // No headers and no blank line: the body starts here.
                in_headers = false;
            }
            if let Some(c) = l.strip_prefix('=') {
                checksum = Some(c.to_string());
            } else if !l.is_empty() {
                body.push_str(l);
            }
        }
        if !ended {
            return Err(malformed(format!(
                "armor block BEGIN PGP {kind} has no END line"
            )));
        }
        let data = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|e| malformed(format!("armor body is not base64: {e}")))?;
        if let Some(c) = checksum {
            let want = base64::engine::general_purpose::STANDARD
                .decode(c.as_bytes())
                .map_err(|_| malformed("armor checksum is not base64"))?;
            let got = crc24(&data).to_be_bytes();
            if want.len() != 3 || want[..] != got[1..] {
                return Err(malformed(
                    "armor checksum (CRC-24) does not match: the text was changed or cut",
                ));
            }
        }
        blocks.push(data);
    }
    if blocks.is_empty() {
        return Err(malformed("no complete armor block"));
    }
    Ok(Some(blocks))
}

// ---- packets -------------------------------------------------------------

/// One packet: its tag and body.
struct Packet<'a> {
    tag: u8,
    body: &'a [u8],
}

/// Splits `data` into packets (old and new framing; partial lengths refused:
/// keys and signatures never use them).
fn packets(mut data: &[u8]) -> Result<Vec<Packet<'_>>, PgpError> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let first = data[0];
        if first & 0x80 == 0 {
            return Err(malformed(format!(
                "byte {first:#04x} is not a packet header"
            )));
        }
        let (tag, len, header): (u8, usize, usize) = if first & 0x40 != 0 {
            let tag = first & 0x3F;
            let o = *data.get(1).ok_or_else(|| malformed("cut packet header"))?;
            match o {
                0..=191 => (tag, o as usize, 2),
                192..=223 => {
                    let o2 = *data.get(2).ok_or_else(|| malformed("cut packet header"))?;
                    (tag, ((o as usize - 192) << 8) + o2 as usize + 192, 3)
                }
                255 => {
                    let b = data
                        .get(2..6)
                        .ok_or_else(|| malformed("cut packet header"))?;
                    (
                        tag,
                        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
                        6,
                    )
                }
                _ => return Err(malformed("partial-length packets are not expected here")),
            }
        } else {
            let tag = (first >> 2) & 0x0F;
            match first & 3 {
                0 => (
                    tag,
                    *data.get(1).ok_or_else(|| malformed("cut packet header"))? as usize,
                    2,
                ),
                1 => {
                    let b = data
                        .get(1..3)
                        .ok_or_else(|| malformed("cut packet header"))?;
                    (tag, u16::from_be_bytes([b[0], b[1]]) as usize, 3)
                }
                2 => {
                    let b = data
                        .get(1..5)
                        .ok_or_else(|| malformed("cut packet header"))?;
                    (
                        tag,
                        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
                        5,
                    )
                }
                _ => {
                    return Err(malformed(
                        "indeterminate-length packets are not expected here",
                    ));
                }
            }
        };
        let end = header
            .checked_add(len)
            .filter(|&e| e <= data.len())
            .ok_or_else(|| malformed(format!("packet (tag {tag}) is cut short")))?;
        out.push(Packet {
            tag,
            body: &data[header..end],
        });
        data = &data[end..];
    }
    Ok(out)
}

/// A multiprecision integer at the start of `data`: its bytes (leading
/// zeros stripped) and the rest.
fn mpi(data: &[u8]) -> Result<(&[u8], &[u8]), PgpError> {
    let b = data.get(..2).ok_or_else(|| malformed("cut MPI"))?;
    let bits = u16::from_be_bytes([b[0], b[1]]) as usize;
    let len = bits.div_ceil(8);
    let v = data.get(2..2 + len).ok_or_else(|| malformed("cut MPI"))?;
    let start = v.iter().position(|&x| x != 0).unwrap_or(v.len());
    Ok((&v[start..], &data[2 + len..]))
}

// ---- keys ----------------------------------------------------------------

/// An RSA public key (primary or subkey).
#[derive(Clone, Debug)]
pub struct Key {
    pub fingerprint: [u8; 20],
    /// The key packet's body, as hashed in binding signatures.
    body: Vec<u8>,
    created: u32,
    /// `None`: not an RSA key (kept for its fingerprint only).
    rsa: Option<(Vec<u8>, Vec<u8>)>,
}

impl Key {
    fn parse(body: &[u8]) -> Result<Key, PgpError> {
        if body.first() != Some(&4) {
            return Err(PgpError::Unsupported(format!(
                "version {} public key (only version 4)",
                body.first().copied().unwrap_or(0)
            )));
        }
        let b = body.get(1..6).ok_or_else(|| malformed("cut public key"))?;
        let created = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let rsa = if matches!(b[4], 1 | 3) {
            let (n, rest) = mpi(&body[6..])?;
            let (e, _) = mpi(rest)?;
            Some((n.to_vec(), e.to_vec()))
        } else {
            None
        };
        let mut h = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
        h.update(&key_prefix(body));
        h.update(body);
        let mut fingerprint = [0u8; 20];
        fingerprint.copy_from_slice(h.finish().as_ref());
        Ok(Key {
            fingerprint,
            body: body.to_vec(),
            created,
            rsa,
        })
    }

    pub fn key_id(&self) -> [u8; 8] {
        let mut id = [0u8; 8];
        id.copy_from_slice(&self.fingerprint[12..]);
        id
    }

    fn hash_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&key_prefix(&self.body));
        out.extend_from_slice(&self.body);
    }
}

fn key_prefix(body: &[u8]) -> [u8; 3] {
    let len = body.len() as u16;
    [0x99, (len >> 8) as u8, len as u8]
}

/// A primary key with the subkeys bound to it that may sign.
#[derive(Clone, Debug)]
pub struct Cert {
    pub primary: Key,
    /// The primary may sign data (its self-signature's key flags say so, or
    /// say nothing).
    primary_signs: bool,
    primary_expires: Option<u32>,
    /// Signing subkeys with a valid binding and back-signature, and when
    /// they expire (seconds since the epoch).
    pub subkeys: Vec<(Key, Option<u32>)>,
    pub user_ids: Vec<String>,
}

impl Cert {
    pub fn fingerprint(&self) -> String {
        hex(&self.primary.fingerprint)
    }
}

/// Trusted keys.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    pub certs: Vec<Cert>,
}

/// The hash algorithms accepted, by OpenPGP id.
fn params(hash: u8) -> Result<(&'static RsaParameters, &'static digest::Algorithm), PgpError> {
    match hash {
        8 => Ok((&signature::RSA_PKCS1_2048_8192_SHA256, &digest::SHA256)),
        9 => Ok((&signature::RSA_PKCS1_2048_8192_SHA384, &digest::SHA384)),
        10 => Ok((&signature::RSA_PKCS1_2048_8192_SHA512, &digest::SHA512)),
        2 => Err(PgpError::Unsupported("SHA-1 digests are refused".into())),
        h => Err(PgpError::Unsupported(format!("hash algorithm {h}"))),
    }
}

/// A parsed version 4 signature.
#[derive(Clone, Debug)]
pub struct Signature {
    pub sig_type: u8,
    pub pk_algo: u8,
    pub hash_algo: u8,
    /// Version, type, algorithms and the hashed subpacket area: what the
    /// signature covers besides the data.
    hashed: Vec<u8>,
    left16: [u8; 2],
    value: Vec<u8>,
    pub created: Option<u32>,
    expires_after: Option<u32>,
    key_expires_after: Option<u32>,
    key_flags: Option<u8>,
    pub issuer_id: Option<[u8; 8]>,
    pub issuer_fpr: Option<[u8; 20]>,
    embedded: Option<Box<Signature>>,
}

impl Signature {
    pub fn parse(body: &[u8]) -> Result<Signature, PgpError> {
        Self::parse_nested(body, false)
    }

    /// `embedded`: this is a back-signature inside another signature, which
    /// may not embed one again (bounded recursion).
    fn parse_nested(body: &[u8], embedded: bool) -> Result<Signature, PgpError> {
        match body.first() {
            Some(4) => {}
            Some(v) => {
                return Err(PgpError::Unsupported(format!(
                    "version {v} signature (only version 4)"
                )));
            }
            None => return Err(malformed("empty signature packet")),
        }
        let head = body.get(..6).ok_or_else(|| malformed("cut signature"))?;
        let hashed_len = u16::from_be_bytes([head[4], head[5]]) as usize;
        let hashed_end = 6 + hashed_len;
        let hashed_area = body
            .get(6..hashed_end)
            .ok_or_else(|| malformed("cut signature"))?;
        let ul = body
            .get(hashed_end..hashed_end + 2)
            .ok_or_else(|| malformed("cut signature"))?;
        let unhashed_len = u16::from_be_bytes([ul[0], ul[1]]) as usize;
        let unhashed_end = hashed_end + 2 + unhashed_len;
        let unhashed_area = body
            .get(hashed_end + 2..unhashed_end)
            .ok_or_else(|| malformed("cut signature"))?;
        let l = body
            .get(unhashed_end..unhashed_end + 2)
            .ok_or_else(|| malformed("cut signature"))?;
        let left16 = [l[0], l[1]];
        let mut sig = Signature {
            sig_type: head[1],
            pk_algo: head[2],
            hash_algo: head[3],
            hashed: body[..hashed_end].to_vec(),
            left16,
            value: Vec::new(),
            created: None,
            expires_after: None,
            key_expires_after: None,
            key_flags: None,
            issuer_id: None,
            issuer_fpr: None,
            embedded: None,
        };
        if matches!(sig.pk_algo, 1 | 3) {
            sig.value = mpi(&body[unhashed_end + 2..])?.0.to_vec();
        }
        sig.subpackets(hashed_area, true, embedded)?;
        sig.subpackets(unhashed_area, false, embedded)?;
        Ok(sig)
    }

    fn subpackets(
        &mut self,
        mut area: &[u8],
        hashed: bool,
        embedded: bool,
    ) -> Result<(), PgpError> {
        while !area.is_empty() {
            let o = area[0] as usize;
            let (len, skip) = match o {
                0..=191 => (o, 1),
                192..=254 => {
                    let o2 = *area.get(1).ok_or_else(|| malformed("cut subpacket"))? as usize;
                    (((o - 192) << 8) + o2 + 192, 2)
                }
                _ => {
                    let b = area.get(1..5).ok_or_else(|| malformed("cut subpacket"))?;
                    (u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize, 5)
                }
            };
            let sp = area
                .get(skip..skip + len)
                .filter(|s| !s.is_empty())
                .ok_or_else(|| malformed("cut subpacket"))?;
            area = &area[skip + len..];
            let (kind, critical, data) = (sp[0] & 0x7F, sp[0] & 0x80 != 0, &sp[1..]);
            let u32_of = |d: &[u8]| -> Result<u32, PgpError> {
                let b = d.get(..4).ok_or_else(|| malformed("cut time subpacket"))?;
                Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
            };
            match kind {
                // Only the hashed area is trusted for times and flags.
                2 if hashed => self.created = Some(u32_of(data)?),
                3 if hashed => self.expires_after = Some(u32_of(data)?),
                9 if hashed => self.key_expires_after = Some(u32_of(data)?),
                27 if hashed => self.key_flags = data.first().copied(),
                16 => {
                    let b = data.get(..8).ok_or_else(|| malformed("cut issuer"))?;
                    let mut id = [0u8; 8];
                    id.copy_from_slice(b);
                    self.issuer_id = Some(id);
                }
                33 if data.first() == Some(&4) && data.len() == 21 => {
                    let mut f = [0u8; 20];
                    f.copy_from_slice(&data[1..]);
                    self.issuer_fpr = Some(f);
                }
                32 if embedded => {
                    return Err(malformed("an embedded signature embeds another"));
                }
                32 => {
                    // The back-signature: a packet body of its own.
                    self.embedded = Some(Box::new(Signature::parse_nested(data, true)?));
                }
                4..=7 | 10..=12 | 20..=26 | 28..=31 | 34..=40 => {}
                _ if critical && hashed => {
                    return Err(PgpError::Unsupported(format!(
                        "critical subpacket {kind} is not understood"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks this signature by `key` over `data` (the bytes hashed before
    /// the signature's own fields).
    fn check(&self, key: &Key, data: &[u8]) -> Result<(), PgpError> {
        let (n, e) = key.rsa.as_ref().ok_or_else(|| {
            PgpError::Unsupported(format!("key {} is not an RSA key", hex(&key.fingerprint)))
        })?;
        if !matches!(self.pk_algo, 1 | 3) {
            return Err(PgpError::Unsupported(format!(
                "public-key algorithm {} (only RSA)",
                self.pk_algo
            )));
        }
        let (rsa, alg) = params(self.hash_algo)?;
        let mut message = Vec::with_capacity(data.len() + self.hashed.len() + 6);
        message.extend_from_slice(data);
        message.extend_from_slice(&self.hashed);
        message.extend_from_slice(&[0x04, 0xFF]);
        message.extend_from_slice(&(self.hashed.len() as u32).to_be_bytes());
        let d = digest::digest(alg, &message);
        if d.as_ref()[..2] != self.left16 {
            return Err(PgpError::BadSignature(
                "the digest does not match the signed data: it was changed, or the signature is for other data".into(),
            ));
        }
        // An MPI drops leading zeros; RSA wants the modulus's length.
        let mut value = vec![0u8; n.len().saturating_sub(self.value.len())];
        value.extend_from_slice(&self.value);
        RsaPublicKeyComponents { n, e }
            .verify(rsa, &message, &value)
            .map_err(|_| {
                PgpError::BadSignature(format!(
                    "the RSA signature does not verify with key {}",
                    hex(&key.fingerprint)
                ))
            })
    }

    fn expired(&self, now: u32) -> bool {
        match (self.created, self.expires_after) {
            (Some(c), Some(x)) if x != 0 => u64::from(c) + u64::from(x) < u64::from(now),
            _ => false,
        }
    }
}

fn now() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs().min(u64::from(u32::MAX)) as u32)
}

impl Keyring {
    /// Parses armored or binary public keys (one or many). Keys that are not
    /// RSA, revoked, or without a valid self-certification are left out;
    /// `Err` when the data is malformed or holds no usable key.
    pub fn parse(data: &[u8]) -> Result<Keyring, PgpError> {
        if data.len() > MAX_INPUT {
            return Err(malformed(format!(
                "key data is {} bytes, more than {MAX_INPUT}",
                data.len()
            )));
        }
        let blocks = match dearmor(data)? {
            Some(b) => b,
            None => vec![data.to_vec()],
        };
        let mut ring = Keyring::default();
        for b in &blocks {
            ring.parse_binary(b)?;
        }
        if ring.certs.is_empty() {
            return Err(malformed("no usable RSA public key found"));
        }
        Ok(ring)
    }

    /// Adds another keyring's keys.
    pub fn extend(&mut self, other: Keyring) {
        self.certs.extend(other.certs);
    }

    fn parse_binary(&mut self, data: &[u8]) -> Result<(), PgpError> {
        let now = now();
        // Per primary key: the packets that follow it.
        let mut groups: Vec<Vec<Packet<'_>>> = Vec::new();
        for p in packets(data)? {
            match p.tag {
                6 => groups.push(vec![p]),
                _ if groups.is_empty() => {
                    return Err(malformed(format!(
                        "packet (tag {}) before any public key",
                        p.tag
                    )));
                }
                _ => {
                    if let Some(g) = groups.last_mut() {
                        g.push(p);
                    }
                }
            }
        }
        for group in groups {
            let primary = Key::parse(group[0].body)?;
            if primary.rsa.is_none() {
                continue;
            }
            let mut cert = Cert {
                primary,
                primary_signs: false,
                primary_expires: None,
                subkeys: Vec::new(),
                user_ids: Vec::new(),
            };
            let mut certified = false;
            let mut revoked = false;
            let mut latest_self: Option<u32> = None;
            let mut uid: Option<&[u8]> = None;
            let mut subkey: Option<Key> = None;
            let mut bound: Option<(Key, Option<u32>)> = None;
            for p in &group[1..] {
                match p.tag {
                    13 => {
                        flush(&mut cert, &mut bound);
                        subkey = None;
                        uid = Some(p.body);
                    }
                    17 => {
                        flush(&mut cert, &mut bound);
                        subkey = None;
                        uid = None;
                    }
                    14 => {
                        flush(&mut cert, &mut bound);
                        uid = None;
                        subkey = Key::parse(p.body).ok().filter(|k| k.rsa.is_some());
                    }
                    2 => {
                        let Ok(sig) = Signature::parse(p.body) else {
                            continue;
                        };
                        if sig
                            .issuer_fpr
                            .is_some_and(|f| f != cert.primary.fingerprint)
                            || sig.issuer_id.is_some_and(|i| i != cert.primary.key_id())
                        {
                            continue;
                        }
                        let mut data = Vec::new();
                        cert.primary.hash_into(&mut data);
                        match (sig.sig_type, &subkey, uid) {
                            (0x20, _, _) if sig.check(&cert.primary, &data).is_ok() => {
                                revoked = true;
                            }
                            (0x10..=0x13, None, Some(id)) => {
                                data.push(0xB4);
                                data.extend_from_slice(&(id.len() as u32).to_be_bytes());
                                data.extend_from_slice(id);
                                if sig.check(&cert.primary, &data).is_err() || sig.expired(now) {
                                    continue;
                                }
                                certified = true;
                                cert.user_ids.push(String::from_utf8_lossy(id).into_owned());
                                let created = sig.created.unwrap_or(0);
                                if latest_self.is_none_or(|t| created >= t) {
                                    latest_self = Some(created);
                                    cert.primary_signs =
                                        sig.key_flags.is_none_or(|f| f & 0x02 != 0);
                                    cert.primary_expires = sig
                                        .key_expires_after
                                        .filter(|&x| x != 0)
                                        .map(|x| cert.primary.created.saturating_add(x));
                                }
                            }
                            (0x18, Some(sub), _) => {
                                sub.hash_into(&mut data);
                                if sig.check(&cert.primary, &data).is_err()
                                    || sig.expired(now)
                                    || sig.key_flags.is_some_and(|f| f & 0x02 == 0)
                                {
                                    continue;
                                }
                                // A signing subkey must sign back (0x19).
                                let Some(back) = &sig.embedded else { continue };
                                if back.sig_type != 0x19 || back.check(sub, &data).is_err() {
                                    continue;
                                }
                                let expires = sig
                                    .key_expires_after
                                    .filter(|&x| x != 0)
                                    .map(|x| sub.created.saturating_add(x));
                                bound = Some((sub.clone(), expires));
                            }
                            (0x28, Some(sub), _) => {
                                sub.hash_into(&mut data);
                                if sig.check(&cert.primary, &data).is_ok() {
                                    subkey = None;
                                    bound = None;
                                }
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            }
            flush(&mut cert, &mut bound);
            if certified && !revoked {
                self.certs.push(cert);
            }
        }
        Ok(())
    }

    /// Checks a detached signature (armored or binary) over `data`; the
    /// answer is the fingerprint of the primary key it chains to.
    pub fn verify_detached(&self, data: &[u8], sig: &[u8]) -> Result<String, PgpError> {
        if self.certs.is_empty() {
            return Err(PgpError::NoKeys);
        }
        if sig.len() > MAX_INPUT {
            return Err(malformed("the signature file is too large"));
        }
        let blocks = match dearmor(sig)? {
            Some(b) => b,
            None => vec![sig.to_vec()],
        };
        let mut last = None;
        for block in &blocks {
            for p in packets(block)? {
                if p.tag != 2 {
                    continue;
                }
                let s = Signature::parse(p.body)?;
                match self.verify_one(&s, data) {
                    Ok(fpr) => return Ok(fpr),
                    Err(e) => last = Some(e),
                }
            }
        }
        Err(last.unwrap_or_else(|| malformed("the signature file holds no signature packet")))
    }

    fn verify_one(&self, s: &Signature, data: &[u8]) -> Result<String, PgpError> {
        if s.sig_type != 0x00 {
            return Err(PgpError::Unsupported(format!(
                "signature type {:#04x} (only binary-document signatures, 0x00)",
                s.sig_type
            )));
        }
        params(s.hash_algo)?;
        if s.expired(now()) {
            return Err(PgpError::BadSignature("the signature has expired".into()));
        }
        let matches = |k: &Key| {
            s.issuer_fpr.map_or_else(
                || s.issuer_id.is_none_or(|id| id == k.key_id()),
                |f| f == k.fingerprint,
            )
        };
        let created = s.created.unwrap_or(0);
        let mut tried = None;
        for c in &self.certs {
            let mut candidates: Vec<(&Key, Option<u32>)> = Vec::new();
            if c.primary_signs {
                candidates.push((&c.primary, c.primary_expires));
            }
            for (k, exp) in &c.subkeys {
                candidates.push((k, exp.or(c.primary_expires)));
            }
            for (k, expires) in candidates {
                if !matches(k) {
                    continue;
                }
                if created < k.created {
                    tried = Some(PgpError::BadSignature(format!(
                        "the signature predates key {}",
                        hex(&k.fingerprint)
                    )));
                    continue;
                }
                if expires.is_some_and(|x| created > x) {
                    tried = Some(PgpError::BadSignature(format!(
                        "key {} had expired when the signature was made",
                        hex(&k.fingerprint)
                    )));
                    continue;
                }
                match s.check(k, data) {
                    Ok(()) => return Ok(c.fingerprint()),
                    Err(e) => tried = Some(e),
                }
            }
        }
        Err(tried.unwrap_or_else(|| {
            PgpError::UnknownSigner(match (s.issuer_fpr, s.issuer_id) {
                (Some(f), _) => format!("key {}", hex(&f)),
                (None, Some(id)) => format!("key id {}", hex(&id)),
                (None, None) => "an unnamed key".into(),
            })
        }))
    }
}

fn flush(cert: &mut Cert, bound: &mut Option<(Key, Option<u32>)>) {
    if let Some(b) = bound.take() {
        cert.subkeys.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc24_known_answer() {
        // RFC 4880's CRC-24 of the empty input is its initial value.
        assert_eq!(crc24(b""), 0xB704CE);
        assert_ne!(crc24(b"a"), crc24(b"b"));
    }

    /// A v4 RSA signature body with `hashed` as its hashed subpackets.
    fn sig_with(hashed: &[u8]) -> Vec<u8> {
        let mut s = vec![4, 0x00, 1, 8];
        s.extend_from_slice(&(hashed.len() as u16).to_be_bytes());
        s.extend_from_slice(hashed);
        s.extend_from_slice(&[0, 0, 0xAB, 0xCD, 0, 8, 0x5A]);
        s
    }

    fn subpacket(kind: u8, data: &[u8]) -> Vec<u8> {
        let mut s = vec![255];
        s.extend_from_slice(&(data.len() as u32 + 1).to_be_bytes());
        s.push(kind);
        s.extend_from_slice(data);
        s
    }

    /// A back-signature may not embed another: no unbounded recursion on a
    /// crafted packet.
    #[test]
    fn nested_embedded_signatures_are_refused() {
        let one = sig_with(&subpacket(32, &sig_with(&[])));
        assert!(Signature::parse(&one).unwrap().embedded.is_some());
        let mut deep = sig_with(&[]);
        for _ in 0..3 {
            deep = sig_with(&subpacket(32, &deep));
        }
        assert!(matches!(
            Signature::parse(&deep),
            Err(PgpError::Malformed(_))
        ));
        // An unknown critical subpacket in the hashed area is refused.
        let critical = sig_with(&subpacket(0x80 | 100, b"x"));
        assert!(matches!(
            Signature::parse(&critical),
            Err(PgpError::Unsupported(_))
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        for data in [
            &b""[..],
            b"\x00\x01",
            b"\x99\x01",
            b"\xc2\xff\xff",
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n-----END PGP PUBLIC KEY BLOCK-----\n",
            b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nAAAA\n",
        ] {
            assert!(Keyring::parse(data).is_err());
        }
        let ring = Keyring::default();
        assert_eq!(ring.verify_detached(b"x", b"y"), Err(PgpError::NoKeys));
    }
}
