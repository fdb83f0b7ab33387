//! Recorded edges judged again, offline, by the daemon's own judge.
//!
//! In: the inventory of manifest files (the daemon's standalone inventory:
//! pods, namespaces, workloads, policies, FlowIntents), a set of
//! NetworkPolicies to judge with, and the [`Edges`] of recorded flows. Out:
//! a [`Judged`] verdict per edge, exactly as [`crate::judge::Judge`] gives
//! it on the node that recorded it. Pods the manifests no longer hold are
//! judged as their records describe them (identity and the labels the
//! daemon copied), and say so.

use std::{collections::HashMap, net::IpAddr, path::PathBuf, sync::Arc};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::edges::{EdgeKey, EdgeStats, Edges, EndKey, PodSeen};
use crate::{
    config::ObserverConfig,
    flow::Protocol as FlowProtocol,
    intent::{FlowEnd, IntentIndex, LoadedIntents, Tiers},
    inventory::{EndpointInfo, EndpointKind, Inventory, InventoryConfig, Snapshot, model::Pod},
    judge::{FlowVerdict, Judge, JudgeInput, VerdictKind},
    policy::{PolicyEngine, PolicyError},
};

/// Why the inventory or a policy set cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The tier configuration is invalid.
    #[error("invalid tier configuration")]
    Tiers(#[source] crate::intent::TierConfigError),
}

/// The cluster as the manifests describe it.
pub struct Cluster {
    snapshot: Arc<Snapshot>,
    intents: Arc<IntentIndex>,
    config: ObserverConfig,
    /// Pods of the records the manifests do not hold, built from the records.
    gone: HashMap<u32, Arc<Pod>>,
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
    /// Loads the manifests with the daemon's standalone inventory; what
    /// fails to load is logged and left out, as the daemon does.
    pub fn load(manifests: &[PathBuf], config: ObserverConfig) -> Result<Self, ReplayError> {
        let (inventory, _reload) = Inventory::standalone(manifests.to_vec(), InventoryConfig::default());
        let snapshot = inventory.snapshot();
        let tiers = Tiers::new(&config.intents.tiers).map_err(ReplayError::Tiers)?;
        let namespaces: Vec<_> = snapshot.namespaces().cloned().collect();
        let loaded: Arc<LoadedIntents> = inventory.intents();
        let (intents, errors) = IntentIndex::compile(&loaded.intents, &namespaces, tiers, &config.intents);
        for error in &errors {
            tracing::warn!(%error, "FlowIntent left out");
        }
        Ok(Self { snapshot, intents: Arc::new(intents), config, gone: HashMap::new() })
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

    /// Compiles `policies` against the manifests' namespaces and pods; the
    /// refused ones come back as errors (by position in `policies`).
    pub fn compile(&self, policies: &[NetworkPolicy]) -> (PolicySet, Vec<PolicyError>) {
        let namespaces: Vec<_> = self.snapshot.namespaces().cloned().collect();
        let (mut engine, errors) = PolicyEngine::compile(policies, &namespaces);
        engine.index_pods(self.snapshot.pods_shared().cloned().chain(self.gone.values().cloned()));
        (PolicySet { engine: Arc::new(engine) }, errors)
    }

    /// Takes note of the recorded pods the manifests do not hold (by uid):
    /// they are judged as their records describe them. Returns how many.
    pub fn adopt_gone(&mut self, edges: &Edges) -> usize {
        self.gone.clear();
        for (id, seen) in edges.pods.iter().enumerate() {
            if self.snapshot.pod(&seen.uid).is_none() {
                self.gone.insert(id as u32, Arc::new(pod_from_record(seen)));
            }
        }
        self.gone.len()
    }

    /// Whether the pod of index `id` is one the manifests no longer hold.
    pub fn is_gone(&self, id: u32) -> bool {
        self.gone.contains_key(&id)
    }

    /// The pod behind a recorded pod: the manifests', else the record's.
    pub fn pod<'a>(&'a self, edges: &Edges, id: u32) -> Option<&'a Pod> {
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
        let src_info = self.info(edges, &key.src, stats.kinds.0);
        let dst_info = self.info(edges, &key.dst, stats.kinds.1);
        let (src_pod, src_ip) = self.end_pod(edges, &key.src);
        let (dst_pod, dst_ip) = self.end_pod(edges, &key.dst);
        let src = FlowEnd::from_endpoint(&src_info, src_pod, src_ip, None);
        let dst = FlowEnd::from_endpoint(&dst_info, dst_pod, dst_ip, key.port);
        let dst = if stats.names.is_empty() && !stats.resolved { dst } else { dst.with_names(&stats.names) };
        let evidence = stats.evidence;
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
            // The Service address asked for is not kept per edge: the backend is judged.
            asked: None,
        };
        let judge = judges.judges.get_mut(usize::from(stats.node))?;
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

    fn info(&self, edges: &Edges, end: &EndKey, kind: EndpointKind) -> EndpointInfo {
        match end {
            EndKey::Pod(id) => {
                let seen = edges.pod(*id);
                EndpointInfo {
                    kind: EndpointKind::Pod,
                    namespace: seen.map(|seen| seen.namespace.clone()),
                    pod: seen.map(|seen| seen.name.clone()),
                    uid: seen.map(|seen| seen.uid.clone()),
                    service: None,
                    node: seen.and_then(|seen| seen.node.clone()),
                    workload: seen.and_then(|seen| seen.workload.clone()),
                    labels: seen.map(|seen| seen.labels.clone()).unwrap_or_default(),
                }
            }
            EndKey::Address(_) => EndpointInfo {
                kind,
                namespace: None,
                pod: None,
                uid: None,
                service: None,
                node: None,
                workload: None,
                labels: Default::default(),
            },
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
