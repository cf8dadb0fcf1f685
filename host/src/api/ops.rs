//! Operator routes: bulk retry and bulk cancel, the doctor's report and an expiry sweep
//! on demand.

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::AppState;
use super::access::Admin;
use super::error::ApiError;
use super::extract::{ApiQuery, RawBody, parse_json, require_json};
use crate::jobs::JobStatus;
use crate::jobs::{BulkFilter, DoctorReport, MAX_BULK};

/// How long a bulk cancel waits for running jobs to stop.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Default `limit` of the bulk routes.
const DEFAULT_LIMIT: usize = 100;

/// Default `stuck_after_s` of the doctor.
const DEFAULT_STUCK_AFTER_S: u64 = 600;

/// The body of `POST /v1/jobs/bulk/retry`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkRetryBody {
    /// `failed` (default) or `cancelled`.
    pub status: Option<String>,
    /// Only jobs of this type.
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    /// 1..=1000, default 100.
    pub limit: Option<usize>,
}

/// The body of `POST /v1/jobs/bulk/cancel`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BulkCancelBody {
    /// `running` (default) or `queued`.
    pub status: Option<String>,
    /// Only jobs of this type.
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    /// Running jobs started, or queued jobs created, longer ago than this many seconds.
    pub older_than_s: Option<u64>,
    /// 1..=1000, default 100.
    pub limit: Option<usize>,
}

/// An optional JSON body: empty means every default; otherwise it must be
/// `application/json` and of the expected shape.
fn optional_body<T: DeserializeOwned + Default>(
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    require_json(headers)?;
    parse_json(body)
}

fn status_of(
    text: Option<&str>,
    default: JobStatus,
    allowed: &[JobStatus],
) -> Result<JobStatus, ApiError> {
    let Some(text) = text else {
        return Ok(default);
    };
    match JobStatus::parse(text) {
        Some(status) if allowed.contains(&status) => Ok(status),
        _ => {
            let names: Vec<String> = allowed
                .iter()
                .map(|status| format!("\"{}\"", status.as_str()))
                .collect();
            Err(ApiError::bad_request(
                "invalid_request",
                format!("status must be one of {}, not {text:?}", names.join(", ")),
            ))
        }
    }
}

fn limit_of(limit: Option<usize>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if (1..=MAX_BULK).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(
            "invalid_request",
            format!("limit must be between 1 and {MAX_BULK}"),
        ))
    }
}

/// `POST /v1/jobs/bulk/retry`: `{"retried": n, "ids": [...]}`.
pub async fn bulk_retry(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let body: BulkRetryBody = optional_body(&headers, &body)?;
    let filter = BulkFilter {
        status: status_of(
            body.status.as_deref(),
            JobStatus::Failed,
            &[JobStatus::Failed, JobStatus::Cancelled],
        )?,
        job_type: body.job_type,
        older_than: None,
        limit: limit_of(body.limit)?,
    };
    let ids = state.service.bulk_retry(&filter).await?;
    Ok(Json(json!({ "retried": ids.len(), "ids": ids })))
}

/// `POST /v1/jobs/bulk/cancel`: `{"cancelled": n, "ids": [...]}`.
pub async fn bulk_cancel(
    State(state): State<AppState>,
    _: Admin,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    let body: BulkCancelBody = optional_body(&headers, &body)?;
    let filter = BulkFilter {
        status: status_of(
            body.status.as_deref(),
            JobStatus::Running,
            &[JobStatus::Running, JobStatus::Queued, JobStatus::Waiting],
        )?,
        job_type: body.job_type,
        older_than: body.older_than_s.map(Duration::from_secs),
        limit: limit_of(body.limit)?,
    };
    let ids = state.service.bulk_cancel(&filter, CANCEL_WAIT).await?;
    Ok(Json(json!({ "cancelled": ids.len(), "ids": ids })))
}

/// Query of `GET /v1/doctor`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DoctorParams {
    /// A job running longer than this, or queued past its start by more, is stuck.
    /// Seconds, default 600.
    pub stuck_after_s: Option<u64>,
}

/// `GET /v1/doctor`: stuck jobs, recent failures by kind, plugins, providers.
pub async fn doctor(
    State(state): State<AppState>,
    _: Admin,
    ApiQuery(params): ApiQuery<DoctorParams>,
) -> Result<Json<DoctorReport>, ApiError> {
    let stuck_after = params.stuck_after_s.unwrap_or(DEFAULT_STUCK_AFTER_S);
    let report = state
        .service
        .doctor(Duration::from_secs(stuck_after))
        .await?;
    Ok(Json(report))
}

/// `POST /v1/doctor/cleanup`: runs the expiry sweep now; `{"deleted": n}`.
pub async fn cleanup(State(state): State<AppState>, _: Admin) -> Json<Value> {
    let deleted = state.service.sweep_once().await;
    Json(json!({ "deleted": deleted }))
}
