//! Kubernetes manifests that describe lab pods, for standalone-mode tests and
//! the demo: the pods keep their real UIDs, IPs and container ids, so the
//! observer's inventory resolves lab traffic as it would a cluster's; and
//! generated clusters at scale ([`cluster`]) for the benchmarks.
//!
//! In: lab pods and what they should look like (namespace, name, labels,
//! owner), the lab's Services and node, or a [`ClusterSize`]. Out: JSON
//! objects (Pods, Services, `discovery.k8s.io/v1` EndpointSlices, the Node)
//! and a `List` file the observer's `--manifests` reads.

use std::path::Path;

use serde_json::{Value, json};

use crate::{NODE_NAME, Pod, Service};

/// A lab pod as the cluster should see it.
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    /// The lab pod.
    pub pod: &'a Pod,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its labels.
    pub labels: Vec<(&'a str, &'a str)>,
    /// Its controller: `(kind, name)`, e.g. `("ReplicaSet", "web-7d9f")`.
    pub owner: Option<(&'a str, &'a str)>,
    /// Named container ports: `(name, port)`.
    pub ports: Vec<(&'a str, u16)>,
}

/// The AI tier the dashboard and alert tests run: namespaces `agents` and
/// `ml`, the planner Deployment (agent tier) and its ReplicaSet, a
/// NetworkPolicy that lets only the `frontend` namespace reach the vLLM model
/// server (declared, not enforced by the lab: the planner's calls are
/// enforcement gaps), and a FlowIntent that keeps agents inside (their
/// internet egress is an intent violation). The pods come from
/// [`planner_pod`] and [`vllm_pod`].
pub fn ai_tier() -> Vec<Value> {
    vec![
        namespace("agents", &[]),
        namespace("ml", &[]),
        workload("Deployment", "agents", "planner", None),
        workload("ReplicaSet", "agents", "planner-5c8d", Some(("Deployment", "planner"))),
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": "vllm-from-frontend", "namespace": "ml"},
               "spec": {"podSelector": {"matchLabels": {"app": "vllm"}},
                        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "frontend"}}}]}]}}),
        json!({"apiVersion": "ai.governance/v1alpha1", "kind": "FlowIntent",
               "metadata": {"name": "agents-stay-inside", "namespace": "agents"},
               "spec": {"subject": {"tiers": ["agent"]}, "egress": {"forbid": [{"world": true}]}}}),
    ]
}

/// A pod of [`ai_tier`]'s planner (agent tier), named `name`.
pub fn planner_pod<'a>(pod: &'a Pod, name: &'a str) -> PodSpec<'a> {
    PodSpec {
        pod,
        namespace: "agents",
        name,
        labels: vec![("app", "planner"), ("ai.governance/tier", "agent")],
        owner: Some(("ReplicaSet", "planner-5c8d")),
        ports: vec![],
    }
}

/// [`ai_tier`]'s model server, `ml/vllm-0` (model-serving tier), serving `http` on 8080.
pub fn vllm_pod(pod: &Pod) -> PodSpec<'_> {
    PodSpec {
        pod,
        namespace: "ml",
        name: "vllm-0",
        labels: vec![("app", "vllm"), ("ai.governance/tier", "model-serving")],
        owner: Some(("StatefulSet", "vllm")),
        ports: vec![("http", 8080)],
    }
}

fn labels(pairs: &[(&str, &str)]) -> Value {
    Value::Object(pairs.iter().map(|(key, value)| ((*key).to_owned(), Value::from(*value))).collect())
}

