//! The embedded backend: everything in one redb file in the data dir.
//!
//! Reads open short read transactions (MVCC: they never wait for the writer); every write
//! goes to the single writer thread in [`writer`].

mod tables;
mod writer;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::Context as _;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::batch::{Feed, Op, StoredEvent};
use super::bus::Bus;
use super::model::{BatchRecord, JobEvent, JobRecord, JobStatus, ScheduleRecord};
use super::{FileRecord, ListQuery, Page, StoreError};
use tables::*;

pub(super) fn storage(error: impl Into<redb::Error>) -> StoreError {
    StoreError::Storage(error.into().to_string())
}

pub(super) fn decode_job(bytes: &[u8]) -> Result<JobRecord, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Storage(format!("corrupt job record: {e}")))
}

pub(super) fn decode_batch(bytes: &[u8]) -> Result<BatchRecord, StoreError> {
    serde_json::from_slice(bytes)
        .map_err(|e| StoreError::Storage(format!("corrupt batch record: {e}")))
}

fn decode_event(bytes: &[u8]) -> Result<StoredEvent, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Storage(format!("corrupt event: {e}")))
}

/// The redb file and its writer thread.
pub(super) struct RedbStore {
    db: Arc<Database>,
    writer: Option<JoinHandle<()>>,
}

