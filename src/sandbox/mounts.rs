//! The job's filesystem: a mount plan built in the launcher, run by the child
//! inside its new mount namespace.
//!
//! Order: [`plan`] (parent: reads host paths, builds /etc, opens each host
//! directory or file to bind as a detached mount tree with
//! [`open_tree_clone`], returns the list of [`Op`]s with a description each),
//! then the child runs each op with [`Op::run`] in order, attaching those
//! trees by file descriptor ([`Op::BindTree`]): path traversal is checked as
//! the launcher, so a workspace below a private (0700) directory binds. A
//! launcher that cannot open_tree (unprivileged, kernel before 5.2) binds by
//! path ([`Op::Bind`]); a refusal then names the directory and the fix
//! ([`hint`]). The plan itself encodes the setup order:
//!
//! 1. propagation private (nothing leaks back to the host);
//! 2. only when something is bound by path from below /tmp (an unprivileged
//!    launcher with a workspace there): a staging tmpfs on /tmp and
//!    `pivot_root` into it, the host at /oldroot, the root built at /newroot;
//!    otherwise the root is built on /tmp directly (one pivot_root fewer:
//!    each walks every task of the host);
//! 3. the root tmpfs; read-only binds of {usr,bin,...} (or the root
//!    directory's entries), merged-usr symlinks copied as symlinks;
//! 4. /etc written (passwd, group, hosts, resolv.conf, nsswitch.conf,
//!    hostname) plus read-only binds of the CA bundle and loader files;
//! 5. workspace rw at /mnt/workspace, /tmp and the home as tmpfs, extra mounts,
//!    then the bin overlay (an extra mount's entries over the directory /bin
//!    is or links to: a read-only overlayfs, no upper layer);
//! 6. a minimal /dev (device binds, devpts, shm), a fresh /proc with masked
//!    and read-only paths;
//! 7. `pivot_root(".", ".")` in the new root, the old root detached under
//!    it, / remounted read-only.
//!
//! A root launcher splits that plan in two ([`Part`]): [`root_plan`] (steps
//! 1-4 and 7, the mount points of 5, /dev without devpts and shm, a /proc
//! that only makes the job's possible) runs once in a ready-made root
//! ([`super::pin`], identified by [`root_key`]); [`job_plan`] (step 5, devpts,
//! shm, /proc and its masks, at the sandbox's own paths) runs in each job's
//! copy of it.

use std::collections::BTreeSet;
use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::{BindMount, Error, JOB_HOME, Network, SandboxSpec, WORKSPACE};

const STAGE: &str = "/tmp";

/// One mount-namespace operation, ready to run without allocating.
#[derive(Debug)]
pub enum Op {
    Mkdir(CString, u32),
    Touch(CString),
    Symlink {
        target: CString,
        path: CString,
    },
    Mount {
        src: CString,
        dst: CString,
        fstype: CString,
        flags: libc::c_ulong,
        data: CString,
    },
    /// Recursive bind, then nosuid (+nodev unless `dev`) (+ro unless `rw`).
    Bind {
        src: CString,
        dst: CString,
        rw: bool,
        dev: bool,
    },
    /// Attach a detached copy of a host mount tree that the launcher opened
    /// ([`open_tree_clone`]), then as [`Op::Bind`]. The launcher resolved
    /// the path, so its parents need not be traversable by the job's user.
    BindTree {
        tree: OwnedFd,
        dst: CString,
        rw: bool,
    },
    /// Make an existing mount read-only (not recursive).
    ReadOnly(CString),
    Write {
        path: CString,
        data: Vec<u8>,
    },
    Chdir(CString),
    PivotRoot {
        new: CString,
        old: CString,
    },
    Detach(CString),
    /// The op, where a missing target is no error: a /proc entry this
    /// kernel does not have (checked at run time: one lookup fewer each).
    IfExists(Box<Op>),
}

fn cs(p: impl AsRef<Path>) -> Result<CString, Error> {
    CString::new(p.as_ref().as_os_str().as_bytes())
        .map_err(|_| Error::new(format!("path {:?} contains a NUL byte", p.as_ref())))
}

/// The plan under construction: ops plus their descriptions.
struct Plan {
    ops: Vec<(Op, String)>,
    dirs: BTreeSet<PathBuf>,
    /// Host binds go by file descriptor ([`Op::BindTree`]) until
    /// [`open_tree_clone`] says this launcher cannot.
    by_fd: bool,
    /// Where the job's root is built: [`STAGE`] itself (one pivot_root), or
    /// /newroot inside a staging tmpfs there (two).
    root: &'static str,
    /// Where the host's root is while building: `/` or /oldroot.
    host: &'static str,
    /// A bind by path reads from below [`STAGE`], which the one-pivot
    /// layout covers: the plan is made again with the staging layout.
    shadowed: bool,
    /// Which part of the root this plan makes.
    part: Part,
    /// Mount points only (the job's own mounts, planned into a ready-made
    /// root): every op but mkdir and touch is left out.
    points_only: bool,
    /// Where the job's own mounts are (workspace, /tmp, home, extra
    /// mounts), as paths of the root under construction: a mount point
    /// below one is made in that mount, by the job.
    own: Vec<PathBuf>,
    /// Step 5 is being planned: its mounts go into `own`.
    job_mounts: bool,
}

/// Which part of the job's root a plan makes (see the module doc).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Part {
    /// All of it, in the job's own mount namespace.
    Whole,
    /// The ready-made root ([`super::pin`]): everything but the job's own
    /// mounts, for which it makes the mount points.
    Root,
    /// The job's own mounts, over a copy of the ready-made root: its
    /// workspace, /tmp, home, extra mounts, bin overlay, devpts, /dev/shm,
    /// /proc and its masks.
    Job,
}

