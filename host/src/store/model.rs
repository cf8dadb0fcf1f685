//! The records the store keeps: jobs and their events.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::llm::Usage;

/// Where a job is in its life. `queued -> running -> completed | failed | cancelled`; a job
/// waiting out a retry backoff is `queued` with a later `run_at`, and a job submitted with
/// `depends_on` is `waiting` until its dependencies end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for other jobs to end (its `depends_on`): in no queue, holding no slot.
    Waiting,
    /// Waiting for its `run_at` and a free slot in its queue.
    Queued,
    /// An attempt is running.
    Running,
    /// Finished with a result.
    Completed,
    /// Finished without one, attempts spent or the failure final.
    Failed,
    /// Stopped by a client.
    Cancelled,
}

impl JobStatus {
    /// Every status, in life order.
    pub const ALL: [JobStatus; 6] = [
        Self::Waiting,
        Self::Queued,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The lowercase name used in JSON, queries and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Whether the job is over (until someone retries it).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The status's code in the on-disk indexes. Fixed forever: files written by any
    /// Kiln keep these values (a test pins them).
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::Queued => 0,
            Self::Running => 1,
            Self::Completed => 2,
            Self::Failed => 3,
            Self::Cancelled => 4,
            Self::Waiting => 5,
        }
    }

    /// The status of an on-disk code.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.code() == code)
    }
}

/// The `error` of a failed job.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorInfo {
    /// Machine-readable kind, e.g. `timeout`, `trap`, `retryable`.
    pub kind: String,
    /// What happened.
    pub message: String,
}

/// A Kiln node as it reports itself with each heartbeat (PostgreSQL keeps every node's
/// in `kiln_nodes`; with redb the only node is the running process).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Its id, new for each process (UUIDv7).
    pub id: Uuid,
    /// The address its HTTP API listens on.
    pub address: String,
    /// The Kiln version it runs.
    pub version: String,
    /// When it started, ms since the epoch.
    pub started_at_ms: u64,
    /// Its latest heartbeat, ms since the epoch.
    pub heartbeat_at_ms: u64,
    /// Attempts it was running at that heartbeat.
    pub running_jobs: u64,
    /// When it shut down cleanly (`None`: it runs, or it died without saying so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_at_ms: Option<u64>,
}

/// A job as stored. The payload and the result live in their own tables, so progress
/// updates rewrite only this small record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// UUIDv7: ordered by creation, so the jobs table is also the creation index.
    pub id: Uuid,
    /// The job type.
    pub job_type: String,
    /// The queue it waits in.
    pub queue: String,
    /// Where it is.
    pub status: JobStatus,
    /// 0 to 100 within the current attempt.
    pub progress: u8,
    /// The latest stage message.
    pub message: Option<String>,
    /// Why it failed (or why its last attempt failed, while it waits for a retry).
    pub error: Option<ErrorInfo>,
    /// The current attempt, from 1.
    pub attempt: u32,
    /// Attempts allowed before a retryable failure becomes final.
    pub max_attempts: u32,
    /// Higher runs first within a queue.
    pub priority: i32,
    /// Per-job timeout request, seconds.
    pub timeout_s: Option<u64>,
    /// Not before this time (ms since the epoch).
    pub run_at_ms: Option<u64>,
    /// Creation time (ms since the epoch).
    pub created_at_ms: u64,
    /// Start of the current (or last) attempt.
    pub started_at_ms: Option<u64>,
    /// When it reached a terminal state.
    pub finished_at_ms: Option<u64>,
    /// LLM usage over all attempts.
    pub usage: Usage,
    /// Sequence number of the job's last event (0: none yet).
    pub last_seq: u64,
    /// The `Idempotency-Key` it was created with, prefixed by its tenant (see
    /// [`idempotency_slot`]).
    pub idempotency_key: Option<String>,
    /// The tenant that owns it (`None`: created in open mode or by an admin key without
    /// a tenant).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// The artifacts of the attempt that completed it (contract 0.2.0).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub artifacts: Vec<super::ArtifactRecord>,
    /// While it runs: the node holding its attempt's lease. With the attempt number this
    /// is the fencing token every write of the attempt is checked against, so a node that
    /// lost the lease (it was cut off, and the job was given to another node) can commit
    /// nothing more for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Uuid>,
    /// A client asked to cancel the running attempt; the node running it stops it (or,
    /// should that node die first, the job is cancelled instead of retried).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// The batch it was submitted in (`POST /v1/batches`), whose counts and log its
    /// changes keep up to date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Uuid>,
    /// Who it is run for (e.g. the app's end user), as the client said at submit: the
    /// queue shares its slots fairly between keys, and `max_per_key` caps one key's
    /// running jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_key: Option<String>,
    /// Where its end is POSTed, and how the delivery of its latest end goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookRecord>,
    /// The jobs it waits for (`depends_on` at submit), in the order given; it runs once
    /// they have all completed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Uuid>,
    /// Of those, the ones that have not ended yet (while it is `waiting`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waiting_for: Vec<Uuid>,
    /// What it does when a dependency fails or is cancelled.
    #[serde(default, skip_serializing_if = "DependencyFailure::is_fail")]
    pub on_dependency_failure: DependencyFailure,
    /// The jobs that wait for this one: the commit that ends it releases them (the
    /// reverse of their `depends_on`, kept here so the end finds them without an index).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependants: Vec<Uuid>,
    /// The schedule tick that submitted it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduledBy>,
}

