//! Pulls that go wrong, against the real test registry (Debian's
//! docker-registry over TLS): 429 and 5xx answers (tried again, then an
//! error naming the image and the status), a connection cut mid-blob
//! (tried again; kept failing: an error, nothing half-written in the
//! cache), a connection stalled mid-blob (ends at the pull's deadline), and
//! a full disk mid-pull (a small tmpfs as the cache: an error naming the
//! cache and "No space left", nothing half-written, the cache usable once
//! there is room), and a cancel mid-pull (stops at the next step). The faults come from `support::relay`, a real HTTPS
//! relay put in front of the registry only to inject them: the registry
//! cannot be made to answer 429 or cut a blob on demand.

mod support;

use std::path::{Path, PathBuf};

use liftoff::config::{Config, Env};
use liftoff::image::{Error, Lease, Store};
use support::registry::{Registry, build_image, v1_manifest};
use support::relay::{Fault, Relay, Rule};
use support::runs::open_tempdir;
use support::tmpfs::Tmpfs;

fn store(dir: &Path, reg: &Registry, cache: &Path) -> (Store, ureq::Agent) {
    let pairs: Vec<(String, String)> = vec![
        (
            "LIFTOFF_STATE_DIR".into(),
            dir.join("state").display().to_string(),
        ),
        (
            "LIFTOFF_IMAGE_CACHE_DIR".into(),
            cache.display().to_string(),
        ),
        (
            "ADDITIONAL_ROOT_CAS".into(),
            reg.ca.cert_path().display().to_string(),
        ),
    ];
    let env: Env = pairs.into_iter().collect();
    let config = match Config::load(&env).into_result() {
        Ok(c) => c,
        Err(e) => panic!("config: {e:?}"),
    };
    let agent = liftoff::http::agent_from_config(&config).unwrap();
    (Store::from_config(&config), agent)
}

/// A registry holding the test image as `test/app:v1`; its layer digests
/// and sizes, lowest first.
fn registry_with_image(d: &Path) -> (Registry, Vec<(String, u64)>) {
    let reg = Registry::start(&d.join("registry"), None);
    let layout = build_image(d);
    reg.push(&format!("oci:{}:v1", layout.display()), "test/app:v1", &[]);
    let (_, manifest) = v1_manifest(&layout);
    let layers = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            (
                l["digest"].as_str().unwrap().to_string(),
                l["size"].as_u64().unwrap(),
            )
        })
        .collect();
    (reg, layers)
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Nothing half-written: no temporary files, no root, no name; every blob
/// kept hashes to its name.
fn nothing_half_written(cache: &Path) {
    for d in ["tmp", "roots", "refs"] {
        let left = entries(&cache.join(d));
        assert!(left.is_empty(), "{d}/ after a failed pull: {left:?}");
    }
    for blob in entries(&cache.join("blobs/sha256")) {
        let name = blob.file_name().unwrap().to_str().unwrap().to_string();
        assert_eq!(
            liftoff::image::sha256(&std::fs::read(&blob).unwrap()),
            format!("sha256:{name}"),
            "a kept blob is whole and verified"
        );
    }
}

/// A relay in front of `reg` that injects `fault` into the first `times`
/// fetches of `blob`.
fn blob_fault(reg: &Registry, blob: &str, fault: Fault, times: usize) -> Relay {
    Relay::start(
        reg,
        vec![Rule::new(&format!("/blobs/{blob}"), fault, times)],
    )
}

/// The test image as pulled through `host` (the registry or a relay).
fn app_v1(host: &str) -> String {
    format!("{host}/test/app:v1")
}

/// Pulls `reference`, which must succeed with the busybox layer unpacked.
fn pull_whole(s: &Store, agent: &ureq::Agent, reference: &str) -> Lease {
    let lease = s.ensure(agent, reference, false, &mut |_| {}).unwrap();
    assert!(lease.root().join("bin/busybox").is_file());
    lease
}

/// Pulls `reference`, which must fail: the error and its message (shown).
fn pull_fails(s: &Store, agent: &ureq::Agent, reference: &str) -> (Error, String) {
    let e = s.ensure(agent, reference, false, &mut |_| {}).unwrap_err();
    let msg = e.to_string();
    eprintln!("error: {msg}");
    (e, msg)
}

/// A registry error that says it may pass if tried again.
fn assert_transient(e: &Error) {
    assert!(
        matches!(
            e,
            Error::Registry {
                transient: true,
                ..
            }
        ),
        "{e:?}"
    );
}

