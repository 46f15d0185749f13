//! The image cache: verified blobs by digest and one flattened, read-only
//! root per image, shared by every run on the host.
//!
//! Layout under the cache directory (`LIFTOFF_IMAGE_CACHE_DIR`, else
//! `<state dir>/images`, mode 0700):
//! - `blobs/sha256/<hex>`: a blob, renamed there only once its digest and
//!   size were checked;
//! - `roots/<hex>/{rootfs/,image.json,lock}`: an image by its config
//!   digest (the image id), renamed there from `tmp/` only once every layer
//!   was applied and the filesystem synced: a crash never leaves a
//!   half-unpacked root where a run looks;
//! - `refs/<sha256 of the reference>`: which image a reference names;
//! - `tmp/`: pulls under way (whatever is there when nothing pulls is a
//!   crash's leftover, removed by the next prune);
//! - `locks/`, `cache.lock`: flocks (below).
//!
//! Every name under the cache is liftoff's: a validated digest's hex or the
//! SHA-256 of a reference, so plain `std::fs` is used on them. The only
//! archive-controlled tree, `rootfs/`, is written by [`super::unpack`]
//! beneath its fd and otherwise only removed (`remove_dir_all` never follows
//! a link).
//!
//! Locks: a [`Lease`] holds a shared flock on its root's `lock` (its mtime
//! is the last use); removal takes it exclusively without waiting, so a
//! root in use is never removed. One pull per reference at a time
//! (`locks/<ref>`, exclusive: the others wait, then find the image). Pulls
//! and imports hold `cache.lock` shared; prune and rm hold it exclusively.
//!
//! Order: [`Store::ensure`] (cached, or pull then prune), [`Store::build`]
//! (for pulls and imports), [`Store::list`], [`Store::remove`],
//! [`Store::prune`] (`tmp/`, blobs no image uses, then least recently used
//! roots until the cache fits `LIFTOFF_IMAGE_CACHE_MAX_BYTES`).

use crate::metrics::launcher::IMAGE_CACHE;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::manifest::{self, MAX_DOC, Parsed};
use super::registry::Client;
use super::unpack::{self, Budget};
use super::{Error, Reference};
use crate::config::Config;

/// An image in use by a run: its root stays until this is dropped.
#[derive(Debug)]
pub struct Lease {
    root: PathBuf,
    id: String,
    _lock: Flock<File>,
}

impl Lease {
    /// The unpacked root directory, for `runner.root`.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The image id (config digest).
    pub fn id(&self) -> &str {
        &self.id
    }
}

/// One cached image for `liftoff image ls`.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub id: String,
    pub references: Vec<String>,
    pub size: u64,
    /// Seconds since the epoch.
    pub last_used: u64,
    pub in_use: bool,
}

#[derive(Serialize, Deserialize)]
struct RefFile {
    reference: String,
    id: String,
    #[serde(default)]
    manifest: String,
}

#[derive(Serialize, Deserialize, Default)]
struct ImageFile {
    layers: Vec<String>,
    size: u64,
}