/// The schedule tick a job was submitted for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScheduledBy {
    /// The schedule's name.
    pub name: String,
    /// The tick, ms since the epoch.
    pub tick_ms: u64,
}

/// A schedule: a job of `job_type` with `payload` submitted at each tick of `cron`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRecord {
    /// Unique; letters, digits, `-` and `_`.
    pub name: String,
    /// New each time the schedule is defined anew (created, or changed in the config):
    /// what a write is checked against, so a tick recorded by a node that read an older
    /// definition (or one since deleted) is refused.
    pub id: Uuid,
    /// Five fields (minute to weekday) or six (seconds first).
    pub cron: String,
    /// IANA name the cron is read in (`None`: UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    pub job_type: String,
    pub payload: Value,
    /// What a tick missed while no node ran does.
    pub catch_up: CatchUp,
    /// The tenant its jobs belong to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Defined in the config file (else through the API).
    pub from_config: bool,
    pub created_at_ms: u64,
    /// The latest tick handled (its job submitted, or skipped as missed), ms.
    pub last_tick_ms: Option<u64>,
    /// The job of the latest tick that submitted one.
    pub last_job: Option<Uuid>,
    /// Why the latest tick submitted nothing (the type is gone, the payload no longer
    /// matches its schema).
    pub last_error: Option<String>,
}

/// What the ticks a schedule missed while no node ran do, once one runs again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CatchUp {
    /// One job for all of them (the latest tick's).
    #[default]
    Once,
    /// None: the schedule goes on from the next tick.
    Skip,
}

/// What a job does when one of its dependencies fails or is cancelled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DependencyFailure {
    /// It fails too, with `error.kind = "dependency_failed"` naming the dependency.
    #[default]
    Fail,
    /// It runs anyway once every dependency has ended, however they ended.
    Run,
}

impl DependencyFailure {
    fn is_fail(&self) -> bool {
        *self == Self::Fail
    }
}

/// A job's webhook: its URL, and the delivery of the job's latest end (kept in the job's
/// record, so the outbox is written in the same commit as the end itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookRecord {
    pub url: String,
    /// Set when the job reaches a final state; replaced when it ends again after a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryRecord>,
}

/// One delivery: the job's end, sent until the receiver answers 2xx or the retry window
/// passes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryRecord {
    /// The `webhook-id` header: the same on every retry of this delivery, so receivers
    /// can drop repeats (`{job id}.{attempt}`).
    pub id: String,
    /// When the job ended, ms: retries stop a window after it.
    pub created_at_ms: u64,
    /// Sends so far.
    pub attempts: u32,
    /// When to send next, ms; `None` once delivered or given up.
    pub next_at_ms: Option<u64>,
    /// The receiver's last HTTP status, if it answered.
    pub last_status: Option<u16>,
    /// Why the last send failed (refused address, timeout, non-2xx status).
    pub last_error: Option<String>,
    pub delivered_at_ms: Option<u64>,
    /// The retry window passed without a 2xx.
    pub gave_up: bool,
}

impl DeliveryRecord {
    /// A delivery of the end of `job`'s current attempt, due at once.
    pub fn of_end(job: &JobRecord, now_ms: u64) -> Self {
        Self {
            id: format!("{}.{}", job.id, job.attempt),
            created_at_ms: now_ms,
            attempts: 0,
            next_at_ms: Some(now_ms),
            last_status: None,
            last_error: None,
            delivered_at_ms: None,
            gave_up: false,
        }
    }
}

/// The fencing token of a running attempt: which attempt, on which node. Every write an
/// attempt makes (its events, its journaled calls, its end) is refused unless the job
/// still holds this lease, so an attempt whose node was cut off and replaced can never
/// overwrite the attempt that replaced it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Lease {
    /// The attempt's number.
    pub attempt: u32,
    /// The node running it.
    pub node: Uuid,
}

impl JobRecord {
    /// When its webhook delivery is due, if one is pending (the outbox's index).
    pub fn webhook_due_ms(&self) -> Option<u64> {
        self.webhook.as_ref()?.delivery.as_ref()?.next_at_ms
    }

