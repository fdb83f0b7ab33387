//! One NetworkPolicy, validated and compiled into rules that match flows.
//!
//! In: a `networking.k8s.io/v1` NetworkPolicy and the engine's namespace table.
//! Out: a [`CompiledPolicy`] (selectors compiled, policy types defaulted,
//! namespace selectors resolved to a set of namespace ids, CIDRs parsed, ports
//! as ranges) or the first [`Problem`] the API server's validation would find.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use k8s_openapi::{
    api::networking::v1::{IPBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::{cidr::Cidr, error::Problem, fasthash::FxBuildHasher, selector::Selector};
use crate::inventory::{
    ObjectRef,
    model::{ContainerPort, Labels, Protocol},
};

/// Index of a namespace in the engine's table.
pub(crate) type NsId = u32;

/// The namespace of an end, as far as the engine knows it.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NsKey<'a> {
    /// A namespace in the table.
    Known(NsId),
    /// A namespace neither declared nor holding a policy: its only label is
    /// the `kubernetes.io/metadata.name` the API server would set.
    Unknown(&'a str),
}

/// The addresses an end may be matched by in `ipBlock` peers.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Addresses<'a> {
    /// The address the flow used.
    One(IpAddr),
    /// Any of a pod's addresses, when the flow's is not known. A reference to
    /// the `Vec` rather than a slice: making one reads no memory, so a pod's
    /// struct is only loaded when an `ipBlock` peer is actually checked.
    Any(&'a Vec<IpAddr>),
}

impl Addresses<'_> {
    pub(crate) fn any(self, mut test: impl FnMut(IpAddr) -> bool) -> bool {
        match self {
            Self::One(ip) => test(ip),
            Self::Any(ips) => ips.iter().any(|ip| test(*ip)),
        }
    }
}

/// What peer pod selectors are matched against.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PodLabels<'a> {
    /// The pod's labels, matched selector by selector.
    Labels(&'a Labels),
    /// The ids of the peer pod selectors ([`SelectorId`]) the pod's labels
    /// match, sorted: what the engine's pod index precomputed.
    Matched(&'a [SelectorId]),
}

/// The destination's container ports, where named ports resolve.
#[derive(Clone, Copy, Debug)]
pub(crate) enum DestinationPorts<'a> {
    /// As the pod declares them.
    Declared(&'a [ContainerPort]),
    /// The pod's ports whose names some policy uses, names interned.
    Named(&'a [NamedPort]),
}

/// A container port whose name a policy refers to, with the name interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NamedPort {
    /// The port number.
    pub(crate) port: u16,
    /// Its protocol.
    pub(crate) protocol: Protocol,
    /// The interned name.
    pub(crate) name: NameId,
}

/// Index of a peer pod selector in [`Interner::selectors`].
pub(crate) type SelectorId = u32;

/// Index of a port name in [`Interner::port_names`].
pub(crate) type NameId = u32;

/// What policies share, interned at compile time so that the engine's pod
/// index can precompute, once per pod, which peer selectors it matches and
/// which of its ports policies name.
#[derive(Clone, Debug, Default)]
pub(crate) struct Interner {
    /// Distinct non-empty peer pod selectors, by id.
    pub(crate) selectors: Vec<Selector>,
    selector_ids: HashMap<Selector, SelectorId, FxBuildHasher>,
    /// Port names rules refer to, to their id.
    pub(crate) port_names: HashMap<Box<str>, NameId, FxBuildHasher>,
}

impl Interner {
    /// The id of a peer pod selector; `None` for one that selects every pod.
    fn selector(&mut self, selector: &Selector) -> Option<SelectorId> {
        if selector.is_empty() {
            return None;
        }
        let next = self.selectors.len() as SelectorId;
        let id = *self.selector_ids.entry(selector.clone()).or_insert(next);
        if id == next {
            self.selectors.push(selector.clone());
        }
        Some(id)
    }

    fn port_name(&mut self, name: &str) -> NameId {
        let next = self.port_names.len() as NameId;
        *self.port_names.entry(name.into()).or_insert(next)
    }
}

/// The end of a flow that a rule's peers are matched against.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OtherEnd<'a> {
    /// Labels and namespace, for a pod that selectors can see.
    pub(crate) pod: Option<(PodLabels<'a>, NsKey<'a>)>,
    /// Addresses for `ipBlock`.
    pub(crate) addresses: Addresses<'a>,
}

