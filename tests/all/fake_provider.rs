//! A fake LLM provider on loopback for the provider tests: a small HTTP/1.1 server that
//! speaks the OpenAI Chat Completions (`POST /v1/chat/completions`) and Anthropic Messages
//! (`POST /v1/messages`) wire formats, answering whole or streamed (SSE, with a pause
//! between chunks). Each test tells it how to misbehave: 429 with `Retry-After` or 500 for
//! the first N calls, one status always, slow answers, malformed bodies, error messages
//! that quote the request's credentials. Any other path is a 404, as a real API answers a
//! `base_url` missing its `/v1`. It counts the calls it received and the most in
//! flight at once, and records every request's path, headers and body.
//!
//! Written on plain tokio sockets, so it depends on nothing the host uses: one request per
//! connection (`connection: close`), `content-length` for whole answers and chunked
//! transfer for streams.

#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How the fake answers. Set per test with [`FakeProvider::set`].
#[derive(Clone, Debug)]
pub struct Behavior {
    /// The first N calls get `first_status` instead of an answer.
    pub fail_first: usize,
    /// The status of those first N calls (429 or 500, say).
    pub first_status: u16,
    /// Every call gets this status (after the first N).
    pub status_always: Option<u16>,
    /// `Retry-After` sent with 429s.
    pub retry_after: String,
    /// Body of error answers; default `{"error": {"message": "fake error"}}`.
    pub error_body: Option<String>,
    /// Pause before answering, ms.
    pub delay_ms: u64,
    /// Pause between streamed chunks, ms.
    pub chunk_delay_ms: u64,
    /// Answer 200 with a body that is not the wire format.
    pub malformed: bool,
    /// The answer's text, as the deltas a stream sends.
    pub deltas: Vec<String>,
    /// Reported (input, output) tokens.
    pub usage: (u32, u32),
    /// Error answers quote the request's credentials (its `authorization` and `x-api-key`
    /// headers) this many times over in their message instead of `error_body` (0: they do
    /// not), as a careless provider or a proxy dumping its request headers might: for tests
    /// that a key echoed back never leaves the host, even in a long message cut short.
    pub echo_credentials: usize,
    /// A request whose body contains this text is answered 200 with a broken body (whole
    /// answers) or a stream that breaks off after `cut_stream_after` deltas (streams);
    /// other requests are answered normally.
    pub break_when_contains: Option<String>,
    /// A broken stream sends this many deltas, then garbage, then closes (default 2).
    pub cut_stream_after: usize,
    /// Answer with these tool calls `(id, name, arguments JSON)` instead of text, unless
    /// the conversation already ends with a tool result.
    pub tool_calls: Vec<(String, String, String)>,
    /// Reported (cached input, reasoning) tokens, in each format's usage details.
    pub usage_details: Option<(u32, u32)>,
    /// Call N (counting from 0, errors included) answers this text instead of `deltas`,
    /// as one delta; calls past the list use `deltas`.
    pub texts_by_call: Vec<String>,
}

impl Default for Behavior {
    fn default() -> Self {
        Self {
            fail_first: 0,
            first_status: 500,
            status_always: None,
            retry_after: "1".into(),
            error_body: None,
            delay_ms: 0,
            chunk_delay_ms: 15,
            malformed: false,
            deltas: ["Once", " upon", " a", " time", ", é ✓."]
                .map(String::from)
                .to_vec(),
            usage: (11, 5),
            echo_credentials: 0,
            break_when_contains: None,
            cut_stream_after: 2,
            tool_calls: Vec::new(),
            usage_details: None,
            texts_by_call: Vec::new(),
        }
    }
}

impl Behavior {
    pub fn text(&self) -> String {
        self.deltas.concat()
    }
}

/// One request the fake received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Value,
    /// When it arrived.
    pub at: std::time::Instant,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
struct Shared {
    behavior: Mutex<Behavior>,
    calls: AtomicUsize,
    answered: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

/// The running fake; stops when dropped.
pub struct FakeProvider {
    /// `http://127.0.0.1:PORT/v1`: the providers' `base_url`.
    pub base_url: String,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    /// Starts a fake on 127.0.0.1:0 with the default behavior.
    pub async fn start() -> Self {
        Self::with(Behavior::default()).await
    }

