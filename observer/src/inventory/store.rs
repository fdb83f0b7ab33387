//! The inventory's mutable state, changed one watch event at a time.
//!
//! In: [`Update`]s from a source (the cluster's watch streams or the manifest
//! loader), in the shape of kube's watcher events: `Init`, `InitApply`,
//! `InitDone` (a full list that replaces what was known), `Apply`, `Delete`.
//! Out: [`Snapshot`]s. Indexes are kept up to date on every event, so building
//! a snapshot only clones pointers; a map shared with a published snapshot is
//! copied once on its next change (copy on write).

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    net::IpAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{
    config::InventoryConfig,
    endpoint::Endpoint,
    manifests::{Declared, Workload},
    model::{EndpointSlice, Namespace, Node, Pod, Service},
    resource::Resource,
    revision::{PodRevision, Revisions},
    services::ServiceIndex,
    snapshot::{ClusterPolicies, Holding, Holdings, Intents, PodRecord, Snapshot},
    workload::Workloads,
};
use crate::{FastMap, intent::resource::FlowIntent, policy::cnp::api::ClusterNetworkPolicy};

/// A pod as a source hands it over.
#[derive(Clone, Debug)]
pub struct PodItem {
    /// The lean pod.
    pub pod: Pod,
    /// `metadata.annotations["kubernetes.io/config.mirror"]` of a static pod's mirror.
    pub mirror_uid: Option<String>,
    /// `spec.containers[].image`, in order: kept only per workload revision
    /// (see [`WorkloadRevisions`](super::revision::WorkloadRevisions)), not per pod.
    pub images: Vec<String>,
}

/// One object from a source, already trimmed to what the observer keeps.
#[derive(Clone, Debug)]
pub enum Item {
    /// A pod.
    Pod(Box<PodItem>),
    /// A namespace.
    Namespace(Namespace),
    /// A NetworkPolicy, without managed fields and annotations.
    NetworkPolicy(Box<NetworkPolicy>),
    /// A Service.
    Service(Service),
    /// A node.
    Node(Node),
    /// A workload controller.
    Workload(Workload),
    /// An EndpointSlice.
    EndpointSlice(EndpointSlice),
    /// A FlowIntent, without managed fields and annotations.
    FlowIntent(Box<Declared<FlowIntent>>),
    /// A ClusterNetworkPolicy, without managed fields and annotations.
    ClusterNetworkPolicy(Box<Declared<ClusterNetworkPolicy>>),
}

impl Item {
    /// The resource it is listed under.
    pub fn resource(&self) -> Resource {
        match self {
            Self::Pod(_) => Resource::Pods,
            Self::Namespace(_) => Resource::Namespaces,
            Self::NetworkPolicy(_) => Resource::NetworkPolicies,
            Self::Service(_) => Resource::Services,
            Self::Node(_) => Resource::Nodes,
            Self::Workload(workload) => Resource::of_workload_kind(&workload.kind),
            Self::EndpointSlice(_) => Resource::EndpointSlices,
            Self::FlowIntent(_) => Resource::FlowIntents,
            Self::ClusterNetworkPolicy(_) => Resource::ClusterNetworkPolicies,
        }
    }

    /// What identifies it within its resource, as [`Update::InitKeep`] names it.
    pub fn key(&self) -> String {
        match self {
            Self::Pod(pod) => pod.pod.uid.clone(),
            Self::Namespace(namespace) => namespace.name.clone(),
            Self::NetworkPolicy(policy) => {
                let (namespace, name) = policy_key(policy);
                format!("{namespace}/{name}")
            }
            Self::Service(service) => format!("{}/{}", service.namespace, service.name),
            Self::Node(node) => node.name.clone(),
            Self::Workload(workload) => workload_name_key(workload),
            Self::EndpointSlice(slice) => format!("{}/{}", slice.namespace, slice.name),
            Self::FlowIntent(intent) => {
                let (namespace, name) = intent_key(&intent.object);
                format!("{namespace}/{name}")
            }
            Self::ClusterNetworkPolicy(policy) => cluster_policy_key(&policy.object),
        }
    }
}

/// The key of a workload controller in [`Item::key`]'s form.
fn workload_name_key(workload: &Workload) -> String {
    format!("{}/{}/{}", workload.kind, workload.namespace, workload.name)
}

/// A change from a source.
#[derive(Clone, Debug)]
pub enum Update {
    /// A full list of the resource starts; what it does not contain is gone at `InitDone`.
    Init(Resource),
    /// An object of the full list.
    InitApply(Item),
    /// An object of the full list that the source could not read again (a
    /// manifest file being rewritten or failing to parse): the one held,
    /// named by [`Item::key`], stays as it is.
    InitKeep(Resource, String),
    /// The full list is complete.
    InitDone(Resource),
    /// An object was added or changed.
    Apply(Item),
    /// An object was deleted.
    Delete(Item),
}

