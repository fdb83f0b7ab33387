//! Validating and compiling one FlowIntent.
//!
//! In: a [`FlowIntent`] and the compiled tier configuration. Out: a
//! [`CompiledIntent`] whose selectors, CIDRs and ports are ready to match
//! flows, or the first problem found, named by field path, in the words of the
//! API server's own validation where the rule is the same as a NetworkPolicy's.

use std::{borrow::Cow, collections::HashMap, fmt, net::IpAddr, sync::Arc};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::{
    end::FlowEnd,
    resource::{FlowIntent, IntentPeer, IntentPort, IsolationIntent},
    tier::{InvalidTier, Tier},
    tiers::Tiers,
};
use crate::{
    ai::Catalog,
    dns::{FqdnPattern, PatternError},
    inventory::{
        EndpointKind, ObjectKind, ObjectRef,
        model::{Labels, Pod, Protocol},
    },
    policy::{Cidr, Problem, Selector},
};

/// A FlowIntent that was refused; the others still apply.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("FlowIntent {namespace}/{name}: {field}: {problem}")]
pub struct IntentError {
    /// Position of the intent in the slice given to compile, to find the file it came from.
    pub index: usize,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// Path of the offending field, for example `spec.egress.forbid[1].cidr`.
    pub field: String,
    /// What is wrong with it.
    pub problem: IntentProblem,
}

/// Why an intent was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IntentProblem {
    /// `metadata.name` absent or empty.
    #[error("required")]
    MissingName,
    /// No `egress`, `isolation` or `maxNewConnectionsPerMinute`.
    #[error("declares no rule: give egress, isolation or maxNewConnectionsPerMinute")]
    NoRule,
    /// A selector, CIDR or port that a NetworkPolicy could not hold either.
    #[error(transparent)]
    Invalid {
        /// The NetworkPolicy validation problem.
        #[from]
        source: Problem,
    },
    /// A tier that is not a label value.
    #[error(transparent)]
    Tier {
        /// Why.
        #[from]
        source: InvalidTier,
    },
    /// A peer of no kind.
    #[error("must specify a peer: selectors, cidr, fqdn, provider, world, metadataService or apiServer")]
    EmptyPeer,
    /// A provider the AI catalog does not know.
    #[error("unknown AI provider {name:?}: the catalog knows {known} (extend it with ai.catalog in the configuration)")]
    UnknownProvider {
        /// The name as written.
        name: String,
        /// The catalog's provider names, comma separated.
        known: String,
    },
    /// A peer of more than one kind.
    #[error("may specify only one kind of peer, got {kinds}")]
    MixedPeer {
        /// The kinds given, comma separated.
        kinds: String,
    },
    /// `world`, `metadataService` or `apiServer` set to false.
    #[error("false selects nothing: leave the field out")]
    FalseFlag,
    /// `except` without `cidr`.
    #[error("except may only be given with cidr")]
    ExceptWithoutCidr,
    /// An FQDN pattern that is not a DNS name or `*.` and a domain.
    #[error("invalid fqdn {value:?}: {source}")]
    Fqdn {
        /// The pattern as written.
        value: String,
        /// Why.
        #[source]
        source: PatternError,
    },
    /// `maxNewConnectionsPerMinute: 0`.
    #[error("must be at least 1")]
    ZeroRate,
    /// `onlyThrough` that is not a pod peer.
    #[error("the gateway must be pods: give podSelector, namespaceSelector or tiers")]
    GatewayNotPods,
}

/// The namespaces a subject or peer is in.
#[derive(Clone, Debug)]
pub(crate) enum Namespaces {
    /// The intent's own.
    Own(Arc<str>),
    /// Those whose labels match.
    Matching(Selector),
}

impl Namespaces {
    fn matches(&self, namespace: &str, labels: &Labels) -> bool {
        match self {
            Self::Own(own) => **own == *namespace,
            Self::Matching(selector) => selector.matches(labels),
        }
    }
}

