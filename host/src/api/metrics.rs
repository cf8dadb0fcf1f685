//! `GET /metrics`: Prometheus text exposition of [`crate::monitor::Metrics`], with the
//! figures the store and the scheduler already know read at scrape time.

use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::access::require_admin;
use super::error::ApiError;
use super::system::queue_views;
use crate::monitor::{QueueSnapshot, Snapshot};

/// The content type of the Prometheus text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `GET /metrics`.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses(
        (status = 200, description = "Every `kiln_*` metric in the Prometheus text format (0.0.4)",
            content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "No valid API key (unless `auth.public_metrics`)", body = super::error::ErrorBody),
        (status = 403, description = "Not an admin key (unless `auth.public_metrics`)", body = super::error::ErrorBody),
        (status = 500, description = "The store could not be read", body = super::error::ErrorBody),
    ))]
pub async fn metrics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !state.auth.public_metrics {
        require_admin(&state, &headers)?;
    }
    let jobs = state.service.job_counts().await?;
    let queues = queue_views(&state)
        .await
        .into_iter()
        .map(|q| QueueSnapshot {
            depth: q.depth as u64,
            running: q.running as u64,
            limit: q.limit as u64,
            oldest_wait_ms: q.oldest_wait_ms,
            health: q.health,
            name: q.name,
        })
        .collect();
    let open_streams = state
        .settings
        .max_streams
        .saturating_sub(state.streams.available_permits());
    let snapshot = Snapshot {
        jobs: jobs
            .into_iter()
            .map(|(job_type, status, n)| (job_type, status.as_str().to_string(), n))
            .collect(),
        queues,
        sse_subscribers: open_streams as u64,
        plugins_loaded: state.service.plugins().len() as u64,
    };
    let text = state.service.metrics().render(&snapshot);
    let mut response = text.into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    Ok(response)
}
