//! Test backends: small HTTP servers on loopback ports that answer with their own name, after
//! an optional delay, so tests can see which instance served a request and make one slow.
//!
//! Each serves TLS with a certificate for the service it is registered under (`service`), from
//! the test binary's authority, as an instance in the mesh does: the gateway's upstream mutual
//! TLS accepts an instance only when its certificate names the service it meant to reach. The
//! `plain_*` ones speak plaintext, for systems with `STRATUS_MTLS=off`.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::any;
use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// A connection a raw backend reads and writes: TLS, or TCP for a plaintext one.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Stream for T {}

/// Accepts connections on `listener` and hands each (after the TLS handshake, with `tls`) to
/// `serve`, each on a task of its own. A failed handshake drops that connection only.
pub fn accept_loop<F, Fut>(listener: TcpListener, tls: Option<Arc<rustls::ServerConfig>>, serve: F)
where
    F: Fn(Box<dyn Stream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let serve = Arc::new(serve);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let (serve, acceptor) = (serve.clone(), acceptor.clone());
            tokio::spawn(async move {
                let stream: Box<dyn Stream> = match acceptor {
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(tls) => Box::new(tls),
                        Err(_) => return,
                    },
                    None => Box::new(stream),
                };
                serve(stream).await;
            });
        }
    });
}

