//! The per-request path: route, authenticate, authorise, pick an instance, forward, retry.
//!
//! ```text
//! request ─> route match ─> token check ─> role check ─> body (bounded) ─> pick instance
//!        <─ response + x-served-by, x-request-id <─ forward (timeout) ─┘  └─ retry once elsewhere
//! ```
//!
//! A route split between versions (`deploy.rs`) first chooses the version, then balances over
//! that version's instances.
//!
//! gRPC calls and routes with `upstream_protocol = "h2c"` branch off after the role check to
//! [`Proxy::handle_h2`]: no body is read first (it streams to the instance over HTTP/2, see
//! `client_h2.rs`), so a retry is possible only while the request has not left the gateway.
//!
//! Nothing here blocks: the route table and the instance lists are atomic snapshots, token keys
//! are cached, and the only awaits are the client's body and the upstream call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::header::{ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::{Body as _, Incoming};
use stratus_kit::auth::Tokens;
use stratus_kit::trace::TraceContext;
use stratus_kit::Problem;

use crate::forward::attempt::{no_instance, Attempts};
use crate::forward::client::PooledBody;
use crate::forward::forwarder::Forwarder;
use crate::grpc;
use crate::headers::{self, is_websocket, ClientConnection, TRACEPARENT, X_REQUEST_ID};
use crate::report::Hop;
use crate::route::routes::{AuthMode, RequestView, Route, RouteTable};
use crate::upstream::instances::Upstreams;

mod edge;

pub type Body = Either<PooledBody, Full<Bytes>>;

pub struct Settings {
    pub max_body: usize,
    pub timeout: Duration,
    pub served_by: bool,
    /// Redis for rate limits shared across gateways (None: each gateway limits alone).
    pub rate_limit_redis: Option<String>,
    /// How long one shared rate-limit decision may wait for Redis.
    pub rate_limit_redis_timeout: Duration,
}

/// What every worker thread shares: the route table, the instances, the token keys.
pub struct Shared {
    /// Where hop records go (None when `STRATUS_EVENTS=off`).
    pub reporter: Option<stratus_kit::events::EventReporter>,
    pub routes: ArcSwap<RouteTable>,
    pub upstreams: Arc<Upstreams>,
    pub tokens: Arc<Tokens>,
    pub settings: Settings,
    /// Mutual TLS to the instances, for every worker's pools (None: plaintext).
    pub upstream_tls: Option<Arc<crate::forward::upstream_tls::UpstreamTls>>,
    /// The edge cache every worker shares (used by routes with `cache = { ... }`).
    pub edge_cache: crate::edge_cache::EdgeCache,
    /// Passes this gateway's purges to the others (None: no registry to find them in).
    pub purge_relay: Option<crate::purge_relay::PurgeRelay>,
}

impl Shared {
    /// Purges the edge cache here and, unless the purge came from another gateway, there too.
    pub fn purge(&self, purge: crate::edge_cache::Purge, from_a_peer: bool) {
        self.edge_cache.purge(&purge);
        if let (false, Some(relay)) = (from_a_peer, &self.purge_relay) {
            relay.relay(purge);
        }
    }
}

/// One worker thread's proxy: the shared state plus a connection pool of its own, so a request
/// and the upstream connection serving it stay on one thread.
pub struct Proxy {
    pub shared: Arc<Shared>,
    /// This worker's upstream connections, and the attempts and relay over them.
    forwarder: Forwarder,
    /// This worker's buffer of hop records for the event sink (None when reporting is off).
    pub events: Option<crate::report::WorkerEvents>,
    /// This worker's connection to the shared rate limits (None: limits are local only).
    shared_limits: Option<crate::route::ratelimit_redis::SharedLimits>,
    /// The `Arc` this proxy lives in, for tasks of its own (the edge cache's refreshes).
    me: std::sync::Weak<Proxy>,
}

