//! Where release artifacts come from, in the order they are tried:
//!
//! 1. a local directory (`LIFTOFF_TOOLS_DIR`, the air-gapped case) holding
//!    the vendors' files under their published names, flat or one
//!    subdirectory per version (`1.8.5/` or `v1.8.5/`);
//! 2. a mirror (`LIFTOFF_TOOLS_MIRROR`): OpenTofu's TofuDL layout (an
//!    `api.json` version list plus a download URL template) when the URL
//!    ends in `.json`, else a copy of releases.hashicorp.com's layout
//!    (`<base>/<product>/index.json`, `<base>/<product>/<version>/<file>`);
//! 3. upstream (OpenTofu's TofuDL API and GitHub release downloads;
//!    releases.hashicorp.com), only when neither of the above is set: an
//!    operator who names a directory or a mirror means liftoff not to go
//!    out.
//!
//! Call order: [`sources`] from the configuration, then per source
//! [`Source::versions`] (for a constraint) and [`Source::fetch`] for each
//! file. `fetch` answers `Ok(None)` for a file the source does not have, so
//! the caller can try the next source; every other problem is an error.
//! HTTP goes through the launcher's agent; redirects (GitHub's downloads
//! redirect to object storage) are followed here, at most
//! [`MAX_REDIRECTS`], never from https to http.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::ToolName;
use super::version::Version;

/// Redirects followed per download.
pub const MAX_REDIRECTS: usize = 5;
/// Largest version list or checksum file read.
pub const MAX_LIST: u64 = 64 << 20;
/// Largest release archive read.
pub const MAX_ARCHIVE: u64 = 512 << 20;
/// A whole download (a 100 MB archive on a slow link).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(600);

const TOFU_API: &str = "https://get.opentofu.org/tofu/api.json";
const TOFU_DOWNLOADS: &str =
    "https://github.com/opentofu/opentofu/releases/download/v{version}/{artifact}";
const HASHICORP_RELEASES: &str = "https://releases.hashicorp.com";

/// What went wrong with a source (the caller adds tool and version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceError {
    /// Cannot be reached (connection refused, DNS, timeout, HTTP 5xx).
    Down(String),
    /// Answered something that is not what was asked for.
    Garbage(String),
    /// This source does not serve this tool at all.
    NotServed(String),
    /// The run was cancelled while waiting for the tool.
    Cancelled,
    /// The run's timeout ran out while waiting for the tool.
    Deadline,
}

/// How long a run waits for its tool: until its timeout, or its
/// cancellation. Every request's timeout is the time left (at most
/// [`DOWNLOAD_TIMEOUT`]); a body is read in pieces, each checking both.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub deadline: Option<Instant>,
    pub cancel: Option<Arc<AtomicBool>>,
}

impl Bound {
    /// The time left for one request, or why there is none.
    pub fn left(&self) -> Result<Duration, SourceError> {
        if self
            .cancel
            .as_ref()
            .is_some_and(|c| c.load(Ordering::SeqCst))
        {
            return Err(SourceError::Cancelled);
        }
        match self.deadline {
            None => Ok(DOWNLOAD_TIMEOUT),
            Some(d) => match d.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Ok(left.min(DOWNLOAD_TIMEOUT)),
                _ => Err(SourceError::Deadline),
            },
        }
    }
}

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SourceError::Down(m) | SourceError::Garbage(m) | SourceError::NotServed(m) => {
                f.write_str(m)
            }
            SourceError::Cancelled => f.write_str("the run was cancelled while the tool was fetched"),
            SourceError::Deadline => f.write_str(
                "the run's timeout ran out while the tool was fetched: raise the run's timeout, or pre-seed the host with `liftoff tool install`",
            ),
        }
    }
}

/// One place release artifacts come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dir(PathBuf),
    /// TofuDL: the `api.json` URL and the download URL template.
    TofuDl {
        api: String,
        template: String,
    },
    /// releases.hashicorp.com's layout under `base`.
    Releases {
        base: String,
    },
}

