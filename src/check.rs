//! `liftoff check`: one line per check (ok / warning / error, with the
//! remedy), built from the configuration and the pool identity. Later rooms
//! (sandbox, link) add their own checks through [`Report::push`] (the report
//! types live in the low room `crate::report`).
//!
//! Exit status: 0 when the host can run the launcher, 78 when any error is a
//! configuration error, 1 for other failures.

use crate::config::{Config, Env, KeySource};
use crate::identity::{Identity, PoolKey};
pub use crate::report::{Area, Check, Report, Status};

/// Checks configuration and identity. Returns the report and, when they are
/// usable, the configuration and the identity.
pub fn configuration(env: &Env, now: i64) -> (Report, Option<Config>, Option<Identity>) {
    let mut report = Report::default();
    let loaded = Config::load(env);
    for e in &loaded.errors {
        report.push(&e.var, Status::Error, Area::Config, &e.message);
    }
    for w in &loaded.warnings {
        report.push(&w.var, Status::Warning, Area::Config, &w.message);
    }
    if loaded.errors.is_empty() {
        report.push(
            "configuration",
            Status::Ok,
            Area::Config,
            "every variable is valid",
        );
    }
    let config = loaded.config;
    let identity = check_identity(&config, &mut report, now);
    let config = (report.exit_code() != crate::EXIT_CONFIG).then_some(config);
    (report, config, identity)
}

fn check_identity(config: &Config, report: &mut Report, now: i64) -> Option<Identity> {
    let token = match &config.token {
        Some(t) => {
            let brokers: Vec<String> = t.brokers.iter().map(|b| b.to_string()).collect();
            report.push(
                "token",
                Status::Ok,
                Area::Config,
                format!(
                    "pool {}, brokers in order: {}",
                    t.pool_id,
                    brokers.join(", ")
                ),
            );
            Some(t)
        }
        None if config_has_error(report, "SPACELIFT_TOKEN") => None,
        None => {
            report.push("SPACELIFT_TOKEN", Status::Error, Area::Config, "is not set: set it to the token the control plane gave when the worker pool was created");
            None
        }
    };
    let key = match &config.private_key {
        Some(k) => match PoolKey::from_pem(&k.pem.0) {
            Ok(key) => {
                let from = match &k.source {
                    KeySource::Env => "SPACELIFT_POOL_PRIVATE_KEY".to_string(),
                    KeySource::File(p) => p.display().to_string(),
                };
                report.push(
                    "private key",
                    Status::Ok,
                    Area::Config,
                    format!("RSA {} bits, from {from}", key.bits()),
                );
                Some((key, k.var()))
            }
            Err(e) => {
                report.push(k.var(), Status::Error, Area::Config, e);
                None
            }
        },
        None if config_has_error(report, "SPACELIFT_POOL_PRIVATE_KEY")
            || config_has_error(report, "LIFTOFF_POOL_PRIVATE_KEY_FILE") =>
        {
            None
        }
        None => {
            report.push(
                "SPACELIFT_POOL_PRIVATE_KEY",
                Status::Error,
                Area::Config,
                "is not set: set it to `base64 -w 0 spacelift.key` of the key made with the CSR, or set LIFTOFF_POOL_PRIVATE_KEY_FILE",
            );
            None
        }
    };
    let (token, (key, key_var)) = (token?, key?);
    match Identity::new(token, key, key_var, now) {
        Ok((identity, warnings)) => {
            let cn = identity
                .cert
                .subject_cn
                .as_deref()
                .unwrap_or("(no common name)");
            report.push(
                "certificate",
                Status::Ok,
                Area::Config,
                format!(
                    "{cn}: matches the private key, valid until {}",
                    crate::time::format_time(identity.cert.not_after)
                ),
            );
            for w in warnings {
                report.push(w.var, Status::Warning, Area::Config, w.message);
            }
            match identity.client_config(token, &config.additional_root_cas, None) {
                Ok(_) => report.push(
                    "tls",
                    Status::Ok,
                    Area::Config,
                    "client certificate and trusted roots are usable",
                ),
                Err(e) => report.push("tls", Status::Error, Area::Config, e),
            }
            Some(identity)
        }
        Err(f) => {
            report.push(f.var, Status::Error, Area::Config, f.message);
            None
        }
    }
}

fn config_has_error(report: &Report, var: &str) -> bool {
    report
        .checks
        .iter()
        .any(|c| c.name == var && c.status == Status::Error)
}

/// Connectivity: TLS handshake and MQTT CONNECT to each region of the
/// token, in parallel, with the time taken or a precise error (DNS, TCP, TLS
/// verification, certificate rejected, MQTT, timeout). A refused certificate
/// is a configuration error (the pool was reset: exit 78); anything else is
/// a host/network error (exit 1).
pub fn connectivity(config: &Config, identity: &Identity, report: &mut Report) {
    use crate::link::probe::{self, ProbeErrorKind};
    let Some(token) = &config.token else { return };
    let client_id = format!("{}-check-{}", token.pool_id, crate::link::protocol::ulid());
    let client_id: String = client_id
        .chars()
        .take(crate::link::protocol::MAX_CLIENT_ID)
        .collect();
    let mut probes = Vec::new();
    for broker in &token.brokers {
        let alpn = broker.needs_alpn().then_some(&b"x-amzn-mqtt-ca"[..]);
        let tls = match identity.client_config(token, &config.additional_root_cas, alpn) {
            Ok(t) => t,
            Err(e) => {
                report.push(
                    format!("broker {}", broker.region),
                    Status::Error,
                    Area::Config,
                    e,
                );
                continue;
            }
        };
        let (b, id) = (broker.clone(), client_id.clone());
        probes.push((
            broker.clone(),
            std::thread::spawn(move || {
                probe::probe(&b, tls, &id, std::time::Duration::from_secs(10))
            }),
        ));
    }
    for (broker, handle) in probes {
        let name = format!("broker {}", broker.region);
        let target = format!("{}:{}", broker.host, broker.port);
        match handle.join() {
            Ok(Ok(took)) => report.push(
                name,
                Status::Ok,
                Area::Host,
                format!(
                    "{target}: TLS handshake and MQTT CONNECT in {} ms",
                    took.as_millis()
                ),
            ),
            Ok(Err(e)) if e.kind == ProbeErrorKind::CertificateRejected => report.push(
                name,
                Status::Error,
                Area::Config,
                format!(
                    "{target}: {}: {} ({})",
                    e.kind.name(),
                    crate::worker::RESET_MESSAGE,
                    e.detail
                ),
            ),
            Ok(Err(e)) => report.push(
                name,
                Status::Error,
                Area::Host,
                format!("{target}: {} error: {}", e.kind.name(), e.detail),
            ),
            Err(_) => report.push(name, Status::Error, Area::Host, "the probe crashed"),
        }
    }
}
