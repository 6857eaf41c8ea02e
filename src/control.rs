//! The control API of `stratus up`, on loopback only (`STRATUS_CONTROL_ADDR`), for the CLI:
//!
//! ```text
//! GET  /v1/status                      every component and replica (JSON)
//! POST /v1/scale    {"catalog": 3}     set replica counts (all or nothing)
//! POST /v1/rollout/{component}         rolling restart; progress lines as they happen
//! GET  /v1/logs?component=&lines=&follow=true&trace=&level=&grep=&files=true
//!                                      the replicas' logs, prefixed per replica: from the
//!                                      event sink when one runs, else (or with files) their files
//! ```
//!
//! Handlers hold no state of their own: they ask the supervisor over its channel.
//!
//! The API can stop and start everything, so loopback is not enough: every request shows the
//! control token (`Authorization: Bearer`), which `up` makes anew at each start and writes to
//! `<data dir>/control.token` (0600) for the CLI; any process that can read the data directory
//! is the operator. An admin's access token (from `/auth/login`) is an operator credential too,
//! as at every admin API: it is verified against auth's keys, which `up` fetches from the auth
//! it runs. The API is plain HTTP on loopback, so no certificate can be shown to it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use stratus_kit::auth::Tokens;
use stratus_kit::operator_token::ADMIN_ROLE;
use stratus_kit::problem::{Json, Problem};
use tokio::sync::mpsc;

use crate::launch::Launcher;
use crate::supervisor::{Handle, Refusal};

#[derive(Clone)]
struct Control {
    handle: Handle,
    launcher: Arc<Launcher>,
}

/// `token`: the control token. `tokens`: the checker for admins' access tokens (none: only the
/// control token opens the API).
pub fn router(
    handle: Handle,
    launcher: Arc<Launcher>,
    token: &str,
    tokens: Option<Arc<Tokens>>,
) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/scale", post(scale))
        .route("/v1/rollout/{component}", post(rollout))
        .route("/v1/logs", get(logs))
        .fallback(stratus_kit::problem::not_found)
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(Credentials {
                control_token: digest(token),
                tokens,
            }),
            require_token,
        ))
        .with_state(Control { handle, launcher })
}

/// What opens the control API.
struct Credentials {
    /// The control token's digest.
    control_token: [u8; 32],
    /// Checks an admin's access token.
    tokens: Option<Arc<Tokens>>,
}

/// The file `up` writes its control token to, in the data directory.
pub const TOKEN_FILE: &str = "control.token";

fn digest(text: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes()).into()
}

/// Refuses a request without the control token (compared as digests, so the time taken says
/// nothing about how much of a guess was right) or an admin's access token: 401 for anything
/// that is neither, 403 for a valid access token that is not an admin's.
async fn require_token(
    State(credentials): State<Arc<Credentials>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let shown = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    let Some(token) = shown else {
        return Problem::unauthorized(format!(
            "the control API needs the control token (Authorization: Bearer), which stratus up \
             writes to <data dir>/{TOKEN_FILE}, or an admin's access token"
        ))
        .into_response();
    };
    if digest(token) == credentials.control_token {
        return next.run(request).await;
    }
    let Some(tokens) = &credentials.tokens else {
        return Problem::unauthorized("the control token is not valid").into_response();
    };
    match tokens.verify_shared(token).await {
        Ok(claims) if claims.has_role(ADMIN_ROLE) => {
            if !request.method().is_safe() {
                // The audit trail of a change made with an access token: who (a user id).
                tracing::info!(operator = %claims.sub, method = %request.method(), path = %request.uri().path(), "the control API with an admin's access token");
            }
            next.run(request).await
        }
        Ok(_) => Problem::forbidden(
            "this access token is not an admin's: the control API takes the control token or \
             an admin's access token",
        )
        .into_response(),
        // Auth's keys out of reach: say so (503), rather than call a good token invalid.
        Err(problem) if problem.status() == StatusCode::SERVICE_UNAVAILABLE => {
            problem.into_response()
        }
        Err(_) => Problem::unauthorized(
            "neither the control token nor a valid access token (expired, or not signed by \
             this system's auth)",
        )
        .into_response(),
    }
}

fn stopping() -> Problem {
    Problem::unavailable("stratus up is stopping", 1)
}

impl From<Refusal> for Problem {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::NotFound(detail) => Problem::not_found(detail),
            Refusal::Invalid(detail) => Problem::unprocessable(detail),
            Refusal::Conflict(detail) => Problem::conflict(detail),
        }
    }
}

