//! The gateway's listeners: one worker thread per core, each with its own single-threaded
//! runtime, its own `SO_REUSEPORT` listener on the shared port, and its own upstream connection
//! pool.
//!
//! This is nginx's worker model, and the reason is the same: a request, the upstream connection
//! that serves it and the tasks that move bytes between them all stay on one thread, so handing
//! a response from one task to another is a cheap local wake-up instead of a cross-thread futex
//! call. The kernel spreads new connections across the workers' listeners.
//!
//! Only this process's workers share the port: a port another process holds is a start-up error
//! that names it ([`exclusive_listener`]), never a port silently split between two gateways.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::headers::ClientConnection;
use crate::listen::limits::Limits;
use crate::listen::lot::Lot;
use crate::proxy::{Proxy, Shared};

/// A TLS listener's settings: the address every worker binds, and the certificate.
pub struct TlsListener {
    pub first: std::net::TcpListener,
    pub config: Arc<rustls::ServerConfig>,
}

/// The first listening socket on `address`, for a port no other process holds; the gateway's
/// other workers then join it with [`reuseport_listener`].
///
/// The workers' sockets set `SO_REUSEPORT`, and Linux lets any socket that sets it too (under
/// the same user) bind a port already held that way: a second gateway, say one left over from an
/// earlier run, would start without a word and take a share of the connections. So a port is
/// first probed with a socket *without* `SO_REUSEPORT`, which cannot bind a port anyone listens
/// on, with the option or without; a port in use is a start-up error naming it. The probe is
/// closed at once and the first worker binds the port it found (port 0 becomes a concrete one).
/// A later gateway's probe fails the same way against this one's workers.
///
/// (Only `SO_REUSEADDR` is set on the probe: it lets a restart bind past connections of the
/// previous run still in `TIME_WAIT`, never past a listener.)
pub fn exclusive_listener(
    address: SocketAddr,
    what: &str,
) -> anyhow::Result<std::net::TcpListener> {
    let probe = tcp_socket(address)?;
    if let Err(error) = probe.bind(&address.into()) {
        if error.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::bail!(
                "{what}: port {} on {} is already in use by another process \
                 (another gateway, or a leftover from an earlier run?)",
                address.port(),
                address.ip()
            );
        }
        return Err(error).with_context(|| format!("{what}: binding {address}"));
    }
    let bound = probe
        .local_addr()?
        .as_socket()
        .context("the probe socket has no IP address")?;
    drop(probe);
    reuseport_listener(bound)
}

/// A listening socket that other workers can bind to as well.
pub fn reuseport_listener(address: SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    let socket = tcp_socket(address)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.set_tcp_nodelay(true)?;
    socket
        .bind(&address.into())
        .with_context(|| format!("binding the gateway to {address}"))?;
    socket.listen(4096)?;
    Ok(socket.into())
}

