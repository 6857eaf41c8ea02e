//! The byte stream to an instance: a plain TCP socket, or mutual TLS over one.
//!
//! An enum rather than a boxed `dyn AsyncRead + AsyncWrite`: every read and write on a plaintext
//! connection is one `match` on the variant and then exactly the `TcpStream` call it was before,
//! with no allocation, no vtable and nothing the compiler cannot inline. The TLS side is boxed
//! (a rustls client connection is over a kilobyte), so a plaintext connection, pooled or moved
//! between functions, is no larger than it was; the box is made once per TLS connection, never
//! per request.
//!
//! Whatever the variant, [`UpstreamStream::tcp`] is the socket underneath: the pool's liveness
//! checks ask the kernel about it, since TLS changes nothing about whether the instance has
//! closed the connection. Under TLS the connection is an [`UnbufferedTls`]: rustls's state machine
//! over the gateway's own buffers.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::forward::unbuffered_tls::UnbufferedTls;

/// A connection to an instance, as the HTTP/1.1 pool, the HTTP/2 pool and a WebSocket tunnel
/// use it.
pub enum UpstreamStream {
    Plain(TcpStream),
    Tls(Box<UnbufferedTls>),
}

impl UpstreamStream {
    /// The TCP socket under the connection.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            UpstreamStream::Plain(stream) => stream,
            UpstreamStream::Tls(stream) => stream.tcp(),
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, UpstreamStream::Tls(_))
    }

    /// Whether bytes from the instance wait under TLS, read from the socket and not yet
    /// decrypted: on a connection about to be pooled, something the instance sent unasked.
    pub fn holds_unread(&self) -> bool {
        match self {
            UpstreamStream::Plain(_) => false,
            UpstreamStream::Tls(stream) => stream.holds_unread(),
        }
    }

    /// Gives back what an idle connection need not hold: under TLS, the buffers that are
    /// empty (see [`UnbufferedTls::relax`]). Nothing to do on TCP.
    pub fn relax(&mut self) {
        if let UpstreamStream::Tls(stream) = self {
            stream.relax();
        }
    }
}

impl std::fmt::Debug for UpstreamStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = if self.is_tls() { "tls" } else { "plain" };
        f.debug_tuple("UpstreamStream").field(&kind).finish()
    }
}

impl AsyncRead for UpstreamStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(stream) => stream.is_write_vectored(),
            UpstreamStream::Tls(stream) => stream.is_write_vectored(),
        }
    }

    /// A TLS write may leave records in rustls's buffer when the socket is full; flushing
    /// sends them. On TCP it is nothing.
    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    /// TLS: `close_notify`, then the socket's write side.
    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(stream) => Pin::new(stream).poll_shutdown(cx),
            UpstreamStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}