/// What a peer matches.
#[derive(Clone, Debug)]
pub(crate) enum PeerKind {
    /// Pods by labels, namespace and tier; with only a namespace selector,
    /// Services in those namespaces too.
    Pods { namespaces: Namespaces, pods: Option<Selector>, tiers: Option<Box<[Tier]>> },
    /// Addresses in a block, less its exceptions.
    Cidr { cidr: Cidr, except: Box<[Cidr]> },
    /// Outside the cluster.
    World,
    /// The cloud metadata service.
    MetadataService,
    /// The Kubernetes API server.
    ApiServer,
    /// Addresses the source pod resolved from a name matching the pattern.
    Fqdn(FqdnPattern),
    /// Endpoints of this AI provider of the catalog.
    Provider(Arc<str>),
}

/// A port range of one protocol.
#[derive(Clone, Copy, Debug)]
struct PortRange {
    first: u16,
    last: u16,
    protocol: Protocol,
}

/// A compiled peer.
#[derive(Clone, Debug)]
pub(crate) struct Peer {
    pub(crate) kind: PeerKind,
    ports: Option<Box<[PortRange]>>,
    /// How the peer reads in a reason, for example `world` or `cidr 10.0.0.0/8`.
    pub(crate) label: Arc<str>,
}

/// What matching a destination needs besides the peer.
pub(crate) struct MatchContext<'a> {
    /// Labels of the namespaces the inventory holds, by name.
    pub(crate) namespaces: &'a HashMap<String, Labels>,
    /// Tier configuration.
    pub(crate) tiers: &'a Tiers,
    /// Metadata service addresses.
    pub(crate) metadata: &'a [IpAddr],
    /// API server addresses.
    pub(crate) api_server: &'a [IpAddr],
}

impl MatchContext<'_> {
    /// Labels of a namespace; one the inventory does not hold carries only its
    /// name label, as the API server would set.
    pub(crate) fn namespace_labels(&self, name: &str) -> Cow<'_, Labels> {
        match self.namespaces.get(name) {
            Some(labels) => Cow::Borrowed(labels),
            None => Cow::Owned(Labels::from([(NAMESPACE_NAME_LABEL.to_owned(), name.to_owned())])),
        }
    }

    /// The tier of a pod.
    pub(crate) fn tier_of(&self, pod: &Pod) -> Option<Tier> {
        self.tiers.tier(&pod.labels, &self.namespace_labels(&pod.namespace))
    }
}

/// The label the API server gives every namespace.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

impl Peer {
    /// Whether `end`, reached with `protocol`, is this peer. An end whose kind
    /// is unknown matches only address peers.
    pub(crate) fn matches(&self, end: &FlowEnd<'_>, protocol: Option<Protocol>, context: &MatchContext<'_>) -> bool {
        let port_ok = self.ports.as_ref().is_none_or(|ports| {
            let (Some(port), Some(protocol)) = (end.port, protocol) else { return false };
            ports.iter().any(|range| range.protocol == protocol && (range.first..=range.last).contains(&port))
        });
        port_ok
            && match &self.kind {
                PeerKind::Pods { namespaces, pods, tiers } => match (end.kind, end.pod, end.namespace) {
                    (EndpointKind::Pod, Some(pod), _) => {
                        namespaces.matches(&pod.namespace, &context.namespace_labels(&pod.namespace))
                            && pods.as_ref().is_none_or(|selector| selector.matches(&pod.labels))
                            && tiers
                                .as_ref()
                                .is_none_or(|tiers| context.tier_of(pod).is_some_and(|tier| tiers.contains(&tier)))
                    }
                    (EndpointKind::Service, _, Some(namespace)) => {
                        pods.is_none()
                            && tiers.is_none()
                            && namespaces.matches(namespace, &context.namespace_labels(namespace))
                    }
                    _ => false,
                },
                PeerKind::Cidr { cidr, except } => {
                    cidr.contains(end.ip) && !except.iter().any(|except| except.contains(end.ip))
                }
                PeerKind::World => end.kind == EndpointKind::World,
                // Names the source pod resolved for this address; a
                // direct-IP end (never resolved) or one with no DNS
                // knowledge matches no name.
                PeerKind::Fqdn(pattern) => end.names.is_some_and(|names| pattern.matches_any(names)),
                PeerKind::Provider(name) => end.provider == Some(&**name),
                PeerKind::MetadataService => context.metadata.contains(&end.ip),
                PeerKind::ApiServer => {
                    context.api_server.contains(&end.ip)
                        || (end.kind == EndpointKind::Service
                            && end.namespace == Some("default")
                            && end.service == Some("kubernetes"))
                }
            }
    }
}

