//! Two real mosquitto 2.0 brokers on loopback ports, stand-ins for the
//! control plane's eu-west-1 and eu-central-1 IoT Core endpoints: TLS
//! listeners that require a client certificate from the test CA, the
//! certificate's CN as the username, QoS ≤ 1 and a packet size limit like
//! IoT Core's. Each broker can be killed, restarted on the same port, and
//! restarted with another CA (a "reset" pool).
//!
//! Order: [`Brokers::start`] (needs the [`Pool`] whose CA signs everything),
//! then `kill`/`start`/`distrust` per broker; dropping kills them.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::pki::{self, Pool, TestCa};

pub const MOSQUITTO: &str = "/usr/sbin/mosquitto";

/// IoT Core's 128 KiB payload limit plus room for the topic and headers.
pub const MAX_PACKET: usize = 128 * 1024 + 4096;

/// `n` distinct free loopback ports below the kernel's ephemeral range (so
/// no outgoing connection on this busy machine takes one between choosing it
/// and the broker binding it, or while a broker is down for a restart).
pub fn free_ports(n: usize) -> Vec<u16> {
    let mut held: Vec<TcpListener> = Vec::new();
    let mut x = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
        ^ u64::from(std::process::id()) << 20;
    while held.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let port = 20000 + (x % 12000) as u16;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            held.push(l);
        }
    }
    held.iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

/// True when process `pid` holds a TCP socket listening on 127.0.0.1:`port`
/// (from /proc/net/tcp and the process's descriptors).
pub fn listens(pid: u32, port: u16) -> bool {
    let local = format!("0100007F:{port:04X}");
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
            (f.len() > 9 && f[1] == local && f[3] == "0A").then(|| format!("socket:[{}]", f[9]))
        })
        .collect();
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

pub struct Broker {
    pub region: String,
    pub port: u16,
    dir: PathBuf,
    /// The CA file the broker trusts for client certificates.
    cafile: PathBuf,
    /// A certificate revocation list, when the broker checks one.
    crlfile: Option<PathBuf>,
    child: Option<Child>,
}

impl Broker {
    fn conf(&self) -> PathBuf {
        self.dir.join("mosquitto.conf")
    }

    fn write_conf(&self) {
        let d = self.dir.display();
        let conf = format!(
            "per_listener_settings false\nallow_anonymous false\nuser root\npersistence false\n\
             max_packet_size {MAX_PACKET}\nmax_inflight_messages 100\nmax_queued_messages 10000\n\
             log_dest file {d}/mosquitto.log\nlog_type error\nlog_type warning\nlog_type notice\n\
             listener {port} 127.0.0.1\ncafile {ca}\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n\
             require_certificate true\nuse_identity_as_username true\nmax_qos 1\n",
            port = self.port,
            ca = self.cafile.display(),
        );
        let conf = match &self.crlfile {
            Some(crl) => format!("{conf}crlfile {}\n", crl.display()),
            None => conf,
        };
        std::fs::write(self.conf(), conf).unwrap();
    }

    /// Starts (or restarts) mosquitto and waits until it accepts TCP.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.region);
        self.write_conf();
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let mut child = Command::new(MOSQUITTO)
                .arg("-c")
                .arg(self.conf())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("mosquitto is installed at /usr/sbin/mosquitto");
            loop {
                // our broker is up once its own process holds the listening
                // socket (not a stale one on the same port)
                if listens(child.id(), self.port) {
                    self.child = Some(child);
                    return;
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port still busy: try again
                }
                if Instant::now() > end {
                    let _ = child.kill();
                    let ss = Command::new("ss")
                        .arg("-tanp")
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    let port = format!(":{}", self.port);
                    let users: Vec<&str> = ss.lines().filter(|l| l.contains(&port)).collect();
                    panic!(
                        "mosquitto for {} did not start on port {}: {} (port users: {users:?})",
                        self.region,
                        self.port,
                        self.log().lines().last().unwrap_or_default()
                    );
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                Instant::now() < end,
                "mosquitto for {} keeps exiting: {}",
                self.region,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL: the region is gone at once.
    pub fn kill(&mut self) {
        self.resume();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGSTOP: the broker keeps its sockets but answers nothing (a dead
    /// network path); [`Broker::resume`] undoes it.
    pub fn pause(&self) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGSTOP,
            );
        }
    }

    pub fn resume(&self) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(c.id() as i32),
                nix::sys::signal::Signal::SIGCONT,
            );
        }
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    /// Restarts the broker checking the revocation list `crl`.
    pub fn check_crl(&mut self, crl: &Path) {
        self.kill();
        self.crlfile = Some(crl.to_path_buf());
        self.start();
    }

    /// Restarts the broker trusting only `ca` for client certificates.
    pub fn distrust(&mut self, ca: &TestCa) {
        self.kill();
        self.cafile = ca.cert_path();
        self.start();
    }
}

