//! The plane's data directory and its config file `plane.json`.
//!
//! Layout (secrets mode 0600, the directory 0700):
//!
//! | file | what |
//! |---|---|
//! | `plane.json` | listen address, external URLs, brokers, timings |
//! | `ca.crt`, `ca.key` | the pool CA (signs pool and server certificates) |
//! | `server.crt`, `server.key` | the HTTPS listener's certificate |
//! | `admin-token` | the admin API's bearer token |
//! | `object-key` | the HMAC key of signed object URLs |
//! | `crl.pem`, `revoked.pem` | the pool CA's CRL for MQTT brokers, and the certificates it revokes |
//! | `plane.db` | the SQLite store (WAL) |
//! | `objects/` | log chunks, sources, outputs |
//!
//! Call order: `init` calls [`init`]; everything else [`Data::open`].

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Error, Result, pki, write_file};

/// One region's HTTPS long-poll endpoint (the token's `endpoints`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub region: String,
    pub url: String,
}

/// One region's MQTT broker (the token's `brokers`), `mqtts://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerUrl {
    pub region: String,
    pub url: String,
}

/// The plane's MQTT client identity (a certificate the brokers accept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MqttClient {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA the brokers' certificates chain to.
    pub ca: PathBuf,
}

fn default_grace() -> u64 {
    60
}
fn default_resend() -> u64 {
    5
}
fn default_namespace() -> String {
    "spacelift".into()
}

/// `plane.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the HTTPS listener binds, `ADDR:PORT`.
    pub listen: String,
    /// The long-poll endpoints put into pool tokens, primary first.
    pub endpoints: Vec<Endpoint>,
    /// The base of signed object URLs (logs, sources, outputs).
    pub objects_url: String,
    /// Where the CLI on this host reaches the admin API.
    pub admin_url: String,
    /// MQTT brokers put into pool tokens (and subscribed to), if any.
    #[serde(default)]
    pub brokers: Vec<BrokerUrl>,
    #[serde(default)]
    pub mqtt: Option<MqttClient>,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Seconds without a poll or request before a long-poll worker is gone.
    #[serde(default = "default_grace")]
    pub poll_grace_s: u64,
    /// Seconds between re-sends of an unanswered assign, drain, cycle or cancel.
    #[serde(default = "default_resend")]
    pub resend_s: u64,
    /// Where the plain-HTTP `/metrics` and `/healthz` listener binds,
    /// `ADDR:PORT`; absent: not served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

/// An opened data directory.
#[derive(Debug, Clone)]
pub struct Data {
    pub dir: PathBuf,
    pub config: Config,
    pub ca: pki::Pem,
    pub server: pki::Pem,
    pub admin_token: String,
    pub object_key: Vec<u8>,
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "cannot read {}: {e}; is this a data directory made by `liftoff-plane init`?",
            path.display()
        ))
    })
}

impl Data {
    pub fn open(dir: &Path) -> Result<Data> {
        let config: Config = serde_json::from_str(&read(&dir.join("plane.json"))?)
            .map_err(|e| Error::Config(format!("{}: {e}", dir.join("plane.json").display())))?;
        let token = read(&dir.join("admin-token"))?.trim().to_string();
        let key_hex = read(&dir.join("object-key"))?;
        let object_key = hex_decode(key_hex.trim()).ok_or_else(|| {
            Error::Config(format!("{} is not hex", dir.join("object-key").display()))
        })?;
        Ok(Data {
            ca: pki::Pem {
                cert: read(&dir.join("ca.crt"))?,
                key: read(&dir.join("ca.key"))?,
            },
            server: pki::Pem {
                cert: read(&dir.join("server.crt"))?,
                key: read(&dir.join("server.key"))?,
            },
            dir: dir.to_path_buf(),
            config,
            admin_token: token,
            object_key,
        })
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.join("plane.db")
    }

    pub fn objects_dir(&self) -> PathBuf {
        self.dir.join("objects")
    }
}

