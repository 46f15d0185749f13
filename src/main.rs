//! The `liftoff` command line: parse, call into the library, map errors to
//! exit codes. Nothing else lives here.

use clap::{Parser, Subcommand};

use liftoff::config::{Config, Env};
use liftoff::{EXIT_CONFIG, check, identity, launcher_log};

#[derive(Parser)]
#[command(name = "liftoff", version = liftoff::VERSION, about = "A lightweight launcher for private worker pools: sandboxed runs without Docker.")]
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
        /// Skip the connectivity check (TLS + MQTT CONNECT to each region).
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
    },
    /// Run the launcher: connect to the control plane and take runs until drained, cycled or stopped.
    Run,
    /// Print the version, git commit and build target.
    Version,
    /// Run a program in the sandbox: exit status is the job's, 128+N for signal N, 124 on timeout, 125 when liftoff failed.
    Exec(Box<liftoff::exec::ExecArgs>),
}

fn main() {
    let cli = Cli::parse();
    let env = Env::from_process();
    let code = match cli.command {
        Command::Check { json, offline } => {
            let (mut report, config, identity) = check::configuration(&env, identity::now());
            let (runtime, landlock) = match &config {
                Some(c) => (c.runtime, c.landlock),
                None => {
                    let c = Config::load(&env).config;
                    (c.runtime, c.landlock)
                }
            };
            liftoff::sandbox::hostcheck::push_checks(&mut report, runtime, landlock);
            if let Some(c) = &config {
                launcher_log::init(c.log_format, &c.log_filter);
                if let (false, Some(id)) = (offline, &identity) {
                    check::connectivity(c, id, &mut report);
                }
            }
            print!(
                "{}",
                if json {
                    report.to_json()
                } else {
                    report.to_text()
                }
            );
            report.exit_code()
        }
        Command::Config {
            variables: true, ..
        } => {
            print!("{}", liftoff::config::vars::markdown_table());
            0
        }
        Command::Config { json, .. } => show_config(&env, json),
        Command::Exec(args) => liftoff::exec::run(*args, &env),
        Command::Run => liftoff::launcher::run_from_env(&env),
        Command::Version => {
            println!("liftoff {}", liftoff::VERSION);
            0
        }
    };
    std::process::exit(code);
}

fn show_config(env: &Env, json: bool) -> i32 {
    let loaded = Config::load(env);
    let pairs = loaded.config.effective();
    if json {
        let map: serde_json::Map<String, serde_json::Value> =
            pairs.into_iter().map(|(k, v)| (k, v.into())).collect();
        println!("{}", serde_json::to_string_pretty(&map).unwrap_or_default());
    } else {
        for (k, v) in pairs {
            println!("{k}={v}");
        }
    }
    for w in &loaded.warnings {
        eprintln!("liftoff: warning: {w}");
    }
    for e in &loaded.errors {
        eprintln!("liftoff: error: {e}");
    }
    if loaded.errors.is_empty() {
        0
    } else {
        EXIT_CONFIG
    }
}