fn policy_key(policy: &NetworkPolicy) -> (String, String) {
    (
        policy.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        policy.metadata.name.clone().unwrap_or_default(),
    )
}

fn intent_key(intent: &FlowIntent) -> (String, String) {
    (
        intent.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        intent.metadata.name.clone().unwrap_or_default(),
    )
}

fn cluster_policy_key(policy: &ClusterNetworkPolicy) -> String {
    policy.metadata.name.clone().unwrap_or_default()
}

/// Whether the pod holds its IPs: host-network pods share the node's, and
/// finished pods keep `status.podIP` after the network gave it back.
fn holds_ips(pod: &Pod) -> bool {
    !pod.host_network && !matches!(pod.phase.as_deref(), Some("Succeeded" | "Failed"))
}

/// A deleted pod's cgroup and container keys, kept for late flows until `at + retention`.
#[derive(Debug)]
struct Tombstone {
    at: SystemTime,
    keys: Vec<String>,
    containers: Vec<String>,
    endpoint: Endpoint,
}

/// The inventory state a single task owns.
#[derive(Debug)]
pub struct Store {
    label_keys: Vec<String>,
    retention: Duration,
    ip_skew: Duration,
    host: Endpoint,
    world: Endpoint,
    unknown: Endpoint,
    generation: u64,
    pods: Arc<HashMap<String, PodRecord>>,
    by_ip: Arc<FastMap<IpAddr, Holdings>>,
    by_uid: Arc<FastMap<String, Endpoint>>,
    by_container: Arc<FastMap<String, Endpoint>>,
    tombstones: VecDeque<Tombstone>,
    namespaces: Arc<BTreeMap<String, Arc<Namespace>>>,
    policies: Arc<BTreeMap<(String, String), Arc<NetworkPolicy>>>,
    services: Arc<BTreeMap<(String, String), Arc<Service>>>,
    services_by_ip: Arc<FastMap<IpAddr, Endpoint>>,
    slices: Arc<BTreeMap<(String, String), Arc<EndpointSlice>>>,
    service_index: Arc<ServiceIndex>,
    nodes: Arc<BTreeMap<String, Arc<Node>>>,
    nodes_by_ip: Arc<FastMap<IpAddr, Endpoint>>,
    intents: Arc<Intents>,
    cluster_policies: Arc<ClusterPolicies>,
    workloads: Workloads,
    /// Which revision each workload runs, and its latest rollout.
    revisions: Revisions,
    relists: HashMap<Resource, Vec<Item>>,
    /// Per relist in progress, the keys of objects to keep as they are.
    kept: HashMap<Resource, HashSet<String>>,
    listed: HashSet<Resource>,
    services_dirty: bool,
    nodes_dirty: bool,
    /// `(namespace, kind, name)` of controllers changed since the last
    /// snapshot: the pods they own need their workload looked up again.
    owners_changed: HashSet<(String, String, String)>,
    /// A whole workload resource was relisted: every pod needs it.
    workloads_relisted: bool,
    changed: bool,
}

impl Store {
    /// An empty store.
    pub fn new(config: &InventoryConfig) -> Self {
        Self {
            label_keys: config.label_keys.clone(),
            retention: config.ip_history,
            ip_skew: config.ip_skew,
            host: Endpoint::host(config.node_name.as_deref()),
            world: Endpoint::world(),
            unknown: Endpoint::unknown(),
            generation: 0,
            pods: Arc::default(),
            by_ip: Arc::default(),
            by_uid: Arc::default(),
            by_container: Arc::default(),
            tombstones: VecDeque::new(),
            namespaces: Arc::default(),
            policies: Arc::default(),
            services: Arc::default(),
            services_by_ip: Arc::default(),
            slices: Arc::default(),
            service_index: Arc::default(),
            nodes: Arc::default(),
            nodes_by_ip: Arc::default(),
            intents: Arc::default(),
            cluster_policies: Arc::default(),
            workloads: Workloads::default(),
            revisions: Revisions::default(),
            relists: HashMap::new(),
            kept: HashMap::new(),
            listed: HashSet::new(),
            services_dirty: false,
            nodes_dirty: false,
            owners_changed: HashSet::new(),
            workloads_relisted: false,
            changed: true,
        }
    }

    /// Whether every required resource has been listed in full once.
    pub fn synced(&self) -> bool {
        Resource::REQUIRED.iter().all(|resource| self.listed.contains(resource))
    }

    /// Whether `resource` has been listed in full once.
    pub fn listed(&self, resource: Resource) -> bool {
        self.listed.contains(&resource)
    }

    /// Whether anything changed since the last snapshot.
    pub fn changed(&self) -> bool {
        self.changed
    }

