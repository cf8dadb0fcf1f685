//! Schedules: `[schedules.NAME]` in the config and `/v1/schedules` submit one job per cron
//! tick (each job says which tick), exactly once per tick across kill -9 (with `catch_up`
//! deciding what the ticks missed while down get), and on several nodes (`cluster::`).
//! Also run against PostgreSQL.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// A config schedule `name` submitting a quick hostile-fixture job every second.
fn every_second(name: &str, catch_up: &str) -> String {
    format!(
        "[schedules.{name}]\ncron = \"* * * * * *\"\ntype = \"hostile\"\n\
         payload = {{ mode = \"ok\" }}\ncatch_up = \"{catch_up}\"\n"
    )
}

/// The ticks (ms) of the jobs each schedule submitted, by schedule name, in tick order;
/// fails on a tick that got two jobs.
async fn ticks(client: &reqwest::Client, base: &str) -> BTreeMap<String, Vec<u64>> {
    let (status, page) = get_json(client, &format!("{base}/v1/jobs?limit=100")).await;
    assert_eq!(status, 200, "{page:#}");
    let mut ticks: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for job in page["jobs"].as_array().unwrap() {
        let Some(schedule) = job["schedule"].as_object() else {
            continue;
        };
        let tick = parse_rfc3339_ms(schedule["tick"].as_str().unwrap()).unwrap();
        let name = schedule["name"].as_str().unwrap().to_string();
        ticks.entry(name).or_default().push(tick);
    }
    for (name, list) in &mut ticks {
        list.sort_unstable();
        let before = list.len();
        list.dedup();
        assert_eq!(
            before,
            list.len(),
            "schedule {name} has a tick with two jobs: {page:#}"
        );
    }
    ticks
}

async fn schedule(kiln: &InProcess, name: &str) -> (u16, Value) {
    get_json(&kiln.client, &kiln.url(&format!("/v1/schedules/{name}"))).await
}

