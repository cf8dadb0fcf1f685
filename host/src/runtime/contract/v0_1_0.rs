//! `kiln:plugin@0.1.0` (`wit/v0.1.0`): its bindings and its adapter onto the host.
//! Frozen with the WIT: a 0.1.0 component sees exactly the behaviour it was built for.

use wasmtime::Store;

use super::{Described, PluginErrorKind, RunJob, plugin_failure};
use crate::llm::{LlmError, LlmRequest, LlmResponse, Message, Role};
use crate::runtime::failure::JobFailure;
use crate::runtime::host::{HostState, LogLevel};

wasmtime::component::bindgen!({
    path: "../wit/v0.1.0",
    world: "job-plugin",
    imports: {
        "kiln:plugin/llm": async | trappable,
        default: trappable,
    },
    exports: { default: async },
});

use exports::kiln::plugin::job_type;
use kiln::plugin::{llm, log, progress, types};

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
        let mut answers = self.complete_many(vec![Ok(request.into())]).await?;
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
        let requests = requests.into_iter().map(|r| Ok(r.into())).collect();
        let answers = self.complete_many(requests).await?;
        Ok(answers
            .into_iter()
            .map(|a| a.map(Into::into).map_err(Into::into))
            .collect())
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

impl From<llm::Request> for LlmRequest {
    fn from(request: llm::Request) -> Self {
        LlmRequest {
            messages: request
                .messages
                .into_iter()
                .map(|m| {
                    let role = match m.role {
                        llm::Role::System => Role::System,
                        llm::Role::User => Role::User,
                        llm::Role::Assistant => Role::Assistant,
                    };
                    Message::new(role, m.content)
                })
                .collect(),
            model: request.model,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            json_output: request.json_output,
            stream_label: request.stream_label,
            json_schema: None,
            tools: Vec::new(),
        }
    }
}

impl From<LlmResponse> for llm::Response {
    fn from(response: LlmResponse) -> Self {
        llm::Response {
            text: response.text,
            model: response.model,
            input_tokens: response.input_tokens,
            output_tokens: response.output_tokens,
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
