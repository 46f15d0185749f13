//! The `liftoff` command line: one file per command (`check`, `config`,
//! `exec`, `run`), parsed here with clap and dispatched by [`main`], which
//! returns the process exit status. Exit statuses are decided in one place
//! per command: 78 (`crate::EXIT_CONFIG`) for configuration errors
//! everywhere; `exec` adds the job's own status, 124 and 125.

use clap::{Parser, Subcommand};

use crate::config::Env;

pub mod check;
pub mod config;
pub mod exec;
pub mod run;

#[derive(Parser)]
#[command(name = "liftoff", version = crate::VERSION, about = "A lightweight launcher for private worker pools: sandboxed runs without Docker.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check configuration, pool identity and host; exit 0 when this host can run the launcher, 78 on configuration errors.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Skip the connectivity check (TLS + MQTT CONNECT or a long-poll request to each region).
        #[arg(long)]
        offline: bool,
    },
    /// Print the effective configuration, secrets redacted.
    Config {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
        /// Print every variable liftoff reads, with its default and meaning, as a Markdown table.
        #[arg(long, conflicts_with = "json")]
        variables: bool,
        /// Print every variable commented out with its default and help, as packaging/liftoff.env carries them.
        #[arg(long, conflicts_with_all = ["json", "variables"])]
        example_env: bool,
    },
    /// Run the launcher: connect to the control plane and take runs until drained, cycled or stopped.
    Run,
    /// Print the version, git commit and build target.
    Version,
    /// Run a program in the sandbox: exit status is the job's, 128+N for signal N, 124 on timeout, 125 when liftoff failed.
    Exec(Box<exec::ExecArgs>),
}

/// Parses the command line and runs the command; returns the exit status.
pub fn main() -> i32 {
    let cli = Cli::parse();
    let env = Env::from_process();
    match cli.command {
        Command::Check { json, offline } => check::run(&env, json, offline),
        Command::Config {
            variables: true, ..
        } => config::variables(),
        Command::Config {
            example_env: true, ..
        } => {
            print!("{}", crate::config::vars::example_env());
            0
        }
        Command::Config { json, .. } => config::show(&env, json),
        Command::Exec(args) => exec::run(*args, &env),
        Command::Run => run::run(&env),
        Command::Version => {
            println!("liftoff {}", crate::VERSION);
            0
        }
    }
}
