//! Property tests over every parser of operator input: each configuration
//! variable through `Config::load` and `check::configuration`, the value
//! parsers, the token and key parsers, `liftoff exec` flags (clap parsing
//! and `exec::validate_flags`) and run specs. Random and hostile strings
//! (huge numbers, unicode, control characters, empty, very long) never
//! panic, and every error names its variable, flag or field. A failing case
//! is printed by proptest, shrunk to its smallest form.

use std::path::Path;

use clap::Parser;
use proptest::prelude::*;

use liftoff::cli::exec::{self, ExecArgs};
use liftoff::config::{self, Config, Env, Network, Runtime, parse, token, vars};
use liftoff::run::spec::RunSpec;

/// Strings an operator's typo or an attacker might give.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[0-9]{1,40}(ns|us|µs|ms|s|m|h|d|KiB|MiB|GiB|TiB|K|G|%|b|)",
        "[0-9.+-]{1,30}[a-z]{0,3}",
        "[ -~]{0,80}",
        "\\PC{0,40}",
        "[\\x00-\\x1f\\x7f\\u{80}-\\u{9f}]{0,8}",
        "(/[a-z:,\\\\.]{0,6}){1,5}(:(/[a-z:.]{0,6}){1,4}(:ro|:rw|:xx)?)?(,.*)?",
        "(https?|ftp)://[a-z@:/?#.]{0,30}",
        "(true|false|auto|host|none|liftoff|landlock|json|text|require|best-effort)",
        Just(String::new()),
        Just("9".repeat(400)),
        Just("5000000000000000h".to_string()),
        Just("18446744073709551616".to_string()),
        Just("/".to_string()),
        Just("/:/x".to_string()),
        proptest::collection::vec(any::<char>(), 4000..6000).prop_map(String::from_iter),
    ]
}

/// Every variable liftoff reads, with one member of each family.
fn variables() -> Vec<String> {
    let mut v: Vec<String> = vars::VARIABLES.iter().map(|v| v.name.to_string()).collect();
    v.extend(
        [
            "SPACELIFT_METADATA_tag",
            "SPACELIFT_PRIVATEVCS_MAPPING_NAME_0",
            "SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0",
            "http_proxy",
            "https_proxy",
            "no_proxy",
        ]
        .map(String::from),
    );
    v
}

