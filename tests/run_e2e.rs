//! Runs end to end through the real executor: an encrypted assignment, the
//! initialization policy, a source tar.gz served by a real HTTP server, steps
//! in the real sandbox, masked logs and outputs uploaded, exactly one
//! terminal event; rejections (policy, tampered or foreign envelopes, VCS
//! mappings) and the provider cache across runs. Needs root (CI runs as
//! root): the sandbox maps the job to an unprivileged host id.

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use liftoff::config::{Config, Env};
use liftoff::identity::{self, Identity, PoolKey};
use liftoff::link::protocol::{Assignment, RunType};
use liftoff::run::executor::SandboxExecutor;
use liftoff::run::{RunEvent, RunExecutor};
use serde_json::json;
use support::pki::Pool;
use support::runs::{FileServer, events, open_tempdir, tar_gz, until_end};

const SECRET: &str = "hunter2-very-secret-value";
const LIMIT: Duration = Duration::from_secs(120);

struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    pool: Pool,
    server: FileServer,
}

impl World {
    fn new() -> World {
        support::sandbox::require_root();
        let dir = open_tempdir();
        let pool = Pool::new(
            &dir.path().join("pki"),
            2048,
            &[("eu-west-1", "mqtts://127.0.0.1:1")],
        );
        let server = FileServer::start();
        let path = dir.path().to_path_buf();
        World {
            _dir: dir,
            dir: path,
            pool,
            server,
        }
    }

    fn env(&self, extra: &[(&str, &str)]) -> Env {
        let mut pairs: Vec<(String, String)> = vec![
            ("SPACELIFT_TOKEN".into(), self.pool.token.clone()),
            ("SPACELIFT_POOL_PRIVATE_KEY".into(), self.pool.key_base64()),
            (
                "LIFTOFF_STATE_DIR".into(),
                self.dir.join("state").display().to_string(),
            ),
            (
                "LIFTOFF_PROVIDER_CACHE_DIR".into(),
                self.dir.join("providers").display().to_string(),
            ),
            ("LIFTOFF_JOB_MEMORY".into(), "512MiB".into()),
        ];
        for (k, v) in extra {
            pairs.retain(|(n, _)| n != k);
            pairs.push((k.to_string(), v.to_string()));
        }
        pairs.into_iter().collect()
    }

    fn config(&self, env: &Env) -> Config {
        match Config::load(env).into_result() {
            Ok(c) => c,
            Err(e) => panic!("config: {e:?}"),
        }
    }

    fn identity(&self, config: &Config) -> Identity {
        let key = config.private_key.as_ref().unwrap();
        let k = PoolKey::from_pem(&key.pem.0).unwrap();
        Identity::new(
            config.token.as_ref().unwrap(),
            k,
            key.var(),
            identity::now(),
        )
        .unwrap()
        .0
    }

    fn executor(&self, extra: &[(&str, &str)]) -> (SandboxExecutor, Vec<u8>) {
        let env = self.env(extra);
        let config = self.config(&env);
        let id = self.identity(&config);
        let spki = id.cert.spki_der.clone();
        let ex = SandboxExecutor::new(config, env, Some(Arc::new(id))).unwrap();
        (ex, spki)
    }

    fn source(&self, path: &str) -> String {
        self.server.serve_file(
            path,
            tar_gz(&[
                ("hello.txt", 0o644, b"hello from the source archive\n"),
                (
                    "bin/run.sh",
                    0o755,
                    b"#!/bin/sh\necho script ran in $(pwd)\n",
                ),
            ]),
        );
        self.server.url(path)
    }

    /// The masked log of `run`: every uploaded chunk, in order.
    fn log(&self, run: &str) -> String {
        let mut chunks = self.server.puts(&format!("/logs/{run}/"));
        chunks.sort_by(|a, b| a.0.cmp(&b.0));
        chunks
            .into_iter()
            .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
            .collect()
    }
}

