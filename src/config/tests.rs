//! Table-driven tests for every variable: good values, each bad form,
//! defaults, and the all-errors-at-once report.

use super::*;
use std::time::Duration;

fn load(pairs: &[(&str, &str)]) -> Loaded {
    let env: Env = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load(&env)
}

fn load_netns(pairs: &[(&str, &str)], netns: &Path) -> Loaded {
    let env: Env = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Config::load_with_netns_dir(&env, netns)
}

/// Asserts one error on `var` whose message contains every `needle`.
fn assert_error(pairs: &[(&str, &str)], var: &str, needles: &[&str]) {
    let l = load(pairs);
    let e = l
        .errors
        .iter()
        .find(|e| e.var == var)
        .unwrap_or_else(|| panic!("no error for {var} in {:?} (input {pairs:?})", l.errors));
    for n in needles {
        assert!(
            e.message.contains(n),
            "error for {var} {:?} lacks {n:?}",
            e.message
        );
    }
}

fn ok(pairs: &[(&str, &str)]) -> Config {
    let l = load(pairs);
    assert!(
        l.errors.is_empty(),
        "unexpected errors {:?} for {pairs:?}",
        l.errors
    );
    l.config
}

#[test]
fn defaults_match_the_seed() {
    let c = ok(&[]);
    assert_eq!(c.logs_timeout, Duration::from_secs(7 * 60));
    assert_eq!(c.run_timeout, Duration::from_secs(70 * 60));
    assert!(!c.debug && !c.sensitive_output_upload && !c.run_logs_on_stdout);
    assert_eq!(c.network, Network::Host);
    assert_eq!(c.runtime, Runtime::Liftoff);
    assert_eq!(c.state_dir, PathBuf::from("/var/lib/liftoff"));
    assert_eq!(
        c.provider_cache_dir,
        PathBuf::from("/var/cache/liftoff/providers")
    );
    assert_eq!(c.workers, 1);
    assert_eq!(c.log_filter, "info");
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.disk_usage_threshold, 90);
    assert_eq!(c.landlock, LandlockMode::BestEffort);
    assert_eq!(c.job_memory, None);
    assert_eq!(c.job_pids, 4096);
    assert_eq!(c.kill_grace, Duration::from_secs(10));
    assert!(c.token.is_none() && c.private_key.is_none());
    assert!(
        c.mask_envs.is_empty()
            && c.whitelist_envs.is_empty()
            && c.metadata.is_empty()
            && c.vcs_mappings.is_empty()
    );
}

#[test]
fn durations() {
    for var in [
        "SPACELIFT_LAUNCHER_LOGS_TIMEOUT",
        "SPACELIFT_LAUNCHER_RUN_TIMEOUT",
        "LIFTOFF_SHUTDOWN_GRACE",
        "LIFTOFF_KILL_GRACE",
    ] {
        let c = ok(&[(var, "50m30s")]);
        let got = match var {
            "SPACELIFT_LAUNCHER_LOGS_TIMEOUT" => c.logs_timeout,
            "SPACELIFT_LAUNCHER_RUN_TIMEOUT" => c.run_timeout,
            "LIFTOFF_SHUTDOWN_GRACE" => c.shutdown_grace,
            _ => c.kill_grace,
        };
        assert_eq!(got, Duration::from_secs(3030), "{var}");
        assert_error(&[(var, "abc")], var, &["\"abc\"", "1000s", "1h30m"]);
        assert_error(&[(var, "120")], var, &["missing unit"]);
        assert_error(&[(var, "-5m")], var, &["negative"]);
        assert_error(&[(var, "0s")], var, &["longer than 0s"]);
        assert_error(&[(var, "5 days")], var, &["unit"]);
    }
    assert_eq!(
        ok(&[("SPACELIFT_LAUNCHER_LOGS_TIMEOUT", "1000s")]).logs_timeout,
        Duration::from_secs(1000)
    );
    assert_eq!(
        ok(&[("SPACELIFT_LAUNCHER_RUN_TIMEOUT", "120m")]).run_timeout,
        Duration::from_secs(7200)
    );
}

