//! One ClusterNetworkPolicy, validated and compiled into rules that match flows.
//!
//! In: a [`ClusterNetworkPolicy`] and the engine's namespace labels. Out: a
//! [`CompiledCnp`] (selectors compiled, namespace selectors resolved to a set
//! of namespace ids, CIDRs parsed, domain names normalized, ports as ranges)
//! or the first [`CnpProblem`] the CRD's OpenAPI schema or CEL rules
//! (network-policy-api v0.2.0) would refuse.

use std::sync::Arc;

use super::api::{ClusterNetworkPolicy, EgressPeer, NamespacedPod, Port, ProtocolMatch};
use crate::{
    inventory::{
        ObjectKind, ObjectRef,
        model::{Labels, Protocol},
    },
    policy::{
        cidr::{Cidr, CidrError},
        compiled::{NAMESPACE_NAME_LABEL, NsKey},
        error::Problem,
        selector::Selector,
        verdict::{Action, ClusterRank, Tier},
    },
};

/// Most rules per direction, peers per rule, protocols per rule, CIDRs and
/// domain names per peer (the CRD's `maxItems`).
const MAX_ITEMS: usize = 25;
/// Longest rule name.
const MAX_RULE_NAME: usize = 100;
/// Longest CIDR text.
const MAX_CIDR: usize = 43;
/// Highest priority.
const MAX_PRIORITY: i64 = 1000;

/// A ClusterNetworkPolicy the engine refused, as the API server would have.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("ClusterNetworkPolicy {name}: {field}: {problem}")]
pub struct CnpError {
    /// Position of the policy in the slice given to compile.
    pub index: usize,
    /// `metadata.name`.
    pub name: String,
    /// Path of the offending field, for example `spec.egress[0].to[1].networks[0]`.
    pub field: String,
    /// What is wrong with it.
    pub problem: CnpProblem,
}

/// One validation failure of a ClusterNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CnpProblem {
    /// `metadata.name` absent or empty.
    #[error("required")]
    MissingName,
    /// A required field is absent.
    #[error("required")]
    Required,
    /// `spec.tier` other than Admin and Baseline.
    #[error("unsupported value {value:?}: must be Admin or Baseline")]
    UnsupportedTier {
        /// The tier given.
        value: String,
    },
    /// `spec.priority` outside 0-1000.
    #[error("{value} must be between 0 and 1000")]
    PriorityOutOfRange {
        /// The priority given.
        value: i64,
    },
    /// An action other than Accept, Deny and Pass.
    #[error("unsupported value {value:?}: must be Accept, Deny or Pass")]
    UnsupportedAction {
        /// The action given.
        value: String,
    },
    /// Zero or several of the fields of which exactly one must be set.
    #[error("exactly one of {fields} must be set, {count} are")]
    NotExactlyOne {
        /// The fields.
        fields: &'static str,
        /// How many are set.
        count: usize,
    },
    /// A list with fewer or more items than the schema allows.
    #[error("must have {min} to {max} items, has {count}")]
    ItemCount {
        /// Fewest.
        min: usize,
        /// Most.
        max: usize,
        /// How many there are.
        count: usize,
    },
    /// A string longer than the schema allows.
    #[error("may not be longer than {max} characters")]
    TooLong {
        /// Longest allowed.
        max: usize,
    },
    /// A port number outside 1-65535.
    #[error("{value} must be between 1 and 65535")]
    PortOutOfRange {
        /// The number given.
        value: i64,
    },
    /// A port range whose start is not below its end.
    #[error("Start port must be less than End port ({start} >= {end})")]
    RangeNotIncreasing {
        /// `start`.
        start: i64,
        /// `end`.
        end: i64,
    },
    /// A network that is not a CIDR.
    #[error("Invalid CIDR format provided: {value:?}: {reason}")]
    InvalidCidr {
        /// The text given.
        value: String,
        /// Why it does not parse.
        reason: CidrError,
    },
    /// A domain name that does not match the schema's pattern.
    #[error("{value:?} is not a domain name (labels of letters, digits, '-' and '_', optionally starting with '*.')")]
    InvalidDomainName {
        /// The text given.
        value: String,
    },
    /// `domainNames` in a rule whose action is not Accept.
    #[error("domainNames may only be used with Accept action")]
    DomainNamesWithoutAccept,
    /// `destinationNamedPort` in a rule with a networks, nodes or domainNames peer.
    #[error(
        "networks/nodes/domainNames peer cannot be set with namedPorts since there are no namedPorts for networks/nodes/domainNames"
    )]
    NamedPortWithoutPods,
    /// A label selector the API server refuses.
    #[error("{0}")]
    Selector(Problem),
}

