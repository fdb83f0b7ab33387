//! What the judge says about one flow.
//!
//! In: the outcome of policies, delivery evidence and intents. Out: a
//! serde-serializable [`FlowVerdict`] that sits in a flow record as
//! `"verdict": {...}` and names everything it was decided by, with versions.

use std::sync::Arc;

use serde::{Serialize, Serializer};

use crate::{intent::tier::Tier, inventory::object_ref::ObjectRef, rendered::RenderedJson};

/// The five verdicts a flow can get.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerdictKind {
    /// Policies allow it and no intent forbids it.
    Allowed,
    /// Policies deny it and it was not delivered: enforcement held, but a pod tried.
    DeniedAttempt,
    /// Policies deny it and it was delivered: the network does not enforce them.
    EnforcementGap,
    /// Policies allow it but an intent forbids it.
    IntentViolation,
    /// Policies can neither allow nor deny it from what the observer saw: a
    /// ClusterNetworkPolicy `domainNames` rule would accept it where the
    /// rest of the chain denies it, and no DNS name is known for its
    /// destination. Never guessed as allowed or denied, so it is no
    /// `enforcement-gap` and no `denied-attempt`.
    Undecidable,
}

impl VerdictKind {
    /// The name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::DeniedAttempt => "denied-attempt",
            Self::EnforcementGap => "enforcement-gap",
            Self::IntentViolation => "intent-violation",
            Self::Undecidable => "undecidable",
        }
    }
}

/// Whether the flow reached its destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Delivery {
    /// Proven: handshake completed, replies came back, or seen at the receiving pod's socket.
    Delivered,
    /// Refused or never answered.
    NotDelivered,
    /// Not known yet: a SYN in flight, or UDP with no reply seen.
    Unproven,
}

/// A policy named in a verdict: a NetworkPolicy as `{namespace, name,
/// resourceVersion, generation}`, a ClusterNetworkPolicy as `{kind, name,
/// tier, priority, resourceVersion, generation}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyCite(pub Arc<ObjectRef>);

impl Serialize for PolicyCite {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct View<'a> {
            #[serde(skip_serializing_if = "Option::is_none")]
            kind: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            namespace: Option<&'a str>,
            name: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            tier: Option<&'static str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            priority: Option<u16>,
            #[serde(skip_serializing_if = "Option::is_none")]
            resource_version: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            generation: Option<i64>,
        }
        let policy = &self.0;
        let cluster = policy.rank();
        View {
            kind: cluster.map(|_| "ClusterNetworkPolicy"),
            // ClusterNetworkPolicies are cluster-scoped: no namespace.
            namespace: cluster.is_none().then_some(policy.namespace.as_str()),
            name: &policy.name,
            tier: cluster.map(|rank| rank.tier.as_str()),
            priority: cluster.map(|rank| rank.priority),
            resource_version: policy.resource_version.as_deref(),
            generation: policy.generation,
        }
        .serialize(serializer)
    }
}

/// The intent rule named in a verdict, as `{namespace, name, rule, resourceVersion, generation}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntentCite {
    /// The intent.
    pub intent: Arc<ObjectRef>,
    /// The rule's field path, for example `spec.egress.forbid[0]`.
    pub rule: Arc<str>,
}

impl Serialize for IntentCite {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct View<'a> {
            namespace: &'a str,
            name: &'a str,
            rule: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            resource_version: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            generation: Option<i64>,
        }
        let intent = &self.intent;
        View {
            namespace: &intent.namespace,
            name: &intent.name,
            rule: &self.rule,
            resource_version: intent.resource_version.as_deref(),
            generation: intent.generation,
        }
        .serialize(serializer)
    }
}

/// What one possible backend of a Service flow would be judged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BackendVerdict {
    /// The backend pod's namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The backend pod's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Its address and port, for a backend that is no pod the inventory holds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<std::net::IpAddr>,
    /// The verdict the flow would get had it reached this backend.
    pub verdict: VerdictKind,
    /// The policies that decided it.
    pub policies: Vec<PolicyCite>,
}

/// The verdict of one flow, with its evidence.
// In declaration order: `verdict`, read for every record that carries it
// (the meter), then shares a cache line with the `Arc`'s counts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[repr(C)]
pub struct FlowVerdict {
    /// The verdict.
    pub verdict: VerdictKind,
    /// Why, in words: the deciding policies or intent rule, and the delivery evidence.
    pub reason: String,
    /// Whether the flow was delivered.
    pub delivery: Delivery,
    /// The deciding policies: those that allowed it, or those that isolate the
    /// side that denied it. Empty when no policy took part.
    pub policies: Vec<PolicyCite>,
    /// The intent rule the flow breaks, also when a policy verdict outranks it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentCite>,
    /// The source pod's uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_uid: Option<String>,
    /// The destination pod's uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_uid: Option<String>,
    /// The source pod's AI tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_tier: Option<Tier>,
    /// The destination pod's AI tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_tier: Option<Tier>,
    /// A flow to a Service whose backend is not known, and whose possible
    /// backends are not all judged alike (or none is known): `verdict` is the
    /// mildest of theirs, never a guessed `enforcement-gap`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ambiguous: bool,
    /// Each possible backend's verdict, when `ambiguous`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<BackendVerdict>,
    /// This verdict's JSON, for the flow log's lines that carry it.
    #[serde(skip)]
    pub json: RenderedJson,
}