fn spec(run: &str, world: &World, steps: serde_json::Value) -> serde_json::Value {
    let logs: Vec<String> = (0..32)
        .map(|i| world.server.url(&format!("/logs/{run}/{i:04}?X-Sig=abc")))
        .collect();
    json!({
        "run_id": run,
        "run_type": "proposed",
        "stack": {"id": "stack-1", "slug": "stack-1", "name": "Stack"},
        "commit": {"hash": "abc123", "branch": "main", "author": "ann", "message": "m", "created_at": 1},
        "environment": [
            {"name": "PLAIN", "value": "visible-value"},
            {"name": "TOP_SECRET", "value": SECRET, "secret": true}
        ],
        "steps": steps,
        "source": {"url": world.source(&format!("/src/{run}.tar.gz"))},
        "uploads": {
            "logs": logs,
            "outputs": world.server.url(&format!("/outputs/{run}?X-Sig=abc")),
            "artifacts": [{"path": "plan.bin", "url": world.server.url(&format!("/artifacts/{run}/plan.bin"))}]
        },
        "timeouts": {"run": "5m"}
    })
}

fn assign(run: &str, spki: &[u8], spec: &serde_json::Value) -> Assignment {
    let env = identity::seal_run_state(spki, run, spec.to_string().as_bytes()).unwrap();
    Assignment {
        run_id: run.into(),
        run_type: RunType::Read,
        state: serde_json::to_value(env).unwrap(),
    }
}

fn run(ex: &mut SandboxExecutor, a: Assignment) -> Vec<RunEvent> {
    let (ev, rx) = events(&a.run_id);
    ex.start(a, ev).unwrap();
    until_end(&rx, LIMIT)
}

fn terminal(events: &[RunEvent]) -> &RunEvent {
    let ends: Vec<_> = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                RunEvent::Finished { .. } | RunEvent::Failed { .. } | RunEvent::Rejected { .. }
            )
        })
        .collect();
    assert_eq!(ends.len(), 1, "{events:?}");
    ends[0]
}

fn outputs_steps() -> serde_json::Value {
    json!([
        {"name": "read", "shell": "cat hello.txt; ./bin/run.sh; echo \"plain=$PLAIN secret=$TOP_SECRET\"; echo to-stderr >&2; id -u"},
        {"name": "plan", "shell": "echo plan-bytes > plan.bin"},
        {"name": "outputs", "argv": ["/bin/sh", "-c", "printf '{\"url\":{\"sensitive\":false,\"type\":\"string\",\"value\":\"https://x\"},\"pw\":{\"sensitive\":true,\"type\":\"string\",\"value\":\"s3cr3t-output\"}}'"], "outputs": true}
    ])
}

#[test]
fn encrypted_run_end_to_end_masks_secrets_and_drops_sensitive_outputs() {
    let w = World::new();
    let policy = w.dir.join("allow.rego");
    std::fs::write(
        &policy,
        "package spacelift\ndeny contains msg if { input.run.commit.branch == \"forbidden\"; msg := \"no\" }\nsample if { true }\n",
    )
    .unwrap();
    let (mut ex, spki) = w.executor(&[(
        "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY",
        policy.to_str().unwrap(),
    )]);
    let id = "01RUNE2E0000000000000000AA";
    let s = spec(id, &w, outputs_steps());
    let evs = run(&mut ex, assign(id, &spki, &s));
    assert_eq!(
        terminal(&evs),
        &RunEvent::Finished { exit_code: 0 },
        "{evs:?}\n{}",
        w.log(id)
    );
    assert_eq!(evs[0], RunEvent::Started, "{evs:?}");
    assert!(
        evs.iter().any(|e| matches!(e, RunEvent::Log { .. })),
        "{evs:?}"
    );

    let log = w.log(id);
    assert!(log.contains("hello from the source archive"), "{log}");
    assert!(log.contains("script ran in /mnt/workspace/source"), "{log}");
    assert!(log.contains("plain=visible-value"), "{log}");
    assert!(log.contains("to-stderr"), "{log}");
    assert!(log.contains("\n1983\n"), "the job runs as 1983: {log}");
    assert!(!log.contains(SECRET), "a secret reached the log: {log}");
    assert!(!log.contains("s3cr3t-output"), "outputs were logged: {log}");
    assert!(log.contains("sensitive outputs not uploaded"), "{log}");
    // Every uploaded chunk, taken alone, is masked too.
    for (_, body) in w.server.puts("/logs/") {
        assert!(!String::from_utf8_lossy(&body).contains(SECRET));
    }

    let outs = w.server.puts(&format!("/outputs/{id}"));
    assert_eq!(outs.len(), 1);
    let doc: serde_json::Value = serde_json::from_slice(&outs[0].1).unwrap();
    assert_eq!(doc["url"]["value"], "https://x");
    assert!(doc.get("pw").is_none(), "{doc}");

    let arts = w.server.puts(&format!("/artifacts/{id}/plan.bin"));
    assert_eq!(arts.len(), 1);
    assert_eq!(arts[0].1, b"plan-bytes\n");
    // The run directory is gone.
    assert!(!w.dir.join("state/runs").join(id).exists());
}

