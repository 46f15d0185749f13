//! The parent side of starting a sandbox: [`spawn`]. See the setup order in
//! the module doc of `sandbox` (mod.rs); `spawn_here` calls one function per
//! phase, in that order: [`own_workspace`], the plan ([`prepare`]: mounts,
//! landlock, seccomp; [`Command::new`]), [`create_cgroup`], [`open_pipes`],
//! [`child_plan`], [`clone_child`] (named network, clone, pidfd),
//! [`release`] (maps, cgroup, go) and [`wait_for_exec`].

use std::borrow::Cow;
use std::ffi::CString;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::cgroup::JobCgroup;
use super::child::{self, ChildPlan, Trace};
use super::landlock::{self, Rules};
use super::mounts::Op;
use super::namespaces::{self, NetnsGuard};
use super::pin;
use super::seccomp::Programs;
use super::{
    Error, JOB_HOME, Network, Runtime, Sandbox, SandboxSpec, Stdio, WORKSPACE, mounts, pipes,
    rlimits, seccomp,
};

/// `struct clone_args` of clone3(2), version 2 (with `cgroup`).
#[repr(C)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// How long the child may take from clone to exec.
const SETUP_TIMEOUT_MS: i32 = 30_000;

/// Capacity asked for the job's output pipe.
const OUTPUT_PIPE_SIZE: libc::c_int = 1 << 20;

fn cstr(s: &[u8], what: &str) -> Result<CString, Error> {
    CString::new(s).map_err(|_| Error::new(format!("{what} contains a NUL byte")))
}

/// execve candidates for `program` with the job's PATH (as execvp would).
fn exec_paths(program: &str, env: &[(String, String)]) -> Result<Vec<CString>, Error> {
    if program.is_empty() {
        return Err(Error::new("no program to run"));
    }
    if program.contains('/') {
        return Ok(vec![cstr(program.as_bytes(), "program")?]);
    }
    let path = env
        .iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.as_str())
        .unwrap_or("/usr/local/bin:/usr/bin:/bin");
    path.split(':')
        .filter(|d| !d.is_empty())
        .map(|d| cstr(format!("{d}/{program}").as_bytes(), "program path"))
        .collect()
}

/// Where each standard stream goes: (child end, parent end).
fn stdio(which: Stdio, input: bool) -> Result<(Option<OwnedFd>, Option<File>), Error> {
    match which {
        Stdio::Inherit => Ok((None, None)),
        Stdio::Null => {
            let f = std::fs::OpenOptions::new()
                .read(input)
                .write(!input)
                .open("/dev/null")
                .map_err(|e| Error::os("open /dev/null", e))?;
            Ok((Some(f.into()), None))
        }
        Stdio::Merged => Err(Error::new("only stderr can be merged (into stdout)")),
        Stdio::Piped => {
            let (r, w) = pipes::pipe()?;
            if !input {
                // A job's output pipe holds 1 MiB (when the host allows):
                // the job writes on while the launcher delivers a chunk.
                // SAFETY: F_SETPIPE_SZ on a pipe we own; failure is harmless.
                unsafe { libc::fcntl(r.as_raw_fd(), libc::F_SETPIPE_SZ, OUTPUT_PIPE_SIZE) };
            }
            if input {
                Ok((Some(r), Some(File::from(w))))
            } else {
                Ok((Some(w), Some(File::from(r))))
            }
        }
    }
}

type Request = (SandboxSpec, std::sync::mpsc::Sender<Result<Sandbox, Error>>);

/// The spawner thread: it never exits, so the jobs' PDEATHSIG (which fires
/// when the spawning *thread* exits) only fires when the launcher dies.
fn spawner() -> Result<std::sync::mpsc::Sender<Request>, Error> {
    static TX: std::sync::OnceLock<std::sync::Mutex<std::sync::mpsc::Sender<Request>>> =
        std::sync::OnceLock::new();
    if let Some(tx) = TX.get() {
        return tx
            .lock()
            .map(|t| t.clone())
            .map_err(|_| Error::new("the sandbox spawner thread is gone"));
    }
    let (tx, rx) = std::sync::mpsc::channel::<Request>();
    std::thread::Builder::new()
        .name("liftoff-spawner".into())
        .spawn(move || {
            for (spec, reply) in rx {
                let _ = reply.send(spawn_here(&spec));
            }
        })
        .map_err(|e| Error::os("start the sandbox spawner thread", e))?;
    let tx = TX.get_or_init(|| std::sync::Mutex::new(tx));
    tx.lock()
        .map(|t| t.clone())
        .map_err(|_| Error::new("the sandbox spawner thread is gone"))
}

