//! One attempt of one job: start it in the store, run it in the sandbox with its events
//! flowing into the log, then record how it ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::json;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use super::{
    JobService, RunningJob, cancelled_event, fail, interrupt, retry_or_fail, status_event,
};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::files::{StagedArtifacts, StoreFiles};
use crate::llm::Usage;
use crate::runtime::{
    CallJournal, EventSink, FailureKind, JobFailure, JobInput, JournalEntry, PluginEvent,
    RunContext,
};
use crate::store::{
    Change, ErrorInfo, JobRecord, JobStatus, NewEvent, Store, StoreError, event_names, now_ms,
};

impl JobService {
    /// Runs one attempt of job `id`, whose slot in `queue` the dispatcher took.
    pub(super) async fn run_attempt(self, queue: String, id: Uuid) {
        let running = self.register_running(id);
        let started = self.start_attempt(id).await;
        self.run_started(queue, id, running, started).await;
    }

    /// A job's stop handle, registered before the job turns `running`, so a cancel never
    /// misses it.
    pub(super) fn register_running(&self, id: Uuid) -> Arc<RunningJob> {
        let running = Arc::new(RunningJob {
            cancel: CancellationToken::new(),
            interrupted: AtomicBool::new(false),
        });
        self.inner
            .running
            .lock()
            .expect("running lock")
            .insert(id, running.clone());
        running
    }

