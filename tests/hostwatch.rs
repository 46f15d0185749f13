//! Host health from recorded /proc files (tests/fixtures/proc), the warning
//! throttle, and the disk threshold on a real, small tmpfs.

mod support;

use std::path::Path;

use liftoff::hostwatch::*;
use support::tmpfs::Tmpfs;

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new("tests/fixtures/proc").join(name)).unwrap()
}

/// A fake /proc directory holding the given fixture files under their real names.
fn proc_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("pressure")).unwrap();
    for (real, fixture_name) in files {
        std::fs::write(dir.path().join(real), fixture(fixture_name)).unwrap();
    }
    dir
}

#[test]
fn parses_recorded_proc_files() {
    let a = parse_proc_stat(&fixture("stat.0")).unwrap();
    let b = parse_proc_stat(&fixture("stat.1")).unwrap();
    assert_eq!(a.steal, 196);
    assert_eq!(b.steal, 208);
    assert!(b.total > a.total);

    let cpu = parse_pressure(&fixture("pressure-cpu")).unwrap();
    assert_eq!(cpu.some_avg60, 63.29);
    assert_eq!(cpu.some_avg10, 85.27);
    let io = parse_pressure(&fixture("pressure-io")).unwrap();
    assert_eq!(io.some_avg60, 0.04);

    let m = parse_meminfo(&fixture("meminfo")).unwrap();
    assert_eq!(m.total_kib, 24_684_092);
    assert!(m.available_kib > 0 && m.available_kib <= m.total_kib);

    assert_eq!(
        parse_cpu_stat(&fixture("cgroup-v1-cpu.stat")).unwrap(),
        Throttling {
            periods: 0,
            throttled: 0
        }
    );
    assert_eq!(
        parse_cpu_stat(&fixture("cgroup-v2-cpu.stat")).unwrap(),
        Throttling {
            periods: 1200,
            throttled: 984
        }
    );
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for text in [
        "",
        "cpu",
        "cpu  a b c",
        "cpu  1 2 3",
        "intr 5\n",
        "\u{0}\u{1}",
    ] {
        assert!(parse_proc_stat(text).is_err(), "{text:?}");
    }
    for text in ["", "some avg10=x avg60=1", "full avg60=1.0", "some"] {
        assert!(parse_pressure(text).is_err(), "{text:?}");
    }
    assert!(parse_meminfo("MemTotal: 5 kB\n").is_err());
    assert!(parse_meminfo("MemTotal: x kB\nMemAvailable: 1 kB").is_err());
    assert!(parse_cpu_stat("usage_usec 5\n").is_err());
    assert!(parse_cpu_stat("nr_periods x\nnr_throttled 1").is_err());
}

#[test]
fn cpu_steal_warning_on_a_starved_host_once_per_five_minutes() {
    let t0 = proc_dir(&[("stat", "stat-starved.0")]);
    let t1 = proc_dir(&[("stat", "stat-starved.1")]);
    let src = |d: &tempfile::TempDir| Sources {
        proc_dir: d.path().into(),
        job_cpu_stat: None,
        disks: vec![],
    };
    let mut w = HostWatch::new(Thresholds::default());
    assert!(w.observe(1000, &sample(&src(&t0))).is_empty());
    let warnings = w.observe(1060, &sample(&src(&t1)));
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].kind, Kind::CpuSteal);
    assert_eq!(
        warnings[0].line,
        "liftoff: host CPU steal 63% over the last 60 s: on burstable instances (t3) this usually means CPU credits are exhausted; runs will be slow"
    );
    assert_eq!(w.figures().cpu_steal_pct, Some(63.0));

    // Still starved a little later: no repeat within 5 minutes.
    let mut later = parse_proc_stat(&fixture("stat-starved.1")).unwrap();
    for t in (1065..1300).step_by(5) {
        later.total += 500;
        later.steal += 315;
        let s = Sample {
            cpu: Some(later),
            ..Sample::default()
        };
        assert!(w.observe(t, &s).is_empty(), "repeated at {t}");
    }
    later.total += 500;
    later.steal += 315;
    let again = w.observe(
        1360,
        &Sample {
            cpu: Some(later),
            ..Sample::default()
        },
    );
    assert_eq!(again.len(), 1, "warns again after 5 minutes");
}

#[test]
fn a_healthy_recorded_host_gets_no_steal_warning() {
    let mut w = HostWatch::new(Thresholds::default());
    let a = Sample {
        cpu: Some(parse_proc_stat(&fixture("stat.0")).unwrap()),
        ..Sample::default()
    };
    let b = Sample {
        cpu: Some(parse_proc_stat(&fixture("stat.1")).unwrap()),
        ..Sample::default()
    };
    w.observe(0, &a);
    assert!(w.observe(60, &b).is_empty());
    let steal = w.figures().cpu_steal_pct.unwrap();
    assert!(steal < 5.0, "{steal}");
}