/// Starts the job of `spec`. Returns once the job has been exec'd (or with
/// the reason setup failed). Blocks for the setup (a few milliseconds).
///
/// Safe from any thread: from the main thread it clones directly; from any
/// other thread (an executor's blocking pool whose threads come and go) the
/// clone is made by a dedicated thread that lives as long as the process,
/// because PDEATHSIG follows the spawning thread.
pub fn spawn(spec: &SandboxSpec) -> Result<Sandbox, Error> {
    // SAFETY: getpid/gettid cannot fail.
    let main_thread = unsafe { libc::getpid() == libc::gettid() };
    if main_thread {
        return spawn_here(spec);
    }
    let (reply, result) = std::sync::mpsc::channel();
    spawner()?
        .send((spec.clone(), reply))
        .map_err(|_| Error::new("the sandbox spawner thread is gone"))?;
    result
        .recv()
        .map_err(|_| Error::new("the sandbox spawner thread is gone"))?
}

/// Time since `spawn` was called at each setup phase ([`Sandbox::timings`]).
struct Clock {
    t0: Instant,
    /// `t0` as CLOCK_MONOTONIC ns (the child's marks use that clock).
    t0_ns: u64,
    timings: Vec<(Cow<'static, str>, Duration)>,
}

impl Clock {
    fn start() -> Clock {
        Clock {
            t0: Instant::now(),
            t0_ns: Trace::now(),
            timings: Vec::with_capacity(8),
        }
    }
    fn mark(&mut self, phase: &'static str) {
        self.timings.push((phase.into(), self.t0.elapsed()));
    }

    /// The child's marks ([`Trace`]) as phases: the steps, the mount plan
    /// as one phase, and its slowest operations.
    fn child_phases(&mut self, marks: &[(u32, u64)], ops: &[(Op, String)]) {
        let at = |ns: u64| Duration::from_nanos(ns.saturating_sub(self.t0_ns));
        let mut slow: Vec<(Duration, usize)> = Vec::new();
        let mut prev = None;
        let mut mounts = 0;
        for (mark, ns) in marks {
            let what: &'static str = match *mark {
                child::MARK_RUNNING => "child: running (cloned)",
                child::MARK_GO => "child: got the go",
                child::STEP_LOOPBACK => "child: ids, hostname, loopback",
                child::STEP_CGROUP => "child: mounts up to /dev, cgroups joined, cgroup namespace",
                child::MARK_JOB => "job: started (init forked it)",
                child::STEP_STDIO => "job: session, stdio, signals reset",
                child::STEP_CAPS => "job: rlimits, capabilities dropped",
                child::STEP_SECCOMP => "job: no_new_privs, seccomp",
                child::MARK_READY => "job: init's root finished",
                child::STEP_LANDLOCK => "job: landlock",
                child::STEP_CWD => "job: cwd (execve next)",
                m if m >= child::STEP_MOUNT => {
                    let i = (m - child::STEP_MOUNT) as usize;
                    if let Some(p) = prev {
                        slow.push((at(*ns).saturating_sub(at(p)), i));
                    }
                    mounts += 1;
                    prev = Some(*ns);
                    if i + 1 == ops.len() {
                        self.timings.push((
                            format!("child: mount plan done ({mounts} operations)").into(),
                            at(*ns),
                        ));
                    }
                    continue;
                }
                _ => "child: mark",
            };
            prev = Some(*ns);
            self.timings.push((what.into(), at(*ns)));
        }
        slow.sort_by_key(|s| std::cmp::Reverse(s.0));
        for (d, i) in slow.iter().take(5) {
            if let Some((_, what)) = ops.get(*i) {
                self.timings
                    .push((format!("  (slowest mount operations) {what}").into(), *d));
            }
        }
    }
}

/// Whether [`spawn`] also times the phases inside the child (one shared
/// page per start): `liftoff exec` with `LIFTOFF_EXEC_TIMINGS`.
static CHILD_TIMINGS: AtomicBool = AtomicBool::new(false);

