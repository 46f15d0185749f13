//! The sandbox's init (pid 1 of the job's pid namespace): reaps every
//! orphan, forwards the launcher's signals to the whole tree, and when the
//! job itself exits reports its wait status and ends, which makes the kernel
//! kill whatever is left in the namespace (daemonized grandchildren too).
//!
//! Order: [`block_all`] before forking the job (no SIGCHLD is lost), the job
//! calls [`reset_signals`], init calls [`serve`].

/// Blocks every signal; returns the set (for sigwaitinfo).
pub(crate) fn block_all() -> libc::sigset_t {
    // SAFETY: sigset operations on a stack value, then sigprocmask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut set);
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

/// The job: no blocked signals, every disposition back to default (the
/// launcher ignores SIGPIPE, as Rust programs do). Raw system calls
/// ([`super::sys`]): `errno` is left alone.
pub(crate) fn reset_signals() {
    // The kernel's struct sigaction with SIG_DFL (0), no flags, no mask: all
    // zero, whatever the architecture's field order.
    let dfl = [0u64; 4];
    let empty = 0u64;
    let last = libc::SIGRTMIN();
    // SAFETY: rt_sigaction/rt_sigprocmask with valid pointers and the
    // kernel's sigset size (8); SIGKILL/SIGSTOP are skipped.
    unsafe {
        for sig in 1..last {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                let _ = super::sys::call(
                    libc::SYS_rt_sigaction,
                    [sig as usize, dfl.as_ptr() as usize, 0, 8, 0, 0],
                );
            }
        }
        let _ = super::sys::call(
            libc::SYS_rt_sigprocmask,
            [
                libc::SIG_SETMASK as usize,
                &empty as *const u64 as usize,
                0,
                8,
                0,
                0,
            ],
        );
    }
}

/// Init's loop. Never returns.
pub(crate) fn serve(job: libc::pid_t, status_fd: i32, set: &libc::sigset_t) -> ! {
    loop {
        // SAFETY: zeroed siginfo is a valid out-parameter.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waiting on the blocked set.
        let sig = unsafe { libc::sigwaitinfo(set, &mut info) };
        if sig < 0 {
            continue;
        }
        if sig == libc::SIGCHLD {
            loop {
                let mut status = 0;
                // SAFETY: reaping any child without blocking.
                let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
                if pid <= 0 {
                    break;
                }
                if pid == job {
                    finish(status, status_fd);
                }
            }
        } else {
            // Forward to every process of the namespace (init excluded).
            // SAFETY: kill(-1) from pid 1 reaches only this namespace.
            unsafe { libc::kill(-1, sig) };
        }
    }
}

fn finish(status: i32, status_fd: i32) -> ! {
    let buf = status.to_ne_bytes();
    // SAFETY: kill the rest of the namespace, report, exit.
    unsafe {
        libc::kill(-1, libc::SIGKILL);
        libc::write(status_fd, buf.as_ptr() as *const libc::c_void, buf.len());
        let code = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            128 + libc::WTERMSIG(status)
        };
        libc::_exit(code)
    }
}
