//! Launcher side of ending a job from the command line: SIGINT, SIGTERM and
//! SIGHUP taken as a signalfd, and one wait for whichever comes first: the
//! job's exit, a cancel signal, or the deadline.
//!
//! Order: [`CancelSignals::block`] before [`super::spawn`] (so a signal that
//! arrives during setup is not lost; the job's signal mask is reset), then
//! [`wait_event`] in a loop.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use super::Sandbox;

/// SIGINT, SIGTERM, SIGHUP blocked and readable from a signalfd.
pub struct CancelSignals {
    fd: OwnedFd,
}

impl CancelSignals {
    /// Blocks the cancel signals for this thread and opens the signalfd.
    pub fn block() -> Option<CancelSignals> {
        // SAFETY: sigset manipulation on a stack value, sigprocmask and
        // signalfd with valid arguments; the fd is owned right away.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                libc::sigaddset(&mut set, s);
            }
            libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
            (fd >= 0).then(|| CancelSignals {
                fd: OwnedFd::from_raw_fd(fd),
            })
        }
    }

    /// Reads one pending signal; its number.
    fn take(&self) -> i32 {
        let mut info = [0u8; 128];
        // SAFETY: reading one signalfd_siginfo (128 bytes) into a buffer of
        // that size; ssi_signo is its first u32.
        let n = unsafe {
            libc::read(
                self.fd.as_raw_fd(),
                info.as_mut_ptr() as *mut libc::c_void,
                info.len(),
            )
        };
        if n >= 4 {
            u32::from_ne_bytes([info[0], info[1], info[2], info[3]]) as i32
        } else {
            0
        }
    }
}

/// What ended a wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The job ended (init reported its status, or the top process
    /// exited): call [`Sandbox::wait`] or [`Sandbox::wait_detached`].
    Exited,
    /// A cancel signal arrived (its number).
    Cancel(i32),
    /// The deadline passed.
    Deadline,
}

/// Waits for the job's exit, a cancel signal, or `deadline`.
pub fn wait_event(
    sb: &Sandbox,
    signals: Option<&CancelSignals>,
    deadline: Option<Instant>,
) -> Event {
    loop {
        let wait_ms = match deadline {
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Event::Deadline;
                }
                left.as_millis().clamp(1, i32::MAX as u128) as i32
            }
            None => -1,
        };
        let mut fds = [
            libc::pollfd {
                fd: sb.exit_fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.map(|s| s.fd.as_raw_fd()).unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid pollfds (a negative fd is ignored).
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, wait_ms) };
        if r < 0 {
            continue;
        }
        if fds[0].revents != 0 {
            return Event::Exited;
        }
        if fds[1].revents != 0 {
            if let Some(s) = signals {
                return Event::Cancel(s.take());
            }
        }
    }
}
