//! The launcher's metrics and its three answers: `/healthz` (the worker loop
//! and the link thread are alive), `/readyz` (connected to a region and
//! taking runs, else 503 and why) and `/metrics`.
//!
//! Call order: hooks record into [`LAUNCHER`] from the worker loop
//! ([`Launcher::worker_beat`], [`Launcher::worker_state`], run results), the
//! link thread ([`Launcher::link_beat`], [`Launcher::link_up`],
//! [`Launcher::link_down`], commands, the outbox), the run executor
//! (sandbox start-up) and the log pipeline (bytes, retries, spool); the
//! listener calls [`handler`]'s closure per request, which only reads.
//! Every label value comes from a fixed set or from the token's regions.
//!
//! Caches: each cache is a [`CacheMetrics`] listed in [`CACHES`]; a new
//! cache (images, tools) adds one static and one line there.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::registry::{Counter, Exposition, Gauge, Histogram, Kind};
use super::server::{Handler, Response};

/// The worker loop must have turned within this long for `/healthz`.
pub const WORKER_STALE: Duration = Duration::from_secs(30);
/// The link thread must have turned within this long for `/healthz`
/// (a connect attempt may block up to its timeouts).
pub const LINK_STALE: Duration = Duration::from_secs(90);

/// Why the worker does not take runs (`/readyz`), besides the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum NotReady {
    None = 0,
    Drained = 1,
    Leaving = 2,
    Disk = 3,
    Reset = 4,
}

/// Worker states, as the `state` label says them.
pub const STATES: [&str; 3] = ["idle", "busy", "drained"];
/// Command types counted; anything else is `other`.
pub const COMMANDS: [&str; 8] = [
    "assign", "cancel", "drain", "cycle", "uploads", "ack", "invalid", "other",
];
/// Run results.
pub const RESULTS: [&str; 3] = ["finished", "failed", "rejected"];
/// Exit code classes of finished runs.
pub const EXIT_CLASSES: [&str; 4] = ["success", "failure", "not_executable", "signal"];

/// One cache's figures.
#[derive(Debug)]
pub struct CacheMetrics {
    pub size_bytes: Gauge,
    pub hits: Counter,
    pub misses: Counter,
}

impl CacheMetrics {
    pub const fn new() -> CacheMetrics {
        CacheMetrics {
            size_bytes: Gauge::unknown(),
            hits: Counter::new(),
            misses: Counter::new(),
        }
    }
}

impl Default for CacheMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The provider cache (`LIFTOFF_PROVIDER_CACHE_DIR`).
pub static PROVIDER_CACHE: CacheMetrics = CacheMetrics::new();

/// The runner image cache (`LIFTOFF_IMAGE_CACHE_DIR`): a hit is an image
/// a run found unpacked, a miss one it had to pull.
pub static IMAGE_CACHE: CacheMetrics = CacheMetrics::new();

/// The OpenTofu/Terraform cache (`LIFTOFF_TOOLS_CACHE_DIR`): a hit is a
/// version a run found installed, a miss one it had to download.
pub static TOOL_CACHE: CacheMetrics = CacheMetrics::new();

/// Every cache, by its `cache` label.
pub static CACHES: &[(&str, &CacheMetrics)] = &[
    ("provider", &PROVIDER_CACHE),
    ("image", &IMAGE_CACHE),
    ("tool", &TOOL_CACHE),
];

/// Host figures, as the worker's sampler last saw them.
#[derive(Debug, Default, Clone)]
pub struct Host {
    pub cpu_steal_ratio: Option<f64>,
    pub cpu_pressure_ratio: Option<f64>,
    pub memory_pressure_ratio: Option<f64>,
    pub io_pressure_ratio: Option<f64>,
    pub memory_available_bytes: Option<f64>,
    /// (disk name, used fraction).
    pub disk_used_ratio: Vec<(String, f64)>,
}

/// Everything the launcher counts. One static: [`LAUNCHER`].
#[derive(Debug)]
pub struct Launcher {
    worker_beat_ms: AtomicU64,
    link_beat_ms: AtomicU64,
    state: AtomicU8,
    not_ready: AtomicU8,
    pub slots: Gauge,
    pub busy_slots: Gauge,
    /// (region names in token order, transport name).
    link: Mutex<(Vec<String>, &'static str)>,
    connected: AtomicI64,
    last_region: AtomicI64,
    pub connects: Counter,
    pub connect_failures: Counter,
    pub reconnects: Counter,
    pub failovers: Counter,
    pub failbacks: Counter,
    pub outbox_pending: Gauge,
    outbox_oldest_ms: AtomicU64,
    commands: [Counter; 8],
    runs: [Counter; 3],
    exits: [Counter; 4],
    pub run_duration: Histogram<14>,
    pub sandbox_start: Histogram<12>,
    pub log_uploaded_bytes: Counter,
    pub log_upload_retries: Counter,
    pub spool_bytes: Gauge,
    host: Mutex<Host>,
}

/// The launcher's metrics.
pub static LAUNCHER: Launcher = Launcher::new();

fn epoch() -> &'static Instant {
    static E: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    E.get_or_init(Instant::now)
}

