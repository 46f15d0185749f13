//! The one HTTP agent: ureq 3 over rustls with the aws-lc-rs provider, the
//! system roots plus `ADDITIONAL_ROOT_CAS`, the configured proxies and bounded
//! timeouts. Build it once with [`agent`] (or [`agent_from_config`]) and clone
//! it where needed (clones share the connection pool).
//!
//! Uploads to pre-signed URLs (log chunks, artifacts, outputs) go through one
//! function, [`presigned_put`], which sends Content-Length (object storage
//! refuses chunked bodies) and sorts the answer into a [`PutError`]:
//! transient (network, 408, 429, 5xx), expired (403: ask for a new URL) or
//! refused (other 4xx). [`with_retries`] retries with [`Retry`]'s bounded,
//! jittered backoff; each caller says which errors it retries.
//!
//! A URL is never shown as it is: [`redact_url`] (one URL) and
//! [`redact_urls`] (every URL in a message) remove credentials
//! (`user:pw@`), the query (pre-signed URLs carry their signature there) and
//! the fragment, for every line liftoff writes.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use ureq::tls::{Certificate, ClientCert, PrivateKey, RootCerts, TlsConfig, TlsProvider};
use ureq::{Agent, Proxy, ProxyProtocol};

use crate::config::{Config, Proxies};

/// Timeouts of the agent. Defaults suit 1 MiB uploads on a slow link.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    /// The whole call: connect, send the body, receive the answer.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: Duration::from_secs(10),
            call: Duration::from_secs(120),
        }
    }
}

/// The agent from the configuration's proxies and extra roots.
pub fn agent_from_config(config: &Config) -> Result<Agent, String> {
    agent(
        &config.proxies,
        &config.additional_root_cas,
        Timeouts::default(),
    )
}

