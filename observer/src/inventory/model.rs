//! The lean view of cluster objects that every stage after capture works on.
//!
//! In: full Kubernetes objects (k8s-openapi types) from the API server or from
//! manifest files. Out: small owned structs holding only what enrichment and
//! policy need, so the inventory can hold every pod of a large cluster, and
//! the flow end ([`Endpoint`]) each pod, Service and node resolves to.
//! NetworkPolicies stay as k8s-openapi objects: the policy engine compiles them.

use std::{collections::BTreeMap, net::IpAddr};

use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery};

use super::endpoint::{Endpoint, EndpointInfo, EndpointKind, ServiceRef, WorkloadRef};
pub use crate::flow::Protocol;

/// Labels of an object, sorted by key.
pub type Labels = BTreeMap<String, String>;

/// A named or numbered container port, as NetworkPolicy named ports resolve.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    /// `ports[].name`, if any.
    pub name: Option<String>,
    /// `ports[].containerPort`.
    pub port: u16,
    /// `ports[].protocol`.
    pub protocol: Protocol,
}

/// The controller ownerReference of an object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnerRef {
    /// `kind`, for example `ReplicaSet`.
    pub kind: String,
    /// `name`.
    pub name: String,
    /// `uid`.
    pub uid: String,
}

/// What enrichment and policy need of a Pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// `metadata.uid`.
    pub uid: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`.
    pub labels: Labels,
    /// `metadata.resourceVersion`, for audit evidence.
    pub resource_version: Option<String>,
    /// The controller ownerReference, if any.
    pub owner: Option<OwnerRef>,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// Ports of every container, for named-port resolution.
    pub container_ports: Vec<ContainerPort>,
    /// Runtime container ids from `status.containerStatuses` with the
    /// `containerd://` style prefix removed, for cgroup matching.
    pub container_ids: Vec<String>,
    /// `status.phase`.
    pub phase: Option<String>,
}

/// What enrichment and policy need of a Namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// `metadata.name`.
    pub name: String,
    /// `metadata.labels`; `kubernetes.io/metadata.name` is always present.
    pub labels: Labels,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
}

/// What enrichment needs of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `spec.clusterIPs` (or `spec.clusterIP`), `None` values dropped.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.selector`.
    pub selector: Labels,
    /// `spec.ports`, those with a valid port and protocol.
    pub ports: Vec<ServicePort>,
}

/// One port of a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `name`: what EndpointSlice ports are matched by (absent for a
    /// Service's single unnamed port).
    pub name: Option<String>,
    /// `port`, on the ClusterIP.
    pub port: u16,
    /// `protocol`.
    pub protocol: Protocol,
    /// `nodePort`, on every node address, if any.
    pub node_port: Option<u16>,
}

/// What Service resolution needs of an EndpointSlice
/// (`discovery.k8s.io/v1`): its Service, ports and ready addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// The `kubernetes.io/service-name` label: the Service it belongs to.
    pub service: Option<String>,
    /// `ports`, those with a number and a known protocol.
    pub ports: Vec<ContainerPort>,
    /// Addresses of the endpoints that are ready (a missing condition counts
    /// as ready, as the API says); the others take no traffic.
    pub ready: Vec<IpAddr>,
}

/// What enrichment needs of a Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// `metadata.name`.
    pub name: String,
    /// `status.addresses` of type InternalIP or ExternalIP.
    pub ips: Vec<IpAddr>,
    /// `metadata.labels`: what ClusterNetworkPolicy nodes peers select.
    pub labels: Labels,
}

fn labels_of(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Labels {
    meta.labels.clone().unwrap_or_default()
}

fn parse_ips<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = values.into_iter().filter_map(|ip| ip.parse().ok()).collect();
    ips.dedup();
    ips
}

impl From<&core::Pod> for Pod {
    fn from(pod: &core::Pod) -> Self {
        Self::from(pod.clone())
    }
}

