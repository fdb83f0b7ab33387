//! The compiled intents, ready to judge flows.
//!
//! In: FlowIntents, Namespaces (for namespace selectors and namespace tiers),
//! the compiled tier configuration and [`IntentConfig`]. Out: an immutable
//! [`IntentIndex`] that says, per flow, which intent rule the flow breaks
//! ([`IntentIndex::check_egress`]), and per pod its tier, the isolation its
//! intents require and its new-connection limits. Rebuild it when intents or
//! namespaces change and swap the `Arc` readers hold.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use super::{
    compile::{CompiledIntent, IntentError, MatchContext, intent_ref},
    end::FlowEnd,
    resource::{FlowIntent, IsolationIntent},
    tier::Tier,
    tiers::{TierConfig, Tiers},
};
use crate::{
    ai::Catalog,
    inventory::{
        EndpointKind, ObjectRef,
        model::{Labels, Namespace, Pod, Protocol},
    },
};

/// Settings of intent evaluation.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IntentConfig {
    /// How pods get their tier. Default: the `ai.governance/tier` label.
    pub tiers: TierConfig,
    /// Addresses that are the API server besides the `default/kubernetes`
    /// Service, which is recognised by name: its ClusterIP when enrichment
    /// does not resolve Services, and the control-plane endpoints. Default: none.
    pub api_server_addresses: Vec<IpAddr>,
    /// Addresses of the cloud instance metadata service. Default:
    /// 169.254.169.254 and fd00:ec2::254.
    pub metadata_addresses: Vec<IpAddr>,
}

impl Default for IntentConfig {
    fn default() -> Self {
        Self {
            tiers: TierConfig::default(),
            api_server_addresses: Vec::new(),
            metadata_addresses: vec![
                IpAddr::from([169, 254, 169, 254]),
                IpAddr::from([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254]),
            ],
        }
    }
}

/// A flow that breaks an intent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntentViolation {
    /// The intent broken.
    pub intent: Arc<ObjectRef>,
    /// The rule broken, as a field path: `spec.egress.forbid[0]`,
    /// `spec.egress.onlyThrough`, `spec.egress.allow` or
    /// `spec.maxNewConnectionsPerMinute`.
    pub rule: Arc<str>,
    /// Why, in words.
    pub reason: String,
}

/// Isolation an intent requires of a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsolationRequirement {
    /// The intent.
    pub intent: Arc<ObjectRef>,
    /// The directions it requires.
    pub isolation: IsolationIntent,
}

/// A new-connection limit an intent sets on a pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Position of the intent in the index, a stable key while the index lives.
    pub id: usize,
    /// The intent.
    pub intent: Arc<ObjectRef>,
    /// New connections allowed per minute.
    pub per_minute: u32,
}

/// Compiled FlowIntents. Immutable.
#[derive(Clone, Debug, Default)]
pub struct IntentIndex {
    /// By namespace, then name, so the first violation reported is stable.
    intents: Vec<CompiledIntent>,
    namespaces: HashMap<String, Labels>,
    tiers: Tiers,
    metadata: Vec<IpAddr>,
    api_server: Vec<IpAddr>,
}

/// A short description of an end for reasons: `ns/pod`, `ns/svc (service)`, `1.2.3.4 (world)`.
pub(crate) fn describe(end: &FlowEnd<'_>) -> String {
    let port = end.port.map(|port| format!(":{port}")).unwrap_or_default();
    match (end.kind, end.namespace, end.pod_name, end.service) {
        (EndpointKind::Pod, Some(namespace), Some(pod), _) => format!("{namespace}/{pod}{port}"),
        (EndpointKind::Service, Some(namespace), _, Some(service)) => format!("{namespace}/{service}{port} (service)"),
        (kind, ..) => {
            let kind = serde_json::to_value(kind).ok().and_then(|value| value.as_str().map(str::to_owned));
            let kind = kind.unwrap_or_default();
            match end.names {
                Some([]) => format!("{}{port} ({kind}, never resolved: direct-IP)", end.ip),
                Some(names) => {
                    let names: Vec<&str> = names.iter().map(|name| &**name).collect();
                    let provider = end.provider.map(|provider| format!(", AI provider {provider}")).unwrap_or_default();
                    format!("{}{port} ({kind}, {}{provider})", end.ip, names.join("|"))
                }
                None => format!("{}{port} ({kind})", end.ip),
            }
        }
    }
}

