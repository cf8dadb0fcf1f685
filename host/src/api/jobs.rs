//! `/v1/jobs`: submit, read, list, cancel, retry.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::AppState;
use super::access::{Caller, EventsToken, visible_job};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, JobId, JsonBody};
use super::view::JobView;
use crate::jobs::{DependencyFailure, JobStatus, ListQuery, SubmitRequest};
use uuid::Uuid;

/// The body of `POST /v1/jobs`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubmitBody {
    /// Job type.
    #[serde(rename = "type")]
    pub job_type: String,
    /// Payload; `{}` when left out.
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// Priority, -1000..=1000.
    pub priority: Option<i32>,
    /// Attempts.
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout, seconds.
    pub timeout_s: Option<u64>,
    /// RFC 3339 time before which the job does not start.
    pub run_at: Option<String>,
    /// Who the job runs for (e.g. your end user's id), 1 to 255 bytes: a queue shares its
    /// slots fairly between keys, and its `max_per_key` caps one key's running jobs.
    pub concurrency_key: Option<String>,
    /// Where to POST the job's JSON when it ends, signed per Standard Webhooks (default:
    /// the tenant's `[webhooks]` url, if set).
    pub webhook: Option<WebhookBody>,
    /// Jobs of yours that must complete first (at most `max_dependencies`, default
    /// 1,000): until they have, the job is `waiting` and holds no slot.
    #[serde(default)]
    pub depends_on: Vec<Uuid>,
    /// `fail` (the default): a dependency that fails or is cancelled fails the job with
    /// `error.kind = "dependency_failed"`; `run`: it runs once they have all ended.
    pub on_dependency_failure: Option<DependencyFailure>,
}

/// A submit's `webhook`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookBody {
    /// `http` or `https`; private and loopback addresses are refused unless
    /// `[webhooks] allow_private`.
    pub url: String,
}

fn empty_object() -> Value {
    json!({})
}

/// Query of `POST /v1/jobs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SubmitQuery {
    /// Wait up to this many seconds for the job to end (direct mode).
    pub wait: Option<f64>,
}

/// The answer of a submit: the job, and a token for following it from a browser.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubmitView {
    /// The job.
    #[serde(flatten)]
    pub job: JobView,
    /// Its events token.
    #[serde(flatten)]
    pub token: EventsToken,
}

/// `POST /v1/jobs`: `202` with the new job, `200` with the job an `Idempotency-Key` already
/// created, or `200` with the finished job when `?wait=` saw it end.
#[utoipa::path(post, path = "/v1/jobs", tag = "jobs",
    params(SubmitQuery,
        ("Idempotency-Key" = Option<String>, Header, description = "The same key returns the same job (1 to 255 characters)")),
    request_body(content = SubmitBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Created and queued, with a read-only `events_token` for its event stream", body = SubmitView,
            headers(("Location" = String, description = "The job's URL"))),
        (status = 200, description = "The job this Idempotency-Key already created (`Idempotent-Replayed: true`), or the finished job when `?wait=` saw it end", body = SubmitView),
        (status = 400, description = "Malformed JSON, unknown type, payload failing the type's JSON Schema (with `violations`), bad field or query", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 413, description = "Body larger than `max_body_bytes`", body = ErrorBody),
        (status = 415, description = "Content-Type is not application/json", body = ErrorBody),
        (status = 429, description = "`queue_full`: too many jobs waiting", body = ErrorBody),
        (status = 503, description = "The server is shutting down", body = ErrorBody),
    ))]
pub async fn submit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<SubmitQuery>,
    headers: HeaderMap,
    JsonBody(body): JsonBody<SubmitBody>,
) -> Result<Response, ApiError> {
    let wait = match query.wait {
        Some(secs) if !(0.0..=state.settings.max_wait_secs as f64).contains(&secs) => {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!(
                    "wait must be between 0 and {} seconds",
                    state.settings.max_wait_secs
                ),
            ));
        }
        Some(secs) => Some(Duration::from_secs_f64(secs)),
        None => None,
    };
    let idempotency_key = match headers.get("idempotency-key") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| {
                    ApiError::bad_request("invalid_request", "Idempotency-Key must be ASCII")
                })?
                .to_string(),
        ),
        None => None,
    };
    let run_at_ms = match &body.run_at {
        Some(text) => Some(parse_time(text)?),
        None => None,
    };
    let request = SubmitRequest {
        job_type: body.job_type,
        payload: body.payload,
        priority: body.priority,
        max_attempts: body.max_attempts,
        timeout_s: body.timeout_s,
        run_at_ms,
        idempotency_key,
        tenant: caller.tenant().map(str::to_string),
        concurrency_key: body.concurrency_key,
        webhook_url: body.webhook.map(|webhook| webhook.url),
        depends_on: body.depends_on,
        on_dependency_failure: body.on_dependency_failure,
        schedule: None,
    };
    let (mut job, created) = state.service.submit(request).await?;
    if let Some(wait) = wait {
        job = state.service.wait_for_end(job.id, wait).await?;
    }
    let status = if job.status.is_terminal() || !created {
        StatusCode::OK
    } else {
        StatusCode::ACCEPTED
    };
    let location = format!("/v1/jobs/{}", job.id);
    let view = SubmitView {
        token: EventsToken::issue(&state, job.id),
        job: JobView::of(job, &state.service).await?,
    };
    let mut response = (status, Json(view)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    if !created {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Parses an RFC 3339 time with its offset (`Z` or `±hh:mm`) into ms since the epoch.
/// A time without an offset is refused rather than guessed.
pub(super) fn parse_time(text: &str) -> Result<u64, ApiError> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!(
                    "run_at must be an RFC 3339 time with an offset, e.g. 2030-01-02T03:04:05Z: {e}"
                ),
            )
        })?;
    let ms = time.unix_timestamp_nanos() / 1_000_000;
    u64::try_from(ms).map_err(|_| ApiError::bad_request("invalid_request", "run_at is before 1970"))
}

