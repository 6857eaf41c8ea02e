//! The recent changes to instances, kept in a bounded ring, for the incremental watch.
//!
//! The whole-catalog watch sends every watcher the whole catalog on every change: one change
//! costs the catalog's size times the number of watchers. The incremental watch
//! (`GET /v1/watch?deltas=true`, [`crate::events`]) sends a snapshot once and then only what
//! changed, so it needs the changes themselves, in order, with their index. Each store records
//! them here as it makes them (memory: under its lock; etcd: from its one watch stream), one
//! entry per service and index, encoded to JSON once when recorded: every watcher is sent the
//! same bytes.
//!
//! The ring holds at most `capacity` entries. Whoever resumes from an index older than what the
//! ring still holds (`floor`) may have missed a change, and gets a snapshot instead
//! ([`TooFarBehind`]), as a Kubernetes watch answers `410 Gone` and Consul's streaming backend
//! sends a new snapshot. Several entries may share an index (one expiry sweep dropping instances
//! of several services); they are always pushed together, so a reader never sees part of one.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::body::Bytes;
pub use stratus_kit::model::ServiceChange;

/// How many changes are kept when the operator does not say.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// One recorded change, as every watcher is sent it.
#[derive(Debug)]
pub struct Recorded {
    pub index: u64,
    pub service: String,
    /// `event: change` and `data: <the change's JSON>`, then the blank line that ends the event:
    /// the SSE frame minus its `id:` line, shared by every watcher.
    pub frame: Bytes,
}

/// The reader asked for changes after an index the ring no longer covers: it needs a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooFarBehind;

/// What a reader gets: the changes after its index (for its services), and the index through
/// which the ring is complete, to resume from next.
pub struct Since {
    pub changes: Vec<Arc<Recorded>>,
    pub head: u64,
}

struct Ring {
    entries: VecDeque<Arc<Recorded>>,
    /// Changes after this index are all in `entries`; a reader behind it may have missed some.
    floor: u64,
    /// The newest index the ring is complete through (changes or not: an index can move
    /// without a change to instances, as the end of warming does).
    head: u64,
    /// The newest index known to exist (at least `head`): etcd's revision as a read saw it,
    /// which the watch stream feeding the ring may not have reached yet.
    known: u64,
}

pub struct ChangeRing {
    ring: Mutex<Ring>,
    capacity: usize,
    /// The run of the registry these indexes belong to (a memory registry's epoch; empty for
    /// etcd, whose revisions hold across restarts).
    epoch: String,
}

impl ChangeRing {
    /// An empty ring complete from `index` on, keeping at most `capacity` changes (at least one).
    pub fn new(index: u64, capacity: usize) -> Self {
        metrics::gauge!("registry_change_ring_capacity").set(capacity as f64);
        metrics::gauge!("registry_change_ring_len").set(0.0);
        Self {
            ring: Mutex::new(Ring {
                entries: VecDeque::new(),
                floor: index,
                head: index,
                known: index,
            }),
            capacity: capacity.max(1),
            epoch: String::new(),
        }
    }

    /// The same ring, for indexes that mean something only in the run `epoch`.
    pub fn in_run(mut self, epoch: &str) -> Self {
        self.epoch = epoch.to_string();
        self
    }

    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    fn ring(&self) -> MutexGuard<'_, Ring> {
        // Every update leaves the ring whole (a push, a pop, a reset): a poisoned lock is fine.
        self.ring
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the changes made at `index` (encoding each once) and moves the head to it. Called
    /// before the store wakes its watchers, so a woken watcher finds them. Changes that say
    /// nothing are dropped; an index not past the head is ignored (already recorded).
    pub fn push(&self, index: u64, changes: Vec<ServiceChange>) {
        let recorded: Vec<Arc<Recorded>> = changes
            .into_iter()
            .filter(|change| !change.is_empty())
            .map(|change| Arc::new(encode(index, change)))
            .collect();
        let mut ring = self.ring();
        if index <= ring.head {
            return;
        }
        ring.head = index;
        ring.known = ring.known.max(index);
        for entry in recorded {
            if ring.entries.len() >= self.capacity {
                if let Some(dropped) = ring.entries.pop_front() {
                    ring.floor = ring.floor.max(dropped.index);
                }
            }
            ring.entries.push_back(entry);
        }
        metrics::gauge!("registry_change_ring_len").set(ring.entries.len() as f64);
    }

    /// Forgets every change: whoever is behind `index` gets a snapshot. For when the store no
    /// longer knows what changed (etcd compacted past its watch) or every view must be sent
    /// again (the memory store's warm-up is over, which snapshots carry).
    pub fn reset(&self, index: u64) {
        let mut ring = self.ring();
        ring.entries.clear();
        ring.floor = ring.floor.max(index);
        ring.head = ring.head.max(index);
        ring.known = ring.known.max(index);
        metrics::gauge!("registry_change_ring_len").set(0.0);
    }

    /// Records that the store has reached `index` (etcd: a read's revision), though the ring
    /// may not have yet: a reader at an index up to it waits for what comes after rather than
    /// being sent a snapshot ([`ChangeRing::since`]).
    pub fn reached(&self, index: u64) {
        let mut ring = self.ring();
        ring.known = ring.known.max(index);
    }

