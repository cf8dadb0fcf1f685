//! Durability with the real `kiln` program: kill -9 and restart on the same data dir,
//! SIGTERM, recovery of running and queued jobs, and the event log across restarts.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

fn slow(latency_ms: u64) -> String {
    format!("[providers.offline]\nkind = \"offline\"\nlatency_ms = {latency_ms}\n")
}

/// A data dir and a plugins dir that outlive the processes using them.
struct Dirs {
    _root: tempfile::TempDir,
    data: PathBuf,
    plugins: tempfile::TempDir,
}

fn dirs() -> Dirs {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    Dirs {
        _root: root,
        data,
        plugins: plugins_dir(ALL_PLUGINS),
    }
}

async fn get_job(kiln: &KilnProcess, client: &reqwest::Client, id: &str) -> (u16, Value) {
    get_json(client, &kiln.url(&format!("/v1/jobs/{id}"))).await
}

/// Polls the job until `done` holds; panics with the server log after `timeout`.
async fn wait_job(
    kiln: &KilnProcess,
    client: &reqwest::Client,
    id: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = std::time::Instant::now() + LONG;
    loop {
        let (status, job) = get_job(kiln, client, id).await;
        if status == 200 && done(&job) {
            return job;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "job {id} never reached the expected state; last {status}: {job:#}\nlog:\n{}",
            kiln.log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn terminal(job: &Value) -> bool {
    matches!(
        job["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    )
}

#[tokio::test]
async fn kill_9_mid_job_then_restart_resumes_the_job_and_its_event_stream() {
    let dirs = dirs();
    let client = reqwest::Client::new();
    let mut kiln = KilnProcess::start_cached(&dirs.data, dirs.plugins.path(), &slow(300));

    // Jobs acknowledged before the kill: some finished, some waiting, some just sent.
    let mut acknowledged = Vec::new();
    let later = rfc3339_in(Duration::from_secs(3600));
    for body in [
        json!({"type": "noop"}),
        json!({"type": "noop", "run_at": later}),
    ] {
        let (status, job) = submit(&client, &kiln.base, body).await;
        assert_eq!(status, 202, "{job:#}");
        acknowledged.push(id_of(&job));
    }
    let (status, job) = submit(
        &client,
        &kiln.base,
        json!({"type": "characters", "payload": {"theme": "polar research station", "count": 3}}),
    )
    .await;
    assert_eq!(status, 202, "{job:#}\nlog:\n{}", kiln.log());
    let id = id_of(&job);
    acknowledged.push(id.clone());

    let mut reader =
        SseReader::new(open_sse(&client, &kiln.url(&format!("/v1/jobs/{id}/events")), None).await);
    let before = reader.until(|e| e.event == "progress", LONG).await;
    assert_eq!(
        before.last().map(|e| e.event.as_str()),
        Some("progress"),
        "{before:#?}\nlog:\n{}",
        kiln.log()
    );
    // A burst of submits, every one acknowledged before the kill.
    let burst =
        (0..10).map(|i| submit(&client, &kiln.base, json!({"type": "noop", "priority": i})));
    for (status, job) in futures::future::join_all(burst).await {
        assert_eq!(status, 202, "{job:#}");
        acknowledged.push(id_of(&job));
    }
    drop(reader);
    kiln.kill9();

    let kiln = KilnProcess::start_cached(&dirs.data, dirs.plugins.path(), &slow(20));
    let last = before.last().and_then(|e| e.id).unwrap();
    let response = open_sse(
        &client,
        &kiln.url(&format!("/v1/jobs/{id}/events")),
        Some(last),
    )
    .await;
    assert_eq!(response.status(), 200, "log:\n{}", kiln.log());
    let after = read_sse(response, None, LONG).await;
    let mut all = before.clone();
    all.extend(after.iter().cloned());
    let ctx = format!(
        "before: {before:#?}\nafter: {after:#?}\nlog:\n{}",
        kiln.log()
    );
    for (i, event) in all.iter().enumerate() {
        assert_eq!(
            event.id,
            Some(i as u64 + 1),
            "ids strictly increasing with no gap or duplicate: {ctx}"
        );
    }
    assert_eq!(
        all.last().map(|e| e.event.as_str()),
        Some("completed"),
        "{ctx}"
    );
    assert!(
        after
            .iter()
            .any(|e| e.event == "status" && e.data["status"] == "queued" && e.data["attempt"] == 2),
        "recovery re-queued it as attempt 2: {ctx}"
    );
    assert!(
        after.iter().any(|e| e.event == "status"
            && e.data["status"] == "running"
            && e.data["attempt"] == 2),
        "{ctx}"
    );
    // The log after the restart is the same as what was streamed.
    let log = all_events(&client, &kiln.base, &id, LONG).await;
    assert_eq!(log, all, "{ctx}");

    let (status, job) = get_job(&kiln, &client, &id).await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(job["status"], "completed", "{job:#}\n{ctx}");
    assert_eq!(job["attempt"], 2, "{job:#}\n{ctx}");
    assert_eq!(job["result"].as_array().map(Vec::len), Some(3), "{job:#}");

    for acked in &acknowledged {
        let (status, job) = get_job(&kiln, &client, acked).await;
        assert_eq!(
            status,
            200,
            "acknowledged job {acked} lost: {job:#}\nlog:\n{}",
            kiln.log()
        );
    }
    // The immediate ones all finish.
    for acked in acknowledged.iter().filter(|a| **a != acknowledged[1]) {
        let job = wait_job(&kiln, &client, acked, terminal).await;
        assert_eq!(job["status"], "completed", "{job:#}");
    }
}

#[tokio::test]
async fn queued_jobs_survive_kill_9() {
    let dirs = dirs();
    let client = reqwest::Client::new();
    let mut kiln = KilnProcess::start_cached(&dirs.data, dirs.plugins.path(), "");
    let soon = rfc3339_in(Duration::from_secs(3));
    let mut ids = Vec::new();
    for body in [
        json!({"type": "noop", "run_at": soon}),
        json!({"type": "hostile", "payload": {"mode": "ok"}, "run_at": soon}),
        json!({"type": "characters", "payload": {"theme": "night market", "count": 1}, "run_at": soon}),
    ] {
        let (status, job) = submit(&client, &kiln.base, body).await;
        assert_eq!(status, 202, "{job:#}");
        ids.push(id_of(&job));
    }
    kiln.kill9();

    let kiln = KilnProcess::start_cached(&dirs.data, dirs.plugins.path(), "");
    for id in &ids {
        let job = wait_job(&kiln, &client, id, terminal).await;
        assert_eq!(job["status"], "completed", "{job:#}\nlog:\n{}", kiln.log());
        assert_eq!(job["attempt"], 1, "never ran before the kill: {job:#}");
        let events = all_events(&client, &kiln.base, id, LONG).await;
        assert_eq!(
            events
                .first()
                .map(|e| (e.event.as_str(), e.data["status"].clone())),
            Some(("status", json!("queued"))),
            "{events:#?}"
        );
        assert_eq!(
            events.last().map(|e| e.event.as_str()),
            Some("completed"),
            "{events:#?}"
        );
    }
}

#[tokio::test]
async fn sigterm_exits_cleanly_and_requeues_running_jobs() {
    let dirs = dirs();
    let client = reqwest::Client::new();
    let mut kiln = KilnProcess::start_cached(&dirs.data, dirs.plugins.path(), &slow(1500));
    let (_, slow_job) = submit(
        &client,
        &kiln.base,
        json!({"type": "characters", "payload": {"theme": "mountain monastery", "count": 2}}),
    )
    .await;
    let (_, looping) = submit(
        &client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}}),
    )
    .await;
    let (slow_job, looping) = (id_of(&slow_job), id_of(&looping));
    for id in [&slow_job, &looping] {
        wait_job(&kiln, &client, id, |j| j["status"] == "running").await;
    }
    let clean = kiln.terminate(Duration::from_secs(60));
    assert!(
        clean,
        "SIGTERM must end kiln with exit 0; log:\n{}",
        kiln.log()
    );
    let first_log = kiln.log();
    drop(kiln);

    let kiln = KilnProcess::start_cached(&dirs.data, dirs.plugins.path(), &slow(20));
    let ctx = |kiln: &KilnProcess| {
        format!(
            "first run log:\n{first_log}\nsecond run log:\n{}",
            kiln.log()
        )
    };
    for id in [&slow_job, &looping] {
        let (status, job) = get_job(&kiln, &client, id).await;
        assert_eq!(status, 200, "{}", ctx(&kiln));
        assert_eq!(job["attempt"], 2, "{job:#}\n{}", ctx(&kiln));
        assert!(
            matches!(
                job["status"].as_str(),
                Some("queued" | "running" | "completed")
            ),
            "{job:#}"
        );
        let events = read_sse(
            open_sse(&client, &kiln.url(&format!("/v1/jobs/{id}/events")), None).await,
            None,
            if *id == looping {
                Duration::from_secs(3)
            } else {
                LONG
            },
        )
        .await;
        let requeue = events.iter().position(|e| {
            e.event == "status" && e.data["status"] == "queued" && e.data["attempt"] == 2
        });
        let first_run = events.iter().position(|e| {
            e.event == "status" && e.data["status"] == "running" && e.data["attempt"] == 1
        });
        assert!(
            matches!((first_run, requeue), (Some(a), Some(b)) if a < b),
            "ran as attempt 1, then re-queued as attempt 2: {events:#?}\n{}",
            ctx(&kiln)
        );
        assert!(!events.iter().any(|e| e.event == "failed"), "{events:#?}");
    }
    let done = wait_job(&kiln, &client, &slow_job, terminal).await;
    assert_eq!(done["status"], "completed", "{done:#}\n{}", ctx(&kiln));
    assert_eq!(done["attempt"], 2, "{done:#}");
    let (status, body) =
        post_empty(&client, &kiln.url(&format!("/v1/jobs/{looping}/cancel"))).await;
    assert_eq!(status, 200, "{body:#}");
    let cancelled = wait_job(&kiln, &client, &looping, terminal).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
}

#[tokio::test]
async fn a_running_job_with_no_attempts_left_fails_as_interrupted() {
    let dirs = dirs();
    let client = reqwest::Client::new();
    let mut kiln = KilnProcess::start_cached(&dirs.data, dirs.plugins.path(), "");
    let (status, job) = submit(
        &client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}, "max_attempts": 1}),
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    let id = id_of(&job);
    wait_job(&kiln, &client, &id, |j| j["status"] == "running").await;
    kiln.kill9();

    let kiln = KilnProcess::start_cached(&dirs.data, dirs.plugins.path(), "");
    let (status, job) = get_job(&kiln, &client, &id).await;
    let ctx = format!("{job:#}\nlog:\n{}", kiln.log());
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(job["status"], "failed", "{ctx}");
    assert_eq!(job["attempt"], 1, "{ctx}");
    assert_eq!(job["error"]["kind"], "interrupted", "{ctx}");
    assert!(
        job["finished_at"]
            .as_str()
            .and_then(parse_rfc3339_ms)
            .is_some(),
        "{ctx}"
    );
    let events = all_events(&client, &kiln.base, &id, LONG).await;
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("failed"),
        "{events:#?}"
    );
    assert_eq!(
        events.last().unwrap().data["error"]["kind"],
        "interrupted",
        "{events:#?}"
    );
    // It can be retried by hand.
    let (status, retried) = post_empty(&client, &kiln.url(&format!("/v1/jobs/{id}/retry"))).await;
    assert!(status == 200 || status == 202, "{retried:#}");
    assert_eq!(retried["attempt"], 2, "{retried:#}");
    let (status, _) = post_empty(&client, &kiln.url(&format!("/v1/jobs/{id}/cancel"))).await;
    assert_eq!(status, 200);
}
