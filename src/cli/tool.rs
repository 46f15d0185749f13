//! `liftoff tool install|ls|rm`: pre-seeds this host's tool cache (before
//! the network is cut), lists it, removes a version.
//!
//! Each command loads the configuration, keeps only the problems of the
//! variables it uses (the tool, proxy and CA ones: a host being prepared
//! needs no pool token yet), opens [`crate::tools::Tools`] and acts.
//! Exit: 0 done, 1 the tool could not be installed or removed, 78 a
//! configuration error.

use clap::Subcommand;

use crate::config::{Config, Env};
use crate::tools::version::Version;
use crate::tools::{Settings, ToolName, Tools};

#[derive(Subcommand)]
pub enum ToolCommand {
    /// Download, verify and cache a version (NAME: opentofu or terraform; VERSION: 1.8.5 or a constraint such as "~> 1.8").
    Install { name: String, version: String },
    /// List the cached versions: tool, version, platform, size, last use, in use.
    Ls {
        /// Print as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a cached version (refused while a run uses it).
    Rm { name: String, version: String },
}

fn relevant(var: &str) -> bool {
    var.starts_with("LIFTOFF_TOOLS_")
        || var.ends_with("_PROXY")
        || var.ends_with("_proxy")
        || var == "ADDITIONAL_ROOT_CAS"
}

fn open(env: &Env) -> Result<Tools, i32> {
    let loaded = Config::load(env);
    let mut bad = false;
    for e in loaded.errors.iter().filter(|e| relevant(&e.var)) {
        eprintln!("liftoff: error: {e}");
        bad = true;
    }
    if bad {
        return Err(crate::EXIT_CONFIG);
    }
    let config = loaded.config;
    let agent = crate::http::agent_from_config(&config).map_err(|e| {
        eprintln!("liftoff: error: {e}");
        crate::EXIT_CONFIG
    })?;
    Tools::open(Settings::from_config(&config), agent).map_err(|e| {
        eprintln!("liftoff: error: {e}");
        crate::EXIT_CONFIG
    })
}

fn name(text: &str) -> Result<ToolName, i32> {
    ToolName::parse(text).map_err(|e| {
        eprintln!("liftoff: error: {e}");
        crate::EXIT_CONFIG
    })
}

/// Runs one `liftoff tool` command; returns the exit status.
pub fn run(cmd: ToolCommand, env: &Env) -> i32 {
    match run_inner(cmd, env) {
        Ok(()) => 0,
        Err(code) => code,
    }
}

fn run_inner(cmd: ToolCommand, env: &Env) -> Result<(), i32> {
    match cmd {
        ToolCommand::Install { name: n, version } => {
            let tool = name(&n)?;
            let tools = open(env)?;
            let lease = tools
                .provide(tool, &version, &crate::tools::Bound::default(), &mut |m| {
                    eprintln!("liftoff: {m}")
                })
                .map_err(|e| {
                    eprintln!("liftoff: error: {e}");
                    1
                })?;
            println!(
                "{} {} installed: {}",
                tool.name(),
                lease.version,
                lease.binary.display()
            );
        }
        ToolCommand::Ls { json } => {
            let tools = open(env)?;
            let list = tools.cache().list();
            let age = |t: std::time::SystemTime| {
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            };
            if json {
                let items: Vec<serde_json::Value> = list
                    .iter()
                    .map(|i| {
                        serde_json::json!({
                            "tool": i.tool, "version": i.version, "platform": i.platform,
                            "bytes": i.bytes, "last_used": age(i.last_used), "in_use": i.in_use,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(items));
            } else {
                println!("TOOL\tVERSION\tPLATFORM\tBYTES\tLAST_USED\tIN_USE");
                for i in &list {
                    println!(
                        "{}\t{}\t{}\t{}\t{}\t{}",
                        i.tool,
                        i.version,
                        i.platform,
                        i.bytes,
                        crate::time::format_time(age(i.last_used) as i64),
                        if i.in_use { "yes" } else { "no" }
                    );
                }
            }
        }
        ToolCommand::Rm { name: n, version } => {
            let tool = name(&n)?;
            let v = Version::parse(&version).map_err(|e| {
                eprintln!("liftoff: error: {e}");
                crate::EXIT_CONFIG
            })?;
            let tools = open(env)?;
            match tools.cache().remove(tool, &v) {
                Ok(true) => println!("{} {v} removed", tool.name()),
                Ok(false) => {
                    eprintln!(
                        "liftoff: error: {} {v} is not cached (see liftoff tool ls)",
                        tool.name()
                    );
                    return Err(1);
                }
                Err(e) => {
                    eprintln!("liftoff: error: {e}");
                    return Err(1);
                }
            }
        }
    }
    Ok(())
}
