//! Batches over HTTP: `POST /v1/batches` checks every item before creating anything,
//! stores the batch and its jobs in one commit, keeps counts and mean progress, streams
//! its own resumable log ending in `batch_completed`, cancels and retries as a whole,
//! obeys `max_batch_items`, and survives kill -9. Also run against PostgreSQL.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// `n` payloads of the hostile fixture in `mode`.
fn items(mode: &str, n: usize) -> Vec<Value> {
    (0..n).map(|_| json!({"mode": mode})).collect()
}

/// Every job of the listing `/v1/jobs?batch=id` (all pages).
async fn jobs_of(client: &reqwest::Client, base: &str, id: &str) -> Vec<Value> {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/jobs?batch={id}&limit=100");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let (status, page) = get_json(client, &url).await;
        assert_eq!(status, 200, "{page:#}");
        jobs.extend(page["jobs"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return jobs,
        }
    }
}

/// Follows a batch's stream from `after` to its end.
async fn follow(
    kiln_client: &reqwest::Client,
    base: &str,
    id: &str,
    after: Option<u64>,
) -> SseReader {
    let response = open_sse(
        kiln_client,
        &format!("{base}/v1/batches/{id}/events"),
        after,
    )
    .await;
    assert_eq!(response.status(), 200, "batch stream of {id}");
    SseReader::new(response)
}

fn assert_ids_run(events: &[SseEvent], first: u64) {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.id,
            Some(first + i as u64),
            "batch event ids run on without gap or repeat; events: {events:#?}"
        );
    }
}

#[tokio::test]
async fn a_batch_runs_every_item_and_reports_counts_progress_and_its_end() {
    let kiln = kiln("").await;
    let (status, body) = submit_batch(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "items": items("ok", 20), "priority": 5}),
    )
    .await;
    assert_eq!(status, 202, "{body:#}");
    let id = body["id"].as_str().expect("batch id").to_string();
    let jobs: Vec<String> = body["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .map(|j| j.as_str().unwrap().to_string())
        .collect();
    assert_eq!(jobs.len(), 20, "{body:#}");
    assert_eq!(body["total"], 20, "{body:#}");
    assert_eq!(body["links"]["events"], format!("/v1/batches/{id}/events"));
    assert!(body["events_token"].as_str().is_some(), "{body:#}");

    let mut stream = follow(&kiln.client, &kiln.base, &id, None).await;
    let events = stream.read_to_end(LONG).await;
    assert!(
        stream.ended,
        "the stream ends after batch_completed: {events:#?}"
    );
    let last = events.last().expect("events");
    assert_eq!(last.event, "batch_completed", "{events:#?}");
    assert_eq!(last.data["counts"]["completed"], 20, "{events:#?}");
    assert_eq!(last.data["progress"], 100, "{events:#?}");
    assert_ids_run(&events, 1);
    for job in &jobs {
        let ended = events.iter().any(|e| {
            e.event == "status"
                && e.data["job_id"] == job.as_str()
                && e.data["status"] == "completed"
        });
        assert!(
            ended,
            "job {job}'s completion is in the batch's log: {events:#?}"
        );
    }

    let (status, batch) = get_json(&kiln.client, &kiln.url(&format!("/v1/batches/{id}"))).await;
    assert_eq!(status, 200, "{batch:#}");
    assert_eq!(batch["counts"]["completed"], 20, "{batch:#}");
    assert_eq!(batch["counts"]["queued"], 0, "{batch:#}");
    assert_eq!(batch["progress"], 100, "{batch:#}");
    assert!(batch["finished_at"].as_str().is_some(), "{batch:#}");

    let listed = jobs_of(&kiln.client, &kiln.base, &id).await;
    assert_eq!(listed.len(), 20, "{listed:#?}");
    for job in &listed {
        assert_eq!(job["batch"], id.as_str(), "{job:#}");
        assert_eq!(job["priority"], 5, "options apply to every job: {job:#}");
        assert_eq!(job["status"], "completed", "{job:#}");
    }
    // A finished batch's stream has nothing more to send past its last event.
    let response = open_sse(
        &kiln.client,
        &kiln.url(&format!("/v1/batches/{id}/events")),
        last.id,
    )
    .await;
    assert_eq!(response.status(), 204);
}

