//! Label sets of the metric families.
//!
//! In: already-resolved ends of a flow (namespace, workload, kind, tier and
//! the pod labels the operator allowed). Out: label sets that encode at
//! workload level: never an IP, a port or a pod name, so the number of series
//! follows the number of workloads that talk, not the number of pods or
//! connections.

use std::{collections::BTreeMap, fmt::Write as _, sync::Arc};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelSetEncoder};

/// The value every label of an overflow series carries.
pub const OVERFLOW: &str = "__overflow__";

/// A label set that has an overflow bucket: the one series that takes what
/// no longer fits under the family's series cap.
pub trait Overflow {
    /// The overflow label set.
    fn overflow() -> Self;
}

fn overflow_str() -> Arc<str> {
    Arc::from(OVERFLOW)
}

/// One end of an edge, at workload level.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EndLabels {
    /// Namespace of the pod or service; empty for anything outside a namespace.
    pub namespace: Arc<str>,
    /// Workload name (Deployment, StatefulSet, Job… at the top of the owner
    /// chain), Service or Node name, or `world`, `host`, `unknown`.
    pub workload: Arc<str>,
    /// Workload kind (`Deployment`, `StatefulSet`, `DaemonSet`, `Job`,
    /// `CronJob`, `Pod` for a bare pod) or `Service`, `Node`, `World`, `Host`,
    /// `Unknown`.
    pub kind: Arc<str>,
    /// AI tier of the workload (`model-server`, `agent`…), empty if none.
    pub tier: Arc<str>,
    /// Allowlisted pod labels: `(label name, value)`, the name already made a
    /// valid Prometheus label name, in allowlist order; see [`LabelAllowlist`].
    pub extra: Arc<[(Arc<str>, Arc<str>)]>,
}

impl EndLabels {
    /// An end of `kind` named `workload` in `namespace`, with no tier and no
    /// extra labels.
    pub fn new(kind: &str, namespace: &str, workload: &str) -> Self {
        Self {
            namespace: Arc::from(namespace),
            workload: Arc::from(workload),
            kind: Arc::from(kind),
            tier: Arc::from(""),
            extra: Arc::from([]),
        }
    }

    /// The same end with its AI tier.
    pub fn tier(mut self, tier: &str) -> Self {
        self.tier = Arc::from(tier);
        self
    }

    /// The same end with its allowlisted pod labels.
    pub fn extra(mut self, extra: Arc<[(Arc<str>, Arc<str>)]>) -> Self {
        self.extra = extra;
        self
    }

    /// Anything outside the cluster.
    pub fn world() -> Self {
        Self::new("World", "", "world")
    }

    /// The node itself: a process outside any pod.
    pub fn host() -> Self {
        Self::new("Host", "", "host")
    }

    /// Not resolved (yet): no inventory, or not synced.
    pub fn unknown() -> Self {
        Self::new("Unknown", "", "unknown")
    }

    fn overflow() -> Self {
        Self {
            namespace: overflow_str(),
            workload: overflow_str(),
            kind: overflow_str(),
            tier: overflow_str(),
            extra: Arc::from([]),
        }
    }

    fn encode_as(&self, prefix: &str, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        let fixed: [(&str, &str); 4] =
            [("namespace", &self.namespace), ("workload", &self.workload), ("kind", &self.kind), ("tier", &self.tier)];
        for (name, value) in fixed {
            encode_label(encoder, prefix, name, value)?;
        }
        for (name, value) in self.extra.iter() {
            encode_label(encoder, prefix, name, value)?;
        }
        Ok(())
    }
}

fn encode_label(encoder: &mut LabelSetEncoder, prefix: &str, name: &str, value: &str) -> Result<(), std::fmt::Error> {
    let mut label = encoder.encode_label();
    let mut key = label.encode_label_key()?;
    key.write_str(prefix)?;
    key.write_str(name)?;
    let mut value_encoder = key.encode_label_value()?;
    EncodeLabelValue::encode(&value, &mut value_encoder)?;
    value_encoder.finish()
}

