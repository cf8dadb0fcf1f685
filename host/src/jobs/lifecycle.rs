//! The job state machine: every transition of a job's life, as a plain function.
//!
//! ```text
//!     submit with depends_on ──► waiting ──── a dependency failed ───► failed
//!                     submit        │   └──────────── cancel ─────────────┐
//!                       │           │ all its dependencies ended          │
//!                       ▼           ▼                                     │
//!    ┌───────────────► queued ──────────────── cancel ───────────────┐   │
//!    │                  │  ▲                                          │   │
//!    │             start│  │ retryable failure or interrupt,          │   │
//!    │                  │  │ attempts left (attempt + 1, error kept)  │   │
//!    │                  ▼  │                                          ▼   ▼
//!    │               running ────────── end: cancelled ──────────► cancelled
//!    │                  │  │                                          │
//!    │   end: completed │  │ failure: final, or attempts spent        │
//!    │                  ▼  ▼                                          │
//!    │          completed  failed                                     │
//!    │                       │                                        │
//!    └──────── retry ────────┴────────────────────────────────────────┘
//! ```
//!
//! A job waiting on dependencies is released by the commit that ends each of them
//! ([`release`], which the store applies there: see [`crate::store::ReleaseRule`]).
//! A cancel of a running job changes nothing here: the service stops the attempt and the
//! runner's end of attempt records `cancelled`. While a job runs, its plugin's events
//! ([`plugin_event`]) append to the log (and move progress forward) without changing its
//! status. Recovery at start treats a job left `running` as interrupted.
//!
//! Transitions are plain functions over the job's record, not methods of the service,
//! because of where they run: inside the store's write transaction, on the record as it
//! is at commit time (see [`crate::store::Store::update`]), so racing changes (a cancel
//! against a completion) are settled there and the loser is refused. A commit that failed
//! because the database was unreachable is retried, so a transition may run more than
//! once, each time on the then-current record: it must depend only on that record and its
//! arguments (the time is one, `now_ms`, taken by the caller). And being plain functions,
//! they are unit-tested here without a store.

use std::time::Duration;

use serde_json::{Value, json};

use super::event_names;
use crate::runtime::{FailureKind, JobFailure, PluginEvent};
use uuid::Uuid;

use crate::store::{
    ArtifactRecord, Change, DependencyFailure, ErrorInfo, JobRecord, JobStatus, Lease, NewEvent,
    StoreError, rfc3339,
};

/// The start of an attempt on `node`: `queued -> running`, the attempt's lease held by
/// `node`. A job that is no longer queued (it was cancelled while it waited) is refused:
/// it never starts.
pub(super) fn start(job: &mut JobRecord, now_ms: u64, node: Uuid) -> Result<Change, StoreError> {
    if job.status != JobStatus::Queued {
        return Err(not_running_or_queued(job));
    }
    job.status = JobStatus::Running;
    job.node = Some(node);
    job.cancel_requested = false;
    job.started_at_ms = Some(now_ms);
    job.progress = 0;
    job.message = None;
    Ok(Change::events(vec![status_event(job)]))
}

/// A client's cancel. A queued job is cancelled at once; a running one is marked
/// `cancel_requested` (the node running it stops the attempt, whose end records
/// `cancelled`); a finished one is refused.
pub(super) fn cancel(job: &mut JobRecord, now_ms: u64) -> Result<Change, StoreError> {
    match job.status {
        JobStatus::Queued | JobStatus::Waiting => {
            job.status = JobStatus::Cancelled;
            job.waiting_for.clear();
            job.finished_at_ms = Some(now_ms);
            Ok(Change::events(vec![cancelled_event()]))
        }
        JobStatus::Running => {
            job.cancel_requested = true;
            Ok(Change::default())
        }
        status => Err(StoreError::Conflict(format!(
            "the job is {}; only waiting, queued or running jobs can be cancelled",
            status.as_str()
        ))),
    }
}

/// A client's retry of a failed or cancelled job: its next attempt is queued at once
/// (allowed even when its attempts were spent), with a clean slate.
pub(super) fn retry(job: &mut JobRecord) -> Result<Change, StoreError> {
    match job.status {
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
    }
}

