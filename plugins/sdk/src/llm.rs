//! Calls to large language models through the providers the operator configured.
//!
//! The plugin never sees a key, URL or provider: it names a model alias (or none, meaning
//! `default`). Build a [`Request`], then run it with [`complete`], or run many at once with
//! [`complete_all`] (the host runs them concurrently under the providers' limits; prefer it
//! whenever items are independent).
//!
//! Contract 0.2.0 adds, on the same [`Request`]:
//! - [`Request::json_schema`]: the answer must match a JSON Schema; the host sends it as
//!   the provider's structured-output mode and validates it before you get it;
//! - [`Request::tool`]: tools the model may call; a [`Response`] with
//!   [`Response::tool_calls`] is answered by [`Request::with_tool_calls`] and
//!   [`Request::tool_result`], then a new call;
//! - [`embed`]: vectors for texts, from the operator's `embedding` alias.
//!
//! ```no_run
//! use kiln_plugin::llm::{self, Request};
//! # fn f() -> Result<(), kiln_plugin::JobError> {
//! let response = llm::complete(
//!     Request::new()
//!         .system("You are a terse fantasy writer.")
//!         .user("Name a tavern.")
//!         .max_tokens(20)
//!         .stream("tavern"),
//! )?; // LlmError -> JobError: rate-limited/timeout/unavailable retry, rejected does not
//! println!("{}", response.text);
//! # Ok(()) }
//! ```

use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::JobError;
use crate::bindings::kiln::plugin::llm as raw;

pub use raw::FinishReason;

/// A tool the model may call, declared with [`Request::tool`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tool {
    /// Its name: letters, digits, `_`, `-`, at most 64 bytes.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its arguments (an object schema).
    pub parameters: Value,
}

impl Tool {
    /// A tool called `name` doing `description`, taking arguments of `parameters`.
    pub fn new(name: impl Into<String>, description: impl Into<String>, parameters: Value) -> Self {
        Self {
            name: name.into(),
            description: description.into(),
            parameters,
        }
    }
}

/// A tool the model asked to be run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// The provider's id of the call; answer it with [`Request::tool_result`].
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, JSON text of an object (the host checked it parses).
    pub arguments: String,
}

impl ToolCall {
    /// The arguments parsed into `T`.
    pub fn args<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.arguments)
    }
}

impl From<raw::ToolCall> for ToolCall {
    fn from(call: raw::ToolCall) -> Self {
        Self {
            id: call.id,
            name: call.name,
            arguments: call.arguments,
        }
    }
}

impl From<&ToolCall> for raw::ToolCall {
    fn from(call: &ToolCall) -> Self {
        raw::ToolCall {
            id: call.id.clone(),
            name: call.name.clone(),
            arguments: call.arguments.clone(),
        }
    }
}

/// One completion request, built step by step. Messages keep the order you add them in;
/// the model answers the last one.
#[derive(Clone, Debug)]
pub struct Request {
    raw: raw::Request,
}

impl Default for Request {
    fn default() -> Self {
        Self::new()
    }
}

impl Request {
    /// An empty request: no messages, `default` model, provider defaults for tokens and
    /// temperature, text output, no streaming.
    pub fn new() -> Self {
        Self {
            raw: raw::Request {
                messages: Vec::new(),
                model: None,
                max_tokens: None,
                temperature: None,
                output: raw::Output::Text,
                tools: Vec::new(),
                stream_label: None,
            },
        }
    }

    fn message(mut self, role: raw::Role, content: impl Into<String>) -> Self {
        self.raw.messages.push(raw::Message {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        });
        self
    }

    /// Adds a system message (instructions for the model).
    pub fn system(self, content: impl Into<String>) -> Self {
        self.message(raw::Role::System, content)
    }

    /// Adds a user message.
    pub fn user(self, content: impl Into<String>) -> Self {
        self.message(raw::Role::User, content)
    }

    /// Adds an assistant message (an earlier answer, for multi-turn prompts).
    pub fn assistant(self, content: impl Into<String>) -> Self {
        self.message(raw::Role::Assistant, content)
    }

