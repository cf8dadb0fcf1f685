//! Property-based fuzzing (proptest) against one real Kiln per property, in this process,
//! over real HTTP on loopback:
//!
//! - request parsing: generated `POST /v1/jobs` requests (arbitrary bytes, mutations of a
//!   valid submit body, oversized bodies, content types, `?wait=` and other query strings,
//!   `Idempotency-Key`s), `GET /v1/jobs` query strings, job ids in every `/v1/jobs/{id}`
//!   route, `Last-Event-ID`s. No answer is a 5xx, every 4xx is the one error shape, a 2xx
//!   submit created the job that `GET` then returns, and the server still serves at the end.
//! - event-log replay: a job's stream resumed at a generated position (header or query; in
//!   the log, past its end, any u64, blank, malformed; finished jobs, running ones after a
//!   real disconnect, one waiting to start) gives exactly the events after it, in order,
//!   with no gap and no duplicate; or `204` when nothing follows a finished job; or `400`
//!   for a malformed id or one beyond the log of a job not over.
//!
//! Each property runs `PROPTEST_CASES` cases (default 256); a failure prints the smallest
//! failing input it found and the `PROPTEST_RNG_SEED` that generates the same inputs.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, RngSeed, TestCaseResult, TestRunner};
use reqwest::Url;
use reqwest::header::{CONTENT_TYPE, HeaderValue};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::*;

/// Bodies larger than this are refused (`413`); small, so oversized bodies are cheap.
const BODY_LIMIT: usize = 4096;

/// The longest `?wait=`; short, so a generated wait on a job scheduled for later is short.
const MAX_WAIT_SECS: u64 = 1;

/// Hang guard for one request (never a performance bound).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------------------
// The properties.

#[test]
fn submit_requests_never_fail_the_server() {
    let fuzz = Fuzz::start(&format!(
        "max_body_bytes = {BODY_LIMIT}\nmax_wait_secs = {MAX_WAIT_SECS}"
    ));
    fuzz.check(submit_case(), check_submit);
}

#[test]
fn job_routes_and_queries_never_fail_the_server() {
    let fuzz = Fuzz::start("");
    let done = fuzz.runtime.block_on(seed_jobs(&fuzz.kiln));
    fuzz.check(route_case(), async |kiln, case| {
        check_route(kiln, done, case).await
    });
}

#[test]
fn resuming_a_stream_replays_exactly_the_events_after_the_id() {
    let fuzz = Fuzz::start("");
    let jobs = Jobs {
        finished: RefCell::default(),
        waiting: fuzz.runtime.block_on(waiting_job(&fuzz.kiln)),
    };
    fuzz.check(resume_case(), async |kiln, case| {
        check_resume(kiln, &jobs, case).await
    });
}

/// A property's server, and the runtime that drives it during and between cases.
struct Fuzz {
    runtime: tokio::runtime::Runtime,
    kiln: InProcess,
}

impl Fuzz {
    /// Starts Kiln with every test component and `extra_config`.
    fn start(extra_config: &str) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let kiln = runtime.block_on(kiln(extra_config));
        Self { runtime, kiln }
    }

    /// Runs `property` on `PROPTEST_CASES` generated inputs (default 256), panicking with the
    /// smallest failing input; then checks that the server still serves, and stops it.
    fn check<S: Strategy>(
        self,
        strategy: S,
        property: impl AsyncFn(&InProcess, S::Value) -> TestCaseResult,
    ) {
        // A seed of our own (unless PROPTEST_RNG_SEED gives one), so a failure can say how
        // to generate the same inputs again; no regression files in the source tree.
        let seed = match Config::default().rng_seed {
            RngSeed::Fixed(seed) => seed,
            RngSeed::Random => Uuid::new_v4().as_u64_pair().0,
        };
        let config = Config {
            rng_seed: RngSeed::Fixed(seed),
            failure_persistence: None,
            max_shrink_iters: 1024,
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        let result = runner.run(&strategy, |input| {
            self.runtime.block_on(property(&self.kiln, input))
        });
        if let Err(failure) = result {
            panic!("{failure}\nThe same inputs again: PROPTEST_RNG_SEED={seed}");
        }
        self.runtime.block_on(async {
            still_serves(&self.kiln).await;
            self.kiln.stop().await;
        });
    }
}

/// `/healthz` answers and a new job runs to completion.
async fn still_serves(kiln: &InProcess) {
    let (status, health) = get_json(&kiln.client, &kiln.url("/healthz")).await;
    assert_eq!(status, 200, "after fuzzing, /healthz: {health}");
    let (status, job) = submit(&kiln.client, &kiln.base, json!({"type": "noop"})).await;
    assert_eq!(status, 202, "after fuzzing, a submit: {job:#}");
    let job = wait_terminal(&kiln.client, &kiln.base, &id_of(&job), LONG).await;
    assert_eq!(job["status"], "completed", "after fuzzing, a job: {job:#}");
}

// ---------------------------------------------------------------------------------------
// Answers and the error shape.

/// Bytes shown escaped in failure reports.
#[derive(Clone)]
struct Blob(Vec<u8>);

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// An answer with its body read.
struct Answer {
    status: u16,
    content_type: String,
    replayed: bool,
    body: Vec<u8>,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let shown = &self.body[..self.body.len().min(600)];
        write!(
            f,
            "{} ({}) {}",
            self.status,
            self.content_type,
            shown.escape_ascii()
        )
    }
}