impl Plan {
    fn push(&mut self, op: Op, what: String) {
        let point = match &op {
            Op::Mkdir(p, _) | Op::Touch(p) => Some(Path::new(OsStr::from_bytes(p.as_bytes()))),
            _ => None,
        };
        let keep = match point {
            // Over a ready-made root the mount points exist (and it is
            // read-only), but for those inside the job's own mounts (its
            // workspace, /tmp, home, ...), which the ready-made root cannot
            // hold: the job makes them there, after that mount.
            Some(p) => {
                let below_own = self.own.iter().any(|o| p != o && p.starts_with(o));
                match self.part {
                    Part::Whole => true,
                    Part::Root => !below_own,
                    Part::Job => below_own,
                }
            }
            // While making that root, only the mount points are wanted of
            // the job's own mounts.
            None => !self.points_only,
        };
        if keep {
            self.ops.push((op, what));
        }
    }
    /// mkdir -p of `dir` (a /newroot path), skipping what the plan made.
    fn mkdirs(&mut self, dir: &Path) -> Result<(), Error> {
        let mut cur = PathBuf::from("/");
        for c in dir.components() {
            if let Component::Normal(n) = c {
                cur.push(n);
                if self.dirs.insert(cur.clone()) {
                    let what = format!("create directory {}", cur.display());
                    self.push(Op::Mkdir(cs(&cur)?, 0o755), what);
                }
            }
        }
        Ok(())
    }
    fn bind(&mut self, src: &Path, dst: &Path, rw: bool) -> Result<(), Error> {
        self.bind_at(src, dst, rw)?;
        if self.job_mounts {
            self.own.push(dst.to_path_buf());
        }
        Ok(())
    }
    fn bind_at(&mut self, src: &Path, dst: &Path, rw: bool) -> Result<(), Error> {
        let host = Path::new(self.host).join(src.strip_prefix("/").unwrap_or(src));
        let meta = std::fs::metadata(src)
            .map_err(|e| Error::new(format!("mount source {}: {e}", src.display())))?;
        if meta.is_dir() {
            self.mkdirs(dst)?;
        } else {
            if let Some(p) = dst.parent() {
                self.mkdirs(p)?;
            }
            self.push(Op::Touch(cs(dst)?), format!("create {}", dst.display()));
        }
        let what = format!(
            "bind {} {} at {}",
            src.display(),
            if rw { "read-write" } else { "read-only" },
            self.inside(dst).display()
        );
        if self.by_fd && !self.points_only {
            match open_tree_clone(src)? {
                Some(tree) => {
                    let dst = cs(dst)?;
                    self.push(Op::BindTree { tree, dst, rw }, what);
                    return Ok(());
                }
                None => self.by_fd = false,
            }
        }
        if self.part == Part::Job {
            return Err(Error::new(format!(
                "{}: over a ready-made root, binds go by file descriptor (open_tree)",
                src.display()
            )));
        }
        if self.host == "/" && src.starts_with(STAGE) && !self.points_only {
            self.shadowed = true;
        }
        self.push(
            Op::Bind {
                src: cs(host)?,
                dst: cs(dst)?,
                rw,
                dev: false,
            },
            what,
        );
        Ok(())
    }
    fn symlink(&mut self, target: &Path, path: &Path) -> Result<(), Error> {
        if let Some(p) = path.parent() {
            self.mkdirs(p)?;
        }
        let what = format!(
            "symlink {} -> {}",
            self.inside(path).display(),
            target.display()
        );
        self.push(
            Op::Symlink {
                target: cs(target)?,
                path: cs(path)?,
            },
            what,
        );
        Ok(())
    }
    fn mount(
        &mut self,
        fstype: &str,
        dst: &Path,
        flags: libc::c_ulong,
        data: &str,
    ) -> Result<(), Error> {
        self.mkdirs(dst)?;
        let what = format!("mount {fstype} at {}", self.inside(dst).display());
        self.push(
            Op::Mount {
                src: cs(fstype)?,
                dst: cs(dst)?,
                fstype: cs(fstype)?,
                flags,
                data: cs(data)?,
            },
            what,
        );
        if self.job_mounts {
            self.own.push(dst.to_path_buf());
        }
        Ok(())
    }
    fn write(&mut self, path: &Path, data: Vec<u8>) -> Result<(), Error> {
        let what = format!("write {}", self.inside(path).display());
        self.push(
            Op::Write {
                path: cs(path)?,
                data,
            },
            what,
        );
        Ok(())
    }
}

impl Plan {
    /// The path a path of the root under construction has in the sandbox.
    fn inside(&self, p: &Path) -> PathBuf {
        match p.strip_prefix(self.root) {
            Ok(rest) => Path::new("/").join(rest),
            Err(_) => p.to_path_buf(),
        }
    }

    /// Where sandbox path `p` is while the root is built.
    fn nr(&self, p: &str) -> PathBuf {
        Path::new(self.root).join(p.trim_start_matches('/'))
    }
}

/// Host directories that make up the job's root when no root is given.
const HOST_DIRS: &[&str] = &["usr", "bin", "sbin", "lib", "lib64", "lib32", "libx32"];

/// Host /etc entries bound read-only when the root is the host's: the loader
/// cache and the alternatives links /usr/bin points into.
const HOST_ETC: &[&str] = &[
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "alternatives",
    "localtime",
    "protocols",
    "services",
    "os-release",
    "debian_version",
    "gai.conf",
];

/// Entries liftoff itself provides in the root and in /etc.
const OWN_TOP: &[&str] = &["proc", "dev", "tmp", "etc", "mnt", "home", "sys", "run"];
const OWN_ETC: &[&str] = &[
    "passwd",
    "group",
    "shadow",
    "gshadow",
    "hosts",
    "hostname",
    "resolv.conf",
    "nsswitch.conf",
    "mtab",
];

/// /proc entries hidden behind /dev/null (files) or an empty read-only
/// tmpfs (directories), and those made read-only: Docker's lists.
const PROC_MASK_FILES: &[&str] = &[
    "kcore",
    "keys",
    "latency_stats",
    "timer_list",
    "timer_stats",
    "sched_debug",
    "interrupts",
];
const PROC_MASK_DIRS: &[&str] = &["acpi", "scsi", "asound"];
const PROC_RO: &[&str] = &["bus", "fs", "irq", "sys", "sysrq-trigger"];

