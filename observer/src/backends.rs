//! Services resolved to their backends: which pod a flow to a ClusterIP (or
//! a NodePort, or a redirected address) really reached.
//!
//! In: enriched records whose destination is a Service's ClusterIP and
//! port, a node's address and a NodePort, or a redirected address (the
//! cloud metadata service); the inventory snapshot; the node's conntrack
//! table. Out: the record's `dst` set to the backend: `endpoint` the
//! backend (its pod, with the Service named) and `backend {ip, port, via}`,
//! from conntrack (the DNAT of this very connection), else from the
//! Service's EndpointSlices when they list a single ready backend; else left
//! as it was (the judge then weighs every ready backend). Conntrack is asked
//! once per flow, at the first record this stage sees of it; the answer is
//! kept with the flow until its last record. Lookups, hits, misses and
//! errors are counted.

use std::net::{IpAddr, SocketAddr};

use crate::{
    FastMap,
    conntrack::{Conntrack, ConntrackError, Tuple},
    flow::{Backend, BackendSource, FlowRecord, LocalEnd, RecordEvent},
    inventory::{Endpoint, EndpointKind, Snapshot},
    metrics::services::ServiceCounters,
};

/// Something that answers conntrack lookups: the kernel's table
/// ([`Conntrack`]), or a table of plain values in tests and benches.
pub trait Lookup: Send {
    /// Where the connection `tuple` was sent (its reply tuple's source), or
    /// `None` when the table holds no such connection.
    fn lookup(&mut self, tuple: &Tuple) -> Result<Option<SocketAddr>, ConntrackError>;
}

impl Lookup for Conntrack {
    fn lookup(&mut self, tuple: &Tuple) -> Result<Option<SocketAddr>, ConntrackError> {
        Conntrack::lookup(self, tuple)
    }
}

/// What a flow's destination resolved to, kept for its later records.
#[derive(Clone, Debug)]
struct Resolved {
    endpoint: Endpoint,
    backend: Backend,
}

/// Flows whose resolution is kept at most; past it the table starts over
/// (their next records are looked up again).
const MAX_FLOWS: usize = 262_144;

/// Backends kept per inventory snapshot (one per Service and backend pod).
const MAX_BEHIND: usize = 65_536;

/// Resolves Service flows to their backends; owned by the enrich stage.
pub struct Backends {
    conntrack: Option<Box<dyn Lookup>>,
    /// Addresses the node may redirect (the cloud metadata service): looked
    /// up in conntrack like a Service.
    redirected: Vec<IpAddr>,
    /// By capture's flow handle: `None` when nothing resolved it.
    flows: FastMap<u64, Option<Resolved>>,
    /// The backend's endpoint behind each Service, by (Service, backend)
    /// identity, for the snapshot of `generation`: flows to the same backend
    /// share one endpoint, so the judge keeps one verdict for them.
    behind: FastMap<(usize, usize), Endpoint>,
    generation: Option<u64>,
    counters: ServiceCounters,
    /// Whether a lookup error was logged yet (then only counted).
    error_logged: bool,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("conntrack", &self.conntrack.is_some())
            .field("redirected", &self.redirected)
            .field("flows", &self.flows.len())
            .finish_non_exhaustive()
    }
}

impl Default for Backends {
    /// No conntrack, no redirected address: EndpointSlices only, counted nowhere.
    fn default() -> Self {
        Self::new(None, Vec::new(), ServiceCounters::default())
    }
}

impl Backends {
    /// Resolves with `conntrack` (none: from EndpointSlices only), treating
    /// `redirected` addresses like Services, counting into `counters`.
    pub fn new(conntrack: Option<Box<dyn Lookup>>, redirected: Vec<IpAddr>, counters: ServiceCounters) -> Self {
        Self {
            conntrack,
            redirected,
            flows: FastMap::default(),
            behind: FastMap::default(),
            generation: None,
            counters,
            error_logged: false,
        }
    }

