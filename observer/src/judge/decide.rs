//! The judge: policy verdict, delivery evidence and intents combined.
//!
//! In: a [`JudgeInput`] per flow; per AI-tier pod, the pod itself. Out: a
//! [`FlowVerdict`] per flow and an [`Unprotected`] per AI-tier pod that
//! policies do not isolate as required.
//!
//! Precedence, from strongest: `enforcement-gap` (policies deny, delivered),
//! `denied-attempt` (policies deny, not delivered), `intent-violation`
//! (policies allow, an intent forbids), `allowed`. A flow the policies can
//! neither allow nor deny (a ClusterNetworkPolicy `domainNames` rule and no
//! DNS name for the destination) is `undecidable`, or `intent-violation`
//! when an intent forbids it: never guessed a gap or an attempt. When policies deny a flow
//! that also breaks an intent, the policy verdict is reported because it says
//! more: a gap is a broken control that lets every such flow through, the
//! intent breach being one of its consequences; a denied attempt means the
//! intent held. The intent rule is still named in the verdict (`intent`) and
//! its reason appended.

use std::{fmt::Write as _, sync::Arc};

use super::{
    delivery::delivery,
    input::JudgeInput,
    outcome::{Decision, PolicyOutcome},
    rate::RateTracker,
    verdict::{Delivery, FlowVerdict, IntentCite, PolicyCite, VerdictKind},
};
use crate::{
    intent::{FlowEnd, IntentIndex, IntentViolation, IsolationIntent, Tier},
    inventory::{
        EndpointKind, ObjectRef,
        model::{Pod, Protocol},
    },
    policy::{Endpoint, PolicyEngine},
    rendered::RenderedJson,
};

/// Settings of the judge.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JudgeConfig {
    /// Directions every AI-tier pod must be isolated for, besides what its
    /// intents require. With neither, an AI-tier pod is unprotected only when
    /// no policy isolates it in any direction. Default: neither.
    pub required_isolation: IsolationIntent,
    /// Most (intent, pod) pairs whose new-connection rate is tracked; the
    /// least recently active are forgotten. Default: 65536.
    pub max_rate_trackers: usize,
}

impl Default for JudgeConfig {
    fn default() -> Self {
        Self { required_isolation: IsolationIntent::default(), max_rate_trackers: 65_536 }
    }
}

/// Counts of what the judge decided, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JudgeStats {
    /// Flows judged `allowed`.
    pub allowed: u64,
    /// Flows judged `denied-attempt`.
    pub denied_attempts: u64,
    /// Flows judged `enforcement-gap`.
    pub enforcement_gaps: u64,
    /// Flows judged `intent-violation`.
    pub intent_violations: u64,
    /// Flows judged `undecidable`.
    pub undecidable: u64,
    /// Flows that broke an intent, whatever their verdict.
    pub intent_breaches: u64,
    /// Rate trackers forgotten because the cap was reached.
    pub rate_trackers_evicted: u64,
}

/// An AI-tier pod that NetworkPolicies do not isolate as required.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unprotected {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub pod: String,
    /// Its uid.
    pub uid: String,
    /// Its tier.
    pub tier: Tier,
    /// Whether an Ingress NetworkPolicy selects it, or a ClusterNetworkPolicy
    /// with a `Deny` ingress rule.
    pub ingress_isolated: bool,
    /// Whether an Egress NetworkPolicy selects it, or a ClusterNetworkPolicy
    /// with a `Deny` egress rule.
    pub egress_isolated: bool,
    /// The intents that require the isolation it lacks (empty: the judge's own rule).
    pub required_by: Vec<Arc<ObjectRef>>,
    /// Why, in words.
    pub reason: String,
}

/// Judges flows and pods against the current policies and intents.
#[derive(Debug)]
pub struct Judge {
    policy: Arc<PolicyEngine>,
    intents: Arc<IntentIndex>,
    config: JudgeConfig,
    rates: RateTracker,
    stats: JudgeStats,
    /// This node's name: a pod of another node is not on this node. `None`
    /// (standalone mode): every pod is.
    node: Option<Arc<str>>,
}

