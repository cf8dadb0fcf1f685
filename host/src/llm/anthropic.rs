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
//! - Streaming: `message_start` (input tokens), `content_block_delta` with a `text_delta`,
//!   `message_delta` (output tokens), `message_stop`; `error` events map onto the error
//!   variants; `ping` and the block start/stop events are ignored.

use reqwest::RequestBuilder;
use serde_json::{Value, json};

use super::wire::{Failure, Parsed, SseEvent, StreamState, error_detail, tokens};
use super::{ApiKey, LlmError, LlmRequest, Role};

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

pub(crate) fn body(request: &LlmRequest, stream: bool) -> Value {
    let mut system: Vec<&str> = request
        .messages
        .iter()
        .filter(|m| m.role == Role::System)
        .map(|m| m.content.as_str())
        .collect();
    if request.json_output {
        system.push(JSON_INSTRUCTION);
    }
    let messages: Vec<Value> = request
        .messages
        .iter()
        .filter(|m| m.role != Role::System)
        .map(|m| {
            let role = if m.role == Role::Assistant {
                "assistant"
            } else {
                "user"
            };
            json!({ "role": role, "content": m.content })
        })
        .collect();
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
    if stream {
        body["stream"] = json!(true);
    }
    body
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
    Ok(Parsed {
        text,
        model: value["model"].as_str().map(str::to_string),
        input_tokens: tokens(&value["usage"]["input_tokens"]),
        output_tokens: tokens(&value["usage"]["output_tokens"]),
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
            state.input_tokens = tokens(&message["usage"]["input_tokens"]);
            state.output_tokens = tokens(&message["usage"]["output_tokens"]);
        }
        "content_block_delta" => {
            if data["delta"]["type"] == "text_delta"
                && let Some(text) = data["delta"]["text"].as_str()
            {
                state.delta(text);
            }
        }
        "message_delta" => {
            let usage = &data["usage"];
            state.output_tokens = tokens(&usage["output_tokens"]).or(state.output_tokens);
            state.input_tokens = tokens(&usage["input_tokens"]).or(state.input_tokens);
            if data["delta"]["stop_reason"].is_string() {
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
        // ping, content_block_start, content_block_stop, and future event types.
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Message;

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
                Message {
                    role: Role::System,
                    content: "be brief".into(),
                },
                Message {
                    role: Role::User,
                    content: "hi".into(),
                },
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
}