/// Checks a sandbox target path: absolute, no `..`, not / and not inside
/// /proc or /dev.
pub fn check_target(p: &Path) -> Result<(), Error> {
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(Error::new(format!(
            "mount target {} must be an absolute path without ..",
            p.display()
        )));
    }
    if p == Path::new("/")
        || p.starts_with("/proc")
        || p.starts_with("/dev")
        || p == Path::new("/etc")
    {
        return Err(Error::new(format!(
            "mount target {} is reserved by the sandbox",
            p.display()
        )));
    }
    Ok(())
}

/// Builds the mount plan for `spec` (runtime liftoff): with one
/// pivot_root when nothing is bound by path from below [`STAGE`] (a root
/// launcher binds by file descriptor), else with the staging pivot.
pub fn plan(spec: &SandboxSpec) -> Result<Vec<(Op, String)>, Error> {
    let p = plan_with(spec, true, Part::Whole)?;
    if !p.shadowed {
        return Ok(p.ops);
    }
    Ok(plan_with(spec, false, Part::Whole)?.ops)
}

/// The ready-made root of `spec` ([`super::pin`] runs it in a mount
/// namespace of its own and keeps that): steps 1-4 and 7 as in [`plan`],
/// the mount points of step 5, /dev without its devpts and shm, and a
/// /proc that only makes the job's own /proc possible (a user namespace
/// may mount proc where one is fully visible) and that the job's covers.
pub fn root_plan(spec: &SandboxSpec) -> Result<Vec<(Op, String)>, Error> {
    let p = plan_with(spec, true, Part::Root)?;
    if p.shadowed || !p.by_fd {
        return Err(Error::new(
            "a ready-made root needs binds by file descriptor (open_tree)",
        ));
    }
    Ok(p.ops)
}

/// What identifies [`root_plan`] of `spec` without making it: what the
/// root takes from the spec, and the identity (device, inode, mode, size,
/// change times) of the launcher's executable and of every host path the
/// plan reads or binds in the root. Equal keys, equal roots: an edited
/// resolv.conf, a new loader cache or CA bundle, an upgraded launcher each
/// give another key. (Bound directories are live: what changes inside them
/// the job sees anyway.)
pub fn root_key(spec: &SandboxSpec) -> Result<u64, Error> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    if spec.root.is_some() {
        return Err(Error::new("a ready-made root is the host's root only"));
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (
        &spec.hostname,
        spec.network == Network::None,
        &spec.ca_bundle,
    )
        .hash(&mut h);
    for m in &spec.mounts {
        (&m.target, m.source.is_dir()).hash(&mut h);
    }
    let mut stamp = |p: &Path, follow: bool| {
        let m = if follow {
            std::fs::metadata(p)
        } else {
            std::fs::symlink_metadata(p)
        };
        match m {
            Ok(m) => (
                m.dev(),
                m.ino(),
                m.mode(),
                m.size(),
                (m.mtime(), m.mtime_nsec()),
                (m.ctime(), m.ctime_nsec()),
            )
                .hash(&mut h),
            Err(e) => e.raw_os_error().hash(&mut h),
        }
    };
    stamp(Path::new("/proc/self/exe"), true);
    for d in HOST_DIRS {
        stamp(&Path::new("/").join(d), false);
    }
    for e in HOST_ETC {
        let p = Path::new("/etc").join(e);
        stamp(&p, false);
        stamp(&p, true);
    }
    stamp(Path::new("/etc/hosts"), true);
    stamp(Path::new("/etc/resolv.conf"), true);
    if let Some(b) = spec.ca_bundle.clone().or_else(host_ca_bundle) {
        stamp(&b, false);
        stamp(&b, true);
    }
    Ok(h.finish())
}

/// The job's own mounts over a copy of the ready-made root of `spec`, its
/// paths those of the sandbox (the copy is the job's root from the start).
pub fn job_plan(spec: &SandboxSpec) -> Result<Vec<(Op, String)>, Error> {
    Ok(plan_with(spec, true, Part::Job)?.ops)
}

fn plan_with(spec: &SandboxSpec, one_pivot: bool, part: Part) -> Result<Plan, Error> {
    let mut p = Plan {
        ops: Vec::with_capacity(96),
        dirs: BTreeSet::new(),
        by_fd: true,
        root: match part {
            Part::Job => "/",
            _ if one_pivot => STAGE,
            _ => "/newroot",
        },
        host: if one_pivot { "/" } else { "/oldroot" },
        shadowed: false,
        part,
        points_only: false,
        own: Vec::new(),
        job_mounts: false,
    };
    if part != Part::Job {
        root_and_etc(&mut p, spec, one_pivot)?;
    }
    // 5: workspace, tmp, home, extra mounts (only their mount points in a
    // ready-made root).
    p.points_only = part == Part::Root;
    p.job_mounts = true;
    let ws = p.nr(WORKSPACE);
    p.bind(&spec.workspace, &ws, true)?;
    let tmp = p.nr("/tmp");
    p.mount("tmpfs", &tmp, libc::MS_NOSUID | libc::MS_NODEV, "mode=1777")?;
    let home = p.nr(JOB_HOME);
    p.mount(
        "tmpfs",
        &home,
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    )?;
    for m in &spec.mounts {
        extra_mount(&mut p, m)?;
    }
    if let Some(dir) = &spec.bin_overlay {
        bin_overlay(&mut p, spec, dir)?;
    }
    p.points_only = false;
    p.job_mounts = false;
    // 6: /dev and /proc.
    dev(&mut p)?;
    proc(&mut p)?;
    if part == Part::Job {
        return Ok(p);
    }
    // 7: final pivot, detach, read-only root.
    p.push(Op::Chdir(cs(p.root)?), format!("chdir {}", p.root));
    p.push(
        Op::PivotRoot {
            new: cs(".")?,
            old: cs(".")?,
        },
        "pivot_root into the new root".into(),
    );
    p.push(Op::Detach(cs(".")?), "detach the old root".into());
    p.push(Op::Chdir(cs("/")?), "chdir /".into());
    p.push(Op::ReadOnly(cs("/")?), "make / read-only".into());
    Ok(p)
}

