//! seccomp: a deny-list with parity to Docker's default profile, returning
//! EPERM, and `clone3` → ENOSYS (as Docker does: libc falls back to
//! `clone`, whose flags a filter can see), as one classic BPF program
//! emitted here ([`emit`]): the architecture check, a binary search over the
//! denied and judged call numbers ([`tree`]), then the calls judged by their
//! arguments (clone's namespace flags, ioctl's TIOCSTI/TIOCLINUX,
//! personality's allowed values). One filter to load instead of two, and a
//! program that decides in few steps: the kernel emulates it for every
//! system call number when it is installed (its allow cache), so the load
//! costs in proportion to the steps per number (a chain of one `jeq` per
//! denied call took ~85 µs to install here, the search ~40 µs). The `seccompiler` compilation of
//! the same rules is kept as the reference the tests compare it against.
//!
//! Order: [`programs`] in the parent (emitted on first use, then shared) →
//! in the job, last before execve (after no_new_privs), [`apply`].
//! docs/security.md lists every denied call and why.

use std::sync::OnceLock;

#[cfg(test)]
use std::collections::BTreeMap;

use seccompiler::{BpfProgram, sock_filter};
#[cfg(test)]
use seccompiler::{
    SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch,
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

/// The filter: the deny-list (EPERM) and clone3 (ENOSYS) in one program.
pub struct Programs {
    pub deny: BpfProgram,
}

/// AUDIT_ARCH_* of the architectures liftoff builds for.
fn audit_arch() -> Result<u32, Error> {
    const AUDIT_64: u32 = 0x8000_0000 | 0x4000_0000;
    match std::env::consts::ARCH {
        "x86_64" => Ok(62 | AUDIT_64),
        "aarch64" => Ok(183 | AUDIT_64),
        "riscv64" => Ok(243 | AUDIT_64),
        a => Err(Error::new(format!(
            "seccomp on {a}: unsupported architecture"
        ))),
    }
}

const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JEQ_K: u16 = 0x15;
const BPF_JSET_K: u16 = 0x45;
const BPF_JGE_K: u16 = 0x35;
const BPF_JA: u16 = 0x05;
const BPF_RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
/// Offsets in `struct seccomp_data`: nr, arch, args[i] (low 32 bits on the
/// little-endian targets above).
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
fn data_arg_low(i: u32) -> u32 {
    16 + 8 * i
}

fn stmt(code: u16, k: u32) -> sock_filter {
    sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

/// Where a jump of the search tree goes: the next instruction, another
/// node of the tree, or one of the blocks after it ([`OUT_ALLOW`]...).
#[derive(Clone, Copy)]
enum To {
    Next,
    Node(usize),
    Out(usize),
}

/// The blocks after the tree, in order: the three returns, then the
/// argument checks of clone, ioctl and personality.
const OUT_ALLOW: usize = 0;
const OUT_EPERM: usize = 1;
const OUT_ENOSYS: usize = 2;
const OUT_CLONE: usize = 3;
const OUT_IOCTL: usize = 4;
const OUT_PERSONALITY: usize = 5;

/// Calls judged by one leaf's chain of `jeq`s at most.
const LEAF: usize = 4;

/// One instruction of the tree before its jumps are resolved.
struct Node {
    code: u16,
    k: u32,
    jt: To,
    jf: To,
}

/// A binary search over `keys` (call number, block), sorted: `jge` splits,
/// leaves of up to [`LEAF`] `jeq`s, then ALLOW. The kernel emulates the
/// program for every call number when it is installed (to cache the
/// always-allowed ones), so this costs ~log(n) steps per number where a
/// chain of `jeq`s costs n: half the install time of the flat list.
fn tree(keys: &[(u32, usize)], out: &mut Vec<Node>) {
    if keys.len() <= LEAF {
        for (nr, block) in keys {
            out.push(Node {
                code: BPF_JEQ_K,
                k: *nr,
                jt: To::Out(*block),
                jf: To::Next,
            });
        }
        out.push(Node {
            code: BPF_JA,
            k: 0,
            jt: To::Out(OUT_ALLOW),
            jf: To::Next,
        });
        return;
    }
    let mid = keys.len() / 2;
    let split = out.len();
    out.push(Node {
        code: BPF_JGE_K,
        k: keys[mid].0,
        jt: To::Next,
        jf: To::Next,
    });
    tree(&keys[..mid], out);
    let right = out.len();
    tree(&keys[mid..], out);
    out[split].jt = To::Node(right);
}

/// The filter as one classic BPF program (module doc).
fn emit(arch: u32) -> Result<Vec<sock_filter>, Error> {
    let mut keys: Vec<(u32, usize)> = denied()
        .iter()
        .map(|(_, n)| (*n as u32, OUT_EPERM))
        .collect();
    // The judged calls: clone3 is ENOSYS, the others go to their blocks.
    keys.extend([
        (libc::SYS_clone3 as u32, OUT_ENOSYS),
        (libc::SYS_clone as u32, OUT_CLONE),
        (libc::SYS_ioctl as u32, OUT_IOCTL),
        (libc::SYS_personality as u32, OUT_PERSONALITY),
    ]);
    keys.sort_by_key(|(nr, _)| *nr);
    keys.dedup_by_key(|(nr, _)| *nr);
    let mut p = vec![
        stmt(BPF_LD_W_ABS, DATA_ARCH),
        jump(BPF_JEQ_K, arch, 1, 0),
        stmt(BPF_RET_K, RET_KILL_PROCESS),
        stmt(BPF_LD_W_ABS, DATA_NR),
    ];
    let mut nodes = Vec::with_capacity(keys.len() * 2);
    tree(&keys, &mut nodes);
    let base = p.len();
    let allow_at = base + nodes.len();
    // ALLOW, EPERM, ENOSYS, then the blocks: clone (4), ioctl (5).
    let out_at = [
        allow_at,
        allow_at + 1,
        allow_at + 2,
        allow_at + 3,
        allow_at + 7,
        allow_at + 12,
    ];
    let to = |from: usize, target: usize| -> Result<u8, Error> {
        u8::try_from(target - from - 1)
            .map_err(|_| Error::new("seccomp filter: a jump is too long for classic BPF"))
    };
    for (i, n) in nodes.iter().enumerate() {
        let at = base + i;
        let target = |t: To| match t {
            To::Next => at + 1,
            To::Node(j) => base + j,
            To::Out(o) => out_at[o],
        };
        if n.code == BPF_JA {
            let k = u32::try_from(target(n.jt) - at - 1)
                .map_err(|_| Error::new("seccomp filter: too long"))?;
            p.push(stmt(BPF_JA, k));
        } else {
            p.push(jump(
                n.code,
                n.k,
                to(at, target(n.jt))?,
                to(at, target(n.jf))?,
            ));
        }
    }
    let (clone_at, ioctl_at, personality_at) = (
        out_at[OUT_CLONE],
        out_at[OUT_IOCTL],
        out_at[OUT_PERSONALITY],
    );
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    p.push(stmt(BPF_RET_K, RET_ERRNO | libc::EPERM as u32));
    p.push(stmt(BPF_RET_K, RET_ERRNO | libc::ENOSYS as u32));
    if p.len() != clone_at {
        return Err(Error::new("seccomp filter: the clone block is misplaced"));
    }
    // clone: EPERM when any namespace flag is set in its flags (arg 0).
    let ns = NAMESPACE_FLAGS.iter().fold(0u64, |a, (_, f)| a | f);
    let ns =
        u32::try_from(ns).map_err(|_| Error::new("seccomp filter: clone flags above 32 bits"))?;
    p.push(stmt(BPF_LD_W_ABS, data_arg_low(0)));
    p.push(jump(BPF_JSET_K, ns, 0, 1));
    p.push(stmt(BPF_RET_K, RET_ERRNO | libc::EPERM as u32));
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    if p.len() != ioctl_at {
        return Err(Error::new("seccomp filter: the ioctl block is misplaced"));
    }
    // ioctl: EPERM for the denied requests (arg 1).
    p.push(stmt(BPF_LD_W_ABS, data_arg_low(1)));
    let [(_, a), (_, b)] = DENIED_IOCTLS else {
        return Err(Error::new("seccomp filter: two denied ioctls expected"));
    };
    p.push(jump(BPF_JEQ_K, *a as u32, 2, 0));
    p.push(jump(BPF_JEQ_K, *b as u32, 1, 0));
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    p.push(stmt(BPF_RET_K, RET_ERRNO | libc::EPERM as u32));
    if p.len() != personality_at {
        return Err(Error::new("seccomp filter: the ioctl block is misplaced"));
    }
    // personality: only the allowed values (arg 0), EPERM otherwise.
    p.push(stmt(BPF_LD_W_ABS, data_arg_low(0)));
    let n = PERSONALITY_ALLOWED.len();
    for (i, v) in PERSONALITY_ALLOWED.iter().enumerate() {
        // To the ALLOW after the EPERM that ends the block.
        p.push(jump(BPF_JEQ_K, *v as u32, (n - i) as u8, 0));
    }
    p.push(stmt(BPF_RET_K, RET_ERRNO | libc::EPERM as u32));
    p.push(stmt(BPF_RET_K, RET_ALLOW));
    if p.len() > u16::MAX as usize {
        return Err(Error::new("seccomp filter: too long"));
    }
    Ok(p)
}

#[cfg(test)]
fn arch() -> Result<TargetArch, Error> {
    TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| Error::new(format!("seccomp on {}: {e}", std::env::consts::ARCH)))
}

#[cfg(test)]
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

#[cfg(test)]
fn equal(arg: u8, value: u64) -> Result<SeccompRule, Error> {
    let cond = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value)
        .map_err(|e| Error::new(format!("seccomp rule: {e}")))?;
    SeccompRule::new(vec![cond]).map_err(|e| Error::new(format!("seccomp rule: {e}")))
}

