//! The policy outcome of a flow that ClusterNetworkPolicies took part in.
//!
//! In: the engine's tiered [`Verdict`] and the flow's ends. Out: a
//! [`PolicyOutcome`] whose reason gives each side's chain (Admin rules,
//! NetworkPolicies, Baseline rules) and whose cites name every policy of it,
//! ClusterNetworkPolicies with their tier. A flow that a `domainNames` rule
//! would decide without a DNS name to match is neither allowed nor denied:
//! its decision is [`Decision::Undecidable`] and its reason says why.

use super::{
    input::JudgeInput,
    outcome::{Decision, PolicyOutcome},
    verdict::PolicyCite,
};
use crate::{
    intent::FlowEnd,
    policy::{PolicyEngine, SideVerdict, Verdict, cnp::explain},
};

/// Whether ClusterNetworkPolicies took part in `verdict`.
pub(super) fn involved(verdict: &Verdict) -> bool {
    !verdict.egress.cluster.is_empty() || !verdict.ingress.cluster.is_empty() || verdict.undecidable().is_some()
}

/// The outcome of a verdict ClusterNetworkPolicies took part in.
pub(super) fn outcome(engine: &PolicyEngine, input: &JudgeInput<'_>, verdict: &Verdict) -> PolicyOutcome {
    let mut reasons = Vec::new();
    let mut cites = Vec::new();
    let mut side = |direction: &str, end: &FlowEnd<'_>, side: &SideVerdict| {
        let Some(pod) = end.pod.filter(|pod| !pod.host_network) else { return };
        // A denied flow cites only what denied it; an allowed one everything.
        if !verdict.allowed && side.allowed && side.undecidable.is_none() {
            return;
        }
        let isolation = engine.isolating(pod);
        let isolating = if direction == "egress" { isolation.egress } else { isolation.ingress };
        reasons.push(format!("{direction} of {}/{}: {}", pod.namespace, pod.name, explain::chain(side, &isolating)));
        for policy in explain::cited(side, &isolating) {
            if !cites.iter().any(|cite: &PolicyCite| cite.0 == policy) {
                cites.push(PolicyCite(policy));
            }
        }
    };
    side("egress", &input.src, &verdict.egress);
    side("ingress", &input.dst, &verdict.ingress);
    let reason = reasons.join("; ");
    let decision = match (verdict.undecidable(), verdict.allowed) {
        // Never guessed: neither a denial nor an allowance.
        (Some(_), _) => Decision::Undecidable,
        (None, true) => Decision::Allowed,
        (None, false) => Decision::Denied,
    };
    let reason = match decision {
        Decision::Undecidable => format!("undecidable: {reason}"),
        Decision::Allowed | Decision::Denied => reason,
    };
    PolicyOutcome { decision, policies: cites, reason }
}
