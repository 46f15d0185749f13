//! The head of an HTTP/1.1 request, read the same way by every small test
//! server here (`runs::FileServer`, `http_server`, `tool_release`,
//! `poll_plane`): [`read_head`] reads the request line and the headers up to
//! the blank line; each server then reads the body its own way. [`split`]
//! readies an accepted connection (read timeout, reader and writer).

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::time::Duration;

pub struct Head {
    pub method: String,
    /// The request target as sent (path and query).
    pub target: String,
    /// (name in lower case, value trimmed), in the order sent.
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The last value of header `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// An accepted connection with a 30 s read timeout, as a buffered reader
/// for requests and a writer for answers; `None` when it cannot be cloned.
pub fn split(conn: TcpStream) -> Option<(BufReader<TcpStream>, TcpStream)> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    let out = conn.try_clone().ok()?;
    Some((BufReader::new(conn), out))
}

/// Reads a request line and headers; `None` when the connection ends (or
/// fails) before the blank line that closes the head.
pub fn read_head(r: &mut impl BufRead) -> Option<Head> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    Some(Head {
        method,
        target,
        headers,
    })
}
