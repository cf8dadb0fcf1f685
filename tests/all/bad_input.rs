//! The rest of the bad-input matrix (`api.rs` and `sse.rs` have the basics): bodies of
//! every JSON route malformed, truncated, deeply nested, non-UTF-8, of the wrong content
//! type or over the limit; non-UTF-8 bytes in the path, the query and the headers; unknown
//! ids and types; invalid `Last-Event-ID`s and cursors; negative and huge numbers; and
//! oversized headers.
//!
//! Each case must get the right 4xx with the one error shape, `{"error": {kind, message}}`,
//! except where hyper answers before the router (a request it cannot parse, a request
//! line over its limit): there a bare 4xx is what happens, and is what the case records
//! (headers over hyper's limits get its 431 in the error shape, from Kiln's listener). Never a
//! 5xx, never a panic. The server is the real `kiln` program, so a panic in any task shows
//! in its log; after each matrix the same process must still answer `/healthz` and run a
//! job. Requests go over raw TCP, so bytes that reqwest refuses to send (or would fix)
//! reach the server exactly as written.

use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// A `kiln serve` child process with the `noop` and `hostile` fixtures.
struct Server {
    kiln: KilnProcess,
    /// `127.0.0.1:PORT`, for raw TCP.
    addr: String,
    client: reqwest::Client,
    /// Cases that did not get the expected answer: recorded, so that one run lists them
    /// all, and reported by [`Server::finish`].
    failures: Mutex<Vec<String>>,
    _data: tempfile::TempDir,
    _plugins: tempfile::TempDir,
}

impl Server {
    fn start(extra_config: &str) -> Self {
        let data = tempfile::tempdir().unwrap();
        let plugins = plugins_dir(&["fixture:noop", "fixture:hostile"]);
        let kiln = KilnProcess::start_cached(data.path(), plugins.path(), extra_config);
        let addr = kiln
            .base
            .strip_prefix("http://")
            .expect("base is http://HOST:PORT")
            .to_string();
        Self {
            kiln,
            addr,
            client: reqwest::Client::new(),
            failures: Mutex::new(Vec::new()),
            _data: data,
            _plugins: plugins,
        }
    }

    /// Sends `request` as raw bytes on a new connection and reads the answer.
    async fn send(&self, what: &str, request: Vec<u8>) -> Answer {
        raw_exchange(&self.addr, request).await.unwrap_or_else(|e| {
            panic!(
                "{what}: no HTTP answer ({e}); the server log:\n{}",
                self.kiln.log()
            )
        })
    }

    /// Records a failure unless exactly `expected` jobs are stored (the tests store a
    /// handful; a refused request must store nothing).
    async fn expect_jobs(&self, expected: usize) {
        let (status, list) = get_json(&self.client, &self.kiln.url("/v1/jobs?limit=100")).await;
        assert_eq!(status, 200, "{list:#}");
        let stored = list["jobs"].as_array().map_or(0, Vec::len);
        if stored != expected {
            self.failures.lock().unwrap().push(format!(
                "{stored} jobs stored, expected {expected}: a refused request stored a job? \
                 {list:#}"
            ));
        }
    }

    /// The end of every matrix: every case answered as expected, no panic in the log,
    /// `/healthz` answers, and a job is accepted and runs to completion (the scheduler
    /// survived too).
    async fn finish(&self) {
        let failures = self.failures.lock().unwrap().clone();
        assert!(
            failures.is_empty(),
            "{} cases answered wrongly:\n{}",
            failures.len(),
            failures.join("\n")
        );
        let (status, health) = get_json(&self.client, &self.kiln.url("/healthz")).await;
        assert_eq!(status, 200, "{health:#}\nlog:\n{}", self.kiln.log());
        let (status, job) = submit(&self.client, &self.kiln.base, json!({"type": "noop"})).await;
        assert_eq!(status, 202, "{job:#}\nlog:\n{}", self.kiln.log());
        let job = wait_terminal(&self.client, &self.kiln.base, &id_of(&job), LONG).await;
        assert_eq!(
            job["status"],
            "completed",
            "{job:#}\nlog:\n{}",
            self.kiln.log()
        );
        let log = self.kiln.log();
        assert!(
            !log.contains("panicked"),
            "the server panicked; its log:\n{log}"
        );
    }
}

