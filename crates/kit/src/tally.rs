//! What one request (or one message) spent on its backing services: database calls and calls to
//! a shared cache, counted and timed while the request runs.
//!
//! The request-recording layer ([`crate::events::record_requests`]) and the message loop
//! ([`crate::consumer`]) run each request inside [`scope`]; the database handle
//! ([`crate::db::Db`]) and the Redis cache ([`crate::cache`]) add each call they make to the
//! [`Tally`] of the task they run in. When the request ends, a non-empty tally becomes one
//! `client` record per backing service (`peer` = the database or cache it called), so the
//! topology can draw `orders -> orders-db` with its own rate, errors and latency.
//!
//! Why a task-local: the request's handler and every query it awaits run in the one task that
//! polls the request's future, so the tally needs no lock, no allocation and no plumbing through
//! the ~70 query call sites. Work a handler spawns onto other tasks, and background tasks (the
//! outbox relay, retention), are outside every scope and cost nothing but one failed lookup.
//! (sqlx's own hooks do not fit: `after_release` runs on a task of the pool's, and its query
//! logging formats every statement's SQL.)

use std::cell::{Cell, OnceCell};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

tokio::task_local! {
    static TALLY: Tally;
}

/// Calls to one backing service within one request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub calls: u32,
    pub errors: u32,
    /// Summed time of every call, in microseconds.
    pub total_us: u64,
    /// The slowest call, in microseconds.
    pub max_us: u64,
    /// When the first call started.
    pub first: Option<Instant>,
}

impl Counts {
    fn add(&mut self, started: Instant, took: Duration, ok: bool) {
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        self.calls = self.calls.saturating_add(1);
        self.errors = self.errors.saturating_add(u32::from(!ok));
        self.total_us = self.total_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
        if self.first.is_none_or(|first| started < first) {
            self.first = Some(started);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.calls == 0
    }
}

/// Who a call went to: the node the topology draws (`orders-db`, `redis`) and what it speaks
/// (`sqlite`, `postgres`, `redis`), which the record carries as its name.
#[derive(Debug, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub system: &'static str,
}

/// One request's calls: the database's and the shared cache's.
#[derive(Debug, Default)]
pub struct Tally {
    db: Cell<Counts>,
    db_peer: OnceCell<Arc<Peer>>,
    cache: Cell<Counts>,
    cache_peer: OnceCell<Arc<Peer>>,
}

/// What a finished tally holds, per backing service.
#[derive(Debug, Default)]
pub struct Finished {
    pub db: Option<(Arc<Peer>, Counts)>,
    pub cache: Option<(Arc<Peer>, Counts)>,
}

impl Tally {
    /// The calls made, each with the service they went to (the first one called, should a
    /// request use two databases).
    pub fn finish(self) -> Finished {
        let pair = |peer: OnceCell<Arc<Peer>>, counts: Cell<Counts>| {
            let counts = counts.get();
            peer.into_inner()
                .filter(|_| !counts.is_empty())
                .map(|peer| (peer, counts))
        };
        Finished {
            db: pair(self.db_peer, self.db),
            cache: pair(self.cache_peer, self.cache),
        }
    }
}

/// Runs `future` with a fresh tally and returns its output with what it spent.
pub async fn scope<F: Future>(future: F) -> (F::Output, Finished) {
    let mut scoped = std::pin::pin!(TALLY.scope(Tally::default(), future));
    let output = (&mut scoped).await;
    let tally = scoped.as_mut().take_value().unwrap_or_default();
    (output, tally.finish())
}

/// Whether the current task is counting (so a caller can skip reading the clock when not).
pub fn active() -> bool {
    TALLY.try_with(|_| ()).is_ok()
}

/// Which backing service a call went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Database,
    Cache,
}

/// Adds one call to the current task's tally, if it has one.
pub fn record(kind: Kind, peer: &Arc<Peer>, started: Instant, ok: bool) {
    let took = started.elapsed();
    let _ = TALLY.try_with(|tally| {
        let (counts, who) = match kind {
            Kind::Database => (&tally.db, &tally.db_peer),
            Kind::Cache => (&tally.cache, &tally.cache_peer),
        };
        who.get_or_init(|| peer.clone());
        let mut updated = counts.get();
        updated.add(started, took, ok);
        counts.set(updated);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer() -> Arc<Peer> {
        Arc::new(Peer {
            name: "orders-db".into(),
            system: "sqlite",
        })
    }

    #[tokio::test]
    async fn calls_inside_a_scope_are_counted_and_outside_are_not() {
        let peer = peer();
        record(Kind::Database, &peer, Instant::now(), true);
        assert!(!active());
        let ((), finished) = scope(async {
            assert!(active());
            record(
                Kind::Database,
                &peer,
                Instant::now() - Duration::from_millis(3),
                true,
            );
            tokio::task::yield_now().await;
            record(
                Kind::Database,
                &peer,
                Instant::now() - Duration::from_millis(1),
                false,
            );
        })
        .await;
        let (who, counts) = finished.db.expect("database calls");
        assert_eq!(who.name, "orders-db");
        assert_eq!((counts.calls, counts.errors), (2, 1));
        assert!(counts.total_us >= 4_000, "{counts:?}");
        assert!(counts.max_us >= 3_000 && counts.max_us <= counts.total_us);
        assert!(finished.cache.is_none());
        let ((), empty) = scope(async {}).await;
        assert!(empty.db.is_none() && empty.cache.is_none());
    }
}
