//! Test backends: small HTTP servers on loopback ports that answer with their own name, after
//! an optional delay, so tests can see which instance served a request and make one slow.

use std::time::Duration;

use axum::http::StatusCode;
use axum::routing::any;
use axum::Router;

/// Starts a backend that answers every request with `name` after `delay`; returns its port.
pub async fn start(name: &'static str, delay: Duration) -> u16 {
    let app = Router::new()
        .route("/healthz", any(|| async { "ok" }))
        .fallback(any(move || async move {
            tokio::time::sleep(delay).await;
            name
        }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Starts a backend that answers every request with `status` and its name; returns its port.
pub async fn start_with_status(name: &'static str, status: u16) -> u16 {
    let status = StatusCode::from_u16(status).unwrap();
    let app = Router::new().fallback(any(move || async move { (status, name) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Starts a backend that answers with the path and query it received; returns its port.
pub async fn start_echo() -> u16 {
    let app = Router::new().fallback(any(|uri: axum::http::Uri| async move {
        uri.path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Starts a minimal WebSocket echo server (RFC 6455 handshake; echoes each text frame back);
/// returns its port. Raw TCP, so the test sees exactly what crosses the gateway.
pub async fn start_websocket_echo() -> u16 {
    use base64::Engine;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
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
            });
        }
    });
    port
}

/// Starts a backend that answers with the value of request header `name` (empty if absent).
pub async fn start_header_echo(name: &'static str) -> u16 {
    let app = Router::new().fallback(any(move |headers: axum::http::HeaderMap| async move {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

/// Starts a backend that answers each request with `200 closer`, keeping the connection alive
/// (no `Connection: close`), but closes any connection left idle for `idle`: an instance with a
/// short keep-alive timeout. Raw TCP, so the closing is exactly as described. Returns its port.
pub async fn start_closing_after(idle: Duration) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
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
            });
        }
    });
    port
}

/// Starts a gRPC-only server (HTTP/2 with prior knowledge, nothing else) that answers the
/// standard health service, `grpc.health.v1.Health/Check`, with the status `serving` holds
/// (1 SERVING, 2 NOT_SERVING) and `grpc-status: 12` (unimplemented) to anything else; returns
/// its port.
pub async fn start_grpc_health(serving: std::sync::Arc<std::sync::atomic::AtomicU8>) -> u16 {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let serving = serving.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    move |request: http::Request<hyper::body::Incoming>| {
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
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
            });
        }
    });
    port
}