/// An HTTP answer as read off the wire.
#[derive(Debug)]
struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// What a case expects.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// The router's answer: this status and the error shape with this kind.
    Error(u16, &'static str),
    /// The error shape with this status and any of these kinds (where serde decides
    /// which of two true things it reports first, e.g. for deeply nested JSON).
    ErrorOneOf(u16, &'static [&'static str]),
    /// Hyper's answer before the router: this status, no body to speak of.
    Bare(u16),
    /// A success (the input is odd but valid).
    Success(u16),
    /// Any of these statuses: where the server may reasonably decide either way.
    OneOf(&'static [u16]),
}

/// Checks `answer` against `expect`, recording a mismatch, then that the server still
/// answers `/healthz` (if it does not, nothing after matters: stop there).
async fn check(server: &Server, what: &str, answer: Answer, expect: Expect) {
    if let Err(why) = verdict(&answer, expect) {
        server.failures.lock().unwrap().push(format!(
            "{what}: {why}; got {} {:?} {}",
            answer.status,
            answer.content_type,
            answer.text()
        ));
    }
    let (health, _) = get_json(&server.client, &server.kiln.url("/healthz")).await;
    assert_eq!(
        health,
        200,
        "after {what}, the server no longer serves; log:\n{}",
        server.kiln.log()
    );
}

/// Whether `answer` is what `expect` says, and if not, why.
fn verdict(answer: &Answer, expect: Expect) -> Result<(), String> {
    if answer.status >= 500 {
        return Err("never a 5xx".into());
    }
    let (statuses, kinds): (&[u16], Option<&[&str]>) = match &expect {
        Expect::Error(status, kind) => (
            std::slice::from_ref(status),
            Some(std::slice::from_ref(kind)),
        ),
        Expect::ErrorOneOf(status, kinds) => (std::slice::from_ref(status), Some(kinds)),
        Expect::Bare(status) | Expect::Success(status) => (std::slice::from_ref(status), None),
        Expect::OneOf(statuses) => (statuses, None),
    };
    if !statuses.contains(&answer.status) {
        return Err(format!("expected status {statuses:?}"));
    }
    let Some(kinds) = kinds else {
        return Ok(());
    };
    if !answer.content_type.starts_with("application/json") {
        return Err("expected the JSON error shape".into());
    }
    let body = answer.json();
    if !body["error"]["kind"]
        .as_str()
        .is_some_and(|k| kinds.contains(&k))
    {
        return Err(format!("expected error.kind one of {kinds:?}"));
    }
    if body["error"]["message"].as_str().is_none_or(str::is_empty) {
        return Err("expected a non-empty error.message".into());
    }
    Ok(())
}

/// Builds an HTTP/1.1 request from raw parts. `Host` and `Connection: close` are added,
/// and `Content-Length` unless the caller set `content-length` or `transfer-encoding`.
fn http(method: &str, target: &[u8], headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut request = Vec::new();
    request.extend_from_slice(method.as_bytes());
    request.push(b' ');
    request.extend_from_slice(target);
    request.extend_from_slice(b" HTTP/1.1\r\nhost: kiln\r\nconnection: close\r\n");
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    let framed = headers.iter().any(|(name, _)| {
        name.eq_ignore_ascii_case("content-length")
            || name.eq_ignore_ascii_case("transfer-encoding")
    });
    if !framed && (method == "POST" || !body.is_empty()) {
        request.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    request.extend_from_slice(b"\r\n");
    request.extend_from_slice(body);
    request
}

fn get(target: &[u8]) -> Vec<u8> {
    http("GET", target, &[], b"")
}

/// `POST target` with a body declared `application/json`.
fn post_json(target: &[u8], body: &[u8]) -> Vec<u8> {
    http(
        "POST",
        target,
        &[("content-type", b"application/json")],
        body,
    )
}

/// Writes `request` while reading the answer (the server may answer, e.g. 431 or 413,
/// before it has read everything, and close), then parses status, content type and body.
async fn raw_exchange(addr: &str, request: Vec<u8>) -> Result<Answer, String> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut reader, mut writer) = stream.into_split();
    let write = tokio::spawn(async move {
        // The server may close before reading it all: a failed write is not the point.
        let _ = writer.write_all(&request).await;
        writer
    });
    let mut received = Vec::new();
    let read = async {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
            if complete(&received) {
                break;
            }
        }
    };
    // A hang guard, not a timing assertion.
    let _ = tokio::time::timeout(Duration::from_secs(60), read).await;
    write.abort();
    parse_answer(&received)
}

