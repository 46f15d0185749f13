//! One isolated process tree: a [`SandboxSpec`] becomes a running job.
//!
//! The sandbox knows nothing of runs. A caller (the `liftoff exec` command,
//! the run executor) builds a spec, calls [`spawn`], reads the job's stdout and
//! stderr from the [`Sandbox`] pipes, and waits ([`Sandbox::wait`],
//! [`Sandbox::wait_timeout`], or poll [`Sandbox::pidfd`]; a launcher about
//! to exit polls [`Sandbox::exit_fd`] and calls [`Sandbox::wait_detached`],
//! which leaves init's exit and the cgroups' removal off its path), or ends
//! it ([`Sandbox::terminate`] = SIGTERM to the tree, grace, SIGKILL of all).
//!
//! # Setup order (runtime `liftoff`)
//!
//! In the launcher (parent), [`spawn`]:
//! 1. builds everything the child needs (`plan`): mount operations, the
//!    job's /etc and a detached copy (open_tree) of each host directory to
//!    bind, so the job's host id need not pass through its parents
//!    ([`mounts`]), landlock rules ([`landlock`]), the seccomp BPF
//!    ([`seccomp`], compiled once), rlimits ([`rlimits`]), argv/env as C
//!    strings. The child only makes system calls: it never allocates, so
//!    spawning from a multi-threaded launcher is safe. A root launcher
//!    with the host's root first gets the ready-made root ([`pin`]: pinned,
//!    or built and pinned now) and plans only the job's own mounts over it
//!    ([`mounts::job_plan`]);
//! 2. creates the job's v2 cgroup directory, which the clone enters
//!    ([`cgroup::JobCgroup::begin`]; an unprivileged launcher makes all of
//!    its cgroups here);
//! 3. for a named network namespace, enters it on this thread ([`namespaces`]);
//! 4. `clone(2)` with CLONE_NEWUSER|NEWNS|NEWPID|NEWIPC|NEWUTS(|NEWNET) at
//!    once, into the v2 cgroup; with a ready-made root, from inside its
//!    mount namespace ([`pin::Entered`]), so the new one is a copy of it;
//! 5. writes the child's uid/gid maps (1983 inside = an unprivileged id
//!    outside) and lets it go (a seqpacket socket); then, while the child
//!    mounts, completes the cgroups (v1 directories, controllers, limits:
//!    [`cgroup::JobCgroup::finish`]), sets the child's OOM score, and sends
//!    it the v1 `tasks` files to join;
//! 6. reads the error pipe until EOF (the job's exec) or a setup error.
//!
//! In the child, pid 1 of the new pid namespace ([`child`]):
//! 1. PDEATHSIG=SIGKILL, waits for the go; becomes uid/gid 1983 (keeping its
//!    capabilities inside the namespace), hostname, loopback up (network
//!    none);
//! 2. runs the mount plan: private propagation, the root tmpfs on /tmp
//!    (below a staging pivot_root only when something is bound by path from
//!    below /tmp), binds into it (host directories attached from the
//!    launcher's fds with move_mount), /dev, /etc, ... (over a ready-made
//!    root, which is already the root: the workspace, /tmp, home, extra
//!    mounts, devpts, /dev/shm, /proc);
//! 3. before /proc: waits for the launcher's cgroups, joins the v1 ones,
//!    enters a new cgroup namespace, and starts the job (CLONE_VM on a
//!    stack of its own), which prepares itself while init goes on: /proc,
//!    pivot_root(".", "."), old root detached, / read-only; then init tells
//!    the job the root is finished and becomes the reaping init ([`init`]).
//!
//! In the job: new session, stdio, fds closed on exec, signals reset,
//! rlimits, bounding set and capabilities dropped, no_new_privs, seccomp
//! (it forbids what setup needed; the rest below is allowed), then, in the
//! finished root, landlock, cwd, execve. Raw system calls only ([`sys`]:
//! init runs at the same time in the same memory). Where there are no raw
//! calls, init starts the job after its whole plan and waits for its exec
//! (CLONE_VFORK), and seccomp comes last.
//!
//! Runtime `landlock` skips the namespaces and the mount plan (the job is the
//! direct child, host paths); runtime `none` only cleans the environment.

