//! AI tiers and FlowIntents: what the traffic of AI workloads is meant to look like.
//!
//! In: the tier configuration, `FlowIntent` objects (from manifests or the
//! API server) and Namespaces. Out: an [`IntentIndex`] that gives a pod its
//! [`Tier`], says which intent rule a flow breaks, and lists the isolation
//! and new-connection limits intents set on a pod. Intents that fail
//! validation are reported one by one ([`IntentError`]) and the rest apply.

mod compile;
mod end;
mod index;
pub mod load;
pub mod resource;
pub mod tier;
mod tiers;

pub use compile::{IntentError, IntentProblem};
pub use end::{FlowEnd, WorkloadName};
pub use index::{IntentConfig, IntentIndex, IntentViolation, IsolationRequirement, RateLimit};
pub use load::LoadedIntents;
pub use resource::{
    EgressIntent, FlowIntent, FlowIntentSpec, GROUP, IntentPeer, IntentPort, IsolationIntent, KIND, PLURAL, Subject,
    VERSION, crd_yaml,
};
pub use tier::{DEFAULT_TIER_LABEL, InvalidTier, KNOWN_TIERS, Tier};
pub use tiers::{TierConfig, TierConfigError, TierSelector, Tiers};
