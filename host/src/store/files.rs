//! Uploaded files and job artifacts: their records, and the data dir's bytes (with redb,
//! all of them; with PostgreSQL, node-local copies of uploads: see `store/bytes.rs`). Bytes
//! are plain files, streamed, so a 60 MiB upload never sits in memory.
//!
//! Layout under the data dir:
//! - `files/<file id>`: an upload's bytes, written to `files/<id>.part` (a copy pulled
//!   from PostgreSQL: `files/<id>.<n>.part`), synced, then renamed, so a file listed in
//!   the `files` table always has all its bytes;
//! - `artifacts/<job id>/attempt-<n>/<name>`: what attempt `n` wrote;
//! - `artifacts/<job id>/done/<name>`: the artifacts of the attempt that completed the
//!   job, renamed there before the completion is committed. Deleting the job removes
//!   `artifacts/<job id>`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An upload, as `POST /v1/files` answers it and the `files` table keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The file id (UUIDv7).
    pub id: Uuid,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes, lowercase hex.
    pub sha256: String,
    /// The content type it was uploaded with.
    pub content_type: String,
    /// The tenant that uploaded it (`None`: open mode or a tenantless admin key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Upload time, ms since the epoch.
    pub created_at_ms: u64,
    /// When it is deleted, ms since the epoch.
    pub expires_at_ms: u64,
}

/// One artifact of a completed job, as its JSON lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRecord {
    /// Its name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Its content type.
    pub content_type: String,
}

/// Bytes streamed out of the store (an upload's content, an artifact).
pub type ByteStream = BoxStream<'static, std::io::Result<bytes::Bytes>>;

/// Where the bytes live.
#[derive(Clone, Debug)]
pub struct BlobDir {
    root: PathBuf,
}

impl BlobDir {
    /// The blob folders under `data_dir`.
    pub fn new(data_dir: &Path) -> Self {
        Self {
            root: data_dir.to_path_buf(),
        }
    }

    /// The folder of uploads' bytes.
    pub fn files_dir(&self) -> PathBuf {
        self.root.join("files")
    }

    /// The folder of jobs' artifacts.
    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }

    /// Where an upload's bytes are.
    pub fn file_path(&self, id: Uuid) -> PathBuf {
        self.files_dir().join(id.to_string())
    }

    /// A new copy of an upload's bytes, with a name no other copy in progress has: write
    /// it, then [`BlobDir::finish_upload`].
    pub fn copy_part(&self, id: Uuid) -> std::io::Result<(PathBuf, std::fs::File)> {
        let dir = self.files_dir();
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{id}.{}.part", Uuid::new_v4().simple()));
        let file = std::fs::File::create(&path)?;
        Ok((path, file))
    }

    /// A new upload's file, still partial: write it, then [`BlobDir::finish_upload`].
    pub fn upload_part(&self, id: Uuid) -> std::io::Result<(PathBuf, std::fs::File)> {
        let dir = self.root.join("files");
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(format!("{id}.part"));
        let file = std::fs::File::create(&path)?;
        Ok((path, file))
    }

    /// Syncs the partial upload and gives it its final name.
    pub fn finish_upload(&self, id: Uuid, part: &Path, file: std::fs::File) -> std::io::Result<()> {
        file.sync_all()?;
        drop(file);
        std::fs::rename(part, self.file_path(id))?;
        sync_dir(&self.root.join("files"))
    }

    fn job_dir(&self, job: Uuid) -> PathBuf {
        self.artifacts_dir().join(job.to_string())
    }

    fn attempt_dir(&self, job: Uuid, attempt: u32) -> PathBuf {
        self.job_dir(job).join(format!("attempt-{attempt}"))
    }

    /// Where attempt `attempt` stages artifact `name`.
    pub fn staged_artifact_path(&self, job: Uuid, attempt: u32, name: &str) -> PathBuf {
        self.attempt_dir(job, attempt).join(name)
    }

    /// Appends to artifact `name` of attempt `attempt` (the name was checked to be a safe
    /// file name). Synced at [`BlobDir::publish_artifacts`].
    pub fn append_artifact(
        &self,
        job: Uuid,
        attempt: u32,
        name: &str,
        bytes: &[u8],
    ) -> std::io::Result<()> {
        let dir = self.attempt_dir(job, attempt);
        std::fs::create_dir_all(&dir)?;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(name))?;
        file.write_all(bytes)
    }

    /// Makes attempt `attempt`'s artifacts the job's: synced, and renamed to `done`
    /// (replacing what an earlier, uncommitted completion left). Other attempts' files are
    /// removed. Returns nothing to do when the attempt wrote none.
    pub fn publish_artifacts(&self, job: Uuid, attempt: u32) -> std::io::Result<()> {
        let staged = self.attempt_dir(job, attempt);
        let done = self.job_dir(job).join("done");
        if !staged.exists() {
            return Ok(());
        }
        for entry in std::fs::read_dir(&staged)? {
            std::fs::File::open(entry?.path())?.sync_all()?;
        }
        if done.exists() {
            std::fs::remove_dir_all(&done)?;
        }
        std::fs::rename(&staged, &done)?;
        sync_dir(&self.job_dir(job))?;
        self.remove_attempts(job)
    }

    /// Removes every attempt's staged artifacts (after a failed or cancelled job, and
    /// once one attempt's were published).
    pub fn remove_attempts(&self, job: Uuid) -> std::io::Result<()> {
        let Ok(entries) = std::fs::read_dir(self.job_dir(job)) else {
            return Ok(());
        };
        for entry in entries {
            let entry = entry?;
            if entry.file_name().to_string_lossy().starts_with("attempt-") {
                std::fs::remove_dir_all(entry.path())?;
            }
        }
        Ok(())
    }

    /// Where a completed job's artifact is.
    pub fn artifact_path(&self, job: Uuid, name: &str) -> PathBuf {
        self.job_dir(job).join("done").join(name)
    }

    /// Removes a job's artifacts.
    pub fn remove_job(&self, job: Uuid) {
        let dir = self.job_dir(job);
        if let Err(error) = std::fs::remove_dir_all(&dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(%job, %error, "could not remove the job's artifacts");
        }
    }

    /// Removes an upload's bytes.
    pub fn remove_file(&self, id: Uuid) {
        let path = self.file_path(id);
        if let Err(error) = std::fs::remove_file(&path)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %id, %error, "could not remove an expired file");
        }
    }
}

/// Up to `len` bytes of the file at `path` from `offset`.
pub fn read_range(path: &Path, offset: u64, len: u32) -> std::io::Result<Vec<u8>> {
    use std::io::{Read as _, Seek as _};
    let mut file = std::fs::File::open(path)?;
    file.seek(std::io::SeekFrom::Start(offset))?;
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(u64::from(len)).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}
