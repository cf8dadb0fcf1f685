//! The single writer: every state change goes through this thread, which groups whatever
//! changes are waiting into one redb transaction and one fsync (group commit).
//!
//! redb allows one write transaction at a time and an fsync costs ~0.1 ms or more, so
//! committing each change alone would cap Kiln at a few thousand changes per second.
//! Batching keeps every acknowledged change durable (callers get their reply only after
//! the commit) while thousands of changes share one fsync under load. Events are published
//! to the live [`Bus`] only after their commit, which is what lets SSE replay-then-live
//! be gap-free.

use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::bus::Bus;
use super::model::{JobEvent, JobRecord, NewEvent, now_ms};
use super::tables::*;
use super::{StoreError, storage};
use crate::llm::Usage;

/// Most changes one commit takes; bounds a transaction's size under a flood.
const MAX_BATCH: usize = 4096;

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

/// How an insert went.
#[derive(Clone, Debug)]
pub enum Inserted {
    /// A new job.
    Created(JobRecord),
    /// The idempotency key was already used: the job it created.
    Existing(JobRecord),
}

pub(super) enum Op {
    Insert {
        job: Box<JobRecord>,
        payload: String,
        event: NewEvent,
        reply: oneshot::Sender<Result<Inserted, StoreError>>,
    },
    Update {
        id: Uuid,
        mutate: Mutation,
        reply: Option<oneshot::Sender<Result<JobRecord, StoreError>>>,
    },
    Delete {
        ids: Vec<Uuid>,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    /// Stores one journaled LLM call (JSON bytes) of a job and adds what it cost to the
    /// job's `usage`, in one commit.
    Journal {
        job: Uuid,
        index: u64,
        entry: Vec<u8>,
        cost: Usage,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// Answers once everything sent before it is committed.
    Flush { reply: oneshot::Sender<()> },
}

/// How an event is kept in the `events` table.
#[derive(Serialize, Deserialize)]
pub(super) struct StoredEvent {
    pub name: String,
    pub data: Value,
    pub at_ms: u64,
}

enum Reply {
    Insert(
        oneshot::Sender<Result<Inserted, StoreError>>,
        Result<Inserted, StoreError>,
    ),
    Update(
        Option<oneshot::Sender<Result<JobRecord, StoreError>>>,
        Result<JobRecord, StoreError>,
    ),
    Journal(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Delete(
        oneshot::Sender<Result<usize, StoreError>>,
        Result<usize, StoreError>,
    ),
    Flush(oneshot::Sender<()>),
}

impl Reply {
    /// The reply slot of an op that was never applied.
    fn unapplied(op: Op) -> Reply {
        // The outcome is replaced by `fail` before it is sent.
        match op {
            Op::Insert { reply, .. } => Reply::Insert(reply, Err(StoreError::Closed)),
            Op::Update { reply, .. } => Reply::Update(reply, Err(StoreError::Closed)),
            Op::Delete { reply, .. } => Reply::Delete(reply, Err(StoreError::Closed)),
            Op::Journal { reply, .. } => Reply::Journal(reply, Err(StoreError::Closed)),
            Op::Flush { reply } => Reply::Flush(reply),
        }
    }

    /// Replaces the outcome with a storage failure (the commit failed).
    fn fail(self, error: &StoreError) -> Reply {
        match self {
            Reply::Insert(tx, _) => Reply::Insert(tx, Err(error.clone())),
            Reply::Update(tx, _) => Reply::Update(tx, Err(error.clone())),
            Reply::Delete(tx, _) => Reply::Delete(tx, Err(error.clone())),
            Reply::Journal(tx, _) => Reply::Journal(tx, Err(error.clone())),
            flush @ Reply::Flush(_) => flush,
        }
    }

    fn send(self) {
        match self {
            Reply::Insert(tx, r) => drop(tx.send(r)),
            Reply::Update(Some(tx), r) => drop(tx.send(r)),
            Reply::Update(None, Err(error)) => {
                // Fire-and-forget updates (progress) on a job that is gone or finished.
                tracing::debug!(%error, "detached update not applied");
            }
            Reply::Update(None, Ok(_)) => {}
            Reply::Delete(tx, r) => drop(tx.send(r)),
            Reply::Journal(tx, r) => drop(tx.send(r)),
            Reply::Flush(tx) => drop(tx.send(())),
        }
    }
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

/// The writer loop: runs on its own thread until every sender is dropped.
pub(super) fn run(
    db: Arc<Database>,
    mut rx: mpsc::UnboundedReceiver<Op>,
    bus: Arc<Bus>,
    mut feed: Feed,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        commit_batch(&db, batch, &bus, &mut feed);
    }
}

fn commit_batch(db: &Database, batch: Vec<Op>, bus: &Bus, feed: &mut Feed) {
    let mut replies = Vec::with_capacity(batch.len());
    let mut published = Vec::new();
    let mut ops = batch.into_iter();
    let before = *feed;
    let outcome = (|| -> Result<(), StoreError> {
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            let mut tables = Tables::open(&txn, feed)?;
            for op in ops.by_ref() {
                replies.push(tables.apply(op, &mut published)?);
            }
            tables.trim_feed()?;
        }
        txn.commit().map_err(storage)
    })();
    if outcome.is_err() {
        // Nothing of the batch was saved: its feed positions are free again.
        *feed = before;
    }
    match outcome {
        Ok(()) => {
            for event in published {
                bus.publish(Arc::new(event));
            }
            replies.into_iter().for_each(Reply::send);
        }
        Err(error) => {
            tracing::error!(%error, "a commit failed; its changes were not saved");
            // Ops applied before the failure and ops never reached both fail: nothing
            // of this batch was saved.
            let unapplied = ops.map(Reply::unapplied);
            for reply in replies.into_iter().chain(unapplied) {
                reply.fail(&error).send();
            }
        }
    }
}

/// The tables of one write transaction.
struct Tables<'txn, 'feed> {
    feed_state: &'feed mut Feed,
    feed: Table<'txn, u64, (u128, u64, u8)>,
    jobs: Table<'txn, u128, &'static [u8]>,
    payloads: Table<'txn, u128, &'static [u8]>,
    results: Table<'txn, u128, &'static [u8]>,
    events: Table<'txn, (u128, u64), &'static [u8]>,
    by_status: Table<'txn, (u8, u128), ()>,
    by_type: Table<'txn, (&'static str, u128), ()>,
    by_finish: Table<'txn, (u64, u128), ()>,
    by_tenant: Table<'txn, (&'static str, u128), ()>,
    idempotency: Table<'txn, &'static str, u128>,
    journal: Table<'txn, (u128, u64), &'static [u8]>,
}

