//! Server-Sent Events: one job's events (`/v1/jobs/{id}/events`) and every job's events
//! (`/v1/events`).
//!
//! Both follow a log through the job service (`JobService::follow_job`, `follow_feed`),
//! which replays after the client's `Last-Event-ID` and then goes live without gap or
//! duplicate; this module owns only the HTTP side: positions from `Last-Event-ID`, the
//! event names and encodings on the wire, stream limits, and shutdown. A subscriber that
//! lags past its buffer is closed; it reconnects and replays.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use utoipa::IntoParams;

use super::AppState;
use super::access::{Caller, authenticate_events};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, JobId};
use crate::jobs::{FeedFilter, FeedRefusal, JobEvent, JobStatus, ServiceError};

/// Query of `/v1/jobs/{id}/events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobEventsQuery {
    /// For clients that cannot set the `Last-Event-ID` header. When both are given the
    /// header wins; an invalid value in either is a `400`.
    pub last_event_id: Option<String>,
    /// The job's `events_token`, for `EventSource`, which cannot send headers. Never an
    /// API key.
    pub token: Option<String>,
}

/// `GET /v1/jobs/{id}/events`.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "events",
    params(("id" = String, Path, description = "The job's id (UUID)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (a plain decimal)"),
        JobEventsQuery),
    responses(
        (status = 200, description = "Server-Sent Events: `status`, `progress`, `partial`, `token`, `replayed`, then one of `completed`, `failed`, `cancelled`; the `id:` is the event's sequence number", content_type = "text/event-stream", body = String),
        (status = 204, description = "The job is over and nothing follows the given id"),
        (status = 400, description = "Malformed `Last-Event-ID`, or an API key in the URL (`key_in_url`)", body = ErrorBody),
        (status = 401, description = "No valid key, session or events token", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
        (status = 429, description = "`too_many_streams`", body = ErrorBody),
    ))]
pub async fn job_events(
    State(state): State<AppState>,
    JobId(id): JobId,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<JobEventsQuery>,
) -> Result<Response, ApiError> {
    let caller = authenticate_events(&state, &headers, query.token.as_deref(), id)?;
    // No position: the job's whole log, from its first event.
    let after = last_event_id(&headers, query.last_event_id.as_deref())?.unwrap_or(0);
    let permit = stream_permit(&state)?;
    let follow = state.service.follow_job(id, Some(after)).await?;
    let job = &follow.job;
    if !caller.sees(job) {
        return Err(ServiceError::NotFound(id).into());
    }
    let over = job.status.is_terminal();
    let last_seq = job.last_seq;
    log_stream(&state, permit, "job", over, last_seq, after, follow.events)
}

/// The answer of a log's stream (a job's or a batch's, `what`) resumed after `after`:
/// `204` when the log is `over` and nothing follows the id, `400` for an id beyond its
/// last event, else `events` as SSE.
pub(super) fn log_stream(
    state: &AppState,
    permit: OwnedSemaphorePermit,
    what: &str,
    over: bool,
    last_seq: u64,
    after: u64,
    events: impl Stream<Item = Arc<JobEvent>> + Send + 'static,
) -> Result<Response, ApiError> {
    if over && after >= last_seq {
        // Nothing will follow: 204 tells EventSource to stop reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if after > last_seq {
        // Events are stored before anyone sees them, so no client can hold a later id;
        // following from there would silently drop everything, the ending included.
        return Err(ApiError::bad_request(
            "invalid_last_event_id",
            format!(
                "Last-Event-ID {after} is beyond this {what}'s last event ({last_seq}); resume \
                 from an id this stream sent"
            ),
        ));
    }
    let frames = events.map(|event| job_frame(&event));
    Ok(sse_response(frames, state, permit))
}

/// A job-stream event on the wire: `id:` its sequence number, `event:` its name, `data:`
/// its JSON (encoded once for every subscriber).
fn job_frame(event: &JobEvent) -> Event {
    let data = event.encodings.slots[0].get_or_init(|| event.data.to_string());
    Event::default()
        .id(event.seq.to_string())
        .event(event.name.as_str())
        .data(data)
}

/// A feed event on the wire: `id:` its feed position, the data wrapped as
/// `{job_id, type, status, seq, data}` (encoded once for every subscriber).
fn feed_frame(event: &JobEvent) -> Event {
    let data = event.encodings.slots[1].get_or_init(|| {
        serde_json::json!({
            "job_id": event.job_id,
            "type": event.job_type,
            "status": event.status,
            "seq": event.seq,
            "data": event.data,
        })
        .to_string()
    });
    Event::default()
        .id(event.feed_seq.to_string())
        .event(event.name.as_str())
        .data(data)
}

/// Query of `/v1/events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AllEventsQuery {
    /// Only jobs of this type.
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    /// Only events after which the job has this status.
    pub status: Option<String>,
    /// For clients that cannot set the `Last-Event-ID` header: resume after this feed
    /// position. When both are given the header wins; an invalid value in either is a
    /// `400`.
    pub last_event_id: Option<String>,
}

