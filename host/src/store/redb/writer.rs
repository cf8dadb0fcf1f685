//! redb's writer: one thread, one write transaction and one fsync per batch of changes
//! (the batching itself is [`crate::store::batch`]). redb allows one write transaction at
//! a time, so a single thread owning it loses nothing.

use std::sync::Arc;

use redb::{Database, Durability, ReadableTable, Table, WriteTransaction};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::super::StoreError;
use super::super::batch::{self, Applied, Feed, Op, StoredEvent, WriteSet};
use super::super::bus::Bus;
use super::super::model::{BatchRecord, JobRecord};
use super::tables::*;
use super::{decode_batch, decode_job, storage};

/// The writer loop: runs on its own thread until every sender is dropped.
pub(super) fn run(
    db: Arc<Database>,
    mut rx: mpsc::UnboundedReceiver<Op>,
    bus: Arc<Bus>,
    mut feed: Feed,
) {
    while let Some(first) = rx.blocking_recv() {
        let ops = batch::drain(first, &mut rx);
        commit(&db, ops, &bus, &mut feed);
    }
}

fn commit(db: &Database, ops: Vec<Op>, bus: &Bus, feed: &mut Feed) {
    let mut applied = Applied::new(feed);
    let mut pending = Some(ops);
    let mut unapplied = Vec::new();
    let outcome = (|| -> Result<(), StoreError> {
        let mut txn = db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            let mut tables = Tables::open(&txn)?;
            let ops = pending.take().unwrap_or_default();
            if let Err((error, rest)) = batch::apply_all(&mut tables, feed, ops, &mut applied) {
                unapplied = rest;
                return Err(error);
            }
        }
        txn.commit().map_err(storage)
    })();
    unapplied.extend(pending.take().unwrap_or_default());
    // redb's failures are not the transient kind: nothing is handed back to retry.
    let _ = batch::settle(outcome, applied, unapplied, feed, bus);
}

/// The tables of one write transaction.
struct Tables<'txn> {
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
    batches: Table<'txn, u128, &'static [u8]>,
    by_batch: Table<'txn, (u128, u128), ()>,
    webhooks_due: Table<'txn, (u64, u128), ()>,
}

impl<'txn> Tables<'txn> {
    fn open(txn: &'txn WriteTransaction) -> Result<Self, StoreError> {
        Ok(Self {
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
            batches: txn.open_table(BATCHES).map_err(storage)?,
            by_batch: txn.open_table(BY_BATCH).map_err(storage)?,
            webhooks_due: txn.open_table(WEBHOOKS_DUE).map_err(storage)?,
        })
    }
}

