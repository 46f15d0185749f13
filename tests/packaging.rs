//! The packages as an operator installs them: build the .deb and .rpm with the
//! README's command, install the .deb with dpkg on this Debian machine, check
//! files, modes, the system user and the conffile across a reinstall, verify
//! the unit with systemd-analyze, then remove and purge. The .rpm is inspected
//! with rpm -qpl / --scripts / --configfiles (no RPM-based host here).
//!
//! The same for liftoff-plane's .deb and .rpm (`--variant plane`): its own
//! system user, a 0700 data directory it owns and can `init`, the unit, the
//! docs; remove keeps the data, purge deletes it.
//!
//! The two package tests run one at a time (one dpkg lock, one build).
//!
//! This test installs a package system-wide: it needs root (CI runs as root)
//! and fails, with that reason, without it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(cmd: &str, args: &[&str]) -> Output {
    let o = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e} (scripts/test.sh installs it)"));
    assert!(
        o.status.success(),
        "{cmd} {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

fn mode(p: &str) -> u32 {
    std::fs::metadata(p)
        .unwrap_or_else(|e| panic!("{p}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").unwrap().uid() == 0
}

static SERIAL: std::sync::Mutex<bool> = std::sync::Mutex::new(false);

/// Builds the packages (once per test process) and holds the lock that keeps
/// the dpkg tests apart.
fn packages() -> std::sync::MutexGuard<'static, bool> {
    assert!(
        is_root(),
        "this test installs the .deb with dpkg and needs root: run the suite as root (CI does)"
    );
    let mut built = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if !*built {
        run("scripts/package.sh", &[]);
        *built = true;
    }
    built
}

fn find_named(dir: &str, prefix: &str, ext: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            name.strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .collect();
    found.sort_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    found
        .pop()
        .unwrap_or_else(|| panic!("no {prefix}*.{ext} in {dir}"))
}

#[test]
fn deb_installs_upgrades_removes_and_purges_and_rpm_is_complete() {
    let _built = packages();
    let deb = find_named("target/x86_64-unknown-linux-musl/debian", "liftoff_", "deb");
    let rpm = find_named(
        "target/x86_64-unknown-linux-musl/generate-rpm",
        "liftoff-",
        "rpm",
    );
    let deb = deb.to_str().unwrap();

    // A clean start: nothing of an earlier run left.
    let _ = Command::new("dpkg").args(["--purge", "liftoff"]).output();

    run("dpkg", &["-i", deb]);
    assert_eq!(mode("/usr/bin/liftoff"), 0o755);
    let v = run("/usr/bin/liftoff", &["version"]);
    assert!(String::from_utf8_lossy(&v.stdout).contains("x86_64-unknown-linux-musl"));
    assert_eq!(mode("/etc/liftoff/liftoff.env"), 0o600);
    assert_eq!(
        std::fs::metadata("/etc/liftoff/liftoff.env").unwrap().uid(),
        0
    );
    assert_eq!(mode("/var/lib/liftoff"), 0o711);
    assert!(Path::new("/var/cache/liftoff/providers").is_dir());
    assert_eq!(mode("/lib/systemd/system/liftoff.service"), 0o644);
    assert!(Path::new("/usr/share/doc/liftoff/README.md").is_file());
    assert!(Path::new("/usr/share/liftoff/apparmor/usr.bin.liftoff").is_file());
    let user = run("getent", &["passwd", "liftoff"]);
    let user = String::from_utf8_lossy(&user.stdout).to_string();
    assert!(user.contains("/usr/sbin/nologin"), "{user}");
    run("getent", &["group", "liftoff"]);
    let conffiles = run(
        "dpkg-query",
        &["--showformat=${Conffiles}", "--show", "liftoff"],
    );
    assert!(String::from_utf8_lossy(&conffiles.stdout).contains("/etc/liftoff/liftoff.env"));

    // The unit is valid for systemd.
    run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/liftoff.service"],
    );

    // An operator's edit survives a reinstall (upgrade path).
    let mut env = std::fs::read_to_string("/etc/liftoff/liftoff.env").unwrap();
    env.push_str("\nSPACELIFT_METADATA_kept=yes\n");
    std::fs::write("/etc/liftoff/liftoff.env", &env).unwrap();
    std::fs::write("/var/lib/liftoff/state-marker", "x").unwrap();
    run("dpkg", &["-i", deb]);
    assert!(
        std::fs::read_to_string("/etc/liftoff/liftoff.env")
            .unwrap()
            .contains("SPACELIFT_METADATA_kept=yes")
    );

    // The installed launcher pins a ready-made job root (root, the host's
    // root): remove releases it with the binary.
    let ws = tempfile::tempdir().unwrap();
    run(
        "/usr/bin/liftoff",
        &[
            "exec",
            "--workspace",
            ws.path().to_str().unwrap(),
            "--",
            "/bin/true",
        ],
    );
    let pinned = || {
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(" /run/liftoff/roots/") && l.contains(" - nsfs "))
            .count()
    };
    assert!(pinned() > 0, "the launcher pinned no root");

    // Remove: binary gone, pinned roots released, state and configuration kept.
    run("dpkg", &["-r", "liftoff"]);
    assert!(!Path::new("/usr/bin/liftoff").exists());
    assert_eq!(pinned(), 0, "remove released the pinned roots");
    assert!(
        Path::new("/var/lib/liftoff/state-marker").exists(),
        "state must survive remove"
    );
    assert!(
        Path::new("/etc/liftoff/liftoff.env").exists(),
        "configuration must survive remove"
    );

    // Purge: state and configuration deleted.
    run("dpkg", &["--purge", "liftoff"]);
    assert!(!Path::new("/var/lib/liftoff").exists());
    assert!(!Path::new("/var/cache/liftoff").exists());
    assert!(!Path::new("/etc/liftoff").exists());

    // The rpm: contents, scripts, config file.
    let rpm = rpm.to_str().unwrap();
    let list = String::from_utf8(run("rpm", &["-qpl", rpm]).stdout).unwrap();
    for f in [
        "/usr/bin/liftoff",
        "/usr/lib/systemd/system/liftoff.service",
        "/etc/liftoff/liftoff.env",
        "/usr/share/liftoff/apparmor/usr.bin.liftoff",
    ] {
        assert!(list.lines().any(|l| l == f), "{f} missing from rpm: {list}");
    }
    let scripts = String::from_utf8(run("rpm", &["-qp", "--scripts", rpm]).stdout).unwrap();
    for s in [
        "postinstall",
        "preuninstall",
        "liftoff_create_user",
        "liftoff_enable_and_maybe_start",
        "liftoff_stop",
    ] {
        assert!(
            scripts.contains(s),
            "{s} missing from rpm scripts: {scripts}"
        );
    }
    let config = String::from_utf8(run("rpm", &["-qp", "--configfiles", rpm]).stdout).unwrap();
    assert!(config.contains("/etc/liftoff/liftoff.env"));
    let dump = String::from_utf8(run("rpm", &["-qp", "--dump", rpm]).stdout).unwrap();
    let env_line = dump
        .lines()
        .find(|l| l.starts_with("/etc/liftoff/liftoff.env"))
        .unwrap();
    assert!(env_line.contains("0100600"), "{env_line}");
}

