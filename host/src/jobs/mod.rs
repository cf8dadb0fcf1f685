//! The scheduler and the operations clients call: submit, cancel, retry, wait.
//!
//! Every state change is a [`Store::update`] mutation that checks the job's current state
//! inside the write transaction, so racing changes (a cancel against a completion) are
//! settled by the store, and each is durable before it is acknowledged. The in-memory
//! [`queues`] only decide what runs next; they are rebuilt from the store at start.

mod files;
mod ops;
mod queues;
mod runner;
mod settings;

pub use files::{FILE_FORMAT, file_refs};
pub use ops::{
    BulkFilter, DoctorReport, FailureGroup, MAX_BULK, PluginSummary, ProviderHealth, StuckJob,
};
pub use queues::QueueStats;
pub use settings::ServiceSettings;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::llm::LlmClient;
use crate::runtime::{FailureKind, PluginRegistry, Runtime, SchemaViolation};
use crate::store::{
    Change, ErrorInfo, Inserted, JobRecord, JobStatus, ListQuery, NewEvent, Page, Store,
    StoreError, event_names, now_ms,
};
use queues::Queues;

/// What a client asks for when it submits a job.
#[derive(Clone, Debug, Default)]
pub struct SubmitRequest {
    /// Job type.
    pub job_type: String,
    /// Payload; checked against the type's schema.
    pub payload: Value,
    /// Higher runs first within the queue. Default 0, range -1000..=1000.
    pub priority: Option<i32>,
    /// Attempts before a retryable failure is final.
    pub max_attempts: Option<u32>,
    /// Per-attempt timeout, seconds, up to the type's maximum.
    pub timeout_s: Option<u64>,
    /// Not before this time (ms since the epoch).
    pub run_at_ms: Option<u64>,
    /// Same key, same job (within the tenant).
    pub idempotency_key: Option<String>,
    /// The tenant that will own the job.
    pub tenant: Option<String>,
}

/// Why a service call was refused.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is wrong; `kind` says how.
    #[error("{message}")]
    BadRequest {
        /// `unknown_type`, `invalid_payload`, `invalid_request`.
        kind: &'static str,
        /// What is wrong.
        message: String,
        /// Schema violations, for `invalid_payload`.
        violations: Vec<SchemaViolation>,
    },
    /// No such job.
    #[error("no job with id {0}")]
    NotFound(Uuid),
    /// Not allowed in the job's state.
    #[error("{0}")]
    Conflict(String),
    /// Too many jobs waiting.
    #[error("the queue is full ({0} jobs waiting); try again later")]
    QueueFull(usize),
    /// An upload larger than `max_file_bytes`.
    #[error("{0}")]
    TooLarge(String),
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The store failed.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for ServiceError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound => ServiceError::Internal("job vanished".into()),
            StoreError::Conflict(message) => ServiceError::Conflict(message),
            StoreError::Closed => ServiceError::ShuttingDown,
            StoreError::Storage(message) => ServiceError::Internal(message),
        }
    }
}

fn bad_request(kind: &'static str, message: impl Into<String>) -> ServiceError {
    ServiceError::BadRequest {
        kind,
        message: message.into(),
        violations: Vec::new(),
    }
}

/// One queue's figures for `GET /v1/queues`.
#[derive(Clone, Debug, Serialize)]
pub struct QueueReport {
    /// Queue name.
    pub name: String,
    /// Jobs waiting.
    pub depth: usize,
    /// Jobs running.
    pub running: usize,
    /// Max running at once.
    pub limit: usize,
    /// Figures since start.
    #[serde(skip)]
    pub stats: QueueStats,
    /// When the oldest ready job (queued and due) began waiting, ms since the epoch.
    pub oldest_ready_since_ms: Option<u64>,
}

/// A running attempt the service can stop.
struct RunningJob {
    cancel: CancellationToken,
    /// Set when the stop comes from shutdown rather than a client: the job is re-queued.
    interrupted: AtomicBool,
}

