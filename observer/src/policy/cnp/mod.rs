//! ClusterNetworkPolicies (`policy.networking.k8s.io/v1alpha2`, network-policy-api
//! v0.2.0): the Admin tier evaluated before NetworkPolicies, the Baseline tier after.
//!
//! In: ClusterNetworkPolicy objects, the namespaces' labels and the nodes'
//! labels and addresses. Out: the policies compiled and ordered for the engine
//! ([`super::PolicyEngine::with_cluster_policies`]), and a [`CnpError`] for
//! each object the API server would have refused.

pub mod api;
mod compile;
mod eval;
pub mod explain;

pub use api::ClusterNetworkPolicy;
pub use compile::{CnpError, CnpProblem};
pub(crate) use eval::{ClusterPolicies, Direction, NodeAddresses, PodKey, SideFlow, TierEnd};

use crate::inventory::model::Labels;

/// Compiles `policies` against the namespace labels `table` (by id): the
/// valid ones in evaluation order, and an error for each invalid one.
pub(crate) fn compile_all(
    policies: &[ClusterNetworkPolicy],
    table: &[Labels],
    nodes: Vec<NodeAddresses>,
) -> (ClusterPolicies, Vec<CnpError>) {
    let mut compiled = Vec::new();
    let mut errors = Vec::new();
    for (index, policy) in policies.iter().enumerate() {
        match compile::compile(policy, table) {
            Ok(policy) => compiled.push(policy),
            Err((field, problem)) => {
                errors.push(CnpError { index, name: policy.metadata.name.clone().unwrap_or_default(), field, problem })
            }
        }
    }
    (ClusterPolicies::new(compiled, nodes), errors)
}
