//! A second factor: time-based one-time passwords (TOTP, RFC 6238) and recovery codes.
//!
//! A user enrolls (`POST /auth/mfa/totp/enroll`, with their access token) and gets a random
//! 160-bit secret, as base32 and as an `otpauth://` URI for an authenticator app. Nothing changes
//! until they prove the app works (`POST /auth/mfa/totp/confirm` with a current code); only then
//! is the factor active, and they receive ten recovery codes, once. From then on a login needs
//! the password *and* `totp`: a current code or an unused recovery code.
//!
//! The maths is HOTP (RFC 4226) on ring's HMAC-SHA1 over the 30-second step number, 6 digits,
//! accepting the step before and after the current one for clock drift. Each accepted step is
//! recorded (`last_step`), and a code for that step or an earlier one is refused: a code seen
//! over a shoulder or in a log cannot be used again. Recovery codes are stored as SHA-256
//! digests (they are random, so a fast hash is enough) and each works once.
//!
//! The secret is never returned once the factor is confirmed, and it is stored sealed
//! ([`crate::sealed::TOTP_SECRET`]): a copy of the auth database does not give anyone the codes.

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use rand::RngCore;
use ring::hmac;
use serde::Deserialize;
use serde_json::json;
use stratus_kit::db::Db;
use stratus_kit::{Json, Problem};
use stratus_token::now_unix;

use crate::admin::require_user;
use crate::api::{client_address, digest, percent_encode, AppState, Shared};
use crate::sealed::TOTP_SECRET;
use crate::throttle;

/// Seconds per TOTP step.
pub const STEP: u64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Steps accepted either side of the current one.
pub const WINDOW: u64 = 1;
/// Recovery codes handed out on confirmation.
pub const RECOVERY_CODES: usize = 10;
/// The name authenticator apps show.
const ISSUER: &str = "Stratus";

/// The outcome of checking a login's second factor.
#[derive(Debug, PartialEq, Eq)]
pub enum SecondFactor {
    /// No second factor is active for this user, or the one given is valid (and now spent).
    Passed,
    /// The user has MFA and no code was given.
    Required,
    /// A code was given and is wrong, expired, or already used.
    Invalid,
}

/// Problem type URIs, so clients can tell "ask for a code" from "wrong code".
pub const MFA_REQUIRED: &str = "urn:stratus:problem:mfa-required";
pub const MFA_INVALID: &str = "urn:stratus:problem:mfa-invalid";

pub fn required_problem() -> Problem {
    let mut problem = Problem::unauthorized(
        "this account has a second factor: send `totp` (a 6-digit code or a recovery code)",
    );
    problem.kind = MFA_REQUIRED.into();
    problem.title = "MFA required".into();
    problem
}

pub fn invalid_problem() -> Problem {
    let mut problem = Problem::unauthorized("the one-time code is wrong, expired or already used");
    problem.kind = MFA_INVALID.into();
    problem.title = "MFA code invalid".into();
    problem
}

/// Checks (and spends) the second factor of a user whose password was right.
pub async fn check(
    state: &AppState,
    user_id: &str,
    code: Option<&str>,
) -> Result<SecondFactor, Problem> {
    let pool = &state.pool;
    let row: Option<(String,)> =
        sqlx::query_as("SELECT secret FROM mfa_totp WHERE user_id = $1 AND confirmed = 1")
            .bind(user_id)
            .fetch_optional(pool)
            .await?;
    let Some((stored,)) = row else {
        return Ok(SecondFactor::Passed);
    };
    let Some(code) = code.map(str::trim).filter(|c| !c.is_empty()) else {
        return Ok(SecondFactor::Required);
    };
    let passed = if is_totp_shape(code) {
        let secret = open_secret(state, user_id, &stored)?;
        match base32_decode(&secret).and_then(|key| matching_step(&key, code, now_unix())) {
            Some(step) => spend_step(pool, user_id, step).await?,
            None => false,
        }
    } else {
        spend_recovery_code(pool, user_id, code).await?
    };
    Ok(if passed {
        SecondFactor::Passed
    } else {
        SecondFactor::Invalid
    })
}

/// The base32 secret of a stored (sealed) one. Every value opened at start, so one that does not
/// open now was changed behind auth's back: an error, never a pass.
fn open_secret(state: &AppState, user_id: &str, stored: &str) -> Result<String, Problem> {
    TOTP_SECRET
        .open(&state.sealer, user_id, stored)
        .map_err(Problem::internal)
}

/// Records `step` as used; false if it (or a later one) was used already: a replay.
async fn spend_step(pool: &Db, user_id: &str, step: u64) -> Result<bool, sqlx::Error> {
    let result =
        sqlx::query("UPDATE mfa_totp SET last_step = $1 WHERE user_id = $2 AND last_step < $1")
            .bind(step as i64)
            .bind(user_id)
            .execute(pool)
            .await?;
    Ok(stratus_kit::db::changed(&result))
}

