//! Upload and artifact bytes in PostgreSQL (migration 2), so that every node sharing the
//! database can serve and read them without a shared disk.
//!
//! Bytes are split into `bytea` chunks of at most [`CHUNK_BYTES`], numbered from 0:
//! large enough that a 64 MiB upload is 64 rows, small enough that no statement carries
//! more than a MiB and a download holds one chunk in memory at a time. (Large objects
//! would stream too, but they live outside the tables, escape `ON DELETE CASCADE` and need
//! `lo_unlink` bookkeeping; chunks are plain rows.) An upload's chunks are written in the
//! transaction that inserts its record, and a completing attempt's artifacts in one
//! transaction before the completion is committed, so nothing is visible half written.

use std::path::{Path, PathBuf};

use deadpool_postgres::Pool;
use futures::StreamExt as _;
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use uuid::Uuid;

use super::{PgStore, classify, i64_of, pool_error};
use crate::store::files::ByteStream;
use crate::store::{FileRecord, StoreError};

/// The most bytes one chunk row holds.
pub(crate) const CHUNK_BYTES: usize = 1 << 20;

/// Whose bytes a chunk row holds.
#[derive(Clone)]
enum Owner {
    File(Uuid),
    Artifact { job: Uuid, name: String },
}

impl Owner {
    /// Chunk `seq`, or `None` past the last.
    async fn chunk(&self, pool: &Pool, seq: i32) -> Result<Option<Vec<u8>>, StoreError> {
        let client = pool.get().await.map_err(pool_error)?;
        let rows = match self {
            Owner::File(id) => {
                let sql = "SELECT data FROM kiln_file_chunks WHERE file_id = $1 AND seq = $2";
                let statement = client.prepare_cached(sql).await.map_err(classify)?;
                client.query(&statement, &[id, &seq]).await
            }
            Owner::Artifact { job, name } => {
                let sql = "SELECT data FROM kiln_artifact_chunks \
                           WHERE job_id = $1 AND name = $2 AND seq = $3";
                let statement = client.prepare_cached(sql).await.map_err(classify)?;
                client.query(&statement, &[job, name, &seq]).await
            }
        }
        .map_err(classify)?;
        Ok(rows.first().map(|row| row.get(0)))
    }

    fn describe(&self) -> String {
        match self {
            Owner::File(id) => format!("file {id}"),
            Owner::Artifact { job, name } => format!("artifact {name:?} of job {job}"),
        }
    }
}

impl PgStore {
    /// Stores an upload's record and its bytes, read from `bytes`, in one transaction.
    pub(in crate::store) async fn insert_file_with_bytes(
        &self,
        record: &FileRecord,
        bytes: &Path,
    ) -> Result<(), StoreError> {
        let text = serde_json::to_string(record).map_err(|e| StoreError::Storage(e.to_string()))?;
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let txn = client.transaction().await.map_err(classify)?;
        txn.execute(
            "INSERT INTO kiln_files (id, expires_ms, record) VALUES ($1, $2, $3)",
            &[&record.id, &i64_of(record.expires_at_ms)?, &text],
        )
        .await
        .map_err(classify)?;
        insert_file_chunks(&txn, record, bytes).await?;
        txn.commit().await.map_err(classify)
    }