/// The job service. Cheap to clone; every clone is the same service.
#[derive(Clone)]
pub struct JobService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<Store>,
    runtime: Arc<Runtime>,
    plugins: LatePlugins,
    llm: Arc<dyn LlmClient>,
    settings: ServiceSettings,
    queues: Mutex<Queues>,
    running: Mutex<HashMap<Uuid, Arc<RunningJob>>>,
    wake: Notify,
    /// Stops new attempts from starting.
    stopping: CancellationToken,
    tasks: Mutex<JoinSet<()>>,
    /// What `/metrics` and `/v1/queues` report.
    metrics: Arc<crate::monitor::Metrics>,
    /// Becomes true when [`JobService::start`] has run.
    started: tokio::sync::watch::Sender<bool>,
}

/// The loaded job types, given once by [`JobService::start`]: the server answers HTTP while
/// plugins load, and until then the service has none.
#[derive(Default)]
struct LatePlugins(OnceLock<Arc<PluginRegistry>>);

static NO_PLUGINS: LazyLock<Arc<PluginRegistry>> = LazyLock::new(Default::default);

impl LatePlugins {
    fn registry(&self) -> &Arc<PluginRegistry> {
        self.0.get().unwrap_or(&NO_PLUGINS)
    }
}

impl std::ops::Deref for LatePlugins {
    type Target = PluginRegistry;

    fn deref(&self) -> &PluginRegistry {
        self.registry()
    }
}

impl JobService {
    /// A service over `store`, running job types in `runtime` with `llm`. It has no job
    /// types and runs nothing until [`JobService::start`].
    pub fn new(
        store: Arc<Store>,
        runtime: Arc<Runtime>,
        llm: Arc<dyn LlmClient>,
        settings: ServiceSettings,
    ) -> Self {
        let metrics = Arc::new(crate::monitor::Metrics::new());
        Self {
            inner: Arc::new(Inner {
                store,
                runtime,
                plugins: LatePlugins::default(),
                llm,
                settings,
                queues: Mutex::new(Queues::default()),
                running: Mutex::new(HashMap::new()),
                wake: Notify::new(),
                stopping: CancellationToken::new(),
                tasks: Mutex::new(JoinSet::new()),
                metrics,
                started: tokio::sync::watch::Sender::new(false),
            }),
        }
    }

    /// The store (for reads and SSE).
    pub fn store(&self) -> &Arc<Store> {
        &self.inner.store
    }

    /// The loaded job types (none before [`JobService::start`]).
    pub fn plugins(&self) -> &Arc<PluginRegistry> {
        self.inner.plugins.registry()
    }

    /// Whether [`JobService::start`] has run: plugins loaded, interrupted jobs recovered.
    pub fn is_started(&self) -> bool {
        *self.inner.started.borrow()
    }

    /// Waits up to `limit` for [`JobService::start`] to have run; returns whether it has.
    pub async fn wait_started(&self, limit: Duration) -> bool {
        // Every `/v1/` request asks: once started, answer without a subscription or a timer.
        if self.is_started() {
            return true;
        }
        let mut started = self.inner.started.subscribe();
        tokio::time::timeout(limit, started.wait_for(|started| *started))
            .await
            .is_ok()
    }

    /// The metrics of this service.
    pub fn metrics(&self) -> &Arc<crate::monitor::Metrics> {
        &self.inner.metrics
    }

    /// The settings.
    pub fn settings(&self) -> &ServiceSettings {
        &self.inner.settings
    }

    /// Recovers jobs a dead process left behind, rebuilds the queues, takes the loaded
    /// job types `plugins`, and starts the dispatcher and the expiry sweeper. Returns how
    /// many jobs were re-queued, failed and found waiting. Call it once.
    pub async fn start(
        &self,
        plugins: Arc<PluginRegistry>,
    ) -> Result<RecoveryReport, ServiceError> {
        let report = self.recover().await?;
        if self.inner.plugins.0.set(plugins).is_err() {
            return Err(ServiceError::Internal(
                "the job service started twice".into(),
            ));
        }
        let mut tasks = self.inner.tasks.lock().expect("tasks lock");
        tasks.spawn(self.clone().dispatch_loop());
        tasks.spawn(self.clone().sweep_loop());
        self.inner.started.send_replace(true);
        Ok(report)
    }

