//! The pool token (`SPACELIFT_TOKEN`): base64 of a JSON document naming the
//! pool, its topic namespace, the ordered broker list (primary region first),
//! an optional API URL, the pool's certificate and an optional CA.
//!
//! The seed's single-broker form `{"broker": {"endpoint": "host"}, ...}` is
//! accepted as a one-broker list. Unknown fields are ignored; a missing or
//! malformed field is an error that names it. See docs/configuration.md.

use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;
use serde_json::{Map, Value};

/// The token format versions this liftoff understands.
pub const SUPPORTED_VERSION: u64 = 1;

/// A parsed pool token. Contains no secret key material, but the whole token
/// is still treated as a secret (it is masked in run logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    pub version: u64,
    pub pool_id: String,
    pub namespace: String,
    /// MQTT brokers in order of preference (may be empty when the token
    /// has `endpoints`).
    pub brokers: Vec<Broker>,
    /// HTTPS long-poll endpoints in order of preference (may be empty).
    pub endpoints: Vec<Endpoint>,
    pub api_url: Option<String>,
    /// The pool certificate chain (leaf first), DER.
    pub certificate: Vec<CertificateDer<'static>>,
    /// Extra trust anchors for the brokers (self-hosted brokers), DER.
    pub ca: Vec<CertificateDer<'static>>,
}

/// One MQTT broker endpoint.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Broker {
    pub region: String,
    pub host: String,
    pub port: u16,
}

impl Broker {
    /// Port 443 needs the ALPN protocol `x-amzn-mqtt-ca` (AWS IoT Core).
    pub fn needs_alpn(&self) -> bool {
        self.port == 443
    }
}

/// One HTTPS long-poll endpoint of the control plane (docs/protocol.md,
/// "The HTTPS long-poll binding"): `url` is `https://host[:port][/prefix]`
/// without a trailing `/`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Endpoint {
    pub region: String,
    pub url: String,
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.region, self.url)
    }
}

/// An `https://host[:port][/prefix]` URL for the long-poll binding: no
/// query, fragment or credentials; returned without a trailing `/`.
pub fn endpoint_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    let Some(rest) = url.strip_prefix("https://") else {
        return Err(if url.starts_with("http://") {
            format!("{url:?} is plain HTTP: the long-poll binding needs https://")
        } else {
            format!("{url:?} is not an https:// URL (expected https://host[:port][/prefix])")
        });
    };
    if url.contains(['?', '#']) || url.chars().any(char::is_whitespace) {
        return Err(format!(
            "{url:?} has a query, a fragment or white space: expected https://host[:port][/prefix]"
        ));
    }
    let authority = rest.split('/').next().unwrap_or("");
    if authority.contains('@') {
        return Err(format!(
            "{url:?} carries credentials: the pool certificate is the identity; remove user:password@"
        ));
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && !h.ends_with(']') || authority.starts_with('[') => {
            (h, Some(p))
        }
        _ => (authority, None),
    };
    if host.is_empty() || host == "[" {
        return Err(format!(
            "{url:?} has no host: expected https://host[:port][/prefix]"
        ));
    }
    if let Some(p) = port
        && !matches!(p.parse::<u16>(), Ok(n) if n > 0)
    {
        return Err(format!("{url:?} has an invalid port: expected 1 to 65535"));
    }
    Ok(url.trim_end_matches('/').to_string())
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (mqtts://{}:{})", self.region, self.host, self.port)
    }
}

/// Parses `SPACELIFT_TOKEN`. Errors never quote the token itself.
pub fn parse(base64_text: &str) -> Result<Token, String> {
    let compact: String = base64_text.chars().filter(|c| !c.is_whitespace()).collect();
    let json = decode_base64(&compact).map_err(|_| {
        "is not valid base64: paste the token exactly as the control plane showed it".to_string()
    })?;
    let doc: Value = serde_json::from_slice(&json).map_err(|e| {
        format!("decodes, but not to a JSON document ({e}): is this really a worker pool token?")
    })?;
    let obj = doc
        .as_object()
        .ok_or("decodes to JSON that is not an object: is this really a worker pool token?")?;
    from_json(obj)
}

/// Accepts standard and URL-safe base64, with or without padding.
pub(crate) fn decode_base64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    STANDARD
        .decode(text)
        .or_else(|_| STANDARD_NO_PAD.decode(text))
        .or_else(|_| URL_SAFE.decode(text))
        .or_else(|_| URL_SAFE_NO_PAD.decode(text))
}

fn field<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match obj.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Err(format!("field {name:?} is empty")),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("field {name:?} must be a string")),
    }
}

fn required<'a>(obj: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    field(obj, name)?.ok_or_else(|| format!("field {name:?} is missing"))
}

