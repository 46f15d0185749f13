//! Findings: what `liftoff check` prints, one line per check (ok, warning
//! or error, with the remedy), and the exit status they add up to. A low
//! room: configuration, identity, sandbox and link checks each push their
//! own findings here ([`Report::push`]) without knowing who prints them.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Warning,
    Error,
}

/// What kind of thing a failed check is about; decides the exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Area {
    /// Operator configuration: exit 78.
    Config,
    /// The host or the network: exit 1.
    Host,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub area: Area,
    pub message: String,
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn push(
        &mut self,
        name: impl Into<String>,
        status: Status,
        area: Area,
        message: impl Into<String>,
    ) {
        self.checks.push(Check {
            name: name.into(),
            status,
            area,
            message: message.into(),
        });
    }

    pub fn exit_code(&self) -> i32 {
        let errors = || self.checks.iter().filter(|c| c.status == Status::Error);
        if errors().any(|c| c.area == Area::Config) {
            crate::EXIT_CONFIG
        } else if errors().next().is_some() {
            1
        } else {
            0
        }
    }

    /// The human report: one line per check.
    pub fn to_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.name.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            let status = match c.status {
                Status::Ok => "ok",
                Status::Warning => "warning",
                Status::Error => "error",
            };
            out.push_str(&format!("{status:<8}{:<width$}  {}\n", c.name, c.message));
        }
        let errors = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Error)
            .count();
        let warnings = self
            .checks
            .iter()
            .filter(|c| c.status == Status::Warning)
            .count();
        out.push_str(&match errors {
            0 => format!("\nthis host can run the launcher ({warnings} warning(s))\n"),
            n => format!("\n{n} error(s), {warnings} warning(s): fix the errors above, then run `liftoff check` again\n"),
        });
        out
    }

    pub fn to_json(&self) -> String {
        let doc = serde_json::json!({
            "ok": self.exit_code() == 0,
            "exit_code": self.exit_code(),
            "checks": self.checks,
        });
        serde_json::to_string_pretty(&doc).unwrap_or_default()
    }
}
