//! A database per service: SQLite by default, PostgreSQL when `DATABASE_URL` says so.
//!
//! Queries are written once with `$1..$N` placeholders, which both SQLite and PostgreSQL accept,
//! and run through sqlx's `Any` driver. Migrations carry one script per backend where the dialects
//! differ. A configured database that cannot be reached is an error at start-up, never a silent
//! fallback to SQLite; nor is one that cannot speak TLS when the URL asks for it
//! (`sslmode=require` or stricter) a fallback to plaintext. `sslmode.rs` says what each mode
//! checks.
//!
//! Services hold a [`Db`]: the pool, counting and timing each call into the request's tally
//! (`timed.rs`), so the sink sees `<service> -> <service>-db` with its latency.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyPoolOptions, AnyQueryResult};
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{AnyPool, Connection, Executor};

mod sslmode;
mod timed;
pub use timed::{Db, Tx};

/// One schema change, in both dialects.
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sqlite: &'static str,
    pub postgres: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Ok(Backend::Postgres)
        } else {
            anyhow::bail!(
                "DATABASE_URL must start with sqlite: or postgres: (got {})",
                redact(url)
            )
        }
    }
}

/// The URL to use: `DATABASE_URL` if set, else `<data dir>/<service>.db`.
pub fn url_for(
    service: &str,
    database_url: Option<&str>,
    data_dir: &Path,
) -> anyhow::Result<String> {
    if let Some(url) = database_url.filter(|u| !u.is_empty()) {
        return Ok(url.to_string());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let dir = data_dir
        .canonicalize()
        .context("resolving the data directory")?;
    Ok(format!(
        "sqlite://{}?mode=rwc",
        dir.join(format!("{service}.db")).display()
    ))
}

/// How many connections a service keeps open to its SQLite file (all of them, always).
pub const SQLITE_CONNECTIONS: u32 = 4;

/// The page cache of each SQLite connection: 1 MiB.
pub const SQLITE_CACHE: &str = "PRAGMA cache_size = -1024";

/// Connects (failing clearly if the database is unreachable) and applies pending migrations.
pub async fn open(url: &str, migrations: &[Migration]) -> anyhow::Result<(AnyPool, Backend)> {
    sqlx::any::install_default_drivers();
    let backend = Backend::of(url)?;
    if backend == Backend::Postgres {
        if let Some(warning) = sslmode::weakness(sslmode::of(url).as_deref()) {
            tracing::warn!(database = %redact(url), "{warning}");
        }
    }
    if backend == Backend::Sqlite {
        enter_wal(url)
            .await
            .with_context(|| format!("switching {} to write-ahead logging", redact(url)))?;
    }
    let mut options = AnyPoolOptions::new()
        .max_connections(if backend == Backend::Sqlite {
            SQLITE_CONNECTIONS
        } else {
            10
        })
        .acquire_timeout(Duration::from_secs(5));
    if backend == Backend::Sqlite {
        // Every SQLite connection is a thread with its own page cache and statement cache.
        // A fixed set, opened at start-up and never closed, keeps the process's footprint
        // set from the first minute: with sqlx's defaults a burst opens connections that the
        // idle timeout closes minutes later, and the churn leaves the heap fragmented.
        options = options
            .min_connections(SQLITE_CONNECTIONS)
            .idle_timeout(None)
            .max_lifetime(None);
    }
    let options = options.after_connect(move |conn, _| {
        Box::pin(async move {
            if backend == Backend::Sqlite {
                // Several instances of one service share the file: wait for locks rather
                // than fail, and let readers run beside the writer.
                // (WAL itself is a setting of the file, made once by `enter_wal`.)
                conn.execute("PRAGMA busy_timeout = 5000").await?;
                conn.execute("PRAGMA foreign_keys = ON").await?;
                // A bounded page cache per connection (SQLite's default is 2 MiB): the OS
                // caches the file anyway, and a process's memory stays flat as the
                // database grows instead of filling every connection's cache in turn.
                conn.execute(SQLITE_CACHE).await?;
            }
            Ok(())
        })
    });
    let pool = options
        .connect(url)
        .await
        .with_context(|| format!("connecting to the database at {}", redact(url)))?;
    migrate(&pool, backend, migrations).await?;
    Ok((pool, backend))
}

/// Puts the SQLite file in WAL mode (a setting stored in the file) before the pool opens, waiting
/// out the other instances of the service that start at the same moment and race to do the same.
async fn enter_wal(url: &str) -> anyhow::Result<()> {
    let options = SqliteConnectOptions::from_str(url)?.busy_timeout(Duration::from_secs(5));
    let mut conn = SqliteConnection::connect_with(&options).await?;
    stratus_broker::switch_to_wal(&mut conn).await?;
    conn.close().await?;
    Ok(())
}

async fn migrate(pool: &AnyPool, backend: Backend, migrations: &[Migration]) -> anyhow::Result<()> {
    let mut conn = pool.acquire().await?;
    if backend == Backend::Postgres {
        // Instances starting together take turns; the lock ends with the session.
        conn.execute("SELECT pg_advisory_lock(7301)").await?;
    }
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)",
    )
    .await?;
    for migration in migrations {
        // SQLite: instances starting together on one file take turns here. `BEGIN IMMEDIATE`
        // takes the write lock before the check (waiting out the busy timeout), so a second
        // instance sees the first one's migration as applied instead of repeating it.
        let begin = match backend {
            Backend::Sqlite => "BEGIN IMMEDIATE",
            Backend::Postgres => "BEGIN",
        };
        conn.execute(begin).await?;
        match apply(&mut conn, backend, migration).await {
            Ok(applied) => {
                conn.execute("COMMIT").await?;
                if applied {
                    tracing::info!(
                        version = migration.version,
                        description = migration.description,
                        "migrated"
                    );
                }
            }
            Err(error) => {
                let _ = conn.execute("ROLLBACK").await;
                return Err(error);
            }
        }
    }
    if backend == Backend::Postgres {
        conn.execute("SELECT pg_advisory_unlock(7301)").await?;
    }
    Ok(())
}

