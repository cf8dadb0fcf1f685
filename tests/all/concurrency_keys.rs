//! Fair concurrency keys: a job's `concurrency_key` (e.g. the app's end user) makes its
//! queue share slots fairly between keys, and a queue's `max_per_key` caps one key's
//! running jobs. A backlog of one key does not hold back another's jobs; the cap holds,
//! leaves the other slots to other keys, and survives kill -9. Also run against
//! PostgreSQL (the claim query), and across nodes in `cluster::`.

use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::support::*;

/// A job of the hostile fixture that runs about `ms` (three paced events).
fn slow(ms: u64) -> Value {
    json!({"mode": "events", "n": 3, "pace_ms": ms / 3})
}

/// `POST /v1/batches`: the answer, which must be `202`.
async fn submit_batch_ok(client: &reqwest::Client, base: &str, body: Value) -> Value {
    let (status, body) = submit_batch(client, base, body).await;
    assert_eq!(status, 202, "{body:#}");
    body
}

/// Waits for every job in `ids` to end (within the hang guard) and returns them.
async fn finished(client: &reqwest::Client, base: &str, ids: &[String]) -> Vec<Value> {
    let mut jobs = Vec::new();
    for id in ids {
        jobs.push(wait_terminal(client, base, id, LONG).await);
    }
    jobs
}

#[tokio::test]
async fn a_backlog_of_one_key_does_not_hold_back_another() {
    // Two slots; user a queues 200 jobs of ~300 ms, then user b queues 5.
    let kiln = kiln("[queues.hostile]\nmax_concurrent = 2\n").await;
    let (client, base) = (&kiln.client, kiln.base.as_str());
    let items: Vec<Value> = (0..200).map(|_| slow(300)).collect();
    let batch = json!({"type": "hostile", "items": items, "concurrency_key": "user-a"});
    let a = submit_batch_ok(client, base, batch).await;
    let mut b = Vec::new();
    for _ in 0..5 {
        let body = json!({"type": "hostile", "payload": slow(300), "concurrency_key": "user-b"});
        b.push(submit_ok(client, base, body).await);
    }
    let b_jobs = finished(client, base, &b).await;
    let last_b_start = b_jobs
        .iter()
        .map(|job| time_ms(job, "started_at").expect("b's job started"))
        .max()
        .unwrap();
    let cancel = format!("{base}/v1/batches/{}/cancel", a["id"].as_str().unwrap());
    let (status, body) = post_empty(client, &cancel).await;
    assert_eq!(status, 200, "{body:#}");
    let mut a_started_before = 0;
    for id in strings_of(&a, "jobs") {
        let (_, job) = get_json(client, &format!("{base}/v1/jobs/{id}")).await;
        if time_ms(&job, "started_at").is_some_and(|at| at < last_b_start) {
            a_started_before += 1;
        }
    }
    // Fair: b's jobs take every other free slot (b has fewer running), so about as many
    // of a's start meanwhile. Strict age order would start all 200 of a's first.
    assert!(
        a_started_before <= 15,
        "{a_started_before} of user a's jobs started before user b's last; b's jobs: \
         {b_jobs:#?}"
    );
    for job in &b_jobs {
        assert_eq!(job["status"], "completed", "{job:#}");
        assert_eq!(job["concurrency_key"], "user-b", "{job:#}");
    }
}

