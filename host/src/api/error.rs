//! The one error shape of the API: `{"error": {"kind": "...", "message": "..."}}` with the
//! right status. Internal details are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::jobs::ServiceError;
use crate::runtime::SchemaViolation;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    violations: Vec<SchemaViolation>,
    /// Send `WWW-Authenticate: Bearer` (on `401`).
    challenge: bool,
}

impl ApiError {
    /// An error with `status`, `kind` and `message`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            violations: Vec::new(),
            challenge: false,
        }
    }

    /// Adds `WWW-Authenticate: Bearer realm="kiln"`, which a `401` should carry.
    pub fn with_challenge(mut self) -> Self {
        self.challenge = true;
        self
    }

    /// `400` with `kind`.
    pub fn bad_request(kind: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, kind, message)
    }

    /// `404 not_found`.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(error: ServiceError) -> Self {
        let message = error.to_string();
        match error {
            ServiceError::BadRequest {
                kind, violations, ..
            } => Self {
                violations,
                ..Self::bad_request(kind, message)
            },
            ServiceError::NotFound(_)
            | ServiceError::BatchNotFound(_)
            | ServiceError::ScheduleNotFound(_) => Self::not_found(message),
            ServiceError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            ServiceError::TooLarge(_) => {
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "file_too_large", message)
            }
            ServiceError::QueueFull(_) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message)
            }
            ServiceError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
            }
            ServiceError::StorageUnavailable(_) => {
                tracing::warn!(%message, "refused: the job store is unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    message,
                )
            }
            ServiceError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "an internal error occurred; the server log has the details",
                )
            }
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The `error` of an error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Machine-readable: `malformed_json`, `invalid_request`, `invalid_payload`,
    /// `unknown_type`, `batch_too_large`, `unsupported_media_type`, `body_too_large`, `invalid_query`,
    /// `invalid_cursor`, `invalid_last_event_id`, `not_found`, `method_not_allowed`,
    /// `conflict`, `queue_full`, `too_many_streams`, `shutting_down`, `storage_unavailable`, `unauthorized`,
    /// `forbidden`, `key_in_url`, `open_mode`, `internal`.
    #[schema(example = "not_found")]
    pub kind: String,
    /// For people.
    pub message: String,
    /// Where the payload fails the job type's JSON Schema (`invalid_payload` only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub violations: Vec<Violation>,
}

/// One way a payload fails its schema.
#[derive(Debug, Serialize, ToSchema)]
pub struct Violation {
    /// JSON Pointer into the payload; `""` for the payload itself.
    pub path: String,
    /// What is wrong there.
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                kind: self.kind.to_string(),
                message: self.message,
                violations: self
                    .violations
                    .into_iter()
                    .map(|v| Violation {
                        path: v.path,
                        message: v.message,
                    })
                    .collect(),
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.challenge {
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer realm=\"kiln\""),
            );
        }
        response
    }
}
