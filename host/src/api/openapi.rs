//! `GET /openapi.json`: the OpenAPI 3 description of the API, generated from the handlers'
//! `#[utoipa::path]` attributes and the request and response types' `ToSchema` derives.
//!
//! The operator routes (`api/ops.rs`) and the dashboard's pages (`api/dashboard/`) are
//! described here with the builder instead, in [`other_routes`]. The test
//! `openapi::every_route_is_described` reads the router's source and fails when a route is
//! missing from the document.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use utoipa::OpenApi;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::ResponseBuilder;
use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, Schema};

use super::access::{EventsToken, SessionView};
use super::error::{ErrorBody, ErrorDetail, Violation};
use super::jobs::{JobPage, SubmitBody, SubmitView};
use super::system::{Healthz, PluginList, PluginView, QueueList, QueueView, RecentView};
use super::view::{JobView, Links};
use crate::llm::Usage;
use crate::store::{ErrorInfo, JobStatus};

/// The generated part of the document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kiln",
        description = "A self-hosted job server for long-running AI generation: submit a job, \
                       follow it live over Server-Sent Events, read its result. Every error \
                       answer is `{\"error\": {\"kind\", \"message\"}}` (`ErrorBody`).",
        license(name = "Apache-2.0"),
    ),
    paths(
        super::jobs::submit,
        super::jobs::list,
        super::jobs::get,
        super::jobs::cancel,
        super::jobs::retry,
        super::access::job_token,
        super::access::start_session,
        super::access::end_session,
        super::sse::job_events,
        super::sse::all_events,
        super::system::plugins,
        super::system::queues,
        super::system::healthz,
        super::metrics::metrics,
        openapi_json,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, Violation, JobView, Links, Usage, ErrorInfo, JobStatus,
        SubmitBody, SubmitView, EventsToken, SessionView, JobPage, PluginList, PluginView, QueueList, QueueView, RecentView, Healthz,
    )),
    tags(
        (name = "jobs", description = "Submit, read, list, cancel and retry jobs"),
        (name = "events", description = "Server-Sent Events of one job or of every job"),
        (name = "system", description = "Health, job types, queues, metrics, this document"),
        (name = "auth", description = "Events tokens for browsers and dashboard sessions"),
        (name = "ops", description = "Operator actions: bulk retry and cancel, doctor, cleanup"),
        (name = "dashboard", description = "The built-in web pages"),
    )
)]
pub struct ApiDoc;

/// The whole document: the generated part and the builder-described routes.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    other_routes(&mut doc);
    add_security(&mut doc);
    doc
}

/// Declares the `Authorization: Bearer` key. Every operation accepts it; in open mode
/// (no keys configured) it is not needed, so the key is optional in the document.
fn add_security(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "apiKey",
        SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
    );
    doc.security = Some(vec![
        SecurityRequirement::new("apiKey", Vec::<String>::new()),
        SecurityRequirement::default(),
    ]);
}

/// `GET /openapi.json`.
#[utoipa::path(get, path = "/openapi.json", tag = "system",
    responses((status = 200, description = "This document (OpenAPI 3.1)", content_type = "application/json", body = Object)))]
pub async fn openapi_json() -> Response {
    static JSON: OnceLock<String> = OnceLock::new();
    let text = JSON.get_or_init(|| {
        document().to_pretty_json().unwrap_or_else(|e| {
            format!("{{\"error\":{{\"kind\":\"internal\",\"message\":\"{e}\"}}}}")
        })
    });
    let mut response = text.clone().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn error_ref() -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name("ErrorBody"))
}

fn json_response(description: &str, schema: RefOr<Schema>) -> utoipa::openapi::Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new().schema(Some(schema)).build(),
        )
        .build()
}

fn object(properties: &[(&str, Type, &str)]) -> RefOr<Schema> {
    let mut builder = ObjectBuilder::new();
    for (name, kind, description) in properties {
        builder = builder.property(
            *name,
            ObjectBuilder::new()
                .schema_type(SchemaType::new(kind.clone()))
                .description(Some(*description)),
        );
    }
    RefOr::T(Schema::Object(builder.build()))
}

