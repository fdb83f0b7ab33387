//! The enrich stage: who is at each end of a flow.
//!
//! In: batches of records from capture, the inventory's resolver (none
//! without an inventory) and the DNS name cache. Out: the same records with
//! both ends resolved as [`crate::enrich::Enricher`] does and the
//! destination's DNS names ([`crate::enrich::name_remote`]) and AI provider
//! ([`crate::ai::tag`]), handed to the judge.

use crate::{
    ai::tag::tag_remote,
    backends::Backends,
    dns::DnsView,
    enrich::{Enricher, name_remote},
    flow::FlowRecord,
    health::StageName,
    inventory::Resolver,
    node::NodeAddresses,
};

use super::driver::Stage;

/// The enrich stage.
pub struct EnrichStage {
    resolver: Option<Resolver>,
    dns: Option<DnsView>,
    enricher: Enricher,
}

impl EnrichStage {
    /// On the node holding `node`'s addresses. Without a resolver (no
    /// inventory), ends are not resolved; without a DNS view, no names are
    /// added; Service flows are resolved with `backends`.
    pub fn new(resolver: Option<Resolver>, node: NodeAddresses, dns: Option<DnsView>, backends: Backends) -> Self {
        Self { resolver, dns, enricher: Enricher::on_node(node, backends) }
    }
}

impl Stage for EnrichStage {
    type Event = ();
    const NAME: StageName = StageName::Enrich;

    fn process(&mut self, batch: &mut [FlowRecord]) {
        let snapshot = self.resolver.as_ref().map(Resolver::snapshot);
        for record in batch {
            if let Some(snapshot) = &snapshot {
                self.enricher.enrich(record, snapshot);
            }
            if let Some(dns) = &self.dns {
                name_remote(record, dns);
                if let Some(ai) = dns.ai() {
                    tag_remote(record, ai);
                }
            }
        }
    }
}
