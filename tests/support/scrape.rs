//! A plain HTTP/1.1 client for the launcher's metrics listener, the
//! exposition's samples by name and labels, and `promtool check metrics`
//! (Debian's prometheus package).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// `GET path` on `addr`: (status, body). Status 0 when nothing answered.
pub fn get(addr: &str, path: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the sample written exactly `series` (name and labels as
/// the exposition spells them), if present.
pub fn value(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let (name, v) = l.rsplit_once(' ')?;
        (name == series).then(|| v.parse().ok())?
    })
}

/// Scrapes until `pred` holds for (status, body) of `path`; panics with the
/// last answer after `timeout`.
pub fn wait(
    addr: &str,
    path: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(u16, &str) -> bool,
) -> String {
    let end = Instant::now() + timeout;
    loop {
        let (status, body) = get(addr, path);
        if pred(status, &body) {
            return body;
        }
        assert!(
            Instant::now() < end,
            "{what}: {path} answered {status}: {body}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until the metric `series` satisfies `pred`; returns the scrape.
pub fn wait_metric(
    addr: &str,
    series: &str,
    timeout: Duration,
    pred: impl Fn(f64) -> bool,
) -> String {
    wait(addr, "/metrics", timeout, series, |s, b| {
        s == 200 && value(b, series).is_some_and(&pred)
    })
}

/// `promtool check metrics` on `text`: panics with its complaint. Fails
/// loudly when promtool is missing (scripts/test.sh installs prometheus).
pub fn promtool_check(text: &str) {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is missing: install Debian's prometheus package (scripts/test.sh does)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics: {said}\n--- exposition ---\n{text}"
    );
}
