//! The upstream side: one worker's keep-alive connections to the instances, and sending a
//! request over one of them.
//!
//! Each worker thread keeps its own idle HTTP/1.1 connections per instance, so a request and
//! the connection serving it never leave the worker's thread and the pool needs no shared lock:
//! the mutex below is only ever taken by one thread, which makes it a few instructions.
//!
//! A connection goes back to the pool when its response body has been read to the end (see
//! [`PooledBody`]); one whose body was abandoned half-way, or that switched protocols, is closed
//! instead, since the next request could not start on it cleanly. hyper-util's general-purpose
//! client does the same job with a shared, hashed pool and a task per response to notice when
//! the connection is free again; this one is keyed by the endpoint's number and needs neither.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::upstream::Endpoint;

/// Idle connections kept per instance and worker; more are closed when they come back.
const MAX_IDLE_PER_ENDPOINT: usize = 256;
/// An idle connection older than this is closed by the sweep (instances close theirs too).
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

type Sender = SendRequest<Full<Bytes>>;

/// Why a request got no response. The difference matters for retries: a request that was never
/// sent may go to another instance whatever its method.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        source: std::io::Error,
    },
    #[error("connecting to {authority}: timed out after {after:?}")]
    ConnectTimeout { authority: String, after: Duration },
    #[error("HTTP handshake with {authority}: {source}")]
    Handshake {
        authority: String,
        source: hyper::Error,
    },
    #[error("the request to {authority} failed: {source}")]
    Request {
        authority: String,
        source: hyper::Error,
    },
}

impl SendError {
    /// The instance never saw the request.
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            SendError::Connect { .. } | SendError::ConnectTimeout { .. }
        )
    }
}

struct Idle {
    sender: Sender,
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
pub struct Pool {
    idle: Mutex<IdleMap>,
    connect_timeout: Duration,
}

impl Pool {
    pub fn new(connect_timeout: Duration) -> Arc<Self> {
        Arc::new(Self {
            idle: Mutex::new(HashMap::default()),
            connect_timeout,
        })
    }

    /// Sends `request` to `endpoint` over an idle connection, or a new one.
    ///
    /// A pooled connection can turn out to be closed by the instance while it sat idle; hyper
    /// then hands the request back unsent and it goes out on the next connection, so an
    /// instance's idle timeout never costs a client an error.
    pub async fn send(
        self: &Arc<Self>,
        endpoint: &Endpoint,
        mut request: Request<Full<Bytes>>,
    ) -> Result<Response<PooledBody>, SendError> {
        loop {
            let (mut sender, fresh) = match self.checkout(endpoint.key) {
                Some(sender) => (sender, false),
                None => (self.connect(endpoint).await?, true),
            };
            if sender.ready().await.is_err() {
                if fresh {
                    return Err(SendError::Connect {
                        authority: endpoint.authority.to_string(),
                        source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
                    });
                }
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => {
                    let upgrading = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                    let slot = (!upgrading && reusable(&response)).then(|| Slot {
                        pool: Arc::downgrade(self),
                        key: endpoint.key,
                        sender,
                    });
                    return Ok(response.map(|body| PooledBody::new(body, slot)));
                }
                Err(mut failed) => match failed.take_message() {
                    // Never written: the pooled connection had closed. Try the next one.
                    Some(unsent) if !fresh => request = unsent,
                    _ => {
                        return Err(SendError::Request {
                            authority: endpoint.authority.to_string(),
                            source: failed.into_error(),
                        })
                    }
                },
            }
        }
    }

    fn checkout(&self, key: u64) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        let list = idle.get_mut(&key)?;
        while let Some(entry) = list.pop() {
            if !entry.sender.is_closed() {
                return Some(entry.sender);
            }
        }
        None
    }

    fn checkin(&self, key: u64, sender: Sender) {
        if sender.is_closed() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let list = idle.entry(key).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(Idle {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    }

    async fn connect(&self, endpoint: &Endpoint) -> Result<Sender, SendError> {
        let authority = endpoint.authority.as_str();
        let stream = connect_tcp(authority, self.connect_timeout).await?;
        let (sender, connection) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|source| SendError::Handshake {
                authority: authority.to_string(),
                source,
            })?;
        let service = endpoint.service.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.with_upgrades().await {
                tracing::debug!(%error, %service, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Closes connections idle for longer than [`IDLE_TIMEOUT`] and forgets instances with none.
    pub fn sweep(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|_, list| {
                list.retain(|entry| {
                    entry.since.elapsed() < IDLE_TIMEOUT && !entry.sender.is_closed()
                });
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

/// Whether the connection may carry another request after this response. Not when the
/// instance said it will close it (`Connection: close`), nor after a 413 or 408: the instance
/// answered without reading the whole request, and closes the connection behind the answer. Put
/// back in the pool, such a connection would fail the next request sent on it, which for a POST
/// cannot be retried.
fn reusable(response: &Response<Incoming>) -> bool {
    if matches!(response.status().as_u16(), 408 | 413) {
        return false;
    }
    response
        .headers()
        .get_all(http::header::CONNECTION)
        .iter()
        .all(|value| {
            !value
                .as_bytes()
                .split(|b| *b == b',')
                .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
}

/// Where a connection goes back when its response is done.
struct Slot {
    pool: Weak<Pool>,
    key: u64,
    sender: Sender,
}

/// A response body from an instance that returns its connection to the pool once read to the
/// end, and closes it if dropped before that.
pub struct PooledBody {
    inner: Incoming,
    slot: Option<Slot>,
    finished: bool,
}

impl PooledBody {
    /// A body whose connection is not this pool's to keep: an HTTP/2 stream's (`client_h2.rs`).
    pub fn unpooled(inner: Incoming) -> Self {
        Self::new(inner, None)
    }

    fn new(inner: Incoming, slot: Option<Slot>) -> Self {
        let finished = inner.is_end_stream();
        Self {
            inner,
            slot,
            finished,
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finished = true,
            Poll::Ready(Some(Ok(_))) if self.inner.is_end_stream() => self.finished = true,
            Poll::Ready(Some(Err(_))) => self.slot = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.finished || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if !(self.finished || self.inner.is_end_stream()) {
            return;
        }
        if let Some(slot) = self.slot.take() {
            if let Some(pool) = slot.pool.upgrade() {
                pool.checkin(slot.key, slot.sender);
            }
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
