//! A job's life over HTTP: submit, follow, finish; cancel, retries, run_at and priority,
//! `?wait=`, idempotency, expiry and queue limits. Everything against a real in-process
//! server with a real redb file.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// Polls the job until `done` is true for it (or panics after `timeout`).
async fn wait_job(
    kiln: &InProcess,
    id: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (status, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
        if status == 200 && done(&job) {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job never reached the expected state; last answer {status}: {job:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_consecutive_ids(events: &[SseEvent]) {
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event.id,
            Some(i as u64 + 1),
            "event ids must be 1, 2, 3… with no gap; events: {events:#?}"
        );
    }
}

/// Checks the fixed fields of a freshly submitted job.
fn assert_fresh_job(job: &Value, job_type: &str) {
    let ctx = format!("{job:#}");
    let id = job["id"].as_str().expect(&ctx);
    assert!(uuid::Uuid::parse_str(id).is_ok(), "id is a UUID: {ctx}");
    assert_eq!(job["type"], job_type, "{ctx}");
    // An idle queue starts the job in the submit's own commit, so it may already run.
    assert!(
        job["status"] == "queued" || job["status"] == "running",
        "{ctx}"
    );
    assert_eq!(job["progress"], 0, "{ctx}");
    assert!(job.get("message").is_some(), "message field: {ctx}");
    assert_eq!(job["result"], Value::Null, "{ctx}");
    assert!(job.get("result").is_some(), "result field present: {ctx}");
    assert_eq!(job["error"], Value::Null, "{ctx}");
    assert!(job.get("error").is_some(), "error field present: {ctx}");
    assert_eq!(job["attempt"], 1, "{ctx}");
    assert!(
        job["max_attempts"].as_u64().is_some_and(|n| n >= 1),
        "{ctx}"
    );
    let created = job["created_at"]
        .as_str()
        .and_then(parse_rfc3339_ms)
        .expect(&ctx);
    assert!(
        created.abs_diff(unix_ms()) < 3_600_000,
        "created_at is about now: {ctx}"
    );
    assert!(
        job.get("started_at").is_some() && job.get("finished_at").is_some(),
        "{ctx}"
    );
    for field in ["llm_calls", "input_tokens", "output_tokens"] {
        assert!(job["usage"][field].is_u64(), "usage.{field}: {ctx}");
    }
    assert_eq!(job["links"]["self"], format!("/v1/jobs/{id}"), "{ctx}");
    assert_eq!(
        job["links"]["events"],
        format!("/v1/jobs/{id}/events"),
        "{ctx}"
    );
}

async fn full_lifecycle(job_type: &str, payload: Value, partial_prefix: &str) {
    let kiln = kiln("").await;
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": job_type, "payload": payload}),
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    assert_fresh_job(&job, job_type);
    let id = id_of(&job);

    let response = open_sse(
        &kiln.client,
        &kiln.url(&format!("/v1/jobs/{id}/events")),
        None,
    )
    .await;
    assert_eq!(response.status(), 200);
    let mut reader = SseReader::new(response);
    let events = reader.until(|e| e.event == "completed", LONG).await;
    let ctx = format!("{events:#?}");
    // The stream ends after the terminal event.
    assert!(
        reader.next(Duration::from_secs(10)).await.is_none(),
        "nothing after completed: {ctx}"
    );
    assert!(
        reader.ended,
        "the server ends the stream after completed: {ctx}"
    );

    assert_consecutive_ids(&events);
    assert_eq!(events[0].event, "status", "{ctx}");
    assert_eq!(events[0].data["status"], "queued", "{ctx}");
    assert_eq!(events[1].event, "status", "{ctx}");
    assert_eq!(events[1].data["status"], "running", "{ctx}");
    assert_eq!(events[1].data["attempt"], 1, "{ctx}");
    let progress: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "progress")
        .map(|e| e.data["progress"].as_u64().expect(&ctx))
        .collect();
    assert!(!progress.is_empty(), "progress events: {ctx}");
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress never goes down: {progress:?}"
    );
    assert_eq!(
        *progress.last().unwrap(),
        100,
        "progress ends at 100: {ctx}"
    );
    let partials: Vec<&SseEvent> = events.iter().filter(|e| e.event == "partial").collect();
    assert!(!partials.is_empty(), "partial events: {ctx}");
    for partial in &partials {
        let name = partial.data["name"].as_str().expect(&ctx);
        assert!(
            name.starts_with(partial_prefix),
            "partial name {name:?}: {ctx}"
        );
        assert!(!partial.data["data"].is_null(), "{ctx}");
    }
    let last = events.last().unwrap();
    assert_eq!(last.event, "completed", "{ctx}");
    assert!(!last.data["result"].is_null(), "{ctx}");
    assert!(
        events
            .iter()
            .all(|e| !matches!(e.event.as_str(), "failed" | "cancelled")),
        "{ctx}"
    );

    let (status, done) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
    let ctx = format!("{done:#}\nevents: {ctx}");
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(done["status"], "completed", "{ctx}");
    assert_eq!(done["progress"], 100, "{ctx}");
    assert_eq!(done["result"], last.data["result"], "{ctx}");
    assert_eq!(done["error"], Value::Null, "{ctx}");
    assert_eq!(done["attempt"], 1, "{ctx}");
    let started = done["started_at"]
        .as_str()
        .and_then(parse_rfc3339_ms)
        .expect(&ctx);
    let finished = done["finished_at"]
        .as_str()
        .and_then(parse_rfc3339_ms)
        .expect(&ctx);
    assert!(started <= finished, "{ctx}");
    assert!(
        done["usage"]["llm_calls"].as_u64().is_some_and(|n| n > 0),
        "{ctx}"
    );
    assert!(
        done["usage"]["output_tokens"]
            .as_u64()
            .is_some_and(|n| n > 0),
        "{ctx}"
    );
}

