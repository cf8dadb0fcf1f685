//! The HTTP API: routes, extractors, the error shape and SSE.
//!
//! [`router`] builds the whole app from an [`AppState`]; `kiln serve` binds it, and tests
//! drive it on `127.0.0.1:0`.

mod access;
mod batches;
mod dashboard;
mod error;
mod extract;
mod files;
mod jobs;
mod listener;
mod metrics;
mod openapi;
mod ops;
mod schedules;
mod sse;
mod system;
mod view;

pub use error::ApiError;
pub use listener::Listener;
pub use view::{JobView, render_job};

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::auth::Auth;
use crate::jobs::JobService;

/// Settings of the HTTP layer.
#[derive(Clone, Debug)]
pub struct ApiSettings {
    /// Largest request body, bytes. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Concurrent SSE streams; beyond it, `429`. Default 10,000.
    pub max_streams: usize,
    /// SSE keep-alive comment interval. Default 15 s.
    pub keep_alive: Duration,
    /// Longest `?wait=` on submit, seconds. Default 60.
    pub max_wait_secs: u64,
    /// Events an SSE subscriber may fall behind before it is disconnected (it then
    /// resumes from the log). Default 1024.
    pub sse_buffer_events: usize,
    /// Newest events of all jobs kept for clients resuming `/v1/events` (older positions
    /// answer `410 events_expired`). Default 1,000,000.
    pub feed_retention: u64,
    /// Thresholds of the queue health rule (`[health]`).
    pub health: crate::monitor::HealthThresholds,
    /// Origins allowed to call the API from a browser (CORS). Default none.
    pub cors_origins: Vec<String>,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_body_bytes: 16 * 1024 * 1024,
            max_streams: 10_000,
            keep_alive: Duration::from_secs(15),
            max_wait_secs: 60,
            sse_buffer_events: 1024,
            feed_retention: 1_000_000,
            health: crate::monitor::HealthThresholds::default(),
            cors_origins: Vec::new(),
        }
    }
}

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The job service.
    pub service: JobService,
    /// HTTP settings.
    pub settings: Arc<ApiSettings>,
    /// Permits for concurrent SSE streams.
    pub streams: Arc<Semaphore>,
    /// Cancelled at shutdown: ends every SSE stream so the server can drain.
    pub shutdown: CancellationToken,
    /// Who may call what.
    pub auth: Arc<Auth>,
}

impl AppState {
    /// State for `service` with `settings` and access control `auth`.
    pub fn new(
        service: JobService,
        settings: ApiSettings,
        auth: Arc<Auth>,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            streams: Arc::new(Semaphore::new(settings.max_streams)),
            settings: Arc::new(settings),
            service,
            shutdown,
            auth,
        }
    }
}

/// How long a `/v1/` request made while the server starts waits for the start to end
/// before it is answered `503 starting`. Most starts (cached components, `describe`
/// within its 2 s deadline) end within it, so clients reconnecting across a restart,
/// such as a browser's `EventSource`, which gives up on an error status, see no error.
pub const STARTING_HOLD: Duration = Duration::from_secs(5);

/// Until the job service has started (plugins loaded, interrupted jobs recovered),
/// `/healthz` answers `503 starting` at once and `/v1/` routes wait up to
/// [`STARTING_HOLD`], then answer the same; `/metrics`, the OpenAPI document and the
/// dashboard's files answer meanwhile.
async fn refuse_while_starting(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path();
    let started = if path == "/healthz" {
        state.service.is_started()
    } else if path.starts_with("/v1/") {
        state.service.wait_started(STARTING_HOLD).await
    } else {
        true
    };
    if started {
        return next.run(request).await;
    }
    let mut answer = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "starting",
        "Kiln is starting: it is loading its plugins and recovering interrupted jobs; \
         try again in a moment",
    )
    .into_response();
    answer
        .headers_mut()
        .insert(axum::http::header::RETRY_AFTER, 1.into());
    answer
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.max_body_bytes;
    let cors = access::cors_layer(&state.settings.cors_origins);
    let router = Router::new()
        .route("/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/v1/jobs/{id}", get(jobs::get))
        .route("/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/v1/jobs/{id}/retry", post(jobs::retry))
        .route("/v1/jobs/{id}/token", post(access::job_token))
        .route("/v1/batches", post(batches::submit).get(batches::list))
        .route("/v1/batches/{id}", get(batches::get))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/v1/batches/{id}/retry", post(batches::retry))
        .route("/v1/batches/{id}/events", get(batches::events))
        .route("/v1/jobs/{id}/artifacts/{name}", get(files::artifact))
        .route(
            "/v1/files",
            // Uploads stream to disk under their own limit, `max_file_bytes`.
            post(files::upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/files/{id}", get(files::metadata))
        .route("/v1/files/{id}/content", get(files::content))
        .route(
            "/v1/session",
            post(access::start_session).delete(access::end_session),
        )
        .route(
            "/v1/schedules",
            post(schedules::create).get(schedules::list),
        )
        .route(
            "/v1/schedules/{name}",
            get(schedules::get).delete(schedules::delete),
        )
        .route("/v1/jobs/bulk/retry", post(ops::bulk_retry))
        .route("/v1/jobs/bulk/cancel", post(ops::bulk_cancel))
        .route("/v1/doctor", get(ops::doctor))
        .route("/v1/doctor/cleanup", post(ops::cleanup))
        .route("/v1/jobs/{id}/events", get(sse::job_events))
        .route("/v1/events", get(sse::all_events))
        .route("/v1/plugins", get(system::plugins))
        .route("/v1/queues", get(system::queues))
        .route("/v1/nodes", get(system::nodes))
        .route("/healthz", get(system::healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .merge(dashboard::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            refuse_while_starting,
        ))
        .with_state(state);
    match cors {
        Some(cors) => router.layer(cors),
        None => router,
    }
}
