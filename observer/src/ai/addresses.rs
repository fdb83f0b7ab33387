//! Addresses the node has seen resolved for catalog names, by any pod.
//!
//! In: each DNS answer a pod on the node received (from the DNS tracker),
//! with its name, the alias chain and the TTL. Out: for an address, the
//! provider a catalog name resolved to it and that name, while the answer is
//! fresh (TTL plus the DNS grace): what names a direct-IP connection, so an
//! agent that hard-codes a provider's address does not escape. Bounded:
//! expired entries are dropped on each tick, and past the capacity the entry
//! that expires first is evicted (counted).

use std::{
    net::IpAddr,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use super::catalog::{AiKind, Catalog};
use crate::FastMap;

/// An address learned from an answer to a catalog name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Learned {
    /// The provider.
    pub provider: Arc<str>,
    /// What it is.
    pub kind: AiKind,
    /// The catalog name that resolved to the address.
    pub name: Arc<str>,
    /// When the answer arrived.
    pub resolved_at: SystemTime,
    /// When it stops naming new connections: TTL plus grace after the answer.
    pub expires: SystemTime,
}

/// Counters of the address map.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AddressStats {
    /// Addresses held.
    pub entries: usize,
    /// Addresses evicted before they expired because the map was full.
    pub evicted: u64,
    /// Addresses dropped when their answer expired.
    pub expired: u64,
}

/// The catalog and the addresses learned from it. Shared by the DNS tracker
/// (which writes) and enrich (which reads); cheap to lock, held briefly.
#[derive(Debug)]
pub struct AiEndpoints {
    catalog: Arc<Catalog>,
    grace: Duration,
    capacity: usize,
    addresses: Mutex<Addresses>,
}

#[derive(Debug, Default)]
struct Addresses {
    entries: FastMap<IpAddr, Learned>,
    stats: AddressStats,
}

impl AiEndpoints {
    /// Names endpoints with `catalog`; keeps at most `capacity` addresses,
    /// each for its TTL plus `grace` (the DNS cache's grace).
    pub fn new(catalog: Arc<Catalog>, capacity: usize, grace: Duration) -> Self {
        Self { catalog, grace, capacity: capacity.max(1), addresses: Mutex::default() }
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    fn addresses(&self) -> std::sync::MutexGuard<'_, Addresses> {
        // Plain values: a panic elsewhere cannot leave them inconsistent.
        self.addresses.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// An answer resolved `names` (the name asked for first, then the alias
    /// chain) to `ip` with `ttl` at `at`: kept when one of them is a catalog
    /// name. Returns whether it was.
    pub fn learn(&self, ip: IpAddr, names: &[Arc<str>], ttl: Duration, at: SystemTime) -> bool {
        let Some((provider, name)) = self.catalog.first_match(names) else { return false };
        let learned = Learned {
            provider: Arc::clone(&provider.name),
            kind: provider.kind,
            name: Arc::clone(name),
            resolved_at: at,
            expires: at + ttl + self.grace,
        };
        let mut addresses = self.addresses();
        if addresses.entries.len() >= self.capacity && !addresses.entries.contains_key(&ip) {
            addresses.expire(at);
            if addresses.entries.len() >= self.capacity {
                let soonest = addresses.entries.iter().min_by_key(|(_, learned)| learned.expires).map(|(ip, _)| *ip);
                if let Some(soonest) = soonest {
                    addresses.entries.remove(&soonest);
                    addresses.stats.evicted += 1;
                }
            }
        }
        match addresses.entries.get_mut(&ip) {
            // Another answer for the same provider while the first is fresh
            // (other pods resolving the same name): the address has been
            // the provider's since the first, until the latest expires, so a
            // connection that started between the two is still named.
            Some(held) if held.provider == learned.provider && held.expires >= at => {
                held.expires = held.expires.max(learned.expires);
                held.name = learned.name;
            }
            // A first answer, or one for another provider (a shared CDN address).
            _ => {
                addresses.entries.insert(ip, learned);
            }
        }
        true
    }

    /// What a connection to `ip` that started at `flow_start` reached: the
    /// provider whose name some pod had resolved to it, if that answer was
    /// fresh then.
    pub fn lookup(&self, ip: IpAddr, flow_start: SystemTime) -> Option<Learned> {
        let addresses = self.addresses();
        let learned = addresses.entries.get(&ip)?;
        (learned.resolved_at <= flow_start && flow_start <= learned.expires).then(|| learned.clone())
    }

    /// Drops the addresses whose answers expired by `now`.
    pub fn expire(&self, now: SystemTime) {
        self.addresses().expire(now);
    }

    /// Counters.
    pub fn stats(&self) -> AddressStats {
        let addresses = self.addresses();
        AddressStats { entries: addresses.entries.len(), ..addresses.stats }
    }
}

impl Addresses {
    fn expire(&mut self, now: SystemTime) {
        let before = self.entries.len();
        self.entries.retain(|_, learned| learned.expires > now);
        self.stats.expired += (before - self.entries.len()) as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ai::CatalogConfig;

    fn endpoints(capacity: usize) -> AiEndpoints {
        let catalog = Arc::new(Catalog::build(&CatalogConfig::default()).expect("catalog"));
        AiEndpoints::new(catalog, capacity, Duration::from_secs(120))
    }

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|name| Arc::from(*name)).collect()
    }