/// The pods an intent is about.
#[derive(Clone, Debug)]
pub(crate) struct CompiledSubject {
    pub(crate) tiers: Option<Box<[Tier]>>,
    pub(crate) pods: Selector,
    pub(crate) namespaces: Namespaces,
}

impl CompiledSubject {
    /// Whether a pod in `namespace` with `labels` and `tier` is a subject.
    pub(crate) fn matches(
        &self,
        namespace: &str,
        labels: &Labels,
        namespace_labels: &Labels,
        tier: Option<&Tier>,
    ) -> bool {
        self.tiers.as_ref().is_none_or(|tiers| tier.is_some_and(|tier| tiers.contains(tier)))
            && self.namespaces.matches(namespace, namespace_labels)
            && self.pods.matches(labels)
    }
}

/// A validated intent.
#[derive(Clone, Debug)]
pub(crate) struct CompiledIntent {
    pub(crate) meta: Arc<ObjectRef>,
    pub(crate) subject: CompiledSubject,
    pub(crate) forbid: Box<[Peer]>,
    pub(crate) only_through: Option<Peer>,
    pub(crate) allow: Option<Box<[Peer]>>,
    pub(crate) isolation: IsolationIntent,
    pub(crate) max_new_connections_per_minute: Option<u32>,
}

/// A problem and the field it is in.
type Failure = (String, IntentProblem);

fn at<P: Into<IntentProblem>>(field: impl fmt::Display) -> impl FnOnce(P) -> Failure {
    move |problem| (field.to_string(), problem.into())
}

fn tiers(values: Option<&Vec<String>>, field: &str) -> Result<Option<Box<[Tier]>>, Failure> {
    values
        .map(|values| {
            values
                .iter()
                .enumerate()
                .map(|(index, value)| Tier::new(value).map_err(at(format!("{field}[{index}]"))))
                .collect::<Result<Box<[Tier]>, _>>()
        })
        .transpose()
}

fn namespaces(selector: Option<&LabelSelector>, own: &Arc<str>, field: &str) -> Result<Namespaces, Failure> {
    Ok(match selector {
        None => Namespaces::Own(own.clone()),
        Some(selector) => Namespaces::Matching(Selector::compile(Some(selector)).map_err(at(field))?),
    })
}

fn port_range(port: &IntentPort, field: &str) -> Result<PortRange, Failure> {
    let protocol = Protocol::from_k8s(port.protocol.as_deref()).ok_or_else(|| {
        (
            format!("{field}.protocol"),
            Problem::UnsupportedProtocol { value: port.protocol.clone().unwrap_or_default() }.into(),
        )
    })?;
    let number = |value: i32, name: &str| {
        u16::try_from(value)
            .ok()
            .filter(|port| *port != 0)
            .ok_or_else(|| (format!("{field}.{name}"), Problem::PortOutOfRange { value }.into()))
    };
    let (first, last) = match (port.port, port.end_port) {
        (None, None) => (1, u16::MAX),
        (None, Some(_)) => return Err((format!("{field}.endPort"), Problem::EndPortWithoutNumericPort.into())),
        (Some(port), None) => {
            let port = number(port, "port")?;
            (port, port)
        }
        (Some(first), Some(last)) => {
            let (first_value, last_value) = (first, last);
            let (first, last) = (number(first, "port")?, number(last, "endPort")?);
            if last < first {
                return Err((
                    format!("{field}.endPort"),
                    Problem::EndPortBelowPort { port: first_value, end_port: last_value }.into(),
                ));
            }
            (first, last)
        }
    };
    Ok(PortRange { first, last, protocol })
}