fn from_json(obj: &Map<String, Value>) -> Result<Token, String> {
    let version = match obj.get("version") {
        None => SUPPORTED_VERSION,
        Some(v) => v
            .as_u64()
            .ok_or("field \"version\" must be a whole number")?,
    };
    if version != SUPPORTED_VERSION {
        return Err(format!(
            "has version {version}, but this liftoff reads version {SUPPORTED_VERSION}: upgrade liftoff"
        ));
    }
    let pool_id = required(obj, "pool_id")?.to_string();
    let namespace = field(obj, "namespace")?.unwrap_or("spacelift").to_string();
    if namespace.contains(['/', '+', '#']) {
        return Err(format!(
            "field \"namespace\" ({namespace:?}) must not contain /, + or #"
        ));
    }
    if pool_id.contains(['/', '+', '#']) {
        return Err("field \"pool_id\" must not contain /, + or #".into());
    }
    let endpoints = endpoints(obj)?;
    let brokers =
        if endpoints.is_empty() || obj.contains_key("brokers") || obj.contains_key("broker") {
            brokers(obj)?
        } else {
            Vec::new()
        };
    let api_url = match field(obj, "api_url")? {
        Some(u) => Some(super::parse::http_url(u).map_err(|e| format!("field \"api_url\": {e}"))?),
        None => None,
    };
    let cert_text = match field(obj, "certificate")? {
        Some(c) => c,
        None => field(obj, "cert")?.ok_or("field \"certificate\" is missing")?,
    };
    let certificate =
        pem_certificates(cert_text).map_err(|e| format!("field \"certificate\": {e}"))?;
    let ca = match field(obj, "ca")? {
        Some(c) => pem_certificates(c).map_err(|e| format!("field \"ca\": {e}"))?,
        None => Vec::new(),
    };
    Ok(Token {
        version,
        pool_id,
        namespace,
        brokers,
        endpoints,
        api_url,
        certificate,
        ca,
    })
}

fn endpoints(obj: &Map<String, Value>) -> Result<Vec<Endpoint>, String> {
    let Some(list) = obj.get("endpoints") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or("field \"endpoints\" must be a list")?;
    if list.is_empty() {
        return Err("field \"endpoints\" is empty: the token names no endpoint".into());
    }
    let mut out: Vec<Endpoint> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let e = item
            .as_object()
            .ok_or_else(|| format!("field \"endpoints[{i}]\" must be an object"))?;
        let url = required(e, "url").map_err(|e| format!("endpoints[{i}]: {e}"))?;
        let url = endpoint_url(url).map_err(|e| format!("field \"endpoints[{i}].url\": {e}"))?;
        let region = required(e, "region").map_err(|e| format!("endpoints[{i}]: {e}"))?;
        if out.iter().any(|o| o.region == region) {
            return Err(format!(
                "field \"endpoints[{i}].region\": {region:?} is named twice"
            ));
        }
        out.push(Endpoint {
            region: region.to_string(),
            url,
        });
    }
    Ok(out)
}

fn brokers(obj: &Map<String, Value>) -> Result<Vec<Broker>, String> {
    if let Some(list) = obj.get("brokers") {
        let list = list.as_array().ok_or("field \"brokers\" must be a list")?;
        if list.is_empty() {
            return Err("field \"brokers\" is empty: the token names no broker".into());
        }
        let mut out = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            let b = item
                .as_object()
                .ok_or_else(|| format!("field \"brokers[{i}]\" must be an object"))?;
            let url = required(b, "url").map_err(|e| format!("brokers[{i}]: {e}"))?;
            let (host, port) =
                broker_url(url).map_err(|e| format!("field \"brokers[{i}].url\": {e}"))?;
            let region = match field(b, "region").map_err(|e| format!("brokers[{i}]: {e}"))? {
                Some(r) => r.to_string(),
                None => region_of(&host),
            };
            out.push(Broker { region, host, port });
        }
        return Ok(out);
    }
    // The seed's form: one broker endpoint.
    let broker = obj
        .get("broker")
        .ok_or("field \"brokers\" is missing (and there is no seed-style \"broker\" nor \"endpoints\" either)")?
        .as_object()
        .ok_or("field \"broker\" must be an object")?;
    let endpoint = required(broker, "endpoint").map_err(|e| format!("broker: {e}"))?;
    let (host, port) =
        broker_url(endpoint).map_err(|e| format!("field \"broker.endpoint\": {e}"))?;
    Ok(vec![Broker {
        region: region_of(&host),
        host,
        port,
    }])
}

