//! The HTTP/2 upstream side, for routes with `upstream_protocol = "h2c"` and for gRPC calls: one
//! multiplexed connection per instance and worker, shared by every request to that instance.
//!
//! HTTP/1.1 carries one request at a time per connection, hence the pool of idle connections in
//! `client.rs`. HTTP/2 carries many at once, as streams of one connection, so a worker keeps a
//! single connection per instance, in cleartext with prior knowledge (the gateway speaks HTTP/2
//! from the first byte, RFC 9113 section 3.3, as gRPC servers expect). Bodies stream both ways:
//! the client's request body is handed to the connection as it arrives, and the instance's
//! response body, trailers included, goes back the same way.
//!
//! A connection that fails (the instance restarted, or stopped answering pings) is noticed by
//! the next request, which opens a new one. Requests in flight on a failed connection fail with
//! it; one that hyper hands back unsent never reached the instance, and may go elsewhere.
//!
//! Given the gateway's credentials, the connection is mutual TLS with ALPN `h2`
//! (`upstream_tls.rs`) instead of h2c; everything above the stream is the same. An instance that
//! refuses the gateway's certificate says so only after the handshake (TLS 1.3), when hyper
//! reads from the connection, and hyper and h2 keep only the kind and text of an I/O error; so
//! the stream under each connection notes a TLS failure itself ([`Watched`]), and a request that
//! failed with it is a failed connection, as a failed handshake is.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::forward::client::connect_tcp;
use crate::forward::error::SendError;
use crate::forward::upstream_io::UpstreamStream;
use crate::forward::upstream_tls::{is_tls_error, Alpn, UpstreamTls};
use crate::upstream::instances::Endpoint;

type Sender = SendRequest<Incoming>;

/// A connection unused for this long is let go (the instance's own idle timeout is longer).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Pings on a connection that carries requests, so a dead instance is noticed within seconds
/// rather than when the kernel gives up on the socket.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request got no response, and whether it may be sent elsewhere.
pub enum Failure {
    /// The instance never saw the request: here it is back, for another instance (boxed: the
    /// result of every call is no bigger for this rare case).
    NotSent(SendError, Box<Request<Incoming>>),
    /// It may have been seen (and its body is partly sent): it must not be repeated.
    Failed(SendError),
}

/// The connection to one instance; the async lock makes concurrent first requests share one
/// new connection instead of each opening its own.
#[derive(Default)]
struct Slot {
    current: tokio::sync::Mutex<Option<Connection>>,
}

struct Connection {
    sender: Sender,
    /// Which connection this is, so a request that saw it fail forgets it and not a newer one.
    generation: u64,
    used: Instant,
    /// Set when TLS failed under it ([`Watched`]).
    tls_failed: Arc<AtomicBool>,
}

/// A connection taken for one request.
struct Checkout {
    sender: Sender,
    generation: u64,
    /// Opened for this request.
    fresh: bool,
    tls_failed: Arc<AtomicBool>,
}

/// One worker's HTTP/2 upstream connections.
pub struct H2Pool {
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    generations: AtomicU64,
    connect_timeout: Duration,
    /// Mutual TLS to the instances (None: h2c).
    tls: Option<Arc<UpstreamTls>>,
}

impl H2Pool {
    pub fn new(connect_timeout: Duration) -> Arc<Self> {
        Self::with_tls(connect_timeout, None)
    }