/// Steps 1-4: private propagation (and the staging pivot), the root tmpfs,
/// the root's directories, /etc.
fn root_and_etc(p: &mut Plan, spec: &SandboxSpec, one_pivot: bool) -> Result<(), Error> {
    // 1-2: private propagation (and the staging tmpfs, first pivot).
    p.push(
        Op::Mount {
            src: cs("none")?,
            dst: cs("/")?,
            fstype: cs("")?,
            flags: libc::MS_REC | libc::MS_PRIVATE,
            data: cs("")?,
        },
        "make mounts private".into(),
    );
    if !one_pivot {
        p.push(
            Op::Mount {
                src: cs("tmpfs")?,
                dst: cs(STAGE)?,
                fstype: cs("tmpfs")?,
                flags: libc::MS_NOSUID | libc::MS_NODEV,
                data: cs("mode=0755,size=64k")?,
            },
            "mount the staging tmpfs".into(),
        );
        p.push(Op::Mkdir(cs("/tmp/oldroot")?, 0o755), "staging dir".into());
        p.push(Op::Mkdir(cs("/tmp/newroot")?, 0o755), "staging dir".into());
        p.push(
            Op::PivotRoot {
                new: cs(STAGE)?,
                old: cs("/tmp/oldroot")?,
            },
            "pivot_root into the staging tmpfs".into(),
        );
        p.push(Op::Chdir(cs("/")?), "chdir /".into());
    }
    p.dirs.insert(p.root.into());
    // 3: the new root.
    p.push(
        Op::Mount {
            src: cs("tmpfs")?,
            dst: cs(p.root)?,
            fstype: cs("tmpfs")?,
            flags: libc::MS_NOSUID | libc::MS_NODEV,
            data: cs("mode=0755,size=4m")?,
        },
        "mount the root tmpfs".into(),
    );
    match &spec.root {
        None => {
            for d in HOST_DIRS {
                let host = Path::new("/").join(d);
                let dst = p.nr(d);
                mirror_entry(p, &host, &dst)?;
            }
        }
        Some(root) => {
            let entries = std::fs::read_dir(root)
                .map_err(|e| Error::new(format!("root directory {}: {e}", root.display())))?;
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(n) = name.to_str() else { continue };
                if OWN_TOP.contains(&n) {
                    continue;
                }
                let dst = p.nr(n);
                mirror_entry(p, &entry.path(), &dst)?;
            }
        }
    }
    // 4: /etc.
    etc(p, spec)
}

/// A top-level entry of the root: a symlink stays a symlink, a directory or
/// file is bound read-only.
fn mirror_entry(p: &mut Plan, host: &Path, dst: &Path) -> Result<(), Error> {
    match std::fs::symlink_metadata(host) {
        Err(_) => Ok(()),
        Ok(m) if m.file_type().is_symlink() => {
            let target = std::fs::read_link(host)
                .map_err(|e| Error::new(format!("read link {}: {e}", host.display())))?;
            p.symlink(&target, dst)
        }
        Ok(m) if m.is_dir() || m.is_file() => p.bind(host, dst, false),
        Ok(_) => Ok(()),
    }
}

fn extra_mount(p: &mut Plan, m: &BindMount) -> Result<(), Error> {
    check_target(&m.target)?;
    if !m.source.is_absolute() {
        return Err(Error::new(format!(
            "mount source {} must be an absolute path",
            m.source.display()
        )));
    }
    let src = std::fs::canonicalize(&m.source)
        .map_err(|e| Error::new(format!("mount source {}: {e}", m.source.display())))?;
    let dst = p.nr(&m.target.to_string_lossy());
    p.bind(&src, &dst, m.writable)
}

/// `dir`'s entries (a directory the plan already mounted) over the job's
/// /bin: where /bin is a symlink (merged /usr: `bin -> usr/bin`), over the
/// directory it names. A read-only overlayfs whose lower layers are `dir`
/// then the directory itself, both already in the root under construction,
/// so nothing of the host is written and the host's /usr/bin stays as it
/// is. A root without /bin gets `dir` bound there.
fn bin_overlay(p: &mut Plan, spec: &SandboxSpec, dir: &Path) -> Result<(), Error> {
    check_target(dir)?;
    if !spec.mounts.iter().any(|m| m.target == dir) {
        return Err(Error::new(format!(
            "bin overlay {} is not one of the sandbox's mounts",
            dir.display()
        )));
    }
    let root = spec.root.as_deref().unwrap_or(Path::new("/"));
    let Some(bin) = bin_dir_of(root)? else {
        let lower = p.nr(&dir.to_string_lossy());
        let dst = p.nr("/bin");
        p.mkdirs(&dst)?;
        let what = format!("bind {} read-only at /bin", dir.display());
        p.push(
            Op::Bind {
                src: cs(lower)?,
                dst: cs(dst)?,
                rw: false,
                dev: false,
            },
            what,
        );
        return Ok(());
    };
    let (upper, lower) = (p.nr(&dir.to_string_lossy()), p.nr(&bin));
    for l in [&upper, &lower] {
        let ok = l.to_str().is_some_and(|s| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/._-+".contains(&b))
        });
        if !ok {
            return Err(Error::new(format!(
                "bin overlay: {} has characters an overlayfs lowerdir cannot hold",
                p.inside(l).display()
            )));
        }
    }
    let data = format!("lowerdir={}:{}", upper.display(), lower.display());
    let what = format!(
        "mount a read-only overlayfs of {} over {bin} (overlayfs in a user namespace needs Linux 5.11)",
        dir.display()
    );
    p.push(
        Op::Mount {
            src: cs("overlay")?,
            dst: cs(&lower)?,
            fstype: cs("overlay")?,
            flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            data: cs(data)?,
        },
        what,
    );
    Ok(())
}

