//! The AI tier of a pod, as flow records, verdicts and findings carry it.
//!
//! In: a label value. Out: a checked [`Tier`], or [`InvalidTier`]. Part of
//! the flow record's vocabulary (a verdict names both ends' tiers): it
//! imports nothing, so the record stays below the stages that fill it in;
//! which tier a pod is in is for [`super::Tiers`] to say.

use std::{fmt, sync::Arc};

/// The label key that declares a tier unless configured otherwise.
pub const DEFAULT_TIER_LABEL: &str = "ai.governance/tier";

/// Tier names the documentation and examples use. Any valid label value is a
/// tier; these are the ones the project gives a meaning to.
pub const KNOWN_TIERS: [&str; 7] =
    ["model-serving", "agent", "tool-server", "vector-store", "training", "evaluation", "data-pipeline"];

/// The AI tier of a pod, a label value such as `agent` or `model-serving`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(transparent)]
pub struct Tier(Arc<str>);

/// Why a string is not a tier.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "{value:?} is not a valid tier (a label value: at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)"
)]
pub struct InvalidTier {
    /// The text given.
    pub value: String,
}

impl Tier {
    /// A tier from a label value, checked like the API server checks label values.
    pub fn new(value: &str) -> Result<Self, InvalidTier> {
        let bytes = value.as_bytes();
        let edge_ok = |byte: Option<&u8>| byte.is_some_and(u8::is_ascii_alphanumeric);
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && edge_ok(bytes.first())
            && edge_ok(bytes.last())
            && bytes.iter().all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.'));
        if valid { Ok(Self(value.into())) } else { Err(InvalidTier { value: value.to_owned() }) }
    }

    /// The tier's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
