//! [`Db`]: a service's pool that counts and times each call into the request's
//! [`crate::tally`], so the request's record can be followed by one `client` record for the
//! database (`orders -> orders-db` in the topology).
//!
//! `&Db` is an `sqlx::Executor` that hands every call to the pool: queries are written exactly as
//! against `&AnyPool` (`.fetch_one(&state.pool)`). sqlx routes every executor method through two
//! of them (`fetch_many` for streams, `execute`, `fetch_all`; `fetch_optional` for `fetch_one`),
//! so wrapping those two times everything. Outside a tally scope (background tasks) a call costs
//! one task-local lookup more than the pool's, and no clock reads.
//!
//! Transactions: [`Db::begin`] returns a [`Tx`], and the statements inside it go straight to its
//! connection, so a transaction counts as **one call**, from `begin` until it is committed,
//! rolled back or dropped; it is an error only if `BEGIN` or `COMMIT` fails (a statement that
//! fails inside it usually fails the request, which its own record shows).
//!
//! `Db` derefs to the `AnyPool` for everything else (`acquire`, `close`, passing it to code that
//! takes a pool); calls made that way are not counted.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use futures_util::Stream;
use sqlx::any::{AnyQueryResult, AnyRow, AnyStatement, AnyTypeInfo};
use sqlx::{Any, AnyConnection, AnyPool, Describe, Either, Execute, Executor, Transaction};

use super::{Backend, Migration};
use crate::tally::{self, Kind, Peer};

/// A service's database: its pool, and the node it is in the topology (`<service>-db`).
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    peer: Arc<Peer>,
    backend: Backend,
}

impl fmt::Debug for Db {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Db")
            .field("peer", &self.peer.name)
            .field("backend", &self.backend)
            .finish()
    }
}

impl Db {
    /// Wraps `service`'s pool; its calls are reported against the peer `<service>-db`.
    pub fn new(pool: AnyPool, backend: Backend, service: &str) -> Self {
        let system = match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        };
        Self {
            pool,
            peer: Arc::new(Peer {
                name: format!("{service}-db"),
                system,
            }),
            backend,
        }
    }

    /// [`super::open`] for `service`: connects, migrates, and wraps the pool.
    pub async fn open(service: &str, url: &str, migrations: &[Migration]) -> anyhow::Result<Self> {
        let (pool, backend) = super::open(url, migrations).await?;
        Ok(Self::new(pool, backend, service))
    }

    /// The pool underneath (its calls are not counted).
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The node this database is in the topology.
    pub fn peer(&self) -> &str {
        &self.peer.name
    }

    /// Starts a transaction, counted as one call until it ends.
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let started = tally::active().then(Instant::now);
        match self.pool.begin().await {
            Ok(inner) => Ok(Tx {
                inner,
                timer: Timer {
                    started: started.map(|started| (self.peer.clone(), started)),
                    ok: true,
                },
            }),
            Err(error) => {
                if let Some(started) = started {
                    tally::record(Kind::Database, &self.peer, started, false);
                }
                Err(error)
            }
        }
    }
}

impl Deref for Db {
    type Target = AnyPool;

    fn deref(&self) -> &AnyPool {
        &self.pool
    }
}

impl<'p> Executor<'p> for &'_ Db {
    type Database = Any;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<AnyQueryResult, AnyRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Any>,
    {
        let stream = (&self.pool).fetch_many(query);
        if !tally::active() {
            return stream;
        }
        Box::pin(Timed {
            stream,
            peer: Some(self.peer.clone()),
            started: Instant::now(),
            ok: true,
        })
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<AnyRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Any>,
    {
        let future = (&self.pool).fetch_optional(query);
        if !tally::active() {
            return future;
        }
        let peer = self.peer.clone();
        Box::pin(async move {
            let started = Instant::now();
            let result = future.await;
            tally::record(Kind::Database, &peer, started, result.is_ok());
            result
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [AnyTypeInfo],
    ) -> BoxFuture<'e, Result<AnyStatement<'q>, sqlx::Error>> {
        (&self.pool).prepare_with(sql, parameters)
    }

    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Any>, sqlx::Error>> {
        (&self.pool).describe(sql)
    }
}

/// A result stream that adds itself to the tally when it ends (or is dropped unfinished).
struct Timed<'e, T> {
    stream: BoxStream<'e, Result<T, sqlx::Error>>,
    /// Taken when recorded, so a call is counted once.
    peer: Option<Arc<Peer>>,
    started: Instant,
    ok: bool,
}

impl<T> Timed<'_, T> {
    fn done(&mut self) {
        if let Some(peer) = self.peer.take() {
            tally::record(Kind::Database, &peer, self.started, self.ok);
        }
    }
}

