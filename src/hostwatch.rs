//! Host health: is the host itself the reason a run is slow or failing?
//!
//! Every few seconds the launcher takes a cheap [`Sample`] (a handful of small
//! files under /proc and the job's cgroup, and `statvfs` of the state and
//! workspace filesystems) and feeds it to [`HostWatch::observe`], which keeps a
//! 60 s window and returns at most one [`Warning`] per kind per 5 minutes once
//! a threshold has been crossed for a sustained period. The warnings go into
//! the run's log; [`HostWatch::figures`] goes into heartbeats. [`DiskGate`]
//! turns `SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD` into "stop / resume taking
//! runs".
//!
//! The launcher makes one [`Board`] and hands it to the worker and the run
//! executor: runs subscribe with [`Board::subscribe`], the worker's sampler
//! calls [`Board::publish`] with each warning, and every running run's log
//! gets the line.
//!
//! Parsing is pure (strings in, numbers out) so it is tested on recorded
//! /proc files in tests/fixtures/proc.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use serde::Serialize;

/// How often the launcher samples.
pub const SAMPLE_EVERY_SECS: u64 = 5;
/// The window over which rates (steal, throttling) are computed.
pub const WINDOW_SECS: u64 = 60;
/// A warning of one kind is written at most this often.
pub const REPEAT_SECS: u64 = 300;

/// Why a host figure could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadError {
    /// A /proc or cgroup file is not in the format the kernel writes (or
    /// lacks the line: an old kernel, no CPU limit on the cgroup).
    Malformed(String),
    /// `statvfs` failed on a watched path.
    Statvfs(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Malformed(m) | ReadError::Statvfs(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ReadError {}

fn malformed(m: impl Into<String>) -> ReadError {
    ReadError::Malformed(m.into())
}

/// Aggregate CPU time from the first line of /proc/stat, in clock ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CpuTimes {
    pub total: u64,
    pub steal: u64,
}

/// Reads the aggregate `cpu` line of /proc/stat.
pub fn parse_proc_stat(text: &str) -> Result<CpuTimes, ReadError> {
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| malformed("/proc/stat has no aggregate cpu line"))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| {
            f.parse::<u64>()
                .map_err(|_| malformed(format!("/proc/stat: bad number {f:?}")))
        })
        .collect::<Result<_, _>>()?;
    if fields.len() < 8 {
        return Err(malformed(
            "/proc/stat: the cpu line has fewer than 8 fields (kernel too old for steal time)",
        ));
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest
    // time is already counted in user and nice.
    Ok(CpuTimes {
        total: fields[..8].iter().sum(),
        steal: fields[7],
    })
}

/// One PSI file (/proc/pressure/{cpu,memory,io} or a cgroup's *.pressure).
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Pressure {
    /// Percent of time at least one task stalled, averaged over 10 s and 60 s.
    pub some_avg10: f64,
    pub some_avg60: f64,
    /// Percent of time all non-idle tasks stalled (absent for cpu on old kernels).
    pub full_avg60: f64,
}

pub fn parse_pressure(text: &str) -> Result<Pressure, ReadError> {
    let mut p = Pressure::default();
    let mut saw_some = false;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let kind = parts.next().unwrap_or("");
        for kv in parts {
            let Some((k, v)) = kv.split_once('=') else {
                continue;
            };
            let value = || {
                v.parse::<f64>()
                    .map_err(|_| malformed(format!("pressure file: bad value {kv:?}")))
            };
            match (kind, k) {
                ("some", "avg10") => p.some_avg10 = value()?,
                ("some", "avg60") => {
                    p.some_avg60 = value()?;
                    saw_some = true;
                }
                ("full", "avg60") => p.full_avg60 = value()?,
                _ => {}
            }
        }
    }
    if saw_some {
        Ok(p)
    } else {
        Err(malformed("pressure file has no `some avg60=` line"))
    }
}

/// MemTotal and MemAvailable from /proc/meminfo, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Memory {
    pub total_kib: u64,
    pub available_kib: u64,
}

pub fn parse_meminfo(text: &str) -> Result<Memory, ReadError> {
    let field = |name: &str| -> Result<u64, ReadError> {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(':'))
            .ok_or_else(|| malformed(format!("/proc/meminfo has no {name}")))?;
        line[name.len() + 1..]
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| malformed(format!("/proc/meminfo: bad {name} line {line:?}")))
    };
    Ok(Memory {
        total_kib: field("MemTotal")?,
        available_kib: field("MemAvailable")?,
    })
}

/// CFS bandwidth counters of a cgroup's cpu.stat (v1 and v2 both name them
/// nr_periods and nr_throttled).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Throttling {
    pub periods: u64,
    pub throttled: u64,
}

