//! The auth service's HTTP API, under `/auth`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use sqlx::AnyPool;
use stratus_kit::{Json, Problem};
#[allow(unused_imports)]
use stratus_token::Verifier;
use stratus_token::{now_unix, Claims, SigningKey};

use crate::users::{self, Created, User};
use crate::{keys, passwords, throttle, Args};

const MAX_BODY: usize = 16 * 1024;

pub struct AppState {
    pub(crate) pool: AnyPool,
    key: SigningKey,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    access_ttl: Duration,
    refresh_ttl: Duration,
    /// A real hash to verify against when the email is unknown, so a failed login takes as long
    /// whether or not the account exists.
    pub(crate) decoy_hash: String,
}

impl AppState {
    pub async fn new(pool: AnyPool, key: SigningKey, args: &Args) -> anyhow::Result<Self> {
        Ok(Self {
            pool,
            key,
            issuer: args.tokens.token_issuer.clone(),
            audience: args.tokens.token_audience.clone(),
            access_ttl: args.access_token_ttl,
            refresh_ttl: args.refresh_token_ttl,
            decoy_hash: passwords::hash("decoy password, never matches".into()).await?,
        })
    }
}

pub(crate) type Shared = State<Arc<AppState>>;

impl AppState {
    /// Signs an access token for `subject` with its roles and permissions.
    pub(crate) fn access_token(
        &self,
        subject: &str,
        email: Option<String>,
        roles: Vec<String>,
        permissions: Vec<String>,
    ) -> (String, u64) {
        let now = now_unix();
        let claims = Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: subject.to_string(),
            exp: now + self.access_ttl.as_secs(),
            iat: now,
            jti: stratus_kit::new_id(),
            email,
            roles,
            permissions,
        };
        (self.key.sign(&claims), self.access_ttl.as_secs())
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/auth/signup", post(signup))
        .route("/auth/login", post(login))
        .route("/auth/refresh", post(refresh))
        .route("/auth/logout", post(logout))
        .route("/auth/.well-known/jwks.json", get(jwks))
        .route("/auth/users", get(crate::admin::list_users))
        .route(
            "/auth/users/{id}/roles",
            axum::routing::put(crate::admin::set_roles),
        )
        .route("/auth/clients", post(crate::clients::create))
        .route("/auth/token", post(crate::clients::token))
        .route("/auth/revoke", post(crate::revocation::revoke))
        .route("/auth/introspect", post(crate::revocation::introspect))
        .route(
            "/auth/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
    #[serde(default)]
    #[allow(dead_code)]
    totp: Option<String>,
}

#[derive(Serialize)]
struct TokenResponse {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
}

async fn signup(
    State(state): Shared,
    Json(body): Json<Credentials>,
) -> Result<impl IntoResponse, Problem> {
    let email = users::normalize_email(&body.email).map_err(Problem::unprocessable)?;
    passwords::check_policy(&body.password).map_err(Problem::unprocessable)?;
    match users::create(&state.pool, &email, &body.password, &["customer"])
        .await
        .map_err(Problem::internal)?
    {
        Created::Yes(user) => Ok((
            StatusCode::CREATED,
            axum::Json(json!({"id": user.id, "email": user.email, "roles": user.roles})),
        )),
        Created::EmailTaken => Err(Problem::conflict(
            "an account with this email already exists",
        )),
    }
}

async fn login(
    State(state): Shared,
    axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Credentials>,
) -> Result<impl IntoResponse, Problem> {
    let invalid = || Problem::unauthorized("invalid email or password");
    let Ok(email) = users::normalize_email(&body.email) else {
        return Err(invalid());
    };
    if body.password.len() > 4 * passwords::MAX_LENGTH {
        return Err(invalid());
    }
    let keys = throttle::keys(&email, client_address(&headers, peer));
    throttle::check(&state.pool, &keys).await?;
    let user = users::by_email(&state.pool, &email)
        .await
        .map_err(Problem::internal)?;
    let stored = user
        .as_ref()
        .map_or(state.decoy_hash.clone(), |u| u.password_hash.clone());
    let matches = passwords::verify(body.password, stored).await;
    match user {
        Some(user) if matches => {
            tracing::info!(user = %user.id, "login");
            throttle::succeeded(&state.pool, &email).await?;
            let family = stratus_kit::new_id();
            Ok(axum::Json(issue(&state, &user, &family).await?))
        }
        _ => {
            throttle::failed(&state.pool, &keys).await?;
            Err(invalid())
        }
    }
}

/// The client's address: the last `X-Forwarded-For` entry (the one the gateway appended from
/// the connection), or the peer itself when called directly.
fn client_address(headers: &axum::http::HeaderMap, peer: std::net::SocketAddr) -> std::net::IpAddr {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.rsplit(',').next())
        .and_then(|ip| ip.trim().parse().ok())
        .unwrap_or(peer.ip())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: String,
}