#[test]
fn sensitive_outputs_are_kept_when_enabled() {
    let w = World::new();
    let (mut ex, spki) = w.executor(&[("SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED", "true")]);
    let id = "01RUNSENS00000000000000000";
    let evs = run(&mut ex, assign(id, &spki, &spec(id, &w, outputs_steps())));
    assert_eq!(
        terminal(&evs),
        &RunEvent::Finished { exit_code: 0 },
        "{}",
        w.log(id)
    );
    let outs = w.server.puts(&format!("/outputs/{id}"));
    let doc: serde_json::Value = serde_json::from_slice(&outs[0].1).unwrap();
    assert_eq!(doc["pw"]["value"], "s3cr3t-output");
}

#[test]
fn the_first_failing_step_ends_the_run_with_its_exit_code() {
    let w = World::new();
    let (mut ex, spki) = w.executor(&[]);
    let id = "01RUNFAIL0000000000000000A";
    let steps = json!([
        {"name": "ok", "argv": ["true"]},
        {"name": "bad", "shell": "echo failing; exit 3"},
        {"name": "never", "shell": "echo NEVER-RUNS"}
    ]);
    let evs = run(&mut ex, assign(id, &spki, &spec(id, &w, steps)));
    assert_eq!(terminal(&evs), &RunEvent::Finished { exit_code: 3 });
    // The summary the `finished` event carries: the steps that ran.
    let summary = evs.iter().find_map(|e| match e {
        RunEvent::Summary { steps, .. } => Some(steps.clone()),
        _ => None,
    });
    let steps = summary.expect("a summary before finished");
    let got: Vec<(&str, i32)> = steps
        .iter()
        .map(|s| (s.name.as_str(), s.exit_code))
        .collect();
    assert_eq!(got, vec![("ok", 0), ("bad", 3)]);
    let log = w.log(id);
    assert!(log.contains("failing"), "{log}");
    assert!(!log.contains("NEVER-RUNS"), "{log}");
}

/// Run `id` (one step that echoes `STEP-RAN`) under the initialization
/// policy `rego`, written to `file` in the world's directory.
fn run_under_policy(w: &World, file: &str, rego: &str, id: &str) -> Vec<RunEvent> {
    let policy = w.dir.join(file);
    std::fs::write(&policy, rego).unwrap();
    let (mut ex, spki) = w.executor(&[(
        "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY",
        policy.to_str().unwrap(),
    )]);
    run(
        &mut ex,
        assign(
            id,
            &spki,
            &spec(id, w, json!([{"name": "x", "shell": "echo STEP-RAN"}])),
        ),
    )
}

