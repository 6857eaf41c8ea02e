//! Running a service: bind, register, serve, and on SIGTERM leave cleanly.
//!
//! The shutdown order is what makes rollouts lose no requests: first readiness fails and the
//! instance leaves the registry (gateways watching the registry stop choosing it at once), then it
//! keeps serving for the drain period so requests already routed to it still land, then it stops
//! accepting and finishes what is in flight, and after the grace period it exits regardless.

use std::sync::Arc;

use anyhow::Context;
use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::Router;
use stratus_identity::Mode;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::config::CommonArgs;
use crate::events::EventReporter;
use crate::health::Health;
use crate::identity::Peer;
use crate::listener::{self, Remote};
use crate::model::Registration;
use crate::openapi::Api;
use crate::registration::Registrar;
use crate::registry_client::RegistryClient;
use crate::trace::TraceContext;
use crate::{metrics, problem};

/// What the kit needs to know to run one component.
pub struct Service {
    pub name: String,
    pub port: u16,
    /// Whether to register with the registry (everything but the registry itself does).
    pub register: bool,
    pub health: Health,
    /// Whether to report a record per request to the event sink (when `STRATUS_EVENTS` is on).
    events: bool,
    /// Registered with the instance (`broker = nats|sqlite`: the dashboard names the broker).
    metadata: std::collections::BTreeMap<String, String>,
    /// Paths a caller without a certificate may reach when mTLS is required (an orchestrator's
    /// probes; the registry's bootstrap routes).
    open_paths: Vec<&'static str>,
    /// Whether every service of the mesh may call this one (the registry, the sink, auth),
    /// whatever `STRATUS_ALLOWED_CALLERS` says.
    serves_the_mesh: bool,
    /// Where an admin's access token is an operator credential: the token checker.
    operator_tokens: Option<Arc<crate::auth::Tokens>>,
    /// Whether GET answers get ETags and `Cache-Control` (crate::http_cache).
    client_cache: bool,
}

impl Service {
    pub fn new(name: impl Into<String>, port: u16) -> Self {
        Self {
            name: name.into(),
            port,
            register: true,
            health: Health::new(),
            events: true,
            // Every kit service serves `/metrics` on its port (`with_kit_routes`): said in the
            // registration, so Prometheus finds each instance through the registry.
            metadata: [(
                crate::model::METRICS_PATH.to_string(),
                "/metrics".to_string(),
            )]
            .into(),
            open_paths: vec!["/healthz", "/readyz"],
            serves_the_mesh: false,
            operator_tokens: None,
            client_cache: true,
        }
    }

    /// Takes an admin's access token from a caller without a certificate as an operator
    /// credential (`operator_token`): for the ports that serve an admin or query API.
    pub fn taking_operator_tokens(mut self, tokens: Arc<crate::auth::Tokens>) -> Self {
        self.operator_tokens = Some(tokens);
        self
    }

    /// Takes calls from every service of the mesh (infrastructure that authorizes per request).
    pub fn serving_the_mesh(mut self) -> Self {
        self.serves_the_mesh = true;
        self
    }

    /// Lets a caller with no certificate reach `path` when mTLS is required.
    pub fn open_path(mut self, path: &'static str) -> Self {
        self.open_paths.push(path);
        self
    }

    /// Adds `key = value` to the instance's registration metadata.
    pub fn with_metadata(mut self, key: &str, value: &str) -> Self {
        self.metadata.insert(key.to_string(), value.to_string());
        self
    }

    /// Never reports requests to the event sink (the sink itself, which would report to itself).
    /// No ETags or `Cache-Control` on this service's answers: for APIs whose clients are
    /// machines with a versioning of their own (the registry's blocking queries carry its
    /// index), where hashing every watcher's answer would be work for nobody.
    pub fn without_client_cache(mut self) -> Self {
        self.client_cache = false;
        self
    }

    pub fn without_events(mut self) -> Self {
        self.events = false;
        self
    }

    pub fn unregistered(mut self) -> Self {
        self.register = false;
        self
    }

    /// Adds the kit's routes and layers to `api`, binds, registers and serves until SIGTERM.
    pub async fn run(self, common: &CommonArgs, api: Api) -> anyhow::Result<()> {
        let listener = TcpListener::bind((common.bind, self.port))
            .await
            .with_context(|| format!("binding {}:{}", common.bind, self.port))?;
        self.run_on(listener, common, api).await
    }

