//! The launcher never acts as root on a path a job or an archive controls
//! (issue 12, items 1, 2, 3, 6, 16, 18): provider-cache mark-used through a
//! job's links, artifacts that are links out or FIFOs, link chains whose text
//! stays inside, implicit parent directories, a source that dribbles, an
//! archive with a huge long name; and a seeded property test over random
//! trees of links, `..` and hard links that checks nothing outside the root
//! is ever read, created or changed. Needs root (CI runs as root).

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use liftoff::beneath::{self, Follow, Root};
use liftoff::config::{Config, Env};
use liftoff::logs::sink::FileSink;
use liftoff::run::RunEvent;
use liftoff::run::cache::{CacheError, ProviderCache};
use liftoff::run::executor::SandboxExecutor;
use liftoff::run::source::{Limits, extract_tar_gz};
use liftoff::run::spec::RunSpec;
use serde_json::json;
use support::runs::{FileServer, events, open_tempdir, until_end};

const LIMIT: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------- helpers

/// What a file outside the root looks like: anything a write, a create, a
/// chown, a truncation or a new hard link would change.
#[derive(Debug, PartialEq, Eq)]
struct Seen {
    ino: u64,
    size: u64,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    content: Option<Vec<u8>>,
}

/// Every path below `dir` (itself included), never following links.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Seen> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = std::fs::symlink_metadata(&p).unwrap();
        let content = if m.is_file() {
            Some(std::fs::read(&p).unwrap())
        } else {
            None
        };
        if m.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                todo.push(e.unwrap().path());
            }
        }
        out.insert(
            p,
            Seen {
                ino: m.ino(),
                size: m.size(),
                mode: m.mode(),
                uid: m.uid(),
                gid: m.gid(),
                nlink: m.nlink(),
                mtime: (m.mtime(), m.mtime_nsec()),
                ctime: (m.ctime(), m.ctime_nsec()),
                content,
            },
        );
    }
    out
}

/// A scratch directory the job's host id can pass through.
fn scratch() -> tempfile::TempDir {
    open_tempdir()
}