/// Revokes `cert` with `ca` (the openssl CLI's `ca -revoke` and
/// `ca -gencrl`) and returns the path of the CRL.
pub fn revoke(ca: &TestCa, cert: &Path) -> PathBuf {
    let db = ca.dir.join("crl-db");
    std::fs::create_dir_all(db.join("new")).unwrap();
    std::fs::write(db.join("index.txt"), "").unwrap();
    std::fs::write(db.join("crlnumber"), "01\n").unwrap();
    let conf = db.join("ca.cnf");
    std::fs::write(
        &conf,
        format!(
            "[ca]\ndefault_ca=test\n[test]\ndir={d}\ndatabase=$dir/index.txt\nnew_certs_dir=$dir/new\ncrlnumber=$dir/crlnumber\ndefault_md=sha256\ndefault_crl_days=30\n",
            d = db.display()
        ),
    )
    .unwrap();
    let c = conf.to_str().unwrap();
    let (cert_s, key_s) = (ca.cert_path(), ca.key_path());
    let (cert_s, key_s) = (cert_s.to_str().unwrap(), key_s.to_str().unwrap());
    let ca_cmd = |what: &[&str]| {
        let mut args = vec!["ca", "-config", c, "-cert", cert_s, "-keyfile", key_s];
        args.extend_from_slice(what);
        pki::openssl(&ca.dir, &args);
    };
    ca_cmd(&["-revoke", cert.to_str().unwrap()]);
    let crl = ca.dir.join("crl.pem");
    ca_cmd(&["-gencrl", "-out", crl.to_str().unwrap()]);
    crl
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The pool and its two regional brokers.
pub struct Brokers {
    pub pool: Pool,
    pub brokers: Vec<Broker>,
    /// The plane's client certificate and key.
    pub plane_cert: PathBuf,
    pub plane_key: PathBuf,
}

pub const REGIONS: [&str; 2] = ["eu-west-1", "eu-central-1"];

impl Brokers {
    /// A pool (CA, key from the seed's openssl command, certificate, token
    /// naming both brokers) and the two brokers, started.
    pub fn start(dir: &Path) -> Brokers {
        let ports = free_ports(2);
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("mqtts://127.0.0.1:{p}"))
            .collect();
        let list: Vec<(&str, &str)> = REGIONS
            .iter()
            .copied()
            .zip(urls.iter().map(String::as_str))
            .collect();
        let pool = Pool::new(dir, 2048, &list);
        let (key, csr) = pki::pool_key_and_csr(&dir.join("server"), "server", 2048);
        let crt = dir.join("server").join("server.crt");
        pool.ca.sign(&csr, &crt, 30);
        let (plane_key, plane_csr) = pki::pool_key_and_csr(&dir.join("plane"), "plane", 2048);
        let plane_cert = dir.join("plane").join("plane.crt");
        pool.ca.sign(&plane_csr, &plane_cert, 30);
        let mut brokers = Vec::new();
        for (i, region) in REGIONS.iter().enumerate() {
            let bdir = dir.join(region);
            std::fs::create_dir_all(&bdir).unwrap();
            std::fs::copy(&crt, bdir.join("server.crt")).unwrap();
            std::fs::copy(&key, bdir.join("server.key")).unwrap();
            let mut b = Broker {
                region: region.to_string(),
                port: ports[i],
                dir: bdir,
                cafile: pool.ca.cert_path(),
                crlfile: None,
                child: None,
            };
            b.start();
            brokers.push(b);
        }
        Brokers {
            pool,
            brokers,
            plane_cert,
            plane_key,
        }
    }

    pub fn primary(&mut self) -> &mut Broker {
        &mut self.brokers[0]
    }

    pub fn secondary(&mut self) -> &mut Broker {
        &mut self.brokers[1]
    }
}