#[test]
fn booleans() {
    let vars = [
        "SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED",
        "SPACELIFT_DEBUG",
        "SPACELIFT_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED",
    ];
    for var in vars {
        for (text, want) in [
            ("true", true),
            ("TRUE", true),
            ("1", true),
            ("false", false),
            ("False", false),
            ("0", false),
        ] {
            let c = ok(&[(var, text)]);
            let got = match var {
                "SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED" => c.sensitive_output_upload,
                "SPACELIFT_DEBUG" => c.debug,
                _ => c.run_logs_on_stdout,
            };
            assert_eq!(got, want, "{var}={text}");
        }
        for bad in ["yes", "on", "2", "enabled"] {
            assert_error(
                &[(var, bad)],
                var,
                &[&format!("{bad:?}"), "true, false, 1 or 0"],
            );
        }
    }
    assert_eq!(ok(&[("SPACELIFT_DEBUG", "true")]).log_filter, "debug");
    assert_eq!(
        ok(&[("SPACELIFT_DEBUG", "true"), ("LIFTOFF_LOG", "warn")]).log_filter,
        "warn"
    );
}

#[test]
fn mask_envs_and_whitelist() {
    assert_eq!(
        ok(&[("SPACELIFT_MASK_ENVS", "A, B_2,,C")]).mask_envs,
        vec!["A", "B_2", "C"]
    );
    assert_error(
        &[("SPACELIFT_MASK_ENVS", "GOOD,bad-name")],
        "SPACELIFT_MASK_ENVS",
        &["\"bad-name\"", "variable name"],
    );
    let c = ok(&[(
        "SPACELIFT_WHITELIST_ENVS",
        "AWS_REGION,ro_PLAN_ONLY,wo_APPLY_ONLY",
    )]);
    assert_eq!(
        c.whitelist_envs,
        vec![
            WhitelistEntry {
                name: "AWS_REGION".into(),
                scope: RunScope::All
            },
            WhitelistEntry {
                name: "PLAN_ONLY".into(),
                scope: RunScope::ReadOnly
            },
            WhitelistEntry {
                name: "APPLY_ONLY".into(),
                scope: RunScope::WriteOnly
            },
        ]
    );
    assert_error(
        &[("SPACELIFT_WHITELIST_ENVS", "A B")],
        "SPACELIFT_WHITELIST_ENVS",
        &["\"A B\""],
    );
}

#[test]
fn policy_file() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.rego");
    std::fs::write(&policy, "package spacelift\n").unwrap();
    let p = policy.to_str().unwrap();
    assert_eq!(
        ok(&[("SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY", p)]).run_initialization_policy,
        Some(policy.clone())
    );
    let var = "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY";
    assert_error(
        &[(var, "/does/not/exist.rego")],
        var,
        &["/does/not/exist.rego", "cannot be read"],
    );
    assert_error(&[(var, dir.path().to_str().unwrap())], var, &["not a file"]);
}

#[test]
fn mounts() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().to_str().unwrap();
    for var in [
        "SPACELIFT_WORKER_EXTRA_MOUNTS",
        "SPACELIFT_WORKER_RO_EXTRA_MOUNTS",
        "SPACELIFT_WORKER_WO_EXTRA_MOUNTS",
    ] {
        let value = format!("{host}:/mnt/a,{host}:/mnt/b:ro");
        let c = ok(&[(var, &value)]);
        let got = match var {
            "SPACELIFT_WORKER_EXTRA_MOUNTS" => c.extra_mounts,
            "SPACELIFT_WORKER_RO_EXTRA_MOUNTS" => c.ro_extra_mounts,
            _ => c.wo_extra_mounts,
        };
        assert_eq!(got.len(), 2);
        assert_eq!(
            got[1],
            Mount {
                host: dir.path().into(),
                sandbox: "/mnt/b".into(),
                read_only: true
            }
        );
        assert_error(
            &[(var, "/no/such/dir:/mnt/x")],
            var,
            &["/no/such/dir", "does not exist"],
        );
        assert_error(&[(var, &format!("{host}:mnt"))], var, &["absolute"]);
        assert_error(&[(var, &format!("{host}:/mnt/../etc"))], var, &[".."]);
        assert_error(&[(var, "justonepath")], var, &["/host/path:/sandbox/path"]);
    }
    // Two bad mounts in one variable: both reported.
    let l = load(&[("SPACELIFT_WORKER_EXTRA_MOUNTS", "/nope1:/a,/nope2:/b")]);
    assert_eq!(l.errors.len(), 2, "{:?}", l.errors);
}