pub mod cancel;
pub mod cgroup;
mod child;
mod defaults;
pub mod hostcheck;
mod init;
pub mod landlock;
pub mod mounts;
pub mod namespaces;
pub mod pin;
mod pipes;
pub mod rlimits;
pub mod sched;
pub mod seccomp;
mod spawn;
mod sys;

use std::fmt;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use crate::config::{LandlockMode, Network, Runtime};
pub use spawn::{spawn, time_child_phases};

/// The job's uid and gid inside the sandbox (the seed's runner convention).
pub const JOB_ID: u32 = 1983;
/// The job's user name and home inside the sandbox.
pub const JOB_USER: &str = "spacelift";
pub const JOB_HOME: &str = "/home/spacelift";
/// Where the workspace is mounted inside the sandbox.
pub const WORKSPACE: &str = "/mnt/workspace";
/// The host uid/gid a root launcher maps the job to: unprivileged, outside
/// the usual ranges of users (1000+) and of subordinate ids (100000+65536*n
/// for the first few thousand users).
pub const DEFAULT_HOST_ID: u32 = 1_983_000_000;

/// What the job's standard streams are connected to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// The launcher's own stream.
    Inherit,
    /// /dev/null.
    Null,
    /// A pipe; the launcher end is in [`Sandbox::stdin`] / `stdout` / `stderr`.
    Piped,
    /// stderr only: the same pipe as a piped stdout, so the launcher reads
    /// both streams in the order the job wrote them (`Sandbox::stdout`).
    Merged,
}

/// A bind mount from the host into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub writable: bool,
}

/// Resource limits of one job.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Memory limit in bytes (cgroup); `None` = no limit.
    pub memory: Option<u64>,
    /// Maximum number of processes/threads (cgroup pids).
    pub pids: Option<u64>,
    /// CPU quota in CPUs (cgroup cpu).
    pub cpus: Option<f64>,
    /// RLIMIT_NOFILE.
    pub nofile: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory: None,
            pids: Some(4096),
            cpus: None,
            nofile: 65536,
        }
    }
}

/// Memory the host keeps for itself when the job limit is automatic.
pub const MEMORY_RESERVE: u64 = 384 << 20;

/// The automatic job memory limit: host memory minus [`MEMORY_RESERVE`].
pub fn auto_memory_limit() -> Option<u64> {
    // SAFETY: sysinfo fills the zeroed struct we pass and nothing else.
    let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
    // SAFETY: `info` is a valid, writable sysinfo struct.
    if unsafe { libc::sysinfo(&mut info) } != 0 {
        return None;
    }
    let total = (info.totalram as u64).saturating_mul(info.mem_unit as u64);
    Some(total.saturating_sub(MEMORY_RESERVE).max(64 << 20))
}

/// Everything the sandbox needs to start one job.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub runtime: Runtime,
    /// A root directory (an unpacked runner image) instead of the host's
    /// /usr, /bin, /sbin, /lib, /lib64.
    pub root: Option<PathBuf>,
    /// Host directory mounted read-write at /mnt/workspace.
    pub workspace: PathBuf,
    pub mounts: Vec<BindMount>,
    /// The job's whole environment (nothing is inherited).
    pub env: Vec<(String, String)>,
    pub argv: Vec<String>,
    /// Working directory inside the sandbox; default /mnt/workspace.
    pub cwd: Option<PathBuf>,
    pub hostname: String,
    pub network: Network,
    pub limits: Limits,
    pub landlock: LandlockMode,
    /// Name of the job's cgroup (unique per run).
    pub name: String,
    /// Host uid/gid the job maps to when the launcher is root.
    pub host_id: u32,
    /// CA bundle for /etc/ssl/certs/ca-certificates.crt; default: the host's.
    pub ca_bundle: Option<PathBuf>,
    /// A sandbox directory (one of `mounts`' targets) whose entries also
    /// appear in the job's /bin, over what the root's /bin holds: a
    /// read-only overlay (the run's tool as `/bin/terraform`).
    pub bin_overlay: Option<PathBuf>,
    /// Start from a ready-made root when the launcher can ([`pin`]: root,
    /// the host's root); false makes the whole root in the job's own
    /// namespace every time (`liftoff exec --fresh-root`).
    pub ready_root: bool,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
}

