//! cgroups: memory, pids and CPU limits of one job; tracking and killing of
//! every process of the job; OOM detection.
//!
//! Three host layouts ([`Layout::detect`]):
//! - **v2** (unified): one directory per job with memory.max,
//!   memory.oom.group, pids.max, cpu.max; `cgroup.kill` ends the tree. Under
//!   systemd the launcher's unit needs `Delegate=yes`: the launcher moves
//!   itself into `<unit>/supervisor` and puts jobs in `<unit>/jobs/<name>`
//!   (the "no internal processes" rule). Outside a unit, a root launcher uses
//!   `/sys/fs/cgroup/liftoff/<name>`.
//! - **hybrid**: v1 controllers (memory, pids, cpu) for the limits, the v2
//!   hierarchy at /sys/fs/cgroup/unified for tracking and `cgroup.kill`.
//! - **v1**: v1 controllers only; killing walks `cgroup.procs`.
//!
//! Order: [`JobCgroup::create`] (parent, before clone) → [`JobCgroup::add`]
//! (parent, the child's pid, before the child goes on) → during the run
//! [`JobCgroup::signal_all`] / [`JobCgroup::kill_all`] → after the top
//! process exits [`JobCgroup::oom_killed`], [`JobCgroup::remove`] (or, for
//! a launcher that returns the job's status before the top process is gone,
//! [`JobCgroup::remove_after_exit`]).

use std::ffi::CString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::{Error, Limits, sys};

/// Where the cgroup file systems are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The host's cgroup layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    V2 { root: PathBuf },
    Hybrid { root: PathBuf, unified: PathBuf },
    V1 { root: PathBuf },
    None,
}

impl Layout {
    /// Detects the layout under `root` (normally /sys/fs/cgroup).
    pub fn detect(root: &Path) -> Layout {
        if root.join("cgroup.controllers").exists() {
            Layout::V2 {
                root: root.to_path_buf(),
            }
        } else if root.join("unified/cgroup.controllers").exists() {
            Layout::Hybrid {
                root: root.to_path_buf(),
                unified: root.join("unified"),
            }
        } else if root.join("memory").is_dir() || root.join("pids").is_dir() {
            Layout::V1 {
                root: root.to_path_buf(),
            }
        } else {
            Layout::None
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Layout::V2 { .. } => "v2",
            Layout::Hybrid { .. } => "hybrid",
            Layout::V1 { .. } => "v1",
            Layout::None => "none",
        }
    }
}

/// The launcher's own cgroups, from /proc/self/cgroup text: the v2 path and
/// the v1 path per controller.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OwnCgroups {
    pub unified: Option<String>,
    pub v1: Vec<(String, String)>,
}

impl OwnCgroups {
    pub fn parse(text: &str) -> OwnCgroups {
        let mut own = OwnCgroups::default();
        for line in text.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(_id), Some(ctrls), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if ctrls.is_empty() {
                own.unified = Some(path.to_string());
            } else {
                for c in ctrls.split(',') {
                    own.v1.push((c.to_string(), path.to_string()));
                }
            }
        }
        own
    }

    pub fn read() -> OwnCgroups {
        OwnCgroups::parse(&std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default())
    }

    fn v1_path(&self, controller: &str) -> &str {
        self.v1
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, p)| p.as_str())
            .unwrap_or("/")
    }
}

/// Where v2 job cgroups go, and what must be set up first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V2Parent {
    /// The directory holding job cgroups.
    pub jobs: PathBuf,
    /// When delegated by systemd: the unit's cgroup, where the launcher moves
    /// itself to `supervisor`.
    pub delegated_unit: Option<PathBuf>,
}

/// Decides the v2 parent of job cgroups from the launcher's own cgroup path.
pub fn v2_parent(root: &Path, own: &str) -> V2Parent {
    let rel = own.trim_start_matches('/');
    if let Some(unit) = rel.strip_suffix("/supervisor") {
        return V2Parent {
            jobs: root.join(unit).join("jobs"),
            delegated_unit: None,
        };
    }
    if rel.ends_with(".service") || rel.ends_with(".scope") {
        return V2Parent {
            jobs: root.join(rel).join("jobs"),
            delegated_unit: Some(root.join(rel)),
        };
    }
    V2Parent {
        jobs: root.join(rel).join("liftoff"),
        delegated_unit: None,
    }
}