/// A gzip'd tar from raw headers (names and link texts as an attacker
/// writes them).
fn raw_tar_gz(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_gnu();
        {
            let g = h.as_gnu_mut().unwrap();
            g.name[..name.len()].copy_from_slice(name.as_bytes());
            g.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(*kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_cksum();
        b.append(&h, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

// ------------------------------------------------------ item 1: mark used

#[test]
fn mark_used_through_a_job_link_never_touches_a_host_file() {
    let t = scratch();
    let host = t.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    let secret = host.join("secret");
    std::fs::write(&secret, "root's file, keep me").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let cache = ProviderCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    let sandbox_cache = Path::new("/var/cache/liftoff/providers");
    let ws = t.path().join("ws");

    // Route 1 (the reported one): a link whose text climbs out of the cache
    // path with `..` into the job's own workspace, where a "package"
    // directory holds `.liftoff-used` as a link to the host file.
    std::fs::create_dir_all(ws.join("a/b/c")).unwrap();
    std::os::unix::fs::symlink(&secret, ws.join("a/b/c/.liftoff-used")).unwrap();
    let providers = ws.join("stack/.terraform/providers");
    std::fs::create_dir_all(&providers).unwrap();
    std::os::unix::fs::symlink(sandbox_cache.join("../ws/a/b/c"), providers.join("x")).unwrap();
    // Route 2: a short link (fewer than five names) and a long one.
    std::os::unix::fs::symlink(sandbox_cache.join("host"), providers.join("y")).unwrap();
    std::os::unix::fs::symlink(sandbox_cache.join("a/b/c/d/e/f/g"), providers.join("z")).unwrap();
    // Route 3: a well-formed link to a package whose mark is (somehow) a
    // link out: touched only if it is a regular file.
    let pkg = cache.dir().join("h/n/t/1.0.0/linux_amd64");
    std::fs::create_dir_all(&pkg).unwrap();
    std::os::unix::fs::symlink(&secret, pkg.join(".liftoff-used")).unwrap();
    std::os::unix::fs::symlink(
        sandbox_cache.join("h/n/t/1.0.0/linux_amd64"),
        providers.join("w"),
    )
    .unwrap();
    // Route 4: a package directory in the cache that is itself a link.
    std::fs::create_dir_all(cache.dir().join("h/n/u/1.0.0")).unwrap();
    std::os::unix::fs::symlink(&host, cache.dir().join("h/n/u/1.0.0/linux_amd64")).unwrap();
    std::os::unix::fs::symlink(
        sandbox_cache.join("h/n/u/1.0.0/linux_amd64"),
        providers.join("v"),
    )
    .unwrap();

    let before = snapshot(&host);
    cache.mark_used(&ws, sandbox_cache);
    assert_eq!(snapshot(&host), before, "mark_used changed a host file");
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "root's file, keep me"
    );
    assert!(!host.join(".liftoff-used").exists());
    assert!(!t.path().join(".liftoff-used").exists());
    assert!(!t.path().join("cache/host/.liftoff-used").exists());
}

#[test]
fn mark_used_still_marks_a_real_package() {
    let t = scratch();
    let cache = ProviderCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    let pkg = cache
        .dir()
        .join("registry.opentofu.org/acme/p/1.0.0/linux_amd64");
    std::fs::create_dir_all(&pkg).unwrap();
    let ws = t
        .path()
        .join("ws/source/.terraform/providers/registry.opentofu.org/acme/p/1.0.0");
    std::fs::create_dir_all(&ws).unwrap();
    std::os::unix::fs::symlink(
        "/var/cache/liftoff/providers/registry.opentofu.org/acme/p/1.0.0/linux_amd64",
        ws.join("linux_amd64"),
    )
    .unwrap();
    cache.mark_used(
        &t.path().join("ws"),
        Path::new("/var/cache/liftoff/providers"),
    );
    assert!(pkg.join(".liftoff-used").is_file());
}

#[test]
fn merge_never_follows_a_job_link_out_of_its_layer() {
    let t = scratch();
    let host = t.path().join("host");
    std::fs::create_dir_all(host.join("pkgdir")).unwrap();
    std::fs::write(host.join("secret"), "root only").unwrap();
    std::fs::write(host.join("pkgdir/secret"), "root only").unwrap();
    let cache = ProviderCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    let layer = t.path().join("layer");
    // A package whose file is a link to a host file, one whose directory is
    // a link to a host directory, and a FIFO.
    let p1 = layer.join("h/n/a/1.0.0/linux_amd64");
    std::fs::create_dir_all(&p1).unwrap();
    std::os::unix::fs::symlink(host.join("secret"), p1.join("terraform-provider-a")).unwrap();
    nix::unistd::mkfifo(
        &p1.join("fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();
    std::fs::write(p1.join("real"), "provider bytes").unwrap();
    std::fs::create_dir_all(layer.join("h/n/b/1.0.0")).unwrap();
    std::os::unix::fs::symlink(host.join("pkgdir"), layer.join("h/n/b/1.0.0/linux_amd64")).unwrap();
    let stats = cache.merge(&layer).unwrap();
    assert_eq!(stats.packages, 1, "only the real package directory");
    let merged = cache.dir().join("h/n/a/1.0.0/linux_amd64");
    assert_eq!(
        std::fs::read_to_string(merged.join("real")).unwrap(),
        "provider bytes"
    );
    assert!(!merged.join("terraform-provider-a").exists());
    assert!(!merged.join("fifo").exists());
    assert!(!cache.dir().join("h/n/b").exists());
}

#[test]
fn layer_never_builds_through_a_link_left_in_it() {
    let t = scratch();
    let host = t.path().join("host");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("keep"), "root only").unwrap();
    let cache = ProviderCache::open(&t.path().join("cache"), 1 << 30).unwrap();
    let seed = t.path().join("seed");
    let pkg = seed.join("h/n/a/1.0.0/linux_amd64");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("terraform-provider-a"), "provider bytes").unwrap();
    assert_eq!(cache.merge(&seed).unwrap().packages, 1);
    // What a job of an earlier run could have left in a layer at the same
    // place: its top directory a link to a host directory, and a layer that
    // is itself a link.
    let layer = t.path().join("layer");
    std::fs::create_dir_all(&layer).unwrap();
    std::os::unix::fs::symlink(&host, layer.join("h")).unwrap();
    let as_link = t.path().join("layer-link");
    std::os::unix::fs::symlink(&host, &as_link).unwrap();
    let before = snapshot(&host);
    for l in [&layer, &as_link] {
        let e = cache.layer(l, Some((61984, 61984))).unwrap_err();
        assert!(matches!(e, CacheError::Layer { .. }), "{e:?}");
        assert!(e.to_string().contains("symlink"), "{e}");
    }
    assert_eq!(
        snapshot(&host),
        before,
        "the layer was built through a link"
    );
    // A fresh layer still gets the package.
    let fresh = t.path().join("fresh");
    assert_eq!(cache.layer(&fresh, None).unwrap().packages, 1);
    assert_eq!(
        std::fs::read_to_string(fresh.join("h/n/a/1.0.0/linux_amd64/terraform-provider-a"))
            .unwrap(),
        "provider bytes"
    );
}

// --------------------------------------------- items 2, 3: via the executor

/// A world for plain runs through the real executor (as `liftoff exec
/// --spec`): state, cache, a file server for sources and artifacts.
struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    server: FileServer,
    ex: SandboxExecutor,
}

impl World {
    fn new() -> World {
        support::sandbox::require_root();
        let dir = scratch();
        let path = dir.path().to_path_buf();
        let env: Env = [
            ("LIFTOFF_STATE_DIR", path.join("state")),
            ("LIFTOFF_PROVIDER_CACHE_DIR", path.join("providers")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.display().to_string()))
        .chain([("LIFTOFF_JOB_MEMORY".to_string(), "512MiB".to_string())])
        .collect();
        let loaded = Config::load(&env);
        let config = loaded.config;
        let ex = SandboxExecutor::new(config, env, None).unwrap();
        World {
            _dir: dir,
            dir: path,
            server: FileServer::start(),
            ex,
        }
    }

    /// Runs `spec`; the terminal event and the log.
    fn run(&self, spec: serde_json::Value) -> (RunEvent, String) {
        let spec = RunSpec::from_json(spec.to_string().as_bytes()).unwrap();
        let (ev, rx) = events(&spec.run_id);
        let out = self.dir.join(format!("{}.log", spec.run_id));
        let sink = FileSink::create(&out).unwrap();
        self.ex.run_plain(spec, Some(Box::new(sink)), ev);
        let evs = until_end(&rx, LIMIT);
        let end = evs.last().unwrap().clone();
        (end, std::fs::read_to_string(&out).unwrap_or_default())
    }
}

fn plain_spec(
    id: &str,
    steps: serde_json::Value,
    artifacts: serde_json::Value,
) -> serde_json::Value {
    json!({
        "run_id": id,
        "run_type": "proposed",
        "stack": {"id": "s", "slug": "s", "name": "S"},
        "commit": {"hash": "0", "branch": "main", "author": "a", "message": "m"},
        "steps": steps,
        "uploads": {"artifacts": artifacts},
        "timeouts": {"run": "2m"}
    })
}

#[test]
fn an_artifact_linking_to_a_host_file_is_not_uploaded() {
    let w = World::new();
    let secret = w.dir.join("host-secret");
    std::fs::write(&secret, "ROOT-ONLY-CONTENT").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let id = "01HOSTPATHSART0000000000AA";
    let url = w.server.url(&format!("/artifacts/{id}/report.txt"));
    let (end, log) = w.run(plain_spec(
        id,
        json!([{"name": "link", "argv": ["ln", "-s", secret.display().to_string(), "report.txt"]}]),
        json!([{"path": "report.txt", "url": url}]),
    ));
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(w.server.puts("/artifacts/").is_empty(), "uploaded: {log}");
    assert!(log.contains("artifact report.txt not uploaded"), "{log}");
    assert!(!log.contains("ROOT-ONLY-CONTENT"), "{log}");
}

#[test]
fn an_artifact_through_a_link_chain_that_climbs_out_is_not_uploaded() {
    let w = World::new();
    // <dir>/state/runs/<id>/workspace/source: five levels below <dir>.
    std::fs::write(w.dir.join("secret"), "ROOT-ONLY-CONTENT").unwrap();
    std::fs::set_permissions(w.dir.join("secret"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let id = "01HOSTPATHSCHAIN00000000AA";
    // Every link's text stays inside the source directory, lexically; each
    // one climbs one more level when resolved.
    let script = "mkdir a && ln -s .. a/b && ln -s a/b/.. u1 \
        && ln -s ../u1/.. a/u2 && ln -s ../a/u2/.. a/u3 && ln -s ../a/u3/.. a/u4 \
        && ln -s ../a/u4/.. a/u5 && ls a/u5/ >/dev/null 2>&1; true";
    let url = w.server.url(&format!("/artifacts/{id}/secret"));
    let (end, log) = w.run(plain_spec(
        id,
        json!([{"name": "chain", "shell": script}]),
        json!([{"path": "a/u5/secret", "url": url}]),
    ));
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(w.server.puts("/artifacts/").is_empty(), "uploaded: {log}");
    assert!(log.contains("not uploaded"), "{log}");
    assert!(log.contains("outside"), "{log}");
}

#[test]
fn a_source_directory_swapped_for_a_link_uploads_nothing() {
    let w = World::new();
    let host = w.dir.join("host-dir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::write(host.join("plan.bin"), "ROOT-ONLY-CONTENT").unwrap();
    std::fs::set_permissions(
        host.join("plan.bin"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let id = "01HOSTPATHSSWAP000000000AA";
    let url = w.server.url(&format!("/artifacts/{id}/plan.bin"));
    let script = format!(
        "cd .. && mv source moved && ln -s {} source",
        host.display()
    );
    let (end, log) = w.run(plain_spec(
        id,
        json!([{"name": "swap", "shell": script}]),
        json!([{"path": "plan.bin", "url": url}]),
    ));
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(w.server.puts("/artifacts/").is_empty(), "uploaded: {log}");
    assert!(log.contains("artifact plan.bin not uploaded"), "{log}");
    assert!(host.join("plan.bin").exists());
}

#[test]
fn a_leftover_run_directory_is_not_trusted() {
    let w = World::new();
    let host = w.dir.join("host-dir");
    std::fs::create_dir_all(&host).unwrap();
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o700)).unwrap();
    let id = "01HOSTPATHSLEFT000000000AA";
    // What a job of a crashed run with the same id could have left.
    let ws = w.dir.join("state/runs").join(id).join("workspace");
    std::fs::create_dir_all(&ws).unwrap();
    std::os::unix::fs::symlink(&host, ws.join("source")).unwrap();
    let before = snapshot(&host);
    let (end, log) = w.run(plain_spec(
        id,
        json!([{"name": "look", "shell": "test ! -L /mnt/workspace/source"}]),
        json!([]),
    ));
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert_eq!(snapshot(&host), before, "the leftover link was followed");
}

#[test]
fn a_leftover_that_cannot_be_removed_fails_the_run() {
    let w = World::new();
    let id = "01HOSTPATHSBUSY000000000AA";
    // A leftover workspace that is a mount point: removing it fails (EBUSY),
    // and the run must not build on it.
    let ws = w.dir.join("state/runs").join(id).join("workspace");
    std::fs::create_dir_all(&ws).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "leftover"])
        .arg(&ws)
        .status()
        .unwrap();
    assert!(
        mounted.success(),
        "this test needs mount(8) and CAP_SYS_ADMIN to make a leftover that cannot be removed"
    );
    std::fs::write(ws.join("left"), "by an earlier run").unwrap();
    let (end, log) = w.run(plain_spec(
        id,
        json!([{"name": "never", "shell": "true"}]),
        json!([]),
    ));
    let _ = std::process::Command::new("umount").arg(&ws).status();
    match end {
        RunEvent::Failed { reason } => {
            assert!(
                reason.contains("cannot remove what an earlier run left"),
                "{reason}"
            )
        }
        other => panic!("the run went on over a leftover: {other:?}\n{log}"),
    }
    assert!(!log.contains("step 1/1"), "{log}");
}

#[test]
fn a_fifo_artifact_does_not_block_the_run() {
    let w = World::new();
    let id = "01HOSTPATHSFIFO000000000AA";
    let url = w.server.url(&format!("/artifacts/{id}/plan.bin"));
    let (end, log) = w.run(plain_spec(
        id,
        json!([{"name": "fifo", "argv": ["mkfifo", "plan.bin"]}]),
        json!([{"path": "plan.bin", "url": url}]),
    ));
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(log.contains("is a FIFO"), "{log}");
    assert!(w.server.puts("/artifacts/").is_empty());
    assert!(!w.dir.join("state/runs").join(id).exists(), "run dir left");
}

#[test]
fn a_regular_artifact_is_still_uploaded() {
    let w = World::new();
    let id = "01HOSTPATHSPLAIN00000000AA";
    let url = w.server.url(&format!("/artifacts/{id}/plan.bin"));
    let (end, log) = w.run(plain_spec(
        id,
        json!([{"name": "plan", "shell": "mkdir -p out && echo plan-bytes > out/plan.bin && ln -s out/plan.bin link.bin"}]),
        json!([{"path": "link.bin", "url": url}]),
    ));
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    let puts = w.server.puts(&format!("/artifacts/{id}/"));
    assert_eq!(puts.len(), 1, "{log}");
    assert_eq!(puts[0].1, b"plan-bytes\n");
}

#[test]
fn run_dir_cleanup_removes_links_not_what_they_point_to() {
    let w = World::new();
    let outside = w.dir.join("outside");
    std::fs::create_dir_all(outside.join("d")).unwrap();
    std::fs::write(outside.join("d/keep"), "keep").unwrap();
    let before = snapshot(&outside);
    let id = "01HOSTPATHSCLEAN00000000AA";
    let script = format!(
        "ln -s {o} out && ln -s {o}/d d && mkdir x && ln -s ../../.. x/up",
        o = outside.display()
    );
    let (end, log) = w.run(plain_spec(
        id,
        json!([{"name": "links", "shell": script}]),
        json!([]),
    ));
    assert_eq!(end, RunEvent::Finished { exit_code: 0 }, "{log}");
    assert!(!w.dir.join("state/runs").join(id).exists());
    assert_eq!(snapshot(&outside), before);
}

// ----------------------------------------- item 2 (archive), item 16, item 6

#[test]
fn an_archive_link_chain_whose_text_stays_inside_is_refused() {
    let t = scratch();
    let outside = t.path().join("ws");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("beside"), "keep").unwrap();
    let before = snapshot(&outside);
    let archive = raw_tar_gz(&[
        ("a/", tar::EntryType::Directory, "", b""),
        ("a/b", tar::EntryType::Symlink, "..", b""),
        ("c", tar::EntryType::Symlink, "a/b/..", b""),
    ]);
    let dest = outside.join("source");
    let err = extract_tar_gz(&archive[..], &dest, Limits::default(), None).unwrap_err();
    assert!(
        matches!(err, liftoff::run::source::SourceError::Unsafe(_)),
        "{err:?}"
    );
    let err = err.to_string();
    assert!(err.contains("resolves outside"), "{err}");
    std::fs::remove_dir_all(&dest).unwrap();
    let mut after = snapshot(&outside);
    let mut before = before;
    // The directory itself changed only by holding `source` for a while.
    after.remove(&outside);
    before.remove(&outside);
    assert_eq!(after, before);
}

#[test]
fn implicit_parent_directories_belong_to_the_job() {
    support::sandbox::require_root();
    let t = scratch();
    let archive = raw_tar_gz(&[
        ("sub/deeper/main.tf", tar::EntryType::Regular, "", b"x"),
        ("other/link", tar::EntryType::Symlink, "../sub", b""),
    ]);
    let dest = t.path().join("source");
    extract_tar_gz(&archive[..], &dest, Limits::default(), Some((4242, 4343))).unwrap();
    for p in [
        "sub",
        "sub/deeper",
        "sub/deeper/main.tf",
        "other",
        "other/link",
    ] {
        let m = std::fs::symlink_metadata(dest.join(p)).unwrap();
        assert_eq!((m.uid(), m.gid()), (4242, 4343), "{p}");
    }
}

/// Extraction writes with the job's filesystem identity: a directory in
/// the tree that the job may not write to (root's, 0755) stops it, where
/// root's identity would have written through. Files it does write are the
/// job's.
#[test]
fn extraction_runs_with_the_jobs_identity() {
    support::sandbox::require_root();
    let t = scratch();
    let dest = t.path().join("source");
    std::fs::create_dir_all(dest.join("roots")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dest.join("roots"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let job = Some((4242, 4343));
    let ok = raw_tar_gz(&[("mine.tf", tar::EntryType::Regular, "", b"x")]);
    extract_tar_gz(&ok[..], &dest, Limits::default(), job).unwrap();
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(dest.join("mine.tf")).unwrap();
    assert_eq!((m.uid(), m.gid()), (4242, 4343));

    let into_roots = raw_tar_gz(&[("roots/planted.tf", tar::EntryType::Regular, "", b"x")]);
    let err = extract_tar_gz(&into_roots[..], &dest, Limits::default(), job).unwrap_err();
    assert!(
        matches!(err, liftoff::run::source::SourceError::Write(_)),
        "{err:?}"
    );
    assert!(err.to_string().contains("Permission denied"), "{err}");
    assert!(!dest.join("roots/planted.tf").exists());
    // Root's identity (no job given) writes there: the refusal above came
    // from the job's identity, not from the archive.
    extract_tar_gz(&into_roots[..], &dest, Limits::default(), None).unwrap();
    assert!(dest.join("roots/planted.tf").exists());
}

/// A GNU long-name entry of `len` bytes (then a small file): 64 MiB of one
/// letter gzips to about 65 KB.
fn long_name_archive(len: usize, pax: bool) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let (kind, name, body_len) = if pax {
        // One PAX record: "<n> path=<name>\n".
        let rec_body = len + " path=\n".len();
        let mut n = rec_body + 1;
        while n.to_string().len() + rec_body != n {
            n = n.to_string().len() + rec_body;
        }
        (tar::EntryType::XHeader, "././@PaxHeader", n)
    } else {
        (tar::EntryType::GNULongName, "././@LongLink", len + 1)
    };
    gz.write_all(raw_header(name, kind, body_len as u64).as_bytes())
        .unwrap();
    if pax {
        gz.write_all(format!("{body_len} path=").as_bytes())
            .unwrap();
    }
    let block = vec![b'a'; 1 << 20];
    let mut left = len;
    while left > 0 {
        let n = left.min(block.len());
        gz.write_all(&block[..n]).unwrap();
        left -= n;
    }
    gz.write_all(if pax { b"\n" } else { b"\0" }).unwrap();
    gz.write_all(&vec![0u8; (512 - body_len % 512) % 512])
        .unwrap();
    end_with_empty_file(gz, "file")
}

/// A tar header written by hand: `name` (ASCII, up to 100 bytes) as is,
/// mode 0644.
fn raw_header(name: &str, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.as_gnu_mut().unwrap().name[..name.len()].copy_from_slice(name.as_bytes());
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_cksum();
    h
}

/// Ends a hand-written archive: an empty regular file `name`, then the two
/// zero blocks.
fn end_with_empty_file(mut gz: flate2::write::GzEncoder<Vec<u8>>, name: &str) -> Vec<u8> {
    gz.write_all(raw_header(name, tar::EntryType::Regular, 0).as_bytes())
        .unwrap();
    gz.write_all(&[0u8; 1024]).unwrap();
    gz.finish().unwrap()
}

/// The child half of the memory test: extracts the archive named by
/// `LIFTOFF_HOSTILE_ARCHIVE` and prints its error and its peak RSS.
#[test]
fn hostile_archive_child() {
    let Some(archive) = std::env::var_os("LIFTOFF_HOSTILE_ARCHIVE") else {
        return; // only ever run as the child of the test below
    };
    let data = std::fs::read(&archive).unwrap();
    let dest = PathBuf::from(std::env::var_os("LIFTOFF_HOSTILE_DEST").unwrap());
    let r = extract_tar_gz(&data[..], &dest, Limits::default(), None);
    let err = r.err().map(|e| e.to_string()).unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap()
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string();
    println!("HOSTILE-ERR-LEN={}", err.len());
    println!("HOSTILE-ERR={}", err.chars().take(1000).collect::<String>());
    println!("HOSTILE-HWM-KB={hwm}");
}

#[test]
fn huge_long_names_stay_within_a_fixed_memory_bound() {
    const NAME: usize = 64 << 20;
    const BOUND_KB: u64 = 64 << 10; // 64 MiB for the whole test process
    let t = scratch();
    for pax in [false, true] {
        let archive = long_name_archive(NAME, pax);
        assert!(archive.len() < 200 << 10, "{} bytes", archive.len());
        let path = t.path().join(format!("hostile-{pax}.tar.gz"));
        std::fs::write(&path, &archive).unwrap();
        drop(archive);
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "hostile_archive_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("LIFTOFF_HOSTILE_ARCHIVE", &path)
            .env("LIFTOFF_HOSTILE_DEST", t.path().join(format!("dest-{pax}")))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}");
        let field = |k: &str| {
            stdout
                .lines()
                .find_map(|l| l.split_once(k).map(|(_, v)| v))
                .unwrap_or_else(|| panic!("{k} missing in {stdout}"))
                .to_string()
        };
        let hwm: u64 = field("HOSTILE-HWM-KB=").parse().unwrap();
        let err_len: usize = field("HOSTILE-ERR-LEN=").parse().unwrap();
        let err = field("HOSTILE-ERR=");
        assert!(
            hwm < BOUND_KB,
            "peak RSS {hwm} KiB extracting a {NAME}-byte name (pax: {pax})"
        );
        assert!(err.contains("refusing"), "pax {pax}: {err}");
        assert!(err_len < 1000, "the error quotes the name: {err_len} bytes");
    }
}

#[test]
fn long_names_within_the_bound_still_extract_and_are_cut_in_messages() {
    let t = scratch();
    // 300 characters: a GNU long name, under the 4096-byte bound; refused
    // for `..`, and the message shows it cut.
    let name = format!("../{}", "n".repeat(300));
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    let long_ok = format!("dir/{0}/{0}/{0}", "x".repeat(100));
    b.append_data(&mut h, &long_ok, &b"y"[..]).unwrap();
    let good = b.into_inner().unwrap().finish().unwrap();
    let dest = t.path().join("ok");
    extract_tar_gz(&good[..], &dest, Limits::default(), None).unwrap();
    assert_eq!(std::fs::read(dest.join(&long_ok)).unwrap(), b"y");

    let archive = long_name_tar(&name);
    let err = extract_tar_gz(&archive[..], &t.path().join("bad"), Limits::default(), None)
        .unwrap_err()
        .to_string();
    assert!(err.contains('…'), "{err}");
    assert!(err.len() < 400, "{err}");
}

/// A GNU long-name archive for `name` written by hand (the tar crate's
/// builder refuses `..`).
fn long_name_tar(name: &str) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let h = raw_header(
        "././@LongLink",
        tar::EntryType::GNULongName,
        name.len() as u64 + 1,
    );
    gz.write_all(h.as_bytes()).unwrap();
    let mut body = name.as_bytes().to_vec();
    body.push(0);
    body.resize(body.len().div_ceil(512) * 512, 0);
    gz.write_all(&body).unwrap();
    end_with_empty_file(gz, "short")
}

// --------------------------------------------------------- item 18: slow

/// Serves one GET with a Content-Length of a megabyte and then one byte a
/// second, until the client goes away.
fn dribbling_server() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n");
                // gzip magic, then a byte a second.
                for b in [0x1fu8, 0x8b, 8, 0].into_iter().chain(std::iter::repeat(0)) {
                    if conn.write_all(&[b]).is_err() {
                        return;
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        }
    });
    format!("http://{addr}/slow.tar.gz")
}