/// Times the child's phases too ([`Sandbox::timings`]); for tuning.
pub fn time_child_phases(on: bool) {
    CHILD_TIMINGS.store(on, Ordering::Relaxed);
}

/// The phases of the module doc of `sandbox`, in order.
fn spawn_here(spec: &SandboxSpec) -> Result<Sandbox, Error> {
    let mut clock = Clock::start();
    let mut warnings = Vec::new();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let host = namespaces::host_ids(spec.host_id);
    let liftoff = spec.runtime == Runtime::Liftoff;
    let workspace = own_workspace(spec, root, host)?;
    // 1. The plan.
    let mut prepared = prepare(spec, &workspace, &mut warnings, &mut clock)?;
    let ready = prepared.ready.take();
    let command = Command::new(spec, &workspace)?;
    clock.mark("plan: argv, env");
    // 2. The cgroup the clone enters, and the pipes between launcher and child.
    let cgroup = create_cgroup(spec, root, &mut warnings)?;
    clock.mark("cgroup created");
    let (child_ends, parent_ends) = open_pipes(spec)?;
    let trace = if CHILD_TIMINGS.load(Ordering::Relaxed) {
        Trace::new()
    } else {
        Trace::off()
    };
    let plan = child_plan(
        spec,
        prepared,
        &command,
        &child_ends,
        cgroup.is_some(),
        trace,
    );
    // 3-4. Named network, clone.
    let started = clone_child(spec, &plan, cgroup, ready.as_ref())?;
    drop(ready);
    drop(child_ends);
    clock.mark("cloned");
    // 5. Maps, go; then the cgroups completed while the child mounts.
    // A child that failed early (and was ended by the abort) said why in
    // the error pipe: that, rather than the broken socket.
    let said = |e: Error| setup_error(&parent_ends.err_r, &plan, &command.program).unwrap_or(e);
    let lifeline = release(&started, liftoff, host, parent_ends.sync_w).map_err(said)?;
    clock.mark("maps written, child released");
    let mut started = started;
    complete_cgroup(&mut started, &lifeline).map_err(said)?;
    clock.mark("cgroups completed (limits), sent to the child");
    // 6. Exec or error.
    wait_for_exec(&started, parent_ends.err_r, &plan, &command.program)?;
    clock.mark("job exec'd");
    clock.child_phases(&plan.trace.read(), &plan.ops);
    Ok(Sandbox {
        pid: started.pid,
        pidfd: started.pidfd,
        status: liftoff.then(|| File::from(parent_ends.status_r)),
        cgroup: started.cgroup,
        outcome: None,
        remover: false,
        lifeline: Some(lifeline),
        stdin: parent_ends.stdin,
        stdout: parent_ends.stdout,
        stderr: parent_ends.stderr,
        warnings,
        timings: clock.timings,
    })
}

/// The canonical workspace; a root launcher gives it to the job's host id
/// (an unprivileged id, in every runtime).
fn own_workspace(spec: &SandboxSpec, root: bool, host: (u32, u32)) -> Result<PathBuf, Error> {
    let workspace = std::fs::canonicalize(&spec.workspace)
        .map_err(|e| Error::new(format!("workspace {}: {e}", spec.workspace.display())))?;
    if !workspace.is_dir() {
        return Err(Error::new(format!(
            "workspace {} is not a directory",
            workspace.display()
        )));
    }
    if !root {
        return Ok(workspace);
    }
    let meta = std::fs::metadata(&workspace)
        .map_err(|e| Error::new(format!("workspace {}: {e}", workspace.display())))?;
    use std::os::unix::fs::MetadataExt;
    if meta.uid() == host.0 {
        return Ok(workspace);
    }
    // Never hand a system directory (/, /tmp, /home...) to the job.
    let depth = workspace.components().count();
    if depth < 3 || meta.mode() & 0o1000 != 0 {
        return Err(Error::new(format!(
            "workspace {} is a shared or top-level directory: give the job a dedicated directory (it becomes owned by the job's host id {})",
            workspace.display(),
            host.0
        )));
    }
    std::os::unix::fs::chown(&workspace, Some(host.0), Some(host.1)).map_err(|e| {
        Error::new(format!(
            "give the workspace {} to the job's host id {}: {e}",
            workspace.display(),
            host.0
        ))
    })?;
    Ok(workspace)
}

