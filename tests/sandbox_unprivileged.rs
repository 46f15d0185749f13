//! The unprivileged launcher path: the test (root) creates an ordinary user
//! and runs `liftoff exec` as that user (setpriv), so the sandbox rests on
//! unprivileged user namespaces. The job must still be uid 1983 inside, the
//! launcher's uid outside, and the escapes must stay blocked.

mod support;

use std::time::Duration;

use support::sandbox::*;

fn probe_unprivileged(args: &[&str], probe_args: &[&str]) -> Run {
    let mount = format!("{}:/opt/probe:ro", probe_dir().display());
    let mut all = vec!["--mount", mount.as_str()];
    all.extend_from_slice(args);
    let mut cmd = vec!["/opt/probe/probe"];
    cmd.extend_from_slice(probe_args);
    exec_unprivileged(&all, &cmd)
}

#[test]
fn unprivileged_launcher_runs_jobs_as_1983() {
    let (uid, _) = unprivileged_user();
    let r = exec_unprivileged(
        &[],
        &[
            "/bin/sh",
            "-c",
            "id -u; id -un; pwd; echo x > /mnt/workspace/f && cat /mnt/workspace/f; hostname",
        ],
    );
    assert_eq!(r.code, 0, "{r:#?}");
    assert_eq!(
        r.stdout, "1983\nspacelift\n/mnt/workspace\nx\nliftoff\n",
        "{r:#?}"
    );
    // Limits it cannot enforce are said, not hidden.
    assert!(
        r.stderr
            .contains("liftoff: warning: cgroup limits are NOT enforced"),
        "{r:#?}"
    );
    assert_ne!(uid, 0);
}

#[test]
fn unprivileged_job_is_the_launchers_uid_outside() {
    let (uid, _) = unprivileged_user();
    let m = format!("{}", 600000 + unique() % 100000);
    let (u, g) = unprivileged_user();
    let mut child = std::process::Command::new("setpriv")
        .arg(format!("--reuid={u}"))
        .arg(format!("--regid={g}"))
        .arg("--clear-groups")
        .arg(bin())
        .args(["exec", "--", "sleep", &m])
        .env_clear()
        .env("TMPDIR", "/tmp")
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let marker = format!("sleep {m}");
    let (uids, line) = host_uids_of(&marker);
    child.kill().unwrap();
    let _ = child.wait();
    assert!(uids.iter().all(|x| *x == uid), "{line}");
    // The launcher died: so did the job.
    assert!(eventually(Duration::from_secs(3), || host_pids_with(
        &marker
    )
    .is_empty()));
}

#[test]
fn unprivileged_exit_codes_and_timeout() {
    unprivileged_user();
    assert_eq!(exec_unprivileged(&[], &["/bin/sh", "-c", "exit 9"]).code, 9);
    assert_eq!(
        exec_unprivileged(&[], &["/bin/sh", "-c", "kill -TERM $$"]).code,
        143
    );
    assert_eq!(
        exec_unprivileged(&["--timeout", "300ms"], &["sleep", "20"]).code,
        124
    );
}

#[test]
fn unprivileged_cannot_read_host_secrets() {
    unprivileged_user();
    let r = exec_unprivileged(
        &[],
        &[
            "/bin/sh",
            "-c",
            "cat /etc/shadow; ls /root; ls /var; echo done",
        ],
    );
    assert_eq!(r.stdout, "done\n", "{r:#?}");
}

#[test]
fn unprivileged_cannot_write_usr_or_root() {
    unprivileged_user();
    let r = exec_unprivileged(
        &[],
        &["/bin/sh", "-c", "touch /usr/x || touch /x || echo refused"],
    );
    assert_eq!(r.stdout, "refused\n", "{r:#?}");
}

#[test]
fn unprivileged_cannot_mount_or_make_namespaces() {
    unprivileged_user();
    for p in ["mount", "unshare-user", "clone-user", "setns", "pivot_root"] {
        probe_unprivileged(&[], &[p]).assert_blocked();
    }
}

#[test]
fn unprivileged_seccomp_and_landlock_hold() {
    unprivileged_user();
    for p in [
        "keyctl",
        "bpf",
        "module",
        "mknod",
        "tiocsti",
        "proc-sys",
        "ptrace-init",
        "kill-init",
        "setuid0",
    ] {
        probe_unprivileged(&[], &[p]).assert_blocked();
    }
    let r = exec_unprivileged(
        &[],
        &[
            "grep",
            "-E",
            "^(CapEff|CapBnd|NoNewPrivs)",
            "/proc/self/status",
        ],
    );
    assert_eq!(
        r.stdout, "CapEff:\t0000000000000000\nCapBnd:\t0000000000000000\nNoNewPrivs:\t1\n",
        "{r:#?}"
    );
}

#[test]
fn unprivileged_network_none_isolates() {
    unprivileged_user();
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port().to_string();
    probe_unprivileged(&["--network", "none"], &["connect", "127.0.0.1", &port]).assert_blocked();
}

#[test]
fn unprivileged_daemon_dies_on_timeout() {
    unprivileged_user();
    let m = format!("{}", 710000 + unique() % 100000);
    let r = probe_unprivileged(&["--timeout", "1s"], &["daemon", &m]);
    assert_eq!(r.code, 124, "{r:#?}");
    assert!(eventually(Duration::from_secs(2), || host_pids_with(
        &format!("sleep {m}")
    )
    .is_empty()));
}

#[test]
fn unprivileged_cannot_read_init_memory_or_environment() {
    unprivileged_user();
    let r = exec_unprivileged(
        &[],
        &[
            "/bin/sh",
            "-c",
            "cat /proc/1/environ; head -c 16 /proc/1/mem; cat /proc/1/maps | head -1; echo done",
        ],
    );
    assert_eq!(r.stdout, "done\n", "{r:#?}");
}

/// A workspace and a read-only mount below the launcher's own private (0700)
/// directory. An unprivileged launcher cannot open_tree, so the child binds
/// the paths, as the launcher's uid: what the launcher reaches, it binds.
#[test]
fn unprivileged_workspace_below_a_private_directory() {
    let (uid, gid) = unprivileged_user();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let private = tempfile::tempdir().unwrap();
    let ws = private.path().join("state/runs/r1/workspace");
    let data = private.path().join("data");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("in"), "data").unwrap();
    for d in [
        private.path().to_path_buf(),
        private.path().join("state"),
        private.path().join("state/runs"),
        private.path().join("state/runs/r1"),
        ws.clone(),
        data.clone(),
        data.join("in"),
    ] {
        std::os::unix::fs::chown(&d, Some(uid), Some(gid)).unwrap();
    }
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let ro = format!("{}:/mnt/data:ro", data.display());
    let r = exec_unprivileged(
        &["--workspace", ws.to_str().unwrap(), "--mount", &ro],
        &[
            "/bin/sh",
            "-c",
            "echo hello > /mnt/workspace/out && cat /mnt/data/in && echo && (touch /mnt/data/x 2>/dev/null || echo ro-refused)",
        ],
    );
    assert_eq!(r.code, 0, "{r:#?}");
    assert_eq!(r.stdout, "data\nro-refused\n", "{r:#?}");
    let out = ws.join("out");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
    assert_eq!(std::fs::metadata(&out).unwrap().uid(), uid);
}