    /// Submits a job: validates it, stores it durably, queues it.
    pub async fn submit(&self, request: SubmitRequest) -> Result<(JobRecord, bool), ServiceError> {
        let settings = &self.inner.settings;
        if self.inner.stopping.is_cancelled() {
            return Err(ServiceError::ShuttingDown);
        }
        let plugin = self.inner.plugins.get(&request.job_type).ok_or_else(|| {
            bad_request(
                "unknown_type",
                format!(
                    "unknown job type '{}'; known types: {}",
                    request.job_type,
                    self.inner.plugins.names().join(", ")
                ),
            )
        })?;
        if let Err(violations) = plugin.validate_payload(&request.payload) {
            let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
            return Err(ServiceError::BadRequest {
                kind: "invalid_payload",
                message: format!(
                    "the payload does not match the '{}' schema: {}",
                    request.job_type,
                    listed.join("; ")
                ),
                violations,
            });
        }
        let priority = request.priority.unwrap_or(0);
        if !(-1000..=1000).contains(&priority) {
            return Err(bad_request(
                "invalid_request",
                "priority must be between -1000 and 1000",
            ));
        }
        let max_attempts = request
            .max_attempts
            .unwrap_or(settings.default_max_attempts);
        if max_attempts == 0 || max_attempts > settings.max_attempts_cap {
            return Err(bad_request(
                "invalid_request",
                format!(
                    "max_attempts must be between 1 and {}",
                    settings.max_attempts_cap
                ),
            ));
        }
        let limits = settings.limits_of(&request.job_type);
        if let Some(timeout) = request.timeout_s
            && (timeout == 0 || timeout > limits.max_timeout_secs)
        {
            return Err(bad_request(
                "invalid_request",
                format!(
                    "timeout_s must be between 1 and {} for '{}'",
                    limits.max_timeout_secs, request.job_type
                ),
            ));
        }
        let depth = self.inner.queues.lock().expect("queues lock").total_depth();
        if depth >= settings.max_queued {
            return Err(ServiceError::QueueFull(depth));
        }
        if let Some(key) = &request.idempotency_key
            && (key.is_empty() || key.len() > 255)
        {
            return Err(bad_request(
                "invalid_request",
                "Idempotency-Key must be 1 to 255 characters",
            ));
        }

        let job = JobRecord {
            id: Uuid::now_v7(),
            queue: settings.queue_of(&request.job_type),
            job_type: request.job_type,
            status: JobStatus::Queued,
            progress: 0,
            message: None,
            error: None,
            attempt: 1,
            max_attempts,
            priority,
            timeout_s: request.timeout_s,
            run_at_ms: request.run_at_ms,
            created_at_ms: now_ms(),
            started_at_ms: None,
            finished_at_ms: None,
            usage: Default::default(),
            last_seq: 0,
            idempotency_key: request
                .idempotency_key
                .map(|key| crate::store::idempotency_slot(request.tenant.as_deref(), &key)),
            tenant: request.tenant,
            artifacts: Vec::new(),
        };
        if plugin.reads_files() {
            self.check_payload_files(
                &plugin.info.payload_schema,
                &request.payload,
                job.tenant.as_deref(),
            )?;
        }
        let payload = request.payload.to_string();
        let event = status_event(&job);
        if self.reserve_slot(&job) {
            return self.submit_and_start(job, payload, event).await;
        }
        match self.inner.store.insert(job, payload, event).await? {
            Inserted::Created(job) => {
                self.enqueue(&job);
                Ok((job, true))
            }
            Inserted::Existing(job) => Ok((job, false)),
        }
    }

    /// Takes a slot of `job`'s queue for it if one is free and no job is due ahead of it.
    fn reserve_slot(&self, job: &JobRecord) -> bool {
        let now = now_ms();
        if self.inner.stopping.is_cancelled() || job.run_at_ms.is_some_and(|at| at > now) {
            return false;
        }
        let limit = self.inner.settings.limit_of(&job.queue);
        let mut queues = self.inner.queues.lock().expect("queues lock");
        let queue = queues.queue(&job.queue, limit);
        if queue.running < queue.limit && !queue.has_due(now) {
            queue.running += 1;
            true
        } else {
            false
        }
    }

