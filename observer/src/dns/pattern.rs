//! FQDN patterns and allow/deny judgement of egress flows by name.
//!
//! In: patterns as operators write them (`api.example.com`, `*.example.com`)
//! and the names a flow's source pod resolved for its destination (from the
//! [`super::NameCache`], via the flow record's `dns` field). Out: whether a
//! pattern matches, and an [`FqdnVerdict`] for a set of allow and deny rules.
//!
//! Semantics: names compare case-insensitively without the trailing dot.
//! `*.example.com` matches any name below `example.com` at any depth
//! (`api.example.com`, `a.b.example.com`) but not `example.com` itself; `*`
//! is only allowed as the whole first label. A flow matches a pattern when
//! any name the pod resolved for the address matches. A flow to an address
//! the pod never resolved (direct-IP) matches no pattern.

use std::{fmt, sync::Arc};

/// Why a pattern is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    /// Empty, or only dots.
    #[error("empty name")]
    Empty,
    /// Longer than a DNS name can be.
    #[error("longer than 253 characters")]
    TooLong,
    /// A label that is empty or longer than 63.
    #[error("label {label:?} must be 1 to 63 characters")]
    LabelLength {
        /// The label.
        label: String,
    },
    /// A character outside letters, digits, `-` and `_`.
    #[error("label {label:?} may only hold letters, digits, '-' and '_'")]
    LabelCharacter {
        /// The label.
        label: String,
    },
    /// `*` anywhere but as the whole first label, or alone.
    #[error("'*' may only be the whole first label followed by a domain, as in *.example.com")]
    Wildcard,
}

/// One FQDN pattern, normalized.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct FqdnPattern {
    /// The name, or for a wildcard the domain below which names match.
    domain: Arc<str>,
    wildcard: bool,
}

impl FqdnPattern {
    /// Parses and validates a pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let lower = text.trim().trim_end_matches('.').to_ascii_lowercase();
        if lower.is_empty() {
            return Err(PatternError::Empty);
        }
        if lower.len() > 253 {
            return Err(PatternError::TooLong);
        }
        let (wildcard, domain) = match lower.strip_prefix("*.") {
            Some(domain) => (true, domain),
            None => (false, lower.as_str()),
        };
        if domain.is_empty() {
            return Err(PatternError::Wildcard);
        }
        for label in domain.split('.') {
            if label.contains('*') {
                return Err(PatternError::Wildcard);
            }
            if label.is_empty() || label.len() > 63 {
                return Err(PatternError::LabelLength { label: label.to_owned() });
            }
            if !label.bytes().all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_') {
                return Err(PatternError::LabelCharacter { label: label.to_owned() });
            }
        }
        Ok(Self { domain: Arc::from(domain), wildcard })
    }

    /// Whether `name` (normalized: lowercase, no trailing dot, as the
    /// cache holds names) matches.
    pub fn matches(&self, name: &str) -> bool {
        if !self.wildcard {
            return name == &*self.domain;
        }
        name.len() > self.domain.len() + 1
            && name.ends_with(&*self.domain)
            && name.as_bytes()[name.len() - self.domain.len() - 1] == b'.'
    }

    /// Whether any of `names` matches.
    pub fn matches_any(&self, names: &[Arc<str>]) -> bool {
        names.iter().any(|name| self.matches(name))
    }
}

impl fmt::Display for FqdnPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.wildcard { write!(f, "*.{}", self.domain) } else { f.write_str(&self.domain) }
    }
}

/// Egress rules by name for one subject: `deny` first, then `allow`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FqdnRules {
    /// When given, the only names the subject may reach (`Some(vec![])`: none).
    pub allow: Option<Vec<FqdnPattern>>,
    /// Names the subject must never reach.
    pub deny: Vec<FqdnPattern>,
}

/// How [`FqdnRules`] judge one egress flow to the world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FqdnVerdict {
    /// A deny pattern matched a name the pod resolved for the address.
    Denied(FqdnPattern),
    /// An allow pattern matched.
    Allowed(FqdnPattern),
    /// An allow list exists and no pattern matched the names resolved.
    NotAllowed,
    /// An allow list exists and the pod never resolved the address: a direct-IP connection.
    DirectIp,
    /// No rule says anything about this flow.
    NoRule,
}

impl FqdnVerdict {
    /// The flow breaks the rules.
    pub fn is_violation(&self) -> bool {
        matches!(self, Self::Denied(_) | Self::NotAllowed | Self::DirectIp)
    }
}

