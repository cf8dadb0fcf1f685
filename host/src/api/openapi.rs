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
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, SchemaType, Type};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, Required, Schema};

use super::access::{EventsToken, SessionView};
use super::batches::{BatchBody, BatchChange, BatchLinks, BatchList, BatchSubmitView, BatchView};
use super::error::{ErrorBody, ErrorDetail, Violation};
use super::files::FileView;
use super::jobs::{JobPage, SubmitBody, SubmitView, WebhookBody};
use super::schedules::{ScheduleBody, ScheduleList, ScheduleView};
use super::system::{
    Healthz, NodeList, NodeView, PluginList, PluginView, QueueList, QueueView, RecentView,
};
use super::view::{ArtifactView, DeliveryView, JobView, Links, ScheduledView, WebhookView};
use crate::jobs::{CatchUp, DependencyFailure, ErrorInfo, JobStatus, StatusCounts};
use crate::llm::Usage;

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
        super::batches::submit,
        super::batches::list,
        super::batches::get,
        super::batches::cancel,
        super::batches::retry,
        super::batches::events,
        super::schedules::create,
        super::schedules::list,
        super::schedules::get,
        super::schedules::delete,
        super::files::upload,
        super::files::metadata,
        super::files::content,
        super::files::artifact,
        super::access::start_session,
        super::access::end_session,
        super::sse::job_events,
        super::sse::all_events,
        super::system::plugins,
        super::system::queues,
        super::system::nodes,
        super::system::healthz,
        super::metrics::metrics,
        openapi_json,
    ),
    components(schemas(
        ErrorBody, ErrorDetail, Violation, JobView, Links, ArtifactView, FileView, Usage, ErrorInfo, JobStatus, DependencyFailure,
        SubmitBody, WebhookBody, WebhookView, DeliveryView, SubmitView, BatchBody, BatchView, BatchLinks, BatchSubmitView, BatchChange, BatchList, StatusCounts, ScheduleBody, ScheduleView, ScheduleList, CatchUp, ScheduledView, EventsToken, SessionView, JobPage, PluginList, PluginView, QueueList, QueueView, RecentView, NodeList, NodeView, Healthz,
    )),
    tags(
        (name = "jobs", description = "Submit, read, list, cancel and retry jobs"),
        (name = "batches", description = "Submit many jobs in one call; follow, cancel and retry them together"),
        (name = "files", description = "Upload files for jobs to read"),
        (name = "events", description = "Server-Sent Events of one job or of every job"),
        (name = "system", description = "Health, job types, queues, metrics, this document"),
        (name = "auth", description = "Events tokens for browsers and dashboard sessions"),
        (name = "schedules", description = "Jobs submitted on a cron schedule (admin)"),
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
    describe_event_streams(&mut doc);
    doc
}

/// Describes every `text/event-stream` answer per event, the way OpenAPI 3.2 reads such a
/// schema (and tools such as Schemathesis read it in 3.1 too): `{event, data, id}` with
/// `data` JSON text, not the whole stream as one string.
fn describe_event_streams(doc: &mut utoipa::openapi::OpenApi) {
    use crate::jobs::event_names::*;
    let names = [
        STATUS,
        PROGRESS,
        PARTIAL,
        TOKEN,
        REPLAYED,
        COMPLETED,
        FAILED,
        CANCELLED,
        crate::jobs::batch_event_names::COMPLETED,
    ];
    let event = ObjectBuilder::new()
        .description(Some(
            "One Server-Sent Event. A job stream's `id` is the event's sequence number in \
             the job's log, a batch stream's in the batch's log (which ends with \
             `batch_completed`); the dashboard stream's events have no `id`.",
        ))
        .property(
            "event",
            ObjectBuilder::new()
                .schema_type(SchemaType::new(Type::String))
                .enum_values(Some(names)),
        )
        .required("event")
        .property(
            "data",
            ObjectBuilder::new()
                .schema_type(SchemaType::new(Type::String))
                .content_media_type("application/json")
                .description(Some("The event's JSON")),
        )
        .required("data")
        .property(
            "id",
            ObjectBuilder::new()
                .schema_type(SchemaType::new(Type::String))
                .pattern(Some("^[0-9]+$")),
        );
    doc.components
        .get_or_insert_with(Default::default)
        .schemas
        .insert(
            "SseEvent".to_string(),
            RefOr::T(Schema::Object(event.build())),
        );
    let operations = doc.paths.paths.values_mut().flat_map(|item| {
        [&mut item.get, &mut item.post]
            .into_iter()
            .filter_map(Option::as_mut)
    });
    for operation in operations {
        for response in operation.responses.responses.values_mut() {
            if let RefOr::T(response) = response
                && let Some(content) = response.content.get_mut("text/event-stream")
            {
                content.schema = Some(RefOr::Ref(Ref::from_schema_name("SseEvent")));
            }
        }
    }
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
    // Every field may be left out or null (it then takes its default); no other field is
    // accepted. Only bulk cancel has `older_than_s`.
    let bulk_body = |statuses: &[&str], status: &str, older_than: bool| {
        let nullable = |kind: Type, description: &str| {
            ObjectBuilder::new()
                .schema_type([kind, Type::Null].into_iter().collect::<SchemaType>())
                .description(Some(description))
        };
        let mut schema = ObjectBuilder::new()
            .property(
                "status",
                nullable(Type::String, status)
                    .enum_values(Some(statuses.iter().map(|s| Some(*s)).chain([None]))),
            )
            .property("type", nullable(Type::String, "Only jobs of this type"))
            .property(
                "limit",
                nullable(Type::Integer, "At most this many jobs, default 100")
                    .minimum(Some(1))
                    .maximum(Some(crate::jobs::MAX_BULK as u64)),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)));
        if older_than {
            schema = schema.property(
                "older_than_s",
                nullable(
                    Type::Integer,
                    "Started (running) or created (queued) longer ago than this, seconds",
                )
                .minimum(Some(0)),
            );
        }
        RequestBodyBuilder::new()
            .description(Some(
                "Optional JSON body (an empty body takes every default)",
            ))
            .required(Some(Required::False))
            .content(
                "application/json",
                ContentBuilder::new()
                    .schema(Some(RefOr::T(Schema::Object(schema.build()))))
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
            Some(bulk_body(
                &["failed", "cancelled"],
                "`failed` (default) or `cancelled`",
                false,
            )),
            counted("retried"),
        ),
        (
            "/v1/jobs/bulk/cancel",
            HttpMethod::Post,
            "Cancels running (or queued, or waiting) jobs in bulk, e.g. stuck ones",
            Some(bulk_body(
                &["running", "queued", "waiting"],
                "`running` (default), `queued` or `waiting`",
                true,
            )),
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
                    .schema(Some(
                        ObjectBuilder::new()
                            .schema_type(SchemaType::new(Type::Integer))
                            .minimum(Some(0))
                            .maximum(Some(u64::MAX)),
                    )),
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