#[tokio::test]
async fn characters_full_lifecycle_over_http() {
    full_lifecycle(
        "characters",
        json!({"theme": "desert caravan", "count": 3}),
        "character-",
    )
    .await;
}

#[tokio::test]
async fn factions_full_lifecycle_over_http() {
    full_lifecycle(
        "factions",
        json!({"theme": "river city guilds", "count": 2}),
        "faction-",
    )
    .await;
}

#[tokio::test]
async fn documents_full_lifecycle_over_http() {
    let text = (1..=40)
        .map(|i| format!("Section {i}. The committee met on day {i} and agreed on budget line {i}; risks were noted and a deadline was set for the following month."))
        .collect::<Vec<_>>()
        .join("\n\n");
    full_lifecycle(
        "documents",
        json!({"text": text, "title": "Minutes", "instructions": "deadlines"}),
        "chunk-",
    )
    .await;
}

#[tokio::test]
async fn cancel_stops_a_cpu_loop() {
    let kiln = kiln("").await;
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    let id = id_of(&job);
    wait_job(&kiln, &id, LONG, |j| j["status"] == "running").await;
    let mut reader = SseReader::new(
        open_sse(
            &kiln.client,
            &kiln.url(&format!("/v1/jobs/{id}/events")),
            None,
        )
        .await,
    );

    let (status, cancelled) =
        post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/cancel"))).await;
    assert_eq!(status, 200, "{cancelled:#}");
    let job = wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(job["status"], "cancelled", "{job:#}");
    assert!(
        job["finished_at"]
            .as_str()
            .and_then(parse_rfc3339_ms)
            .is_some(),
        "{job:#}"
    );

    let events = reader.read_to_end(LONG).await;
    assert!(reader.ended, "stream ends after cancel: {events:#?}");
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("cancelled"),
        "{events:#?}"
    );
    assert_consecutive_ids(&events);
    // The server still runs other jobs.
    let (status, ok) = submit(
        &kiln.client,
        &kiln.base.to_string(),
        json!({"type": "noop"}),
    )
    .await;
    assert_eq!(status, 202);
    let ok = wait_terminal(&kiln.client, &kiln.base, &id_of(&ok), LONG).await;
    assert_eq!(ok["status"], "completed", "{ok:#}");
}