#[test]
fn a_slow_source_honours_the_run_timeout_and_says_so() {
    let w = World::new();
    let id = "01HOSTPATHSSLOW000000000AA";
    let mut spec = plain_spec(id, json!([{"name": "never", "argv": ["true"]}]), json!([]));
    spec["source"] = json!({"url": dribbling_server()});
    spec["timeouts"] = json!({"run": "3s"});
    let (end, log) = w.run(spec);
    match end {
        RunEvent::Failed { reason } => {
            assert!(
                reason.contains("timed out downloading the source"),
                "{reason}\n{log}"
            );
            assert!(reason.contains("3s"), "{reason}");
            assert!(!reason.contains("corrupt"), "{reason}");
        }
        e => panic!("{e:?}\n{log}"),
    }
}

// ---------------------------------------------- the property test

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

/// A random path from names the tree uses, `.` and `..`.
fn random_path(rng: &mut Rng, names: &[String]) -> String {
    let n = 1 + rng.below(4);
    let mut parts = Vec::new();
    for _ in 0..n {
        parts.push(match rng.below(8) {
            0 => "..".to_string(),
            1 => ".".to_string(),
            _ => rng.pick(names).clone(),
        });
    }
    parts.join("/")
}

/// A random link text: absolute into the sentinel or `/`, `..`-laden,
/// relative to other names, chains.
fn random_target(rng: &mut Rng, names: &[String], outside: &Path) -> String {
    match rng.below(8) {
        0 => outside
            .join(rng.pick(&["f0", "d", "d/f1", ""]))
            .display()
            .to_string(),
        1 => "/".into(),
        2 => format!(
            "{}{}",
            "../".repeat(1 + rng.below(4)),
            rng.pick(&["outside/f0", "outside", "outside/d"])
        ),
        3 => format!("{}/..", random_path(rng, names)),
        4 => format!("/cache/{}", random_path(rng, names)),
        _ => random_path(rng, names),
    }
}