fn name_policies(policies: &[Arc<ObjectRef>]) -> String {
    policies.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}

/// An end as NetworkPolicies see it. A Service end never gets here: policies
/// apply at its backends, which [`Judge::flow`] judges instead
/// (`judge/service.rs`), so a ClusterIP is never taken for an outside address.
fn policy_endpoint<'a>(end: &FlowEnd<'a>) -> Endpoint<'a> {
    match (end.kind, end.pod) {
        (EndpointKind::Pod, Some(pod)) => Endpoint::Pod { pod, ip: Some(end.ip) },
        _ => Endpoint::External(end.ip),
    }
}

/// Whether `end` is this node for NetworkPolicy: a process outside any pod
/// (or an address of the node, which enrichment resolves to it), or a
/// host-network pod, found by its cgroup and so on this node.
fn is_this_node(end: &FlowEnd<'_>) -> bool {
    end.kind == EndpointKind::Host || (end.kind == EndpointKind::Pod && end.pod.is_some_and(|pod| pod.host_network))
}

impl Judge {
    /// A judge of the given policies and intents.
    pub fn new(policy: Arc<PolicyEngine>, intents: Arc<IntentIndex>, config: JudgeConfig) -> Self {
        let rates = RateTracker::new(config.max_rate_trackers);
        Self { policy, intents, config, rates, stats: JudgeStats::default(), node: None }
    }

    /// The judge of the node named `node`, whose own traffic with its pods
    /// is always allowed; `None` (standalone mode) takes every pod to be on
    /// this node.
    #[must_use]
    pub fn on_node(mut self, node: Option<&str>) -> Self {
        self.node = node.map(Arc::from);
        self
    }

    /// Whether `pod` runs on this node.
    fn here(&self, pod: &Pod) -> bool {
        match (&self.node, &pod.node_name) {
            (Some(node), Some(name)) => **node == **name,
            _ => true,
        }
    }

    /// The policy outcome of traffic with this node: NetworkPolicy always
    /// allows traffic between a pod and the node it runs on (a pod cannot
    /// block its node: kubelet's probes come from there), in both
    /// directions, whatever policies select the pod, and a host-network pod
    /// is the node. `None` when neither end is this node, or the other end is
    /// a pod of another node (judged by `ipBlock`, as any address).
    fn node_outcome(&self, input: &JudgeInput<'_>) -> Option<PolicyOutcome> {
        let (src, dst) = (is_this_node(&input.src), is_this_node(&input.dst));
        let (node, other) = match (src, dst) {
            (false, false) => return None,
            (true, true) => {
                let reason = "both ends are this node (host network or the node itself): NetworkPolicies do not apply";
                return Some(PolicyOutcome {
                    decision: Decision::Allowed,
                    policies: Vec::new(),
                    reason: reason.to_owned(),
                });
            }
            (true, false) => (&input.src, &input.dst),
            (false, true) => (&input.dst, &input.src),
        };
        let pod = other.pod.filter(|pod| other.kind == EndpointKind::Pod && self.here(pod))?;
        let name = match (&self.node, node.pod) {
            (_, Some(host)) if host.host_network => {
                format!("its node (host-network pod {}/{})", host.namespace, host.name)
            }
            (Some(node), _) => format!("its own node {node}"),
            (None, _) => "its own node".to_owned(),
        };
        let reason =
            format!("traffic between {}/{} and {name} is always allowed by NetworkPolicy", pod.namespace, pod.name);
        Some(PolicyOutcome { decision: Decision::Allowed, policies: Vec::new(), reason })
    }

