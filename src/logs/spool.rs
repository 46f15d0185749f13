//! The spool: every chunk of masked run output is written here, under the
//! state directory, before any upload is tried, and removed once its sink has
//! it. What an earlier process left behind is uploaded at start-up.
//!
//! Layout: `<root>/<run id>/<seq>-<len>-<sha256>.chunk`, the body alone (so it
//! can be sent as it is, with its length). A chunk is written to a temporary
//! name, then renamed, so a `.chunk` file is always complete for a process
//! that was killed; its name carries the length and SHA-256, which are checked
//! when a leftover chunk is read back. Chunks are not fsynced (that cost 2x
//! the job's wall time in the end-to-end bench): the page cache survives a
//! killed launcher; a host crash may lose the last seconds, and a chunk the
//! crash damaged is detected by its SHA-256 and kept aside, not uploaded.
//!
//! A full disk does not lose the log: [`Spool::open`] preallocates reserve
//! files in the run's directory ([`RESERVES`]: one chunk and two small
//! ones, `fallocate`d so writing into them needs no free space). When a
//! chunk cannot be written for lack of space, it is written into the
//! smallest reserve that holds it instead (renamed to the chunk's name), and
//! [`Spool::disk_full`] turns true: the pipeline then stops the job and
//! writes its reason, which the remaining reserves hold.
//!
//! The spool is the launcher's alone (`<state dir>/spool`, mode 0700, names
//! it chose: a validated run id, sequence numbers and digests); no job can
//! reach it, so plain `std::fs` is used here.
//!
//! Call order: [`Spool::open`] (a run's directory), [`Spool::existing`] (chunks
//! already there), [`Spool::write`] for each new chunk, [`Spool::open_chunk`]
//! to read one back verified, [`Spool::remove`] once delivered,
//! [`Spool::release_reserves`] after the last write, [`Spool::close`] at the end (removes the directory when empty). At
//! start-up, [`runs`] lists the run directories an earlier process left.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// Sizes of the reserve files of a run's spool directory: room for one full
/// chunk, then for the reason line and the launcher's last line.
pub const RESERVES: [u64; 3] = [super::CHUNK_MAX as u64, 64 * 1024, 64 * 1024];

use aws_lc_rs::digest;

use super::error::LogError;

/// One chunk of masked output: its run, sequence number (from 0, no gaps),
/// length and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub run_id: String,
    pub seq: u64,
    pub len: u64,
    /// Always set for spooled chunks; for a direct sink (file, stdout) only
    /// when an `on_delivered` callback reads it, else zeros.
    pub sha256: [u8; 32],
}

impl Chunk {
    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    fn file_name(&self) -> String {
        format!("{:020}-{}-{}.chunk", self.seq, self.len, self.sha256_hex())
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `bytes`.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A run id usable as a directory name: 1 to 64 of `[A-Za-z0-9_-]`.
pub fn check_run_id(run_id: &str) -> Result<(), LogError> {
    if run_id.is_empty()
        || run_id.len() > 64
        || !run_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(LogError::Spool(format!(
            "run id {run_id:?} cannot name a spool directory: use 1 to 64 letters, digits, '-' or '_' (a ULID)"
        )));
    }
    Ok(())
}

/// One run's spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    run_id: String,
    /// Reserve files not used yet, with their sizes, smallest first.
    reserves: Mutex<Vec<(PathBuf, u64)>>,
    /// A chunk went into a reserve: the disk is full.
    disk_full: AtomicBool,
}

impl Spool {
    /// Opens (creating, mode 0700) `<root>/<run_id>` and preallocates its
    /// reserve files (as many as there is room for).
    pub fn open(root: &Path, run_id: &str) -> Result<Spool, LogError> {
        check_run_id(run_id)?;
        let dir = root.join(run_id);
        create_private_dir(root)?;
        create_private_dir(&dir)?;
        let mut reserves = Vec::new();
        for (i, &size) in RESERVES.iter().enumerate() {
            let path = dir.join(format!(".reserve-{i}"));
            if preallocate(&path, size).is_ok() {
                reserves.push((path, size));
            } else {
                let _ = fs::remove_file(&path);
            }
        }
        reserves.sort_by_key(|r| r.1);
        Ok(Spool {
            dir,
            run_id: run_id.to_string(),
            reserves: Mutex::new(reserves),
            disk_full: AtomicBool::new(false),
        })
    }

    /// True once a chunk had to go into a reserve file (the disk is full).
    pub fn disk_full(&self) -> bool {
        self.disk_full.load(Ordering::Relaxed)
    }

