//! Just enough DER to read what liftoff needs from an X.509 certificate and an
//! RSA public key: the validity period, the subject's common name and the
//! subject public key. Every read is bounds-checked; malformed input is an
//! error, never a panic.

/// A cursor over DER-encoded bytes.
#[derive(Clone, Copy)]
pub struct Der<'a> {
    rest: &'a [u8],
}

pub const INTEGER: u8 = 0x02;
pub const BIT_STRING: u8 = 0x03;
pub const OID: u8 = 0x06;
pub const UTF8_STRING: u8 = 0x0c;
pub const PRINTABLE_STRING: u8 = 0x13;
pub const IA5_STRING: u8 = 0x16;
pub const UTC_TIME: u8 = 0x17;
pub const GENERALIZED_TIME: u8 = 0x18;
pub const SEQUENCE: u8 = 0x30;
pub const SET: u8 = 0x31;
/// `[0] EXPLICIT`, as the certificate version uses.
pub const CONTEXT_0: u8 = 0xa0;

pub type Result<T> = std::result::Result<T, &'static str>;

impl<'a> Der<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Der { rest: bytes }
    }

    pub fn is_empty(&self) -> bool {
        self.rest.is_empty()
    }

    /// The bytes read between `self` (an earlier copy of the cursor) and
    /// `later`.
    pub fn consumed_until(&self, later: &Der<'a>) -> &'a [u8] {
        &self.rest[..self.rest.len() - later.rest.len()]
    }

    pub fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// Reads one element: its tag and contents.
    pub fn any(&mut self) -> Result<(u8, &'a [u8])> {
        let [tag, first, rest @ ..] = self.rest else {
            return Err("truncated DER element");
        };
        if tag & 0x1f == 0x1f {
            return Err("multi-byte DER tags are not supported");
        }
        let (len, rest) = if first & 0x80 == 0 {
            (usize::from(*first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return Err("invalid DER length");
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
            (len, &rest[n..])
        };
        if rest.len() < len {
            return Err("DER element longer than its input");
        }
        let (content, after) = rest.split_at(len);
        self.rest = after;
        Ok((*tag, content))
    }

    /// Reads one element that must have `tag`.
    pub fn expect(&mut self, tag: u8, what: &'static str) -> Result<&'a [u8]> {
        match self.any()? {
            (t, content) if t == tag => Ok(content),
            _ => Err(what),
        }
    }

    /// Reads a constructed element with `tag` and returns a cursor over it.
    pub fn nested(&mut self, tag: u8, what: &'static str) -> Result<Der<'a>> {
        self.expect(tag, what).map(Der::new)
    }
}

/// A positive INTEGER's magnitude without leading zero bytes.
pub fn unsigned(int: &[u8]) -> &[u8] {
    let start = int.iter().position(|b| *b != 0).unwrap_or(int.len());
    &int[start..]
}

/// rsaEncryption, 1.2.840.113549.1.1.1.
pub const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
/// id-ecPublicKey, 1.2.840.10045.2.1.
pub const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// Ed25519, 1.3.101.112.
pub const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
/// commonName, 2.5.4.3.
pub const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// Seconds since the Unix epoch for a UTCTime or GeneralizedTime in UTC.
pub fn time(tag: u8, content: &[u8]) -> Result<i64> {
    let text = std::str::from_utf8(content).map_err(|_| "certificate time is not ASCII")?;
    let text = text
        .strip_suffix('Z')
        .ok_or("certificate time is not in UTC")?;
    let (year, rest) = match tag {
        UTC_TIME if text.len() == 12 => {
            let yy: i64 = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 14 => (digits(&text[..4])?, &text[4..]),
        _ => return Err("certificate time has an unexpected form"),
    };
    let month: i64 = digits(&rest[0..2])?;
    let day: i64 = digits(&rest[2..4])?;
    let hour: i64 = digits(&rest[4..6])?;
    let minute: i64 = digits(&rest[6..8])?;
    let second: i64 = digits(&rest[8..10])?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err("certificate time is out of range");
    }
    Ok(
        crate::time::days_from_civil(year, month, day) * 86_400
            + hour * 3600
            + minute * 60
            + second,
    )
}

fn digits(s: &str) -> Result<i64> {
    if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().map_err(|_| "bad digits in certificate time")
    } else {
        Err("bad digits in certificate time")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time(UTC_TIME, b"700101000000Z").unwrap(), 0);
        assert_eq!(
            time(GENERALIZED_TIME, b"20000301000000Z").unwrap(),
            951_868_800
        );
        assert_eq!(time(UTC_TIME, b"491231235959Z").unwrap(), 2_524_607_999);
        assert!(time(UTC_TIME, b"701301000000Z").is_err());
        assert!(time(UTC_TIME, b"7001010000Z").is_err());
        assert!(time(UTC_TIME, b"700101000000+0100").is_err());
    }

    #[test]
    fn truncated_input_is_an_error() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x01],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x30, 0x80],
            &[0x1f, 0x01, 0x00],
        ] {
            assert!(Der::new(bad).any().is_err(), "{bad:?}");
        }
        let mut d = Der::new(&[0x02, 0x01, 0x05, 0x30, 0x00]);
        assert_eq!(d.expect(INTEGER, "int").unwrap(), &[5]);
        assert!(d.nested(SEQUENCE, "seq").unwrap().is_empty());
        assert!(d.is_empty());
    }
}