impl SandboxSpec {
    /// A spec with the defaults: runtime liftoff, host network, best-effort
    /// landlock, default limits, a unique name, hostname `liftoff`.
    pub fn new(workspace: impl Into<PathBuf>, argv: Vec<String>) -> Self {
        let name = unique_name();
        SandboxSpec {
            runtime: Runtime::Liftoff,
            root: None,
            workspace: workspace.into(),
            mounts: Vec::new(),
            env: default_env(),
            argv,
            cwd: None,
            hostname: "liftoff".into(),
            network: Network::Host,
            limits: Limits::default(),
            landlock: LandlockMode::BestEffort,
            name,
            host_id: DEFAULT_HOST_ID,
            ca_bundle: None,
            bin_overlay: None,
            ready_root: true,
            stdin: Stdio::Null,
            stdout: Stdio::Piped,
            stderr: Stdio::Piped,
        }
    }
}

/// PATH, HOME, USER, LANG: the environment every job starts from.
pub fn default_env() -> Vec<(String, String)> {
    vec![
        (
            "PATH".into(),
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        ),
        ("HOME".into(), JOB_HOME.into()),
        ("USER".into(), JOB_USER.into()),
        ("LANG".into(), "C.UTF-8".into()),
    ]
}

/// A name unique on this host: `liftoff-<pid>-<nanos>`.
pub fn unique_name() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!(
        "liftoff-{}-{:x}",
        std::process::id(),
        nanos & 0xffff_ffff_ffff
    )
}

/// A sandbox setup failure: the setup step that failed (as words: "mounting
/// /proc", "setting uid 1983"…), the errno the kernel gave, and the whole
/// message with the remedy when one is known. Callers decide on `step` and
/// `errno`, never by reading `message`.
#[derive(Debug)]
pub struct Error {
    pub message: String,
    /// What the launcher or the child was doing; `None` for a refusal of the
    /// spec itself (before any system call).
    pub step: Option<String>,
    /// The kernel's errno, when a system call failed.
    pub errno: Option<i32>,
}

