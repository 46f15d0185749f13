//! `liftoff check`: one line per check (ok / warning / error, with the
//! remedy), built from the configuration and the pool identity. Later rooms
//! (sandbox, link) add their own checks through [`Report::push`] (the report
//! types live in the low room `crate::report`).
//!
//! Exit status: 0 when the host can run the launcher, 78 when any error is a
//! configuration error, 1 for other failures.
//!
//! Order: [`configuration`] (variables, [`state_dir`], identity), then the
//! sandbox's host checks, the image cache, then [`connectivity`] unless `--offline`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::config::{Config, Env, KeySource};
use crate::identity::{Identity, PoolKey};
pub use crate::report::{Area, Check, Report, Status};

/// `liftoff check [--json] [--offline]`: configuration, identity, state
/// directory, host (kernel, namespaces, landlock, seccomp, cgroups) and,
/// unless offline, each region's broker; prints the report, returns its
/// exit status.
pub fn run(env: &Env, json: bool, offline: bool) -> i32 {
    let (mut report, config, identity) = configuration(env, crate::identity::now());
    let (runtime, landlock) = match &config {
        Some(c) => (c.runtime, c.landlock),
        None => {
            let c = Config::load(env).config;
            (c.runtime, c.landlock)
        }
    };
    crate::sandbox::hostcheck::push_checks(&mut report, runtime, landlock);
    match &config {
        Some(c) => image_cache(c, &mut report),
        None => image_cache(&Config::load(env).config, &mut report),
    }
    if let Some(c) = &config {
        crate::launcher_log::init(c.log_format, &c.log_filter);
        if let (false, Some(id)) = (offline, &identity) {
            connectivity(c, id, &mut report);
        }
    }
    print!(
        "{}",
        if json {
            report.to_json()
        } else {
            report.to_text()
        }
    );
    report.exit_code()
}

/// The image cache: its size against its budget, and whether
/// `SPACELIFT_DEFAULT_RUNNER_IMAGE` is cached (else the first run pulls it).
fn image_cache(config: &Config, report: &mut Report) {
    let store = crate::image::Store::from_config(config);
    let used = store.usage();
    report.push(
        "image cache",
        Status::Ok,
        Area::Host,
        format!(
            "{} holds {used} bytes of {} allowed (LIFTOFF_IMAGE_CACHE_MAX_BYTES)",
            store.dir.display(),
            store.budget
        ),
    );
    let Some(name) = &config.default_runner_image else {
        return;
    };
    let (status, message) = match crate::image::Reference::parse(name) {
        Err(e) => (Status::Error, e.to_string()),
        Ok(r) => match store.lease(&r) {
            Ok(Some(l)) => (Status::Ok, format!("{r} is cached as {}", l.id())),
            Ok(None) => (
                Status::Warning,
                format!(
                    "{r} is not cached: the first run pulls it (or run `liftoff image pull {r}`, or `liftoff image import` on an air-gapped host)"
                ),
            ),
            Err(e) => (Status::Warning, e.to_string()),
        },
    };
    let area = if status == Status::Error {
        Area::Config
    } else {
        Area::Host
    };
    report.push("SPACELIFT_DEFAULT_RUNNER_IMAGE", status, area, message);
}

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
    if !config_has_error(&report, STATE_VAR) {
        state_dir(&config.state_dir, &mut report);
    }
    let identity = check_identity(&config, &mut report, now);
    let config = (report.exit_code() != crate::EXIT_CONFIG).then_some(config);
    (report, config, identity)
}