    /// Starts a fake that behaves as told.
    pub async fn with(behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            behavior: Mutex::new(behavior),
            ..Default::default()
        });
        let state = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    break;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let _ = serve(socket, state).await;
                });
            }
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            shared,
            task,
        }
    }

    /// Changes how it answers from now on.
    pub fn set(&self, change: impl FnOnce(&mut Behavior)) {
        change(&mut self.shared.behavior.lock().unwrap());
    }

    pub fn behavior(&self) -> Behavior {
        self.shared.behavior.lock().unwrap().clone()
    }

    /// Requests received.
    pub fn calls(&self) -> usize {
        self.shared.calls.load(Ordering::SeqCst)
    }

    /// Requests it answered with a whole, well-formed 200 answer (what a real provider
    /// bills), counted once the answer is written.
    pub fn answered(&self) -> usize {
        self.shared.answered.load(Ordering::SeqCst)
    }

    /// The most requests it was answering at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// Every request received, in arrival order.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }
}

/// Counts a request in flight until dropped.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(shared: Arc<Shared>) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        Self(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn read_request(socket: &mut TcpStream) -> std::io::Result<Option<Seen>> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            break at;
        }
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let path = request_line
        .split_whitespace()
        .nth(1)
        .unwrap_or_default()
        .to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buffer[head_end + 4..].to_vec();
    while body.len() < length {
        let n = socket.read(&mut chunk).await?;
        if n == 0 {
            return Ok(None);
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Ok(Some(Seen {
        path,
        headers,
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: std::time::Instant::now(),
    }))
}

/// The paths the fake serves: the two wire formats' endpoints and the providers' probe.
const ROUTES: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/messages",
    "/v1/models",
    "/v1/embeddings",
];

/// Whether the request's conversation ends with a tool's result (either format).
fn ends_with_tool_result(body: &Value) -> bool {
    let Some(last) = body["messages"].as_array().and_then(|m| m.last()) else {
        return false;
    };
    last["role"] == "tool"
        || last["content"]
            .as_array()
            .is_some_and(|blocks| blocks.iter().any(|b| b["type"] == "tool_result"))
}

