//! The Anthropic Messages API wire format (`POST {base_url}/messages`).
//!
//! - Base URL: both `https://api.anthropic.com` (the form the Anthropic SDKs take; they add
//!   `/v1` themselves) and `https://api.anthropic.com/v1` work: [`versioned_base`] adds the
//!   `/v1` when the URL's path does not end with it.
//! - Auth: `x-api-key: KEY` when a key is configured, and always
//!   `anthropic-version: 2023-06-01`.
//! - System messages go to the top-level `system` field (joined by blank lines); the
//!   others stay in `messages`.
//! - `max_tokens` is required by the API: [`DEFAULT_MAX_TOKENS`] when the request has none.
//! - JSON output: the API has no JSON mode, so the system prompt gains an instruction to
//!   answer with one JSON object only.
//! - Structured output: `output_config: {"format": {"type": "json_schema", "schema": …}}`.
//! - Tools: `tools: [{name, description, input_schema}]`; the answer's `tool_use` blocks
//!   (`{id, name, input}`); an assistant message that called tools sends them back as
//!   `tool_use` blocks, and `tool` messages become `tool_result` blocks of one user turn.
//! - Usage: `input_tokens` counts only uncached input, so the input total is it plus
//!   `cache_read_input_tokens` and `cache_creation_input_tokens`; cached input is the
//!   cache reads.
//! - Streaming: `message_start` (input tokens), `content_block_delta` with a `text_delta`,
//!   `message_delta` (output tokens), `message_stop`; `error` events map onto the error
//!   variants; a `content_block_start` of a `tool_use` block opens a tool call whose
//!   arguments arrive as `input_json_delta` pieces; `ping` is ignored.

use reqwest::RequestBuilder;
use serde_json::{Value, json};

use super::wire::{Failure, MAX_TOOL_CALLS, Parsed, SseEvent, StreamState, error_detail, tokens};
use super::{ApiKey, FinishReason, LlmError, LlmRequest, Message, Role, ToolCall};

/// Default base URL of the `anthropic` kind.
pub const ANTHROPIC_BASE_URL: &str = "https://api.anthropic.com/v1";

/// `max_tokens` sent when a request sets none (the API requires one).
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The API version header value this wire format speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

pub(crate) const PATH: &str = "messages";

/// What a `base_url` of this kind looks like, for error messages.
pub(crate) const BASE_URL_FORM: &str =
    "https://api.anthropic.com (with or without /v1), or a proxy's URL in the same form";

/// `base` with the API version segment: as is when its path ends with `/v1`, else with
/// `/v1` added, so the SDKs' convention (`https://api.anthropic.com`) and Kiln's
/// (`…/v1`) reach the same endpoint. `base` has no trailing slash.
pub(crate) fn versioned_base(base: &str) -> String {
    let path_ends_in_v1 = reqwest::Url::parse(base)
        .is_ok_and(|url| url.path().trim_end_matches('/').ends_with("/v1"));
    if path_ends_in_v1 {
        base.to_string()
    } else {
        format!("{base}/v1")
    }
}

/// Added to the system prompt of JSON-output requests.
pub const JSON_INSTRUCTION: &str = "Respond with exactly one JSON object and nothing else: \
     no prose before or after it, no Markdown code fences.";

pub(crate) fn headers(builder: RequestBuilder, key: Option<&ApiKey>) -> RequestBuilder {
    let builder = builder.header("anthropic-version", ANTHROPIC_VERSION);
    match key {
        Some(key) => builder.header("x-api-key", key.expose()),
        None => builder,
    }
}

/// The content of one non-system message: plain text, or blocks when it carries tool
/// calls or a tool result.
fn content(m: &Message) -> Value {
    if m.role == Role::Tool {
        return json!([{
            "type": "tool_result",
            "tool_use_id": m.tool_call_id.as_deref().unwrap_or_default(),
            "content": m.content,
        }]);
    }
    if m.tool_calls.is_empty() {
        return json!(m.content);
    }
    let mut blocks = Vec::new();
    if !m.content.is_empty() {
        blocks.push(json!({ "type": "text", "text": m.content }));
    }
    for call in &m.tool_calls {
        let input: Value = serde_json::from_str(&call.arguments).unwrap_or_else(|_| json!({}));
        blocks
            .push(json!({ "type": "tool_use", "id": call.id, "name": call.name, "input": input }));
    }
    Value::Array(blocks)
}

