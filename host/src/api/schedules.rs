//! `/v1/schedules` (admin): jobs submitted at each tick of a cron expression, next to the
//! config file's `[schedules.NAME]`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::access::Admin;
use super::error::{ApiError, ErrorBody};
use super::extract::JsonBody;
use crate::jobs::{CatchUp, ScheduleRecord, ScheduleSpec, next_run_ms, rfc3339};

/// The body of `POST /v1/schedules`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScheduleBody {
    /// Unique: 1 to 64 letters, digits, `-` and `_`.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9_-]+$")]
    pub name: String,
    /// Five fields (`minute hour day-of-month month day-of-week`, e.g. `0 3 * * *`), or six
    /// with seconds first.
    pub cron: String,
    /// The job type each tick submits.
    #[serde(rename = "type")]
    pub job_type: String,
    /// Its payload, checked against the type's schema now; `{}` when left out.
    #[serde(default = "empty_object")]
    pub payload: Value,
    /// The IANA time zone the cron is read in (e.g. `Europe/Paris`); default UTC.
    pub timezone: Option<String>,
    /// Ticks missed while no Kiln ran: `once` (the default: one job) or `skip` (none).
    pub catch_up: Option<CatchUp>,
    /// The tenant its jobs belong to.
    pub tenant: Option<String>,
}

fn empty_object() -> Value {
    json!({})
}

/// A schedule as clients see it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleView {
    pub name: String,
    pub cron: String,
    /// `null`: UTC.
    pub timezone: Option<String>,
    #[serde(rename = "type")]
    pub job_type: String,
    pub payload: Value,
    pub catch_up: CatchUp,
    pub tenant: Option<String>,
    /// `config` (the config file's `[schedules.NAME]`) or `api`.
    pub source: &'static str,
    /// RFC 3339: when it was defined (or last redefined in the config).
    pub created_at: String,
    /// RFC 3339: its next tick (in the past while that tick is being handled); `null`
    /// when its cron has no next tick.
    pub next_run_at: Option<String>,
    /// RFC 3339: the latest tick handled.
    pub last_run_at: Option<String>,
    /// The job of the latest tick that submitted one.
    pub last_job: Option<Uuid>,
    /// Why the latest tick submitted no job (the type is gone, the payload no longer fits).
    pub last_error: Option<String>,
}

impl ScheduleView {
    fn of(record: ScheduleRecord) -> Self {
        Self {
            next_run_at: next_run_ms(&record).map(rfc3339),
            last_run_at: record.last_tick_ms.map(rfc3339),
            source: if record.from_config { "config" } else { "api" },
            created_at: rfc3339(record.created_at_ms),
            name: record.name,
            cron: record.cron,
            timezone: record.timezone,
            job_type: record.job_type,
            payload: record.payload,
            catch_up: record.catch_up,
            tenant: record.tenant,
            last_job: record.last_job,
            last_error: record.last_error,
        }
    }
}

/// The answer of `GET /v1/schedules`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScheduleList {
    /// Every schedule, by name.
    pub schedules: Vec<ScheduleView>,
}

/// `POST /v1/schedules`: `201` with the schedule; its first tick is the next one.
#[utoipa::path(post, path = "/v1/schedules", tag = "schedules",
    request_body(content = ScheduleBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; it ticks from now on", body = ScheduleView),
        (status = 400, description = "Malformed JSON, a bad name, cron or time zone, an unknown type, a payload failing its schema (`invalid_payload`), or `max_schedules` reached", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 409, description = "A schedule of that name exists", body = ErrorBody),
    ))]
pub async fn create(
    State(state): State<AppState>,
    _: Admin,
    JsonBody(body): JsonBody<ScheduleBody>,
) -> Result<(StatusCode, Json<ScheduleView>), ApiError> {
    let record = state
        .service
        .create_schedule(ScheduleSpec {
            name: body.name,
            cron: body.cron,
            timezone: body.timezone,
            job_type: body.job_type,
            payload: body.payload,
            catch_up: body.catch_up.unwrap_or_default(),
            tenant: body.tenant,
        })
        .await?;
    Ok((StatusCode::CREATED, Json(ScheduleView::of(record))))
}

/// `GET /v1/schedules`.
#[utoipa::path(get, path = "/v1/schedules", tag = "schedules",
    responses(
        (status = 200, description = "Every schedule, by name, with its next and latest run", body = ScheduleList),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
    ))]
pub async fn list(State(state): State<AppState>, _: Admin) -> Result<Json<ScheduleList>, ApiError> {
    let schedules = state.service.schedules().await?;
    Ok(Json(ScheduleList {
        schedules: schedules.into_iter().map(ScheduleView::of).collect(),
    }))
}

/// `GET /v1/schedules/{name}`.
#[utoipa::path(get, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 200, description = "The schedule", body = ScheduleView),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
    ))]
pub async fn get(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<Json<ScheduleView>, ApiError> {
    let schedules = state.service.schedules().await?;
    let record = schedules
        .into_iter()
        .find(|s| s.name == name)
        .ok_or(crate::jobs::ServiceError::ScheduleNotFound(name))?;
    Ok(Json(ScheduleView::of(record)))
}

/// `DELETE /v1/schedules/{name}`: `204`; no tick submits anything after it.
#[utoipa::path(delete, path = "/v1/schedules/{name}", tag = "schedules",
    params(("name" = String, Path, description = "The schedule's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 403, description = "Not an admin key", body = ErrorBody),
        (status = 404, description = "No such schedule", body = ErrorBody),
        (status = 409, description = "Defined in the config file: remove it there", body = ErrorBody),
    ))]
pub async fn delete(
    State(state): State<AppState>,
    _: Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.service.delete_schedule(&name).await?;
    Ok(StatusCode::NO_CONTENT)
}
