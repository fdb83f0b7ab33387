//! The policy engine: compiled NetworkPolicies indexed for per-flow verdicts.
//!
//! In: NetworkPolicies and Namespaces (when the inventory changes), then flows
//! as two [`Endpoint`]s, a port and a protocol. Out: a [`Verdict`] per flow.
//! Policies are bucketed by namespace and policy type, so a verdict only looks
//! at the policies of the two namespaces involved, for the one direction that
//! matters on each side; namespace selectors are resolved to bitmaps at compile
//! time, so matching a peer's namespace is a bit test.
//!
//! [`PolicyEngine::index_pods`] adds a per-pod index, built when the inventory
//! changes: for each pod, its namespace id, the policies selecting it per
//! direction, the peer selectors it matches and the policy-named ports it
//! declares. A verdict for an indexed pod then reads that record and none of
//! the pod's strings; any other pod is judged from its fields, with the same result.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{
    cnp::{self, ClusterNetworkPolicy, ClusterPolicies, CnpError, NodeAddresses, PodKey, SideFlow, TierEnd},
    compiled::{
        Addresses, CompiledPolicy, DestinationPorts, Flow, Interner, NAMESPACE_NAME_LABEL, NamedPort, NamespaceTable,
        NsId, NsKey, OtherEnd, PodLabels, Rule,
    },
    error::PolicyError,
    fasthash::{AddressBuildHasher, FxBuildHasher, label_hash},
    selector::{Selector, same},
    verdict::{Action, SideVerdict, Tier, Verdict},
};
use crate::inventory::{
    ObjectKind, ObjectRef,
    model::{Labels, Namespace, Node, Pod, Protocol},
};

/// One end of a flow.
#[derive(Clone, Copy, Debug)]
pub enum Endpoint<'a> {
    /// A pod. `ip` is the address the flow used, when known: `ipBlock` peers
    /// match it, or any of the pod's addresses when it is `None`.
    Pod {
        /// The pod.
        pod: &'a Pod,
        /// The address the flow used.
        ip: Option<IpAddr>,
    },
    /// An address of no pod: outside the cluster, or a node. It has no side.
    External(IpAddr),
}

impl<'a> Endpoint<'a> {
    /// A pod end, matched by any of its addresses in `ipBlock` peers.
    pub fn pod(pod: &'a Pod) -> Self {
        Self::Pod { pod, ip: None }
    }
}

/// The policies that select a pod, per direction they isolate it for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Isolation {
    /// Policies of type Ingress selecting the pod, in compile order; empty when
    /// it is not isolated for ingress.
    pub ingress: Vec<Arc<ObjectRef>>,
    /// Policies of type Egress selecting the pod, in compile order.
    pub egress: Vec<Arc<ObjectRef>>,
}

/// The ClusterNetworkPolicies guarding a pod, per direction: those whose
/// subject selects it and that have a `Deny` rule for the direction, in
/// evaluation order (Admin by priority, then Baseline).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Guardrails {
    /// With a `Deny` ingress rule.
    pub ingress: Vec<Arc<ObjectRef>>,
    /// With a `Deny` egress rule.
    pub egress: Vec<Arc<ObjectRef>>,
}

/// Policies that require one `key=value` of the pods they select.
#[derive(Clone, Debug)]
struct LabelPolicies {
    key: Box<str>,
    value: Box<str>,
    ids: Vec<u32>,
}

/// The policies of one namespace isolating one direction, indexed so that a
/// pod's own labels find the candidates: a policy whose pod selector requires a
/// label is only looked at for pods carrying it.
#[derive(Clone, Debug, Default)]
struct Selection {
    /// Policies whose selector requires no single label (empty, or expressions only).
    always: Vec<u32>,
    /// The others, by the hash of one label their selector requires.
    by_label: HashMap<u64, Vec<LabelPolicies>, FxBuildHasher>,
}

impl Selection {
    fn add(&mut self, id: u32, selector: &Selector) {
        let Some((key, value)) = selector.required_label() else {
            self.always.push(id);
            return;
        };
        let entries = self.by_label.entry(label_hash(key, value)).or_default();
        match entries.iter_mut().find(|entry| &*entry.key == key && &*entry.value == value) {
            Some(entry) => entry.ids.push(id),
            None => entries.push(LabelPolicies { key: key.into(), value: value.into(), ids: vec![id] }),
        }
    }

