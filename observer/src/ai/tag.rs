//! Naming the AI provider at the far end of an egress flow.
//!
//! In: an enriched flow record whose destination DNS has named
//! (`dst.dns`), and the node's [`AiEndpoints`]. Out: the record's
//! `dst.ai_provider`, `dst.ai_kind` and `dst.ai_via` when the destination is
//! a catalog endpoint: by a name the source pod resolved (`dns`), or, for a
//! direct-IP connection, by a catalog name any pod on the node resolved to
//! that address (`address`, with the name in `dst.ai_name`).

use std::sync::Arc;

use super::{AiDestination, AiVia, addresses::AiEndpoints};
use crate::{
    flow::{FlowRecord, LocalEnd},
    inventory::EndpointKind,
};

/// Sets `record.dst.ai` when its destination is a catalog endpoint; returns
/// how it was named.
pub fn tag_remote(record: &mut FlowRecord, ai: &AiEndpoints) -> Option<AiVia> {
    if record.local != LocalEnd::Src {
        return None;
    }
    let remote = &mut record.dst;
    let kind = remote.endpoint.as_ref().map(|endpoint| endpoint.kind);
    if !matches!(kind, None | Some(EndpointKind::World)) {
        return None;
    }
    let dns = remote.dns.as_ref()?;
    let destination = if dns.resolved {
        let (provider, _) = ai.catalog().first_match(&dns.names)?;
        AiDestination { provider: Arc::clone(&provider.name), kind: provider.kind, via: AiVia::Dns, name: None }
    } else {
        let learned = ai.lookup(remote.ip, record.first_seen)?;
        AiDestination { provider: learned.provider, kind: learned.kind, via: AiVia::Address, name: Some(learned.name) }
    };
    let via = destination.via;
    remote.ai = Some(destination);
    Some(via)
}
