//! The escape suite: each test makes an attempt inside `liftoff exec` (the
//! built binary, as root, runtime liftoff) and asserts it is refused.
//! Tests needing root FAIL (never skip) when not run as root.
//!
//! # How a probe proves something
//!
//! The C probes (tests/support/probe.c) make one attempt each and print
//! `result LABEL: OUTCOME (DETAIL)`, OUTCOME being `ok` or the errno name of
//! the refusal. They do not judge; each test states, in a [`Probe`]:
//!
//! 1. **The exact refusal** the sandbox must give: `EPERM` (the seccomp
//!    deny-list, or a capability the job lacks), `ESRCH` (a host process
//!    absent from the job's pid namespace), `ENOENT` (a path absent from the
//!    job's root, /sys included), `EACCES` (/proc/1, liftoff's init, is not
//!    the job's to inspect; /proc files the job does not own), `EROFS` (the
//!    read-only root and binds), `EINVAL` (uid 0 has no mapping in the job's
//!    user namespace), `ECONNREFUSED` (the job's own empty loopback), and
//!    two that are not errnos: `EMPTY` (a /proc file masked with /dev/null)
//!    and `IGNORED` (a signal the kernel drops). Any other outcome, another
//!    error included, fails the test: an attempt that failed for an
//!    unrelated reason (a bad argument, a missing file) proves nothing.
//! 2. **A control run**: the same probe, directly on the host as root, with
//!    no sandbox (no namespaces, no seccomp, all capabilities). It must show
//!    the attempt gets through there, so the refusal above is the
//!    sandbox's, not the host's or the probe's own:
//!    - [`Control::Succeeds`]: the call succeeds. Probes that change state
//!      undo it (unmount, unlink, write back the value they just read) and
//!      act on the probe's own objects (a new pty, its own keyring, a host
//!      `sleep` the test started), so this is harmless.
//!    - [`Control::PassesCheck`]: for calls whose success would harm the
//!      host, the probe passes an argument the kernel rejects only AFTER its
//!      privilege check (a wrong reboot magic, a nonexistent swap file or
//!      new root, a foreign kexec architecture, an empty module image), so
//!      the host answers that argument error (listed) where the sandbox
//!      answers EPERM. `ENOSYS` is listed where the kernel may lack the
//!      facility (this CI VM's has no modules and no kexec): the sandbox's
//!      EPERM then can only come from its seccomp filter.
//!    - [`Control::Destructive`]: no control run, because success on the
//!      host would harm it (SIGKILL to the host's init, setting its clock);
//!      the reason is given at each use and printed.
//!
//!    A control run that gives the refusal itself (or anything not listed)
//!    is reported as NOT MEANINGFUL and fails the test loudly.
//!
//! A few /proc files do not exist on every kernel (this VM has no
//! /proc/kcore and no /proc/sysrq-trigger): tests probing such optional
//! files probe each one the host has and print the ones it lacks; a test
//! fails if the host has none of its files.
//!
//! Tests that are not errno probes check an observed effect instead: host
//! processes invisible and alive, a setuid binary not giving root, all
//! capabilities dropped, the pids and memory limits (the fork bomb stops on
//! `EAGAIN`; the memory hog, which the host lets allocate, is OOM-killed),
//! and no daemonized process outliving a timeout, a cancel or the
//! launcher's SIGKILL. The fork bomb has no control run (destructive).
//!
//! Run with `--nocapture` to see each control and sandbox result.

mod support;

use std::io::Read;
use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use support::sandbox::*;

/// A fake launcher state dir with a key and token, as a real host has.
struct HostSecrets {
    dir: std::path::PathBuf,
}