    /// The lease of the attempt running now (`None` unless the job runs).
    pub fn lease(&self) -> Option<Lease> {
        if self.status != JobStatus::Running {
            return None;
        }
        self.node.map(|node| Lease {
            attempt: self.attempt,
            node,
        })
    }

    /// A new job of `job_type` with id `id`, queued for its first of three attempts in the
    /// queue of the same name, every other field empty: the start of a record for tools
    /// and tests that write to a store directly.
    pub fn queued(id: Uuid, job_type: &str, created_at_ms: u64) -> Self {
        Self {
            id,
            job_type: job_type.into(),
            queue: job_type.into(),
            status: JobStatus::Queued,
            progress: 0,
            message: None,
            error: None,
            attempt: 1,
            max_attempts: 3,
            priority: 0,
            timeout_s: None,
            run_at_ms: None,
            created_at_ms,
            started_at_ms: None,
            finished_at_ms: None,
            usage: Usage::default(),
            last_seq: 0,
            idempotency_key: None,
            tenant: None,
            artifacts: Vec::new(),
            node: None,
            cancel_requested: false,
            batch: None,
            concurrency_key: None,
            webhook: None,
            depends_on: Vec::new(),
            waiting_for: Vec::new(),
            on_dependency_failure: DependencyFailure::Fail,
            dependants: Vec::new(),
            schedule: None,
        }
    }
}

/// A batch of jobs submitted in one call, as stored. Its counts are kept by the writer in
/// the same commit as each change of one of its jobs, so they are exact without reading
/// the jobs, and its log (status changes, progress and endings of its jobs, then
/// `batch_completed`) has its own sequence numbers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchRecord {
    /// UUIDv7.
    pub id: Uuid,
    /// The type of its jobs.
    pub job_type: String,
    /// The tenant that owns it and its jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Creation time (ms since the epoch).
    pub created_at_ms: u64,
    /// Its jobs still stored (expired ones are no longer counted).
    pub jobs: u64,
    /// Its jobs by status.
    pub counts: StatusCounts,
    /// The sum of its jobs' progress, a finished job counting 100: the mean is this over
    /// `jobs`.
    pub progress_sum: u64,
    /// When its last job reached a final state (`None` while any job is not final).
    pub finished_at_ms: Option<u64>,
    /// Sequence number of its log's last event.
    pub last_seq: u64,
}

impl BatchRecord {
    /// The mean progress of its jobs, 0 to 100.
    pub fn progress(&self) -> u8 {
        let mean = self.progress_sum.checked_div(self.jobs).unwrap_or(100);
        u8::try_from(mean.min(100)).unwrap_or(100)
    }

    /// Whether every job of it is final.
    pub fn is_finished(&self) -> bool {
        self.counts.queued == 0 && self.counts.running == 0
    }

    /// The status its events carry: `completed` once finished (whatever its jobs' ends),
    /// `running` before.
    pub fn status(&self) -> JobStatus {
        if self.is_finished() {
            JobStatus::Completed
        } else {
            JobStatus::Running
        }
    }

    /// What `job` adds to [`BatchRecord::progress_sum`].
    pub fn progress_share(job: &JobRecord) -> u64 {
        if job.status.is_terminal() {
            100
        } else {
            u64::from(job.progress.min(100))
        }
    }
}

/// Jobs by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusCounts {
    #[serde(default)]
    pub waiting: u64,
    pub queued: u64,
    pub running: u64,
    pub completed: u64,
    pub failed: u64,
    pub cancelled: u64,
}

impl StatusCounts {
    /// Counts a job that left `from` for `to` (`None`: it was deleted).
    pub fn moved(&mut self, from: JobStatus, to: Option<JobStatus>) {
        let count = self.of(from);
        *count = count.saturating_sub(1);
        if let Some(to) = to {
            *self.of(to) += 1;
        }
    }

    /// The count of `status`, to change.
    pub fn of(&mut self, status: JobStatus) -> &mut u64 {
        match status {
            JobStatus::Waiting => &mut self.waiting,
            JobStatus::Queued => &mut self.queued,
            JobStatus::Running => &mut self.running,
            JobStatus::Completed => &mut self.completed,
            JobStatus::Failed => &mut self.failed,
            JobStatus::Cancelled => &mut self.cancelled,
        }
    }
}

/// Where an `Idempotency-Key` is stored: per tenant, so two tenants using the same key
/// never meet. Header values cannot hold a NUL, so the separator is unambiguous.
pub fn idempotency_slot(tenant: Option<&str>, key: &str) -> String {
    match tenant {
        Some(tenant) => format!("{tenant}\0{key}"),
        None => key.to_string(),
    }
}

