//! The SSE contract: resume with Last-Event-ID (header and query), concurrent
//! subscribers, reconnects mid-job, headers and the retry hint, errors, the stream cap
//! and the dashboard stream.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

fn events_url(kiln: &InProcess, id: &str) -> String {
    kiln.url(&format!("/v1/jobs/{id}/events"))
}

fn assert_consecutive_from(events: &[SseEvent], first: u64) {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.id,
            Some(first + i as u64),
            "ids must increase by 1 with no gap or duplicate: {events:#?}"
        );
    }
}

#[tokio::test]
async fn resume_at_every_last_event_id_gives_exactly_the_rest() {
    let kiln = kiln("").await;
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "events", "n": 8}}),
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    let id = id_of(&job);
    let full = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    assert_consecutive_from(&full, 1);
    assert_eq!(
        full.last().map(|e| e.event.as_str()),
        Some("completed"),
        "{full:#?}"
    );
    assert!(
        full.len() >= 8 + 3,
        "queued, running, 8 progress, completed: {full:#?}"
    );
    let last = full.len() as u64;

    for after in 0..last {
        let expected = &full[after as usize..];
        let by_header = read_sse(
            open_sse(&kiln.client, &events_url(&kiln, &id), Some(after)).await,
            None,
            LONG,
        )
        .await;
        assert_eq!(by_header, expected, "Last-Event-ID header {after}");
        let response = kiln
            .client
            .get(format!("{}?last_event_id={after}", events_url(&kiln, &id)))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "query {after}");
        let by_query = read_sse(response, None, LONG).await;
        assert_eq!(by_query, expected, "?last_event_id={after}");
    }

    // At the end of a finished job: nothing will follow, 204 tells EventSource to stop.
    let response = open_sse(&kiln.client, &events_url(&kiln, &id), Some(last)).await;
    assert_eq!(response.status(), 204, "header at the last id");
    let response = kiln
        .client
        .get(format!("{}?last_event_id={last}", events_url(&kiln, &id)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204, "query at the last id");
}

#[tokio::test]
async fn concurrent_subscribers_see_the_identical_sequence() {
    let kiln = kiln("[providers.offline]\nkind = \"offline\"\nlatency_ms = 100").await;
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "characters", "payload": {"theme": "lighthouse keepers", "count": 2}, "run_at": rfc3339_in(Duration::from_secs(1))}),
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    let id = id_of(&job);
    let mut responses = Vec::new();
    for _ in 0..5 {
        let response = open_sse(&kiln.client, &events_url(&kiln, &id), None).await;
        assert_eq!(response.status(), 200);
        responses.push(response);
    }
    let (_, early) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
    let readers = responses
        .into_iter()
        .map(|r| tokio::spawn(read_sse(r, None, LONG)));
    let mut all = Vec::new();
    for reader in readers {
        all.push(reader.await.unwrap());
    }
    let first = &all[0];
    assert_consecutive_from(first, 1);
    assert_eq!(
        first.last().map(|e| e.event.as_str()),
        Some("completed"),
        "{first:#?}"
    );
    if early["status"] == "queued" {
        assert!(first.iter().any(|e| e.event == "partial"), "{first:#?}");
    }
    for (i, other) in all.iter().enumerate().skip(1) {
        assert_eq!(other, first, "subscriber {i} differs from subscriber 0");
    }
    // And the log says the same.
    let log = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(&log, first);
}

#[tokio::test]
async fn reconnect_mid_job_has_no_gap_and_no_duplicate() {
    let kiln = kiln("[providers.offline]\nkind = \"offline\"\nlatency_ms = 150").await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "characters", "payload": {"theme": "orbital salvage crew", "count": 3}}),
    )
    .await;
    let id = id_of(&job);
    let mut reader = SseReader::new(open_sse(&kiln.client, &events_url(&kiln, &id), None).await);
    let mut seen = reader.until(|e| e.event == "progress", LONG).await;
    assert_eq!(
        seen.last().map(|e| e.event.as_str()),
        Some("progress"),
        "{seen:#?}"
    );
    drop(reader);
    let (_, mid) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(
        mid["status"], "running",
        "reconnect while the job still runs: {mid:#}"
    );

    let last = seen.last().and_then(|e| e.id).expect("ids");
    let response = open_sse(&kiln.client, &events_url(&kiln, &id), Some(last)).await;
    assert_eq!(response.status(), 200);
    let rest = read_sse(response, None, LONG).await;
    seen.extend(rest);
    assert_consecutive_from(&seen, 1);
    assert_eq!(
        seen.last().map(|e| e.event.as_str()),
        Some("completed"),
        "{seen:#?}"
    );
    let log = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(log, seen, "the concatenation is the job's log");
}

