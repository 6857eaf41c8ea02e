//! Service accounts and the OAuth 2.0 client credentials grant (RFC 6749 section 4.4): a
//! service calling another service gets a token of its own, with its own roles and permissions.
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
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
}

pub async fn create(
    State(state): Shared,
    headers: HeaderMap,
    Json(body): Json<NewClient>,
) -> Result<impl IntoResponse, Problem> {
    let admin = require_admin(&state, &headers).await?;
    let name = body.name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(Problem::unprocessable("name must be 1-100 characters"));
    }
    check_names("role", &body.roles)?;
    check_names("permission", &body.permissions)?;
    let client_id = format!("svc-{}", stratus_kit::new_id());
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let secret = URL_SAFE_NO_PAD.encode(secret);
    let hash = passwords::hash(secret.clone())
        .await
        .map_err(Problem::internal)?;
    sqlx::query(
        "INSERT INTO clients (client_id, secret_hash, name, roles, permissions, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&client_id)
    .bind(&hash)
    .bind(name)
    .bind(body.roles.join(","))
    .bind(body.permissions.join(","))
    .bind(stratus_kit::now_rfc3339())
    .execute(&state.pool)
    .await?;
    tracing::info!(client = %client_id, by = %admin.sub, "service account created");
    Ok((
        StatusCode::CREATED,
        axum::Json(json!({
            "client_id": client_id,
            "client_secret": secret,
            "name": name,
            "roles": body.roles,
            "permissions": body.permissions,
        })),
    ))
}

#[derive(Deserialize)]
pub struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    #[allow(dead_code)]
    scope: Option<String>,
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
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

/// Authenticates a service account by HTTP Basic or form fields; `Ok(None)` when the
/// credentials are missing, unknown or wrong. Returns its id, roles and permissions.
pub(crate) async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    form_id: Option<String>,
    form_secret: Option<String>,
) -> Result<Option<(String, String, String)>, sqlx::Error> {
    let Some((client_id, secret)) = client_credentials(headers, form_id, form_secret) else {
        return Ok(None);
    };
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT secret_hash, roles, permissions FROM clients WHERE client_id = $1")
            .bind(&client_id)
            .fetch_optional(&state.pool)
            .await?;
    // An unknown client is checked against the decoy hash, so it takes as long as a wrong
    // secret and the answer time does not tell which client ids exist.
    let known = row.is_some();
    let (hash, roles, permissions) =
        row.unwrap_or_else(|| (state.decoy_hash.clone(), String::new(), String::new()));
    let valid = passwords::verify(secret, hash).await && known;
    Ok(valid.then_some((client_id, roles, permissions)))
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
    match form.grant_type.as_deref() {
        Some("client_credentials") => {}
        Some(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only client_credentials is served here",
            )
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is required",
            )
        }
    }
    let client = authenticate(
        &state,
        &headers,
        form.client_id.clone(),
        form.client_secret.clone(),
    )
    .await;
    let (client_id, roles, permissions) = match client {
        Ok(Some(client)) => client,
        Ok(None) => return oauth_unauthorized(),
        Err(error) => return Problem::internal(error).into_response(),
    };
    let split = |text: &str| {
        text.split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let (access_token, expires_in) =
        state.access_token(&client_id, None, split(&roles), split(&permissions));
    let mut response = axum::Json(json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": expires_in,
    }))
    .into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}
