//! The HTTP API's edges: a matrix of bad input, each answered with the right 4xx and the
//! one error shape while the server keeps serving; listing and paging; the system routes.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// A bad-body case: what, content type, body, expected status, expected error kind.
type BodyCase = (
    &'static str,
    Option<&'static str>,
    Vec<u8>,
    u16,
    Option<&'static str>,
);

/// Sends a raw `POST /v1/jobs`; returns status and body (JSON, or the text as a string).
async fn post_raw(kiln: &InProcess, content_type: Option<&str>, body: Vec<u8>) -> (u16, Value) {
    let mut request = kiln.client.post(kiln.url("/v1/jobs")).body(body);
    if let Some(ct) = content_type {
        request = request.header("content-type", ct);
    }
    let response = request.send().await.expect("POST /v1/jobs");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Asserts the error shape with `kind` (when given), and that the server still serves.
async fn assert_error(
    kiln: &InProcess,
    what: &str,
    (status, body): (u16, Value),
    expected: u16,
    kind: Option<&str>,
) {
    assert_eq!(status, expected, "{what}: {body:#}");
    let error = &body["error"];
    assert!(error["kind"].is_string(), "{what}: error.kind: {body:#}");
    assert!(
        error["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{what}: error.message: {body:#}"
    );
    if let Some(kind) = kind {
        assert_eq!(error["kind"], kind, "{what}: {body:#}");
    }
    let (health, _) = get_json(&kiln.client, &kiln.url("/healthz")).await;
    assert_eq!(health, 200, "{what}: the server keeps serving");
}

async fn job_count(kiln: &InProcess) -> usize {
    let (status, list) = get_json(&kiln.client, &kiln.url("/v1/jobs?limit=100")).await;
    assert_eq!(status, 200, "{list:#}");
    list["jobs"]
        .as_array()
        .map(Vec::len)
        .unwrap_or_else(|| panic!("{list:#}"))
}

#[tokio::test]
async fn malformed_bodies_are_refused() {
    let kiln = kiln("").await;
    let json_ct = Some("application/json");
    let cases: Vec<BodyCase> = vec![
        (
            "malformed JSON",
            json_ct,
            b"{type: noop}".to_vec(),
            400,
            Some("malformed_json"),
        ),
        (
            "truncated JSON",
            json_ct,
            br#"{"type": "noop", "payload": {"#.to_vec(),
            400,
            Some("malformed_json"),
        ),
        (
            "empty body",
            json_ct,
            Vec::new(),
            400,
            Some("malformed_json"),
        ),
        (
            "trailing garbage",
            json_ct,
            br#"{"type": "noop"} x"#.to_vec(),
            400,
            Some("malformed_json"),
        ),
        ("not an object", json_ct, b"[1, 2]".to_vec(), 400, None),
        (
            "text/plain",
            Some("text/plain"),
            br#"{"type": "noop"}"#.to_vec(),
            415,
            Some("unsupported_media_type"),
        ),
        (
            "form",
            Some("application/x-www-form-urlencoded"),
            b"type=noop".to_vec(),
            415,
            Some("unsupported_media_type"),
        ),
        (
            "no content type",
            None,
            br#"{"type": "noop"}"#.to_vec(),
            415,
            Some("unsupported_media_type"),
        ),
        (
            "non-UTF-8 bytes",
            json_ct,
            b"{\"type\": \"no\xff\xfeop\"}".to_vec(),
            400,
            None,
        ),
        (
            "missing type",
            json_ct,
            br#"{"payload": {}}"#.to_vec(),
            400,
            Some("invalid_request"),
        ),
        (
            "type not a string",
            json_ct,
            br#"{"type": 7}"#.to_vec(),
            400,
            Some("invalid_request"),
        ),
        (
            "unknown field",
            json_ct,
            br#"{"type": "noop", "colour": "red"}"#.to_vec(),
            400,
            Some("invalid_request"),
        ),
    ];
    for (what, ct, body, status, kind) in cases {
        let answer = post_raw(&kiln, ct, body).await;
        assert_error(&kiln, what, answer, status, kind).await;
    }
    // Content type with parameters is fine.
    let (status, body) = post_raw(
        &kiln,
        Some("application/json; charset=utf-8"),
        br#"{"type": "noop"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 202, "{body:#}");
    assert_eq!(
        job_count(&kiln).await,
        1,
        "only the good submit stored a job"
    );
}

#[tokio::test]
async fn deeply_nested_json_is_a_400_not_a_crash() {
    let kiln = kiln("").await;
    let depth = 10_000;
    let body = format!(
        r#"{{"type": "noop", "payload": {{"x": {}{}}}}}"#,
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let answer = post_raw(&kiln, Some("application/json"), body.into_bytes()).await;
    assert_error(&kiln, "10 000 levels", answer, 400, None).await;
    // Moderate nesting is fine.
    let body = format!(
        r#"{{"type": "noop", "payload": {{"x": {}{}}}}}"#,
        "[".repeat(20),
        "]".repeat(20)
    );
    let (status, body) = post_raw(&kiln, Some("application/json"), body.into_bytes()).await;
    assert_eq!(status, 202, "{body:#}");
}

#[tokio::test]
async fn unknown_type_is_refused_and_nothing_is_stored() {
    let kiln = kiln("").await;
    let answer = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "teleport", "payload": {}}),
    )
    .await;
    let message = answer.1["error"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_error(&kiln, "unknown type", answer, 400, Some("unknown_type")).await;
    assert!(message.contains("teleport"), "names the type: {message}");
    assert_eq!(job_count(&kiln).await, 0);
}

#[tokio::test]
async fn payload_failing_the_schema_lists_violations_and_stores_nothing() {
    let kiln = kiln("").await;
    let cases = [
        (
            json!({"type": "characters", "payload": {"theme": "x", "count": 11}}),
            "/count",
        ),
        (
            json!({"type": "characters", "payload": {"theme": "x", "count": 0}}),
            "/count",
        ),
        (
            json!({"type": "characters", "payload": {"theme": "x", "count": "three"}}),
            "/count",
        ),
        (json!({"type": "characters", "payload": {"count": 2}}), ""),
        (
            json!({"type": "documents", "payload": {"text": "hello", "title": "t".repeat(501)}}),
            "/title",
        ),
        (
            json!({"type": "hostile", "payload": {"mode": "explode"}}),
            "/mode",
        ),
        (
            json!({"type": "hostile", "payload": {"mode": "ok", "n": -1}}),
            "/n",
        ),
        (
            json!({"type": "characters", "payload": "not an object"}),
            "",
        ),
    ];
    for (body, path) in cases {
        let answer = submit(&kiln.client, &kiln.base, body.clone()).await;
        let violations = answer.1["error"]["violations"].clone();
        assert_error(
            &kiln,
            &body.to_string(),
            answer,
            400,
            Some("invalid_payload"),
        )
        .await;
        let violations = violations
            .as_array()
            .unwrap_or_else(|| panic!("violations for {body}: {violations:#}"));
        assert!(
            violations
                .iter()
                .any(|v| v["path"] == path && v["message"].as_str().is_some_and(|m| !m.is_empty())),
            "{body}: a violation at {path:?}: {violations:#?}"
        );
    }
    // The limits of the schema, obeyed.
    for count in [1, 10] {
        let (status, body) = submit(
            &kiln.client,
            &kiln.base,
            json!({"type": "characters", "payload": {"theme": "x", "count": count}, "run_at": rfc3339_in(Duration::from_secs(3600))}),
        )
        .await;
        assert_eq!(status, 202, "count {count}: {body:#}");
    }
    assert_eq!(job_count(&kiln).await, 2);
}

#[tokio::test]
async fn submit_options_out_of_range_are_refused() {
    let kiln = kiln("").await;
    let bad = [
        ("priority 1001", json!({"type": "noop", "priority": 1001})),
        ("priority -1001", json!({"type": "noop", "priority": -1001})),
        (
            "priority huge",
            json!({"type": "noop", "priority": 1u64 << 40}),
        ),
        (
            "priority fractional",
            json!({"type": "noop", "priority": 1.5}),
        ),
        ("max_attempts 0", json!({"type": "noop", "max_attempts": 0})),
        (
            "max_attempts 21",
            json!({"type": "noop", "max_attempts": 21}),
        ),
        (
            "max_attempts -1",
            json!({"type": "noop", "max_attempts": -1}),
        ),
        ("timeout_s 0", json!({"type": "noop", "timeout_s": 0})),
        (
            "timeout_s huge",
            json!({"type": "noop", "timeout_s": 1_000_000_000u64}),
        ),
        ("timeout_s -5", json!({"type": "noop", "timeout_s": -5})),
        (
            "run_at words",
            json!({"type": "noop", "run_at": "tomorrow at noon"}),
        ),
        (
            "run_at date only",
            json!({"type": "noop", "run_at": "2030-01-01"}),
        ),
        (
            "run_at number",
            json!({"type": "noop", "run_at": 1_900_000_000}),
        ),
        (
            "run_at bad month",
            json!({"type": "noop", "run_at": "2030-13-01T00:00:00Z"}),
        ),
    ];
    for (what, body) in bad {
        let answer = submit(&kiln.client, &kiln.base, body).await;
        assert_error(&kiln, what, answer, 400, Some("invalid_request")).await;
    }
    assert_eq!(job_count(&kiln).await, 0, "nothing stored");
    // The same limits, obeyed.
    let later = rfc3339_in(Duration::from_secs(3600));
    let good = [
        json!({"type": "noop", "priority": 1000, "run_at": later}),
        json!({"type": "noop", "priority": -1000, "run_at": later}),
        json!({"type": "noop", "max_attempts": 1, "run_at": later}),
        json!({"type": "noop", "max_attempts": 20, "run_at": later}),
        json!({"type": "noop", "timeout_s": 1, "run_at": later}),
        json!({"type": "noop", "timeout_s": 3600, "run_at": later}),
        json!({"type": "noop", "run_at": "2031-02-03T04:05:06Z"}),
    ];
    for body in good {
        let (status, job) = submit(&kiln.client, &kiln.base, body.clone()).await;
        assert_eq!(status, 202, "{body}: {job:#}");
    }
    assert_eq!(job_count(&kiln).await, 7);
}

/// RFC 3339 allows any UTC offset, not only `Z`; a browser's `toISOString()` gives `Z`,
/// but other clients send local offsets.
#[tokio::test]
async fn run_at_with_a_utc_offset_is_accepted() {
    let kiln = kiln("").await;
    for text in ["2031-02-03T04:05:06+02:00", "2031-02-03T04:05:06.250-05:30"] {
        let (status, job) = submit(
            &kiln.client,
            &kiln.base,
            json!({"type": "noop", "run_at": text}),
        )
        .await;
        assert_eq!(status, 202, "{text}: {job:#}");
        assert_eq!(
            job["run_at"].as_str().and_then(parse_rfc3339_ms),
            parse_rfc3339_ms(text),
            "{text}: the same instant: {job:#}"
        );
        assert_eq!(job["status"], "queued", "{job:#}");
    }
}

#[tokio::test]
async fn wait_beyond_the_maximum_is_refused() {
    let kiln = kiln("max_wait_secs = 5").await;
    for query in ["wait=6", "wait=-1", "wait=soon", "hold=1"] {
        let response = kiln
            .client
            .post(kiln.url(&format!("/v1/jobs?{query}")))
            .json(&json!({"type": "noop"}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_error(&kiln, query, (status, body), 400, Some("invalid_query")).await;
    }
    assert_eq!(job_count(&kiln).await, 0);
    let response = kiln
        .client
        .post(kiln.url("/v1/jobs?wait=5"))
        .json(&json!({"type": "noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn body_limit_is_obeyed_and_enforced() {
    let kiln = kiln("max_body_bytes = 1024").await;
    let body = |size: usize| {
        let mut text = json!({"type": "noop", "payload": {"pad": ""}}).to_string();
        let pad = size - text.len();
        text = json!({"type": "noop", "payload": {"pad": "p".repeat(pad)}}).to_string();
        assert_eq!(text.len(), size);
        text.into_bytes()
    };
    let answer = post_raw(&kiln, Some("application/json"), body(2048)).await;
    assert_error(&kiln, "2 KB body", answer, 413, Some("body_too_large")).await;
    let (status, job) = post_raw(&kiln, Some("application/json"), body(500)).await;
    assert_eq!(status, 202, "500-byte body: {job:#}");
    let (status, job) = post_raw(&kiln, Some("application/json"), body(1024)).await;
    assert_eq!(status, 202, "a body of exactly the limit: {job:#}");
    assert_eq!(job_count(&kiln).await, 2);
}

#[tokio::test]
async fn queue_full_is_a_429() {
    let kiln = kiln("max_queued = 2").await;
    let later = rfc3339_in(Duration::from_secs(3600));
    for _ in 0..2 {
        let (status, job) = submit(
            &kiln.client,
            &kiln.base,
            json!({"type": "noop", "run_at": later}),
        )
        .await;
        assert_eq!(status, 202, "{job:#}");
    }
    let answer = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "run_at": later}),
    )
    .await;
    assert_error(&kiln, "third job", answer, 429, Some("queue_full")).await;
    assert_eq!(job_count(&kiln).await, 2);
}

#[tokio::test]
async fn unknown_and_malformed_job_ids_are_404_everywhere() {
    let kiln = kiln("").await;
    let unknown = uuid::Uuid::now_v7().to_string();
    for id in [unknown.as_str(), "not-a-uuid", "12345"] {
        let answer = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
        assert_error(&kiln, &format!("GET {id}"), answer, 404, Some("not_found")).await;
        for action in ["cancel", "retry"] {
            let answer =
                post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/{action}"))).await;
            assert_error(
                &kiln,
                &format!("{action} {id}"),
                answer,
                404,
                Some("not_found"),
            )
            .await;
        }
        let answer = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/events"))).await;
        assert_error(
            &kiln,
            &format!("events {id}"),
            answer,
            404,
            Some("not_found"),
        )
        .await;
    }
    assert_eq!(job_count(&kiln).await, 0);
}

#[tokio::test]
async fn bad_list_queries_are_refused() {
    let kiln = kiln("").await;
    let cases = [
        ("cursor=xyz", "invalid_cursor"),
        ("cursor=", "invalid_cursor"),
        ("status=sleeping", "invalid_query"),
        ("status=QUEUED", "invalid_query"),
        ("limit=0", "invalid_query"),
        ("limit=101", "invalid_query"),
        ("limit=-3", "invalid_query"),
        ("limit=ten", "invalid_query"),
        ("colour=red", "invalid_query"),
    ];
    for (query, kind) in cases {
        let answer = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs?{query}"))).await;
        assert_error(&kiln, query, answer, 400, Some(kind)).await;
    }
    for query in ["limit=1", "limit=100", "status=queued", "type=anything"] {
        let (status, body) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs?{query}"))).await;
        assert_eq!(status, 200, "{query}: {body:#}");
        assert!(body["jobs"].is_array(), "{body:#}");
    }
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json() {
    let kiln = kiln("").await;
    for path in ["/v2/jobs", "/v1/job", "/nothing/here", "/v1/jobs/a/b/c"] {
        let answer = get_json(&kiln.client, &kiln.url(path)).await;
        assert_error(&kiln, path, answer, 404, Some("not_found")).await;
    }
    let id = uuid::Uuid::now_v7();
    let cases = [
        (reqwest::Method::DELETE, "/v1/jobs".to_string()),
        (reqwest::Method::PUT, "/v1/jobs".to_string()),
        (reqwest::Method::POST, format!("/v1/jobs/{id}")),
        (reqwest::Method::GET, format!("/v1/jobs/{id}/cancel")),
        (reqwest::Method::GET, format!("/v1/jobs/{id}/retry")),
        (reqwest::Method::POST, "/healthz".to_string()),
        (reqwest::Method::POST, "/v1/plugins".to_string()),
    ];
    for (method, path) in cases {
        let response = kiln
            .client
            .request(method.clone(), kiln.url(&path))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_error(
            &kiln,
            &format!("{method} {path}"),
            (status, body),
            405,
            Some("method_not_allowed"),
        )
        .await;
    }
}

#[tokio::test]
async fn listing_pages_newest_first_and_filters() {
    let kiln = kiln("").await;
    let later = rfc3339_in(Duration::from_secs(3600));
    let mut created = Vec::new();
    for i in 0..7 {
        let body = if i % 2 == 0 {
            json!({"type": "noop"})
        } else {
            json!({"type": "hostile", "payload": {"mode": "ok"}, "run_at": later})
        };
        let (status, job) = submit(&kiln.client, &kiln.base, body).await;
        assert_eq!(status, 202, "{job:#}");
        created.push(id_of(&job));
    }
    for id in created.iter().step_by(2) {
        assert_eq!(
            wait_terminal(&kiln.client, &kiln.base, id, LONG).await["status"],
            "completed"
        );
    }
    let newest_first: Vec<String> = created.iter().rev().cloned().collect();

    let walk = |query: &'static str| {
        let kiln = &kiln;
        async move {
            let mut seen = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..20 {
                let url = match &cursor {
                    Some(c) => kiln.url(&format!("/v1/jobs?{query}&cursor={c}")),
                    None => kiln.url(&format!("/v1/jobs?{query}")),
                };
                let (status, page) = get_json(&kiln.client, &url).await;
                assert_eq!(status, 200, "{page:#}");
                for job in page["jobs"].as_array().unwrap() {
                    seen.push(job.clone());
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = Some(next.to_string()),
                    None => {
                        assert!(page["next_cursor"].is_null(), "{page:#}");
                        return seen;
                    }
                }
            }
            panic!("paging never ended: {seen:#?}");
        }
    };
    let ids = |jobs: &[Value]| jobs.iter().map(id_of).collect::<Vec<_>>();

    let all = walk("limit=3").await;
    assert_eq!(
        ids(&all),
        newest_first,
        "every job exactly once, newest first"
    );
    let one_page = walk("limit=100").await;
    assert_eq!(ids(&one_page), newest_first);

    let queued = walk("limit=2&status=queued").await;
    let expected: Vec<String> = newest_first
        .iter()
        .filter(|id| created.iter().position(|c| c == *id).unwrap() % 2 == 1)
        .cloned()
        .collect();
    assert_eq!(ids(&queued), expected, "status=queued");
    assert!(
        queued
            .iter()
            .all(|j| j["status"] == "queued" && j["type"] == "hostile"),
        "{queued:#?}"
    );

    let noop = walk("limit=2&type=noop").await;
    let expected: Vec<String> = newest_first
        .iter()
        .filter(|id| created.iter().position(|c| c == *id).unwrap() % 2 == 0)
        .cloned()
        .collect();
    assert_eq!(ids(&noop), expected, "type=noop");
    assert!(
        noop.iter()
            .all(|j| j["status"] == "completed" && j["type"] == "noop"),
        "{noop:#?}"
    );
    let completed_noop = walk("limit=1&type=noop&status=completed").await;
    assert_eq!(ids(&completed_noop), expected);
    let none = walk("type=hostile&status=completed").await;
    assert!(none.is_empty(), "{none:#?}");
    let completed_jobs = walk("status=completed").await;
    assert_eq!(completed_jobs.len(), 4);
    // A completed job in the list carries its result, like GET.
    assert!(
        completed_jobs
            .iter()
            .all(|j| j["result"] == json!({"ok": true})),
        "{completed_jobs:#?}"
    );
}

#[tokio::test]
async fn plugins_health_and_queues() {
    let kiln = kiln("").await;
    let (status, health) = get_json(&kiln.client, &kiln.url("/healthz")).await;
    assert_eq!(status, 200);
    assert_eq!(health["status"], "ok", "{health:#}");

    let (status, plugins) = get_json(&kiln.client, &kiln.url("/v1/plugins")).await;
    assert_eq!(status, 200);
    let list = plugins["plugins"]
        .as_array()
        .unwrap_or_else(|| panic!("{plugins:#}"));
    let names: HashSet<&str> = list.iter().filter_map(|p| p["name"].as_str()).collect();
    assert_eq!(
        names,
        HashSet::from(["characters", "factions", "documents", "noop", "hostile"]),
        "{plugins:#}"
    );
    for plugin in list {
        assert!(
            plugin["version"].as_str().is_some_and(|v| !v.is_empty()),
            "{plugin:#}"
        );
        assert!(plugin["description"].is_string(), "{plugin:#}");
        assert!(plugin["payload_schema"].is_object(), "{plugin:#}");
    }
    let characters = list.iter().find(|p| p["name"] == "characters").unwrap();
    assert_eq!(
        characters["payload_schema"]["properties"]["count"]["maximum"], 10,
        "{characters:#}"
    );
    assert_eq!(
        characters["payload_schema"]["required"],
        json!(["theme"]),
        "{characters:#}"
    );

    let (_, job) = submit(&kiln.client, &kiln.base, json!({"type": "noop"})).await;
    assert_eq!(
        wait_terminal(&kiln.client, &kiln.base, &id_of(&job), LONG).await["status"],
        "completed"
    );
    let (_, waiting) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "run_at": rfc3339_in(Duration::from_secs(3600))}),
    )
    .await;
    assert_eq!(waiting["status"], "queued");
    let listed = queues(&kiln).await;
    let noop = listed.get("noop").unwrap_or_else(|| panic!("{listed:#?}"));
    assert_eq!(noop["depth"], 1, "{listed:#?}");
    assert_eq!(noop["running"], 0, "{listed:#?}");
    assert_eq!(noop["limit"], 16, "{listed:#?}");
    assert_eq!(noop["completed"], 1, "{listed:#?}");
    assert_eq!(noop["success_rate"], 1.0, "{listed:#?}");
}

/// With redb the only node is the server itself, alive, at the address it listens on.
#[tokio::test]
async fn nodes_lists_this_node_on_redb() {
    let kiln = InProcess::start(&["characters"], "").await;
    let (status, body) = get_json(&kiln.client, &kiln.url("/v1/nodes")).await;
    assert_eq!(status, 200, "{body}");
    let nodes = body["nodes"].as_array().unwrap();
    if crate::pg::enabled() {
        return; // the PostgreSQL pass: see postgres::every_node_lists_the_cluster_…
    }
    assert_eq!(nodes.len(), 1, "{body:#}");
    let node = &nodes[0];
    assert_eq!(node["status"], "alive", "{body:#}");
    assert_eq!(node["this_node"], true, "{body:#}");
    assert_eq!(node["running_jobs"], 0, "{body:#}");
    assert_eq!(
        node["address"],
        kiln.base.trim_start_matches("http://"),
        "{body:#}"
    );
    assert!(node["stopped_at"].is_null(), "{body:#}");
    kiln.stop().await;
}
