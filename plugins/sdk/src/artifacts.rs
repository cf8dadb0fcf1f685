//! Output files. An artifact is stored with the job, listed in its JSON as `artifacts`
//! and downloaded from `GET /v1/jobs/{id}/artifacts/{name}`. Only the artifacts of the
//! attempt that completes the job are kept. The host bounds their total size per job
//! (`artifact_limit`) and fails the job when it is passed.
//!
//! ```no_run
//! use kiln_plugin::artifacts;
//! # fn f() -> Result<(), kiln_plugin::JobError> {
//! artifacts::write("summary.md", "text/markdown", b"# Summary\n")?;
//! # Ok(()) }
//! ```

use crate::JobError;

/// Most bytes sent to the host per call; longer writes are split.
const CHUNK: usize = 1024 * 1024;

/// Appends `bytes` to artifact `name` (1 to 128 letters, digits, `.`, `_`, `-`; not
/// starting with `.`), creating it with `content_type` on the first write. A bad name or
/// a content type different from the first write's is refused with
/// [`JobError::Permanent`] (a bug in the job type).
pub fn write(name: &str, content_type: &str, bytes: &[u8]) -> Result<(), JobError> {
    if bytes.is_empty() {
        return crate::host::artifact_write(name, content_type, bytes).map_err(JobError::Permanent);
    }
    for chunk in bytes.chunks(CHUNK) {
        crate::host::artifact_write(name, content_type, chunk).map_err(JobError::Permanent)?;
    }
    Ok(())
}

/// An artifact written piece by piece; implements [`std::io::Write`].
#[derive(Debug)]
pub struct Writer {
    name: String,
    content_type: String,
}

impl Writer {
    /// Creates (empty) artifact `name` of `content_type`.
    pub fn create(
        name: impl Into<String>,
        content_type: impl Into<String>,
    ) -> Result<Self, JobError> {
        let writer = Self {
            name: name.into(),
            content_type: content_type.into(),
        };
        write(&writer.name, &writer.content_type, &[])?;
        Ok(writer)
    }
}

impl std::io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        write(&self.name, &self.content_type, bytes).map_err(std::io::Error::other)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
