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
    let d = p.evaluate(&policy::input(&spec("feature"), "1.0")).unwrap();
    assert_eq!(
        d.deny,
        vec!["tracked runs only from main, not feature".to_string()]
    );
    assert!(d.sample);
    let d = p.evaluate(&policy::input(&spec("main"), "1.0")).unwrap();
    assert!(d.deny.is_empty(), "{:?}", d.deny);
}

#[test]
fn secret_values_are_masked_in_the_input() {
    let input = policy::input(&spec("main"), "1.0");
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
    let d = p.evaluate(&policy::input(&spec("x"), "1")).unwrap();
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
    let r = p.evaluate(&policy::input(&spec("main"), "1"));
    assert!(
        r.is_err(),
        "a 64-million-step evaluation must hit the time cap: {r:?}"
    );
}