impl RedbStore {
    /// Opens (or creates) the database at `path` and starts its writer, which takes the
    /// ops sent to the returned channel.
    pub(super) fn open(
        path: &Path,
        bus: Arc<Bus>,
        feed_retention: u64,
    ) -> anyhow::Result<(Self, mpsc::UnboundedSender<Op>)> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating the data dir {}", dir.display()))?;
        }
        let db = Database::create(path)
            .with_context(|| format!("opening the database {}", path.display()))?;
        // Create every table up front so readers never meet a missing one. Tables added
        // after 0.1.0's first release (the feed, files) are created empty in older files.
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
        txn.open_table(BATCHES)?;
        txn.open_table(BY_BATCH)?;
        txn.open_table(WEBHOOKS_DUE)?;
        txn.open_table(SCHEDULES)?;
        let next_feed = {
            let feed = txn.open_table(FEED)?;
            feed.last()?.map_or(1, |(key, _)| key.value() + 1)
        };
        txn.commit()?;
        let feed = Feed {
            next: next_feed,
            retention: feed_retention.max(1),
        };

        let db = Arc::new(db);
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = std::thread::Builder::new()
            .name("kiln-writer".into())
            .spawn({
                let db = db.clone();
                move || writer::run(db, rx, bus, feed)
            })
            .context("starting the writer thread")?;
        Ok((
            Self {
                db,
                writer: Some(writer),
            },
            tx,
        ))
    }

    /// Waits for the writer to end (after its channel closed): it commits what it has,
    /// and the file is free for the next open.
    pub(super) fn close(&mut self) {
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }

    pub(super) fn journal(&self, job: Uuid) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
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

    pub(super) fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let jobs = txn.open_table(JOBS).map_err(storage)?;
        read_job(&jobs, id.as_u128())
    }

    pub(super) fn payload(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        self.read_text(PAYLOADS, id)
    }

    pub(super) fn result(&self, id: Uuid) -> Result<Option<String>, StoreError> {
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

    pub(super) fn events_after(
        &self,
        job: &JobRecord,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        Ok(self
            .log_after(job.id, after, limit)?
            .into_iter()
            .map(|(seq, stored)| super::event_of(job, seq, 0, stored, job.status))
            .collect())
    }

    /// Up to `limit` events of the log kept under `id` (a job's or a batch's) after
    /// `after`, with their sequence numbers.
    pub(super) fn log_after(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let id = id.as_u128();
        let start = after.saturating_add(1);
        let mut out = Vec::new();
        for entry in events
            .range((id, start)..=(id, u64::MAX))
            .map_err(storage)?
            .take(limit)
        {
            let (key, value) = entry.map_err(storage)?;
            out.push((key.value().1, decode_event(value.value())?));
        }
        Ok(out)
    }

    pub(super) fn batch(&self, id: Uuid) -> Result<Option<BatchRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let batches = txn.open_table(BATCHES).map_err(storage)?;
        let Some(bytes) = batches.get(id.as_u128()).map_err(storage)? else {
            return Ok(None);
        };
        decode_batch(bytes.value()).map(Some)
    }

    /// Up to `limit` jobs whose webhook delivery is due by `now_ms`, soonest first.
    pub(super) fn webhooks_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let due = txn.open_table(WEBHOOKS_DUE).map_err(storage)?;
        let jobs = txn.open_table(JOBS).map_err(storage)?;
        let mut out = Vec::new();
        for entry in due
            .range(..=(now_ms, u128::MAX))
            .map_err(storage)?
            .take(limit)
        {
            let (key, _) = entry.map_err(storage)?;
            if let Some(bytes) = jobs.get(key.value().1).map_err(storage)? {
                out.push(decode_job(bytes.value())?);
            }
        }
        Ok(out)
    }

    /// Up to `fetch` batches older than `before`, newest first; only `tenant`'s if given
    /// (checked on the record: batches are few next to jobs).
    pub(super) fn list_batches(
        &self,
        tenant: Option<&str>,
        before: Option<Uuid>,
        fetch: usize,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let batches = txn.open_table(BATCHES).map_err(storage)?;
        let before = before.map_or(u128::MAX, |id| id.as_u128());
        let mut page = Vec::new();
        for entry in batches.range(..before).map_err(storage)?.rev() {
            let (_, bytes) = entry.map_err(storage)?;
            let batch = decode_batch(bytes.value())?;
            if tenant.is_none_or(|tenant| batch.tenant.as_deref() == Some(tenant)) {
                page.push(batch);
                if page.len() == fetch {
                    break;
                }
            }
        }
        Ok(page)
    }

    pub(super) fn feed_bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let feed = txn.open_table(FEED).map_err(storage)?;
        let first = feed.first().map_err(storage)?.map(|(k, _)| k.value());
        let last = feed.last().map_err(storage)?.map(|(k, _)| k.value());
        Ok(first.zip(last))
    }

    pub(super) fn feed_after(&self, after: u64, limit: usize) -> Result<Vec<JobEvent>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let feed = txn.open_table(FEED).map_err(storage)?;
        let events = txn.open_table(EVENTS).map_err(storage)?;
        let jobs = txn.open_table(JOBS).map_err(storage)?;
        let mut records: HashMap<u128, Option<JobRecord>> = HashMap::new();
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
            let stored = decode_event(bytes.value())?;
            let status = JobStatus::from_code(code).unwrap_or(job.status);
            out.push(super::event_of(job, seq, key.value(), stored, status));
        }
        Ok(out)
    }

    pub(super) fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let jobs = txn.open_table(JOBS).map_err(storage)?;
        let before = query.before.map_or(u128::MAX, |id| id.as_u128());
        let limit = query.limit.max(1);
        // Walk the most selective index, newest first, and check the other filter on
        // the record.
        let ids: Box<dyn Iterator<Item = Result<u128, StoreError>>> =
            match (&query.status, &query.job_type) {
                _ if query.batch.is_some() => {
                    let batch = query.batch.map_or(0, |id| id.as_u128());
                    let index = txn.open_table(BY_BATCH).map_err(storage)?;
                    let range = index.range((batch, 0)..(batch, before)).map_err(storage)?;
                    Box::new(
                        range
                            .rev()
                            .map(|e| e.map(|(k, _)| k.value().1).map_err(storage)),
                    )
                }
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
            if !query.matches(&job) {
                continue;
            }
            page.push(job);
            if page.len() > limit {
                break;
            }
        }
        Ok(Page::of(page, limit))
    }

    pub(super) fn ids_with_status(&self, status: JobStatus) -> Result<Vec<Uuid>, StoreError> {
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

    pub(super) fn finished_before(&self, ms: u64, limit: usize) -> Result<Vec<Uuid>, StoreError> {
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

    /// One pass over the keys of the status and type indexes, no job record read.
    pub(super) fn count_by_type_and_status(
        &self,
    ) -> Result<Vec<(String, JobStatus, u64)>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let by_status = txn.open_table(BY_STATUS).map_err(storage)?;
        let mut status_of = HashMap::new();
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

    pub(super) fn job_count(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let jobs = txn.open_table(JOBS).map_err(storage)?;
        jobs.len().map_err(storage)
    }

    /// Commits on a blocking thread: an fsync must not hold up the async runtime.
    pub(super) fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let table = txn.open_table(SCHEDULES).map_err(storage)?;
        let mut schedules = Vec::new();
        for entry in table.iter().map_err(storage)? {
            let (_, value) = entry.map_err(storage)?;
            schedules.push(decode_schedule(value.value())?);
        }
        Ok(schedules)
    }

    pub(super) async fn put_schedule(
        &self,
        record: &ScheduleRecord,
        expected: Option<Uuid>,
    ) -> Result<bool, StoreError> {
        let (db, record) = (self.db.clone(), record.clone());
        tokio::task::spawn_blocking(move || {
            let bytes =
                serde_json::to_vec(&record).map_err(|e| StoreError::Storage(e.to_string()))?;
            let txn = db.begin_write().map_err(storage)?;
            let written = {
                let mut table = txn.open_table(SCHEDULES).map_err(storage)?;
                let current = match table.get(record.name.as_str()).map_err(storage)? {
                    Some(value) => Some(decode_schedule(value.value())?.id),
                    None => None,
                };
                if current == expected {
                    table
                        .insert(record.name.as_str(), bytes.as_slice())
                        .map_err(storage)?;
                    true
                } else {
                    false
                }
            };
            txn.commit().map_err(storage)?;
            Ok(written)
        })
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))?
    }

    pub(super) async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let (db, name) = (self.db.clone(), name.to_string());
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(storage)?;
            let removed = txn
                .open_table(SCHEDULES)
                .map_err(storage)?
                .remove(name.as_str())
                .map_err(storage)?
                .is_some();
            txn.commit().map_err(storage)?;
            Ok(removed)
        })
        .await
        .map_err(|e| StoreError::Storage(e.to_string()))?
    }

    pub(super) async fn insert_file(&self, record: &FileRecord) -> Result<(), StoreError> {
        let (db, record) = (self.db.clone(), record.clone());
        tokio::task::spawn_blocking(move || insert_file(&db, &record))
            .await
            .map_err(|e| StoreError::Storage(e.to_string()))?
    }

    pub(super) async fn delete_expired_files(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || delete_expired_files(&db, now_ms, limit))
            .await
            .map_err(|e| StoreError::Storage(e.to_string()))?
    }

    pub(super) fn file(&self, id: Uuid) -> Result<Option<FileRecord>, StoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let files = txn.open_table(FILES).map_err(storage)?;
        let Some(value) = files.get(id.as_u128()).map_err(storage)? else {
            return Ok(None);
        };
        serde_json::from_slice(value.value())
            .map(Some)
            .map_err(|e| StoreError::Storage(format!("file {id}: {e}")))
    }
}