impl IntentIndex {
    /// Compiles `intents`; those that fail validation are left out and
    /// reported, each naming its position in `intents`, field and reason.
    /// `provider` peers name providers of the shipped AI catalog.
    pub fn compile(
        intents: &[FlowIntent],
        namespaces: &[Namespace],
        tiers: Tiers,
        config: &IntentConfig,
    ) -> (Self, Vec<IntentError>) {
        Self::compile_with_catalog(intents, namespaces, tiers, config, &Catalog::shipped())
    }

    /// [`IntentIndex::compile`] with `provider` peers naming providers of `catalog`.
    pub fn compile_with_catalog(
        intents: &[FlowIntent],
        namespaces: &[Namespace],
        tiers: Tiers,
        config: &IntentConfig,
        catalog: &Catalog,
    ) -> (Self, Vec<IntentError>) {
        let mut compiled = Vec::new();
        let mut errors = Vec::new();
        for (index, intent) in intents.iter().enumerate() {
            let meta = intent_ref(intent);
            match CompiledIntent::compile(intent, meta.clone(), catalog) {
                Ok(intent) => compiled.push(intent),
                Err((field, problem)) => {
                    errors.push(IntentError { index, namespace: meta.namespace, name: meta.name, field, problem });
                }
            }
        }
        compiled.sort_by(|a, b| (&a.meta.namespace, &a.meta.name).cmp(&(&b.meta.namespace, &b.meta.name)));
        // A later copy of the same intent (a reload) replaces the earlier one.
        compiled.dedup_by(|later, earlier| {
            let same = later.meta.namespace == earlier.meta.namespace && later.meta.name == earlier.meta.name;
            if same {
                std::mem::swap(later, earlier);
            }
            same
        });
        let namespaces =
            namespaces.iter().map(|namespace| (namespace.name.clone(), namespace.labels.clone())).collect();
        let index = Self {
            intents: compiled,
            namespaces,
            tiers,
            metadata: config.metadata_addresses.clone(),
            api_server: config.api_server_addresses.clone(),
        };
        (index, errors)
    }

    /// How many intents compiled.
    pub fn len(&self) -> usize {
        self.intents.len()
    }

    /// Whether no intent compiled.
    pub fn is_empty(&self) -> bool {
        self.intents.is_empty()
    }

    /// The compiled intents, by namespace and name.
    pub fn intents(&self) -> impl Iterator<Item = &Arc<ObjectRef>> {
        self.intents.iter().map(|intent| &intent.meta)
    }

