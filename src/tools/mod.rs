//! OpenTofu and Terraform for runs: the version a run asks for, downloaded
//! from a local directory, a mirror or upstream, verified, cached and
//! leased to the run, which mounts it read-only and puts it on PATH.
//!
//! Call order: [`Tools::open`] once (compiled-in vendor keys plus
//! `LIFTOFF_TOOLS_KEYS`, the cache, the sources); per run [`Tools::provide`]:
//!
//! 1. the version: an exact one as given, a constraint resolved to the
//!    newest match in the first source that lists one ([`version`]);
//! 2. the cache ([`cache::Cache::lease`]): a cached version is used as is;
//! 3. otherwise, under the version's install lock (concurrent runs download
//!    once), from the first source that has it ([`source`]):
//!    `<p>_<v>_SHA256SUMS` and its signature (`.gpgsig` for OpenTofu,
//!    `.sig` for Terraform) are fetched and the signature checked against
//!    the trusted keys ([`openpgp`], [`keys`]); then the archive
//!    `<p>_<v>_<os>_<arch>.zip`, its SHA-256 checked against the signed
//!    list, and the binary taken out of it ([`zip`]); only then is anything
//!    written to the cache ([`cache::Cache::install`]);
//! 4. the cache is pruned to its budget, never removing a leased version.
//!
//! Every failure is a [`ToolError`] naming the tool, the version, the
//! source and what to do. Nothing unverified is written or run.

pub mod cache;
pub mod keys;
pub mod openpgp;
pub mod source;
pub mod version;
pub mod zip;

use crate::metrics::launcher::TOOL_CACHE;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use self::cache::{Cache, Lease};
use self::openpgp::Keyring;
pub use self::source::Bound;
use self::source::{Source, SourceError};
use self::version::{Constraint, Version};

/// The tools a run may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolName {
    #[serde(rename = "opentofu")]
    OpenTofu,
    Terraform,
}

impl ToolName {
    /// The run spec's and the cache's name.
    pub fn name(self) -> &'static str {
        match self {
            ToolName::OpenTofu => "opentofu",
            ToolName::Terraform => "terraform",
        }
    }

    /// The release files' prefix (`tofu_1.8.5_SHA256SUMS`).
    pub fn product(self) -> &'static str {
        match self {
            ToolName::OpenTofu => "tofu",
            ToolName::Terraform => "terraform",
        }
    }

    /// The executable's name, in the archive and on PATH.
    pub fn binary(self) -> &'static str {
        self.product()
    }

    /// The OpenPGP signature of `SHA256SUMS`.
    fn signature_suffix(self) -> &'static str {
        match self {
            ToolName::OpenTofu => ".gpgsig",
            ToolName::Terraform => ".sig",
        }
    }

    pub fn parse(text: &str) -> Result<ToolName, String> {
        match text {
            "opentofu" | "tofu" => Ok(ToolName::OpenTofu),
            "terraform" => Ok(ToolName::Terraform),
            other => Err(format!("unknown tool {other:?}: use opentofu or terraform")),
        }
    }
}

/// What went wrong, for [`ToolError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// No source has this version.
    NotFound,
    /// No listed version matches the constraint.
    NoMatch(Vec<String>),
    /// The source is down or answered garbage.
    Source(SourceError),
    /// `SHA256SUMS` has no signature next to it.
    Unsigned(String),
    /// The signature did not verify.
    Signature {
        file: String,
        error: openpgp::PgpError,
    },
    /// The checksum list is malformed or lacks this platform's archive.
    Checksums(String),
    /// The archive's SHA-256 is not the signed one.
    Checksum {
        file: String,
        got: String,
        want: String,
    },
    /// The archive is damaged, escapes, or lacks the binary.
    Archive { file: String, error: zip::ZipError },
    /// The cache could not be written.
    Cache(String),
}