/// The sources for `tool`, in order (see the module doc).
pub fn sources(dir: Option<&Path>, mirror: Option<&str>, tool: ToolName) -> Vec<Source> {
    let mut out = Vec::new();
    if let Some(d) = dir {
        out.push(Source::Dir(d.to_path_buf()));
    }
    if let Some(m) = mirror {
        out.push(parse_mirror(m).unwrap_or(Source::Releases {
            base: m.to_string(),
        }));
    }
    if out.is_empty() {
        out.push(match tool {
            ToolName::OpenTofu => Source::TofuDl {
                api: TOFU_API.into(),
                template: TOFU_DOWNLOADS.into(),
            },
            ToolName::Terraform => Source::Releases {
                base: HASHICORP_RELEASES.into(),
            },
        });
    }
    out
}

/// Reads `LIFTOFF_TOOLS_MIRROR`: `URL` (releases layout) or
/// `URL/api.json [TEMPLATE]` (TofuDL; the template defaults to
/// `<api.json's directory>/v{version}/{artifact}`; `{{ .Version }}` and
/// `{{ .Artifact }}` are understood too).
pub fn parse_mirror(text: &str) -> Result<Source, String> {
    let text = text.trim();
    let (url, template) = match text.split_once(char::is_whitespace) {
        Some((u, t)) => (u, Some(t.trim())),
        None => (text, None),
    };
    if url.is_empty() {
        return Err("empty mirror".into());
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!("{url:?} is not an http:// or https:// URL"));
    }
    if url.ends_with(".json") {
        let dir = url.rsplit_once('/').map_or(url, |(d, _)| d);
        let template = template
            .map(str::to_string)
            .unwrap_or_else(|| format!("{dir}/v{{version}}/{{artifact}}"));
        let normal = template
            .replace("{{ .Version }}", "{version}")
            .replace("{{.Version}}", "{version}")
            .replace("{{ .Artifact }}", "{artifact}")
            .replace("{{.Artifact}}", "{artifact}");
        if !normal.contains("{artifact}") || normal.contains(char::is_whitespace) {
            return Err(format!(
                "the download URL template {normal:?} must be one URL with {{artifact}} (and {{version}})"
            ));
        }
        return Ok(Source::TofuDl {
            api: url.to_string(),
            template: normal,
        });
    }
    if template.is_some() {
        return Err("a download URL template goes with a TofuDL api.json URL only".into());
    }
    Ok(Source::Releases {
        base: url.trim_end_matches('/').to_string(),
    })
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Dir(d) => write!(f, "directory {} (LIFTOFF_TOOLS_DIR)", d.display()),
            Source::TofuDl { api, .. } => {
                write!(f, "TofuDL mirror {}", crate::http::redact_url(api))
            }
            Source::Releases { base } => {
                write!(f, "release mirror {}", crate::http::redact_url(base))
            }
        }
    }
}

