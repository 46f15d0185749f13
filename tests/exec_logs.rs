//! `liftoff exec` with its output through the run-log pipeline: masking
//! (`--mask`, SPACELIFT_MASK_ENVS, every encoding, any split), `--log-file`,
//! and the watchdog (`--logs-timeout`, `--timeout`) killing the whole tree.

mod support;

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use support::sandbox::{bin, eventually, require_root, unique};
use support::tmpfs::Tmpfs;

const SECRET: &str = "s3cr3t-Value/with+chars&more";

/// A `sleep` argument unique to this test: `3000.<n>` seconds.
fn marker() -> String {
    format!("3000.{}", unique() % 1_000_000_000)
}

/// Fails with `why` unless no host process has `marker` as an argument
/// within 5 s.
fn assert_gone(marker: &str, why: &str) {
    assert!(
        eventually(Duration::from_secs(5), || pids_with_arg(marker).is_empty()),
        "{why}"
    );
}

/// Host pids with `arg` anywhere in their command line.
fn pids_with_arg(arg: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if cmd.split(|b| *b == 0).any(|a| a == arg.as_bytes()) {
                out.push(pid);
            }
        }
    }
    out
}

fn exec(env: &[(&str, &str)], args: &[&str], script: &str) -> (i32, String, String) {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("LIFTOFF_KILL_GRACE", "1s");
    for (k, v) in env {
        c.env(k, v);
    }
    let o = c
        .arg("exec")
        .args(args)
        .arg("--")
        .args(["/bin/sh", "-c", script])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Prints the secret plain, split across writes, base64 (three alignments),
/// JSON-escaped and URL-encoded, to stdout and stderr.
fn leaky_script() -> String {
    let b64 = |prefix: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{SECRET}"))
    };
    let json = serde_json::to_string(SECRET).unwrap();
    let url = SECRET
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace('&', "%26");
    let (a, b) = SECRET.split_at(7);
    format!(
        "echo \"plain $TOKEN end\"; printf '%s' '{a}'; sleep 0.2; printf '%s\\n' '{b}'; echo '{}'; echo '{}'; echo '{}'; echo 'json {}'; echo 'url {url}'; echo \"err $TOKEN\" >&2",
        b64(""),
        b64("x"),
        b64("xy"),
        json.replace('\'', "'\\''")
    )
}

fn assert_clean(text: &str) {
    let b64 = |prefix: &str| {
        base64::engine::general_purpose::STANDARD.encode(format!("{prefix}{SECRET}"))
    };
    assert!(!text.contains(SECRET), "plain secret leaked: {text}");
    assert!(!text.contains("s3cr3t-"), "a split secret leaked: {text}");
    for enc in [b64(""), b64("x"), b64("xy")] {
        // The encoded secret's stable middle part must be gone.
        let middle = &enc[4..enc.len() - 4];
        assert!(
            !text.contains(middle),
            "base64 secret leaked ({middle}): {text}"
        );
    }
    assert!(
        !text.contains("s3cr3t-Value\\/with"),
        "JSON-escaped secret leaked: {text}"
    );
    assert!(
        !text.contains("with%2Bchars"),
        "URL-encoded secret leaked: {text}"
    );
    assert!(text.contains("***"), "nothing was masked: {text}");
}

#[test]
fn mask_flag_masks_every_encoding_on_the_terminal() {
    require_root();
    let (code, out, err) = exec(
        &[("TOKEN", SECRET)],
        &["--pass-env", "TOKEN", "--mask", "TOKEN"],
        &leaky_script(),
    );
    assert_eq!(code, 0, "{err}");
    assert_clean(&out);
    assert!(
        out.contains("plain *** end") && out.contains("err ***"),
        "{out}"
    );
}