/// What a rule is asked about.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Flow<'a> {
    /// The end on the other side of the judged pod.
    pub(crate) other: OtherEnd<'a>,
    /// Destination port.
    pub(crate) port: u16,
    /// Transport protocol.
    pub(crate) protocol: Protocol,
    /// Container ports of the destination pod, where named ports resolve; empty
    /// for a destination outside the cluster.
    pub(crate) destination_ports: DestinationPorts<'a>,
}

/// A set of namespace ids, as a bitmap over the table.
#[derive(Clone, Debug)]
struct NamespaceSet(Box<[u64]>);

impl NamespaceSet {
    fn contains(&self, id: NsId) -> bool {
        let id = id as usize;
        self.0.get(id / 64).is_some_and(|word| word & (1 << (id % 64)) != 0)
    }
}

/// Which namespaces a pod peer's pods may live in.
#[derive(Clone, Debug)]
enum PeerNamespaces {
    /// No `namespaceSelector`: the policy's own namespace.
    Own(NsId),
    /// A `namespaceSelector`, resolved over the table, kept for namespaces outside it.
    Selected { known: NamespaceSet, selector: Selector },
}

/// One entry of `from` or `to`.
#[derive(Clone, Debug)]
enum Peer {
    /// `podSelector` and/or `namespaceSelector`: both must match. `id` is the
    /// pod selector's interned id, `None` when it selects every pod.
    Pods { namespaces: PeerNamespaces, pods: Selector, id: Option<SelectorId> },
    /// `ipBlock`.
    Block { cidr: Cidr, except: Box<[Cidr]> },
}

impl Peer {
    fn matches(&self, other: &OtherEnd<'_>) -> bool {
        match self {
            Self::Pods { namespaces, pods, id } => other.pod.is_some_and(|(labels, namespace)| {
                let namespace_matches = match (namespaces, namespace) {
                    (PeerNamespaces::Own(own), NsKey::Known(id)) => *own == id,
                    (PeerNamespaces::Own(_), NsKey::Unknown(_)) => false,
                    (PeerNamespaces::Selected { known, .. }, NsKey::Known(id)) => known.contains(id),
                    (PeerNamespaces::Selected { selector, .. }, NsKey::Unknown(name)) => {
                        selector.matches_with(|key| (key == NAMESPACE_NAME_LABEL).then_some(name))
                    }
                };
                namespace_matches
                    && match labels {
                        PodLabels::Labels(labels) => pods.matches(labels),
                        PodLabels::Matched(matched) => id.is_none_or(|id| matched.binary_search(&id).is_ok()),
                    }
            }),
            Self::Block { cidr, except } => {
                other.addresses.any(|ip| cidr.contains(ip) && !except.iter().any(|except| except.contains(ip)))
            }
        }
    }
}

/// The label the API server puts on every namespace.
pub(crate) const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Which ports of one protocol a `ports` entry allows.
#[derive(Clone, Debug)]
enum Ports {
    /// No `port`: every port.
    All,
    /// `port`, or `port` to `endPort`, inclusive.
    Range(u16, u16),
    /// A named port, resolved on the destination pod; with its interned id.
    Named(Box<str>, NameId),
}

#[derive(Clone, Debug)]
struct PortMatch {
    protocol: Protocol,
    ports: Ports,
}

