//! Matching a name against every catalog pattern at once.
//!
//! In: the catalog's patterns, each with the index of its provider. Out: for
//! a name, the provider of the most specific pattern it matches. Patterns
//! are hashed by the literal domain they end with; a name is looked up by
//! each of its suffixes, longest first (`a.b.example.com`, `b.example.com`,
//! `example.com`, `com`): one hash probe per label, whatever the catalog's
//! size, and the few patterns under a hit are checked against the labels
//! before it. A longer literal domain wins; under one domain, a pattern
//! without wildcard beats one with label wildcards, which beats a subtree.

use super::pattern::CatalogPattern;
use crate::FastMap;

/// The patterns by literal domain.
#[derive(Clone, Debug, Default)]
pub(crate) struct SuffixIndex {
    /// Under each domain, its patterns with their provider, most specific first.
    by_domain: FastMap<Box<str>, Vec<(CatalogPattern, u16)>>,
}

impl SuffixIndex {
    /// Adds a pattern of provider `provider`.
    pub(crate) fn insert(&mut self, pattern: CatalogPattern, provider: u16) {
        let list = self.by_domain.entry(pattern.domain.clone()).or_default();
        list.push((pattern, provider));
        list.sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.rank()));
    }

    /// The provider of the most specific pattern `name` (normalized) matches.
    pub(crate) fn lookup(&self, name: &str) -> Option<u16> {
        let mut at = 0;
        loop {
            let suffix = &name[at..];
            if let Some(patterns) = self.by_domain.get(suffix) {
                let prefix = if at == 0 { "" } else { &name[..at - 1] };
                if let Some((_, provider)) = patterns.iter().find(|(pattern, _)| pattern.matches_prefix(prefix)) {
                    return Some(*provider);
                }
            }
            at += suffix.find('.')? + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(patterns: &[(&str, u16)]) -> SuffixIndex {
        let mut index = SuffixIndex::default();
        for (text, provider) in patterns {
            index.insert(CatalogPattern::parse(text).expect("valid"), *provider);
        }
        index
    }

    #[test]
    fn the_most_specific_pattern_wins() {
        let index = index(&[
            ("*.huggingface.co", 1),
            ("api-inference.huggingface.co", 2),
            ("huggingface.co", 1),
            ("*.cdn.huggingface.co", 3),
            ("*-aiplatform.googleapis.com", 4),
        ]);
        assert_eq!(index.lookup("huggingface.co"), Some(1));
        assert_eq!(index.lookup("cdn-lfs.huggingface.co"), Some(1));
        assert_eq!(index.lookup("api-inference.huggingface.co"), Some(2), "exact beats the subtree");
        assert_eq!(index.lookup("x.cdn.huggingface.co"), Some(3), "a longer domain beats a shorter one");
        assert_eq!(index.lookup("cdn.huggingface.co"), Some(1));
        assert_eq!(index.lookup("europe-west4-aiplatform.googleapis.com"), Some(4));
        assert_eq!(index.lookup("storage.googleapis.com"), None);
        assert_eq!(index.lookup("huggingface.com"), None);
        assert_eq!(index.lookup("co"), None);
        assert_eq!(index.lookup(""), None);
    }
}