    /// How many objects of `resource` are held.
    pub fn count(&self, resource: Resource) -> usize {
        match resource {
            Resource::Pods => self.pods.len(),
            Resource::Namespaces => self.namespaces.len(),
            Resource::NetworkPolicies => self.policies.len(),
            Resource::Services => self.services.len(),
            Resource::Nodes => self.nodes.len(),
            Resource::ReplicaSets | Resource::Jobs | Resource::Controllers => self.workloads.count_of(resource),
            Resource::EndpointSlices => self.slices.len(),
            Resource::FlowIntents => self.intents.len(),
            Resource::ClusterNetworkPolicies => self.cluster_policies.len(),
        }
    }

    /// Applies one update seen at `now`.
    pub fn apply(&mut self, update: Update, now: SystemTime) {
        match update {
            Update::Init(resource) => {
                self.relists.insert(resource, Vec::new());
                self.kept.remove(&resource);
            }
            Update::InitKeep(resource, key) => {
                self.kept.entry(resource).or_default().insert(key);
            }
            Update::InitApply(item) => match self.relists.get_mut(&item.resource()) {
                Some(buffer) => buffer.push(item),
                // An InitApply without Init (never sent by kube's watcher): apply it directly.
                None => self.upsert(item, now),
            },
            Update::InitDone(resource) => {
                let items = self.relists.remove(&resource).unwrap_or_default();
                let kept = self.kept.remove(&resource).unwrap_or_default();
                self.replace(resource, items, &kept, now);
                self.listed.insert(resource);
                self.changed = true;
            }
            Update::Apply(item) => self.upsert(item, now),
            Update::Delete(item) => self.delete(item, now),
        }
    }

    /// Replaces everything of `resource` by `items` (a full list), except the
    /// objects whose keys are `kept`.
    fn replace(&mut self, resource: Resource, items: Vec<Item>, kept: &HashSet<String>, now: SystemTime) {
        let mut gone: HashSet<String> = match resource {
            Resource::Pods => self.pods.keys().filter(|key| !kept.contains(*key)).cloned().collect(),
            Resource::Namespaces => self.namespaces.keys().filter(|key| !kept.contains(*key)).cloned().collect(),
            Resource::Nodes => self.nodes.keys().filter(|key| !kept.contains(*key)).cloned().collect(),
            _ => HashSet::new(),
        };
        match resource {
            Resource::Pods => {
                for item in &items {
                    if let Item::Pod(pod) = item {
                        gone.remove(&pod.pod.uid);
                    }
                }
                for uid in gone {
                    self.delete_pod(&uid, now);
                }
            }
            Resource::Namespaces => {
                for item in &items {
                    if let Item::Namespace(namespace) = item {
                        gone.remove(&namespace.name);
                    }
                }
                Arc::make_mut(&mut self.namespaces).retain(|name, _| !gone.contains(name));
            }
            Resource::Nodes => {
                for item in &items {
                    if let Item::Node(node) = item {
                        gone.remove(&node.name);
                    }
                }
                Arc::make_mut(&mut self.nodes).retain(|name, _| !gone.contains(name));
                self.nodes_dirty = true;
            }
            // Keyed by (namespace, name): small enough to rebuild from the list.
            Resource::NetworkPolicies => Arc::make_mut(&mut self.policies)
                .retain(|(namespace, name), _| !kept.is_empty() && kept.contains(&format!("{namespace}/{name}"))),
            Resource::Services => {
                Arc::make_mut(&mut self.services)
                    .retain(|(namespace, name), _| !kept.is_empty() && kept.contains(&format!("{namespace}/{name}")));
                self.services_dirty = true;
            }
            Resource::EndpointSlices => {
                Arc::make_mut(&mut self.slices)
                    .retain(|(namespace, name), _| !kept.is_empty() && kept.contains(&format!("{namespace}/{name}")));
                self.services_dirty = true;
            }
            Resource::ReplicaSets | Resource::Jobs | Resource::Controllers => {
                self.workloads.clear_of(resource, |workload| kept.contains(&workload_name_key(workload)));
                self.workloads_relisted = true;
            }
            Resource::FlowIntents => Arc::make_mut(&mut self.intents)
                .retain(|(namespace, name), _| kept.contains(&format!("{namespace}/{name}"))),
            Resource::ClusterNetworkPolicies => {
                Arc::make_mut(&mut self.cluster_policies).retain(|name, _| kept.contains(name));
            }
        }
        let more = items.len().saturating_sub(self.pods.len());
        if resource == Resource::Pods && more > 0 {
            // A first list (of a large cluster): the pod maps grow once, not
            // at every doubling, each time moving every entry.
            Arc::make_mut(&mut self.pods).reserve(more);
            Arc::make_mut(&mut self.by_uid).reserve(more);
            Arc::make_mut(&mut self.by_ip).reserve(more);
        }
        for item in items {
            self.upsert(item, now);
        }
    }

