//! The one place the SDK calls the host.
//!
//! In a component (`wasm32`) these are the contract's imports. In a native build, which is
//! what `cargo test` runs, there is no host to import from: the calls go to the fake host
//! of the [`crate::testing`] run in progress on this thread, so a job type's unit tests
//! run its real code with no component and no server.

use crate::bindings::kiln::plugin::files::{FileError, FileInfo};
use crate::bindings::kiln::plugin::llm::{Embeddings, LlmError, Request, Response};
use crate::bindings::kiln::plugin::log::Level;

#[cfg(target_arch = "wasm32")]
mod calls {
    use super::*;
    use crate::bindings::kiln::plugin::{artifacts, files, llm, log, progress};

    pub fn report(percent: u8, message: &str) {
        progress::report(percent, message);
    }
    pub fn partial(name: &str, data: &str) {
        progress::partial(name, data);
    }
    pub fn cancelled() -> bool {
        progress::cancelled()
    }
    pub fn complete(request: &Request) -> Result<Response, LlmError> {
        llm::complete(request)
    }
    pub fn complete_all(requests: &[Request]) -> Vec<Result<Response, LlmError>> {
        llm::complete_all(requests)
    }
    pub fn embed(model: Option<&str>, texts: &[String]) -> Result<Embeddings, LlmError> {
        llm::embed(model, texts)
    }
    pub fn file_stat(id: &str) -> Result<FileInfo, FileError> {
        files::stat(id)
    }
    pub fn file_read(id: &str, offset: u64, len: u32) -> Result<Vec<u8>, FileError> {
        files::read(id, offset, len)
    }
    pub fn artifact_write(name: &str, content_type: &str, bytes: &[u8]) -> Result<(), String> {
        artifacts::write(name, content_type, bytes)
    }
    pub fn log(level: Level, message: &str) {
        log::write(level, message);
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod calls {
    use super::*;
    use crate::testing::with_host;

    pub fn report(percent: u8, message: &str) {
        with_host(|host| host.report(percent, message));
    }
    pub fn partial(name: &str, data: &str) {
        with_host(|host| host.partial(name, data));
    }
    pub fn cancelled() -> bool {
        with_host(|host| host.cancelled())
    }
    pub fn complete(request: &Request) -> Result<Response, LlmError> {
        with_host(|host| host.complete(request))
    }
    pub fn complete_all(requests: &[Request]) -> Vec<Result<Response, LlmError>> {
        with_host(|host| requests.iter().map(|r| host.complete(r)).collect())
    }
    pub fn embed(model: Option<&str>, texts: &[String]) -> Result<Embeddings, LlmError> {
        with_host(|host| host.embed(model, texts))
    }
    pub fn file_stat(id: &str) -> Result<FileInfo, FileError> {
        with_host(|host| host.file_stat(id))
    }
    pub fn file_read(id: &str, offset: u64, len: u32) -> Result<Vec<u8>, FileError> {
        with_host(|host| host.file_read(id, offset, len))
    }
    pub fn artifact_write(name: &str, content_type: &str, bytes: &[u8]) -> Result<(), String> {
        with_host(|host| host.artifact_write(name, content_type, bytes))
    }
    pub fn log(level: Level, message: &str) {
        with_host(|host| host.log(level, message));
    }
}

pub(crate) use calls::*;
