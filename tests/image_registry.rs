//! Pulls from a real registry (Debian's docker-registry over TLS, its test
//! CA given to liftoff through ADDITIONAL_ROOT_CAS) of images built with
//! umoci from busybox-static and pushed with skopeo: layers, a whiteout,
//! an opaque directory, zstd layers, a two-platform index, pulls by tag
//! and digest, two concurrent first pulls fetching each blob once, the
//! errors (unknown tag, another platform only, a wrong digest, no
//! registry, htpasswd without or with wrong credentials) and the cache
//! commands (`liftoff image ls|rm|prune`).

mod support;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use liftoff::config::{Config, Env};
use liftoff::image::{Error, Store};
use support::registry::{Registry, build_image, run};
use support::runs::{names, open_tempdir};

fn setup(
    dir: &Path,
    reg: &Registry,
    cache: &str,
    extra: &[(&str, String)],
) -> (Store, ureq::Agent, Vec<(String, String)>) {
    let mut pairs: Vec<(String, String)> = vec![
        (
            "LIFTOFF_STATE_DIR".into(),
            dir.join("state").display().to_string(),
        ),
        (
            "LIFTOFF_IMAGE_CACHE_DIR".into(),
            dir.join(cache).display().to_string(),
        ),
        (
            "ADDITIONAL_ROOT_CAS".into(),
            reg.ca.cert_path().display().to_string(),
        ),
    ];
    for (k, v) in extra {
        pairs.push((k.to_string(), v.clone()));
    }
    let env: Env = pairs.clone().into_iter().collect();
    let config = match Config::load(&env).into_result() {
        Ok(c) => c,
        Err(e) => panic!("config: {e:?}"),
    };
    let agent = liftoff::http::agent_from_config(&config).unwrap();
    (Store::from_config(&config), agent, pairs)
}

fn check_root(root: &Path) {
    assert!(root.join("bin/busybox").is_file());
    assert_eq!(
        std::fs::read_to_string(root.join("etc/image-marker")).unwrap(),
        "from the test image\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("layer2.txt")).unwrap(),
        "layer two\n"
    );
    assert!(!root.join("to-delete").exists(), "the whiteout removed it");
    assert_eq!(
        names(&root.join("opq")),
        ["new"],
        "the opaque directory hides the lower layer's files"
    );
}

