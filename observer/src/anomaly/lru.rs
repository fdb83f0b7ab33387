//! A map with a size cap that forgets the least recently used entry.
//!
//! In: keys and values, with lookups that count as use. Out: the value, and
//! the entry evicted when an insert finds the map full. Every operation is
//! amortised O(1): the use order is a queue of (key, stamp) where stale
//! stamps are skipped on eviction and swept out once the queue is four times
//! the entries held, so no linked list and no unsafe code is needed.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

/// A bounded least-recently-used map.
#[derive(Clone, Debug)]
pub(crate) struct Lru<K, V> {
    // Keys are edges, findings and pods named by the cluster's own objects,
    // looked up for every flow: foldhash, not SipHash.
    entries: HashMap<K, (V, u64), foldhash::fast::RandomState>,
    order: VecDeque<(K, u64)>,
    next: u64,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// An empty map holding at most `cap` entries (at least one).
    pub(crate) fn new(cap: usize) -> Self {
        Self { entries: HashMap::default(), order: VecDeque::new(), next: 0, cap: cap.max(1) }
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Drops stale stamps from the use order once it holds four times the
    /// entries: relative to the entries, not the cap, so that a map far below
    /// its cap (a few edges under a cap of thousands) stays small, and each
    /// sweep is paid for by the three quarters of the queue it drops.
    fn sweep(&mut self) {
        if self.order.len() > 4 * self.entries.len() + 64 {
            let entries = &self.entries;
            self.order.retain(|(key, stamp)| entries.get(key).is_some_and(|(_, current)| current == stamp));
        }
    }

    fn stamp(&mut self, key: &K) -> u64 {
        let stamp = self.next;
        self.next += 1;
        self.order.push_back((key.clone(), stamp));
        stamp
    }

    /// The value of `key`, marked as just used.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.sweep();
        let (value, current) = self.entries.get_mut(key)?;
        let stamp = self.next;
        self.next += 1;
        *current = stamp;
        self.order.push_back((key.clone(), stamp));
        Some(value)
    }

    /// Inserts or replaces `key`; returns the entry evicted to make room.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        self.sweep();
        let evicted =
            if self.entries.len() >= self.cap && !self.entries.contains_key(&key) { self.evict() } else { None };
        let stamp = self.stamp(&key);
        self.entries.insert(key, (value, stamp));
        evicted
    }

    /// Removes the least recently used entry.
    fn evict(&mut self) -> Option<(K, V)> {
        while let Some((key, stamp)) = self.order.pop_front() {
            if self.entries.get(&key).is_some_and(|(_, current)| *current == stamp) {
                return self.entries.remove(&key).map(|(value, _)| (key, value));
            }
        }
        None
    }

    /// Every entry, in no particular order, without marking use.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.entries.iter_mut().map(|(key, (value, _))| (key, value))
    }

    /// Removes every entry.
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut lru = Lru::new(2);
        assert_eq!(lru.insert("a", 1), None);
        assert_eq!(lru.insert("b", 2), None);
        assert_eq!(lru.get_mut(&"a"), Some(&mut 1));
        assert_eq!(lru.insert("c", 3), Some(("b", 2)));
        assert_eq!(lru.insert("a", 10), None, "replacing does not evict");
        assert_eq!(lru.insert("d", 4), Some(("c", 3)));
        assert_eq!(lru.len(), 2);
    }

    #[test]
    fn use_order_stays_bounded_under_many_touches() {
        let mut lru = Lru::new(4);
        for key in 0..4 {
            lru.insert(key, key);
        }
        for round in 0..10_000 {
            lru.get_mut(&(round % 3));
        }
        assert!(lru.order.len() <= 4 * 4 + 64 + 1);
        // 3 was never touched after insertion: it goes first.
        assert_eq!(lru.insert(99, 99), Some((3, 3)));
        // A map far below its cap keeps its queue to four times what it holds.
        let mut roomy = Lru::new(100_000);
        roomy.insert("a", 1);
        roomy.insert("b", 2);
        for _ in 0..10_000 {
            roomy.get_mut(&"a");
        }
        assert!(roomy.order.len() <= 4 * 2 + 64 + 1);
        assert_eq!(roomy.insert("c", 3), None);
    }
}