/// A TCP socket for `address` with `SO_REUSEADDR`.
fn tcp_socket(address: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

pub struct Workers {
    threads: Vec<std::thread::JoinHandle<()>>,
    stop: watch::Sender<bool>,
}

impl Workers {
    /// Starts `count` workers; the first serves `first`, the others bind their own listener to
    /// the same (now concrete) address.
    pub fn start(
        count: usize,
        first: std::net::TcpListener,
        shared: Arc<Shared>,
        limits: Limits,
        tls: Option<TlsListener>,
    ) -> anyhow::Result<Self> {
        let address = first.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let mut listeners = vec![first];
        for _ in 1..count {
            listeners.push(reuseport_listener(address)?);
        }
        let mut tls_listeners: Vec<Option<(std::net::TcpListener, tokio_rustls::TlsAcceptor)>> =
            (0..count).map(|_| None).collect();
        if let Some(TlsListener { first, config }) = tls {
            let tls_address = first.local_addr()?;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            tls_listeners[0] = Some((first, acceptor.clone()));
            for slot in tls_listeners.iter_mut().skip(1) {
                *slot = Some((reuseport_listener(tls_address)?, acceptor.clone()));
            }
        }
        let mut threads = Vec::with_capacity(count);
        for ((index, listener), tls) in listeners.into_iter().enumerate().zip(tls_listeners) {
            let shared = shared.clone();
            let stopped = stopped.clone();
            let thread = std::thread::Builder::new()
                .name(format!("gateway-worker-{index}"))
                .spawn(move || {
                    let runtime = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(runtime) => runtime,
                        Err(error) => {
                            tracing::error!(%error, "could not start a gateway worker");
                            return;
                        }
                    };
                    runtime.block_on(async move {
                        let proxy = Proxy::new(
                            shared,
                            limits.connect_timeout,
                            limits.upstream_idle_timeout,
                        );
                        if proxy.events.is_some() {
                            let flusher = proxy.clone();
                            tokio::spawn(async move {
                                let mut ticker = tokio::time::interval(crate::report::FLUSH_EVERY);
                                loop {
                                    ticker.tick().await;
                                    if let Some(events) = &flusher.events {
                                        events.flush();
                                    }
                                }
                            });
                        }
                        let plain = serve(listener, proxy.clone(), stopped.clone(), limits, None);
                        let secure = async {
                            if let Some((listener, acceptor)) = tls {
                                serve(
                                    listener,
                                    proxy.clone(),
                                    stopped.clone(),
                                    limits,
                                    Some(acceptor),
                                )
                                .await;
                            }
                        };
                        tokio::join!(plain, secure);
                        if let Some(events) = &proxy.events {
                            events.flush();
                        }
                    });
                })
                .context("spawning a gateway worker")?;
            threads.push(thread);
        }
        Ok(Self { threads, stop })
    }

    /// Stops accepting on every worker and waits until their in-flight requests are done.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let threads = self.threads;
        let _ = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        })
        .await;
    }
}

async fn serve(
    listener: std::net::TcpListener,
    proxy: Arc<Proxy>,
    mut stopped: watch::Receiver<bool>,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "could not register the listener");
            return;
        }
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .keep_alive(true)
        .half_close(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(limits.max_header_bytes as u32);
    let graceful = GracefulShutdown::new();
    let connections = Arc::new(tokio::sync::Semaphore::new(
        limits.max_connections_per_worker.max(1),
    ));
    // Plain connections park in this worker's lot between sessions (see lot.rs); each watches
    // the stop signal itself.
    let lot = if tls.is_none() {
        match Lot::new(proxy.clone(), Arc::new(limits), stopped.clone()) {
            Ok(lot) => {
                tokio::spawn(lot.clone().run(crate::listen::park::resume));
                Some(lot)
            }
            Err(error) => {
                tracing::error!(%error, "could not create the parking lot");
                return;
            }
        }
    } else {
        None
    };
    let shutdown = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    tokio::pin!(shutdown);
    let https = tls.is_some();
    loop {
        // At the connection limit, stop accepting: new clients queue in the kernel's backlog
        // instead of being accepted and starved.
        let permit = tokio::select! {
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            _ = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, usually: pause rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let client = Arc::new(ClientConnection::new(peer, https));
        let proxy = proxy.clone();
        match (tls.clone(), &lot) {
            (None, Some(lot)) => {
                tokio::spawn(crate::listen::park::serve(
                    stream,
                    lot.clone(),
                    client,
                    permit,
                ));
            }
            (None, None) => {}
            (Some(acceptor), _) => {
                let service = service_fn(move |request| {
                    let proxy = proxy.clone();
                    let client = client.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(request, &client).await) }
                });
                let builder = builder.clone();
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    // The handshake gets the same deadline as request headers.
                    let handshake =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream)).await;
                    let stream = match handshake {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(error)) => {
                            tracing::debug!(%error, %peer, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let connection =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    if let Err(error) = watcher.watch(connection.into_owned()).await {
                        tracing::debug!(%error, "connection ended with an error");
                    }
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    // Every connection holds a permit until it is done: all permits back means all done.
    let all = u32::try_from(limits.max_connections_per_worker.max(1)).unwrap_or(u32::MAX);
    let drained = async {
        graceful.shutdown().await;
        let _ = connections.acquire_many(all).await;
    };
    tokio::select! {
        _ = drained => {}
        _ = tokio::time::sleep(limits.grace) => tracing::warn!("grace period over; closing remaining connections"),
    }
}
