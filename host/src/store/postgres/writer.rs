//! PostgreSQL's writer: one task, one connection, one transaction per batch of changes
//! (the batching itself is [`crate::store::batch`]).
//!
//! A batch costs a fixed number of round trips whatever its size: the jobs it touches are
//! read in one query (`FOR UPDATE`), the changes are applied to them in memory, and the
//! resulting rows go out as one `INSERT … SELECT FROM unnest(…)` per table, pipelined on
//! the connection, then one `COMMIT`. In the same transaction a `NOTIFY` carries
//! `job_id:seq` of each job's newest event, so other processes can follow the logs.
//!
//! When the connection is lost the batch fails with [`StoreError::Unavailable`]; callers
//! waiting for it are told (a submit answers 503), detached changes (progress) are kept
//! and retried first once the writer has reconnected, and the writer keeps reconnecting
//! with a backoff, refusing new changes at once in between instead of holding them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Statement};
use uuid::Uuid;

use super::super::StoreError;
use super::super::batch::{self, Applied, ClaimRequest, Feed, Op, Reply, StoredEvent, WriteSet};
use super::super::bus::Bus;
use super::super::model::{BatchRecord, JobRecord, JobStatus};
use super::{NOTIFY_CHANNEL, PgConnector, classify, decode_batch, decode_job, i64_of};

/// Detached changes kept while the database is unreachable; past this, the oldest are
/// dropped (with a warning) rather than growing without bound.
const MAX_RETRY_QUEUE: usize = 100_000;

/// Longest a NOTIFY payload may be (PostgreSQL's limit is 8000 bytes).
const MAX_NOTIFY_BYTES: usize = 7900;

/// The writer task's state.
pub(super) struct Writer {
    pub connector: PgConnector,
    pub bus: Arc<Bus>,
    pub feed: Feed,
    /// This process, so its listener can tell its own notifications apart.
    pub node: Uuid,
    pub retry: VecDeque<Op>,
}

impl Writer {
    /// Runs until every sender is dropped; `client` is the connection opened at start.
    pub(super) async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Op>, client: Client) {
        let mut connection = Some(Connection::prepare(client).await);
        let mut backoff = Duration::from_millis(100);
        loop {
            let live = match connection.take() {
                Some(Ok(live)) if !live.client.is_closed() => live,
                Some(Err(error)) => {
                    tracing::warn!(%error, "the PostgreSQL writer cannot reach the database; refusing changes until it can");
                    if !self.refuse_for(backoff, &mut rx, &error).await {
                        return;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                    connection = Some(reconnect(&self.connector).await);
                    continue;
                }
                _ => {
                    connection = Some(reconnect(&self.connector).await);
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let ops = if self.retry.is_empty() {
                match batch::next_batch(&mut rx).await {
                    Some(ops) => ops,
                    None => return,
                }
            } else {
                let take = self.retry.len().min(batch::MAX_BATCH);
                let mut ops: Vec<Op> = self.retry.drain(..take).collect();
                while ops.len() < batch::MAX_BATCH {
                    match rx.try_recv() {
                        Ok(op) => ops.push(op),
                        Err(_) => break,
                    }
                }
                ops
            };
            let mut live = live;
            if live.client.is_closed() {
                // Lost while the writer waited (a server restart): a new connection
                // saves this batch instead of failing it.
                match reconnect(&self.connector).await {
                    Ok(fresh) => live = fresh,
                    Err(error) => {
                        for op in ops {
                            if let Some(kept) = Reply::unapplied(op).fail(&error) {
                                self.retry.push_back(kept);
                            }
                        }
                        self.trim_retry();
                        connection = Some(Err(error));
                        continue;
                    }
                }
            }
            let again = self.commit(&mut live, ops).await;
            if again.is_empty() {
                connection = Some(Ok(live));
            } else {
                // Unreachable: retry the detached changes first, after reconnecting.
                for op in again.into_iter().rev() {
                    self.retry.push_front(op);
                }
                self.trim_retry();
                drop(live);
            }
        }
    }
}

/// A new writer connection with its statements. (A free function: the writer is not
/// `Sync`, so no `&Writer` may live across an await.)
async fn reconnect(connector: &PgConnector) -> Result<Connection, StoreError> {
    let connection = Connection::prepare(connector.connect().await?).await;
    if connection.is_ok() {
        tracing::info!("the PostgreSQL writer is connected");
    }
    connection
}

impl Writer {
    /// For `wait`, answers every change sent with `error` (detached ones are kept for the
    /// retry). Returns `false` when every sender is gone.
    async fn refuse_for(
        &mut self,
        wait: Duration,
        rx: &mut mpsc::UnboundedReceiver<Op>,
        error: &StoreError,
    ) -> bool {
        let deadline = tokio::time::sleep(wait);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                () = &mut deadline => return true,
                op = rx.recv() => match op {
                    None => return false,
                    Some(op) => {
                        if let Some(kept) = Reply::unapplied(op).fail(error) {
                            self.retry.push_back(kept);
                            self.trim_retry();
                        }
                    }
                },
            }
        }
    }

    fn trim_retry(&mut self) {
        let excess = self.retry.len().saturating_sub(MAX_RETRY_QUEUE);
        if excess > 0 {
            self.retry.drain(..excess);
            tracing::warn!(
                dropped = excess,
                "PostgreSQL has been unreachable for long: dropped the oldest unsaved progress events"
            );
        }
    }

    /// Commits one batch; returns the detached changes to retry if the database was out
    /// of reach.
    async fn commit(&mut self, connection: &mut Connection, ops: Vec<Op>) -> Vec<Op> {
        let mut applied = Applied::new(&self.feed);
        let mut unapplied = Vec::new();
        let outcome = transact(
            connection,
            ops,
            &mut self.feed,
            &mut applied,
            &mut unapplied,
            self.node,
        )
        .await;
        batch::settle(outcome, applied, unapplied, &mut self.feed, &self.bus)
    }
}