#[test]
fn network_and_runtime() {
    let netns = tempfile::tempdir().unwrap();
    std::fs::write(netns.path().join("runs"), "").unwrap();
    let var = "SPACELIFT_WORKER_NETWORK";
    assert_eq!(
        load_netns(&[(var, "host")], netns.path()).config.network,
        Network::Host
    );
    assert_eq!(
        load_netns(&[(var, "none")], netns.path()).config.network,
        Network::None
    );
    let l = load_netns(&[(var, "runs")], netns.path());
    assert!(l.errors.is_empty());
    assert_eq!(l.config.network, Network::Named("runs".into()));
    let l = load_netns(&[(var, "missing")], netns.path());
    assert!(
        l.errors[0].message.contains("ip netns add missing"),
        "{:?}",
        l.errors
    );
    assert_error(&[(var, "bridge")], var, &["Docker"]);
    assert_error(&[(var, "../etc")], var, &["host, none"]);

    let var = "SPACELIFT_WORKER_RUNTIME";
    assert_eq!(ok(&[(var, "landlock")]).runtime, Runtime::Landlock);
    let l = load(&[(var, "none")]);
    assert!(l.errors.is_empty());
    assert_eq!(l.config.runtime, Runtime::None);
    assert!(
        l.warnings
            .iter()
            .any(|w| w.var == var && w.message.contains("NO isolation"))
    );
    assert_error(
        &[(var, "runsc")],
        var,
        &["\"runsc\"", "liftoff", "landlock", "none"],
    );
}

#[test]
fn docker_config_dir() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_eq!(
        ok(&[("SPACELIFT_DOCKER_CONFIG_DIR", d)]).docker_config_dir,
        Some(dir.path().into())
    );
    assert_error(
        &[("SPACELIFT_DOCKER_CONFIG_DIR", "/no/such")],
        "SPACELIFT_DOCKER_CONFIG_DIR",
        &["not a directory"],
    );
}

#[test]
fn metadata_tags() {
    let c = ok(&[
        ("SPACELIFT_METADATA_instance_id", "i-123"),
        ("SPACELIFT_METADATA_az", "eu-west-1a"),
    ]);
    assert_eq!(
        c.metadata.get("instance_id").map(String::as_str),
        Some("i-123")
    );
    assert_eq!(c.metadata.len(), 2);
    assert_error(
        &[("SPACELIFT_METADATA_", "x")],
        "SPACELIFT_METADATA_",
        &["no tag name"],
    );
}

#[test]
fn vcs_mappings() {
    let n = |i: u32| format!("SPACELIFT_PRIVATEVCS_MAPPING_NAME_{i}");
    let e = |i: u32| format!("SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_{i}");
    let c = ok(&[
        (&n(0), "bitbucket_pool"),
        (&e(0), "http://192.168.2.2"),
        (&n(1), "github_pool"),
        (&e(1), "https://internal-github.net"),
    ]);
    assert_eq!(c.vcs_mappings.len(), 2);
    assert_eq!(c.vcs_mappings[1].name, "github_pool");
    assert_eq!(
        c.vcs_mappings[1].base_endpoint,
        "https://internal-github.net"
    );

    assert_error(
        &[(&n(0), "a")],
        &n(0),
        &["has no SPACELIFT_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0"],
    );
    assert_error(
        &[(&e(0), "https://x")],
        &e(0),
        &["has no SPACELIFT_PRIVATEVCS_MAPPING_NAME_0"],
    );
    assert_error(
        &[
            (&n(0), "a"),
            (&e(0), "https://x"),
            (&n(2), "c"),
            (&e(2), "https://z"),
        ],
        &n(1),
        &["without gaps"],
    );
    assert_error(
        &[(&n(0), "a"), (&e(0), "ftp://x")],
        &e(0),
        &["\"ftp://x\"", "http://"],
    );
    assert_error(
        &[
            (&n(0), "a"),
            (&e(0), "https://x"),
            ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_x", "b"),
        ],
        "SPACELIFT_PRIVATEVCS_MAPPING_NAME_x",
        &["mapping number"],
    );
    assert_error(
        &[("SPACELIFT_PRIVATEVCS_MAPPING_NAME_01", "b")],
        "SPACELIFT_PRIVATEVCS_MAPPING_NAME_01",
        &["mapping number"],
    );
}

