//! Group commit, written once for both backends: the writer of each backend takes every
//! change waiting ([`drain`]), applies them one by one to a [`WriteSet`] (the open
//! transaction of redb, or the rows PostgreSQL will receive), commits once, and only then
//! answers the callers and publishes the events on the [`Bus`] ([`settle`]).
//!
//! Committing each change alone would cap Kiln at one fsync per change. Batching keeps
//! every acknowledged change durable (callers get their reply only after the commit) while
//! thousands of changes share one fsync under load. Publishing after the commit is what
//! lets SSE replay-then-live be gap-free.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::StoreError;
use super::bus::Bus;
use super::model::{
    BatchRecord, DeliveryRecord, JobEvent, JobRecord, JobStatus, Lease, NewEvent, now_ms, rfc3339,
};
use crate::llm::Usage;

/// Most changes one commit takes; bounds a transaction's size under a flood.
pub(super) const MAX_BATCH: usize = 4096;

/// What a mutation decided: the events to append and result changes.
#[derive(Debug, Default)]
pub struct Change {
    /// Appended to the job's log, in order, each with the next sequence number.
    pub events: Vec<NewEvent>,
    /// Stores the job's result (JSON text).
    pub result: Option<String>,
    /// Removes a stored result (a completed job being retried).
    pub clear_result: bool,
}

impl Change {
    /// A change that appends `events`.
    pub fn events(events: Vec<NewEvent>) -> Self {
        Self {
            events,
            ..Self::default()
        }
    }
}

/// A state change, applied to the current record inside the write transaction, so it
/// always sees the latest state: a cancel and a completion racing each other are
/// serialised here and the loser is refused.
pub type Mutation = Box<dyn FnOnce(&mut JobRecord) -> Result<Change, StoreError> + Send>;

/// A change nobody waits for (a plugin's progress): it can be applied again, so a commit
/// that failed because the database was unreachable is retried once it is back.
pub type DetachedMutation = Arc<dyn Fn(&mut JobRecord) -> Result<Change, StoreError> + Send + Sync>;

/// What happens to a job waiting on `dependency` (its `depends_on`) when that one has
/// ended, as of `now_ms`: the job state machine's transition (`jobs/lifecycle.rs`), given
/// to the store by the scheduler so that the writer applies it in the commit that ends the
/// dependency. A refusal (the job no longer waits for it) leaves the job as it is.
pub type ReleaseRule = fn(&mut JobRecord, &JobRecord, u64) -> Result<Change, StoreError>;

/// What a claim took: the jobs it started, and when the next delayed job of the claimed
/// queues is due.
#[derive(Clone, Debug, Default)]
pub struct Claimed {
    /// The started jobs, as the start left them.
    pub jobs: Vec<JobRecord>,
    /// The earliest `run_at` of a job of these queues waiting for its time, ms.
    pub next_due_ms: Option<u64>,
}

/// What a node asks a claim for: up to `max` due jobs of each of `queues` as of `now_ms`.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    pub queues: Vec<ClaimQueue>,
    pub max: usize,
    pub now_ms: u64,
}

/// A queue a claim takes jobs from, with its cluster-wide limits.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClaimQueue {
    pub name: String,
    /// Most jobs running at once (`max_concurrent`).
    pub limit: usize,
    /// Most jobs running at once with one concurrency key (`max_per_key`).
    pub max_per_key: Option<usize>,
}

/// How an insert went.
#[derive(Clone, Debug)]
pub enum Inserted {
    /// A new job.
    Created(JobRecord),
    /// The idempotency key was already used: the job it created.
    Existing(JobRecord),
}

/// A job to create: its record, payload and first event.
pub struct NewJob {
    pub job: JobRecord,
    pub payload: String,
    pub event: NewEvent,
}

