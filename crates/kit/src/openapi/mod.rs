//! A component's HTTP API and the OpenAPI document that describes it, kept in step.
//!
//! Every Stratus component describes its HTTP API in a hand-written OpenAPI 3.0 document kept
//! next to its code (`src/openapi.json`, compiled in with `include_str!`). Writing it by hand
//! keeps the build free of code generators and lets the document say what the code's types
//! cannot (the problem+json answers, the limits a handler checks after parsing).
//!
//! What keeps it true is that routes and document meet in one place, [`Api`]: a component adds
//! each route through it, which records the operation as it adds the handler, and
//! [`Api::check`] compares the recorded operations with the document both ways (served but not
//! documented, documented but not served). The kit's server takes only an `Api` and checks it
//! before it binds, and every component has a unit test calling `check`, so a route cannot be
//! served without its entry. Whether each entry tells the truth about its answers is checked
//! from the outside: `tests/schemathesis.rs` runs schemathesis against every document through
//! the gateway and fails on any answer the document does not allow.
//!
//! The document is served at `/openapi.json` (the convention for a process) and at
//! `<prefix>/openapi.json`, the path the gateway routes to the service.

mod api;
mod check;

pub use api::Api;
pub use check::{check, DocumentError, Operation};

use axum::http::header;
use axum::routing::get;
use axum::Router;

/// A router that answers `GET /openapi.json` and, when `prefix` is not empty,
/// `GET <prefix>/openapi.json` with `document`.
fn serve<S: Clone + Send + Sync + 'static>(prefix: &str, document: &'static str) -> Router<S> {
    let serve = move || async move { ([(header::CONTENT_TYPE, "application/json")], document) };
    let router = Router::new().route("/openapi.json", get(serve));
    if prefix.is_empty() {
        router
    } else {
        router.route(&format!("{prefix}/openapi.json"), get(serve))
    }
}
