//! The PostgreSQL backend, for teams that already run PostgreSQL (and, next, for several
//! Kiln nodes sharing one database).
//!
//! The driver is tokio-postgres: it pipelines the statements sent on one connection
//! without waiting for each answer (the writer's batch is a fixed number of round trips),
//! and it delivers `LISTEN`/`NOTIFY` messages, which wake other processes following a
//! job's log. Reads go through a deadpool-postgres pool of connections with cached
//! statements; writes go through the one writer task ([`writer`]).
//!
//! Connections are plain TCP or Unix sockets (no TLS yet): run Kiln next to its database
//! or inside a private network.

mod blobs;
mod limits;
mod listen;
mod schema;
mod writer;

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls, Row};
use uuid::Uuid;

use super::batch::{Feed, Op, StoredEvent};
use super::bus::Bus;
use super::model::{BatchRecord, JobEvent, JobRecord, JobStatus, NodeRecord, ScheduleRecord};
use super::{FileRecord, ListQuery, Page, StoreError};

pub(super) use blobs::copy_checked;

/// The database's clock, ms since the epoch: leases are judged by it, so the nodes' clocks
/// need not agree.
const DB_NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// The channel of the writer's wake-ups: payloads are `node id` then `job_id:seq` lines.
const NOTIFY_CHANNEL: &str = "kiln_events";

/// How Kiln reaches PostgreSQL.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/dbname?…` or `host=… dbname=…`.
    pub url: String,
    /// Connections kept for reads (the writer and the listener have one each).
    pub pool_size: usize,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
}

impl PostgresOptions {
    /// Options for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// `url` with its password replaced by `***`, for logs, errors and `kiln doctor`: the
/// password never leaves the process. Handles both the URL and the `key=value` forms.
pub fn redact_url(url: &str) -> String {
    if url.contains("://") {
        // `url` parses postgres URLs as generic URLs.
        return match url::Url::parse(url) {
            Ok(mut parsed) => {
                if parsed.password().is_some() {
                    let _ = parsed.set_password(Some("***"));
                }
                let pairs: Vec<(String, String)> = parsed
                    .query_pairs()
                    .map(|(k, v)| {
                        let v = if k == "password" {
                            "***".into()
                        } else {
                            v.into_owned()
                        };
                        (k.into_owned(), v)
                    })
                    .collect();
                if !pairs.is_empty() {
                    parsed.query_pairs_mut().clear().extend_pairs(pairs);
                }
                parsed.to_string()
            }
            Err(_) => "postgres://(unparsable URL)".into(),
        };
    }
    url.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some(("password", _)) => "password=***".to_string(),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Opens connections with the configured options.
#[derive(Clone)]
struct PgConnector {
    config: tokio_postgres::Config,
}

impl PgConnector {
    async fn connect(&self) -> Result<Client, StoreError> {
        let (client, connection) = self.config.connect(NoTls).await.map_err(classify)?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "a PostgreSQL connection ended");
            }
        });
        Ok(client)
    }
}

/// The pool, the writer and the listener.
pub(super) struct PgStore {
    pool: Pool,
    tasks: Vec<JoinHandle<()>>,
}

impl PgStore {
    /// Connects, migrates, and starts the writer (taking the ops sent to the returned
    /// channel) and the listener.
    pub(super) async fn open(
        options: PostgresOptions,
        bus: Arc<Bus>,
        feed_retention: u64,
        node: Uuid,
    ) -> anyhow::Result<(Self, mpsc::UnboundedSender<Op>)> {
        let redacted = redact_url(&options.url);
        let mut config = tokio_postgres::Config::from_str(&options.url)
            .map_err(|e| anyhow::anyhow!("the database URL {redacted} is invalid: {e}"))?;
        if config.get_application_name().is_none() {
            config.application_name("kiln");
        }
        config.connect_timeout(options.connect_timeout);
        config.keepalives_idle(Duration::from_secs(30));
        let connector = PgConnector {
            config: config.clone(),
        };
        let mut client = connector
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("connecting to PostgreSQL at {redacted}: {e}"))?;
        let version = schema::migrate(&mut client)
            .await
            .with_context(|| format!("preparing the Kiln schema in {redacted}"))?;
        let next_feed: i64 = client
            .query_one("SELECT coalesce(max(position), 0) + 1 FROM kiln_feed", &[])
            .await
            .context("reading the feed position")?
            .get(0);
        tracing::info!(database = %redacted, schema = version, "storage: PostgreSQL");

