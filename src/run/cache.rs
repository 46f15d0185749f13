//! The shared OpenTofu/Terraform provider cache (`LIFTOFF_PROVIDER_CACHE_DIR`).
//!
//! Terraform's plugin cache is not safe for concurrent writers, and a cache a
//! job can write is a cache a job can poison. So each run gets a **private
//! layer**: [`ProviderCache::layer`] builds, under the run's state directory, a
//! tree of hard links to every cached provider package (read-only files owned
//! by root, so the job can add to its layer but not change what it shares).
//! The sandbox mounts that layer read-write at the cache's own path, and
//! `TF_PLUGIN_CACHE_DIR` points there: inside every run the cache is at the
//! same path, plan and apply on one host see the same providers, and the
//! symlinks Terraform leaves in `.terraform/providers` resolve in later runs.
//!
//! After a successful run, [`ProviderCache::merge`] moves the packages the run
//! downloaded into the shared cache (under an exclusive lock, each package
//! copied to a temporary name and renamed into place, so readers never see a
//! half-written one), [`ProviderCache::mark_used`] records which packages the
//! run's workspaces linked, and [`ProviderCache::prune`] deletes the least
//! recently used packages until the cache fits `LIFTOFF_PROVIDER_CACHE_MAX_BYTES`.
//!
//! The layer and the workspace are the job's: merge and mark-used read them
//! only through [`crate::beneath`] (no symlink followed, regular files only,
//! link texts taken as data), so a job cannot point them at a host file.
//!
//! Layout (Terraform's unpacked mirror layout): a package is the directory
//! `HOST/NAMESPACE/TYPE/VERSION/OS_ARCH` five levels below the root.

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use crate::beneath;
use crate::metrics::launcher::PROVIDER_CACHE;

use nix::fcntl::{Flock, FlockArg};

/// A package sits this many directory levels below the cache root.
const PACKAGE_DEPTH: usize = 5;
/// The lock file serializing merges and pruning.
const LOCK_FILE: &str = ".liftoff.lock";
/// Touched inside a package when a run used it (the LRU clock).
const USED_MARK: &str = ".liftoff-used";

#[derive(Debug, Clone)]
pub struct ProviderCache {
    dir: PathBuf,
    max_bytes: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub packages: u64,
    pub bytes: u64,
}

/// Why the provider cache could not do something: what it was doing, on
/// which path, and the system's answer.
#[derive(Debug)]
pub enum CacheError {
    /// The shared cache: its directory, its lock, a package being merged
    /// into it or pruned from it. Check `LIFTOFF_PROVIDER_CACHE_DIR`.
    Shared {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// A run's layer: building it, or reading what the job added (a link
    /// or a special file where a directory or a file belongs).
    Layer {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
}

impl std::fmt::Display for CacheError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheError::Shared { what, path, detail }
            | CacheError::Layer { what, path, detail } => {
                write!(f, "provider cache: {what} {}: {detail}", path.display())
            }
        }
    }
}

impl std::error::Error for CacheError {}

fn err(what: &'static str, p: &Path, e: impl std::fmt::Display) -> CacheError {
    CacheError::Shared {
        what,
        path: p.to_path_buf(),
        detail: e.to_string(),
    }
}

fn layer_err(what: &'static str, p: &Path, e: impl std::fmt::Display) -> CacheError {
    CacheError::Layer {
        what,
        path: p.to_path_buf(),
        detail: e.to_string(),
    }
}

