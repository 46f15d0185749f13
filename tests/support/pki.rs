//! Keys, CSRs and certificates made with the openssl CLI, exactly as the seed
//! tells users (`openssl req -new -newkey rsa:4096 -nodes -keyout spacelift.key
//! -out spacelift.csr`), signed by a test CA the way a control plane would.

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;

/// Runs openssl with `args` in `dir`, panicking with its stderr on failure.
pub fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl CLI is installed (the test command installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test certificate authority: `ca.key` and `ca.crt` in `dir`.
pub struct TestCa {
    pub dir: PathBuf,
    pub name: String,
}

impl TestCa {
    pub fn new(dir: &Path, name: &str) -> TestCa {
        std::fs::create_dir_all(dir).unwrap();
        let key = format!("{name}.key");
        let crt = format!("{name}.crt");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &crt,
                "-days",
                "3650",
                "-subj",
                &format!("/CN=liftoff test {name}"),
            ],
        );
        TestCa {
            dir: dir.to_path_buf(),
            name: name.to_string(),
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join(format!("{}.crt", self.name))
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join(format!("{}.key", self.name))
    }

    pub fn cert_pem(&self) -> String {
        std::fs::read_to_string(self.cert_path()).unwrap()
    }

    /// Signs `csr` (a path) into `out` (a path) valid for `days` days.
    pub fn sign(&self, csr: &Path, out: &Path, days: u32) {
        let ext = self.dir.join("client.ext");
        std::fs::write(&ext, "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth,serverAuth\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                csr.to_str().unwrap(),
                "-CA",
                self.cert_path().to_str().unwrap(),
                "-CAkey",
                self.key_path().to_str().unwrap(),
                "-CAcreateserial",
                "-out",
                out.to_str().unwrap(),
                "-days",
                &days.to_string(),
                "-extfile",
                ext.to_str().unwrap(),
            ],
        );
    }

    /// Signs `csr` with an explicit validity window, given as
    /// `YYYYMMDDHHMMSSZ` (for expired and not-yet-valid certificates).
    pub fn sign_window(&self, csr: &Path, out: &Path, start: &str, end: &str) {
        let db = self.dir.join("ca-db");
        std::fs::create_dir_all(db.join("new")).unwrap();
        std::fs::write(db.join("index.txt"), "").unwrap();
        std::fs::write(db.join("serial"), "1000\n").unwrap();
        let conf = db.join("ca.cnf");
        std::fs::write(&conf, format!(
            "[ca]\ndefault_ca=test\n[test]\ndir={d}\ndatabase=$dir/index.txt\nserial=$dir/serial\nnew_certs_dir=$dir/new\ndefault_md=sha256\npolicy=any\nunique_subject=no\nx509_extensions=ext\n[ext]\nbasicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n[any]\ncommonName=supplied\n",
            d = db.display()
        )).unwrap();
        openssl(
            &self.dir,
            &[
                "ca",
                "-batch",
                "-config",
                conf.to_str().unwrap(),
                "-cert",
                self.cert_path().to_str().unwrap(),
                "-keyfile",
                self.key_path().to_str().unwrap(),
                "-in",
                csr.to_str().unwrap(),
                "-out",
                out.to_str().unwrap(),
                "-startdate",
                start,
                "-enddate",
                end,
                "-notext",
            ],
        );
    }
}

/// A pool key and CSR made as the seed says: returns (key path, csr path).
pub fn pool_key_and_csr(dir: &Path, name: &str, bits: u32) -> (PathBuf, PathBuf) {
    key_and_csr(dir, name, &["-newkey", &format!("rsa:{bits}")])
}

/// A P-256 EC key and CSR (which pools refuse): returns (key path, csr
/// path).
pub fn ec_key_and_csr(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    key_and_csr(
        dir,
        name,
        &["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"],
    )
}

/// `openssl req -new <newkey> -nodes` into `dir/<name>.key` and
/// `dir/<name>.csr`, subject `/CN=<name>`.
fn key_and_csr(dir: &Path, name: &str, newkey: &[&str]) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let subject = format!("/CN={name}");
    let mut args = vec!["req", "-new"];
    args.extend_from_slice(newkey);
    args.extend([
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        csr.to_str().unwrap(),
        "-subj",
        &subject,
    ]);
    openssl(dir, &args);
    (key, csr)
}

/// `base64 -w 0 FILE`, as users set SPACELIFT_POOL_PRIVATE_KEY.
pub fn base64_file(path: &Path) -> String {
    let out = Command::new("base64")
        .args(["-w", "0"])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// A token (base64 of the documented JSON) for `cert_pem`, naming `brokers`
/// as (region, url) pairs, with an optional CA.
pub fn token(
    pool_id: &str,
    cert_pem: &str,
    ca_pem: Option<&str>,
    brokers: &[(&str, &str)],
) -> String {
    let brokers: Vec<serde_json::Value> = brokers
        .iter()
        .map(|(region, url)| serde_json::json!({"region": region, "url": url}))
        .collect();
    let mut doc = serde_json::json!({
        "version": 1,
        "pool_id": pool_id,
        "namespace": "spacelift",
        "brokers": brokers,
        "certificate": cert_pem,
    });
    if let Some(ca) = ca_pem {
        doc["ca"] = ca.into();
    }
    base64::engine::general_purpose::STANDARD.encode(doc.to_string())
}

/// Everything a configured launcher needs: a CA, a pool key made by the
/// seed's command, its certificate and a token naming two regional brokers.
pub struct Pool {
    pub dir: PathBuf,
    pub ca: TestCa,
    pub key: PathBuf,
    pub cert: PathBuf,
    pub token: String,
}

impl Pool {
    /// `brokers`: (region, url) pairs, primary first.
    pub fn new(dir: &Path, bits: u32, brokers: &[(&str, &str)]) -> Pool {
        let ca = TestCa::new(&dir.join("ca"), "ca");
        let (key, csr) = pool_key_and_csr(dir, "spacelift", bits);
        let cert = dir.join("spacelift.crt");
        ca.sign(&csr, &cert, 365);
        let cert_pem = std::fs::read_to_string(&cert).unwrap();
        let token = token(
            "01JD6Z8X5N4T3K2M1P0Q9R8S7T",
            &cert_pem,
            Some(&ca.cert_pem()),
            brokers,
        );
        Pool {
            dir: dir.to_path_buf(),
            ca,
            key,
            cert,
            token,
        }
    }

    /// SPACELIFT_POOL_PRIVATE_KEY's value.
    pub fn key_base64(&self) -> String {
        base64_file(&self.key)
    }
}