impl HostSecrets {
    fn new() -> HostSecrets {
        let dir = std::path::PathBuf::from(format!("/var/lib/liftoff-escape-{}", unique()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("pool.key"),
            "-----BEGIN PRIVATE KEY-----\nSECRETKEY\n",
        )
        .unwrap();
        std::fs::write(dir.join("token"), "SECRETTOKEN").unwrap();
        HostSecrets { dir }
    }
}

impl Drop for HostSecrets {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where the job's root is not the host's: the path is absent (ENOENT).
const ABSENT: &[&str] = &["ENOENT"];
/// Through /proc/1 (liftoff's init, not the job's to inspect): EACCES.
const EACCES: &[&str] = &["EACCES"];

#[test]
fn cannot_read_etc_shadow() {
    require_root();
    // The control reads through a host process of our own (host pid 1 is
    // not ours to inspect on every host): the same /proc/PID/root link.
    let host = HostChild::sleep_in("/", &[]);
    let via_host = format!("/proc/{}/root/etc/shadow", host.pid());
    Probe::new(&["read", "/etc/shadow"], ABSENT, Control::Succeeds).check();
    Probe::new(
        &["read", "/proc/1/root/etc/shadow"],
        EACCES,
        Control::Succeeds,
    )
    .host_args(&["read", &via_host])
    .check();
}

#[test]
fn cannot_read_root_home() {
    require_root();
    Probe::new(&["list", "/root"], ABSENT, Control::Succeeds).check();
}

#[test]
fn cannot_read_launcher_key_file() {
    require_root();
    let s = HostSecrets::new();
    let key = s.dir.join("pool.key").display().to_string();
    let host = HostChild::sleep_in("/", &[]);
    let (root, cwd) = (format!("/proc/1/root{key}"), format!("/proc/1/cwd{key}"));
    let host_root = format!("/proc/{}/root{key}", host.pid());
    let host_cwd = format!("/proc/{}/cwd{key}", host.pid());
    Probe::new(&["read", &key], ABSENT, Control::Succeeds).check();
    Probe::new(&["read", &root], EACCES, Control::Succeeds)
        .host_args(&["read", &host_root])
        .check();
    Probe::new(&["read", &cwd], EACCES, Control::Succeeds)
        .host_args(&["read", &host_cwd])
        .check();
}

#[test]
fn cannot_read_launcher_state_dir() {
    require_root();
    let s = HostSecrets::new();
    let dir = s.dir.display().to_string();
    let token = s.dir.join("token").display().to_string();
    Probe::new(&["list", &dir], ABSENT, Control::Succeeds).check();
    Probe::new(&["read", &token], ABSENT, Control::Succeeds).check();
    Probe::new(&["list", "/var/lib"], ABSENT, Control::Succeeds).check();
}

#[test]
fn cannot_read_launcher_environment_through_init() {
    require_root();
    // The launcher (liftoff's init is pid 1 in the job's namespace) holds a
    // token in its environment; the control reads the environment of a host
    // process of our own that holds it too.
    let host = HostChild::sleep_in("/", &[("SPACELIFT_TOKEN", "SECRETTOKENENV")]);
    let environ = format!("/proc/{}/environ", host.pid());
    let mem = format!("/proc/{}/mem", host.pid());
    let mount = format!("{}:/opt/probe:ro", probe_dir().display());
    let in_sandbox = |path: &str| {
        let o = liftoff_exec(&["--mount", &mount], &["/opt/probe/probe", "read", path])
            .env("SPACELIFT_TOKEN", "SECRETTOKENENV")
            .output()
            .unwrap();
        run_of(o)
    };
    Probe::new(&["read", "/proc/1/environ"], EACCES, Control::Succeeds)
        .host_args(&["read", &environ])
        .check_run(|| in_sandbox("/proc/1/environ"));
    // /proc/PID/mem is checked at open; reading address 0 then fails (EIO).
    Probe::new(
        &["read", "/proc/1/mem"],
        EACCES,
        Control::PassesCheck(&["EIO"]),
    )
    .host_args(&["read", &mem])
    .check_run(|| in_sandbox("/proc/1/mem"));
}

#[test]
fn cannot_write_under_usr() {
    require_root();
    // Control: the same new file on the host, removed at once.
    let name = format!("/usr/liftoff-escape-{}", unique());
    Probe::new(&["create", &name], &["EROFS"], Control::Succeeds).check();
    assert!(!std::path::Path::new(&name).exists());
}

#[test]
fn cannot_write_outside_workspace() {
    require_root();
    // Control: each new file on the host, removed at once. (/proc takes no
    // new files even on the host, so it proves nothing and is not probed.)
    let n = unique();
    for dir in ["", "/etc", "/usr/bin", "/home", "/mnt"] {
        let p = format!("{dir}/liftoff-escape-{n}");
        Probe::new(&["create", &p], &["EROFS"], Control::Succeeds).check();
    }
}

#[test]
fn cannot_see_host_processes() {
    require_root();
    let marker = format!("{}", 500000 + unique() % 100000);
    let mut host = std::process::Command::new("sleep")
        .arg(&marker)
        .spawn()
        .unwrap();
    let r = sh(
        &[],
        "cat /proc/[0-9]*/cmdline | tr '\\0' ' '; echo; ls -d /proc/[0-9]* | wc -l",
    );
    let _ = host.kill();
    let _ = host.wait();
    assert!(!r.stdout.contains(&marker), "host process visible: {r:#?}");
    let count: usize = r.stdout.lines().last().unwrap().trim().parse().unwrap();
    assert!(count <= 6, "{count} processes visible: {r:#?}");
}

/// The outcome of one probe run: its `result` line, split.
#[derive(Debug)]
struct Outcome {
    /// `ok`, an errno name, `EMPTY` or `IGNORED`.
    outcome: String,
    /// The whole `result ...` line.
    line: String,
    /// The whole run, shown when an assertion fails.
    #[allow(dead_code)]
    run: Run,
}

impl Outcome {
    #[track_caller]
    fn parse(run: Run, where_: &str) -> Outcome {
        let line = run
            .stdout
            .lines()
            .find(|l| l.starts_with("result "))
            .map(str::to_string);
        let Some(line) = line.filter(|_| run.code == 0) else {
            panic!("the probe printed no result {where_}: {run:#?}");
        };
        let outcome = line
            .split_once(": ")
            .map(|(_, o)| o.split(' ').next().unwrap_or("").to_string())
            .unwrap_or_default();
        Outcome { outcome, line, run }
    }
}

/// How the control run (the probe on the host, no sandbox) must come out.
#[derive(Clone, Copy)]
enum Control {
    /// The attempt succeeds on the host.
    Succeeds,
    /// The host passes the privilege check and the kernel then rejects the
    /// probe's harmless argument with one of these (or lacks the call).
    PassesCheck(&'static [&'static str]),
    /// Not run: success would harm the host (the reason).
    Destructive(&'static str),
}

/// One probe: its arguments in the sandbox, the refusals accepted there,
/// the control, and (when they differ) its arguments on the host.
struct Probe<'a> {
    args: &'a [&'a str],
    refused: &'a [&'a str],
    control: Control,
    host_args: Option<&'a [&'a str]>,
}