    /// Reserve files not used yet.
    pub fn reserves_left(&self) -> usize {
        self.reserves
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    /// The chunks already in the directory, in sequence order. A temporary
    /// file left by a crash mid-write is kept as a chunk of what reached the
    /// disk (masked bytes, never lost); a file whose name cannot be read is
    /// moved aside as `*.bad` with a warning in the returned list.
    pub fn existing(&self) -> Result<(Vec<Chunk>, Vec<String>), LogError> {
        let mut chunks = Vec::new();
        let mut warnings = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(|e| {
            LogError::Spool(format!(
                "cannot list the log spool {}: {e}; check the state directory's permissions",
                self.dir.display()
            ))
        })?;
        let mut temps = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(seq) = name.strip_prefix(".tmp-") {
                temps.push((seq.parse::<u64>().ok(), entry.path()));
                continue;
            }
            if !name.ends_with(".chunk") {
                continue;
            }
            match parse_name(&self.run_id, &name) {
                Some(c) => chunks.push(c),
                None => {
                    let aside = entry.path().with_extension("bad");
                    let _ = fs::rename(entry.path(), &aside);
                    warnings.push(format!(
                        "log spool file {} has an unexpected name; moved aside to {}",
                        entry.path().display(),
                        aside.display()
                    ));
                }
            }
        }
        for (seq, path) in temps {
            let Some(seq) = seq else {
                let _ = fs::remove_file(&path);
                continue;
            };
            if chunks.iter().any(|c| c.seq == seq) {
                let _ = fs::remove_file(&path);
                continue;
            }
            match fs::read(&path) {
                Ok(body) if !body.is_empty() => {
                    let chunk = self.write(seq, &body)?;
                    let _ = fs::remove_file(&path);
                    warnings.push(format!(
                        "log chunk {seq} of run {} was cut short by a crash; {} bytes kept",
                        self.run_id, chunk.len
                    ));
                    chunks.push(chunk);
                }
                _ => {
                    let _ = fs::remove_file(&path);
                }
            }
        }
        chunks.sort_by_key(|c| c.seq);
        Ok((chunks, warnings))
    }

    /// Writes one chunk (masked bytes only) durably and returns its record.
    pub fn write(&self, seq: u64, body: &[u8]) -> Result<Chunk, LogError> {
        let chunk = Chunk {
            run_id: self.run_id.clone(),
            seq,
            len: body.len() as u64,
            sha256: sha256(body),
        };
        let tmp = self.dir.join(format!(".tmp-{seq}"));
        let fail = |e: std::io::Error| {
            format!(
                "cannot write log chunk {seq} to the spool {}: {e}; free disk space or fix the state directory",
                self.dir.display()
            )
        };
        let written = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(body))
            .and_then(|()| fs::rename(&tmp, self.dir.join(chunk.file_name())));
        if written.is_ok() {
            crate::metrics::LAUNCHER
                .spool_bytes
                .add(body.len() as f64, true);
        }
        match written {
            Ok(()) => Ok(chunk),
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                let _ = fs::remove_file(&tmp);
                match self.write_reserved(&chunk, body) {
                    Ok(true) => Ok(chunk),
                    Ok(false) => Err(LogError::Spool(format!(
                        "{}; the log spool's reserve is used up",
                        fail(e)
                    ))),
                    Err(r) => Err(LogError::Spool(format!(
                        "{}; writing it into the reserve failed too: {r}",
                        fail(e)
                    ))),
                }
            }
            Err(e) => Err(LogError::Spool(fail(e))),
        }
    }

    /// Writes `body` into the smallest reserve file that holds it (its
    /// blocks are allocated already) and renames it to the chunk's name.
    /// False when no reserve is left that is large enough.
    fn write_reserved(&self, chunk: &Chunk, body: &[u8]) -> std::io::Result<bool> {
        let (path, _) = {
            let mut reserves = self.reserves.lock().unwrap_or_else(|p| p.into_inner());
            let Some(i) = reserves.iter().position(|r| r.1 >= body.len() as u64) else {
                return Ok(false);
            };
            reserves.remove(i)
        };
        self.disk_full.store(true, Ordering::Relaxed);
        let mut f = OpenOptions::new().write(true).open(&path)?;
        f.write_all(body)?;
        f.set_len(body.len() as u64)?;
        fs::rename(&path, self.dir.join(chunk.file_name()))?;
        Ok(true)
    }

    /// Opens a chunk for sending: checks its length and SHA-256 and returns
    /// the file positioned at its start.
    pub fn open_chunk(&self, chunk: &Chunk) -> Result<File, LogError> {
        let mut f = self.open_unchecked(chunk)?;
        let path = self.dir.join(chunk.file_name());
        let mut ctx = digest::Context::new(&digest::SHA256);
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = f.read(&mut buf).map_err(|e| {
                LogError::Spool(format!(
                    "cannot read spooled log chunk {}: {e}",
                    path.display()
                ))
            })?;
            if n == 0 {
                break;
            }
            ctx.update(&buf[..n]);
            total += n as u64;
        }
        if total != chunk.len || ctx.finish().as_ref() != chunk.sha256 {
            return Err(LogError::Spool(format!(
                "spooled log chunk {} is damaged (length or SHA-256 differ from its name); it is kept for inspection and not uploaded",
                path.display()
            )));
        }
        f.seek(SeekFrom::Start(0)).map_err(|e| {
            LogError::Spool(format!(
                "cannot read spooled log chunk {}: {e}",
                path.display()
            ))
        })?;
        Ok(f)
    }

    /// Opens a chunk this process wrote itself (no need to hash it again).
    pub fn open_unchecked(&self, chunk: &Chunk) -> Result<File, LogError> {
        let path = self.dir.join(chunk.file_name());
        File::open(&path).map_err(|e| {
            LogError::Spool(format!(
                "cannot open spooled log chunk {}: {e}",
                path.display()
            ))
        })
    }

    /// Removes a delivered chunk.
    pub fn remove(&self, chunk: &Chunk) {
        if fs::remove_file(self.dir.join(chunk.file_name())).is_ok() {
            crate::metrics::LAUNCHER
                .spool_bytes
                .add(-(chunk.len as f64), true);
        }
    }

    /// Removes the reserve files that were not used (no more chunks will be
    /// written).
    pub fn release_reserves(&self) {
        let mut reserves = self.reserves.lock().unwrap_or_else(|p| p.into_inner());
        for (path, _) in reserves.drain(..) {
            let _ = fs::remove_file(path);
        }
    }

    /// Removes the reserve files, and the run's directory if nothing else
    /// is left in it.
    pub fn close(self) {
        self.release_reserves();
        let _ = fs::remove_dir(&self.dir);
    }
}