/// Whether `bytes` hold a whole answer: the head, and the body its `content-length`
/// announces (or none for a 204 or an event stream, which never ends by itself).
fn complete(bytes: &[u8]) -> bool {
    let Some(end) = find(bytes, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&bytes[..end]).to_ascii_lowercase();
    if head.starts_with("http/1.1 204") || head.contains("content-type: text/event-stream") {
        return true;
    }
    head.lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|len| bytes.len() >= end + 4 + len)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn parse_answer(bytes: &[u8]) -> Result<Answer, String> {
    let end = find(bytes, b"\r\n\r\n").ok_or_else(|| {
        format!(
            "no complete answer head in {:?}",
            String::from_utf8_lossy(bytes)
        )
    })?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {head:?}"))?;
    let content_type = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, value)| value.trim().to_string())
        .unwrap_or_default();
    Ok(Answer {
        status,
        content_type,
        body: bytes[end + 4..].to_vec(),
    })
}

/// `n` nested arrays, closed when `closed`.
fn nested(n: usize, closed: bool) -> String {
    let close = if closed { "]".repeat(n) } else { String::new() };
    format!("{}{close}", "[".repeat(n))
}

const JSON_KINDS: &[&str] = &["malformed_json", "invalid_request"];

/// Bodies the basic matrix leaves out: deep nesting in every position, non-UTF-8 and
/// control bytes inside strings, a lone surrogate, and the bulk routes' bodies.
#[tokio::test]
async fn malformed_truncated_and_nested_bodies_on_every_json_route() {
    let server = Server::start("");
    let deep = 10_000;
    let submit_cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "10 000 levels of [ as the whole body",
            nested(deep, true).into_bytes(),
            Expect::ErrorOneOf(400, JSON_KINDS),
        ),
        (
            "10 000 unclosed levels of [ as the whole body",
            nested(deep, false).into_bytes(),
            Expect::ErrorOneOf(400, JSON_KINDS),
        ),
        (
            "10 000 levels of {\"a\": as the whole body",
            "{\"a\":".repeat(deep).into_bytes(),
            Expect::ErrorOneOf(400, JSON_KINDS),
        ),
        (
            "10 000 unclosed levels of [ in the payload",
            format!(
                r#"{{"type": "noop", "payload": {{"x": {}"#,
                nested(deep, false)
            )
            .into_bytes(),
            Expect::Error(400, "malformed_json"),
        ),
        (
            "10 000 levels of objects in the payload",
            format!(
                r#"{{"type": "noop", "payload": {}1{}}}"#,
                "{\"a\":".repeat(deep),
                "}".repeat(deep)
            )
            .into_bytes(),
            Expect::Error(400, "malformed_json"),
        ),
        (
            "10 000 levels of [ as the type",
            format!(r#"{{"type": {}}}"#, nested(deep, true)).into_bytes(),
            Expect::ErrorOneOf(400, JSON_KINDS),
        ),
        (
            "non-UTF-8 bytes inside the payload's strings",
            b"{\"type\": \"noop\", \"payload\": {\"s\": \"\xc3\x28 \xff\"}}".to_vec(),
            Expect::Error(400, "malformed_json"),
        ),
        (
            "a non-UTF-8 byte as a value",
            b"{\"type\": \xff}".to_vec(),
            Expect::Error(400, "malformed_json"),
        ),
        (
            "a lone UTF-16 surrogate escape",
            br#"{"type": "noop", "payload": {"s": "\ud800"}}"#.to_vec(),
            Expect::Error(400, "malformed_json"),
        ),
        (
            "a raw NUL byte inside a string",
            b"{\"type\": \"noop\", \"payload\": {\"s\": \"a\x00b\"}}".to_vec(),
            Expect::Error(400, "malformed_json"),
        ),
        (
            "truncated inside a string",
            br#"{"type": "no"#.to_vec(),
            Expect::Error(400, "malformed_json"),
        ),
        (
            "truncated inside an escape",
            br#"{"type": "noop\u00"#.to_vec(),
            Expect::Error(400, "malformed_json"),
        ),
        (
            "two bodies back to back",
            br#"{"type": "noop"}{"type": "noop"}"#.to_vec(),
            Expect::Error(400, "malformed_json"),
        ),
        (
            "only whitespace",
            b"   \n\t ".to_vec(),
            Expect::Error(400, "malformed_json"),
        ),
        (
            "JSON null",
            b"null".to_vec(),
            Expect::Error(400, "invalid_request"),
        ),
        (
            "a JSON string",
            br#""noop""#.to_vec(),
            Expect::Error(400, "invalid_request"),
        ),
    ];
    for (what, body, expect) in submit_cases {
        let answer = server.send(what, post_json(b"/v1/jobs", &body)).await;
        check(&server, &format!("POST /v1/jobs, {what}"), answer, expect).await;
    }

    for route in ["/v1/jobs/bulk/retry", "/v1/jobs/bulk/cancel"] {
        let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
            (
                "malformed JSON",
                b"{status: failed}".to_vec(),
                Expect::Error(400, "malformed_json"),
            ),
            (
                "truncated JSON",
                br#"{"status": "fai"#.to_vec(),
                Expect::Error(400, "malformed_json"),
            ),
            (
                "10 000 levels of [",
                nested(deep, true).into_bytes(),
                Expect::ErrorOneOf(400, JSON_KINDS),
            ),
            (
                "10 000 levels of [ as the type",
                format!(r#"{{"type": {}}}"#, nested(deep, true)).into_bytes(),
                Expect::ErrorOneOf(400, JSON_KINDS),
            ),
            (
                "non-UTF-8 bytes",
                b"{\"type\": \"\xff\xfe\"}".to_vec(),
                Expect::Error(400, "malformed_json"),
            ),
            (
                "unknown field",
                br#"{"colour": "red"}"#.to_vec(),
                Expect::Error(400, "invalid_request"),
            ),
            (
                "an unknown status",
                br#"{"status": "sleeping"}"#.to_vec(),
                Expect::Error(400, "invalid_request"),
            ),
        ];
        for (what, body, expect) in cases {
            let answer = server.send(what, post_json(route.as_bytes(), &body)).await;
            check(&server, &format!("POST {route}, {what}"), answer, expect).await;
        }
    }
    server.expect_jobs(0).await;
    server.finish().await;
}

