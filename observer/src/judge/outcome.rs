//! The policy side of a verdict, shared by the judge ([`super::decide`]),
//! the ClusterNetworkPolicy explanation ([`super::cluster`]) and the open
//! flows' record ([`super::open`]). In: nothing; out: the types.

use super::verdict::PolicyCite;

/// What the policies say of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// They allow it.
    Allowed,
    /// They deny it.
    Denied,
    /// They cannot be applied to what the observer saw (a `domainNames`
    /// rule and no DNS name): neither allowed nor denied.
    Undecidable,
}

/// The policy side of a verdict: what the policies in effect say of a
/// flow's ends, port and protocol, whatever its evidence. The judge stage
/// keeps the one a flow started under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PolicyOutcome {
    /// Whether the policies allow the flow, deny it, or cannot tell.
    pub(crate) decision: Decision,
    /// The policies that allowed it, or those isolating the side that denied it.
    pub(crate) policies: Vec<PolicyCite>,
    /// Why, in words.
    pub(crate) reason: String,
}
