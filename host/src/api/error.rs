//! The one error shape of the API: `{"error": {"kind": "...", "message": "..."}}` with the
//! right status. Internal details are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::jobs::ServiceError;
use crate::runtime::SchemaViolation;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    kind: &'static str,
    message: String,
    violations: Vec<SchemaViolation>,
}

impl ApiError {
    /// An error with `status`, `kind` and `message`.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            kind,
            message: message.into(),
            violations: Vec::new(),
        }
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
            ServiceError::NotFound(_) => Self::not_found(message),
            ServiceError::Conflict(_) => Self::new(StatusCode::CONFLICT, "conflict", message),
            ServiceError::QueueFull(_) => {
                Self::new(StatusCode::TOO_MANY_REQUESTS, "queue_full", message)
            }
            ServiceError::ShuttingDown => {
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", message)
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

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({ "kind": self.kind, "message": self.message });
        if !self.violations.is_empty() {
            error["violations"] = json!(self.violations);
        }
        (self.status, Json(json!({ "error": error }))).into_response()
    }
}
