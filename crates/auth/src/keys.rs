//! The token signing key: generated on first start, kept in the auth database so every auth
//! instance signs with the same key and restarts do not invalidate tokens.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use sqlx::AnyPool;
use stratus_token::{Jwks, SigningKey};

/// The newest stored key, creating one if there is none.
pub async fn current_or_create(pool: &AnyPool) -> anyhow::Result<SigningKey> {
    if let Some(key) = newest(pool).await? {
        return Ok(key);
    }
    let kid = format!("k{}", uuid_suffix());
    let key = SigningKey::generate(kid)?;
    // Two instances starting together may both generate one; the first insert wins and both
    // then use whichever is newest.
    sqlx::query(
        "INSERT INTO signing_keys (kid, pkcs8, created_at) VALUES ($1, $2, $3) ON CONFLICT (kid) DO NOTHING",
    )
    .bind(key.kid())
    .bind(STANDARD.encode(key.pkcs8()))
    .bind(stratus_kit::now_rfc3339())
    .execute(pool)
    .await?;
    tracing::info!(kid = key.kid(), "generated a new token signing key");
    newest(pool)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the signing key vanished"))
}

async fn newest(pool: &AnyPool) -> anyhow::Result<Option<SigningKey>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT kid, pkcs8 FROM signing_keys ORDER BY created_at DESC, kid DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    row.map(|(kid, pkcs8)| {
        let der = STANDARD.decode(pkcs8)?;
        Ok(SigningKey::from_pkcs8(kid, &der)?)
    })
    .transpose()
}

/// Every stored key's public half: tokens signed by an older key stay verifiable.
pub async fn jwks(pool: &AnyPool) -> anyhow::Result<Jwks> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT kid, pkcs8 FROM signing_keys ORDER BY created_at DESC")
            .fetch_all(pool)
            .await?;
    let mut keys = Vec::with_capacity(rows.len());
    for (kid, pkcs8) in rows {
        keys.push(SigningKey::from_pkcs8(kid, &STANDARD.decode(pkcs8)?)?.jwk());
    }
    Ok(Jwks { keys })
}

fn uuid_suffix() -> String {
    stratus_kit::new_id().replace('-', "")[..16].to_string()
}
