//! Third-party apps: the OAuth 2.0 authorization code grant (RFC 6749 section 4.1) with PKCE
//! (RFC 7636, `S256` only), and OpenID Connect ID tokens.
//!
//! An admin registers the app (`POST /auth/clients` with `kind: "public"` or `"confidential"`
//! and its exact redirect URIs). The app sends the user to `GET /auth/authorize` with a
//! `code_challenge = BASE64URL(SHA-256(code_verifier))`. Stratus has no UI of its own, so the
//! user is authenticated either by a bearer token on that request or by the minimal HTML form it
//! answers with (posted back to `POST /auth/authorize`: email, password, and the TOTP code when
//! the account has one). Then the user agent is redirected to the app with `code` and `state`.
//!
//! The code is random, stored as a digest, valid for [`CODE_TTL`], single-use, and bound to the
//! client, the redirect URI and the challenge: at `POST /auth/token` the app must present the
//! same client and redirect URI and the verifier whose digest is the challenge, so a code
//! intercepted on its way back is useless without the verifier. A code presented twice revokes
//! the tokens issued for it (RFC 6749 section 4.1.2).
//!
//! Errors before the client and redirect URI are known to be good are shown to the user (a
//! problem document), never redirected: redirecting to an unchecked URI would make Stratus an
//! open redirector. Errors after that go back to the app as `error` and `state` on the redirect.

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use stratus_kit::Problem;
use stratus_token::now_unix;

use crate::admin::require_user;
use crate::api::{authenticate_user, client_address, digest, percent_encode, AppState, Shared};
use crate::users::User;

/// How long an authorization code may wait to be exchanged.
pub const CODE_TTL: u64 = 60;
const MAX_STATE: usize = 512;
const MAX_SCOPE: usize = 256;

/// The authorization request; the form post adds the user's credentials.
#[derive(Deserialize, Default, Clone)]
pub struct AuthorizeRequest {
    response_type: Option<String>,
    client_id: Option<String>,
    redirect_uri: Option<String>,
    scope: Option<String>,
    state: Option<String>,
    code_challenge: Option<String>,
    code_challenge_method: Option<String>,
    nonce: Option<String>,
    // The login form's fields (POST only).
    email: Option<String>,
    password: Option<String>,
    totp: Option<String>,
}

/// A request whose client and redirect URI are known to be good.
struct Checked {
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    challenge: String,
    nonce: Option<String>,
}

/// An error to send back to the app on its redirect URI.
struct RedirectError {
    redirect_uri: String,
    state: Option<String>,
    error: &'static str,
    description: &'static str,
}

impl RedirectError {
    fn into_response(self) -> Response {
        let mut query = format!(
            "error={}&error_description={}",
            self.error,
            percent_encode(self.description)
        );
        if let Some(state) = &self.state {
            query.push_str(&format!("&state={}", percent_encode(state)));
        }
        redirect(&self.redirect_uri, &query)
    }
}

fn redirect(uri: &str, query: &str) -> Response {
    let separator = if uri.contains('?') { '&' } else { '?' };
    (
        StatusCode::FOUND,
        [
            (header::LOCATION, format!("{uri}{separator}{query}")),
            (header::CACHE_CONTROL, "no-store".to_string()),
        ],
    )
        .into_response()
}

/// Checks the request: `Err(Ok(problem))` is shown to the user, `Err(Err(redirect))` goes back
/// to the app.
async fn check(
    state: &AppState,
    request: &AuthorizeRequest,
) -> Result<Checked, Result<Problem, RedirectError>> {
    let client_id = request
        .client_id
        .as_deref()
        .filter(|id| !id.is_empty() && id.len() <= 100)
        .ok_or(Ok(Problem::bad_request("client_id is required")))?;
    let row: Option<(String, String)> =
        sqlx::query_as("SELECT kind, redirect_uris FROM clients WHERE client_id = $1")
            .bind(client_id)
            .fetch_optional(&state.pool)
            .await
            .map_err(|e| Ok(Problem::from(e)))?;
    // Service accounts have no redirect URIs: only apps take part in this flow.
    let Some((_, uris)) = row.filter(|(kind, _)| kind == "public" || kind == "confidential") else {
        return Err(Ok(Problem::bad_request("unknown client_id")));
    };
    let registered: Vec<&str> = uris.split(' ').filter(|u| !u.is_empty()).collect();
    // Exact match only (RFC 6749 section 3.1.2.3, as OAuth 2.1 requires); with one registered
    // URI the parameter may be left out.
    let redirect_uri = match request.redirect_uri.as_deref() {
        Some(uri) if registered.contains(&uri) => uri.to_string(),
        None if registered.len() == 1 => registered[0].to_string(),
        _ => {
            return Err(Ok(Problem::bad_request(
                "redirect_uri does not match one registered for this client",
            )))
        }
    };
    let app_state = request
        .state
        .clone()
        .filter(|s| s.len() <= MAX_STATE && !s.chars().any(char::is_control));
    let fail = |error, description| {
        Err(Err(RedirectError {
            redirect_uri: redirect_uri.clone(),
            state: app_state.clone(),
            error,
            description,
        }))
    };
    if request
        .state
        .as_ref()
        .is_some_and(|s| app_state.as_ref() != Some(s))
    {
        return fail("invalid_request", "state is too long or not plain text");
    }
    if request.response_type.as_deref() != Some("code") {
        return fail(
            "unsupported_response_type",
            "only response_type=code is supported",
        );
    }
    if request.code_challenge_method.as_deref() != Some("S256") {
        return fail(
            "invalid_request",
            "PKCE is required: code_challenge_method must be S256",
        );
    }
    let challenge = match request.code_challenge.as_deref() {
        // BASE64URL(SHA-256(...)) is always 43 characters.
        Some(c) if c.len() == 43 && URL_SAFE_NO_PAD.decode(c).is_ok() => c.to_string(),
        _ => {
            return fail(
                "invalid_request",
                "code_challenge must be BASE64URL(SHA-256(code_verifier))",
            )
        }
    };
    let scope = request.scope.clone().unwrap_or_default();
    let scope_ok = scope.len() <= MAX_SCOPE
        && scope
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b" :_-.".contains(&b));
    if !scope_ok {
        return fail("invalid_scope", "scope must be space-separated plain words");
    }
    let nonce = request
        .nonce
        .clone()
        .filter(|n| n.len() <= MAX_STATE && !n.chars().any(char::is_control));
    Ok(Checked {
        client_id: client_id.to_string(),
        redirect_uri,
        scope: scope.split_whitespace().collect::<Vec<_>>().join(" "),
        state: app_state,
        challenge,
        nonce,
    })
}