async fn spend_recovery_code(pool: &Db, user_id: &str, code: &str) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "UPDATE mfa_recovery_codes SET used = 1 WHERE code_hash = $1 AND user_id = $2 AND used = 0",
    )
    .bind(digest(&normalize_recovery_code(code)))
    .bind(user_id)
    .execute(pool)
    .await?;
    Ok(stratus_kit::db::changed(&result))
}

fn is_totp_shape(code: &str) -> bool {
    code.len() == DIGITS as usize && code.bytes().all(|b| b.is_ascii_digit())
}

/// Recovery codes are compared without dashes, spaces or case.
fn normalize_recovery_code(code: &str) -> String {
    code.chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

// ---- HTTP ----

/// `POST /auth/mfa/totp/enroll`: a new secret, not active until confirmed. Enrolling again
/// before confirming replaces the secret; after confirming it is refused (disable first).
pub async fn enroll(
    State(state): Shared,
    headers: HeaderMap,
) -> Result<impl IntoResponse, Problem> {
    let user = require_user(&state, &headers).await?;
    let mut secret = [0u8; 20];
    rand::rng().fill_bytes(&mut secret);
    let secret = base32_encode(&secret);
    // Only an unconfirmed enrolment may be replaced.
    sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1 AND confirmed = 0")
        .bind(&user.id)
        .execute(&state.pool)
        .await?;
    let inserted = sqlx::query(
        "INSERT INTO mfa_totp (user_id, secret, confirmed, last_step, created_at) VALUES ($1, $2, 0, 0, $3) ON CONFLICT (user_id) DO NOTHING",
    )
    .bind(&user.id)
    .bind(TOTP_SECRET.seal(&state.sealer, &user.id, &secret))
    .bind(stratus_kit::now_rfc3339())
    .execute(&state.pool)
    .await?;
    if !stratus_kit::db::changed(&inserted) {
        return Err(Problem::conflict(
            "a second factor is already active; disable it first",
        ));
    }
    let label = percent_encode(&format!("{ISSUER}:{}", user.email));
    let uri = format!(
        "otpauth://totp/{label}?secret={secret}&issuer={ISSUER}&algorithm=SHA1&digits={DIGITS}&period={STEP}"
    );
    tracing::info!(user = %user.id, "TOTP enrolment started");
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"secret": secret, "otpauth_uri": uri})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CodeBody {
    code: String,
}

