//! Versioned migrations, applied at start under an advisory lock so two Kiln processes
//! starting at once against one database apply each migration exactly once.

use anyhow::{Context as _, bail};
use tokio_postgres::Client;

/// Every migration, in order. Released ones are never edited: a change is a new one.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("migrations/0001_init.sql")),
    (2, include_str!("migrations/0002_blobs.sql")),
    (3, include_str!("migrations/0003_nodes.sql")),
    (4, include_str!("migrations/0004_cluster.sql")),
    (5, include_str!("migrations/0005_provider_limits.sql")),
    (6, include_str!("migrations/0006_batches.sql")),
    (7, include_str!("migrations/0007_concurrency_keys.sql")),
    (8, include_str!("migrations/0008_webhooks.sql")),
    (9, include_str!("migrations/0009_schedules.sql")),
];

/// The advisory lock key that serialises migrations ("kiln" in ASCII).
const MIGRATION_LOCK: i64 = 0x6b69_6c6e;

/// The schema version this Kiln writes.
pub(super) fn newest() -> i32 {
    MIGRATIONS.last().map_or(0, |(version, _)| *version)
}

/// Brings the database's schema up to [`newest`]. Refuses a database whose schema is newer
/// than this Kiln knows: an older binary would misread it.
pub(super) async fn migrate(client: &mut Client) -> anyhow::Result<i32> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("taking the migration lock")?;
    let outcome = apply(client).await;
    let unlocked = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    let version = outcome?;
    unlocked.context("releasing the migration lock")?;
    Ok(version)
}

async fn apply(client: &mut Client) -> anyhow::Result<i32> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS kiln_schema (
                version integer PRIMARY KEY,
                applied_at timestamptz NOT NULL DEFAULT now()
            )",
        )
        .await
        .context("creating the kiln_schema table")?;
    let current: i32 = client
        .query_one("SELECT coalesce(max(version), 0) FROM kiln_schema", &[])
        .await
        .context("reading the schema version")?
        .get(0);
    let newest = newest();
    if current > newest {
        bail!(
            "the database's Kiln schema is version {current}, newer than this Kiln knows \
             ({newest}): it was written by a newer Kiln; run that version or newer"
        );
    }
    for (version, sql) in MIGRATIONS.iter().filter(|(version, _)| *version > current) {
        let txn = client.transaction().await?;
        txn.batch_execute(sql)
            .await
            .with_context(|| format!("applying schema migration {version}"))?;
        txn.execute("INSERT INTO kiln_schema (version) VALUES ($1)", &[version])
            .await?;
        txn.commit()
            .await
            .with_context(|| format!("committing schema migration {version}"))?;
        tracing::info!(version, "applied a PostgreSQL schema migration");
    }
    Ok(newest)
}
