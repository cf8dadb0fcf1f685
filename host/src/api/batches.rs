//! `/v1/batches`: submit many jobs of one type in one call and one commit, read their
//! counts and aggregate progress, follow their events, cancel or retry them all.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::AppState;
use super::access::{Caller, EventsToken, authenticate_events};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, BatchId, JsonBody};
use super::jobs::{page_params, parse_time};
use super::sse::{JobEventsQuery, last_event_id, log_stream, stream_permit};
use crate::jobs::{BatchRecord, BatchRequest, ServiceError, StatusCounts, rfc3339};

/// The body of `POST /v1/batches`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The job type of every item.
    #[serde(rename = "type")]
    pub job_type: String,
    /// One payload per job, each checked against the type's JSON Schema; 1 to
    /// `max_batch_items` (default 10,000).
    pub items: Vec<Value>,
    /// Priority of every job, -1000..=1000.
    pub priority: Option<i32>,
    /// Attempts of every job.
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout of every job, seconds.
    pub timeout_s: Option<u64>,
    /// RFC 3339 time before which no job of the batch starts.
    pub run_at: Option<String>,
    /// Who every job runs for (e.g. your end user's id), 1 to 255 bytes: a queue shares its
    /// slots fairly between keys, and its `max_per_key` caps one key's running jobs.
    pub concurrency_key: Option<String>,
}

/// A batch as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchView {
    /// The batch's id.
    pub id: Uuid,
    /// The type of its jobs.
    #[serde(rename = "type")]
    pub job_type: String,
    /// Its jobs still kept (finished jobs expire after `job_ttl_secs`).
    pub total: u64,
    /// Its jobs by status.
    pub counts: StatusCounts,
    /// The mean progress of its jobs, 0-100 (a finished job counts 100).
    pub progress: u8,
    /// RFC 3339.
    pub created_at: String,
    /// When its last job reached a final state (RFC 3339); `null` while any runs or waits.
    pub finished_at: Option<String>,
    /// Where to read and follow it.
    pub links: BatchLinks,
}

/// Links of a batch.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchLinks {
    /// `GET` the batch.
    #[serde(rename = "self")]
    pub this: String,
    /// SSE stream of its events.
    pub events: String,
    /// Its jobs: `GET /v1/jobs?batch=…`.
    pub jobs: String,
}

impl BatchView {
    fn of(batch: &BatchRecord) -> Self {
        let this = format!("/v1/batches/{}", batch.id);
        Self {
            id: batch.id,
            job_type: batch.job_type.clone(),
            total: batch.jobs,
            counts: batch.counts,
            progress: batch.progress(),
            created_at: rfc3339(batch.created_at_ms),
            finished_at: batch.finished_at_ms.map(rfc3339),
            links: BatchLinks {
                events: format!("{this}/events"),
                jobs: format!("/v1/jobs?batch={}", batch.id),
                this,
            },
        }
    }
}

/// The answer of `POST /v1/batches`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchSubmitView {
    /// The batch.
    #[serde(flatten)]
    pub batch: BatchView,
    /// Its jobs' ids, in the order of `items`.
    pub jobs: Vec<Uuid>,
    /// A read-only token for the batch's event stream.
    #[serde(flatten)]
    pub token: EventsToken,
}

/// `POST /v1/batches`: every item is checked first, then the batch and all its jobs are
/// stored in one commit.
#[utoipa::path(post, path = "/v1/batches", tag = "batches",
    request_body(content = BatchBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Created: every job queued, with a read-only `events_token` for the batch's stream", body = BatchSubmitView,
            headers(("Location" = String, description = "The batch's URL"))),
        (status = 400, description = "Malformed JSON, unknown type, bad option, `batch_too_large` (no items or more than `max_batch_items`), or `invalid_payload` for an item: its message starts `items[i]` and its violations' paths `/items/i`; no job is created", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 413, description = "Body larger than `max_body_bytes`", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "`queue_full`: the batch would pass `max_queued`", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JsonBody(body): JsonBody<BatchBody>,
) -> Result<Response, ApiError> {
    let run_at_ms = match &body.run_at {
        Some(text) => Some(parse_time(text)?),
        None => None,
    };
    let (batch, jobs) = state
        .service
        .submit_batch(BatchRequest {
            job_type: body.job_type,
            items: body.items,
            priority: body.priority,
            max_attempts: body.max_attempts,
            timeout_s: body.timeout_s,
            run_at_ms,
            tenant: caller.tenant().map(str::to_string),
            concurrency_key: body.concurrency_key,
        })
        .await?;
    let view = BatchSubmitView {
        token: EventsToken::issue(&state, batch.id),
        batch: BatchView::of(&batch),
        jobs: jobs.iter().map(|job| job.id).collect(),
    };
    let mut response = (StatusCode::ACCEPTED, Json(view)).into_response();
    if let Ok(value) = HeaderValue::from_str(&format!("/v1/batches/{}", batch.id)) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    Ok(response)
}

/// Query of `GET /v1/batches`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct BatchListParams {
    /// Page size, 1..=100, default 20.
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of `GET /v1/batches`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchList {
    /// Newest first.
    pub batches: Vec<BatchView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<Uuid>,
}

