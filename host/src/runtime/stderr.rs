//! The guest's stderr, kept as its last few KiB for the job's error message.
//!
//! Language runtimes print their account of a fatal error to stderr before they trap:
//! CPython an uncaught exception's traceback, SpiderMonkey an abort reason, C's `abort`
//! a message. The host links WASI with no stdio to the outside, so this is the one place
//! that text can go: the trap's message quotes it when the plugin logged no error of its
//! own. Only the tail is kept, so a guest that writes in a loop costs bounded memory, and
//! writes never fail (a full pipe would trap the guest for writing, which is no error).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Bytes of stderr kept: the end of a traceback, not a log.
const KEEP: usize = 4 * 1024;

/// One job attempt's stderr; clones share it.
#[derive(Clone, Debug, Default)]
pub(crate) struct StderrTail(Arc<Mutex<Vec<u8>>>);

impl StderrTail {
    fn push(&self, bytes: &[u8]) {
        let mut buffer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        buffer.extend_from_slice(bytes);
        // Trim only once the buffer holds twice what is kept, so a stream of small writes
        // does not move the kept bytes at every write.
        if buffer.len() > 2 * KEEP {
            let cut = buffer.len() - KEEP;
            buffer.drain(..cut);
        }
    }

    /// The last [`KEEP`] bytes written, as text, or `None` when the guest wrote nothing
    /// but white space.
    pub(crate) fn text(&self) -> Option<String> {
        let buffer = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let tail = &buffer[buffer.len().saturating_sub(KEEP)..];
        let text = String::from_utf8_lossy(tail).trim().to_string();
        (!text.is_empty()).then_some(text)
    }
}

impl IsTerminal for StderrTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for StderrTail {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for StderrTail {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for StderrTail {
    async fn ready(&mut self) {}
}

impl AsyncWrite for StderrTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_tail_is_kept_and_blank_output_is_none() {
        let tail = StderrTail::default();
        assert_eq!(tail.text(), None);
        tail.push(b"  \n");
        assert_eq!(tail.text(), None);
        for _ in 0..10_000 {
            tail.push(b"noise ");
        }
        tail.push(b"ValueError: the end\n");
        let text = tail.text().unwrap();
        assert!(text.ends_with("ValueError: the end"), "{text}");
        assert!(text.len() <= KEEP);
        assert!(tail.0.lock().unwrap().len() <= 2 * KEEP);
    }
}