impl Proxy {
    /// Called on the worker's own runtime: the pool's sweeper runs there.
    pub fn new(
        shared: Arc<Shared>,
        connect_timeout: Duration,
        body_idle_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new_cyclic(|me| Self::build(shared, connect_timeout, body_idle_timeout, me.clone()))
    }

    fn build(
        shared: Arc<Shared>,
        connect_timeout: Duration,
        body_idle_timeout: Duration,
        me: std::sync::Weak<Proxy>,
    ) -> Self {
        let events = shared
            .reporter
            .clone()
            .map(crate::report::WorkerEvents::new);
        let forwarder = Forwarder::new(
            connect_timeout,
            body_idle_timeout,
            shared.upstream_tls.clone(),
            shared.settings.served_by,
        );
        let shared_limits = shared.settings.rate_limit_redis.as_deref().map(|url| {
            crate::route::ratelimit_redis::SharedLimits::start(
                url,
                shared.settings.rate_limit_redis_timeout,
            )
        });
        Self {
            shared,
            forwarder,
            events,
            shared_limits,
            me,
        }
    }

    pub async fn handle(
        &self,
        request: Request<Incoming>,
        client: &ClientConnection,
    ) -> Response<Body> {
        let peer = client.peer;
        let started = Instant::now();
        let (mut parts, body) = request.into_parts();
        let parent = parts
            .headers
            .get(&TRACEPARENT)
            .and_then(|v| v.to_str().ok())
            .and_then(TraceContext::parse);
        let trace = parent
            .map(|p| p.child())
            .unwrap_or_else(TraceContext::new_root);
        let traceparent = trace.header_bytes();
        // A request without an id of its own takes its trace id (bytes 3..35 of traceparent).
        let request_id = headers::request_id(&parts.headers, || {
            HeaderValue::from_bytes(&traceparent[3..35]).unwrap_or(HeaderValue::from_static("-"))
        });

        let host_line = match headers::host_line(parts.version, &parts.headers) {
            Ok(host) => host.cloned(),
            Err(detail) => return finish(problem(Problem::bad_request(detail)), &request_id),
        };
        if parts.method == Method::CONNECT {
            // The gateway routes requests; it is not a forward proxy that opens tunnels. (An
            // empty `Allow`: no method is served for an authority-form target.)
            let mut refused = problem(Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not supported: the gateway is not a forward proxy",
            ));
            refused
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static(""));
            return finish(refused, &request_id);
        }
        let routes = self.shared.routes.load();
        let host = routing_host(&routes, &parts);
        let view = RequestView {
            method: &parts.method,
            path: parts.uri.path(),
            host: host.as_deref(),
            headers: &parts.headers,
        };
        let Some(route) = routes.find(&view) else {
            if grpc::is_grpc(&parts.headers) {
                let unrouted = Problem::not_found("no route matches this method");
                return finish(refusal(true, unrouted), &request_id);
            }
            return finish(no_route(&routes, &view), &request_id);
        };
        if let Some(limiter) = &route.rate_limit {
            let verdict = match &self.shared_limits {
                None => limiter.check(peer.ip()),
                Some(shared) => shared.check(&route.name, limiter, peer.ip()).await,
            };
            if let Err(limited) = verdict {
                route.metrics.record(429, 0.0);
                let seconds = limited.retry_after.as_secs_f64().ceil().max(1.0) as u64;
                let rejection = Problem::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate limit exceeded; slow down",
                )
                .with_retry_after(seconds);
                let grpc = grpc::is_grpc(&parts.headers);
                return finish(refusal(grpc, rejection), &request_id);
            }
        }
        if let Err(rejection) = self.authorize(route, &parts.headers).await {
            let grpc = grpc::is_grpc(&parts.headers);
            return finish(refusal(grpc, rejection), &request_id);
        }
        // HTTP/2 to the instance, bodies streamed: the route asks for it, or this is gRPC (which
        // only ever comes over HTTP/2, so an HTTP/1.1 request never looks at its content type).
        if route.h2c || (parts.version == http::Version::HTTP_2 && grpc::is_grpc(&parts.headers)) {
            let call = Call {
                started,
                trace,
                parent,
                traceparent,
                request_id,
            };
            // Boxed: inline, its state would make every HTTP/1.1 request's future larger.
            return Box::pin(self.handle_h2(route, parts, body, client, call)).await;
        }
        // The edge cache answers what it holds; a miss goes on, leading its key's flight.
        let plan = match &route.cache {
            Some(cache) => edge::plan(cache, &parts),
            None => crate::edge_cache::Plan::Bypass,
        };
        let mut miss = None;
        if let Some(cache) = &route.cache {
            match self.edge_lookup(route, &plan, &parts, client).await {
                edge::Lookup::Answered(response, outcome) => {
                    cache.count(outcome);
                    self.answered(
                        route,
                        Hop {
                            trace,
                            parent,
                            route: &route.name,
                            route_encoded: &route.event_name,
                            method: &parts.method,
                            status: response.status().as_u16(),
                            elapsed: started.elapsed(),
                            retries: 0,
                            cache: Some("hit"),
                        },
                    );
                    return finish(response, &request_id);
                }
                edge::Lookup::Fetch(fetch) => miss = Some(fetch),
            }
        }
        let body = match read_body(body, self.shared.settings.max_body).await {
            Ok(body) => body,
            Err(rejection) => return finish(problem(rejection), &request_id),
        };

        // A WebSocket upgrade keeps its Upgrade header, which is otherwise hop-by-hop, and takes
        // the client side of the connection along for the tunnel. Only WebSocket: after a 101
        // the gateway copies bytes blindly, so an upgrade to anything else (`h2c` above all)
        // would let every later request on that connection past routing, tokens and rate
        // limits. Any other Upgrade is dropped as hop-by-hop and the request served as usual.
        let upgrade = parts
            .headers
            .get(http::header::UPGRADE)
            .filter(|value| is_websocket(value))
            .cloned()
            .filter(|_| {
                parts.version == http::Version::HTTP_11
                    && headers::connection_has(&parts.headers, "upgrade")
            });
        let client_upgrade = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        headers::strip_hop_by_hop(&mut parts.headers);
        if let Some(protocol) = &upgrade {
            parts.headers.insert(
                http::header::CONNECTION,
                HeaderValue::from_static("upgrade"),
            );
            parts
                .headers
                .insert(http::header::UPGRADE, protocol.clone());
        }
        // The forwarding headers, the request id and the trace context are written into the
        // request head as it goes out (see `Forwarding`), not added to the map.
        let host = headers::or_authority(host_line, &parts.uri);
        let forwarding = headers::Forwarding {
            client,
            headers: &parts.headers,
            host: host.as_ref(),
            request_id: &request_id,
            traceparent: &traceparent,
        };

        let mut retries = 0;
        let response = self
            .forward(
                route,
                &parts,
                &forwarding,
                body,
                client_upgrade,
                peer.ip(),
                &mut retries,
            )
            .await;
        let mut cached = None;
        let mut response = match &route.cache {
            Some(cache) => {
                let miss = miss.unwrap_or_else(|| edge::Miss::alone(&self.shared.edge_cache));
                let (response, outcome) = self
                    .edge_keep(cache, &plan, &parts.headers, response, miss)
                    .await;
                cache.count(outcome);
                cached = match outcome {
                    crate::edge_cache::Outcome::Hit | crate::edge_cache::Outcome::Stale => {
                        Some("hit")
                    }
                    crate::edge_cache::Outcome::Miss => Some("miss"),
                    crate::edge_cache::Outcome::Bypass => None,
                };
                response
            }
            None => response,
        };
        if routes.caches {
            self.edge_purge_after_write(&routes, &parts.method, parts.uri.path(), &mut response);
        }
        self.answered(
            route,
            Hop {
                trace,
                parent,
                route: &route.name,
                route_encoded: &route.event_name,
                method: &parts.method,
                status: response.status().as_u16(),
                elapsed: started.elapsed(),
                retries,
                cache: cached,
            },
        );
        finish(response, &request_id)
    }

    /// A forwarded request's answer: the route's metrics, a line when it failed
    /// ([`crate::report::log_failed`]), and the hop record for the sink.
    fn answered(&self, route: &Route, hop: Hop<'_>) {
        route.metrics.record(hop.status, hop.elapsed.as_secs_f64());
        crate::report::log_failed(&hop, &route.service);
        if let Some(events) = &self.events {
            events.record(hop);
        }
    }

    /// The HTTP/2 path: the same header handling as HTTP/1.1, but the body streams to the
    /// instance as it arrives and the response's trailers come back.
    async fn handle_h2(
        &self,
        route: &Route,
        mut parts: http::request::Parts,
        body: Incoming,
        client: &ClientConnection,
        call: Call,
    ) -> Response<Body> {
        let grpc = grpc::is_grpc(&parts.headers);
        // A body is not read before it is sent, so it is not capped (a gRPC stream may run for
        // hours); one whose declared length is over the limit is still refused up front.
        let max = self.shared.settings.max_body;
        if body.size_hint().lower() > max as u64 {
            discard(body).await;
            let too_large = Problem::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over the limit of {max} bytes"),
            );
            return finish(refusal(grpc, too_large), &call.request_id);
        }
        let trailers = grpc || headers::accepts_trailers(&parts.headers);
        headers::strip_hop_by_hop(&mut parts.headers);
        // `te: trailers` is the one hop-by-hop header HTTP/2 keeps: gRPC servers look for it.
        if trailers {
            parts
                .headers
                .insert(http::header::TE, HeaderValue::from_static("trailers"));
        }

        let mut retries = 0;
        let method = parts.method.clone();
        let response = self
            .forward_h2(route, parts, body, client, &call, grpc, &mut retries)
            .await;
        self.answered(
            route,
            Hop {
                trace: call.trace,
                parent: call.parent,
                route: &route.name,
                route_encoded: &route.event_name,
                method: &method,
                status: response.status().as_u16(),
                elapsed: call.started.elapsed(),
                retries,
                cache: None,
            },
        );
        finish(response, &call.request_id)
    }

    /// Sends over HTTP/2 to one instance; when the request never left the gateway (no
    /// connection, or the connection closed before the request went out), to another.
    /// Anything else is not retried: the body has gone, and a gRPC call is not idempotent.
    #[allow(clippy::too_many_arguments)]
    async fn forward_h2(
        &self,
        route: &Route,
        mut parts: http::request::Parts,
        body: Incoming,
        client: &ClientConnection,
        call: &Call,
        grpc: bool,
        retries: &mut u32,
    ) -> Response<Body> {
        let Some(service_pool) = self.shared.upstreams.pool(&route.service) else {
            return refusal(grpc, no_instance(&route.service));
        };
        // Chosen on the request as the client sent it, as on the HTTP/1.1 path.
        let attempts = Attempts::new(
            route,
            &service_pool,
            &parts.headers,
            client.peer.ip(),
            self.shared.settings.timeout,
        );
        let host = headers::client_host(&parts);
        headers::add_forwarding(&mut parts.headers, client, host.as_ref());
        parts
            .headers
            .insert(X_REQUEST_ID.clone(), call.request_id.clone());
        if let Ok(value) = HeaderValue::from_bytes(&call.traceparent) {
            parts.headers.insert(TRACEPARENT.clone(), value);
        }
        let path = match upstream_path(&parts, route) {
            Ok(path) => path,
            Err(rejection) => return refusal(grpc, rejection),
        };
        let mut request = Request::new(body);
        *request.method_mut() = parts.method;
        *request.headers_mut() = parts.headers;
        match self
            .forwarder
            .http2(&attempts, request, path, retries)
            .await
        {
            Ok(response) => response.map(Either::Left),
            Err(rejection) => refusal(grpc, rejection),
        }
    }

    async fn authorize(&self, route: &Route, headers: &http::HeaderMap) -> Result<(), Problem> {
        if route.auth == AuthMode::None {
            return Ok(());
        }
        let token = match headers.get(AUTHORIZATION) {
            None if route.auth == AuthMode::Optional => return Ok(()),
            None => return Err(Problem::unauthorized("a bearer token is required")),
            Some(value) => bearer_token(value)?,
        };
        let claims = self.shared.tokens.verify_shared(token).await?;
        let restricted = !route.roles.is_empty() || !route.permissions.is_empty();
        let allowed = !restricted
            || claims.has_role("admin")
            || route.roles.iter().any(|r| claims.has_role(r))
            || route.permissions.iter().any(|p| claims.has_permission(p));
        if !allowed {
            let mut needs: Vec<String> =
                route.roles.iter().map(|r| format!("role `{r}`")).collect();
            needs.extend(
                route
                    .permissions
                    .iter()
                    .map(|p| format!("permission `{p}`")),
            );
            return Err(Problem::forbidden(format!(
                "this route needs one of: {}",
                needs.join(", ")
            )));
        }
        Ok(())
    }

    /// Sends to one instance; on a failure that allows it, once more to another.
    #[allow(clippy::too_many_arguments)]
    async fn forward(
        &self,
        route: &Route,
        parts: &http::request::Parts,
        forwarding: &headers::Forwarding<'_>,
        body: Bytes,
        client_upgrade: Option<hyper::upgrade::OnUpgrade>,
        client: std::net::IpAddr,
        retries: &mut u32,
    ) -> Response<Body> {
        let Some(service_pool) = self.shared.upstreams.pool(&route.service) else {
            return problem(no_instance(&route.service));
        };
        let attempts = Attempts::new(
            route,
            &service_pool,
            &parts.headers,
            client,
            self.shared.settings.timeout,
        );
        let target = match upstream_target(parts, route) {
            Ok(target) => target,
            Err(rejection) => return problem(rejection),
        };
        let forwarded = self.forwarder.http1(
            &attempts,
            parts,
            &target,
            forwarding,
            &body,
            client_upgrade,
            retries,
        );
        match forwarded.await {
            Ok(response) => response.map(Either::Left),
            Err(rejection) => problem(rejection),
        }
    }
}