fn liftoff(env: &[(String, String)], args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(support::liftoff_bin());
    cmd.env_clear().args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pulls_verify_unpack_and_cache_from_a_tls_registry() {
    let d = open_tempdir();
    let reg = Registry::start(&d.path().join("registry"), None);
    let layout = build_image(d.path());
    let l = layout.display().to_string();
    reg.push(&format!("oci:{l}:v1"), "test/app:v1", &[]);
    reg.push(&format!("oci:{l}:zstd"), "test/app:zstd", &[]);
    reg.push(&format!("oci:{l}:multi"), "test/app:multi", &["--all"]);
    reg.push(&format!("oci:{l}:s390x"), "test/app:s390x", &["--all"]);
    let host = reg.host.clone();

    // A crash mid-pull left a half-unpacked root in tmp/: never used, and
    // removed by the prune after the next pull.
    let (store, agent, env) = setup(d.path(), &reg, "cache", &[]);
    store.open().unwrap();
    let crashed = store.dir.join("tmp/root-crashed/rootfs/bin");
    std::fs::create_dir_all(&crashed).unwrap();

    // Two first pulls at once: one pulls, the other waits and uses it.
    let reference = format!("{host}/test/app:v1");
    let said = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let leases: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                let (store, agent, reference, said) = (&store, &agent, &reference, said.clone());
                s.spawn(move || {
                    store
                        .ensure(agent, reference, false, &mut |m| {
                            said.lock().unwrap().push(m.to_string())
                        })
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let said = said.lock().unwrap().clone();
    assert_eq!(
        said.iter().filter(|m| m.ends_with(": pulling")).count(),
        1,
        "{said:?}"
    );
    assert_eq!(leases[0].id(), leases[1].id());
    assert_eq!(leases[0].root(), leases[1].root());
    check_root(leases[0].root());
    let manifest: serde_json::Value = serde_json::from_str(&run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{reference}"),
        ],
    ))
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    for layer in layers {
        let digest = layer["digest"].as_str().unwrap();
        assert_eq!(reg.blob_gets(digest), 1, "blob {digest} fetched once");
    }
    let id = leases[0].id().to_string();
    assert!(
        !store.dir.join("tmp/root-crashed").exists(),
        "the crash's leftover was pruned"
    );
    drop(leases);

    // Cached: no registry needed; by digest; through the index; zstd.
    let image_cache = &liftoff::metrics::launcher::IMAGE_CACHE;
    let hits = image_cache.hits.get();
    let cached = store
        .ensure(&agent, &reference, false, &mut |_| {})
        .unwrap();
    assert_eq!(cached.id(), id);
    assert!(
        image_cache.hits.get() > hits,
        "a cached image is a cache hit"
    );
    assert!(image_cache.misses.get() > 0, "the first pull was a miss");
    assert!(
        image_cache.size_bytes.get() > 0.0,
        "the cache's size is reported"
    );
    let digest = reg.digest("test/app:v1");
    let by_digest = store
        .ensure(
            &agent,
            &format!("{host}/test/app@{digest}"),
            false,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(by_digest.id(), id);
    let multi = store
        .ensure(
            &agent,
            &format!("{host}/test/app:multi"),
            false,
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(multi.id(), id, "the index resolves to this host's platform");
    let zraw: serde_json::Value = serde_json::from_str(&run(
        "skopeo",
        &[
            "inspect",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{host}/test/app:zstd"),
        ],
    ))
    .unwrap();
    assert!(
        zraw["layers"][0]["mediaType"]
            .as_str()
            .unwrap()
            .ends_with("zstd"),
        "{zraw}"
    );
    let (zstore, _, _) = setup(d.path(), &reg, "cache-zstd", &[]);
    let z = zstore
        .ensure(&agent, &format!("{host}/test/app:zstd"), false, &mut |_| {})
        .unwrap();
    check_root(z.root());
    drop(z);

    // Errors, each naming the image and the cause.
    let err = |r: String| store.ensure(&agent, &r, false, &mut |_| {}).unwrap_err();
    let e = err(format!("{host}/test/app:nope"));
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("test/app:nope"), "{e}");
    let e = err(format!("{host}/test/app:s390x"));
    assert!(matches!(e, Error::Platform { .. }), "{e}");
    assert!(e.to_string().contains("s390x"), "{e}");
    let e = err(format!("{host}/test/app@sha256:{}", "0".repeat(64)));
    assert!(matches!(e, Error::NotFound { .. }), "{e}");
    let port = support::brokers::free_ports(1)[0];
    let e = err(format!("127.0.0.1:{port}/test/app:v1"));
    assert!(
        matches!(
            e,
            Error::Registry {
                transient: true,
                ..
            }
        ),
        "{e}"
    );
    let e = err("Bad/Ref".into());
    assert!(matches!(e, Error::BadReference { .. }), "{e}");

    // The commands: ls shows both names of the image, rm, prune.
    let (code, out, errs) = liftoff(&env, &["image", "ls"]);
    assert_eq!(code, 0, "{errs}");
    assert!(out.contains(&id) && out.contains(&reference), "{out}");
    let in_use = store
        .ensure(&agent, &reference, false, &mut |_| {})
        .unwrap();
    let (code, _, errs) = liftoff(&env, &["image", "prune", "--max-bytes", "0"]);
    assert_eq!(code, 0, "{errs}");
    assert!(
        in_use.root().join("bin/busybox").is_file(),
        "an image in use is never pruned"
    );
    drop((in_use, cached, by_digest, multi));
    for name in [
        format!("{host}/test/app:multi"),
        format!("{host}/test/app@{digest}"),
    ] {
        let (code, _, errs) = liftoff(&env, &["image", "rm", &name]);
        assert_eq!(code, 0, "{errs}");
    }
    let (code, _, errs) = liftoff(&env, &["image", "prune", "--max-bytes", "0"]);
    assert_eq!(code, 0, "{errs}");
    let (code, out, _) = liftoff(&env, &["image", "ls", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "[]", "{out}");
    let (code, _, errs) = liftoff(&env, &["image", "rm", &reference]);
    assert_eq!(code, 1);
    assert!(errs.contains("not in the cache"), "{errs}");
    let leftovers: Vec<PathBuf> = ["roots", "tmp", "blobs/sha256", "refs"]
        .iter()
        .flat_map(|s| {
            std::fs::read_dir(store.dir.join(s))
                .unwrap()
                .map(|e| e.unwrap().path())
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn an_htpasswd_registry_wants_the_config_json_credentials() {
    let d = open_tempdir();
    let reg = Registry::start(&d.path().join("registry"), Some(("puller", "s3cret-pw")));
    let layout = build_image(d.path());
    reg.push(
        &format!("oci:{}:v1", layout.display()),
        "private/app:v1",
        &[],
    );
    let reference = format!("{}/private/app:v1", reg.host);

    let (store, agent, _) = setup(d.path(), &reg, "cache", &[]);
    let e = store
        .ensure(&agent, &reference, false, &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e}");
    assert!(e.to_string().contains("config.json"), "{e}");

    let docker = d.path().join("docker");
    std::fs::create_dir(&docker).unwrap();
    let write = |user: &str, pw: &str| {
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pw}"));
        std::fs::write(
            docker.join("config.json"),
            serde_json::json!({"auths": {format!("https://{}", reg.host): {"auth": auth}}})
                .to_string(),
        )
        .unwrap();
    };
    let extra = [("SPACELIFT_DOCKER_CONFIG_DIR", docker.display().to_string())];
    write("puller", "wrong");
    let (store, agent, _) = setup(d.path(), &reg, "cache", &extra);
    let e = store
        .ensure(&agent, &reference, false, &mut |_| {})
        .unwrap_err();
    assert!(matches!(e, Error::Auth { .. }), "{e}");
    assert!(
        !e.to_string().contains("wrong"),
        "no password in messages: {e}"
    );
    write("puller", "s3cret-pw");
    let lease = store
        .ensure(&agent, &reference, false, &mut |_| {})
        .unwrap();
    check_root(lease.root());
}
