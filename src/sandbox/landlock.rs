//! Landlock: filesystem access rules and IPC scoping for the job.
//!
//! Order: [`abi`] (cached probe) → [`Rules::new`] in the parent (paths and
//! access masks for this host's ABI, or an error when
//! `LIFTOFF_LANDLOCK=require` and the kernel lacks the full set) → in the job,
//! after no_new_privs and before seccomp, [`Rules::apply`]: create the
//! ruleset, open each path O_PATH, add it, restrict self. Raw system calls
//! only, so it runs in the forked child without allocating.
//!
//! Rules (inside the runtime-liftoff root, where only the sandbox's own mounts
//! exist): read/execute everywhere under /, plus write/ioctl on /dev, and full
//! access on the workspace, /tmp, the home and read-write mounts. ABI 6 adds
//! signal and abstract-unix-socket scoping: the job can neither signal nor
//! connect to anything outside its own landlock domain.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::{Error, LandlockMode, sys};

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: libc::c_int = 1;

pub const EXECUTE: u64 = 1 << 0;
pub const WRITE_FILE: u64 = 1 << 1;
pub const READ_FILE: u64 = 1 << 2;
pub const READ_DIR: u64 = 1 << 3;
pub const REMOVE_DIR: u64 = 1 << 4;
pub const REMOVE_FILE: u64 = 1 << 5;
pub const MAKE_CHAR: u64 = 1 << 6;
pub const MAKE_DIR: u64 = 1 << 7;
pub const MAKE_REG: u64 = 1 << 8;
pub const MAKE_SOCK: u64 = 1 << 9;
pub const MAKE_FIFO: u64 = 1 << 10;
pub const MAKE_BLOCK: u64 = 1 << 11;
pub const MAKE_SYM: u64 = 1 << 12;
pub const REFER: u64 = 1 << 13;
pub const TRUNCATE: u64 = 1 << 14;
pub const IOCTL_DEV: u64 = 1 << 15;

pub const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
pub const SCOPE_SIGNAL: u64 = 1 << 1;

/// The ABI this build knows in full.
pub const FULL_ABI: i32 = 6;

/// The rights that apply to files (the rest are directory rights).
const FILE_ACCESS: u64 = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV;

const READ: u64 = EXECUTE | READ_FILE | READ_DIR;

/// Filesystem rights a kernel of `abi` can handle.
pub fn fs_access(abi: i32) -> u64 {
    let mut a = (1 << 13) - 1;
    if abi >= 2 {
        a |= REFER;
    }
    if abi >= 3 {
        a |= TRUNCATE;
    }
    if abi >= 5 {
        a |= IOCTL_DEV;
    }
    a
}

/// Scopes a kernel of `abi` can handle.
pub fn scopes(abi: i32) -> u64 {
    if abi >= 6 {
        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
    } else {
        0
    }
}

/// The kernel's landlock ABI version; 0 when landlock is unavailable.
pub fn abi() -> i32 {
    static ABI: OnceLock<i32> = OnceLock::new();
    *ABI.get_or_init(|| {
        // SAFETY: the documented version query: null attr, size 0.
        let r = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<u8>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        };
        if r < 0 { 0 } else { r as i32 }
    })
}

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

#[repr(C, packed)]
struct PathBeneath {
    allowed_access: u64,
    parent_fd: i32,
}

/// The prepared rule set of one job.
#[derive(Debug)]
pub struct Rules {
    abi: i32,
    handled: u64,
    scoped: u64,
    paths: Vec<(CString, u64)>,
}

/// What the rules leave out on this kernel, for warnings and `liftoff check`.
pub fn missing(abi: i32) -> Vec<&'static str> {
    let mut m = Vec::new();
    if abi < 1 {
        m.push("landlock itself (kernel 5.13+, `lsm=...,landlock` on the kernel command line)");
        return m;
    }
    if abi < 2 {
        m.push("REFER (ABI 2, kernel 5.19)");
    }
    if abi < 3 {
        m.push("TRUNCATE (ABI 3, kernel 6.2)");
    }
    if abi < 5 {
        m.push("IOCTL_DEV (ABI 5, kernel 6.10)");
    }
    if abi < 6 {
        m.push("signal and abstract unix socket scoping (ABI 6, kernel 6.12)");
    }
    m
}

impl Rules {
    /// Read-only paths get read/execute, writable paths everything, `dev`
    /// paths read/write/ioctl. With `Require`, a kernel below the full ABI is
    /// an error; with best effort, the missing parts come back as a warning.
    pub fn new(
        mode: LandlockMode,
        read_only: &[PathBuf],
        writable: &[PathBuf],
        dev: &[PathBuf],
    ) -> Result<(Rules, Option<String>), Error> {
        Rules::with_abi(abi(), mode, read_only, writable, dev)
    }

    /// As [`Rules::new`] for a given kernel ABI (tests).
    pub fn with_abi(
        abi: i32,
        mode: LandlockMode,
        read_only: &[PathBuf],
        writable: &[PathBuf],
        dev: &[PathBuf],
    ) -> Result<(Rules, Option<String>), Error> {
        let missing = missing(abi);
        let warning = if missing.is_empty() {
            None
        } else if mode == LandlockMode::Require {
            return Err(Error::new(format!(
                "LIFTOFF_LANDLOCK=require but this kernel (landlock ABI {abi}) lacks: {}; upgrade the kernel or set LIFTOFF_LANDLOCK=best-effort",
                missing.join(", ")
            )));
        } else {
            Some(format!(
                "landlock ABI {abi}: running without {}",
                missing.join(", ")
            ))
        };
        let handled = if abi > 0 { fs_access(abi) } else { 0 };
        let mut paths = Vec::new();
        let mut add = |list: &[PathBuf], access: u64| -> Result<(), Error> {
            for p in list {
                let c = CString::new(p.as_os_str().as_bytes())
                    .map_err(|_| Error::new(format!("path {p:?} contains a NUL byte")))?;
                paths.push((c, access & handled));
            }
            Ok(())
        };
        add(read_only, READ)?;
        add(dev, READ | WRITE_FILE | IOCTL_DEV | TRUNCATE)?;
        add(writable, handled)?;
        Ok((
            Rules {
                abi,
                handled,
                scoped: scopes(abi),
                paths,
            },
            warning,
        ))
    }