/// Moves what it keeps out of the pod: a large cluster's first list or
/// manifests hand over tens of thousands of pods, and copying their strings
/// (to drop the originals right after) costs as much as reading them.
impl From<core::Pod> for Pod {
    fn from(pod: core::Pod) -> Self {
        let core::Pod { metadata: meta, spec, status, .. } = pod;
        let status = status.unwrap_or_default();
        let owner = meta
            .owner_references
            .into_iter()
            .flatten()
            .find(|owner| owner.controller == Some(true))
            .map(|owner| OwnerRef { kind: owner.kind, name: owner.name, uid: owner.uid });
        let mut ip_strings: Vec<&str> = status.pod_ips.iter().flatten().map(|ip| ip.ip.as_str()).collect();
        if ip_strings.is_empty()
            && let Some(ip) = status.pod_ip.as_deref()
        {
            ip_strings.push(ip);
        }
        let ips = parse_ips(ip_strings);
        let (host_network, node_name, container_ports) = match spec {
            Some(spec) => {
                let containers = spec.containers.into_iter().chain(spec.init_containers.into_iter().flatten());
                let container_ports = containers
                    .flat_map(|container| container.ports.into_iter().flatten())
                    .filter_map(|port| {
                        Some(ContainerPort {
                            port: u16::try_from(port.container_port).ok()?,
                            protocol: Protocol::from_k8s(port.protocol.as_deref())?,
                            name: port.name,
                        })
                    })
                    .collect();
                (spec.host_network.unwrap_or(false), spec.node_name, container_ports)
            }
            None => (false, None, Vec::new()),
        };
        let statuses =
            status.container_statuses.iter().flatten().chain(status.init_container_statuses.iter().flatten());
        let container_ids = statuses
            .filter_map(|status| status.container_id.as_deref())
            .map(|id| id.split_once("://").map_or(id, |(_, id)| id).to_owned())
            .collect();
        Self {
            uid: meta.uid.unwrap_or_default(),
            namespace: meta.namespace.unwrap_or_else(|| "default".to_owned()),
            name: meta.name.unwrap_or_default(),
            labels: meta.labels.unwrap_or_default(),
            resource_version: meta.resource_version,
            owner,
            ips,
            host_network,
            node_name,
            container_ports,
            container_ids,
            phase: status.phase,
        }
    }
}

impl From<&core::Namespace> for Namespace {
    fn from(namespace: &core::Namespace) -> Self {
        let name = namespace.metadata.name.clone().unwrap_or_default();
        let mut labels = labels_of(&namespace.metadata);
        // The API server sets this label on every namespace (since 1.21).
        labels.entry("kubernetes.io/metadata.name".to_owned()).or_insert_with(|| name.clone());
        Self { name, labels, resource_version: namespace.metadata.resource_version.clone() }
    }
}

impl From<&core::Service> for Service {
    fn from(service: &core::Service) -> Self {
        let spec = service.spec.as_ref();
        let mut ips: Vec<&str> =
            spec.and_then(|spec| spec.cluster_ips.as_ref()).into_iter().flatten().map(String::as_str).collect();
        if ips.is_empty()
            && let Some(ip) = spec.and_then(|spec| spec.cluster_ip.as_deref())
        {
            ips.push(ip);
        }
        Self {
            namespace: service.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
            name: service.metadata.name.clone().unwrap_or_default(),
            // "None" (headless) does not parse and is dropped.
            cluster_ips: parse_ips(ips),
            selector: spec.and_then(|spec| spec.selector.clone()).unwrap_or_default(),
            ports: spec
                .and_then(|spec| spec.ports.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|port| {
                    Some(ServicePort {
                        name: port.name.clone().filter(|name| !name.is_empty()),
                        port: u16::try_from(port.port).ok()?,
                        protocol: Protocol::from_k8s(port.protocol.as_deref())?,
                        node_port: port.node_port.and_then(|port| u16::try_from(port).ok()).filter(|port| *port != 0),
                    })
                })
                .collect(),
        }
    }
}

/// The label that names an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

impl From<&discovery::EndpointSlice> for EndpointSlice {
    fn from(slice: &discovery::EndpointSlice) -> Self {
        let meta = &slice.metadata;
        let ready = slice
            .endpoints
            .iter()
            .filter(|endpoint| endpoint.conditions.as_ref().and_then(|conditions| conditions.ready).unwrap_or(true))
            .flat_map(|endpoint| endpoint.addresses.iter().map(String::as_str));
        Self {
            namespace: meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
            name: meta.name.clone().unwrap_or_default(),
            service: meta.labels.as_ref().and_then(|labels| labels.get(SERVICE_NAME_LABEL)).cloned(),
            ports: slice
                .ports
                .iter()
                .flatten()
                .filter_map(|port| {
                    Some(ContainerPort {
                        name: port.name.clone().filter(|name| !name.is_empty()),
                        port: u16::try_from(port.port?).ok()?,
                        protocol: Protocol::from_k8s(port.protocol.as_deref())?,
                    })
                })
                .collect(),
            // FQDN slices hold names, not addresses: they do not parse and are dropped.
            ready: parse_ips(ready),
        }
    }
}

impl From<&core::Node> for Node {
    fn from(node: &core::Node) -> Self {
        let addresses = node.status.as_ref().and_then(|status| status.addresses.as_ref()).into_iter().flatten();
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: labels_of(&node.metadata),
            ips: parse_ips(
                addresses
                    .filter(|address| address.type_ == "InternalIP" || address.type_ == "ExternalIP")
                    .map(|address| address.address.as_str()),
            ),
        }
    }
}