/// A connection of the writer with its prepared statements.
struct Connection {
    client: Client,
    statements: Statements,
}

impl Connection {
    async fn prepare(client: Client) -> Result<Self, StoreError> {
        let statements = Statements::prepare(&client).await?;
        Ok(Self { client, statements })
    }
}

/// The writer's statements, prepared once per connection.
struct Statements {
    lock_feed_head: Statement,
    set_feed_head: Statement,
    claim: Statement,
    next_due: Statement,
    lock_jobs: Statement,
    idempotency: Statement,
    upsert_jobs: Statement,
    insert_payloads: Statement,
    insert_idempotency: Statement,
    upsert_results: Statement,
    delete_results: Statement,
    insert_events: Statement,
    insert_feed: Statement,
    upsert_journal: Statement,
    delete_jobs: [Statement; 7],
    lock_batches: Statement,
    upsert_batches: Statement,
    delete_batches: [Statement; 2],
    trim_feed: Statement,
    notify: Statement,
}

impl Statements {
    async fn prepare(client: &Client) -> Result<Self, StoreError> {
        let prepare = |sql: &'static str, types: &'static [Type]| async move {
            client.prepare_typed(sql, types).await.map_err(classify)
        };
        let uuids = &[Type::UUID_ARRAY];
        Ok(Self {
            // Taken first by every writer of every node, before any job row: positions
            // follow commit order, and the writers' row locks cannot deadlock.
            lock_feed_head: prepare("SELECT next, queued FROM kiln_feed_head FOR UPDATE", &[])
                .await?,
            set_feed_head: prepare(
                "UPDATE kiln_feed_head SET next = $1, queued = queued + $2",
                &[Type::INT8, Type::INT8],
            )
                .await?,
            // One queue's due jobs in fair order (see the file), run once per queue.
            claim: prepare(
                include_str!("claim.sql"),
                &[Type::TEXT, Type::INT8, Type::INT8, Type::INT8, Type::INT8],
            )
            .await?,
            next_due: prepare(
                "SELECT min(run_at_ms) FROM kiln_jobs                  WHERE status = 0 AND queue = ANY($1) AND run_at_ms > $2",
                &[Type::TEXT_ARRAY, Type::INT8],
            )
            .await?,
            lock_jobs: prepare(
                // One array, so the primary key's index serves it (an `OR` would not).
                "SELECT id, record FROM kiln_jobs WHERE id = ANY($1::uuid[] || ARRAY( \
                 SELECT job_id FROM kiln_idempotency WHERE key = ANY($2))) FOR UPDATE",
                &[Type::UUID_ARRAY, Type::BYTEA_ARRAY],
            )
            .await?,
            idempotency: prepare(
                "SELECT key, job_id FROM kiln_idempotency WHERE key = ANY($1)",
                &[Type::BYTEA_ARRAY],
            )
            .await?,
            upsert_jobs: prepare(
                "INSERT INTO kiln_jobs (id, status, job_type, tenant, finished_ms, record, \
                 queue, priority, run_at_ms, node, batch, concurrency_key, webhook_due_ms) \
                 SELECT * FROM unnest($1::uuid[], $2::int2[], $3::text[], $4::text[], $5::int8[], \
                 $6::text[], $7::text[], $8::int4[], $9::int8[], $10::uuid[], $11::uuid[], \
                 $12::text[], $13::int8[]) \
                 ON CONFLICT (id) DO UPDATE SET status = excluded.status, \
                 finished_ms = excluded.finished_ms, record = excluded.record, \
                 priority = excluded.priority, run_at_ms = excluded.run_at_ms, node = excluded.node, \
                 webhook_due_ms = excluded.webhook_due_ms",
                &[],
            )
            .await?,
            insert_payloads: prepare(
                "INSERT INTO kiln_payloads (job_id, payload) \
                 SELECT * FROM unnest($1::uuid[], $2::text[])",
                &[],
            )
            .await?,
            insert_idempotency: prepare(
                "INSERT INTO kiln_idempotency (key, job_id) \
                 SELECT * FROM unnest($1::bytea[], $2::uuid[]) ON CONFLICT (key) DO NOTHING",
                &[],
            )
            .await?,
            upsert_results: prepare(
                "INSERT INTO kiln_results (job_id, result) \
                 SELECT * FROM unnest($1::uuid[], $2::text[]) \
                 ON CONFLICT (job_id) DO UPDATE SET result = excluded.result",
                &[],
            )
            .await?,
            delete_results: prepare("DELETE FROM kiln_results WHERE job_id = ANY($1)", uuids)
                .await?,
            insert_events: prepare(
                "INSERT INTO kiln_events (job_id, seq, name, data, at_ms) \
                 SELECT * FROM unnest($1::uuid[], $2::int8[], $3::text[], $4::text[], $5::int8[])",
                &[],
            )
            .await?,
            insert_feed: prepare(
                "INSERT INTO kiln_feed (position, job_id, seq, status) \
                 SELECT * FROM unnest($1::int8[], $2::uuid[], $3::int8[], $4::int2[])",
                &[],
            )
            .await?,
            upsert_journal: prepare(
                "INSERT INTO kiln_journal (job_id, idx, entry) \
                 SELECT * FROM unnest($1::uuid[], $2::int8[], $3::bytea[]) \
                 ON CONFLICT (job_id, idx) DO UPDATE SET entry = excluded.entry",
                &[],
            )
            .await?,
            delete_jobs: [
                prepare("DELETE FROM kiln_jobs WHERE id = ANY($1)", uuids).await?,
                prepare("DELETE FROM kiln_payloads WHERE job_id = ANY($1)", uuids).await?,
                prepare("DELETE FROM kiln_results WHERE job_id = ANY($1)", uuids).await?,
                prepare("DELETE FROM kiln_events WHERE job_id = ANY($1)", uuids).await?,
                prepare("DELETE FROM kiln_journal WHERE job_id = ANY($1)", uuids).await?,
                prepare("DELETE FROM kiln_idempotency WHERE job_id = ANY($1)", uuids).await?,
                prepare("DELETE FROM kiln_artifact_chunks WHERE job_id = ANY($1)", uuids).await?,
            ],
            lock_batches: prepare(
                "SELECT id, record FROM kiln_batches WHERE id = ANY($1) FOR UPDATE",
                uuids,
            )
            .await?,
            upsert_batches: prepare(
                "INSERT INTO kiln_batches (id, tenant, record) \
                 SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[]) \
                 ON CONFLICT (id) DO UPDATE SET record = excluded.record",
                &[],
            )
            .await?,
            delete_batches: [
                prepare("DELETE FROM kiln_batches WHERE id = ANY($1)", uuids).await?,
                prepare("DELETE FROM kiln_events WHERE job_id = ANY($1)", uuids).await?,
            ],
            trim_feed: prepare("DELETE FROM kiln_feed WHERE position < $1", &[Type::INT8])
                .await?,
            notify: prepare(
                "SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload",
                &[],
            )
            .await?,
        })
    }
}

