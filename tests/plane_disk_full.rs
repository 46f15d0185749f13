//! A full disk under the plane's data directory (issue 15's bad input): a
//! real ENOSPC from a small tmpfs mounted as the data directory
//! (support/plane_server.rs `start_on_tmpfs`; needs root to mount, as CI
//! runs; fails loudly without). A submit that cannot be stored gets HTTP 507 and CLI exit 74
//! naming the full disk, and leaves nothing half-written: no run, no
//! source object, no temporary file; the plane keeps serving, and the same
//! submit succeeds once space is freed.

mod support;

use std::io::Write;
use std::path::Path;

use support::plane_server::{PlaneProc, spec_file};

/// Fills the filesystem of `dir` to the last byte; returns the filler.
fn fill(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5au8; 64 << 10];
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    // The last partial blocks too.
    while let Ok(n) = f.write(&chunk[..512]) {
        if n == 0 {
            break;
        }
    }
    path
}

fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_full_disk_refuses_a_submit_cleanly_and_the_plane_keeps_serving() {
    let plane = PlaneProc::start_on_tmpfs("6m");
    let served = plane.data.clone();
    plane.pool("p", 2048);
    let spec = spec_file(plane.dir.path(), "s", "proposed", "st", "echo hi");
    // A source of 1 MiB of incompressible bytes, stored as an object.
    let src = plane.dir.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let noise: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(src.join("blob"), noise).unwrap();
    let submit = || {
        plane.cli(&[
            "run",
            "submit",
            "p",
            "--spec",
            spec.to_str().unwrap(),
            "--source",
            src.to_str().unwrap(),
        ])
    };

    let filler = fill(&served);
    let before = files_under(&served);
    let out = submit();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(74), "{err}");
    assert!(err.contains("full"), "{err}");
    assert!(err.contains("free space"), "{err}");
    // Nothing half-written: the same files as before (no object, no
    // temporary file), and no run.
    let after: Vec<String> = files_under(&served)
        .into_iter()
        .filter(|f| !f.ends_with("-wal") && !f.ends_with("-shm"))
        .collect();
    let before: Vec<String> = before
        .into_iter()
        .filter(|f| !f.ends_with("-wal") && !f.ends_with("-shm"))
        .collect();
    assert_eq!(after, before);
    let runs = plane.cli_json(&["run", "list"]);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 0, "{runs}");

    // The same request through the admin API: 507 Insufficient Storage.
    let url = format!("{}/admin/v1/runs", plane.url());
    let answer = plane
        .admin_agent()
        .post(&url)
        .header("Authorization", &format!("Bearer {}", plane.admin_token()))
        .header("Content-Type", "application/json")
        .send(serde_json::json!({
            "pool": "p",
            "spec": serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&spec).unwrap()).unwrap(),
            "source_b64": base64_of(&std::fs::read(src.join("blob")).unwrap()),
        }).to_string())
        .unwrap();
    assert_eq!(answer.status().as_u16(), 507);

    // Space freed: the same submit goes through, once.
    std::fs::remove_file(&filler).unwrap();
    let out = submit();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let runs = plane.cli_json(&["run", "list"]);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");
}

fn base64_of(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}
