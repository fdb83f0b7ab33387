//! What the engine says about one flow.
//!
//! In: the policies that selected and allowed each end. Out: serializable
//! verdicts that explain themselves, naming each policy with the version of it
//! that was judged, for audit evidence.

use std::{fmt, sync::Arc};

use crate::inventory::ObjectRef;
pub use crate::inventory::object_ref::{ClusterRank, Tier};

/// What a ClusterNetworkPolicy rule does with the traffic it matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Action {
    /// Allowed; no later rule of any tier is consulted for this side.
    Accept,
    /// Denied; no later rule of any tier is consulted for this side.
    Deny,
    /// The rest of the tier is skipped; the next tier decides.
    Pass,
}

impl Action {
    /// `Accept`, `Deny` or `Pass`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accept => "Accept",
            Self::Deny => "Deny",
            Self::Pass => "Pass",
        }
    }
}

/// One ClusterNetworkPolicy rule that matched a flow on one side.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ClusterStep {
    /// The policy.
    pub policy: Arc<ObjectRef>,
    /// The rule's index in `spec.ingress` or `spec.egress`.
    pub rule: u32,
    /// The rule's `name`, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_name: Option<Arc<str>>,
    /// What the rule did.
    pub action: Action,
    /// Another policy of the same tier and priority whose rule also matched
    /// with a different action: the API leaves the choice between them to the
    /// implementation, so the verdict may differ from the network's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tied_with: Option<Arc<ObjectRef>>,
}

impl fmt::Display for ClusterStep {
    /// `cnp/<name>@<resourceVersion> rule <n> (<tier>, priority <p>): <action>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let policy = &self.policy;
        write!(f, "{policy}")?;
        if let Some(version) = &policy.resource_version {
            write!(f, "@{version}")?;
        }
        write!(f, " rule {}", self.rule)?;
        if let Some(name) = &self.rule_name {
            write!(f, " ({name:?})")?;
        }
        if let Some(rank) = policy.rank() {
            write!(f, " ({}, priority {})", rank.tier, rank.priority)?;
        }
        write!(f, ": {}", self.action.as_str())?;
        if let Some(tie) = &self.tied_with {
            write!(f, " (tied at the same priority with {tie}, which the API leaves to the implementation)")?;
        }
        Ok(())
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
    pub policies: Vec<Arc<ObjectRef>>,
    /// The ClusterNetworkPolicy rules that matched, in evaluation order: the
    /// Admin tier's (Passes, then the deciding Accept or Deny if any), then,
    /// when no NetworkPolicy isolates the side, the Baseline tier's. Empty
    /// when no ClusterNetworkPolicy rule matched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cluster: Vec<ClusterStep>,
    /// Why the side cannot be judged, when a `domainNames` rule would decide
    /// it and the flow has no DNS name: `allowed` is then false, and
    /// meaningless.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub undecidable: Option<String>,
}

impl SideVerdict {
    /// The Accept or Deny rule of a ClusterNetworkPolicy that decided the side, if one did.
    pub fn decided_by(&self) -> Option<&ClusterStep> {
        self.cluster.last().filter(|step| step.action != Action::Pass)
    }

    /// Whether NetworkPolicies were consulted: no Admin-tier rule decided.
    pub fn reached_network_policies(&self) -> bool {
        self.decided_by().is_none_or(|step| step.policy.rank().is_some_and(|rank| rank.tier == Tier::Baseline))
    }
}

impl SideVerdict {
    /// The side of an end that no policy can isolate.
    pub(crate) fn open() -> Self {
        Self { isolated: false, allowed: true, policies: Vec::new(), cluster: Vec::new(), undecidable: None }
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

impl Verdict {
    /// Why the flow cannot be judged (a side's `undecidable`), if it cannot.
    pub fn undecidable(&self) -> Option<&str> {
        self.egress.undecidable.as_deref().or(self.ingress.undecidable.as_deref())
    }
}