#[test]
fn disk_threshold_proxies_cas() {
    assert_eq!(
        ok(&[("SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD", "80%")]).disk_usage_threshold,
        80
    );
    assert_error(
        &[("SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD", "120")],
        "SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD",
        &["1 to 100"],
    );

    let c = ok(&[
        ("HTTPS_PROXY", "http://proxy:3128"),
        ("http_proxy", "proxy:8080"),
        ("NO_PROXY", "localhost, .internal"),
    ]);
    assert_eq!(c.proxies.https.as_deref(), Some("http://proxy:3128"));
    assert_eq!(c.proxies.http.as_deref(), Some("http://proxy:8080"));
    assert_eq!(c.proxies.no_proxy, vec!["localhost", ".internal"]);
    let l = load(&[("HTTPS_PROXY", "ftp://user:secret@proxy")]);
    assert_eq!(l.errors[0].var, "HTTPS_PROXY");
    assert!(
        !l.errors[0].message.contains("secret"),
        "proxy password shown: {}",
        l.errors[0].message
    );

    assert_error(
        &[("ADDITIONAL_ROOT_CAS", "/no/such/bundle.pem")],
        "ADDITIONAL_ROOT_CAS",
        &["cannot be read"],
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bundle.pem");
    std::fs::write(&f, "not pem").unwrap();
    assert_error(
        &[("ADDITIONAL_ROOT_CAS", f.to_str().unwrap())],
        "ADDITIONAL_ROOT_CAS",
        &["neither PEM"],
    );
    assert_error(
        &[(
            "ADDITIONAL_ROOT_CAS",
            "-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n",
        )],
        "ADDITIONAL_ROOT_CAS",
        &["inline"],
    );
}

#[test]
fn liftoff_variables() {
    let c = ok(&[
        ("LIFTOFF_STATE_DIR", "/srv/liftoff"),
        ("LIFTOFF_PROVIDER_CACHE_DIR", "/srv/cache"),
        ("LIFTOFF_PROVIDER_CACHE_MAX_BYTES", "1GiB"),
        ("LIFTOFF_WORKERS", "2"),
        ("LIFTOFF_LOG", "info,liftoff::link=debug"),
        ("LIFTOFF_LOG_FORMAT", "json"),
        ("LIFTOFF_LANDLOCK", "require"),
        ("LIFTOFF_JOB_MEMORY", "1536MiB"),
        ("LIFTOFF_JOB_PIDS", "1024"),
        ("LIFTOFF_JOB_CPUS", "1.5"),
    ]);
    assert_eq!(c.state_dir, PathBuf::from("/srv/liftoff"));
    assert_eq!(c.provider_cache_dir, PathBuf::from("/srv/cache"));
    assert_eq!(c.provider_cache_max_bytes, 1 << 30);
    assert_eq!(c.workers, 2);
    assert_eq!(c.log_filter, "info,liftoff::link=debug");
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.landlock, LandlockMode::Require);
    assert_eq!(c.job_memory, Some(1536 << 20));
    assert_eq!(c.job_pids, 1024);
    assert_eq!(c.job_cpus, Some(1.5));

    let bad: &[(&str, &str, &str)] = &[
        ("LIFTOFF_STATE_DIR", "relative/dir", "absolute"),
        ("LIFTOFF_PROVIDER_CACHE_DIR", "cache", "absolute"),
        ("LIFTOFF_PROVIDER_CACHE_MAX_BYTES", "lots", "byte size"),
        ("LIFTOFF_WORKERS", "0", "1 to 64"),
        ("LIFTOFF_WORKERS", "65", "1 to 64"),
        ("LIFTOFF_WORKERS", "two", "1 to 64"),
        ("LIFTOFF_LOG", "info,liftoff=loud", "RUST_LOG"),
        ("LIFTOFF_LOG_FORMAT", "xml", "text or json"),
        ("LIFTOFF_LANDLOCK", "maybe", "best-effort or require"),
        ("LIFTOFF_JOB_MEMORY", "1MiB", "16MiB"),
        ("LIFTOFF_JOB_MEMORY", "lots", "auto"),
        ("LIFTOFF_JOB_PIDS", "2", "at least 16"),
        ("LIFTOFF_JOB_CPUS", "-1", "CPUs"),
        ("LIFTOFF_JOB_CPUS", "NaN", "CPUs"),
    ];
    for (var, value, needle) in bad {
        assert_error(&[(var, value)], var, &[needle]);
    }
    assert_eq!(ok(&[("LIFTOFF_JOB_MEMORY", "auto")]).job_memory, None);
}