/// One batch's transaction: load, apply in memory, write, notify, commit.
async fn transact(
    connection: &mut Connection,
    ops: Vec<Op>,
    feed: &mut Feed,
    applied: &mut Applied,
    unapplied: &mut Vec<Op>,
    node: Uuid,
) -> Result<(), StoreError> {
    let statements = &connection.statements;
    let mut ids: Vec<Uuid> = ops.iter().flat_map(Op::jobs).collect();
    ids.sort_unstable();
    ids.dedup();
    let keys: Vec<String> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Insert { job, .. } => job.idempotency_key.clone(),
            _ => None,
        })
        .collect();
    let key_bytes: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
    let claims: Vec<ClaimParams> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Claim { request, .. } => Some(ClaimParams::of(request)),
            _ => None,
        })
        .collect();
    let client = &connection.client;
    // BEGIN goes out with the reads, all pipelined: one round trip. (The transaction is
    // driven by hand, not with the driver's `Transaction`, so that BEGIN and COMMIT can
    // share round trips with the statements around them.) The feed head is locked first.
    let begin = client.batch_execute("BEGIN");
    let head = client.query_one(&statements.lock_feed_head, &[]);
    let lock_params: [&(dyn ToSql + Sync); 2] = [&ids, &key_bytes];
    let key_params: [&(dyn ToSql + Sync); 1] = [&key_bytes];
    let jobs = async {
        if ids.is_empty() && keys.is_empty() {
            // A batch of plain submits reads no job.
            Ok((Vec::new(), Vec::new()))
        } else {
            futures::try_join!(
                client.query(&statements.lock_jobs, &lock_params),
                client.query(&statements.idempotency, &key_params),
            )
        }
    };
    let claimed =
        futures::future::try_join_all(claims.iter().map(|claim| claim.run(client, statements)));
    let loaded = futures::try_join!(begin, head, jobs, claimed);
    let (head, job_rows, key_rows, claimed) = match loaded {
        Ok(((), head, (jobs, keys), claimed)) => (head, jobs, keys, claimed),
        Err(error) => {
            rollback(client).await;
            unapplied.extend(ops);
            return Err(classify(error));
        }
    };
    let head: i64 = head.get(0);
    feed.next = u64::try_from(head).unwrap_or(1).max(1);
    let mut set = Rows::default();
    for id in &ids {
        set.jobs.insert(*id, None);
    }
    for row in job_rows {
        let text: &str = row.get(1);
        match decode_job(text) {
            Ok(job) => {
                set.jobs.insert(row.get(0), Some(job));
            }
            Err(error) => {
                rollback(client).await;
                unapplied.extend(ops);
                return Err(error);
            }
        }
    }
    for row in key_rows {
        let key: Vec<u8> = row.get(0);
        let id: Uuid = row.get(1);
        set.keys
            .insert(String::from_utf8_lossy(&key).into_owned(), Some(id));
        // Loaded above if it exists; known missing otherwise.
        set.jobs.entry(id).or_insert(None);
    }
    for key in keys {
        set.keys.entry(key).or_insert(None);
    }
    for (rows, next_due_ms) in claimed {
        let mut ids = Vec::with_capacity(rows.len());
        for row in rows {
            match decode_job(row.get(1)) {
                Ok(job) => {
                    ids.push(job.id);
                    set.jobs.insert(job.id, Some(job));
                }
                Err(error) => {
                    rollback(client).await;
                    unapplied.extend(ops);
                    return Err(error);
                }
            }
        }
        set.claims.push_back((ids, next_due_ms));
    }
    let may_end: Vec<Uuid> = ops.iter().filter_map(Op::may_end).collect();
    if let Err(error) = set.load_dependants(client, statements, &may_end).await {
        rollback(client).await;
        unapplied.extend(ops);
        return Err(error);
    }
    if let Err(error) = set.load_batches(client, statements).await {
        rollback(client).await;
        unapplied.extend(ops);
        return Err(error);
    }
    if let Err((error, rest)) = batch::apply_all(&mut set, feed, ops, applied) {
        rollback(client).await;
        unapplied.extend(rest);
        return Err(error);
    }
    // The writes and the COMMIT go out together: one round trip. A write the server
    // refuses aborts the transaction, which turns the COMMIT into a rollback, so the batch
    // counts as committed only if every write and the COMMIT succeeded.
    set.feed_head = (feed.next != u64::try_from(head).unwrap_or(0) || set.queued_delta != 0)
        .then(|| i64_of(feed.next))
        .transpose()?;
    let (written, committed) = futures::join!(
        set.write(client, statements, node),
        client.batch_execute("COMMIT"),
    );
    written.map_err(classify)?;
    committed.map_err(classify)
}