#[test]
fn status_429_and_5xx_are_tried_again_then_named() {
    let d = open_tempdir();
    let (reg, layers) = registry_with_image(d.path());
    let busybox = &layers[0].0;

    // Once each: a 429 on the manifest, a 503 and a 500 on a layer. Tried
    // again, the pull succeeds.
    let relay = Relay::start(
        &reg,
        vec![
            Rule::new("/manifests/", Fault::Status(429), 1),
            Rule::new(&format!("/blobs/{busybox}"), Fault::Status(503), 1),
            Rule::new(&format!("/blobs/{}", layers[1].0), Fault::Status(500), 1),
        ],
    );
    let (s, agent) = store(d.path(), &reg, &d.path().join("cache-ok"));
    let lease = pull_whole(&s, &agent, &app_v1(&relay.host));
    assert_eq!(
        (relay.injected(0), relay.injected(1), relay.injected(2)),
        (1, 1, 1)
    );
    assert_eq!(reg.blob_gets(busybox), 1, "the 503 never reached it");
    drop(lease);
    drop(relay);

    // Always failing: tried a few times, then an error naming the image
    // and the status; nothing is left in the cache.
    for (path, code) in [
        ("/manifests/".to_string(), 429),
        (format!("/blobs/{busybox}"), 502),
        ("/manifests/".to_string(), 503),
    ] {
        let relay = Relay::start(&reg, vec![Rule::new(&path, Fault::Status(code), 1000)]);
        let cache = d.path().join(format!("cache-{code}"));
        let (s, agent) = store(d.path(), &reg, &cache);
        let reference = app_v1(&relay.host);
        let (e, msg) = pull_fails(&s, &agent, &reference);
        assert_transient(&e);
        assert!(msg.contains(&reference), "names the image: {msg}");
        assert!(
            msg.contains(&format!("HTTP {code}")),
            "names the cause: {msg}"
        );
        assert!(msg.contains("tried again"), "{msg}");
        assert_eq!(relay.injected(0), 3, "{path} {code}: tried 3 times");
        nothing_half_written(&cache);
    }
}

#[test]
fn a_connection_cut_mid_blob_is_tried_again_and_never_kept_half() {
    let d = open_tempdir();
    let (reg, layers) = registry_with_image(d.path());
    let (busybox, size) = &layers[0];
    assert!(*size > 100_000, "the busybox layer is large enough to cut");

    // Cut once after 64 KiB: the second try gets it whole.
    let relay = blob_fault(&reg, busybox, Fault::CutAfter(64 << 10), 1);
    let (s, agent) = store(d.path(), &reg, &d.path().join("cache-ok"));
    let lease = pull_whole(&s, &agent, &app_v1(&relay.host));
    assert_eq!(relay.injected(0), 1);
    assert_eq!(relay.requests(&format!("/blobs/{busybox}")), 2);
    drop(lease);
    drop(relay);

    // Cut every time: an error naming the image and the blob, nothing kept.
    let relay = blob_fault(&reg, busybox, Fault::CutAfter(64 << 10), 1000);
    let cache = d.path().join("cache-cut");
    let (s, agent) = store(d.path(), &reg, &cache);
    let reference = app_v1(&relay.host);
    let (e, msg) = pull_fails(&s, &agent, &reference);
    assert_transient(&e);
    assert!(msg.contains(&reference), "{msg}");
    assert!(msg.contains(busybox.as_str()), "names the blob: {msg}");
    assert_eq!(relay.injected(0), 3, "tried 3 times");
    nothing_half_written(&cache);
    assert!(!cache.join("blobs/sha256").join(&busybox[7..]).exists());
}

#[test]
fn a_connection_stalled_mid_blob_ends_at_the_deadline() {
    let d = open_tempdir();
    let (reg, layers) = registry_with_image(d.path());
    let busybox = &layers[0].0;
    let relay = blob_fault(&reg, busybox, Fault::StallAfter(64 << 10), 1000);
    let cache = d.path().join("cache");
    let (mut s, agent) = store(d.path(), &reg, &cache);
    // A run's pull is bounded by the run's timeout: here 8 s.
    s.deadline = Some(std::time::Instant::now() + std::time::Duration::from_secs(8));
    let reference = app_v1(&relay.host);
    let (e, msg) = pull_fails(&s, &agent, &reference);
    assert!(matches!(e, Error::Registry { .. }), "{e:?}");
    assert!(msg.contains(&reference), "{msg}");
    assert!(msg.contains("timeout"), "names the cause: {msg}");
    assert!(
        msg.contains(busybox.as_str()),
        "names the stalled blob: {msg}"
    );
    assert!(relay.injected(0) >= 1);
    nothing_half_written(&cache);
}

