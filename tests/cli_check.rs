//! The command line as an operator meets it: `liftoff check` exit codes and
//! messages for a good configuration and several bad ones, `liftoff config`
//! redaction, `liftoff version` and `--help`.
//! (`--offline`: these tests are about configuration; the connectivity check
//! has its own tests with real brokers in link_check.rs.)

mod support;

use std::process::{Command, Output};
use std::sync::OnceLock;

use support::pki::{self, Pool};

fn pool() -> &'static (tempfile::TempDir, Pool) {
    static P: OnceLock<(tempfile::TempDir, Pool)> = OnceLock::new();
    P.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let pool = Pool::new(
            dir.path(),
            2048,
            &[
                ("eu-west-1", "mqtts://127.0.0.1:8883"),
                ("eu-central-1", "mqtts://127.0.0.1:8884"),
            ],
        );
        (dir, pool)
    })
}

/// Runs liftoff with exactly `env` (nothing inherited but PATH).
fn liftoff(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(support::liftoff_bin());
    cmd.args(args)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn good_env(p: &Pool) -> Vec<(&'static str, String)> {
    vec![
        ("SPACELIFT_TOKEN", p.token.clone()),
        ("SPACELIFT_POOL_PRIVATE_KEY", p.key_base64()),
    ]
}

fn with<'a>(
    base: &'a [(&'static str, String)],
    extra: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    base.iter()
        .map(|(k, v)| (*k, v.as_str()))
        .chain(extra.iter().copied())
        .collect()
}

#[test]
fn bad_run_timeout_exits_78_naming_the_variable_and_syntax() {
    let o = liftoff(
        &["check", "--offline"],
        &[("SPACELIFT_LAUNCHER_RUN_TIMEOUT", "abc")],
    );
    assert_eq!(o.status.code(), Some(78), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("SPACELIFT_LAUNCHER_RUN_TIMEOUT"), "{t}");
    assert!(
        t.contains("\"abc\"") && t.contains("1h30m") && t.contains("120m"),
        "{t}"
    );
}

