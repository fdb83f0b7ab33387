//! One side's decision through the tiers, in words.
//!
//! In: a [`SideVerdict`] and the NetworkPolicies isolating its pod. Out: the
//! chain, for example `passed by cnp/p@7 rule 0 (Admin, priority 1): Pass,
//! then allowed by networkpolicy ai/np`, which the judge's reasons and
//! `observer policy check` print.

use std::sync::Arc;

use crate::{
    inventory::ObjectRef,
    policy::verdict::{Action, SideVerdict, Tier},
};

fn names(policies: &[Arc<ObjectRef>]) -> String {
    policies.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// The chain that decided `side`; `isolating` are the NetworkPolicies that
/// isolate its pod for the side's direction (named when none allows).
pub fn chain(side: &SideVerdict, isolating: &[Arc<ObjectRef>]) -> String {
    let tier_of = |step: &crate::policy::verdict::ClusterStep| step.policy.rank().map(|rank| rank.tier);
    let step_text = |step: &crate::policy::verdict::ClusterStep| match step.action {
        Action::Pass => format!("passed by {step}"),
        Action::Accept | Action::Deny => step.to_string(),
    };
    let mut parts: Vec<String> =
        side.cluster.iter().filter(|step| tier_of(step) == Some(Tier::Admin)).map(step_text).collect();
    if side.reached_network_policies() {
        if side.isolated {
            parts.push(if side.allowed {
                format!("allowed by networkpolicy {}", names(&side.policies))
            } else {
                format!("isolated by networkpolicy {} and none allows it", names(isolating))
            });
        } else {
            parts.extend(side.cluster.iter().filter(|step| tier_of(step) == Some(Tier::Baseline)).map(step_text));
            if side.decided_by().is_none() {
                parts.push("no policy decides: allowed by default".to_owned());
            }
        }
    }
    let mut text = parts.join(", then ");
    if let Some(why) = &side.undecidable {
        text.push_str("; undecidable: ");
        text.push_str(why);
    }
    text
}

/// The policies a side's decision cites: the ClusterNetworkPolicies of its
/// chain (Passes included), then the NetworkPolicies that allowed it, or
/// `isolating` when it was denied at the NetworkPolicy tier.
pub fn cited(side: &SideVerdict, isolating: &[Arc<ObjectRef>]) -> Vec<Arc<ObjectRef>> {
    let mut cited: Vec<Arc<ObjectRef>> = Vec::new();
    let admin = side.cluster.iter().filter(|step| step.policy.rank().is_some_and(|rank| rank.tier == Tier::Admin));
    cited.extend(admin.map(|step| Arc::clone(&step.policy)));
    if side.reached_network_policies() && side.isolated {
        cited.extend(
            if side.allowed { side.policies.iter().cloned() } else { isolating.iter().cloned() }.collect::<Vec<_>>(),
        );
    }
    let baseline =
        side.cluster.iter().filter(|step| step.policy.rank().is_some_and(|rank| rank.tier == Tier::Baseline));
    cited.extend(baseline.map(|step| Arc::clone(&step.policy)));
    cited.dedup();
    cited
}
