//! The admin API's client, used by every CLI command but `init`, `serve`
//! and `dev`: finds the plane and its token from `--data DIR` (the plane's
//! host: `admin_url`, `admin-token`, `ca.crt`) or from `--url`, `--token`
//! and `--ca` (remote use), and sends JSON requests.
//!
//! Call order: [`Client::new`], then [`Client::get`]/[`Client::post`]/
//! [`Client::get_bytes`].

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use serde_json::Value;

use super::{Error, Result};

/// An answer's body and headers (names lowercased).
pub type Answer = (Vec<u8>, Vec<(String, String)>);

pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    /// `base`: the admin URL; `ca_pem`: the CA its certificate chains to.
    pub fn new(base: &str, token: &str, ca_pem: &str) -> Result<Client> {
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Config(format!("the plane CA is not PEM: {e}")))?;
        let agent = crate::http::agent(
            &crate::config::Proxies::default(),
            &roots,
            crate::http::Timeouts {
                connect: Duration::from_secs(10),
                call: Duration::from_secs(600),
            },
        )
        .map_err(Error::Config)?;
        Ok(Client {
            agent,
            base: base.trim_end_matches('/').to_string(),
            token: token.trim().to_string(),
        })
    }

    /// From a data directory on the plane's host.
    pub fn from_data(dir: &Path) -> Result<Client> {
        let data = super::config::Data::open(dir)?;
        Client::new(&data.config.admin_url, &data.admin_token, &data.ca.cert)
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Answer> {
        let url = format!("{}/admin/v1/{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let unreachable = |e: ureq::Error| {
            Error::Unavailable(format!(
                "cannot reach the plane at {}: {e}; is `liftoff-plane serve` running?",
                self.base
            ))
        };
        let resp = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            (_, b) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .header("Content-Type", "application/json")
                .send(b.map(Value::to_string).unwrap_or_default()),
        }
        .map_err(unreachable)?;
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_ascii_lowercase(),
                    v.to_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        let bytes = resp
            .into_body()
            .with_config()
            .limit(512 << 20)
            .read_to_vec()
            .map_err(unreachable)?;
        if !(200..300).contains(&status) {
            let msg = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(Error::from_status(status, msg));
        }
        Ok((bytes, headers))
    }

    fn json(bytes: &[u8]) -> Result<Value> {
        serde_json::from_slice(bytes).map_err(|e| {
            Error::Unavailable(format!(
                "the plane answered something that is not JSON: {e}"
            ))
        })
    }

    pub fn get(&self, path: &str) -> Result<Value> {
        Client::json(&self.call("GET", path, None)?.0)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value> {
        Client::json(&self.call("POST", path, Some(body))?.0)
    }

    /// Raw bytes and the answer's headers (lowercased names).
    pub fn get_bytes(&self, path: &str) -> Result<Answer> {
        self.call("GET", path, None)
    }
}
