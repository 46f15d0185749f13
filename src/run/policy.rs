//! The worker-side run initialization policy
//! (`SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY`): a Rego file,
//! `package spacelift`, evaluated with regorus before a run starts.
//!
//! [`Policy::load`] at start-up (a policy that does not parse or evaluate is a
//! configuration error: exit 78 with the parser's message); then, per run,
//! [`input`] builds the input document and [`Policy::evaluate`] returns the
//! deny messages (non-empty: the run is rejected) and whether `sample` is true
//! (the launcher then logs input and result to its stderr).

use std::path::Path;
use std::time::Duration;

use regorus::utils::limits::ExecutionTimerConfig;
use serde_json::{Value, json};

use super::spec::RunSpec;

/// How long one evaluation may take before it counts as a denial.
pub const EVAL_LIMIT: Duration = Duration::from_secs(2);

/// Shown instead of secret variable values in the policy input.
pub const MASKED: &str = "<masked>";

/// A loaded, checked policy.
#[derive(Clone)]
pub struct Policy {
    engine: regorus::Engine,
}

/// What the policy said about one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Empty: the run may start.
    pub deny: Vec<String>,
    /// `sample` was true: log the input and this decision.
    pub sample: bool,
}

impl std::fmt::Debug for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Policy(package spacelift)")
    }
}

/// Why a policy could not be loaded or evaluated. Loading errors are
/// configuration errors (the launcher exits 78); an evaluation error
/// rejects the run it was evaluated for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyError {
    /// The policy file cannot be read.
    Read(String),
    /// The policy does not parse.
    Parse(String),
    /// The policy is not `package spacelift` (the package it is).
    Package(String),
    /// Evaluating `deny` or `sample` failed (at load, on a sample input; or
    /// for one run's input), or ran past its time limit.
    Evaluate(String),
}

impl std::fmt::Display for PolicyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PolicyError::Read(m) | PolicyError::Evaluate(m) => f.write_str(m),
            PolicyError::Parse(e) => {
                write!(f, "the run initialization policy does not parse: {e}")
            }
            PolicyError::Package(p) => write!(
                f,
                "the run initialization policy is {p}, but must be `package spacelift`"
            ),
        }
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// Reads, parses and test-evaluates the policy at `path`.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| PolicyError::Read(format!("{}: cannot be read: {e}", path.display())))?;
        Self::from_source(&path.display().to_string(), &text)
    }

    pub fn from_source(name: &str, rego: &str) -> Result<Policy, PolicyError> {
        let mut engine = regorus::Engine::new();
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: EVAL_LIMIT,
            check_interval: std::num::NonZeroU32::MIN.saturating_add(255),
        });
        let package = engine
            .add_policy(name.to_string(), rego.to_string())
            .map_err(|e| PolicyError::Parse(e.to_string()))?;
        if package != "data.spacelift" {
            return Err(PolicyError::Package(
                package.trim_start_matches("data.").to_string(),
            ));
        }
        let policy = Policy { engine };
        // A trial evaluation catches what parsing does not (unknown functions,
        // type errors in rule heads).
        policy.evaluate(&sample_input()).map_err(|e| {
            PolicyError::Evaluate(format!(
                "the run initialization policy does not evaluate: {e}"
            ))
        })?;
        Ok(policy)
    }

    /// Evaluates `deny` and `sample` for one input document.
    pub fn evaluate(&self, input: &Value) -> Result<Decision, PolicyError> {
        let mut engine = self.engine.clone();
        let input = regorus::Value::from_json_str(&input.to_string())
            .map_err(|e| PolicyError::Evaluate(format!("input: {e}")))?;
        engine.set_input(input);
        let deny = query(&mut engine, "data.spacelift.deny")?;
        let deny = match deny {
            regorus::Value::Undefined | regorus::Value::Null => Vec::new(),
            regorus::Value::Set(set) => set.iter().map(message).collect(),
            regorus::Value::Array(items) => items.iter().map(message).collect(),
            regorus::Value::Bool(false) => Vec::new(),
            other => vec![message(&other)],
        };
        let sample = matches!(
            query(&mut engine, "data.spacelift.sample")?,
            regorus::Value::Bool(true)
        );
        Ok(Decision { deny, sample })
    }
}