    /// As [`Service::run`], on a listener already bound. A component whose router and OpenAPI
    /// document disagree does not start: what it says about itself would be untrue.
    pub async fn run_on(
        self,
        listener: TcpListener,
        common: &CommonArgs,
        api: Api,
    ) -> anyhow::Result<()> {
        api.check()
            .with_context(|| format!("{} cannot start", self.name))?;
        let local = listener.local_addr().context("reading the bound address")?;
        let id = common.instance_id();
        let mut app = with_kit_routes(api.into_router(), &self.health, self.client_cache);
        if !self.serves_the_mesh {
            // Inside the event record, so a refused call is on the sink with its caller.
            app = app.layer(middleware::from_fn_with_state(
                Arc::new(crate::intentions::Intentions::new(
                    &self.name,
                    &common.mesh.allowed_callers,
                    &self.open_paths,
                )),
                crate::intentions::enforce,
            ));
        }
        if self.events && common.events {
            match EventReporter::with_queue(
                &common.events_url,
                &self.name,
                &id,
                common.events_queue,
            ) {
                Ok(reporter) => {
                    app = app.layer(middleware::from_fn_with_state(
                        reporter,
                        crate::events::record_requests,
                    ));
                }
                Err(error) => tracing::warn!(%error, "not reporting to the event sink"),
            }
        }
        tracing::info!(service = %self.name, id = %id, address = %local, "listening");

        let registrar = if self.register {
            let client = RegistryClient::new(&common.registry_url)?;
            let registration = Registration {
                address: common.advertised_address(),
                port: local.port(),
                version: Some(common.version.clone()),
                metadata: self.metadata.clone(),
                ttl_seconds: Some(common.ttl.as_secs_f64()),
                check: common
                    .health_check
                    .then(|| crate::model::Check::Http("/healthz".into())),
                interval: common
                    .health_check
                    .then(|| format!("{}ms", common.health_interval.as_millis())),
                timeout: common.health_check.then(|| {
                    let timeout = common.health_timeout.min(common.health_interval);
                    format!("{}ms", timeout.as_millis())
                }),
            };
            Some(Registrar::start(client, &self.name, &id, registration))
        } else {
            None
        };
        self.health.set_ready(true);

        let draining = Arc::new(Notify::new());
        let graceful = {
            let health = self.health.clone();
            let draining = draining.clone();
            let drain = common.drain;
            async move {
                crate::shutdown::signal().await;
                health.set_ready(false);
                if let Some(registrar) = registrar {
                    registrar.deregister().await;
                }
                tokio::time::sleep(drain).await;
                tracing::info!("draining in-flight requests");
                draining.notify_one();
            }
        };
        let mesh = crate::mesh::current();
        let app = app.layer(middleware::from_fn_with_state(
            Arc::new(Identify {
                required: mesh.mode() == Mode::Required,
                open_paths: self.open_paths.clone(),
                // With the mesh off nobody's identity is checked: nothing for a token to prove.
                operator_tokens: self.operator_tokens.clone().filter(|_| mesh.is_on()),
                trust_domain: mesh.trust_domain().to_string(),
            }),
            identify,
        ));
        let incoming = listener::incoming(
            listener,
            mesh.mode(),
            mesh.server_config(),
            mesh.trust_domain(),
        )
        .context("serving with mutual TLS")?;
        let server = axum::serve(
            incoming,
            app.into_make_service_with_connect_info::<Remote>(),
        )
        .with_graceful_shutdown(graceful);
        let grace = common.grace;
        tokio::select! {
            result = server => result.context("serving")?,
            _ = async { draining.notified().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("grace period over; exiting with requests still in flight");
            }
        }
        tracing::info!("stopped");
        Ok(())
    }
}

/// The routes and layers every service has: health, readiness, metrics, problem+json for unknown
/// paths and methods, ETags and `Cache-Control` on reads, request metrics, and a tracing span
/// carrying the trace id.
fn with_kit_routes(app: Router, health: &Health, client_cache: bool) -> Router {
    let app = app
        .merge(health.routes())
        .merge(metrics::routes())
        .fallback(problem::not_found)
        .method_not_allowed_fallback(|| async {
            problem::Problem::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "this method is not allowed here",
            )
        });
    // Inside the request metrics, so a 304 is counted as one.
    let app = if client_cache {
        app.layer(middleware::from_fn(crate::http_cache::revalidate))
    } else {
        app
    };
    app.layer(middleware::from_fn(metrics::track))
        .layer(middleware::from_fn(trace_span))
}

/// What [`identify`] needs to know.
struct Identify {
    required: bool,
    open_paths: Vec<&'static str>,
    /// Set where an admin's access token is an operator credential (and the mesh is on).
    operator_tokens: Option<Arc<crate::auth::Tokens>>,
    trust_domain: String,
}

