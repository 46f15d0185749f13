//! `liftoff image pull|import|ls|rm|prune`: the runner image cache by hand,
//! for operators and air-gapped hosts. Each loads the configuration (78 on
//! errors), opens the cache ([`crate::image::Store::from_config`]) and does
//! one thing; failures print the image error and exit 1.

use std::path::PathBuf;

use clap::Subcommand;

use crate::config::{Config, Env, parse};
use crate::image::{Store, archive};

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Pull an image from its registry into the cache (asks the registry again even when cached).
    Pull { reference: String },
    /// Import an OCI image layout archive (skopeo copy ... oci-archive:FILE) or docker save output.
    Import {
        file: PathBuf,
        /// The name to give the image (default: the name the archive carries).
        #[arg(long)]
        name: Option<String>,
    },
    /// List cached images.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove an image name, and the image when no other name is left (not while a run uses it).
    Rm { reference: String },
    /// Prune the cache to LIFTOFF_IMAGE_CACHE_MAX_BYTES, or to --max-bytes (0: every image not in use).
    Prune {
        #[arg(long)]
        max_bytes: Option<String>,
    },
}

/// Runs one image command; returns the exit status.
pub fn run(cmd: ImageCommand, env: &Env) -> i32 {
    let config = match Config::load(env).into_result() {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("liftoff: error: {e}");
            }
            return crate::EXIT_CONFIG;
        }
    };
    let store = Store::from_config(&config);
    let mut log = |m: &str| eprintln!("liftoff: {m}");
    let result = match cmd {
        ImageCommand::Pull { reference } => {
            let agent = match crate::http::agent_from_config(&config) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("liftoff: error: {e}");
                    return crate::EXIT_CONFIG;
                }
            };
            store
                .ensure(&agent, &reference, true, &mut log)
                .map(|l| println!("{} {}", l.id(), l.root().display()))
        }
        ImageCommand::Import { file, name } => {
            archive::import(&store, &file, name.as_deref()).map(|(names, l)| {
                for n in names {
                    println!("{n} {} {}", l.id(), l.root().display());
                }
            })
        }
        ImageCommand::Ls { json } => store.list().map(|list| {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
                return;
            }
            println!(
                "{:<73} {:>12} {:>11} {:>6}  NAMES",
                "ID", "SIZE", "LAST USED", "IN USE"
            );
            for e in list {
                println!(
                    "{:<73} {:>12} {:>11} {:>6}  {}",
                    e.id,
                    e.size,
                    e.last_used,
                    if e.in_use { "yes" } else { "no" },
                    e.references.join(", ")
                );
            }
        }),
        ImageCommand::Rm { reference } => store.remove(&reference),
        ImageCommand::Prune { max_bytes } => {
            let budget = match max_bytes.as_deref().map(parse::byte_size) {
                None => store.budget,
                Some(Ok(b)) => b,
                Some(Err(e)) => {
                    eprintln!("liftoff: error: --max-bytes: {e}");
                    return crate::EXIT_CONFIG;
                }
            };
            store
                .prune(budget, true)
                .map(|freed| println!("freed {freed} bytes; the cache holds {}", store.usage()))
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("liftoff: error: {e}");
            1
        }
    }
}
