//! `GET /metrics` and `GET /v1/queues`: real jobs on a real server, then the figures and
//! the health of each queue as an operator reads them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{self, InProcess, LONG, id_of, queues, submit, wait_terminal};

/// One parsed sample line: `name{labels}` -> value.
pub type Samples = BTreeMap<String, f64>;

/// Checks the text exposition format line by line and returns the samples. Every line is
/// a `# HELP name text`, a `# TYPE name kind` or `name{k="v",...} value`.
pub fn parse_exposition(text: &str) -> Samples {
    let mut samples = Samples::new();
    let name_ok = |name: &str| {
        !name.is_empty()
            && name.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut parts = comment.splitn(3, ' ');
            let keyword = parts.next().unwrap();
            let name = parts.next().unwrap_or("");
            assert!(
                matches!(keyword, "HELP" | "TYPE"),
                "bad comment line {line:?}"
            );
            assert!(name_ok(name), "bad metric name in {line:?}");
            if keyword == "TYPE" {
                let kind = parts.next().unwrap_or("");
                assert!(
                    matches!(
                        kind,
                        "counter" | "gauge" | "histogram" | "summary" | "untyped"
                    ),
                    "bad type in {line:?}"
                );
            }
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let name = match series.find('{') {
            Some(open) => {
                assert!(series.ends_with('}'), "unclosed labels in {line:?}");
                let labels = &series[open + 1..series.len() - 1];
                // k="v" pairs separated by commas; values may hold escaped quotes.
                let mut rest = labels;
                while !rest.is_empty() {
                    let eq = rest
                        .find("=\"")
                        .unwrap_or_else(|| panic!("bad label in {line:?}"));
                    assert!(name_ok(&rest[..eq]), "bad label name in {line:?}");
                    let mut end = eq + 2;
                    let bytes = rest.as_bytes();
                    while bytes[end] != b'"' {
                        end += if bytes[end] == b'\\' { 2 } else { 1 };
                    }
                    rest = &rest[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
                &series[..open]
            }
            None => series,
        };
        assert!(name_ok(name), "bad metric name in {line:?}");
        assert!(name.starts_with("kiln_"), "unprefixed metric in {line:?}");
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "duplicate series {series}"
        );
    }
    samples
}

async fn scrape(kiln: &InProcess) -> (String, Samples) {
    let response = kiln.client.get(kiln.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "content type {content_type}"
    );
    let text = response.text().await.unwrap();
    let samples = parse_exposition(&text);
    (text, samples)
}

fn sample(samples: &Samples, series: &str) -> f64 {
    *samples.get(series).unwrap_or_else(|| {
        panic!(
            "no series {series}; have:\n{:#?}",
            samples.keys().collect::<Vec<_>>()
        )
    })
}

/// Polls `/v1/queues` until `queue`'s health is `health` (hang guard: [`LONG`]).
async fn await_health(kiln: &InProcess, queue: &str, health: &str) -> Value {
    let deadline = Instant::now() + LONG;
    loop {
        let q = queues(kiln).await.remove(queue).expect("queue listed");
        if q["health"] == health {
            return q;
        }
        assert!(
            Instant::now() < deadline,
            "{queue} never became {health}: {q:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn run(kiln: &InProcess, body: Value) -> Value {
    let (status, job) = submit(&kiln.client, &kiln.base, body).await;
    assert_eq!(status, 202, "{job}");
    wait_terminal(&kiln.client, &kiln.base, &id_of(&job), LONG).await
}

#[tokio::test]
async fn scrape_counts_the_jobs_that_ran() {
    // min_finished = 1: one failed job makes its queue critical.
    let kiln = support::kiln("[health]\nmin_finished = 1\n").await;
    let mut jobs = Vec::new();
    for theme in ["lighthouse keepers", "glassblowers"] {
        let job = run(
            &kiln,
            json!({"type": "characters", "payload": {"theme": theme, "count": 1}}),
        )
        .await;
        assert_eq!(job["status"], "completed", "{job:#}");
        jobs.push(job);
    }
    let trap = run(
        &kiln,
        json!({"type": "hostile", "payload": {"mode": "trap"}, "max_attempts": 1}),
    )
    .await;
    assert_eq!(trap["status"], "failed", "{trap:#}");
    let total = |field: &str| -> f64 {
        jobs.iter()
            .map(|j| j["usage"][field].as_u64().unwrap() as f64)
            .sum()
    };
    assert!(total("llm_calls") > 0.0);

    // An open dashboard stream counts as a subscriber.
    let stream = support::open_sse(&kiln.client, &kiln.url("/v1/events"), None).await;
    assert_eq!(stream.status(), 200);
    let (text, samples) = scrape(&kiln).await;
    drop(stream);

    for family in [
        "kiln_jobs gauge",
        "kiln_queue_depth gauge",
        "kiln_queue_running gauge",
        "kiln_queue_limit gauge",
        "kiln_queue_health gauge",
        "kiln_queue_wait_seconds histogram",
        "kiln_attempt_run_seconds histogram",
        "kiln_attempts_finished counter",
        "kiln_llm_calls counter",
        "kiln_llm_input_tokens counter",
        "kiln_llm_output_tokens counter",
        "kiln_journal_replays counter",
        "kiln_sse_subscribers gauge",
    ] {
        let name = family.split(' ').next().unwrap();
        assert!(
            text.contains(&format!("# TYPE {family}\n")),
            "no TYPE for {family}:\n{text}"
        );
        assert!(
            text.contains(&format!("# HELP {name} ")),
            "no HELP for {name}:\n{text}"
        );
    }

    // Jobs by type and status, from the store.
    assert_eq!(
        sample(
            &samples,
            r#"kiln_jobs{type="characters",status="completed"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(&samples, r#"kiln_jobs{type="hostile",status="failed"}"#),
        1.0
    );
    let stored: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("kiln_jobs{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(stored, 3.0);

    // Attempts and their histograms, per queue.
    assert_eq!(
        sample(
            &samples,
            r#"kiln_attempts_finished_total{queue="characters",type="characters",outcome="completed"}"#
        ),
        2.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"kiln_attempts_finished_total{queue="hostile",type="hostile",outcome="failed"}"#
        ),
        1.0
    );
    for (queue, n) in [("characters", 2.0), ("hostile", 1.0)] {
        for histogram in ["kiln_queue_wait_seconds", "kiln_attempt_run_seconds"] {
            let count = sample(&samples, &format!("{histogram}_count{{queue=\"{queue}\"}}"));
            assert_eq!(count, n, "{histogram} {queue}");
            let inf = sample(
                &samples,
                &format!("{histogram}_bucket{{le=\"+Inf\",queue=\"{queue}\"}}"),
            );
            assert_eq!(inf, n, "{histogram} {queue} +Inf bucket");
            let sum = sample(&samples, &format!("{histogram}_sum{{queue=\"{queue}\"}}"));
            assert!(
                (0.0..3600.0).contains(&sum),
                "{histogram} {queue} sum {sum}"
            );
        }
    }

    // LLM calls and tokens per provider equal what the jobs report as their usage.
    let provider = r#"{provider="offline"}"#;
    assert_eq!(
        sample(&samples, &format!("kiln_llm_calls_total{provider}")),
        total("llm_calls")
    );
    assert_eq!(
        sample(&samples, &format!("kiln_llm_input_tokens_total{provider}")),
        total("input_tokens")
    );
    assert_eq!(
        sample(&samples, &format!("kiln_llm_output_tokens_total{provider}")),
        total("output_tokens")
    );
    assert!(
        !text.contains("kiln_llm_errors_total{"),
        "no call failed:\n{text}"
    );
    assert_eq!(
        sample(&samples, r#"kiln_journal_replays_total{type="characters"}"#),
        0.0
    );

    // Queues: nothing waits or runs now; limits are the defaults.
    assert_eq!(
        sample(&samples, r#"kiln_queue_depth{queue="characters"}"#),
        0.0
    );
    assert_eq!(
        sample(&samples, r#"kiln_queue_running{queue="characters"}"#),
        0.0
    );
    assert_eq!(
        sample(&samples, r#"kiln_queue_limit{queue="characters"}"#),
        16.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"kiln_queue_health{queue="characters",health="healthy"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"kiln_queue_health{queue="hostile",health="critical"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"kiln_queue_health{queue="hostile",health="healthy"}"#
        ),
        0.0
    );
    assert!(sample(&samples, "kiln_sse_subscribers") >= 1.0);
    assert_eq!(sample(&samples, "kiln_plugins_loaded"), 5.0);

    // The same figures on /v1/queues.
    let all = queues(&kiln).await;
    let characters = &all["characters"];
    assert_eq!(characters["health"], "healthy", "{characters:#}");
    assert_eq!(characters["completed"], 2);
    assert_eq!(characters["failed"], 0);
    assert_eq!(characters["success_rate"], 1.0);
    assert_eq!(characters["recent"]["completed"], 2);
    assert_eq!(characters["recent"]["started"], 2);
    assert_eq!(characters["job_types"], json!(["characters"]));
    assert!(characters["throughput_per_min"].as_f64().unwrap() > 0.0);
    assert!(characters["avg_run_ms"].is_u64() && characters["avg_queue_ms"].is_u64());
    let hostile = &all["hostile"];
    assert_eq!(hostile["health"], "critical", "{hostile:#}");
    assert_eq!(hostile["success_rate"], 0.0);
    assert!(
        hostile["health_reasons"][0]
            .as_str()
            .unwrap()
            .contains("completed"),
        "{hostile:#}"
    );
    // Every loaded type's queue is listed, even before its first job.
    for queue in ["documents", "factions", "noop"] {
        assert_eq!(all[queue]["health"], "healthy", "{:#}", all[queue]);
        assert_eq!(all[queue]["depth"], 0);
        assert_eq!(all[queue]["success_rate"], Value::Null);
    }
    kiln.stop().await;
}

#[tokio::test]
async fn a_full_queue_turns_warning_then_critical_then_healthy_again() {
    // Warning after 1 s of waiting, critical after 10 s: a wide gap, so a slow poll on a
    // busy machine still sees the warning before the queue turns critical.
    let kiln = support::kiln(
        "default_max_concurrent = 1\n[health]\nwarning_wait_secs = 1\ncritical_wait_secs = 10\n",
    )
    .await;
    let ok = run(&kiln, json!({"type": "hostile", "payload": {"mode": "ok"}})).await;
    assert_eq!(ok["status"], "completed");
    let healthy = await_health(&kiln, "hostile", "healthy").await;
    assert_eq!(healthy["limit"], 1);
    assert_eq!(healthy["oldest_wait_ms"], Value::Null);

    // A CPU loop holds the only slot; the next job waits behind it.
    let (status, looping) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "loop"}, "timeout_s": 600}),
    )
    .await;
    assert_eq!(status, 202, "{looping}");
    let (status, waiting) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "ok"}}),
    )
    .await;
    assert_eq!(status, 202, "{waiting}");
    let warning = await_health(&kiln, "hostile", "warning").await;
    assert_eq!(warning["running"], 1, "{warning:#}");
    assert_eq!(warning["depth"], 1, "{warning:#}");
    assert!(
        warning["oldest_wait_ms"].as_u64().unwrap() >= 1000,
        "{warning:#}"
    );
    assert!(
        warning["health_reasons"][0]
            .as_str()
            .unwrap()
            .contains("waited")
    );
    let critical = await_health(&kiln, "hostile", "critical").await;
    assert!(
        critical["health_reasons"][0]
            .as_str()
            .unwrap()
            .contains("at its limit"),
        "{critical:#}"
    );
    let (_, samples) = scrape(&kiln).await;
    assert_eq!(
        sample(
            &samples,
            r#"kiln_queue_health{queue="hostile",health="critical"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&samples, r#"kiln_queue_depth{queue="hostile"}"#),
        1.0
    );
    assert_eq!(
        sample(&samples, r#"kiln_queue_running{queue="hostile"}"#),
        1.0
    );
    assert_eq!(
        sample(&samples, r#"kiln_jobs{type="hostile",status="running"}"#),
        1.0
    );
    assert_eq!(
        sample(&samples, r#"kiln_jobs{type="hostile",status="queued"}"#),
        1.0
    );
    assert!(
        sample(
            &samples,
            r#"kiln_queue_oldest_wait_seconds{queue="hostile"}"#
        ) >= 10.0
    );

    // Freeing the slot lets the waiting job run: the queue is healthy again.
    let (status, _) = support::post_empty(
        &kiln.client,
        &kiln.url(&format!("/v1/jobs/{}/cancel", id_of(&looping))),
    )
    .await;
    assert_eq!(status, 200);
    let done = wait_terminal(&kiln.client, &kiln.base, &id_of(&waiting), LONG).await;
    assert_eq!(done["status"], "completed");
    let healthy = await_health(&kiln, "hostile", "healthy").await;
    assert_eq!(healthy["recent"]["cancelled"], 1, "{healthy:#}");
    assert_eq!(healthy["completed"], 2, "{healthy:#}");
    let (_, samples) = scrape(&kiln).await;
    assert_eq!(
        sample(
            &samples,
            r#"kiln_attempts_finished_total{queue="hostile",type="hostile",outcome="cancelled"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &samples,
            r#"kiln_queue_wait_seconds_count{queue="hostile"}"#
        ),
        3.0
    );
    kiln.stop().await;
}

#[tokio::test]
async fn a_queue_without_its_plugin_is_disabled() {
    let kiln = support::kiln("").await;
    // Scheduled for much later, so it is still queued when the server stops.
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "ok"},
               "run_at": support::rfc3339_in(Duration::from_secs(3600))}),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let (data, _) = kiln.stop().await;

    // Restarted without the hostile plugin: its queue still holds the job, and no loaded
    // plugin runs in it.
    let plugins = support::plugins_dir(&["fixture:noop"]);
    let kiln = InProcess::start_in(data, plugins, "").await;
    let all = queues(&kiln).await;
    let hostile = &all["hostile"];
    assert_eq!(hostile["health"], "disabled", "{hostile:#}");
    assert_eq!(hostile["depth"], 1, "{hostile:#}");
    assert_eq!(hostile["job_types"], json!([]));
    assert_eq!(all["noop"]["health"], "healthy");
    assert_eq!(all["noop"]["job_types"], json!(["noop"]));
    let (_, samples) = scrape(&kiln).await;
    assert_eq!(
        sample(
            &samples,
            r#"kiln_queue_health{queue="hostile",health="disabled"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(&samples, r#"kiln_jobs{type="hostile",status="queued"}"#),
        1.0
    );
    assert_eq!(sample(&samples, "kiln_plugins_loaded"), 1.0);
    kiln.stop().await;
}

#[tokio::test]
async fn operator_routes_answer_errors_in_the_api_shape() {
    let kiln = support::kiln("").await;
    for path in ["/metrics", "/openapi.json", "/v1/queues"] {
        let response = kiln.client.post(kiln.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 405, "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["kind"], "method_not_allowed",
            "{path}: {body}"
        );
        assert!(body["error"]["message"].is_string());
    }
    kiln.stop().await;
}

#[tokio::test]
async fn every_provider_answer_is_counted_by_status_retried_ones_included() {
    // Two 500s, then an answer: the call succeeds after two retries the job never sees.
    let fake = crate::fake_provider::FakeProvider::with(crate::fake_provider::Behavior {
        fail_first: 2,
        first_status: 500,
        ..Default::default()
    })
    .await;
    let config = format!(
        "[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\n\n[models]\ndefault = \"fake/m\"\n",
        fake.base_url
    );
    let kiln = InProcess::start(&["fixture:hostile"], &config).await;
    let job = run(
        &kiln,
        json!({"type": "hostile", "payload": {"mode": "sleep_llm"}}),
    )
    .await;
    assert_eq!(job["status"], "completed", "{job:#}");
    assert_eq!(fake.calls(), 3);
    let (text, samples) = scrape(&kiln).await;
    let answers = |status: &str| {
        sample(
            &samples,
            &format!("kiln_llm_http_responses_total{{provider=\"fake\",status=\"{status}\"}}"),
        )
    };
    assert_eq!(answers("500"), 2.0, "{text}");
    assert_eq!(answers("200"), 1.0, "{text}");
    assert_eq!(
        sample(&samples, "kiln_llm_calls_total{provider=\"fake\"}"),
        1.0,
        "one call, as the plugin made it"
    );
}