#[test]
fn spacelift_mask_envs_is_honoured_into_a_log_file() {
    require_root();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let (code, out, err) = exec(
        &[("TOKEN", SECRET), ("SPACELIFT_MASK_ENVS", "TOKEN")],
        &["--pass-env", "TOKEN", "--log-file", log.to_str().unwrap()],
        &leaky_script(),
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        out.is_empty(),
        "output went to the file, not the terminal: {out}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert_clean(&text);
    assert!(text.contains("plain *** end"), "{text}");
}

#[test]
fn exit_codes_pass_through_the_pipeline() {
    require_root();
    let (code, out, _) = exec(
        &[("TOKEN", SECRET)],
        &["--pass-env", "TOKEN", "--mask", "TOKEN"],
        "echo hi; exit 7",
    );
    assert_eq!((code, out.as_str()), (7, "hi\n"));
}

#[test]
fn no_output_timeout_kills_a_sleeping_job() {
    require_root();
    let marker = marker();
    let script = format!("echo started; exec sleep {marker}");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let (code, _, _) = exec(
        &[],
        &["--logs-timeout", "1s", "--log-file", log.to_str().unwrap()],
        &script,
    );
    assert_eq!(code, 124);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("started\n") && text.contains("no output for 1s: killed"),
        "{text}"
    );
    assert_gone(&marker, "the job survived");
}

#[test]
fn no_output_timeout_kills_a_grandchild_holding_the_pipe() {
    require_root();
    let marker = marker();
    // The job's top exits at once; a daemonized grandchild keeps the pipe.
    let script = format!("setsid sleep {marker} & echo forked");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let (_, _, _) = exec(
        &[],
        &["--logs-timeout", "2s", "--log-file", log.to_str().unwrap()],
        &script,
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("forked"), "{text}");
    assert_gone(&marker, "the grandchild survived");
}

#[test]
fn run_timeout_kills_a_busy_job() {
    require_root();
    let marker = marker();
    let script = format!("sleep {marker} & while :; do echo tick; sleep 0.1; done");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let (code, _, _) = exec(
        &[("TOKEN", SECRET)],
        &[
            "--mask",
            "TOKEN",
            "--pass-env",
            "TOKEN",
            "--timeout",
            "2s",
            "--log-file",
            log.to_str().unwrap(),
        ],
        &script,
    );
    assert_eq!(code, 124);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains("tick") && text.trim_end().ends_with("run exceeded 2s: killed"),
        "{text}"
    );
    assert_gone(&marker, "the job survived");
}

/// `liftoff exec` with `args` (and `-- /bin/sh -c script` unless `script` is
/// empty), failing the test if it has not returned within `bound` (it is
/// then killed): a hang is the bug these tests look for.
fn exec_within(
    bound: Duration,
    env: &[(&str, &str)],
    args: &[&str],
    script: &str,
) -> (i32, String, String) {
    let mut c = Command::new(bin());
    c.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin")
        .env("LIFTOFF_KILL_GRACE", "1s");
    for (k, v) in env {
        c.env(k, v);
    }
    c.arg("exec").args(args);
    if !script.is_empty() {
        c.arg("--").args(["/bin/sh", "-c", script]);
    }
    let child = c
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(bound) {
        Ok(o) => {
            let o = o.unwrap();
            (
                o.status.code().unwrap_or(-1),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        }
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!(
                "liftoff exec {args:?} had not returned after {bound:?}: the timeout did not hold"
            );
        }
    }
}

/// Generous: the timeouts under test are 1 or 2 seconds.
const BOUND: Duration = Duration::from_secs(60);

#[test]
fn run_timeout_holds_for_a_job_that_closes_its_output() {
    require_root();
    let marker = marker();
    let script = format!("echo started; exec >&- 2>&-; exec sleep {marker}");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let (code, _, err) = exec_within(
        BOUND,
        &[],
        &["--timeout", "2s", "--log-file", log.to_str().unwrap()],
        &script,
    );
    assert_eq!(code, 124, "{err}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.starts_with("started\n") && text.trim_end().ends_with("run exceeded 2s: killed"),
        "{text}"
    );
    assert_gone(&marker, "the job survived");
}

#[test]
fn no_output_timeout_holds_for_a_job_that_closes_its_output() {
    require_root();
    let marker = marker();
    let script = format!("exec >&- 2>&-; exec sleep {marker}");
    let (code, out, err) = exec_within(
        BOUND,
        &[("TOKEN", SECRET)],
        &[
            "--pass-env",
            "TOKEN",
            "--mask",
            "TOKEN",
            "--logs-timeout",
            "1s",
        ],
        &script,
    );
    assert_eq!(code, 124, "{out}{err}");
    assert!(out.contains("no output for 1s: killed"), "{out}");
    assert_gone(&marker, "the job survived");
}