impl<'txn, 'feed> Tables<'txn, 'feed> {
    fn open(txn: &'txn WriteTransaction, feed_state: &'feed mut Feed) -> Result<Self, StoreError> {
        Ok(Self {
            feed_state,
            feed: txn.open_table(FEED).map_err(storage)?,
            jobs: txn.open_table(JOBS).map_err(storage)?,
            payloads: txn.open_table(PAYLOADS).map_err(storage)?,
            results: txn.open_table(RESULTS).map_err(storage)?,
            events: txn.open_table(EVENTS).map_err(storage)?,
            by_status: txn.open_table(BY_STATUS).map_err(storage)?,
            by_type: txn.open_table(BY_TYPE).map_err(storage)?,
            by_finish: txn.open_table(BY_FINISH).map_err(storage)?,
            by_tenant: txn.open_table(BY_TENANT).map_err(storage)?,
            idempotency: txn.open_table(IDEMPOTENCY).map_err(storage)?,
            journal: txn.open_table(JOURNAL).map_err(storage)?,
        })
    }

    /// Applies one op. `Err` only for storage failures, which abort the whole batch;
    /// refusals (unknown job, conflicting state) are the op's own outcome.
    fn apply(&mut self, op: Op, published: &mut Vec<JobEvent>) -> Result<Reply, StoreError> {
        Ok(match op {
            Op::Insert {
                job,
                payload,
                event,
                reply,
            } => {
                let outcome = self.insert(*job, &payload, event, published)?;
                Reply::Insert(reply, Ok(outcome))
            }
            Op::Update { id, mutate, reply } => {
                let outcome = self.update(id, mutate, published)?;
                Reply::Update(reply, outcome)
            }
            Op::Delete { ids, reply } => {
                let mut deleted = 0;
                for id in ids {
                    deleted += usize::from(self.delete(id)?);
                }
                Reply::Delete(reply, Ok(deleted))
            }
            Op::Journal {
                job,
                index,
                entry,
                cost,
                reply,
            } => {
                let key = job.as_u128();
                self.journal
                    .insert((key, index), entry.as_slice())
                    .map_err(storage)?;
                if let Some(mut record) = self.read(key)? {
                    record.usage.add(&cost);
                    self.write(&record)?;
                }
                Reply::Journal(reply, Ok(()))
            }
            Op::Flush { reply } => Reply::Flush(reply),
        })
    }