/// What the HTTP/2 path carries over from the start of [`Proxy::handle`].
struct Call {
    started: Instant,
    trace: TraceContext,
    parent: Option<TraceContext>,
    traceparent: [u8; stratus_kit::trace::TRACEPARENT_LEN],
    request_id: HeaderValue,
}

/// The gateway's refusal as a gRPC client understands it (`grpc.rs`), or as a problem+json.
fn refusal(grpc: bool, rejection: Problem) -> Response<Body> {
    if grpc {
        grpc::trailers_only(&rejection).map(Either::Right)
    } else {
        problem(rejection)
    }
}

fn bearer_token(value: &HeaderValue) -> Result<&str, Problem> {
    let text = value
        .to_str()
        .map_err(|_| Problem::unauthorized("the Authorization header is not text"))?;
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err(Problem::unauthorized(
            "expected an `Authorization: Bearer <token>` header",
        )),
    }
}

/// Reads the client's body, refusing anything over `max` with 413.
///
/// A refused body that is not too outrageous is still read and thrown away before answering (a
/// "lingering close", as nginx does): a client still sending when the connection closes would
/// see a broken pipe instead of the 413 that tells it what went wrong.
async fn read_body(body: Incoming, max: usize) -> Result<Bytes, Problem> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is over the limit of {max} bytes"),
        )
    };
    if body.size_hint().lower() > max as u64 {
        discard(body).await;
        return Err(too_large());
    }
    let mut body = body;
    let mut collected = bytes::BytesMut::new();
    loop {
        match body.frame().await {
            None => return Ok(collected.freeze()),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    if collected.len() + data.len() > max {
                        discard(body).await;
                        return Err(too_large());
                    }
                    collected.extend_from_slice(&data);
                }
            }
            Some(Err(_)) => return Err(Problem::bad_request("the request body could not be read")),
        }
    }
}

