//! The `openai` and `anthropic` providers against the fake provider on loopback
//! (`fake_provider.rs`): both wire formats whole and streamed, the error mapping and
//! retries, and each admission limit obeyed and violated. Providers are built the way
//! `kiln serve` builds them, from TOML through `Config::resolve`.
//!
//! No assertion depends on how fast the machine is: timeouts are hang guards, and where a
//! limit is shown by a timeout the test configures the timeout far from the wait it
//! provokes (1-2 s against tens of seconds).

use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use futures::future::join_all;
use kiln::config::{Config, Overrides};
use kiln::llm::{
    ApiKey, HttpProvider, HttpProviderConfig, LlmClient, LlmError, LlmRequest, LlmResponse,
    MAX_RATE_LIMIT_RETRIES, Message, Role,
};

use crate::fake_provider::{Behavior, FakeProvider};

/// The key the tests' providers read, from [`KEY_ENV`].
const KEY: &str = "sk-kiln-test-7f3a9c-SECRET-do-not-print";
const KEY_ENV: &str = "KILN_TEST_PROVIDER_KEY";

/// Hang guard for one test's calls.
const GUARD: Duration = Duration::from_secs(60);

fn set_key() {
    static ONCE: Once = Once::new();
    // SAFETY: set once, before any provider reads it, under a name nothing else uses;
    // std serializes its own environment access.
    ONCE.call_once(|| unsafe { std::env::set_var(KEY_ENV, KEY) });
}

/// The LLM client `kiln serve` would build from `[providers.fake]` of `kind` pointing at
/// `fake`, with extra provider settings, and `default` routed to `fake/test-model`.
fn client(kind: &str, fake: &FakeProvider, settings: &str) -> Arc<dyn LlmClient> {
    client_at(kind, &fake.base_url, settings)
}

/// [`client`] with any `base_url`.
fn client_at(kind: &str, base_url: &str, settings: &str) -> Arc<dyn LlmClient> {
    set_key();
    let toml = format!(
        "[providers.fake]\nkind = \"{kind}\"\nbase_url = \"{base_url}\"\napi_key_env = \"{KEY_ENV}\"\n{settings}\n\
         [models]\ndefault = \"fake/test-model\"\n"
    );
    let config: Config = toml::from_str(&toml).expect("config parses");
    config
        .resolve(Overrides::default())
        .expect("config resolves")
        .llm
}

fn ask(content: &str) -> LlmRequest {
    LlmRequest {
        messages: vec![
            Message::new(Role::System, "You are terse."),
            Message::new(Role::User, content),
        ],
        max_tokens: Some(64),
        temperature: Some(0.25),
        ..Default::default()
    }
}

/// Who the calls of these tests come from, as `kiln plugin run`'s do.
const ANONYMOUS: &str = kiln::llm::ANONYMOUS_CALLER;

async fn call(llm: &Arc<dyn LlmClient>, request: &LlmRequest) -> Result<LlmResponse, LlmError> {
    call_as(llm, ANONYMOUS, request).await
}

/// A call by `caller` (a job id, for the admission control's fairness).
async fn call_as(
    llm: &Arc<dyn LlmClient>,
    caller: &str,
    request: &LlmRequest,
) -> Result<LlmResponse, LlmError> {
    tokio::time::timeout(GUARD, llm.complete(caller, request, None))
        .await
        .expect("the call finished (hang guard)")
}

/// A streamed call: the result and the deltas the sink received.
async fn call_streamed(
    llm: &Arc<dyn LlmClient>,
    request: &LlmRequest,
) -> (Result<LlmResponse, LlmError>, Vec<String>) {
    let deltas = Mutex::new(Vec::new());
    let sink = |delta: &str| deltas.lock().unwrap().push(delta.to_string());
    let result = tokio::time::timeout(GUARD, llm.complete(ANONYMOUS, request, Some(&sink)))
        .await
        .expect("the call finished (hang guard)");
    (result, deltas.into_inner().unwrap())
}

fn assert_no_key(text: &str) {
    assert!(!text.contains(KEY), "the key leaked into: {text}");
    assert!(
        !text.contains("SECRET"),
        "part of the key leaked into: {text}"
    );
}

