//! Input files: uploads (`POST /v1/files`) that the job's payload names.
//!
//! Declare the payload property with `"format": "kiln-file"` in your schema: the host then
//! refuses a job naming a file that does not exist or belongs to another tenant, and lets
//! this job read it. Read in chunks with [`Reader`] (it implements [`std::io::Read`]), or
//! whole with [`read_all`] under a size bound you choose.
//!
//! ```no_run
//! use kiln_plugin::files;
//! # fn f(id: &str) -> Result<(), kiln_plugin::JobError> {
//! let info = files::stat(id)?;
//! let bytes = files::read_all(id, 16 * 1024 * 1024)?; // refuses a bigger file
//! # Ok(()) }
//! ```

use std::fmt;

use crate::JobError;
use crate::bindings::kiln::plugin::files as raw;

/// Most bytes one host read returns.
pub const CHUNK: u32 = 1024 * 1024;

/// What is known about a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileInfo {
    /// The file id.
    pub id: String,
    /// Size in bytes.
    pub size: u64,
    /// The content type it was uploaded with, e.g. `application/pdf`.
    pub content_type: String,
    /// SHA-256, lowercase hex.
    pub sha256: String,
}

/// Why a file cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileError {
    /// Not among the files the payload names, or gone.
    NotFound(String),
    /// The host could not read it now; retrying the job may help.
    Unavailable(String),
    /// The file is larger than the caller's bound ([`read_all`]).
    TooLarge(String),
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotFound(m) => write!(f, "file not found: {m}"),
            Self::Unavailable(m) => write!(f, "file unavailable: {m}"),
            Self::TooLarge(m) => write!(f, "file too large: {m}"),
        }
    }
}

impl std::error::Error for FileError {}

impl From<FileError> for JobError {
    /// A missing or oversized file is the payload's fault (`invalid_input`); a host that
    /// cannot read one now is `retryable`.
    fn from(error: FileError) -> Self {
        match error {
            FileError::Unavailable(_) => JobError::Retryable(error.to_string()),
            _ => JobError::InvalidInput(error.to_string()),
        }
    }
}

impl From<raw::FileError> for FileError {
    fn from(error: raw::FileError) -> Self {
        match error {
            raw::FileError::NotFound(m) => Self::NotFound(m),
            raw::FileError::Unavailable(m) => Self::Unavailable(m),
        }
    }
}

/// The file's metadata.
pub fn stat(id: &str) -> Result<FileInfo, FileError> {
    let info = crate::host::file_stat(id)?;
    Ok(FileInfo {
        id: info.id,
        size: info.size,
        content_type: info.content_type,
        sha256: info.sha256,
    })
}

/// The whole file, refused with [`FileError::TooLarge`] when it is over `max_bytes`
/// (checked before anything is read).
pub fn read_all(id: &str, max_bytes: u64) -> Result<Vec<u8>, FileError> {
    let info = stat(id)?;
    if info.size > max_bytes {
        return Err(FileError::TooLarge(format!(
            "'{id}' is {} bytes; this job reads at most {max_bytes}",
            info.size
        )));
    }
    let mut bytes = Vec::with_capacity(info.size as usize);
    let mut reader = Reader::new(id);
    while let Some(chunk) = reader.next_chunk()? {
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Reads a file from the start in host-sized chunks; implements [`std::io::Read`].
#[derive(Debug)]
pub struct Reader {
    id: String,
    offset: u64,
    buffer: Vec<u8>,
    at: usize,
    done: bool,
}

impl Reader {
    /// A reader of file `id`.
    pub fn new(id: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            offset: 0,
            buffer: Vec::new(),
            at: 0,
            done: false,
        }
    }

    /// The next chunk, or `None` at the end of the file.
    pub fn next_chunk(&mut self) -> Result<Option<Vec<u8>>, FileError> {
        if self.done {
            return Ok(None);
        }
        let chunk = crate::host::file_read(&self.id, self.offset, CHUNK)?;
        if chunk.is_empty() {
            self.done = true;
            return Ok(None);
        }
        self.offset += chunk.len() as u64;
        Ok(Some(chunk))
    }
}

impl std::io::Read for Reader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.buffer.len() {
            match self.next_chunk() {
                Ok(Some(chunk)) => {
                    self.buffer = chunk;
                    self.at = 0;
                }
                Ok(None) => return Ok(0),
                Err(error) => return Err(std::io::Error::other(error)),
            }
        }
        let n = out.len().min(self.buffer.len() - self.at);
        out[..n].copy_from_slice(&self.buffer[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
