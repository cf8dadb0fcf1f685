//! LLM access for plugins: the [`LlmClient`] trait the runtime calls, the request and
//! response types it speaks, and the providers behind it.
//!
//! The runtime never knows which provider answers: it hands a provider-neutral
//! [`LlmRequest`] to an `LlmClient` and gets an [`LlmResponse`] or an [`LlmError`] back.
//! Keys and URLs stay on this side of the trait, so a plugin never sees them.

mod admission;
mod anthropic;
mod offline;
mod openai;
mod provider;
mod router;
mod shared;
mod structured;
mod wire;

pub use admission::{ANONYMOUS_CALLER, Admission, AdmissionConfig, DEFAULT_MAX_CONCURRENT, Permit};
pub use anthropic::{ANTHROPIC_BASE_URL, ANTHROPIC_VERSION, DEFAULT_MAX_TOKENS};
pub use offline::{OfflineClient, OfflineConfig};
pub use openai::OPENAI_BASE_URL;
pub use provider::{
    ApiKey, DEFAULT_OUTPUT_RESERVATION, DEFAULT_TIMEOUT, HttpProvider, HttpProviderConfig,
    MAX_RATE_LIMIT_RETRIES, MAX_SERVER_RETRIES, WireFormat,
};
pub use router::ModelRouter;
pub use router::NamedProvider;
pub use shared::{SharedAdmit, SharedLimits, SharedLimitsCell, SharedSlot};
pub use structured::{STRUCTURED_TRIES, check_answer, check_request, complete_checked};

use futures::future::BoxFuture;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Watches a provider's calls, for the metrics: given to each provider when it is built
/// (an explicit handle, not a task-local), so a call is counted wherever it runs.
/// `monitor::Metrics` implements it.
pub trait CallObserver: Send + Sync + 'static {
    /// One call answered or failed, by the provider called `provider` in the config.
    fn call(&self, provider: &str, result: &Result<LlmResponse, LlmError>);
    /// One HTTP answer of a provider by its status (`None`: no answer, the connection
    /// failed), including those its retries absorb, so 429s and 5xx a call survived show.
    fn http_answer(&self, provider: &str, status: Option<u16>);
}

/// A provider's observer, if it has one (providers built outside a server have none).
pub type Observer = Option<Arc<dyn CallObserver>>;

/// Who said a chat message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions that frame the conversation.
    System,
    /// The asking side.
    User,
    /// The model's earlier answers.
    Assistant,
    /// The result of a tool the model called (contract 0.2.0).
    Tool,
}

/// A tool the model asked to be run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The provider's id of the call, echoed by the `tool` message that answers it.
    pub id: String,
    /// The tool's name.
    pub name: String,
    /// The arguments, JSON text of an object.
    pub arguments: String,
}

/// One chat message.
///
/// The fields added in contract 0.2.0 are left out of the JSON when empty, so a request
/// without them hashes (see `runtime::request_hash`) as it did before: a journal written
/// by an older Kiln still replays.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who said it.
    pub role: Role,
    /// What was said (for a `tool` message, the tool's result).
    pub content: String,
    /// For an assistant message: the tools it called.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// For a tool message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Message {
    /// A plain message of `role`.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// A tool the model may call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// Its name.
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: serde_json::Value,
}

/// A named JSON Schema the answer must match.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JsonSchemaSpec {
    /// A short name, sent to providers that want one.
    pub name: String,
    /// The schema.
    pub schema: serde_json::Value,
}

/// One completion request, as a plugin asked for it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmRequest {
    /// The conversation; the model answers the last message.
    pub messages: Vec<Message>,
    /// Model alias from the `[models]` table; `None` means `default`.
    pub model: Option<String>,
    /// Upper bound on output tokens.
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    pub temperature: Option<f32>,
    /// Ask for a JSON object as output.
    pub json_output: bool,
    /// When set, output tokens are streamed to the job's clients under this label.
    pub stream_label: Option<String>,
    /// The schema the answer must match, sent as the provider's structured-output mode
    /// (implies JSON output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json_schema: Option<JsonSchemaSpec>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
}

impl LlmRequest {
    /// Input tokens this request will be charged about: each message's estimate plus a
    /// few tokens of per-message framing, and the tools' and schema's text. What
    /// admission reserves and budgets check before anything is sent.
    pub fn estimated_input_tokens(&self) -> u32 {
        let messages = self
            .messages
            .iter()
            .map(|m| {
                let calls: u32 = m
                    .tool_calls
                    .iter()
                    .map(|c| estimate_tokens(&c.name).saturating_add(estimate_tokens(&c.arguments)))
                    .fold(0, u32::saturating_add);
                estimate_tokens(&m.content)
                    .saturating_add(calls)
                    .saturating_add(4)
            })
            .fold(0, u32::saturating_add);
        let tools = self
            .tools
            .iter()
            .map(|t| {
                estimate_tokens(&t.description)
                    .saturating_add(estimate_tokens(&t.parameters.to_string()))
                    .saturating_add(8)
            })
            .fold(0, u32::saturating_add);
        let schema = self
            .json_schema
            .as_ref()
            .map_or(0, |s| estimate_tokens(&s.schema.to_string()));
        messages.saturating_add(tools).saturating_add(schema)
    }

    /// Whether the answer must be JSON (JSON mode or a schema).
    pub fn wants_json(&self) -> bool {
        self.json_output || self.json_schema.is_some()
    }
}