/// Reads and drops up to 32 MiB for at most 2 s.
async fn discard(body: Incoming) {
    const LIMIT: usize = 32 * 1024 * 1024;
    if body.size_hint().lower() > LIMIT as u64 {
        return;
    }
    let drain = Limited::new(body, LIMIT).collect();
    let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
}

/// The host routes match on: worth lower-casing only when some route matches on it.
fn routing_host(routes: &RouteTable, parts: &http::request::Parts) -> Option<String> {
    if routes.matches_hosts {
        request_host(parts)
    } else {
        None
    }
}

/// The request's host, lower case and without a port: the URI's authority (HTTP/2) or the
/// `Host` header (HTTP/1.1).
fn request_host(parts: &http::request::Parts) -> Option<String> {
    let host = match parts.uri.authority() {
        Some(authority) => authority.host(),
        None => {
            let host = parts.headers.get(http::header::HOST)?.to_str().ok()?;
            match host.strip_prefix('[') {
                // An IPv6 literal: `[::1]:8080`.
                Some(rest) => rest.split(']').next().unwrap_or(rest),
                None => host.split(':').next().unwrap_or(host),
            }
        }
    };
    Some(host.to_ascii_lowercase())
}

/// [`upstream_target`] as a parsed path for an HTTP/2 request's URI (the client's own, a
/// reference count rather than a copy, when unchanged).
fn upstream_path(
    parts: &http::request::Parts,
    route: &Route,
) -> Result<http::uri::PathAndQuery, Problem> {
    let target = upstream_target(parts, route)?;
    match parts.uri.path_and_query() {
        Some(original) if target == original.as_str() => Ok(original.clone()),
        _ => http::uri::PathAndQuery::try_from(target.as_ref())
            .map_err(|_| Problem::bad_request("the request path is not valid")),
    }
}

