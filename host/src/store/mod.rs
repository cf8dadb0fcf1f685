//! Durable state in one redb file: jobs, their payloads and results, their event logs, the
//! listing indexes and the idempotency keys.
//!
//! This module owns every transaction. Reads open short read transactions (MVCC: they
//! never wait for the writer); every write goes to the single writer thread in
//! [`writer`], which commits in groups and publishes committed events on the [`Bus`].

mod bus;
mod files;
mod model;
mod tables;
mod writer;

pub use bus::Bus;
pub use files::{ArtifactRecord, BlobDir, FileRecord};
pub use model::{
    ErrorInfo, JobEvent, JobRecord, JobStatus, NewEvent, event_names, idempotency_slot, now_ms,
    rfc3339,
};
pub use writer::{Change, Inserted, Mutation};

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use tables::*;
use writer::{Op, StoredEvent};

/// Why a store call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No such job.
    #[error("no such job")]
    NotFound,
    /// The change is not allowed in the job's current state.
    #[error("{0}")]
    Conflict(String),
    /// redb failed; the change was not saved.
    #[error("storage error: {0}")]
    Storage(String),
    /// The writer has stopped (the process is shutting down).
    #[error("the store is closed")]
    Closed,
}

pub(crate) fn storage(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(error.into().to_string())
}

/// What to list.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only jobs with this status.
    pub status: Option<JobStatus>,
    /// Only jobs of this type.
    pub job_type: Option<String>,
    /// Only jobs of this tenant.
    pub tenant: Option<String>,
    /// Page size.
    pub limit: usize,
    /// Only jobs older than this one (the previous page's last id).
    pub before: Option<Uuid>,
}

/// A page of jobs, newest first.
#[derive(Clone, Debug)]
pub struct Page {
    /// The jobs.
    pub jobs: Vec<JobRecord>,
    /// Pass as `before` to get the next page; `None` on the last page.
    pub next: Option<Uuid>,
}

/// The store. Share it behind an `Arc`.
pub struct Store {
    db: Arc<Database>,
    tx: Option<mpsc::UnboundedSender<Op>>,
    writer: Option<JoinHandle<()>>,
    /// Committed events, live.
    pub bus: Arc<Bus>,
    /// Upload and artifact bytes, beside the database file.
    pub blobs: BlobDir,
}