impl Error {
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            step: None,
            errno: None,
        }
    }
    fn os(what: impl fmt::Display, err: std::io::Error) -> Self {
        Error {
            message: format!("{what}: {err}"),
            step: Some(what.to_string()),
            errno: err.raw_os_error(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// How the job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

/// The end of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    pub exit: Exit,
    /// The memory cgroup killed a process of the job.
    pub oom_killed: bool,
}

impl Outcome {
    /// The shell convention: the code, or 128+N for signal N.
    pub fn exit_code(&self) -> i32 {
        match self.exit {
            Exit::Code(c) => c,
            Exit::Signal(s) => 128 + s,
        }
    }
}

/// A running job. Dropping it kills the tree and removes its cgroups.
pub struct Sandbox {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    /// init writes the job's wait status here (runtime liftoff only).
    status: Option<File>,
    cgroup: Option<cgroup::JobCgroup>,
    outcome: Option<Outcome>,
    /// The cgroups' detached remover is already waiting for init's exit
    /// ([`Sandbox::remove_cgroups_at_exit`]).
    remover: bool,
    /// The sync socket's launcher end: closing it (launcher death) tells a
    /// child still in setup to stop.
    #[allow(dead_code)]
    lifeline: Option<File>,
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
    /// What is not enforced on this host (said once, never silently).
    pub warnings: Vec<String>,
    /// Time since `spawn` was called at each setup phase (for tuning; with
    /// [`time_child_phases`], the child's phases too).
    pub timings: Vec<(std::borrow::Cow<'static, str>, Duration)>,
}

impl Sandbox {
    /// Host pid of the tree's top process (init, or the job itself for the
    /// landlock and none runtimes).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// A pidfd of the top process: readable when it has exited (register it
    /// with an event loop, then call [`Sandbox::try_wait`]).
    pub fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.as_fd()
    }

    /// Sends `signal` to the tree: init forwards it to every process.
    pub fn signal(&self, signal: i32) -> Result<(), Error> {
        if self.outcome.is_some() {
            return Ok(());
        }
        // SAFETY: pidfd_send_signal on our own pidfd with a null siginfo.
        let r = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(Error::os(format!("signal {signal} to the job"), e));
            }
        }
        if signal != libc::SIGKILL && self.status.is_none() {
            // No init to forward it: signal the job's cgroup members too.
            if let Some(cg) = &self.cgroup {
                cg.signal_all(signal);
            }
        }
        Ok(())
    }

    /// SIGKILL of every process of the job, daemonized ones included.
    pub fn kill(&self) {
        let _ = self.signal(libc::SIGKILL);
        if let Some(cg) = &self.cgroup {
            cg.kill_all();
        }
    }

    /// The directory tracking the job's processes in its cgroups (`None`
    /// without cgroups, or once they are removed or handed to the remover).
    pub fn cgroup_dir(&self) -> Option<&std::path::Path> {
        self.cgroup.as_ref().map(|c| c.tracking_dir())
    }

    /// The fd to poll for the job's end: init's status pipe (runtime
    /// liftoff: readable when init reports the job's status, before its own
    /// exit), else the top process's pidfd.
    pub fn exit_fd(&self) -> BorrowedFd<'_> {
        match &self.status {
            Some(f) => f.as_fd(),
            None => self.pidfd.as_fd(),
        }
    }

    /// Starts now the detached process that removes the job's cgroups once
    /// init has exited ([`cgroup::JobCgroup::remove_after_exit`]), so that
    /// [`Sandbox::wait_detached`] has nothing left to start after the job's
    /// end: for a launcher that exits right after the job (`liftoff exec`).
    /// The cgroups stay usable until then (kill, OOM check).
    pub fn remove_cgroups_at_exit(&mut self) {
        if self.remover || self.status.is_none() {
            return;
        }
        if let Some(cg) = &self.cgroup {
            self.remover = cg.remove_after_exit(self.pidfd.as_fd()).is_ok();
        }
    }

    /// Blocks until the job ends, like [`Sandbox::wait`], but returns as soon
    /// as init reports the job's status (runtime liftoff): init's own exit -
    /// the teardown of the job's namespaces, an RCU grace period for its
    /// mount tree - and the removal of the cgroups happen after this returns,
    /// the cgroups by a detached process ([`cgroup::JobCgroup::remove_after_exit`]).
    /// Init has already SIGKILLed everything left in its namespace: nothing
    /// of the job runs user code after this. Init stays an unreaped child:
    /// for a launcher that exits next (`liftoff exec`).
    pub fn wait_detached(&mut self) -> Result<Outcome, Error> {
        if let Some(o) = self.outcome {
            return Ok(o);
        }
        let Some(f) = self.status.as_mut() else {
            return self.wait();
        };
        let mut buf = [0u8; 4];
        let status = loop {
            use std::io::Read;
            match f.read_exact(&mut buf) {
                Ok(()) => break i32::from_ne_bytes(buf),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Init ended without a report (killed): reap it.
                Err(_) => return self.wait(),
            }
        };
        let oom_killed = self.cgroup.as_ref().is_some_and(|c| c.oom_killed());
        if let Some(cg) = &self.cgroup {
            if !self.remover && cg.remove_after_exit(self.pidfd.as_fd()).is_err() {
                self.reap_and_remove();
            }
        }
        self.cgroup = None;
        let o = Outcome {
            exit: exit_of(status),
            oom_killed,
        };
        self.outcome = Some(o);
        Ok(o)
    }

    /// Waits for the top process and removes the cgroups (fallback of
    /// [`Sandbox::wait_detached`] after the status was read).
    fn reap_and_remove(&mut self) {
        let mut st = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        while unsafe { libc::waitpid(self.pid, &mut st, libc::__WALL) } < 0
            && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted
        {}
        if let Some(cg) = self.cgroup.take() {
            cg.remove();
        }
    }

    /// Non-blocking: the outcome when the job has ended.
    pub fn try_wait(&mut self) -> Result<Option<Outcome>, Error> {
        if let Some(o) = self.outcome {
            return Ok(Some(o));
        }
        self.reap(libc::WNOHANG)
    }

    /// Blocks until the job ends.
    pub fn wait(&mut self) -> Result<Outcome, Error> {
        if let Some(o) = self.outcome {
            return Ok(o);
        }
        match self.reap(0)? {
            Some(o) => Ok(o),
            None => Err(Error::new("waiting for the job: no status")),
        }
    }

    /// Blocks until the job ends or `timeout` passes (then `None`).
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<Outcome>, Error> {
        if let Some(o) = self.outcome {
            return Ok(Some(o));
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.pidfd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut pfd, 1, ms) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::os("waiting for the job", e));
            }
            if r > 0 {
                return self.reap(0);
            }
            if left.is_zero() {
                return Ok(None);
            }
        }
    }

    /// Ends the job: SIGTERM to the tree, up to `grace` for it to exit, then
    /// SIGKILL of everything. Returns how it ended.
    pub fn terminate(&mut self, grace: Duration) -> Result<Outcome, Error> {
        if let Some(o) = self.outcome {
            return Ok(o);
        }
        self.signal(libc::SIGTERM)?;
        if let Some(o) = self.wait_timeout(grace)? {
            // The top process is gone: make sure nothing else survives.
            if let Some(cg) = &self.cgroup {
                cg.kill_all();
            }
            return Ok(o);
        }
        self.kill();
        self.wait()
    }

    fn reap(&mut self, flags: i32) -> Result<Option<Outcome>, Error> {
        let mut status = 0;
        let r = loop {
            // SAFETY: waitpid on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut status, flags | libc::__WALL) };
            if r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break r;
        };
        if r == 0 {
            return Ok(None);
        }
        if r < 0 {
            return Err(Error::os(
                "waiting for the job",
                std::io::Error::last_os_error(),
            ));
        }
        let mut job_status = None;
        if let Some(f) = self.status.as_mut() {
            use std::io::Read;
            let mut buf = [0u8; 4];
            if f.read_exact(&mut buf).is_ok() {
                job_status = Some(i32::from_ne_bytes(buf));
            }
        }
        let exit = exit_of(job_status.unwrap_or(status));
        let mut oom_killed = false;
        if let Some(cg) = self.cgroup.as_ref() {
            // Nothing of the job may outlive its top process. With an init,
            // the kernel has already killed and reaped the pid namespace.
            if self.status.is_none() {
                cg.kill_all();
            }
            oom_killed = cg.oom_killed();
        }
        let o = Outcome { exit, oom_killed };
        self.outcome = Some(o);
        if let Some(cg) = self.cgroup.take() {
            cg.remove();
        }
        Ok(Some(o))
    }
}

/// How a wait status ended.
fn exit_of(status: i32) -> Exit {
    if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Exit::Signal(libc::WTERMSIG(status))
    } else {
        Exit::Code(125)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.outcome.is_none() {
            self.kill();
            let _ = self.wait();
        }
        if let Some(cg) = self.cgroup.take() {
            cg.remove();
        }
    }
}
