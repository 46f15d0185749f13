//! The positive side of the sandbox, through `liftoff exec` as root and
//! through the library API: host tools run, the workspace is writable, exit
//! codes and signals propagate, the environment is exactly what was passed,
//! cwd, hostname, uid 1983 inside and an unprivileged uid outside.

mod support;

use std::time::Duration;

use support::sandbox::*;

#[test]
fn host_tools_run() {
    require_root();
    let r = sh(
        &[],
        "echo a,b | awk -F, '{print $2}' | sed s/b/c/ | grep c && ls /usr/bin >/dev/null && echo ok",
    );
    assert_eq!(r.stdout, "c\nok\n", "{r:#?}");
    assert_eq!(r.code, 0);
}

#[test]
fn workspace_is_writable_and_owned_by_the_job() {
    require_root();
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path().to_str().unwrap();
    let r = sh(
        &["--workspace", w],
        "echo hello > /mnt/workspace/out && mkdir -p /mnt/workspace/d/e && pwd",
    );
    assert_eq!(r.code, 0, "{r:#?}");
    assert_eq!(r.stdout, "/mnt/workspace\n");
    assert_eq!(
        std::fs::read_to_string(ws.path().join("out")).unwrap(),
        "hello\n"
    );
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata(ws.path().join("out")).unwrap().uid();
    assert_eq!(uid, liftoff::sandbox::DEFAULT_HOST_ID);
}

/// A shared bind mount of a directory onto itself (as systemd makes every
/// mount shared), unmounted on drop.
struct SharedMount(std::path::PathBuf);

impl SharedMount {
    fn new(dir: &std::path::Path) -> SharedMount {
        let mount = |args: &[&std::ffi::OsStr]| {
            let st = std::process::Command::new("mount")
                .args(args)
                .status()
                .expect("mount (util-linux) makes the shared test mount");
            assert!(st.success(), "mount {args:?}");
        };
        mount(&["--bind".as_ref(), dir.as_os_str(), dir.as_os_str()]);
        let shared = SharedMount(dir.to_path_buf());
        mount(&["--make-shared".as_ref(), dir.as_os_str()]);
        shared
    }
}

impl Drop for SharedMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// A workspace and an extra read-only mount below a directory the job's
/// host id cannot pass through (a 0700 tempdir, as `mktemp -d` makes): the
/// launcher opens them, the child attaches them by file descriptor. The
/// directory is a shared mount: the sandbox's copies must not be its peers.
#[test]
fn workspace_and_mounts_below_a_private_directory() {
    require_root();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let _shared = SharedMount::new(private.path());
    let ws = private.path().join("state/runs/r1/workspace");
    std::fs::create_dir_all(&ws).unwrap();
    let data = private.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("in"), "data").unwrap();
    let ro = format!("{}:/mnt/data:ro", data.display());
    let r = sh(
        &["--workspace", ws.to_str().unwrap(), "--mount", &ro],
        "echo hello > /mnt/workspace/out && cat /mnt/data/in && echo && \
         (touch /mnt/data/x 2>/dev/null || echo ro-refused) && \
         grep -E ' /mnt/(workspace|data) ' /proc/self/mountinfo",
    );
    assert_eq!(r.code, 0, "{r:#?}");
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("data"), "{r:#?}");
    assert_eq!(lines.next(), Some("ro-refused"), "{r:#?}");
    let mounts: Vec<&str> = lines.collect();
    assert_eq!(mounts.len(), 2, "{r:#?}");
    // Private: nothing mounted in the sandbox shows on the host, or back.
    for m in &mounts {
        assert!(
            !m.contains(" shared:"),
            "mount is a peer of the host's: {m}"
        );
    }
    let out = ws.join("out");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "hello\n");
    assert_eq!(
        std::fs::metadata(&out).unwrap().uid(),
        liftoff::sandbox::DEFAULT_HOST_ID
    );
    assert!(!data.join("x").exists());
}

/// Root without CAP_SYS_ADMIN cannot open_tree: the child binds the path as
/// the job's host id, and the refusal names the directory and the fix.
#[test]
fn a_refused_path_bind_names_the_directory_and_the_fix() {
    require_root();
    use std::os::unix::fs::PermissionsExt;
    let private = tempfile::tempdir().unwrap();
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let ws = private.path().join("workspace");
    std::fs::create_dir(&ws).unwrap();
    let o = std::process::Command::new("setpriv")
        .args(["--inh-caps=-sys_admin", "--bounding-set=-sys_admin"])
        .arg(bin())
        .args([
            "exec",
            "--workspace",
            ws.to_str().unwrap(),
            "--",
            "/bin/true",
        ])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .expect("setpriv (util-linux) runs the launcher without CAP_SYS_ADMIN");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains(&format!("parent directory of {}", ws.display())),
        "{stderr}"
    );
    assert!(stderr.contains("chmod o+x"), "{stderr}");
}