impl<'a> Probe<'a> {
    fn new(args: &'a [&'a str], refused: &'a [&'a str], control: Control) -> Probe<'a> {
        Probe {
            args,
            refused,
            control,
            host_args: None,
        }
    }

    fn host_args(mut self, a: &'a [&'a str]) -> Probe<'a> {
        self.host_args = Some(a);
        self
    }

    /// Runs the control, then the probe in the sandbox (with `exec_args`),
    /// and asserts both.
    #[track_caller]
    fn check_with(&self, exec_args: &[&str]) {
        self.check_run(|| probe(exec_args, self.args));
    }

    #[track_caller]
    fn check(&self) {
        self.check_with(&[]);
    }

    /// Runs the control, then `sandboxed` (the probe in the sandbox), and
    /// asserts both.
    #[track_caller]
    fn check_run(&self, sandboxed: impl FnOnce() -> Run) {
        let name = self.args.join(" ");
        match self.control {
            Control::Destructive(why) => {
                eprintln!("control {name}: not run ({why})");
            }
            Control::Succeeds | Control::PassesCheck(_) => {
                let c = on_host(self.host_args.unwrap_or(self.args));
                eprintln!("control {name}: {}", c.line);
                let meaningful = match self.control {
                    Control::PassesCheck(ok) => {
                        c.outcome == "ok" || ok.contains(&c.outcome.as_str())
                    }
                    _ => c.outcome == "ok",
                };
                let must = match self.control {
                    Control::PassesCheck(ok) => format!("ok or one of {ok:?}"),
                    _ => "ok".to_string(),
                };
                assert!(
                    meaningful && !self.refused.contains(&c.outcome.as_str()),
                    "NOT MEANINGFUL: probe `{name}` is refused by the host itself, \
                     without any sandbox ({}; the control must give {must}), so its \
                     refusal in the sandbox would prove nothing: make the probe \
                     meaningful on this host: {c:#?}",
                    c.line
                );
            }
        }
        let s = Outcome::parse(sandboxed(), "in the sandbox");
        eprintln!("sandbox {name}: {}", s.line);
        assert!(
            self.refused.contains(&s.outcome.as_str()),
            "probe `{name}` in the sandbox: expected the refusal {:?}, got {} \
             ({}): {s:#?}",
            self.refused,
            s.outcome,
            if s.outcome == "ok" {
                "ESCAPED"
            } else {
                "a different failure proves nothing"
            },
        );
    }
}