    /// Uses the model alias `alias` from the operator's `[models]` table (e.g. `fast`).
    /// An alias that is not configured fails the call with [`LlmError::Rejected`].
    pub fn model(mut self, alias: impl Into<String>) -> Self {
        self.raw.model = Some(alias.into());
        self
    }

    /// Caps the output at `max` tokens.
    pub fn max_tokens(mut self, max: u32) -> Self {
        self.raw.max_tokens = Some(max);
        self
    }

    /// Sets the sampling temperature.
    pub fn temperature(mut self, temperature: f32) -> Self {
        self.raw.temperature = Some(temperature);
        self
    }

    /// Asks for a JSON object as output (the provider's JSON mode where it has one). Say
    /// in the prompt which keys you expect, and still handle text that does not parse.
    pub fn json(mut self) -> Self {
        self.raw.output = raw::Output::Json;
        self
    }

    /// Requires the answer to match `schema` (a JSON Schema), named `name` for providers
    /// that want a name. The host uses the provider's structured-output mode, checks the
    /// answer, asks once more if it does not match, and fails the call with
    /// [`LlmError::Rejected`] if the second answer misses too. Read it with
    /// [`Response::json`].
    pub fn json_schema(mut self, name: impl Into<String>, schema: Value) -> Self {
        self.raw.output = raw::Output::JsonSchema(raw::JsonSchema {
            name: name.into(),
            schema: schema.to_string(),
        });
        self
    }

    /// Lets the model call `tool`. A response that calls tools has
    /// [`Response::tool_calls`]; run them, then continue with
    /// [`Request::with_tool_calls`] and one [`Request::tool_result`] per call.
    pub fn tool(mut self, tool: Tool) -> Self {
        self.raw.tools.push(raw::Tool {
            name: tool.name,
            description: tool.description,
            parameters: tool.parameters.to_string(),
        });
        self
    }

    /// Adds the model's answer `response` (its text and its tool calls) as an assistant
    /// message: the first step of continuing a tool-calling conversation.
    pub fn with_tool_calls(mut self, response: &Response) -> Self {
        self.raw.messages.push(raw::Message {
            role: raw::Role::Assistant,
            content: response.text.clone(),
            tool_calls: response.tool_calls.iter().map(Into::into).collect(),
            tool_call_id: None,
        });
        self
    }

    /// Adds the result of the tool call `call_id` (JSON text or plain text).
    pub fn tool_result(mut self, call_id: impl Into<String>, content: impl Into<String>) -> Self {
        self.raw.messages.push(raw::Message {
            role: raw::Role::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
        });
        self
    }

    /// Streams the output's tokens to the job's SSE clients as `token` events
    /// `{label, delta}` while they arrive. You still get the whole text back.
    pub fn stream(mut self, label: impl Into<String>) -> Self {
        self.raw.stream_label = Some(label.into());
        self
    }

    /// The messages added so far, as `(role, content)` with role `system`, `user`,
    /// `assistant` or `tool`.
    pub fn messages(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.raw.messages.iter().map(|m| {
            let role = match m.role {
                raw::Role::System => "system",
                raw::Role::User => "user",
                raw::Role::Assistant => "assistant",
                raw::Role::Tool => "tool",
            };
            (role, m.content.as_str())
        })
    }

    /// The content of the last `user` message, if any: what a test usually checks.
    pub fn last_user_message(&self) -> Option<&str> {
        self.messages()
            .filter(|(role, _)| *role == "user")
            .map(|(_, content)| content)
            .last()
    }

    /// Whether the request asks for JSON output ([`Request::json`] or
    /// [`Request::json_schema`]).
    pub fn is_json(&self) -> bool {
        !matches!(self.raw.output, raw::Output::Text)
    }

    /// The schema set with [`Request::json_schema`], if any.
    pub fn schema(&self) -> Option<Value> {
        match &self.raw.output {
            raw::Output::JsonSchema(spec) => serde_json::from_str(&spec.schema).ok(),
            _ => None,
        }
    }

