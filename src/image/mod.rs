//! Runner images without Docker: an OCI or Docker image is pulled from a
//! registry (or imported from an archive), every byte verified, unpacked
//! safely into a content-addressed cache and handed to runs as a read-only
//! root directory.
//!
//! Order: [`Store::from_config`] opens the cache; [`Store::ensure`] (runs,
//! `liftoff image pull`) parses the [`reference::Reference`], returns a
//! [`cache::Lease`] on a cached root or pulls it ([`registry`] fetches,
//! [`manifest`] resolves the index to this host's platform, [`unpack`]
//! applies each layer after its blob is verified), then prunes the cache to
//! its budget. [`archive::import`] feeds the same cache from an oci-archive
//! or `docker save` file. The lease keeps the root from being pruned while
//! a run uses it.

pub mod archive;
pub mod cache;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod unpack;

use std::fmt;

pub use cache::{Lease, Store};
pub use reference::Reference;

/// What went wrong with an image; each message names the image (or file)
/// and what to do.
#[derive(Debug)]
pub enum Error {
    /// The reference cannot be parsed.
    BadReference {
        reference: String,
        why: String,
    },
    /// The registry could not be reached or answered an error; `transient`
    /// when trying again may help (network, 429, 5xx).
    Registry {
        image: String,
        detail: String,
        transient: bool,
    },
    /// 401/403: credentials missing, wrong or without access.
    Auth {
        image: String,
        detail: String,
    },
    /// 404: no such repository, tag or blob.
    NotFound {
        image: String,
        detail: String,
    },
    /// The index has no manifest for this host's platform.
    Platform {
        image: String,
        want: String,
        have: String,
    },
    /// A manifest, index or config is not what the image spec says.
    Malformed {
        image: String,
        detail: String,
    },
    /// A blob (or the manifest) does not hash to its digest.
    Digest {
        image: String,
        blob: String,
        got: String,
    },
    /// A layer was refused while unpacking (a hostile entry, a wrong
    /// diff_id, over the size bound).
    Layer {
        image: String,
        layer: String,
        detail: String,
    },
    /// The cache directory failed (a full disk, permissions).
    Cache {
        path: String,
        detail: String,
    },
    /// An archive to import is not an OCI layout or `docker save` output.
    Archive {
        file: String,
        detail: String,
    },
    /// `liftoff image rm` of an image that is not cached, or one in use.
    NotCached {
        reference: String,
    },
    InUse {
        reference: String,
    },
    /// The pull was stopped because its run was cancelled.
    Cancelled {
        image: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadReference { reference, why } => write!(
                f,
                "image reference {reference:?} is not valid: {why}; expected [registry/]repository[:tag][@sha256:digest], such as public.ecr.aws/spacelift/runner-terraform:latest"
            ),
            Error::Registry {
                image,
                detail,
                transient,
            } => write!(
                f,
                "image {image}: {detail}{}",
                if *transient {
                    " (tried again, still failing: check the network, proxy and registry)"
                } else {
                    ""
                }
            ),
            Error::Auth { image, detail } => write!(
                f,
                "image {image}: access denied ({detail}); put credentials for the registry in SPACELIFT_DOCKER_CONFIG_DIR/config.json (auths, credHelpers or credsStore)"
            ),
            Error::NotFound { image, detail } => write!(
                f,
                "image {image}: not found ({detail}); check the repository and tag"
            ),
            Error::Platform { image, want, have } => write!(
                f,
                "image {image} has no manifest for this host's platform {want} (it has: {have}); use an image built for {want}"
            ),
            Error::Malformed { image, detail } => {
                write!(f, "image {image}: malformed image: {detail}")
            }
            Error::Digest { image, blob, got } => write!(
                f,
                "image {image}: {blob} does not match its digest (the content hashes to {got}); nothing of it was used: the registry or a proxy altered it"
            ),
            Error::Layer {
                image,
                layer,
                detail,
            } => write!(
                f,
                "image {image}: layer {layer} refused: {detail}; nothing of the image was used"
            ),
            Error::Cache { path, detail } => write!(
                f,
                "image cache {path}: {detail}; free space or fix the permissions of LIFTOFF_IMAGE_CACHE_DIR"
            ),
            Error::Archive { file, detail } => write!(
                f,
                "image archive {file}: {detail}; expected an OCI image layout archive (skopeo copy ... oci-archive:FILE) or docker save output"
            ),
            Error::NotCached { reference } => write!(
                f,
                "image {reference} is not in the cache (see liftoff image ls)"
            ),
            Error::InUse { reference } => write!(
                f,
                "image {reference} is in use by a run; remove it when the run has ended"
            ),
            Error::Cancelled { image } => write!(
                f,
                "image {image}: the pull was stopped because the run was cancelled; nothing of it was kept half-written"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// `sha256:<64 lowercase hex>`, the only digest algorithm accepted.
pub fn valid_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A sha256 digest being computed, as `sha256:<hex>`.
pub struct Hasher(aws_lc_rs::digest::Context);

impl Hasher {
    pub fn new() -> Hasher {
        Hasher(aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256))
    }
    pub fn update(&mut self, b: &[u8]) {
        self.0.update(b);
    }
    pub fn finish(self) -> String {
        let d = self.0.finish();
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in d.as_ref() {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }
}

impl Default for Hasher {
    fn default() -> Self {
        Hasher::new()
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    let mut h = Hasher::new();
    h.update(bytes);
    h.finish()
}
