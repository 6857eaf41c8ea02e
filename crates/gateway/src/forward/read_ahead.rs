//! Reading ahead under rustls, so a large answer costs a system call or two, not one per 4 KiB.
//!
//! rustls asks its transport for at most 4 KiB at a time (its record buffer grows by that much a
//! read), so a 16 KiB answer from an instance came off the socket in five `recvfrom`s where the
//! plaintext path needs one or two. [`ReadAhead`] sits between rustls and the socket: a read
//! that fills rustls's 4 KiB completely says the socket likely holds more, so the next read goes
//! into a buffer of [`AHEAD`] bytes and rustls's following reads are served from it, without a
//! system call, until it is drained.
//!
//! The buffer lives only while it holds bytes: it is made when a read fills rustls's request and
//! freed the moment it is drained, so an idle pooled connection holds none of it and an answer
//! that fits one read (the common small one) never makes it.
//!
//! Reads go through tokio's `AsyncRead` on the socket, not `try_read`: a read that fills less
//! than it was offered has drained the socket, and only `AsyncRead` then marks it not readable,
//! which spares the next look a system call that would only say "would block".

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The read-ahead buffer: two full TLS records and their framing.
pub const AHEAD: usize = 32 * 1024 + 64;

/// A TCP socket whose reads run ahead of small requests for them (see the module's comment).
#[derive(Debug)]
pub struct ReadAhead {
    tcp: TcpStream,
    /// Bytes read from the socket and not yet handed on: `ahead[start..]`. Empty (and without
    /// an allocation) whenever nothing is held.
    ahead: Vec<u8>,
    start: usize,
    /// The last read filled all it was offered: the socket likely has more.
    more: bool,
}

impl ReadAhead {
    pub fn new(tcp: TcpStream) -> Self {
        Self {
            tcp,
            ahead: Vec::new(),
            start: 0,
            more: false,
        }
    }

    /// The socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    /// Bytes read from the socket and not yet handed on.
    pub fn held(&self) -> usize {
        self.ahead.len() - self.start
    }

    /// Hands on what the buffer holds, freeing it once drained.
    fn serve(&mut self, out: &mut ReadBuf<'_>) {
        let n = out.remaining().min(self.held());
        out.put_slice(&self.ahead[self.start..self.start + n]);
        self.start += n;
        if self.start == self.ahead.len() {
            self.ahead = Vec::new();
            self.start = 0;
        }
    }
}

impl AsyncRead for ReadAhead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.held() > 0 {
            this.serve(out);
            return Poll::Ready(Ok(()));
        }
        let offered = out.remaining();
        if !this.more || offered >= AHEAD || offered == 0 {
            // Straight into the caller's buffer: nothing is copied for an answer that fits.
            let before = out.filled().len();
            ready!(Pin::new(&mut this.tcp).poll_read(cx, out))?;
            this.more = out.filled().len() - before == offered && offered > 0;
            return Poll::Ready(Ok(()));
        }
        let mut ahead = Vec::with_capacity(AHEAD);
        let mut buf = ReadBuf::uninit(ahead.spare_capacity_mut());
        let result = Pin::new(&mut this.tcp).poll_read(cx, &mut buf);
        let read = buf.filled().len();
        match result {
            Poll::Pending => {
                this.more = false;
                Poll::Pending
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Ready(Ok(())) => {
                // SAFETY: `poll_read` initialised the first `read` bytes of the spare capacity.
                unsafe { ahead.set_len(read) };
                this.more = read == AHEAD;
                this.ahead = ahead;
                this.start = 0;
                this.serve(out);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl AsyncWrite for ReadAhead {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    async fn pair() -> (ReadAhead, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(address), listener.accept());
        (ReadAhead::new(client.unwrap()), accepted.unwrap().0)
    }

    /// Reads `total` bytes in 4 KiB requests, as rustls does.
    async fn read_in_4k(reader: &mut ReadAhead, total: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < total {
            let mut chunk = [0u8; 4096];
            let n = reader.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed early");
            got.extend_from_slice(&chunk[..n]);
        }
        got
    }

    #[tokio::test]
    async fn a_large_answer_is_read_ahead_and_arrives_whole_and_in_order() {
        let (mut reader, mut writer) = pair().await;
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        writer.write_all(&sent).await.unwrap();
        // Let it all arrive, so the read after a full 4 KiB finds the rest waiting.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let mut first = [0u8; 4096];
        assert_eq!(reader.read(&mut first).await.unwrap(), 4096);
        let mut second = [0u8; 4096];
        assert_eq!(reader.read(&mut second).await.unwrap(), 4096);
        assert!(
            reader.held() > 0,
            "the read after a full one goes ahead into the buffer"
        );
        let mut got = first.to_vec();
        got.extend_from_slice(&second);
        got.extend(read_in_4k(&mut reader, sent.len() - got.len()).await);
        assert_eq!(got, sent);
        assert_eq!(reader.held(), 0);
        assert_eq!(reader.ahead.capacity(), 0, "a drained buffer is freed");
    }

    #[tokio::test]
    async fn a_small_answer_goes_straight_through_without_a_buffer() {
        let (mut reader, mut writer) = pair().await;
        writer.write_all(b"hello, world\n").await.unwrap();
        let mut chunk = [0u8; 4096];
        let n = reader.read(&mut chunk).await.unwrap();
        assert_eq!(&chunk[..n], b"hello, world\n");
        assert_eq!(reader.ahead.capacity(), 0);
        assert!(!reader.more);
    }

    #[tokio::test]
    async fn writes_and_the_end_of_the_stream_pass_through() {
        let (mut reader, mut writer) = pair().await;
        reader.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        writer.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        writer.write_all(&[7u8; 10_000]).await.unwrap();
        drop(writer);
        let mut all = Vec::new();
        reader.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, vec![7u8; 10_000]);
    }
}