#[test]
fn steal_needs_a_sustained_window() {
    // 63% stolen, but only over 10 s: not yet a warning.
    let mut w = HostWatch::new(Thresholds::default());
    let a = parse_proc_stat(&fixture("stat-starved.0")).unwrap();
    let b = parse_proc_stat(&fixture("stat-starved.1")).unwrap();
    w.observe(
        0,
        &Sample {
            cpu: Some(a),
            ..Sample::default()
        },
    );
    assert!(
        w.observe(
            10,
            &Sample {
                cpu: Some(b),
                ..Sample::default()
            }
        )
        .is_empty()
    );
}

#[test]
fn pressure_from_recorded_psi_and_job_throttling() {
    let dir = proc_dir(&[
        ("pressure/cpu", "pressure-cpu"),
        ("pressure/memory", "pressure-memory"),
        ("pressure/io", "pressure-io"),
        ("meminfo", "meminfo"),
    ]);
    let mut w = HostWatch::new(Thresholds::default());
    let warnings = w.observe(
        0,
        &sample(&Sources {
            proc_dir: dir.path().into(),
            job_cpu_stat: None,
            disks: vec![],
        }),
    );
    // Recorded while both CPUs were saturated: cpu some avg60 = 63.29.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].kind, Kind::CpuPressure);
    assert!(
        warnings[0]
            .line
            .contains("tasks waited for a CPU 63% of the last 60 s"),
        "{}",
        warnings[0].line
    );
    assert_eq!(w.figures().cpu_pressure_pct, Some(63.29));

    // The job's own CFS throttling, from two cpu.stat readings 60 s apart.
    let mut w = HostWatch::new(Thresholds::default());
    let before = Throttling {
        periods: 0,
        throttled: 0,
    };
    let after = parse_cpu_stat(&fixture("cgroup-v2-cpu.stat")).unwrap();
    w.observe(
        0,
        &Sample {
            throttling: Some(before),
            ..Sample::default()
        },
    );
    let warnings = w.observe(
        60,
        &Sample {
            throttling: Some(after),
            ..Sample::default()
        },
    );
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .line
            .contains("CPU-throttled in 82% of scheduling periods"),
        "{}",
        warnings[0].line
    );
}

#[test]
fn memory_warnings() {
    let mut w = HostWatch::new(Thresholds::default());
    let s = Sample {
        memory_pressure: Some(parse_pressure("some avg10=40.00 avg60=31.50 avg300=10.00 total=1\nfull avg10=0 avg60=5.0 avg300=0 total=0\n").unwrap()),
        memory: Some(Memory { total_kib: 2_000_000, available_kib: 60_000 }),
        ..Sample::default()
    };
    let warnings = w.observe(0, &s);
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0]
            .line
            .contains("memory 32% of the last 60 s (available memory 3%)"),
        "{}",
        warnings[0].line
    );
    let mut w = HostWatch::new(Thresholds::default());
    let s = Sample {
        memory: Some(Memory {
            total_kib: 2_000_000,
            available_kib: 40_000,
        }),
        ..Sample::default()
    };
    assert!(
        w.observe(0, &s)[0]
            .line
            .contains("only 2% of the host's memory is available")
    );
}

#[test]
fn disk_threshold_closes_and_reopens_the_gate() {
    let fs = Tmpfs::mount("size=4m");
    let mut gate = DiskGate::new(90);
    let used = disk_used_percent(&fs.path).unwrap();
    assert!(used < 5.0, "{used}");
    assert_eq!(gate.observe(&fs.path, used), None);

    let big = fs.path.join("fill");
    std::fs::write(&big, vec![7u8; 3900 * 1024]).unwrap();
    let used = disk_used_percent(&fs.path).unwrap();
    assert!(used > 90.0, "{used}");
    match gate.observe(&fs.path, used) {
        Some(GateChange::Close(reason)) => {
            assert!(
                reason.contains("above SPACELIFT_LAUNCHER_DISK_USAGE_THRESHOLD (90%)"),
                "{reason}"
            );
            assert!(reason.contains(&fs.path.display().to_string()));
        }
        other => panic!("gate did not close: {other:?}"),
    }
    assert!(gate.is_closed());
    assert_eq!(gate.observe(&fs.path, used), None, "no repeated change");

    // The hostwatch disk warning, from the same real filesystem.
    let mut w = HostWatch::new(Thresholds::default());
    let src = Sources {
        proc_dir: "/nonexistent".into(),
        job_cpu_stat: None,
        disks: vec![("workspace".into(), fs.path.clone())],
    };
    assert!(
        w.observe(0, &sample(&src)).is_empty(),
        "a disk reading must persist before warning"
    );
    let warnings = w.observe(10, &sample(&src));
    assert_eq!(warnings.len(), 1);
    assert!(
        warnings[0].line.contains("the workspace filesystem")
            && warnings[0].line.contains("% full"),
        "{}",
        warnings[0].line
    );

    std::fs::remove_file(&big).unwrap();
    let used = disk_used_percent(&fs.path).unwrap();
    assert_eq!(gate.observe(&fs.path, used), Some(GateChange::Open));
    assert!(!gate.is_closed());
}