#[tokio::test]
async fn one_bad_item_refuses_the_batch_naming_its_index_and_creates_nothing() {
    let kiln = kiln("").await;
    let mut bad = items("ok", 4);
    bad.insert(2, json!({"mode": "explode"}));
    let (status, body) = submit_batch(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "items": bad}),
    )
    .await;
    assert_eq!(status, 400, "{body:#}");
    assert_eq!(body["error"]["kind"], "invalid_payload", "{body:#}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("items[2]"), "{body:#}");
    let violations = body["error"]["violations"].as_array().expect("violations");
    assert!(
        violations.iter().any(|v| v["path"] == "/items/2/mode"),
        "{body:#}"
    );
    let (_, page) = get_json(&kiln.client, &kiln.url("/v1/jobs")).await;
    assert_eq!(page["jobs"], json!([]), "no job was created: {page:#}");

    // Other refusals of the whole request, each creating nothing either.
    let refusals = [
        (json!({"type": "nope", "items": [{}]}), "unknown_type"),
        (json!({"type": "hostile", "items": []}), "batch_too_large"),
        (
            json!({"type": "hostile", "items": [{"mode": "ok"}], "webhook": {"url": "http://x"}}),
            "invalid_request",
        ),
        (
            json!({"type": "hostile", "items": [{"mode": "ok"}], "priority": 5000}),
            "invalid_request",
        ),
    ];
    for (request, kind) in refusals {
        let (status, body) = submit_batch(&kiln.client, &kiln.base, request.clone()).await;
        assert_eq!(status, 400, "{request}: {body:#}");
        assert_eq!(body["error"]["kind"], kind, "{request}: {body:#}");
    }
    let (_, page) = get_json(&kiln.client, &kiln.url("/v1/jobs")).await;
    assert_eq!(page["jobs"], json!([]), "no job was created: {page:#}");
    let unknown = uuid::Uuid::now_v7();
    for path in [
        format!("/v1/batches/{unknown}"),
        "/v1/batches/not-a-uuid".into(),
    ] {
        let (status, body) = get_json(&kiln.client, &kiln.url(&path)).await;
        assert_eq!(status, 404, "{path}: {body:#}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.starts_with("no batch with id"), "{path}: {body:#}");
    }
}

#[tokio::test]
async fn max_batch_items_is_obeyed_and_violated() {
    let kiln = kiln("max_batch_items = 5").await;
    let (status, body) = submit_batch(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "items": items("ok", 5)}),
    )
    .await;
    assert_eq!(status, 202, "5 items fit max_batch_items = 5: {body:#}");
    let (status, body) = submit_batch(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "items": items("ok", 6)}),
    )
    .await;
    assert_eq!(status, 400, "6 items do not: {body:#}");
    assert_eq!(body["error"]["kind"], "batch_too_large", "{body:#}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_batch_items"),
        "{body:#}"
    );
}

#[tokio::test]
async fn a_batch_passing_max_queued_is_refused_whole() {
    let kiln = kiln("max_queued = 10").await;
    let later = rfc3339_in(Duration::from_secs(3600));
    let (status, body) = submit_batch(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "items": items("ok", 10), "run_at": later}),
    )
    .await;
    assert_eq!(status, 202, "10 queued fit max_queued = 10: {body:#}");
    let (status, body) = submit_batch(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "items": items("ok", 1), "run_at": later}),
    )
    .await;
    assert_eq!(status, 429, "{body:#}");
    assert_eq!(body["error"]["kind"], "queue_full", "{body:#}");
    let (_, page) = get_json(&kiln.client, &kiln.url("/v1/jobs?limit=100")).await;
    assert_eq!(page["jobs"].as_array().unwrap().len(), 10, "{page:#}");
}

