//! The upstream side: one worker's keep-alive connections to the instances, and sending a
//! request over one of them.
//!
//! Each worker thread keeps its own idle HTTP/1.1 connections per instance, so a request and
//! the connection serving it never leave the worker's thread and the pool needs no shared lock:
//! the mutex below is only ever taken by one thread, which makes it a few instructions.
//!
//! A pooled connection is a socket and its read buffer, owned by whoever is using it: no task
//! runs per connection. [`ConnectionPool::send`] writes the request and reads the response head in the
//! caller's task; the body is read by [`PooledBody::poll_frame`] in the task that polls it (the
//! client connection's), so a request and its response never cross tasks. A small response
//! usually arrives whole with its head, and then the connection is back in the pool before the
//! response even leaves `send`.
//!
//! A connection goes back to the pool when its response body has been read exactly to the end
//! (see [`PooledBody`]); one whose body was abandoned half-way, that the instance said it would
//! close, or that switched protocols, is closed instead, since the next request could not start
//! on it cleanly. The wire format itself (writing the request, parsing the head, chunked
//! bodies) is `h1.rs`.
//!
//! Given the gateway's credentials, connections are mutual TLS (`upstream_tls.rs`): the
//! handshake runs once when a connection opens, and a pooled connection carries its TLS session
//! with it ([`UpstreamStream`]). Without them, the stream is the TCP socket it always was.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Response};
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::forward::error::SendError;
use crate::forward::h1::{self, ChunkedDecoder, Decoded, Framing, Outgoing};
pub use crate::forward::upstream_io::UpstreamStream;
use crate::forward::upstream_tls::{is_tls_error, Alpn, UpstreamTls};
use crate::upstream::instances::Endpoint;

/// An idle connection unused for this long is checked with the kernel before reuse.
///
/// A close that reached the runtime is seen without asking ([`Conn::alive`]); what the peek adds
/// is a close that arrived since the runtime last looked at its sockets, which it does at least
/// every few dozen tasks. Instances close idle connections after seconds (2 s for gunicorn, 5 s
/// for Node.js, 30 s for hyper, 75 s for nginx), so a connection used within the last quarter of
/// a second is asked only of the runtime. Under load every pooled connection is reused within
/// milliseconds, and at 1 ms the peek had cost one system call in every proxied request.
const ASK_THE_KERNEL_AFTER: Duration = Duration::from_millis(250);
/// Idle connections kept per instance and worker; more are closed when they come back.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// An idle connection older than this is closed by the sweep (instances close theirs too).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection's read buffer to start with, and what a read that finds less room adds.
const READ_BUFFER: usize = 8 * 1024;
/// A read is given at least this much room.
const MIN_READ: usize = 1024;
/// A read over TLS is given at least this much room: a full record's plaintext.
const MIN_TLS_READ: usize = 16 * 1024;
/// The most a body read adds to the buffer at once (for a long Content-Length body).
const MAX_READ: usize = 64 * 1024;

/// A connection to an instance: the stream (TCP, or TLS over it), the bytes read from it and
/// not yet used, and a buffer requests are written from (both kept from one request to the
/// next).
struct Conn {
    stream: UpstreamStream,
    read: BytesMut,
    write: Vec<u8>,
}

impl Conn {
    fn new(stream: UpstreamStream) -> Self {
        Self {
            stream,
            read: BytesMut::with_capacity(READ_BUFFER),
            write: Vec::with_capacity(1024),
        }
    }

    /// Whether an idle connection is still good for a request: the instance has neither closed
    /// it nor sent anything unasked. A non-blocking read says which: "would block" is the
    /// only good answer. It costs no system call while the runtime knows the socket is not
    /// readable, but it knows only what its last turn saw.
    ///
    /// Under TLS the question goes to the TCP socket beneath: an idle instance sends nothing
    /// but its `close_notify` and FIN, and a byte read from under rustls here belongs to a
    /// connection that is dropped anyway.
    fn alive(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.stream.tcp().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// [`Conn::alive`], asking the kernel itself (a non-blocking peek, one system call): a
    /// close that arrived since the runtime's last turn is seen too.
    fn alive_now(&self) -> bool {
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        matches!(
            socket2::SockRef::from(self.stream.tcp()).peek(&mut probe),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        )
    }

    /// Reads what the socket has into the buffer, with room for at least `want` bytes (within
    /// [`MIN_READ`], or [`MIN_TLS_READ`] under TLS, ..[`MAX_READ`]). `Ok(0)`: the instance
    /// closed the connection.
    ///
    /// Through tokio's `AsyncRead`, not `try_read_buf`: a read that fills less than the room it
    /// was given has drained the socket (epoll is edge-triggered), and `AsyncRead` then marks it
    /// not readable. `try_read_buf` keeps it marked readable, so the next look at the
    /// connection ([`Conn::alive`] when it is reused) paid a system call to learn "would
    /// block": one `recvfrom` in every proxied request.
    fn poll_fill(&mut self, cx: &mut Context<'_>, want: u64) -> Poll<io::Result<usize>> {
        // Under TLS a read hands over a whole record's plaintext (up to 16 KiB) at once: room
        // for one keeps the rest of a record from waiting in a buffer of its own and being
        // copied twice.
        let floor = if self.stream.is_tls() {
            MIN_TLS_READ
        } else {
            MIN_READ
        };
        let room = (want as usize).clamp(floor, MAX_READ);
        if self.read.capacity() - self.read.len() < room {
            self.read.reserve(room.max(READ_BUFFER));
        }
        let spare = self.read.spare_capacity_mut();
        let mut buf = tokio::io::ReadBuf::uninit(spare);
        ready!(Pin::new(&mut self.stream).poll_read(cx, &mut buf))?;
        let read = buf.filled().len();
        // SAFETY: `poll_read` initialised the first `read` bytes of the spare capacity.
        unsafe { self.read.set_len(self.read.len() + read) };
        Poll::Ready(Ok(read))
    }

    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx, 0)).await
    }

    /// Writes the request; on failure, says whether any of it went out.
    async fn write_request(&mut self, request: &Outgoing<'_>) -> Result<(), (io::Error, bool)> {
        self.write.clear();
        let separate = h1::encode_request(&mut self.write, request);
        let mut written = 0;
        while written < self.write.len() {
            match self.stream.write(&self.write[written..]).await {
                Ok(0) => return Err((io::ErrorKind::WriteZero.into(), written > 0)),
                Ok(n) => written += n,
                Err(error) => return Err((error, written > 0)),
            }
        }
        if let Some(body) = separate {
            self.stream.write_all(&body).await.map_err(|e| (e, true))?;
        }
        // What rustls could not hand to a full socket is still in its buffer. (TCP writes
        // straight to the socket: nothing to flush.)
        if self.stream.is_tls() {
            self.stream.flush().await.map_err(|e| (e, true))?;
        }
        Ok(())
    }
}

