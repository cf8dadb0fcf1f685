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
    CallJournal, DiscardEvents, JobInput, JournalEntry, Limits, RunContext, RunOutcome, Runtime,
    RuntimeConfig,
};

use crate::support::*;

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
async fn the_first_mismatch_ends_the_replay() {
    let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
    let journal = Arc::new(MemoryJournal::default());
    run_characters(&runtime, journal.clone())
        .await
        .result
        .unwrap();
    // Corrupt the hash of call 7 (the second round's second request): calls 0..=6 replay,
    // call 7 and every later one go to the provider, even those that would match again.
    journal
        .entries
        .lock()
        .unwrap()
        .get_mut(&7)
        .unwrap()
        .request_hash = "changed".into();
    let rerun = run_characters(&runtime, journal.clone()).await;
    rerun.result.expect("re-run completes");
    assert_eq!(rerun.usage.replayed_calls, 7, "{:?}", rerun.usage);
    assert_eq!(rerun.usage.llm_calls, 11, "{:?}", rerun.usage);
    assert_ne!(
        journal.entries.lock().unwrap()[&7].request_hash,
        "changed",
        "the live call overwrote the stale entry"
    );
}

#[tokio::test]
async fn kill_9_mid_job_then_recovery_pays_only_for_unfinished_calls() {
    let data = tempfile::tempdir().unwrap();
    let plugins = plugins_dir(&["characters"]);
    let slow = "[providers.offline]\nkind = \"offline\"\nlatency_ms = 300\n";
    let mut kiln = KilnProcess::start(data.path(), plugins.path(), slow);
    let client = reqwest::Client::new();
    let (status, job) = submit(
        &client,
        &kiln.base,
        json!({ "type": "characters", "payload": { "theme": "glassblowers", "count": 3 } }),
    )
    .await;
    assert_eq!(status, 202, "{job}");
    let id = id_of(&job);

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
        paid + replayed,
        18,
        "no finished call is paid for twice: {usage}"
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
