//! Password hashing with argon2id.
//!
//! Parameters: 19 MiB of memory, 2 passes, 1 lane: OWASP's recommended minimum for argon2id. The
//! parameters are stored inside each PHC hash string, so raising them later keeps old hashes valid.
//!
//! At most one hash per core runs at a time ([`slots`]); the rest wait their turn. Without the
//! bound, a burst of logins would start up to 512 blocking threads at 19 MiB each: gigabytes of
//! memory and no answer any sooner, since the cores are the limit.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

pub const MIN_LENGTH: usize = 8;
pub const MAX_LENGTH: usize = 128;

/// One slot per core for hashing.
fn slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::sync::Semaphore::new(cores)
    })
}

fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// The password policy: 8 to 128 characters, not only spaces.
pub fn check_policy(password: &str) -> Result<(), String> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        return Err(format!("password must be at least {MIN_LENGTH} characters"));
    }
    if length > MAX_LENGTH {
        return Err(format!("password must be at most {MAX_LENGTH} characters"));
    }
    if password.trim().is_empty() {
        return Err("password must not be only white space".into());
    }
    Ok(())
}

/// Hashes on the blocking pool: argon2 is deliberately slow and would stall the runtime.
pub async fn hash(password: String) -> anyhow::Result<String> {
    let _slot = slots().acquire().await?;
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))
    })
    .await?
}

/// Constant-time verification against a stored PHC string.
pub async fn verify(password: String, stored: String) -> bool {
    let Ok(_slot) = slots().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || {
        PasswordHash::new(&stored)
            .map(|parsed| {
                argon2()
                    .verify_password(password.as_bytes(), &parsed)
                    .is_ok()
            })
            .unwrap_or(false)
    })
    .await
    .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_differ() {
        let a = hash("correct horse".into()).await.unwrap();
        let b = hash("correct horse".into()).await.unwrap();
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "salts must differ");
        assert!(verify("correct horse".into(), a.clone()).await);
        assert!(!verify("wrong horse".into(), a).await);
        assert!(!verify("x".into(), "not a hash".into()).await);
    }

    #[test]
    fn policy() {
        assert!(check_policy("short").is_err());
        assert!(check_policy("        ").is_err());
        assert!(check_policy(&"x".repeat(200)).is_err());
        assert!(check_policy("long enough").is_ok());
    }
}
