//! Applies one layer (a tar, gzip'd tar or zstd'd tar: the bytes are
//! sniffed) onto an image directory, safely.
//!
//! Order: [`apply`] per layer, lowest first, on a [`Root`] the cache made
//! for the image. Every entry goes through [`crate::beneath`]: an absolute
//! path or `..` refuses the layer; nothing is created through a symlink (a
//! symlink, then a path through it, is refused by the kernel's
//! `RESOLVE_NO_SYMLINKS`); a hard link must name a regular file already in
//! the image. OCI whiteouts: `.wh.<name>` removes `<name>` of lower layers,
//! `.wh..wh..opq` empties its directory of what lower layers put there
//! (entries of this layer are kept, so the result is as if it were applied
//! first, as image-spec requires). Device nodes, FIFOs and sockets are
//! dropped; setuid/setgid bits and extended attributes are not kept; every
//! file belongs to the launcher, and what the image gave uid or gid 1983
//! (the job's user) is made readable to all, so the job can read what it
//! could in the image. The decompressed stream and the bytes written share
//! the image's [`Budget`], and the stream must hash to the layer's diff_id.

use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::beneath::{Kind, Root};

use super::Hasher;

/// Why a layer could not be applied.
#[derive(Debug)]
pub enum LayerError {
    /// The host ran out of space or quota while writing it (ENOSPC,
    /// EDQUOT): the cache's problem, not the layer's.
    NoSpace(String),
    /// The layer is not acceptable (bad tar, unsafe name, over the size
    /// bound, wrong diff_id) or could not be read.
    Bad(String),
}

impl LayerError {
    /// An I/O failure while writing: classified by its errno.
    fn writing(e: &io::Error, message: String) -> LayerError {
        match e.raw_os_error() {
            Some(libc::ENOSPC | libc::EDQUOT) => LayerError::NoSpace(message),
            _ => LayerError::Bad(message),
        }
    }

    /// A failed operation beneath the image's root.
    fn beneath(shown: &str, e: crate::beneath::Error) -> LayerError {
        let message = format!("entry {shown:?}: {e}");
        match &e {
            crate::beneath::Error::Io { source, .. } => LayerError::writing(source, message),
            _ => LayerError::Bad(message),
        }
    }
}

impl From<String> for LayerError {
    fn from(message: String) -> LayerError {
        LayerError::Bad(message)
    }
}

impl std::fmt::Display for LayerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LayerError::NoSpace(m) | LayerError::Bad(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for LayerError {}

/// The job's uid and gid inside images.
const JOB_ID: u64 = 1983;

/// What is left of an image's size bound (`LIFTOFF_IMAGE_MAX_BYTES`):
/// decompressed tar bytes and file bytes written are each counted.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max: u64,
    pub read: u64,
    pub written: u64,
}

impl Budget {
    pub fn new(max: u64) -> Budget {
        Budget {
            max,
            read: 0,
            written: 0,
        }
    }
}

/// Applies the layer read from `blob` to `root`; checks the diff_id.
pub fn apply(
    root: &Root,
    blob: impl Read + 'static,
    diff_id: &str,
    budget: &mut Budget,
) -> Result<(), LayerError> {
    let stream = decompress(BufReader::with_capacity(256 << 10, blob))
        .map_err(|e| format!("cannot read the layer: {e}"))?;
    let mut counted = Counted {
        inner: stream,
        hash: Hasher::new(),
        read: budget.read,
        max: budget.max,
        over: false,
    };
    let result = entries(root, &mut counted, budget);
    if counted.over {
        return Err(over(budget.max).into());
    }
    result?;
    // The tar's end may leave padding unread: it counts in the diff_id.
    let drained = io::copy(&mut counted, &mut io::sink());
    budget.read = counted.read;
    if counted.over {
        return Err(over(budget.max).into());
    }
    drained.map_err(|e| format!("cannot read the layer: {e}"))?;
    let got = std::mem::take(&mut counted.hash).finish();
    if got != diff_id {
        return Err(format!(
            "its content hashes to {got}, not to the diff_id {diff_id} the image config names"
        )
        .into());
    }
    Ok(())
}

fn over(max: u64) -> String {
    format!(
        "the image unpacks to more than LIFTOFF_IMAGE_MAX_BYTES ({max} bytes): a decompression bomb, or raise the bound"
    )
}