/// One change sent to a writer.
pub(super) enum Op {
    /// Creates a job. One with `depends_on` is added to its dependencies' `dependants`,
    /// and released at once by `release` from those that have already ended.
    Insert {
        job: Box<JobRecord>,
        payload: String,
        event: NewEvent,
        release: Option<ReleaseRule>,
        reply: oneshot::Sender<Result<Inserted, StoreError>>,
    },
    /// Creates a batch and all its jobs (whose `batch` names it) in one commit.
    InsertBatch {
        batch: Box<BatchRecord>,
        jobs: Vec<NewJob>,
        reply: oneshot::Sender<Result<(BatchRecord, Vec<JobRecord>), StoreError>>,
    },
    /// Changes a job; when the change ends it, its dependants are released by `release`
    /// in the same commit.
    Update {
        id: Uuid,
        mutate: Mutation,
        release: Option<ReleaseRule>,
        reply: oneshot::Sender<Result<JobRecord, StoreError>>,
    },
    Detached {
        id: Uuid,
        mutate: DetachedMutation,
    },
    Delete {
        ids: Vec<Uuid>,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Stores one journaled LLM call (JSON bytes) of a job and adds what it cost to the
    /// job's `usage`, in one commit; refused unless the job still holds `lease`.
    Journal {
        job: Uuid,
        index: u64,
        entry: Vec<u8>,
        cost: Usage,
        lease: Option<Lease>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Starts due jobs with `start`, within their queues' cluster-wide limits, skipping
    /// jobs another node is claiming (PostgreSQL only).
    Claim {
        request: ClaimRequest,
        start: DetachedMutation,
        reply: oneshot::Sender<Result<Claimed, StoreError>>,
    },
    /// Answers once everything sent before it is committed.
    Flush {
        reply: oneshot::Sender<()>,
    },
}

impl Op {
    /// The jobs this op reads, so a backend can load them before applying a batch.
    pub(super) fn jobs(&self) -> Vec<Uuid> {
        match self {
            // A claim's jobs are chosen by the backend (see [`WriteSet::claimed`]).
            Op::InsertBatch { .. } | Op::Flush { .. } | Op::Claim { .. } => Vec::new(),
            // A new job's dependencies: it is added to their `dependants`.
            Op::Insert { job, .. } => job.depends_on.clone(),
            Op::Update { id, .. } | Op::Detached { id, .. } => vec![*id],
            Op::Journal { job, .. } => vec![*job],
            Op::Delete { ids, .. } => ids.clone(),
        }
    }

    /// The job this op may end, releasing its dependants (so PostgreSQL loads them with
    /// the batch).
    pub(super) fn may_end(&self) -> Option<Uuid> {
        match self {
            Op::Update {
                id,
                release: Some(_),
                ..
            } => Some(*id),
            _ => None,
        }
    }

    /// The op again, for a retry, when it can be applied twice (see [`DetachedMutation`]).
    pub(super) fn retryable(&self) -> Option<Op> {
        match self {
            Op::Detached { id, mutate } => Some(Op::Detached {
                id: *id,
                mutate: mutate.clone(),
            }),
            _ => None,
        }
    }
}

/// How an event is kept in a job's log.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredEvent {
    pub name: String,
    pub data: Value,
    pub at_ms: u64,
}

/// The writes a batch makes, as each backend performs them. Reads see the batch's own
/// earlier writes.
pub(super) trait WriteSet {
    /// A job's current record.
    fn job(&mut self, id: Uuid) -> Result<Option<JobRecord>, StoreError>;
    /// The job an idempotency slot names.
    fn idempotent(&mut self, key: &str) -> Result<Option<Uuid>, StoreError>;
    /// Writes a job's record; `before` is its previous state (`None`: a new job), for
    /// backends that keep their indexes by hand.
    fn put_job(&mut self, before: Option<&JobRecord>, job: &JobRecord) -> Result<(), StoreError>;
    /// A new job's payload and idempotency slot.
    fn put_payload(&mut self, job: &JobRecord, payload: &str) -> Result<(), StoreError>;
    /// Stores (`Some`) or removes (`None`) a job's result.
    fn put_result(&mut self, id: Uuid, result: Option<&str>) -> Result<(), StoreError>;
    /// Appends event `seq` to a job's log and its place `position` in the feed.
    fn put_event(
        &mut self,
        job: &JobRecord,
        seq: u64,
        position: u64,
        event: &StoredEvent,
    ) -> Result<(), StoreError>;
    /// Stores a journaled LLM call.
    fn put_journal(&mut self, job: Uuid, index: u64, entry: &[u8]) -> Result<(), StoreError>;
    /// Deletes a job with everything it owns.
    fn delete_job(&mut self, job: &JobRecord) -> Result<(), StoreError>;
    /// A batch's current record (PostgreSQL loads those of the batch's jobs up front).
    fn batch(&mut self, id: Uuid) -> Result<Option<BatchRecord>, StoreError>;
    /// Writes a batch's record.
    fn put_batch(&mut self, batch: &BatchRecord) -> Result<(), StoreError>;
    /// Appends event `seq` to a batch's log (kept with the jobs' logs, under the batch's
    /// id; never in the feed).
    fn put_batch_event(
        &mut self,
        batch: &BatchRecord,
        seq: u64,
        event: &StoredEvent,
    ) -> Result<(), StoreError>;
    /// Deletes a batch's record and log (its last job is gone).
    fn delete_batch(&mut self, id: Uuid) -> Result<(), StoreError>;
    /// Drops the feed positions below `keep_from`.
    fn trim_feed(&mut self, keep_from: u64) -> Result<(), StoreError>;
    /// The jobs the next claim of the batch takes (already chosen and locked by the
    /// backend when the batch was loaded), and when the next delayed one is due.
    fn claimed(&mut self) -> Result<(Vec<Uuid>, Option<u64>), StoreError>;
}

/// Where the feed of every job's events stands: the position the next event gets, and
/// how many of the newest positions are kept.
#[derive(Clone, Copy, Debug)]
pub(super) struct Feed {
    /// The next event's feed position (1 in a new database).
    pub next: u64,
    /// Positions kept; older ones are trimmed at each commit.
    pub retention: u64,
}

/// The answer an applied op is owed, sent once its batch is committed (or failed).
pub(super) enum Reply {
    Insert(
        oneshot::Sender<Result<Inserted, StoreError>>,
        Result<Inserted, StoreError>,
    ),
    InsertBatch(
        oneshot::Sender<Result<(BatchRecord, Vec<JobRecord>), StoreError>>,
        Result<(BatchRecord, Vec<JobRecord>), StoreError>,
    ),
    Update(
        oneshot::Sender<Result<JobRecord, StoreError>>,
        Result<JobRecord, StoreError>,
    ),
    /// A detached change, kept for a retry should the commit fail.
    Detached(Option<Op>, Result<(), StoreError>),
    Journal(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Delete(
        oneshot::Sender<Result<usize, StoreError>>,
        Result<usize, StoreError>,
    ),
    Claim(
        oneshot::Sender<Result<Claimed, StoreError>>,
        Result<Claimed, StoreError>,
    ),
    Flush(oneshot::Sender<()>),
}

impl Reply {
    /// The reply slot of an op that was never applied.
    pub(super) fn unapplied(op: Op) -> Reply {
        // The outcome is replaced by `fail` before it is sent.
        match op {
            Op::Insert { reply, .. } => Reply::Insert(reply, Err(StoreError::Closed)),
            Op::InsertBatch { reply, .. } => Reply::InsertBatch(reply, Err(StoreError::Closed)),
            Op::Update { reply, .. } => Reply::Update(reply, Err(StoreError::Closed)),
            detached @ Op::Detached { .. } => Reply::Detached(Some(detached), Ok(())),
            Op::Delete { reply, .. } => Reply::Delete(reply, Err(StoreError::Closed)),
            Op::Journal { reply, .. } => Reply::Journal(reply, Err(StoreError::Closed)),
            Op::Claim { reply, .. } => Reply::Claim(reply, Err(StoreError::Closed)),
            Op::Flush { reply } => Reply::Flush(reply),
        }
    }