        let pool = Pool::builder(Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        ))
        .max_size(options.pool_size.max(1))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(options.connect_timeout))
        .create_timeout(Some(options.connect_timeout))
        .build()
        .context("creating the PostgreSQL pool")?;

        let (tx, rx) = mpsc::unbounded_channel();
        let writer = writer::Writer {
            connector: connector.clone(),
            bus: bus.clone(),
            feed: Feed {
                next: u64::try_from(next_feed).unwrap_or(1),
                retention: feed_retention.max(1),
            },
            node,
            retry: Default::default(),
        };
        let (listening, heard) = tokio::sync::oneshot::channel();
        let tasks = vec![
            tokio::spawn(writer.run(rx, client)),
            tokio::spawn(listen::run(connector, pool.clone(), bus, node, listening)),
        ];
        // A node that answers requests should already hear the others' wake-ups: a
        // subscriber that joins later would otherwise wait for a gap to see their events.
        if tokio::time::timeout(options.connect_timeout, heard)
            .await
            .is_err()
        {
            tracing::warn!("the PostgreSQL listener is not listening yet; it keeps trying");
        }
        Ok((Self { pool, tasks }, tx))
    }

    /// Stops the listener; the writer ends by itself once its channel is closed.
    pub(super) fn close(&mut self) {
        if let Some(listener) = self.tasks.get(1) {
            listener.abort();
        }
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.pool.get().await.map_err(pool_error)?;
        let statement = client.prepare_cached(sql).await.map_err(classify)?;
        client.query(&statement, params).await.map_err(classify)
    }

    pub(super) async fn journal(&self, job: Uuid) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let rows = self
            .query(
                "SELECT idx, entry FROM kiln_journal WHERE job_id = $1 ORDER BY idx",
                &[&job],
            )
            .await?;
        rows.iter()
            .map(|row| Ok((u64_of(row.get(0))?, row.get(1))))
            .collect()
    }

    pub(super) async fn get(&self, id: Uuid) -> Result<Option<JobRecord>, StoreError> {
        let rows = self
            .query("SELECT record FROM kiln_jobs WHERE id = $1", &[&id])
            .await?;
        rows.first().map(|row| decode_job(row.get(0))).transpose()
    }

    pub(super) async fn payload(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let rows = self
            .query(
                "SELECT payload FROM kiln_payloads WHERE job_id = $1",
                &[&id],
            )
            .await?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    pub(super) async fn result(&self, id: Uuid) -> Result<Option<String>, StoreError> {
        let rows = self
            .query("SELECT result FROM kiln_results WHERE job_id = $1", &[&id])
            .await?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    pub(super) async fn events_after(
        &self,
        job: &JobRecord,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        Ok(self
            .log_after(job.id, after, limit)
            .await?
            .into_iter()
            .map(|(seq, stored)| super::event_of(job, seq, 0, stored, job.status))
            .collect())
    }

    /// Up to `limit` events of the log kept under `id` (a job's or a batch's) after
    /// `after`, with their sequence numbers.
    pub(super) async fn log_after(
        &self,
        id: Uuid,
        after: u64,
        limit: usize,
    ) -> Result<Vec<(u64, StoredEvent)>, StoreError> {
        let rows = self
            .query(
                "SELECT seq, name, data, at_ms FROM kiln_events \
                 WHERE job_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                &[&id, &i64_of(after)?, &i64_of(limit as u64)?],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let stored = stored_event(row.get(1), row.get(2), row.get(3))?;
                Ok((u64_of(row.get(0))?, stored))
            })
            .collect()
    }

    pub(super) async fn batch(&self, id: Uuid) -> Result<Option<BatchRecord>, StoreError> {
        let rows = self
            .query("SELECT record FROM kiln_batches WHERE id = $1", &[&id])
            .await?;
        rows.first().map(|row| decode_batch(row.get(0))).transpose()
    }

    /// Up to `limit` jobs whose webhook delivery is due by `now_ms`, soonest first.
    pub(super) async fn webhooks_due(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let (now, limit) = (i64_of(now_ms)?, i64_of(limit as u64)?);
        let rows = self
            .query(
                "SELECT record FROM kiln_jobs WHERE webhook_due_ms <= $1 \
                 ORDER BY webhook_due_ms, id LIMIT $2",
                &[&now, &limit],
            )
            .await?;
        rows.iter().map(|row| decode_job(row.get(0))).collect()
    }

    /// Up to `fetch` batches older than `before`, newest first; only `tenant`'s if given.
    pub(super) async fn list_batches(
        &self,
        tenant: Option<&str>,
        before: Option<Uuid>,
        fetch: usize,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        let before = before.unwrap_or(Uuid::max());
        let fetch = i64_of(fetch as u64)?;
        let rows = match tenant {
            Some(tenant) => {
                self.query(
                    "SELECT record FROM kiln_batches WHERE id < $1 AND tenant = $2 \
                     ORDER BY id DESC LIMIT $3",
                    &[&before, &tenant, &fetch],
                )
                .await?
            }
            None => {
                self.query(
                    "SELECT record FROM kiln_batches WHERE id < $1 ORDER BY id DESC LIMIT $2",
                    &[&before, &fetch],
                )
                .await?
            }
        };
        rows.iter().map(|row| decode_batch(row.get(0))).collect()
    }

    pub(super) async fn feed_bounds(&self) -> Result<Option<(u64, u64)>, StoreError> {
        let rows = self
            .query("SELECT min(position), max(position) FROM kiln_feed", &[])
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| StoreError::Storage("no answer".into()))?;
        let (first, last): (Option<i64>, Option<i64>) = (row.get(0), row.get(1));
        match first.zip(last) {
            Some((first, last)) => Ok(Some((u64_of(first)?, u64_of(last)?))),
            None => Ok(None),
        }
    }

    pub(super) async fn feed_after(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<JobEvent>, StoreError> {
        let rows = self
            .query(
                "SELECT f.position, f.seq, f.status, e.name, e.data, e.at_ms, j.record \
                 FROM kiln_feed f \
                 JOIN kiln_events e ON e.job_id = f.job_id AND e.seq = f.seq \
                 JOIN kiln_jobs j ON j.id = f.job_id \
                 WHERE f.position > $1 ORDER BY f.position LIMIT $2",
                &[&i64_of(after)?, &i64_of(limit as u64)?],
            )
            .await?;
        let mut records: HashMap<String, JobRecord> = HashMap::new();
        rows.iter()
            .map(|row| {
                let text: String = row.get(6);
                let job = match records.get(&text) {
                    Some(job) => job.clone(),
                    None => {
                        let job = decode_job(&text)?;
                        records.insert(text, job.clone());
                        job
                    }
                };
                let code: i16 = row.get(2);
                let status = u8::try_from(code)
                    .ok()
                    .and_then(JobStatus::from_code)
                    .unwrap_or(job.status);
                let stored = stored_event(row.get(3), row.get(4), row.get(5))?;
                Ok(super::event_of(
                    &job,
                    u64_of(row.get(1))?,
                    u64_of(row.get(0))?,
                    stored,
                    status,
                ))
            })
            .collect()
    }

    pub(super) async fn list(&self, query: &ListQuery) -> Result<Page, StoreError> {
        let limit = query.limit.max(1);
        // One statement per filter combination (each prepared once): a generic plan with
        // `$1 IS NULL OR …` would keep the planner from the matching index.
        let mut sql = String::from("SELECT record FROM kiln_jobs WHERE id < $1");
        let before = query.before.unwrap_or(Uuid::max());
        let status = query.status.map(|s| i16::from(s.code()));
        let fetch = i64_of(limit as u64 + 1)?;
        let mut params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&before];
        if let Some(status) = &status {
            params.push(status);
            sql.push_str(&format!(" AND status = ${}", params.len()));
        }
        if let Some(job_type) = &query.job_type {
            params.push(job_type);
            sql.push_str(&format!(" AND job_type = ${}", params.len()));
        }
        if let Some(tenant) = &query.tenant {
            params.push(tenant);
            sql.push_str(&format!(" AND tenant = ${}", params.len()));
        }
        if let Some(batch) = &query.batch {
            params.push(batch);
            sql.push_str(&format!(" AND batch = ${}", params.len()));
        }
        params.push(&fetch);
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", params.len()));
        let rows = self.query(&sql, &params).await?;
        let jobs = rows
            .iter()
            .map(|row| decode_job(row.get(0)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page::of(jobs, limit))
    }

    pub(super) async fn ids_with_status(&self, status: JobStatus) -> Result<Vec<Uuid>, StoreError> {
        let code = i16::from(status.code());
        let rows = self
            .query(
                "SELECT id FROM kiln_jobs WHERE status = $1 ORDER BY id",
                &[&code],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    pub(super) async fn finished_before(
        &self,
        ms: u64,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        let rows = self
            .query(
                "SELECT id FROM kiln_jobs WHERE finished_ms <= $1 \
                 ORDER BY finished_ms, id LIMIT $2",
                &[&i64_of(ms)?, &i64_of(limit as u64)?],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }

    pub(super) async fn count_by_type_and_status(
        &self,
    ) -> Result<Vec<(String, JobStatus, u64)>, StoreError> {
        let rows = self
            .query(
                "SELECT job_type, status, count(*) FROM kiln_jobs \
                 GROUP BY job_type, status ORDER BY job_type, status",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|row| {
                let code: i16 = row.get(1);
                let status = JobStatus::from_code(u8::try_from(code).ok()?)?;
                let count: i64 = row.get(2);
                Some((row.get(0), status, u64::try_from(count).ok()?))
            })
            .collect())
    }

    pub(super) async fn job_count(&self) -> Result<u64, StoreError> {
        let rows = self.query("SELECT count(*) FROM kiln_jobs", &[]).await?;
        let count: i64 = rows.first().map_or(0, |row| row.get(0));
        u64_of(count)
    }

    pub(super) async fn schedules(&self) -> Result<Vec<ScheduleRecord>, StoreError> {
        let rows = self
            .query("SELECT record FROM kiln_schedules ORDER BY name", &[])
            .await?;
        rows.iter()
            .map(|row| {
                serde_json::from_str(row.get(0))
                    .map_err(|e| StoreError::Storage(format!("corrupt schedule: {e}")))
            })
            .collect()
    }

    pub(super) async fn put_schedule(
        &self,
        record: &ScheduleRecord,
        expected: Option<Uuid>,
    ) -> Result<bool, StoreError> {
        let text = serde_json::to_string(record).map_err(|e| StoreError::Storage(e.to_string()))?;
        let rows = match expected {
            None => {
                self.query(
                    "INSERT INTO kiln_schedules (name, id, record) VALUES ($1, $2, $3) \
                     ON CONFLICT (name) DO NOTHING RETURNING name",
                    &[&record.name, &record.id, &text],
                )
                .await?
            }
            Some(expected) => {
                self.query(
                    "UPDATE kiln_schedules SET id = $2, record = $3 WHERE name = $1 AND id = $4 \
                     RETURNING name",
                    &[&record.name, &record.id, &text, &expected],
                )
                .await?
            }
        };
        Ok(!rows.is_empty())
    }

    pub(super) async fn delete_schedule(&self, name: &str) -> Result<bool, StoreError> {
        let rows = self
            .query(
                "DELETE FROM kiln_schedules WHERE name = $1 RETURNING name",
                &[&name],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    pub(super) async fn record_node(&self, node: &NodeRecord) -> Result<(), StoreError> {
        let text = serde_json::to_string(node).map_err(|e| StoreError::Storage(e.to_string()))?;
        self.query(
            // The heartbeat column is the database's clock, which judges leases.
            &format!(
                "INSERT INTO kiln_nodes (id, heartbeat_ms, record) VALUES ($1, {DB_NOW_MS}, $2) \
                 ON CONFLICT (id) DO UPDATE SET heartbeat_ms = EXCLUDED.heartbeat_ms, \
                 record = EXCLUDED.record"
            ),
            &[&node.id, &text],
        )
        .await
        .map(drop)
    }

    pub(super) async fn nodes(&self, since_ms: u64) -> Result<Vec<NodeRecord>, StoreError> {
        let rows = self
            .query(
                "SELECT record FROM kiln_nodes WHERE heartbeat_ms >= $1 ORDER BY id",
                &[&i64_of(since_ms)?],
            )
            .await?;
        rows.iter()
            .map(|row| {
                serde_json::from_str(row.get(0))
                    .map_err(|e| StoreError::Storage(format!("corrupt node record: {e}")))
            })
            .collect()
    }

    pub(super) async fn jobs(&self, ids: &[Uuid]) -> Result<Vec<JobRecord>, StoreError> {
        let rows = self
            .query("SELECT record FROM kiln_jobs WHERE id = ANY($1)", &[&ids])
            .await?;
        rows.iter().map(|row| decode_job(row.get(0))).collect()
    }

    pub(super) async fn orphaned(
        &self,
        lease_ms: u64,
        this_node: Uuid,
    ) -> Result<Vec<(Uuid, u32, Option<Uuid>)>, StoreError> {
        let rows = self
            .query(
                &format!(
                    "SELECT j.id, j.record FROM kiln_jobs j LEFT JOIN kiln_nodes n ON n.id = j.node \
                     WHERE j.status = 1 AND j.node IS DISTINCT FROM $2 AND (n.id IS NULL OR n.heartbeat_ms < {DB_NOW_MS} - $1 \
                     OR n.record::jsonb ->> 'stopped_at_ms' IS NOT NULL) ORDER BY j.id LIMIT 1000"
                ),
                &[&i64_of(lease_ms)?, &this_node],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let job = decode_job(row.get(1))?;
                Ok((job.id, job.attempt, job.node))
            })
            .collect()
    }

    pub(super) async fn lead(&self, node: Uuid, lease_ms: u64) -> Result<bool, StoreError> {
        let rows = self
            .query(
                &format!(
                    "INSERT INTO kiln_leader (node, expires_ms) VALUES ($1, {DB_NOW_MS} + $2) \
                     ON CONFLICT (singleton) DO UPDATE SET node = EXCLUDED.node, \
                     expires_ms = EXCLUDED.expires_ms \
                     WHERE kiln_leader.node = EXCLUDED.node OR kiln_leader.expires_ms < {DB_NOW_MS} \
                     RETURNING node"
                ),
                &[&node, &i64_of(lease_ms)?],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    pub(super) async fn leader(&self) -> Result<Option<Uuid>, StoreError> {
        let rows = self
            .query(
                &format!("SELECT node FROM kiln_leader WHERE expires_ms > {DB_NOW_MS}"),
                &[],
            )
            .await?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    pub(super) async fn resign(&self, node: Uuid) -> Result<(), StoreError> {
        self.query("DELETE FROM kiln_leader WHERE node = $1", &[&node])
            .await
            .map(drop)
    }

    pub(super) async fn queue_counts(&self) -> Result<Vec<super::QueueCount>, StoreError> {
        // A UUIDv7's first 48 bits are its creation time in ms.
        let rows = self
            .query(
                &format!(
                    "SELECT queue, count(*) FILTER (WHERE status = 0), \
                     count(*) FILTER (WHERE status = 1), \
                     min(coalesce(run_at_ms, ('x' || substr(replace(id::text, '-', ''), 1, 12))::bit(48)::bigint)) \
                       FILTER (WHERE status = 0 AND coalesce(run_at_ms, 0) <= {DB_NOW_MS}) \
                     FROM kiln_jobs WHERE status IN (0, 1) GROUP BY queue ORDER BY queue"
                ),
                &[],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let (queued, running): (i64, i64) = (row.get(1), row.get(2));
                let oldest: Option<i64> = row.get(3);
                Ok(super::QueueCount {
                    queue: row.get(0),
                    queued: u64_of(queued)?,
                    running: u64_of(running)?,
                    oldest_due_ms: oldest.map(u64_of).transpose()?,
                })
            })
            .collect()
    }

    /// The cluster's provider limits, counted for `node`.
    pub(super) fn provider_limits(
        &self,
        node: Uuid,
        alive_ms: u64,
    ) -> Arc<dyn crate::llm::SharedLimits> {
        Arc::new(limits::PgProviderLimits {
            pool: self.pool.clone(),
            node,
            alive_ms: i64::try_from(alive_ms).unwrap_or(i64::MAX),
        })
    }

    pub(super) async fn queued_total(&self) -> Result<u64, StoreError> {
        let rows = self.query("SELECT queued FROM kiln_feed_head", &[]).await?;
        rows.first()
            .map_or(Ok(0), |row| u64_of(row.get::<_, i64>(0)))
    }

    pub(super) async fn forget_nodes(&self, before_ms: u64) -> Result<(), StoreError> {
        self.query(
            "DELETE FROM kiln_nodes WHERE heartbeat_ms < $1",
            &[&i64_of(before_ms)?],
        )
        .await
        .map(drop)
    }

    pub(super) async fn file(&self, id: Uuid) -> Result<Option<FileRecord>, StoreError> {
        let rows = self
            .query("SELECT record FROM kiln_files WHERE id = $1", &[&id])
            .await?;
        rows.first()
            .map(|row| {
                serde_json::from_str(row.get(0))
                    .map_err(|e| StoreError::Storage(format!("file {id}: {e}")))
            })
            .transpose()
    }

    pub(super) async fn delete_expired_files(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<Uuid>, StoreError> {
        let rows = self
            .query(
                "DELETE FROM kiln_files WHERE id IN (SELECT id FROM kiln_files \
                 WHERE expires_ms <= $1 ORDER BY expires_ms LIMIT $2) RETURNING id",
                &[&i64_of(now_ms)?, &i64_of(limit as u64)?],
            )
            .await?;
        Ok(rows.iter().map(|row| row.get(0)).collect())
    }
}

/// Sorts a driver error: the database out of reach (connection refused, lost, timed out,
/// server shutting down) is [`StoreError::Unavailable`], and recovers by itself; anything
/// the server refused is [`StoreError::Storage`].
fn classify(error: tokio_postgres::Error) -> StoreError {
    let unreachable = match error.code() {
        None => true,
        Some(code) => {
            let code = code.code();
            // 08: connection exceptions; 57P0x: the server is shutting down or starting;
            // 53300: too many connections.
            code.starts_with("08") || code.starts_with("57P0") || code == "53300"
        }
    };
    // The driver's message alone can be as bare as "error connecting to server": add
    // its causes (connection refused, timed out, ...).
    let mut message = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message = format!("{message}: {text}");
        }
        source = cause.source();
    }
    if unreachable {
        StoreError::Unavailable(message)
    } else {
        StoreError::Storage(message)
    }
}

fn pool_error(error: deadpool_postgres::PoolError) -> StoreError {
    match error {
        deadpool_postgres::PoolError::Backend(error) => classify(error),
        other => StoreError::Unavailable(other.to_string()),
    }
}

fn decode_job(text: &str) -> Result<JobRecord, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Storage(format!("corrupt job record: {e}")))
}

fn decode_batch(text: &str) -> Result<BatchRecord, StoreError> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Storage(format!("corrupt batch record: {e}")))
}

