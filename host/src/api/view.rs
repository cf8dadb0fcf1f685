//! The JSON of a job, as every route returns it.

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::jobs::{
    DependencyFailure, ErrorInfo, JobRecord, JobService, JobStatus, ServiceError, WebhookRecord,
    rfc3339,
};
use crate::llm::Usage;

/// A job as clients see it. Field names are fixed by the design.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct JobView {
    /// The id.
    pub id: Uuid,
    /// The job type.
    #[serde(rename = "type")]
    pub job_type: String,
    /// Where it is.
    pub status: JobStatus,
    /// 0-100 within the current attempt.
    pub progress: u8,
    /// The stage.
    pub message: Option<String>,
    /// The result, once completed.
    pub result: Option<Value>,
    /// Why it failed.
    pub error: Option<ErrorInfo>,
    /// Current attempt.
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// The queue.
    pub queue: String,
    /// Priority within the queue.
    pub priority: i32,
    /// Not before (RFC 3339).
    pub run_at: Option<String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub finished_at: Option<String>,
    /// LLM usage.
    pub usage: Usage,
    /// Files the job wrote (contract 0.2.0 job types), once completed.
    pub artifacts: Vec<ArtifactView>,
    /// While it runs: the id of the node running it (as `GET /v1/nodes` lists it).
    pub node: Option<Uuid>,
    /// While it runs: whether a client asked to cancel it (the node running it is
    /// stopping it). Always `false` once it has ended.
    pub cancel_requested: bool,
    /// The batch it was submitted in (`POST /v1/batches`), if any.
    pub batch: Option<Uuid>,
    /// The `concurrency_key` it was submitted with, if any.
    pub concurrency_key: Option<String>,
    /// Its webhook, with the delivery of its latest end.
    pub webhook: Option<WebhookView>,
    /// The jobs it was submitted to wait for (`depends_on`), in the order given.
    pub depends_on: Vec<Uuid>,
    /// While it is `waiting`: those of them that have not ended yet.
    pub waiting_for: Vec<Uuid>,
    /// With `depends_on`: what a failed or cancelled dependency does to it (`fail` or
    /// `run`).
    pub on_dependency_failure: Option<DependencyFailure>,
    /// The jobs submitted with this one in their `depends_on`.
    pub dependants: Vec<Uuid>,
    /// The schedule tick that submitted it.
    pub schedule: Option<ScheduledView>,
    /// Where to read and follow it.
    pub links: Links,
}

/// The schedule tick that submitted a job.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ScheduledView {
    /// The schedule's name (`GET /v1/schedules/{name}`).
    pub name: String,
    /// The tick, RFC 3339: one job per tick.
    pub tick: String,
}

/// A job's webhook as clients see it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub url: String,
    /// The delivery of the job's latest end; `null` until it ends.
    pub delivery: Option<DeliveryView>,
}

/// How a webhook delivery goes.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DeliveryView {
    /// The `webhook-id` header, the same on every retry.
    pub id: String,
    /// `pending`, `delivered` or `gave_up`.
    pub state: &'static str,
    /// Sends so far.
    pub attempts: u32,
    /// The receiver's last HTTP status.
    pub last_status: Option<u16>,
    /// Why the last send failed.
    pub last_error: Option<String>,
    /// RFC 3339, while pending.
    pub next_attempt_at: Option<String>,
    /// RFC 3339, once delivered.
    pub delivered_at: Option<String>,
}

impl WebhookView {
    fn of(webhook: WebhookRecord) -> Self {
        Self {
            url: webhook.url,
            delivery: webhook.delivery.map(|d| DeliveryView {
                state: if d.delivered_at_ms.is_some() {
                    "delivered"
                } else if d.gave_up {
                    "gave_up"
                } else {
                    "pending"
                },
                id: d.id,
                attempts: d.attempts,
                last_status: d.last_status,
                last_error: d.last_error,
                next_attempt_at: d.next_at_ms.map(rfc3339),
                delivered_at: d.delivered_at_ms.map(rfc3339),
            }),
        }
    }
}

/// A job's JSON as [`JobView`] shows it: the body of its webhook.
pub fn render_job(
    job: JobRecord,
    service: JobService,
) -> BoxFuture<'static, Result<Value, ServiceError>> {
    Box::pin(async move {
        let view = JobView::of(job, &service).await?;
        serde_json::to_value(view).map_err(|e| ServiceError::Internal(e.to_string()))
    })
}

/// One artifact of a job.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ArtifactView {
    /// Its name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// Its content type.
    pub content_type: String,
    /// Where to download it: `GET` it with the same credentials as the job.
    pub url: String,
}

/// Links of a job.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Links {
    /// `GET` the job.
    #[serde(rename = "self")]
    pub this: String,
    /// SSE stream of its events.
    pub events: String,
}

impl JobView {
    /// The view of `job`, with its result read when it is completed.
    pub async fn of(job: JobRecord, service: &JobService) -> Result<Self, ServiceError> {
        let result = service.result_of(&job).await?;
        let this = format!("/v1/jobs/{}", job.id);
        let node = job.lease().map(|lease| lease.node);
        Ok(Self {
            links: Links {
                events: format!("{this}/events"),
                this,
            },
            id: job.id,
            job_type: job.job_type,
            status: job.status,
            progress: job.progress,
            message: job.message,
            result,
            error: job.error,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            queue: job.queue,
            priority: job.priority,
            run_at: job.run_at_ms.map(rfc3339),
            created_at: rfc3339(job.created_at_ms),
            started_at: job.started_at_ms.map(rfc3339),
            finished_at: job.finished_at_ms.map(rfc3339),
            usage: job.usage,
            node,
            cancel_requested: job.cancel_requested,
            batch: job.batch,
            concurrency_key: job.concurrency_key,
            webhook: job.webhook.map(WebhookView::of),
            on_dependency_failure: (!job.depends_on.is_empty())
                .then_some(job.on_dependency_failure),
            depends_on: job.depends_on,
            waiting_for: job.waiting_for,
            dependants: job.dependants,
            schedule: job.schedule.map(|s| ScheduledView {
                name: s.name,
                tick: rfc3339(s.tick_ms),
            }),
            artifacts: job
                .artifacts
                .into_iter()
                .map(|a| ArtifactView {
                    url: format!("/v1/jobs/{}/artifacts/{}", job.id, a.name),
                    name: a.name,
                    size: a.size,
                    content_type: a.content_type,
                })
                .collect(),
        })
    }
}