/// `mqtts://host[:port]`, `ssl://host[:port]` or a bare `host[:port]`; TLS
/// only, port 8883 by default.
fn broker_url(url: &str) -> Result<(String, u16), String> {
    let rest = if let Some((scheme, rest)) = url.split_once("://") {
        match scheme {
            "mqtts" | "ssl" | "tls" => rest,
            "mqtt" | "tcp" => {
                return Err(format!(
                    "{url:?} is plain MQTT: liftoff only connects over TLS (mqtts://)"
                ));
            }
            other => {
                return Err(format!(
                    "unknown scheme {other:?} in {url:?}: expected mqtts://host:port"
                ));
            }
        }
    } else {
        url
    };
    let rest = rest.trim_end_matches('/');
    if rest.contains('/') {
        return Err(format!("{url:?} has a path: expected mqtts://host:port"));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{url:?}: unclosed ["))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '@') {
        return Err(format!(
            "{url:?} has no valid host: expected mqtts://host:port"
        ));
    }
    let port = match port {
        None => 8883,
        Some(p) => match p.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(format!("{url:?} has an invalid port: expected 1 to 65535")),
        },
    };
    Ok((host, port))
}

/// `xyz-ats.iot.eu-west-1.amazonaws.com` → `eu-west-1`; other hosts are
/// named after themselves.
fn region_of(host: &str) -> String {
    let labels: Vec<&str> = host.split('.').collect();
    labels
        .windows(2)
        .find(|w| w[0] == "iot")
        .map(|w| w[1].to_string())
        .unwrap_or_else(|| host.to_string())
}