/// A Pod object with the lab pod's uid, IPs and container id.
pub fn pod(spec: &PodSpec<'_>) -> Value {
    let mut ips = vec![json!({"ip": spec.pod.ipv4().to_string()})];
    if let Some(v6) = spec.pod.ipv6() {
        ips.push(json!({"ip": v6.to_string()}));
    }
    let owners: Vec<Value> = spec
        .owner
        .iter()
        .map(|(kind, name)| {
            let api_version = if *kind == "Job" { "batch/v1" } else { "apps/v1" };
            json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true})
        })
        .collect();
    let ports: Vec<Value> =
        spec.ports.iter().map(|(name, port)| json!({"name": name, "containerPort": port, "protocol": "TCP"})).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "uid": spec.pod.uid(),
            "labels": labels(&spec.labels),
            "ownerReferences": owners,
        },
        "spec": {
            "nodeName": NODE_NAME,
            "hostNetwork": spec.pod.host_network(),
            "containers": [{"name": "main", "image": "lab", "ports": ports}],
        },
        "status": {
            "phase": "Running",
            "podIP": spec.pod.ipv4().to_string(),
            "podIPs": ips,
            "containerStatuses": [{
                "name": "main", "image": "lab", "imageID": "", "ready": true, "restartCount": 0,
                "containerID": format!("containerd://{}", spec.pod.container_id()),
            }],
        },
    })
}

/// A Namespace object.
pub fn namespace(name: &str, label_pairs: &[(&str, &str)]) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels(label_pairs)}})
}

/// A workload controller object (ReplicaSet, Deployment, StatefulSet, Job, …)
/// with an optional controller of its own.
pub fn workload(kind: &str, namespace: &str, name: &str, owner: Option<(&str, &str)>) -> Value {
    let api_version = if matches!(kind, "Job" | "CronJob") { "batch/v1" } else { "apps/v1" };
    let owners: Vec<Value> = owner
        .iter()
        .map(|(kind, name)| json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true}))
        .collect();
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "ownerReferences": owners},
    })
}

/// The Service object of a lab [`Service`]: `type: NodePort` when a port has a NodePort,
/// `clusterIP: None` when headless.
pub fn service(service: &Service) -> Value {
    let ips: Vec<String> = service.cluster_ips.iter().map(ToString::to_string).collect();
    let families: Vec<&str> = service.cluster_ips.iter().map(|ip| if ip.is_ipv4() { "IPv4" } else { "IPv6" }).collect();
    let ports: Vec<Value> = service
        .ports
        .iter()
        .map(|p| {
            let mut port = json!({"name": p.name, "protocol": p.protocol.kubernetes(), "port": p.port, "targetPort": p.target_port});
            if let Some(node_port) = p.node_port {
                port["nodePort"] = json!(node_port);
            }
            port
        })
        .collect();
    let selector: Vec<(&str, &str)> = service.selector.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let mut spec = json!({
        "type": if service.has_node_port() { "NodePort" } else { "ClusterIP" },
        "selector": labels(&selector),
        "ports": ports,
    });
    if service.is_headless() {
        spec["clusterIP"] = json!("None");
    } else {
        spec["clusterIP"] = json!(ips[0]);
        spec["clusterIPs"] = json!(ips);
        spec["ipFamilies"] = json!(families);
        spec["ipFamilyPolicy"] = json!(if ips.len() > 1 { "PreferDualStack" } else { "SingleStack" });
    }
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": service.name, "namespace": service.namespace, "uid": format!("uid-svc-{}-{}", service.namespace, service.name)},
        "spec": spec,
    })
}

/// The EndpointSlices of a lab [`Service`] as the EndpointSlice controller writes them: one per
/// address family its backends have (`<name>-v4`, `<name>-v6`), labelled
/// `kubernetes.io/service-name`, every backend ready on the lab node with a `targetRef` to its Pod.
pub fn endpoint_slices(service: &Service) -> Vec<Value> {
    let mut slices = Vec::new();
    for (family, suffix) in [("IPv4", "v4"), ("IPv6", "v6")] {
        let endpoints: Vec<Value> = service
            .backends
            .iter()
            .filter_map(|b| {
                let ip = if family == "IPv4" { Some(b.ipv4.to_string()) } else { b.ipv6.map(|ip| ip.to_string()) }?;
                Some(json!({
                    "addresses": [ip],
                    "conditions": {"ready": true, "serving": true, "terminating": false},
                    "nodeName": NODE_NAME,
                    "targetRef": {"kind": "Pod", "namespace": service.namespace, "name": b.name, "uid": b.uid},
                }))
            })
            .collect();
        // A family without backends gets no slice, except that a Service without any backend still
        // has its (empty) IPv4 slice, as the controller writes one.
        if endpoints.is_empty() && !(family == "IPv4" && service.backends.is_empty()) {
            continue;
        }
        let ports: Vec<Value> = service
            .ports
            .iter()
            .map(|p| json!({"name": p.name, "protocol": p.protocol.kubernetes(), "port": p.target_port}))
            .collect();
        slices.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{}-{suffix}", service.name),
                "namespace": service.namespace,
                "labels": {
                    "kubernetes.io/service-name": service.name,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": service.name,
                    "uid": format!("uid-svc-{}-{}", service.namespace, service.name), "controller": true}],
            },
            "addressType": family,
            "endpoints": endpoints,
            "ports": ports,
        }));
    }
    slices
}