    /// What the policies in effect say of a flow; `None` for protocols they
    /// do not apply to, and for a flow to a Service whose backend is not
    /// known (policies apply at backends: `judge/service.rs` judges each).
    pub(crate) fn policy(&self, input: &JudgeInput<'_>) -> Option<PolicyOutcome> {
        if input.dst.kind == EndpointKind::Service {
            return None;
        }
        let protocol = input.protocol.with_ports();
        self.policy_outcome(input, protocol)
    }

    /// Judges against new policies and intents from now on. Rate counts start
    /// over when the intents change.
    pub fn update(&mut self, policy: Arc<PolicyEngine>, intents: Arc<IntentIndex>) {
        if !Arc::ptr_eq(&self.intents, &intents) {
            self.rates.clear();
        }
        self.policy = policy;
        self.intents = intents;
    }

    /// What the judge decided so far.
    pub fn stats(&self) -> JudgeStats {
        JudgeStats { rate_trackers_evicted: self.rates.evicted(), ..self.stats }
    }

    /// The intents judged against.
    pub fn intents(&self) -> &Arc<IntentIndex> {
        &self.intents
    }

    fn policy_outcome(&self, input: &JudgeInput<'_>, protocol: Option<Protocol>) -> Option<PolicyOutcome> {
        let (protocol, port) = (protocol?, input.dst.port?);
        if let Some(outcome) = self.node_outcome(input) {
            return Some(outcome);
        }
        let (src, dst) = (policy_endpoint(&input.src), policy_endpoint(&input.dst));
        let verdict = self.policy.verdict_named(src, dst, port, protocol, input.dst.names);
        if super::cluster::involved(&verdict) {
            return Some(super::cluster::outcome(&self.policy, input, &verdict));
        }
        if verdict.allowed {
            let mut policies: Vec<Arc<ObjectRef>> = verdict.egress.policies.clone();
            policies.extend(
                verdict.ingress.policies.iter().filter(|policy| !verdict.egress.policies.contains(policy)).cloned(),
            );
            let reason = match (verdict.egress.isolated, verdict.ingress.isolated) {
                (false, false) => "no policy isolates either end".to_owned(),
                (true, false) => format!("egress allowed by {}", name_policies(&verdict.egress.policies)),
                (false, true) => format!("ingress allowed by {}", name_policies(&verdict.ingress.policies)),
                (true, true) => format!(
                    "egress allowed by {}, ingress allowed by {}",
                    name_policies(&verdict.egress.policies),
                    name_policies(&verdict.ingress.policies)
                ),
            };
            return Some(PolicyOutcome {
                decision: Decision::Allowed,
                policies: policies.into_iter().map(PolicyCite).collect(),
                reason,
            });
        }
        let mut policies = Vec::new();
        let mut reasons = Vec::new();
        if !verdict.egress.allowed
            && let Some(pod) = input.src.pod
        {
            let isolating = self.policy.isolating(pod).egress;
            reasons.push(format!(
                "egress of {}/{} is isolated by {} and none allows it",
                pod.namespace,
                pod.name,
                name_policies(&isolating)
            ));
            policies.extend(isolating);
        }
        if !verdict.ingress.allowed
            && let Some(pod) = input.dst.pod
        {
            let isolating = self.policy.isolating(pod).ingress;
            reasons.push(format!(
                "ingress of {}/{} is isolated by {} and none allows it",
                pod.namespace,
                pod.name,
                name_policies(&isolating)
            ));
            policies.extend(isolating.into_iter().filter(|policy| !policies.contains(policy)).collect::<Vec<_>>());
        }
        Some(PolicyOutcome {
            decision: Decision::Denied,
            policies: policies.into_iter().map(PolicyCite).collect(),
            reason: reasons.join("; "),
        })
    }