/// Ends a transaction that will not be committed. On a lost connection there is nothing
/// to end (the server rolled it back), so its error is ignored.
async fn rollback(client: &Client) {
    let _ = client.batch_execute("ROLLBACK").await;
}

/// The rows a batch reads and writes, in memory until [`Rows::write`].
#[derive(Default)]
struct Rows {
    /// Every job the batch touches: loaded, inserted or deleted (`None`).
    jobs: HashMap<Uuid, Option<JobRecord>>,
    /// Idempotency slots the batch asked about or created.
    keys: HashMap<String, Option<Uuid>>,
    /// Jobs whose record changed.
    dirty: HashSet<Uuid>,
    deleted: HashSet<Uuid>,
    payloads: Vec<(Uuid, String)>,
    new_keys: Vec<(String, Uuid)>,
    results: HashMap<Uuid, Option<String>>,
    events: Vec<(Uuid, i64, String, String, i64)>,
    feed: Vec<(i64, Uuid, i64, i16)>,
    journal: HashMap<(Uuid, i64), Vec<u8>>,
    trim_below: Option<i64>,
    /// What each claim of the batch takes, in the order of the claims.
    claims: VecDeque<(Vec<Uuid>, Option<u64>)>,
    /// Jobs whose status (or cancel request) changed, with their new status: other nodes
    /// are told, to start queued jobs, fill freed slots and stop cancelled attempts.
    changed: HashMap<Uuid, i16>,
    /// The feed head's new value, if the batch appended events or queued jobs changed.
    feed_head: Option<i64>,
    /// How many more (or fewer) jobs are queued cluster-wide after the batch.
    queued_delta: i64,
    /// The batches of the jobs the batch touches (loaded, locked) and those it creates;
    /// `None`: deleted.
    batches: HashMap<Uuid, Option<BatchRecord>>,
    dirty_batches: HashSet<Uuid>,
    deleted_batches: HashSet<Uuid>,
}