/// The Service and its EndpointSlices.
pub fn service_objects(service: &Service) -> Vec<Value> {
    let mut objects = vec![self::service(service)];
    objects.extend(endpoint_slices(service));
    objects
}

/// The lab's Node object ([`NODE_NAME`]) with its primary addresses as `InternalIP`s.
pub fn node(node: &crate::Node) -> Value {
    let mut addresses = vec![json!({"type": "InternalIP", "address": node.ipv4().to_string()})];
    if let Some(v6) = node.ipv6() {
        addresses.push(json!({"type": "InternalIP", "address": v6.to_string()}));
    }
    addresses.push(json!({"type": "Hostname", "address": NODE_NAME}));
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": NODE_NAME, "uid": "uid-node-lab", "labels": {"kubernetes.io/hostname": NODE_NAME}},
        "status": {"addresses": addresses},
    })
}

/// Writes objects as one `List` JSON file.
pub fn write_list(path: &Path, items: Vec<Value>) -> std::io::Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(path, serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?)
}

/// The size of a generated cluster ([`cluster`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterSize {
    /// Pods, spread round-robin over namespaces, ReplicaSets and nodes.
    pub pods: usize,
    /// Namespaces (`ns-<i>`), half labelled `team: frontend`, half `backend`.
    pub namespaces: usize,
    /// NetworkPolicies (`allow-<i>`), one per ReplicaSet's app, round-robin over namespaces.
    pub policies: usize,
    /// Services (`app-<i>`) selecting the ReplicaSets' pods.
    pub services: usize,
    /// ReplicaSets (`app-<i>-7d9f8c6b5`), each owned by a Deployment.
    pub replicasets: usize,
    /// Nodes (`node-<i>`).
    pub nodes: usize,
}

impl ClusterSize {
    /// The scale the benchmarks use: 10,000 pods in 1,000 namespaces with
    /// 1,000 NetworkPolicies, 1,000 Services, 1,000 ReplicaSets, 100 nodes.
    pub const BENCH: Self =
        Self { pods: 10_000, namespaces: 1_000, policies: 1_000, services: 1_000, replicasets: 1_000, nodes: 100 };
}

/// Pod `index`'s IPv4 address in a generated cluster: 198.18.0.10 onwards
/// (198.18.0.0/15 holds 131,072 addresses).
pub fn cluster_pod_ip(index: usize) -> std::net::Ipv4Addr {
    let offset = u32::try_from(index).unwrap_or(0) + 10;
    std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0)) + offset)
}

/// A UUID-shaped uid: `kind` 1 for pods, 2 for ReplicaSets, 3 for Deployments.
pub fn cluster_uid(kind: u32, index: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{index:012x}")
}

/// Container `container` (0: `app`, 1: `proxy`) of pod `index`: 64 hex digits.
pub fn cluster_container_id(index: usize, container: usize) -> String {
    format!("{index:032x}{container:032x}")
}

/// The kubelet cgroupfs path of pod `index`'s `app` container, as the
/// observer reads it under the cgroup root.
pub fn cluster_cgroup_path(index: usize) -> String {
    format!("/kubepods/besteffort/pod{}/{}", cluster_uid(1, index), cluster_container_id(index, 0))
}