    fn upsert(&mut self, item: Item, now: SystemTime) {
        self.changed = true;
        match item {
            Item::Pod(pod) => {
                let PodItem { pod, mirror_uid, images } = *pod;
                self.upsert_pod(Arc::new(pod), mirror_uid, Some(&images), now);
            }
            Item::Namespace(namespace) => {
                Arc::make_mut(&mut self.namespaces).insert(namespace.name.clone(), Arc::new(namespace));
            }
            Item::NetworkPolicy(policy) => {
                Arc::make_mut(&mut self.policies).insert(policy_key(&policy), Arc::from(policy));
            }
            Item::Service(service) => {
                let key = (service.namespace.clone(), service.name.clone());
                Arc::make_mut(&mut self.services).insert(key, Arc::new(service));
                self.services_dirty = true;
            }
            Item::Node(node) => {
                Arc::make_mut(&mut self.nodes).insert(node.name.clone(), Arc::new(node));
                self.nodes_dirty = true;
            }
            Item::Workload(workload) => {
                self.owners_changed.insert(workload_key(&workload));
                self.workloads.insert(workload);
            }
            Item::EndpointSlice(slice) => {
                let key = (slice.namespace.clone(), slice.name.clone());
                Arc::make_mut(&mut self.slices).insert(key, Arc::new(slice));
                self.services_dirty = true;
            }
            Item::FlowIntent(intent) => {
                Arc::make_mut(&mut self.intents).insert(intent_key(&intent.object), Arc::from(intent));
            }
            Item::ClusterNetworkPolicy(policy) => {
                Arc::make_mut(&mut self.cluster_policies).insert(cluster_policy_key(&policy.object), Arc::from(policy));
            }
        }
    }

    fn delete(&mut self, item: Item, now: SystemTime) {
        self.changed = true;
        match item {
            Item::Pod(pod) => self.delete_pod(&pod.pod.uid, now),
            Item::Namespace(namespace) => {
                Arc::make_mut(&mut self.namespaces).remove(&namespace.name);
            }
            Item::NetworkPolicy(policy) => {
                Arc::make_mut(&mut self.policies).remove(&policy_key(&policy));
            }
            Item::Service(service) => {
                Arc::make_mut(&mut self.services).remove(&(service.namespace, service.name));
                self.services_dirty = true;
            }
            Item::Node(node) => {
                Arc::make_mut(&mut self.nodes).remove(&node.name);
                self.nodes_dirty = true;
            }
            Item::Workload(workload) => {
                self.owners_changed.insert(workload_key(&workload));
                self.workloads.remove(&workload);
            }
            Item::EndpointSlice(slice) => {
                Arc::make_mut(&mut self.slices).remove(&(slice.namespace, slice.name));
                self.services_dirty = true;
            }
            Item::FlowIntent(intent) => {
                Arc::make_mut(&mut self.intents).remove(&intent_key(&intent.object));
            }
            Item::ClusterNetworkPolicy(policy) => {
                Arc::make_mut(&mut self.cluster_policies).remove(&cluster_policy_key(&policy.object));
            }
        }
    }

    /// Adds or replaces a pod; `images` are its containers' when the pod
    /// itself came from the source (`None` when only its workload is looked
    /// up again).
    fn upsert_pod(&mut self, pod: Arc<Pod>, mirror_uid: Option<String>, images: Option<&[String]>, now: SystemTime) {
        let endpoint = pod.endpoint(self.workloads.top_of(&pod), &self.label_keys);
        let old = self.pods.get(&pod.uid).cloned();
        self.revisions.change(
            old.as_ref().and_then(revision_of).as_ref(),
            PodRevision::of(&pod.namespace, &pod.labels, endpoint.workload.as_ref()).as_ref(),
            images,
            old.is_some(),
            self.listed.contains(&Resource::Pods),
            now,
        );
        let old_ips: Vec<IpAddr> =
            old.as_ref().filter(|old| holds_ips(&old.pod)).map(|old| old.pod.ips.clone()).unwrap_or_default();
        let new_ips: &[IpAddr] = if holds_ips(&pod) { &pod.ips } else { &[] };
        // Pods present at the first full list have held their IPs since before we started.
        let since = if self.listed.contains(&Resource::Pods) { now } else { SystemTime::UNIX_EPOCH };
        let by_ip = Arc::make_mut(&mut self.by_ip);
        for ip in &old_ips {
            if !new_ips.contains(ip) {
                close_holding(by_ip, *ip, &pod.uid, now);
            }
        }
        for ip in new_ips {
            let holdings = by_ip.entry(*ip).or_default();
            match holdings.iter_mut().find(|holding| holding.until.is_none() && is_pod(&holding.endpoint, &pod.uid)) {
                Some(holding) => holding.endpoint = endpoint.clone(),
                None => holdings.push(Holding { since, until: None, endpoint: endpoint.clone() }),
            }
        }
        let by_container = Arc::make_mut(&mut self.by_container);
        if let Some(old) = &old {
            for id in &old.pod.container_ids {
                by_container.remove(id);
            }
        }
        for id in &pod.container_ids {
            by_container.insert(id.clone(), endpoint.clone());
        }
        let by_uid = Arc::make_mut(&mut self.by_uid);
        by_uid.insert(pod.uid.clone(), endpoint.clone());
        if let Some(mirror) = &mirror_uid {
            by_uid.insert(mirror.clone(), endpoint.clone());
        }
        Arc::make_mut(&mut self.pods).insert(pod.uid.clone(), PodRecord { pod, mirror_uid, endpoint });
    }

