//! The run's source: where to fetch it from (a pre-signed URL, or a private
//! VCS through `SPACELIFT_PRIVATEVCS_MAPPING_*`), and its safe extraction.
//!
//! [`resolve_url`] first; fetch through the one HTTP agent; then
//! [`extract_tar_gz`] into the workspace's source directory. Extraction
//! refuses absolute paths, `..`, links pointing outside, writing through a
//! link, device nodes and FIFOs, symlink chains that resolve outside even
//! though each link's text stays inside, and archives over the size or
//! file-count cap (decompression bombs) or with names over [`MAX_NAME`] /
//! PAX headers over [`MAX_PAX`] (memory stays bounded; names are cut in
//! messages). Every write goes through [`crate::beneath`] from the
//! destination's fd. setuid/setgid/sticky bits are dropped; files and every
//! directory the archive makes, implicit parents included, are owned by the
//! job.

use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::beneath;

use crate::config::VcsMapping;
use crate::config::vars::{VCS_ENDPOINT_PREFIX, VCS_NAME_PREFIX};

/// Longest entry name or link target accepted (bytes); Linux's PATH_MAX.
pub const MAX_NAME: usize = 4096;
/// Largest PAX extension header accepted (bytes).
pub const MAX_PAX: u64 = 64 << 10;

/// Caps on what one archive may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total bytes of file contents.
    pub max_bytes: u64,
    /// Entries of any kind.
    pub max_entries: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 2 << 30,
            max_entries: 200_000,
        }
    }
}

/// What was extracted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Extracted {
    pub entries: u64,
    pub bytes: u64,
}

/// Why a source could not be used, by kind; the message names the URL or
/// the entry and the rule it broke. The run fails with it
/// (`RunError::Source`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// The URL is neither http(s):// nor private://, or names a VCS agent
    /// pool no mapping names.
    Url(String),
    /// The download failed: the network, or an HTTP status other than 2xx.
    Fetch(String),
    /// The download outlived the run timeout.
    TimedOut(String),
    /// Not a tar.gz, or corrupt or truncated.
    Corrupt(String),
    /// An entry breaks a safety rule: an absolute or `..` path, a link out of
    /// the tree (by its text or through other links), writing through a link,
    /// a device, a FIFO, a hard link to anything but an extracted file, a
    /// name over [`MAX_NAME`].
    Unsafe(String),
    /// Over the size or entry-count cap, or a header over its bound
    /// (decompression bombs, memory bombs).
    TooLarge(String),
    /// The host refused a write into the source directory.
    Write(String),
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Url(m)
            | SourceError::Fetch(m)
            | SourceError::TimedOut(m)
            | SourceError::Corrupt(m)
            | SourceError::Unsafe(m)
            | SourceError::TooLarge(m)
            | SourceError::Write(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SourceError {}

impl From<beneath::Error> for SourceError {
    /// A host-side failure: a way out of the tree is unsafe, anything else
    /// is the host refusing the write.
    fn from(e: beneath::Error) -> Self {
        if matches!(e, beneath::Error::Escapes { .. }) {
            SourceError::Unsafe(e.to_string())
        } else {
            SourceError::Write(e.to_string())
        }
    }
}

/// `private://<pool>/<path>` → `<base endpoint of pool>/<path>`; other http(s)
/// URLs unchanged.
pub fn resolve_url(url: &str, mappings: &[VcsMapping]) -> Result<String, SourceError> {
    if let Some(rest) = url.strip_prefix("private://") {
        let (pool, path) = rest.split_once('/').unwrap_or((rest, ""));
        if pool.is_empty() {
            return Err(SourceError::Url(format!(
                "source URL {url:?} names no VCS agent pool: expected private://<pool>/<path>"
            )));
        }
        let m = mappings.iter().find(|m| m.name == pool).ok_or_else(|| {
            SourceError::Url(format!(
                "source URL {url:?} needs the VCS agent pool {pool:?}, which no {VCS_NAME_PREFIX}<N> names: set {VCS_NAME_PREFIX}<N>={pool} and {VCS_ENDPOINT_PREFIX}<N> to its address"
            ))
        })?;
        return Ok(format!("{}/{}", m.base_endpoint, path));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(url.to_string());
    }
    Err(SourceError::Url(format!(
        "source URL {url:?} is neither http(s):// nor private://<pool>/<path>"
    )))
}

/// Extracts a gzip-compressed tar stream into `dest` (created if missing).
/// `owner`: (uid, gid) on the host for every file and every directory the
/// archive makes (implicit parents included), when the launcher can chown
/// (root). The error says which entry broke which rule.
pub fn extract_tar_gz(
    reader: impl Read + Send,
    dest: &Path,
    limits: Limits,
    owner: Option<(u32, u32)>,
) -> Result<Extracted, SourceError> {
    extract_tar(flate2::read::GzDecoder::new(reader), dest, limits, owner)
}

/// What GNU long-name/long-link and PAX headers said about the next entry.
#[derive(Default)]
struct Pending {
    path: Option<PathBuf>,
    link: Option<PathBuf>,
    size: Option<u64>,
}

/// Reads an extension header's data (a long name, PAX records), refusing
/// more than `max` bytes before reading any: a hostile archive cannot make
/// the launcher hold a huge name.
fn read_bounded(
    entry: &mut impl Read,
    size: u64,
    max: u64,
    what: &str,
) -> Result<Vec<u8>, SourceError> {
    if size > max {
        return Err(SourceError::TooLarge(format!(
            "the source archive has a {what} of {size} bytes (at most {max}): refusing it"
        )));
    }
    let mut data = Vec::with_capacity(size as usize);
    entry.take(max).read_to_end(&mut data).map_err(|e| {
        SourceError::Corrupt(format!("the source archive is corrupt in a {what}: {e}"))
    })?;
    Ok(data)
}

/// A GNU long name: the bytes up to the first NUL.
fn gnu_name(data: &[u8]) -> PathBuf {
    let end = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    PathBuf::from(std::ffi::OsStr::from_bytes(&data[..end]))
}

/// PAX records (`path`, `linkpath`, `size`) into `pending`.
fn parse_pax(data: &[u8], pending: &mut Pending) -> Result<(), SourceError> {
    for ext in tar::PaxExtensions::new(data) {
        let ext = ext.map_err(|e| {
            SourceError::Corrupt(format!(
                "the source archive has a malformed PAX header: {e}"
            ))
        })?;
        let value = ext.value_bytes();
        match ext.key_bytes() {
            b"path" => pending.path = Some(PathBuf::from(std::ffi::OsStr::from_bytes(value))),
            b"linkpath" => pending.link = Some(PathBuf::from(std::ffi::OsStr::from_bytes(value))),
            b"size" => {
                let size = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok())
                    .ok_or_else(|| {
                        SourceError::Corrupt(
                            "the source archive has a PAX size that is not a number: refusing it"
                                .into(),
                        )
                    })?;
                pending.size = Some(size);
            }
            _ => {}
        }
    }
    Ok(())
}