/// A validation failure and the field it is in.
type Failure = (String, CnpProblem);

fn at(field: impl Into<String>) -> impl FnOnce(Problem) -> Failure {
    let field = field.into();
    move |problem| (field, CnpProblem::Selector(problem))
}

/// A set of namespaces: a bitmap over the engine's table, and the selector
/// for namespaces outside it (which carry only their name label).
#[derive(Clone, Debug)]
pub(crate) struct Namespaces {
    known: Box<[u64]>,
    selector: Selector,
}

impl Namespaces {
    fn compile(selector: Selector, table: &[Labels]) -> Self {
        let mut known = vec![0_u64; table.len().div_ceil(64)];
        for (id, labels) in table.iter().enumerate() {
            if selector.matches(labels) {
                known[id / 64] |= 1 << (id % 64);
            }
        }
        Self { known: known.into(), selector }
    }

    pub(crate) fn contains(&self, namespace: NsKey<'_>) -> bool {
        match namespace {
            NsKey::Known(id) => {
                let id = id as usize;
                self.known.get(id / 64).is_some_and(|word| word & (1 << (id % 64)) != 0)
            }
            NsKey::Unknown(name) => self.selector.matches_with(|key| (key == NAMESPACE_NAME_LABEL).then_some(name)),
        }
    }
}

/// Pods by namespace and labels: a subject, or a pods or namespaces peer.
#[derive(Clone, Debug)]
pub(crate) struct PodSet {
    pub(crate) namespaces: Namespaces,
    /// Empty for a namespaces selector: every pod of them.
    pub(crate) pods: Selector,
}

impl PodSet {
    pub(crate) fn contains(&self, labels: &Labels, namespace: NsKey<'_>) -> bool {
        self.namespaces.contains(namespace) && self.pods.matches(labels)
    }
}

/// A domain name of a `domainNames` peer, lowercase, without trailing dot.
#[derive(Clone, Debug)]
pub(crate) struct Domain {
    /// The name, or for a wildcard the part after `*.`.
    name: Box<str>,
    /// `*.name`: one or more labels before `name`.
    wildcard: bool,
}

impl Domain {
    /// Whether `name` (as resolved, any case, trailing dot or not) matches.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let name = name.strip_suffix('.').unwrap_or(name);
        if !self.wildcard {
            return name.eq_ignore_ascii_case(&self.name);
        }
        let Some(split) = name.len().checked_sub(self.name.len() + 1) else { return false };
        split > 0
            && name.as_bytes()[split] == b'.'
            && name.get(split + 1..).is_some_and(|tail| tail.eq_ignore_ascii_case(&self.name))
    }
}

/// One peer of a rule.
#[derive(Clone, Debug)]
pub(crate) enum Peer {
    /// `namespaces` or `pods`: pods (never host-network ones).
    Pods(PodSet),
    /// `nodes`: the addresses of the nodes whose labels match.
    Nodes(Selector),
    /// `networks`.
    Networks(Box<[Cidr]>),
    /// `domainNames`.
    Domains(Box<[Domain]>),
    /// A peer with no field this version knows (a newer CRD's): upstream asks
    /// to fail closed, so it matches nothing in an Accept rule and everything
    /// in a Deny or Pass rule.
    Unknown,
}

/// One `protocols` entry.
#[derive(Clone, Debug)]
pub(crate) enum ProtocolPorts {
    /// A protocol and an inclusive port range.
    Ports(Protocol, u16, u16),
    /// A container port name of the destination pod.
    Named(Box<str>),
}

/// One rule.
#[derive(Clone, Debug)]
pub(crate) struct CnpRule {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) action: Action,
    pub(crate) peers: Box<[Peer]>,
    /// `None`: all traffic.
    pub(crate) protocols: Option<Box<[ProtocolPorts]>>,
}

