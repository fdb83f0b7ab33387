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
    inventory::model::{ContainerPort, Labels, Protocol},
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

    /// Evaluates `tier` for the side whose subject is `subject`, appending
    /// the matching rules to `steps`. A domainNames rule that cannot be
    /// matched for want of a name is skipped, and its description put in
    /// `unsure` (the first one only): the side is undecidable if that
    /// rule's Accept would have changed the outcome.
    pub(crate) fn evaluate(
        &self,
        tier: Tier,
        direction: Direction,
        subject: PodKey<'_>,
        flow: &SideFlow<'_>,
        steps: &mut Vec<ClusterStep>,
        unsure: &mut Option<String>,
    ) -> TierEnd {
        let policies = match tier {
            Tier::Admin => &self.admin,
            Tier::Baseline => &self.baseline,
        };
        for (position, policy) in policies.iter().enumerate() {
            let Some((rule, action)) = self.first_match(policy, direction, subject, flow, unsure) else { continue };
            let tied_with = policies[position + 1..]
                .iter()
                .take_while(|other| other.rank.priority == policy.rank.priority)
                .find(|other| {
                    let mut ignored = None;
                    self.first_match(other, direction, subject, flow, &mut ignored)
                        .is_some_and(|(_, other_action)| other_action != action)
                })
                .map(|other| Arc::clone(&other.meta));
            let rules = rules(policy, direction);
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
        direction: Direction,
        subject: PodKey<'_>,
        flow: &SideFlow<'_>,
        unsure: &mut Option<String>,
    ) -> Option<(usize, Action)> {
        if !policy.subject.contains(subject.labels, subject.namespace) {
            return None;
        }
        for (index, rule) in rules(policy, direction).iter().enumerate() {
            match self.rule_matches(rule, flow) {
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
