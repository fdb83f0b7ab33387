//! What the engine says about one flow.
//!
//! In: the policies that selected and allowed each end. Out: serializable
//! verdicts that explain themselves, naming each policy with the version of it
//! that was judged, for audit evidence.

use std::{fmt, sync::Arc};

/// A policy that took part in a verdict, with the version judged.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PolicyRef {
    /// `metadata.namespace` (`default` when absent).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `metadata.resourceVersion`, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// `metadata.generation`, if set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
}

impl fmt::Display for PolicyRef {
    /// `namespace/name`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The judgement of one side (the source's egress or the destination's ingress).
///
/// An end outside the cluster has no side: it shows as not isolated, allowed,
/// with no policies, exactly like a pod that no policy isolates.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SideVerdict {
    /// Whether a policy with this side's policy type selects the pod.
    pub isolated: bool,
    /// Whether this side lets the flow through: not isolated, or allowed by a policy.
    pub allowed: bool,
    /// Every policy that allowed the flow on this side, in compile order; empty
    /// when the side is not isolated or when none did.
    pub policies: Vec<Arc<PolicyRef>>,
}

impl SideVerdict {
    /// The side of an end that no policy can isolate.
    pub(crate) fn open() -> Self {
        Self { isolated: false, allowed: true, policies: Vec::new() }
    }
}

/// The judgement of one flow.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    /// Whether both sides allow the flow.
    pub allowed: bool,
    /// The source pod's egress side.
    pub egress: SideVerdict,
    /// The destination pod's ingress side.
    pub ingress: SideVerdict,
}
