//! The operator dashboard (`GET /`, `GET /assets/...`) and the browser example page
//! (`GET /examples/browser`): static files compiled into the binary, so there is nothing
//! to build or fetch. The pages are plain JavaScript driven by the API's own routes.
//!
//! Every file is served with its content type, an `ETag` (a hash of its bytes) and
//! `Cache-Control: no-cache`: browsers revalidate and get a `304` while the binary is the
//! same, and never run stale assets after an upgrade.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;

/// One embedded file, found by its path.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const HTML: &str = "text/html; charset=utf-8";

/// Every embedded file: the dashboard, its assets, and the browser example page.
static FILES: &[Asset] = &[
    Asset {
        path: "/",
        content_type: HTML,
        body: include_bytes!("assets/index.html"),
    },
    Asset {
        path: "/examples/browser",
        content_type: HTML,
        body: include_bytes!("../../../../examples/browser/index.html"),
    },
    Asset {
        path: "/assets/app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        path: "/assets/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/app.css"),
    },
    Asset {
        path: "/assets/favicon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/favicon.svg"),
    },
];

/// The dashboard only loads its own files and talks only to its own origin.
const DASHBOARD_CSP: &str = "default-src 'self'; img-src 'self' data:; object-src 'none'; \
                             base-uri 'none'; frame-ancestors 'none'";

/// The routes of the dashboard and the example page.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/{*path}", get(asset))
        .route("/examples/browser", get(example))
}

async fn index(headers: HeaderMap) -> Response {
    let mut response = serve("/", &headers);
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(DASHBOARD_CSP),
    );
    response
}

async fn example(headers: HeaderMap) -> Response {
    serve("/examples/browser", &headers)
}

/// A path that is not even text names no file: the same `404` as any unknown one.
async fn asset(path: Result<Path<String>, PathRejection>, headers: HeaderMap) -> Response {
    match path {
        Ok(Path(path)) => serve(&format!("/assets/{path}"), &headers),
        Err(_) => ApiError::not_found("no such file").into_response(),
    }
}

/// The file at `path` with caching headers, `304` when the client's copy is current, or
/// the API's `404` error.
fn serve(path: &str, headers: &HeaderMap) -> Response {
    let Some(index) = FILES.iter().position(|f| f.path == path) else {
        return ApiError::not_found(format!("no file at {path}")).into_response();
    };
    let file = &FILES[index];
    let etag = etag(index);
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|tag| tag.trim() == etag));
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(file.content_type),
            )],
            file.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if let Ok(value) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, value);
    }
    response
}

/// A strong `ETag` of file `index`'s bytes; computed once for all files.
fn etag(index: usize) -> &'static str {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        FILES
            .iter()
            .map(|f| format!("\"{}\"", hex::encode(&Sha256::digest(f.body)[..12])))
            .collect()
    });
    &tags[index]
}