/// Content types beyond the basic three: near misses, parameters, other media types,
/// bytes that are not text, and a body with no content type on the bulk routes.
#[tokio::test]
async fn wrong_content_types_on_every_json_route() {
    let server = Server::start("");
    let unsupported = Expect::Error(415, "unsupported_media_type");
    let cases: Vec<(&str, &[u8], Expect)> = vec![
        ("application/jsonx", b"application/jsonx", unsupported),
        ("application/json-seq", b"application/json-seq", unsupported),
        (
            "application/problem+json",
            b"application/problem+json",
            unsupported,
        ),
        ("text/json", b"text/json", unsupported),
        ("multipart", b"multipart/form-data; boundary=x", unsupported),
        ("empty", b"", unsupported),
        ("a parameter only", b"; charset=utf-8", unsupported),
        ("non-UTF-8 bytes", b"application/js\xffon", unsupported),
        (
            "upper case is the same type",
            b"APPLICATION/JSON",
            Expect::Success(202),
        ),
    ];
    let body = br#"{"type": "noop"}"#;
    for (what, content_type, expect) in &cases {
        let request = http("POST", b"/v1/jobs", &[("content-type", content_type)], body);
        let answer = server.send(what, request).await;
        check(&server, &format!("POST /v1/jobs, {what}"), answer, *expect).await;
    }
    for route in ["/v1/jobs/bulk/retry", "/v1/jobs/bulk/cancel"] {
        let body = br#"{"limit": 1}"#;
        for (what, content_type) in [
            ("text/plain", Some(&b"text/plain"[..])),
            ("form", Some(b"application/x-www-form-urlencoded")),
            ("no content type", None),
        ] {
            let headers: Vec<(&str, &[u8])> = content_type
                .map(|ct| ("content-type", ct))
                .into_iter()
                .collect();
            let answer = server
                .send(what, http("POST", route.as_bytes(), &headers, body))
                .await;
            check(
                &server,
                &format!("POST {route}, {what}"),
                answer,
                unsupported,
            )
            .await;
        }
    }
    server.expect_jobs(1).await;
    server.finish().await;
}

