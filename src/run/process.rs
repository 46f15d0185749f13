//! Debug builds only: the unsandboxed development executor the link tests
//! use, and [`DevExecutor`], which sends their plain `{"command": "..."}`
//! run states to it and every other run to the sandbox. A release build has
//! neither (this module is not compiled): a shipped launcher never runs a
//! command outside the sandbox.

use std::collections::{BTreeMap, HashMap};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::link::protocol::{Assignment, Upload};

use super::error::StartError;
use super::executor::SandboxExecutor;
use super::interface::{RunEvent, RunEvents, RunExecutor};

/// Runs `state.command` (a string) with `/bin/sh -c` as a plain child in its
/// own process group. NO sandbox: for development and the link tests only.
pub struct ProcessExecutor {
    kill_grace: Duration,
    groups: Arc<Mutex<HashMap<String, nix::unistd::Pid>>>,
}

impl ProcessExecutor {
    pub fn new(kill_grace: Duration) -> ProcessExecutor {
        ProcessExecutor {
            kill_grace,
            groups: Arc::default(),
        }
    }
}

fn signal_group(pgid: nix::unistd::Pid, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::killpg(pgid, sig);
}

impl RunExecutor for ProcessExecutor {
    fn start(&mut self, a: Assignment, events: RunEvents) -> Result<(), StartError> {
        use std::os::unix::process::CommandExt;
        let command = a
            .state
            .get("command")
            .and_then(|c| c.as_str())
            .ok_or_else(|| {
                StartError::Assignment(
                    "the process executor needs \"state\": {\"command\": \"...\"}".into(),
                )
            })?;
        let mut child = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(command)
            .env("LIFTOFF_RUN_ID", &a.run_id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|e| StartError::Spawn(format!("cannot start /bin/sh: {e}")))?;
        let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
        self.groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(a.run_id.clone(), pgid);
        events.send(RunEvent::Started);
        let groups = self.groups.clone();
        std::thread::Builder::new()
            .name("liftoff-run".into())
            .spawn(move || {
                use std::os::unix::process::ExitStatusExt;
                let status = child.wait();
                groups
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(events.run_id());
                // anything the job left behind in its group goes too
                signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
                events.send(match status {
                    Ok(s) => match (s.code(), s.signal()) {
                        (Some(code), _) => RunEvent::Finished { exit_code: code },
                        (None, Some(sig)) => RunEvent::Failed {
                            reason: format!("killed by signal {sig}"),
                        },
                        _ => RunEvent::Failed {
                            reason: "ended without a status".into(),
                        },
                    },
                    Err(e) => RunEvent::Failed {
                        reason: format!("cannot wait for the job: {e}"),
                    },
                });
            })
            .map_err(|e| StartError::Spawn(format!("cannot start a thread: {e}")))?;
        Ok(())
    }

    fn cancel(&mut self, run_id: &str) {
        let pgid = self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(run_id)
            .copied();
        if let Some(pgid) = pgid {
            signal_group(pgid, nix::sys::signal::Signal::SIGTERM);
            let grace = self.kill_grace;
            let groups = self.groups.clone();
            let run_id = run_id.to_string();
            let _ = std::thread::Builder::new()
                .name("liftoff-kill".into())
                .spawn(move || {
                    std::thread::sleep(grace);
                    let still = groups
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&run_id)
                        .copied();
                    if still == Some(pgid) {
                        signal_group(pgid, nix::sys::signal::Signal::SIGKILL);
                    }
                });
        }
    }

    fn kill_all(&mut self) {
        for pgid in self
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            signal_group(*pgid, nix::sys::signal::Signal::SIGKILL);
        }
    }

    fn capabilities(&self) -> BTreeMap<String, serde_json::Value> {
        BTreeMap::from([("executor".to_string(), "process".into())])
    }
}

impl Drop for ProcessExecutor {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The executor of a debug build's `liftoff run`: the link tests' plain
/// `{"command": "..."}` states go to [`ProcessExecutor`], every other run
/// to the [`SandboxExecutor`].
pub struct DevExecutor {
    sandbox: SandboxExecutor,
    process: ProcessExecutor,
}

impl DevExecutor {
    pub fn new(sandbox: SandboxExecutor, kill_grace: Duration) -> DevExecutor {
        tracing::warn!(
            "debug build: plain {{\"command\": ...}} run states run WITHOUT the sandbox"
        );
        DevExecutor {
            sandbox,
            process: ProcessExecutor::new(kill_grace),
        }
    }
}

impl RunExecutor for DevExecutor {
    fn start(&mut self, a: Assignment, events: RunEvents) -> Result<(), StartError> {
        let plain = a.state.get("command").is_some() && a.state.get("alg").is_none();
        if plain {
            self.process.start(a, events)
        } else {
            self.sandbox.start(a, events)
        }
    }
    fn cancel(&mut self, run_id: &str) {
        self.sandbox.cancel(run_id);
        self.process.cancel(run_id);
    }
    fn uploads(&mut self, run_id: &str, urls: Vec<Upload>) {
        self.sandbox.uploads(run_id, urls);
    }
    fn kill_all(&mut self) {
        self.sandbox.kill_all();
        self.process.kill_all();
    }
    fn capabilities(&self) -> BTreeMap<String, serde_json::Value> {
        self.sandbox.capabilities()
    }
}