fn parse_cidr(text: &str, field: String) -> Result<Cidr, Failure> {
    text.parse().map_err(|reason| (field, Problem::InvalidCidr { value: text.to_owned(), reason }.into()))
}

fn flag(value: Option<bool>, field: &str) -> Result<bool, Failure> {
    match value {
        Some(false) => Err(at(field)(IntentProblem::FalseFlag)),
        Some(true) => Ok(true),
        None => Ok(false),
    }
}

/// Compiles a peer at `field` of an intent in namespace `own`; `catalog`
/// names the AI providers a `provider` peer may name.
fn peer(peer: &IntentPeer, own: &Arc<str>, field: &str, catalog: &Catalog) -> Result<Peer, Failure> {
    let selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some() || peer.tiers.is_some();
    let world = flag(peer.world, &format!("{field}.world"))?;
    let metadata = flag(peer.metadata_service, &format!("{field}.metadataService"))?;
    let api_server = flag(peer.api_server, &format!("{field}.apiServer"))?;
    let given: Vec<&str> = [
        (selectors, "selectors"),
        (peer.cidr.is_some(), "cidr"),
        (peer.fqdn.is_some(), "fqdn"),
        (peer.provider.is_some(), "provider"),
        (world, "world"),
        (metadata, "metadataService"),
        (api_server, "apiServer"),
    ]
    .into_iter()
    .filter_map(|(given, name)| given.then_some(name))
    .collect();
    match given.len() {
        0 => return Err(at(field)(IntentProblem::EmptyPeer)),
        1 => {}
        _ => return Err(at(field)(IntentProblem::MixedPeer { kinds: given.join(", ") })),
    }
    if peer.except.is_some() && peer.cidr.is_none() {
        return Err(at(format!("{field}.except"))(IntentProblem::ExceptWithoutCidr));
    }
    let (kind, label): (PeerKind, String) = if selectors {
        let pods = peer
            .pod_selector
            .as_ref()
            .map(|selector| Selector::compile(Some(selector)).map_err(at(format!("{field}.podSelector"))))
            .transpose()?;
        let kind = PeerKind::Pods {
            namespaces: namespaces(peer.namespace_selector.as_ref(), own, &format!("{field}.namespaceSelector"))?,
            pods,
            tiers: tiers(peer.tiers.as_ref(), &format!("{field}.tiers"))?,
        };
        let label = match &peer.tiers {
            Some(tiers) => format!("pods of tier {}", tiers.join("|")),
            None => "selected pods".to_owned(),
        };
        (kind, label)
    } else if let Some(text) = &peer.cidr {
        let cidr = parse_cidr(text, format!("{field}.cidr"))?;
        let except = peer
            .except
            .iter()
            .flatten()
            .enumerate()
            .map(|(index, text)| {
                let except = parse_cidr(text, format!("{field}.except[{index}]"))?;
                if cidr.strictly_contains(&except) {
                    Ok(except)
                } else {
                    Err((
                        format!("{field}.except[{index}]"),
                        Problem::ExceptOutsideCidr { cidr: cidr.to_string(), except: text.clone() }.into(),
                    ))
                }
            })
            .collect::<Result<Box<[Cidr]>, _>>()?;
        (PeerKind::Cidr { cidr, except }, format!("cidr {cidr}"))
    } else if let Some(text) = &peer.fqdn {
        let pattern = FqdnPattern::parse(text)
            .map_err(|source| at(format!("{field}.fqdn"))(IntentProblem::Fqdn { value: text.clone(), source }))?;
        let label = format!("fqdn {pattern}");
        (PeerKind::Fqdn(pattern), label)
    } else if let Some(name) = &peer.provider {
        let Some(provider) = catalog.provider(name) else {
            let known: Vec<&str> = catalog.providers().iter().map(|provider| &*provider.name).collect();
            return Err(at(format!("{field}.provider"))(IntentProblem::UnknownProvider {
                name: name.clone(),
                known: known.join(", "),
            }));
        };
        (PeerKind::Provider(Arc::clone(&provider.name)), format!("AI provider {name}"))
    } else if world {
        (PeerKind::World, "world".to_owned())
    } else if metadata {
        (PeerKind::MetadataService, "the cloud metadata service".to_owned())
    } else {
        (PeerKind::ApiServer, "the API server".to_owned())
    };
    let ports = peer
        .ports
        .as_ref()
        .map(|ports| {
            ports
                .iter()
                .enumerate()
                .map(|(index, port)| port_range(port, &format!("{field}.ports[{index}]")))
                .collect::<Result<Box<[PortRange]>, _>>()
        })
        .transpose()?;
    Ok(Peer { kind, ports, label: label.into() })
}