impl ProviderCache {
    /// Opens (creating) the cache directory: mode 0755, readable by jobs.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<ProviderCache, CacheError> {
        fs::create_dir_all(dir).map_err(|e| err("cannot create", dir, e))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
            .map_err(|e| err("cannot set the mode of", dir, e))?;
        Ok(ProviderCache {
            dir: dir.to_path_buf(),
            max_bytes,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> Result<Flock<fs::File>, CacheError> {
        let path = self.dir.join(LOCK_FILE);
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| err("cannot open", &path, e))?;
        Flock::lock(f, FlockArg::LockExclusive).map_err(|(_, e)| err("cannot lock", &path, e))
    }

    /// Builds a run's private layer at `layer`: directories owned by the job
    /// (`owner`), every file a hard link to the shared, read-only copy (a copy
    /// when the layer is on another filesystem).
    ///
    /// The layer is the job's directory: it is built from its own fd through
    /// [`beneath::Root`], never through a symlink (a leftover of an earlier
    /// job there is refused, not followed), and only directories are given
    /// to the job.
    pub fn layer(&self, layer: &Path, owner: Option<(u32, u32)>) -> Result<Stats, CacheError> {
        let _lock = self.lock()?;
        let dst = beneath::Root::create(layer).map_err(|e| layer_err("cannot create", layer, e))?;
        let src = beneath::Root::open(&self.dir).map_err(|e| err("cannot open", &self.dir, e))?;
        let mut stats = Stats::default();
        for rel in packages(&src) {
            link_tree(&src, &dst, &rel, &mut stats.bytes)?;
            stats.packages += 1;
        }
        // Directories above the packages belong to the job too, so that it can
        // add providers beside the shared ones.
        if let Some(owner) = owner {
            own_dirs(&dst, Path::new(""), owner)?;
        }
        Ok(stats)
    }

    /// Moves the packages the run added to `layer` into the shared cache.
    /// Packages already there are left alone (first writer wins). The layer
    /// is the job's: it is read through [`beneath::Root`] from the layer's
    /// fd, never following a symlink, regular files only, each at most the
    /// cache's size limit.
    pub fn merge(&self, layer: &Path) -> Result<Stats, CacheError> {
        let _lock = self.lock()?;
        let mut stats = Stats::default();
        let layer_root =
            beneath::Root::open(layer).map_err(|e| layer_err("cannot open", layer, e))?;
        for rel in packages(&layer_root) {
            // Plain std::fs from here on is on the shared cache, which only
            // the launcher writes (a job sees its layer); `rel` is five plain
            // names read from the layer (no `..`, no link followed).
            let dest = self.dir.join(&rel);
            if fs::symlink_metadata(&dest).is_ok() {
                continue;
            }
            let parent = dest
                .parent()
                .ok_or_else(|| err("bad package path", &dest, "no parent"))?;
            fs::create_dir_all(parent).map_err(|e| err("cannot create", parent, e))?;
            let tmp = parent.join(format!(".liftoff-tmp-{}", std::process::id()));
            let _ = fs::remove_dir_all(&tmp);
            let mut bytes = 0;
            copy_tree_readonly(&layer_root, &rel, &tmp, self.max_bytes, &mut bytes)?;
            fs::rename(&tmp, &dest).map_err(|e| err("cannot move into place", &dest, e))?;
            PROVIDER_CACHE.misses.inc();
            stats.packages += 1;
            stats.bytes += bytes;
        }
        Ok(stats)
    }

    /// Records the packages that `.terraform/providers` symlinks anywhere in
    /// `workspace` (a few levels deep) point to, as used now.
    ///
    /// The workspace is the job's: its links are read as *data*, never
    /// followed. A link counts only when its text is
    /// `<sandbox_cache_path>/` and exactly [`PACKAGE_DEPTH`] plain names
    /// (no `..`, `.`, or hidden name); the mark is then touched through
    /// [`beneath::Root::touch`] from the cache root's fd, so it can never be
    /// created or truncated anywhere else. Returns how many packages were
    /// marked.
    pub fn mark_used(&self, workspace: &Path, sandbox_cache_path: &Path) -> u64 {
        let mut found = Vec::new();
        match beneath::Root::open(workspace) {
            Ok(ws) => {
                let mut budget = MAX_SCANNED;
                find_provider_links(&ws, PathBuf::new(), 0, &mut budget, &mut found);
            }
            Err(e) => {
                tracing::warn!("provider cache: cannot read the workspace for used packages: {e}");
                return 0;
            }
        }
        let cache = match beneath::Root::open(&self.dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("provider cache: {e}");
                return 0;
            }
        };
        let mut marked = std::collections::BTreeSet::new();
        for target in found {
            let Some(pkg) = package_of(&target, sandbox_cache_path) else {
                continue;
            };
            if cache.kind(&pkg).ok().flatten() != Some(beneath::Kind::Dir) {
                continue;
            }
            match cache.touch(&pkg.join(USED_MARK)) {
                Ok(()) => {
                    marked.insert(pkg);
                }
                Err(e) => tracing::warn!("provider cache: cannot mark a package used: {e}"),
            }
        }
        marked.len() as u64
    }