async fn serve(mut socket: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let Some(seen) = read_request(&mut socket).await? else {
        return Ok(());
    };
    let in_flight = InFlight::new(shared.clone());
    let index = shared.calls.fetch_add(1, Ordering::SeqCst);
    shared.seen.lock().unwrap().push(seen.clone());
    let behavior = shared.behavior.lock().unwrap().clone();
    if behavior.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(behavior.delay_ms)).await;
    }
    if !ROUTES.contains(&seen.path.as_str()) {
        drop(in_flight);
        let body = json!({"error": {"type": "not_found_error", "message": "Not Found"}});
        return write_whole(&mut socket, 404, "", &body.to_string()).await;
    }
    let anthropic = seen.path.ends_with("/messages");
    let status = if index < behavior.fail_first {
        Some(behavior.first_status)
    } else {
        behavior.status_always
    };
    if let Some(status) = status {
        let body = if behavior.echo_credentials > 0 {
            echoed_credentials(&seen, behavior.echo_credentials)
        } else {
            behavior
                .error_body
                .clone()
                .unwrap_or_else(|| json!({"error": {"message": "fake error"}}).to_string())
        };
        let extra = if status == 429 {
            format!("retry-after: {}\r\n", behavior.retry_after)
        } else {
            String::new()
        };
        drop(in_flight);
        return write_whole(&mut socket, status, &extra, &body).await;
    }
    let broken = behavior
        .break_when_contains
        .as_ref()
        .is_some_and(|text| seen.body.to_string().contains(text.as_str()));
    if behavior.malformed || broken && seen.body["stream"] != true {
        drop(in_flight);
        return write_whole(&mut socket, 200, "", "{\"choices\": [ {\"mess").await;
    }
    let model = seen.body["model"].as_str().unwrap_or("fake").to_string();
    if seen.path.ends_with("/embeddings") {
        let inputs = seen.body["input"].as_array().cloned().unwrap_or_default();
        let data: Vec<Value> = inputs
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let len = text.as_str().unwrap_or_default().len() as f64;
                json!({"object": "embedding", "index": i, "embedding": [1.0, len, i as f64]})
            })
            .collect();
        let body = json!({"object": "list", "data": data, "model": model,
                          "usage": {"prompt_tokens": behavior.usage.0, "total_tokens": behavior.usage.0}});
        drop(in_flight);
        write_whole(&mut socket, 200, "", &body.to_string()).await?;
        shared.answered.fetch_add(1, Ordering::SeqCst);
        return Ok(());
    }
    let mut behavior = behavior;
    if let Some(text) = behavior.texts_by_call.get(index) {
        behavior.deltas = vec![text.clone()];
    }
    if ends_with_tool_result(&seen.body) {
        behavior.tool_calls.clear();
    }
    if seen.body["stream"] == true {
        let mut events = if anthropic {
            anthropic_events(&behavior, &model)
        } else {
            openai_events(&behavior, &model)
        };
        if broken {
            // The opening event and the first deltas, then a line that is no SSE event
            // of the format, then the connection closes without the stream's end.
            let deltas_from = if anthropic { 3 } else { 1 };
            events.truncate(deltas_from + behavior.cut_stream_after);
            events.push("data: {\"choices\": [ {\"delta\n\n".to_string());
        }
        socket
            .write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
                  transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
            )
            .await?;
        let count = events.len();
        let mut in_flight = Some(in_flight);
        for (i, event) in events.into_iter().enumerate() {
            if i > 0 && behavior.chunk_delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(behavior.chunk_delay_ms)).await;
            }
            if i + 1 == count {
                in_flight.take();
            }
            socket
                .write_all(format!("{:x}\r\n{event}\r\n", event.len()).as_bytes())
                .await?;
            socket.flush().await?;
        }
        socket.write_all(b"0\r\n\r\n").await?;
        if !broken {
            shared.answered.fetch_add(1, Ordering::SeqCst);
        }
        return socket.shutdown().await;
    }
    let (input, output) = behavior.usage;
    let (cached, reasoning) = behavior.usage_details.unwrap_or((0, 0));
    let calling = !behavior.tool_calls.is_empty();
    let body = if anthropic {
        let mut content = vec![json!({"type": "text", "text": behavior.text()})];
        if calling {
            content = behavior
                .tool_calls
                .iter()
                .map(|(id, name, args)| {
                    let input: Value = serde_json::from_str(args).unwrap_or(json!({}));
                    json!({"type": "tool_use", "id": id, "name": name, "input": input})
                })
                .collect();
        }
        json!({
            "id": "msg_fake", "type": "message", "role": "assistant", "model": model,
            "content": content,
            "stop_reason": if calling { "tool_use" } else { "end_turn" },
            "usage": {"input_tokens": input.saturating_sub(cached), "output_tokens": output,
                      "cache_read_input_tokens": cached}
        })
    } else {
        let mut message = json!({"role": "assistant", "content": behavior.text()});
        if calling {
            message["content"] = Value::Null;
            message["tool_calls"] = behavior
                .tool_calls
                .iter()
                .map(|(id, name, args)| {
                    json!({"id": id, "type": "function",
                           "function": {"name": name, "arguments": args}})
                })
                .collect();
        }
        json!({
            "id": "chatcmpl-fake", "object": "chat.completion", "model": model,
            "choices": [{"index": 0, "finish_reason": if calling { "tool_calls" } else { "stop" },
                         "message": message}],
            "usage": {"prompt_tokens": input, "completion_tokens": output,
                      "total_tokens": input + output,
                      "prompt_tokens_details": {"cached_tokens": cached},
                      "completion_tokens_details": {"reasoning_tokens": reasoning}}
        })
    };
    drop(in_flight);
    write_whole(&mut socket, 200, "", &body.to_string()).await?;
    shared.answered.fetch_add(1, Ordering::SeqCst);
    Ok(())
}