/// A job waiting on `dependency`, which has just ended: it stops waiting for it, and once
/// it waits for nothing more it is queued. A dependency that failed or was cancelled
/// fails it at once (`dependency_failed`, naming the dependency: it never runs), unless
/// it was submitted with `on_dependency_failure: "run"`. Refused when the job no longer
/// waits for `dependency` (it was cancelled, or this release was applied already).
pub(super) fn release(
    job: &mut JobRecord,
    dependency: &JobRecord,
    now_ms: u64,
) -> Result<Change, StoreError> {
    let place = job.waiting_for.iter().position(|id| *id == dependency.id);
    let (JobStatus::Waiting, Some(place)) = (job.status, place) else {
        return Err(StoreError::Conflict(format!(
            "the job does not wait for {}",
            dependency.id
        )));
    };
    job.waiting_for.remove(place);
    if dependency.status != JobStatus::Completed
        && job.on_dependency_failure == DependencyFailure::Fail
    {
        job.waiting_for.clear();
        let how = match (&dependency.status, &dependency.error) {
            (JobStatus::Cancelled, _) => "was cancelled".to_string(),
            (_, Some(error)) => format!("failed ({}: {})", error.kind, error.message),
            (_, None) => "failed".to_string(),
        };
        let error = ErrorInfo {
            kind: FailureKind::DependencyFailed.as_str().into(),
            message: format!(
                "dependency {} ({}) {how}",
                dependency.id, dependency.job_type
            ),
        };
        return Ok(fail(job, error, now_ms));
    }
    if !job.waiting_for.is_empty() {
        return Ok(Change::default());
    }
    job.status = JobStatus::Queued;
    Ok(Change::events(vec![status_event(job)]))
}

/// A job found `running` when the service starts: the process that ran it died, so the
/// attempt was interrupted (or, had a client asked to cancel it, it is cancelled).
pub(super) fn recover(job: &mut JobRecord, now_ms: u64) -> Change {
    if job.cancel_requested {
        leave_running(job);
        job.status = JobStatus::Cancelled;
        job.finished_at_ms = Some(now_ms);
        return Change::events(vec![cancelled_event()]);
    }
    interrupt(job, "the server stopped during attempt", now_ms)
}

/// A running job whose node stopped answering (its lease expired), seen running attempt
/// `attempt` on `node`: like [`recover`], unless it changed since it was seen (refused).
pub(super) fn rescue(
    job: &mut JobRecord,
    attempt: u32,
    node: Option<Uuid>,
    now_ms: u64,
) -> Result<Change, StoreError> {
    if job.status != JobStatus::Running || job.attempt != attempt || job.node != node {
        return Err(StoreError::Conflict("the job moved on".into()));
    }
    if job.cancel_requested {
        return Ok(recover(job, now_ms));
    }
    Ok(interrupt(
        job,
        "the node running it stopped answering during attempt",
        now_ms,
    ))
}

/// `transition` of a running attempt, refused unless the job still holds the attempt's
/// `lease`: the fencing check of every write an attempt makes (`None`: unfenced).
pub(super) fn holding(
    job: &mut JobRecord,
    lease: Option<Lease>,
    transition: impl FnOnce(&mut JobRecord) -> Result<Change, StoreError>,
) -> Result<Change, StoreError> {
    if let Some(lease) = lease
        && job.lease() != Some(lease)
    {
        return Err(StoreError::Conflict(format!(
            "attempt {} on node {} no longer holds the job's lease (the job is {}, attempt {})",
            lease.attempt,
            lease.node,
            job.status.as_str(),
            job.attempt
        )));
    }
    transition(job)
}

/// The end of an attempt that returned `result` (its artifacts published as `artifacts`),
/// `interrupted` by shutdown or not. A result completes the job; a failure of an
/// interrupted attempt re-queues it ([`interrupt`]); a cancelled attempt cancels it; any
/// other failure retries it after `backoff` or fails it ([`fail_or_retry`]). Refused
/// unless the job is running.
pub(super) fn end_attempt(
    job: &mut JobRecord,
    result: &Result<Value, JobFailure>,
    artifacts: &[ArtifactRecord],
    interrupted: bool,
    backoff: Duration,
    now_ms: u64,
) -> Result<Change, StoreError> {
    ensure_running(job)?;
    // `usage` is already in the record: each paid call was added when it was journaled,
    // each replayed one with its `replayed` event.
    match result {
        Ok(value) => complete(job, value, artifacts, now_ms),
        Err(_) if interrupted => Ok(interrupt(
            job,
            "the server shut down during attempt",
            now_ms,
        )),
        Err(failure) if failure.kind == FailureKind::Cancelled => end_cancelled(job, now_ms),
        Err(failure) => Ok(fail_or_retry(job, failure.clone(), backoff, now_ms)),
    }
}

/// A completed attempt: the job is completed with `value` as its result and `artifacts`
/// (already in place). Refused unless the job is running.
pub(super) fn complete(
    job: &mut JobRecord,
    value: &Value,
    artifacts: &[ArtifactRecord],
    now_ms: u64,
) -> Result<Change, StoreError> {
    ensure_running(job)?;
    leave_running(job);
    job.status = JobStatus::Completed;
    job.progress = 100;
    job.finished_at_ms = Some(now_ms);
    job.error = None;
    job.artifacts = artifacts.to_vec();
    Ok(Change {
        events: vec![NewEvent::new(
            event_names::COMPLETED,
            json!({ "result": value }),
        )],
        result: Some(value.to_string()),
        clear_result: false,
    })
}

