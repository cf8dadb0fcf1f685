//! The per-job store state and the host side of the contract's imports: `progress`, `llm`
//! and `log`. Each import enforces the job's limits; breaking one raises a [`HostStop`]
//! that fails the job with its own kind.

use std::sync::Arc;
use std::time::Instant;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::bindings::kiln::plugin::{llm, log, progress, types};
use super::events::{EventSink, PluginEvent};
use super::failure::{FailureKind, HostStop};
use super::limits::Limits;
use crate::llm::{LlmClient, LlmError, LlmRequest, LlmResponse, Message, Role, Usage};

/// Everything a job's store holds. One per attempt, dropped with the store.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) job_id: String,
    pub(crate) job_type: String,
    sink: Arc<dyn EventSink>,
    llm: Arc<dyn LlmClient>,
    pub(crate) cancel: CancellationToken,
    pub(crate) limits: Limits,
    /// When the epoch callback stops the guest with `timeout`.
    pub(crate) deadline: Instant,
    last_percent: u8,
    events: EventBucket,
    pub(crate) usage: Usage,
    pub(crate) last_error_log: Option<String>,
}

impl HostState {
    pub(crate) fn new(
        job_id: String,
        job_type: String,
        sink: Arc<dyn EventSink>,
        llm: Arc<dyn LlmClient>,
        cancel: CancellationToken,
        limits: Limits,
        deadline: Instant,
    ) -> Self {
        Self {
            // An empty context: no preopened dirs, no env, no args, no network, stdio to
            // nowhere. WASI is linked only so standard-library guests instantiate.
            wasi: WasiCtx::builder().build(),
            table: ResourceTable::new(),
            events: EventBucket::new(limits.max_events_per_second),
            job_id,
            job_type,
            sink,
            llm,
            cancel,
            limits,
            deadline,
            last_percent: 0,
            usage: Usage::default(),
            last_error_log: None,
        }
    }

    /// Counts one plugin event against the rate limit.
    fn take_event(&mut self) -> wasmtime::Result<()> {
        if self.events.take() {
            Ok(())
        } else {
            Err(HostStop::error(
                FailureKind::EventLimit,
                format!(
                    "the plugin emitted events faster than {} per second",
                    self.limits.max_events_per_second
                ),
            ))
        }
    }

    /// Counts `n` LLM calls against the job's budget before they are made.
    fn admit_llm_calls(&mut self, n: usize) -> wasmtime::Result<()> {
        let wanted = self.usage.llm_calls.saturating_add(n as u64);
        if wanted > u64::from(self.limits.max_llm_calls) {
            return Err(HostStop::error(
                FailureKind::LlmLimit,
                format!(
                    "the plugin asked for LLM call {wanted}; the limit is {} per job",
                    self.limits.max_llm_calls
                ),
            ));
        }
        if self.usage.total_tokens() >= self.limits.max_llm_tokens {
            return Err(self.token_limit_error());
        }
        self.usage.llm_calls = wanted;
        Ok(())
    }

    /// Adds a finished call's tokens, failing the job once the token budget is spent.
    fn record_tokens(&mut self, response: &LlmResponse) -> wasmtime::Result<()> {
        self.usage.input_tokens += u64::from(response.input_tokens);
        self.usage.output_tokens += u64::from(response.output_tokens);
        if self.usage.total_tokens() > self.limits.max_llm_tokens {
            return Err(self.token_limit_error());
        }
        Ok(())
    }

    fn token_limit_error(&self) -> wasmtime::Error {
        HostStop::error(
            FailureKind::LlmLimit,
            format!(
                "the job used {} LLM tokens; the limit is {}",
                self.usage.total_tokens(),
                self.limits.max_llm_tokens
            ),
        )
    }

