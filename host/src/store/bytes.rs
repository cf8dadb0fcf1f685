//! Upload and artifact bytes, on both backends.
//!
//! - **redb:** the data dir holds them ([`BlobDir`](super::BlobDir)): it is the one place Kiln keeps state.
//! - **PostgreSQL:** the database holds them (chunked rows, see `postgres/blobs.rs`), so
//!   nodes sharing it need no shared disk. The data dir keeps node-local copies of the
//!   uploads this node's jobs read: a sandbox reads its input files synchronously, in
//!   small pieces, and each piece must not be a database query. A copy is pulled from the
//!   database and checked against the upload's size and SHA-256 before it is used; an
//!   upload's bytes never change, so a whole copy is never stale. Artifacts are served
//!   from the database directly.
//!
//! Bytes written by a Kiln from before migration 2 are in the data dir of the node that
//! stored them: that node keeps serving them, and its sweep moves them into the database.

use std::path::{Path, PathBuf};

use futures::StreamExt as _;
use uuid::Uuid;

use super::files::ByteStream;
use super::{ArtifactRecord, Backend, FileRecord, Store, StoreError, now_ms};

/// How long a partial upload or copy, or the bytes of an upload without a record, may
/// sit unchanged before a sweep removes them as left over (by a crash, or by an upload
/// deleted on another node).
const STALE_PART_MS: u64 = 3_600_000;

/// How many copies of uploads one query checks.
const SWEEP_BATCH: usize = 1000;

