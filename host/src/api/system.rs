//! Routes about the server itself: health, job types, queues.

use std::collections::{BTreeMap, BTreeSet};

use axum::Json;
use axum::extract::State;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::AppState;
use super::access::{Admin, Caller};
use crate::jobs::{now_ms, rfc3339};
use crate::monitor::{Health, HealthInput, WINDOW_MS};

/// The answer of `GET /healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Healthz {
    /// Always `ok` while serving.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// Job types loaded.
    pub plugins: usize,
}

/// `GET /healthz`: `200 {"status":"ok"}` while serving; while the server starts (plugins
/// loading, interrupted jobs being recovered) `503 starting`, as the job routes answer.
#[utoipa::path(get, path = "/healthz", tag = "system",
    responses(
        (status = 200, description = "The server is serving", body = Healthz),
        (status = 503, description = "The server is starting: loading plugins, recovering jobs (`starting`)", body = super::error::ErrorBody),
    ))]
pub async fn healthz(State(state): State<AppState>) -> Json<Healthz> {
    Json(Healthz {
        status: "ok",
        plugins: state.service.plugins().len(),
    })
}

/// The answer of `GET /v1/plugins`.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginList {
    /// The loaded job types.
    pub plugins: Vec<PluginView>,
}

/// A loaded job type.
#[derive(Debug, Serialize, ToSchema)]
pub struct PluginView {
    /// The job type, as `type` in `POST /v1/jobs`.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its payload.
    #[schema(value_type = Object)]
    pub payload_schema: Value,
    /// Attempt timeout when the job sets none, seconds: the plugin's own default, or the
    /// host's when it names none, within the operator's `max_timeout_secs`.
    pub default_timeout_s: u64,
    /// The plugin contract version the component was built for, e.g. `0.2.0`.
    pub contract_version: String,
    /// SHA-256 of the component.
    pub digest: String,
    /// The component's file name in the plugins dir.
    pub file: Option<String>,
}

/// `GET /v1/plugins`: the loaded job types with their payload schemas.
#[utoipa::path(get, path = "/v1/plugins", tag = "system",
    responses(
        (status = 200, description = "The loaded job types", body = PluginList),
        (status = 401, description = "No valid API key", body = super::error::ErrorBody),
    ))]
pub async fn plugins(State(state): State<AppState>, _: Caller) -> Json<PluginList> {
    let settings = state.service.settings();
    let mut plugins: Vec<PluginView> = state
        .service
        .plugins()
        .iter()
        .map(|p| PluginView {
            name: p.info.name.clone(),
            version: p.info.version.clone(),
            description: p.info.description.clone(),
            payload_schema: p.info.payload_schema.clone(),
            default_timeout_s: settings
                .limits_of(&p.info.name)
                .timeout(None, p.info.default_timeout_secs)
                .as_secs(),
            contract_version: p.contract().to_string(),
            digest: p.digest.clone(),
            file: p
                .file
                .as_deref()
                .and_then(|f| f.file_name())
                .map(|f| f.to_string_lossy().into_owned()),
        })
        .collect();
    plugins.sort_by(|a, b| a.name.cmp(&b.name));
    Json(PluginList { plugins })
}

/// The answer of `GET /v1/queues`.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueList {
    /// Every queue that has had jobs since start or serves a loaded job type, by name.
    pub queues: Vec<QueueView>,
}

