//! Server-Sent Events: one job's events (`/v1/jobs/{id}/events`) and every job's events
//! (`/v1/events`).
//!
//! Both are the same [`LogStream`] over a different log: a job's own log (positions are the
//! job's event sequence numbers) or the feed of every job's events (positions are feed
//! positions, durable and monotonic across jobs). A stream subscribes to live events
//! *first*, then replays the log after the client's `Last-Event-ID`, then goes live,
//! dropping live events it already replayed: nothing committed in between can fall through
//! the gap, and nothing comes twice. A subscriber that lags past its buffer is closed; it
//! reconnects and replays.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, broadcast};
use tokio_util::sync::CancellationToken;
use utoipa::IntoParams;
use uuid::Uuid;

use super::AppState;
use super::access::{Caller, authenticate_events, visible_job};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, JobId};
use crate::store::{Bus, JobEvent, JobRecord, JobStatus, Store, StoreError, event_names};

/// Events replayed from the log per read.
const REPLAY_PAGE: usize = 512;

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
    let store = state.service.store().clone();
    // Subscribed before the job is read, so no event committed in between is missed.
    let live = store.bus.subscribe_job(id);
    let release = ReleaseJobChannel {
        bus: store.bus.clone(),
        id,
    };
    let job = visible_job(&state, &caller, id)?;
    if job.status.is_terminal() && after >= job.last_seq {
        // Nothing will ever follow: 204 tells EventSource to stop reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    if after > job.last_seq {
        // Events are stored before anyone sees them, so no client can hold a later id;
        // following from there would silently drop everything, the ending included.
        return Err(ApiError::bad_request(
            "invalid_last_event_id",
            format!(
                "Last-Event-ID {after} is beyond this job's last event ({}); resume from an \
                 id this stream sent",
                job.last_seq
            ),
        ));
    }
    let log = JobLog {
        store,
        job,
        _release: release,
    };
    let stream = LogStream::new(log, live, after, state.shutdown.clone(), permit);
    Ok(sse_response(
        stream.into_events(),
        state.settings.keep_alive,
    ))
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
    let store = state.service.store().clone();
    // Subscribed before the feed is read, so no event committed in between is missed.
    let live = store.bus.subscribe_all();
    let (first, newest) = store
        .feed_bounds()
        .map_err(crate::jobs::ServiceError::from)?
        .unwrap_or((1, 0));
    // No position (a new client, e.g. a dashboard that loads the job list next): the
    // events from now on, not the whole retained feed (and never a 410).
    let after = position.unwrap_or(newest);
    if after > newest {
        return Err(ApiError::bad_request(
            "invalid_last_event_id",
            format!(
                "Last-Event-ID {after} is beyond the newest event ({newest}); resume from an \
                 id this stream sent"
            ),
        ));
    }
    if after.saturating_add(1) < first {
        return Err(feed_expired(after, first));
    }
    let log = FeedLog {
        store,
        job_type: query.job_type,
        status,
        caller,
    };
    let stream = LogStream::new(log, live, after, state.shutdown.clone(), permit);
    Ok(sse_response(
        stream.into_events(),
        state.settings.keep_alive,
    ))
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