pub fn parse_cpu_stat(text: &str) -> Result<Throttling, ReadError> {
    let mut t = Throttling::default();
    let mut seen = 0;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(k), Some(v)) = (parts.next(), parts.next()) else {
            continue;
        };
        let slot = match k {
            "nr_periods" => &mut t.periods,
            "nr_throttled" => &mut t.throttled,
            _ => continue,
        };
        *slot = v
            .parse()
            .map_err(|_| malformed(format!("cpu.stat: bad {k} value {v:?}")))?;
        seen += 1;
    }
    if seen == 2 {
        Ok(t)
    } else {
        Err(malformed(
            "cpu.stat has no nr_periods/nr_throttled (no CPU limit on this cgroup?)",
        ))
    }
}

/// Used space of the filesystem holding `path`, in percent of what an
/// unprivileged user can use (as `df` computes it).
pub fn disk_used_percent(path: &Path) -> Result<f64, ReadError> {
    let st = nix::sys::statvfs::statvfs(path)
        .map_err(|e| ReadError::Statvfs(format!("statvfs {}: {e}", path.display())))?;
    let frsize = st.fragment_size() as u128;
    let total = st.blocks() as u128 * frsize;
    let free = st.blocks_free() as u128 * frsize;
    let avail = st.blocks_available() as u128 * frsize;
    let used = total.saturating_sub(free);
    let usable = used + avail;
    if usable == 0 {
        return Ok(0.0);
    }
    Ok((used as f64) * 100.0 / (usable as f64))
}

/// Where to read from: the real /proc, or a fixture directory in tests.
#[derive(Debug, Clone)]
pub struct Sources {
    pub proc_dir: PathBuf,
    /// The job cgroup's cpu.stat, when the job has a CPU limit.
    pub job_cpu_stat: Option<PathBuf>,
    /// Filesystems to watch, by the name the warning uses.
    pub disks: Vec<(String, PathBuf)>,
}

impl Sources {
    pub fn host(state_dir: &Path) -> Sources {
        Sources {
            proc_dir: "/proc".into(),
            job_cpu_stat: None,
            disks: vec![("state".into(), state_dir.to_path_buf())],
        }
    }
}

/// One reading. Anything the host does not offer (no PSI, no cgroup limit)
/// is `None` and simply not judged.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub cpu: Option<CpuTimes>,
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
    pub io_pressure: Option<Pressure>,
    pub memory: Option<Memory>,
    pub throttling: Option<Throttling>,
    /// (name, path, used percent).
    pub disks: Vec<(String, PathBuf, f64)>,
}

/// Takes a sample: about six small reads and one statvfs per disk.
pub fn sample(src: &Sources) -> Sample {
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    let proc = &src.proc_dir;
    Sample {
        cpu: read(proc.join("stat")).and_then(|t| parse_proc_stat(&t).ok()),
        cpu_pressure: read(proc.join("pressure/cpu")).and_then(|t| parse_pressure(&t).ok()),
        memory_pressure: read(proc.join("pressure/memory")).and_then(|t| parse_pressure(&t).ok()),
        io_pressure: read(proc.join("pressure/io")).and_then(|t| parse_pressure(&t).ok()),
        memory: read(proc.join("meminfo")).and_then(|t| parse_meminfo(&t).ok()),
        throttling: src
            .job_cpu_stat
            .clone()
            .and_then(read)
            .and_then(|t| parse_cpu_stat(&t).ok()),
        disks: src
            .disks
            .iter()
            .filter_map(|(name, p)| {
                disk_used_percent(p)
                    .ok()
                    .map(|u| (name.clone(), p.clone(), u))
            })
            .collect(),
    }
}

/// The kinds of host trouble, each warned about separately.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    CpuSteal,
    CpuThrottling,
    CpuPressure,
    Memory,
    IoPressure,
    Disk,
}

/// When a figure counts as trouble.
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Percent of CPU time stolen by the hypervisor.
    pub steal_pct: f64,
    /// Percent of the job's CFS periods that were throttled.
    pub throttled_pct: f64,
    /// PSI `some avg60` for cpu.
    pub cpu_pressure_pct: f64,
    /// PSI `some avg60` for memory.
    pub memory_pressure_pct: f64,
    /// MemAvailable below this percent of MemTotal.
    pub memory_available_pct: f64,
    /// PSI `some avg60` for io.
    pub io_pressure_pct: f64,
    /// Used percent of a watched filesystem.
    pub disk_pct: f64,
    /// How long a threshold must stay crossed before a warning.
    pub sustain_secs: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            steal_pct: 20.0,
            throttled_pct: 50.0,
            cpu_pressure_pct: 40.0,
            memory_pressure_pct: 20.0,
            memory_available_pct: 5.0,
            io_pressure_pct: 40.0,
            disk_pct: 90.0,
            sustain_secs: 60,
        }
    }
}

