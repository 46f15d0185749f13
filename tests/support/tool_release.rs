//! Test releases of OpenTofu/Terraform made as the vendors publish them: a
//! small executable (a shell script named `tofu` or `terraform`) zipped with
//! deflate, `SHA256SUMS` listing the zip, and a detached signature made by
//! Debian's `gpg` with keys generated during the test (RSA 4096 or 2048,
//! SHA-256 or SHA-512, by the primary key or by a signing subkey). Served
//! by a real HTTP/1.1 server on 127.0.0.1 ([`ToolServer`]: registered
//! bodies, redirects, per-path GET counts) in the TofuDL and the
//! releases.hashicorp.com layouts, or laid out in a local directory.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

/// A gpg home with one RSA primary key and, optionally, a signing subkey.
pub struct Gpg {
    home: PathBuf,
    pub fpr: String,
    pub sub_fpr: Option<String>,
}

fn gpg(home: &Path) -> Command {
    let mut c = Command::new("gpg");
    c.arg("--batch")
        .arg("--quiet")
        .arg("--homedir")
        .arg(home)
        .arg("--pinentry-mode")
        .arg("loopback")
        .arg("--passphrase")
        .arg("");
    c
}

fn ok(c: &mut Command) -> Vec<u8> {
    let _one = GPG.lock().unwrap_or_else(|p| p.into_inner());
    let out = c.output();
    // The command's homedir follows --homedir.
    let args: Vec<_> = c.get_args().map(|a| a.to_os_string()).collect();
    if let Some(i) = args.iter().position(|a| a == "--homedir") {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&args[i + 1])
            .args(["--kill", "gpg-agent"])
            .output();
    }
    let out = out.unwrap_or_else(|e| {
        panic!("gpg is needed for these tests (apt-get install gnupg; scripts/test.sh does): {e}")
    });
    assert!(
        out.status.success(),
        "{c:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

impl Gpg {
    /// A new key: `bits` RSA primary (sign + certify); with `sub_bits`, a
    /// signing subkey of that size too.
    pub fn new(dir: &Path, name: &str, bits: u32, sub_bits: Option<u32>) -> Gpg {
        use std::os::unix::fs::PermissionsExt;
        let home = dir.join(format!("gnupg-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
        ok(gpg(&home).args([
            "--quick-gen-key",
            &format!("{name} <{name}@liftoff.invalid>"),
            &format!("rsa{bits}"),
            "sign",
            "never",
        ]));
        let fprs = |home: &Path| -> Vec<String> {
            let out = ok(gpg(home).args(["--with-colons", "--list-keys"]));
            String::from_utf8_lossy(&out)
                .lines()
                .filter_map(|l| l.strip_prefix("fpr:::::::::"))
                .map(|l| l.trim_end_matches(':').to_string())
                .collect()
        };
        let fpr = fprs(&home)[0].clone();
        let sub_fpr = sub_bits.map(|b| {
            ok(gpg(&home).args(["--quick-add-key", &fpr, &format!("rsa{b}"), "sign", "never"]));
            fprs(&home)[1].clone()
        });
        Gpg { home, fpr, sub_fpr }
    }

    /// The armored public key (primary and subkeys).
    pub fn export(&self) -> Vec<u8> {
        ok(gpg(&self.home).args(["--armor", "--export", &self.fpr]))
    }

    /// The public key, binary.
    pub fn export_binary(&self) -> Vec<u8> {
        ok(gpg(&self.home).args(["--export", &self.fpr]))
    }

    /// A binary detached signature of `data` with `digest` (SHA256,
    /// SHA512), by the subkey when `by_subkey`.
    pub fn sign(&self, data: &[u8], digest: &str, by_subkey: bool) -> Vec<u8> {
        let n = std::sync::atomic::AtomicU64::new(0);
        let input = self.home.join(format!(
            "in-{}-{}",
            std::process::id(),
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as u128
                + std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos()
        ));
        std::fs::write(&input, data).unwrap();
        let key = if by_subkey {
            self.sub_fpr.clone().expect("a subkey")
        } else {
            self.fpr.clone()
        };
        let out = input.with_extension("sig");
        ok(gpg(&self.home)
            .args(["--digest-algo", digest, "--local-user"])
            .arg(format!("{key}!"))
            .arg("--output")
            .arg(&out)
            .arg("--detach-sign")
            .arg(&input));
        let sig = std::fs::read(&out).unwrap();
        let _ = std::fs::remove_file(&input);
        let _ = std::fs::remove_file(&out);
        sig
    }
}

/// A zip as the vendors make them: deflate, Unix modes, entries in order.
pub fn zip(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
    use flate2::write::DeflateEncoder;
    let mut out = Vec::new();
    let mut central = Vec::new();
    for (name, data, mode) in entries {
        let mut enc = DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        let packed = enc.finish().unwrap();
        let mut crc = flate2::Crc::new();
        crc.update(data);
        let offset = out.len() as u32;
        let common = |v: &mut Vec<u8>| {
            v.extend_from_slice(&20u16.to_le_bytes()); // version needed
            v.extend_from_slice(&0u16.to_le_bytes()); // flags
            v.extend_from_slice(&8u16.to_le_bytes()); // deflate
            v.extend_from_slice(&0u16.to_le_bytes()); // time
            v.extend_from_slice(&0x5A21u16.to_le_bytes()); // date
            v.extend_from_slice(&crc.sum().to_le_bytes());
            v.extend_from_slice(&(packed.len() as u32).to_le_bytes());
            v.extend_from_slice(&(data.len() as u32).to_le_bytes());
            v.extend_from_slice(&(name.len() as u16).to_le_bytes());
            v.extend_from_slice(&0u16.to_le_bytes()); // extra
        };
        out.extend_from_slice(&0x0403_4B50u32.to_le_bytes());
        common(&mut out);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&packed);
        central.extend_from_slice(&0x0201_4B50u32.to_le_bytes());
        central.extend_from_slice(&0x031Eu16.to_le_bytes()); // made by Unix
        common(&mut central);
        central.extend_from_slice(&0u16.to_le_bytes()); // comment
        central.extend_from_slice(&0u16.to_le_bytes()); // disk
        central.extend_from_slice(&0u16.to_le_bytes()); // internal
        central.extend_from_slice(&((0o100000 | mode) << 16).to_le_bytes());
        central.extend_from_slice(&offset.to_le_bytes());
        central.extend_from_slice(name.as_bytes());
    }
    let cd_offset = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(&0x0605_4B50u32.to_le_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_offset.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out
}

/// The test executable: prints what `tofu version` would.
pub fn executable(product: &str, version: &str) -> Vec<u8> {
    format!("#!/bin/sh\necho \"{product} v{version} (liftoff test build) $*\"\n").into_bytes()
}

/// A release's files: (name, bytes).
pub type Files = Vec<(String, Vec<u8>)>;

/// This host's platform as the vendors name it.
pub fn platform() -> String {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        a => a,
    };
    format!("linux_{arch}")
}

/// How a release's signature is made.
#[derive(Clone, Copy)]
pub struct Signing<'a> {
    pub key: &'a Gpg,
    pub digest: &'a str,
    pub by_subkey: bool,
}

/// A release's files (name → bytes): the zip of `zip_entries` (default:
/// the executable), `SHA256SUMS` and its signature (`.gpgsig` for tofu,
/// `.sig` for terraform; none when `signing` is `None`).
pub fn release(
    product: &str,
    version: &str,
    zip_entries: Option<Vec<(String, Vec<u8>)>>,
    signing: Option<Signing<'_>>,
) -> Vec<(String, Vec<u8>)> {
    let archive = format!("{product}_{version}_{}.zip", platform());
    let entries = zip_entries.unwrap_or_else(|| {
        vec![
            (product.to_string(), executable(product, version)),
            ("LICENSE".into(), b"test licence\n".to_vec()),
        ]
    });
    let refs: Vec<(&str, &[u8], u32)> = entries
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice(), 0o755))
        .collect();
    let z = zip(&refs);
    let sum = sha256_hex(&z);
    let sums = format!(
        "{}  {product}_{version}_darwin_arm64.zip\n{sum}  {archive}\n",
        "0".repeat(64)
    );
    let sums_name = format!("{product}_{version}_SHA256SUMS");
    let mut files = vec![(archive, z), (sums_name.clone(), sums.clone().into_bytes())];
    if let Some(s) = signing {
        let suffix = if product == "tofu" { ".gpgsig" } else { ".sig" };
        files.push((
            format!("{sums_name}{suffix}"),
            s.key.sign(sums.as_bytes(), s.digest, s.by_subkey),
        ));
    }
    files
}