#[test]
fn policy_denial_goes_to_the_log_and_the_event() {
    let w = World::new();
    let id = "01RUNDENY0000000000000000A";
    let evs = run_under_policy(
        &w,
        "deny.rego",
        "package spacelift\ndeny contains sprintf(\"branch %s may not run here\", [input.run.commit.branch]) if { true }\n",
        id,
    );
    match terminal(&evs) {
        RunEvent::Rejected { reason } => {
            assert!(reason.contains("rejected"), "{reason}");
            assert!(reason.contains("branch main may not run here"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    assert!(!evs.contains(&RunEvent::Started));
    let log = w.log(id);
    assert!(log.contains("branch main may not run here"), "{log}");
    assert!(!log.contains("STEP-RAN"), "{log}");
}

/// A policy that loads but cannot be evaluated for this run (two values for
/// one complete rule, once the input is known) rejects the run: nothing of it runs, and the event is `rejected`,
/// decided by the error's kind, not by its text.
#[test]
fn a_policy_that_fails_to_evaluate_rejects_the_run() {
    let w = World::new();
    let id = "01RUNPOLICYERR00000000000A";
    let evs = run_under_policy(
        &w,
        "conflict.rego",
        "package spacelift\nx := 1 if { input.run.id != \"01SAMPLE\" }\nx := 2 if { input.run.id != \"01SAMPLE\" }\ndeny contains \"never\" if { x == 3 }\n",
        id,
    );
    match terminal(&evs) {
        RunEvent::Rejected { reason } => {
            assert!(reason.contains("failed to evaluate"), "{reason}");
        }
        e => panic!("a policy evaluation error must reject the run: {e:?}"),
    }
    assert!(!evs.contains(&RunEvent::Started));
    assert!(!w.log(id).contains("STEP-RAN"));
}

#[test]
fn tampered_and_foreign_envelopes_fail_and_the_next_run_works() {
    let w = World::new();
    let (mut ex, spki) = w.executor(&[]);
    let steps = json!([{"name": "x", "shell": "echo fine"}]);

    // Tampered ciphertext.
    let id = "01RUNTAMP0000000000000000A";
    let mut a = assign(id, &spki, &spec(id, &w, steps.clone()));
    let ct = a.state["ciphertext"].as_str().unwrap().to_string();
    let mut bytes: Vec<char> = ct.chars().collect();
    bytes[10] = if bytes[10] == 'A' { 'B' } else { 'A' };
    a.state["ciphertext"] = bytes.into_iter().collect::<String>().into();
    match terminal(&run(&mut ex, a)) {
        RunEvent::Failed { reason } => assert!(reason.contains("tampered"), "{reason}"),
        e => panic!("{e:?}"),
    }

    // Sealed for another run id (AAD).
    let id2 = "01RUNOTHER000000000000000A";
    let mut a = assign("01SOMEONEELSE", &spki, &spec(id2, &w, steps.clone()));
    a.run_id = id2.into();
    match terminal(&run(&mut ex, a)) {
        RunEvent::Failed { reason } => assert!(reason.contains("another run"), "{reason}"),
        e => panic!("{e:?}"),
    }

    // Sealed for another pool's key.
    let other = Pool::new(&w.dir.join("other"), 2048, &[("r", "mqtts://127.0.0.1:1")]);
    let cert = std::fs::read(&other.cert).unwrap();
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(&cert).unwrap();
    let other_spki = identity::certificate_info(der.as_ref()).unwrap().spki_der;
    let id3 = "01RUNFOREIGN00000000000000";
    match terminal(&run(
        &mut ex,
        assign(id3, &other_spki, &spec(id3, &w, steps.clone())),
    )) {
        RunEvent::Failed { reason } => assert!(reason.contains("another pool"), "{reason}"),
        e => panic!("{e:?}"),
    }

    // Not an envelope at all.
    let a = Assignment {
        run_id: "01RUNJUNK".into(),
        run_type: RunType::Read,
        state: json!({"command": "echo hi"}),
    };
    assert!(matches!(
        terminal(&run(&mut ex, a)),
        RunEvent::Failed { .. }
    ));

    // The launcher carries on.
    let id4 = "01RUNAFTER000000000000000A";
    let evs = run(&mut ex, assign(id4, &spki, &spec(id4, &w, steps)));
    assert_eq!(terminal(&evs), &RunEvent::Finished { exit_code: 0 });
    assert!(w.log(id4).contains("fine"));
}

#[test]
fn private_vcs_sources_are_rewritten_through_the_mappings() {
    let w = World::new();
    let base = w.server.url("/vcs-agent");
    let (mut ex, spki) = w.executor(&[
        ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "gitlab-internal"),
        (
            "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0",
            base.as_str(),
        ),
    ]);
    w.source("/vcs-agent/acme/infra.tar.gz");
    let id = "01RUNVCS00000000000000000A";
    let mut s = spec(id, &w, json!([{"name": "x", "shell": "cat hello.txt"}]));
    s["source"]["url"] = "private://gitlab-internal/acme/infra.tar.gz".into();
    let evs = run(&mut ex, assign(id, &spki, &s));
    assert_eq!(
        terminal(&evs),
        &RunEvent::Finished { exit_code: 0 },
        "{}",
        w.log(id)
    );
    assert!(
        w.server
            .gets()
            .contains(&"/vcs-agent/acme/infra.tar.gz".to_string())
    );
    assert!(w.log(id).contains("hello from the source archive"));

    let id2 = "01RUNVCSMISSING00000000000";
    let mut s = spec(id2, &w, json!([{"name": "x", "shell": "echo STEP-RAN"}]));
    s["source"]["url"] = "private://github-enterprise/acme/infra.tar.gz".into();
    match terminal(&run(&mut ex, assign(id2, &spki, &s))) {
        RunEvent::Failed { reason } => {
            assert!(
                reason.contains("SPACELIFT_PRIVATEVCS_MAPPING_NAME_"),
                "{reason}"
            );
            assert!(reason.contains("github-enterprise"), "{reason}");
        }
        e => panic!("{e:?}"),
    }
    assert!(w.log(id2).contains("github-enterprise"));
    assert!(!w.log(id2).contains("STEP-RAN"));
}

#[test]
fn a_second_run_finds_the_providers_the_first_cached() {
    let w = World::new();
    let (mut ex, spki) = w.executor(&[]);
    let pkg = "registry.opentofu.org/hashicorp/null/3.2.0/linux_amd64";
    let id = "01RUNCACHE100000000000000A";
    let steps = json!([{"name": "init", "shell": format!(
        "test ! -e \"$TF_PLUGIN_CACHE_DIR/{pkg}\" && mkdir -p \"$TF_PLUGIN_CACHE_DIR/{pkg}\" && echo provider > \"$TF_PLUGIN_CACHE_DIR/{pkg}/terraform-provider-null\" && echo downloaded"
    )}]);
    let evs = run(&mut ex, assign(id, &spki, &spec(id, &w, steps)));
    assert_eq!(
        terminal(&evs),
        &RunEvent::Finished { exit_code: 0 },
        "{}",
        w.log(id)
    );
    assert!(
        w.dir
            .join("providers")
            .join(pkg)
            .join("terraform-provider-null")
            .is_file()
    );

    let id2 = "01RUNCACHE200000000000000A";
    // As `tofu init` does, the second run links the cached package.
    let cache = &liftoff::metrics::launcher::PROVIDER_CACHE;
    let hits0 = cache.hits.get();
    let steps = json!([{"name": "init", "shell": format!(
        "cat \"$TF_PLUGIN_CACHE_DIR/{pkg}/terraform-provider-null\" && echo cache-hit && d=.terraform/providers/registry.opentofu.org/hashicorp/null/3.2.0 && mkdir -p $d && ln -s \"$TF_PLUGIN_CACHE_DIR/{pkg}\" $d/linux_amd64"
    )}]);
    let evs = run(&mut ex, assign(id2, &spki, &spec(id2, &w, steps)));
    assert_eq!(
        terminal(&evs),
        &RunEvent::Finished { exit_code: 0 },
        "{}",
        w.log(id2)
    );
    let log = w.log(id2);
    assert!(log.contains("provider\ncache-hit"), "{log}");
    // The metrics (this process's): a hit, the first run's miss, the sandbox starts
    // and the log bytes uploaded (other tests here may add to them).
    assert!(cache.hits.get() > hits0, "no provider cache hit counted");
    assert!(
        cache.misses.get() >= 1,
        "the first run's download was not a miss"
    );
    let m = &liftoff::metrics::LAUNCHER;
    assert!(m.sandbox_start.count() >= 2);
    assert!(m.log_uploaded_bytes.get() > 0);
    let text = m.render();
    assert!(
        text.contains("liftoff_cache_size_bytes{cache=\"provider\"} "),
        "{text}"
    );
    support::scrape::promtool_check(&text);
}

#[test]
fn cancel_ends_the_run_with_a_failure() {
    let w = World::new();
    let (mut ex, spki) = w.executor(&[("LIFTOFF_KILL_GRACE", "2s")]);
    let id = "01RUNCANCEL00000000000000A";
    let a = assign(
        id,
        &spki,
        &spec(
            id,
            &w,
            json!([{"name": "sleep", "shell": "echo sleeping; sleep 600"}, {"name": "never", "shell": "echo NEVER"}]),
        ),
    );
    let (ev, rx) = events(id);
    ex.start(a, ev).unwrap();
    // Wait for the step to be running (its first line is in the uploaded
    // log), then cancel.
    let first = smol::block_on(rx.recv()).unwrap().1;
    assert_eq!(first, RunEvent::Started);
    let deadline = Instant::now() + LIMIT;
    while !w.log(id).contains("sleeping") {
        assert!(
            Instant::now() < deadline,
            "the step never printed `sleeping`: {}",
            w.log(id)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    ex.cancel(id);
    ex.cancel(id);
    let evs = until_end(&rx, LIMIT);
    match terminal(&evs) {
        RunEvent::Failed { reason } => assert!(reason.contains("cancel"), "{reason}"),
        e => panic!("{e:?}"),
    }
    assert!(!w.log(id).contains("NEVER"));
}

fn spki_of(cert: &Path) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    let pem = std::fs::read(cert).unwrap();
    let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap();
    identity::certificate_info(der.as_ref()).unwrap().spki_der
}

/// Through `liftoff run`, the two real brokers and the plane double: an
/// encrypted assign runs in the sandbox and ends `finished`; log chunks
/// arrive as `log` events; a tampered envelope fails with a reason and the
/// launcher takes the next run.
#[test]
fn through_the_brokers_assign_runs_and_reports() {
    use support::brokers::Brokers;
    use support::plane::{self, Plane, command, is_run, is_type};
    support::sandbox::require_root();
    let dir = open_tempdir();
    let b = Brokers::start(&dir.path().join("pki"));
    let plane = Plane::start(&b);
    let server = FileServer::start();
    let w = World {
        _dir: open_tempdir(),
        dir: dir.path().to_path_buf(),
        pool: Pool::new(
            &dir.path().join("unused"),
            2048,
            &[("r", "mqtts://127.0.0.1:1")],
        ),
        server,
    };
    let providers = dir.path().join("providers");
    let policy = dir.path().join("sample.rego");
    std::fs::write(
        &policy,
        "package spacelift\ndeny contains \"no forbidden branch\" if { input.run.commit.branch == \"forbidden\" }\nsample if { true }\n",
    )
    .unwrap();
    let l = plane::launch(
        &b,
        &dir.path().join("state"),
        &[
            ("LIFTOFF_PROVIDER_CACHE_DIR", providers.to_str().unwrap()),
            ("LIFTOFF_JOB_MEMORY", "512MiB"),
            (
                "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY",
                policy.to_str().unwrap(),
            ),
        ],
    );
    let wid = l.worker_id();
    plane
        .wait_for(LIMIT, |v| is_type(v, "hello"))
        .unwrap_or_else(|| panic!("no hello: {}", l.stderr()));
    let spki = spki_of(&b.pool.cert);
    let send_sealed = |id: &str, sealed: &identity::Envelope| {
        plane.send(
            &wid,
            &command(
                "assign",
                json!({"run_id": id, "run_type": "read", "state": sealed}),
            ),
        );
    };
    // Seals a spec of `steps` for `id`, assigns it, waits for its end.
    let run_to_end = |id: &str, steps: serde_json::Value| {
        let s = spec(id, &w, steps);
        send_sealed(
            id,
            &identity::seal_run_state(&spki, id, s.to_string().as_bytes()).unwrap(),
        );
        plane
            .wait_for(LIMIT, |v| {
                is_run(v, id, "finished") || is_run(v, id, "failed")
            })
            .unwrap_or_else(|| panic!("no end of run: {}", l.stderr()))
    };

    let id = "01RUNBROKER00000000000000A";
    let fin = run_to_end(
        id,
        json!([{"name": "hi", "shell": "cat hello.txt; echo $TOP_SECRET; exit 4"}]),
    );
    assert_eq!(fin["phase"], "finished", "{fin}\n{}", l.stderr());
    assert_eq!(fin["exit_code"], 4, "{fin}");
    assert_eq!(fin["steps"][0]["name"], "hi", "{fin}");
    assert_eq!(fin["steps"][0]["exit_code"], 4, "{fin}");
    assert!(fin["duration_ms"].as_u64().is_some(), "{fin}");
    let evs = plane.events();
    assert!(evs.iter().any(|v| is_run(v, id, "started")));
    assert!(
        evs.iter().any(|v| is_type(v, "log") && v["run_id"] == id),
        "{evs:?}"
    );
    let log = w.log(id);
    assert!(log.contains("hello from the source archive"), "{log}");
    assert!(!log.contains(SECRET), "{log}");
    // `sample` is true: input and decision in the launcher's log, secrets
    // masked there too.
    let stderr = l.stderr();
    assert!(
        stderr.contains("run initialization policy sample"),
        "{stderr}"
    );
    assert!(stderr.contains("<masked>"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");

    // Tampered: failed with a reason; the launcher goes on.
    let id2 = "01RUNBROKERTAMPERED000000A";
    let mut sealed = identity::seal_run_state(&spki, id2, b"{}").unwrap();
    sealed.nonce = "AAAAAAAAAAAAAAAA".into();
    send_sealed(id2, &sealed);
    let failed = plane
        .wait_for(LIMIT, |v| is_run(v, id2, "failed"))
        .unwrap_or_else(|| panic!("no failure: {}", l.stderr()));
    assert!(
        failed["reason"].as_str().unwrap().contains("tampered"),
        "{failed}"
    );

    let id3 = "01RUNBROKERNEXT0000000000A";
    let fin = run_to_end(id3, json!([{"name": "ok", "shell": "echo next-run-ok"}]));
    assert_eq!(fin["exit_code"], 0, "{fin}\n{}", l.stderr());
    assert!(w.log(id3).contains("next-run-ok"));
}

/// A policy that does not parse stops `liftoff run` with exit 78 and the
/// parser's message.
#[test]
fn an_invalid_policy_fails_start_up_with_78() {
    let w = World::new();
    let policy = w.dir.join("bad.rego");
    std::fs::write(&policy, "package spacelift\ndeny[ {").unwrap();
    let out = std::process::Command::new(support::liftoff_bin())
        .arg("run")
        .env_clear()
        .env("SPACELIFT_TOKEN", &w.pool.token)
        .env("SPACELIFT_POOL_PRIVATE_KEY", w.pool.key_base64())
        .env("LIFTOFF_STATE_DIR", w.dir.join("state"))
        .env("LIFTOFF_PROVIDER_CACHE_DIR", w.dir.join("providers"))
        .env("SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY", &policy)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("does not parse"), "{err}");
}

/// The example specs parse, and run through the executor as
/// `liftoff exec --spec` would (plain, no envelope): hello finishes, the
/// secrets stay masked, the policy example is denied by the example policy,
/// and the provider-cache demo hits the cache on its second run.
#[test]
fn example_specs_run() {
    use liftoff::logs::sink::FileSink;
    use liftoff::run::spec::RunSpec;
    let w = World::new();
    let load = |name: &str| {
        let text = std::fs::read(format!("examples/runs/{name}.json")).unwrap();
        RunSpec::from_json(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let env = w.env(&[(
        "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY",
        "examples/policies/initialization.rego",
    )]);
    let ex = SandboxExecutor::new(w.config(&env), env, None).unwrap();
    let plain = |name: &str| {
        let spec = load(name);
        let (ev, rx) = events(&spec.run_id);
        let out = w
            .dir
            .join(format!("{name}-{}.log", liftoff::link::protocol::ulid()));
        let sink = FileSink::create(&out).unwrap();
        ex.run_plain(spec, Some(Box::new(sink)), ev);
        let evs = until_end(&rx, LIMIT);
        (
            terminal(&evs).clone(),
            std::fs::read_to_string(&out).unwrap_or_default(),
        )
    };

    let (end, log) = plain("hello");
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(log.contains("hello from a sandboxed run"), "{log}");

    let (end, log) = plain("secrets-masked");
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(log.contains("host=db.internal"), "{log}");
    assert!(!log.contains("correct-horse-battery-staple"), "{log}");
    assert!(
        !log.contains("Y29ycmVjdC1ob3JzZS1iYXR0ZXJ5LXN0YXBsZQ"),
        "{log}"
    );

    let (end, log) = plain("policy-denial");
    match end {
        RunEvent::Rejected { reason } => {
            assert!(reason.contains("tracked runs only from main"), "{reason}")
        }
        e => panic!("{e:?} {log}"),
    }
    assert!(
        log.contains("tracked runs only from main, not from feature/try-this"),
        "{log}"
    );

    let (end, log) = plain("provider-cache");
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(log.contains("downloaded into"), "{log}");
    let (end, log) = plain("provider-cache");
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(log.contains("cache hit"), "{log}");
}

/// Whitelisted launcher variables (`ro_`/`wo_`) and extra mounts reach the
/// job by run type; nothing else of the launcher's environment does.
#[test]
fn whitelist_and_extra_mounts_by_run_type() {
    let w = World::new();
    let mk = |name: &str, text: &str| {
        let d = w.dir.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("marker"), text).unwrap();
        d.display().to_string()
    };
    let (all, ro, wo) = (
        mk("m-all", "ALL-MOUNT"),
        mk("m-ro", "RO-MOUNT"),
        mk("m-wo", "WO-MOUNT"),
    );
    let all_m = format!("{all}:/mnt/all:ro");
    let ro_m = format!("{ro}:/mnt/ro:ro");
    let wo_m = format!("{wo}:/mnt/wo:ro");
    let (mut ex, spki) = w.executor(&[
        (
            "SPACELIFT_WHITELIST_ENVS",
            "BOTH_VAR,ro_PLAN_VAR,wo_APPLY_VAR",
        ),
        ("BOTH_VAR", "both-value"),
        ("PLAN_VAR", "plan-value"),
        ("APPLY_VAR", "apply-value"),
        ("NOT_LISTED", "leaked-value"),
        ("SPACELIFT_WORKER_EXTRA_MOUNTS", all_m.as_str()),
        ("SPACELIFT_WORKER_RO_EXTRA_MOUNTS", ro_m.as_str()),
        ("SPACELIFT_WORKER_WO_EXTRA_MOUNTS", wo_m.as_str()),
    ]);
    let steps = json!([{"name": "show", "shell": "echo \"both=$BOTH_VAR plan=$PLAN_VAR apply=$APPLY_VAR other=$NOT_LISTED\"; cat /mnt/all/marker /mnt/ro/marker /mnt/wo/marker 2>/dev/null; true"}]);

    let id = "01RUNWLREAD00000000000000A";
    let evs = run(&mut ex, assign(id, &spki, &spec(id, &w, steps.clone())));
    assert_eq!(
        terminal(&evs),
        &RunEvent::Finished { exit_code: 0 },
        "{}",
        w.log(id)
    );
    let log = w.log(id);
    assert!(
        log.contains("both=both-value plan=plan-value apply= other=\n"),
        "{log}"
    );
    assert!(
        log.contains("ALL-MOUNT") && log.contains("RO-MOUNT") && !log.contains("WO-MOUNT"),
        "{log}"
    );

    let id = "01RUNWLWRITE0000000000000A";
    let mut s = spec(id, &w, steps);
    s["run_type"] = "tracked".into();
    let mut a = assign(id, &spki, &s);
    a.run_type = RunType::Write;
    let evs = run(&mut ex, a);
    assert_eq!(
        terminal(&evs),
        &RunEvent::Finished { exit_code: 0 },
        "{}",
        w.log(id)
    );
    let log = w.log(id);
    assert!(
        log.contains("both=both-value plan= apply=apply-value other=\n"),
        "{log}"
    );
    assert!(
        log.contains("ALL-MOUNT") && !log.contains("RO-MOUNT") && log.contains("WO-MOUNT"),
        "{log}"
    );
}

/// The stricter timeout wins: the spec's 2s run timeout kills a long step
/// and fails the run with the reason.
#[test]
fn the_run_timeout_kills_and_fails_the_run() {
    let w = World::new();
    let (mut ex, spki) = w.executor(&[("LIFTOFF_KILL_GRACE", "1s")]);
    let id = "01RUNTIMEOUT0000000000000A";
    let mut s = spec(
        id,
        &w,
        json!([{"name": "slow", "shell": "echo start; sleep 60"}]),
    );
    s["timeouts"]["run"] = "2s".into();
    match terminal(&run(&mut ex, assign(id, &spki, &s))) {
        RunEvent::Failed { reason } => assert!(reason.contains("run exceeded 2s"), "{reason}"),
        e => panic!("{e:?}"),
    }
    assert!(
        w.log(id).contains("run exceeded 2s: killed"),
        "{}",
        w.log(id)
    );
}