// ---------------------------------------------------------------------------------------
// Wire formats

#[tokio::test]
async fn openai_whole_answer_parses_and_sends_the_key_as_bearer() {
    let fake = FakeProvider::start().await;
    let llm = client("openai", &fake, "");
    let response = call(&llm, &ask("Tell me a story")).await.unwrap();
    let behavior = fake.behavior();
    assert_eq!(response.text, behavior.text());
    assert_eq!(
        (response.input_tokens, response.output_tokens),
        behavior.usage
    );
    assert_eq!(response.model, "test-model");

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/v1/chat/completions");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let body = &seen[0].body;
    assert_eq!(body["model"], "test-model");
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["temperature"], 0.25);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["messages"][1]["content"], "Tell me a story");
    assert!(body.get("stream").is_none(), "{body}");
    assert!(body.get("response_format").is_none(), "{body}");
}

#[tokio::test]
async fn openai_json_output_uses_json_mode() {
    let fake = FakeProvider::start().await;
    let llm = client("openai", &fake, "");
    let mut request = ask("Give stats as JSON");
    request.json_output = true;
    call(&llm, &request).await.unwrap();
    let body = &fake.seen()[0].body;
    assert_eq!(body["response_format"]["type"], "json_object", "{body}");
}

#[tokio::test]
async fn openai_without_a_key_sends_no_auth_header() {
    let fake = FakeProvider::start().await;
    let toml = format!(
        "[providers.local]\nkind = \"openai\"\nbase_url = \"{}\"\n[models]\ndefault = \"local/llama\"\n",
        fake.base_url
    );
    let config: Config = toml::from_str(&toml).unwrap();
    let llm = config.resolve(Overrides::default()).unwrap().llm;
    call(&llm, &ask("hi")).await.unwrap();
    let seen = &fake.seen()[0];
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.body["model"], "llama");
}

