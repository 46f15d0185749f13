//! Shared test support. Each room's tests add a file here (`pki.rs` for keys
//! and certificates made with the openssl CLI, ...) and one `pub mod` line.
#![allow(dead_code)]

pub mod brokers;
pub mod http_server;
pub mod pki;
pub mod plane;
pub mod runs;
pub mod sandbox;

use std::path::PathBuf;

/// The liftoff binary built for this test run.
pub fn liftoff_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_liftoff"))
}