impl Pod {
    /// This pod as a flow end, with its workload, keeping only the labels in
    /// `label_keys`.
    pub fn endpoint(&self, workload: WorkloadRef, label_keys: &[String]) -> Endpoint {
        let labels = label_keys
            .iter()
            .filter_map(|key| self.labels.get_key_value(key))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect();
        EndpointInfo {
            namespace: Some(self.namespace.clone()),
            pod: Some(self.name.clone()),
            uid: Some(self.uid.clone()),
            node: self.node_name.clone(),
            workload: Some(workload),
            labels,
            ..EndpointInfo::bare(EndpointKind::Pod)
        }
        .into()
    }
}

impl Service {
    /// This Service as a flow end.
    pub fn endpoint(&self) -> Endpoint {
        EndpointInfo {
            namespace: Some(self.namespace.clone()),
            service: Some(ServiceRef { namespace: self.namespace.clone(), name: self.name.clone() }),
            ..EndpointInfo::bare(EndpointKind::Service)
        }
        .into()
    }
}

impl Node {
    /// This node as a flow end.
    pub fn endpoint(&self) -> Endpoint {
        EndpointInfo { node: Some(self.name.clone()), ..EndpointInfo::bare(EndpointKind::Node) }.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_endpoint_keeps_only_configured_labels_and_omits_absent_fields() {
        let pod =
            crate::testing::pod("web-1").ns("shop").uid("u1").label("app", "web").label("secret-ish", "x").build();
        let endpoint = pod.endpoint(
            WorkloadRef { kind: "Pod".to_owned(), name: "web-1".to_owned() },
            &["app".to_owned(), "tier".to_owned()],
        );
        assert_eq!(
            serde_json::to_value(&endpoint).expect("serializes"),
            serde_json::json!({"kind": "pod", "namespace": "shop", "pod": "web-1", "uid": "u1",
                "workload": {"kind": "Pod", "name": "web-1"}, "labels": {"app": "web"}})
        );
        assert_eq!(serde_json::to_value(Endpoint::world()).expect("serializes"), serde_json::json!({"kind": "world"}));
    }

    #[test]
    fn pod_keeps_only_what_is_needed() {
        let pod: core::Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1", "namespace": "shop", "uid": "u1", "labels": {"app": "web"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d9", "uid": "rs1", "controller": true}]},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": "198.18.0.5", "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true, "restartCount": 0, "containerID": "containerd://abc"}]}
        }))
        .expect("valid pod");
        let pod = Pod::from(&pod);
        assert_eq!(pod.ips, vec!["198.18.0.5".parse::<IpAddr>().expect("ip")]);
        assert_eq!(pod.container_ids, vec!["abc".to_owned()]);
        assert_eq!(pod.owner.as_ref().map(|owner| owner.kind.as_str()), Some("ReplicaSet"));
        assert_eq!(pod.container_ports[0].name.as_deref(), Some("http"));
        assert_eq!(pod.container_ports[0].protocol, Protocol::TCP);
    }

    #[test]
    fn service_ports_and_ready_slice_addresses() {
        let service: core::Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "dns", "namespace": "kube-system"},
            "spec": {"clusterIPs": ["198.19.0.10", "2001:db8:198:19::a"], "type": "NodePort", "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "nodePort": 30053},
                {"name": "dns-tcp", "port": 53}, {"name": "odd", "port": 70000}]}
        }))
        .expect("valid service");
        let service = Service::from(&service);
        assert_eq!(service.cluster_ips.len(), 2);
        assert_eq!(
            service.ports,
            vec![
                ServicePort { name: Some("dns".to_owned()), port: 53, protocol: Protocol::UDP, node_port: Some(30053) },
                ServicePort { name: Some("dns-tcp".to_owned()), port: 53, protocol: Protocol::TCP, node_port: None },
            ]
        );
        let slice: discovery::EndpointSlice = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "dns-x1", "namespace": "kube-system", "labels": {"kubernetes.io/service-name": "dns"}},
            "addressType": "IPv4",
            "ports": [{"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": [
                {"addresses": ["198.18.0.53"], "conditions": {"ready": true}},
                {"addresses": ["198.18.0.54"]},
                {"addresses": ["198.18.0.55"], "conditions": {"ready": false}}]
        }))
        .expect("valid slice");
        let slice = EndpointSlice::from(&slice);
        assert_eq!(slice.service.as_deref(), Some("dns"));
        assert_eq!(
            slice.ports,
            vec![ContainerPort { name: Some("dns".to_owned()), port: 5353, protocol: Protocol::UDP }]
        );
        let ready: Vec<IpAddr> = ["198.18.0.53", "198.18.0.54"].iter().map(|ip| ip.parse().expect("ip")).collect();
        assert_eq!(slice.ready, ready, "the endpoint not ready is left out");
    }

    #[test]
    fn namespace_gets_its_name_label() {
        let namespace: core::Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "shop"}})).expect("valid");
        let namespace = Namespace::from(&namespace);
        assert_eq!(namespace.labels.get("kubernetes.io/metadata.name").map(String::as_str), Some("shop"));
    }
}