    /// Moves the bytes of an upload stored before migration 2, found in this node's data
    /// dir at `bytes`, into the database (checked against its record first).
    pub(in crate::store) async fn adopt_file(
        &self,
        record: &FileRecord,
        bytes: &Path,
    ) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let txn = client.transaction().await.map_err(classify)?;
        insert_file_chunks(&txn, record, bytes).await?;
        txn.commit().await.map_err(classify)
    }

    /// Of the uploads `ids`, those that still have a record: the record and whether the
    /// database holds its bytes. One query for the lot.
    pub(in crate::store) async fn file_records(
        &self,
        ids: &[Uuid],
    ) -> Result<Vec<(FileRecord, bool)>, StoreError> {
        let rows = self
            .query(
                "SELECT record, EXISTS (SELECT 1 FROM kiln_file_chunks c WHERE c.file_id = f.id) \
                 FROM kiln_files f WHERE f.id = ANY($1)",
                &[&ids],
            )
            .await?;
        rows.iter()
            .map(|row| {
                let record = serde_json::from_str(row.get(0))
                    .map_err(|e| StoreError::Storage(format!("corrupt file record: {e}")))?;
                Ok((record, row.get(1)))
            })
            .collect()
    }

    /// Whether the database holds any artifact bytes of `job`.
    pub(in crate::store) async fn has_artifacts(&self, job: Uuid) -> Result<bool, StoreError> {
        let rows = self
            .query(
                "SELECT EXISTS (SELECT 1 FROM kiln_artifact_chunks WHERE job_id = $1)",
                &[&job],
            )
            .await?;
        Ok(rows.first().is_some_and(|row| row.get(0)))
    }

    /// Replaces the artifacts of `job` with `artifacts` (name, file holding its bytes) in
    /// one transaction.
    pub(in crate::store) async fn replace_artifacts(
        &self,
        job: Uuid,
        artifacts: &[(String, PathBuf)],
    ) -> Result<(), StoreError> {
        let mut client = self.pool.get().await.map_err(pool_error)?;
        let txn = client.transaction().await.map_err(classify)?;
        txn.execute(
            "DELETE FROM kiln_artifact_chunks WHERE job_id = $1",
            &[&job],
        )
        .await
        .map_err(classify)?;
        let insert = txn
            .prepare(
                "INSERT INTO kiln_artifact_chunks (job_id, name, seq, data) \
                 VALUES ($1, $2, $3, $4)",
            )
            .await
            .map_err(classify)?;
        for (name, path) in artifacts {
            let mut source = open(path).await?;
            let mut seq = 0i32;
            loop {
                let chunk = read_chunk(&mut source, path).await?;
                if chunk.is_empty() && seq > 0 {
                    break;
                }
                // An empty artifact still gets its chunk 0, so "no rows" always means
                // "not stored here" (an artifact from before migration 2).
                txn.execute(&insert, &[&job, name, &seq, &chunk])
                    .await
                    .map_err(classify)?;
                if chunk.is_empty() {
                    break;
                }
                seq += 1;
            }
        }
        txn.commit().await.map_err(classify)
    }

    /// Upload `id`'s bytes (`size` of them), chunk by chunk; `None` when the database holds
    /// none (an upload stored before migration 2, whose bytes are in a data dir).
    pub(in crate::store) async fn file_bytes(
        &self,
        id: Uuid,
        size: u64,
    ) -> Result<Option<ByteStream>, StoreError> {
        self.bytes(Owner::File(id), size).await
    }

    /// Like [`PgStore::file_bytes`], for artifact `name` of `job`.
    pub(in crate::store) async fn artifact_bytes(
        &self,
        job: Uuid,
        name: &str,
        size: u64,
    ) -> Result<Option<ByteStream>, StoreError> {
        let owner = Owner::Artifact {
            job,
            name: name.to_string(),
        };
        self.bytes(owner, size).await
    }

    /// Fetches chunk 0 now (so a missing blob is an answer, not a broken stream), then
    /// streams the rest one chunk per query. A stream whose chunks end before `size` bytes
    /// ends with an error rather than passing off a truncated body as whole.
    async fn bytes(&self, owner: Owner, size: u64) -> Result<Option<ByteStream>, StoreError> {
        if size == 0 && matches!(owner, Owner::File(_)) {
            return Ok(Some(futures::stream::empty().boxed()));
        }
        let Some(first) = owner.chunk(&self.pool, 0).await? else {
            return Ok(None);
        };
        let pool = self.pool.clone();
        let sent = first.len() as u64;
        let rest = futures::stream::try_unfold(
            (pool, owner, 1i32, sent),
            move |(pool, owner, seq, sent)| async move {
                if sent >= size {
                    return Ok(None);
                }
                match owner.chunk(&pool, seq).await? {
                    Some(data) if !data.is_empty() => {
                        let sent = sent + data.len() as u64;
                        Ok(Some((
                            bytes::Bytes::from(data),
                            (pool, owner, seq + 1, sent),
                        )))
                    }
                    _ => Err(StoreError::Storage(format!(
                        "the stored bytes of {} end after {sent} of {size} bytes",
                        owner.describe()
                    ))),
                }
            },
        );
        let stream = futures::stream::once(async move { Ok(bytes::Bytes::from(first)) })
            .chain(rest)
            .map(|chunk| chunk.map_err(std::io::Error::other));
        Ok(Some(stream.boxed()))
    }
}

/// Copies `stream` into `part`, checking it against `record` (size and SHA-256), so a
/// node-local copy of an upload is never a wrong one.
pub(crate) async fn copy_checked(
    mut stream: ByteStream,
    part: &mut tokio::fs::File,
    record: &FileRecord,
) -> Result<(), StoreError> {
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let io = |e: std::io::Error| StoreError::Storage(format!("copying file {}: {e}", record.id));
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(io)?;
        size += chunk.len() as u64;
        hasher.update(&chunk);
        part.write_all(&chunk).await.map_err(io)?;
    }
    check_against(record, size, &hex::encode(hasher.finalize()))?;
    part.flush().await.map_err(io)
}

/// Inserts the chunks of upload `record` from the file at `bytes` in `txn`, refusing
/// bytes that do not match the record's size and SHA-256.
async fn insert_file_chunks(
    txn: &deadpool_postgres::Transaction<'_>,
    record: &FileRecord,
    bytes: &Path,
) -> Result<(), StoreError> {
    let insert = txn
        .prepare("INSERT INTO kiln_file_chunks (file_id, seq, data) VALUES ($1, $2, $3)")
        .await
        .map_err(classify)?;
    let mut source = open(bytes).await?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut seq = 0i32;
    loop {
        let chunk = read_chunk(&mut source, bytes).await?;
        if chunk.is_empty() {
            break;
        }
        hasher.update(&chunk);
        size += chunk.len() as u64;
        txn.execute(&insert, &[&record.id, &seq, &chunk])
            .await
            .map_err(classify)?;
        seq += 1;
    }
    check_against(record, size, &hex::encode(hasher.finalize()))
}

/// Refuses bytes (`size`, `sha256`) that are not upload `record`'s.
fn check_against(record: &FileRecord, size: u64, sha256: &str) -> Result<(), StoreError> {
    if size != record.size || sha256 != record.sha256 {
        return Err(StoreError::Storage(format!(
            "the bytes of file {} do not match its record ({size} bytes, sha256 {sha256}; \
             expected {} bytes, {})",
            record.id, record.size, record.sha256
        )));
    }
    Ok(())
}

async fn open(path: &Path) -> Result<tokio::fs::File, StoreError> {
    tokio::fs::File::open(path)
        .await
        .map_err(|e| StoreError::Storage(format!("opening {}: {e}", path.display())))
}

/// The next up to [`CHUNK_BYTES`] of `file`; empty at its end.
async fn read_chunk(file: &mut tokio::fs::File, path: &Path) -> Result<Vec<u8>, StoreError> {
    let mut chunk = Vec::with_capacity(CHUNK_BYTES);
    let mut limited = (&mut *file).take(CHUNK_BYTES as u64);
    limited
        .read_to_end(&mut chunk)
        .await
        .map_err(|e| StoreError::Storage(format!("reading {}: {e}", path.display())))?;
    Ok(chunk)
}
