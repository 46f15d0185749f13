//! `liftoff-plane`'s command line: `init`, `serve`, `dev`, and the `pool`,
//! `run` and `worker` commands, which talk to the admin API ([`super::client`]).
//! Every command prints text, or JSON with `--json`; errors go to stderr
//! with the exit code of [`super::Error::exit_code`].
//!
//! Call order: [`main`] parses, then runs one command.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use base64::Engine as _;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use super::client::Client;
use super::{Error, Result};

#[derive(Parser, Debug)]
#[command(name = "liftoff-plane", version = crate::VERSION, about = "The self-hostable reference control plane for liftoff worker pools (docs/plane.md)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where the plane is: `--data DIR` on its host, or `--url` + `--token` + `--ca`.
#[derive(Args, Debug, Clone)]
struct Conn {
    /// The plane's data directory (on the plane's host).
    /// (Or LIFTOFF_PLANE_DATA.)
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// The admin URL of a remote plane (with --token and --ca).
    #[arg(long, global = true)]
    url: Option<String>,
    /// The admin token (a remote plane's DATA/admin-token).
    /// (Or LIFTOFF_PLANE_TOKEN.)
    #[arg(long, global = true)]
    token: Option<String>,
    /// The plane's CA certificate (a remote plane's DATA/ca.crt).
    #[arg(long, global = true)]
    ca: Option<PathBuf>,
    /// Print JSON.
    #[arg(long, global = true)]
    json: bool,
}

impl Conn {
    fn client(&self) -> Result<Client> {
        let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let data = self
            .data
            .clone()
            .or_else(|| env("LIFTOFF_PLANE_DATA").map(PathBuf::from));
        let token = self.token.clone().or_else(|| env("LIFTOFF_PLANE_TOKEN"));
        let data = if self.url.is_some() && self.data.is_none() {
            None
        } else {
            data
        };
        match (&data, &self.url) {
            (Some(d), None) => Client::from_data(d),
            (None, Some(u)) => {
                let token = token.as_deref().ok_or_else(|| {
                    Error::BadInput("--url needs --token (or LIFTOFF_PLANE_TOKEN)".into())
                })?;
                let ca = self.ca.as_ref().ok_or_else(|| {
                    Error::BadInput("--url needs --ca (the plane's ca.crt)".into())
                })?;
                let ca = std::fs::read_to_string(ca).map_err(|e| {
                    Error::BadInput(format!("cannot read --ca {}: {e}", ca.display()))
                })?;
                Client::new(u, token, &ca)
            }
            (Some(_), Some(_)) => Err(Error::BadInput("give --data or --url, not both".into())),
            (None, None) => Err(Error::BadInput(
                "where is the plane? give --data DIR (on its host) or --url URL --token T --ca FILE"
                    .into(),
            )),
        }
    }
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create a data directory: pool CA, server certificate, admin token, config.
    Init {
        #[arg(long)]
        data: PathBuf,
        /// A DNS name or IP address workers reach the plane by (repeatable).
        #[arg(long = "name")]
        names: Vec<String>,
        /// Listen address (default 0.0.0.0:8443).
        #[arg(long)]
        listen: Option<String>,
        /// External https:// URL put into tokens (repeatable, primary first).
        #[arg(long = "url")]
        urls: Vec<String>,
        /// The region name of the first URL (default "local").
        #[arg(long)]
        region: Option<String>,
        /// An existing server certificate (PEM), with --key.
        #[arg(long)]
        cert: Option<PathBuf>,
        #[arg(long)]
        key: Option<PathBuf>,
        /// An MQTT broker for tokens, REGION=mqtts://host:port (repeatable).
        #[arg(long = "broker")]
        brokers: Vec<String>,
        /// Serve Prometheus `/metrics` and `/healthz` over plain HTTP on
        /// ADDR:PORT (e.g. 127.0.0.1:9465; default: not served).
        #[arg(long = "metrics-listen")]
        metrics_listen: Option<String>,
    },
    /// Run the plane.
    Serve {
        #[arg(long)]
        data: PathBuf,
    },
    /// The whole system on this machine: plane, pool, one worker, one run.
    Dev {
        #[arg(long)]
        spec: PathBuf,
        #[arg(long)]
        source: Option<PathBuf>,
    },
    /// Worker pools.
    Pool {
        #[command(subcommand)]
        cmd: PoolCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Runs.
    Run {
        #[command(subcommand)]
        cmd: RunCmd,
        #[command(flatten)]
        conn: Conn,
    },
    /// Workers.
    Worker {
        #[command(subcommand)]
        cmd: WorkerCmd,
        #[command(flatten)]
        conn: Conn,
    },
}

#[derive(Subcommand, Debug)]
enum PoolCmd {
    /// Sign a CSR and print the pool token.
    Create {
        name: String,
        #[arg(long)]
        csr: PathBuf,
    },
    /// New certificate from a new CSR; the old one is revoked (its workers exit 78).
    Reset {
        name: String,
        #[arg(long)]
        csr: PathBuf,
    },
    /// Send the self-destruct to every worker of the pool.
    Cycle {
        name: String,
    },
    List,
    Show {
        name: String,
    },
}

#[derive(Subcommand, Debug)]
enum RunCmd {
    /// Queue a run.
    Submit {
        pool: String,
        #[arg(long)]
        spec: PathBuf,
        /// A directory or a .tar.gz served to the worker as the run's source.
        #[arg(long)]
        source: Option<PathBuf>,
        /// The stack (default: the spec's stack.id, else "default").
        #[arg(long)]
        stack: Option<String>,
        /// Submitting twice with the same key queues one run.
        #[arg(long)]
        idempotency_key: Option<String>,
    },
    /// In-progress runs first, then the queue with why each waits.
    List {
        /// Finished runs too.
        #[arg(long)]
        all: bool,
    },
    Show {
        run: String,
    },
    /// The run's log as the worker uploaded it.
    Logs {
        run: String,
        #[arg(long, short)]
        follow: bool,
    },
    Cancel {
        run: String,
    },
}

#[derive(Subcommand, Debug)]
enum WorkerCmd {
    List,
    Drain { id: String },
    Undrain { id: String },
    Cycle { id: String },
}

/// Runs the command line; returns the exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("liftoff-plane: {e}");
            e.exit_code()
        }
    }
}

