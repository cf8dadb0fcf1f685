//! Access control at the HTTP edge: the [`Caller`] and [`Admin`] extractors, job events
//! tokens, dashboard session cookies and CORS.
//!
//! A caller is found from `Authorization: Bearer <key>`, else the `kiln_session` cookie.
//! An API key is never read from a URL (URLs end up in logs, proxies and browser
//! history): `EventSource` clients use the job's short-lived `events_token` instead.

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::ToSchema;
use uuid::Uuid;

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::extract::JobId;
use crate::auth::{KEY_PREFIX, Principal, Refusal};
use crate::jobs::ServiceError;
use crate::jobs::{JobRecord, rfc3339};

/// The dashboard's session cookie.
pub const SESSION_COOKIE: &str = "kiln_session";

/// The caller of a request that needs a key (or a session cookie, or open mode).
pub struct Caller(pub Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        authenticate(state, &parts.headers).map(Caller)
    }
}

/// Proof that the caller of an operator route is an admin key (or anyone, in open mode).
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        require_admin(state, &parts.headers).map(|()| Admin)
    }
}

/// `Ok` when the request's caller is an admin (or anyone, in open mode); else `401` or
/// `403 forbidden`.
pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    if authenticate(state, headers)?.is_admin() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this route is for operators: it needs an admin key",
        ))
    }
}

/// The caller behind the request's headers.
pub fn authenticate(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let bearer = bearer(headers)?;
    let session = cookie(headers, SESSION_COOKIE);
    state
        .auth
        .authenticate(bearer, session)
        .map_err(refusal_error)
}

/// The caller of a job's event stream: the headers' caller, or else a `?token=` issued for
/// this job. An API key in the query is refused, so it is not left in a log.
pub fn authenticate_events(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<&str>,
    id: Uuid,
) -> Result<Principal, ApiError> {
    if let Some(token) = token
        && token.starts_with(KEY_PREFIX)
    {
        return Err(ApiError::bad_request(
            "key_in_url",
            "API keys are never accepted in a URL, where logs and browser history keep them: \
             send `Authorization: Bearer <key>`, or use the job's `events_token`",
        ));
    }
    let has_credentials =
        headers.contains_key(header::AUTHORIZATION) || cookie(headers, SESSION_COOKIE).is_some();
    match token {
        Some(token) if !has_credentials && !state.auth.is_open() => state
            .auth
            .authenticate_job_token(token, id)
            .map_err(refusal_error),
        _ => authenticate(state, headers),
    }
}

/// The job `id` if `caller` may see it; otherwise the very answer an unknown id gets, so a
/// client cannot learn that another tenant's job exists.
pub async fn visible_job(
    state: &AppState,
    caller: &Principal,
    id: Uuid,
) -> Result<JobRecord, ApiError> {
    let job = state.service.get(id).await?;
    if caller.sees(&job) {
        Ok(job)
    } else {
        Err(ServiceError::NotFound(id).into())
    }
}

/// A job's events token, as the submit answer and `POST /v1/jobs/{id}/token` give it.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsToken {
    /// Read-only, for this job's event stream only: `GET /v1/jobs/{id}/events?token=…`.
    pub events_token: String,
    /// When it stops being accepted (RFC 3339). A stream already open keeps going.
    pub events_token_expires_at: String,
}

impl EventsToken {
    /// A fresh token for job `id`.
    pub fn issue(state: &AppState, id: Uuid) -> Self {
        let issued = state.auth.job_token(id);
        Self {
            events_token: issued.token,
            events_token_expires_at: rfc3339(issued.expires_at_ms),
        }
    }
}

/// `POST /v1/jobs/{id}/token`: a fresh events token, e.g. for a page that reloads after
/// the first one expired.
#[utoipa::path(post, path = "/v1/jobs/{id}/token", tag = "auth",
    params(("id" = String, Path, description = "The job's id (UUID)")),
    responses(
        (status = 200, description = "A read-only token for the job's event stream", body = EventsToken),
        (status = 401, description = "No valid key", body = ErrorBody),
        (status = 404, description = "Unknown job", body = ErrorBody),
    ))]
