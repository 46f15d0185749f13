//! A Distribution (v2) registry client on liftoff's one ureq agent (its
//! proxies and CA bundle): manifests and blobs of one repository.
//!
//! Order: [`Client::new`] finds the registry's credentials in
//! `SPACELIFT_DOCKER_CONFIG_DIR/config.json` (`credHelpers`, then `auths`,
//! then `credsStore`; helpers are the `docker-credential-<name> get`
//! programs, so private ECR works through `docker-credential-ecr-login`);
//! then [`Client::manifest`] and [`Client::blob`]. Each GET answers a 401
//! once with the scheme the registry names (`Bearer`: a token from its
//! realm, anonymously or with the credentials; `Basic`: the credentials),
//! follows at most [`MAX_HOPS`] redirects itself (registries send blob GETs
//! to object storage; the Authorization header is not sent to another
//! host), and tries network errors, 408, 429 and 5xx again with backoff.
//! Blobs are hashed while they stream and checked against their digest and
//! size before the caller keeps them; a cut blob is downloaded again from
//! its start (3 tries in all, one GET each). [`Client::deadline`] bounds
//! every request; [`Client::cancel`] stops the pull before its next request
//! or blob read.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use base64::Engine;
use ureq::Agent;
use ureq::http::Response;

use super::manifest::{ACCEPT, MAX_DOC};
use super::{Error, Hasher, Reference};

/// Redirects followed for one GET.
const MAX_HOPS: usize = 5;
/// Tries of one GET (or one blob download) when the failure is transient.
const TRIES: u32 = 3;
/// Longest one blob download may take.
const BLOB_TIME: Duration = Duration::from_secs(1800);
/// Longest a manifest or token request may take.
const CALL_TIME: Duration = Duration::from_secs(120);
/// Longest a credential helper may take.
const HELPER_TIME: Duration = Duration::from_secs(30);

/// One repository of one registry.
pub struct Client<'a> {
    agent: &'a Agent,
    reference: &'a Reference,
    shown: String,
    creds: Option<(String, String)>,
    /// The Authorization header won by the last 401.
    auth: Option<String>,
    /// When every request must have ended (a run's timeout).
    pub deadline: Option<std::time::Instant>,
    /// Set when the run is cancelled: checked before each request and
    /// between the reads of a blob, so a cancel stops a pull that is
    /// moving at once (a stalled read still ends only at the deadline).
    pub cancel: Option<Arc<AtomicBool>>,
}