impl Answer {
    fn json(&self) -> Result<Value, TestCaseError> {
        serde_json::from_slice(&self.body)
            .map_err(|e| TestCaseError::fail(format!("the body is not JSON ({e}): {self:?}")))
    }
}

/// Sends `request` and reads the whole answer; no answer at all is a failure.
async fn send(request: reqwest::RequestBuilder) -> Result<Answer, TestCaseError> {
    let response = request
        .timeout(REQUEST_TIMEOUT)
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer: {e:?}")))?;
    read_answer(response).await
}

async fn read_answer(response: reqwest::Response) -> Result<Answer, TestCaseError> {
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let content_type = header(CONTENT_TYPE.as_str());
    let replayed = header("idempotent-replayed") == "true";
    let status = response.status().as_u16();
    let body = response
        .bytes()
        .await
        .map_err(|e| TestCaseError::fail(format!("the body broke off: {e:?}")))?
        .to_vec();
    Ok(Answer {
        status,
        content_type,
        replayed,
        body,
    })
}

/// Never a 5xx; a 4xx is JSON of exactly `{"error": {"kind": string, "message": string}}`
/// (plus `violations` for a payload failing its schema). Returns the error's kind.
fn check_shape(answer: &Answer) -> Result<Option<String>, TestCaseError> {
    prop_assert!(answer.status < 500, "a server error: {answer:?}");
    if answer.status < 400 {
        return Ok(None);
    }
    prop_assert!(
        answer.content_type.starts_with("application/json"),
        "an error that is not JSON: {answer:?}"
    );
    let body = answer.json()?;
    let error = &body["error"];
    prop_assert!(
        body.as_object().is_some_and(|o| o.len() == 1)
            && error["kind"].is_string()
            && error["message"].is_string(),
        "not the error shape: {answer:?}"
    );
    Ok(error["kind"].as_str().map(str::to_string))
}

// ---------------------------------------------------------------------------------------
// Generated pieces of requests.

/// Percent-encodes every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`).
fn encode(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Bytes a header value may hold (tab, visible ASCII, space, obs-text).
fn header_bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Blob> {
    vec(any::<u8>(), len).prop_map(|bytes| {
        Blob(
            bytes
                .into_iter()
                .filter(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
                .collect(),
        )
    })
}

fn header_value(blob: &Blob) -> Result<HeaderValue, TestCaseError> {
    HeaderValue::from_bytes(&blob.0)
        .map_err(|e| TestCaseError::fail(format!("bad generated header {blob:?}: {e}")))
}

const QUERY_WORDS: &[&str] = &[
    "queued",
    "running",
    "completed",
    "failed",
    "cancelled",
    "Queued",
    "noop",
    "characters",
    "hostile",
    "0",
    "1",
    "20",
    "100",
    "101",
    "-1",
    "18446744073709551615",
    "18446744073709551616",
    "1.5",
    "1e3",
    "NaN",
    "inf",
    "-0",
    " 5",
    "",
    "null",
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-ffffffffffff",
];

/// A query value as sent (percent-encoded, or raw with stray `%`, `+`, `&`, `=`).
fn query_value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => select(QUERY_WORDS).prop_map(|w| encode(w.as_bytes())),
        1 => any::<u64>().prop_map(|n| n.to_string()),
        1 => any::<i64>().prop_map(|n| n.to_string()),
        1 => any::<f64>().prop_map(|f| encode(f.to_string().as_bytes())),
        1 => any::<u128>().prop_map(|n| Uuid::from_u128(n).to_string()),
        1 => any::<String>().prop_map(|s| encode(s.as_bytes())),
        1 => vec(any::<u8>(), 0..8).prop_map(|b| encode(&b)),
        1 => r#"[!-"$-~]{0,10}"#,
    ]
}

/// A query string of up to four `key=value` (or bare `key`) parts; keys mostly `keys`.
fn query(keys: &'static [&'static str]) -> impl Strategy<Value = String> {
    let key = prop_oneof![
        4 => select(keys).prop_map(str::to_string),
        1 => "\\PC{0,6}".prop_map(|k| encode(k.as_bytes())),
    ];
    vec((key, proptest::option::of(query_value())), 0..4).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(key, value)| match value {
                Some(value) => format!("{key}={value}"),
                None => key,
            })
            .collect::<Vec<_>>()
            .join("&")
    })
}

/// `path?query`, or `path` for an empty query.
fn with_query(path: &str, query: &str) -> String {
    if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    }
}

/// The query's decoded `key=value` pairs, as the server's form decoder reads them.
fn pairs(url: &Url) -> Vec<(String, String)> {
    url.query_pairs().into_owned().collect()
}

// ---------------------------------------------------------------------------------------
// POST /v1/jobs.

#[derive(Clone, Debug)]
struct SubmitCase {
    body: Blob,
    content_type: Option<Blob>,
    query: String,
    idempotency_key: Option<Blob>,
}

