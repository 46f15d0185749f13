//! The one HTTP agent: ureq 3 over rustls with the aws-lc-rs provider, the
//! system roots plus `ADDITIONAL_ROOT_CAS`, the configured proxies and bounded
//! timeouts. Build it once with [`agent`] (or [`agent_from_config`]) and clone
//! it where needed (clones share the connection pool).
//!
//! HTTP statuses are not errors at this level: callers look at the status
//! (uploads retry 5xx and expired URLs, and give up on other 4xx).
//!
//! A URL is never shown as it is: [`redact_url`] (one URL) and
//! [`redact_urls`] (every URL in a message) remove credentials
//! (`user:pw@`), the query (pre-signed URLs carry their signature there) and
//! the fragment, for every line liftoff writes.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use ureq::tls::{Certificate, RootCerts, TlsConfig, TlsProvider};
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
    crate::identity::install_crypto_provider();
    let mut roots: Vec<Certificate<'static>> = rustls_native_certs::load_native_certs()
        .certs
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    roots.extend(
        extra_roots
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned()),
    );
    if roots.is_empty() {
        return Err("no trusted CA certificates for HTTPS uploads: install the system CA bundle (ca-certificates) or set ADDITIONAL_ROOT_CAS".into());
    }
    let tls = TlsConfig::builder()
        .provider(TlsProvider::Rustls)
        .root_certs(RootCerts::Specific(Arc::new(roots)))
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

#[cfg(test)]
mod tests {
    use super::*;

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
