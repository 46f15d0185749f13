//! A small HTTP/1.1 server side: read one request from a stream
//! ([`read_request`]: request line, headers, a `Content-Length` or chunked
//! body, with size limits) and write one answer ([`Response::write`]).
//! Keep-alive is the caller's loop. No async runtime: one thread per
//! connection (see `server`).

use std::io::{BufRead, Read, Write};

/// Longest request head (request line and headers).
const MAX_HEAD: usize = 32 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Request {
    pub method: String,
    /// The path without the query, percent-decoding not applied.
    pub path: String,
    pub query: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// A query parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    }

    fn keep_alive(&self) -> bool {
        !self
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn json(status: u16, v: &serde_json::Value) -> Response {
        Response {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: v.to_string().into_bytes(),
        }
    }

    pub fn bytes(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            content_type: "application/octet-stream",
            headers: Vec::new(),
            body,
        }
    }

    /// An error answer: `{"error": message}`.
    pub fn error(e: &super::Error) -> Response {
        Response::json(e.status(), &serde_json::json!({"error": e.message()}))
    }

    pub fn write(&self, w: &mut impl Write, keep_alive: bool) -> std::io::Result<()> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for (k, v) in &self.headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        w.write_all(head.as_bytes())?;
        w.write_all(&self.body)?;
        w.flush()
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "",
    }
}

/// Why a request could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection between requests.
    Closed,
    Io(std::io::Error),
    /// Malformed or too big: answer with this status and close.
    Bad(u16, String),
}

fn read_line(r: &mut impl BufRead, budget: &mut usize) -> Result<String, ReadError> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)
        .map_err(ReadError::Io)?;
    if n == 0 {
        return Err(ReadError::Closed);
    }
    if n > *budget {
        return Err(ReadError::Bad(431, "request head too large".into()));
    }
    *budget -= n;
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| ReadError::Bad(400, "request head is not UTF-8".into()))
}

/// Reads one request; `max_body` bounds its body. Returns whether the
/// connection may stay open after the answer.
pub fn read_request(r: &mut impl BufRead, max_body: usize) -> Result<(Request, bool), ReadError> {
    let mut budget = MAX_HEAD;
    let mut line = read_line(r, &mut budget)?;
    while line.is_empty() {
        line = read_line(r, &mut budget)?;
    }
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Bad(400, format!("bad request line {line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(ReadError::Bad(505, "only HTTP/1.x is served".into()));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = Request {
        method: method.to_string(),
        path: path.to_string(),
        query: query.to_string(),
        ..Request::default()
    };
    loop {
        let h = read_line(r, &mut budget).map_err(|e| match e {
            ReadError::Closed => ReadError::Bad(400, "connection closed in the headers".into()),
            e => e,
        })?;
        if h.is_empty() {
            break;
        }
        let Some((k, v)) = h.split_once(':') else {
            return Err(ReadError::Bad(400, format!("bad header line {h:?}")));
        };
        req.headers
            .push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let too_big = || ReadError::Bad(413, format!("request body larger than {max_body} bytes"));
    if req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut b = 1024;
            let size_line = read_line(r, &mut b)?;
            let size = usize::from_str_radix(size_line.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| ReadError::Bad(400, "bad chunk size".into()))?;
            if size == 0 {
                // Trailers, up to the empty line.
                let mut b = MAX_HEAD;
                while !read_line(r, &mut b)?.is_empty() {}
                break;
            }
            if req.body.len() + size > max_body {
                return Err(too_big());
            }
            let start = req.body.len();
            req.body.resize(start + size, 0);
            r.read_exact(&mut req.body[start..])
                .map_err(ReadError::Io)?;
            let mut b = 4;
            read_line(r, &mut b)?;
        }
    } else if let Some(len) = req.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| ReadError::Bad(400, "bad Content-Length".into()))?;
        if len > max_body {
            return Err(too_big());
        }
        req.body.resize(len, 0);
        r.read_exact(&mut req.body).map_err(ReadError::Io)?;
    }
    let keep = req.keep_alive();
    Ok((req, keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_content_length_and_chunked_bodies() {
        let raw = b"PUT /o/a?exp=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabcPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n2\r\nhi\r\n1\r\n!\r\n0\r\n\r\n";
        let mut r = std::io::BufReader::new(&raw[..]);
        let (a, keep) = read_request(&mut r, 100).unwrap();
        assert_eq!(
            (a.method.as_str(), a.path.as_str(), a.query.as_str()),
            ("PUT", "/o/a", "exp=1")
        );
        assert_eq!((a.body.as_slice(), keep), (&b"abc"[..], true));
        let (b, keep) = read_request(&mut r, 100).unwrap();
        assert_eq!((b.body.as_slice(), keep), (&b"hi!"[..], false));
        assert!(matches!(read_request(&mut r, 100), Err(ReadError::Closed)));
        let mut big = std::io::BufReader::new(&b"PUT / HTTP/1.1\r\nContent-Length: 9\r\n\r\n"[..]);
        assert!(matches!(
            read_request(&mut big, 4),
            Err(ReadError::Bad(413, _))
        ));
    }
}
