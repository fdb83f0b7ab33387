//! Test fixtures: builders for lean inventory objects.
//!
//! In: a name and chained settings. Out: `model` values for unit tests.

use std::net::IpAddr;

use super::model::{ContainerPort, EndpointSlice, Node, OwnerRef, Pod, Protocol, Service, ServicePort};

/// Starts a pod named `name` in namespace `default` with uid `uid-<name>`.
pub fn pod(name: &str) -> PodBuilder {
    PodBuilder(Pod {
        uid: format!("uid-{name}"),
        namespace: "default".to_owned(),
        name: name.to_owned(),
        labels: Default::default(),
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

/// Builds a [`Pod`].
pub struct PodBuilder(Pod);

impl PodBuilder {
    /// Sets the namespace.
    pub fn ns(mut self, namespace: &str) -> Self {
        self.0.namespace = namespace.to_owned();
        self
    }

    /// Sets the uid.
    pub fn uid(mut self, uid: &str) -> Self {
        self.0.uid = uid.to_owned();
        self
    }

    /// Adds an IP.
    pub fn ip(mut self, ip: &str) -> Self {
        self.0.ips.push(ip.parse::<IpAddr>().unwrap_or_else(|error| panic!("{ip}: {error}")));
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets the controller ownerReference (uid `uid-<name>`).
    pub fn owner(mut self, kind: &str, name: &str) -> Self {
        self.0.owner = Some(OwnerRef { kind: kind.to_owned(), name: name.to_owned(), uid: format!("uid-{name}") });
        self
    }

    /// Marks it host-network.
    pub fn host_network(mut self) -> Self {
        self.0.host_network = true;
        self
    }

    /// Adds a container id.
    pub fn container(mut self, id: &str) -> Self {
        self.0.container_ids.push(id.to_owned());
        self
    }

    /// Sets `status.phase`.
    pub fn phase(mut self, phase: &str) -> Self {
        self.0.phase = Some(phase.to_owned());
        self
    }

    /// The pod.
    pub fn build(self) -> Pod {
        self.0
    }
}

/// A ClusterIP service.
pub fn service(namespace: &str, name: &str, ip: &str) -> Service {
    Service {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        cluster_ips: vec![ip.parse().unwrap_or_else(|error| panic!("{ip}: {error}"))],
        selector: Default::default(),
        ports: vec![ServicePort { name: None, port: 80, protocol: Protocol::TCP, node_port: None }],
    }
}

/// The EndpointSlice of Service `namespace/service` with its single port
/// (unnamed, TCP) at `port` on the ready addresses `ready`.
pub fn slice(namespace: &str, service: &str, port: u16, ready: &[&str]) -> EndpointSlice {
    EndpointSlice {
        namespace: namespace.to_owned(),
        name: format!("{service}-{}", ready.len()),
        service: Some(service.to_owned()),
        ports: vec![ContainerPort { name: None, port, protocol: Protocol::TCP }],
        ready: ready.iter().map(|ip| ip.parse().unwrap_or_else(|error| panic!("{ip}: {error}"))).collect(),
    }
}

/// A node with one address.
pub fn node(name: &str, ip: &str) -> Node {
    Node {
        name: name.to_owned(),
        ips: vec![ip.parse().unwrap_or_else(|error| panic!("{ip}: {error}"))],
        labels: crate::inventory::model::Labels::new(),
    }
}