#[test]
fn plane_deb_installs_its_user_and_data_directory_removes_and_purges_and_rpm_is_complete() {
    let _built = packages();
    let deb = find_named(
        "target/x86_64-unknown-linux-musl/debian",
        "liftoff-plane_",
        "deb",
    );
    let rpm = find_named(
        "target/x86_64-unknown-linux-musl/generate-rpm",
        "liftoff-plane-",
        "rpm",
    );
    let deb = deb.to_str().unwrap();
    let _ = Command::new("dpkg")
        .args(["--purge", "liftoff-plane"])
        .output();

    run("dpkg", &["-i", deb]);
    assert_eq!(mode("/usr/bin/liftoff-plane"), 0o755);
    let v = run("/usr/bin/liftoff-plane", &["--version"]);
    assert!(String::from_utf8_lossy(&v.stdout).contains("liftoff-plane"));
    assert_eq!(mode("/lib/systemd/system/liftoff-plane.service"), 0o644);
    for doc in ["plane.md", "protocol.md", "operations.md"] {
        assert!(
            Path::new("/usr/share/doc/liftoff-plane")
                .join(doc)
                .is_file(),
            "{doc}"
        );
    }
    let user = run("getent", &["passwd", "liftoff-plane"]);
    let user = String::from_utf8_lossy(&user.stdout).to_string();
    assert!(user.contains("/usr/sbin/nologin"), "{user}");
    let uid: u32 = user.split(':').nth(2).unwrap().parse().unwrap();
    run("getent", &["group", "liftoff-plane"]);
    assert_eq!(mode("/var/lib/liftoff-plane"), 0o700);
    let meta = std::fs::metadata("/var/lib/liftoff-plane").unwrap();
    assert_eq!(
        meta.uid(),
        uid,
        "the data directory belongs to liftoff-plane"
    );
    run(
        "systemd-analyze",
        &["verify", "/lib/systemd/system/liftoff-plane.service"],
    );

    // The documented first step works: `init` as the plane's user.
    run(
        "runuser",
        &[
            "-u",
            "liftoff-plane",
            "--",
            "/usr/bin/liftoff-plane",
            "init",
            "--data",
            "/var/lib/liftoff-plane",
            "--name",
            "localhost",
            "--listen",
            "127.0.0.1:0",
        ],
    );
    let cfg = std::fs::metadata("/var/lib/liftoff-plane/plane.json").unwrap();
    assert_eq!((cfg.uid(), cfg.mode() & 0o7777), (uid, 0o600));

    // Reinstall (upgrade path) keeps the data directory as it is.
    run("dpkg", &["-i", deb]);
    assert!(Path::new("/var/lib/liftoff-plane/plane.json").is_file());
    assert_eq!(mode("/var/lib/liftoff-plane"), 0o700);

    // Remove keeps the data (the pool CA, the database); purge deletes it.
    run("dpkg", &["-r", "liftoff-plane"]);
    assert!(!Path::new("/usr/bin/liftoff-plane").exists());
    assert!(
        Path::new("/var/lib/liftoff-plane/plane.json").exists(),
        "the data directory must survive remove"
    );
    run("dpkg", &["--purge", "liftoff-plane"]);
    assert!(!Path::new("/var/lib/liftoff-plane").exists());

    let rpm = rpm.to_str().unwrap();
    let list = String::from_utf8(run("rpm", &["-qpl", rpm]).stdout).unwrap();
    for f in [
        "/usr/bin/liftoff-plane",
        "/usr/lib/systemd/system/liftoff-plane.service",
        "/usr/share/liftoff-plane/maintainer-common.sh",
        "/usr/share/doc/liftoff-plane/plane.md",
    ] {
        assert!(list.lines().any(|l| l == f), "{f} missing from rpm: {list}");
    }
    let name = String::from_utf8(run("rpm", &["-qp", "--qf", "%{NAME}", rpm]).stdout).unwrap();
    assert_eq!(name, "liftoff-plane");
    let scripts = String::from_utf8(run("rpm", &["-qp", "--scripts", rpm]).stdout).unwrap();
    for s in [
        "plane_create_user",
        "plane_create_dirs",
        "plane_enable_and_maybe_start",
        "plane_stop",
    ] {
        assert!(
            scripts.contains(s),
            "{s} missing from rpm scripts: {scripts}"
        );
    }
}

#[test]
fn example_env_file_lists_every_variable() {
    let env = std::fs::read_to_string("packaging/liftoff.env").unwrap();
    for v in liftoff::config::vars::VARIABLES {
        assert!(
            env.contains(&format!("#{}=", v.name)),
            "{} missing from packaging/liftoff.env",
            v.name
        );
    }
}