/// Random bytes as lowercase hex.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    let _ = aws_lc_rs::rand::fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// What `init` was asked for.
#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub names: Vec<String>,
    pub listen: Option<String>,
    pub urls: Vec<String>,
    pub region: Option<String>,
    /// Existing server certificate and key (PEM files) instead of a new one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub brokers: Vec<BrokerUrl>,
    /// The `/metrics` listener, `ADDR:PORT` (none: not served).
    pub metrics_listen: Option<String>,
}

/// Creates a data directory. Refuses one that already holds a plane.
pub fn init(dir: &Path, opts: &InitOptions) -> Result<Data> {
    use std::os::unix::fs::DirBuilderExt as _;
    if dir.join("plane.json").exists() {
        return Err(Error::Conflict(format!(
            "{} already holds a plane (plane.json exists): use another --data directory",
            dir.display()
        )));
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir.join("objects"))
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    let names = if opts.names.is_empty() {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        opts.names.clone()
    };
    let listen = opts.listen.clone().unwrap_or_else(|| "0.0.0.0:8443".into());
    let port = listen
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| Error::BadInput(format!("--listen {listen:?} is not ADDR:PORT")))?;
    let host = &names[0];
    let host_url = if host.contains(':') {
        format!("https://[{host}]:{port}")
    } else {
        format!("https://{host}:{port}")
    };
    let urls = if opts.urls.is_empty() {
        vec![host_url.clone()]
    } else {
        opts.urls.clone()
    };
    for u in &urls {
        if !u.starts_with("https://") {
            return Err(Error::BadInput(format!(
                "--url {u:?} must be an https:// URL (workers only poll over HTTPS)"
            )));
        }
    }
    let region = opts.region.clone().unwrap_or_else(|| "local".into());
    let endpoints = urls
        .iter()
        .enumerate()
        .map(|(i, u)| Endpoint {
            region: if i == 0 {
                region.clone()
            } else {
                format!("{region}-{}", i + 1)
            },
            url: u.trim_end_matches('/').to_string(),
        })
        .collect();
    let ca = pki::new_ca(host)?;
    let server = match (&opts.cert, &opts.key) {
        (Some(c), Some(k)) => pki::Pem {
            cert: read(c)?,
            key: read(k)?,
        },
        (None, None) => {
            // The CLI on this host reaches the admin API on loopback.
            let mut all = names.clone();
            for n in ["localhost", "127.0.0.1"] {
                if !all.iter().any(|x| x == n) {
                    all.push(n.to_string());
                }
            }
            pki::server_cert(&ca, &all)?
        }
        _ => {
            return Err(Error::BadInput(
                "--cert and --key go together: give both PEM files, or neither".into(),
            ));
        }
    };
    let config = Config {
        listen,
        endpoints,
        objects_url: urls[0].trim_end_matches('/').to_string(),
        admin_url: format!("https://127.0.0.1:{port}"),
        brokers: opts.brokers.clone(),
        mqtt: None,
        namespace: default_namespace(),
        poll_grace_s: default_grace(),
        resend_s: default_resend(),
        metrics_listen: opts.metrics_listen.clone(),
    };
    let token = random_hex(32);
    let object_key = random_hex(32);
    let json = serde_json::to_string_pretty(&config).map_err(|e| Error::Config(e.to_string()))?;
    write_file(&dir.join("ca.key"), ca.key.as_bytes(), 0o600)?;
    write_file(&dir.join("ca.crt"), ca.cert.as_bytes(), 0o644)?;
    write_file(&dir.join("server.key"), server.key.as_bytes(), 0o600)?;
    write_file(&dir.join("server.crt"), server.cert.as_bytes(), 0o644)?;
    // An empty CRL, so MQTT brokers can be given `crlfile` from the start.
    let crl = pki::crl(&ca, "", 1)?;
    write_file(&dir.join("crl.pem"), crl.as_bytes(), 0o644)?;
    write_file(
        &dir.join("admin-token"),
        format!("{token}\n").as_bytes(),
        0o600,
    )?;
    write_file(
        &dir.join("object-key"),
        format!("{object_key}\n").as_bytes(),
        0o600,
    )?;
    // Last: its presence marks a complete data directory.
    write_file(&dir.join("plane.json"), json.as_bytes(), 0o600)?;
    Data::open(dir)
}
