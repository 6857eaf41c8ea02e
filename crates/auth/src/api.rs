//! The auth service's HTTP API, under `/auth`.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use stratus_identity::Sealer;
use stratus_kit::db::Db;
use stratus_kit::openapi::Api;
use stratus_kit::{Json, Problem};
#[allow(unused_imports)]
use stratus_token::Verifier;
use stratus_token::{now_unix, Claims};

use crate::users::{self, Created, User};
use crate::{keys, mfa, passwords, throttle, Args};

const MAX_BODY: usize = 16 * 1024;

pub struct AppState {
    pub(crate) pool: Db,
    /// Opens and seals the secrets stored in `pool` (see `sealed.rs`).
    pub(crate) sealer: Arc<Sealer>,
    /// The key that signs, swapped on rotation (see `keys.rs`).
    pub(crate) key: Arc<keys::CurrentKey>,
    pub(crate) issuer: String,
    pub(crate) audience: String,
    pub(crate) access_ttl: Duration,
    pub(crate) refresh_ttl: Duration,
    /// A real hash to verify against when the email is unknown, so a failed login takes as long
    /// whether or not the account exists.
    pub(crate) decoy_hash: String,
}

impl AppState {
    pub async fn new(
        pool: Db,
        sealer: Arc<Sealer>,
        key: Arc<keys::CurrentKey>,
        args: &Args,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            pool,
            sealer,
            key,
            issuer: args.tokens.token_issuer.clone(),
            audience: args.tokens.token_audience.clone(),
            access_ttl: args.access_token_ttl,
            refresh_ttl: args.refresh_token_ttl,
            decoy_hash: passwords::hash("decoy password, never matches".into()).await?,
        })
    }

    /// The auth database.
    pub fn pool(&self) -> &Db {
        &self.pool
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
        (self.key.get().sign(&claims), self.access_ttl.as_secs())
    }
}

/// Every route auth serves. Each is added through the kit's `Api`, which records it, so the unit
/// test below (and the server, before it starts) finds any route `openapi.json` lacks.
pub fn routes() -> Api<Arc<AppState>> {
    Api::new(OPENAPI, "/auth")
        .post("/auth/signup", signup)
        .post("/auth/login", login)
        .post("/auth/refresh", refresh)
        .post("/auth/logout", logout)
        .get("/auth/.well-known/jwks.json", jwks)
        .get(
            "/auth/.well-known/openid-configuration",
            openid_configuration,
        )
        .post("/auth/mfa/totp/enroll", crate::mfa::enroll)
        .post("/auth/mfa/totp/confirm", crate::mfa::confirm)
        .delete("/auth/mfa/totp", crate::mfa::disable)
        .get("/auth/authorize", crate::oauth::authorize)
        .post("/auth/authorize", crate::oauth::authorize_form)
        .get("/auth/users", crate::admin::list_users)
        .put("/auth/users/{id}/roles", crate::admin::set_roles)
        .get("/auth/roles", crate::roles::list)
        .put("/auth/roles/{name}", crate::roles::put)
        .delete("/auth/roles/{name}", crate::roles::delete)
        .post("/auth/clients", crate::clients::create)
        .post("/auth/admin/keys/rotate", crate::admin::rotate_keys)
        .post("/auth/token", crate::clients::token)
        .post("/auth/revoke", crate::revocation::revoke)
        .post("/auth/introspect", crate::revocation::introspect)
        .layer(DefaultBodyLimit::max(MAX_BODY))
}

/// The auth API as an OpenAPI 3.0 document (`/openapi.json`, `/auth/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    email: String,
    password: String,
    /// The second factor, for accounts that have one: a TOTP code or a recovery code.
    #[serde(default)]
    totp: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct TokenResponse {
    access_token: String,
    refresh_token: String,
    token_type: &'static str,
    expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    id_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<String>,
}

/// Who a token set is for beyond the user: the third-party app (authorization code flow) and
/// what it asked for. First-party logins have none.
#[derive(Default)]
pub(crate) struct Grant<'a> {
    pub client_id: Option<&'a str>,
    pub scope: Option<&'a str>,
    pub nonce: Option<&'a str>,
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
    let user = authenticate_user(
        &state,
        &body.email,
        body.password,
        body.totp.as_deref(),
        client_address(&headers, peer),
    )
    .await?;
    tracing::info!(user = %user.id, "login");
    let family = stratus_kit::new_id();
    Ok(axum::Json(
        issue(&state, &user, &family, &Grant::default()).await?,
    ))
}