fn print(json_out: bool, v: &Value, text: impl FnOnce(&Value) -> String) {
    let out = if json_out {
        serde_json::to_string_pretty(v).unwrap_or_default()
    } else {
        text(v)
    };
    println!("{out}");
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::BadInput(format!("cannot read {what} {}: {e}", path.display())))
}

fn run(cli: Cli) -> Result<i32> {
    match cli.cmd {
        Cmd::Init {
            data,
            names,
            listen,
            urls,
            region,
            cert,
            key,
            brokers,
            metrics_listen,
        } => {
            let brokers = brokers
                .iter()
                .map(|b| {
                    b.split_once('=')
                        .map(|(r, u)| super::config::BrokerUrl {
                            region: r.into(),
                            url: u.into(),
                        })
                        .ok_or_else(|| {
                            Error::BadInput(format!(
                                "--broker {b:?} is not REGION=mqtts://host:port"
                            ))
                        })
                })
                .collect::<Result<Vec<_>>>()?;
            let opts = super::config::InitOptions {
                names,
                listen,
                urls,
                region,
                cert,
                key,
                brokers,
                metrics_listen,
            };
            let d = super::config::init(&data, &opts)?;
            println!(
                "initialised {}\n  listen:    {}\n  endpoints: {}\n  admin token in {}\nstart it with: liftoff-plane serve --data {}",
                data.display(),
                d.config.listen,
                d.config
                    .endpoints
                    .iter()
                    .map(|e| format!("{} {}", e.region, e.url))
                    .collect::<Vec<_>>()
                    .join(", "),
                data.join("admin-token").display(),
                data.display()
            );
            Ok(0)
        }
        Cmd::Serve { data } => serve(&data),
        Cmd::Dev { spec, source } => super::dev::run(&spec, source.as_deref()),
        Cmd::Pool { cmd, conn } => pool(cmd, &conn),
        Cmd::Run { cmd, conn } => runs(cmd, &conn),
        Cmd::Worker { cmd, conn } => worker(cmd, &conn),
    }
}

