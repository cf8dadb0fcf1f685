//! The cluster's provider limits on PostgreSQL (`kiln_provider_calls`, schema 5): each
//! admission is one call of `kiln_provider_admit`, which counts under an advisory lock
//! per provider, so the limits are exact across nodes. Times are the database's clock.

use std::time::Duration;

use deadpool_postgres::Pool;
use futures::future::BoxFuture;
use uuid::Uuid;

use crate::llm::{AdmissionConfig, SharedAdmit, SharedLimits};

use super::{DB_NOW_MS, pool_error};

/// [`SharedLimits`] kept in the database this node shares with the others.
pub(in crate::store) struct PgProviderLimits {
    pub(super) pool: Pool,
    pub(super) node: Uuid,
    /// A node whose heartbeat is older than this is dead: its calls in flight count no
    /// more.
    pub(super) alive_ms: i64,
}

impl PgProviderLimits {
    async fn execute(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, String> {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| pool_error(e).to_string())?;
        let statement = client
            .prepare_cached(sql)
            .await
            .map_err(|e| e.to_string())?;
        client
            .query(&statement, params)
            .await
            .map_err(|e| e.to_string())
    }
}

fn limit(value: Option<u32>) -> Option<i64> {
    value.map(i64::from)
}

impl SharedLimits for PgProviderLimits {
    fn admit<'a>(
        &'a self,
        provider: &'a str,
        limits: &'a AdmissionConfig,
        tokens: u32,
    ) -> BoxFuture<'a, Result<SharedAdmit, String>> {
        Box::pin(async move {
            let max_concurrent = i64::try_from(limits.max_concurrent.max(1)).unwrap_or(i64::MAX);
            let rows = self
                .execute(
                    "SELECT call, wait_ms FROM kiln_provider_admit($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        &provider,
                        &self.node,
                        &Some(max_concurrent),
                        &limit(limits.requests_per_minute),
                        &limit(limits.tokens_per_minute),
                        &i64::from(tokens),
                        &self.alive_ms,
                    ],
                )
                .await?;
            let row = rows.first().ok_or("kiln_provider_admit answered no row")?;
            let (call, wait_ms): (Option<i64>, i64) = (row.get(0), row.get(1));
            Ok(match call {
                Some(call) => SharedAdmit::Admitted(call.unsigned_abs()),
                None if wait_ms > 0 => {
                    SharedAdmit::WaitFor(Duration::from_millis(wait_ms.unsigned_abs()))
                }
                None => SharedAdmit::Busy,
            })
        })
    }

    fn release(&self, call: u64, tokens: u64) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            let (call, tokens) = (
                i64::try_from(call).unwrap_or(i64::MAX),
                i64::try_from(tokens).unwrap_or(i64::MAX),
            );
            self.execute(
                "UPDATE kiln_provider_calls SET done = true, tokens = $2 WHERE id = $1",
                &[&call, &tokens],
            )
            .await
            .map(drop)
        })
    }

    fn pause<'a>(
        &'a self,
        provider: &'a str,
        pause: Duration,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let ms = i64::try_from(pause.as_millis()).unwrap_or(i64::MAX);
            self.execute(
                &format!(
                    "INSERT INTO kiln_provider_pauses (provider, until_ms) VALUES ($1, {DB_NOW_MS} + $2) \
                     ON CONFLICT (provider) DO UPDATE SET until_ms = \
                     greatest(kiln_provider_pauses.until_ms, EXCLUDED.until_ms)"
                ),
                &[&provider, &ms],
            )
            .await
            .map(drop)
        })
    }
}
