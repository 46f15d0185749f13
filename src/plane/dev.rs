//! `liftoff-plane dev --spec FILE [--source PATH]`: the whole system on one
//! machine in one command. A plane in a private temporary directory on a
//! loopback port, a pool from a fresh RSA key, one `liftoff run` worker
//! talking long-poll to it, the run submitted, its log printed as the plane
//! stored it; the exit status is the run's exit code. Everything is
//! removed at the end, also on Ctrl-C.
//!
//! Call order: [`run`] does it all; the `liftoff` binary is `LIFTOFF_BIN`,
//! else the one beside `liftoff-plane`, else `liftoff` on PATH.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

use super::{Error, Result};

/// What must be cleaned up: the worker process and the directory.
struct Scratch {
    dir: PathBuf,
    worker: Option<Child>,
}

impl Scratch {
    fn cleanup(&mut self) {
        if let Some(mut w) = self.worker.take() {
            let pid = nix::unistd::Pid::from_raw(w.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end {
                if matches!(w.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn liftoff_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("LIFTOFF_BIN").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Ok(me) = std::env::current_exe() {
        let sibling = me.with_file_name("liftoff");
        if sibling.is_file() {
            return sibling;
        }
    }
    PathBuf::from("liftoff")
}

fn private_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = std::env::temp_dir().join(format!(
        "liftoff-plane-dev-{}-{}",
        std::process::id(),
        super::config::random_hex(4)
    ));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Error::Config(format!("cannot create {}: {e}", dir.display())))?;
    Ok(dir)
}

pub fn run(spec: &Path, source: Option<&Path>) -> Result<i32> {
    let body = super::cli::submit_body("dev", spec, source, None, None)?;
    let scratch = Arc::new(Mutex::new(Scratch {
        dir: private_dir()?,
        worker: None,
    }));
    let on_signal = scratch.clone();
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .map_err(|e| Error::Config(format!("cannot handle signals: {e}")))?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            on_signal
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .cleanup();
            std::process::exit(128 + sig);
        }
    });
    let result = go(&scratch, &body);
    let mut s = scratch.lock().unwrap_or_else(|e| e.into_inner());
    if result.is_err() {
        if let Ok(log) = std::fs::read_to_string(s.dir.join("worker.log")) {
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            eprintln!("the worker's last log lines:");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
        }
    }
    s.cleanup();
    result
}

fn go(scratch: &Arc<Mutex<Scratch>>, body: &serde_json::Value) -> Result<i32> {
    let dir = scratch
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .dir
        .clone();
    let listener = super::server::bind("127.0.0.1:0")?;
    let port = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("no local address: {e}")))?
        .port();
    let data = dir.join("plane");
    super::config::init(
        &data,
        &super::config::InitOptions {
            names: vec!["127.0.0.1".into(), "localhost".into()],
            listen: Some(format!("127.0.0.1:{port}")),
            urls: vec![format!("https://127.0.0.1:{port}")],
            ..Default::default()
        },
    )?;
    let plane = super::cli::open(&data)?;
    let server = plane.clone();
    std::thread::spawn(move || super::server::serve(server, listener));

    // The pool, from a fresh key, as a user's CSR would make it.
    let key = rcgen::KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        .map_err(|e| Error::Config(format!("cannot make the pool key: {e}")))?;
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "liftoff-plane dev");
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| Error::Config(format!("cannot make the CSR: {e}")))?;
    let (_, token) = plane.create_pool("dev", &csr)?;

    let state = dir.join("worker");
    let log = std::fs::File::create(dir.join("worker.log"))
        .map_err(|e| Error::Config(format!("cannot create the worker log: {e}")))?;
    let bin = liftoff_bin();
    let child = Command::new(&bin)
        .arg("run")
        .env("SPACELIFT_TOKEN", token)
        .env(
            "SPACELIFT_POOL_PRIVATE_KEY",
            base64::engine::general_purpose::STANDARD.encode(key.serialize_pem()),
        )
        .env("SPACELIFT_WORKER_COMMS_PROTOCOL", "poll")
        .env("LIFTOFF_STATE_DIR", &state)
        .env("LIFTOFF_PROVIDER_CACHE_DIR", dir.join("providers"))
        .env("ADDITIONAL_ROOT_CAS", data.join("ca.crt"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| {
            Error::Config(format!(
                "cannot start the worker {}: {e}; install liftoff or set LIFTOFF_BIN",
                bin.display()
            ))
        })?;
    scratch.lock().unwrap_or_else(|e| e.into_inner()).worker = Some(child);

    let spec = body["spec"]
        .as_str()
        .unwrap_or_default()
        .as_bytes()
        .to_vec();
    let source = body["source_b64"]
        .as_str()
        .map(|s| base64::engine::general_purpose::STANDARD.decode(s))
        .transpose()
        .map_err(|_| Error::BadInput("the packed source is not base64".into()))?;
    let (run, _) = plane.submit("dev", None, &spec, source.as_deref(), None)?;
    eprintln!(
        "liftoff-plane dev: run {} queued; waiting for the worker",
        run.id
    );

    let mut next = 0;
    let mut out = std::io::stdout();
    let mut settled = 0;
    loop {
        let (bytes, n) = plane.log(&run.id, next)?;
        let _ = out.write_all(&bytes);
        let _ = out.flush();
        next = n;
        let now = plane.run(&run.id)?;
        if now.is_final() {
            let total = plane.store.chunks(&run.id)?.len() as u64;
            if next >= total {
                settled += 1;
                if settled > 5 {
                    eprintln!(
                        "liftoff-plane dev: run {} {}{}{}",
                        now.id,
                        now.phase,
                        now.exit_code
                            .map(|c| format!(" with exit code {c}"))
                            .unwrap_or_default(),
                        if now.reason.is_empty() {
                            String::new()
                        } else {
                            format!(": {}", now.reason)
                        }
                    );
                    return Ok(super::cli::exit_of(
                        &serde_json::to_value(&now).unwrap_or_default(),
                    ));
                }
            }
        }
        {
            let mut s = scratch.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(w) = s.worker.as_mut() {
                if let Ok(Some(status)) = w.try_wait() {
                    s.worker = None;
                    return Err(Error::Unavailable(format!(
                        "the worker exited ({status}) before the run ended"
                    )));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(if settled > 0 { 100 } else { 30 }));
    }
}