#[test]
fn private_key_sources() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("k.pem");
    std::fs::write(&f, "PEM").unwrap();
    let c = ok(&[("LIFTOFF_POOL_PRIVATE_KEY_FILE", f.to_str().unwrap())]);
    assert_eq!(c.private_key.unwrap().source, KeySource::File(f.clone()));
    let c = ok(&[("SPACELIFT_POOL_PRIVATE_KEY", "UEVN")]);
    assert_eq!(c.private_key.unwrap().pem.0, b"PEM");
    assert_error(
        &[("SPACELIFT_POOL_PRIVATE_KEY", "%%%")],
        "SPACELIFT_POOL_PRIVATE_KEY",
        &["base64 -w 0"],
    );
    assert_error(
        &[(
            "SPACELIFT_POOL_PRIVATE_KEY",
            "-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----",
        )],
        "SPACELIFT_POOL_PRIVATE_KEY",
        &["PEM text, not base64"],
    );
    assert_error(
        &[("LIFTOFF_POOL_PRIVATE_KEY_FILE", "/no/key.pem")],
        "LIFTOFF_POOL_PRIVATE_KEY_FILE",
        &["cannot be read"],
    );
    assert_error(
        &[
            ("LIFTOFF_POOL_PRIVATE_KEY_FILE", f.to_str().unwrap()),
            ("SPACELIFT_POOL_PRIVATE_KEY", "UEVN"),
        ],
        "LIFTOFF_POOL_PRIVATE_KEY_FILE",
        &["only one"],
    );
}

#[test]
fn secrets_are_never_shown() {
    let secret_token = "c2VjcmV0LXRva2VuLXZhbHVl"; // base64 of a non-JSON secret
    let l = load(&[
        ("SPACELIFT_TOKEN", secret_token),
        ("SPACELIFT_POOL_PRIVATE_KEY", "%%secret%%"),
    ]);
    assert_eq!(l.errors.len(), 2, "{:?}", l.errors);
    for e in &l.errors {
        assert!(!e.message.contains("secret"), "secret shown in {e}");
        assert!(!e.message.contains(secret_token));
    }
    let shown = format!("{:?}", l.config);
    assert!(!shown.contains("%%secret%%"));
    let key_cfg = load(&[("SPACELIFT_POOL_PRIVATE_KEY", "UEVN")]).config;
    for (k, v) in key_cfg.effective() {
        assert!(!v.contains("PEM") && !v.contains("UEVN"), "{k}={v}");
    }
}

#[test]
fn unknown_variables_get_a_suggestion() {
    let l = load(&[
        ("SPACELIFT_LAUNCHER_RUN_TIMEOT", "5m"),
        ("LIFTOFF_WORKER", "2"),
        ("SPACELIFT_COMPLETELY_DIFFERENT_THING", "x"),
        ("PATH", "/bin"),
    ]);
    assert!(l.errors.is_empty());
    let find = |var: &str| {
        l.warnings
            .iter()
            .find(|w| w.var == var)
            .unwrap_or_else(|| panic!("no warning for {var}: {:?}", l.warnings))
    };
    assert!(
        find("SPACELIFT_LAUNCHER_RUN_TIMEOT")
            .message
            .contains("did you mean SPACELIFT_LAUNCHER_RUN_TIMEOUT?")
    );
    assert!(
        find("LIFTOFF_WORKER")
            .message
            .contains("did you mean LIFTOFF_WORKERS?")
    );
    assert!(
        find("SPACELIFT_COMPLETELY_DIFFERENT_THING")
            .message
            .contains("ignored")
    );
    assert!(!l.warnings.iter().any(|w| w.var == "PATH"));
}

