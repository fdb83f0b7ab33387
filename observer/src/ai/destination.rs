//! The AI endpoint a flow's destination is, as the flow record carries it.
//!
//! In: what the tagger ([`super::tag::tag_remote`]) found in the catalog for
//! a destination. Out: [`AiDestination`], serialized beside `dst.ip` as
//! `ai_provider`, `ai_kind`, `ai_via` and `ai_name`. Part of the flow
//! record's vocabulary ([`crate::flow`] carries it): it imports only the
//! catalog's [`AiKind`].

use std::sync::Arc;

use super::catalog::AiKind;

/// How a flow's destination was found to be a catalog endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AiVia {
    /// A name the source pod resolved for the address.
    Dns,
    /// A direct-IP connection to an address some pod on the node resolved
    /// for a catalog name.
    Address,
}

impl AiVia {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dns => "dns",
            Self::Address => "address",
        }
    }
}

/// The AI endpoint at the far end of a flow, in the record's `dst` as
/// `ai_provider`, `ai_kind`, `ai_via` and (for `address`) `ai_name`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AiDestination {
    /// The provider's catalog name.
    #[serde(rename = "ai_provider")]
    pub provider: Arc<str>,
    /// What it is.
    #[serde(rename = "ai_kind")]
    pub kind: AiKind,
    /// How it was named.
    #[serde(rename = "ai_via")]
    pub via: AiVia,
    /// For `address`: the catalog name another pod resolved to the address.
    #[serde(rename = "ai_name", skip_serializing_if = "Option::is_none")]
    pub name: Option<Arc<str>>,
}
