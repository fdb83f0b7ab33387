//! Test builders shared by the unit tests in `src/` and the integration
//! tests in `observer/tests/` and `tests/` (the `test-support` feature).
//!
//! In: a name and chained settings. Out: lean inventory values (pods,
//! namespaces, Services, EndpointSlices, nodes) and NetworkPolicies, with
//! defaults each caller overrides where its tests need another; a manifest
//! folder for the standalone inventory ([`ManifestDir`]); capture's record
//! of a connection ([`socket_record`], or as a plain value: [`tcp_record`])
//! and a conntrack table of plain values
//! ([`ConntrackTable`]) for the enrich and judge stages.

use std::{
    collections::HashMap,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use observer_common::{FAMILY_IPV4, FlowKey, FlowStats, INITIATOR_LOCAL, PROTO_TCP};

use crate::{
    backends::Lookup,
    capture::{build_record, clock::Clock, table::Emission},
    conntrack::{ConntrackError, Tuple},
    flow::{Cgroup, Family, FlowRecord, FlowState, LocalEnd, Peer, Progress, Protocol, RecordEvent, Traffic},
    inventory::model::{ContainerPort, EndpointSlice, Labels, Namespace, Node, OwnerRef, Pod, Service, ServicePort},
};

/// An address; panics on a malformed one (a test's own typo).
pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap_or_else(|error| panic!("{text}: {error}"))
}

/// A socket address (`ip:port`, `[ipv6]:port`); panics on a malformed one.
pub fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap_or_else(|error| panic!("{text}: {error}"))
}

/// Capture's record of flow `flow` from `src` to `dst` (socket addresses)
/// over `protocol`, seen at the source now, started 5 ms ago, `active`: the
/// flow's first record unless `event` is an update.
pub fn socket_record(src: &str, dst: &str, protocol: u8, flow: u64, event: RecordEvent) -> FlowRecord {
    let key = FlowKey { protocol: PROTO_TCP, family: FAMILY_IPV4, ..FlowKey::default() };
    let stats = FlowStats { initiator: INITIATOR_LOCAL, ..FlowStats::default() };
    let emission = Emission { key, stats, event, state: FlowState::Active, flow, reported: None };
    let mut record = build_record(&emission, SystemTime::now(), &Clock::new(), None, &Arc::from("node-1"));
    let (src, dst) = (addr(src), addr(dst));
    (record.src.ip, record.src.port, record.dst.ip, record.dst.port) =
        (src.ip(), Some(src.port()), dst.ip(), Some(dst.port()));
    record.protocol = Protocol(protocol);
    record.first_seen = SystemTime::now() - Duration::from_millis(5);
    record.progress.first = event != RecordEvent::Update;
    record
}

/// One end of a flow at `address` (`ip:port`), not enriched.
pub fn peer(address: &str) -> Peer {
    let address = addr(address);
    Peer { ip: address.ip(), port: Some(address.port()), endpoint: None, backend: None, dns: None, ai: None }
}

/// A TCP record from `src` to `dst` (`ip:port`, not enriched) at `at`, as
/// the node of the source (`node-1`, cgroup 7) writes it: `closed` for an
/// end record, else `established`; no traffic, no verdict, flow id 0. Set
/// what a test needs with `FlowRecord { .., ..tcp_record(..) }`.
pub fn tcp_record(src: &str, dst: &str, event: RecordEvent, at: SystemTime) -> FlowRecord {
    let (src, dst) = (peer(src), peer(dst));
    FlowRecord {
        time: at,
        event,
        node: Arc::from("node-1"),
        protocol: Protocol(PROTO_TCP),
        family: if src.ip.is_ipv4() { Family::Ipv4 } else { Family::Ipv6 },
        src,
        dst,
        local: LocalEnd::Src,
        icmp: None,
        cgroup: Cgroup { id: 7, path: None },
        state: if event == RecordEvent::End { FlowState::Closed } else { FlowState::Established },
        to_dst: Traffic::default(),
        to_src: Traffic::default(),
        tcp_flags: None,
        first_seen: at,
        last_seen: at,
        duration_ms: 0,
        verdict: None,
        verdict_now: None,
        progress: Progress::default(),
    }
}

