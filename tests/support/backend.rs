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
