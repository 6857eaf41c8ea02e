//! Switching a SQLite file that several processes share to write-ahead logging.
//!
//! Every local Stratus process opens its files (the embedded broker's queue, a service's own
//! database, shared by that service's instances) as it starts, and `stratus up` starts them
//! together. Entering WAL mode needs an exclusive lock that SQLite does not wait for: the busy
//! timeout covers reads and writes, not a journal-mode change, so the loser of that race gets
//! an immediate `SQLITE_BUSY`. Once the file is in WAL mode (a setting kept in the file), the
//! pragma only reads it, and the race cannot happen again; until then we retry.

use std::time::{Duration, Instant};

use sqlx::sqlite::SqliteConnection;
use sqlx::Executor;

/// How long to keep retrying: far longer than any other process holds the lock at start-up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(15);

/// Runs `PRAGMA journal_mode = WAL` on `conn`, waiting out another connection's lock.
pub async fn switch_to_wal(conn: &mut SqliteConnection) -> Result<(), sqlx::Error> {
    let deadline = Instant::now() + GIVE_UP_AFTER;
    let mut pause = Duration::from_millis(2);
    loop {
        match (&mut *conn).execute("PRAGMA journal_mode = WAL").await {
            Err(error) if is_busy(&error) && Instant::now() < deadline => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            result => return result.map(drop),
        }
    }
}

/// `SQLITE_BUSY` or `SQLITE_LOCKED`, in any of their extended forms (the low byte is the code).
fn is_busy(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    error
        .code()
        .and_then(|code| code.parse::<i32>().ok())
        .is_some_and(|code| matches!(code & 0xff, 5 | 6))
}