fn entries<R: Read>(
    root: &Root,
    stream: &mut Counted<R>,
    budget: &mut Budget,
) -> Result<(), LayerError> {
    let mut archive = tar::Archive::new(stream);
    // Paths this layer put in place (and their parents): an opaque
    // directory or a whiteout never removes them.
    let mut mine: HashSet<PathBuf> = HashSet::new();
    // Raw mode: long names and PAX headers are read here, bounded.
    let entries = archive
        .entries()
        .map_err(|e| format!("not a tar archive: {e}"))?
        .raw(true);
    let (mut long_name, mut long_link): (Option<Vec<u8>>, Option<Vec<u8>>) = (None, None);
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("bad tar entry: {e}"))?;
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::GNULongName => long_name = Some(meta(&mut entry, MAX_NAME)?),
            T::GNULongLink => long_link = Some(meta(&mut entry, MAX_NAME)?),
            T::XHeader => {
                let data = meta(&mut entry, MAX_PAX)?;
                for (k, v) in pax(&data) {
                    match k {
                        b"path" => long_name = Some(v.to_vec()),
                        b"linkpath" => long_link = Some(v.to_vec()),
                        _ => {}
                    }
                }
            }
            T::XGlobalHeader => drop(meta(&mut entry, MAX_PAX)?),
            _ => {}
        }
        if entry.header().entry_type().is_gnu_longname()
            || entry.header().entry_type().is_gnu_longlink()
            || entry.header().entry_type().is_pax_local_extensions()
            || entry.header().entry_type().is_pax_global_extensions()
        {
            continue;
        }
        let name_bytes = long_name
            .take()
            .unwrap_or_else(|| entry.header().path_bytes().into_owned());
        let link_bytes = long_link
            .take()
            .or_else(|| entry.header().link_name_bytes().map(|l| l.into_owned()));
        if name_bytes.len() > MAX_NAME {
            return Err(format!("an entry name is over {MAX_NAME} bytes").into());
        }
        let raw = PathBuf::from(std::ffi::OsString::from_vec(name_bytes));
        let Some(rel) = relative(&raw)? else { continue };
        let shown = crate::beneath::shown(&rel);
        let ctx = |e: crate::beneath::Error| LayerError::beneath(&shown, e);
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let parent = rel.parent().unwrap_or(Path::new("")).to_path_buf();
        let top = parent.as_os_str().is_empty();
        if let Some(target) = name.strip_prefix(".wh.") {
            if target == ".wh..opq" {
                if top || root.kind(&parent).map_err(ctx)? == Some(Kind::Dir) {
                    for (child, _) in root.read_dir(&parent).map_err(ctx)? {
                        let c = parent.join(&child);
                        if !mine.contains(&c) {
                            remove_all(root, &c).map_err(ctx)?;
                        }
                    }
                }
            } else {
                let victim = parent.join(target);
                if !target.is_empty() && !mine.contains(&victim) {
                    remove_all(root, &victim).map_err(ctx)?;
                }
            }
            continue;
        }
        let header = entry.header();
        let kind = header.entry_type();
        let mode = header.mode().unwrap_or(0o644);
        let (uid, gid) = (header.uid().unwrap_or(0), header.gid().unwrap_or(0));
        let mut perm = mode & 0o777;
        if uid == JOB_ID {
            perm |= (perm >> 6) & 0o7;
        }
        if gid == JOB_ID {
            perm |= (perm >> 3) & 0o7;
        }
        let keep = matches!(
            kind,
            T::Directory | T::Regular | T::Continuous | T::GNUSparse | T::Symlink | T::Link
        );
        if !keep {
            // Device nodes, FIFOs, sockets and anything else: dropped.
            continue;
        }
        let existing = root.kind(&rel).map_err(ctx)?;
        if existing.is_some() && !(kind == T::Directory && existing == Some(Kind::Dir)) {
            remove_all(root, &rel).map_err(ctx)?;
        }
        if !top {
            root.mkdir_all(&parent, 0o755, None).map_err(ctx)?;
        }
        let link = |_: &tar::Entry<'_, _>, what: &str| -> Result<PathBuf, String> {
            match &link_bytes {
                Some(l) if !l.is_empty() => {
                    Ok(PathBuf::from(std::ffi::OsString::from_vec(l.clone())))
                }
                _ => Err(format!("entry {shown:?}: a {what} without a target")),
            }
        };
        match kind {
            T::Directory => {
                root.mkdir_all(&rel, 0o755, None).map_err(ctx)?;
                // Sticky kept (/tmp); the launcher may always enter and clean.
                root.chmod(&rel, perm | 0o700 | (mode & 0o1000))
                    .map_err(ctx)?;
            }
            T::Symlink => {
                let target = link(&entry, "symlink")?;
                root.symlink(&rel, &target).map_err(ctx)?;
            }
            T::Link => {
                let target = link(&entry, "hard link")?;
                let Some(target) = relative(&target)? else {
                    return Err(format!("entry {shown:?}: a hard link to the image's root").into());
                };
                root.hard_link(&target, &rel).map_err(|e| {
                    let message = format!(
                        "entry {shown:?}: a hard link to {:?}: {e}",
                        crate::beneath::shown(&target)
                    );
                    match &e {
                        crate::beneath::Error::Io { source, .. } => {
                            LayerError::writing(source, message)
                        }
                        _ => LayerError::Bad(message),
                    }
                })?;
            }
            _ => {
                let mut file = root.create_file(&rel, 0o600).map_err(ctx)?;
                let left = budget.max.saturating_sub(budget.written);
                let n = io::copy(&mut (&mut entry).take(left.saturating_add(1)), &mut file)
                    .map_err(|e| {
                        LayerError::writing(&e, format!("entry {shown:?}: cannot write: {e}"))
                    })?;
                if n > left {
                    return Err(over(budget.max).into());
                }
                budget.written += n;
                file.set_permissions(std::fs::Permissions::from_mode(perm | 0o600))
                    .map_err(|e| {
                        LayerError::writing(
                            &e,
                            format!("entry {shown:?}: cannot set its mode: {e}"),
                        )
                    })?;
            }
        }
        for a in rel.ancestors() {
            if !mine.insert(a.to_path_buf()) {
                break;
            }
        }
    }
    Ok(())
}