/// Runs the probe directly on the host as root (the control), in a fresh
/// scratch directory as its working directory.
#[track_caller]
fn on_host(args: &[&str]) -> Outcome {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("escape-control-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = std::process::Command::new(probe_dir().join("probe"))
        .args(args)
        .current_dir(&dir)
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    Outcome::parse(run_of(out), "on the host (control)")
}

/// A [`Run`] from a finished process.
fn run_of(out: std::process::Output) -> Run {
    use std::os::unix::process::ExitStatusExt;
    Run {
        code: out
            .status
            .code()
            .unwrap_or_else(|| 128 + out.status.signal().unwrap_or(0)),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Those of `paths` the host has; prints the others. Fails when none.
#[track_caller]
fn present_on_host<'a>(paths: &[&'a str]) -> Vec<&'a str> {
    let (have, lack): (Vec<&str>, Vec<&str>) =
        paths.iter().partition(|p| std::path::Path::new(p).exists());
    for p in &lack {
        eprintln!("{p}: absent on this host's kernel, nothing to probe");
    }
    assert!(
        !have.is_empty(),
        "NOT MEANINGFUL: the host has none of {paths:?}"
    );
    have
}

const EPERM: &[&str] = &["EPERM"];

/// A host process of the test's, killed when dropped.
struct HostChild(std::process::Child);

impl HostChild {
    /// `sleep 600` on the host.
    fn sleep() -> HostChild {
        HostChild::sleep_in(".", &[])
    }

