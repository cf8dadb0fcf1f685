//! The OpenAI Chat Completions wire format (`POST {base_url}/chat/completions`), which
//! OpenAI, Ollama, vLLM, the llama.cpp server and LM Studio all speak.
//!
//! - Auth: `Authorization: Bearer KEY` when a key is configured; none otherwise (local
//!   servers).
//! - JSON output: `response_format: {"type": "json_object"}`. OpenAI refuses that mode
//!   unless the conversation mentions JSON, so a short system message saying so is added
//!   when no message does.
//! - Streaming: `stream: true` with `stream_options.include_usage`, then `data: {…}`
//!   chunks carrying `choices[0].delta.content`, a last chunk with `usage`, and
//!   `data: [DONE]`.

use reqwest::RequestBuilder;
use serde_json::{Value, json};

use super::wire::{Failure, Parsed, SseEvent, StreamState, tokens};
use super::{ApiKey, LlmError, LlmRequest, Role};

/// Default base URL of the `openai` kind.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

pub(crate) const PATH: &str = "chat/completions";

/// What a `base_url` of this kind looks like, for error messages. Unlike Anthropic's, the
/// OpenAI convention includes the version, and compatible servers serve it under `/v1`.
pub(crate) const BASE_URL_FORM: &str = "the URL up to and including /v1, e.g. \
     https://api.openai.com/v1 or http://127.0.0.1:11434/v1 for Ollama";

const JSON_HINT: &str = "Answer with a single JSON object.";

pub(crate) fn headers(builder: RequestBuilder, key: Option<&ApiKey>) -> RequestBuilder {
    match key {
        Some(key) => builder.bearer_auth(key.expose()),
        None => builder,
    }
}

fn role(role: Role) -> &'static str {
    match role {
        Role::System => "system",
        Role::User => "user",
        Role::Assistant => "assistant",
    }
}

pub(crate) fn body(request: &LlmRequest, stream: bool) -> Value {
    let mut messages: Vec<Value> = Vec::with_capacity(request.messages.len() + 1);
    if request.json_output
        && !request
            .messages
            .iter()
            .any(|m| m.content.to_ascii_lowercase().contains("json"))
    {
        messages.push(json!({ "role": "system", "content": JSON_HINT }));
    }
    messages.extend(
        request
            .messages
            .iter()
            .map(|m| json!({ "role": role(m.role), "content": m.content })),
    );
    let mut body = json!({
        "model": request.model.as_deref().unwrap_or("default"),
        "messages": messages,
    });
    if let Some(max) = request.max_tokens {
        body["max_tokens"] = json!(max);
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if request.json_output {
        body["response_format"] = json!({ "type": "json_object" });
    }
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
    }
    body
}

pub(crate) fn parse(value: &Value) -> Result<Parsed, String> {
    let message = &value["choices"][0]["message"];
    if !message.is_object() {
        return Err("it has no choices[0].message".into());
    }
    let text = match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        _ => return Err("choices[0].message.content is not text".into()),
    };
    Ok(Parsed {
        text,
        model: value["model"].as_str().map(str::to_string),
        input_tokens: tokens(&value["usage"]["prompt_tokens"]),
        output_tokens: tokens(&value["usage"]["completion_tokens"]),
    })
}

pub(crate) fn on_event(event: &SseEvent, state: &mut StreamState) -> Result<(), Failure> {
    let data = event.data.trim();
    if data == "[DONE]" {
        state.done = true;
        return Ok(());
    }
    if data.is_empty() {
        return Ok(());
    }
    let chunk: Value = serde_json::from_str(data).map_err(|e| {
        Failure::Final(LlmError::Unavailable(format!(
            "a streamed chunk is not JSON ({e})"
        )))
    })?;
    if chunk.get("error").is_some_and(|e| !e.is_null()) {
        let detail = super::wire::error_detail(data.as_bytes());
        return Err(Failure::Transient(format!("error in the stream: {detail}")));
    }
    if let Some(model) = chunk["model"].as_str() {
        state.model = Some(model.to_string());
    }
    let choice = &chunk["choices"][0];
    if let Some(text) = choice["delta"]["content"].as_str() {
        state.delta(text);
    }
    if choice["finish_reason"].is_string() {
        state.finished = true;
    }
    let usage = &chunk["usage"];
    if usage.is_object() {
        state.input_tokens = tokens(&usage["prompt_tokens"]).or(state.input_tokens);
        state.output_tokens = tokens(&usage["completion_tokens"]).or(state.output_tokens);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Message;

    fn request() -> LlmRequest {
        LlmRequest {
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
            model: Some("gpt-x".into()),
            max_tokens: Some(20),
            temperature: Some(0.5),
            json_output: true,
            stream_label: None,
        }
    }

    #[test]
    fn body_carries_json_mode_and_streaming() {
        let body = body(&request(), true);
        assert_eq!(body["model"], "gpt-x");
        assert_eq!(body["max_tokens"], 20);
        assert_eq!(body["response_format"]["type"], "json_object");
        assert_eq!(body["stream_options"]["include_usage"], true);
        // No message mentioned JSON, so a hint leads.
        assert_eq!(body["messages"][0]["content"], JSON_HINT);
        assert_eq!(body["messages"][1]["role"], "system");
        assert_eq!(body["messages"][2]["role"], "user");
    }

    #[test]
    fn stream_chunks_accumulate() {
        let mut state = StreamState::default();
        for data in [
            r#"{"model":"m","choices":[{"delta":{"role":"assistant"}}]}"#,
            r#"{"choices":[{"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#,
            "[DONE]",
        ] {
            let event = SseEvent {
                event: String::new(),
                data: data.into(),
            };
            on_event(&event, &mut state).unwrap();
        }
        assert_eq!(state.text, "Hello");
        assert_eq!(state.pending, ["Hel", "lo"]);
        assert_eq!(
            (state.input_tokens, state.output_tokens),
            (Some(3), Some(2))
        );
        assert!(state.done && state.finished);
    }
}