/// Who reported an edge: the node of its source or of its destination. A
/// flow between two observed pods is reported by both, so a query that
/// counts traffic once takes one reporter (or the `max` of both).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The source (initiator) is local to the reporting node.
    Src,
    /// The destination (responder) is local to the reporting node.
    Dst,
}

impl Reporter {
    fn as_str(self) -> &'static str {
        match self {
            Self::Src => "src",
            Self::Dst => "dst",
        }
    }
}

/// One edge of the flow graph: who talked to whom over which protocol.
///
/// Labels: `src_namespace`, `src_workload`, `src_kind`, `src_tier`, the
/// source's allowlisted labels as `src_<name>`, the same for `dst_`,
/// `protocol` and `reporter`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EdgeLabels {
    /// The initiator.
    pub src: EndLabels,
    /// The responder.
    pub dst: EndLabels,
    /// `tcp`, `udp`, `sctp`, `icmp`, `icmpv6`, `ip-N`.
    pub protocol: Arc<str>,
    /// Which end is on the reporting node.
    pub reporter: Reporter,
}

impl EncodeLabelSet for EdgeLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        self.src.encode_as("src_", encoder)?;
        self.dst.encode_as("dst_", encoder)?;
        encode_label(encoder, "", "protocol", &self.protocol)?;
        let reporter = if self.protocol.as_ref() == OVERFLOW { OVERFLOW } else { self.reporter.as_str() };
        encode_label(encoder, "", "reporter", reporter)
    }
}

impl Overflow for EdgeLabels {
    fn overflow() -> Self {
        Self {
            src: EndLabels::overflow(),
            dst: EndLabels::overflow(),
            protocol: overflow_str(),
            reporter: Reporter::Src,
        }
    }
}

/// How a flow ended, in few enough values to be a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Closed, or idle after traffic both ways (the normal end).
    Completed,
    /// Answered with a TCP reset.
    Refused,
    /// Never answered (TCP connect given up; UDP/ICMP with nothing back).
    Unanswered,
    /// Evicted from the kernel flow map before it ended.
    Evicted,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Refused => "refused",
            Self::Unanswered => "unanswered",
            Self::Evicted => "evicted",
        }
    }
}

/// Direction of traffic on an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// From the source to the destination (a client's requests).
    ToDst,
    /// From the destination back to the source (a server's replies).
    ToSrc,
}

impl Direction {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ToDst => "to_dst",
            Self::ToSrc => "to_src",
        }
    }
}

/// A workload, for per-workload state (unprotected AI-tier pods).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WorkloadLabels {
    /// Namespace.
    pub namespace: Arc<str>,
    /// Workload name.
    pub workload: Arc<str>,
    /// Workload kind.
    pub kind: Arc<str>,
    /// AI tier, empty if none.
    pub tier: Arc<str>,
}

impl WorkloadLabels {
    /// A workload of `kind` in `namespace` in AI `tier`.
    pub fn new(kind: &str, namespace: &str, workload: &str, tier: &str) -> Self {
        Self {
            namespace: Arc::from(namespace),
            workload: Arc::from(workload),
            kind: Arc::from(kind),
            tier: Arc::from(tier),
        }
    }
}

impl Overflow for WorkloadLabels {
    fn overflow() -> Self {
        Self::new(OVERFLOW, OVERFLOW, OVERFLOW, OVERFLOW)
    }
}

/// A finding: what kind, about which workload, in which tier.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FindingLabels {
    /// `enforcement-gap`, `intent-violation`, `unprotected`, `spike`,
    /// `outlived-policy`, or a kind added later.
    pub kind: Arc<str>,
    /// AI tier of the workload the finding is about.
    pub tier: Arc<str>,
    /// Namespace of that workload.
    pub namespace: Arc<str>,
    /// That workload.
    pub workload: Arc<str>,
}

