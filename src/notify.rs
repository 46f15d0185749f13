//! systemd's notify protocol (`Type=notify`): `READY=1`, `STATUS=...` and
//! `WATCHDOG=1` datagrams to `$NOTIFY_SOCKET`. Without the variable (not under
//! systemd) every call does nothing. Call [`Notifier::from_env`] once at
//! start-up, then
//! [`Notifier::ready`], [`Notifier::status`] on every state change and
//! [`Notifier::watchdog`] from the main loop at least every
//! [`Notifier::watchdog_every`].

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Default)]
pub struct Notifier {
    socket: Option<(UnixDatagram, PathBuf)>,
    watchdog: Option<Duration>,
    last_status: std::sync::Mutex<String>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` (jobs never see them: the
    /// sandbox gives each job a clean environment).
    pub fn from_env() -> Notifier {
        let path = std::env::var_os("NOTIFY_SOCKET").map(PathBuf::from);
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0)
            .map(Duration::from_micros);
        Notifier::new(path, watchdog)
    }

    /// A notifier for `socket` (an abstract socket when it starts with `@`).
    pub fn new(socket: Option<PathBuf>, watchdog: Option<Duration>) -> Notifier {
        let socket = socket.and_then(|p| UnixDatagram::unbound().ok().map(|s| (s, p)));
        Notifier {
            socket,
            watchdog,
            last_status: Default::default(),
        }
    }

    fn send(&self, msg: &str) {
        let Some((sock, path)) = &self.socket else {
            return;
        };
        let text = path.to_string_lossy();
        let result = if let Some(name) = text.strip_prefix('@') {
            use std::os::linux::net::SocketAddrExt as _;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| sock.send_to_addr(msg.as_bytes(), &a))
        } else {
            sock.send_to(msg.as_bytes(), path)
        };
        if let Err(e) = result {
            tracing::debug!("cannot notify systemd: {e}");
        }
    }

    pub fn ready(&self) {
        self.send("READY=1");
    }

    /// `STATUS=` for `systemctl status`; repeated values are sent once.
    pub fn status(&self, status: &str) {
        let mut last = self.last_status.lock().unwrap_or_else(|p| p.into_inner());
        if *last != status {
            *last = status.to_string();
            self.send(&format!("STATUS={status}"));
        }
    }

    pub fn watchdog(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }

    /// How often [`Notifier::watchdog`] must be called: half the watchdog
    /// timeout (or never).
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    pub fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let n = Notifier::new(Some(path), Some(Duration::from_secs(60)));
        n.ready();
        n.status("IDLE");
        n.status("IDLE");
        n.status("BUSY run 01X");
        n.watchdog();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        for _ in 0..4 {
            let len = server.recv(&mut buf).unwrap();
            got.push(String::from_utf8_lossy(&buf[..len]).to_string());
        }
        assert_eq!(
            got,
            vec![
                "READY=1",
                "STATUS=IDLE",
                "STATUS=BUSY run 01X",
                "WATCHDOG=1"
            ]
        );
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(30)));
        // Without a socket nothing happens.
        Notifier::new(None, None).ready();
    }
}