/// A tool that could not be provided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolError {
    pub tool: ToolName,
    /// The version or constraint asked for, or the resolved version.
    pub version: String,
    /// Where it was looked for.
    pub source: String,
    pub problem: Box<Problem>,
}

impl fmt::Display for ToolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (t, v, s) = (self.tool.name(), &self.version, &self.source);
        match &*self.problem {
            Problem::NotFound => write!(
                f,
                "{t} {v} not found in {s}: check the version, or add its release files there"
            ),
            Problem::NoMatch(listed) => write!(
                f,
                "{t}: no version matching {v:?} in {s} (it lists {}): change the constraint or add a matching release",
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    listed.join(", ")
                }
            ),
            Problem::Source(e) => write!(f, "{t} {v}: {s}: {e}"),
            Problem::Unsigned(file) => write!(
                f,
                "{t} {v}: {s} has no {file}: an unsigned SHA256SUMS is never trusted; add the vendor's signature file"
            ),
            Problem::Signature { file, error } => write!(
                f,
                "{t} {v}: the signature {file} from {s} was refused: {error}; nothing was installed"
            ),
            Problem::Checksums(m) => write!(f, "{t} {v}: SHA256SUMS from {s}: {m}"),
            Problem::Checksum { file, got, want } => write!(
                f,
                "{t} {v}: {file} from {s} has SHA-256 {got}, but the signed SHA256SUMS says {want}: the download is damaged or was tampered with; nothing was installed"
            ),
            Problem::Archive { file, error } => write!(
                f,
                "{t} {v}: {file} from {s}: {error}; nothing was installed"
            ),
            Problem::Cache(m) => write!(f, "{t} {v}: {m}"),
        }
    }
}

impl std::error::Error for ToolError {}

/// Where tools come from and go to, from the configuration.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    pub dir: Option<PathBuf>,
    pub mirror: Option<String>,
    pub keys: Option<PathBuf>,
    pub cache_dir: PathBuf,
    pub cache_max_bytes: u64,
}

impl Settings {
    pub fn from_config(c: &crate::config::Config) -> Settings {
        Settings {
            dir: c.tools_dir.clone(),
            mirror: c.tools_mirror.clone(),
            keys: c.tools_keys.clone(),
            cache_dir: c.tools_cache_dir.clone(),
            cache_max_bytes: c.tools_cache_max_bytes,
        }
    }
}

/// The tool room: see the module doc.
pub struct Tools {
    settings: Settings,
    keys: Keyring,
    cache: Cache,
    agent: ureq::Agent,
}

impl Tools {
    /// Loads the keys and opens the cache; an error is a configuration
    /// error (exit 78).
    pub fn open(settings: Settings, agent: ureq::Agent) -> Result<Tools, String> {
        if let Some(m) = &settings.mirror {
            source::parse_mirror(m).map_err(|e| format!("LIFTOFF_TOOLS_MIRROR: {e}"))?;
        }
        let keys = keys::trusted(settings.keys.as_deref())?;
        let cache = Cache::open(&settings.cache_dir, settings.cache_max_bytes)?;
        Ok(Tools {
            settings,
            keys,
            cache,
            agent,
        })
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    fn sources(&self, tool: ToolName) -> Vec<Source> {
        source::sources(
            self.settings.dir.as_deref(),
            self.settings.mirror.as_deref(),
            tool,
        )
    }

    fn all_sources(&self, tool: ToolName) -> String {
        self.sources(tool)
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", then ")
    }