/// Builds a random tree of dirs, files, links and hard links under `root`.
fn random_tree(rng: &mut Rng, root: &Path, outside: &Path, names: &[String]) {
    for _ in 0..(10 + rng.below(20)) {
        let parent = if rng.below(3) == 0 {
            root.to_path_buf()
        } else {
            root.join(rng.pick(names))
        };
        let p = parent.join(rng.pick(names));
        // Never through a link: the tree is built with plain std calls.
        if !std::fs::symlink_metadata(&parent).is_ok_and(|m| m.is_dir())
            || std::fs::symlink_metadata(&p).is_ok()
        {
            continue;
        }
        match rng.below(5) {
            0 => std::fs::create_dir(&p).unwrap(),
            1 => std::fs::write(&p, "inside").unwrap(),
            2 => {
                let files: Vec<PathBuf> = walk(root).into_iter().filter(|f| f.is_file()).collect();
                if !files.is_empty() {
                    let _ = std::fs::hard_link(rng.pick(&files), &p);
                }
            }
            _ => std::os::unix::fs::symlink(random_target(rng, names, outside), &p).unwrap(),
        }
    }
}

fn walk(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                todo.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// One case: a random tree, then random beneath operations, extraction and
/// mark-used; the sentinel must not change and no opened file may be one
/// of its inodes.
/// Returns how many of its reads a naive (following) open would have
/// served from outside the root: the cases must be hostile to mean much.
fn property_case(seed: u64, walk_only: bool) -> usize {
    let mut rng = Rng(seed | 1);
    let t = scratch();
    let outside = t.path().join("outside");
    std::fs::create_dir_all(outside.join("d")).unwrap();
    std::fs::write(outside.join("f0"), "sentinel f0").unwrap();
    std::fs::write(outside.join("d/f1"), "sentinel f1").unwrap();
    let root_path = t.path().join("root");
    std::fs::create_dir_all(&root_path).unwrap();
    let names: Vec<String> = ["a", "b", "c", "outside", ".terraform", "x"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    random_tree(&mut rng, &root_path, &outside, &names);
    let before = snapshot(&outside);
    let outside_inodes: Vec<u64> = before.values().map(|s| s.ino).collect();
    beneath::force_walk(walk_only);
    let root = Root::open(&root_path).unwrap();
    let mut hostile = 0;
    for _ in 0..40 {
        let p = PathBuf::from(random_path(&mut rng, &names));
        match rng.below(11) {
            0 | 1 => {
                let follow = if rng.below(2) == 0 {
                    Follow::Never
                } else {
                    Follow::InsideRoot
                };
                if std::fs::metadata(root_path.join(&p))
                    .is_ok_and(|m| outside_inodes.contains(&m.ino()))
                {
                    hostile += 1;
                }
                if let Ok((f, _)) = root.open_regular(&p, follow, 1 << 20) {
                    let ino = f.metadata().unwrap().ino();
                    assert!(
                        !outside_inodes.contains(&ino),
                        "seed {seed}: read a file outside through {p:?}"
                    );
                }
            }
            2 => {
                if let Ok(mut f) = root.create_file(&p, 0o644) {
                    f.write_all(b"new").unwrap();
                }
            }
            3 => {
                let _ = root.touch(&p);
            }
            4 => {
                let _ = root.mkdir_all(&p, 0o755, Some((4242, 4242)));
            }
            5 => {
                let _ = root.chown(&p, (4242, 4242));
            }
            6 => {
                let _ = root.chmod(&p, 0o600);
            }
            7 => {
                let _ = root.remove(&p);
            }
            8 => {
                let q = PathBuf::from(random_path(&mut rng, &names));
                let _ = root.hard_link(&p, &q);
            }
            9 => {
                if let Ok(d) = root.dir(&p, Follow::InsideRoot) {
                    let _ = d.touch(Path::new("marked"));
                    let _ = d.read_dir(Path::new("."));
                }
                let _ = root.resolves_inside(&p);
            }
            _ => {
                let _ = root.symlink(&p, Path::new(&random_target(&mut rng, &names, &outside)));
            }
        }
    }
    // Extraction of a random archive over the tree, and mark-used with the
    // tree as both workspace and cache.
    let mut entries: Vec<(String, tar::EntryType, String)> = Vec::new();
    for _ in 0..(3 + rng.below(10)) {
        let name = random_path(&mut rng, &names).replace("..", "x");
        let kind = *rng.pick(&[
            tar::EntryType::Regular,
            tar::EntryType::Directory,
            tar::EntryType::Symlink,
            tar::EntryType::Link,
        ]);
        let link = random_path(&mut rng, &names);
        entries.push((name, kind, link));
    }
    let raw: Vec<(&str, tar::EntryType, &str, &[u8])> = entries
        .iter()
        .map(|(n, k, l)| (n.as_str(), *k, l.as_str(), &b"data"[..]))
        .collect();
    let archive = raw_tar_gz(&raw);
    let _ = extract_tar_gz(
        &archive[..],
        &root_path,
        Limits::default(),
        Some((4242, 4242)),
    );
    let cache = ProviderCache::open(&root_path, u64::MAX).unwrap();
    cache.mark_used(&root_path, Path::new("/cache"));
    beneath::force_walk(false);
    assert_eq!(
        snapshot(&outside),
        before,
        "seed {seed} (walk only: {walk_only}): something outside the root changed"
    );
    hostile
}

#[test]
fn nothing_outside_the_root_is_ever_read_or_written() {
    support::sandbox::require_root();
    let base: u64 = match std::env::var("LIFTOFF_PROPERTY_SEED") {
        Ok(s) => s.parse().unwrap(),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64,
    };
    let cases: u64 = std::env::var("LIFTOFF_PROPERTY_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(150);
    println!("property seed {base} (replay: LIFTOFF_PROPERTY_SEED={base})");
    let mut hostile = 0;
    for i in 0..cases {
        let seed = base.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        hostile += property_case(seed, i % 2 == 1);
    }
    println!("{hostile} reads would have left the root if links were followed");
    assert!(
        cases < 50 || hostile > 0,
        "seed {base}: no case tried to read outside the root; the generator is too tame"
    );
}

/// The kernel path and the fallback walk agree on what resolves inside.
#[test]
fn openat2_and_the_fallback_walk_agree() {
    let t = scratch();
    let root_path = t.path().join("root");
    std::fs::create_dir_all(root_path.join("a/b")).unwrap();
    std::fs::write(root_path.join("a/b/f"), "x").unwrap();
    std::fs::write(t.path().join("out"), "x").unwrap();
    let links = [
        ("l1", "a/b/f"),
        ("a/l2", "../a/b"),
        ("a/b/up", ".."),
        ("l3", "a/b/up/../.."),
        ("l4", "/etc/passwd"),
        ("l5", "../out"),
        ("a/l6", "../l1"),
        ("loop", "loop"),
    ];
    for (l, target) in links {
        std::os::unix::fs::symlink(target, root_path.join(l)).unwrap();
    }
    let root = Root::open(&root_path).unwrap();
    let probe = |p: &str| -> (bool, bool) {
        let inside = root.resolves_inside(Path::new(p)).is_ok();
        let read = root
            .open_regular(Path::new(p), Follow::InsideRoot, 10)
            .is_ok();
        (inside, read)
    };
    let paths = [
        "l1",
        "a/l2/f",
        "l3",
        "l4",
        "l5",
        "a/l6",
        "loop",
        "a/b/up/b/f",
    ];
    beneath::force_walk(false);
    let kernel: Vec<_> = paths.iter().map(|p| probe(p)).collect();
    beneath::force_walk(true);
    let walked: Vec<_> = paths.iter().map(|p| probe(p)).collect();
    beneath::force_walk(false);
    assert_eq!(kernel, walked, "{paths:?}");
    assert_eq!(
        kernel,
        vec![
            (true, true),
            (true, true),
            (false, false),
            (false, false),
            (false, false),
            (true, true),
            (false, false),
            (true, true),
        ]
    );
}
