//! Routes about the server itself: health, job types, queues.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::AppState;

/// `GET /healthz`: `200 {"status":"ok"}` while serving.
pub async fn healthz(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "status": "ok", "plugins": state.service.plugins().len() }))
}

/// `GET /v1/plugins`: the loaded job types with their payload schemas.
pub async fn plugins(State(state): State<AppState>) -> Json<Value> {
    let plugins: Vec<Value> = state
        .service
        .plugins()
        .iter()
        .map(|p| {
            json!({
                "name": p.info.name,
                "version": p.info.version,
                "description": p.info.description,
                "payload_schema": p.info.payload_schema,
                "default_timeout_s": p.info.default_timeout_secs,
                "digest": p.digest,
            })
        })
        .collect();
    Json(json!({ "plugins": plugins }))
}

/// `GET /v1/queues`: per queue depth, running, limit and figures since start.
pub async fn queues(State(state): State<AppState>) -> Json<Value> {
    let queues: Vec<Value> = state
        .service
        .queues()
        .into_iter()
        .map(|q| {
            let s = q.stats;
            let avg = |total: u64, n: u64| total.checked_div(n).map_or(Value::Null, |v| json!(v));
            let decided = s.completed + s.failed;
            json!({
                "name": q.name,
                "depth": q.depth,
                "running": q.running,
                "limit": q.limit,
                "avg_queue_ms": avg(s.queue_ms, s.started),
                "avg_run_ms": avg(s.run_ms, s.finished),
                "success_rate": if decided == 0 { Value::Null } else { json!(s.completed as f64 / decided as f64) },
                "completed": s.completed,
                "failed": s.failed,
            })
        })
        .collect();
    Json(json!({ "queues": queues }))
}
