//! The verified-tool cache: one directory per tool, version and platform,
//! `<root>/<tool>/<version>/<os>_<arch>/` holding `bin/<binary>` (for
//! OpenTofu also `bin/terraform`, a link to `tofu`, for runs written for
//! Terraform) and an `.in-use` file, shared by every run of this host.
//!
//! Call order: [`Cache::open`]; per run [`Cache::lease`] (a shared `flock`
//! on `.in-use`, held until the run ends, and its mtime touched: that is
//! the least-recently-used clock). When the version is missing,
//! [`Cache::install_lock`] (one exclusive lock per tool/version/platform, so
//! concurrent runs download once), [`Cache::lease`] again (another run may
//! have installed it meanwhile), then [`Cache::install`]: written under a
//! temporary name in the root, then renamed into place (atomic: a reader
//! sees all of it or nothing). [`Cache::prune`] removes the least recently
//! used versions over the budget, skipping any that a run holds; removal
//! renames a version away while holding its exclusive lock, so a lease
//! that raced it finds nothing and installs again.

use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};

use super::source::Bound;
use super::version::Version;
use super::{Problem, ToolName};

/// This host's platform as the vendors name it (`linux_amd64`).
pub fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "arm" => "arm",
        other => other,
    };
    format!("{}_{arch}", std::env::consts::OS)
}

/// A cached version a run is using: the directory to put on PATH. The
/// version stays in the cache while this lives.
#[derive(Debug)]
pub struct Lease {
    pub bin_dir: PathBuf,
    pub binary: PathBuf,
    pub version: Version,
    _lock: Flock<File>,
}

/// One cached version, for `liftoff tool ls`.
#[derive(Debug, Clone)]
pub struct Installed {
    pub tool: String,
    pub version: String,
    pub platform: String,
    pub bytes: u64,
    pub last_used: SystemTime,
    pub in_use: bool,
    dir: PathBuf,
}

pub struct Cache {
    root: PathBuf,
    max_bytes: u64,
}

fn err(what: &str, p: &Path, e: impl std::fmt::Display) -> String {
    format!(
        "tool cache: cannot {what} {}: {e}; LIFTOFF_TOOLS_CACHE_DIR must be a writable directory",
        p.display()
    )
}