/// How one exchange on a connection failed.
struct Failed {
    error: h1::Error,
    /// Some of the request went out.
    written: bool,
    /// Some of an answer came back.
    answered: bool,
}

/// Writes `request` on `conn` and reads the response head, passing over informational (1xx)
/// responses other than 101.
async fn exchange(conn: &mut Conn, request: &Outgoing<'_>) -> Result<h1::Head, Failed> {
    if let Err((error, written)) = conn.write_request(request).await {
        return Err(Failed {
            error: error.into(),
            written,
            answered: false,
        });
    }
    let mut answered = false;
    let mut informational = 0;
    loop {
        let failed = move |error| Failed {
            error,
            written: true,
            answered,
        };
        // (Nothing to parse before the first read: the buffer starts empty.)
        if !conn.read.is_empty() {
            match h1::parse_head(&mut conn.read).map_err(failed)? {
                Some(head) if head.status.is_informational() && head.status != 101 => {
                    informational += 1;
                    if informational > h1::MAX_INFORMATIONAL {
                        return Err(failed(h1::Error::TooManyInformational));
                    }
                    continue;
                }
                Some(head) => return Ok(head),
                None => {}
            }
        }
        match conn.fill().await {
            Ok(0) => return Err(failed(h1::Error::Closed)),
            Ok(_) => answered = true,
            Err(error) => return Err(failed(error.into())),
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// Endpoint numbers are already unique and well spread: hashing them again would be waste.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8) | u64::from(byte);
        }
    }
    fn write_u64(&mut self, value: u64) {
        self.0 = value.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

type IdleMap = HashMap<u64, Vec<Idle>, BuildHasherDefault<KeyHasher>>;

/// One worker's upstream connections.
pub struct ConnectionPool {
    idle: Mutex<IdleMap>,
    connect_timeout: Duration,
    /// How long an instance may send nothing in the middle of a response body.
    body_idle_timeout: Duration,
    /// Mutual TLS to the instances (None: plaintext).
    tls: Option<Arc<UpstreamTls>>,
}

/// Whether sending `request` a second time is harmless: an idempotent method (RFC 9110 9.2.2),
/// or a request carrying an `Idempotency-Key`, which tells the instance to answer a repeat
/// with the first outcome.
pub fn replayable(request: &Outgoing<'_>) -> bool {
    idempotent(request.method) || request.headers.contains_key(&IDEMPOTENCY_KEY)
}

/// RFC 9110 9.2.2: methods whose effect is the same however many times they are sent.
pub fn idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

impl ConnectionPool {
    /// `body_idle_timeout`: an instance that sends nothing for this long while a response body
    /// streams (after its head) is cut off; the body ends in an error, the connection closes.
    pub fn new(connect_timeout: Duration, body_idle_timeout: Duration) -> Arc<Self> {
        Self::with_tls(connect_timeout, body_idle_timeout, None)
    }

    /// [`ConnectionPool::new`], connecting over mutual TLS when `tls` is given.
    pub fn with_tls(
        connect_timeout: Duration,
        body_idle_timeout: Duration,
        tls: Option<Arc<UpstreamTls>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::default()),
            connect_timeout,
            body_idle_timeout,
            tls,
        })
    }

    /// Sends `request` to `endpoint` over an idle connection, or a new one, and returns at the
    /// response's head.
    ///
    /// A pooled connection can turn out to be closed by the instance while it sat idle. Most
    /// are noticed before use ([`Conn::alive`]); one that fails before a byte of the request
    /// left is let go and the request goes out on the next connection, so an instance's idle
    /// timeout never costs a client an error. One that took the request and then ended before
    /// a single byte of answer is ambiguous: the instance closed it idle just as the request
    /// arrived, or it took the request and crashed. The request goes out again only if doing
    /// it twice is harmless ([`replayable`]), the rule Go's HTTP client follows; otherwise
    /// the client hears of the failure rather than risk a second order. A new connection that
    /// fails is a real failure: a connection error if nothing was written, else a failed
    /// request.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        request: Outgoing<'_>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut conn, fresh) = match self.checkout(endpoint.key) {
                Some(conn) => (conn, false),
                None => (self.connect(endpoint).await?, true),
            };
            match exchange(&mut conn, &request).await {
                Ok(head) => return Ok(self.respond(conn, endpoint.key, request.method, head)),
                Err(failed)
                    if !fresh && !failed.answered && (!failed.written || replayable(&request)) =>
                {
                    continue
                }
                // An instance refusing the gateway's certificate says so at the first read
                // (TLS 1.3), before it looks at the request: a connection that failed.
                Err(Failed {
                    error: h1::Error::Io(source),
                    answered: false,
                    ..
                }) if fresh && is_tls_error(&source) => {
                    if let Some(tls) = &self.tls {
                        return Err(tls.failed(endpoint, source));
                    }
                    return Err(SendError::Tls {
                        authority: endpoint.authority.to_string(),
                        source,
                    });
                }
                Err(failed) if !failed.written => {
                    let source = match failed.error {
                        h1::Error::Io(error) => error,
                        other => io::Error::other(other),
                    };
                    return Err(SendError::Connect {
                        authority: endpoint.authority.to_string(),
                        source,
                    });
                }
                Err(failed) => {
                    return Err(SendError::Exchange {
                        authority: endpoint.authority.to_string(),
                        source: failed.error,
                    })
                }
            }
        }
    }

    /// The response for `head`, its body framed as the head says. A body already whole in the
    /// buffer is taken at once and the connection goes straight back to the pool.
    fn respond(
        self: &Arc<Self>,
        mut conn: Conn,
        key: u64,
        method: &Method,
        head: h1::Head,
    ) -> Response<PooledBody> {
        let reusable = head.persistent() && !matches!(head.status.as_u16(), 408 | 413);
        let framing = head.framing(method);
        let mut response = Response::new(PooledBody::whole(None));
        *response.status_mut() = head.status;
        *response.version_mut() = head.version;
        *response.headers_mut() = head.headers;

        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            let leftover = conn.read.split().freeze();
            response
                .extensions_mut()
                .insert(UpstreamUpgrade::new(conn.stream, leftover));
            return response;
        }
        let home = reusable.then(|| Home {
            pool: Arc::downgrade(self),
            key,
        });
        let reading = match framing {
            Framing::Empty => {
                if let Some(home) = home {
                    home.put_back(conn);
                }
                return response;
            }
            Framing::Length(length) if conn.read.len() as u64 >= length => {
                let data = conn.read.split_to(length as usize).freeze();
                if let Some(home) = home {
                    home.put_back(conn);
                }
                *response.body_mut() = PooledBody::whole(Some(data));
                return response;
            }
            Framing::Length(length) => Reading::Length(length),
            Framing::Chunked => Reading::Chunked(ChunkedDecoder::default()),
            Framing::Close => Reading::Close,
        };
        *response.body_mut() = PooledBody(Source::Streaming(Box::new(Streaming {
            conn: Some(conn),
            reading,
            idle_timeout: self.body_idle_timeout,
            stall: None,
            progressed: false,
            home: if framing == Framing::Close {
                None
            } else {
                home
            },
        })));
        response
    }

    /// The most recently used idle connection that is still good.
    ///
    /// A connection taken up again at once (under load, within microseconds) cannot have been
    /// closed by an instance's idle timeout, and the runtime's view is enough. One that sat
    /// idle longer may have been closed just now, before the runtime turned: the kernel is
    /// asked. Catching that close here matters, because afterwards a request that was written
    /// and got no answer can be sent again only if it is [`replayable`].
    fn checkout(&self, key: u64) -> Option<Conn> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&key)?;
        while let Some(entry) = list.pop() {
            let alive = if entry.since.elapsed() < ASK_THE_KERNEL_AFTER {
                entry.conn.alive()
            } else {
                entry.conn.alive_now()
            };
            if alive {
                return Some(entry.conn);
            }
        }
        None
    }

    fn checkin(&self, key: u64, conn: Conn) {
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(key).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(Idle {
                    conn,
                    since: Instant::now(),
                });
            }
        }
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<Conn, SendError> {
        let stream = connect_tcp(endpoint.authority.as_str(), self.connect_timeout).await?;
        let stream = match &self.tls {
            None => UpstreamStream::Plain(stream),
            Some(tls) => {
                tls.connect(stream, endpoint, Alpn::Http1, self.connect_timeout)
                    .await?
            }
        };
        Ok(Conn::new(stream))
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] or closed by their instance,
    /// and forgets instances with none.
    pub fn sweep(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|_, list| {
                list.retain(|entry| entry.since.elapsed() < IDLE_TIMEOUT && entry.conn.alive());
                !list.is_empty()
            });
        }
    }

    /// Idle connections held now (all instances).
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .map(|idle| idle.values().map(Vec::len).sum())
            .unwrap_or(0)
    }

    /// Sweeps every few seconds for as long as the pool is alive.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        sweep_every(self, IDLE_TIMEOUT / 6, Self::sweep);
    }
}

