//! Host-side file operations on paths a job or an archive controls, done
//! relative to a root directory fd without ever leaving that root.
//!
//! The rule (docs/security.md, "Host-side operations on job-controlled
//! paths"): whatever liftoff does as root inside a workspace, a source
//! directory, a provider-cache layer or the shared cache resolves the path
//! beneath a root it opened itself, never through a symlink it did not mean
//! to follow, and reads only regular files, opened non-blocking, checked with
//! `fstat` and bounded in size.
//!
//! Order: [`Root::open`] (or [`Root::create`]) a directory the launcher
//! chose; then any of the `Root` methods with paths *relative* to it (`..`
//! and absolute paths are refused before any system call). Paths resolve
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, or with
//! `RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS` for [`Follow::InsideRoot`]
//! reads (a symlink is followed only while it stays inside the root). When
//! the kernel has no `openat2` (ENOSYS), a component-by-component walk from
//! the root fd with `O_NOFOLLOW` does the same: symlinks are read as text and
//! followed only while they stay inside. Calls that change a directory entry
//! (create, mkdir, remove, link, chown) never follow a symlink anywhere on the
//! path. [`as_identity`] runs a closure on its own thread with the job's
//! filesystem uid/gid, so a read done there cannot reach what the job could
//! not.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::sys::time::TimeSpec;

/// Symlinks followed in one resolution before giving up (as the kernel).
const MAX_HOPS: usize = 40;
/// Characters of a path shown in an error before it is cut.
const SHOWN_CHARS: usize = 200;

/// Whether a read may follow symlinks that stay inside the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Follow {
    /// No symlink anywhere on the path (`RESOLVE_NO_SYMLINKS`).
    Never,
    /// Symlinks are followed while every step stays inside the root
    /// (`RESOLVE_BENEATH`); an absolute one, or one climbing out, is refused.
    InsideRoot,
}

/// What kind of file a path names (from `lstat`, never following).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    /// FIFO, socket or device node.
    Special,
}

impl Kind {
    fn of(st: &FileStat) -> Kind {
        match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => Kind::File,
            SFlag::S_IFDIR => Kind::Dir,
            SFlag::S_IFLNK => Kind::Symlink,
            _ => Kind::Special,
        }
    }

    fn name(st: &FileStat) -> &'static str {
        match SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT {
            SFlag::S_IFREG => "a regular file",
            SFlag::S_IFDIR => "a directory",
            SFlag::S_IFLNK => "a symlink",
            SFlag::S_IFIFO => "a FIFO",
            SFlag::S_IFSOCK => "a socket",
            SFlag::S_IFCHR => "a character device",
            SFlag::S_IFBLK => "a block device",
            _ => "of an unknown type",
        }
    }
}

/// Why an operation beneath a root was refused or failed.
#[derive(Debug)]
pub enum Error {
    /// The path is absolute, empty where a name is needed, or has `..`.
    BadPath { path: String },
    /// Resolving the path would leave the root (an absolute symlink, or one
    /// climbing above it).
    Escapes { path: String },
    /// A symlink is on the path where none may be followed.
    Symlink { path: String },
    /// The path names something other than what the operation needs.
    WrongKind {
        path: String,
        wanted: &'static str,
        found: &'static str,
    },
    /// A file is over the size bound.
    TooLarge { path: String, size: u64, max: u64 },
    /// The path does not exist.
    NotFound { path: String },
    /// Any other system error.
    Io {
        op: &'static str,
        path: String,
        source: io::Error,
    },
}