#[test]
fn tmp_home_and_dev_are_usable() {
    require_root();
    let r = sh(
        &[],
        "echo x > /tmp/t && cat /tmp/t && echo y > $HOME/h && cat $HOME/h && echo z > /dev/shm/s && cat /dev/shm/s && echo > /dev/null && head -c 4 /dev/urandom | wc -c && test -c /dev/zero && echo devok",
    );
    assert_eq!(r.stdout, "x\ny\nz\n4\ndevok\n", "{r:#?}");
}

#[test]
fn exit_codes_propagate() {
    require_root();
    assert_eq!(sh(&[], "exit 0").code, 0);
    assert_eq!(sh(&[], "exit 7").code, 7);
    assert_eq!(sh(&[], "exit 200").code, 200);
}

#[test]
fn signals_propagate_as_128_plus_n() {
    require_root();
    assert_eq!(sh(&[], "kill -TERM $$").code, 128 + 15);
    assert_eq!(sh(&[], "kill -KILL $$").code, 128 + 9);
    assert_eq!(sh(&[], "kill -SEGV $$").code, 128 + 11);
}

#[test]
fn timeout_exits_124() {
    require_root();
    let r = exec(&["--timeout", "300ms"], &["sleep", "30"]);
    assert_eq!(r.code, 124, "{r:#?}");
    assert!(r.stderr.contains("liftoff: the job timed out"), "{r:#?}");
}

#[test]
fn liftoff_errors_exit_125_with_prefix() {
    require_root();
    let r = exec(&[], &["/no/such/program"]);
    assert_eq!(r.code, 125, "{r:#?}");
    assert!(r.stderr.starts_with("liftoff: "), "{r:#?}");
    let r = exec(&["--mount", "/no/such/dir:/x"], &["true"]);
    assert_eq!(r.code, 125, "{r:#?}");
    assert!(r.stderr.starts_with("liftoff: "), "{r:#?}");
    let r = exec(&["--timeout", "soon"], &["true"]);
    assert_eq!(r.code, 125, "{r:#?}");
}

#[test]
fn environment_is_exactly_what_was_passed() {
    require_root();
    let mut c = liftoff_exec(
        &[
            "--env",
            "FOO=bar baz",
            "--pass-env",
            "PASSED",
            "--env",
            "LANG=C",
        ],
        &["/usr/bin/env"],
    );
    c.env("PASSED", "yes").env("NOT_PASSED", "secret");
    let o = c.output().unwrap();
    let mut lines: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(
        lines,
        vec![
            "FOO=bar baz",
            "HOME=/home/spacelift",
            "LANG=C",
            "PASSED=yes",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "USER=spacelift",
        ]
    );
}

#[test]
fn cwd_is_honoured() {
    require_root();
    assert_eq!(exec(&["--cwd", "/tmp"], &["pwd"]).stdout, "/tmp\n");
    assert_eq!(exec(&[], &["pwd"]).stdout, "/mnt/workspace\n");
}

#[test]
fn hostname_is_the_sandboxes_own() {
    require_root();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let r = exec(&[], &["cat", "/proc/sys/kernel/hostname"]);
    assert_ne!(r.stdout, host);
    let r = exec(
        &["--hostname", "run-01abc"],
        &["cat", "/proc/sys/kernel/hostname", "/etc/hostname"],
    );
    assert_eq!(r.stdout, "run-01abc\nrun-01abc\n");
}

#[test]
fn uid_is_1983_inside_and_unprivileged_outside() {
    require_root();
    let r = sh(
        &[],
        "id -u; id -g; id -un; echo $HOME; getent passwd spacelift",
    );
    assert_eq!(
        r.stdout,
        "1983\n1983\nspacelift\n/home/spacelift\nspacelift:x:1983:1983:spacelift:/home/spacelift:/bin/sh\n",
        "{r:#?}"
    );
    let m = format!("{}", 800000 + unique() % 100000);
    let mut child = liftoff_exec(&[], &["sleep", &m]).spawn().unwrap();
    let (uids, uid_line) = host_uids_of(&format!("sleep {m}"));
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        uids.iter().all(|u| *u == liftoff::sandbox::DEFAULT_HOST_ID),
        "{uid_line}"
    );
}