impl Rows {
    /// Loads and locks the jobs waiting on those the batch may end (`may_end`), and the
    /// jobs waiting on those in turn (a failure runs down a chain): one more round trip
    /// per level, only for a batch that may end a job someone waits for. (The feed head,
    /// locked first, orders these locks too.)
    async fn load_dependants(
        &mut self,
        client: &Client,
        statements: &Statements,
        may_end: &[Uuid],
    ) -> Result<(), StoreError> {
        let mut level: Vec<Uuid> = may_end
            .iter()
            .filter_map(|id| self.jobs.get(id)?.as_ref())
            .filter(|job| !job.status.is_terminal())
            .flat_map(|job| job.dependants.iter().copied())
            .collect();
        let no_keys: Vec<&[u8]> = Vec::new();
        loop {
            level.retain(|id| !self.jobs.contains_key(id));
            if level.is_empty() {
                return Ok(());
            }
            level.sort_unstable();
            level.dedup();
            let rows = client
                .query(&statements.lock_jobs, &[&level, &no_keys])
                .await
                .map_err(classify)?;
            for id in &level {
                self.jobs.insert(*id, None);
            }
            let mut next = Vec::new();
            for row in rows {
                let job = decode_job(row.get(1))?;
                if job.status == JobStatus::Waiting {
                    next.extend(job.dependants.iter().copied());
                }
                self.jobs.insert(job.id, Some(job));
            }
            level = next;
        }
    }

    /// Loads and locks the batches of the loaded jobs: one more round trip, only for a
    /// batch that touches jobs of batches. (The feed head, locked first, orders this
    /// lock too.)
    async fn load_batches(
        &mut self,
        client: &Client,
        statements: &Statements,
    ) -> Result<(), StoreError> {
        let mut ids: Vec<Uuid> = self
            .jobs
            .values()
            .flatten()
            .filter_map(|job| job.batch)
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        ids.sort_unstable();
        ids.dedup();
        let rows = client
            .query(&statements.lock_batches, &[&ids])
            .await
            .map_err(classify)?;
        for id in &ids {
            self.batches.insert(*id, None);
        }
        for row in rows {
            self.batches
                .insert(row.get(0), Some(decode_batch(row.get(1))?));
        }
        Ok(())
    }
}

impl WriteSet for Rows {
    fn job(&mut self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        match self.jobs.get(&id) {
            Some(job) => Ok(job.clone()),
            None => Err(StoreError::Storage(format!(
                "job {id} was not loaded for the batch"
            ))),
        }
    }

    fn idempotent(&mut self, key: &str) -> Result<Option<Uuid>, StoreError> {
        Ok(self.keys.get(key).copied().flatten())
    }

    fn put_job(&mut self, before: Option<&JobRecord>, job: &JobRecord) -> Result<(), StoreError> {
        let news = before.is_none_or(|before| {
            before.status != job.status || before.cancel_requested != job.cancel_requested
        });
        if news {
            self.changed.insert(job.id, i16::from(job.status.code()));
        }
        let queued =
            |job: Option<&JobRecord>| i64::from(job.is_some_and(|j| j.status == JobStatus::Queued));
        self.queued_delta += queued(Some(job)) - queued(before);
        self.jobs.insert(job.id, Some(job.clone()));
        self.dirty.insert(job.id);
        Ok(())
    }

    fn put_payload(&mut self, job: &JobRecord, payload: &str) -> Result<(), StoreError> {
        self.payloads.push((job.id, payload.to_string()));
        if let Some(slot) = &job.idempotency_key {
            self.keys.insert(slot.clone(), Some(job.id));
            self.new_keys.push((slot.clone(), job.id));
        }
        Ok(())
    }

    fn put_result(&mut self, id: Uuid, result: Option<&str>) -> Result<(), StoreError> {
        self.results.insert(id, result.map(str::to_string));
        Ok(())
    }

    fn put_event(
        &mut self,
        job: &JobRecord,
        seq: u64,
        position: u64,
        event: &StoredEvent,
    ) -> Result<(), StoreError> {
        self.events.push((
            job.id,
            i64_of(seq)?,
            event.name.clone(),
            event.data.to_string(),
            i64_of(event.at_ms)?,
        ));
        self.feed.push((
            i64_of(position)?,
            job.id,
            i64_of(seq)?,
            i16::from(job.status.code()),
        ));
        Ok(())
    }