#[test]
fn a_full_disk_mid_pull_is_named_and_leaves_nothing_half_written() {
    let uid = support::registry::run("id", &["-u"]);
    assert_eq!(
        uid.trim(),
        "0",
        "this test mounts a small tmpfs as LIFTOFF_IMAGE_CACHE_DIR to fill it: run it as root (scripts/test.sh does)"
    );
    let d = open_tempdir();
    let (reg, layers) = registry_with_image(d.path());
    let blobs: u64 = layers.iter().map(|l| l.1).sum();
    let reference = app_v1(&reg.host);

    // Full while the busybox layer downloads.
    let small = d.path().join("small");
    let _m1 = Tmpfs::mount_at(&small, &format!("size={},mode=0700", 256 << 10));
    let (s, agent) = store(d.path(), &reg, &small);
    let (e, msg) = pull_fails(&s, &agent, &reference);
    assert!(matches!(e, Error::Cache { .. }), "{e:?}");
    assert!(msg.contains("No space left"), "{msg}");
    assert!(msg.contains(&reference), "names the image: {msg}");
    assert!(msg.contains("free space"), "says what to do: {msg}");
    nothing_half_written(&small);

    // Room for the blobs but not for the unpacked root.
    let mid = d.path().join("mid");
    let m2 = Tmpfs::mount_at(&mid, &format!("size={},mode=0700", blobs + (512 << 10)));
    let (s, agent) = store(d.path(), &reg, &mid);
    let (e, msg) = pull_fails(&s, &agent, &reference);
    // Typed where it happens (ENOSPC while unpacking), not read from the text.
    assert!(matches!(e, Error::Cache { .. }), "{e:?}");
    assert!(msg.contains("No space left"), "{e:?}");
    assert!(
        msg.contains(&reference) || msg.contains("image cache"),
        "{msg}"
    );
    nothing_half_written(&mid);

    // Given room, the same cache pulls the image (reusing the whole blobs).
    m2.remount("size=64m");
    let lease = pull_whole(&s, &agent, &reference);
    assert_eq!(reg.blob_gets(&layers[0].0), 2, "fetched once per cache");
    drop(lease);
}

/// A cancel (the run's flag, as the executor shares it) stops a pull at its
/// next request: here set once the manifest and config are in, so no layer
/// is fetched, and nothing half-written stays behind.
#[test]
fn a_cancel_stops_a_pull_at_its_next_step() {
    let d = open_tempdir();
    let (reg, layers) = registry_with_image(d.path());
    let cache = d.path().join("cache");
    let (mut s, agent) = store(d.path(), &reg, &cache);
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    s.cancel = Some(cancel.clone());
    let reference = app_v1(&reg.host);
    let e = s
        .ensure(&agent, &reference, false, &mut |m| {
            if m.contains("bytes to fetch") {
                cancel.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        })
        .unwrap_err();
    let msg = e.to_string();
    eprintln!("error: {msg}");
    assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
    assert!(
        msg.contains(&reference) && msg.contains("cancelled"),
        "{msg}"
    );
    for (l, _) in &layers {
        assert_eq!(reg.blob_gets(l), 0, "no layer fetched after the cancel");
    }
    nothing_half_written(&cache);
}

/// A cancel while a blob streams stops the download at its next read: the
/// relay holds the busybox layer after 64 KiB, the test sets the run's
/// cancel flag, lets the relay go on, and the pull ends cancelled with no
/// part of the blob kept.
#[test]
fn a_cancel_mid_blob_stops_the_download() {
    let d = open_tempdir();
    let (reg, layers) = registry_with_image(d.path());
    let busybox = layers[0].0.clone();
    let relay = blob_fault(&reg, &busybox, Fault::PauseAfter(64 << 10), 1);
    let cache = d.path().join("cache");
    let (mut s, agent) = store(d.path(), &reg, &cache);
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    s.cancel = Some(cancel.clone());
    let reference = app_v1(&relay.host);
    let e = std::thread::scope(|scope| {
        let pull = scope.spawn(|| s.ensure(&agent, &reference, false, &mut |_| {}));
        relay.wait_paused();
        cancel.store(true, std::sync::atomic::Ordering::SeqCst);
        relay.resume();
        pull.join().unwrap().unwrap_err()
    });
    let msg = e.to_string();
    eprintln!("error: {msg}");
    assert!(matches!(e, Error::Cancelled { .. }), "{e:?}");
    assert!(msg.contains(&reference), "{msg}");
    assert_eq!(
        relay.requests(&format!("/blobs/{busybox}")),
        1,
        "not tried again"
    );
    for (l, _) in &layers[1..] {
        assert_eq!(relay.requests(l), 0, "no later layer fetched");
    }
    nothing_half_written(&cache);
    assert!(!cache.join("blobs/sha256").join(&busybox[7..]).exists());
}