/// Milliseconds since the first call (never 0 after it: 0 means "never").
fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64 + 1
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Default for Launcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Launcher {
    pub const fn new() -> Launcher {
        Launcher {
            worker_beat_ms: AtomicU64::new(0),
            link_beat_ms: AtomicU64::new(0),
            state: AtomicU8::new(0),
            not_ready: AtomicU8::new(0),
            slots: Gauge::new(),
            busy_slots: Gauge::new(),
            link: Mutex::new((Vec::new(), "")),
            connected: AtomicI64::new(-1),
            last_region: AtomicI64::new(-1),
            connects: Counter::new(),
            connect_failures: Counter::new(),
            reconnects: Counter::new(),
            failovers: Counter::new(),
            failbacks: Counter::new(),
            outbox_pending: Gauge::new(),
            outbox_oldest_ms: AtomicU64::new(0),
            commands: [const { Counter::new() }; 8],
            runs: [const { Counter::new() }; 3],
            exits: [const { Counter::new() }; 4],
            run_duration: Histogram::new([
                1.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
                14400.0, 43200.0,
            ]),
            sandbox_start: Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            log_uploaded_bytes: Counter::new(),
            log_upload_retries: Counter::new(),
            spool_bytes: Gauge::new(),
            host: Mutex::new(Host {
                cpu_steal_ratio: None,
                cpu_pressure_ratio: None,
                memory_pressure_ratio: None,
                io_pressure_ratio: None,
                memory_available_bytes: None,
                disk_used_ratio: Vec::new(),
            }),
        }
    }

    /// Records the slots and, when `addr` is set, serves `/healthz`,
    /// `/readyz` and `/metrics` there from a thread of their own.
    pub fn start(
        &'static self,
        addr: Option<std::net::SocketAddr>,
        slots: u16,
    ) -> Result<(), super::server::Error> {
        self.slots.set(f64::from(slots));
        epoch();
        if let Some(addr) = addr {
            let listener = super::server::bind(addr)?;
            super::server::serve(listener, "liftoff-metrics", handler())?;
            tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
        }
        Ok(())
    }

    /// The worker loop turned.
    pub fn worker_beat(&self) {
        self.worker_beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The link thread turned.
    pub fn link_beat(&self) {
        self.link_beat_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// The worker's state (index into [`STATES`]), busy slots, and why it
    /// does not take runs.
    pub fn worker_state(&self, state: usize, busy: usize, not_ready: NotReady) {
        self.state.store(state.min(2) as u8, Ordering::Relaxed);
        self.busy_slots.set(busy as f64);
        // A pool reset stays: the worker is leaving with exit 78.
        if self.not_ready.load(Ordering::Relaxed) != NotReady::Reset as u8 {
            self.not_ready.store(not_ready as u8, Ordering::Relaxed);
        }
    }

    /// The regions, in the token's order (the session calls it at start).
    pub fn link_regions(&self, regions: &[String]) {
        lock(&self.link).0 = regions.to_vec();
    }

    /// The transport's name (`mqtt`, `poll`).
    pub fn link_transport(&self, transport: &'static str) {
        lock(&self.link).1 = transport;
    }

    /// Connected to region `index` (0: the primary).
    pub fn link_up(&self, index: usize) {
        let index = index as i64;
        let last = self.last_region.swap(index, Ordering::Relaxed);
        self.connected.store(index, Ordering::Relaxed);
        self.connects.inc();
        if last >= 0 {
            self.reconnects.inc();
        }
        if index != 0 && last != index {
            self.failovers.inc();
        }
    }

    /// The connection is gone (lost, closed, or left to fail back).
    pub fn link_down(&self) {
        self.connected.store(-1, Ordering::Relaxed);
    }

    /// Connected to some region now.
    pub fn link_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed) >= 0
    }

    /// The outbox holds `pending` events; the oldest was made at
    /// `oldest_ms` (ms since the epoch), if any.
    pub fn outbox(&self, pending: usize, oldest_ms: Option<u64>) {
        self.outbox_pending.set(pending as f64);
        self.outbox_oldest_ms
            .store(oldest_ms.unwrap_or(0), Ordering::Relaxed);
    }

    /// A command of type `kind` (see [`COMMANDS`]) arrived.
    pub fn command(&self, kind: &str) {
        let i = COMMANDS.iter().position(|c| *c == kind).unwrap_or(7);
        self.commands[i].inc();
    }

    pub fn commands(&self, kind: &str) -> u64 {
        COMMANDS
            .iter()
            .position(|c| *c == kind)
            .map_or(0, |i| self.commands[i].get())
    }

    /// A run ended (`result` in [`RESULTS`]); `exit_code` for finished
    /// runs; `took` from acceptance to the end.
    pub fn run_ended(&self, result: &str, exit_code: Option<i32>, took: Option<Duration>) {
        if let Some(i) = RESULTS.iter().position(|r| *r == result) {
            self.runs[i].inc();
        }
        if let Some(code) = exit_code {
            let class = match code {
                0 => 0,
                1..=125 => 1,
                126 | 127 => 2,
                _ => 3,
            };
            self.exits[class].inc();
        }
        if let Some(d) = took {
            self.run_duration.observe_duration(d);
        }
    }

    pub fn runs(&self, result: &str) -> u64 {
        RESULTS
            .iter()
            .position(|r| *r == result)
            .map_or(0, |i| self.runs[i].get())
    }

    /// The host sampler's latest figures.
    pub fn host(&self, host: Host) {
        *lock(&self.host) = host;
    }

    /// `/healthz`: 200 while the worker loop and the link thread turn.
    pub fn health(&self) -> Response {
        let now = now_ms();
        let age = |beat: &AtomicU64| {
            let b = beat.load(Ordering::Relaxed);
            (b != 0).then(|| Duration::from_millis(now.saturating_sub(b)))
        };
        let problem = match (age(&self.worker_beat_ms), age(&self.link_beat_ms)) {
            (None, _) => Some("starting: the worker loop has not run yet".to_string()),
            (_, None) => Some("starting: the link thread has not run yet".to_string()),
            (Some(w), _) if w > WORKER_STALE => Some(format!(
                "the worker loop has not turned for {} s",
                w.as_secs()
            )),
            (_, Some(l)) if l > LINK_STALE => Some(format!(
                "the link thread has not turned for {} s",
                l.as_secs()
            )),
            _ => None,
        };
        match problem {
            None => Response::text(200, "ok\n"),
            Some(p) => Response::text(503, format!("unhealthy: {p}\n")),
        }
    }

    /// Why the worker is not ready (`None`: ready).
    pub fn not_ready_reason(&self) -> Option<&'static str> {
        if self.health().status != 200 {
            return Some("not healthy (see /healthz)");
        }
        match self.not_ready.load(Ordering::Relaxed) {
            1 => return Some("drained: the control plane asked this worker to drain"),
            2 => return Some("leaving: the launcher is shutting down or cycling"),
            3 => {
                return Some(
                    "disk threshold: disk usage is over SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD",
                );
            }
            4 => return Some("pool reset: the control plane rejected this pool's certificate"),
            _ => {}
        }
        if !self.link_connected() {
            return Some("no link: not connected to any region");
        }
        None
    }

    /// `/readyz`: 200 when connected and taking runs, else 503 and why.
    pub fn ready(&self) -> Response {
        match self.not_ready_reason() {
            None => Response::text(200, "ready\n"),
            Some(why) => Response::text(503, format!("not ready: {why}\n")),
        }
    }

    /// `/metrics`: the exposition.
    pub fn render(&self) -> String {
        let mut e = Exposition::new();
        let (c, g) = (Kind::Counter, Kind::Gauge);
        e.family(
            "liftoff_build_info",
            g,
            "Always 1; the labels name the build.",
        );
        e.sample(
            "liftoff_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", env!("LIFTOFF_GIT_COMMIT")),
                ("target", env!("LIFTOFF_BUILD_TARGET")),
            ],
            1.0,
        );
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_sub(epoch().elapsed());
        e.single(
            "liftoff_process_start_time_seconds",
            g,
            "When the launcher started, in seconds since the epoch.",
            started.as_secs() as f64,
        );
        let up = |ok: bool| if ok { 1.0 } else { 0.0 };
        e.single(
            "liftoff_healthy",
            g,
            "1 while the worker loop and the link thread are alive (/healthz).",
            up(self.health().status == 200),
        );
        e.single(
            "liftoff_ready",
            g,
            "1 while connected to a region and taking runs (/readyz).",
            up(self.not_ready_reason().is_none()),
        );
        e.family(
            "liftoff_worker_state",
            g,
            "1 for the worker's current state (idle, busy or drained).",
        );
        let state = usize::from(self.state.load(Ordering::Relaxed));
        for (i, s) in STATES.iter().enumerate() {
            e.sample("liftoff_worker_state", &[("state", s)], up(i == state));
        }
        e.single(
            "liftoff_slots",
            g,
            "Runs this worker takes at once (LIFTOFF_WORKERS).",
            self.slots.get(),
        );
        e.single(
            "liftoff_slots_busy",
            g,
            "Slots running a run now.",
            self.busy_slots.get(),
        );
        {
            let link = lock(&self.link);
            let connected = self.connected.load(Ordering::Relaxed);
            let current = usize::try_from(connected)
                .ok()
                .and_then(|i| link.0.get(i))
                .map(String::as_str);
            e.family(
                "liftoff_link_connected",
                g,
                "1 for the region the link is connected to, by region and transport.",
            );
            let mut seen: Vec<&str> = Vec::new();
            for r in &link.0 {
                if seen.contains(&r.as_str()) {
                    continue;
                }
                seen.push(r);
                let labels = [("region", r.as_str()), ("transport", link.1)];
                e.sample("liftoff_link_connected", &labels, up(current == Some(r)));
            }
        }
        for (name, help, v) in [
            (
                "liftoff_link_connects_total",
                "Connections made to any region.",
                &self.connects,
            ),
            (
                "liftoff_link_connect_failures_total",
                "Connection attempts that failed.",
                &self.connect_failures,
            ),
            (
                "liftoff_link_reconnects_total",
                "Connections made after the first one.",
                &self.reconnects,
            ),
            (
                "liftoff_link_failovers_total",
                "Connections to a secondary region other than the previous connection's.",
                &self.failovers,
            ),
            (
                "liftoff_link_failbacks_total",
                "Moves from a secondary region back to the primary once it was healthy.",
                &self.failbacks,
            ),
        ] {
            e.single(name, c, help, v.get() as f64);
        }
        e.single(
            "liftoff_outbox_pending_events",
            g,
            "Durable events waiting for the control plane's acknowledgement.",
            self.outbox_pending.get(),
        );
        let oldest = self.outbox_oldest_ms.load(Ordering::Relaxed);
        let now_epoch_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        e.single(
            "liftoff_outbox_oldest_event_age_seconds",
            g,
            "Age of the oldest unacknowledged event (0 when none).",
            if oldest == 0 {
                0.0
            } else {
                now_epoch_ms.saturating_sub(oldest) as f64 / 1000.0
            },
        );
        e.family(
            "liftoff_commands_received_total",
            c,
            "Commands received from the control plane, by type (invalid: refused payloads).",
        );
        for (i, t) in COMMANDS.iter().enumerate() {
            let v = self.commands[i].get() as f64;
            e.sample("liftoff_commands_received_total", &[("type", t)], v);
        }
        e.family(
            "liftoff_runs_total",
            c,
            "Runs that ended, by result (finished, failed, rejected).",
        );
        for (i, r) in RESULTS.iter().enumerate() {
            let v = self.runs[i].get() as f64;
            e.sample("liftoff_runs_total", &[("result", r)], v);
        }
        e.family(
            "liftoff_run_exit_codes_total",
            c,
            "Finished runs by exit code class: success (0), failure (1-125), not_executable (126, 127), signal (128 and above).",
        );
        for (i, r) in EXIT_CLASSES.iter().enumerate() {
            let v = self.exits[i].get() as f64;
            e.sample("liftoff_run_exit_codes_total", &[("class", r)], v);
        }
        e.histogram(
            "liftoff_run_duration_seconds",
            "Time from accepting a run to its end.",
            &self.run_duration,
        );
        e.histogram(
            "liftoff_sandbox_start_seconds",
            "Time to start one step's sandbox (namespaces, mounts, seccomp, exec).",
            &self.sandbox_start,
        );
        e.single(
            "liftoff_log_uploaded_bytes_total",
            c,
            "Run log bytes delivered from the spool.",
            self.log_uploaded_bytes.get() as f64,
        );
        e.single(
            "liftoff_log_upload_retries_total",
            c,
            "Log chunk deliveries tried again after a failure.",
            self.log_upload_retries.get() as f64,
        );
        e.single(
            "liftoff_log_spool_bytes",
            g,
            "Run log bytes this launcher spooled that are not delivered yet.",
            self.spool_bytes.get(),
        );
        let host = lock(&self.host).clone();
        for (name, help, v) in [
            (
                "liftoff_host_cpu_steal_ratio",
                "CPU time stolen by the hypervisor over the last minute (0-1).",
                host.cpu_steal_ratio,
            ),
            (
                "liftoff_host_cpu_pressure_ratio",
                "CPU pressure (PSI some avg60, 0-1).",
                host.cpu_pressure_ratio,
            ),
            (
                "liftoff_host_memory_pressure_ratio",
                "Memory pressure (PSI some avg60, 0-1).",
                host.memory_pressure_ratio,
            ),
            (
                "liftoff_host_io_pressure_ratio",
                "I/O pressure (PSI some avg60, 0-1).",
                host.io_pressure_ratio,
            ),
            (
                "liftoff_host_memory_available_bytes",
                "Memory available for new work (MemAvailable).",
                host.memory_available_bytes,
            ),
        ] {
            if let Some(v) = v {
                e.single(name, g, help, v);
            }
        }
        if !host.disk_used_ratio.is_empty() {
            e.family(
                "liftoff_host_disk_used_ratio",
                g,
                "Used fraction of the filesystem holding the state directory (state) and others, by disk.",
            );
            for (disk, v) in &host.disk_used_ratio {
                e.sample("liftoff_host_disk_used_ratio", &[("disk", disk)], *v);
            }
        }
        e.family("liftoff_cache_size_bytes", g, "Bytes held by each cache.");
        for (name, m) in CACHES {
            e.sample(
                "liftoff_cache_size_bytes",
                &[("cache", name)],
                m.size_bytes.get(),
            );
        }
        e.family(
            "liftoff_cache_hits_total",
            c,
            "Items runs found in each cache.",
        );
        for (name, m) in CACHES {
            e.sample(
                "liftoff_cache_hits_total",
                &[("cache", name)],
                m.hits.get() as f64,
            );
        }
        e.family(
            "liftoff_cache_misses_total",
            c,
            "Items runs had to fetch because each cache lacked them.",
        );
        for (name, m) in CACHES {
            e.sample(
                "liftoff_cache_misses_total",
                &[("cache", name)],
                m.misses.get() as f64,
            );
        }
        e.finish()
    }
}

