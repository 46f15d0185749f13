//! Offline import: an OCI image layout archive (`skopeo copy …
//! oci-archive:FILE`) or `docker save` output (tar, or gzip'd tar) into the
//! image cache, with no registry.
//!
//! Order: [`import`] reads the archive once, front to back: every blob goes
//! into the cache's blob store as it streams (OCI blobs checked against
//! their names), `index.json`/`manifest.json` are kept; then the image for
//! this host's platform is resolved (OCI: index → manifest → config;
//! `docker save`: manifest.json's Config and Layers) and built by
//! [`Store::build`], which checks every layer against its diff_id.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use super::manifest::{self, MAX_DOC, Parsed};
use super::{Error, Lease, Reference, Store};

/// Imports the archive `file`; names the image `name` (else the name the
/// archive carries). Returns each name given and a lease on the image.
pub fn import(
    store: &Store,
    file: &Path,
    name: Option<&str>,
) -> Result<(Vec<String>, Lease), Error> {
    let shown = file.display().to_string();
    let bad = |detail: String| Error::Archive {
        file: shown.clone(),
        detail,
    };
    if let Some(n) = name {
        Reference::parse(n)?;
    }
    let f = File::open(file).map_err(|e| bad(format!("cannot open: {e}")))?;
    let _shared = store.shared()?;
    let stream = super::unpack::decompress(BufReader::with_capacity(256 << 10, f))
        .map_err(|e| bad(format!("cannot read: {e}")))?;
    let mut tar = tar::Archive::new(stream);
    let mut docs: HashMap<String, Vec<u8>> = HashMap::new();
    // docker save: file name → digest of its content.
    let mut files: HashMap<PathBuf, String> = HashMap::new();
    let mut links: Vec<(PathBuf, PathBuf)> = Vec::new();
    let entries = tar
        .entries()
        .map_err(|e| bad(format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(format!("bad tar entry: {e}")))?;
        let path = entry
            .path()
            .map_err(|e| bad(format!("bad entry name: {e}")))?;
        let path: PathBuf = path
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        let kind = entry.header().entry_type();
        if kind.is_symlink() {
            if let Ok(Some(t)) = entry.link_name() {
                let t = path.parent().unwrap_or(Path::new("")).join(t);
                links.push((path, crate::beneath::lexical(&t)));
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        let text = path.to_string_lossy().into_owned();
        if matches!(
            text.as_str(),
            "index.json" | "manifest.json" | "oci-layout" | "repositories"
        ) {
            let mut b = Vec::new();
            (&mut entry)
                .take(MAX_DOC + 1)
                .read_to_end(&mut b)
                .map_err(|e| bad(format!("{text}: {e}")))?;
            if b.len() as u64 > MAX_DOC {
                return Err(bad(format!("{text} is larger than {MAX_DOC} bytes")));
            }
            docs.insert(text, b);
            continue;
        }
        let expected = text
            .strip_prefix("blobs/sha256/")
            .map(|h| format!("sha256:{h}"))
            .filter(|d| super::valid_digest(d));
        let d = store
            .put_blob(&mut entry, expected.as_deref())
            .map_err(|e| match e {
                Error::Digest { blob, got, .. } => bad(format!(
                    "{blob} does not match its digest (it hashes to {got})"
                )),
                e => e,
            })?;
        files.insert(path, d);
    }
    for (link, target) in links {
        if let Some(d) = files.get(&target).cloned() {
            files.insert(link, d);
        }
    }
    let blob = |d: &str| {
        store
            .read_blob(d)
            .ok_or_else(|| bad(format!("blob {d} is missing from the archive")))
    };
    let parse_ref = |n: &str| Reference::parse(n).ok().map(|r| r.to_string());
    if let Some(index) = docs.get("index.json") {
        let Parsed::Index(entries) =
            manifest::parse(index).map_err(|e| bad(format!("index.json: {e}")))?
        else {
            return Err(bad("index.json is not an image index".into()));
        };
        let top = match entries.len() {
            0 => return Err(bad("index.json lists no image".into())),
            1 => &entries[0],
            _ => manifest::pick(&entries)
                .map_err(|(want, have)| bad(format!("no image for {want} (it has: {have})")))?,
        };
        let names: Vec<String> = match name {
            Some(n) => parse_ref(n).into_iter().collect(),
            None => [
                "io.containerd.image.name",
                "org.opencontainers.image.ref.name",
            ]
            .iter()
            .filter_map(|k| top.annotations.get(*k))
            .filter_map(|n| parse_ref(n))
            .take(1)
            .collect(),
        };
        if names.is_empty() {
            return Err(bad(
                "the archive names no image: give one with --name REF".into()
            ));
        }
        let mut desc = top.clone();
        let (config, layers) = loop {
            match manifest::parse(&blob(&desc.digest)?)
                .map_err(|e| bad(format!("manifest {}: {e}", desc.digest)))?
            {
                Parsed::Image { config, layers } => break (config, layers),
                Parsed::Index(es) => {
                    desc = manifest::pick(&es)
                        .map_err(|(want, have)| {
                            bad(format!("no image for {want} (it has: {have})"))
                        })?
                        .clone();
                }
            }
        };
        let cfg = manifest::Config::parse(&blob(&config.digest)?, layers.len())
            .map_err(|e| bad(e.to_string()))?;
        let digests: Vec<String> = layers.iter().map(|l| l.digest.clone()).collect();
        for d in &digests {
            if !store_has(store, d) {
                return Err(bad(format!("layer {d} is missing from the archive")));
            }
        }
        let refs: Vec<(String, String)> = names
            .iter()
            .map(|n| (n.clone(), desc.digest.clone()))
            .collect();
        let lease = store.build(
            &names[0],
            &config.digest,
            &digests,
            &cfg.rootfs.diff_ids,
            &refs,
        )?;
        return Ok((names, lease));
    }
    let Some(m) = docs.get("manifest.json") else {
        return Err(bad("it has neither index.json nor manifest.json".into()));
    };
    #[derive(serde::Deserialize)]
    struct Saved {
        #[serde(rename = "Config")]
        config: String,
        #[serde(rename = "RepoTags", default)]
        tags: Option<Vec<String>>,
        #[serde(rename = "Layers")]
        layers: Vec<String>,
    }
    let saved: Vec<Saved> =
        serde_json::from_slice(m).map_err(|e| bad(format!("manifest.json: {e}")))?;
    let [one] = saved.as_slice() else {
        return Err(bad(format!(
            "manifest.json lists {} images; save one image per archive",
            saved.len()
        )));
    };
    let digest_of = |p: &str| {
        files
            .get(&crate::beneath::lexical(Path::new(p)))
            .cloned()
            .ok_or_else(|| bad(format!("{p} named by manifest.json is missing")))
    };
    let config = digest_of(&one.config)?;
    let layers = one
        .layers
        .iter()
        .map(|l| digest_of(l))
        .collect::<Result<Vec<_>, _>>()?;
    let cfg =
        manifest::Config::parse(&blob(&config)?, layers.len()).map_err(|e| bad(e.to_string()))?;
    let names: Vec<String> = match name {
        Some(n) => parse_ref(n).into_iter().collect(),
        None => one
            .tags
            .iter()
            .flatten()
            .filter_map(|t| parse_ref(t))
            .collect(),
    };
    if names.is_empty() {
        return Err(bad(
            "the archive names no image: give one with --name REF".into()
        ));
    }
    let refs: Vec<(String, String)> = names.iter().map(|n| (n.clone(), String::new())).collect();
    let lease = store.build(&names[0], &config, &layers, &cfg.rootfs.diff_ids, &refs)?;
    Ok((names, lease))
}

fn store_has(store: &Store, d: &str) -> bool {
    store
        .dir
        .join("blobs/sha256")
        .join(d.trim_start_matches("sha256:"))
        .is_file()
}
