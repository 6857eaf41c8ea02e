//! Concurrent reads of one thing share a trip to the store, and nobody is handed a read that
//! started before they asked.
//!
//! With etcd, every watcher woken by a change used to make its own range read of the whole
//! prefix: one change cost etcd a read of every instance per watcher. Here reads go one at a
//! time; the callers that arrive while one is out wait for it to finish and then share the next
//! one, which starts after all of them arrived. So a burst of N callers costs at most two reads,
//! and each caller still sees every write that finished before it asked (a client that has just
//! registered reads its own registration).

use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

pub struct Coalesced<T> {
    /// The read no one has started yet: whoever takes it arrived before it starts.
    pending: Mutex<Arc<OnceCell<T>>>,
    /// One read at a time (first come, first served).
    turn: tokio::sync::Mutex<()>,
}

impl<T> Default for Coalesced<T> {
    fn default() -> Self {
        Self {
            pending: Mutex::new(Arc::default()),
            turn: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T: Clone> Coalesced<T> {
    /// `read`'s result, or that of a read started after this call by another caller.
    pub async fn read<F, Fut>(&self, read: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let mine = self.pending().clone();
        let _turn = self.turn.lock().await;
        if let Some(value) = mine.get() {
            return value.clone();
        }
        // This read starts now: later arrivals wait for the next one.
        {
            let mut pending = self.pending();
            if Arc::ptr_eq(&pending, &mine) {
                *pending = Arc::default();
            }
        }
        let value = read().await;
        // Only the holder of the turn sets a cell, and each cell once.
        let _ = mine.set(value.clone());
        value
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Arc<OnceCell<T>>> {
        // The guarded value is one Arc, replaced whole: a poisoned lock is still consistent.
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_burst_of_callers_shares_at_most_two_reads() {
        let coalesced = Arc::new(Coalesced::<u32>::default());
        let reads = Arc::new(AtomicU32::new(0));
        let mut callers = Vec::new();
        for _ in 0..50 {
            let (coalesced, reads) = (coalesced.clone(), reads.clone());
            callers.push(tokio::spawn(async move {
                coalesced
                    .read(|| async move {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        reads.fetch_add(1, Ordering::SeqCst) + 1
                    })
                    .await
            }));
        }
        for caller in callers {
            caller.await.unwrap();
        }
        let made = reads.load(Ordering::SeqCst);
        assert!((1..=2).contains(&made), "{made} reads for 50 callers");
    }

    #[tokio::test]
    async fn a_caller_never_gets_a_read_that_started_before_it_asked() {
        let coalesced = Arc::new(Coalesced::<u32>::default());
        let version = Arc::new(AtomicU32::new(1));
        let slow = {
            let (coalesced, version) = (coalesced.clone(), version.clone());
            tokio::spawn(async move {
                coalesced
                    .read(|| async move {
                        let seen = version.load(Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        seen
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // A write finishes while that read is out; a caller asking now must see it.
        version.store(2, Ordering::SeqCst);
        let version_now = version.clone();
        let late = coalesced
            .read(|| async move { version_now.load(Ordering::SeqCst) })
            .await;
        assert_eq!(slow.await.unwrap(), 1);
        assert_eq!(late, 2);
    }
}