    #[test]
    fn addresses_of_catalog_names_are_kept_for_ttl_and_grace() {
        let ai = endpoints(16);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ip = IpAddr::from([203, 0, 113, 10]);
        assert!(!ai.learn(IpAddr::from([203, 0, 113, 11]), &names(&["example.com"]), Duration::from_secs(60), at));
        // Asked by an alias whose chain ends at a catalog name.
        assert!(ai.learn(ip, &names(&["llm.corp.example", "api.openai.com"]), Duration::from_secs(60), at));
        let found = ai.lookup(ip, at + Duration::from_secs(30)).expect("fresh");
        assert_eq!((&*found.provider, &*found.name, found.kind), ("openai", "api.openai.com", AiKind::LlmApi));
        assert!(ai.lookup(ip, at - Duration::from_secs(1)).is_none(), "a flow before the answer");
        assert!(ai.lookup(ip, at + Duration::from_secs(181)).is_none(), "past TTL and grace");
        assert!(ai.lookup(IpAddr::from([203, 0, 113, 11]), at).is_none());
        ai.expire(at + Duration::from_secs(181));
        assert_eq!(ai.stats(), AddressStats { entries: 0, evicted: 0, expired: 1 });
    }

    #[test]
    fn a_later_answer_for_the_same_provider_keeps_the_first_resolution() {
        let ai = endpoints(16);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ip = IpAddr::from([203, 0, 113, 10]);
        let openai = names(&["api.openai.com"]);
        ai.learn(ip, &openai, Duration::from_secs(60), at);
        // Another pod resolves the same name after a direct-IP connection started.
        ai.learn(ip, &openai, Duration::from_secs(60), at + Duration::from_secs(30));
        let started = at + Duration::from_secs(10);
        assert_eq!(ai.lookup(ip, started).map(|learned| learned.resolved_at), Some(at));
        assert!(ai.lookup(ip, at + Duration::from_secs(30 + 60 + 119)).is_some(), "until the latest expires");
        // Another provider's answer for the address replaces it.
        ai.learn(ip, &names(&["api.anthropic.com"]), Duration::from_secs(60), at + Duration::from_secs(40));
        let anthropic = ai.lookup(ip, at + Duration::from_secs(41)).expect("fresh");
        assert_eq!(&*anthropic.provider, "anthropic");
        assert!(ai.lookup(ip, started).is_none(), "not anthropic's before its answer");
    }

    #[test]
    fn past_capacity_the_soonest_to_expire_is_evicted() {
        let ai = endpoints(2);
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let openai = names(&["api.openai.com"]);
        ai.learn(IpAddr::from([203, 0, 113, 1]), &openai, Duration::from_secs(300), at);
        ai.learn(IpAddr::from([203, 0, 113, 2]), &openai, Duration::from_secs(10), at);
        ai.learn(IpAddr::from([203, 0, 113, 3]), &openai, Duration::from_secs(300), at);
        assert!(ai.lookup(IpAddr::from([203, 0, 113, 2]), at).is_none(), "evicted");
        assert!(ai.lookup(IpAddr::from([203, 0, 113, 1]), at).is_some());
        assert!(ai.lookup(IpAddr::from([203, 0, 113, 3]), at).is_some());
        assert_eq!(ai.stats(), AddressStats { entries: 2, evicted: 1, expired: 0 });
    }
}