#[tokio::test]
async fn cancel_of_a_queued_job_means_it_never_starts() {
    let kiln = kiln("").await;
    let run_at = rfc3339_in(Duration::from_secs(3600));
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "run_at": run_at}),
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    let id = id_of(&job);
    let (status, cancelled) =
        post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/cancel"))).await;
    assert_eq!(status, 200, "{cancelled:#}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    let events = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    let names: Vec<(&str, &Value)> = events
        .iter()
        .map(|e| (e.event.as_str(), &e.data["status"]))
        .collect();
    assert_eq!(
        names,
        vec![
            ("status", &json!("queued")),
            ("cancelled", &json!("cancelled"))
        ],
        "{events:#?}"
    );
    let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(job["status"], "cancelled", "{job:#}");
    assert_eq!(job["started_at"], Value::Null, "never started: {job:#}");
}

#[tokio::test]
async fn cancel_of_a_finished_job_is_a_conflict() {
    let kiln = kiln("").await;
    let (_, job) = submit(&kiln.client, &kiln.base, json!({"type": "noop"})).await;
    let id = id_of(&job);
    let done = wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let (status, body) =
        post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/cancel"))).await;
    assert_eq!(status, 409, "{body:#}");
    assert_eq!(body["error"]["kind"], "conflict", "{body:#}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body:#}"
    );
    let (_, after) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(after["status"], "completed", "{after:#}");
}

#[tokio::test]
async fn retryable_failures_back_off_then_fail_after_max_attempts() {
    let kiln = kiln("").await;
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "retryable"}, "max_attempts": 3}),
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    let id = id_of(&job);
    let done = wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(done["status"], "failed", "{done:#}");
    assert_eq!(done["attempt"], 3, "{done:#}");
    assert_eq!(done["max_attempts"], 3, "{done:#}");
    assert_eq!(done["error"]["kind"], "retryable", "{done:#}");

    let events = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    assert_consecutive_ids(&events);
    for attempt in [2, 3] {
        let requeued = events.iter().find(|e| {
            e.event == "status" && e.data["status"] == "queued" && e.data["attempt"] == attempt
        });
        let requeued = requeued
            .unwrap_or_else(|| panic!("no queued status for attempt {attempt}: {events:#?}"));
        assert!(
            requeued.data["run_at"]
                .as_str()
                .and_then(parse_rfc3339_ms)
                .is_some(),
            "a backoff shows its run_at: {events:#?}"
        );
        assert!(
            events.iter().any(|e| e.event == "status"
                && e.data["status"] == "running"
                && e.data["attempt"] == attempt),
            "attempt {attempt} ran: {events:#?}"
        );
    }
    assert_eq!(events.last().unwrap().event, "failed", "{events:#?}");
    assert_eq!(
        events.last().unwrap().data["error"]["kind"],
        "retryable",
        "{events:#?}"
    );
}

#[tokio::test]
async fn permanent_and_invalid_input_fail_after_one_attempt() {
    let kiln = kiln("").await;
    for mode in ["permanent", "invalid_input"] {
        let (status, job) = submit(
            &kiln.client,
            &kiln.base,
            json!({"type": "hostile", "payload": {"mode": mode}, "max_attempts": 3}),
        )
        .await;
        assert_eq!(status, 202, "{job:#}");
        let id = id_of(&job);
        let done = wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
        assert_eq!(done["status"], "failed", "{done:#}");
        assert_eq!(done["attempt"], 1, "{done:#}");
        assert_eq!(done["error"]["kind"], mode, "{done:#}");
        let events = all_events(&kiln.client, &kiln.base, &id, LONG).await;
        assert!(
            events
                .iter()
                .all(|e| e.data["attempt"].as_u64().unwrap_or(1) == 1),
            "one attempt only: {events:#?}"
        );
        assert_eq!(events.last().unwrap().event, "failed", "{events:#?}");
    }
}

