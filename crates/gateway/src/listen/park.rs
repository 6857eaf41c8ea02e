//! Plain-TCP client connections, with idle keep-alive connections parked.
//!
//! An HTTP/1.1 connection served by hyper keeps its read and write buffers (8 to 16 KiB each)
//! and its state machine for as long as it is open, busy or idle. Clients keep connections
//! alive for minutes between requests, so ten thousand idle clients would cost the gateway a
//! few hundred megabytes. nginx frees the buffers of an idle keep-alive connection; this module
//! does the same: once a connection has been idle at a message boundary for `park_after`
//! (`STRATUS_PARK_AFTER`, 1 s), its hyper session ends without closing the socket, the
//! connection's task ends with it, and the socket waits in the worker's parking lot
//! (`lot.rs`), which keeps under a hundred bytes for it and no task. When the client sends
//! again, the lot hands the socket to a new connection task and a new session. A busy
//! connection never parks: the next request arrives long before `park_after`.
//!
//! The delay is a trade. The sessions of every client that went idle within the last
//! `park_after` are alive at once, so a burst of new clients grows the heap for a moment (the
//! pages are given back as sessions park, see [`release_freed_memory`]). But a client that
//! pauses longer than `park_after` between requests pays for a new session at each pause:
//! about 30 us of gateway CPU, as much again as proxying its request.
//!
//! [`SessionIo`] sits between hyper and the socket and knows where the connection is:
//! - between messages, idle: after `park_after` it reports end-of-stream to hyper, which then
//!   finishes cleanly (everything written is flushed first), and its shutdown of the socket is
//!   skipped, so the socket survives the session;
//! - part-way through a request head: the head must arrive within the header timeout (against
//!   slowloris), or the connection is closed;
//! - serving a request, or upgraded (WebSocket): no timers of its own.
//!
//! HTTP/2 connections (prior knowledge) multiplex and are served as they are.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::{Instant, Sleep};

use crate::headers::ClientConnection;
use crate::listen::limits::Limits;
use crate::listen::lot::{Lot, Woken};
use crate::listen::stop::stop_signal;
use crate::proxy::Proxy;

/// The HTTP/2 connection preface (RFC 9113 section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Where the connection is, shared by the session's I/O and the service answering it.
#[derive(Default)]
struct ConnState {
    /// Requests handed to the proxy and not yet answered.
    in_flight: AtomicU32,
    /// Bytes of a new request head have arrived, and its request has not reached the proxy.
    mid_head: AtomicBool,
    /// The connection switched protocols: its bytes are a tunnel's from now on.
    upgraded: AtomicBool,
    /// The session reported end-of-stream to park the connection (not a client close).
    parking: AtomicBool,
    /// The socket, handed back by a parking session's I/O when hyper drops it.
    returned: Mutex<Option<TcpStream>>,
}

/// Serves one plain-TCP client connection until the client leaves or the connection parks
/// (it then waits in the worker's [`Lot`], which serves it again when the client sends more).
/// `permit` is the connection's place under the worker's connection limit, held for as long as
/// the connection is open.
pub async fn serve(
    stream: TcpStream,
    lot: Arc<Lot>,
    client: Arc<ClientConnection>,
    permit: OwnedSemaphorePermit,
) {
    let deadline = crate::listen::lot::after(lot.limits.header_timeout);
    serve_from(stream, lot, client, permit, deadline).await
}

/// [`serve`] for a connection whose first request must begin by `deadline`.
async fn serve_from(
    stream: TcpStream,
    lot: Arc<Lot>,
    client: Arc<ClientConnection>,
    permit: OwnedSemaphorePermit,
    deadline: Instant,
) {
    // A client silent for `park_after` waits for its first bytes in the lot, not in a task.
    let quiet_until = crate::listen::lot::after(lot.limits.park_after).min(deadline);
    let stopped = lot.stopped.clone();
    match opening(&stream, quiet_until, deadline).await {
        Opening::Gone => {}
        Opening::Silent => {
            lot.park_fresh(stream, client.peer, permit, deadline);
            release_freed_memory();
        }
        Opening::H2 => {
            // Boxed for the same reason as the HTTP/1 session below.
            Box::pin(serve_h2(
                stream,
                lot.proxy.clone(),
                client,
                &lot.limits,
                stopped,
            ))
            .await;
        }
        Opening::Http1 => {
            serve_http1(Connection {
                stream,
                client,
                lot,
                stopped,
                permit,
            })
            .await
        }
    }
}

