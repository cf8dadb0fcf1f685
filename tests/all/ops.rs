//! The operator API: bulk retry and bulk cancel with their filters and limits, the
//! doctor's report (stuck jobs, failures by kind, plugins, providers reachable or not)
//! and the expiry sweep on demand. Real servers, real jobs (the `hostile` fixture).

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::fake_provider::FakeProvider;
use crate::support::*;

async fn post_json(client: &reqwest::Client, url: &str, body: Value) -> (u16, Value) {
    let response = client.post(url).json(&body).send().await.expect("POST");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Submits a `hostile` job in `mode` with one attempt; returns its id.
async fn hostile(kiln: &InProcess, mode: &str) -> String {
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": mode}, "max_attempts": 1}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    id_of(&job)
}

/// Submits a job that waits an hour (`run_at`), then cancels it; returns its id.
async fn cancelled(kiln: &InProcess, job_type: &str, payload: Value) -> String {
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": job_type, "payload": payload,
               "run_at": rfc3339_in(Duration::from_secs(3600))}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job);
    let (status, job) = post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/cancel"))).await;
    assert_eq!((status, job["status"].as_str()), (200, Some("cancelled")));
    id
}

async fn wait_all(kiln: &InProcess, ids: &[String]) -> Vec<Value> {
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(wait_terminal(&kiln.client, &kiln.base, id, LONG).await);
    }
    jobs
}

fn id_set(answer: &Value) -> HashSet<String> {
    strings_of(answer, "ids").into_iter().collect()
}

