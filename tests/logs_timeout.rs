//! The watchdog: no-output and run timeouts kill the job's whole tree
//! through the caller's kill callback, and the reason is the last log line.
//! The job is a plain child in its own process group, killed with
//! `kill -s SIG -- -PGID` (the sandbox's cgroup kill plugs in the same way).

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use liftoff::logs::redact::RedactorBuilder;
use liftoff::logs::sink::FileSink;
use liftoff::logs::{Ended, Kill, Options, Pipeline};

struct GroupKill {
    pgid: u32,
    stages: Vec<&'static str>,
}

impl GroupKill {
    fn of(child: &Child) -> GroupKill {
        GroupKill {
            pgid: child.id(),
            stages: Vec::new(),
        }
    }

    fn signal(&mut self, sig: &'static str) {
        self.stages.push(sig);
        let _ = Command::new("kill")
            .args(["-s", sig, "--", &format!("-{}", self.pgid)])
            .stderr(Stdio::null())
            .status();
    }
}

impl Kill for GroupKill {
    fn terminate(&mut self) {
        self.signal("TERM");
    }
    fn kill(&mut self) {
        self.signal("KILL");
    }
}

fn spawn(script: &str) -> Child {
    // `exec 2>&1`: stdout and stderr share the one pipe.
    Command::new("sh")
        .arg("-c")
        .arg(format!("exec 2>&1; {script}"))
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap()
}

fn run(
    script: &str,
    logs_timeout: u64,
    run_timeout: u64,
    grace_ms: u64,
) -> (Ended, String, Vec<&'static str>, Child, Vec<String>) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let opts = Options {
        logs_timeout: Duration::from_secs(logs_timeout),
        run_timeout: Duration::from_secs(run_timeout),
        kill_grace: Duration::from_millis(grace_ms),
        chunk_interval: Duration::from_millis(200),
        ..Options::new("01RUNTIMEOUT", dir.path().join("spool"))
    };
    let mut p = to_file(opts, &RedactorBuilder::new(), &log);
    let mut child = spawn(script);
    let mut kill = GroupKill::of(&child);
    let ended = p.pump(child.stdout.take().unwrap(), &mut kill).unwrap();
    let report = p.finish();
    assert_eq!(report.delivered.error, None);
    let text = read(&log);
    (ended, text, kill.stages, child, report.warnings)
}

/// A pipeline writing the masked log to the file `log`.
fn to_file(opts: Options, masks: &RedactorBuilder, log: &Path) -> Pipeline {
    Pipeline::start(
        opts,
        masks.build(),
        Box::new(FileSink::create(log).unwrap()),
        None,
    )
    .unwrap()
}

fn read(p: &Path) -> String {
    String::from_utf8(std::fs::read(p).unwrap()).unwrap()
}

#[test]
fn no_output_kills_a_sleeping_job() {
    let (ended, log, stages, mut child, warnings) = run("echo starting; sleep 600", 2, 600, 2000);
    assert_eq!(ended, Ended::NoOutput(Duration::from_secs(2)));
    assert_eq!(log, "starting\nno output for 2s: killed\n");
    assert_eq!(stages, vec!["TERM", "KILL"]);
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(15));
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn no_output_kills_a_backgrounded_grandchild_holding_the_pipe() {
    // The shell exits at once; its backgrounded grandchild keeps the pipe
    // open and silent. Only a kill of the whole tree closes the pipe.
    let (ended, log, stages, mut child, warnings) =
        run("(sleep 600 &); echo parent done", 2, 600, 2000);
    assert_eq!(ended, Ended::NoOutput(Duration::from_secs(2)));
    assert_eq!(log, "parent done\nno output for 2s: killed\n");
    assert_eq!(stages, vec!["TERM", "KILL"]);
    assert!(child.wait().unwrap().success());
    // The pump returned because the pipe closed, not because it gave up.
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn run_timeout_kills_a_busy_job() {
    let (ended, log, stages, mut child, _) =
        run("while :; do echo busy; sleep 0.05; done", 600, 2, 2000);
    assert_eq!(ended, Ended::RunTimeout(Duration::from_secs(2)));
    assert!(log.starts_with("busy\n"), "{log}");
    assert!(log.ends_with("\nrun exceeded 2s: killed\n"), "{log}");
    assert!(log.lines().filter(|l| *l == "busy").count() > 3);
    assert_eq!(stages, vec!["TERM", "KILL"]);
    child.wait().unwrap();
}

#[test]
fn a_job_ignoring_sigterm_is_killed_after_the_grace_period() {
    let (ended, log, stages, mut child, _) =
        run("trap '' TERM; printf 'no newline'; sleep 600", 2, 600, 300);
    assert_eq!(ended, Ended::NoOutput(Duration::from_secs(2)));
    // The reason starts its own line.
    assert_eq!(log, "no newline\nno output for 2s: killed\n");
    assert_eq!(stages, vec!["TERM", "KILL"]);
    assert_eq!(child.wait().unwrap().signal(), Some(9));
}

#[test]
fn debug_command_is_logged_masked_before_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let opts = Options::new("01RUNDEBUG", dir.path().join("spool"));
    let mut b = RedactorBuilder::new();
    b.secret("TF_VAR_password", b"hunter2hunter2");
    let mut p = to_file(opts, &b, &log);
    p.debug_command(&[
        "terraform",
        "apply",
        "-var",
        "password=hunter2hunter2",
        "it's",
    ])
    .unwrap();
    let mut child = spawn("echo applied");
    let mut kill = GroupKill::of(&child);
    assert_eq!(
        p.pump(child.stdout.take().unwrap(), &mut kill).unwrap(),
        Ended::Closed
    );
    child.wait().unwrap();
    p.finish();
    assert_eq!(
        read(&log),
        "+ terraform apply -var password=*** 'it'\\''s'\napplied\n"
    );
}