/// Why the model stopped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It finished its answer.
    #[default]
    Stop,
    /// It reached `max_tokens`.
    Length,
    /// It asked for tools to be run.
    ToolCalls,
    /// A content filter, or another reason.
    Other,
}

/// A finished completion.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmResponse {
    /// The output text.
    pub text: String,
    /// The concrete model that answered.
    pub model: String,
    /// Prompt tokens as the provider counted them, cached ones included.
    pub input_tokens: u32,
    /// Output tokens as the provider counted them, reasoning ones included.
    pub output_tokens: u32,
    /// The tools the model asked to be run.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// Why the model stopped.
    #[serde(default)]
    pub finish_reason: FinishReason,
    /// Prompt tokens served from the provider's prompt cache.
    #[serde(default)]
    pub cached_input_tokens: u32,
    /// Output tokens spent on hidden reasoning.
    #[serde(default)]
    pub reasoning_tokens: u32,
}

/// One embeddings request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbedRequest {
    /// Model alias; `None` means `embedding`.
    pub model: Option<String>,
    /// The texts to embed.
    pub texts: Vec<String>,
}

impl EmbedRequest {
    /// The alias used when the plugin names none.
    pub const DEFAULT_ALIAS: &'static str = "embedding";

    /// Input tokens this request will be charged about.
    pub fn estimated_input_tokens(&self) -> u32 {
        self.texts
            .iter()
            .map(|t| estimate_tokens(t))
            .fold(0, u32::saturating_add)
    }
}

/// Vectors for an [`EmbedRequest`]'s texts, in order.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct EmbedResponse {
    /// One vector per text.
    pub vectors: Vec<Vec<f32>>,
    /// The concrete model that answered.
    pub model: String,
    /// Input tokens as the provider counted them.
    pub input_tokens: u32,
}

/// Why a completion failed, in the contract's four variants so plugins and the retry
/// policy can tell transient failures (the first three) from permanent ones.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", content = "message", rename_all = "snake_case")]
pub enum LlmError {
    /// Refused for now by the provider or by our own per-provider limits.
    #[error("rate limited: {0}")]
    RateLimited(String),
    /// No answer within the timeout.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Unreachable, or a server error.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong; retrying will not help.
    #[error("rejected: {0}")]
    Rejected(String),
}

/// Receives streamed output text as it arrives.
pub type TokenSink<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Something that answers completion requests: a provider, or a router over several.
///
/// `caller` says who is calling (a job's id; [`ANONYMOUS_CALLER`] outside a job), passed
/// with every call so a provider's admission control can be fair between jobs. `tokens`
/// is given when the request carries a stream label: the client calls it with each text
/// delta as it arrives, then still returns the whole text.
pub trait LlmClient: Send + Sync + 'static {
    /// Run one completion.
    fn complete<'a>(
        &'a self,
        caller: &'a str,
        request: &'a LlmRequest,
        tokens: Option<TokenSink<'a>>,
    ) -> BoxFuture<'a, Result<LlmResponse, LlmError>>;

    /// Embed texts. Default: refused, for providers that serve no embeddings.
    fn embed<'a>(
        &'a self,
        _caller: &'a str,
        _request: &'a EmbedRequest,
    ) -> BoxFuture<'a, Result<EmbedResponse, LlmError>> {
        Box::pin(async {
            Err(LlmError::Rejected(
                "this provider serves no embeddings".into(),
            ))
        })
    }

    /// Checks cheaply that the provider answers and accepts its credentials (for
    /// `kiln doctor`). The message of an error never carries the key. Default: `Ok`.
    fn probe(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }

    /// The named providers behind this client (a router lists the ones it was given).
    /// Default: none.
    fn providers(&self) -> Vec<NamedProvider> {
        Vec::new()
    }
}

/// A rough token count for text whose provider gives none: about four bytes per token.
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.len().div_ceil(4)).unwrap_or(u32::MAX)
}

/// What a job spent on LLM calls: the `usage` of a job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Usage {
    /// Calls a provider answered (and was paid for), over every attempt. Each is counted
    /// when it is journaled, in the same commit, so a crash loses none of them.
    pub llm_calls: u64,
    /// Prompt tokens of answered provider calls.
    pub input_tokens: u64,
    /// Output tokens of answered provider calls.
    pub output_tokens: u64,
    /// Calls answered from the job's journal instead of a provider (a retry or a recovery
    /// re-running finished calls): not paid again, not counted above.
    #[serde(default)]
    pub replayed_calls: u64,
    /// Of `input_tokens`, those the provider served from its prompt cache.
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Of `output_tokens`, those spent on hidden reasoning.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Usage {
    /// Input plus output tokens.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }

    /// Adds another attempt's usage to this one.
    pub fn add(&mut self, other: &Usage) {
        self.llm_calls += other.llm_calls;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.replayed_calls += other.replayed_calls;
        self.cached_input_tokens += other.cached_input_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
    }

    /// The cost of one answered call.
    pub fn of_call(input_tokens: u32, output_tokens: u32, cached: u32, reasoning: u32) -> Self {
        Self {
            llm_calls: 1,
            input_tokens: u64::from(input_tokens),
            output_tokens: u64::from(output_tokens),
            replayed_calls: 0,
            cached_input_tokens: u64::from(cached),
            reasoning_tokens: u64::from(reasoning),
        }
    }
}