impl Cache {
    /// Nothing is created until the first install.
    pub fn open(root: &Path, max_bytes: u64) -> Result<Cache, String> {
        Ok(Cache {
            root: root.to_path_buf(),
            max_bytes,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, tool: ToolName, v: &Version) -> PathBuf {
        self.root
            .join(tool.name())
            .join(v.to_string())
            .join(platform())
    }

    /// The cached version, leased; `None` when it is not installed.
    pub fn lease(&self, tool: ToolName, v: &Version) -> Option<Lease> {
        let dir = self.dir(tool, v);
        let f = File::open(dir.join(".in-use")).ok()?;
        let lock = Flock::lock(f, FlockArg::LockShared).ok()?;
        // Removed while we waited: it is gone (renamed away).
        let binary = dir.join("bin").join(tool.binary());
        if !binary.is_file() {
            return None;
        }
        let _ = lock.set_modified(SystemTime::now());
        Some(Lease {
            bin_dir: dir.join("bin"),
            binary,
            version: v.clone(),
            _lock: lock,
        })
    }

    /// The versions of `tool` in the cache.
    pub fn versions(&self, tool: ToolName) -> Vec<Version> {
        let mut out: Vec<Version> = fs::read_dir(self.root.join(tool.name()))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| Version::parse(&e.file_name().to_string_lossy()).ok())
            .filter(|v| self.dir(tool, v).join(".in-use").is_file())
            .collect();
        out.sort();
        out
    }

    /// The exclusive lock under which one version is downloaded and
    /// installed: waits while another run holds it, until `bound` ends
    /// (checked every 50 ms).
    pub fn install_lock(
        &self,
        tool: ToolName,
        v: &Version,
        bound: &Bound,
    ) -> Result<Flock<File>, Problem> {
        let locks = self.root.join(".locks");
        fs::create_dir_all(&locks).map_err(|e| Problem::Cache(err("create", &locks, e)))?;
        let _ = fs::set_permissions(&self.root, fs::Permissions::from_mode(0o755));
        let path =
            self.root
                .join(".locks")
                .join(format!("{}-{v}-{}.lock", tool.name(), platform()));
        let mut f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| Problem::Cache(err("open", &path, e)))?;
        loop {
            match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(lock) => return Ok(lock),
                Err((back, nix::errno::Errno::EWOULDBLOCK)) => f = back,
                Err((_, e)) => return Err(Problem::Cache(err("lock", &path, e))),
            }
            bound.left().map_err(Problem::Source)?;
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Installs a verified binary atomically and leases it.
    pub fn install(&self, tool: ToolName, v: &Version, binary: &[u8]) -> Result<Lease, String> {
        let dest = self.dir(tool, v);
        let parent = dest.parent().unwrap_or(&self.root);
        fs::create_dir_all(parent).map_err(|e| err("create", parent, e))?;
        for d in [self.root.join(tool.name()), parent.to_path_buf()] {
            let _ = fs::set_permissions(&d, fs::Permissions::from_mode(0o755));
        }
        let tmp = self
            .root
            .join(format!(".tmp-{}-{}-{}", tool.name(), v, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let write = || -> std::io::Result<()> {
            fs::create_dir_all(tmp.join("bin"))?;
            let path = tmp.join("bin").join(tool.binary());
            let mut f = fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .mode(0o755)
                .open(&path)?;
            f.write_all(binary)?;
            f.set_permissions(fs::Permissions::from_mode(0o755))?;
            f.sync_all()?;
            if tool == ToolName::OpenTofu {
                // Runs written for Terraform call `terraform`.
                std::os::unix::fs::symlink(tool.binary(), tmp.join("bin").join("terraform"))?;
            }
            File::create(tmp.join(".in-use"))?.sync_all()?;
            for d in [tmp.clone(), tmp.join("bin")] {
                fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        };
        use std::os::unix::fs::OpenOptionsExt;
        if let Err(e) = write() {
            let _ = fs::remove_dir_all(&tmp);
            return Err(err("write", &tmp, e));
        }
        if dest.exists() {
            // A damaged leftover (no .in-use or no binary): replace it.
            let _ = fs::remove_dir_all(&dest);
        }
        fs::rename(&tmp, &dest).map_err(|e| {
            let _ = fs::remove_dir_all(&tmp);
            err("install", &dest, e)
        })?;
        self.lease(tool, v)
            .ok_or_else(|| err("lease", &dest, "it vanished right after install"))
    }

    /// Every cached version.
    pub fn list(&self) -> Vec<Installed> {
        let mut out = Vec::new();
        for tool in [ToolName::OpenTofu, ToolName::Terraform] {
            for v in self.versions(tool) {
                let dir = self.dir(tool, &v);
                let marker = dir.join(".in-use");
                let last_used = fs::metadata(&marker)
                    .and_then(|m| m.modified())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                let in_use = File::open(&marker)
                    .ok()
                    .map(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err())
                    .unwrap_or(false);
                out.push(Installed {
                    tool: tool.name().into(),
                    version: v.to_string(),
                    platform: platform(),
                    bytes: size(&dir),
                    last_used,
                    in_use,
                    dir,
                });
            }
        }
        out
    }

    /// Removes one cached version; `Ok(false)` when it was not cached, an
    /// error when a run is using it.
    pub fn remove(&self, tool: ToolName, v: &Version) -> Result<bool, String> {
        let dir = self.dir(tool, v);
        if !dir.exists() {
            return Ok(false);
        }
        self.remove_dir(&dir)?;
        Ok(true)
    }

    fn remove_dir(&self, dir: &Path) -> Result<(), String> {
        let marker = dir.join(".in-use");
        let lock = match File::open(&marker) {
            Ok(f) => Some(
                Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|_| {
                    format!(
                        "{} is in use by a run: it is removed when no run uses it (try again later)",
                        dir.display()
                    )
                })?,
            ),
            Err(_) => None,
        };
        let trash = self.root.join(format!(
            ".trash-{}-{}",
            std::process::id(),
            SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        fs::rename(dir, &trash).map_err(|e| err("remove", dir, e))?;
        drop(lock);
        fs::remove_dir_all(&trash).map_err(|e| err("remove", &trash, e))
    }

    /// Removes least-recently-used versions until the cache fits its
    /// budget; versions in use are kept. Returns what was removed.
    pub fn prune(&self) -> Vec<String> {
        let mut all = self.list();
        let mut total: u64 = all.iter().map(|i| i.bytes).sum();
        all.sort_by_key(|i| i.last_used);
        let mut removed = Vec::new();
        for i in all {
            if total <= self.max_bytes {
                break;
            }
            if i.in_use {
                continue;
            }
            if self.remove_dir(&i.dir).is_ok() {
                total = total.saturating_sub(i.bytes);
                removed.push(format!("{} {}", i.tool, i.version));
            }
        }
        crate::metrics::launcher::TOOL_CACHE
            .size_bytes
            .set(total as f64);
        removed
    }
}

/// Bytes of the regular files under `dir`.
fn size(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}