/// Opens the data directory, the store and the listener; serves until
/// SIGTERM/SIGINT.
pub fn serve(data: &Path) -> Result<i32> {
    crate::launcher_log::init(
        crate::config::LogFormat::Text,
        &std::env::var("LIFTOFF_PLANE_LOG").unwrap_or_else(|_| "info".into()),
    );
    let plane = open(data)?;
    let listener = super::server::bind(&plane.data.config.listen)?;
    if let Some(addr) = plane.data.config.metrics_listen.clone() {
        super::metrics::start(plane.clone(), &addr)?;
        tracing::info!(metrics = %addr, "liftoff-plane metrics served");
    }
    tracing::info!(listen = %plane.data.config.listen, "liftoff-plane serving");
    let notifier = crate::notify::Notifier::from_env();
    notifier.ready();
    notifier.status("serving");
    let stop = plane.clone();
    let mut signals = signal_hook::iterator::Signals::new([libc::SIGTERM, libc::SIGINT])
        .map_err(|e| Error::Config(format!("cannot handle signals: {e}")))?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            stop.stopping
                .store(true, std::sync::atomic::Ordering::Relaxed);
            notifier.stopping();
            tracing::info!("liftoff-plane stopping");
            // Every state change is committed before it is answered.
            std::process::exit(0);
        }
    });
    super::server::serve(plane, listener)?;
    Ok(0)
}

/// The plane of a data directory, its store opened.
pub fn open(data: &Path) -> Result<Arc<super::dispatch::Plane>> {
    let d = super::config::Data::open(data)?;
    let store = Arc::new(super::store::Sqlite::open(&d.db_path())?);
    super::dispatch::Plane::new(d, store)
}

fn pool(cmd: PoolCmd, conn: &Conn) -> Result<i32> {
    let c = conn.client()?;
    let token_text = |v: &Value| {
        format!(
            "pool {} ({})\ntoken:\n{}",
            v["pool"]["name"].as_str().unwrap_or(""),
            v["pool"]["id"].as_str().unwrap_or(""),
            v["token"].as_str().unwrap_or("")
        )
    };
    match cmd {
        PoolCmd::Create { name, csr } => {
            let csr = String::from_utf8_lossy(&read_file(&csr, "the CSR")?).into_owned();
            let v = c.post("pools", &json!({"name": name, "csr": csr}))?;
            print(conn.json, &v, token_text);
        }
        PoolCmd::Reset { name, csr } => {
            let csr = String::from_utf8_lossy(&read_file(&csr, "the CSR")?).into_owned();
            let v = c.post(&format!("pools/{name}/reset"), &json!({"csr": csr}))?;
            print(conn.json, &v, token_text);
        }
        PoolCmd::Cycle { name } => {
            let v = c.post(&format!("pools/{name}/cycle"), &json!({}))?;
            print(conn.json, &v, |v| {
                format!(
                    "cycling {} worker(s)",
                    v["cycled"].as_array().map_or(0, Vec::len)
                )
            });
        }
        PoolCmd::List => {
            let v = c.get("pools")?;
            print(conn.json, &v, |v| {
                let mut s = format!(
                    "{:<20} {:<26} {:>7} {:>7} {:>7}",
                    "NAME", "ID", "WORKERS", "RUNNING", "QUEUED"
                );
                for p in v["pools"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "\n{:<20} {:<26} {:>7} {:>7} {:>7}",
                        p["name"].as_str().unwrap_or(""),
                        p["id"].as_str().unwrap_or(""),
                        p["workers"].to_string(),
                        p["running"].to_string(),
                        p["queued"].to_string()
                    ));
                }
                s
            });
        }
        PoolCmd::Show { name } => {
            let v = c.get(&format!("pools/{name}"))?;
            print(conn.json, &v, |v| {
                let mut s = format!(
                    "pool {} ({})\nused by: {}\nworkers:",
                    v["pool"]["name"].as_str().unwrap_or(""),
                    v["pool"]["id"].as_str().unwrap_or(""),
                    v["used_by"]
                        .as_array()
                        .map(|a| a
                            .iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                );
                for w in v["workers"].as_array().into_iter().flatten() {
                    s.push_str(&format!("\n  {}", worker_line(w)));
                }
                s.push_str("\nqueue:");
                for r in v["queue"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "\n  {} {} {} {}",
                        r["id"].as_str().unwrap_or(""),
                        r["phase"].as_str().unwrap_or(""),
                        r["run_type"].as_str().unwrap_or(""),
                        r["stack"].as_str().unwrap_or("")
                    ));
                }
                s
            });
        }
    }
    Ok(0)
}

fn ago(ms: &Value) -> String {
    match ms.as_u64() {
        Some(0) | None => "-".into(),
        Some(t) => format!("{}s ago", super::now_ms().saturating_sub(t) / 1000),
    }
}

