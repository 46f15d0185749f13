//! A real, small HTTP/1.1 server on 127.0.0.1 for upload tests (std::net, a
//! thread per connection, keep-alive). It takes PUTs and stores each body
//! under its path; the first `fail_first` requests fail, in turn: a 503
//! answer, a connection closed halfway through the body, and a body read in
//! full but the connection closed without an answer (the client cannot know
//! it arrived, so it sends it again: the object is overwritten).

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A PUT whose body arrived whole (answered 200, or stored and then the
/// connection cut).
#[derive(Debug, Clone)]
pub struct Stored {
    pub path: String,
    /// The Content-Length header as sent.
    pub content_length: Option<u64>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct State {
    stored: Vec<Stored>,
    /// Requests that used Transfer-Encoding: chunked (always answered 411).
    chunked: usize,
}

pub struct HttpServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl HttpServer {
    /// Starts the server; the first `fail_first` requests fail.
    pub fn start(fail_first: usize) -> HttpServer {
        Self::start_with(fail_first, None)
    }

    /// The same server speaking HTTPS with `tls` (a rustls server config).
    pub fn start_tls(fail_first: usize, tls: Arc<rustls::ServerConfig>) -> HttpServer {
        Self::start_with(fail_first, Some(tls))
    }

    fn start_with(fail_first: usize, tls: Option<Arc<rustls::ServerConfig>>) -> HttpServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, rq, sp) = (state.clone(), requests.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (st, rq, tls) = (st.clone(), rq.clone(), tls.clone());
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
                    match tls {
                        None => serve(conn, st, rq, fail_first),
                        Some(cfg) => {
                            let Ok(server) = rustls::ServerConnection::new(cfg) else {
                                return;
                            };
                            serve(rustls::StreamOwned::new(server, conn), st, rq, fail_first)
                        }
                    }
                });
            }
        });
        HttpServer {
            addr,
            state,
            requests,
            stop,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The HTTPS URL, with the name the test certificate is for.
    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{}", self.addr.port(), path)
    }

    /// Successful PUTs, in the order they completed.
    pub fn stored(&self) -> Vec<Stored> {
        self.state.lock().unwrap().stored.clone()
    }

    pub fn chunked_requests(&self) -> usize {
        self.state.lock().unwrap().chunked
    }

    /// All requests seen, failed ones included.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

/// Writes a whole answer; false when the connection is gone.
fn respond<S: Write>(conn: &mut S, answer: &[u8]) -> bool {
    conn.write_all(answer).is_ok() && conn.flush().is_ok()
}

fn serve<S: Read + Write>(
    conn: S,
    state: Arc<Mutex<State>>,
    requests: Arc<AtomicUsize>,
    fail_first: usize,
) {
    let mut reader = BufReader::new(conn);
    loop {
        let Some(head) = super::http_head::read_head(&mut reader) else {
            return;
        };
        let (method, path) = (head.method.clone(), head.target.clone());
        let content_length = head
            .header("content-length")
            .and_then(|v| v.parse::<u64>().ok());
        let chunked = head
            .headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let n = requests.fetch_add(1, Ordering::SeqCst);
        if chunked {
            state.lock().unwrap().chunked += 1;
            respond(
                reader.get_mut(),
                b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        let len = content_length.unwrap_or(0);
        if n < fail_first && n % 3 == 1 {
            // Close halfway through the body.
            let mut half = vec![0u8; (len / 2) as usize];
            let _ = reader.read_exact(&mut half);
            return;
        }
        let mut body = vec![0u8; len as usize];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if n < fail_first {
            if n % 3 == 0 {
                let answer =
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\ntry again";
                if !respond(reader.get_mut(), answer) {
                    return;
                }
                continue;
            }
            // Body stored (as object storage would), but no answer.
            state.lock().unwrap().stored.push(Stored {
                path,
                content_length,
                body,
            });
            return;
        }
        if method != "PUT" {
            respond(
                reader.get_mut(),
                b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n",
            );
            continue;
        }
        state.lock().unwrap().stored.push(Stored {
            path,
            content_length,
            body,
        });
        if !respond(
            reader.get_mut(),
            b"HTTP/1.1 200 OK\r\nETag: \"x\"\r\nContent-Length: 0\r\n\r\n",
        ) {
            return;
        }
    }
}
