//! When each check is due next, ordered by time, so the checker finds the due ones without
//! looking at any other instance.
//!
//! Scanning every instance every tick costs O(instances) under the store's lock, 50 times a
//! second, however few are due; at 10,000 checked instances that scan was a measurable share of
//! the registry's CPU. A min-heap of (due time, target) costs O(log n) per push and pop, so a
//! tick costs O(due log n) and the lock is held only for the due ones.
//!
//! Entries are never removed from the middle (a heap cannot do that cheaply): a target whose
//! instance deregistered, re-registered (a new generation) or was rescheduled simply stays in
//! the heap until its time comes and is then skipped by the owner's validity test
//! ([`Schedule::pop_due`]'s `live`). Each target is pushed once per registration and once per
//! recorded probe, so at most a few stale entries per instance wait there, each for at most
//! one interval.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::Instant;

use super::Due;

/// Checks ordered by due time, soonest first.
#[derive(Default)]
pub struct Schedule {
    heap: BinaryHeap<Slot>,
}

/// One scheduled probe. Ordered by time reversed (`BinaryHeap` is a max-heap), then by
/// generation so the order is total.
struct Slot {
    at: Instant,
    due: Arc<Due>,
}

impl PartialEq for Slot {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Slot {}

impl PartialOrd for Slot {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Slot {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .at
            .cmp(&self.at)
            .then_with(|| other.due.generation.cmp(&self.due.generation))
    }
}

impl Schedule {
    /// Schedules `due` for `at`. Pushing costs a reference count, not a copy.
    pub fn push(&mut self, at: Instant, due: Arc<Due>) {
        self.heap.push(Slot { at, due });
    }

    /// Takes every entry due at `now`, soonest first, keeping those `live` accepts (it is
    /// given the entry's time and target, and marks the probe as out); the rest are stale and
    /// dropped.
    pub fn pop_due(
        &mut self,
        now: Instant,
        mut live: impl FnMut(Instant, &Due) -> bool,
    ) -> Vec<Arc<Due>> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|slot| slot.at <= now) {
            let Some(slot) = self.heap.pop() else { break };
            if live(slot.at, &slot.due) {
                due.push(slot.due);
            }
        }
        due
    }

    /// Entries waiting, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use stratus_kit::model::Check;

    use super::*;
    use crate::checks::CheckSpec;

    fn due(id: &str, generation: u64) -> Arc<Due> {
        let spec = CheckSpec {
            check: Check::Tcp(true),
            interval: Duration::from_millis(500),
            timeout: Duration::from_millis(300),
        };
        Arc::new(Due::new("svc", id, "127.0.0.1:1".into(), spec, generation))
    }

    #[test]
    fn pops_only_what_is_due_soonest_first() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut schedule = Schedule::default();
        schedule.push(t0 + ms(30), due("c", 3));
        schedule.push(t0 + ms(10), due("a", 1));
        schedule.push(t0 + ms(50), due("d", 4));
        schedule.push(t0 + ms(20), due("b", 2));
        assert!(schedule.pop_due(t0, |_, _| true).is_empty());
        let ids: Vec<String> = schedule
            .pop_due(t0 + ms(30), |_, _| true)
            .iter()
            .map(|d| d.id.clone())
            .collect();
        assert_eq!(ids, ["a", "b", "c"]);
        assert_eq!(schedule.len(), 1, "d is not due yet and stays");
        assert_eq!(schedule.pop_due(t0 + ms(60), |_, _| true)[0].id, "d");
        assert!(schedule.is_empty());
    }

    #[test]
    fn stale_entries_are_dropped_not_returned() {
        let t0 = Instant::now();
        let mut schedule = Schedule::default();
        schedule.push(t0, due("a", 1));
        schedule.push(t0, due("a", 2));
        let popped = schedule.pop_due(t0, |_, due| due.generation == 2);
        assert_eq!(popped.len(), 1);
        assert_eq!(popped[0].generation, 2);
        assert!(schedule.is_empty(), "the stale entry is gone too");
    }
}