#[tokio::test]
async fn bulk_retry_retries_exactly_the_matching_jobs_within_the_limit() {
    let kiln = kiln("").await;
    let failed: Vec<String> = vec![
        hostile(&kiln, "permanent").await,
        hostile(&kiln, "permanent").await,
        hostile(&kiln, "trap").await,
    ];
    for job in wait_all(&kiln, &failed).await {
        assert_eq!(job["status"], "failed", "{job}");
    }
    let cancelled_hostile = cancelled(&kiln, "hostile", json!({"mode": "ok"})).await;
    let cancelled_noop = cancelled(&kiln, "noop", json!({})).await;
    let (_, done) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "payload": {}, "max_attempts": 1}),
    )
    .await;
    wait_terminal(&kiln.client, &kiln.base, &id_of(&done), LONG).await;
    let url = kiln.url("/v1/jobs/bulk/retry");

    // The limit is obeyed: two of the three failed jobs, nothing else.
    let (status, answer) = post_json(&kiln.client, &url, json!({"limit": 2})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["retried"], 2, "{answer}");
    let first = id_set(&answer);
    assert!(first.iter().all(|id| failed.contains(id)), "{answer}");
    for id in &first {
        let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
        assert_eq!(job["attempt"], 2, "{job}");
    }
    // Those fail again (the fixture always fails in these modes): all three are failed.
    for job in wait_all(&kiln, &failed).await {
        assert_eq!(job["status"], "failed", "{job}");
    }

    // The type filter: only hostile failures, all of them; never the completed or the
    // cancelled jobs. An empty body means every default (failed, limit 100).
    let (status, answer) = post_json(
        &kiln.client,
        &url,
        json!({"status": "failed", "type": "hostile"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        id_set(&answer),
        failed.iter().cloned().collect(),
        "{answer}"
    );
    wait_all(&kiln, &failed).await;
    let (status, answer) = post_json(&kiln.client, &url, json!({"type": "noop"})).await;
    assert_eq!(
        (status, answer["retried"].as_u64()),
        (200, Some(0)),
        "{answer}"
    );

    // Cancelled jobs on request, filtered by type.
    let (status, answer) = post_json(
        &kiln.client,
        &url,
        json!({"status": "cancelled", "type": "noop"}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(id_set(&answer), HashSet::from([cancelled_noop.clone()]));
    let job = wait_terminal(&kiln.client, &kiln.base, &cancelled_noop, LONG).await;
    assert_eq!(job["status"], "completed", "{job}");
    let (_, job) = get_json(
        &kiln.client,
        &kiln.url(&format!("/v1/jobs/{cancelled_hostile}")),
    )
    .await;
    assert_eq!(job["status"], "cancelled", "{job}");

    // A violated limit or a status that cannot be retried: 400, nothing retried.
    for body in [
        json!({"limit": 0}),
        json!({"limit": 1001}),
        json!({"status": "running"}),
        json!({"status": "nonsense"}),
        json!({"bogus": 1}),
    ] {
        let (status, answer) = post_json(&kiln.client, &url, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(
            answer["error"]["kind"], "invalid_request",
            "{body} -> {answer}"
        );
    }
    let (status, answer) = post_empty(&kiln.client, &url).await;
    assert_eq!(status, 200, "{answer}");
    kiln.stop().await;
}

// Two workers: the spinning job's yields must not slow the test's own requests down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_cancel_cancels_only_jobs_older_than_the_threshold() {
    // The young job waits on a slow LLM call (no CPU), so only the old one spins.
    let kiln = kiln("[providers.offline]\nkind = \"offline\"\nlatency_ms = 600000").await;
    let old = hostile(&kiln, "loop").await;
    let mut old_started = false;
    for _ in 0..500 {
        let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{old}"))).await;
        if job["status"] == "running" {
            old_started = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(old_started, "the loop job never started");
    tokio::time::sleep(Duration::from_millis(6000)).await;
    let young = hostile(&kiln, "sleep_llm").await;
    let queued_young = cancelled_later(&kiln).await;
    for _ in 0..500 {
        let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{young}"))).await;
        if job["status"] == "running" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let url = kiln.url("/v1/jobs/bulk/cancel");
    let (status, answer) = post_json(
        &kiln.client,
        &url,
        json!({"status": "running", "type": "hostile", "older_than_s": 4}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let (_, young_job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{young}"))).await;
    assert_eq!(
        answer["cancelled"],
        1,
        "{answer} {young_job} now {}",
        rfc3339_in(Duration::ZERO)
    );
    assert_eq!(id_set(&answer), HashSet::from([old.clone()]));
    let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{old}"))).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{young}"))).await;
    assert_eq!(job["status"], "running", "{job}");
    let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{queued_young}"))).await;
    assert_eq!(job["status"], "queued", "{job}");

    // Bad requests.
    for body in [
        json!({"status": "failed"}),
        json!({"limit": 5000}),
        json!({"older_than_s": -1}),
    ] {
        let (status, answer) = post_json(&kiln.client, &url, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer}");
    }
    let response = kiln
        .client
        .post(&url)
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // Queued jobs by creation age; then every running job (no threshold).
    let (status, answer) = post_json(&kiln.client, &url, json!({"status": "queued"})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(id_set(&answer), HashSet::from([queued_young.clone()]));
    let (status, answer) = post_empty(&kiln.client, &url).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(id_set(&answer), HashSet::from([young.clone()]));
    let job = wait_terminal(&kiln.client, &kiln.base, &young, LONG).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    kiln.stop().await;
}

/// A `noop` job that waits an hour before it may start; returns its id.
async fn cancelled_later(kiln: &InProcess) -> String {
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "payload": {},
               "run_at": rfc3339_in(Duration::from_secs(3600))}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    id_of(&job)
}

#[tokio::test]
async fn doctor_finds_stuck_jobs_and_groups_failures_by_kind() {
    let kiln = kiln("").await;
    let failed = vec![
        hostile(&kiln, "permanent").await,
        hostile(&kiln, "permanent").await,
        hostile(&kiln, "trap").await,
    ];
    wait_all(&kiln, &failed).await;
    let stuck = hostile(&kiln, "loop").await;
    let quick = cancelled_later(&kiln).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let (status, report) = get_json(&kiln.client, &kiln.url("/v1/doctor?stuck_after_s=1")).await;
    assert_eq!(status, 200, "{report}");
    let stuck_ids: Vec<&str> = report["stuck"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    // The running loop is stuck; the job waiting for its run_at an hour away is not.
    assert_eq!(stuck_ids, vec![stuck.as_str()], "{report:#}");
    let entry = &report["stuck"][0];
    assert_eq!(entry["status"], "running");
    assert_eq!(entry["type"], "hostile");
    assert!(entry["stuck_for_s"].as_u64().unwrap() >= 1, "{entry}");

    let failures = report["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{report:#}");
    assert_eq!(failures[0]["kind"], "permanent");
    assert_eq!(failures[0]["count"], 2);
    assert_eq!(failures[0]["example_message"], "hostile: permanent");
    let ids: HashSet<&str> = failures[0]["job_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(ids, HashSet::from([failed[0].as_str(), failed[1].as_str()]));
    assert_eq!(failures[1]["kind"], "trap");
    assert_eq!(failures[1]["count"], 1);
    assert_eq!(failures[1]["job_ids"], json!([failed[2]]));

    let plugins: HashSet<&str> = report["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert!(
        plugins.contains("hostile") && plugins.contains("characters"),
        "{report}"
    );
    assert!(report["plugins"][0]["version"].is_string());
    assert_eq!(
        report["providers"],
        json!([{"name": "offline", "kind": "offline", "reachable": true}])
    );

    // The default threshold (600 s) finds nothing stuck here; a bad one is a 400.
    let (_, report) = get_json(&kiln.client, &kiln.url("/v1/doctor")).await;
    assert_eq!(report["stuck"], json!([]), "{report}");
    assert_eq!(report["stuck_after_s"], 600);
    let (status, answer) = get_json(&kiln.client, &kiln.url("/v1/doctor?stuck_after_s=soon")).await;
    assert_eq!(
        (status, answer["error"]["kind"].as_str()),
        (400, Some("invalid_query"))
    );

    post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{stuck}/cancel"))).await;
    post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{quick}/cancel"))).await;
    kiln.stop().await;
}

#[tokio::test]
async fn doctor_probes_providers_without_showing_keys() {
    const KEY: &str = "sk-doctor-probe-SECRET-0ad9";
    const KEY_ENV: &str = "KILN_DOCTOR_PROBE_KEY";
    // SAFETY: set before the server starts, under a name nothing else uses.
    unsafe { std::env::set_var(KEY_ENV, KEY) };
    let fake = FakeProvider::start().await;
    let config = format!(
        "[providers.down]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n\
         api_key_env = \"{KEY_ENV}\"\n\
         [providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"{KEY_ENV}\"\n\
         [providers.claude]\nkind = \"anthropic\"\nbase_url = \"{}\"\napi_key_env = \"{KEY_ENV}\"\n\
         [models]\ndefault = \"down/m\"\nother = \"fake/m\"\n",
        fake.base_url, fake.base_url
    );
    let kiln = InProcess::start_cached(&["fixture:noop"], &config).await;
    let response = kiln
        .client
        .get(kiln.url("/v1/doctor"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    assert!(!text.contains(KEY), "the key leaked: {text}");
    let report: Value = serde_json::from_str(&text).unwrap();
    let providers = report["providers"].as_array().unwrap();
    let names: Vec<&str> = providers
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["claude", "down", "fake"], "{report:#}");
    assert_eq!(providers[0]["kind"], "anthropic");
    assert_eq!(providers[0]["reachable"], true, "{report:#}");
    assert_eq!(providers[1]["kind"], "openai");
    assert_eq!(providers[1]["reachable"], false, "{report:#}");
    let error = providers[1]["error"].as_str().unwrap();
    assert!(error.contains("down"), "{error}");
    assert_eq!(providers[2]["reachable"], true, "{report:#}");
    assert!(providers[2].get("error").is_none(), "{report:#}");

    // The probes were cheap authenticated GETs of /models.
    let seen = fake.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.iter().all(|s| s.path == "/v1/models"), "{seen:?}");
    let bearer = format!("Bearer {KEY}");
    assert!(
        seen.iter()
            .any(|s| s.header("authorization") == Some(bearer.as_str()))
    );
    assert!(
        seen.iter()
            .any(|s| s.header("x-api-key") == Some(KEY) && s.header("anthropic-version").is_some())
    );
    kiln.stop().await;
}

#[tokio::test]
async fn cleanup_deletes_expired_jobs_now() {
    let kiln = kiln("job_ttl_secs = 1\nsweep_interval_secs = 3600").await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "payload": {}}),
    )
    .await;
    let id = id_of(&job);
    let job = wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(job["status"], "completed");
    let waiting = cancelled_later(&kiln).await;
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(job["status"], "completed", "the background sweep ran early");

    let (status, answer) = post_empty(&kiln.client, &kiln.url("/v1/doctor/cleanup")).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["deleted"], 1, "{answer}");
    let (status, _) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}"))).await;
    assert_eq!(status, 404);
    // A job that has not finished is never swept.
    let (status, _) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{waiting}"))).await;
    assert_eq!(status, 200);
    let (_, answer) = post_empty(&kiln.client, &kiln.url("/v1/doctor/cleanup")).await;
    assert_eq!(answer["deleted"], 0, "{answer}");
    kiln.stop().await;
}