    /// The verified tool, leased for the caller's run (see the module doc).
    /// `note` hears what happens (for the run's log).
    /// `bound` is the run's timeout and cancellation (also while waiting
    /// for another run's download of the same version).
    pub fn provide(
        &self,
        tool: ToolName,
        wanted: &str,
        bound: &Bound,
        note: &mut dyn FnMut(&str),
    ) -> Result<Lease, ToolError> {
        let fail = |version: &str, source: String, problem| ToolError {
            tool,
            version: version.to_string(),
            source,
            problem: Box::new(problem),
        };
        let constraint = Constraint::parse(wanted)
            .map_err(|e| fail(wanted, "the run spec".into(), Problem::Checksums(e)))?;
        let (version, from) = match constraint.exact() {
            Some(v) => (v.clone(), None),
            None => match self.resolve(tool, &constraint, bound) {
                Ok((v, s)) => (v, Some(s)),
                Err(e)
                    if matches!(
                        *e.problem,
                        Problem::Source(SourceError::Cancelled | SourceError::Deadline)
                    ) =>
                {
                    return Err(e);
                }
                Err(e) => {
                    // Sources unreachable: a cached match still serves.
                    let cached = self.cache.versions(tool);
                    match constraint.newest(&cached) {
                        Some(v) if matches!(*e.problem, Problem::Source(_)) => {
                            note(&format!("{e}; using the cached {} {v}", tool.name()));
                            (v.clone(), None)
                        }
                        _ => return Err(e),
                    }
                }
            },
        };
        if let Some(lease) = self.cache.lease(tool, &version) {
            note(&format!(
                "{} {version} (cached, verified when installed)",
                tool.name()
            ));
            TOOL_CACHE.hits.inc();
            return Ok(lease);
        }
        let v = version.to_string();
        let _lock = self
            .cache
            .install_lock(tool, &version, bound)
            .map_err(|p| fail(&v, self.cache.root().display().to_string(), p))?;
        if let Some(lease) = self.cache.lease(tool, &version) {
            note(&format!(
                "{} {version} (installed by another run meanwhile)",
                tool.name()
            ));
            TOOL_CACHE.hits.inc();
            return Ok(lease);
        }
        let sources = match from {
            Some(s) => vec![s],
            None => self.sources(tool),
        };
        for s in &sources {
            let Some(binary) = self.download(tool, &version, s, bound)? else {
                continue;
            };
            TOOL_CACHE.misses.inc();
            let lease = self
                .cache
                .install(tool, &version, &binary)
                .map_err(|m| fail(&v, s.to_string(), Problem::Cache(m)))?;
            note(&format!(
                "{} {version} downloaded from {s}, signature and SHA-256 verified, cached",
                tool.name()
            ));
            for r in self.cache.prune() {
                note(&format!("tool cache: removed {r} (least recently used)"));
            }
            return Ok(lease);
        }
        Err(fail(&v, self.all_sources(tool), Problem::NotFound))
    }

    /// The newest version matching `c` in the first source listing one.
    fn resolve(
        &self,
        tool: ToolName,
        c: &Constraint,
        bound: &Bound,
    ) -> Result<(Version, Source), ToolError> {
        let mut listed = Vec::new();
        for s in self.sources(tool) {
            let list = match s.versions(&self.agent, tool, bound) {
                Ok(l) => l,
                Err(SourceError::NotServed(_)) => continue,
                Err(e) => {
                    return Err(ToolError {
                        tool,
                        version: c.to_string(),
                        source: s.to_string(),
                        problem: Box::new(Problem::Source(e)),
                    });
                }
            };
            if let Some(v) = c.newest(&list) {
                return Ok((v.clone(), s));
            }
            listed.extend(list.iter().rev().take(10).map(ToString::to_string));
        }
        Err(ToolError {
            tool,
            version: c.to_string(),
            source: self.all_sources(tool),
            problem: Box::new(Problem::NoMatch(listed)),
        })
    }