    /// The fast path of a submit that got a slot: the insert and the start go to the
    /// writer together, so they usually share one group commit and the job starts one
    /// commit after it was sent instead of two. The answer already says `running`.
    async fn submit_and_start(
        &self,
        job: JobRecord,
        payload: String,
        event: NewEvent,
    ) -> Result<(JobRecord, bool), ServiceError> {
        let (id, queue) = (job.id, job.queue.clone());
        let running = self.register_running(id);
        // `join!` polls the insert first, so its op is queued before the start's.
        let (inserted, started) = futures::join!(
            self.inner.store.insert(job, payload, event),
            self.start_attempt(id)
        );
        let answer = started.as_ref().ok().cloned();
        // Whatever happened, the attempt task frees the slot (and runs the job if it
        // started: a replayed Idempotency-Key inserted nothing, so nothing started).
        tokio::spawn(self.clone().run_started(queue, id, running, started));
        match inserted? {
            Inserted::Created(created) => Ok((answer.unwrap_or(created), true)),
            Inserted::Existing(existing) => Ok((existing, false)),
        }
    }

    /// One job.
    pub fn get(&self, id: Uuid) -> Result<JobRecord, ServiceError> {
        self.inner.store.get(id)?.ok_or(ServiceError::NotFound(id))
    }

    /// A page of jobs, newest first.
    pub fn list(&self, query: &ListQuery) -> Result<Page, ServiceError> {
        Ok(self.inner.store.list(query)?)
    }

    /// Cancels a job. A queued job never starts; a running one is stopped (even inside a
    /// CPU loop) and this waits up to `wait` for it to end `cancelled`.
    pub async fn cancel(&self, id: Uuid, wait: Duration) -> Result<JobRecord, ServiceError> {
        let live = self.inner.store.bus.subscribe_job(id);
        let result = self
            .inner
            .store
            .update(id, |job| match job.status {
                JobStatus::Queued => {
                    job.status = JobStatus::Cancelled;
                    job.finished_at_ms = Some(now_ms());
                    Ok(Change::events(vec![cancelled_event()]))
                }
                JobStatus::Running => Ok(Change::default()),
                status => Err(StoreError::Conflict(format!(
                    "the job is {}; only queued or running jobs can be cancelled",
                    status.as_str()
                ))),
            })
            .await;
        let job = self.found(id, result)?;
        if job.status == JobStatus::Cancelled {
            // It was waiting: take it out of its queue so it stops counting as depth.
            self.inner
                .queues
                .lock()
                .expect("queues lock")
                .remove(&job.queue, id);
        }
        if job.status == JobStatus::Running {
            let running = self
                .inner
                .running
                .lock()
                .expect("running lock")
                .get(&id)
                .cloned();
            if let Some(running) = running {
                running.cancel.cancel();
            }
            self.await_terminal(id, live, wait).await;
        } else {
            self.await_terminal(id, live, Duration::ZERO).await;
        }
        self.get(id)
    }

    /// Runs a failed or cancelled job again: same id, next attempt, its event log goes on.
    pub async fn retry(&self, id: Uuid) -> Result<JobRecord, ServiceError> {
        let result = self
            .inner
            .store
            .update(id, |job| match job.status {
                JobStatus::Failed | JobStatus::Cancelled => {
                    job.status = JobStatus::Queued;
                    job.attempt += 1;
                    job.max_attempts = job.max_attempts.max(job.attempt);
                    job.progress = 0;
                    job.message = None;
                    job.error = None;
                    job.run_at_ms = None;
                    job.started_at_ms = None;
                    job.finished_at_ms = None;
                    Ok(Change {
                        events: vec![status_event(job)],
                        clear_result: true,
                        ..Change::default()
                    })
                }
                status => Err(StoreError::Conflict(format!(
                    "the job is {}; only failed or cancelled jobs can be retried",
                    status.as_str()
                ))),
            })
            .await;
        let job = self.found(id, result)?;
        self.enqueue(&job);
        Ok(job)
    }

