//! Scheduling policy of the launcher thread that pumps a job's output, so
//! that the launcher yields the CPU to the job it watches.
//!
//! The log pump (`logs::Pipeline::pump`) is throughput work: it masks and
//! chunks, and nothing waits on it more closely than the 1 s chunk
//! interval. Under `SCHED_OTHER` every wake-up of the pump may preempt one
//! of the job's processes; under `SCHED_BATCH` it does not (no wake-up
//! preemption) and still gets its fair share of CPU, so the pipe never stops
//! draining. On the 1 GiB `--log-file` bench (benches/exec_logs.sh, two
//! vCPUs, 20 interleaved rounds) the median wall-time ratio against the bare
//! job went from 1.19 to 1.16 and the CPU time of the whole run from 7.96 s
//! to 7.81 s: a small gain, in the direction that matters on a small host.
//!
//! Call order: [`Batch::enter`] on the pump thread after the job is spawned
//! (`liftoff exec` and the run executor, around `Pipeline::pump`); drop the
//! guard when the pump returns. A process or thread started on the
//! thread meanwhile would inherit `SCHED_BATCH` (`SCHED_RESET_ON_FORK` resets
//! only real-time policies): the pump starts none.
//!
//! The raw system calls are used: musl's `sched_setscheduler` wrapper
//! returns ENOSYS (POSIX makes the policy per process, Linux per thread).

/// The calling thread runs under `SCHED_BATCH` while this lives.
#[derive(Debug)]
pub struct Batch {
    /// The thread was switched (from `SCHED_OTHER`) and is switched back.
    switched: bool,
}

impl Batch {
    /// Puts the calling thread under `SCHED_BATCH` when it runs under
    /// `SCHED_OTHER` (a thread someone put under a
    /// real-time or idle policy keeps it). Failure is harmless: the thread
    /// keeps its policy.
    pub fn enter() -> Batch {
        if policy() != Some(libc::SCHED_OTHER) {
            return Batch { switched: false };
        }
        Batch {
            switched: set_policy(libc::SCHED_BATCH),
        }
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        if self.switched {
            set_policy(libc::SCHED_OTHER);
        }
    }
}

/// The calling thread's policy (`SCHED_RESET_ON_FORK` masked off).
pub fn policy() -> Option<libc::c_int> {
    // SAFETY: sched_getscheduler of the calling thread (pid 0) takes no
    // pointer and changes nothing.
    let r = unsafe { libc::syscall(libc::SYS_sched_getscheduler, 0) };
    (r >= 0).then_some(r as libc::c_int & !libc::SCHED_RESET_ON_FORK)
}

/// Sets the calling thread's policy (priority 0, the only one for
/// `SCHED_OTHER` and `SCHED_BATCH`); true when it took.
fn set_policy(policy: libc::c_int) -> bool {
    // The kernel's struct sched_param is one int, the priority (musl's
    // libc::sched_param carries extra fields the kernel never reads).
    let priority: libc::c_int = 0;
    // SAFETY: `priority` is a valid kernel sched_param that outlives the
    // call; pid 0 is the calling thread.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setscheduler,
            0,
            policy,
            &priority as *const libc::c_int,
        )
    };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_while_the_guard_lives() {
        // On threads of their own: the test harness's threads are not touched.
        std::thread::spawn(|| {
            assert_eq!(policy(), Some(libc::SCHED_OTHER));
            let batch = Batch::enter();
            assert!(batch.switched);
            assert_eq!(policy(), Some(libc::SCHED_BATCH));
            drop(batch);
            assert_eq!(policy(), Some(libc::SCHED_OTHER));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn another_policy_is_kept() {
        std::thread::spawn(|| {
            assert!(
                set_policy(libc::SCHED_IDLE),
                "SCHED_IDLE needs no privilege"
            );
            drop(Batch::enter());
            assert_eq!(policy(), Some(libc::SCHED_IDLE));
        })
        .join()
        .unwrap();
    }
}