impl Store {
    /// Opens (or creates) the database at `path` and starts the writer.
    /// `bus_capacity` is how far an SSE subscriber may lag before it is cut off;
    /// `feed_retention` how many of the newest events the all-jobs feed keeps for clients
    /// resuming `/v1/events`.
    pub fn open(path: &Path, bus_capacity: usize, feed_retention: u64) -> anyhow::Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the data dir {}", dir.display()))?;
        }
        let db = Database::create(path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        // Create every table up front so readers never meet a missing one.
        let txn = db.begin_write()?;
        txn.open_table(JOBS)?;
        txn.open_table(PAYLOADS)?;
        txn.open_table(RESULTS)?;
        txn.open_table(EVENTS)?;
        txn.open_table(BY_STATUS)?;
        txn.open_table(BY_TYPE)?;
        txn.open_table(BY_FINISH)?;
        txn.open_table(BY_TENANT)?;
        txn.open_table(IDEMPOTENCY)?;
        txn.open_table(JOURNAL)?;
        txn.open_table(FILES)?;
        txn.open_table(FILES_BY_EXPIRY)?;
        // Added after 0.1.0's first release: opening an older file creates it empty.
        let next_feed = {
            let feed = txn.open_table(FEED)?;
            feed.last()?.map_or(1, |(key, _)| key.value() + 1)
        };
        txn.commit()?;
        let feed = writer::Feed {
            next: next_feed,
            retention: feed_retention.max(1),
        };

        let db = Arc::new(db);
        let bus = Arc::new(Bus::new(bus_capacity));
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = std::thread::Builder::new()
            .name("kiln-writer".into())
            .spawn({
                let db = db.clone();
                let bus = bus.clone();
                move || writer::run(db, rx, bus, feed)
            })
            .context("starting the writer thread")?;
        Ok(Self {
            db,
            tx: Some(tx),
            writer: Some(writer),
            bus,
            blobs: BlobDir::new(path.parent().unwrap_or(Path::new("."))),
        })
    }

    fn send(&self, op: Op) -> Result<(), StoreError> {
        self.tx
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(op)
            .map_err(|_| StoreError::Closed)
    }

    /// Stores a new job with its payload and first event; durable when this returns. With
    /// an idempotency key already used, stores nothing and returns the existing job.
    pub async fn insert(
        &self,
        job: JobRecord,
        payload: String,
        event: NewEvent,
    ) -> Result<Inserted, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Insert {
            job: Box::new(job),
            payload,
            event,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Applies `mutate` to the job's current record; durable when this returns.
    pub async fn update(
        &self,
        id: Uuid,
        mutate: impl FnOnce(&mut JobRecord) -> Result<Change, StoreError> + Send + 'static,
    ) -> Result<JobRecord, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Update {
            id,
            mutate: Box::new(mutate),
            reply: Some(reply),
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `mutate` without waiting for its commit: for progress events, which a
    /// plugin emits without waiting. Order with later changes of the job is kept.
    pub fn update_detached(
        &self,
        id: Uuid,
        mutate: impl FnOnce(&mut JobRecord) -> Result<Change, StoreError> + Send + 'static,
    ) {
        let _ = self.send(Op::Update {
            id,
            mutate: Box::new(mutate),
            reply: None,
        });
    }

    /// Deletes jobs with their payloads, results, events and keys.
    pub async fn delete(&self, ids: Vec<Uuid>) -> Result<usize, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Delete { ids, reply })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores a job's journaled LLM call `index` (JSON bytes) and adds `cost` (the call
    /// and its tokens) to the job's `usage` in the same commit, so usage is exact however
    /// the attempt ends; durable when this returns.
    pub async fn journal_call(
        &self,
        job: Uuid,
        index: u64,
        entry: Vec<u8>,
        cost: crate::llm::Usage,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Journal {
            job,
            index,
            entry,
            cost,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// A job's journaled LLM calls, by index, as stored.
    pub fn journal(&self, job: Uuid) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(JOURNAL).map_err(storage)?;
        let id = job.as_u128();
        table
            .range((id, 0)..=(id, u64::MAX))
            .map_err(storage)?
            .map(|entry| {
                let (key, value) = entry.map_err(storage)?;
                Ok((key.value().1, value.value().to_vec()))
            })
            .collect()
    }

    /// Waits until every change sent before this call is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Flush { reply })?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// One job.
    pub fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let jobs = txn.open_table(JOBS).map_err(storage)?;
        read_job(&jobs, id.as_u128())
    }

    /// A job's payload, JSON text.
    pub fn payload(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        self.read_text(PAYLOADS, id)
    }

    /// A completed job's result, JSON text.
    pub fn result(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        self.read_text(RESULTS, id)
    }

    fn read_text(
        &self,
        table: redb::TableDefinition<u128, &[u8]>,
        id: Uuid,
    ) -> Result<Option<String>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(table).map_err(storage)?;
        let value = table.get(id.as_u128()).map_err(storage)?;
        Ok(value.map(|v| String::from_utf8_lossy(v.value()).into_owned()))
    }

    /// Up to `limit` events of a job with a sequence number above `after`, in order.
    pub fn events_after(
        &self,
        job: &JobRecord,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let id = job.id.as_u128();
        let start = after.saturating_add(1);
        let mut out = Vec::new();
        for entry in events
            .range((id, start)..=(id, u64::MAX))
            .map_err(storage)?
            .take(limit)
        {
            let (key, value) = entry.map_err(storage)?;
            let stored: StoredEvent = serde_json::from_slice(value.value())
                .map_err(|e| StoreError::Storage(format!("corrupt event: {e}")))?;
            out.push(JobEvent {
                job_id: job.id,
                seq: key.value().1,
                feed_seq: 0,
                name: stored.name,
                data: stored.data,
                at_ms: stored.at_ms,
                job_type: job.job_type.clone(),
                status: job.status,
                tenant: job.tenant.clone(),
                text: Default::default(),
                dashboard_text: Default::default(),
            });
        }
        Ok(out)
    }

    /// The first and last position the feed of every job's events still holds (`None`
    /// before the first event).
    pub fn feed_bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let feed = txn.open_table(FEED).map_err(storage)?;
        let first = feed.first().map_err(storage)?.map(|(k, _)| k.value());
        let last = feed.last().map_err(storage)?.map(|(k, _)| k.value());
        Ok(first.zip(last))
    }

    /// Up to `limit` events of the feed with a position above `after`, in order; events
    /// of jobs deleted since are left out.
    pub fn feed_after(&self, after: u64, limit: usize) -> Result<Vec<JobEvent>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let feed = txn.open_table(FEED).map_err(storage)?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let jobs = txn.open_table(JOBS).map_err(storage)?;
        let mut records: std::collections::HashMap<u128, Option<JobRecord>> = Default::default();
        let mut out = Vec::new();
        for entry in feed
            .range(after.saturating_add(1)..)
            .map_err(storage)?
            .take(limit)
        {
            let (key, value) = entry.map_err(storage)?;
            let (job_id, seq, code) = value.value();
            let job = match records.entry(job_id) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(read_job(&jobs, job_id)?),
            };
            let (Some(job), Some(bytes)) =
                (job.as_ref(), events.get((job_id, seq)).map_err(storage)?)
            else {
                continue;
            };
            let stored: StoredEvent = serde_json::from_slice(bytes.value())
                .map_err(|e| StoreError::Storage(format!("corrupt event: {e}")))?;
            out.push(JobEvent {
                job_id: job.id,
                seq,
                feed_seq: key.value(),
                name: stored.name,
                data: stored.data,
                at_ms: stored.at_ms,
                job_type: job.job_type.clone(),
                status: JobStatus::from_code(code).unwrap_or(job.status),
                tenant: job.tenant.clone(),
                text: Default::default(),
                dashboard_text: Default::default(),
            });
        }
        Ok(out)
    }

    /// A page of jobs, newest first.
    pub fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let jobs = txn.open_table(JOBS).map_err(storage)?;
        let before = query.before.map_or(u128::MAX, |id| id.as_u128());
        let limit = query.limit.max(1);
        // Walk the most selective index, newest first, and check the other filter on
        // the record.
        let ids: Box<dyn Iterator<Item = Result<u128, StoreError>>> =
            match (&query.status, &query.job_type) {
                _ if query.tenant.is_some() => {
                    let tenant = query.tenant.as_deref().unwrap_or_default();
                    let index = txn.open_table(BY_TENANT).map_err(storage)?;
                    let range = index
                        .range((tenant, 0)..(tenant, before))
                        .map_err(storage)?;
                    Box::new(
                        range
                            .rev()
                            .map(|e| e.map(|(k, _)| k.value().1).map_err(storage)),
                    )
                }
                (Some(status), _) => {
                    let index = txn.open_table(BY_STATUS).map_err(storage)?;
                    let code = status.code();
                    Box::new(
                        index
                            .range((code, 0)..(code, before))
                            .map_err(storage)?
                            .rev()
                            .map(|e| e.map(|(k, _)| k.value().1).map_err(storage)),
                    )
                }
                (None, Some(job_type)) => {
                    let index = txn.open_table(BY_TYPE).map_err(storage)?;
                    let range = index
                        .range((job_type.as_str(), 0)..(job_type.as_str(), before))
                        .map_err(storage)?;
                    Box::new(
                        range
                            .rev()
                            .map(|e| e.map(|(k, _)| k.value().1).map_err(storage)),
                    )
                }
                (None, None) => Box::new(
                    jobs.range(..before)
                        .map_err(storage)?
                        .rev()
                        .map(|e| e.map(|(k, _)| k.value()).map_err(storage)),
                ),
            };
        let mut page = Vec::new();
        for id in ids {
            let Some(job) = read_job(&jobs, id?)? else {
                continue;
            };
            if query.job_type.as_ref().is_some_and(|t| *t != job.job_type)
                || query.status.is_some_and(|s| s != job.status)
                || query.tenant.is_some() && query.tenant != job.tenant
            {
                continue;
            }
            page.push(job);
            if page.len() > limit {
                break;
            }
        }
        // One record past the page tells whether there is a next page.
        let next = (page.len() > limit).then(|| {
            page.truncate(limit);
            page[limit - 1].id
        });
        Ok(Page { jobs: page, next })
    }

    /// Ids of every job with `status`, oldest first (used by recovery at start).
    pub fn ids_with_status(&self, status: JobStatus) -> Result<Vec<Uuid>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let index = txn.open_table(BY_STATUS).map_err(storage)?;
        let code = status.code();
        index
            .range((code, 0)..=(code, u128::MAX))
            .map_err(storage)?
            .map(|e| {
                e.map(|(k, _)| Uuid::from_u128(k.value().1))
                    .map_err(storage)
            })
            .collect()
    }

    /// Up to `limit` jobs that finished at or before `ms`, oldest first.
    pub fn finished_before(&self, ms: u64, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let index = txn.open_table(BY_FINISH).map_err(storage)?;
        index
            .range((0, 0)..=(ms, u128::MAX))
            .map_err(storage)?
            .take(limit)
            .map(|e| {
                e.map(|(k, _)| Uuid::from_u128(k.value().1))
                    .map_err(storage)
            })
            .collect()
    }

    /// How many jobs are stored, by type and status (for `/metrics`): one pass over the
    /// keys of the status and type indexes, no job record read.
    pub fn count_by_type_and_status(&self) -> Result<Vec<(String, JobStatus, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let by_status = txn.open_table(BY_STATUS).map_err(storage)?;
        let mut status_of = std::collections::HashMap::new();
        for entry in by_status.iter().map_err(storage)? {
            let (key, _) = entry.map_err(storage)?;
            let (code, id) = key.value();
            status_of.insert(id, code);
        }
        let by_type = txn.open_table(BY_TYPE).map_err(storage)?;
        let mut counts: std::collections::BTreeMap<(String, u8), u64> = Default::default();
        for entry in by_type.iter().map_err(storage)? {
            let (key, _) = entry.map_err(storage)?;
            let (job_type, id) = key.value();
            if let Some(code) = status_of.get(&id) {
                *counts.entry((job_type.to_string(), *code)).or_default() += 1;
            }
        }
        Ok(counts
            .into_iter()
            .filter_map(|((job_type, code), n)| {
                let status = JobStatus::from_code(code)?;
                Some((job_type, status, n))
            })
            .collect())
    }

    /// How many jobs are stored.
    pub fn job_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let jobs = txn.open_table(JOBS).map_err(storage)?;
        jobs.len().map_err(storage)
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it commits what it has; joining it
        // releases the database file for the next open.
        self.tx.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn read_job(
    jobs: &impl ReadableTable<u128, &'static [u8]>,
    id: u128,
) -> Result<Option<JobRecord>, StoreError> {
    let Some(bytes) = jobs.get(id).map_err(storage)? else {
        return Ok(None);
    };
    serde_json::from_slice(bytes.value())
        .map(Some)
        .map_err(|e| StoreError::Storage(format!("corrupt job record: {e}")))
}