/// Over the body limit without an honest `Content-Length` (chunked, or a length that
/// lies), on every route that reads a body; and lengths hyper cannot parse.
#[tokio::test]
async fn bodies_over_the_limit_however_they_are_framed() {
    let server = Server::start("max_body_bytes = 1024");
    let json_ct: (&str, &[u8]) = ("content-type", b"application/json");
    // 3 KiB of JSON whitespace in 1 KiB chunks, then the end.
    let chunked_body: Vec<u8> = (0..3)
        .flat_map(|_| {
            let mut chunk = b"400\r\n".to_vec();
            chunk.extend(vec![b' '; 1024]);
            chunk.extend_from_slice(b"\r\n");
            chunk
        })
        .chain(b"0\r\n\r\n".iter().copied())
        .collect();
    let too_large = Expect::Error(413, "body_too_large");
    for route in ["/v1/jobs", "/v1/jobs/bulk/retry", "/v1/jobs/bulk/cancel"] {
        let route = route.as_bytes();
        let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
            (
                "2 KiB with its Content-Length",
                http("POST", route, &[json_ct], &vec![b' '; 2048]),
                too_large,
            ),
            (
                "3 KiB chunked",
                http(
                    "POST",
                    route,
                    &[json_ct, ("transfer-encoding", b"chunked")],
                    &chunked_body,
                ),
                too_large,
            ),
            (
                "Content-Length 10^12, 2 KiB sent",
                http(
                    "POST",
                    route,
                    &[json_ct, ("content-length", b"1000000000000")],
                    &vec![b' '; 2048],
                ),
                too_large,
            ),
            (
                "Content-Length 2^64 (hyper refuses it)",
                http(
                    "POST",
                    route,
                    &[json_ct, ("content-length", b"18446744073709551616")],
                    b"{}",
                ),
                Expect::Bare(400),
            ),
            (
                "Content-Length -1 (hyper refuses it)",
                http("POST", route, &[json_ct, ("content-length", b"-1")], b"{}"),
                Expect::Bare(400),
            ),
            (
                "two different Content-Lengths (hyper refuses them)",
                http(
                    "POST",
                    route,
                    &[json_ct, ("content-length", b"2"), ("content-length", b"3")],
                    b"{} ",
                ),
                Expect::Bare(400),
            ),
        ];
        let route = String::from_utf8_lossy(route);
        for (what, request, expect) in cases {
            let answer = server.send(what, request).await;
            check(&server, &format!("POST {route}, {what}"), answer, expect).await;
        }
    }
    server.expect_jobs(0).await;
    server.finish().await;
}

/// Non-UTF-8 bytes in the path, the query and the headers, raw (hyper refuses a request
/// line or header it cannot parse) and percent-encoded (the router's business).
#[tokio::test]
async fn non_utf8_in_the_path_query_and_headers() {
    let server = Server::start("");
    let (_, job) = submit(&server.client, &server.kiln.base, json!({"type": "noop"})).await;
    let id = id_of(&job);
    wait_terminal(&server.client, &server.kiln.base, &id, LONG).await;
    let events = format!("/v1/jobs/{id}/events");
    // A path segment that is not UTF-8 (or not a UUID) cannot name a job: 404, like any
    // other unknown id, in the error shape.
    let not_a_job = Expect::Error(404, "not_found");
    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "raw 0xFF in the path",
            get(b"/v1/jobs/\xff\xfe"),
            Expect::Bare(400),
        ),
        (
            "raw 0xFF in the query",
            get(b"/v1/jobs?status=\xff"),
            Expect::Bare(400),
        ),
        (
            "a control byte in a header",
            http("GET", b"/healthz", &[("x-test", b"a\x01b")], b""),
            Expect::Bare(400),
        ),
        ("GET /v1/jobs/%FF%FE", get(b"/v1/jobs/%FF%FE"), not_a_job),
        (
            "GET /assets/%80",
            get(b"/assets/%80"),
            Expect::Error(404, "not_found"),
        ),
        (
            "GET /v1/jobs/%FF/events",
            get(b"/v1/jobs/%FF/events"),
            not_a_job,
        ),
        (
            "POST /v1/jobs/%FF/cancel",
            http("POST", b"/v1/jobs/%FF/cancel", &[], b""),
            not_a_job,
        ),
        (
            "POST /v1/jobs/%C3%28/retry",
            http("POST", b"/v1/jobs/%C3%28/retry", &[], b""),
            not_a_job,
        ),
        ("GET /v1/jobs/%00 (NUL)", get(b"/v1/jobs/%00"), not_a_job),
        (
            "?status=%FF",
            get(b"/v1/jobs?status=%FF"),
            Expect::Error(400, "invalid_query"),
        ),
        (
            "?cursor=%FF",
            get(b"/v1/jobs?cursor=%FF"),
            Expect::Error(400, "invalid_cursor"),
        ),
        (
            "?%FF=1",
            get(b"/v1/jobs?%FF=1"),
            Expect::Error(400, "invalid_query"),
        ),
        (
            "?limit=%FF",
            get(b"/v1/jobs?limit=%FF"),
            Expect::Error(400, "invalid_query"),
        ),
        (
            "?wait=%FF on submit",
            post_json(b"/v1/jobs?wait=%FF", br#"{"type": "noop"}"#),
            Expect::Error(400, "invalid_query"),
        ),
        (
            "?last_event_id=%FF",
            get(format!("{events}?last_event_id=%FF").as_bytes()),
            Expect::Error(400, "invalid_last_event_id"),
        ),
        (
            "/v1/events?status=%FF",
            get(b"/v1/events?status=%FF"),
            Expect::Error(400, "invalid_query"),
        ),
        (
            "/v1/doctor?stuck_after_s=%FF",
            get(b"/v1/doctor?stuck_after_s=%FF"),
            Expect::Error(400, "invalid_query"),
        ),
        (
            "Idempotency-Key with 0xFF",
            http(
                "POST",
                b"/v1/jobs",
                &[
                    ("content-type", b"application/json"),
                    ("idempotency-key", b"order-\xff\xfe"),
                ],
                br#"{"type": "noop"}"#,
            ),
            Expect::Error(400, "invalid_request"),
        ),
        (
            "Last-Event-ID with 0xFF",
            http(
                "GET",
                events.as_bytes(),
                &[("last-event-id", b"1\xff")],
                b"",
            ),
            Expect::Error(400, "invalid_last_event_id"),
        ),
    ];
    for (what, request, expect) in cases {
        let answer = server.send(what, request).await;
        check(&server, what, answer, expect).await;
    }
    server.expect_jobs(1).await;
    server.finish().await;
}