fn check_identity(config: &Config, report: &mut Report, now: i64) -> Option<Identity> {
    let token = match &config.token {
        Some(t) => {
            let brokers: Vec<String> = t.brokers.iter().map(|b| b.to_string()).collect();
            let endpoints: Vec<String> = t.endpoints.iter().map(|e| e.to_string()).collect();
            let mut text = format!("pool {}", t.pool_id);
            if !brokers.is_empty() {
                text.push_str(&format!(", brokers in order: {}", brokers.join(", ")));
            }
            if !endpoints.is_empty() {
                text.push_str(&format!(", endpoints in order: {}", endpoints.join(", ")));
            }
            report.push("token", Status::Ok, Area::Config, text);
            match crate::link::comms_protocol(config) {
                Ok(p) => report.push(
                    "SPACELIFT_WORKER_COMMS_PROTOCOL",
                    Status::Ok,
                    Area::Config,
                    format!("the link speaks {p}"),
                ),
                Err(e) => report.push(
                    "SPACELIFT_WORKER_COMMS_PROTOCOL",
                    Status::Error,
                    Area::Config,
                    e,
                ),
            }
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

const STATE_VAR: &str = "LIFTOFF_STATE_DIR";

/// `LIFTOFF_STATE_DIR` as the launcher will use it: an existing real
/// directory (a symlink must lead to one) writable by the launcher, or a
/// path it can create; as root, every directory above it must let the
/// job's host id pass (`o+x`), since runs bind their workspace from there.
pub fn state_dir(dir: &Path, report: &mut Report) {
    let shown = dir.display();
    let mut error = |message: String| report.push(STATE_VAR, Status::Error, Area::Config, message);
    let link = std::fs::symlink_metadata(dir);
    let target = match &link {
        Ok(m) if m.file_type().is_symlink() => {
            let to = std::fs::read_link(dir)
                .map(|t| t.display().to_string())
                .unwrap_or_else(|_| "?".into());
            match std::fs::metadata(dir) {
                Ok(t) if t.is_dir() => Some(t),
                Ok(_) => {
                    return error(format!(
                        "{shown} is a symlink to {to}, which is not a directory: point LIFTOFF_STATE_DIR at a directory"
                    ));
                }
                Err(e) => {
                    return error(format!(
                        "{shown} is a symlink to {to}, which cannot be used ({e}): create the directory it points to, remove the link, or point LIFTOFF_STATE_DIR at a real directory"
                    ));
                }
            }
        }
        Ok(m) if !m.is_dir() => {
            return error(format!(
                "{shown} exists and is not a directory: remove it, or point LIFTOFF_STATE_DIR at a directory"
            ));
        }
        Ok(m) => Some(m.clone()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            None
        }
        Err(e) => {
            return error(format!(
                "{shown} cannot be examined ({e}): fix its parent directory's permissions, or point LIFTOFF_STATE_DIR elsewhere"
            ));
        }
    };
    let real = std::fs::canonicalize(dir).ok();
    // The directory itself, or the nearest existing one above it (where
    // liftoff will create it).
    let (existing, created) = match (&target, &real) {
        (Some(_), Some(r)) => (r.clone(), false),
        _ => match dir.ancestors().skip(1).find(|a| a.exists()) {
            Some(a) => (a.to_path_buf(), true),
            None => return error(format!("{shown}: no directory above it exists")),
        },
    };
    let writable = nix::unistd::access(
        &existing,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    );
    if !existing.is_dir() || writable.is_err() {
        let what = if created {
            format!(
                "{shown} does not exist and cannot be created: {} is not a directory the launcher can write",
                existing.display()
            )
        } else {
            format!("{shown} is not writable by the launcher")
        };
        return error(format!(
            "{what}; create it owned by the launcher's user (mkdir -p {shown}), or point LIFTOFF_STATE_DIR elsewhere"
        ));
    }
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if root {
        let above = existing.ancestors().skip(usize::from(!created));
        for a in above {
            let mode = std::fs::metadata(a).map_or(0o755, |m| m.permissions().mode());
            if mode & 0o001 == 0 {
                return error(format!(
                    "{shown}: the jobs' user cannot pass through {} (mode {:o}), so runs cannot reach their workspace: `chmod o+x {}`, or point LIFTOFF_STATE_DIR elsewhere",
                    a.display(),
                    mode & 0o7777,
                    a.display()
                ));
            }
        }
    }
    let message = if created {
        format!("{shown} does not exist yet; the launcher will create it")
    } else {
        format!("{shown} is a writable directory")
    };
    report.push(STATE_VAR, Status::Ok, Area::Config, message);
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
    use crate::link::probe;
    let Some(token) = &config.token else { return };
    if crate::link::comms_protocol(config) == Ok(crate::config::CommsProtocol::Poll) {
        return poll_connectivity(config, identity, &token.pool_id, report);
    }
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
        push_probe(
            report,
            format!("broker {}", broker.region),
            &format!("{}:{}", broker.host, broker.port),
            "TLS handshake and MQTT CONNECT",
            handle.join().map(|r| r.map_err(|e| (e.kind, e.detail))),
            "the probe crashed",
        );
    }
}

/// Connectivity over the long-poll binding: TLS with the pool certificate
/// and one authenticated request (`GET …/ping`) to each endpoint, in
/// parallel, naming the layer that failed (DNS, TCP, proxy, TLS, HTTP).
fn poll_connectivity(config: &Config, identity: &Identity, pool: &str, report: &mut Report) {
    use crate::link::poll::{self, PollSettings};
    let settings = match PollSettings::from_config(config, identity, "check") {
        Ok(s) => s,
        Err(e) => return report.push("endpoints", Status::Error, Area::Config, e.to_string()),
    };
    let checks: Vec<_> = (0..settings.endpoints.len())
        .map(|i| {
            let s = settings.clone();
            std::thread::spawn(move || poll::check_endpoint(&s, i))
        })
        .collect();
    for (endpoint, handle) in settings.endpoints.iter().zip(checks) {
        push_probe(
            report,
            format!("endpoint {}", endpoint.region),
            &crate::http::redact_url(&endpoint.url),
            &format!("TLS handshake and an authenticated request for pool {pool}"),
            handle.join().map(|r| r.map_err(|e| (e.kind, e.detail))),
            "the check crashed",
        );
    }
}

/// One connectivity line: `<target>: <done> in N ms`; a refused
/// certificate is a configuration error (the pool was reset), any other
/// failure a host error naming its layer; `crashed` when the thread
/// panicked.
fn push_probe(
    report: &mut Report,
    name: String,
    target: &str,
    done: &str,
    joined: std::thread::Result<
        Result<std::time::Duration, (crate::link::probe::ProbeErrorKind, String)>,
    >,
    crashed: &str,
) {
    use crate::link::probe::ProbeErrorKind;
    match joined {
        Ok(Ok(took)) => report.push(
            name,
            Status::Ok,
            Area::Host,
            format!("{target}: {done} in {} ms", took.as_millis()),
        ),
        Ok(Err((kind, detail))) if kind == ProbeErrorKind::CertificateRejected => report.push(
            name,
            Status::Error,
            Area::Config,
            format!(
                "{target}: {}: {} ({detail})",
                kind.name(),
                crate::worker::RESET_MESSAGE,
            ),
        ),
        Ok(Err((kind, detail))) => report.push(
            name,
            Status::Error,
            Area::Host,
            format!("{target}: {} error: {detail}", kind.name()),
        ),
        Err(_) => report.push(name, Status::Error, Area::Host, crashed),
    }
}
