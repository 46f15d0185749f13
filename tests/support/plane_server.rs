//! A real `liftoff-plane` process for tests: `init` in a private temporary
//! directory on a free loopback port, then `serve`; pools made from CSRs of
//! the openssl CLI through the CLI (`pool create`); a [`Binding`] client
//! that speaks the HTTPS long-poll binding with a pool certificate (a
//! stand-in for a worker where the test needs to drive the protocol by
//! hand; the real `liftoff run` is used wherever it can be).
//!
//! Order: [`PlaneProc::start`], then `cli`/`cli_json`/`pool`; `kill9` and
//! `restart` for crash tests; dropping kills the plane.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn plane_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_liftoff-plane"))
}

pub struct PlaneProc {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub port: u16,
    child: Option<Child>,
    /// The data directory's own small tmpfs ([`PlaneProc::start_on_tmpfs`]),
    /// unmounted after the plane is killed.
    _tmpfs: Option<super::tmpfs::Tmpfs>,
}

/// A pool made by `pool create` from an openssl CSR.
pub struct PoolKeys {
    pub name: String,
    pub id: String,
    pub key: PathBuf,
    pub csr: PathBuf,
    pub token: String,
    pub cert_pem: String,
}

impl PlaneProc {
    pub fn start() -> PlaneProc {
        Self::start_with(None)
    }

    /// A plane whose data directory is a small tmpfs of its own (`size`,
    /// e.g. "6m"), so a full disk is a real ENOSPC. Needs root (mount);
    /// fails loudly without it.
    pub fn start_on_tmpfs(size: &str) -> PlaneProc {
        Self::start_with(Some(size))
    }