/// Unknown types and ids of odd shapes; `Last-Event-ID`s and cursors that are negative,
/// beyond 64 bits or not numbers.
#[tokio::test]
async fn unknown_ids_and_types_invalid_last_event_ids_and_cursors() {
    let server = Server::start("");
    let (_, job) = submit(&server.client, &server.kiln.base, json!({"type": "noop"})).await;
    let id = id_of(&job);
    wait_terminal(&server.client, &server.kiln.base, &id, LONG).await;

    let unknown_type = Expect::Error(400, "unknown_type");
    let long_type = "t".repeat(10_000);
    for (what, job_type) in [
        ("empty type", ""),
        ("upper-case NOOP", "NOOP"),
        ("type with a NUL", "noop\u{0}"),
        ("non-ASCII type", "nöop"),
        ("10 000-character type", long_type.as_str()),
    ] {
        let body = serde_json::to_vec(&json!({"type": job_type})).unwrap();
        let answer = server.send(what, post_json(b"/v1/jobs", &body)).await;
        check(&server, what, answer, unknown_type).await;
    }

    let not_found = Expect::Error(404, "not_found");
    let long_id = "a".repeat(10_000);
    for job_id in [
        "00000000-0000-0000-0000-000000000000",
        "ffffffff-ffff-ffff-ffff-ffffffffffff",
        "%2e%2e",
        "..%2Fhealthz",
        "-1",
        "99999999999999999999999",
        long_id.as_str(),
    ] {
        let short: String = job_id.chars().take(40).collect();
        for (method, suffix) in [
            ("GET", ""),
            ("GET", "/events"),
            ("POST", "/cancel"),
            ("POST", "/retry"),
        ] {
            let target = format!("/v1/jobs/{job_id}{suffix}");
            let what = format!("{method} /v1/jobs/{short}{suffix}");
            let answer = server
                .send(&what, http(method, target.as_bytes(), &[], b""))
                .await;
            check(&server, &what, answer, not_found).await;
        }
    }

    let events = format!("/v1/jobs/{id}/events");
    let bad_id = Expect::Error(400, "invalid_last_event_id");
    for value in [
        "-1",
        "99999999999999999999999",
        "18446744073709551616",
        "1e3",
        "0x10",
        "1 2",
        "٣",
    ] {
        let header = http(
            "GET",
            events.as_bytes(),
            &[("last-event-id", value.as_bytes())],
            b"",
        );
        let what = format!("Last-Event-ID: {value}");
        let answer = server.send(&what, header).await;
        check(&server, &what, answer, bad_id).await;
        let query = format!("{events}?last_event_id={}", percent_encode(value));
        let what = format!("?last_event_id={value}");
        let answer = server.send(&what, get(query.as_bytes())).await;
        check(&server, &what, answer, bad_id).await;
    }
    // The largest id is well-formed: the job is over and nothing follows it.
    let answer = server
        .send(
            "Last-Event-ID: u64::MAX",
            http(
                "GET",
                events.as_bytes(),
                &[("last-event-id", u64::MAX.to_string().as_bytes())],
                b"",
            ),
        )
        .await;
    check(
        &server,
        "Last-Event-ID: u64::MAX",
        answer,
        Expect::Success(204),
    )
    .await;

    let bad_cursor = Expect::Error(400, "invalid_cursor");
    for cursor in [
        "-1",
        "0",
        "99999999999999999999999",
        "18446744073709551616",
        "1e300",
        "00000000-0000-0000-0000-00000000000g",
        "%00",
    ] {
        let target = format!("/v1/jobs?cursor={cursor}");
        let answer = server.send(&target, get(target.as_bytes())).await;
        check(&server, &target, answer, bad_cursor).await;
    }
    server.expect_jobs(1).await;
    server.finish().await;
}