    /// Waits up to `wait` for the job to end; returns it as it is then.
    pub async fn wait_for_end(&self, id: Uuid, wait: Duration) -> Result<JobRecord, ServiceError> {
        let live = self.inner.store.bus.subscribe_job(id);
        let job = self.get(id)?;
        let wait = if job.status.is_terminal() {
            Duration::ZERO
        } else {
            wait
        };
        self.await_terminal(id, live, wait).await;
        self.get(id)
    }

    /// Waits up to `wait` for a terminal event of job `id` on `live` (subscribed before
    /// the job's state was read, so the event cannot slip past), then lets the bus forget
    /// the subscription.
    async fn await_terminal(
        &self,
        id: Uuid,
        mut live: tokio::sync::broadcast::Receiver<Arc<crate::store::JobEvent>>,
        wait: Duration,
    ) {
        if !wait.is_zero() {
            let _ = tokio::time::timeout(wait, async {
                while let Ok(event) = live.recv().await {
                    if event_names::is_terminal(&event.name) {
                        break;
                    }
                }
            })
            .await;
        }
        drop(live);
        self.inner.store.bus.release_job(id);
    }

    /// Figures per queue.
    pub fn queues(&self) -> Vec<QueueReport> {
        let queues = self.inner.queues.lock().expect("queues lock");
        let mut reports: Vec<QueueReport> = queues
            .iter()
            .map(|(name, queue)| QueueReport {
                name: name.clone(),
                depth: queue.depth(),
                running: queue.running,
                limit: queue.limit,
                stats: queue.stats,
                oldest_ready_since_ms: queue.oldest_ready_since(),
            })
            .collect();
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    }

    /// Stops starting attempts, gives running ones `grace` to finish, then stops the
    /// rest and re-queues them (they resume after the restart).
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.stopping.cancel();
        self.inner.wake.notify_one();
        let deadline = tokio::time::Instant::now() + grace;
        while !self.inner.running.lock().expect("running lock").is_empty()
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left: Vec<Arc<RunningJob>> = self
            .inner
            .running
            .lock()
            .expect("running lock")
            .values()
            .cloned()
            .collect();
        for running in &left {
            running.interrupted.store(true, Ordering::SeqCst);
            running.cancel.cancel();
        }
        // Interrupted attempts end within an epoch tick; give their re-queue a moment.
        let settle = tokio::time::Instant::now() + Duration::from_secs(5);
        while !self.inner.running.lock().expect("running lock").is_empty()
            && tokio::time::Instant::now() < settle
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut tasks = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks lock"));
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let _ = self.inner.store.flush().await;
    }

    fn found(
        &self,
        id: Uuid,
        result: Result<JobRecord, StoreError>,
    ) -> Result<JobRecord, ServiceError> {
        match result {
            Err(StoreError::NotFound) => Err(ServiceError::NotFound(id)),
            other => Ok(other?),
        }
    }

    /// Puts a queued job into its in-memory queue and wakes the dispatcher.
    fn enqueue(&self, job: &JobRecord) {
        let limit = self.inner.settings.limit_of(&job.queue);
        self.inner.queues.lock().expect("queues lock").push(
            (&job.queue, limit),
            job.id,
            job.priority,
            job.run_at_ms,
            now_ms(),
        );
        self.inner.wake.notify_one();
    }

    /// Starts whatever may start, then sleeps until a job is queued, a slot frees up or
    /// the next delayed job is due.
    async fn dispatch_loop(self) {
        loop {
            if self.inner.stopping.is_cancelled() {
                return;
            }
            let (startable, next_wake) = self
                .inner
                .queues
                .lock()
                .expect("queues lock")
                .take_startable(now_ms());
            for (queue, id) in startable {
                let service = self.clone();
                tokio::spawn(async move { service.run_attempt(queue, id).await });
            }
            let sleep = next_wake.map_or(Duration::from_secs(3600), |at| {
                Duration::from_millis(at.saturating_sub(now_ms()))
            });
            tokio::select! {
                () = self.inner.wake.notified() => {}
                () = tokio::time::sleep(sleep) => {}
                () = self.inner.stopping.cancelled() => return,
            }
        }
    }

    /// Deletes finished jobs older than the TTL, with their events.
    async fn sweep_loop(self) {
        loop {
            self.sweep_once().await;
            tokio::select! {
                () = tokio::time::sleep(self.inner.settings.sweep_interval) => {}
                () = self.inner.stopping.cancelled() => return,
            }
        }
    }

    /// One sweep; returns how many jobs were deleted.
    pub async fn sweep_once(&self) -> usize {
        let ttl_ms = u64::try_from(self.inner.settings.job_ttl.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms().saturating_sub(ttl_ms);
        let mut deleted = 0;
        loop {
            let ids = match self.inner.store.finished_before(cutoff, 1000) {
                Ok(ids) if !ids.is_empty() => ids,
                Ok(_) => break,
                Err(error) => {
                    tracing::warn!(%error, "expiry sweep could not read");
                    break;
                }
            };
            match self.inner.store.delete(ids.clone()).await {
                Ok(0) => break,
                Ok(n) => {
                    deleted += n;
                    for id in ids {
                        self.inner.store.blobs.remove_job(id);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "expiry sweep could not delete");
                    break;
                }
            }
        }
        if deleted > 0 {
            tracing::info!(deleted, "expired finished jobs");
        }
        self.sweep_files();
        deleted
    }

    /// Jobs left `running` by a dead process get their next attempt, or fail when their
    /// attempts are spent; queued jobs go back into their queues.
    async fn recover(&self) -> Result<RecoveryReport, ServiceError> {
        let mut report = RecoveryReport::default();
        for id in self.inner.store.ids_with_status(JobStatus::Running)? {
            let job = self
                .inner
                .store
                .update(id, |job| {
                    Ok(interrupt(job, "the server stopped during attempt"))
                })
                .await?;
            if job.status == JobStatus::Queued {
                report.requeued += 1;
            } else {
                report.failed += 1;
            }
        }
        for id in self.inner.store.ids_with_status(JobStatus::Queued)? {
            if let Some(job) = self.inner.store.get(id)? {
                self.enqueue(&job);
                report.queued += 1;
            }
        }
        Ok(report)
    }
}