    /// Runs `requests` concurrently through the LLM client, streaming labelled ones.
    async fn complete_many(
        &mut self,
        requests: Vec<llm::Request>,
    ) -> wasmtime::Result<Vec<Result<llm::Response, llm::LlmError>>> {
        self.admit_llm_calls(requests.len())?;
        let requests: Vec<LlmRequest> = requests.into_iter().map(LlmRequest::from).collect();
        let client = self.llm.clone();
        let sink = self.sink.clone();
        let calls = requests.iter().map(|request| {
            let client = client.clone();
            let sink = sink.clone();
            async move {
                match &request.stream_label {
                    Some(label) => {
                        let forward = |delta: &str| {
                            sink.emit(PluginEvent::Token {
                                label: label.clone(),
                                delta: delta.to_string(),
                            })
                        };
                        client.complete(request, Some(&forward)).await
                    }
                    None => client.complete(request, None).await,
                }
            }
        });
        let outcomes = join_all(calls).await;
        let mut answers = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            answers.push(match outcome {
                Ok(response) => {
                    self.record_tokens(&response)?;
                    Ok(response.into())
                }
                Err(error) => {
                    tracing::debug!(job_id = %self.job_id, %error, "LLM call failed");
                    Err(error.into())
                }
            });
        }
        Ok(answers)
    }
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for HostState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let cap = self.limits.memory_bytes();
        if desired > cap {
            return Err(HostStop::error(
                FailureKind::MemoryLimit,
                format!(
                    "the plugin tried to grow its memory to {} MiB; the limit is {} MiB",
                    desired.div_ceil(1024 * 1024),
                    self.limits.memory_mib
                ),
            ));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a million entries is far beyond any real
        // plugin and keeps a table bomb from eating host memory.
        Ok(desired <= 1_000_000)
    }
}

impl types::Host for HostState {}

impl progress::Host for HostState {
    fn report(&mut self, percent: u8, message: String) -> wasmtime::Result<()> {
        self.take_event()?;
        // Progress never goes down within an attempt, and never passes 100.
        let percent = percent.min(100).max(self.last_percent);
        self.last_percent = percent;
        self.sink.emit(PluginEvent::Progress { percent, message });
        Ok(())
    }

    fn partial(&mut self, name: String, data: String) -> wasmtime::Result<()> {
        self.take_event()?;
        if data.len() > self.limits.max_result_bytes {
            return Err(HostStop::error(
                FailureKind::ResultTooLarge,
                format!(
                    "partial '{name}' is {} bytes; the limit is {}",
                    data.len(),
                    self.limits.max_result_bytes
                ),
            ));
        }
        let data = serde_json::from_str(&data).map_err(|e| {
            HostStop::error(
                FailureKind::InvalidResult,
                format!("partial '{name}' is not JSON: {e}"),
            )
        })?;
        self.sink.emit(PluginEvent::Partial { name, data });
        Ok(())
    }

    fn cancelled(&mut self) -> wasmtime::Result<bool> {
        Ok(self.cancel.is_cancelled())
    }
}

impl llm::Host for HostState {
    async fn complete(
        &mut self,
        request: llm::Request,
    ) -> wasmtime::Result<Result<llm::Response, llm::LlmError>> {
        let mut answers = self.complete_many(vec![request]).await?;
        Ok(answers.pop().expect("one answer per request"))
    }

    async fn complete_all(
        &mut self,
        requests: Vec<llm::Request>,
    ) -> wasmtime::Result<Vec<Result<llm::Response, llm::LlmError>>> {
        self.complete_many(requests).await
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        // Bound what a plugin can put into the host's log per line.
        let message = truncate(&message, 4096);
        let (job_id, job_type) = (&self.job_id, &self.job_type);
        match level {
            log::Level::Trace => tracing::trace!(%job_id, %job_type, plugin = true, "{message}"),
            log::Level::Debug => tracing::debug!(%job_id, %job_type, plugin = true, "{message}"),
            log::Level::Info => tracing::info!(%job_id, %job_type, plugin = true, "{message}"),
            log::Level::Warn => tracing::warn!(%job_id, %job_type, plugin = true, "{message}"),
            log::Level::Error => {
                tracing::error!(%job_id, %job_type, plugin = true, "{message}");
                self.last_error_log = Some(message.to_string());
            }
        }
        Ok(())
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A token bucket of `rate` events, refilled continuously at `rate` per second.
struct EventBucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl EventBucket {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            refilled: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl From<llm::Request> for LlmRequest {
    fn from(request: llm::Request) -> Self {
        LlmRequest {
            messages: request
                .messages
                .into_iter()
                .map(|m| Message {
                    role: match m.role {
                        llm::Role::System => Role::System,
                        llm::Role::User => Role::User,
                        llm::Role::Assistant => Role::Assistant,
                    },
                    content: m.content,
                })
                .collect(),
            model: request.model,
            max_tokens: request.max_tokens,
            temperature: request.temperature,
            json_output: request.json_output,
            stream_label: request.stream_label,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_its_rate_then_refuses() {
        let mut bucket = EventBucket::new(3);
        assert!(bucket.take() && bucket.take() && bucket.take());
        assert!(!bucket.take());
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