/// A ClusterNetworkPolicy ready to judge flows.
#[derive(Clone, Debug)]
pub(crate) struct CompiledCnp {
    pub(crate) meta: Arc<ObjectRef>,
    pub(crate) rank: ClusterRank,
    pub(crate) subject: PodSet,
    pub(crate) ingress: Box<[CnpRule]>,
    pub(crate) egress: Box<[CnpRule]>,
}

/// Validates and compiles `policy` against the namespace labels `table` (by id).
pub(crate) fn compile(policy: &ClusterNetworkPolicy, table: &[Labels]) -> Result<CompiledCnp, Failure> {
    let meta = &policy.metadata;
    let name = meta.name.clone().unwrap_or_default();
    if name.is_empty() {
        return Err(("metadata.name".to_owned(), CnpProblem::MissingName));
    }
    let spec = &policy.spec;
    let tier = match spec.tier.as_str() {
        "Admin" => Tier::Admin,
        "Baseline" => Tier::Baseline,
        "" => return Err(("spec.tier".to_owned(), CnpProblem::Required)),
        other => return Err(("spec.tier".to_owned(), CnpProblem::UnsupportedTier { value: other.to_owned() })),
    };
    let priority = match spec.priority {
        None => return Err(("spec.priority".to_owned(), CnpProblem::Required)),
        Some(value) if !(0..=MAX_PRIORITY).contains(&value) => {
            return Err(("spec.priority".to_owned(), CnpProblem::PriorityOutOfRange { value }));
        }
        // In range, so it fits.
        Some(value) => value as u16,
    };
    let subject = match (&spec.subject.namespaces, &spec.subject.pods) {
        (Some(namespaces), None) => PodSet {
            namespaces: Namespaces::compile(
                Selector::compile(Some(namespaces)).map_err(at("spec.subject.namespaces"))?,
                table,
            ),
            pods: Selector::default(),
        },
        (None, Some(pods)) => pod_set(pods, table, "spec.subject.pods")?,
        (namespaces, pods) => {
            let count = usize::from(namespaces.is_some()) + usize::from(pods.is_some());
            return Err(("spec.subject".to_owned(), CnpProblem::NotExactlyOne { fields: "namespaces, pods", count }));
        }
    };
    let rank = ClusterRank { tier, priority };
    let ingress_rules = spec.ingress.as_deref().unwrap_or_default();
    count("spec.ingress", ingress_rules.len(), 0)?;
    let ingress = ingress_rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let field = format!("spec.ingress[{index}]");
            let (name, action) = rule_head(rule.name.as_deref(), &rule.action, &field)?;
            count(&format!("{field}.from"), rule.from.len(), 1)?;
            let peers = rule
                .from
                .iter()
                .enumerate()
                .map(|(index, peer)| {
                    let as_egress = EgressPeer {
                        namespaces: peer.namespaces.clone(),
                        pods: peer.pods.clone(),
                        ..EgressPeer::default()
                    };
                    compile_peer(&as_egress, table, &format!("{field}.from[{index}]"))
                })
                .collect::<Result<Box<[Peer]>, Failure>>()?;
            let protocols = compile_protocols(rule.protocols.as_deref(), &field)?;
            Ok(CnpRule { name, action, peers, protocols })
        })
        .collect::<Result<Box<[CnpRule]>, Failure>>()?;
    let egress_rules = spec.egress.as_deref().unwrap_or_default();
    count("spec.egress", egress_rules.len(), 0)?;
    let egress = egress_rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            let field = format!("spec.egress[{index}]");
            let (name, action) = rule_head(rule.name.as_deref(), &rule.action, &field)?;
            count(&format!("{field}.to"), rule.to.len(), 1)?;
            let peers = rule
                .to
                .iter()
                .enumerate()
                .map(|(index, peer)| compile_peer(peer, table, &format!("{field}.to[{index}]")))
                .collect::<Result<Box<[Peer]>, Failure>>()?;
            if action != Action::Accept && rule.to.iter().any(|peer| peer.domain_names.is_some()) {
                return Err((field, CnpProblem::DomainNamesWithoutAccept));
            }
            let protocols = compile_protocols(rule.protocols.as_deref(), &field)?;
            let named = protocols.iter().flatten().any(|entry| matches!(entry, ProtocolPorts::Named(_)));
            let outside = rule
                .to
                .iter()
                .any(|peer| peer.networks.is_some() || peer.nodes.is_some() || peer.domain_names.is_some());
            if named && outside {
                return Err((field, CnpProblem::NamedPortWithoutPods));
            }
            Ok(CnpRule { name, action, peers, protocols })
        })
        .collect::<Result<Box<[CnpRule]>, Failure>>()?;
    let meta = ObjectRef {
        kind: ObjectKind::ClusterNetworkPolicy(rank),
        namespace: String::new(),
        name,
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        generation: meta.generation,
    };
    Ok(CompiledCnp { meta: Arc::new(meta), rank, subject, ingress, egress })
}

