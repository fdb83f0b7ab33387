//! Recorded edges judged again, offline, by the daemon's own judge.
//!
//! In: the inventory of manifest files (the daemon's standalone inventory:
//! pods, namespaces, workloads, policies, FlowIntents), or of a cluster
//! (the daemon's cluster source, synced once, and FlowIntents and
//! ClusterNetworkPolicies listed once), a set of NetworkPolicies and
//! ClusterNetworkPolicies to judge with, and the [`Edges`] of recorded flows. Out:
//! a [`Judged`] verdict per edge, exactly as [`crate::judge::Judge`] gives
//! it on the node that recorded it. Pods the manifests no longer hold are
//! judged as their records describe them (identity and the labels the
//! daemon copied), and say so. [`Recorded`] is what every offline command
//! reads (the cluster, the daemon's configuration, the flow logs) and loads
//! it.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{
    edges::{EdgeKey, EdgeStats, Edges, EndKey, PodSeen},
    reader::{self, ReadReport},
};
use crate::{
    config::ObserverConfig,
    flow::Protocol as FlowProtocol,
    intent::{FlowEnd, IntentIndex, LoadedIntents, Tiers, WorkloadName},
    inventory::{
        EndpointInfo, EndpointKind, Inventory, InventoryConfig, InventoryError, Snapshot, manifests::Object, model::Pod,
    },
    judge::{FlowVerdict, Judge, JudgeInput, VerdictKind},
    policy::{
        PolicyEngine, PolicyError,
        cnp::{CnpError, api::ClusterNetworkPolicy},
    },
};

/// What every offline command reads: the cluster, the daemon's
/// configuration and the recorded flow logs (from each command's flags).
#[derive(Clone, Debug, Default)]
pub struct Recorded {
    /// The cluster: manifest files or folders (Pods, Namespaces, workloads,
    /// NetworkPolicies, ClusterNetworkPolicies, Services, FlowIntents).
    pub manifests: Vec<PathBuf>,
    /// Read the cluster from the API server of this kubeconfig instead
    /// (listed once, as `observer run` reads it).
    pub kubeconfig: Option<PathBuf>,
    /// Flow logs written by `observer run` (plain or gzip; `-` for stdin).
    pub flows: Vec<PathBuf>,
    /// The daemon's configuration file (tiers, intents), as `observer run --config`.
    pub config: Option<PathBuf>,
}

impl Recorded {
    /// The cluster, judged with the daemon's configuration (its defaults
    /// without a file).
    pub fn cluster(&self) -> Result<Cluster, ReplayError> {
        let config = match &self.config {
            Some(path) => ObserverConfig::read(path)?,
            None => ObserverConfig::default(),
        };
        Cluster::load(Source::of(&self.manifests, self.kubeconfig.as_deref()), config)
    }

    /// The flow logs folded into edges, and what reading them gave.
    pub fn edges(&self) -> (Edges, ReadReport) {
        let mut edges = Edges::default();
        let input = reader::read(&self.flows, &mut |line, file, number, report| edges.add(line, file, number, report));
        (edges, input)
    }
}

/// How long the cluster's inventory may take to list what the daemon needs.
const SYNC_TIMEOUT: Duration = Duration::from_secs(60);