    /// Commits the start of job `id`'s attempt: `queued -> running`. A job cancelled
    /// (or deleted) while it waited is refused: it never starts.
    pub(super) fn start_attempt(
        &self,
        id: Uuid,
    ) -> impl std::future::Future<Output = Result<JobRecord, StoreError>> + Send + 'static {
        let store = self.inner.store.clone();
        async move {
            store
                .update(id, |job| {
                    if job.status != JobStatus::Queued {
                        return Err(StoreError::Conflict(format!(
                            "job is {}",
                            job.status.as_str()
                        )));
                    }
                    job.status = JobStatus::Running;
                    job.started_at_ms = Some(now_ms());
                    job.progress = 0;
                    job.message = None;
                    Ok(Change::events(vec![status_event(job)]))
                })
                .await
        }
    }

    /// Runs the attempt whose start was `started` (or refused), records how it ended,
    /// and frees its queue slot.
    pub(super) async fn run_started(
        self,
        queue: String,
        id: Uuid,
        running: Arc<RunningJob>,
        started: Result<JobRecord, StoreError>,
    ) {
        let span = tracing::info_span!("job", job_id = %id, queue = %queue);
        let attempt = async {
            let outcome = match started {
                Ok(job) => Some(self.run(job, &running).await),
                Err(StoreError::Conflict(_) | StoreError::NotFound) => None,
                Err(error) => {
                    tracing::error!(%error, "could not start the job");
                    None
                }
            };
            self.inner.running.lock().expect("running lock").remove(&id);
            // The sandbox is done with it: the slot goes to the next job now, while the
            // outcome is committed, so a queue's throughput is not bounded by its
            // limit divided by two commit times. (For a moment the store may show the
            // next job running before this one's end: the limit is on running plugins.)
            self.release_slot(&queue);
            if let Some((job, outcome, artifacts)) = outcome {
                self.finish(job, outcome, artifacts, &running).await;
            }
        };
        crate::monitor::scope(self.inner.metrics.clone(), attempt)
            .instrument(span)
            .await;
    }

    /// Gives a slot of `queue` back and wakes the dispatcher.
    pub(super) fn release_slot(&self, queue: &str) {
        self.with_queue(queue, |q| q.running = q.running.saturating_sub(1));
        self.inner.wake.notify_one();
    }

    /// Applies `change` to the in-memory queue `name`, if it exists.
    fn with_queue(&self, name: &str, change: impl FnOnce(&mut super::queues::Queue)) {
        if let Some(q) = self.inner.queues.lock().expect("queues lock").get_mut(name) {
            change(q);
        }
    }

    /// Runs a started attempt in the sandbox.
    async fn run(
        &self,
        job: JobRecord,
        running: &RunningJob,
    ) -> (
        JobRecord,
        crate::runtime::RunOutcome,
        Option<Arc<StagedArtifacts>>,
    ) {
        let store = &self.inner.store;
        let id = job.id;
        let queue_ms = job.started_at_ms.unwrap_or_default().saturating_sub(
            job.run_at_ms
                .unwrap_or(job.created_at_ms)
                .max(job.created_at_ms),
        );
        self.record_start(&job.queue, queue_ms);
        tracing::info!(job_type = %job.job_type, attempt = job.attempt, "attempt started");

        let Some(plugin) = self.inner.plugins.get(&job.job_type).cloned() else {
            let failure = JobFailure::new(
                FailureKind::UnknownType,
                format!("no plugin for job type '{}' is loaded", job.job_type),
            );
            return (
                job,
                crate::runtime::RunOutcome {
                    result: Err(failure),
                    usage: Default::default(),
                },
                None,
            );
        };
        let payload = match store.payload(id) {
            Ok(Some(payload)) => payload,
            other => {
                let failure = JobFailure::new(
                    FailureKind::Internal,
                    format!("the job's payload could not be read: {other:?}"),
                );
                return (
                    job,
                    crate::runtime::RunOutcome {
                        result: Err(failure),
                        usage: Default::default(),
                    },
                    None,
                );
            }
        };
        let limits = self.inner.settings.limits_of(&job.job_type);
        let timeout = limits.timeout(job.timeout_s, plugin.info.default_timeout_secs);
        let artifacts = Arc::new(StagedArtifacts::new(store.blobs.clone(), id, job.attempt));
        let context = RunContext {
            sink: Arc::new(JobSink {
                store: store.clone(),
                id,
            }),
            llm: self.inner.llm.clone(),
            cancel: running.cancel.clone(),
            limits,
            timeout,
            files: if plugin.reads_files() {
                Arc::new(StoreFiles::of(
                    store.clone(),
                    &plugin.info.payload_schema,
                    &serde_json::from_str(&payload).unwrap_or_default(),
                ))
            } else {
                Arc::new(crate::runtime::NoFiles)
            },
            artifacts: artifacts.clone(),
        };
        let input = JobInput {
            id: id.to_string(),
            job_type: job.job_type.clone(),
            payload,
            attempt: job.attempt,
        };
        let journal = Arc::new(StoreJournal {
            store: store.clone(),
            id,
        });
        let outcome = self
            .inner
            .runtime
            .run_journaled(&plugin, input, context, Some(journal))
            .await;
        (job, outcome, Some(artifacts))
    }

    /// Records how the attempt ended: completed, cancelled, re-queued for a retry (or
    /// after an interruption), or failed for good.
    async fn finish(
        &self,
        job: JobRecord,
        outcome: crate::runtime::RunOutcome,
        artifacts: Option<Arc<StagedArtifacts>>,
        running: &RunningJob,
    ) {
        let run_ms = now_ms().saturating_sub(job.started_at_ms.unwrap_or_default());
        let usage = outcome.usage;
        let interrupted = running.interrupted.load(Ordering::SeqCst);
        let settings = self.inner.settings.clone();
        let mut result = outcome.result;
        // A completing attempt's artifacts are in place before the completion is
        // committed; any other attempt's are dropped.
        let mut published = Vec::new();
        if let Some(artifacts) = artifacts.as_ref().filter(|a| !a.records().is_empty()) {
            if result.is_ok() && !interrupted {
                let staged = artifacts.clone();
                match tokio::task::spawn_blocking(move || staged.publish()).await {
                    Ok(Ok(())) => published = artifacts.records(),
                    outcome => {
                        let why = match outcome {
                            Ok(Err(error)) => error.to_string(),
                            Err(error) => error.to_string(),
                            Ok(Ok(())) => unreachable!(),
                        };
                        result = Err(JobFailure::new(
                            FailureKind::Retryable,
                            format!("the job's artifacts could not be stored: {why}"),
                        ));
                    }
                }
            } else {
                artifacts.discard();
            }
        }
        let ended = self
            .inner
            .store
            .update(job.id, move |job| {
                if job.status != JobStatus::Running {
                    return Err(StoreError::Conflict(format!(
                        "job is {}",
                        job.status.as_str()
                    )));
                }
                // `usage` is already in the record: each paid call was added when it was
                // journaled, each replayed one with its `replayed` event.
                Ok(match result {
                    Ok(value) => {
                        job.status = JobStatus::Completed;
                        job.progress = 100;
                        job.finished_at_ms = Some(now_ms());
                        job.error = None;
                        job.artifacts = published;
                        let text = value.to_string();
                        Change {
                            events: vec![NewEvent::new(
                                event_names::COMPLETED,
                                json!({ "result": value }),
                            )],
                            result: Some(text),
                            clear_result: false,
                        }
                    }
                    Err(failure) if interrupted => {
                        tracing::info!(kind = %failure.kind, "attempt interrupted by shutdown");
                        interrupt(job, "the server shut down during attempt")
                    }
                    Err(failure) if failure.kind == FailureKind::Cancelled => {
                        job.status = JobStatus::Cancelled;
                        job.finished_at_ms = Some(now_ms());
                        Change::events(vec![cancelled_event()])
                    }
                    Err(failure) => fail_or_retry(job, failure, &settings),
                })
            })
            .await;
        match ended {
            Ok(job) => {
                self.record_end(&job, run_ms);
                self.inner.metrics.attempt_finished(
                    (&job.queue, &job.job_type),
                    outcome_of(&job, interrupted),
                    run_ms,
                    usage.replayed_calls,
                    now_ms(),
                );
                tracing::info!(
                    status = job.status.as_str(),
                    attempt = job.attempt,
                    "attempt ended"
                );
                if job.status == JobStatus::Queued && !self.inner.stopping.is_cancelled() {
                    self.enqueue(&job);
                }
            }
            Err(error) => tracing::error!(%error, "could not record the end of the attempt"),
        }
    }

    fn record_start(&self, queue: &str, queue_ms: u64) {
        self.with_queue(queue, |q| {
            q.stats.started += 1;
            q.stats.queue_ms += queue_ms;
        });
        self.inner
            .metrics
            .attempt_started(queue, queue_ms, now_ms());
    }

    fn record_end(&self, job: &JobRecord, run_ms: u64) {
        self.with_queue(&job.queue, |q| {
            q.stats.finished += 1;
            q.stats.run_ms += run_ms;
            match job.status {
                JobStatus::Completed => q.stats.completed += 1,
                JobStatus::Failed => q.stats.failed += 1,
                _ => {}
            }
        });
    }
}

