//! Which stored answers a purge names: keys by path and by surrogate key, so a purge drops
//! exactly those entries (as Varnish's `xkey` does) rather than testing every entry, and a
//! write costs a hash lookup whatever the cache holds.
//!
//! The cache adds a key when it stores an entry and removes it when the entry goes (evicted,
//! expired, invalidated: moka's eviction listener). An entry replaced under the same key keeps
//! the old entry's tags listed until the new one goes: a purge of such a tag then drops an entry
//! it did not need to, never misses one.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};

pub struct PurgeIndex<K> {
    maps: Mutex<Maps<K>>,
}

struct Maps<K> {
    by_path: HashMap<Box<str>, HashSet<K>>,
    by_tag: HashMap<Box<str>, HashSet<K>>,
}

impl<K> Default for PurgeIndex<K> {
    fn default() -> Self {
        Self {
            maps: Mutex::new(Maps {
                by_path: HashMap::new(),
                by_tag: HashMap::new(),
            }),
        }
    }
}

impl<K: Hash + Eq + Clone> PurgeIndex<K> {
    fn maps(&self) -> MutexGuard<'_, Maps<K>> {
        // A panic while holding it leaves whole maps behind: still usable.
        self.maps
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn add(&self, key: &K, path: &str, tags: &[Box<str>]) {
        let mut maps = self.maps();
        maps.by_path
            .entry(path.into())
            .or_default()
            .insert(key.clone());
        for tag in tags {
            maps.by_tag
                .entry(tag.clone())
                .or_default()
                .insert(key.clone());
        }
    }

    pub fn remove(&self, key: &K, path: &str, tags: &[Box<str>]) {
        let mut maps = self.maps();
        forget(&mut maps.by_path, path, key);
        for tag in tags {
            forget(&mut maps.by_tag, tag, key);
        }
    }

    /// The keys stored for `path`, no longer listed under it.
    pub fn take_path(&self, path: &str) -> Vec<K> {
        self.maps()
            .by_path
            .remove(path)
            .map(|keys| keys.into_iter().collect())
            .unwrap_or_default()
    }

    /// The keys tagged `tag`, no longer listed under it.
    pub fn take_tag(&self, tag: &str) -> Vec<K> {
        self.maps()
            .by_tag
            .remove(tag)
            .map(|keys| keys.into_iter().collect())
            .unwrap_or_default()
    }

    pub fn clear(&self) {
        let mut maps = self.maps();
        maps.by_path.clear();
        maps.by_tag.clear();
    }

    /// Paths and tags listed (for tests).
    #[cfg(test)]
    pub fn sizes(&self) -> (usize, usize) {
        let maps = self.maps();
        (maps.by_path.len(), maps.by_tag.len())
    }
}

fn forget<K: Hash + Eq>(map: &mut HashMap<Box<str>, HashSet<K>>, name: &str, key: &K) {
    if let Some(keys) = map.get_mut(name) {
        keys.remove(key);
        if keys.is_empty() {
            map.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_found_by_its_path_and_tags_until_it_goes() {
        let index = PurgeIndex::default();
        let tags: Vec<Box<str>> = vec!["product-1".into(), "products".into()];
        index.add(&1, "/p/1", &tags);
        index.add(&2, "/p/1", &[]);
        index.add(&3, "/p", &["products".into()]);
        assert_eq!(index.sizes(), (2, 2));
        let mut listed = index.take_tag("products");
        listed.sort();
        assert_eq!(listed, vec![1, 3]);
        index.remove(&2, "/p/1", &[]);
        assert_eq!(index.take_path("/p/1"), vec![1]);
        index.remove(&3, "/p", &["products".into()]);
        assert_eq!(
            index.sizes(),
            (0, 1),
            "product-1 still lists 1 until it is removed"
        );
        index.remove(&1, "/p/1", &tags);
        assert_eq!(index.sizes(), (0, 0));
        index.add(&4, "/q", &tags);
        index.clear();
        assert_eq!(index.sizes(), (0, 0));
        assert!(index.take_path("/nothing").is_empty());
    }
}