pub fn sha256_hex(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// A GET-only HTTP/1.1 server on 127.0.0.1: registered bodies, redirects
/// (`/r/<path>` answers 302 to `/<path>`), 404 otherwise; counts GETs.
#[derive(Clone)]
pub struct ToolServer {
    pub addr: SocketAddr,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    gets: Arc<Mutex<Vec<String>>>,
    /// Paths answered with a 200 whose body stops after one byte (a
    /// mirror that hangs mid-download), held open for two minutes.
    stalls: Arc<Mutex<Vec<String>>>,
}

impl ToolServer {
    pub fn start() -> ToolServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let s = ToolServer {
            addr,
            files: Arc::default(),
            gets: Arc::default(),
            stalls: Arc::default(),
        };
        let server = s.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let server = server.clone();
                std::thread::spawn(move || server.serve(conn));
            }
        });
        s
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn put(&self, path: &str, body: Vec<u8>) {
        self.files.lock().unwrap().insert(path.to_string(), body);
    }

    /// `path` hangs after its headers and one byte of its body.
    pub fn stall(&self, path: &str) {
        self.stalls.lock().unwrap().push(path.to_string());
    }

    /// GETs of paths ending with `suffix`.
    pub fn count(&self, suffix: &str) -> usize {
        self.gets
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.ends_with(suffix))
            .count()
    }

    fn serve(&self, conn: TcpStream) {
        let Some((mut reader, mut out)) = super::http_head::split(conn) else {
            return;
        };
        loop {
            let Some(head) = super::http_head::read_head(&mut reader) else {
                return;
            };
            let path = head.target;
            self.gets.lock().unwrap().push(path.clone());
            if self.stalls.lock().unwrap().contains(&path) {
                let _ = out.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nP");
                std::thread::sleep(std::time::Duration::from_secs(120));
                return;
            }
            let answer = if let Some(rest) = path.strip_prefix("/r/") {
                format!("HTTP/1.1 302 Found\r\nLocation: /{rest}\r\nContent-Length: 0\r\n\r\n")
                    .into_bytes()
            } else {
                match self.files.lock().unwrap().get(&path) {
                    Some(body) => {
                        let mut a =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len())
                                .into_bytes();
                        a.extend_from_slice(body);
                        a
                    }
                    None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                }
            };
            if out.write_all(&answer).is_err() {
                return;
            }
        }
    }
}

