//! Cluster inventory: Pods, Namespaces, NetworkPolicies, Services and Nodes,
//! from the API server or from manifest files, behind one interface.

pub mod manifests;
pub mod model;