fn count(field: &str, count: usize, min: usize) -> Result<(), Failure> {
    if (min..=MAX_ITEMS).contains(&count) {
        return Ok(());
    }
    Err((field.to_owned(), CnpProblem::ItemCount { min, max: MAX_ITEMS, count }))
}

fn rule_head(name: Option<&str>, action: &str, field: &str) -> Result<(Option<Arc<str>>, Action), Failure> {
    if name.is_some_and(|name| name.chars().count() > MAX_RULE_NAME) {
        return Err((format!("{field}.name"), CnpProblem::TooLong { max: MAX_RULE_NAME }));
    }
    let action = match action {
        "Accept" => Action::Accept,
        "Deny" => Action::Deny,
        "Pass" => Action::Pass,
        "" => return Err((format!("{field}.action"), CnpProblem::Required)),
        other => {
            return Err((format!("{field}.action"), CnpProblem::UnsupportedAction { value: other.to_owned() }));
        }
    };
    Ok((name.filter(|name| !name.is_empty()).map(Arc::from), action))
}

fn pod_set(pods: &NamespacedPod, table: &[Labels], field: &str) -> Result<PodSet, Failure> {
    let namespaces =
        Selector::compile(Some(&pods.namespace_selector)).map_err(at(format!("{field}.namespaceSelector")))?;
    let selector = Selector::compile(Some(&pods.pod_selector)).map_err(at(format!("{field}.podSelector")))?;
    Ok(PodSet { namespaces: Namespaces::compile(namespaces, table), pods: selector })
}

fn compile_peer(peer: &EgressPeer, table: &[Labels], field: &str) -> Result<Peer, Failure> {
    let set = usize::from(peer.namespaces.is_some())
        + usize::from(peer.pods.is_some())
        + usize::from(peer.nodes.is_some())
        + usize::from(peer.networks.is_some())
        + usize::from(peer.domain_names.is_some());
    if set > 1 {
        let fields = "namespaces, pods, nodes, networks, domainNames";
        return Err((field.to_owned(), CnpProblem::NotExactlyOne { fields, count: set }));
    }
    if let Some(namespaces) = &peer.namespaces {
        let selector = Selector::compile(Some(namespaces)).map_err(at(format!("{field}.namespaces")))?;
        return Ok(Peer::Pods(PodSet { namespaces: Namespaces::compile(selector, table), pods: Selector::default() }));
    }
    if let Some(pods) = &peer.pods {
        return Ok(Peer::Pods(pod_set(pods, table, &format!("{field}.pods"))?));
    }
    if let Some(nodes) = &peer.nodes {
        return Ok(Peer::Nodes(Selector::compile(Some(nodes)).map_err(at(format!("{field}.nodes")))?));
    }
    if let Some(networks) = &peer.networks {
        let field = format!("{field}.networks");
        count(&field, networks.len(), 1)?;
        let cidrs = networks
            .iter()
            .enumerate()
            .map(|(index, text)| {
                let field = format!("{field}[{index}]");
                if text.len() > MAX_CIDR {
                    return Err((field, CnpProblem::TooLong { max: MAX_CIDR }));
                }
                text.parse::<Cidr>().map_err(|reason| (field, CnpProblem::InvalidCidr { value: text.clone(), reason }))
            })
            .collect::<Result<Box<[Cidr]>, Failure>>()?;
        return Ok(Peer::Networks(cidrs));
    }
    if let Some(names) = &peer.domain_names {
        let field = format!("{field}.domainNames");
        count(&field, names.len(), 1)?;
        let domains = names
            .iter()
            .enumerate()
            .map(|(index, text)| {
                domain(text)
                    .ok_or_else(|| (format!("{field}[{index}]"), CnpProblem::InvalidDomainName { value: text.clone() }))
            })
            .collect::<Result<Box<[Domain]>, Failure>>()?;
        return Ok(Peer::Domains(domains));
    }
    Ok(Peer::Unknown)
}

