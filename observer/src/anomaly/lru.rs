//! A map with a size cap that forgets the least recently used entry.
//!
//! In: keys and values, with lookups that count as use. Out: the value, and
//! the entry evicted when an insert finds the map full. Every operation is
//! amortised O(1): entries live in slots, and the use order is a queue of
//! (slot, stamp) where stale stamps are skipped on eviction and swept out once
//! the queue is four times the entries held, so no linked list and no unsafe
//! code is needed, and a lookup (once per flow record) copies no key. A
//! caller that comes back to the same entry often keeps its [`Handle`] and
//! finds it again without hashing the key.

use std::{collections::VecDeque, hash::Hash};

use crate::FastMap;

/// One entry: its key (to unindex it on eviction), value and latest use.
#[derive(Clone, Debug)]
struct Slot<K, V> {
    key: K,
    value: V,
    stamp: u64,
    /// The stamp of its insertion: no other entry ever has it.
    born: u64,
}

/// Where an entry was: finds it again without its key, until it is evicted,
/// replaced or cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Handle {
    slot: usize,
    born: u64,
}

/// An entry [`Lru::get_or_insert_with`] found or made.
pub(crate) struct Found<'a, K, V> {
    pub(crate) handle: Handle,
    pub(crate) value: &'a mut V,
    /// The entry evicted to make room for it.
    pub(crate) evicted: Option<(K, V)>,
}

/// A bounded least-recently-used map.
#[derive(Clone, Debug)]
pub(crate) struct Lru<K, V> {
    // Keys are edges, findings and pods named by the cluster's own objects,
    // looked up for every flow: foldhash, not SipHash.
    index: FastMap<K, usize>,
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
            index: FastMap::default(),
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
        let slot = *self.index.get(key)?;
        self.use_slot(slot, None).map(|(_, value)| value)
    }

    /// The value a handle points to, marked as just used; `None` once its
    /// entry is gone.
    pub(crate) fn get_mut_at(&mut self, handle: Handle) -> Option<&mut V> {
        self.use_slot(handle.slot, Some(handle.born)).map(|(_, value)| value)
    }

    /// Marks the entry in `slot` as just used, if it is there (and was born
    /// at `born`, when given).
    fn use_slot(&mut self, slot: usize, born: Option<u64>) -> Option<(Handle, &mut V)> {
        let held = self.slots.get(slot)?.as_ref()?;
        if born.is_some_and(|born| born != held.born) {
            return None;
        }
        self.sweep();
        let stamp = self.touch(slot);
        let held = self.slots[slot].as_mut()?;
        held.stamp = stamp;
        Some((Handle { slot, born: held.born }, &mut held.value))
    }

    /// The value of `key` and its handle, marked as just used, after
    /// inserting `make()` under it if it was not held; with the entry evicted
    /// to make room.
    pub(crate) fn get_or_insert_with(&mut self, key: &K, make: impl FnOnce() -> V) -> Option<Found<'_, K, V>> {
        if let Some(&slot) = self.index.get(key) {
            let (handle, value) = self.use_slot(slot, None)?;
            return Some(Found { handle, value, evicted: None });
        }
        self.sweep();
        let (slot, evicted) = self.insert_new(key.clone(), make());
        let held = self.slots[slot].as_mut()?;
        Some(Found { handle: Handle { slot, born: held.born }, value: &mut held.value, evicted })
    }

    /// Inserts or replaces `key`; returns the entry evicted to make room.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<(K, V)> {
        self.sweep();
        if let Some(&slot) = self.index.get(&key) {
            let stamp = self.touch(slot);
            self.slots[slot] = Some(Slot { key, value, stamp, born: stamp });
            return None;
        }
        self.insert_new(key, value).1
    }

    /// Inserts `key`, which is not held: its slot, and the entry evicted to
    /// make room.
    fn insert_new(&mut self, key: K, value: V) -> (usize, Option<(K, V)>) {
        let evicted = if self.index.len() >= self.cap { self.evict() } else { None };
        let slot = self.free.pop().unwrap_or_else(|| {
            self.slots.push(None);
            self.slots.len() - 1
        });
        let stamp = self.touch(slot);
        self.index.insert(key.clone(), slot);
        self.slots[slot] = Some(Slot { key, value, stamp, born: stamp });
        (slot, evicted)
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
    fn handles_find_their_entry_until_it_is_evicted_or_replaced() {
        let mut lru = Lru::new(2);
        let found = lru.get_or_insert_with(&"a", || 1).expect("inserted");
        assert_eq!((*found.value, found.evicted), (1, None));
        let a = found.handle;
        let again = lru.get_or_insert_with(&"a", || 99).expect("found");
        assert_eq!((again.handle, *again.value), (a, 1), "an entry held is found, not made again");
        let b = lru.get_or_insert_with(&"b", || 2).expect("inserted").handle;
        *lru.get_mut_at(a).expect("held") += 10;
        // "b" is the least recently used: "c" takes its slot.
        let evicted = lru.get_or_insert_with(&"c", || 3).expect("inserted").evicted;
        assert_eq!(evicted, Some(("b", 2)));
        assert_eq!(lru.get_mut_at(b), None, "the slot now holds another entry");
        lru.insert("a", 20);
        assert_eq!(lru.get_mut_at(a), None, "a replaced entry is a new one");
        assert_eq!(lru.get_mut(&"a"), Some(&mut 20));
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