/// `GET /auth/authorize`: with a bearer token, redirects with a code at once; without one,
/// answers the login form.
pub async fn authorize(
    State(state): Shared,
    headers: HeaderMap,
    query: Result<Query<AuthorizeRequest>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(request)) = query else {
        return Problem::bad_request("malformed authorization request").into_response();
    };
    let checked = match check(&state, &request).await {
        Ok(checked) => checked,
        Err(Ok(problem)) => return problem.into_response(),
        Err(Err(redirect)) => return redirect.into_response(),
    };
    if headers.contains_key(header::AUTHORIZATION) {
        return match require_user(&state, &headers).await {
            Ok(user) => grant(&state, &checked, &user).await,
            Err(problem) => problem.into_response(),
        };
    }
    login_form(&request, StatusCode::OK, None)
}

/// `POST /auth/authorize`: the login form, posted back with the request's fields.
pub async fn authorize_form(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    form: Result<axum::extract::Form<AuthorizeRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(axum::extract::Form(request)) = form else {
        return Problem::bad_request("expected a form-encoded body").into_response();
    };
    let checked = match check(&state, &request).await {
        Ok(checked) => checked,
        Err(Ok(problem)) => return problem.into_response(),
        Err(Err(redirect)) => return redirect.into_response(),
    };
    let user = authenticate_user(
        &state,
        request.email.as_deref().unwrap_or_default(),
        request.password.clone().unwrap_or_default(),
        request.totp.as_deref(),
        client_address(&headers, peer),
    )
    .await;
    match user {
        Ok(user) => grant(&state, &checked, &user).await,
        Err(problem) => {
            let status = problem.status();
            let message = problem.detail.unwrap_or_else(|| problem.title.clone());
            login_form(&request, status, Some(&message))
        }
    }
}

/// Stores a code for `user` and redirects back to the app with it.
async fn grant(state: &AppState, checked: &Checked, user: &User) -> Response {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let code = URL_SAFE_NO_PAD.encode(bytes);
    let stored = sqlx::query(
        "INSERT INTO authorization_codes (code_hash, client_id, user_id, redirect_uri, code_challenge, scope, nonce, family_id, expires_at, used) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 0)",
    )
    .bind(digest(&code))
    .bind(&checked.client_id)
    .bind(&user.id)
    .bind(&checked.redirect_uri)
    .bind(&checked.challenge)
    .bind(&checked.scope)
    .bind(checked.nonce.as_deref())
    .bind(stratus_kit::new_id())
    .bind((now_unix() + CODE_TTL) as i64)
    .execute(&state.pool)
    .await;
    if let Err(error) = stored {
        return Problem::from(error).into_response();
    }
    tracing::info!(user = %user.id, client = %checked.client_id, "authorization code issued");
    let mut query = format!("code={code}");
    if let Some(app_state) = &checked.state {
        query.push_str(&format!("&state={}", percent_encode(app_state)));
    }
    redirect(&checked.redirect_uri, &query)
}

