//! The `ClusterNetworkPolicy` object (`policy.networking.k8s.io/v1alpha2`,
//! network-policy-api v0.2.0), as declared in YAML or served by the API server.
//!
//! In: JSON or YAML of kind `ClusterNetworkPolicy`. Out: typed objects that
//! [`super::compile`] validates. Fields are kept as given (numbers as `i64`,
//! enums as strings) so that validation, not parsing, reports what is wrong
//! and where.

use std::borrow::Cow;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use serde::{Deserialize, Serialize};

/// API group of ClusterNetworkPolicies.
pub const GROUP: &str = "policy.networking.k8s.io";
/// API version followed.
pub const VERSION: &str = "v1alpha2";
/// Kind.
pub const KIND: &str = "ClusterNetworkPolicy";
/// Resource (plural) name.
pub const PLURAL: &str = "clusternetworkpolicies";

/// A cluster-wide policy of the Admin or Baseline tier.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
pub struct ClusterNetworkPolicy {
    /// Name and the versions judged against; cluster-scoped, no namespace.
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// The policy.
    #[serde(default)]
    pub spec: ClusterNetworkPolicySpec,
}

/// `spec` of a ClusterNetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// `Admin` or `Baseline`.
    #[serde(default)]
    pub tier: String,
    /// 0 to 1000; lower values are evaluated first within the tier.
    #[serde(default)]
    pub priority: Option<i64>,
    /// The pods the policy applies to.
    #[serde(default)]
    pub subject: PolicySubject,
    /// Rules for traffic to the subject pods, in precedence order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<IngressRule>>,
    /// Rules for traffic from the subject pods, in precedence order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<EgressRule>>,
}

/// `spec.subject`: exactly one of `namespaces` and `pods`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySubject {
    /// Every pod of the namespaces selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The pods selected in the namespaces selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods by namespace selector AND pod selector.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NamespacedPod {
    /// Empty or absent: every namespace.
    #[serde(default)]
    pub namespace_selector: LabelSelector,
    /// Empty: every pod.
    #[serde(default)]
    pub pod_selector: LabelSelector,
}

/// One ingress rule.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    /// At most 100 characters, for explanations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass`.
    #[serde(default)]
    pub action: String,
    /// 1 to 25 sources.
    #[serde(default)]
    pub from: Vec<IngressPeer>,
    /// 1 to 25 protocol matches, or absent for all traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// One egress rule.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressRule {
    /// At most 100 characters, for explanations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass`.
    #[serde(default)]
    pub action: String,
    /// 1 to 25 destinations.
    #[serde(default)]
    pub to: Vec<EgressPeer>,
    /// 1 to 25 protocol matches, or absent for all traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocols: Option<Vec<ProtocolMatch>>,
}

/// A source: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressPeer {
    /// Every pod of the namespaces selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The pods selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// A destination: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EgressPeer {
    /// Every pod of the namespaces selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,
    /// The pods selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
    /// The addresses of the nodes selected (empty: every node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<LabelSelector>,
    /// 1 to 25 CIDRs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// 1 to 25 domain names, `*.` wildcard prefix allowed; Accept rules only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain_names: Option<Vec<String>>,
}

/// One protocol match: exactly one field.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProtocolMatch {
    /// TCP, with a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<PortMatch>,
    /// UDP, with a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udp: Option<PortMatch>,
    /// SCTP, with a destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sctp: Option<PortMatch>,
    /// A container port name on the destination pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_named_port: Option<String>,
}

/// `tcp`, `udp` or `sctp`: at least one field.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMatch {
    /// The destination port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<Port>,
}

/// A port: exactly one of `number` and `range`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Port {
    /// 1 to 65535.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<i64>,
    /// An inclusive range, `start < end`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range: Option<PortRange>,
}

/// An inclusive port range.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortRange {
    /// First port.
    #[serde(default)]
    pub start: i64,
    /// Last port.
    #[serde(default)]
    pub end: i64,
}

impl kube::Resource for ClusterNetworkPolicy {
    type DynamicType = ();
    type Scope = k8s_openapi::ClusterResourceScope;

    fn kind((): &()) -> Cow<'_, str> {
        Cow::Borrowed(KIND)
    }

    fn group((): &()) -> Cow<'_, str> {
        Cow::Borrowed(GROUP)
    }

    fn version((): &()) -> Cow<'_, str> {
        Cow::Borrowed(VERSION)
    }

    fn plural((): &()) -> Cow<'_, str> {
        Cow::Borrowed(PLURAL)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}