    /// The names of the tools declared with [`Request::tool`].
    pub fn tool_names(&self) -> impl Iterator<Item = &str> {
        self.raw.tools.iter().map(|t| t.name.as_str())
    }

    /// The stream label set with [`Request::stream`], if any.
    pub fn stream_label(&self) -> Option<&str> {
        self.raw.stream_label.as_deref()
    }

    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn from_raw(raw: raw::Request) -> Self {
        Self { raw }
    }
}

/// A finished completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    /// The model's output (JSON text when the request used [`Request::json`]). May be
    /// empty when the model only called tools.
    pub text: String,
    /// The tools the model asked to be run, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Why the model stopped.
    pub finish_reason: FinishReason,
    /// The concrete model that answered, e.g. `gpt-4o-mini` or `offline`.
    pub model: String,
    /// Prompt tokens, as the provider counted them (cached ones included).
    pub input_tokens: u32,
    /// Output tokens, as the provider counted them (reasoning ones included).
    pub output_tokens: u32,
    /// Prompt tokens served from the provider's prompt cache.
    pub cached_input_tokens: u32,
    /// Output tokens spent on hidden reasoning.
    pub reasoning_tokens: u32,
}

impl Response {
    /// A plain text answer (for tests and fakes).
    pub fn text(text: impl Into<String>) -> Self {
        let text = text.into();
        Self {
            output_tokens: tokens(&text),
            text,
            tool_calls: Vec::new(),
            finish_reason: FinishReason::Stop,
            model: "test".into(),
            input_tokens: 0,
            cached_input_tokens: 0,
            reasoning_tokens: 0,
        }
    }

    /// An answer that calls tools (for tests and fakes).
    pub fn calls(calls: Vec<ToolCall>) -> Self {
        Self {
            tool_calls: calls,
            finish_reason: FinishReason::ToolCalls,
            ..Self::text("")
        }
    }
}

/// Vectors for texts, as [`embed`] returns them.
#[derive(Clone, Debug, PartialEq)]
pub struct Embeddings {
    /// One vector per text, in order.
    pub vectors: Vec<Vec<f32>>,
    /// The concrete model that answered.
    pub model: String,
    /// Input tokens the provider counted.
    pub input_tokens: u32,
}

/// A rough token count (one per four bytes).
pub(crate) fn tokens(text: &str) -> u32 {
    u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX)
}

impl Response {
    /// Parses the output text as JSON into `T` (for requests made with [`Request::json`]).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.text)
    }

    /// The output parsed as a JSON value if it parses, else the trimmed text as a JSON
    /// string: a forgiving way to keep structured output.
    pub fn json_or_text(&self) -> serde_json::Value {
        self.json()
            .unwrap_or_else(|_| serde_json::Value::String(self.text.trim().to_string()))
    }
}

/// Why a completion failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LlmError {
    /// The provider or the host's per-provider limits refused the call for now.
    RateLimited(String),
    /// The provider did not answer in time.
    Timeout(String),
    /// The provider could not be reached or answered with a server error.
    Unavailable(String),
    /// The request itself is wrong (unknown model alias, prompt too long, refused content).
    Rejected(String),
}

impl LlmError {
    /// True for the transient kinds (rate-limited, timeout, unavailable): retrying the job
    /// later may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::Rejected(_))
    }

    /// The provider's or host's message.
    pub fn message(&self) -> &str {
        match self {
            Self::RateLimited(m) | Self::Timeout(m) | Self::Unavailable(m) | Self::Rejected(m) => m,
        }
    }
}

impl fmt::Display for LlmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self {
            Self::RateLimited(_) => "rate limited",
            Self::Timeout(_) => "timed out",
            Self::Unavailable(_) => "unavailable",
            Self::Rejected(_) => "rejected",
        };
        write!(f, "LLM call {kind}: {}", self.message())
    }
}

impl std::error::Error for LlmError {}

