//! A fault-injecting HTTPS relay in front of the real test registry
//! ([`super::registry::Registry`]): it is there only to inject the faults a
//! real registry or network shows now and then (429 and 5xx answers, a
//! connection cut or stalled halfway through a blob), which the real
//! `docker-registry` cannot be made to produce on demand.
//!
//! Order: [`Relay::start`] with [`Rule`]s listens on 127.0.0.1 with the
//! registry's own certificate (so the registry's test CA vouches for it);
//! each connection carries one GET (the relay answers `Connection: close`):
//! a request matching a rule that still has uses gets that rule's
//! [`Fault`], any other is passed to the registry over TLS and its answer
//! back unchanged. [`Relay::wait_paused`] and [`Relay::resume`] hold a
//! [`Fault::PauseAfter`] connection at a point the test chooses.
//! [`Relay::injected`] counts the faults given per rule.
//! Dropping the relay releases stalled connections.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use super::registry::Registry;

/// What the relay does to a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answers this HTTP status (empty body) without asking the registry.
    Status(u16),
    /// Passes the answer's head and this many body bytes, then closes the
    /// connection without a TLS close_notify (a cut connection).
    CutAfter(usize),
    /// Passes the head and this many body bytes, then sends nothing more,
    /// keeping the connection open until the relay is dropped (a stall).
    StallAfter(usize),
    /// Passes the head and this many body bytes, tells
    /// [`Relay::wait_paused`], waits for [`Relay::resume`], then passes the
    /// rest (a pull caught mid-blob, at a point the test chooses).
    PauseAfter(usize),
}

/// A fault for the first `times` requests whose path contains `path`.
#[derive(Debug, Clone)]
pub struct Rule {
    pub path: String,
    pub fault: Fault,
    pub times: usize,
}

impl Rule {
    pub fn new(path: &str, fault: Fault, times: usize) -> Rule {
        Rule {
            path: path.into(),
            fault,
            times,
        }
    }
}

struct Shared {
    rules: Vec<Rule>,
    injected: Vec<AtomicUsize>,
    /// Request paths seen, in order.
    seen: Mutex<Vec<String>>,
    paused: Mutex<mpsc::Sender<()>>,
    resume: Mutex<mpsc::Receiver<()>>,
}

pub struct Relay {
    /// `127.0.0.1:<port>`, to use in image references instead of the
    /// registry's own host.
    pub host: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    /// Dropped with the relay: wakes stalled connections.
    _release: mpsc::Sender<()>,
    release_rx: Arc<Mutex<mpsc::Receiver<()>>>,
    paused: Mutex<mpsc::Receiver<()>>,
    resume: mpsc::Sender<()>,
}

impl Relay {
    pub fn start(reg: &Registry, rules: Vec<Rule>) -> Relay {
        liftoff::identity::install_crypto_provider();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(reg.dir.join("server.crt"))
                .unwrap()
                .map(|c| c.unwrap())
                .collect();
        let key = PrivateKeyDer::from_pem_file(reg.dir.join("server.key")).unwrap();
        let server = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap(),
        );
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(reg.ca.cert_path()).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let client = Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let (paused_tx, paused_rx) = mpsc::channel();
        let (resume_tx, resume_rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            injected: rules.iter().map(|_| AtomicUsize::new(0)).collect(),
            rules,
            seen: Mutex::new(Vec::new()),
            paused: Mutex::new(paused_tx),
            resume: Mutex::new(resume_rx),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let release_rx = Arc::new(Mutex::new(rx));
        let upstream = reg.host.clone();
        let (sh, sp, rel) = (shared.clone(), stop.clone(), release_rx.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = tcp else { continue };
                let (server, client, sh, rel, upstream) = (
                    server.clone(),
                    client.clone(),
                    sh.clone(),
                    rel.clone(),
                    upstream.clone(),
                );
                std::thread::spawn(move || {
                    let conn = rustls::ServerConnection::new(server).unwrap();
                    let mut down = rustls::StreamOwned::new(conn, tcp);
                    let _ = serve(&mut down, &client, &upstream, &sh, &rel);
                });
            }
        });
        Relay {
            host,
            shared,
            stop,
            _release: tx,
            release_rx,
            paused: Mutex::new(paused_rx),
            resume: resume_tx,
        }
    }

    /// Blocks until a [`Fault::PauseAfter`] connection has paused.
    pub fn wait_paused(&self) {
        self.paused.lock().unwrap().recv().unwrap();
    }

    /// Lets one paused connection go on.
    pub fn resume(&self) {
        let _ = self.resume.send(());
    }

    /// Faults given so far by rule `i`.
    pub fn injected(&self, i: usize) -> usize {
        self.shared.injected[i].load(Ordering::SeqCst)
    }

    /// Requests seen so far whose path contains `part`.
    pub fn requests(&self, part: &str) -> usize {
        self.shared
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.contains(part))
            .count()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Unblock the accept loop.
        let _ = TcpStream::connect(&self.host);
        let _ = &self.release_rx;
    }
}

