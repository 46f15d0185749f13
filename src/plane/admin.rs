//! The admin API: JSON over the plane's HTTPS listener, every request with
//! `Authorization: Bearer <admin token>` (DATA/admin-token). The CLI is its
//! only built-in client; docs/plane.md lists the routes.
//!
//! Call order: `server` calls [`handle`] for every path under `/admin/v1/`.

use base64::Engine as _;
use serde_json::{Value, json};

use super::dispatch::Plane;
use super::httpd::{Request, Response};
use super::store::{RunRow, WorkerRow};
use super::{Error, Result};

pub fn handle(plane: &Plane, req: &Request) -> Response {
    match authorize(plane, req).and_then(|()| route(plane, req)) {
        Ok(r) => r,
        Err(e) => Response::error(&e),
    }
}

fn authorize(plane: &Plane, req: &Request) -> Result<()> {
    let Some(given) = req
        .header("authorization")
        .and_then(|h| h.strip_prefix("Bearer "))
    else {
        return Err(Error::Unauthorized(
            "no admin token: send Authorization: Bearer <token> (DATA/admin-token)".into(),
        ));
    };
    let want = plane.data.admin_token.as_bytes();
    let given = given.trim().as_bytes();
    let same = given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(Error::Forbidden("wrong admin token".into()));
    }
    Ok(())
}

fn body(req: &Request) -> Result<Value> {
    if req.body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&req.body)
        .map_err(|e| Error::BadInput(format!("the request body is not JSON: {e}")))
}

fn str_field<'a>(v: &'a Value, name: &str) -> Result<&'a str> {
    v[name]
        .as_str()
        .ok_or_else(|| Error::BadInput(format!("the request has no string field {name:?}")))
}

fn ok(v: Value) -> Result<Response> {
    Ok(Response::json(200, &v))
}

pub fn run_json(plane: &Plane, r: &RunRow, wait: String) -> Value {
    let mut v = serde_json::to_value(r).unwrap_or(Value::Null);
    v["waiting"] = json!(wait);
    if let Ok(chunks) = plane.store.chunks(&r.id) {
        v["log_chunks"] = json!(chunks.len());
        v["log_bytes"] = json!(chunks.iter().map(|c| c.bytes).sum::<u64>());
    }
    v
}

fn worker_json(w: &WorkerRow) -> Value {
    serde_json::to_value(w).unwrap_or(Value::Null)
}

