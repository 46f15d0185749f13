//! A run spec with `tool`: the verified binary is mounted read-only into the
//! job at /mnt/tools/bin, first on PATH, and the step runs `tofu version`
//! (the test executable, from a test release signed with a gpg-made key);
//! two concurrent runs of an uncached version download it once; a release
//! that fails verification fails the run before any step, naming the tool,
//! version and source. Needs root (CI runs as root): the sandbox maps the
//! job to an unprivileged host id.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use liftoff::config::{Config, Env};
use liftoff::logs::sink::FileSink;
use liftoff::run::RunEvent;
use liftoff::run::executor::SandboxExecutor;
use liftoff::run::spec::RunSpec;
use serde_json::json;
use support::runs::{events, open_tempdir, until_end};
use support::tool_release::{Signing, ToolServer, keys, platform, release, serve_releases};

const LIMIT: Duration = Duration::from_secs(120);

struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    server: ToolServer,
}

impl World {
    fn new() -> World {
        support::sandbox::require_root();
        let dir = open_tempdir();
        let path = dir.path().to_path_buf();
        let server = ToolServer::start();
        let sign = Signing {
            key: &keys().a,
            digest: "SHA512",
            by_subkey: true,
        };
        let mut tampered = release("tofu", "1.7.0", None, Some(sign));
        let last = tampered[0].1.len() - 30;
        tampered[0].1[last] ^= 0xFF;
        serve_releases(
            &server,
            "/m",
            "tofu",
            &[
                ("1.7.0", tampered),
                ("1.8.5", release("tofu", "1.8.5", None, Some(sign))),
                ("1.9.1", release("tofu", "1.9.1", None, Some(sign))),
                ("1.6.0", release("tofu", "1.6.0", None, Some(sign))),
            ],
        );
        server.stall(&format!("/m/tofu/1.6.0/tofu_1.6.0_{}.zip", platform()));
        std::fs::write(path.join("keys.asc"), keys().a.export()).unwrap();
        World {
            _dir: dir,
            dir: path,
            server,
        }
    }

    fn executor(&self) -> SandboxExecutor {
        self.executor_with(&[])
    }

