//! The child side of [`super::spawn`]: everything between `clone(2)` and
//! `execve(2)`. Only system calls on data the parent prepared ([`ChildPlan`]):
//! no allocation, no locks, no panics, so it is safe after cloning a
//! multi-threaded launcher.
//!
//! Order (runtime liftoff), in [`run_init`]: PDEATHSIG → wait for the go →
//! uid/gid 1983 → hostname → loopback → mount plan up to /proc → wait for
//! the cgroups (the launcher completes them meanwhile) and join the v1 ones
//! → cgroup namespace → start the job ([`spawn_job`], [`run_job`]: it
//! prepares itself meanwhile) → the rest of the plan (/proc, pivot_root,
//! old root detached) → tell the job the root is finished → become init
//! ([`super::init::serve`]).
//! Runtimes landlock/none: [`run_direct`] (the child is the job; it waits
//! for the cgroups right after the go).
//!
//! Errors go to the parent through the error pipe as (step, errno); the
//! parent turns the step number into words ([`describe`]).

use std::ffi::CString;

use super::landlock::Rules;
use super::mounts::Op;
use super::rlimits::Rlimit;
use super::seccomp::Programs;
use super::{JOB_ID, init, namespaces, rlimits, seccomp};

pub(crate) const STEP_SYNC: u32 = 1;
pub(crate) const STEP_SETGROUPS: u32 = 2;
pub(crate) const STEP_SETGID: u32 = 3;
pub(crate) const STEP_SETUID: u32 = 4;
pub(crate) const STEP_CGROUPNS: u32 = 5;
pub(crate) const STEP_HOSTNAME: u32 = 6;
pub(crate) const STEP_LOOPBACK: u32 = 7;
pub(crate) const STEP_FORK: u32 = 8;
pub(crate) const STEP_SETSID: u32 = 9;
pub(crate) const STEP_STDIO: u32 = 10;
pub(crate) const STEP_RLIMITS: u32 = 11;
pub(crate) const STEP_CAPS: u32 = 12;
pub(crate) const STEP_NNP: u32 = 13;
pub(crate) const STEP_LANDLOCK: u32 = 14;
pub(crate) const STEP_CWD: u32 = 15;
pub(crate) const STEP_SECCOMP: u32 = 16;
pub(crate) const STEP_EXEC: u32 = 17;
pub(crate) const STEP_PDEATHSIG: u32 = 18;
pub(crate) const STEP_CGROUP: u32 = 19;
pub(crate) const STEP_MOUNT: u32 = 1000;
/// Marks of the phase clock only ([`Trace`]), never errors.
pub(crate) const MARK_GO: u32 = 900;
pub(crate) const MARK_RUNNING: u32 = 903;
pub(crate) const MARK_JOB: u32 = 901;
pub(crate) const MARK_READY: u32 = 902;

/// The child's phase clock (`LIFTOFF_EXEC_TIMINGS`): (mark, CLOCK_MONOTONIC
/// ns) pairs that init and the job append, with system calls only, to a
/// page shared with the launcher (mapped before the clone). Off (null)
/// unless asked for: no cost then.
pub(crate) struct Trace {
    /// `[count, (mark, ns)...]`; null when off.
    page: *mut u64,
}

/// Pairs a trace page holds.
const TRACE_SLOTS: usize = (TRACE_PAGE / 8 - 1) / 2;
const TRACE_PAGE: usize = 8192;

impl Trace {
    pub(crate) fn off() -> Trace {
        Trace {
            page: std::ptr::null_mut(),
        }
    }

    /// A shared page for the child's marks; off when it cannot be mapped.
    pub(crate) fn new() -> Trace {
        // SAFETY: a fresh anonymous shared mapping, unmapped in Drop.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                TRACE_PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Trace::off();
        }
        Trace {
            page: p as *mut u64,
        }
    }

    /// CLOCK_MONOTONIC in ns (the clock of `Instant`).
    pub(crate) fn now() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime into a stack timespec.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// Child side: appends (mark, now).
    pub(crate) fn mark(&self, mark: u32) {
        if self.page.is_null() {
            return;
        }
        let now = Trace::now();
        // SAFETY: the page is mapped for the child's whole life; the count
        // is claimed atomically (init and the job may both write).
        unsafe {
            let count = &*(self.page as *const std::sync::atomic::AtomicU64);
            let i = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) as usize;
            if i < TRACE_SLOTS {
                *self.page.add(1 + 2 * i) = mark as u64;
                *self.page.add(2 + 2 * i) = now;
            }
        }
    }

    /// Parent side: the marks written so far.
    pub(crate) fn read(&self) -> Vec<(u32, u64)> {
        if self.page.is_null() {
            return Vec::new();
        }
        // SAFETY: reading the shared page; the child wrote whole slots
        // before the launcher reads (after the job's exec).
        unsafe {
            let count = &*(self.page as *const std::sync::atomic::AtomicU64);
            let n = (count.load(std::sync::atomic::Ordering::Acquire) as usize).min(TRACE_SLOTS);
            (0..n)
                .map(|i| (*self.page.add(1 + 2 * i) as u32, *self.page.add(2 + 2 * i)))
                .collect()
        }
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if !self.page.is_null() {
            // SAFETY: unmapping the page mapped in `new`.
            unsafe { libc::munmap(self.page as *mut libc::c_void, TRACE_PAGE) };
        }
    }
}

