//! Brute-force protection for logins, per account and per client address.
//!
//! Failed logins are counted in the auth database, so every auth instance sees the same counts
//! (the service stays stateless). After `ACCOUNT_LIMIT` failures within the window, the account
//! is locked for 30 s, doubling with every further failure up to 15 minutes; a client address
//! gets a higher limit, since many users may share one. While locked, attempts are refused with
//! 429 before the password is even checked, and they do not count: an attacker hammering one
//! account does not lock out the address for everyone else behind it. A success clears the
//! account's count. The lock applies to the email as typed, whether or not such an account
//! exists, so it reveals nothing.

use std::net::IpAddr;
use std::time::Duration;

use stratus_kit::db::Db;
use stratus_kit::Problem;

pub const ACCOUNT_LIMIT: i64 = 5;
pub const ADDRESS_LIMIT: i64 = 50;
const WINDOW_SECS: i64 = 15 * 60;
const FIRST_LOCK_SECS: i64 = 30;
const MAX_LOCK_SECS: i64 = 15 * 60;

pub fn keys(email: &str, address: IpAddr) -> [(String, i64); 2] {
    [
        (format!("account:{email}"), ACCOUNT_LIMIT),
        (format!("address:{address}"), ADDRESS_LIMIT),
    ]
}

fn now() -> i64 {
    stratus_token::now_unix() as i64
}

/// 429 with `Retry-After` if any of the keys is locked now.
pub async fn check(pool: &Db, keys: &[(String, i64)]) -> Result<(), Problem> {
    let now = now();
    for (key, _) in keys {
        let locked: Option<(i64,)> =
            sqlx::query_as("SELECT locked_until FROM login_attempts WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?;
        if let Some((until,)) = locked.filter(|(until,)| *until > now) {
            metrics::counter!("auth_logins_throttled_total").increment(1);
            let wait = (until - now).max(1) as u64;
            return Err(Problem::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                format!("too many failed logins; try again in {wait} s"),
            )
            .with_retry_after(wait));
        }
    }
    Ok(())
}

/// Counts a failure against every key, locking those past their limit.
pub async fn failed(pool: &Db, keys: &[(String, i64)]) -> Result<(), sqlx::Error> {
    let now = now();
    for (key, limit) in keys {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT failures, first_failure FROM login_attempts WHERE key = $1")
                .bind(key)
                .fetch_optional(pool)
                .await?;
        let (failures, first) = match row {
            Some((failures, first)) if now - first <= WINDOW_SECS => (failures + 1, first),
            _ => (1, now),
        };
        let locked_until = if failures >= *limit {
            let doublings = (failures - limit).min(10) as u32;
            now + (FIRST_LOCK_SECS << doublings).min(MAX_LOCK_SECS)
        } else {
            0
        };
        sqlx::query(
            "INSERT INTO login_attempts (key, failures, first_failure, locked_until) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key) DO UPDATE SET failures = $2, first_failure = $3, locked_until = $4",
        )
        .bind(key)
        .bind(failures)
        .bind(first)
        .bind(locked_until)
        .execute(pool)
        .await?;
        if locked_until > 0 {
            tracing::warn!(%key, failures, lock = ?Duration::from_secs((locked_until - now) as u64), "login locked");
        }
    }
    Ok(())
}

/// A successful login clears the account's count (the address keeps its own).
pub async fn succeeded(pool: &Db, email: &str) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM login_attempts WHERE key = $1")
        .bind(format!("account:{email}"))
        .execute(pool)
        .await?;
    Ok(())
}