    fn put_journal(&mut self, job: Uuid, index: u64, entry: &[u8]) -> Result<(), StoreError> {
        self.journal.insert((job, i64_of(index)?), entry.to_vec());
        Ok(())
    }

    fn delete_job(&mut self, job: &JobRecord) -> Result<(), StoreError> {
        if job.status == JobStatus::Queued {
            self.queued_delta -= 1;
        }
        self.jobs.insert(job.id, None);
        if let Some(slot) = &job.idempotency_key {
            self.keys.insert(slot.clone(), None);
        }
        self.deleted.insert(job.id);
        Ok(())
    }

    fn batch(&mut self, id: Uuid) -> Result<Option<BatchRecord>, StoreError> {
        match self.batches.get(&id) {
            Some(batch) => Ok(batch.clone()),
            None => Err(StoreError::Storage(format!(
                "batch {id} was not loaded for the batch of changes"
            ))),
        }
    }

    fn put_batch(&mut self, batch: &BatchRecord) -> Result<(), StoreError> {
        self.batches.insert(batch.id, Some(batch.clone()));
        self.dirty_batches.insert(batch.id);
        self.deleted_batches.remove(&batch.id);
        Ok(())
    }

    fn put_batch_event(
        &mut self,
        batch: &BatchRecord,
        seq: u64,
        event: &StoredEvent,
    ) -> Result<(), StoreError> {
        // Beside the jobs' logs, but not in the feed.
        self.events.push((
            batch.id,
            i64_of(seq)?,
            event.name.clone(),
            event.data.to_string(),
            i64_of(event.at_ms)?,
        ));
        Ok(())
    }

    fn delete_batch(&mut self, id: Uuid) -> Result<(), StoreError> {
        self.batches.insert(id, None);
        self.deleted_batches.insert(id);
        Ok(())
    }

    fn trim_feed(&mut self, keep_from: u64) -> Result<(), StoreError> {
        self.trim_below = Some(i64_of(keep_from)?);
        Ok(())
    }

    fn claimed(&mut self) -> Result<(Vec<Uuid>, Option<u64>), StoreError> {
        self.claims
            .pop_front()
            .ok_or_else(|| StoreError::Storage("a claim was not loaded for the batch".into()))
    }
}

/// A claim's parameters, as the claim queries take them.
struct ClaimParams {
    /// Per queue: its name, `max_concurrent` and `max_per_key`.
    queues: Vec<(String, i64, Option<i64>)>,
    names: Vec<String>,
    now_ms: i64,
    max: i64,
}

impl ClaimParams {
    fn of(request: &ClaimRequest) -> Self {
        let int = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        Self {
            queues: request
                .queues
                .iter()
                .map(|q| (q.name.clone(), int(q.limit), q.max_per_key.map(int)))
                .collect(),
            names: request.queues.iter().map(|q| q.name.clone()).collect(),
            now_ms: i64::try_from(request.now_ms).unwrap_or(i64::MAX),
            max: int(request.max),
        }
    }

    /// The claimed rows (locked) of every queue, and the next due time of a delayed job.
    async fn run(
        &self,
        client: &Client,
        statements: &Statements,
    ) -> Result<(Vec<tokio_postgres::Row>, Option<u64>), tokio_postgres::Error> {
        let claims = self.queues.iter().map(|(name, limit, max_per_key)| {
            let params: [&(dyn ToSql + Sync); 5] =
                [name, limit, &self.now_ms, &self.max, max_per_key];
            async move { client.query(&statements.claim, &params).await }
        });
        let due: [&(dyn ToSql + Sync); 2] = [&self.names, &self.now_ms];
        let (rows, next) = futures::try_join!(
            futures::future::try_join_all(claims),
            client.query_one(&statements.next_due, &due),
        )?;
        let next: Option<i64> = next.get(0);
        Ok((
            rows.into_iter().flatten().collect(),
            next.and_then(|ms| u64::try_from(ms).ok()),
        ))
    }
}