#[test]
fn all_errors_at_once() {
    let l = load(&[
        ("SPACELIFT_LAUNCHER_RUN_TIMEOUT", "abc"),
        ("SPACELIFT_LAUNCHER_LOGS_TIMEOUT", "5"),
        ("SPACELIFT_DEBUG", "yes"),
        ("SPACELIFT_WORKER_RUNTIME", "docker"),
        ("LIFTOFF_WORKERS", "0"),
        ("SPACELIFT_TOKEN", "%%%"),
        ("SPACELIFT_PRIVATEVCS_MAPPING_NAME_0", "x"),
    ]);
    let vars: Vec<&str> = l.errors.iter().map(|e| e.var.as_str()).collect();
    for want in [
        "SPACELIFT_LAUNCHER_RUN_TIMEOUT",
        "SPACELIFT_LAUNCHER_LOGS_TIMEOUT",
        "SPACELIFT_DEBUG",
        "SPACELIFT_WORKER_RUNTIME",
        "LIFTOFF_WORKERS",
        "SPACELIFT_TOKEN",
        "SPACELIFT_PRIVATEVCS_MAPPING_NAME_0",
    ] {
        assert!(vars.contains(&want), "{want} missing from {vars:?}");
    }
    // Defaults stand in for the bad values.
    assert_eq!(l.config.run_timeout, Duration::from_secs(4200));
    assert!(l.into_result().is_err());
}

#[test]
fn every_variable_is_documented_and_read() {
    // Each documented variable, set to a bad value, must produce an error or be
    // accepted: none may be silently ignored as unknown.
    for v in vars::VARIABLES {
        let l = load(&[(v.name, "!!bad value!!")]);
        assert!(
            !l.warnings
                .iter()
                .any(|w| w.var == v.name && w.message.contains("not a variable")),
            "{} is documented but unknown",
            v.name
        );
    }
}

#[test]
fn effective_config_lists_every_variable() {
    let c = ok(&[("SPACELIFT_METADATA_zone", "a")]);
    let eff = c.effective();
    for v in vars::VARIABLES {
        assert!(
            eff.iter().any(|(k, _)| k == v.name),
            "{} missing from liftoff config",
            v.name
        );
    }
    assert!(
        eff.iter()
            .any(|(k, v)| k == "SPACELIFT_METADATA_zone" && v == "a")
    );
    let c = ok(&[("HTTPS_PROXY", "http://u:pw@proxy:3128")]);
    let https = c
        .effective()
        .into_iter()
        .find(|(k, _)| k == "HTTPS_PROXY")
        .unwrap()
        .1;
    assert_eq!(https, "http://***@proxy:3128");
}

/// Every duration has a maximum: a huge value is an error naming the
/// variable (it used to pass and then panic adding it to an `Instant`).
#[test]
fn durations_are_bounded() {
    let timeouts = [
        "SPACELIFT_LAUNCHER_LOGS_TIMEOUT",
        "SPACELIFT_LAUNCHER_RUN_TIMEOUT",
        "LIFTOFF_SHUTDOWN_GRACE",
    ];
    let intervals = [
        "LIFTOFF_KILL_GRACE",
        "LIFTOFF_MQTT_KEEPALIVE",
        "LIFTOFF_HEARTBEAT_INTERVAL",
        "LIFTOFF_PROBE_INTERVAL",
        "LIFTOFF_FAILBACK_AFTER",
        "LIFTOFF_RESEND_AFTER",
    ];
    for var in timeouts.iter().chain(&intervals) {
        for huge in ["5000000000000000h", "18446744073709551615s", "721h"] {
            assert_error(&[(var, huge)], var, &["maximum"]);
        }
    }
    for var in timeouts {
        ok(&[(var, "720h")]);
    }
    for var in intervals {
        ok(&[(var, "1h")]);
        assert_error(&[(var, "61m")], var, &["maximum 1h0m0s"]);
    }
}

