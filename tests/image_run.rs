//! Runs on an image, offline: a busybox image built with umoci is written
//! as an oci-archive with skopeo, imported with `liftoff image import` (no
//! registry exists anywhere in this test; `docker save` output is imported
//! too), and runs through the real
//! executor name it (`runner.image`, then `SPACELIFT_DEFAULT_RUNNER_IMAGE`):
//! the steps see the image's files, run as uid 1983 and cannot write the
//! root. Needs root (the sandbox maps the job to an unprivileged host id).

mod support;

use std::sync::Arc;
use std::time::Duration;

use liftoff::config::{Config, Env};
use liftoff::identity::{self, Identity, PoolKey};
use liftoff::link::protocol::{Assignment, RunType};
use liftoff::run::executor::SandboxExecutor;
use liftoff::run::{RunEvent, RunExecutor};
use serde_json::json;
use support::pki::Pool;
use support::registry::{build_image, run};
use support::runs::{FileServer, events, open_tempdir, until_end};

#[test]
fn an_imported_image_is_the_root_of_a_run_without_any_registry() {
    support::sandbox::require_root();
    let d = open_tempdir();
    let layout = build_image(d.path());
    let archive = d.path().join("app.tar");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("oci:{}:v1", layout.display()),
            &format!("oci-archive:{}:offline/app:v1", archive.display()),
        ],
    );
    let pool = Pool::new(
        &d.path().join("pki"),
        2048,
        &[("eu-west-1", "mqtts://127.0.0.1:1")],
    );
    let base: Vec<(String, String)> = vec![
        ("SPACELIFT_TOKEN".into(), pool.token.clone()),
        ("SPACELIFT_POOL_PRIVATE_KEY".into(), pool.key_base64()),
        (
            "LIFTOFF_STATE_DIR".into(),
            d.path().join("state").display().to_string(),
        ),
        (
            "LIFTOFF_PROVIDER_CACHE_DIR".into(),
            d.path().join("providers").display().to_string(),
        ),
        ("LIFTOFF_JOB_MEMORY".into(), "512MiB".into()),
        // Nothing listens there: any registry access (docker.io) would
        // fail the run; the log server on 127.0.0.1 bypasses it.
        ("HTTPS_PROXY".into(), "http://127.0.0.1:1".into()),
        ("NO_PROXY".into(), "127.0.0.1".into()),
    ];
    // `liftoff image import FILE`, which must succeed: its stdout.
    let import = |file: &std::path::Path| {
        let out = std::process::Command::new(support::liftoff_bin())
            .env_clear()
            .envs(base.iter().cloned())
            .args(["image", "import", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let stdout = import(&archive);
    assert!(
        stdout.starts_with("docker.io/offline/app:v1 sha256:"),
        "{stdout}"
    );

    // `docker save` output (skopeo's docker-archive is the same format).
    let saved = d.path().join("saved.tar");
    run(
        "skopeo",
        &[
            "copy",
            "--quiet",
            &format!("oci:{}:v1", layout.display()),
            &format!("docker-archive:{}:saved/app:v2", saved.display()),
        ],
    );
    let stdout = import(&saved);
    assert!(
        stdout.starts_with("docker.io/saved/app:v2 sha256:"),
        "{stdout}"
    );
    let root = stdout.split_whitespace().nth(2).unwrap();
    assert!(
        std::path::Path::new(root).join("opq/new").is_file(),
        "{stdout}"
    );
    assert!(
        !std::path::Path::new(root).join("opq/old1").exists(),
        "{stdout}"
    );

    // `liftoff check` says whether the default image is cached.
    for (image, want) in [
        ("offline/app:v1", "is cached as sha256:"),
        ("offline/other:v1", "is not cached"),
    ] {
        let out = std::process::Command::new(support::liftoff_bin())
            .env_clear()
            .envs(base.iter().cloned())
            .env("SPACELIFT_DEFAULT_RUNNER_IMAGE", image)
            .args(["check", "--offline", "--json"])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(
            report.contains(want) && report.contains("image cache"),
            "{report}"
        );
    }

    let server = FileServer::start();
    let step = "cat /etc/image-marker; echo uid=$(id -u); if touch /bin/x 2>/dev/null; then echo root-writable; else echo root-read-only; fi; ls /opq";
    for (run_id, image, default) in [
        ("img-1", Some("offline/app:v1"), None),
        ("img-2", None, Some("offline/app:v1")),
    ] {
        let mut pairs = base.clone();
        if let Some(dflt) = default {
            pairs.push(("SPACELIFT_DEFAULT_RUNNER_IMAGE".into(), dflt.into()));
        }
        let env: Env = pairs.into_iter().collect();
        let config = Config::load(&env)
            .into_result()
            .unwrap_or_else(|e| panic!("{e:?}"));
        let key = config.private_key.as_ref().unwrap();
        let id = Identity::new(
            config.token.as_ref().unwrap(),
            PoolKey::from_pem(&key.pem.0).unwrap(),
            key.var(),
            identity::now(),
        )
        .unwrap()
        .0;
        let spki = id.cert.spki_der.clone();
        let mut ex = SandboxExecutor::new(config, env, Some(Arc::new(id))).unwrap();
        let logs: Vec<String> = (0..8)
            .map(|i| server.url(&format!("/logs/{run_id}/{i:04}")))
            .collect();
        let mut spec = json!({
            "run_id": run_id, "run_type": "proposed",
            "steps": [{"name": "look", "shell": step}],
            "uploads": {"logs": logs},
            "timeouts": {"run": "2m"}
        });
        if let Some(i) = image {
            spec["runner"] = json!({"image": i});
        }
        let state = identity::seal_run_state(&spki, run_id, spec.to_string().as_bytes()).unwrap();
        let (ev, rx) = events(run_id);
        ex.start(
            Assignment {
                run_id: run_id.into(),
                run_type: RunType::Read,
                state: serde_json::to_value(state).unwrap(),
            },
            ev,
        )
        .unwrap();
        let evs = until_end(&rx, Duration::from_secs(120));
        let mut chunks = server.puts(&format!("/logs/{run_id}/"));
        chunks.sort_by(|a, b| a.0.cmp(&b.0));
        let log: String = chunks
            .iter()
            .map(|(_, b)| String::from_utf8_lossy(b).into_owned())
            .collect();
        assert!(
            matches!(evs.last(), Some(RunEvent::Finished { exit_code: 0 })),
            "{evs:?}\n{log}"
        );
        for want in ["from the test image", "uid=1983", "root-read-only", "new"] {
            assert!(
                log.contains(want),
                "{want:?} missing from the log of {run_id}:\n{log}"
            );
        }
        assert!(
            !log.contains("old1") && !log.contains("root-writable"),
            "{log}"
        );
    }
}