#[tokio::test]
async fn stream_headers_and_retry_hint() {
    let kiln = kiln("").await;
    let (_, job) = submit(&kiln.client, &kiln.base, json!({"type": "noop"})).await;
    let id = id_of(&job);
    for url in [events_url(&kiln, &id), kiln.url("/v1/events")] {
        let response = open_sse(&kiln.client, &url, None).await;
        assert_eq!(response.status(), 200, "{url}");
        let headers = response.headers().clone();
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert!(
            header("content-type").starts_with("text/event-stream"),
            "{url}: {headers:?}"
        );
        assert_eq!(header("cache-control"), "no-cache", "{url}: {headers:?}");
        assert_eq!(header("x-accel-buffering"), "no", "{url}: {headers:?}");
        let mut reader = SseReader::new(response);
        if url.ends_with("/events") && url.contains("/jobs/") {
            reader.read_to_end(LONG).await;
        } else {
            // The dashboard stays open; one chunk is enough to see the first frame.
            let _ = reader.next(Duration::from_secs(2)).await;
        }
        let first_frame = reader.raw.split("\n\n").next().unwrap_or("").to_string();
        assert!(
            first_frame
                .lines()
                .any(|l| l.starts_with("retry:") && l[6..].trim().parse::<u64>().is_ok()),
            "{url}: the first frame carries a retry hint; received:\n{}",
            reader.raw
        );
    }
}

#[tokio::test]
async fn unknown_job_and_malformed_last_event_id() {
    let kiln = kiln("").await;
    for id in [uuid::Uuid::now_v7().to_string(), "not-a-uuid".to_string()] {
        let response = open_sse(&kiln.client, &events_url(&kiln, &id), None).await;
        assert_eq!(response.status(), 404, "{id}");
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        assert!(
            content_type.starts_with("application/json"),
            "a JSON error, not a stream: {content_type}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["kind"], "not_found", "{body:#}");
    }
    let (_, job) = submit(&kiln.client, &kiln.base, json!({"type": "noop"})).await;
    let id = id_of(&job);
    wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
    let requests = [
        kiln.client
            .get(events_url(&kiln, &id))
            .header("last-event-id", "abc"),
        kiln.client
            .get(events_url(&kiln, &id))
            .header("last-event-id", "1.5"),
        kiln.client
            .get(format!("{}?last_event_id=-1", events_url(&kiln, &id))),
        kiln.client
            .get(format!("{}?last_event_id=abc", events_url(&kiln, &id))),
    ];
    for request in requests {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 400, "{body:#}");
        assert_eq!(body["error"]["kind"], "invalid_last_event_id", "{body:#}");
    }
    // Well-formed ids still work.
    let events = read_sse(
        open_sse(&kiln.client, &events_url(&kiln, &id), Some(1)).await,
        None,
        LONG,
    )
    .await;
    assert_eq!(events.first().and_then(|e| e.id), Some(2), "{events:#?}");
}

#[tokio::test]
async fn stream_cap_refuses_beyond_the_limit_and_frees_on_close() {
    let kiln = kiln("max_streams = 1\nkeep_alive_secs = 1").await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "run_at": rfc3339_in(Duration::from_secs(2))}),
    )
    .await;
    let id = id_of(&job);
    let first = open_sse(&kiln.client, &events_url(&kiln, &id), None).await;
    assert_eq!(first.status(), 200);

    // Violated: a second concurrent stream, of either kind.
    for url in [events_url(&kiln, &id), kiln.url("/v1/events")] {
        let response = open_sse(&kiln.client, &url, None).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, 429, "{url}: {body:#}");
        assert_eq!(body["error"]["kind"], "too_many_streams", "{body:#}");
    }

    // The first stream ends with the job (server-side close): a new one is accepted.
    let events = read_sse(first, None, LONG).await;
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("completed"),
        "{events:#?}"
    );
    let accepted = accept_eventually(&kiln, &kiln.url("/v1/events")).await;

    // A client that goes away frees its slot too.
    drop(accepted);
    let again = accept_eventually(&kiln, &kiln.url("/v1/events")).await;
    drop(again);
    let (status, _) = get_json(&kiln.client, &kiln.url("/healthz")).await;
    assert_eq!(status, 200);
}