fn sse_response(
    events: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
    keep_alive: Duration,
) -> Response {
    // The first frame tells EventSource how soon to reconnect.
    let hint = stream::once(async { Ok(Event::default().retry(Duration::from_secs(2))) });
    let mut response = Sse::new(hint.chain(events))
        .keep_alive(KeepAlive::new().interval(keep_alive))
        .into_response();
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

fn stream_permit(state: &AppState) -> Result<OwnedSemaphorePermit, ApiError> {
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
fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<Option<u64>, ApiError> {
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

/// A durable log of events that a [`LogStream`] replays before it goes live.
trait EventLog: Send + 'static {
    /// Up to `limit` events after position `after`, in order.
    fn after(&self, after: u64, limit: usize) -> Result<Vec<JobEvent>, StoreError>;
    /// An event's position in this log (its SSE `id:`).
    fn position(event: &JobEvent) -> u64;
    /// Whether this client is shown the event (filters, tenants).
    fn shows(&self, event: &JobEvent) -> bool;
    /// Whether the stream ends after the event.
    fn ends_after(event: &JobEvent) -> bool;
    /// The event's SSE frame.
    fn frame(event: &JobEvent) -> Event;
}

/// One job's own log.
struct JobLog {
    store: Arc<Store>,
    job: JobRecord,
    _release: ReleaseJobChannel,
}

impl EventLog for JobLog {
    fn after(&self, after: u64, limit: usize) -> Result<Vec<JobEvent>, StoreError> {
        self.store.events_after(&self.job, after, limit)
    }

    fn position(event: &JobEvent) -> u64 {
        event.seq
    }

    fn shows(&self, _event: &JobEvent) -> bool {
        true
    }

    fn ends_after(event: &JobEvent) -> bool {
        event_names::is_terminal(&event.name)
    }

    fn frame(event: &JobEvent) -> Event {
        Event::default()
            .id(event.seq.to_string())
            .event(event.name.as_str())
            .data(event.data_text())
    }
}

/// The feed of every job's events, filtered for one client.
struct FeedLog {
    store: Arc<Store>,
    job_type: Option<String>,
    status: Option<JobStatus>,
    caller: crate::auth::Principal,
}

impl EventLog for FeedLog {
    fn after(&self, after: u64, limit: usize) -> Result<Vec<JobEvent>, StoreError> {
        let page = self.store.feed_after(after, limit)?;
        // Trimmed while this client replayed: it cannot have every event; end the stream
        // so its reconnect is told (`410`) instead of silently skipping some.
        if let Some((first, _)) = self.store.feed_bounds()?
            && after.saturating_add(1) < first
        {
            return Err(StoreError::Conflict(format!(
                "the feed was trimmed past position {after} while the client replayed"
            )));
        }
        Ok(page)
    }

    fn position(event: &JobEvent) -> u64 {
        event.feed_seq
    }

    fn shows(&self, event: &JobEvent) -> bool {
        self.job_type.as_ref().is_none_or(|t| *t == event.job_type)
            && self.status.is_none_or(|s| s == event.status)
            && self.caller.sees_tenant(event.tenant.as_deref())
    }

    fn ends_after(_event: &JobEvent) -> bool {
        false
    }

    fn frame(event: &JobEvent) -> Event {
        Event::default()
            .id(event.feed_seq.to_string())
            .event(event.name.as_str())
            .data(event.dashboard_data_text())
    }
}

/// Forgets a job's bus channel once its last subscriber is gone.
struct ReleaseJobChannel {
    bus: Arc<Bus>,
    id: Uuid,
}

impl Drop for ReleaseJobChannel {
    fn drop(&mut self) {
        self.bus.release_job(self.id);
    }
}

/// Replay after a position, then live, without gap or duplicate: the one implementation
/// of that rule, for every event stream.
struct LogStream<L: EventLog> {
    /// Declared before `log`, so it is dropped first: a job log's channel is released
    /// only once this receiver is gone.
    live: broadcast::Receiver<Arc<JobEvent>>,
    log: L,
    /// The position of the last event this stream passed (shown or filtered out).
    last: u64,
    replaying: bool,
    /// Shared with every other subscriber: never copied per subscriber.
    buffer: VecDeque<Arc<JobEvent>>,
    done: bool,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

impl<L: EventLog> LogStream<L> {
    fn new(
        log: L,
        live: broadcast::Receiver<Arc<JobEvent>>,
        after: u64,
        shutdown: CancellationToken,
        permit: OwnedSemaphorePermit,
    ) -> Self {
        Self {
            live,
            log,
            last: after,
            replaying: true,
            buffer: VecDeque::new(),
            done: false,
            shutdown,
            _permit: permit,
        }
    }

    fn into_events(self) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
        stream::unfold(self, Self::next).map(Ok::<_, Infallible>)
    }

    async fn next(mut self) -> Option<(Event, Self)> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                let position = L::position(&event);
                if position <= self.last {
                    continue;
                }
                self.last = position;
                if !self.log.shows(&event) {
                    continue;
                }
                self.done = L::ends_after(&event);
                return Some((L::frame(&event), self));
            }
            if self.replaying {
                match self.log.after(self.last, REPLAY_PAGE) {
                    Ok(page) if page.is_empty() => self.replaying = false,
                    Ok(page) => self.buffer.extend(page.into_iter().map(Arc::new)),
                    Err(error) => {
                        tracing::warn!(%error, "event replay ended the stream");
                        return None;
                    }
                }
                continue;
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                received = self.live.recv() => match received {
                    Ok(event) => {
                        let position = L::position(&event);
                        if position == self.last + 1 {
                            self.buffer.push_back(event);
                        } else if position > self.last {
                            // A gap (should not happen): read what is missing from the log.
                            self.replaying = true;
                        }
                    }
                    // Too slow, or the bus went away: close; the client resumes from its
                    // last id.
                    Err(_) => return None,
                },
            }
        }
    }
}