/// Puts the caller's address (`ConnectInfo<SocketAddr>`, as handlers take it) and its verified
/// identity ([`Peer`]) in the request; with mTLS required, a caller with no certificate is
/// refused here (401) unless the path is open to it or, where the service takes them, it shows
/// an admin's access token (`operator_token`: then it is an operator, and a token that is not
/// an admin's valid one is refused here, 401 or 403). With mTLS optional a token only ever
/// raises a caller to operator; one that does not is left to the handler, as before.
async fn identify(
    State(settings): State<Arc<Identify>>,
    ConnectInfo(remote): ConnectInfo<Remote>,
    mut request: Request,
    next: Next,
) -> Response {
    request.extensions_mut().insert(ConnectInfo(remote.address));
    if let Some(id) = remote.peer {
        // Mesh traffic: the certificate says it all, nothing more is looked at.
        request.extensions_mut().insert(Peer(id));
        return next.run(request).await;
    }
    if settings.open_paths.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let shown = match &settings.operator_tokens {
        Some(tokens) => {
            crate::operator_token::check(tokens, &settings.trust_domain, request.headers()).await
        }
        None => Ok(crate::operator_token::Shown::Nothing),
    };
    match shown {
        Ok(crate::operator_token::Shown::Operator(peer, token)) => {
            log_operator_token(&request, &peer);
            request.extensions_mut().insert(peer);
            request.extensions_mut().insert(token);
        }
        Ok(crate::operator_token::Shown::Nothing) if settings.required => {
            let detail = if settings.operator_tokens.is_some() {
                "this port takes a Stratus certificate (mutual TLS) or an admin's access token \
                 (Authorization: Bearer)"
            } else {
                "this port takes only callers with a Stratus certificate (mutual TLS)"
            };
            return problem::Problem::unauthorized(detail).into_response();
        }
        Err(refusal) if settings.required => {
            tracing::info!(
                status = refusal.status().as_u16(),
                method = %request.method(),
                path = %request.uri().path(),
                "an access token refused as an operator credential"
            );
            return refusal.into_response();
        }
        Ok(crate::operator_token::Shown::Nothing) | Err(_) => {}
    }
    next.run(request).await
}

/// Who did what with an access token: a change at info (the audit trail a certificate's holder
/// leaves by being issued one), a read at debug.
///
/// The operator's name is the token's subject (a user id: no email or other personal data in
/// the logs).
fn log_operator_token(request: &Request, peer: &Peer) {
    let method = request.method();
    let path = request.uri().path();
    if method.is_safe() {
        tracing::debug!(operator = %peer.0, %method, %path, "an admin's access token as an operator");
    } else {
        tracing::info!(operator = %peer.0, %method, %path, "an admin's access token as an operator");
    }
}

/// The request's span: its lines carry the trace and this hop's span. With event reporting on,
/// that is the hop the record reports (`trace::Hop`, put in by the outer event layer, so a
/// request without a `traceparent` has the new trace's id too); without it, the caller's trace.
async fn trace_span(request: Request, next: Next) -> Response {
    let hop = request
        .extensions()
        .get::<crate::trace::Hop>()
        .map(|hop| hop.0);
    let (trace_id, span_id) = match hop {
        Some(hop) => (hop.trace_id_hex(), hop.span_id_hex()),
        None => {
            let caller = request
                .headers()
                .get("traceparent")
                .and_then(|v| v.to_str().ok())
                .and_then(TraceContext::parse);
            (
                caller.map(|c| c.trace_id_hex()).unwrap_or_default(),
                String::new(),
            )
        }
    };
    let span = tracing::info_span!(
        "request",
        trace_id = %trace_id,
        span_id = %span_id,
        method = %request.method(),
        path = %request.uri().path()
    );
    next.run(request).instrument(span).await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        common: CommonArgs,
    }

    #[tokio::test]
    async fn a_component_whose_document_lacks_a_route_does_not_start() {
        let common = Cli::parse_from(["test"]).common;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api: Api =
            Api::new(r#"{"openapi": "3.0.3", "paths": {}}"#, "").get("/a", || async { "a" });
        let service = Service::new("test", 0).unregistered().without_events();
        // Serving would not end on its own: time out rather than hang if the check is skipped.
        let run = service.run_on(listener, &common, api);
        let error = tokio::time::timeout(Duration::from_secs(5), run)
            .await
            .expect("the service started serving")
            .unwrap_err();
        assert!(
            format!("{error:#}").contains("GET /a is served but not documented"),
            "{error:#}"
        );
    }
}