/// A conntrack table of plain values, for the enricher's backends: the
/// backend each connection was sent to, or the kernel's error for it. Counts
/// the lookups it answers; its clones share the table and the count.
#[derive(Clone, Debug, Default)]
pub struct ConntrackTable {
    entries: Arc<Mutex<HashMap<Tuple, Result<SocketAddr, i32>>>>,
    lookups: Arc<Mutex<u32>>,
}

impl ConntrackTable {
    /// With the connection from `src` to `dst` over `protocol` sent to the
    /// backend `answer` (or failing with that errno).
    pub fn with(self, src: &str, dst: &str, protocol: u8, answer: Result<&str, i32>) -> Self {
        let tuple = Tuple::new(protocol, addr(src), addr(dst)).expect("same family");
        self.entries.lock().expect("lock").insert(tuple, answer.map(addr));
        self
    }

    /// The lookups answered so far.
    pub fn lookups(&self) -> u32 {
        *self.lookups.lock().expect("lock")
    }
}

impl Lookup for ConntrackTable {
    fn lookup(&mut self, tuple: &Tuple) -> Result<Option<SocketAddr>, ConntrackError> {
        *self.lookups.lock().expect("lock") += 1;
        match self.entries.lock().expect("lock").get(tuple) {
            None => Ok(None),
            Some(Ok(at)) => Ok(Some(*at)),
            Some(Err(errno)) => Err(ConntrackError::Kernel { errno: *errno }),
        }
    }
}

/// Starts a pod named `name` in namespace `default` with uid `uid-<name>`,
/// running, on no node.
pub fn pod(name: &str) -> PodBuilder {
    PodBuilder(Pod {
        uid: format!("uid-{name}"),
        namespace: "default".to_owned(),
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

/// Builds a [`Pod`]: `pod("web-1").ns("shop").ip("198.18.0.5").label("app", "web")`.
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

    /// Sets `metadata.resourceVersion`.
    pub fn resource_version(mut self, version: &str) -> Self {
        self.0.resource_version = Some(version.to_owned());
        self
    }

    /// Sets the node it runs on.
    pub fn node(mut self, node: &str) -> Self {
        self.0.node_name = Some(node.to_owned());
        self
    }

    /// Adds an IP.
    pub fn ip(mut self, address: &str) -> Self {
        self.0.ips.push(ip(address));
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0.labels.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Sets the AI tier label (`ai.governance/tier`).
    pub fn tier(self, tier: &str) -> Self {
        self.label("ai.governance/tier", tier)
    }

    /// Adds a named container port.
    pub fn port(mut self, name: &str, port: u16, protocol: Protocol) -> Self {
        self.0.container_ports.push(ContainerPort { name: Some(name.to_owned()), port, protocol });
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

/// A namespace with labels, its `kubernetes.io/metadata.name` label added
/// as the API server adds it.
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
    .unwrap_or_else(|error| panic!("NetworkPolicy {namespace}/{name}: {error}"))
}

/// A ClusterIP service with one unnamed TCP port 80.
pub fn service(namespace: &str, name: &str, address: &str) -> Service {
    Service {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        cluster_ips: vec![ip(address)],
        selector: Labels::new(),
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
        ready: ready.iter().map(|address| ip(address)).collect(),
    }
}

/// A node with one address.
pub fn node(name: &str, address: &str) -> Node {
    Node { name: name.to_owned(), ips: vec![ip(address)], labels: Labels::new() }
}

/// A folder of manifests for a standalone inventory, under the system's
/// temporary folder, removed on drop (a failing test's too).
#[derive(Debug)]
pub struct ManifestDir(PathBuf);

impl ManifestDir {
    /// An empty folder `observer-<name>-<pid>`: `name` tells the tests of
    /// one binary apart, the process id the binaries.
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!("observer-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        Self(path)
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `text` to `name` in the folder (creating the folders it
    /// names); returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|error| panic!("{}: {error}", parent.display()));
        }
        fs::write(&path, text).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
        path
    }
}

impl Drop for ManifestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
