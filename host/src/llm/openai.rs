//! The OpenAI Chat Completions wire format (`POST {base_url}/chat/completions`), which
//! OpenAI, Ollama, vLLM, the llama.cpp server and LM Studio all speak.
//!
//! - Auth: `Authorization: Bearer KEY` when a key is configured; none otherwise (local
//!   servers).
//! - JSON output: `response_format: {"type": "json_object"}`. OpenAI refuses that mode
//!   unless the conversation mentions JSON, so a short system message saying so is added
//!   when no message does.
//! - Structured output: `response_format: {"type": "json_schema", "json_schema": {name,
//!   schema, strict: true}}`.
//! - Tools: `tools: [{"type": "function", "function": {name, description, parameters}}]`;
//!   the answer's `message.tool_calls` (`{id, function: {name, arguments}}`); a `tool`
//!   message answers one by `tool_call_id`, and an assistant message that called tools
//!   carries them in `tool_calls`.
//! - `max_tokens` or, for models that require it (o-series, gpt-5), `max_completion_tokens`:
//!   which models is the provider's `max_completion_tokens_models` setting.
//! - Usage: `prompt_tokens`, `completion_tokens`, and their details
//!   `prompt_tokens_details.cached_tokens` and `completion_tokens_details.reasoning_tokens`.
//! - Streaming: `stream: true` with `stream_options.include_usage`, then `data: {…}`
//!   chunks carrying `choices[0].delta.content` (and `delta.tool_calls` pieces by
//!   `index`), a last chunk with `usage`, and `data: [DONE]`.

use reqwest::RequestBuilder;
use serde_json::{Value, json};

use super::wire::{Failure, MAX_TOOL_CALLS, Parsed, SseEvent, StreamState, tokens};
use super::{ApiKey, FinishReason, LlmError, LlmRequest, Message, Role, ToolCall};

/// Default base URL of the `openai` kind.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

pub(crate) const PATH: &str = "chat/completions";

/// The embeddings endpoint, under the same base URL.
pub(crate) const EMBEDDINGS_PATH: &str = "embeddings";

/// The body of an embeddings request.
pub(crate) fn embeddings_body(request: &super::EmbedRequest) -> Value {
    json!({
        "model": request.model.as_deref().unwrap_or("default"),
        "input": request.texts,
        "encoding_format": "float",
    })
}

/// The vectors of an embeddings answer, in the order of the request's texts.
pub(crate) fn parse_embeddings(
    value: &Value,
    expected: usize,
) -> Result<super::EmbedResponse, String> {
    let Some(data) = value["data"].as_array() else {
        return Err("it has no data list".into());
    };
    if data.len() != expected {
        return Err(format!(
            "it has {} vectors for {expected} texts",
            data.len()
        ));
    }
    let mut vectors: Vec<Option<Vec<f32>>> = vec![None; expected];
    for (position, item) in data.iter().enumerate() {
        let index = item["index"].as_u64().map_or(position, |i| i as usize);
        let Some(numbers) = item["embedding"].as_array() else {
            return Err(format!(
                "data[{position}].embedding is not a list of numbers"
            ));
        };
        let vector = numbers
            .iter()
            .map(|n| n.as_f64().map(|x| x as f32))
            .collect::<Option<Vec<f32>>>()
            .ok_or_else(|| format!("data[{position}].embedding is not a list of numbers"))?;
        let slot = vectors
            .get_mut(index)
            .ok_or_else(|| format!("data[{position}] has index {index}, past the texts"))?;
        *slot = Some(vector);
    }
    Ok(super::EmbedResponse {
        vectors: vectors
            .into_iter()
            .collect::<Option<Vec<_>>>()
            .ok_or("two vectors share an index")?,
        model: value["model"].as_str().unwrap_or_default().to_string(),
        input_tokens: tokens(&value["usage"]["prompt_tokens"]).unwrap_or(0),
    })
}

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
        Role::Tool => "tool",
    }
}