fn read_job(
    jobs: &impl ReadableTable<u128, &'static [u8]>,
    id: u128,
) -> Result<Option<JobRecord>, StoreError> {
    let Some(bytes) = jobs.get(id).map_err(storage)? else {
        return Ok(None);
    };
    decode_job(bytes.value()).map(Some)
}

fn decode_schedule(bytes: &[u8]) -> Result<ScheduleRecord, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Storage(format!("corrupt schedule: {e}")))
}

fn insert_file(db: &Database, record: &FileRecord) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec(record).map_err(|e| StoreError::Storage(e.to_string()))?;
    let txn = db.begin_write().map_err(storage)?;
    {
        let mut files = txn.open_table(FILES).map_err(storage)?;
        files
            .insert(record.id.as_u128(), bytes.as_slice())
            .map_err(storage)?;
        let mut expiry = txn.open_table(FILES_BY_EXPIRY).map_err(storage)?;
        expiry
            .insert((record.expires_at_ms, record.id.as_u128()), ())
            .map_err(storage)?;
    }
    txn.commit().map_err(storage)
}

fn delete_expired_files(db: &Database, now_ms: u64, limit: usize) -> Result<Vec<Uuid>, StoreError> {
    let txn = db.begin_write().map_err(storage)?;
    let mut ids = Vec::new();
    {
        let mut expiry = txn.open_table(FILES_BY_EXPIRY).map_err(storage)?;
        let mut files = txn.open_table(FILES).map_err(storage)?;
        let due: Vec<(u64, u128)> = expiry
            .range(..(now_ms, u128::MAX))
            .map_err(storage)?
            .take(limit)
            .filter_map(|entry| entry.ok().map(|(key, _)| key.value()))
            .collect();
        for (at, id) in due {
            expiry.remove((at, id)).map_err(storage)?;
            files.remove(id).map_err(storage)?;
            ids.push(Uuid::from_u128(id));
        }
    }
    txn.commit().map_err(storage)?;
    Ok(ids)
}
