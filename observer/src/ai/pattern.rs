//! One catalog pattern: a DNS name with wildcards, parsed and matched.
//!
//! In: a pattern as the catalog writes it (`api.openai.com`,
//! `*.openai.azure.com`, `*-aiplatform.googleapis.com`,
//! `bedrock-runtime.*.amazonaws.com`), in any case, with or without a
//! trailing dot, in Unicode or punycode. Out: a [`CatalogPattern`] split into
//! the literal domain it ends with (the key of the suffix index in
//! [`super::suffix`]) and what the labels before it must be.
//!
//! Semantics (documented in `docs/ai.md`):
//! - a leading `*.` alone matches one label **or more** (`*.openai.azure.com`
//!   matches `x.openai.azure.com` and `a.b.openai.azure.com`, not
//!   `openai.azure.com`), as FlowIntent `fqdn` patterns do;
//! - any other `*` stands inside one label and matches within that label
//!   only (`*-aiplatform.googleapis.com` matches
//!   `us-central1-aiplatform.googleapis.com`, not `a.b-aiplatform...`;
//!   `bedrock-runtime.*.amazonaws.com` matches exactly one region label);
//! - the literal domain after the last wildcard must have at least two
//!   labels, so no pattern covers a whole top-level domain.

use std::fmt;

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
    /// A character outside letters, digits, `-`, `_` (and `*`).
    #[error("label {label:?} may only hold letters, digits, '-', '_' and one '*'")]
    LabelCharacter {
        /// The label.
        label: String,
    },
    /// A Unicode label that IDNA cannot turn into punycode.
    #[error("label {label:?} is not a valid internationalized name")]
    Idna {
        /// The label.
        label: String,
    },
    /// The literal domain after the last wildcard has fewer than two labels.
    #[error("the domain after the last '*' must have at least two labels (no pattern may cover a whole TLD)")]
    TooWide,
}

/// What one label before the literal domain must be.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) enum LabelMatch {
    /// Exactly this label.
    Literal(Box<str>),
    /// A label starting with `prefix` and ending with `suffix` (the `*`
    /// between them matches any run of characters, none included).
    Glob {
        /// Before the `*`.
        prefix: Box<str>,
        /// After the `*`.
        suffix: Box<str>,
    },
}

impl LabelMatch {
    fn matches(&self, label: &[u8]) -> bool {
        match self {
            Self::Literal(literal) => literal.as_bytes() == label,
            // Empty ends (a whole-label `*`) are not compared at all.
            Self::Glob { prefix, suffix } => {
                label.len() >= prefix.len() + suffix.len()
                    && (prefix.is_empty() || label.starts_with(prefix.as_bytes()))
                    && (suffix.is_empty() || label.ends_with(suffix.as_bytes()))
            }
        }
    }
}

/// A parsed catalog pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CatalogPattern {
    /// A leading `*.`: one or more labels of any kind before `labels`.
    pub(crate) subtree: bool,
    /// The labels between the leading `*.` (if any) and `domain`.
    pub(crate) labels: Box<[LabelMatch]>,
    /// The literal domain the name must end with (the whole name when the
    /// pattern has no wildcard).
    pub(crate) domain: Box<str>,
}

/// Lowercase ASCII of one label, converting a Unicode label to punycode.
fn ascii_label(label: &str) -> Result<String, PatternError> {
    if label.is_ascii() {
        return Ok(label.to_ascii_lowercase());
    }
    let name = hickory_proto::rr::Name::from_utf8(label).map_err(|_| PatternError::Idna { label: label.to_owned() })?;
    Ok(name.to_ascii().trim_end_matches('.').to_ascii_lowercase())
}