/// As [`extract_tar_gz`], for an uncompressed tar stream.
///
/// Every file operation goes through [`beneath::Root`] opened at `dest`: no
/// create, link, chmod or chown ever leaves it or follows a symlink. Long
/// names and PAX headers are read by liftoff itself in raw mode, bounded by
/// [`MAX_NAME`] and [`MAX_PAX`], and names are cut in messages.
pub fn extract_tar(
    reader: impl Read + Send,
    dest: &Path,
    limits: Limits,
    owner: Option<(u32, u32)>,
) -> Result<Extracted, SourceError> {
    let root = beneath::Root::create(dest)
        .map_err(|e| SourceError::Write(format!("source directory: {e}")))?;
    // The source directory is the job's; everything below it is written
    // with the job's filesystem identity (a root launcher switches its
    // fsuid/fsgid on the extracting thread), so the kernel checks every
    // create, link and chmod against the job's rights, not root's.
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&root, Some(uid), Some(gid)).map_err(|e| {
            SourceError::Write(format!(
                "source directory {}: cannot give it to the job: {e}",
                dest.display()
            ))
        })?;
    }
    beneath::as_identity(owner, || extract_entries(reader, &root, limits, owner))
}

/// The entries of the archive into `root`, as [`extract_tar`] describes.
fn extract_entries(
    reader: impl Read,
    root: &beneath::Root,
    limits: Limits,
    owner: Option<(u32, u32)>,
) -> Result<Extracted, SourceError> {
    let mut archive = tar::Archive::new(reader);
    let mut done = Extracted::default();
    let entries = archive
        .entries()
        .map_err(|e| SourceError::Corrupt(format!("the source archive is not a tar.gz: {e}")))?
        .raw(true);
    let mut pending = Pending::default();
    let mut symlinks = Vec::new();
    for entry in entries {
        let mut entry = entry
            .map_err(|e| SourceError::Corrupt(format!("the source archive is corrupt: {e}")))?;
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(SourceError::TooLarge(format!(
                "the source archive has more than {} entries: refusing it (decompression bomb?)",
                limits.max_entries
            )));
        }
        let kind = entry.header().entry_type();
        let header_size = entry.header().entry_size().unwrap_or(u64::MAX);
        match kind {
            tar::EntryType::GNULongName => {
                let data = read_bounded(&mut entry, header_size, MAX_NAME as u64, "long name")?;
                pending.path = Some(gnu_name(&data));
                continue;
            }
            tar::EntryType::GNULongLink => {
                let data =
                    read_bounded(&mut entry, header_size, MAX_NAME as u64, "long link name")?;
                pending.link = Some(gnu_name(&data));
                continue;
            }
            tar::EntryType::XHeader => {
                let data = read_bounded(&mut entry, header_size, MAX_PAX, "PAX header")?;
                parse_pax(&data, &mut pending)?;
                continue;
            }
            tar::EntryType::XGlobalHeader => {
                // Read (bounded) and ignored: nothing in it changes where
                // or what liftoff writes.
                read_bounded(&mut entry, header_size, MAX_PAX, "PAX global header")?;
                continue;
            }
            _ => {}
        }
        let this = std::mem::take(&mut pending);
        if let Some(size) = this.size {
            if size != header_size {
                return Err(SourceError::Corrupt(format!(
                    "the source archive's PAX size ({size}) disagrees with its header ({header_size}): refusing it"
                )));
            }
        }
        let raw = match this.path {
            Some(p) => p,
            None => entry
                .path()
                .map_err(|e| SourceError::Corrupt(format!("an entry has an unreadable path: {e}")))?
                .into_owned(),
        };
        let shown = beneath::shown(&raw);
        if raw.as_os_str().len() > MAX_NAME {
            return Err(SourceError::Unsafe(format!(
                "entry {shown:?} has a name over {MAX_NAME} bytes: refusing the archive"
            )));
        }
        let Some(rel) = safe_relative(&raw) else {
            return Err(SourceError::Unsafe(format!(
                "entry {shown:?} has an absolute path or ..: refusing the archive"
            )));
        };
        if rel.as_os_str().is_empty() {
            continue; // "./"
        }
        let about = |e: SourceError, what: &str| prefix(e, &format!("{what} {shown:?}: "));
        let in_entry = |e: beneath::Error| about(e.into(), "entry");
        refuse_links_in_parents(root, &rel).map_err(|e| about(e, "entry"))?;
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let link_name = |entry: &tar::Entry<_>, what: &str| -> Result<PathBuf, SourceError> {
            match &this.link {
                Some(l) => Ok(l.clone()),
                None => entry
                    .link_name()
                    .ok()
                    .flatten()
                    .map(|l| l.into_owned())
                    .ok_or_else(|| SourceError::Corrupt(format!("{what} {shown:?} has no target"))),
            }
        };
        match kind {
            tar::EntryType::Directory => {
                match root.kind(&rel).map_err(in_entry)? {
                    Some(beneath::Kind::Dir) => {}
                    Some(_) => {
                        return Err(SourceError::Unsafe(format!(
                            "entry {shown:?} is a directory over an existing file or link"
                        )));
                    }
                    None => root.mkdir_all(&rel, 0o755, owner).map_err(in_entry)?,
                }
                root.chmod(&rel, mode | 0o700).map_err(in_entry)?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = header_size;
                if done.bytes.saturating_add(size) > limits.max_bytes {
                    return Err(SourceError::TooLarge(format!(
                        "the source archive unpacks to more than {} bytes: refusing it (decompression bomb?)",
                        limits.max_bytes
                    )));
                }
                make_parent(root, &rel, owner).map_err(in_entry)?;
                remove_non_dir(root, &rel).map_err(|e| about(e, "entry"))?;
                let mut file = root.create_file(&rel, 0o600).map_err(in_entry)?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut file).map_err(|e| {
                    SourceError::Corrupt(format!(
                        "entry {shown:?}: the archive is truncated or corrupt: {e}"
                    ))
                })?;
                done.bytes += copied;
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| SourceError::Write(format!("entry {shown:?}: {e}")))?;
            }
            tar::EntryType::Symlink => {
                let link = link_name(&entry, "symlink")?;
                if link.is_absolute() || !stays_inside(&rel, &link) {
                    return Err(SourceError::Unsafe(format!(
                        "symlink {shown:?} points outside the source directory ({}): refusing the archive",
                        beneath::shown(&link)
                    )));
                }
                make_parent(root, &rel, owner).map_err(in_entry)?;
                remove_non_dir(root, &rel).map_err(|e| about(e, "entry"))?;
                root.symlink(&rel, &link).map_err(in_entry)?;
                symlinks.push(rel.clone());
            }
            tar::EntryType::Link => {
                let link = link_name(&entry, "hard link")?;
                let Some(link_rel) = safe_relative(&link) else {
                    return Err(SourceError::Unsafe(format!(
                        "hard link {shown:?} points outside the source directory ({}): refusing the archive",
                        beneath::shown(&link)
                    )));
                };
                refuse_links_in_parents(root, &link_rel).map_err(|e| about(e, "hard link"))?;
                if root.kind(&link_rel).ok().flatten() != Some(beneath::Kind::File) {
                    return Err(SourceError::Unsafe(format!(
                        "hard link {shown:?} must point to a regular file extracted before it"
                    )));
                }
                make_parent(root, &rel, owner).map_err(in_entry)?;
                remove_non_dir(root, &rel).map_err(|e| about(e, "entry"))?;
                root.hard_link(&link_rel, &rel).map_err(|e| {
                    SourceError::Unsafe(format!(
                        "hard link {shown:?} must point to a regular file extracted before it: {e}"
                    ))
                })?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(SourceError::Unsafe(format!(
                    "entry {shown:?} is a device node: refusing the archive"
                )));
            }
            tar::EntryType::Fifo => {
                return Err(SourceError::Unsafe(format!(
                    "entry {shown:?} is a FIFO: refusing the archive"
                )));
            }
            other => {
                return Err(SourceError::Unsafe(format!(
                    "entry {shown:?} has an unsupported type {other:?}: refusing the archive"
                )));
            }
        }
        if let Some(owner) = owner {
            root.chown(&rel, owner).map_err(|e| {
                SourceError::Write(format!("entry {shown:?}: cannot give it to the job: {e}"))
            })?;
        }
    }
    if pending.path.is_some() || pending.link.is_some() || pending.size.is_some() {
        return Err(SourceError::Corrupt("the source archive ends with a long-name or PAX header that describes no entry: it is corrupt".into()));
    }
    // The text of every link stays inside, but a chain of links can still
    // climb out (`a/b -> ..`, then `c -> a/b/..`): resolve each, following
    // links only while they stay beneath the source directory.
    for link in symlinks {
        match root.resolves_inside(&link) {
            Ok(()) => {}
            Err(e @ beneath::Error::Escapes { .. }) => {
                return Err(SourceError::Unsafe(format!(
                    "symlink {:?} resolves outside the source directory through other links ({e}): refusing the archive",
                    beneath::shown(&link)
                )));
            }
            // Dangling or looping inside: harmless, liftoff never follows it.
            Err(_) => {}
        }
    }
    Ok(done)
}