/// What recovery found at start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Interrupted jobs given another attempt.
    pub requeued: usize,
    /// Interrupted jobs whose attempts were spent.
    pub failed: usize,
    /// Jobs waiting in queues (including the re-queued).
    pub queued: usize,
}

/// An interrupted attempt (the server died or shut down during it): the next attempt is
/// queued at once, or the job fails when its attempts are spent.
fn interrupt(job: &mut JobRecord, why: &str) -> Change {
    let error = ErrorInfo {
        kind: FailureKind::Interrupted.as_str().into(),
        message: format!("{why} {}", job.attempt),
    };
    retry_or_fail(job, error, Duration::ZERO)
}

/// Queues the job's next attempt `delay` from now while attempts remain, else fails it.
/// `error` says why this attempt ended either way.
fn retry_or_fail(job: &mut JobRecord, error: ErrorInfo, delay: Duration) -> Change {
    if job.attempt >= job.max_attempts {
        return fail(job, error);
    }
    job.status = JobStatus::Queued;
    job.attempt += 1;
    job.progress = 0;
    job.message = None;
    job.run_at_ms = (!delay.is_zero())
        .then(|| now_ms().saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)));
    job.error = Some(error);
    Change::events(vec![status_event(job)])
}

/// Ends the job as failed with `error`.
fn fail(job: &mut JobRecord, error: ErrorInfo) -> Change {
    job.status = JobStatus::Failed;
    job.finished_at_ms = Some(now_ms());
    job.error = Some(error.clone());
    Change::events(vec![failed_event(&error)])
}

/// The `status` event of a job's current state.
fn status_event(job: &JobRecord) -> NewEvent {
    let mut data = json!({ "status": job.status.as_str(), "attempt": job.attempt });
    if let Some(at) = job.run_at_ms {
        data["run_at"] = json!(crate::store::rfc3339(at));
    }
    if let Some(error) = &job.error {
        data["error"] = json!(error);
    }
    NewEvent::new(event_names::STATUS, data)
}

fn failed_event(error: &ErrorInfo) -> NewEvent {
    NewEvent::new(event_names::FAILED, json!({ "error": error }))
}

fn cancelled_event() -> NewEvent {
    NewEvent::new(event_names::CANCELLED, json!({ "status": "cancelled" }))
}