/// Creates `path` with `size` bytes allocated on disk (`fallocate`), so that
/// writing into it later needs no free space.
fn preallocate(path: &Path, size: u64) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    let len = i64::try_from(size).map_err(std::io::Error::other)?;
    nix::fcntl::fallocate(&f, nix::fcntl::FallocateFlags::empty(), 0, len)?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), LogError> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) => Err(LogError::Spool(format!(
            "cannot create the log spool directory {}: {e}; check LIFTOFF_STATE_DIR and its permissions",
            dir.display()
        ))),
    }
}

fn parse_name(run_id: &str, name: &str) -> Option<Chunk> {
    let stem = name.strip_suffix(".chunk")?;
    let mut parts = stem.split('-');
    let seq = parts.next()?.parse().ok()?;
    let len = parts.next()?.parse().ok()?;
    let sha_hex = parts.next()?;
    if parts.next().is_some() || sha_hex.len() != 64 {
        return None;
    }
    let mut sha256 = [0u8; 32];
    for (i, b) in sha256.iter_mut().enumerate() {
        *b = u8::from_str_radix(sha_hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(Chunk {
        run_id: run_id.to_string(),
        seq,
        len,
        sha256,
    })
}

/// The run directories under `root` (what earlier processes left), sorted.
/// A missing root is an empty list.
pub fn runs(root: &Path) -> Result<Vec<String>, LogError> {
    let entries = match fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(LogError::Spool(format!(
                "cannot list the log spool {}: {e}; check the state directory's permissions",
                root.display()
            )));
        }
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| check_run_id(n).is_ok())
        .collect();
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_read_back_and_damage() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "01RUN").unwrap();
        let a = spool.write(0, b"hello").unwrap();
        let b = spool.write(1, b"world").unwrap();
        let (found, warnings) = spool.existing().unwrap();
        assert_eq!(found, vec![a.clone(), b.clone()]);
        assert!(warnings.is_empty());
        let mut s = String::new();
        spool
            .open_chunk(&a)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        assert_eq!(s, "hello");
        fs::write(spool.dir().join(b.file_name()), b"w0rld").unwrap();
        let e = spool.open_chunk(&b).unwrap_err();
        assert!(matches!(e, LogError::Spool(_)), "{e:?}");
        assert!(e.to_string().contains("damaged"));
        assert!(Spool::open(dir.path(), "../x").is_err());
    }

    #[test]
    fn reserves_are_preallocated_and_released() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "01RES").unwrap();
        assert_eq!(spool.reserves_left(), RESERVES.len());
        let reserve = spool.dir().join(".reserve-0");
        let m = fs::metadata(&reserve).unwrap();
        // Allocated on disk, not sparse.
        assert!(m.blocks() * 512 >= RESERVES[0], "{m:?}");
        assert!(!spool.disk_full());
        spool.write(0, b"x").unwrap();
        assert_eq!(
            spool.existing().unwrap().0.len(),
            1,
            "reserves are not chunks"
        );
        spool.release_reserves();
        assert!(!reserve.exists());
        spool.close();
    }

    #[test]
    fn crash_mid_write_keeps_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), "R").unwrap();
        fs::write(spool.dir().join(".tmp-3"), b"partial").unwrap();
        fs::write(spool.dir().join("junk.chunk"), b"x").unwrap();
        let (found, warnings) = spool.existing().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].seq, 3);
        assert_eq!(found[0].len, 7);
        assert_eq!(warnings.len(), 2);
        assert_eq!(runs(dir.path()).unwrap(), vec!["R".to_string()]);
    }
}