async fn status(State(control): State<Control>) -> Result<Response, Problem> {
    let mut view = control.handle.status().await.ok_or_else(stopping)?;
    let health = control.launcher.registry_health().await;
    for replica in view
        .components
        .iter_mut()
        .flat_map(|c| c.replicas.iter_mut())
    {
        replica.registry = health.get(&replica.instance_id).cloned();
        // The gateway's certificate is on its admin port; its client port is the public edge.
        let port = match replica.component.as_str() {
            "gateway" => Some(control.launcher.admin_port),
            "dns" => None,
            _ => replica.port,
        };
        if let Some(port) = port {
            if let Some((id, expires_in)) = control.launcher.presented_identity(port).await {
                replica.identity = Some(id);
                replica.certificate_expires_in = Some(expires_in);
            }
        }
    }
    Ok(axum::Json(view).into_response())
}

/// `{"replicas": {"catalog": 3, "orders": 2}}`
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScaleRequest {
    replicas: BTreeMap<String, usize>,
}

async fn scale(
    State(control): State<Control>,
    Json(request): Json<ScaleRequest>,
) -> Result<Response, Problem> {
    let done = control
        .handle
        .scale(request.replicas)
        .await
        .ok_or_else(stopping)??;
    Ok(axum::Json(serde_json::json!({ "scaled": done })).into_response())
}

async fn rollout(
    State(control): State<Control>,
    Path(component): Path<String>,
) -> Result<Response, Problem> {
    let plan = control
        .handle
        .begin_rollout(&component)
        .await
        .ok_or_else(stopping)??;
    let (say, lines) = mpsc::channel(16);
    // The rollout runs to the end even if the client hangs up.
    tokio::spawn(crate::rollout::run(
        control.handle.clone(),
        control.launcher.clone(),
        component,
        plan,
        say,
    ));
    Ok(text_stream(lines))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LogsQuery {
    component: Option<String>,
    lines: Option<usize>,
    #[serde(default)]
    follow: bool,
    trace: Option<String>,
    level: Option<String>,
    grep: Option<String>,
    /// Read the replicas' files even when the event sink runs.
    #[serde(default)]
    files: bool,
}

/// The replicas' lines: from the event sink when `up` runs one and it answers (every replica,
/// merged in time order), else from the replicas' files (the last lines of each, then what
/// each appends), said on a first line when the sink was expected.
async fn logs(
    State(control): State<Control>,
    query: Result<Query<LogsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, Problem> {
    let Query(query) = query.map_err(|e| Problem::bad_request(e.body_text()))?;
    let filter = crate::logs_filter::Filter::new(
        query.trace.as_deref(),
        query.level.as_deref(),
        query.grep.as_deref(),
    )
    .map_err(Problem::bad_request)?;
    let dir: PathBuf = control.launcher.log_dir.clone();
    let status = control.handle.status().await.ok_or_else(stopping)?;
    if let Some(component) = &query.component {
        let known = status.components.iter().any(|c| &c.name == component);
        if !known && crate::logs::files(&dir, Some(component)).is_empty() {
            return Err(Problem::not_found(format!(
                "there is no component `{component}` (see `stratus status`)"
            )));
        }
    }
    let lines = query.lines.unwrap_or(20).min(10_000);
    let (out, read) = mpsc::channel(256);
    let runs_sink = status.components.iter().any(|c| c.name == "events");
    if runs_sink && !query.files {
        let wanted = crate::logs_sink::Wanted {
            component: query.component.clone(),
            lines,
            follow: query.follow,
            filter: filter.clone(),
        };
        let mesh = stratus_kit::mesh::current();
        let sink = mesh.url(&format!(
            "http://127.0.0.1:{}",
            control.launcher.events_port
        ));
        let http = mesh.client("events").map_err(Problem::internal)?;
        match crate::logs_sink::open(&http, &sink, &wanted).await {
            Ok(opened) => {
                let labels = status
                    .components
                    .iter()
                    .flat_map(|c| &c.replicas)
                    .map(|r| {
                        (
                            r.instance_id.clone(),
                            format!("{}-{}", r.component, r.ordinal),
                        )
                    })
                    .collect();
                tokio::spawn(crate::logs_sink::send(opened, labels, out));
                return Ok(text_stream(read));
            }
            Err(why) => {
                let note = format!(
                    "-- the event sink did not answer ({why}): the replicas' files instead\n"
                );
                let _ = out.send(note).await;
            }
        }
    }
    tokio::spawn(crate::logs::stream(
        dir,
        query.component,
        lines,
        query.follow,
        filter,
        out,
    ));
    Ok(text_stream(read))
}

/// A `text/plain` body that sends each line as it arrives and ends when the sender is dropped.
fn text_stream(lines: mpsc::Receiver<String>) -> Response {
    let stream = futures_util::stream::unfold(lines, |mut lines| async move {
        lines
            .recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), lines))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream(stream),
    )
        .into_response()
}