impl FindingLabels {
    /// A finding of `kind` about `workload` in `namespace`, AI `tier`.
    pub fn new(kind: &str, tier: &str, namespace: &str, workload: &str) -> Self {
        Self {
            kind: Arc::from(kind),
            tier: Arc::from(tier),
            namespace: Arc::from(namespace),
            workload: Arc::from(workload),
        }
    }
}

impl Overflow for FindingLabels {
    fn overflow() -> Self {
        Self::new(OVERFLOW, OVERFLOW, OVERFLOW, OVERFLOW)
    }
}

/// Names a bounded family, for the series and overflow counters.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct FamilyLabels {
    /// The family's exposed name without the prefix, e.g. `edge_bytes`.
    pub family: &'static str,
}

/// An inventory resource (`pods`, `namespaces`…).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResourceLabels {
    /// The resource.
    pub resource: String,
}

/// A kind of policy (`NetworkPolicy`, `ClusterNetworkPolicy`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct KindLabels {
    /// The kind.
    pub kind: String,
}

/// The inventory source.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceLabels {
    /// `cluster` or `standalone`.
    pub source: String,
}

/// An inventory source and a kind of failure.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct SourceErrorLabels {
    /// `cluster` or `standalone`.
    pub source: String,
    /// A fixed word: `watch`, `missing`, `unlistable`, `unreadable`,
    /// `too_large`, `changing`, `invalid`, `limits`.
    pub reason: &'static str,
}

/// Build information.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct BuildLabels {
    /// Crate version.
    pub version: &'static str,
    /// The git commit it was built from (`unknown` outside `cargo xtask image` and the Dockerfile).
    pub revision: &'static str,
    /// Target architecture.
    pub arch: &'static str,
}

/// The pod labels allowed as metric labels, and the metric label name each
/// becomes (`app.kubernetes.io/name` → `app_kubernetes_io_name`, exposed as
/// `src_app_kubernetes_io_name` and `dst_…`).
#[derive(Clone, Debug, Default)]
pub struct LabelAllowlist {
    keys: Vec<(String, Arc<str>)>,
}

impl LabelAllowlist {
    /// An allowlist of the given pod label keys, duplicates removed.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(keys: I) -> Self {
        let mut list = Self::default();
        for key in keys {
            let key = key.into();
            if list.keys.iter().any(|(known, _)| *known == key) {
                continue;
            }
            let name = sanitize(&key);
            list.keys.push((key, Arc::from(name)));
        }
        list
    }

    /// The allowed pod label keys, as Kubernetes spells them.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(key, _)| key.as_str())
    }

    /// Whether no pod label is allowed.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The allowlisted labels of a pod, in allowlist order; a key the pod
    /// does not have gets an empty value so every series of a family has the
    /// same label names.
    pub fn pick(&self, pod_labels: &BTreeMap<String, String>) -> Arc<[(Arc<str>, Arc<str>)]> {
        self.keys
            .iter()
            .map(|(key, name)| {
                let value = pod_labels.get(key).map_or_else(|| Arc::from(""), |value| Arc::from(value.as_str()));
                (Arc::clone(name), value)
            })
            .collect()
    }
}

/// A Prometheus label name for a Kubernetes label key: every character that
/// is not `[a-zA-Z0-9_]` becomes `_`.
fn sanitize(key: &str) -> String {
    key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_sanitizes_keys_and_fills_missing_values() {
        let list = LabelAllowlist::new(["app.kubernetes.io/name", "team", "team"]);
        let pod = BTreeMap::from([("app.kubernetes.io/name".to_owned(), "vllm".to_owned())]);
        let picked = list.pick(&pod);
        let picked: Vec<(&str, &str)> = picked.iter().map(|(name, value)| (name.as_ref(), value.as_ref())).collect();
        assert_eq!(picked, [("app_kubernetes_io_name", "vllm"), ("team", "")]);
    }
}