#[tokio::test]
async fn manual_retry_continues_the_same_job_and_its_event_log() {
    let kiln = kiln("").await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "permanent"}}),
    )
    .await;
    let id = id_of(&job);
    let failed = wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    let before = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    let last_id = before.last().and_then(|e| e.id).expect("events");

    let (status, retried) =
        post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/retry"))).await;
    assert!(
        status == 200 || status == 202,
        "retry answered {status}: {retried:#}"
    );
    assert_eq!(retried["id"], id.as_str(), "{retried:#}");
    assert_eq!(retried["attempt"], 2, "{retried:#}");
    assert!(
        retried["status"] == "queued" || retried["status"] == "running",
        "{retried:#}"
    );
    assert_eq!(retried["error"], Value::Null, "{retried:#}");

    let response = open_sse(
        &kiln.client,
        &kiln.url(&format!("/v1/jobs/{id}/events")),
        Some(last_id),
    )
    .await;
    assert_eq!(response.status(), 200);
    let after = read_sse(response, None, LONG).await;
    let ctx = format!("before: {before:#?}\nafter: {after:#?}");
    assert!(!after.is_empty(), "{ctx}");
    for (i, event) in after.iter().enumerate() {
        assert_eq!(event.id, Some(last_id + 1 + i as u64), "{ctx}");
    }
    assert_eq!(after[0].event, "status", "{ctx}");
    assert_eq!(after[0].data["status"], "queued", "{ctx}");
    assert_eq!(after[0].data["attempt"], 2, "{ctx}");
    assert_eq!(after.last().unwrap().event, "failed", "{ctx}");
    let done = wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(done["attempt"], 2, "{done:#}");
    assert_eq!(done["status"], "failed", "{done:#}");
}

#[tokio::test]
async fn retry_of_a_running_queued_or_completed_job_is_a_conflict() {
    let kiln = kiln("").await;
    let (_, looping) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    let looping = id_of(&looping);
    wait_job(&kiln, &looping, LONG, |j| j["status"] == "running").await;
    let (_, noop) = submit(&kiln.client, &kiln.base, json!({"type": "noop"})).await;
    let noop = id_of(&noop);
    assert_eq!(
        wait_terminal(&kiln.client, &kiln.base, &noop, LONG).await["status"],
        "completed"
    );
    let (_, later) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "run_at": rfc3339_in(Duration::from_secs(3600))}),
    )
    .await;
    let later = id_of(&later);

    for (id, state) in [
        (&looping, "running"),
        (&noop, "completed"),
        (&later, "queued"),
    ] {
        let (status, body) =
            post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/retry"))).await;
        assert_eq!(status, 409, "retry of a {state} job: {body:#}");
        assert_eq!(body["error"]["kind"], "conflict", "{body:#}");
        let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
        assert_eq!(job["status"], state, "unchanged: {job:#}");
        assert_eq!(job["attempt"], 1, "unchanged: {job:#}");
    }
    let (status, _) = post_empty(
        &kiln.client,
        &kiln.url(&format!("/v1/jobs/{looping}/cancel")),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn run_at_in_the_future_keeps_the_job_queued_until_then() {
    let kiln = kiln("").await;
    let run_at_ms = unix_ms() + 4_000;
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "run_at": rfc3339_at(run_at_ms)}),
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    let id = id_of(&job);
    assert_eq!(
        job["run_at"].as_str().and_then(parse_rfc3339_ms),
        Some(run_at_ms),
        "{job:#}"
    );
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (_, waiting) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
    if unix_ms() + 200 < run_at_ms {
        assert_eq!(waiting["status"], "queued", "{waiting:#}");
        assert_eq!(waiting["started_at"], Value::Null, "{waiting:#}");
    }
    let done = wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let started = done["started_at"]
        .as_str()
        .and_then(parse_rfc3339_ms)
        .expect("started_at");
    assert!(
        started >= run_at_ms,
        "started at {started}, before run_at {run_at_ms}: {done:#}"
    );
}

#[tokio::test]
async fn higher_priority_runs_first_within_a_queue() {
    let kiln = kiln("default_max_concurrent = 1").await;
    let (_, blocker) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    let blocker = id_of(&blocker);
    wait_job(&kiln, &blocker, LONG, |j| j["status"] == "running").await;
    let (_, low) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "ok"}, "priority": -5}),
    )
    .await;
    let (_, high) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "ok"}, "priority": 500}),
    )
    .await;
    let (low, high) = (id_of(&low), id_of(&high));
    let (status, _) = post_empty(
        &kiln.client,
        &kiln.url(&format!("/v1/jobs/{blocker}/cancel")),
    )
    .await;
    assert_eq!(status, 200);
    let low = wait_terminal(&kiln.client, &kiln.base, &low, LONG).await;
    let high = wait_terminal(&kiln.client, &kiln.base, &high, LONG).await;
    let ctx = format!("low: {low:#}\nhigh: {high:#}");
    assert_eq!(low["status"], "completed", "{ctx}");
    assert_eq!(high["status"], "completed", "{ctx}");
    // Started, not finished: the slot is handed on as the sandbox is done, before the
    // end is committed, so `finished_at` may follow the next job's start by a moment.
    let high_started = high["started_at"]
        .as_str()
        .and_then(parse_rfc3339_ms)
        .expect(&ctx);
    let low_started = low["started_at"]
        .as_str()
        .and_then(parse_rfc3339_ms)
        .expect(&ctx);
    assert!(
        high_started <= low_started,
        "with one slot the high-priority job runs first: {ctx}"
    );
}