impl Error {
    fn io(op: &'static str, path: &str, e: Errno) -> Error {
        match e {
            Errno::ENOENT => Error::NotFound { path: path.into() },
            Errno::EXDEV => Error::Escapes { path: path.into() },
            Errno::ELOOP => Error::Symlink { path: path.into() },
            e => Error::Io {
                op,
                path: path.into(),
                source: io::Error::from_raw_os_error(e as i32),
            },
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadPath { path } => write!(
                f,
                "{path:?} is absolute or has `..`: only plain relative paths are accepted here"
            ),
            Error::Escapes { path } => write!(
                f,
                "{path:?} resolves outside its directory (an absolute symlink or one climbing out): refused"
            ),
            Error::Symlink { path } => write!(
                f,
                "{path:?} is or passes through a symlink (or a symlink loop): refused, liftoff does not follow links here"
            ),
            Error::WrongKind {
                path,
                wanted,
                found,
            } => write!(f, "{path:?} is {found}, not {wanted}: refused"),
            Error::TooLarge { path, size, max } => {
                write!(f, "{path:?} has {size} bytes, over the limit of {max}")
            }
            Error::NotFound { path } => write!(f, "{path:?} does not exist"),
            Error::Io { op, path, source } => write!(f, "cannot {op} {path:?}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// A name or path cut to a printable length: the first 200 characters and
/// "…" (an archive may carry a name of megabytes).
pub fn shown(p: &Path) -> String {
    let s = p.to_string_lossy();
    match s.char_indices().nth(SHOWN_CHARS) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.into_owned(),
    }
}

/// 0: not probed, 1: openat2 works, 2: fall back to the walk.
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// Tests: force the `O_NOFOLLOW` walk (as on a kernel without `openat2`).
#[doc(hidden)]
pub fn force_walk(on: bool) {
    OPENAT2.store(if on { 2 } else { 0 }, Ordering::SeqCst);
}

/// The plain components of a relative path (`.` dropped); `..`, a root or
/// a prefix refuse it.
fn components(rel: &Path) -> Result<Vec<&OsStr>> {
    let mut out = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => {
                return Err(Error::BadPath { path: shown(rel) });
            }
        }
    }
    Ok(out)
}

fn join(parts: &[&OsStr]) -> PathBuf {
    if parts.is_empty() {
        return PathBuf::from(".");
    }
    parts.iter().collect()
}

/// A directory every operation stays beneath.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for Root {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Root {
    /// Opens a directory the launcher chose (its last component must not be
    /// a symlink).
    pub fn open(path: &Path) -> Result<Root> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| match e {
            // O_NOFOLLOW | O_DIRECTORY on a symlink: ENOTDIR (or ELOOP).
            Errno::ENOTDIR | Errno::ELOOP => match nix::sys::stat::lstat(path) {
                Ok(st) if Kind::of(&st) == Kind::Symlink => Error::Symlink { path: shown(path) },
                Ok(st) => Error::WrongKind {
                    path: shown(path),
                    wanted: "a directory",
                    found: Kind::name(&st),
                },
                Err(_) => Error::io("open the directory", &shown(path), e),
            },
            e => Error::io("open the directory", &shown(path), e),
        })?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// [`Root::open`], creating the directory (and its parents) first.
    pub fn create(path: &Path) -> Result<Root> {
        std::fs::create_dir_all(path).map_err(|e| Error::Io {
            op: "create the directory",
            path: shown(path),
            source: e,
        })?;
        Root::open(path)
    }

    /// The host path it was opened at (for messages).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves `parts` beneath the root with `flags`: openat2, or the walk.
    fn resolve(&self, parts: &[&OsStr], flags: OFlag, follow: Follow) -> Result<OwnedFd> {
        let rel = join(parts);
        let flags = flags | OFlag::O_CLOEXEC;
        if OPENAT2.load(Ordering::Relaxed) != 2 {
            let resolve = match follow {
                Follow::Never => ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS,
                Follow::InsideRoot => {
                    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS
                }
            };
            // Never O_CREAT here: openat2 wants mode 0 then.
            let how = OpenHow::new().flags(flags).resolve(resolve);
            match nix::fcntl::openat2(self.fd.as_fd(), &rel, how) {
                Ok(fd) => {
                    OPENAT2.store(1, Ordering::Relaxed);
                    return Ok(fd);
                }
                Err(Errno::ENOSYS) => OPENAT2.store(2, Ordering::Relaxed),
                Err(e) => return Err(Error::io("open", &shown(&rel), e)),
            }
        }
        self.walk(parts, flags, follow)
    }

    /// The fallback: one component at a time from the root fd, each opened
    /// with `O_NOFOLLOW`; a symlink is read as text and, when `follow`
    /// allows, its components replace it (absolute or above the root:
    /// refused).
    fn walk(&self, parts: &[&OsStr], flags: OFlag, follow: Follow) -> Result<OwnedFd> {
        let shown_rel = shown(&join(parts));
        let mut todo: VecDeque<OsString> = parts.iter().map(|p| p.to_os_string()).collect();
        let mut stack: Vec<OwnedFd> = Vec::new();
        let mut hops = 0;
        loop {
            let Some(name) = todo.pop_front() else {
                // The path resolved to a directory already open.
                let cur = stack.last().map_or(self.fd.as_fd(), |f| f.as_fd());
                return nix::fcntl::openat(cur, ".", flags, Mode::empty())
                    .map_err(|e| Error::io("open", &shown_rel, e));
            };
            if name == "." {
                continue;
            }
            if name == ".." {
                if stack.pop().is_none() {
                    return Err(Error::Escapes { path: shown_rel });
                }
                continue;
            }
            let cur = stack.last().map_or(self.fd.as_fd(), |f| f.as_fd());
            let st = nix::sys::stat::fstatat(cur, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
            if let Ok(st) = &st {
                if Kind::of(st) == Kind::Symlink {
                    if follow == Follow::Never {
                        return Err(Error::Symlink { path: shown_rel });
                    }
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(Error::Symlink { path: shown_rel });
                    }
                    let target = nix::fcntl::readlinkat(cur, name.as_os_str())
                        .map_err(|e| Error::io("read the link", &shown_rel, e))?;
                    let target = PathBuf::from(target);
                    if target.is_absolute() {
                        return Err(Error::Escapes { path: shown_rel });
                    }
                    for c in target.components().rev() {
                        todo.push_front(c.as_os_str().to_os_string());
                    }
                    continue;
                }
            }
            if todo.is_empty() {
                let last = flags | OFlag::O_NOFOLLOW;
                return nix::fcntl::openat(cur, name.as_os_str(), last, Mode::empty())
                    .map_err(|e| Error::io("open", &shown_rel, e));
            }
            let fd = nix::fcntl::openat(
                cur,
                name.as_os_str(),
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                // Swapped for a symlink between the stat and the open.
                Errno::ELOOP | Errno::ENOTDIR if follow == Follow::Never => Error::Symlink {
                    path: shown_rel.clone(),
                },
                e => Error::io("open", &shown_rel, e),
            })?;
            stack.push(fd);
        }
    }

    /// The directory holding `rel`'s last component (no symlink on the way)
    /// and that component's name.
    fn parent<'a>(&self, rel: &'a Path) -> Result<(OwnedFd, &'a OsStr)> {
        let parts = components(rel)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(Error::BadPath { path: shown(rel) });
        };
        let dir = self.resolve(dirs, OFlag::O_PATH | OFlag::O_DIRECTORY, Follow::Never)?;
        Ok((dir, name))
    }

    /// A directory beneath the root, as a root of its own.
    pub fn dir(&self, rel: &Path, follow: Follow) -> Result<Root> {
        let parts = components(rel)?;
        let fd = self
            .resolve(&parts, OFlag::O_RDONLY | OFlag::O_DIRECTORY, follow)
            .map_err(|e| wrong_kind(e, rel, "a directory"))?;
        Ok(Root {
            fd,
            path: self.path.join(rel),
        })
    }

    /// Opens a regular file for reading: non-blocking (a FIFO cannot hang
    /// the launcher), `fstat` must say regular, at most `max` bytes. Returns
    /// the file and its size.
    pub fn open_regular(&self, rel: &Path, follow: Follow, max: u64) -> Result<(File, u64)> {
        let parts = components(rel)?;
        if parts.is_empty() {
            return Err(Error::BadPath { path: shown(rel) });
        }
        let mut flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY;
        if follow == Follow::Never {
            flags |= OFlag::O_NOFOLLOW;
        }
        let fd = self.resolve(&parts, flags, follow)?;
        let st = regular(&fd, rel)?;
        let size = st.st_size as u64;
        if size > max {
            return Err(Error::TooLarge {
                path: shown(rel),
                size,
                max,
            });
        }
        Ok((File::from(fd), size))
    }

    /// Creates a new regular file (`O_EXCL`: never through an existing name)
    /// for writing.
    pub fn create_file(&self, rel: &Path, mode: u32) -> Result<File> {
        let (dir, name) = self.parent(rel)?;
        let fd = nix::fcntl::openat(
            &dir,
            name,
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(mode & 0o777),
        )
        .map_err(|e| Error::io("create", &shown(rel), e))?;
        Ok(File::from(fd))
    }

    /// Creates `rel` empty if missing, and sets its modification time to
    /// now. Only ever a regular file: never through a symlink, never a FIFO.
    pub fn touch(&self, rel: &Path) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        let fd = nix::fcntl::openat(
            &dir,
            name,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_NOFOLLOW
                | OFlag::O_NONBLOCK
                | OFlag::O_NOCTTY
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )
        .map_err(|e| Error::io("create", &shown(rel), e))?;
        regular(&fd, rel)?;
        nix::sys::stat::futimens(&fd, &TimeSpec::UTIME_NOW, &TimeSpec::UTIME_NOW)
            .map_err(|e| Error::io("touch", &shown(rel), e))
    }

    /// `lstat` of `rel`: `None` when it does not exist.
    pub fn stat(&self, rel: &Path) -> Result<Option<FileStat>> {
        let parts = components(rel)?;
        let Some((name, dirs)) = parts.split_last() else {
            return nix::sys::stat::fstat(&self.fd)
                .map(Some)
                .map_err(|e| Error::io("stat", &shown(rel), e));
        };
        let dir = match self.resolve(dirs, OFlag::O_PATH | OFlag::O_DIRECTORY, Follow::Never) {
            Ok(d) => d,
            Err(Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        match nix::sys::stat::fstatat(&dir, *name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(st)),
            Err(Errno::ENOENT) => Ok(None),
            Err(e) => Err(Error::io("stat", &shown(rel), e)),
        }
    }

    /// Does `rel`, its symlinks followed, stay beneath the root? `Ok` when
    /// it does; [`Error::Escapes`] when a link (or a chain of them) leads
    /// out; [`Error::NotFound`] or [`Error::Symlink`] (a loop) otherwise.
    pub fn resolves_inside(&self, rel: &Path) -> Result<()> {
        let parts = components(rel)?;
        self.resolve(&parts, OFlag::O_PATH, Follow::InsideRoot)
            .map(drop)
    }

    /// The kind of `rel` (`None`: missing), never following a symlink.
    pub fn kind(&self, rel: &Path) -> Result<Option<Kind>> {
        Ok(self.stat(rel)?.as_ref().map(Kind::of))
    }

    /// Creates the directory `rel` and every missing parent with `mode`,
    /// each created one given to `owner`; an existing symlink or file on the
    /// way is refused. Existing directories are left as they are.
    pub fn mkdir_all(&self, rel: &Path, mode: u32, owner: Option<(u32, u32)>) -> Result<()> {
        let parts = components(rel)?;
        let mut cur = self.fd.try_clone().map_err(|e| Error::Io {
            op: "duplicate the descriptor of",
            path: shown(&self.path),
            source: e,
        })?;
        for (i, name) in parts.iter().enumerate() {
            let so_far = || shown(&join(&parts[..=i]));
            match nix::sys::stat::mkdirat(&cur, *name, Mode::from_bits_truncate(mode & 0o7777)) {
                Ok(()) => {
                    if let Some((u, g)) = owner {
                        nix::unistd::fchownat(
                            &cur,
                            *name,
                            Some(u.into()),
                            Some(g.into()),
                            AtFlags::AT_SYMLINK_NOFOLLOW,
                        )
                        .map_err(|e| Error::io("give to the job", &so_far(), e))?;
                    }
                }
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(Error::io("create the directory", &so_far(), e)),
            }
            cur = nix::fcntl::openat(
                &cur,
                *name,
                OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| match e {
                Errno::ELOOP | Errno::ENOTDIR => {
                    let found = nix::sys::stat::fstatat(&cur, *name, AtFlags::AT_SYMLINK_NOFOLLOW)
                        .map_or("not a directory", |st| Kind::name(&st));
                    Error::WrongKind {
                        path: so_far(),
                        wanted: "a directory",
                        found,
                    }
                }
                e => Error::io("open the directory", &so_far(), e),
            })?;
        }
        Ok(())
    }

    /// Sets the mode of a regular file or directory (a symlink is refused).
    pub fn chmod(&self, rel: &Path, mode: u32) -> Result<()> {
        let parts = components(rel)?;
        let fd = self.resolve(
            &parts,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            Follow::Never,
        )?;
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777))
            .map_err(|e| Error::io("set the mode of", &shown(rel), e))
    }

    /// Gives `rel` itself (a symlink stays a symlink) to `owner`.
    pub fn chown(&self, rel: &Path, owner: (u32, u32)) -> Result<()> {
        let parts = components(rel)?;
        if parts.is_empty() {
            return std::os::unix::fs::fchown(&self.fd, Some(owner.0), Some(owner.1)).map_err(
                |e| Error::Io {
                    op: "give to the job",
                    path: shown(&self.path),
                    source: e,
                },
            );
        }
        let (dir, name) = self.parent(rel)?;
        nix::unistd::fchownat(
            &dir,
            name,
            Some(owner.0.into()),
            Some(owner.1.into()),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(|e| Error::io("give to the job", &shown(rel), e))
    }

    /// Removes a file, symlink or empty directory entry `rel`.
    pub fn remove(&self, rel: &Path) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        let how = match nix::sys::stat::fstatat(&dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if Kind::of(&st) == Kind::Dir => nix::unistd::UnlinkatFlags::RemoveDir,
            Ok(_) => nix::unistd::UnlinkatFlags::NoRemoveDir,
            Err(e) => return Err(Error::io("remove", &shown(rel), e)),
        };
        nix::unistd::unlinkat(&dir, name, how).map_err(|e| Error::io("remove", &shown(rel), e))
    }

    /// Creates the symlink `rel` with the text `target` (not checked here).
    pub fn symlink(&self, rel: &Path, target: &Path) -> Result<()> {
        let (dir, name) = self.parent(rel)?;
        nix::unistd::symlinkat(target, &dir, name)
            .map_err(|e| Error::io("create the symlink", &shown(rel), e))
    }

    /// Reads the text of the symlink `rel`.
    pub fn read_link(&self, rel: &Path) -> Result<PathBuf> {
        let (dir, name) = self.parent(rel)?;
        nix::fcntl::readlinkat(&dir, name)
            .map(PathBuf::from)
            .map_err(|e| Error::io("read the link", &shown(rel), e))
    }

    /// Hard-links the regular file `existing` at `new` (both beneath).
    pub fn hard_link(&self, existing: &Path, new: &Path) -> Result<()> {
        self.link_from(self, existing, new)
    }

    /// Hard-links the regular file `existing`, beneath `from` (another root
    /// or this one), at `new` beneath this root. Neither path passes
    /// through a symlink; `new` must not exist.
    pub fn link_from(&self, from: &Root, existing: &Path, new: &Path) -> Result<()> {
        let (from_dir, from_name) = from.parent(existing)?;
        match nix::sys::stat::fstatat(&from_dir, from_name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if Kind::of(&st) == Kind::File => {}
            Ok(st) => {
                return Err(Error::WrongKind {
                    path: shown(existing),
                    wanted: "a regular file",
                    found: Kind::name(&st),
                });
            }
            Err(e) => return Err(Error::io("stat", &shown(existing), e)),
        }
        let (to_dir, to) = self.parent(new)?;
        nix::unistd::linkat(&from_dir, from_name, &to_dir, to, AtFlags::empty()).map_err(|e| {
            match e {
                // From linkat, EXDEV says "another filesystem", not "escapes".
                Errno::EXDEV => Error::Io {
                    op: "create the hard link",
                    path: shown(new),
                    source: io::Error::from_raw_os_error(e as i32),
                },
                e => Error::io("create the hard link", &shown(new), e),
            }
        })
    }

    /// The names in the directory `rel` (no symlink on the way) with their
    /// kinds, unsorted.
    pub fn read_dir(&self, rel: &Path) -> Result<Vec<(OsString, Kind)>> {
        let dir = self.dir(rel, Follow::Never)?;
        // The directory is open already: listing it through its fd's
        // /proc link cannot be redirected.
        let listing = format!("/proc/self/fd/{}", dir.fd.as_raw_fd());
        let rd = std::fs::read_dir(&listing).map_err(|e| Error::Io {
            op: "list",
            path: shown(rel),
            source: e,
        })?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name();
            let st = nix::sys::stat::fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW);
            let Ok(st) = st else { continue };
            let kind = Kind::of(&st);
            out.push((name, kind));
        }
        Ok(out)
    }
}

