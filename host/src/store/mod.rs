//! Durable state: jobs, their payloads and results, their event logs, the listing indexes,
//! the idempotency keys, the LLM call journals and the uploads' records.
//!
//! [`Store`] is the storage contract the scheduler uses, over one of two backends: a redb
//! file in the data dir (the default: nothing else to run) or a PostgreSQL database. Both
//! run the same group commit ([`batch`]): every write goes to the backend's single writer,
//! which commits whatever is waiting in one transaction, answers the callers only after the
//! commit, and then publishes the committed events on the [`Bus`].

mod batch;
mod bus;
mod bytes;
mod files;
mod model;
mod postgres;
mod redb;

pub use batch::{
    Change, ClaimQueue, ClaimRequest, Claimed, Inserted, Mutation, NewJob, ReleaseRule,
    batch_event_names,
};
pub use bus::Bus;
pub use files::{ArtifactRecord, BlobDir, ByteStream, FileRecord, read_range};
pub use model::{
    BatchRecord, CatchUp, DeliveryRecord, DependencyFailure, Encodings, ErrorInfo, JobEvent,
    JobRecord, JobStatus, Lease, NewEvent, NodeRecord, ScheduleRecord, ScheduledBy, StatusCounts,
    WebhookRecord, idempotency_slot, now_ms, rfc3339,
};
pub use postgres::{PostgresOptions, redact_url};

use std::path::Path;
use std::sync::{Arc, OnceLock};

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use batch::{Op, StoredEvent};

/// Why a store call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No such job.
    #[error("no such job")]
    NotFound,
    /// The change is not allowed in the job's current state.
    #[error("{0}")]
    Conflict(String),
    /// The backend failed; the change was not saved.
    #[error("storage error: {0}")]
    Storage(String),
    /// The database cannot be reached (PostgreSQL down or the connection lost); the change
    /// was not saved. It may work again later, without a restart.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The writer has stopped (the process is shutting down).
    #[error("the store is closed")]
    Closed,
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
    /// Only jobs of this batch.
    pub batch: Option<Uuid>,
    /// Page size.
    pub limit: usize,
    /// Only jobs older than this one (the previous page's last id).
    pub before: Option<Uuid>,
}

impl ListQuery {
    /// Whether `job` passes every filter.
    fn matches(&self, job: &JobRecord) -> bool {
        self.job_type.as_ref().is_none_or(|t| *t == job.job_type)
            && self.status.is_none_or(|s| s == job.status)
            && (self.tenant.is_none() || self.tenant == job.tenant)
            && (self.batch.is_none() || self.batch == job.batch)
    }
}

/// A page of jobs, newest first.
#[derive(Clone, Debug)]
pub struct Page {
    /// The jobs.
    pub jobs: Vec<JobRecord>,
    /// Pass as `before` to get the next page; `None` on the last page.
    pub next: Option<Uuid>,
}

impl Page {
    fn of(mut jobs: Vec<JobRecord>, limit: usize) -> Self {
        let next = cut_page(&mut jobs, limit, |job| job.id);
        Self { jobs, next }
    }
}

/// A page of batches, newest first.
#[derive(Clone, Debug)]
pub struct BatchPage {
    pub batches: Vec<BatchRecord>,
    /// Pass as `before` to get the next page; `None` on the last page.
    pub next: Option<Uuid>,
}

impl BatchPage {
    fn of(mut batches: Vec<BatchRecord>, limit: usize) -> Self {
        let next = cut_page(&mut batches, limit, |batch| batch.id);
        Self { batches, next }
    }
}

/// Cuts `items`, read one past `limit`, to the page of `limit`: the extra one tells
/// whether there is a next page, which starts after the returned id.
fn cut_page<T>(items: &mut Vec<T>, limit: usize, id: fn(&T) -> Uuid) -> Option<Uuid> {
    (items.len() > limit).then(|| {
        items.truncate(limit);
        id(&items[limit - 1])
    })
}