/// Describes the routes of `ops.rs` and of the dashboard.
fn other_routes(doc: &mut utoipa::openapi::OpenApi) {
    let bulk_body = |status: &str| {
        RequestBodyBuilder::new()
            .description(Some(
                "Optional JSON body (an empty body takes every default)",
            ))
            .required(Some(Required::False))
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(object(&[
                        ("status", Type::String, status),
                        ("type", Type::String, "Only jobs of this type"),
                        ("older_than_s", Type::Integer, "Bulk cancel only: started (running) or created (queued) longer ago than this, seconds"),
                        ("limit", Type::Integer, "At most this many jobs, 1..=1000, default 100"),
                    ])))
                    .build(),
            )
            .build()
    };
    let counted = |field: &'static str| {
        object(&[
            (field, Type::Integer, "How many jobs"),
            ("ids", Type::Array, "Their ids"),
        ])
    };
    let bad = || json_response("A bad body or field", error_ref());
    let ops = [
        (
            "/v1/jobs/bulk/retry",
            HttpMethod::Post,
            "Retries failed (or cancelled) jobs in bulk",
            Some(bulk_body("`failed` (default) or `cancelled`")),
            counted("retried"),
        ),
        (
            "/v1/jobs/bulk/cancel",
            HttpMethod::Post,
            "Cancels running (or queued) jobs in bulk, e.g. stuck ones",
            Some(bulk_body("`running` (default) or `queued`")),
            counted("cancelled"),
        ),
        (
            "/v1/doctor",
            HttpMethod::Get,
            "Stuck jobs, recent failures grouped by error, plugins loaded, providers reachable",
            None,
            RefOr::T(Schema::Object(ObjectBuilder::new().build())),
        ),
        (
            "/v1/doctor/cleanup",
            HttpMethod::Post,
            "Runs the expiry sweep now",
            None,
            object(&[("deleted", Type::Integer, "Finished jobs deleted")]),
        ),
    ];
    for (path, method, summary, body, answer) in ops {
        let mut op = OperationBuilder::new()
            .tag("ops")
            .summary(Some(summary))
            .response("200", json_response(summary, answer))
            .response("400", bad());
        if let Some(body) = body {
            op = op.request_body(Some(body)).response(
                "415",
                json_response("Body is not application/json", error_ref()),
            );
        }
        if path == "/v1/doctor" {
            op = op.parameter(
                ParameterBuilder::new()
                    .name("stuck_after_s")
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some("A job running longer than this, or queued past its start by more, is stuck; seconds, default 600"))
                    .schema(Some(ObjectBuilder::new().schema_type(SchemaType::new(Type::Integer)))),
            );
        }
        doc.paths.add_path_operation(path, vec![method], op.build());
    }
    let html = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content("text/html", ContentBuilder::new().build())
            .build()
    };
    let pages = [
        ("/", "The dashboard"),
        (
            "/examples/browser",
            "The example page following a job with EventSource",
        ),
    ];
    for (path, summary) in pages {
        let op = OperationBuilder::new()
            .tag("dashboard")
            .summary(Some(summary))
            .response("200", html(summary))
            .response(
                "304",
                ResponseBuilder::new()
                    .description("Not modified (ETag)")
                    .build(),
            );
        doc.paths
            .add_path_operation(path, vec![HttpMethod::Get], op.build());
    }
    let asset = OperationBuilder::new()
        .tag("dashboard")
        .summary(Some("A file of the dashboard (script, style, icon)"))
        .parameter(
            ParameterBuilder::new()
                .name("path")
                .parameter_in(ParameterIn::Path)
                .required(Required::True)
                .schema(Some(
                    ObjectBuilder::new().schema_type(SchemaType::new(Type::String)),
                )),
        )
        .response(
            "200",
            ResponseBuilder::new().description("The file").build(),
        )
        .response(
            "304",
            ResponseBuilder::new()
                .description("Not modified (ETag)")
                .build(),
        )
        .response("404", json_response("No such file", error_ref()));
    doc.paths
        .add_path_operation("/assets/{path}", vec![HttpMethod::Get], asset.build());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_builds_and_names_the_error_shape() {
        let doc = serde_json::to_value(document()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        let error = &doc["components"]["schemas"]["ErrorBody"];
        assert_eq!(
            error["properties"]["error"]["$ref"],
            "#/components/schemas/ErrorDetail"
        );
        assert!(doc["paths"]["/v1/jobs"]["post"]["responses"]["202"].is_object());
    }
}