fn one(var: &str, value: &str) -> Env {
    [(var.to_string(), value.to_string())].into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Each variable alone, set to anything: loading, `liftoff config` and
    /// `liftoff check` never panic; errors name the variable; a secret's
    /// value is never shown.
    #[test]
    fn every_variable_survives_anything(index in 0usize..64, value in hostile()) {
        let names = variables();
        let var = &names[index % names.len()];
        let env = one(var, &value);
        let loaded = Config::load(&env);
        for e in &loaded.errors {
            prop_assert_eq!(&e.var, var, "error {} names another variable", e);
            prop_assert!(!e.message.is_empty());
        }
        let secret = vars::find(var).is_some_and(|v| v.secret);
        if secret && value.trim().len() >= 8 {
            for e in loaded.errors.iter().chain(&loaded.warnings) {
                prop_assert!(!e.message.contains(value.trim()), "secret shown: {}", e);
            }
        }
        let c = &loaded.config;
        for d in [
            c.logs_timeout, c.run_timeout, c.shutdown_grace, c.kill_grace, c.mqtt_keepalive,
            c.heartbeat_interval, c.probe_interval, c.failback_after, c.resend_after,
        ] {
            // What the launcher does with them: deadlines from now.
            prop_assert!(d <= parse::MAX_TIMEOUT && !d.is_zero(), "{}={:?}", var, d);
            prop_assert!(std::time::Instant::now().checked_add(d).is_some());
        }
        let _ = loaded.config.effective();
        let (report, _, _) = liftoff::cli::check::configuration(&env, 1_700_000_000);
        let _ = report.to_text();
        prop_assert_eq!(report.exit_code() == 0, false, "no token nor key: never ok");
    }

    /// The value parsers on their own.
    #[test]
    fn value_parsers_never_panic(text in hostile()) {
        let _ = parse::duration(&text);
        if let Ok(d) = parse::bounded_duration(&text, parse::MAX_TIMEOUT) {
            prop_assert!(d <= parse::MAX_TIMEOUT && !d.is_zero());
            let _ = parse::later(std::time::Instant::now(), d);
        }
        let _ = parse::byte_size(&text);
        let _ = parse::percent(&text);
        let _ = parse::boolean(&text);
        let _ = parse::http_url(&text);
        let _ = parse::hostname(&text);
        let _ = parse::sandbox_path(&text);
        let _ = parse::is_env_name(&text);
        for item in parse::mount_list(&text) {
            if let Ok(m) = parse::mount(item) {
                let _ = parse::mount_risk(&m, Path::new("/var/lib/liftoff"));
            }
        }
        prop_assert_eq!(parse::unescape(&parse::escape(&text)), text.clone());
        let _ = parse::image_root(Path::new(&text));
        let _ = Network::parse(&text, Path::new("/nonexistent-netns"));
        let _ = Runtime::parse(&text);
        let _ = parse::format_duration(parse::duration(&text).unwrap_or_default());
    }

    /// The token, certificate and key parsers.
    #[test]
    fn token_and_key_parsers_never_panic(text in hostile(), bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = token::parse(&text);
        let _ = token::pem_certificates(&text);
        let _ = liftoff::identity::PoolKey::from_pem(text.as_bytes());
        let _ = liftoff::identity::PoolKey::from_pem(&bytes);
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{text}\n-----END PRIVATE KEY-----\n");
        let _ = liftoff::identity::PoolKey::from_pem(pem.as_bytes());
        let cert = format!("-----BEGIN CERTIFICATE-----\n{text}\n-----END CERTIFICATE-----\n");
        let _ = token::pem_certificates(&cert);
        let _ = liftoff::identity::certificate_info(&bytes);
    }

    /// `liftoff exec` flags: whatever clap accepts, validation refuses with
    /// the flag's name or accepts, and never panics.
    #[test]
    fn exec_flags_never_panic_and_name_the_flag(index in 0usize..13, value in hostile()) {
        #[derive(Parser)]
        struct Wrap {
            #[command(flatten)]
            args: ExecArgs,
        }
        const FLAGS: [&str; 13] = [
            "--memory", "--pids", "--timeout", "--logs-timeout", "--hostname", "--root",
            "--mount", "--network", "--env", "--pass-env", "--cwd", "--mask", "--workspace",
        ];
        let flag = FLAGS[index];
        if value.contains('\0') {
            return Ok(()); // no argv can hold a NUL
        }
        let parsed = Wrap::try_parse_from(["exec", flag, value.as_str(), "--", "true"]);
        let Ok(w) = parsed else { return Ok(()) };
        let env = Env::default();
        let config = Config::load(&env).config;
        if flag == "--workspace" {
            if let Some(ws) = &w.args.workspace {
                if let Err(e) = exec::validate_workspace(ws) {
                    prop_assert!(e.starts_with(flag), "{}", e);
                }
            }
            return Ok(());
        }
        if let Err(e) = exec::validate_flags(&w.args, &env, &config) {
            prop_assert!(e.starts_with(flag), "{} does not start with {}", e, flag);
        }
    }

    /// Run specs with hostile values in every string field, and raw bytes.
    #[test]
    fn run_specs_never_panic(field in 0usize..9, value in hostile(), bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = RunSpec::from_json(&bytes);
        let mut j = serde_json::json!({"run_id": "r1", "run_type": "proposed", "steps": [{"name": "s", "argv": ["true"]}]});
        let v = serde_json::Value::String(value.clone());
        match field {
            0 => j["run_id"] = v,
            1 => j["steps"][0]["name"] = v,
            2 => j["steps"][0]["argv"][0] = v,
            3 => j["runner"] = serde_json::json!({"root": v}),
            4 => j["timeouts"] = serde_json::json!({"run": v}),
            5 => j["timeouts"] = serde_json::json!({"logs": v}),
            6 => j["environment"] = serde_json::json!([{"name": v, "value": "x"}]),
            7 => j["source"] = serde_json::json!({"url": v}),
            _ => j["uploads"] = serde_json::json!({"artifacts": [{"path": v, "url": "https://x"}]}),
        }
        match RunSpec::from_json(j.to_string().as_bytes()) {
            Ok(s) => {
                let launcher = std::time::Duration::from_secs(4200);
                prop_assert!(s.run_timeout(launcher) <= launcher);
                for step in &s.steps {
                    prop_assert!(!step.name.chars().any(char::is_control));
                }
            }
            Err(e) => prop_assert!(e.starts_with("run spec"), "{}", e),
        }
    }
}

/// The durations of the issue, by value: no panic anywhere.
#[test]
fn issue_values_are_refused() {
    for var in [
        "SPACELIFT_LAUNCHER_RUN_TIMEOUT",
        "LIFTOFF_KILL_GRACE",
        "SPACELIFT_LAUNCHER_LOGS_TIMEOUT",
    ] {
        let loaded = Config::load(&one(var, "5000000000000000h"));
        assert!(loaded.errors.iter().any(|e| e.var == var), "{var}");
    }
    assert!(config::parse::duration("5000000000000000h").is_ok());
    assert!(config::parse::bounded_duration("5000000000000000h", parse::MAX_TIMEOUT).is_err());
}
