//! Extractors whose rejections speak the API's error shape: a JSON body, a query string
//! and a job id.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;

/// A JSON request body: `application/json`, within the body limit, well-formed, and of
/// the expected shape, each failure with its own status and kind.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        require_json(req.headers())?;
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Refuses a body that is not declared `application/json` (`415`).
pub fn require_json(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if mime.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected Content-Type: application/json, got {content_type:?}"),
        ))
    }
}

/// Parses a JSON body, telling malformed JSON from JSON of the wrong shape.
/// A body of the wrong shape is refused naming the field that is wrong (e.g.
/// `depends_on[0]: UUID parsing failed …`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let parsed = serde_path_to_error::deserialize(&mut deserializer)
        .map_err(|error| (error.path().to_string(), error.into_inner()))
        .and_then(|value| {
            let end = deserializer.end();
            end.map(|()| value).map_err(|e| (".".to_string(), e))
        });
    parsed.map_err(|(path, e)| {
        use serde_json::error::Category;
        match e.classify() {
            Category::Data if path == "." => {
                ApiError::bad_request("invalid_request", e.to_string())
            }
            Category::Data => ApiError::bad_request("invalid_request", format!("{path}: {e}")),
            Category::Syntax | Category::Eof | Category::Io => {
                ApiError::bad_request("malformed_json", format!("the body is not valid JSON: {e}"))
            }
        }
    })
}

fn body_rejection(rejection: BytesRejection) -> ApiError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is larger than the server's limit (max_body_bytes)",
        )
    } else {
        ApiError::bad_request("invalid_body", rejection.body_text())
    }
}

/// A query string parsed into `T`; a bad one is a `400 invalid_query`.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))
    }
}

/// A raw request body within the body limit; over it, `413 body_too_large` in the API's
/// error shape (axum's own rejection would be plain text).
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(body_rejection)
    }
}

/// The `{id}` of a job route. A path segment that is not even text (`%FF`) names no job
/// either: `404`, like any other unknown id, in the API's error shape.
pub struct JobId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for JobId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        path_id(parts, state, "job").await.map(JobId)
    }
}

/// The `{id}` of a batch route, read like [`JobId`].
pub struct BatchId(pub Uuid);

impl<S: Send + Sync> FromRequestParts<S> for BatchId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        path_id(parts, state, "batch").await.map(BatchId)
    }
}

/// The UUID `{id}` of a route about a `what`; anything else names none: `404`.
async fn path_id<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    what: &str,
) -> Result<Uuid, ApiError> {
    match Path::<String>::from_request_parts(parts, state).await {
        Ok(Path(text)) => Uuid::parse_str(&text)
            .map_err(|_| ApiError::not_found(format!("no {what} with id {text:?}"))),
        Err(_) => Err(ApiError::not_found(format!(
            "no {what} with that id (it is not even text)"
        ))),
    }
}

/// Parses a job id from the path. Anything that is not a UUID cannot name a job, so it is
/// a `404` like any other unknown id.
pub fn job_id(text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text).map_err(|_| ApiError::not_found(format!("no job with id {text:?}")))
}