/// One queue's figures in a shared store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueueCount {
    pub queue: String,
    pub queued: u64,
    pub running: u64,
    /// When the oldest due job became due (its `run_at`, else its creation), ms.
    pub oldest_due_ms: Option<u64>,
}

/// Which backend a [`Store`] runs on.
enum Backend {
    Redb(redb::RedbStore),
    Postgres(postgres::PgStore),
}

/// The store. Share it behind an `Arc`.
pub struct Store {
    backend: Backend,
    tx: Option<mpsc::UnboundedSender<Op>>,
    /// This process's node id (PostgreSQL also tags its `NOTIFY`s with it).
    node: Uuid,
    /// Committed events, live.
    pub bus: Arc<Bus>,
    /// The data dir's upload and artifact bytes: all of them with redb, node-local
    /// copies with PostgreSQL (see `store/bytes.rs`).
    pub blobs: BlobDir,
    /// How a job waiting on another is released when that one ends (set by the scheduler;
    /// until then, nothing is released).
    release: OnceLock<ReleaseRule>,
}

impl Store {
    /// Opens (or creates) the redb database at `path` and starts the writer.
    /// `bus_capacity` is how far an SSE subscriber may lag before it is cut off;
    /// `feed_retention` how many of the newest events the all-jobs feed keeps for clients
    /// resuming `/v1/events`.
    pub fn open(path: &Path, bus_capacity: usize, feed_retention: u64) -> anyhow::Result<Self> {
        let bus = Arc::new(Bus::new(bus_capacity));
        let (backend, tx) = redb::RedbStore::open(path, bus.clone(), feed_retention)?;
        Ok(Self {
            backend: Backend::Redb(backend),
            tx: Some(tx),
            node: Uuid::now_v7(),
            bus,
            blobs: BlobDir::new(path.parent().unwrap_or(Path::new("."))),
            release: OnceLock::new(),
        })
    }

    /// Connects to the PostgreSQL database `options.url`, brings its schema up to date
    /// and starts the writer and the listener. Upload and artifact bytes are kept in the
    /// database; `data_dir` holds this node's copies of uploads.
    pub async fn open_postgres(
        options: PostgresOptions,
        data_dir: &Path,
        bus_capacity: usize,
        feed_retention: u64,
    ) -> anyhow::Result<Self> {
        let bus = Arc::new(Bus::new(bus_capacity));
        let node = node_id_of(data_dir)?;
        let (backend, tx) =
            postgres::PgStore::open(options, bus.clone(), feed_retention, node).await?;
        Ok(Self {
            backend: Backend::Postgres(backend),
            tx: Some(tx),
            node,
            bus,
            blobs: BlobDir::new(data_dir),
            release: OnceLock::new(),
        })
    }

    /// Gives the store the transition of a job whose dependency has ended, which the writer
    /// applies in the commit that ends the dependency (the first rule given stays).
    pub fn set_release_rule(&self, rule: ReleaseRule) {
        let _ = self.release.set(rule);
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
            release: self.release.get().copied(),
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Stores a new batch with its jobs (each naming it in `batch`) in one commit; durable
    /// when this returns. Returns the batch and the jobs as stored.
    pub async fn insert_batch(
        &self,
        batch: BatchRecord,
        jobs: Vec<NewJob>,
    ) -> Result<(BatchRecord, Vec<JobRecord>), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::InsertBatch {
            batch: Box::new(batch),
            jobs,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// One batch.
    pub async fn batch(&self, id: Uuid) -> Result<Option<BatchRecord>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.batch(id),
            Backend::Postgres(db) => db.batch(id).await,
        }
    }

