//! The run's source: where to fetch it from (a pre-signed URL, or a private
//! VCS through `SPACELIFT_PRIVATEVCS_MAPPING_*`), and its safe extraction.
//!
//! [`resolve_url`] first; fetch through the one HTTP agent; then
//! [`extract_tar_gz`] into the workspace's source directory. Extraction
//! refuses absolute paths, `..`, links pointing outside, writing through a
//! link, device nodes and FIFOs, and archives over the size or file-count cap
//! (decompression bombs). setuid/setgid/sticky bits are dropped; files are
//! owned by the job.

use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use crate::config::VcsMapping;
use crate::config::vars::{VCS_ENDPOINT_PREFIX, VCS_NAME_PREFIX};

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

/// `private://<pool>/<path>` → `<base endpoint of pool>/<path>`; other http(s)
/// URLs unchanged.
pub fn resolve_url(url: &str, mappings: &[VcsMapping]) -> Result<String, String> {
    if let Some(rest) = url.strip_prefix("private://") {
        let (pool, path) = rest.split_once('/').unwrap_or((rest, ""));
        if pool.is_empty() {
            return Err(format!(
                "source URL {url:?} names no VCS agent pool: expected private://<pool>/<path>"
            ));
        }
        let m = mappings.iter().find(|m| m.name == pool).ok_or_else(|| {
            format!(
                "source URL {url:?} needs the VCS agent pool {pool:?}, which no {VCS_NAME_PREFIX}<N> names: set {VCS_NAME_PREFIX}<N>={pool} and {VCS_ENDPOINT_PREFIX}<N> to its address"
            )
        })?;
        return Ok(format!("{}/{}", m.base_endpoint, path));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(url.to_string());
    }
    Err(format!(
        "source URL {url:?} is neither http(s):// nor private://<pool>/<path>"
    ))
}

/// Extracts a gzip-compressed tar stream into `dest` (created if missing).
/// `owner`: (uid, gid) on the host for every file, when the launcher can
/// chown (root). The error says which entry broke which rule.
pub fn extract_tar_gz(
    reader: impl Read,
    dest: &Path,
    limits: Limits,
    owner: Option<(u32, u32)>,
) -> Result<Extracted, String> {
    extract_tar(flate2::read::GzDecoder::new(reader), dest, limits, owner)
}