/// An attempt stopped by a client's cancel: the job is cancelled. Refused unless the job
/// is running.
pub(super) fn end_cancelled(job: &mut JobRecord, now_ms: u64) -> Result<Change, StoreError> {
    ensure_running(job)?;
    leave_running(job);
    job.status = JobStatus::Cancelled;
    job.finished_at_ms = Some(now_ms);
    Ok(Change::events(vec![cancelled_event()]))
}

/// A failed attempt: another one `backoff` from now if the failure is retryable and
/// attempts remain, else the job fails.
pub(super) fn fail_or_retry(
    job: &mut JobRecord,
    failure: JobFailure,
    backoff: Duration,
    now_ms: u64,
) -> Change {
    let error = ErrorInfo {
        kind: failure.kind.as_str().into(),
        message: failure.message,
    };
    if failure.kind.is_retryable() {
        retry_or_fail(job, error, backoff, now_ms)
    } else {
        fail(job, error, now_ms)
    }
}

/// An interrupted attempt (the server died or shut down during it): the next attempt is
/// queued at once, or the job fails when its attempts are spent. `why` begins the
/// error's message, which ends with the attempt's number.
pub(super) fn interrupt(job: &mut JobRecord, why: &str, now_ms: u64) -> Change {
    let error = ErrorInfo {
        kind: FailureKind::Interrupted.as_str().into(),
        message: format!("{why} {}", job.attempt),
    };
    retry_or_fail(job, error, Duration::ZERO, now_ms)
}

/// An event of the running plugin, appended to the job's log. Progress never goes
/// backwards; a replayed LLM call is counted with its event, so the count matches the
/// log after a crash. Refused once the attempt is over.
pub(super) fn plugin_event(job: &mut JobRecord, event: &PluginEvent) -> Result<Change, StoreError> {
    if job.status != JobStatus::Running {
        return Err(StoreError::Conflict("the attempt is over".into()));
    }
    let event = match event {
        PluginEvent::Progress { percent, message } => {
            job.progress = (*percent).max(job.progress);
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
            job.usage.replayed_calls += 1;
            NewEvent::new(
                event_names::REPLAYED,
                json!({ "index": index, "label": label }),
            )
        }
    };
    Ok(Change::events(vec![event]))
}

/// The `status` event of a job's current state.
pub(super) fn status_event(job: &JobRecord) -> NewEvent {
    let mut data = json!({ "status": job.status.as_str(), "attempt": job.attempt });
    if !job.waiting_for.is_empty() {
        data["waiting_for"] = json!(job.waiting_for);
    }
    if let Some(at) = job.run_at_ms {
        data["run_at"] = json!(rfc3339(at));
    }
    if let Some(error) = &job.error {
        data["error"] = json!(error);
    }
    NewEvent::new(event_names::STATUS, data)
}

/// Queues the job's next attempt `delay` from `now_ms` while attempts remain, else fails
/// it. `error` says why this attempt ended either way.
fn retry_or_fail(job: &mut JobRecord, error: ErrorInfo, delay: Duration, now_ms: u64) -> Change {
    if job.attempt >= job.max_attempts {
        return fail(job, error, now_ms);
    }
    leave_running(job);
    job.status = JobStatus::Queued;
    job.attempt += 1;
    job.progress = 0;
    job.message = None;
    job.run_at_ms = (!delay.is_zero())
        .then(|| now_ms.saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX)));
    job.error = Some(error);
    Change::events(vec![status_event(job)])
}

/// Ends the job as failed with `error`.
fn fail(job: &mut JobRecord, error: ErrorInfo, now_ms: u64) -> Change {
    leave_running(job);
    job.status = JobStatus::Failed;
    job.finished_at_ms = Some(now_ms);
    job.error = Some(error.clone());
    Change::events(vec![failed_event(&error)])
}

/// Drops what only a running attempt has: its lease and a cancel request.
fn leave_running(job: &mut JobRecord) {
    job.node = None;
    job.cancel_requested = false;
}

/// Refuses an end of attempt for a job that is not running (cancelled or ended already).
fn ensure_running(job: &JobRecord) -> Result<(), StoreError> {
    if job.status == JobStatus::Running {
        Ok(())
    } else {
        Err(not_running_or_queued(job))
    }
}

/// The refusal of a start or an end of attempt: the job is in another state.
fn not_running_or_queued(job: &JobRecord) -> StoreError {
    StoreError::Conflict(format!("job is {}", job.status.as_str()))
}

fn failed_event(error: &ErrorInfo) -> NewEvent {
    NewEvent::new(event_names::FAILED, json!({ "error": error }))
}

