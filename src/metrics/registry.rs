//! Counters, gauges and histograms made of atomics, and the writer of the
//! Prometheus text exposition format (version 0.0.4).
//!
//! Call order: declare the metrics once (they are `const`-constructible, so a
//! `static` holds them), bump them anywhere with a relaxed atomic (no lock,
//! no allocation, never blocks the caller), and at scrape time build one
//! [`Exposition`]: for each family [`Exposition::family`] then its samples
//! ([`Exposition::sample`]) or [`Exposition::histogram`]; [`Exposition::finish`]
//! gives the body. Label values come from fixed sets chosen by the caller
//! (never run ids or anything else unbounded); they are escaped here.
//! Nothing in this room imports another room: the launcher and the plane
//! both use it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub const fn new() -> Counter {
        Counter(AtomicU64::new(0))
    }
    pub fn inc(&self) {
        self.add(1);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down (an `f64` kept as its bits); NaN means
/// "not known" and the sample is left out of the exposition.
#[derive(Debug)]
pub struct Gauge(AtomicU64);

impl Default for Gauge {
    fn default() -> Gauge {
        Gauge::new()
    }
}

impl Gauge {
    /// A gauge at 0.
    pub const fn new() -> Gauge {
        Gauge(AtomicU64::new(0))
    }
    /// A gauge that is not known until set.
    pub const fn unknown() -> Gauge {
        // f64::NAN.to_bits(), spelled out for a const.
        Gauge(AtomicU64::new(0x7ff8_0000_0000_0000))
    }
    pub fn set(&self, v: f64) {
        self.0.store(v.to_bits(), Ordering::Relaxed);
    }
    /// Sets it from an optional value (`None`: not known).
    pub fn set_opt(&self, v: Option<f64>) {
        self.set(v.unwrap_or(f64::NAN));
    }
    /// Adds `d` (negative to subtract); never below 0 when `floor_zero`.
    pub fn add(&self, d: f64, floor_zero: bool) {
        let _ = self
            .0
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                let v = f64::from_bits(b) + d;
                Some(if floor_zero { v.max(0.0) } else { v }.to_bits())
            });
    }
    pub fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }
}

/// A histogram with `N` fixed upper bounds (in base units, ascending; the
/// `+Inf` bucket is implied).
#[derive(Debug)]
pub struct Histogram<const N: usize> {
    bounds: [f64; N],
    /// Per bucket (not cumulative); index `N` is above the last bound.
    counts: [AtomicU64; N],
    over: AtomicU64,
    count: AtomicU64,
    sum: Gauge,
}

impl<const N: usize> Histogram<N> {
    pub const fn new(bounds: [f64; N]) -> Histogram<N> {
        Histogram {
            bounds,
            counts: [const { AtomicU64::new(0) }; N],
            over: AtomicU64::new(0),
            count: AtomicU64::new(0),
            sum: Gauge::new(),
        }
    }
    pub fn observe(&self, v: f64) {
        match self.bounds.iter().position(|b| v <= *b) {
            Some(i) => self.counts[i].fetch_add(1, Ordering::Relaxed),
            None => self.over.fetch_add(1, Ordering::Relaxed),
        };
        self.sum.add(v, false);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

/// The kind of a metric family, as `# TYPE` writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Writes one exposition (text format 0.0.4).
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn write_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

fn write_labels(out: &mut String, labels: &[(&str, &str)], extra: Option<(&str, f64)>) {
    if labels.is_empty() && extra.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if let Some((k, v)) = extra {
        if !first {
            out.push(',');
        }
        out.push_str(k);
        out.push_str("=\"");
        write_value(out, v);
        out.push('"');
    }
    out.push('}');
}

impl Exposition {
    pub fn new() -> Exposition {
        Exposition {
            out: String::with_capacity(8 * 1024),
        }
    }

    /// Starts a family: `# HELP` and `# TYPE`. Its samples follow at once.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; a NaN value (not known) is left out.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], v: f64) {
        if v.is_nan() {
            return;
        }
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        write_value(&mut self.out, v);
        self.out.push('\n');
    }

    /// A family of one unlabelled sample.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, v: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], v);
    }

    /// A whole histogram family (`_bucket` cumulative with `le`, `_sum`,
    /// `_count`).
    pub fn histogram<const N: usize>(&mut self, name: &str, help: &str, h: &Histogram<N>) {
        self.family(name, Kind::Histogram, help);
        let bucket = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (i, b) in h.bounds.iter().enumerate() {
            cumulative += h.counts[i].load(Ordering::Relaxed);
            self.out.push_str(&bucket);
            write_labels(&mut self.out, &[], Some(("le", *b)));
            let _ = writeln!(self.out, " {cumulative}");
        }
        cumulative += h.over.load(Ordering::Relaxed);
        // The total is the buckets' sum, so `+Inf` and `_count` always agree
        // even while another thread observes.
        let _ = writeln!(
            self.out,
            "{bucket}{{le=\"+Inf\"}} {cumulative}\n{name}_sum {}\n{name}_count {cumulative}",
            {
                let mut s = String::new();
                write_value(&mut s, h.sum.get());
                s
            }
        );
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format() {
        static C: Counter = Counter::new();
        static H: Histogram<2> = Histogram::new([0.5, 1.0]);
        C.add(3);
        H.observe(0.2);
        H.observe(0.7);
        H.observe(9.0);
        let g = Gauge::unknown();
        let mut e = Exposition::new();
        e.single(
            "x_total",
            Kind::Counter,
            "An x.\nTwo lines.",
            C.get() as f64,
        );
        e.family("y", Kind::Gauge, "A y.");
        e.sample("y", &[("a", "q\"\\\n")], 1.5);
        e.sample("y", &[("a", "unknown")], g.get());
        e.histogram("h_seconds", "An h.", &H);
        let text = e.finish();
        assert_eq!(
            text,
            "# HELP x_total An x.\\nTwo lines.\n# TYPE x_total counter\nx_total 3\n\
             # HELP y A y.\n# TYPE y gauge\ny{a=\"q\\\"\\\\\\n\"} 1.5\n\
             # HELP h_seconds An h.\n# TYPE h_seconds histogram\n\
             h_seconds_bucket{le=\"0.5\"} 1\nh_seconds_bucket{le=\"1\"} 2\n\
             h_seconds_bucket{le=\"+Inf\"} 3\nh_seconds_sum 9.9\nh_seconds_count 3\n"
        );
    }

    #[test]
    fn gauge_adds_and_floors() {
        let g = Gauge::new();
        g.add(5.0, true);
        g.add(-7.0, true);
        assert_eq!(g.get(), 0.0);
        g.set_opt(None);
        assert!(g.get().is_nan());
    }
}