/// How much longer the optional lists (EndpointSlices, ReplicaSets, Jobs,
/// the custom resources) may take once the required ones are done: an
/// account that may not list one of them gets a warning, not a minute's wait.
const OPTIONAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the inventory or a policy set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The configuration file cannot be used.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The tier configuration is invalid.
    #[error("invalid tier configuration")]
    Tiers(#[source] crate::intent::TierConfigError),
    /// A `--manifests` path does not exist.
    #[error("--manifests {path}: no such file or folder")]
    ManifestsMissing {
        /// The path.
        path: PathBuf,
    },
    /// The runtime for the cluster's client cannot start.
    #[error("cannot start the runtime to read the cluster")]
    Runtime(#[source] std::io::Error),
    /// No client for the kubeconfig.
    #[error(transparent)]
    Client(#[from] InventoryError),
    /// The cluster's inventory did not list in time.
    #[error("the cluster's inventory did not list within {seconds} s: {failing}")]
    NotSynced {
        /// The time allowed.
        seconds: u64,
        /// The resources not listed, with their latest error.
        failing: String,
    },
    /// A resource other than the inventory's cannot be listed.
    #[error("cannot list {what} from the cluster")]
    List {
        /// The resource.
        what: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
}

/// Where the inventory comes from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// Manifest files or folders, read as `observer run --manifests` does.
    Manifests(&'a [PathBuf]),
    /// The cluster of a kubeconfig, read as `observer run` does, once.
    Cluster(&'a Path),
}

impl<'a> Source<'a> {
    /// The source the flags give: the cluster when a kubeconfig is given.
    pub fn of(manifests: &'a [PathBuf], kubeconfig: Option<&'a Path>) -> Self {
        match kubeconfig {
            Some(path) => Self::Cluster(path),
            None => Self::Manifests(manifests),
        }
    }
}

/// NetworkPolicy annotations by (namespace, name): the inventory strips
/// them, the report reads the owner from them.
pub type Annotations = BTreeMap<(String, String), BTreeMap<String, String>>;

/// The cluster as the manifests, or the API server, describe it.
pub struct Cluster {
    snapshot: Arc<Snapshot>,
    intents: Arc<IntentIndex>,
    cluster_policies: Vec<ClusterNetworkPolicy>,
    declared_intents: Vec<crate::intent::FlowIntent>,
    annotations: Annotations,
    config: ObserverConfig,
    /// Pods of the records the manifests do not hold, built from the records.
    gone: HashMap<u32, Arc<Pod>>,
    /// The pod behind each recorded pod (by index), the manifests' or the
    /// record's, as [`Cluster::adopt_gone`] found it: every edge's ends look
    /// it up, before and after.
    recorded: Vec<Arc<Pod>>,
}

/// What a source gave.
struct Loaded {
    snapshot: Arc<Snapshot>,
    intents: Arc<LoadedIntents>,
    annotations: Annotations,
}

fn from_manifests(paths: &[PathBuf]) -> Result<Loaded, ReplayError> {
    // A path that is not there is a typo: an empty policy set would judge everything allowed.
    if let Some(path) = paths.iter().find(|path| !path.exists()) {
        return Err(ReplayError::ManifestsMissing { path: path.clone() });
    }
    let mut annotations = Annotations::new();
    let inventory = Inventory::standalone_once(paths.to_vec(), InventoryConfig::default(), &mut |object| {
        if let Object::NetworkPolicy(policy) = object
            && let Some((key, value)) = annotations_of(policy)
        {
            annotations.insert(key, value);
        }
    });
    Ok(Loaded { snapshot: inventory.snapshot(), intents: inventory.intents(), annotations })
}

fn annotations_of(policy: &NetworkPolicy) -> Option<((String, String), BTreeMap<String, String>)> {
    let key = (
        policy.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        policy.metadata.name.clone().unwrap_or_default(),
    );
    policy.metadata.annotations.clone().map(|annotations| (key, annotations))
}

/// Lists `K` once; a resource the API server does not serve (its CRD is not
/// installed) is empty, and said so.
async fn list_once<K>(client: &kube::Client, what: &'static str) -> Result<Vec<K>, ReplayError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    K::DynamicType: Default,
{
    match kube::Api::<K>::all(client.clone()).list(&Default::default()).await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            tracing::warn!("the cluster does not serve {what} (CRD not installed): judging without them");
            Ok(Vec::new())
        }
        Err(source) => Err(ReplayError::List { what, source }),
    }
}

/// The daemon's cluster source, run until its first full sync (every list
/// done), then stopped: the commands read a moment of the cluster, they do
/// not follow it.
fn from_cluster(kubeconfig: &Path) -> Result<Loaded, ReplayError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ReplayError::Runtime)?;
    runtime.block_on(async {
        let client = crate::inventory::client(Some(kubeconfig.to_owned())).await?;
        let (inventory, task) = Inventory::cluster(client.clone(), InventoryConfig::default());
        // Every list, not only the ones that make the daemon ready: a replay
        // judges Service flows at their backends, so it needs the
        // EndpointSlices too. What is optional and still unlisted a little
        // after the required ones (ReplicaSets or Jobs the account may not
        // list) is named and left out; what is required fails the command.
        let mut task = std::pin::pin!(task);
        let required = tokio::time::timeout(SYNC_TIMEOUT, async {
            tokio::select! {
                () = &mut task => {}
                () = inventory.ready() => {}
            }
        })
        .await;
        if required.is_ok() {
            let optional = tokio::time::timeout(OPTIONAL_TIMEOUT, async {
                tokio::select! {
                    () = &mut task => {}
                    () = inventory.complete() => {}
                }
            })
            .await;
            let unlisted: Vec<&str> = inventory.unlisted().into_iter().map(|resource| resource.name()).collect();
            if optional.is_err() && !unlisted.is_empty() {
                tracing::warn!(
                    ?unlisted,
                    "not listed within {}s of the required resources: judging without them",
                    OPTIONAL_TIMEOUT.as_secs()
                );
            }
        }
        if !inventory.snapshot().synced() {
            let failing: Vec<String> = inventory
                .status()
                .resources
                .iter()
                .filter(|(_, status)| !status.listed)
                .map(|(resource, status)| {
                    format!("{resource:?} ({})", status.last_error.as_deref().unwrap_or("no answer"))
                })
                .collect();
            return Err(ReplayError::NotSynced { seconds: SYNC_TIMEOUT.as_secs(), failing: failing.join(", ") });
        }
        let intents = list_once::<crate::intent::FlowIntent>(&client, "FlowIntents").await?;
        let cluster_policies = list_once::<ClusterNetworkPolicy>(&client, "ClusterNetworkPolicies").await?;
        let policies = kube::Api::<NetworkPolicy>::all(client.clone())
            .list(&Default::default())
            .await
            .map_err(|source| ReplayError::List { what: "NetworkPolicies", source })?;
        let annotations = policies.items.iter().filter_map(annotations_of).collect();
        let intents = LoadedIntents { intents, cluster_policies, ..LoadedIntents::default() };
        Ok(Loaded { snapshot: inventory.snapshot(), intents: Arc::new(intents), annotations })
    })
}

/// A compiled set of policies to judge with.
pub struct PolicySet {
    engine: Arc<PolicyEngine>,
}

impl PolicySet {
    /// The compiled engine.
    pub fn engine(&self) -> &PolicyEngine {
        &self.engine
    }
}

/// An edge's verdict.
#[derive(Clone, Debug)]
pub struct Judged {
    /// The judge's verdict.
    pub verdict: FlowVerdict,
}

impl Judged {
    /// Whether NetworkPolicies let it through (`allowed`, or an intent
    /// violation the policies allow).
    pub fn policy_allows(&self) -> bool {
        matches!(self.verdict.verdict, VerdictKind::Allowed | VerdictKind::IntentViolation)
    }

    /// The cited policies as `namespace/name`.
    pub fn policy_names(&self) -> Vec<String> {
        self.verdict.policies.iter().map(|policy| policy.0.to_string()).collect()
    }
}

impl Cluster {
    /// Loads the inventory with the daemon's own sources (manifests, or the
    /// cluster listed once); what fails to load is logged and left out, as
    /// the daemon does.
    pub fn load(source: Source<'_>, config: ObserverConfig) -> Result<Self, ReplayError> {
        let Loaded { snapshot, intents: loaded, annotations } = match source {
            Source::Manifests(paths) => from_manifests(paths)?,
            Source::Cluster(kubeconfig) => from_cluster(kubeconfig)?,
        };
        let tiers = Tiers::new(&config.intents.tiers).map_err(ReplayError::Tiers)?;
        let namespaces: Vec<_> = snapshot.namespaces().cloned().collect();
        let (intents, errors) = IntentIndex::compile(&loaded.intents, &namespaces, tiers, &config.intents);
        for error in &errors {
            tracing::warn!(%error, "FlowIntent left out");
        }
        Ok(Self {
            snapshot,
            intents: Arc::new(intents),
            cluster_policies: loaded.cluster_policies.clone(),
            declared_intents: loaded.intents.clone(),
            annotations,
            config,
            gone: HashMap::new(),
            recorded: Vec::new(),
        })
    }

    /// The annotations of the cluster's NetworkPolicies.
    pub fn annotations(&self) -> &Annotations {
        &self.annotations
    }

    /// The FlowIntents the cluster declares, as declared.
    pub fn declared_intents(&self) -> &[crate::intent::FlowIntent] {
        &self.declared_intents
    }

    /// The daemon's configuration the cluster is judged with.
    pub fn config(&self) -> &ObserverConfig {
        &self.config
    }

    /// The ClusterNetworkPolicies the cluster declares.
    pub fn cluster_policies(&self) -> &[ClusterNetworkPolicy] {
        &self.cluster_policies
    }

    /// The inventory.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The compiled FlowIntents.
    pub fn intents(&self) -> &Arc<IntentIndex> {
        &self.intents
    }

    /// The policies the manifests declare.
    pub fn policies(&self) -> Vec<NetworkPolicy> {
        self.snapshot.network_policies().cloned().collect()
    }

    /// Compiles `policies` and `cluster_policies` against the inventory's
    /// namespaces, nodes and pods, as the daemon's judge does; the refused
    /// ones come back as errors (by position in their slice).
    pub fn compile(
        &self,
        policies: &[NetworkPolicy],
        cluster_policies: &[ClusterNetworkPolicy],
    ) -> (PolicySet, Vec<PolicyError>, Vec<CnpError>) {
        let (mut engine, errors, cluster_errors) = self.compile_unindexed(policies, cluster_policies);
        engine.index_pods(self.snapshot.pods_shared().cloned().chain(self.gone.values().cloned()));
        (PolicySet { engine: Arc::new(engine) }, errors, cluster_errors)
    }

    /// The policies of `policies` and `cluster_policies` that
    /// [`Cluster::compile`] would refuse, without indexing the pods (which
    /// only verdicts need, and which costs more than compiling).
    pub fn validate(
        &self,
        policies: &[NetworkPolicy],
        cluster_policies: &[ClusterNetworkPolicy],
    ) -> (Vec<PolicyError>, Vec<CnpError>) {
        let (_, errors, cluster_errors) = self.compile_unindexed(policies, cluster_policies);
        (errors, cluster_errors)
    }

    fn compile_unindexed(
        &self,
        policies: &[NetworkPolicy],
        cluster_policies: &[ClusterNetworkPolicy],
    ) -> (PolicyEngine, Vec<PolicyError>, Vec<CnpError>) {
        let namespaces: Vec<_> = self.snapshot.namespaces().cloned().collect();
        let nodes: Vec<_> = self.snapshot.nodes().cloned().collect();
        let (engine, errors) = PolicyEngine::compile(policies, &namespaces);
        let (engine, cluster_errors) = engine.with_cluster_policies(cluster_policies, &nodes);
        (engine, errors, cluster_errors)
    }

    /// Takes note of the recorded pods the manifests do not hold (by uid):
    /// they are judged as their records describe them. Returns how many.
    pub fn adopt_gone(&mut self, edges: &Edges) -> usize {
        self.gone.clear();
        self.recorded.clear();
        for (id, seen) in edges.pods.iter().enumerate() {
            let pod = match self.snapshot.pod_shared(&seen.uid) {
                Some(pod) => Arc::clone(pod),
                None => {
                    let pod = Arc::new(pod_from_record(seen));
                    self.gone.insert(id as u32, Arc::clone(&pod));
                    pod
                }
            };
            self.recorded.push(pod);
        }
        self.gone.len()
    }

    /// Whether the pod of index `id` is one the manifests no longer hold.
    pub fn is_gone(&self, id: u32) -> bool {
        self.gone.contains_key(&id)
    }

    /// The recorded pods the manifests no longer hold, as `namespace/name`, sorted.
    pub fn gone_pods(&self, edges: &Edges) -> Vec<String> {
        let mut gone: Vec<String> = edges
            .pods
            .iter()
            .enumerate()
            .filter(|(id, _)| self.is_gone(*id as u32))
            .map(|(_, pod)| format!("{}/{}", pod.namespace, pod.name))
            .collect();
        gone.sort();
        gone
    }

    /// The pod behind a recorded pod: the manifests', else the record's
    /// (those of the edges [`Cluster::adopt_gone`] was last given).
    pub fn pod<'a>(&'a self, edges: &Edges, id: u32) -> Option<&'a Pod> {
        if let Some(pod) = self.recorded.get(id as usize) {
            return Some(pod);
        }
        let seen = edges.pod(id)?;
        self.snapshot.pod(&seen.uid).or_else(|| self.gone.get(&id).map(Arc::as_ref))
    }

    /// A judge of `policies` for each node, as the daemon of that node judges.
    pub fn judges(&self, policies: &PolicySet, edges: &Edges) -> Judges {
        let judges = edges
            .nodes
            .iter()
            .map(|node| {
                Judge::new(Arc::clone(&policies.engine), Arc::clone(&self.intents), self.config.judge.clone())
                    .on_node(Some(node))
            })
            .collect();
        Judges { judges }
    }

    /// Judges one edge with `judges`: its ends as recorded (the pods as the
    /// manifests hold them now), its strongest evidence.
    pub fn judge(&self, judges: &mut Judges, edges: &Edges, key: &EdgeKey, stats: &EdgeStats) -> Option<Judged> {
        let src = self.flow_end(edges, &key.src, stats.kinds.0, None);
        let dst = self.flow_end(edges, &key.dst, stats.kinds.1, key.port);
        let dst = if stats.names.is_empty() && !stats.resolved { dst } else { dst.with_names(&stats.names) };
        // The provider the daemon tagged the destination with, as its judge reads `dst.ai_provider`.
        let dst = FlowEnd { provider: stats.ai_provider.as_deref(), ..dst };
        let evidence = stats.evidence;
        // What the source asked for when `dst` is a Service's backend: intents match either.
        let asked_info = stats.asked.map(|_| EndpointInfo {
            kind: crate::inventory::EndpointKind::Service,
            namespace: stats.service.as_ref().map(|(namespace, _)| namespace.to_string()),
            pod: None,
            uid: None,
            service: stats.service.as_ref().map(|(namespace, name)| crate::inventory::ServiceRef {
                namespace: namespace.to_string(),
                name: name.to_string(),
            }),
            node: None,
            workload: None,
            labels: Default::default(),
        });
        let asked = match (&asked_info, stats.asked) {
            (Some(info), Some((ip, port))) => Some(FlowEnd::from_endpoint(info, None, ip, port)),
            _ => None,
        };
        let input = JudgeInput {
            src,
            dst,
            protocol: FlowProtocol(key.protocol),
            state: evidence.state,
            to_dst: evidence.to_dst,
            to_src: evidence.to_src,
            local: evidence.local,
            first_seen: std::time::UNIX_EPOCH + std::time::Duration::from_millis(stats.first_ms),
            // Rates are not replayed: an edge is judged once, not per connection.
            new_flow: false,
            asked,
        };
        let judge = judges.judges.get_mut(usize::from(stats.node))?;
        if let (EndKey::Address(ip), EndpointKind::Service, Some(port)) = (key.dst, stats.kinds.1, key.port) {
            // A Service flow whose backend the daemon did not know: judged at
            // each ready backend the EndpointSlices list, as the daemon does.
            let first_seen = input.first_seen;
            let backends: Vec<_> = self
                .snapshot
                .service_backends(ip, port, key.protocol)
                .map(|service| {
                    service
                        .backends
                        .iter()
                        .map(|backend| (self.snapshot.resolve_remote(backend.ip(), first_seen), *backend))
                        .collect()
                })
                .unwrap_or_default();
            let ends: Vec<FlowEnd<'_>> = backends
                .iter()
                .map(|(endpoint, at)| {
                    let pod = endpoint.uid.as_deref().and_then(|uid| self.snapshot.pod(uid));
                    FlowEnd::from_endpoint(endpoint, pod, at.ip(), Some(at.port()))
                })
                .collect();
            return Some(Judged { verdict: judge.flow_to_backends(&input, &ends) });
        }
        Some(Judged { verdict: judge.flow(&input) })
    }

    /// The pod (when the end is one) and address of an edge's end.
    pub fn end_pod<'a>(&'a self, edges: &Edges, end: &EndKey) -> (Option<&'a Pod>, IpAddr) {
        match end {
            EndKey::Pod(id) => {
                let ip = edges.pod(*id).map_or(IpAddr::from([0, 0, 0, 0]), |seen| seen.ip);
                (self.pod(edges, *id), ip)
            }
            EndKey::Address(ip) => (None, *ip),
        }
    }

    /// An edge's end as the judge sees it: a pod end as its records name it
    /// (borrowed, not copied: every edge is judged, some twice), the pod as
    /// the manifests hold it now; any other end by its address and kind.
    fn flow_end<'a>(&'a self, edges: &'a Edges, end: &EndKey, kind: EndpointKind, port: Option<u16>) -> FlowEnd<'a> {
        let (pod, ip) = self.end_pod(edges, end);
        match end {
            EndKey::Pod(id) => {
                let seen = edges.pod(*id);
                FlowEnd {
                    pod,
                    namespace: seen.map(|seen| seen.namespace.as_str()),
                    pod_name: seen.map(|seen| seen.name.as_str()),
                    uid: seen.map(|seen| seen.uid.as_str()),
                    workload: seen.and_then(|seen| seen.workload.as_ref()).map(WorkloadName::from),
                    ..FlowEnd::address(EndpointKind::Pod, ip, port)
                }
            }
            EndKey::Address(_) => FlowEnd { pod, ..FlowEnd::address(kind, ip, port) },
        }
    }
}

/// One judge per recording node.
pub struct Judges {
    judges: Vec<Judge>,
}

/// A pod as its records describe it.
fn pod_from_record(seen: &PodSeen) -> Pod {
    Pod {
        uid: seen.uid.clone(),
        namespace: seen.namespace.clone(),
        name: seen.name.clone(),
        labels: seen.labels.clone(),
        resource_version: None,
        owner: None,
        ips: vec![seen.ip],
        host_network: false,
        node_name: seen.node.clone(),
        container_ports: Vec::new(),
        container_ids: Vec::new(),
        phase: None,
    }
}
