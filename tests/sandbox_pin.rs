//! The ready-made job root (`sandbox::pin`), as root on the real kernel: a
//! root is built and pinned once per key and then copied by every job; the
//! job sees the same root as one made whole (`--fresh-root`); a host file
//! replaced under the root gives the next job a new root; pins beyond the
//! limit are released; the job's /proc covers the builder's.
//!
//! The tests of this file share /run/liftoff/roots, so they run one at a
//! time ([`serial`]).

mod support;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use liftoff::sandbox::pin::{MAX_PINS, PIN_DIR};
use liftoff::sandbox::{Exit, SandboxSpec, spawn};
use support::sandbox::*;

fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The pins: directories of [`PIN_DIR`] whose `mnt` is a mounted namespace.
fn pins() -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let mut v: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let fstype = f.iter().skip_while(|x| **x != "-").nth(1)?;
            (*fstype == "nsfs" && f[4].starts_with(PIN_DIR))
                .then(|| Path::new(f[4]).parent().map(Path::to_path_buf))
                .flatten()
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `liftoff exec` with the phase timings; returns (stdout, stderr).
fn timed(args: &[&str], script: &str) -> (String, String) {
    let out = liftoff_exec(args, &["/bin/sh", "-c", script])
        .env("LIFTOFF_EXEC_TIMINGS", "1")
        .output()
        .unwrap();
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert!(out.status.success(), "{o}\n{e}");
    (o, e)
}

#[test]
fn a_root_is_built_and_pinned_once_then_every_job_copies_it() {
    require_root();
    let _s = serial();
    let host = format!("pin-{}", unique());
    let before = pins();
    let (out, err) = timed(&["--hostname", &host], "cat /etc/hostname");
    assert_eq!(out, format!("{host}\n"));
    assert!(err.contains("ready-made root (built and pinned)"), "{err}");
    let after = pins();
    let new: Vec<_> = after.iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(new.len(), 1, "one new pin: {before:?} -> {after:?}");
    // The pin is root's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(PIN_DIR).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{PIN_DIR} is {mode:o}");
    for _ in 0..3 {
        let (out, err) = timed(&["--hostname", &host], "cat /etc/hostname");
        assert_eq!(out, format!("{host}\n"));
        assert!(err.contains("ready-made root (pinned)"), "{err}");
    }
    assert_eq!(pins(), after, "no pin was added or removed");
    // A pin whose namespace is gone (a restarted service's mount namespace
    // took it along) is made again, once.
    let mnt = std::ffi::CString::new(new[0].join("mnt").to_str().unwrap()).unwrap();
    // SAFETY: a detach of a valid C string path.
    assert_eq!(unsafe { libc::umount2(mnt.as_ptr(), libc::MNT_DETACH) }, 0);
    assert!(new[0].join("mnt").exists(), "the dead pin's file stays");
    let (_, err) = timed(&["--hostname", &host], "true");
    assert!(err.contains("ready-made root (built and pinned)"), "{err}");
    let (_, err) = timed(&["--hostname", &host], "true");
    assert!(err.contains("ready-made root (pinned)"), "{err}");
    assert_eq!(pins(), after);
}