#[tokio::test]
async fn anthropic_whole_answer_parses_and_sends_its_headers() {
    let fake = FakeProvider::start().await;
    let llm = client("anthropic", &fake, "");
    let mut request = ask("Tell me a story");
    request.max_tokens = None;
    let response = call(&llm, &request).await.unwrap();
    let behavior = fake.behavior();
    assert_eq!(response.text, behavior.text());
    assert_eq!(
        (response.input_tokens, response.output_tokens),
        behavior.usage
    );

    let seen = &fake.seen()[0];
    assert_eq!(seen.path, "/v1/messages");
    assert_eq!(seen.header("x-api-key"), Some(KEY));
    assert_eq!(seen.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(seen.header("authorization"), None);
    let body = &seen.body;
    assert_eq!(body["system"], "You are terse.");
    assert_eq!(
        body["max_tokens"], 1024,
        "the default when the request has none"
    );
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(
        messages.len(),
        1,
        "system messages are not in messages: {body}"
    );
    assert_eq!(messages[0]["role"], "user");
}

#[tokio::test]
async fn anthropic_takes_its_base_url_with_or_without_v1() {
    let fake = FakeProvider::start().await;
    // The Anthropic SDKs' form (no /v1), with a trailing slash, and Kiln's (with /v1).
    let root = fake.base_url.strip_suffix("/v1").unwrap().to_string();
    for base in [root.clone(), format!("{root}/"), fake.base_url.clone()] {
        let llm = client_at("anthropic", &base, "");
        let response = call(&llm, &ask("hi"))
            .await
            .unwrap_or_else(|e| panic!("base_url {base}: {e:?}"));
        assert_eq!(response.text, fake.behavior().text(), "{base}");
    }
    let paths: Vec<String> = fake.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/v1/messages"; 3]);
}

#[tokio::test]
async fn a_404_names_the_url_it_tried_and_the_base_url_expected() {
    let fake = FakeProvider::start().await;
    let root = fake.base_url.strip_suffix("/v1").unwrap().to_string();
    // The openai kind takes its base_url as given: without /v1 the endpoint is not found.
    let llm = client_at("openai", &root, "");
    let err = call(&llm, &ask("hi")).await.unwrap_err();
    let LlmError::Rejected(message) = &err else {
        panic!("expected rejected, got {err:?}");
    };
    assert!(
        message.contains(&format!("for {root}/chat/completions")),
        "{message}"
    );
    assert!(message.contains("404"), "{message}");
    assert!(message.contains("including /v1"), "{message}");
    assert_no_key(message);
    assert_eq!(fake.calls(), 1, "a 404 is not retried");

    // The doctor's probe says the same of the URL it tried; user info never shows.
    let with_user = root.replace("http://", "http://someone:hunter2@");
    let mut config = HttpProviderConfig::new("nope");
    config.base_url = Some(with_user);
    config.api_key = Some(ApiKey::new(KEY));
    let provider = HttpProvider::openai(config).unwrap();
    let err = tokio::time::timeout(GUARD, provider.probe())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.contains(&format!("for {root}/models")), "{err}");
    assert!(
        !err.contains("hunter2") && !err.contains("someone"),
        "{err}"
    );
    assert_no_key(&err);
    // With /v1 the same probe reaches the endpoint.
    let mut config = HttpProviderConfig::new("yes");
    config.base_url = Some(fake.base_url.clone());
    let provider = HttpProvider::openai(config).unwrap();
    tokio::time::timeout(GUARD, provider.probe())
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn anthropic_json_output_is_asked_for_in_the_system_prompt() {
    let fake = FakeProvider::start().await;
    let llm = client("anthropic", &fake, "");
    let mut request = ask("Give stats");
    request.json_output = true;
    call(&llm, &request).await.unwrap();
    let body = &fake.seen()[0].body;
    let system = body["system"].as_str().unwrap();
    assert!(system.starts_with("You are terse."), "{system}");
    assert!(system.contains("JSON object"), "{system}");
    assert!(body.get("response_format").is_none());
}

async fn streams_in_order(kind: &str) {
    let fake = FakeProvider::start().await;
    let llm = client(kind, &fake, "");
    let mut request = ask("Stream a story");
    request.stream_label = Some("story".into());
    let (result, deltas) = call_streamed(&llm, &request).await;
    let response = result.unwrap();
    let behavior = fake.behavior();
    assert_eq!(
        deltas, behavior.deltas,
        "deltas arrive in order, one per chunk"
    );
    assert_eq!(deltas.concat(), response.text);
    assert_eq!(
        (response.input_tokens, response.output_tokens),
        behavior.usage
    );
    let body = &fake.seen()[0].body;
    assert_eq!(body["stream"], true);
    if kind == "openai" {
        assert_eq!(body["stream_options"]["include_usage"], true);
    }
}

#[tokio::test]
async fn openai_streams_deltas_in_order() {
    streams_in_order("openai").await;
}

#[tokio::test]
async fn anthropic_streams_deltas_in_order() {
    streams_in_order("anthropic").await;
}

// ---------------------------------------------------------------------------------------
// Errors and retries

#[tokio::test]
async fn rate_limited_once_is_retried_after_the_delay() {
    for kind in ["openai", "anthropic"] {
        let fake = FakeProvider::with(Behavior {
            fail_first: 1,
            first_status: 429,
            retry_after: "1".into(),
            ..Default::default()
        })
        .await;
        let llm = client(kind, &fake, "");
        let response = call(&llm, &ask("hi")).await.unwrap();
        assert_eq!(response.text, fake.behavior().text());
        assert_eq!(fake.calls(), 2, "{kind}: one 429, then the answer");
    }
}

#[tokio::test]
async fn rate_limited_forever_ends_rate_limited_after_bounded_retries() {
    let fake = FakeProvider::with(Behavior {
        status_always: Some(429),
        retry_after: "0".into(),
        ..Default::default()
    })
    .await;
    let llm = client("openai", &fake, "");
    let err = call(&llm, &ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::RateLimited(_)), "{err:?}");
    assert_eq!(fake.calls(), 1 + MAX_RATE_LIMIT_RETRIES as usize);
}

