//! The dashboard one click away under `stratus up`, though the sink takes only operators.
//!
//! The event sink's port speaks mutual TLS, which a browser cannot. So `up` serves the
//! dashboard on a loopback port of its own (`STRATUS_DASHBOARD_ADDR`) and forwards each request
//! to the sink as the operator it is. The way in is a link with a session token that `up`
//! makes at each start and prints (as Jupyter does): the first visit trades the token in the
//! link for a cookie (HttpOnly, SameSite=Strict) and is sent on without it. Without the token
//! or the cookie: 401, nothing forwarded.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use stratus_kit::Problem;

const COOKIE: &str = "stratus_dashboard";

struct Proxy {
    token: String,
    sink: String,
    http: reqwest::Client,
}

/// The dashboard's router: every GET forwarded to the sink at `sink` (its base URL).
pub fn router(token: String, sink: String) -> anyhow::Result<axum::Router> {
    let http = stratus_kit::mesh::current().client("events")?;
    let proxy = Arc::new(Proxy { token, sink, http });
    Ok(axum::Router::new().fallback(forward).with_state(proxy))
}

async fn forward(State(proxy): State<Arc<Proxy>>, request: Request) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return Problem::new(StatusCode::METHOD_NOT_ALLOWED, "the dashboard only reads")
            .into_response();
    }
    let query = request.uri().query().unwrap_or("");
    let (shown, rest): (Vec<_>, Vec<_>) = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .partition(|pair| pair.starts_with("token="));
    let path = request.uri().path().to_string();
    let rest = rest.join("&");
    let target = if rest.is_empty() {
        path.clone()
    } else {
        format!("{path}?{rest}")
    };
    // A link with the token: set the cookie and go on without the token in the address bar.
    if let Some(pair) = shown.first() {
        if same(&pair["token=".len()..], &proxy.token) {
            let cookie = format!(
                "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
                proxy.token
            );
            return (
                StatusCode::SEE_OTHER,
                [(header::LOCATION, target), (header::SET_COOKIE, cookie)],
            )
                .into_response();
        }
        return Problem::unauthorized("the dashboard token is not valid").into_response();
    }
    let has_cookie = request
        .headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| {
            pair.trim()
                .strip_prefix(&format!("{COOKIE}="))
                .map(str::to_string)
        })
        .any(|value| same(&value, &proxy.token));
    if !has_cookie {
        return Problem::unauthorized(
            "open the dashboard with the link stratus up printed (it carries a session token)",
        )
        .into_response();
    }
    let url = stratus_kit::mesh::current().url(&format!("{}{target}", proxy.sink));
    let answer = match proxy.http.get(&url).send().await {
        Ok(answer) => answer,
        Err(error) => {
            tracing::warn!(%error, "forwarding to the event sink");
            return Problem::new(StatusCode::BAD_GATEWAY, "the event sink did not answer")
                .into_response();
        }
    };
    let mut response = Response::builder().status(answer.status().as_u16());
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(value) = answer.headers().get(name.as_str()) {
            if let Ok(value) = HeaderValue::from_bytes(value.as_bytes()) {
                response = response.header(name, value);
            }
        }
    }
    // Streamed as it comes: the live view is server-sent events.
    let body = futures_util::stream::unfold(answer, |mut answer| async move {
        match answer.chunk().await {
            Ok(Some(chunk)) => Some((Ok::<_, std::io::Error>(chunk), answer)),
            Ok(None) => None,
            Err(error) => Some((Err(std::io::Error::other(error)), answer)),
        }
    });
    response
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| StatusCode::BAD_GATEWAY.into_response())
}

/// Compares two secrets by their digests, so the time taken says nothing of a guess.
fn same(shown: &str, expected: &str) -> bool {
    use sha2::Digest;
    sha2::Sha256::digest(shown.as_bytes()) == sha2::Sha256::digest(expected.as_bytes())
}
