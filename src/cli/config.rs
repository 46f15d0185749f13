//! `liftoff config`: the effective configuration (`--json`), or every
//! variable liftoff reads as a Markdown table (`--variables`).

use crate::config::{Config, Env};

/// `liftoff config --variables`.
pub fn variables() -> i32 {
    print!("{}", crate::config::vars::markdown_table());
    0
}

/// `liftoff config [--json]`: the effective configuration, secrets redacted;
/// warnings and errors on stderr; 78 when any error.
pub fn show(env: &Env, json: bool) -> i32 {
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
        crate::EXIT_CONFIG
    }
}
