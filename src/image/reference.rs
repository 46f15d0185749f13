//! Image references: `[registry[:port]/]repository[:tag][@sha256:digest]`,
//! as Docker reads them. [`Reference::parse`] validates and fills the
//! defaults (Docker Hub's registry and `library/` namespace, tag `latest`
//! when neither tag nor digest is given); [`fmt::Display`] prints the
//! canonical form used as the cache's key for a name.

use std::fmt;

use super::{Error, valid_digest};

/// Docker Hub as references name it, and as its API is reached.
const HUB: &str = "docker.io";
const HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` (Docker Hub as `docker.io`).
    pub registry: String,
    /// `namespace/name`, lower case.
    pub repository: String,
    pub tag: Option<String>,
    /// `sha256:<hex>` when pinned.
    pub digest: Option<String>,
}

impl Reference {
    pub fn parse(text: &str) -> Result<Reference, Error> {
        let bad = |why: &str| Error::BadReference {
            reference: text.chars().take(300).collect(),
            why: why.into(),
        };
        if text.is_empty() || text.len() > 512 {
            return Err(bad("it must be 1 to 512 characters"));
        }
        if text.contains("://") {
            return Err(bad("write it without a scheme (no https://)"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((r, d)) if valid_digest(d) => (r, Some(d.to_string())),
            Some(_) => {
                return Err(bad(
                    "the digest must be sha256: and 64 lowercase hex digits",
                ));
            }
            None => (text, None),
        };
        // A tag is after the last `:` that follows the last `/`.
        let slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[slash..].rfind(':') {
            Some(i) => (&rest[..slash + i], Some(rest[slash + i + 1..].to_string())),
            None => (rest, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !ok {
                return Err(bad(
                    "the tag must be 1 to 128 letters, digits, _, . or - (not first . or -)",
                ));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => (HUB.to_string(), name.to_string()),
        };
        let host_ok = registry
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
        if !host_ok || registry.is_empty() {
            return Err(bad(
                "the registry must be a host name with an optional :port",
            ));
        }
        let repo_ok = !repository.is_empty()
            && repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'.' | b'_' | b'-')
                    })
                    && c.as_bytes()[0].is_ascii_alphanumeric()
            });
        if !repo_ok {
            return Err(bad(
                "the repository must be lowercase letters, digits, ., _ and -, in /-separated parts",
            ));
        }
        let repository = if registry == HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".into())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host the registry API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == HUB {
            HUB_API
        } else {
            &self.registry
        }
    }

    /// The digest if pinned, else the tag: what `/manifests/` is asked for.
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_with_docker_defaults() {
        let r = Reference::parse("alpine").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/alpine:latest");
        assert_eq!(r.api_host(), "registry-1.docker.io");
        let r = Reference::parse("public.ecr.aws/spacelift/runner-terraform").unwrap();
        assert_eq!(r.registry, "public.ecr.aws");
        assert_eq!(r.repository, "spacelift/runner-terraform");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = Reference::parse(&format!("localhost:5000/a/b:v1.2@{d}")).unwrap();
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.tag.as_deref(), Some("v1.2"));
        assert_eq!(r.manifest_ref(), d);
        let r = Reference::parse(&format!("x/y@{d}")).unwrap();
        assert_eq!(r.tag, None);
        for bad in [
            "",
            "https://h/x",
            "UPPER/case",
            "a:",
            "a@sha256:abc",
            "a//b",
            "h.io/x:-bad",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad}");
        }
    }
}