/// `GET /v1/batches`: `{batches, next_cursor}`, newest first (a client key sees its
/// tenant's).
#[utoipa::path(get, path = "/v1/batches", tag = "batches",
    params(BatchListParams),
    responses(
        (status = 200, description = "A page of batches, newest first, with their counts and mean progress", body = BatchList),
        (status = 400, description = "`invalid_query` or `invalid_cursor`", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(params): ApiQuery<BatchListParams>,
) -> Result<Json<BatchList>, ApiError> {
    let (limit, before) = page_params(params.limit, params.cursor.as_deref())?;
    let page = state
        .service
        .list_batches(caller.tenant_filter(), before, limit)
        .await?;
    Ok(Json(BatchList {
        batches: page.batches.iter().map(BatchView::of).collect(),
        next_cursor: page.next,
    }))
}

/// The batch `id` if the caller may see it; else `404`, as for an unknown one.
async fn visible_batch(
    state: &AppState,
    caller: &crate::auth::Principal,
    id: Uuid,
) -> Result<BatchRecord, ApiError> {
    let batch = state.service.batch(id).await?;
    if caller.sees_batch(&batch) {
        Ok(batch)
    } else {
        Err(ServiceError::BatchNotFound(id).into())
    }
}

/// `GET /v1/batches/{id}`.
#[utoipa::path(get, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = String, Path, description = "The batch's id (UUID)")),
    responses(
        (status = 200, description = "The batch: counts by status, mean progress, `finished_at` once every job is final", body = BatchView),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 404, description = "Unknown, expired (all its jobs expired), or another tenant's", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    BatchId(id): BatchId,
) -> Result<Json<BatchView>, ApiError> {
    let batch = visible_batch(&state, &caller, id).await?;
    Ok(Json(BatchView::of(&batch)))
}

/// What a batch's cancel or retry did.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchChange {
    /// The batch after the change.
    #[serde(flatten)]
    pub batch: BatchView,
    /// Jobs cancelled (or, running, asked to stop) / queued again.
    pub changed: usize,
}

/// `POST /v1/batches/{id}/cancel`.
#[utoipa::path(post, path = "/v1/batches/{id}/cancel", tag = "batches",
    params(("id" = String, Path, description = "The batch's id (UUID)")),
    responses(
        (status = 200, description = "Every queued job cancelled and every running one asked to stop (it ends `cancelled` shortly); finished jobs are left as they are", body = BatchChange),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 404, description = "Unknown batch", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    Caller(caller): Caller,
    BatchId(id): BatchId,
) -> Result<Json<BatchChange>, ApiError> {
    visible_batch(&state, &caller, id).await?;
    let changed = state.service.cancel_batch(id).await?;
    let batch = state.service.batch(id).await?;
    Ok(Json(BatchChange {
        batch: BatchView::of(&batch),
        changed,
    }))
}

/// `POST /v1/batches/{id}/retry`.
#[utoipa::path(post, path = "/v1/batches/{id}/retry", tag = "batches",
    params(("id" = String, Path, description = "The batch's id (UUID)")),
    responses(
        (status = 202, description = "Every failed or cancelled job queued again as its next attempt", body = BatchChange),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 404, description = "Unknown batch", body = ErrorBody),
    ))]
pub async fn retry(
    State(state): State<AppState>,
    Caller(caller): Caller,
    BatchId(id): BatchId,
) -> Result<(StatusCode, Json<BatchChange>), ApiError> {
    visible_batch(&state, &caller, id).await?;
    let changed = state.service.retry_batch(id).await?;
    let batch = state.service.batch(id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchChange {
            batch: BatchView::of(&batch),
            changed,
        }),
    ))
}

/// `GET /v1/batches/{id}/events`.
#[utoipa::path(get, path = "/v1/batches/{id}/events", tag = "batches",
    params(("id" = String, Path, description = "The batch's id (UUID)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (a plain decimal)"),
        JobEventsQuery),
    responses(
        (status = 200, description = "Server-Sent Events of the batch's own log: `status` (a job changed status: `{job_id, status, attempt, error?, batch_progress, counts}`), `progress` (`{job_id, progress, message, batch_progress}`), then `batch_completed` (`{counts, progress, finished_at}`), which ends the stream; the `id:` is the batch's own sequence number", content_type = "text/event-stream", body = String),
        (status = 204, description = "The batch is finished and nothing follows the given id"),
        (status = 400, description = "Malformed `Last-Event-ID`, or beyond the batch's last event", body = ErrorBody),
        (status = 401, description = "No valid key, session or events token", body = ErrorBody),
        (status = 404, description = "Unknown batch", body = ErrorBody),
        (status = 429, description = "`too_many_streams`", body = ErrorBody),
    ))]
pub async fn events(
    State(state): State<AppState>,
    BatchId(id): BatchId,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<JobEventsQuery>,
) -> Result<Response, ApiError> {
    let caller = authenticate_events(&state, &headers, query.token.as_deref(), id)?;
    // No position: the batch's whole log.
    let after = last_event_id(&headers, query.last_event_id.as_deref())?.unwrap_or(0);
    let permit = stream_permit(&state)?;
    let follow = state.service.follow_batch(id, Some(after)).await?;
    let batch = &follow.batch;
    if !caller.sees_batch(batch) {
        return Err(ServiceError::BatchNotFound(id).into());
    }
    // Finished until a retry reopens it.
    let (over, last_seq) = (batch.is_finished(), batch.last_seq);
    log_stream(
        &state,
        permit,
        "batch",
        over,
        last_seq,
        after,
        follow.events,
    )
}