/// Where a connection goes back when its response is done.
struct Home {
    pool: Weak<ConnectionPool>,
    key: u64,
}

impl Home {
    /// Pools `conn`, unless the instance sent more than the response (nothing may come before
    /// the next request).
    fn put_back(self, mut conn: Conn) {
        if !conn.read.is_empty() || conn.stream.holds_unread() {
            return;
        }
        conn.stream.relax();
        if let Some(pool) = self.pool.upgrade() {
            pool.checkin(self.key, conn);
        }
    }
}

/// The instance's side of a connection that switched protocols (101, e.g. WebSocket), in the
/// response's extensions: the stream (the TLS session with it, under mutual TLS), and whatever
/// the instance sent after the head. (Extensions must be `Clone`, hence the shared slot; it is
/// taken once.)
#[derive(Clone)]
pub struct UpstreamUpgrade(Arc<Mutex<Option<(UpstreamStream, Bytes)>>>);

impl UpstreamUpgrade {
    fn new(stream: UpstreamStream, leftover: Bytes) -> Self {
        Self(Arc::new(Mutex::new(Some((stream, leftover)))))
    }

    /// The stream and the bytes already read from it, the first time.
    pub fn take(&self) -> Option<(UpstreamStream, Bytes)> {
        self.0.lock().ok()?.take()
    }
}