/// How the attempt that left `job` in its state ended, for the metrics.
fn outcome_of(job: &JobRecord, interrupted: bool) -> crate::monitor::Outcome {
    use crate::monitor::Outcome;
    match job.status {
        JobStatus::Completed => Outcome::Completed,
        JobStatus::Failed => Outcome::Failed,
        JobStatus::Cancelled => Outcome::Cancelled,
        _ if interrupted => Outcome::Interrupted,
        _ => Outcome::Retried,
    }
}

/// A failed attempt: another one after a backoff if the failure is retryable and attempts
/// remain, else the job fails.
fn fail_or_retry(
    job: &mut JobRecord,
    failure: JobFailure,
    settings: &super::ServiceSettings,
) -> Change {
    let error = ErrorInfo {
        kind: failure.kind.as_str().into(),
        message: failure.message,
    };
    if failure.kind.is_retryable() {
        retry_or_fail(job, error, settings.backoff(job.attempt + 1))
    } else {
        fail(job, error)
    }
}

/// Turns a running plugin's events into the job's log. Emitting never waits for the
/// commit (the plugin must not stall on disk), but order with the job's later changes is
/// kept because every change goes through the one writer.
struct JobSink {
    store: Arc<Store>,
    id: Uuid,
}

impl EventSink for JobSink {
    fn emit(&self, event: PluginEvent) {
        self.store.update_detached(self.id, move |job| {
            if job.status != JobStatus::Running {
                return Err(StoreError::Conflict("the attempt is over".into()));
            }
            let event = match event {
                PluginEvent::Progress { percent, message } => {
                    job.progress = percent.max(job.progress);
                    job.message = Some(message.clone());
                    NewEvent::new(
                        event_names::PROGRESS,
                        json!({ "progress": job.progress, "message": message }),
                    )
                }
                PluginEvent::Partial { name, data } => {
                    NewEvent::new(event_names::PARTIAL, json!({ "name": name, "data": data }))
                }
                PluginEvent::Token { label, delta } => NewEvent::new(
                    event_names::TOKEN,
                    json!({ "label": label, "delta": delta }),
                ),
                PluginEvent::TokenReset { label } => NewEvent::new(
                    event_names::TOKEN,
                    json!({ "label": label, "delta": "", "reset": true }),
                ),
                PluginEvent::Replayed { index, label } => {
                    // Counted with its event, so the count matches the log after a crash.
                    job.usage.replayed_calls += 1;
                    NewEvent::new(
                        event_names::REPLAYED,
                        json!({ "index": index, "label": label }),
                    )
                }
            };
            Ok(Change::events(vec![event]))
        });
    }
}

/// A job's LLM call journal in the store.
struct StoreJournal {
    store: Arc<Store>,
    id: Uuid,
}

impl CallJournal for StoreJournal {
    fn recorded(&self) -> Vec<(u64, JournalEntry)> {
        match self.store.journal(self.id) {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|(index, bytes)| Some((index, serde_json::from_slice(&bytes).ok()?)))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "could not read the LLM call journal; no call will be replayed");
                Vec::new()
            }
        }
    }

    fn record(&self, index: u64, entry: JournalEntry) -> BoxFuture<'_, Result<(), String>> {
        async move {
            let response = &entry.response;
            let cost = Usage::of_call(
                response.input_tokens,
                response.output_tokens,
                response.cached_input_tokens,
                response.reasoning_tokens,
            );
            let bytes = serde_json::to_vec(&entry).map_err(|e| e.to_string())?;
            self.store
                .journal_call(self.id, index, bytes, cost)
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }
}
