//! Names as metric labels, at bounded cardinality.
//!
//! In: the names a flow's destination resolved to (from the flow record's
//! `dns` field). Out: one label value per flow: the registrable domain of
//! the first name (`api.openai.com` → `openai.com`), `direct-ip` for an
//! address the pod never resolved, and `other` once `capacity` distinct
//! domains have been admitted (overflows counted). Metrics belong to the
//! metrics module; this only keeps their label sets finite.

use std::{
    collections::HashSet,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

/// Label of a world flow to an address its pod never resolved.
pub const DIRECT_IP: &str = "direct-ip";
/// Label once the set of admitted domains is full.
pub const OTHER: &str = "other";

/// Second-level labels under which registrations happen one level deeper
/// (`example.co.uk`): a short list instead of the whole public suffix list,
/// enough to keep labels meaningful; a miss only makes a label coarser.
const SECOND_LEVEL: [&str; 8] = ["co", "com", "net", "org", "gov", "ac", "edu", "ne"];

/// The registrable domain of a name, approximately: the last two labels, or
/// three under a country code's `co.`, `com.`, … (`a.b.example.co.uk` →
/// `example.co.uk`).
pub fn registrable_domain(name: &str) -> &str {
    let labels: Vec<(usize, &str)> = name
        .char_indices()
        .filter(|(_, c)| *c == '.')
        .map(|(index, _)| (index + 1, &name[index + 1..]))
        .rev()
        .take(3)
        .collect();
    let keep = match labels.as_slice() {
        [tld, second, ..]
            if tld.1.len() == 2 && SECOND_LEVEL.iter().any(|sl| second.1.starts_with(&format!("{sl}."))) =>
        {
            3
        }
        _ => 2,
    };
    // The start of the name made of the last `keep` labels.
    match labels.get(keep - 1) {
        Some((start, _)) => &name[*start..],
        None => name,
    }
}

/// Admits at most `capacity` distinct domains as label values.
#[derive(Debug)]
pub struct NameLabels {
    admitted: Mutex<HashSet<Box<str>>>,
    capacity: usize,
    overflowed: AtomicU64,
}

impl NameLabels {
    /// At most `capacity` distinct domains.
    pub fn new(capacity: usize) -> Self {
        Self { admitted: Mutex::new(HashSet::new()), capacity, overflowed: AtomicU64::new(0) }
    }

    /// The label for a world flow whose source resolved its address to
    /// `names` (sorted, as the cache returns them; empty: direct-IP).
    pub fn label(&self, names: &[impl AsRef<str>]) -> String {
        let Some(first) = names.first() else {
            return DIRECT_IP.to_owned();
        };
        let domain = registrable_domain(first.as_ref());
        let mut admitted = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        if admitted.contains(domain) {
            return domain.to_owned();
        }
        if admitted.len() < self.capacity {
            admitted.insert(domain.into());
            return domain.to_owned();
        }
        self.overflowed.fetch_add(1, Ordering::Relaxed);
        OTHER.to_owned()
    }

    /// Labels given as `other` because the set was full.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Distinct domains admitted.
    pub fn admitted(&self) -> usize {
        self.admitted.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registrable_domains() {
        assert_eq!(registrable_domain("api.openai.com"), "openai.com");
        assert_eq!(registrable_domain("openai.com"), "openai.com");
        assert_eq!(registrable_domain("localhost"), "localhost");
        assert_eq!(registrable_domain("a.b.example.co.uk"), "example.co.uk");
        assert_eq!(registrable_domain("x.example.com.au"), "example.com.au");
        assert_eq!(registrable_domain("x.y.example.de"), "example.de");
    }

    #[test]
    fn labels_are_bounded_and_overflow_counted() {
        let labels = NameLabels::new(2);
        assert_eq!(labels.label(&["api.a.com"]), "a.com");
        assert_eq!(labels.label(&["cdn.a.com"]), "a.com");
        assert_eq!(labels.label(&["b.com"]), "b.com");
        assert_eq!(labels.label(&["c.com"]), OTHER);
        assert_eq!(labels.label(&[] as &[&str]), DIRECT_IP);
        assert_eq!((labels.admitted(), labels.overflowed()), (2, 1));
    }
}