/// One queue's figures. `avg_*`, `success_rate`, `throughput_per_min` and `recent` cover
/// the last 5 minutes; `completed` and `failed` count since the server started.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueView {
    /// Queue name (a job type's name unless `[types.NAME] queue` says otherwise).
    pub name: String,
    /// Job types of the loaded plugins that run in this queue.
    pub job_types: Vec<String>,
    /// Jobs waiting (ready, or scheduled for later).
    pub depth: usize,
    /// Jobs running.
    pub running: usize,
    /// Max running at once.
    pub limit: usize,
    /// Max running at once with one `concurrency_key` (`[queues.NAME] max_per_key`);
    /// `null`: no cap but `limit`.
    pub max_per_key: Option<usize>,
    /// How long the oldest ready job has waited, ms; `null` when none waits.
    pub oldest_wait_ms: Option<u64>,
    /// Mean wait from queued (or due) to started of attempts started in the window, ms.
    pub avg_queue_ms: Option<u64>,
    /// Mean run time of attempts finished in the window, ms.
    pub avg_run_ms: Option<u64>,
    /// Completed / (completed + failed) of jobs decided in the window; `null` if none.
    pub success_rate: Option<f64>,
    /// Jobs decided (completed or failed) per minute over the window.
    pub throughput_per_min: f64,
    /// Jobs completed since start.
    pub completed: u64,
    /// Jobs failed for good since start.
    pub failed: u64,
    /// `healthy`, `warning`, `critical` or `disabled`: see the README's rule.
    #[schema(value_type = String, example = "healthy")]
    pub health: Health,
    /// Why the health is not `healthy`, one sentence per condition met.
    pub health_reasons: Vec<String>,
    /// Counts of the window.
    pub recent: RecentView,
}

/// What happened in a queue over the recent window.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecentView {
    /// The window's length, seconds (300).
    pub window_s: u64,
    /// Attempts started.
    pub started: u64,
    /// Attempts finished, any outcome.
    pub finished: u64,
    /// Jobs completed.
    pub completed: u64,
    /// Jobs failed for good.
    pub failed: u64,
    /// Attempts failed and queued again for a retry.
    pub retried: u64,
    /// Running jobs cancelled.
    pub cancelled: u64,
}

/// Every queue's figures and health, by name (shared with `/metrics`).
pub(super) async fn queue_views(state: &AppState) -> Vec<QueueView> {
    let service = &state.service;
    let settings = service.settings();
    let mut types: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in service.plugins().names() {
        types
            .entry(settings.queue_of(&name))
            .or_default()
            .insert(name);
    }
    let mut reports: BTreeMap<String, crate::jobs::QueueReport> = service
        .queues()
        .await
        .into_iter()
        .map(|q| (q.name.clone(), q))
        .collect();
    for queue in types.keys() {
        reports
            .entry(queue.clone())
            .or_insert_with(|| crate::jobs::QueueReport {
                name: queue.clone(),
                depth: 0,
                running: 0,
                limit: settings.limit_of(queue),
                stats: Default::default(),
                oldest_ready_since_ms: None,
            });
    }
    let now = now_ms();
    let thresholds = &state.settings.health;
    reports
        .into_values()
        .map(|q| {
            let recent = service.metrics().recent(&q.name, now);
            let job_types: Vec<String> = types
                .get(&q.name)
                .map(|t| t.iter().cloned().collect())
                .unwrap_or_default();
            let oldest_wait_ms = q.oldest_ready_since_ms.map(|t| now.saturating_sub(t));
            let (health, health_reasons) = thresholds.judge(&HealthInput {
                has_plugin: !job_types.is_empty(),
                running: q.running,
                limit: q.limit,
                oldest_wait_ms,
                recent_completed: recent.completed,
                recent_failed: recent.failed,
            });
            QueueView {
                job_types,
                depth: q.depth,
                running: q.running,
                limit: q.limit,
                max_per_key: service.settings().key_limit_of(&q.name),
                oldest_wait_ms,
                avg_queue_ms: recent.avg_queue_ms(),
                avg_run_ms: recent.avg_run_ms(),
                success_rate: recent.success_rate(),
                throughput_per_min: recent.throughput_per_min(),
                completed: q.stats.completed,
                failed: q.stats.failed,
                health,
                health_reasons,
                recent: RecentView {
                    window_s: WINDOW_MS / 1000,
                    started: recent.started,
                    finished: recent.finished,
                    completed: recent.completed,
                    failed: recent.failed,
                    retried: recent.retried,
                    cancelled: recent.cancelled,
                },
                name: q.name,
            }
        })
        .collect()
}