impl Source {
    /// The versions this source offers for `tool`.
    pub fn versions(
        &self,
        agent: &ureq::Agent,
        tool: ToolName,
        bound: &Bound,
    ) -> Result<Vec<Version>, SourceError> {
        let p = tool.product();
        let mut out = Vec::new();
        match self {
            Source::Dir(d) => {
                let suffix = "_SHA256SUMS";
                let mut names = Vec::new();
                let entries = std::fs::read_dir(d)
                    .map_err(|e| SourceError::Down(format!("cannot read {}: {e}", d.display())))?;
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if e.path().is_dir() {
                        if let Ok(sub) = std::fs::read_dir(e.path()) {
                            names.extend(
                                sub.flatten()
                                    .map(|s| s.file_name().to_string_lossy().into_owned()),
                            );
                        }
                    } else {
                        names.push(name);
                    }
                }
                for n in names {
                    if let Some(v) = n
                        .strip_prefix(&format!("{p}_"))
                        .and_then(|r| r.strip_suffix(suffix))
                        .and_then(|v| Version::parse(v).ok())
                    {
                        out.push(v);
                    }
                }
            }
            Source::TofuDl { api, .. } => {
                if tool != ToolName::OpenTofu {
                    return Err(SourceError::NotServed(format!(
                        "the TofuDL mirror {} serves OpenTofu only; set LIFTOFF_TOOLS_MIRROR to a releases.hashicorp.com-layout mirror for Terraform",
                        crate::http::redact_url(api)
                    )));
                }
                let body = get(agent, api, MAX_LIST, bound)?.ok_or_else(|| {
                    SourceError::Garbage(format!("{} answered 404", crate::http::redact_url(api)))
                })?;
                let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                    SourceError::Garbage(format!(
                        "{} is not a TofuDL api.json: {e}",
                        crate::http::redact_url(api)
                    ))
                })?;
                let list = doc["versions"].as_array().ok_or_else(|| {
                    SourceError::Garbage(format!(
                        "{} is not a TofuDL api.json: no \"versions\" list",
                        crate::http::redact_url(api)
                    ))
                })?;
                out.extend(
                    list.iter()
                        .filter_map(|v| v["id"].as_str())
                        .filter_map(|id| Version::parse(id).ok()),
                );
            }
            Source::Releases { base } => {
                let url = format!("{base}/{p}/index.json");
                let body = get(agent, &url, MAX_LIST, bound)?.ok_or_else(|| {
                    SourceError::Garbage(format!(
                        "{} answered 404: it is not a releases.hashicorp.com-layout mirror of {p}",
                        crate::http::redact_url(&url)
                    ))
                })?;
                let doc: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
                    SourceError::Garbage(format!(
                        "{} is not a release index: {e}",
                        crate::http::redact_url(&url)
                    ))
                })?;
                let map = doc["versions"].as_object().ok_or_else(|| {
                    SourceError::Garbage(format!(
                        "{} is not a release index: no \"versions\" object",
                        crate::http::redact_url(&url)
                    ))
                })?;
                out.extend(map.keys().filter_map(|k| Version::parse(k).ok()));
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// One file of `tool`'s release `version`; `Ok(None)` when the source
    /// does not have it.
    pub fn fetch(
        &self,
        agent: &ureq::Agent,
        tool: ToolName,
        version: &Version,
        file: &str,
        max: u64,
        bound: &Bound,
    ) -> Result<Option<Vec<u8>>, SourceError> {
        match self {
            Source::Dir(d) => {
                for p in [
                    d.join(file),
                    d.join(version.to_string()).join(file),
                    d.join(format!("v{version}")).join(file),
                ] {
                    match read_bounded(&p, max) {
                        Ok(data) => return Ok(Some(data)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(SourceError::Down(format!(
                                "cannot read {}: {e}",
                                p.display()
                            )));
                        }
                    }
                }
                Ok(None)
            }
            Source::TofuDl { template, .. } => {
                if tool != ToolName::OpenTofu {
                    return Ok(None);
                }
                let url = template
                    .replace("{version}", &version.to_string())
                    .replace("{artifact}", file);
                get(agent, &url, max, bound)
            }
            Source::Releases { base } => {
                let url = format!("{base}/{}/{version}/{file}", tool.product());
                get(agent, &url, max, bound)
            }
        }
    }
}

/// A regular file's bytes, at most `max`.
fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(path)?;
    let meta = f.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > max {
        return Err(std::io::Error::other(format!(
            "{} bytes, more than {max}",
            meta.len()
        )));
    }
    let mut data = Vec::with_capacity(meta.len() as usize);
    f.take(max).read_to_end(&mut data)?;
    Ok(data)
}

