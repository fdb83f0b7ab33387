//! A reference to one Kubernetes object, with the version of it that was used.
//!
//! In: an object's kind and `metadata`. Out: an [`ObjectRef`] that verdicts,
//! findings and reports cite (a NetworkPolicy, a ClusterNetworkPolicy with
//! its tier and priority, a FlowIntent), one type for every kind, so audit
//! evidence names every object the same way.

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Serialize, Serializer, ser::SerializeStruct};

/// The tier of a ClusterNetworkPolicy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Tier {
    /// Before NetworkPolicies; cannot be overridden by them.
    Admin,
    /// After NetworkPolicies, for pods they do not isolate.
    Baseline,
}

impl Tier {
    /// `Admin` or `Baseline`, as the API spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "Admin",
            Self::Baseline => "Baseline",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a ClusterNetworkPolicy stands in the evaluation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterRank {
    /// `spec.tier`.
    pub tier: Tier,
    /// `spec.priority`, 0 to 1000; lower first.
    pub priority: u16,
}

/// The kind of object referred to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectKind {
    /// A `networking.k8s.io/v1` NetworkPolicy.
    NetworkPolicy,
    /// A `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy, with where
    /// it stands in the evaluation order (the rank is part of what was judged).
    ClusterNetworkPolicy(ClusterRank),
    /// A FlowIntent.
    FlowIntent,
}

impl ObjectKind {
    /// The API's `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NetworkPolicy => "NetworkPolicy",
            Self::ClusterNetworkPolicy(_) => "ClusterNetworkPolicy",
            Self::FlowIntent => "FlowIntent",
        }
    }

    /// Whether objects of this kind live in a namespace.
    pub fn namespaced(self) -> bool {
        !matches!(self, Self::ClusterNetworkPolicy(_))
    }
}

/// An object that took part in a verdict, with the version judged.
///
/// Serialized as `{namespace, name, uid?, resource_version?, generation?}`,
/// plus `cluster: {tier, priority}` for a ClusterNetworkPolicy (whose
/// `namespace` is empty): the shape the flow log's evidence has always had.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectRef {
    /// What kind of object.
    pub kind: ObjectKind,
    /// `metadata.namespace` (`default` when absent); empty for a
    /// cluster-scoped object.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`, if set.
    pub uid: Option<String>,
    /// `metadata.resourceVersion`, if set.
    pub resource_version: Option<String>,
    /// `metadata.generation`, if set.
    pub generation: Option<i64>,
}

impl ObjectRef {
    /// The object of `kind` that `meta` describes.
    pub fn of(kind: ObjectKind, meta: &ObjectMeta) -> Self {
        let namespace = match kind.namespaced() {
            true => meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
            false => String::new(),
        };
        Self {
            kind,
            namespace,
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            generation: meta.generation,
        }
    }

    /// A ClusterNetworkPolicy's tier and priority; `None` for any other kind.
    pub fn rank(&self) -> Option<ClusterRank> {
        match self.kind {
            ObjectKind::ClusterNetworkPolicy(rank) => Some(rank),
            ObjectKind::NetworkPolicy | ObjectKind::FlowIntent => None,
        }
    }
}

impl fmt::Display for ObjectRef {
    /// `namespace/name`, or `cnp/name` for a ClusterNetworkPolicy.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            ObjectKind::ClusterNetworkPolicy(_) => write!(f, "cnp/{}", self.name),
            ObjectKind::NetworkPolicy | ObjectKind::FlowIntent => write!(f, "{}/{}", self.namespace, self.name),
        }
    }
}

impl Serialize for ObjectRef {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let rank = self.rank();
        let len = 2
            + usize::from(self.uid.is_some())
            + usize::from(self.resource_version.is_some())
            + usize::from(self.generation.is_some())
            + usize::from(rank.is_some());
        let mut out = serializer.serialize_struct("ObjectRef", len)?;
        out.serialize_field("namespace", &self.namespace)?;
        out.serialize_field("name", &self.name)?;
        if let Some(uid) = &self.uid {
            out.serialize_field("uid", uid)?;
        }
        if let Some(version) = &self.resource_version {
            out.serialize_field("resource_version", version)?;
        }
        if let Some(generation) = self.generation {
            out.serialize_field("generation", &generation)?;
        }
        if let Some(rank) = rank {
            out.serialize_field("cluster", &rank)?;
        }
        out.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(json: serde_json::Value) -> ObjectMeta {
        serde_json::from_value(json).expect("valid metadata")
    }

    #[test]
    fn namespaced_objects_default_their_namespace_and_cluster_scoped_ones_have_none() {
        let policy = ObjectRef::of(ObjectKind::NetworkPolicy, &meta(serde_json::json!({"name": "a"})));
        assert_eq!(policy.to_string(), "default/a");
        let rank = ClusterRank { tier: Tier::Admin, priority: 5 };
        let cnp = ObjectRef::of(
            ObjectKind::ClusterNetworkPolicy(rank),
            &meta(serde_json::json!({"name": "b", "namespace": "ignored"})),
        );
        assert_eq!((cnp.namespace.as_str(), cnp.to_string(), cnp.rank()), ("", "cnp/b".to_owned(), Some(rank)));
        assert_eq!(cnp.kind.as_str(), "ClusterNetworkPolicy");
    }

    #[test]
    fn serializes_as_the_evidence_always_did() {
        let intent = ObjectRef::of(
            ObjectKind::FlowIntent,
            &meta(serde_json::json!({"name": "i", "namespace": "ai", "resourceVersion": "7", "generation": 2})),
        );
        assert_eq!(
            serde_json::to_value(&intent).expect("serializes"),
            serde_json::json!({"namespace": "ai", "name": "i", "resource_version": "7", "generation": 2})
        );
        let cnp = ObjectRef::of(
            ObjectKind::ClusterNetworkPolicy(ClusterRank { tier: Tier::Baseline, priority: 10 }),
            &meta(serde_json::json!({"name": "b", "uid": "u"})),
        );
        assert_eq!(
            serde_json::to_value(&cnp).expect("serializes"),
            serde_json::json!({"namespace": "", "name": "b", "uid": "u",
                "cluster": {"tier": "Baseline", "priority": 10}})
        );
    }
}