/// Words for a step number (parent side).
pub(crate) fn describe(step: u32, ops: &[(Op, String)], program: &str) -> String {
    match step {
        STEP_SYNC => "waiting for the launcher".into(),
        STEP_SETGROUPS => "dropping supplementary groups".into(),
        STEP_SETGID => format!("setting gid {JOB_ID}"),
        STEP_SETUID => format!("setting uid {JOB_ID}"),
        STEP_CGROUPNS => "creating the cgroup namespace".into(),
        STEP_HOSTNAME => "setting the hostname".into(),
        STEP_LOOPBACK => "bringing up the loopback interface".into(),
        STEP_FORK => "forking the job from init".into(),
        STEP_SETSID => "starting a new session".into(),
        STEP_STDIO => "connecting stdin/stdout/stderr".into(),
        STEP_RLIMITS => "setting rlimits".into(),
        STEP_CAPS => "dropping capabilities".into(),
        STEP_NNP => "setting no_new_privs".into(),
        STEP_LANDLOCK => "applying landlock rules".into(),
        STEP_CWD => "changing to the working directory".into(),
        STEP_SECCOMP => "installing the seccomp filter".into(),
        STEP_EXEC => format!("executing {program:?}"),
        STEP_PDEATHSIG => "setting the parent-death signal".into(),
        STEP_CGROUP => "joining the job's v1 cgroups".into(),
        s if s >= STEP_MOUNT => ops
            .get((s - STEP_MOUNT) as usize)
            .map(|(_, w)| w.clone())
            .unwrap_or_else(|| format!("mount step {}", s - STEP_MOUNT)),
        s => format!("step {s}"),
    }
}

/// Everything the child needs, prepared by the parent.
pub(crate) struct ChildPlan {
    pub ops: Vec<(Op, String)>,
    pub hostname: Option<CString>,
    pub loopback: bool,
    pub cgroupns: bool,
    /// Where in `ops` init starts the job (`ops.len()`: after all of them,
    /// the job suspends init; before: they prepare at once, see
    /// [`spawn_job`]).
    pub job_at: usize,
    /// The pipe on which init tells an early job the root is finished.
    pub ready_r: i32,
    pub ready_w: i32,
    /// Drop supplementary groups (a root launcher can; an unprivileged one
    /// has setgroups denied).
    pub drop_groups: bool,
    /// Runtime landlock/none as root: the host ids to become.
    pub become_host: Option<(u32, u32)>,
    pub landlock: Option<Rules>,
    pub seccomp: Option<&'static Programs>,
    pub rlimits: Vec<Rlimit>,
    /// execve candidates (PATH lookup done in the parent).
    pub exec_paths: Vec<CString>,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
    pub cwd: CString,
    /// Child ends for fds 0, 1, 2; -1 = inherit.
    pub stdio: [i32; 3],
    /// The launcher's socket: the go, then the cgroups' readiness with the
    /// v1 `tasks` files to join ([`wait_for_cgroups`]).
    pub sync_fd: i32,
    pub err_fd: i32,
    pub status_fd: i32,
    pub trace: Trace,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn fail(err_fd: i32, step: u32, errno: i32) -> ! {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&step.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write of a stack buffer, then _exit (no destructors run).
    unsafe {
        libc::write(err_fd, buf.as_ptr() as *const libc::c_void, buf.len());
        libc::_exit(125)
    }
}

fn ok_or_fail(err_fd: i32, step: u32, r: Result<(), i32>) {
    if let Err(e) = r {
        fail(err_fd, step, e)
    }
}

fn sys(r: libc::c_int) -> Result<(), i32> {
    if r < 0 { Err(errno()) } else { Ok(()) }
}

/// PDEATHSIG, then block until the parent says go (EOF: the parent died).
fn wait_for_go(plan: &ChildPlan) {
    // SAFETY: prctl with constant arguments.
    ok_or_fail(
        plan.err_fd,
        STEP_PDEATHSIG,
        sys(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) }),
    );
    let mut b = [0u8; 1];
    loop {
        // SAFETY: read into a one-byte stack buffer.
        let n = unsafe { libc::read(plan.sync_fd, b.as_mut_ptr() as *mut libc::c_void, 1) };
        if n == 1 {
            break;
        }
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        // The launcher is gone or gave up.
        // SAFETY: _exit ends the child without running anything else.
        unsafe { libc::_exit(125) };
    }
}

