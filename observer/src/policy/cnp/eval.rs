//! The two ClusterNetworkPolicy tiers, evaluated for one side of a flow.
//!
//! In: compiled policies, then the subject pod of a side and the flow's other
//! end. Out: the rules that matched in evaluation order, and whether the tier
//! decided (Accept or Deny), passed, or did not match. Within a tier,
//! policies go by priority, lower first; equal priorities by name, which the
//! API leaves to the implementation, so a tie whose policies disagree is
//! named in the step. Within a policy, rules go in order; the first that
//! matches is the policy's answer.

use std::{net::IpAddr, sync::Arc};

use super::compile::{CnpRule, CompiledCnp, Peer, ProtocolPorts};
use crate::{
    inventory::{
        ObjectRef,
        model::{ContainerPort, Labels, Protocol},
    },
    policy::{
        compiled::{Addresses, NsKey},
        verdict::{Action, ClusterStep, Tier},
    },
};

/// Which rules of a policy apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// `spec.ingress`: the subject is the destination.
    Ingress,
    /// `spec.egress`: the subject is the source.
    Egress,
}

/// A pod as subject or peer: its labels and namespace.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PodKey<'a> {
    pub(crate) labels: &'a Labels,
    pub(crate) namespace: NsKey<'a>,
}

/// What one side's rules are matched against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SideFlow<'a> {
    /// The other end, when a pod that pod peers can select.
    pub(crate) peer: Option<PodKey<'a>>,
    /// The other end's addresses, for networks and nodes peers.
    pub(crate) addresses: Addresses<'a>,
    /// The DNS names the source resolved for the destination, when known
    /// (egress only): what domainNames peers match.
    pub(crate) names: Option<&'a [Arc<str>]>,
    /// Destination port and protocol.
    pub(crate) port: u16,
    pub(crate) protocol: Protocol,
    /// The destination pod's container ports, where named ports resolve.
    pub(crate) destination_ports: &'a [ContainerPort],
}

/// How one tier ended for a side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TierEnd {
    /// An Accept or Deny rule decided.
    Decided(Action),
    /// A Pass rule handed the flow to the next tier.
    Passed,
    /// No rule matched.
    NoMatch,
}

/// Whether a rule matches: yes, no, or only if the destination has one of
/// the rule's domain names, which the flow does not tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Match {
    Yes,
    No,
    NeedsName,
}

/// One tier walked for one side.
struct Walk<'p, 'f> {
    policies: &'p [CompiledCnp],
    direction: Direction,
    /// The subject to test each policy's against; `None` when the walked
    /// policies are known to select it (the pod index listed them).
    subject: Option<PodKey<'f>>,
    flow: &'f SideFlow<'f>,
}

/// A node's labels and addresses, for nodes peers.
#[derive(Clone, Debug)]
pub(crate) struct NodeAddresses {
    pub(crate) labels: Labels,
    pub(crate) ips: Vec<IpAddr>,
}

/// Compiled ClusterNetworkPolicies by tier, in evaluation order.
#[derive(Clone, Debug, Default)]
pub(crate) struct ClusterPolicies {
    admin: Vec<CompiledCnp>,
    baseline: Vec<CompiledCnp>,
    nodes: Vec<NodeAddresses>,
}

impl ClusterPolicies {
    /// Orders `policies` by tier and priority; `nodes` are what nodes peers select.
    pub(crate) fn new(policies: Vec<CompiledCnp>, nodes: Vec<NodeAddresses>) -> Self {
        let (mut admin, mut baseline): (Vec<_>, Vec<_>) =
            policies.into_iter().partition(|policy| policy.rank.tier == Tier::Admin);
        for tier in [&mut admin, &mut baseline] {
            tier.sort_by(|a, b| a.rank.priority.cmp(&b.rank.priority).then_with(|| a.meta.name.cmp(&b.meta.name)));
        }
        Self { admin, baseline, nodes }
    }

    /// How many policies there are.
    pub(crate) fn len(&self) -> usize {
        self.admin.len() + self.baseline.len()
    }

    /// Appends the positions (in `tier`'s evaluation order) of the policies
    /// whose subject selects `subject` and that have rules for `direction`:
    /// what [`Self::evaluate`] walks for an indexed pod. Returns how many.
    pub(crate) fn push_selecting(
        &self,
        tier: Tier,
        direction: Direction,
        subject: PodKey<'_>,
        positions: &mut Vec<u32>,
    ) -> u32 {
        let start = positions.len();
        for (position, policy) in self.tier(tier).iter().enumerate() {
            if !rules(policy, direction).is_empty() && policy.subject.contains(subject.labels, subject.namespace) {
                positions.push(position as u32);
            }
        }
        (positions.len() - start) as u32
    }

    /// The policies of both tiers, in evaluation order, whose subject
    /// selects `subject` and that have a `Deny` rule for `direction`: the
    /// guardrails that protect the pod in that direction.
    pub(crate) fn guarding(&self, direction: Direction, subject: PodKey<'_>) -> Vec<Arc<ObjectRef>> {
        self.admin
            .iter()
            .chain(&self.baseline)
            .filter(|policy| rules(policy, direction).iter().any(|rule| rule.action == Action::Deny))
            .filter(|policy| policy.subject.contains(subject.labels, subject.namespace))
            .map(|policy| Arc::clone(&policy.meta))
            .collect()
    }

    fn tier(&self, tier: Tier) -> &[CompiledCnp] {
        match tier {
            Tier::Admin => &self.admin,
            Tier::Baseline => &self.baseline,
        }
    }