/// The same rules compiled by `seccompiler`: (deny-list, clone3), the two
/// filters liftoff used to load; the tests' reference for [`emit`].
#[cfg(test)]
fn reference() -> Result<(BpfProgram, BpfProgram), Error> {
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
    Ok((deny, clone3))
}

fn compile() -> Result<Programs, Error> {
    Ok(Programs {
        deny: emit(audit_arch()?)?,
    })
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
    // sock_filter has the kernel's layout. A raw call: errno is left alone.
    unsafe {
        super::sys::call3(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as usize,
            0,
            &fprog as *const libc::sock_fprog as usize,
        )
    }
    .map(|_| ())
}

/// Child side: installs the filter (needs no_new_privs).
pub(crate) fn apply(p: &Programs) -> Result<(), i32> {
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
        assert!(denied().iter().any(|(n, _)| *n == "keyctl"));
    }

    /// A classic BPF interpreter for what both programs use.
    fn run(prog: &[sock_filter], data: &[u32; 16]) -> u32 {
        run_counted(prog, data).0
    }

    /// [`run`], and how many instructions it took.
    fn run_counted(prog: &[sock_filter], data: &[u32; 16]) -> (u32, usize) {
        let (mut a, mut pc, mut steps) = (0u32, 0usize, 0usize);
        loop {
            steps += 1;
            let i = &prog[pc];
            let class = i.code & 0x07;
            match (class, i.code) {
                (0x00, 0x20) => a = data[(i.k / 4) as usize],
                (0x04, _) if i.code & 0xf0 == 0x50 => a &= i.k, // ALU AND K
                (0x05, _) => {
                    let taken = match i.code & 0xf0 {
                        0x00 => {
                            pc += i.k as usize + 1;
                            continue;
                        }
                        0x10 => a == i.k,
                        0x20 => a > i.k,
                        0x30 => a >= i.k,
                        0x40 => a & i.k != 0,
                        c => panic!("jump {c:#x}"),
                    };
                    pc += 1 + if taken { i.jt as usize } else { i.jf as usize };
                    continue;
                }
                (0x06, _) => return (i.k, steps),
                _ => panic!("opcode {:#x}", i.code),
            }
            pc += 1;
        }
    }

    /// Two stacked filters: the most restrictive action wins (ERRNO over
    /// ALLOW); between two ERRNOs, the later-installed filter's (deny).
    fn stacked(first: u32, last: u32) -> u32 {
        let rank = |r: u32| match r & 0xffff_0000 {
            0x7fff_0000 => 3,
            0x0005_0000 => 2,
            _ => 0,
        };
        if rank(last) <= rank(first) {
            last
        } else {
            first
        }
    }

    #[test]
    fn the_one_program_judges_as_the_two_seccompiler_filters() {
        let (deny, clone3) = reference().unwrap();
        let arch = audit_arch().unwrap();
        let ours = emit(arch).unwrap();
        assert!(
            ours.len() < deny.len() / 2,
            "{} vs {}",
            ours.len(),
            deny.len()
        );
        let args: Vec<u64> = vec![
            0,
            1,
            0x8,
            0x11,
            0x20000,
            0x20008,
            0xffff_ffff,
            0x5412,
            0x541C,
            0x5413,
            libc::CLONE_NEWNS as u64,
            libc::CLONE_NEWUSER as u64 | libc::SIGCHLD as u64,
            libc::CLONE_NEWNET as u64,
            libc::CLONE_NEWCGROUP as u64,
            0x80,
            libc::CLONE_VM as u64 | libc::CLONE_THREAD as u64,
            0x1_0000_0000,
            0x1_0000_5412,
        ];
        let mut checked = 0;
        for nr in 0..600u32 {
            for (i, x) in args.iter().enumerate() {
                let y = args[(i * 7 + 3) % args.len()];
                let mut d = [0u32; 16];
                d[0] = nr;
                d[1] = arch;
                for (k, v) in [*x, y, *x, y, 0, 0].iter().enumerate() {
                    d[4 + 2 * k] = *v as u32;
                    d[5 + 2 * k] = (*v >> 32) as u32;
                }
                let want = stacked(run(&clone3, &d), run(&deny, &d));
                assert_eq!(run(&ours, &d), want, "nr {nr} args {x:#x} {y:#x}");
                checked += 1;
            }
        }
        assert!(checked > 10_000);
        // Every call number is decided in a few steps (a search, not a
        // chain of one comparison per denied call): the install cost.
        let most = (0..600u32)
            .map(|nr| {
                let mut d = [0u32; 16];
                d[0] = nr;
                d[1] = arch;
                run_counted(&ours, &d).1
            })
            .max()
            .unwrap();
        assert!(most <= 16, "{most} steps for some call number");
        // Another architecture is killed, as seccompiler's filters do.
        let mut d = [0u32; 16];
        d[1] = arch ^ 1;
        assert_eq!(run(&ours, &d), RET_KILL_PROCESS);
        assert_eq!(run(&deny, &d), RET_KILL_PROCESS);
    }
}