    /// Calls `visit` with every policy that may select a pod with `labels`
    /// (each at most once), which must still check the full selector.
    fn candidates(&self, labels: &Labels, mut visit: impl FnMut(u32)) {
        self.always.iter().for_each(|id| visit(*id));
        if self.by_label.is_empty() {
            return;
        }
        for (key, value) in labels {
            let Some(entries) = self.by_label.get(&label_hash(key, value)) else { continue };
            // Labels have unique keys, so each entry is reached by one label at most.
            for entry in entries.iter().filter(|entry| same(&entry.key, key) && same(&entry.value, value)) {
                entry.ids.iter().for_each(|id| visit(*id));
            }
        }
    }
}

/// The policies of one namespace, by the direction they isolate.
#[derive(Clone, Debug, Default)]
struct Bucket {
    ingress: Selection,
    egress: Selection,
}

/// Compiled NetworkPolicies, ready to judge flows. Immutable: rebuild it when
/// the inventory changes and swap the `Arc` readers hold.
#[derive(Clone, Debug, Default)]
pub struct PolicyEngine {
    namespace_ids: HashMap<String, NsId, FxBuildHasher>,
    buckets: Vec<Bucket>,
    policies: Vec<CompiledPolicy>,
    /// Peer pod selectors and port names, interned for the pod index.
    interner: Interner,
    /// The peer selectors of `interner`, indexed by a label they require.
    peer_selectors: Selection,
    pods: PodIndex,
    /// Labels of each namespace, by id: what ClusterNetworkPolicies compile against.
    namespace_labels: Vec<Labels>,
    /// ClusterNetworkPolicies, by tier in evaluation order.
    cluster: ClusterPolicies,
}

/// Where an indexed pod stands.
#[derive(Clone, Copy, Debug)]
enum Placement {
    /// Host network: policies do not apply.
    HostNetwork,
    /// In a namespace of the table.
    Known(NsId),
    /// In a namespace the engine does not know.
    Unknown,
}

/// What verdicts need of one pod that does not depend on the flow.
#[derive(Clone, Copy, Debug)]
struct PodEntry {
    placement: Placement,
    /// Where its ids start in [`PodIndex::ids`]: the ingress policies selecting
    /// it, then the egress ones (each in compile order), then the peer
    /// selectors it matches (sorted).
    start: u32,
    ingress: u32,
    egress: u32,
    matched: u32,
    /// Its ports named by policies, in [`PodIndex::ports`].
    ports_start: u32,
    ports: u32,
    /// Where its ClusterNetworkPolicies start in [`PodIndex::cluster`], and
    /// how many there are per [`cluster_slot`]: the positions, in each
    /// tier's evaluation order, of the policies whose subject selects it
    /// and that have rules for the direction.
    cluster_start: u32,
    cluster: [u32; 4],
}

/// The slot of a tier and direction in [`PodEntry::cluster`].
fn cluster_slot(tier: Tier, direction: Direction) -> usize {
    match (tier, direction) {
        (Tier::Admin, Direction::Ingress) => 0,
        (Tier::Admin, Direction::Egress) => 1,
        (Tier::Baseline, Direction::Ingress) => 2,
        (Tier::Baseline, Direction::Egress) => 3,
    }
}

/// Per-pod records, by the pod's address. The index holds the pods' `Arc`s,
/// so while it lives no other pod can take an indexed pod's address, and an
/// indexed pod cannot change: the address is the pod's identity.
#[derive(Clone, Default)]
struct PodIndex {
    entries: HashMap<usize, PodEntry, AddressBuildHasher>,
    ids: Vec<u32>,
    ports: Vec<NamedPort>,
    /// ClusterNetworkPolicy positions, per pod (see [`PodEntry::cluster`]).
    cluster: Vec<u32>,
    pods: Vec<Arc<Pod>>,
}

impl std::fmt::Debug for PodIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodIndex").field("pods", &self.pods.len()).finish_non_exhaustive()
    }
}

impl PodIndex {
    fn get(&self, pod: &Pod) -> Option<&PodEntry> {
        if self.entries.is_empty() {
            return None;
        }
        self.entries.get(&(std::ptr::from_ref(pod) as usize))
    }

    fn policies(&self, entry: &PodEntry, direction: Direction) -> &[u32] {
        let start = entry.start as usize;
        match direction {
            Direction::Ingress => &self.ids[start..start + entry.ingress as usize],
            Direction::Egress => {
                let start = start + entry.ingress as usize;
                &self.ids[start..start + entry.egress as usize]
            }
        }
    }

