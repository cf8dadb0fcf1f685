//! The records the store keeps: jobs and their events.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::llm::Usage;

/// Where a job is in its life. `queued -> running -> completed | failed | cancelled`; a job
/// waiting out a retry backoff is `queued` with a later `run_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Waiting for its `run_at` and a free slot in its queue.
    Queued = 0,
    /// An attempt is running.
    Running = 1,
    /// Finished with a result.
    Completed = 2,
    /// Finished without one, attempts spent or the failure final.
    Failed = 3,
    /// Stopped by a client.
    Cancelled = 4,
}

impl JobStatus {
    /// Every status, in life order.
    pub const ALL: [JobStatus; 5] = [
        Self::Queued,
        Self::Running,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The lowercase name used in JSON, queries and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
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
        self as u8
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
}

/// Where an `Idempotency-Key` is stored: per tenant, so two tenants using the same key
/// never meet. Header values cannot hold a NUL, so the separator is unambiguous.
pub fn idempotency_slot(tenant: Option<&str>, key: &str) -> String {
    match tenant {
        Some(tenant) => format!("{tenant}\0{key}"),
        None => key.to_string(),
    }
}

/// The names of SSE events.
pub mod event_names {
    /// A status change: `{status, attempt, ...}`.
    pub const STATUS: &str = "status";
    /// `{progress, message}`.
    pub const PROGRESS: &str = "progress";
    /// `{name, data}`: one finished item.
    pub const PARTIAL: &str = "partial";
    /// `{label, delta}`: streamed LLM output.
    pub const TOKEN: &str = "token";
    /// `{index, label}`: an LLM call answered from the job's journal (not paid again).
    pub const REPLAYED: &str = "replayed";
    /// `{result}`: terminal.
    pub const COMPLETED: &str = "completed";
    /// `{error}`: terminal.
    pub const FAILED: &str = "failed";
    /// `{status}`: terminal.
    pub const CANCELLED: &str = "cancelled";

    /// Whether an event of this name ends the job's stream.
    pub fn is_terminal(name: &str) -> bool {
        matches!(name, COMPLETED | FAILED | CANCELLED)
    }
}

/// An event about to be appended to a job's log (its sequence number is assigned at
/// commit).
#[derive(Clone, Debug, PartialEq)]
pub struct NewEvent {
    /// One of [`event_names`].
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
    /// One of [`event_names`].
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
    /// `data` as JSON text, made once however many subscribers send it.
    #[serde(skip)]
    pub text: std::sync::OnceLock<String>,
    /// The `/v1/events` form `{job_id, type, status, seq, data}` as JSON text, made once.
    #[serde(skip)]
    pub dashboard_text: std::sync::OnceLock<String>,
}

impl JobEvent {
    /// `data` as JSON text. With ten thousand subscribers, encoding it per subscriber
    /// was most of an event's fan-out cost; now the first subscriber encodes it.
    pub fn data_text(&self) -> &str {
        self.text.get_or_init(|| self.data.to_string())
    }

    /// The event as `/v1/events` sends it, as JSON text, encoded once.
    pub fn dashboard_data_text(&self) -> &str {
        self.dashboard_text.get_or_init(|| {
            serde_json::json!({
                "job_id": self.job_id,
                "type": self.job_type,
                "status": self.status,
                "seq": self.seq,
                "data": self.data,
            })
            .to_string()
        })
    }
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
        assert_eq!(JobStatus::from_code(5), None);
    }
}
