//! Raw system calls that leave `errno` alone, for the job's setup: the job
//! runs while init, which shares its memory (and so its thread-local
//! `errno`), makes system calls of its own ([`super::child`]). The result is
//! the kernel's: the value, or the error number.
//!
//! Order: none; [`call`] is a helper. [`RAW`] says whether this target has
//! the raw form (x86_64, aarch64); elsewhere [`call`] is libc's `syscall`,
//! which sets `errno`, and the job runs only while init waits for it.

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

#[cfg(test)]
mod tests {
    use super::*;

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