/// The cgroups of one job.
#[derive(Debug, Default)]
pub struct JobCgroup {
    /// The directory whose cgroup.procs lists every process of the job (v2
    /// or the unified hierarchy; the pids controller on v1).
    track: PathBuf,
    /// Every directory made for the job (removed at the end).
    dirs: Vec<PathBuf>,
    /// memory.events (v2) or memory.oom_control (v1).
    oom_file: Option<PathBuf>,
    /// cgroup.kill is available.
    kill_file: bool,
    /// The v2 directory (entered at clone with CLONE_INTO_CGROUP).
    v2: Option<PathBuf>,
    /// What [`JobCgroup::finish`] still has to do after [`JobCgroup::begin`].
    pending: Option<Pending>,
}

/// The part of a job's cgroups made after the clone ([`JobCgroup::finish`]).
#[derive(Debug)]
struct Pending {
    layout: Layout,
    own: OwnCgroups,
    name: String,
    limits: Limits,
    /// v2: the jobs directory whose controllers to enable.
    v2_parent: Option<V2Parent>,
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value)
        .map_err(|e| Error::new(format!("write {value:?} to {}: {e}", path.display())))
}

fn mkdir(dir: &Path) -> Result<(), Error> {
    match std::fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::new(format!("create cgroup {}: {e}", dir.display()))),
    }
}

/// mkdir of `dir`, and of its parent first when that is missing (the
/// parent - `liftoff`, `jobs` - exists after the first job: one system
/// call per start instead of two).
fn mkdir_under(dir: &Path) -> Result<(), Error> {
    match std::fs::create_dir(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::new(format!("create cgroup {}: {e}", dir.display()))),
    }
    if let Some(up) = dir.parent() {
        mkdir(up)?;
    }
    mkdir(dir)
}

/// memory.max (no swap, the whole job killed on OOM), pids.max, cpu.max.
fn write_v2_limits(dir: &Path, limits: &Limits) -> Result<(), Error> {
    if let Some(m) = limits.memory {
        write(&dir.join("memory.max"), &m.to_string())?;
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        let _ = std::fs::write(dir.join("memory.oom.group"), "1");
    }
    if let Some(p) = limits.pids {
        write(&dir.join("pids.max"), &p.to_string())?;
    }
    if let Some(c) = limits.cpus {
        let (q, p) = cpu_max(c);
        write(&dir.join("cpu.max"), &format!("{q} {p}"))?;
    }
    Ok(())
}

fn enable_controllers(dir: &Path, wanted: &[&str]) -> Result<(), Error> {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let mut add = String::new();
    for c in wanted {
        if available.split_whitespace().any(|a| a == *c)
            && !enabled.split_whitespace().any(|a| a == *c)
        {
            add.push_str(&format!("+{c} "));
        }
    }
    if add.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), add.trim_end())
}

fn cpu_max(cpus: f64) -> (u64, u64) {
    let period = 100_000u64;
    let quota = ((cpus * period as f64) as u64).max(1000);
    (quota, period)
}

impl JobCgroup {
    /// Creates the job's cgroups with `limits` on this host's layout.
    pub fn create(name: &str, limits: &Limits) -> Result<JobCgroup, Error> {
        let mut cg = JobCgroup::begin(name, limits)?;
        cg.finish()?;
        Ok(cg)
    }

    /// The part the clone needs: the v2 directory (CLONE_INTO_CGROUP). The
    /// rest - the v1 directories, the controllers, the limits - is
    /// [`JobCgroup::finish`], which the launcher runs while the child sets
    /// up its mounts, and which must end before the job starts.
    pub fn begin(name: &str, limits: &Limits) -> Result<JobCgroup, Error> {
        let layout = Layout::detect(Path::new(CGROUP_ROOT));
        let own = OwnCgroups::read();
        JobCgroup::begin_in(layout, own, name, limits)
    }