/// Starts a new session on a parked connection whose client sent again.
pub fn resume(lot: &Arc<Lot>, woken: Woken) {
    let client = Arc::new(ClientConnection::new(woken.peer, false));
    if woken.fresh {
        // Its first bytes: HTTP/2 or HTTP/1.1 is still to be seen, by the same deadline.
        let serving = serve_from(woken.stream, lot.clone(), client, woken.permit, woken.until);
        tokio::spawn(Box::pin(serving) as Pin<Box<dyn Future<Output = ()> + Send>>);
        return;
    }
    tokio::spawn(serve_http1(Connection {
        stream: woken.stream,
        client,
        lot: lot.clone(),
        stopped: lot.stopped.clone(),
        permit: woken.permit,
    }));
}

/// An HTTP/1.1 connection between sessions: all a session needs to start.
struct Connection {
    stream: TcpStream,
    client: Arc<ClientConnection>,
    /// Where the connection parks, and the worker's proxy and limits.
    lot: Arc<Lot>,
    stopped: watch::Receiver<bool>,
    /// The connection's place under the worker's connection limit.
    permit: OwnedSemaphorePermit,
}

/// Serves HTTP/1.1 on the connection until it closes or parks. Parking ends this task: the
/// socket waits in the worker's [`Lot`] with no task of its own.
///
/// A boxed future: its state (hyper's session and the request in flight) is a separate
/// allocation, freed when it ends; and a parked connection's next session is spawned from the
/// lot's task, which would otherwise have to name this future's type.
fn serve_http1(connection: Connection) -> Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(serve_http1_inner(connection))
}

async fn serve_http1_inner(mut connection: Connection) {
    let state = Arc::new(ConnState::default());
    let lot = connection.lot;
    let session = serve_session(
        connection.stream,
        &lot.proxy,
        &connection.client,
        &state,
        &lot.limits,
        &mut connection.stopped,
    );
    let Some(stream) = session.await else { return };
    lot.park(stream, connection.client.peer, connection.permit);
    release_freed_memory();
}

