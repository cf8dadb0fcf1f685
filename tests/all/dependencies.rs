//! Dependencies: a job submitted with `depends_on` is `waiting` (in no queue, holding no
//! slot) until the jobs it names have completed, then runs; one that fails or is
//! cancelled fails it (`dependency_failed`, naming it), down the chain, unless it said
//! `on_dependency_failure: "run"`. The release is committed with the dependency's end, so
//! it survives kill -9. Also run against PostgreSQL.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// A hostile-fixture job of about `ms` (four paced events).
fn slow(ms: u64) -> Value {
    json!({"type": "hostile", "payload": {"mode": "events", "n": 4, "pace_ms": ms / 4}})
}

/// A hostile-fixture job that fails for good at once.
fn failing() -> Value {
    json!({"type": "hostile", "payload": {"mode": "permanent"}})
}

/// `body` with `depends_on: ids`.
fn after(mut body: Value, ids: &[&str]) -> Value {
    body["depends_on"] = json!(ids);
    body
}

/// Submits `body`; the answer, whose status must be `expected`.
async fn submit_expect(kiln: &InProcess, body: Value, expected: u16) -> Value {
    let (status, job) = submit(&kiln.client, &kiln.base, body).await;
    assert_eq!(status, expected, "{job:#}");
    job
}

async fn job(kiln: &InProcess, id: &str) -> Value {
    get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}")))
        .await
        .1
}

async fn ended(kiln: &InProcess, id: &str) -> Value {
    wait_terminal(&kiln.client, &kiln.base, id, LONG).await
}