    /// Opens the node's conntrack table in this thread's network namespace;
    /// without it (no `CAP_NET_ADMIN`, no `nf_conntrack_netlink`) Services
    /// are resolved from EndpointSlices alone, which is logged.
    pub fn open(redirected: Vec<IpAddr>, counters: ServiceCounters) -> Self {
        let conntrack = match Conntrack::open() {
            Ok(conntrack) => Some(Box::new(conntrack) as Box<dyn Lookup>),
            Err(error) => {
                tracing::warn!(
                    error = %crate::error_chain(&error),
                    "conntrack unavailable: Service flows are resolved from EndpointSlices only"
                );
                None
            }
        };
        Self::new(conntrack, redirected, counters)
    }

    /// Sets the destination of `record` (enriched against `snapshot`) to the
    /// backend it reached, when it is a Service flow and one is known.
    pub fn resolve(&mut self, record: &mut FlowRecord, snapshot: &Snapshot) {
        // The receiving node sees the backend's own socket: nothing to resolve.
        if record.local != LocalEnd::Src {
            return;
        }
        let (Some(src_port), Some(dst_port), Some(asked)) = (record.src.port, record.dst.port, &record.dst.endpoint)
        else {
            return;
        };
        let candidate = match asked.kind {
            // A node address (a NodePort) resolves to this node (`Host`) or another (`Node`).
            EndpointKind::Service | EndpointKind::Node | EndpointKind::Host => true,
            _ => self.redirected.contains(&record.dst.ip),
        };
        if !candidate {
            return;
        }
        let flow = record.progress.flow;
        let last = record.event == RecordEvent::End;
        if flow != 0 {
            let kept = if last { self.flows.remove(&flow) } else { self.flows.get(&flow).cloned() };
            if let Some(kept) = kept {
                apply(record, kept);
                return;
            }
        }
        let service = snapshot.service_backends(record.dst.ip, dst_port, record.protocol.0);
        if service.is_none() && !self.redirected.contains(&record.dst.ip) {
            return;
        }
        let asked = asked.clone();
        let tuple = Tuple::new(
            record.protocol.0,
            SocketAddr::new(record.src.ip, src_port),
            SocketAddr::new(record.dst.ip, dst_port),
        );
        let from_conntrack =
            tuple.and_then(|tuple| self.ask_conntrack(&tuple)).map(|at| (at, BackendSource::Conntrack));
        let found = from_conntrack.or_else(|| match service.map(|service| &*service.backends) {
            Some([only]) => Some((*only, BackendSource::EndpointSlices)),
            _ => None,
        });
        match found {
            Some((_, BackendSource::Conntrack)) => self.counters.by_conntrack.inc(),
            Some((_, BackendSource::EndpointSlices)) => self.counters.by_endpointslices.inc(),
            None => self.counters.unresolved.inc(),
        };
        // A NodePort's address is a node's: the Service is named from the index.
        let through = service.map_or_else(|| asked.clone(), |service| service.service.clone());
        let resolved = found.map(|(at, via)| {
            let endpoint = self.behind(snapshot, &through, at.ip(), record.first_seen);
            Resolved { endpoint, backend: Backend { ip: at.ip(), port: at.port(), via, asked } }
        });
        if flow != 0 && !last {
            if self.flows.len() >= MAX_FLOWS {
                self.flows.clear();
            }
            self.flows.insert(flow, resolved.clone());
        }
        apply(record, resolved);
    }

    /// Asks conntrack where `tuple` was sent; `None` when it was not
    /// rewritten, conntrack does not know it, or cannot be asked.
    fn ask_conntrack(&mut self, tuple: &Tuple) -> Option<SocketAddr> {
        let conntrack = self.conntrack.as_mut()?;
        match conntrack.lookup(tuple) {
            Ok(Some(at)) => {
                self.counters.conntrack_hits.inc();
                // Not rewritten: the destination took it itself.
                (at != tuple.dst).then_some(at)
            }
            Ok(None) => {
                self.counters.conntrack_misses.inc();
                None
            }
            Err(ConntrackError::Kernel { errno: libc::EPERM }) => {
                // Not allowed (no CAP_NET_ADMIN in this namespace): it will
                // not be allowed on the next flow either; stop asking.
                self.counters.conntrack_errors.inc();
                self.conntrack = None;
                tracing::warn!(
                    "conntrack lookups are not permitted (no CAP_NET_ADMIN in the observer's network namespace): \
                     Service flows are resolved from EndpointSlices only"
                );
                None
            }
            Err(error) => {
                self.counters.conntrack_errors.inc();
                if !self.error_logged {
                    self.error_logged = true;
                    tracing::warn!(
                        error = %crate::error_chain(&error),
                        "conntrack lookup failed; falling back to EndpointSlices (further failures are only counted)"
                    );
                }
                None
            }
        }
    }

