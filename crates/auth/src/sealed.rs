//! Auth's secrets at rest: what a copy of the auth database must not reveal is stored sealed
//! (AES-256-GCM, [`stratus_identity::seal`]) with the seal key, which the database never holds
//! (`STRATUS_SEAL_KEY`, `STRATUS_SEAL_KEY_FILE`, or `<data dir>/identity/seal.key`:
//! `stratus_kit::seal_key`).
//!
//! Sealed: TOTP secrets (`mfa_totp.secret`) and the token signing keys (`signing_keys.pkcs8`).
//! Not sealed, because they are stored only as hashes, which reveal nothing to open: passwords
//! and client secrets (argon2id), refresh tokens, authorization codes and recovery codes
//! (SHA-256 of 256, 256 and 60 random bits).
//!
//! Each value is sealed with a context naming its table, column and row
//! (`auth:mfa_totp.secret:<user id>`), so a sealed value copied into another row (an attacker's
//! own TOTP secret into the admin's row) does not open there. What is sealed is the column's
//! text as it was before sealing (the base32 secret, the base64 PKCS#8 document), so values
//! from before sealing and sealed ones read back the same.
//!
//! At start ([`reseal_all`]) every stored value is opened, in one transaction: a value that
//! does not open stops the start with an error naming its key id (regenerating a signing key
//! would log everybody out, losing a TOTP secret would lock its user out, so neither happens
//! silently); values sealed with an older key line are sealed again with the current one (key
//! rotation); values from before sealing are sealed (the upgrade). Later reads still take a
//! value from before sealing, which an older instance may write during a rolling upgrade; the
//! next start seals it.

use stratus_identity::seal::{is_sealed, SealError};
use stratus_identity::Sealer;
use stratus_kit::db::{Backend, Db};

/// A column holding a secret, and the column naming its row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub table: &'static str,
    pub column: &'static str,
    pub row_key: &'static str,
}

pub const TOTP_SECRET: Field = Field {
    table: "mfa_totp",
    column: "secret",
    row_key: "user_id",
};

pub const SIGNING_KEY: Field = Field {
    table: "signing_keys",
    column: "pkcs8",
    row_key: "kid",
};

/// Every sealed column of the auth database.
pub const FIELDS: &[Field] = &[TOTP_SECRET, SIGNING_KEY];

/// A stored value that did not open.
#[derive(Debug, thiserror::Error)]
#[error("{table}.{column} of {row_key} `{row}` {reason}")]
pub struct Unopened {
    pub table: &'static str,
    pub column: &'static str,
    pub row_key: &'static str,
    pub row: String,
    pub reason: String,
}

impl Field {
    /// What the value is sealed with besides the key: its table, column and row.
    fn context(&self, row: &str) -> String {
        format!("auth:{}.{}:{row}", self.table, self.column)
    }

    /// The text to store for `plain` in row `row`.
    pub fn seal(&self, sealer: &Sealer, row: &str, plain: &str) -> String {
        sealer.seal(&self.context(row), plain.as_bytes())
    }

    /// The plain text of a stored value (a value from before sealing is returned as it is).
    pub fn open(&self, sealer: &Sealer, row: &str, stored: &str) -> Result<String, Unopened> {
        if !is_sealed(stored) {
            return Ok(stored.to_string());
        }
        let unopened = |reason: String| Unopened {
            table: self.table,
            column: self.column,
            row_key: self.row_key,
            row: row.to_string(),
            reason,
        };
        let plain = sealer
            .open(&self.context(row), stored)
            .map_err(|error| unopened(reason(sealer, stored, &error)))?;
        String::from_utf8(plain).map_err(|_| unopened("opens to something not text".into()))
    }
}

/// Why a value did not open, in words that say what to do.
fn reason(sealer: &Sealer, stored: &str, error: &SealError) -> String {
    match error {
        SealError::UnknownKey(id) => format!(
            "is sealed with seal key `{id}`, which is not among the seal keys given (the \
             current one is `{}`): keep the line of `{id}` after the new one until auth has \
             started once with both",
            sealer.current_id()
        ),
        SealError::Corrupt => {
            let id = stored
                .strip_prefix("sealed:v1:")
                .and_then(|rest| rest.split_once(':'))
                .map_or("?", |(id, _)| id);
            format!(
                "does not open with seal key `{id}`: the key line named `{id}` is not the one \
                 it was sealed with, or the value was altered or copied from another row"
            )
        }
        other => other.to_string(),
    }
}

/// What [`reseal_all`] changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Values from before sealing, now sealed.
    pub from_plain: u64,
    /// Values sealed with an older key, now sealed with the current one.
    pub from_old_key: u64,
}

/// Opens every sealed value and stores each one that is not sealed with the current key sealed
/// with it, in one transaction: either every value is current afterwards or nothing changed.
///
/// Several instances may start at once: on SQLite the transaction takes the write lock first
/// (`BEGIN IMMEDIATE`), so they take turns; on PostgreSQL each update names the value it
/// replaces, so an instance that comes second changes nothing.
pub async fn reseal_all(pool: &Db, sealer: &Sealer) -> anyhow::Result<Resealed> {
    let begin = match pool.backend() {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN",
    };
    let mut tx = pool.pool().begin_with(begin).await?;
    let mut done = Resealed::default();
    for field in FIELDS {
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT {key}, {column} FROM {table}",
            key = field.row_key,
            column = field.column,
            table = field.table
        ))
        .fetch_all(&mut *tx)
        .await?;
        for (row, stored) in rows {
            let plain = field.open(sealer, &row, &stored)?;
            if sealer.is_current(&stored) {
                continue;
            }
            if is_sealed(&stored) {
                done.from_old_key += 1;
            } else {
                done.from_plain += 1;
            }
            sqlx::query(&format!(
                "UPDATE {table} SET {column} = $1 WHERE {key} = $2 AND {column} = $3",
                key = field.row_key,
                column = field.column,
                table = field.table
            ))
            .bind(field.seal(sealer, &row, &plain))
            .bind(&row)
            .bind(&stored)
            .execute(&mut *tx)
            .await?;
        }
    }
    tx.commit().await?;
    if done.from_plain > 0 && pool.backend() == Backend::Sqlite {
        forget_plain_pages(pool).await;
    }
    Ok(done)
}

/// After sealing values from before sealing: SQLite leaves the old text of a changed or deleted
/// row in free space inside its pages (and in the write-ahead log) until something overwrites
/// it, so a copy of the file would still hold the plain values, and any deleted before the
/// upgrade (disabled TOTP secrets, pruned signing keys). `VACUUM` rebuilds every page from the
/// live rows, and the checkpoint writes them over the old file and empties the log.
///
/// Best effort, once (the next start finds nothing plain): another instance reading the file at
/// that moment can keep the checkpoint from finishing, which the warning says.
async fn forget_plain_pages(pool: &Db) {
    let result: Result<bool, sqlx::Error> = async {
        let mut conn = pool.acquire().await?;
        sqlx::query("VACUUM").execute(&mut *conn).await?;
        let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
            .fetch_one(&mut *conn)
            .await?;
        Ok(busy == 0)
    }
    .await;
    match result {
        Ok(true) => tracing::info!("auth database rewritten without its former plain secrets"),
        Ok(false) => tracing::warn!(
            "the auth database was vacuumed but its write-ahead log is still in use; old plain \
             secrets may remain in the -wal file until the next checkpoint"
        ),
        Err(error) => tracing::warn!(
            %error,
            "could not vacuum the auth database after sealing its secrets; their old plain \
             copies may remain in its free pages until `VACUUM` is run on it"
        ),
    }
}
