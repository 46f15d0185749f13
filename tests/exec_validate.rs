//! `liftoff exec` refuses bad flags before it creates or changes anything
//! (exit 125, the flag named), and `liftoff exec --spec` ends cleanly on
//! SIGTERM / SIGINT: the run is cancelled, its directory removed, and the
//! exit status is 128+N.
//! In-process through `exec::validate_flags` / `validate_workspace`, plus
//! real invocations of the binary.

mod support;

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use liftoff::cli::exec::{self, ExecArgs};
use liftoff::config::{Config, Env};
use support::sandbox::{eventually, require_root};

fn env(pairs: &[(&str, &str)]) -> Env {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn validate(args: &ExecArgs, e: &Env) -> Result<(), String> {
    let config = Config::load(e).config;
    exec::validate_flags(args, e, &config).map(|_| ())
}

fn args() -> ExecArgs {
    ExecArgs::for_command(vec!["true".into()])
}

/// An image root for `--root`: a directory holding usr/.
fn image() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("usr")).unwrap();
    d
}

#[test]
fn bad_values_are_refused_naming_the_flag() {
    let e = env(&[
        ("SPACELIFT_POOL_PRIVATE_KEY", "a2V5"),
        ("SPACELIFT_TOKEN", "dA=="),
    ]);
    let cases: Vec<(ExecArgs, &str, &str)> = vec![
        (
            ExecArgs {
                memory: Some("0".into()),
                ..args()
            },
            "--memory",
            "16MiB minimum",
        ),
        (
            ExecArgs {
                memory: Some("1MiB".into()),
                ..args()
            },
            "--memory",
            "16MiB minimum",
        ),
        (
            ExecArgs {
                pids: Some(0),
                ..args()
            },
            "--pids",
            "at least 16",
        ),
        (
            ExecArgs {
                hostname: Some("a\nb".into()),
                ..args()
            },
            "--hostname",
            "hostname",
        ),
        (
            ExecArgs {
                hostname: Some("h".repeat(65)),
                ..args()
            },
            "--hostname",
            "64",
        ),
        (
            ExecArgs {
                hostname: Some("-x".into()),
                ..args()
            },
            "--hostname",
            "hostname",
        ),
        (
            ExecArgs {
                hostname: Some(String::new()),
                ..args()
            },
            "--hostname",
            "hostname",
        ),
        (
            ExecArgs {
                timeout: Some("5000000000000000h".into()),
                ..args()
            },
            "--timeout",
            "maximum",
        ),
        (
            ExecArgs {
                logs_timeout: Some("721h".into()),
                ..args()
            },
            "--logs-timeout",
            "maximum",
        ),
        (
            ExecArgs {
                timeout: Some("0s".into()),
                ..args()
            },
            "--timeout",
            "longer than 0s",
        ),
        (
            ExecArgs {
                root: Some("/".into()),
                ..args()
            },
            "--root",
            "the host's /",
        ),
        (
            ExecArgs {
                root: Some("/etc".into()),
                ..args()
            },
            "--root",
            "the host's /etc",
        ),
        (
            ExecArgs {
                root: Some("/no/such".into()),
                ..args()
            },
            "--root",
            "cannot be used",
        ),
        (
            ExecArgs {
                mounts: vec!["/:/x".into()],
                ..args()
            },
            "--mount",
            "LIFTOFF_ALLOW_UNSAFE_MOUNTS",
        ),
        (
            ExecArgs {
                mounts: vec!["/proc:/x".into()],
                ..args()
            },
            "--mount",
            "LIFTOFF_ALLOW_UNSAFE_MOUNTS",
        ),
        (
            ExecArgs {
                mounts: vec!["/tmp:/mnt/workspace".into()],
                ..args()
            },
            "--mount",
            "workspace",
        ),
        (
            ExecArgs {
                mounts: vec!["/tmp:/proc/x".into()],
                ..args()
            },
            "--mount",
            "/proc",
        ),
        (
            ExecArgs {
                pass_env: vec!["SPACELIFT_POOL_PRIVATE_KEY".into()],
                ..args()
            },
            "--pass-env",
            "never passed",
        ),
        (
            ExecArgs {
                pass_env: vec!["SPACELIFT_TOKEN".into()],
                ..args()
            },
            "--pass-env",
            "never passed",
        ),
        (
            ExecArgs {
                cwd: Some("/a\nb".into()),
                ..args()
            },
            "--cwd",
            "control",
        ),
        (
            ExecArgs {
                masks: vec!["1X".into()],
                ..args()
            },
            "--mask",
            "variable name",
        ),
    ];
    for (a, flag, needle) in cases {
        let err = validate(&a, &e).unwrap_err();
        assert!(err.starts_with(flag), "{flag}: {err}");
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    let img = image();
    let data = tempfile::tempdir().unwrap();
    let good = ExecArgs {
        memory: Some("16MiB".into()),
        hostname: Some("build-1.example".into()),
        timeout: Some("720h".into()),
        root: Some(img.path().into()),
        mounts: vec![format!("{}:/mnt/data:ro", data.path().display())],
        ..args()
    };
    validate(&good, &e).unwrap();
    // With the opt-in, an unsafe mount is allowed (and warned about).
    let e = env(&[("LIFTOFF_ALLOW_UNSAFE_MOUNTS", "true")]);
    validate(
        &ExecArgs {
            mounts: vec!["/proc:/x".into()],
            ..args()
        },
        &e,
    )
    .unwrap();
}

#[test]
fn workspace_must_be_a_dedicated_directory() {
    let file = tempfile::NamedTempFile::new().unwrap();
    for (dir, needle) in [
        (Path::new("/etc/ssh"), "lies in the host's /etc"),
        (Path::new("/usr/lib"), "lies in the host's /usr"),
        (Path::new("/tmp"), "shared or top-level"),
        (Path::new("/"), "shared or top-level"),
        (Path::new("/no/such/dir"), "existing directory"),
        (file.path(), "not a directory"),
    ] {
        if !dir.exists() && needle != "existing directory" {
            continue;
        }
        let err = exec::validate_workspace(dir).unwrap_err();
        assert!(err.starts_with("--workspace"), "{err}");
        assert!(err.contains(needle), "{dir:?}: {needle:?} not in {err}");
    }
    let d = tempfile::tempdir().unwrap();
    let real = exec::validate_workspace(d.path()).unwrap();
    assert_eq!(real, d.path().canonicalize().unwrap());
}

fn liftoff(args: &[&str]) -> std::process::Output {
    Command::new(support::liftoff_bin())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The binary: bad flags exit 125 with the flag named, and nothing panics.
#[test]
fn cli_refuses_bad_flags_with_125() {
    for (flags, needle) in [
        (&["--memory", "0"][..], "--memory"),
        (&["--hostname", "a\nb"][..], "--hostname"),
        (&["--timeout", "5000000000000000h"][..], "--timeout"),
        (
            &["--logs-timeout", "5000000000000000h"][..],
            "--logs-timeout",
        ),
        (&["--root", "/"][..], "--root"),
        (&["--mount", "/:/x"][..], "--mount"),
        (
            &["--pass-env", "SPACELIFT_POOL_PRIVATE_KEY"][..],
            "--pass-env",
        ),
        (&["--workspace", "/etc/ssh"][..], "--workspace"),
    ] {
        let mut all = vec!["exec"];
        all.extend_from_slice(flags);
        all.extend_from_slice(&["--", "true"]);
        let o = liftoff(&all);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(125), "{flags:?}: {err}");
        assert!(err.contains(needle) && !err.contains("panicked"), "{err}");
    }
}

/// `--workspace /etc/ssh` used to change the directory's owner before
/// failing: now it is refused first and nothing changes.
#[test]
fn a_system_workspace_keeps_its_owner() {
    require_root();
    let dir = ["/etc/ssh", "/etc"]
        .into_iter()
        .map(Path::new)
        .find(|d| d.is_dir())
        .unwrap();
    let before = std::fs::metadata(dir).unwrap();
    let o = liftoff(&["exec", "--workspace", dir.to_str().unwrap(), "--", "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let after = std::fs::metadata(dir).unwrap();
    assert_eq!((before.uid(), before.gid()), (after.uid(), after.gid()));
    // A dedicated directory is given to the job, and liftoff says so.
    let d = tempfile::tempdir().unwrap();
    let ws = d.path().join("ws");
    std::fs::create_dir(&ws).unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let o = liftoff(&["exec", "--workspace", ws.to_str().unwrap(), "--", "true"]);
    let err = stderr(&o);
    assert!(err.contains("its owner changes from uid 0"), "{err}");
}

/// `--spec` reads only a regular file of bounded size: /dev/zero and a FIFO
/// are refused at once, an oversized file with the limit named.
#[test]
fn spec_files_are_bounded_and_regular() {
    let d = tempfile::tempdir().unwrap();
    let fifo = d.path().join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let big = d.path().join("big.json");
    std::fs::write(&big, vec![b' '; (4 << 20) + 1]).unwrap();
    for (path, needle) in [
        (Path::new("/dev/zero"), "not a regular file"),
        (fifo.as_path(), "not a regular file"),
        (big.as_path(), "limit"),
        (Path::new("/no/such/spec.json"), "No such file"),
    ] {
        let o = liftoff(&["exec", "--spec", path.to_str().unwrap()]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(125), "{path:?}: {err}");
        assert!(err.contains("--spec") && err.contains(needle), "{err}");
    }
}

/// SIGTERM (and SIGINT) to `liftoff exec --spec` cancel the run: the job's
/// tree is ended, the run directory removed, the exit status is 128+N.
#[test]
fn signals_cancel_a_spec_run_and_clean_up() {
    require_root();
    for (signal, code) in [(libc::SIGTERM, 143), (libc::SIGINT, 130)] {
        let d = support::runs::open_tempdir();
        let state = d.path().join("state");
        // A sleep whose command line is unique to this test.
        let marker = format!("sleep 999.{}", support::sandbox::unique());
        let spec = d.path().join("spec.json");
        std::fs::write(
            &spec,
            serde_json::json!({
                "run_id": "sigtest",
                "run_type": "proposed",
                "steps": [{"name": "wait", "shell": format!("touch started; exec {marker}")}],
            })
            .to_string(),
        )
        .unwrap();
        let mut child = Command::new(support::liftoff_bin())
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
            .env("LIFTOFF_STATE_DIR", &state)
            .env("LIFTOFF_KILL_GRACE", "1s")
            .args(["exec", "--spec", spec.to_str().unwrap()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = state.join("runs/sigtest/workspace/source/started");
        assert!(
            eventually(Duration::from_secs(60), || started.exists()),
            "the step never started"
        );
        assert!(eventually(Duration::from_secs(10), || {
            !support::sandbox::host_pids_with(&marker).is_empty()
        }));
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::try_from(signal).unwrap(),
        )
        .unwrap();
        let mut done = None;
        assert!(
            eventually(Duration::from_secs(60), || {
                done = child.try_wait().unwrap();
                done.is_some()
            }),
            "liftoff did not end after the signal"
        );
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        assert_eq!(done.unwrap().code(), Some(code), "{err}");
        assert!(err.contains("cancelled by signal"), "{err}");
        assert!(!state.join("runs/sigtest").exists(), "run directory left");
        assert!(
            support::sandbox::host_pids_with(&marker).is_empty(),
            "the job outlived liftoff"
        );
    }
}
