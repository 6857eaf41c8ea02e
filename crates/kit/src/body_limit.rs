//! Refusing a body over the limit so the client can read the refusal: the rest of the body is
//! read and thrown away before the 413 goes out (a "lingering close", as nginx and the gateway
//! do). Without it the server answers and closes while the client is still sending, and the
//! client sees a broken pipe instead of the 413 that says what went wrong.
//!
//! Only a body that declares its length (`Content-Length`) over the limit is refused here, up
//! front; one that does not is cut off by axum's `DefaultBodyLimit` as it is read.

use std::time::Duration;

use axum::extract::Request;
use axum::http::header::CONTENT_LENGTH;
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};

use crate::Problem;

/// The most of a refused body read and thrown away, and for how long.
const DRAIN_LIMIT: usize = 32 * 1024 * 1024;
const DRAIN_FOR: Duration = Duration::from_secs(2);

/// A middleware (`axum::middleware::from_fn`) refusing a declared length over `max` with 413.
pub async fn refuse_declared_over(max: usize, request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let Some(declared) = declared.filter(|n| *n > max as u64) else {
        return next.run(request).await;
    };
    if declared <= DRAIN_LIMIT as u64 {
        let drain = Limited::new(request.into_body(), DRAIN_LIMIT).collect();
        let _ = tokio::time::timeout(DRAIN_FOR, drain).await;
    }
    Problem::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is over the limit of {max} bytes"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use axum::routing::post;
    use tower::ServiceExt;

    fn app() -> axum::Router {
        axum::Router::new()
            .route("/", post(|body: String| async move { body }))
            .layer(axum::middleware::from_fn(|request, next| {
                super::refuse_declared_over(10, request, next)
            }))
    }

    #[tokio::test]
    async fn a_declared_length_over_the_limit_is_refused_after_the_body_is_read() {
        let response = app()
            .oneshot(
                Request::post("/")
                    .header("content-length", "100")
                    .body(Body::from("x".repeat(100)))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(response.status(), 413);
        assert_eq!(
            response.headers()["content-type"],
            crate::problem::CONTENT_TYPE
        );
        let within = app()
            .oneshot(
                Request::post("/")
                    .header("content-length", "5")
                    .body(Body::from("hello"))
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(within.status(), 200);
    }
}