#[test]
fn matching_pair_passes() {
    let (_, p) = pool();
    let env = good_env(p);
    let o = liftoff(&["check", "--offline"], &with(&env, &[]));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("matches the private key"), "{t}");
    assert!(t.contains("eu-west-1") && t.contains("eu-central-1"), "{t}");
    // The key file form works as well.
    let o = liftoff(
        &["check", "--offline"],
        &[
            ("SPACELIFT_TOKEN", &p.token),
            ("LIFTOFF_POOL_PRIVATE_KEY_FILE", p.key.to_str().unwrap()),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}

#[test]
fn mismatched_pair_fails_with_the_mismatch_message() {
    let (_, p) = pool();
    let dir = tempfile::tempdir().unwrap();
    let (other, _) = pki::pool_key_and_csr(dir.path(), "other", 2048);
    let other_b64 = pki::base64_file(&other);
    let o = liftoff(
        &["check", "--offline"],
        &[
            ("SPACELIFT_TOKEN", &p.token),
            ("SPACELIFT_POOL_PRIVATE_KEY", &other_b64),
        ],
    );
    assert_eq!(o.status.code(), Some(78));
    assert!(
        text(&o).contains("the token's certificate does not match SPACELIFT_POOL_PRIVATE_KEY: was the pool reset, or is this another pool's key?"),
        "{}",
        text(&o)
    );
}

#[test]
fn missing_and_garbage_identity() {
    let o = liftoff(&["check", "--offline"], &[]);
    assert_eq!(o.status.code(), Some(78));
    let t = text(&o);
    assert!(
        t.contains("SPACELIFT_TOKEN") && t.contains("is not set"),
        "{t}"
    );
    assert!(t.contains("SPACELIFT_POOL_PRIVATE_KEY"), "{t}");

    let o = liftoff(
        &["check", "--offline"],
        &[
            ("SPACELIFT_TOKEN", "@@garbage@@"),
            ("SPACELIFT_POOL_PRIVATE_KEY", "@@garbage@@"),
        ],
    );
    assert_eq!(o.status.code(), Some(78));
    let t = text(&o);
    assert!(t.contains("not valid base64"), "{t}");
    assert!(!t.contains("@@garbage@@"), "secret value echoed: {t}");

    let (_, p) = pool();
    let not_a_key = base64_of("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    let o = liftoff(
        &["check", "--offline"],
        &[
            ("SPACELIFT_TOKEN", &p.token),
            ("SPACELIFT_POOL_PRIVATE_KEY", &not_a_key),
        ],
    );
    assert_eq!(o.status.code(), Some(78));
    assert!(
        text(&o).contains("SPACELIFT_POOL_PRIVATE_KEY"),
        "{}",
        text(&o)
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn several_errors_are_all_reported() {
    let (_, p) = pool();
    let env = good_env(p);
    let o = liftoff(
        &["check", "--offline"],
        &with(
            &env,
            &[
                ("SPACELIFT_DEBUG", "yes"),
                ("LIFTOFF_WORKERS", "0"),
                ("SPACELIFT_WORKER_NETWORK", "bridge"),
            ],
        ),
    );
    assert_eq!(o.status.code(), Some(78));
    let t = text(&o);
    for var in [
        "SPACELIFT_DEBUG",
        "LIFTOFF_WORKERS",
        "SPACELIFT_WORKER_NETWORK",
    ] {
        assert!(t.contains(var), "{var} missing: {t}");
    }
    assert!(t.contains("3 error(s)"), "{t}");
}

#[test]
fn warnings_do_not_fail_the_check() {
    let (_, p) = pool();
    let env = good_env(p);
    let o = liftoff(
        &["check", "--offline"],
        &with(&env, &[("SPACELIFT_DEBGU", "true")]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("did you mean SPACELIFT_DEBUG?"));
}

#[test]
fn json_report() {
    let (_, p) = pool();
    let env = good_env(p);
    let o = liftoff(
        &["check", "--offline", "--json"],
        &with(&env, &[("SPACELIFT_LAUNCHER_LOGS_TIMEOUT", "7")]),
    );
    assert_eq!(o.status.code(), Some(78));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["ok"], false);
    assert_eq!(doc["exit_code"], 78);
    let checks = doc["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "SPACELIFT_LAUNCHER_LOGS_TIMEOUT" && c["status"] == "error")
    );
    assert!(
        checks
            .iter()
            .any(|c| c["name"] == "certificate" && c["status"] == "ok")
    );
    // This host (5.2+ kernel) binds by fd as root, and a launcher that is
    // not root binds paths as its own uid: either way the check is ok.
    let bind = checks.iter().find(|c| c["name"] == "bind by fd");
    assert!(
        bind.is_some_and(|c| c["status"] == "ok"),
        "check reports how workspaces are bound: {checks:?}"
    );
}

#[test]
fn config_redacts_secrets() {
    let (_, p) = pool();
    let env = good_env(p);
    let o = liftoff(
        &["config"],
        &with(&env, &[("SPACELIFT_METADATA_instance_id", "i-42")]),
    );
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(t.contains("SPACELIFT_TOKEN=(set, redacted)"), "{t}");
    assert!(
        t.contains("SPACELIFT_POOL_PRIVATE_KEY=(set, redacted)"),
        "{t}"
    );
    assert!(t.contains("SPACELIFT_LAUNCHER_RUN_TIMEOUT=1h10m0s"), "{t}");
    assert!(t.contains("SPACELIFT_METADATA_instance_id=i-42"), "{t}");
    assert!(
        !t.contains(&p.token[..40]) && !t.contains(&env[1].1[..40]),
        "secret printed: {t}"
    );
    let o = liftoff(&["config", "--json"], &with(&env, &[]));
    let doc: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["LIFTOFF_WORKERS"], "1");
    let o = liftoff(&["config"], &[("LIFTOFF_WORKERS", "x")]);
    assert_eq!(o.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&o.stderr).contains("LIFTOFF_WORKERS"));
}

#[test]
fn version_and_help() {
    let o = liftoff(&["version"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let t = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        t.starts_with(&format!("liftoff {}", env!("CARGO_PKG_VERSION")))
            && t.contains("commit")
            && t.contains("linux"),
        "{t}"
    );
    let o = liftoff(&["--version"], &[]);
    assert_eq!(o.status.code(), Some(0));
    let o = liftoff(&["--help"], &[]);
    let t = text(&o);
    for sub in ["check", "config", "version"] {
        assert!(t.contains(sub), "{t}");
        let o = liftoff(&[sub, "--help"], &[]);
        assert_eq!(o.status.code(), Some(0), "{sub} --help");
        assert!(text(&o).contains("Usage"), "{sub}");
    }
    let o = liftoff(&["no-such-command"], &[]);
    assert_eq!(o.status.code(), Some(2));
}

/// Durations beyond their maximum are configuration errors (exit 78, the
/// variable named) in `check` and `config`, never a panic later.
#[test]
fn huge_durations_are_config_errors_not_panics() {
    for var in [
        "SPACELIFT_LAUNCHER_RUN_TIMEOUT",
        "SPACELIFT_LAUNCHER_LOGS_TIMEOUT",
        "LIFTOFF_KILL_GRACE",
        "LIFTOFF_SHUTDOWN_GRACE",
        "LIFTOFF_HEARTBEAT_INTERVAL",
    ] {
        for args in [&["check", "--offline"][..], &["config"][..]] {
            let o = liftoff(args, &[(var, "5000000000000000h")]);
            let t = text(&o);
            assert_eq!(o.status.code(), Some(78), "{args:?} {var}: {t}");
            assert!(t.contains(var) && t.contains("maximum"), "{t}");
            assert!(!t.contains("panicked"), "{t}");
        }
    }
}

/// A state directory that is a file, a dangling symlink, or behind a
/// directory the job's user cannot pass is reported with the fix.
#[test]
fn check_examines_the_state_directory() {
    support::sandbox::require_root();
    let (_, p) = pool();
    let env = good_env(p);
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, "").unwrap();
    let dangling = dir.path().join("dangling");
    std::os::unix::fs::symlink(dir.path().join("nowhere"), &dangling).unwrap();
    let private = dir.path().join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let good = dir.path().join("state");
    std::fs::create_dir(&good).unwrap();
    for (state, needles) in [
        (
            file.clone(),
            &["is not a directory", "LIFTOFF_STATE_DIR"][..],
        ),
        (
            dangling.clone(),
            &["symlink", "nowhere", "create the directory"][..],
        ),
        (
            private.join("state"),
            &["cannot pass through", "chmod o+x"][..],
        ),
        (file.join("below"), &["cannot be created"][..]),
    ] {
        let s = state.to_str().unwrap();
        let o = liftoff(
            &["check", "--offline"],
            &with(&env, &[("LIFTOFF_STATE_DIR", s)]),
        );
        let t = text(&o);
        assert_eq!(o.status.code(), Some(78), "{s}: {t}");
        let line = t
            .lines()
            .find(|l| l.starts_with("error") && l.contains("LIFTOFF_STATE_DIR"))
            .unwrap_or_else(|| panic!("no state dir error for {s}: {t}"));
        for n in needles {
            assert!(line.contains(n), "{n:?} not in {line}");
        }
    }
    for state in [good.clone(), good.join("not-yet")] {
        let s = state.to_str().unwrap();
        let o = liftoff(
            &["check", "--offline"],
            &with(&env, &[("LIFTOFF_STATE_DIR", s)]),
        );
        assert_eq!(o.status.code(), Some(0), "{s}: {}", text(&o));
    }
}

/// Mounts that break isolation fail `check` unless opted in, then warn;
/// targets over the workspace fail either way.
#[test]
fn unsafe_mounts_fail_check_or_warn_with_the_opt_in() {
    let (_, p) = pool();
    let env = good_env(p);
    let mounts = "/:/x,/proc:/y,/sys/fs/cgroup:/z:rw";
    let o = liftoff(
        &["check", "--offline"],
        &with(&env, &[("SPACELIFT_WORKER_EXTRA_MOUNTS", mounts)]),
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(78), "{t}");
    assert_eq!(
        t.lines()
            .filter(|l| l.starts_with("error") && l.contains("LIFTOFF_ALLOW_UNSAFE_MOUNTS"))
            .count(),
        3,
        "{t}"
    );
    let o = liftoff(
        &["check", "--offline"],
        &with(
            &env,
            &[
                ("SPACELIFT_WORKER_EXTRA_MOUNTS", mounts),
                ("LIFTOFF_ALLOW_UNSAFE_MOUNTS", "true"),
            ],
        ),
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("3 warning(s)"), "{t}");
    let o = liftoff(
        &["check", "--offline"],
        &with(
            &env,
            &[
                ("SPACELIFT_WORKER_EXTRA_MOUNTS", "/tmp:/mnt/workspace"),
                ("LIFTOFF_ALLOW_UNSAFE_MOUNTS", "true"),
            ],
        ),
    );
    let t = text(&o);
    assert_eq!(o.status.code(), Some(78), "{t}");
    assert!(t.contains("would cover the job's workspace"), "{t}");
}

/// Whitelisting the pool key is warned about in `check` and `config`.
#[test]
fn whitelisted_secrets_are_warned_about() {
    let (_, p) = pool();
    let env = good_env(p);
    let extra = [("SPACELIFT_WHITELIST_ENVS", "SPACELIFT_POOL_PRIVATE_KEY")];
    let o = liftoff(&["check", "--offline"], &with(&env, &extra));
    let t = text(&o);
    assert_eq!(o.status.code(), Some(0), "{t}");
    assert!(t.contains("never passed to runs"), "{t}");
    let o = liftoff(&["config"], &with(&env, &extra));
    assert!(
        text(&o).contains("warning: SPACELIFT_WHITELIST_ENVS"),
        "{}",
        text(&o)
    );
}