    /// Total size of the shared cache.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for rel in self.packages().unwrap_or_default() {
            s.packages += 1;
            s.bytes += tree_size(&self.dir.join(rel));
        }
        s
    }

    /// Deletes least recently used packages until the cache fits its limit.
    /// Returns what was deleted.
    pub fn prune(&self) -> Result<Stats, CacheError> {
        // The shared cache only: the launcher's, no job writes there.
        let _lock = self.lock()?;
        let mut all: Vec<(SystemTime, u64, PathBuf)> = self
            .packages()?
            .into_iter()
            .map(|rel| {
                let p = self.dir.join(rel);
                let used = fs::metadata(p.join(USED_MARK))
                    .or_else(|_| fs::metadata(&p))
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                (used, tree_size(&p), p)
            })
            .collect();
        let mut total: u64 = all.iter().map(|(_, s, _)| s).sum();
        all.sort();
        let mut removed = Stats::default();
        for (_, size, pkg) in all {
            if total <= self.max_bytes {
                break;
            }
            make_writable(&pkg);
            fs::remove_dir_all(&pkg).map_err(|e| err("cannot delete", &pkg, e))?;
            total -= size;
            removed.packages += 1;
            removed.bytes += size;
        }
        PROVIDER_CACHE.size_bytes.set(total as f64);
        Ok(removed)
    }
}

impl ProviderCache {
    /// The shared cache's packages, relative to its root.
    fn packages(&self) -> Result<Vec<PathBuf>, CacheError> {
        let root = beneath::Root::open(&self.dir).map_err(|e| err("cannot open", &self.dir, e))?;
        Ok(packages(&root))
    }
}

/// Package directories exactly PACKAGE_DEPTH levels below `root`, relative
/// to it (symlinks are never followed; names starting with `.` are
/// liftoff's own).
fn packages(root: &beneath::Root) -> Vec<PathBuf> {
    let mut level = vec![PathBuf::new()];
    for _ in 0..PACKAGE_DEPTH {
        let mut next = Vec::new();
        for d in level {
            let Ok(entries) = root.read_dir(&d) else {
                continue;
            };
            for (name, kind) in entries {
                let hidden = name.as_bytes().starts_with(b".");
                if !hidden && kind == beneath::Kind::Dir {
                    next.push(d.join(name));
                }
            }
        }
        level = next;
    }
    level.sort();
    level
}

/// Gives `rel` and every directory below it (no symlink followed) to `owner`.
fn own_dirs(layer: &beneath::Root, rel: &Path, owner: (u32, u32)) -> Result<(), CacheError> {
    layer
        .chown(rel, owner)
        .map_err(|e| layer_err("cannot give to the job", layer.path(), e))?;
    let entries = layer
        .read_dir(rel)
        .map_err(|e| layer_err("cannot read", layer.path(), e))?;
    for (name, kind) in entries {
        if kind == beneath::Kind::Dir {
            own_dirs(layer, &rel.join(name), owner)?;
        }
    }
    Ok(())
}

/// Links the shared package `rel` into the layer at the same place: each
/// file hard-linked (copied when the layer is on another filesystem), each
/// directory created beneath the layer's fd (an existing symlink on the way
/// refuses the layer).
fn link_tree(
    shared: &beneath::Root,
    layer: &beneath::Root,
    rel: &Path,
    bytes: &mut u64,
) -> Result<(), CacheError> {
    layer
        .mkdir_all(rel, 0o755, None)
        .map_err(|e| layer_err("cannot create", layer.path(), e))?;
    let entries = shared
        .read_dir(rel)
        .map_err(|e| err("cannot read", shared.path(), e))?;
    for (name, kind) in entries {
        let p = rel.join(&name);
        match kind {
            beneath::Kind::Dir => link_tree(shared, layer, &p, bytes)?,
            beneath::Kind::File => {
                let size = match layer.link_from(shared, &p, &p) {
                    Ok(()) => shared
                        .stat(&p)
                        .ok()
                        .flatten()
                        .map_or(0, |st| st.st_size as u64),
                    // Another filesystem (EXDEV) or too many links: a copy.
                    Err(beneath::Error::Io { .. }) => copy_into(shared, layer, &p)?,
                    Err(e) => return Err(layer_err("cannot link into", layer.path(), e)),
                };
                *bytes += size;
            }
            beneath::Kind::Symlink => {
                if let Ok(target) = shared.read_link(&p) {
                    let _ = layer.symlink(&p, &target);
                }
            }
            beneath::Kind::Special => {}
        }
    }
    Ok(())
}

/// Copies the shared file `rel` into the layer (a new file, its mode kept).
fn copy_into(shared: &beneath::Root, layer: &beneath::Root, rel: &Path) -> Result<u64, CacheError> {
    let (mut from, size) = shared
        .open_regular(rel, beneath::Follow::Never, u64::MAX)
        .map_err(|e| err("cannot copy from", shared.path(), e))?;
    let mode = from.metadata().map_or(0o444, |m| m.mode() & 0o777);
    let mut to = layer
        .create_file(rel, 0o600)
        .map_err(|e| layer_err("cannot copy into", layer.path(), e))?;
    std::io::copy(&mut (&mut from).take(size), &mut to)
        .map_err(|e| layer_err("cannot copy", &layer.path().join(rel), e))?;
    to.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| layer_err("cannot set the mode of", &layer.path().join(rel), e))?;
    Ok(size)
}

