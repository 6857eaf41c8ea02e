//! A loopback port that forwards each GET to an internal port as the operator: for a browser,
//! which cannot present the mesh's certificates (as `stratus up` serves the dashboard).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Serves on a loopback port, forwarding every GET to `base` (an https URL) with the
/// operator's client and streaming the answer back; returns the port.
pub async fn operator_proxy(base: String) -> u16 {
    let http = super::mesh::operator_builder().build().unwrap();
    let app = axum::Router::new()
        .fallback(forward)
        .with_state((http, base));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    port
}

async fn forward(
    State((http, base)): State<(reqwest::Client, String)>,
    request: Request,
) -> Response {
    let target = request
        .uri()
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let answer = match http.get(format!("{base}{target}")).send().await {
        Ok(answer) => answer,
        Err(error) => return (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(value) = answer.headers().get(name.as_str()) {
            response = response.header(name, value.as_bytes());
        }
    }
    // Chunk by chunk: the live view is a stream of server-sent events.
    let body = futures_util::stream::unfold(answer, |mut answer| async move {
        match answer.chunk().await {
            Ok(Some(chunk)) => Some((Ok::<_, std::io::Error>(chunk), answer)),
            Ok(None) => None,
            Err(error) => Some((Err(std::io::Error::other(error)), answer)),
        }
    });
    response.body(Body::from_stream(body)).unwrap()
}
