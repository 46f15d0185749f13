//! One run, from assignment to result: the spec (`spec`), the worker-side
//! initialization policy (`policy`), the source archive and its safe
//! extraction (`source`), the job's environment and mounts (`env`), the shared
//! provider cache (`cache`) and the run's outputs (`outputs`).
//!
//! Order for one run: decrypt the state (`identity::decrypt_run_state`) →
//! `RunSpec::from_json` → `Policy::evaluate` → fetch and extract the source →
//! build environment and mounts → run each step in the sandbox with its output
//! through the log pipeline → upload outputs and artifacts → report.
//! `executor` does all of that for the worker ([`executor::SandboxExecutor`],
//! the real [`RunExecutor`]); `interface` is what the worker sees of a run;
//! `process` (debug builds only) is the unsandboxed development executor.

pub mod cache;
pub mod env;
pub mod error;
pub mod executor;
pub mod interface;
pub mod outputs;
pub mod policy;
#[cfg(debug_assertions)]
pub mod process;
pub mod source;
pub mod spec;

pub use interface::{RunEvent, RunEvents, RunExecutor};
