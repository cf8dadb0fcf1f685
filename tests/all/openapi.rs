//! `GET /openapi.json`: a valid OpenAPI 3 document describing every route of the router
//! (read from the router's source, so a route added without a description fails here),
//! the fixed job fields and the one error shape.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::{Value, json};

use crate::support::{self, LONG, id_of, submit, wait_terminal};

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Every `.route("PATH", METHOD(..).METHOD(..))` in the API's source files, as
/// `(path, method)` with axum's `{*rest}` written `{rest}` as OpenAPI does.
fn router_routes() -> BTreeSet<(String, String)> {
    let mut files = Vec::new();
    collect_rs(&support::repo_root().join("host/src/api"), &mut files);
    let mut routes = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for hidden in [".nest(", ".nest_service(", ".route_service("] {
            assert!(
                !text.contains(hidden),
                "{} uses {hidden}: teach this test to read it",
                file.display()
            );
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find(".route(") {
            let call_start = &rest[at + ".route(".len()..];
            let mut depth = 1;
            let end = call_start
                .char_indices()
                .find(|&(_, c)| {
                    match c {
                        '(' => depth += 1,
                        ')' => depth -= 1,
                        _ => {}
                    }
                    depth == 0
                })
                .map_or(call_start.len(), |(i, _)| i);
            let call = &call_start[..end];
            rest = &call_start[end..];
            let Some(path) = call
                .trim_start()
                .strip_prefix('"')
                .and_then(|s| s.split('"').next())
            else {
                continue;
            };
            if !path.starts_with('/') {
                continue;
            }
            let path = path.replace("{*", "{");
            let mut found = false;
            for method in METHODS {
                let token = format!("{method}(");
                let mut search = call;
                while let Some(i) = search.find(&token) {
                    let before = search[..i].chars().last();
                    if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_' || c == ':')) {
                        routes.insert((path.clone(), method.to_string()));
                        found = true;
                    }
                    search = &search[i + token.len()..];
                }
            }
            assert!(found, "no method found in .route({call})");
        }
    }
    routes
}

fn collect_rs(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect_rs(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

async fn document(kiln: &support::InProcess) -> Value {
    let response = kiln
        .client
        .get(kiln.url("/openapi.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/json");
    response.json().await.expect("the document is JSON")
}

#[tokio::test]
async fn every_route_is_described() {
    let kiln = support::kiln("").await;
    let doc = document(&kiln).await;
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "Kiln");
    assert!(doc["info"]["version"].is_string());
    let paths = doc["paths"].as_object().expect("paths");

    let routes = router_routes();
    // The job service's own routes at least; the parser must not silently find nothing.
    for expected in [
        ("/v1/jobs", "post"),
        ("/v1/jobs", "get"),
        ("/v1/jobs/{id}/events", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            routes.contains(&(expected.0.to_string(), expected.1.to_string())),
            "the router source lacks {expected:?}: {routes:?}"
        );
    }
    let mut missing = Vec::new();
    for (path, method) in &routes {
        if paths.get(path).and_then(|p| p.get(method)).is_none() {
            missing.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    assert!(
        missing.is_empty(),
        "routes missing from /openapi.json: {missing:?}"
    );

    // And every described operation exists on the server: no stale paths.
    let id = uuid::Uuid::new_v4().to_string();
    for (path, item) in paths {
        for method in METHODS.iter().filter(|m| item.get(**m).is_some()) {
            assert!(
                routes.contains(&(path.clone(), method.to_string())),
                "{method} {path} is described but not routed"
            );
            if path.ends_with("/events") || path == "/v1/doctor/cleanup" || path.contains("bulk") {
                continue; // streams, or actions: existence is proven by the source
            }
            let url = kiln.url(&path.replace("{id}", &id).replace("{path}", "app.js"));
            let request = match *method {
                "get" => kiln.client.get(&url),
                "post" => kiln.client.post(&url),
                "delete" => kiln.client.delete(&url),
                other => panic!("unexpected method {other}"),
            };
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            assert_ne!(status, 405, "{method} {path}");
            assert_ne!(body["error"]["message"], "no such route", "{method} {path}");
        }
    }
    kiln.stop().await;
}

#[tokio::test]
async fn schemas_match_what_the_api_answers() {
    let kiln = support::kiln("").await;
    let doc = document(&kiln).await;
    let schemas = &doc["components"]["schemas"];

    // JobView: the field names fixed by the design, exactly the keys a real job has.
    let job_view: BTreeSet<&str> = schemas["JobView"]["properties"]
        .as_object()
        .expect("JobView schema")
        .keys()
        .map(String::as_str)
        .collect();
    for field in [
        "id",
        "type",
        "status",
        "progress",
        "message",
        "result",
        "error",
        "attempt",
        "max_attempts",
        "created_at",
        "started_at",
        "finished_at",
        "usage",
        "links",
    ] {
        assert!(
            job_view.contains(field),
            "JobView lacks {field}: {job_view:?}"
        );
    }
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "payload": {}}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let job = wait_terminal(&kiln.client, &kiln.base, &id_of(&job), LONG).await;
    let keys: BTreeSet<&str> = job
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, job_view, "a job's JSON and the JobView schema differ");
    let usage: BTreeSet<&str> = schemas["Usage"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let job_usage: BTreeSet<&str> = job["usage"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(usage, job_usage);
    for status in ["queued", "running", "completed", "failed", "cancelled"] {
        assert!(
            schemas["JobStatus"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json!(status)),
            "{status}"
        );
    }

    // The error shape, and every JSON error answer refers to it.
    assert_eq!(
        schemas["ErrorBody"]["properties"]["error"]["$ref"],
        "#/components/schemas/ErrorDetail"
    );
    let detail = &schemas["ErrorDetail"];
    let required: Vec<&str> = detail["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        required.contains(&"kind") && required.contains(&"message"),
        "{detail:#}"
    );
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            for (code, response) in operation["responses"].as_object().unwrap() {
                let code: u16 = code.parse().unwrap();
                if code >= 400
                    && let Some(schema) = response["content"]["application/json"].get("schema")
                {
                    assert_eq!(
                        schema["$ref"], "#/components/schemas/ErrorBody",
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }

    // The status codes of the README's table.
    let codes = |path: &str, method: &str| -> BTreeSet<String> {
        doc["paths"][path][method]["responses"]
            .as_object()
            .unwrap_or_else(|| panic!("{method} {path}"))
            .keys()
            .cloned()
            .collect()
    };
    let submit_codes = codes("/v1/jobs", "post");
    for code in ["200", "202", "400", "413", "415", "429"] {
        assert!(submit_codes.contains(code), "POST /v1/jobs lacks {code}");
    }
    assert!(codes("/v1/jobs/{id}", "get").contains("404"));
    assert!(codes("/v1/jobs/{id}/cancel", "post").contains("409"));
    assert!(codes("/v1/jobs/{id}/retry", "post").contains("409"));
    assert!(codes("/v1/jobs/{id}/events", "get").contains("204"));
    assert!(codes("/v1/events", "get").contains("429"));
    assert_eq!(
        doc["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/SubmitBody"
    );
    assert_eq!(
        doc["paths"]["/v1/queues"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/QueueList"
    );
    let queue: BTreeSet<&str> = schemas["QueueView"]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    for field in [
        "name",
        "depth",
        "running",
        "limit",
        "avg_queue_ms",
        "avg_run_ms",
        "success_rate",
        "throughput_per_min",
        "completed",
        "failed",
        "health",
    ] {
        assert!(queue.contains(field), "QueueView lacks {field}");
    }
    kiln.stop().await;
}
