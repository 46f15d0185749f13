//! The launcher's pipes to the processes it clones (the job's init, the
//! ready-made root's builder): making them, and reading a child's word.
//!
//! Order: [`pipe`] and [`socketpair`] before the clone (the child inherits
//! its ends); [`read_within`] after it, for the child's word (an error as
//! step and errno) or the EOF that means success, within a deadline.

use std::os::fd::{FromRawFd, OwnedFd};

use super::Error;

/// A close-on-exec pipe: (read end, write end).
pub(crate) fn pipe() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 into a two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::os("pipe", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// The launcher-child channel: a seqpacket socket pair (messages keep their
/// bounds, and the second one carries fds).
pub(crate) fn socketpair() -> Result<(OwnedFd, OwnedFd), Error> {
    let mut fds = [0; 2];
    // SAFETY: socketpair into a two-element array.
    if unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    } != 0
    {
        return Err(Error::os("socketpair", std::io::Error::last_os_error()));
    }
    // SAFETY: both fds are fresh and owned by us.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Why [`read_within`] stopped short.
#[derive(Debug)]
pub(crate) enum Short {
    /// Nothing came for `timeout_ms`.
    TimedOut,
    Failed(std::io::Error),
}

/// Reads `fd` into `buf` until it is full or at EOF, waiting at most
/// `timeout_ms` for each piece (0: only what is there now). Returns the
/// bytes read.
pub(crate) fn read_within(fd: i32, buf: &mut [u8], timeout_ms: i32) -> Result<usize, Short> {
    let mut got = 0;
    while got < buf.len() {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll of one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if r == 0 {
            return Err(Short::TimedOut);
        }
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Short::Failed(e));
        }
        // SAFETY: a read into the rest of `buf`.
        let n = unsafe {
            libc::read(
                fd,
                buf[got..].as_mut_ptr() as *mut libc::c_void,
                buf.len() - got,
            )
        };
        match n {
            0 => break,
            n if n > 0 => got += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(Short::Failed(e));
                }
            }
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_eof_or_a_deadline() {
        let mut fds = [0; 2];
        // SAFETY: pipe into a two-int array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut buf = [0u8; 8];
        assert!(matches!(
            read_within(fds[0], &mut buf, 10),
            Err(Short::TimedOut)
        ));
        // SAFETY: writes to and closes the write end.
        unsafe {
            libc::write(fds[1], b"abc".as_ptr() as *const libc::c_void, 3);
            libc::close(fds[1]);
        }
        assert_eq!(read_within(fds[0], &mut buf, 10).unwrap(), 3);
        assert_eq!(&buf[..3], b"abc");
        // SAFETY: closes the read end.
        unsafe { libc::close(fds[0]) };
    }
}