impl Store {
    /// Stores an upload's record; durable when this returns. Its bytes are at
    /// `blobs.file_path(record.id)` already; PostgreSQL also copies them into the database,
    /// in the transaction that inserts the record.
    pub async fn insert_file(&self, record: &FileRecord) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Redb(db) => db.insert_file(record).await,
            Backend::Postgres(db) => {
                let bytes = self.blobs.file_path(record.id);
                db.insert_file_with_bytes(record, &bytes).await
            }
        }
    }

    /// An upload's bytes.
    pub async fn file_bytes(&self, record: &FileRecord) -> Result<ByteStream, StoreError> {
        let local = self.blobs.file_path(record.id);
        let Backend::Postgres(db) = &self.backend else {
            return local_bytes(&local, record.size).await;
        };
        if is_whole(&local, record.size).await {
            return local_bytes(&local, record.size).await;
        }
        db.file_bytes(record.id, record.size)
            .await?
            .ok_or_else(|| not_in_database(record.id))
    }

    /// A node-local file holding an upload's bytes, for a sandbox to read: the data dir's
    /// file with redb; with PostgreSQL this node's copy, pulled from the database the first
    /// time this node needs it.
    pub async fn local_file(&self, record: &FileRecord) -> Result<PathBuf, StoreError> {
        let local = self.blobs.file_path(record.id);
        let Backend::Postgres(db) = &self.backend else {
            return Ok(local);
        };
        if is_whole(&local, record.size).await {
            return Ok(local);
        }
        let bytes = db
            .file_bytes(record.id, record.size)
            .await?
            .ok_or_else(|| not_in_database(record.id))?;
        let io =
            |e: std::io::Error| StoreError::Storage(format!("copying file {}: {e}", record.id));
        // A name of its own, so two jobs copying the same upload at once do not collide.
        let (part, file) = self.blobs.copy_part(record.id).map_err(io)?;
        let mut file = tokio::fs::File::from_std(file);
        if let Err(error) = super::postgres::copy_checked(bytes, &mut file, record).await {
            drop(file);
            let _ = tokio::fs::remove_file(&part).await;
            return Err(error);
        }
        let file = file.into_std().await;
        let blobs = self.blobs.clone();
        let id = record.id;
        tokio::task::spawn_blocking(move || blobs.finish_upload(id, &part, file))
            .await
            .map_err(|e| StoreError::Storage(e.to_string()))?
            .map_err(io)?;
        Ok(local)
    }

    /// Makes the artifacts `names` staged by attempt `attempt` the job's, before the
    /// completion that lists them is committed (see [`BlobDir::publish_artifacts`](super::BlobDir::publish_artifacts)): the
    /// redb backend renames them in the data dir; PostgreSQL stores them in the database,
    /// replacing what an earlier, uncommitted completion stored.
    pub async fn publish_artifacts(
        &self,
        job: Uuid,
        attempt: u32,
        names: &[String],
    ) -> Result<(), StoreError> {
        let blobs = self.blobs.clone();
        let io = |e: std::io::Error| StoreError::Storage(format!("storing the artifacts: {e}"));
        let Backend::Postgres(db) = &self.backend else {
            return tokio::task::spawn_blocking(move || blobs.publish_artifacts(job, attempt))
                .await
                .map_err(|e| StoreError::Storage(e.to_string()))?
                .map_err(io);
        };
        let staged: Vec<(String, PathBuf)> = names
            .iter()
            .map(|name| (name.clone(), blobs.staged_artifact_path(job, attempt, name)))
            .collect();
        db.replace_artifacts(job, &staged).await?;
        tokio::task::spawn_blocking(move || blobs.remove_job(job))
            .await
            .map_err(|e| StoreError::Storage(e.to_string()))
    }

    /// A completed job's artifact.
    pub async fn artifact_bytes(
        &self,
        job: Uuid,
        artifact: &ArtifactRecord,
    ) -> Result<ByteStream, StoreError> {
        if let Backend::Postgres(db) = &self.backend
            && let Some(bytes) = db
                .artifact_bytes(job, &artifact.name, artifact.size)
                .await?
        {
            return Ok(bytes);
        }
        // The redb backend's, or one a Kiln from before migration 2 left in this data dir.
        local_bytes(
            &self.blobs.artifact_path(job, &artifact.name),
            artifact.size,
        )
        .await
    }

    /// Housekeeping of the data dir's bytes, run by every node's sweep: removes partial
    /// uploads and copies a crash left behind; with PostgreSQL also drops copies of uploads
    /// that are gone, and moves bytes stored before migration 2 into the database.
    pub async fn tidy_local_bytes(&self) {
        let files = self.blobs.files_dir();
        let mut copies = Vec::new();
        for (path, name) in dir_entries(&files).await {
            if name.ends_with(".part") {
                remove_if_stale(&path).await;
            } else if let Ok(id) = Uuid::parse_str(&name) {
                copies.push(id);
            }
        }
        let Backend::Postgres(db) = &self.backend else {
            return;
        };
        for copies in copies.chunks(SWEEP_BATCH) {
            match db.file_records(copies).await {
                Ok(records) => {
                    for id in copies {
                        let Some((record, in_database)) =
                            records.iter().find(|(record, _)| record.id == *id)
                        else {
                            // No record: the upload expired, or it is one being stored right
                            // now (its bytes go in place before its record).
                            if age_ms(&self.blobs.file_path(*id)).await > STALE_PART_MS {
                                self.blobs.remove_file(*id);
                            }
                            continue;
                        };
                        if record.expires_at_ms <= now_ms() {
                            self.blobs.remove_file(*id);
                        } else if !in_database {
                            let path = self.blobs.file_path(*id);
                            match db.adopt_file(record, &path).await {
                                Ok(()) => {
                                    tracing::info!(file = %id, "moved an upload's bytes into the database")
                                }
                                Err(error) => {
                                    tracing::warn!(file = %id, %error, "could not move an upload's bytes into the database")
                                }
                            }
                        }
                    }
                }
                Err(error) => tracing::warn!(%error, "could not check the copies of uploads"),
            }
        }
        for (path, name) in dir_entries(&self.blobs.artifacts_dir()).await {
            if let Ok(job) = Uuid::parse_str(&name)
                && tokio::fs::try_exists(path.join("done"))
                    .await
                    .unwrap_or(false)
            {
                self.adopt_artifacts(job).await;
            }
        }
    }

    /// Moves the artifacts a Kiln from before migration 2 left in this data dir for `job`
    /// into the database, then drops them here.
    async fn adopt_artifacts(&self, job: Uuid) {
        let Backend::Postgres(db) = &self.backend else {
            return;
        };
        let record = match self.get(job).await {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(%job, %error, "could not read the job of stored artifacts");
                return;
            }
        };
        let Some(record) = record else {
            // The job was deleted: its artifacts go with it.
            self.blobs.remove_job(job);
            return;
        };
        match db.has_artifacts(job).await {
            Ok(false) => {}
            Ok(true) => {
                self.blobs.remove_job(job);
                return;
            }
            Err(error) => {
                tracing::warn!(%job, %error, "could not check a job's artifacts");
                return;
            }
        }
        let artifacts: Vec<(String, PathBuf)> = record
            .artifacts
            .iter()
            .map(|a| (a.name.clone(), self.blobs.artifact_path(job, &a.name)))
            .collect();
        match db.replace_artifacts(job, &artifacts).await {
            Ok(()) => {
                tracing::info!(%job, "moved a job's artifacts into the database");
                self.blobs.remove_job(job);
            }
            Err(error) => {
                tracing::warn!(%job, %error, "could not move a job's artifacts into the database");
            }
        }
    }
}

