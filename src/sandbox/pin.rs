//! The ready-made job root: the read-only part of a job's root (the host's
//! /usr and friends, /etc, /dev's device nodes, every mount point) made
//! once in a mount namespace of its own and kept ("pinned", as `ip netns`
//! keeps network namespaces) at `/run/liftoff/roots/KEY/mnt`. A job's clone
//! copies that namespace instead of the host's, so the job only mounts what
//! is its own ([`mounts::job_plan`]): no root tmpfs, /etc, device binds,
//! pivot_root or detach of the old root at each start.
//!
//! Order, in the launcher ([`super::spawn`]), root only:
//! 1. [`ready_root`]: the key of the spec's root ([`mounts::root_key`]:
//!    host files stat'ed, not read); a pinned namespace of that key is
//!    opened, else built ([`build`]: a clone into a new mount and pid
//!    namespace runs [`mounts::root_plan`] and waits; its namespace is bound
//!    at the pin, the builder ends), and the oldest pins beyond
//!    [`MAX_PINS`] are released ([`evict`]);
//! 2. [`Entered::enter`] right before the job's clone: this thread's
//!    filesystem context made its own (once), then `setns` into the ready
//!    root, so the clone's new mount namespace is a copy of it;
//! 3. [`Entered::leave`] right after: back to the launcher's namespace, its
//!    root and working directory.
//!
//! The copy belongs to the job's user namespace: every mount in it is
//! locked (cannot be unmounted or made writable from inside), as the
//! read-only root was before. A changed host file (resolv.conf, the loader
//! cache, the CA bundle) changes the key, so the next job gets a new root;
//! releasing a pin never touches running jobs (theirs are copies).
//! Anything that goes wrong here falls back to the whole plan
//! ([`mounts::plan`]), which reports errors in the spec properly.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::mounts::{self, Op};
use super::{Error, SandboxSpec, pipes};

/// Where the pins are (root's runtime directory: gone at reboot).
pub const PIN_DIR: &str = "/run/liftoff/roots";
/// Pins kept: more distinct roots than this at once (mounts, hostnames, CA
/// bundles) release the oldest.
pub const MAX_PINS: usize = 16;
/// Bumped when the layout of the ready-made root changes, so a launcher
/// never uses a root an older one pinned.
const LAYOUT: u32 = 1;
const NSFS_MAGIC: i64 = 0x6e73_6673;
/// How long the builder may take (host mounts that hang, e.g. NFS).
const BUILD_TIMEOUT_MS: i32 = 30_000;

/// How [`ready_root`] got its root (for `LIFTOFF_EXEC_TIMINGS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Pinned,
    Built,
}

/// The mount namespace of the ready-made root for `spec`, pinned or built
/// now; `None` when this launcher cannot have one (not root, an image
/// root, no open_tree) or anything about it failed: the caller then makes
/// the whole root in the job's namespace.
pub(crate) fn ready_root(spec: &SandboxSpec) -> Option<(OwnedFd, Source)> {
    let key = mounts::root_key(spec).ok()?;
    let dir = Path::new(PIN_DIR).join(format!("{LAYOUT}-{key:016x}"));
    if let Some(ns) = open_pinned(&dir) {
        return Some((ns, Source::Pinned));
    }
    // A root that cannot be kept would be built at every start: slower
    // than making it in the job's namespace.
    pin_dir()?;
    let ns = build(spec, &dir).ok()?;
    Some((ns, Source::Built))
}

fn cs(p: &Path) -> Option<CString> {
    CString::new(p.as_os_str().as_bytes()).ok()
}

/// The namespace pinned in `dir`, if one is (a half-made pin is not).
fn open_pinned(dir: &Path) -> Option<OwnedFd> {
    let path = cs(&dir.join("mnt"))?;
    // SAFETY: open of a valid C string path; the result is checked.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    is_namespace(&fd).then_some(fd)
}

fn is_namespace(fd: &OwnedFd) -> bool {
    // SAFETY: fstatfs of a valid fd into a zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let r = unsafe { libc::fstatfs(fd.as_raw_fd(), &mut st) };
    r == 0 && st.f_type as i64 == NSFS_MAGIC
}

/// Makes the ready-made root in a new mount (and pid) namespace, pins it at
/// `dir` when it can, and returns the namespace.
fn build(spec: &SandboxSpec, dir: &Path) -> Result<OwnedFd, Error> {
    let ops = mounts::root_plan(spec)?;
    let (res_r, res_w) = pipes::pipe()?;
    let (hold_r, hold_w) = pipes::pipe()?;
    // SAFETY: a fork-like clone (no CLONE_VM): the child runs `builder`,
    // which only makes system calls on `ops` and never returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWNS | libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: the builder's copies of the launcher's ends: closed, so
        // the launcher closing its own is seen.
        unsafe {
            libc::close(res_r.as_raw_fd());
            libc::close(hold_w.as_raw_fd());
        }
        builder(&ops, res_w.as_raw_fd(), hold_r.as_raw_fd());
    }
    if pid < 0 {
        return Err(Error::os(
            "clone the ready-made root's builder",
            std::io::Error::last_os_error(),
        ));
    }
    let pid = pid as libc::pid_t;
    drop(res_w);
    drop(hold_r);
    let result = built(pid, &ops, res_r).and_then(|()| {
        let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))
            .map_err(|e| Error::new(format!("open the ready-made root's namespace: {e}")))?;
        Ok(OwnedFd::from(ns))
    });
    // The builder ends when its end of the hold pipe closes.
    drop(hold_w);
    let mut st = 0;
    // SAFETY: reap our own child.
    unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
    let ns = result?;
    pin(&ns, dir);
    Ok(ns)
}

