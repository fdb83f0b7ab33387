//! An immutable view of the inventory at one moment, and how a flow end is
//! resolved against it.
//!
//! In: the indexes the store built (pod IP history, pod uids, container ids,
//! ClusterIPs, node addresses) and the object lists. Out: an [`Endpoint`] per
//! flow end, by lookups only (no scans), and the lists the policy engine reads.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    iter::Chain,
    net::IpAddr,
    option, slice,
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{
    cgroup,
    endpoint::Endpoint,
    manifests::Declared,
    model::{Namespace, Node, Pod, Service},
    resource::Resource,
    revision::WorkloadRevisions,
    services::{ServiceBackends, ServiceIndex},
};
use crate::{
    FastMap,
    intent::{load::LoadedIntents, resource::FlowIntent},
    node::AddressSet,
    policy::cnp::api::ClusterNetworkPolicy,
};

/// One pod's hold on one IP, from when it was seen with it until it was seen
/// without it (deleted, finished, or given another IP).
#[derive(Clone, Debug)]
pub(crate) struct Holding {
    /// When the inventory first saw the pod with this IP (the Unix epoch for
    /// pods present at the first sync: nothing earlier is known).
    pub since: SystemTime,
    /// When it was seen without it; `None` while it holds it.
    pub until: Option<SystemTime>,
    /// The pod as it is (or was, at the end).
    pub endpoint: Endpoint,
}

/// The holds on one IP, oldest first. Nearly every IP has one: it sits in
/// the map's own slot, so resolving a flow end does not follow a pointer to it.
#[derive(Clone, Debug, Default)]
pub(crate) struct Holdings {
    first: Option<Holding>,
    /// The later ones; empty while `first` is `None`.
    rest: Vec<Holding>,
}

impl Holdings {
    /// Every hold, oldest first.
    pub(crate) fn iter(&self) -> impl DoubleEndedIterator<Item = &Holding> {
        self.first.iter().chain(&self.rest)
    }

    /// Every hold, oldest first.
    pub(crate) fn iter_mut(&mut self) -> Chain<option::IterMut<'_, Holding>, slice::IterMut<'_, Holding>> {
        self.first.iter_mut().chain(&mut self.rest)
    }

    /// Adds the newest hold.
    pub(crate) fn push(&mut self, holding: Holding) {
        match self.first {
            None => self.first = Some(holding),
            Some(_) => self.rest.push(holding),
        }
    }

    /// Keeps the holds `keep` accepts, in order.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&Holding) -> bool) {
        self.first = self.first.take().filter(|holding| keep(holding));
        self.rest.retain(keep);
        if self.first.is_none() && !self.rest.is_empty() {
            self.first = Some(self.rest.remove(0));
        }
    }

    /// Whether no hold is left.
    pub(crate) fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

/// What a cgroup path says of the local end of a flow.
#[derive(Clone, Debug)]
pub enum CgroupEnd {
    /// A pod's cgroup, of a pod in the inventory.
    Pod(Endpoint),
    /// A pod's cgroup, of a pod the inventory does not (yet) list: the pod
    /// holding the flow's IP, else this.
    UnlistedPod(Endpoint),
    /// Not a pod's cgroup: the pod holding the flow's IP (a host-network
    /// pod's process), else the node itself.
    NotAPod,
}

/// FlowIntents by namespace and name.
pub(crate) type Intents = BTreeMap<(String, String), Arc<Declared<FlowIntent>>>;

/// ClusterNetworkPolicies by name.
pub(crate) type ClusterPolicies = BTreeMap<String, Arc<Declared<ClusterNetworkPolicy>>>;

/// A pod and its prebuilt endpoint.
#[derive(Clone, Debug)]
pub(crate) struct PodRecord {
    pub pod: Arc<Pod>,
    /// The static pod's own uid (`kubernetes.io/config.mirror`), which is what
    /// kubelet names its cgroup after.
    pub mirror_uid: Option<String>,
    pub endpoint: Endpoint,
}

