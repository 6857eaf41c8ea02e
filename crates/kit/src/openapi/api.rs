//! [`Api`]: a component's routes and its OpenAPI document, built as one thing.
//!
//! A component does not build an axum `Router` itself: it builds an `Api`, whose only way to add
//! a route is one method per HTTP method (`get`, `post`, `put`, `patch`, `delete`), each of which
//! both adds the handler to the router and records the operation. [`crate::server::Service`]
//! takes an `Api`, never a bare router, and refuses to start when the recorded operations and the
//! document disagree; each component's unit tests call [`Api::check`] so the disagreement shows
//! up at `cargo test` already. There is no `route` taking a `MethodRouter` (its methods cannot be
//! read back), no `nest` (a prefix is part of each path, exactly as the document writes it) and
//! no `fallback` (the kit answers unknown paths and methods the same way for every component).
//!
//! The routes every process shares (`/healthz`, `/readyz`, `/metrics`, the document itself at
//! `/openapi.json` and `<prefix>/openapi.json`) are the kit's, added outside the `Api`, and are
//! not in the components' documents. Like every axum `get` route, a `GET` also answers `HEAD`.

use std::convert::Infallible;

use axum::extract::Request;
use axum::handler::Handler;
use axum::response::IntoResponse;
use axum::routing::{self, MethodRouter, Route};
use axum::Router;
use tower::{Layer, Service};

use super::check::{check, DocumentError, Operation};

/// A component's HTTP API: an axum router and the operations it serves, recorded as they are
/// added, with the document that must describe them. `S` is the handlers' state until
/// [`Api::with_state`] supplies it.
pub struct Api<S = ()> {
    router: Router<S>,
    operations: Vec<Operation>,
    document: &'static str,
    prefix: &'static str,
}

impl<S: Clone + Send + Sync + 'static> Api<S> {
    /// An API described by `document`, served at `/openapi.json` and, when `prefix` is not
    /// empty, at `<prefix>/openapi.json` (the gateway's route prefix, `/api/orders`, so clients
    /// find it through the one public address too).
    pub fn new(document: &'static str, prefix: &'static str) -> Self {
        Self {
            router: Router::new(),
            operations: Vec::new(),
            document,
            prefix,
        }
    }

    pub fn get<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("get", path, routing::get(handler))
    }

    pub fn post<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("post", path, routing::post(handler))
    }

    pub fn put<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("put", path, routing::put(handler))
    }

    pub fn patch<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("patch", path, routing::patch(handler))
    }

    pub fn delete<H: Handler<T, S>, T: 'static>(self, path: &str, handler: H) -> Self {
        self.add("delete", path, routing::delete(handler))
    }

    /// axum merges a second method on a path already routed into the same entry (and panics on
    /// the same method twice), so routes can be added one method at a time.
    fn add(mut self, method: &'static str, path: &str, route: MethodRouter<S>) -> Self {
        self.router = self.router.route(path, route);
        self.operations.push(Operation {
            method,
            path: path.to_string(),
        });
        self
    }

    /// Wraps every route added so far in `layer` (as [`Router::layer`]).
    pub fn layer<L>(mut self, layer: L) -> Self
    where
        L: Layer<Route> + Clone + Send + Sync + 'static,
        L::Service: Service<Request> + Clone + Send + Sync + 'static,
        <L::Service as Service<Request>>::Response: IntoResponse + 'static,
        <L::Service as Service<Request>>::Error: Into<Infallible> + 'static,
        <L::Service as Service<Request>>::Future: Send + 'static,
    {
        self.router = self.router.layer(layer);
        self
    }

    /// Adds `other`'s routes and operations (a part of the same API built over another state,
    /// which has been supplied): both are described by this API's document.
    pub fn merge(mut self, other: Api<S>) -> Self {
        self.router = self.router.merge(other.router);
        self.operations.extend(other.operations);
        self
    }

    /// Supplies the handlers' state (as [`Router::with_state`]); the operations stay recorded.
    pub fn with_state<S2>(self, state: S) -> Api<S2> {
        Api {
            router: self.router.with_state(state),
            operations: self.operations,
            document: self.document,
            prefix: self.prefix,
        }
    }

    /// The operations added so far, in the order they were added.
    pub fn operations(&self) -> &[Operation] {
        &self.operations
    }

    /// Whether the document describes exactly the operations served (see [`super::check`]).
    pub fn check(&self) -> Result<(), DocumentError> {
        check(self.document, &self.operations)
    }

    /// The router: every operation, and the document at its paths. For serving (the kit's
    /// [`crate::server::Service`] does it after [`Api::check`]) and for calling handlers in tests.
    pub fn into_router(self) -> Router<S> {
        self.router.merge(super::serve(self.prefix, self.document))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENT: &str = r#"{"openapi": "3.0.3", "paths": {"/a/{id}": {
        "parameters": [{"name": "id", "in": "path", "required": true}],
        "get": {"responses": {"200": {"description": "ok"}}},
        "delete": {"responses": {"204": {"description": "gone"}}}
    }}}"#;

    async fn ok() -> &'static str {
        "ok"
    }

    #[test]
    fn every_route_added_is_recorded_with_its_method() {
        let api: Api = Api::new(DOCUMENT, "")
            .get("/a/{id}", ok)
            .delete("/a/{id}", ok);
        let recorded: Vec<String> = api.operations().iter().map(|o| o.to_string()).collect();
        assert_eq!(recorded, ["GET /a/{id}", "DELETE /a/{id}"]);
        api.check().unwrap();
    }

    #[test]
    fn a_route_added_without_its_document_entry_fails_the_check() {
        let api: Api = Api::new(DOCUMENT, "")
            .get("/a/{id}", ok)
            .delete("/a/{id}", ok)
            .put("/a/{id}", ok);
        let error = api.check().unwrap_err();
        assert_eq!(error.problems, ["PUT /a/{id} is served but not documented"]);
    }

    #[tokio::test]
    async fn the_router_serves_the_routes_and_the_document() {
        use tower::ServiceExt;
        let router = Api::new(DOCUMENT, "/api/a")
            .get("/a/{id}", ok)
            .delete("/a/{id}", ok)
            .into_router();
        for (method, path, status) in [
            ("GET", "/a/1", 200),
            ("DELETE", "/a/1", 200),
            ("PUT", "/a/1", 405),
            ("GET", "/openapi.json", 200),
            ("GET", "/api/a/openapi.json", 200),
        ] {
            let request = Request::builder()
                .method(method)
                .uri(path)
                .body(axum::body::Body::empty())
                .unwrap();
            let answer = router.clone().oneshot(request).await.unwrap();
            assert_eq!(answer.status().as_u16(), status, "{method} {path}");
        }
    }
}