/// Why a response body could not be read to its end.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("reading the response body: {0}")]
    Http1(#[from] h1::Error),
    #[error("reading the response body: {0}")]
    Http2(#[from] hyper::Error),
}

/// A response body from an instance. Over HTTP/1.1 its connection goes back to the pool once
/// the body is read to the end, and is closed if the body is dropped before that.
pub struct PooledBody(Source);

enum Source {
    /// Read already (or none): the connection is back in the pool.
    Whole(Option<Bytes>),
    /// Read from the connection as it is polled (boxed: most responses are whole).
    Streaming(Box<Streaming>),
    /// An HTTP/2 stream's, whose connection is not this pool's to keep (`client_h2.rs`).
    Http2(Incoming),
}

struct Streaming {
    /// `None` once the body has ended or failed.
    conn: Option<Conn>,
    reading: Reading,
    /// How long the instance may send nothing; `stall` is the deadline, armed the first time
    /// a read has to wait and pushed back when one waits again after progress.
    idle_timeout: Duration,
    stall: Option<Pin<Box<tokio::time::Sleep>>>,
    progressed: bool,
    /// Where the connection goes at the body's end; `None` if it is not to be reused.
    home: Option<Home>,
}

enum Reading {
    /// This many bytes left.
    Length(u64),
    Chunked(ChunkedDecoder),
    /// Until the instance closes.
    Close,
}

impl PooledBody {
    /// A body whose connection is not this pool's to keep: an HTTP/2 stream's (`client_h2.rs`).
    pub fn unpooled(inner: Incoming) -> Self {
        Self(Source::Http2(inner))
    }

    fn whole(data: Option<Bytes>) -> Self {
        Self(Source::Whole(data.filter(|d| !d.is_empty())))
    }
}

impl std::fmt::Debug for PooledBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let source = match &self.0 {
            Source::Whole(_) => "whole",
            Source::Streaming(_) => "streaming",
            Source::Http2(_) => "http2",
        };
        f.debug_tuple("PooledBody").field(&source).finish()
    }
}

impl Streaming {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, h1::Error>>> {
        loop {
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let want = match &mut self.reading {
                Reading::Length(left) => {
                    if !conn.read.is_empty() {
                        let take = (*left).min(conn.read.len() as u64);
                        let data = conn.read.split_to(take as usize).freeze();
                        *left -= take;
                        if *left == 0 {
                            self.finish();
                        }
                        return Poll::Ready(Some(Ok(data)));
                    }
                    *left
                }
                Reading::Chunked(decoder) => match decoder.decode(&mut conn.read) {
                    Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                    Ok(Decoded::End) => {
                        self.finish();
                        return Poll::Ready(None);
                    }
                    Ok(Decoded::NeedMore) => 0,
                    Err(error) => return Poll::Ready(Some(Err(self.fail(error)))),
                },
                Reading::Close => {
                    if !conn.read.is_empty() {
                        return Poll::Ready(Some(Ok(conn.read.split().freeze())));
                    }
                    0
                }
            };
            let filled = match conn.poll_fill(cx, want) {
                Poll::Ready(filled) => {
                    self.progressed = true;
                    filled
                }
                Poll::Pending => return self.wait(cx),
            };
            match filled {
                Ok(0) if matches!(self.reading, Reading::Close) => {
                    self.conn = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return Poll::Ready(Some(Err(self.fail(h1::Error::Closed)))),
                Ok(_) => {}
                Err(error) => return Poll::Ready(Some(Err(self.fail(error.into())))),
            }
        }
    }