    /// Evaluates `tier` for the side whose subject is `subject`, appending
    /// the matching rules to `steps`. `selecting`, when the pod is indexed,
    /// lists the policies whose subject selects it ([`Self::push_selecting`]):
    /// only those are walked, and their subjects are not tested again.
    /// A domainNames rule that cannot be matched for want of a name is
    /// skipped, and its description put in `unsure` (the first one only):
    /// the side is undecidable if that rule's Accept would have changed the
    /// outcome.
    #[expect(clippy::too_many_arguments, reason = "one side of one flow, as the engine resolved it")]
    pub(crate) fn evaluate(
        &self,
        tier: Tier,
        direction: Direction,
        subject: PodKey<'_>,
        selecting: Option<&[u32]>,
        flow: &SideFlow<'_>,
        steps: &mut Vec<ClusterStep>,
        unsure: &mut Option<String>,
    ) -> TierEnd {
        let policies = self.tier(tier);
        match selecting {
            Some(positions) => {
                let walk = Walk { policies, direction, subject: None, flow };
                self.walk(&walk, positions.iter().map(|position| *position as usize), steps, unsure)
            }
            None => {
                let walk = Walk { policies, direction, subject: Some(subject), flow };
                self.walk(&walk, 0..policies.len(), steps, unsure)
            }
        }
    }

    /// Walks the policies at `positions` (in evaluation order) until one's rule matches.
    fn walk(
        &self,
        walk: &Walk<'_, '_>,
        mut positions: impl Iterator<Item = usize> + Clone,
        steps: &mut Vec<ClusterStep>,
        unsure: &mut Option<String>,
    ) -> TierEnd {
        while let Some(position) = positions.next() {
            let policy = &walk.policies[position];
            let Some((rule, action)) = self.first_match(policy, walk, unsure) else { continue };
            let tied_with = positions
                .clone()
                .map(|other| &walk.policies[other])
                .take_while(|other| other.rank.priority == policy.rank.priority)
                .find(|other| {
                    let mut ignored = None;
                    self.first_match(other, walk, &mut ignored).is_some_and(|(_, other_action)| other_action != action)
                })
                .map(|other| Arc::clone(&other.meta));
            let rules = rules(policy, walk.direction);
            steps.push(ClusterStep {
                policy: Arc::clone(&policy.meta),
                rule: rule as u32,
                rule_name: rules[rule].name.clone(),
                action,
                tied_with,
            });
            return match action {
                Action::Pass => TierEnd::Passed,
                decided => TierEnd::Decided(decided),
            };
        }
        TierEnd::NoMatch
    }

    /// The first rule of `policy` that matches, if its subject selects the pod.
    fn first_match(
        &self,
        policy: &CompiledCnp,
        walk: &Walk<'_, '_>,
        unsure: &mut Option<String>,
    ) -> Option<(usize, Action)> {
        if walk.subject.is_some_and(|subject| !policy.subject.contains(subject.labels, subject.namespace)) {
            return None;
        }
        for (index, rule) in rules(policy, walk.direction).iter().enumerate() {
            match self.rule_matches(rule, walk.flow) {
                Match::Yes => return Some((index, rule.action)),
                Match::No => {}
                Match::NeedsName => {
                    if unsure.is_none() {
                        let version =
                            policy.meta.resource_version.as_deref().map(|v| format!("@{v}")).unwrap_or_default();
                        *unsure = Some(format!(
                            "{}{version} rule {index} ({}, priority {}) accepts by domainNames, and the flow's destination has no DNS name the observer saw resolved",
                            policy.meta, policy.rank.tier, policy.rank.priority
                        ));
                    }
                }
            }
        }
        None
    }

    fn rule_matches(&self, rule: &CnpRule, flow: &SideFlow<'_>) -> Match {
        let ports = rule.protocols.as_ref().is_none_or(|protocols| {
            protocols.iter().any(|entry| match entry {
                ProtocolPorts::Ports(protocol, first, last) => {
                    *protocol == flow.protocol && (*first..=*last).contains(&flow.port)
                }
                ProtocolPorts::Named(name) => flow.destination_ports.iter().any(|declared| {
                    declared.port == flow.port
                        && declared.protocol == flow.protocol
                        && declared.name.as_deref() == Some(&**name)
                }),
            })
        });
        if !ports {
            return Match::No;
        }
        let mut needs_name = false;
        for peer in &rule.peers {
            let matched = match peer {
                Peer::Pods(set) => flow.peer.is_some_and(|peer| set.contains(peer.labels, peer.namespace)),
                Peer::Networks(cidrs) => flow.addresses.any(|ip| cidrs.iter().any(|cidr| cidr.contains(ip))),
                Peer::Nodes(selector) => flow
                    .addresses
                    .any(|ip| self.nodes.iter().any(|node| node.ips.contains(&ip) && selector.matches(&node.labels))),
                Peer::Domains(domains) => match flow.names {
                    Some(names) => names.iter().any(|name| domains.iter().any(|domain| domain.matches(name))),
                    None => {
                        needs_name = true;
                        false
                    }
                },
                // Fail closed: matches nothing to Accept, everything to Deny or Pass.
                Peer::Unknown => rule.action != Action::Accept,
            };
            if matched {
                return Match::Yes;
            }
        }
        if needs_name { Match::NeedsName } else { Match::No }
    }
}

fn rules(policy: &CompiledCnp, direction: Direction) -> &[CnpRule] {
    match direction {
        Direction::Ingress => &policy.ingress,
        Direction::Egress => &policy.egress,
    }
}
