//! The policy engine: compiled NetworkPolicies indexed for per-flow verdicts.
//!
//! In: NetworkPolicies and Namespaces (when the inventory changes), then flows
//! as two [`Endpoint`]s, a port and a protocol. Out: a [`Verdict`] per flow.
//! Policies are bucketed by namespace and policy type, so a verdict only looks
//! at the policies of the two namespaces involved, for the one direction that
//! matters on each side; namespace selectors are resolved to bitmaps at compile
//! time, so matching a peer's namespace is a bit test.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use k8s_openapi::api::networking::v1::NetworkPolicy;

use super::{
    compiled::{Addresses, CompiledPolicy, Flow, NAMESPACE_NAME_LABEL, NamespaceTable, NsId, NsKey, OtherEnd, Rule},
    error::PolicyError,
    fasthash::{FxBuildHasher, label_hash},
    selector::{Selector, same},
    verdict::{PolicyRef, SideVerdict, Verdict},
};
use crate::inventory::model::{ContainerPort, Labels, Namespace, Pod, Protocol};

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
    pub ingress: Vec<Arc<PolicyRef>>,
    /// Policies of type Egress selecting the pod, in compile order.
    pub egress: Vec<Arc<PolicyRef>>,
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
}

/// The two directions a policy can isolate.
#[derive(Clone, Copy, Debug)]
enum Direction {
    Ingress,
    Egress,
}

/// An end as the engine sees it.
struct Resolved<'a> {
    /// The pod and its namespace, for a pod that policies can select.
    pod: Option<(&'a Pod, NsKey<'a>)>,
    addresses: Addresses<'a>,
}

impl<'a> Resolved<'a> {
    fn as_other(&self) -> OtherEnd<'a> {
        OtherEnd { pod: self.pod.map(|(pod, namespace)| (&pod.labels, namespace)), addresses: self.addresses }
    }

    fn container_ports(&self) -> &'a [ContainerPort] {
        self.pod.map_or(&[], |(pod, _)| &pod.container_ports)
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
        let metas: Vec<PolicyRef> = policies.iter().map(policy_ref).collect();
        for meta in &metas {
            namespace_ids.entry(meta.namespace.clone()).or_insert_with(|| {
                labels.push(Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), meta.namespace.clone())]));
                labels.len() as NsId - 1
            });
        }
        let table = NamespaceTable { labels: &labels };
        let mut engine = Self { buckets: vec![Bucket::default(); labels.len()], namespace_ids, policies: Vec::new() };
        let mut errors = Vec::new();
        for (index, (policy, meta)) in policies.iter().zip(metas).enumerate() {
            let namespace = engine.namespace_ids.get(&meta.namespace).copied().unwrap_or_default();
            match CompiledPolicy::compile(policy, meta.clone(), namespace, &table) {
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
        (engine, errors)
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
        let source = self.resolve(source);
        let destination = self.resolve(destination);
        let destination_ports = destination.container_ports();
        let egress = self.side(
            &source,
            Direction::Egress,
            Flow { other: destination.as_other(), port, protocol, destination_ports },
        );
        let ingress = self.side(
            &destination,
            Direction::Ingress,
            Flow { other: source.as_other(), port, protocol, destination_ports },
        );
        Verdict { allowed: egress.allowed && ingress.allowed, egress, ingress }
    }

    /// The policies that isolate `pod`, for each direction: what a denied
    /// verdict names as its deciding policies, and what tells an unprotected
    /// pod. A host-network pod, or one in a namespace without policies, has none.
    pub fn isolating(&self, pod: &Pod) -> Isolation {
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

    fn resolve<'a>(&self, endpoint: Endpoint<'a>) -> Resolved<'a> {
        match endpoint {
            // Policies do not apply to host-network pods: they are seen as
            // their node's address, as most network plugins treat them.
            Endpoint::Pod { pod, ip } if pod.host_network => {
                Resolved { pod: None, addresses: ip.map_or(Addresses::Any(&pod.ips), Addresses::One) }
            }
            Endpoint::Pod { pod, ip } => {
                let namespace = match self.namespace_ids.get(pod.namespace.as_str()) {
                    Some(id) => NsKey::Known(*id),
                    None => NsKey::Unknown(&pod.namespace),
                };
                Resolved { pod: Some((pod, namespace)), addresses: ip.map_or(Addresses::Any(&pod.ips), Addresses::One) }
            }
            Endpoint::External(ip) => Resolved { pod: None, addresses: Addresses::One(ip) },
        }
    }

    fn side(&self, end: &Resolved<'_>, direction: Direction, flow: Flow<'_>) -> SideVerdict {
        let Some((pod, NsKey::Known(namespace))) = end.pod else { return SideVerdict::open() };
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
            let rules: &[Rule] = match direction {
                Direction::Ingress => policy.ingress.as_deref(),
                Direction::Egress => policy.egress.as_deref(),
            }
            .unwrap_or_default();
            if rules.iter().any(|rule| rule.allows(&flow)) {
                allowing.push(id);
            }
        });
        // Candidates come by label; explanations list policies in compile order.
        allowing.sort_unstable();
        let policies: Vec<_> = allowing.iter().map(|id| self.policies[*id as usize].meta.clone()).collect();
        SideVerdict { isolated, allowed: !isolated || !policies.is_empty(), policies }
    }
}

fn policy_ref(policy: &NetworkPolicy) -> PolicyRef {
    let meta = &policy.metadata;
    PolicyRef {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        generation: meta.generation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn shareable<T: Send + Sync>() {}
    const _: () = shareable::<Arc<PolicyEngine>>();
}