    /// Up to `limit` jobs whose webhook delivery is due by `now_ms`, soonest first: the
    /// outbox.
    pub async fn webhooks_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.webhooks_due(now_ms, limit),
            Backend::Postgres(db) => db.webhooks_due(now_ms, limit).await,
        }
    }

    /// Up to `limit` batches older than `before`, newest first; only `tenant`'s if given.
    pub async fn list_batches(
        &self,
        tenant: Option<&str>,
        before: Option<Uuid>,
        limit: usize,
    ) -> Result<BatchPage, StoreError> {
        let limit = limit.max(1);
        let batches = match &self.backend {
            Backend::Redb(db) => db.list_batches(tenant, before, limit + 1)?,
            Backend::Postgres(db) => db.list_batches(tenant, before, limit + 1).await?,
        };
        Ok(BatchPage::of(batches, limit))
    }

    /// Up to `limit` events of a batch's log with a sequence number above `after`, in
    /// order.
    pub async fn batch_events_after(
        &self,
        batch: &BatchRecord,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let stored = match &self.backend {
            Backend::Redb(db) => db.log_after(batch.id, after, limit)?,
            Backend::Postgres(db) => db.log_after(batch.id, after, limit).await?,
        };
        Ok(stored
            .into_iter()
            .map(|(seq, event)| batch_event(batch, seq, event))
            .collect())
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
            release: self.release.get().copied(),
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Queues `mutate` without waiting for its commit: for progress events, which a
    /// plugin emits without waiting. Order with later changes of the job is kept. It may
    /// run more than once (a commit retried after the database came back), each time on
    /// the job's current record.
    pub fn update_detached(
        &self,
        id: Uuid,
        mutate: impl Fn(&mut JobRecord) -> Result<Change, StoreError> + Send + Sync + 'static,
    ) {
        let _ = self.send(Op::Detached {
            id,
            mutate: Arc::new(mutate),
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
    /// the attempt ends; durable when this returns. With a `lease`, refused
    /// ([`StoreError::Conflict`]) unless the job's running attempt still holds it.
    pub async fn journal_call(
        &self,
        job: Uuid,
        index: u64,
        entry: Vec<u8>,
        cost: crate::llm::Usage,
        lease: Option<Lease>,
    ) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Journal {
            job,
            index,
            entry,
            cost,
            lease,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Starts due jobs with `start` (see [`ClaimRequest`]), in order of priority, then
    /// `run_at`, then age, skipping jobs another node is claiming; durable when this
    /// returns. Only for a store other nodes share ([`Store::is_shared`]).
    pub async fn claim(
        &self,
        request: ClaimRequest,
        start: impl Fn(&mut JobRecord) -> Result<Change, StoreError> + Send + Sync + 'static,
    ) -> Result<Claimed, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Claim {
            request,
            start: Arc::new(start),
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Whether other Kiln nodes may share this store (PostgreSQL): then jobs are claimed
    /// from the store, not from this process's queues.
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// The records of the jobs among `ids` that exist.
    pub async fn jobs(&self, ids: &[Uuid]) -> Result<Vec<JobRecord>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => ids
                .iter()
                .filter_map(|id| db.get(*id).transpose())
                .collect(),
            Backend::Postgres(db) => db.jobs(ids).await,
        }
    }

    /// Running jobs whose lease no live node holds: their node sent no heartbeat for
    /// `lease_ms` (by the database's clock), stopped, or is unknown. With their attempt
    /// and node, so the rescue can check nothing changed since. Never this node's own
    /// (it is alive, asking, even before its first heartbeat). None with redb.
    pub async fn orphaned(
        &self,
        lease_ms: u64,
    ) -> Result<Vec<(Uuid, u32, Option<Uuid>)>, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(Vec::new()),
            Backend::Postgres(db) => db.orphaned(lease_ms, self.node).await,
        }
    }

    /// Takes or renews the leader's lease for this node for `lease_ms`; returns whether
    /// this node is the leader. With redb, always.
    pub async fn lead(&self, lease_ms: u64) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(true),
            Backend::Postgres(db) => db.lead(self.node, lease_ms).await,
        }
    }

    /// The node holding the leader's lease now (with redb, this one).
    pub async fn leader(&self) -> Result<Option<Uuid>, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(Some(self.node)),
            Backend::Postgres(db) => db.leader().await,
        }
    }

    /// Gives the leader's lease up, if this node holds it (at shutdown).
    pub async fn resign(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(()),
            Backend::Postgres(db) => db.resign(self.node).await,
        }
    }

    /// Per queue: jobs waiting, jobs running, and since when the oldest due job waits
    /// (ms), over the whole store. With redb, none (its queues are in memory).
    pub async fn queue_counts(&self) -> Result<Vec<QueueCount>, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(Vec::new()),
            Backend::Postgres(db) => db.queue_counts().await,
        }
    }

    /// The limits LLM providers share with the other nodes of the database, which count a
    /// node whose heartbeat is older than `alive_ms` as dead; with redb, none.
    pub fn shared_limits(&self, alive_ms: u64) -> Option<Arc<dyn crate::llm::SharedLimits>> {
        match &self.backend {
            Backend::Redb(_) => None,
            Backend::Postgres(db) => Some(db.provider_limits(self.node, alive_ms)),
        }
    }

    /// Jobs queued in the whole store (every node's), from a counter the writers keep;
    /// with redb, `None` (its queues are in memory).
    pub async fn queued_total(&self) -> Result<Option<u64>, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(None),
            Backend::Postgres(db) => db.queued_total().await.map(Some),
        }
    }

    /// Waits until every change sent before this call is committed.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let (reply, rx) = oneshot::channel();
        self.send(Op::Flush { reply })?;
        rx.await.map_err(|_| StoreError::Closed)
    }

    /// A job's journaled LLM calls, by index, as stored.
    pub async fn journal(&self, job: Uuid) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.journal(job),
            Backend::Postgres(db) => db.journal(job).await,
        }
    }

    /// One job.
    pub async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.get(id),
            Backend::Postgres(db) => db.get(id).await,
        }
    }

    /// A job's payload, JSON text.
    pub async fn payload(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.payload(id),
            Backend::Postgres(db) => db.payload(id).await,
        }
    }

    /// A completed job's result, JSON text.
    pub async fn result(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.result(id),
            Backend::Postgres(db) => db.result(id).await,
        }
    }

    /// Up to `limit` events of a job with a sequence number above `after`, in order.
    pub async fn events_after(
        &self,
        job: &JobRecord,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.events_after(job, after, limit),
            Backend::Postgres(db) => db.events_after(job, after, limit).await,
        }
    }

    /// The first and last position the feed of every job's events still holds (`None`
    /// before the first event).
    pub async fn feed_bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.feed_bounds(),
            Backend::Postgres(db) => db.feed_bounds().await,
        }
    }

    /// Up to `limit` events of the feed with a position above `after`, in order; events
    /// of jobs deleted since are left out.
    pub async fn feed_after(&self, after: u64, limit: usize) -> Result<Vec<JobEvent>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.feed_after(after, limit),
            Backend::Postgres(db) => db.feed_after(after, limit).await,
        }
    }

    /// A page of jobs, newest first.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.list(query),
            Backend::Postgres(db) => db.list(query).await,
        }
    }

    /// Ids of every job with `status`, oldest first (used by recovery at start).
    pub async fn ids_with_status(&self, status: JobStatus) -> Result<Vec<Uuid>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.ids_with_status(status),
            Backend::Postgres(db) => db.ids_with_status(status).await,
        }
    }

    /// Up to `limit` jobs that finished at or before `ms`, oldest first.
    pub async fn finished_before(&self, ms: u64, limit: usize) -> Result<Vec<Uuid>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.finished_before(ms, limit),
            Backend::Postgres(db) => db.finished_before(ms, limit).await,
        }
    }

    /// How many jobs are stored, by type and status (for `/metrics`).
    pub async fn count_by_type_and_status(
        &self,
    ) -> Result<Vec<(String, JobStatus, u64)>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.count_by_type_and_status(),
            Backend::Postgres(db) => db.count_by_type_and_status().await,
        }
    }

    /// How many jobs are stored.
    pub async fn job_count(&self) -> Result<u64, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.job_count(),
            Backend::Postgres(db) => db.job_count().await,
        }
    }

    /// This process's node id.
    pub fn node_id(&self) -> Uuid {
        self.node
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.schedules(),
            Backend::Postgres(db) => db.schedules().await,
        }
    }

    /// Writes `record` if the stored schedule of its name is the definition `expected`
    /// (`None`: there is none); `false` when it is not (created, changed or deleted
    /// meanwhile).
    pub async fn put_schedule(
        &self,
        record: &ScheduleRecord,
        expected: Option<Uuid>,
    ) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.put_schedule(record, expected).await,
            Backend::Postgres(db) => db.put_schedule(record, expected).await,
        }
    }

    /// Deletes a schedule; `false` when there was none.
    pub async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.delete_schedule(name).await,
            Backend::Postgres(db) => db.delete_schedule(name).await,
        }
    }

    /// Writes this node's heartbeat record. With redb there is no one to tell: nothing is
    /// written.
    pub async fn record_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(()),
            Backend::Postgres(db) => db.record_node(node).await,
        }
    }

    /// The nodes that sent a heartbeat at or after `since_ms` (none with redb: the only
    /// node is this process, which knows itself).
    pub async fn nodes(&self, since_ms: u64) -> Result<Vec<NodeRecord>, StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(Vec::new()),
            Backend::Postgres(db) => db.nodes(since_ms).await,
        }
    }

    /// Forgets the nodes whose last heartbeat is older than `before_ms`.
    pub async fn forget_nodes(&self, before_ms: u64) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(_) => Ok(()),
            Backend::Postgres(db) => db.forget_nodes(before_ms).await,
        }
    }

    /// An upload's record, expired or not (the caller checks `expires_at_ms`).
    pub async fn file(&self, id: Uuid) -> Result<Option<FileRecord>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.file(id),
            Backend::Postgres(db) => db.file(id).await,
        }
    }

    /// Deletes the records of uploads expired at `now_ms`, at most `limit`, and returns
    /// their ids (whose bytes the caller removes).
    pub async fn delete_expired_files(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.delete_expired_files(now_ms, limit).await,
            Backend::Postgres(db) => db.delete_expired_files(now_ms, limit).await,
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the channel ends the writer after it commits what it has.
        self.tx.take();
        match &mut self.backend {
            Backend::Redb(db) => db.close(),
            Backend::Postgres(db) => db.close(),
        }
    }
}

