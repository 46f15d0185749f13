//! `liftoff-plane`: the self-hostable reference control plane of
//! docs/protocol.md (docs/plane.md is its manual).
//!
//! Rooms, in call order: [`cli`] parses the command line; `init` makes the
//! data directory with [`pki`] (pool CA, server certificate, CSR signing,
//! revocation) and [`config`]; `serve` opens the [`store`] (SQLite, WAL,
//! behind the [`store::Store`] trait), starts [`server`] (HTTPS with
//! optional client certificates: the long-poll binding of [`binding`] for
//! workers, the admin API of [`admin`] for the CLI, the signed object URLs
//! of [`objects`]) and the [`dispatch`] thread (queue, assign re-sends,
//! drain/cycle/cancel re-sends, the poll grace). Worker messages from any
//! transport go through [`dispatch::Plane::record`]. With
//! `metrics_listen` set, `serve` also starts [`metrics`] (Prometheus
//! `/metrics` and `/healthz` over plain HTTP) before the HTTPS listener. Every CLI command but
//! `init`, `serve` and `dev` talks to the admin API through [`client`].
//!
//! Nothing else in the crate imports this room; the `liftoff` binary never
//! links it.

pub mod admin;
pub mod binding;
pub mod cli;
pub mod client;
pub mod config;
pub mod dev;
pub mod dispatch;
pub mod httpd;
pub mod metrics;
pub mod mqtt;
pub mod objects;
pub mod pki;
pub mod server;
pub mod store;

/// What went wrong in the plane, with what to do about it. Each kind maps to
/// one HTTP status (admin API, binding) and one CLI exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// Bad input from the caller (a CSR, a spec, a name): HTTP 400, exit 2.
    BadInput(String),
    /// No such pool, run or worker: HTTP 404, exit 3.
    NotFound(String),
    /// A request that conflicts with the current state: HTTP 409, exit 4.
    Conflict(String),
    /// No or a wrong admin token, or a certificate of another pool: HTTP
    /// 401/403, exit 77.
    Unauthorized(String),
    Forbidden(String),
    /// The plane's own configuration or data directory is unusable: HTTP
    /// 500, exit 78.
    Config(String),
    /// The disk or the database failed (I/O error): HTTP 500, exit 74.
    /// Nothing was half-written: the transaction was rolled back.
    Storage(String),
    /// The disk under the data directory is full: HTTP 507, exit 74.
    /// Nothing was half-written.
    DiskFull(String),
    /// The plane could not be reached or answered nonsense (CLI side): exit 69.
    Unavailable(String),
}

impl Error {
    pub fn message(&self) -> &str {
        match self {
            Error::BadInput(m)
            | Error::NotFound(m)
            | Error::Conflict(m)
            | Error::Unauthorized(m)
            | Error::Forbidden(m)
            | Error::Config(m)
            | Error::Storage(m)
            | Error::DiskFull(m)
            | Error::Unavailable(m) => m,
        }
    }

    /// The HTTP status of this error in the admin API and the binding.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadInput(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::DiskFull(_) => 507,
            Error::Config(_) | Error::Storage(_) => 500,
            Error::Unavailable(_) => 503,
        }
    }

    /// The CLI's exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::BadInput(_) => 2,
            Error::NotFound(_) => 3,
            Error::Conflict(_) => 4,
            Error::Unauthorized(_) | Error::Forbidden(_) => 77,
            Error::Config(_) => crate::EXIT_CONFIG,
            Error::Storage(_) | Error::DiskFull(_) => 74,
            Error::Unavailable(_) => 69,
        }
    }

    /// The error an HTTP status and message from the admin API stand for.
    pub fn from_status(status: u16, message: String) -> Error {
        match status {
            400 => Error::BadInput(message),
            401 => Error::Unauthorized(message),
            403 => Error::Forbidden(message),
            404 => Error::NotFound(message),
            409 => Error::Conflict(message),
            507 => Error::DiskFull(message),
            _ => Error::Unavailable(format!("the plane answered HTTP {status}: {message}")),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    crate::link::protocol::now_ms()
}

impl Error {
    /// A failed file operation: [`Error::DiskFull`] when the disk (or the
    /// quota) is full, else [`Error::Storage`].
    pub fn io(what: &str, path: &std::path::Path, e: &std::io::Error) -> Error {
        match e.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => Error::DiskFull(format!(
                "cannot {what} {}: the disk under the data directory is full ({e}): free space; nothing was written",
                path.display()
            )),
            _ => Error::Storage(format!("cannot {what} {}: I/O error ({e})", path.display())),
        }
    }
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename) with
/// `mode`; a full disk leaves the old file in place and no temporary one.
pub fn write_file(path: &std::path::Path, data: &[u8], mode: u32) -> Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let fail = |e: std::io::Error| {
        let _ = std::fs::remove_file(&tmp);
        Error::io("write", path, &e)
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(fail)?;
    f.write_all(data).map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(())
}