/// Percent-encodes every byte that is not alphanumeric (for query values).
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// -1, 1e300 and 2^64 (and the types' own maxima) for every number the API reads: the
/// submit options, `?wait=`, `?limit=`, the bulk routes' `limit` and `older_than_s`, and
/// the doctor's `stuck_after_s`.
#[tokio::test]
async fn negative_and_huge_numbers_everywhere() {
    let server = Server::start("");
    let invalid_request = Expect::Error(400, "invalid_request");
    let invalid_query = Expect::Error(400, "invalid_query");
    let huge = [
        "-1",
        "1e300",
        "18446744073709551616",
        "-18446744073709551617",
    ];

    // Submit options: non-integers and numbers beyond the field's type are wrong types,
    // the rest out of range (-1 is a valid priority, so it is left out there).
    let maxima = [
        "2147483648",
        "4294967295",
        "4294967296",
        "18446744073709551615",
    ];
    for field in ["priority", "max_attempts", "timeout_s"] {
        let skip = if field == "priority" { 1 } else { 0 };
        for value in huge.iter().skip(skip).chain(&maxima) {
            let body = format!(r#"{{"type": "noop", "{field}": {value}}}"#);
            let what = format!("{field}: {value}");
            let answer = server
                .send(&what, post_json(b"/v1/jobs", body.as_bytes()))
                .await;
            check(&server, &what, answer, invalid_request).await;
        }
    }
    let body = br#"{"type": "noop", "run_at": "1969-12-31T23:59:59Z"}"#;
    let answer = server
        .send("run_at 1969", post_json(b"/v1/jobs", body))
        .await;
    check(&server, "run_at before 1970", answer, invalid_request).await;

    for value in huge.iter().chain(&["NaN", "inf", "-inf", "-0.001"]) {
        let target = format!("/v1/jobs?wait={}", percent_encode(value));
        let answer = server
            .send(
                &target,
                post_json(target.as_bytes(), br#"{"type": "noop"}"#),
            )
            .await;
        check(&server, &format!("?wait={value}"), answer, invalid_query).await;
    }
    for value in huge {
        let target = format!("/v1/jobs?limit={}", percent_encode(value));
        let answer = server.send(&target, get(target.as_bytes())).await;
        check(&server, &format!("?limit={value}"), answer, invalid_query).await;

        let target = format!("/v1/doctor?stuck_after_s={}", percent_encode(value));
        let answer = server.send(&target, get(target.as_bytes())).await;
        check(
            &server,
            &format!("?stuck_after_s={value}"),
            answer,
            invalid_query,
        )
        .await;
    }
    for route in ["/v1/jobs/bulk/retry", "/v1/jobs/bulk/cancel"] {
        for value in huge.iter().chain(&["0", "1001"]) {
            let body = format!(r#"{{"limit": {value}}}"#);
            let what = format!("{route} limit: {value}");
            let answer = server
                .send(&what, post_json(route.as_bytes(), body.as_bytes()))
                .await;
            check(&server, &what, answer, invalid_request).await;
        }
    }
    for value in huge {
        let body = format!(r#"{{"older_than_s": {value}}}"#);
        let what = format!("bulk cancel older_than_s: {value}");
        let answer = server
            .send(&what, post_json(b"/v1/jobs/bulk/cancel", body.as_bytes()))
            .await;
        check(&server, &what, answer, invalid_request).await;
    }

    // Extreme but valid: accepted, and nothing overflows.
    let far = br#"{"type": "noop", "run_at": "9999-12-31T23:59:59Z", "priority": -1}"#;
    let answer = server
        .send("run_at 9999", post_json(b"/v1/jobs", far))
        .await;
    check(&server, "run_at 9999-12-31", answer, Expect::Success(202)).await;
    let max = u64::MAX;
    let body = format!(r#"{{"status": "queued", "older_than_s": {max}}}"#);
    let answer = server
        .send(
            "older_than_s max",
            post_json(b"/v1/jobs/bulk/cancel", body.as_bytes()),
        )
        .await;
    assert_eq!(answer.json()["cancelled"], 0, "{}", answer.text());
    check(
        &server,
        "older_than_s: u64::MAX",
        answer,
        Expect::Success(200),
    )
    .await;
    let target = format!("/v1/doctor?stuck_after_s={max}");
    let answer = server.send(&target, get(target.as_bytes())).await;
    check(
        &server,
        "stuck_after_s: u64::MAX",
        answer,
        Expect::Success(200),
    )
    .await;
    let target = b"/v1/jobs?wait=1e-300";
    let answer = server
        .send("wait 1e-300", post_json(target, br#"{"type": "noop"}"#))
        .await;
    assert!(
        matches!(answer.status, 200 | 202),
        "?wait=1e-300 is a valid (tiny) wait: {} {}",
        answer.status,
        answer.text()
    );

    server.expect_jobs(2).await;
    server.finish().await;
}

/// Headers over size: one header of 100 KB (under hyper's default read buffer of about
/// 400 KB, so it reaches the router), one of 1 MB and 200 small ones (over hyper's limits:
/// it answers 431 and closes, and Kiln's listener puts that answer in the error shape,
/// `headers_too_large`), and a 100 KB request line (414 from hyper). 100 KB in the
/// headers Kiln reads must get their own 4xx.
#[tokio::test]
async fn headers_over_size() {
    let server = Server::start("");
    let (_, job) = submit(&server.client, &server.kiln.base, json!({"type": "noop"})).await;
    let id = id_of(&job);
    wait_terminal(&server.client, &server.kiln.base, &id, LONG).await;
    let big = vec![b'a'; 100 * 1024];
    let huge = vec![b'a'; 1024 * 1024];

    // An unknown 100 KB header is no error of the request's own: whatever hyper decides
    // (today it passes it on and /healthz answers 200), never a 5xx.
    let answer = server
        .send(
            "100 KB header",
            http("GET", b"/healthz", &[("x-padding", &big)], b""),
        )
        .await;
    check(&server, "100 KB header", answer, Expect::OneOf(&[200, 431])).await;

    let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
        (
            "100 KB Idempotency-Key",
            http(
                "POST",
                b"/v1/jobs",
                &[
                    ("content-type", b"application/json"),
                    ("idempotency-key", &big),
                ],
                br#"{"type": "noop"}"#,
            ),
            Expect::Error(400, "invalid_request"),
        ),
        (
            "100 KB Last-Event-ID",
            http(
                "GET",
                format!("/v1/jobs/{id}/events").as_bytes(),
                &[("last-event-id", &big)],
                b"",
            ),
            Expect::Error(400, "invalid_last_event_id"),
        ),
        (
            "100 KB Content-Type",
            http(
                "POST",
                b"/v1/jobs",
                &[("content-type", &big)],
                br#"{"type": "noop"}"#,
            ),
            Expect::Error(415, "unsupported_media_type"),
        ),
        (
            "1 MB header",
            http("GET", b"/healthz", &[("x-padding", &huge)], b""),
            Expect::Error(431, "headers_too_large"),
        ),
        (
            "200 headers",
            {
                let names: Vec<String> = (0..200).map(|i| format!("x-header-{i}")).collect();
                let headers: Vec<(&str, &[u8])> =
                    names.iter().map(|n| (n.as_str(), &b"v"[..])).collect();
                http("GET", b"/healthz", &headers, b"")
            },
            Expect::Error(431, "headers_too_large"),
        ),
        (
            "a 100 KB request line",
            get(format!("/v1/jobs/{}", "a".repeat(100 * 1024)).as_bytes()),
            // Over the `http` crate's 64 KiB URI limit: hyper answers 414 itself.
            Expect::Bare(414),
        ),
    ];
    for (what, request, expect) in cases {
        let answer = server.send(what, request).await;
        check(&server, what, answer, expect).await;
    }
    server.expect_jobs(1).await;
    server.finish().await;
}
