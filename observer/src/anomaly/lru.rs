//! A map with a size cap that forgets the least recently used entry.
//!
//! In: keys and values, with lookups that count as use. Out: the value, and
//! the entry evicted when an insert finds the map full. Every operation is
//! amortised O(1): entries live in slots, and the use order is a queue of
//! (slot, stamp) where stale stamps are skipped on eviction and swept out once
//! the queue is four times the entries held, so no linked list and no unsafe
//! code is needed, and a lookup (once per flow record) copies no key.

use std::{
    collections::{HashMap, VecDeque},
    hash::Hash,
};

/// One entry: its key (to unindex it on eviction), value and latest use.
#[derive(Clone, Debug)]
struct Slot<K, V> {
    key: K,
    value: V,
    stamp: u64,
}

/// A bounded least-recently-used map.
#[derive(Clone, Debug)]
pub(crate) struct Lru<K, V> {
    // Keys are edges, findings and pods named by the cluster's own objects,
    // looked up for every flow: foldhash, not SipHash.
    index: HashMap<K, usize, foldhash::fast::RandomState>,
    slots: Vec<Option<Slot<K, V>>>,
    free: Vec<usize>,
    order: VecDeque<(usize, u64)>,
    next: u64,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    /// An empty map holding at most `cap` entries (at least one).
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            index: HashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
            order: VecDeque::new(),
            next: 0,
            cap: cap.max(1),
        }
    }

    /// Entries held.
    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }

    /// Drops stale stamps from the use order once it holds four times the
    /// entries: relative to the entries, not the cap, so that a map far below
    /// its cap (a few edges under a cap of thousands) stays small, and each
    /// sweep is paid for by the three quarters of the queue it drops.
    fn sweep(&mut self) {
        if self.order.len() > 4 * self.index.len() + 64 {
            let slots = &self.slots;
            self.order.retain(|&(slot, stamp)| Self::current(slots, slot, stamp));
        }
    }

    fn current(slots: &[Option<Slot<K, V>>], slot: usize, stamp: u64) -> bool {
        slots.get(slot).and_then(Option::as_ref).is_some_and(|held| held.stamp == stamp)
    }

    /// Marks `slot` as just used.
    fn touch(&mut self, slot: usize) -> u64 {
        let stamp = self.next;
        self.next += 1;
        self.order.push_back((slot, stamp));
        stamp
    }

    /// The value of `key`, marked as just used.
    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.sweep();
        let slot = *self.index.get(key)?;
        let stamp = self.touch(slot);
        let held = self.slots[slot].as_mut()?;
        held.stamp = stamp;
        Some(&mut held.value)
    }

    /// Inserts or replaces `key`; returns the entry evicted to make room.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        self.sweep();
        if let Some(&slot) = self.index.get(&key) {
            let stamp = self.touch(slot);
            self.slots[slot] = Some(Slot { key, value, stamp });
            return None;
        }
        let evicted = if self.index.len() >= self.cap { self.evict() } else { None };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let stamp = self.touch(slot);
        self.index.insert(key.clone(), slot);
        self.slots[slot] = Some(Slot { key, value, stamp });
        evicted
    }

    /// Removes the least recently used entry.
    fn evict(&mut self) -> Option<(K, V)> {
        while let Some((slot, stamp)) = self.order.pop_front() {
            if Self::current(&self.slots, slot, stamp) {
                let held = self.slots[slot].take()?;
                self.index.remove(&held.key);
                self.free.push(slot);
                return Some((held.key, held.value));
            }
        }
        None
    }

    /// Every entry, in no particular order, without marking use.
    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (&K, &mut V)> {
        self.slots.iter_mut().flatten().map(|held| (&held.key, &mut held.value))
    }

    /// Removes every entry.
    pub(crate) fn clear(&mut self) {
        self.index.clear();
        self.slots.clear();
        self.free.clear();
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
        // "c"'s slot now holds "d": the stamps "c" left in the use order
        // must not make "d" look old.
        assert_eq!(lru.get_mut(&"a"), Some(&mut 10));
        assert_eq!(lru.insert("e", 5), Some(("d", 4)));
        assert_eq!(lru.get_mut(&"c"), None);
        let mut held: Vec<_> = lru.iter_mut().map(|(key, value)| (*key, *value)).collect();
        held.sort();
        assert_eq!(held, vec![("a", 10), ("e", 5)]);
        lru.clear();
        assert_eq!((lru.len(), lru.insert("f", 6)), (0, None));
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
