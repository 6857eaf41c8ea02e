//! Users: creation, lookup, and the admin account made on first start.

use rand::distr::{Alphanumeric, SampleString};
use stratus_kit::db::is_unique_violation;
use stratus_kit::db::Db;

use crate::passwords;
use crate::ADMIN_EMAIL;

#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub roles: Vec<String>,
}

pub enum Created {
    Yes(User),
    EmailTaken,
}

fn roles_from(text: &str) -> Vec<String> {
    text.split(',')
        .filter(|r| !r.is_empty())
        .map(str::to_string)
        .collect()
}

pub async fn create(
    pool: &Db,
    email: &str,
    password: &str,
    roles: &[&str],
) -> anyhow::Result<Created> {
    let user = User {
        id: stratus_kit::new_id(),
        email: email.to_string(),
        password_hash: passwords::hash(password.to_string()).await?,
        roles: roles.iter().map(|r| r.to_string()).collect(),
    };
    let result = sqlx::query(
        "INSERT INTO users (id, email, password_hash, roles, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(&user.id)
    .bind(&user.email)
    .bind(&user.password_hash)
    .bind(user.roles.join(","))
    .bind(stratus_kit::now_rfc3339())
    .execute(pool)
    .await;
    match result {
        Ok(_) => Ok(Created::Yes(user)),
        Err(error) if is_unique_violation(&error) => Ok(Created::EmailTaken),
        Err(error) => Err(error.into()),
    }
}

pub async fn by_email(pool: &Db, email: &str) -> anyhow::Result<Option<User>> {
    find(
        pool,
        "SELECT id, email, password_hash, roles FROM users WHERE email = $1",
        email,
    )
    .await
}

pub async fn by_id(pool: &Db, id: &str) -> anyhow::Result<Option<User>> {
    find(
        pool,
        "SELECT id, email, password_hash, roles FROM users WHERE id = $1",
        id,
    )
    .await
}

async fn find(pool: &Db, query: &str, key: &str) -> anyhow::Result<Option<User>> {
    let row: Option<(String, String, String, String)> =
        sqlx::query_as(query).bind(key).fetch_optional(pool).await?;
    Ok(row.map(|(id, email, password_hash, roles)| User {
        id,
        email,
        password_hash,
        roles: roles_from(&roles),
    }))
}

/// Creates `admin@stratus.local` if it does not exist. With no password configured, one is
/// generated and printed once: secrets never have defaults in code.
pub async fn ensure_admin(pool: &Db, configured: Option<&str>) -> anyhow::Result<()> {
    if by_email(pool, ADMIN_EMAIL).await?.is_some() {
        return Ok(());
    }
    let (password, generated) = match configured.filter(|p| !p.is_empty()) {
        Some(password) => (password.to_string(), false),
        None => (Alphanumeric.sample_string(&mut rand::rng(), 20), true),
    };
    passwords::check_policy(&password)
        .map_err(|e| anyhow::anyhow!("STRATUS_ADMIN_PASSWORD does not meet the policy: {e}"))?;
    match create(pool, ADMIN_EMAIL, &password, &["admin"]).await? {
        Created::Yes(_) if generated => {
            println!("admin user created: {ADMIN_EMAIL} / password: {password}");
            println!("(shown once; set STRATUS_ADMIN_PASSWORD to choose it)");
            tracing::info!(
                email = ADMIN_EMAIL,
                "admin user created with a generated password"
            );
        }
        Created::Yes(_) => tracing::info!(email = ADMIN_EMAIL, "admin user created"),
        Created::EmailTaken => {}
    }
    Ok(())
}

/// Normalises and checks an email address: trimmed, lower case, one `@`, a dotted domain.
pub fn normalize_email(email: &str) -> Result<String, String> {
    // At most 254 characters as sent (white space included), and 254 bytes once normalised.
    let sent = email.chars().count();
    let email = email.trim().to_lowercase();
    let valid = sent <= 254
        && email.len() <= 254
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    if valid {
        Ok(email)
    } else {
        Err("email must be a valid address like name@example.com".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails() {
        assert_eq!(
            normalize_email(" Ann@Example.COM ").unwrap(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@x.com",
            "ann@x",
            "a b@x.com",
            "a@b@x.com",
            "a@.com",
        ] {
            assert!(normalize_email(bad).is_err(), "{bad}");
        }
    }
}
