//! Builder fixtures shared by the policy tests: pods, namespaces and policies
//! as plain values.

#![allow(dead_code, reason = "each test crate uses a different part of the fixtures")]

use std::net::IpAddr;

use k8s_openapi::api::networking::v1::NetworkPolicy;
use observer::{
    inventory::model::{ContainerPort, Labels, Namespace, Pod, Protocol},
    policy::{Endpoint, PolicyEngine, Verdict},
};

/// A pod builder: `pod("shop", "web").label("app", "web").ip("198.18.0.5")`.
pub struct PodBuilder(Pod);

pub fn pod(namespace: &str, name: &str) -> PodBuilder {
    PodBuilder(Pod {
        uid: format!("{namespace}-{name}"),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        labels: Labels::new(),
        resource_version: None,
        owner: None,
        ips: Vec::new(),
        host_network: false,
        node_name: None,
        container_ports: Vec::new(),
        container_ids: Vec::new(),
        phase: Some("Running".to_owned()),
    })
}

impl PodBuilder {
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    pub fn ip(mut self, ip: &str) -> Self {
        self.0.ips.push(ip.parse().expect("valid IP"));
        self
    }

    pub fn port(mut self, name: &str, port: u16, protocol: Protocol) -> Self {
        self.0.container_ports.push(ContainerPort { name: Some(name.to_owned()), port, protocol });
        self
    }

    pub fn host_network(mut self) -> Self {
        self.0.host_network = true;
        self
    }

    pub fn build(self) -> Pod {
        self.0
    }
}

/// A namespace with labels (its `kubernetes.io/metadata.name` label added).
pub fn namespace(name: &str, labels: &[(&str, &str)]) -> Namespace {
    let mut labels: Labels = labels.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect();
    labels.insert("kubernetes.io/metadata.name".to_owned(), name.to_owned());
    Namespace { name: name.to_owned(), labels, resource_version: None }
}

/// A NetworkPolicy named `name` in `namespace` with `spec`.
pub fn policy(namespace: &str, name: &str, spec: serde_json::Value) -> NetworkPolicy {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"namespace": namespace, "name": name},
        "spec": spec,
    }))
    .expect("valid NetworkPolicy")
}

/// Compiles policies that must all be valid.
pub fn engine(policies: &[NetworkPolicy], namespaces: &[Namespace]) -> PolicyEngine {
    let (engine, errors) = PolicyEngine::compile(policies, namespaces);
    assert!(errors.is_empty(), "unexpected policy errors: {errors:?}");
    assert_eq!(engine.len(), policies.len());
    engine
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().expect("valid IP")
}

/// A TCP verdict between two pods; the same verdict, checked, as with the
/// engine's pod index (the daemon's path).
pub fn tcp(engine: &PolicyEngine, source: &Pod, destination: &Pod, port: u16) -> Verdict {
    let verdict = engine.verdict(Endpoint::pod(source), Endpoint::pod(destination), port, Protocol::TCP);
    let (source, destination) = (std::sync::Arc::new(source.clone()), std::sync::Arc::new(destination.clone()));
    let mut indexed = engine.clone();
    indexed.index_pods([source.clone(), destination.clone()]);
    assert_eq!(indexed.indexed_pods(), 2);
    let with_index = indexed.verdict(Endpoint::pod(&source), Endpoint::pod(&destination), port, Protocol::TCP);
    assert_eq!(with_index, verdict, "the pod index changes no verdict");
    verdict
}

/// `namespace/name` of each policy that allowed a side.
pub fn names(policies: &[std::sync::Arc<observer::inventory::ObjectRef>]) -> Vec<String> {
    policies.iter().map(ToString::to_string).collect()
}