fn submit_case() -> impl Strategy<Value = SubmitCase> {
    let content_type = prop_oneof![
        8 => Just(Some(Blob(b"application/json".to_vec()))),
        2 => select(&[
            "application/json; charset=utf-8",
            "Application/JSON",
            " application/json ",
            "application/json;",
            "application/json,text/plain",
            "application/jsonx",
            "application/problem+json",
            "text/json",
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "*/*",
            "",
        ][..])
        .prop_map(|ct| Some(Blob(ct.as_bytes().to_vec()))),
        1 => Just(None),
        1 => header_bytes(0..40).prop_map(Some),
    ];
    let wait = prop_oneof![
        2 => (0.0..=MAX_WAIT_SECS as f64 + 0.5).prop_map(|w| w.to_string()),
        1 => any::<f64>().prop_map(|w| w.to_string()),
        1 => select(&["0", "-0", "-1", "1e-320", "1e999", "NaN", "inf", "0x1", " 1", "", "1_0"][..])
            .prop_map(str::to_string),
    ];
    let submit_query = prop_oneof![
        4 => Just(String::new()),
        2 => wait.prop_map(|w| format!("wait={}", encode(w.as_bytes()))),
        1 => query(&["wait"]),
    ];
    let idempotency_key = prop_oneof![
        6 => Just(None),
        1 => header_bytes(0..300).prop_map(Some),
    ];
    (submit_body(), content_type, submit_query, idempotency_key).prop_map(
        |(body, content_type, query, idempotency_key)| SubmitCase {
            body: Blob(body),
            content_type,
            query,
            idempotency_key,
        },
    )
}

fn submit_body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        6 => near_valid_body(),
        2 => vec(any::<u8>(), 0..300),
        1 => json_value().prop_map(|v| v.to_string().into_bytes()),
        1 => (0..2 * BODY_LIMIT).prop_map(|len| {
            json!({"type": "noop", "payload": {"pad": "x".repeat(len)}})
                .to_string()
                .into_bytes()
        }),
    ]
}

/// A change to a valid submit body.
#[derive(Clone, Debug)]
enum Edit {
    /// Removes a field of the body, or of its payload.
    Remove { in_payload: bool, field: Index },
    /// Sets a field of the body or of its payload (an existing one, or by name) to `value`.
    Set {
        in_payload: bool,
        field: Field,
        value: Junk,
    },
}

#[derive(Clone, Debug)]
enum Field {
    Existing(Index),
    Named(String),
}

/// A value to put in a body: any JSON value, or text that is not (quite) JSON.
#[derive(Clone, Debug)]
enum Junk {
    Json(Value),
    Raw(String),
}

/// What happens to the serialized body last.
#[derive(Clone, Debug)]
enum Damage {
    None,
    Truncate(Index),
    Splice(Index, u8),
}

/// Valid submit bodies, mutated: fields removed, added or set to values of the wrong type,
/// huge or negative numbers, unicode, not-quite-JSON, then maybe truncated or spliced.
fn near_valid_body() -> impl Strategy<Value = Vec<u8>> {
    let valid = select(vec![
        json!({"type": "noop", "payload": {}}),
        json!({"type": "noop", "payload": {"note": "ünïcödé ✓"}, "priority": 10,
               "max_attempts": 2, "timeout_s": 30}),
        json!({"type": "characters", "payload": {"theme": "lighthouse keepers", "count": 1}}),
        json!({"type": "noop", "run_at": "2000-01-01T00:00:00Z"}),
    ]);
    let field = prop_oneof![
        2 => any::<Index>().prop_map(Field::Existing),
        2 => select(&[
            "type", "payload", "priority", "max_attempts", "timeout_s", "run_at", "theme",
            "count", "extra",
        ][..])
        .prop_map(|name| Field::Named(name.to_string())),
        1 => any::<String>().prop_map(Field::Named),
    ];
    let edit = prop_oneof![
        1 => (any::<bool>(), any::<Index>())
            .prop_map(|(in_payload, field)| Edit::Remove { in_payload, field }),
        3 => (any::<bool>(), field, junk()).prop_map(|(in_payload, field, value)| Edit::Set {
            in_payload,
            field,
            value,
        }),
    ];
    let damage = prop_oneof![
        6 => Just(Damage::None),
        1 => any::<Index>().prop_map(Damage::Truncate),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(at, byte)| Damage::Splice(at, byte)),
    ];
    (valid, vec(edit, 0..4), damage)
        .prop_map(|(body, edits, damage)| mutated(body, &edits, &damage))
}

fn mutated(mut body: Value, edits: &[Edit], damage: &Damage) -> Vec<u8> {
    let mut raw = Vec::new();
    for edit in edits {
        let (Edit::Remove { in_payload, .. } | Edit::Set { in_payload, .. }) = edit;
        let object = match body.get_mut("payload") {
            Some(Value::Object(payload)) if *in_payload => payload,
            _ => body.as_object_mut().expect("bodies are objects"),
        };
        match edit {
            Edit::Remove { field, .. } => {
                if !object.is_empty() {
                    let key = object
                        .keys()
                        .nth(field.index(object.len()))
                        .unwrap()
                        .clone();
                    object.remove(&key);
                }
            }
            Edit::Set { field, value, .. } => {
                let key = match field {
                    Field::Existing(i) if !object.is_empty() => {
                        object.keys().nth(i.index(object.len())).unwrap().clone()
                    }
                    Field::Existing(_) => "type".to_string(),
                    Field::Named(name) => name.clone(),
                };
                let value = match value {
                    Junk::Json(value) => value.clone(),
                    Junk::Raw(text) => {
                        // A placeholder string, replaced by the raw text once serialized.
                        raw.push(text.clone());
                        Value::String(format!("\u{1}raw{}\u{1}", raw.len() - 1))
                    }
                };
                object.insert(key, value);
            }
        }
        if !body.is_object() {
            break;
        }
    }
    let mut text = body.to_string();
    for (i, raw) in raw.iter().enumerate() {
        let placeholder = Value::String(format!("\u{1}raw{i}\u{1}")).to_string();
        text = text.replace(&placeholder, raw);
    }
    let mut bytes = text.into_bytes();
    match damage {
        Damage::None => {}
        Damage::Truncate(at) => bytes.truncate(at.index(bytes.len().max(1))),
        Damage::Splice(at, byte) => {
            let at = at.index(bytes.len() + 1);
            bytes.insert(at, *byte);
        }
    }
    bytes
}

