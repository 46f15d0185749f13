//! A small zip reader for the vendors' release archives: one file is taken
//! out of the archive in memory, everything about the archive checked first.
//!
//! Call order: [`extract`] with the archive's bytes (already checked against
//! the signed `SHA256SUMS`) and the wanted name. It reads the end record and
//! the central directory, refuses the whole archive when any entry's path
//! would land outside it (absolute, `..`, a backslash or a NUL), then
//! inflates the named entry (stored or deflate only), bounded by
//! [`MAX_ENTRY`], and checks its size and CRC-32 against the directory and
//! the local header.

use std::fmt;
use std::io::Read;

/// Largest file taken out of an archive (tofu and terraform are < 200 MB).
pub const MAX_ENTRY: u64 = 512 << 20;
/// Most entries an archive may have.
const MAX_ENTRIES: usize = 10_000;

/// Why an archive was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZipError {
    /// Not a zip, or cut short, or inconsistent.
    Corrupt(String),
    /// An entry's path would land outside the archive's directory.
    PathEscape(String),
    /// No entry of the wanted name.
    Missing(String),
    /// Valid, but uses what this reader does not (zip64, encryption, ...).
    Unsupported(String),
}

impl fmt::Display for ZipError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ZipError::Corrupt(m) => write!(f, "the zip archive is damaged: {m}"),
            ZipError::PathEscape(p) => write!(
                f,
                "the zip archive holds the path {p:?}, which is outside the archive: refused"
            ),
            ZipError::Missing(n) => write!(f, "the zip archive holds no file named {n:?}"),
            ZipError::Unsupported(m) => {
                write!(f, "the zip archive uses {m}, which is not supported")
            }
        }
    }
}

fn corrupt(m: impl Into<String>) -> ZipError {
    ZipError::Corrupt(m.into())
}

fn u16_at(d: &[u8], at: usize) -> Result<u16, ZipError> {
    d.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| corrupt("cut short"))
}

fn u32_at(d: &[u8], at: usize) -> Result<u32, ZipError> {
    d.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| corrupt("cut short"))
}

struct Entry {
    name: String,
    method: u16,
    flags: u16,
    crc: u32,
    compressed: u64,
    size: u64,
    local: usize,
    mode: u32,
}

/// True when `name` stays inside the archive's directory.
fn safe_path(name: &str) -> bool {
    let drive = name.len() >= 2 && name.as_bytes()[1] == b':';
    !(name.is_empty()
        || drive
        || name.starts_with('/')
        || name.contains('\\')
        || name.contains('\0')
        || name.split('/').any(|c| c == ".."))
}

fn directory(zip: &[u8]) -> Result<Vec<Entry>, ZipError> {
    // The end record is in the last 22 + 65535 bytes.
    let from = zip.len().saturating_sub(22 + 0xFFFF);
    let eocd = (from..zip.len().saturating_sub(21))
        .rev()
        .find(|&i| zip[i..i + 4] == [0x50, 0x4B, 0x05, 0x06])
        .ok_or_else(|| corrupt("no end of central directory record (not a zip, or cut short)"))?;
    let count = u16_at(zip, eocd + 10)? as usize;
    let size = u32_at(zip, eocd + 12)? as usize;
    let offset = u32_at(zip, eocd + 16)? as usize;
    if count == 0xFFFF || offset == 0xFFFF_FFFF {
        return Err(ZipError::Unsupported("zip64".into()));
    }
    if count > MAX_ENTRIES {
        return Err(corrupt(format!("{count} entries, more than {MAX_ENTRIES}")));
    }
    if offset.checked_add(size).is_none_or(|e| e > eocd) {
        return Err(corrupt("the central directory lies outside the archive"));
    }
    let mut at = offset;
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        if u32_at(zip, at)? != 0x0201_4B50 {
            return Err(corrupt("bad central directory entry"));
        }
        let made_by = u16_at(zip, at + 4)?;
        let flags = u16_at(zip, at + 8)?;
        let method = u16_at(zip, at + 10)?;
        let crc = u32_at(zip, at + 16)?;
        let compressed = u32_at(zip, at + 20)?;
        let size = u32_at(zip, at + 24)?;
        let name_len = u16_at(zip, at + 28)? as usize;
        let extra_len = u16_at(zip, at + 30)? as usize;
        let comment_len = u16_at(zip, at + 32)? as usize;
        let external = u32_at(zip, at + 38)?;
        let local = u32_at(zip, at + 42)?;
        if compressed == u32::MAX || size == u32::MAX || local == u32::MAX {
            return Err(ZipError::Unsupported("zip64".into()));
        }
        let name = zip
            .get(at + 46..at + 46 + name_len)
            .ok_or_else(|| corrupt("cut entry name"))?;
        let name = String::from_utf8_lossy(name).into_owned();
        if !safe_path(&name) {
            return Err(ZipError::PathEscape(name));
        }
        // Unix permissions are in the high half when made on Unix (3).
        let mode = if made_by >> 8 == 3 { external >> 16 } else { 0 };
        entries.push(Entry {
            name,
            method,
            flags,
            crc,
            compressed: compressed.into(),
            size: size.into(),
            local: local as usize,
            mode,
        });
        at += 46 + name_len + extra_len + comment_len;
    }
    Ok(entries)
}

