//! The kinds of object the inventory holds, as sources list and watch them.
//!
//! In: nothing. Out: [`Resource`], named as in metrics, logs and `/healthz`,
//! with which of them make the inventory ready.

/// The kinds of object a source lists and watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// Pods.
    Pods,
    /// Namespaces.
    Namespaces,
    /// NetworkPolicies.
    NetworkPolicies,
    /// Services.
    Services,
    /// Nodes.
    Nodes,
    /// ReplicaSets (for the Deployment above a pod).
    ReplicaSets,
    /// Jobs (for the CronJob above a pod).
    Jobs,
    /// Other workload controllers, read from manifests only.
    Controllers,
    /// EndpointSlices (the ready backends of Services).
    EndpointSlices,
    /// FlowIntents (`ai.governance`), for the judge; the CRD may be absent.
    FlowIntents,
    /// ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`), for the
    /// judge; the CRD may be absent.
    ClusterNetworkPolicies,
}

impl Resource {
    /// Resources whose first full list makes the inventory ready. ReplicaSets
    /// and Jobs only sharpen workload names, so a node without the right to
    /// list them still becomes ready; FlowIntents and ClusterNetworkPolicies
    /// are custom resources whose CRDs a cluster may not have.
    pub const REQUIRED: [Resource; 5] =
        [Resource::Pods, Resource::Namespaces, Resource::NetworkPolicies, Resource::Services, Resource::Nodes];

    /// Lower-case plural name, as in metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pods => "pods",
            Self::Namespaces => "namespaces",
            Self::NetworkPolicies => "networkpolicies",
            Self::Services => "services",
            Self::Nodes => "nodes",
            Self::ReplicaSets => "replicasets",
            Self::Jobs => "jobs",
            Self::Controllers => "controllers",
            Self::EndpointSlices => "endpointslices",
            Self::FlowIntents => "flowintents",
            Self::ClusterNetworkPolicies => "clusternetworkpolicies",
        }
    }

    /// Where a workload controller of `kind` is listed.
    pub fn of_workload_kind(kind: &str) -> Self {
        match kind {
            "ReplicaSet" => Self::ReplicaSets,
            "Job" => Self::Jobs,
            _ => Self::Controllers,
        }
    }
}