/// The path and query to send to the instance: the client's, or with the route's prefix
/// stripped (checked again if rewritten, as it goes on the wire as it is).
fn upstream_target<'a>(
    parts: &'a http::request::Parts,
    route: &Route,
) -> Result<std::borrow::Cow<'a, str>, Problem> {
    let original = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let target = route.upstream_path(original);
    if let std::borrow::Cow::Owned(rewritten) = &target {
        http::uri::PathAndQuery::try_from(rewritten.as_str())
            .map_err(|_| Problem::bad_request("the request path is not valid"))?;
    }
    Ok(target)
}

/// 405 with `Allow` when routes take this path for other methods (RFC 9110 15.5.6), else 404.
fn no_route(routes: &RouteTable, view: &RequestView<'_>) -> Response<Body> {
    let allowed = routes.allowed_methods(view);
    if allowed.is_empty() {
        return problem(Problem::not_found("no route matches this path"));
    }
    let list = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = problem(Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{} is not routed here; this path takes {list}", view.method),
    ));
    if let Ok(value) = HeaderValue::from_str(&list) {
        response.headers_mut().insert(ALLOW, value);
    }
    response
}

fn problem(problem: Problem) -> Response<Body> {
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(problem.to_json()))));
    *response.status_mut() = problem.status();
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static(stratus_kit::problem::CONTENT_TYPE),
    );
    if let Some(seconds) = problem.retry_after() {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if problem.status == 401 {
        headers.insert(
            http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
    }
    headers.remove(CONTENT_LENGTH);
    response
}

fn finish(mut response: Response<Body>, request_id: &HeaderValue) -> Response<Body> {
    response
        .headers_mut()
        .insert(X_REQUEST_ID.clone(), request_id.clone());
    response
}