/// The image cache.
#[derive(Debug, Clone)]
pub struct Store {
    pub dir: PathBuf,
    /// `LIFTOFF_IMAGE_MAX_BYTES`: one image's unpacked bound.
    pub max_image: u64,
    /// `LIFTOFF_IMAGE_CACHE_MAX_BYTES`.
    pub budget: u64,
    pub docker_config: Option<PathBuf>,
    /// When a pull must have ended (a run's timeout); `None`: no bound
    /// beyond each request's own.
    pub deadline: Option<std::time::Instant>,
    /// Set when the run is cancelled: the pull stops at its next request,
    /// blob read or layer (see [`super::registry::Client::cancel`]).
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

fn unique() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let t = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!(
        "{}-{t}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

impl Store {
    pub fn from_config(c: &Config) -> Store {
        Store {
            dir: c
                .image_cache_dir
                .clone()
                .unwrap_or_else(|| c.state_dir.join("images")),
            max_image: c.image_max_bytes,
            budget: c.image_cache_max_bytes,
            docker_config: c.docker_config_dir.clone(),
            deadline: None,
            cancel: None,
        }
    }

    fn err(&self, p: &Path, e: impl std::fmt::Display) -> Error {
        Error::Cache {
            path: p.display().to_string(),
            detail: e.to_string(),
        }
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex(digest))
    }

    fn root_dir(&self, id: &str) -> PathBuf {
        self.dir.join("roots").join(hex(id))
    }

    fn ref_file(&self, r: &str) -> PathBuf {
        self.dir
            .join("refs")
            .join(hex(&super::sha256(r.as_bytes())))
    }

    /// Creates the layout (the top directory 0700).
    pub fn open(&self) -> Result<(), Error> {
        for d in ["blobs/sha256", "roots", "refs", "tmp", "locks"] {
            let p = self.dir.join(d);
            fs::create_dir_all(&p).map_err(|e| self.err(&p, e))?;
        }
        fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
            .map_err(|e| self.err(&self.dir, e))
    }

    fn flock(&self, rel: &str, arg: FlockArg) -> Result<Option<Flock<File>>, Error> {
        let p = self.dir.join(rel);
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| self.err(&p, e))?;
        match Flock::lock(f, arg) {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, e)) => Err(self.err(&p, e)),
        }
    }

    /// Pulls and imports hold this shared; prune and rm exclusively.
    pub(crate) fn shared(&self) -> Result<Flock<File>, Error> {
        self.open()?;
        // A blocking flock never answers "would block"; if it ever did,
        // that is an error, not a panic.
        self.flock("cache.lock", FlockArg::LockShared)?
            .ok_or_else(|| self.err(&self.dir.join("cache.lock"), "cannot be locked"))
    }

    /// A lease on image `id` if it is cached.
    fn lease_id(&self, id: &str) -> Result<Option<Lease>, Error> {
        let dir = self.root_dir(id);
        let lock = dir.join("lock");
        let f = match File::open(&lock) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.err(&lock, e)),
        };
        let f = Flock::lock(f, FlockArg::LockShared).map_err(|(_, e)| self.err(&lock, e))?;
        // Removed while we waited: the lock is on a file no longer there.
        let same = match (fs::metadata(&lock), f.metadata()) {
            (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
            _ => false,
        };
        if !same {
            return Ok(None);
        }
        let _ = nix::sys::stat::futimens(
            &*f,
            &nix::sys::time::TimeSpec::UTIME_NOW,
            &nix::sys::time::TimeSpec::UTIME_NOW,
        );
        Ok(Some(Lease {
            root: dir.join("rootfs"),
            id: id.to_string(),
            _lock: f,
        }))
    }

    fn read_ref(&self, reference: &str) -> Option<RefFile> {
        let bytes = fs::read(self.ref_file(reference)).ok()?;
        serde_json::from_slice::<RefFile>(&bytes)
            .ok()
            .filter(|r| r.reference == reference && super::valid_digest(&r.id))
    }

    /// A lease on the image `reference` names, if it is cached.
    pub fn lease(&self, reference: &Reference) -> Result<Option<Lease>, Error> {
        match self.read_ref(&reference.to_string()) {
            Some(r) => self.lease_id(&r.id),
            None => Ok(None),
        }
    }

    fn write_ref(&self, reference: &str, id: &str, manifest: &str) -> Result<(), Error> {
        let body = serde_json::to_vec(&RefFile {
            reference: reference.into(),
            id: id.into(),
            manifest: manifest.into(),
        })
        .unwrap_or_default();
        let tmp = self.dir.join("tmp").join(format!("ref-{}", unique()));
        fs::write(&tmp, body).map_err(|e| self.err(&tmp, e))?;
        let dst = self.ref_file(reference);
        fs::rename(&tmp, &dst).map_err(|e| self.err(&dst, e))
    }

    /// The image `text` names: from the cache, else pulled (then the cache
    /// is pruned). `refresh` asks the registry what a tag names now even
    /// when it is cached. `log` is told what happens.
    pub fn ensure(
        &self,
        agent: &ureq::Agent,
        text: &str,
        refresh: bool,
        log: &mut dyn FnMut(&str),
    ) -> Result<Lease, Error> {
        let r = Reference::parse(text)?;
        let shown = r.to_string();
        self.open()?;
        if !refresh {
            if let Some(l) = self.lease(&r)? {
                IMAGE_CACHE.hits.inc();
                return Ok(l);
            }
        }
        let lease = {
            let _shared = self.shared()?;
            let lock = format!("locks/{}", hex(&super::sha256(shown.as_bytes())));
            let _one = self.flock(&lock, FlockArg::LockExclusive)?;
            match self.lease(&r)? {
                Some(l) if !refresh => {
                    log(&format!("image {shown}: pulled meanwhile by another run"));
                    IMAGE_CACHE.hits.inc();
                    l
                }
                _ => {
                    log(&format!("image {shown}: pulling"));
                    IMAGE_CACHE.misses.inc();
                    let started = std::time::Instant::now();
                    let l = self.pull(agent, &r, log)?;
                    log(&format!(
                        "image {shown}: ready as {} in {:.1}s",
                        l.id(),
                        started.elapsed().as_secs_f64()
                    ));
                    l
                }
            }
        };
        if let Err(e) = self.prune(self.budget, false) {
            log(&format!("image cache: prune failed: {e}"));
        }
        IMAGE_CACHE.size_bytes.set(self.usage() as f64);
        Ok(lease)
    }

    fn pull(
        &self,
        agent: &ureq::Agent,
        r: &Reference,
        log: &mut dyn FnMut(&str),
    ) -> Result<Lease, Error> {
        let shown = r.to_string();
        let malformed = |detail: String| Error::Malformed {
            image: shown.clone(),
            detail,
        };
        let mut client = Client::new(agent, r, self.docker_config.as_deref())?;
        client.deadline = self.deadline;
        client.cancel = self.cancel.clone();
        let (bytes, mut digest) = client.manifest(r.manifest_ref())?;
        let (config, layers) = match manifest::parse(&bytes)
            .map_err(|e| malformed(e.to_string()))?
        {
            Parsed::Image { config, layers } => (config, layers),
            Parsed::Index(entries) => {
                let e = manifest::pick(&entries).map_err(|(want, have)| Error::Platform {
                    image: shown.clone(),
                    want,
                    have,
                })?;
                let (b, d) = client.manifest(&e.digest)?;
                digest = d;
                match manifest::parse(&b).map_err(|e| malformed(e.to_string()))? {
                    Parsed::Image { config, layers } => (config, layers),
                    Parsed::Index(_) => return Err(malformed("an index inside an index".into())),
                }
            }
        };
        if let Some(l) = self.lease_id(&config.digest)? {
            self.write_ref(&shown, &config.digest, &digest)?;
            return Ok(l);
        }
        let mut fetch = |d: &manifest::Descriptor| -> Result<PathBuf, Error> {
            let path = self.blob(&d.digest);
            if path.is_file() {
                return Ok(path);
            }
            let tmp = self.dir.join("tmp").join(format!("blob-{}", unique()));
            let mut f = File::options()
                .create_new(true)
                .write(true)
                .open(&tmp)
                .map_err(|e| self.err(&tmp, e))?;
            let r = client.blob(&d.digest, d.size, &mut f);
            if r.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            r.map_err(|e| match e {
                Error::Cache { path, detail } => Error::Cache {
                    path: format!("{path} (pulling image {shown})"),
                    detail,
                },
                e => e,
            })?;
            fs::rename(&tmp, &path).map_err(|e| self.err(&path, e))?;
            Ok(path)
        };
        let config_blob = fetch(&config)?;
        let config_bytes = read_small(&config_blob).map_err(|e| self.err(&config_blob, e))?;
        let parsed = manifest::Config::parse(&config_bytes, layers.len())
            .map_err(|e| malformed(e.to_string()))?;
        let total: u64 = layers.iter().map(|l| l.size).sum();
        log(&format!(
            "image {shown}: manifest {digest}, {} layer(s), {total} bytes to fetch",
            layers.len()
        ));
        for l in &layers {
            fetch(l)?;
        }
        let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
        self.build(
            &shown,
            &config.digest,
            &digests,
            &parsed.rootfs.diff_ids,
            &[(shown.clone(), digest)],
        )
    }

    /// Stores a blob read from `from`; checks `expected` when given.
    /// Returns its digest.
    pub(crate) fn put_blob(
        &self,
        from: &mut dyn Read,
        expected: Option<&str>,
    ) -> Result<String, Error> {
        let tmp = self.dir.join("tmp").join(format!("blob-{}", unique()));
        let result = (|| {
            let mut f = File::options()
                .create_new(true)
                .write(true)
                .open(&tmp)
                .map_err(|e| self.err(&tmp, e))?;
            let mut h = super::Hasher::new();
            let mut buf = vec![0u8; 256 << 10];
            loop {
                let n = match from.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(self.err(&tmp, format!("reading the source: {e}"))),
                };
                h.update(&buf[..n]);
                std::io::Write::write_all(&mut f, &buf[..n]).map_err(|e| self.err(&tmp, e))?;
            }
            let d = h.finish();
            if let Some(want) = expected {
                if want != d {
                    return Err(Error::Digest {
                        image: "(import)".into(),
                        blob: format!("blob {want}"),
                        got: d,
                    });
                }
            }
            let dst = self.blob(&d);
            fs::rename(&tmp, &dst).map_err(|e| self.err(&dst, e))?;
            Ok(d)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Reads a stored blob (a config, a manifest) of at most 4 MiB.
    pub(crate) fn read_blob(&self, digest: &str) -> Option<Vec<u8>> {
        read_small(&self.blob(digest)).ok()
    }

    /// Unpacks the layers (stored blobs, lowest first, each checked
    /// against its diff_id) into the root of image `id` and names it
    /// `references` ((reference, manifest digest) pairs). Returns a lease.
    pub(crate) fn build(
        &self,
        image: &str,
        id: &str,
        layers: &[String],
        diff_ids: &[String],
        references: &[(String, String)],
    ) -> Result<Lease, Error> {
        let name = |lease: Lease| -> Result<Lease, Error> {
            for (r, m) in references {
                self.write_ref(r, id, m)?;
            }
            Ok(lease)
        };
        if let Some(l) = self.lease_id(id)? {
            return name(l);
        }
        let tmp = self.dir.join("tmp").join(format!("root-{}", unique()));
        let result = (|| {
            let rootfs = tmp.join("rootfs");
            fs::create_dir_all(&rootfs).map_err(|e| self.err(&rootfs, e))?;
            fs::set_permissions(&rootfs, fs::Permissions::from_mode(0o755))
                .map_err(|e| self.err(&rootfs, e))?;
            let lock_path = tmp.join("lock");
            let lock = File::create(&lock_path).map_err(|e| self.err(&lock_path, e))?;
            // Leased before it is visible: no prune can take it.
            let lock = Flock::lock(lock, FlockArg::LockShared)
                .map_err(|(_, e)| self.err(&lock_path, e))?;
            let root = crate::beneath::Root::open(&rootfs).map_err(|e| self.err(&rootfs, e))?;
            let mut budget = Budget::new(self.max_image);
            for (l, d) in layers.iter().zip(diff_ids) {
                if self
                    .cancel
                    .as_ref()
                    .is_some_and(|c| c.load(std::sync::atomic::Ordering::SeqCst))
                {
                    return Err(Error::Cancelled {
                        image: image.into(),
                    });
                }
                let blob = self.blob(l);
                let f = File::open(&blob).map_err(|e| self.err(&blob, e))?;
                unpack::apply(&root, f, d, &mut budget).map_err(|e| match e {
                    // A full disk is the cache's problem, not the layer's.
                    unpack::LayerError::NoSpace(detail) => Error::Cache {
                        path: format!("{} (unpacking image {image})", self.dir.display()),
                        detail: format!("layer {l}: {detail}"),
                    },
                    unpack::LayerError::Bad(detail) => Error::Layer {
                        image: image.into(),
                        layer: l.clone(),
                        detail,
                    },
                })?;
            }
            let meta = ImageFile {
                layers: layers.to_vec(),
                size: budget.written,
            };
            let meta_path = tmp.join("image.json");
            fs::write(&meta_path, serde_json::to_vec(&meta).unwrap_or_default())
                .map_err(|e| self.err(&meta_path, e))?;
            nix::unistd::syncfs(&*lock).map_err(|e| self.err(&tmp, e))?;
            let dst = self.root_dir(id);
            match fs::rename(&tmp, &dst) {
                Ok(()) => Ok(Some(Lease {
                    root: dst.join("rootfs"),
                    id: id.to_string(),
                    _lock: lock,
                })),
                // Built meanwhile under another name: use that one.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
                    Ok(None)
                }
                Err(e) => Err(self.err(&dst, e)),
            }
        })();
        match result {
            Ok(Some(l)) => name(l),
            other => {
                let _ = remove_tree(&tmp);
                other?;
                match self.lease_id(id)? {
                    Some(l) => name(l),
                    None => Err(self.err(&self.root_dir(id), "removed while being built")),
                }
            }
        }
    }

    /// Every cached image.
    pub fn list(&self) -> Result<Vec<Entry>, Error> {
        let mut refs: Vec<RefFile> = Vec::new();
        if let Ok(rd) = fs::read_dir(self.dir.join("refs")) {
            for e in rd.flatten() {
                if let Some(r) = fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                {
                    refs.push(r);
                }
            }
        }
        let mut out = Vec::new();
        let Ok(rd) = fs::read_dir(self.dir.join("roots")) else {
            return Ok(out);
        };
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = format!("sha256:{name}");
            let meta: ImageFile = fs::read(e.path().join("image.json"))
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
                .unwrap_or_default();
            let lock = e.path().join("lock");
            let last_used = fs::metadata(&lock)
                .map(|m| m.mtime().max(0) as u64)
                .unwrap_or(0);
            let in_use = match File::open(&lock) {
                Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock).is_err(),
                Err(_) => false,
            };
            let mut references: Vec<String> = refs
                .iter()
                .filter(|r| r.id == id)
                .map(|r| r.reference.clone())
                .collect();
            references.sort();
            out.push(Entry {
                id,
                references,
                size: meta.size,
                last_used,
                in_use,
            });
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.last_used));
        Ok(out)
    }

    /// Bytes the cache holds: roots as unpacked plus stored blobs.
    pub fn usage(&self) -> u64 {
        let roots: u64 = self
            .list()
            .map(|l| l.iter().map(|e| e.size).sum())
            .unwrap_or(0);
        roots + self.blob_sizes().iter().map(|(_, s)| s).sum::<u64>()
    }

    fn blob_sizes(&self) -> Vec<(String, u64)> {
        fs::read_dir(self.dir.join("blobs/sha256"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|e| {
                        let size = e.metadata().ok()?.len();
                        Some((format!("sha256:{}", e.file_name().to_string_lossy()), size))
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Removes the name `text`, and its image when no other name is left.
    pub fn remove(&self, text: &str) -> Result<(), Error> {
        let r = Reference::parse(text)?;
        let shown = r.to_string();
        self.open()?;
        let _all = self.flock("cache.lock", FlockArg::LockExclusive)?;
        let Some(rf) = self.read_ref(&shown) else {
            return Err(Error::NotCached { reference: shown });
        };
        let others = self
            .list()?
            .into_iter()
            .find(|e| e.id == rf.id)
            .is_some_and(|e| e.references.len() > 1);
        if !others && !self.remove_root(&rf.id)? {
            return Err(Error::InUse { reference: shown });
        }
        let p = self.ref_file(&shown);
        fs::remove_file(&p).map_err(|e| self.err(&p, e))?;
        self.drop_unused_blobs();
        Ok(())
    }

    /// Removes image `id` unless a run uses it (`false` then).
    fn remove_root(&self, id: &str) -> Result<bool, Error> {
        let dir = self.root_dir(id);
        let lock = match File::open(dir.join("lock")) {
            Ok(f) => f,
            Err(_) => return Ok(true),
        };
        let Ok(_held) = Flock::lock(lock, FlockArg::LockExclusiveNonblock) else {
            return Ok(false);
        };
        let gone = self.dir.join("tmp").join(format!("gone-{}", unique()));
        fs::rename(&dir, &gone).map_err(|e| self.err(&dir, e))?;
        remove_tree(&gone).map_err(|e| self.err(&gone, e))?;
        Ok(true)
    }

    /// Removes blobs that no cached image lists.
    fn drop_unused_blobs(&self) -> u64 {
        let mut used = std::collections::HashSet::new();
        if let Ok(rd) = fs::read_dir(self.dir.join("roots")) {
            for e in rd.flatten() {
                let meta: ImageFile = fs::read(e.path().join("image.json"))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                used.extend(meta.layers);
                used.insert(format!("sha256:{}", e.file_name().to_string_lossy()));
            }
        }
        let mut freed = 0;
        for (d, size) in self.blob_sizes() {
            if !used.contains(&d) && fs::remove_file(self.blob(&d)).is_ok() {
                freed += size;
            }
        }
        freed
    }

    /// Prunes the cache to `budget` bytes: `tmp/` leftovers, blobs no
    /// image uses, then least recently used images no run uses (and their
    /// names). `wait`: wait for pulls under way (else skip when there are).
    /// Returns the bytes freed.
    pub fn prune(&self, budget: u64, wait: bool) -> Result<u64, Error> {
        self.open()?;
        let arg = if wait {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let Some(_all) = self.flock("cache.lock", arg)? else {
            return Ok(0);
        };
        let tmp = self.dir.join("tmp");
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let _ = remove_tree(&e.path());
            }
        }
        let mut freed = self.drop_unused_blobs();
        let mut used = self.usage();
        let mut images = self.list()?;
        images.sort_by_key(|e| e.last_used);
        for e in images {
            if used <= budget {
                break;
            }
            if e.in_use || !self.remove_root(&e.id)? {
                continue;
            }
            for r in &e.references {
                let _ = fs::remove_file(self.ref_file(r));
            }
            let blobs = self.drop_unused_blobs();
            freed += e.size + blobs;
            used = used.saturating_sub(e.size + blobs);
        }
        // Names of images gone.
        if let Ok(rd) = fs::read_dir(self.dir.join("refs")) {
            for e in rd.flatten() {
                let rf: Option<RefFile> = fs::read(e.path())
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                if rf.is_none_or(|r| !self.root_dir(&r.id).exists()) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        Ok(freed)
    }
}

fn read_small(p: &Path) -> std::io::Result<Vec<u8>> {
    let f = File::open(p)?;
    let mut out = Vec::new();
    f.take(MAX_DOC + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_DOC {
        return Err(std::io::Error::other(format!("over {MAX_DOC} bytes")));
    }
    Ok(out)
}

/// Removes a directory tree the cache made (never following symlinks).
fn remove_tree(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}
