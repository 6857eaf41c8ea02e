//! OAuth 2.0 clients and the token endpoint.
//!
//! Three kinds of client, all created by an admin at `POST /auth/clients`:
//! - `service` (the default): a service account for the client credentials grant (RFC 6749
//!   section 4.4): a service calling another service gets a token of its own, with its own
//!   roles and permissions;
//! - `confidential`: a third-party app with a secret (a server-side web app) for the
//!   authorization code grant (see `oauth.rs`);
//! - `public`: a third-party app that cannot keep a secret (a single-page or mobile app): the
//!   authorization code grant with PKCE and no secret at all.
//!
//! Apps register their exact redirect URIs and carry no roles of their own: their tokens act
//! for the user who signed in, with that user's roles.
//!
//! An admin creates a client (`POST /auth/clients`) and receives its secret once; the secret is
//! stored as an argon2id hash. The client then asks `POST /auth/token` with
//! `grant_type=client_credentials`, authenticating with HTTP Basic or form fields, as every
//! OAuth library does. Errors use the RFC 6749 shape (`{"error": "invalid_client"}`), which
//! those libraries understand.

use axum::extract::{Form, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use serde_json::json;
use stratus_kit::{Json, Problem};

use crate::admin::{check_names, require_admin};
use crate::api::{AppState, Shared};
use crate::passwords;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewClient {
    name: String,
    /// `service` (default), `confidential` or `public`.
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    redirect_uris: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
}

pub const MAX_REDIRECT_URIS: usize = 10;

/// Redirect URIs: absolute `https` URLs, or `http` on a loopback host (native and development
/// apps, RFC 8252 section 7.3); no fragment, no spaces (the stored list is space-separated).
fn check_redirect_uris(uris: &[String]) -> Result<(), Problem> {
    if uris.is_empty() || uris.len() > MAX_REDIRECT_URIS {
        return Err(Problem::unprocessable(format!(
            "an app needs 1 to {MAX_REDIRECT_URIS} redirect_uris"
        )));
    }
    for uri in uris {
        let host = |rest: &str| {
            let authority = rest.split(['/', '?']).next().unwrap_or_default();
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            match host.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default().to_string(),
                None => host.split(':').next().unwrap_or_default().to_string(),
            }
        };
        let ok = uri.len() <= 500
            && !uri.contains('#')
            && !uri.chars().any(|c| c.is_whitespace() || c.is_control())
            && match (uri.strip_prefix("https://"), uri.strip_prefix("http://")) {
                (Some(rest), _) => !host(rest).is_empty(),
                (_, Some(rest)) => matches!(host(rest).as_str(), "127.0.0.1" | "::1" | "localhost"),
                _ => false,
            };
        if !ok {
            return Err(Problem::unprocessable(format!(
                "`{}` is not an allowed redirect URI (https, or http on a loopback host; no fragment)",
                uri.chars().take(100).collect::<String>()
            )));
        }
    }
    Ok(())
}

pub async fn create(
    State(state): Shared,
    headers: HeaderMap,
    Json(body): Json<NewClient>,
) -> Result<impl IntoResponse, Problem> {
    let admin = require_admin(&state, &headers).await?;
    let name = body.name.trim();
    // 100 characters as sent, white space included (as the OpenAPI document says).
    if name.is_empty() || body.name.chars().count() > 100 {
        return Err(Problem::unprocessable("name must be 1-100 characters"));
    }
    let kind = body.kind.as_deref().unwrap_or("service");
    match kind {
        "service" => {
            check_names("role", &body.roles)?;
            check_names("permission", &body.permissions)?;
            if !body.redirect_uris.is_empty() {
                return Err(Problem::unprocessable(
                    "a service account has no redirect_uris (use kind public or confidential)",
                ));
            }
        }
        "public" | "confidential" => {
            check_redirect_uris(&body.redirect_uris)?;
            if !body.roles.is_empty() || !body.permissions.is_empty() {
                return Err(Problem::unprocessable(
                    "an app has no roles or permissions of its own: it acts for its users",
                ));
            }
        }
        _ => {
            return Err(Problem::unprocessable(
                "kind must be service, confidential or public",
            ))
        }
    }
    let client_id = match kind {
        "service" => format!("svc-{}", stratus_kit::new_id()),
        _ => format!("app-{}", stratus_kit::new_id()),
    };
    // A public client has no secret: its stored hash is empty, which no secret ever matches.
    let secret = (kind != "public").then(|| {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        URL_SAFE_NO_PAD.encode(secret)
    });
    let hash = match &secret {
        Some(secret) => passwords::hash(secret.clone())
            .await
            .map_err(Problem::internal)?,
        None => String::new(),
    };
    sqlx::query(
        "INSERT INTO clients (client_id, secret_hash, name, roles, permissions, created_at, kind, redirect_uris) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&client_id)
    .bind(&hash)
    .bind(name)
    .bind(body.roles.join(","))
    .bind(body.permissions.join(","))
    .bind(stratus_kit::now_rfc3339())
    .bind(kind)
    .bind(body.redirect_uris.join(" "))
    .execute(&state.pool)
    .await?;
    tracing::info!(client = %client_id, kind, by = %admin.sub, "client created");
    let mut created = json!({
        "client_id": client_id,
        "kind": kind,
        "name": name,
        "roles": body.roles,
        "permissions": body.permissions,
    });
    if let Some(secret) = secret {
        created["client_secret"] = json!(secret);
    }
    if kind != "service" {
        created["redirect_uris"] = json!(body.redirect_uris);
    }
    Ok((StatusCode::CREATED, axum::Json(created)))
}

#[derive(Deserialize)]
pub struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    #[allow(dead_code)]
    scope: Option<String>,
    // authorization_code
    code: Option<String>,
    redirect_uri: Option<String>,
    code_verifier: Option<String>,
    // refresh_token
    refresh_token: Option<String>,
}

pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let mut response = (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static("Basic realm=\"stratus\""),
        );
    }
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// An authenticated client.
pub(crate) struct Client {
    pub id: String,
    pub kind: String,
    pub roles: String,
    pub permissions: String,
}

/// Authenticates a client with a secret (a service account or a confidential app) by HTTP
/// Basic or form fields; `Ok(None)` when the credentials are missing, unknown or wrong.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    form_id: Option<String>,
    form_secret: Option<String>,
) -> Result<Option<Client>, sqlx::Error> {
    let Some((client_id, secret)) = client_credentials(headers, form_id, form_secret) else {
        return Ok(None);
    };
    let row: Option<(String, String, String, String)> = sqlx::query_as(
        "SELECT secret_hash, roles, permissions, kind FROM clients WHERE client_id = $1",
    )
    .bind(&client_id)
    .fetch_optional(&state.pool)
    .await?;
    // An unknown client (or a public one, which has no secret) is checked against the decoy
    // hash, so it takes as long as a wrong secret and the answer time does not tell which
    // client ids exist.
    let row = row.filter(|(hash, ..)| !hash.is_empty());
    let known = row.is_some();
    let (hash, roles, permissions, kind) = row.unwrap_or_else(|| {
        (
            state.decoy_hash.clone(),
            String::new(),
            String::new(),
            String::new(),
        )
    });
    let valid = passwords::verify(secret, hash).await && known;
    Ok(valid.then_some(Client {
        id: client_id,
        kind,
        roles,
        permissions,
    }))
}

/// Identifies the client of a code or refresh exchange: a public app by its `client_id` alone,
/// any other by its credentials. `Ok(None)` when that fails.
async fn identify(
    state: &AppState,
    headers: &HeaderMap,
    form: &TokenRequest,
) -> Result<Option<Client>, sqlx::Error> {
    let has_secret =
        form.client_secret.is_some() || headers.contains_key(axum::http::header::AUTHORIZATION);
    if !has_secret {
        let Some(client_id) = form.client_id.as_deref() else {
            return Ok(None);
        };
        let kind: Option<(String,)> =
            sqlx::query_as("SELECT kind FROM clients WHERE client_id = $1")
                .bind(client_id)
                .fetch_optional(&state.pool)
                .await?;
        return Ok(kind
            .filter(|(kind,)| kind == "public")
            .map(|(kind,)| Client {
                id: client_id.to_string(),
                kind,
                roles: String::new(),
                permissions: String::new(),
            }));
    }
    authenticate(
        state,
        headers,
        form.client_id.clone(),
        form.client_secret.clone(),
    )
    .await
}

pub(crate) fn oauth_unauthorized() -> Response {
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "client authentication failed",
    )
}

/// The client's id and secret from HTTP Basic (preferred by RFC 6749) or the form body.
fn client_credentials(
    headers: &HeaderMap,
    form_id: Option<String>,
    form_secret: Option<String>,
) -> Option<(String, String)> {
    let basic = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
        .and_then(|(_, encoded)| STANDARD.decode(encoded.trim()).ok())
        .and_then(|decoded| String::from_utf8(decoded).ok())
        .and_then(|text| {
            text.split_once(':')
                .map(|(id, secret)| (id.to_string(), secret.to_string()))
        });
    basic.or_else(|| Some((form_id?, form_secret?)))
}

