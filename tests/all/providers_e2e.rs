//! Real providers under real jobs: a `characters` job against the fake OpenAI-format
//! provider on loopback streams its tokens to SSE clients live, a burst of jobs stays
//! inside the provider's limits, a `kill -9` repeats no finished provider call, and the
//! key never shows up in logs, events or API answers.

use std::collections::HashMap;
use std::sync::Once;

use serde_json::json;

use crate::fake_provider::{Behavior, FakeProvider};
use crate::support::*;

const KEY: &str = "sk-kiln-e2e-4b1d-SECRET-never-print";
const KEY_ENV: &str = "KILN_E2E_PROVIDER_KEY";

fn set_key() {
    static ONCE: Once = Once::new();
    // SAFETY: set once, before any server starts, under a name nothing else uses.
    ONCE.call_once(|| unsafe { std::env::set_var(KEY_ENV, KEY) });
}

/// TOML for a `fake` openai-format provider at `fake` with `settings`.
fn provider_config(fake: &FakeProvider, settings: &str) -> String {
    set_key();
    format!(
        "[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\napi_key_env = \"{KEY_ENV}\"\n{settings}\n\
         [models]\ndefault = \"fake/test-model\"\n",
        fake.base_url
    )
}

#[tokio::test]
async fn characters_tokens_stream_live_and_the_key_never_leaks() {
    let fake = FakeProvider::with(Behavior {
        chunk_delay_ms: 10,
        ..Behavior::default()
    })
    .await;
    let text = fake.behavior().text();
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["characters"]);
    let kiln = KilnProcess::start_logging(
        data.path(),
        plugins.path(),
        &provider_config(&fake, "max_concurrent = 4"),
        "debug",
    );
    let client = reqwest::Client::new();
    let (status, job) = submit(
        &client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "beekeepers", "count": 2 } }),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job);
    let events = all_events(&client, &kiln.base, &id, LONG).await;
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("completed"),
        "{events:?}"
    );

    // Tokens arrive live, before the job completes, in order per label: each label's
    // deltas add up to the provider's text.
    let mut streamed: HashMap<String, String> = HashMap::new();
    for event in events.iter().filter(|e| e.event == "token") {
        let label = event.data["label"].as_str().unwrap().to_string();
        streamed
            .entry(label)
            .or_default()
            .push_str(event.data["delta"].as_str().unwrap());
    }
    assert_eq!(
        streamed.len(),
        12,
        "2 characters x 6 steps, one label each: {streamed:?}"
    );
    assert!(streamed.values().all(|s| *s == text), "{streamed:?}");
    let result = &events.last().unwrap().data["result"];
    assert_eq!(result[0]["name"], text.trim(), "{result:#}");
    assert_eq!(fake.calls(), 12);
    for seen in fake.seen() {
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
    }

    // The key is in no event, no API answer and no log line (debug level included).
    let job = reqwest::get(kiln.url(&format!("/v1/jobs/{id}")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let plugins_list = reqwest::get(kiln.url("/v1/plugins"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for (what, text) in [
        ("events", format!("{events:?}")),
        ("job", job),
        ("plugins", plugins_list),
        ("log", kiln.log()),
    ] {
        assert!(!text.contains(KEY), "the key leaked into the {what}");
        assert!(
            !text.contains("SECRET"),
            "part of the key leaked into the {what}"
        );
    }
}

#[tokio::test]
async fn a_burst_of_50_jobs_stays_inside_the_provider_limits() {
    let fake = FakeProvider::with(Behavior {
        delay_ms: 20,
        ..Behavior::default()
    })
    .await;
    let kiln = InProcess::start_cached(
        &["characters"],
        &format!(
            "default_max_concurrent = 50\n{}",
            provider_config(&fake, "max_concurrent = 3")
        ),
    )
    .await;
    let mut ids = Vec::new();
    for n in 0..50 {
        let (status, job) = submit(
            &kiln.client,
            &kiln.base,
            json!({ "type": "characters", "payload": { "theme": format!("burst {n}"), "count": 1 } }),
        )
        .await;
        assert_eq!(status, 202, "{job}");
        ids.push(id_of(&job));
    }
    for id in &ids {
        let job = wait_terminal(&kiln.client, &kiln.base, id, LONG).await;
        assert_eq!(job["status"], "completed", "{job:#}");
    }
    assert_eq!(fake.calls(), 50 * 6, "every call made once");
    assert_eq!(
        fake.max_in_flight(),
        3,
        "max_concurrent = 3 held (and was used)"
    );
}

#[tokio::test]
async fn kill_9_mid_job_repeats_no_finished_provider_call() {
    let fake = FakeProvider::with(Behavior {
        delay_ms: 250,
        ..Behavior::default()
    })
    .await;
    let config = provider_config(&fake, "max_concurrent = 8");
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["characters"]);
    let mut kiln = KilnProcess::start(data.path(), plugins.path(), &config);
    let client = reqwest::Client::new();
    let (_, job) = submit(
        &client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "lamplighters", "count": 3 } }),
    )
    .await;
    let id = id_of(&job);
    let response = open_sse(&client, &kiln.url(&format!("/v1/jobs/{id}/events")), None).await;
    let mut reader = SseReader::new(response);
    while let Some(event) = reader.next(LONG).await {
        if event.data["progress"].as_u64() >= Some(50) {
            break;
        }
    }
    kiln.kill9();
    // The fake runs in this process: a request the dead server had already written may
    // still be in its socket and be counted a moment later. Let those land first, so the
    // count below holds exactly what the first process asked for (a settle, not a timing
    // assertion: the restarted server needs far longer before its first call).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let before_restart = fake.calls();
    assert!(
        before_restart >= 9,
        "three rounds were done: {before_restart}"
    );

    let kiln = KilnProcess::start(data.path(), plugins.path(), &config);
    let done = wait_terminal(&client, &kiln.base, &id, LONG).await;
    assert_eq!(done["status"], "completed", "{done:#}\n{}", kiln.log());

    // What the provider saw after the restart plus what the journal answered is the
    // job's 18 calls: none of the finished rounds was asked again. `usage` counts each
    // of the 18 once as paid, whichever attempt paid it. (Bodies cannot be compared: the
    // fake answers every call alike, so the three characters' later prompts are
    // identical.)
    let usage = &done["usage"];
    let paid = usage["llm_calls"].as_u64().unwrap() as usize;
    let replayed = usage["replayed_calls"].as_u64().unwrap() as usize;
    let paid_after = fake.calls() - before_restart;
    assert!(
        replayed >= 9,
        "the three finished rounds were replayed: {usage:#}"
    );
    assert_eq!(paid_after + replayed, 18, "{usage:#}");
    assert_eq!(paid, 18, "{usage:#}");
    // Calls the provider answered but the dead process never journaled (one round in
    // flight at the kill) are the only ones it saw twice.
    assert!(fake.calls() <= 18 + 3, "{} calls", fake.calls());
}

