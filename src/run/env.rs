//! The job's environment, mounts and secrets for one run.
//!
//! Environment = a small base (PATH, HOME, USER, LANG) + the launcher's
//! variables named in `SPACELIFT_WHITELIST_ENVS` (`ro_NAME` for read-only runs
//! only, `wo_NAME` for write runs only) + the spec's variables + what liftoff
//! sets itself (run id, workspace, `TF_PLUGIN_CACHE_DIR` unless the run set
//! it). Nothing else of the launcher's environment reaches a run, and never
//! liftoff's own credentials (the pool token and key), even when whitelisted.
//! Mounts = `SPACELIFT_WORKER_EXTRA_MOUNTS` + the read-only or write variant
//! for the run's type + the run's provider-cache layer at the cache's path.
//! Secrets (for the log redactor) = secret run variables and the values of
//! `SPACELIFT_MASK_ENVS`; the pool token and key are added by
//! `logs::mask_pool_secrets`.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::{Config, Env, Mount, RunScope};

use super::spec::RunSpec;

/// Where the workspace appears inside the sandbox.
pub const WORKSPACE: &str = "/mnt/workspace";
/// The job's HOME (the seed's runner convention).
pub const HOME: &str = "/home/spacelift";
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Everything the sandbox and the log pipeline need to know about one run's
/// surroundings.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    pub env: BTreeMap<String, String>,
    pub mounts: Vec<Mount>,
    /// (name, value) pairs the redactor must mask.
    pub secrets: Vec<(String, String)>,
    /// Whitelisted variables the launcher does not have (logged, not fatal).
    pub missing_whitelist: Vec<String>,
}

/// Builds the run's environment, mounts and secrets.
/// `provider_layer` is the run's private provider-cache layer
/// (`cache::ProviderCache::layer`), mounted at the cache's own path.
pub fn build(spec: &RunSpec, config: &Config, launcher: &Env, provider_layer: &Path) -> Launch {
    let read_only = spec.run_type.read_only();
    let mut env = BTreeMap::new();
    for (k, v) in [
        ("PATH", PATH),
        ("HOME", HOME),
        ("USER", "spacelift"),
        ("LANG", "C.UTF-8"),
        ("TF_IN_AUTOMATION", "true"),
    ] {
        env.insert(k.to_string(), v.to_string());
    }
    let mut missing_whitelist = Vec::new();
    for w in &config.whitelist_envs {
        let applies = match w.scope {
            RunScope::All => true,
            RunScope::ReadOnly => read_only,
            RunScope::WriteOnly => !read_only,
        };
        // liftoff's own credentials never reach a job (config warns).
        if !applies || crate::config::vars::is_launcher_secret(&w.name) {
            continue;
        }
        match launcher.get(&w.name) {
            Some(v) => {
                env.insert(w.name.clone(), v.to_string());
            }
            None => missing_whitelist.push(w.name.clone()),
        }
    }
    for v in &spec.environment {
        env.insert(v.name.clone(), v.value.clone());
    }
    env.insert("SPACELIFT_RUN_ID".into(), spec.run_id.clone());
    env.insert("SPACELIFT_WORKSPACE_ROOT".into(), WORKSPACE.into());
    env.insert("SPACELIFT_RUN_TYPE".into(), spec.run_type.name().into());
    if !spec.stack.id.is_empty() {
        env.insert("SPACELIFT_STACK_ID".into(), spec.stack.id.clone());
    }
    let cache = config.provider_cache_dir.display().to_string();
    env.entry("TF_PLUGIN_CACHE_DIR".into()).or_insert(cache);

    let mut mounts = config.extra_mounts.clone();
    mounts.extend(
        if read_only {
            config.ro_extra_mounts.iter()
        } else {
            config.wo_extra_mounts.iter()
        }
        .cloned(),
    );
    mounts.push(Mount {
        host: provider_layer.to_path_buf(),
        sandbox: config.provider_cache_dir.clone(),
        read_only: false,
    });

    let mut secrets: Vec<(String, String)> = spec
        .secret_values()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for name in &config.mask_envs {
        if let Some(v) = env
            .get(name)
            .map(String::as_str)
            .or_else(|| launcher.get(name))
        {
            secrets.push((name.clone(), v.to_string()));
        }
    }
    Launch {
        env,
        mounts,
        secrets,
        missing_whitelist,
    }
}
