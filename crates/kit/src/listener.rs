//! A service's listener under `STRATUS_MTLS`: plain TCP, TLS with client certificates, or both.
//!
//! Handshakes run in tasks of their own, beside the accept loop, so a client that opens a
//! connection and sends nothing (or half a handshake) holds up no one else; a connection must
//! send its first byte within [`FIRST_BYTE_TIMEOUT`] and finish its handshake within
//! [`HANDSHAKE_TIMEOUT`], at most [`MAX_HANDSHAKES`] run at once, and one source address may
//! hold at most [`MAX_HANDSHAKES_PER_SOURCE`] of them (more are closed at once), so idle
//! sockets from one host cannot fill the slots everyone else needs. What comes out of
//! [`Incoming`] is a finished connection with what is known of its peer ([`Remote`]): its
//! address, and the SPIFFE ID its certificate names when it presented one.
//!
//! - `Mode::Required`: TLS only; a plaintext connection fails its handshake and is closed.
//!   Whether a client must present a certificate is the server configuration's business (the
//!   registry takes instances that have none yet; every route but its bootstrap ones then
//!   refuses them).
//! - `Mode::Optional`: the first byte decides: a TLS handshake record (0x16) is TLS, anything
//!   else plaintext, whose peer is nobody (Linkerd's and Istio's permissive mode, for moving a
//!   running system to mTLS one process at a time).
//! - `Mode::Off`: plain TCP.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use stratus_identity::{Mode, SpiffeId};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client has to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; more wait in the kernel's accept queue.
pub const MAX_HANDSHAKES: usize = 256;
/// Handshakes one source address may have in progress at once.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 64;
/// How long a new connection may stay silent before it is closed.
pub const FIRST_BYTE_TIMEOUT: Duration = Duration::from_secs(3);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What is known of the other end of a connection.
#[derive(Clone, Debug)]
pub struct Remote {
    pub address: SocketAddr,
    /// The verified SPIFFE ID of its certificate, if it presented one.
    pub peer: Option<Arc<SpiffeId>>,
}

/// A connection, plain or TLS.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// Finished connections, as axum's `serve` takes them.
pub struct Incoming {
    connections: mpsc::Receiver<(Stream, Remote)>,
    local: SocketAddr,
}

/// Starts accepting on `listener`. `tls` is needed unless `mode` is off.
pub fn incoming(
    listener: TcpListener,
    mode: Mode,
    tls: Option<Arc<ServerConfig>>,
    trust_domain: &str,
) -> io::Result<Incoming> {
    let local = listener.local_addr()?;
    let acceptor = match (mode, tls) {
        (Mode::Off, _) => None,
        (_, Some(config)) => Some(TlsAcceptor::from(config)),
        (_, None) => {
            return Err(io::Error::other(
                "mutual TLS is on but the listener has no TLS configuration",
            ))
        }
    };
    let (sender, connections) = mpsc::channel(MAX_HANDSHAKES);
    tokio::spawn(accept_loop(
        listener,
        mode,
        acceptor,
        trust_domain.to_string(),
        sender,
    ));
    Ok(Incoming { connections, local })
}

async fn accept_loop(
    listener: TcpListener,
    mode: Mode,
    acceptor: Option<TlsAcceptor>,
    trust_domain: String,
    sender: mpsc::Sender<(Stream, Remote)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let sources = Sources::default();
    loop {
        let permit = tokio::select! {
            permit = handshakes.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = sender.closed() => return,
        };
        let (socket, address) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::warn!(%error, "accepting a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = sender.closed() => return,
        };
        let Some(source) = sources.enter(address.ip()) else {
            // This host already holds its share of handshakes: close, keep the slot free.
            metrics::counter!("tls_handshake_failures_total").increment(1);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let acceptor = acceptor.clone();
        let sender = sender.clone();
        let trust_domain = trust_domain.clone();
        tokio::spawn(async move {
            let finished = tokio::time::timeout(
                HANDSHAKE_TIMEOUT,
                establish(socket, address, mode, acceptor, &trust_domain),
            )
            .await;
            drop(source);
            drop(permit);
            match finished {
                Ok(Ok(connection)) => {
                    let _ = sender.send(connection).await;
                }
                Ok(Err(error)) => {
                    tracing::debug!(%address, %error, "connection refused at its handshake");
                    metrics::counter!("tls_handshake_failures_total").increment(1);
                }
                Err(_) => {
                    tracing::debug!(%address, "handshake timed out");
                    metrics::counter!("tls_handshake_failures_total").increment(1);
                }
            }
        });
    }
}

async fn establish(
    socket: TcpStream,
    address: SocketAddr,
    mode: Mode,
    acceptor: Option<TlsAcceptor>,
    trust_domain: &str,
) -> io::Result<(Stream, Remote)> {
    let plain = |socket| {
        Ok((
            Stream::Plain(socket),
            Remote {
                address,
                peer: None,
            },
        ))
    };
    let Some(acceptor) = acceptor else {
        return plain(socket);
    };
    let mut first = [0u8; 1];
    let read = tokio::time::timeout(FIRST_BYTE_TIMEOUT, socket.peek(&mut first))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no first byte in time"))??;
    if mode == Mode::Optional && (read == 0 || first[0] != TLS_HANDSHAKE) {
        return plain(socket);
    }
    let tls = acceptor.accept(socket).await?;
    let peer = stratus_identity::tls::peer_id(tls.get_ref().1.peer_certificates(), trust_domain)
        .map(Arc::new);
    Ok((Stream::Tls(Box::new(tls)), Remote { address, peer }))
}

/// Handshakes in progress per source address.
#[derive(Clone, Default)]
struct Sources(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One handshake of one source, given back when dropped.
struct Entered {
    sources: Sources,
    ip: IpAddr,
}

impl Sources {
    fn enter(&self, ip: IpAddr) -> Option<Entered> {
        let mut counts = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(ip).or_default();
        if *count >= MAX_HANDSHAKES_PER_SOURCE {
            return None;
        }
        *count += 1;
        Some(Entered {
            sources: self.clone(),
            ip,
        })
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        let mut counts = self.sources.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Stream;
    type Addr = Remote;

    async fn accept(&mut self) -> (Stream, Remote) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop only ends once this receiver is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Remote> {
        Ok(Remote {
            address: self.local,
            peer: None,
        })
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Incoming>> for Remote {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Incoming>) -> Self {
        stream.remote_addr().clone()
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(socket) => Pin::new(socket).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(socket) => Pin::new(socket).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(socket) => Pin::new(socket).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(socket) => socket.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(socket) => Pin::new(socket).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(socket) => Pin::new(socket).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}
