//! The sandbox at library level: the real `kiln::runtime::Runtime` running the real
//! components (the bundled job types and the `hostile` fixture) with the offline LLM
//! provider. Every limit is tested twice: once obeyed (the job completes) and once
//! violated (only that job fails, with its own `FailureKind`).
//!
//! No test asserts on durations: timeouts here only keep a broken test from hanging.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use kiln::llm::{OfflineClient, OfflineConfig};
use kiln::runtime::{
    CacheOutcome, DiscardArtifacts, EventSink, FailureKind, JobFailure, JobInput, Limits, NoFiles,
    Plugin, PluginEvent, RunContext, RunOutcome, Runtime, RuntimeConfig,
};

use crate::support::{fixture_wasm, plugin_wasm};

/// The longest any single job in this file may take before the test gives up on it.
pub(crate) const GUARD: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------

/// Collects every event a job emits, in order.
#[derive(Default)]
struct Collect(Mutex<Vec<PluginEvent>>);

impl EventSink for Collect {
    fn emit(&self, event: PluginEvent) {
        self.0.lock().unwrap().push(event);
    }
}

/// A runtime sized small: tests run many of them at once on a 2-core machine.
pub(crate) fn new_runtime() -> Arc<Runtime> {
    Arc::new(
        Runtime::new(RuntimeConfig {
            max_instances: 16,
            ..RuntimeConfig::default()
        })
        .expect("the runtime starts"),
    )
}

pub(crate) async fn load(runtime: &Runtime, path: &Path) -> Arc<Plugin> {
    match runtime.load_file(path).await {
        Ok(plugin) => Arc::new(plugin),
        Err(error) => panic!("loading {} failed: {error:#}", path.display()),
    }
}

async fn hostile(runtime: &Runtime) -> Arc<Plugin> {
    load(runtime, &fixture_wasm("hostile")).await
}

/// Tight limits, so that violations are hit quickly.
pub(crate) fn tight() -> Limits {
    Limits {
        memory_mib: 32,
        default_timeout_secs: 30,
        max_timeout_secs: 60,
        max_result_bytes: 4096,
        max_events_per_second: 100,
        max_llm_calls: 5,
        max_llm_tokens: 1_000_000,
        ..Limits::default()
    }
}

/// One job to run: payload, limits, wall-clock budget, offline latency, cancel token.
pub(crate) struct Job {
    payload: Value,
    limits: Limits,
    timeout: Duration,
    latency_ms: u64,
    cancel: CancellationToken,
}

impl Job {
    pub(crate) fn new(payload: Value) -> Self {
        Self {
            payload,
            limits: tight(),
            timeout: Duration::from_secs(30),
            latency_ms: 0,
            cancel: CancellationToken::new(),
        }
    }

    /// A `hostile` job in `mode`, with `n` if given.
    fn hostile(mode: &str, n: Option<u64>) -> Self {
        let payload = match n {
            Some(n) => json!({"mode": mode, "n": n}),
            None => json!({"mode": mode}),
        };
        Self::new(payload)
    }

    pub(crate) fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub(crate) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn latency_ms(mut self, latency_ms: u64) -> Self {
        self.latency_ms = latency_ms;
        self
    }

    pub(crate) fn cancel(mut self, cancel: CancellationToken) -> Self {
        self.cancel = cancel;
        self
    }
}

/// A finished job: the runtime's outcome and every event the job emitted.
pub(crate) struct Ran {
    pub(crate) outcome: RunOutcome,
    pub(crate) events: Vec<PluginEvent>,
}

impl Ran {
    /// The result; fails the test with the failure and the events otherwise.
    pub(crate) fn ok(&self) -> &Value {
        match &self.outcome.result {
            Ok(value) => value,
            Err(failure) => panic!(
                "expected the job to complete, it failed with {:?}: {}\nusage: {:?}\nevents: {:#?}",
                failure.kind, failure.message, self.outcome.usage, self.events
            ),
        }
    }

    /// The failure, which must be of `kind`; fails the test with what came instead.
    pub(crate) fn failed(&self, kind: FailureKind) -> &JobFailure {
        match &self.outcome.result {
            Err(failure) if failure.kind == kind => failure,
            Err(failure) => panic!(
                "expected a {kind:?} failure, got {:?}: {}\nevents: {:#?}",
                failure.kind, failure.message, self.events
            ),
            Ok(value) => panic!(
                "expected a {kind:?} failure, the job completed with {value}\nevents: {:#?}",
                self.events
            ),
        }
    }