/// The id of the node whose data dir is `data_dir`, made on first use and kept in its
/// `node-id` file: a node restarted after a crash is the same node, and takes back the
/// jobs its previous run left `running` at once instead of after their lease expires.
fn node_id_of(data_dir: &Path) -> anyhow::Result<Uuid> {
    use anyhow::Context as _;
    let path = data_dir.join("node-id");
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse()
            .with_context(|| format!("{} does not hold a node id", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let id = Uuid::now_v7();
            std::fs::create_dir_all(data_dir)
                .and_then(|()| std::fs::write(&path, format!("{id}\n")))
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(id)
        }
        Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
    }
}

/// A stored event of a batch's log as readers get it: under the batch's id, with no feed
/// position.
fn batch_event(batch: &BatchRecord, seq: u64, stored: StoredEvent) -> JobEvent {
    JobEvent {
        job_id: batch.id,
        seq,
        feed_seq: 0,
        name: stored.name,
        data: stored.data,
        at_ms: stored.at_ms,
        job_type: batch.job_type.clone(),
        status: batch.status(),
        tenant: batch.tenant.clone(),
        encodings: Default::default(),
    }
}

/// A stored event as the [`JobEvent`] readers get, with the job's details.
fn event_of(
    job: &JobRecord,
    seq: u64,
    feed_seq: u64,
    stored: StoredEvent,
    status: JobStatus,
) -> JobEvent {
    JobEvent {
        job_id: job.id,
        seq,
        feed_seq,
        name: stored.name,
        data: stored.data,
        at_ms: stored.at_ms,
        job_type: job.job_type.clone(),
        status,
        tenant: job.tenant.clone(),
        encodings: Default::default(),
    }
}