/// Mounts that break isolation are refused unless
/// LIFTOFF_ALLOW_UNSAFE_MOUNTS=true, and then warned about.
#[test]
fn unsafe_mounts_need_the_opt_in() {
    let state = tempfile::tempdir().unwrap();
    let state_str = state.path().to_str().unwrap();
    let inside = state.path().join("runs");
    std::fs::create_dir(&inside).unwrap();
    let var = "SPACELIFT_WORKER_EXTRA_MOUNTS";
    for item in [
        "/:/x".to_string(),
        "/proc:/x".to_string(),
        "/sys/fs/cgroup:/x:rw".to_string(),
        "/dev:/x".to_string(),
        "/run:/x".to_string(),
        format!("{state_str}:/x"),
        format!("{}:/x", inside.display()),
    ] {
        let l = load(&[(var, &item), ("LIFTOFF_STATE_DIR", state_str)]);
        let e = l
            .errors
            .iter()
            .find(|e| e.var == var)
            .unwrap_or_else(|| panic!("{item} accepted: {:?}", l.errors));
        assert!(
            e.message.contains("LIFTOFF_ALLOW_UNSAFE_MOUNTS=true"),
            "{e}"
        );
        assert!(l.config.extra_mounts.is_empty());
        let l = load(&[
            (var, &item),
            ("LIFTOFF_STATE_DIR", state_str),
            ("LIFTOFF_ALLOW_UNSAFE_MOUNTS", "true"),
        ]);
        assert!(l.errors.is_empty(), "{item}: {:?}", l.errors);
        assert!(l.warnings.iter().any(|w| w.var == var), "{item}");
        assert_eq!(l.config.extra_mounts.len(), 1);
    }
    // An ordinary directory passes without a word.
    let data = tempfile::tempdir().unwrap();
    let l = load(&[(var, &format!("{}:/mnt/data:ro", data.path().display()))]);
    assert!(l.errors.is_empty() && l.warnings.is_empty(), "{l:?}");
}

/// A target that covers the workspace, /proc, /sys or /dev fails up front.
#[test]
fn mount_targets_that_hide_the_workspace_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().to_str().unwrap();
    let var = "SPACELIFT_WORKER_EXTRA_MOUNTS";
    for target in [
        "/mnt/workspace",
        "/mnt/workspace/source",
        "/mnt",
        "/proc",
        "/sys/x",
        "/dev",
    ] {
        assert_error(
            &[(var, &format!("{host}:{target}"))],
            var,
            &[target, "mount it elsewhere"],
        );
    }
    ok(&[(var, &format!("{host}:/mnt/data"))]);
}

/// `\:`, `\,` and `\\` let a host path hold a colon, a comma or a backslash;
/// `liftoff config` shows them escaped again.
#[test]
fn mount_paths_with_colons_use_escapes() {
    let dir = tempfile::tempdir().unwrap();
    let odd = dir.path().join("a:b,c\\d");
    std::fs::create_dir(&odd).unwrap();
    let escaped = format!("{}/a\\:b\\,c\\\\d", dir.path().display());
    let var = "SPACELIFT_WORKER_EXTRA_MOUNTS";
    let c = ok(&[(
        var,
        &format!("{escaped}:/mnt/x\\:y:ro, {}:/mnt/z", dir.path().display()),
    )]);
    assert_eq!(c.extra_mounts.len(), 2);
    assert_eq!(c.extra_mounts[0].host, odd);
    assert_eq!(c.extra_mounts[0].sandbox, PathBuf::from("/mnt/x:y"));
    assert!(c.extra_mounts[0].read_only);
    let shown = c.effective().into_iter().find(|(k, _)| k == var).unwrap().1;
    assert!(
        shown.starts_with(&format!("{escaped}:/mnt/x\\:y:ro,")),
        "{shown}"
    );
    // Unescaped, the colon splits the item.
    assert!(
        !load(&[(var, &format!("{}/a:b,c:/mnt/x", dir.path().display()))])
            .errors
            .is_empty()
    );
}

/// Whitelisting liftoff's own secrets is warned about (and `run::env` never
/// passes them).
#[test]
fn whitelisting_launcher_secrets_is_warned_about() {
    for name in [
        "SPACELIFT_POOL_PRIVATE_KEY",
        "SPACELIFT_TOKEN",
        "ro_SPACELIFT_TOKEN",
        "LIFTOFF_POOL_PRIVATE_KEY_FILE",
    ] {
        let l = load(&[("SPACELIFT_WHITELIST_ENVS", &format!("AWS_REGION,{name}"))]);
        assert!(l.errors.is_empty(), "{:?}", l.errors);
        let w = l
            .warnings
            .iter()
            .find(|w| w.var == "SPACELIFT_WHITELIST_ENVS")
            .unwrap_or_else(|| panic!("no warning for {name}"));
        assert!(w.message.contains("never passed to runs"), "{w}");
    }
    let l = load(&[("SPACELIFT_WHITELIST_ENVS", "AWS_REGION")]);
    assert!(l.warnings.is_empty());
}