/// The inventory at one moment: cheap to share, never changed once built.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub(crate) generation: u64,
    pub(crate) synced: bool,
    /// The resources listed in full at least once when this was built.
    pub(crate) listed: BTreeSet<Resource>,
    pub(crate) built_at: SystemTime,
    /// How far before a pod was seen with an IP a flow may still be given to it.
    pub(crate) ip_skew: Duration,
    pub(crate) pods: Arc<HashMap<String, PodRecord>>,
    pub(crate) by_ip: Arc<FastMap<IpAddr, Holdings>>,
    pub(crate) by_uid: Arc<FastMap<String, Endpoint>>,
    pub(crate) by_container: Arc<FastMap<String, Endpoint>>,
    pub(crate) namespaces: Arc<BTreeMap<String, Arc<Namespace>>>,
    pub(crate) policies: Arc<BTreeMap<(String, String), Arc<NetworkPolicy>>>,
    pub(crate) services: Arc<BTreeMap<(String, String), Arc<Service>>>,
    pub(crate) services_by_ip: Arc<FastMap<IpAddr, Endpoint>>,
    pub(crate) service_index: Arc<ServiceIndex>,
    pub(crate) nodes: Arc<BTreeMap<String, Arc<Node>>>,
    pub(crate) nodes_by_ip: Arc<FastMap<IpAddr, Endpoint>>,
    /// Per workload (`namespace/Kind/name`), its revisions.
    pub(crate) revisions: Arc<FastMap<Arc<str>, WorkloadRevisions>>,
    /// Rollouts seen since start.
    pub(crate) rollouts: u64,
    pub(crate) intents: Arc<Intents>,
    pub(crate) cluster_policies: Arc<ClusterPolicies>,
    pub(crate) host: Endpoint,
    pub(crate) world: Endpoint,
    pub(crate) unknown: Endpoint,
}

impl Snapshot {
    /// Counts up by one with every published change.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether every required resource had its first full sync when this was
    /// built; before that every end resolves to `unknown`.
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Whether `resource` had been listed in full when this was built (a
    /// custom resource whose CRD is absent counts as listed, and empty).
    pub fn listed(&self, resource: Resource) -> bool {
        self.listed.contains(&resource)
    }

    /// When this snapshot was built.
    pub fn built_at(&self) -> SystemTime {
        self.built_at
    }

    /// Resolves the local end of a flow: by cgroup (which also finds
    /// host-network pods), else by IP, else the node itself (`host`).
    pub fn resolve_local(&self, cgroup_path: Option<&str>, ip: IpAddr, at: SystemTime) -> Endpoint {
        self.resolve_local_from(&self.resolve_cgroup(cgroup_path), ip, at)
    }

    /// What a local end's cgroup path alone says in this snapshot: the same
    /// for every flow of that cgroup, so callers may keep it per cgroup (and
    /// snapshot) and finish each flow with [`Snapshot::resolve_local_from`].
    pub fn resolve_cgroup(&self, cgroup_path: Option<&str>) -> CgroupEnd {
        let Some(cgroup) = cgroup_path.and_then(cgroup::parse) else { return CgroupEnd::NotAPod };
        let mut buf = [0; 64];
        let uid = cgroup.pod_uid.normalized(&mut buf);
        if let Some(endpoint) = self.by_uid.get(uid) {
            return CgroupEnd::Pod(endpoint.clone());
        }
        if let Some(endpoint) = cgroup.container_id.and_then(|id| self.by_container.get(id)) {
            return CgroupEnd::Pod(endpoint.clone());
        }
        CgroupEnd::UnlistedPod(Endpoint::unlisted_pod(uid.to_owned()))
    }

    /// The local end of a flow from what its cgroup said, then its IP at `at`.
    pub fn resolve_local_from(&self, cgroup: &CgroupEnd, ip: IpAddr, at: SystemTime) -> Endpoint {
        if !self.synced {
            return self.unknown.clone();
        }
        match cgroup {
            CgroupEnd::Pod(endpoint) => endpoint.clone(),
            CgroupEnd::UnlistedPod(unlisted) => self.pod_at(ip, at).unwrap_or(unlisted).clone(),
            CgroupEnd::NotAPod => self.pod_at(ip, at).unwrap_or(&self.host).clone(),
        }
    }

    /// Resolves the remote end of a flow: the pod that held the IP at `at`,
    /// else a Service by ClusterIP, else a node by address, else `world`.
    pub fn resolve_remote(&self, ip: IpAddr, at: SystemTime) -> Endpoint {
        if !self.synced {
            return self.unknown.clone();
        }
        self.pod_at(ip, at)
            .or_else(|| self.services_by_ip.get(&ip))
            .or_else(|| self.nodes_by_ip.get(&ip))
            .unwrap_or(&self.world)
            .clone()
    }

    /// [`Snapshot::resolve_remote`] seen from this node, which holds
    /// `node_addresses` (its interfaces'): an address of this node (one of
    /// those, or of its own Node object) is the node itself (`host`), not
    /// `world`. A pod's address or a Service's ClusterIP stays what it is
    /// (kube-proxy's IPVS mode binds ClusterIPs to a node interface).
    pub fn resolve_remote_here(&self, ip: IpAddr, at: SystemTime, node_addresses: &AddressSet) -> Endpoint {
        if !self.synced {
            return self.unknown.clone();
        }
        if let Some(endpoint) = self.pod_at(ip, at).or_else(|| self.services_by_ip.get(&ip)) {
            return endpoint.clone();
        }
        if node_addresses.contains(&ip) {
            return self.host.clone();
        }
        match self.nodes_by_ip.get(&ip) {
            Some(node) if node.node.is_some() && node.node == self.host.node => self.host.clone(),
            Some(node) => node.clone(),
            None => self.world.clone(),
        }
    }

    /// The Service port a flow to `ip`:`port` over `protocol` (IANA number)
    /// reaches, by ClusterIP or by a node address and NodePort, with its
    /// ready backends; `None` when it reaches no Service.
    pub fn service_backends(&self, ip: IpAddr, port: u16, protocol: u8) -> Option<&Arc<ServiceBackends>> {
        if !self.synced {
            return None;
        }
        self.service_index.port(ip, port, protocol, self.nodes_by_ip.contains_key(&ip))
    }

    /// The pod that held `ip` at `at`. A pod seen with the IP shortly after `at`
    /// (within the skew, as watch events lag the network) counts when no pod held it then.
    pub fn pod_at(&self, ip: IpAddr, at: SystemTime) -> Option<&Endpoint> {
        let holdings = self.by_ip.get(&ip)?;
        // Newest first: of overlapping holds, the latest claim wins.
        let held =
            holdings.iter().rev().find(|holding| holding.since <= at && holding.until.is_none_or(|until| at <= until));
        held.or_else(|| holdings.iter().find(|holding| holding.since > at && holding.since <= at + self.ip_skew))
            .map(|holding| &holding.endpoint)
    }

    /// Every pod, in no particular order.
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values().map(|record| record.pod.as_ref())
    }