impl PortMatch {
    fn matches(&self, flow: &Flow<'_>) -> bool {
        self.protocol == flow.protocol
            && match &self.ports {
                Ports::All => true,
                Ports::Range(first, last) => (*first..=*last).contains(&flow.port),
                Ports::Named(name, id) => match flow.destination_ports {
                    DestinationPorts::Declared(ports) => ports.iter().any(|declared| {
                        declared.port == flow.port
                            && declared.protocol == flow.protocol
                            && declared.name.as_deref() == Some(&**name)
                    }),
                    DestinationPorts::Named(ports) => ports.iter().any(|declared| {
                        declared.port == flow.port && declared.protocol == flow.protocol && declared.name == *id
                    }),
                },
            }
    }
}

/// One ingress or egress rule; `None` lists match everything.
#[derive(Clone, Debug)]
pub(crate) struct Rule {
    peers: Option<Box<[Peer]>>,
    ports: Option<Box<[PortMatch]>>,
}

impl Rule {
    /// Whether this rule allows the flow.
    pub(crate) fn allows(&self, flow: &Flow<'_>) -> bool {
        self.ports.as_ref().is_none_or(|ports| ports.iter().any(|port| port.matches(flow)))
            && self.peers.as_ref().is_none_or(|peers| peers.iter().any(|peer| peer.matches(&flow.other)))
    }
}

/// A NetworkPolicy ready to judge flows.
#[derive(Clone, Debug)]
pub(crate) struct CompiledPolicy {
    /// Who it is, for explanations.
    pub(crate) meta: Arc<ObjectRef>,
    /// `spec.podSelector`.
    pub(crate) pod_selector: Selector,
    /// Ingress rules when `Ingress` is one of its policy types.
    pub(crate) ingress: Option<Box<[Rule]>>,
    /// Egress rules when `Egress` is one of its policy types.
    pub(crate) egress: Option<Box<[Rule]>>,
}

/// The peers and ports of one rule, before compiling.
type RawRule<'a> = (Option<&'a [NetworkPolicyPeer]>, Option<&'a [NetworkPolicyPort]>);

/// What compiling needs to know of the namespaces.
pub(crate) struct NamespaceTable<'a> {
    /// Labels of each namespace, by id.
    labels: &'a [Labels],
    /// Each `namespaceSelector` met so far, resolved over `labels`: policies
    /// repeat a few selectors (`team: frontend`), and resolving one looks at
    /// every namespace.
    resolved: HashMap<Selector, NamespaceSet, FxBuildHasher>,
}

impl<'a> NamespaceTable<'a> {
    /// The table of namespaces with `labels`, by id.
    pub(crate) fn new(labels: &'a [Labels]) -> Self {
        Self { labels, resolved: HashMap::default() }
    }

    /// The namespaces `selector` selects.
    fn selected(&mut self, selector: &Selector) -> NamespaceSet {
        if let Some(known) = self.resolved.get(selector) {
            return known.clone();
        }
        let mut words = vec![0_u64; self.labels.len().div_ceil(64)];
        for (id, labels) in self.labels.iter().enumerate() {
            if selector.matches(labels) {
                words[id / 64] |= 1 << (id % 64);
            }
        }
        let known = NamespaceSet(words.into());
        self.resolved.insert(selector.clone(), known.clone());
        known
    }
}

/// A validation failure and the field it is in.
pub(crate) type Failure = (String, Problem);

fn at(field: impl Into<String>) -> impl FnOnce(Problem) -> Failure {
    let field = field.into();
    move |problem| (field, problem)
}

