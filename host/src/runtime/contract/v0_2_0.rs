//! `kiln:plugin@0.2.0` (`wit/v0.2.0`): its bindings and its adapter onto the host.
//! Adds structured output, tool calls, embeddings, input files and artifacts to 0.1.0.

use serde_json::Value;
use wasmtime::Store;

use super::{Described, PluginErrorKind, RunJob, plugin_failure};
use crate::llm::{
    EmbedRequest, EmbedResponse, FinishReason, JsonSchemaSpec, LlmError, LlmRequest, LlmResponse,
    Message, Role, ToolCall, ToolSpec,
};
use crate::runtime::failure::JobFailure;
use crate::runtime::files::{FileError, FileInfo};
use crate::runtime::host::{HostState, LogLevel};

wasmtime::component::bindgen!({
    path: "../wit/v0.2.0",
    world: "job-plugin",
    imports: {
        "kiln:plugin/llm": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

use exports::kiln::plugin::job_type;
use kiln::plugin::{artifacts, files, llm, log, progress, types};

pub(super) async fn describe(
    pre: &JobPluginPre<HostState>,
    store: &mut Store<HostState>,
) -> wasmtime::Result<Described> {
    let bindings = pre.instantiate_async(&mut *store).await?;
    let info = bindings.kiln_plugin_job_type().call_describe(store).await?;
    Ok(Described {
        name: info.name,
        version: info.version,
        description: info.description,
        payload_schema: info.payload_schema,
        default_timeout_secs: info.default_timeout_secs,
    })
}

pub(super) async fn run(
    pre: &JobPluginPre<HostState>,
    store: &mut Store<HostState>,
    job: RunJob,
) -> wasmtime::Result<Result<String, JobFailure>> {
    let bindings = pre.instantiate_async(&mut *store).await?;
    let job = job_type::Job {
        id: job.id,
        job_type: job.job_type,
        payload: job.payload,
        attempt: job.attempt,
    };
    let outcome = bindings
        .kiln_plugin_job_type()
        .call_run(store, &job)
        .await?;
    Ok(outcome.map_err(|error| match error {
        job_type::JobError::InvalidInput(m) => plugin_failure(PluginErrorKind::InvalidInput, m),
        job_type::JobError::Retryable(m) => plugin_failure(PluginErrorKind::Retryable, m),
        job_type::JobError::Permanent(m) => plugin_failure(PluginErrorKind::Permanent, m),
    }))
}

impl types::Host for HostState {}

impl progress::Host for HostState {
    fn report(&mut self, percent: u8, message: String) -> wasmtime::Result<()> {
        HostState::report(self, percent, message)
    }

    fn partial(&mut self, name: String, data: String) -> wasmtime::Result<()> {
        HostState::partial(self, name, data)
    }

    fn cancelled(&mut self) -> wasmtime::Result<bool> {
        Ok(HostState::cancelled(self))
    }
}

impl llm::Host for HostState {
    async fn complete(
        &mut self,
        request: llm::Request,
    ) -> wasmtime::Result<Result<llm::Response, llm::LlmError>> {
        let mut answers = self.complete_many(vec![to_host(request)]).await?;
        Ok(answers
            .pop()
            .expect("one answer per request")
            .map(Into::into)
            .map_err(Into::into))
    }

    async fn complete_all(
        &mut self,
        requests: Vec<llm::Request>,
    ) -> wasmtime::Result<Vec<Result<llm::Response, llm::LlmError>>> {
        let requests = requests.into_iter().map(to_host).collect();
        let answers = self.complete_many(requests).await?;
        Ok(answers
            .into_iter()
            .map(|a| a.map(Into::into).map_err(Into::into))
            .collect())
    }

    async fn embed(
        &mut self,
        model: Option<String>,
        texts: Vec<String>,
    ) -> wasmtime::Result<Result<llm::Embeddings, llm::LlmError>> {
        let answer = HostState::embed(self, EmbedRequest { model, texts }).await?;
        Ok(answer.map(Into::into).map_err(Into::into))
    }
}

impl files::Host for HostState {
    fn stat(&mut self, id: String) -> wasmtime::Result<Result<files::FileInfo, files::FileError>> {
        Ok(self.file_stat(&id).map(Into::into).map_err(Into::into))
    }

    fn read(
        &mut self,
        id: String,
        offset: u64,
        len: u32,
    ) -> wasmtime::Result<Result<Vec<u8>, files::FileError>> {
        Ok(self.file_read(&id, offset, len).map_err(Into::into))
    }
}

impl artifacts::Host for HostState {
    fn write(
        &mut self,
        name: String,
        content_type: String,
        bytes: Vec<u8>,
    ) -> wasmtime::Result<Result<(), String>> {
        self.artifact_write(&name, &content_type, &bytes)
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => LogLevel::Trace,
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.log(level, message);
        Ok(())
    }
}

/// JSON text of a schema the plugin sent, parsed; `what` names it in the error.
fn schema_json(text: &str, what: &str) -> Result<Value, LlmError> {
    serde_json::from_str(text)
        .map_err(|e| LlmError::Rejected(format!("the {what} is not JSON: {e}")))
}

/// The host's request for a 0.2.0 request; schemas that are not JSON are `rejected`.
fn to_host(request: llm::Request) -> Result<LlmRequest, LlmError> {
    let messages = request
        .messages
        .into_iter()
        .map(|m| Message {
            role: match m.role {
                llm::Role::System => Role::System,
                llm::Role::User => Role::User,
                llm::Role::Assistant => Role::Assistant,
                llm::Role::Tool => Role::Tool,
            },
            content: m.content,
            tool_calls: m.tool_calls.into_iter().map(Into::into).collect(),
            tool_call_id: m.tool_call_id,
        })
        .collect();
    let (json_output, json_schema) = match request.output {
        llm::Output::Text => (false, None),
        llm::Output::Json => (true, None),
        llm::Output::JsonSchema(spec) => {
            let schema = schema_json(&spec.schema, &format!("JSON Schema '{}'", spec.name))?;
            (
                false,
                Some(JsonSchemaSpec {
                    name: spec.name,
                    schema,
                }),
            )
        }
    };
    let tools = request
        .tools
        .into_iter()
        .map(|tool| {
            let parameters = schema_json(
                &tool.parameters,
                &format!("parameter schema of tool '{}'", tool.name),
            )?;
            Ok(ToolSpec {
                name: tool.name,
                description: tool.description,
                parameters,
            })
        })
        .collect::<Result<Vec<_>, LlmError>>()?;
    Ok(LlmRequest {
        messages,
        model: request.model,
        max_tokens: request.max_tokens,
        temperature: request.temperature,
        json_output,
        stream_label: request.stream_label,
        json_schema,
        tools,
    })
}

impl From<llm::ToolCall> for ToolCall {
    fn from(call: llm::ToolCall) -> Self {
        ToolCall {
            id: call.id,
            name: call.name,
            arguments: call.arguments,
        }
    }
}

impl From<ToolCall> for llm::ToolCall {
    fn from(call: ToolCall) -> Self {
        llm::ToolCall {
            id: call.id,
            name: call.name,
            arguments: call.arguments,
        }
    }
}

impl From<LlmResponse> for llm::Response {
    fn from(response: LlmResponse) -> Self {
        llm::Response {
            text: response.text,
            tool_calls: response.tool_calls.into_iter().map(Into::into).collect(),
            finish_reason: match response.finish_reason {
                FinishReason::Stop => llm::FinishReason::Stop,
                FinishReason::Length => llm::FinishReason::Length,
                FinishReason::ToolCalls => llm::FinishReason::ToolCalls,
                FinishReason::Other => llm::FinishReason::Other,
            },
            model: response.model,
            usage: llm::Usage {
                input_tokens: response.input_tokens,
                output_tokens: response.output_tokens,
                cached_input_tokens: response.cached_input_tokens,
                reasoning_tokens: response.reasoning_tokens,
            },
        }
    }
}

impl From<EmbedResponse> for llm::Embeddings {
    fn from(response: EmbedResponse) -> Self {
        llm::Embeddings {
            vectors: response.vectors,
            model: response.model,
            input_tokens: response.input_tokens,
        }
    }
}

impl From<LlmError> for llm::LlmError {
    fn from(error: LlmError) -> Self {
        match error {
            LlmError::RateLimited(m) => llm::LlmError::RateLimited(m),
            LlmError::Timeout(m) => llm::LlmError::Timeout(m),
            LlmError::Unavailable(m) => llm::LlmError::Unavailable(m),
            LlmError::Rejected(m) => llm::LlmError::Rejected(m),
        }
    }
}

impl From<FileInfo> for files::FileInfo {
    fn from(info: FileInfo) -> Self {
        files::FileInfo {
            id: info.id,
            size: info.size,
            content_type: info.content_type,
            sha256: info.sha256,
        }
    }
}

impl From<FileError> for files::FileError {
    fn from(error: FileError) -> Self {
        match error {
            FileError::NotFound(m) => files::FileError::NotFound(m),
            FileError::Unavailable(m) => files::FileError::Unavailable(m),
        }
    }
}