/// Builds the agent. Trust: the system store plus `extra_roots`; an error
/// when there is no root at all. The proxy: `proxies.https`, else
/// `proxies.http` (ureq has one proxy per agent), bypassed for `NO_PROXY`
/// hosts.
pub fn agent(
    proxies: &Proxies,
    extra_roots: &[CertificateDer<'static>],
    timeouts: Timeouts,
) -> Result<Agent, String> {
    build(proxies, &[], extra_roots, None, timeouts)
}

/// The agent of the long-poll link: the same proxies and timeouts, mutual
/// TLS with the pool certificate and key, and the control plane verified
/// against `primary_roots` (the token's `ca`) or, when there is none, the
/// system store; plus `extra_roots` (`ADDITIONAL_ROOT_CAS`) always.
pub fn mtls_agent(
    proxies: &Proxies,
    primary_roots: &[CertificateDer<'static>],
    extra_roots: &[CertificateDer<'static>],
    identity: &crate::identity::Identity,
    timeouts: Timeouts,
) -> Result<Agent, String> {
    let chain: Vec<Certificate<'static>> = identity
        .chain
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    // ureq takes a key from PEM (its key-kind type is not public).
    let pem = {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(identity.key.pkcs8_der());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        pem
    };
    let key = PrivateKey::from_pem(pem.as_bytes())
        .map_err(|e| format!("the pool key cannot be used for TLS: {e}"))?;
    let client = ClientCert::new_with_certs(&chain, key);
    build(proxies, primary_roots, extra_roots, Some(client), timeouts)
}

fn build(
    proxies: &Proxies,
    primary_roots: &[CertificateDer<'static>],
    extra_roots: &[CertificateDer<'static>],
    client: Option<ClientCert>,
    timeouts: Timeouts,
) -> Result<Agent, String> {
    // The link keeps two connections open for the life of the process;
    // ureq's 128 KiB buffers per connection are far more than its small
    // requests and answers need (bodies stream through them anyway).
    let buffer = if client.is_some() {
        16 * 1024
    } else {
        128 * 1024
    };
    crate::identity::install_crypto_provider();
    let mut roots: Vec<Certificate<'static>> = if primary_roots.is_empty() {
        rustls_native_certs::load_native_certs()
            .certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect()
    } else {
        primary_roots
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect()
    };
    roots.extend(
        extra_roots
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned()),
    );
    if roots.is_empty() {
        return Err("no trusted CA certificates for HTTPS: install the system CA bundle (ca-certificates) or set ADDITIONAL_ROOT_CAS".into());
    }
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(roots)))
        .client_cert(client)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    let proxy = match proxies.https.as_deref().or(proxies.http.as_deref()) {
        Some(url) => Some(proxy(url, &proxies.no_proxy)?),
        None => None,
    };
    let config = Agent::config_builder()
        .tls_config(tls)
        .proxy(proxy)
        .http_status_as_error(false)
        .timeout_connect(Some(timeouts.connect))
        .timeout_global(Some(timeouts.call))
        .max_redirects(0)
        .input_buffer_size(buffer)
        .output_buffer_size(buffer)
        .user_agent(format!("liftoff/{}", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(Agent::new_with_config(config))
}

/// A ureq proxy from `http://[user:pass@]host[:port]` (or `https://`), with
/// the `NO_PROXY` entries.
fn proxy(url: &str, no_proxy: &[String]) -> Result<Proxy, String> {
    let bad = |why: &str| {
        format!("proxy {url:?}: {why} (expected http://host:port; set HTTPS_PROXY/HTTP_PROXY)")
    };
    let (protocol, rest) = if let Some(r) = url.strip_prefix("http://") {
        (ProxyProtocol::Http, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (ProxyProtocol::Https, r)
    } else if url.contains("://") {
        return Err(bad("only http:// and https:// proxies are supported"));
    } else {
        (ProxyProtocol::Http, url)
    };
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
            let port: u16 = p.parse().map_err(|_| bad("the port is not a number"))?;
            (h, Some(port))
        }
        _ => (hostport, None),
    };
    if host.is_empty() || host.contains('/') {
        return Err(bad("no host"));
    }
    let mut b = Proxy::builder(protocol).host(host);
    if let Some(p) = port {
        b = b.port(p);
    }
    if let Some(u) = userinfo {
        let (user, pass) = u.split_once(':').unwrap_or((u, ""));
        b = b.username(user);
        if !pass.is_empty() {
            b = b.password(pass);
        }
    }
    for entry in no_proxy {
        b = b.no_proxy(entry);
    }
    b.build().map_err(|e| bad(&e.to_string()))
}

/// `url` as it may be shown: credentials replaced by `***@`, query and
/// fragment removed (`https://***@host/path`). Works on anything that looks
/// like a URL, with or without a scheme; never fails.
pub fn redact_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rfind('@') {
        Some(at) => format!("{scheme}***@{}{path}", &authority[at + 1..]),
        None => format!("{scheme}{authority}{path}"),
    }
}

/// `text` with every URL in it (`scheme://…`, up to white space, a quote or
/// a closing bracket) passed through [`redact_url`].
pub fn redact_urls(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("://") {
        return std::borrow::Cow::Borrowed(text);
    }
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut done = 0;
    let mut from = 0;
    while let Some(i) = text[from..].find("://").map(|i| i + from) {
        // The scheme: letters, digits, `+`, `-`, `.` before `://`.
        let start = text[..i]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |j| j + 1);
        let end = text[i + 3..]
            .find(|c: char| {
                c.is_whitespace() || matches!(c, '"' | '\'' | '`' | '<' | '>' | ')' | ']' | '}')
            })
            .map_or(bytes.len(), |j| j + i + 3);
        if start < done {
            from = end.max(i + 3);
            continue;
        }
        out.push_str(&text[done..start]);
        out.push_str(&redact_url(&text[start..end]));
        done = end;
        from = end.max(i + 3);
    }
    out.push_str(&text[done..]);
    std::borrow::Cow::Owned(out)
}