/// Rotates a refresh token. A token used twice means it was stolen: the whole family (every token
/// descended from the same login) is revoked.
async fn refresh(
    State(state): Shared,
    Json(body): Json<RefreshBody>,
) -> Result<impl IntoResponse, Problem> {
    let invalid = || Problem::unauthorized("invalid refresh token");
    let hash = digest(&body.refresh_token);
    let row: Option<(String, String, i64, i64, i64)> = sqlx::query_as(
        "SELECT user_id, family_id, expires_at, used, revoked FROM refresh_tokens WHERE token_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(&state.pool)
    .await?;
    let Some((user_id, family, expires_at, used, revoked)) = row else {
        return Err(invalid());
    };
    if revoked != 0 || expires_at < now_unix() as i64 {
        return Err(invalid());
    }
    let claimed =
        sqlx::query("UPDATE refresh_tokens SET used = 1 WHERE token_hash = $1 AND used = 0")
            .bind(&hash)
            .execute(&state.pool)
            .await?;
    if used != 0 || !stratus_kit::db::changed(&claimed) {
        sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = $1")
            .bind(&family)
            .execute(&state.pool)
            .await?;
        tracing::warn!(user = %user_id, family = %family, "refresh token reused; family revoked");
        return Err(invalid());
    }
    let user = users::by_id(&state.pool, &user_id)
        .await
        .map_err(Problem::internal)?
        .ok_or_else(invalid)?;
    Ok(axum::Json(issue(&state, &user, &family).await?))
}

async fn logout(
    State(state): Shared,
    Json(body): Json<RefreshBody>,
) -> Result<StatusCode, Problem> {
    let hash = digest(&body.refresh_token);
    sqlx::query(
        "UPDATE refresh_tokens SET revoked = 1 WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
    )
    .bind(&hash)
    .execute(&state.pool)
    .await?;
    // RFC 7009: an unknown token is not an error.
    Ok(StatusCode::NO_CONTENT)
}

async fn jwks(State(state): Shared) -> Result<impl IntoResponse, Problem> {
    let jwks = keys::jwks(&state.pool).await.map_err(Problem::internal)?;
    Ok(([("cache-control", "public, max-age=60")], axum::Json(jwks)))
}

async fn openid_configuration(State(state): Shared) -> impl IntoResponse {
    axum::Json(json!({
        "issuer": state.issuer,
        "jwks_uri": "/auth/.well-known/jwks.json",
        "token_endpoint": "/auth/token",
        "revocation_endpoint": "/auth/revoke",
        "introspection_endpoint": "/auth/introspect",
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
        "grant_types_supported": ["password", "refresh_token", "client_credentials"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
    }))
}

async fn issue(state: &AppState, user: &User, family: &str) -> Result<TokenResponse, Problem> {
    let now = now_unix();
    let (access_token, _) = state.access_token(
        &user.id,
        Some(user.email.clone()),
        user.roles.clone(),
        vec![],
    );

    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let refresh_token = URL_SAFE_NO_PAD.encode(secret);
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at, used, revoked, created_at) VALUES ($1, $2, $3, $4, 0, 0, $5)",
    )
    .bind(digest(&refresh_token))
    .bind(&user.id)
    .bind(family)
    .bind((now + state.refresh_ttl.as_secs()) as i64)
    .bind(stratus_kit::now_rfc3339())
    .execute(&state.pool)
    .await?;
    Ok(TokenResponse {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: state.access_ttl.as_secs(),
    })
}

/// Refresh tokens are stored as SHA-256 digests: a leaked table cannot be replayed.
pub(crate) fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