/// Phase 1 without the command: mounts, landlock, seccomp.
struct Prepared {
    ops: Vec<(Op, String)>,
    /// The ready-made root the clone copies ([`pin`]), when there is one.
    ready: Option<OwnedFd>,
    landlock: Option<Rules>,
    seccomp: Option<&'static Programs>,
}

fn prepare(
    spec: &SandboxSpec,
    workspace: &Path,
    warnings: &mut Vec<String>,
    clock: &mut Clock,
) -> Result<Prepared, Error> {
    let (ops, ready) = mount_plan(spec, workspace, clock)?;
    let landlock = landlock_rules(spec, workspace, warnings)?;
    clock.mark("plan: mounts, landlock");
    let seccomp = match spec.runtime {
        Runtime::None => None,
        _ => Some(seccomp::programs()?),
    };
    clock.mark("plan: seccomp");
    Ok(Prepared {
        ops,
        ready,
        landlock,
        seccomp,
    })
}

/// Everything the child needs, from the plan, the command (which must
/// outlive the clone: argv and envp point into it) and the child's ends.
fn child_plan(
    spec: &SandboxSpec,
    prepared: Prepared,
    command: &Command,
    ends: &ChildEnds,
    cgroupns: bool,
    trace: Trace,
) -> ChildPlan {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    let liftoff = spec.runtime == Runtime::Liftoff;
    // An early job (see `child::spawn_job`) where the raw system calls are:
    // init starts it before /dev (the launcher has completed the cgroups by
    // then), and /dev, /proc, pivot_root and the detach of the old root
    // overlap the job's start and its own preparation. Over a ready-made
    // root, before /proc: its mount and masks overlap them.
    let job_at = prepared
        .ops
        .iter()
        .position(|(op, _)| {
            matches!(op, Op::Mount { fstype, dst, .. }
                if (fstype.as_bytes() == b"tmpfs" && dst.as_bytes().ends_with(b"/dev"))
                    || fstype.as_bytes() == b"proc")
        })
        .filter(|_| super::sys::RAW)
        .unwrap_or(prepared.ops.len());
    ChildPlan {
        job_at,
        ready_r: ends.ready_r.as_raw_fd(),
        ready_w: ends.ready_w.as_raw_fd(),
        ops: prepared.ops,
        hostname: command.hostname.clone(),
        loopback: spec.network == Network::None,
        cgroupns,
        drop_groups: root,
        become_host: (root && !liftoff).then(|| namespaces::host_ids(spec.host_id)),
        landlock: prepared.landlock,
        seccomp: prepared.seccomp,
        rlimits: rlimits::plan(spec.limits.nofile),
        exec_paths: command.exec_paths.clone(),
        argv: pointers(&command.argv),
        envp: pointers(&command.env),
        cwd: command.cwd.clone(),
        stdio: ends.stdio(),
        sync_fd: ends.sync_r.as_raw_fd(),
        err_fd: ends.err_w.as_raw_fd(),
        status_fd: ends.status_w.as_raw_fd(),
        trace,
    }
}

/// The mount operations, and the ready-made root they run over (if any).
type MountPlan = (Vec<(Op, String)>, Option<OwnedFd>);

/// The mount plan (runtime liftoff only; the others use host paths): the
/// job's own mounts over a ready-made root when a root launcher has one
/// for the host's root ([`pin`]), else the whole root.
fn mount_plan(spec: &SandboxSpec, workspace: &Path, clock: &mut Clock) -> Result<MountPlan, Error> {
    if spec.runtime != Runtime::Liftoff {
        return Ok((Vec::new(), None));
    }
    let mut s = spec.clone();
    s.workspace = workspace.to_path_buf();
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root && s.ready_root && s.root.is_none() {
        if let Some((ns, how)) = pin::ready_root(&s) {
            if let Ok(ops) = mounts::job_plan(&s) {
                clock.mark(match how {
                    pin::Source::Pinned => "plan: ready-made root (pinned)",
                    pin::Source::Built => "plan: ready-made root (built and pinned)",
                });
                return Ok((ops, Some(ns)));
            }
        }
    }
    Ok((mounts::plan(&s)?, None))
}