    /// The socket has nothing to read: pending, unless the instance has been silent for the
    /// idle timeout (a stalled instance must not hold the client's response open for ever).
    /// An idle timeout of zero means none.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, h1::Error>>> {
        let idle = self.idle_timeout;
        if idle.is_zero() {
            return Poll::Pending;
        }
        let stall = match &mut self.stall {
            Some(stall) => {
                if std::mem::take(&mut self.progressed) {
                    // (A deadline past what the clock can hold is no deadline: keep the old.)
                    if let Some(deadline) = tokio::time::Instant::now().checked_add(idle) {
                        stall.as_mut().reset(deadline);
                    }
                }
                stall
            }
            None => {
                self.progressed = false;
                self.stall.insert(Box::pin(tokio::time::sleep(idle)))
            }
        };
        ready!(std::future::Future::poll(stall.as_mut(), cx));
        Poll::Ready(Some(Err(self.fail(h1::Error::Stalled(idle)))))
    }

    /// The body is read to its end: the connection goes home, if it has one.
    fn finish(&mut self) {
        if let (Some(conn), Some(home)) = (self.conn.take(), self.home.take()) {
            home.put_back(conn);
        }
    }

    fn fail(&mut self, error: h1::Error) -> h1::Error {
        self.conn = None;
        error
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.conn, &self.reading) {
            (None, _) => SizeHint::with_exact(0),
            (Some(_), Reading::Length(left)) => SizeHint::with_exact(*left),
            (Some(_), _) => SizeHint::default(),
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match &mut self.0 {
            Source::Whole(data) => Poll::Ready(data.take().map(|data| Ok(Frame::data(data)))),
            Source::Streaming(streaming) => streaming
                .poll_frame(cx)
                .map(|polled| polled.map(|read| read.map(Frame::data).map_err(Into::into))),
            Source::Http2(inner) => Pin::new(inner)
                .poll_frame(cx)
                .map(|polled| polled.map(|frame| frame.map_err(Into::into))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Source::Whole(data) => data.is_none(),
            Source::Streaming(streaming) => streaming.conn.is_none(),
            Source::Http2(inner) => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Source::Whole(data) => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Source::Streaming(streaming) => streaming.size_hint(),
            Source::Http2(inner) => inner.size_hint(),
        }
    }
}

/// Opens a TCP connection to an instance within `timeout`, with Nagle off (requests and
/// answers are written whole). Shared by the HTTP/1.1 pool and the HTTP/2 one.
pub(crate) async fn connect_tcp(
    authority: &str,
    timeout: Duration,
) -> Result<TcpStream, SendError> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(authority)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(SendError::Connect {
                authority: authority.to_string(),
                source,
            })
        }
        Err(_) => {
            return Err(SendError::ConnectTimeout {
                authority: authority.to_string(),
                after: timeout,
            })
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// Runs `sweep` on `pool` every `every` for as long as the pool is alive (both upstream pools
/// close their idle connections this way).
pub(crate) fn sweep_every<T: Send + Sync + 'static>(pool: &Arc<T>, every: Duration, sweep: fn(&T)) {
    let pool = Arc::downgrade(pool);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            match pool.upgrade() {
                Some(pool) => sweep(&pool),
                None => return,
            }
        }
    });
}

#[cfg(test)]
mod tests {
    //! Against a raw TCP "instance" that answers each request with hand-written bytes.

    use std::collections::VecDeque;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http::Request;
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;
    use crate::upstream::instances::tests::endpoint;

    /// One scripted answer.
    struct Answer {
        bytes: Vec<u8>,
        /// Written a byte at a time, so the client sees it across many reads.
        bytewise: bool,
        /// The instance closes the connection after writing it.
        close: bool,
    }

    fn answer(bytes: &[u8]) -> Answer {
        Answer {
            bytes: bytes.to_vec(),
            bytewise: false,
            close: false,
        }
    }

    /// A fake instance: counts accepted connections, records requests (head and body), and
    /// answers them in order from the script.
    struct Instance {
        endpoint: Endpoint,
        accepts: Arc<AtomicUsize>,
        closed: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
    }