    pub(super) fn rate_violation(&mut self, input: &JudgeInput<'_>) -> Option<IntentViolation> {
        let pod = input.src.pod.filter(|_| input.new_flow && input.src.kind == EndpointKind::Pod)?;
        for limit in self.intents.rate_limits(pod) {
            let count = self.rates.count(limit.id, &pod.uid, input.first_seen);
            if count > f64::from(limit.per_minute) {
                return Some(IntentViolation {
                    reason: format!(
                        "{}/{} opened about {count:.0} new connections in the last minute, more than {} (FlowIntent {} spec.maxNewConnectionsPerMinute)",
                        pod.namespace, pod.name, limit.per_minute, limit.intent
                    ),
                    intent: limit.intent,
                    rule: "spec.maxNewConnectionsPerMinute".into(),
                });
            }
        }
        None
    }

    /// Judges one flow. A flow whose destination is still a Service (its
    /// backend unknown) is judged at no backend: see [`Judge::flow_to_backends`].
    pub fn flow(&mut self, input: &JudgeInput<'_>) -> FlowVerdict {
        if input.dst.kind == EndpointKind::Service {
            return self.flow_to_backends(input, &[]);
        }
        let policy = self.policy(input);
        // Every new connection counts against the rate, whatever else it breaks.
        let rate = self.rate_violation(input);
        let verdict = self.decide(input, policy, rate);
        self.count(verdict.verdict, verdict.intent.is_some());
        verdict
    }