impl FqdnRules {
    /// Judges a flow whose destination the source pod resolved to `names`
    /// (empty: never resolved).
    pub fn judge(&self, names: &[Arc<str>]) -> FqdnVerdict {
        if let Some(pattern) = self.deny.iter().find(|pattern| pattern.matches_any(names)) {
            return FqdnVerdict::Denied(pattern.clone());
        }
        let Some(allow) = &self.allow else {
            return FqdnVerdict::NoRule;
        };
        if names.is_empty() {
            return FqdnVerdict::DirectIp;
        }
        match allow.iter().find(|pattern| pattern.matches_any(names)) {
            Some(pattern) => FqdnVerdict::Allowed(pattern.clone()),
            None => FqdnVerdict::NotAllowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pattern(text: &str) -> FqdnPattern {
        FqdnPattern::parse(text).expect("valid pattern")
    }

    fn names(list: &[&str]) -> Vec<Arc<str>> {
        list.iter().map(|name| Arc::from(*name)).collect()
    }

    #[test]
    fn exact_and_wildcard_patterns() {
        let exact = pattern("API.Example.com.");
        assert_eq!(exact.to_string(), "api.example.com");
        assert!(exact.matches("api.example.com"));
        assert!(!exact.matches("x.api.example.com"));
        let wild = pattern("*.example.com");
        assert!(wild.matches("api.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        assert!(!wild.matches("api.example.com.evil.net"));
    }

    #[test]
    fn invalid_patterns_are_refused_with_a_reason() {
        assert_eq!(FqdnPattern::parse(" . "), Err(PatternError::Empty));
        assert_eq!(FqdnPattern::parse("*"), Err(PatternError::Wildcard));
        assert_eq!(FqdnPattern::parse("*."), Err(PatternError::Wildcard));
        assert_eq!(FqdnPattern::parse("api.*.com"), Err(PatternError::Wildcard));
        assert_eq!(FqdnPattern::parse("a*.example.com"), Err(PatternError::Wildcard));
        assert!(matches!(FqdnPattern::parse("a..com"), Err(PatternError::LabelLength { .. })));
        assert!(matches!(FqdnPattern::parse("exa mple.com"), Err(PatternError::LabelCharacter { .. })));
        assert!(matches!(
            FqdnPattern::parse(&format!("{}.com", "a".repeat(64))),
            Err(PatternError::LabelLength { .. })
        ));
        assert_eq!(FqdnPattern::parse(&"a.".repeat(130)), Err(PatternError::TooLong));
    }

    #[test]
    fn deny_wins_then_allow_then_direct_ip() {
        let rules = FqdnRules {
            allow: Some(vec![pattern("*.openai.com"), pattern("api.example.com")]),
            deny: vec![pattern("uploads.openai.com")],
        };
        assert_eq!(rules.judge(&names(&["api.openai.com"])), FqdnVerdict::Allowed(pattern("*.openai.com")));
        assert_eq!(
            rules.judge(&names(&["cdn.net", "uploads.openai.com"])),
            FqdnVerdict::Denied(pattern("uploads.openai.com"))
        );
        assert_eq!(rules.judge(&names(&["pastebin.com"])), FqdnVerdict::NotAllowed);
        assert_eq!(rules.judge(&[]), FqdnVerdict::DirectIp);
        assert!(rules.judge(&[]).is_violation());
        let deny_only = FqdnRules { allow: None, deny: vec![pattern("*.pastebin.com")] };
        assert_eq!(deny_only.judge(&[]), FqdnVerdict::NoRule);
        assert!(deny_only.judge(&names(&["x.pastebin.com"])).is_violation());
    }

    proptest! {
        #[test]
        fn wildcard_matches_exactly_the_strict_subdomains(
            sub in "[a-z0-9]{1,10}(\\.[a-z0-9]{1,10}){0,2}",
            domain in "[a-z0-9]{1,10}\\.[a-z]{2,5}",
            other in "[a-z0-9]{1,12}\\.[a-z]{2,5}",
        ) {
            let wild = FqdnPattern::parse(&format!("*.{domain}")).expect("valid");
            let subdomain = format!("{sub}.{domain}");
            prop_assert!(wild.matches(&subdomain));
            prop_assert!(!wild.matches(&domain));
            prop_assert_eq!(wild.matches(&other), other.ends_with(&format!(".{domain}")));
            prop_assert!(FqdnPattern::parse(&subdomain).expect("valid").matches(&subdomain));
        }
    }
}