/// The builder's word: EOF when the root is made, else the failed op and
/// errno (8 bytes), which become an error.
fn built(pid: libc::pid_t, ops: &[(Op, String)], res_r: OwnedFd) -> Result<(), Error> {
    let mut buf = [0u8; 8];
    // A builder stuck on a host mount must not hang the launcher.
    match pipes::read_within(res_r.as_raw_fd(), &mut buf, BUILD_TIMEOUT_MS) {
        Ok(0) => Ok(()),
        Ok(8) => {
            let i = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
            let what = ops.get(i).map(|(_, w)| w.as_str()).unwrap_or("?");
            Err(Error::new(format!(
                "ready-made root: {what}: {}",
                std::io::Error::from_raw_os_error(errno)
            )))
        }
        Ok(_) => Err(Error::new(format!(
            "the ready-made root's builder (pid {pid}) ended early"
        ))),
        Err(pipes::Short::TimedOut) => {
            // SAFETY: kill our own child (reaped by the caller).
            unsafe { libc::kill(pid, libc::SIGKILL) };
            Err(Error::new(format!(
                "the ready-made root's builder (pid {pid}) did not finish within {} s",
                BUILD_TIMEOUT_MS / 1000
            )))
        }
        Err(pipes::Short::Failed(e)) => Err(Error::os("read the ready-made root's builder", e)),
    }
}

/// The builder: pid 1 of its own pid namespace (whose /proc the root
/// keeps), root in its own mount namespace. Runs the plan, says so, then
/// waits until the launcher has the namespace.
fn builder(ops: &[(Op, String)], res_w: i32, hold_r: i32) -> ! {
    for (i, (op, _)) in ops.iter().enumerate() {
        if let Err(errno) = op.run() {
            let mut b = [0u8; 8];
            b[..4].copy_from_slice(&(i as u32).to_ne_bytes());
            b[4..].copy_from_slice(&errno.to_ne_bytes());
            // SAFETY: a write from a stack buffer, then _exit.
            unsafe {
                libc::write(res_w, b.as_ptr() as *const libc::c_void, b.len());
                libc::_exit(1);
            }
        }
    }
    let mut b = [0u8; 1];
    // SAFETY: EOF to the launcher (the root is made), then block until it
    // closes the hold pipe (or dies), then _exit.
    unsafe {
        libc::close(res_w);
        while libc::read(hold_r, b.as_mut_ptr() as *mut libc::c_void, 1) < 0 {}
        libc::_exit(0);
    }
}

/// Pins `ns` at `dir` (best effort: a launcher that cannot pin builds again
/// next time). Published by a rename, so a pin is whole or absent.
fn pin(ns: &OwnedFd, dir: &Path) {
    let tmp = dir.with_extension(format!("tmp{}", std::process::id()));
    release(&tmp);
    if std::fs::create_dir(&tmp).is_err() {
        return;
    }
    let file = tmp.join("mnt");
    let made = std::fs::File::create(&file).is_ok()
        && bind(
            &PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd())),
            &file,
        );
    if made {
        if std::fs::rename(&tmp, dir).is_ok() {
            evict(dir);
            return;
        }
        // A dead pin of the same key (its namespace went with the mount
        // namespace of an earlier launcher, as a restarted service's does)
        // is replaced; a live one (another launcher was first) is kept.
        if open_pinned(dir).is_none() {
            release(dir);
            if std::fs::rename(&tmp, dir).is_ok() {
                evict(dir);
                return;
            }
        }
    }
    release(&tmp);
}

fn bind(src: &Path, dst: &Path) -> bool {
    let (Some(s), Some(d)) = (cs(src), cs(dst)) else {
        return false;
    };
    // SAFETY: a bind mount of two valid C string paths.
    unsafe {
        libc::mount(
            s.as_ptr(),
            d.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) == 0
    }
}

/// [`PIN_DIR`], made (0700) and a private mount of its own (as `ip netns`
/// does), so pins do not propagate to other mount namespaces.
fn pin_dir() -> Option<()> {
    use std::os::unix::fs::DirBuilderExt;
    static READY: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *READY.get_or_init(|| {
        let dir = Path::new(PIN_DIR);
        let made = std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .is_ok();
        if !made {
            return false;
        }
        let Some(d) = cs(dir) else { return false };
        let mounted = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(PIN_DIR)))
            .unwrap_or(false);
        if !mounted && !bind(dir, dir) {
            return false;
        }
        // SAFETY: a propagation change of a valid path.
        unsafe {
            libc::mount(
                std::ptr::null(),
                d.as_ptr(),
                std::ptr::null(),
                libc::MS_PRIVATE,
                std::ptr::null(),
            ) == 0
        }
    });
    ok.then_some(())
}