#[tokio::test]
async fn retry_after_beyond_the_timeout_fails_at_once() {
    let fake = FakeProvider::with(Behavior {
        status_always: Some(429),
        retry_after: "600".into(),
        ..Default::default()
    })
    .await;
    let llm = client("openai", &fake, "timeout_s = 30");
    let err = call(&llm, &ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::RateLimited(_)), "{err:?}");
    assert_eq!(fake.calls(), 1, "no retry that could not finish in time");
}

#[tokio::test]
async fn server_errors_are_retried_twice() {
    let fake = FakeProvider::with(Behavior {
        fail_first: 2,
        first_status: 500,
        ..Default::default()
    })
    .await;
    let llm = client("anthropic", &fake, "");
    call(&llm, &ask("hi")).await.unwrap();
    assert_eq!(fake.calls(), 3);

    let fake = FakeProvider::with(Behavior {
        status_always: Some(500),
        ..Default::default()
    })
    .await;
    let llm = client("openai", &fake, "");
    let err = call(&llm, &ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::Unavailable(_)), "{err:?}");
    assert_eq!(fake.calls(), 3, "the first try and two retries");
}

#[tokio::test]
async fn bad_requests_are_rejected_without_retry() {
    let fake = FakeProvider::with(Behavior {
        status_always: Some(400),
        error_body: Some(r#"{"error":{"message":"model not found"}}"#.into()),
        ..Default::default()
    })
    .await;
    let llm = client("openai", &fake, "");
    let err = call(&llm, &ask("hi")).await.unwrap_err();
    match &err {
        LlmError::Rejected(message) => assert!(message.contains("model not found"), "{message}"),
        other => panic!("expected rejected, got {other:?}"),
    }
    assert_eq!(fake.calls(), 1);
}

#[tokio::test]
async fn malformed_bodies_are_unavailable() {
    for kind in ["openai", "anthropic"] {
        let fake = FakeProvider::with(Behavior {
            malformed: true,
            ..Default::default()
        })
        .await;
        let llm = client(kind, &fake, "");
        let err = call(&llm, &ask("hi")).await.unwrap_err();
        match &err {
            LlmError::Unavailable(message) => {
                assert!(message.contains("could not be decoded"), "{message}")
            }
            other => panic!("{kind}: expected unavailable, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn slow_answers_time_out() {
    let fake = FakeProvider::with(Behavior {
        delay_ms: 30_000,
        ..Default::default()
    })
    .await;
    let llm = client("openai", &fake, "timeout_s = 1");
    let err = call(&llm, &ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::Timeout(_)), "{err:?}");
}

#[tokio::test]
async fn the_timeout_covers_the_whole_stream() {
    let fake = FakeProvider::with(Behavior {
        chunk_delay_ms: 30_000,
        ..Default::default()
    })
    .await;
    let llm = client("anthropic", &fake, "timeout_s = 1");
    let mut request = ask("hi");
    request.stream_label = Some("s".into());
    let (result, _) = call_streamed(&llm, &request).await;
    let err = result.unwrap_err();
    assert!(matches!(err, LlmError::Timeout(_)), "{err:?}");
}

#[tokio::test]
async fn an_unreachable_provider_is_unavailable() {
    // A port that was free a moment ago: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let toml = format!(
        "[providers.gone]\nkind = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n\
         [models]\ndefault = \"gone/m\"\n"
    );
    let config: Config = toml::from_str(&toml).unwrap();
    let llm = config.resolve(Overrides::default()).unwrap().llm;
    let err = call(&llm, &ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn an_unknown_alias_is_rejected() {
    let fake = FakeProvider::start().await;
    let llm = client("openai", &fake, "");
    let mut request = ask("hi");
    request.model = Some("no-such-alias".into());
    let err = call(&llm, &request).await.unwrap_err();
    match err {
        LlmError::Rejected(message) => assert!(message.contains("no-such-alias"), "{message}"),
        other => panic!("expected rejected, got {other:?}"),
    }
    assert_eq!(fake.calls(), 0);
}

// ---------------------------------------------------------------------------------------
// Admission control

async fn peak_in_flight(max_concurrent: usize) -> usize {
    let fake = FakeProvider::with(Behavior {
        delay_ms: 400,
        ..Default::default()
    })
    .await;
    let llm = client(
        "openai",
        &fake,
        &format!("max_concurrent = {max_concurrent}"),
    );
    let requests: Vec<LlmRequest> = (0..10).map(|i| ask(&format!("call {i}"))).collect();
    let results = join_all(requests.iter().map(|r| call(&llm, r))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(fake.calls(), 10);
    fake.max_in_flight()
}

#[tokio::test]
async fn max_concurrent_holds() {
    assert_eq!(
        peak_in_flight(2).await,
        2,
        "obeyed: never more than 2 at once"
    );
}

#[tokio::test]
async fn without_the_limit_more_run_at_once() {
    let peak = peak_in_flight(10).await;
    assert!(peak > 2, "violated: 10 allowed, peak {peak}");
}

#[tokio::test]
async fn requests_per_minute_holds() {
    // Obeyed: 3 requests in a minute with 3 allowed all go through.
    let fake = FakeProvider::start().await;
    let llm = client("openai", &fake, "requests_per_minute = 3\ntimeout_s = 30");
    let requests: Vec<LlmRequest> = (0..3).map(|i| ask(&format!("call {i}"))).collect();
    let results = join_all(requests.iter().map(|r| call(&llm, r))).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    // Violated: the 4th would wait about 20 s for the bucket; with a 2 s timeout it is
    // refused as rate limited, and the fake never sees it.
    let fake = FakeProvider::start().await;
    let llm = client("openai", &fake, "requests_per_minute = 3\ntimeout_s = 2");
    let requests: Vec<LlmRequest> = (0..4).map(|i| ask(&format!("call {i}"))).collect();
    let results = join_all(requests.iter().map(|r| call(&llm, r))).await;
    let ok = results.iter().filter(|r| r.is_ok()).count();
    let limited = results
        .iter()
        .filter(|r| matches!(r, Err(LlmError::RateLimited(_))))
        .count();
    assert_eq!((ok, limited), (3, 1), "{results:?}");
    assert_eq!(fake.calls(), 3);
}

#[tokio::test]
async fn tokens_per_minute_holds_and_is_corrected_by_usage() {
    // 100 tokens a minute. The first call reserves ~64 + its input, but the fake reports
    // 11 + 5 used, so the bucket gets the difference back.
    let fake = FakeProvider::start().await;
    let llm = client("openai", &fake, "tokens_per_minute = 100\ntimeout_s = 2");
    call(&llm, &ask("hi")).await.unwrap();
    // Obeyed: another ~75-token reservation fits only because the first was corrected.
    call(&llm, &ask("hi")).await.unwrap();
    // Violated: a request reserving 90 output tokens does not fit in what is left and
    // would wait far longer than the 2 s timeout.
    let mut big = ask("hi");
    big.max_tokens = Some(90);
    let err = call(&llm, &big).await.unwrap_err();
    assert!(matches!(err, LlmError::RateLimited(_)), "{err:?}");
    assert_eq!(fake.calls(), 2);
}

#[tokio::test]
async fn a_rate_limit_pauses_the_whole_provider() {
    // The first call gets a 429 with Retry-After: 2. A second call sent while that pause
    // holds waits for it too instead of reaching the provider: it arrives at least the
    // pause after the first call did (a lower bound that a slow machine cannot break).
    let fake = FakeProvider::with(Behavior {
        fail_first: 1,
        first_status: 429,
        retry_after: "2".into(),
        ..Default::default()
    })
    .await;
    let llm = client("openai", &fake, "");
    let llm_first = llm.clone();
    let first_call = tokio::spawn(async move { call(&llm_first, &ask("first")).await });
    let guard = tokio::time::Instant::now() + GUARD;
    while fake.calls() < 1 && tokio::time::Instant::now() < guard {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Let the client read the 429 (without the pause, the second call goes out now).
    tokio::time::sleep(Duration::from_millis(200)).await;
    call(&llm, &ask("second")).await.unwrap();
    first_call.await.unwrap().unwrap();
    let seen = fake.seen();
    assert_eq!(seen.len(), 3);
    let first_at = seen[0].at;
    let second = seen
        .iter()
        .find(|s| s.body["messages"][1]["content"] == "second")
        .unwrap();
    assert!(
        second.at.duration_since(first_at) >= Duration::from_millis(1900),
        "the second call reached the provider during the pause"
    );
}

#[tokio::test]
async fn callers_take_turns() {
    // One slot. Caller A submits 20 requests at once; caller B one request just after.
    // B must not wait behind all of A's: it is served before A's last 10.
    let fake = FakeProvider::with(Behavior {
        delay_ms: 20,
        ..Default::default()
    })
    .await;
    let llm = client("openai", &fake, "max_concurrent = 1");
    let llm_a = llm.clone();
    let a = tokio::spawn(async move {
        let requests: Vec<LlmRequest> = (0..20).map(|i| ask(&format!("a{i}"))).collect();
        join_all(requests.iter().map(|r| call_as(&llm_a, "job-a", r))).await
    });
    // All of A's requests are in line once the first reached the fake.
    let guard = tokio::time::Instant::now() + GUARD;
    while fake.calls() < 1 && tokio::time::Instant::now() < guard {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let b = call_as(&llm, "job-b", &ask("b0")).await;
    b.unwrap();
    assert!(a.await.unwrap().iter().all(Result::is_ok));
    let order: Vec<String> = fake
        .seen()
        .iter()
        .map(|s| {
            s.body["messages"][1]["content"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(order.len(), 21);
    let b_at = order.iter().position(|c| c == "b0").unwrap();
    assert!(b_at < 10, "B was served at position {b_at}: {order:?}");
}

// ---------------------------------------------------------------------------------------
// Keys

#[test]
fn a_missing_key_variable_is_a_config_error_naming_it() {
    let toml =
        "[providers.p]\nkind = \"anthropic\"\napi_key_env = \"KILN_TEST_SURELY_UNSET_KEY_VAR\"\n";
    let config: Config = toml::from_str(toml).unwrap();
    let err = format!("{:#}", config.resolve(Overrides::default()).err().unwrap());
    assert!(err.contains("KILN_TEST_SURELY_UNSET_KEY_VAR"), "{err}");
    assert!(err.contains("not set"), "{err}");
}

#[test]
fn unknown_kinds_are_config_errors() {
    let config: Config = toml::from_str("[providers.p]\nkind = \"gemini\"\n").unwrap();
    let err = format!("{:#}", config.resolve(Overrides::default()).err().unwrap());
    assert!(err.contains("gemini") && err.contains("openai"), "{err}");
}

#[tokio::test]
async fn the_key_never_appears_in_errors_or_debug_output() {
    // A provider that echoes the key back in its error bodies, as some do.
    let echo = format!(r#"{{"error":{{"message":"Incorrect API key provided: {KEY}"}}}}"#);
    let mut messages = Vec::new();
    for (status, kind) in [
        (401, "openai"),
        (400, "openai"),
        (500, "anthropic"),
        (429, "openai"),
    ] {
        let fake = FakeProvider::with(Behavior {
            status_always: Some(status),
            retry_after: "0".into(),
            error_body: Some(echo.clone()),
            ..Default::default()
        })
        .await;
        let llm = client(kind, &fake, "");
        let err = call(&llm, &ask("hi")).await.unwrap_err();
        messages.push(format!("{err} {err:?}"));
        if status == 401 {
            assert!(
                matches!(err, LlmError::Rejected(ref m) if m.contains(KEY_ENV)),
                "401 names the variable: {err:?}"
            );
        }
    }
    let mut config = HttpProviderConfig::new("p");
    config.api_key = Some(ApiKey::new(KEY));
    messages.push(format!(
        "{:?}",
        HttpProvider::openai(config.clone()).unwrap()
    ));
    messages.push(format!(
        "{:?}",
        HttpProvider::anthropic(config.clone()).unwrap()
    ));
    messages.push(format!("{config:?}"));
    for message in &messages {
        assert_no_key(message);
    }
}