/// Reads up to the end of an HTTP head; returns (head, bytes read past it).
fn read_head(s: &mut impl Read) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(i + 4);
            return Ok((String::from_utf8_lossy(&buf).into_owned(), rest));
        }
        let n = s.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 64 << 10 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

/// The head with its Connection header replaced by `Connection: close`.
fn closing(head: &str) -> String {
    let mut out = String::new();
    for line in head.trim_end().split("\r\n") {
        let name = line.split(':').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("connection") || name.eq_ignore_ascii_case("keep-alive") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    out
}

fn serve(
    down: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    client: &Arc<rustls::ClientConfig>,
    upstream: &str,
    sh: &Shared,
    release: &Mutex<mpsc::Receiver<()>>,
) -> std::io::Result<()> {
    let (head, _) = read_head(down)?;
    let path = head.split(' ').nth(1).unwrap_or("").to_string();
    sh.seen.lock().unwrap().push(path.clone());
    let fault = sh.rules.iter().enumerate().find_map(|(i, r)| {
        if !path.contains(&r.path) {
            return None;
        }
        // Take one use of the rule, if any is left.
        sh.injected[i]
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < r.times).then_some(n + 1)
            })
            .ok()
            .map(|_| r.fault)
    });
    if let Some(Fault::Status(code)) = fault {
        write!(
            down,
            "HTTP/1.1 {code} Injected\r\nContent-Length: 0\r\nRetry-After: 0\r\nConnection: close\r\n\r\n"
        )?;
        down.conn.send_close_notify();
        return down.flush();
    }
    let name = ServerName::try_from("127.0.0.1").unwrap().to_owned();
    let conn = rustls::ClientConnection::new(client.clone(), name).unwrap();
    let mut up = rustls::StreamOwned::new(conn, TcpStream::connect(upstream)?);
    up.write_all(closing(&head).as_bytes())?;
    up.flush()?;
    let (rhead, mut pending) = read_head(&mut up)?;
    down.write_all(closing(&rhead).as_bytes())?;
    let limit = match fault {
        Some(Fault::CutAfter(n) | Fault::StallAfter(n) | Fault::PauseAfter(n)) => n,
        _ => usize::MAX,
    };
    let mut sent = 0usize;
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if pending.is_empty() {
            match up.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => pending.extend_from_slice(&chunk[..n]),
                // The registry closing without close_notify: the end.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
                Err(e) => return Err(e),
            }
        }
        let take = pending.len().min(limit - sent);
        down.write_all(&pending[..take])?;
        pending.drain(..take);
        sent += take;
        if sent == limit {
            down.flush()?;
            if let Some(Fault::PauseAfter(_)) = fault {
                let _ = sh.paused.lock().unwrap().send(());
                let _ = sh.resume.lock().unwrap().recv();
                // Then the rest, as it comes.
                std::io::copy(&mut up, down).ok();
                down.conn.send_close_notify();
                return down.flush();
            }
            match fault {
                Some(Fault::StallAfter(_)) => {
                    // Hold the connection, sending nothing, until the relay
                    // is dropped (the sender's drop ends this wait).
                    let _ = release.lock().unwrap().recv();
                }
                _ => {
                    // A cut: close the TCP connection without close_notify.
                    let _ = down.sock.shutdown(std::net::Shutdown::Both);
                }
            }
            return Ok(());
        }
    }
    down.conn.send_close_notify();
    down.flush()
}