impl Rows {
    /// Sends the batch's rows, every statement pipelined on the connection. Sent in the
    /// first poll, before any await: a COMMIT polled after this future follows them.
    async fn write(
        self,
        client: &Client,
        statements: &Statements,
        node: Uuid,
    ) -> Result<(), tokio_postgres::Error> {
        let gone = |id: &Uuid| self.deleted.contains(id) || self.deleted_batches.contains(id);

        let mut jobs = JobColumns::default();
        for id in &self.dirty {
            if let Some(Some(job)) = self.jobs.get(id).filter(|_| !gone(id)) {
                jobs.push(job);
            }
        }
        let (payload_ids, payloads): (Vec<Uuid>, Vec<&str>) = self
            .payloads
            .iter()
            .filter(|(id, _)| !gone(id))
            .map(|(id, text)| (*id, text.as_str()))
            .unzip();
        let (key_slots, key_ids): (Vec<&[u8]>, Vec<Uuid>) = self
            .new_keys
            .iter()
            .filter(|(_, id)| !gone(id))
            .map(|(slot, id)| (slot.as_bytes(), *id))
            .unzip();
        let mut result_ids = Vec::new();
        let mut results = Vec::new();
        let mut cleared = Vec::new();
        for (id, result) in self.results.iter().filter(|(id, _)| !gone(id)) {
            match result {
                Some(text) => {
                    result_ids.push(*id);
                    results.push(text.as_str());
                }
                None => cleared.push(*id),
            }
        }
        let mut events = EventColumns::default();
        for event in self.events.iter().filter(|event| !gone(&event.0)) {
            events.push(event);
        }
        let mut feed = FeedColumns::default();
        for entry in &self.feed {
            feed.push(entry);
        }
        let mut journal = JournalColumns::default();
        for ((id, index), entry) in self.journal.iter().filter(|((id, _), _)| !gone(id)) {
            journal.push(*id, *index, entry);
        }
        let deleted: Vec<Uuid> = self.deleted.iter().copied().collect();
        let deleted_batches: Vec<Uuid> = self.deleted_batches.iter().copied().collect();
        let mut batches = BatchColumns::default();
        for id in &self.dirty_batches {
            if let Some(Some(batch)) = self.batches.get(id).filter(|_| !gone(id)) {
                batches.push(batch);
            }
        }
        let notices = notices(node, &self.events, &self.changed, &self.deleted);

        // Jobs first: a job row exists before anything of it is written. The connection
        // runs them in the order sent.
        let mut statements_sent: Vec<(&Statement, Vec<&(dyn ToSql + Sync)>)> = Vec::new();
        if !jobs.ids.is_empty() {
            statements_sent.push((&statements.upsert_jobs, jobs.params()));
        }
        if !batches.ids.is_empty() {
            statements_sent.push((&statements.upsert_batches, batches.params()));
        }
        if !payload_ids.is_empty() {
            statements_sent.push((&statements.insert_payloads, vec![&payload_ids, &payloads]));
        }
        if !key_slots.is_empty() {
            statements_sent.push((&statements.insert_idempotency, vec![&key_slots, &key_ids]));
        }
        if !result_ids.is_empty() {
            statements_sent.push((&statements.upsert_results, vec![&result_ids, &results]));
        }
        if !cleared.is_empty() {
            statements_sent.push((&statements.delete_results, vec![&cleared]));
        }
        if !events.ids.is_empty() {
            statements_sent.push((&statements.insert_events, events.params()));
        }
        if !feed.positions.is_empty() {
            statements_sent.push((&statements.insert_feed, feed.params()));
        }
        if !journal.ids.is_empty() {
            statements_sent.push((&statements.upsert_journal, journal.params()));
        }
        if !deleted.is_empty() {
            for statement in &statements.delete_jobs {
                statements_sent.push((statement, vec![&deleted]));
            }
        }
        if !deleted_batches.is_empty() {
            for statement in &statements.delete_batches {
                statements_sent.push((statement, vec![&deleted_batches]));
            }
        }
        let trim = self.trim_below;
        if let Some(below) = &trim {
            statements_sent.push((&statements.trim_feed, vec![below]));
        }
        let head = self.feed_head;
        let queued_delta = self.queued_delta;
        if let Some(next) = &head {
            statements_sent.push((&statements.set_feed_head, vec![next, &queued_delta]));
        }
        let channel = NOTIFY_CHANNEL;
        if !notices.is_empty() {
            statements_sent.push((&statements.notify, vec![&channel, &notices]));
        }
        let sent = statements_sent
            .iter()
            .map(|(statement, params)| client.execute(*statement, params.as_slice()));
        futures::future::try_join_all(sent).await?;
        Ok(())
    }
}

/// The wake-ups of a batch: `node`, then one line per job: `!job_id:status` for each job
/// whose status changed, `job_id:seq` of each job's newest event; cut into payloads under
/// PostgreSQL's limit.
fn notices(
    node: Uuid,
    events: &[(Uuid, i64, String, String, i64)],
    changed: &HashMap<Uuid, i16>,
    deleted: &HashSet<Uuid>,
) -> Vec<String> {
    let mut newest: HashMap<Uuid, i64> = HashMap::new();
    for (id, seq, ..) in events.iter().filter(|event| !deleted.contains(&event.0)) {
        let slot = newest.entry(*id).or_default();
        *slot = (*slot).max(*seq);
    }
    let status_lines = changed
        .iter()
        .filter(|(id, _)| !deleted.contains(id))
        .map(|(id, status)| format!("!{id}:{status}"));
    let event_lines = newest.into_iter().map(|(id, seq)| format!("{id}:{seq}"));
    let mut payloads = Vec::new();
    let mut current = String::new();
    for line in status_lines.chain(event_lines) {
        if !current.is_empty() && current.len() + line.len() + 1 > MAX_NOTIFY_BYTES {
            payloads.push(std::mem::take(&mut current));
        }
        if current.is_empty() {
            current = node.to_string();
        }
        current.push('\n');
        current.push_str(&line);
    }
    if !current.is_empty() {
        payloads.push(current);
    }
    payloads
}