#[tokio::test]
async fn submit_with_wait_returns_the_finished_job_or_202_while_running() {
    let kiln = kiln("").await;
    let response = kiln
        .client
        .post(kiln.url("/v1/jobs?wait=30"))
        .json(&json!({"type": "noop"}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let job: Value = response.json().await.unwrap();
    assert_eq!(status, 200, "{job:#}");
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(job["result"], json!({"ok": true}), "{job:#}");

    let response = kiln
        .client
        .post(kiln.url("/v1/jobs?wait=1"))
        .json(&json!({"type": "hostile", "payload": {"mode": "loop"}}))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let job: Value = response.json().await.unwrap();
    assert_eq!(status, 202, "{job:#}");
    assert_eq!(job["status"], "running", "{job:#}");
    let id = id_of(&job);
    let (status, cancelled) =
        post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/cancel"))).await;
    assert_eq!(status, 200, "{cancelled:#}");
    assert_eq!(
        wait_terminal(&kiln.client, &kiln.base, &id, LONG).await["status"],
        "cancelled"
    );
}

#[tokio::test]
async fn idempotency_key_gives_one_job() {
    let kiln = kiln("").await;
    let send = |key: &'static str| {
        kiln.client
            .post(kiln.url("/v1/jobs"))
            .header("idempotency-key", key)
            .json(&json!({"type": "noop", "run_at": rfc3339_in(Duration::from_secs(3600))}))
            .send()
    };
    let first = send("order-42").await.unwrap();
    assert_eq!(first.status(), 202);
    let first: Value = first.json().await.unwrap();
    let second = send("order-42").await.unwrap();
    assert_eq!(second.status(), 200);
    let second: Value = second.json().await.unwrap();
    assert_eq!(
        first["id"], second["id"],
        "first {first:#}\nsecond {second:#}"
    );
    let (_, list) = get_json(&kiln.client, &kiln.url("/v1/jobs")).await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1), "{list:#}");

    // Another key is another job.
    let third = send("order-43").await.unwrap();
    assert_eq!(third.status(), 202);
    let third: Value = third.json().await.unwrap();
    assert_ne!(third["id"], first["id"]);
    let (_, list) = get_json(&kiln.client, &kiln.url("/v1/jobs")).await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(2), "{list:#}");
}

#[tokio::test]
async fn idempotency_key_length_limit() {
    let kiln = kiln("").await;
    for (len, expected) in [(255usize, 202u16), (256, 400)] {
        let response = kiln
            .client
            .post(kiln.url("/v1/jobs"))
            .header("idempotency-key", "k".repeat(len))
            .json(&json!({"type": "noop"}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, expected, "key of {len} chars: {body:#}");
        if expected == 400 {
            assert_eq!(body["error"]["kind"], "invalid_request", "{body:#}");
        }
    }
    let (_, list) = get_json(&kiln.client, &kiln.url("/v1/jobs")).await;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1), "{list:#}");
}

