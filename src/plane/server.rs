//! The plane's HTTPS listener: TLS 1.2/1.3 with the server certificate,
//! client certificates checked against the pool CA and the revocation list
//! ([`super::pki::ClientCheck`]), one thread per connection (small stacks:
//! an idle long-poll costs a parked thread and its TLS buffers), HTTP/1.1
//! keep-alive. Routes:
//!
//! | path | who | what |
//! |---|---|---|
//! | `/v1/pools/…` | workers (client certificate) | the long-poll binding ([`super::binding`]) |
//! | `/admin/v1/…` | the CLI (bearer admin token) | the admin API ([`super::admin`]) |
//! | `/o/{key}?exp=…&sig=…` | workers, anyone with the URL | signed object GET/PUT ([`super::objects`]) |
//! | `/healthz` | anyone | `200 ok` |
//!
//! Call order: [`serve`] binds, starts the dispatch loop and accepts until
//! the plane stops.

use std::io::BufReader;
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::dispatch::Plane;
use super::httpd::{ReadError, Response, read_request};
use super::objects::{MAX_OBJECT, Objects as _};
use super::{Error, Result};

/// Stack of a connection thread.
const STACK: usize = 128 * 1024;
/// An idle keep-alive connection is closed after this long (longer than
/// the 50 s poll plus the worker's 10 s margin).
const IDLE: Duration = Duration::from_secs(75);

pub fn tls_config(plane: &Plane) -> Result<Arc<rustls::ServerConfig>> {
    crate::identity::install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(plane.data.server.cert.as_bytes())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Config(format!("server.crt is not PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(plane.data.server.key.as_bytes())
        .map_err(|e| Error::Config(format!("server.key is not a PEM private key: {e}")))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::Config(e.to_string()))?
    .with_client_cert_verifier(plane.check.clone())
    .with_single_cert(chain, key)
    .map_err(|e| Error::Config(format!("the server certificate and key do not fit: {e}")))?;
    Ok(Arc::new(cfg))
}

/// Binds the listener (returns it so callers learn the port).
pub fn bind(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr).map_err(|e| {
        Error::Config(format!(
            "cannot listen on {addr}: {e}; change \"listen\" in plane.json or stop what uses the port"
        ))
    })
}

/// Accepts connections until the plane stops.
pub fn accept_loop(plane: Arc<Plane>, listener: TcpListener) -> Result<()> {
    let tls = tls_config(&plane)?;
    for stream in listener.incoming() {
        if plane.stopping.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let Ok(stream) = stream else { continue };
        let (plane, tls) = (plane.clone(), tls.clone());
        let spawned = std::thread::Builder::new()
            .name("plane-conn".into())
            .stack_size(STACK)
            .spawn(move || connection(&plane, tls, stream));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start a connection thread");
        }
    }
    Ok(())
}

fn connection(plane: &Plane, tls: Arc<rustls::ServerConfig>, mut sock: TcpStream) {
    let _ = sock.set_read_timeout(Some(IDLE));
    let _ = sock.set_write_timeout(Some(Duration::from_secs(30)));
    let _ = sock.set_nodelay(true);
    let Ok(mut conn) = rustls::ServerConnection::new(tls) else {
        return;
    };
    while conn.is_handshaking() {
        if let Err(e) = conn.complete_io(&mut sock) {
            tracing::debug!(error = %e, "TLS handshake failed");
            return;
        }
    }
    let leaf = conn.peer_certificates().and_then(|c| c.first());
    let cert_pool = leaf.and_then(|leaf| plane.check.pool_of(leaf));
    let cert_fp = leaf.map(|l| super::pki::fingerprint(l));
    let stream = rustls::StreamOwned::new(conn, sock);
    let mut reader = BufReader::with_capacity(8 * 1024, stream);
    loop {
        let (req, keep) = match read_request(&mut reader, MAX_OBJECT) {
            Ok(r) => r,
            Err(ReadError::Closed) | Err(ReadError::Io(_)) => return,
            Err(ReadError::Bad(status, msg)) => {
                let r = Response::json(status, &serde_json::json!({"error": msg}));
                let _ = r.write(reader.get_mut(), false);
                return;
            }
        };
        // A pool reset revokes the certificate of open connections too:
        // they are closed, and the next handshake is refused.
        if cert_fp.as_deref().is_some_and(|f| plane.check.revoked(f)) {
            return;
        }
        let resp = route(plane, &req, cert_pool.as_deref(), cert_fp.as_deref());
        if resp.write(reader.get_mut(), keep).is_err() || !keep {
            return;
        }
    }
}

fn route(
    plane: &Plane,
    req: &super::httpd::Request,
    cert_pool: Option<&str>,
    cert_fp: Option<&str>,
) -> Response {
    let path = req.path.as_str();
    if path.starts_with("/v1/pools/") {
        super::binding::handle(plane, req, cert_pool, cert_fp)
    } else if path.starts_with("/admin/v1/") {
        super::admin::handle(plane, req)
    } else if let Some(key) = path.strip_prefix("/o/") {
        objects(plane, req, key)
    } else if path == "/healthz" {
        Response::json(200, &serde_json::json!({"ok": true}))
    } else {
        Response::error(&Error::NotFound(format!("no {path}")))
    }
}

fn objects(plane: &Plane, req: &super::httpd::Request, key: &str) -> Response {
    let method = req.method.as_str();
    if !matches!(method, "GET" | "PUT") {
        return Response::json(405, &serde_json::json!({"error": "only GET and PUT"}));
    }
    if let Err(e) = plane.objects.check(method, key, &req.query) {
        return Response::error(&e);
    }
    if method == "PUT" {
        match plane.objects.put(key, &req.body) {
            Ok(()) => Response::json(200, &serde_json::json!({})),
            Err(e) => Response::error(&e),
        }
    } else {
        match plane.objects.get(key) {
            Ok(Some(d)) => Response::bytes(200, d),
            Ok(None) => Response::error(&Error::NotFound(format!("no object {key}"))),
            Err(e) => Response::error(&e),
        }
    }
}

/// `serve`: opens everything in `plane`, binds `listen`, runs the dispatch
/// loop and accepts until SIGTERM/SIGINT.
pub fn serve(plane: Arc<Plane>, listener: TcpListener) -> Result<()> {
    super::mqtt::start(&plane)?;
    let d = plane.clone();
    std::thread::Builder::new()
        .name("plane-dispatch".into())
        .spawn(move || d.run_loop())
        .map_err(|e| Error::Config(format!("cannot start the dispatch thread: {e}")))?;
    accept_loop(plane, listener)
}
