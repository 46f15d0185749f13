//! seccomp: a deny-list with parity to Docker's default profile, returning
//! EPERM, compiled once with `seccompiler` (pure Rust).
//!
//! Order: [`programs`] in the parent (compiled on first use, then shared) →
//! in the job, last before execve (after no_new_privs), [`apply`]. Two
//! filters are installed: the deny-list (EPERM) and `clone3` → ENOSYS (as
//! Docker does: libc falls back to `clone`, whose flags a filter can see).
//! docs/security.md lists every denied call and why.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch, sock_filter,
};

use super::Error;

/// Denied outright (EPERM): the calls Docker's default profile allows only
/// with capabilities the job never has, or never.
pub fn denied() -> Vec<(&'static str, i64)> {
    let mut v: Vec<(&'static str, i64)> = vec![
        ("acct", libc::SYS_acct),
        ("add_key", libc::SYS_add_key),
        ("bpf", libc::SYS_bpf),
        ("clock_adjtime", libc::SYS_clock_adjtime),
        ("clock_settime", libc::SYS_clock_settime),
        ("settimeofday", libc::SYS_settimeofday),
        ("adjtimex", libc::SYS_adjtimex),
        ("delete_module", libc::SYS_delete_module),
        ("finit_module", libc::SYS_finit_module),
        ("init_module", libc::SYS_init_module),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("keyctl", libc::SYS_keyctl),
        ("request_key", libc::SYS_request_key),
        ("lookup_dcookie", libc::SYS_lookup_dcookie),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("move_mount", libc::SYS_move_mount),
        ("open_tree", libc::SYS_open_tree),
        ("fsopen", libc::SYS_fsopen),
        ("fsconfig", libc::SYS_fsconfig),
        ("fsmount", libc::SYS_fsmount),
        ("fspick", libc::SYS_fspick),
        ("mount_setattr", libc::SYS_mount_setattr),
        ("pivot_root", libc::SYS_pivot_root),
        ("chroot", libc::SYS_chroot),
        ("setns", libc::SYS_setns),
        ("unshare", libc::SYS_unshare),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("fanotify_init", libc::SYS_fanotify_init),
        ("quotactl", libc::SYS_quotactl),
        ("reboot", libc::SYS_reboot),
        ("swapon", libc::SYS_swapon),
        ("swapoff", libc::SYS_swapoff),
        ("syslog", libc::SYS_syslog),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("vhangup", libc::SYS_vhangup),
        ("sethostname", libc::SYS_sethostname),
        ("setdomainname", libc::SYS_setdomainname),
        ("mbind", libc::SYS_mbind),
        ("set_mempolicy", libc::SYS_set_mempolicy),
        ("move_pages", libc::SYS_move_pages),
        ("migrate_pages", libc::SYS_migrate_pages),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("io_uring_enter", libc::SYS_io_uring_enter),
        ("io_uring_register", libc::SYS_io_uring_register),
        ("kcmp", libc::SYS_kcmp),
        ("process_vm_writev", libc::SYS_process_vm_writev),
        ("pidfd_getfd", libc::SYS_pidfd_getfd),
        ("fsconfig", libc::SYS_fsconfig),
        ("quotactl_fd", 443),
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        ("iopl", libc::SYS_iopl),
        ("ioperm", libc::SYS_ioperm),
        ("create_module", 174),
        ("get_kernel_syms", 177),
        ("query_module", 178),
        ("nfsservctl", libc::SYS_nfsservctl),
        ("uselib", libc::SYS_uselib),
        ("ustat", libc::SYS_ustat),
        ("sysfs", libc::SYS_sysfs),
        ("_sysctl", libc::SYS__sysctl),
        ("modify_ldt", libc::SYS_modify_ldt),
    ]);
    v.sort_by_key(|(_, n)| *n);
    v.dedup_by_key(|(_, n)| *n);
    v
}

/// clone(2) flags that make namespaces: denied (EPERM) in `clone`.
pub const NAMESPACE_FLAGS: &[(&str, u64)] = &[
    ("CLONE_NEWNS", libc::CLONE_NEWNS as u64),
    ("CLONE_NEWUSER", libc::CLONE_NEWUSER as u64),
    ("CLONE_NEWPID", libc::CLONE_NEWPID as u64),
    ("CLONE_NEWNET", libc::CLONE_NEWNET as u64),
    ("CLONE_NEWUTS", libc::CLONE_NEWUTS as u64),
    ("CLONE_NEWIPC", libc::CLONE_NEWIPC as u64),
    ("CLONE_NEWCGROUP", libc::CLONE_NEWCGROUP as u64),
    ("CLONE_NEWTIME", 0x80),
];