#[tokio::test]
async fn finished_jobs_expire_after_the_ttl_but_live_ones_do_not() {
    let kiln = kiln("job_ttl_secs = 1\nsweep_interval_secs = 1").await;
    let (_, queued) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "run_at": rfc3339_in(Duration::from_secs(3600))}),
    )
    .await;
    let queued = id_of(&queued);
    let (_, running) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    let running = id_of(&running);
    // Direct mode answers with the finished job itself: polling for `completed` could
    // miss it on a busy machine, since the 1 s TTL deletes it soon after.
    let finished: Value = kiln
        .client
        .post(kiln.url("/v1/jobs?wait=30"))
        .json(&json!({"type": "noop"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(finished["status"], "completed", "{finished:#}");
    let finished = id_of(&finished);
    wait_job(&kiln, &running, LONG, |j| j["status"] == "running").await;

    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) =
            get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{finished}"))).await;
        if status == 404 {
            assert_eq!(body["error"]["kind"], "not_found", "{body:#}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the finished job never expired: {body:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let response = open_sse(
        &kiln.client,
        &kiln.url(&format!("/v1/jobs/{finished}/events")),
        None,
    )
    .await;
    assert_eq!(response.status(), 404, "events of an expired job");
    // Several sweeps have run past the TTL; the live jobs are still there.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{queued}"))).await;
    assert_eq!(
        (status, job["status"].clone()),
        (200, json!("queued")),
        "{job:#}"
    );
    let (status, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{running}"))).await;
    assert_eq!(
        (status, job["status"].clone()),
        (200, json!("running")),
        "{job:#}"
    );
    let (status, _) = post_empty(
        &kiln.client,
        &kiln.url(&format!("/v1/jobs/{running}/cancel")),
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn queue_concurrency_limit_is_obeyed() {
    let kiln = kiln("default_max_concurrent = 1").await;
    let (_, first) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    let (_, second) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    let (first, second) = (id_of(&first), id_of(&second));
    wait_job(&kiln, &first, LONG, |j| j["status"] == "running").await;
    // Give the dispatcher every chance to (wrongly) start the second one.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{second}"))).await;
    assert_eq!(job["status"], "queued", "{job:#}");
    let listed = queues(&kiln).await;
    let hostile = listed
        .get("hostile")
        .unwrap_or_else(|| panic!("no hostile queue: {listed:#?}"));
    assert_eq!(hostile["running"], 1, "{listed:#?}");
    assert_eq!(hostile["depth"], 1, "{listed:#?}");
    assert_eq!(hostile["limit"], 1, "{listed:#?}");

    // Cancel the waiting one first: it must never start, even once the slot frees.
    for id in [&second, &first] {
        let (status, body) =
            post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/cancel"))).await;
        assert_eq!(status, 200, "{body:#}");
    }
    for id in [&first, &second] {
        assert_eq!(
            wait_terminal(&kiln.client, &kiln.base, id, LONG).await["status"],
            "cancelled"
        );
    }
    // A later job runs, so the freed slot was handed on (past the cancelled one).
    let (_, ok) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "ok"}}),
    )
    .await;
    assert_eq!(
        wait_terminal(&kiln.client, &kiln.base, &id_of(&ok), LONG).await["status"],
        "completed"
    );
    let events = all_events(&kiln.client, &kiln.base, &second, LONG).await;
    assert!(
        !events
            .iter()
            .any(|e| e.event == "status" && e.data["status"] == "running"),
        "the cancelled queued job never ran: {events:#?}"
    );
    let listed = queues(&kiln).await;
    let hostile = listed.get("hostile").cloned();
    assert_eq!(
        hostile
            .as_ref()
            .map(|q| (q["running"].clone(), q["depth"].clone())),
        Some((json!(0), json!(0))),
        "{listed:#?}"
    );
}

/// A cancelled job waits for nothing: it no longer counts as queue depth nor against
/// `max_queued`.
#[tokio::test]
async fn cancelled_delayed_jobs_leave_the_queue() {
    let kiln = kiln("max_queued = 2").await;
    let later = rfc3339_in(Duration::from_secs(3600));
    let mut ids = Vec::new();
    for _ in 0..2 {
        let (status, job) = submit(
            &kiln.client,
            &kiln.base,
            json!({"type": "noop", "run_at": later}),
        )
        .await;
        assert_eq!(status, 202, "{job:#}");
        ids.push(id_of(&job));
    }
    for id in &ids {
        let (status, job) =
            post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/cancel"))).await;
        assert_eq!(
            (status, job["status"].clone()),
            (200, json!("cancelled")),
            "{job:#}"
        );
    }
    let listed = queues(&kiln).await;
    let noop = listed.get("noop").cloned();
    assert_eq!(
        noop.as_ref().map(|q| q["depth"].clone()),
        Some(json!(0)),
        "nothing waits in the noop queue: {listed:#?}"
    );
    let (status, job) = submit(&kiln.client, &kiln.base, json!({"type": "noop"})).await;
    assert_eq!(
        status, 202,
        "no job is queued, so the queue is not full: {job:#}"
    );
}