    fn matched(&self, entry: &PodEntry) -> &[u32] {
        let start = entry.start as usize + entry.ingress as usize + entry.egress as usize;
        &self.ids[start..start + entry.matched as usize]
    }

    fn ports(&self, entry: &PodEntry) -> &[NamedPort] {
        let start = entry.ports_start as usize;
        &self.ports[start..start + entry.ports as usize]
    }

    /// The ClusterNetworkPolicies of `tier` selecting the pod with rules for `direction`.
    fn cluster(&self, entry: &PodEntry, tier: Tier, direction: Direction) -> &[u32] {
        let slot = cluster_slot(tier, direction);
        let start = entry.cluster_start as usize + entry.cluster[..slot].iter().sum::<u32>() as usize;
        &self.cluster[start..start + entry.cluster[slot] as usize]
    }
}

/// The two directions a policy can isolate.
#[derive(Clone, Copy, Debug)]
enum Direction {
    Ingress,
    Egress,
}

impl Direction {
    fn of_cluster(self) -> cnp::Direction {
        match self {
            Self::Ingress => cnp::Direction::Ingress,
            Self::Egress => cnp::Direction::Egress,
        }
    }
}

/// A pod that policies can select, as the engine sees it.
#[derive(Clone, Copy)]
struct Selectable<'a> {
    pod: &'a Pod,
    namespace: NsKey<'a>,
    /// Its record, when the pod is indexed.
    entry: Option<&'a PodEntry>,
}

/// An end as the engine sees it.
struct Resolved<'a> {
    pod: Option<Selectable<'a>>,
    addresses: Addresses<'a>,
}