impl From<LlmError> for JobError {
    /// Rate-limited, timeout and unavailable become [`JobError::Retryable`]; rejected
    /// becomes [`JobError::Permanent`]. The message keeps the LLM error's text.
    fn from(error: LlmError) -> Self {
        if error.is_transient() {
            JobError::Retryable(error.to_string())
        } else {
            JobError::Permanent(error.to_string())
        }
    }
}

impl LlmError {
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn into_raw(self) -> raw::LlmError {
        match self {
            Self::RateLimited(m) => raw::LlmError::RateLimited(m),
            Self::Timeout(m) => raw::LlmError::Timeout(m),
            Self::Unavailable(m) => raw::LlmError::Unavailable(m),
            Self::Rejected(m) => raw::LlmError::Rejected(m),
        }
    }
}

impl From<raw::LlmError> for LlmError {
    fn from(error: raw::LlmError) -> Self {
        match error {
            raw::LlmError::RateLimited(m) => Self::RateLimited(m),
            raw::LlmError::Timeout(m) => Self::Timeout(m),
            raw::LlmError::Unavailable(m) => Self::Unavailable(m),
            raw::LlmError::Rejected(m) => Self::Rejected(m),
        }
    }
}

fn convert(result: Result<raw::Response, raw::LlmError>) -> Result<Response, LlmError> {
    result
        .map(|r| Response {
            text: r.text,
            tool_calls: r.tool_calls.into_iter().map(Into::into).collect(),
            finish_reason: r.finish_reason,
            model: r.model,
            input_tokens: r.usage.input_tokens,
            output_tokens: r.usage.output_tokens,
            cached_input_tokens: r.usage.cached_input_tokens,
            reasoning_tokens: r.usage.reasoning_tokens,
        })
        .map_err(LlmError::from)
}

impl Response {
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn into_raw(self) -> raw::Response {
        raw::Response {
            text: self.text,
            tool_calls: self.tool_calls.iter().map(Into::into).collect(),
            finish_reason: self.finish_reason,
            model: self.model,
            usage: raw::Usage {
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                cached_input_tokens: self.cached_input_tokens,
                reasoning_tokens: self.reasoning_tokens,
            },
        }
    }
}

/// Embeds `texts` with the model alias `model` (`None`: the operator's `embedding`
/// alias), under the same limits as completions. Journaled: a retried job does not pay
/// twice. An empty list returns at once without a host call.
pub fn embed(model: Option<&str>, texts: &[String]) -> Result<Embeddings, LlmError> {
    if texts.is_empty() {
        return Ok(Embeddings {
            vectors: Vec::new(),
            model: String::new(),
            input_tokens: 0,
        });
    }
    crate::host::embed(model, texts)
        .map(|e| Embeddings {
            vectors: e.vectors,
            model: e.model,
            input_tokens: e.input_tokens,
        })
        .map_err(LlmError::from)
}

/// Runs one completion; blocks this plugin (not the host) until it finishes.
pub fn complete(request: Request) -> Result<Response, LlmError> {
    convert(crate::host::complete(&request.raw))
}

/// Runs several completions concurrently (under the providers' limits) and returns their
/// outcomes in the order of `requests`. An empty list returns at once without a host call.
///
/// To fail the job on the first error: `let responses = llm::complete_all(reqs)
/// .into_iter().collect::<Result<Vec<_>, _>>()?;`, or use [`first_error`] to prefer a
/// permanent error over a transient one.
pub fn complete_all(requests: Vec<Request>) -> Vec<Result<Response, LlmError>> {
    if requests.is_empty() {
        return Vec::new();
    }
    let raw_requests: Vec<raw::Request> = requests.into_iter().map(|r| r.raw).collect();
    crate::host::complete_all(&raw_requests)
        .into_iter()
        .map(convert)
        .collect()
}