#[test]
fn etc_is_built_for_the_job() {
    require_root();
    let r = sh(
        &[],
        "cat /etc/nsswitch.conf | head -1; test -s /etc/ssl/certs/ca-certificates.crt && echo ca; head -1 /etc/hosts; touch /etc/x 2>/dev/null || echo ro",
    );
    assert_eq!(
        r.stdout, "passwd: files\nca\n127.0.0.1\tlocalhost\nro\n",
        "{r:#?}"
    );
}

#[test]
fn extra_mounts_read_only_and_read_write() {
    require_root();
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("in"), "data").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let ro = format!("{}:/mnt/ro:ro", d.path().display());
    let rw = format!("{}:/mnt/rw:rw", d.path().display());
    let r = sh(
        &["--mount", &ro, "--mount", &rw],
        "cat /mnt/ro/in; touch /mnt/ro/x 2>/dev/null || echo ro-refused; echo out > /mnt/rw/out && echo rw-ok",
    );
    assert_eq!(r.stdout, "dataro-refused\nrw-ok\n", "{r:#?}");
    assert!(d.path().join("out").exists());
}

#[test]
fn network_none_has_loopback_only() {
    require_root();
    let r = sh(
        &["--network", "none"],
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    );
    assert_eq!(r.stdout, "lo\n", "{r:#?}");
}