    fn start_with(tmpfs: Option<&str>) -> PlaneProc {
        let dir = super::runs::open_tempdir();
        let port = super::brokers::free_ports(1)[0];
        let data = dir.path().join("data");
        let tmpfs = tmpfs
            .map(|size| super::tmpfs::Tmpfs::mount_at(&data, &format!("size={size},mode=0700")));
        let out = Command::new(plane_bin())
            .args(["init", "--data"])
            .arg(&data)
            .args(["--name", "127.0.0.1", "--name", "localhost", "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut p = PlaneProc {
            dir,
            data,
            port,
            child: None,
            _tmpfs: tmpfs,
        };
        p.serve();
        p
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Starts `serve` and waits until it answers /healthz.
    pub fn serve(&mut self) {
        assert!(self.child.is_none());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("plane.log"))
            .unwrap();
        let mut cmd = Command::new(plane_bin());
        cmd.args(["serve", "--data"]).arg(&self.data);
        let child = cmd
            .env("LIFTOFF_PLANE_LOG", "info,liftoff=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let agent = self.admin_agent();
        let end = Instant::now() + Duration::from_secs(20);
        while agent.get(format!("{}/healthz", self.url())).call().is_err() {
            assert!(
                Instant::now() < end,
                "the plane did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The `serve` process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.serve();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("plane.log")).unwrap_or_default()
    }

    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.data.join("ca.crt")).unwrap()
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin-token"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// An HTTPS agent trusting the plane's CA, no client certificate.
    pub fn admin_agent(&self) -> ureq::Agent {
        let ca = ureq::tls::Certificate::from_pem(self.ca_pem().as_bytes()).unwrap();
        agent(vec![ca], None)
    }

    /// `liftoff-plane ARGS --data DIR`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(plane_bin())
            .args(args)
            .arg("--data")
            .arg(&self.data)
            .output()
            .unwrap()
    }

    /// `cli` with `--json`, asserting success.
    pub fn cli_json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        let out = self.cli(&a);
        assert!(
            out.status.success(),
            "liftoff-plane {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// A pool from a CSR made with the openssl CLI as the seed says.
    pub fn pool(&self, name: &str, bits: u32) -> PoolKeys {
        let dir = self.dir.path().join(format!("pool-{name}"));
        let (key, csr) = super::pki::pool_key_and_csr(&dir, "spacelift", bits);
        let v = self.cli_json(&["pool", "create", name, "--csr", csr.to_str().unwrap()]);
        PoolKeys {
            name: name.to_string(),
            id: v["pool"]["id"].as_str().unwrap().to_string(),
            key,
            csr,
            token: v["token"].as_str().unwrap().to_string(),
            cert_pem: v["pool"]["cert_pem"].as_str().unwrap().to_string(),
        }
    }

    /// Waits (bounded) until `run show` satisfies `pred`; returns it.
    pub fn wait_run(&self, run: &str, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let end = Instant::now() + timeout;
        loop {
            let v = self.cli_json(&["run", "show", run]);
            if pred(&v) {
                return v;
            }
            assert!(
                Instant::now() < end,
                "run {run} never got there: {v}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits (bounded) until `worker list` satisfies `pred`.
    pub fn wait_workers(&self, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let end = Instant::now() + timeout;
        loop {
            let v = self.cli_json(&["worker", "list"]);
            let list = v["workers"].as_array().cloned().unwrap_or_default();
            if pred(&list) {
                return list;
            }
            assert!(
                Instant::now() < end,
                "workers never got there: {v}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for PlaneProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn agent(
    roots: Vec<ureq::tls::Certificate<'static>>,
    client: Option<ureq::tls::ClientCert>,
) -> ureq::Agent {
    liftoff::identity::install_crypto_provider();
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
        .client_cert(client)
        .unversioned_rustls_crypto_provider(std::sync::Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .build();
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(70)))
            .build(),
    )
}

/// A hand-driven worker of the long-poll binding.
pub struct Binding {
    pub agent: ureq::Agent,
    pub base: String,
    pub pool: String,
    pub worker: String,
}

impl Binding {
    pub fn new(plane: &PlaneProc, pool: &PoolKeys, cert_pem: &str, key: &Path) -> Binding {
        let ca = ureq::tls::Certificate::from_pem(plane.ca_pem().as_bytes()).unwrap();
        let cert = ureq::tls::Certificate::from_pem(cert_pem.as_bytes()).unwrap();
        let key = ureq::tls::PrivateKey::from_pem(&std::fs::read(key).unwrap()).unwrap();
        Binding {
            agent: agent(
                vec![ca],
                Some(ureq::tls::ClientCert::new_with_certs(&[cert], key)),
            ),
            base: format!("{}/v1/pools/{}", plane.url(), pool.id),
            pool: pool.id.clone(),
            worker: liftoff::link::protocol::ulid(),
        }
    }

    fn path(&self, what: &str) -> String {
        format!("{}/workers/{}/{what}", self.base, self.worker)
    }

    /// POSTs `body` to `what`; the status (or an error for TLS refusals).
    pub fn post(&self, what: &str, body: &Value) -> Result<u16, String> {
        self.agent
            .post(self.path(what))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map(|r| r.status().as_u16())
            .map_err(|e| e.to_string())
    }

    /// One long poll: (status, answer).
    pub fn poll(&self, cursor: Option<&str>, wait: u64) -> Result<(u16, Value), String> {
        let mut url = format!("{}?wait={wait}", self.path("commands"));
        if let Some(c) = cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let r = self.agent.get(url).call().map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let v: Value =
            serde_json::from_slice(&r.into_body().read_to_vec().unwrap()).unwrap_or(Value::Null);
        Ok((status, v))
    }

    pub fn msg(&self, ty: &str, seq: Option<u64>, fields: Value) -> Value {
        let mut v = serde_json::json!({"v": 1, "type": ty, "id": liftoff::link::protocol::ulid(), "ts": liftoff::link::protocol::now_ms()});
        if let Some(s) = seq {
            v["seq"] = s.into();
        }
        if let (Value::Object(m), Value::Object(f)) = (&mut v, fields) {
            m.extend(f);
        }
        v
    }

    pub fn hello(&self, will_id: &str) -> Value {
        self.msg("hello", None, serde_json::json!({
            "worker_id": self.worker, "will_id": will_id, "version": "test", "region": "local",
            "slots": 1, "metadata": {}, "host": {"hostname": "h", "os": "linux", "arch": "x86_64", "cpus": 1, "memory_bytes": 1},
            "sandbox": {}}))
    }

    pub fn status(&self, state: &str, runs: &[&str], last_seq: Option<u64>) -> Value {
        let mut v = self.msg("status", None, serde_json::json!({
            "worker_id": self.worker, "state": state, "drain": state == "DRAINED", "runs": runs, "region": "local"}));
        if let Some(s) = last_seq {
            v["last_seq"] = s.into();
        }
        v
    }
}

/// A real `liftoff run` worker for a pool of this plane: the pool's token
/// and key, `ADDITIONAL_ROOT_CAS` = `roots` (the plane CA for object URLs,
/// plus a broker CA over MQTT), short intervals so tests stay quick.
pub fn launch_worker(
    pool: &PoolKeys,
    state: &Path,
    roots: &Path,
    extra: &[(&str, &str)],
) -> super::plane::Launcher {
    super::plane::spawn_run(
        &pool.token,
        &super::pki::base64_file(&pool.key),
        state,
        &[("ADDITIONAL_ROOT_CAS", roots.to_str().unwrap())],
        extra,
    )
}

/// A run spec file in `dir` whose one step prints `marker`.
pub fn spec_file(dir: &Path, name: &str, run_type: &str, stack: &str, shell: &str) -> PathBuf {
    let path = dir.join(format!("{name}.json"));
    let spec = serde_json::json!({
        "run_id": "replaced-by-the-plane",
        "run_type": run_type,
        "stack": {"id": stack},
        "steps": [{"name": "main", "shell": shell}],
        "timeouts": {"run": "2m"}
    });
    std::fs::write(&path, spec.to_string()).unwrap();
    path
}