#[tokio::test]
async fn a_job_waits_for_its_dependencies_then_runs() {
    let kiln = kiln("").await;
    let a = submit_ok(&kiln.client, &kiln.base, slow(400)).await;
    let b = submit_ok(&kiln.client, &kiln.base, slow(200)).await;
    let c = submit_expect(&kiln, after(slow(0), &[&a, &b, &a]), 202).await;
    let c_id = id_of(&c);
    assert_eq!(c["status"], "waiting", "{c:#}");
    // A repeated id counts once.
    assert_eq!(
        strings_of(&c, "depends_on"),
        [a.clone(), b.clone()],
        "{c:#}"
    );
    assert_eq!(
        strings_of(&c, "waiting_for"),
        [a.clone(), b.clone()],
        "{c:#}"
    );
    assert_eq!(c["on_dependency_failure"], "fail", "{c:#}");

    let (_, page) = get_json(&kiln.client, &kiln.url("/v1/jobs?status=waiting")).await;
    let listed: Vec<&str> = page["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, [c_id.as_str()], "{page:#}");
    let a_job = job(&kiln, &a).await;
    assert_eq!(
        strings_of(&a_job, "dependants"),
        [c_id.as_str()],
        "{a_job:#}"
    );

    let c_end = ended(&kiln, &c_id).await;
    let (a_end, b_end) = (ended(&kiln, &a).await, ended(&kiln, &b).await);
    let shown = format!("a: {a_end:#}\nb: {b_end:#}\nc: {c_end:#}");
    assert_eq!(c_end["status"], "completed", "{shown}");
    assert_eq!(c_end["waiting_for"], json!([]), "{shown}");
    let last_dependency_end = [&a_end, &b_end]
        .iter()
        .map(|j| time_ms(j, "finished_at").unwrap())
        .max()
        .unwrap();
    assert!(
        time_ms(&c_end, "started_at").unwrap() >= last_dependency_end,
        "{shown}"
    );

    // Its log: waiting (for both), queued (when the last one ended), then its run.
    let events = all_events(&kiln.client, &kiln.base, &c_id, LONG).await;
    let statuses: Vec<(&str, &Value)> = events
        .iter()
        .filter(|e| e.event == "status")
        .map(|e| (e.data["status"].as_str().unwrap(), &e.data["waiting_for"]))
        .collect();
    assert_eq!(
        statuses,
        [
            ("waiting", &json!([a, b])),
            ("queued", &Value::Null),
            ("running", &Value::Null)
        ],
        "{events:#?}"
    );
    assert_eq!(events.last().unwrap().event, "completed", "{events:#?}");
}

#[tokio::test]
async fn a_failed_dependency_fails_its_dependants_down_the_chain() {
    let kiln = kiln("").await;
    // Held back a moment, so the chain below is in place when it fails.
    let mut body = failing();
    body["run_at"] = json!(rfc3339_in(Duration::from_millis(500)));
    let a = submit_ok(&kiln.client, &kiln.base, body).await;
    let b = id_of(&submit_expect(&kiln, after(slow(0), &[&a]), 202).await);
    let c = id_of(&submit_expect(&kiln, after(slow(0), &[&b]), 202).await);
    let mut anyway = after(slow(0), &[&a]);
    anyway["on_dependency_failure"] = json!("run");
    let d = submit_expect(&kiln, anyway, 202).await;
    assert_eq!(d["on_dependency_failure"], "run", "{d:#}");
    let d = id_of(&d);

    let (b_end, c_end, d_end) = (
        ended(&kiln, &b).await,
        ended(&kiln, &c).await,
        ended(&kiln, &d).await,
    );
    let shown = format!("b: {b_end:#}\nc: {c_end:#}\nd: {d_end:#}");
    assert_eq!(b_end["status"], "failed", "{shown}");
    assert_eq!(b_end["error"]["kind"], "dependency_failed", "{shown}");
    let message = b_end["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&a) && message.contains("hostile: permanent"),
        "{shown}"
    );
    // It never ran: no start, still its first attempt.
    assert_eq!(b_end["started_at"], Value::Null, "{shown}");
    assert_eq!(b_end["attempt"], 1, "{shown}");
    assert_eq!(c_end["status"], "failed", "{shown}");
    assert_eq!(c_end["error"]["kind"], "dependency_failed", "{shown}");
    assert!(
        c_end["error"]["message"].as_str().unwrap().contains(&b),
        "{shown}"
    );
    assert_eq!(d_end["status"], "completed", "{shown}");
    let events = all_events(&kiln.client, &kiln.base, &b, LONG).await;
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(names, ["status", "failed"], "{events:#?}");
}

#[tokio::test]
async fn a_cancelled_dependency_fails_its_dependant_and_a_waiting_job_can_be_cancelled() {
    let kiln = kiln("").await;
    let a = submit_ok(&kiln.client, &kiln.base, slow(4000)).await;
    let b = id_of(&submit_expect(&kiln, after(slow(0), &[&a]), 202).await);
    let c = id_of(&submit_expect(&kiln, after(slow(0), &[&a]), 202).await);
    // A waiting job is cancelled at once, and stays so when its dependency ends.
    let (status, cancelled) =
        post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{c}/cancel"))).await;
    assert_eq!(status, 200, "{cancelled:#}");
    assert_eq!(cancelled["status"], "cancelled", "{cancelled:#}");
    assert_eq!(cancelled["waiting_for"], json!([]), "{cancelled:#}");
    let (status, body) = post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{a}/cancel"))).await;
    assert_eq!(status, 200, "{body:#}");
    let b_end = ended(&kiln, &b).await;
    assert_eq!(b_end["status"], "failed", "{b_end:#}");
    assert_eq!(b_end["error"]["kind"], "dependency_failed", "{b_end:#}");
    let message = b_end["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&a) && message.contains("was cancelled"),
        "{b_end:#}"
    );
    let c_end = job(&kiln, &c).await;
    assert_eq!(c_end["status"], "cancelled", "{c_end:#}");
    assert_eq!(c_end["started_at"], Value::Null, "{c_end:#}");
}

#[tokio::test]
async fn dependencies_that_already_ended_release_the_job_at_submit() {
    let kiln = kiln("").await;
    let done = submit_ok(&kiln.client, &kiln.base, slow(0)).await;
    let broken = submit_ok(&kiln.client, &kiln.base, failing()).await;
    assert_eq!(ended(&kiln, &done).await["status"], "completed");
    assert_eq!(ended(&kiln, &broken).await["status"], "failed");

    let runs = submit_expect(&kiln, after(slow(0), &[&done]), 202).await;
    assert_ne!(runs["status"], "waiting", "{runs:#}");
    let runs = ended(&kiln, &id_of(&runs)).await;
    assert_eq!(runs["status"], "completed", "{runs:#}");

    // Failed before it was even stored: the answer is the failed job (200, like a
    // submit whose `?wait=` saw the end).
    let fails = submit_expect(&kiln, after(slow(0), &[&done, &broken]), 200).await;
    assert_eq!(fails["status"], "failed", "{fails:#}");
    assert_eq!(fails["error"]["kind"], "dependency_failed", "{fails:#}");
}

#[tokio::test]
async fn a_waiting_job_holds_no_slot() {
    let kiln = kiln("[queues.hostile]\nmax_concurrent = 1\n").await;
    let a = submit_ok(&kiln.client, &kiln.base, slow(1200)).await;
    let waiting = submit_expect(&kiln, after(slow(0), &[&a]), 202).await;
    let waiting = id_of(&waiting);
    let (_, job) = get_json(&kiln.client, &kiln.url(&format!("/v1/jobs/{a}"))).await;
    assert_eq!(job["status"], "running", "{job:#}");
    let hostile = queues(&kiln).await["hostile"].clone();
    assert_eq!(hostile["running"], 1, "{hostile:#}");
    assert_eq!(
        hostile["depth"], 0,
        "a waiting job is in no queue: {hostile:#}"
    );
    let end = ended(&kiln, &waiting).await;
    assert_eq!(end["status"], "completed", "{end:#}");
}

#[tokio::test]
async fn bad_dependencies_are_refused_and_nothing_is_created() {
    let kiln = kiln("max_dependencies = 2\n").await;
    let a = submit_ok(&kiln.client, &kiln.base, slow(0)).await;
    let b = submit_ok(&kiln.client, &kiln.base, slow(0)).await;
    let c = submit_ok(&kiln.client, &kiln.base, slow(0)).await;
    let unknown = uuid::Uuid::now_v7().to_string();
    let cases = [
        (after(slow(0), &[&a, &unknown]), "depends_on[1]: no job"),
        (after(slow(0), &[&a, &b, &c]), "max_dependencies"),
        (after(slow(0), &["not-a-uuid"]), "depends_on"),
        (
            json!({"type": "hostile", "payload": {"mode": "ok"}, "on_dependency_failure": "run"}),
            "on_dependency_failure needs depends_on",
        ),
        (
            {
                let mut body = after(slow(0), &[&a]);
                body["on_dependency_failure"] = json!("maybe");
                body
            },
            "on_dependency_failure",
        ),
    ];
    let (_, before) = get_json(&kiln.client, &kiln.url("/v1/jobs?limit=100")).await;
    for (body, expected) in cases {
        let (status, answer) = submit(&kiln.client, &kiln.base, body.clone()).await;
        assert_eq!(status, 400, "{body:#} -> {answer:#}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{body:#} -> {answer:#}");
    }
    let (_, after_refusals) = get_json(&kiln.client, &kiln.url("/v1/jobs?limit=100")).await;
    assert_eq!(
        before["jobs"].as_array().unwrap().len(),
        after_refusals["jobs"].as_array().unwrap().len()
    );
    // The limit itself is allowed.
    let two = submit_expect(&kiln, after(slow(0), &[&a, &b]), 202).await;
    assert_eq!(ended(&kiln, &id_of(&two)).await["status"], "completed");
}

#[tokio::test]
async fn a_dependant_is_retried_only_once_its_dependencies_completed() {
    let kiln = kiln("").await;
    // Held back, then cancelled: its retry runs it at once.
    let mut held = slow(0);
    held["run_at"] = json!(rfc3339_in(Duration::from_secs(600)));
    let a = submit_ok(&kiln.client, &kiln.base, held).await;
    let b = id_of(&submit_expect(&kiln, after(slow(0), &[&a]), 202).await);
    let (status, _) = post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{a}/cancel"))).await;
    assert_eq!(status, 200);
    assert_eq!(ended(&kiln, &b).await["error"]["kind"], "dependency_failed");

    let retry_b = kiln.url(&format!("/v1/jobs/{b}/retry"));
    let (status, refused) = post_empty(&kiln.client, &retry_b).await;
    assert_eq!(status, 409, "{refused:#}");
    let message = refused["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&a) && message.contains("cancelled"),
        "{refused:#}"
    );

    let (status, body) = post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{a}/retry"))).await;
    assert!(status == 200 || status == 202, "{body:#}");
    assert_eq!(ended(&kiln, &a).await["status"], "completed");
    let (status, body) = post_empty(&kiln.client, &retry_b).await;
    assert!(status == 200 || status == 202, "{body:#}");
    let b_end = ended(&kiln, &b).await;
    assert_eq!(b_end["status"], "completed", "{b_end:#}");
    assert_eq!(b_end["attempt"], 2, "{b_end:#}");
}

#[tokio::test]
async fn a_waiting_job_survives_kill_9() {
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["fixture:hostile"]);
    let mut kiln = KilnProcess::start(data.path(), plugins.path(), "");
    let client = reqwest::Client::new();
    // Still queued when the process dies.
    let mut held = slow(200);
    held["run_at"] = json!(rfc3339_in(Duration::from_secs(2)));
    let a = submit_ok(&client, &kiln.base, held).await;
    let (status, b) = submit(&client, &kiln.base, after(slow(0), &[&a])).await;
    assert_eq!(status, 202, "{b:#}");
    let (status, c) = submit(&client, &kiln.base, after(failing(), &[&id_of(&b)])).await;
    assert_eq!(status, 202, "{c:#}");
    kiln.kill9();

    let kiln = KilnProcess::start(data.path(), plugins.path(), "");
    let shown = |jobs: &[&Value]| format!("{jobs:#?}\nlog:\n{}", kiln.log());
    let b_end = wait_terminal(&client, &kiln.base, &id_of(&b), LONG).await;
    let c_end = wait_terminal(&client, &kiln.base, &id_of(&c), LONG).await;
    let a_end = wait_terminal(&client, &kiln.base, &a, LONG).await;
    assert_eq!(
        a_end["status"],
        "completed",
        "{}",
        shown(&[&a_end, &b_end, &c_end])
    );
    assert_eq!(
        b_end["status"],
        "completed",
        "{}",
        shown(&[&a_end, &b_end, &c_end])
    );
    assert_eq!(
        c_end["status"],
        "failed",
        "{}",
        shown(&[&a_end, &b_end, &c_end])
    );
    assert_eq!(
        c_end["error"]["kind"],
        "permanent",
        "{}",
        shown(&[&a_end, &b_end, &c_end])
    );
    assert!(
        time_ms(&b_end, "started_at").unwrap() >= time_ms(&a_end, "finished_at").unwrap(),
        "{}",
        shown(&[&a_end, &b_end])
    );
}