/// Serves `app` on a loopback port (TLS as `service` when given); returns the port.
pub async fn serve_app(service: Option<&str>, app: Router) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let tls = service.map(super::mesh::tls_for);
    accept_loop(listener, tls, move |stream| {
        let app = app.clone();
        async move {
            let service = hyper::service::service_fn(move |request| {
                tower::ServiceExt::oneshot(app.clone(), request)
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        }
    });
    port
}

fn named(name: &'static str, delay: Duration) -> Router {
    Router::new()
        .route("/healthz", any(|| async { "ok" }))
        .fallback(any(move || async move {
            tokio::time::sleep(delay).await;
            name
        }))
}

/// Starts a backend of `service` that answers every request with `name` after `delay`;
/// returns its port.
pub async fn start(service: &str, name: &'static str, delay: Duration) -> u16 {
    serve_app(Some(service), named(name, delay)).await
}

/// As [`start`], in plaintext (for a system with the mesh off).
pub async fn plain(name: &'static str, delay: Duration) -> u16 {
    serve_app(None, named(name, delay)).await
}

/// Starts a backend of `service` that answers every request with `status` and its name;
/// returns its port.
pub async fn start_with_status(service: &str, name: &'static str, status: u16) -> u16 {
    let status = StatusCode::from_u16(status).unwrap();
    let app = Router::new().fallback(any(move || async move { (status, name) }));
    serve_app(Some(service), app).await
}

/// Starts a backend of `service` that answers with the path and query it received; returns
/// its port.
pub async fn start_echo(service: &str) -> u16 {
    let app = Router::new().fallback(any(|uri: axum::http::Uri| async move {
        uri.path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default()
    }));
    serve_app(Some(service), app).await
}

/// Starts a minimal WebSocket echo server of `service` (RFC 6455 handshake; echoes each text
/// frame back); returns its port. Raw bytes over TLS, so the test sees exactly what crosses
/// the gateway.
pub async fn start_websocket_echo(service: &str) -> u16 {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    accept_loop(
        listener,
        Some(super::mesh::tls_for(service)),
        |mut stream| {
            async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read_exact(&mut byte).await.is_err() {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_string();
                let Some(key) = text
                    .lines()
                    .find_map(|l| {
                        l.split_once(':')
                            .filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-key"))
                    })
                    .map(|(_, v)| v.trim().to_string())
                else {
                    // Not an upgrade (a health check, say): a plain answer.
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    return;
                };
                let digest = ring::digest::digest(
                    &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
                    format!("{key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11").as_bytes(),
                );
                let accept = base64::engine::general_purpose::STANDARD.encode(digest.as_ref());
                let response = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                if stream.write_all(response.as_bytes()).await.is_err() {
                    return;
                }
                // Frames: client frames are masked; echo each payload back unmasked.
                loop {
                    let mut header = [0u8; 2];
                    if stream.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    let length = (header[1] & 0x7f) as usize; // short frames only
                    let mut mask = [0u8; 4];
                    let mut payload = vec![0u8; length];
                    if stream.read_exact(&mut mask).await.is_err()
                        || stream.read_exact(&mut payload).await.is_err()
                    {
                        return;
                    }
                    for (i, b) in payload.iter_mut().enumerate() {
                        *b ^= mask[i % 4];
                    }
                    let mut frame = vec![header[0], length as u8];
                    frame.extend_from_slice(&payload);
                    if stream.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            }
        },
    );
    port
}

/// Starts a backend of `service` that answers with the value of request header `name` (empty
/// if absent).
pub async fn start_header_echo(service: &str, name: &'static str) -> u16 {
    let app = Router::new().fallback(any(move |headers: axum::http::HeaderMap| async move {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }));
    serve_app(Some(service), app).await
}

/// Starts a backend of `service` that answers each request with `200 closer`, keeping the
/// connection alive (no `Connection: close`), but closes any connection left idle for `idle`:
/// an instance with a short keep-alive timeout. Raw bytes over TLS, so the closing is exactly
/// as described. Returns its port.
pub async fn start_closing_after(service: &str, idle: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    accept_loop(
        listener,
        Some(super::mesh::tls_for(service)),
        move |mut stream| {
            async move {
                let mut pending = Vec::new();
                let mut buffer = [0u8; 4096];
                loop {
                    // One request: its head and a Content-Length body, if any.
                    let taken = loop {
                        let text = String::from_utf8_lossy(&pending).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let length = text[..end]
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            if pending.len() >= end + 4 + length {
                                break end + 4 + length;
                            }
                        }
                        let wait = if pending.is_empty() {
                            idle
                        } else {
                            Duration::from_secs(5)
                        };
                        match tokio::time::timeout(wait, stream.read(&mut buffer)).await {
                            Ok(Ok(n)) if n > 0 => pending.extend_from_slice(&buffer[..n]),
                            // Idle too long, or the peer went away: close.
                            _ => return,
                        }
                    };
                    pending.drain(..taken);
                    if stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\ncloser")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        },
    );
    port
}

/// Starts a gRPC-only server (HTTP/2 with prior knowledge, nothing else) that answers the
/// standard health service, `grpc.health.v1.Health/Check`, with the status `serving` holds
/// (1 SERVING, 2 NOT_SERVING) and `grpc-status: 12` (unimplemented) to anything else; returns
/// its port. Over TLS as `service` (ALPN h2), as a gRPC instance in the mesh.
pub async fn start_grpc_health(
    service: &str,
    serving: std::sync::Arc<std::sync::atomic::AtomicU8>,
) -> u16 {
    use http_body_util::BodyExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut tls = (*super::mesh::tls_for(service)).clone();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    accept_loop(listener, Some(Arc::new(tls)), move |stream| {
        let serving = serving.clone();
        async move {
            let service =
                hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                    let status = serving.load(std::sync::atomic::Ordering::Relaxed);
                    async move {
                        let health = request.uri().path() == "/grpc.health.v1.Health/Check";
                        let _ = request.into_body().collect().await;
                        let mut trailers = http::HeaderMap::new();
                        let mut response = http::Response::builder();
                        let message = if health {
                            trailers.insert("grpc-status", http::HeaderValue::from(0));
                            response = response.header("content-type", "application/grpc");
                            // One uncompressed message: field 1 (status), a varint.
                            bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status])
                        } else {
                            trailers.insert("grpc-status", http::HeaderValue::from(12));
                            bytes::Bytes::new()
                        };
                        let body = http_body_util::Full::new(message)
                            .with_trailers(async move { Some(Ok(trailers)) });
                        Ok::<_, std::convert::Infallible>(response.body(body).unwrap())
                    }
                });
            let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        }
    });
    port
}
