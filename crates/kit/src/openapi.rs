//! Serving a service's OpenAPI document.
//!
//! Every Stratus service describes its HTTP API in a hand-written OpenAPI 3.0 document kept next
//! to its code (`src/openapi.json`, compiled in with `include_str!`). Writing it by hand keeps the
//! build free of code generators and lets the document say what the code's types cannot (the
//! problem+json answers, the limits a handler checks after parsing); whether it tells the truth
//! is checked from the outside instead: `tests/schemathesis.rs` runs schemathesis against every
//! document through the gateway and fails on any answer the document does not allow.
//!
//! The document is served at `/openapi.json` (the convention for a process) and at
//! `<prefix>/openapi.json`, the path the gateway routes to the service, so clients find it
//! through the one public address too.

use axum::http::header;
use axum::routing::get;
use axum::Router;

/// A router that answers `GET /openapi.json` and `GET <prefix>/openapi.json` with `document`.
/// Merge it into the service's router; `prefix` is the gateway's route prefix (`/api/orders`),
/// or empty for a process the gateway does not route to.
pub fn routes<S: Clone + Send + Sync + 'static>(prefix: &str, document: &'static str) -> Router<S> {
    let serve = move || async move { ([(header::CONTENT_TYPE, "application/json")], document) };
    let router = Router::new().route("/openapi.json", get(serve));
    if prefix.is_empty() {
        router
    } else {
        router.route(&format!("{prefix}/openapi.json"), get(serve))
    }
}

/// Checks that `document` is an OpenAPI 3.0 document describing each `(path, method)` and that
/// every answer each of those operations documents has a description. For the services' unit
/// tests: a route added to the router but not to the document fails here, not in production.
pub fn check(document: &str, operations: &[(&str, &str)]) -> Result<(), String> {
    let document: serde_json::Value =
        serde_json::from_str(document).map_err(|e| format!("not JSON: {e}"))?;
    let version = document["openapi"].as_str().unwrap_or_default();
    if !version.starts_with("3.0.") {
        return Err(format!("openapi must be 3.0.x, not {version:?}"));
    }
    let paths = document["paths"]
        .as_object()
        .ok_or("the document has no paths")?;
    for (path, method) in operations {
        let operation = &paths
            .get(*path)
            .ok_or_else(|| format!("{path} is not documented"))?[*method];
        let responses = operation["responses"]
            .as_object()
            .ok_or_else(|| format!("{method} {path} is not documented"))?;
        if responses.is_empty() {
            return Err(format!("{method} {path} documents no response"));
        }
    }
    let documented: usize = paths
        .values()
        .filter_map(|item| item.as_object())
        .map(|item| item.keys().filter(|k| *k != "parameters").count())
        .sum();
    if documented != operations.len() {
        return Err(format!(
            "the document has {documented} operations, the router {}",
            operations.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_must_name_exactly_the_routes() {
        let document = r#"{"openapi": "3.0.3", "paths": {"/a": {"parameters": [], "get": {"responses": {"200": {"description": "ok"}}}}}}"#;
        assert!(check(document, &[("/a", "get")]).is_ok());
        assert!(check(document, &[("/a", "get"), ("/a", "put")]).is_err());
        assert!(check(document, &[]).is_err());
        assert!(check(r#"{"openapi": "3.1.0", "paths": {}}"#, &[]).is_err());
    }
}