fn message(m: &Message) -> Value {
    let mut value = json!({ "role": role(m.role), "content": m.content });
    if !m.tool_calls.is_empty() {
        value["tool_calls"] = m
            .tool_calls
            .iter()
            .map(|call| {
                json!({
                    "id": call.id,
                    "type": "function",
                    "function": { "name": call.name, "arguments": call.arguments },
                })
            })
            .collect();
        if m.content.is_empty() {
            value["content"] = Value::Null;
        }
    }
    if let Some(id) = &m.tool_call_id {
        value["tool_call_id"] = json!(id);
    }
    value
}

/// Models that take `max_completion_tokens` instead of `max_tokens` when the provider's
/// config names none: OpenAI's reasoning models refuse `max_tokens`.
pub const DEFAULT_MAX_COMPLETION_TOKENS_MODELS: &[&str] = &["o1*", "o3*", "o4*", "gpt-5*"];

/// Whether `model` matches one of `patterns` (exact, or a prefix ending in `*`).
pub(crate) fn model_matches(model: &str, patterns: &[String]) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => model.starts_with(prefix),
        None => model == p,
    })
}

pub(crate) fn body(request: &LlmRequest, stream: bool, completion_tokens: bool) -> Value {
    let mut messages: Vec<Value> = Vec::with_capacity(request.messages.len() + 1);
    if request.json_output
        && request.json_schema.is_none()
        && !request
            .messages
            .iter()
            .any(|m| m.content.to_ascii_lowercase().contains("json"))
    {
        messages.push(json!({ "role": "system", "content": JSON_HINT }));
    }
    messages.extend(request.messages.iter().map(message));
    let mut body = json!({
        "model": request.model.as_deref().unwrap_or("default"),
        "messages": messages,
    });
    if let Some(max) = request.max_tokens {
        let field = if completion_tokens {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        body[field] = json!(max);
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(spec) = &request.json_schema {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": { "name": spec.name, "schema": spec.schema, "strict": true },
        });
    } else if request.json_output {
        body["response_format"] = json!({ "type": "json_object" });
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|tool| {
                json!({
                    "type": "function",
                    "function": {
                        "name": tool.name,
                        "description": tool.description,
                        "parameters": tool.parameters,
                    },
                })
            })
            .collect();
    }
    if stream {
        body["stream"] = json!(true);
        body["stream_options"] = json!({ "include_usage": true });
    }
    body
}

fn finish_reason(value: &Value) -> Option<FinishReason> {
    Some(match value.as_str()? {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        _ => FinishReason::Other,
    })
}