/// As [`extract_tar_gz`], for an uncompressed tar stream.
pub fn extract_tar(
    reader: impl Read,
    dest: &Path,
    limits: Limits,
    owner: Option<(u32, u32)>,
) -> Result<Extracted, String> {
    fs::create_dir_all(dest).map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
    let mut archive = tar::Archive::new(reader);
    let mut done = Extracted::default();
    let entries = archive
        .entries()
        .map_err(|e| format!("the source archive is not a tar.gz: {e}"))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| format!("the source archive is corrupt: {e}"))?;
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(format!(
                "the source archive has more than {} entries: refusing it (decompression bomb?)",
                limits.max_entries
            ));
        }
        let raw = entry
            .path()
            .map_err(|e| format!("an entry has an unreadable path: {e}"))?
            .into_owned();
        let shown = raw.display().to_string();
        let Some(rel) = safe_relative(&raw) else {
            return Err(format!(
                "entry {shown:?} has an absolute path or ..: refusing the archive"
            ));
        };
        if rel.as_os_str().is_empty() {
            continue; // "./"
        }
        let target = dest.join(&rel);
        refuse_links_in_parents(dest, &rel).map_err(|e| format!("entry {shown:?}: {e}"))?;
        let kind = entry.header().entry_type();
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        match kind {
            tar::EntryType::Directory => {
                if let Ok(m) = fs::symlink_metadata(&target) {
                    if !m.is_dir() {
                        return Err(format!(
                            "entry {shown:?} is a directory over an existing file or link"
                        ));
                    }
                } else {
                    fs::create_dir_all(&target).map_err(|e| format!("entry {shown:?}: {e}"))?;
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(|e| format!("entry {shown:?}: {e}"))?;
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let size = entry.header().size().unwrap_or(u64::MAX);
                if done.bytes.saturating_add(size) > limits.max_bytes {
                    return Err(format!(
                        "the source archive unpacks to more than {} bytes: refusing it (decompression bomb?)",
                        limits.max_bytes
                    ));
                }
                make_parent(&target).map_err(|e| format!("entry {shown:?}: {e}"))?;
                remove_non_dir(&target).map_err(|e| format!("entry {shown:?}: {e}"))?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(|e| format!("entry {shown:?}: {e}"))?;
                let copied = io::copy(&mut (&mut entry).take(size), &mut file).map_err(|e| {
                    format!("entry {shown:?}: the archive is truncated or corrupt: {e}")
                })?;
                done.bytes += copied;
                file.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("entry {shown:?}: {e}"))?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| format!("symlink {shown:?} has no target"))?
                    .into_owned();
                if link.is_absolute() || !stays_inside(&rel, &link) {
                    return Err(format!(
                        "symlink {shown:?} points outside the source directory ({}): refusing the archive",
                        link.display()
                    ));
                }
                make_parent(&target).map_err(|e| format!("entry {shown:?}: {e}"))?;
                remove_non_dir(&target).map_err(|e| format!("entry {shown:?}: {e}"))?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(|e| format!("entry {shown:?}: {e}"))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .ok()
                    .flatten()
                    .ok_or_else(|| format!("hard link {shown:?} has no target"))?
                    .into_owned();
                let Some(link_rel) = safe_relative(&link) else {
                    return Err(format!(
                        "hard link {shown:?} points outside the source directory ({}): refusing the archive",
                        link.display()
                    ));
                };
                refuse_links_in_parents(dest, &link_rel)
                    .map_err(|e| format!("hard link {shown:?}: {e}"))?;
                let source = dest.join(&link_rel);
                match fs::symlink_metadata(&source) {
                    Ok(m) if m.is_file() => {}
                    _ => {
                        return Err(format!(
                            "hard link {shown:?} must point to a regular file extracted before it"
                        ));
                    }
                }
                make_parent(&target).map_err(|e| format!("entry {shown:?}: {e}"))?;
                remove_non_dir(&target).map_err(|e| format!("entry {shown:?}: {e}"))?;
                fs::hard_link(&source, &target).map_err(|e| format!("entry {shown:?}: {e}"))?;
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(format!(
                    "entry {shown:?} is a device node: refusing the archive"
                ));
            }
            tar::EntryType::Fifo => {
                return Err(format!("entry {shown:?} is a FIFO: refusing the archive"));
            }
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => {
                return Err(format!(
                    "entry {shown:?} has an unsupported type {other:?}: refusing the archive"
                ));
            }
        }
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::lchown(&target, Some(uid), Some(gid))
                .map_err(|e| format!("entry {shown:?}: cannot give it to the job: {e}"))?;
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
/// through one could land anywhere.
fn refuse_links_in_parents(root: &Path, rel: &Path) -> Result<(), String> {
    let mut cur = root.to_path_buf();
    let parents: Vec<_> = rel.components().collect();
    for c in parents.iter().take(parents.len().saturating_sub(1)) {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "would be written through the symlink {}: refusing the archive",
                    cur.strip_prefix(root).unwrap_or(&cur).display()
                ));
            }
            Ok(m) if !m.is_dir() => {
                return Err(format!("{} is a file, not a directory", cur.display()));
            }
            Ok(_) => {}
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

fn make_parent(target: &Path) -> io::Result<()> {
    match target.parent() {
        Some(p) => fs::create_dir_all(p),
        None => Ok(()),
    }
}

/// A later entry replaces an earlier file or link of the same name (never
/// following it); a directory stays and is an error for the caller.
fn remove_non_dir(target: &Path) -> io::Result<()> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a directory of that name exists",
        )),
        Ok(_) => fs::remove_file(target),
        Err(_) => Ok(()),
    }
}