/// The job's landlock rules: sandbox paths for runtime liftoff, host paths
/// for runtime landlock, none for runtime none.
fn landlock_rules(
    spec: &SandboxSpec,
    workspace: &Path,
    warnings: &mut Vec<String>,
) -> Result<Option<Rules>, Error> {
    let (rules, warning) = match spec.runtime {
        Runtime::None => return Ok(None),
        Runtime::Liftoff => {
            let mut rw: Vec<PathBuf> = vec![
                WORKSPACE.into(),
                "/tmp".into(),
                JOB_HOME.into(),
                "/dev/shm".into(),
                "/dev/pts".into(),
            ];
            rw.extend(
                spec.mounts
                    .iter()
                    .filter(|m| m.writable)
                    .map(|m| m.target.clone()),
            );
            Rules::for_sandbox(spec.landlock, &rw)?
        }
        Runtime::Landlock => {
            let mut ro = landlock::host_read_only(spec.root.as_deref());
            ro.extend(
                spec.mounts
                    .iter()
                    .filter(|m| !m.writable)
                    .map(|m| m.source.clone()),
            );
            let mut rw = vec![workspace.to_path_buf()];
            rw.extend(
                spec.mounts
                    .iter()
                    .filter(|m| m.writable)
                    .map(|m| m.source.clone()),
            );
            let dev = [
                "/dev/null",
                "/dev/zero",
                "/dev/full",
                "/dev/random",
                "/dev/urandom",
                "/dev/tty",
                "/dev/pts",
                "/dev/shm",
            ]
            .iter()
            .map(PathBuf::from)
            .collect::<Vec<_>>();
            Rules::new(spec.landlock, &ro, &rw, &dev)?
        }
    };
    warnings.extend(warning);
    Ok(Some(rules))
}

/// The job's command line, environment, working directory and hostname as
/// C strings. [`ChildPlan::argv`] and `envp` point into it: it must outlive
/// the clone.
struct Command {
    program: String,
    exec_paths: Vec<CString>,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: CString,
    hostname: Option<CString>,
}

impl Command {
    fn new(spec: &SandboxSpec, workspace: &Path) -> Result<Command, Error> {
        let liftoff = spec.runtime == Runtime::Liftoff;
        let program = spec
            .argv
            .first()
            .ok_or_else(|| Error::new("no program to run"))?
            .clone();
        let exec_paths = exec_paths(&program, &spec.env)?;
        let argv = spec
            .argv
            .iter()
            .map(|a| cstr(a.as_bytes(), "an argument"))
            .collect::<Result<_, _>>()?;
        let mut env = Vec::with_capacity(spec.env.len());
        for (k, v) in &spec.env {
            if k.is_empty() || k.contains('=') {
                return Err(Error::new(format!("bad environment variable name {k:?}")));
            }
            env.push(cstr(
                format!("{k}={v}").as_bytes(),
                "an environment variable",
            )?);
        }
        let cwd = match (&spec.cwd, spec.runtime) {
            (Some(c), _) => c.clone(),
            (None, Runtime::Liftoff) => PathBuf::from(WORKSPACE),
            (None, _) => workspace.to_path_buf(),
        };
        let hostname = if liftoff {
            if spec.hostname.is_empty() || spec.hostname.len() > 64 {
                return Err(Error::new(format!(
                    "bad hostname {:?}: 1 to 64 characters",
                    spec.hostname
                )));
            }
            Some(cstr(spec.hostname.as_bytes(), "the hostname")?)
        } else {
            None
        };
        if !liftoff && spec.network != Network::Host {
            return Err(Error::new(format!(
                "network {} needs runtime liftoff (runtime {} has no namespaces)",
                spec.network,
                spec.runtime.name()
            )));
        }
        Ok(Command {
            program,
            exec_paths,
            argv,
            env,
            cwd: cstr(cwd.as_os_str().as_bytes(), "the working directory")?,
            hostname,
        })
    }
}