/// `GET /v1/jobs/{id}`.
#[utoipa::path(get, path = "/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "The job's id (UUID)")),
    responses(
        (status = 200, description = "The job", body = JobView),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 404, description = "Unknown, expired, or another tenant's", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JobId(id): JobId,
) -> Result<Json<JobView>, ApiError> {
    let job = visible_job(&state, &caller, id).await?;
    Ok(Json(JobView::of(job, &state.service).await?))
}

/// Query of `GET /v1/jobs`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Filter by status.
    pub status: Option<String>,
    /// Filter by type.
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    /// Page size, 1..=100, default 20.
    pub limit: Option<usize>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only the jobs of this batch (its id).
    pub batch: Option<uuid::Uuid>,
}

/// A page of `GET /v1/jobs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct JobPage {
    /// Newest first.
    pub jobs: Vec<JobView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<uuid::Uuid>,
}

/// A listing's page size (1 to 100, default 20) and the id its page starts after.
pub(super) fn page_params(
    limit: Option<usize>,
    cursor: Option<&str>,
) -> Result<(usize, Option<uuid::Uuid>), ApiError> {
    let limit = limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "limit must be between 1 and 100",
        ));
    }
    let before = match cursor {
        Some(text) => Some(uuid::Uuid::parse_str(text).map_err(|_| {
            ApiError::bad_request(
                "invalid_cursor",
                format!("{text:?} is not a cursor from this API"),
            )
        })?),
        None => None,
    };
    Ok((limit, before))
}

/// `GET /v1/jobs`: `{jobs, next_cursor}`, newest first.
#[utoipa::path(get, path = "/v1/jobs", tag = "jobs",
    params(ListParams),
    responses(
        (status = 200, description = "A page of jobs, newest first", body = JobPage),
        (status = 400, description = "`invalid_query` or `invalid_cursor`", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(params): ApiQuery<ListParams>,
) -> Result<Json<JobPage>, ApiError> {
    let status = match params.status.as_deref() {
        Some(text) => Some(JobStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!(
                    "unknown status {text:?}; use queued, running, completed, failed or cancelled"
                ),
            )
        })?),
        None => None,
    };
    let (limit, before) = page_params(params.limit, params.cursor.as_deref())?;
    let page = state
        .service
        .list(&ListQuery {
            status,
            job_type: params.job_type,
            tenant: caller.tenant_filter().map(str::to_string),
            limit,
            before,
            batch: params.batch,
        })
        .await?;
    let mut jobs = Vec::with_capacity(page.jobs.len());
    for job in page.jobs {
        jobs.push(JobView::of(job, &state.service).await?);
    }
    Ok(Json(JobPage {
        jobs,
        next_cursor: page.next,
    }))
}

/// `POST /v1/jobs/{id}/cancel`.
#[utoipa::path(post, path = "/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "The job's id (UUID)")),
    responses(
        (status = 200, description = "The job, `cancelled` (a running job is stopped; the call waits up to 5 s for it)", body = JobView),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 409, description = "The job is already finished", body = ErrorBody),
    ))]
pub async fn cancel(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JobId(id): JobId,
) -> Result<Json<JobView>, ApiError> {
    let job = visible_job(&state, &caller, id).await?;
    let job = state.service.cancel(job.id, Duration::from_secs(5)).await?;
    Ok(Json(JobView::of(job, &state.service).await?))
}

/// `POST /v1/jobs/{id}/retry`.
#[utoipa::path(post, path = "/v1/jobs/{id}/retry", tag = "jobs",
    params(("id" = String, Path, description = "The job's id (UUID)")),
    responses(
        (status = 202, description = "The job queued again as its next attempt", body = JobView),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 409, description = "The job is not `failed` or `cancelled`", body = ErrorBody),
    ))]
pub async fn retry(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JobId(id): JobId,
) -> Result<(StatusCode, Json<JobView>), ApiError> {
    let job = visible_job(&state, &caller, id).await?;
    let job = state.service.retry(job.id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(JobView::of(job, &state.service).await?),
    ))
}
