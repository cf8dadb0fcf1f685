//! Server-Sent Events: one job's events (`/v1/jobs/{id}/events`) and every job's events
//! (`/v1/events`).
//!
//! A job stream subscribes to live events *first*, then replays the log after the
//! client's `Last-Event-ID`, then goes live, dropping live events it already replayed:
//! nothing committed in between can fall through the gap, and nothing comes twice. A
//! subscriber that lags past its buffer is closed; it reconnects and replays.

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
use crate::store::{Bus, JobEvent, JobRecord, JobStatus, Store, event_names};

/// Events replayed from the log per read.
const REPLAY_PAGE: usize = 512;

/// Query of `/v1/jobs/{id}/events`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct JobEventsQuery {
    /// For clients that cannot set the `Last-Event-ID` header.
    pub last_event_id: Option<String>,
    /// The job's `events_token`, for `EventSource`, which cannot send headers. Never an
    /// API key.
    pub token: Option<String>,
}

/// `GET /v1/jobs/{id}/events`.
#[utoipa::path(get, path = "/v1/jobs/{id}/events", tag = "events",
    params(("id" = String, Path, description = "The job's id (UUID)"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id"),
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
    let after = last_event_id(&headers, query.last_event_id.as_deref())?;
    let permit = stream_permit(&state)?;
    let store = state.service.store().clone();
    // Subscribed before the job is read, so no event committed in between is missed.
    let subscription = Subscription::job(store.bus.clone(), id);
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
    let stream = JobStream {
        store,
        job,
        subscription,
        last_seq: after,
        replaying: true,
        buffer: VecDeque::new(),
        done: false,
        shutdown: state.shutdown.clone(),
        _permit: permit,
    };
    let events = stream::unfold(stream, JobStream::next).map(Ok::<_, Infallible>);
    Ok(sse_response(events, state.settings.keep_alive))
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
}

/// `GET /v1/events`: live events of every job, for dashboards. Each event's data is
/// wrapped as `{job_id, type, status, seq, data}`.
#[utoipa::path(get, path = "/v1/events", tag = "events",
    params(AllEventsQuery),
    responses(
        (status = 200, description = "Server-Sent Events of every job, live; each event's data is `{job_id, type, status, seq, data}`", content_type = "text/event-stream", body = String),
        (status = 400, description = "`invalid_query`", body = ErrorBody),
        (status = 401, description = "No valid key or session", body = ErrorBody),
        (status = 429, description = "`too_many_streams`", body = ErrorBody),
    ))]
pub async fn all_events(
    State(state): State<AppState>,
    Caller(caller): Caller,
    ApiQuery(query): ApiQuery<AllEventsQuery>,
) -> Result<Response, ApiError> {
    let status = match query.status.as_deref() {
        Some(text) => Some(JobStatus::parse(text).ok_or_else(|| {
            ApiError::bad_request("invalid_query", format!("unknown status {text:?}"))
        })?),
        None => None,
    };
    let permit = stream_permit(&state)?;
    let live = state.service.store().bus.subscribe_all();
    let shutdown = state.shutdown.clone();
    let filter_type = query.job_type;
    let events = stream::unfold(
        (live, shutdown, permit),
        move |(mut live, shutdown, permit)| {
            let filter_type = filter_type.clone();
            let caller = caller.clone();
            async move {
                loop {
                    let event = tokio::select! {
                        () = shutdown.cancelled() => return None,
                        received = live.recv() => match received {
                            Ok(event) => event,
                            // Lagged: close; the dashboard reconnects and refreshes.
                            Err(_) => return None,
                        },
                    };
                    if filter_type.as_ref().is_some_and(|t| *t != event.job_type)
                        || status.is_some_and(|s| s != event.status)
                        || !caller.sees_tenant(event.tenant.as_deref())
                    {
                        continue;
                    }
                    let sse = Event::default()
                        .event(event.name.as_str())
                        .data(event.dashboard_data_text());
                    return Some((sse, (live, shutdown, permit)));
                }
            }
        },
    )
    .map(Ok::<_, Infallible>);
    Ok(sse_response(events, state.settings.keep_alive))
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

/// The client's position: `Last-Event-ID` header, else `?last_event_id=`, else 0.
fn last_event_id(headers: &HeaderMap, query: Option<&str>) -> Result<u64, ApiError> {
    let text = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| invalid_last_event_id("(not text)"))?,
        ),
        None => query,
    };
    match text.map(str::trim) {
        None | Some("") => Ok(0),
        Some(text) => text.parse().map_err(|_| invalid_last_event_id(text)),
    }
}

fn invalid_last_event_id(text: &str) -> ApiError {
    ApiError::bad_request(
        "invalid_last_event_id",
        format!(
            "Last-Event-ID must be an event id from this stream (a whole number), got {text:?}"
        ),
    )
}

/// A live subscription to one job that forgets the job's channel when dropped.
struct Subscription {
    bus: Arc<Bus>,
    id: Uuid,
    live: Option<broadcast::Receiver<Arc<JobEvent>>>,
}

impl Subscription {
    fn job(bus: Arc<Bus>, id: Uuid) -> Self {
        let live = Some(bus.subscribe_job(id));
        Self { bus, id, live }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.live.take();
        self.bus.release_job(self.id);
    }
}

struct JobStream {
    store: Arc<Store>,
    job: JobRecord,
    subscription: Subscription,
    last_seq: u64,
    replaying: bool,
    /// Shared with every other subscriber: never copied per subscriber.
    buffer: VecDeque<Arc<JobEvent>>,
    done: bool,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

impl JobStream {
    async fn next(mut self) -> Option<(Event, Self)> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.buffer.pop_front() {
                if event.seq <= self.last_seq {
                    continue;
                }
                self.last_seq = event.seq;
                self.done = event_names::is_terminal(&event.name);
                let sse = Event::default()
                    .id(event.seq.to_string())
                    .event(event.name.as_str())
                    .data(event.data_text());
                return Some((sse, self));
            }
            if self.replaying {
                match self
                    .store
                    .events_after(&self.job, self.last_seq, REPLAY_PAGE)
                {
                    Ok(page) if page.is_empty() => self.replaying = false,
                    Ok(page) => self.buffer.extend(page.into_iter().map(Arc::new)),
                    Err(error) => {
                        tracing::error!(%error, job_id = %self.job.id, "event replay failed");
                        return None;
                    }
                }
                continue;
            }
            let live = self.subscription.live.as_mut()?;
            tokio::select! {
                () = self.shutdown.cancelled() => return None,
                received = live.recv() => match received {
                    Ok(event) if event.seq <= self.last_seq => {}
                    Ok(event) if event.seq == self.last_seq + 1 => self.buffer.push_back(event),
                    // A gap (should not happen): read what is missing from the log.
                    Ok(_) => self.replaying = true,
                    // Too slow, or the bus went away: close; the client resumes from its
                    // last id.
                    Err(_) => return None,
                },
            }
        }
    }
}