#[test]
fn reason_line_starts_a_line_after_a_masked_secret_ending_in_newline() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("run.log");
    let opts = Options {
        logs_timeout: Duration::from_secs(2),
        kill_grace: Duration::from_secs(1),
        chunk_interval: Duration::from_millis(200),
        ..Options::new("01RUNNL", dir.path().join("spool"))
    };
    let mut b = RedactorBuilder::new();
    b.secret("S", b"secret-line\n");
    let mut p = to_file(opts, &b, &log);
    let mut child = spawn("echo secret-line; sleep 600");
    let mut kill = GroupKill::of(&child);
    let ended = p.pump(child.stdout.take().unwrap(), &mut kill).unwrap();
    assert_eq!(ended, Ended::NoOutput(Duration::from_secs(2)));
    child.wait().unwrap();
    p.finish();
    assert_eq!(read(&log), "***\nno output for 2s: killed\n");
}

/// A process-group handle that also watches the top process, so the pump
/// knows when the tree has exited (as the sandbox's pidfd does).
struct ChildTree<'a> {
    group: GroupKill,
    child: &'a mut Child,
}

impl Kill for ChildTree<'_> {
    fn terminate(&mut self) {
        self.group.terminate();
    }
    fn kill(&mut self) {
        self.group.kill();
    }
    fn wait_exit(&mut self, wait: Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if self.child.try_wait().unwrap().is_some() {
                return true;
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            std::thread::sleep(left.min(Duration::from_millis(10)));
        }
    }
}

/// Issue 12, item 4: the timeouts belong to the tree, not to the pipe: a
/// job that closes its output and runs on is still killed, by either.
#[test]
fn timeouts_go_on_after_the_job_closes_its_output() {
    for (logs_timeout, run_timeout, want) in [
        (2, 600, Ended::NoOutput(Duration::from_secs(2))),
        (600, 2, Ended::RunTimeout(Duration::from_secs(2))),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("run.log");
        let opts = Options {
            logs_timeout: Duration::from_secs(logs_timeout),
            run_timeout: Duration::from_secs(run_timeout),
            kill_grace: Duration::from_secs(1),
            chunk_interval: Duration::from_millis(200),
            ..Options::new("01RUNCLOSED", dir.path().join("spool"))
        };
        let mut p = to_file(opts, &RedactorBuilder::new(), &log);
        let mut child = spawn("echo closing; exec >&- 2>&-; exec sleep 600");
        let pipe = child.stdout.take().unwrap();
        let mut tree = ChildTree {
            group: GroupKill::of(&child),
            child: &mut child,
        };
        let ended = p.pump(pipe, &mut tree).unwrap();
        assert_eq!(ended, want);
        assert_eq!(tree.group.stages, vec!["TERM", "KILL"]);
        let report = p.finish();
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!(read(&log), format!("closing\n{}\n", want.reason().unwrap()));
        assert_eq!(child.wait().unwrap().signal(), Some(15));
    }
}
