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

#[cfg(test)]
mod tests {
    use std::{
        net::IpAddr,
        time::{Duration, SystemTime},
    };

    use super::*;
    use crate::{
        ai::{Catalog, CatalogConfig},
        flow::{PeerDns, RecordEvent},
        inventory::Endpoint,
    };

    fn record(dst: [u8; 4], dns: Option<PeerDns>, local: LocalEnd, at: SystemTime) -> FlowRecord {
        let dst = format!("{}:443", IpAddr::from(dst));
        let mut record = crate::testing::tcp_record("198.18.0.10:443", &dst, RecordEvent::End, at);
        record.dst.endpoint = Some(Endpoint::world());
        record.dst.dns = dns;
        record.local = local;
        record
    }

    #[test]
    fn egress_is_named_by_the_pods_names_or_by_an_address_resolved_elsewhere() {
        let catalog = Arc::new(Catalog::build(&CatalogConfig::default()).expect("catalog"));
        let ai = AiEndpoints::new(catalog, 16, Duration::from_secs(120));
        let at = SystemTime::now();
        let resolved =
            |names: &[&str]| Some(PeerDns { names: names.iter().map(|n| Arc::from(*n)).collect(), resolved: true });
        let direct = || Some(PeerDns { names: Vec::new(), resolved: false });
        // Some pod on the node resolved api.anthropic.com to .10.
        ai.learn(IpAddr::from([203, 0, 113, 10]), &[Arc::from("api.anthropic.com")], Duration::from_secs(60), at);
        let later = at + Duration::from_secs(1);

        let mut by_name = record([203, 0, 113, 20], resolved(&["api.groq.com"]), LocalEnd::Src, later);
        assert_eq!(tag_remote(&mut by_name, &ai), Some(AiVia::Dns));
        let json = serde_json::to_value(&by_name.dst).expect("json");
        assert_eq!(
            (&json["ai_provider"], &json["ai_kind"], &json["ai_via"]),
            (&"groq".into(), &"llm-api".into(), &"dns".into())
        );
        assert!(json.get("ai_name").is_none());

        let mut hard_coded = record([203, 0, 113, 10], direct(), LocalEnd::Src, later);
        assert_eq!(tag_remote(&mut hard_coded, &ai), Some(AiVia::Address));
        let json = serde_json::to_value(&hard_coded.dst).expect("json");
        assert_eq!((&json["ai_provider"], &json["ai_name"]), (&"anthropic".into(), &"api.anthropic.com".into()));

        // Resolved by the pod under a name the catalog does not know: its names win.
        let mut other_name = record([203, 0, 113, 10], resolved(&["proxy.example.com"]), LocalEnd::Src, later);
        assert_eq!(tag_remote(&mut other_name, &ai), None);
        // Not a catalog address, not egress, or before the answer: nothing.
        let mut unknown = record([203, 0, 113, 30], direct(), LocalEnd::Src, later);
        assert_eq!(tag_remote(&mut unknown, &ai), None);
        let mut inbound = record([203, 0, 113, 10], direct(), LocalEnd::Dst, later);
        assert_eq!(tag_remote(&mut inbound, &ai), None);
        let mut earlier = record([203, 0, 113, 10], direct(), LocalEnd::Src, at - Duration::from_secs(1));
        assert_eq!(tag_remote(&mut earlier, &ai), None);
        assert!(unknown.dst.ai.is_none() && inbound.dst.ai.is_none() && earlier.dst.ai.is_none());
    }
}