fn route(plane: &Plane, req: &Request) -> Result<Response> {
    let parts: Vec<&str> = req
        .path
        .trim_start_matches("/admin/v1/")
        .split('/')
        .collect();
    match (req.method.as_str(), parts.as_slice()) {
        ("GET", ["pools"]) => {
            let workers = plane.store.workers()?;
            let runs = plane.store.runs(true)?;
            let pools: Vec<Value> = plane
                .store
                .pools()?
                .iter()
                .map(|p| {
                    json!({
                        "id": p.id, "name": p.name, "created_ms": p.created_ms,
                        "workers": workers.iter().filter(|w| w.pool_id == p.id && !w.gone).count(),
                        "queued": runs.iter().filter(|r| r.pool_id == p.id && r.phase == "queued").count(),
                        "running": runs.iter().filter(|r| r.pool_id == p.id && r.is_active()).count(),
                    })
                })
                .collect();
            ok(json!({"pools": pools}))
        }
        ("POST", ["pools"]) => {
            let b = body(req)?;
            let (pool, token) = plane.create_pool(str_field(&b, "name")?, str_field(&b, "csr")?)?;
            Ok(Response::json(201, &json!({"pool": pool, "token": token})))
        }
        ("GET", ["pools", name]) => {
            let pool = plane.pool(name)?;
            let workers: Vec<Value> = plane
                .store
                .workers()?
                .iter()
                .filter(|w| w.pool_id == pool.id)
                .map(worker_json)
                .collect();
            let all = plane.store.runs(false)?;
            let mut stacks: Vec<&str> = all
                .iter()
                .filter(|r| r.pool_id == pool.id)
                .map(|r| r.stack.as_str())
                .collect();
            stacks.sort_unstable();
            stacks.dedup();
            let queue: Vec<Value> = all
                .iter()
                .filter(|r| r.pool_id == pool.id && !r.is_final())
                .map(|r| json!({"id": r.id, "phase": r.phase, "stack": r.stack, "run_type": r.run_type}))
                .collect();
            ok(json!({"pool": pool, "workers": workers, "queue": queue, "used_by": stacks}))
        }
        ("POST", ["pools", name, "reset"]) => {
            let b = body(req)?;
            let (pool, token) = plane.reset_pool(name, str_field(&b, "csr")?)?;
            ok(json!({"pool": pool, "token": token}))
        }
        ("POST", ["pools", name, "cycle"]) => ok(json!({"cycled": plane.cycle_pool(name)?})),
        ("GET", ["runs"]) => {
            let runs = plane.store.runs(req.param("all").is_none())?;
            let workers = plane.store.workers()?;
            let mut list: Vec<&RunRow> = runs.iter().collect();
            // In progress first, then the queue, each in submission order.
            list.sort_by_key(|r| (!r.is_active(), r.is_final(), r.seqno));
            let out: Vec<Value> = list
                .iter()
                .map(|r| run_json(plane, r, plane.wait_reason(r, &runs, &workers)))
                .collect();
            ok(json!({"runs": out}))
        }
        ("POST", ["runs"]) => {
            let b = body(req)?;
            let spec = match &b["spec"] {
                Value::String(s) => s.as_bytes().to_vec(),
                Value::Object(_) => b["spec"].to_string().into_bytes(),
                _ => return Err(Error::BadInput("the request has no \"spec\"".into())),
            };
            let source = match b["source_b64"].as_str() {
                Some(s) => Some(
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .map_err(|_| Error::BadInput("source_b64 is not base64".into()))?,
                ),
                None => None,
            };
            let (run, new) = plane.submit(
                str_field(&b, "pool")?,
                b["stack"].as_str(),
                &spec,
                source.as_deref(),
                b["idempotency_key"].as_str(),
            )?;
            let mut v = run_json(plane, &run, String::new());
            v["created"] = json!(new);
            Ok(Response::json(if new { 201 } else { 200 }, &v))
        }
        ("GET", ["runs", id]) => {
            let run = plane.run(id)?;
            let runs = plane.store.runs(true)?;
            let workers = plane.store.workers()?;
            let wait = plane.wait_reason(&run, &runs, &workers);
            ok(run_json(plane, &run, wait))
        }
        ("GET", ["runs", id, "logs"]) => {
            let from = req.param("from").and_then(|f| f.parse().ok()).unwrap_or(0);
            let (bytes, next) = plane.log(id, from)?;
            let run = plane.run(id)?;
            let mut r = Response::bytes(200, bytes);
            r.headers.push(("X-Next-Chunk".into(), next.to_string()));
            r.headers.push(("X-Run-Phase".into(), run.phase.clone()));
            let total = plane.store.chunks(id)?.len();
            r.headers.push(("X-Chunks".into(), total.to_string()));
            Ok(r)
        }
        ("POST", ["runs", id, "cancel"]) => {
            let b = body(req)?;
            let run = plane.cancel(id, b["reason"].as_str().unwrap_or(""))?;
            ok(run_json(plane, &run, String::new()))
        }
        ("GET", ["workers"]) => {
            let workers: Vec<Value> = plane.store.workers()?.iter().map(worker_json).collect();
            ok(json!({"workers": workers}))
        }
        ("POST", ["workers", id, action]) => {
            let w = match *action {
                "drain" => plane.drain(id, true)?,
                "undrain" => plane.drain(id, false)?,
                "cycle" => plane.cycle_worker(id)?,
                _ => {
                    return Err(Error::NotFound(format!(
                        "no worker action {action:?}: drain, undrain or cycle"
                    )));
                }
            };
            ok(worker_json(&w))
        }
        _ => Err(Error::NotFound(format!("no {} {}", req.method, req.path))),
    }
}