    /// `sleep 600` on the host in directory `cwd` with `env` added.
    fn sleep_in(cwd: &str, env: &[(&str, &str)]) -> HostChild {
        HostChild(
            std::process::Command::new("sleep")
                .arg("600")
                .current_dir(cwd)
                .envs(env.iter().copied())
                .spawn()
                .unwrap(),
        )
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for HostChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn cannot_signal_host_processes() {
    require_root();
    // Control: SIGKILL to a host process of our own, from the host.
    let mut victim = HostChild::sleep();
    let c = on_host(&["kill", &victim.pid()]);
    assert_eq!(c.outcome, "ok", "NOT MEANINGFUL: {c:#?}");
    assert!(
        eventually(Duration::from_secs(5), || !victim.alive()),
        "control: the host's kill did not kill"
    );
    // In the sandbox the host pid does not exist.
    let mut host = HostChild::sleep();
    let pid = host.pid();
    let r = Outcome::parse(probe(&[], &["kill", &pid]), "in the sandbox");
    let r2 = sh(&[], "kill -9 -1; echo done");
    assert!(host.alive(), "host process was killed: {r:#?} {r2:#?}");
    assert_eq!(r.outcome, "ESRCH", "{r:#?}");
    assert!(r2.stdout.contains("done"), "{r2:#?}");
}

#[test]
fn cannot_kill_sandbox_init() {
    require_root();
    // EPERM: pid 1 (liftoff's init) is not the job's to signal; IGNORED:
    // the kernel drops it (init of a pid namespace has no handler).
    Probe::new(
        &["kill-init"],
        &["EPERM", "IGNORED"],
        Control::Destructive("SIGKILL to the host's pid 1 would take the machine down"),
    )
    .check();
}

#[test]
fn cannot_ptrace_init() {
    require_root();
    // The control seizes a host process of our own rather than the host's
    // pid 1 (the VM's agent here): the same permission check, no risk.
    let host = HostChild::sleep();
    let pid = host.pid();
    Probe::new(&["ptrace", "1"], EPERM, Control::Succeeds)
        .host_args(&["ptrace", &pid])
        .check();
}

#[test]
fn cannot_ptrace_host_process() {
    require_root();
    let host = HostChild::sleep();
    let pid = host.pid();
    // ESRCH: the host process does not exist in the job's pid namespace.
    Probe::new(&["ptrace", &pid], &["ESRCH"], Control::Succeeds).check();
}

#[test]
fn cannot_mount() {
    require_root();
    // Control: mounts on a fresh directory under the host's /tmp and
    // unmounts at once.
    Probe::new(&["mount"], EPERM, Control::Succeeds).check();
    Probe::new(&["mount-proc"], EPERM, Control::Succeeds).check();
}

#[test]
fn cannot_pivot_root_or_chroot() {
    require_root();
    // pivot_root on the host would swap the root of every host process: the
    // probe names a new root that does not exist, which the kernel resolves
    // only after checking CAP_SYS_ADMIN (so the host answers ENOENT).
    Probe::new(&["pivot_root"], EPERM, Control::PassesCheck(&["ENOENT"])).check();
    // chroot changes only the probe's own root.
    Probe::new(&["chroot"], EPERM, Control::Succeeds).check();
}

#[test]
fn cannot_setns() {
    require_root();
    // Re-entering its own mount namespace: allowed to root, changes nothing.
    Probe::new(&["setns"], EPERM, Control::Succeeds).check();
}

#[test]
fn cannot_create_user_namespace() {
    require_root();
    // Control: the new namespaces belong to the probe process alone.
    Probe::new(&["unshare-user"], EPERM, Control::Succeeds).check();
    Probe::new(&["clone-user"], EPERM, Control::Succeeds).check();
    Probe::new(&["unshare-ns"], EPERM, Control::Succeeds).check();
}

#[test]
fn cannot_load_kernel_modules() {
    require_root();
    // No module image is at hand (and loading one would change the host's
    // kernel): the probes load an empty image, which a caller allowed to
    // load modules gets as EINVAL/ENOEXEC from the loader; a kernel without
    // module support (this CI VM's) answers ENOSYS, so there the sandbox's
    // EPERM is its seccomp filter's.
    let after = Control::PassesCheck(&["EINVAL", "ENOEXEC", "ENOSYS"]);
    Probe::new(&["module"], EPERM, after).check();
    Probe::new(&["init_module"], EPERM, after).check();
}

#[test]
fn cannot_use_keyctl() {
    require_root();
    // Control: a new session keyring, and a key in the probe's own process
    // keyring, both gone when it exits.
    Probe::new(&["keyctl"], EPERM, Control::Succeeds).check();
    Probe::new(&["add_key"], EPERM, Control::Succeeds).check();
}

#[test]
fn cannot_mknod() {
    require_root();
    // Control: a /dev/mem node (mode 0600) in a fresh directory under the
    // host's /tmp, removed at once.
    Probe::new(&["mknod"], EPERM, Control::Succeeds).check();
}

#[test]
fn cannot_write_proc_sys() {
    require_root();
    // Write-back: the probe writes what it just read, a no-op on the host.
    // The job is not the owner of these files (EACCES); were it root in its
    // namespace, the read-only bind would answer EROFS.
    let refused = &["EACCES", "EROFS"];
    for f in [
        "/proc/sys/kernel/hostname",
        "/proc/irq/default_smp_affinity",
    ] {
        Probe::new(&["write-back", f], refused, Control::Succeeds).check();
    }
    // sysrq 'h' only prints help to the kernel log; kernels without
    // CONFIG_MAGIC_SYSRQ (this VM's) have no trigger file to protect.
    if std::path::Path::new("/proc/sysrq-trigger").exists() {
        Probe::new(&["sysrq"], refused, Control::Succeeds).check();
    } else {
        eprintln!("/proc/sysrq-trigger: absent on this host's kernel, nothing to probe");
    }
}

#[test]
fn cannot_write_sys() {
    require_root();
    // ENOENT: the sandbox has no /sys. Control: loopback's MTU written back.
    Probe::new(
        &["write-back", "/sys/class/net/lo/mtu"],
        &["ENOENT"],
        Control::Succeeds,
    )
    .check();
}

#[test]
fn kernel_information_in_proc_is_masked() {
    require_root();
    // Files the sandbox hides behind /dev/null (they read as EMPTY); the
    // control reads bytes from each on the host. /proc/kcore exists only
    // with CONFIG_PROC_KCORE (not on this VM).
    let files = present_on_host(&["/proc/kcore", "/proc/timer_list", "/proc/interrupts"]);
    for f in files {
        Probe::new(&["read", f], &["EMPTY"], Control::Succeeds).check();
    }
}

#[test]
fn cannot_use_bpf_perf_userfaultfd_io_uring() {
    require_root();
    // Control: a trivial socket filter, a software counter on the probe
    // itself, a userfaultfd and a one-entry ring, all closed on exit.
    for p in ["bpf", "perf", "userfaultfd", "io_uring"] {
        Probe::new(&[p], EPERM, Control::Succeeds).check();
    }
}

#[test]
fn cannot_reboot_kexec_swap_or_set_clock() {
    require_root();
    // Each is harmless by construction: an argument the kernel rejects only
    // after the privilege check (see probe.c).
    Probe::new(&["reboot"], EPERM, Control::PassesCheck(&["EINVAL"])).check();
    Probe::new(
        &["kexec"],
        EPERM,
        Control::PassesCheck(&["EINVAL", "ENOSYS"]),
    )
    .check();
    Probe::new(
        &["swapon"],
        EPERM,
        Control::PassesCheck(&["ENOENT", "ENOSYS"]),
    )
    .check();
    // The kernel validates the time before the privilege check, so no
    // argument makes this harmless on the host.
    Probe::new(
        &["clock"],
        EPERM,
        Control::Destructive("setting the host's clock disturbs every timer on it"),
    )
    .check();
}

#[test]
fn cannot_open_by_handle() {
    require_root();
    // A real handle of the probe binary, made on the host; the sandbox sees
    // the same file system through its /opt/probe bind ("shocker").
    let dir = probe_dir();
    let bin = dir.join("probe");
    let h = std::process::Command::new(&bin)
        .args(["handle-of", bin.to_str().unwrap()])
        .output()
        .unwrap();
    let handle = String::from_utf8_lossy(&h.stdout).trim().to_string();
    assert!(
        h.status.success() && !handle.is_empty(),
        "the host file system gives no file handles: {h:?}"
    );
    let host_dir = dir.to_str().unwrap();
    Probe::new(
        &["open_by_handle", &handle, "/opt/probe"],
        EPERM,
        Control::Succeeds,
    )
    .host_args(&["open_by_handle", &handle, host_dir])
    .check();
}

#[test]
fn cannot_inject_terminal_input() {
    require_root();
    // The probe opens a new pty and pushes a byte into it: it types into no
    // other terminal, on the host or in the sandbox.
    Probe::new(&["tiocsti"], EPERM, Control::Succeeds).check();
}

#[test]
fn cannot_become_root_inside() {
    require_root();
    // EINVAL: uid 0 has no mapping in the job's user namespace. The control
    // runs as root, where both succeed (the chown on a file in a scratch
    // directory), showing the probe reports a success when there is one.
    Probe::new(&["setuid0"], &["EINVAL"], Control::Succeeds).check();
    Probe::new(&["chown-root"], &["EINVAL"], Control::Succeeds).check();
}

#[test]
fn setuid_binaries_do_not_give_root() {
    require_root();
    // A setuid-root copy of `id`, mounted into the sandbox.
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("suid-{}", unique()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy("/usr/bin/id", dir.join("id")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("id"), std::fs::Permissions::from_mode(0o4755)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let m = format!("{}:/opt/suid:ro", dir.display());
    let r = exec(
        &["--mount", &m],
        &[
            "/bin/sh",
            "-c",
            "/opt/suid/id -u; /opt/suid/id -g; su -c id root </dev/null; sudo -n id; echo done",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let ids: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(ids.first(), Some(&"1983"), "{r:#?}");
    assert!(!r.stdout.contains("uid=0"), "{r:#?}");
    assert!(r.stdout.contains("done"));
}

#[test]
fn network_none_cannot_reach_host_loopback() {
    require_root();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    // A second control: the sandbox with host network reaches it.
    let ok = Outcome::parse(
        probe(&["--network", "host"], &["connect", "127.0.0.1", &port]),
        "with host network",
    );
    assert_eq!(
        ok.outcome, "ok",
        "NOT MEANINGFUL: the host listener should be reachable with host network: {ok:#?}"
    );
    // ECONNREFUSED: the job's own loopback, where nothing listens.
    Probe::new(
        &["connect", "127.0.0.1", &port],
        &["ECONNREFUSED"],
        Control::Succeeds,
    )
    .check_with(&["--network", "none"]);
}

#[test]
fn cannot_connect_to_host_abstract_socket() {
    require_root();
    require(
        liftoff::sandbox::landlock::abi() >= 6,
        "landlock ABI 6 (kernel 6.12+) scopes abstract unix sockets",
    );
    let name = format!("liftoff-escape-{}", unique());
    // Bind an abstract socket on the host with a small helper process.
    let mut host = HostChild(
        std::process::Command::new("python3")
            .args(["-c", &format!("import socket,time\ns=socket.socket(socket.AF_UNIX)\ns.bind('\\0{name}')\ns.listen(8)\nprint('up',flush=True)\ntime.sleep(60)")])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 binds the host abstract socket"),
    );
    let mut buf = [0u8; 3];
    host.0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    // EPERM: landlock's abstract-socket scope (host network, so the socket
    // is in the job's network namespace and only landlock stands between).
    Probe::new(&["abstract", &name], EPERM, Control::Succeeds).check_with(&["--network", "host"]);
}

#[test]
fn fork_bomb_is_contained_by_pids() {
    require_root();
    // No control: a fork bomb on the host is the harm itself.
    let r = Outcome::parse(
        probe(&["--pids", "64", "--timeout", "20s"], &["forkbomb"]),
        "in the sandbox",
    );
    assert_eq!(r.outcome, "EAGAIN", "{r:#?}");
    let n: u32 = r
        .line
        .split("(forked ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(n < 64, "forked {n} processes with --pids 64");
    // The launcher (this test) is alive and the host can still fork.
    assert!(
        std::process::Command::new("true")
            .status()
            .unwrap()
            .success()
    );
}

#[test]
fn memory_hog_is_killed_as_oom() {
    require_root();
    // Control: the host gives the probe its 512 MiB.
    let c = on_host(&["memhog", "512"]);
    assert_eq!(c.outcome, "ok", "NOT MEANINGFUL: {c:#?}");
    let r = probe(
        &["--memory", "64MiB", "--timeout", "60s"],
        &["memhog", "512"],
    );
    assert_eq!(r.code, 137, "{r:#?}");
    assert!(r.stderr.contains("out of memory"), "{r:#?}");
    assert!(!r.stdout.contains("result memhog: ok"), "{r:#?}");
}

fn daemon_marker() -> String {
    format!("{}", 700000 + unique() % 100000)
}

/// The host's processes of the probe's daemon (`sleep <m>`).
fn daemon_pids(m: &str) -> Vec<i32> {
    host_pids_with(&format!("sleep {m}"))
}

/// Whether the daemon is gone from the host within `within`.
fn daemon_gone(m: &str, within: Duration) -> bool {
    eventually(within, || daemon_pids(m).is_empty())
}

/// `liftoff exec` of the probe's `daemon` command, stdout piped, running
/// once its daemon shows on the host.
fn spawn_probe_daemon(m: &str, stderr: Stdio) -> std::process::Child {
    let mount = format!("{}:/opt/probe:ro", probe_dir().display());
    let child = liftoff_exec(&["--mount", &mount], &["/opt/probe/probe", "daemon", m])
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !daemon_pids(m).is_empty()),
        "the daemon never started"
    );
    child
}

#[test]
fn daemonized_grandchild_dies_on_timeout() {
    require_root();
    let m = daemon_marker();
    let r = probe(&["--timeout", "1s"], &["daemon", &m]);
    assert_eq!(r.code, 124, "{r:#?}");
    assert!(r.stdout.contains("daemon started"), "{r:#?}");
    assert!(
        daemon_gone(&m, Duration::from_secs(2)),
        "a daemonized grandchild survived the timeout"
    );
}

#[test]
fn daemonized_grandchild_dies_on_cancel() {
    require_root();
    let m = daemon_marker();
    let mut child = spawn_probe_daemon(&m, Stdio::piped());
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        daemon_gone(&m, Duration::from_secs(3)),
        "a daemonized grandchild survived the cancel"
    );
}

#[test]
fn nothing_survives_launcher_sigkill() {
    require_root();
    let m = daemon_marker();
    let mut child = spawn_probe_daemon(&m, Stdio::inherit());
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        daemon_gone(&m, Duration::from_secs(3)),
        "a job process survived the launcher's SIGKILL: {:?}",
        daemon_pids(&m)
    );
}

#[test]
fn capabilities_are_all_dropped() {
    require_root();
    let r = sh(
        &[],
        "grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|CapInh|NoNewPrivs|Seccomp):' /proc/self/status",
    );
    for line in r.stdout.lines() {
        let (k, v) = line.split_once(':').unwrap();
        let v = v.trim();
        match k {
            "NoNewPrivs" => assert_eq!(v, "1"),
            "Seccomp" => assert_eq!(v, "2"),
            _ => assert_eq!(v, "0000000000000000", "{k}"),
        }
    }
    assert_eq!(r.stdout.lines().count(), 7, "{r:#?}");
}
