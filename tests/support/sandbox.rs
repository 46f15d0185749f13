//! Sandbox test support: run `liftoff exec` (the built binary) as root or as
//! an unprivileged user, the C escape probes (probe.c, compiled once with
//! the host's cc), host process scans. Tests that need root or a kernel
//! feature call [`require_root`] / [`require`] and FAIL with the reason.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The liftoff binary under test ([`super::liftoff_bin`]: `LIFTOFF_TEST_BIN`
/// or the one cargo built for this run).
pub fn bin() -> PathBuf {
    super::liftoff_bin()
}

/// Fails the test unless it runs as root (CI runs as root).
pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "this test needs root (CI runs tests as root): run `sudo cargo test`"
    );
}

/// Fails the test with `reason` unless `ok`.
pub fn require(ok: bool, reason: &str) {
    assert!(ok, "missing host feature: {reason}");
}

/// Directory holding the compiled probe (mounted read-only at /opt/probe).
pub fn probe_dir() -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sandbox-probe");
        std::fs::create_dir_all(&dir).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/probe.c");
        let bin = dir.join("probe");
        let fresh = match (std::fs::metadata(&bin), std::fs::metadata(&src)) {
            (Ok(b), Ok(s)) => b.modified().unwrap() >= s.modified().unwrap(),
            _ => false,
        };
        if !fresh {
            let tmp = dir.join(format!("probe.{}", std::process::id()));
            let out = Command::new("cc")
                .args(["-O1", "-o"])
                .arg(&tmp)
                .arg(&src)
                .output()
                .expect("the escape probes need a C compiler (cc): install gcc");
            assert!(
                out.status.success(),
                "compiling probe.c failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::fs::rename(&tmp, &bin).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        for p in [PathBuf::from(env!("CARGO_TARGET_TMPDIR")), dir.clone()] {
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755));
        }
        dir
    })
    .clone()
}

/// The result of one `liftoff exec`.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn from(o: Output) -> Run {
        use std::os::unix::process::ExitStatusExt;
        Run {
            code: o
                .status
                .code()
                .unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0)),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Asserts a probe (probe.c) printed a result other than `ok`. Loose:
    /// tests/sandbox_escape.rs requires the exact refusal and a control.
    #[track_caller]
    pub fn assert_blocked(&self) {
        let outcome = self
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("result "))
            .and_then(|l| l.split_once(": "))
            .map(|(_, o)| o.split(' ').next().unwrap_or(""));
        assert!(
            self.code == 0 && outcome.is_some_and(|o| o != "ok"),
            "escape NOT blocked: {self:#?}"
        );
    }
}

/// A `liftoff exec` command with a clean environment.
pub fn liftoff_exec(args: &[&str], cmd: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("LIFTOFF_KILL_GRACE", "1s")
        .arg("exec")
        .args(args)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null());
    c
}

/// Runs `liftoff exec ARGS -- CMD`.
pub fn exec(args: &[&str], cmd: &[&str]) -> Run {
    Run::from(liftoff_exec(args, cmd).output().unwrap())
}

/// Runs `sh -c SCRIPT` in the sandbox.
pub fn sh(args: &[&str], script: &str) -> Run {
    exec(args, &["/bin/sh", "-c", script])
}

/// Runs the probe `/opt/probe/probe PROBE_ARGS` in the sandbox.
pub fn probe(args: &[&str], probe_args: &[&str]) -> Run {
    let mount = format!("{}:/opt/probe:ro", probe_dir().display());
    let mut all = vec!["--mount", mount.as_str()];
    all.extend_from_slice(args);
    let mut cmd = vec!["/opt/probe/probe"];
    cmd.extend_from_slice(probe_args);
    exec(&all, &cmd)
}

/// Host pids whose command line starts with `marker`.
pub fn host_pids_with(marker: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.starts_with(marker) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// The host uids (real, effective, saved, filesystem) of the first process
/// whose command line starts with `marker`, once one shows (within 5 s),
/// with the `Uid:` line of its `/proc/PID/status` they come from.
pub fn host_uids_of(marker: &str) -> (Vec<u32>, String) {
    assert!(
        eventually(Duration::from_secs(5), || !host_pids_with(marker)
            .is_empty()),
        "no host process `{marker}`"
    );
    let pid = host_pids_with(marker)[0];
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap()
        .to_string();
    let uids = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    (uids, line)
}

/// Waits up to `limit` for `f` to hold.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

/// A number unique to this call, for markers.
pub fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    (t % 1_000_000_000) * 100 + N.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 100
}

/// The unprivileged test user (created with useradd when missing).
pub const TEST_USER: &str = "liftoff-test";

/// uid and gid of [`TEST_USER`], creating the user if needed (needs root).
pub fn unprivileged_user() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        require_root();
        let id = |flag: &str| -> Option<u32> {
            let o = Command::new("id").args([flag, TEST_USER]).output().ok()?;
            if !o.status.success() {
                return None;
            }
            String::from_utf8_lossy(&o.stdout).trim().parse().ok()
        };
        if id("-u").is_none() {
            let o = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    TEST_USER,
                ])
                .output()
                .expect("useradd is needed to create the unprivileged test user");
            // A parallel test may have created it first.
            if id("-u").is_none() {
                panic!(
                    "could not create user {TEST_USER}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
        (id("-u").unwrap(), id("-g").unwrap())
    })
}

/// `liftoff exec` run as the unprivileged test user (setpriv, no groups).
pub fn exec_unprivileged(args: &[&str], cmd: &[&str]) -> Run {
    let (uid, gid) = unprivileged_user();
    let mut c = Command::new("setpriv");
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LIFTOFF_KILL_GRACE", "1s")
        .env("TMPDIR", "/tmp")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"))
        .arg("--clear-groups")
        .arg(bin())
        .arg("exec")
        .args(args)
        .arg("--")
        .args(cmd)
        .stdin(Stdio::null());
    Run::from(c.output().unwrap())
}