#[test]
fn a_root_directory_replaces_the_host_root() {
    require_root();
    // The image sits below a private (0700) directory: bound by fd.
    let private = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(private.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let root = private.path().join("image");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/image-release"), "image 1\n").unwrap();
    let src = root.join("hello.c");
    std::fs::write(&src, "#include <stdio.h>\nint main(){FILE*f=fopen(\"/etc/image-release\",\"r\");char b[64]={0};if(f)fread(b,1,63,f);printf(\"hi %s\",b);return 3;}\n").unwrap();
    let st = std::process::Command::new("musl-gcc")
        .args(["-static", "-O1", "-o"])
        .arg(root.join("bin/hello"))
        .arg(&src)
        .status()
        .expect("musl-gcc builds the static test binary for --root");
    assert!(st.success());
    let r = exec(&["--root", root.to_str().unwrap()], &["/bin/hello"]);
    assert_eq!(r.stdout, "hi image 1\n", "{r:#?}");
    assert_eq!(r.code, 3);
    // The host's tools are not there.
    let r = exec(&["--root", root.to_str().unwrap()], &["/usr/bin/env"]);
    assert_eq!(r.code, 125, "{r:#?}");
}

/// A run's tool over /bin (`/bin/terraform`), read-only, in a root whose
/// /bin is a real directory (an image) and, in `tools_run`, on a merged-/usr
/// host where /bin links to usr/bin.
#[test]
fn a_bin_overlay_adds_entries_to_an_image_bin() {
    require_root();
    use liftoff::sandbox::{BindMount, Exit, SandboxSpec, spawn};
    use std::io::Read;
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("image");
    let tool = d.path().join("tool");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(&tool).unwrap();
    let src = d.path().join("who.c");
    std::fs::write(
        &src,
        "#include <stdio.h>\n#include <sys/statvfs.h>\nint main(int c,char**v){struct statvfs s;if(statvfs(v[0],&s))return 9;printf(\"%s %s\\n\",v[0],(s.f_flag&ST_RDONLY)?\"read-only\":\"writable\");return 0;}\n",
    )
    .unwrap();
    for out in [root.join("bin/image-own"), tool.join("terraform")] {
        let st = std::process::Command::new("musl-gcc")
            .args(["-static", "-O1", "-o"])
            .arg(&out)
            .arg(&src)
            .status()
            .expect("musl-gcc builds the static test binary");
        assert!(st.success());
    }
    let ws = tempfile::tempdir().unwrap();
    let run = |argv: &str| {
        let mut spec = SandboxSpec::new(ws.path(), vec![argv.into()]);
        spec.root = Some(root.clone());
        spec.mounts.push(BindMount {
            source: tool.clone(),
            target: "/mnt/tools/bin".into(),
            writable: false,
        });
        spec.bin_overlay = Some("/mnt/tools/bin".into());
        let mut sb = spawn(&spec).unwrap();
        let mut out = String::new();
        sb.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert_eq!(sb.wait().unwrap().exit, Exit::Code(0), "{argv}: {out}");
        out
    };
    assert_eq!(run("/bin/terraform"), "/bin/terraform read-only\n");
    assert_eq!(run("/bin/image-own"), "/bin/image-own read-only\n");
    assert_eq!(
        run("/mnt/tools/bin/terraform"),
        "/mnt/tools/bin/terraform read-only\n"
    );
    // Nothing was written into the image.
    assert!(!root.join("bin/terraform").exists());
    // An overlay of a directory that is not one of the mounts is refused.
    let mut spec = SandboxSpec::new(ws.path(), vec!["/bin/image-own".into()]);
    spec.root = Some(root.clone());
    spec.bin_overlay = Some("/mnt/tools/bin".into());
    let e = spawn(&spec).err().expect("refused");
    assert!(
        e.to_string().contains("is not one of the sandbox's mounts"),
        "{e}"
    );
}

#[test]
fn runtime_landlock_runs_without_namespaces() {
    require_root();
    require(liftoff::sandbox::landlock::abi() >= 1, "landlock");
    let ws = tempfile::tempdir().unwrap();
    let mut c = liftoff_exec(
        &["--workspace", ws.path().to_str().unwrap()],
        &[
            "/bin/sh",
            "-c",
            "id -u; echo x > $PWD/f && echo wrote; ls /root 2>/dev/null || echo noroot; touch /var/tmp/x 2>/dev/null || echo novar",
        ],
    );
    c.env("SPACELIFT_WORKER_RUNTIME", "landlock");
    let o = c.output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(
        out,
        format!(
            "{}\nwrote\nnoroot\nnovar\n",
            liftoff::sandbox::DEFAULT_HOST_ID
        ),
        "{o:?}"
    );
}

#[test]
fn library_api_pipes_and_wait() {
    require_root();
    use liftoff::sandbox::{Exit, SandboxSpec, spawn};
    use std::io::Read;
    let ws = tempfile::tempdir().unwrap();
    let mut spec = SandboxSpec::new(
        ws.path(),
        vec![
            "sh".into(),
            "-c".into(),
            "echo out; echo err >&2; exit 3".into(),
        ],
    );
    spec.limits.memory = Some(256 << 20);
    let mut sb = spawn(&spec).unwrap();
    let mut out = String::new();
    sb.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    sb.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    let o = sb.wait().unwrap();
    assert_eq!((out.as_str(), err.as_str()), ("out\n", "err\n"));
    assert_eq!(o.exit, Exit::Code(3));
    assert!(!o.oom_killed);
}

#[test]
fn library_api_wait_detached_reports_then_removes_the_cgroups() {
    require_root();
    use liftoff::sandbox::{Exit, SandboxSpec, spawn};
    let ws = tempfile::tempdir().unwrap();
    let m = format!("{}", 900000 + unique() % 90000);
    // A daemonized child outlives the job: init kills it.
    let script = format!("sleep {m} & exit 4");
    let spec = SandboxSpec::new(ws.path(), vec!["sh".into(), "-c".into(), script]);
    let mut sb = spawn(&spec).unwrap();
    let dir = sb
        .cgroup_dir()
        .expect("a root launcher gives the job cgroups")
        .to_path_buf();
    let o = sb.wait_detached().unwrap();
    assert_eq!(o.exit, Exit::Code(4));
    assert!(!o.oom_killed);
    drop(sb);
    // The status comes before init's exit; the detached remover takes the
    // cgroups away once init (and with it the whole namespace) is gone.
    assert!(
        eventually(Duration::from_secs(5), || !dir.exists()),
        "the job's cgroup {} was left behind",
        dir.display()
    );
    let marker = format!("sleep {m}");
    assert!(eventually(Duration::from_secs(2), || host_pids_with(
        &marker
    )
    .is_empty()));
}

#[test]
fn library_api_terminate_kills_the_tree() {
    require_root();
    use liftoff::sandbox::{SandboxSpec, spawn};
    let ws = tempfile::tempdir().unwrap();
    let m = format!("{}", 900000 + unique() % 90000);
    let script = format!("trap '' TERM; sleep {m} & sleep {m}");
    let spec = SandboxSpec::new(ws.path(), vec!["sh".into(), "-c".into(), script]);
    let mut sb = spawn(&spec).unwrap();
    let marker = format!("sleep {m}");
    assert!(eventually(Duration::from_secs(5), || host_pids_with(
        &marker
    )
    .len()
        == 2));
    let o = sb.terminate(Duration::from_millis(300)).unwrap();
    assert!(matches!(o.exit, liftoff::sandbox::Exit::Signal(_)), "{o:?}");
    assert!(eventually(Duration::from_secs(2), || host_pids_with(
        &marker
    )
    .is_empty()));
}

#[test]
fn check_reports_host_capabilities() {
    require_root();
    let o = std::process::Command::new(bin())
        .args(["check", "--json"])
        .env_clear()
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let names: Vec<&str> = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for n in [
        "kernel",
        "user namespaces",
        "landlock",
        "seccomp",
        "cgroups",
        "runtime",
    ] {
        assert!(names.contains(&n), "missing check {n}: {names:?}");
    }
    let runtime = doc["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "runtime")
        .unwrap();
    assert_eq!(runtime["status"], "ok", "{runtime}");
}

#[test]
fn named_network_namespace_is_joined() {
    require_root();
    let name = format!("lt{}", unique() % 1_000_000);
    let st = std::process::Command::new("ip")
        .args(["netns", "add", &name])
        .status();
    require(
        st.map(|s| s.success()).unwrap_or(false),
        "`ip netns add` (iproute2) creates the test namespace",
    );
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(format!("/run/netns/{name}"))
        .unwrap()
        .ino();
    let r = exec(&["--network", &name], &["readlink", "/proc/self/ns/net"]);
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &name])
        .status();
    assert_eq!(r.stdout, format!("net:[{ino}]\n"), "{r:#?}");
}