/// A name as the catalog compares names: lowercase ASCII, punycode for
/// Unicode labels, without the trailing dot. `None` when a Unicode label is
/// not a valid internationalized name (such a name matches nothing).
pub fn normalize(name: &str) -> Option<String> {
    let trimmed = name.trim().trim_end_matches('.');
    if trimmed.is_ascii() {
        return Some(trimmed.to_ascii_lowercase());
    }
    let labels: Result<Vec<String>, _> = trimmed.split('.').map(ascii_label).collect();
    labels.ok().map(|labels| labels.join("."))
}

impl CatalogPattern {
    /// Parses and validates a pattern.
    pub fn parse(text: &str) -> Result<Self, PatternError> {
        let trimmed = text.trim().trim_end_matches('.');
        if trimmed.is_empty() {
            return Err(PatternError::Empty);
        }
        let mut labels = Vec::new();
        for label in trimmed.split('.') {
            let label = ascii_label(label)?;
            if label.is_empty() || label.len() > 63 {
                return Err(PatternError::LabelLength { label });
            }
            let valid = label.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"-_*".contains(&byte))
                && label.bytes().filter(|byte| *byte == b'*').count() <= 1;
            if !valid {
                return Err(PatternError::LabelCharacter { label });
            }
            labels.push(label);
        }
        if labels.iter().map(|label| label.len() + 1).sum::<usize>() - 1 > 253 {
            return Err(PatternError::TooLong);
        }
        let subtree = labels.first().is_some_and(|first| first == "*");
        let start = usize::from(subtree);
        let last_wild = labels.iter().rposition(|label| label.contains('*')).filter(|at| *at >= start);
        let literal_from = last_wild.map_or(start, |at| at + 1);
        if labels.len() - literal_from < 2 {
            return Err(PatternError::TooWide);
        }
        let middle = labels[start..literal_from]
            .iter()
            .map(|label| match label.split_once('*') {
                Some((prefix, suffix)) => LabelMatch::Glob { prefix: prefix.into(), suffix: suffix.into() },
                None => LabelMatch::Literal(label.as_str().into()),
            })
            .collect();
        Ok(Self { subtree, labels: middle, domain: labels[literal_from..].join(".").into() })
    }

    /// Whether a name whose labels before [`CatalogPattern::domain`] are
    /// `prefix` (without the dot before the domain; empty when the name is
    /// the domain) matches.
    pub(crate) fn matches_prefix(&self, prefix: &str) -> bool {
        if prefix.is_empty() {
            return !self.subtree && self.labels.is_empty();
        }
        // Split on the byte: a `char` pattern compares each match with memcmp.
        let mut labels = prefix.as_bytes().rsplit(|byte| *byte == b'.');
        for expected in self.labels.iter().rev() {
            match labels.next() {
                Some(label) if expected.matches(label) => {}
                _ => return false,
            }
        }
        let rest = labels.next().is_some();
        rest == self.subtree
    }

    /// Whether a normalized name (see [`normalize`]) matches.
    pub fn matches(&self, name: &str) -> bool {
        if name == &*self.domain {
            return self.matches_prefix("");
        }
        match name.strip_suffix(&*self.domain).and_then(|prefix| prefix.strip_suffix('.')) {
            Some(prefix) if !prefix.is_empty() => self.matches_prefix(prefix),
            _ => false,
        }
    }

    /// How specific the pattern is, higher first: a pattern without
    /// wildcard beats one with label wildcards, which beats a subtree.
    pub(crate) fn rank(&self) -> u8 {
        match (self.subtree, self.labels.iter().any(|label| matches!(label, LabelMatch::Glob { .. }))) {
            (false, false) => 2,
            (false, true) => 1,
            (true, _) => 0,
        }
    }
}

