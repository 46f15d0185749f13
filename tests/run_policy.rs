//! The worker-side run initialization policy: deny messages, sample, parse
//! errors at load, masked secrets in the input, the evaluation time cap.

use liftoff::run::policy::{self, Policy};
use liftoff::run::spec::RunSpec;

fn spec(branch: &str) -> RunSpec {
    RunSpec::from_json(
        serde_json::json!({
            "run_id": "01JRUN",
            "run_type": "tracked",
            "stack": {"id": "prod-net", "slug": "prod-net", "name": "Production network"},
            "commit": {"hash": "abc123", "branch": branch, "author": "alice", "message": "wip", "created_at": 1700000000},
            "environment": [{"name": "AWS_REGION", "value": "eu-west-1"}, {"name": "DB_PASSWORD", "value": "hunter22", "secret": true}],
            "steps": [{"name": "apply", "argv": ["tofu", "apply"]}]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

const POLICY: &str = r#"
package spacelift

deny contains msg if {
    input.run.type == "TRACKED"
    input.run.commit.branch != "main"
    msg := sprintf("tracked runs only from main, not %s", [input.run.commit.branch])
}

deny contains "no secrets in plain sight" if {
    input.static_run_environment.environment_variables.DB_PASSWORD == "hunter22"
}

sample if { input.static_run_environment.stack_slug == "prod-net" }
"#;

#[test]
fn deny_and_sample() {
    let p = Policy::from_source("policy.rego", POLICY).unwrap();
    let d = p
        .evaluate(&policy::input(&spec("feature"), "1.0", None))
        .unwrap();
    assert_eq!(
        d.deny,
        vec!["tracked runs only from main, not feature".to_string()]
    );
    assert!(d.sample);
    let d = p
        .evaluate(&policy::input(&spec("main"), "1.0", None))
        .unwrap();
    assert!(d.deny.is_empty(), "{:?}", d.deny);
}

#[test]
fn secret_values_are_masked_in_the_input() {
    let input = policy::input(&spec("main"), "1.0", None);
    let text = input.to_string();
    assert!(!text.contains("hunter22"));
    assert_eq!(
        input["static_run_environment"]["environment_variables"]["DB_PASSWORD"],
        policy::MASKED
    );
    assert_eq!(
        input["static_run_environment"]["environment_variables"]["AWS_REGION"],
        "eu-west-1"
    );
    assert_eq!(input["run"]["commit"]["author"], "alice");
    assert_eq!(input["worker_version"], "1.0");
}

#[test]
fn a_policy_without_rules_allows() {
    let p = Policy::from_source("p.rego", "package spacelift\n").unwrap();
    let d = p.evaluate(&policy::input(&spec("x"), "1", None)).unwrap();
    assert!(d.deny.is_empty() && !d.sample);
}

#[test]
fn bad_policies_fail_to_load_with_the_parser_message() {
    use liftoff::run::policy::PolicyError;
    let err =
        Policy::from_source("p.rego", "package spacelift\ndeny contains msg if {\n").unwrap_err();
    assert!(matches!(err, PolicyError::Parse(_)), "{err:?}");
    assert!(err.to_string().contains("does not parse"), "{err}");
    let err = Policy::from_source("p.rego", "package other\n").unwrap_err();
    assert_eq!(err, PolicyError::Package("other".into()));
    assert!(err.to_string().contains("package spacelift"), "{err}");
    let err = Policy::from_source("p.rego", "this is not rego").unwrap_err();
    assert!(err.to_string().contains("does not parse"), "{err}");
    let err = Policy::load(std::path::Path::new("/no/such/policy.rego")).unwrap_err();
    assert!(matches!(err, PolicyError::Read(_)), "{err:?}");
    assert!(err.to_string().contains("cannot be read"), "{err}");
}

#[test]
fn runaway_evaluation_is_cut_off() {
    // A deliberately expensive rule: 3 nested comprehensions over 0..400.
    let rego = r#"
package spacelift
deny contains "slow" if {
    input.run.id == "01JRUN"
    n := count([x | some a in numbers.range(0, 400); some b in numbers.range(0, 400); some c in numbers.range(0, 400); x := a + b + c])
    n > 0
}
"#;
    let p = Policy::from_source("slow.rego", rego).unwrap();
    let r = p.evaluate(&policy::input(&spec("main"), "1", None));
    assert!(
        r.is_err(),
        "a 64-million-step evaluation must hit the time cap: {r:?}"
    );
}

fn spec_with(runner: serde_json::Value) -> RunSpec {
    RunSpec::from_json(
        serde_json::json!({
            "run_id": "01JIMG",
            "run_type": "proposed",
            "stack": {"id": "s", "slug": "s", "name": "s"},
            "commit": {"hash": "abc", "branch": "main"},
            "runner": runner,
            "steps": [{"name": "plan", "argv": ["tofu", "plan"]}]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

/// A real policy that allows only images from one registry: `docker_image`
/// carries the spec's `runner.image`, else the default image, and is null for
/// a `runner.root` directory or the host's /usr.
#[test]
fn docker_image_carries_the_reference_the_run_uses() {
    let rego = r#"
package spacelift
deny contains msg if {
    img := input.static_run_environment.docker_image
    img != null
    not startswith(img, "registry.example.com/")
    msg := sprintf("image %s is not from registry.example.com", [img])
}
deny contains "runs must use an image" if {
    input.static_run_environment.docker_image == null
}
"#;
    let p = Policy::from_source("images.rego", rego).unwrap();
    let default = Some("registry.example.com/runner:1");

    let own = spec_with(serde_json::json!({"image": "evil.example/miner:latest"}));
    let input = policy::input(&own, "1", default);
    assert_eq!(
        input["static_run_environment"]["docker_image"],
        "evil.example/miner:latest"
    );
    let d = p.evaluate(&input).unwrap();
    assert_eq!(
        d.deny,
        vec!["image evil.example/miner:latest is not from registry.example.com".to_string()]
    );

    // No runner.image: the default image is the one used.
    let plain = spec_with(serde_json::json!({}));
    let input = policy::input(&plain, "1", default);
    assert_eq!(
        input["static_run_environment"]["docker_image"],
        "registry.example.com/runner:1"
    );
    assert!(p.evaluate(&input).unwrap().deny.is_empty());

    // Neither: the host's /usr, docker_image is null.
    let input = policy::input(&plain, "1", None);
    assert!(input["static_run_environment"]["docker_image"].is_null());
    assert_eq!(
        p.evaluate(&input).unwrap().deny,
        vec!["runs must use an image".to_string()]
    );
    // An empty default counts as unset.
    let input = policy::input(&plain, "1", Some(""));
    assert!(input["static_run_environment"]["docker_image"].is_null());

    // A runner.root directory: no image is used, whatever is named.
    // (runner.root must be an unpacked image: a scratch one in a 0700 dir.)
    let dir = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    std::fs::create_dir(dir.path().join("usr")).unwrap();
    let rooted =
        spec_with(serde_json::json!({"root": dir.path(), "image": "registry.example.com/x:1"}));
    let input = policy::input(&rooted, "1", default);
    assert!(input["static_run_environment"]["docker_image"].is_null());
}