#[tokio::test]
async fn base_urls_in_either_anthropic_form_run_jobs_and_a_404_names_its_url() {
    set_key();
    let fake = FakeProvider::start().await;
    let root = fake.base_url.strip_suffix("/v1").unwrap().to_string();
    // The Anthropic SDKs' form (no /v1) runs a job.
    let config = format!(
        "[providers.claude]\nkind = \"anthropic\"\nbase_url = \"{root}\"\napi_key_env = \"{KEY_ENV}\"\n\
         [models]\ndefault = \"claude/test-model\"\n"
    );
    let kiln = InProcess::start_cached(&["characters"], &config).await;
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "archivists", "count": 1 } }),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let job = wait_terminal(&kiln.client, &kiln.base, &id_of(&job), LONG).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    assert!(fake.seen().iter().all(|s| s.path == "/v1/messages"));
    kiln.stop().await;

    // The openai kind without its /v1, which OpenAI-format servers answer with 404: the
    // job fails for good, saying which URL was not found.
    let config = format!(
        "[providers.broken]\nkind = \"openai\"\nbase_url = \"{root}\"\napi_key_env = \"{KEY_ENV}\"\n\
         [models]\ndefault = \"broken/test-model\"\n"
    );
    let kiln = InProcess::start_cached(&["characters"], &config).await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "archivists", "count": 1 } }),
    )
    .await;
    let job = wait_terminal(&kiln.client, &kiln.base, &id_of(&job), LONG).await;
    assert_eq!(job["status"], "failed", "{job:#}");
    assert_eq!(job["error"]["kind"], "permanent", "{job:#}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&format!("{root}/chat/completions")),
        "{message}"
    );
    assert!(
        !message.contains(KEY) && !message.contains("SECRET"),
        "{message}"
    );
    // The doctor's probe names the URL it tried as well.
    let (status, report) = get_json(&kiln.client, &kiln.url("/v1/doctor")).await;
    assert_eq!(status, 200, "{report}");
    let error = report["providers"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains(&format!("{root}/models")), "{report:#}");
    kiln.stop().await;
}

#[tokio::test]
async fn offline_json_answers_give_the_bundled_jobs_their_real_shapes() {
    let kiln = InProcess::start_cached(&["characters", "documents"], "").await;
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "glassblowers", "count": 3 } }),
    )
    .await;
    let job = wait_terminal(&kiln.client, &kiln.base, &id_of(&job), LONG).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    for character in job["result"].as_array().unwrap() {
        let stats = character["stats"]
            .as_object()
            .unwrap_or_else(|| panic!("stats is not an object: {character:#}"));
        let mut keys: Vec<&str> = stats.keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "charisma",
                "constitution",
                "dexterity",
                "intelligence",
                "strength",
                "synthetic",
                "wisdom"
            ],
            "{character:#}"
        );
        assert_eq!(stats["synthetic"], true, "still marked synthetic");
        for (key, value) in stats.iter().filter(|(k, _)| *k != "synthetic") {
            let n = value.as_i64().unwrap_or_else(|| panic!("{key}: {value}"));
            assert!((1..=20).contains(&n), "{key} = {n}, the prompt asks 1-20");
        }
    }

    // `documents` gets its final JSON from the model's answer, not rebuilt from the text
    // (which would title sections "Part N" and take one key point per chunk).
    let text = "The harbour master logged every ship. The fleet sailed at dawn.\n\n".repeat(300);
    let (_, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({ "type": "documents", "payload": { "text": text } }),
    )
    .await;
    let job = wait_terminal(&kiln.client, &kiln.base, &id_of(&job), LONG).await;
    assert_eq!(job["status"], "completed", "{job:#}");
    let result = &job["result"];
    assert!(
        result["summary"]
            .as_str()
            .is_some_and(|s| s.starts_with("[synthetic] ")),
        "{result:#}"
    );
    let key_points = result["key_points"].as_array().unwrap();
    assert_eq!(
        key_points.len(),
        3,
        "as many as the prompt's example: {result:#}"
    );
    let sections = result["sections"].as_array().unwrap();
    assert!(!sections.is_empty(), "{result:#}");
    for section in sections {
        let title = section["title"].as_str().unwrap();
        assert!(title.starts_with("[synthetic] "), "{result:#}");
        assert!(section["summary"].is_string(), "{result:#}");
    }
    kiln.stop().await;
}
