//! A run's environment, mounts and secrets by run type; its outputs filter.

use liftoff::config::{Config, Env};
use liftoff::run::env;
use liftoff::run::outputs;
use liftoff::run::spec::RunSpec;

fn spec(run_type: &str) -> RunSpec {
    RunSpec::from_json(
        serde_json::json!({
            "run_id": "01JRUN",
            "run_type": run_type,
            "stack": {"id": "net"},
            "environment": [{"name": "TF_VAR_x", "value": "1"}, {"name": "DB_PASSWORD", "value": "hunter22", "secret": true}, {"name": "SHARED", "value": "from-spec"}],
            "steps": [{"name": "s", "argv": ["true"]}]
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

/// The run's private provider-cache layer, as the executor would pass it.
const LAYER: &str = "/var/lib/liftoff/runs/01JRUN/provider-cache";

fn build(spec: &RunSpec, config: &Config, launcher: &Env) -> env::Launch {
    env::build(spec, config, launcher, std::path::Path::new(LAYER))
}

/// Where each mount appears in the sandbox, in order.
fn targets(l: &env::Launch) -> Vec<String> {
    l.mounts
        .iter()
        .map(|m| m.sandbox.display().to_string())
        .collect()
}

struct Setup {
    _dirs: Vec<tempfile::TempDir>,
    launcher: Env,
    config: Config,
}

fn setup() -> Setup {
    let all = tempfile::tempdir().unwrap();
    let ro = tempfile::tempdir().unwrap();
    let wo = tempfile::tempdir().unwrap();
    let p = |d: &tempfile::TempDir| d.path().display().to_string();
    let launcher: Env = [
        (
            "SPACELIFT_WHITELIST_ENVS",
            "AWS_REGION,ro_PLAN_ONLY,wo_APPLY_ONLY,SHARED,ABSENT",
        ),
        ("SPACELIFT_MASK_ENVS", "AWS_REGION"),
        ("AWS_REGION", "eu-west-1"),
        ("PLAN_ONLY", "plan-secret"),
        ("APPLY_ONLY", "apply-secret"),
        ("SHARED", "from-launcher"),
        ("NOT_WHITELISTED", "x"),
        ("SPACELIFT_TOKEN", "dG9rZW4tdmFsdWU="),
        (
            "SPACELIFT_WORKER_EXTRA_MOUNTS",
            &format!("{}:/mnt/all", p(&all)),
        ),
        (
            "SPACELIFT_WORKER_RO_EXTRA_MOUNTS",
            &format!("{}:/mnt/ro:ro", p(&ro)),
        ),
        (
            "SPACELIFT_WORKER_WO_EXTRA_MOUNTS",
            &format!("{}:/mnt/wo", p(&wo)),
        ),
        ("LIFTOFF_PROVIDER_CACHE_DIR", "/var/cache/liftoff/providers"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let loaded = Config::load(&launcher);
    // The token is not a real pool token here: only its masking matters.
    assert!(
        loaded.errors.iter().all(|e| e.var == "SPACELIFT_TOKEN"),
        "{:?}",
        loaded.errors
    );
    Setup {
        _dirs: vec![all, ro, wo],
        launcher,
        config: loaded.config,
    }
}

#[test]
fn whitelist_and_mounts_for_read_only_runs() {
    let s = setup();
    let l = build(&spec("proposed"), &s.config, &s.launcher);
    assert_eq!(
        l.env.get("AWS_REGION").map(String::as_str),
        Some("eu-west-1")
    );
    assert_eq!(
        l.env.get("PLAN_ONLY").map(String::as_str),
        Some("plan-secret")
    );
    assert!(!l.env.contains_key("APPLY_ONLY"));
    assert!(!l.env.contains_key("NOT_WHITELISTED"));
    assert!(!l.env.contains_key("SPACELIFT_TOKEN"));
    assert_eq!(
        l.env.get("SHARED").map(String::as_str),
        Some("from-spec"),
        "the run's own value wins"
    );
    assert_eq!(
        l.env.get("TF_PLUGIN_CACHE_DIR").map(String::as_str),
        Some("/var/cache/liftoff/providers")
    );
    assert_eq!(
        l.env.get("SPACELIFT_RUN_ID").map(String::as_str),
        Some("01JRUN")
    );
    assert_eq!(
        l.env.get("HOME").map(String::as_str),
        Some("/home/spacelift")
    );
    assert_eq!(l.missing_whitelist, vec!["ABSENT"]);
    assert_eq!(
        targets(&l),
        vec!["/mnt/all", "/mnt/ro", "/var/cache/liftoff/providers"]
    );
    assert!(l.mounts[1].read_only);
    assert_eq!(
        l.mounts[2].host,
        std::path::Path::new(LAYER),
        "the run's private layer"
    );
    assert!(!l.mounts[2].read_only);
}

#[test]
fn whitelist_and_mounts_for_write_runs() {
    let s = setup();
    let l = build(&spec("tracked"), &s.config, &s.launcher);
    assert_eq!(
        l.env.get("APPLY_ONLY").map(String::as_str),
        Some("apply-secret")
    );
    assert!(!l.env.contains_key("PLAN_ONLY"));
    assert_eq!(
        targets(&l),
        vec!["/mnt/all", "/mnt/wo", "/var/cache/liftoff/providers"]
    );
}

#[test]
fn secrets_for_the_redactor() {
    let s = setup();
    let l = build(&spec("tracked"), &s.config, &s.launcher);
    let values: Vec<&str> = l.secrets.iter().map(|(_, v)| v.as_str()).collect();
    assert!(values.contains(&"hunter22"), "secret run variable");
    assert!(values.contains(&"eu-west-1"), "SPACELIFT_MASK_ENVS value");
    assert!(
        !values.contains(&"dG9rZW4tdmFsdWU="),
        "the token is added by logs::mask_pool_secrets, not here"
    );
}

/// liftoff's own credentials never reach a job, even whitelisted (for every
/// scope); the configuration warns about them.
#[test]
fn launcher_secrets_are_never_whitelisted() {
    let launcher: Env = [
        (
            "SPACELIFT_WHITELIST_ENVS",
            "SPACELIFT_POOL_PRIVATE_KEY,ro_SPACELIFT_TOKEN,wo_SPACELIFT_TOKEN,LIFTOFF_POOL_PRIVATE_KEY_FILE,AWS_REGION",
        ),
        ("SPACELIFT_POOL_PRIVATE_KEY", "cG9vbC1rZXk="),
        ("SPACELIFT_TOKEN", "dG9rZW4tdmFsdWU="),
        ("LIFTOFF_POOL_PRIVATE_KEY_FILE", "/etc/liftoff/pool.key"),
        ("AWS_REGION", "eu-west-1"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let loaded = Config::load(&launcher);
    assert!(
        loaded
            .warnings
            .iter()
            .filter(|w| w.var == "SPACELIFT_WHITELIST_ENVS")
            .count()
            >= 3,
        "{:?}",
        loaded.warnings
    );
    for run_type in ["proposed", "tracked"] {
        let l = build(&spec(run_type), &loaded.config, &launcher);
        for secret in [
            "SPACELIFT_POOL_PRIVATE_KEY",
            "SPACELIFT_TOKEN",
            "LIFTOFF_POOL_PRIVATE_KEY_FILE",
        ] {
            assert!(
                !l.env.contains_key(secret),
                "{secret} reached a {run_type} run"
            );
        }
        assert!(
            !l.env
                .values()
                .any(|v| v.contains("cG9vbC1rZXk") || v.contains("dG9rZW4")),
            "a secret value reached the job"
        );
        assert_eq!(
            l.env.get("AWS_REGION").map(String::as_str),
            Some("eu-west-1")
        );
    }
}

#[test]
fn a_run_may_set_its_own_plugin_cache() {
    let s = setup();
    let mut sp = spec("proposed");
    sp.environment.push(liftoff::run::spec::Variable {
        name: "TF_PLUGIN_CACHE_DIR".into(),
        value: "/mnt/workspace/cache".into(),
        secret: false,
    });
    let l = build(&sp, &s.config, &s.launcher);
    assert_eq!(
        l.env.get("TF_PLUGIN_CACHE_DIR").map(String::as_str),
        Some("/mnt/workspace/cache")
    );
}

#[test]
fn outputs_drop_sensitive_values_unless_enabled() {
    let json = br#"{"vpc_id": {"sensitive": false, "type": "string", "value": "vpc-1"},
                    "db_password": {"sensitive": true, "type": "string", "value": "hunter22"}}"#;
    let o = outputs::filter(json, false).unwrap();
    assert_eq!(o.dropped, vec!["db_password"]);
    assert_eq!(o.document["vpc_id"]["value"], "vpc-1");
    assert!(!o.document.to_string().contains("hunter22"));
    let o = outputs::filter(json, true).unwrap();
    assert!(o.dropped.is_empty());
    assert_eq!(o.document["db_password"]["value"], "hunter22");
    for bad in [
        &b"not json"[..],
        b"[1]",
        br#"{"x": 5}"#,
        br#"{"x": {"sensitive": "yes"}}"#,
    ] {
        assert!(
            matches!(
                outputs::filter(bad, false),
                Err(outputs::OutputsError::Malformed(_))
            ),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}
