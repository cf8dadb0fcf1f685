//! The journal of LLM calls: a re-run of a job answers the calls earlier attempts finished
//! from the journal instead of paying the provider again.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use kiln::llm::{OfflineClient, OfflineConfig};
use kiln::runtime::{
    CallJournal, DiscardArtifacts, DiscardEvents, JobInput, JournalEntry, Limits, NoFiles,
    RunContext, RunOutcome, Runtime, RuntimeConfig,
};

use crate::fake_provider::{Behavior, FakeProvider};
use crate::support::*;

/// TOML for the fake provider on loopback as provider `fake` and the default model.
fn fake_config(fake: &FakeProvider, extra: &str) -> String {
    format!(
        "{extra}\n[providers.fake]\nkind = \"openai\"\nbase_url = \"{}\"\n\n[models]\ndefault = \"fake/test-model\"\n",
        fake.base_url
    )
}

/// A journal kept in memory, for runtime-level tests.
#[derive(Default)]
struct MemoryJournal {
    entries: Mutex<BTreeMap<u64, JournalEntry>>,
}

impl CallJournal for MemoryJournal {
    fn recorded(&self) -> Vec<(u64, JournalEntry)> {
        let entries = self.entries.lock().unwrap();
        entries.iter().map(|(i, e)| (*i, e.clone())).collect()
    }

    fn record(&self, index: u64, entry: JournalEntry) -> BoxFuture<'_, Result<(), String>> {
        self.entries.lock().unwrap().insert(index, entry);
        async { Ok(()) }.boxed()
    }
}

async fn run_characters(runtime: &Runtime, journal: Arc<MemoryJournal>) -> RunOutcome {
    let plugin = runtime.load_file(&plugin_wasm("characters")).await.unwrap();
    let context = RunContext {
        sink: Arc::new(DiscardEvents),
        llm: Arc::new(OfflineClient::new(OfflineConfig {
            latency_ms: 0,
            ..OfflineConfig::default()
        })),
        cancel: CancellationToken::new(),
        limits: Limits::default(),
        timeout: Duration::from_secs(60),
        files: Arc::new(NoFiles),
        artifacts: Arc::new(DiscardArtifacts),
    };
    let input = JobInput {
        id: "journal-test".into(),
        job_type: "characters".into(),
        payload: json!({ "theme": "clockmakers", "count": 3 }).to_string(),
        attempt: 1,
    };
    runtime
        .run_journaled(&plugin, input, context, Some(journal))
        .await
}

#[tokio::test]
async fn a_rerun_replays_every_finished_call_and_pays_for_none() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let journal = Arc::new(MemoryJournal::default());
    let first = run_characters(&runtime, journal.clone()).await;
    let first_result = first.result.expect("first run completes");
    assert_eq!(
        first.usage.llm_calls, 18,
        "3 characters x 6 steps: {:?}",
        first.usage
    );
    assert_eq!(first.usage.replayed_calls, 0);
    assert_eq!(
        journal.recorded().len(),
        18,
        "every answered call is journaled"
    );

    let second = run_characters(&runtime, journal.clone()).await;
    assert_eq!(
        second.usage.llm_calls, 0,
        "no provider call again: {:?}",
        second.usage
    );
    assert_eq!(second.usage.replayed_calls, 18);
    assert_eq!(second.result.expect("re-run completes"), first_result);
}

#[tokio::test]
async fn a_changed_call_is_paid_for_and_the_calls_after_it_still_replay() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let journal = Arc::new(MemoryJournal::default());
    run_characters(&runtime, journal.clone())
        .await
        .result
        .unwrap();
    // Corrupt the hash of call 7 (the second round's second request): it no longer
    // matches any request, so it is paid for again; every other call still replays.
    journal
        .entries
        .lock()
        .unwrap()
        .get_mut(&7)
        .unwrap()
        .request_hash = "changed".into();
    let rerun = run_characters(&runtime, journal.clone()).await;
    rerun.result.expect("re-run completes");
    assert_eq!(rerun.usage.replayed_calls, 17, "{:?}", rerun.usage);
    assert_eq!(rerun.usage.llm_calls, 1, "{:?}", rerun.usage);
    let entries = journal.entries.lock().unwrap();
    assert_eq!(
        entries.len(),
        19,
        "the new answer is added, nothing paid is overwritten"
    );
    assert_eq!(
        entries[&7].request_hash, "changed",
        "the old entry is kept as it was"
    );
}