/// Retry bound: `attempts` tries per upload, waiting a random time up to
/// `base * 2^n` (capped at `max`) between them.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for Retry {
    /// 10 tries over about two minutes.
    fn default() -> Self {
        Retry {
            attempts: 10,
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Retry {
    /// The wait before try `n + 1` (n ≥ 1): "equal jitter", half fixed and
    /// half random, so waits grow even with bad luck.
    pub fn backoff(&self, n: u32, rng: &mut u64) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(self.max);
        let half = exp / 2;
        let nanos = half.as_nanos().min(u128::from(u64::MAX)) as u64;
        let jitter = if nanos == 0 {
            0
        } else {
            next_random(rng) % nanos
        };
        half + Duration::from_nanos(jitter)
    }
}

/// The next number of a splitmix64 sequence (jitter, not secrets).
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A seed for the jitter of one delivery thread.
pub fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    t.as_nanos() as u64 ^ u64::from(std::process::id()).rotate_left(32)
}

/// How a PUT to a pre-signed URL failed; the message names the upload and
/// the URL (redacted) and says what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutError {
    /// Worth trying again: the network, a timeout, HTTP 408, 429 or 5xx.
    Transient(String),
    /// HTTP 403: the URL expired or its signature is wrong; a new URL may work.
    Expired(String),
    /// Any other answer: the URL or the object store is misconfigured.
    Refused(String),
}

impl PutError {
    pub fn message(&self) -> &str {
        match self {
            PutError::Transient(m) | PutError::Expired(m) | PutError::Refused(m) => m,
        }
    }
}

impl std::fmt::Display for PutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

/// PUTs `body` to the pre-signed `url` with Content-Length (a `&File` or a
/// byte slice: never a chunked body) and sorts the answer. `what` names the
/// upload in messages ("log chunk 3", "artifact plan.json").
pub fn presigned_put<B: ureq::AsSendBody>(
    agent: &Agent,
    url: &str,
    body: B,
    content_type: &str,
    what: &str,
) -> Result<(), PutError> {
    let shown = redact_url(url);
    let response = agent
        .put(url)
        .header("Content-Type", content_type)
        .send(body)
        .map_err(|e| PutError::Transient(format!("upload of {what} to {shown} failed: {e}")))?;
    match response.status().as_u16() {
        200..=299 => Ok(()),
        403 => Err(PutError::Expired(format!(
            "upload of {what} to {shown}: HTTP 403 (the pre-signed URL expired or its signature is wrong)"
        ))),
        status @ (408 | 429 | 500..=599) => Err(PutError::Transient(format!(
            "upload of {what} to {shown}: HTTP {status}"
        ))),
        status => Err(PutError::Refused(format!(
            "upload of {what} to {shown} was refused: HTTP {status}; the URL or the object store is misconfigured"
        ))),
    }
}

