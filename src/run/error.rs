//! Why a run did not finish, typed by the phase it stopped in.
//!
//! This is the one place where a run's ending becomes its terminal event:
//! [`RunError::rejected`] decides between `rejected` (nothing of the run
//! ran: the policy said no, or could not say) and `failed`, and `Display`
//! gives the reason. The executor builds a variant where the failure
//! happens and never looks inside a message to classify it.

use std::fmt;

use crate::sandbox;

use super::policy::PolicyError;
use super::source::SourceError;

/// Why the run executor could not be set up at start-up (the launcher
/// stops with it).
#[derive(Debug)]
pub enum SetupError {
    /// The run initialization policy could not be loaded.
    Policy(PolicyError),
    /// The provider cache directory could not be opened.
    Cache(super::cache::CacheError),
    /// The HTTP agent could not be built (a proxy, `ADDITIONAL_ROOT_CAS`).
    Agent(String),
    /// The tool cache could not be opened.
    Tools(String),
    /// The state directory could not be prepared.
    StateDir(String),
}

impl fmt::Display for SetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SetupError::Policy(e) => {
                write!(f, "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY: {e}")
            }
            SetupError::Cache(e) => write!(f, "LIFTOFF_PROVIDER_CACHE_DIR: {e}"),
            SetupError::Agent(m) | SetupError::Tools(m) | SetupError::StateDir(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for SetupError {}

/// Why a run could not be started at all (the worker reports it failed
/// with this reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The run's thread or process could not be started.
    Spawn(String),
    /// The assignment cannot be run by this executor (the development
    /// executor's state has no command).
    Assignment(String),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Spawn(m) | StartError::Assignment(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for StartError {}

/// A run that ended without an exit code of its own.
#[derive(Debug)]
pub enum RunError {
    /// The run state could not be opened: no key, not an envelope, cannot
    /// be decrypted, not a valid spec, or not the assignment's run.
    State(String),
    /// The run initialization policy denied the run: its deny messages.
    Denied(Vec<String>),
    /// The run initialization policy could not be evaluated; the run is
    /// rejected rather than run unchecked.
    Policy(PolicyError),
    /// The run's log pipeline could not be started.
    LogStart(crate::logs::LogError),
    /// The run's log could no longer be kept (spool or delivery) while a
    /// step ran: the step was stopped.
    Log(crate::logs::LogError),
    /// The workspace could not be prepared.
    Workspace(String),
    /// The run's provider-cache layer could not be built.
    Cache(super::cache::CacheError),
    /// The runner image could not be pulled, verified or unpacked.
    Image(crate::image::Error),
    /// The source could not be resolved, fetched or extracted (or its
    /// download outlived the run timeout).
    Source(SourceError),
    /// The run's OpenTofu/Terraform could not be provided (found, verified,
    /// cached).
    Tool(crate::tools::ToolError),
    /// A step's sandbox did not start.
    Sandbox { step: String, error: sandbox::Error },
    /// A step could not be run or waited for after its sandbox started.
    Step { step: String, message: String },
    /// A timeout (run, no output) killed a step; the log already says which.
    TimedOut { step: String, reason: String },
    /// The run was cancelled: before the first step (`None`), or during or
    /// right after the named step.
    Cancelled { step: Option<String> },
    /// The outputs or an artifact could not be uploaded.
    Upload(String),
}

impl RunError {
    /// True when nothing of the run ran because the policy denied it or
    /// could not be evaluated: the terminal event is `rejected`.
    pub fn rejected(&self) -> bool {
        matches!(self, RunError::Denied(_) | RunError::Policy(_))
    }
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunError::State(m) | RunError::Workspace(m) | RunError::Upload(m) => f.write_str(m),
            RunError::LogStart(e) => write!(f, "the run log cannot be started: {e}"),
            RunError::Log(e) => write!(f, "{e}"),
            RunError::Source(e) => write!(f, "{e}"),
            RunError::Tool(e) => write!(f, "{e}"),
            RunError::Image(e) => write!(f, "{e}"),
            RunError::Cache(e) => write!(f, "{e}"),
            RunError::Denied(deny) => write!(
                f,
                "rejected by the run initialization policy: {}",
                deny.join("; ")
            ),
            RunError::Policy(e) => write!(
                f,
                "rejected: the run initialization policy failed to evaluate: {e}"
            ),
            RunError::Sandbox { step, error } => {
                write!(f, "step {step}: the sandbox did not start: {error}")
            }
            RunError::Step { step, message }
            | RunError::TimedOut {
                step,
                reason: message,
            } => write!(f, "step {step}: {message}"),
            RunError::Cancelled { step: None } => f.write_str("cancelled before the first step"),
            RunError::Cancelled { step: Some(s) } => write!(f, "cancelled during step {s}"),
        }
    }
}

impl std::error::Error for RunError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_policy_rejects() {
        assert!(RunError::Denied(vec!["no".into()]).rejected());
        assert!(RunError::Policy(PolicyError::Evaluate("undefined function".into())).rejected());
        for failed in [
            RunError::State("x".into()),
            RunError::Source(SourceError::Unsafe("rejected: looks like a prefix".into())),
            RunError::Cancelled { step: None },
            RunError::Upload("x".into()),
        ] {
            assert!(!failed.rejected(), "{failed}");
        }
    }

    #[test]
    fn reasons_read_as_before() {
        assert_eq!(
            RunError::Denied(vec!["a".into(), "b".into()]).to_string(),
            "rejected by the run initialization policy: a; b"
        );
        assert_eq!(
            RunError::Cancelled {
                step: Some("plan".into())
            }
            .to_string(),
            "cancelled during step plan"
        );
        assert_eq!(
            RunError::TimedOut {
                step: "plan".into(),
                reason: "no output for 1s: killed".into()
            }
            .to_string(),
            "step plan: no output for 1s: killed"
        );
    }
}