/// The value of `path`, or Undefined when no rule defines it.
fn query(engine: &mut regorus::Engine, path: &str) -> Result<regorus::Value, PolicyError> {
    let results = engine
        .eval_query(path.to_string(), false)
        .map_err(|e| PolicyError::Evaluate(e.to_string()))?;
    Ok(results
        .result
        .into_iter()
        .next()
        .and_then(|r| r.expressions.into_iter().next())
        .map_or(regorus::Value::Undefined, |e| e.value))
}

fn message(v: &regorus::Value) -> String {
    match v {
        regorus::Value::String(s) => s.to_string(),
        other => other.to_json_str().unwrap_or_else(|_| "denied".into()),
    }
}

/// The image reference a run uses: `runner.image`, else `default_image`
/// (`SPACELIFT_DEFAULT_RUNNER_IMAGE`); `None` when the spec gives a
/// `runner.root` or neither names an image (the host's /usr). Empty strings
/// count as unset.
pub fn docker_image<'a>(spec: &'a RunSpec, default_image: Option<&'a str>) -> Option<&'a str> {
    if spec.runner.root.is_some() {
        return None;
    }
    spec.runner
        .image
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(default_image.filter(|s| !s.is_empty()))
}

/// The input document, in the seed's worker-side shape. Secret variable values
/// are replaced by [`MASKED`]. `default_image` is
/// `SPACELIFT_DEFAULT_RUNNER_IMAGE`: with the spec's `runner.image` it makes
/// `static_run_environment.docker_image`, the reference the run's root comes
/// from (null for a `runner.root` or the host's /usr).
pub fn input(spec: &RunSpec, worker_version: &str, default_image: Option<&str>) -> Value {
    let env: serde_json::Map<String, Value> = spec
        .environment
        .iter()
        .map(|v| {
            (
                v.name.clone(),
                Value::String(if v.secret {
                    MASKED.into()
                } else {
                    v.value.clone()
                }),
            )
        })
        .collect();
    json!({
        "run": {
            "id": spec.run_id,
            "type": spec.run_type.name(),
            "state": spec.state.as_deref().unwrap_or("PREPARING"),
            "commit": {
                "author": spec.commit.author,
                "branch": spec.commit.branch,
                "created_at": spec.commit.created_at,
                "message": spec.commit.message,
                "hash": spec.commit.hash,
            },
            "triggered_by": spec.triggered_by,
            "user_provided_metadata": spec.user_provided_metadata,
        },
        "static_run_environment": {
            "stack_id": spec.stack.id,
            "stack_slug": spec.stack.slug,
            "stack_name": spec.stack.name,
            "run_type": spec.run_type.name(),
            "run_ulid": spec.run_id,
            "commit_sha": spec.commit.hash,
            "commit_branch": spec.commit.branch,
            "environment_variables": env,
            "docker_image": docker_image(spec, default_image),
            "runner_image": spec.runner.image,
            "runner_root": spec.runner.root,
        },
        "worker_version": worker_version,
    })
}

fn sample_input() -> Value {
    json!({
        "run": {"id": "01SAMPLE", "type": "PROPOSED", "state": "PREPARING",
                "commit": {"author": "a", "branch": "main", "created_at": 0, "message": "m", "hash": "0"},
                "triggered_by": null, "user_provided_metadata": []},
        "static_run_environment": {"stack_id": "s", "stack_slug": "s", "stack_name": "s", "run_type": "PROPOSED",
                "run_ulid": "01SAMPLE", "commit_sha": "0", "commit_branch": "main", "environment_variables": {},
                "docker_image": null, "runner_image": null, "runner_root": null},
        "worker_version": "0",
    })
}
