//! Resource limits of the job (setrlimit): no core dumps, a bounded number
//! of open files. Order: [`plan`] in the parent, [`apply`] in the job before
//! exec (any time after fork; limits are inherited by the whole tree).

/// One limit: resource, soft and hard value.
#[derive(Debug, Clone, Copy)]
pub struct Rlimit {
    pub resource: libc::c_int,
    pub value: u64,
}

/// The job's limits: RLIMIT_CORE 0, RLIMIT_NOFILE `nofile`.
pub fn plan(nofile: u64) -> Vec<Rlimit> {
    vec![
        Rlimit {
            resource: libc::RLIMIT_CORE as libc::c_int,
            value: 0,
        },
        Rlimit {
            resource: libc::RLIMIT_NOFILE as libc::c_int,
            value: nofile,
        },
    ]
}

/// Child side: applies the limits. A hard limit above the launcher's own
/// cannot be raised: the launcher's hard limit is kept then. Raw system
/// calls ([`super::sys`]): `errno` is left alone.
pub(crate) fn apply(limits: &[Rlimit]) -> Result<(), i32> {
    for l in limits {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit64 of this process into a valid struct.
        let _ = unsafe {
            super::sys::call(
                libc::SYS_prlimit64,
                [
                    0,
                    l.resource as usize,
                    0,
                    &mut cur as *mut libc::rlimit as usize,
                    0,
                    0,
                ],
            )
        };
        let v = if cur.rlim_max != libc::RLIM_INFINITY && l.value > cur.rlim_max {
            cur.rlim_max
        } else {
            l.value
        };
        let new = libc::rlimit {
            rlim_cur: v,
            rlim_max: v,
        };
        // SAFETY: prlimit64 of this process with a valid struct.
        unsafe {
            super::sys::call(
                libc::SYS_prlimit64,
                [
                    0,
                    l.resource as usize,
                    &new as *const libc::rlimit as usize,
                    0,
                    0,
                    0,
                ],
            )
        }?;
    }
    Ok(())
}