/// Most v1 `tasks` files the launcher sends (pids, memory, cpu).
const MAX_TASK_FDS: usize = 4;

/// Waits for the launcher's second message: the job's cgroups are complete
/// (limits written), with the v1 `tasks` files (opened by the launcher) to
/// join: "0" moves this process itself, which skips the threadgroup lock
/// and its RCU grace period that writing a pid costs. Closes the socket.
/// A hang-up means the launcher is gone: exit.
fn wait_for_cgroups(plan: &ChildPlan) {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // u64s: aligned for cmsghdr. CMSG_SPACE of MAX_TASK_FDS ints.
    let mut control = [0u64; 8];
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the
    // recvmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    let n = loop {
        // SAFETY: recvmsg into the stack buffers described by `msg`.
        let n = unsafe { libc::recvmsg(plan.sync_fd, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        break n;
    };
    if n != 1 {
        // SAFETY: _exit ends the child without running anything else.
        unsafe { libc::_exit(125) };
    }
    let mut fds = [-1i32; MAX_TASK_FDS];
    let mut count = 0;
    // SAFETY: walking the control messages recvmsg filled in, within
    // `msg_controllen`; each SCM_RIGHTS payload is an array of ints.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c) as *const i32;
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..len / std::mem::size_of::<i32>() {
                    let fd = std::ptr::read_unaligned(data.add(i));
                    if count < MAX_TASK_FDS {
                        fds[count] = fd;
                        count += 1;
                    } else {
                        libc::close(fd);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    for fd in &fds[..count] {
        // SAFETY: write of a constant to an fd the launcher opened; close it.
        let r = unsafe { libc::write(*fd, b"0".as_ptr() as *const libc::c_void, 1) };
        if r < 0 {
            fail(plan.err_fd, STEP_CGROUP, errno());
        }
        // SAFETY: closing the received fd.
        unsafe { libc::close(*fd) };
    }
    // SAFETY: closing our end of the launcher's socket.
    unsafe { libc::close(plan.sync_fd) };
}

/// The launcher keeps its end of the sync socket for the job's lifetime: a
/// hang-up means it died before PDEATHSIG was (re)armed.
fn launcher_alive(plan: &ChildPlan) {
    let mut p = libc::pollfd {
        fd: plan.sync_fd,
        events: 0,
        revents: 0,
    };
    // SAFETY: poll of one valid pollfd without waiting.
    let r = unsafe { libc::poll(&mut p, 1, 0) };
    if r > 0 && p.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
        // SAFETY: _exit ends the child.
        unsafe { libc::_exit(125) };
    }
}

/// Pid 1 of the new namespaces (runtime liftoff). Never returns.
pub(crate) fn run_init(plan: &ChildPlan) -> ! {
    let e = plan.err_fd;
    plan.trace.mark(MARK_RUNNING);
    wait_for_go(plan);
    plan.trace.mark(MARK_GO);
    // The namespace's root (0) is unmapped, so the job id keeps our
    // capabilities inside the namespace until the job drops them.
    become_ids(e, plan.drop_groups, JOB_ID, JOB_ID);
    launcher_alive(plan);
    if let Some(h) = &plan.hostname {
        ok_or_fail(e, STEP_HOSTNAME, namespaces::set_hostname(h));
    }
    if plan.loopback {
        ok_or_fail(e, STEP_LOOPBACK, namespaces::loopback_up());
    }
    plan.trace.mark(STEP_LOOPBACK);
    // The mount plan up to where the job starts (`job_at`: all of it when
    // the job waits for init).
    let (first, rest) = plan.ops.split_at(plan.job_at.min(plan.ops.len()));
    for (i, (op, _)) in first.iter().enumerate() {
        ok_or_fail(e, STEP_MOUNT + i as u32, op.run());
        plan.trace.mark(STEP_MOUNT + i as u32);
    }
    // The launcher completed the cgroups meanwhile; join them, then the
    // cgroup namespace is rooted at them.
    wait_for_cgroups(plan);
    if plan.cgroupns {
        // SAFETY: unshare with a constant flag.
        ok_or_fail(
            e,
            STEP_CGROUPNS,
            sys(unsafe { libc::unshare(libc::CLONE_NEWCGROUP) }),
        );
    }
    plan.trace.mark(STEP_CGROUP);
    // Init is a copy of the launcher's memory: never dumpable, so the job
    // cannot read its /proc files (environ, mem, maps) even under an
    // unprivileged launcher, where the uid change above was a no-op. (The
    // job shares this memory until its execve, which gives it its own.)
    // SAFETY: prctl with constant arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // Block every signal before the fork: init takes them with sigwaitinfo.
    let all = init::block_all();
    let early = !rest.is_empty();
    let pid = spawn_job(plan, early);
    if pid < 0 {
        fail(e, STEP_FORK, errno());
    }
    // The rest of the plan while the job prepares itself; then the job may
    // go on (landlock, cwd, execve in the finished root).
    for (i, (op, _)) in rest.iter().enumerate() {
        let i = first.len() + i;
        ok_or_fail(e, STEP_MOUNT + i as u32, op.run());
        plan.trace.mark(STEP_MOUNT + i as u32);
    }
    if early {
        // SAFETY: one byte from a stack buffer to the job's pipe (EPIPE if
        // the job already failed: SIGPIPE is blocked, the job's error is in
        // the error pipe).
        unsafe { libc::write(plan.ready_w, [1u8].as_ptr() as *const libc::c_void, 1) };
    }
    // SAFETY: closing init's copies: the error pipe (so the parent sees EOF
    // at the job's exec) and every other fd but the status pipe.
    unsafe {
        libc::close(plan.err_fd);
        let s = plan.status_fd as libc::c_uint;
        if s > 0 {
            libc::syscall(libc::SYS_close_range, 0u32, s - 1, 0u32);
        }
        libc::syscall(libc::SYS_close_range, s + 1, u32::MAX, 0u32);
    }
    init::serve(pid, plan.status_fd, &all)
}

/// The job's stack while it shares init's memory (until its execve).
const JOB_STACK: usize = 256 << 10;

/// Starts the job as posix_spawn does: a clone sharing init's memory
/// (CLONE_VM) on a stack of its own. No copy of the launcher's page tables,
/// no copy-on-write faults in either process, and the job's execve drops a
/// reference instead of tearing a copied address space down. Not libc's
/// fork(): it runs atfork handlers and takes malloc locks that another
/// launcher thread may have held at clone time.
///
/// `early`: init goes on with the rest of the mount plan while the job
/// prepares itself (session, signals, limits, capabilities, seccomp) and
/// waits for init's word ([`ChildPlan::ready_r`]) before landlock, cwd and
/// execve. The job then makes raw system calls only ([`super::sys`]): init's
/// calls set the `errno` they share. Otherwise (CLONE_VFORK) init is
/// suspended until the job's execve or exit. Returns the job's pid, or -1
/// (errno set).
fn spawn_job(plan: &ChildPlan, early: bool) -> libc::pid_t {
    extern "C" fn entry(arg: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `arg` is the `&ChildPlan` passed below, in a frame of
        // init that is never left.
        let plan = unsafe { &*(arg as *const ChildPlan) };
        run_job(plan, plan.job_at < plan.ops.len())
    }
    // SAFETY: a fresh anonymous mapping for the job's stack; init never
    // unmaps it (it exits when the job does, its memory goes with it).
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            JOB_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return -1;
    }
    // A guard page below the stack: an overflow faults, never writes into
    // init's memory.
    // SAFETY: the lowest page of the mapping made above.
    if unsafe { libc::mprotect(stack, 4096, libc::PROT_NONE) } != 0 {
        return -1;
    }
    // SAFETY: the job runs `entry` on the top of its own stack in init's
    // memory; it only makes system calls on `plan` (no allocation, no
    // locks; its signal handlers are its own copy without CLONE_SIGHAND)
    // until execve or _exit. `plan` lives in a frame init never leaves, and
    // init only reads it; with `early` both run at once (raw calls in the
    // job, see above), else init is suspended until the job's execve.
    unsafe {
        libc::clone(
            entry,
            (stack as *mut u8).add(JOB_STACK) as *mut libc::c_void,
            if early {
                libc::CLONE_VM | libc::SIGCHLD
            } else {
                libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD
            },
            plan as *const ChildPlan as *mut libc::c_void,
        )
    }
}

/// Runtimes landlock and none: the clone child is the job. Never returns.
/// The OOM score every job runs with: the job is the first thing the OOM
/// killer takes, never the launcher (which runs at -900 under systemd).
/// `spawn` sets it on the child before the go, so everything it forks
/// inherits it.
pub const JOB_OOM_SCORE_ADJ: &str = "500";

/// Drops supplementary groups (when asked), then sets gid and uid, then
/// PDEATHSIG again (credential changes clear it). Raw system calls: libc's
/// wrappers broadcast to the launcher's other threads, which this copy of
/// the process does not have.
fn become_ids(e: i32, drop_groups: bool, uid: u32, gid: u32) {
    if drop_groups {
        // SAFETY: setgroups with an empty list.
        ok_or_fail(
            e,
            STEP_SETGROUPS,
            sys(unsafe {
                libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>())
                    as libc::c_int
            }),
        );
    }
    // SAFETY: setresgid with one id for real, effective and saved.
    ok_or_fail(
        e,
        STEP_SETGID,
        sys(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) as libc::c_int }),
    );
    // SAFETY: setresuid with one id for real, effective and saved.
    ok_or_fail(
        e,
        STEP_SETUID,
        sys(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) as libc::c_int }),
    );
    set_pdeathsig(e);
}

