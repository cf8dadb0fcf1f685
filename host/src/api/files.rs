//! Files in and artifacts out: `POST /v1/files`, `GET /v1/files/{id}` and its
//! `/content`, and `GET /v1/jobs/{id}/artifacts/{name}`.
//!
//! Uploads are streamed to disk as they arrive (never held whole in memory) and refused
//! with `413 file_too_large` past `max_file_bytes`. A file belongs to the uploader's tenant:
//! another tenant's file is `404` like an unknown one. Downloads are served as attachments
//! with `nosniff` and a sandboxing CSP, so an HTML artifact cannot run in the API's origin.

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::access::{Caller, visible_job};
use super::error::{ApiError, ErrorBody};
use super::extract::job_id;
use crate::jobs::{ByteStream, FileRecord, rfc3339};
use crate::runtime::{valid_artifact_name, valid_content_type};

/// An upload, as `POST /v1/files` and `GET /v1/files/{id}` describe it.
#[derive(Debug, Serialize, ToSchema)]
pub struct FileView {
    /// Name it in a payload's `kiln-file` property.
    pub id: Uuid,
    /// Bytes.
    pub size: u64,
    /// SHA-256, lowercase hex.
    pub sha256: String,
    /// As uploaded.
    pub content_type: String,
    /// RFC 3339.
    pub created_at: String,
    /// When it is deleted (RFC 3339).
    pub expires_at: String,
}

impl From<FileRecord> for FileView {
    fn from(record: FileRecord) -> Self {
        Self {
            id: record.id,
            size: record.size,
            sha256: record.sha256,
            content_type: record.content_type,
            created_at: rfc3339(record.created_at_ms),
            expires_at: rfc3339(record.expires_at_ms),
        }
    }
}

/// `POST /v1/files`: the raw body with its `Content-Type`, or `multipart/form-data`
/// whose first part that is a file (else the first part) is stored with that part's
/// content type.
#[utoipa::path(post, path = "/v1/files", tag = "files",
    request_body(content = Vec<u8>, description = "The file's bytes (any content type), or multipart/form-data"),
    responses(
        (status = 201, description = "Stored", body = FileView),
        (status = 400, description = "No content type, or a broken multipart body", body = ErrorBody),
        (status = 401, description = "No valid API key", body = ErrorBody),
        (status = 413, description = "Larger than `max_file_bytes`", body = ErrorBody),
    ))]
pub async fn upload(
    State(state): State<AppState>,
    Caller(caller): Caller,
    request: Request,
) -> Result<(StatusCode, Json<FileView>), ApiError> {
    let tenant = caller.tenant().map(str::to_string);
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    let record = if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(request, &state)
            .await
            .map_err(|e| bad_upload(format!("the multipart body is broken: {e}")))?;
        let field = multipart
            .next_field()
            .await
            .map_err(|e| bad_upload(format!("the multipart body is broken: {e}")))?
            .ok_or_else(|| bad_upload("the multipart body has no part".to_string()))?;
        let part_type = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_string();
        check_content_type(&part_type)?;
        let chunks = futures::stream::try_unfold(field, |mut field| async move {
            Ok::<_, axum::extract::multipart::MultipartError>(
                field.chunk().await?.map(|chunk| (chunk, field)),
            )
        });
        state
            .service
            .upload(tenant, part_type, Box::pin(chunks))
            .await?
    } else {
        if content_type.is_empty() {
            return Err(bad_upload(
                "say what the file is with a Content-Type header (e.g. application/pdf), or \
                 send multipart/form-data"
                    .to_string(),
            ));
        }
        check_content_type(&content_type)?;
        let body = request
            .into_body()
            .into_data_stream()
            .map_err(|e| e.to_string());
        state
            .service
            .upload(tenant, content_type, Box::pin(body))
            .await?
    };
    Ok((StatusCode::CREATED, Json(record.into())))
}

fn bad_upload(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
}

fn check_content_type(content_type: &str) -> Result<(), ApiError> {
    if valid_content_type(content_type) {
        Ok(())
    } else {
        Err(bad_upload(format!(
            "{content_type:?} is not a content type like application/pdf"
        )))
    }
}

/// The caller's file `id`, or `404`.
async fn visible_file(
    state: &AppState,
    caller: &crate::auth::Principal,
    id: &str,
) -> Result<FileRecord, ApiError> {
    let not_found = || ApiError::not_found(format!("no file with id {id:?}"));
    let uuid = Uuid::parse_str(id).map_err(|_| not_found())?;
    let record = state
        .service
        .file(uuid, None)
        .await?
        .ok_or_else(not_found)?;
    if caller.sees_tenant(record.tenant.as_deref()) {
        Ok(record)
    } else {
        Err(not_found())
    }
}

/// `GET /v1/files/{id}`: an upload's metadata.
#[utoipa::path(get, path = "/v1/files/{id}", tag = "files",
    params(("id" = String, Path, description = "File id")),
    responses(
        (status = 200, description = "The file", body = FileView),
        (status = 404, description = "No such file (or another tenant's, or expired)", body = ErrorBody),
    ))]
pub async fn metadata(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<FileView>, ApiError> {
    Ok(Json(visible_file(&state, &caller, &id).await?.into()))
}

/// `GET /v1/files/{id}/content`: an upload's bytes.
#[utoipa::path(get, path = "/v1/files/{id}/content", tag = "files",
    params(("id" = String, Path, description = "File id")),
    responses(
        (status = 200, description = "The bytes, with the uploaded content type"),
        (status = 404, description = "No such file", body = ErrorBody),
    ))]
pub async fn content(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let record = visible_file(&state, &caller, &id).await?;
    let bytes = state.service.file_bytes(&record).await?;
    Ok(download(
        bytes,
        record.size,
        &record.content_type,
        &record.id.to_string(),
    ))
}

/// `GET /v1/jobs/{id}/artifacts/{name}`: one artifact of a completed job.
#[utoipa::path(get, path = "/v1/jobs/{id}/artifacts/{name}", tag = "jobs",
    params(("id" = String, Path, description = "Job id"), ("name" = String, Path, description = "Artifact name")),
    responses(
        (status = 200, description = "The artifact, with its content type"),
        (status = 404, description = "No such job or artifact", body = ErrorBody),
    ))]
pub async fn artifact(
    State(state): State<AppState>,
    Caller(caller): Caller,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = job_id(&id)?;
    let job = visible_job(&state, &caller, id).await?;
    let not_found = || ApiError::not_found(format!("job {id} has no artifact {name:?}"));
    if !valid_artifact_name(&name) {
        return Err(not_found());
    }
    let record = job
        .artifacts
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(not_found)?;
    let bytes = state.service.artifact_bytes(id, record).await?;
    Ok(download(bytes, record.size, &record.content_type, &name))
}

/// `size` stored bytes streamed as an attachment named `filename`.
fn download(bytes: ByteStream, size: u64, content_type: &str, filename: &str) -> Response {
    let mut headers = HeaderMap::new();
    let value = |text: &str| {
        HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("application/octet-stream"))
    };
    headers.insert(header::CONTENT_TYPE, value(content_type));
    headers.insert(header::CONTENT_LENGTH, size.into());
    headers.insert(
        header::CONTENT_DISPOSITION,
        value(&format!("attachment; filename=\"{filename}\"")),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox; default-src 'none'"),
    );
    (headers, Body::from_stream(bytes)).into_response()
}