/// Whether `path` holds `size` bytes (a copy is written whole, then renamed: one of the
/// right size was not cut short).
async fn is_whole(path: &Path, size: u64) -> bool {
    tokio::fs::metadata(path)
        .await
        .is_ok_and(|meta| meta.len() == size)
}

/// The `size` bytes of the file at `path`.
async fn local_bytes(path: &Path, size: u64) -> Result<ByteStream, StoreError> {
    let file = tokio::fs::File::open(path).await.map_err(|e| {
        StoreError::Storage(format!(
            "the stored bytes at {} could not be read: {e}",
            path.display()
        ))
    })?;
    let len = file.metadata().await.map(|m| m.len()).unwrap_or_default();
    if len != size {
        return Err(StoreError::Storage(format!(
            "the stored bytes at {} are {len} bytes, not the {size} recorded",
            path.display()
        )));
    }
    Ok(tokio_util::io::ReaderStream::new(file).boxed())
}

fn not_in_database(id: Uuid) -> StoreError {
    StoreError::Storage(format!(
        "the bytes of file {id} are not in the database: it was uploaded to a Kiln from \
         before they were kept there, and the node whose data dir has them has not moved \
         them in yet (its sweep does)"
    ))
}

/// The entries of `dir` (none if it does not exist), as paths and names.
async fn dir_entries(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    let Ok(mut entries) = tokio::fs::read_dir(dir).await else {
        return found;
    };
    while let Ok(Some(entry)) = entries.next_entry().await {
        found.push((
            entry.path(),
            entry.file_name().to_string_lossy().into_owned(),
        ));
    }
    found
}

/// How long ago the file at `path` was last written (0 if unknown).
async fn age_ms(path: &Path) -> u64 {
    tokio::fs::metadata(path)
        .await
        .ok()
        .and_then(|meta| meta.modified().ok())
        .and_then(|at| at.elapsed().ok())
        .map_or(0, |age| u64::try_from(age.as_millis()).unwrap_or(u64::MAX))
}

async fn remove_if_stale(path: &Path) {
    if age_ms(path).await > STALE_PART_MS
        && let Err(error) = tokio::fs::remove_file(path).await
    {
        tracing::warn!(path = %path.display(), %error, "could not remove a partial file");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_local_copy_of_the_wrong_size_is_not_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("copy");
        assert!(!is_whole(&path, 0).await, "a missing copy");
        std::fs::write(&path, b"abc").unwrap();
        assert!(is_whole(&path, 3).await);
        assert!(!is_whole(&path, 4).await);
        let error = local_bytes(&path, 4).await.err().unwrap();
        assert!(
            error.to_string().contains("are 3 bytes, not the 4"),
            "{error}"
        );
    }
}