fn set_pdeathsig(e: i32) {
    // SAFETY: prctl with constant arguments.
    ok_or_fail(
        e,
        STEP_PDEATHSIG,
        sys(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) }),
    );
}

pub(crate) fn run_direct(plan: &ChildPlan) -> ! {
    wait_for_go(plan);
    let e = plan.err_fd;
    match plan.become_host {
        // Leaving host root: no groups, then gid, then uid.
        Some((uid, gid)) => become_ids(e, true, uid, gid),
        None => set_pdeathsig(e),
    }
    launcher_alive(plan);
    wait_for_cgroups(plan);
    run_job(plan, false)
}

/// A raw system call in the job ([`super::sys`]): the kernel's error or
/// the value.
fn job_call(nr: libc::c_long, a: [usize; 6]) -> Result<usize, i32> {
    // SAFETY: every caller passes arguments valid for `nr` (constants, fds,
    // pointers into `plan` or the stack).
    unsafe { super::sys::call(nr, a) }
}

/// Reports (step, errno) on the error pipe and exits, with raw calls.
fn job_fail(err_fd: i32, step: u32, errno: i32) -> ! {
    let mut buf = [0u8; 8];
    buf[..4].copy_from_slice(&step.to_ne_bytes());
    buf[4..].copy_from_slice(&errno.to_ne_bytes());
    let _ = job_call(
        libc::SYS_write,
        [err_fd as usize, buf.as_ptr() as usize, buf.len(), 0, 0, 0],
    );
    let _ = job_call(libc::SYS_exit, [125, 0, 0, 0, 0, 0]);
    // exit does not return.
    #[allow(clippy::empty_loop)]
    loop {}
}

