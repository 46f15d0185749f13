//! OpenTofu/Terraform for runs, through the real tool room: test releases
//! made with Debian's gpg (support/tool_release.rs) served by a real HTTP
//! server on 127.0.0.1 in the TofuDL and releases.hashicorp.com layouts, and
//! from a local directory with no network; every bad input of issue 17
//! fails with the tool, version and source named and nothing installed;
//! the cache is shared, downloads once under concurrency, prunes least
//! recently used and never what a run holds. No root needed.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use liftoff::tools::openpgp::PgpError;
use liftoff::tools::source::SourceError;
use liftoff::tools::zip::ZipError;
use liftoff::tools::{Bound, Problem, Settings, ToolError, ToolName, Tools};
use support::tool_release::{
    Files, Signing, ToolServer, keys, lay_out, platform, release, serve_releases, serve_tofudl,
};

struct World {
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl World {
    fn new() -> World {
        let dir = support::runs::open_tempdir();
        let path = dir.path().to_path_buf();
        World {
            _dir: dir,
            dir: path,
        }
    }

    fn tools(&self, dir: Option<&Path>, mirror: Option<String>, keys: Option<PathBuf>) -> Tools {
        self.tools_with(dir, mirror, keys, 1 << 30)
    }

    fn tools_with(
        &self,
        dir: Option<&Path>,
        mirror: Option<String>,
        keys: Option<PathBuf>,
        max: u64,
    ) -> Tools {
        let agent =
            liftoff::http::agent(&Default::default(), &[], liftoff::http::Timeouts::default())
                .unwrap();
        Tools::open(
            Settings {
                dir: dir.map(Path::to_path_buf),
                mirror,
                keys,
                cache_dir: self.dir.join("cache"),
                cache_max_bytes: max,
            },
            agent,
        )
        .unwrap()
    }
}

fn signing(by_subkey: bool, digest: &'static str) -> Signing<'static> {
    Signing {
        key: &keys().a,
        digest,
        by_subkey,
    }
}

/// The operator's key file trusting key `a` (as for a self-built mirror).
fn trust_a(w: &World) -> PathBuf {
    let p = w.dir.join("keys.asc");
    std::fs::write(&p, keys().a.export()).unwrap();
    p
}

/// Runs an installed binary. ETXTBSY is retried: another test thread's
/// fork can briefly hold a copy of the fd the cache wrote the binary with
/// (until that child execs), the race Go's os/exec retries too.
fn run_binary(path: &Path) -> String {
    let mut tries = 0;
    let out = loop {
        match Command::new(path).arg("version").output() {
            Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            r => break r.unwrap(),
        }
    };
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn provide(t: &Tools, tool: ToolName, v: &str) -> Result<liftoff::tools::cache::Lease, ToolError> {
    t.provide(tool, v, &Bound::default(), &mut |m| eprintln!("note: {m}"))
}

/// `s` serving tofu 1.8.5 at /m (signed by key `a`'s subkey, SHA-512), and
/// tools using it as their mirror, trusting `a`.
fn tofu_185_mirror(w: &World, s: &ToolServer) -> Tools {
    serve_releases(
        s,
        "/m",
        "tofu",
        &[(
            "1.8.5",
            release("tofu", "1.8.5", None, Some(signing(true, "SHA512"))),
        )],
    );
    w.tools(None, Some(s.url("/m")), Some(trust_a(w)))
}

/// Air-gapped: release files in a local directory, flat and one directory
/// per version; exact versions and constraints; no network at all.
#[test]
fn a_local_directory_serves_flat_and_per_version_releases() {
    let w = World::new();
    let rel = w.dir.join("releases");
    for (v, per_version) in [("1.7.3", false), ("1.8.5", true), ("1.9.0-rc1", false)] {
        lay_out(
            &rel,
            v,
            &release("tofu", v, None, Some(signing(false, "SHA256"))),
            per_version,
        );
    }
    let t = w.tools(Some(&rel), None, Some(trust_a(&w)));
    let cache = &liftoff::metrics::launcher::TOOL_CACHE;
    let misses = cache.misses.get();
    let lease = provide(&t, ToolName::OpenTofu, "1.7.3").unwrap();
    assert!(run_binary(&lease.binary).contains("tofu v1.7.3"));
    assert!(cache.misses.get() > misses, "a download is a cache miss");
    let hits = cache.hits.get();
    provide(&t, ToolName::OpenTofu, "1.7.3").unwrap();
    assert!(
        cache.hits.get() > hits,
        "an installed version is a cache hit"
    );
    assert!(cache.size_bytes.get() > 0.0, "the cache's size is reported");
    let lease = provide(&t, ToolName::OpenTofu, "~> 1.7").unwrap();
    assert_eq!(
        lease.version.to_string(),
        "1.8.5",
        "pre-releases are not picked by a range"
    );
    assert!(run_binary(&lease.binary).contains("tofu v1.8.5"));
    let lease = provide(&t, ToolName::OpenTofu, "1.9.0-rc1").unwrap();
    assert!(run_binary(&lease.binary).contains("v1.9.0-rc1"));
    // Installed read-only for everyone but the owner, executable by all.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&lease.binary)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o755);
}

/// TofuDL layout (api.json + a URL template whose downloads redirect, as
/// GitHub's do), signatures by the RSA 4096 primary over SHA-256 and by the
/// RSA 2048 subkey over SHA-512; a constraint picks the newest match.
#[test]
fn a_tofudl_mirror_with_redirects_and_both_keys_and_digests() {
    let w = World::new();
    let s = ToolServer::start();
    serve_tofudl(
        &s,
        "/tofu",
        &[
            (
                "1.8.5",
                release("tofu", "1.8.5", None, Some(signing(false, "SHA256"))),
            ),
            (
                "1.9.1",
                release("tofu", "1.9.1", None, Some(signing(true, "SHA512"))),
            ),
            (
                "2.0.0",
                release("tofu", "2.0.0", None, Some(signing(false, "SHA512"))),
            ),
        ],
    );
    let mirror = format!(
        "{} {}",
        s.url("/tofu/api.json"),
        s.url("/r/tofu/v{{ .Version }}/{{ .Artifact }}")
    );
    let t = w.tools(None, Some(mirror), Some(trust_a(&w)));
    let lease = provide(&t, ToolName::OpenTofu, ">= 1.6, < 2.0").unwrap();
    assert_eq!(lease.version.to_string(), "1.9.1");
    assert!(run_binary(&lease.binary).contains("tofu v1.9.1"));
    assert_eq!(
        s.count("/r/tofu/v1.9.1/tofu_1.9.1_linux_amd64.zip"),
        1,
        "through the redirect"
    );
    let lease = provide(&t, ToolName::OpenTofu, "1.8.5").unwrap();
    assert!(run_binary(&lease.binary).contains("tofu v1.8.5"));
    // Cached: the second time nothing is downloaded.
    let before = s.count(".zip");
    provide(&t, ToolName::OpenTofu, "1.8.5").unwrap();
    assert_eq!(s.count(".zip"), before);
}

/// releases.hashicorp.com's layout for Terraform, signed by the subkey.
#[test]
fn a_releases_layout_mirror_serves_terraform() {
    let w = World::new();
    let s = ToolServer::start();
    serve_releases(
        &s,
        "/hc",
        "terraform",
        &[
            (
                "1.5.7",
                release("terraform", "1.5.7", None, Some(signing(true, "SHA512"))),
            ),
            (
                "1.6.0",
                release("terraform", "1.6.0", None, Some(signing(true, "SHA256"))),
            ),
        ],
    );
    let t = w.tools(None, Some(s.url("/hc")), Some(trust_a(&w)));
    let lease = provide(&t, ToolName::Terraform, "~> 1.5.0").unwrap();
    assert_eq!(lease.version.to_string(), "1.5.7");
    assert!(lease.binary.ends_with("bin/terraform"));
    assert!(run_binary(&lease.binary).contains("terraform v1.5.7"));
    let lease = provide(&t, ToolName::Terraform, "1.6.0").unwrap();
    assert!(run_binary(&lease.binary).contains("terraform v1.6.0"));
}

/// Whether a problem is the expected one.
type Is = fn(&Problem) -> bool;

fn expect(r: Result<liftoff::tools::cache::Lease, ToolError>) -> ToolError {
    match r {
        Ok(l) => panic!("expected an error, got {}", l.binary.display()),
        Err(e) => e,
    }
}

/// Every message names the tool, the version and the source.
fn named(e: &ToolError, version: &str, source: &str) {
    let m = e.to_string();
    assert!(m.contains(e.tool.name()), "{m}");
    assert!(m.contains(version), "{version} not in {m}");
    assert!(m.contains(source), "{source} not in {m}");
}

/// Each bad input of the issue fails, names tool, version and source, and
/// leaves nothing in the cache.
#[test]
fn bad_inputs_fail_clearly_and_install_nothing() {
    let w = World::new();
    let s = ToolServer::start();
    let good = release("tofu", "1.8.5", None, Some(signing(false, "SHA256")));
    let sums = good[1].1.clone();
    let zip = good[0].1.clone();
    // The signed release with one changed part.
    let with = |name: &str, data: Option<Vec<u8>>| -> Vec<(String, Vec<u8>)> {
        good.iter()
            .filter_map(|(n, d)| {
                if n.ends_with(name) {
                    data.clone().map(|d| (n.clone(), d))
                } else {
                    Some((n.clone(), d.clone()))
                }
            })
            .collect()
    };
    let mut flipped = zip.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 1;
    let truncated = zip[..zip.len() - 10].to_vec();
    // A release whose zip (correctly signed) escapes or lacks the binary.
    let escaping = release(
        "tofu",
        "1.8.5",
        Some(vec![("../../tofu".into(), b"#!/bin/sh\n".to_vec())]),
        Some(signing(false, "SHA256")),
    );
    let empty = release(
        "tofu",
        "1.8.5",
        Some(vec![("README.md".into(), b"no binary here\n".to_vec())]),
        Some(signing(false, "SHA256")),
    );
    let by_stranger = release(
        "tofu",
        "1.8.5",
        None,
        Some(Signing {
            key: &keys().b,
            digest: "SHA512",
            by_subkey: false,
        }),
    );
    let _ = sums;
    let cases: Vec<(&str, Files, Is)> = vec![
        ("tampered", with(".zip", Some(flipped)), |p| {
            matches!(p, Problem::Checksum { .. })
        }),
        ("truncated", with(".zip", Some(truncated)), |p| {
            matches!(p, Problem::Checksum { .. })
        }),
        ("unsigned", with(".gpgsig", None), |p| {
            matches!(p, Problem::Unsigned(_))
        }),
        ("stranger", by_stranger, |p| {
            matches!(
                p,
                Problem::Signature {
                    error: PgpError::UnknownSigner(_),
                    ..
                }
            )
        }),
        (
            "garbage-sig",
            with(".gpgsig", Some(b"not a signature".to_vec())),
            |p| {
                matches!(
                    p,
                    Problem::Signature {
                        error: PgpError::Malformed(_),
                        ..
                    }
                )
            },
        ),
        (
            "changed-sums",
            with(
                "SHA256SUMS",
                Some(format!("{}  tofu_1.8.5_linux_amd64.zip\n", "1".repeat(64)).into_bytes()),
            ),
            |p| {
                matches!(
                    p,
                    Problem::Signature {
                        error: PgpError::BadSignature(_),
                        ..
                    }
                )
            },
        ),
        ("escape", escaping, |p| {
            matches!(
                p,
                Problem::Archive {
                    error: ZipError::PathEscape(_),
                    ..
                }
            )
        }),
        ("no-binary", empty, |p| {
            matches!(
                p,
                Problem::Archive {
                    error: ZipError::Missing(_),
                    ..
                }
            )
        }),
    ];
    let keys_file = trust_a(&w);
    for (name, files, is) in cases {
        serve_releases(&s, &format!("/{name}"), "tofu", &[("1.8.5", files)]);
        let t = w.tools(
            None,
            Some(s.url(&format!("/{name}"))),
            Some(keys_file.clone()),
        );
        let e = expect(provide(&t, ToolName::OpenTofu, "1.8.5"));
        assert!(is(&e.problem), "{name}: {e:?}");
        named(&e, "1.8.5", &s.url(&format!("/{name}")));
        assert!(
            t.cache().list().is_empty(),
            "{name}: something was installed"
        );
    }

    // A version not in the list; a constraint nothing matches.
    serve_releases(&s, "/ok", "tofu", &[("1.8.5", good.clone())]);
    let t = w.tools(None, Some(s.url("/ok")), Some(keys_file.clone()));
    let e = expect(provide(&t, ToolName::OpenTofu, "1.8.4"));
    assert_eq!(*e.problem, Problem::NotFound);
    named(&e, "1.8.4", &s.url("/ok"));
    let e = expect(provide(&t, ToolName::OpenTofu, "~> 1.9"));
    assert!(
        matches!(&*e.problem, Problem::NoMatch(l) if l == &vec!["1.8.5".to_string()]),
        "{e:?}"
    );
    named(&e, "~> 1.9", &s.url("/ok"));

    // A mirror that is down; one that answers garbage.
    let down = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/m", l.local_addr().unwrap())
    };
    let t = w.tools(None, Some(down.clone()), None);
    let e = expect(provide(&t, ToolName::OpenTofu, "1.8.5"));
    assert!(
        matches!(
            *e.problem,
            Problem::Source(liftoff::tools::source::SourceError::Down(_))
        ),
        "{e:?}"
    );
    named(&e, "1.8.5", &down);
    let e = expect(provide(&t, ToolName::OpenTofu, "~> 1.8"));
    assert!(matches!(*e.problem, Problem::Source(_)), "{e:?}");
    s.put("/junk/api.json", b"<html>captive portal</html>".to_vec());
    let t = w.tools(None, Some(s.url("/junk/api.json")), None);
    let e = expect(provide(&t, ToolName::OpenTofu, "~> 1.8"));
    assert!(
        matches!(
            *e.problem,
            Problem::Source(liftoff::tools::source::SourceError::Garbage(_))
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("api.json"), "{e}");
    assert!(t.cache().list().is_empty());
}

/// Without the operator's key file, the test key is no vendor's: refused.
/// The compiled-in keys stay trusted alongside LIFTOFF_TOOLS_KEYS.
#[test]
fn operator_keys_are_needed_for_a_self_signed_mirror() {
    let w = World::new();
    let rel = w.dir.join("releases");
    lay_out(
        &rel,
        "1.8.5",
        &release("tofu", "1.8.5", None, Some(signing(false, "SHA512"))),
        false,
    );
    let t = w.tools(Some(&rel), None, None);
    let e = expect(provide(&t, ToolName::OpenTofu, "1.8.5"));
    assert!(
        matches!(
            *e.problem,
            Problem::Signature {
                error: PgpError::UnknownSigner(_),
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains(&keys().a.fpr), "{e}");
    assert!(e.to_string().contains("LIFTOFF_TOOLS_KEYS"), "{e}");
    let t = w.tools(Some(&rel), None, Some(trust_a(&w)));
    provide(&t, ToolName::OpenTofu, "1.8.5").unwrap();
    // A key file that is not keys is a configuration error.
    let junk = w.dir.join("junk.asc");
    std::fs::write(&junk, "hello").unwrap();
    let agent = liftoff::http::agent(&Default::default(), &[], Default::default()).unwrap();
    let err = Tools::open(
        Settings {
            keys: Some(junk),
            cache_dir: w.dir.join("c2"),
            ..Settings::default()
        },
        agent,
    )
    .err()
    .unwrap();
    assert!(err.contains("LIFTOFF_TOOLS_KEYS"), "{err}");
}

/// Two runs asking for the same uncached version at once download it once
/// and both get it.
#[test]
fn concurrent_installs_download_once() {
    let (w, s) = (World::new(), ToolServer::start());
    let t = tofu_185_mirror(&w, &s);
    std::thread::scope(|sc| {
        let runs: Vec<_> = (0..4)
            .map(|_| sc.spawn(|| provide(&t, ToolName::OpenTofu, "1.8.5").map(|l| l.binary)))
            .collect();
        for r in runs {
            let bin = r.join().unwrap().unwrap();
            assert!(run_binary(&bin).contains("tofu v1.8.5"));
        }
    });
    assert_eq!(s.count("tofu_1.8.5_linux_amd64.zip"), 1);
}

/// Least recently used versions go first; a version a run holds stays even
/// when it is the oldest; the CLI's rm refuses it too.
#[test]
fn prune_is_lru_and_keeps_leased_versions() {
    let w = World::new();
    let rel = w.dir.join("releases");
    for v in ["1.0.0", "1.1.0", "1.2.0", "1.3.0"] {
        lay_out(
            &rel,
            v,
            &release("tofu", v, None, Some(signing(false, "SHA256"))),
            true,
        );
    }
    let one = release("tofu", "1.0.0", None, None)[0].1.len() as u64;
    let _ = one;
    // Each install is ~100 bytes: a budget for two.
    let size = {
        let t = w.tools(Some(&rel), None, Some(trust_a(&w)));
        let l = provide(&t, ToolName::OpenTofu, "1.0.0").unwrap();
        std::fs::metadata(&l.binary).unwrap().len()
    };
    let t = w.tools_with(Some(&rel), None, Some(trust_a(&w)), size * 2);
    let held = provide(&t, ToolName::OpenTofu, "1.0.0").unwrap(); // the oldest, held
    drop(provide(&t, ToolName::OpenTofu, "1.1.0").unwrap());
    drop(provide(&t, ToolName::OpenTofu, "1.2.0").unwrap());
    drop(provide(&t, ToolName::OpenTofu, "1.3.0").unwrap());
    let left: Vec<String> = t.cache().list().into_iter().map(|i| i.version).collect();
    assert!(
        left.contains(&"1.0.0".to_string()),
        "held version pruned: {left:?}"
    );
    assert!(left.contains(&"1.3.0".to_string()), "{left:?}");
    assert!(!left.contains(&"1.1.0".to_string()), "{left:?}");
    assert!(left.len() <= 3, "{left:?}");
    let in_use: Vec<bool> = t
        .cache()
        .list()
        .iter()
        .filter(|i| i.version == "1.0.0")
        .map(|i| i.in_use)
        .collect();
    assert_eq!(in_use, vec![true]);
    let err = t
        .cache()
        .remove(ToolName::OpenTofu, &held.version)
        .unwrap_err();
    assert!(err.contains("in use"), "{err}");
    assert!(run_binary(&held.binary).contains("v1.0.0"));
    drop(held);
    assert!(
        t.cache()
            .remove(ToolName::OpenTofu, &"1.0.0".parse_version())
            .unwrap()
    );
}

trait ParseVersion {
    fn parse_version(&self) -> liftoff::tools::version::Version;
}
impl ParseVersion for &str {
    fn parse_version(&self) -> liftoff::tools::version::Version {
        liftoff::tools::version::Version::parse(self).unwrap()
    }
}

/// `liftoff tool install|ls|rm` pre-seed and manage the cache (the binary,
/// configured by environment like the service).
#[test]
fn the_tool_command_installs_lists_and_removes() {
    let w = World::new();
    let rel = w.dir.join("releases");
    lay_out(
        &rel,
        "1.8.5",
        &release("terraform", "1.8.5", None, Some(signing(true, "SHA512"))),
        false,
    );
    let keys_file = trust_a(&w);
    let liftoff = |args: &[&str]| {
        let out = Command::new(support::liftoff_bin())
            .args(args)
            .env_clear()
            .env("LIFTOFF_TOOLS_DIR", &rel)
            .env("LIFTOFF_TOOLS_KEYS", &keys_file)
            .env("LIFTOFF_TOOLS_CACHE_DIR", w.dir.join("cache"))
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = liftoff(&["tool", "install", "terraform", "~> 1.8"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("terraform 1.8.5 installed"), "{out}");
    let (code, out, _) = liftoff(&["tool", "ls"]);
    assert_eq!(code, 0);
    assert!(out.contains("terraform\t1.8.5"), "{out}");
    let (code, out, _) = liftoff(&["tool", "ls", "--json"]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v[0]["version"], "1.8.5");
    let (code, _, err) = liftoff(&["tool", "install", "terraform", "9.9.9"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("terraform 9.9.9 not found in directory"),
        "{err}"
    );
    let (code, _, err) = liftoff(&["tool", "install", "pulumi", "1.0.0"]);
    assert_eq!(code, 78, "{err}");
    let (code, out, _) = liftoff(&["tool", "rm", "terraform", "1.8.5"]);
    assert_eq!(code, 0);
    assert!(out.contains("removed"));
    let (code, _, err) = liftoff(&["tool", "rm", "terraform", "1.8.5"]);
    assert_eq!(code, 1);
    assert!(err.contains("not cached"), "{err}");
}

/// A run waits for its tool only until its timeout or its cancellation: a
/// mirror that hangs mid-download, a version another run is installing
/// (its lock held), and a run already cancelled each end with their own
/// error, and nothing is installed.
#[test]
fn a_stalled_download_ends_at_the_runs_deadline_or_cancel() {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;
    use std::time::{Duration, Instant};
    let (w, s) = (World::new(), ToolServer::start());
    s.stall(&format!("/m/tofu/1.8.5/tofu_1.8.5_{}.zip", platform()));
    let t = tofu_185_mirror(&w, &s);
    let within = |secs| Bound {
        deadline: Some(Instant::now() + Duration::from_secs(secs)),
        cancel: None,
    };
    let started = Instant::now();
    let e = t
        .provide(ToolName::OpenTofu, "1.8.5", &within(2), &mut |_| {})
        .expect_err("the stalled download fails");
    assert!(
        matches!(*e.problem, Problem::Source(SourceError::Deadline)),
        "{e:?}"
    );
    assert!(e.to_string().contains("timeout ran out"), "{e}");
    named(&e, "1.8.5", "release mirror");
    // It ended at the deadline, not when the server gave up (120 s).
    assert!(started.elapsed() < Duration::from_secs(60));
    assert!(t.cache().versions(ToolName::OpenTofu).is_empty());

    // Cancelled: no request is made at all.
    let gets = s.count("_SHA256SUMS");
    let cancelled = Bound {
        deadline: None,
        cancel: Some(Arc::new(AtomicBool::new(true))),
    };
    let e = t
        .provide(ToolName::OpenTofu, "~> 1.8", &cancelled, &mut |_| {})
        .expect_err("a cancelled run gets no tool");
    assert!(
        matches!(*e.problem, Problem::Source(SourceError::Cancelled)),
        "{e:?}"
    );
    assert_eq!(s.count("_SHA256SUMS"), gets);

    // Another run holds the version's install lock: waiting ends too.
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(
            w.dir
                .join(format!("cache/.locks/opentofu-1.9.0-{}.lock", platform())),
        )
        .unwrap();
    let held = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive).unwrap();
    let e = t
        .provide(ToolName::OpenTofu, "1.9.0", &within(1), &mut |_| {})
        .expect_err("waiting for the lock ends");
    assert!(
        matches!(*e.problem, Problem::Source(SourceError::Deadline)),
        "{e:?}"
    );
    drop(held);
}