fn junk() -> impl Strategy<Value = Junk> {
    let raw = prop_oneof![
        4 => select(&[
            "1e400", "-1e400", "123456789012345678901234567890", "-0", "-0.0", "1.0", "2e0",
            "\"\\ud800\"", "\"\\udfff\\ud800\"", "\"\\u0000\"", "NaN", "Infinity", "01", "+1",
            ".5", "1.", "0x10", "tru", "nul", "[", "{", "\"unterminated", "[1,]", "{\"a\":1,}",
        ][..])
        .prop_map(str::to_string),
        1 => select(&[10, 100, 127, 200, 5000][..])
            .prop_map(|depth| format!("{}{}", "[".repeat(depth), "]".repeat(depth))),
    ];
    prop_oneof![
        4 => json_value().prop_map(Junk::Json),
        1 => raw.prop_map(Junk::Raw),
    ]
}

/// Numbers at the edges of the submit fields' ranges and of the integer types.
const EDGE_NUMBERS: &[i128] = &[
    0,
    1,
    -1,
    2,
    30,
    1000,
    1001,
    -1000,
    -1001,
    3600,
    3601,
    i32::MAX as i128,
    i32::MAX as i128 + 1,
    i32::MIN as i128,
    u32::MAX as i128,
    u32::MAX as i128 + 1,
    i64::MAX as i128,
    i64::MIN as i128,
    u64::MAX as i128,
];

const EDGE_STRINGS: &[&str] = &[
    "",
    " ",
    "noop",
    "characters",
    "NOOP",
    "noop\u{0}",
    "\u{202e}",
    "💥",
    "2030-01-02T03:04:05Z",
    "2000-01-01T00:00:00Z",
    "9999-12-31T23:59:59.999999999Z",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "0000-01-01T00:00:00Z",
    "2030-01-02T03:04:05",
    "2030-01-02 03:04:05Z",
    "2030-02-30T00:00:00Z",
    "2030-01-02T24:00:00Z",
    "2030-01-02T03:04:60Z",
    "2030-01-02T03:04:05+23:59",
    "2030-01-02T03:04:05-24:00",
];

/// Any JSON value, leaning on the edges: big, negative and fractional numbers, unicode,
/// nested arrays and objects.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::from),
        2 => select(EDGE_NUMBERS).prop_map(|n| {
            u64::try_from(n)
                .map(Value::from)
                .unwrap_or_else(|_| Value::from(n as i64))
        }),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_filter_map("JSON has no NaN or infinity", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        2 => select(EDGE_STRINGS).prop_map(Value::from),
        2 => any::<String>().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Value::Array),
            btree_map("\\PC{0,8}", inner, 0..4)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

fn declares_json(content_type: &Option<Blob>) -> bool {
    let text = content_type
        .as_ref()
        .map(|ct| String::from_utf8_lossy(&ct.0).into_owned())
        .unwrap_or_default();
    let mime = text.split(';').next().unwrap_or("").trim();
    mime.eq_ignore_ascii_case("application/json")
}

async fn check_submit(kiln: &InProcess, case: SubmitCase) -> TestCaseResult {
    let url = Url::parse(&kiln.url(&with_query("/v1/jobs", &case.query))).unwrap();
    let mut request = kiln.client.post(url.clone()).body(case.body.0.clone());
    if let Some(content_type) = &case.content_type {
        request = request.header(CONTENT_TYPE, header_value(content_type)?);
    }
    if let Some(key) = &case.idempotency_key {
        request = request.header("idempotency-key", header_value(key)?);
    }
    let answer = send(request).await?;
    check_shape(&answer)?;
    match answer.status {
        415 => prop_assert!(
            !declares_json(&case.content_type),
            "415 for a JSON body: {answer:?}"
        ),
        413 => prop_assert!(
            case.body.0.len() > BODY_LIMIT,
            "413 for a body within the limit: {answer:?}"
        ),
        200..=299 => {
            prop_assert!(
                declares_json(&case.content_type),
                "accepted without Content-Type: application/json: {answer:?}"
            );
            prop_assert!(
                case.body.0.len() <= BODY_LIMIT,
                "accepted a body over the limit: {answer:?}"
            );
            let sent: Value = serde_json::from_slice(&case.body.0).map_err(|e| {
                TestCaseError::fail(format!(
                    "accepted a body that is not JSON ({e}): {answer:?}"
                ))
            })?;
            for (key, value) in pairs(&url) {
                let wait = value.parse::<f64>();
                prop_assert!(
                    key == "wait" && wait.is_ok_and(|w| (0.0..=MAX_WAIT_SECS as f64).contains(&w)),
                    "accepted the query {key}={value:?}: {answer:?}"
                );
            }
            check_created(kiln, &answer, &sent).await?;
        }
        _ => {}
    }
    Ok(())
}

