//! `liftoff run`: the launcher itself; all of it is wiring in
//! `crate::launcher`, which returns the exit status.

use crate::config::Env;

/// Runs the launcher until it is drained, cycled, reset or stopped.
pub fn run(env: &Env) -> i32 {
    crate::launcher::run_from_env(env)
}
