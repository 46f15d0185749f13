//! The escape suite: each test runs a probe inside `liftoff exec` (the built
//! binary, as root, runtime liftoff) and asserts the attempt is blocked.
//! Tests needing root FAIL (never skip) when not run as root.

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

#[test]
fn cannot_read_etc_shadow() {
    require_root();
    let r = sh(
        &[],
        "cat /etc/shadow; cat /proc/1/root/etc/shadow; echo done",
    );
    assert!(!r.stdout.contains("root:"), "{r:#?}");
    assert!(r.stdout.contains("done"), "{r:#?}");
}

#[test]
fn cannot_read_root_home() {
    require_root();
    let r = sh(&[], "ls -a /root && echo LISTED");
    assert!(!r.stdout.contains("LISTED"), "{r:#?}");
}

#[test]
fn cannot_read_launcher_key_file() {
    require_root();
    let s = HostSecrets::new();
    let key = s.dir.join("pool.key");
    let r = sh(
        &[],
        &format!(
            "cat {k}; cat /proc/1/root{k}; cat /proc/1/cwd{k}; echo done",
            k = key.display()
        ),
    );
    assert!(!r.stdout.contains("SECRETKEY"), "{r:#?}");
    assert!(r.stdout.contains("done"));
}

#[test]
fn cannot_read_launcher_state_dir() {
    require_root();
    let s = HostSecrets::new();
    let r = sh(
        &[],
        &format!(
            "ls {d} && cat {d}/token; ls /var/lib && echo VAR",
            d = s.dir.display()
        ),
    );
    assert!(
        !r.stdout.contains("SECRETTOKEN") && !r.stdout.contains("pool.key"),
        "{r:#?}"
    );
    assert!(!r.stdout.contains("VAR"), "/var is visible: {r:#?}");
}

#[test]
fn cannot_read_launcher_environment_through_init() {
    require_root();
    let mut c = liftoff_exec(
        &[],
        &[
            "/bin/sh",
            "-c",
            "cat /proc/1/environ; cat /proc/1/mem; echo done",
        ],
    );
    c.env("SPACELIFT_TOKEN", "SECRETTOKENENV");
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!out.contains("SECRETTOKENENV"), "{out}");
    assert!(out.contains("done"));
}

#[test]
fn cannot_write_under_usr() {
    require_root();
    let name = format!("/usr/liftoff-escape-{}", unique());
    let r = sh(&[], &format!("touch {name} && echo WROTE"));
    assert!(!r.stdout.contains("WROTE"), "{r:#?}");
    assert!(!std::path::Path::new(&name).exists());
}