/// `POST /auth/mfa/totp/confirm {code}`: activates the factor and returns the recovery codes.
pub async fn confirm(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<CodeBody>,
) -> Result<impl IntoResponse, Problem> {
    let user = require_user(&state, &headers).await?;
    let keys = throttle::keys(&user.email, client_address(&headers, peer));
    throttle::check(&state.pool, &keys).await?;
    let row: Option<(String, i64)> =
        sqlx::query_as("SELECT secret, confirmed FROM mfa_totp WHERE user_id = $1")
            .bind(&user.id)
            .fetch_optional(&state.pool)
            .await?;
    let secret = match row {
        None => return Err(Problem::conflict("no enrolment to confirm: enroll first")),
        Some((_, confirmed)) if confirmed != 0 => {
            return Err(Problem::conflict("the second factor is already active"))
        }
        Some((stored, _)) => open_secret(&state, &user.id, &stored)?,
    };
    let code = body.code.trim();
    let step = is_totp_shape(code)
        .then(|| base32_decode(&secret).and_then(|key| matching_step(&key, code, now_unix())))
        .flatten();
    let Some(step) = step else {
        throttle::failed(&state.pool, &keys).await?;
        return Err(invalid_problem());
    };

    let codes: Vec<String> = (0..RECOVERY_CODES).map(|_| recovery_code()).collect();
    let mut tx = state.pool.begin().await?;
    let activated = sqlx::query(
        "UPDATE mfa_totp SET confirmed = 1, last_step = $1 WHERE user_id = $2 AND confirmed = 0",
    )
    .bind(step as i64)
    .bind(&user.id)
    .execute(&mut *tx)
    .await?;
    if !stratus_kit::db::changed(&activated) {
        return Err(Problem::conflict("the second factor is already active"));
    }
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
        .bind(&user.id)
        .execute(&mut *tx)
        .await?;
    for code in &codes {
        sqlx::query("INSERT INTO mfa_recovery_codes (code_hash, user_id, used) VALUES ($1, $2, 0)")
            .bind(digest(&normalize_recovery_code(code)))
            .bind(&user.id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(user = %user.id, "TOTP activated");
    Ok((
        [(axum::http::header::CACHE_CONTROL, "no-store")],
        axum::Json(json!({"enabled": true, "recovery_codes": codes})),
    ))
}

/// `DELETE /auth/mfa/totp {code}`: turns the factor off; needs a valid code (or recovery code),
/// so a stolen access token alone cannot remove it.
pub async fn disable(
    State(state): Shared,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    Json(body): Json<CodeBody>,
) -> Result<StatusCode, Problem> {
    let user = require_user(&state, &headers).await?;
    // Guessing codes with a stolen access token is throttled like guessing passwords.
    let keys = throttle::keys(&user.email, client_address(&headers, peer));
    throttle::check(&state.pool, &keys).await?;
    match check(&state, &user.id, Some(&body.code)).await? {
        SecondFactor::Passed => {}
        SecondFactor::Required | SecondFactor::Invalid => {
            throttle::failed(&state.pool, &keys).await?;
            return Err(invalid_problem());
        }
    }
    let removed = sqlx::query("DELETE FROM mfa_totp WHERE user_id = $1 AND confirmed = 1")
        .bind(&user.id)
        .execute(&state.pool)
        .await?;
    if !stratus_kit::db::changed(&removed) {
        return Err(Problem::not_found("no second factor is active"));
    }
    sqlx::query("DELETE FROM mfa_recovery_codes WHERE user_id = $1")
        .bind(&user.id)
        .execute(&state.pool)
        .await?;
    tracing::info!(user = %user.id, "TOTP disabled");
    Ok(StatusCode::NO_CONTENT)
}

/// `xxxx-xxxx-xxxx`: 12 base32 characters, 60 random bits.
fn recovery_code() -> String {
    let mut bytes = [0u8; 8];
    rand::rng().fill_bytes(&mut bytes);
    let text = base32_encode(&bytes).to_ascii_lowercase();
    format!("{}-{}-{}", &text[0..4], &text[4..8], &text[8..12])
}

// ---- RFC 6238 / 4226 ----

/// The HOTP value of `key` at counter `step`.
pub fn code_at(key: &[u8], step: u64) -> u32 {
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key);
    let mac = hmac::sign(&key, &step.to_be_bytes());
    let mac = mac.as_ref();
    // Dynamic truncation (RFC 4226 section 5.3).
    let offset = (mac[mac.len() - 1] & 0x0f) as usize;
    let binary = u32::from_be_bytes([
        mac[offset] & 0x7f,
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]);
    binary % 10u32.pow(DIGITS)
}

/// The code for time `now` (Unix seconds), as the six digits an app shows.
pub fn code_for(key: &[u8], now: u64) -> String {
    format!("{:06}", code_at(key, now / STEP))
}

/// The step whose code is `code`, within the window around `now`.
pub fn matching_step(key: &[u8], code: &str, now: u64) -> Option<u64> {
    let current = now / STEP;
    (current.saturating_sub(WINDOW)..=current + WINDOW).find(|step| {
        let expected = format!("{:06}", code_at(key, *step));
        // Constant time: no early exit on the first differing digit.
        expected
            .bytes()
            .zip(code.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
            && code.len() == expected.len()
    })
}

const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// RFC 4648 base32 without padding, as authenticator apps expect.
pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | byte as u32;
        bits += 8;
        while bits >= 5 {
            out.push(BASE32[((buffer >> (bits - 5)) & 31) as usize] as char);
            bits -= 5;
        }
    }
    if bits > 0 {
        out.push(BASE32[((buffer << (5 - bits)) & 31) as usize] as char);
    }
    out
}

pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|b| *b != b'=') {
        let value = BASE32.iter().position(|b| *b == c.to_ascii_uppercase())? as u32;
        buffer = (buffer << 5) | value;
        bits += 5;
        if bits >= 8 {
            out.push((buffer >> (bits - 8)) as u8);
            bits -= 8;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 column (the last six digits of each eight-digit value).
    #[test]
    fn rfc_6238_test_vectors() {
        let key = b"12345678901234567890";
        for (time, expected) in [
            (59u64, "287082"),
            (1111111109, "081804"),
            (1111111111, "050471"),
            (1234567890, "005924"),
            (2000000000, "279037"),
            (20000000000, "353130"),
        ] {
            assert_eq!(code_for(key, time), expected, "t={time}");
        }
    }

    #[test]
    fn the_window_is_one_step_either_side() {
        let key = b"12345678901234567890";
        let now = 1_000_000_020;
        let step = now / STEP;
        let previous = format!("{:06}", code_at(key, step - 1));
        let next = format!("{:06}", code_at(key, step + 1));
        let stale = format!("{:06}", code_at(key, step - 2));
        assert_eq!(matching_step(key, &previous, now), Some(step - 1));
        assert_eq!(matching_step(key, &next, now), Some(step + 1));
        assert_eq!(matching_step(key, &stale, now), None);
        assert_eq!(matching_step(key, "12345", now), None);
    }

    #[test]
    fn base32_round_trips() {
        assert_eq!(base32_encode(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32_decode("MZXW6YTBOI").unwrap(), b"foobar");
        assert_eq!(base32_decode("mzxw6ytboi======").unwrap(), b"foobar");
        assert!(base32_decode("not base32!").is_none());
        let mut secret = [0u8; 20];
        rand::rng().fill_bytes(&mut secret);
        assert_eq!(base32_decode(&base32_encode(&secret)).unwrap(), secret);
    }

    #[test]
    fn recovery_codes_are_compared_loosely() {
        let code = recovery_code();
        assert_eq!(code.len(), 14);
        assert_eq!(
            normalize_recovery_code(&code.to_uppercase().replace('-', " ")),
            normalize_recovery_code(&code)
        );
    }
}
