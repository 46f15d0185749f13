//! Runner images, measured in one process on one host:
//! 1. pull and unpack a ~50 MB, 5-layer image from a local registry
//!    (docker-registry over TLS): `liftoff image pull` into an empty cache
//!    beside `skopeo copy docker://… oci:…` + `umoci unpack --rootless` of
//!    the same image, interleaved; prints medians and the liftoff/peer
//!    ratio (target ≤ 1.0);
//! 2. a sandbox start on the cached image (the cache lookup and lease
//!    included) beside one on the host root, same program
//!    (`/bin/busybox true`), interleaved; prints medians and the difference
//!    (target ≤ 5 ms).
//!
//! `cargo bench --bench image_pull` (root; docker-registry, skopeo, umoci,
//! busybox-static installed: scripts/test.sh installs them); without
//! `--bench` (cargo test) it is a 1-round smoke test.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use liftoff::config::{Config, Env};
use support::bench::median;
use support::registry::{Registry, run};

/// Five layers of ~10 MB each: half random bytes, half text.
fn build_big(dir: &Path) -> String {
    let layout = dir.join("big");
    let l = layout.display().to_string();
    run("umoci", &["init", "--layout", &l]);
    run("umoci", &["new", "--image", &format!("{l}:v1")]);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for layer in 0..5 {
        let bundle = dir.join(format!("bundle{layer}"));
        let b = bundle.display().to_string();
        run(
            "umoci",
            &["unpack", "--rootless", "--image", &format!("{l}:v1"), &b],
        );
        let d = bundle.join(format!("rootfs/layer{layer}"));
        std::fs::create_dir_all(&d).unwrap();
        if layer == 0 {
            std::fs::create_dir_all(bundle.join("rootfs/bin")).unwrap();
            std::fs::copy("/bin/busybox", bundle.join("rootfs/bin/busybox")).unwrap();
        }
        for f in 0..40 {
            let mut data = Vec::with_capacity(256 << 10);
            for _ in 0..(128 << 10) / 8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.extend_from_slice(&x.to_le_bytes());
            }
            while data.len() < 256 << 10 {
                data.extend_from_slice(
                    format!("line {f} of layer {layer}: some text\n").as_bytes(),
                );
            }
            std::fs::write(d.join(format!("f{f}")), &data).unwrap();
        }
        run("umoci", &["repack", "--image", &format!("{l}:v1"), &b]);
    }
    l
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let rounds = if full { 5 } else { 1 };
    support::sandbox::require_root();
    let d = support::runs::open_tempdir();
    let reg = Registry::start(&d.path().join("registry"), None);
    let layout = build_big(d.path());
    reg.push(&format!("oci:{layout}:v1"), "bench/big:v1", &[]);
    let reference = format!("{}/bench/big:v1", reg.host);
    let bin = std::env::var("LIFTOFF_BENCH_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_liftoff").to_string());

    let (mut ours, mut peer) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        let cache = d.path().join(format!("cache{i}"));
        let t = Instant::now();
        let out = Command::new(&bin)
            .args(["image", "pull", &reference])
            .env("LIFTOFF_IMAGE_CACHE_DIR", &cache)
            .env("LIFTOFF_STATE_DIR", d.path().join("state"))
            .env("ADDITIONAL_ROOT_CAS", reg.ca.cert_path())
            .output()
            .unwrap();
        ours.push(t.elapsed().as_secs_f64());
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if i + 1 < rounds {
            std::fs::remove_dir_all(&cache).unwrap();
        }
        let oci = d.path().join(format!("peer{i}"));
        let t = Instant::now();
        run(
            "skopeo",
            &[
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                &format!("docker://{reference}"),
                &format!("oci:{}:v1", oci.display()),
            ],
        );
        run(
            "umoci",
            &[
                "unpack",
                "--rootless",
                "--image",
                &format!("{}:v1", oci.display()),
                &d.path()
                    .join(format!("peer-bundle{i}"))
                    .display()
                    .to_string(),
            ],
        );
        peer.push(t.elapsed().as_secs_f64());
        let _ = std::fs::remove_dir_all(&oci);
        let _ = std::fs::remove_dir_all(d.path().join(format!("peer-bundle{i}")));
    }
    let (o, p) = (median(&mut ours), median(&mut peer));
    println!(
        "image_pull: pull+unpack of a 5-layer ~50 MB image: liftoff {o:.2} s, skopeo copy + umoci unpack {p:.2} s (median of {rounds}); ratio {:.2} (target ≤ 1.0)",
        o / p
    );

    // 2: start on the cached image vs on the host root.
    let cache = d.path().join(format!("cache{}", rounds - 1));
    let env: Env = [
        (
            "LIFTOFF_IMAGE_CACHE_DIR".to_string(),
            cache.display().to_string(),
        ),
        (
            "LIFTOFF_STATE_DIR".to_string(),
            d.path().join("state").display().to_string(),
        ),
        ("LIFTOFF_JOB_MEMORY".to_string(), "256MiB".to_string()),
    ]
    .into_iter()
    .collect();
    let config = Config::load(&env)
        .into_result()
        .unwrap_or_else(|e| panic!("{e:?}"));
    let store = liftoff::image::Store::from_config(&config);
    let parsed = liftoff::image::Reference::parse(&reference).unwrap();
    let n = if full { 50 } else { 2 };
    let (mut img, mut host) = (Vec::new(), Vec::new());
    let argv = vec!["/bin/busybox".to_string(), "true".to_string()];
    for i in 0..n {
        for on_image in [true, false] {
            let ws = d.path().join(format!("ws-{i}-{on_image}"));
            std::fs::create_dir_all(&ws).unwrap();
            let args = liftoff::cli::exec::ExecArgs::for_command(argv.clone());
            let t = Instant::now();
            let lease = if on_image {
                store.lease(&parsed).unwrap()
            } else {
                None
            };
            let mut spec =
                liftoff::cli::exec::build_spec(&args, &Env::default(), &config, ws).unwrap();
            spec.root = lease.as_ref().map(|l| l.root().to_path_buf());
            spec.stdin = liftoff::sandbox::Stdio::Null;
            spec.stdout = liftoff::sandbox::Stdio::Null;
            spec.stderr = liftoff::sandbox::Stdio::Null;
            let mut sb = liftoff::sandbox::spawn(&spec).unwrap();
            sb.wait().unwrap();
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if on_image {
                assert!(lease.is_some(), "the image is cached");
                img.push(ms);
            } else {
                host.push(ms);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (a, b) = (median(&mut img), median(&mut host));
    println!(
        "image_pull: sandbox start+exit on the cached image {a:.1} ms, on the host root {b:.1} ms (median of {n}); difference {:.1} ms (target ≤ 5 ms)",
        a - b
    );
}