/// A 2xx submit's job is the one `GET /v1/jobs/{id}` returns; `200` means it is over (or
/// was created before, by the same `Idempotency-Key`), `202` that it is not.
async fn check_created(kiln: &InProcess, answer: &Answer, sent: &Value) -> TestCaseResult {
    let job = answer.json()?;
    let Some(id) = job["id"].as_str() else {
        return Err(TestCaseError::fail(format!("no id: {answer:?}")));
    };
    let terminal = matches!(
        job["status"].as_str(),
        Some("completed" | "failed" | "cancelled")
    );
    if !answer.replayed {
        prop_assert_eq!(&job["type"], &sent["type"], "{:?}", answer);
        prop_assert_eq!(answer.status == 200, terminal, "{:?}", answer);
    }
    let fetched = send(kiln.client.get(kiln.url(&format!("/v1/jobs/{id}")))).await?;
    prop_assert_eq!(fetched.status, 200, "the created job: {:?}", fetched);
    let fetched = fetched.json()?;
    prop_assert_eq!(&fetched["id"], &job["id"]);
    prop_assert_eq!(&fetched["type"], &job["type"]);
    Ok(())
}

// ---------------------------------------------------------------------------------------
// GET /v1/jobs and /v1/jobs/{id}[/cancel|/retry|/events].

#[derive(Clone, Debug)]
enum RouteCase {
    /// `GET /v1/jobs?{query}`.
    List { query: String },
    /// `GET /v1/jobs/{id}`, `POST …/cancel`, `POST …/retry`.
    Job { route: JobRoute, id: PathId },
    /// `GET /v1/jobs/{id}/events?{query}` with a `Last-Event-ID`, maybe.
    Events {
        id: PathId,
        last_event_id: Option<Blob>,
        query: String,
    },
}

#[derive(Clone, Copy, Debug)]
enum JobRoute {
    Get,
    Cancel,
    Retry,
}

/// A job id in a path: any text or bytes (percent-encoded), or the finished job's id
/// written one way or another.
#[derive(Clone, Debug)]
enum PathId {
    Text(String),
    Bytes(Blob),
    Known(IdForm),
}

#[derive(Clone, Debug)]
enum IdForm {
    Plain,
    Upper,
    Simple,
    Braced,
    Urn,
    Suffixed(char),
    Truncated(Index),
}

impl PathId {
    /// The id as the server decodes it from the path.
    fn decoded(&self, known: Uuid) -> Vec<u8> {
        match self {
            PathId::Text(text) => text.as_bytes().to_vec(),
            PathId::Bytes(bytes) => bytes.0.clone(),
            PathId::Known(form) => {
                let plain = known.to_string();
                match form {
                    IdForm::Plain => plain,
                    IdForm::Upper => plain.to_uppercase(),
                    IdForm::Simple => known.simple().to_string(),
                    IdForm::Braced => known.braced().to_string(),
                    IdForm::Urn => known.urn().to_string(),
                    IdForm::Suffixed(c) => format!("{plain}{c}"),
                    IdForm::Truncated(at) => plain[..at.index(plain.len())].to_string(),
                }
                .into_bytes()
            }
        }
    }
}

fn path_id() -> impl Strategy<Value = PathId> {
    prop_oneof![
        2 => any::<String>().prop_map(PathId::Text),
        1 => "[ -~]{0,40}".prop_map(PathId::Text),
        1 => any::<u128>().prop_map(|n| PathId::Text(Uuid::from_u128(n).to_string())),
        1 => vec(any::<u8>(), 1..40).prop_map(|b| PathId::Bytes(Blob(b))),
        2 => prop_oneof![
            Just(IdForm::Plain),
            Just(IdForm::Upper),
            Just(IdForm::Simple),
            Just(IdForm::Braced),
            Just(IdForm::Urn),
            any::<char>().prop_map(IdForm::Suffixed),
            any::<Index>().prop_map(IdForm::Truncated),
        ]
        .prop_map(PathId::Known),
    ]
    // `.` and `..` are resolved by the client (RFC 3986), so they would name other routes;
    // `bulk` is a route of its own (`/v1/jobs/bulk/retry`).
    .prop_filter("a dot segment or a route name", |id| {
        matches!(id, PathId::Known(_))
            || !matches!(
                id.decoded(Uuid::nil()).as_slice(),
                b"" | b"." | b".." | b"bulk"
            )
    })
}

fn route_case() -> impl Strategy<Value = RouteCase> {
    let last_event_id = prop_oneof![
        2 => Just(None),
        1 => (0u64..40).prop_map(|n| Some(Blob(n.to_string().into_bytes()))),
        1 => header_bytes(0..24).prop_map(Some),
    ];
    prop_oneof![
        1 => list_filters().prop_map(|query| RouteCase::List { query }),
        1 => query(&["status", "type", "limit", "cursor"]).prop_map(|query| RouteCase::List { query }),
        2 => (
            prop_oneof![Just(JobRoute::Get), Just(JobRoute::Cancel), Just(JobRoute::Retry)],
            path_id(),
        )
            .prop_map(|(route, id)| RouteCase::Job { route, id }),
        1 => (path_id(), last_event_id, query(&["last_event_id"]))
            .prop_map(|(id, last_event_id, query)| RouteCase::Events { id, last_event_id, query }),
    ]
}

/// A well-formed `GET /v1/jobs` query: some of `status`, `type`, `limit` (often smaller
/// than the number of jobs, so pages have a next one) and `cursor`.
fn list_filters() -> impl Strategy<Value = String> {
    let status = select(&["queued", "running", "completed", "failed", "cancelled"][..]);
    let job_type = select(&["noop", "hostile", "characters"][..]);
    let limit = prop_oneof![1usize..=5, 1usize..=100];
    let cursor = any::<u128>().prop_map(Uuid::from_u128);
    (
        proptest::option::of(status),
        proptest::option::of(job_type),
        proptest::option::of(limit),
        proptest::option::of(cursor),
    )
        .prop_map(|(status, job_type, limit, cursor)| {
            let mut parts = Vec::new();
            parts.extend(status.map(|s| format!("status={s}")));
            parts.extend(job_type.map(|t| format!("type={t}")));
            parts.extend(limit.map(|n| format!("limit={n}")));
            parts.extend(cursor.map(|c| format!("cursor={c}")));
            parts.join("&")
        })
}

