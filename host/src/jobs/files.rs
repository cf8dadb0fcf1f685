//! Files in and artifacts out (contract 0.2.0), on the job service's side: uploads with
//! their size limit, tenant and TTL; the file ids a payload names, checked at submit and
//! granted to the job's attempts; and each attempt's artifacts, staged per attempt and
//! published with the completion.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

use super::{JobService, ServiceError, bad_request};
use crate::runtime::{ArtifactSink, FileError, FileInfo, JobFiles};
use crate::store::{ArtifactRecord, BlobDir, FileRecord, Store, StoreError, now_ms, read_range};

/// The `format` that marks a payload property as a file id.
pub const FILE_FORMAT: &str = "kiln-file";

/// Deepest schema nesting searched for file properties.
const MAX_DEPTH: usize = 32;

impl JobService {
    /// Stores an upload of `content_type` from `body`, owned by `tenant`; refused with
    /// `TooLarge` past `max_file_bytes`, in which case nothing is kept.
    pub async fn upload<E: std::fmt::Display>(
        &self,
        tenant: Option<String>,
        content_type: String,
        mut body: impl Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    ) -> Result<FileRecord, ServiceError> {
        let limit = self.inner.settings.max_file_bytes;
        let store = self.inner.store.clone();
        let id = Uuid::now_v7();
        let internal =
            |e: std::io::Error| ServiceError::Internal(format!("storing the upload: {e}"));
        let (part, file) = store.blobs.upload_part(id).map_err(internal)?;
        let mut file = tokio::fs::File::from_std(file);
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let outcome: Result<(), ServiceError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| {
                    bad_request("invalid_request", format!("the upload broke off: {e}"))
                })?;
                size += chunk.len() as u64;
                if size > limit {
                    return Err(ServiceError::TooLarge(format!(
                        "the upload is larger than the server's limit of {limit} bytes \
                         (max_file_bytes)"
                    )));
                }
                hasher.update(&chunk);
                file.write_all(&chunk).await.map_err(internal)?;
            }
            Ok(())
        }
        .await;
        if let Err(error) = outcome {
            drop(file);
            let _ = std::fs::remove_file(&part);
            return Err(error);
        }
        let file = file.into_std().await;
        let blobs = store.blobs.clone();
        let moved = part.clone();
        tokio::task::spawn_blocking(move || blobs.finish_upload(id, &moved, file))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .map_err(internal)?;
        let created_at_ms = now_ms();
        let ttl_ms = u64::try_from(self.inner.settings.file_ttl.as_millis()).unwrap_or(u64::MAX);
        let record = FileRecord {
            id,
            size,
            sha256: hex::encode(hasher.finalize()),
            content_type,
            tenant,
            created_at_ms,
            expires_at_ms: created_at_ms.saturating_add(ttl_ms),
        };
        if let Err(error) = store.insert_file(&record).await {
            store.blobs.remove_file(id);
            return Err(error.into());
        }
        Ok(record)
    }

    /// An upload that has not expired, if `tenant` may use it (`None` sees all: an admin
    /// or open mode).
    pub async fn file(
        &self,
        id: Uuid,
        tenant: Option<&str>,
    ) -> Result<Option<FileRecord>, ServiceError> {
        let Some(record) = self.inner.store.file(id).await? else {
            return Ok(None);
        };
        let visible = tenant.is_none_or(|t| record.tenant.as_deref() == Some(t));
        Ok((visible && record.expires_at_ms > now_ms()).then_some(record))
    }

    /// Refuses a payload naming a file that does not exist, has expired or belongs to
    /// another tenant than the job's, before the job exists.
    pub(super) async fn check_payload_files(
        &self,
        schema: &Value,
        payload: &Value,
        tenant: Option<&str>,
    ) -> Result<(), ServiceError> {
        for id in file_refs(schema, payload) {
            let record = match Uuid::parse_str(&id) {
                Ok(uuid) => self.inner.store.file(uuid).await?,
                Err(_) => None,
            };
            let known = record
                .filter(|f| f.expires_at_ms > now_ms())
                .filter(|f| f.tenant.as_deref() == tenant);
            if known.is_none() {
                return Err(bad_request(
                    "unknown_file",
                    format!(
                        "the payload names the file '{id}', which does not exist, has \
                         expired or belongs to another tenant; upload it with POST /v1/files"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Deletes expired uploads with their bytes.
    pub(super) async fn sweep_files(&self) {
        let store = &self.inner.store;
        loop {
            match store.delete_expired_files(now_ms(), 1000).await {
                Ok(ids) if ids.is_empty() => break,
                Ok(ids) => {
                    tracing::info!(deleted = ids.len(), "expired uploaded files");
                    for id in ids {
                        store.blobs.remove_file(id);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "file sweep could not delete");
                    break;
                }
            }
        }
        store.tidy_local_bytes().await;
    }
}

/// The string values of `payload` at properties whose schema has `"format": "kiln-file"`,
/// following `properties`, `items`, `prefixItems`, `additionalProperties` and the
/// branches of `anyOf`/`oneOf`/`allOf` (every branch is searched; a value that is not a
/// string is left to the schema).
pub fn file_refs(schema: &Value, payload: &Value) -> Vec<String> {
    let mut found = Vec::new();
    collect(schema, payload, 0, &mut found);
    found.sort();
    found.dedup();
    found
}

fn collect(schema: &Value, value: &Value, depth: usize, found: &mut Vec<String>) {
    let Value::Object(schema) = schema else {
        return;
    };
    if depth > MAX_DEPTH {
        return;
    }
    if schema.get("format").and_then(Value::as_str) == Some(FILE_FORMAT)
        && let Value::String(id) = value
    {
        found.push(id.clone());
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        if let Some(Value::Array(branches)) = schema.get(key) {
            for branch in branches {
                collect(branch, value, depth + 1, found);
            }
        }
    }
    match value {
        Value::Object(fields) => {
            let properties = schema.get("properties").and_then(Value::as_object);
            for (key, field) in fields {
                match properties.and_then(|p| p.get(key)) {
                    Some(sub) => collect(sub, field, depth + 1, found),
                    None => {
                        if let Some(extra) = schema.get("additionalProperties") {
                            collect(extra, field, depth + 1, found);
                        }
                    }
                }
            }
        }
        Value::Array(items) => {
            let prefix = schema.get("prefixItems").and_then(Value::as_array);
            for (i, item) in items.iter().enumerate() {
                match prefix.and_then(|p| p.get(i)) {
                    Some(sub) => collect(sub, item, depth + 1, found),
                    None => {
                        if let Some(sub) = schema.get("items") {
                            collect(sub, item, depth + 1, found);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// The files one job may read: those its payload names, as checked at submit, with
/// their records read and their bytes made node-local when the attempt starts (a record
/// never changes; only its expiry is checked again at each access).
pub(super) struct StoreFiles {
    granted: HashMap<String, (FileRecord, PathBuf)>,
}

impl StoreFiles {
    /// The files `payload` names under `schema`.
    pub async fn load(store: &Store, schema: &Value, payload: &Value) -> Result<Self, StoreError> {
        let mut granted = HashMap::new();
        for id in file_refs(schema, payload) {
            let Ok(uuid) = Uuid::parse_str(&id) else {
                continue;
            };
            if let Some(record) = store.file(uuid).await? {
                let path = store.local_file(&record).await?;
                granted.insert(id, (record, path));
            }
        }
        Ok(Self { granted })
    }

    fn record(&self, id: &str) -> Result<&(FileRecord, PathBuf), FileError> {
        self.granted
            .get(id)
            .filter(|(record, _)| record.expires_at_ms > now_ms())
            .ok_or_else(|| {
                FileError::NotFound(format!(
                    "'{id}' is not a file this job's payload names (or it has expired)"
                ))
            })
    }
}

impl JobFiles for StoreFiles {
    fn stat(&self, id: &str) -> Result<FileInfo, FileError> {
        let (record, _) = self.record(id)?;
        Ok(FileInfo {
            id: id.to_string(),
            size: record.size,
            content_type: record.content_type.clone(),
            sha256: record.sha256.clone(),
        })
    }

    fn read(&self, id: &str, offset: u64, len: u32) -> Result<Vec<u8>, FileError> {
        let (record, path) = self.record(id)?;
        if offset >= record.size {
            return Ok(Vec::new());
        }
        read_range(path, offset, len)
            .map_err(|e| FileError::Unavailable(format!("reading '{id}': {e}")))
    }
}

/// One attempt's artifacts, staged in its own folder until the attempt completes the job.
pub(super) struct StagedArtifacts {
    store: Arc<Store>,
    blobs: BlobDir,
    job: Uuid,
    attempt: u32,
    written: Mutex<Vec<ArtifactRecord>>,
}

impl StagedArtifacts {
    pub fn new(store: Arc<Store>, job: Uuid, attempt: u32) -> Self {
        Self {
            blobs: store.blobs.clone(),
            store,
            job,
            attempt,
            written: Mutex::new(Vec::new()),
        }
    }

    /// What the attempt wrote, in the order it created them.
    pub fn records(&self) -> Vec<ArtifactRecord> {
        self.written.lock().expect("artifacts lock").clone()
    }

    /// Makes them the job's (see [`Store::publish_artifacts`]).
    pub async fn publish(&self) -> Result<(), StoreError> {
        let names: Vec<String> = self.records().into_iter().map(|a| a.name).collect();
        self.store
            .publish_artifacts(self.job, self.attempt, &names)
            .await
    }

    /// Drops them (the attempt did not complete the job).
    pub fn discard(&self) {
        if let Err(error) = self.blobs.remove_attempts(self.job) {
            tracing::warn!(job = %self.job, %error, "could not remove staged artifacts");
        }
    }
}

impl ArtifactSink for StagedArtifacts {
    fn append(&self, name: &str, content_type: &str, bytes: &[u8]) -> Result<(), String> {
        self.blobs
            .append_artifact(self.job, self.attempt, name, bytes)
            .map_err(|e| e.to_string())?;
        let mut written = self.written.lock().expect("artifacts lock");
        match written.iter_mut().find(|a| a.name == name) {
            Some(record) => record.size += bytes.len() as u64,
            None => written.push(ArtifactRecord {
                name: name.to_string(),
                size: bytes.len() as u64,
                content_type: content_type.to_string(),
            }),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_ids_are_found_where_the_schema_marks_them() {
        let schema = json!({
            "type": "object",
            "properties": {
                "file": {"type": "string", "format": "kiln-file"},
                "name": {"type": "string"},
                "more": {"type": "array", "items": {"type": "string", "format": "kiln-file"}},
                "either": {"oneOf": [
                    {"type": "object", "properties": {"text": {"type": "string"}}},
                    {"type": "object", "properties": {"doc": {"type": "string", "format": "kiln-file"}}}
                ]}
            }
        });
        let payload = json!({
            "file": "a", "name": "not-a-file", "more": ["b", "c"], "either": {"doc": "d"}
        });
        assert_eq!(file_refs(&schema, &payload), ["a", "b", "c", "d"]);
        assert!(file_refs(&json!({"type": "object"}), &payload).is_empty());
    }
}