#[tokio::test]
async fn the_batch_stream_resumes_after_last_event_id_without_loss_or_repeat() {
    let kiln = kiln("[providers.offline]\nkind = \"offline\"\nlatency_ms = 20").await;
    let (status, body) = submit_batch(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "items": items("events", 6)}),
    )
    .await;
    assert_eq!(status, 202, "{body:#}");
    let id = id_of(&body);
    let mut first = follow(&kiln.client, &kiln.base, &id, None).await;
    let mut seen = first.until(|e| e.id == Some(4), LONG).await;
    drop(first);
    assert_eq!(seen.len(), 4, "{seen:#?}");
    let mut rest = follow(&kiln.client, &kiln.base, &id, Some(4)).await;
    seen.extend(rest.read_to_end(LONG).await);
    assert!(rest.ended, "{seen:#?}");
    assert_ids_run(&seen, 1);
    assert_eq!(seen.last().unwrap().event, "batch_completed", "{seen:#?}");
    let progress = seen.iter().filter(|e| e.event == "progress").count();
    assert!(
        progress > 0,
        "running jobs' progress is in the batch's log: {seen:#?}"
    );
    for event in seen.iter().filter(|e| e.event == "progress") {
        let mean = event.data["batch_progress"]
            .as_u64()
            .expect("batch_progress");
        assert!(mean <= 100, "{event:#?}");
    }
    // Finished: nothing follows, whatever the position (as for a finished job).
    let response = open_sse(
        &kiln.client,
        &kiln.url(&format!("/v1/batches/{id}/events")),
        Some(10_000),
    )
    .await;
    assert_eq!(response.status(), 204);
}

#[tokio::test]
async fn a_whole_batch_is_cancelled() {
    let kiln = kiln("").await;
    let later = rfc3339_in(Duration::from_secs(3600));
    let (status, body) = submit_batch(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "items": items("ok", 8), "run_at": later}),
    )
    .await;
    assert_eq!(status, 202, "{body:#}");
    let id = id_of(&body);
    // While it waits, a position past its log is refused, not silently followed.
    let response = open_sse(
        &kiln.client,
        &kiln.url(&format!("/v1/batches/{id}/events")),
        Some(10_000),
    )
    .await;
    assert_eq!(response.status(), 400);
    let (status, cancelled) =
        post_empty(&kiln.client, &kiln.url(&format!("/v1/batches/{id}/cancel"))).await;
    assert_eq!(status, 200, "{cancelled:#}");
    assert_eq!(cancelled["changed"], 8, "{cancelled:#}");
    assert_eq!(cancelled["counts"]["cancelled"], 8, "{cancelled:#}");
    assert!(cancelled["finished_at"].as_str().is_some(), "{cancelled:#}");
    let mut stream = follow(&kiln.client, &kiln.base, &id, None).await;
    let events = stream.read_to_end(LONG).await;
    assert_ids_run(&events, 1);
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("batch_completed"),
        "{events:#?}"
    );
    assert_eq!(
        events.last().unwrap().data["counts"]["cancelled"],
        8,
        "{events:#?}"
    );
    // Nothing is left to cancel.
    let (_, again) = post_empty(&kiln.client, &kiln.url(&format!("/v1/batches/{id}/cancel"))).await;
    assert_eq!(again["changed"], 0, "{again:#}");
}

#[tokio::test]
async fn a_whole_batch_is_retried_and_its_log_goes_on() {
    let kiln = kiln("").await;
    let (status, body) = submit_batch(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "items": items("permanent", 6)}),
    )
    .await;
    assert_eq!(status, 202, "{body:#}");
    let id = id_of(&body);
    let mut stream = follow(&kiln.client, &kiln.base, &id, None).await;
    let events = stream.read_to_end(LONG).await;
    let end = events.last().expect("events");
    assert_eq!(end.event, "batch_completed", "{events:#?}");
    assert_eq!(end.data["counts"]["failed"], 6, "{events:#?}");
    let failed = events
        .iter()
        .filter(|e| e.event == "status" && e.data["status"] == "failed")
        .count();
    assert_eq!(
        failed, 6,
        "each failure, with its error, is in the log: {events:#?}"
    );
    assert!(
        events
            .iter()
            .any(|e| e.data["error"]["kind"] == "permanent"),
        "{events:#?}"
    );

    let (status, retried) =
        post_empty(&kiln.client, &kiln.url(&format!("/v1/batches/{id}/retry"))).await;
    assert_eq!(status, 202, "{retried:#}");
    assert_eq!(retried["changed"], 6, "{retried:#}");
    // The log goes on after the first batch_completed, to a second one.
    let mut stream = follow(&kiln.client, &kiln.base, &id, end.id).await;
    let more = stream.read_to_end(LONG).await;
    assert_ids_run(&more, end.id.unwrap() + 1);
    let last = more.last().expect("events after the retry");
    assert_eq!(last.event, "batch_completed", "{more:#?}");
    assert_eq!(last.data["counts"]["failed"], 6, "{more:#?}");
    let requeued = more
        .iter()
        .filter(|e| e.event == "status" && e.data["status"] == "queued" && e.data["attempt"] == 2)
        .count();
    assert_eq!(requeued, 6, "{more:#?}");
    let (_, batch) = get_json(&kiln.client, &kiln.url(&format!("/v1/batches/{id}"))).await;
    assert!(batch["finished_at"].is_string(), "{batch:#}");
}