    fn delete_pod(&mut self, uid: &str, now: SystemTime) {
        let Some(record) = Arc::make_mut(&mut self.pods).remove(uid) else {
            return;
        };
        let listed = self.listed.contains(&Resource::Pods);
        self.revisions.change(revision_of(&record).as_ref(), None, None, true, listed, now);
        let by_ip = Arc::make_mut(&mut self.by_ip);
        for ip in &record.pod.ips {
            close_holding(by_ip, *ip, uid, now);
        }
        // The cgroup and container keys stay until late flows have drained.
        let keys = std::iter::once(record.pod.uid.clone()).chain(record.mirror_uid.clone()).collect();
        self.tombstones.push_back(Tombstone {
            at: now,
            keys,
            containers: record.pod.container_ids.clone(),
            endpoint: record.endpoint,
        });
    }

    /// Drops IP holdings and deleted pods' keys older than the retention.
    fn prune(&mut self, now: SystemTime) {
        let Some(horizon) = now.checked_sub(self.retention) else {
            return;
        };
        let expired = |holding: &Holding| holding.until.is_some_and(|until| until < horizon);
        if self.by_ip.values().flat_map(Holdings::iter).any(expired) {
            let by_ip = Arc::make_mut(&mut self.by_ip);
            by_ip.retain(|_, holdings| {
                holdings.retain(|holding| !expired(holding));
                !holdings.is_empty()
            });
        }
        while self.tombstones.front().is_some_and(|tombstone| tombstone.at < horizon) {
            let Some(tombstone) = self.tombstones.pop_front() else {
                break;
            };
            // A key taken over since (a re-created static pod) is not the tombstone's to remove.
            let by_uid = Arc::make_mut(&mut self.by_uid);
            for key in &tombstone.keys {
                if by_uid.get(key).is_some_and(|endpoint| endpoint.same(&tombstone.endpoint)) {
                    by_uid.remove(key);
                }
            }
            let by_container = Arc::make_mut(&mut self.by_container);
            for id in &tombstone.containers {
                if by_container.get(id).is_some_and(|endpoint| endpoint.same(&tombstone.endpoint)) {
                    by_container.remove(id);
                }
            }
        }
    }

    /// Brings derived indexes up to date and returns the snapshot of now.
    pub fn snapshot(&mut self, now: SystemTime) -> Snapshot {
        if self.workloads_relisted || !self.owners_changed.is_empty() {
            // A newly known ReplicaSet or Job changes the workload of the pods it owns.
            let owned_by_changed = |pod: &Pod| {
                pod.owner.as_ref().is_some_and(|owner| {
                    self.owners_changed.contains(&(pod.namespace.clone(), owner.kind.clone(), owner.name.clone()))
                })
            };
            let records: Vec<PodRecord> = self
                .pods
                .values()
                .filter(|record| self.workloads_relisted || owned_by_changed(&record.pod))
                // A pod whose workload comes out as before (its owner was
                // guessed right from its name) would get the same endpoint:
                // upserting it again changes nothing, and costs as much as
                // the first time, for every pod of a large cluster's first list.
                .filter(|record| {
                    !record.endpoint.workload.as_ref().is_some_and(|top| self.workloads.is_top_of(&record.pod, top))
                })
                .cloned()
                .collect();
            for record in records {
                self.upsert_pod(record.pod, record.mirror_uid, None, now);
            }
            self.owners_changed.clear();
            self.workloads_relisted = false;
        }
        if self.services_dirty {
            self.services_by_ip = Arc::new(
                self.services
                    .values()
                    .flat_map(|service| {
                        let endpoint = service.endpoint();
                        service.cluster_ips.iter().map(move |ip| (*ip, endpoint.clone()))
                    })
                    .collect(),
            );
            self.service_index = Arc::new(ServiceIndex::build(&self.services, &self.slices, &self.services_by_ip));
            self.services_dirty = false;
        }
        if self.nodes_dirty {
            self.nodes_by_ip = Arc::new(
                self.nodes
                    .values()
                    .flat_map(|node| {
                        let endpoint = node.endpoint();
                        node.ips.iter().map(move |ip| (*ip, endpoint.clone()))
                    })
                    .collect(),
            );
            self.nodes_dirty = false;
        }
        self.prune(now);
        self.revisions.prune(now);
        self.generation += 1;
        self.changed = false;
        Snapshot {
            generation: self.generation,
            synced: self.synced(),
            listed: self.listed.iter().copied().collect(),
            built_at: now,
            ip_skew: self.ip_skew,
            pods: Arc::clone(&self.pods),
            by_ip: Arc::clone(&self.by_ip),
            by_uid: Arc::clone(&self.by_uid),
            by_container: Arc::clone(&self.by_container),
            namespaces: Arc::clone(&self.namespaces),
            policies: Arc::clone(&self.policies),
            services: Arc::clone(&self.services),
            services_by_ip: Arc::clone(&self.services_by_ip),
            service_index: Arc::clone(&self.service_index),
            nodes: Arc::clone(&self.nodes),
            nodes_by_ip: Arc::clone(&self.nodes_by_ip),
            revisions: self.revisions.shared(),
            rollouts: self.revisions.rollouts(),
            intents: Arc::clone(&self.intents),
            cluster_policies: Arc::clone(&self.cluster_policies),
            host: self.host.clone(),
            world: self.world.clone(),
            unknown: self.unknown.clone(),
        }
    }
}