    /// The endpoint of the backend at `ip` reached through `through` (the
    /// Service, or the redirected address), shared by the flows of the same
    /// snapshot.
    fn behind(&mut self, snapshot: &Snapshot, through: &Endpoint, ip: IpAddr, at: std::time::SystemTime) -> Endpoint {
        if self.generation != Some(snapshot.generation()) || self.behind.len() >= MAX_BEHIND {
            self.behind.clear();
            self.generation = Some(snapshot.generation());
        }
        let backend = snapshot.resolve_remote(ip, at);
        self.behind.entry((through.identity(), backend.identity())).or_insert_with(|| backend.behind(through)).clone()
    }
}

fn apply(record: &mut FlowRecord, resolved: Option<Resolved>) {
    if let Some(Resolved { endpoint, backend }) = resolved {
        record.dst.endpoint = Some(endpoint);
        record.dst.backend = Some(backend);
    }
}

#[cfg(test)]
mod tests {
    use observer_common::{PROTO_TCP, PROTO_UDP};

    use super::*;
    use crate::{
        enrich::Enricher,
        inventory::{Inventory, InventoryConfig},
        testing::{ConntrackTable, socket_record},
    };

    const MANIFESTS: &str = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 198.18.255.10}, {type: InternalIP, address: "2001:db8:198:255::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: ai, uid: uid-client}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 198.18.0.10, podIPs: [{ip: 198.18.0.10}, {ip: "2001:db8::10"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns-1, namespace: kube-system, uid: uid-coredns-1, labels: {k8s-app: kube-dns}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 198.18.0.53, podIPs: [{ip: 198.18.0.53}, {ip: "2001:db8::53"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: coredns-2, namespace: kube-system, uid: uid-coredns-2, labels: {k8s-app: kube-dns}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 198.18.0.54}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: shop, uid: uid-web-1}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {phase: Running, podIP: 198.18.0.60}
---
apiVersion: v1
kind: Service
metadata: {name: kube-dns, namespace: kube-system}
spec:
  clusterIPs: [198.19.0.10, "2001:db8:198:19::a"]
  ports: [{name: dns, port: 53, protocol: UDP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-v4, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv4
ports: [{name: dns, port: 53, protocol: UDP}]
endpoints: [{addresses: [198.18.0.53]}, {addresses: [198.18.0.54], conditions: {ready: true}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: kube-dns-v6, namespace: kube-system, labels: {kubernetes.io/service-name: kube-dns}}
addressType: IPv6
ports: [{name: dns, port: 53, protocol: UDP}]
endpoints: [{addresses: ["2001:db8::53"]}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 198.19.0.20
  ports: [{port: 80, nodePort: 30080}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x, namespace: shop, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{port: 8080}]
endpoints: [{addresses: [198.18.0.60]}, {addresses: [198.18.0.61], conditions: {ready: false}}]
"#;

    fn inventory() -> (Inventory, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("cluster.yaml"), MANIFESTS).expect("write");
        let (inventory, _reload) = Inventory::standalone(vec![dir.path().to_owned()], InventoryConfig::default());
        assert!(inventory.snapshot().synced(), "{:?}", inventory.status());
        (inventory, dir)
    }

    fn enricher(table: &ConntrackTable, counters: &ServiceCounters) -> Enricher {
        let redirected = vec!["169.254.169.254".parse().expect("ip")];
        Enricher::with_backends(Backends::new(Some(Box::new(table.clone())), redirected, counters.clone()))
    }

    fn dst(record: &FlowRecord) -> serde_json::Value {
        serde_json::to_value(&record.dst).expect("json")
    }

    #[test]
    fn conntrack_names_the_backend_once_per_flow() {
        let (inventory, _dir) = inventory();
        let snapshot = inventory.snapshot();
        let table = ConntrackTable::default()
            .with("198.18.0.10:40000", "198.19.0.10:53", PROTO_UDP, Ok("198.18.0.54:53"))
            .with("[2001:db8::10]:40001", "[2001:db8:198:19::a]:53", PROTO_UDP, Ok("[2001:db8::53]:53"));
        let counters = ServiceCounters::default();
        let mut enricher = enricher(&table, &counters);
        let mut start = socket_record("198.18.0.10:40000", "198.19.0.10:53", PROTO_UDP, 7, RecordEvent::Start);
        enricher.enrich(&mut start, &snapshot);
        let json = dst(&start);
        assert_eq!(json["ip"], "198.19.0.10", "what the socket saw stays");
        assert_eq!(json["port"], 53);
        assert_eq!(
            (&json["kind"], &json["namespace"], &json["pod"]),
            (&"pod".into(), &"kube-system".into(), &"coredns-2".into())
        );
        assert_eq!(json["service"], serde_json::json!({"namespace": "kube-system", "name": "kube-dns"}));
        assert_eq!(json["backend"], serde_json::json!({"ip": "198.18.0.54", "port": 53, "via": "conntrack"}));
        let asked = start.dst.backend.as_ref().map(|backend| backend.asked.kind);
        assert_eq!(asked, Some(EndpointKind::Service), "what the pod asked for is kept for intents");
        // Its later records reuse the answer; the last one forgets it.
        for event in [RecordEvent::Update, RecordEvent::End] {
            let mut later = socket_record("198.18.0.10:40000", "198.19.0.10:53", PROTO_UDP, 7, event);
            enricher.enrich(&mut later, &snapshot);
            assert_eq!(dst(&later), json);
        }
        assert_eq!(table.lookups(), 1, "one lookup for three records");
        let mut reused = socket_record("198.18.0.10:40000", "198.19.0.10:53", PROTO_UDP, 7, RecordEvent::Start);
        enricher.enrich(&mut reused, &snapshot);
        assert_eq!(table.lookups(), 2, "a flow handle seen after its end is looked up anew");
        // IPv6 alike.
        let mut v6 = socket_record("[2001:db8::10]:40001", "[2001:db8:198:19::a]:53", PROTO_UDP, 8, RecordEvent::Start);
        enricher.enrich(&mut v6, &snapshot);
        assert_eq!(dst(&v6)["pod"], "coredns-1");
        assert_eq!(dst(&v6)["backend"], serde_json::json!({"ip": "2001:db8::53", "port": 53, "via": "conntrack"}));
        assert_eq!((counters.conntrack_hits.get(), counters.conntrack_misses.get()), (3, 0));
        assert_eq!(counters.by_conntrack.get(), 3);
        // Flows to pods and records seen at the receiver are not looked up.
        let mut direct = socket_record("198.18.0.10:40002", "198.18.0.53:53", PROTO_UDP, 9, RecordEvent::Start);
        enricher.enrich(&mut direct, &snapshot);
        let mut inbound = socket_record("198.18.0.10:40003", "198.19.0.10:53", PROTO_UDP, 10, RecordEvent::Start);
        inbound.local = LocalEnd::Dst;
        enricher.enrich(&mut inbound, &snapshot);
        assert_eq!(table.lookups(), 3);
        assert!(direct.dst.backend.is_none() && inbound.dst.backend.is_none());
    }

    #[test]
    fn without_conntrack_a_single_ready_backend_is_taken_from_endpointslices() {
        let (inventory, _dir) = inventory();
        let snapshot = inventory.snapshot();
        let table = ConntrackTable::default().with("198.18.0.10:40005", "198.19.0.20:80", PROTO_TCP, Err(libc::EINVAL));
        let counters = ServiceCounters::default();
        let mut enricher = enricher(&table, &counters);
        // A lookup error: counted, and the Service's one ready backend (the other is not ready).
        let mut web = socket_record("198.18.0.10:40005", "198.19.0.20:80", PROTO_TCP, 1, RecordEvent::Start);
        enricher.enrich(&mut web, &snapshot);
        assert_eq!(dst(&web)["pod"], "web-1");
        assert_eq!(
            dst(&web)["backend"],
            serde_json::json!({"ip": "198.18.0.60", "port": 8080, "via": "endpointslices"})
        );
        // A NodePort on the node's address: conntrack misses, the slice names it.
        let mut node_port = socket_record("198.18.0.10:40006", "198.18.255.10:30080", PROTO_TCP, 2, RecordEvent::Start);
        enricher.enrich(&mut node_port, &snapshot);
        assert_eq!(dst(&node_port)["service"], serde_json::json!({"namespace": "shop", "name": "web"}));
        assert_eq!(dst(&node_port)["backend"]["via"], "endpointslices");
        // Two ready backends and no conntrack entry: left to the judge.
        let mut dns = socket_record("198.18.0.10:40007", "198.19.0.10:53", PROTO_UDP, 3, RecordEvent::Start);
        enricher.enrich(&mut dns, &snapshot);
        assert_eq!(dst(&dns)["kind"], "service");
        assert_eq!(dst(&dns)["service"], serde_json::json!({"namespace": "kube-system", "name": "kube-dns"}));
        assert!(dns.dst.backend.is_none());
        assert_eq!(
            (counters.conntrack_errors.get(), counters.conntrack_misses.get(), counters.conntrack_hits.get()),
            (1, 2, 0)
        );
        assert_eq!((counters.by_endpointslices.get(), counters.unresolved.get()), (2, 1));
        assert_eq!(table.lookups(), 3);
    }

    #[test]
    fn a_lookup_not_permitted_stops_the_lookups() {
        let (inventory, _dir) = inventory();
        let snapshot = inventory.snapshot();
        let table = ConntrackTable::default().with("198.18.0.10:40010", "198.19.0.20:80", PROTO_TCP, Err(libc::EPERM));
        let counters = ServiceCounters::default();
        let mut enricher = enricher(&table, &counters);
        for (port, flow) in [(40010, 1), (40011, 2), (40012, 3)] {
            let mut web =
                socket_record(&format!("198.18.0.10:{port}"), "198.19.0.20:80", PROTO_TCP, flow, RecordEvent::Start);
            enricher.enrich(&mut web, &snapshot);
            assert_eq!(dst(&web)["backend"]["via"], "endpointslices", "flow {flow}");
        }
        assert_eq!(table.lookups(), 1, "asked once, refused, never again");
        assert_eq!((counters.conntrack_errors.get(), counters.by_endpointslices.get()), (1, 3));
    }

    #[test]
    fn a_redirected_address_keeps_what_the_pod_asked_for() {
        let (inventory, _dir) = inventory();
        let snapshot = inventory.snapshot();
        let table = ConntrackTable::default().with(
            "198.18.0.10:40008",
            "169.254.169.254:80",
            PROTO_TCP,
            Ok("198.18.255.10:988"),
        );
        let mut enricher = enricher(&table, &ServiceCounters::default());
        let mut metadata = socket_record("198.18.0.10:40008", "169.254.169.254:80", PROTO_TCP, 1, RecordEvent::Start);
        enricher.enrich(&mut metadata, &snapshot);
        assert_eq!(dst(&metadata)["ip"], "169.254.169.254");
        assert_eq!(dst(&metadata)["kind"], "node");
        assert_eq!(
            dst(&metadata)["backend"],
            serde_json::json!({"ip": "198.18.255.10", "port": 988, "via": "conntrack"})
        );
        let asked = metadata.dst.backend.as_ref().map(|backend| backend.asked.kind);
        assert_eq!(asked, Some(EndpointKind::World));
        // Other world addresses are not looked up.
        let mut world = socket_record("198.18.0.10:40009", "203.0.113.7:443", PROTO_TCP, 2, RecordEvent::Start);
        enricher.enrich(&mut world, &snapshot);
        assert_eq!(table.lookups(), 1);
    }
}