/// `GET /v1/events`: every job's events, for dashboards, resumable. Each event's data is
/// wrapped as `{job_id, type, status, seq, data}`; its `id:` is its position in the feed
/// of every job's events.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(AllEventsQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this feed position (a plain decimal)")),
    responses(
        (status = 200, description = "Server-Sent Events of every job: the retained events after `Last-Event-ID` (with none given: from now on), then live ones; each event's data is `{job_id, type, status, seq, data}` and its `id:` its position in the feed of all jobs' events", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_query`, or `invalid_last_event_id` (malformed, or beyond the newest event)", body = ErrorBody),
        (status = 401, description = "No valid key or session", body = ErrorBody),
        (status = 410, description = "`events_expired`: the events after `Last-Event-ID` are no longer kept (`events_feed_retention`); reload the jobs and follow without an id", body = ErrorBody),
        (status = 429, description = "`too_many_streams`", body = ErrorBody),
    ))]
pub async fn all_events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<AllEventsQuery>,
) -> Result<Response, ApiError> {
    let status = match query.status.as_deref() {
        Some(text) => Some(JobStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("unknown status {text:?}"))
        })?),
        None => None,
    };
    let position = last_event_id(&headers, query.last_event_id.as_deref())?;
    let permit = stream_permit(&state)?;
    let filter = FeedFilter {
        job_type: query.job_type,
        status,
        sees_tenant: Box::new(move |tenant| caller.sees_tenant(tenant)),
    };
    let events = match state.service.follow_feed(position, filter).await {
        Ok(events) => events,
        Err(FeedRefusal::Beyond { after, newest }) => {
            return Err(ApiError::bad_request(
                "invalid_last_event_id",
                format!(
                    "Last-Event-ID {after} is beyond the newest event ({newest}); resume \
                     from an id this stream sent"
                ),
            ));
        }
        Err(FeedRefusal::Expired { after, first }) => return Err(feed_expired(after, first)),
        Err(FeedRefusal::Store(error)) => return Err(error.into()),
    };
    let frames = events.map(|event| feed_frame(&event));
    Ok(sse_response(frames, &state, permit))
}

fn feed_expired(after: u64, first: u64) -> ApiError {
    ApiError::new(
        StatusCode::GONE,
        "events_expired",
        format!(
            "the events after {after} are no longer kept (the oldest kept is {first}); load \
             the jobs again and follow /v1/events without Last-Event-ID"
        ),
    )
}

/// The SSE response of `frames`: a reconnect hint first, keep-alives, and an end at
/// shutdown; the stream holds its `permit` while it is open.
fn sse_response(
    frames: impl Stream<Item = Event> + Send + 'static,
    state: &AppState,
    permit: OwnedSemaphorePermit,
) -> Response {
    // The first frame tells EventSource how soon to reconnect.
    let hint = stream::once(async { Event::default().retry(Duration::from_secs(2)) });
    let shutdown = state.shutdown.clone();
    let frames = hint
        .chain(frames)
        .take_until(async move { shutdown.cancelled_owned().await })
        .map(move |frame| {
            let _held = &permit;
            Ok::<_, Infallible>(frame)
        });
    let mut response = Sse::new(frames)
        .keep_alive(KeepAlive::new().interval(state.settings.keep_alive))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

pub(super) fn stream_permit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
    state.streams.clone().try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            "the server's limit on concurrent event streams is reached; retry shortly",
        )
    })
}

/// The client's position: the `Last-Event-ID` header, else `?last_event_id=`, else none
/// (an empty value counts as none). Each given value must be a plain decimal (`5`, not `+5`
/// or ` 5 `) that fits in 64 bits, or the request is a `400`, whichever of the two it is
/// in: a client that sends a broken id has lost its place and must be told.
pub(super) fn last_event_id(
    headers: &HeaderMap,
    query: Option<&str>,
) -> Result<Option<u64>, ApiError> {
    let header = match headers.get("last-event-id") {
        Some(value) => parse_event_id(value.as_bytes())?,
        None => None,
    };
    let query = match query {
        Some(text) => parse_event_id(text.as_bytes())?,
        None => None,
    };
    Ok(header.or(query))
}

/// Longest prefix of a bad id quoted back in the error.
const QUOTED_ID_CHARS: usize = 32;

fn parse_event_id(bytes: &[u8]) -> Result<Option<u64>, ApiError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let plain = bytes.iter().all(u8::is_ascii_digit);
    let parsed = plain
        .then(|| std::str::from_utf8(bytes).ok()?.parse::<u64>().ok())
        .flatten();
    parsed.map(Some).ok_or_else(|| {
        let text = String::from_utf8_lossy(bytes);
        let quoted: String = text.chars().take(QUOTED_ID_CHARS).collect();
        let cut = if quoted.len() < text.len() {
            format!(
                " (first {QUOTED_ID_CHARS} characters of {} bytes)",
                bytes.len()
            )
        } else {
            String::new()
        };
        ApiError::bad_request(
            "invalid_last_event_id",
            format!(
                "Last-Event-ID must be an event id this stream sent (a plain decimal number), \
                 got {quoted:?}{cut}"
            ),
        )
    })
}