/// `POST /auth/token`: the client credentials, authorization code and refresh token grants.
pub async fn token(
    State(state): Shared,
    headers: HeaderMap,
    form: Result<Form<TokenRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "expected a form-encoded body",
        );
    };
    let result = match form.grant_type.as_deref() {
        Some("client_credentials") => client_credentials_grant(&state, &headers, &form).await,
        Some("authorization_code") => authorization_code_grant(&state, &headers, &form).await,
        Some("refresh_token") => refresh_token_grant(&state, &headers, &form).await,
        Some(_) => Ok(oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "grant_type must be client_credentials, authorization_code or refresh_token",
        )),
        None => Ok(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type is required",
        )),
    };
    result.unwrap_or_else(IntoResponse::into_response)
}

fn no_store(value: serde_json::Value) -> Response {
    let mut response = axum::Json(value).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

fn invalid_grant(description: &str) -> Response {
    oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", description)
}

async fn client_credentials_grant(
    state: &AppState,
    headers: &HeaderMap,
    form: &TokenRequest,
) -> Result<Response, Problem> {
    let client = authenticate(
        state,
        headers,
        form.client_id.clone(),
        form.client_secret.clone(),
    )
    .await?;
    let Some(client) = client else {
        return Ok(oauth_unauthorized());
    };
    if client.kind != "service" {
        return Ok(oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "only service accounts may use the client credentials grant",
        ));
    }
    let split = |text: &str| {
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (access_token, expires_in) = state.access_token(
        &client.id,
        None,
        split(&client.roles),
        split(&client.permissions),
    );
    Ok(no_store(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
    })))
}

async fn authorization_code_grant(
    state: &AppState,
    headers: &HeaderMap,
    form: &TokenRequest,
) -> Result<Response, Problem> {
    let Some(client) = identify(state, headers, form).await? else {
        return Ok(oauth_unauthorized());
    };
    if client.kind == "service" {
        return Ok(oauth_error(
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            "service accounts use the client credentials grant",
        ));
    }
    let Some(code) = form.code.as_deref() else {
        return Ok(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "code is required",
        ));
    };
    let exchange = crate::oauth::redeem(
        state,
        code,
        &client.id,
        form.redirect_uri.as_deref(),
        form.code_verifier.as_deref(),
    )
    .await?;
    let (user_id, scope, nonce, family) = match exchange {
        crate::oauth::Exchange::Granted {
            user_id,
            scope,
            nonce,
            family,
        } => (user_id, scope, nonce, family),
        crate::oauth::Exchange::Invalid(reason) => {
            tracing::warn!(client = %client.id, reason, "authorization code refused");
            return Ok(invalid_grant(
                "the code is invalid, expired, used, or not yours",
            ));
        }
    };
    let Some(user) = crate::users::by_id(&state.pool, &user_id)
        .await
        .map_err(Problem::internal)?
    else {
        return Ok(invalid_grant("the user no longer exists"));
    };
    let grant = crate::api::Grant {
        client_id: Some(&client.id),
        scope: Some(&scope),
        nonce: nonce.as_deref(),
    };
    let tokens = crate::api::issue(state, &user, &family, &grant).await?;
    Ok(no_store(serde_json::to_value(tokens).unwrap_or_default()))
}

async fn refresh_token_grant(
    state: &AppState,
    headers: &HeaderMap,
    form: &TokenRequest,
) -> Result<Response, Problem> {
    let Some(token) = form.refresh_token.as_deref() else {
        return Ok(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "refresh_token is required",
        ));
    };
    // An app's refresh token only works for that app; a first-party one without a client.
    let client_id =
        if form.client_id.is_some() || headers.contains_key(axum::http::header::AUTHORIZATION) {
            match identify(state, headers, form).await? {
                Some(client) => Some(client.id),
                None => return Ok(oauth_unauthorized()),
            }
        } else {
            None
        };
    match crate::api::rotate_refresh_token(state, token, client_id.as_deref()).await? {
        Some(tokens) => Ok(no_store(serde_json::to_value(tokens).unwrap_or_default())),
        None => Ok(invalid_grant(
            "the refresh token is invalid, expired or revoked",
        )),
    }
}