/// The directory the job's /bin is in `root` (the host's / or an image):
/// `/bin` itself, or where its symlink points (one link, resolved inside
/// the root, every component a real directory); `None` when there is none.
fn bin_dir_of(root: &Path) -> Result<Option<String>, Error> {
    let bin = root.join("bin");
    let meta = match std::fs::symlink_metadata(&bin) {
        Ok(m) => m,
        Err(_) => return Ok(None),
    };
    let rel = if meta.file_type().is_symlink() {
        let t = std::fs::read_link(&bin)
            .map_err(|e| Error::new(format!("read link {}: {e}", bin.display())))?;
        crate::beneath::lexical(&t)
    } else {
        PathBuf::from("bin")
    };
    let mut cur = root.to_path_buf();
    for c in rel.components() {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => {}
            _ => {
                return Err(Error::new(format!(
                    "the root's /bin links to /{}, which is not a directory of the root: \
                     the run's tool cannot appear in /bin",
                    rel.display()
                )));
            }
        }
    }
    Ok(Some(format!("/{}", rel.display())))
}

/// The job's /etc: its own passwd, group, hosts, resolv.conf, nsswitch.conf,
/// hostname; the CA bundle; loader files (host root) or the image's /etc.
fn etc(p: &mut Plan, spec: &SandboxSpec) -> Result<(), Error> {
    let etc = p.nr("/etc");
    p.mkdirs(&etc)?;
    let h = &spec.hostname;
    p.write(
        &etc.join("passwd"),
        format!(
            "root:x:0:0:root:/root:/usr/sbin/nologin\n{u}:x:{id}:{id}:{u}:{JOB_HOME}:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            u = super::JOB_USER,
            id = super::JOB_ID
        )
        .into_bytes(),
    )?;
    p.write(
        &etc.join("group"),
        format!(
            "root:x:0:\n{u}:x:{id}:\nnogroup:x:65534:\n",
            u = super::JOB_USER,
            id = super::JOB_ID
        )
        .into_bytes(),
    )?;
    let mut hosts = format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{h}\n"
    );
    if spec.network != Network::None {
        if let Ok(host_hosts) = std::fs::read_to_string("/etc/hosts") {
            hosts.push_str("# from the host\n");
            hosts.push_str(&host_hosts);
        }
    }
    p.write(&etc.join("hosts"), hosts.into_bytes())?;
    p.write(&etc.join("hostname"), format!("{h}\n").into_bytes())?;
    let resolv = match spec.network {
        Network::None => Vec::new(),
        _ => std::fs::read("/etc/resolv.conf").unwrap_or_default(),
    };
    p.write(&etc.join("resolv.conf"), resolv)?;
    p.write(
        &etc.join("nsswitch.conf"),
        b"passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\nethers: files\nrpc: files\n".to_vec(),
    )?;
    p.symlink(Path::new("/proc/self/mounts"), &etc.join("mtab"))?;
    match &spec.root {
        None => {
            for e in HOST_ETC {
                let host = Path::new("/etc").join(e);
                // Small files are copied (one write) rather than bound (a
                // mount and a remount): cheaper at every start.
                match std::fs::symlink_metadata(&host) {
                    Ok(m) if m.is_file() && m.len() <= 1 << 20 => {
                        if let Ok(data) = std::fs::read(&host) {
                            p.write(&etc.join(e), data)?;
                        }
                    }
                    _ => mirror_entry(p, &host, &etc.join(e))?,
                }
            }
        }
        Some(root) => {
            if let Ok(entries) = std::fs::read_dir(root.join("etc")) {
                for entry in entries.flatten() {
                    let name = entry.file_name();
                    let Some(n) = name.to_str() else { continue };
                    if OWN_ETC.contains(&n) || n == "ssl" || n == "pki" {
                        continue;
                    }
                    mirror_entry(p, &entry.path(), &etc.join(n))?;
                }
            }
        }
    }
    let bundle = spec.ca_bundle.clone().or_else(host_ca_bundle);
    if let Some(b) = bundle {
        let b = std::fs::canonicalize(&b)
            .map_err(|e| Error::new(format!("CA bundle {}: {e}", b.display())))?;
        p.bind(&b, &etc.join("ssl/certs/ca-certificates.crt"), false)?;
        p.symlink(
            Path::new("certs/ca-certificates.crt"),
            &etc.join("ssl/cert.pem"),
        )?;
        p.symlink(
            Path::new("/etc/ssl/certs/ca-certificates.crt"),
            &etc.join("pki/tls/certs/ca-bundle.crt"),
        )?;
    }
    Ok(())
}