/// Opens `url` until it is accepted (the slot of a closed stream frees when the server
/// notices); panics if it never is.
async fn accept_eventually(kiln: &InProcess, url: &str) -> reqwest::Response {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = open_sse(&kiln.client, url, None).await;
        if response.status() == 200 {
            return response;
        }
        let status = response.status();
        let body = response.text().await.unwrap_or_default();
        assert!(
            std::time::Instant::now() < deadline,
            "a stream slot never freed up: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn dashboard_stream_sees_every_job_and_filters_by_type() {
    let kiln = kiln("").await;
    let mut everything =
        SseReader::new(open_sse(&kiln.client, &kiln.url("/v1/events"), None).await);
    let mut noop_only =
        SseReader::new(open_sse(&kiln.client, &kiln.url("/v1/events?type=noop"), None).await);
    // Make sure both subscriptions are live before submitting (the first frame is the hint).
    let _ = everything.next(Duration::from_millis(300)).await;
    let _ = noop_only.next(Duration::from_millis(300)).await;

    let mut ids = std::collections::HashMap::new();
    for body in [
        json!({"type": "noop"}),
        json!({"type": "hostile", "payload": {"mode": "ok"}}),
        json!({"type": "characters", "payload": {"theme": "tea house", "count": 1}}),
    ] {
        let (status, job) = submit(&kiln.client, &kiln.base, body.clone()).await;
        assert_eq!(status, 202, "{job:#}");
        ids.insert(id_of(&job), body["type"].as_str().unwrap().to_string());
    }
    for id in ids.keys() {
        assert_eq!(
            wait_terminal(&kiln.client, &kiln.base, id, LONG).await["status"],
            "completed"
        );
    }

    let mut done = std::collections::HashSet::new();
    let seen = everything
        .until(
            |e| {
                if e.event == "completed" {
                    done.insert(e.data["job_id"].as_str().unwrap_or("").to_string());
                }
                done.len() == ids.len()
            },
            LONG,
        )
        .await;
    for (id, job_type) in &ids {
        let of_job: Vec<&SseEvent> = seen
            .iter()
            .filter(|e| e.data["job_id"] == id.as_str())
            .collect();
        assert!(
            of_job.iter().any(|e| e.event == "completed"),
            "{job_type} completed on the dashboard: {seen:#?}"
        );
        assert!(
            of_job
                .iter()
                .any(|e| e.event == "status" && e.data["status"] == "running"),
            "{seen:#?}"
        );
        for event in &of_job {
            assert_eq!(event.data["type"], job_type.as_str(), "{event:#?}");
            assert!(event.data["status"].is_string(), "{event:#?}");
            assert!(
                event.data["seq"].as_u64().is_some_and(|s| s >= 1),
                "{event:#?}"
            );
            assert!(event.data.get("data").is_some(), "{event:#?}");
        }
        let seqs: Vec<u64> = of_job
            .iter()
            .filter_map(|e| e.data["seq"].as_u64())
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "per job, seq in order: {seqs:?}"
        );
    }

    let noop_id = ids
        .iter()
        .find(|(_, t)| *t == "noop")
        .map(|(id, _)| id.clone())
        .unwrap();
    let filtered = noop_only.until(|e| e.event == "completed", LONG).await;
    // Anything still buffered must be noop too.
    let mut filtered = filtered;
    while let Some(event) = noop_only.next(Duration::from_millis(500)).await {
        filtered.push(event);
    }
    assert!(
        filtered
            .iter()
            .any(|e| e.event == "completed" && e.data["job_id"] == noop_id.as_str()),
        "{filtered:#?}"
    );
    assert!(
        filtered.iter().all(|e| e.data["type"] == "noop"),
        "only noop jobs: {filtered:#?}"
    );
}

#[tokio::test]
async fn dashboard_rejects_a_bad_status_filter() {
    let kiln = kiln("").await;
    let (status, body) = get_json(&kiln.client, &kiln.url("/v1/events?status=sleeping")).await;
    assert_eq!(status, 400, "{body:#}");
    assert_eq!(body["error"]["kind"], "invalid_query", "{body:#}");
}

#[tokio::test]
async fn a_last_event_id_beyond_a_running_jobs_log_is_refused() {
    let kiln = kiln("").await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "events", "n": 40, "pace_ms": 50}}),
    )
    .await;
    let id = id_of(&job);
    // No event of this job can have id 1000 yet: following from there would drop
    // every event, the ending included, and never end.
    let response = open_sse(&kiln.client, &events_url(&kiln, &id), Some(1000)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["kind"], "invalid_last_event_id", "{body}");
    // Within the log it is fine.
    let response = open_sse(&kiln.client, &events_url(&kiln, &id), Some(1)).await;
    assert_eq!(response.status(), 200);
    kiln.stop().await;
}