/// PEM certificates, given as PEM text or as base64 of PEM text.
pub fn pem_certificates(text: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let decoded;
    let pem: &[u8] = if text.contains("-----BEGIN") {
        text.as_bytes()
    } else {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        decoded =
            decode_base64(&compact).map_err(|_| "is neither PEM nor base64 of PEM".to_string())?;
        &decoded
    };
    let mut certs = Vec::new();
    for item in CertificateDer::pem_slice_iter(pem) {
        certs.push(item.map_err(|e| format!("holds a malformed PEM certificate ({e})"))?);
    }
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::STANDARD;

    // Not a real certificate: token parsing only checks the PEM framing.
    const FAKE_PEM: &str = "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";

    fn token(json: serde_json::Value) -> Result<Token, String> {
        parse(&STANDARD.encode(json.to_string()))
    }

    fn full() -> serde_json::Value {
        serde_json::json!({
            "version": 1,
            "pool_id": "01JD6Z8X5N4T3K2M1P0Q9R8S7T",
            "namespace": "spacelift",
            "brokers": [
                {"region": "eu-west-1", "url": "mqtts://a1-ats.iot.eu-west-1.amazonaws.com:8883"},
                {"region": "eu-central-1", "url": "mqtts://a1-ats.iot.eu-central-1.amazonaws.com:443"}
            ],
            "api_url": "https://plane.example.com",
            "certificate": FAKE_PEM,
            "ca": FAKE_PEM,
            "something_new": {"ignored": true}
        })
    }

    #[test]
    fn endpoints_in_order_and_https_only() {
        let mut doc = full();
        doc["endpoints"] = serde_json::json!([
            {"region": "eu-west-1", "url": "https://plane-a.example.com/"},
            {"region": "eu-central-1", "url": "https://plane-b.example.com:8443/prefix"}
        ]);
        let t = token(doc.clone()).unwrap();
        assert_eq!(t.endpoints.len(), 2);
        assert_eq!(t.endpoints[0].url, "https://plane-a.example.com");
        assert_eq!(
            t.endpoints[1].url,
            "https://plane-b.example.com:8443/prefix"
        );
        assert_eq!(t.endpoints[1].region, "eu-central-1");
        assert_eq!(t.brokers.len(), 2, "brokers kept beside endpoints");
        // endpoints alone are enough
        let obj = doc.as_object_mut().unwrap();
        obj.remove("brokers");
        let t = token(doc.clone()).unwrap();
        assert!(t.brokers.is_empty() && t.endpoints.len() == 2);
        for (bad, why) in [
            (serde_json::json!("x"), "must be a list"),
            (serde_json::json!([]), "is empty"),
            (
                serde_json::json!([{"region": "a", "url": "http://h"}]),
                "plain HTTP",
            ),
            (
                serde_json::json!([{"region": "a", "url": "mqtts://h"}]),
                "not an https:// URL",
            ),
            (
                serde_json::json!([{"region": "a", "url": "https://u:p@h"}]),
                "credentials",
            ),
            (
                serde_json::json!([{"region": "a", "url": "https://h?x=1"}]),
                "query",
            ),
            (
                serde_json::json!([{"region": "a", "url": "https://h:0"}]),
                "invalid port",
            ),
            (
                serde_json::json!([{"region": "a", "url": "https:///x"}]),
                "no host",
            ),
            (
                serde_json::json!([{"url": "https://h"}]),
                "\"region\" is missing",
            ),
            (
                serde_json::json!([{"region": "a", "url": "https://h"}, {"region": "a", "url": "https://g"}]),
                "named twice",
            ),
        ] {
            let mut d = doc.clone();
            d["endpoints"] = bad.clone();
            let e = token(d).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn full_token() {
        let t = token(full()).unwrap();
        assert_eq!(t.pool_id, "01JD6Z8X5N4T3K2M1P0Q9R8S7T");
        assert_eq!(t.brokers.len(), 2);
        assert_eq!(t.brokers[0].region, "eu-west-1");
        assert_eq!(t.brokers[1].port, 443);
        assert!(t.brokers[1].needs_alpn() && !t.brokers[0].needs_alpn());
        assert_eq!(t.certificate.len(), 1);
        assert_eq!(t.ca.len(), 1);
        assert_eq!(t.api_url.as_deref(), Some("https://plane.example.com"));
    }

    #[test]
    fn seed_form_is_one_broker() {
        let t = token(serde_json::json!({
            "pool_id": "p1",
            "broker": {"endpoint": "xyz-ats.iot.eu-west-1.amazonaws.com"},
            "cert": STANDARD.encode(FAKE_PEM)
        }))
        .unwrap();
        assert_eq!(t.namespace, "spacelift");
        assert_eq!(
            t.brokers,
            vec![Broker {
                region: "eu-west-1".into(),
                host: "xyz-ats.iot.eu-west-1.amazonaws.com".into(),
                port: 8883
            }]
        );
    }

    #[test]
    fn errors_name_the_field() {
        type Mutation = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Mutation)> = vec![
            (
                "\"pool_id\" is missing",
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("pool_id");
                }),
            ),
            (
                "\"pool_id\" must be a string",
                Box::new(|j| j["pool_id"] = 5.into()),
            ),
            (
                "\"brokers\" is empty",
                Box::new(|j| j["brokers"] = serde_json::json!([])),
            ),
            (
                "brokers[1].url",
                Box::new(|j| j["brokers"][1]["url"] = "mqtt://plain:1883".into()),
            ),
            (
                "brokers[0]: field \"url\" is missing",
                Box::new(|j| j["brokers"][0] = serde_json::json!({"region": "x"})),
            ),
            (
                "invalid port",
                Box::new(|j| j["brokers"][0]["url"] = "mqtts://h:99999".into()),
            ),
            (
                "\"certificate\" is missing",
                Box::new(|j| {
                    j.as_object_mut().unwrap().remove("certificate");
                }),
            ),
            (
                "\"certificate\": holds no PEM",
                Box::new(|j| j["certificate"] = STANDARD.encode("hello").into()),
            ),
            (
                "\"ca\": is neither PEM",
                Box::new(|j| j["ca"] = "%%%".into()),
            ),
            ("version 2", Box::new(|j| j["version"] = 2.into())),
            ("\"api_url\"", Box::new(|j| j["api_url"] = "ftp://x".into())),
            ("\"namespace\"", Box::new(|j| j["namespace"] = "a/b".into())),
        ];
        for (want, mutate) in cases {
            let mut j = full();
            mutate(&mut j);
            let err = token(j).unwrap_err();
            assert!(err.contains(want), "want {want:?} in {err:?}");
        }
    }

    #[test]
    fn garbage() {
        assert!(
            parse("!!!not base64!!!")
                .unwrap_err()
                .contains("not valid base64")
        );
        assert!(
            parse(&STANDARD.encode("not json"))
                .unwrap_err()
                .contains("JSON")
        );
        assert!(
            parse(&STANDARD.encode("[1,2]"))
                .unwrap_err()
                .contains("not an object")
        );
        assert!(parse("").is_err());
    }

    #[test]
    fn broker_urls() {
        assert_eq!(broker_url("mqtts://h:1").unwrap(), ("h".into(), 1));
        assert_eq!(broker_url("ssl://h").unwrap(), ("h".into(), 8883));
        assert_eq!(
            broker_url("h.example:443").unwrap(),
            ("h.example".into(), 443)
        );
        assert_eq!(
            broker_url("mqtts://[::1]:8883").unwrap(),
            ("::1".into(), 8883)
        );
        for bad in [
            "mqtt://h",
            "http://h",
            "mqtts://",
            "mqtts://h/path",
            "mqtts://h:0",
            "mqtts://h:x",
        ] {
            assert!(broker_url(bad).is_err(), "{bad}");
        }
    }
}
