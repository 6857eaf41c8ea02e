//! The token signing keys: generated on first start and kept in the auth database, so every auth
//! instance signs with the same key and restarts do not invalidate tokens; rotated on demand
//! (`POST /auth/admin/keys/rotate`) or on a schedule (`STRATUS_KEY_ROTATION`).
//!
//! Rotation without breaking anyone: the new key becomes the one that signs, at once; the old
//! one stops signing but stays in the JWKS until every token it signed has expired (its
//! `retire_at`: the rotation time plus the access token lifetime plus [`RETIRE_MARGIN`]), and is
//! then deleted. Verifiers (the gateway, `kit::auth::Tokens`) fetch the JWKS again when a token
//! names a key id they have not seen, so tokens from both keys pass during the overlap.
//!
//! Several auth instances share the table; each one re-reads the current key every
//! [`SYNC_INTERVAL`], so a rotation made through one reaches the others within that time (well
//! inside the overlap, during which both keys verify).
//!
//! The private keys are stored sealed ([`crate::sealed::SIGNING_KEY`]): a copy of the table
//! cannot sign anything.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use stratus_identity::Sealer;
use stratus_kit::db::Db;
use stratus_token::{now_unix, Jwks, SigningKey};

use crate::sealed::SIGNING_KEY;

/// Extra time an old key stays published after the last token it could have signed expires:
/// covers verifier clock skew (30 s) and instances that learn of a rotation late.
pub const RETIRE_MARGIN: Duration = Duration::from_secs(120);
/// How often each instance re-reads the current key and prunes retired ones.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(5);

/// The key this instance signs with, swapped when the current key changes.
pub struct CurrentKey(RwLock<Arc<SigningKey>>);

impl CurrentKey {
    pub fn new(key: SigningKey) -> Self {
        Self(RwLock::new(Arc::new(key)))
    }

    pub fn get(&self) -> Arc<SigningKey> {
        match self.0.read() {
            Ok(key) => key.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set(&self, key: SigningKey) {
        match self.0.write() {
            Ok(mut current) => *current = Arc::new(key),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(key),
        }
    }
}

/// The current stored key, creating one if there is none.
pub async fn current_or_create(pool: &Db, sealer: &Sealer) -> anyhow::Result<SigningKey> {
    if let Some(key) = current(pool, sealer).await? {
        return Ok(key);
    }
    let key = SigningKey::generate(new_kid())?;
    // Two instances starting together may both generate one; both insert, and both then use
    // whichever is newest. The other stays published (it signed nothing) until a rotation.
    insert(pool, sealer, &key).await?;
    tracing::info!(kid = key.kid(), "generated a new token signing key");
    current(pool, sealer)
        .await?
        .ok_or_else(|| anyhow::anyhow!("the signing key vanished"))
}

async fn insert(
    executor: impl sqlx::Executor<'_, Database = sqlx::Any>,
    sealer: &Sealer,
    key: &SigningKey,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO signing_keys (kid, pkcs8, created_at, created_unix) VALUES ($1, $2, $3, $4)",
    )
    .bind(key.kid())
    .bind(SIGNING_KEY.seal(sealer, key.kid(), &STANDARD.encode(key.pkcs8())))
    .bind(stratus_kit::now_rfc3339())
    .bind(now_unix() as i64)
    .execute(executor)
    .await?;
    Ok(())
}

/// A stored key: its row opened and decoded.
fn stored_key(sealer: &Sealer, kid: String, stored: &str) -> anyhow::Result<SigningKey> {
    let der = STANDARD.decode(SIGNING_KEY.open(sealer, &kid, stored)?)?;
    Ok(SigningKey::from_pkcs8(kid, &der)?)
}

/// The newest key that is not retiring, with its creation time.
async fn current_row(pool: &Db, sealer: &Sealer) -> anyhow::Result<Option<(SigningKey, i64)>> {
    let row: Option<(String, String, i64)> = sqlx::query_as(
        "SELECT kid, pkcs8, created_unix FROM signing_keys WHERE retire_at IS NULL \
         ORDER BY created_unix DESC, created_at DESC, kid DESC LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    row.map(|(kid, stored, created)| Ok((stored_key(sealer, kid, &stored)?, created)))
        .transpose()
}

pub async fn current(pool: &Db, sealer: &Sealer) -> anyhow::Result<Option<SigningKey>> {
    Ok(current_row(pool, sealer).await?.map(|(key, _)| key))
}

/// A retired key: it signs nothing more and leaves the JWKS at `retire_at` (Unix seconds).
#[derive(Debug, serde::Serialize)]
pub struct Retiring {
    pub kid: String,
    pub retire_at: i64,
}

/// Makes a new key current. Every key that was current is retired at `now + token_ttl +`
/// [`RETIRE_MARGIN`]. One transaction, so concurrent rotations leave exactly one current key.
pub async fn rotate(
    pool: &Db,
    sealer: &Sealer,
    token_ttl: Duration,
) -> anyhow::Result<(SigningKey, Vec<Retiring>)> {
    let key = SigningKey::generate(new_kid())?;
    let retire_at = (now_unix() + token_ttl.as_secs() + RETIRE_MARGIN.as_secs()) as i64;
    let mut tx = pool.begin().await?;
    let retiring: Vec<(String,)> =
        sqlx::query_as("SELECT kid FROM signing_keys WHERE retire_at IS NULL")
            .fetch_all(&mut *tx)
            .await?;
    sqlx::query("UPDATE signing_keys SET retire_at = $1 WHERE retire_at IS NULL")
        .bind(retire_at)
        .execute(&mut *tx)
        .await?;
    insert(&mut *tx, sealer, &key).await?;
    tx.commit().await?;
    let retiring = retiring
        .into_iter()
        .map(|(kid,)| Retiring { kid, retire_at })
        .collect::<Vec<_>>();
    tracing::info!(kid = key.kid(), retired = ?retiring, "token signing key rotated");
    Ok((key, retiring))
}

/// The public half of every key that may still have signed a live token.
pub async fn jwks(pool: &Db, sealer: &Sealer) -> anyhow::Result<Jwks> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT kid, pkcs8 FROM signing_keys WHERE retire_at IS NULL OR retire_at > $1 \
         ORDER BY created_unix DESC, created_at DESC",
    )
    .bind(now_unix() as i64)
    .fetch_all(pool)
    .await?;
    let mut keys = Vec::with_capacity(rows.len());
    for (kid, stored) in rows {
        keys.push(stored_key(sealer, kid, &stored)?.jwk());
    }
    Ok(Jwks { keys })
}