/// `GET /v1/queues`: per queue depth, running, limit, recent figures and health.
///
/// Health, first match wins (thresholds from `[health]`, defaults in brackets):
/// `disabled` when no loaded plugin runs in the queue; `critical` when the queue is at
/// its limit and its oldest ready job has waited `critical_wait_secs` (300), or when at
/// least `min_finished` (5) jobs were decided in the last 5 minutes and under
/// `critical_success_rate` (0.5) of them completed; `warning` when the oldest ready job
/// has waited `warning_wait_secs` (30), or the recent success rate is under
/// `warning_success_rate` (0.9) with `min_finished` decided; else `healthy`.
#[utoipa::path(get, path = "/v1/queues", tag = "system",
    responses(
        (status = 200, description = "Every queue's figures and health", body = QueueList),
        (status = 401, description = "No valid API key", body = super::error::ErrorBody),
        (status = 403, description = "Not an admin key: queue figures span every tenant", body = super::error::ErrorBody),
    ))]
pub async fn queues(State(state): State<AppState>, _: Admin) -> Json<QueueList> {
    Json(QueueList {
        queues: queue_views(&state).await,
    })
}

/// The answer of `GET /v1/nodes`.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    /// The nodes serving this store, oldest first.
    pub nodes: Vec<NodeView>,
}

/// One Kiln node.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeView {
    /// Its id, kept in its data dir (`node-id`): a node restarted on the same data dir
    /// is the same node.
    pub id: String,
    /// The address its API listens on.
    #[schema(example = "10.0.0.7:8080")]
    pub address: String,
    /// The Kiln version it runs.
    pub version: String,
    /// `alive`; `unresponsive` (no heartbeat for 10 s: dead, cut off from the database or
    /// paused); `stopped` (shut down cleanly). Nodes that stopped or stopped answering
    /// stay listed for a day.
    #[schema(example = "alive")]
    pub status: &'static str,
    /// Whether it is the node that answered this request.
    pub this_node: bool,
    /// Whether it holds the leader's lease: it runs expiry and gives the jobs of nodes
    /// that stopped answering their next attempt.
    pub leader: bool,
    /// Attempts it was running at its latest heartbeat.
    pub running_jobs: u64,
    /// When it started (RFC 3339).
    pub started_at: String,
    /// Its latest heartbeat (RFC 3339; nodes write one every 2 s).
    pub last_heartbeat_at: String,
    /// When it shut down cleanly (RFC 3339), if it did.
    pub stopped_at: Option<String>,
}

/// `GET /v1/nodes`: the Kiln nodes serving this store. With PostgreSQL, every node sharing
/// the database; with redb, this one.
#[utoipa::path(get, path = "/v1/nodes", tag = "system",
    responses(
        (status = 200, description = "The nodes", body = NodeList),
        (status = 401, description = "No valid API key", body = super::error::ErrorBody),
        (status = 403, description = "Not an admin key", body = super::error::ErrorBody),
        (status = 503, description = "The store is unreachable (`storage_unavailable`)", body = super::error::ErrorBody),
    ))]
pub async fn nodes(
    State(state): State<AppState>,
    _: Admin,
) -> Result<Json<NodeList>, super::error::ApiError> {
    let nodes = state.service.nodes().await?;
    Ok(Json(NodeList {
        nodes: nodes
            .into_iter()
            .map(|node| NodeView {
                id: node.record.id.to_string(),
                address: node.record.address,
                version: node.record.version,
                status: node.status.as_str(),
                this_node: node.this_node,
                leader: node.leader,
                running_jobs: node.record.running_jobs,
                started_at: rfc3339(node.record.started_at_ms),
                last_heartbeat_at: rfc3339(node.record.heartbeat_at_ms),
                stopped_at: node.record.stopped_at_ms.map(rfc3339),
            })
            .collect(),
    }))
}
