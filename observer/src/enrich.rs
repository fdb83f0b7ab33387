//! Enrich: says who is at each end of a flow.
//!
//! In: batches of flow records from capture, the inventory's resolver and the
//! DNS name cache. Out: the same records with each end's pod, namespace,
//! workload and configured labels (or service, node, `world`, `host`) filled
//! in from the inventory as it was when the flow started, and for egress to
//! the world the names the source pod had resolved for the destination (or
//! `resolved: false`: a direct-IP connection) and the AI provider of the
//! catalog it is (`dst.ai_provider`, [`crate::ai::tag`]), and for a flow to
//! a Service the backend it reached ([`crate::backends`]). The pipeline's
//! enrich stage ([`crate::pipeline`]) runs it on each batch.

use std::sync::Arc;

use crate::{
    FastMap,
    backends::Backends,
    dns::{DnsView, Owner},
    flow::{FlowRecord, LocalEnd, PeerDns},
    inventory::{CgroupEnd, EndpointKind, Snapshot},
    node::{AddressSet, NodeAddresses},
};

/// Port of DNS itself: a pod talking to its configured resolver is no
/// direct-IP connection.
const DNS_PORT: u16 = 53;

/// Names the remote end of an egress record from the DNS cache: the names
/// the local pod had resolved for that address when the flow started, or
/// for the world, `resolved: false` when it never resolved it. Without an
/// inventory (no end is known to be the world) only found names are set.
/// Returns what it set, for counting.
pub fn name_remote(record: &mut FlowRecord, dns: &DnsView) -> Option<bool> {
    if record.local != LocalEnd::Src {
        return None;
    }
    let remote = &mut record.dst;
    let kind = remote.endpoint.as_ref().map(|endpoint| endpoint.kind);
    if !matches!(kind, None | Some(EndpointKind::World)) {
        return None;
    }
    let owner = Owner::of(record.cgroup.id, record.cgroup.path.as_deref());
    let names = dns.names(&owner, remote.ip, record.first_seen);
    if !names.is_empty() {
        remote.dns = Some(PeerDns { names, resolved: true });
        return Some(true);
    }
    if kind == Some(EndpointKind::World) && remote.port != Some(DNS_PORT) {
        remote.dns = Some(PeerDns { names: Vec::new(), resolved: false });
        return Some(false);
    }
    None
}

/// Cgroups whose resolution is kept per snapshot before the cache starts over
/// (a node runs a few thousand containers at most).
const MAX_CGROUPS: usize = 65_536;

/// Fills in both ends of records against the latest snapshot, keeping what
/// each local cgroup resolved to until the snapshot changes: the cgroup path
/// is parsed and its pod looked up once per cgroup, not once per record.
#[derive(Debug, Default)]
pub struct Enricher {
    generation: Option<u64>,
    cgroups: FastMap<u64, CgroupEnd>,
    node: NodeAddresses,
    /// The node's addresses as last taken from `node`.
    node_addresses: Arc<AddressSet>,
    backends: Backends,
}

impl Enricher {
    /// An enricher on the node holding `node`'s addresses: a remote end at
    /// one of them is the node itself.
    pub fn new(node: NodeAddresses) -> Self {
        Self { node_addresses: node.current(), node, ..Self::default() }
    }

    /// An enricher on the node holding `node`'s addresses that resolves
    /// Service flows with `backends`.
    pub fn on_node(node: NodeAddresses, backends: Backends) -> Self {
        Self { backends, ..Self::new(node) }
    }

    /// An enricher that resolves Service flows with `backends`.
    pub fn with_backends(backends: Backends) -> Self {
        Self { backends, ..Self::default() }
    }

    /// Fills in both ends of `record`: the local end by its cgroup, else its
    /// IP, the remote end by its IP, both at the flow's start; a Service
    /// destination then by the backend it reached.
    pub fn enrich(&mut self, record: &mut FlowRecord, snapshot: &Snapshot) {
        if let Some(addresses) = self.node.changed_set() {
            self.node_addresses = addresses;
        }
        if self.generation != Some(snapshot.generation()) || self.cgroups.len() >= MAX_CGROUPS {
            self.cgroups.clear();
            self.generation = Some(snapshot.generation());
        }
        let path = record.cgroup.path.as_deref();
        let fresh;
        let cgroup = match (record.cgroup.id, path) {
            // Only a known path is kept: capture may learn a cgroup's path late.
            (id, Some(path)) if id != 0 => {
                &*self.cgroups.entry(id).or_insert_with(|| snapshot.resolve_cgroup(Some(path)))
            }
            _ => {
                fresh = snapshot.resolve_cgroup(path);
                &fresh
            }
        };
        let at = record.first_seen;
        let (local, remote) = match record.local {
            LocalEnd::Src => (&mut record.src, &mut record.dst),
            LocalEnd::Dst => (&mut record.dst, &mut record.src),
        };
        local.endpoint = Some(snapshot.resolve_local_from(cgroup, local.ip, at));
        remote.endpoint = Some(snapshot.resolve_remote_here(remote.ip, at, &self.node_addresses));
        self.backends.resolve(record, snapshot);
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::Duration};

    use observer_common::{FAMILY_IPV4, FlowKey, FlowStats, INITIATOR_LOCAL, INITIATOR_REMOTE, PROTO_TCP};

    use super::*;
    use crate::{
        capture::{build_record, clock::Clock, table::Emission},
        dns::{DnsConfig, NameCache},
        flow::{FlowState, RecordEvent},
        inventory::Endpoint,
    };

