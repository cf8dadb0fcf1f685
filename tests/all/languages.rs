//! Job types written in Python and JavaScript, as the host runs them: the hostile fixtures
//! of both languages against every limit the Rust one is tested against (each failing
//! only its own job, with its own `error.kind`), errors that point at the plugin's code,
//! cancellation of a loop that never polls, and the bundled `settings` (Python) and
//! `relics` (JavaScript) streamed over SSE to the end.
//!
//! The components are built by `scripts/build-plugins` with `kiln plugin build`. They are
//! tens of MB and take seconds to compile, so the runtime here uses the compiled-component
//! cache the other tests share.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use kiln::runtime::{FailureKind, Limits, Plugin, Runtime, RuntimeConfig};

use crate::runtime::{GUARD, Job, load, run, tight};
use crate::support::*;

/// A runtime with the shared compiled-component cache, and the plugin at `fixture`.
async fn cached(fixture: &str) -> (Arc<Runtime>, Arc<Plugin>) {
    cached_pool(fixture, 16).await
}

/// [`cached`] with a pool of `max_instances`.
async fn cached_pool(fixture: &str, max_instances: u32) -> (Arc<Runtime>, Arc<Plugin>) {
    let data = tempfile::tempdir().unwrap();
    seed_cache(data.path());
    let runtime = Arc::new(
        Runtime::new(RuntimeConfig {
            max_instances,
            cache_dir: Some(data.path().join("cache")),
            ..RuntimeConfig::default()
        })
        .expect("the runtime starts"),
    );
    let plugin = load(&runtime, &fixture_wasm(fixture)).await;
    save_cache(data.path());
    (runtime, plugin)
}

/// The limits of these tests: [`tight`], with the default memory cap (256 MiB): an
/// interpreter starts at tens of MiB, and SpiderMonkey building a 20 MB string for
/// `huge_result` passes 128.
fn limits() -> Limits {
    Limits {
        memory_mib: Limits::default().memory_mib,
        ..tight()
    }
}

fn mode(name: &str) -> Job {
    Job::new(json!({ "mode": name })).limits(limits())
}

/// Every limit, obeyed and violated, for the hostile fixture `fixture`. `raising` is the
/// mode that throws the language's own exception.
async fn limits_hold_for(fixture: &str, raising: &str) {
    let (runtime, plugin) = cached(fixture).await;

    // Obeyed: a job that stays inside every limit completes, under the same limits.
    let ran = run(&runtime, &plugin, mode("ok")).await;
    assert_eq!(ran.ok(), &json!({ "ok": true }));
    let ran = run(&runtime, &plugin, mode("llm")).await;
    assert_eq!(ran.ok()["ok"], true);
    assert!(!ran.tokens().is_empty(), "{:#?}", ran.events);

    // Violated: each fails only its own job, with its own kind.
    let ran = run(&runtime, &plugin, mode("memory")).await;
    let failure = ran.failed(FailureKind::MemoryLimit);
    assert!(failure.message.contains("256 MiB"), "{}", failure.message);

    let ran = run(
        &runtime,
        &plugin,
        mode("loop").timeout(Duration::from_secs(1)),
    )
    .await;
    ran.failed(FailureKind::Timeout);

    let ran = run(&runtime, &plugin, mode("huge_result")).await;
    ran.failed(FailureKind::ResultTooLarge);

    let ran = run(&runtime, &plugin, mode("flood")).await;
    ran.failed(FailureKind::EventLimit);

    let ran = run(&runtime, &plugin, mode("recurse")).await;
    let failure = match &ran.outcome.result {
        Err(failure) => failure,
        Ok(value) => panic!("unbounded recursion completed with {value}"),
    };
    assert!(
        matches!(
            failure.kind,
            FailureKind::Permanent | FailureKind::StackOverflow | FailureKind::Trap
        ),
        "{:?}: {}",
        failure.kind,
        failure.message
    );

    for (name, kind) in [
        ("invalid_input", FailureKind::InvalidInput),
        ("retryable", FailureKind::Retryable),
        ("permanent", FailureKind::Permanent),
    ] {
        let ran = run(&runtime, &plugin, mode(name)).await;
        let failure = ran.failed(kind);
        assert!(failure.message.contains(name), "{}", failure.message);
    }

    let ran = run(&runtime, &plugin, mode(raising)).await;
    ran.failed(FailureKind::Permanent);

    // After all of that, the same runtime still runs a job (a fresh instance each time).
    let ran = run(&runtime, &plugin, mode("ok")).await;
    assert_eq!(ran.ok(), &json!({ "ok": true }));
}

