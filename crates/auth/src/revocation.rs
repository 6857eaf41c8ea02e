//! Revocation (RFC 7009) and introspection (RFC 7662).
//!
//! Access tokens are short-lived and verified locally everywhere, which is what makes them
//! cheap; the price is that revoking one cannot reach every verifier at once. Stratus's answer is
//! the usual one: a revoked access token's id (`jti`) is recorded until the token would have
//! expired anyway, and `POST /auth/introspect` (for services that must know *now*, with their
//! service-account credentials) reports it inactive. Revoking a refresh token revokes its whole
//! family, so no new access tokens can be minted from it.

use axum::extract::rejection::FormRejection;
use axum::extract::{Form, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use stratus_kit::Problem;
use stratus_token::Verifier;

use crate::api::{digest, AppState, Shared};
use crate::clients::{authenticate, oauth_unauthorized};
use crate::keys;

#[derive(Deserialize)]
pub struct TokenForm {
    token: String,
    #[allow(dead_code)]
    token_type_hint: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
}

/// The form, or a problem document saying what is wrong with it (axum's own rejection is plain
/// text): 415 without the form content type, 422 without `token`, 400 for a malformed body.
fn form_or_problem(form: Result<Form<TokenForm>, FormRejection>) -> Result<TokenForm, Problem> {
    form.map(|Form(form)| form)
        .map_err(|rejection| Problem::new(rejection.status(), rejection.body_text()))
}

/// Access-token claims if `token` is one of ours with a valid signature, expired or not.
async fn access_claims(
    state: &AppState,
    token: &str,
) -> Result<Option<stratus_token::Claims>, Problem> {
    let jwks = keys::jwks(&state.pool, &state.sealer)
        .await
        .map_err(Problem::internal)?;
    let verifier = Verifier::new(&jwks, &state.issuer, &state.audience);
    // Verify as of the epoch so an expired token still yields its claims (its jti, its exp).
    Ok(verifier.verify_at(token, 0).ok())
}

/// `POST /auth/revoke`: possession of the token is the authority to revoke it. Always 200,
/// also for unknown tokens, as RFC 7009 asks.
pub async fn revoke(
    State(state): Shared,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<Response, Problem> {
    let form = form_or_problem(form)?;
    if let Some(claims) = access_claims(&state, &form.token).await? {
        sqlx::query("INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
            .bind(&claims.jti)
            .bind(claims.exp as i64)
            .execute(&state.pool)
            .await?;
        tracing::info!(sub = %claims.sub, jti = %claims.jti, "access token revoked");
    } else {
        sqlx::query(
            "UPDATE refresh_tokens SET revoked = 1 WHERE family_id = (SELECT family_id FROM refresh_tokens WHERE token_hash = $1)",
        )
        .bind(digest(&form.token))
        .execute(&state.pool)
        .await?;
    }
    Ok(axum::http::StatusCode::OK.into_response())
}

/// `POST /auth/introspect`, for service accounts.
pub async fn introspect(
    State(state): Shared,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Result<Response, Problem> {
    let form = form_or_problem(form)?;
    if authenticate(
        &state,
        &headers,
        form.client_id.clone(),
        form.client_secret.clone(),
    )
    .await?
    .is_none()
    {
        return Ok(oauth_unauthorized());
    }
    let inactive = || axum::Json(json!({"active": false})).into_response();
    let Some(claims) = access_claims(&state, &form.token).await? else {
        return Ok(inactive());
    };
    if claims.exp <= stratus_token::now_unix() {
        return Ok(inactive());
    }
    let revoked: Option<(String,)> =
        sqlx::query_as("SELECT jti FROM revoked_tokens WHERE jti = $1")
            .bind(&claims.jti)
            .fetch_optional(&state.pool)
            .await?;
    if revoked.is_some() {
        return Ok(inactive());
    }
    Ok(axum::Json(json!({
        "active": true,
        "token_type": "Bearer",
        "sub": claims.sub,
        "iss": claims.iss,
        "aud": claims.aud,
        "exp": claims.exp,
        "iat": claims.iat,
        "jti": claims.jti,
        "roles": claims.roles,
        "permissions": claims.permissions,
    }))
    .into_response())
}

/// Forgets revoked ids whose tokens have expired anyway.
pub async fn prune(pool: stratus_kit::db::Db) {
    let mut ticker = tokio::time::interval(std::time::Duration::from_secs(60));
    loop {
        ticker.tick().await;
        let _ = sqlx::query("DELETE FROM revoked_tokens WHERE expires_at < $1")
            .bind(stratus_token::now_unix() as i64)
            .execute(&pool)
            .await;
        let _ = crate::oauth::prune(&pool).await;
    }
}