/// Checks a password (and the second factor, if the account has one), with throttling. A wrong
/// password says only "invalid email or password", whether or not the account has MFA; only
/// a right password earns the "MFA required" answer. A wrong code counts as a failed attempt.
pub(crate) async fn authenticate_user(
    state: &AppState,
    email: &str,
    password: String,
    totp: Option<&str>,
    address: std::net::IpAddr,
) -> Result<User, Problem> {
    let invalid = || Problem::unauthorized("invalid email or password");
    let Ok(email) = users::normalize_email(email) else {
        return Err(invalid());
    };
    if password.len() > 4 * passwords::MAX_LENGTH {
        return Err(invalid());
    }
    let keys = throttle::keys(&email, address);
    throttle::check(&state.pool, &keys).await?;
    let user = users::by_email(&state.pool, &email)
        .await
        .map_err(Problem::internal)?;
    let stored = user
        .as_ref()
        .map_or(state.decoy_hash.clone(), |u| u.password_hash.clone());
    let matches = passwords::verify(password, stored).await;
    match user {
        Some(user) if matches => match mfa::check(state, &user.id, totp).await? {
            mfa::SecondFactor::Passed => {
                throttle::succeeded(&state.pool, &email).await?;
                Ok(user)
            }
            mfa::SecondFactor::Required => Err(mfa::required_problem()),
            mfa::SecondFactor::Invalid => {
                throttle::failed(&state.pool, &keys).await?;
                tracing::warn!(user = %user.id, "wrong or replayed second factor");
                Err(mfa::invalid_problem())
            }
        },
        _ => {
            throttle::failed(&state.pool, &keys).await?;
            Err(invalid())
        }
    }
}