/// Serves releases in OpenTofu's TofuDL layout under `prefix`:
/// `<prefix>/api.json` and `<prefix>/v<version>/<file>`.
pub fn serve_tofudl(server: &ToolServer, prefix: &str, releases: &[(&str, Files)]) {
    let versions: Vec<serde_json::Value> = releases
        .iter()
        .map(|(v, files)| {
            serde_json::json!({"id": v, "files": files.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>()})
        })
        .collect();
    server.put(
        &format!("{prefix}/api.json"),
        serde_json::json!({ "versions": versions })
            .to_string()
            .into_bytes(),
    );
    for (v, files) in releases {
        for (name, data) in files {
            server.put(&format!("{prefix}/v{v}/{name}"), data.clone());
        }
    }
}

/// Serves releases in releases.hashicorp.com's layout under `base`:
/// `<base>/<product>/index.json` and `<base>/<product>/<version>/<file>`.
pub fn serve_releases(server: &ToolServer, base: &str, product: &str, releases: &[(&str, Files)]) {
    let mut versions = serde_json::Map::new();
    for (v, files) in releases {
        versions.insert(
            v.to_string(),
            serde_json::json!({"name": product, "version": v, "shasums": format!("{product}_{v}_SHA256SUMS")}),
        );
        for (name, data) in files {
            server.put(&format!("{base}/{product}/{v}/{name}"), data.clone());
        }
    }
    server.put(
        &format!("{base}/{product}/index.json"),
        serde_json::json!({"name": product, "versions": versions})
            .to_string()
            .into_bytes(),
    );
}

/// Writes release files into `dir` (flat), or into `dir/<version>/` when
/// `per_version`.
pub fn lay_out(dir: &Path, version: &str, files: &[(String, Vec<u8>)], per_version: bool) {
    let d = if per_version {
        dir.join(version)
    } else {
        dir.to_path_buf()
    };
    std::fs::create_dir_all(&d).unwrap();
    for (name, data) in files {
        std::fs::write(d.join(name), data).unwrap();
    }
}

/// The test keys, made once per test binary: `a` is RSA 4096 with an RSA
/// 2048 signing subkey, `b` an RSA 2048 key nobody trusts by default. They
/// live under cargo's target tmpdir (replaced by the next run), and each
/// gpg agent is stopped after every use (no process outlives the test).
pub struct Keys {
    pub a: Gpg,
    pub b: Gpg,
}

static KEYS: std::sync::OnceLock<Keys> = std::sync::OnceLock::new();
/// One gpg at a time: stopping an agent must not cut another's work.
static GPG: Mutex<()> = Mutex::new(());

pub fn keys() -> &'static Keys {
    KEYS.get_or_init(|| {
        let exe = std::env::current_exe().unwrap();
        let name = exe.file_name().unwrap().to_string_lossy().into_owned();
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("gpg-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        Keys {
            a: Gpg::new(&dir, "vendor", 4096, Some(2048)),
            b: Gpg::new(&dir, "stranger", 2048, None),
        }
    })
}