    /// [`H2Pool::new`], connecting over mutual TLS (ALPN `h2`) when `tls` is given.
    pub fn with_tls(connect_timeout: Duration, tls: Option<Arc<UpstreamTls>>) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
            connect_timeout,
            tls,
        })
    }

    /// The `:scheme` of requests sent through this pool: `https` over TLS, else `http`.
    pub fn scheme(&self) -> http::uri::Scheme {
        if self.tls.is_some() {
            http::uri::Scheme::HTTPS
        } else {
            http::uri::Scheme::HTTP
        }
    }

    /// Sends `request` (its URI in absolute form) to `endpoint` as a new stream of the shared
    /// connection, opening that connection first if there is none or it has failed. Returns at
    /// the response's head; its body streams from the instance as the client reads it.
    pub async fn send(
        &self,
        endpoint: &Endpoint,
        mut request: Request<Incoming>,
    ) -> Result<Response<Incoming>, Failure> {
        let slot = self.slot(endpoint.key);
        // At most two tries: a connection that turns out closed is replaced once.
        for _ in 0..2 {
            let Checkout {
                mut sender,
                generation,
                fresh,
                tls_failed,
            } = match self.checkout(&slot, endpoint).await {
                Ok(connection) => connection,
                Err(error) => return Err(Failure::NotSent(error, Box::new(request))),
            };
            if let Err(source) = sender.ready().await {
                self.forget(&slot, generation).await;
                if fresh {
                    let error =
                        refused(endpoint, &tls_failed, source).unwrap_or_else(|_| closed(endpoint));
                    return Err(Failure::NotSent(error, Box::new(request)));
                }
                continue;
            }
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(response),
                Err(mut failed) => {
                    let unsent = failed.take_message();
                    let source = failed.into_error();
                    self.forget(&slot, generation).await;
                    // The instance refused the gateway's certificate: it read none of the
                    // request (a failed connection, though hyper may have taken the request).
                    let error = match refused(endpoint, &tls_failed, source) {
                        Ok(error) => error,
                        Err(source) => SendError::Request {
                            authority: endpoint.authority.to_string(),
                            source,
                        },
                    };
                    match unsent {
                        Some(unsent) if !fresh => request = unsent,
                        Some(unsent) => return Err(Failure::NotSent(error, Box::new(unsent))),
                        None => return Err(Failure::Failed(error)),
                    }
                }
            }
        }
        Err(Failure::NotSent(closed(endpoint), Box::new(request)))
    }

    fn slot(&self, key: u64) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(key).or_default().clone()
    }

    /// The live connection to `endpoint`, or a new one.
    async fn checkout(&self, slot: &Slot, endpoint: &Endpoint) -> Result<Checkout, SendError> {
        let mut current = slot.current.lock().await;
        if let Some(connection) = current.as_mut() {
            if !connection.sender.is_closed() {
                connection.used = Instant::now();
                return Ok(Checkout {
                    sender: connection.sender.clone(),
                    generation: connection.generation,
                    fresh: false,
                    tls_failed: connection.tls_failed.clone(),
                });
            }
        }
        let (sender, tls_failed) = self.connect(endpoint).await?;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        *current = Some(Connection {
            sender: sender.clone(),
            generation,
            used: Instant::now(),
            tls_failed: tls_failed.clone(),
        });
        Ok(Checkout {
            sender,
            generation,
            fresh: true,
            tls_failed,
        })
    }

    async fn forget(&self, slot: &Slot, generation: u64) {
        let mut current = slot.current.lock().await;
        if current.as_ref().is_some_and(|c| c.generation == generation) {
            *current = None;
        }
    }

    /// A new connection to `endpoint`, and the flag its stream sets if TLS fails under it.
    async fn connect(&self, endpoint: &Endpoint) -> Result<(Sender, Arc<AtomicBool>), SendError> {
        let authority = endpoint.authority.as_str();
        let stream = connect_tcp(authority, self.connect_timeout).await?;
        let stream = match &self.tls {
            None => UpstreamStream::Plain(stream),
            Some(tls) => {
                tls.connect(stream, endpoint, Alpn::Http2, self.connect_timeout)
                    .await?
            }
        };
        let mut builder = http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .keep_alive_interval(PING_INTERVAL)
            .keep_alive_timeout(PING_TIMEOUT);
        // The handshake is the preface and SETTINGS; an instance that accepts the connection
        // but never answers them is as good as one that refused it.
        let tls_failed = Arc::new(AtomicBool::new(false));
        let stream = Watched {
            stream,
            tls_failed: tls_failed.clone(),
        };
        let handshake = builder.handshake(TokioIo::new(stream));
        let (sender, connection) = match tokio::time::timeout(self.connect_timeout, handshake).await
        {
            Ok(Ok(both)) => both,
            Ok(Err(source)) => {
                return Err(SendError::Handshake {
                    authority: authority.to_string(),
                    source,
                })
            }
            Err(_) => {
                return Err(SendError::ConnectTimeout {
                    authority: authority.to_string(),
                    after: self.connect_timeout,
                })
            }
        };
        let service = endpoint.service.clone();
        // A TLS failure after the handshake (the instance refused the gateway's certificate)
        // is logged and counted once, here, like a failed handshake.
        let (instance, authority) = (endpoint.id.clone(), authority.to_string());
        let failed = tls_failed.clone();
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                if failed.load(Ordering::Relaxed) {
                    crate::forward::upstream_tls::refused(&service, &instance, &authority, &error);
                } else {
                    tracing::debug!(%error, %service, "upstream HTTP/2 connection ended with an error");
                }
            }
        });
        Ok((sender, tls_failed))
    }

    /// Lets go of connections that failed or sat unused for [`IDLE_TIMEOUT`], and of instances
    /// with none. A connection let go closes once its streams in flight are done.
    pub fn sweep(&self) {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.retain(|_, slot| {
            // A slot in use right now is kept as it is, and looked at next time.
            let Ok(mut current) = slot.current.try_lock() else {
                return true;
            };
            if current
                .as_ref()
                .is_some_and(|c| c.sender.is_closed() || c.used.elapsed() > IDLE_TIMEOUT)
            {
                *current = None;
            }
            current.is_some()
        });
    }

    /// Sweeps every few seconds for as long as the pool is alive.
    pub fn spawn_sweeper(self: &Arc<Self>) {
        crate::forward::client::sweep_every(self, IDLE_TIMEOUT / 6, Self::sweep);
    }
}

/// `source` as a failed connection if TLS failed under it, else back.
fn refused(
    endpoint: &Endpoint,
    tls_failed: &AtomicBool,
    source: hyper::Error,
) -> Result<SendError, hyper::Error> {
    if !tls_failed.load(Ordering::Relaxed) {
        return Err(source);
    }
    Ok(SendError::Tls {
        authority: endpoint.authority.to_string(),
        source: io::Error::other(source),
    })
}

/// The stream under an HTTP/2 connection, which notes when TLS fails under it: hyper and h2
/// pass on only an I/O error's kind and text, so the pool could not tell a refused certificate
/// from a reset connection otherwise. On h2c nothing is ever noted (an `Err` costs one more
/// look, nothing else does).
struct Watched {
    stream: UpstreamStream,
    tls_failed: Arc<AtomicBool>,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(Err(error)) = &polled {
            if is_tls_error(error) {
                this.tls_failed.store(true, Ordering::Relaxed);
            }
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

fn closed(endpoint: &Endpoint) -> SendError {
    SendError::Connect {
        authority: endpoint.authority.to_string(),
        source: std::io::Error::from(std::io::ErrorKind::ConnectionReset),
    }
}
