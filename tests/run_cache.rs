//! The shared provider cache: a second run finds what the first cached,
//! concurrent runs merging leave it consistent, jobs get read-only shared
//! files, and pruning removes the least recently used packages.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use liftoff::run::cache::ProviderCache;

const PKG: &str = "registry.opentofu.org/hashicorp/null/3.2.0/linux_amd64";

/// What `tofu init` leaves in TF_PLUGIN_CACHE_DIR after a download.
fn download(layer: &Path, pkg: &str, size: usize, fill: u8) -> PathBuf {
    let dir = layer.join(pkg);
    std::fs::create_dir_all(&dir).unwrap();
    let bin = dir.join(format!(
        "terraform-provider-{}",
        pkg.split('/').nth(2).unwrap()
    ));
    std::fs::write(&bin, vec![fill; size]).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn a_second_run_finds_what_the_first_cached() {
    let root = tempfile::tempdir().unwrap();
    let cache = ProviderCache::open(&root.path().join("providers"), 1 << 30).unwrap();
    let run1 = root.path().join("runs/1/provider-cache");
    assert_eq!(cache.layer(&run1, None).unwrap().packages, 0);
    download(&run1, PKG, 4096, 1);
    let merged = cache.merge(&run1).unwrap();
    assert_eq!((merged.packages, merged.bytes), (1, 4096));

    let run2 = root.path().join("runs/2/provider-cache");
    let layer = cache.layer(&run2, None).unwrap();
    assert_eq!(layer.packages, 1);
    let in_layer = run2.join(PKG).join("terraform-provider-null");
    let shared = cache.dir().join(PKG).join("terraform-provider-null");
    assert_eq!(std::fs::read(&in_layer).unwrap(), vec![1u8; 4096]);
    // Hard links to the shared copy, which is read-only.
    assert_eq!(
        std::fs::metadata(&in_layer).unwrap().ino(),
        std::fs::metadata(&shared).unwrap().ino()
    );
    assert_eq!(
        std::fs::metadata(&shared).unwrap().permissions().mode() & 0o777,
        0o555
    );
    // Nothing new in run 2: merging changes nothing.
    assert_eq!(cache.merge(&run2).unwrap().packages, 0);
}

#[test]
fn the_job_owns_its_layer_directories() {
    let root = tempfile::tempdir().unwrap();
    let cache = ProviderCache::open(&root.path().join("providers"), 1 << 30).unwrap();
    let seed = root.path().join("seed");
    download(&seed, PKG, 10, 1);
    cache.merge(&seed).unwrap();
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        panic!(
            "this test gives the layer to another uid and needs root: run the suite as root (CI does)"
        );
    }
    let layer = root.path().join("layer");
    cache.layer(&layer, Some((61983, 61983))).unwrap();
    for d in [
        layer.clone(),
        layer.join("registry.opentofu.org/hashicorp/null/3.2.0/linux_amd64"),
    ] {
        assert_eq!(
            std::fs::metadata(&d).unwrap().uid(),
            61983,
            "{}",
            d.display()
        );
    }
    // The shared file stays root's.
    assert_eq!(
        std::fs::metadata(layer.join(PKG).join("terraform-provider-null"))
            .unwrap()
            .uid(),
        0
    );
}

#[test]
fn concurrent_runs_leave_the_cache_consistent() {
    let root = tempfile::tempdir().unwrap();
    let cache = ProviderCache::open(&root.path().join("providers"), 1 << 30).unwrap();
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let cache = cache.clone();
            let layer = root.path().join(format!("runs/{i}/provider-cache"));
            std::thread::spawn(move || {
                cache.layer(&layer, None).unwrap();
                // Every run downloads the same provider, and one of its own.
                download(&layer, PKG, 256 << 10, 7);
                download(
                    &layer,
                    &format!("registry.opentofu.org/acme/p{i}/1.0.0/linux_amd64"),
                    1024,
                    i as u8,
                );
                cache.merge(&layer).unwrap()
            })
        })
        .collect();
    let merged: u64 = handles
        .into_iter()
        .map(|h| h.join().unwrap().packages)
        .sum();
    assert_eq!(
        merged, 9,
        "the shared package merged once, each own package once"
    );
    let shared = std::fs::read(cache.dir().join(PKG).join("terraform-provider-null")).unwrap();
    assert_eq!(shared, vec![7u8; 256 << 10], "complete, never half-written");
    assert_eq!(cache.stats().packages, 9);
    let leftovers: Vec<_> = walk(cache.dir())
        .into_iter()
        .filter(|p| p.to_string_lossy().contains(".liftoff-tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn walk(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(p).unwrap().flatten() {
        out.push(e.path());
        if e.file_type().unwrap().is_dir() {
            out.extend(walk(&e.path()));
        }
    }
    out
}

#[test]
fn pruning_removes_the_least_recently_used() {
    let root = tempfile::tempdir().unwrap();
    let cache = ProviderCache::open(&root.path().join("providers"), 2_500_000).unwrap();
    let layer = root.path().join("layer");
    for name in ["old", "mid", "new"] {
        download(
            &layer,
            &format!("registry.opentofu.org/acme/{name}/1.0.0/linux_amd64"),
            1_000_000,
            0,
        );
    }
    cache.merge(&layer).unwrap();
    let now = SystemTime::now();
    for (name, age) in [("old", 300), ("mid", 200), ("new", 100)] {
        let pkg = cache.dir().join(format!(
            "registry.opentofu.org/acme/{name}/1.0.0/linux_amd64"
        ));
        let f = std::fs::File::create(pkg.join(".liftoff-used")).unwrap();
        f.set_modified(now - Duration::from_secs(age)).unwrap();
    }
    // A run used "old" just now: it becomes the most recent.
    let ws = root
        .path()
        .join("ws/source/stack/.terraform/providers/registry.opentofu.org/acme/old/1.0.0");
    std::fs::create_dir_all(&ws).unwrap();
    std::os::unix::fs::symlink(
        "/var/cache/liftoff/providers/registry.opentofu.org/acme/old/1.0.0/linux_amd64",
        ws.join("linux_amd64"),
    )
    .unwrap();
    cache.mark_used(
        &root.path().join("ws"),
        Path::new("/var/cache/liftoff/providers"),
    );

    let removed = cache.prune().unwrap();
    assert_eq!((removed.packages, removed.bytes), (1, 1_000_000));
    assert!(
        !cache
            .dir()
            .join("registry.opentofu.org/acme/mid")
            .join("1.0.0/linux_amd64")
            .exists(),
        "mid was least recently used"
    );
    assert!(
        cache
            .dir()
            .join("registry.opentofu.org/acme/old/1.0.0/linux_amd64")
            .exists()
    );
    assert!(
        cache
            .dir()
            .join("registry.opentofu.org/acme/new/1.0.0/linux_amd64")
            .exists()
    );
    assert!(cache.stats().bytes <= 2_500_000);
}