    /// Judges one flow with `policy` as the policies' outcome (the one in
    /// effect when it started, say) and `rate` the rate limit it breaks,
    /// without counting the verdict.
    pub(crate) fn decide(
        &self,
        input: &JudgeInput<'_>,
        policy: Option<PolicyOutcome>,
        rate: Option<IntentViolation>,
    ) -> FlowVerdict {
        let protocol = input.protocol.with_ports();
        let (delivery, evidence) = delivery(input);
        let intent = self.intents.check_egress_asked(&input.src, &input.dst, input.asked.as_ref(), protocol).or(rate);
        let (verdict, mut reason, policies) = match policy {
            Some(PolicyOutcome { decision: Decision::Denied, policies, reason }) => {
                let kind = if delivery == Delivery::Delivered {
                    VerdictKind::EnforcementGap
                } else {
                    VerdictKind::DeniedAttempt
                };
                let delivered =
                    if delivery == Delivery::Delivered { "but it was delivered" } else { "and it was not delivered" };
                (kind, format!("denied: {reason}; {delivered} ({evidence})"), policies)
            }
            Some(PolicyOutcome { decision: Decision::Allowed, policies, reason }) => match &intent {
                Some(violation) => (VerdictKind::IntentViolation, violation.reason.clone(), policies),
                None => (VerdictKind::Allowed, format!("allowed: {reason}"), policies),
            },
            // Not known to be allowed: an intent that forbids it decides;
            // else it stays undecidable, whatever its delivery.
            Some(PolicyOutcome { decision: Decision::Undecidable, policies, reason }) => match &intent {
                Some(violation) => (
                    VerdictKind::IntentViolation,
                    format!("{}; the policies cannot decide it: {reason}", violation.reason),
                    policies,
                ),
                None => (VerdictKind::Undecidable, reason, policies),
            },
            None => {
                let why = format!("NetworkPolicies do not apply to {} flows", input.protocol.name());
                match &intent {
                    Some(violation) => {
                        (VerdictKind::IntentViolation, format!("{}; {why}", violation.reason), Vec::new())
                    }
                    None => (VerdictKind::Allowed, format!("allowed: {why}"), Vec::new()),
                }
            }
        };
        if let Some(violation) = &intent
            && verdict != VerdictKind::IntentViolation
        {
            let _ = write!(reason, "; it also breaks an intent: {}", violation.reason);
        }
        let tier = |end: &FlowEnd<'_>| {
            end.pod.filter(|_| end.kind == EndpointKind::Pod).and_then(|pod| self.intents.tier_of(pod))
        };
        FlowVerdict {
            verdict,
            reason,
            delivery,
            policies,
            intent: intent.map(|violation| IntentCite { intent: violation.intent, rule: violation.rule }),
            src_uid: input.src.uid.map(str::to_owned),
            dst_uid: input.dst.uid.map(str::to_owned),
            src_tier: tier(&input.src),
            dst_tier: tier(&input.dst),
            ambiguous: false,
            backends: Vec::new(),
            json: RenderedJson::default(),
        }
    }

    /// Counts a verdict given again to a flow judged alike (the stage keeps
    /// verdicts per pair of ends), as [`Judge::flow`] counts the ones it makes:
    /// its kind, and whether it cites an intent the flow breaks.
    pub fn count(&mut self, verdict: VerdictKind, intent_breach: bool) {
        match verdict {
            VerdictKind::Allowed => self.stats.allowed += 1,
            VerdictKind::DeniedAttempt => self.stats.denied_attempts += 1,
            VerdictKind::EnforcementGap => self.stats.enforcement_gaps += 1,
            VerdictKind::IntentViolation => self.stats.intent_violations += 1,
            VerdictKind::Undecidable => self.stats.undecidable += 1,
        }
        self.stats.intent_breaches += u64::from(intent_breach);
    }

    /// Whether an AI-tier pod lacks the isolation it needs; `None` for pods
    /// with no tier, finished pods, and pods isolated as required. A
    /// direction is isolated when a NetworkPolicy isolates the pod for it,
    /// or a ClusterNetworkPolicy (either tier) whose subject selects the pod
    /// has a `Deny` rule for it: a guardrail namespace owners cannot lift
    /// (Admin) or that holds until they isolate the pod themselves
    /// (Baseline). Rules that only Accept or Pass restrict nothing.
    pub fn unprotected(&self, pod: &Pod) -> Option<Unprotected> {
        if matches!(pod.phase.as_deref(), Some("Succeeded" | "Failed")) {
            return None;
        }
        let tier = self.intents.tier_of(pod)?;
        let isolation = self.policy.isolating(pod);
        let guards = self.policy.guarding(pod);
        let ingress = !isolation.ingress.is_empty() || !guards.ingress.is_empty();
        let egress = !isolation.egress.is_empty() || !guards.egress.is_empty();
        let requirements = self.intents.required_isolation(pod);
        let mut required = self.config.required_isolation;
        for requirement in &requirements {
            required.ingress |= requirement.isolation.ingress;
            required.egress |= requirement.isolation.egress;
        }
        let missing_ingress = required.ingress && !ingress;
        let missing_egress = required.egress && !egress;
        let nothing_required = !required.ingress && !required.egress;
        if !(missing_ingress || missing_egress || (nothing_required && !ingress && !egress)) {
            return None;
        }
        let required_by: Vec<Arc<ObjectRef>> = requirements
            .into_iter()
            .filter(|requirement| {
                (missing_ingress && requirement.isolation.ingress) || (missing_egress && requirement.isolation.egress)
            })
            .map(|requirement| requirement.intent)
            .collect();
        let mut reason = format!("{}/{} (tier {tier}) ", pod.namespace, pod.name);
        match (missing_ingress, missing_egress) {
            (true, true) => reason.push_str("is not isolated for ingress nor egress"),
            (true, false) => reason.push_str("is not isolated for ingress"),
            (false, true) => reason.push_str("is not isolated for egress"),
            (false, false) if self.policy.cluster_len() > 0 => {
                reason.push_str("is not isolated by any NetworkPolicy nor ClusterNetworkPolicy Deny rule");
            }
            (false, false) => reason.push_str("is not isolated by any NetworkPolicy"),
        }
        if !required_by.is_empty() {
            let _ = write!(reason, ", as required by FlowIntent {}", name_intents(&required_by));
        }
        if pod.host_network {
            reason.push_str(" (host network: NetworkPolicies do not apply)");
        }
        Some(Unprotected {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
            uid: pod.uid.clone(),
            tier,
            ingress_isolated: ingress,
            egress_isolated: egress,
            required_by,
            reason,
        })
    }
}

fn name_intents(intents: &[Arc<ObjectRef>]) -> String {
    intents.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
}