/// An event about to be appended to a job's log (its sequence number is assigned at
/// commit).
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// Its name, stored as given (the job service's vocabulary, `jobs::event_names`).
    pub name: &'static str,
    /// The event's JSON.
    pub data: Value,
}

impl NewEvent {
    /// An event named `name` with `data`.
    pub fn new(name: &'static str, data: Value) -> Self {
        Self { name, data }
    }
}

/// A committed event of a job's log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobEvent {
    /// The job.
    pub job_id: Uuid,
    /// Position in the job's log, from 1; the SSE `id:` of the job's stream.
    pub seq: u64,
    /// Position in the feed of every job's events, from 1; the SSE `id:` of `/v1/events`.
    /// 0 for an event read from the job's own log, where it is not needed.
    #[serde(default)]
    pub feed_seq: u64,
    /// Its name, as it was appended.
    pub name: String,
    /// The event's JSON.
    pub data: Value,
    /// Commit time, ms since the epoch.
    pub at_ms: u64,
    /// The job's type, for `/v1/events` filters.
    pub job_type: String,
    /// The job's status after this event, for `/v1/events` filters.
    pub status: JobStatus,
    /// The job's tenant, so `/v1/events` shows a client its tenant's jobs only.
    pub tenant: Option<String>,
    /// Encodings of the event its readers make once and share (see [`Encodings`]).
    #[serde(skip)]
    pub encodings: Encodings,
}

/// Slots for encodings of one event, filled by its first reader and shared by the rest:
/// with ten thousand SSE subscribers, encoding an event per subscriber was most of its
/// fan-out cost. The store only keeps the slots; what goes in them is the reader's (the
/// API keeps its SSE frames' data here).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Encodings {
    /// Two independent forms, e.g. one per kind of stream.
    pub slots: [std::sync::OnceLock<String>; 2],
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// RFC 3339 with milliseconds, as every timestamp in the API is written.
pub fn rfc3339(ms: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    humantime::format_rfc3339_millis(time).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_codes_on_disk_never_change() {
        let codes: Vec<(JobStatus, u8)> = JobStatus::ALL.iter().map(|s| (*s, s.code())).collect();
        assert_eq!(
            codes,
            vec![
                (JobStatus::Waiting, 5),
                (JobStatus::Queued, 0),
                (JobStatus::Running, 1),
                (JobStatus::Completed, 2),
                (JobStatus::Failed, 3),
                (JobStatus::Cancelled, 4),
            ]
        );
        for (status, code) in codes {
            assert_eq!(JobStatus::from_code(code), Some(status));
        }
        assert_eq!(JobStatus::from_code(6), None);
    }

    /// The forms of every enum Kiln persists, in either backend: the status codes of the
    /// indexes (above), and the names written in the JSON of job records, events and
    /// journal entries. Changing one would strand data written by an older Kiln.
    #[test]
    fn persisted_enum_names_never_change() {
        let names = |values: Vec<serde_json::Value>| -> Vec<String> {
            values
                .into_iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect()
        };
        let statuses = JobStatus::ALL
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        assert_eq!(
            names(statuses),
            [
                "waiting",
                "queued",
                "running",
                "completed",
                "failed",
                "cancelled"
            ]
        );
        use crate::llm::{FinishReason, Role};
        let roles = [Role::System, Role::User, Role::Assistant, Role::Tool]
            .iter()
            .map(|r| serde_json::to_value(r).unwrap())
            .collect();
        assert_eq!(names(roles), ["system", "user", "assistant", "tool"]);
        let reasons = [
            FinishReason::Stop,
            FinishReason::Length,
            FinishReason::ToolCalls,
            FinishReason::Other,
        ]
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
        assert_eq!(names(reasons), ["stop", "length", "tool_calls", "other"]);
        use crate::runtime::FailureKind as K;
        let kinds: Vec<&str> = [
            K::InvalidInput,
            K::Retryable,
            K::Permanent,
            K::Trap,
            K::StackOverflow,
            K::Timeout,
            K::MemoryLimit,
            K::ResultTooLarge,
            K::InvalidResult,
            K::EventLimit,
            K::LlmLimit,
            K::ArtifactLimit,
            K::Cancelled,
            K::UnknownType,
            K::Interrupted,
            K::Internal,
            K::DependencyFailed,
        ]
        .iter()
        .map(|k| k.as_str())
        .collect();
        assert_eq!(
            kinds,
            [
                "invalid_input",
                "retryable",
                "permanent",
                "trap",
                "stack_overflow",
                "timeout",
                "memory_limit",
                "result_too_large",
                "invalid_result",
                "event_limit",
                "llm_limit",
                "artifact_limit",
                "cancelled",
                "unknown_type",
                "interrupted",
                "internal",
                "dependency_failed",
            ]
        );
    }
}