fn cancelled_event() -> NewEvent {
    NewEvent::new(event_names::CANCELLED, json!({ "status": "cancelled" }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    /// 2023-11-14T22:13:20Z.
    const NOW: u64 = 1_700_000_000_000;

    /// The node running the attempts.
    const NODE: Uuid = Uuid::from_u128(7);

    const NOT_RUNNING: [JobStatus; 4] = [
        JobStatus::Queued,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Cancelled,
    ];

    /// A job in `status`, on attempt 1 of 3, with the fields its status implies.
    fn job(status: JobStatus) -> JobRecord {
        let mut job = JobRecord {
            queue: "default".into(),
            status,
            ..JobRecord::queued(Uuid::nil(), "echo", NOW - 60_000)
        };
        if status != JobStatus::Queued {
            job.started_at_ms = Some(NOW - 30_000);
            job.progress = 40;
            job.message = Some("halfway".into());
        }
        if status.is_terminal() {
            job.finished_at_ms = Some(NOW - 10_000);
        }
        if status == JobStatus::Failed {
            job.error = Some(error("trap", "boom"));
        }
        job
    }

    fn error(kind: &str, message: &str) -> ErrorInfo {
        ErrorInfo {
            kind: kind.into(),
            message: message.into(),
        }
    }

    fn event(name: &'static str, data: Value) -> NewEvent {
        NewEvent::new(name, data)
    }

    /// Asserts that `change` appends exactly `events` and touches no result.
    fn assert_events(change: &Change, events: Vec<NewEvent>) {
        assert_eq!(change.events, events);
        assert_eq!(change.result, None);
        assert!(!change.clear_result);
    }

    /// Asserts that `transition` refuses `job` with `message` and leaves it as it was.
    fn assert_refused(
        mut job: JobRecord,
        transition: impl FnOnce(&mut JobRecord) -> Result<Change, StoreError>,
        message: &str,
    ) {
        let before = job.clone();
        match transition(&mut job) {
            Err(refusal) => assert_eq!(refusal, StoreError::Conflict(message.into())),
            Ok(change) => panic!("a {:?} job was not refused: {change:?}", before.status),
        }
        assert_eq!(job, before);
    }

    #[test]
    fn start_runs_a_queued_job() {
        let mut job = job(JobStatus::Queued);
        let change = start(&mut job, NOW, NODE).unwrap();
        assert_eq!(job.status, JobStatus::Running);
        assert_eq!(job.started_at_ms, Some(NOW));
        assert_eq!((job.progress, job.message.as_deref()), (0, None));
        assert_eq!(job.finished_at_ms, None);
        assert_events(
            &change,
            vec![event(
                "status",
                json!({ "status": "running", "attempt": 1 }),
            )],
        );
    }

    #[test]
    fn start_of_a_retried_attempt_resets_progress_and_tells_the_last_error() {
        // A retry waiting out its backoff: progress and message of the failed attempt
        // were cleared when it was re-queued, its run_at and error are kept.
        let mut job = job(JobStatus::Queued);
        job.attempt = 2;
        job.progress = 10;
        job.message = Some("stale".into());
        job.run_at_ms = Some(NOW - 5_000);
        job.error = Some(error("retryable", "busy"));
        let change = start(&mut job, NOW, NODE).unwrap();
        assert_eq!(job.status, JobStatus::Running);
        assert_eq!((job.progress, job.message.as_deref()), (0, None));
        assert_events(
            &change,
            vec![event(
                "status",
                json!({
                    "status": "running",
                    "attempt": 2,
                    "run_at": "2023-11-14T22:13:15.000Z",
                    "error": { "kind": "retryable", "message": "busy" },
                }),
            )],
        );
    }

    #[test]
    fn start_is_refused_unless_queued() {
        for status in [
            JobStatus::Running,
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ] {
            assert_refused(
                job(status),
                |job| start(job, NOW, NODE),
                &format!("job is {}", status.as_str()),
            );
        }
    }

    #[test]
    fn cancel_of_a_queued_job_cancels_it() {
        let mut job = job(JobStatus::Queued);
        let change = cancel(&mut job, NOW).unwrap();
        assert_eq!(job.status, JobStatus::Cancelled);
        assert_eq!(job.finished_at_ms, Some(NOW));
        assert_events(
            &change,
            vec![event("cancelled", json!({ "status": "cancelled" }))],
        );
    }

    #[test]
    fn cancel_of_a_running_job_leaves_it_to_the_runner() {
        let mut job = job(JobStatus::Running);
        let before = job.clone();
        let change = cancel(&mut job, NOW).unwrap();
        assert!(job.cancel_requested);
        assert_eq!(
            job,
            JobRecord {
                cancel_requested: true,
                ..before
            }
        );
        assert_events(&change, Vec::new());
    }

    #[test]
    fn a_job_cancelled_while_its_node_died_is_cancelled_not_retried() {
        let mut job = job(JobStatus::Running);
        job.node = Some(NODE);
        job.cancel_requested = true;
        let change = rescue(&mut job, 1, Some(NODE), NOW).unwrap();
        assert_eq!(job.status, JobStatus::Cancelled);
        assert_eq!((job.node, job.cancel_requested), (None, false));
        assert_events(
            &change,
            vec![event("cancelled", json!({ "status": "cancelled" }))],
        );
    }

    #[test]
    fn a_rescue_requeues_the_attempt_it_saw_and_nothing_newer() {
        let mut seen = job(JobStatus::Running);
        seen.node = Some(NODE);
        let mut job = seen.clone();
        rescue(&mut job, 1, Some(NODE), NOW).unwrap();
        assert_eq!(
            (job.status, job.attempt, job.node),
            (JobStatus::Queued, 2, None)
        );
        assert_eq!(job.error.unwrap().kind, "interrupted");
        let other = Uuid::from_u128(8);
        for (attempt, node) in [(2, Some(NODE)), (1, Some(other)), (1, None)] {
            assert_refused(
                seen.clone(),
                |job| rescue(job, attempt, node, NOW),
                "the job moved on",
            );
        }
    }

    fn progress(percent: u8, message: &str) -> PluginEvent {
        PluginEvent::Progress {
            percent,
            message: message.into(),
        }
    }

    #[test]
    fn an_attempt_that_lost_its_lease_can_write_nothing() {
        let mut job = job(JobStatus::Queued);
        start(&mut job, NOW, NODE).unwrap();
        let lease = job.lease().unwrap();
        assert_eq!((lease.attempt, lease.node), (1, NODE));
        let mut held = job.clone();
        holding(&mut held, Some(lease), |job| {
            plugin_event(job, &progress(10, "going"))
        })
        .unwrap();
        assert_eq!(held.progress, 10);
        // Another node took the job over as attempt 2.
        let mut taken = job.clone();
        rescue(&mut taken, 1, Some(NODE), NOW).unwrap();
        start(&mut taken, NOW, Uuid::from_u128(8)).unwrap();
        let message = format!(
            "attempt 1 on node {NODE} no longer holds the job's lease (the job is running, attempt 2)"
        );
        assert_refused(
            taken.clone(),
            |job| {
                holding(job, Some(lease), |job| {
                    plugin_event(job, &progress(50, "late"))
                })
            },
            &message,
        );
        let result = Ok(json!({"late": true}));
        assert_refused(
            taken,
            |job| {
                holding(job, Some(lease), |job| {
                    end_attempt(job, &result, &[], false, Duration::ZERO, NOW)
                })
            },
            &message,
        );
    }

    #[test]
    fn cancel_of_a_finished_job_is_refused() {
        for status in [
            JobStatus::Completed,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ] {
            assert_refused(
                job(status),
                |job| cancel(job, NOW),
                &format!(
                    "the job is {}; only waiting, queued or running jobs can be cancelled",
                    status.as_str()
                ),
            );
        }
    }

    #[test]
    fn retry_queues_the_next_attempt_of_a_failed_or_cancelled_job() {
        for status in [JobStatus::Failed, JobStatus::Cancelled] {
            let mut job = job(status);
            job.run_at_ms = Some(NOW - 50_000);
            let change = retry(&mut job).unwrap();
            assert_eq!(job.status, JobStatus::Queued);
            assert_eq!((job.attempt, job.max_attempts), (2, 3));
            assert_eq!((job.progress, job.message.as_deref()), (0, None));
            assert_eq!(job.error, None);
            assert_eq!(job.run_at_ms, None);
            assert_eq!(job.started_at_ms, None);
            assert_eq!(job.finished_at_ms, None);
            assert_eq!(
                change.events,
                vec![event("status", json!({ "status": "queued", "attempt": 2 }))]
            );
            assert!(change.clear_result);
            assert_eq!(change.result, None);
        }
    }

    #[test]
    fn retry_after_the_last_attempt_raises_max_attempts() {
        let mut job = job(JobStatus::Failed);
        job.attempt = 3;
        let change = retry(&mut job).unwrap();
        assert_eq!((job.attempt, job.max_attempts), (4, 4));
        assert_eq!(
            change.events,
            vec![event("status", json!({ "status": "queued", "attempt": 4 }))]
        );
        assert!(change.clear_result);
    }

    #[test]
    fn retry_is_refused_unless_failed_or_cancelled() {
        for status in [JobStatus::Queued, JobStatus::Running, JobStatus::Completed] {
            assert_refused(
                job(status),
                retry,
                &format!(
                    "the job is {}; only failed or cancelled jobs can be retried",
                    status.as_str()
                ),
            );
        }
    }

    #[test]
    fn complete_records_the_result_and_the_artifacts() {
        let mut job = job(JobStatus::Running);
        // The error a previous attempt left.
        job.error = Some(error("retryable", "busy"));
        let value = json!({ "name": "Ada", "age": 36 });
        let artifacts = vec![ArtifactRecord {
            name: "portrait.png".into(),
            size: 1234,
            content_type: "image/png".into(),
        }];
        let change = complete(&mut job, &value, &artifacts, NOW).unwrap();
        assert_eq!(job.status, JobStatus::Completed);
        assert_eq!(job.progress, 100);
        assert_eq!(job.finished_at_ms, Some(NOW));
        assert_eq!(job.error, None);
        assert_eq!(job.artifacts, artifacts);
        assert_eq!(
            change.events,
            vec![event(
                "completed",
                json!({ "result": { "name": "Ada", "age": 36 } })
            )]
        );
        // The key order the plugin wrote is kept.
        assert_eq!(change.result.as_deref(), Some(r#"{"name":"Ada","age":36}"#));
        assert!(!change.clear_result);
    }

    #[test]
    fn complete_is_refused_unless_running() {
        for status in NOT_RUNNING {
            assert_refused(
                job(status),
                |job| complete(job, &json!(1), &[], NOW),
                &format!("job is {}", status.as_str()),
            );
        }
    }

    #[test]
    fn a_retryable_failure_with_attempts_left_queues_the_next_attempt_after_the_backoff() {
        let mut job = job(JobStatus::Running);
        let failure = JobFailure::new(FailureKind::Retryable, "busy");
        let change = fail_or_retry(&mut job, failure, Duration::from_secs(5), NOW);
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.attempt, 2);
        assert_eq!((job.progress, job.message.as_deref()), (0, None));
        assert_eq!(job.run_at_ms, Some(NOW + 5_000));
        assert_eq!(job.error, Some(error("retryable", "busy")));
        assert_eq!(job.finished_at_ms, None);
        assert_events(
            &change,
            vec![event(
                "status",
                json!({
                    "status": "queued",
                    "attempt": 2,
                    "run_at": "2023-11-14T22:13:25.000Z",
                    "error": { "kind": "retryable", "message": "busy" },
                }),
            )],
        );
    }

    #[test]
    fn a_retryable_failure_without_backoff_is_due_at_once() {
        let mut job = job(JobStatus::Running);
        let failure = JobFailure::new(FailureKind::Retryable, "busy");
        fail_or_retry(&mut job, failure, Duration::ZERO, NOW);
        assert_eq!((job.status, job.run_at_ms), (JobStatus::Queued, None));
    }

    #[test]
    fn a_retryable_failure_of_the_last_attempt_fails_the_job() {
        let mut job = job(JobStatus::Running);
        job.attempt = 3;
        let failure = JobFailure::new(FailureKind::Retryable, "busy");
        let change = fail_or_retry(&mut job, failure, Duration::from_secs(5), NOW);
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.attempt, 3);
        assert_eq!(job.finished_at_ms, Some(NOW));
        assert_eq!(job.run_at_ms, None);
        assert_eq!(job.error, Some(error("retryable", "busy")));
        assert_events(
            &change,
            vec![event(
                "failed",
                json!({ "error": { "kind": "retryable", "message": "busy" } }),
            )],
        );
    }

    #[test]
    fn a_final_failure_fails_the_job_at_once() {
        for kind in [
            FailureKind::Trap,
            FailureKind::Timeout,
            FailureKind::Permanent,
        ] {
            let mut job = job(JobStatus::Running);
            let failure = JobFailure::new(kind, "it broke");
            let change = fail_or_retry(&mut job, failure, Duration::from_secs(5), NOW);
            assert_eq!(job.status, JobStatus::Failed);
            assert_eq!(job.attempt, 1);
            assert_eq!(job.finished_at_ms, Some(NOW));
            assert_eq!(job.error, Some(error(kind.as_str(), "it broke")));
            assert_events(
                &change,
                vec![event(
                    "failed",
                    json!({ "error": { "kind": kind.as_str(), "message": "it broke" } }),
                )],
            );
        }
    }

    #[test]
    fn an_interrupted_attempt_with_attempts_left_is_queued_again_at_once() {
        let mut job = job(JobStatus::Running);
        let change = recover(&mut job, NOW);
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.attempt, 2);
        assert_eq!(job.run_at_ms, None);
        assert_eq!((job.progress, job.message.as_deref()), (0, None));
        let error = json!({
            "kind": "interrupted",
            "message": "the server stopped during attempt 1",
        });
        assert_events(
            &change,
            vec![event(
                "status",
                json!({ "status": "queued", "attempt": 2, "error": error }),
            )],
        );
    }

    #[test]
    fn an_interrupted_last_attempt_fails_the_job() {
        let mut job = job(JobStatus::Running);
        job.attempt = 3;
        let change = interrupt(&mut job, "the server shut down during attempt", NOW);
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.finished_at_ms, Some(NOW));
        assert_events(
            &change,
            vec![event(
                "failed",
                json!({ "error": {
                    "kind": "interrupted",
                    "message": "the server shut down during attempt 3",
                } }),
            )],
        );
    }

    #[test]
    fn end_attempt_completes_a_result_even_when_interrupted() {
        for interrupted in [false, true] {
            let mut job = job(JobStatus::Running);
            let change = end_attempt(
                &mut job,
                &Ok(json!("done")),
                &[],
                interrupted,
                Duration::from_secs(5),
                NOW,
            )
            .unwrap();
            assert_eq!(job.status, JobStatus::Completed);
            assert_eq!(
                change.events,
                vec![event("completed", json!({ "result": "done" }))]
            );
            assert_eq!(change.result.as_deref(), Some(r#""done""#));
        }
    }

    #[test]
    fn end_attempt_of_a_cancelled_attempt_cancels_the_job() {
        let mut job = job(JobStatus::Running);
        let failure = JobFailure::new(FailureKind::Cancelled, "the job was cancelled");
        let change = end_attempt(
            &mut job,
            &Err(failure),
            &[],
            false,
            Duration::from_secs(5),
            NOW,
        )
        .unwrap();
        assert_eq!(job.status, JobStatus::Cancelled);
        assert_eq!(job.finished_at_ms, Some(NOW));
        assert_eq!(job.attempt, 1);
        assert_events(
            &change,
            vec![event("cancelled", json!({ "status": "cancelled" }))],
        );
    }

    #[test]
    fn end_attempt_of_an_interrupted_attempt_requeues_whatever_its_failure() {
        for kind in [FailureKind::Cancelled, FailureKind::Trap] {
            let mut job = job(JobStatus::Running);
            let failure = JobFailure::new(kind, "stopped");
            let change = end_attempt(
                &mut job,
                &Err(failure),
                &[],
                true,
                Duration::from_secs(5),
                NOW,
            )
            .unwrap();
            assert_eq!(job.status, JobStatus::Queued);
            assert_eq!((job.attempt, job.run_at_ms), (2, None));
            let error = json!({
                "kind": "interrupted",
                "message": "the server shut down during attempt 1",
            });
            assert_events(
                &change,
                vec![event(
                    "status",
                    json!({ "status": "queued", "attempt": 2, "error": error }),
                )],
            );
        }
    }

    #[test]
    fn end_attempt_of_a_failure_retries_after_the_backoff_or_fails() {
        let mut job = job(JobStatus::Running);
        let failure = JobFailure::new(FailureKind::Retryable, "busy");
        end_attempt(
            &mut job,
            &Err(failure),
            &[],
            false,
            Duration::from_secs(5),
            NOW,
        )
        .unwrap();
        assert_eq!(job.status, JobStatus::Queued);
        assert_eq!(job.run_at_ms, Some(NOW + 5_000));

        let mut job = self::job(JobStatus::Running);
        let failure = JobFailure::new(FailureKind::InvalidInput, "no name");
        end_attempt(
            &mut job,
            &Err(failure),
            &[],
            false,
            Duration::from_secs(5),
            NOW,
        )
        .unwrap();
        assert_eq!(job.status, JobStatus::Failed);
        assert_eq!(job.error, Some(error("invalid_input", "no name")));
    }

    #[test]
    fn end_attempt_and_end_cancelled_are_refused_unless_running() {
        let outcomes = [
            Ok(json!("done")),
            Err(JobFailure::new(FailureKind::Retryable, "busy")),
            Err(JobFailure::new(FailureKind::Cancelled, "cancelled")),
        ];
        for status in NOT_RUNNING {
            let message = format!("job is {}", status.as_str());
            for outcome in &outcomes {
                for interrupted in [false, true] {
                    assert_refused(
                        job(status),
                        |job| end_attempt(job, outcome, &[], interrupted, Duration::ZERO, NOW),
                        &message,
                    );
                }
            }
            assert_refused(job(status), |job| end_cancelled(job, NOW), &message);
        }
    }

    #[test]
    fn progress_never_goes_backwards() {
        let mut job = job(JobStatus::Running);
        let progress = |percent, message: &str| PluginEvent::Progress {
            percent,
            message: message.into(),
        };
        let change = plugin_event(&mut job, &progress(60, "drafting")).unwrap();
        assert_eq!(
            (job.progress, job.message.as_deref()),
            (60, Some("drafting"))
        );
        assert_events(
            &change,
            vec![event(
                "progress",
                json!({ "progress": 60, "message": "drafting" }),
            )],
        );
        let change = plugin_event(&mut job, &progress(30, "polishing")).unwrap();
        assert_eq!(
            (job.progress, job.message.as_deref()),
            (60, Some("polishing"))
        );
        assert_events(
            &change,
            vec![event(
                "progress",
                json!({ "progress": 60, "message": "polishing" }),
            )],
        );
        assert_eq!(job.status, JobStatus::Running);
    }

    #[test]
    fn partials_and_tokens_are_logged_as_they_came() {
        let mut job = job(JobStatus::Running);
        let before = job.clone();
        let cases = [
            (
                PluginEvent::Partial {
                    name: "character-2".into(),
                    data: json!({ "name": "Ada" }),
                },
                event(
                    "partial",
                    json!({ "name": "character-2", "data": { "name": "Ada" } }),
                ),
            ),
            (
                PluginEvent::Token {
                    label: "story".into(),
                    delta: "Once".into(),
                },
                event("token", json!({ "label": "story", "delta": "Once" })),
            ),
            (
                PluginEvent::TokenReset {
                    label: "story".into(),
                },
                event(
                    "token",
                    json!({ "label": "story", "delta": "", "reset": true }),
                ),
            ),
        ];
        for (plugin, logged) in cases {
            let change = plugin_event(&mut job, &plugin).unwrap();
            assert_events(&change, vec![logged]);
        }
        assert_eq!(job, before);
    }

    #[test]
    fn a_replayed_call_is_counted_with_its_event() {
        let mut job = job(JobStatus::Running);
        job.usage.replayed_calls = 2;
        let change = plugin_event(
            &mut job,
            &PluginEvent::Replayed {
                index: 3,
                label: Some("story".into()),
            },
        )
        .unwrap();
        assert_eq!(job.usage.replayed_calls, 3);
        assert_events(
            &change,
            vec![event("replayed", json!({ "index": 3, "label": "story" }))],
        );
        let change = plugin_event(
            &mut job,
            &PluginEvent::Replayed {
                index: 4,
                label: None,
            },
        )
        .unwrap();
        assert_eq!(job.usage.replayed_calls, 4);
        assert_events(
            &change,
            vec![event("replayed", json!({ "index": 4, "label": null }))],
        );
    }

    #[test]
    fn plugin_events_are_refused_once_the_attempt_is_over() {
        let events = [
            PluginEvent::Progress {
                percent: 90,
                message: "late".into(),
            },
            PluginEvent::Partial {
                name: "x".into(),
                data: json!(1),
            },
            PluginEvent::Token {
                label: "x".into(),
                delta: "y".into(),
            },
            PluginEvent::TokenReset { label: "x".into() },
            PluginEvent::Replayed {
                index: 0,
                label: None,
            },
        ];
        for status in NOT_RUNNING {
            for plugin in &events {
                assert_refused(
                    job(status),
                    |job| plugin_event(job, plugin),
                    "the attempt is over",
                );
            }
        }
    }

    /// A job waiting on two dependencies, and those two (ids 1 and 2) as they ended.
    fn waiting_on_two(ended: [JobStatus; 2]) -> (JobRecord, [JobRecord; 2]) {
        let dependencies = ended.map(job);
        let ids = [Uuid::from_u128(1), Uuid::from_u128(2)];
        let dependencies = [0, 1].map(|i| JobRecord {
            id: ids[i],
            ..dependencies[i].clone()
        });
        let waiting = JobRecord {
            status: JobStatus::Waiting,
            depends_on: ids.to_vec(),
            waiting_for: ids.to_vec(),
            ..job(JobStatus::Queued)
        };
        (waiting, dependencies)
    }

    #[test]
    fn release_queues_a_job_once_its_last_dependency_completed() {
        let (mut waiting, [first, second]) =
            waiting_on_two([JobStatus::Completed, JobStatus::Completed]);
        let change = release(&mut waiting, &first, NOW).unwrap();
        assert_events(&change, vec![]);
        assert_eq!(waiting.status, JobStatus::Waiting);
        assert_eq!(waiting.waiting_for, [second.id]);
        let change = release(&mut waiting, &second, NOW).unwrap();
        assert_events(
            &change,
            vec![event("status", json!({"status": "queued", "attempt": 1}))],
        );
        assert_eq!(waiting.status, JobStatus::Queued);
        assert!(waiting.waiting_for.is_empty());
        // Applied twice (a retried commit), it changes nothing.
        assert_refused(
            waiting,
            |job| release(job, &second, NOW),
            &format!("the job does not wait for {}", second.id),
        );
    }

    #[test]
    fn release_fails_a_job_whose_dependency_failed_unless_it_runs_anyway() {
        let (mut waiting, [failed, _]) = waiting_on_two([JobStatus::Failed, JobStatus::Queued]);
        let mut anyway = waiting.clone();
        release(&mut waiting, &failed, NOW).unwrap();
        assert_eq!(waiting.status, JobStatus::Failed);
        assert_eq!(waiting.finished_at_ms, Some(NOW));
        assert!(waiting.waiting_for.is_empty());
        let error = waiting.error.unwrap();
        assert_eq!(error.kind, "dependency_failed");
        assert_eq!(
            error.message,
            format!("dependency {} (echo) failed (trap: boom)", failed.id)
        );
        anyway.on_dependency_failure = DependencyFailure::Run;
        release(&mut anyway, &failed, NOW).unwrap();
        assert_eq!(anyway.status, JobStatus::Waiting);
        assert_eq!(anyway.waiting_for.len(), 1);
    }

    #[test]
    fn a_waiting_job_is_cancelled_at_once_and_no_longer_released() {
        let (mut waiting, [done, _]) = waiting_on_two([JobStatus::Completed, JobStatus::Queued]);
        let change = cancel(&mut waiting, NOW).unwrap();
        assert_events(&change, vec![cancelled_event()]);
        assert_eq!(waiting.status, JobStatus::Cancelled);
        assert!(waiting.waiting_for.is_empty());
        assert!(release(&mut waiting, &done, NOW).is_err());
    }
}