#[derive(Default)]
struct JobColumns {
    ids: Vec<Uuid>,
    statuses: Vec<i16>,
    types: Vec<String>,
    tenants: Vec<Option<String>>,
    finished: Vec<Option<i64>>,
    records: Vec<String>,
    queues: Vec<String>,
    priorities: Vec<i32>,
    run_at: Vec<Option<i64>>,
    nodes: Vec<Option<Uuid>>,
    batches: Vec<Option<Uuid>>,
    concurrency_keys: Vec<Option<String>>,
    webhooks_due: Vec<Option<i64>>,
}

impl JobColumns {
    fn push(&mut self, job: &JobRecord) {
        self.ids.push(job.id);
        self.statuses.push(i16::from(job.status.code()));
        self.types.push(job.job_type.clone());
        self.tenants.push(job.tenant.clone());
        self.finished
            .push(job.finished_at_ms.and_then(|ms| i64::try_from(ms).ok()));
        // A record always serialises: every field is plain data.
        self.records
            .push(serde_json::to_string(job).unwrap_or_default());
        self.queues.push(job.queue.clone());
        self.priorities.push(job.priority);
        self.run_at
            .push(job.run_at_ms.and_then(|ms| i64::try_from(ms).ok()));
        // Only a running job holds a lease.
        self.nodes.push(job.lease().map(|lease| lease.node));
        self.batches.push(job.batch);
        self.concurrency_keys.push(job.concurrency_key.clone());
        self.webhooks_due
            .push(job.webhook_due_ms().and_then(|ms| i64::try_from(ms).ok()));
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![
            &self.ids,
            &self.statuses,
            &self.types,
            &self.tenants,
            &self.finished,
            &self.records,
            &self.queues,
            &self.priorities,
            &self.run_at,
            &self.nodes,
            &self.batches,
            &self.concurrency_keys,
            &self.webhooks_due,
        ]
    }
}

#[derive(Default)]
struct BatchColumns {
    ids: Vec<Uuid>,
    tenants: Vec<Option<String>>,
    records: Vec<String>,
}

impl BatchColumns {
    fn push(&mut self, batch: &BatchRecord) {
        self.ids.push(batch.id);
        self.tenants.push(batch.tenant.clone());
        // A record always serialises: every field is plain data.
        self.records
            .push(serde_json::to_string(batch).unwrap_or_default());
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.ids, &self.tenants, &self.records]
    }
}

#[derive(Default)]
struct EventColumns<'a> {
    ids: Vec<Uuid>,
    seqs: Vec<i64>,
    names: Vec<&'a str>,
    data: Vec<&'a str>,
    at: Vec<i64>,
}

impl<'a> EventColumns<'a> {
    fn push(&mut self, (id, seq, name, data, at): &'a (Uuid, i64, String, String, i64)) {
        self.ids.push(*id);
        self.seqs.push(*seq);
        self.names.push(name);
        self.data.push(data);
        self.at.push(*at);
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.ids, &self.seqs, &self.names, &self.data, &self.at]
    }
}

#[derive(Default)]
struct FeedColumns {
    positions: Vec<i64>,
    ids: Vec<Uuid>,
    seqs: Vec<i64>,
    statuses: Vec<i16>,
}

impl FeedColumns {
    fn push(&mut self, (position, id, seq, status): &(i64, Uuid, i64, i16)) {
        self.positions.push(*position);
        self.ids.push(*id);
        self.seqs.push(*seq);
        self.statuses.push(*status);
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.positions, &self.ids, &self.seqs, &self.statuses]
    }
}

#[derive(Default)]
struct JournalColumns<'a> {
    ids: Vec<Uuid>,
    indexes: Vec<i64>,
    entries: Vec<&'a [u8]>,
}

impl<'a> JournalColumns<'a> {
    fn push(&mut self, id: Uuid, index: i64, entry: &'a [u8]) {
        self.ids.push(id);
        self.indexes.push(index);
        self.entries.push(entry);
    }

    fn params(&self) -> Vec<&(dyn ToSql + Sync)> {
        vec![&self.ids, &self.indexes, &self.entries]
    }
}
