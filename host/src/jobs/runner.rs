//! One attempt of one job: start it in the store, run it in the sandbox with its events
//! flowing into the log, then record how it ended.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use uuid::Uuid;

use super::{JobService, RunningJob, lifecycle};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::files::{StagedArtifacts, StoreFiles};
use crate::llm::Usage;
use crate::runtime::{
    CallJournal, EventSink, FailureKind, JobFailure, JobInput, JournalEntry, PluginEvent,
    RunContext,
};
use crate::store::{JobRecord, JobStatus, Lease, Store, StoreError, now_ms};

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
            lease: std::sync::OnceLock::new(),
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
        let service = self.clone();
        async move {
            let node = service.inner.store.node_id();
            service
                .update_durably(id, move |job| lifecycle::start(job, now_ms(), node))
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
                Ok(job) => {
                    if let Some(lease) = job.lease() {
                        let _ = running.lease.set(lease);
                    }
                    Some(self.run(job, &running).await)
                }
                Err(StoreError::Conflict(_) | StoreError::NotFound) => None,
                Err(error) => {
                    tracing::error!(%error, "could not start the job");
                    None
                }
            };
            self.forget_running(id, &running);
            // The sandbox is done with it: the slot goes to the next job now, while the
            // outcome is committed, so a queue's throughput is not bounded by its
            // limit divided by two commit times. (For a moment the store may show the
            // next job running before this one's end: the limit is on running plugins.)
            self.release_slot(&queue, id);
            if let Some((job, outcome, artifacts)) = outcome {
                self.finish(job, outcome, artifacts, &running).await;
            }
        };
        attempt.instrument(span).await;
    }

    /// Drops `running` from the running attempts, unless a later attempt of the job (this
    /// node claimed it again after losing it) took its place.
    fn forget_running(&self, id: Uuid, running: &Arc<RunningJob>) {
        let mut attempts = self.inner.running.lock().expect("running lock");
        if attempts
            .get(&id)
            .is_some_and(|now| Arc::ptr_eq(now, running))
        {
            attempts.remove(&id);
        }
    }

    /// Gives job `id`'s slot of `queue` back and wakes the dispatcher.
    pub(super) fn release_slot(&self, queue: &str, id: Uuid) {
        self.with_queue(queue, |q| q.release(id));
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

        // An attempt that fails before its plugin runs.
        let not_run = |job, kind, message: String| {
            let outcome = crate::runtime::RunOutcome {
                result: Err(JobFailure::new(kind, message)),
                usage: Default::default(),
            };
            (job, outcome, None)
        };
        let Some(plugin) = self.inner.plugins.get(&job.job_type).cloned() else {
            let message = format!("no plugin for job type '{}' is loaded", job.job_type);
            return not_run(job, FailureKind::UnknownType, message);
        };
        let payload = match store.payload(id).await {
            Ok(Some(payload)) => payload,
            // Unreachable storage is worth another attempt; a missing payload is not.
            Err(StoreError::Unavailable(error)) => {
                let message = format!("the job's payload could not be read: {error}");
                return not_run(job, FailureKind::Retryable, message);
            }
            other => {
                let message = format!("the job's payload could not be read: {other:?}");
                return not_run(job, FailureKind::Internal, message);
            }
        };
        let limits = self.inner.settings.limits_of(&job.job_type);
        let timeout = limits.timeout(job.timeout_s, plugin.info.default_timeout_secs);
        let artifacts = Arc::new(StagedArtifacts::new(store.clone(), id, job.attempt));
        let context = RunContext {
            sink: Arc::new(JobSink {
                store: store.clone(),
                id,
                lease: job.lease(),
            }),
            llm: self.inner.llm.clone(),
            cancel: running.cancel.clone(),
            limits,
            timeout,
            files: if plugin.reads_files() {
                let payload = serde_json::from_str(&payload).unwrap_or_default();
                match StoreFiles::load(store, &plugin.info.payload_schema, &payload).await {
                    Ok(files) => Arc::new(files),
                    Err(error) => {
                        let message = format!("the job's files could not be read: {error}");
                        return not_run(job, FailureKind::Retryable, message);
                    }
                }
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
        let recorded = match store.journal(id).await {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|(index, bytes)| Some((index, serde_json::from_slice(&bytes).ok()?)))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, "could not read the LLM call journal; no call will be replayed");
                Vec::new()
            }
        };
        let journal = Arc::new(StoreJournal {
            service: self.clone(),
            id,
            lease: job.lease(),
            recorded,
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
                match self.while_unavailable(|| artifacts.publish()).await {
                    Ok(()) => published = artifacts.records(),
                    Err(error) => {
                        result = Err(JobFailure::new(
                            FailureKind::Retryable,
                            format!("the job's artifacts could not be stored: {error}"),
                        ));
                    }
                }
            } else {
                artifacts.discard();
            }
        }
        if let (Err(failure), true) = (&result, interrupted) {
            tracing::info!(kind = %failure.kind, "attempt interrupted by shutdown");
        }
        let lease = job.lease();
        let ended = self
            .update_durably(job.id, move |job| {
                let backoff = settings.backoff(job.attempt + 1);
                lifecycle::holding(job, lease, |job| {
                    lifecycle::end_attempt(job, &result, &published, interrupted, backoff, now_ms())
                })
            })
            .await;
        // The end freed the job's slot in a shared store: claim the next job.
        self.inner.wake.notify_one();
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
                if job.webhook_due_ms().is_some() {
                    self.inner.webhooks.wake.notify_one();
                }
            }
            Err(StoreError::Conflict(refusal)) if lease.is_some() => {
                tracing::warn!(%refusal, "the attempt's end was not recorded: the job moved on without it");
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

/// Turns a running plugin's events into the job's log. Emitting never waits for the
/// commit (the plugin must not stall on disk), but order with the job's later changes is
/// kept because every change goes through the one writer.
struct JobSink {
    store: Arc<Store>,
    id: Uuid,
    /// The attempt's lease: its events are dropped once it is lost.
    lease: Option<Lease>,
}

impl EventSink for JobSink {
    fn emit(&self, event: PluginEvent) {
        let lease = self.lease;
        self.store.update_detached(self.id, move |job| {
            lifecycle::holding(job, lease, |job| lifecycle::plugin_event(job, &event))
        });
    }
}

/// A job's LLM call journal in the store, with the calls recorded before this attempt
/// (read when it started).
struct StoreJournal {
    service: JobService,
    id: Uuid,
    /// The attempt's lease: a call is journaled only while it is held.
    lease: Option<Lease>,
    recorded: Vec<(u64, JournalEntry)>,
}

impl CallJournal for StoreJournal {
    fn recorded(&self) -> Vec<(u64, JournalEntry)> {
        self.recorded.clone()
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
            // The plugin waits for this (its answer is journaled before it sees it), so a
            // database restart delays the call instead of failing it.
            let store = &self.service.inner.store;
            self.service
                .while_unavailable(|| {
                    store.journal_call(self.id, index, bytes.clone(), cost, self.lease)
                })
                .await
                .map_err(|e| e.to_string())
        }
        .boxed()
    }
}