#[test]
fn no_output_timeout_kills_a_silent_sleeper_with_mask() {
    require_root();
    let marker = marker();
    let (code, out, err) = exec_within(
        BOUND,
        &[("TOKEN", SECRET)],
        &[
            "--pass-env",
            "TOKEN",
            "--mask",
            "TOKEN",
            "--logs-timeout",
            "1s",
        ],
        &format!("sleep {marker}"),
    );
    assert_eq!(code, 124, "{out}{err}");
    assert!(out.contains("no output for 1s: killed"), "{out}");
    assert_gone(&marker, "the job survived");
}

/// Writes a one-step run spec (plain JSON, as `liftoff exec --spec` takes)
/// whose step runs `script`, with `timeouts`.
fn spec_file(dir: &std::path::Path, script: &str, timeouts: serde_json::Value) -> String {
    let run_id = format!("01EXECLOGS{:016}", unique() % 10_000_000_000_000_000);
    let spec = serde_json::json!({
        "run_id": run_id,
        "run_type": "proposed",
        "stack": {"id": "s", "slug": "s", "name": "S"},
        "commit": {"hash": "0000000", "branch": "main", "author": "a", "message": "m"},
        "environment": [{"name": "TOP_SECRET", "value": SECRET, "secret": true}],
        "steps": [{"name": "closes", "shell": script}],
        "timeouts": timeouts,
    });
    let path = dir.join("spec.json");
    std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn spec_mode_timeouts_hold_for_a_step_that_closes_its_output() {
    require_root();
    for (timeouts, reason) in [
        (
            serde_json::json!({"run": "1h", "logs": "1s"}),
            "no output for 1s: killed",
        ),
        (
            serde_json::json!({"run": "2s", "logs": "1h"}),
            "run exceeded 2s: killed",
        ),
    ] {
        let marker = marker();
        let dir = tempfile::tempdir().unwrap();
        let spec = spec_file(
            dir.path(),
            &format!("echo started; exec >&- 2>&-; exec sleep {marker}"),
            timeouts,
        );
        let log = dir.path().join("run.log");
        let (code, _, err) = exec_within(
            BOUND,
            &[],
            &["--spec", &spec, "--log-file", log.to_str().unwrap()],
            "",
        );
        assert_eq!(code, 1, "{err}");
        assert!(err.contains(reason), "{err}");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("started") && text.contains(reason), "{text}");
        assert_gone(&marker, "the job survived");
    }
}

/// Issue 12, item 7: the failure reason (`liftoff: run … failed: …` and the
/// log's last line) is masked like the log, and URLs are shown without
/// credentials or query.
#[test]
fn failure_reasons_are_masked_and_urls_redacted() {
    require_root();
    let check = |spec: serde_json::Value, what: &str| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.json");
        std::fs::write(&path, serde_json::to_vec(&spec).unwrap()).unwrap();
        let log = dir.path().join("run.log");
        let (code, out, err) = exec_within(
            BOUND,
            &[],
            &[
                "--spec",
                path.to_str().unwrap(),
                "--log-file",
                log.to_str().unwrap(),
            ],
            "",
        );
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        assert_eq!(code, 1, "{what}: {err}");
        assert!(err.contains("failed: "), "{what}: {err}");
        for shown in [&out, &err, &text] {
            assert!(!shown.contains("s3cr3t"), "{what}: secret shown: {shown}");
            assert!(!shown.contains("sig="), "{what}: URL query shown: {shown}");
            assert!(
                !shown.contains("user:"),
                "{what}: URL credentials shown: {shown}"
            );
        }
        assert!(err.contains("***"), "{what}: {err}");
        (err, text)
    };
    let base = |steps: serde_json::Value| {
        serde_json::json!({
            "run_id": format!("01EXECMASK{:016}", unique() % 10_000_000_000_000_000),
            "run_type": "proposed",
            "stack": {"id": "s", "slug": "s", "name": "S"},
            "commit": {"hash": "0000000", "branch": "main", "author": "a", "message": "m"},
            "environment": [{"name": "TOP_SECRET", "value": SECRET, "secret": true}],
            "steps": steps,
            "timeouts": {"run": "1m"},
        })
    };
    // A secret in a step's argv, in the reason the step could not start.
    let spec = base(serde_json::json!([
        {"name": "missing", "argv": [format!("/nonexistent/{SECRET}")]}
    ]));
    let (err, _) = check(spec, "argv");
    assert!(err.contains("/nonexistent/***"), "{err}");
    // Credentials, a secret and a signature in the source URL.
    let mut spec = base(serde_json::json!([{"name": "never", "shell": "true"}]));
    let encoded = SECRET
        .replace('/', "%2F")
        .replace('+', "%2B")
        .replace('&', "%26");
    spec["source"] = serde_json::json!({
        "url": format!("http://user:{encoded}@127.0.0.1:9/{SECRET}.tar.gz?sig={encoded}")
    });
    let (err, _) = check(spec, "source URL");
    assert!(err.contains("http://***@127.0.0.1:9/"), "{err}");
}