async fn create(kiln: &InProcess, body: Value) -> (u16, Value) {
    let response = kiln
        .client
        .post(kiln.url("/v1/schedules"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn delete(kiln: &InProcess, name: &str) -> u16 {
    let url = kiln.url(&format!("/v1/schedules/{name}"));
    kiln.client
        .delete(url)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_config_schedule_submits_one_job_per_tick() {
    let kiln = kiln(&every_second("heartbeat", "once")).await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let ticks = ticks(&kiln.client, &kiln.base).await;
    let heartbeat = ticks.get("heartbeat").cloned().unwrap_or_default();
    assert!(
        (2..=5).contains(&heartbeat.len()),
        "about one job a second: {ticks:?}"
    );
    for pair in heartbeat.windows(2) {
        assert_eq!(pair[1] - pair[0], 1000, "consecutive ticks: {heartbeat:?}");
    }
    let (status, shown) = schedule(&kiln, "heartbeat").await;
    assert_eq!(status, 200, "{shown:#}");
    assert_eq!(shown["source"], "config", "{shown:#}");
    assert_eq!(shown["cron"], "* * * * * *", "{shown:#}");
    assert_eq!(shown["payload"], json!({"mode": "ok"}), "{shown:#}");
    assert_eq!(shown["catch_up"], "once", "{shown:#}");
    let last_run = parse_rfc3339_ms(shown["last_run_at"].as_str().unwrap()).unwrap();
    let next_run = parse_rfc3339_ms(shown["next_run_at"].as_str().unwrap()).unwrap();
    assert!(
        last_run >= *heartbeat.last().unwrap(),
        "{shown:#} {heartbeat:?}"
    );
    assert_eq!(next_run, last_run + 1000, "{shown:#}");
    // The job of the latest tick, which ran the schedule's payload.
    let id = shown["last_job"].as_str().unwrap();
    let job = wait_terminal(&kiln.client, &kiln.base, id, LONG).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(job["schedule"]["name"], "heartbeat", "{job:#}");
}

#[tokio::test]
async fn schedules_are_made_listed_and_deleted_through_the_api() {
    let kiln = kiln(&every_second("from-config", "skip")).await;
    let body = json!({"name": "nightly", "cron": "0 3 * * *", "type": "hostile",
                      "payload": {"mode": "ok"}, "timezone": "Europe/Paris"});
    let (status, made) = create(&kiln, body.clone()).await;
    assert_eq!(status, 201, "{made:#}");
    assert_eq!(made["source"], "api", "{made:#}");
    assert_eq!(made["timezone"], "Europe/Paris", "{made:#}");
    assert_eq!(made["last_run_at"], Value::Null, "{made:#}");
    // 03:00 in Paris: 01:00 or 02:00 UTC, within a day.
    let next = parse_rfc3339_ms(made["next_run_at"].as_str().unwrap()).unwrap();
    let hour = (next / 3_600_000) % 24;
    assert!(matches!(hour, 1 | 2), "{made:#}");
    assert!(
        next > unix_ms() && next <= unix_ms() + 86_400_000,
        "{made:#}"
    );
    let (status, taken) = create(&kiln, body).await;
    assert_eq!(status, 409, "{taken:#}");

    let refusals = [
        (
            json!({"name": "bad cron", "cron": "* * * * *", "type": "hostile"}),
            "name",
        ),
        (
            json!({"name": "b", "cron": "61 * * * *", "type": "hostile"}),
            "invalid cron expression",
        ),
        (
            json!({"name": "b", "cron": "* * * * *", "type": "hostile", "timezone": "Mars/Base"}),
            "unknown time zone",
        ),
        (
            json!({"name": "b", "cron": "* * * * *", "type": "nope"}),
            "unknown job type",
        ),
        (
            json!({"name": "b", "cron": "* * * * *", "type": "hostile", "payload": {"mode": 7}}),
            "schema",
        ),
        (
            json!({"name": "b", "cron": "* * * * *", "type": "hostile", "catch_up": "twice"}),
            "catch_up",
        ),
    ];
    for (body, expected) in refusals {
        let (status, answer) = create(&kiln, body.clone()).await;
        assert_eq!(status, 400, "{body} -> {answer:#}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(expected), "{body} -> {answer:#}");
    }

    let (_, list) = get_json(&kiln.client, &kiln.url("/v1/schedules")).await;
    let names: Vec<&str> = list["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["from-config", "nightly"], "{list:#}");
    assert_eq!(delete(&kiln, "from-config").await, 409);
    assert_eq!(delete(&kiln, "nightly").await, 204);
    assert_eq!(delete(&kiln, "nightly").await, 404);
    assert_eq!(schedule(&kiln, "nightly").await.0, 404);

    // One made now ticks from now on; once deleted, it submits nothing more.
    let body = json!({"name": "soon", "cron": "* * * * * *", "type": "hostile",
                      "payload": {"mode": "ok"}});
    assert_eq!(create(&kiln, body).await.0, 201);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(delete(&kiln, "soon").await, 204);
    // A pass that read it just before the delete may still submit its tick.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after_delete = ticks(&kiln.client, &kiln.base).await;
    let made = after_delete.get("soon").map_or(0, Vec::len);
    assert!(made >= 1, "{after_delete:?}");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let later = ticks(&kiln.client, &kiln.base).await;
    assert_eq!(later.get("soon").map_or(0, Vec::len), made, "{later:?}");
}

#[tokio::test]
async fn max_schedules_is_obeyed() {
    let kiln = kiln(&format!(
        "max_schedules = 2\n{}",
        every_second("one", "skip")
    ))
    .await;
    let body = |name: &str| json!({"name": name, "cron": "0 3 * * *", "type": "hostile", "payload": {"mode": "ok"}});
    let (status, made) = create(&kiln, body("two")).await;
    assert_eq!(status, 201, "{made:#}");
    let (status, refused) = create(&kiln, body("three")).await;
    assert_eq!(status, 400, "{refused:#}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_schedules"),
        "{refused:#}"
    );
}

/// Two schedules on the same cron, one catching up once and one skipping, stopped by
/// kill -9 for a few ticks: after the restart the first has exactly one job more than the
/// second (the missed ticks' one), and no tick ever has two jobs.
#[tokio::test]
async fn ticks_missed_while_killed_get_one_job_or_none() {
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["fixture:hostile"]);
    let config = every_second("catch-up", "once") + &every_second("skip", "skip");
    let client = reqwest::Client::new();
    let mut kiln = KilnProcess::start(data.path(), plugins.path(), &config);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    kiln.kill9();
    tokio::time::sleep(Duration::from_millis(4000)).await;
    let kiln = KilnProcess::start(data.path(), plugins.path(), &config);
    // The jobs of ticks before the kill are all stored (each submit is durable).
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let ticks = ticks(&client, &kiln.base).await;
    let shown = || format!("{ticks:?}\nlog:\n{}", kiln.log());
    let (once, skip) = (&ticks["catch-up"], &ticks["skip"]);
    // Every tick before the kill had its job in both; count from the later of the two
    // schedules' last ticks before the gap, up to a tick both have surely handled.
    let gap_start = |list: &[u64]| {
        list.windows(2)
            .find(|pair| pair[1] - pair[0] > 1000)
            .map(|pair| pair[0])
    };
    let (Some(a), Some(b)) = (gap_start(once), gap_start(skip)) else {
        panic!("no gap in the ticks: {}", shown());
    };
    let from = a.max(b);
    let until = unix_ms() - 1500;
    let count = |list: &[u64]| list.iter().filter(|&&t| t > from && t <= until).count();
    assert_eq!(count(once), count(skip) + 1, "{}", shown());
    assert!(
        count(skip) >= 1,
        "on-time ticks after the restart: {}",
        shown()
    );
}