fn worker_line(w: &Value) -> String {
    let health = w["health"]
        .as_array()
        .map(|h| {
            h.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_default();
    format!(
        "{:<26} {:<10} {:<9} {:<12} {:<5} {:<12} {}{}",
        w["id"].as_str().unwrap_or(""),
        w["pool_id"]
            .as_str()
            .unwrap_or("")
            .chars()
            .take(10)
            .collect::<String>(),
        w["state"].as_str().unwrap_or(""),
        w["region"].as_str().unwrap_or(""),
        w["transport"].as_str().unwrap_or(""),
        w["version"]
            .as_str()
            .unwrap_or("")
            .split(' ')
            .next()
            .unwrap_or(""),
        ago(&w["last_seen_ms"]),
        if health.is_empty() {
            String::new()
        } else {
            format!("  [{health}]")
        }
    )
}

/// A directory packed as tar.gz, or a .tar.gz file as it is.
fn source_archive(path: &Path) -> Result<Vec<u8>> {
    if path.is_dir() {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut tar = tar::Builder::new(gz);
        tar.follow_symlinks(false);
        tar.append_dir_all(".", path).map_err(|e| {
            Error::BadInput(format!("cannot pack --source {}: {e}", path.display()))
        })?;
        let gz = tar.into_inner().map_err(|e| {
            Error::BadInput(format!("cannot pack --source {}: {e}", path.display()))
        })?;
        return gz
            .finish()
            .map_err(|e| Error::BadInput(format!("cannot pack --source {}: {e}", path.display())));
    }
    let bytes = read_file(path, "--source")?;
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Err(Error::BadInput(format!(
            "--source {} is neither a directory nor a .tar.gz (no gzip header)",
            path.display()
        )));
    }
    Ok(bytes)
}

/// The body of a `POST runs`.
pub fn submit_body(
    pool: &str,
    spec: &Path,
    source: Option<&Path>,
    stack: Option<&str>,
    key: Option<&str>,
) -> Result<Value> {
    let spec = read_file(spec, "the run spec")?;
    let spec =
        String::from_utf8(spec).map_err(|_| Error::BadInput("the run spec is not UTF-8".into()))?;
    let mut body = json!({"pool": pool, "spec": spec});
    if let Some(s) = source {
        body["source_b64"] =
            json!(base64::engine::general_purpose::STANDARD.encode(source_archive(s)?));
    }
    if let Some(s) = stack {
        body["stack"] = json!(s);
    }
    if let Some(k) = key {
        body["idempotency_key"] = json!(k);
    }
    Ok(body)
}

fn run_line(r: &Value) -> String {
    let wait = r["waiting"].as_str().unwrap_or("");
    let reason = r["reason"].as_str().unwrap_or("");
    format!(
        "{:<26} {:<9} {:<8} {:<16} {:<26}{}",
        r["id"].as_str().unwrap_or(""),
        r["phase"].as_str().unwrap_or(""),
        r["run_type"].as_str().unwrap_or(""),
        r["stack"].as_str().unwrap_or(""),
        r["worker_id"].as_str().unwrap_or(""),
        if !wait.is_empty() {
            format!("  ({wait})")
        } else if !reason.is_empty() {
            format!("  ({reason})")
        } else {
            String::new()
        }
    )
}

fn final_phase(p: &str) -> bool {
    matches!(p, "finished" | "failed" | "rejected" | "cancelled")
}

/// Prints a run's log to stdout; with `follow`, until the run is over and
/// its log complete. Returns the run's final JSON when following.
pub fn print_logs(c: &Client, run: &str, follow: bool) -> Result<Option<Value>> {
    let mut next = 0u64;
    let mut out = std::io::stdout();
    let mut settle = 0;
    loop {
        let (bytes, headers) = c.get_bytes(&format!("runs/{run}/logs?from={next}"))?;
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let _ = out.write_all(&bytes);
        let _ = out.flush();
        next = header("x-next-chunk").parse().unwrap_or(next);
        if !follow {
            return Ok(None);
        }
        if final_phase(&header("x-run-phase")) {
            let total: u64 = header("x-chunks").parse().unwrap_or(0);
            // The last chunks' events may trail the run's end a little.
            if next >= total {
                settle += 1;
                if settle > 3 {
                    return c.get(&format!("runs/{run}")).map(Some);
                }
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(if settle > 0 {
            150
        } else {
            50
        }));
    }
}

fn runs(cmd: RunCmd, conn: &Conn) -> Result<i32> {
    let c = conn.client()?;
    match cmd {
        RunCmd::Submit {
            pool,
            spec,
            source,
            stack,
            idempotency_key,
        } => {
            let body = submit_body(
                &pool,
                &spec,
                source.as_deref(),
                stack.as_deref(),
                idempotency_key.as_deref(),
            )?;
            let v = c.post("runs", &body)?;
            print(conn.json, &v, |v| {
                format!(
                    "{} run {} ({}, stack {})",
                    if v["created"] == true {
                        "queued"
                    } else {
                        "already submitted:"
                    },
                    v["id"].as_str().unwrap_or(""),
                    v["run_type"].as_str().unwrap_or(""),
                    v["stack"].as_str().unwrap_or("")
                )
            });
        }
        RunCmd::List { all } => {
            let v = c.get(if all { "runs?all=1" } else { "runs" })?;
            print(conn.json, &v, |v| {
                let mut s = format!(
                    "{:<26} {:<9} {:<8} {:<16} {:<26}",
                    "RUN", "PHASE", "TYPE", "STACK", "WORKER"
                );
                for r in v["runs"].as_array().into_iter().flatten() {
                    s.push_str(&format!("\n{}", run_line(r)));
                }
                s
            });
        }
        RunCmd::Show { run } => {
            let v = c.get(&format!("runs/{run}"))?;
            print(conn.json, &v, |v| {
                let mut s = format!(
                    "run {}\n  phase:     {}{}\n  type:      {}\n  stack:     {}\n  worker:    {}\n  exit code: {}\n  submitted: {}\n  started:   {}\n  ended:     {}",
                    v["id"].as_str().unwrap_or(""),
                    v["phase"].as_str().unwrap_or(""),
                    match (v["waiting"].as_str(), v["reason"].as_str()) {
                        (Some(w), _) if !w.is_empty() => format!(" ({w})"),
                        (_, Some(r)) if !r.is_empty() => format!(" ({r})"),
                        _ => String::new(),
                    },
                    v["run_type"].as_str().unwrap_or(""),
                    v["stack"].as_str().unwrap_or(""),
                    v["worker_id"].as_str().unwrap_or("-"),
                    v["exit_code"]
                        .as_i64()
                        .map_or("-".into(), |c| c.to_string()),
                    ago(&v["submitted_ms"]),
                    ago(&v["started_ms"]),
                    ago(&v["ended_ms"]),
                );
                for st in v["steps"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "\n  step {:<20} exit {:<4} {} ms",
                        st["name"].as_str().unwrap_or(""),
                        st["exit_code"],
                        st["duration_ms"]
                    ));
                }
                s
            });
        }
        RunCmd::Logs { run, follow } => {
            if let Some(v) = print_logs(&c, &run, follow)? {
                return Ok(exit_of(&v));
            }
        }
        RunCmd::Cancel { run } => {
            let v = c.post(&format!("runs/{run}/cancel"), &json!({}))?;
            print(conn.json, &v, |v| {
                format!(
                    "run {}: {}",
                    v["id"].as_str().unwrap_or(""),
                    v["phase"].as_str().unwrap_or("")
                )
            });
        }
    }
    Ok(0)
}