impl<'a> Client<'a> {
    pub fn new(
        agent: &'a Agent,
        reference: &'a Reference,
        docker_config: Option<&Path>,
    ) -> Result<Client<'a>, Error> {
        let shown = reference.to_string();
        let creds = match docker_config {
            Some(dir) => credentials(dir, &reference.registry).map_err(|detail| Error::Auth {
                image: shown.clone(),
                detail,
            })?,
            None => None,
        };
        Ok(Client {
            agent,
            reference,
            shown,
            creds,
            auth: None,
            deadline: None,
            cancel: None,
        })
    }

    /// The manifest (or index) named by `what` (a tag or digest): its bytes
    /// and their digest. Pulled by digest: the bytes must hash to it.
    pub fn manifest(&mut self, what: &str) -> Result<(Vec<u8>, String), Error> {
        let mut resp = self.get(&format!("manifests/{what}"), ACCEPT, false)?;
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(MAX_DOC)
            .read_to_vec()
            .map_err(|e| self.transient(format!("reading the manifest {what}: {e}")))?;
        let digest = super::sha256(&bytes);
        if what.starts_with("sha256:") && digest != what {
            return Err(Error::Digest {
                image: self.shown.clone(),
                blob: format!("manifest {what}"),
                got: digest,
            });
        }
        Ok((bytes, digest))
    }

    /// Downloads blob `digest` of `size` bytes into `out` (from its start),
    /// checking both; a cut download is tried again.
    pub fn blob(&mut self, digest: &str, size: u64, out: &mut File) -> Result<(), Error> {
        retrying(|| self.blob_once(digest, size, out))
    }

    fn blob_once(&mut self, digest: &str, size: u64, out: &mut File) -> Result<(), Error> {
        let cache = |e: std::io::Error| Error::Cache {
            path: format!("blob {digest}"),
            detail: e.to_string(),
        };
        out.set_len(0).map_err(cache)?;
        out.rewind().map_err(cache)?;
        // One GET per try: [`Client::blob`] tries again (a retrying GET
        // here would multiply the tries).
        let resp = self.get_once(&format!("blobs/{digest}"), "*/*", true)?;
        let mut body = resp.into_body().into_reader();
        let mut hash = Hasher::new();
        let mut got = 0u64;
        let mut buf = vec![0u8; 256 << 10];
        loop {
            self.check_cancel()?;
            let k = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(self.transient(format!("downloading blob {digest}: {e}")));
                }
            };
            got += k as u64;
            if got > size {
                return Err(Error::Malformed {
                    image: self.shown.clone(),
                    detail: format!(
                        "blob {digest} is longer than the {size} bytes the manifest says"
                    ),
                });
            }
            hash.update(&buf[..k]);
            out.write_all(&buf[..k]).map_err(cache)?;
        }
        if got < size {
            return Err(self.transient(format!(
                "blob {digest}: the connection ended after {got} of {size} bytes"
            )));
        }
        let h = hash.finish();
        if h != digest {
            return Err(Error::Digest {
                image: self.shown.clone(),
                blob: format!("blob {digest}"),
                got: h,
            });
        }
        out.flush().map_err(cache)?;
        Ok(())
    }

    /// `Err(Cancelled)` once the run is cancelled.
    fn check_cancel(&self) -> Result<(), Error> {
        match &self.cancel {
            Some(c) if c.load(Ordering::SeqCst) => Err(Error::Cancelled {
                image: self.shown.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn transient(&self, detail: String) -> Error {
        Error::Registry {
            image: self.shown.clone(),
            detail,
            transient: true,
        }
    }

    /// GET `/v2/<repository>/<path>`, tried again while the failure is
    /// transient.
    fn get(&mut self, path: &str, accept: &str, long: bool) -> Result<Response<ureq::Body>, Error> {
        retrying(|| self.get_once(path, accept, long))
    }

    fn get_once(
        &mut self,
        path: &str,
        accept: &str,
        long: bool,
    ) -> Result<Response<ureq::Body>, Error> {
        let r = self.reference;
        let mut url = format!("https://{}/v2/{}/{path}", r.api_host(), r.repository);
        let origin = origin(&url).to_string();
        let mut answered_401 = false;
        let mut hops = 0;
        loop {
            self.check_cancel()?;
            let home = origin == self.origin_of(&url);
            let mut req = self.agent.get(&url).header("Accept", accept);
            if let (true, Some(a)) = (home, &self.auth) {
                req = req.header("Authorization", a);
            }
            let mut budget = if long { BLOB_TIME } else { CALL_TIME };
            if let Some(d) = self.deadline {
                budget = budget.min(d.saturating_duration_since(std::time::Instant::now()));
                if budget.is_zero() {
                    return Err(self.refused(format!("{DEADLINE} while pulling the image")));
                }
            }
            req = req.config().timeout_global(Some(budget)).build();
            let shown_url = crate::http::redact_url(&url);
            let resp = req
                .call()
                .map_err(|e| self.transient(format!("GET {shown_url} failed: {e}")))?;
            let status = resp.status().as_u16();
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            match status {
                200..=299 => return Ok(resp),
                301 | 302 | 303 | 307 | 308 => {
                    hops += 1;
                    let Some(loc) = header("location") else {
                        return Err(self.refused(format!(
                            "HTTP {status} without a Location from {shown_url}"
                        )));
                    };
                    if hops > MAX_HOPS {
                        return Err(self
                            .refused(format!("more than {MAX_HOPS} redirects from {shown_url}")));
                    }
                    url = if loc.starts_with("https://") || loc.starts_with("http://") {
                        loc
                    } else if loc.starts_with('/') {
                        format!("{}{loc}", self.origin_of(&url))
                    } else {
                        return Err(
                            self.refused(format!("a relative redirect {loc:?} from {shown_url}"))
                        );
                    };
                }
                401 if home && !answered_401 => {
                    answered_401 = true;
                    let challenge = header("www-authenticate").unwrap_or_default();
                    self.authenticate(&challenge)?;
                }
                401 | 403 => {
                    return Err(Error::Auth {
                        image: self.shown.clone(),
                        detail: format!("HTTP {status} from {shown_url}"),
                    });
                }
                404 => {
                    return Err(Error::NotFound {
                        image: self.shown.clone(),
                        detail: format!("HTTP 404 from {shown_url}"),
                    });
                }
                408 | 429 | 500..=599 => {
                    return Err(self.transient(format!("HTTP {status} from {shown_url}")));
                }
                _ => return Err(self.refused(format!("HTTP {status} from {shown_url}"))),
            }
        }
    }

    fn origin_of<'u>(&self, url: &'u str) -> &'u str {
        origin(url)
    }

    fn refused(&self, detail: String) -> Error {
        Error::Registry {
            image: self.shown.clone(),
            detail,
            transient: false,
        }
    }

    /// Answers a 401's `WWW-Authenticate` challenge: sets [`Client::auth`].
    fn authenticate(&mut self, challenge: &str) -> Result<(), Error> {
        let (scheme, params) = parse_challenge(challenge);
        let basic = self.creds.as_ref().map(|(u, p)| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let denied = |detail: String| Error::Auth {
            image: self.shown.clone(),
            detail,
        };
        if scheme.eq_ignore_ascii_case("basic") {
            self.auth = Some(basic.ok_or_else(|| {
                denied(
                    "the registry wants a user name and password and config.json has none for it"
                        .into(),
                )
            })?);
            return Ok(());
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(denied(format!(
                "the registry asks for authentication scheme {scheme:?}, which liftoff does not speak"
            )));
        }
        let param = |k: &str| {
            params
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let realm =
            param("realm").filter(|r| r.starts_with("https://") || r.starts_with("http://"));
        let Some(realm) = realm else {
            return Err(denied(
                "the registry's Bearer challenge names no http(s) realm".into(),
            ));
        };
        let scope = param("scope")
            .map(str::to_string)
            .unwrap_or_else(|| format!("repository:{}:pull", self.reference.repository));
        let mut url = format!(
            "{realm}{}scope={}",
            if realm.contains('?') { '&' } else { '?' },
            encode(&scope)
        );
        if let Some(s) = param("service") {
            url.push_str(&format!("&service={}", encode(s)));
        }
        let mut req = self.agent.get(&url);
        if let Some(b) = &basic {
            req = req.header("Authorization", b);
        }
        let shown_url = crate::http::redact_url(&url);
        let mut resp = req
            .call()
            .map_err(|e| self.transient(format!("token request to {shown_url} failed: {e}")))?;
        match resp.status().as_u16() {
            200..=299 => {}
            s @ (401 | 403) => {
                return Err(denied(format!(
                    "the token service {shown_url} answered HTTP {s}{}",
                    if basic.is_some() {
                        " to the credentials in config.json"
                    } else {
                        " to an anonymous request"
                    }
                )));
            }
            s => {
                return Err(
                    self.transient(format!("the token service {shown_url} answered HTTP {s}"))
                );
            }
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| self.transient(format!("reading the token from {shown_url}: {e}")))?;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let token = v
            .get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()));
        let Some(token) = token else {
            return Err(self.refused(format!(
                "the token service {shown_url} answered without a token"
            )));
        };
        self.auth = Some(format!("Bearer {token}"));
        Ok(())
    }
}

/// `once` until it succeeds or fails for good: a transient registry error
/// is tried again (at most [`TRIES`] in all, with backoff); the final error
/// names the earlier one ([`after`]).
fn retrying<T>(mut once: impl FnMut() -> Result<T, Error>) -> Result<T, Error> {
    let mut n = 1;
    let mut rng = crate::http::seed();
    let mut last = None;
    loop {
        match once() {
            Err(Error::Registry {
                transient: true,
                detail,
                ..
            }) if n < TRIES => {
                last = Some(detail);
                std::thread::sleep(retry().backoff(n, &mut rng));
                n += 1;
            }
            r => return r.map_err(|e| after(e, last)),
        }
    }
}

/// The error that ended the tries, naming what failed the try before when
/// that is the real cause (the deadline ran out while waiting to try a
/// stalled or failing request again).
fn after(e: Error, last: Option<String>) -> Error {
    match (e, last) {
        (
            Error::Registry {
                image,
                detail,
                transient,
            },
            Some(last),
        ) if detail.starts_with(DEADLINE) => Error::Registry {
            image,
            detail: format!("{detail} (the try before: {last})"),
            transient,
        },
        (e, _) => e,
    }
}

/// How the deadline error starts.
const DEADLINE: &str = "the run's timeout ran out";

fn retry() -> crate::http::Retry {
    crate::http::Retry {
        attempts: TRIES,
        base: Duration::from_millis(500),
        max: Duration::from_secs(5),
    }
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    let end = url[after..].find('/').map_or(url.len(), |i| after + i);
    &url[..end]
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `Bearer realm="x",service="y"` → ("Bearer", [(realm, x), (service, y)]).
fn parse_challenge(h: &str) -> (String, Vec<(String, String)>) {
    let h = h.trim();
    let (scheme, mut rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq].trim().to_string();
        rest = &rest[eq + 1..];
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let end = r.find('"').unwrap_or(r.len());
            value = r[..end].to_string();
            rest = r.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        params.push((key, value));
    }
    (scheme.to_string(), params)
}

/// The names Docker Hub's credentials may be stored under.
const HUB_KEYS: &[&str] = &[
    "https://index.docker.io/v1/",
    "index.docker.io",
    "docker.io",
    "registry-1.docker.io",
];

/// `https://host/v1/` → `host`.
fn key_host(k: &str) -> &str {
    let k = k.split_once("://").map_or(k, |(_, r)| r);
    k.split('/').next().unwrap_or(k)
}

/// The user name and password for `registry` from `dir/config.json`, if
/// any. A missing file means no credentials; a bad one is an error.
pub fn credentials(dir: &Path, registry: &str) -> Result<Option<(String, String)>, String> {
    let path = dir.join("config.json");
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let v: serde_json::Value = serde_json::from_slice(&text)
        .map_err(|e| format!("{} is not valid JSON: {e}", path.display()))?;
    let hub = registry == "docker.io";
    let matches = |k: &str| {
        if hub {
            HUB_KEYS.iter().any(|h| key_host(h) == key_host(k))
        } else {
            key_host(k) == registry
        }
    };
    let server = if hub { HUB_KEYS[0] } else { registry };
    let find = |field: &str| {
        v.get(field)
            .and_then(|m| m.as_object())
            .and_then(|m| m.iter().find(|(k, _)| matches(k)).map(|(_, v)| v.clone()))
    };
    if let Some(helper) = find("credHelpers").as_ref().and_then(|h| h.as_str()) {
        return helper_get(helper, server).map(Some);
    }
    if let Some(entry) = find("auths") {
        let field = |k: &str| {
            entry
                .get(k)
                .and_then(|x| x.as_str())
                .filter(|s| !s.is_empty())
        };
        if let Some(auth) = field("auth") {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|_| format!("{}: auths.{registry}.auth is not base64", path.display()))?;
            let raw = String::from_utf8(raw)
                .map_err(|_| format!("{}: auths.{registry}.auth is not text", path.display()))?;
            let (u, p) = raw.split_once(':').ok_or_else(|| {
                format!(
                    "{}: auths.{registry}.auth is not user:password",
                    path.display()
                )
            })?;
            return Ok(Some((u.into(), p.into())));
        }
        if let (Some(u), Some(p)) = (field("username"), field("password")) {
            return Ok(Some((u.into(), p.into())));
        }
        if field("identitytoken").is_some() {
            return Err(format!(
                "{}: auths.{registry} holds an identitytoken, which liftoff does not support yet; use auth, or a credential helper",
                path.display()
            ));
        }
    }
    if let Some(store) = v.get("credsStore").and_then(|s| s.as_str()) {
        return helper_get(store, server).map(Some);
    }
    Ok(None)
}