/// The minimal login page: the request's parameters as hidden fields, email, password, code.
fn login_form(request: &AuthorizeRequest, status: StatusCode, message: Option<&str>) -> Response {
    let hidden = [
        ("response_type", &request.response_type),
        ("client_id", &request.client_id),
        ("redirect_uri", &request.redirect_uri),
        ("scope", &request.scope),
        ("state", &request.state),
        ("code_challenge", &request.code_challenge),
        ("code_challenge_method", &request.code_challenge_method),
        ("nonce", &request.nonce),
    ]
    .iter()
    .filter_map(|(name, value)| {
        value.as_ref().map(|value| {
            format!(
                r#"<input type="hidden" name="{name}" value="{}">"#,
                html_escape(value)
            )
        })
    })
    .collect::<Vec<_>>()
    .join("\n");
    let message = message
        .map(|m| format!(r#"<p role="alert">{}</p>"#, html_escape(m)))
        .unwrap_or_default();
    let page = format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in to Stratus</title></head>
<body>
<h1>Sign in</h1>
{message}
<form method="post" action="/auth/authorize">
{hidden}
<label>Email <input type="email" name="email" autocomplete="username" required></label>
<label>Password <input type="password" name="password" autocomplete="current-password" required></label>
<label>Code (if your account has one) <input type="text" name="totp" autocomplete="one-time-code"></label>
<button type="submit">Sign in</button>
</form>
</body></html>
"#
    );
    (
        status,
        [
            (header::CACHE_CONTROL, "no-store"),
            // The form must not be framed by another site (clickjacking).
            (header::X_FRAME_OPTIONS, "DENY"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
            ),
        ],
        Html(page),
    )
        .into_response()
}

fn html_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Why a code exchange failed: always `invalid_grant` to the client; the reason is logged.
pub(crate) enum Exchange {
    Granted {
        user_id: String,
        scope: String,
        nonce: Option<String>,
        family: String,
    },
    Invalid(&'static str),
}

/// client, user, redirect URI, challenge, scope, nonce, family, expiry.
type CodeRow = (
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    i64,
);

/// Redeems `code` for `client_id`: single use, in time, same redirect URI, and the verifier
/// that hashes to the stored challenge.
pub(crate) async fn redeem(
    state: &AppState,
    code: &str,
    client_id: &str,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
) -> Result<Exchange, sqlx::Error> {
    let hash = digest(code);
    let row: Option<CodeRow> =
        sqlx::query_as(
            "SELECT client_id, user_id, redirect_uri, code_challenge, scope, nonce, family_id, expires_at FROM authorization_codes WHERE code_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&state.pool)
        .await?;
    let Some((owner, user_id, stored_uri, challenge, scope, nonce, family, expires_at)) = row
    else {
        return Ok(Exchange::Invalid("unknown code"));
    };
    let claimed =
        sqlx::query("UPDATE authorization_codes SET used = 1 WHERE code_hash = $1 AND used = 0")
            .bind(&hash)
            .execute(&state.pool)
            .await?;
    if !stratus_kit::db::changed(&claimed) {
        // A second use: whoever holds the tokens from the first may be an attacker.
        crate::api::revoke_family(&state.pool, &family).await?;
        return Ok(Exchange::Invalid(
            "code already used; its tokens are revoked",
        ));
    }
    if expires_at < now_unix() as i64 {
        return Ok(Exchange::Invalid("code expired"));
    }
    if owner != client_id {
        return Ok(Exchange::Invalid("code was issued to another client"));
    }
    if redirect_uri != Some(stored_uri.as_str()) {
        return Ok(Exchange::Invalid(
            "redirect_uri differs from the authorization request",
        ));
    }
    let Some(verifier) = verifier.filter(|v| valid_verifier(v)) else {
        return Ok(Exchange::Invalid("code_verifier missing or malformed"));
    };
    if s256(verifier) != challenge {
        return Ok(Exchange::Invalid(
            "code_verifier does not match the challenge",
        ));
    }
    Ok(Exchange::Granted {
        user_id,
        scope,
        nonce,
        family,
    })
}

/// RFC 7636 section 4.1: 43-128 unreserved characters.
fn valid_verifier(verifier: &str) -> bool {
    (43..=128).contains(&verifier.len())
        && verifier
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

pub fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// Forgets codes long expired.
pub async fn prune(pool: &stratus_kit::db::Db) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM authorization_codes WHERE expires_at < $1")
        .bind(now_unix() as i64 - 3600)
        .execute(pool)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_is_base64url_of_sha256() {
        // Computed independently: python3 -c 'base64.urlsafe_b64encode(hashlib.sha256(v).digest())'
        assert_eq!(
            s256("stratus-test-verifier-0123456789abcdefghijklmnop"),
            "SW3dTxOhCLudvPhY-uiJGWW-6Xn9g-DhimAnBOeKZTo"
        );
    }

    #[test]
    fn verifiers_are_43_to_128_unreserved_characters() {
        assert!(valid_verifier(&"a".repeat(43)));
        assert!(valid_verifier(&"a".repeat(128)));
        assert!(!valid_verifier(&"a".repeat(42)));
        assert!(!valid_verifier(&"a".repeat(129)));
        assert!(!valid_verifier(&format!("{}+", "a".repeat(43))));
    }

    #[test]
    fn the_form_escapes_what_it_echoes() {
        assert_eq!(html_escape(r#""><script>"#), "&quot;&gt;&lt;script&gt;");
    }
}
