//! The run spec: what one run is, as the control plane sends it inside the
//! encrypted run state of an `assign` (or as a plain file for
//! `liftoff exec --spec`). Every field is documented in docs/protocol.md.
//!
//! [`RunSpec::from_json`] parses and validates; nothing downstream re-checks.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::parse;

/// Read-only runs (proposed: plan) or write runs (tracked: apply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunType {
    Proposed,
    Tracked,
}

impl RunType {
    pub fn read_only(self) -> bool {
        self == RunType::Proposed
    }

    pub fn name(self) -> &'static str {
        match self {
            RunType::Proposed => "PROPOSED",
            RunType::Tracked => "TRACKED",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    pub id: String,
    #[serde(default)]
    pub slug: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Commit {
    #[serde(default)]
    pub hash: String,
    #[serde(default)]
    pub branch: String,
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub message: String,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created_at: i64,
}

/// One environment variable of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Variable {
    pub name: String,
    pub value: String,
    /// Secret values are masked in logs and in the policy input.
    #[serde(default)]
    pub secret: bool,
}

/// One step: a program with arguments, or a shell line run by `/bin/sh -c`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    pub name: String,
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub shell: Option<String>,
    /// The step prints the run's outputs as JSON (`tofu output -json`): its
    /// output is parsed and uploaded, not logged.
    #[serde(default)]
    pub outputs: bool,
}

