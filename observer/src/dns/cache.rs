//! Per-pod cache of address → names, learned from the DNS answers each pod
//! received.
//!
//! In: answers (owner, name, address, TTL, time) from the DNS tracker, and
//! lookups (owner, address, flow start) from enrich. Out: the names that
//! owner had resolved for that address when the flow started.
//!
//! Bounded: at most `capacity` (owner, address) entries, the least recently
//! used evicted first (counted), at most [`MAX_NAMES`] names per entry. A name
//! counts for flows that start while its TTL runs plus a grace period (clients
//! cache answers a little past their TTL, and a TTL of 0 still means "use it
//! now"). An entry a flow matched is kept for another grace period after each
//! lookup, so the long connection that matched it keeps its name in later
//! records even after the TTL is long gone.

use std::{
    collections::BTreeMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use crate::FastMap;

/// Names kept per (owner, address).
pub const MAX_NAMES: usize = 4;

/// Whose resolutions an entry holds: a pod (by uid, from its cgroup path, so
/// every container of the pod shares them) or, outside pods, a cgroup.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    /// A pod uid.
    Pod(Arc<str>),
    /// A cgroup id (a process outside any recognizable pod).
    Cgroup(u64),
}

impl Owner {
    /// The owner of a socket: its pod when the cgroup path names one, else its cgroup.
    pub fn of(cgroup_id: u64, cgroup_path: Option<&str>) -> Self {
        match cgroup_path.and_then(crate::inventory::cgroup::parse) {
            Some(cgroup) => Self::Pod(Arc::from(cgroup.pod_uid.to_owned_uid())),
            None => Self::Cgroup(cgroup_id),
        }
    }
}

#[derive(Clone, Debug)]
struct Name {
    name: Arc<str>,
    /// Start of the current stretch of validity: flows that started before
    /// the name was resolved did not use it.
    since: SystemTime,
    /// End of the TTL of the latest answer.
    until: SystemTime,
}

#[derive(Debug)]
struct Entry {
    names: Vec<Name>,
    /// The entry may be dropped after this.
    retain_until: SystemTime,
    /// Position in the LRU order.
    tick: u64,
}

/// Counters of the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// (owner, address) entries now.
    pub entries: u64,
    /// Entries evicted because the cache was full.
    pub evicted: u64,
    /// Entries dropped after their TTL and grace ran out.
    pub expired: u64,
    /// Names dropped because an entry already held [`MAX_NAMES`].
    pub names_displaced: u64,
}

/// The cache. Not synchronized: the DNS tracker and enrich share it behind a mutex.
#[derive(Debug)]
pub struct NameCache {
    entries: FastMap<(Owner, IpAddr), Entry>,
    lru: BTreeMap<u64, (Owner, IpAddr)>,
    next_tick: u64,
    capacity: usize,
    grace: Duration,
    stats: CacheStats,
}

impl NameCache {
    /// A cache of at most `capacity` entries (at least 1) with `grace` past each TTL.
    pub fn new(capacity: usize, grace: Duration) -> Self {
        Self {
            entries: FastMap::default(),
            lru: BTreeMap::new(),
            next_tick: 0,
            capacity: capacity.max(1),
            grace,
            stats: CacheStats::default(),
        }
    }

    /// Counters.
    pub fn stats(&self) -> CacheStats {
        CacheStats { entries: self.entries.len() as u64, ..self.stats }
    }

    fn touch(&mut self, key: &(Owner, IpAddr)) -> u64 {
        let tick = self.next_tick;
        self.next_tick += 1;
        self.lru.insert(tick, key.clone());
        tick
    }

    /// Records that `owner` resolved `name` to `ip` at `at` with `ttl`.
    pub fn insert(&mut self, owner: Owner, ip: IpAddr, name: Arc<str>, ttl: Duration, at: SystemTime) {
        let until = at + ttl;
        let key = (owner, ip);
        let tick = self.touch(&key);
        if let Some(entry) = self.entries.get_mut(&key) {
            self.lru.remove(&entry.tick);
            entry.tick = tick;
            entry.retain_until = entry.retain_until.max(until + self.grace);
            let grace = self.grace;
            match entry.names.iter_mut().find(|known| known.name == name) {
                Some(known) => {
                    if known.until + grace < at {
                        // Lapsed and resolved anew: a new stretch of validity.
                        known.since = at;
                    }
                    known.until = known.until.max(until);
                }
                None => {
                    if entry.names.len() >= MAX_NAMES {
                        // Displace the name that runs out first.
                        if let Some((index, _)) = entry.names.iter().enumerate().min_by_key(|(_, known)| known.until) {
                            entry.names.swap_remove(index);
                            self.stats.names_displaced += 1;
                        }
                    }
                    entry.names.push(Name { name, since: at, until });
                }
            }
            return;
        }
        if self.entries.len() >= self.capacity
            && let Some((_, oldest)) = self.lru.pop_first()
        {
            self.entries.remove(&oldest);
            self.stats.evicted += 1;
        }
        self.entries.insert(
            key,
            Entry { names: vec![Name { name, since: at, until }], retain_until: until + self.grace, tick },
        );
    }

