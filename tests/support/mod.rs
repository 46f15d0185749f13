//! Shared test support. Each room's tests add a file here (`pki.rs` for keys
//! and certificates made with the openssl CLI, ...) and one `pub mod` line.
#![allow(dead_code)]

pub mod bench;
pub mod brokers;
pub mod http_head;
pub mod http_server;
pub mod pki;
pub mod plane;
pub mod plane_server;
pub mod poll_plane;
pub mod registry;
pub mod relay;
pub mod rng;
pub mod runs;
pub mod sandbox;
pub mod scrape;
pub mod tmpfs;
pub mod tool_release;

use std::path::PathBuf;

/// The liftoff binary under test: `LIFTOFF_TEST_BIN` when set (CI sets it to
/// the static musl release build), else the one cargo built for this run.
/// Every test that runs the binary finds it here.
pub fn liftoff_bin() -> PathBuf {
    match std::env::var_os("LIFTOFF_TEST_BIN") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "LIFTOFF_TEST_BIN={} is not a file: build it first (cargo build --release --target x86_64-unknown-linux-musl)",
                p.display()
            );
            p
        }
        _ => PathBuf::from(env!("CARGO_BIN_EXE_liftoff")),
    }
}
