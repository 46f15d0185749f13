//! Object storage behind signed, expiring URLs: log chunks, run sources
//! and outputs. The embedded [`DiskObjects`] keeps objects under
//! `DATA/objects/` and signs its own URLs with HMAC-SHA256; the plane's
//! HTTPS listener serves them (`PUT`/`GET {objects_url}/o/{key}?exp=…&sig=…`).
//! An S3-compatible store would implement the same [`Objects`] trait with
//! presigned URLs.
//!
//! Call order: [`DiskObjects::new`] at start; the dispatcher asks for
//! [`Objects::put_url`]/[`Objects::get_url`] when it assigns a run; the
//! server calls [`DiskObjects::check`] then [`Objects::put`]/[`Objects::get`]
//! for each request; the admin API reads logs with [`Objects::get`].

use std::path::PathBuf;

use super::{Error, Result};

/// How long a signed URL stays valid.
pub const URL_TTL_MS: u64 = 6 * 3600 * 1000;

/// Largest object accepted by PUT (a log chunk is at most 1 MiB; a source
/// archive is uploaded through the admin API).
pub const MAX_OBJECT: usize = 256 << 20;

/// The object store seen by the rest of the plane.
pub trait Objects: Send + Sync {
    /// A URL that lets its holder PUT `key` until it expires.
    fn put_url(&self, key: &str) -> String;
    /// A URL that lets its holder GET `key` until it expires.
    fn get_url(&self, key: &str) -> String;
    /// Stores `data` under `key` (atomically: all or nothing).
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// The object, or `None` when there is none.
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Removes the object (none is no error): undoing a `put` whose run
    /// could not be stored.
    fn remove(&self, key: &str) -> Result<()>;
}

/// Objects on local disk with HMAC-signed URLs.
pub struct DiskObjects {
    dir: PathBuf,
    base: String,
    key: aws_lc_rs::hmac::Key,
}

/// A valid object key: `/`-separated segments of `A-Z a-z 0-9 . _ -`, no
/// empty segment, no `.` or `..`, at most 512 bytes.
pub fn valid_key(key: &str) -> bool {
    key.len() <= 512
        && !key.is_empty()
        && key.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

impl DiskObjects {
    pub fn new(dir: PathBuf, base_url: &str, hmac_key: &[u8]) -> DiskObjects {
        DiskObjects {
            dir,
            base: base_url.trim_end_matches('/').to_string(),
            key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, hmac_key),
        }
    }

    fn sign(&self, method: &str, key: &str, exp: u64) -> String {
        let tag = aws_lc_rs::hmac::sign(&self.key, format!("{method}\n{key}\n{exp}").as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    fn url(&self, method: &str, key: &str) -> String {
        let exp = super::now_ms() + URL_TTL_MS;
        format!(
            "{}/o/{key}?exp={exp}&sig={}",
            self.base,
            self.sign(method, key, exp)
        )
    }

    /// Checks a request for `/o/{key}` with `query`: a valid key, a
    /// signature for this method and key, not expired. 403 otherwise (the
    /// worker then asks for a new URL).
    pub fn check(&self, method: &str, key: &str, query: &str) -> Result<()> {
        if !valid_key(key) {
            return Err(Error::BadInput(format!(
                "{key:?} is not a valid object key"
            )));
        }
        let mut exp = None;
        let mut sig = None;
        for kv in query.split('&') {
            match kv.split_once('=') {
                Some(("exp", v)) => exp = v.parse::<u64>().ok(),
                Some(("sig", v)) => sig = super::config::hex_decode(v),
                _ => {}
            }
        }
        let (Some(exp), Some(sig)) = (exp, sig) else {
            return Err(Error::Forbidden(
                "the URL is not signed (no exp or sig)".into(),
            ));
        };
        if exp < super::now_ms() {
            return Err(Error::Forbidden("the signed URL expired".into()));
        }
        aws_lc_rs::hmac::verify(
            &self.key,
            format!("{method}\n{key}\n{exp}").as_bytes(),
            &sig,
        )
        .map_err(|_| Error::Forbidden("the URL's signature is wrong".into()))
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        if !valid_key(key) {
            return Err(Error::BadInput(format!(
                "{key:?} is not a valid object key"
            )));
        }
        Ok(self.dir.join(key))
    }
}

impl Objects for DiskObjects {
    fn put_url(&self, key: &str) -> String {
        self.url("PUT", key)
    }

    fn get_url(&self, key: &str) -> String {
        self.url("GET", key)
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let path = self.path(key)?;
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io("create", parent, &e))?;
        }
        super::write_file(&path, data, 0o600)
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        match std::fs::read(self.path(key)?) {
            Ok(d) => Ok(Some(d)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Storage(format!("cannot read object {key}: {e}"))),
        }
    }

    fn remove(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", &path, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_urls_verify_only_for_their_method_key_and_time() {
        let o = DiskObjects::new("/nonexistent".into(), "https://p:1", b"k");
        let url = o.put_url("runs/A/0000");
        let query = url.split_once('?').unwrap().1;
        assert!(o.check("PUT", "runs/A/0000", query).is_ok());
        assert!(o.check("GET", "runs/A/0000", query).is_err());
        assert!(o.check("PUT", "runs/A/0001", query).is_err());
        assert!(o.check("PUT", "runs/A/0000", "exp=1&sig=00").is_err());
        assert!(!valid_key("runs/../x") && !valid_key("/a") && valid_key("runs/A/0000"));
    }
}