    /// Answers with `error` (the commit failed), handing back a detached change to retry
    /// when the failure is the database being out of reach.
    pub(super) fn fail(self, error: &StoreError) -> Option<Op> {
        match self {
            Reply::Insert(tx, _) => drop(tx.send(Err(error.clone()))),
            Reply::InsertBatch(tx, _) => drop(tx.send(Err(error.clone()))),
            Reply::Update(tx, _) => drop(tx.send(Err(error.clone()))),
            Reply::Delete(tx, _) => drop(tx.send(Err(error.clone()))),
            Reply::Journal(tx, _) => drop(tx.send(Err(error.clone()))),
            Reply::Claim(tx, _) => drop(tx.send(Err(error.clone()))),
            Reply::Detached(op, _) => {
                if matches!(error, StoreError::Unavailable(_)) {
                    return op;
                }
                tracing::warn!(%error, "a progress event was not saved");
            }
            // A flush answers "everything before me is settled", which it is.
            Reply::Flush(tx) => drop(tx.send(())),
        }
        None
    }

    fn send(self) {
        match self {
            Reply::Insert(tx, r) => drop(tx.send(r)),
            Reply::InsertBatch(tx, r) => drop(tx.send(r)),
            Reply::Update(tx, r) => drop(tx.send(r)),
            Reply::Detached(_, Err(error)) => {
                // Progress of a job that is gone or finished.
                tracing::debug!(%error, "detached update not applied");
            }
            Reply::Detached(_, Ok(())) => {}
            Reply::Delete(tx, r) => drop(tx.send(r)),
            Reply::Journal(tx, r) => drop(tx.send(r)),
            Reply::Claim(tx, r) => drop(tx.send(r)),
            Reply::Flush(tx) => drop(tx.send(())),
        }
    }
}

/// Waits for the first op, then takes whatever else is waiting, up to [`MAX_BATCH`].
/// `None` once every sender is gone.
pub(super) async fn next_batch(rx: &mut mpsc::UnboundedReceiver<Op>) -> Option<Vec<Op>> {
    let first = rx.recv().await?;
    Some(drain(first, rx))
}

/// `first` and whatever else is waiting, up to [`MAX_BATCH`].
pub(super) fn drain(first: Op, rx: &mut mpsc::UnboundedReceiver<Op>) -> Vec<Op> {
    let mut batch = vec![first];
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
    batch
}

/// One batch being applied: its replies and the events it will publish.
pub(super) struct Applied {
    pub replies: Vec<Reply>,
    /// Jobs' events, and batches' events (those with no feed position, `feed_seq` 0).
    pub published: Vec<JobEvent>,
    /// Jobs the batch queued because their dependencies ended, for the scheduler.
    pub released: Vec<JobRecord>,
    /// The feed as it was before the batch, restored if the commit fails.
    feed_before: Feed,
}

impl Applied {
    pub(super) fn new(feed: &Feed) -> Self {
        Self {
            replies: Vec::new(),
            published: Vec::new(),
            released: Vec::new(),
            feed_before: *feed,
        }
    }
}

/// Applies `ops` to `set` in order, then trims the feed. `Err` only for storage failures,
/// which abort the whole batch; refusals (unknown job, conflicting state) are each op's own
/// outcome. The ops not reached are returned with the error.
pub(super) fn apply_all(
    set: &mut impl WriteSet,
    feed: &mut Feed,
    ops: Vec<Op>,
    applied: &mut Applied,
) -> Result<(), (StoreError, Vec<Op>)> {
    let mut ops = ops.into_iter();
    while let Some(op) = ops.next() {
        let retry = op.retryable();
        match apply(set, feed, op, &mut applied.published, &mut applied.released) {
            Ok(reply) => applied.replies.push(reply),
            Err(error) => {
                // The failed op itself: keep a detached one for the retry.
                if let Some(retry) = retry {
                    applied.replies.push(Reply::Detached(Some(retry), Ok(())));
                }
                return Err((error, ops.collect()));
            }
        }
    }
    let keep_from = feed.next.saturating_sub(feed.retention.max(1));
    if keep_from > 1 {
        set.trim_feed(keep_from).map_err(|e| (e, Vec::new()))?;
    }
    Ok(())
}

/// Answers a batch once its commit is known: on success publishes its events and sends
/// the replies; on failure fails every op of it (nothing of it was saved), restores the
/// feed, and returns the detached changes to retry.
pub(super) fn settle(
    outcome: Result<(), StoreError>,
    applied: Applied,
    unapplied: Vec<Op>,
    feed: &mut Feed,
    bus: &Bus,
) -> Vec<Op> {
    match outcome {
        Ok(()) => {
            for event in applied.published {
                if event.feed_seq == 0 {
                    // A batch's event: for its own followers, not the feed's.
                    bus.publish_job(Arc::new(event));
                } else {
                    bus.publish(Arc::new(event));
                }
            }
            for job in applied.released {
                bus.publish_released(job);
            }
            applied.replies.into_iter().for_each(Reply::send);
            Vec::new()
        }
        Err(error) => {
            *feed = applied.feed_before;
            tracing::error!(%error, "a commit failed; its changes were not saved");
            applied
                .replies
                .into_iter()
                .chain(unapplied.into_iter().map(Reply::unapplied))
                .filter_map(|reply| reply.fail(&error))
                .collect()
        }
    }
}

fn apply(
    set: &mut impl WriteSet,
    feed: &mut Feed,
    op: Op,
    published: &mut Vec<JobEvent>,
    released: &mut Vec<JobRecord>,
) -> Result<Reply, StoreError> {
    Ok(match op {
        Op::Insert {
            job,
            payload,
            event,
            release,
            reply,
        } => {
            let new = NewJob {
                job: *job,
                payload,
                event,
            };
            let inserted = insert(set, feed, new, release, published)?;
            Reply::Insert(reply, inserted)
        }
        Op::InsertBatch { batch, jobs, reply } => {
            Reply::InsertBatch(reply, Ok(insert_batch(set, feed, *batch, jobs, published)?))
        }
        Op::Update {
            id,
            mutate,
            release,
            reply,
        } => {
            let outcome = change(set, feed, id, mutate, published)?;
            if let (Ok((before, job)), Some(rule)) = (&outcome, release)
                && ended(before, job)
            {
                release_dependants(set, feed, job.clone(), rule, published, released)?;
            }
            Reply::Update(reply, outcome.map(|(_, job)| job))
        }
        Op::Detached { id, mutate } => {
            let outcome = change(set, feed, id, |job| mutate(job), published)?;
            Reply::Detached(None, outcome.map(drop))
        }
        Op::Delete { ids, reply } => {
            let mut deleted = 0;
            for id in ids {
                if let Some(job) = set.job(id)? {
                    set.delete_job(&job)?;
                    forget_in_batch(set, &job, published)?;
                    deleted += 1;
                }
            }
            Reply::Delete(reply, Ok(deleted))
        }
        Op::Journal {
            job,
            index,
            entry,
            cost,
            lease,
            reply,
        } => {
            let before = set.job(job)?;
            if let Some(lease) = lease
                && before.as_ref().and_then(JobRecord::lease) != Some(lease)
            {
                let lost = StoreError::Conflict(format!(
                    "attempt {} no longer holds the job's lease; its call is not journaled",
                    lease.attempt
                ));
                return Ok(Reply::Journal(reply, Err(lost)));
            }
            set.put_journal(job, index, &entry)?;
            if let Some(before) = before {
                let mut record = before.clone();
                record.usage.add(&cost);
                set.put_job(Some(&before), &record)?;
            }
            Reply::Journal(reply, Ok(()))
        }
        Op::Claim { start, reply, .. } => {
            let (ids, next_due_ms) = match set.claimed() {
                Ok(claimed) => claimed,
                Err(refused) => return Ok(Reply::Claim(reply, Err(refused))),
            };
            let mut jobs = Vec::with_capacity(ids.len());
            for id in ids {
                // Refused only if the batch changed the job before (a cancel in it).
                if let Ok((_, job)) = change(set, feed, id, |job| start(job), published)? {
                    jobs.push(job);
                }
            }
            Reply::Claim(reply, Ok(Claimed { jobs, next_due_ms }))
        }
        Op::Flush { reply } => Reply::Flush(reply),
    })
}

/// Stores a new job, or answers with the one its idempotency key already made. A job with
/// dependencies joins the `dependants` of those still to end, and is released at once from
/// those that have ended (it may leave this commit queued, or failed: the submitter, told
/// so, queues it). A dependency gone since the submit checked it (expired) refuses the
/// insert.
fn insert(
    set: &mut impl WriteSet,
    feed: &mut Feed,
    new: NewJob,
    release: Option<ReleaseRule>,
    published: &mut Vec<JobEvent>,
) -> Result<Result<Inserted, StoreError>, StoreError> {
    let NewJob {
        mut job,
        payload,
        event,
    } = new;
    if let Some(key) = &job.idempotency_key
        && let Some(id) = set.idempotent(key)?
        && let Some(existing) = set.job(id)?
    {
        return Ok(Ok(Inserted::Existing(existing)));
    }
    let mut dependencies = Vec::with_capacity(job.depends_on.len());
    for &id in &job.depends_on {
        match set.job(id)? {
            Some(dependency) => dependencies.push(dependency),
            None => {
                return Ok(Err(StoreError::Conflict(format!(
                    "depends_on: job {id} no longer exists"
                ))));
            }
        }
    }
    set.put_payload(&job, &payload)?;
    append(set, feed, &mut job, vec![event], published)?;
    set.put_job(None, &job)?;
    let mut ended = Vec::new();
    for mut dependency in dependencies {
        if dependency.status.is_terminal() {
            ended.push(dependency);
        } else {
            let before = dependency.clone();
            dependency.dependants.push(job.id);
            set.put_job(Some(&before), &dependency)?;
        }
    }
    let Some(rule) = release else {
        return Ok(Ok(Inserted::Created(job)));
    };
    let now = now_ms();
    for dependency in ended {
        if let Ok((_, changed)) =
            change(set, feed, job.id, |j| rule(j, &dependency, now), published)?
        {
            job = changed;
        }
    }
    Ok(Ok(Inserted::Created(job)))
}

/// Whether a change ended the job (or ended a new attempt of it).
fn ended(before: &JobRecord, job: &JobRecord) -> bool {
    job.status.is_terminal() && (!before.status.is_terminal() || before.attempt != job.attempt)
}

/// Releases the jobs waiting on `dependency`, which has just ended, by `rule`; those it
/// fails release theirs in turn. Those it queues are handed to the scheduler.
fn release_dependants(
    set: &mut impl WriteSet,
    feed: &mut Feed,
    dependency: JobRecord,
    rule: ReleaseRule,
    published: &mut Vec<JobEvent>,
    released: &mut Vec<JobRecord>,
) -> Result<(), StoreError> {
    let now = now_ms();
    // A worklist rather than recursion: a failure may run down a long chain.
    let mut ended_jobs = vec![dependency];
    while let Some(dependency) = ended_jobs.pop() {
        for &id in &dependency.dependants {
            let Ok((before, job)) =
                change(set, feed, id, |j| rule(j, &dependency, now), published)?
            else {
                continue;
            };
            if job.status == JobStatus::Queued {
                released.push(job);
            } else if ended(&before, &job) && !job.dependants.is_empty() {
                ended_jobs.push(job);
            }
        }
    }
    Ok(())
}

/// Applies `mutate` to job `id` and writes what it changed: `Ok(Err)` when it refused (or
/// there is no such job), else the job before and after.
fn change(
    set: &mut impl WriteSet,
    feed: &mut Feed,
    id: Uuid,
    mutate: impl FnOnce(&mut JobRecord) -> Result<Change, StoreError>,
    published: &mut Vec<JobEvent>,
) -> Result<Result<(JobRecord, JobRecord), StoreError>, StoreError> {
    let Some(before) = set.job(id)? else {
        return Ok(Err(StoreError::NotFound));
    };
    let mut job = before.clone();
    let change = match mutate(&mut job) {
        Ok(change) => change,
        Err(refusal) => return Ok(Err(refusal)),
    };
    if let Some(result) = &change.result {
        set.put_result(id, Some(result))?;
    } else if change.clear_result {
        set.put_result(id, None)?;
    }
    append(set, feed, &mut job, change.events, published)?;
    queue_webhook(&before, &mut job);
    set.put_job(Some(&before), &job)?;
    track_in_batch(set, &before, &job, published)?;
    Ok(Ok((before, job)))
}

/// The outbox: a job with a webhook that reaches a final state gets a delivery of that
/// end, due now, in the same commit (so an end is never committed without it).
fn queue_webhook(before: &JobRecord, job: &mut JobRecord) {
    if ended(before, job) && job.webhook.is_some() {
        let delivery = DeliveryRecord::of_end(job, job.finished_at_ms.unwrap_or_else(now_ms));
        if let Some(webhook) = &mut job.webhook {
            webhook.delivery = Some(delivery);
        }
    }
}

/// Stores a new batch and its jobs. Their first events go to the jobs' logs and the feed
/// only: the batch's own log begins with their changes.
fn insert_batch(
    set: &mut impl WriteSet,
    feed: &mut Feed,
    mut batch: BatchRecord,
    jobs: Vec<NewJob>,
    published: &mut Vec<JobEvent>,
) -> Result<(BatchRecord, Vec<JobRecord>), StoreError> {
    let mut records = Vec::with_capacity(jobs.len());
    for NewJob {
        mut job,
        payload,
        event,
    } in jobs
    {
        set.put_payload(&job, &payload)?;
        append(set, feed, &mut job, vec![event], published)?;
        set.put_job(None, &job)?;
        records.push(job);
    }
    batch.jobs = records.len() as u64;
    batch.counts = Default::default();
    for job in &records {
        *batch.counts.of(job.status) += 1;
        batch.progress_sum += BatchRecord::progress_share(job);
    }
    set.put_batch(&batch)?;
    Ok((batch, records))
}

/// Keeps the batch of a changed job up to date, in the same commit: its counts and
/// progress, and its log (the job's status change or progress, then `batch_completed`
/// once every job is final).
fn track_in_batch(
    set: &mut impl WriteSet,
    before: &JobRecord,
    job: &JobRecord,
    published: &mut Vec<JobEvent>,
) -> Result<(), StoreError> {
    let Some(id) = job.batch else {
        return Ok(());
    };
    let progressed = before.progress != job.progress || before.message != job.message;
    if before.status == job.status && !progressed {
        return Ok(());
    }
    let Some(mut batch) = set.batch(id)? else {
        return Ok(());
    };
    batch.counts.moved(before.status, Some(job.status));
    batch.progress_sum = (batch.progress_sum + BatchRecord::progress_share(job))
        .saturating_sub(BatchRecord::progress_share(before));
    let event = if before.status == job.status {
        NewEvent::new(
            batch_event_names::PROGRESS,
            json!({
                "job_id": job.id,
                "progress": job.progress,
                "message": job.message,
                "batch_progress": batch.progress(),
            }),
        )
    } else {
        let mut data = json!({
            "job_id": job.id,
            "status": job.status.as_str(),
            "attempt": job.attempt,
            "batch_progress": batch.progress(),
            "counts": batch.counts,
        });
        if let Some(error) = &job.error
            && job.status != JobStatus::Completed
        {
            data["error"] = json!(error);
        }
        NewEvent::new(batch_event_names::STATUS, data)
    };
    save_batch(set, batch, vec![event], published)
}

/// Takes a deleted job out of its batch's counts; deletes the batch with its last job.
fn forget_in_batch(
    set: &mut impl WriteSet,
    job: &JobRecord,
    published: &mut Vec<JobEvent>,
) -> Result<(), StoreError> {
    let Some(id) = job.batch else {
        return Ok(());
    };
    let Some(mut batch) = set.batch(id)? else {
        return Ok(());
    };
    batch.jobs = batch.jobs.saturating_sub(1);
    if batch.jobs == 0 {
        return set.delete_batch(id);
    }
    batch.counts.moved(job.status, None);
    batch.progress_sum = batch
        .progress_sum
        .saturating_sub(BatchRecord::progress_share(job));
    save_batch(set, batch, Vec::new(), published)
}

/// Appends `events` to the batch's log, then `batch_completed` if it has just become
/// finished (a retry that reopens it clears `finished_at_ms`), and writes its record.
fn save_batch(
    set: &mut impl WriteSet,
    mut batch: BatchRecord,
    mut events: Vec<NewEvent>,
    published: &mut Vec<JobEvent>,
) -> Result<(), StoreError> {
    let at_ms = now_ms();
    match (batch.is_finished(), batch.finished_at_ms) {
        (true, None) => {
            batch.finished_at_ms = Some(at_ms);
            events.push(NewEvent::new(
                batch_event_names::COMPLETED,
                json!({
                    "counts": batch.counts,
                    "progress": batch.progress(),
                    "finished_at": rfc3339(at_ms),
                }),
            ));
        }
        (false, Some(_)) => batch.finished_at_ms = None,
        _ => {}
    }
    for event in events {
        batch.last_seq += 1;
        let stored = StoredEvent {
            name: event.name.to_string(),
            data: event.data,
            at_ms,
        };
        set.put_batch_event(&batch, batch.last_seq, &stored)?;
        published.push(super::batch_event(&batch, batch.last_seq, stored));
    }
    set.put_batch(&batch)
}

/// The names of the events of a batch's log.
pub mod batch_event_names {
    /// One of its jobs changed status: `{job_id, status, attempt, error?, batch_progress,
    /// counts}`.
    pub const STATUS: &str = "status";
    /// One of its running jobs reported progress: `{job_id, progress, message,
    /// batch_progress}`.
    pub const PROGRESS: &str = "progress";
    /// Every job is final: `{counts, progress, finished_at}`. Ends the stream.
    pub const COMPLETED: &str = "batch_completed";
}

fn append(
    set: &mut impl WriteSet,
    feed: &mut Feed,
    job: &mut JobRecord,
    events: Vec<NewEvent>,
    published: &mut Vec<JobEvent>,
) -> Result<(), StoreError> {
    let at_ms = now_ms();
    for event in events {
        job.last_seq += 1;
        let stored = StoredEvent {
            name: event.name.to_string(),
            data: event.data,
            at_ms,
        };
        let position = feed.next;
        set.put_event(job, job.last_seq, position, &stored)?;
        feed.next += 1;
        published.push(JobEvent {
            job_id: job.id,
            seq: job.last_seq,
            feed_seq: position,
            name: stored.name,
            data: stored.data,
            at_ms,
            job_type: job.job_type.clone(),
            status: job.status,
            tenant: job.tenant.clone(),
            encodings: Default::default(),
        });
    }
    Ok(())
}
