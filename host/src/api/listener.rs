//! The TCP listener the API is served on. It exists for one answer hyper writes itself:
//! a request whose header section is over hyper's limits (100 headers, or about 400 KiB
//! in all) gets `431` before any router sees it, with an empty body. Every other error
//! leaves Kiln in the one error shape, so each connection's writes are watched for that
//! canned answer and it is replaced, still `431`, by
//! `{"error": {"kind": "headers_too_large", "message": …}}`.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// A [`TcpListener`] whose connections answer an oversized header section in the error
/// shape. Serve it with `axum::serve`.
pub struct Listener(TcpListener);

impl Listener {
    /// Wraps a bound listener.
    pub fn new(listener: TcpListener) -> Self {
        Self(listener)
    }
}

impl axum::serve::Listener for Listener {
    type Io = ShapedErrors<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // axum's own accept loop for a TcpListener (it retries transient errors).
        let (io, addr) = axum::serve::Listener::accept(&mut self.0).await;
        (ShapedErrors::new(io), addr)
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

/// A connection whose writes pass through unchanged, except hyper's bare `431`.
pub struct ShapedErrors<T> {
    inner: T,
    /// The replacement answer still to write, and how much of it is written.
    pending: Option<(Vec<u8>, usize)>,
}

impl<T> ShapedErrors<T> {
    fn new(inner: T) -> Self {
        Self {
            inner,
            pending: None,
        }
    }
}

impl<T: AsyncWrite + Unpin> ShapedErrors<T> {
    /// Writes what is left of the replacement answer.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some((bytes, written)) = &mut self.pending {
            if *written == bytes.len() {
                self.pending = None;
                break;
            }
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &bytes[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Takes `buf` as written when it is hyper's bare `431` (the replacement goes out
    /// instead, on this call and the next flush).
    fn poll_replaced(
        &mut self,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Option<Poll<io::Result<usize>>> {
        let replacement = shaped_431(buf)?;
        self.pending = Some((replacement, 0));
        Some(match self.poll_pending(cx) {
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            // Pending or done, hyper's bytes are taken: the rest goes out on flush.
            _ => Poll::Ready(Ok(buf.len())),
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ShapedErrors<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ShapedErrors<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        if let Some(poll) = this.poll_replaced(cx, buf) {
            return poll;
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        // hyper writes its canned answer as one buffer (it has no body).
        if let Some(first) = bufs.iter().find(|b| !b.is_empty())
            && let Some(poll) = this.poll_replaced(cx, first)
        {
            return poll;
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_pending(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// The error-shaped replacement when `buf` is hyper's canned `431`: a status line of 431
/// and a head without a `content-type` (every answer of Kiln's own has one).
fn shaped_431(buf: &[u8]) -> Option<Vec<u8>> {
    const STATUS_LINE: &[u8] = b"HTTP/1.1 431 ";
    if !buf.starts_with(STATUS_LINE) {
        return None;
    }
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if head.contains("\r\ncontent-type:") {
        return None;
    }
    let body = serde_json::json!({"error": {
        "kind": "headers_too_large",
        "message": "the request's header section is too large: Kiln reads at most 100 \
                    headers and about 400 KiB of them; send fewer or smaller headers",
    }})
    .to_string();
    let mut answer = format!(
        "HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes();
    answer.extend_from_slice(&buf[head_end..]);
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_bare_431_is_replaced() {
        let bare =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let shaped = String::from_utf8(shaped_431(bare).unwrap()).unwrap();
        assert!(shaped.starts_with("HTTP/1.1 431 "), "{shaped}");
        let body = shaped.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["kind"], "headers_too_large");

        let own = b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(shaped_431(own).is_none());
        assert!(shaped_431(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(shaped_431(b"HTTP/1.1 431 trunc").is_none());
    }
}