/// Deletes keys whose every token has expired.
pub async fn prune(pool: &Db) -> anyhow::Result<u64> {
    let deleted =
        sqlx::query("DELETE FROM signing_keys WHERE retire_at IS NOT NULL AND retire_at <= $1")
            .bind(now_unix() as i64)
            .execute(pool)
            .await?;
    Ok(deleted.rows_affected())
}

/// Keeps this instance's signing key in step with the table, rotates on schedule (when
/// `every` is set) and prunes retired keys. Runs for the life of the process.
pub async fn maintain(
    pool: Db,
    sealer: Arc<Sealer>,
    key: Arc<CurrentKey>,
    token_ttl: Duration,
    every: Option<Duration>,
) {
    let mut ticker = tokio::time::interval(SYNC_INTERVAL);
    loop {
        ticker.tick().await;
        if let Err(error) = sync(&pool, &sealer, &key, token_ttl, every).await {
            tracing::warn!(error = %format!("{error:#}"), "signing key upkeep failed");
        }
    }
}

async fn sync(
    pool: &Db,
    sealer: &Sealer,
    key: &CurrentKey,
    token_ttl: Duration,
    every: Option<Duration>,
) -> anyhow::Result<()> {
    let Some((stored, created)) = current_row(pool, sealer).await? else {
        return Ok(());
    };
    let due = every.is_some_and(|every| now_unix() as i64 - created >= every.as_secs() as i64);
    if due {
        let (new, _) = rotate(pool, sealer, token_ttl).await?;
        key.set(new);
    } else if stored.kid() != key.get().kid() {
        tracing::info!(kid = stored.kid(), "now signing with the current key");
        key.set(stored);
    }
    let pruned = prune(pool).await?;
    if pruned > 0 {
        tracing::info!(pruned, "retired signing keys deleted");
    }
    Ok(())
}

/// Replaces this instance's key after a rotation it made itself.
pub fn install(key: &CurrentKey, new: SigningKey) {
    key.set(new);
}

fn new_kid() -> String {
    // The whole id: a UUIDv7's leading digits are its timestamp, its trailing ones random.
    format!("k{}", stratus_kit::new_id().replace('-', ""))
}