    fn insert(
        &mut self,
        mut job: JobRecord,
        payload: &str,
        event: NewEvent,
        published: &mut Vec<JobEvent>,
    ) -> Result<Inserted, StoreError> {
        if let Some(key) = &job.idempotency_key {
            let existing = self.idempotency.get(key.as_str()).map_err(storage)?;
            if let Some(id) = existing.map(|guard| guard.value())
                && let Some(record) = self.read(id)?
            {
                return Ok(Inserted::Existing(record));
            }
        }
        let id = job.id.as_u128();
        self.payloads
            .insert(id, payload.as_bytes())
            .map_err(storage)?;
        self.by_status
            .insert((job.status.code(), id), ())
            .map_err(storage)?;
        self.by_type
            .insert((job.job_type.as_str(), id), ())
            .map_err(storage)?;
        if let Some(tenant) = &job.tenant {
            self.by_tenant
                .insert((tenant.as_str(), id), ())
                .map_err(storage)?;
        }
        if let Some(key) = &job.idempotency_key {
            self.idempotency.insert(key.as_str(), id).map_err(storage)?;
        }
        self.append(&mut job, vec![event], published)?;
        self.write(&job)?;
        Ok(Inserted::Created(job))
    }

    fn update(
        &mut self,
        id: Uuid,
        mutate: Mutation,
        published: &mut Vec<JobEvent>,
    ) -> Result<Result<JobRecord, StoreError>, StoreError> {
        let Some(mut job) = self.read(id.as_u128())? else {
            return Ok(Err(StoreError::NotFound));
        };
        let before = job.clone();
        let change = match mutate(&mut job) {
            Ok(change) => change,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let key = id.as_u128();
        if job.status != before.status {
            self.by_status
                .remove((before.status.code(), key))
                .map_err(storage)?;
            self.by_status
                .insert((job.status.code(), key), ())
                .map_err(storage)?;
        }
        if before.finished_at_ms != job.finished_at_ms {
            if let Some(at) = before.finished_at_ms {
                self.by_finish.remove((at, key)).map_err(storage)?;
            }
            if let Some(at) = job.finished_at_ms {
                self.by_finish.insert((at, key), ()).map_err(storage)?;
            }
        }
        if let Some(result) = &change.result {
            self.results
                .insert(key, result.as_bytes())
                .map_err(storage)?;
        } else if change.clear_result {
            self.results.remove(key).map_err(storage)?;
        }
        self.append(&mut job, change.events, published)?;
        self.write(&job)?;
        Ok(Ok(job))
    }

    fn delete(&mut self, id: Uuid) -> Result<bool, StoreError> {
        let key = id.as_u128();
        let Some(job) = self.read(key)? else {
            return Ok(false);
        };
        self.jobs.remove(key).map_err(storage)?;
        self.payloads.remove(key).map_err(storage)?;
        self.results.remove(key).map_err(storage)?;
        self.by_status
            .remove((job.status.code(), key))
            .map_err(storage)?;
        self.by_type
            .remove((job.job_type.as_str(), key))
            .map_err(storage)?;
        if let Some(tenant) = &job.tenant {
            self.by_tenant
                .remove((tenant.as_str(), key))
                .map_err(storage)?;
        }
        if let Some(at) = job.finished_at_ms {
            self.by_finish.remove((at, key)).map_err(storage)?;
        }
        if let Some(idem) = &job.idempotency_key {
            self.idempotency.remove(idem.as_str()).map_err(storage)?;
        }
        self.events
            .retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
            .map_err(storage)?;
        self.journal
            .retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
            .map_err(storage)?;
        Ok(true)
    }

    /// Drops the feed positions older than the retention window.
    fn trim_feed(&mut self) -> Result<(), StoreError> {
        let Feed { next, retention } = *self.feed_state;
        let keep_from = next.saturating_sub(retention.max(1));
        if keep_from > 1 {
            self.feed
                .retain_in(..keep_from, |_, _| false)
                .map_err(storage)?;
        }
        Ok(())
    }

    fn read(&self, id: u128) -> Result<Option<JobRecord>, StoreError> {
        let Some(bytes) = self.jobs.get(id).map_err(storage)? else {
            return Ok(None);
        };
        serde_json::from_slice(bytes.value())
            .map(Some)
            .map_err(|e| StoreError::Storage(format!("corrupt job record: {e}")))
    }

    fn write(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(job).map_err(|e| StoreError::Storage(e.to_string()))?;
        self.jobs
            .insert(job.id.as_u128(), bytes.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    fn append(
        &mut self,
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
            let bytes =
                serde_json::to_vec(&stored).map_err(|e| StoreError::Storage(e.to_string()))?;
            self.events
                .insert((job.id.as_u128(), job.last_seq), bytes.as_slice())
                .map_err(storage)?;
            let feed_seq = self.feed_state.next;
            self.feed_state.next += 1;
            self.feed
                .insert(
                    feed_seq,
                    (job.id.as_u128(), job.last_seq, job.status.code()),
                )
                .map_err(storage)?;
            published.push(JobEvent {
                job_id: job.id,
                seq: job.last_seq,
                feed_seq,
                name: stored.name,
                data: stored.data,
                at_ms,
                job_type: job.job_type.clone(),
                status: job.status,
                tenant: job.tenant.clone(),
                text: Default::default(),
                dashboard_text: Default::default(),
            });
        }
        Ok(())
    }
}