/// An ENOTDIR from opening with `O_DIRECTORY` says what was found instead.
fn wrong_kind(e: Error, rel: &Path, wanted: &'static str) -> Error {
    match e {
        Error::Io { source, .. } if source.raw_os_error() == Some(libc::ENOTDIR) => {
            Error::WrongKind {
                path: shown(rel),
                wanted,
                found: "not a directory",
            }
        }
        e => e,
    }
}

/// The `fstat` of an opened `rel`, which must be a regular file (not a FIFO,
/// a socket or a device, whatever the name promised).
fn regular(fd: &OwnedFd, rel: &Path) -> Result<nix::sys::stat::FileStat> {
    let st = nix::sys::stat::fstat(fd).map_err(|e| Error::io("stat", &shown(rel), e))?;
    if Kind::of(&st) != Kind::File {
        return Err(Error::WrongKind {
            path: shown(rel),
            wanted: "a regular file",
            found: Kind::name(&st),
        });
    }
    Ok(st)
}

/// Runs `f` on a thread of its own whose filesystem uid and gid are the
/// job's (`owner`), so what it opens is checked against the job's rights,
/// not root's (`setfsuid`/`setfsgid` are per thread). `None`, or a launcher
/// that is not root: `f` runs here, as is. Files opened there stay usable
/// after it returns.
pub fn as_identity<T: Send, E: Send + From<Error>>(
    owner: Option<(u32, u32)>,
    f: impl FnOnce() -> std::result::Result<T, E> + Send,
) -> std::result::Result<T, E> {
    let Some((uid, gid)) = owner else {
        return f();
    };
    if !nix::unistd::geteuid().is_root() {
        return f();
    }
    let shown_ids = format!("the job's identity {uid}:{gid}");
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("liftoff-as-job".into())
            .spawn_scoped(s, move || {
                nix::unistd::setfsgid(gid.into());
                nix::unistd::setfsuid(uid.into());
                // Each call returns the previous value: a second one says
                // whether the first took.
                let (u, g) = (
                    nix::unistd::setfsuid(uid.into()),
                    nix::unistd::setfsgid(gid.into()),
                );
                if u.as_raw() != uid || g.as_raw() != gid {
                    return Err(E::from(Error::Io {
                        op: "switch the filesystem identity to",
                        path: format!("{uid}:{gid}"),
                        source: io::Error::from(io::ErrorKind::PermissionDenied),
                    }));
                }
                f()
            })
            .map_err(|e| {
                E::from(Error::Io {
                    op: "start a thread acting with",
                    path: shown_ids,
                    source: e,
                })
            })?;
        match worker.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// `p` resolved as text, the way a symlink's target is read inside a
/// root: `a/./b/../c` is `a/c`, a leading `/` and a `..` above the top are
/// dropped. Nothing is looked up on disk.
pub fn lexical(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_resolution_stays_at_the_top() {
        for (p, want) in [
            ("usr/bin", "usr/bin"),
            ("/usr/bin", "usr/bin"),
            ("./a/./b/../c", "a/c"),
            ("../../etc", "etc"),
            ("a/../../..", ""),
        ] {
            assert_eq!(lexical(Path::new(p)), PathBuf::from(want), "{p}");
        }
    }

    #[test]
    fn dotdot_and_absolute_paths_are_refused_before_any_call() {
        let d = tempfile::tempdir().unwrap();
        let r = Root::open(d.path()).unwrap();
        for p in ["../x", "/etc/passwd", "a/../../b"] {
            assert!(matches!(
                r.open_regular(Path::new(p), Follow::InsideRoot, 10),
                Err(Error::BadPath { .. })
            ));
        }
    }

    #[test]
    fn link_from_another_root_never_passes_a_symlink() {
        let d = tempfile::tempdir().unwrap();
        let (a, b, out) = (d.path().join("a"), d.path().join("b"), d.path().join("out"));
        for p in [&a, &b, &out] {
            std::fs::create_dir(p).unwrap();
        }
        std::fs::write(a.join("f"), "shared").unwrap();
        std::os::unix::fs::symlink(&out, b.join("link")).unwrap();
        std::os::unix::fs::symlink(a.join("f"), a.join("to-f")).unwrap();
        let (ra, rb) = (Root::open(&a).unwrap(), Root::open(&b).unwrap());
        rb.link_from(&ra, Path::new("f"), Path::new("f")).unwrap();
        assert_eq!(std::fs::read_to_string(b.join("f")).unwrap(), "shared");
        // Through a link on the new side: refused, nothing created outside.
        let e = rb
            .link_from(&ra, Path::new("f"), Path::new("link/f"))
            .unwrap_err();
        assert!(matches!(e, Error::Symlink { .. }), "{e:?}");
        assert!(std::fs::read_dir(&out).unwrap().next().is_none());
        // A link as the existing file: refused (only regular files).
        let e = rb
            .link_from(&ra, Path::new("to-f"), Path::new("g"))
            .unwrap_err();
        assert!(matches!(e, Error::WrongKind { .. }), "{e:?}");
    }

    #[test]
    fn open_names_a_symlinked_root() {
        let d = tempfile::tempdir().unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path(), &link).unwrap();
        let e = Root::open(&link).unwrap_err();
        assert!(matches!(e, Error::Symlink { .. }), "{e:?}");
        std::fs::write(d.path().join("file"), "").unwrap();
        let e = Root::open(&d.path().join("file")).unwrap_err();
        assert!(matches!(e, Error::WrongKind { .. }), "{e:?}");
    }

    #[test]
    fn long_names_are_cut_in_messages() {
        let long = "a".repeat(5000);
        let s = shown(Path::new(&long));
        assert_eq!(s.chars().count(), SHOWN_CHARS + 1);
        assert!(s.ends_with('…'));
    }
}