#[tokio::test]
async fn max_per_key_caps_one_key_and_leaves_the_other_slots_to_others() {
    let kiln = kiln("[queues.hostile]\nmax_concurrent = 4\nmax_per_key = 2\n").await;
    let (client, base) = (&kiln.client, kiln.base.as_str());
    // Operators see the cap where they see the queue's limit.
    let listed = queues(&kiln).await;
    assert_eq!(listed["hostile"]["max_per_key"], 2, "{listed:#?}");
    assert!(listed["noop"]["max_per_key"].is_null(), "{listed:#?}");
    let items: Vec<Value> = (0..6).map(|_| slow(450)).collect();
    let a = submit_batch_ok(
        client,
        base,
        json!({"type": "hostile", "items": items, "concurrency_key": "user-a"}),
    )
    .await;
    let mut others = Vec::new();
    for key in [Some("user-b"), Some("user-b"), None] {
        let mut body = json!({"type": "hostile", "payload": slow(450)});
        if let Some(key) = key {
            body["concurrency_key"] = json!(key);
        }
        others.push(submit_ok(client, base, body).await);
    }
    let a_jobs = finished(client, base, &strings_of(&a, "jobs")).await;
    let other_jobs = finished(client, base, &others).await;
    let shown = || format!("a: {a_jobs:#?}\nothers: {other_jobs:#?}");
    for job in a_jobs.iter().chain(&other_jobs) {
        assert_eq!(job["status"], "completed", "{}", shown());
    }
    // Violated: a asks for all 4 slots (6 jobs queued first) and never gets more than 2.
    // Obeyed: it does run 2 at once.
    assert_eq!(most_at_once(&a_jobs), 2, "{}", shown());
    // The slots a may not take go to the others at once, not after a's backlog.
    let mut a_starts: Vec<u64> = a_jobs
        .iter()
        .filter_map(|job| time_ms(job, "started_at"))
        .collect();
    a_starts.sort();
    for job in &other_jobs {
        let start = time_ms(job, "started_at").unwrap();
        assert!(
            start < a_starts[4],
            "a job of another key waited behind a's backlog: {}",
            shown()
        );
    }
    let all = [a_jobs.clone(), other_jobs.clone()].concat();
    assert!(most_at_once(&all) <= 4, "{}", shown());
}

#[tokio::test]
async fn bad_concurrency_keys_are_refused_and_good_ones_kept() {
    let kiln = kiln("").await;
    let (client, base) = (&kiln.client, kiln.base.as_str());
    let longest = "k".repeat(255);
    let id = submit_ok(
        client,
        base,
        json!({"type": "noop", "concurrency_key": longest}),
    )
    .await;
    let (_, job) = get_json(client, &format!("{base}/v1/jobs/{id}")).await;
    assert_eq!(job["concurrency_key"], longest.as_str(), "{job:#}");
    for bad in [json!(""), json!("k".repeat(256)), json!("a\nb"), json!(7)] {
        let (status, body) = submit(
            client,
            base,
            json!({"type": "noop", "concurrency_key": bad}),
        )
        .await;
        assert_eq!(status, 400, "key {bad}: {body:#}");
        let kind = body["error"]["kind"].as_str().unwrap_or_default();
        assert!(
            kind == "invalid_request" || kind == "invalid_json",
            "key {bad}: {body:#}"
        );
    }
    let response = client
        .post(format!("{base}/v1/batches"))
        .json(&json!({"type": "noop", "items": [{}], "concurrency_key": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400, "{:?}", response.text().await);
    let (status, listing) = get_json(client, &format!("{base}/v1/jobs")).await;
    assert_eq!(status, 200);
    assert_eq!(
        listing["jobs"].as_array().unwrap().len(),
        1,
        "only the good submit made a job: {listing:#}"
    );
}

#[tokio::test]
async fn keys_and_the_cap_survive_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["fixture:hostile"]);
    let config = "[queues.hostile]\nmax_concurrent = 3\nmax_per_key = 1\n";
    let mut kiln = KilnProcess::start(data.path(), plugins.path(), config);
    let client = reqwest::Client::new();
    // Due in a moment, so they are still queued when the process dies.
    let run_at = humantime::format_rfc3339_millis(SystemTime::now() + Duration::from_secs(2));
    let mut ids = Vec::new();
    for _ in 0..3 {
        let body = json!({"type": "hostile", "payload": slow(300), "concurrency_key": "user-a",
                          "run_at": run_at.to_string()});
        ids.push(submit_ok(&client, &kiln.base, body).await);
    }
    kiln.kill9();
    let kiln = KilnProcess::start(data.path(), plugins.path(), config);
    let jobs = finished(&client, &kiln.base, &ids).await;
    let shown = || format!("{jobs:#?}\nlog:\n{}", kiln.log());
    for job in &jobs {
        assert_eq!(job["status"], "completed", "{}", shown());
        assert_eq!(job["concurrency_key"], "user-a", "{}", shown());
    }
    assert_eq!(most_at_once(&jobs), 1, "{}", shown());
}
