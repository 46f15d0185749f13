//! Chunks, spool and upload against a real HTTP server on 127.0.0.1:
//! faults (503s, connections cut mid-body, answers lost), a launcher killed
//! with chunks spooled, and secrets in every split and encoding never reaching
//! uploaded chunks, spool files or stdout.

mod support;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use liftoff::logs::redact::{Matcher, RedactorBuilder, reference_mask, variants};
use liftoff::logs::sink::{DeliverError, PresignedSink, Sink, StdoutSink, UrlQueue};
use liftoff::logs::spool::sha256;
use liftoff::logs::upload::{Retry, recover};
use liftoff::logs::{Ended, Kill, LogError, Options, Pipeline};
use support::http_server::HttpServer;

struct NoKill;
impl Kill for NoKill {
    fn terminate(&mut self) {}
    fn kill(&mut self) {}
}

fn options(root: &Path, run_id: &str, chunk_max: usize) -> Options {
    Options {
        chunk_max,
        retry: Retry {
            attempts: 30,
            base: Duration::from_millis(5),
            max: Duration::from_millis(50),
        },
        ..Options::new(run_id, root.to_path_buf())
    }
}

fn agent() -> ureq::Agent {
    liftoff::http::agent(
        &Default::default(),
        &[],
        liftoff::http::Timeouts {
            connect: Duration::from_secs(5),
            call: Duration::from_secs(10),
        },
    )
    .unwrap()
}

fn presigned(server: &HttpServer) -> Box<dyn Sink> {
    let base = server.url("/bucket");
    Box::new(PresignedSink::new(
        agent(),
        Arc::new(move |run: &str, seq: u64| -> Result<String, DeliverError> {
            Ok(format!("{base}/{run}/{seq:06}?X-Amz-Signature=abc"))
        }),
    ))
}

/// Text with numbered lines, `lines` long.
fn text(lines: usize) -> Vec<u8> {
    let mut t = Vec::new();
    for i in 0..lines {
        writeln!(
            t,
            "line {i:06}: the quick brown fox jumps over the lazy dog"
        )
        .unwrap();
    }
    t
}

/// A reader that hands out its bytes in pseudo-random small pieces.
struct Splitting {
    data: Vec<u8>,
    at: usize,
    rng: u64,
    max: usize,
}

impl Read for Splitting {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at >= self.data.len() {
            return Ok(0);
        }
        self.rng = self
            .rng
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let n = (1 + (self.rng >> 33) as usize % self.max)
            .min(buf.len())
            .min(self.data.len() - self.at);
        buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Checks the server's objects: every object is one chunk, first stored in
/// sequence order, any repeat identical; returns the bodies by key in order.
fn objects_in_order(server: &HttpServer, prefix: &str) -> Vec<Vec<u8>> {
    let mut objects: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut first_seen = Vec::new();
    for s in server.stored() {
        assert!(s.path.starts_with(prefix), "unexpected path {}", s.path);
        assert_eq!(
            s.content_length,
            Some(s.body.len() as u64),
            "{}: Content-Length",
            s.path
        );
        let key = s.path.split('?').next().unwrap().to_string();
        match objects.get(&key) {
            Some(prev) => assert_eq!(
                prev, &s.body,
                "{key} was stored twice with different bodies"
            ),
            None => {
                first_seen.push(key.clone());
                objects.insert(key, s.body);
            }
        }
    }
    let mut sorted = first_seen.clone();
    sorted.sort();
    assert_eq!(first_seen, sorted, "chunks arrived out of order");
    assert_eq!(server.chunked_requests(), 0, "a chunked body was sent");
    sorted
        .into_iter()
        .map(|k| objects.remove(&k).unwrap())
        .collect()
}

#[test]
fn uploads_survive_failures_in_order_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = HttpServer::start(9);
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let d2 = delivered.clone();
    let mut p = Pipeline::start(
        options(dir.path(), "01RUNFAULTS", 4096),
        RedactorBuilder::new().build(),
        presigned(&server),
        Some(Box::new(move |c| d2.lock().unwrap().push(c.clone()))),
    )
    .unwrap();
    let input = text(2000);
    let ended = p
        .pump_reader(
            Splitting {
                data: input.clone(),
                at: 0,
                rng: 1,
                max: 3000,
            },
            &mut NoKill,
        )
        .unwrap();
    assert_eq!(ended, Ended::Closed);
    let report = p.finish();
    assert_eq!(report.delivered.error, None);
    assert_eq!(report.delivered.left, 0);
    assert!(
        server.requests() > report.delivered.chunks,
        "faults happened"
    );
    let bodies = objects_in_order(&server, "/bucket/01RUNFAULTS/");
    let chunks = delivered.lock().unwrap().clone();
    assert_eq!(bodies.len(), chunks.len());
    assert!(chunks.len() >= 20, "{} chunks", chunks.len());
    for (i, (body, chunk)) in bodies.iter().zip(&chunks).enumerate() {
        assert_eq!(chunk.seq, i as u64);
        assert_eq!(chunk.len, body.len() as u64);
        assert!(body.len() <= 4096);
        assert_eq!(chunk.sha256, sha256(body), "chunk {i} SHA-256");
    }
    assert_eq!(bodies.concat(), input);
    // Delivered chunks leave the spool.
    assert!(!dir.path().join("01RUNFAULTS").exists());
}

