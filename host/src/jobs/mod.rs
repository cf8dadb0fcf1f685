//! The scheduler and the operations clients call: submit, cancel, retry, wait.
//!
//! Every state change is a [`Store::update`] mutation that checks the job's current state
//! inside the write transaction, so racing changes (a cancel against a completion) are
//! settled by the store, and each is durable before it is acknowledged. The mutations are
//! the transitions of [`lifecycle`], the job state machine. The in-memory
//! [`queues`] only decide what runs next; they are rebuilt from the store at start.

mod batches;
mod cluster;
mod events;
mod files;
mod lifecycle;
mod nodes;
mod ops;
mod queues;
mod runner;
mod schedules;
mod settings;
mod webhooks;

pub use batches::BatchRequest;
pub use cluster::LEASE_MS;
pub use events::{BatchEvents, FeedFilter, FeedRefusal, JobEvents, event_names};
pub use files::{FILE_FORMAT, file_refs};
pub use nodes::{HEARTBEAT, NodeInfo, NodeStatus, UNRESPONSIVE_AFTER_MS};
pub use ops::{
    BulkFilter, DoctorReport, FailureGroup, MAX_BULK, PluginSummary, ProviderHealth, StuckJob,
};
pub use queues::QueueStats;
pub use schedules::{ScheduleSpec, Ticks, next_run_ms};
pub use settings::ServiceSettings;
pub use webhooks::{JobRenderer, WebhookSettings, check_url, decode_secret, signature};
// The records the API shows, as the store keeps them.
pub use crate::store::{
    ArtifactRecord, BatchPage, BatchRecord, ByteStream, CatchUp, DependencyFailure, ErrorInfo,
    FileRecord, JobEvent, JobRecord, JobStatus, ListQuery, Page, ScheduleRecord, ScheduledBy,
    StatusCounts, WebhookRecord, batch_event_names, now_ms, rfc3339,
};

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::llm::LlmClient;
use crate::runtime::{PluginRegistry, Runtime, SchemaViolation};
use crate::store::{Change, Inserted, NewEvent, Store, StoreError};
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
    /// Who the job runs for (e.g. the app's end user): the queue shares its slots fairly
    /// between keys, within `max_per_key`.
    pub concurrency_key: Option<String>,
    /// Where to POST the job's end (else its tenant's default, if any).
    pub webhook_url: Option<String>,
    /// Jobs (of the same tenant) that must complete before this one runs.
    pub depends_on: Vec<Uuid>,
    /// What the job does when a dependency fails or is cancelled (default: it fails).
    pub on_dependency_failure: Option<DependencyFailure>,
    /// The schedule and tick (ms) submitting it.
    pub schedule: Option<(String, u64)>,
}

