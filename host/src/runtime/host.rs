//! The per-job store state and the host side of the contract's imports: `progress`, `llm`
//! and `log`. Each import enforces the job's limits; breaking one raises a [`HostStop`]
//! that fails the job with its own kind.

use std::collections::HashMap;
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
use super::journal::{CallJournal, JournalEntry, request_hash};
use super::limits::Limits;
use crate::llm::{LlmClient, LlmError, LlmRequest, LlmResponse, Message, Role, TokenSink, Usage};

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
    journal: Option<Arc<dyn CallJournal>>,
    /// What earlier attempts journaled, by call position.
    recorded: HashMap<u64, JournalEntry>,
    /// Position of the plugin's next LLM call in this attempt.
    next_call: u64,
    /// True until the first call that does not match the journal.
    replaying: bool,
}

/// Where one call's answer comes from.
enum Source {
    /// The journal has this exact call: answer from it.
    Replay(LlmResponse),
    /// Ask the provider (and journal the answer at this position).
    Provider,
}

impl HostState {
    /// The state of one attempt of job `job_id` with `context`'s sink, LLM client,
    /// cancel token and limits; it stops the guest with `timeout` at `deadline`.
    pub(crate) fn new(
        (job_id, job_type): (String, String),
        context: super::RunContext,
        deadline: Instant,
        journal: Option<Arc<dyn CallJournal>>,
    ) -> Self {
        let super::RunContext {
            sink,
            llm,
            cancel,
            limits,
            ..
        } = context;
        let recorded: HashMap<u64, JournalEntry> = journal
            .as_ref()
            .map(|j| j.recorded().into_iter().collect())
            .unwrap_or_default();
        Self {
            replaying: !recorded.is_empty(),
            recorded,
            journal,
            next_call: 0,
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

    /// Decides, for the next call position, whether the journal answers it. The first
    /// call that does not match ends the replay for the rest of the attempt.
    fn source_of(&mut self, index: u64, hash: &str) -> Source {
        if self.replaying {
            match self.recorded.get(&index) {
                Some(entry) if entry.request_hash == hash => {
                    return Source::Replay(entry.response.clone());
                }
                _ => self.replaying = false,
            }
        }
        Source::Provider
    }

    /// Answers `requests` in order: replayed ones from the journal, the others
    /// concurrently through the LLM client (streaming labelled ones), each journaled
    /// before the plugin sees it.
    async fn complete_many(
        &mut self,
        requests: Vec<llm::Request>,
    ) -> wasmtime::Result<Vec<Result<llm::Response, llm::LlmError>>> {
        let requests: Vec<LlmRequest> = requests.into_iter().map(LlmRequest::from).collect();
        let mut plan = Vec::with_capacity(requests.len());
        for request in &requests {
            let index = self.next_call;
            self.next_call += 1;
            let hash = request_hash(request);
            let source = self.source_of(index, &hash);
            plan.push((index, hash, source));
        }
        let live = plan
            .iter()
            .filter(|(_, _, s)| matches!(s, Source::Provider))
            .count();
        self.admit_llm_calls(live)?;

        let (client, sink, journal) = (self.llm.clone(), self.sink.clone(), self.journal.clone());
        let job_id = self.job_id.clone();
        let calls = requests
            .iter()
            .zip(&plan)
            .map(|(request, (index, hash, source))| {
                let (client, sink, journal, job_id) = (
                    client.clone(),
                    sink.clone(),
                    journal.clone(),
                    job_id.clone(),
                );
                async move {
                    if let Source::Replay(response) = source {
                        replay(&*sink, *index, request, response);
                        return (true, Ok(response.clone()));
                    }
                    let forward = |delta: &str| {
                        if let Some(label) = &request.stream_label {
                            sink.emit(PluginEvent::Token {
                                label: label.clone(),
                                delta: delta.to_string(),
                            });
                        }
                    };
                    let tokens = request
                        .stream_label
                        .as_ref()
                        .map(|_| &forward as TokenSink<'_>);
                    let outcome = crate::llm::LLM_CALLER
                        .scope(job_id.clone(), client.complete(request, tokens))
                        .await;
                    if let (Ok(response), Some(journal)) = (&outcome, &journal) {
                        let entry = JournalEntry {
                            request_hash: hash.clone(),
                            response: response.clone(),
                        };
                        if let Err(error) = journal.record(*index, entry).await {
                            tracing::warn!(%job_id, index, %error, "could not journal an LLM call");
                        }
                    }
                    (false, outcome)
                }
            });
        let outcomes = join_all(calls).await;
        let mut answers = Vec::with_capacity(outcomes.len());
        for (replayed, outcome) in outcomes {
            answers.push(match outcome {
                Ok(response) if replayed => {
                    self.usage.replayed_calls += 1;
                    Ok(response.into())
                }
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

/// Tells the job's clients a call was answered from the journal, and re-sends its text
/// as one `token` event when the call was streamed, so a follower sees the same output.
fn replay(sink: &dyn EventSink, index: u64, request: &LlmRequest, response: &LlmResponse) {
    sink.emit(PluginEvent::Replayed {
        index,
        label: request.stream_label.clone(),
    });
    if let Some(label) = &request.stream_label {
        sink.emit(PluginEvent::Token {
            label: label.clone(),
            delta: response.text.clone(),
        });
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