/// Applies one migration inside the caller's transaction, unless it already is; whether it ran.
async fn apply(
    conn: &mut sqlx::pool::PoolConnection<sqlx::Any>,
    backend: Backend,
    migration: &Migration,
) -> anyhow::Result<bool> {
    let applied: Option<(i64,)> =
        sqlx::query_as("SELECT version FROM schema_migrations WHERE version = $1")
            .bind(migration.version)
            .fetch_optional(&mut **conn)
            .await?;
    if applied.is_some() {
        return Ok(false);
    }
    let script = match backend {
        Backend::Sqlite => migration.sqlite,
        Backend::Postgres => migration.postgres,
    };
    for statement in script.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        conn.execute(statement).await.with_context(|| {
            format!(
                "migration {} ({})",
                migration.version, migration.description
            )
        })?;
    }
    sqlx::query(
        "INSERT INTO schema_migrations (version, description, applied_at) VALUES ($1, $2, $3)",
    )
    .bind(migration.version)
    .bind(migration.description)
    .bind(crate::now_rfc3339())
    .execute(&mut **conn)
    .await?;
    Ok(true)
}

/// Whether an error is a unique-constraint violation (a duplicate key).
pub fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// Rows changed by a statement, for "did that id exist" checks.
pub fn changed(result: &AnyQueryResult) -> bool {
    result.rows_affected() > 0
}

/// A readiness check that the database answers.
pub async fn ping(pool: &AnyPool) -> Result<(), String> {
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Query parameters whose value is a secret: libpq and sqlx take `password` there as well as in
/// the user part, libpq `sslpassword` (the client key's passphrase), redis-rs `pass` (Unix
/// sockets).
const SECRET_PARAMETERS: [&str; 3] = ["password", "sslpassword", "pass"];

/// The URL without its secrets, for messages and logs: the password of its user part and the
/// value of every secret query parameter become `***`; the rest (user, host, database, `sslmode`,
/// `sslrootcert`) stays, so the message still says which backend it was about.
///
/// It never parses strictly: a URL bad enough to fail the driver's parser is exactly the one an
/// error message prints. The user part ends at the last `@` before the query; a password with a
/// raw `?` in it ends at the last `@` of all, which may hide more than the password, never less.
pub fn redact(url: &str) -> String {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let query_at = rest.find('?').unwrap_or(rest.len());
    let at = rest[..query_at].rfind('@').or_else(|| rest.rfind('@'));
    let mut out = String::with_capacity(url.len());
    out.push_str(&url[..start]);
    let after = match at {
        Some(at) => {
            match rest[..at].split_once(':') {
                Some((user, _)) => {
                    out.push_str(user);
                    out.push_str(":***");
                }
                None => out.push_str(&rest[..at]),
            }
            &rest[at..]
        }
        None => rest,
    };
    match after.split_once('?') {
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            out.push_str(&redact_query(query));
        }
        None => out.push_str(after),
    }
    out
}

/// `name=value&...` with the values of [`SECRET_PARAMETERS`] replaced.
fn redact_query(query: &str) -> String {
    query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if SECRET_PARAMETERS.contains(&name.to_ascii_lowercase().as_str()) => {
                format!("{name}=***")
            }
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
        assert_eq!(
            redact("sqlite:///data/a@b/x.db?mode=rwc"),
            "sqlite:///data/a@b/x.db?mode=rwc"
        );
        assert_eq!(
            redact("rediss://:secret@h:6380/0"),
            "rediss://:***@h:6380/0"
        );
    }

    #[test]
    fn redacts_passwords_in_the_query_and_keeps_the_tls_settings() {
        assert_eq!(
            redact("postgres://u:secret@h/db?sslmode=verify-full&sslrootcert=/etc/ca@x.pem"),
            "postgres://u:***@h/db?sslmode=verify-full&sslrootcert=/etc/ca@x.pem"
        );
        assert_eq!(
            redact("postgres://h/db?user=u&password=secret&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(
            redact("postgres://h/db?PASSWORD=secret&sslpassword=other"),
            "postgres://h/db?PASSWORD=***&sslpassword=***"
        );
    }

    #[test]
    fn a_malformed_url_hides_more_never_less() {
        // A raw `?` and `@` in the password: no valid URL, but the message must not show it.
        let shown = redact("postgres://u:se?cr@et@h/db");
        assert!(
            !shown.contains("cr@et") && !shown.contains("se?"),
            "{shown}"
        );
        let shown = redact("postgres://u:s/e?c@h/db");
        assert!(!shown.contains("s/e?c"), "{shown}");
    }
}