#[tokio::test]
async fn kill_9_mid_job_then_recovery_pays_only_for_unfinished_calls() {
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["characters"]);
    let slow = "[providers.offline]\nkind = \"offline\"\nlatency_ms = 300\n";
    let mut kiln = KilnProcess::start(data.path(), plugins.path(), slow);
    let client = reqwest::Client::new();
    let id = submit_ok(
        &client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "glassblowers", "count": 3 } }),
    )
    .await;

    // Follow the job until at least three of the six rounds are done, then kill -9.
    let response = open_sse(&client, &kiln.url(&format!("/v1/jobs/{id}/events")), None).await;
    let mut seen = Vec::new();
    let mut stream = SseReader::new(response);
    while let Some(event) = stream.next(LONG).await {
        let progress = event.data["progress"].as_u64().unwrap_or(0);
        seen.push(event);
        if progress >= 50 {
            break;
        }
    }
    assert!(
        seen.iter().any(|e| e.data["progress"].as_u64() >= Some(50)),
        "the job never reached 50%: {seen:?}\n{}",
        kiln.log()
    );
    kiln.kill9();

    let kiln = KilnProcess::start(data.path(), plugins.path(), slow);
    let done = wait_terminal(&client, &kiln.base, &id, LONG).await;
    assert_eq!(done["status"], "completed", "{done:#}\n{}", kiln.log());
    assert_eq!(done["attempt"], 2, "{done:#}");
    let usage = &done["usage"];
    let (paid, replayed) = (
        usage["llm_calls"].as_u64().unwrap(),
        usage["replayed_calls"].as_u64().unwrap(),
    );
    assert!(
        replayed >= 9,
        "the three finished rounds are replayed: {usage}"
    );
    assert_eq!(
        paid, 18,
        "each of the 18 calls is paid once, whichever attempt paid it: {usage}"
    );
    let result: &Value = &done["result"];
    assert_eq!(result.as_array().map(Vec::len), Some(3), "{done:#}");

    let events = all_events(&client, &kiln.base, &id, LONG).await;
    let replays = events.iter().filter(|e| e.event == "replayed").count() as u64;
    assert_eq!(
        replays, replayed,
        "each replayed call is marked in the events"
    );
}

#[tokio::test]
async fn a_batch_whose_one_call_failed_pays_only_for_that_call_on_the_next_attempt() {
    // Calls 0, 1, 3 and 4 of a five-call `complete-all` are answered; call 2 gets a broken
    // body, which fails the attempt.
    let fake = FakeProvider::with(Behavior {
        break_when_contains: Some("hostile call 2".into()),
        ..Behavior::default()
    })
    .await;
    let kiln = InProcess::start(&["fixture:hostile"], &fake_config(&fake, "")).await;
    let id = submit_ok(
        &kiln.client,
        &kiln.base,
        json!({ "type": "hostile", "payload": { "mode": "llm_all", "n": 5 }, "max_attempts": 1 }),
    )
    .await;
    let failed = wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(failed["status"], "failed", "{failed:#}");
    let first_attempt = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    let failed_at = first_attempt.last().and_then(|e| e.id);
    assert_eq!((fake.calls(), fake.answered()), (5, 4), "{:?}", fake.seen());
    let (input, output) = fake.behavior().usage;
    assert_eq!(
        failed["usage"],
        json!({"llm_calls": 4, "input_tokens": 4 * input, "output_tokens": 4 * output,
               "replayed_calls": 0, "cached_input_tokens": 0, "reasoning_tokens": 0}),
        "the failed attempt's answered calls are in its usage: {failed:#}"
    );

    // The provider recovers; the retry pays for the broken call only.
    fake.set(|b| b.break_when_contains = None);
    let (status, retried) =
        post_empty(&kiln.client, &kiln.url(&format!("/v1/jobs/{id}/retry"))).await;
    assert_eq!(status, 202, "{retried}");
    let done = wait_terminal(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(done["status"], "completed", "{done:#}");
    let asked: Vec<String> = fake.seen()[5..]
        .iter()
        .map(|seen| seen.body["messages"].to_string())
        .collect();
    assert_eq!(fake.calls(), 6, "only call 2 is sent again: {asked:?}");
    assert!(asked[0].contains("hostile call 2"), "{asked:?}");
    assert_eq!(
        done["usage"],
        json!({"llm_calls": 5, "input_tokens": 5 * input, "output_tokens": 5 * output,
               "replayed_calls": 4, "cached_input_tokens": 0, "reasoning_tokens": 0}),
        "{done:#}"
    );
    let url = kiln.url(&format!("/v1/jobs/{id}/events"));
    let events = read_sse(open_sse(&kiln.client, &url, failed_at).await, None, LONG).await;
    let replayed: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "replayed")
        .map(|e| e.data["index"].as_u64().unwrap())
        .collect();
    assert_eq!(replayed, vec![0, 1, 3, 4], "{events:?}");
}