pub async fn job_token(
    State(state): State<AppState>,
    Caller(caller): Caller,
    JobId(id): JobId,
) -> Result<Json<EventsToken>, ApiError> {
    let job = visible_job(&state, &caller, id).await?;
    Ok(Json(EventsToken::issue(&state, job.id)))
}

/// The answer of `POST /v1/session`.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    /// The key's name.
    pub name: String,
    /// `admin` or `client`.
    pub role: &'static str,
    /// The key's tenant.
    pub tenant: Option<String>,
    /// When the cookie expires (RFC 3339).
    pub expires_at: String,
}

/// `POST /v1/session`: trades the `Authorization: Bearer` key for an `HttpOnly`,
/// `SameSite=Strict` session cookie, so a same-origin dashboard never holds the key in
/// script-readable storage.
#[utoipa::path(post, path = "/v1/session", tag = "auth",
    responses(
        (status = 200, description = "The session cookie is set (`Set-Cookie: kiln_session=…`)", body = SessionView),
        (status = 400, description = "Open mode: there are no keys, so there is no session", body = ErrorBody),
        (status = 401, description = "No valid key in `Authorization`", body = ErrorBody),
    ))]
pub async fn start_session(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if state.auth.is_open() {
        return Err(ApiError::bad_request(
            "open_mode",
            "this server runs in open mode: no key and no session are needed",
        ));
    }
    let key = bearer(&headers)?.ok_or_else(|| refusal_error(Refusal::Missing))?;
    let Principal::Key(identity) = state
        .auth
        .authenticate(Some(key), None)
        .map_err(refusal_error)?
    else {
        return Err(refusal_error(Refusal::UnknownKey));
    };
    let issued = state.auth.session_token(&identity);
    let cookie = session_cookie(&state, &issued.token, state.auth.session_ttl.as_secs());
    let view = SessionView {
        name: identity.name.clone(),
        role: identity.role.as_str(),
        tenant: identity.tenant.clone(),
        expires_at: rfc3339(issued.expires_at_ms),
    };
    let mut response = Json(view).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

/// `DELETE /v1/session`: clears the session cookie.
#[utoipa::path(delete, path = "/v1/session", tag = "auth",
    responses((status = 204, description = "The cookie is cleared")))]
pub async fn end_session(State(state): State<AppState>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session_cookie(&state, "", 0));
    response
}

fn session_cookie(state: &AppState, value: &str, max_age_secs: u64) -> HeaderValue {
    let secure = if state.auth.secure_cookies {
        "; Secure"
    } else {
        ""
    };
    let text = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    );
    HeaderValue::from_str(&text).expect("a token is plain ASCII")
}

/// CORS for the configured origins: simple and preflighted requests from exactly those
/// origins, with the headers Kiln reads and exposes. No credentials: cross-origin clients
/// send keys in `Authorization` or follow streams with an events token.
pub fn cors_layer(origins: &[String]) -> Option<CorsLayer> {
    if origins.is_empty() {
        return None;
    }
    let origins: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|origin| HeaderValue::from_str(origin).ok())
        .collect();
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(origins))
            .allow_methods([Method::GET, Method::POST, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("idempotency-key"),
                header::HeaderName::from_static("last-event-id"),
            ])
            .expose_headers([
                header::LOCATION,
                header::HeaderName::from_static("idempotent-replayed"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// The key of an `Authorization: Bearer` header, if any.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    match text.split_once(' ') {
        Some((scheme, key)) if scheme.eq_ignore_ascii_case("bearer") && !key.trim().is_empty() => {
            Ok(Some(key.trim()))
        }
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the Authorization header must be `Bearer <key>`",
        )
        .with_challenge()),
    }
}

/// The value of cookie `name`, if the request carries it.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|text| text.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
        .filter(|value| !value.is_empty())
}

fn refusal_error(refusal: Refusal) -> ApiError {
    let message = match refusal {
        Refusal::Missing => {
            "this server needs an API key: send `Authorization: Bearer <key>` \
             (or, for one job's event stream, its `events_token` as `?token=`)"
        }
        Refusal::UnknownKey => "the API key is not known to this server",
        Refusal::BadToken => {
            "the token or session is invalid or expired: get a new one (`POST \
             /v1/jobs/{id}/token`, `POST /v1/session`)"
        }
    };
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message).with_challenge()
}