/// Jobs in every finished status and one queued for later, so lists and filters have
/// something to show; returns the id of the completed one.
async fn seed_jobs(kiln: &InProcess) -> Uuid {
    let later = "2099-01-01T00:00:00Z";
    let mut ids = Vec::new();
    for body in [
        json!({"type": "noop"}),
        json!({"type": "hostile", "payload": {"mode": "permanent"}, "max_attempts": 1}),
        json!({"type": "noop", "run_at": later}),
        json!({"type": "noop", "run_at": later}),
    ] {
        let (status, job) = submit(&kiln.client, &kiln.base, body).await;
        assert_eq!(status, 202, "{job:#}");
        ids.push(id_of(&job));
    }
    let (status, job) = post_empty(
        &kiln.client,
        &kiln.url(&format!("/v1/jobs/{}/cancel", ids[3])),
    )
    .await;
    assert_eq!((status, &job["status"]), (200, &json!("cancelled")));
    for (id, expected) in ids[..2].iter().zip(["completed", "failed"]) {
        let job = wait_terminal(&kiln.client, &kiln.base, id, LONG).await;
        assert_eq!(job["status"], expected, "{job:#}");
    }
    ids[0].parse().unwrap()
}

async fn check_route(kiln: &InProcess, done: Uuid, case: RouteCase) -> TestCaseResult {
    match case {
        RouteCase::List { query } => {
            let url = Url::parse(&kiln.url(&with_query("/v1/jobs", &query))).unwrap();
            let answer = send(kiln.client.get(url.clone())).await?;
            let kind = check_shape(&answer)?;
            if answer.status == 200 {
                check_page(&url, &answer)?;
            } else {
                prop_assert!(
                    answer.status == 400
                        && matches!(kind.as_deref(), Some("invalid_query" | "invalid_cursor")),
                    "{answer:?}"
                );
            }
        }
        RouteCase::Job { route, id } => {
            let decoded = id.decoded(done);
            let job = kiln.url(&format!("/v1/jobs/{}", encode(&decoded)));
            let request = match route {
                JobRoute::Get => kiln.client.get(job),
                JobRoute::Cancel => kiln.client.post(format!("{job}/cancel")),
                JobRoute::Retry => kiln.client.post(format!("{job}/retry")),
            };
            let answer = send(request).await?;
            let kind = check_shape(&answer)?;
            if names(&decoded, done) {
                match route {
                    JobRoute::Get => {
                        prop_assert_eq!(answer.status, 200, "{:?}", answer);
                        prop_assert_eq!(&answer.json()?["id"], &json!(done.to_string()));
                    }
                    // The job is completed: neither cancel nor retry applies.
                    JobRoute::Cancel | JobRoute::Retry => prop_assert!(
                        answer.status == 409 && kind.as_deref() == Some("conflict"),
                        "{answer:?}"
                    ),
                }
            } else {
                prop_assert!(
                    answer.status == 404 && kind.as_deref() == Some("not_found"),
                    "{answer:?}"
                );
            }
        }
        RouteCase::Events {
            id,
            last_event_id,
            query,
        } => {
            let decoded = id.decoded(done);
            let path = format!("/v1/jobs/{}/events", encode(&decoded));
            let mut request = kiln.client.get(kiln.url(&with_query(&path, &query)));
            if let Some(last) = &last_event_id {
                request = request.header("last-event-id", header_value(last)?);
            }
            let answer = send(request).await?;
            let kind = check_shape(&answer)?;
            match answer.status {
                200 => {
                    prop_assert!(names(&decoded, done), "a stream of no job: {answer:?}");
                    prop_assert!(
                        answer.content_type.starts_with("text/event-stream"),
                        "{answer:?}"
                    );
                }
                204 => prop_assert!(
                    names(&decoded, done) && answer.body.is_empty(),
                    "{answer:?}"
                ),
                400 => prop_assert!(
                    matches!(
                        kind.as_deref(),
                        Some("invalid_last_event_id" | "invalid_query")
                    ),
                    "{answer:?}"
                ),
                404 => prop_assert!(!names(&decoded, done), "{answer:?}"),
                _ => prop_assert!(false, "unexpected status: {answer:?}"),
            }
        }
    }
    Ok(())
}

/// Whether a decoded path id names the job `id` (any of the ways a UUID is written).
fn names(decoded: &[u8], id: Uuid) -> bool {
    std::str::from_utf8(decoded)
        .ok()
        .and_then(|text| Uuid::parse_str(text).ok())
        == Some(id)
}