impl WriteSet for Tables<'_> {
    fn job(&mut self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let Some(bytes) = self.jobs.get(id.as_u128()).map_err(storage)? else {
            return Ok(None);
        };
        decode_job(bytes.value()).map(Some)
    }

    fn idempotent(&mut self, key: &str) -> Result<Option<Uuid>, StoreError> {
        let id = self.idempotency.get(key).map_err(storage)?;
        Ok(id.map(|guard| Uuid::from_u128(guard.value())))
    }

    fn put_job(&mut self, before: Option<&JobRecord>, job: &JobRecord) -> Result<(), StoreError> {
        let key = job.id.as_u128();
        let status_before = before.map(|b| b.status.code());
        if status_before != Some(job.status.code()) {
            if let Some(code) = status_before {
                self.by_status.remove((code, key)).map_err(storage)?;
            }
            self.by_status
                .insert((job.status.code(), key), ())
                .map_err(storage)?;
        }
        let finished_before = before.and_then(|b| b.finished_at_ms);
        if finished_before != job.finished_at_ms {
            if let Some(at) = finished_before {
                self.by_finish.remove((at, key)).map_err(storage)?;
            }
            if let Some(at) = job.finished_at_ms {
                self.by_finish.insert((at, key), ()).map_err(storage)?;
            }
        }
        let due_before = before.and_then(JobRecord::webhook_due_ms);
        if due_before != job.webhook_due_ms() {
            if let Some(at) = due_before {
                self.webhooks_due.remove((at, key)).map_err(storage)?;
            }
            if let Some(at) = job.webhook_due_ms() {
                self.webhooks_due.insert((at, key), ()).map_err(storage)?;
            }
        }
        if before.is_none() {
            self.by_type
                .insert((job.job_type.as_str(), key), ())
                .map_err(storage)?;
            if let Some(tenant) = &job.tenant {
                self.by_tenant
                    .insert((tenant.as_str(), key), ())
                    .map_err(storage)?;
            }
            if let Some(batch) = job.batch {
                self.by_batch
                    .insert((batch.as_u128(), key), ())
                    .map_err(storage)?;
            }
        }
        let bytes = serde_json::to_vec(job).map_err(|e| StoreError::Storage(e.to_string()))?;
        self.jobs.insert(key, bytes.as_slice()).map_err(storage)?;
        Ok(())
    }

    fn put_payload(&mut self, job: &JobRecord, payload: &str) -> Result<(), StoreError> {
        let key = job.id.as_u128();
        self.payloads
            .insert(key, payload.as_bytes())
            .map_err(storage)?;
        if let Some(slot) = &job.idempotency_key {
            self.idempotency
                .insert(slot.as_str(), key)
                .map_err(storage)?;
        }
        Ok(())
    }

    fn put_result(&mut self, id: Uuid, result: Option<&str>) -> Result<(), StoreError> {
        match result {
            Some(text) => self.results.insert(id.as_u128(), text.as_bytes()).map(drop),
            None => self.results.remove(id.as_u128()).map(drop),
        }
        .map_err(storage)
    }

    fn put_event(
        &mut self,
        job: &JobRecord,
        seq: u64,
        position: u64,
        event: &StoredEvent,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(event).map_err(|e| StoreError::Storage(e.to_string()))?;
        let key = job.id.as_u128();
        self.events
            .insert((key, seq), bytes.as_slice())
            .map_err(storage)?;
        self.feed
            .insert(position, (key, seq, job.status.code()))
            .map_err(storage)?;
        Ok(())
    }

    fn put_journal(&mut self, job: Uuid, index: u64, entry: &[u8]) -> Result<(), StoreError> {
        self.journal
            .insert((job.as_u128(), index), entry)
            .map_err(storage)?;
        Ok(())
    }

    fn delete_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        let key = job.id.as_u128();
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
        if let Some(batch) = job.batch {
            self.by_batch
                .remove((batch.as_u128(), key))
                .map_err(storage)?;
        }
        if let Some(at) = job.webhook_due_ms() {
            self.webhooks_due.remove((at, key)).map_err(storage)?;
        }
        if let Some(slot) = &job.idempotency_key {
            self.idempotency.remove(slot.as_str()).map_err(storage)?;
        }
        self.events
            .retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
            .map_err(storage)?;
        self.journal
            .retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
            .map_err(storage)?;
        Ok(())
    }

    fn batch(&mut self, id: Uuid) -> Result<Option<BatchRecord>, StoreError> {
        let Some(bytes) = self.batches.get(id.as_u128()).map_err(storage)? else {
            return Ok(None);
        };
        decode_batch(bytes.value()).map(Some)
    }

    fn put_batch(&mut self, batch: &BatchRecord) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(batch).map_err(|e| StoreError::Storage(e.to_string()))?;
        self.batches
            .insert(batch.id.as_u128(), bytes.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    fn put_batch_event(
        &mut self,
        batch: &BatchRecord,
        seq: u64,
        event: &StoredEvent,
    ) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(event).map_err(|e| StoreError::Storage(e.to_string()))?;
        self.events
            .insert((batch.id.as_u128(), seq), bytes.as_slice())
            .map_err(storage)?;
        Ok(())
    }

    fn delete_batch(&mut self, id: Uuid) -> Result<(), StoreError> {
        let key = id.as_u128();
        self.batches.remove(key).map_err(storage)?;
        self.events
            .retain_in((key, 0)..=(key, u64::MAX), |_, _| false)
            .map_err(storage)?;
        Ok(())
    }

    fn trim_feed(&mut self, keep_from: u64) -> Result<(), StoreError> {
        self.feed
            .retain_in(..keep_from, |_, _| false)
            .map_err(storage)
    }

    fn claimed(&mut self) -> Result<(Vec<Uuid>, Option<u64>), StoreError> {
        // One process owns a redb file: its in-memory queues decide what runs.
        Err(StoreError::Storage(
            "claims are for nodes sharing a PostgreSQL database".into(),
        ))
    }
}
