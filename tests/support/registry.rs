//! A real registry for the image tests: Debian's `docker-registry` (the
//! Distribution reference server) over TLS with a test CA, anonymous or
//! with htpasswd authentication; and test images built from the host's
//! busybox-static with `umoci` (several layers, a whiteout, an opaque
//! directory, a two-platform index) and pushed with `skopeo`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::{TestCa, openssl};

/// Runs a program, panicking with its stderr (and what to install) when it
/// fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("{program} is needed ({e}): scripts/test.sh installs it (docker-registry, skopeo, umoci, busybox-static, apache2-utils)")
    });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub struct Registry {
    child: Child,
    /// `127.0.0.1:<port>`, as image references name it.
    pub host: String,
    pub ca: TestCa,
    pub dir: PathBuf,
    pub creds: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry storing under `dir`; `creds`: htpasswd auth.
    pub fn start(dir: &Path, creds: Option<(&str, &str)>) -> Registry {
        std::fs::create_dir_all(dir).unwrap();
        let ca = TestCa::new(&dir.join("ca"), "registry-ca");
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        ca.sign(&dir.join("server.csr"), &dir.join("server.crt"), 30);
        let port = super::brokers::free_ports(1)[0];
        let host = format!("127.0.0.1:{port}");
        let auth = match creds {
            Some((u, p)) => {
                run(
                    "htpasswd",
                    &["-Bbc", dir.join("htpasswd").to_str().unwrap(), u, p],
                );
                format!(
                    "auth:\n  htpasswd:\n    realm: liftoff-test\n    path: {}\n",
                    dir.join("htpasswd").display()
                )
            }
            None => String::new(),
        };
        let conf = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {host}\n  tls:\n    certificate: {}\n    key: {}\n{auth}",
            dir.join("data").display(),
            dir.join("server.crt").display(),
            dir.join("server.key").display(),
        );
        std::fs::write(dir.join("config.yml"), conf).unwrap();
        let log = std::fs::File::create(dir.join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(dir.join("config.yml"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("docker-registry is installed (scripts/test.sh installs the docker-registry package)");
        let mut r = Registry {
            child,
            host,
            ca,
            dir: dir.to_path_buf(),
            creds: creds.map(|(u, p)| (u.into(), p.into())),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&r.host).is_err() {
            if let Ok(Some(status)) = r.child.try_wait() {
                panic!("docker-registry exited ({status}): {}", r.log());
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen within 30s: {}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        r
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
    }

    /// GETs of blob `digest` the registry served so far.
    pub fn blob_gets(&self, digest: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("/blobs/{digest}")))
            .count()
    }

    /// `skopeo copy` of `src` (e.g. `oci:LAYOUT:tag`) to `repo:tag` here.
    pub fn push(&self, src: &str, dest: &str, extra: &[&str]) {
        let dest = format!("docker://{}/{dest}", self.host);
        let mut args = vec!["copy", "--quiet", "--dest-tls-verify=false"];
        let creds;
        if let Some((u, p)) = &self.creds {
            creds = format!("{u}:{p}");
            args.extend(["--dest-creds", &creds]);
        }
        args.extend(extra);
        args.extend([src, &dest]);
        run("skopeo", &args);
    }

    /// The manifest digest of `repo:tag` here.
    pub fn digest(&self, repo_tag: &str) -> String {
        let mut args = vec![
            "inspect".to_string(),
            "--raw".into(),
            "--tls-verify=false".into(),
        ];
        if let Some((u, p)) = &self.creds {
            args.extend(["--creds".into(), format!("{u}:{p}")]);
        }
        args.push(format!("docker://{}/{repo_tag}", self.host));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let raw = run("skopeo", &a);
        let f = self.dir.join("manifest.raw");
        std::fs::write(&f, raw).unwrap();
        run("skopeo", &["manifest-digest", f.to_str().unwrap()])
            .trim()
            .to_string()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sha256_hex(b: &[u8]) -> String {
    liftoff::image::sha256(b)
        .trim_start_matches("sha256:")
        .to_string()
}

/// Writes a blob into an OCI layout; returns its descriptor fields.
fn put_blob(layout: &Path, bytes: &[u8]) -> (String, usize) {
    let h = sha256_hex(bytes);
    std::fs::write(layout.join("blobs/sha256").join(&h), bytes).unwrap();
    (format!("sha256:{h}"), bytes.len())
}

/// The index entry tagged `v1` in the OCI layout at `layout`, and the
/// manifest it names.
pub fn v1_manifest(layout: &Path) -> (serde_json::Value, serde_json::Value) {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let v1 = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "v1")
        .unwrap()
        .clone();
    let hex = v1["digest"].as_str().unwrap().trim_start_matches("sha256:");
    let manifest =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(hex)).unwrap())
            .unwrap();
    (v1, manifest)
}

/// Builds the test image in the OCI layout `dir/layout` with umoci, as tag
/// `v1`: layer 1 busybox-static (`/bin/busybox`, `/bin/sh`), `/etc/image-marker`,
/// `/opq/{old1,old2}` and `/to-delete`; layer 2 deletes `/to-delete` (a
/// whiteout) and adds `/layer2.txt`; layer 3 makes `/opq` opaque and adds
/// `/opq/new`. Tag `zstd` is the same with zstd layers; tag `multi` is an index of it and an s390x twin; tag
/// `s390x` an index of the twin only. Returns the layout path.
pub fn build_image(dir: &Path) -> PathBuf {
    let layout = dir.join("layout");
    let l = layout.to_str().unwrap().to_string();
    run("umoci", &["init", "--layout", &l]);
    run("umoci", &["new", "--image", &format!("{l}:v1")]);
    let bundle = dir.join("bundle1");
    let b = bundle.to_str().unwrap();
    run(
        "umoci",
        &["unpack", "--rootless", "--image", &format!("{l}:v1"), b],
    );
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "etc", "opq", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("busybox-static is installed (/bin/busybox)");
    for applet in ["sh", "cat", "id", "touch", "test", "ls", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    std::fs::write(rootfs.join("etc/image-marker"), "from the test image\n").unwrap();
    std::fs::write(rootfs.join("opq/old1"), "1").unwrap();
    std::fs::write(rootfs.join("opq/old2"), "2").unwrap();
    std::fs::write(rootfs.join("to-delete"), "x").unwrap();
    run("umoci", &["repack", "--image", &format!("{l}:v1"), b]);
    let bundle2 = dir.join("bundle2");
    let b2 = bundle2.to_str().unwrap();
    run(
        "umoci",
        &["unpack", "--rootless", "--image", &format!("{l}:v1"), b2],
    );
    std::fs::remove_file(bundle2.join("rootfs/to-delete")).unwrap();
    std::fs::write(bundle2.join("rootfs/layer2.txt"), "layer two\n").unwrap();
    run("umoci", &["repack", "--image", &format!("{l}:v1"), b2]);
    // Layer 3, by hand: umoci writes per-file whiteouts, not opaque ones.
    let mut t = tar::Builder::new(Vec::new());
    for (name, data) in [("opq/.wh..wh..opq", &b""[..]), ("opq/new", &b"new\n"[..])] {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        t.append_data(&mut h, name, data).unwrap();
    }
    let layer3 = dir.join("layer3.tar");
    std::fs::write(&layer3, t.into_inner().unwrap()).unwrap();
    run(
        "umoci",
        &[
            "raw",
            "add-layer",
            "--image",
            &format!("{l}:v1"),
            layer3.to_str().unwrap(),
        ],
    );
    // The two-platform index.
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let (v1, manifest) = v1_manifest(&layout);
    let chex = manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&chex)).unwrap())
            .unwrap();
    let arch = config["architecture"].as_str().unwrap().to_string();
    config["architecture"] = "s390x".into();
    let (cd, cs) = put_blob(&layout, &serde_json::to_vec(&config).unwrap());
    let mut twin = manifest.clone();
    twin["config"]["digest"] = cd.into();
    twin["config"]["size"] = cs.into();
    let (td, ts) = put_blob(&layout, &serde_json::to_vec(&twin).unwrap());
    let entry = |d: &str, s: usize, a: &str| {
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d, "size": s,
            "platform": {"os": "linux", "architecture": a}})
    };
    let mut manifests = index["manifests"].as_array().unwrap().clone();
    // Tag `zstd`: the same layers recompressed with zstd (skopeo 1.9 reuses
    // the gzip blobs it already pushed rather than recompress them).
    let mut zmanifest = manifest.clone();
    for layer in zmanifest["layers"].as_array_mut().unwrap() {
        let h = layer["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:")
            .to_string();
        let gz = std::fs::read(layout.join("blobs/sha256").join(&h)).unwrap();
        let mut tar = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut tar).unwrap();
        let z = ruzstd::encoding::compress_to_vec(
            &tar[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        let (d, s) = put_blob(&layout, &z);
        layer["digest"] = d.into();
        layer["size"] = s.into();
        layer["mediaType"] = "application/vnd.oci.image.layer.v1.tar+zstd".into();
    }
    let (zd, zs) = put_blob(&layout, &serde_json::to_vec(&zmanifest).unwrap());
    manifests.push(serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": zd, "size": zs,
        "annotations": {"org.opencontainers.image.ref.name": "zstd"}}));
    for (tag, entries) in [
        (
            "multi",
            vec![
                entry(&td, ts, "s390x"),
                entry(
                    v1["digest"].as_str().unwrap(),
                    v1["size"].as_u64().unwrap() as usize,
                    &arch,
                ),
            ],
        ),
        ("s390x", vec![entry(&td, ts, "s390x")]),
    ] {
        let idx = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries});
        let (d, s) = put_blob(&layout, &serde_json::to_vec(&idx).unwrap());
        manifests.push(serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": s,
            "annotations": {"org.opencontainers.image.ref.name": tag}}));
    }
    let mut index = index;
    index["manifests"] = manifests.into();
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    layout
}
