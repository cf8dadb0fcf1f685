//! Every redb table, in one place. Keys are UUIDv7s as `u128`, so key order is creation
//! order: the jobs table doubles as the "newest first" index.

use redb::TableDefinition;

/// Job id -> JSON of [`crate::store::JobRecord`] (small: no payload, no result).
pub(super) const JOBS: TableDefinition<u128, &[u8]> = TableDefinition::new("jobs");
/// Job id -> payload JSON text, written once at submit.
pub(super) const PAYLOADS: TableDefinition<u128, &[u8]> = TableDefinition::new("payloads");
/// Job id -> result JSON text, written when the job completes.
pub(super) const RESULTS: TableDefinition<u128, &[u8]> = TableDefinition::new("results");
/// (job id, seq) -> JSON of a stored event: the per-job append-only log.
pub(super) const EVENTS: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("events");
/// (status code, job id): list and recover by status.
pub(super) const BY_STATUS: TableDefinition<(u8, u128), ()> = TableDefinition::new("by_status");
/// (job type, job id): list by type.
pub(super) const BY_TYPE: TableDefinition<(&str, u128), ()> = TableDefinition::new("by_type");
/// (tenant, job id): a tenant's jobs, so a small tenant's listing never walks everyone's.
pub(super) const BY_TENANT: TableDefinition<(&str, u128), ()> = TableDefinition::new("by_tenant");
/// (finished at ms, job id): the expiry sweeper's index of finished jobs.
pub(super) const BY_FINISH: TableDefinition<(u64, u128), ()> = TableDefinition::new("by_finish");
/// Idempotency key -> job id.
pub(super) const IDEMPOTENCY: TableDefinition<&str, u128> = TableDefinition::new("idempotency");
/// (job id, call index) -> JSON of a journaled LLM call: the request's hash and the
/// response, stored before the plugin saw it, so a re-run replays instead of paying again.
pub(super) const JOURNAL: TableDefinition<(u128, u64), &[u8]> = TableDefinition::new("journal");
/// Feed position -> (job id, the event's seq in that job's log, the job's status code after
/// it): every committed event of every job in commit order, the log `GET /v1/events`
/// resumes from. Positions only grow; the oldest are trimmed to keep the newest
/// `events_feed_retention`. The event itself stays in [`EVENTS`].
pub(super) const FEED: TableDefinition<u64, (u128, u64, u8)> = TableDefinition::new("feed");
/// File id -> JSON of an upload's [`crate::store::FileRecord`] (added in 0.2.0; an older file
/// gains it empty).
pub(super) const FILES: TableDefinition<u128, &[u8]> = TableDefinition::new("files");
/// (expires at ms, file id): the sweeper's index of uploads.
pub(super) const FILES_BY_EXPIRY: TableDefinition<(u64, u128), ()> =
    TableDefinition::new("files_by_expiry");
/// Batch id -> JSON of a [`crate::store::BatchRecord`] (added in 0.3.0; an older file
/// gains it empty). A batch's log is kept in [`EVENTS`] under the batch's id.
pub(super) const BATCHES: TableDefinition<u128, &[u8]> = TableDefinition::new("batches");
/// (batch id, job id): a batch's jobs, for listing and for cancelling or retrying them all.
pub(super) const BY_BATCH: TableDefinition<(u128, u128), ()> = TableDefinition::new("by_batch");
/// (due at ms, job id): the webhook outbox, jobs whose end is still to be delivered (added
/// in 0.3.0; an older file gains it empty).
pub(super) const WEBHOOKS_DUE: TableDefinition<(u64, u128), ()> =
    TableDefinition::new("webhooks_due");
/// Schedule name -> JSON of a [`crate::store::ScheduleRecord`] (added in 0.3.0; an older
/// file gains it empty).
pub(super) const SCHEDULES: TableDefinition<&str, &[u8]> = TableDefinition::new("schedules");