    pub(crate) fn progress(&self) -> Vec<(u8, String)> {
        self.events
            .iter()
            .filter_map(|event| match event {
                PluginEvent::Progress { percent, message } => Some((*percent, message.clone())),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn partials(&self) -> Vec<(String, Value)> {
        self.events
            .iter()
            .filter_map(|event| match event {
                PluginEvent::Partial { name, data } => Some((name.clone(), data.clone())),
                _ => None,
            })
            .collect()
    }

    /// Streamed text per label, deltas concatenated in arrival order.
    pub(crate) fn tokens(&self) -> BTreeMap<String, String> {
        let mut streams = BTreeMap::<String, String>::new();
        for event in &self.events {
            if let PluginEvent::Token { label, delta } = event {
                streams.entry(label.clone()).or_default().push_str(delta);
            }
        }
        streams
    }
}

/// Runs `job` with `plugin` on `runtime`, with a collecting sink and the offline provider.
/// Panics (instead of hanging) if the runtime does not come back within [`GUARD`].
pub(crate) async fn run(runtime: &Runtime, plugin: &Plugin, job: Job) -> Ran {
    let sink = Arc::new(Collect::default());
    let context = RunContext {
        sink: sink.clone(),
        llm: Arc::new(OfflineClient::new(OfflineConfig {
            latency_ms: job.latency_ms,
            words: 12,
            ..OfflineConfig::default()
        })),
        cancel: job.cancel,
        limits: job.limits,
        timeout: job.timeout,
        files: Arc::new(NoFiles),
        artifacts: Arc::new(DiscardArtifacts),
    };
    let input = JobInput {
        id: uuid::Uuid::new_v4().to_string(),
        job_type: plugin.info.name.clone(),
        payload: job.payload.to_string(),
        attempt: 1,
    };
    let outcome = match tokio::time::timeout(GUARD, runtime.run(plugin, input, context)).await {
        Ok(outcome) => outcome,
        Err(_) => panic!(
            "the runtime did not finish the job within {GUARD:?}; events so far: {:#?}",
            sink.0.lock().unwrap()
        ),
    };
    let events = std::mem::take(&mut *sink.0.lock().unwrap());
    Ran { outcome, events }
}

/// Checks that the progress of a run never goes down, ends at 100, and returns it.
fn assert_progress_climbs_to_100(ran: &Ran) -> Vec<(u8, String)> {
    let progress = ran.progress();
    assert!(
        !progress.is_empty(),
        "no progress events: {:#?}",
        ran.events
    );
    for pair in progress.windows(2) {
        assert!(pair[0].0 <= pair[1].0, "progress went down: {progress:?}");
    }
    assert_eq!(
        progress.last().unwrap().0,
        100,
        "progress does not end at 100: {progress:?}"
    );
    progress
}

/// A multi-paragraph English text of about `bytes` bytes.
fn long_text(bytes: usize) -> String {
    let mut text = String::new();
    let mut i = 0;
    while text.len() < bytes {
        i += 1;
        text += &format!(
            "Paragraph {i}. The harbour master of Veldt counted {} ships before dawn and wrote \
             the figure in the ledger. The fleet's captains argued about the tide tables, the \
             price of salt and the new lighthouse on the northern cape. By noon the council \
             had voted {} to {} to dredge the eastern channel, and the engineers promised the \
             work would be done before the autumn storms.\n\n",
            i * 3,
            i % 7 + 4,
            i % 5 + 1
        );
    }
    text
}

fn keys(value: &Value) -> Vec<String> {
    let mut keys: Vec<String> = value
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {value}"))
        .keys()
        .cloned()
        .collect();
    keys.sort();
    keys
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------------------
// 1. The bundled job types produce valid results
// ---------------------------------------------------------------------------------------

const CHARACTER_FIELDS: [&str; 6] = [
    "name",
    "appearance",
    "backstory",
    "traits",
    "skills",
    "stats",
];

/// Checks a characters result of `count` and its events; shared with the isolation test.
fn check_characters(ran: &Ran, count: usize) {
    let result = ran.ok();
    let characters = result
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {result}"));
    assert_eq!(characters.len(), count, "{result:#}");
    for character in characters {
        assert_eq!(keys(character), sorted(&CHARACTER_FIELDS), "{character:#}");
        for field in &CHARACTER_FIELDS[..5] {
            let text = character[field].as_str().unwrap_or_default();
            assert!(
                !text.trim().is_empty(),
                "{field} is not a non-empty string: {character:#}"
            );
        }
        assert!(
            character["stats"].is_object() || character["stats"].is_string(),
            "stats: {character:#}"
        );
    }

    let progress = assert_progress_climbs_to_100(ran);
    let messages: Vec<&str> = progress.iter().map(|(_, m)| m.as_str()).collect();
    let expected: Vec<String> = [
        "Generated names",
        "Generated appearances",
        "Generated backstories",
        "Generated traits",
        "Generated skills",
        "Generated stats",
    ]
    .iter()
    .map(|stage| format!("{stage} ({count}/{count})"))
    .collect();
    assert_eq!(messages, expected, "progress: {progress:?}");

    // One partial per character, named character-1..N, holding exactly that character.
    let partials = ran.partials();
    let names: Vec<&str> = partials.iter().map(|(n, _)| n.as_str()).collect();
    let expected: Vec<String> = (1..=count).map(|i| format!("character-{i}")).collect();
    assert_eq!(names, expected, "partials: {partials:#?}");
    for (i, (_, data)) in partials.iter().enumerate() {
        assert_eq!(
            data,
            &characters[i],
            "partial character-{} differs from the result",
            i + 1
        );
    }

    // Every request sets a stream label, so tokens arrive for every field of every
    // character, and what streamed is what ended up in the result.
    let tokens = ran.tokens();
    let mut expected_labels: Vec<String> = (1..=count)
        .flat_map(|i| {
            CHARACTER_FIELDS
                .iter()
                .map(move |f| format!("character-{i}/{f}"))
        })
        .collect();
    expected_labels.sort();
    assert_eq!(tokens.keys().cloned().collect::<Vec<_>>(), expected_labels);
    for (i, character) in characters.iter().enumerate() {
        for field in &CHARACTER_FIELDS[..5] {
            let streamed = &tokens[&format!("character-{}/{field}", i + 1)];
            assert_eq!(
                streamed.trim(),
                character[field].as_str().unwrap(),
                "streamed {field}"
            );
        }
        let streamed = &tokens[&format!("character-{}/stats", i + 1)];
        let stats: Value =
            serde_json::from_str(streamed).unwrap_or(Value::String(streamed.trim().into()));
        assert_eq!(stats, character["stats"], "streamed stats");
    }

    let usage = ran.outcome.usage;
    assert_eq!(usage.llm_calls, (count * 6) as u64, "{usage:?}");
    assert!(
        usage.input_tokens > 0 && usage.output_tokens > 0,
        "{usage:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn characters_produce_three_complete_characters() {
    let runtime = new_runtime();
    let plugin = load(&runtime, &plugin_wasm("characters")).await;
    assert_eq!(plugin.info.name, "characters");
    let job =
        Job::new(json!({"theme": "a cyberpunk heist crew", "count": 3})).limits(Limits::default());
    let ran = run(&runtime, &plugin, job).await;
    check_characters(&ran, 3);
    assert_eq!(ran.outcome.usage.llm_calls, 18);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn factions_produce_two_complete_factions() {
    let runtime = new_runtime();
    let plugin = load(&runtime, &plugin_wasm("factions")).await;
    assert_eq!(plugin.info.name, "factions");
    let job =
        Job::new(json!({"theme": "a drowned archipelago", "count": 2})).limits(Limits::default());
    let ran = run(&runtime, &plugin, job).await;
    let result = ran.ok();
    let factions = result
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {result}"));
    assert_eq!(factions.len(), 2, "{result:#}");
    for faction in factions {
        assert_eq!(
            keys(faction),
            sorted(&["name", "ideology", "appearance", "summary"]),
            "{faction:#}"
        );
        for field in ["name", "ideology", "appearance", "summary"] {
            let text = faction[field].as_str().unwrap_or_default();
            assert!(!text.trim().is_empty(), "{field}: {faction:#}");
        }
    }
    let progress = assert_progress_climbs_to_100(&ran);
    let messages: Vec<&str> = progress.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(
        messages,
        [
            "Generated names (2/2)",
            "Generated ideologies (2/2)",
            "Generated appearances (2/2)",
            "Generated summaries (2/2)"
        ],
        "progress: {progress:?}"
    );
    let partials = ran.partials();
    let names: Vec<&str> = partials.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["faction-1", "faction-2"], "partials: {partials:#?}");
    assert_eq!(partials[1].1, factions[1]);
    let tokens = ran.tokens();
    assert_eq!(tokens.len(), 2 * 4, "token labels: {:?}", tokens.keys());
    assert_eq!(
        tokens["faction-2/ideology"].trim(),
        factions[1]["ideology"].as_str().unwrap()
    );
    assert_eq!(
        ran.outcome.usage.llm_calls,
        2 * 4,
        "{:?}",
        ran.outcome.usage
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_summarise_a_long_text() {
    let runtime = new_runtime();
    let plugin = load(&runtime, &plugin_wasm("documents")).await;
    assert_eq!(plugin.info.name, "documents");
    let text = long_text(40_000);
    assert!(text.len() >= 40_000 && text.matches("\n\n").count() > 50);
    let payload = json!({"text": text, "title": "Harbour minutes", "instructions": "decisions"});
    let ran = run(
        &runtime,
        &plugin,
        Job::new(payload).limits(Limits::default()),
    )
    .await;
    let result = ran.ok();
    assert_eq!(
        keys(result),
        sorted(&["summary", "key_points", "sections"]),
        "{result:#}"
    );
    let summary = result["summary"]
        .as_str()
        .unwrap_or_else(|| panic!("summary: {result:#}"));
    assert!(!summary.trim().is_empty(), "{result:#}");
    let key_points = result["key_points"]
        .as_array()
        .unwrap_or_else(|| panic!("key_points: {result:#}"));
    assert!(
        !key_points.is_empty() && key_points.iter().all(Value::is_string),
        "{result:#}"
    );
    let sections = result["sections"]
        .as_array()
        .unwrap_or_else(|| panic!("sections: {result:#}"));
    assert!(!sections.is_empty(), "{result:#}");
    for section in sections {
        assert!(
            section["title"].is_string() && section["summary"].is_string(),
            "{section}"
        );
    }

    // About 6 KB chunks: a 40 KB text is several chunks, each summarised and streamed as
    // a partial, then one final call (no reduce rounds below 9 chunks).
    let partials = ran.partials();
    let n = partials.len();
    assert!(
        (5..=8).contains(&n),
        "{n} chunks for {} bytes: {partials:#?}",
        text.len()
    );
    for (i, (name, data)) in partials.iter().enumerate() {
        assert_eq!(name, &format!("chunk-{}", i + 1));
        assert_eq!(data["part"], json!(i + 1), "{data}");
        assert!(
            data["summary"].as_str().is_some_and(|s| !s.is_empty()),
            "{data}"
        );
    }
    let progress = assert_progress_climbs_to_100(&ran);
    for i in 1..=n {
        let stage = format!("Summarised chunks ({i}/{n})");
        assert!(
            progress.iter().any(|(_, m)| *m == stage),
            "no {stage:?} in {progress:?}"
        );
    }
    assert_eq!(
        progress.last().unwrap().1,
        "Wrote the final summary",
        "{progress:?}"
    );
    // The final request streams under the label `summary`.
    assert_eq!(
        ran.tokens().keys().cloned().collect::<Vec<_>>(),
        ["summary"]
    );
    assert_eq!(
        ran.outcome.usage.llm_calls,
        n as u64 + 1,
        "{:?}",
        ran.outcome.usage
    );
}

// ---------------------------------------------------------------------------------------
// 2. Payload validation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn characters_payload_schema_is_enforced() {
    let runtime = new_runtime();
    let plugin = load(&runtime, &plugin_wasm("characters")).await;
    for count in [11, 0] {
        let payload = json!({"theme": "pirates", "count": count});
        let violations = plugin
            .validate_payload(&payload)
            .expect_err(&format!("count {count} must be refused"));
        assert!(
            violations.iter().any(|v| v.path == "/count"),
            "count {count}: {violations:?}"
        );
    }
    let violations = plugin
        .validate_payload(&json!({"count": 2}))
        .expect_err("a payload without theme must be refused");
    assert!(
        violations.iter().any(|v| v.message.contains("theme")),
        "{violations:?}"
    );
    let violations = plugin
        .validate_payload(&json!({"theme": "pirates", "colour": "red"}))
        .expect_err("unknown fields must be refused");
    assert!(!violations.is_empty());
    for ok in [
        json!({"theme": "pirates"}),
        json!({"theme": "pirates", "count": 1}),
        json!({"theme": "pirates", "count": 10}),
    ] {
        if let Err(violations) = plugin.validate_payload(&ok) {
            panic!("{ok} must be accepted: {violations:?}");
        }
    }
}

#[tokio::test]
async fn documents_payload_schema_is_enforced() {
    let runtime = new_runtime();
    let plugin = load(&runtime, &plugin_wasm("documents")).await;
    for text in ["", "   ", "\n\t "] {
        let violations = plugin
            .validate_payload(&json!({"text": text}))
            .expect_err(&format!("text {text:?} must be refused"));
        assert!(
            violations.iter().any(|v| v.path == "/text"),
            "{text:?}: {violations:?}"
        );
    }
    assert!(plugin.validate_payload(&json!({})).is_err());
    assert!(plugin.validate_payload(&json!({"text": 42})).is_err());
    for ok in [
        json!({"text": "a"}),
        json!({"text": long_text(10_000), "title": "t"}),
    ] {
        if let Err(violations) = plugin.validate_payload(&ok) {
            panic!("must be accepted: {violations:?}");
        }
    }
}

#[tokio::test]
async fn factions_payload_schema_is_enforced() {
    let runtime = new_runtime();
    let plugin = load(&runtime, &plugin_wasm("factions")).await;
    let violations = plugin
        .validate_payload(&json!({"theme": "guilds", "count": 11}))
        .expect_err("count 11 must be refused");
    assert!(
        violations.iter().any(|v| v.path == "/count"),
        "{violations:?}"
    );
    assert!(plugin.validate_payload(&json!({"theme": "  "})).is_err());
    assert!(
        plugin
            .validate_payload(&json!({"theme": "guilds", "count": 2}))
            .is_ok()
    );
}

// ---------------------------------------------------------------------------------------
// 3. Limits: each obeyed and violated
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_obeyed() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("alloc", Some(8))).await;
    assert_eq!(ran.ok(), &json!({"ok": true, "mib": 8}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_violated() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("memory", None)).await;
    let failure = ran.failed(FailureKind::MemoryLimit);
    assert!(failure.message.contains("32 MiB"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_limit_violated_by_one_large_allocation() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("alloc", Some(48))).await;
    ran.failed(FailureKind::MemoryLimit);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_obeyed() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(
        &runtime,
        &plugin,
        Job::hostile("ok", None).timeout(Duration::from_secs(5)),
    )
    .await;
    assert_eq!(ran.ok(), &json!({"ok": true}));
    assert_eq!(ran.progress(), [(50, "half way".to_string())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_violated() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(
        &runtime,
        &plugin,
        Job::hostile("loop", None).timeout(Duration::from_secs(1)),
    )
    .await;
    let failure = ran.failed(FailureKind::Timeout);
    assert!(failure.message.contains("timeout"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_obeyed_during_host_call() {
    // A slow (but not too slow) LLM call inside the budget completes.
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let job = Job::hostile("sleep_llm", None)
        .latency_ms(100)
        .timeout(Duration::from_secs(30));
    let ran = run(&runtime, &plugin, job).await;
    let result = ran.ok();
    assert_eq!(result["ok"], true, "{result}");
    assert!(
        result["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("[synthetic]")),
        "{result}"
    );
    assert_eq!(ran.outcome.usage.llm_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_violated_during_host_call() {
    // The epoch cannot interrupt an awaited host call; the host's own timer must.
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let job = Job::hostile("sleep_llm", None)
        .latency_ms(30_000)
        .timeout(Duration::from_secs(1));
    let ran = run(&runtime, &plugin, job).await;
    ran.failed(FailureKind::Timeout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_size_limit_obeyed() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("huge_result", Some(1000))).await;
    let text = ran
        .ok()
        .as_str()
        .unwrap_or_else(|| panic!("not a string: {}", ran.ok()));
    assert_eq!(text.len(), 998);
    // Exactly at the limit is still allowed.
    let ran = run(&runtime, &plugin, Job::hostile("huge_result", Some(4096))).await;
    assert_eq!(ran.ok().as_str().map(str::len), Some(4094));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_size_limit_violated() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(
        &runtime,
        &plugin,
        Job::hostile("huge_result", Some(100_000)),
    )
    .await;
    let failure = ran.failed(FailureKind::ResultTooLarge);
    assert!(
        failure.message.contains("100000") && failure.message.contains("4096"),
        "{failure:?}"
    );
    // One byte over the limit is refused too.
    let ran = run(&runtime, &plugin, Job::hostile("huge_result", Some(4097))).await;
    ran.failed(FailureKind::ResultTooLarge);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_rate_limit_obeyed() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("events", Some(20))).await;
    assert_eq!(ran.ok(), &json!({"count": 20}));
    let progress = ran.progress();
    let expected: Vec<(u8, String)> = (1..=20u8).map(|i| (i * 5, format!("step {i}"))).collect();
    assert_eq!(progress, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_rate_limit_violated() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("flood", None)).await;
    let failure = ran.failed(FailureKind::EventLimit);
    assert!(failure.message.contains("100"), "{failure:?}");
    // The flood was cut off: clients did not get anywhere near 100 000 events.
    let emitted = ran.progress().len();
    assert!(
        (100..1000).contains(&emitted),
        "{emitted} events got through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_call_limit_obeyed() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("llm_calls", Some(3))).await;
    assert_eq!(ran.ok(), &json!({"calls": 3}));
    assert_eq!(ran.outcome.usage.llm_calls, 3);
    // Exactly the limit is allowed.
    let ran = run(&runtime, &plugin, Job::hostile("llm_calls", Some(5))).await;
    assert_eq!(ran.ok(), &json!({"calls": 5}));
    let ran = run(&runtime, &plugin, Job::hostile("llm_all", Some(5))).await;
    assert_eq!(ran.ok(), &json!({"calls": 5}));
    assert_eq!(ran.outcome.usage.llm_calls, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_call_limit_violated() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("llm_calls", Some(10))).await;
    let failure = ran.failed(FailureKind::LlmLimit);
    assert!(failure.message.contains('5'), "{failure:?}");
    // The sixth call was refused before it was made: only five were paid for.
    assert_eq!(ran.outcome.usage.llm_calls, 5, "{:?}", ran.outcome.usage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_call_limit_violated_by_complete_all() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("llm_all", Some(10))).await;
    ran.failed(FailureKind::LlmLimit);
    // The batch was refused as a whole, before any call was made.
    assert_eq!(ran.outcome.usage.llm_calls, 0, "{:?}", ran.outcome.usage);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_token_limit_obeyed() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let limits = Limits {
        max_llm_tokens: 100_000,
        ..tight()
    };
    let ran = run(
        &runtime,
        &plugin,
        Job::hostile("llm_calls", Some(3)).limits(limits),
    )
    .await;
    assert_eq!(ran.ok(), &json!({"calls": 3}));
    let usage = ran.outcome.usage;
    assert!(
        usage.total_tokens() > 0 && usage.total_tokens() <= 100_000,
        "{usage:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llm_token_limit_violated() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let limits = Limits {
        max_llm_tokens: 10,
        ..tight()
    };
    let ran = run(
        &runtime,
        &plugin,
        Job::hostile("llm_calls", Some(3)).limits(limits),
    )
    .await;
    let failure = ran.failed(FailureKind::LlmLimit);
    assert!(failure.message.contains("token"), "{failure:?}");
}

// ---------------------------------------------------------------------------------------
// 4. Other hostile behaviour
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_without_a_message_fails_with_trap_and_a_short_named_backtrace() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("trap", None)).await;
    let failure = ran.failed(FailureKind::Trap);
    assert!(
        failure
            .message
            .starts_with("the plugin trapped: wasm `unreachable` instruction executed"),
        "{failure:?}"
    );
    let frames = backtrace_frames(&failure.message);
    assert!((1..=4).contains(&frames.len()), "{failure:?}");
    assert!(
        frames[0].starts_with("kiln_fixture_hostile::trap"),
        "the plugin's own function comes first, by name: {failure:?}"
    );
    assert!(
        frames.iter().all(|f| !f.contains("::h")),
        "no symbol hashes: {failure:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panic_fails_with_trap_starting_with_the_panic_message() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("panic", None)).await;
    let failure = ran.failed(FailureKind::Trap);
    assert!(
        failure.message.starts_with(
            "hostile plugin panicked on purpose (panicked at plugins/fixtures/hostile/src/lib.rs:"
        ),
        "{failure:?}"
    );
    let frames = backtrace_frames(&failure.message);
    assert!((1..=4).contains(&frames.len()), "{failure:?}");
    assert!(
        !["std::", "core::", "__rustc::"]
            .iter()
            .any(|runtime| frames[0].starts_with(runtime)),
        "the panic machinery is left out: {failure:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_served_job_that_panics_has_an_error_message_starting_with_the_panic() {
    let kiln = crate::support::kiln("").await;
    let body = json!({"type": "hostile", "payload": {"mode": "panic"}, "max_attempts": 1});
    let (status, job) = crate::support::submit(&kiln.client, &kiln.base, body).await;
    assert_eq!(status, 202, "{job}");
    let id = crate::support::id_of(&job);
    let job = crate::support::wait_terminal(&kiln.client, &kiln.base, &id, GUARD).await;
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["kind"], "trap", "{job}");
    let message = job["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("hostile plugin panicked on purpose (panicked at "),
        "{job:#}"
    );
}

/// The `at` lines of a trap message.
fn backtrace_frames(message: &str) -> Vec<&str> {
    message
        .lines()
        .filter_map(|line| line.strip_prefix("    at "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbounded_recursion_fails_with_stack_overflow() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("recurse", None)).await;
    ran.failed(FailureKind::StackOverflow);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn result_that_is_not_json_fails_with_invalid_result() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("invalid_json", None)).await;
    let failure = ran.failed(FailureKind::InvalidResult);
    assert!(failure.message.contains("not json {"), "{failure:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_that_is_not_json_fails_with_invalid_result() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::hostile("partial_invalid", None)).await;
    let failure = ran.failed(FailureKind::InvalidResult);
    assert!(failure.message.contains("bad"), "{failure:?}");
    assert!(
        ran.partials().is_empty(),
        "an invalid partial reached the sink: {:?}",
        ran.events
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_errors_keep_their_kind_and_message() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    for (mode, kind) in [
        ("retryable", FailureKind::Retryable),
        ("permanent", FailureKind::Permanent),
        ("invalid_input", FailureKind::InvalidInput),
    ] {
        let ran = run(&runtime, &plugin, Job::hostile(mode, None)).await;
        let failure = ran.failed(kind);
        assert_eq!(failure.message, format!("hostile: {mode}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_the_plugin_cannot_parse_fails_with_invalid_input() {
    // The host normally validates first; a plugin handed junk anyway says invalid_input.
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let ran = run(&runtime, &plugin, Job::new(json!({"mode": 7}))).await;
    let failure = ran.failed(FailureKind::InvalidInput);
    assert!(failure.message.contains("invalid payload"), "{failure:?}");
}

// ---------------------------------------------------------------------------------------
// 5. Cancellation
// ---------------------------------------------------------------------------------------

fn cancel_after(token: &CancellationToken, after: Duration) {
    let token = token.clone();
    tokio::spawn(async move {
        tokio::time::sleep(after).await;
        token.cancel();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_cpu_loop() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let cancel = CancellationToken::new();
    cancel_after(&cancel, Duration::from_millis(200));
    let job = Job::hostile("loop", None)
        .timeout(Duration::from_secs(600))
        .cancel(cancel.clone());
    let ran = tokio::time::timeout(Duration::from_secs(30), run(&runtime, &plugin, job))
        .await
        .expect("a cancelled loop must stop well within 30 s");
    ran.failed(FailureKind::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_seen_by_a_polling_plugin() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let cancel = CancellationToken::new();
    cancel_after(&cancel, Duration::from_millis(200));
    let job = Job::hostile("cancel_poll", None)
        .timeout(Duration::from_secs(600))
        .cancel(cancel);
    let ran = tokio::time::timeout(Duration::from_secs(30), run(&runtime, &plugin, job))
        .await
        .expect("a cancelled job must stop well within 30 s");
    ran.failed(FailureKind::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_job_waiting_on_the_llm() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let cancel = CancellationToken::new();
    cancel_after(&cancel, Duration::from_millis(200));
    let job = Job::hostile("sleep_llm", None)
        .latency_ms(120_000)
        .timeout(Duration::from_secs(600))
        .cancel(cancel);
    let ran = tokio::time::timeout(Duration::from_secs(30), run(&runtime, &plugin, job))
        .await
        .expect("a cancelled job must stop well within 30 s");
    ran.failed(FailureKind::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_before_start_runs_nothing() {
    let runtime = new_runtime();
    let plugin = hostile(&runtime).await;
    let cancel = CancellationToken::new();
    cancel.cancel();
    let ran = run(
        &runtime,
        &plugin,
        Job::hostile("events", Some(5)).cancel(cancel),
    )
    .await;
    ran.failed(FailureKind::Cancelled);
    assert!(
        ran.events.is_empty(),
        "a cancelled job emitted events: {:?}",
        ran.events
    );
}

// ---------------------------------------------------------------------------------------
// 6. Isolation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_jobs_fail_alone_and_leave_the_host_healthy() {
    let runtime = new_runtime();
    let hostile_plugin = hostile(&runtime).await;
    let characters = load(&runtime, &plugin_wasm("characters")).await;

    let hostile_jobs = [
        (
            "memory",
            Job::hostile("memory", None),
            FailureKind::MemoryLimit,
        ),
        (
            "loop",
            Job::hostile("loop", None).timeout(Duration::from_secs(2)),
            FailureKind::Timeout,
        ),
        ("trap", Job::hostile("trap", None), FailureKind::Trap),
        (
            "flood",
            Job::hostile("flood", None),
            FailureKind::EventLimit,
        ),
        ("panic", Job::hostile("panic", None), FailureKind::Trap),
    ];
    let mut handles = Vec::new();
    for (mode, job, kind) in hostile_jobs {
        let (runtime, plugin) = (runtime.clone(), hostile_plugin.clone());
        handles.push((
            mode,
            kind,
            tokio::spawn(async move { run(&runtime, &plugin, job).await }),
        ));
    }
    let good = {
        let (runtime, plugin) = (runtime.clone(), characters.clone());
        // Some latency, so the characters job is in flight while the others misbehave.
        let job = Job::new(json!({"theme": "lighthouse keepers", "count": 3}))
            .limits(Limits::default())
            .latency_ms(50);
        tokio::spawn(async move { run(&runtime, &plugin, job).await })
    };

    for (mode, kind, handle) in handles {
        let ran = handle
            .await
            .unwrap_or_else(|e| panic!("the {mode} job's task died: {e}"));
        let got = ran
            .outcome
            .result
            .as_ref()
            .map_err(|f| (f.kind, f.message.clone()));
        assert!(
            matches!(&got, Err((k, _)) if *k == kind),
            "hostile {mode}: expected {kind:?}, got {got:?}"
        );
    }
    let ran = good.await.expect("the characters job's task died");
    check_characters(&ran, 3);

    // The host is not poisoned: fresh jobs on the same runtime run fine.
    let ran = run(&runtime, &hostile_plugin, Job::hostile("ok", None)).await;
    assert_eq!(ran.ok(), &json!({"ok": true}));
    let ran = run(&runtime, &hostile_plugin, Job::hostile("alloc", Some(16))).await;
    assert_eq!(ran.ok(), &json!({"ok": true, "mib": 16}));
    let job = Job::new(json!({"theme": "tea merchants", "count": 1})).limits(Limits::default());
    let ran = run(&runtime, &characters, job).await;
    check_characters(&ran, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_slots_are_returned_after_failures() {
    // More failing jobs than the pool has slots, one after another: if a failure leaked
    // its slot or its instance, the later jobs would not get one.
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            max_instances: 2,
            ..RuntimeConfig::default()
        })
        .expect("the runtime starts"),
    );
    let plugin = hostile(&runtime).await;
    for (mode, kind) in [
        ("trap", FailureKind::Trap),
        ("memory", FailureKind::MemoryLimit),
        ("panic", FailureKind::Trap),
        ("flood", FailureKind::EventLimit),
        ("invalid_json", FailureKind::InvalidResult),
    ] {
        let ran = run(&runtime, &plugin, Job::hostile(mode, None)).await;
        ran.failed(kind);
    }
    let ran = run(&runtime, &plugin, Job::hostile("ok", None)).await;
    assert_eq!(ran.ok(), &json!({"ok": true}));
}

// ---------------------------------------------------------------------------------------
// 7. Contract refusal at load
// ---------------------------------------------------------------------------------------

async fn refused(runtime: &Runtime, bytes: Vec<u8>) -> String {
    match runtime.load_bytes(bytes).await {
        Ok(plugin) => panic!("the component was accepted: {plugin:?}"),
        Err(error) => format!("{error:#}"),
    }
}

#[tokio::test]
async fn core_module_is_refused() {
    let runtime = new_runtime();
    let error = refused(&runtime, wat::parse_str("(module)").unwrap()).await;
    assert!(error.contains("core WebAssembly module"), "{error}");
}

#[tokio::test]
async fn component_without_the_job_type_export_is_refused() {
    let runtime = new_runtime();
    let error = refused(&runtime, wat::parse_str("(component)").unwrap()).await;
    assert!(error.contains("does not export"), "{error}");
    assert!(error.contains("kiln:plugin/job-type@X.Y.Z"), "{error}");
}

#[tokio::test]
async fn component_for_another_contract_version_is_refused() {
    let runtime = new_runtime();
    let error = match runtime.load_file(&fixture_wasm("wrong_version")).await {
        Ok(plugin) => panic!("the 9.9.9 component was accepted: {plugin:?}"),
        Err(error) => format!("{error:#}"),
    };
    // It names the component's version and every version this host runs.
    assert!(
        error.contains("9.9.9") && error.contains("0.1.0, 0.2.0"),
        "{error}"
    );
}

#[tokio::test]
async fn bytes_that_are_not_webassembly_are_refused() {
    let runtime = new_runtime();
    let error = refused(&runtime, b"this is not wasm at all, just text".to_vec()).await;
    assert!(error.contains("not a WebAssembly file"), "{error}");
    assert!(!refused(&runtime, Vec::new()).await.is_empty());
    // A component header followed by junk: refused by the compiler, not a crash.
    let mut junk = b"\0asm\x0d\x00\x01\x00".to_vec();
    junk.extend((0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8));
    assert!(!refused(&runtime, junk).await.is_empty());
}

#[tokio::test]
async fn component_importing_something_kiln_does_not_grant_is_refused() {
    let runtime = new_runtime();
    // It exports the job-type interface name, so the import check is what refuses it.
    let instance_import = wat::parse_str(
        r#"(component
            (import "evil:net/socket" (instance))
            (instance $job)
            (export "kiln:plugin/job-type@0.1.0" (instance $job))
        )"#,
    )
    .unwrap();
    let error = refused(&runtime, instance_import).await;
    assert!(
        error.contains("does not grant") && error.contains("evil:net/socket"),
        "{error}"
    );

    let func_import = wat::parse_str(
        r#"(component
            (import "open-socket" (func))
            (instance $job)
            (export "kiln:plugin/job-type@0.1.0" (instance $job))
        )"#,
    )
    .unwrap();
    let error = refused(&runtime, func_import).await;
    assert!(
        error.contains("does not grant") && error.contains("open-socket"),
        "{error}"
    );
}

#[tokio::test]
async fn missing_file_is_an_error_naming_it() {
    let runtime = new_runtime();
    let path = std::env::temp_dir().join("kiln-no-such-plugin-7f3a.wasm");
    let error = match runtime.load_file(&path).await {
        Ok(plugin) => panic!("loaded a missing file: {plugin:?}"),
        Err(error) => format!("{error:#}"),
    };
    assert!(error.contains("kiln-no-such-plugin-7f3a.wasm"), "{error}");
}

/// `describe` must not call any import (the contract says so): a component whose
/// `describe` writes a log line is refused, naming the import.
#[tokio::test]
async fn describe_calling_an_import_is_refused() {
    let runtime = new_runtime();
    let error = match runtime.load_file(&fixture_wasm("describe_import")).await {
        Ok(plugin) => panic!("a describe calling an import was accepted: {plugin:?}"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("`describe` failed: it called `kiln:plugin/log@0.2.0#write`")
            && error.contains("must not call any import"),
        "{error}"
    );
}

/// What `describe` returns is checked: a version that is not semver, a description over
/// `MAX_DESCRIPTION_BYTES` and a schema over `MAX_SCHEMA_BYTES` are all refused, in one
/// message (the bundled plugins, which load, are the obeyed side).
#[tokio::test]
async fn describe_with_a_bad_version_and_oversized_texts_is_refused() {
    let runtime = new_runtime();
    let error = match runtime.load_file(&fixture_wasm("describe_invalid")).await {
        Ok(plugin) => panic!("the invalid description was accepted: {plugin:?}"),
        Err(error) => format!("{error:#}"),
    };
    for wanted in [
        "version \"latest\" is not a semver version".to_string(),
        format!(
            "the description is 1048576 bytes; the limit is {}",
            kiln::runtime::MAX_DESCRIPTION_BYTES
        ),
        format!("the limit is {}", kiln::runtime::MAX_SCHEMA_BYTES),
    ] {
        assert!(error.contains(&wanted), "{wanted:?} not in {error}");
    }
}

/// A `describe` that never returns is stopped at the describe deadline, with a message
/// that says so.
#[tokio::test]
async fn describe_past_its_deadline_is_refused() {
    let runtime = Runtime::new(RuntimeConfig {
        max_instances: 4,
        describe_timeout: Duration::from_millis(300),
        ..RuntimeConfig::default()
    })
    .expect("the runtime starts");
    let error = match runtime.load_file(&fixture_wasm("describe_loop")).await {
        Ok(plugin) => panic!("a looping describe was accepted: {plugin:?}"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.contains("did not return within 0.3 s") && error.contains("describe_loop"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_built_component_but_the_wrong_version_loads() {
    let runtime = new_runtime();
    for (path, name) in [
        (plugin_wasm("characters"), "characters"),
        (plugin_wasm("factions"), "factions"),
        (plugin_wasm("documents"), "documents"),
        (fixture_wasm("hostile"), "hostile"),
        (fixture_wasm("noop"), "noop"),
    ] {
        let plugin = load(&runtime, &path).await;
        assert_eq!(plugin.info.name, name);
        assert!(!plugin.info.version.is_empty());
        assert_eq!(plugin.digest.len(), 64, "{}", plugin.digest);
        for import in &plugin.imports {
            assert!(
                import.starts_with("wasi:") || import.starts_with("kiln:plugin/"),
                "{name} imports {import}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// 8. Compile cache
// ---------------------------------------------------------------------------------------

fn cached_runtime(dir: &Path) -> Runtime {
    Runtime::new(RuntimeConfig {
        max_instances: 4,
        cache_dir: Some(dir.to_path_buf()),
        ..RuntimeConfig::default()
    })
    .expect("the runtime starts")
}

fn artifacts(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut found: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_cache_hits_on_a_second_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_wasm("hostile");

    let first = cached_runtime(dir.path());
    let plugin = load(&first, &path).await;
    assert_eq!(plugin.cache, CacheOutcome::Compiled);
    assert_eq!(
        artifacts(dir.path()).len(),
        1,
        "artifacts: {:?}",
        artifacts(dir.path())
    );
    drop(plugin);
    drop(first);

    let second = cached_runtime(dir.path());
    let plugin = load(&second, &path).await;
    assert_eq!(plugin.cache, CacheOutcome::Hit);
    let ran = run(&second, &plugin, Job::hostile("events", Some(3))).await;
    assert_eq!(ran.ok(), &json!({"count": 3}));
    assert_eq!(ran.progress().len(), 3);
    // The cached artifact still enforces the limits.
    let ran = run(&second, &plugin, Job::hostile("memory", None)).await;
    ran.failed(FailureKind::MemoryLimit);

    // A different component gets its own artifact.
    let other = load(&second, &fixture_wasm("noop")).await;
    assert_eq!(other.cache, CacheOutcome::Compiled);
    assert_eq!(
        artifacts(dir.path()).len(),
        2,
        "artifacts: {:?}",
        artifacts(dir.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compile_cache_off_always_compiles() {
    let runtime = new_runtime();
    let path = fixture_wasm("noop");
    assert_eq!(load(&runtime, &path).await.cache, CacheOutcome::Compiled);
    assert_eq!(load(&runtime, &path).await.cache, CacheOutcome::Compiled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_cache_artifact_is_recompiled() {
    let dir = tempfile::tempdir().unwrap();
    let path = fixture_wasm("hostile");
    {
        let runtime = cached_runtime(dir.path());
        assert_eq!(load(&runtime, &path).await.cache, CacheOutcome::Compiled);
    }
    let found = artifacts(dir.path());
    assert_eq!(found.len(), 1, "artifacts: {found:?}");
    assert!(
        std::fs::read(&found[0]).unwrap().starts_with(b"\x7fELF"),
        "artifacts are ELF files"
    );
    std::fs::write(&found[0], b"junk, not a compiled component\n".repeat(64)).unwrap();

    let runtime = cached_runtime(dir.path());
    let plugin = load(&runtime, &path).await;
    assert_eq!(
        plugin.cache,
        CacheOutcome::Compiled,
        "a junk artifact must be recompiled"
    );
    let ran = run(&runtime, &plugin, Job::hostile("ok", None)).await;
    assert_eq!(ran.ok(), &json!({"ok": true}));
    // The junk was replaced by a good artifact, which the next runtime hits.
    assert!(
        std::fs::read(&found[0]).unwrap().starts_with(b"\x7fELF"),
        "the junk artifact was not replaced"
    );
    let again = cached_runtime(dir.path());
    assert_eq!(load(&again, &path).await.cache, CacheOutcome::Hit);

    // A truncated artifact (a crash mid-write by some other tool) is recompiled too.
    let bytes = std::fs::read(&found[0]).unwrap();
    std::fs::write(&found[0], &bytes[..bytes.len() / 2]).unwrap();
    let runtime = cached_runtime(dir.path());
    let plugin = load(&runtime, &path).await;
    assert_eq!(
        plugin.cache,
        CacheOutcome::Compiled,
        "a truncated artifact must be recompiled"
    );
    let ran = run(&runtime, &plugin, Job::hostile("ok", None)).await;
    assert_eq!(ran.ok(), &json!({"ok": true}));
}