/// Longest `concurrency_key`, bytes.
const MAX_KEY_BYTES: usize = 255;

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
    /// No such batch (or all its jobs expired).
    #[error("no batch with id {0}")]
    BatchNotFound(Uuid),
    /// No such schedule.
    #[error("no schedule named '{0}'")]
    ScheduleNotFound(String),
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
    /// The database cannot be reached; nothing was saved. Worth retrying shortly.
    #[error("the job store is unavailable, nothing was saved; retry shortly ({0})")]
    StorageUnavailable(String),
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
            StoreError::Unavailable(message) => ServiceError::StorageUnavailable(message),
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
    /// The attempt's lease, once it started.
    lease: OnceLock<crate::store::Lease>,
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
    /// When this node's service was made, ms since the epoch.
    started_at_ms: u64,
    /// With a shared store: each queue's cluster-wide counts as last read.
    cluster_counts: Mutex<std::collections::HashMap<String, crate::store::QueueCount>>,
    /// With a shared store: until when this node holds the leader's lease.
    leader_until: Mutex<Option<std::time::Instant>>,
    /// The webhook sender.
    webhooks: webhooks::Outbox,
    /// A schedule was made: the schedule loop reads them again.
    schedules_changed: Notify,
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
    /// A service over `store`, running job types in `runtime` with `llm`, recording on
    /// `metrics` (the ones `llm`'s providers report to). It has no job types and runs
    /// nothing until [`JobService::start`].
    pub fn new(
        store: Arc<Store>,
        runtime: Arc<Runtime>,
        llm: Arc<dyn LlmClient>,
        settings: ServiceSettings,
        metrics: Arc<crate::monitor::Metrics>,
    ) -> Self {
        // The end of a job releases the jobs that wait for it, in the same commit.
        store.set_release_rule(lifecycle::release);
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
                started_at_ms: now_ms(),
                cluster_counts: Mutex::default(),
                leader_until: Mutex::new(None),
                webhooks: webhooks::Outbox::default(),
                schedules_changed: Notify::new(),
            }),
        }
    }

    /// A completed job's result (`None` for any other job, or a result that is not JSON).
    pub async fn result_of(&self, job: &JobRecord) -> Result<Option<Value>, ServiceError> {
        if job.status != JobStatus::Completed {
            return Ok(None);
        }
        let text = self.inner.store.result(job.id).await?;
        Ok(text.and_then(|text| serde_json::from_str(&text).ok()))
    }

    /// How many jobs are stored, by type and status (for `/metrics`).
    pub async fn job_counts(&self) -> Result<Vec<(String, JobStatus, u64)>, ServiceError> {
        Ok(self.inner.store.count_by_type_and_status().await?)
    }

    /// An upload's bytes (the caller checked that it may see the upload).
    pub async fn file_bytes(&self, record: &FileRecord) -> Result<ByteStream, ServiceError> {
        Ok(self.inner.store.file_bytes(record).await?)
    }

    /// A completed job's artifact (the caller checked that it may see the job).
    pub async fn artifact_bytes(
        &self,
        job: Uuid,
        artifact: &ArtifactRecord,
    ) -> Result<ByteStream, ServiceError> {
        Ok(self.inner.store.artifact_bytes(job, artifact).await?)
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
        self.sync_config_schedules().await?;
        if self.inner.store.is_shared()
            && let Err(error) = self.inner.store.record_node(&self.this_node(false)).await
        {
            // The heartbeat loop tries again; until then the others see this node as it
            // was last recorded.
            tracing::warn!(%error, "could not write this node's first heartbeat");
        }
        let mut tasks = self.inner.tasks.lock().expect("tasks lock");
        if self.inner.store.is_shared() {
            tasks.spawn(self.clone().claim_loop());
            tasks.spawn(self.clone().leader_loop());
            tasks.spawn(self.clone().remote_changes_loop());
            tasks.spawn(self.clone().fence_loop());
        } else {
            tasks.spawn(self.clone().dispatch_loop());
        }
        if let Some(released) = self.inner.store.bus.take_released() {
            tasks.spawn(self.clone().released_loop(released));
        }
        tasks.spawn(self.clone().sweep_loop());
        tasks.spawn(self.clone().webhook_loop());
        tasks.spawn(self.clone().schedule_loop());
        tasks.spawn(self.clone().heartbeat_loop());
        self.inner.started.send_replace(true);
        Ok(report)
    }

    /// Submits a job: validates it, stores it durably, queues it.
    pub async fn submit(&self, request: SubmitRequest) -> Result<(JobRecord, bool), ServiceError> {
        if self.inner.stopping.is_cancelled() {
            return Err(ServiceError::ShuttingDown);
        }
        let (job, payload) = self.prepare_job(request).await?;
        self.check_room(1).await?;
        let event = lifecycle::status_event(&job);
        if self.reserve_slot(&job) {
            return self.submit_and_start(job, payload, event).await;
        }
        match self.inner.store.insert(job, payload, event).await? {
            Inserted::Created(job) => {
                // A job with dependencies is queued by the end of its last one (which may
                // have come before it: then the insert queued it).
                if job.status == JobStatus::Queued {
                    self.enqueue(&job);
                }
                Ok((job, true))
            }
            Inserted::Existing(job) => Ok((job, false)),
        }
    }

    /// Checks a submit (known type, payload matching its schema, options in range, files
    /// it names readable by the tenant) and builds the job's record and payload text.
    pub(super) async fn prepare_job(
        &self,
        request: SubmitRequest,
    ) -> Result<(JobRecord, String), ServiceError> {
        let settings = &self.inner.settings;
        let plugin = self
            .check_job_definition(&request.job_type, &request.payload)?
            .clone();
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
        if let Some(key) = &request.idempotency_key
            && (key.is_empty() || key.len() > 255)
        {
            return Err(bad_request(
                "invalid_request",
                "Idempotency-Key must be 1 to 255 characters",
            ));
        }

        if let Some(key) = &request.concurrency_key
            && (key.is_empty() || key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control))
        {
            return Err(bad_request(
                "invalid_request",
                format!(
                    "concurrency_key must be 1 to {MAX_KEY_BYTES} bytes with no control \
                     characters"
                ),
            ));
        }

        let webhook = self.webhook_for(request.webhook_url, request.tenant.as_deref())?;
        let depends_on = self
            .check_dependencies(request.depends_on, request.tenant.as_deref())
            .await?;
        if request.on_dependency_failure.is_some() && depends_on.is_empty() {
            return Err(bad_request(
                "invalid_request",
                "on_dependency_failure needs depends_on",
            ));
        }

        let job = JobRecord {
            id: Uuid::now_v7(),
            queue: settings.queue_of(&request.job_type),
            job_type: request.job_type,
            status: if depends_on.is_empty() {
                JobStatus::Queued
            } else {
                JobStatus::Waiting
            },
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
            node: None,
            cancel_requested: false,
            batch: None,
            concurrency_key: request.concurrency_key,
            webhook,
            waiting_for: depends_on.clone(),
            depends_on,
            on_dependency_failure: request.on_dependency_failure.unwrap_or_default(),
            dependants: Vec::new(),
            schedule: request
                .schedule
                .map(|(name, tick_ms)| ScheduledBy { name, tick_ms }),
        };
        if plugin.reads_files() {
            self.check_payload_files(
                &plugin.info.payload_schema,
                &request.payload,
                job.tenant.as_deref(),
            )
            .await?;
        }
        Ok((job, request.payload.to_string()))
    }

    /// Checks that `job_type` is loaded and `payload` matches its schema; returns the
    /// type's plugin.
    pub(super) fn check_job_definition(
        &self,
        job_type: &str,
        payload: &Value,
    ) -> Result<&Arc<crate::runtime::Plugin>, ServiceError> {
        let plugin = self.inner.plugins.get(job_type).ok_or_else(|| {
            bad_request(
                "unknown_type",
                format!(
                    "unknown job type '{job_type}'; known types: {}",
                    self.inner.plugins.names().join(", ")
                ),
            )
        })?;
        if let Err(violations) = plugin.validate_payload(payload) {
            let listed: Vec<String> = violations.iter().map(ToString::to_string).collect();
            return Err(ServiceError::BadRequest {
                kind: "invalid_payload",
                message: format!(
                    "the payload does not match the '{job_type}' schema: {}",
                    listed.join("; ")
                ),
                violations,
            });
        }
        Ok(plugin)
    }

    /// Checks a submit's `depends_on`: at most `max_dependencies` jobs, each existing and
    /// the tenant's (a foreign job is reported as missing, as `GET` would). Repeats are
    /// dropped. That the ids exist already makes a cycle impossible.
    async fn check_dependencies(
        &self,
        ids: Vec<Uuid>,
        tenant: Option<&str>,
    ) -> Result<Vec<Uuid>, ServiceError> {
        let max = self.inner.settings.max_dependencies;
        if ids.len() > max {
            return Err(bad_request(
                "invalid_request",
                format!(
                    "depends_on lists {} jobs; at most {max} (max_dependencies)",
                    ids.len()
                ),
            ));
        }
        let mut unique = Vec::with_capacity(ids.len());
        for (index, id) in ids.into_iter().enumerate() {
            if unique.contains(&id) {
                continue;
            }
            let visible = self
                .inner
                .store
                .get(id)
                .await?
                .is_some_and(|job| tenant.is_none() || job.tenant.as_deref() == tenant);
            if !visible {
                return Err(bad_request(
                    "invalid_request",
                    format!("depends_on[{index}]: no job with id {id}"),
                ));
            }
            unique.push(id);
        }
        Ok(unique)
    }

    /// Refuses `adding` more queued jobs when the queues already hold `max_queued`.
    pub(super) async fn check_room(&self, adding: usize) -> Result<(), ServiceError> {
        // With a shared store, the cluster's count: exact for submits one after another;
        // submits racing on several nodes may pass it by as many as race.
        let depth = match self.inner.store.queued_total().await? {
            Some(total) => usize::try_from(total).unwrap_or(usize::MAX),
            None => self.inner.queues.lock().expect("queues lock").total_depth(),
        };
        if depth.saturating_add(adding) > self.inner.settings.max_queued {
            return Err(ServiceError::QueueFull(depth));
        }
        Ok(())
    }

    /// Takes a slot of `job`'s queue for it if one is free and no job is due ahead of it.
    /// (With a shared store, slots are the cluster's: the claim takes them.)
    fn reserve_slot(&self, job: &JobRecord) -> bool {
        let now = now_ms();
        if self.inner.stopping.is_cancelled()
            || job.status != JobStatus::Queued
            || job.run_at_ms.is_some_and(|at| at > now)
            || self.inner.store.is_shared()
        {
            return false;
        }
        let limits = self.inner.settings.queue_limits(&job.queue);
        let mut queues = self.inner.queues.lock().expect("queues lock");
        queues
            .queue(limits)
            .try_reserve(job.id, &queues::key_of(job), now)
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
    pub async fn get(&self, id: Uuid) -> Result<JobRecord, ServiceError> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or(ServiceError::NotFound(id))
    }

    /// A page of jobs, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, ServiceError> {
        Ok(self.inner.store.list(query).await?)
    }

    /// Cancels a job. A queued job never starts; a running one is stopped (even inside a
    /// CPU loop) and this waits up to `wait` for it to end `cancelled`.
    pub async fn cancel(&self, id: Uuid, wait: Duration) -> Result<JobRecord, ServiceError> {
        // Followed before the cancel is committed, so the ending cannot slip past.
        let follow = self.follow_job(id, None).await?;
        let result = self
            .inner
            .store
            .update(id, |job| lifecycle::cancel(job, now_ms()))
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
            if let Some(running) = self.running_here(id) {
                running.cancel.cancel();
            }
            self.until_terminal(follow, wait).await;
        }
        self.get(id).await
    }

    /// The attempt of job `id` this node runs, if it runs one.
    fn running_here(&self, id: Uuid) -> Option<Arc<RunningJob>> {
        self.inner
            .running
            .lock()
            .expect("running lock")
            .get(&id)
            .cloned()
    }

    /// Runs a failed or cancelled job again: same id, next attempt, its event log goes on.
    /// A job with dependencies runs again only once they have all completed (or, for
    /// `on_dependency_failure: "run"`, ended): retry the failed one first.
    pub async fn retry(&self, id: Uuid) -> Result<JobRecord, ServiceError> {
        let job = self.get(id).await?;
        for dependency in &job.depends_on {
            let status = self.inner.store.get(*dependency).await?.map(|d| d.status);
            let ready = match (status, job.on_dependency_failure) {
                (Some(JobStatus::Completed), _) => true,
                (Some(status), DependencyFailure::Run) => status.is_terminal(),
                _ => false,
            };
            if !ready {
                let status = status.map_or("gone (expired)", JobStatus::as_str);
                return Err(ServiceError::Conflict(format!(
                    "dependency {dependency} is {status}; a job runs again only once its \
                     dependencies have completed"
                )));
            }
        }
        let result = self.inner.store.update(id, lifecycle::retry).await;
        let job = self.found(id, result)?;
        self.enqueue(&job);
        Ok(job)
    }

    /// Figures per queue: with a shared store, depth and running are the cluster's (read
    /// now, or as last read when the database does not answer) and the stats this node's.
    pub async fn queues(&self) -> Vec<QueueReport> {
        if self.inner.store.is_shared() {
            self.refresh_cluster_queues().await;
        }
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
        if self.inner.store.is_shared() {
            let counts = self.inner.cluster_counts.lock().expect("cluster lock");
            for report in &mut reports {
                let count = counts.get(&report.name).cloned().unwrap_or_default();
                report.depth = usize::try_from(count.queued).unwrap_or(usize::MAX);
                report.running = usize::try_from(count.running).unwrap_or(usize::MAX);
                report.oldest_ready_since_ms = count.oldest_due_ms;
            }
        }
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
        // Another node takes over at once instead of when the lease runs out.
        if self.inner.store.is_shared() {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.store.resign()).await;
        }
        self.announce_stop().await;
        while tasks.join_next().await.is_some() {}
        let _ = self.inner.store.flush().await;
    }

    /// Commits `mutate` (see [`Store::update`]), again and again while the database is
    /// unreachable: a running job's start or end must not be lost to a PostgreSQL restart.
    /// `mutate` runs on the current record each time.
    pub(super) async fn update_durably(
        &self,
        id: Uuid,
        mutate: impl Fn(&mut JobRecord) -> Result<Change, StoreError> + Send + Sync + 'static,
    ) -> Result<JobRecord, StoreError> {
        let mutate = Arc::new(mutate);
        let store = &self.inner.store;
        self.while_unavailable(|| {
            let mutate = mutate.clone();
            store.update(id, move |job| mutate(job))
        })
        .await
    }

    /// Runs `attempt` until it ends otherwise than with [`StoreError::Unavailable`],
    /// backing off up to 2 s between tries, or until the service stops.
    pub(super) async fn while_unavailable<T, F>(
        &self,
        mut attempt: impl FnMut() -> F,
    ) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(50);
        let mut warned = false;
        loop {
            match attempt().await {
                Err(StoreError::Unavailable(error)) if !self.inner.stopping.is_cancelled() => {
                    if !warned {
                        tracing::warn!(%error, "the job store is unreachable; retrying until it is back");
                        warned = true;
                    }
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                outcome => return outcome,
            }
        }
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

    /// Puts a queued job into its in-memory queue and wakes the dispatcher. (With a
    /// shared store the job is claimed from the store: this only wakes the claim loop.)
    fn enqueue(&self, job: &JobRecord) {
        if self.inner.store.is_shared() {
            self.inner.wake.notify_one();
            return;
        }
        let limits = self.inner.settings.queue_limits(&job.queue);
        self.inner.queues.lock().expect("queues lock").push(
            limits,
            queues::Waiting::of(job),
            now_ms(),
        );
        self.inner.wake.notify_one();
    }

    /// Queues the jobs the store released (their dependencies ended) as they come.
    async fn released_loop(self, mut released: tokio::sync::mpsc::UnboundedReceiver<JobRecord>) {
        loop {
            tokio::select! {
                job = released.recv() => match job {
                    Some(job) => self.enqueue(&job),
                    None => return,
                },
                () = self.inner.stopping.cancelled() => return,
            }
        }
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

    /// One sweep; returns how many jobs were deleted. Expiry is the leader's (see
    /// [`JobService::is_leader`]); every node removes its own copies of expired uploads.
    pub async fn sweep_once(&self) -> usize {
        if !self.is_leader() {
            self.sweep_files().await;
            return 0;
        }
        let ttl_ms = u64::try_from(self.inner.settings.job_ttl.as_millis()).unwrap_or(u64::MAX);
        let cutoff = now_ms().saturating_sub(ttl_ms);
        let mut deleted = 0;
        loop {
            let ids = match self.inner.store.finished_before(cutoff, 1000).await {
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
        self.sweep_files().await;
        self.forget_old_nodes().await;
        deleted
    }

    /// Jobs left `running` by a dead process get their next attempt, or fail when their
    /// attempts are spent; queued jobs go back into their queues.
    async fn recover(&self) -> Result<RecoveryReport, ServiceError> {
        if self.inner.store.is_shared() {
            return self.recover_shared().await;
        }
        let mut report = RecoveryReport::default();
        for id in self.inner.store.ids_with_status(JobStatus::Running).await? {
            let job = self
                .inner
                .store
                .update(id, |job| Ok(lifecycle::recover(job, now_ms())))
                .await?;
            if job.status == JobStatus::Queued {
                report.requeued += 1;
            } else {
                report.failed += 1;
            }
        }
        for id in self.inner.store.ids_with_status(JobStatus::Queued).await? {
            if let Some(job) = self.inner.store.get(id).await? {
                self.enqueue(&job);
                report.queued += 1;
            }
        }
        Ok(report)
    }
}

impl JobService {
    /// Recovery with a shared store: only the jobs this node's previous run left running
    /// (and those of a Kiln from before leases) are this node's to recover; other nodes'
    /// jobs are the leader's to rescue when their lease expires. Queued jobs stay in the
    /// store, to be claimed.
    async fn recover_shared(&self) -> Result<RecoveryReport, ServiceError> {
        let mut report = RecoveryReport::default();
        let me = self.inner.store.node_id();
        let running = self.inner.store.ids_with_status(JobStatus::Running).await?;
        for chunk in running.chunks(1000) {
            for job in self.inner.store.jobs(chunk).await? {
                if job.node.is_some_and(|node| node != me) {
                    continue;
                }
                let (attempt, node) = (job.attempt, job.node);
                let rescued = self
                    .inner
                    .store
                    .update(job.id, move |job| {
                        lifecycle::rescue(job, attempt, node, now_ms())
                    })
                    .await;
                match rescued {
                    Ok(job) if job.status == JobStatus::Queued => report.requeued += 1,
                    Ok(_) => report.failed += 1,
                    Err(StoreError::Conflict(_)) => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        let queued = self.inner.store.queued_total().await?.unwrap_or(0);
        report.queued = usize::try_from(queued).unwrap_or(usize::MAX);
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