#[test]
fn library_api_job_outlives_the_spawning_thread() {
    require_root();
    use liftoff::sandbox::{Exit, SandboxSpec, spawn};
    let ws = tempfile::tempdir().unwrap();
    let spec = SandboxSpec::new(
        ws.path(),
        vec!["sh".into(), "-c".into(), "sleep 0.5; exit 4".into()],
    );
    // Spawned from a thread that ends at once (as a blocking pool's would).
    let mut sb = std::thread::spawn(move || spawn(&spec).unwrap())
        .join()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let o = sb.wait().unwrap();
    assert_eq!(
        o.exit,
        Exit::Code(4),
        "the job died with its spawning thread: {o:?}"
    );
}

#[test]
fn landlock_require_runs_on_a_full_abi_kernel() {
    require_root();
    require(
        liftoff::sandbox::landlock::abi() >= 6,
        "landlock ABI 6 (kernel 6.12+)",
    );
    let o = liftoff_exec(&[], &["/bin/sh", "-c", "echo ok"])
        .env("LIFTOFF_LANDLOCK", "require")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&o.stdout), "ok\n", "{o:?}");
}

#[test]
fn runtime_none_is_explicit_and_still_clean() {
    require_root();
    let ws = tempfile::tempdir().unwrap();
    let o = liftoff_exec(
        &["--workspace", ws.path().to_str().unwrap()],
        &["/usr/bin/env"],
    )
    .env("SPACELIFT_WORKER_RUNTIME", "none")
    .env("LEAK", "x")
    .output()
    .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{o:?}");
    assert!(!out.contains("LEAK"), "{out}");
}

#[test]
fn jobs_are_first_for_the_oom_killer() {
    require_root();
    // The launcher may run at -900 (the systemd unit); its jobs must not.
    let r = support::sandbox::sh(&[], "cat /proc/self/oom_score_adj");
    assert_eq!((r.code, r.stdout.trim()), (0, "500"), "{r:#?}");
    let r = support::sandbox::sh(
        &["--network", "none"],
        "sh -c 'cat /proc/self/oom_score_adj'",
    );
    assert_eq!(
        r.stdout.trim(),
        "500",
        "inherited by the job's children: {r:#?}"
    );
}

#[test]
fn a_setup_failure_names_its_step_and_errno() {
    require_root();
    use liftoff::sandbox::{SandboxSpec, spawn};
    let ws = tempfile::tempdir().unwrap();
    let spec = SandboxSpec::new(ws.path(), vec!["/no/such/program".into()]);
    let err = match spawn(&spec) {
        Ok(_) => panic!("a missing program started"),
        Err(e) => e,
    };
    assert_eq!(err.errno, Some(libc::ENOENT), "{err:?}");
    let step = err.step.as_deref().unwrap_or_default();
    assert!(step.starts_with("executing"), "{err:?}");
    assert!(err.message.contains("/no/such/program"), "{err:?}");
}