/// `docker-credential-<helper> get` with `server` on its standard input.
fn helper_get(helper: &str, server: &str) -> Result<(String, String), String> {
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!("credential helper name {helper:?} is not valid"));
    }
    let program = format!("docker-credential-{helper}");
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program} (install it on the PATH): {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(HELPER_TIME) {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(format!("{program} failed: {e}")),
        Err(_) => {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return Err(format!(
                "{program} did not answer within {}s",
                HELPER_TIME.as_secs()
            ));
        }
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "{program} get failed ({}): {}",
            out.status,
            err.trim().chars().take(300).collect::<String>()
        ));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|_| format!("{program} get did not print JSON"))?;
    let get = |k: &str| v.get(k).and_then(|x| x.as_str()).unwrap_or("").to_string();
    let (u, s) = (get("Username"), get("Secret"));
    if u == "<token>" {
        return Err(format!(
            "{program} returned an identity token, which liftoff does not support yet"
        ));
    }
    Ok((u, s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token?a=b",service="reg,istry",scope="repository:x:pull""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(
            p[0],
            ("realm".into(), "https://auth.example/token?a=b".into())
        );
        assert_eq!(p[1], ("service".into(), "reg,istry".into()));
        assert_eq!(p[2].1, "repository:x:pull");
        assert_eq!(
            parse_challenge("Basic realm=x").1,
            vec![("realm".into(), "x".into())]
        );
        assert_eq!(origin("https://h:5/v2/x"), "https://h:5");
        assert_eq!(encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }

    #[test]
    fn config_json_auths_are_found_by_host() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("config.json"),
            r#"{"auths": {"https://reg.example:5000": {"auth": "dTpw"}, "https://index.docker.io/v1/": {"username": "h", "password": "q"}}}"#,
        )
        .unwrap();
        assert_eq!(
            credentials(d.path(), "reg.example:5000").unwrap(),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(
            credentials(d.path(), "docker.io").unwrap(),
            Some(("h".into(), "q".into()))
        );
        assert_eq!(credentials(d.path(), "other.example").unwrap(), None);
        std::fs::write(
            d.path().join("config.json"),
            r#"{"credHelpers": {"x.example": "no-such-helper-liftoff"}}"#,
        )
        .unwrap();
        let e = credentials(d.path(), "x.example").unwrap_err();
        assert!(
            e.contains("docker-credential-no-such-helper-liftoff"),
            "{e}"
        );
    }
}
