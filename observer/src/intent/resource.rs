//! The `FlowIntent` object: what an AI tier's traffic is meant to look like,
//! as declared in YAML.
//!
//! In: JSON or YAML of kind `FlowIntent` (`ai.governance/v1alpha1`), from
//! manifest files or the API server. Out: typed objects that the compiler
//! validates. Unknown fields in `spec` are refused, so a misspelt rule is an
//! error rather than a rule silently not checked. The CRD with its OpenAPI
//! schema is `deploy/crds/flowintent.yaml`.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

/// API group of FlowIntents.
pub const GROUP: &str = "ai.governance";
/// API version of FlowIntents.
pub const VERSION: &str = "v1alpha1";
/// Kind of FlowIntents.
pub const KIND: &str = "FlowIntent";
/// Resource (plural) name of FlowIntents.
pub const PLURAL: &str = "flowintents";

/// A declared intent for the traffic of some pods.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct FlowIntent {
    /// Name, namespace and the versions judged against.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The rules.
    pub spec: FlowIntentSpec,
}

/// The rules of an intent; at least one of `egress`, `isolation` and
/// `maxNewConnectionsPerMinute` must be given.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowIntentSpec {
    /// Which pods the intent is about.
    #[serde(default)]
    pub subject: Subject,
    /// Where the subject pods may and may not connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressIntent>,
    /// Which directions NetworkPolicies must isolate the subject pods for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationIntent>,
    /// Most new connections one subject pod may open per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_new_connections_per_minute: Option<u32>,
    /// Free text for people reading findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The pods an intent is about: every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    /// Pods in any of these tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<String>>,
    /// Pods whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Pods in namespaces whose labels match (`{}`: every namespace); absent
    /// means the intent's own namespace, as in a NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// Egress rules, checked in this order: `forbid`, `onlyThrough`, `allow`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressIntent {
    /// When given, the only peers the subject may connect to (`[]`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow: Option<Vec<IntentPeer>>,
    /// Peers the subject must never connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forbid: Option<Vec<IntentPeer>>,
    /// Connections outside the cluster must go through these gateway pods:
    /// any flow from the subject straight to `world` breaks it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub only_through: Option<IntentPeer>,
}

/// One kind of peer: selectors (`podSelector`, `namespaceSelector`, `tiers`,
/// together), or exactly one of `cidr`, `fqdn`, `provider`, `world`,
/// `metadataService` and `apiServer`; optionally narrowed to `ports`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntentPeer {
    /// Pods whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Pods (and, alone, Services) in namespaces whose labels match; absent
    /// means the intent's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods in any of these tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tiers: Option<Vec<String>>,
    /// Addresses in this block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Blocks inside `cidr` that are not part of the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
    /// A DNS name (`api.example.com`) or every name below a domain
    /// (`*.example.com`): matches addresses the source pod resolved from a
    /// matching name; see [`crate::dns::FqdnPattern`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fqdn: Option<String>,
    /// An AI provider of the observer's catalog by name (`openai`,
    /// `anthropic`, see `docs/ai.md`): matches flows whose destination is
    /// one of its endpoints (`dst.ai_provider`), named by DNS or reached
    /// directly at an address resolved for one of its names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    /// Anything outside the cluster (no pod, Service or node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world: Option<bool>,
    /// The cloud instance metadata service (169.254.169.254, fd00:ec2::254).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata_service: Option<bool>,
    /// The Kubernetes API server: the `default/kubernetes` Service and the
    /// configured API server addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<bool>,
    /// Only these destination ports; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<IntentPort>>,
}

/// A destination port or range.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntentPort {
    /// Port number; absent means any port of `protocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
    /// Last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// Directions NetworkPolicies must isolate the subject pods for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IsolationIntent {
    /// An Ingress policy must select each subject pod.
    #[serde(default)]
    pub ingress: bool,
    /// An Egress policy must select each subject pod.
    #[serde(default)]
    pub egress: bool,
}

/// FlowIntents are namespaced objects of a custom resource, so kube-rs can
/// list and watch them (`Api::<FlowIntent>::all(client)`).
impl kube::Resource for FlowIntent {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        KIND.into()
    }

    fn group(_: &()) -> Cow<'_, str> {
        GROUP.into()
    }

    fn version(_: &()) -> Cow<'_, str> {
        VERSION.into()
    }

    fn plural(_: &()) -> Cow<'_, str> {
        PLURAL.into()
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