/// A NULL-terminated array of pointers into `strings` (argv, envp).
fn pointers(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

/// The job's cgroups: a root launcher makes what the clone needs
/// ([`JobCgroup::begin`]) and completes the rest while the child sets up
/// ([`complete_cgroup`]). An unprivileged launcher makes them all here, and
/// without a delegated cgroup runs the job without (said in `warnings`).
fn create_cgroup(
    spec: &SandboxSpec,
    root: bool,
    warnings: &mut Vec<String>,
) -> Result<Option<JobCgroup>, Error> {
    let made = if root {
        JobCgroup::begin(&spec.name, &spec.limits)
    } else {
        JobCgroup::create(&spec.name, &spec.limits)
    };
    match made {
        Ok(cg) => Ok(Some(cg)),
        Err(e) if !root => {
            warnings.push(if spec.runtime == Runtime::Liftoff {
                format!(
                    "cgroup limits are NOT enforced (memory, pids, cpu) and the tree is tracked by its pid namespace only: {e}"
                )
            } else {
                format!(
                    "cgroup limits are NOT enforced (memory, pids, cpu) and, without a pid namespace, daemonized processes of the job can outlive it: {e}"
                )
            });
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The child's ends of the pipes and stdio: closed in the launcher right
/// after the clone.
struct ChildEnds {
    sync_r: OwnedFd,
    ready_r: OwnedFd,
    ready_w: OwnedFd,
    err_w: OwnedFd,
    status_w: OwnedFd,
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
}

impl ChildEnds {
    /// Fds for 0, 1, 2; -1 = inherit.
    fn stdio(&self) -> [i32; 3] {
        let raw = |f: &Option<OwnedFd>| f.as_ref().map(|f| f.as_raw_fd()).unwrap_or(-1);
        [raw(&self.stdin), raw(&self.stdout), raw(&self.stderr)]
    }
}

/// The launcher's ends: the go (kept as the lifeline), the setup errors,
/// init's wait status, and the job's piped streams.
struct ParentEnds {
    sync_w: OwnedFd,
    err_r: OwnedFd,
    status_r: OwnedFd,
    stdin: Option<File>,
    stdout: Option<File>,
    stderr: Option<File>,
}

fn open_pipes(spec: &SandboxSpec) -> Result<(ChildEnds, ParentEnds), Error> {
    let (sync_r, sync_w) = pipes::socketpair()?;
    let (ready_r, ready_w) = pipes::pipe()?;
    let (err_r, err_w) = pipes::pipe()?;
    let (status_r, status_w) = pipes::pipe()?;
    let (in_child, in_parent) = stdio(spec.stdin, true)?;
    let (out_child, out_parent) = stdio(spec.stdout, false)?;
    let (errs_child, errs_parent) = match (spec.stderr, &out_child, &out_parent) {
        // One pipe for both streams, in the order the job wrote them.
        (Stdio::Merged, Some(out), Some(_)) => (
            Some(
                out.try_clone()
                    .map_err(|e| Error::os("share the output pipe", e))?,
            ),
            None,
        ),
        (Stdio::Merged, ..) => {
            return Err(Error::new("stderr can only be merged into a piped stdout"));
        }
        (other, ..) => stdio(other, false)?,
    };
    Ok((
        ChildEnds {
            sync_r,
            ready_r,
            ready_w,
            err_w,
            status_w,
            stdin: in_child,
            stdout: out_child,
            stderr: errs_child,
        },
        ParentEnds {
            sync_w,
            err_r,
            status_r,
            stdin: in_parent,
            stdout: out_parent,
            stderr: errs_parent,
        },
    ))
}

/// The cloned child, waiting for the go. [`Started::abort`] kills it.
struct Started {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    /// Already in its v2 cgroup (clone3 with CLONE_INTO_CGROUP).
    in_cgroup: bool,
    cgroup: Option<JobCgroup>,
}

impl Started {
    /// Kills the child and removes its cgroups; returns `e`.
    fn abort(&self, e: Error) -> Error {
        abort(self.pid, self.cgroup.as_ref(), e)
    }
}

/// Kills and reaps the child `pid`, removes its cgroups, returns `e`.
fn abort(pid: libc::pid_t, cgroup: Option<&JobCgroup>, e: Error) -> Error {
    // SAFETY: kill and reap our own child.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        let mut st = 0;
        libc::waitpid(pid, &mut st, libc::__WALL);
    }
    if let Some(cg) = cgroup {
        cg.kill_all();
        cg.remove();
    }
    e
}

/// Enters a named network namespace for the clone, clones (clone3 into the
/// v2 cgroup, or classic clone on kernels before 5.7) and gets a pidfd. The
/// child runs `child::run_*` and never comes back here.
fn clone_child(
    spec: &SandboxSpec,
    plan: &ChildPlan,
    cgroup: Option<JobCgroup>,
    ready: Option<&OwnedFd>,
) -> Result<Started, Error> {
    let liftoff = spec.runtime == Runtime::Liftoff;
    let flags = if liftoff {
        namespaces::clone_flags(&spec.network)
    } else {
        0
    };
    let guard = match &spec.network {
        Network::Named(name) if liftoff => Some(NetnsGuard::enter(name)?),
        _ => None,
    };
    let v2_dir = match cgroup.as_ref().and_then(|c| c.v2_dir()) {
        Some(d) => Some(
            File::open(d).map_err(|e| Error::new(format!("open cgroup {}: {e}", d.display())))?,
        ),
        None => None,
    };
    let mut pidfd: i32 = -1;
    let mut args = CloneArgs {
        flags: flags as u64 | libc::CLONE_PIDFD as u64,
        pidfd: &mut pidfd as *mut i32 as u64,
        child_tid: 0,
        parent_tid: 0,
        exit_signal: libc::SIGCHLD as u64,
        stack: 0,
        stack_size: 0,
        tls: 0,
        set_tid: 0,
        set_tid_size: 0,
        cgroup: 0,
    };
    if let Some(f) = &v2_dir {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = f.as_raw_fd() as u64;
    }
    // The clone's mount namespace is a copy of this thread's: the
    // ready-made root's, for as long as the clone takes.
    let entered = match ready {
        Some(ns) => match pin::Entered::enter(ns) {
            Ok(e) => Some(e),
            Err(e) => {
                if let Some(cg) = &cgroup {
                    cg.remove();
                }
                return Err(e);
            }
        },
        None => None,
    };
    // SAFETY: a fork-like clone3 (no CLONE_VM, no stack): the child gets a
    // copy of this address space and only runs `child::run_*`, which make
    // system calls on `plan` and never return.
    let mut pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    let mut in_cgroup = v2_dir.is_some();
    if pid < 0 {
        let e = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
        if matches!(
            e,
            libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EOPNOTSUPP
        ) {
            // Kernels before 5.7: clone, then move the child (slower).
            in_cgroup = false;
            pidfd = -1;
            // SAFETY: as above, with the classic clone.
            pid = unsafe {
                libc::syscall(
                    libc::SYS_clone,
                    flags | libc::SIGCHLD as libc::c_ulong,
                    0usize,
                    0usize,
                    0usize,
                    0usize,
                )
            };
        }
    }
    if pid == 0 {
        if liftoff {
            child::run_init(plan)
        } else {
            child::run_direct(plan)
        }
    }
    if let Some(e) = entered {
        if let Err(e) = e.leave() {
            if pid > 0 {
                return Err(abort(pid as libc::pid_t, cgroup.as_ref(), e));
            }
            return Err(e);
        }
    }
    drop(guard);
    drop(v2_dir);
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        if let Some(cg) = &cgroup {
            cg.remove();
        }
        return Err(Error::new(format!(
            "clone with namespaces: {e}{}",
            if liftoff {
                " (are user namespaces allowed? run `liftoff check`)"
            } else {
                ""
            }
        )));
    }
    let pid = pid as libc::pid_t;
    if pidfd < 0 {
        // SAFETY: pidfd_open of our own, not yet reaped child.
        pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    }
    if pidfd < 0 {
        let e = Error::os("pidfd_open (kernel 5.3+)", std::io::Error::last_os_error());
        return Err(abort(pid, cgroup.as_ref(), e));
    }
    Ok(Started {
        pid,
        // SAFETY: a fresh fd we own.
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
        in_cgroup,
        cgroup,
    })
}

/// Phase 5: writes the uid/gid maps, moves the child into its v2 cgroup
/// when the clone could not, and lets it go. Returns the launcher's end of
/// the sync socket, kept for the job's lifetime (the lifeline).
fn release(
    started: &Started,
    liftoff: bool,
    host: (u32, u32),
    sync_w: OwnedFd,
) -> Result<File, Error> {
    let pid = started.pid;
    if liftoff {
        namespaces::write_id_maps(pid, host).map_err(|e| started.abort(e))?;
    }
    if let Some(cg) = &started.cgroup {
        if !started.in_cgroup {
            cg.add_v2(pid).map_err(|e| started.abort(e))?;
        }
    }
    let mut sync_w = File::from(sync_w);
    sync_w
        .write_all(&[1])
        .map_err(|e| started.abort(Error::os("start the sandbox", e)))?;
    Ok(sync_w)
}

/// Phase 5, while the child mounts: completes the cgroups (v1 directories,
/// controllers, limits), sets the child's OOM score, and sends the child the
/// second message - the limits are in place - with the v1 `tasks` files to
/// join. The child starts the job only after it.
fn complete_cgroup(started: &mut Started, sync: &File) -> Result<(), Error> {
    let pid = started.pid;
    let mut tasks = Vec::new();
    if let Some(cg) = started.cgroup.as_mut() {
        if let Err(e) = cg.finish() {
            return Err(started.abort(e));
        }
        for f in cg.v1_task_files() {
            match std::fs::OpenOptions::new().write(true).open(&f) {
                Ok(file) => tasks.push(OwnedFd::from(file)),
                Err(e) => {
                    return Err(started.abort(Error::new(format!("open {}: {e}", f.display()))));
                }
            }
        }
    }
    // Best effort: raising a score needs no privilege beyond owning the
    // process; a host without the file keeps the default. Before the job
    // exists: everything it forks inherits it.
    let _ = std::fs::write(
        format!("/proc/{pid}/oom_score_adj"),
        child::JOB_OOM_SCORE_ADJ,
    );
    send_fds(sync, &tasks).map_err(|e| started.abort(Error::os("start the sandbox", e)))
}

/// One byte with `fds` attached (SCM_RIGHTS).
fn send_fds(sock: &File, fds: &[OwnedFd]) -> std::io::Result<()> {
    let raw: Vec<i32> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let payload = std::mem::size_of_val(raw.as_slice()) as u32;
    // SAFETY: CMSG_SPACE is arithmetic on a length.
    let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
    let mut control = vec![0u64; space.div_ceil(8).max(1)];
    let mut byte = [1u8];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr() as *mut libc::c_void,
        iov_len: 1,
    };
    // SAFETY: a zeroed msghdr is valid; the pointers set below outlive the
    // sendmsg call, and the control message is written within `control`.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        if !raw.is_empty() {
            msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
            msg.msg_controllen = space as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as _;
            std::ptr::copy_nonoverlapping(
                raw.as_ptr() as *const u8,
                libc::CMSG_DATA(c),
                payload as usize,
            );
        }
        loop {
            if libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) == 1 {
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

/// Phase 6: reads the error pipe until EOF (the job's exec) or a setup
/// error (step, errno), which becomes words and aborts the child.
fn wait_for_exec(
    started: &Started,
    err_r: OwnedFd,
    plan: &ChildPlan,
    program: &str,
) -> Result<(), Error> {
    let mut buf = [0u8; 8];
    // A child stuck in setup must not hang the launcher.
    match pipes::read_within(err_r.as_raw_fd(), &mut buf, SETUP_TIMEOUT_MS) {
        Ok(n) if n < buf.len() => Ok(()),
        Ok(_) => Err(started.abort(describe(buf, plan, program))),
        Err(pipes::Short::TimedOut) => Err(started.abort(Error::new(format!(
            "sandbox setup did not finish within {} s",
            SETUP_TIMEOUT_MS / 1000
        )))),
        Err(pipes::Short::Failed(e)) => {
            Err(started.abort(Error::os("read the sandbox's setup status", e)))
        }
    }
}

/// The setup error (step, errno) a child that has ended left in the error
/// pipe, if it left one.
fn setup_error(err_r: &OwnedFd, plan: &ChildPlan, program: &str) -> Option<Error> {
    let mut buf = [0u8; 8];
    // Only what is there now: another clone may hold a copy of the write
    // end for a moment.
    match pipes::read_within(err_r.as_raw_fd(), &mut buf, 0) {
        Ok(8) => Some(describe(buf, plan, program)),
        _ => None,
    }
}

/// A child's setup error (step, errno) in words.
fn describe(buf: [u8; 8], plan: &ChildPlan, program: &str) -> Error {
    let step = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let what = child::describe(step, &plan.ops, program);
    let err = std::io::Error::from_raw_os_error(errno);
    let hint = if step == child::STEP_EXEC && errno == libc::ENOENT {
        " (not found in the sandbox's PATH or root)".to_string()
    } else {
        step.checked_sub(child::STEP_MOUNT)
            .and_then(|i| plan.ops.get(i as usize))
            .and_then(|(op, _)| mounts::hint(op, errno))
            .unwrap_or_default()
    };
    Error {
        message: format!("sandbox setup failed: {what}: {err}{hint}"),
        step: Some(what),
        errno: Some(errno),
    }
}
