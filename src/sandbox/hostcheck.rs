//! Host capability checks for `liftoff check`: kernel, user namespaces,
//! landlock, seccomp, cgroups and delegation, and the runtime runs will get.
//! Each failure names its remedy. Call [`push_checks`] with the report and
//! the configured runtime and landlock mode.

use std::path::Path;

use super::cgroup::{CGROUP_ROOT, Layout, OwnCgroups};
use super::{LandlockMode, Runtime, landlock, seccomp};
use crate::report::{Area, Report, Status};

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Kernel release, e.g. "6.18.0".
pub fn kernel_release() -> String {
    // SAFETY: uname into a zeroed struct.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: release is NUL-terminated by the kernel.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

fn kernel_at_least(release: &str, major: u32, minor: u32) -> bool {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let ma: u32 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let mi: u32 = it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
    (ma, mi) >= (major, minor)
}

/// Whether this process can create a user namespace right now (a real
/// attempt in a short-lived child).
pub fn userns_works() -> Result<(), String> {
    // SAFETY: a fork-like clone whose child only calls _exit.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (libc::CLONE_NEWUSER | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    if pid == 0 {
        // SAFETY: child exits immediately.
        unsafe { libc::_exit(0) };
    }
    if pid < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    let mut st = 0;
    // SAFETY: reap our child.
    unsafe { libc::waitpid(pid as i32, &mut st, 0) };
    Ok(())
}