/// An error body quoting the credentials `seen` carried, `times` times over.
fn echoed_credentials(seen: &Seen, times: usize) -> String {
    let credentials = format!(
        "authorization={:?} x-api-key={:?}",
        seen.header("authorization").unwrap_or_default(),
        seen.header("x-api-key").unwrap_or_default()
    );
    let message = format!(
        "invalid credentials: {}",
        vec![credentials; times].join("; ")
    );
    json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string()
}

async fn write_whole(
    socket: &mut TcpStream,
    status: u16,
    extra_headers: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        529 => "Overloaded",
        _ => "Status",
    };
    let response = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n{extra_headers}\r\n{body}",
        body.len()
    );
    socket.write_all(response.as_bytes()).await?;
    socket.shutdown().await
}

fn sse(event: Option<&str>, data: &Value) -> String {
    match event {
        Some(name) => format!("event: {name}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

fn openai_events(behavior: &Behavior, model: &str) -> Vec<String> {
    let chunk = |delta: Value, finish: Value| {
        sse(
            None,
            &json!({"id": "c", "object": "chat.completion.chunk", "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
        )
    };
    let mut events = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    if behavior.tool_calls.is_empty() {
        for delta in &behavior.deltas {
            events.push(chunk(json!({"content": delta}), Value::Null));
        }
        events.push(chunk(json!({}), json!("stop")));
    } else {
        // Each call's id and name first, then its arguments in two pieces.
        for (i, (id, name, args)) in behavior.tool_calls.iter().enumerate() {
            events.push(chunk(
                json!({"tool_calls": [{"index": i, "id": id, "type": "function",
                                       "function": {"name": name, "arguments": ""}}]}),
                Value::Null,
            ));
            let half = args.len() / 2;
            for piece in [&args[..half], &args[half..]] {
                events.push(chunk(
                    json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                    Value::Null,
                ));
            }
        }
        events.push(chunk(json!({}), json!("tool_calls")));
    }
    let (input, output) = behavior.usage;
    let (cached, reasoning) = behavior.usage_details.unwrap_or((0, 0));
    events.push(sse(
        None,
        &json!({"id": "c", "object": "chat.completion.chunk", "model": model, "choices": [],
                "usage": {"prompt_tokens": input, "completion_tokens": output,
                          "total_tokens": input + output,
                          "prompt_tokens_details": {"cached_tokens": cached},
                          "completion_tokens_details": {"reasoning_tokens": reasoning}}}),
    ));
    events.push("data: [DONE]\n\n".to_string());
    events
}

fn anthropic_events(behavior: &Behavior, model: &str) -> Vec<String> {
    let (input, output) = behavior.usage;
    let (cached, _) = behavior.usage_details.unwrap_or((0, 0));
    let mut events = vec![
        sse(
            Some("message_start"),
            &json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message",
                    "role": "assistant", "model": model, "content": [],
                    "usage": {"input_tokens": input.saturating_sub(cached), "output_tokens": 1,
                              "cache_read_input_tokens": cached}}}),
        ),
        sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
        ),
        sse(Some("ping"), &json!({"type": "ping"})),
    ];
    for delta in &behavior.deltas {
        events.push(sse(
            Some("content_block_delta"),
            &json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": delta}}),
        ));
    }
    events.push(sse(
        Some("content_block_stop"),
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    for (i, (id, name, args)) in behavior.tool_calls.iter().enumerate() {
        let index = i + 1;
        events.push(sse(
            Some("content_block_start"),
            &json!({"type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
        ));
        let half = args.len() / 2;
        for piece in [&args[..half], &args[half..]] {
            events.push(sse(
                Some("content_block_delta"),
                &json!({"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}),
            ));
        }
        events.push(sse(
            Some("content_block_stop"),
            &json!({"type": "content_block_stop", "index": index}),
        ));
    }
    let stop = if behavior.tool_calls.is_empty() {
        "end_turn"
    } else {
        "tool_use"
    };
    events.push(sse(
        Some("message_delta"),
        &json!({"type": "message_delta", "delta": {"stop_reason": stop},
                "usage": {"output_tokens": output}}),
    ));
    events.push(sse(Some("message_stop"), &json!({"type": "message_stop"})));
    events
}