/// The path without `.` components, or None when it is absolute or has `..`.
fn safe_relative(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Does a symlink at `entry` (relative) with target `link` resolve, lexically,
/// inside the root?
fn stays_inside(entry: &Path, link: &Path) -> bool {
    let mut depth: i64 = entry.components().count() as i64 - 1;
    for c in link.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// No existing ancestor of `rel` under `root` may be a symlink: writing
/// through one could land anywhere. (The [`beneath`] calls refuse it too;
/// this says it plainly.)
fn refuse_links_in_parents(root: &beneath::Root, rel: &Path) -> Result<(), SourceError> {
    let mut cur = PathBuf::new();
    let parents: Vec<_> = rel.components().collect();
    for c in parents.iter().take(parents.len().saturating_sub(1)) {
        cur.push(c);
        match root.kind(&cur) {
            Ok(Some(beneath::Kind::Symlink)) => {
                return Err(SourceError::Unsafe(format!(
                    "would be written through the symlink {}: refusing the archive",
                    beneath::shown(&cur)
                )));
            }
            Ok(Some(beneath::Kind::Dir)) => {}
            Ok(Some(_)) => {
                return Err(SourceError::Unsafe(format!(
                    "{} is a file, not a directory",
                    beneath::shown(&cur)
                )));
            }
            Ok(None) => return Ok(()),
            Err(e) => return Err(SourceError::Write(e.to_string())),
        }
    }
    Ok(())
}

/// Creates the missing parents of `rel`, given to the job like the
/// directories the archive lists.
fn make_parent(
    root: &beneath::Root,
    rel: &Path,
    owner: Option<(u32, u32)>,
) -> Result<(), beneath::Error> {
    match rel.parent() {
        Some(p) if !p.as_os_str().is_empty() => root.mkdir_all(p, 0o755, owner),
        _ => Ok(()),
    }
}

/// A later entry replaces an earlier file or link of the same name (never
/// following it); a directory stays and is an error for the caller.
fn remove_non_dir(root: &beneath::Root, rel: &Path) -> Result<(), SourceError> {
    let write = |e: beneath::Error| SourceError::Write(e.to_string());
    match root.kind(rel).map_err(write)? {
        Some(beneath::Kind::Dir) => Err(SourceError::Unsafe(
            "a directory of that name exists".into(),
        )),
        Some(_) => root.remove(rel).map_err(write),
        None => Ok(()),
    }
}

/// The same error with `what` before its message (which entry, which
/// archive it is about).
pub fn prefix(mut e: SourceError, what: &str) -> SourceError {
    let m = match &mut e {
        SourceError::Url(m)
        | SourceError::Fetch(m)
        | SourceError::TimedOut(m)
        | SourceError::Corrupt(m)
        | SourceError::Unsafe(m)
        | SourceError::TooLarge(m)
        | SourceError::Write(m) => m,
    };
    m.insert_str(0, what);
    e
}