fn stored_event(name: String, data: &str, at_ms: i64) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        name,
        data: serde_json::from_str(data)
            .map_err(|e| StoreError::Storage(format!("corrupt event: {e}")))?,
        at_ms: u64_of(at_ms)?,
    })
}

/// PostgreSQL has no unsigned integers: positions and times are `bigint`.
fn i64_of(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Storage(format!("{value} exceeds bigint")))
}

fn u64_of(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Storage(format!("negative value {value}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_masked_in_both_url_forms() {
        let cases = [
            (
                "postgres://kiln:hunter2@db.internal:5432/kiln",
                "postgres://kiln:***@db.internal:5432/kiln",
            ),
            (
                "postgresql://kiln@db/kiln?password=hunter2&sslmode=disable",
                "postgresql://kiln@db/kiln?password=***&sslmode=disable",
            ),
            ("postgres://kiln@db/kiln", "postgres://kiln@db/kiln"),
            (
                "host=db user=kiln password=hunter2 dbname=kiln",
                "host=db user=kiln password=*** dbname=kiln",
            ),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown);
            assert!(!redact_url(url).contains("hunter2"));
        }
        assert!(!redact_url("postgres://a:hunter2@[bad").contains("hunter2"));
    }

    #[test]
    fn unreachable_is_told_apart_from_refused() {
        // Nothing listens on port 1: the connection is refused, which recovers later.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let error = runtime.block_on(async {
            let config =
                tokio_postgres::Config::from_str("postgres://kiln@127.0.0.1:1/kiln").unwrap();
            PgConnector { config }.connect().await.unwrap_err()
        });
        assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    }
}