impl Step {
    /// The argv to execute.
    pub fn command(&self) -> Vec<String> {
        match &self.shell {
            Some(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
            None => self.argv.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    /// `https://…` (a pre-signed tar.gz) or `private://<vcs pool>/<path>`.
    pub url: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Path relative to the workspace source directory.
    pub path: String,
    pub url: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uploads {
    /// Pre-signed PUT URLs for log chunks 0, 1, 2, … (more may arrive in
    /// `uploads` messages).
    #[serde(default)]
    pub logs: Vec<String>,
    /// Pre-signed PUT URL for the outputs document.
    #[serde(default)]
    pub outputs: Option<String>,
    #[serde(default)]
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timeouts {
    /// Go durations; the stricter of these and the launcher's own wins.
    #[serde(default)]
    pub run: Option<String>,
    #[serde(default)]
    pub logs: Option<String>,
}

/// Where the job's root filesystem comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Runner {
    /// A runner image unpacked on this host (absolute path); the host's /usr
    /// and friends when absent.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// The image the plane would use, for the policy input only.
    #[serde(default)]
    pub image: Option<String>,
}

/// The OpenTofu or Terraform the run's steps call: verified, mounted
/// read-only and on PATH (`crate::tools`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tool {
    pub name: crate::tools::ToolName,
    /// A version (`1.8.5`) or a constraint (`~> 1.8`), newest match.
    pub version: String,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    pub run_id: String,
    pub run_type: RunType,
    #[serde(default)]
    pub state: Option<String>,
    #[serde(default)]
    pub stack: Stack,
    #[serde(default)]
    pub commit: Commit,
    #[serde(default)]
    pub triggered_by: Option<String>,
    #[serde(default)]
    pub user_provided_metadata: Vec<String>,
    #[serde(default)]
    pub environment: Vec<Variable>,
    pub steps: Vec<Step>,
    #[serde(default)]
    pub source: Option<Source>,
    #[serde(default)]
    pub uploads: Uploads,
    #[serde(default)]
    pub timeouts: Timeouts,
    #[serde(default)]
    pub runner: Runner,
    #[serde(default)]
    pub tool: Option<Tool>,
}

/// Most steps a run may have.
pub const MAX_STEPS: usize = 64;
/// Most environment variables a run may have.
pub const MAX_VARIABLES: usize = 4096;
/// Largest spec accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 4 << 20;
/// Longest step name, in bytes.
pub const MAX_STEP_NAME: usize = 256;

/// A string that reaches liftoff's own log lines (step names, artifact
/// paths, URLs): no control characters (a newline or an escape sequence
/// could forge a line), at most `max` bytes.
fn loggable(field: &str, text: &str, max: usize) -> Result<(), String> {
    if text.len() > max {
        return Err(format!(
            "run spec: {field} is {} bytes long; at most {max} are allowed",
            text.len()
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(format!(
            "run spec: {field} {:?} contains a control character (newline, escape...); use printable text",
            text.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

impl RunSpec {
    /// Parses and validates a spec. The error names the field and what is
    /// expected.
    pub fn from_json(bytes: &[u8]) -> Result<RunSpec, String> {
        if bytes.len() > MAX_SPEC_BYTES {
            return Err(format!(
                "run spec is {} bytes, more than the {MAX_SPEC_BYTES}-byte limit",
                bytes.len()
            ));
        }
        let spec: RunSpec =
            serde_json::from_slice(bytes).map_err(|e| format!("run spec is not valid: {e}"))?;
        spec.validate()?;
        Ok(spec)
    }

    fn validate(&self) -> Result<(), String> {
        if self.run_id.is_empty()
            || self.run_id.len() > crate::link::protocol::MAX_ID_LEN
            || !self
                .run_id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("run spec: run_id must be 1 to 64 letters, digits, - or _".into());
        }
        if self.steps.is_empty() || self.steps.len() > MAX_STEPS {
            return Err(format!("run spec: steps must hold 1 to {MAX_STEPS} steps"));
        }
        for (i, s) in self.steps.iter().enumerate() {
            loggable(&format!("steps[{i}].name"), &s.name, MAX_STEP_NAME)?;
            if s.name.trim().is_empty() {
                return Err(format!("run spec: steps[{i}].name is empty: name the step"));
            }
            match (&s.shell, s.argv.is_empty()) {
                (Some(_), false) => {
                    return Err(format!(
                        "run spec: steps[{i}] ({}) has both argv and shell: give one",
                        s.name
                    ));
                }
                (None, true) => {
                    return Err(format!(
                        "run spec: steps[{i}] ({}) has neither argv nor shell",
                        s.name
                    ));
                }
                (Some(line), true) if line.trim().is_empty() => {
                    return Err(format!(
                        "run spec: steps[{i}] ({}) has an empty shell line",
                        s.name
                    ));
                }
                _ => {}
            }
            if s.argv
                .iter()
                .chain(s.shell.iter())
                .any(|a| a.contains('\0'))
            {
                return Err(format!(
                    "run spec: steps[{i}] ({}) contains a NUL byte",
                    s.name
                ));
            }
        }
        if self.environment.len() > MAX_VARIABLES {
            return Err(format!(
                "run spec: more than {MAX_VARIABLES} environment variables"
            ));
        }
        let mut seen = BTreeSet::new();
        for v in &self.environment {
            if !parse::is_env_name(&v.name) {
                return Err(format!(
                    "run spec: environment variable name {:?} is not valid",
                    v.name
                ));
            }
            if v.value.contains('\0') {
                return Err(format!(
                    "run spec: environment variable {} contains a NUL byte",
                    v.name
                ));
            }
            if !seen.insert(v.name.as_str()) {
                return Err(format!(
                    "run spec: environment variable {} is given twice",
                    v.name
                ));
            }
        }
        for (field, t) in [
            ("timeouts.run", &self.timeouts.run),
            ("timeouts.logs", &self.timeouts.logs),
        ] {
            if let Some(t) = t {
                parse::bounded_duration(t, parse::MAX_TIMEOUT)
                    .map_err(|e| format!("run spec: {field} {t:?}: {e}"))?;
            }
        }
        if let Some(root) = &self.runner.root {
            parse::image_root(root).map_err(|e| format!("run spec: runner.root {e}"))?;
        }
        if let Some(t) = &self.tool {
            crate::tools::version::Constraint::parse(&t.version)
                .map_err(|e| format!("run spec: tool.{e}"))?;
        }
        if let Some(src) = &self.source {
            loggable("source.url", &src.url, 8192)?;
        }
        for (i, url) in self.uploads.logs.iter().enumerate() {
            loggable(&format!("uploads.logs[{i}]"), url, 8192)?;
        }
        if let Some(url) = &self.uploads.outputs {
            loggable("uploads.outputs", url, 8192)?;
        }
        for (i, a) in self.uploads.artifacts.iter().enumerate() {
            loggable(&format!("uploads.artifacts[{i}].path"), &a.path, 4096)?;
            loggable(&format!("uploads.artifacts[{i}].url"), &a.url, 8192)?;
            let p = std::path::Path::new(&a.path);
            if p.is_absolute()
                || p.components().any(|c| c == std::path::Component::ParentDir)
                || a.path.is_empty()
            {
                return Err(format!(
                    "run spec: uploads.artifacts[{i}].path must be relative to the source directory, without .."
                ));
            }
        }
        Ok(())
    }

    /// The stricter (shorter) of the spec's timeout and the launcher's.
    pub fn run_timeout(&self, launcher: Duration) -> Duration {
        stricter(self.timeouts.run.as_deref(), launcher)
    }

    pub fn logs_timeout(&self, launcher: Duration) -> Duration {
        stricter(self.timeouts.logs.as_deref(), launcher)
    }

    /// Values that must never reach a log: the secret variables'.
    pub fn secret_values(&self) -> impl Iterator<Item = (&str, &str)> {
        self.environment
            .iter()
            .filter(|v| v.secret)
            .map(|v| (v.name.as_str(), v.value.as_str()))
    }
}

fn stricter(spec: Option<&str>, launcher: Duration) -> Duration {
    spec.and_then(|t| parse::duration(t).ok())
        .map_or(launcher, |d| d.min(launcher))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> serde_json::Value {
        serde_json::json!({"run_id": "01JRUN", "run_type": "proposed", "steps": [{"name": "hello", "argv": ["echo", "hi"]}]})
    }

    #[test]
    fn minimal_and_full_specs() {
        let s = RunSpec::from_json(minimal().to_string().as_bytes()).unwrap();
        assert!(s.run_type.read_only());
        assert_eq!(s.steps[0].command(), vec!["echo", "hi"]);
        let mut j = minimal();
        j["run_type"] = "tracked".into();
        j["steps"] = serde_json::json!([{"name": "plan", "shell": "tofu plan"}, {"name": "out", "argv": ["tofu", "output", "-json"], "outputs": true}]);
        j["environment"] = serde_json::json!([{"name": "A", "value": "1"}, {"name": "S", "value": "hunter22", "secret": true}]);
        j["timeouts"] = serde_json::json!({"run": "30m", "logs": "2h"});
        let s = RunSpec::from_json(j.to_string().as_bytes()).unwrap();
        assert!(!s.run_type.read_only());
        assert_eq!(s.steps[0].command(), vec!["/bin/sh", "-c", "tofu plan"]);
        assert_eq!(
            s.secret_values().collect::<Vec<_>>(),
            vec![("S", "hunter22")]
        );
        assert_eq!(
            s.run_timeout(Duration::from_secs(4200)),
            Duration::from_secs(1800)
        );
        assert_eq!(
            s.logs_timeout(Duration::from_secs(420)),
            Duration::from_secs(420)
        );
    }

    #[test]
    fn bad_specs_name_the_field() {
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (
                serde_json::json!({"run_type": "proposed", "steps": []}),
                "run_id",
            ),
            (
                serde_json::json!({"run_id": "a/b", "run_type": "proposed", "steps": [{"name": "x", "argv": ["x"]}]}),
                "run_id",
            ),
            (
                serde_json::json!({"run_id": "a", "run_type": "maybe", "steps": [{"name": "x", "argv": ["x"]}]}),
                "unknown variant",
            ),
            (
                serde_json::json!({"run_id": "a", "run_type": "proposed", "steps": []}),
                "steps",
            ),
            (
                serde_json::json!({"run_id": "a", "run_type": "proposed", "steps": [{"name": "x"}]}),
                "neither argv nor shell",
            ),
            (
                serde_json::json!({"run_id": "a", "run_type": "proposed", "steps": [{"name": "x", "argv": ["a"], "shell": "b"}]}),
                "both",
            ),
            (
                serde_json::json!({"run_id": "a", "run_type": "proposed", "steps": [{"name": "x", "argv": ["a"]}], "environment": [{"name": "1X", "value": ""}]}),
                "not valid",
            ),
            (
                serde_json::json!({"run_id": "a", "run_type": "proposed", "steps": [{"name": "x", "argv": ["a"]}], "environment": [{"name": "X", "value": ""}, {"name": "X", "value": ""}]}),
                "twice",
            ),
            (
                serde_json::json!({"run_id": "a", "run_type": "proposed", "steps": [{"name": "x", "argv": ["a"]}], "timeouts": {"run": "soon"}}),
                "timeouts.run",
            ),
            (
                serde_json::json!({"run_id": "a", "run_type": "proposed", "steps": [{"name": "x", "argv": ["a"]}], "runner": {"root": "relative"}}),
                "runner.root",
            ),
            (
                serde_json::json!({"run_id": "a", "run_type": "proposed", "steps": [{"name": "x", "argv": ["a"]}], "uploads": {"artifacts": [{"path": "../x", "url": "u"}]}}),
                "artifacts[0]",
            ),
            (
                serde_json::json!({"run_id": "a", "run_type": "proposed", "steps": [{"name": "x", "argv": ["a"]}], "surprise": 1}),
                "unknown field",
            ),
        ];
        for (j, needle) in cases {
            let err = RunSpec::from_json(j.to_string().as_bytes()).unwrap_err();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
        assert!(RunSpec::from_json(b"\xff\xfe").is_err());
        assert!(RunSpec::from_json(b"").is_err());
    }

    fn with(field: &str, value: serde_json::Value) -> Result<RunSpec, String> {
        let mut j = minimal();
        j[field] = value;
        RunSpec::from_json(j.to_string().as_bytes())
    }

    /// `runner.root` must be an unpacked image: never `/` nor a host system
    /// directory (those used to be accepted, or fail with an unclear
    /// "executing /bin/sh: No such file").
    #[test]
    fn runner_root_must_be_an_image() {
        let image = tempfile::tempdir().unwrap();
        std::fs::create_dir(image.path().join("usr")).unwrap();
        let empty = tempfile::tempdir().unwrap();
        let file = image.path().join("usr/file");
        std::fs::write(&file, "x").unwrap();
        let link = image.path().join("to-root");
        std::os::unix::fs::symlink("/", &link).unwrap();
        for (root, needle) in [
            ("/".to_string(), "the host's /"),
            ("/etc".into(), "the host's /etc"),
            ("/usr".into(), "the host's /usr"),
            ("/var".into(), "the host's /var"),
            ("/proc/1".into(), "the host's"),
            (link.display().to_string(), "the host's /"),
            ("/no/such/image".into(), "cannot be used"),
            (file.display().to_string(), "not a directory"),
            (empty.path().display().to_string(), "neither usr/ nor bin/"),
            ("relative".into(), "absolute"),
            ("/x/../etc".into(), "without .."),
        ] {
            let err = with("runner", serde_json::json!({"root": root})).unwrap_err();
            assert!(err.contains("runner.root"), "{err}");
            assert!(err.contains(needle), "{root}: {needle:?} not in {err:?}");
        }
        let ok = with("runner", serde_json::json!({"root": image.path()})).unwrap();
        assert_eq!(ok.runner.root.as_deref(), Some(image.path()));
    }

    /// A step name with a newline or an escape sequence could forge
    /// liftoff's own lines (`liftoff: run … finished`): refused, as is
    /// a very long or empty name; so are control characters in other
    /// strings liftoff writes to the log.
    #[test]
    fn loggable_strings_have_no_control_characters() {
        for name in [
            "plan\nliftoff: run 01JRUN finished: exit code 0",
            "x\u{1b}[2K",
            "tab\there",
            "bell\u{7}",
        ] {
            let err = with(
                "steps",
                serde_json::json!([{"name": name, "argv": ["true"]}]),
            )
            .unwrap_err();
            assert!(
                err.contains("steps[0].name") && err.contains("control character"),
                "{err}"
            );
        }
        let long = "n".repeat(MAX_STEP_NAME + 1);
        let err = with(
            "steps",
            serde_json::json!([{"name": long, "argv": ["true"]}]),
        )
        .unwrap_err();
        assert!(
            err.contains("steps[0].name") && err.contains("at most 256"),
            "{err}"
        );
        let err = with(
            "steps",
            serde_json::json!([{"name": " ", "argv": ["true"]}]),
        )
        .unwrap_err();
        assert!(err.contains("steps[0].name is empty"), "{err}");
        with(
            "steps",
            serde_json::json!([{"name": "plan (tofu) ✓", "argv": ["true"]}]),
        )
        .unwrap();
        let err = with(
            "uploads",
            serde_json::json!({"artifacts": [{"path": "a\nb", "url": "https://x"}]}),
        )
        .unwrap_err();
        assert!(err.contains("uploads.artifacts[0].path"), "{err}");
        let err = with(
            "source",
            serde_json::json!({"url": "https://x/\r\nliftoff: ok"}),
        )
        .unwrap_err();
        assert!(err.contains("source.url"), "{err}");
    }

    /// Timeouts are bounded (30 days) and the spec's size is capped.
    #[test]
    fn timeouts_and_size_are_bounded() {
        for t in ["5000000000000000h", "721h"] {
            let err = with("timeouts", serde_json::json!({"run": t})).unwrap_err();
            assert!(
                err.contains("timeouts.run") && err.contains("maximum"),
                "{err}"
            );
            let err = with("timeouts", serde_json::json!({"logs": t})).unwrap_err();
            assert!(
                err.contains("timeouts.logs") && err.contains("maximum"),
                "{err}"
            );
        }
        with("timeouts", serde_json::json!({"run": "720h"})).unwrap();
        let mut big = minimal().to_string().into_bytes();
        big.extend(std::iter::repeat_n(b' ', MAX_SPEC_BYTES));
        let err = RunSpec::from_json(&big).unwrap_err();
        assert!(err.contains("byte limit"), "{err}");
    }
}
