//! Trims Kubernetes objects to the items the store keeps.
//!
//! In: k8s-openapi objects, FlowIntents and ClusterNetworkPolicies (from a
//! watch event or a manifest) and workload metadata. Out: store [`Item`]s. Runs on every watch event, so the full
//! objects never stay in memory.

use k8s_openapi::{
    api::{core::v1 as core, discovery::v1 as discovery, networking::v1::NetworkPolicy},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};

use super::{
    manifests::{Declared, Origin, Workload},
    model::{EndpointSlice, Namespace, Node, OwnerRef, Pod, Service},
    store::{Item, PodItem},
};
use crate::{intent::resource::FlowIntent, policy::cnp::api::ClusterNetworkPolicy};

/// Annotation on a static pod's mirror naming the static pod's own uid.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// A pod, its strings moved, not copied.
pub fn pod(mut pod: core::Pod) -> Item {
    let mirror_uid = pod.metadata.annotations.as_mut().and_then(|annotations| annotations.remove(MIRROR_ANNOTATION));
    let images = pod
        .spec
        .iter_mut()
        .flat_map(|spec| &mut spec.containers)
        .filter_map(|container| container.image.take())
        .collect();
    Item::Pod(Box::new(PodItem { pod: Pod::from(pod), mirror_uid, images }))
}

/// A namespace.
pub fn namespace(namespace: &core::Namespace) -> Item {
    Item::Namespace(Namespace::from(namespace))
}

/// A Service.
pub fn service(service: &core::Service) -> Item {
    Item::Service(Service::from(service))
}

/// An EndpointSlice: its Service, ports and ready addresses only.
pub fn endpoint_slice(slice: &discovery::EndpointSlice) -> Item {
    Item::EndpointSlice(EndpointSlice::from(slice))
}

/// A node.
pub fn node(node: &core::Node) -> Item {
    Item::Node(Node::from(node))
}

/// A NetworkPolicy without the metadata the policy engine never reads (managed
/// fields and annotations such as `last-applied-configuration` can be larger
/// than the policy).
pub fn network_policy(mut policy: NetworkPolicy) -> Item {
    policy.metadata.managed_fields = None;
    policy.metadata.annotations = None;
    Item::NetworkPolicy(Box::new(policy))
}

/// A FlowIntent declared in `origin` (`None`: the API server's), trimmed as
/// a NetworkPolicy is: the judge reads its name, namespace, resourceVersion
/// and spec only.
pub fn flow_intent(mut intent: FlowIntent, origin: Option<Origin>) -> Item {
    intent.metadata.managed_fields = None;
    intent.metadata.annotations = None;
    Item::FlowIntent(Box::new(Declared { object: intent, origin }))
}

/// A ClusterNetworkPolicy declared in `origin` (`None`: the API server's),
/// trimmed as a NetworkPolicy is.
pub fn cluster_network_policy(mut policy: ClusterNetworkPolicy, origin: Option<Origin>) -> Item {
    policy.metadata.managed_fields = None;
    policy.metadata.annotations = None;
    Item::ClusterNetworkPolicy(Box::new(Declared { object: policy, origin }))
}

/// A workload controller of `kind` from its metadata.
pub fn workload(kind: &str, meta: &ObjectMeta) -> Item {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true))
        .map(|owner| OwnerRef { kind: owner.kind.clone(), name: owner.name.clone(), uid: owner.uid.clone() });
    Item::Workload(Workload {
        kind: kind.to_owned(),
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        name: meta.name.clone().unwrap_or_default(),
        uid: meta.uid.clone(),
        owner,
    })
}