/// An 8 MiB tmpfs mounted at `<temporary dir>/state`, unmounted on drop.
fn small_fs() -> Tmpfs {
    require_root();
    Tmpfs::mount("size=8m,mode=0755")
}

const FILL: &str = "echo before-the-fill; head -c 64000000 /dev/zero > /mnt/workspace/fill; echo \"fill ended: $?\"; i=0; while :; do i=$((i+1)); echo \"line $i after the fill\"; done";

/// [`FILL`] with an end: 2,000 lines after the fill.
const FILL_THEN_END: &str = "echo before-the-fill; head -c 64000000 /dev/zero > /mnt/workspace/fill; echo \"fill ended: $?\"; i=0; while [ $i -lt 2000 ]; do i=$((i+1)); echo \"line $i after the fill\"; done";

/// `liftoff exec --spec` of a one-step spec running `script` (run 5m,
/// logs 1m), the state directory on `fs`, with `args` after.
fn spec_with_state_on(fs: &Tmpfs, script: &str, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec_file(
        dir.path(),
        script,
        serde_json::json!({"run": "5m", "logs": "1m"}),
    );
    let mut all = vec!["--spec", spec.as_str()];
    all.extend_from_slice(args);
    exec_within(
        BOUND,
        &[("LIFTOFF_STATE_DIR", fs.path.to_str().unwrap())],
        &all,
        "",
    )
}

fn assert_log_kept(log: &str, err: &str) {
    let tail = &log[log.len().saturating_sub(2000)..];
    assert!(log.contains("before-the-fill"), "{log:.2000}\n{err}");
    assert!(log.contains("fill ended: 1"), "{log:.2000}\n{err}");
    assert!(log.contains("after the fill"), "{log:.2000}\n{err}");
    assert!(
        tail.contains("the disk holding the run's log is full"),
        "the reason does not end the log: {tail}\n{err}"
    );
    assert!(!err.contains("cannot write log chunk"), "{err}");
}

/// Issue 12, item 17, terminal side: the terminal takes the masked output
/// straight from memory (no spool), so a job that fills the disk holding
/// the state directory leaves its output on the terminal whole and runs to
/// its end. (The spool's own full-disk path, the one network sinks take, is
/// tests/logs_disk_full.rs.)
#[test]
fn a_job_filling_the_state_disk_keeps_its_terminal_output() {
    let fs = small_fs();
    let (code, out, err) = spec_with_state_on(&fs, FILL_THEN_END, &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("before-the-fill"), "{out:.2000}\n{err}");
    assert!(out.contains("fill ended: 1"), "{out:.2000}\n{err}");
    assert!(
        out.contains("line 2000 after the fill"),
        "{out:.2000}\n{err}"
    );
    assert!(!err.contains("cannot write log chunk"), "{err}");
}

/// The same with the log file on the disk the job fills (`--log-file`,
/// written directly, no spool), in spec mode and in plain `liftoff exec`.
#[test]
fn a_job_filling_the_disk_keeps_its_log_file_and_the_reason() {
    let fs = small_fs();
    let log = fs.path.join("spec.log");
    let (code, _, err) = spec_with_state_on(&fs, FILL, &["--log-file", log.to_str().unwrap()]);
    assert_log_kept(&std::fs::read_to_string(&log).unwrap(), &err);
    assert_eq!(code, 1, "{err}");

    let fs = small_fs();
    let ws = fs.path.join("ws");
    std::fs::create_dir(&ws).unwrap();
    let log = fs.path.join("exec.log");
    let (code, _, err) = exec_within(
        BOUND,
        &[],
        &[
            "--workspace",
            ws.to_str().unwrap(),
            "--log-file",
            log.to_str().unwrap(),
        ],
        FILL,
    );
    assert_log_kept(&std::fs::read_to_string(&log).unwrap(), &err);
    assert_eq!(code, 125, "{err}");
}
