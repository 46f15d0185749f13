//! Manifests, indexes and image configs (OCI image-spec and Docker's v2
//! schema 2): [`parse`] sorts a manifest document into an index or an image
//! manifest, [`pick`] chooses the index entry for this host's platform,
//! [`Config::parse`] reads the diff_ids the layers are checked against.
//! Layer media types are checked in [`Layer::compression`] (the unpacker
//! also sniffs the bytes, so `docker save`'s plain tars need no type).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::valid_digest;

/// What `Accept` asks registries for.
pub const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Largest manifest, index or config accepted.
pub const MAX_DOC: u64 = 4 << 20;

#[derive(Debug, Clone, Deserialize)]
pub struct Platform {
    #[serde(default)]
    pub architecture: String,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl Platform {
    fn shown(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{}/{v}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub platform: Option<Platform>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub urls: Vec<String>,
}

#[derive(Deserialize)]
struct Document {
    #[serde(rename = "schemaVersion")]
    schema_version: u32,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// A parsed manifest document.
#[derive(Debug)]
pub enum Parsed {
    Index(Vec<Descriptor>),
    Image {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
}

/// Most layers an image may have.
const MAX_LAYERS: usize = 256;

/// Why a manifest, an index or an image config was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManifestError {
    /// Not JSON, or not what the image spec says (a bad digest, diff_ids
    /// that do not match the layers).
    Malformed(String),
    /// Valid, but not something liftoff takes (schema 1, a foreign layer,
    /// an unknown compression, too many layers, an image not for linux).
    Unsupported(String),
}

impl std::fmt::Display for ManifestError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ManifestError::Malformed(m) | ManifestError::Unsupported(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ManifestError {}

fn malformed(m: impl Into<String>) -> ManifestError {
    ManifestError::Malformed(m.into())
}

fn unsupported(m: impl Into<String>) -> ManifestError {
    ManifestError::Unsupported(m.into())
}

/// Parses a manifest or index; the error says what is wrong.
pub fn parse(bytes: &[u8]) -> Result<Parsed, ManifestError> {
    let d: Document = serde_json::from_slice(bytes)
        .map_err(|e| malformed(format!("the manifest is not valid JSON: {e}")))?;
    if d.schema_version != 2 {
        return Err(unsupported(format!(
            "schemaVersion {} is not supported (only 2: OCI and Docker v2 schema 2; push the image again with a current tool)",
            d.schema_version
        )));
    }
    let check = |what: &str, ds: &Descriptor| {
        if valid_digest(&ds.digest) {
            Ok(())
        } else {
            Err(malformed(format!(
                "{what} digest {:?} is not sha256:<64 hex>",
                ds.digest.chars().take(80).collect::<String>()
            )))
        }
    };
    match (d.manifests, d.config, d.layers) {
        (Some(ms), None, None) => {
            for m in &ms {
                check("an index entry's", m)?;
            }
            Ok(Parsed::Index(ms))
        }
        (None, Some(config), Some(layers)) => {
            check("the config", &config)?;
            if layers.len() > MAX_LAYERS {
                return Err(unsupported(format!(
                    "{} layers, more than {MAX_LAYERS}",
                    layers.len()
                )));
            }
            for l in &layers {
                check("a layer", l)?;
                Layer::compression(l)?;
            }
            Ok(Parsed::Image { config, layers })
        }
        _ => Err(malformed(
            "neither an index (manifests) nor an image manifest (config and layers)",
        )),
    }
}

/// This host's platform as image indexes name it.
pub fn host_platform() -> (&'static str, Option<&'static str>) {
    match std::env::consts::ARCH {
        "x86_64" => ("amd64", None),
        "aarch64" => ("arm64", Some("v8")),
        "x86" => ("386", None),
        "arm" => ("arm", Some("v7")),
        "powerpc64" => ("ppc64le", None),
        other => (other, None),
    }
}

/// The index entry for linux on this host's architecture; the error lists
/// what the index has (`want`, `have`).
pub fn pick(entries: &[Descriptor]) -> Result<&Descriptor, (String, String)> {
    let (arch, variant) = host_platform();
    let fits = |p: &Platform| p.os == "linux" && p.architecture == arch;
    let best = entries
        .iter()
        .filter(|e| e.platform.as_ref().is_some_and(fits))
        .max_by_key(|e| {
            let v = e.platform.as_ref().and_then(|p| p.variant.as_deref());
            (v.is_none() || v == variant) as u8
        });
    best.ok_or_else(|| {
        let have: Vec<String> = entries
            .iter()
            .filter_map(|e| e.platform.as_ref().map(Platform::shown))
            .collect();
        (
            format!("linux/{arch}"),
            if have.is_empty() {
                "no platform named".into()
            } else {
                have.join(", ")
            },
        )
    })
}

/// A layer's compression, from its media type.
pub struct Layer;

impl Layer {
    pub fn compression(d: &Descriptor) -> Result<(), ManifestError> {
        let t = d.media_type.as_str();
        if t.contains("nondistributable") || t.contains("foreign") || !d.urls.is_empty() {
            return Err(unsupported(format!(
                "layer {} is a foreign (non-distributable) layer, which liftoff does not fetch",
                d.digest
            )));
        }
        let known = t.is_empty()
            || t.ends_with(".tar")
            || t.ends_with(".tar+gzip")
            || t.ends_with(".tar+zstd")
            || t.ends_with(".tar.gzip")
            || t.ends_with(".tar.zstd");
        if known {
            Ok(())
        } else {
            Err(unsupported(format!(
                "layer {} has media type {t:?}; only tar, tar+gzip and tar+zstd layers are supported",
                d.digest
            )))
        }
    }
}

/// The image config: only what liftoff uses.
#[derive(Debug, Deserialize)]
pub struct Config {
    pub rootfs: RootFs,
    #[serde(default)]
    pub os: String,
    #[serde(default)]
    pub architecture: String,
}

#[derive(Debug, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub diff_ids: Vec<String>,
}

impl Config {
    /// Parses a config and checks it against the number of layers.
    pub fn parse(bytes: &[u8], layers: usize) -> Result<Config, ManifestError> {
        let c: Config = serde_json::from_slice(bytes)
            .map_err(|e| malformed(format!("the image config is not valid: {e}")))?;
        if c.rootfs.diff_ids.len() != layers {
            return Err(malformed(format!(
                "the config lists {} diff_ids for {layers} layers",
                c.rootfs.diff_ids.len()
            )));
        }
        if let Some(d) = c.rootfs.diff_ids.iter().find(|d| !valid_digest(d)) {
            return Err(malformed(format!("diff_id {d:?} is not sha256:<64 hex>")));
        }
        if !c.os.is_empty() && c.os != "linux" {
            return Err(unsupported(format!(
                "the image is for {:?}, not linux",
                c.os
            )));
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_picks_this_platform_or_names_what_it_has() {
        let d = |arch: &str| {
            serde_json::from_value::<Descriptor>(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{}", "0".repeat(64)), "size": 1,
                "platform": {"os": "linux", "architecture": arch}}))
            .unwrap()
        };
        let (arch, _) = host_platform();
        let entries = vec![d("s390x"), d(arch)];
        assert_eq!(
            pick(&entries)
                .unwrap()
                .platform
                .as_ref()
                .unwrap()
                .architecture,
            arch
        );
        let (want, have) = pick(&entries[..1]).unwrap_err();
        assert!(
            want.contains(arch) && have.contains("s390x"),
            "{want} {have}"
        );
    }

    #[test]
    fn bad_documents_are_refused_with_the_reason() {
        for (doc, why, unsupported) in [
            (r#"{"schemaVersion": 1}"#, "schemaVersion 1", true),
            (r#"{"schemaVersion": 2}"#, "neither", false),
            (
                r#"{"schemaVersion": 2, "config": {"digest": "md5:x"}, "layers": []}"#,
                "not sha256",
                false,
            ),
            ("nope", "not valid JSON", false),
        ] {
            let e = parse(doc.as_bytes()).unwrap_err();
            assert_eq!(
                matches!(e, ManifestError::Unsupported(_)),
                unsupported,
                "{e:?}"
            );
            assert!(e.to_string().contains(why), "{e}");
        }
    }
}
