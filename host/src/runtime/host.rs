//! The per-job store state and the host side of the contract's imports, in host types:
//! progress, LLM calls and embeddings, logs, input files and artifacts. Each version's
//! adapter (`contract::v*`) maps its bindings onto these methods. Each import enforces
//! the job's limits; breaking one raises a [`HostStop`] that fails the job with its own
//! kind.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use futures::future::join_all;
use tokio_util::sync::CancellationToken;
use wasmtime::ResourceLimiter;
use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::stderr::StderrTail;

use super::events::{EventSink, PluginEvent};
use super::failure::{FailureKind, HostStop};
use super::files::{ArtifactLedger, ArtifactSink, FileError, FileInfo, JobFiles, MAX_READ_CHUNK};
use super::journal::{CallJournal, JournalEntry, Replay, embed_hash, request_hash};
use super::limits::Limits;
use crate::llm::{
    EmbedRequest, EmbedResponse, LlmClient, LlmError, LlmRequest, LlmResponse, TokenSink, Usage,
};

/// A plugin log line's severity, the same in every contract version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogLevel {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Everything a job's store holds. One per attempt, dropped with the store.
pub struct HostState {
    wasi: WasiCtx,
    /// The tail of what the guest wrote to stderr.
    pub(crate) stderr: StderrTail,
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
    logs: LogBudget,
    /// What this attempt spent: calls answered by a provider and their tokens, and calls
    /// answered from the journal.
    pub(crate) usage: Usage,
    /// Calls this attempt sent to a provider, answered or not: what `max_llm_calls`
    /// bounds.
    sent_calls: u64,
    pub(crate) last_error_log: Option<String>,
    journal: Option<Arc<dyn CallJournal>>,
    /// The journal's answers this attempt has not used yet.
    replay: Replay,
    /// Position of the plugin's next LLM call in this attempt (the `replayed` event's
    /// `index`).
    next_call: u64,
    /// Answers with tool calls so far: what `max_tool_rounds` bounds.
    tool_rounds: u32,
    files: Arc<dyn JobFiles>,
    artifacts: Arc<dyn ArtifactSink>,
    artifact_ledger: ArtifactLedger,
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
            files,
            artifacts,
            ..
        } = context;
        let replay = Replay::new(journal.as_ref().map(|j| j.recorded()).unwrap_or_default());
        let stderr = StderrTail::default();
        Self {
            replay,
            journal,
            next_call: 0,
            tool_rounds: 0,
            files,
            artifacts,
            artifact_ledger: ArtifactLedger::default(),
            // An empty context: no preopened dirs, no env, no args, no network; stdout
            // goes nowhere and stderr only into the job's error message (see `stderr`).
            // WASI is linked only so standard-library guests instantiate.
            wasi: WasiCtx::builder().stderr(stderr.clone()).build(),
            stderr,
            table: ResourceTable::new(),
            events: EventBucket::new(limits.max_events_per_second),
            logs: LogBudget::new(job_id.clone(), &limits),
            job_id,
            job_type,
            sink,
            llm,
            cancel,
            limits,
            deadline,
            last_percent: 0,
            usage: Usage::default(),
            sent_calls: 0,
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

    /// Admits the calls about to go to a provider against the attempt's budgets, before
    /// anything is sent: the number of calls, and the tokens they would use at most (their
    /// estimated input plus their `max_tokens`), so an oversized prompt is refused rather
    /// than paid for.
    fn admit_llm_calls(&mut self, live: &[&LlmRequest]) -> wasmtime::Result<()> {
        let wanted = self.sent_calls.saturating_add(live.len() as u64);
        if wanted > u64::from(self.limits.max_llm_calls) {
            return Err(HostStop::error(
                FailureKind::LlmLimit,
                format!(
                    "the plugin asked for LLM call {wanted}; the limit is {} per job",
                    self.limits.max_llm_calls
                ),
            ));
        }
        let used = self.usage.total_tokens();
        if used >= self.limits.max_llm_tokens {
            return Err(self.token_limit_error());
        }
        let estimated_input: u64 = live
            .iter()
            .map(|request| u64::from(request.estimated_input_tokens()))
            .sum();
        if used.saturating_add(estimated_input) > self.limits.max_llm_tokens {
            return Err(HostStop::error(
                FailureKind::LlmLimit,
                format!(
                    "the plugin's next LLM request{} would send about {estimated_input} input \
                     tokens; with the {used} used so far that passes the limit of {} per job, \
                     so {} not sent",
                    if live.len() == 1 { "" } else { "s" },
                    self.limits.max_llm_tokens,
                    if live.len() == 1 {
                        "it was"
                    } else {
                        "they were"
                    },
                ),
            ));
        }
        self.sent_calls = wanted;
        Ok(())
    }

    /// Adds a finished call's tokens, failing the job once the token budget is spent.
    fn record_tokens(&mut self, response: &LlmResponse) -> wasmtime::Result<()> {
        self.usage.add(&Usage::of_call(
            response.input_tokens,
            response.output_tokens,
            response.cached_input_tokens,
            response.reasoning_tokens,
        ));
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

    /// Answers `requests` in order: replayed ones from the journal, the others
    /// concurrently through the LLM client (streaming labelled ones), each journaled as
    /// soon as its answer arrives, before the plugin sees it and whatever its siblings do.
    /// A request the adapter could not convert, or whose schema or tools are invalid, is
    /// answered with its error and neither sent nor counted.
    pub(crate) async fn complete_many(
        &mut self,
        requests: Vec<Result<LlmRequest, LlmError>>,
    ) -> wasmtime::Result<Vec<Result<LlmResponse, LlmError>>> {
        let requests: Vec<Result<LlmRequest, LlmError>> = requests
            .into_iter()
            .map(|r| r.and_then(|r| crate::llm::check_request(&r).map(|()| r)))
            .collect();
        let plan: Vec<(u64, String, Option<LlmResponse>)> = requests
            .iter()
            .map(|request| {
                let Ok(request) = request else {
                    return (0, String::new(), None);
                };
                let position = self.next_call;
                self.next_call += 1;
                let hash = request_hash(request);
                let journaled = self.replay.take(&hash).map(|entry| entry.response);
                (position, hash, journaled)
            })
            .collect();
        let live: Vec<&LlmRequest> = requests
            .iter()
            .zip(&plan)
            .filter_map(|(request, (_, _, journaled))| {
                request.as_ref().ok().filter(|_| journaled.is_none())
            })
            .collect();
        self.admit_llm_calls(&live)?;
        // Journal positions are claimed in list order, so they follow the plugin's order.
        let slots: Vec<Option<u64>> = requests
            .iter()
            .zip(&plan)
            .map(|(request, (_, _, journaled))| {
                (request.is_ok() && journaled.is_none()).then(|| self.replay.claim_index())
            })
            .collect();

        let (client, sink, journal) = (self.llm.clone(), self.sink.clone(), self.journal.clone());
        let job_id = self.job_id.clone();
        let calls = requests.iter().zip(plan).zip(slots).map(
            |((request, (position, hash, journaled)), slot)| {
                let (client, sink, journal, job_id) = (
                    client.clone(),
                    sink.clone(),
                    journal.clone(),
                    job_id.clone(),
                );
                async move {
                    let request = match request {
                        Ok(request) => request,
                        Err(error) => return (false, Err(error.clone())),
                    };
                    if let Some(response) = journaled {
                        replay(&*sink, position, request, &response);
                        return (true, Ok(response));
                    }
                    let streamed = AtomicBool::new(false);
                    let forward = |delta: &str| {
                        if let Some(label) = &request.stream_label {
                            streamed.store(true, Ordering::Relaxed);
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
                    // Tokens of a try whose answer is then refused are withdrawn.
                    let withdraw = || {
                        if streamed.swap(false, Ordering::Relaxed)
                            && let Some(label) = &request.stream_label
                        {
                            sink.emit(PluginEvent::TokenReset {
                                label: label.clone(),
                            });
                        }
                    };
                    let outcome = crate::llm::complete_checked(
                        &*client, &job_id, request, tokens, &withdraw,
                    )
                    .await;
                    match (&outcome, &journal, slot) {
                        (Ok(response), Some(journal), Some(index)) => {
                            let entry = JournalEntry::completion(hash, response.clone());
                            if let Err(error) = journal.record(index, entry).await {
                                tracing::warn!(%job_id, index, %error, "could not journal an LLM call");
                            }
                        }
                        (Err(_), _, _) => withdraw(),
                        _ => {}
                    }
                    (false, outcome)
                }
            },
        );
        let outcomes = join_all(calls).await;
        let mut answers = Vec::with_capacity(outcomes.len());
        for (replayed, outcome) in outcomes {
            if let Ok(response) = &outcome
                && !response.tool_calls.is_empty()
            {
                self.count_tool_round()?;
            }
            answers.push(match outcome {
                Ok(response) if replayed => {
                    self.usage.replayed_calls += 1;
                    Ok(response)
                }
                Ok(response) => {
                    self.record_tokens(&response)?;
                    Ok(response)
                }
                Err(error) => {
                    tracing::debug!(job_id = %self.job_id, %error, "LLM call failed");
                    Err(error)
                }
            });
        }
        Ok(answers)
    }

    fn count_tool_round(&mut self) -> wasmtime::Result<()> {
        self.tool_rounds += 1;
        if self.tool_rounds > self.limits.max_tool_rounds {
            return Err(HostStop::error(
                FailureKind::LlmLimit,
                format!(
                    "the model answered with tool calls {} times; the limit is {} rounds per \
                     job (max_tool_rounds)",
                    self.tool_rounds, self.limits.max_tool_rounds
                ),
            ));
        }
        Ok(())
    }

    /// Embeds texts: from the journal when an earlier attempt paid for the same request,
    /// else through the LLM client under the same budgets as completions, journaled
    /// before the plugin sees the vectors.
    pub(crate) async fn embed(
        &mut self,
        request: EmbedRequest,
    ) -> wasmtime::Result<Result<EmbedResponse, LlmError>> {
        if request.texts.is_empty() {
            return Ok(Err(LlmError::Rejected("the request has no texts".into())));
        }
        let position = self.next_call;
        self.next_call += 1;
        let hash = embed_hash(&request);
        if let Some(entry) = self.replay.take(&hash)
            && let Some(embeddings) = entry.embeddings
        {
            self.sink.emit(PluginEvent::Replayed {
                index: position,
                label: None,
            });
            self.usage.replayed_calls += 1;
            return Ok(Ok(embeddings));
        }
        let as_completion = LlmRequest {
            messages: request
                .texts
                .iter()
                .map(|t| crate::llm::Message::new(crate::llm::Role::User, t.clone()))
                .collect(),
            max_tokens: Some(0),
            ..Default::default()
        };
        self.admit_llm_calls(&[&as_completion])?;
        let index = self.replay.claim_index();
        let outcome = self.llm.embed(&self.job_id, &request).await;
        let embeddings = match outcome {
            Ok(embeddings) => embeddings,
            Err(error) => return Ok(Err(error)),
        };
        let cost = LlmResponse {
            model: embeddings.model.clone(),
            input_tokens: embeddings.input_tokens,
            ..Default::default()
        };
        if let Some(journal) = &self.journal {
            let entry = JournalEntry::embedding(hash, cost.clone(), embeddings.clone());
            if let Err(error) = journal.record(index, entry).await {
                tracing::warn!(job_id = %self.job_id, index, %error, "could not journal an embedding call");
            }
        }
        self.record_tokens(&cost)?;
        Ok(Ok(embeddings))
    }

    /// `progress.report`.
    pub(crate) fn report(&mut self, percent: u8, message: String) -> wasmtime::Result<()> {
        self.take_event()?;
        // Progress never goes down within an attempt, and never passes 100.
        let percent = percent.min(100).max(self.last_percent);
        self.last_percent = percent;
        self.sink.emit(PluginEvent::Progress { percent, message });
        Ok(())
    }

    /// `progress.partial`.
    pub(crate) fn partial(&mut self, name: String, data: String) -> wasmtime::Result<()> {
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

    /// `progress.cancelled`.
    pub(crate) fn cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// `log.write`.
    pub(crate) fn log(&mut self, level: LogLevel, message: String) {
        // Bound what a plugin can put into the host's log per line.
        let message = truncate(&message, MAX_LOG_LINE_BYTES);
        if level == LogLevel::Error {
            // Kept even when the line is dropped: a trap's message names it.
            self.last_error_log = Some(message.to_string());
        }
        if !self.logs.take(message.len()) {
            return;
        }
        let (job_id, job_type) = (&self.job_id, &self.job_type);
        match level {
            LogLevel::Trace => tracing::trace!(%job_id, %job_type, plugin = true, "{message}"),
            LogLevel::Debug => tracing::debug!(%job_id, %job_type, plugin = true, "{message}"),
            LogLevel::Info => tracing::info!(%job_id, %job_type, plugin = true, "{message}"),
            LogLevel::Warn => tracing::warn!(%job_id, %job_type, plugin = true, "{message}"),
            LogLevel::Error => tracing::error!(%job_id, %job_type, plugin = true, "{message}"),
        }
    }

    /// `files.stat`.
    pub(crate) fn file_stat(&self, id: &str) -> Result<FileInfo, FileError> {
        self.files.stat(id)
    }

    /// `files.read`: at most [`MAX_READ_CHUNK`] bytes per call.
    pub(crate) fn file_read(&self, id: &str, offset: u64, len: u32) -> Result<Vec<u8>, FileError> {
        self.files.read(id, offset, len.min(MAX_READ_CHUNK))
    }

    /// `artifacts.write`: a refused name or content type is the plugin's error; passing
    /// `artifact_limit` fails the job.
    pub(crate) fn artifact_write(
        &mut self,
        name: &str,
        content_type: &str,
        bytes: &[u8],
    ) -> wasmtime::Result<Result<(), String>> {
        let total = match self.artifact_ledger.check(name, content_type, bytes.len()) {
            Ok(total) => total,
            Err(why) => return Ok(Err(why)),
        };
        if total > self.limits.artifact_limit {
            return Err(HostStop::error(
                FailureKind::ArtifactLimit,
                format!(
                    "writing {} more bytes to artifact '{name}' would make {total} bytes of \
                     artifacts; the limit is {} (artifact_limit)",
                    bytes.len(),
                    self.limits.artifact_limit
                ),
            ));
        }
        if let Err(why) = self.artifacts.append(name, content_type, bytes) {
            // The host could not store it: not the plugin's fault, so the job may retry.
            return Err(HostStop::error(
                FailureKind::Retryable,
                format!("artifact '{name}' could not be stored: {why}"),
            ));
        }
        self.artifact_ledger.record(name, content_type, bytes.len());
        Ok(Ok(()))
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

/// Longest plugin log line written; the rest of a longer line is cut.
const MAX_LOG_LINE_BYTES: usize = 4096;

/// How much one attempt may write to the server's log: lines per second (a token bucket)
/// and bytes in all. What is over is dropped and counted; the count is logged once when
/// dropping starts and once, in total, when the attempt ends.
struct LogBudget {
    job_id: String,
    lines: EventBucket,
    bytes_left: u64,
    max_bytes: u64,
    lines_per_second: u32,
    dropped: u64,
}

impl LogBudget {
    fn new(job_id: String, limits: &Limits) -> Self {
        Self {
            job_id,
            lines: EventBucket::new(limits.max_log_lines_per_second),
            bytes_left: limits.max_log_bytes,
            max_bytes: limits.max_log_bytes,
            lines_per_second: limits.max_log_lines_per_second,
            dropped: 0,
        }
    }

    /// Whether a line of `len` bytes may be written.
    fn take(&mut self, len: usize) -> bool {
        let len = len as u64;
        if len <= self.bytes_left && self.lines.take() {
            self.bytes_left -= len;
            return true;
        }
        if self.dropped == 0 {
            tracing::warn!(
                job_id = %self.job_id,
                max_log_lines_per_second = self.lines_per_second,
                max_log_bytes = self.max_bytes,
                "the plugin writes more log than its limits allow; further lines of this \
                 attempt are dropped while it is over them"
            );
        }
        self.dropped += 1;
        false
    }
}

impl Drop for LogBudget {
    fn drop(&mut self) {
        if self.dropped > 0 {
            tracing::warn!(
                job_id = %self.job_id,
                dropped_lines = self.dropped,
                "plugin log lines dropped in this attempt (limits max_log_lines_per_second, \
                 max_log_bytes)"
            );
        }
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