impl<T> Stream for Timed<'_, T> {
    type Item = Result<T, sqlx::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.stream.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(None) => self.done(),
            Poll::Ready(Some(Err(_))) => {
                self.ok = false;
                self.done();
            }
            _ => {}
        }
        polled
    }
}

impl<T> Drop for Timed<'_, T> {
    fn drop(&mut self) {
        self.done();
    }
}

/// A transaction from [`Db::begin`]: use it as the connection it derefs to (`&mut *tx`), then
/// [`Tx::commit`]. Dropped uncommitted, it rolls back, as sqlx's does.
pub struct Tx {
    inner: Transaction<'static, Any>,
    timer: Timer,
}

/// Adds the transaction to the tally when it ends, however it ends.
struct Timer {
    /// Set when the transaction began inside a tally scope.
    started: Option<(Arc<Peer>, Instant)>,
    ok: bool,
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some((peer, started)) = self.started.take() {
            tally::record(Kind::Database, &peer, started, self.ok);
        }
    }
}

impl Tx {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        let Tx { inner, mut timer } = self;
        let result = inner.commit().await;
        timer.ok = result.is_ok();
        result
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        let Tx {
            inner,
            timer: _timer,
        } = self;
        inner.rollback().await
    }
}

impl Deref for Tx {
    type Target = AnyConnection;

    fn deref(&self) -> &AnyConnection {
        &self.inner
    }
}

impl DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEMS: &[Migration] = &[Migration {
        version: 1,
        description: "items",
        sqlite: "CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)",
        postgres: "CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL)",
    }];

    /// A query through `&Db` inside a tally scope is counted and timed; one outside is not; a
    /// failing one counts as an error; a transaction is one call.
    #[tokio::test]
    async fn queries_in_a_scope_are_counted_and_timed() {
        let dir = tempfile::tempdir().unwrap();
        let url = super::super::url_for("items", None, dir.path()).unwrap();
        let db = Db::open("items", &url, ITEMS).await.unwrap();
        assert_eq!(db.peer(), "items-db");

        // Outside any scope: nothing to count into, and nothing breaks.
        sqlx::query("INSERT INTO items (id, name) VALUES (1, 'a')")
            .execute(&db)
            .await
            .unwrap();

        let ((), finished) = tally::scope(async {
            let name: String = sqlx::query_scalar("SELECT name FROM items WHERE id = $1")
                .bind(1_i64)
                .fetch_one(&db)
                .await
                .unwrap();
            assert_eq!(name, "a");
            let all: Vec<(i64, String)> = sqlx::query_as("SELECT id, name FROM items")
                .fetch_all(&db)
                .await
                .unwrap();
            assert_eq!(all.len(), 1);
            let missing = sqlx::query("SELECT nothing FROM no_such_table")
                .fetch_optional(&db)
                .await;
            assert!(missing.is_err());
            let mut tx = db.begin().await.unwrap();
            sqlx::query("INSERT INTO items (id, name) VALUES (2, 'b')")
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        })
        .await;
        let (peer, counts) = finished.db.expect("the calls were counted");
        assert_eq!((peer.name.as_str(), peer.system), ("items-db", "sqlite"));
        // fetch_one, fetch_all, the failing query, the transaction.
        assert_eq!((counts.calls, counts.errors), (4, 1));
        assert!(counts.total_us > 0 && counts.max_us > 0, "{counts:?}");
        assert!(counts.max_us <= counts.total_us);
        assert!(counts.first.is_some());

        let ((), outside) = tally::scope(async {}).await;
        assert!(outside.db.is_none());
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM items")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(rows, 2);
    }
}
