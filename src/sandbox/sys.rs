//! Raw system calls that leave `errno` alone, for the job's setup: the job
//! runs while init, which shares its memory (and so its thread-local
//! `errno`), makes system calls of its own ([`super::child`]). The result is
//! the kernel's: the value, or the error number.
//!
//! Order: none; [`call`] is a helper. [`RAW`] says whether this target has
//! the raw form (x86_64, aarch64); elsewhere [`call`] is libc's `syscall`,
//! which sets `errno`, and the job runs only while init waits for it.
//! [`read_within`] is the launcher's side of a child's pipe: its word (an
//! error as step and errno), or EOF, within a deadline.

/// Whether [`call`] leaves `errno` alone on this target.
pub(crate) const RAW: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// System call `nr` with up to six arguments: `Ok(value)` or `Err(errno)`.
///
/// # Safety
/// The arguments must be valid for system call `nr` (pointers to live
/// memory of the right size).
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn call(nr: libc::c_long, a: [usize; 6]) -> Result<usize, i32> {
    let ret: isize;
    // SAFETY (caller): valid arguments for `nr`. The syscall instruction
    // clobbers rcx and r11 only.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a[0],
            in("rsi") a[1],
            in("rdx") a[2],
            in("r10") a[3],
            in("r8") a[4],
            in("r9") a[5],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    result(ret)
}

/// System call `nr` (see the x86_64 one).
///
/// # Safety
/// The arguments must be valid for system call `nr`.
#[cfg(target_arch = "aarch64")]
pub(crate) unsafe fn call(nr: libc::c_long, a: [usize; 6]) -> Result<usize, i32> {
    let ret: isize;
    // SAFETY (caller): valid arguments for `nr`.
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") nr as usize,
            inlateout("x0") a[0] => ret,
            in("x1") a[1],
            in("x2") a[2],
            in("x3") a[3],
            in("x4") a[4],
            in("x5") a[5],
            options(nostack),
        );
    }
    result(ret)
}

/// System call `nr` through libc (sets `errno`; see [`RAW`]).
///
/// # Safety
/// The arguments must be valid for system call `nr`.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub(crate) unsafe fn call(nr: libc::c_long, a: [usize; 6]) -> Result<usize, i32> {
    // SAFETY (caller): valid arguments for `nr`.
    let r = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(r as usize)
    }
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
fn result(ret: isize) -> Result<usize, i32> {
    if (-4095..0).contains(&ret) {
        Err(-ret as i32)
    } else {
        Ok(ret as usize)
    }
}

/// [`call`] with fewer arguments (the rest zero).
///
/// # Safety
/// As [`call`].
pub(crate) unsafe fn call3(nr: libc::c_long, a: usize, b: usize, c: usize) -> Result<usize, i32> {
    // SAFETY: (caller) as `call`.
    unsafe { call(nr, [a, b, c, 0, 0, 0]) }
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

    #[test]
    fn values_and_errors_come_back_without_touching_errno() {
        // SAFETY: getpid has no arguments.
        let pid = unsafe { call3(libc::SYS_getpid, 0, 0, 0) }.unwrap();
        assert_eq!(pid as u32, std::process::id());
        // SAFETY: close of an fd that is not open.
        let r = unsafe { call3(libc::SYS_close, 1 << 20, 0, 0) };
        assert_eq!(r, Err(libc::EBADF));
    }
}
