//! The sandbox settings the configuration gives every job: runtime, landlock
//! mode, network, and the memory, pids and CPU limits. Both callers start
//! here, `liftoff exec` (then its flags override) and a run's steps (then
//! the run's environment, mounts, root and working directory); so the
//! defaults exist once, and the run room never goes through the CLI.

use std::path::PathBuf;

use crate::config::Config;

use super::{Limits, SandboxSpec};

impl SandboxSpec {
    /// A spec for `argv` with `workspace` at /mnt/workspace and everything
    /// else as the configuration says (memory: `LIFTOFF_JOB_MEMORY`, else the
    /// host's memory less the launcher's share).
    pub fn from_config(config: &Config, workspace: impl Into<PathBuf>, argv: Vec<String>) -> Self {
        let mut spec = SandboxSpec::new(workspace, argv);
        spec.runtime = config.runtime;
        spec.landlock = config.landlock;
        spec.network = config.network.clone();
        spec.limits = Limits {
            memory: config.job_memory.or_else(super::auto_memory_limit),
            pids: Some(config.job_pids),
            cpus: config.job_cpus,
            ..Limits::default()
        };
        spec
    }
}
