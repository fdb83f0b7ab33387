//! AI tiers: which kind of AI workload a pod is.
//!
//! In: a pod's labels, its namespace's labels and the configured tier label key
//! and selectors. Out: the pod's [`Tier`], if it has one. A pod's own label
//! wins over its namespace's, and both win over the configured selectors (tried
//! in order), so a workload's explicit declaration is never overridden by a
//! broad mapping.

use std::sync::Arc;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::tier::{DEFAULT_TIER_LABEL, InvalidTier, Tier};
use crate::{
    inventory::model::Labels,
    policy::{Problem, Selector},
};

/// A configured way to give pods a tier without labelling them.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierSelector {
    /// The tier given to the pods selected.
    pub tier: String,
    /// Pods whose labels match; absent selects every pod.
    pub pod_selector: Option<LabelSelector>,
    /// Pods in namespaces whose labels match; absent means any namespace.
    pub namespace_selector: Option<LabelSelector>,
}

/// How pods get their tier.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TierConfig {
    /// Label key on pods and namespaces whose value is the tier. Default
    /// `ai.governance/tier`.
    pub label_key: String,
    /// Further mappings, tried in order for pods whose labels and namespace
    /// labels name no tier. Default: none.
    pub selectors: Vec<TierSelector>,
}

impl Default for TierConfig {
    /// The `ai.governance/tier` label only.
    fn default() -> Self {
        Self { label_key: DEFAULT_TIER_LABEL.to_owned(), selectors: Vec::new() }
    }
}

/// A tier configuration that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TierConfigError {
    /// The label key is empty.
    #[error("tiers.label_key: must not be empty")]
    EmptyLabelKey,
    /// A selector's tier is not a valid label value.
    #[error("tiers.selectors[{index}].tier: {source}")]
    BadTier {
        /// Position in `selectors`.
        index: usize,
        /// Why.
        #[source]
        source: InvalidTier,
    },
    /// A selector's label selector is invalid.
    #[error("tiers.selectors[{index}].{field}: {source}")]
    BadSelector {
        /// Position in `selectors`.
        index: usize,
        /// `pod_selector` or `namespace_selector`.
        field: &'static str,
        /// Why.
        #[source]
        source: Problem,
    },
}

#[derive(Clone, Debug)]
struct CompiledTierSelector {
    tier: Tier,
    pods: Selector,
    namespaces: Selector,
}

/// Compiled tier configuration: says which tier a pod is in.
#[derive(Clone, Debug)]
pub struct Tiers {
    label_key: Arc<str>,
    selectors: Arc<[CompiledTierSelector]>,
}

impl Default for Tiers {
    /// The `ai.governance/tier` label only.
    fn default() -> Self {
        Self { label_key: DEFAULT_TIER_LABEL.into(), selectors: Arc::new([]) }
    }
}

impl Tiers {
    /// Compiles a configuration.
    pub fn new(config: &TierConfig) -> Result<Self, TierConfigError> {
        if config.label_key.is_empty() {
            return Err(TierConfigError::EmptyLabelKey);
        }
        let selectors = config
            .selectors
            .iter()
            .enumerate()
            .map(|(index, selector)| {
                let compile = |field, selector: Option<&LabelSelector>| {
                    Selector::compile(selector).map_err(|source| TierConfigError::BadSelector { index, field, source })
                };
                Ok(CompiledTierSelector {
                    tier: Tier::new(&selector.tier).map_err(|source| TierConfigError::BadTier { index, source })?,
                    pods: compile("pod_selector", selector.pod_selector.as_ref())?,
                    namespaces: compile("namespace_selector", selector.namespace_selector.as_ref())?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { label_key: config.label_key.as_str().into(), selectors: selectors.into() })
    }

    /// The tier of a pod with `labels` in a namespace with `namespace_labels`.
    /// A label whose value is not a valid tier is ignored.
    pub fn tier(&self, labels: &Labels, namespace_labels: &Labels) -> Option<Tier> {
        let declared = |labels: &Labels| labels.get(&*self.label_key).and_then(|value| Tier::new(value).ok());
        declared(labels).or_else(|| declared(namespace_labels)).or_else(|| {
            self.selectors
                .iter()
                .find(|selector| selector.pods.matches(labels) && selector.namespaces.matches(namespace_labels))
                .map(|selector| selector.tier.clone())
        })
    }

    /// The label key that declares tiers.
    pub fn label_key(&self) -> &str {
        &self.label_key
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
    }

    #[test]
    fn pod_label_beats_namespace_label_beats_selectors() {
        let config: TierConfig = serde_yaml::from_str(
            "selectors:\n- tier: training\n  pod_selector: {matchLabels: {app: trainer}}\n- tier: evaluation\n  namespace_selector: {matchLabels: {team: eval}}\n",
        )
        .expect("valid config");
        let tiers = Tiers::new(&config).expect("compiles");
        let ns_agent = labels(&[("ai.governance/tier", "agent")]);
        assert_eq!(
            tiers.tier(&labels(&[("ai.governance/tier", "tool-server")]), &ns_agent).map(|t| t.to_string()),
            Some("tool-server".into())
        );
        assert_eq!(tiers.tier(&labels(&[("app", "trainer")]), &ns_agent).map(|t| t.to_string()), Some("agent".into()));
        assert_eq!(
            tiers.tier(&labels(&[("app", "trainer")]), &labels(&[])).map(|t| t.to_string()),
            Some("training".into())
        );
        assert_eq!(
            tiers.tier(&labels(&[]), &labels(&[("team", "eval")])).map(|t| t.to_string()),
            Some("evaluation".into())
        );
        assert_eq!(tiers.tier(&labels(&[("app", "web")]), &labels(&[])), None);
    }

    #[test]
    fn invalid_values_are_not_tiers() {
        assert!(Tier::new("model-serving").is_ok());
        assert!(Tier::new("-agent").is_err());
        assert!(Tier::new("").is_err());
        assert!(Tier::new(&"a".repeat(64)).is_err());
        let tiers = Tiers::default();
        assert_eq!(tiers.tier(&labels(&[("ai.governance/tier", "bad value")]), &labels(&[])), None);
    }

    #[test]
    fn bad_config_names_the_selector() {
        let config = TierConfig {
            selectors: vec![TierSelector { tier: "Not OK".to_owned(), ..TierSelector::default() }],
            ..TierConfig::default()
        };
        assert!(matches!(Tiers::new(&config), Err(TierConfigError::BadTier { index: 0, .. })));
        let empty = TierConfig { label_key: String::new(), selectors: Vec::new() };
        assert_eq!(Tiers::new(&empty).err(), Some(TierConfigError::EmptyLabelKey));
    }
}
