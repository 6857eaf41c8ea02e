//! The tables a pool of instances is balanced by, computed once when the pool is built
//! (Maglev's lookup table, the smooth weighted round-robin order), and the hashes and random
//! numbers the algorithms (`balance.rs`) draw on.

use std::cell::Cell;
use std::hash::{BuildHasher, Hash};

/// A hash that is the same in every process and every run (SipHash with fixed keys), so every
/// gateway instance maps a key to the same backend.
pub fn stable_hash<T: Hash + ?Sized>(value: &T) -> u64 {
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(value)
}

/// A fast thread-local random number (splitmix64): balancing needs spread, not secrecy.
pub fn random_u64() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()));
    }
    STATE.with(|state| {
        let next = state.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        state.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    })
}

/// Size of the Maglev lookup table: a prime well above the number of instances, so each gets
/// a near-equal share and a change moves only about 1/N of the keys.
pub const MAGLEV_SIZE: usize = 4093;

/// Builds a Maglev lookup table (Eisenbud et al., NSDI 2016): each endpoint (named by its
/// instance id) fills slots in the order of its own permutation until the table is full.
pub fn maglev_table(ids: &[&str]) -> Vec<u16> {
    let n = ids.len();
    if n == 0 {
        return Vec::new();
    }
    let m = MAGLEV_SIZE as u64;
    let permutations: Vec<(u64, u64)> = ids
        .iter()
        .map(|id| {
            let offset = stable_hash(&(*id, 0u8)) % m;
            let skip = stable_hash(&(*id, 1u8)) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let mut table = vec![u16::MAX; MAGLEV_SIZE];
    let mut next = vec![0u64; n];
    let mut filled = 0;
    'fill: loop {
        for (i, (offset, skip)) in permutations.iter().enumerate() {
            let mut slot = ((offset + next[i] * skip) % m) as usize;
            while table[slot] != u16::MAX {
                next[i] += 1;
                slot = ((offset + next[i] * skip) % m) as usize;
            }
            table[slot] = i as u16;
            next[i] += 1;
            filled += 1;
            if filled == MAGLEV_SIZE {
                break 'fill;
            }
        }
    }
    table
}

/// The smooth weighted round-robin order (as nginx computes it), laid out once per pool so that
/// picking is a single atomic increment: weights 5, 1, 1 give a a b a c a a, not a a a a a b c.
pub fn weighted_schedule(weights: &[u32]) -> Vec<u16> {
    let total: i64 = weights.iter().map(|w| *w as i64).sum();
    let mut current = vec![0i64; weights.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for (i, weight) in weights.iter().enumerate() {
            current[i] += *weight as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        schedule.push(best as u16);
    }
    schedule
}