/// The host's CA bundle (Debian/Ubuntu/Alpine, then RHEL/Fedora paths).
pub fn host_ca_bundle() -> Option<PathBuf> {
    [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/pki/tls/certs/ca-bundle.crt",
        "/etc/ssl/cert.pem",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// /dev: a read-only tmpfs of device binds and links (the ready-made root
/// has it), its own devpts and shm (the job's).
fn dev(p: &mut Plan) -> Result<(), Error> {
    let dev = p.nr("/dev");
    if p.part != Part::Job {
        p.mount(
            "tmpfs",
            &dev,
            libc::MS_NOSUID | libc::MS_NOEXEC,
            "mode=0755,size=64k",
        )?;
        for d in ["null", "zero", "full", "random", "urandom", "tty"] {
            let path = dev.join(d);
            p.push(Op::Touch(cs(&path)?), format!("create /dev/{d}"));
            p.push(
                Op::Bind {
                    src: cs(Path::new(p.host).join("dev").join(d))?,
                    dst: cs(&path)?,
                    rw: true,
                    dev: true,
                },
                format!("bind /dev/{d}"),
            );
        }
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
            ("ptmx", "pts/ptmx"),
            ("core", "/proc/kcore"),
        ] {
            p.symlink(Path::new(target), &dev.join(name))?;
        }
    }
    p.points_only = p.part == Part::Root;
    p.mount(
        "devpts",
        &dev.join("pts"),
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=620",
    )?;
    p.mount(
        "tmpfs",
        &dev.join("shm"),
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;
    p.points_only = false;
    if p.part != Part::Job {
        p.push(Op::ReadOnly(cs(&dev)?), "make /dev read-only".into());
    }
    Ok(())
}

/// A fresh /proc with Docker's masks. In the ready-made root, a /proc of
/// its builder's empty pid namespace, without masks: the job's own covers
/// it (and it is what lets a user namespace mount a proc at all).
fn proc(p: &mut Plan) -> Result<(), Error> {
    let proc = p.nr("/proc");
    p.mount(
        "proc",
        &proc,
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        "",
    )?;
    if p.part == Part::Root {
        return Ok(());
    }
    for f in PROC_MASK_FILES {
        let op = Op::Bind {
            src: cs(p.nr("/dev/null"))?,
            dst: cs(proc.join(f))?,
            rw: true,
            dev: true,
        };
        p.push(Op::IfExists(Box::new(op)), format!("mask /proc/{f}"));
    }
    for d in PROC_MASK_DIRS {
        let op = Op::Mount {
            src: cs("tmpfs")?,
            dst: cs(proc.join(d))?,
            fstype: cs("tmpfs")?,
            flags: libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            data: cs("size=0")?,
        };
        p.push(Op::IfExists(Box::new(op)), format!("mask /proc/{d}"));
    }
    for r in PROC_RO {
        let path = cs(proc.join(r))?;
        let op = Op::Bind {
            src: path.clone(),
            dst: path,
            rw: false,
            dev: false,
        };
        p.push(
            Op::IfExists(Box::new(op)),
            format!("make /proc/{r} read-only"),
        );
    }
    Ok(())
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// Parent side: a detached copy of the mount tree at `src` (open_tree with
/// OPEN_TREE_CLONE, recursive), for the child to attach with move_mount.
/// The path is resolved here, as the launcher: a root launcher binds a
/// workspace below a directory the job's host id cannot pass through (a
/// 0700 state directory, a `mktemp -d`). `None` when this launcher cannot
/// (kernel before 5.2: ENOSYS; no CAP_SYS_ADMIN in its mount namespace, as
/// an unprivileged launcher: EPERM): the child then binds the path, as the
/// launcher's own uid when unprivileged, so nothing is lost there.
pub(crate) fn open_tree_clone(src: &Path) -> Result<Option<OwnedFd>, Error> {
    let path = cs(src)?;
    // SAFETY: open_tree with a valid C string path and flags only; it
    // returns a new fd or -1.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            path.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
        )
    };
    if fd >= 0 {
        // SAFETY: a fresh fd that nothing else owns.
        return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) }));
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ENOSYS | libc::EPERM) => Ok(None),
        _ => Err(Error::new(format!(
            "mount source {}: open a copy of its mounts (open_tree): {err}",
            src.display()
        ))),
    }
}

/// Words to add when op `op` failed with `errno` in the child: a path bind
/// the job's host id may not pass through names the directory and the fix.
pub(crate) fn hint(op: &Op, errno: i32) -> Option<String> {
    let Op::Bind {
        src, dev: false, ..
    } = op
    else {
        return None;
    };
    let src = Path::new(std::ffi::OsStr::from_bytes(src.as_bytes()));
    // A host path (below /oldroot in the staging layout), not a path of
    // the root under construction.
    let host = match src.strip_prefix("/oldroot") {
        Ok(h) => h,
        Err(_) if !src.starts_with(STAGE) => src.strip_prefix("/").ok()?,
        Err(_) => return None,
    };
    if errno != libc::EACCES {
        return None;
    }
    Some(format!(
        " (the job's host id cannot pass through a parent directory of /{}, and this launcher cannot bind it by file descriptor: open_tree needs Linux 5.2+ and CAP_SYS_ADMIN; let the job's host id through each parent with `chmod o+x`, or move the directory)",
        host.display()
    ))
}

// ---- child side: system calls only, no allocation ----

const MOUNT_ATTR_RDONLY: u64 = 0x1;
const MOUNT_ATTR_NOSUID: u64 = 0x2;
const MOUNT_ATTR_NODEV: u64 = 0x4;
const AT_RECURSIVE: libc::c_uint = 0x8000;
/// MS_PRIVATE as `struct mount_attr` wants it (a u64 on every target).
const PROPAGATION_PRIVATE: u64 = 1 << 18;
/// statvfs f_flag bit (glibc has it in libc, musl does not).
const ST_RELATIME: libc::c_ulong = 0x1000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn check(r: libc::c_int) -> Result<(), i32> {
    if r < 0 { Err(errno()) } else { Ok(()) }
}

/// Sets mount attributes, recursively when asked; falls back to a remount
/// keeping the locked flags on kernels without mount_setattr (< 5.12).
fn set_attr(path: &CString, set: u64, recursive: bool) -> Result<(), i32> {
    set_attr_with(path, set, recursive, 0)
}

/// [`set_attr`], recursive, and private propagation in the same call.
fn set_attr_private(path: &CString, set: u64) -> Result<(), i32> {
    set_attr_with(path, set, true, PROPAGATION_PRIVATE)
}

fn set_attr_with(path: &CString, set: u64, recursive: bool, propagation: u64) -> Result<(), i32> {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    // SAFETY: mount_setattr with a valid path and a correctly sized struct.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            path.as_ptr(),
            if recursive { AT_RECURSIVE } else { 0 },
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = errno();
    if e != libc::ENOSYS {
        return Err(e);
    }
    if propagation != 0 {
        make_private(path)?;
    }
    // SAFETY: statvfs into a zeroed struct for a valid path.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    check(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    let mut flags = libc::MS_REMOUNT | libc::MS_BIND;
    for (st_flag, ms) in [
        (libc::ST_RDONLY, libc::MS_RDONLY),
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms;
        }
    }
    if set & MOUNT_ATTR_RDONLY != 0 {
        flags |= libc::MS_RDONLY;
    }
    if set & MOUNT_ATTR_NOSUID != 0 {
        flags |= libc::MS_NOSUID;
    }
    if set & MOUNT_ATTR_NODEV != 0 {
        flags |= libc::MS_NODEV;
    }
    // SAFETY: remount of a valid path with null source/type/data.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            path.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    })
}