#[tokio::test]
async fn usage_counts_what_the_provider_answered_across_a_kill_9() {
    let fake = FakeProvider::with(Behavior {
        delay_ms: 150,
        ..Behavior::default()
    })
    .await;
    let config = fake_config(&fake, "");
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["characters"]);
    let mut kiln = KilnProcess::start(data.path(), plugins.path(), &config);
    let client = reqwest::Client::new();
    let id = submit_ok(
        &client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "glassblowers", "count": 3 } }),
    )
    .await;
    let deadline = std::time::Instant::now() + LONG;
    while fake.answered() < 8 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        fake.answered() >= 8,
        "the job made no progress:\n{}",
        kiln.log()
    );
    kiln.kill9();
    let answered_before = fake.answered();

    let kiln = KilnProcess::start(data.path(), plugins.path(), &config);
    let done = wait_terminal(&client, &kiln.base, &id, LONG).await;
    assert_eq!(done["status"], "completed", "{done:#}\n{}", kiln.log());
    assert_eq!(done["attempt"], 2, "{done:#}");
    let answered = fake.answered();
    let paid_after_restart = (answered - answered_before) as u64;
    let usage = &done["usage"];
    let (paid, replayed) = (
        usage["llm_calls"].as_u64().unwrap(),
        usage["replayed_calls"].as_u64().unwrap(),
    );
    // Every call the killed attempt journaled is replayed by the next one, and counted
    // once, as paid, in `usage`. Only answers in flight at the kill (at most three, one
    // per character) can be paid without reaching the journal.
    assert_eq!(
        paid,
        replayed + paid_after_restart,
        "{usage} (provider answered {answered})"
    );
    assert!(
        paid <= answered as u64 && paid + 3 >= answered as u64,
        "usage {usage}, the provider answered {answered} calls"
    );
    let (input, output) = fake.behavior().usage;
    assert_eq!(
        usage["input_tokens"].as_u64(),
        Some(paid * u64::from(input)),
        "{usage}"
    );
    assert_eq!(
        usage["output_tokens"].as_u64(),
        Some(paid * u64::from(output)),
        "{usage}"
    );
    assert_eq!(
        replayed + paid_after_restart,
        18,
        "attempt 2 made all 18 calls: {usage}"
    );
}

#[tokio::test]
async fn a_stream_that_breaks_off_resets_its_label_for_clients() {
    let fake = FakeProvider::with(Behavior {
        break_when_contains: Some(String::new()),
        cut_stream_after: 2,
        ..Behavior::default()
    })
    .await;
    let kiln = InProcess::start(&["characters"], &fake_config(&fake, "")).await;
    let id = submit_ok(
        &kiln.client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "ropewalkers", "count": 1 },
                "max_attempts": 1 }),
    )
    .await;
    let events = all_events(&kiln.client, &kiln.base, &id, LONG).await;
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("failed"),
        "{events:?}"
    );
    let tokens: Vec<&SseEvent> = events.iter().filter(|e| e.event == "token").collect();
    let label = tokens
        .first()
        .expect("the call streamed some text first")
        .data["label"]
        .clone();
    let deltas = tokens
        .iter()
        .take_while(|e| e.data.get("reset").is_none())
        .filter(|e| e.data["label"] == label)
        .count();
    assert_eq!(deltas, 2, "two deltas before the break: {tokens:?}");
    let reset = tokens
        .iter()
        .find(|e| e.data["reset"] == true)
        .unwrap_or_else(|| panic!("no token reset: {events:?}"));
    assert_eq!(
        reset.data,
        json!({"label": label, "delta": "", "reset": true})
    );
}