/// One hyper session on the connection; the socket back if it parked.
async fn serve_session(
    stream: TcpStream,
    proxy: &Arc<Proxy>,
    client: &Arc<ClientConnection>,
    state: &Arc<ConnState>,
    limits: &Limits,
    stopped: &mut watch::Receiver<bool>,
) -> Option<TcpStream> {
    state.parking.store(false, Ordering::Relaxed);
    let io = SessionIo {
        io: Some(stream),
        state: state.clone(),
        sleep: None,
        armed: None,
        header_timeout: limits.header_timeout,
        park_after: limits.park_after,
    };
    let service = {
        let proxy = proxy.clone();
        let client = client.clone();
        let state = state.clone();
        service_fn(move |request| {
            let proxy = proxy.clone();
            let client = client.clone();
            let state = state.clone();
            state.mid_head.store(false, Ordering::Relaxed);
            state.in_flight.fetch_add(1, Ordering::Relaxed);
            async move {
                let response = proxy.handle(request, &client).await;
                if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                    state.upgraded.store(true, Ordering::Relaxed);
                }
                state.in_flight.fetch_sub(1, Ordering::Relaxed);
                Ok::<_, Infallible>(response)
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_header_size(limits.max_header_bytes)
        // The head's deadline is SessionIo's (hyper's would also cut idle keep-alive).
        .header_read_timeout(None)
        .keep_alive(true)
        // A client may close its side once its request is sent, and still wait for the answer.
        .half_close(true);
    let (outcome, stopping) = {
        let connection = builder.serve_connection(io, service).with_upgrades();
        tokio::pin!(connection);
        let mut stopping = false;
        let outcome = loop {
            tokio::select! {
                outcome = connection.as_mut() => break outcome,
                _ = stop_signal(stopped), if !stopping => {
                    // Finish the request in flight, then close.
                    connection.as_mut().graceful_shutdown();
                    stopping = true;
                }
            }
        };
        (outcome, stopping)
        // The connection is dropped here, and with it the session's I/O, which hands the socket
        // back if the session parked.
    };
    if let Err(error) = outcome {
        tracing::debug!(%error, peer = %client.peer, "connection ended with an error");
    }
    if stopping || !state.parking.load(Ordering::Relaxed) {
        return None;
    }
    state.returned.lock().ok()?.take()
}

/// How a new connection opens.
enum Opening {
    /// With the HTTP/2 preface (h2c with prior knowledge).
    H2,
    /// With anything else: HTTP/1.1.
    Http1,
    /// Nothing yet, and its deadline not reached: it waits in the lot.
    Silent,
    /// Closed, failed, or nothing by its deadline.
    Gone,
}

/// Looks at a new connection's first bytes without consuming them, deciding at the first byte
/// that differs from the HTTP/2 preface. Nothing by `quiet_until` is [`Opening::Silent`]
/// (unless that is the `deadline` too); a partial preface must be completed by `deadline`.
async fn opening(stream: &TcpStream, quiet_until: Instant, deadline: Instant) -> Opening {
    let mut buffer = [0u8; H2_PREFACE.len()];
    let mut by = quiet_until;
    loop {
        match tokio::time::timeout_at(by, stream.peek(&mut buffer)).await {
            Err(_) if by < deadline => return Opening::Silent,
            Err(_) | Ok(Err(_)) | Ok(Ok(0)) => return Opening::Gone,
            Ok(Ok(n)) if buffer[..n] != H2_PREFACE[..n] => return Opening::Http1,
            Ok(Ok(n)) if n == H2_PREFACE.len() => return Opening::H2,
            // A prefix of the preface so far: wait for more.
            Ok(Ok(_)) => {
                by = deadline;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }
}

async fn serve_h2(
    stream: TcpStream,
    proxy: Arc<Proxy>,
    client: Arc<ClientConnection>,
    limits: &Limits,
    mut stopped: watch::Receiver<bool>,
) {
    let service = service_fn(move |request| {
        let proxy = proxy.clone();
        let client = client.clone();
        async move { Ok::<_, Infallible>(proxy.handle(request, &client).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    builder
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            outcome = connection.as_mut() => {
                if let Err(error) = outcome {
                    tracing::debug!(%error, "HTTP/2 connection ended with an error");
                }
                return;
            }
            _ = stop_signal(&mut stopped), if !stopping => {
                connection.as_mut().graceful_shutdown();
                stopping = true;
            }
        }
    }
}

/// Hands memory freed by parked connections' tasks back to the operating system, now and then.
///
/// glibc's allocator keeps freed memory in the middle of its heap resident; after a burst of
/// clients goes idle, their sessions' buffers would stay in the process's RSS although nothing
/// uses them. `malloc_trim` releases such pages; once per thousand parked sessions keeps its
/// cost out of sight.
fn release_freed_memory() {
    use std::sync::atomic::AtomicUsize;
    static PARKED: AtomicUsize = AtomicUsize::new(0);
    if PARKED.fetch_add(1, Ordering::Relaxed) % 1000 == 999 {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only walks the allocator's own free lists.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

/// What a session's deadline is for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Deadline {
    /// The request head must be complete by then.
    Head,
    /// Idle until then: park.
    Park,
}

/// The socket as one session of hyper sees it; see the module documentation.
struct SessionIo {
    io: Option<TcpStream>,
    state: Arc<ConnState>,
    /// One timer for the session, re-armed rather than re-made (no allocation per request).
    sleep: Option<Pin<Box<Sleep>>>,
    /// What `sleep` is armed for, if anything.
    armed: Option<Deadline>,
    header_timeout: Duration,
    park_after: Duration,
}

impl SessionIo {
    fn io(&mut self) -> io::Result<Pin<&mut TcpStream>> {
        match self.io.as_mut() {
            Some(io) => Ok(Pin::new(io)),
            None => Err(io::ErrorKind::NotConnected.into()),
        }
    }

    /// Polls the deadline of `kind`, arming it first if another (or none) is armed.
    fn poll_deadline(&mut self, kind: Deadline, cx: &mut Context<'_>) -> Poll<()> {
        let after = match kind {
            Deadline::Head => self.header_timeout,
            Deadline::Park => self.park_after,
        };
        let rearm = self.armed != Some(kind);
        self.armed = Some(kind);
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
        if rearm {
            sleep.as_mut().reset(Instant::now() + after);
        }
        sleep.as_mut().poll(cx)
    }
}

impl Read for SessionIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // As hyper-util's TokioIo does: tokio reads into hyper's uninitialised buffer.
        let polled = {
            // SAFETY: tokio's ReadBuf only writes initialised bytes into it, and we advance the
            // cursor by exactly the count it filled.
            let unfilled = unsafe { buf.as_mut() };
            let mut read_buf = tokio::io::ReadBuf::uninit(unfilled);
            match tokio::io::AsyncRead::poll_read(this.io()?, cx, &mut read_buf) {
                Poll::Ready(Ok(())) => Poll::Ready(Ok(read_buf.filled().len())),
                Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
                Poll::Pending => Poll::Pending,
            }
        };
        let state = &this.state;
        match polled {
            Poll::Ready(Ok(read)) => {
                // SAFETY: `read` bytes were just filled (see above).
                unsafe { buf.advance(read) };
                // The first bytes of a new request: its head is due within the header timeout
                // from now.
                if read > 0
                    && state.in_flight.load(Ordering::Relaxed) == 0
                    && !state.mid_head.swap(true, Ordering::Relaxed)
                {
                    this.armed = None;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => {
                if state.upgraded.load(Ordering::Relaxed) {
                    return Poll::Pending;
                }
                if state.mid_head.load(Ordering::Relaxed) {
                    ready!(this.poll_deadline(Deadline::Head, cx));
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the request head did not arrive in time",
                    )));
                }
                // Idle, or answering a request: either way the park deadline stays armed.
                // hyper polls the read side only when woken, and the last time it does so for
                // a request is usually while the request is still being answered (it reads,
                // then writes the response, then sleeps until the socket is readable). The
                // deadline's wake-up is what brings it back to find the session idle.
                ready!(this.poll_deadline(Deadline::Park, cx));
                if this.state.in_flight.load(Ordering::Relaxed) > 0 {
                    // Still answering when the deadline came: not idle; start over.
                    this.armed = None;
                    let _ = this.poll_deadline(Deadline::Park, cx);
                    return Poll::Pending;
                }
                // Idle long enough: end the session; the socket stays open (see poll_shutdown).
                this.state.parking.store(true, Ordering::Relaxed);
                Poll::Ready(Ok(()))
            }
        }
    }
}

impl Write for SessionIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write(self.io()?, cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        tokio::io::AsyncWrite::poll_write_vectored(self.io()?, cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io
            .as_ref()
            .is_some_and(tokio::io::AsyncWrite::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        tokio::io::AsyncWrite::poll_flush(self.io()?, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.state.parking.load(Ordering::Relaxed) {
            // The session ends, the connection does not.
            return Poll::Ready(Ok(()));
        }
        tokio::io::AsyncWrite::poll_shutdown(self.io()?, cx)
    }
}

impl Drop for SessionIo {
    fn drop(&mut self) {
        if !self.state.parking.load(Ordering::Relaxed) {
            return;
        }
        if let (Some(io), Ok(mut slot)) = (self.io.take(), self.state.returned.lock()) {
            *slot = Some(io);
        }
    }
}