/// All responses if every call succeeded; otherwise the most serious error: a rejected
/// (permanent) one if any, else the first transient one. Use it on the output of
/// [`complete_all`] so that one rejected request is not retried because another one
/// happened to be rate-limited first.
pub fn first_error(results: Vec<Result<Response, LlmError>>) -> Result<Vec<Response>, LlmError> {
    let mut responses = Vec::with_capacity(results.len());
    let mut transient = None;
    for result in results {
        match result {
            Ok(response) => responses.push(response),
            Err(e) if !e.is_transient() => return Err(e),
            Err(e) => {
                transient.get_or_insert(e);
            }
        }
    }
    match transient {
        Some(e) => Err(e),
        None => Ok(responses),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Result<Response, LlmError> {
        Ok(Response::text(text))
    }

    #[test]
    fn llm_errors_map_to_job_errors() {
        let cases = [
            (LlmError::RateLimited("a".into()), true),
            (LlmError::Timeout("b".into()), true),
            (LlmError::Unavailable("c".into()), true),
            (LlmError::Rejected("d".into()), false),
        ];
        for (error, retryable) in cases {
            let text = error.to_string();
            match JobError::from(error) {
                JobError::Retryable(m) => assert!(retryable && m == text),
                JobError::Permanent(m) => assert!(!retryable && m == text),
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn first_error_prefers_rejected() {
        let results = vec![
            ok("x"),
            Err(LlmError::Timeout("t".into())),
            Err(LlmError::Rejected("r".into())),
        ];
        assert_eq!(first_error(results), Err(LlmError::Rejected("r".into())));
        let results = vec![ok("x"), Err(LlmError::Timeout("t".into()))];
        assert_eq!(first_error(results), Err(LlmError::Timeout("t".into())));
        assert_eq!(first_error(vec![ok("a"), ok("b")]).unwrap().len(), 2);
    }

    #[test]
    fn request_builder_keeps_order_and_options() {
        let request = Request::new()
            .system("s")
            .user("u")
            .assistant("a")
            .model("fast")
            .max_tokens(9)
            .temperature(0.5)
            .json()
            .stream("label");
        let messages: Vec<_> = request.messages().collect();
        assert_eq!(
            messages,
            [("system", "s"), ("user", "u"), ("assistant", "a")]
        );
        assert_eq!(request.raw.model.as_deref(), Some("fast"));
        assert_eq!(request.raw.max_tokens, Some(9));
        assert_eq!(request.raw.temperature, Some(0.5));
        assert!(request.is_json());
        assert_eq!(request.raw.stream_label.as_deref(), Some("label"));
    }

    #[test]
    fn schema_tools_and_tool_results_build_the_conversation() {
        let first = Response::calls(vec![ToolCall {
            id: "c1".into(),
            name: "lookup".into(),
            arguments: r#"{"q": "x"}"#.into(),
        }]);
        let request = Request::new()
            .user("find x")
            .tool(Tool::new(
                "lookup",
                "finds",
                serde_json::json!({"type": "object"}),
            ))
            .json_schema("answer", serde_json::json!({"type": "object"}))
            .with_tool_calls(&first)
            .tool_result("c1", "42");
        assert_eq!(
            request.schema(),
            Some(serde_json::json!({"type": "object"}))
        );
        assert_eq!(request.tool_names().collect::<Vec<_>>(), ["lookup"]);
        let roles: Vec<_> = request.messages().map(|(role, _)| role).collect();
        assert_eq!(roles, ["user", "assistant", "tool"]);
        assert_eq!(request.raw.messages[1].tool_calls[0].id, "c1");
        assert_eq!(request.raw.messages[2].tool_call_id.as_deref(), Some("c1"));
        #[derive(serde::Deserialize)]
        struct Args {
            q: String,
        }
        assert_eq!(first.tool_calls[0].args::<Args>().unwrap().q, "x");
    }

    #[test]
    fn json_or_text_falls_back_to_text() {
        let r = ok(r#"{"a": 1}"#).unwrap();
        assert_eq!(r.json_or_text()["a"], 1);
        let r = ok(" plain ").unwrap();
        assert_eq!(r.json_or_text(), serde_json::Value::String("plain".into()));
    }
}
