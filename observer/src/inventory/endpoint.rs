//! What one end of a flow resolves to.
//!
//! In: what is known of one end (the inventory builds pods', Services' and
//! nodes' ends from its objects in [`super::model`]). Out: an [`Endpoint`],
//! built once per object and shared by every flow that resolves to it,
//! serialized as the `src`/`dst` enrichment of a flow record. Part of the
//! flow record's vocabulary ([`crate::flow`] carries it): it imports nothing
//! of the inventory's logic, so the record stays below the stages that fill
//! it in.

use std::{collections::BTreeMap, ops::Deref, sync::Arc};

use serde::{Serialize, Serializer};

use crate::rendered::RenderedJson;

/// What kind of thing is at one end of a flow: the one kind that
/// enrichment, intents, the judge, findings and the offline commands use.
// The order of the variants is the order governance keys sort by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointKind {
    /// A pod (including host-network pods found by cgroup).
    Pod,
    /// A Service, by ClusterIP.
    Service,
    /// A cluster node, by one of its addresses.
    Node,
    /// Anything outside the cluster.
    World,
    /// The local node itself: a process outside any pod.
    Host,
    /// The inventory has not finished its first sync, so nothing can be said.
    Unknown,
}

impl EndpointKind {
    /// The name records use (`pod`, `service`, `node`, `world`, `host`, `unknown`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pod => "pod",
            Self::Service => "service",
            Self::Node => "node",
            Self::World => "world",
            Self::Host => "host",
            Self::Unknown => "unknown",
        }
    }

    /// The kind a record names; absent or unrecognized reads as `Unknown`.
    pub fn from_record(name: Option<&str>) -> Self {
        match name {
            Some("pod") => Self::Pod,
            Some("service") => Self::Service,
            Some("node") => Self::Node,
            Some("world") => Self::World,
            Some("host") => Self::Host,
            _ => Self::Unknown,
        }
    }
}

/// The workload a pod belongs to, at the top of its ownerReference chain:
/// the one workload type of records, findings and the offline commands
/// ([`crate::intent::WorkloadName`] is its borrowed form, for judging
/// without allocating).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WorkloadRef {
    /// `Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`,
    /// `ReplicaSet`, another controller's kind, or `Pod` for a bare pod.
    pub kind: String,
    /// The workload's name.
    pub name: String,
}

/// A Service named at one end of a flow: the Service itself (kind
/// `service`), or the Service a pod was reached through.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
pub struct ServiceRef {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
}

/// The fields of an [`Endpoint`]; absent ones are left out of the JSON.
// In declaration order: `kind`, read for every record by the judge and the
// meter, then shares a cache line with the `Arc`'s counts, which enrichment
// touched when it cloned the endpoint into the record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[repr(C)]
pub struct EndpointInfo {
    /// What is at this end.
    pub kind: EndpointKind,
    /// Namespace of the pod or service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Pod uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// The Service: this end itself, or the one the flow was sent to before
    /// it reached this backend.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<ServiceRef>,
    /// Node name: the node itself, the local host, or the node a pod runs on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The pod's workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
    /// The pod's labels whose keys are configured, never all of them.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl EndpointInfo {
    /// Only `kind` set: the base the constructors fill in.
    pub(super) fn bare(kind: EndpointKind) -> Self {
        Self {
            kind,
            namespace: None,
            pod: None,
            uid: None,
            service: None,
            node: None,
            workload: None,
            labels: BTreeMap::new(),
        }
    }
}

/// One resolved end of a flow: cheap to clone (a shared pointer), immutable,
/// serialized as its [`EndpointInfo`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint(Arc<Shared>);

/// What an [`Endpoint`] points to.
#[derive(Debug, PartialEq, Eq)]
struct Shared {
    info: EndpointInfo,
    /// The info's JSON, for the flow log's lines that carry it.
    json: RenderedJson,
}

impl Deref for Endpoint {
    type Target = EndpointInfo;

    fn deref(&self) -> &EndpointInfo {
        &self.0.info
    }
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.info.serialize(serializer)
    }
}

impl From<EndpointInfo> for Endpoint {
    fn from(info: EndpointInfo) -> Self {
        Self(Arc::new(Shared { info, json: RenderedJson::default() }))
    }
}

impl Endpoint {
    /// This endpoint's JSON object, rendered once.
    pub fn json(&self) -> Result<&str, serde_json::Error> {
        self.0.json.get_or_render(&self.0.info)
    }

    /// Whether both are the very same endpoint (not merely equal).
    pub fn same(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The identity of this endpoint: equal for its clones, and for no other
    /// endpoint while one of them lives.
    pub fn identity(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    /// An end outside the cluster.
    pub fn world() -> Self {
        EndpointInfo::bare(EndpointKind::World).into()
    }

    /// Any end, before the inventory's first sync.
    pub fn unknown() -> Self {
        EndpointInfo::bare(EndpointKind::Unknown).into()
    }

    /// The local node itself, named if the node name is known.
    pub fn host(node: Option<&str>) -> Self {
        EndpointInfo { node: node.map(str::to_owned), ..EndpointInfo::bare(EndpointKind::Host) }.into()
    }

    /// This end (a backend: a pod, a node, an address) as reached through
    /// the Service `service` names; `self` when `service` names none.
    pub fn behind(&self, service: &Endpoint) -> Self {
        match &service.service {
            Some(named) => EndpointInfo { service: Some(named.clone()), ..self.0.info.clone() }.into(),
            None => self.clone(),
        }
    }

    /// A pod that a cgroup path names but the inventory does not hold (yet).
    pub fn unlisted_pod(uid: String) -> Self {
        EndpointInfo { uid: Some(uid), ..EndpointInfo::bare(EndpointKind::Pod) }.into()
    }
}