fn job_ok(err_fd: i32, step: u32, r: Result<usize, i32>) {
    if let Err(e) = r {
        job_fail(err_fd, step, e)
    }
}

/// The job: session, stdio, signals, limits, privileges, landlock, cwd,
/// seccomp, exec. Never returns. Raw system calls only (`early`: init runs
/// at the same time in the same memory). `early`: seccomp comes before the
/// wait for init's finished root, then landlock and cwd in it.
fn run_job(plan: &ChildPlan, early: bool) -> ! {
    let e = plan.err_fd;
    plan.trace.mark(MARK_JOB);
    let pdeathsig = [
        libc::PR_SET_PDEATHSIG as usize,
        libc::SIGKILL as usize,
        0,
        0,
        0,
        0,
    ];
    job_ok(e, STEP_PDEATHSIG, job_call(libc::SYS_prctl, pdeathsig));
    if early {
        // Only init writes it: a hang-up then means init is gone.
        let _ = job_call(libc::SYS_close, [plan.ready_w as usize, 0, 0, 0, 0, 0]);
    }
    // A new session: no controlling terminal to inject input into.
    job_ok(e, STEP_SETSID, job_call(libc::SYS_setsid, [0; 6]));
    for (target, fd) in plan.stdio.iter().enumerate() {
        if *fd < 0 {
            continue;
        }
        let r = if *fd as usize == target {
            // Already there (the launcher had it closed): keep it at exec.
            job_call(
                libc::SYS_fcntl,
                [target, libc::F_SETFD as usize, 0, 0, 0, 0],
            )
        } else {
            // dup3 with no flags: as dup2, without CLOEXEC on the copy.
            job_call(libc::SYS_dup3, [*fd as usize, target, 0, 0, 0, 0])
        };
        job_ok(e, STEP_STDIO, r);
    }
    // Every fd above 2 closes at exec (the launcher's included).
    let _ = job_call(
        libc::SYS_close_range,
        [
            3,
            u32::MAX as usize,
            libc::CLOSE_RANGE_CLOEXEC as usize,
            0,
            0,
            0,
        ],
    );
    init::reset_signals();
    plan.trace.mark(STEP_STDIO);
    job_ok(e, STEP_RLIMITS, rlimits::apply(&plan.rlimits).map(|_| 0));
    job_ok(e, STEP_CAPS, drop_capabilities().map(|_| 0));
    plan.trace.mark(STEP_CAPS);
    let nnp = [libc::PR_SET_NO_NEW_PRIVS as usize, 1, 0, 0, 0, 0];
    job_ok(e, STEP_NNP, job_call(libc::SYS_prctl, nnp));
    if early {
        if let Some(p) = plan.seccomp {
            job_ok(e, STEP_SECCOMP, seccomp::apply(p).map(|_| 0));
        }
        plan.trace.mark(STEP_SECCOMP);
        let mut b = [0u8; 1];
        let n = loop {
            let r = job_call(
                libc::SYS_read,
                [plan.ready_r as usize, b.as_mut_ptr() as usize, 1, 0, 0, 0],
            );
            if r != Err(libc::EINTR) {
                break r;
            }
        };
        if n != Ok(1) {
            // Init is gone (it reported its error): stop here.
            let _ = job_call(libc::SYS_exit, [125, 0, 0, 0, 0, 0]);
        }
        plan.trace.mark(MARK_READY);
    }
    if let Some(rules) = &plan.landlock {
        job_ok(e, STEP_LANDLOCK, rules.apply().map(|_| 0));
    }
    plan.trace.mark(STEP_LANDLOCK);
    let cwd = [plan.cwd.as_ptr() as usize, 0, 0, 0, 0, 0];
    job_ok(e, STEP_CWD, job_call(libc::SYS_chdir, cwd));
    if !early {
        if let Some(p) = plan.seccomp {
            job_ok(e, STEP_SECCOMP, seccomp::apply(p).map(|_| 0));
        }
    }
    plan.trace.mark(STEP_CWD);
    let mut last = libc::ENOENT;
    for path in &plan.exec_paths {
        let args = [
            path.as_ptr() as usize,
            plan.argv.as_ptr() as usize,
            plan.envp.as_ptr() as usize,
            0,
            0,
            0,
        ];
        let err = match job_call(libc::SYS_execve, args) {
            Ok(_) => continue,
            Err(err) => err,
        };
        if err != libc::ENOENT && err != libc::ENOTDIR {
            last = err;
        }
        if last != libc::ENOENT {
            break;
        }
    }
    job_fail(e, STEP_EXEC, last)
}

/// Drops every capability: bounding set, ambient, then the three sets.
/// Raw system calls ([`super::sys`]).
fn drop_capabilities() -> Result<(), i32> {
    for cap in 0..64usize {
        // PR_CAPBSET_DROP with a capability number; EINVAL past the last
        // capability is expected.
        let r = job_call(
            libc::SYS_prctl,
            [libc::PR_CAPBSET_DROP as usize, cap, 0, 0, 0, 0],
        );
        match r {
            Ok(_) => {}
            Err(libc::EINVAL) => break,
            // EPERM: no CAP_SETPCAP (runtime landlock as a plain user): the
            // bounding set cannot matter without capabilities.
            Err(libc::EPERM) => {}
            Err(e) => return Err(e),
        }
    }
    let _ = job_call(
        libc::SYS_prctl,
        [
            libc::PR_CAP_AMBIENT as usize,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as usize,
            0,
            0,
            0,
            0,
        ],
    );
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let header = Header {
        version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
        pid: 0,
    };
    let data = [
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // capset with a v3 header and two data structs.
    job_call(
        libc::SYS_capset,
        [
            &header as *const Header as usize,
            data.as_ptr() as usize,
            0,
            0,
            0,
            0,
        ],
    )
    .map(|_| ())
}