/// The current figures, for heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Figures {
    pub cpu_steal_pct: Option<f64>,
    pub cpu_throttled_pct: Option<f64>,
    pub cpu_pressure_pct: Option<f64>,
    pub memory_pressure_pct: Option<f64>,
    pub io_pressure_pct: Option<f64>,
    pub memory_available_pct: Option<f64>,
    pub memory_available_bytes: Option<u64>,
    /// name → used percent.
    pub disk_used_pct: BTreeMap<String, f64>,
}

/// One line for the run's log.
#[derive(Debug, Clone, PartialEq)]
pub struct Warning {
    pub kind: Kind,
    pub line: String,
}

/// The sliding window and the warning throttle.
#[derive(Debug)]
pub struct HostWatch {
    thresholds: Thresholds,
    /// (time, cpu, throttling) within the window, oldest first.
    history: VecDeque<(u64, Option<CpuTimes>, Option<Throttling>)>,
    figures: Figures,
    /// Since when each kind has been over its threshold.
    over_since: BTreeMap<Kind, u64>,
    last_warned: BTreeMap<Kind, u64>,
}

impl HostWatch {
    pub fn new(thresholds: Thresholds) -> Self {
        HostWatch {
            thresholds,
            history: VecDeque::new(),
            figures: Figures::default(),
            over_since: BTreeMap::new(),
            last_warned: BTreeMap::new(),
        }
    }

    pub fn figures(&self) -> &Figures {
        &self.figures
    }

    /// Adds a sample taken at `now` (seconds, monotonic) and returns the
    /// warnings due now.
    pub fn observe(&mut self, now: u64, s: &Sample) -> Vec<Warning> {
        self.history.push_back((now, s.cpu, s.throttling));
        while self.history.len() > 2
            && self
                .history
                .front()
                .is_some_and(|(t, ..)| now - t > WINDOW_SECS)
        {
            self.history.pop_front();
        }
        let (first, last) = (self.history.front(), self.history.back());
        let span = match (first, last) {
            (Some((t0, ..)), Some((t1, ..))) => t1 - t0,
            _ => 0,
        };
        let steal = match (first.and_then(|f| f.1), last.and_then(|l| l.1)) {
            (Some(a), Some(b)) if b.total > a.total => {
                Some((b.steal.saturating_sub(a.steal)) as f64 * 100.0 / (b.total - a.total) as f64)
            }
            _ => None,
        };
        let throttled = match (first.and_then(|f| f.2), last.and_then(|l| l.2)) {
            (Some(a), Some(b)) if b.periods > a.periods => Some(
                (b.throttled.saturating_sub(a.throttled)) as f64 * 100.0
                    / (b.periods - a.periods) as f64,
            ),
            _ => None,
        };
        let mem_avail_pct = s
            .memory
            .filter(|m| m.total_kib > 0)
            .map(|m| m.available_kib as f64 * 100.0 / m.total_kib as f64);
        self.figures = Figures {
            cpu_steal_pct: steal.map(round1),
            cpu_throttled_pct: throttled.map(round1),
            cpu_pressure_pct: s.cpu_pressure.map(|p| p.some_avg60),
            memory_pressure_pct: s.memory_pressure.map(|p| p.some_avg60),
            io_pressure_pct: s.io_pressure.map(|p| p.some_avg60),
            memory_available_pct: mem_avail_pct.map(round1),
            memory_available_bytes: s.memory.map(|m| m.available_kib * 1024),
            disk_used_pct: s
                .disks
                .iter()
                .map(|(n, _, u)| (n.clone(), round1(*u)))
                .collect(),
        };

        let t = self.thresholds.clone();
        let window = span.max(1);
        let mut due = Vec::new();
        let steal_line = steal.filter(|v| *v >= t.steal_pct).map(|v| {
            format!("liftoff: host CPU steal {v:.0}% over the last {window} s: on burstable instances (t3) this usually means CPU credits are exhausted; runs will be slow")
        });
        let throttle_line = throttled.filter(|v| *v >= t.throttled_pct).map(|v| {
            format!("liftoff: the run was CPU-throttled in {v:.0}% of scheduling periods over the last {window} s: its CPU limit (LIFTOFF_JOB_CPUS) is too low for it; runs will be slow")
        });
        let cpu_line = s.cpu_pressure.filter(|p| p.some_avg60 >= t.cpu_pressure_pct).map(|p| {
            format!("liftoff: CPU pressure: tasks waited for a CPU {:.0}% of the last 60 s: this host is overloaded; runs will be slow", p.some_avg60)
        });
        let mem_line = match (s.memory_pressure, mem_avail_pct) {
            (Some(p), avail) if p.some_avg60 >= t.memory_pressure_pct => Some(format!(
                "liftoff: memory pressure: tasks stalled on memory {:.0}% of the last 60 s{}: the host is short of memory; the run may be killed for out-of-memory",
                p.some_avg60,
                avail
                    .map(|a| format!(" (available memory {a:.0}%)"))
                    .unwrap_or_default()
            )),
            (_, Some(a)) if a < t.memory_available_pct => Some(format!(
                "liftoff: only {a:.0}% of the host's memory is available: the run may be killed for out-of-memory; use a larger instance or fewer LIFTOFF_WORKERS"
            )),
            _ => None,
        };
        let io_line = s.io_pressure.filter(|p| p.some_avg60 >= t.io_pressure_pct).map(|p| {
            format!("liftoff: I/O pressure: tasks waited on the disk {:.0}% of the last 60 s: storage is too slow for this run (on EBS, check burst balance and IOPS)", p.some_avg60)
        });
        let disk_line = s.disks.iter().filter(|(_, _, u)| *u >= t.disk_pct).map(|(name, p, u)| {
            format!("liftoff: the {name} filesystem ({}) is {u:.0}% full: the run may fail to write; free space or enlarge the disk", p.display())
        }).next();
        for (kind, line) in [
            (Kind::CpuSteal, steal_line),
            (Kind::CpuThrottling, throttle_line),
            (Kind::CpuPressure, cpu_line),
            (Kind::Memory, mem_line),
            (Kind::IoPressure, io_line),
            (Kind::Disk, disk_line),
        ] {
            let Some(line) = line else {
                self.over_since.remove(&kind);
                continue;
            };
            let since = *self.over_since.entry(kind).or_insert(now);
            // Rates computed over the window are already sustained once the
            // window is full; instantaneous readings must persist.
            let sustained = match kind {
                Kind::CpuSteal | Kind::CpuThrottling => span >= t.sustain_secs,
                Kind::CpuPressure | Kind::Memory | Kind::IoPressure => true, // avg60 is a 60 s average
                Kind::Disk => now - since >= t.sustain_secs.min(SAMPLE_EVERY_SECS * 2),
            };
            let quiet = self
                .last_warned
                .get(&kind)
                .is_none_or(|last| now - last >= REPEAT_SECS);
            if sustained && quiet {
                self.last_warned.insert(kind, now);
                due.push(Warning { kind, line });
            }
        }
        due
    }
}

fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// `SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD`: above it the worker stops taking
/// runs (DRAINED, with the reason), and takes them again once usage falls
/// below it.
#[derive(Debug)]
pub struct DiskGate {
    threshold: u8,
    closed: bool,
}

/// What the worker must do after a disk reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateChange {
    /// Stop taking runs; the reason goes into the DRAINED status.
    Close(String),
    /// Take runs again.
    Open,
}

impl DiskGate {
    pub fn new(threshold: u8) -> Self {
        DiskGate {
            threshold,
            closed: false,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Feeds one reading of the state directory's filesystem.
    pub fn observe(&mut self, path: &Path, used_pct: f64) -> Option<GateChange> {
        let over = used_pct > f64::from(self.threshold);
        match (self.closed, over) {
            (false, true) => {
                self.closed = true;
                Some(GateChange::Close(format!(
                    "disk usage of {} is {used_pct:.0}%, above SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD ({}%): not taking runs until it falls",
                    path.display(),
                    self.threshold
                )))
            }
            (true, false) => {
                self.closed = false;
                Some(GateChange::Open)
            }
            _ => None,
        }
    }
}

/// Where host warnings meet running runs: the launcher makes one board,
/// hands it to the worker (which publishes what [`HostWatch`] observes) and
/// to the run executor (each run subscribes its log pipeline's notes). No
/// process-wide state: a run hears only the board it was given.
#[derive(Debug, Default)]
pub struct Board {
    subscribers: std::sync::Mutex<Vec<std::sync::Weak<crate::logs::Notes>>>,
}

impl Board {
    /// An inbox that receives every warning published while it is alive;
    /// attach it to a run's log pipeline (`Pipeline::attach_notes`).
    pub fn subscribe(&self) -> std::sync::Arc<crate::logs::Notes> {
        let notes = std::sync::Arc::new(crate::logs::Notes::default());
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|w| w.strong_count() > 0);
        subs.push(std::sync::Arc::downgrade(&notes));
        notes
    }

    /// Sends a warning line to every live subscriber (every running run's log).
    pub fn publish(&self, line: &str) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|p| p.into_inner());
        subs.retain(|w| match w.upgrade() {
            Some(n) => {
                n.push(line.to_string());
                true
            }
            None => false,
        });
    }
}
