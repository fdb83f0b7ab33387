//! AI endpoints: which flows go to AI provider APIs and model hubs, and
//! which workloads make them without being declared AI workloads.
//!
//! In: the catalog (shipped in `catalog.yaml`, extended or replaced by the
//! `ai` section of the configuration file), DNS answers pods receive, and
//! enriched, judged flow records. Out: `dst.ai_provider` on records
//! ([`tag::tag_remote`]), the addresses pods resolved for catalog names
//! ([`AiEndpoints`]), provider egress metrics and `shadow-ai` findings
//! ([`shadow::ShadowAi`]). See `docs/ai.md`.

pub mod addresses;
pub mod catalog;
pub mod destination;
pub mod pattern;
pub mod shadow;
mod suffix;
pub mod tag;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub use addresses::{AddressStats, AiEndpoints, Learned};
pub use catalog::{AiKind, Catalog, CatalogConfig, CatalogError, DEFAULT_CATALOG, Provider, ProviderSpec};
pub use destination::{AiDestination, AiVia};
pub use pattern::{CatalogPattern, PatternError, normalize};

/// A workload exempt from `shadow-ai` findings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExemptWorkload {
    /// Its namespace.
    pub namespace: String,
    /// Its name (the top of its owner chain, or the pod's name for a bare pod).
    pub name: String,
}

/// Who may call AI endpoints without an AI tier and not be a `shadow-ai`
/// finding (their egress is still counted in the provider metrics).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExemptConfig {
    /// Every pod in these namespaces.
    pub namespaces: Vec<String>,
    /// These workloads.
    pub workloads: Vec<ExemptWorkload>,
    /// Pods whose labels match this selector.
    pub pod_selector: Option<LabelSelector>,
}

/// The `ai` section of the configuration file.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AiConfig {
    /// The endpoint catalog: extends the shipped one, or replaces it.
    pub catalog: CatalogConfig,
    /// Untiered workloads that are no `shadow-ai` finding.
    pub exempt: ExemptConfig,
    /// Most addresses kept from answers to catalog names (node-wide), for
    /// direct-IP connections. Default: 16384.
    pub max_addresses: usize,
    /// Most (workload, provider) pairs whose `shadow-ai` evidence (names,
    /// pods, bytes) is accumulated; the least recently seen are forgotten.
    /// Default: 4096.
    pub max_tracked: usize,
}

impl Default for AiConfig {
    fn default() -> Self {
        Self {
            catalog: CatalogConfig::default(),
            exempt: ExemptConfig::default(),
            max_addresses: 16_384,
            max_tracked: 4096,
        }
    }
}
