//! Namespaces: the clone flags, the uid/gid maps, the network.
//!
//! Order: parent: [`clone_flags`] → (named network: [`NetnsGuard::enter`]
//! before clone, drop after) → clone → [`write_id_maps`] for the child →
//! child: `unshare(CLONE_NEWCGROUP)` once in its cgroup, [`set_hostname`],
//! [`loopback_up`] (network none).
//!
//! The job is uid/gid 1983 inside. Outside it is `host_id` when the launcher
//! is root, or the launcher's own uid/gid when it is not (the one mapping an
//! unprivileged user may write).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

use super::{Error, JOB_ID, Network};

/// Namespaces created at clone: user, mount, pid, ipc, uts, and net for
/// network none. The cgroup namespace is made later, inside the job cgroup.
pub fn clone_flags(network: &Network) -> libc::c_ulong {
    let mut f = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS;
    if *network == Network::None {
        f |= libc::CLONE_NEWNET;
    }
    f as libc::c_ulong
}

/// The host ids the job maps to: `host_id` for a root launcher, else the
/// launcher's own euid/egid.
pub fn host_ids(host_id: u32) -> (u32, u32) {
    // SAFETY: geteuid/getegid cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    if uid == 0 {
        (host_id, host_id)
    } else {
        (uid, gid)
    }
}

/// Writes /proc/PID/{setgroups,uid_map,gid_map}: 1983 inside = the host ids.
/// setgroups stays allowed for a root launcher (the child drops the host's
/// supplementary groups); an unprivileged launcher must deny it.
pub fn write_id_maps(pid: libc::pid_t, host: (u32, u32)) -> Result<(), Error> {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let w = |file: &str, text: &str| -> Result<(), Error> {
        std::fs::write(format!("/proc/{pid}/{file}"), text)
            .map_err(|e| Error::new(format!("write /proc/{pid}/{file} ({:?}): {e}", text.trim())))
    };
    if !root {
        w("setgroups", "deny")?;
    }
    w("uid_map", &format!("{JOB_ID} {} 1\n", host.0))?;
    w("gid_map", &format!("{JOB_ID} {} 1\n", host.1))?;
    Ok(())
}

/// Enters a named network namespace (/run/netns/NAME) on the calling thread
/// for the clone, and goes back on drop. Needs CAP_SYS_ADMIN (root).
pub struct NetnsGuard {
    original: OwnedFd,
}

impl NetnsGuard {
    pub fn enter(name: &str) -> Result<NetnsGuard, Error> {
        let original: OwnedFd = File::open("/proc/thread-self/ns/net")
            .map_err(|e| Error::new(format!("open this thread's network namespace: {e}")))?
            .into();
        let path = std::path::Path::new(crate::config::NETNS_DIR).join(name);
        let target = File::open(&path).map_err(|e| {
            Error::new(format!(
                "network namespace {}: {e}: create it with `ip netns add {name}`",
                path.display()
            ))
        })?;
        // SAFETY: setns on a namespace fd we opened, for this thread.
        if unsafe { libc::setns(target.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::new(format!(
                "join network namespace {name}: {} (joining a named namespace needs a root launcher)",
                std::io::Error::last_os_error()
            )));
        }
        Ok(NetnsGuard { original })
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // SAFETY: back to the namespace this thread came from.
        unsafe { libc::setns(self.original.as_raw_fd(), libc::CLONE_NEWNET) };
    }
}

/// Child side: sets the UTS hostname.
pub(crate) fn set_hostname(name: &CString) -> Result<(), i32> {
    let b = name.as_bytes();
    // SAFETY: pointer and length of a valid C string.
    if unsafe { libc::sethostname(b.as_ptr() as *const libc::c_char, b.len()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Child side: brings the loopback interface of a new network namespace up.
pub(crate) fn loopback_up() -> Result<(), i32> {
    // SAFETY: a datagram socket for the interface ioctls; closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(errno());
    }
    // SAFETY: zeroed ifreq is a valid initial value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    req.ifr_name[0] = b'l' as libc::c_char;
    req.ifr_name[1] = b'o' as libc::c_char;
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS with a valid ifreq.
    let r = unsafe {
        if libc::ioctl(s, libc::SIOCGIFFLAGS as _, &mut req) < 0 {
            -1
        } else {
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            libc::ioctl(s, libc::SIOCSIFFLAGS as _, &req)
        }
    };
    let e = errno();
    // SAFETY: closing our socket.
    unsafe { libc::close(s) };
    if r < 0 { Err(e) } else { Ok(()) }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}