/// Calls `attempt` (with the try number, from 1) until it succeeds, fails
/// with an error `retryable` refuses, or `retry.attempts` tries are spent;
/// sleeps with [`Retry::backoff`] (jitter from `rng`, e.g. [`seed`]) between
/// tries and tells `on_retry` of each failure it retries. Returns the last
/// error.
pub fn with_retries<E>(
    retry: &Retry,
    rng: &mut u64,
    mut attempt: impl FnMut(u32) -> Result<(), E>,
    retryable: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(u32, &E),
) -> Result<(), E> {
    let tries = retry.attempts.max(1);
    let mut n = 1;
    loop {
        match attempt(n) {
            Ok(()) => return Ok(()),
            Err(e) if n < tries && retryable(&e) => {
                on_retry(n, &e);
                std::thread::sleep(retry.backoff(n, rng));
                n += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        let r = Retry {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let mut rng = 1;
        for n in 1..40 {
            let d = r.backoff(n, &mut rng);
            assert!(d <= Duration::from_secs(1));
            let exp = Duration::from_millis(100)
                .saturating_mul(1 << (n - 1).min(20))
                .min(Duration::from_secs(1));
            assert!(d >= exp / 2);
        }
    }

    /// A tiny HTTP server on 127.0.0.1 answering each request with the next
    /// status of `statuses`; returns its URL and the count of requests.
    fn answering(statuses: Vec<u16>) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!(
            "http://user:pw@{}/bucket/key?X-Amz-Signature=s",
            listener.local_addr().unwrap()
        );
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for (status, stream) in statuses.into_iter().zip(listener.incoming()) {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut len = 0usize;
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        len = v.trim().parse().unwrap();
                    }
                    if line == "\r\n" {
                        break;
                    }
                }
                let mut body = vec![0; len];
                reader.read_exact(&mut body).unwrap();
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                )
                .unwrap();
            }
        });
        (url, count)
    }

    #[test]
    fn presigned_puts_sort_answers_and_retry_only_what_may_pass() {
        let agent = agent(&Proxies::default(), &[], Timeouts::default()).unwrap();
        let quick = Retry {
            attempts: 4,
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        };
        // 503, 429, then 200: retried until it passes.
        let (url, count) = answering(vec![503, 429, 200]);
        let r = with_retries(
            &quick,
            &mut 1,
            |_| presigned_put(&agent, &url, &b"abc"[..], "text/plain", "artifact a"),
            |e| matches!(e, PutError::Transient(_)),
            |_, _| {},
        );
        assert_eq!(r, Ok(()));
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 3);
        // 403 is expired, 404 refused: neither is retried here.
        for (status, expired) in [(403, true), (404, false)] {
            let (url, count) = answering(vec![status, 200]);
            let e = with_retries(
                &quick,
                &mut 1,
                |_| presigned_put(&agent, &url, &b"abc"[..], "text/plain", "artifact a"),
                |e| matches!(e, PutError::Transient(_)),
                |_, _| {},
            )
            .unwrap_err();
            assert_eq!(matches!(e, PutError::Expired(_)), expired, "{e}");
            assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 1);
            let m = e.to_string();
            assert!(
                m.contains("artifact a") && m.contains(&status.to_string()),
                "{m}"
            );
            assert!(!m.contains("pw") && !m.contains("Signature"), "{m}");
        }
    }

    #[test]
    fn urls_are_shown_without_credentials_or_query() {
        assert_eq!(
            redact_url("https://user:pw@src.example:8443/a/b.tar.gz?X-Sig=abc&t=1#f"),
            "https://***@src.example:8443/a/b.tar.gz"
        );
        assert_eq!(redact_url("http://h/p"), "http://h/p");
        assert_eq!(redact_url("http://tok@h"), "http://***@h");
        assert_eq!(redact_url("h/p?sig"), "h/p");
        // An `@` in the path is not a credential.
        assert_eq!(redact_url("http://h/a@b?q"), "http://h/a@b");
        assert_eq!(
            redact_urls("cannot fetch https://u:secret@h/x.tgz?sig=S: refused (\"http://a:b@c\")"),
            "cannot fetch https://***@h/x.tgz refused (\"http://***@c\")"
        );
        assert_eq!(redact_urls("no url here"), "no url here");
        assert_eq!(redact_urls("odd :// alone"), "odd :// alone");
    }

    #[test]
    fn proxies_parse() {
        let p = proxy(
            "http://user:pw@proxy.local:3128/",
            &["internal.example".into()],
        )
        .unwrap();
        assert_eq!(p.host(), "proxy.local");
        assert_eq!(p.port(), 3128);
        assert_eq!(p.username(), Some("user"));
        assert!(proxy("socks5://x:1", &[]).is_err());
        assert!(proxy("http://:1", &[]).is_err());
        assert!(proxy("http://h:notaport", &[]).is_err());
    }

    #[test]
    fn agent_builds_without_proxy() {
        assert!(agent(&Proxies::default(), &[], Timeouts::default()).is_ok());
    }
}