/// Pod `index` of a generated cluster, as a Deployment's ReplicaSet makes it,
/// with the status the kubelet reports (two containers, named ports).
pub fn cluster_pod(size: &ClusterSize, index: usize) -> Value {
    let namespace = format!("ns-{}", index % size.namespaces.max(1));
    let app = format!("app-{}", index % size.replicasets.max(1));
    let replicaset = format!("{app}-7d9f8c6b5");
    let ip = cluster_pod_ip(index).to_string();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": format!("{replicaset}-{index:05}"), "namespace": namespace, "uid": cluster_uid(1, index),
            "resourceVersion": format!("{}", 100_000 + index),
            "labels": {"app": app, "app.kubernetes.io/name": app, "app.kubernetes.io/component": "server",
                "pod-template-hash": "7d9f8c6b5", "tier": if index.is_multiple_of(10) { "model-server" } else { "web" }},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": replicaset,
                "uid": cluster_uid(2, index % size.replicasets.max(1)), "controller": true, "blockOwnerDeletion": true}]
        },
        "spec": {
            "nodeName": format!("node-{}", index % size.nodes.max(1)),
            "containers": [
                {"name": "app", "image": "registry.example/app:1.2.3",
                 "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                           {"name": "metrics", "containerPort": 9090}]},
                {"name": "proxy", "image": "registry.example/proxy:2", "ports": [{"containerPort": 15001}]}
            ]
        },
        "status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "containerStatuses": [
                {"name": "app", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                 "containerID": format!("containerd://{}", cluster_container_id(index, 0))},
                {"name": "proxy", "image": "i", "imageID": "", "ready": true, "restartCount": 0,
                 "containerID": format!("containerd://{}", cluster_container_id(index, 1))}
            ]
        }
    })
}

/// A typical allow policy: an app's pods take HTTP from a labelled
/// namespace's web pods, and send DNS to the cluster range and HTTP (8080)
/// to any pod. Every pod is selected by one, so a flow between pods is
/// allowed when its client is a `web` pod of a `frontend` namespace.
fn cluster_policy(size: &ClusterSize, index: usize) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": format!("allow-{index}"), "namespace": format!("ns-{}", index % size.namespaces.max(1)),
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}".repeat(200)}},
        "spec": {
            "podSelector": {"matchLabels": {"app": format!("app-{}", index % size.replicasets.max(1))}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "frontend"}},
                                   "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["web", "edge"]}]}}],
                         "ports": [{"protocol": "TCP", "port": "http"}, {"protocol": "TCP", "port": 9090}]}],
            "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.96.0.0/12"]}}],
                        "ports": [{"protocol": "UDP", "port": 53}]},
                       {"to": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 8080}]}]
        }
    })
}

/// A whole generated cluster as one `List`: what the inventory benchmark
/// loads and `cargo xtask bench memory` gives `observer run --manifests`.
pub fn cluster(size: &ClusterSize) -> Value {
    let mut items = Vec::new();
    items.extend((0..size.namespaces).map(|index| {
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": format!("ns-{index}"), "labels": {"team": if index.is_multiple_of(2) { "frontend" } else { "backend" }}}})
    }));
    items.extend((0..size.nodes).map(|index| {
        json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": format!("node-{index}")},
            "status": {"addresses": [{"type": "InternalIP", "address": format!("10.0.{}.{}", index / 250, index % 250 + 1)}]}})
    }));
    items.extend((0..size.services).map(|index| {
        json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("app-{index}"), "namespace": format!("ns-{}", index % size.namespaces.max(1))},
            "spec": {"clusterIP": format!("10.96.{}.{}", index / 250, index % 250 + 1), "selector": {"app": format!("app-{index}")}}})
    }));
    items.extend((0..size.replicasets).map(|index| {
        json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "metadata": {"name": format!("app-{index}-7d9f8c6b5"), "namespace": format!("ns-{}", index % size.namespaces.max(1)),
                "uid": cluster_uid(2, index),
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": format!("app-{index}"),
                    "uid": cluster_uid(3, index), "controller": true}]}})
    }));
    items.extend((0..size.policies).map(|index| cluster_policy(size, index)));
    items.extend((0..size.pods).map(|index| cluster_pod(size, index)));
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}