fn workload_key(workload: &Workload) -> (String, String, String) {
    (workload.namespace.clone(), workload.kind.clone(), workload.name.clone())
}

/// Where a held pod counts among its workload's revisions.
fn revision_of(record: &PodRecord) -> Option<PodRevision> {
    PodRevision::of(&record.pod.namespace, &record.pod.labels, record.endpoint.workload.as_ref())
}

fn is_pod(endpoint: &Endpoint, uid: &str) -> bool {
    endpoint.uid.as_deref() == Some(uid)
}

fn close_holding(by_ip: &mut FastMap<IpAddr, Holdings>, ip: IpAddr, uid: &str, now: SystemTime) {
    if let Some(holding) = by_ip.get_mut(&ip).and_then(|holdings| {
        holdings.iter_mut().find(|holding| holding.until.is_none() && is_pod(&holding.endpoint, uid))
    }) {
        holding.until = Some(now);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::{
        inventory::endpoint::EndpointKind,
        testing::{node, pod, service},
    };

    const UID_A: &str = "8f1c2a4e-5b6d-4e7f-9a0b-1c2d3e4f5a6b";
    const UID_B: &str = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";

    fn t(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    fn pod_item(pod: Pod) -> Item {
        Item::Pod(Box::new(PodItem { pod, mirror_uid: None, images: Vec::new() }))
    }

    /// A store with every required resource listed at `t(0)` from `items`.
    fn synced(items: Vec<Item>) -> Store {
        synced_with(&InventoryConfig::default(), items)
    }

    /// [`synced`] with `config`.
    fn synced_with(config: &InventoryConfig, items: Vec<Item>) -> Store {
        let mut store = Store::new(config);
        let mut by_resource: HashMap<Resource, Vec<Item>> = HashMap::new();
        for item in items {
            by_resource.entry(item.resource()).or_default().push(item);
        }
        for resource in Resource::REQUIRED {
            store.apply(Update::Init(resource), t(0));
            for item in by_resource.remove(&resource).unwrap_or_default() {
                store.apply(Update::InitApply(item), t(0));
            }
            store.apply(Update::InitDone(resource), t(0));
        }
        store
    }

    fn name(endpoint: &Endpoint) -> (EndpointKind, Option<&str>) {
        let service = endpoint.service.as_ref().map(|service| service.name.as_str());
        let name = endpoint.pod.as_deref().or(service).or(endpoint.node.as_deref());
        (endpoint.kind, name)
    }

    #[test]
    fn nothing_resolves_before_the_first_full_sync() {
        let mut store = Store::new(&InventoryConfig::default());
        store.apply(Update::Init(Resource::Pods), t(0));
        store.apply(Update::InitApply(pod_item(pod("web-1").ip("198.18.0.5").build())), t(0));
        store.apply(Update::InitDone(Resource::Pods), t(0));
        let snapshot = store.snapshot(t(1));
        assert!(!snapshot.synced());
        assert_eq!(snapshot.resolve_remote(ip("198.18.0.5"), t(1)).kind, EndpointKind::Unknown);
    }

    #[test]
    fn a_reused_ip_belongs_to_the_pod_that_held_it_at_the_time() {
        let mut store = synced(vec![pod_item(pod("old").ns("shop").ip("198.18.0.7").build())]);
        store.apply(Update::Delete(pod_item(pod("old").ns("shop").ip("198.18.0.7").build())), t(100));
        store.apply(Update::Apply(pod_item(pod("new").ns("shop").ip("198.18.0.7").build())), t(200));
        let snapshot = store.snapshot(t(201));
        let at = |seconds| name(&snapshot.resolve_remote(ip("198.18.0.7"), t(seconds))).1.map(str::to_owned);
        assert_eq!(at(50).as_deref(), Some("old"), "while the old pod held it");
        assert_eq!(at(100).as_deref(), Some("old"), "up to its deletion");
        assert_eq!(at(250).as_deref(), Some("new"), "after the new pod got it");
        // Just before the new pod was seen with it, and nobody held it: watch lag.
        assert_eq!(at(199).as_deref(), Some("new"));
        // Between the two, longer than the skew: nobody.
        assert_eq!(snapshot.resolve_remote(ip("198.18.0.7"), t(150)).kind, EndpointKind::World);
    }

    #[test]
    fn ended_holdings_are_forgotten_after_the_retention() {
        let mut store = synced(vec![pod_item(pod("old").ip("198.18.0.7").build())]);
        store.apply(Update::Delete(pod_item(pod("old").ip("198.18.0.7").build())), t(100));
        assert_eq!(store.snapshot(t(101)).resolve_remote(ip("198.18.0.7"), t(99)).kind, EndpointKind::Pod);
        let later = store.snapshot(t(100 + 301));
        assert_eq!(later.resolve_remote(ip("198.18.0.7"), t(99)).kind, EndpointKind::World);
        assert!(later.by_ip.is_empty());
        assert!(later.by_uid.is_empty(), "tombstoned cgroup keys are pruned too");
    }

    #[test]
    fn finished_and_host_network_pods_do_not_hold_ips() {
        let mut store = synced(vec![
            pod_item(pod("job").ip("198.18.0.9").phase("Succeeded").build()),
            pod_item(pod("cni").uid(UID_A).ip("10.0.0.1").host_network().build()),
            Item::Node(node("node-1", "10.0.0.1")),
        ]);
        let snapshot = store.snapshot(t(1));
        assert_eq!(snapshot.resolve_remote(ip("198.18.0.9"), t(1)).kind, EndpointKind::World);
        assert_eq!(name(&snapshot.resolve_remote(ip("10.0.0.1"), t(1))), (EndpointKind::Node, Some("node-1")));
        // Found by its cgroup instead.
        let cgroup = format!("/kubepods/besteffort/pod{UID_A}/abc");
        assert_eq!(
            name(&snapshot.resolve_local(Some(&cgroup), ip("10.0.0.1"), t(1))),
            (EndpointKind::Pod, Some("cni"))
        );
    }

    #[test]
    fn local_end_by_cgroup_then_container_then_ip_then_host() {
        let mut store = synced(vec![
            pod_item(pod("web").uid(UID_A).ip("198.18.0.5").build()),
            pod_item(pod("db").uid("api-uid-of-mirror").container("c0ffee").ip("198.18.0.6").build()),
        ]);
        let snapshot = store.snapshot(t(1));
        let systemd = format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-1234.scope",
            UID_A.replace('-', "_")
        );
        let local = |cgroup: Option<&str>, address| {
            name(&snapshot.resolve_local(cgroup, ip(address), t(1))).1.map(str::to_owned)
        };
        assert_eq!(local(Some(&systemd), "0.0.0.0").as_deref(), Some("web"));
        let by_container = format!("/kubepods/burstable/pod{UID_B}/c0ffee");
        assert_eq!(local(Some(&by_container), "0.0.0.0").as_deref(), Some("db"));
        assert_eq!(local(None, "198.18.0.5").as_deref(), Some("web"));
        assert_eq!(
            snapshot.resolve_local(Some("/system.slice/sshd.service"), ip("10.0.0.1"), t(1)).kind,
            EndpointKind::Host
        );
        // A kubepods cgroup of a pod the inventory does not hold is still a pod.
        let unlisted = snapshot.resolve_local(Some(&format!("/kubepods/pod{UID_B}/x")), ip("10.9.9.9"), t(1));
        assert_eq!((unlisted.kind, unlisted.uid.as_deref()), (EndpointKind::Pod, Some(UID_B)));
    }

    #[test]
    fn a_static_pod_is_found_by_the_uid_kubelet_gave_its_cgroup() {
        let mirror = PodItem {
            pod: pod("etcd").uid("api-server-uid").build(),
            mirror_uid: Some(UID_B.to_owned()),
            images: Vec::new(),
        };
        let mut store = synced(vec![Item::Pod(Box::new(mirror))]);
        let snapshot = store.snapshot(t(1));
        let cgroup = format!("/kubepods/pod{UID_B}/abc");
        assert_eq!(snapshot.resolve_local(Some(&cgroup), ip("10.0.0.1"), t(1)).pod.as_deref(), Some("etcd"));
    }

    #[test]
    fn remote_end_order_pod_service_node_world() {
        let mut store = synced(vec![
            pod_item(pod("web").ip("198.18.0.5").build()),
            Item::Service(service("shop", "web", "10.96.0.10")),
            Item::Node(node("node-1", "192.0.2.1")),
        ]);
        let snapshot = store.snapshot(t(1));
        let remote = |address| name(&snapshot.resolve_remote(ip(address), t(1))).0;
        assert_eq!(remote("198.18.0.5"), EndpointKind::Pod);
        assert_eq!(remote("10.96.0.10"), EndpointKind::Service);
        assert_eq!(remote("192.0.2.1"), EndpointKind::Node);
        assert_eq!(remote("203.0.113.9"), EndpointKind::World);
    }

    #[test]
    fn this_nodes_own_addresses_resolve_to_the_node_itself() {
        let config = InventoryConfig { node_name: Some("node-1".to_owned()), ..InventoryConfig::default() };
        let mut store = synced_with(
            &config,
            vec![
                pod_item(pod("web").ip("198.18.0.5").build()),
                Item::Service(service("shop", "web", "10.96.0.10")),
                Item::Node(node("node-1", "192.0.2.1")),
                Item::Node(node("node-2", "192.0.2.2")),
            ],
        );
        let snapshot = store.snapshot(t(1));
        // The interfaces: the bridge's gateway, a ClusterIP bound by IPVS, and
        // an address a pod holds (no interface of the node has it, but a
        // pod's address wins if one did).
        let here: crate::node::AddressSet = ["198.18.0.1", "10.96.0.10", "198.18.0.5"].map(ip).into_iter().collect();
        let remote = |address| {
            let endpoint = snapshot.resolve_remote_here(ip(address), t(1), &here);
            (endpoint.kind, endpoint.node.clone())
        };
        let node = |name: &str| Some(name.to_owned());
        assert_eq!(remote("198.18.0.1"), (EndpointKind::Host, node("node-1")), "the bridge's gateway");
        assert_eq!(remote("192.0.2.1"), (EndpointKind::Host, node("node-1")), "its own Node object's address");
        assert_eq!(remote("192.0.2.2"), (EndpointKind::Node, node("node-2")), "another node");
        assert_eq!(remote("10.96.0.10").0, EndpointKind::Service);
        assert_eq!(remote("198.18.0.5").0, EndpointKind::Pod);
        assert_eq!(remote("203.0.113.9").0, EndpointKind::World);
    }

    #[test]
    fn relabel_and_relist_change_what_resolves() {
        let mut store = synced(vec![
            pod_item(pod("web").ip("198.18.0.5").label("app", "web").build()),
            pod_item(pod("gone").ip("198.18.0.8").build()),
        ]);
        let before = store.snapshot(t(1));
        store.apply(Update::Apply(pod_item(pod("web").ip("198.18.0.5").label("app", "shop").build())), t(2));
        let after = store.snapshot(t(3));
        assert_eq!(before.resolve_remote(ip("198.18.0.5"), t(3)).labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(after.resolve_remote(ip("198.18.0.5"), t(3)).labels.get("app").map(String::as_str), Some("shop"));
        // A relist without "gone" deletes it.
        store.apply(Update::Init(Resource::Pods), t(10));
        store.apply(Update::InitApply(pod_item(pod("web").ip("198.18.0.5").build())), t(10));
        store.apply(Update::InitDone(Resource::Pods), t(10));
        let relisted = store.snapshot(t(11));
        assert_eq!(relisted.pod_count(), 1);
        assert_eq!(relisted.resolve_remote(ip("198.18.0.8"), t(11)).kind, EndpointKind::World);
        assert_eq!(relisted.resolve_remote(ip("198.18.0.8"), t(9)).kind, EndpointKind::Pod, "history kept");
    }

    #[test]
    fn a_replicaset_seen_after_its_pods_names_their_deployment() {
        let mut store =
            synced(vec![pod_item(pod("api-x").ns("shop").ip("198.18.0.5").owner("ReplicaSet", "api-5f").build())]);
        let workload = |store: &mut Store| store.snapshot(t(2)).resolve_remote(ip("198.18.0.5"), t(2)).workload.clone();
        assert_eq!(workload(&mut store).map(|w| w.kind), Some("ReplicaSet".to_owned()));
        let replicaset = Workload {
            kind: "ReplicaSet".to_owned(),
            namespace: "shop".to_owned(),
            name: "api-5f".to_owned(),
            uid: Some("uid-api-5f".to_owned()),
            owner: Some(crate::inventory::model::OwnerRef {
                kind: "Deployment".to_owned(),
                name: "api".to_owned(),
                uid: "d".to_owned(),
            }),
        };
        store.apply(Update::Apply(Item::Workload(replicaset)), t(1));
        assert_eq!(
            workload(&mut store),
            Some(crate::inventory::WorkloadRef { kind: "Deployment".to_owned(), name: "api".to_owned() })
        );
    }

    #[test]
    fn a_published_snapshot_never_changes() {
        let mut store = synced(vec![pod_item(pod("web").ip("198.18.0.5").build())]);
        let published = store.snapshot(t(1));
        store.apply(Update::Delete(pod_item(pod("web").ip("198.18.0.5").build())), t(2));
        store.apply(Update::Apply(pod_item(pod("other").ip("198.18.0.6").build())), t(2));
        assert_eq!(published.pod_count(), 1);
        assert_eq!(published.resolve_remote(ip("198.18.0.5"), t(3)).kind, EndpointKind::Pod);
        assert_eq!(published.resolve_remote(ip("198.18.0.6"), t(3)).kind, EndpointKind::World);
    }
}
