//! NetworkPolicy verdicts: which declared policies allow or deny a flow.
//!
//! In: `networking.k8s.io/v1` NetworkPolicies and Namespaces from the
//! inventory, then flows between pods and outside addresses. Out: a
//! [`Verdict`] per flow that names, for each side, whether the pod is isolated
//! and which policies allowed the flow. [`check`] is the `observer policy`
//! command line on top of it.

pub mod check;
mod cidr;
pub mod cnp;
mod compiled;
mod engine;
mod error;
mod fasthash;
mod selector;
mod verdict;

pub use cidr::CidrError;
// The intent rules match peers the way NetworkPolicies do.
pub(crate) use cidr::Cidr;
pub use engine::{Endpoint, Guardrails, Isolation, PolicyEngine};
pub use error::{PolicyError, Problem};
pub(crate) use selector::Selector;
pub use verdict::{Action, ClusterRank, ClusterStep, SideVerdict, Tier, Verdict};