impl<'a> Resolved<'a> {
    fn as_other(&self, index: &'a PodIndex) -> OtherEnd<'a> {
        let pod = self.pod.map(|end| {
            let labels = match end.entry {
                Some(entry) => PodLabels::Matched(index.matched(entry)),
                None => PodLabels::Labels(&end.pod.labels),
            };
            (labels, end.namespace)
        });
        OtherEnd { pod, addresses: self.addresses }
    }

    fn container_ports(&self, index: &'a PodIndex) -> DestinationPorts<'a> {
        match self.pod {
            None => DestinationPorts::Declared(&[]),
            Some(Selectable { entry: Some(entry), .. }) => DestinationPorts::Named(index.ports(entry)),
            Some(Selectable { pod, entry: None, .. }) => DestinationPorts::Declared(&pod.container_ports),
        }
    }
}

impl PolicyEngine {
    /// Compiles `policies` with the labels of `namespaces`. Policies that fail
    /// the API server's validation are left out and reported; the rest compile.
    ///
    /// A namespace not in `namespaces` is taken to carry only its
    /// `kubernetes.io/metadata.name` label.
    pub fn compile(policies: &[NetworkPolicy], namespaces: &[Namespace]) -> (Self, Vec<PolicyError>) {
        let mut namespace_ids = HashMap::default();
        let mut labels: Vec<Labels> = Vec::new();
        for namespace in namespaces {
            // A later copy of the same namespace replaces the earlier one.
            let id = *namespace_ids.entry(namespace.name.clone()).or_insert_with(|| {
                labels.push(Labels::new());
                labels.len() as NsId - 1
            });
            let mut namespace_labels = namespace.labels.clone();
            namespace_labels.entry(NAMESPACE_NAME_LABEL.to_owned()).or_insert_with(|| namespace.name.clone());
            labels[id as usize] = namespace_labels;
        }
        let metas: Vec<ObjectRef> =
            policies.iter().map(|policy| ObjectRef::of(ObjectKind::NetworkPolicy, &policy.metadata)).collect();
        for meta in &metas {
            namespace_ids.entry(meta.namespace.clone()).or_insert_with(|| {
                labels.push(Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), meta.namespace.clone())]));
                labels.len() as NsId - 1
            });
        }
        let mut table = NamespaceTable::new(&labels);
        let mut engine = Self { buckets: vec![Bucket::default(); labels.len()], namespace_ids, ..Self::default() };
        let mut errors = Vec::new();
        for (index, (policy, meta)) in policies.iter().zip(metas).enumerate() {
            let namespace = engine.namespace_ids.get(&meta.namespace).copied().unwrap_or_default();
            match CompiledPolicy::compile(policy, meta.clone(), namespace, &mut table, &mut engine.interner) {
                Ok(compiled) => {
                    let id = engine.policies.len() as u32;
                    let bucket = &mut engine.buckets[namespace as usize];
                    if compiled.ingress.is_some() {
                        bucket.ingress.add(id, &compiled.pod_selector);
                    }
                    if compiled.egress.is_some() {
                        bucket.egress.add(id, &compiled.pod_selector);
                    }
                    engine.policies.push(compiled);
                }
                Err((field, problem)) => {
                    errors.push(PolicyError { index, namespace: meta.namespace, name: meta.name, field, problem });
                }
            }
        }
        for (id, selector) in engine.interner.selectors.iter().enumerate() {
            engine.peer_selectors.add(id as u32, selector);
        }
        engine.namespace_labels = labels;
        (engine, errors)
    }

    /// Adds ClusterNetworkPolicies (replacing any earlier ones), with the
    /// nodes their nodes peers select. Policies that fail the CRD's
    /// validation are left out and reported; the rest are judged with.
    /// Their namespace selectors see the namespaces given to [`Self::compile`].
    #[must_use]
    pub fn with_cluster_policies(mut self, policies: &[ClusterNetworkPolicy], nodes: &[Node]) -> (Self, Vec<CnpError>) {
        let nodes =
            nodes.iter().map(|node| NodeAddresses { labels: node.labels.clone(), ips: node.ips.clone() }).collect();
        let (cluster, errors) = cnp::compile_all(policies, &self.namespace_labels, nodes);
        self.cluster = cluster;
        // The pod index lists the policies selecting each pod: redo it for these.
        if !self.pods.pods.is_empty() {
            let pods = std::mem::take(&mut self.pods.pods);
            self.index_pods(pods);
        }
        (self, errors)
    }

    /// How many ClusterNetworkPolicies compiled.
    pub fn cluster_len(&self) -> usize {
        self.cluster.len()
    }

    /// Indexes `pods` (replacing any earlier index), so that verdicts and
    /// [`isolating`](Self::isolating) for them read a small precomputed record
    /// instead of the pods' names and labels. Call it with the inventory's
    /// pods each time the engine is compiled; the engine keeps the `Arc`s.
    ///
    /// A pod is recognized by address: pass the very values indexed (as
    /// `&*arc`). Any other pod, a copy included, is judged from its fields,
    /// with the same verdict.
    pub fn index_pods(&mut self, pods: impl IntoIterator<Item = Arc<Pod>>) {
        let mut index = PodIndex::default();
        for pod in pods {
            let address = Arc::as_ptr(&pod) as usize;
            if index.entries.contains_key(&address) {
                continue;
            }
            let entry = self.index_entry(&pod, &mut index);
            index.entries.insert(address, entry);
            index.pods.push(pod);
        }
        self.pods = index;
    }

    /// How many pods are indexed.
    pub fn indexed_pods(&self) -> usize {
        self.pods.pods.len()
    }

    fn index_entry(&self, pod: &Pod, index: &mut PodIndex) -> PodEntry {
        let start = index.ids.len() as u32;
        let ports_start = index.ports.len() as u32;
        let placement = match self.namespace_ids.get(pod.namespace.as_str()) {
            _ if pod.host_network => Placement::HostNetwork,
            Some(id) => Placement::Known(*id),
            None => Placement::Unknown,
        };
        let (mut ingress, mut egress) = (0, 0);
        if let Placement::Known(namespace) = placement {
            let bucket = &self.buckets[namespace as usize];
            ingress = self.push_selecting(&bucket.ingress, &pod.labels, &mut index.ids);
            egress = self.push_selecting(&bucket.egress, &pod.labels, &mut index.ids);
        }
        // A pod of an unknown namespace is still a peer that selectors may match.
        let matched_start = index.ids.len();
        self.peer_selectors.candidates(&pod.labels, |id| {
            if self.interner.selectors[id as usize].matches(&pod.labels) {
                index.ids.push(id);
            }
        });
        index.ids[matched_start..].sort_unstable();
        let matched = (index.ids.len() - matched_start) as u32;
        for declared in &pod.container_ports {
            let Some(name) = declared.name.as_deref() else { continue };
            if let Some(name) = self.interner.port_names.get(name) {
                index.ports.push(NamedPort { port: declared.port, protocol: declared.protocol, name: *name });
            }
        }
        let ports = index.ports.len() as u32 - ports_start;
        let cluster_start = index.cluster.len() as u32;
        let mut cluster = [0; 4];
        let namespace = match placement {
            Placement::HostNetwork => None,
            Placement::Known(id) => Some(NsKey::Known(id)),
            Placement::Unknown => Some(NsKey::Unknown(&pod.namespace)),
        };
        // Host-network pods are no subject of any ClusterNetworkPolicy.
        if let Some(namespace) = namespace.filter(|_| self.cluster.len() > 0) {
            let subject = PodKey { labels: &pod.labels, namespace };
            for tier in [Tier::Admin, Tier::Baseline] {
                for direction in [Direction::Ingress, Direction::Egress] {
                    cluster[cluster_slot(tier, direction)] =
                        self.cluster.push_selecting(tier, direction.of_cluster(), subject, &mut index.cluster);
                }
            }
        }
        PodEntry { placement, start, ingress, egress, matched, ports_start, ports, cluster_start, cluster }
    }

    /// Appends the policies of `selection` selecting a pod with `labels`, in
    /// compile order; returns how many.
    fn push_selecting(&self, selection: &Selection, labels: &Labels, ids: &mut Vec<u32>) -> u32 {
        let start = ids.len();
        selection.candidates(labels, |id| {
            if self.policies[id as usize].pod_selector.matches(labels) {
                ids.push(id);
            }
        });
        ids[start..].sort_unstable();
        (ids.len() - start) as u32
    }

    /// How many policies compiled.
    pub fn len(&self) -> usize {
        self.policies.len()
    }

    /// Whether no policy compiled.
    pub fn is_empty(&self) -> bool {
        self.policies.is_empty()
    }

    /// Judges a flow from `source` to `destination` on `port`/`protocol`: the
    /// source's egress side and the destination's ingress side must both allow it.
    pub fn verdict(&self, source: Endpoint<'_>, destination: Endpoint<'_>, port: u16, protocol: Protocol) -> Verdict {
        self.verdict_named(source, destination, port, protocol, None)
    }

    /// [`Self::verdict`], with the DNS names the source resolved for the
    /// destination (what ClusterNetworkPolicy `domainNames` peers match), when
    /// known. Each side is decided in tier order: Admin ClusterNetworkPolicies
    /// by priority (Accept or Deny decide, Pass hands over), then
    /// NetworkPolicies when one isolates the side, else Baseline
    /// ClusterNetworkPolicies, else allowed.
    pub fn verdict_named<'a>(
        &'a self,
        source: Endpoint<'a>,
        destination: Endpoint<'a>,
        port: u16,
        protocol: Protocol,
        names: Option<&'a [Arc<str>]>,
    ) -> Verdict {
        let source = self.resolve(source);
        let destination = self.resolve(destination);
        let destination_ports = destination.container_ports(&self.pods);
        if self.cluster.len() > 0 {
            let declared = destination.pod.map_or(&[][..], |end| end.pod.container_ports.as_slice());
            let peer = |other: &Resolved<'a>| {
                other.pod.map(|end| PodKey { labels: &end.pod.labels, namespace: end.namespace })
            };
            let egress = self.tiered_side(
                &source,
                Direction::Egress,
                Flow { other: destination.as_other(&self.pods), port, protocol, destination_ports },
                &SideFlow {
                    peer: peer(&destination),
                    addresses: destination.addresses,
                    names,
                    port,
                    protocol,
                    destination_ports: declared,
                },
            );
            let ingress = self.tiered_side(
                &destination,
                Direction::Ingress,
                Flow { other: source.as_other(&self.pods), port, protocol, destination_ports },
                &SideFlow {
                    peer: peer(&source),
                    addresses: source.addresses,
                    names: None,
                    port,
                    protocol,
                    destination_ports: declared,
                },
            );
            return Verdict { allowed: egress.allowed && ingress.allowed, egress, ingress };
        }
        let egress = self.side(
            &source,
            Direction::Egress,
            Flow { other: destination.as_other(&self.pods), port, protocol, destination_ports },
        );
        let ingress = self.side(
            &destination,
            Direction::Ingress,
            Flow { other: source.as_other(&self.pods), port, protocol, destination_ports },
        );
        Verdict { allowed: egress.allowed && ingress.allowed, egress, ingress }
    }

    /// The policies that isolate `pod`, for each direction: what a denied
    /// verdict names as its deciding policies, and what tells an unprotected
    /// pod. A host-network pod, or one in a namespace without policies, has none.
    pub fn isolating(&self, pod: &Pod) -> Isolation {
        if let Some(entry) = self.pods.get(pod) {
            let metas = |direction| {
                self.pods.policies(entry, direction).iter().map(|id| self.policies[*id as usize].meta.clone()).collect()
            };
            return Isolation { ingress: metas(Direction::Ingress), egress: metas(Direction::Egress) };
        }
        let namespace = match self.namespace_ids.get(pod.namespace.as_str()) {
            Some(id) if !pod.host_network => *id,
            _ => return Isolation::default(),
        };
        let bucket = &self.buckets[namespace as usize];
        let selecting = |selection: &Selection| {
            let mut ids = Vec::new();
            selection.candidates(&pod.labels, |id| {
                if self.policies[id as usize].pod_selector.matches(&pod.labels) {
                    ids.push(id);
                }
            });
            ids.sort_unstable();
            ids.iter().map(|id| self.policies[*id as usize].meta.clone()).collect::<Vec<_>>()
        };
        Isolation { ingress: selecting(&bucket.ingress), egress: selecting(&bucket.egress) }
    }

    /// The ClusterNetworkPolicies that guard `pod` (see [`Guardrails`]):
    /// with the NetworkPolicies [`isolating`](Self::isolating) it, what
    /// tells an unprotected pod. A host-network pod is no subject: none.
    pub fn guarding(&self, pod: &Pod) -> Guardrails {
        if pod.host_network || self.cluster.len() == 0 {
            return Guardrails::default();
        }
        let namespace = match self.namespace_ids.get(pod.namespace.as_str()) {
            Some(id) => NsKey::Known(*id),
            None => NsKey::Unknown(&pod.namespace),
        };
        let subject = PodKey { labels: &pod.labels, namespace };
        Guardrails {
            ingress: self.cluster.guarding(cnp::Direction::Ingress, subject),
            egress: self.cluster.guarding(cnp::Direction::Egress, subject),
        }
    }

    fn resolve<'a>(&'a self, endpoint: Endpoint<'a>) -> Resolved<'a> {
        let (pod, ip) = match endpoint {
            Endpoint::Pod { pod, ip } => (pod, ip),
            Endpoint::External(ip) => return Resolved { pod: None, addresses: Addresses::One(ip) },
        };
        let addresses = ip.map_or(Addresses::Any(&pod.ips), Addresses::One);
        let selectable = match self.pods.get(pod) {
            Some(entry) => match entry.placement {
                Placement::HostNetwork => None,
                Placement::Known(id) => Some(Selectable { pod, namespace: NsKey::Known(id), entry: Some(entry) }),
                Placement::Unknown => {
                    Some(Selectable { pod, namespace: NsKey::Unknown(&pod.namespace), entry: Some(entry) })
                }
            },
            // Policies do not apply to host-network pods: they are seen as
            // their node's address, as most network plugins treat them.
            None if pod.host_network => None,
            None => {
                let namespace = match self.namespace_ids.get(pod.namespace.as_str()) {
                    Some(id) => NsKey::Known(*id),
                    None => NsKey::Unknown(&pod.namespace),
                };
                Some(Selectable { pod, namespace, entry: None })
            }
        };
        Resolved { pod: selectable, addresses }
    }

    /// The rules of policy `id` for `direction`.
    fn rules(&self, id: u32, direction: Direction) -> &[Rule] {
        let policy = &self.policies[id as usize];
        match direction {
            Direction::Ingress => policy.ingress.as_deref(),
            Direction::Egress => policy.egress.as_deref(),
        }
        .unwrap_or_default()
    }

    /// One side decided through the tiers: Admin, NetworkPolicy, Baseline, default allow.
    fn tiered_side(
        &self,
        end: &Resolved<'_>,
        direction: Direction,
        flow: Flow<'_>,
        side_flow: &SideFlow<'_>,
    ) -> SideVerdict {
        let Some(selectable) = end.pod else { return SideVerdict::open() };
        let subject = PodKey { labels: &selectable.pod.labels, namespace: selectable.namespace };
        let direction_of = direction.of_cluster();
        let selecting = |tier| selectable.entry.map(|entry| self.pods.cluster(entry, tier, direction));
        let (mut steps, mut unsure) = (Vec::new(), None);
        let decided = |action| SideVerdict { allowed: action == Action::Accept, ..SideVerdict::default() };
        let mut verdict = match self.cluster.evaluate(
            Tier::Admin,
            direction_of,
            subject,
            selecting(Tier::Admin),
            side_flow,
            &mut steps,
            &mut unsure,
        ) {
            TierEnd::Decided(action) => decided(action),
            TierEnd::Passed | TierEnd::NoMatch => {
                let network = self.side(end, direction, flow);
                if network.isolated {
                    network
                } else {
                    match self.cluster.evaluate(
                        Tier::Baseline,
                        direction_of,
                        subject,
                        selecting(Tier::Baseline),
                        side_flow,
                        &mut steps,
                        &mut unsure,
                    ) {
                        TierEnd::Decided(action) => decided(action),
                        TierEnd::Passed | TierEnd::NoMatch => network,
                    }
                }
            }
        };
        verdict.cluster = steps;
        // A domainNames rule only accepts: it can change only a denial.
        if !verdict.allowed {
            verdict.undecidable = unsure;
        }
        verdict
    }

    fn side(&self, end: &Resolved<'_>, direction: Direction, flow: Flow<'_>) -> SideVerdict {
        let Some(Selectable { pod, namespace: NsKey::Known(namespace), entry }) = end.pod else {
            return SideVerdict::open();
        };
        if let Some(entry) = entry {
            // The index lists the selecting policies in compile order already.
            let selecting = self.pods.policies(entry, direction);
            let policies: Vec<_> = selecting
                .iter()
                .filter(|id| self.rules(**id, direction).iter().any(|rule| rule.allows(&flow)))
                .map(|id| self.policies[*id as usize].meta.clone())
                .collect();
            let isolated = !selecting.is_empty();
            return SideVerdict {
                isolated,
                allowed: !isolated || !policies.is_empty(),
                policies,
                ..SideVerdict::default()
            };
        }
        let bucket = &self.buckets[namespace as usize];
        let candidates = match direction {
            Direction::Ingress => &bucket.ingress,
            Direction::Egress => &bucket.egress,
        };
        let mut isolated = false;
        let mut allowing: Vec<u32> = Vec::new();
        candidates.candidates(&pod.labels, |id| {
            let policy = &self.policies[id as usize];
            if !policy.pod_selector.matches(&pod.labels) {
                return;
            }
            isolated = true;
            if self.rules(id, direction).iter().any(|rule| rule.allows(&flow)) {
                allowing.push(id);
            }
        });
        // Candidates come by label; explanations list policies in compile order.
        allowing.sort_unstable();
        let policies: Vec<_> = allowing.iter().map(|id| self.policies[*id as usize].meta.clone()).collect();
        SideVerdict { isolated, allowed: !isolated || !policies.is_empty(), policies, ..SideVerdict::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn shareable<T: Send + Sync>() {}
    const _: () = shareable::<Arc<PolicyEngine>>();

    fn deny_all(namespace: &str) -> NetworkPolicy {
        serde_json::from_value(serde_json::json!({
            "metadata": {"namespace": namespace, "name": "deny"},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
        }))
        .expect("valid policy")
    }

    #[test]
    fn pods_are_indexed_by_identity_and_copies_fall_back() {
        use crate::testing::pod;
        let (mut engine, errors) = PolicyEngine::compile(&[deny_all("shop")], &[]);
        assert!(errors.is_empty());
        let web = Arc::new(pod("web").ns("shop").build());
        let host = Arc::new(pod("agent").ns("shop").host_network().build());
        engine.index_pods([Arc::clone(&web), Arc::clone(&web), Arc::clone(&host)]);
        assert_eq!(engine.indexed_pods(), 2, "the same pod twice is indexed once");
        assert!(engine.pods.get(&web).is_some());
        let copy = Pod::clone(&web);
        assert!(engine.pods.get(&copy).is_none(), "a copy is another value: judged from its fields");
        assert_eq!(engine.isolating(&web), engine.isolating(&copy));
        assert_eq!(engine.isolating(&web).ingress.len(), 1);
        assert_eq!(engine.isolating(&host), Isolation::default());
        let verdict = |source: &Pod| engine.verdict(Endpoint::pod(source), Endpoint::pod(&host), 80, Protocol::TCP);
        assert_eq!(verdict(&web), verdict(&copy));
        assert!(!verdict(&web).allowed);
    }
}