/// The intent's name and versions.
pub(crate) fn intent_ref(intent: &FlowIntent) -> ObjectRef {
    ObjectRef::of(ObjectKind::FlowIntent, &intent.metadata)
}

impl CompiledIntent {
    /// Validates and compiles an intent.
    pub(crate) fn compile(
        intent: &FlowIntent,
        meta: ObjectRef,
        catalog: &Catalog,
    ) -> Result<Self, (String, IntentProblem)> {
        if meta.name.is_empty() {
            return Err(("metadata.name".to_owned(), IntentProblem::MissingName));
        }
        let own: Arc<str> = meta.namespace.as_str().into();
        let spec = &intent.spec;
        if spec.egress.is_none() && spec.isolation.is_none() && spec.max_new_connections_per_minute.is_none() {
            return Err(("spec".to_owned(), IntentProblem::NoRule));
        }
        if spec.max_new_connections_per_minute == Some(0) {
            return Err(("spec.maxNewConnectionsPerMinute".to_owned(), IntentProblem::ZeroRate));
        }
        let subject = CompiledSubject {
            tiers: tiers(spec.subject.tiers.as_ref(), "spec.subject.tiers")?,
            pods: Selector::compile(spec.subject.pod_selector.as_ref()).map_err(at("spec.subject.podSelector"))?,
            namespaces: namespaces(spec.subject.namespace_selector.as_ref(), &own, "spec.subject.namespaceSelector")?,
        };
        let peers = |peers: &[IntentPeer], field: &str| {
            peers
                .iter()
                .enumerate()
                .map(|(index, item)| peer(item, &own, &format!("{field}[{index}]"), catalog))
                .collect::<Result<Box<[Peer]>, _>>()
        };
        let egress = spec.egress.as_ref();
        let forbid =
            peers(egress.and_then(|egress| egress.forbid.as_deref()).unwrap_or_default(), "spec.egress.forbid")?;
        let allow = egress
            .and_then(|egress| egress.allow.as_deref())
            .map(|allow| peers(allow, "spec.egress.allow"))
            .transpose()?;
        let only_through = egress
            .and_then(|egress| egress.only_through.as_ref())
            .map(|gateway| {
                let compiled = peer(gateway, &own, "spec.egress.onlyThrough", catalog)?;
                match compiled.kind {
                    PeerKind::Pods { .. } => Ok(compiled),
                    _ => Err(("spec.egress.onlyThrough".to_owned(), IntentProblem::GatewayNotPods)),
                }
            })
            .transpose()?;
        Ok(Self {
            meta: Arc::new(meta),
            subject,
            forbid,
            only_through,
            allow,
            isolation: spec.isolation.unwrap_or_default(),
            max_new_connections_per_minute: spec.max_new_connections_per_minute,
        })
    }
}