    fn context(&self) -> MatchContext<'_> {
        MatchContext {
            namespaces: &self.namespaces,
            tiers: &self.tiers,
            metadata: &self.metadata,
            api_server: &self.api_server,
        }
    }

    /// The tier of a pod: its label, its namespace's label, or a configured selector.
    pub fn tier_of(&self, pod: &Pod) -> Option<Tier> {
        self.context().tier_of(pod)
    }

    /// The intents whose subject `pod` (of `tier`) is, with their positions.
    fn applying<'a>(
        &'a self,
        pod: &'a Pod,
        tier: Option<&'a Tier>,
        context: &'a MatchContext<'a>,
    ) -> impl Iterator<Item = (usize, &'a CompiledIntent)> + 'a {
        let namespace_labels = context.namespace_labels(&pod.namespace);
        self.intents
            .iter()
            .enumerate()
            .filter(move |(_, intent)| intent.subject.matches(&pod.namespace, &pod.labels, &namespace_labels, tier))
    }

    /// The first intent rule that a flow from `src` to `dst` breaks, if any.
    /// Only flows from pods the inventory holds have intents; a destination
    /// whose kind is unknown breaks only address rules.
    pub fn check_egress(
        &self,
        src: &FlowEnd<'_>,
        dst: &FlowEnd<'_>,
        protocol: Option<Protocol>,
    ) -> Option<IntentViolation> {
        self.check_egress_asked(src, dst, None, protocol)
    }

    /// [`IntentIndex::check_egress`] of a flow that `src` sent to `asked` (a
    /// Service's ClusterIP, a redirected address) and that reached `dst` (its
    /// backend): a peer matches when it matches either, so a `forbid` of the
    /// address the pod connected to holds however the node rewrote it, and a
    /// tier or selector matches the pod behind a Service. `onlyThrough`
    /// judges where the flow went (`dst`).
    pub fn check_egress_asked(
        &self,
        src: &FlowEnd<'_>,
        dst: &FlowEnd<'_>,
        asked: Option<&FlowEnd<'_>>,
        protocol: Option<Protocol>,
    ) -> Option<IntentViolation> {
        let pod = src.pod.filter(|_| src.kind == EndpointKind::Pod)?;
        if self.intents.is_empty() {
            return None;
        }
        let context = self.context();
        let tier = context.tier_of(pod);
        let violation = |intent: &CompiledIntent, rule: String, what: String| IntentViolation {
            intent: intent.meta.clone(),
            reason: format!(
                "{} -> {}: {what} (FlowIntent {} {rule})",
                // The source port is ephemeral: leaving it out keeps reasons of repeats alike.
                describe(&FlowEnd { port: None, ..*src }),
                match asked {
                    Some(asked) => format!("{} (sent to {})", describe(asked), describe(dst)),
                    None => describe(dst),
                },
                intent.meta
            ),
            rule: rule.into(),
        };
        for (_, intent) in self.applying(pod, tier.as_ref(), &context) {
            let matches = |peer: &super::compile::Peer| {
                peer.matches(dst, protocol, &context)
                    || asked.is_some_and(|asked| peer.matches(asked, protocol, &context))
            };
            if let Some((index, peer)) = intent.forbid.iter().enumerate().find(|(_, peer)| matches(peer)) {
                return Some(violation(
                    intent,
                    format!("spec.egress.forbid[{index}]"),
                    format!("egress to {} is forbidden", peer.label),
                ));
            }
            if let Some(gateway) = &intent.only_through
                && dst.kind == EndpointKind::World
                && !gateway.matches(&FlowEnd { port: None, ..*src }, None, &context)
            {
                return Some(violation(
                    intent,
                    "spec.egress.onlyThrough".to_owned(),
                    format!("egress outside the cluster must go through {}", gateway.label),
                ));
            }
            if let Some(allow) = &intent.allow
                && dst.kind != EndpointKind::Unknown
                && !allow.iter().any(matches)
            {
                let what = if dst.names == Some(&[])
                    && allow.iter().any(|peer| matches!(peer.kind, super::compile::PeerKind::Fqdn(_)))
                {
                    "the destination was never resolved by name (direct-IP) and is not an allowed peer"
                } else {
                    "the destination is not an allowed peer"
                };
                return Some(violation(intent, "spec.egress.allow".to_owned(), what.to_owned()));
            }
        }
        None
    }

    /// The isolation that intents require of `pod`.
    pub fn required_isolation(&self, pod: &Pod) -> Vec<IsolationRequirement> {
        let context = self.context();
        let tier = context.tier_of(pod);
        self.applying(pod, tier.as_ref(), &context)
            .filter(|(_, intent)| intent.isolation.ingress || intent.isolation.egress)
            .map(|(_, intent)| IsolationRequirement { intent: intent.meta.clone(), isolation: intent.isolation })
            .collect()
    }

    /// The new-connection limits that intents set on `pod`.
    pub fn rate_limits(&self, pod: &Pod) -> Vec<RateLimit> {
        let context = self.context();
        let tier = context.tier_of(pod);
        self.applying(pod, tier.as_ref(), &context)
            .filter_map(|(id, intent)| {
                let per_minute = intent.max_new_connections_per_minute?;
                Some(RateLimit { id, intent: intent.meta.clone(), per_minute })
            })
            .collect()
    }
}