/// Adds the sandbox checks to `report`.
pub fn push_checks(report: &mut Report, runtime: Runtime, mode: LandlockMode) {
    let host = Area::Host;
    let release = kernel_release();
    if kernel_at_least(&release, 5, 13) {
        report.push("kernel", Status::Ok, host, format!("Linux {release}"));
    } else {
        report.push("kernel", Status::Warning, host, format!("Linux {release}: liftoff wants 5.13+ (landlock, pidfd, mount_setattr); upgrade the kernel"));
    }

    // User namespaces.
    let mut userns_ok = true;
    if let Some(v) = read("/proc/sys/user/max_user_namespaces") {
        if v == "0" {
            userns_ok = false;
            report.push("user namespaces", Status::Error, host, "user.max_user_namespaces is 0: set `sysctl -w user.max_user_namespaces=15000` (and in /etc/sysctl.d/), or use SPACELIFT_WORKER_RUNTIME=landlock");
        }
    }
    if let Some(v) = read("/proc/sys/kernel/unprivileged_userns_clone") {
        if v == "0" {
            report.push("unprivileged user namespaces", Status::Warning, host, "kernel.unprivileged_userns_clone is 0: a launcher not running as root cannot sandbox; set `sysctl -w kernel.unprivileged_userns_clone=1`");
        }
    }
    if let Some(v) = read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") {
        if v == "1" {
            report.push("apparmor userns", Status::Warning, host, "kernel.apparmor_restrict_unprivileged_userns is 1 (Ubuntu 23.10+): install the AppArmor profile from packaging/ (`userns,` for /usr/bin/liftoff) and reload it with `apparmor_parser -r`, or set the sysctl to 0");
        }
    }
    if userns_ok {
        match userns_works() {
            Ok(()) => report.push(
                "user namespaces",
                Status::Ok,
                host,
                "this launcher can create user namespaces",
            ),
            Err(e) => {
                userns_ok = false;
                let st = if runtime == Runtime::Liftoff {
                    Status::Error
                } else {
                    Status::Warning
                };
                report.push("user namespaces", st, host, format!("creating one failed ({e}): check the sysctls above and the AppArmor profile, or use SPACELIFT_WORKER_RUNTIME=landlock"));
            }
        }
    }

    // Landlock.
    let abi = landlock::abi();
    let missing = landlock::missing(abi);
    if missing.is_empty() {
        report.push(
            "landlock",
            Status::Ok,
            host,
            format!("ABI {abi}: filesystem rules, signal and abstract socket scoping"),
        );
    } else {
        let st = if mode == LandlockMode::Require || runtime == Runtime::Landlock {
            Status::Error
        } else {
            Status::Warning
        };
        report.push(
            "landlock",
            st,
            host,
            format!(
                "ABI {abi}: best effort without {}; a newer kernel (6.12+) gives the full set{}",
                missing.join(", "),
                if mode == LandlockMode::Require {
                    " (LIFTOFF_LANDLOCK=require refuses to run)"
                } else {
                    ""
                }
            ),
        );
    }

    // seccomp.
    if seccomp::available() {
        match seccomp::programs() {
            Ok(p) => report.push(
                "seccomp",
                Status::Ok,
                host,
                format!(
                    "filter mode available; filter of {} instructions",
                    p.deny.len()
                ),
            ),
            Err(e) => report.push("seccomp", Status::Error, host, e.message),
        }
    } else {
        report.push(
            "seccomp",
            Status::Error,
            host,
            "seccomp filters are unavailable: the kernel needs CONFIG_SECCOMP_FILTER",
        );
    }

    // cgroups.
    let layout = Layout::detect(Path::new(CGROUP_ROOT));
    let own = OwnCgroups::read();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match &layout {
        Layout::None => report.push("cgroups", Status::Error, host, "no cgroup file system at /sys/fs/cgroup: mount cgroup2 there (memory and pids limits need it)"),
        Layout::V2 { root: r } => {
            let ctrls = std::fs::read_to_string(r.join("cgroup.controllers")).unwrap_or_default();
            let own_path = own.unified.clone().unwrap_or_else(|| "/".into());
            let delegated = own_path.ends_with(".service") || own_path.ends_with("/supervisor");
            report.push("cgroups", Status::Ok, host, format!("v2; controllers: {}", ctrls.trim()));
            if !delegated && !root {
                report.push("cgroup delegation", Status::Warning, host, format!("launcher cgroup {own_path} is not a delegated unit: run liftoff from its systemd unit with Delegate=yes (systemd/liftoff.service), or limits are not enforced"));
            } else if delegated {
                let dir = r.join(own_path.trim_start_matches('/'));
                let writable = std::fs::metadata(dir.join("cgroup.subtree_control")).map(|m| !m.permissions().readonly()).unwrap_or(false);
                if writable || root {
                    report.push("cgroup delegation", Status::Ok, host, format!("{own_path}: delegated"));
                } else {
                    report.push("cgroup delegation", Status::Error, host, format!("{own_path} is not writable: add Delegate=yes to the unit"));
                }
            }
        }
        Layout::Hybrid { root: r, .. } | Layout::V1 { root: r } => {
            let mut have = Vec::new();
            for c in ["memory", "pids", "cpu"] {
                if r.join(c).is_dir() {
                    have.push(c);
                }
            }
            let kind = layout.name();
            let st = if have.len() == 3 { Status::Ok } else { Status::Warning };
            report.push("cgroups", st, host, format!("{kind}: v1 controllers {}{}", have.join(", "), if kind == "hybrid" { "; v2 at /sys/fs/cgroup/unified tracks jobs and gives cgroup.kill" } else { "" }));
            if !root {
                report.push("cgroup delegation", Status::Warning, host, format!("{kind} cgroups need a root launcher for limits; as a plain user memory/pids limits are not enforced"));
            }
        }
    }

    // Workspaces and mounts are bound by file descriptor (open_tree) when
    // the launcher may: then they may sit below private directories.
    if runtime == Runtime::Liftoff {
        let (st, msg) = bind_by_fd();
        report.push("bind by fd", st, host, msg);
    }

    // The runtime runs will get.
    let (st, msg) = match runtime {
        Runtime::Liftoff if userns_ok => (Status::Ok, "liftoff: namespaces, pivot_root, landlock, seccomp, cgroups, rlimits".to_string()),
        Runtime::Liftoff => (Status::Error, "liftoff needs user namespaces (see above); liftoff never falls back silently: fix the host, or set SPACELIFT_WORKER_RUNTIME=landlock".to_string()),
        Runtime::Landlock if abi > 0 => (Status::Ok, "landlock: no namespaces; landlock, seccomp, rlimits, cgroups".to_string()),
        Runtime::Landlock => (Status::Error, "landlock runtime but this kernel has no landlock".to_string()),
        Runtime::None => (Status::Warning, "none: runs get NO isolation".to_string()),
    };
    report.push("runtime", st, host, msg);
}

/// Whether this launcher binds host directories into jobs by file
/// descriptor: a detached copy of /tmp's mounts is made and dropped.
fn bind_by_fd() -> (Status, String) {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match super::mounts::open_tree_clone(std::path::Path::new("/tmp")) {
        Ok(Some(_copy)) => (
            Status::Ok,
            "open_tree: workspaces and mounts are bound by file descriptor, so they may sit below private (0700) directories".into(),
        ),
        Ok(None) if !root => (
            Status::Ok,
            "a launcher that is not root binds by path, as its own uid: workspaces below its own private directories work".into(),
        ),
        Ok(None) => (
            Status::Warning,
            "open_tree is refused (kernel before 5.2, or no CAP_SYS_ADMIN): workspaces and mounts are bound by path as the job's host id, so every parent directory of LIFTOFF_STATE_DIR and of each mount needs o+x; upgrade the kernel or run the launcher from its unit".into(),
        ),
        Err(e) => (Status::Warning, format!("open_tree failed: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn kernel_versions_compare() {
        assert!(kernel_at_least("6.18.0-1-amd64", 5, 13));
        assert!(!kernel_at_least("5.10.0", 5, 13));
        assert!(kernel_at_least("5.13", 5, 13));
    }
}