/// Each default is written once, as text in `vars::VARIABLES`: loading an
/// empty environment reads that text with the variable's own reader, and
/// setting a variable to its documented default changes nothing.
#[test]
fn defaults_are_written_once_as_text() {
    let (_, problems) = read::defaults(Path::new(NETNS_DIR));
    assert!(problems.is_empty(), "a default text is wrong: {problems:?}");
    let empty = load(&[]);
    assert!(
        empty.errors.is_empty() && empty.warnings.is_empty(),
        "{empty:?}"
    );
    let defaults = empty.config.effective();
    for v in vars::VARIABLES {
        let shown = &defaults.iter().find(|(k, _)| k == v.name).unwrap().1;
        if v.default.is_empty() {
            let unset = if v.secret { "(not set)" } else { "" };
            assert_eq!(shown, unset, "{} has no default but shows one", v.name);
            continue;
        }
        let l = load(&[(v.name, v.default)]);
        assert!(
            l.errors.is_empty() && l.warnings.is_empty(),
            "{}={}: {l:?}",
            v.name,
            v.default
        );
        assert_eq!(
            l.config.effective(),
            defaults,
            "{}={} is not what an unset {} gives",
            v.name,
            v.default,
            v.name
        );
    }
    // The constants other rooms use without a configuration agree too.
    let c = &empty.config;
    assert_eq!(c.logs_timeout, DEFAULT_LOGS_TIMEOUT);
    assert_eq!(c.run_timeout, DEFAULT_RUN_TIMEOUT);
    assert_eq!(c.kill_grace, DEFAULT_KILL_GRACE);
}

/// `liftoff config` shows every entry of the table, in table order, and
/// every entry is read: a bad value is an error naming it, or changes what
/// it shows.
#[test]
fn every_entry_is_loaded_and_shown() {
    let defaults = load(&[]).config.effective();
    let names: Vec<&str> = defaults.iter().map(|(k, _)| k.as_str()).collect();
    let table: Vec<&str> = vars::VARIABLES.iter().map(|v| v.name).collect();
    assert_eq!(names, table);
    for v in vars::VARIABLES {
        let l = load(&[(v.name, "!!bad value!!")]);
        let shown = |e: &[(String, String)]| e.iter().find(|(k, _)| k == v.name).unwrap().1.clone();
        assert!(
            l.errors.iter().any(|e| e.var == v.name)
                || shown(&l.config.effective()) != shown(&defaults),
            "{} set to a bad value is neither an error nor shown",
            v.name
        );
    }
}

/// What `liftoff config` shows can be set again and gives the same
/// configuration: each entry's `show` and `read` agree.
#[test]
fn shown_values_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let host = dir.path().display().to_string();
    let policy = dir.path().join("policy.rego");
    std::fs::write(&policy, "package spacelift").unwrap();
    let mount = format!("{host}:/mnt/data:ro");
    let set = [
        ("SPACELIFT_MASK_ENVS", "A,B"),
        ("SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED", "1"),
        (
            "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY",
            policy.to_str().unwrap(),
        ),
        ("SPACELIFT_LAUNCHER_LOGS_TIMEOUT", "90m"),
        ("SPACELIFT_DEBUG", "true"),
        ("SPACELIFT_WHITELIST_ENVS", "ro_X,wo_Y,Z"),
        ("SPACELIFT_WORKER_EXTRA_MOUNTS", &mount),
        ("SPACELIFT_WORKER_NETWORK", "none"),
        ("SPACELIFT_WORKER_RUNTIME", "landlock"),
        ("SPACELIFT_DOCKER_CONFIG_DIR", &host),
        ("SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD", "85"),
        ("HTTPS_PROXY", "proxy:3128"),
        ("no_proxy", "a, b"),
        ("LIFTOFF_PROVIDER_CACHE_MAX_BYTES", "1G"),
        ("LIFTOFF_WORKERS", "3"),
        ("LIFTOFF_LOG_FORMAT", "json"),
        ("LIFTOFF_KILL_GRACE", "90s"),
        ("LIFTOFF_LANDLOCK", "require"),
        ("LIFTOFF_JOB_MEMORY", "1GiB"),
        ("LIFTOFF_JOB_CPUS", "1.5"),
    ];
    for pairs in [&[][..], &set[..]] {
        let first = ok(pairs).effective();
        let again: Vec<(&str, &str)> = first
            .iter()
            .filter(|(k, _)| !vars::find(k).is_some_and(|v| v.secret))
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(ok(&again).effective(), first, "from {pairs:?}");
    }
}