    /// The rules for a runtime-liftoff root: everything read-only but /dev
    /// and the writable mounts.
    pub fn for_sandbox(
        mode: LandlockMode,
        writable: &[PathBuf],
    ) -> Result<(Rules, Option<String>), Error> {
        Rules::new(
            mode,
            &[PathBuf::from("/")],
            writable,
            &[PathBuf::from("/dev")],
        )
    }

    /// Child side: applies the rules to the calling thread. Needs
    /// no_new_privs. Returns the errno of the failed call. Raw system calls
    /// ([`super::sys`]): `errno` is left alone.
    pub(crate) fn apply(&self) -> Result<(), i32> {
        if self.abi < 1 {
            return Ok(());
        }
        let attr = RulesetAttr {
            handled_access_fs: self.handled,
            handled_access_net: 0,
            scoped: self.scoped,
        };
        let size = if self.abi >= 6 {
            std::mem::size_of::<RulesetAttr>()
        } else {
            // Older kernels reject the unknown trailing fields.
            16
        };
        // SAFETY: a valid attr struct of the given size.
        let fd = unsafe {
            sys::call3(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr as usize,
                size,
                0,
            )
        }?;
        let result = self.add_all(fd).and_then(|_| {
            // SAFETY: restrict_self with our ruleset fd and no flags.
            unsafe { sys::call3(libc::SYS_landlock_restrict_self, fd, 0, 0) }.map(|_| ())
        });
        // SAFETY: closing the ruleset fd we created.
        let _ = unsafe { sys::call3(libc::SYS_close, fd, 0, 0) };
        result
    }

    fn add_all(&self, ruleset: usize) -> Result<(), i32> {
        for (path, access) in &self.paths {
            // SAFETY: valid C string; O_PATH opens nothing but a reference.
            let fd = match unsafe {
                sys::call3(
                    libc::SYS_openat,
                    libc::AT_FDCWD as isize as usize,
                    path.as_ptr() as usize,
                    (libc::O_PATH | libc::O_CLOEXEC) as usize,
                )
            } {
                Ok(fd) => fd,
                Err(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            // Files take only file rights (else EINVAL).
            // SAFETY: fstat into a zeroed struct for our fd.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            let is_dir =
                unsafe { sys::call3(libc::SYS_fstat, fd, &mut st as *mut libc::stat as usize, 0) }
                    .is_ok()
                    && st.st_mode & libc::S_IFMT == libc::S_IFDIR;
            let access = if is_dir {
                *access
            } else {
                *access & FILE_ACCESS
            };
            let rule = PathBeneath {
                allowed_access: access,
                parent_fd: fd as i32,
            };
            // SAFETY: a valid packed path_beneath struct.
            let r = unsafe {
                sys::call(
                    libc::SYS_landlock_add_rule,
                    [
                        ruleset,
                        RULE_PATH_BENEATH as usize,
                        &rule as *const PathBeneath as usize,
                        0,
                        0,
                        0,
                    ],
                )
            };
            // SAFETY: closing the fd we opened.
            let _ = unsafe { sys::call3(libc::SYS_close, fd, 0, 0) };
            r?;
        }
        Ok(())
    }
}

/// Host paths the `landlock` runtime (no namespaces) lets the job read.
pub fn host_read_only(root: Option<&Path>) -> Vec<PathBuf> {
    match root {
        Some(r) => vec![r.to_path_buf()],
        None => [
            "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/proc", "/opt",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_grows_with_abi() {
        assert_eq!(fs_access(1), (1 << 13) - 1);
        assert!(fs_access(2) & REFER != 0);
        assert!(fs_access(3) & TRUNCATE != 0);
        assert!(fs_access(4) & IOCTL_DEV == 0);
        assert!(fs_access(5) & IOCTL_DEV != 0);
        assert_eq!(scopes(5), 0);
        assert_eq!(scopes(6), SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET);
        assert!(missing(6).is_empty());
        assert_eq!(missing(5).len(), 1);
    }

    #[test]
    fn require_refuses_an_old_abi_and_best_effort_says_what_is_missing() {
        let ro = [PathBuf::from("/")];
        let rw = [PathBuf::from("/tmp")];
        let e = Rules::with_abi(5, LandlockMode::Require, &ro, &rw, &[]).unwrap_err();
        assert!(e.message.contains("LIFTOFF_LANDLOCK=require"), "{e}");
        let (r, w) = Rules::with_abi(3, LandlockMode::BestEffort, &ro, &rw, &[]).unwrap();
        assert!(w.unwrap().contains("IOCTL_DEV"));
        assert_eq!(r.scoped, 0);
        assert_eq!(r.handled & IOCTL_DEV, 0);
        let (r, w) = Rules::with_abi(7, LandlockMode::Require, &ro, &rw, &[]).unwrap();
        assert!(w.is_none());
        assert_eq!(r.scoped, SCOPE_SIGNAL | SCOPE_ABSTRACT_UNIX_SOCKET);
        let (_, w) = Rules::with_abi(0, LandlockMode::BestEffort, &ro, &rw, &[]).unwrap();
        assert!(w.unwrap().contains("landlock itself"));
    }
}
