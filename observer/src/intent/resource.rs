//! The `FlowIntent` object: what an AI tier's traffic is meant to look like,
//! as declared in YAML.
//!
//! In: JSON or YAML of kind `FlowIntent` (`ai.governance/v1alpha1`), from
//! manifest files or the API server. Out: typed objects that the compiler
//! validates. Unknown fields in `spec` are refused, so a misspelt rule is an
//! error rather than a rule silently not checked. The CRD with its OpenAPI
//! schema, `deploy/crds/flowintent.yaml`, is generated from these types
//! ([`crd_yaml`]).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of FlowIntents.
pub const GROUP: &str = "ai.governance";
/// API version of FlowIntents.
pub const VERSION: &str = "v1alpha1";
/// Kind of FlowIntents.
pub const KIND: &str = "FlowIntent";
/// Resource (plural) name of FlowIntents.
pub const PLURAL: &str = "flowintents";

/// A tier name, as a label value: what the API server accepts in a tier list.
const TIER_PATTERN: &str = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$";

/// A DNS name or `*.` and a domain; the observer checks the rest.
const FQDN_PATTERN: &str = r"^(\*\.)?[A-Za-z0-9_-]{1,63}(\.[A-Za-z0-9_-]{1,63})*\.?$";

/// A catalog provider's name, as the CRD admits it (the catalog decides
/// which names exist when the intent compiles).
const PROVIDER_PATTERN: &str = r"^[a-z0-9][a-z0-9-]{0,62}$";

/// What an AI tier's traffic is meant to look like. The observer reports
/// flows that break it (intent-violation), pods it requires isolated that
/// are not (unprotected), and new-connection rates above its limit; it
/// enforces nothing. At least one of `egress`, `isolation` and
/// `maxNewConnectionsPerMinute` must be given.
///
/// The derive makes the object type [`FlowIntent`] (metadata and this spec,
/// listed and watched by kube-rs as `Api::<FlowIntent>::all(client)`) and
/// its CRD ([`kube::CustomResourceExt::crd`], rendered by [`crd_yaml`]).
#[derive(kube::CustomResource, Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "ai.governance",
    version = "v1alpha1",
    kind = "FlowIntent",
    plural = "flowintents",
    namespaced,
    shortname = "fi",
    derive = "Default",
    derive = "PartialEq",
    doc = "A declared intent for the traffic of some pods.",
    printcolumn(name = "Tiers", type_ = "string", json_path = ".spec.subject.tiers"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schemars(extend("anyOf" = [
    {"required": ["egress"]},
    {"required": ["isolation"]},
    {"required": ["maxNewConnectionsPerMinute"]},
]))]
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
    #[schemars(range(min = 1), transform = without_format)]
    pub max_new_connections_per_minute: Option<u32>,
    /// Free text for people reading findings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The pods an intent is about: every condition given must hold.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subject {
    /// Pods in any of these AI tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(length(max = 63), regex(pattern = TIER_PATTERN)))]
    pub tiers: Option<Vec<String>>,
    /// Pods whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector")]
    pub pod_selector: Option<LabelSelector>,
    /// Pods in namespaces whose labels match ({} for all); absent means the
    /// intent's own namespace, as in a NetworkPolicy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector")]
    pub namespace_selector: Option<LabelSelector>,
}

/// Egress rules, checked in this order: `forbid`, `onlyThrough`, `allow`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
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
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntentPeer {
    /// Pods whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector")]
    pub pod_selector: Option<LabelSelector>,
    /// Pods (alone: and Services) in namespaces whose labels match; absent
    /// means the intent's own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "label_selector")]
    pub namespace_selector: Option<LabelSelector>,
    /// Pods in any of these AI tiers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(inner(length(max = 63), regex(pattern = TIER_PATTERN)))]
    pub tiers: Option<Vec<String>>,
    /// Addresses in this block.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    /// Blocks inside `cidr` that are not part of the peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub except: Option<Vec<String>>,
    /// A DNS name (api.example.com) or every name below a domain
    /// (*.example.com, any depth, not the domain itself). Matches the
    /// addresses the source pod resolved from a matching name (learned from
    /// the DNS answers it received); an address it never resolved (direct-IP)
    /// matches no fqdn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253), regex(pattern = FQDN_PATTERN))]
    pub fqdn: Option<String>,
    /// An AI provider of the observer's catalog by name (`openai`,
    /// `anthropic`, see `docs/ai.md`): matches flows whose destination is
    /// one of its endpoints (`dst.ai_provider`), named by DNS or reached
    /// directly at an address resolved for one of its names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63), regex(pattern = PROVIDER_PATTERN))]
    pub provider: Option<String>,
    /// Anything outside the cluster (no pod, Service or node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [true]))]
    pub world: Option<bool>,
    /// The cloud instance metadata service (169.254.169.254, fd00:ec2::254).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [true]))]
    pub metadata_service: Option<bool>,
    /// The Kubernetes API server: the `default/kubernetes` Service and the
    /// configured API server addresses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = [true]))]
    pub api_server: Option<bool>,
    /// Only these destination ports; absent means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<IntentPort>>,
}

/// A destination port or range.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IntentPort {
    /// Port number; absent means any port of `protocol`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Last port of a range starting at `port`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub end_port: Option<i32>,
    /// `TCP` (default), `UDP` or `SCTP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("enum" = ["TCP", "UDP", "SCTP"]))]
    pub protocol: Option<String>,
}

/// Directions NetworkPolicies must isolate the subject pods for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IsolationIntent {
    /// An Ingress policy must select each subject pod.
    #[serde(default)]
    pub ingress: bool,
    /// An Egress policy must select each subject pod.
    #[serde(default)]
    pub egress: bool,
}

/// Drops schemars' `format: uint32`, which is no format Kubernetes knows:
/// `minimum` says what the field accepts.
fn without_format(schema: &mut schemars::Schema) {
    schema.remove("format");
}

/// The schema of a label selector in a FlowIntent: k8s-openapi's, with the
/// operators the API server accepts spelt out, so a typo is refused at apply
/// rather than left for the observer to report.
fn label_selector(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "properties": {
            "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
            "matchExpressions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
        "x-kubernetes-map-type": "atomic",
    })
}

/// The FlowIntent CRD as `deploy/crds/flowintent.yaml` holds it: generated
/// from [`FlowIntentSpec`] (`cargo xtask deploy` writes it, `cargo xtask
/// validate` fails when the file differs).
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    use kube::CustomResourceExt as _;
    let header = "# Generated by `cargo xtask deploy` from observer/src/intent/resource.rs: do not edit.\n\
        # FlowIntent: what the traffic of AI-tier pods is meant to look like. The\n\
        # observer reports flows that break it (intent-violation), pods it requires\n\
        # isolated that are not (unprotected), and new-connection rates above its\n\
        # limit; it enforces nothing. See docs/intents.md. The observer validates\n\
        # intents further (CIDRs, selector operators, one kind per peer) and reports\n\
        # those it refuses with the field and reason.\n";
    Ok(format!("{header}{}", serde_yaml::to_string(&FlowIntent::crd())?))
}