/// A file taken out of an archive.
#[derive(Debug)]
pub struct Extracted {
    pub data: Vec<u8>,
    /// Unix permission bits when the archive records them (else 0).
    pub mode: u32,
}

/// Takes the file `name` out of `zip` (see the module doc).
pub fn extract(zip: &[u8], name: &str) -> Result<Extracted, ZipError> {
    let entries = directory(zip)?;
    let e = entries
        .iter()
        .find(|e| e.name == name)
        .ok_or_else(|| ZipError::Missing(name.to_string()))?;
    if e.flags & 1 != 0 {
        return Err(ZipError::Unsupported("encryption".into()));
    }
    if e.size > MAX_ENTRY {
        return Err(corrupt(format!(
            "{name} is {} bytes, more than {MAX_ENTRY}",
            e.size
        )));
    }
    if u32_at(zip, e.local)? != 0x0403_4B50 {
        return Err(corrupt(format!("{name}: bad local header")));
    }
    let local_name_len = u16_at(zip, e.local + 26)? as usize;
    let local_extra_len = u16_at(zip, e.local + 28)? as usize;
    let local_name = zip
        .get(e.local + 30..e.local + 30 + local_name_len)
        .ok_or_else(|| corrupt("cut local header"))?;
    if local_name != e.name.as_bytes() {
        return Err(corrupt(format!(
            "{name}: the local header names another file"
        )));
    }
    let start = e.local + 30 + local_name_len + local_extra_len;
    let body = usize::try_from(e.compressed)
        .ok()
        .and_then(|c| zip.get(start..start.checked_add(c)?))
        .ok_or_else(|| corrupt(format!("{name}: its data is cut short")))?;
    let mut data = Vec::with_capacity(e.size as usize);
    match e.method {
        0 => data.extend_from_slice(body),
        8 => {
            flate2::read::DeflateDecoder::new(body)
                .take(e.size + 1)
                .read_to_end(&mut data)
                .map_err(|err| corrupt(format!("{name}: cannot inflate: {err}")))?;
        }
        m => {
            return Err(ZipError::Unsupported(format!(
                "compression method {m} (only stored and deflate)"
            )));
        }
    }
    if data.len() as u64 != e.size {
        return Err(corrupt(format!(
            "{name}: {} bytes inflated, the directory says {}",
            data.len(),
            e.size
        )));
    }
    let mut crc = flate2::Crc::new();
    crc.update(&data);
    if crc.sum() != e.crc {
        return Err(corrupt(format!("{name}: CRC-32 mismatch")));
    }
    Ok(Extracted { data, mode: e.mode })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_paths() {
        for p in ["../x", "/etc/passwd", "a/../../b", "a\\b", "C:x", ""] {
            assert!(!safe_path(p), "{p}");
        }
        for p in ["tofu", "a/b", "LICENSE", "..a", "a..b"] {
            assert!(safe_path(p), "{p}");
        }
    }

    #[test]
    fn garbage_is_an_error() {
        for z in [&b""[..], b"PK\x05\x06", b"not a zip at all, just text"] {
            assert!(extract(z, "tofu").is_err());
        }
    }
}