#[tokio::test(flavor = "multi_thread")]
async fn python_every_limit_is_obeyed_and_violated() {
    limits_hold_for("hostile_py", "raise").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn js_every_limit_is_obeyed_and_violated() {
    limits_hold_for("hostile_js", "throw").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_python_exception_reaches_the_client_as_its_traceback() {
    let (runtime, plugin) = cached("hostile_py").await;
    let ran = run(&runtime, &plugin, mode("raise")).await;
    let failure = ran.failed(FailureKind::Permanent);
    for part in [
        "Traceback (most recent call last)",
        "app.py",
        "ValueError: hostile-py raised on purpose",
    ] {
        assert!(
            failure.message.contains(part),
            "{part:?} is not in the message:\n{}",
            failure.message
        );
    }
}

/// A trap no SDK can catch (`os.abort()`) still says what the plugin said: the end of its
/// stderr, where runtimes print their last words, opens the message.
#[tokio::test(flavor = "multi_thread")]
async fn a_python_abort_quotes_what_the_plugin_wrote_to_stderr() {
    let (runtime, plugin) = cached("hostile_py").await;
    let ran = run(&runtime, &plugin, mode("abort")).await;
    let failure = ran.failed(FailureKind::Trap);
    assert!(
        failure
            .message
            .starts_with("fatal: hostile-py gave up\nthe plugin trapped"),
        "{}",
        failure.message
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_js_exception_reaches_the_client_with_its_message_and_stack() {
    let (runtime, plugin) = cached("hostile_js").await;
    let ran = run(&runtime, &plugin, mode("throw")).await;
    let failure = ran.failed(FailureKind::Permanent);
    assert!(
        failure.message.contains("hostile-js threw on purpose"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("job.js") || failure.message.contains("@"),
        "no stack in the message:\n{}",
        failure.message
    );
}

/// Cancels a `loop` job (a loop that never polls `cancelled()`) once it runs; returns
/// how long the host took from the cancel to the end of the attempt.
async fn cancel_stops_the_loop(fixture: &str) -> Duration {
    let (runtime, plugin) = cached(fixture).await;
    let cancel = CancellationToken::new();
    let job = mode("loop")
        .timeout(Duration::from_secs(30))
        .cancel(cancel.clone());
    let started = Instant::now();
    let running = {
        let runtime = runtime.clone();
        let plugin = plugin.clone();
        tokio::spawn(async move { run(&runtime, &plugin, job).await })
    };
    // Long enough for the instance to be made and the loop entered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!running.is_finished(), "the loop ended by itself");
    let cancelled_at = Instant::now();
    cancel.cancel();
    let ran = tokio::time::timeout(GUARD, running)
        .await
        .expect("the job ends")
        .unwrap();
    let took = cancelled_at.elapsed();
    ran.failed(FailureKind::Cancelled);
    eprintln!(
        "{fixture}: cancel took {took:?} (job ran {:?})",
        started.elapsed()
    );
    took
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_python_while_true_loop_within_a_second() {
    let took = cancel_stops_the_loop("hostile_py").await;
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancel_stops_a_js_endless_loop_within_a_second() {
    let took = cancel_stops_the_loop("hostile_js").await;
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
}

/// A pool of 4 instances given 8 Python jobs at once, each waiting on an LLM call: all
/// complete. A Python component is 14 core modules; a pool sized for Rust plugins (4
/// per job) would refuse the second concurrent job.
async fn a_full_pool_runs(fixture: &str) {
    let (runtime, plugin) = cached_pool(fixture, 4).await;
    let jobs = (0..8).map(|_| {
        let runtime = runtime.clone();
        let plugin = plugin.clone();
        tokio::spawn(async move { run(&runtime, &plugin, mode("llm").latency_ms(300)).await })
    });
    for job in futures::future::join_all(jobs).await {
        assert_eq!(job.unwrap().ok()["ok"], true);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pool_of_python_jobs_runs_at_once() {
    a_full_pool_runs("hostile_py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_pool_of_js_jobs_runs_at_once() {
    a_full_pool_runs("hostile_js").await;
}

/// Follows one `job_type` job of `count` items over SSE to its end and checks what a
/// client sees: a stage message per step, a partial per item, streamed tokens, a result
/// of `count` objects with exactly `fields`, in that order.
async fn streams_to_the_end(
    kiln: &InProcess,
    job_type: &str,
    item: &str,
    fields: &[&str],
    stages: &[&str],
) {
    let count = 2;
    let id = submit_ok(
        &kiln.client,
        &kiln.base,
        json!({"type": job_type, "payload": {"theme": "a drowned lighthouse", "count": count}}),
    )
    .await;
    let events = all_events(&kiln.client, &kiln.base, &id, Duration::from_secs(120)).await;
    let shown = format!("{events:#?}");
    assert_eq!(
        events.last().map(|e| e.event.as_str()),
        Some("completed"),
        "{shown}"
    );
    let messages: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "progress")
        .filter_map(|e| e.data["message"].as_str())
        .collect();
    for stage in stages {
        let expected = format!("{stage} ({count}/{count})");
        assert!(
            messages.contains(&expected.as_str()),
            "no {expected:?}: {shown}"
        );
    }
    let partials: Vec<&str> = events
        .iter()
        .filter(|e| e.event == "partial")
        .filter_map(|e| e.data["name"].as_str())
        .collect();
    assert_eq!(
        partials,
        [format!("{item}-1"), format!("{item}-2")],
        "{shown}"
    );
    let labels: std::collections::BTreeSet<&str> = events
        .iter()
        .filter(|e| e.event == "token")
        .filter_map(|e| e.data["label"].as_str())
        .collect();
    assert!(
        labels.len() >= count * fields.len(),
        "every call streams under its own label: {labels:?}"
    );
    let job = wait_terminal(&kiln.client, &kiln.base, &id, Duration::from_secs(10)).await;
    let items = job["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{job:#}"));
    assert_eq!(items.len(), count, "{job:#}");
    for item in items {
        // Exactly these fields, in the order the plugin wrote them.
        let keys: Vec<&str> = item
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, fields, "{item:#}");
        for field in fields {
            assert!(
                item[*field].as_str().is_some_and(|t| !t.trim().is_empty()),
                "{field} is empty: {item:#}"
            );
        }
    }
    assert_eq!(
        job["usage"]["llm_calls"].as_u64(),
        Some((count * fields.len()) as u64),
        "{job:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn settings_in_python_and_relics_in_js_stream_to_the_end_over_sse() {
    let kiln = InProcess::start_cached(&["settings", "relics"], "").await;
    let (status, plugins) = get_json(&kiln.client, &kiln.url("/v1/plugins")).await;
    assert_eq!(status, 200, "{plugins:#}");
    streams_to_the_end(
        &kiln,
        "settings",
        "setting",
        &[
            "name",
            "landscape",
            "culture",
            "history",
            "economy",
            "summary",
        ],
        &[
            "Generated names",
            "Generated landscapes",
            "Generated cultures",
            "Generated histories",
            "Generated economies",
            "Generated summaries",
        ],
    )
    .await;
    streams_to_the_end(
        &kiln,
        "relics",
        "relic",
        &["name", "description", "history"],
        &[
            "Generated names",
            "Generated descriptions",
            "Generated histories",
        ],
    )
    .await;
}

/// The SDKs' own tests and the bundled Python and JavaScript projects' unit tests, each in
/// its language's runner (natively, on the SDK's fake host), as their authors run them.
#[test]
fn the_sdks_and_the_bundled_projects_pass_their_own_unit_tests() {
    let plugins = repo_root().join("plugins");
    let suites: [(&str, &[&str]); 6] = [
        // The Python SDK's tests use the bindings `kiln plugin build` wrote for `settings`.
        (
            "settings",
            &[
                "python3",
                "-m",
                "unittest",
                "discover",
                "-s",
                "../sdk-python/tests",
            ],
        ),
        ("settings", &["python3", "-m", "unittest"]),
        ("fixtures/hostile-py", &["python3", "-m", "unittest"]),
        ("relics", &["node", "--test", "../sdk-js/tests/sdk.spec.js"]),
        ("relics", &["npm", "test"]),
        ("fixtures/hostile-js", &["npm", "test"]),
    ];
    for (folder, command) in suites {
        let output = std::process::Command::new(command[0])
            .args(&command[1..])
            .current_dir(plugins.join(folder))
            .output()
            .unwrap_or_else(|e| panic!("{command:?} in plugins/{folder}: {e}"));
        assert!(
            output.status.success(),
            "{command:?} in plugins/{folder} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