    /// The changes after `after`, only those of `services` when given (sorted names).
    ///
    /// An index past the head but one the store has reached (etcd: a snapshot read at a revision
    /// the watch stream has not delivered yet, or an index from another registry on the same
    /// etcd) has nothing after it yet: no changes, and the reader resumes from it. Past what the
    /// store has reached is an index from another run of a memory registry (or nonsense).
    pub fn since(&self, after: u64, services: Option<&[String]>) -> Result<Since, TooFarBehind> {
        let ring = self.ring();
        if after > ring.head && after <= ring.known {
            return Ok(Since {
                changes: Vec::new(),
                head: after,
            });
        }
        if after < ring.floor || after > ring.head {
            return Err(TooFarBehind);
        }
        let first = ring.entries.partition_point(|entry| entry.index <= after);
        let changes = ring
            .entries
            .range(first..)
            .filter(|entry| services.is_none_or(|s| s.binary_search(&entry.service).is_ok()))
            .cloned()
            .collect();
        Ok(Since {
            changes,
            head: ring.head,
        })
    }

    /// The newest index the ring is complete through.
    pub fn head(&self) -> u64 {
        self.ring().head
    }

    /// How many changes are kept now.
    pub fn len(&self) -> usize {
        self.ring().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn encode(index: u64, change: ServiceChange) -> Recorded {
    metrics::counter!("registry_change_encodings_total").increment(1);
    // Plain structs of strings and numbers: encoding them cannot fail. JSON holds no raw
    // newline, so the whole change fits one `data:` line.
    let json = serde_json::to_vec(&change).unwrap_or_else(|_| b"{}".to_vec());
    let mut frame = Vec::with_capacity(json.len() + 24);
    frame.extend_from_slice(b"event: change\ndata: ");
    frame.extend_from_slice(&json);
    frame.extend_from_slice(b"\n\n");
    Recorded {
        index,
        service: change.service,
        frame: Bytes::from(frame),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stratus_kit::model::Instance;

    fn put(index: u64, service: &str, id: &str) -> ServiceChange {
        let mut change = ServiceChange::new(index, service);
        let instance = Instance {
            id: id.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port: 1000,
            version: "1".into(),
            metadata: Default::default(),
            health: stratus_kit::model::Health::Passing,
            ttl_seconds: 5.0,
            registered_at: String::new(),
        };
        change.set(&instance, true);
        change
    }

    fn indexes(since: &Since) -> Vec<(u64, &str)> {
        since
            .changes
            .iter()
            .map(|c| (c.index, c.service.as_str()))
            .collect()
    }

    #[test]
    fn readers_get_what_came_after_their_index_for_their_services() {
        let ring = ChangeRing::new(1, 10);
        ring.push(2, vec![put(2, "a", "a1")]);
        ring.push(3, vec![]);
        ring.push(4, vec![put(4, "b", "b1"), put(4, "a", "a2")]);
        let all = ring.since(1, None).unwrap();
        assert_eq!(indexes(&all), [(2, "a"), (4, "b"), (4, "a")]);
        assert_eq!(all.head, 4);
        let only_b = ring.since(2, Some(&["b".to_string()])).unwrap();
        assert_eq!(indexes(&only_b), [(4, "b")]);
        assert!(ring.since(4, None).unwrap().changes.is_empty());
        assert_eq!(ring.since(5, None).err(), Some(TooFarBehind), "ahead");
        assert!(all.changes[0]
            .frame
            .starts_with(b"event: change\ndata: {\"index\":2,\"service\":\"a\""));
        ring.push(4, vec![put(4, "c", "c1")]);
        assert_eq!(ring.len(), 3, "an index already recorded is not again");
    }

    #[test]
    fn a_reader_behind_what_the_ring_holds_needs_a_snapshot() {
        let ring = ChangeRing::new(10, 3);
        for index in 11..=15 {
            ring.push(index, vec![put(index, "a", "a1")]);
        }
        assert_eq!(ring.len(), 3);
        assert_eq!(ring.since(11, None).err(), Some(TooFarBehind));
        assert_eq!(
            indexes(&ring.since(12, None).unwrap()),
            [(13, "a"), (14, "a"), (15, "a")]
        );
        ring.reset(16);
        assert_eq!(ring.since(15, None).err(), Some(TooFarBehind));
        assert!(ring.since(16, None).unwrap().changes.is_empty());
    }

    #[test]
    fn an_index_the_store_reached_before_the_ring_waits_for_what_follows() {
        let ring = ChangeRing::new(10, 8);
        ring.push(11, vec![put(11, "a", "a1")]);
        assert_eq!(ring.since(14, None).err(), Some(TooFarBehind));
        ring.reached(14);
        let ahead = ring.since(14, None).unwrap();
        assert!(ahead.changes.is_empty());
        assert_eq!(ahead.head, 14, "resumes from its own index");
        ring.push(13, vec![put(13, "a", "a2")]);
        ring.push(15, vec![put(15, "a", "a3")]);
        assert_eq!(indexes(&ring.since(14, None).unwrap()), [(15, "a")]);
    }

    #[test]
    fn the_last_word_on_an_instance_in_one_change_wins() {
        let mut change = put(2, "a", "a1");
        change.remove("a1");
        assert!(change.instances.is_empty());
        assert_eq!(change.removed, ["a1"]);
    }
}