/// A page answers its query: at most `limit` jobs, newest first, older than the cursor,
/// of the filtered status and type, and `next_cursor` is its last job when it is full.
fn check_page(url: &Url, answer: &Answer) -> TestCaseResult {
    let params: BTreeMap<String, String> = pairs(url).into_iter().collect();
    let page = answer.json()?;
    let Some(jobs) = page["jobs"].as_array() else {
        return Err(TestCaseError::fail(format!("no jobs: {answer:?}")));
    };
    let limit = match params.get("limit") {
        Some(text) => text
            .parse::<usize>()
            .map_err(|_| TestCaseError::fail(format!("accepted limit={text:?}: {answer:?}")))?,
        None => 20,
    };
    prop_assert!(jobs.len() <= limit, "{} jobs for limit {limit}", jobs.len());
    let ids: Vec<Uuid> = jobs
        .iter()
        .map(|job| job["id"].as_str().and_then(|id| id.parse().ok()))
        .collect::<Option<_>>()
        .ok_or_else(|| TestCaseError::fail(format!("a job without an id: {answer:?}")))?;
    prop_assert!(
        ids.windows(2).all(|w| w[0] > w[1]),
        "not newest first: {ids:?}"
    );
    if let Some(cursor) = params.get("cursor") {
        let cursor: Uuid = cursor
            .parse()
            .map_err(|_| TestCaseError::fail(format!("accepted cursor={cursor:?}")))?;
        prop_assert!(ids.iter().all(|id| *id < cursor), "not after the cursor");
    }
    for (filter, field) in [("status", "status"), ("type", "type")] {
        if let Some(wanted) = params.get(filter) {
            prop_assert!(
                jobs.iter().all(|job| job[field] == json!(wanted)),
                "{filter}={wanted:?} lists others: {answer:?}"
            );
        }
    }
    match page["next_cursor"].as_str() {
        Some(next) => prop_assert!(
            jobs.len() == limit && ids.last().map(Uuid::to_string).as_deref() == Some(next),
            "next_cursor is not the last job of a full page: {answer:?}"
        ),
        None => prop_assert!(page["next_cursor"].is_null(), "{answer:?}"),
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Event-log replay.

#[derive(Clone, Debug)]
enum ResumeCase {
    /// Resume a finished job with `events` progress events at `at`.
    Finished { events: u64, at: ResumeAt, via: Via },
    /// Submit a job with `events` progress events, follow it while it runs, disconnect
    /// after `at` events and resume from the last id received.
    Running { events: u64, at: Index, via: Via },
    /// Resume a job waiting to start (its log: one event) after `at`.
    Waiting { at: u64, via: Via },
}

#[derive(Clone, Debug)]
enum ResumeAt {
    /// A position in the log, or one past its end.
    InLog(Index),
    /// Any event id.
    Id(u64),
    /// Empty: no position, the whole log.
    Blank(&'static str),
    /// Not a whole number.
    Malformed(String),
}

#[derive(Clone, Copy, Debug)]
enum Via {
    Header,
    Query,
}

/// Progress events of the generated jobs (the log adds queued, running and completed).
const MAX_EVENTS: u64 = 40;

fn resume_case() -> impl Strategy<Value = ResumeCase> {
    let via = prop_oneof![Just(Via::Header), Just(Via::Query)];
    let malformed = prop_oneof![
        (1u64..=u64::MAX).prop_map(|n| format!("-{n}")),
        (any::<u64>(), 0u32..100).prop_map(|(n, f)| format!("{n}.{f}")),
        (0u8..10).prop_map(|d| format!("{}{d}", u64::MAX)),
        any::<u64>().prop_map(|n| format!("+{n}")),
        "[0-9]{0,4}[!-/:-~]{1,3}[0-9]{0,4}",
        "\\PC{1,12}",
    ]
    .prop_filter(
        "a plain decimal (around HTTP's optional whitespace)",
        |text| {
            let text = text.trim();
            let plain = text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u64>().is_ok();
            !text.is_empty() && !plain
        },
    );
    let at = prop_oneof![
        4 => any::<Index>().prop_map(ResumeAt::InLog),
        1 => prop_oneof![Just(0), Just(u64::MAX), any::<u64>()].prop_map(ResumeAt::Id),
        1 => Just("").prop_map(ResumeAt::Blank),
        2 => malformed.prop_map(ResumeAt::Malformed),
    ];
    prop_oneof![
        7 => (0..=MAX_EVENTS, at, via.clone())
            .prop_map(|(events, at, via)| ResumeCase::Finished { events, at, via }),
        1 => (0..=MAX_EVENTS, any::<Index>(), via.clone())
            .prop_map(|(events, at, via)| ResumeCase::Running { events, at, via }),
        1 => (prop_oneof![0..4u64, any::<u64>()], via)
            .prop_map(|(at, via)| ResumeCase::Waiting { at, via }),
    ]
}

/// The jobs the replay property resumes.
struct Jobs {
    /// Finished jobs by their number of progress events: id and whole log.
    finished: RefCell<BTreeMap<u64, (String, Vec<SseEvent>)>>,
    /// A job queued for much later: its log holds one event.
    waiting: String,
}

async fn waiting_job(kiln: &InProcess) -> String {
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "noop", "run_at": "2099-01-01T00:00:00Z"}),
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    id_of(&job)
}

/// A job with `events` progress events: `pace_ms` between them, so a stream can join it
/// while it runs.
async fn submit_events_job(kiln: &InProcess, events: u64, pace_ms: u64) -> String {
    let (status, job) = submit(
        &kiln.client,
        &kiln.base,
        json!({"type": "hostile", "payload": {"mode": "events", "n": events, "pace_ms": pace_ms}}),
    )
    .await;
    assert_eq!(status, 202, "{job:#}");
    id_of(&job)
}

/// The whole log of job `id`, read from the start, checked on its own: ids 1, 2, 3, … and
/// `queued`, `running`, the progress events, `completed`.
async fn whole_log(
    kiln: &InProcess,
    id: &str,
    events: u64,
) -> Result<Vec<SseEvent>, TestCaseError> {
    let log = all_events(&kiln.client, &kiln.base, id, LONG).await;
    let ids: Vec<Option<u64>> = log.iter().map(|e| e.id).collect();
    let expected: Vec<Option<u64>> = (1..=log.len() as u64).map(Some).collect();
    prop_assert_eq!(ids, expected, "the whole log: {:#?}", log);
    let names: Vec<&str> = log.iter().map(|e| e.event.as_str()).collect();
    let mut wanted = vec!["status", "status"];
    wanted.extend((0..events).map(|_| "progress"));
    wanted.push("completed");
    prop_assert_eq!(names, wanted, "the whole log: {:#?}", log);
    Ok(log)
}

/// The finished job with `events` progress events (made once, then reused) and its log.
async fn finished(
    kiln: &InProcess,
    jobs: &Jobs,
    events: u64,
) -> Result<(String, Vec<SseEvent>), TestCaseError> {
    if let Some(known) = jobs.finished.borrow().get(&events) {
        return Ok(known.clone());
    }
    let id = submit_events_job(kiln, events, 0).await;
    let log = whole_log(kiln, &id, events).await?;
    jobs.finished
        .borrow_mut()
        .insert(events, (id.clone(), log.clone()));
    Ok((id, log))
}

/// Opens job `id`'s stream resuming after `position`, sent as `via` says.
async fn resume(
    kiln: &InProcess,
    id: &str,
    position: &str,
    via: Via,
) -> Result<reqwest::Response, TestCaseError> {
    let url = kiln.url(&format!("/v1/jobs/{id}/events"));
    let request = match via {
        Via::Header => kiln
            .client
            .get(url)
            .header("last-event-id", header_value(&Blob(position.into()))?),
        Via::Query => kiln.client.get(format!(
            "{url}?last_event_id={}",
            encode(position.as_bytes())
        )),
    };
    request
        .header("accept", "text/event-stream")
        .send()
        .await
        .map_err(|e| TestCaseError::fail(format!("no answer: {e:?}")))
}

/// The events of a `200` stream, read to its end.
async fn read_stream(response: reqwest::Response) -> Result<Vec<SseEvent>, TestCaseError> {
    if response.status() != 200 {
        let answer = read_answer(response).await?;
        return Err(TestCaseError::fail(format!("not a stream: {answer:?}")));
    }
    Ok(read_sse(response, None, LONG).await)
}

async fn check_resume(kiln: &InProcess, jobs: &Jobs, case: ResumeCase) -> TestCaseResult {
    match case {
        ResumeCase::Finished { events, at, via } => {
            let (id, log) = finished(kiln, jobs, events).await?;
            let after = match &at {
                ResumeAt::InLog(i) => i.index(log.len() + 2) as u64,
                ResumeAt::Id(id) => *id,
                ResumeAt::Blank(_) => 0,
                ResumeAt::Malformed(text) => {
                    let response = resume(kiln, &id, text, via).await?;
                    let answer = read_answer(response).await?;
                    let kind = check_shape(&answer)?;
                    prop_assert!(
                        answer.status == 400 && kind.as_deref() == Some("invalid_last_event_id"),
                        "{answer:?}"
                    );
                    return Ok(());
                }
            };
            let position = match &at {
                ResumeAt::Blank(blank) => blank.to_string(),
                _ => after.to_string(),
            };
            let response = resume(kiln, &id, &position, via).await?;
            if after >= log.len() as u64 {
                // The job is over and nothing follows: 204 stops EventSource reconnecting.
                let answer = read_answer(response).await?;
                prop_assert!(answer.status == 204 && answer.body.is_empty(), "{answer:?}");
            } else {
                let rest = read_stream(response).await?;
                prop_assert_eq!(&rest[..], &log[after as usize..]);
            }
        }
        ResumeCase::Running { events, at, via } => {
            let (_, reference) = finished(kiln, jobs, events).await?;
            let id = submit_events_job(kiln, events, 2).await;
            // A first connection reads some events, never all: it must not see the end.
            let wanted = at.index(reference.len());
            let first = if wanted == 0 {
                Vec::new()
            } else {
                let url = kiln.url(&format!("/v1/jobs/{id}/events"));
                let response = open_sse(&kiln.client, &url, None).await;
                read_sse(response, Some(wanted), LONG).await
            };
            let Some(after) = first.last().map_or(Some(0), |event| event.id) else {
                return Err(TestCaseError::fail(format!(
                    "an event without an id: {first:#?}"
                )));
            };
            let response = resume(kiln, &id, &after.to_string(), via).await?;
            let rest = read_stream(response).await?;
            let log = whole_log(kiln, &id, events).await?;
            prop_assert_eq!(&first[..], &log[..after as usize]);
            prop_assert_eq!(&rest[..], &log[after as usize..]);
        }
        ResumeCase::Waiting { at, via } => {
            let response = resume(kiln, &jobs.waiting, &at.to_string(), via).await?;
            if at > 1 {
                // No stream sent that id: following from there would drop every event.
                let answer = read_answer(response).await?;
                let kind = check_shape(&answer)?;
                prop_assert!(
                    answer.status == 400 && kind.as_deref() == Some("invalid_last_event_id"),
                    "{answer:?}"
                );
            } else {
                // The stream stays open until the job ends: from 0 it replays the one event;
                // from 1 there is nothing to read yet.
                prop_assert_eq!(response.status().as_u16(), 200);
                if at == 0 {
                    let first = read_sse(response, Some(1), LONG).await;
                    let ids: Vec<Option<u64>> = first.iter().map(|e| e.id).collect();
                    prop_assert_eq!(ids, vec![Some(1)], "{:#?}", first);
                }
            }
        }
    }
    Ok(())
}