impl CompiledPolicy {
    /// Validates and compiles `policy`, whose namespace has id `namespace`.
    pub(crate) fn compile(
        policy: &NetworkPolicy,
        meta: ObjectRef,
        namespace: NsId,
        table: &mut NamespaceTable<'_>,
        interner: &mut Interner,
    ) -> Result<Self, Failure> {
        if meta.name.is_empty() {
            return Err(("metadata.name".to_owned(), Problem::MissingName));
        }
        let spec = policy.spec.as_ref();
        let pod_selector =
            Selector::compile(spec.and_then(|spec| spec.pod_selector.as_ref())).map_err(at("spec.podSelector"))?;
        let ingress_rules = spec.and_then(|spec| spec.ingress.as_deref()).unwrap_or_default();
        let egress_rules = spec.and_then(|spec| spec.egress.as_deref()).unwrap_or_default();
        let (has_ingress, has_egress) =
            policy_types(spec.and_then(|spec| spec.policy_types.as_deref()), !egress_rules.is_empty())?;
        let mut compile_rules = |direction: &str, rules: Vec<RawRule<'_>>| {
            rules
                .into_iter()
                .enumerate()
                .map(|(index, (peers, ports))| {
                    let peer_field = if direction == "ingress" { "from" } else { "to" };
                    let field = format!("spec.{direction}[{index}]");
                    Ok(Rule {
                        peers: non_empty(peers)
                            .map(|peers| {
                                compile_peers(peers, namespace, table, interner, &format!("{field}.{peer_field}"))
                            })
                            .transpose()?,
                        ports: non_empty(ports)
                            .map(|ports| compile_ports(ports, interner, &format!("{field}.ports")))
                            .transpose()?,
                    })
                })
                .collect::<Result<Box<[Rule]>, Failure>>()
        };
        // Rules of a type the policy does not have are validated all the same,
        // as the API server does, and then never consulted.
        let ingress = compile_rules(
            "ingress",
            ingress_rules.iter().map(|rule| (rule.from.as_deref(), rule.ports.as_deref())).collect(),
        )?;
        let egress = compile_rules(
            "egress",
            egress_rules.iter().map(|rule| (rule.to.as_deref(), rule.ports.as_deref())).collect(),
        )?;
        Ok(Self {
            meta: Arc::new(meta),
            pod_selector,
            ingress: has_ingress.then_some(ingress),
            egress: has_egress.then_some(egress),
        })
    }
}

/// `None` for an absent or empty list: both mean "everything" in a rule.
fn non_empty<T>(list: Option<&[T]>) -> Option<&[T]> {
    list.filter(|list| !list.is_empty())
}

/// The policy types in force: as listed, or defaulted as the API server does
/// (Ingress always, Egress when there are egress rules).
fn policy_types(listed: Option<&[String]>, has_egress_rules: bool) -> Result<(bool, bool), Failure> {
    let Some(listed) = listed.filter(|listed| !listed.is_empty()) else { return Ok((true, has_egress_rules)) };
    if listed.len() > 2 {
        return Err(("spec.policyTypes".to_owned(), Problem::TooManyPolicyTypes));
    }
    let (mut ingress, mut egress) = (false, false);
    for (index, kind) in listed.iter().enumerate() {
        match kind.as_str() {
            "Ingress" => ingress = true,
            "Egress" => egress = true,
            _ => {
                return Err((
                    format!("spec.policyTypes[{index}]"),
                    Problem::UnsupportedPolicyType { value: kind.clone() },
                ));
            }
        }
    }
    Ok((ingress, egress))
}