#[test]
fn cannot_write_outside_workspace() {
    require_root();
    let r = sh(
        &[],
        "for p in /x /etc/x /bin/x /home/x /mnt/x /proc/x; do touch $p 2>/dev/null && echo WROTE $p; done; echo done",
    );
    assert!(!r.stdout.contains("WROTE"), "{r:#?}");
    assert!(r.stdout.contains("done"));
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

#[test]
fn cannot_signal_host_processes() {
    require_root();
    let mut host = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pid = host.id().to_string();
    let r = probe(&[], &["kill", &pid]);
    let r2 = sh(&[], "kill -9 -1; echo done");
    let alive = host.try_wait().unwrap().is_none();
    let _ = host.kill();
    let _ = host.wait();
    assert!(alive, "host process was killed: {r:#?} {r2:#?}");
    r.assert_blocked();
}

#[test]
fn cannot_kill_sandbox_init() {
    require_root();
    probe(&[], &["kill-init"]).assert_blocked();
}

#[test]
fn cannot_ptrace_init() {
    require_root();
    probe(&[], &["ptrace-init"]).assert_blocked();
}

#[test]
fn cannot_ptrace_host_process() {
    require_root();
    let mut host = std::process::Command::new("sleep")
        .arg("600")
        .spawn()
        .unwrap();
    let pid = host.id().to_string();
    let r = probe(&[], &["ptrace-pid", &pid]);
    let _ = host.kill();
    let _ = host.wait();
    r.assert_blocked();
}

#[test]
fn cannot_mount() {
    require_root();
    probe(&[], &["mount"]).assert_blocked();
    probe(&[], &["mount-proc"]).assert_blocked();
}

#[test]
fn cannot_pivot_root_or_chroot() {
    require_root();
    probe(&[], &["pivot_root"]).assert_blocked();
    probe(&[], &["chroot"]).assert_blocked();
}

#[test]
fn cannot_setns() {
    require_root();
    probe(&[], &["setns"]).assert_blocked();
}

#[test]
fn cannot_create_user_namespace() {
    require_root();
    probe(&[], &["unshare-user"]).assert_blocked();
    probe(&[], &["clone-user"]).assert_blocked();
    probe(&[], &["unshare-ns"]).assert_blocked();
}

#[test]
fn cannot_load_kernel_modules() {
    require_root();
    probe(&[], &["module"]).assert_blocked();
    probe(&[], &["init_module"]).assert_blocked();
}

#[test]
fn cannot_use_keyctl() {
    require_root();
    probe(&[], &["keyctl"]).assert_blocked();
    probe(&[], &["add_key"]).assert_blocked();
}

#[test]
fn cannot_mknod() {
    require_root();
    probe(&[], &["mknod"]).assert_blocked();
}

#[test]
fn cannot_write_proc_sys() {
    require_root();
    probe(&[], &["proc-sys"]).assert_blocked();
    probe(&[], &["sysrq"]).assert_blocked();
}

#[test]
fn cannot_write_sys() {
    require_root();
    probe(&[], &["sys"]).assert_blocked();
}

#[test]
fn proc_kcore_is_masked() {
    require_root();
    probe(&[], &["kcore"]).assert_blocked();
}

#[test]
fn cannot_use_bpf_perf_userfaultfd_io_uring() {
    require_root();
    for p in ["bpf", "perf", "userfaultfd", "io_uring"] {
        probe(&[], &[p]).assert_blocked();
    }
}

#[test]
fn cannot_reboot_kexec_swap_or_set_clock() {
    require_root();
    for p in ["reboot", "kexec", "swapon", "clock"] {
        probe(&[], &[p]).assert_blocked();
    }
}

#[test]
fn cannot_open_by_handle() {
    require_root();
    probe(&[], &["open_by_handle"]).assert_blocked();
}

#[test]
fn cannot_inject_terminal_input() {
    require_root();
    probe(&[], &["tiocsti"]).assert_blocked();
}

#[test]
fn cannot_become_root_inside() {
    require_root();
    probe(&[], &["setuid0"]).assert_blocked();
    probe(&[], &["chown-root"]).assert_blocked();
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
    // Sanity: host network reaches it.
    let ok = probe(&["--network", "host"], &["connect", "127.0.0.1", &port]);
    assert_eq!(
        ok.code, 1,
        "the host listener should be reachable with host network: {ok:#?}"
    );
    probe(&["--network", "none"], &["connect", "127.0.0.1", &port]).assert_blocked();
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
    let mut host = std::process::Command::new("python3")
        .args(["-c", &format!("import socket,time\ns=socket.socket(socket.AF_UNIX)\ns.bind('\\0{name}')\ns.listen(1)\nprint('up',flush=True)\ntime.sleep(30)")])
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 binds the host abstract socket");
    let mut buf = [0u8; 3];
    host.stdout.as_mut().unwrap().read_exact(&mut buf).unwrap();
    let r = probe(&["--network", "host"], &["abstract", &name]);
    let _ = host.kill();
    let _ = host.wait();
    r.assert_blocked();
}

#[test]
fn fork_bomb_is_contained_by_pids() {
    require_root();
    let r = probe(&["--pids", "64", "--timeout", "20s"], &["forkbomb"]);
    assert!(r.stdout.contains("forked"), "{r:#?}");
    let n: u32 = r.stdout.split_whitespace().nth(1).unwrap().parse().unwrap();
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
    let r = probe(
        &["--memory", "64MiB", "--timeout", "60s"],
        &["memhog", "512"],
    );
    assert_eq!(r.code, 137, "{r:#?}");
    assert!(r.stderr.contains("out of memory"), "{r:#?}");
    assert!(!r.stdout.contains("ESCAPED"));
}

fn daemon_marker() -> String {
    format!("{}", 700000 + unique() % 100000)
}

#[test]
fn daemonized_grandchild_dies_on_timeout() {
    require_root();
    let m = daemon_marker();
    let r = probe(&["--timeout", "1s"], &["daemon", &m]);
    assert_eq!(r.code, 124, "{r:#?}");
    assert!(
        eventually(Duration::from_secs(2), || host_pids_with(&format!(
            "sleep {m}"
        ))
        .is_empty()),
        "a daemonized grandchild survived the timeout"
    );
}

#[test]
fn daemonized_grandchild_dies_on_cancel() {
    require_root();
    let m = daemon_marker();
    let mount = format!("{}:/opt/probe:ro", probe_dir().display());
    let mut child = liftoff_exec(&["--mount", &mount], &["/opt/probe/probe", "daemon", &m])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !host_pids_with(&format!(
            "sleep {m}"
        ))
        .is_empty()),
        "the daemon never started"
    );
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert!(
        eventually(Duration::from_secs(3), || host_pids_with(&format!(
            "sleep {m}"
        ))
        .is_empty()),
        "a daemonized grandchild survived the cancel"
    );
}

#[test]
fn nothing_survives_launcher_sigkill() {
    require_root();
    let m = daemon_marker();
    let mount = format!("{}:/opt/probe:ro", probe_dir().display());
    let mut child = liftoff_exec(&["--mount", &mount], &["/opt/probe/probe", "daemon", &m])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(5), || !host_pids_with(&format!(
            "sleep {m}"
        ))
        .is_empty()),
        "the daemon never started"
    );
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        eventually(Duration::from_secs(3), || host_pids_with(&format!(
            "sleep {m}"
        ))
        .is_empty()),
        "a job process survived the launcher's SIGKILL: {:?}",
        host_pids_with(&format!("sleep {m}"))
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