    /// Every pod, shared: for indexes that keep the pods they describe (the
    /// same values [`pods`](Self::pods) and [`pod`](Self::pod) give).
    pub fn pods_shared(&self) -> impl Iterator<Item = &Arc<Pod>> {
        self.pods.values().map(|record| &record.pod)
    }

    /// A pod by uid.
    pub fn pod(&self, uid: &str) -> Option<&Pod> {
        self.pods.get(uid).map(|record| record.pod.as_ref())
    }

    /// A pod by uid, shared: the very value [`Snapshot::pods_shared`] gives.
    pub fn pod_shared(&self, uid: &str) -> Option<&Arc<Pod>> {
        self.pods.get(uid).map(|record| &record.pod)
    }

    /// Number of pods.
    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Every namespace, by name.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values().map(Arc::as_ref)
    }

    /// A namespace by name.
    pub fn namespace(&self, name: &str) -> Option<&Namespace> {
        self.namespaces.get(name).map(Arc::as_ref)
    }

    /// Every NetworkPolicy, by namespace and name.
    pub fn network_policies(&self) -> impl Iterator<Item = &NetworkPolicy> {
        self.policies.values().map(Arc::as_ref)
    }

    /// Every Service, by namespace and name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values().map(Arc::as_ref)
    }

    /// Every node, by name.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().map(Arc::as_ref)
    }

    /// The revisions of the workload `key` names (`namespace/Kind/name`, see
    /// [`workload_key`](super::revision::workload_key)): the one it runs and
    /// its latest rollout; `None` for a workload with no revision label on
    /// its pods.
    pub fn workload_revisions(&self, key: &str) -> Option<&WorkloadRevisions> {
        self.revisions.get(key)
    }

    /// Workload rollouts the inventory has seen since start.
    pub fn rollouts_seen(&self) -> u64 {
        self.rollouts
    }

    /// The FlowIntents and ClusterNetworkPolicies of this moment, in
    /// namespace and name order, for the judge to compile: from manifests
    /// with the document each was read from, from the API server without.
    pub fn intents(&self) -> LoadedIntents {
        let mut loaded = LoadedIntents::default();
        for declared in self.intents.values() {
            loaded.intents.push(declared.object.clone());
            loaded.origins.extend(declared.origin.clone());
        }
        for declared in self.cluster_policies.values() {
            loaded.cluster_policies.push(declared.object.clone());
            loaded.cluster_origins.extend(declared.origin.clone());
        }
        loaded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdings_keep_their_order_through_retain() {
        let at = |secs: u64| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let hold = |secs: u64| Holding { since: at(secs), until: None, endpoint: Endpoint::world() };
        let mut holdings = Holdings::default();
        assert!(holdings.is_empty());
        for secs in [1, 2, 3] {
            holdings.push(hold(secs));
        }
        let since = |holdings: &Holdings| holdings.iter().map(|holding| holding.since).collect::<Vec<_>>();
        assert_eq!(since(&holdings), [at(1), at(2), at(3)]);
        assert_eq!(holdings.iter().next_back().map(|holding| holding.since), Some(at(3)));
        holdings.retain(|holding| holding.since != at(1));
        assert_eq!(since(&holdings), [at(2), at(3)], "the oldest left takes the first place");
        holdings.push(hold(4));
        holdings.retain(|holding| holding.since != at(3));
        assert_eq!(since(&holdings), [at(2), at(4)]);
        holdings.retain(|_| false);
        assert!(holdings.is_empty());
        holdings.push(hold(5));
        assert_eq!(since(&holdings), [at(5)]);
    }
}