/// openat(2) itself: musl's open() adds an fcntl(FD_CLOEXEC) per call,
/// two dozen system calls per start in the mount plan.
///
/// # Safety
/// `path` is a valid C string (always: a `CString`).
unsafe fn open_raw(path: &CString, flags: libc::c_int, mode: libc::mode_t) -> libc::c_int {
    // SAFETY: (caller) a valid path; flags and mode are plain values.
    unsafe {
        libc::syscall(
            libc::SYS_openat,
            libc::AT_FDCWD,
            path.as_ptr(),
            flags,
            mode as libc::c_uint,
        ) as libc::c_int
    }
}

/// Makes the mount at `path` and every mount below it private.
fn make_private(path: &CString) -> Result<(), i32> {
    // SAFETY: a propagation change of a valid path, null source/type/data.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            path.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })
}

impl Op {
    /// Runs the op (child side). Returns the errno on failure.
    pub(crate) fn run(&self) -> Result<(), i32> {
        match self {
            Op::Mkdir(path, mode) => {
                // SAFETY: valid C string path.
                let r = unsafe { libc::mkdir(path.as_ptr(), *mode) };
                if r < 0 && errno() != libc::EEXIST {
                    return Err(errno());
                }
                Ok(())
            }
            Op::Touch(path) => {
                // SAFETY: valid C string path; the fd is closed right away.
                let fd = unsafe {
                    open_raw(
                        path,
                        libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                        0o644,
                    )
                };
                if fd < 0 {
                    return Err(errno());
                }
                // SAFETY: closing the fd we just opened.
                unsafe { libc::close(fd) };
                Ok(())
            }
            Op::Symlink { target, path } => {
                // SAFETY: valid C strings.
                check(unsafe { libc::symlink(target.as_ptr(), path.as_ptr()) })
            }
            Op::Mount {
                src,
                dst,
                fstype,
                flags,
                data,
            } => {
                let fstype_ptr = if fstype.is_empty() {
                    std::ptr::null()
                } else {
                    fstype.as_ptr()
                };
                let data_ptr = if data.is_empty() {
                    std::ptr::null()
                } else {
                    data.as_ptr() as *const libc::c_void
                };
                // SAFETY: valid C strings or null where the kernel allows it.
                check(unsafe {
                    libc::mount(src.as_ptr(), dst.as_ptr(), fstype_ptr, *flags, data_ptr)
                })
            }
            Op::Bind { src, dst, rw, dev } => {
                // SAFETY: valid C strings, null type and data for a bind.
                check(unsafe {
                    libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    )
                })?;
                if *dev && *rw {
                    // A device node (or a /dev/null mask): nothing to
                    // restrict on it, and one system call less per start.
                    return Ok(());
                }
                let mut set = MOUNT_ATTR_NOSUID;
                if !dev {
                    set |= MOUNT_ATTR_NODEV;
                }
                if !rw {
                    set |= MOUNT_ATTR_RDONLY;
                }
                set_attr(dst, set, true)
            }
            Op::BindTree { tree, dst, rw } => {
                // SAFETY: move_mount of the detached tree `tree` (an fd the
                // launcher opened) onto a valid C string path.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_move_mount,
                        tree.as_raw_fd(),
                        c"".as_ptr(),
                        libc::AT_FDCWD,
                        dst.as_ptr(),
                        MOVE_MOUNT_F_EMPTY_PATH,
                    )
                };
                if r < 0 {
                    return Err(errno());
                }
                let mut set = MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV;
                if !rw {
                    set |= MOUNT_ATTR_RDONLY;
                }
                // The copy is a peer of the host's mount: made private, so
                // nothing mounted on one side appears on the other.
                set_attr_private(dst, set)
            }
            Op::ReadOnly(path) => set_attr(path, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, false),
            Op::Write { path, data } => {
                // SAFETY: valid path; the fd is closed below.
                let fd = unsafe {
                    open_raw(
                        path,
                        libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
                        0o644,
                    )
                };
                if fd < 0 {
                    return Err(errno());
                }
                let mut off = 0;
                while off < data.len() {
                    // SAFETY: writing from a valid slice of `data`.
                    let n = unsafe {
                        libc::write(
                            fd,
                            data[off..].as_ptr() as *const libc::c_void,
                            data.len() - off,
                        )
                    };
                    if n <= 0 {
                        let e = errno();
                        // SAFETY: closing our fd.
                        unsafe { libc::close(fd) };
                        return Err(e);
                    }
                    off += n as usize;
                }
                // SAFETY: closing our fd.
                unsafe { libc::close(fd) };
                Ok(())
            }
            Op::Chdir(path) => {
                // SAFETY: valid C string.
                check(unsafe { libc::chdir(path.as_ptr()) })
            }
            Op::PivotRoot { new, old } => {
                // SAFETY: pivot_root with two valid C strings.
                let r = unsafe { libc::syscall(libc::SYS_pivot_root, new.as_ptr(), old.as_ptr()) };
                if r < 0 { Err(errno()) } else { Ok(()) }
            }
            Op::Detach(path) => {
                // SAFETY: valid C string.
                check(unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) })
            }
            Op::IfExists(op) => match op.run() {
                Err(libc::ENOENT) => Ok(()),
                r => r,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_checked() {
        assert!(check_target(Path::new("/mnt/cache")).is_ok());
        assert!(check_target(Path::new("relative")).is_err());
        assert!(check_target(Path::new("/a/../etc")).is_err());
        assert!(check_target(Path::new("/")).is_err());
        assert!(check_target(Path::new("/proc/sys")).is_err());
        assert!(check_target(Path::new("/dev/sda")).is_err());
    }

    #[test]
    fn a_refused_path_bind_names_the_directory_and_the_fix() {
        let op = Op::Bind {
            src: cs("/oldroot/srv/state/runs/r1/workspace").unwrap(),
            dst: cs("/newroot/mnt/workspace").unwrap(),
            rw: true,
            dev: false,
        };
        let h = hint(&op, libc::EACCES).unwrap();
        assert!(h.contains("/srv/state/runs/r1/workspace"), "{h}");
        assert!(h.contains("chmod o+x"), "{h}");
        assert_eq!(hint(&op, libc::ENOENT), None);
        // The one-pivot layout binds host paths as they are.
        let op = Op::Bind {
            src: cs("/srv/state/runs/r1/workspace").unwrap(),
            dst: cs("/tmp/mnt/workspace").unwrap(),
            rw: true,
            dev: false,
        };
        let h = hint(&op, libc::EACCES).unwrap();
        assert!(h.contains("/srv/state/runs/r1/workspace"), "{h}");
    }

    #[test]
    fn open_tree_names_a_missing_source() {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        match open_tree_clone(Path::new("/nonexistent/liftoff-test")) {
            Err(e) => assert!(e.message.contains("/nonexistent/liftoff-test"), "{e}"),
            // Unprivileged: refused before the lookup; the child binds the
            // path and reports it.
            Ok(None) => assert!(!root, "a root launcher can open_tree"),
            Ok(Some(_)) => panic!("opened a path that does not exist"),
        }
    }

    #[test]
    fn a_path_bind_from_below_the_stage_needs_the_staging_pivot() {
        let ws = tempfile::tempdir_in(STAGE).unwrap();
        let mut p = Plan {
            ops: Vec::new(),
            dirs: BTreeSet::new(),
            by_fd: false,
            root: STAGE,
            host: "/",
            shadowed: false,
            part: Part::Whole,
            points_only: false,
            own: Vec::new(),
            job_mounts: false,
        };
        p.bind(Path::new("/usr"), &p.nr("/usr"), false).unwrap();
        assert!(!p.shadowed, "/usr is not below {STAGE}");
        let dst = p.nr(WORKSPACE);
        p.bind(ws.path(), &dst, true).unwrap();
        assert!(
            p.shadowed,
            "the root on {STAGE} covers {}",
            ws.path().display()
        );
    }

    #[test]
    fn one_pivot_root_when_nothing_is_bound_by_path_from_below_the_stage() {
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let ws = tempfile::tempdir_in(STAGE).unwrap();
        let spec = SandboxSpec::new(ws.path(), vec!["/bin/true".into()]);
        let ops = plan(&spec).unwrap();
        let pivots = ops
            .iter()
            .filter(|(op, _)| matches!(op, Op::PivotRoot { .. }))
            .count();
        // A root launcher binds the workspace by file descriptor; an
        // unprivileged one by path, from below the stage.
        assert_eq!(pivots, if root { 1 } else { 2 }, "root: {root}");
        let last = &ops[ops.len() - 4..];
        assert!(
            matches!(&last[0].0, Op::PivotRoot { new, old } if new.as_bytes() == b"." && old.as_bytes() == b".")
        );
        assert!(matches!(&last[1].0, Op::Detach(_)));
    }

    #[test]
    fn plan_binds_host_dirs_read_only_and_workspace_rw() {
        let ws = tempfile::tempdir().unwrap();
        let spec = SandboxSpec::new(ws.path(), vec!["/bin/true".into()]);
        let ops = plan(&spec).unwrap();
        let text: Vec<&str> = ops.iter().map(|(_, w)| w.as_str()).collect();
        assert!(
            text.iter()
                .any(|w| w.contains("read-write at /mnt/workspace"))
        );
        assert!(text.iter().any(|w| w.starts_with("mount proc at /proc")));
        assert!(text.contains(&"make / read-only"));
        // /usr is bound read-only (a real dir on every supported host).
        assert!(text.iter().any(|w| w.contains("/usr read-only at /usr")));
    }

    #[test]
    fn a_ready_made_root_holds_mount_points_and_the_job_plan_only_its_own_mounts() {
        let ws = tempfile::tempdir().unwrap();
        let mut spec = SandboxSpec::new(ws.path(), vec!["/bin/true".into()]);
        spec.mounts.push(BindMount {
            source: ws.path().to_path_buf(),
            target: "/mnt/extra/dir".into(),
            writable: false,
        });
        // The root's part, without opening anything: mount points for the
        // job's own mounts, no tmpfs of the job's, no devpts, no masks.
        let p = plan_with(&spec, true, Part::Root).unwrap();
        let root: Vec<&str> = p.ops.iter().map(|(_, w)| w.as_str()).collect();
        for dir in [
            "/mnt/workspace",
            "/mnt/extra/dir",
            "/home/spacelift",
            "/dev/pts",
            "/dev/shm",
        ] {
            assert!(
                root.iter()
                    .any(|w| *w == format!("create directory {STAGE}{dir}")),
                "{dir} missing from {root:#?}"
            );
        }
        assert!(!root.iter().any(|w| w.contains("at /mnt/workspace")));
        assert!(!root.iter().any(|w| w.starts_with("mount devpts")));
        assert!(!root.iter().any(|w| w.starts_with("mask ")));
        assert!(root.contains(&"make / read-only"));
        assert!(root.iter().any(|w| w.starts_with("mount proc at /proc")));
        // The job's part: no directory, no root, its own mounts in order,
        // devpts before /proc and its masks.
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(
                job_plan(&spec).is_err(),
                "binds by path cannot reach the host"
            );
            return;
        }
        let job = job_plan(&spec).unwrap();
        let what: Vec<&str> = job.iter().map(|(_, w)| w.as_str()).collect();
        assert!(job.iter().all(|(op, _)| !matches!(
            op,
            Op::Mkdir(..) | Op::Touch(_) | Op::PivotRoot { .. } | Op::Detach(_)
        )));
        assert!(
            what[0].ends_with("read-write at /mnt/workspace"),
            "{what:#?}"
        );
        let at = |w: &str| what.iter().position(|x| x.starts_with(w)).unwrap();
        assert!(at("mount devpts at /dev/pts") < at("mount proc at /proc"));
        assert!(at("mount proc at /proc") < at("mask /proc/keys"));
    }
}