    /// Fetches and verifies one release from one source: the binary's
    /// bytes, or `None` when the source does not have the release.
    fn download(
        &self,
        tool: ToolName,
        version: &Version,
        s: &Source,
        bound: &Bound,
    ) -> Result<Option<Vec<u8>>, ToolError> {
        let fail = |problem| ToolError {
            tool,
            version: version.to_string(),
            source: s.to_string(),
            problem: Box::new(problem),
        };
        let fetch = |file: &str, max| {
            s.fetch(&self.agent, tool, version, file, max, bound)
                .map_err(|e| fail(Problem::Source(e)))
        };
        let p = tool.product();
        let sums_name = format!("{p}_{version}_SHA256SUMS");
        let Some(sums) = fetch(&sums_name, source::MAX_LIST)? else {
            return Ok(None);
        };
        let sig_name = format!("{sums_name}{}", tool.signature_suffix());
        let sig = fetch(&sig_name, openpgp::MAX_INPUT as u64)?
            .ok_or_else(|| fail(Problem::Unsigned(sig_name.clone())))?;
        self.keys.verify_detached(&sums, &sig).map_err(|error| {
            fail(Problem::Signature {
                file: sig_name.clone(),
                error,
            })
        })?;
        let archive = format!("{p}_{version}_{}.zip", cache::platform());
        let want = checksum_for(&sums, &archive).map_err(|m| fail(Problem::Checksums(m)))?;
        let zip_bytes = fetch(&archive, source::MAX_ARCHIVE)?.ok_or_else(|| {
            fail(Problem::Checksums(format!(
                "{archive} is listed in the signed SHA256SUMS but missing from the source"
            )))
        })?;
        let got =
            hex_lower(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &zip_bytes).as_ref());
        if got != want {
            return Err(fail(Problem::Checksum {
                file: archive,
                got,
                want,
            }));
        }
        let binary = zip::extract(&zip_bytes, tool.binary()).map_err(|error| {
            fail(Problem::Archive {
                file: archive.clone(),
                error,
            })
        })?;
        Ok(Some(binary.data))
    }

    /// Installs a version for `liftoff tool install` (lease dropped).
    pub fn install(&self, tool: ToolName, version: &str) -> Result<(Version, PathBuf), ToolError> {
        let lease = self.provide(tool, version, &Bound::default(), &mut |_| {})?;
        Ok((lease.version.clone(), lease.binary.clone()))
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 a `SHA256SUMS` lists for `file`.
pub fn checksum_for(sums: &[u8], file: &str) -> Result<String, String> {
    let text = std::str::from_utf8(sums).map_err(|_| "is not text".to_string())?;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(hash), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!(
                "the line {:?} is not \"HASH  FILE\"",
                line.chars().take(80).collect::<String>()
            ));
        };
        if name.trim_start_matches('*') == file {
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("the hash for {file} is not a SHA-256"));
            }
            return Ok(hash.to_ascii_lowercase());
        }
    }
    Err(format!(
        "lists no {file}: this release has no build for {}",
        cache::platform()
    ))
}

/// The bin directory of a leased tool, as the run's job sees it.
pub const JOB_BIN_DIR: &str = "/mnt/tools/bin";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_read_exactly() {
        let sums = b"aa  tofu_1.8.5_linux_amd64.zip.sig\nbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb  tofu_1.8.5_linux_amd64.zip\n";
        assert_eq!(
            checksum_for(sums, "tofu_1.8.5_linux_amd64.zip").unwrap(),
            "b".repeat(64)
        );
        assert!(
            checksum_for(sums, "tofu_1.8.5_linux_arm64.zip")
                .unwrap_err()
                .contains("lists no")
        );
        assert!(checksum_for(b"garbage", "x").unwrap_err().contains("not"));
        assert!(checksum_for(b"\xff\xfe", "x").is_err());
    }

    #[test]
    fn tool_names() {
        assert_eq!(ToolName::parse("tofu").unwrap(), ToolName::OpenTofu);
        assert!(
            ToolName::parse("pulumi")
                .unwrap_err()
                .contains("opentofu or terraform")
        );
        let t: ToolName = serde_json::from_str("\"opentofu\"").unwrap();
        assert_eq!(t.binary(), "tofu");
    }
}