    const POD: &str = "/kubepods/besteffort/pod3f6c1c2e-1111-4222-8333-444455556666/0123456789abcdef";

    fn record(remote: [u8; 4], remote_port: u16, initiator: u8, clock: &Clock) -> FlowRecord {
        let mut key = FlowKey {
            cgroup_id: 9,
            local_port: 40000,
            remote_port,
            protocol: PROTO_TCP,
            family: FAMILY_IPV4,
            ..FlowKey::default()
        };
        key.local_addr[..4].copy_from_slice(&[198, 18, 0, 10]);
        key.remote_addr[..4].copy_from_slice(&remote);
        let now = crate::capture::clock::monotonic_ns();
        let stats = FlowStats { first_seen_ns: now, last_seen_ns: now, initiator, ..FlowStats::default() };
        let emission =
            Emission { key, stats, event: RecordEvent::End, state: FlowState::Closed, flow: 1, reported: None };
        let mut record =
            build_record(&emission, std::time::SystemTime::now(), clock, Some(Arc::from(POD)), &Arc::from("node"));
        let remote_end = if initiator == INITIATOR_LOCAL { &mut record.dst } else { &mut record.src };
        remote_end.endpoint = Some(Endpoint::world());
        record
    }

    fn dns(record: &FlowRecord) -> serde_json::Value {
        serde_json::to_value(&record.dst).expect("json")["dns"].clone()
    }

    #[test]
    fn world_egress_is_named_or_marked_direct_ip() {
        let clock = Clock::new();
        let view = DnsView::new(&DnsConfig::default());
        let resolved = IpAddr::from([203, 0, 113, 20]);
        // What the tracker would learn from an answer the pod received a moment ago.
        let mut cache = NameCache::new(16, Duration::from_secs(60));
        cache.insert(
            Owner::of(9, Some(POD)),
            resolved,
            "api.example.com".into(),
            Duration::from_secs(30),
            std::time::SystemTime::now() - Duration::from_millis(5),
        );
        let view = view.with_cache_for_tests(cache);
        let mut named = record([203, 0, 113, 20], 443, INITIATOR_LOCAL, &clock);
        assert_eq!(name_remote(&mut named, &view), Some(true));
        assert_eq!(dns(&named), serde_json::json!({"names": ["api.example.com"], "resolved": true}));
        let mut direct = record([203, 0, 113, 21], 443, INITIATOR_LOCAL, &clock);
        assert_eq!(name_remote(&mut direct, &view), Some(false));
        assert_eq!(dns(&direct), serde_json::json!({"resolved": false}));
        // The resolver itself, and flows the pod did not start, are left alone.
        let mut to_resolver = record([203, 0, 113, 53], 53, INITIATOR_LOCAL, &clock);
        assert_eq!(name_remote(&mut to_resolver, &view), None);
        let mut inbound = record([203, 0, 113, 20], 443, INITIATOR_REMOTE, &clock);
        assert_eq!(name_remote(&mut inbound, &view), None);
        assert!(inbound.src.dns.is_none() && inbound.dst.dns.is_none());
    }

    fn pod_manifest(name: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: ai\n  uid: 3f6c1c2e-1111-4222-8333-444455556666\nspec:\n  containers:\n  - name: c\n    image: i\nstatus:\n  podIP: 198.18.0.10\n"
        )
    }

    #[tokio::test]
    async fn a_cgroup_resolves_once_per_snapshot_and_anew_after_a_change() {
        let dir = crate::testing::ManifestDir::new("enricher");
        dir.write("pod.yaml", &pod_manifest("agent-1"));
        let config = crate::inventory::InventoryConfig {
            reload_interval: Duration::from_millis(20),
            ..crate::inventory::InventoryConfig::default()
        };
        let (inventory, reload) = crate::inventory::Inventory::standalone(vec![dir.path().to_owned()], config);
        let clock = Clock::new();
        let mut enricher = Enricher::default();
        let local_pod = |record: &FlowRecord| record.src.endpoint.as_ref().and_then(|end| end.pod.clone());

        // Capture did not know the cgroup's path yet: resolved by IP, not kept.
        let mut pathless = record([203, 0, 113, 9], 443, INITIATOR_LOCAL, &clock);
        pathless.cgroup.path = None;
        pathless.src.ip = IpAddr::from([198, 18, 0, 99]);
        enricher.enrich(&mut pathless, &inventory.snapshot());
        assert_eq!(pathless.src.endpoint.as_ref().map(|end| end.kind), Some(EndpointKind::Host));
        // From here on the local IP is no pod's: only the cgroup can name it.
        let mut first = record([203, 0, 113, 9], 443, INITIATOR_LOCAL, &clock);
        first.src.ip = IpAddr::from([198, 18, 0, 99]);
        enricher.enrich(&mut first, &inventory.snapshot());
        assert_eq!(local_pod(&first).as_deref(), Some("agent-1"), "by its cgroup's pod uid");

        let mut generations = inventory.subscribe();
        let task = tokio::spawn(reload);
        dir.write("pod.yaml", &pod_manifest("agent-renamed-2"));
        tokio::time::timeout(Duration::from_secs(10), generations.changed())
            .await
            .expect("a reload within 10 s")
            .expect("inventory alive");
        let mut second = record([203, 0, 113, 9], 443, INITIATOR_LOCAL, &clock);
        second.src.ip = IpAddr::from([198, 18, 0, 99]);
        enricher.enrich(&mut second, &inventory.snapshot());
        assert_eq!(local_pod(&second).as_deref(), Some("agent-renamed-2"), "a new snapshot, resolved anew");
        task.abort();
    }
}