/// The listener's handler for the launcher.
pub fn handler() -> Handler {
    std::sync::Arc::new(|path: &str| match path {
        "/healthz" => LAUNCHER.health(),
        "/readyz" => LAUNCHER.ready(),
        "/metrics" => Response {
            status: 200,
            content_type: super::registry::CONTENT_TYPE,
            body: LAUNCHER.render(),
        },
        _ => Response::text(404, "not found: try /healthz, /readyz or /metrics\n"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_worker_and_the_link() {
        let l = Launcher::new();
        assert_eq!(l.health().status, 503, "before the loops ran");
        l.worker_beat();
        l.link_beat();
        assert_eq!(l.health().status, 200);
        assert!(l.ready().body.contains("no link"));
        l.link_regions(&["east".into(), "west".into()]);
        l.link_transport("mqtt");
        l.link_up(1);
        assert_eq!(l.ready().status, 200);
        assert_eq!((l.failovers.get(), l.reconnects.get()), (1, 0));
        l.worker_state(2, 0, NotReady::Drained);
        assert!(l.ready().body.contains("drained"), "{}", l.ready().body);
        l.worker_state(0, 0, NotReady::None);
        l.link_down();
        l.link_up(0);
        assert_eq!((l.failovers.get(), l.reconnects.get()), (1, 1));
        let text = l.render();
        assert!(text.contains("liftoff_link_connected{region=\"east\",transport=\"mqtt\"} 1\n"));
        assert!(text.contains("liftoff_link_connected{region=\"west\",transport=\"mqtt\"} 0\n"));
        l.worker_state(2, 0, NotReady::Reset);
        l.worker_state(0, 0, NotReady::None);
        assert!(l.ready().body.contains("pool reset"), "a reset stays");
    }

    #[test]
    fn runs_by_result_and_exit_class() {
        let l = Launcher::new();
        l.run_ended("finished", Some(0), Some(Duration::from_secs(2)));
        l.run_ended("finished", Some(137), None);
        l.run_ended("rejected", None, None);
        let text = l.render();
        assert!(text.contains("liftoff_runs_total{result=\"finished\"} 2\n"));
        assert!(text.contains("liftoff_runs_total{result=\"rejected\"} 1\n"));
        assert!(text.contains("liftoff_run_exit_codes_total{class=\"signal\"} 1\n"));
        assert!(text.contains("liftoff_run_duration_seconds_count 1\n"));
    }
}