    fn executor_with(&self, more: &[(&str, &str)]) -> SandboxExecutor {
        let d = |s: &str| self.dir.join(s).display().to_string();
        let env: Env = [
            ("LIFTOFF_STATE_DIR".to_string(), d("state")),
            ("LIFTOFF_PROVIDER_CACHE_DIR".into(), d("providers")),
            ("LIFTOFF_TOOLS_CACHE_DIR".into(), d("tools")),
            ("LIFTOFF_TOOLS_KEYS".into(), d("keys.asc")),
            ("LIFTOFF_TOOLS_MIRROR".into(), self.server.url("/m")),
            ("LIFTOFF_JOB_MEMORY".into(), "512MiB".into()),
        ]
        .into_iter()
        .chain(more.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
        let config = Config::load(&env).config;
        SandboxExecutor::new(config, env, None).unwrap()
    }

    fn run(
        &self,
        ex: &SandboxExecutor,
        run: &str,
        version: &str,
        shell: &str,
    ) -> (RunEvent, String) {
        self.run_spec(
            ex,
            json!({
                "run_id": run, "run_type": "proposed",
                "tool": {"name": "opentofu", "version": version},
                "steps": [{"name": "version", "shell": shell}],
            }),
        )
    }

    fn run_spec(&self, ex: &SandboxExecutor, spec: serde_json::Value) -> (RunEvent, String) {
        let run = spec["run_id"].as_str().unwrap().to_string();
        let run = run.as_str();
        let spec = RunSpec::from_json(spec.to_string().as_bytes()).unwrap();
        let (ev, rx) = events(run);
        let out = self.dir.join(format!("{run}.log"));
        ex.run_plain(spec, Some(Box::new(FileSink::create(&out).unwrap())), ev);
        let evs = until_end(&rx, LIMIT);
        (
            evs.last().unwrap().clone(),
            std::fs::read_to_string(&out).unwrap_or_default(),
        )
    }
}

#[test]
fn a_step_runs_the_verified_tool_from_path() {
    let w = World::new();
    let ex = w.executor();
    let (end, log) = w.run(
        &ex,
        "tool-run-1",
        "~> 1.8",
        "tofu version; terraform version; /bin/terraform version; /bin/tofu version; command -v tofu; echo \"PATH=$PATH\"; if echo x > /mnt/tools/bin/tofu; then echo WRITABLE; else echo read-only; fi; if echo x > /bin/terraform; then echo BIN-WRITABLE; fi; /bin/sh -c 'echo host-bin-still-there'; ls /usr/bin | grep -c '^ls$'",
    );
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(
        log.contains("tofu v1.9.1 (liftoff test build) version"),
        "{log}"
    );
    assert!(log.contains("/mnt/tools/bin/tofu"), "{log}");
    assert_eq!(
        log.matches("tofu v1.9.1 (liftoff test build) version")
            .count(),
        4,
        "{log}"
    );
    // /bin/terraform and /bin/tofu, as the seed's runs call them, and the
    // root's /bin (here the host's, merged into /usr/bin) is all still there.
    assert!(log.contains("host-bin-still-there"), "{log}");
    assert!(!log.contains("BIN-WRITABLE"), "{log}");
    assert!(log.contains("PATH=/mnt/tools/bin:"), "{log}");
    assert!(
        log.contains("read-only") && !log.contains("WRITABLE"),
        "{log}"
    );
    assert!(log.contains("signature and SHA-256 verified"), "{log}");
    // The next run uses the cache.
    let (end, log) = w.run(&ex, "tool-run-2", "1.9.1", "tofu version");
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(log.contains("cached"), "{log}");
    assert_eq!(w.server.count("tofu_1.9.1_linux_amd64.zip"), 1);
}

#[test]
fn two_concurrent_runs_download_once() {
    let w = World::new();
    let ex = w.executor();
    std::thread::scope(|s| {
        let runs: Vec<_> = ["tool-c-1", "tool-c-2"]
            .into_iter()
            .map(|id| {
                let (w, ex) = (&w, &ex);
                s.spawn(move || w.run(ex, id, "1.8.5", "tofu version"))
            })
            .collect();
        for r in runs {
            let (end, log) = r.join().unwrap();
            assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
            assert!(log.contains("tofu v1.8.5"), "{log}");
        }
    });
    assert_eq!(w.server.count("tofu_1.8.5_linux_amd64.zip"), 1);
}

#[test]
fn a_tampered_release_fails_the_run_before_any_step() {
    let w = World::new();
    let ex = w.executor();
    let (end, log) = w.run(&ex, "tool-bad", "1.7.0", "echo STEP-RAN");
    match end {
        RunEvent::Failed { reason } => {
            for needle in [
                "opentofu 1.7.0",
                "tofu_1.7.0_linux_amd64.zip",
                "tampered",
                "release mirror",
            ] {
                assert!(reason.contains(needle), "{needle:?} not in {reason}");
            }
        }
        e => panic!("{e:?}\n{log}"),
    }
    assert!(!log.contains("STEP-RAN"), "{log}");
    // A constraint that is not one is refused with the spec.
    let bad = json!({"run_id": "x", "run_type": "proposed", "tool": {"name": "opentofu", "version": "~> one"}, "steps": [{"name": "s", "argv": ["true"]}]});
    let err = RunSpec::from_json(bad.to_string().as_bytes()).unwrap_err();
    assert!(err.contains("tool.version"), "{err}");
    let bad = json!({"run_id": "x", "run_type": "proposed", "tool": {"name": "pulumi", "version": "1.0.0"}, "steps": [{"name": "s", "argv": ["true"]}]});
    let err = RunSpec::from_json(bad.to_string().as_bytes()).unwrap_err();
    assert!(err.contains("unknown variant"), "{err}");
}

/// The run's timeout covers fetching its tool: a mirror that hangs
/// mid-download fails the run when the timeout runs out, before any step.
#[test]
fn a_hanging_mirror_fails_the_run_at_its_timeout() {
    let w = World::new();
    let ex = w.executor();
    let (end, log) = w.run_spec(
        &ex,
        json!({
            "run_id": "tool-stall", "run_type": "proposed",
            "timeouts": {"run": "3s"},
            "tool": {"name": "opentofu", "version": "1.6.0"},
            "steps": [{"name": "version", "shell": "echo STEP-RAN"}],
        }),
    );
    match end {
        RunEvent::Failed { reason } => {
            assert!(reason.contains("opentofu 1.6.0"), "{reason}");
            assert!(reason.contains("timeout ran out"), "{reason}");
        }
        other => panic!("expected a failed run, got {other:?}; log:\n{log}"),
    }
    assert!(!log.contains("STEP-RAN"), "{log}");
}

/// Runtime landlock (hosts without user namespaces) has no mount
/// namespace: the job's paths are the host's. The working directory, the
/// workspace variable, the provider-cache layer and the tool's directory
/// on PATH are host paths the landlock rules allow, and the tool still runs
/// and stays read-only. The job reaches them by path as its unprivileged
/// host id, so (as docs/configuration.md says of this runtime) the state
/// directory's parents must be traversable: the test opens its private
/// directory to traversal (0711), which runtime liftoff never needs.
#[test]
fn runtime_landlock_runs_see_host_paths_and_the_tool() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new();
    support::sandbox::require(liftoff::sandbox::landlock::abi() >= 1, "landlock");
    std::fs::set_permissions(&w.dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let ex = w.executor_with(&[("SPACELIFT_WORKER_RUNTIME", "landlock")]);
    let (end, log) = w.run(
        &ex,
        "tool-landlock",
        "1.9.1",
        "tofu version; pwd; echo \"WS=$SPACELIFT_WORKSPACE_ROOT\"; echo \"CACHE=$TF_PLUGIN_CACHE_DIR\"; touch \"$TF_PLUGIN_CACHE_DIR/written\" && echo cache-writable; if echo x > \"$(command -v tofu)\"; then echo TOOL-WRITABLE; fi",
    );
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(log.contains("tofu v1.9.1"), "{log}");
    let ws = w.dir.join("state/runs/tool-landlock/workspace");
    assert!(
        log.contains(&format!("\n{}\n", ws.join("source").display())),
        "{log}"
    );
    assert!(log.contains(&format!("WS={}", ws.display())), "{log}");
    assert!(
        !log.contains("CACHE=/mnt") && log.contains("cache-writable"),
        "{log}"
    );
    assert!(!log.contains("TOOL-WRITABLE"), "{log}");
}