    async fn instance(script: Vec<Answer>) -> Instance {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepts = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let (a, c, r) = (accepts.clone(), closed.clone(), requests.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let (script, closed, requests) = (script.clone(), c.clone(), r.clone());
                tokio::spawn(async move {
                    serve(stream, script, requests).await;
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Instance {
            endpoint: endpoint(port),
            accepts,
            closed,
            requests,
        }
    }

    async fn serve(
        mut stream: TcpStream,
        script: Arc<Mutex<VecDeque<Answer>>>,
        requests: Arc<Mutex<Vec<Vec<u8>>>>,
    ) {
        stream.set_nodelay(true).unwrap();
        let mut buf = Vec::new();
        loop {
            // A request: its head, then as many bytes as its content-length says.
            let head_end = loop {
                if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break at + 4;
                }
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |n| n.trim().parse::<usize>().unwrap());
            while buf.len() < head_end + length {
                let mut chunk = [0u8; 4096];
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            requests
                .lock()
                .unwrap()
                .push(buf.drain(..head_end + length).collect());
            let Some(answer) = script.lock().unwrap().pop_front() else {
                return;
            };
            if answer.bytewise {
                for byte in &answer.bytes {
                    stream.write_all(&[*byte]).await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            } else {
                stream.write_all(&answer.bytes).await.unwrap();
            }
            if answer.close {
                return;
            }
        }
    }

    fn get(path: &str) -> Request<Bytes> {
        let mut request = Request::new(Bytes::new());
        *request.uri_mut() = path.parse().unwrap();
        request
    }

    fn with_method(method: Method, path: &str) -> Request<Bytes> {
        let mut request = get(path);
        *request.method_mut() = method;
        request
    }

    async fn body(response: Response<PooledBody>) -> Result<Bytes, BodyError> {
        Ok(response.into_body().collect().await?.to_bytes())
    }

    /// A pooled connection that takes the second request and closes without a byte of answer
    /// (the instance crashed on it, or closed it idle just as it arrived): what `send` does
    /// with `second`, and how many connections the instance saw.
    async fn taken_then_closed(second: Request<Bytes>) -> (Result<Bytes, String>, usize) {
        let silent = Answer {
            bytes: Vec::new(),
            bytewise: false,
            close: true,
        };
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        let instance = instance(vec![answer(ok), silent, answer(ok)]).await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let first = pool
            .send(&instance.endpoint, (&get("/first")).into())
            .await
            .unwrap();
        assert_eq!(body(first).await.unwrap(), "ok");
        assert_eq!(pool.idle_count(), 1);
        let outcome = match pool.send(&instance.endpoint, (&second).into()).await {
            Ok(response) => body(response).await.map_err(|e| e.to_string()),
            Err(error) => Err(error.to_string()),
        };
        (outcome, instance.accepts.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_request_taken_and_unanswered_is_sent_again_only_if_that_is_harmless() {
        // GET: idempotent, so it goes out again on a fresh connection.
        let (outcome, accepts) = taken_then_closed(get("/again")).await;
        assert_eq!((outcome.as_deref().ok(), accepts), (Some(&b"ok"[..]), 2));
        // POST: the instance may have acted on it; the failure is the client's to hear.
        let mut post = with_method(Method::POST, "/orders");
        *post.body_mut() = Bytes::from_static(b"{}");
        let (outcome, accepts) = taken_then_closed(post.clone()).await;
        assert!(outcome.is_err(), "{outcome:?}");
        assert_eq!(accepts, 1, "no second connection for a POST");
        // POST with an Idempotency-Key: the instance answers a repeat with the first outcome.
        post.headers_mut()
            .insert("idempotency-key", http::HeaderValue::from_static("k-1"));
        let (outcome, accepts) = taken_then_closed(post).await;
        assert_eq!((outcome.as_deref().ok(), accepts), (Some(&b"ok"[..]), 2));
    }

    /// Polls `what` until true, for up to 5 s.
    async fn eventually(what: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !what() {
            assert!(Instant::now() < deadline, "condition never became true");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    const OK_HELLO: &[u8] =
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nX-Served: yes\r\n\r\nhello";

    #[tokio::test]
    async fn content_length_bodies_and_keep_alive_reuse() {
        let fake = instance(vec![answer(OK_HELLO), answer(OK_HELLO)]).await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        for _ in 0..2 {
            let response = pool
                .send(&fake.endpoint, (&get("/a?b=c")).into())
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            assert_eq!(response.headers()["x-served"], "yes");
            assert!(response.headers().get("connection").is_none(), "hop-by-hop");
            assert_eq!(response.body().size_hint().exact(), Some(5));
            assert_eq!(body(response).await.unwrap(), "hello");
            assert_eq!(pool.idle_count(), 1);
        }
        assert_eq!(
            fake.accepts.load(Ordering::SeqCst),
            1,
            "one connection for both"
        );
        let requests = fake.requests.lock().unwrap();
        let first = String::from_utf8_lossy(&requests[0]);
        assert!(first.starts_with("GET /a?b=c HTTP/1.1\r\n"), "{first}");
    }

    #[tokio::test]
    async fn request_bodies_go_out_with_their_length() {
        let fake = instance(vec![answer(OK_HELLO), answer(OK_HELLO)]).await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut request = with_method(Method::POST, "/items");
        *request.body_mut() = Bytes::from_static(b"{\"a\":1}");
        body(pool.send(&fake.endpoint, (&request).into()).await.unwrap())
            .await
            .unwrap();
        let mut large = with_method(Method::PUT, "/big");
        *large.body_mut() = Bytes::from(vec![b'z'; h1::INLINE_BODY * 3]);
        body(pool.send(&fake.endpoint, (&large).into()).await.unwrap())
            .await
            .unwrap();
        let requests = fake.requests.lock().unwrap();
        assert!(requests[0].ends_with(b"content-length: 7\r\n\r\n{\"a\":1}"));
        assert!(requests[1].starts_with(b"PUT /big HTTP/1.1\r\n"));
        assert_eq!(
            requests[1].iter().filter(|b| **b == b'z').count(),
            h1::INLINE_BODY * 3
        );
    }

    #[tokio::test]
    async fn chunked_bodies_with_extensions_and_trailers_across_reads() {
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
                        5;name=value\r\nhello\r\n7\r\n, world\r\n0\r\nX-Checksum: 1\r\n\r\n";
        let fake = instance(vec![
            Answer {
                bytewise: true,
                ..answer(chunked)
            },
            answer(OK_HELLO),
        ])
        .await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(response.body().size_hint().exact(), None);
        assert_eq!(body(response).await.unwrap(), "hello, world");
        assert_eq!(pool.idle_count(), 1, "read to its end: reused");
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "hello");
        assert_eq!(fake.accepts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_response_split_byte_by_byte() {
        let long = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 3000\r\n\r\n{}",
            "y".repeat(3000)
        );
        let fake = instance(vec![Answer {
            bytewise: true,
            ..answer(long.as_bytes())
        }])
        .await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(response.body().size_hint().upper(), Some(3000));
        assert_eq!(body(response).await.unwrap(), "y".repeat(3000));
        assert_eq!(pool.idle_count(), 1);
    }

    #[tokio::test]
    async fn head_204_and_304_have_no_body() {
        let fake = instance(vec![
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"),
            answer(b"HTTP/1.1 204 No Content\r\n\r\n"),
            answer(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"),
            answer(OK_HELLO),
        ])
        .await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let head = pool
            .send(&fake.endpoint, (&with_method(Method::HEAD, "/")).into())
            .await
            .unwrap();
        assert_eq!(head.headers()["content-length"], "5");
        assert!(head.body().is_end_stream());
        assert_eq!(body(head).await.unwrap(), "");
        for status in [204, 304] {
            let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
            assert_eq!(response.status(), status);
            assert_eq!(body(response).await.unwrap(), "");
        }
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "hello");
        assert_eq!(
            fake.accepts.load(Ordering::SeqCst),
            1,
            "all on one connection"
        );
    }

    #[tokio::test]
    async fn a_close_delimited_body_is_read_to_the_end_and_not_reused() {
        let fake = instance(vec![
            Answer {
                close: true,
                ..answer(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
            },
            answer(OK_HELLO),
        ])
        .await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "until the end");
        assert_eq!(pool.idle_count(), 0);
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "hello");
        assert_eq!(fake.accepts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_close_is_not_reused() {
        let fake = instance(vec![
            answer(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"),
            answer(OK_HELLO),
        ])
        .await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "ok");
        assert_eq!(pool.idle_count(), 0);
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "hello");
        assert_eq!(fake.accepts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn continue_before_the_answer_is_passed_over() {
        let fake = instance(vec![answer(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        )])
        .await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let response = pool
            .send(&fake.endpoint, (&with_method(Method::POST, "/")).into())
            .await
            .unwrap();
        assert_eq!(response.status(), 201);
        assert!(response.headers().get("link").is_none());
        assert_eq!(body(response).await.unwrap(), "ok");
    }

    /// A response the proxy cannot use is a failed request (502), never a connection error,
    /// and its connection is not kept.
    async fn fails(bytes: &[u8]) -> SendError {
        let fake = instance(vec![answer(bytes)]).await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let error = pool
            .send(&fake.endpoint, (&get("/")).into())
            .await
            .unwrap_err();
        assert!(!error.is_connect(), "{error}");
        assert!(error.to_string().contains(fake.endpoint.authority.as_str()));
        assert_eq!(pool.idle_count(), 0);
        error
    }

    #[tokio::test]
    async fn an_endless_run_of_informational_responses_is_an_error() {
        let mut wire = b"HTTP/1.1 100 Continue\r\n\r\n".repeat(h1::MAX_INFORMATIONAL);
        let fine = [
            wire.as_slice(),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ]
        .concat();
        let fake = instance(vec![answer(&fine)]).await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "ok");
        wire.extend_from_slice(b"HTTP/1.1 102 Processing\r\n\r\n");
        let error = fails(&wire).await;
        assert!(matches!(
            error,
            SendError::Exchange {
                source: h1::Error::TooManyInformational,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn malformed_over_long_and_conflicting_heads_are_errors() {
        let error = fails(b"HTTP/1.1 OK 200\r\n\r\n").await;
        assert!(matches!(
            error,
            SendError::Exchange {
                source: h1::Error::Malformed(_),
                ..
            }
        ));
        let mut long = b"HTTP/1.1 200 OK\r\n".to_vec();
        while long.len() <= h1::MAX_HEAD {
            long.extend_from_slice(format!("x-filler: {}\r\n", "f".repeat(4000)).as_bytes());
        }
        long.extend_from_slice(b"\r\n");
        let error = fails(&long).await;
        assert!(matches!(
            error,
            SendError::Exchange {
                source: h1::Error::HeadTooLarge,
                ..
            }
        ));
        let error =
            fails(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab").await;
        assert!(matches!(
            error,
            SendError::Exchange {
                source: h1::Error::BadContentLength,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn an_instance_closing_mid_body_is_an_error_and_not_reused() {
        let fake = instance(vec![Answer {
            close: true,
            ..answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly part")
        }])
        .await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        let error = body(response).await.unwrap_err();
        assert!(
            matches!(error, BodyError::Http1(h1::Error::Closed)),
            "{error}"
        );
        assert_eq!(pool.idle_count(), 0);
    }

    #[tokio::test]
    async fn an_instance_silent_mid_body_is_cut_off_after_the_idle_timeout() {
        // 300 bytes trickle in a byte a millisecond or slower, longer in all than the timeout
        // (each arrival pushes the deadline back), then the instance goes quiet with the body
        // unfinished.
        let wire = [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"[..],
            &[b'x'; 300],
        ]
        .concat();
        let fake = instance(vec![Answer {
            bytewise: true,
            ..answer(&wire)
        }])
        .await;
        let idle = Duration::from_millis(150);
        let pool = ConnectionPool::new(Duration::from_secs(1), idle);
        let started = Instant::now();
        let mut response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        let mut received = 0;
        let error = loop {
            let frame = tokio::time::timeout(Duration::from_secs(5), response.body_mut().frame())
                .await
                .expect("the stalled body was never cut off");
            match frame {
                Some(Ok(frame)) => received += frame.into_data().unwrap().len(),
                Some(Err(error)) => break error,
                None => panic!("the body ended"),
            }
        };
        assert!(
            started.elapsed() > idle * 2,
            "the trickle outlasted the timeout"
        );
        assert_eq!(received, 300, "cut off while bytes were still coming");
        assert!(
            matches!(error, BodyError::Http1(h1::Error::Stalled(after)) if after == idle),
            "{error}"
        );
        assert_eq!(pool.idle_count(), 0);
        eventually(|| fake.closed.load(Ordering::SeqCst) == 1).await;
    }

    #[tokio::test]
    async fn a_body_dropped_half_read_closes_its_connection() {
        let fake = instance(vec![answer(
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npart",
        )])
        .await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        let frame = response.body_mut().frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "part");
        drop(response);
        assert_eq!(pool.idle_count(), 0);
        eventually(|| fake.closed.load(Ordering::SeqCst) == 1).await;
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_costs_no_error() {
        let fake = instance(vec![
            Answer {
                close: true,
                ..answer(OK_HELLO)
            },
            answer(OK_HELLO),
        ])
        .await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "hello");
        assert_eq!(pool.idle_count(), 1, "nothing said it would close");
        eventually(|| fake.closed.load(Ordering::SeqCst) == 1).await;
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "hello");
        assert_eq!(fake.accepts.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_stale_connection_found_only_by_the_write_is_replaced() {
        let fake = instance(vec![answer(OK_HELLO), answer(OK_HELLO)]).await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "hello");
        // Replace the pooled connection with one whose far end has just gone, with no turn of
        // the runtime since: the probe cannot know yet, so the exchange finds out.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        drop(listener.accept().await.unwrap());
        drop(listener);
        {
            let mut idle = pool.idle.lock().unwrap();
            let list = idle.get_mut(&fake.endpoint.key).unwrap();
            list[0].conn = Conn::new(UpstreamStream::Plain(stream));
        }
        // A GET: had the instance taken it before closing, a second one would do no harm.
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "hello");
    }

    #[tokio::test]
    async fn a_connection_closed_while_idle_is_found_before_a_post_is_written() {
        let fake = instance(vec![answer(OK_HELLO), answer(OK_HELLO)]).await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let response = pool.send(&fake.endpoint, (&get("/")).into()).await.unwrap();
        assert_eq!(body(response).await.unwrap(), "hello");
        // As above, a pooled connection closed by its far end with no turn of the runtime
        // since, but idle for a while: the kernel is asked before the POST goes out on it.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        drop(listener.accept().await.unwrap());
        drop(listener);
        std::thread::sleep(ASK_THE_KERNEL_AFTER * 2);
        {
            let mut idle = pool.idle.lock().unwrap();
            let list = idle.get_mut(&fake.endpoint.key).unwrap();
            list[0].conn = Conn::new(UpstreamStream::Plain(stream));
        }
        let response = pool
            .send(&fake.endpoint, (&with_method(Method::POST, "/")).into())
            .await
            .unwrap();
        assert_eq!(body(response).await.unwrap(), "hello");
        assert_eq!(
            fake.requests.lock().unwrap().len(),
            2,
            "one POST, sent once"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let error = pool
            .send(&endpoint(port), (&get("/")).into())
            .await
            .unwrap_err();
        assert!(error.is_connect(), "{error}");
    }

    #[tokio::test]
    async fn switching_protocols_hands_over_the_socket_and_early_bytes() {
        let fake = instance(vec![answer(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x02hi",
        )])
        .await;
        let pool = ConnectionPool::new(Duration::from_secs(1), Duration::from_secs(30));
        let mut response = pool
            .send(&fake.endpoint, (&get("/ws")).into())
            .await
            .unwrap();
        assert_eq!(response.status(), 101);
        let upgrade = response
            .extensions_mut()
            .remove::<UpstreamUpgrade>()
            .unwrap();
        let (_stream, leftover) = upgrade.take().unwrap();
        assert!(upgrade.take().is_none(), "taken once");
        // The early bytes may come with the head or just after it.
        assert!(b"\x81\x02hi".starts_with(&leftover));
        assert_eq!(pool.idle_count(), 0);
    }
}