    /// As [`JobCgroup::begin`], for a given layout and own cgroups.
    fn begin_in(
        layout: Layout,
        own: OwnCgroups,
        name: &str,
        limits: &Limits,
    ) -> Result<JobCgroup, Error> {
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(Error::new(format!("bad cgroup name {name:?}")));
        }
        let mut cg = JobCgroup::default();
        let mut jobs_parent = None;
        let dir = match &layout {
            Layout::None => {
                return Err(Error::new(
                    "no cgroup file system at /sys/fs/cgroup: limits cannot be enforced",
                ));
            }
            Layout::V2 { root } => {
                let parent = v2_parent(root, own.unified.as_deref().unwrap_or("/"));
                if let Some(unit) = &parent.delegated_unit {
                    // Delegate=yes: leave the unit's own cgroup to its
                    // subtrees (once: the launcher stays in `supervisor`).
                    let sup = unit.join("supervisor");
                    mkdir(&sup)?;
                    write(&sup.join("cgroup.procs"), &std::process::id().to_string()).map_err(
                        |e| {
                            Error::new(format!(
                                "{e}: is the unit started with Delegate=yes? (see docs/security.md)"
                            ))
                        },
                    )?;
                }
                let dir = parent.jobs.join(name);
                cg.oom_file = Some(dir.join("memory.events"));
                jobs_parent = Some(parent);
                Some(dir)
            }
            Layout::Hybrid { unified, .. } => Some(
                unified
                    .join(
                        own.unified
                            .as_deref()
                            .unwrap_or("/")
                            .trim_start_matches('/'),
                    )
                    .join("liftoff")
                    .join(name),
            ),
            Layout::V1 { .. } => None,
        };
        if let Some(dir) = dir {
            mkdir_under(&dir)?;
            cg.track = dir.clone();
            cg.v2 = Some(dir.clone());
            cg.dirs.push(dir);
        }
        cg.pending = Some(Pending {
            layout,
            own,
            name: name.to_string(),
            limits: limits.clone(),
            v2_parent: jobs_parent,
        });
        Ok(cg)
    }

    /// The rest of [`JobCgroup::begin`]: v1 directories, controllers,
    /// limits. Nothing to do after [`JobCgroup::create`]. On an error the
    /// caller kills the child and calls [`JobCgroup::remove`].
    pub fn finish(&mut self) -> Result<(), Error> {
        let Some(p) = self.pending.take() else {
            return Ok(());
        };
        match &p.layout {
            Layout::V2 { .. } => {
                let wanted = ["memory", "pids", "cpu"];
                if let Some(parent) = &p.v2_parent {
                    if let Some(unit) = &parent.delegated_unit {
                        enable_controllers(unit, &wanted)?;
                    } else if let Some(up) = parent.jobs.parent() {
                        enable_controllers(up, &wanted)?;
                    }
                    enable_controllers(&parent.jobs, &wanted)?;
                }
                self.kill_file = self.track.join("cgroup.kill").exists();
                write_v2_limits(&self.track, &p.limits)
            }
            Layout::Hybrid { root, .. } => {
                let v1 = JobCgroup::create_v1(root, &p.own, &p.name, &p.limits)?;
                self.kill_file = self.track.join("cgroup.kill").exists();
                self.oom_file = v1.oom_file;
                self.dirs.extend(v1.dirs);
                Ok(())
            }
            Layout::V1 { root } => {
                let v1 = JobCgroup::create_v1(root, &p.own, &p.name, &p.limits)?;
                self.track = v1.track;
                self.oom_file = v1.oom_file;
                self.dirs.extend(v1.dirs);
                Ok(())
            }
            Layout::None => Ok(()),
        }
    }

    /// As [`JobCgroup::create`], for a given layout and own cgroups (tests).
    pub fn create_in(
        layout: &Layout,
        own: &OwnCgroups,
        name: &str,
        limits: &Limits,
    ) -> Result<JobCgroup, Error> {
        let mut cg = JobCgroup::begin_in(layout.clone(), own.clone(), name, limits)?;
        if let Err(e) = cg.finish() {
            cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    fn create_v1(
        root: &Path,
        own: &OwnCgroups,
        name: &str,
        limits: &Limits,
    ) -> Result<JobCgroup, Error> {
        let mut cg = JobCgroup::default();
        let dir_for = |ctrl: &str, mount: &str| -> PathBuf {
            root.join(mount)
                .join(own.v1_path(ctrl).trim_start_matches('/'))
                .join("liftoff")
                .join(name)
        };
        let r = (|| {
            // pids first: it is the v1 tracking hierarchy.
            let pids = dir_for("pids", "pids");
            mkdir_under(&pids)?;
            cg.dirs.push(pids.clone());
            cg.track = pids.clone();
            if let Some(p) = limits.pids {
                write(&pids.join("pids.max"), &p.to_string())?;
            }
            if let Some(m) = limits.memory {
                let mem = dir_for("memory", "memory");
                mkdir_under(&mem)?;
                cg.dirs.push(mem.clone());
                write(&mem.join("memory.limit_in_bytes"), &m.to_string())?;
                let _ = std::fs::write(mem.join("memory.memsw.limit_in_bytes"), m.to_string());
                cg.oom_file = Some(mem.join("memory.oom_control"));
            }
            if let Some(c) = limits.cpus {
                let cpu = dir_for("cpu", "cpu");
                mkdir_under(&cpu)?;
                cg.dirs.push(cpu.clone());
                let (q, p) = cpu_max(c);
                write(&cpu.join("cpu.cfs_period_us"), &p.to_string())?;
                write(&cpu.join("cpu.cfs_quota_us"), &q.to_string())?;
            }
            Ok(())
        })();
        match r {
            Ok(()) => Ok(cg),
            Err(e) => {
                cg.remove();
                Err(e)
            }
        }
    }

    /// The v2 directory a child can be cloned into (CLONE_INTO_CGROUP).
    pub fn v2_dir(&self) -> Option<&Path> {
        self.v2.as_deref()
    }

    /// The v1 `tasks` files: the child writes "0" to each to join its
    /// cgroups. Moving oneself (a single thread) skips the global
    /// threadgroup lock and its RCU grace period (~10 ms) that writing a
    /// pid to cgroup.procs costs.
    pub fn v1_task_files(&self) -> Vec<PathBuf> {
        self.dirs
            .iter()
            .filter(|d| Some(d.as_path()) != self.v2.as_deref())
            .map(|d| d.join("tasks"))
            .collect()
    }

    /// Moves `pid` into the v2 cgroup (the fallback when clone3 with
    /// CLONE_INTO_CGROUP is unavailable).
    pub fn add_v2(&self, pid: libc::pid_t) -> Result<(), Error> {
        match &self.v2 {
            Some(d) => write(&d.join("cgroup.procs"), &pid.to_string()),
            None => Ok(()),
        }
    }

    /// Moves `pid` into every cgroup of the job.
    pub fn add(&self, pid: libc::pid_t) -> Result<(), Error> {
        let p = pid.to_string();
        for d in &self.dirs {
            write(&d.join("cgroup.procs"), &p)?;
        }
        Ok(())
    }

    /// The directory tracking every process of the job.
    pub fn tracking_dir(&self) -> &Path {
        &self.track
    }

    fn pids(&self) -> Vec<libc::pid_t> {
        std::fs::read_to_string(self.track.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Sends `signal` to every process of the job.
    pub fn signal_all(&self, signal: i32) {
        for pid in self.pids() {
            // SAFETY: kill(2) on pids read from the job's cgroup.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// SIGKILL of every process of the job (cgroup.kill, or a walk).
    pub fn kill_all(&self) {
        if self.kill_file && std::fs::write(self.track.join("cgroup.kill"), "1").is_ok() {
            return;
        }
        for _ in 0..16 {
            let pids = self.pids();
            if pids.is_empty() {
                return;
            }
            for pid in pids {
                // SAFETY: kill(2) on pids read from the job's cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// Whether the memory controller killed a process of the job.
    pub fn oom_killed(&self) -> bool {
        let Some(f) = &self.oom_file else {
            return false;
        };
        let text = std::fs::read_to_string(f).unwrap_or_default();
        oom_count(&text) > 0
    }

    /// Removes the job's cgroups (waits briefly for exiting processes).
    pub fn remove(&self) {
        let deadline = Instant::now() + Duration::from_millis(500);
        for d in self.dirs.iter().rev() {
            loop {
                match std::fs::remove_dir(d) {
                    Ok(()) => break,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(_) if Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_micros(200))
                    }
                    Err(e) => {
                        tracing::warn!("could not remove cgroup {}: {e}", d.display());
                        break;
                    }
                }
            }
        }
    }
}

impl JobCgroup {
    /// Removes the job's cgroups once the process of `pidfd` (the job's
    /// init, whose pid namespace holds every process of the job) has
    /// exited, from a detached child process: the caller returns the job's
    /// status without waiting for init's exit and the teardown of its
    /// namespaces. `Err` when that process could not be started: the caller
    /// then waits and calls [`JobCgroup::remove`] itself.
    ///
    /// When the pidfd polls readable the kernel has already taken init and
    /// every process of its namespace out of their cgroups (cgroup_exit
    /// comes before the exit notification), so the rmdirs succeed at once.
    pub fn remove_after_exit(&self, pidfd: BorrowedFd<'_>) -> Result<(), Error> {
        let dirs = self
            .dirs
            .iter()
            .rev()
            .map(|d| CString::new(d.as_os_str().as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| Error::new("a cgroup path contains a NUL byte"))?;
        // SAFETY: a fresh anonymous mapping for the remover's stack.
        let stack = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                REMOVER_STACK,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if stack == libc::MAP_FAILED {
            return Err(Error::os(
                "map a stack for the cgroup remover",
                std::io::Error::last_os_error(),
            ));
        }
        // Never freed: the remover reads it after this process has exited.
        let plan: &'static Remover = Box::leak(Box::new(Remover {
            pidfd: pidfd.as_raw_fd(),
            dirs,
        }));
        // SAFETY: a process sharing this address space (CLONE_VM, no copy of
        // the page tables) on its own stack, without exit signal. It only
        // reads `plan` (leaked: never freed) and makes system calls until
        // _exit; neither the stack nor `plan` is ever unmapped, and this
        // process exiting leaves the address space to it.
        let pid = unsafe {
            libc::clone(
                remover_entry,
                (stack as *mut u8).add(REMOVER_STACK) as *mut libc::c_void,
                libc::CLONE_VM,
                plan as *const Remover as *mut libc::c_void,
            )
        };
        if pid < 0 {
            return Err(Error::os(
                "start the process that removes the job's cgroups",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(())
    }
}

/// Stack of the cgroup remover (it makes a handful of system calls).
const REMOVER_STACK: usize = 64 << 10;

/// What the detached remover needs, prepared by the launcher.
struct Remover {
    pidfd: i32,
    dirs: Vec<CString>,
}

extern "C" fn remover_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the leaked `&'static Remover` of `remove_after_exit`.
    let r = unsafe { &*(arg as *const Remover) };
    remove_when_gone(r.pidfd, &r.dirs)
}

/// The detached remover: own session, no fds but the pidfd (a caller reading
/// the launcher's output sees EOF when the launcher exits), waits for the
/// exit, removes the directories (innermost first), exits. Never returns.
/// System calls through [`sys`], which leave errno alone: the remover shares
/// the launcher's memory, thread-local errno included.
fn remove_when_gone(pidfd: i32, dirs: &[CString]) -> ! {
    let fd = pidfd as usize;
    let cwd = libc::AT_FDCWD as isize as usize;
    // SAFETY: raw system calls with valid arguments only (stack values, C
    // strings prepared by the launcher); exit ends this process alone and
    // runs nothing of the launcher.
    unsafe {
        let _ = sys::call3(libc::SYS_setsid, 0, 0, 0);
        if fd > 0 {
            let _ = sys::call3(libc::SYS_close_range, 0, fd - 1, 0);
        }
        let _ = sys::call3(libc::SYS_close_range, fd + 1, u32::MAX as usize, 0);
        let mut p = libc::pollfd {
            fd: pidfd,
            events: libc::POLLIN,
            revents: 0,
        };
        // Retried on EINTR (and any other failure, which does not happen
        // with one valid pollfd).
        while sys::call3(libc::SYS_ppoll, &mut p as *mut _ as usize, 1, 0).is_err() {}
        let pause = libc::timespec {
            tv_sec: 0,
            tv_nsec: 200_000,
        };
        for d in dirs {
            // As `remove`: up to 500 ms for processes still leaving.
            for _ in 0..2500 {
                let r = sys::call3(
                    libc::SYS_unlinkat,
                    cwd,
                    d.as_ptr() as usize,
                    libc::AT_REMOVEDIR as usize,
                );
                if matches!(r, Ok(_) | Err(libc::ENOENT)) {
                    break;
                }
                let _ = sys::call3(libc::SYS_nanosleep, &pause as *const _ as usize, 0, 0);
            }
        }
        let _ = sys::call3(libc::SYS_exit, 0, 0, 0);
        // exit does not return.
        #[allow(clippy::empty_loop)]
        loop {}
    }
}

/// Removes empty job cgroups left behind by a launcher that was killed
/// (call once at launcher start). Populated ones are left alone (rmdir
/// refuses them), and so are fresh ones: a concurrent launcher's new cgroup
/// is empty until its child joins ([`STALE_AFTER`]). Returns how many were
/// removed.
pub fn sweep_stale() -> usize {
    let layout = Layout::detect(Path::new(CGROUP_ROOT));
    let own = OwnCgroups::read();
    let mut parents: Vec<PathBuf> = Vec::new();
    match &layout {
        Layout::V2 { root } => {
            parents.push(v2_parent(root, own.unified.as_deref().unwrap_or("/")).jobs)
        }
        Layout::Hybrid { root, unified } => {
            let own2 = own
                .unified
                .as_deref()
                .unwrap_or("/")
                .trim_start_matches('/');
            parents.push(unified.join(own2).join("liftoff"));
            for c in ["pids", "memory", "cpu"] {
                parents.push(
                    root.join(c)
                        .join(own.v1_path(c).trim_start_matches('/'))
                        .join("liftoff"),
                );
            }
        }
        Layout::V1 { root } => {
            for c in ["pids", "memory", "cpu"] {
                parents.push(
                    root.join(c)
                        .join(own.v1_path(c).trim_start_matches('/'))
                        .join("liftoff"),
                );
            }
        }
        Layout::None => {}
    }
    parents
        .iter()
        .map(|p| sweep_dir(p, STALE_AFTER, SystemTime::now()))
        .sum()
}

/// How old an empty job cgroup must be before [`sweep_stale`] takes it: a
/// concurrent launcher's fresh cgroup is empty until its child joins.
const STALE_AFTER: Duration = Duration::from_secs(60);

/// Removes the empty `liftoff-*` directories of `parent` last changed at
/// least `min_age` before `now`; how many.
fn sweep_dir(parent: &Path, min_age: Duration, now: SystemTime) -> usize {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let old_enough = e
            .metadata()
            .ok()
            .filter(|m| m.is_dir())
            .and_then(|m| m.modified().ok())
            .is_some_and(|t| now.duration_since(t).unwrap_or_default() >= min_age);
        if e.file_name().to_string_lossy().starts_with("liftoff-")
            && old_enough
            && std::fs::remove_dir(e.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// The `oom_kill N` count of memory.events (v2) or memory.oom_control (v1).
pub fn oom_count(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("oom_kill "))
        .filter_map(|v| v.trim().parse().ok())
        .next()
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_leaves_fresh_job_cgroups_alone() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("liftoff-1-a")).unwrap();
        std::fs::create_dir(d.path().join("other")).unwrap();
        let now = SystemTime::now();
        // Just created (a concurrent launcher's, before its child joins).
        assert_eq!(sweep_dir(d.path(), STALE_AFTER, now), 0);
        assert!(d.path().join("liftoff-1-a").exists());
        // A minute later it is stale; what is not a job's stays.
        assert_eq!(sweep_dir(d.path(), STALE_AFTER, now + STALE_AFTER), 1);
        assert!(!d.path().join("liftoff-1-a").exists());
        assert!(d.path().join("other").exists());
    }

    #[test]
    fn detects_layouts_from_fixture_dirs() {
        let t = tempfile::tempdir().unwrap();
        assert_eq!(Layout::detect(t.path()), Layout::None);
        std::fs::create_dir(t.path().join("memory")).unwrap();
        assert_eq!(Layout::detect(t.path()).name(), "v1");
        std::fs::create_dir(t.path().join("unified")).unwrap();
        std::fs::write(t.path().join("unified/cgroup.controllers"), "").unwrap();
        assert_eq!(Layout::detect(t.path()).name(), "hybrid");
        std::fs::write(t.path().join("cgroup.controllers"), "memory pids").unwrap();
        assert_eq!(Layout::detect(t.path()).name(), "v2");
    }

    #[test]
    fn parses_own_cgroups() {
        let own = OwnCgroups::parse(
            "9:name=systemd:/\n4:memory:/process_api/x\n1:cpu,cpuacct:/a\n0::/system.slice/liftoff.service\n",
        );
        assert_eq!(
            own.unified.as_deref(),
            Some("/system.slice/liftoff.service")
        );
        assert_eq!(own.v1_path("memory"), "/process_api/x");
        assert_eq!(own.v1_path("cpuacct"), "/a");
        assert_eq!(own.v1_path("pids"), "/");
    }

    #[test]
    fn v2_parent_follows_systemd_delegation() {
        let r = Path::new("/sys/fs/cgroup");
        let p = v2_parent(r, "/system.slice/liftoff.service");
        assert_eq!(p.jobs, r.join("system.slice/liftoff.service/jobs"));
        assert_eq!(
            p.delegated_unit.as_deref(),
            Some(r.join("system.slice/liftoff.service").as_path())
        );
        let p = v2_parent(r, "/system.slice/liftoff.service/supervisor");
        assert_eq!(p.jobs, r.join("system.slice/liftoff.service/jobs"));
        assert!(p.delegated_unit.is_none());
        let p = v2_parent(r, "/");
        assert_eq!(p.jobs, r.join("liftoff"));
    }

    #[test]
    fn hybrid_fixture_limits_in_v1_tracking_in_v2() {
        let t = tempfile::tempdir().unwrap();
        for c in ["pids", "memory", "cpu", "unified"] {
            std::fs::create_dir(t.path().join(c)).unwrap();
        }
        std::fs::write(t.path().join("unified/cgroup.controllers"), "").unwrap();
        std::fs::create_dir(t.path().join("memory/outer")).unwrap();
        let layout = Layout::detect(t.path());
        assert_eq!(layout.name(), "hybrid");
        let own = OwnCgroups::parse("4:memory:/outer\n0::/\n");
        let limits = Limits {
            memory: Some(64 << 20),
            pids: Some(50),
            cpus: Some(0.5),
            nofile: 1024,
        };
        let cg = JobCgroup::create_in(&layout, &own, "j", &limits).unwrap();
        let r = t.path();
        assert_eq!(
            std::fs::read_to_string(r.join("pids/liftoff/j/pids.max")).unwrap(),
            "50"
        );
        assert_eq!(
            std::fs::read_to_string(r.join("memory/outer/liftoff/j/memory.limit_in_bytes"))
                .unwrap(),
            "67108864"
        );
        assert_eq!(
            std::fs::read_to_string(r.join("cpu/liftoff/j/cpu.cfs_quota_us")).unwrap(),
            "50000"
        );
        assert_eq!(cg.v2_dir(), Some(r.join("unified/liftoff/j").as_path()));
        assert_eq!(cg.tracking_dir(), r.join("unified/liftoff/j"));
        let tasks = cg.v1_task_files();
        assert_eq!(tasks.len(), 3);
        assert!(tasks.iter().all(|f| f.ends_with("tasks")));
        assert!(
            cg.oom_file
                .as_ref()
                .unwrap()
                .ends_with("memory.oom_control")
        );
    }

    #[test]
    fn v1_fixture_tracks_with_pids() {
        let t = tempfile::tempdir().unwrap();
        for c in ["pids", "memory"] {
            std::fs::create_dir(t.path().join(c)).unwrap();
        }
        let layout = Layout::detect(t.path());
        let cg =
            JobCgroup::create_in(&layout, &OwnCgroups::default(), "k", &Limits::default()).unwrap();
        assert_eq!(cg.tracking_dir(), t.path().join("pids/liftoff/k"));
        assert!(cg.v2_dir().is_none());
        assert!(
            JobCgroup::create_in(&layout, &OwnCgroups::default(), "../x", &Limits::default())
                .is_err()
        );
    }

    #[test]
    fn v2_fixture_gets_limits() {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("cgroup.controllers"), "memory pids cpu").unwrap();
        std::fs::write(t.path().join("cgroup.subtree_control"), "").unwrap();
        let layout = Layout::detect(t.path());
        let own = OwnCgroups::parse("0::/\n");
        let limits = Limits {
            memory: Some(1 << 30),
            pids: Some(100),
            cpus: Some(1.5),
            nofile: 1024,
        };
        let cg = JobCgroup::create_in(&layout, &own, "job1", &limits).unwrap();
        let dir = t.path().join("liftoff/job1");
        assert_eq!(
            std::fs::read_to_string(dir.join("memory.max")).unwrap(),
            "1073741824"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("pids.max")).unwrap(),
            "100"
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("cpu.max")).unwrap(),
            "150000 100000"
        );
        assert_eq!(
            std::fs::read_to_string(t.path().join("cgroup.subtree_control")).unwrap(),
            "+memory +pids +cpu"
        );
        assert_eq!(cg.tracking_dir(), dir);
        assert_eq!(oom_count("low 0\noom 1\noom_kill 2\n"), 2);
        assert_eq!(
            oom_count("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"),
            0
        );
    }
}