/// The usage fields, including the cached and reasoning details.
fn usage(usage: &Value, parsed: &mut (Option<u32>, Option<u32>, Option<u32>, Option<u32>)) {
    parsed.0 = tokens(&usage["prompt_tokens"]).or(parsed.0);
    parsed.1 = tokens(&usage["completion_tokens"]).or(parsed.1);
    parsed.2 = tokens(&usage["prompt_tokens_details"]["cached_tokens"]).or(parsed.2);
    parsed.3 = tokens(&usage["completion_tokens_details"]["reasoning_tokens"]).or(parsed.3);
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
    let mut tool_calls = Vec::new();
    match &message["tool_calls"] {
        Value::Null => {}
        Value::Array(calls) => {
            for call in calls.iter().take(MAX_TOOL_CALLS) {
                let function = &call["function"];
                let (Some(id), Some(name)) = (call["id"].as_str(), function["name"].as_str())
                else {
                    return Err("a tool call has no id or function name".into());
                };
                let arguments = match &function["arguments"] {
                    Value::String(text) => text.clone(),
                    Value::Null => "{}".to_string(),
                    other => other.to_string(),
                };
                tool_calls.push(ToolCall {
                    id: id.to_string(),
                    name: name.to_string(),
                    arguments,
                });
            }
        }
        _ => return Err("choices[0].message.tool_calls is not a list".into()),
    }
    let mut counts = (None, None, None, None);
    usage(&value["usage"], &mut counts);
    Ok(Parsed {
        text,
        model: value["model"].as_str().map(str::to_string),
        input_tokens: counts.0,
        output_tokens: counts.1,
        cached_input_tokens: counts.2,
        reasoning_tokens: counts.3,
        tool_calls,
        finish_reason: finish_reason(&value["choices"][0]["finish_reason"]),
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
    if let Some(pieces) = choice["delta"]["tool_calls"].as_array() {
        for (position, piece) in pieces.iter().enumerate() {
            let index = piece["index"].as_u64().map_or(position, |i| i as usize);
            let call = state.tool_call(index)?;
            if let Some(id) = piece["id"].as_str() {
                call.id = id.to_string();
            }
            let function = &piece["function"];
            if let Some(name) = function["name"].as_str() {
                call.name.push_str(name);
            }
            if let Some(arguments) = function["arguments"].as_str() {
                call.arguments.push_str(arguments);
            }
        }
    }
    if let Some(reason) = finish_reason(&choice["finish_reason"]) {
        state.finish_reason = Some(reason);
        state.finished = true;
    }
    let usage_value = &chunk["usage"];
    if usage_value.is_object() {
        let mut counts = (
            state.input_tokens,
            state.output_tokens,
            state.cached_input_tokens,
            state.reasoning_tokens,
        );
        usage(usage_value, &mut counts);
        (
            state.input_tokens,
            state.output_tokens,
            state.cached_input_tokens,
            state.reasoning_tokens,
        ) = counts;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::{JsonSchemaSpec, ToolSpec};

    fn request() -> LlmRequest {
        LlmRequest {
            messages: vec![
                Message::new(Role::System, "be brief"),
                Message::new(Role::User, "hi"),
            ],
            model: Some("gpt-x".into()),
            max_tokens: Some(20),
            temperature: Some(0.5),
            json_output: true,
            ..Default::default()
        }
    }

    #[test]
    fn body_carries_json_mode_and_streaming() {
        let body = body(&request(), true, false);
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

    #[test]
    fn schema_tools_and_completion_tokens_are_sent_natively() {
        let mut request = request();
        request.json_output = false;
        request.json_schema = Some(JsonSchemaSpec {
            name: "answer".into(),
            schema: json!({"type": "object"}),
        });
        request.tools = vec![ToolSpec {
            name: "lookup".into(),
            description: "finds".into(),
            parameters: json!({"type": "object"}),
        }];
        request.messages.push(Message {
            tool_calls: vec![ToolCall {
                id: "c1".into(),
                name: "lookup".into(),
                arguments: "{}".into(),
            }],
            ..Message::new(Role::Assistant, "")
        });
        request.messages.push(Message {
            tool_call_id: Some("c1".into()),
            ..Message::new(Role::Tool, "42")
        });
        let body = body(&request, false, true);
        assert_eq!(body["response_format"]["type"], "json_schema");
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        assert_eq!(body["tools"][0]["function"]["name"], "lookup");
        assert_eq!(body["max_completion_tokens"], 20);
        assert!(body.get("max_tokens").is_none());
        assert_eq!(body["messages"][2]["tool_calls"][0]["id"], "c1");
        assert!(body["messages"][2]["content"].is_null());
        assert_eq!(body["messages"][3]["role"], "tool");
        assert_eq!(body["messages"][3]["tool_call_id"], "c1");
        assert!(model_matches("o3-mini", &["o3*".to_string()]));
        assert!(!model_matches(
            "gpt-4o",
            &["o3*".to_string(), "gpt-5".to_string()]
        ));
    }

    #[test]
    fn streamed_tool_calls_and_usage_details_accumulate() {
        let mut state = StreamState::default();
        for data in [
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"c1","type":"function","function":{"name":"look","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"name":"up","arguments":"{\"q\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":4,"prompt_tokens_details":{"cached_tokens":6},"completion_tokens_details":{"reasoning_tokens":2}}}"#,
            "[DONE]",
        ] {
            let event = SseEvent {
                event: String::new(),
                data: data.into(),
            };
            on_event(&event, &mut state).unwrap();
        }
        let parsed = state.into_parsed();
        assert_eq!(parsed.tool_calls.len(), 1);
        assert_eq!(parsed.tool_calls[0].name, "lookup");
        assert_eq!(parsed.tool_calls[0].arguments, r#"{"q":1}"#);
        assert_eq!(parsed.finish_reason, Some(FinishReason::ToolCalls));
        assert_eq!(
            (parsed.cached_input_tokens, parsed.reasoning_tokens),
            (Some(6), Some(2))
        );
    }
}