#[tokio::test]
async fn a_batch_acknowledged_before_a_kill_9_is_all_there_after_it() {
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(ALL_PLUGINS);
    let client = reqwest::Client::new();
    let mut kiln = KilnProcess::start_cached(data.path(), plugins.path(), "");
    let (status, body) = submit_batch(
        &client,
        &kiln.base,
        json!({"type": "hostile", "items": items("ok", 200)}),
    )
    .await;
    assert_eq!(status, 202, "{body:#}\n{}", kiln.log());
    let id = id_of(&body);
    kiln.kill9();
    let log = kiln.log();
    let kiln = KilnProcess::start_cached(data.path(), plugins.path(), "");
    let deadline = std::time::Instant::now() + LONG;
    let batch = loop {
        let (status, batch) = get_json(&client, &kiln.url(&format!("/v1/batches/{id}"))).await;
        assert_eq!(
            status,
            200,
            "{batch:#}\nbefore the kill:\n{log}\nafter:\n{}",
            kiln.log()
        );
        if batch["finished_at"].is_string() || std::time::Instant::now() > deadline {
            break batch;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(batch["total"], 200, "{batch:#}");
    assert_eq!(
        batch["counts"]["completed"],
        200,
        "{batch:#}\n{}",
        kiln.log()
    );
    let listed = jobs_of(&client, &kiln.base, &id).await;
    assert_eq!(listed.len(), 200);
    let mut stream = follow(&client, &kiln.base, &id, None).await;
    let events = stream.read_to_end(LONG).await;
    assert_ids_run(&events, 1);
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("batch_completed"),
        "{events:#?}"
    );
}

#[tokio::test]
async fn batches_are_listed_newest_first_in_pages() {
    let kiln = kiln("").await;
    let mut ids = Vec::new();
    for n in 1..=3 {
        let (status, body) = submit_batch(
            &kiln.client,
            &kiln.base,
            json!({"type": "hostile", "items": items("ok", n)}),
        )
        .await;
        assert_eq!(status, 202, "{body:#}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let (status, page) = get_json(&kiln.client, &kiln.url("/v1/batches?limit=2")).await;
    assert_eq!(status, 200, "{page:#}");
    let listed: Vec<&str> = page["batches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()], "{page:#}");
    assert_eq!(page["batches"][0]["total"], 3, "{page:#}");
    let cursor = page["next_cursor"]
        .as_str()
        .expect("a next page")
        .to_string();
    let (status, page) = get_json(
        &kiln.client,
        &kiln.url(&format!("/v1/batches?limit=2&cursor={cursor}")),
    )
    .await;
    assert_eq!(status, 200, "{page:#}");
    assert_eq!(page["batches"].as_array().unwrap().len(), 1, "{page:#}");
    assert_eq!(page["batches"][0]["id"], ids[0].as_str(), "{page:#}");
    assert!(page["next_cursor"].is_null(), "{page:#}");

    for (query, kind) in [
        ("limit=0", "invalid_query"),
        ("limit=101", "invalid_query"),
        ("cursor=nope", "invalid_cursor"),
        ("status=queued", "invalid_query"),
    ] {
        let (status, body) =
            get_json(&kiln.client, &kiln.url(&format!("/v1/batches?{query}"))).await;
        assert_eq!(status, 400, "{query}: {body:#}");
        assert_eq!(body["error"]["kind"], kind, "{query}: {body:#}");
    }
}