/// `content` as a list of blocks.
fn blocks(content: Value) -> Vec<Value> {
    match content {
        Value::Array(blocks) => blocks,
        Value::String(text) => vec![json!({ "type": "text", "text": text })],
        other => vec![other],
    }
}

pub(crate) fn body(request: &LlmRequest, stream: bool) -> Value {
    let mut system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    if request.json_output && request.json_schema.is_none() {
        system.push(JSON_INSTRUCTION);
    }
    // Tool results are user turns; consecutive turns of one side are merged, as the API
    // wants the sides to alternate.
    let mut messages: Vec<Value> = Vec::new();
    for m in request.messages.iter().filter(|m| m.role != Role::System) {
        let role = if m.role == Role::Assistant {
            "assistant"
        } else {
            "user"
        };
        let content = content(m);
        match messages.last_mut() {
            Some(last) if last["role"] == role => {
                let mut merged = blocks(last["content"].take());
                merged.extend(blocks(content));
                last["content"] = Value::Array(merged);
            }
            _ => messages.push(json!({ "role": role, "content": content })),
        }
    }
    let mut body = json!({
        "model": request.model.as_deref().unwrap_or("default"),
        "max_tokens": request.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS),
        "messages": messages,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(spec) = &request.json_schema {
        body["output_config"] =
            json!({ "format": { "type": "json_schema", "schema": spec.schema } });
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "name": tool.name,
                    "description": tool.description,
                    "input_schema": tool.parameters,
                })
            })
            .collect();
    }
    if stream {
        body["stream"] = json!(true);
    }
    body
}

fn finish_reason(value: &Value) -> Option<FinishReason> {
    Some(match value.as_str()? {
        "end_turn" | "stop_sequence" => FinishReason::Stop,
        "max_tokens" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        _ => FinishReason::Other,
    })
}

/// Input tokens in all (uncached plus cache reads and writes) and the cache reads, from
/// a `usage` object; `None` where it has no `input_tokens`.
fn input_usage(usage: &Value) -> (Option<u32>, Option<u32>) {
    let Some(uncached) = tokens(&usage["input_tokens"]) else {
        return (None, tokens(&usage["cache_read_input_tokens"]));
    };
    let read = tokens(&usage["cache_read_input_tokens"]).unwrap_or(0);
    let written = tokens(&usage["cache_creation_input_tokens"]).unwrap_or(0);
    (
        Some(uncached.saturating_add(read).saturating_add(written)),
        Some(read),
    )
}

pub(crate) fn parse(value: &Value) -> Result<Parsed, String> {
    let Some(blocks) = value["content"].as_array() else {
        return Err("it has no content array".into());
    };
    let text: String = blocks
        .iter()
        .filter(|b| b["type"] == "text")
        .filter_map(|b| b["text"].as_str())
        .collect();
    let mut tool_calls = Vec::new();
    for block in blocks
        .iter()
        .filter(|b| b["type"] == "tool_use")
        .take(MAX_TOOL_CALLS)
    {
        let (Some(id), Some(name)) = (block["id"].as_str(), block["name"].as_str()) else {
            return Err("a tool_use block has no id or name".into());
        };
        tool_calls.push(ToolCall {
            id: id.to_string(),
            name: name.to_string(),
            arguments: block["input"].to_string(),
        });
    }
    let (input_tokens, cached_input_tokens) = input_usage(&value["usage"]);
    Ok(Parsed {
        text,
        model: value["model"].as_str().map(str::to_string),
        input_tokens,
        output_tokens: tokens(&value["usage"]["output_tokens"]),
        cached_input_tokens,
        reasoning_tokens: None,
        tool_calls,
        finish_reason: finish_reason(&value["stop_reason"]),
    })
}