/// Longest entry name or link target.
const MAX_NAME: usize = 4096;
/// Largest PAX header.
const MAX_PAX: u64 = 64 << 10;

/// The data of a long-name or PAX entry, at most `max` bytes (trailing NULs
/// dropped).
fn meta<R: Read>(entry: &mut tar::Entry<'_, R>, max: impl TryInto<u64>) -> Result<Vec<u8>, String> {
    let max: u64 = max.try_into().unwrap_or(0);
    if entry.size() > max {
        return Err(format!(
            "a long name or PAX header of {} bytes (at most {max} are accepted)",
            entry.size()
        ));
    }
    let mut v = Vec::new();
    entry
        .read_to_end(&mut v)
        .map_err(|e| format!("cannot read a tar header: {e}"))?;
    while v.last() == Some(&0) {
        v.pop();
    }
    Ok(v)
}

/// The `key=value` records of a PAX header (`<len> key=value\n` each).
fn pax(mut data: &[u8]) -> Vec<(&[u8], &[u8])> {
    let mut out = Vec::new();
    while let Some(sp) = data.iter().position(|&b| b == b' ') {
        let len: usize = match std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|n| n.parse().ok())
        {
            Some(n) if n > sp && n <= data.len() => n,
            _ => break,
        };
        let record = &data[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=') {
            out.push((&record[..eq], &record[eq + 1..]));
        }
        data = &data[len..];
    }
    out
}

/// A tar name as a plain relative path (`./` dropped); `None` for the
/// image's root itself; absolute names and `..` refuse the layer.
fn relative(raw: &Path) -> Result<Option<PathBuf>, String> {
    let mut out = PathBuf::new();
    for c in raw.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(format!(
                    "entry {:?} is absolute or has `..`: a layer may only name paths inside the image",
                    crate::beneath::shown(raw)
                ));
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

/// Removes `rel` and, for a directory, everything in it (never following
/// a symlink); missing is fine.
pub fn remove_all(root: &Root, rel: &Path) -> crate::beneath::Result<()> {
    match root.kind(rel)? {
        None => Ok(()),
        Some(Kind::Dir) => {
            for (child, _) in root.read_dir(rel)? {
                remove_all(root, &rel.join(child))?;
            }
            root.remove(rel)
        }
        Some(_) => root.remove(rel),
    }
}

/// The decompressed layer: gzip and zstd by their magic numbers, else tar.
pub(crate) fn decompress<R: BufRead + 'static>(mut r: R) -> io::Result<Box<dyn Read>> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(r))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(Zstd {
            dec: None,
            src: Some(r),
        })
    } else {
        Box::new(r)
    })
}

/// A zstd stream of one or more frames.
struct Zstd<R: BufRead> {
    dec: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
    src: Option<R>,
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if let Some(d) = &mut self.dec {
                let n = d.read(buf)?;
                if n > 0 {
                    return Ok(n);
                }
                self.src = self.dec.take().map(|d| d.into_inner());
            }
            let Some(mut src) = self.src.take() else {
                return Ok(0);
            };
            match src.fill_buf().map(|b| b.is_empty()) {
                Ok(false) => {}
                other => {
                    self.src = Some(src);
                    return other.map(|_| 0);
                }
            }
            let dec = ruzstd::decoding::StreamingDecoder::new(src)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("zstd: {e}")))?;
            self.dec = Some(dec);
        }
    }
}

/// Counts and hashes what the tar reader takes; stops at the bound.
struct Counted<R> {
    inner: R,
    hash: Hasher,
    read: u64,
    max: u64,
    over: bool,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.max {
            self.over = true;
            return Err(io::Error::other("over the image size bound"));
        }
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}