#[test]
fn the_job_sees_the_same_root_with_or_without_it() {
    require_root();
    let _s = serial();
    let ws = tempfile::tempdir().unwrap();
    let w = ws.path().to_str().unwrap();
    let script = "ls -a / /etc /dev /dev/pts /mnt /home /usr | head -c 4000; \
        cat /etc/passwd /etc/group /etc/hostname /etc/hosts /etc/resolv.conf; \
        id; hostname; ls /proc | grep -v '^[0-9]' | sort; \
        for p in /etc/x /x /dev/x /usr/x /proc/sys/kernel/x; do touch $p 2>/dev/null && echo WROTE $p; done; \
        touch /tmp/x /mnt/workspace/x /home/spacelift/x /dev/shm/x && echo writable; \
        wc -c < /proc/keys; readlink /dev/stdin /bin";
    // Mount points inside the job's own /tmp and home are the job's to
    // make (the ready-made root's would be covered).
    std::fs::write(ws.path().join("seen"), "x").unwrap();
    let under_tmp = format!("{w}:/tmp/a/b:ro");
    let under_home = format!("{w}:/home/spacelift/c");
    let deep = format!("{w}:/opt/deep/d");
    let nested = format!("{w}:/opt/deep/d/sub:ro");
    let script = format!("{script}; ls /tmp/a/b /home/spacelift/c /opt/deep/d /opt/deep/d/sub");
    let args = [
        "--workspace",
        w,
        "--mount",
        &under_tmp,
        "--mount",
        &under_home,
        "--mount",
        &deep,
        "--mount",
        &nested,
    ];
    let (ready, err) = timed(&args, &script);
    assert!(err.contains("ready-made root"), "{err}");
    let fresh_args = [&args[..], &["--fresh-root"]].concat();
    let (fresh, err) = timed(&fresh_args, &script);
    assert!(!err.contains("ready-made root"), "{err}");
    assert_eq!(ready, fresh);
    assert!(
        ready.contains("writable\n") && !ready.contains("WROTE"),
        "{ready}"
    );
}

#[test]
fn a_host_file_replaced_under_the_root_gives_the_next_job_a_new_root() {
    require_root();
    let _s = serial();
    // A private (0700) directory, as a launcher's state directory is.
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("ca.pem");
    let cat = |expect: &str| {
        let ws = tempfile::tempdir().unwrap();
        let mut spec = SandboxSpec::new(
            ws.path(),
            vec![
                "/bin/cat".into(),
                "/etc/ssl/certs/ca-certificates.crt".into(),
            ],
        );
        spec.ca_bundle = Some(bundle.clone());
        let mut sb = spawn(&spec).unwrap();
        let mut out = String::new();
        sb.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert_eq!(sb.wait().unwrap().exit, Exit::Code(0));
        assert_eq!(out, expect);
    };
    std::fs::write(&bundle, "first bundle\n").unwrap();
    cat("first bundle\n");
    cat("first bundle\n");
    // Replaced as update-ca-certificates does: a new file renamed over.
    let next = dir.path().join("ca.pem.new");
    std::fs::write(&next, "second bundle, longer\n").unwrap();
    std::fs::rename(&next, &bundle).unwrap();
    cat("second bundle, longer\n");
}

#[test]
fn pins_beyond_the_limit_release_the_oldest() {
    require_root();
    let _s = serial();
    let first = format!("evict-{}", unique());
    timed(&["--hostname", &first], "true");
    for i in 0..MAX_PINS + 2 {
        timed(&["--hostname", &format!("evict-{}-{i}", unique())], "true");
        let n = pins().len();
        assert!(n <= MAX_PINS, "{n} pins after {i} more");
    }
    // The oldest went first; a released root is built again when asked for.
    let (out, err) = timed(&["--hostname", &first], "hostname");
    assert_eq!(out, format!("{first}\n"));
    assert!(err.contains("ready-made root (built and pinned)"), "{err}");
}

#[test]
fn the_jobs_proc_covers_the_builders_and_cannot_be_lifted() {
    require_root();
    let _s = serial();
    let r = sh(
        &[],
        "ls /proc | grep -cE '^[0-9]+$'; \
         umount /proc 2>/dev/null && echo UNMOUNTED; \
         umount -l /proc 2>/dev/null && echo UNMOUNTED; \
         ls /proc | grep -cE '^[0-9]+$'",
    );
    assert_eq!(r.code, 0, "{r:#?}");
    let lines: Vec<&str> = r.stdout.lines().collect();
    // init, the job's shell and its ls: the job's own pid namespace.
    let pids: usize = lines[0].parse().unwrap();
    assert!((2..=6).contains(&pids), "{r:#?}");
    assert!(!r.stdout.contains("UNMOUNTED"), "{r:#?}");
    assert_eq!(lines.last(), lines.first(), "{r:#?}");
}
