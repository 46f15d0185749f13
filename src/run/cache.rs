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
//! Layout (Terraform's unpacked mirror layout): a package is the directory
//! `HOST/NAMESPACE/TYPE/VERSION/OS_ARCH` five levels below the root.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

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

fn err(what: &str, p: &Path, e: impl std::fmt::Display) -> String {
    format!("provider cache: {what} {}: {e}", p.display())
}

impl ProviderCache {
    /// Opens (creating) the cache directory: mode 0755, readable by jobs.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<ProviderCache, String> {
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

    fn lock(&self) -> Result<Flock<fs::File>, String> {
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
    pub fn layer(&self, layer: &Path, owner: Option<(u32, u32)>) -> Result<Stats, String> {
        let _lock = self.lock()?;
        fs::create_dir_all(layer).map_err(|e| err("cannot create", layer, e))?;
        chown(layer, owner)?;
        let mut stats = Stats::default();
        for pkg in packages(&self.dir) {
            let rel = pkg
                .strip_prefix(&self.dir)
                .map_err(|e| err("bad package path", &pkg, e))?;
            link_tree(&pkg, &layer.join(rel), &mut stats.bytes)?;
            stats.packages += 1;
        }
        // Directories above the packages belong to the job too, so that it can
        // add providers beside the shared ones.
        own_dirs(layer, owner)?;
        Ok(stats)
    }

    /// Moves the packages the run added to `layer` into the shared cache.
    /// Packages already there are left alone (first writer wins).
    pub fn merge(&self, layer: &Path) -> Result<Stats, String> {
        let _lock = self.lock()?;
        let mut stats = Stats::default();
        for pkg in packages(layer) {
            let rel = pkg
                .strip_prefix(layer)
                .map_err(|e| err("bad package path", &pkg, e))?;
            let dest = self.dir.join(rel);
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
            copy_tree_readonly(&pkg, &tmp, &mut bytes)?;
            fs::rename(&tmp, &dest).map_err(|e| err("cannot move into place", &dest, e))?;
            stats.packages += 1;
            stats.bytes += bytes;
        }
        Ok(stats)
    }

    /// Records the packages that `.terraform/providers` symlinks anywhere in
    /// `workspace` (a few levels deep) point to, as used now.
    pub fn mark_used(&self, workspace: &Path, sandbox_cache_path: &Path) {
        let mut found = Vec::new();
        find_provider_links(workspace, 0, &mut found);
        for target in found {
            let Ok(rel) = target.strip_prefix(sandbox_cache_path) else {
                continue;
            };
            let parts: Vec<_> = rel.components().take(PACKAGE_DEPTH).collect();
            if parts.len() < PACKAGE_DEPTH {
                continue;
            }
            let pkg: PathBuf = parts.iter().collect();
            let shared = self.dir.join(pkg);
            if shared.is_dir() {
                let _ = fs::write(shared.join(USED_MARK), b"");
            }
        }
    }

    /// Total size of the shared cache.
    pub fn stats(&self) -> Stats {
        let mut s = Stats::default();
        for pkg in packages(&self.dir) {
            s.packages += 1;
            s.bytes += tree_size(&pkg);
        }
        s
    }

    /// Deletes least recently used packages until the cache fits its limit.
    /// Returns what was deleted.
    pub fn prune(&self) -> Result<Stats, String> {
        let _lock = self.lock()?;
        let mut all: Vec<(SystemTime, u64, PathBuf)> = packages(&self.dir)
            .into_iter()
            .map(|p| {
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
        Ok(removed)
    }
}

/// Package directories exactly PACKAGE_DEPTH levels below `root` (symlinks
/// are not followed; names starting with `.` are liftoff's own).
fn packages(root: &Path) -> Vec<PathBuf> {
    let mut level = vec![root.to_path_buf()];
    for _ in 0..PACKAGE_DEPTH {
        let mut next = Vec::new();
        for d in level {
            let Ok(rd) = fs::read_dir(&d) else { continue };
            for e in rd.flatten() {
                let hidden = e.file_name().to_string_lossy().starts_with('.');
                if !hidden && e.file_type().is_ok_and(|t| t.is_dir()) {
                    next.push(e.path());
                }
            }
        }
        level = next;
    }
    level.sort();
    level
}

fn chown(p: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    if let Some((u, g)) = owner {
        std::os::unix::fs::lchown(p, Some(u), Some(g))
            .map_err(|e| err("cannot give to the job", p, e))?;
    }
    Ok(())
}

fn own_dirs(dir: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    chown(dir, owner)?;
    for e in fs::read_dir(dir)
        .map_err(|e| err("cannot read", dir, e))?
        .flatten()
    {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            own_dirs(&e.path(), owner)?;
        }
    }
    Ok(())
}

fn link_tree(src: &Path, dst: &Path, bytes: &mut u64) -> Result<(), String> {
    fs::create_dir_all(dst).map_err(|e| err("cannot create", dst, e))?;
    for e in fs::read_dir(src)
        .map_err(|e| err("cannot read", src, e))?
        .flatten()
    {
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let ft = e.file_type().map_err(|x| err("cannot stat", &from, x))?;
        if ft.is_dir() {
            link_tree(&from, &to, bytes)?;
        } else if ft.is_file() {
            if fs::hard_link(&from, &to).is_err() {
                fs::copy(&from, &to).map_err(|x| err("cannot copy", &from, x))?;
            }
            *bytes += e.metadata().map_or(0, |m| m.len());
        } else if ft.is_symlink() {
            let target = fs::read_link(&from).map_err(|x| err("cannot read", &from, x))?;
            let _ = std::os::unix::fs::symlink(target, &to);
        }
    }
    Ok(())
}

/// Copies a package into the shared cache: files read-only (0444, or 0555 when
/// executable), directories 0755; owned by whoever runs the launcher.
fn copy_tree_readonly(src: &Path, dst: &Path, bytes: &mut u64) -> Result<(), String> {
    fs::create_dir_all(dst).map_err(|e| err("cannot create", dst, e))?;
    for e in fs::read_dir(src)
        .map_err(|e| err("cannot read", src, e))?
        .flatten()
    {
        let (from, to) = (e.path(), dst.join(e.file_name()));
        let meta = fs::symlink_metadata(&from).map_err(|x| err("cannot stat", &from, x))?;
        if meta.is_dir() {
            copy_tree_readonly(&from, &to, bytes)?;
        } else if meta.is_file() {
            fs::copy(&from, &to).map_err(|x| err("cannot copy", &from, x))?;
            let mode = if meta.mode() & 0o111 != 0 {
                0o555
            } else {
                0o444
            };
            fs::set_permissions(&to, fs::Permissions::from_mode(mode))
                .map_err(|x| err("cannot set the mode of", &to, x))?;
            *bytes += meta.len();
        }
        // Symlinks inside a package are not carried into the shared cache.
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

/// Symlink targets under any `.terraform/providers` within `dir`, up to a few
/// levels deep.
fn find_provider_links(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if depth > 12 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(t) = e.file_type() else { continue };
        let p = e.path();
        if t.is_symlink() && p.components().any(|c| c.as_os_str() == ".terraform") {
            if let Ok(target) = fs::read_link(&p) {
                out.push(target);
            }
        } else if t.is_dir() {
            find_provider_links(&p, depth + 1, out);
        }
    }
}