/// GETs `url` following redirects (see the module doc); `Ok(None)` on 404
/// or 410. Each request gets the time `bound` leaves; the body is read in
/// pieces so a cancellation or the deadline ends a slow download.
pub fn get(
    agent: &ureq::Agent,
    url: &str,
    max: u64,
    bound: &Bound,
) -> Result<Option<Vec<u8>>, SourceError> {
    let mut url = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        let shown = crate::http::redact_url(&url);
        let left = bound.left()?;
        let response = agent
            .get(&url)
            .config()
            .timeout_global(Some(left))
            .build()
            .call()
            .map_err(|e| {
                bound
                    .left()
                    .err()
                    .unwrap_or_else(|| SourceError::Down(format!("cannot reach {shown}: {e}")))
            })?;
        let status = response.status().as_u16();
        match status {
            200..=299 => {
                let mut data = Vec::new();
                let mut body = response.into_body().into_with_config().limit(max).reader();
                let mut piece = vec![0u8; 64 << 10];
                loop {
                    let n = body.read(&mut piece).map_err(|e| {
                        bound.left().err().unwrap_or_else(|| {
                            SourceError::Down(format!(
                                "reading {shown} failed (cut short, or more than {max} bytes): {e}"
                            ))
                        })
                    })?;
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&piece[..n]);
                    bound.left()?;
                }
                return Ok(Some(data));
            }
            301 | 302 | 303 | 307 | 308 => {
                let location = response
                    .headers()
                    .get("location")
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| {
                        SourceError::Garbage(format!(
                            "{shown} redirects (HTTP {status}) without a Location"
                        ))
                    })?;
                let next = join(&url, location);
                if url.starts_with("https://") && !next.starts_with("https://") {
                    return Err(SourceError::Garbage(format!(
                        "{shown} redirects from https to {}: refused",
                        crate::http::redact_url(&next)
                    )));
                }
                if !(next.starts_with("http://") || next.starts_with("https://")) {
                    return Err(SourceError::Garbage(format!(
                        "{shown} redirects to a non-HTTP URL: refused"
                    )));
                }
                url = next;
            }
            404 | 410 => return Ok(None),
            s if s >= 500 || s == 408 || s == 429 => {
                return Err(SourceError::Down(format!("{shown} answered HTTP {s}")));
            }
            s => {
                return Err(SourceError::Garbage(format!("{shown} answered HTTP {s}")));
            }
        }
    }
    Err(SourceError::Garbage(format!(
        "{} redirects more than {MAX_REDIRECTS} times",
        crate::http::redact_url(&url)
    )))
}

/// Resolves a Location against the URL it came from.
fn join(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("http", base));
    let host = rest.split('/').next().unwrap_or("");
    if let Some(l) = location.strip_prefix("//") {
        return format!("{scheme}://{l}");
    }
    if location.starts_with('/') {
        return format!("{scheme}://{host}{location}");
    }
    let dir = base
        .split(['?', '#'])
        .next()
        .unwrap_or(base)
        .rsplit_once('/')
        .map_or(base, |(d, _)| d);
    format!("{dir}/{location}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mirrors_parse() {
        assert_eq!(
            parse_mirror("https://m.example/tofu/api.json").unwrap(),
            Source::TofuDl {
                api: "https://m.example/tofu/api.json".into(),
                template: "https://m.example/tofu/v{version}/{artifact}".into()
            }
        );
        assert_eq!(
            parse_mirror("https://m/api.json https://d/{{ .Version }}/{{ .Artifact }}").unwrap(),
            Source::TofuDl {
                api: "https://m/api.json".into(),
                template: "https://d/{version}/{artifact}".into()
            }
        );
        assert_eq!(
            parse_mirror("https://m/releases/").unwrap(),
            Source::Releases {
                base: "https://m/releases".into()
            }
        );
        for bad in [
            "ftp://x",
            "https://m/api.json https://d/{version}",
            "https://m x",
            "https://m/api.json a b",
        ] {
            assert!(parse_mirror(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn redirects_resolve() {
        assert_eq!(join("https://a/b/c", "https://x/y"), "https://x/y");
        assert_eq!(join("https://a/b/c?q", "/z"), "https://a/z");
        assert_eq!(join("https://a/b/c", "d"), "https://a/b/d");
        assert_eq!(join("https://a/b/c", "//e/f"), "https://e/f");
    }

    #[test]
    fn upstream_only_when_nothing_is_configured() {
        let s = sources(None, None, ToolName::Terraform);
        assert_eq!(
            s,
            vec![Source::Releases {
                base: HASHICORP_RELEASES.into()
            }]
        );
        let s = sources(Some(Path::new("/srv/tools")), None, ToolName::OpenTofu);
        assert_eq!(s, vec![Source::Dir("/srv/tools".into())]);
    }
}
