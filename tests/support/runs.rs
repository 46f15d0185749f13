//! Run test support: a tiny real HTTP/1.1 server on 127.0.0.1 that serves
//! GETs of registered bodies (source archives) and stores PUTs (log chunks,
//! outputs, artifacts); tar.gz building; a configured [`SandboxExecutor`]
//! with its event channel.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use liftoff::run::{RunEvent, RunEvents};

#[derive(Default)]
struct State {
    files: HashMap<String, Vec<u8>>,
    puts: Vec<(String, Vec<u8>)>,
    gets: Vec<String>,
}

/// GET serves registered bodies (404 otherwise), PUT stores bodies (needs
/// Content-Length; chunked is refused with 411).
#[derive(Clone)]
pub struct FileServer {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl FileServer {
    pub fn start() -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve(conn, st));
            }
        });
        FileServer { addr, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn serve_file(&self, path: &str, body: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .files
            .insert(path.to_string(), body);
    }

    /// PUT bodies whose path starts with `prefix`, in arrival order.
    pub fn puts(&self, prefix: &str) -> Vec<(String, Vec<u8>)> {
        self.state
            .lock()
            .unwrap()
            .puts
            .iter()
            .filter(|(p, _)| p.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn gets(&self) -> Vec<String> {
        self.state.lock().unwrap().gets.clone()
    }
}

fn serve(conn: TcpStream, state: Arc<Mutex<State>>) {
    let Some((mut reader, mut out)) = super::http_head::split(conn) else {
        return;
    };
    loop {
        let Some(head) = super::http_head::read_head(&mut reader) else {
            return;
        };
        let method = head.method.as_str();
        let path = head.target.split('?').next().unwrap_or("").to_string();
        let len = head
            .header("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        if head.header("transfer-encoding").is_some() {
            let _ = out.write_all(
                b"HTTP/1.1 411 Length Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return;
        }
        let mut body = vec![0u8; len.unwrap_or(0)];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        match method {
            "GET" => {
                let file = {
                    let mut s = state.lock().unwrap();
                    s.gets.push(path.clone());
                    s.files.get(&path).cloned()
                };
                // Head and body in one write: no Nagle delay between them.
                let r = match file {
                    Some(f) => {
                        let mut answer =
                            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", f.len())
                                .into_bytes();
                        answer.extend_from_slice(&f);
                        out.write_all(&answer)
                    }
                    None => out.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"),
                };
                if r.is_err() {
                    return;
                }
            }
            "PUT" if len.is_some() => {
                state.lock().unwrap().puts.push((path, body));
                if out
                    .write_all(b"HTTP/1.1 200 OK\r\nETag: \"x\"\r\nContent-Length: 0\r\n\r\n")
                    .is_err()
                {
                    return;
                }
            }
            _ => {
                let _ =
                    out.write_all(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n");
            }
        }
    }
}

/// A tar.gz of (path, mode, contents).
pub fn tar_gz(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    for (path, mode, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap().finish().unwrap()
}

/// An event channel for one run.
pub fn events(run_id: &str) -> (RunEvents, smol::channel::Receiver<(String, RunEvent)>) {
    let (tx, rx) = smol::channel::unbounded();
    (RunEvents::new(run_id, tx), rx)
}

/// Events until the terminal one (or panics after `limit`).
pub fn until_end(
    rx: &smol::channel::Receiver<(String, RunEvent)>,
    limit: Duration,
) -> Vec<RunEvent> {
    let deadline = Instant::now() + limit;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no terminal event within {limit:?}: {out:?}"
        );
        let ev = smol::block_on(async {
            smol::future::or(async { rx.recv().await.ok() }, async {
                smol::Timer::after(left).await;
                None
            })
            .await
        });
        let Some((_, ev)) = ev else { continue };
        let end = matches!(
            ev,
            RunEvent::Finished { .. } | RunEvent::Failed { .. } | RunEvent::Rejected { .. }
        );
        out.push(ev);
        if end {
            return out;
        }
    }
}

/// A private (0700) temporary directory for a run's state and cache: the
/// launcher binds what the job needs by file descriptor, so the job's host
/// id never has to traverse it.
pub fn open_tempdir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    d
}

/// The names in `dir`, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    v.sort();
    v
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

pub fn join(p: &Path, s: &str) -> PathBuf {
    p.join(s)
}