/// The client's address: the last `X-Forwarded-For` entry (the one the gateway appended from
/// the connection), or the peer itself when called directly.
pub(crate) fn client_address(
    headers: &axum::http::HeaderMap,
    peer: std::net::SocketAddr,
) -> std::net::IpAddr {
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

/// `POST /auth/refresh`: first-party refresh (tokens from `/auth/login`).
async fn refresh(
    State(state): Shared,
    Json(body): Json<RefreshBody>,
) -> Result<impl IntoResponse, Problem> {
    rotate_refresh_token(&state, &body.refresh_token, None)
        .await?
        .map(axum::Json)
        .ok_or_else(|| Problem::unauthorized("invalid refresh token"))
}

/// Rotates a refresh token: `None` when it is unknown, expired, revoked, reused, or was issued
/// to another client (`client_id`: the app it must have been issued to; `None` for first-party
/// tokens). A token used twice means it was stolen: the whole family (every token descended
/// from the same login) is revoked.
pub(crate) async fn rotate_refresh_token(
    state: &AppState,
    token: &str,
    client_id: Option<&str>,
) -> Result<Option<TokenResponse>, Problem> {
    let hash = digest(token);
    let row: Option<(String, String, i64, i64, i64, Option<String>)> = sqlx::query_as(
        "SELECT user_id, family_id, expires_at, used, revoked, client_id FROM refresh_tokens WHERE token_hash = $1",
    )
    .bind(&hash)
    .fetch_optional(&state.pool)
    .await?;
    let Some((user_id, family, expires_at, used, revoked, owner)) = row else {
        return Ok(None);
    };
    if revoked != 0 || expires_at < now_unix() as i64 || owner.as_deref() != client_id {
        return Ok(None);
    }
    let claimed =
        sqlx::query("UPDATE refresh_tokens SET used = 1 WHERE token_hash = $1 AND used = 0")
            .bind(&hash)
            .execute(&state.pool)
            .await?;
    if used != 0 || !stratus_kit::db::changed(&claimed) {
        revoke_family(&state.pool, &family).await?;
        tracing::warn!(user = %user_id, family = %family, "refresh token reused; family revoked");
        return Ok(None);
    }
    let Some(user) = users::by_id(&state.pool, &user_id)
        .await
        .map_err(Problem::internal)?
    else {
        return Ok(None);
    };
    let grant = Grant {
        client_id,
        ..Grant::default()
    };
    Ok(Some(issue(state, &user, &family, &grant).await?))
}

pub(crate) async fn revoke_family(pool: &Db, family: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE refresh_tokens SET revoked = 1 WHERE family_id = $1")
        .bind(family)
        .execute(pool)
        .await?;
    Ok(())
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
    let jwks = keys::jwks(&state.pool, &state.sealer)
        .await
        .map_err(Problem::internal)?;
    Ok(([("cache-control", "public, max-age=60")], axum::Json(jwks)))
}

/// The OpenID Provider metadata. Endpoints are absolute URLs on the address the client used
/// (the gateway's, with its `X-Forwarded-Proto`), as OIDC clients expect.
async fn openid_configuration(
    State(state): Shared,
    headers: axum::http::HeaderMap,
) -> impl IntoResponse {
    let base = public_base(&headers);
    axum::Json(json!({
        "issuer": state.issuer,
        "authorization_endpoint": format!("{base}/auth/authorize"),
        "token_endpoint": format!("{base}/auth/token"),
        "jwks_uri": format!("{base}/auth/.well-known/jwks.json"),
        "revocation_endpoint": format!("{base}/auth/revoke"),
        "introspection_endpoint": format!("{base}/auth/introspect"),
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": ["openid", "email", "profile"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "email"],
        "subject_types_supported": ["public"],
    }))
}

/// `scheme://host` as the client addressed us.
fn public_base(headers: &axum::http::HeaderMap) -> String {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let host = header("x-forwarded-host")
        .or_else(|| header("host"))
        .filter(|h| {
            h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = match header("x-forwarded-proto") {
        Some("https") => "https",
        _ => "http",
    };
    format!("{scheme}://{host}")
}

pub(crate) async fn issue(
    state: &AppState,
    user: &User,
    family: &str,
    grant: &Grant<'_>,
) -> Result<TokenResponse, Problem> {
    let now = now_unix();
    // Read at every issue (login, refresh, code exchange): a role's new permissions, or a
    // revoked role, reach the user with their next token.
    let permissions = crate::roles::permissions_of(&state.pool, &user.roles).await?;
    let (access_token, _) = state.access_token(
        &user.id,
        Some(user.email.clone()),
        user.roles.clone(),
        permissions,
    );

    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let refresh_token = URL_SAFE_NO_PAD.encode(secret);
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, user_id, family_id, expires_at, used, revoked, created_at, client_id) VALUES ($1, $2, $3, $4, 0, 0, $5, $6)",
    )
    .bind(digest(&refresh_token))
    .bind(&user.id)
    .bind(family)
    .bind((now + state.refresh_ttl.as_secs()) as i64)
    .bind(stratus_kit::now_rfc3339())
    .bind(grant.client_id)
    .execute(&state.pool)
    .await?;
    // OpenID Connect: an ID token for the app, when it asked for `openid`. Its audience is the
    // app, so it is never accepted as an access token anywhere.
    let openid = grant
        .scope
        .is_some_and(|scope| scope.split(' ').any(|s| s == "openid"));
    let id_token = match grant.client_id {
        Some(client_id) if openid => {
            let mut claims = json!({
                "iss": state.issuer,
                "sub": user.id,
                "aud": client_id,
                "exp": now + state.access_ttl.as_secs(),
                "iat": now,
                "auth_time": now,
                "email": user.email,
            });
            if let Some(nonce) = grant.nonce {
                claims["nonce"] = json!(nonce);
            }
            Some(state.key.get().sign_json(&claims))
        }
        _ => None,
    };
    Ok(TokenResponse {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: state.access_ttl.as_secs(),
        id_token,
        scope: grant.scope.map(str::to_string),
    })
}

/// Percent-encodes everything but RFC 3986 unreserved characters (for query values).
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Refresh tokens are stored as SHA-256 digests: a leaked table cannot be replayed.
pub(crate) fn digest(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod openapi_tests {
    #[test]
    fn the_openapi_document_describes_exactly_the_routes() {
        super::routes().check().unwrap();
    }
}