/// The child side of the restart test: spools chunks that cannot be
/// uploaded yet (no URL comes), says so, and waits to be killed.
#[test]
fn restart_child() {
    let Ok(root) = std::env::var("LIFTOFF_TEST_SPOOL_CHILD") else {
        return;
    };
    let mut b = RedactorBuilder::new();
    b.secret("TOKEN", b"child-secret-value");
    let urls = UrlQueue::new(Duration::from_secs(3600));
    let sink = Box::new(PresignedSink::new(agent(), urls));
    let mut p = Pipeline::start(
        options(Path::new(&root), "01RUNRESTART", 1000),
        b.build(),
        sink,
        None,
    )
    .unwrap();
    let mut input = text(100);
    input.extend_from_slice(b"token child-secret-value end\n");
    p.pump_reader(std::io::Cursor::new(input), &mut NoKill)
        .unwrap();
    println!("SPOOLED");
    std::io::stdout().flush().unwrap();
    // Blocks until the parent's SIGKILL (no timing involved).
    loop {
        std::thread::park();
    }
}

#[test]
fn chunks_spooled_by_a_killed_launcher_are_uploaded_at_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "restart_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("LIFTOFF_TEST_SPOOL_CHILD", dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(
        lines.any(|l| l.map(|l| l.contains("SPOOLED")).unwrap_or(false)),
        "the child did not spool"
    );
    child.kill().unwrap(); // SIGKILL: no clean shutdown
    child.wait().unwrap();

    let spool_dir = dir.path().join("01RUNRESTART");
    let spooled: Vec<_> = std::fs::read_dir(&spool_dir).unwrap().flatten().collect();
    assert!(spooled.len() >= 5, "{} chunks spooled", spooled.len());

    let server = HttpServer::start(4);
    let results = recover(
        dir.path(),
        |run| {
            assert_eq!(run, "01RUNRESTART");
            Some(presigned(&server))
        },
        &Retry {
            attempts: 20,
            base: Duration::from_millis(5),
            max: Duration::from_millis(50),
        },
    )
    .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].1.error, None);
    assert_eq!(results[0].1.left, 0);
    let bodies = objects_in_order(&server, "/bucket/01RUNRESTART/");
    let mut expected = text(100);
    expected.extend_from_slice(b"token *** end\n");
    assert_eq!(bodies.concat(), expected);
    assert!(!spool_dir.exists(), "the spool is emptied");
    // A second start finds nothing more to upload.
    let again = recover(dir.path(), |_| Some(presigned(&server)), &Retry::default()).unwrap();
    assert!(again.is_empty());
}

const SECRET: &[u8] = b"Sup3r/Secret+Value\n\"line two\"";

fn secret_matcher() -> Arc<Matcher> {
    let mut b = RedactorBuilder::new();
    b.secret("DB_PASSWORD", SECRET);
    b.build()
}