/// The exit status that stands for a run: its exit code when it finished,
/// 1 when it failed, was rejected or cancelled.
pub fn exit_of(run: &Value) -> i32 {
    match run["phase"].as_str() {
        Some("finished") => run["exit_code"].as_i64().unwrap_or(1) as i32,
        _ => 1,
    }
}

fn worker(cmd: WorkerCmd, conn: &Conn) -> Result<i32> {
    let c = conn.client()?;
    let (action, id) = match cmd {
        WorkerCmd::List => {
            let v = c.get("workers")?;
            print(conn.json, &v, |v| {
                let mut s = format!(
                    "{:<26} {:<10} {:<9} {:<12} {:<5} {:<12} LAST SEEN",
                    "ID", "POOL", "STATE", "REGION", "VIA", "VERSION"
                );
                for w in v["workers"].as_array().into_iter().flatten() {
                    s.push_str(&format!("\n{}", worker_line(w)));
                }
                s
            });
            return Ok(0);
        }
        WorkerCmd::Drain { id } => ("drain", id),
        WorkerCmd::Undrain { id } => ("undrain", id),
        WorkerCmd::Cycle { id } => ("cycle", id),
    };
    let v = c.post(&format!("workers/{id}/{action}"), &json!({}))?;
    print(conn.json, &v, |v| {
        format!("worker {}: {action} sent", v["id"].as_str().unwrap_or(""))
    });
    Ok(0)
}