    /// The names `owner` had resolved to `ip` when a flow started at
    /// `flow_start`, sorted; empty when none. A hit keeps the entry for
    /// another grace period after `now`.
    pub fn lookup(&mut self, owner: &Owner, ip: IpAddr, flow_start: SystemTime, now: SystemTime) -> Vec<Arc<str>> {
        let key = (owner.clone(), ip);
        let Some(entry) = self.entries.get_mut(&key) else {
            return Vec::new();
        };
        let grace = self.grace;
        let mut names: Vec<Arc<str>> = entry
            .names
            .iter()
            .filter(|known| known.since <= flow_start && flow_start <= known.until + grace)
            .map(|known| Arc::clone(&known.name))
            .collect();
        if names.is_empty() {
            return names;
        }
        names.sort();
        entry.retain_until = entry.retain_until.max(now + grace);
        let old_tick = entry.tick;
        self.lru.remove(&old_tick);
        let tick = self.touch(&key);
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.tick = tick;
        }
        names
    }

    /// Drops entries whose retention ran out; returns how many.
    pub fn expire(&mut self, now: SystemTime) -> usize {
        let before = self.entries.len();
        let lru = &mut self.lru;
        self.entries.retain(|_, entry| {
            let keep = entry.retain_until >= now;
            if !keep {
                lru.remove(&entry.tick);
            }
            keep
        });
        let dropped = before - self.entries.len();
        self.stats.expired += dropped as u64;
        dropped
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_000_000 + secs)
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([203, 0, 113, last])
    }

    fn pod(uid: &str) -> Owner {
        Owner::Pod(Arc::from(uid))
    }

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|name| Arc::from(*name)).collect()
    }

    #[test]
    fn names_are_per_owner_and_honour_ttl_plus_grace() {
        let mut cache = NameCache::new(100, Duration::from_secs(10));
        cache.insert(pod("a"), ip(20), "api.example.com".into(), Duration::from_secs(60), t(0));
        assert_eq!(cache.lookup(&pod("a"), ip(20), t(5), t(6)), names(&["api.example.com"]));
        // Another pod never resolved it.
        assert!(cache.lookup(&pod("b"), ip(20), t(5), t(6)).is_empty());
        // A flow that started before the answer did not use the name.
        cache.insert(pod("c"), ip(20), "api.example.com".into(), Duration::from_secs(60), t(100));
        assert!(cache.lookup(&pod("c"), ip(20), t(99), t(101)).is_empty());
        // Within TTL + grace, then past it.
        assert_eq!(cache.lookup(&pod("a"), ip(20), t(69), t(70)).len(), 1);
        let mut fresh = NameCache::new(100, Duration::from_secs(10));
        fresh.insert(pod("a"), ip(20), "api.example.com".into(), Duration::from_secs(60), t(0));
        assert!(fresh.lookup(&pod("a"), ip(20), t(71), t(71)).is_empty());
    }

    #[test]
    fn ttl_zero_still_names_the_connection_made_right_after() {
        let mut cache = NameCache::new(100, Duration::from_secs(5));
        cache.insert(pod("a"), ip(1), "zero.example.com".into(), Duration::ZERO, t(0));
        assert_eq!(cache.lookup(&pod("a"), ip(1), t(1), t(2)).len(), 1);
    }

    #[test]
    fn long_connection_keeps_its_name_past_ttl_while_looked_up() {
        let mut cache = NameCache::new(100, Duration::from_secs(30));
        cache.insert(pod("a"), ip(1), "stream.example.com".into(), Duration::from_secs(10), t(0));
        // The flow started at 1 s; its records come every 20 s for an hour.
        for minute in 0..180 {
            let now = t(20 * (minute + 1));
            assert_eq!(cache.expire(now), 0, "expired at {minute}");
            assert_eq!(cache.lookup(&pod("a"), ip(1), t(1), now).len(), 1);
        }
        // Once nothing looks it up, it goes.
        assert_eq!(cache.expire(t(20 * 181 + 31)), 1);
        assert_eq!(cache.stats().expired, 1);
    }

    #[test]
    fn several_names_for_one_address_are_kept_bounded() {
        let mut cache = NameCache::new(100, Duration::from_secs(5));
        for (index, name) in ["a.x.com", "b.x.com", "c.x.com", "d.x.com", "e.x.com"].iter().enumerate() {
            cache.insert(pod("p"), ip(1), Arc::from(*name), Duration::from_secs(100 + index as u64), t(0));
        }
        let found = cache.lookup(&pod("p"), ip(1), t(1), t(1));
        assert_eq!(found, names(&["b.x.com", "c.x.com", "d.x.com", "e.x.com"]));
        assert_eq!(cache.stats().names_displaced, 1);
    }

    #[test]
    fn full_cache_evicts_least_recently_used_and_counts() {
        let mut cache = NameCache::new(3, Duration::from_secs(5));
        for last in 1..=3 {
            cache.insert(pod("p"), ip(last), format!("h{last}.example.com").into(), Duration::from_secs(60), t(0));
        }
        // Use 1, so 2 is the least recently used.
        assert_eq!(cache.lookup(&pod("p"), ip(1), t(1), t(1)).len(), 1);
        cache.insert(pod("p"), ip(4), "h4.example.com".into(), Duration::from_secs(60), t(2));
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.stats().evicted, 1);
        assert!(cache.lookup(&pod("p"), ip(2), t(3), t(3)).is_empty());
        assert_eq!(cache.lookup(&pod("p"), ip(1), t(3), t(3)).len(), 1);
        assert_eq!(cache.lookup(&pod("p"), ip(4), t(3), t(3)).len(), 1);
        assert_eq!(cache.lru.len(), cache.entries.len());
    }

    #[test]
    fn owner_is_the_pod_for_every_container() {
        let uid = "3f6c1c2e-1111-4222-8333-444455556666";
        let a = Owner::of(1, Some(&format!("/kubepods/besteffort/pod{uid}/{}", "a".repeat(64))));
        let b = Owner::of(2, Some(&format!("/kubepods/besteffort/pod{uid}/{}", "b".repeat(64))));
        assert_eq!(a, b);
        assert_eq!(Owner::of(7, Some("/system.slice/sshd.service")), Owner::Cgroup(7));
        assert_eq!(Owner::of(7, None), Owner::Cgroup(7));
    }
}