impl fmt::Display for CatalogPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.subtree {
            f.write_str("*.")?;
        }
        for label in &self.labels {
            match label {
                LabelMatch::Literal(literal) => write!(f, "{literal}.")?,
                LabelMatch::Glob { prefix, suffix } => write!(f, "{prefix}*{suffix}.")?,
            }
        }
        f.write_str(&self.domain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(text: &str) -> CatalogPattern {
        CatalogPattern::parse(text).expect("valid pattern")
    }

    #[test]
    fn exact_names_ignore_case_and_the_trailing_dot() {
        let exact = pattern("API.OpenAI.com.");
        assert_eq!(exact.to_string(), "api.openai.com");
        assert!(exact.matches("api.openai.com"));
        assert!(!exact.matches("x.api.openai.com"));
        assert!(!exact.matches("openai.com"));
        assert!(!exact.matches("badapi.openai.com"));
        assert_eq!(normalize("API.OpenAI.COM."), Some("api.openai.com".to_owned()));
    }

    #[test]
    fn a_leading_star_matches_any_depth_but_not_the_domain_itself() {
        let wild = pattern("*.openai.azure.com");
        assert!(wild.matches("myco.openai.azure.com"));
        assert!(wild.matches("a.b.openai.azure.com"), "any depth");
        assert!(!wild.matches("openai.azure.com"));
        assert!(!wild.matches("evilopenai.azure.com"));
        assert!(!wild.matches("myco.openai.azure.com.evil.net"));
    }

    #[test]
    fn a_star_inside_a_label_matches_within_that_one_label() {
        let vertex = pattern("*-aiplatform.googleapis.com");
        assert!(vertex.matches("us-central1-aiplatform.googleapis.com"));
        assert!(!vertex.matches("aiplatform.googleapis.com"), "the '-' is literal");
        assert!(!vertex.matches("a.us-aiplatform.googleapis.com"), "one label only");
        let bedrock = pattern("bedrock-runtime.*.amazonaws.com");
        assert_eq!(bedrock.to_string(), "bedrock-runtime.*.amazonaws.com");
        assert!(bedrock.matches("bedrock-runtime.us-east-1.amazonaws.com"));
        assert!(!bedrock.matches("bedrock-runtime.amazonaws.com"));
        assert!(!bedrock.matches("bedrock-runtime.a.b.amazonaws.com"));
        assert!(!bedrock.matches("x.bedrock-runtime.us-east-1.amazonaws.com"));
        assert!(!bedrock.matches("s3.us-east-1.amazonaws.com"));
        let both = pattern("*.api.*.example.com");
        assert!(both.matches("x.api.eu.example.com") && both.matches("x.y.api.eu.example.com"));
        assert!(!both.matches("api.eu.example.com"));
    }

    #[test]
    fn unicode_patterns_and_names_compare_as_punycode() {
        let idn = pattern("*.Bücher.example");
        assert_eq!(idn.to_string(), "*.xn--bcher-kva.example");
        assert!(idn.matches("shop.xn--bcher-kva.example"), "the name as DNS carries it");
        let name = normalize("Shop.BÜCHER.example.").expect("valid IDN");
        assert_eq!(name, "shop.xn--bcher-kva.example");
        assert!(idn.matches(&name));
        assert_eq!(pattern("xn--bcher-kva.example"), pattern("bücher.example"));
    }

    #[test]
    fn invalid_patterns_are_refused_with_a_reason() {
        assert_eq!(CatalogPattern::parse(" . "), Err(PatternError::Empty));
        assert_eq!(CatalogPattern::parse("*.com"), Err(PatternError::TooWide));
        assert_eq!(CatalogPattern::parse("api.*.com"), Err(PatternError::TooWide));
        assert_eq!(CatalogPattern::parse("localhost"), Err(PatternError::TooWide));
        assert!(matches!(CatalogPattern::parse("a..example.com"), Err(PatternError::LabelLength { .. })));
        assert!(matches!(CatalogPattern::parse("a**b.example.com"), Err(PatternError::LabelCharacter { .. })));
        assert!(matches!(CatalogPattern::parse("exa mple.com"), Err(PatternError::LabelCharacter { .. })));
        assert_eq!(CatalogPattern::parse(&"a.".repeat(130)), Err(PatternError::TooLong));
    }
}
