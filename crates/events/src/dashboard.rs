//! The dashboard: one static page (HTML, CSS and vanilla JavaScript compiled into the binary),
//! served at `/`. It needs no build step and no CDN: it reads the live feed (`/v1/stream`),
//! fetches one trace at a time (`/v1/traces/{id}`) with its log lines, and searches and tails
//! the log lines (`/v1/logs`, `/v1/logs/stream`; logs.js).

use axum::http::header;
use axum::response::IntoResponse;

const INDEX: &str = include_str!("../dashboard/index.html");
const SCRIPT: &str = include_str!("../dashboard/app.js");
const LOGS_SCRIPT: &str = include_str!("../dashboard/logs.js");
const STYLE: &str = include_str!("../dashboard/style.css");

/// `GET /`: the page.
pub async fn page() -> impl IntoResponse {
    asset("text/html; charset=utf-8", INDEX)
}

/// `GET /dashboard/app.js`.
pub async fn script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

/// `GET /dashboard/logs.js`: the logs view, and a trace's lines under its spans.
pub async fn logs_script() -> impl IntoResponse {
    asset("text/javascript; charset=utf-8", LOGS_SCRIPT)
}

/// `GET /dashboard/style.css`.
pub async fn style() -> impl IntoResponse {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
}