/// Output mentioning the secret in every encoding, at every base64 alignment.
fn leaky_output() -> Vec<u8> {
    let mut out = Vec::new();
    let crlf: Vec<u8> = SECRET
        .iter()
        .flat_map(|&b| {
            if b == b'\n' {
                vec![b'\r', b'\n']
            } else {
                vec![b]
            }
        })
        .collect();
    for round in 0..20 {
        writeln!(out, "round {round}").unwrap();
        out.extend_from_slice(b"raw: ");
        out.extend_from_slice(SECRET);
        out.extend_from_slice(b"\ncrlf: ");
        out.extend_from_slice(&crlf);
        let json = serde_json::to_string(std::str::from_utf8(SECRET).unwrap()).unwrap();
        writeln!(out, "\njson: {{\"password\": {json}}}").unwrap();
        let url: String = SECRET
            .iter()
            .map(|&b| {
                if b.is_ascii_alphanumeric() {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        writeln!(out, "url: https://x/?p={url}&q=1").unwrap();
        for prefix in ["", "a", "ab"] {
            let mut raw = prefix.as_bytes().to_vec();
            raw.extend_from_slice(SECRET);
            raw.extend_from_slice(b"xyz");
            writeln!(
                out,
                "b64: {}",
                base64::engine::general_purpose::STANDARD.encode(&raw)
            )
            .unwrap();
        }
    }
    out
}

fn assert_clean(what: &str, bytes: &[u8]) {
    for v in variants(SECRET) {
        assert!(
            !bytes.windows(v.len()).any(|w| w == v.as_slice()),
            "{what} contains the secret form {:?}",
            String::from_utf8_lossy(&v)
        );
    }
    assert!(
        bytes.windows(3).any(|w| w == b"***"),
        "{what} has no mask at all"
    );
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);
impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn secrets_never_reach_chunks_spool_or_stdout() {
    let input = leaky_output();
    let expected = reference_mask(&input, &variants(SECRET));
    for (case, max) in [1usize, 2, 3, 7, 64, 100_000].into_iter().enumerate() {
        // Uploaded chunks.
        let dir = tempfile::tempdir().unwrap();
        let server = HttpServer::start(0);
        let mut p = Pipeline::start(
            options(dir.path(), "01RUNLEAK", 300),
            secret_matcher(),
            presigned(&server),
            None,
        )
        .unwrap();
        let reader = Splitting {
            data: input.clone(),
            at: 0,
            rng: case as u64,
            max,
        };
        p.pump_reader(reader, &mut NoKill).unwrap();
        p.finish();
        let uploaded = objects_in_order(&server, "/bucket/01RUNLEAK/").concat();
        assert_clean("uploaded chunks", &uploaded);
        assert_eq!(uploaded, expected);

        // Spool files: an upload that never succeeds leaves them in place.
        let dir = tempfile::tempdir().unwrap();
        let never = Box::new(PresignedSink::new(
            agent(),
            Arc::new(|_: &str, _: u64| -> Result<String, DeliverError> {
                Err(DeliverError::fatal("no URL in this test"))
            }),
        ));
        let mut p = Pipeline::start(
            options(dir.path(), "01RUNLEAK", 300),
            secret_matcher(),
            never,
            None,
        )
        .unwrap();
        let reader = Splitting {
            data: input.clone(),
            at: 0,
            rng: case as u64 + 100,
            max,
        };
        p.pump_reader(reader, &mut NoKill).unwrap();
        let report = p.finish();
        assert!(report.delivered.error.is_some());
        let mut files: Vec<_> = std::fs::read_dir(dir.path().join("01RUNLEAK"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.sort();
        assert!(files.len() > 3);
        let spooled: Vec<u8> = files
            .iter()
            .flat_map(|f| std::fs::read(f).unwrap())
            .collect();
        assert_clean("spool files", &spooled);
        assert_eq!(spooled, expected);

        // Standard output JSON lines.
        let dir = tempfile::tempdir().unwrap();
        let out = Shared::default();
        let sink = Box::new(StdoutSink::new("01RUNLEAK", out.clone()));
        let mut p = Pipeline::start(
            options(dir.path(), "01RUNLEAK", 300),
            secret_matcher(),
            sink,
            None,
        )
        .unwrap();
        let reader = Splitting {
            data: input.clone(),
            at: 0,
            rng: case as u64 + 200,
            max,
        };
        p.pump_reader(reader, &mut NoKill).unwrap();
        p.finish();
        let stdout = out.0.lock().unwrap().clone();
        assert_clean("stdout", &stdout);
        // Each line is a JSON object with run_ulid, ts and msg.
        let mut msgs = Vec::new();
        for line in stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(v["run_ulid"], "01RUNLEAK");
            assert!(v["ts"].as_str().unwrap().ends_with('Z'));
            msgs.push(v["msg"].as_str().unwrap().to_string());
        }
        let expected_lines: Vec<String> = String::from_utf8_lossy(&expected)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(msgs, expected_lines);
        // JSON escaping of the masked output must not revive a secret form.
        assert_clean("stdout messages", msgs.join("\n").as_bytes());
    }
}

#[test]
fn a_real_child_pipe_is_masked() {
    // The job writes the secret through a real pipe, in pieces.
    let dir = tempfile::tempdir().unwrap();
    let out = Shared::default();
    let sink = Box::new(StdoutSink::new("01RUNPIPE", out.clone()));
    let mut p = Pipeline::start(
        options(dir.path(), "01RUNPIPE", 1 << 20),
        secret_matcher(),
        sink,
        None,
    )
    .unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("printf 'a Sup3r/Sec'; sleep 0.2; printf 'ret+Value\\n\"line'; sleep 0.2; printf ' two\" b\\n' 1>&2")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Merge stderr into the same pipeline run: read both in order of arrival
    // is the caller's job; here stdout then stderr.
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    p.pump_reader(stdout.chain(stderr), &mut NoKill).unwrap();
    child.wait().unwrap();
    p.finish();
    let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("a *** b"), "{text}");
}

#[test]
fn chunks_are_at_most_1_mib_and_sealed_after_a_pause() {
    use liftoff::logs::{CHUNK_INTERVAL, CHUNK_MAX};
    assert_eq!(CHUNK_MAX, 1 << 20);
    assert_eq!(CHUNK_INTERVAL, Duration::from_secs(1));
    // A network sink (chunks are objects, through the spool).
    let lens = chunk_lengths(false);
    assert!(lens.iter().all(|&l| l <= CHUNK_MAX as u64), "{lens:?}");
    assert!(
        lens.iter().filter(|&&l| l == CHUNK_MAX as u64).count() >= 2,
        "{lens:?}"
    );
}

#[test]
fn chunks_for_a_local_sink_are_128_kib_writes_and_sealed_after_a_pause() {
    use liftoff::logs::DIRECT_CHUNK_MAX;
    assert_eq!(DIRECT_CHUNK_MAX, 128 << 10);
    // A file or stdout: chunks are writes of a whole chunk as it stands once
    // it holds 128 KiB (it may hold one 128 KiB read more).
    let lens = chunk_lengths(true);
    let (tail, full) = lens.split_last().unwrap();
    assert_eq!(*tail, 5);
    let (_, sealed_by_size) = full.split_last().unwrap();
    assert!(
        sealed_by_size
            .iter()
            .all(|&l| (DIRECT_CHUNK_MAX as u64..=2 * DIRECT_CHUNK_MAX as u64).contains(&l)),
        "{lens:?}"
    );
}

/// A sink that only counts: direct (like a file) or spooled (like URLs).
struct Counting(bool);
impl Sink for Counting {
    fn describe(&self) -> String {
        "a counting test sink".into()
    }
    fn deliver(
        &mut self,
        chunk: &liftoff::logs::spool::Chunk,
        body: &mut std::fs::File,
    ) -> Result<(), DeliverError> {
        let n = std::io::copy(&mut body.take(chunk.len), &mut std::io::sink()).unwrap();
        assert_eq!(n, chunk.len);
        Ok(())
    }
    fn direct(&self) -> bool {
        self.0
    }
    fn deliver_bytes(
        &mut self,
        chunk: &liftoff::logs::spool::Chunk,
        bytes: &[u8],
    ) -> Result<(), DeliverError> {
        assert_eq!(bytes.len() as u64, chunk.len);
        Ok(())
    }
}

/// 2.5 MiB at once, then (after a pause far longer than the chunk interval)
/// a last line of its own: the chunk lengths delivered.
fn chunk_lengths(direct: bool) -> Vec<u64> {
    use liftoff::logs::CHUNK_MAX;
    let dir = tempfile::tempdir().unwrap();
    let chunks = Arc::new(Mutex::new(Vec::new()));
    let c2 = chunks.clone();
    let mut opts = options(dir.path(), "01RUNSIZES", CHUNK_MAX);
    opts.chunk_interval = Duration::from_millis(100);
    let mut p = Pipeline::start(
        opts,
        RedactorBuilder::new().build(),
        Box::new(Counting(direct)),
        Some(Box::new(move |c| c2.lock().unwrap().push(c.len))),
    )
    .unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg("head -c 2621440 /dev/zero | tr '\\0' x; sleep 1; echo last")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    p.pump(child.stdout.take().unwrap(), &mut NoKill).unwrap();
    child.wait().unwrap();
    let report = p.finish();
    assert_eq!(report.delivered.error, None);
    let lens = chunks.lock().unwrap().clone();
    assert_eq!(lens.iter().sum::<u64>(), 2621440 + 5);
    assert_eq!(
        *lens.last().unwrap(),
        5,
        "the line after the pause is its own chunk: {lens:?}"
    );
    lens
}

#[test]
fn uploads_over_https_trust_additional_root_cas() {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let dir = tempfile::tempdir().unwrap();
    let ca = support::pki::TestCa::new(&dir.path().join("ca"), "uploads-ca");
    let (key, csr) = support::pki::pool_key_and_csr(dir.path(), "server", 2048);
    let crt = dir.path().join("server.crt");
    ca.sign(&csr, &crt, 30);
    liftoff::identity::install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt)
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let key = PrivateKeyDer::from_pem_file(&key).unwrap();
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let server = HttpServer::start_tls(2, Arc::new(tls));
    let ca_der: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(ca.cert_path())
        .unwrap()
        .map(|c| c.unwrap())
        .collect();
    let timeouts = liftoff::http::Timeouts {
        connect: Duration::from_secs(5),
        call: Duration::from_secs(10),
    };
    let base = server.https_url("/tls");
    let urls = move |run: &str, seq: u64| -> Result<String, DeliverError> {
        Ok(format!("{base}/{run}/{seq:06}"))
    };
    let run = |agent: ureq::Agent, id: &str| {
        let root = tempfile::tempdir().unwrap();
        let sink = Box::new(PresignedSink::new(agent, Arc::new(urls.clone())));
        let mut opts = options(root.path(), id, 1000);
        opts.retry.attempts = 5;
        let mut p = Pipeline::start(opts, RedactorBuilder::new().build(), sink, None).unwrap();
        p.pump_reader(std::io::Cursor::new(text(50)), &mut NoKill)
            .unwrap();
        p.finish()
    };
    // Trusted through ADDITIONAL_ROOT_CAS: every chunk arrives.
    let trusted = liftoff::http::agent(&Default::default(), &ca_der, timeouts).unwrap();
    let report = run(trusted, "01RUNTLS");
    assert_eq!(report.delivered.error, None);
    assert_eq!(
        objects_in_order(&server, "/tls/01RUNTLS/").concat(),
        text(50)
    );
    // Without the CA, the certificate is refused and nothing is delivered.
    let untrusted = liftoff::http::agent(&Default::default(), &[], timeouts).unwrap();
    let report = run(untrusted, "01RUNNOTLS");
    assert_eq!(report.delivered.chunks, 0);
    let err = report.delivered.error.unwrap();
    assert!(matches!(err, LogError::Delivery(_)), "{err:?}");
    assert!(err.to_string().contains("gave up"), "{err}");
}

#[test]
fn the_agent_uses_the_configured_proxy_except_for_no_proxy_hosts() {
    use liftoff::config::Proxies;
    let server = HttpServer::start(0);
    let timeouts = liftoff::http::Timeouts {
        connect: Duration::from_secs(2),
        call: Duration::from_secs(5),
    };
    // Nothing listens on port 1: going through the proxy fails.
    let proxies = |no_proxy: Vec<String>| Proxies {
        http: Some("http://127.0.0.1:1".into()),
        https: None,
        no_proxy,
    };
    let url = format!("http://localhost:{}/direct", server.addr.port());
    let via_proxy = liftoff::http::agent(&proxies(vec![]), &[], timeouts).unwrap();
    assert!(via_proxy.put(&url).send(&b"x"[..]).is_err());
    let bypass = liftoff::http::agent(&proxies(vec!["localhost".into()]), &[], timeouts).unwrap();
    let answer = bypass.put(&url).send(&b"hello"[..]).unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(server.stored().len(), 1);
    assert_eq!(server.stored()[0].content_length, Some(5));
}

#[test]
fn a_run_restarted_on_a_direct_sink_delivers_its_leftover_chunks_first() {
    use liftoff::logs::sink::FileSink;
    use liftoff::logs::spool::Spool;
    let dir = tempfile::tempdir().unwrap();
    let spool = Spool::open(dir.path(), "01RUNAGAIN").unwrap();
    spool.write(0, b"from the earlier process\n").unwrap();
    let log = dir.path().join("log");
    let seqs = Arc::new(Mutex::new(Vec::new()));
    let s2 = seqs.clone();
    let mut p = Pipeline::start(
        options(dir.path(), "01RUNAGAIN", 1 << 20),
        RedactorBuilder::new().build(),
        Box::new(FileSink::create(&log).unwrap()),
        Some(Box::new(move |c| {
            s2.lock().unwrap().push((c.seq, c.sha256))
        })),
    )
    .unwrap();
    p.line("from this one").unwrap();
    let report = p.finish();
    assert_eq!(report.delivered.error, None);
    assert_eq!(
        std::fs::read_to_string(&log).unwrap(),
        "from the earlier process\nfrom this one\n"
    );
    let seqs = seqs.lock().unwrap().clone();
    assert_eq!(seqs.iter().map(|s| s.0).collect::<Vec<_>>(), vec![0, 1]);
    assert_eq!(seqs[1].1, sha256(b"from this one\n"));
    assert!(!dir.path().join("01RUNAGAIN").exists());
}
