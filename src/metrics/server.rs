//! A tiny HTTP/1.1 listener for health and metrics: std::net only, no async
//! runtime, one thread per connection up to a small bound.
//!
//! Call order: [`bind`] at start-up (a taken or bad address is reported to the
//! caller, who makes it a configuration error), then [`serve`] with a
//! [`Handler`] (path → [`Response`]). The acceptor thread blocks in
//! `accept` (no wake-ups while nobody connects); each connection gets its
//! own short-lived thread that reads at most [`MAX_REQUEST`] bytes of
//! request head within [`REQUEST_DEADLINE`] (slow or half-open clients are
//! dropped), answers `GET`/`HEAD` once with `Connection: close`, and ends.
//! Past [`MAX_CONNECTIONS`] open connections a new one is answered 503 at
//! once. Nothing here shares a lock with the code being observed: the
//! handler reads atomics.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest request head read.
pub const MAX_REQUEST: usize = 8 * 1024;
/// A request head must arrive within this long.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 64;

/// What a path answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

/// Answers a request path (without the query).
pub type Handler = Arc<dyn Fn(&str) -> Response + Send + Sync>;

/// Why the listener could not start.
#[derive(Debug)]
pub enum Error {
    /// The address could not be bound (taken, not local, not allowed).
    Bind(SocketAddr, std::io::Error),
    /// The acceptor thread could not be started.
    Thread(std::io::Error),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Bind(a, e) => write!(
                f,
                "cannot listen on {a}: {e}; choose a free port on an address of this host"
            ),
            Error::Thread(e) => write!(f, "cannot start the metrics listener thread: {e}"),
        }
    }
}

/// Binds the listening socket.
pub fn bind(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).map_err(|e| Error::Bind(addr, e))
}

/// Serves `handler` on `listener` from its own thread (named `name`) until
/// the process ends.
pub fn serve(listener: TcpListener, name: &str, handler: Handler) -> Result<JoinHandle<()>, Error> {
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            for conn in listener.incoming() {
                let Ok(stream) = conn else {
                    // EMFILE and the like: do not spin.
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                if active.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
                    active.fetch_sub(1, Ordering::AcqRel);
                    busy(stream);
                    continue;
                }
                let (h, a) = (handler.clone(), active.clone());
                let spawned = std::thread::Builder::new()
                    .name("liftoff-http".into())
                    .stack_size(128 * 1024)
                    .spawn(move || {
                        connection(stream, &*h);
                        a.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    active.fetch_sub(1, Ordering::AcqRel);
                }
            }
        })
        .map_err(Error::Thread)
}

fn busy(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
}

/// Reads the request head: `None` when the client is too slow, sends too
/// much, or goes away.
fn read_head(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_REQUEST {
            return None;
        }
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.windows(2).any(|w| w == b"\n\n") {
            return Some(buf);
        }
    }
}

fn connection(mut stream: TcpStream, handler: &(dyn Fn(&str) -> Response + Send + Sync)) {
    let _ = stream.set_write_timeout(Some(REQUEST_DEADLINE));
    let _ = stream.set_nodelay(true);
    let Some(head) = read_head(&mut stream) else {
        return;
    };
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let response = match method {
        "GET" | "HEAD" => handler(path),
        _ => Response::text(405, "only GET and HEAD\n"),
    };
    let reason = match response.status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n{}\r\n",
        response.status,
        response.content_type,
        response.body.len(),
        if response.status == 405 {
            "Allow: GET, HEAD\r\n"
        } else {
            ""
        }
    )
    .into_bytes();
    if method != "HEAD" {
        out.extend_from_slice(response.body.as_bytes());
    }
    let _ = stream.write_all(&out);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Let the client read the answer before the socket closes (a close with
    // unread request bytes would reset the connection).
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.read(&mut [0u8; 256]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(addr: SocketAddr, req: &str) -> String {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(req.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    }

    #[test]
    fn answers_paths_methods_and_drops_slow_clients() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = l.local_addr().unwrap();
        serve(
            l,
            "test-http",
            Arc::new(|p: &str| match p {
                "/x" => Response::text(200, "yes\n"),
                _ => Response::text(404, "no\n"),
            }),
        )
        .unwrap();
        let ok = get(addr, "GET /x?q=1 HTTP/1.1\r\nHost: a\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nyes\n"), "{ok}");
        let head = get(addr, "HEAD /x HTTP/1.1\r\n\r\n");
        assert!(head.contains("Content-Length: 4\r\n") && head.ends_with("\r\n\r\n"));
        assert!(get(addr, "GET /y HTTP/1.0\r\n\r\n").starts_with("HTTP/1.1 404"));
        assert!(get(addr, "POST /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
        // A client that never finishes its request does not hold up others.
        let _slow = TcpStream::connect(addr).unwrap();
        assert!(get(addr, "GET /x HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 200"));
        // An oversized head is dropped without an answer.
        let big = format!(
            "GET /x HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST + 10)
        );
        let mut s = TcpStream::connect(addr).unwrap();
        let _ = s.write_all(big.as_bytes());
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_taken_address_is_an_error() {
        let l = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let e = bind(l.local_addr().unwrap()).unwrap_err();
        assert!(e.to_string().contains("cannot listen on 127.0.0.1:"), "{e}");
    }
}