/// Releases pin directory `dir`: its namespace (running jobs keep their
/// copies), then the directory.
fn release(dir: &Path) {
    if let Some(m) = cs(&dir.join("mnt")) {
        // SAFETY: detach of a valid C string path (EINVAL when not mounted).
        unsafe { libc::umount2(m.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Keeps the [`MAX_PINS`] newest pins (and `keep`); releases the others and
/// the leftovers of launchers that died while pinning.
fn evict(keep: &Path) {
    let Ok(entries) = std::fs::read_dir(PIN_DIR) else {
        return;
    };
    let mut pins = Vec::new();
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some((_, pid)) = name.split_once(".tmp") {
            let alive = pid
                .parse::<u32>()
                .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
            if !alive {
                release(&path);
            }
            continue;
        }
        if path == keep {
            continue;
        }
        // The directory's own times: the pin's age.
        if let Ok(m) = std::fs::symlink_metadata(&path) {
            pins.push((m.modified().ok(), path));
        }
    }
    if pins.len() < MAX_PINS {
        return;
    }
    pins.sort();
    let extra = pins.len() + 1 - MAX_PINS;
    for (_, path) in pins.into_iter().take(extra) {
        release(&path);
    }
}

/// This thread inside a ready-made root's mount namespace, for the clone:
/// [`Entered::leave`] brings it back (its root and working directory too).
pub(crate) struct Entered {
    host: OwnedFd,
    root: OwnedFd,
    cwd: OwnedFd,
    left: bool,
}

impl Entered {
    pub(crate) fn enter(ns: &OwnedFd) -> Result<Entered, Error> {
        thread_local! {
            static OWN_FS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        }
        if !OWN_FS.with(|o| o.get()) {
            // A thread that shares its filesystem context (every thread of
            // a process does) cannot change mount namespace: this one gets
            // its own copy, the same root, directory and umask.
            // SAFETY: unshare with a constant flag, for this thread.
            if unsafe { libc::unshare(libc::CLONE_FS) } != 0 {
                return Err(Error::os(
                    "unshare this thread's filesystem context",
                    std::io::Error::last_os_error(),
                ));
            }
            OWN_FS.with(|o| o.set(true));
        }
        let open = |p: &std::ffi::CStr, flags: i32| -> Result<OwnedFd, Error> {
            // SAFETY: open of a valid C string path; the result is checked.
            let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(Error::os(
                    "open this thread's mount namespace, root and directory",
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: a fresh fd that nothing else owns.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let host = open(c"/proc/thread-self/ns/mnt", libc::O_RDONLY)?;
        let root = open(c"/", libc::O_PATH | libc::O_DIRECTORY)?;
        let cwd = open(c".", libc::O_PATH | libc::O_DIRECTORY)?;
        // SAFETY: setns of this thread into a mount namespace fd.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
            return Err(Error::os(
                "enter the ready-made root",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Entered {
            host,
            root,
            cwd,
            left: false,
        })
    }

    /// Back to the launcher's mount namespace, root and directory.
    pub(crate) fn leave(mut self) -> Result<(), Error> {
        self.left = true;
        self.back().map_err(|e| {
            Error::os(
                "return from the ready-made root to the launcher's mount namespace",
                e,
            )
        })
    }

    fn back(&self) -> std::io::Result<()> {
        let last = std::io::Error::last_os_error;
        // SAFETY: setns back to the namespace this thread came from, then
        // its root (chroot to the directory fd just entered) and directory,
        // all fds this guard owns.
        unsafe {
            if libc::setns(self.host.as_raw_fd(), libc::CLONE_NEWNS) != 0 {
                return Err(last());
            }
            if libc::fchdir(self.root.as_raw_fd()) != 0 || libc::chroot(c".".as_ptr()) != 0 {
                return Err(last());
            }
            if libc::fchdir(self.cwd.as_raw_fd()) != 0 {
                return Err(last());
            }
        }
        Ok(())
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        if !self.left {
            let _ = self.back();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_key_changes_with_what_the_root_holds() {
        let ws = tempfile::tempdir().unwrap();
        let mut spec = SandboxSpec::new(ws.path(), vec!["/bin/true".into()]);
        let a = mounts::root_key(&spec).unwrap();
        assert_eq!(a, mounts::root_key(&spec).unwrap(), "a key is stable");
        // Another workspace is the job's own: the same root.
        let ws2 = tempfile::tempdir().unwrap();
        spec.workspace = ws2.path().to_path_buf();
        assert_eq!(a, mounts::root_key(&spec).unwrap());
        // Another hostname is in /etc/hostname: another root.
        spec.hostname = "other".into();
        let b = mounts::root_key(&spec).unwrap();
        assert_ne!(a, b);
        // Another mount point: another root.
        spec.mounts.push(super::super::BindMount {
            source: ws.path().to_path_buf(),
            target: "/mnt/extra".into(),
            writable: false,
        });
        assert_ne!(b, mounts::root_key(&spec).unwrap());
    }
}
