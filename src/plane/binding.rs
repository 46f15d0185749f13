//! The HTTPS long-poll binding of docs/protocol.md, the plane's side:
//! `POST …/session` (the will), `POST …/messages` (a batch, recorded before
//! the 2xx), `GET …/commands?wait=W&cursor=C` (the long poll: answered as
//! soon as a command is waiting, else after `min(W, 50)` s; a newer poll of
//! the same worker ends the older one; the cursor confirms and forgets
//! commands), `DELETE …/session` and `GET …/ping`.
//!
//! Every request needs a client certificate the pool CA signed for
//! `{pool}`: none is 401, another pool's is 403 (both mean "pool reset" to
//! a worker when every endpoint says so). Call order: `server` calls
//! [`handle`] for every path under `/v1/pools/`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::dispatch::Plane;
use super::httpd::{Request, Response};
use super::{Error, Result};

/// Most commands in one poll answer.
const MAX_COMMANDS: usize = 64;
/// Most messages in one batch.
const MAX_BATCH: usize = 32;

fn valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Answers one binding request. `cert_pool`: the pool of the client
/// certificate of the connection, if any.
pub fn handle(
    plane: &Plane,
    req: &Request,
    cert_pool: Option<&str>,
    cert_fp: Option<&str>,
) -> Response {
    match route(plane, req, cert_pool, cert_fp.unwrap_or_default()) {
        Ok(r) => r,
        Err(e) => Response::error(&e),
    }
}

fn route(plane: &Plane, req: &Request, cert_pool: Option<&str>, cert_fp: &str) -> Result<Response> {
    let parts: Vec<&str> = req.path.trim_start_matches('/').split('/').collect();
    // v1 pools {pool} ...
    let pool = parts.get(2).copied().unwrap_or_default();
    let Some(cert_pool) = cert_pool else {
        return Err(Error::Unauthorized(
            "no client certificate: present the pool certificate from the pool token".into(),
        ));
    };
    if cert_pool != pool {
        return Err(Error::Forbidden(format!(
            "this certificate belongs to another pool than {pool:?}"
        )));
    }
    match (req.method.as_str(), &parts[3..]) {
        ("GET", ["ping"]) => Ok(Response::json(200, &json!({"pool": pool}))),
        (method, ["workers", worker, what]) => {
            if !valid_id(worker) {
                return Err(Error::BadInput(format!(
                    "{worker:?} is not a valid worker id"
                )));
            }
            plane.hub.seen(worker);
            match (method, *what) {
                ("POST", "session") => {
                    let will: Value = serde_json::from_slice(&req.body).map_err(|e| {
                        Error::BadInput(format!("the session body (the will) is not JSON: {e}"))
                    })?;
                    plane.open_session(pool, worker, &will)?;
                    Ok(Response::json(200, &json!({})))
                }
                ("DELETE", "session") => {
                    plane.close_session(worker)?;
                    Ok(Response::json(200, &json!({})))
                }
                ("POST", "messages") => {
                    let batch: Vec<Value> = serde_json::from_slice(&req.body).map_err(|e| {
                        Error::BadInput(format!("the batch is not a JSON array: {e}"))
                    })?;
                    if batch.is_empty() || batch.len() > MAX_BATCH {
                        return Err(Error::BadInput(format!(
                            "a batch holds 1–{MAX_BATCH} messages, not {}",
                            batch.len()
                        )));
                    }
                    let region = plane
                        .data
                        .config
                        .endpoints
                        .first()
                        .map(|e| e.region.clone())
                        .unwrap_or_default();
                    plane.record(pool, worker, "poll", &region, &batch)?;
                    Ok(Response::json(200, &json!({})))
                }
                ("GET", "commands") => poll(plane, req, worker, cert_fp),
                _ => Err(Error::NotFound(format!("no {method} {}", req.path))),
            }
        }
        _ => Err(Error::NotFound(format!("no {} {}", req.method, req.path))),
    }
}

/// The long poll.
fn poll(plane: &Plane, req: &Request, worker: &str, cert_fp: &str) -> Result<Response> {
    let wait = req
        .param("wait")
        .and_then(|w| w.parse::<u64>().ok())
        .unwrap_or(50)
        .clamp(1, 50);
    // A cursor this plane did not make reads as none.
    let cursor: i64 = req
        .param("cursor")
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let slot = plane.hub.slot(worker);
    let my_gen = {
        let mut st = slot.0.lock().unwrap_or_else(|e| e.into_inner());
        st.poll_gen += 1;
        st.polls_open += 1;
        slot.1.notify_all();
        st.poll_gen
    };
    let end = Instant::now() + Duration::from_secs(wait);
    let answer = loop {
        let seen = slot.0.lock().unwrap_or_else(|e| e.into_inner()).notify_gen;
        let cmds = match plane.store.commands_after(worker, cursor, MAX_COMMANDS) {
            Ok(c) => c,
            Err(e) => break Err(e),
        };
        if !cmds.is_empty() {
            break Ok(cmds);
        }
        if plane.check.revoked(cert_fp) {
            break Err(Error::Forbidden(
                "this pool certificate was revoked (pool reset)".into(),
            ));
        }
        let st = slot.0.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if st.poll_gen != my_gen
            || now >= end
            || plane.stopping.load(std::sync::atomic::Ordering::Relaxed)
        {
            break Ok(Vec::new());
        }
        if st.notify_gen == seen {
            let _unused = slot
                .1
                .wait_timeout(st, (end - now).min(Duration::from_secs(1)))
                .unwrap_or_else(|e| e.into_inner());
        }
    };
    {
        let mut st = slot.0.lock().unwrap_or_else(|e| e.into_inner());
        st.polls_open = st.polls_open.saturating_sub(1);
        st.last_seen_ms = super::now_ms();
    }
    let cmds = answer?;
    let next = cmds.last().map_or(cursor, |c| c.seq);
    let commands: Vec<Value> = cmds
        .iter()
        .filter_map(|c| serde_json::from_str(&c.body).ok())
        .collect();
    Ok(Response::json(
        200,
        &json!({"cursor": next.to_string(), "commands": commands}),
    ))
}