pub(crate) fn on_event(event: &SseEvent, state: &mut StreamState) -> Result<(), Failure> {
    if event.data.trim().is_empty() {
        return Ok(());
    }
    let data: Value = serde_json::from_str(&event.data).map_err(|e| {
        Failure::Final(LlmError::Unavailable(format!(
            "a streamed event is not JSON ({e})"
        )))
    })?;
    let kind = data["type"].as_str().unwrap_or(&event.event);
    match kind {
        "message_start" => {
            let message = &data["message"];
            if let Some(model) = message["model"].as_str() {
                state.model = Some(model.to_string());
            }
            (state.input_tokens, state.cached_input_tokens) = input_usage(&message["usage"]);
            state.output_tokens = tokens(&message["usage"]["output_tokens"]);
        }
        "content_block_start" => {
            let block = &data["content_block"];
            if block["type"] == "tool_use" {
                let index = data["index"].as_u64().unwrap_or(0) as usize;
                let call = state.tool_call(index)?;
                call.id = block["id"].as_str().unwrap_or_default().to_string();
                call.name = block["name"].as_str().unwrap_or_default().to_string();
            }
        }
        "content_block_delta" => {
            let delta = &data["delta"];
            if delta["type"] == "text_delta"
                && let Some(text) = delta["text"].as_str()
            {
                state.delta(text);
            }
            if delta["type"] == "input_json_delta"
                && let Some(piece) = delta["partial_json"].as_str()
            {
                let index = data["index"].as_u64().unwrap_or(0) as usize;
                state.tool_call(index)?.arguments.push_str(piece);
            }
        }
        "message_delta" => {
            let usage = &data["usage"];
            state.output_tokens = tokens(&usage["output_tokens"]).or(state.output_tokens);
            let (input, cached) = input_usage(usage);
            state.input_tokens = input.or(state.input_tokens);
            state.cached_input_tokens = cached.or(state.cached_input_tokens);
            if let Some(reason) = finish_reason(&data["delta"]["stop_reason"]) {
                state.finish_reason = Some(reason);
                state.finished = true;
            }
        }
        "message_stop" => {
            state.finished = true;
            state.done = true;
        }
        "error" => {
            let detail = error_detail(event.data.as_bytes());
            let message = format!("error in the stream: {detail}");
            return Err(match data["error"]["type"].as_str() {
                Some("rate_limit_error") => Failure::RateLimited {
                    retry_after: None,
                    message,
                },
                Some("invalid_request_error") => Failure::Final(LlmError::Rejected(message)),
                _ => Failure::Transient(message),
            });
        }
        // ping, content_block_stop, and future event types.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{JsonSchemaSpec, ToolSpec};

    #[test]
    fn base_urls_with_and_without_the_version_meet() {
        for base in ["https://api.anthropic.com", "https://api.anthropic.com/v1"] {
            assert_eq!(
                versioned_base(base),
                "https://api.anthropic.com/v1",
                "{base}"
            );
        }
        assert_eq!(
            versioned_base("http://proxy.local:8080/anthropic"),
            "http://proxy.local:8080/anthropic/v1"
        );
        assert_eq!(
            versioned_base("http://proxy.local/anthropic/v1"),
            "http://proxy.local/anthropic/v1"
        );
        // A path merely containing "v1" is not the version segment.
        assert_eq!(versioned_base("http://h/xv1"), "http://h/xv1/v1");
    }

    #[test]
    fn system_goes_top_level_and_json_is_instructed() {
        let request = LlmRequest {
            messages: vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, "hi"),
            ],
            model: Some("claude-x".into()),
            json_output: true,
            ..Default::default()
        };
        let body = body(&request, false);
        assert_eq!(body["max_tokens"], DEFAULT_MAX_TOKENS);
        assert_eq!(body["messages"].as_array().unwrap().len(), 1);
        let system = body["system"].as_str().unwrap();
        assert!(system.starts_with("be brief") && system.contains(JSON_INSTRUCTION));
        assert!(body.get("stream").is_none());
    }

    #[test]
    fn stream_events_accumulate() {
        let mut state = StreamState::default();
        for (event, data) in [
            (
                "message_start",
                r#"{"type":"message_start","message":{"model":"c","usage":{"input_tokens":7,"output_tokens":1}}}"#,
            ),
            ("ping", r#"{"type":"ping"}"#),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}"#,
            ),
            (
                "content_block_delta",
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":" there"}}"#,
            ),
            (
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":2}}"#,
            ),
            ("message_stop", r#"{"type":"message_stop"}"#),
        ] {
            let event = SseEvent {
                event: event.into(),
                data: data.into(),
            };
            on_event(&event, &mut state).unwrap();
        }
        assert_eq!(state.text, "Hi there");
        assert_eq!(
            (state.input_tokens, state.output_tokens),
            (Some(7), Some(2))
        );
        assert!(state.done);
    }

    #[test]
    fn error_events_map_to_failures() {
        let overloaded = SseEvent {
            event: "error".into(),
            data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                .into(),
        };
        let failure = on_event(&overloaded, &mut StreamState::default()).unwrap_err();
        assert!(matches!(failure, Failure::Transient(m) if m.contains("Overloaded")));
    }

    #[test]
    fn tools_schema_and_tool_results_take_the_messages_shape() {
        let request = LlmRequest {
            messages: vec![
                Message::new(Role::User, "weather?"),
                Message {
                    tool_calls: vec![
                        ToolCall {
                            id: "t1".into(),
                            name: "get".into(),
                            arguments: r#"{"city":"Oslo"}"#.into(),
                        },
                        ToolCall {
                            id: "t2".into(),
                            name: "get".into(),
                            arguments: r#"{"city":"Rome"}"#.into(),
                        },
                    ],
                    ..Message::new(Role::Assistant, "Looking.")
                },
                Message {
                    tool_call_id: Some("t1".into()),
                    ..Message::new(Role::Tool, "cold")
                },
                Message {
                    tool_call_id: Some("t2".into()),
                    ..Message::new(Role::Tool, "warm")
                },
            ],
            json_schema: Some(JsonSchemaSpec {
                name: "w".into(),
                schema: json!({"type": "object"}),
            }),
            tools: vec![ToolSpec {
                name: "get".into(),
                description: "weather".into(),
                parameters: json!({"type": "object"}),
            }],
            ..Default::default()
        };
        let body = body(&request, false);
        let messages = body["messages"].as_array().unwrap();
        assert_eq!(
            messages.len(),
            3,
            "the two results are one user turn: {body}"
        );
        assert_eq!(messages[1]["content"][1]["type"], "tool_use");
        assert_eq!(messages[1]["content"][1]["input"]["city"], "Oslo");
        assert_eq!(messages[2]["content"][1]["tool_use_id"], "t2");
        assert_eq!(body["tools"][0]["input_schema"]["type"], "object");
        assert_eq!(body["output_config"]["format"]["type"], "json_schema");
        assert!(
            body.get("system").is_none(),
            "no JSON instruction with a schema"
        );
    }

    #[test]
    fn streamed_tool_use_and_cache_usage_accumulate() {
        let mut state = StreamState::default();
        for data in [
            r#"{"type":"message_start","message":{"model":"c","usage":{"input_tokens":3,"cache_read_input_tokens":10,"cache_creation_input_tokens":2,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t1","name":"get","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Oslo\"}"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":7}}"#,
            r#"{"type":"message_stop"}"#,
        ] {
            let event = SseEvent {
                event: String::new(),
                data: data.into(),
            };
            on_event(&event, &mut state).unwrap();
        }
        let parsed = state.into_parsed();
        assert_eq!(parsed.tool_calls.len(), 1);
        assert_eq!(parsed.tool_calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(parsed.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(parsed.input_tokens, Some(15));
        assert_eq!(parsed.cached_input_tokens, Some(10));
        assert_eq!(parsed.output_tokens, Some(7));
    }
}