/// Copies a package from the job's layer into the shared cache: files
/// read-only (0444, or 0555 when executable), directories 0755; owned by
/// whoever runs the launcher. The layer is read beneath its root: no
/// symlink followed, regular files only (non-blocking open), each at most
/// `max_file` bytes.
fn copy_tree_readonly(
    layer: &beneath::Root,
    rel: &Path,
    dst: &Path,
    max_file: u64,
    bytes: &mut u64,
) -> Result<(), CacheError> {
    fs::create_dir_all(dst).map_err(|e| err("cannot create", dst, e))?;
    let entries = layer
        .read_dir(rel)
        .map_err(|e| layer_err("cannot read the layer", layer.path(), e))?;
    for (name, kind) in entries {
        let (from, to) = (rel.join(&name), dst.join(&name));
        match kind {
            beneath::Kind::Dir => copy_tree_readonly(layer, &from, &to, max_file, bytes)?,
            beneath::Kind::File => {
                let (mut src, size) = layer
                    .open_regular(&from, beneath::Follow::Never, max_file)
                    .map_err(|e| layer_err("cannot copy from the layer", layer.path(), e))?;
                let exec = src.metadata().is_ok_and(|m| m.mode() & 0o111 != 0);
                let mut out = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&to)
                    .map_err(|x| err("cannot create", &to, x))?;
                std::io::copy(&mut (&mut src).take(size), &mut out)
                    .map_err(|x| err("cannot copy", &to, x))?;
                let mode = if exec { 0o555 } else { 0o444 };
                out.set_permissions(fs::Permissions::from_mode(mode))
                    .map_err(|x| err("cannot set the mode of", &to, x))?;
                *bytes += size;
            }
            // Symlinks inside a package are not carried into the shared
            // cache; FIFOs, sockets and devices never are.
            beneath::Kind::Symlink | beneath::Kind::Special => {}
        }
    }
    fs::set_permissions(dst, fs::Permissions::from_mode(0o755))
        .map_err(|e| err("cannot set the mode of", dst, e))
}

fn tree_size(p: &Path) -> u64 {
    let Ok(rd) = fs::read_dir(p) else { return 0 };
    rd.flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_size(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

fn make_writable(p: &Path) {
    let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o755));
    if let Ok(rd) = fs::read_dir(p) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                make_writable(&e.path());
            }
        }
    }
}

/// The package a provider link's text names: `<sandbox_cache>/` and then
/// exactly [`PACKAGE_DEPTH`] plain, non-hidden names, computed lexically.
/// Anything else (`..`, `.`, too few or too many names, another prefix) is
/// not a package.
fn package_of(target: &Path, sandbox_cache: &Path) -> Option<PathBuf> {
    if !target.is_absolute() {
        return None;
    }
    let rel = target.strip_prefix(sandbox_cache).ok()?;
    // strip_prefix works on components; a `..` anywhere in the text would
    // make the lexical answer wrong, so refuse it outright.
    if target
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::RootDir))
    {
        return None;
    }
    let mut out = PathBuf::new();
    let mut n = 0;
    for c in rel.components() {
        let Component::Normal(name) = c else {
            return None;
        };
        if name.as_bytes().starts_with(b".") {
            return None;
        }
        out.push(name);
        n += 1;
    }
    (n == PACKAGE_DEPTH).then_some(out)
}

/// Most directory entries [`find_provider_links`] looks at in one workspace.
const MAX_SCANNED: usize = 200_000;

/// Symlink texts under any `.terraform` within the workspace `ws` (relative
/// path `dir`), up to a few levels deep; nothing is followed.
fn find_provider_links(
    ws: &beneath::Root,
    dir: PathBuf,
    depth: usize,
    budget: &mut usize,
    out: &mut Vec<PathBuf>,
) {
    if depth > 12 {
        return;
    }
    let Ok(entries) = ws.read_dir(&dir) else {
        return;
    };
    for (name, kind) in entries {
        if *budget == 0 {
            return;
        }
        *budget -= 1;
        let p = dir.join(&name);
        match kind {
            beneath::Kind::Symlink if p.components().any(|c| c.as_os_str() == ".terraform") => {
                if let Ok(target) = ws.read_link(&p) {
                    out.push(target);
                }
            }
            beneath::Kind::Dir => find_provider_links(ws, p, depth + 1, budget, out),
            _ => {}
        }
    }
}