/// ioctl requests denied: TIOCSTI (typing into a terminal) and TIOCLINUX.
pub const DENIED_IOCTLS: &[(&str, u64)] = &[("TIOCSTI", 0x5412), ("TIOCLINUX", 0x541C)];

/// personality(2) values allowed (Docker's list).
pub const PERSONALITY_ALLOWED: &[u64] = &[0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// The compiled filters: deny-list (EPERM) and clone3 (ENOSYS).
pub struct Programs {
    pub deny: BpfProgram,
    pub clone3: BpfProgram,
}

fn arch() -> Result<TargetArch, Error> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| Error::new(format!("seccomp on {}: {e}", std::env::consts::ARCH)))
}

fn masked(arg: u8, mask: u64) -> Result<SeccompRule, Error> {
    let cond = SeccompCondition::new(
        arg,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(mask),
        mask,
    )
    .map_err(|e| Error::new(format!("seccomp rule: {e}")))?;
    SeccompRule::new(vec![cond]).map_err(|e| Error::new(format!("seccomp rule: {e}")))
}

fn equal(arg: u8, value: u64) -> Result<SeccompRule, Error> {
    let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(|e| Error::new(format!("seccomp rule: {e}")))?;
    SeccompRule::new(vec![cond]).map_err(|e| Error::new(format!("seccomp rule: {e}")))
}

fn compile() -> Result<Programs, Error> {
    let arch = arch()?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for (_, nr) in denied() {
        rules.insert(nr, Vec::new());
    }
    let mut clone_rules = Vec::new();
    for (_, flag) in NAMESPACE_FLAGS {
        clone_rules.push(masked(0, *flag)?);
    }
    rules.insert(libc::SYS_clone, clone_rules);
    let mut ioctl_rules = Vec::new();
    for (_, req) in DENIED_IOCTLS {
        ioctl_rules.push(equal(1, *req)?);
    }
    rules.insert(libc::SYS_ioctl, ioctl_rules);
    // personality: only the values Docker allows (query, PER_LINUX,
    // UNAME26, PER_LINUX32 variants); others (ADDR_NO_RANDOMIZE...) EPERM.
    let mut conds = Vec::new();
    for v in PERSONALITY_ALLOWED {
        conds.push(
            SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, *v)
                .map_err(|e| Error::new(format!("seccomp rule: {e}")))?,
        );
    }
    rules.insert(
        libc::SYS_personality,
        vec![SeccompRule::new(conds).map_err(|e| Error::new(format!("seccomp rule: {e}")))?],
    );
    let deny: BpfProgram = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .and_then(|f| f.try_into())
    .map_err(|e| Error::new(format!("seccomp filter: {e}")))?;
    let mut c3 = BTreeMap::new();
    c3.insert(libc::SYS_clone3, Vec::new());
    let clone3: BpfProgram = SeccompFilter::new(
        c3,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch,
    )
    .and_then(|f| f.try_into())
    .map_err(|e| Error::new(format!("seccomp filter: {e}")))?;
    Ok(Programs { deny, clone3 })
}

/// The compiled programs, built on first use.
pub fn programs() -> Result<&'static Programs, Error> {
    static P: OnceLock<Result<Programs, String>> = OnceLock::new();
    match P.get_or_init(|| compile().map_err(|e| e.message)) {
        Ok(p) => Ok(p),
        Err(e) => Err(Error::new(e.clone())),
    }
}

fn install(prog: &[sock_filter]) -> Result<(), i32> {
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: a valid sock_fprog pointing at a live program; seccompiler's
    // sock_filter has the kernel's layout.
    let r = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

/// Child side: installs both filters (needs no_new_privs).
pub(crate) fn apply(p: &Programs) -> Result<(), i32> {
    install(&p.clone3)?;
    install(&p.deny)
}

/// Whether this kernel has seccomp filters (for `liftoff check`).
pub fn available() -> bool {
    // SAFETY: PR_GET_SECCOMP has no side effects.
    let r = unsafe { libc::prctl(libc::PR_GET_SECCOMP, 0, 0, 0, 0) };
    r >= 0 && std::path::Path::new("/proc/sys/kernel/seccomp/actions_avail").exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile() {
        let p = programs().unwrap();
        assert!(p.deny.len() > 50);
        assert!(!p.clone3.is_empty());
        assert!(denied().iter().any(|(n, _)| *n == "keyctl"));
    }
}