/// Parses a domain name as the schema's pattern allows it:
/// `^(\*\.)?([a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-Z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$`.
fn domain(text: &str) -> Option<Domain> {
    let (wildcard, rest) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let rest = rest.strip_suffix('.').unwrap_or(rest);
    let labels: Vec<&str> = rest.split('.').collect();
    let label_ok = |label: &str| {
        let bytes = label.as_bytes();
        let edge = |byte: &u8| byte.is_ascii_alphanumeric();
        bytes.first().is_some_and(edge)
            && bytes.last().is_some_and(edge)
            && bytes.iter().all(|byte| byte.is_ascii_alphanumeric() || *byte == b'-' || *byte == b'_')
    };
    (labels.len() >= 2 && labels.iter().all(|label| label_ok(label)))
        .then(|| Domain { name: rest.to_ascii_lowercase().into(), wildcard })
}

fn compile_protocols(protocols: Option<&[ProtocolMatch]>, rule: &str) -> Result<Option<Box<[ProtocolPorts]>>, Failure> {
    let Some(protocols) = protocols else { return Ok(None) };
    let field = format!("{rule}.protocols");
    count(&field, protocols.len(), 1)?;
    protocols
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let field = format!("{field}[{index}]");
            let set = usize::from(entry.tcp.is_some())
                + usize::from(entry.udp.is_some())
                + usize::from(entry.sctp.is_some())
                + usize::from(entry.destination_named_port.is_some());
            if set != 1 {
                let fields = "tcp, udp, sctp, destinationNamedPort";
                return Err((field, CnpProblem::NotExactlyOne { fields, count: set }));
            }
            if let Some(name) = &entry.destination_named_port {
                if name.is_empty() {
                    return Err((format!("{field}.destinationNamedPort"), CnpProblem::Required));
                }
                return Ok(ProtocolPorts::Named(name.as_str().into()));
            }
            let (protocol, ports, key) = match (&entry.tcp, &entry.udp, &entry.sctp) {
                (Some(ports), ..) => (Protocol::TCP, ports, "tcp"),
                (_, Some(ports), _) => (Protocol::UDP, ports, "udp"),
                (.., Some(ports)) => (Protocol::SCTP, ports, "sctp"),
                (None, None, None) => {
                    let fields = "tcp, udp, sctp, destinationNamedPort";
                    return Err((field, CnpProblem::NotExactlyOne { fields, count: 0 }));
                }
            };
            let field = format!("{field}.{key}.destinationPort");
            let Some(port) = &ports.destination_port else { return Err((field, CnpProblem::Required)) };
            let (first, last) = port_range(port, &field)?;
            Ok(ProtocolPorts::Ports(protocol, first, last))
        })
        .collect::<Result<Box<[ProtocolPorts]>, Failure>>()
        .map(Some)
}

fn port_number(value: i64, field: String) -> Result<u16, Failure> {
    u16::try_from(value).ok().filter(|port| *port != 0).ok_or((field, CnpProblem::PortOutOfRange { value }))
}

fn port_range(port: &Port, field: &str) -> Result<(u16, u16), Failure> {
    match (port.number, &port.range) {
        (Some(number), None) => {
            let number = port_number(number, format!("{field}.number"))?;
            Ok((number, number))
        }
        (None, Some(range)) => {
            let start = port_number(range.start, format!("{field}.range.start"))?;
            let end = port_number(range.end, format!("{field}.range.end"))?;
            if start >= end {
                return Err((
                    format!("{field}.range"),
                    CnpProblem::RangeNotIncreasing { start: range.start, end: range.end },
                ));
            }
            Ok((start, end))
        }
        (number, range) => {
            let count = usize::from(number.is_some()) + usize::from(range.is_some());
            Err((field.to_owned(), CnpProblem::NotExactlyOne { fields: "number, range", count }))
        }
    }
}
