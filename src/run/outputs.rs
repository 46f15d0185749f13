//! A run's outputs: the JSON that a step marked `outputs` prints (e.g.
//! `tofu output -json`), filtered before upload. Sensitive outputs are dropped
//! unless `SPACELIFT_SENSITIVE_OUTPUT_UPLOAD_ENABLED=true`.
//!
//! [`filter`] parses and filters; the caller uploads the result to the spec's
//! outputs URL.

use serde_json::{Map, Value};

/// Most bytes an outputs document may have.
pub const MAX_OUTPUTS: usize = 4 << 20;

/// Why the outputs step's output cannot be uploaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputsError {
    /// Over [`MAX_OUTPUTS`] bytes.
    TooLarge(String),
    /// Not the JSON `tofu output -json` prints.
    Malformed(String),
}

impl std::fmt::Display for OutputsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutputsError::TooLarge(m) | OutputsError::Malformed(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for OutputsError {}

/// The filtered document and the names of the outputs dropped as sensitive.
#[derive(Debug, Clone, PartialEq)]
pub struct Outputs {
    pub document: Value,
    pub dropped: Vec<String>,
}

/// Parses `tofu output -json` (`{"name": {"sensitive": bool, "type": …,
/// "value": …}}`) and drops sensitive outputs unless `keep_sensitive`.
pub fn filter(json: &[u8], keep_sensitive: bool) -> Result<Outputs, OutputsError> {
    if json.len() > MAX_OUTPUTS {
        return Err(OutputsError::TooLarge(format!(
            "the outputs step printed more than {MAX_OUTPUTS} bytes"
        )));
    }
    let doc: Value = serde_json::from_slice(json).map_err(|e| {
        OutputsError::Malformed(format!(
            "the outputs step did not print JSON ({e}): expected the output of `tofu output -json`"
        ))
    })?;
    let Value::Object(map) = doc else {
        return Err(OutputsError::Malformed("the outputs step printed JSON that is not an object: expected the output of `tofu output -json`".into()));
    };
    let mut kept = Map::new();
    let mut dropped = Vec::new();
    for (name, output) in map {
        let Some(obj) = output.as_object() else {
            return Err(OutputsError::Malformed(format!(
                "output {name:?} is not an object with sensitive/type/value"
            )));
        };
        let sensitive = match obj.get("sensitive") {
            None | Some(Value::Bool(false)) => false,
            Some(Value::Bool(true)) => true,
            Some(_) => {
                return Err(OutputsError::Malformed(format!(
                    "output {name:?}: \"sensitive\" must be true or false"
                )));
            }
        };
        if sensitive && !keep_sensitive {
            dropped.push(name);
        } else {
            kept.insert(name, output);
        }
    }
    Ok(Outputs {
        document: Value::Object(kept),
        dropped,
    })
}