fn compile_peers(
    peers: &[NetworkPolicyPeer],
    own: NsId,
    table: &mut NamespaceTable<'_>,
    interner: &mut Interner,
    field: &str,
) -> Result<Box<[Peer]>, Failure> {
    peers
        .iter()
        .enumerate()
        .map(|(index, peer)| {
            let field = format!("{field}[{index}]");
            match (&peer.ip_block, &peer.pod_selector, &peer.namespace_selector) {
                (None, None, None) => Err((field, Problem::EmptyPeer)),
                (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err((field, Problem::IpBlockWithSelector)),
                (Some(block), None, None) => compile_block(block, &format!("{field}.ipBlock")),
                (None, pods, namespaces) => {
                    let pods = Selector::compile(pods.as_ref()).map_err(at(format!("{field}.podSelector")))?;
                    let namespaces = match namespaces {
                        None => PeerNamespaces::Own(own),
                        Some(selector) => {
                            let selector =
                                Selector::compile(Some(selector)).map_err(at(format!("{field}.namespaceSelector")))?;
                            PeerNamespaces::Selected { known: table.selected(&selector), selector }
                        }
                    };
                    Ok(Peer::Pods { namespaces, id: interner.selector(&pods), pods })
                }
            }
        })
        .collect()
}

fn compile_block(block: &IPBlock, field: &str) -> Result<Peer, Failure> {
    let parse = |text: &str, field: String| {
        text.parse::<Cidr>().map_err(|reason| (field, Problem::InvalidCidr { value: text.to_owned(), reason }))
    };
    let cidr = parse(&block.cidr, format!("{field}.cidr"))?;
    let except = block
        .except
        .iter()
        .flatten()
        .enumerate()
        .map(|(index, text)| {
            let field = format!("{field}.except[{index}]");
            let except = parse(text, field.clone())?;
            if !cidr.strictly_contains(&except) {
                return Err((field, Problem::ExceptOutsideCidr { cidr: block.cidr.clone(), except: text.clone() }));
            }
            Ok(except)
        })
        .collect::<Result<_, _>>()?;
    Ok(Peer::Block { cidr, except })
}

fn compile_ports(
    ports: &[NetworkPolicyPort],
    interner: &mut Interner,
    field: &str,
) -> Result<Box<[PortMatch]>, Failure> {
    ports
        .iter()
        .enumerate()
        .map(|(index, port)| {
            let field = format!("{field}[{index}]");
            let protocol = Protocol::from_k8s(port.protocol.as_deref()).ok_or_else(|| {
                (
                    format!("{field}.protocol"),
                    Problem::UnsupportedProtocol { value: port.protocol.clone().unwrap_or_default() },
                )
            })?;
            let number = |value: i32, field: String| {
                u16::try_from(value).ok().filter(|value| *value != 0).ok_or((field, Problem::PortOutOfRange { value }))
            };
            let ports = match (&port.port, port.end_port) {
                (None, None) => Ports::All,
                (None, Some(_)) | (Some(IntOrString::String(_)), Some(_)) => {
                    return Err((format!("{field}.endPort"), Problem::EndPortWithoutNumericPort));
                }
                (Some(IntOrString::String(name)), None) => {
                    if !is_port_name(name) {
                        return Err((format!("{field}.port"), Problem::InvalidPortName { value: name.clone() }));
                    }
                    Ports::Named(name.as_str().into(), interner.port_name(name))
                }
                (Some(IntOrString::Int(first)), end) => {
                    let first_port = number(*first, format!("{field}.port"))?;
                    let last_port = match end {
                        None => first_port,
                        Some(last) if last < *first => {
                            return Err((
                                format!("{field}.endPort"),
                                Problem::EndPortBelowPort { port: *first, end_port: last },
                            ));
                        }
                        Some(last) => number(last, format!("{field}.endPort"))?,
                    };
                    Ports::Range(first_port, last_port)
                }
            };
            Ok(PortMatch { protocol, ports })
        })
        .collect()
}

/// An IANA service name, as the API server requires of named ports.
fn is_port_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=15).contains(&bytes.len())
        && bytes.iter().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || *byte == b'-')
        && bytes.iter().any(u8::is_ascii_lowercase)
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_names_follow_iana_service_names() {
        for good in ["http", "grpc-web", "h2c", "a1", "abcdefghijklmno"] {
            assert!(is_port_name(good), "{good}");
        }
        for bad in ["", "HTTP", "8080", "-http", "http-", "grpc--web", "abcdefghijklmnop", "http_alt"] {
            assert!(!is_port_name(bad), "{bad}");
        }
    }

    #[test]
    fn empty_policy_types_default_like_absent() {
        assert_eq!(policy_types(Some(&[]), true).expect("valid"), (true, true));
        assert_eq!(policy_types(None, false).expect("valid"), (true, false));
        assert_eq!(policy_types(Some(&["Egress".to_owned()]), false).expect("valid"), (false, true));
    }
}
