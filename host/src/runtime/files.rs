//! What a job can read and write besides JSON (contract 0.2.0): its input files and its
//! artifacts. The runtime sees them through two traits, so it knows nothing of where
//! bytes are kept: the job service backs them with the store, `kiln plugin run` with
//! local files.

use std::collections::HashMap;

/// The metadata of an input file, as `files.stat` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The file id.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// The content type it was uploaded with.
    pub content_type: String,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// Why a file cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileError {
    /// Not among the job's files, or gone.
    NotFound(String),
    /// The host could not read it now.
    Unavailable(String),
}

/// Most bytes one `files.read` call returns.
pub const MAX_READ_CHUNK: u32 = 1024 * 1024;

/// The input files one job may read: those its payload names.
pub trait JobFiles: Send + Sync + 'static {
    /// The file's metadata.
    fn stat(&self, id: &str) -> Result<FileInfo, FileError>;
    /// Up to `len` bytes from `offset`.
    fn read(&self, id: &str, offset: u64, len: u32) -> Result<Vec<u8>, FileError>;
}

/// A job with no files.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoFiles;

impl JobFiles for NoFiles {
    fn stat(&self, id: &str) -> Result<FileInfo, FileError> {
        Err(FileError::NotFound(format!(
            "no file '{id}' is given to this job"
        )))
    }

    fn read(&self, id: &str, _offset: u64, _len: u32) -> Result<Vec<u8>, FileError> {
        self.stat(id).map(|_| Vec::new())
    }
}

/// Where an attempt's artifacts go. The runtime has checked the name, the content type
/// and the size limit before calling.
pub trait ArtifactSink: Send + Sync + 'static {
    /// Appends `bytes` to artifact `name`, creating it with `content_type` first.
    fn append(&self, name: &str, content_type: &str, bytes: &[u8]) -> Result<(), String>;
}

/// Drops every artifact (for `describe`, and runs that keep none).
#[derive(Clone, Copy, Debug, Default)]
pub struct DiscardArtifacts;

impl ArtifactSink for DiscardArtifacts {
    fn append(&self, _name: &str, _content_type: &str, _bytes: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

/// Longest artifact name.
pub const MAX_ARTIFACT_NAME: usize = 128;

/// Most artifacts one attempt may write.
pub const MAX_ARTIFACTS: usize = 1000;

/// Whether `name` is a valid artifact name: 1 to 128 of letters, digits, `.`, `_`, `-`,
/// not starting with `.`, so it is a safe file name and URL segment everywhere.
pub fn valid_artifact_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_ARTIFACT_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `content_type` looks like a media type (`type/subtype`, parameters allowed).
pub fn valid_content_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or_default().trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    let token = |t: &str| {
        !t.is_empty()
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    content_type.len() <= 255 && token(kind) && token(sub) && !content_type.contains(['\r', '\n'])
}

/// What an attempt has written so far: each artifact's content type and size, and the
/// total against `artifact_limit`.
#[derive(Debug, Default)]
pub(crate) struct ArtifactLedger {
    written: HashMap<String, (String, u64)>,
    total: u64,
}

impl ArtifactLedger {
    /// Checks a write of `len` bytes against the name rules and the content type of
    /// earlier writes; `Ok(new_total)` when it may go ahead, `Err` with the plugin's
    /// message when refused. The limit is checked by the caller.
    pub fn check(&self, name: &str, content_type: &str, len: usize) -> Result<u64, String> {
        if !valid_artifact_name(name) {
            return Err(format!(
                "the artifact name {name:?} must be 1 to {MAX_ARTIFACT_NAME} letters, digits, \
                 '.', '_' or '-', not starting with '.'"
            ));
        }
        if !valid_content_type(content_type) {
            return Err(format!(
                "{content_type:?} is not a content type like text/markdown"
            ));
        }
        match self.written.get(name) {
            Some((earlier, _)) if earlier != content_type => {
                return Err(format!(
                    "the artifact '{name}' was created as {earlier}; it cannot be appended to \
                     as {content_type}"
                ));
            }
            None if self.written.len() >= MAX_ARTIFACTS => {
                return Err(format!(
                    "an attempt may write at most {MAX_ARTIFACTS} artifacts"
                ));
            }
            _ => {}
        }
        Ok(self.total.saturating_add(len as u64))
    }

    /// Records a write that [`ArtifactLedger::check`] allowed.
    pub fn record(&mut self, name: &str, content_type: &str, len: usize) {
        let entry = self
            .written
            .entry(name.to_string())
            .or_insert_with(|| (content_type.to_string(), 0));
        entry.1 += len as u64;
        self.total += len as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_names_are_safe_file_names() {
        for good in ["summary.md", "a", "chunk-01_v2.json"] {
            assert!(valid_artifact_name(good), "{good}");
        }
        for bad in ["", ".hidden", "../x", "a/b", "a b", "é", &"x".repeat(129)] {
            assert!(!valid_artifact_name(bad), "{bad}");
        }
    }

    #[test]
    fn content_types_are_media_types() {
        for good in [
            "text/markdown",
            "application/json; charset=utf-8",
            "image/svg+xml",
        ] {
            assert!(valid_content_type(good), "{good}");
        }
        for bad in ["", "text", "text/", "/x", "text/plain\r\nX: y"] {
            assert!(!valid_content_type(bad), "{bad}");
        }
    }

    #[test]
    fn appends_keep_their_content_type() {
        let mut ledger = ArtifactLedger::default();
        assert_eq!(ledger.check("a.md", "text/markdown", 3), Ok(3));
        ledger.record("a.md", "text/markdown", 3);
        assert_eq!(ledger.check("a.md", "text/markdown", 2), Ok(5));
        assert!(ledger.check("a.md", "text/plain", 2).is_err());
    }
}
