//! The catalog of AI endpoints: which DNS names are AI provider APIs and
//! model hubs, and whose.
//!
//! In: the default catalog shipped in `observer/src/ai/catalog.yaml` and the
//! `ai.catalog` section of the configuration file ([`CatalogConfig`]: more
//! providers, more patterns for a shipped provider, or `replace: true` for a
//! catalog of its own). Out: a validated [`Catalog`] that names the
//! [`Provider`] of a DNS name in one hash probe per label
//! ([`super::suffix`]), and says which provider names exist (for FlowIntents
//! that name providers).

use std::{
    collections::HashMap,
    sync::{Arc, OnceLock},
};

use super::{
    pattern::{CatalogPattern, PatternError, normalize},
    suffix::SuffixIndex,
};

/// The default catalog, as shipped.
pub const DEFAULT_CATALOG: &str = include_str!("catalog.yaml");

/// What an AI endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AiKind {
    /// A hosted model API (chat, completions, embeddings).
    LlmApi,
    /// Where models and datasets are downloaded from.
    ModelHub,
}

impl AiKind {
    /// The name used in records and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::LlmApi => "llm-api",
            Self::ModelHub => "model-hub",
        }
    }
}

/// One provider as the catalog file or the configuration writes it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    /// Its name: lowercase letters, digits and `-` (`openai`, `azure-openai`);
    /// what records, metrics, findings and FlowIntents (`provider:`) say.
    pub name: String,
    /// `llm-api` or `model-hub`; required for a new provider, optional when
    /// adding patterns to a shipped one (which then keeps its kind).
    #[serde(default)]
    pub kind: Option<AiKind>,
    /// DNS name patterns (see [`CatalogPattern`]).
    #[serde(default)]
    pub patterns: Vec<String>,
}

/// The `ai.catalog` section of the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CatalogConfig {
    /// `false` (default): `providers` extend the shipped catalog (a provider
    /// of a shipped name gets the patterns added); `true`: they replace it.
    pub replace: bool,
    /// Providers to add or extend.
    pub providers: Vec<ProviderSpec>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    providers: Vec<ProviderSpec>,
}

/// Why a catalog was refused.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The shipped catalog does not parse (a build defect, caught by tests).
    #[error("the default AI catalog does not parse")]
    Default(#[source] serde_yaml::Error),
    /// A provider name that is not a lowercase label.
    #[error(
        "AI provider name {name:?} must be 1 to 63 lowercase letters, digits or '-', starting with a letter or digit"
    )]
    InvalidName {
        /// The name.
        name: String,
    },
    /// A new provider without `kind`.
    #[error("AI provider {provider:?} is not in the shipped catalog: give its kind (llm-api or model-hub)")]
    MissingKind {
        /// The provider.
        provider: String,
    },
    /// A provider without patterns.
    #[error("AI provider {provider:?} has no patterns")]
    NoPatterns {
        /// The provider.
        provider: String,
    },
    /// A pattern that is not a valid name pattern.
    #[error("AI provider {provider:?}: invalid pattern {pattern:?}")]
    Pattern {
        /// The provider.
        provider: String,
        /// The pattern as written.
        pattern: String,
        /// Why.
        #[source]
        source: PatternError,
    },
    /// The same pattern under two providers.
    #[error("pattern {pattern} is given to both AI providers {first:?} and {second:?}")]
    Duplicate {
        /// The pattern.
        pattern: String,
        /// The provider that had it first.
        first: String,
        /// The other.
        second: String,
    },
    /// More providers than the index holds.
    #[error("more than 65535 AI providers")]
    TooMany,
}

/// One provider of the catalog.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Provider {
    /// Its name.
    pub name: Arc<str>,
    /// What it is.
    pub kind: AiKind,
    /// Its patterns.
    pub patterns: Vec<CatalogPattern>,
}

/// The validated catalog. Immutable; share it in an `Arc`.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    providers: Vec<Provider>,
    index: SuffixIndex,
}

fn valid_name(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name.bytes().all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-')
        && !name.starts_with('-')
}

impl Catalog {
    /// The shipped catalog, extended or replaced by `config`.
    pub fn build(config: &CatalogConfig) -> Result<Self, CatalogError> {
        let mut specs = if config.replace {
            Vec::new()
        } else {
            serde_yaml::from_str::<CatalogFile>(DEFAULT_CATALOG).map_err(CatalogError::Default)?.providers
        };
        for spec in &config.providers {
            match specs.iter_mut().find(|known| known.name == spec.name) {
                Some(known) => {
                    known.kind = spec.kind.or(known.kind);
                    known.patterns.extend(spec.patterns.iter().cloned());
                }
                None => specs.push(spec.clone()),
            }
        }
        Self::from_specs(&specs)
    }

    /// The shipped catalog, built once.
    pub fn shipped() -> Arc<Self> {
        static SHIPPED: OnceLock<Arc<Catalog>> = OnceLock::new();
        Arc::clone(SHIPPED.get_or_init(|| match Self::build(&CatalogConfig::default()) {
            Ok(catalog) => Arc::new(catalog),
            Err(error) => {
                // A defect of the build; the unit tests refuse it first.
                tracing::error!(%error, "the shipped AI catalog is invalid; no AI endpoint is known");
                Arc::default()
            }
        }))
    }

    fn from_specs(specs: &[ProviderSpec]) -> Result<Self, CatalogError> {
        let mut catalog = Self::default();
        let mut owners: HashMap<CatalogPattern, usize> = HashMap::new();
        for spec in specs {
            if !valid_name(&spec.name) {
                return Err(CatalogError::InvalidName { name: spec.name.clone() });
            }
            let kind = spec.kind.ok_or_else(|| CatalogError::MissingKind { provider: spec.name.clone() })?;
            if spec.patterns.is_empty() {
                return Err(CatalogError::NoPatterns { provider: spec.name.clone() });
            }
            let id = catalog.providers.len();
            let index = u16::try_from(id).map_err(|_| CatalogError::TooMany)?;
            let mut patterns = Vec::with_capacity(spec.patterns.len());
            for text in &spec.patterns {
                let pattern = CatalogPattern::parse(text).map_err(|source| CatalogError::Pattern {
                    provider: spec.name.clone(),
                    pattern: text.clone(),
                    source,
                })?;
                if let Some(first) = owners.get(&pattern) {
                    if *first == id {
                        continue;
                    }
                    return Err(CatalogError::Duplicate {
                        pattern: pattern.to_string(),
                        first: catalog.providers[*first].name.to_string(),
                        second: spec.name.clone(),
                    });
                }
                owners.insert(pattern.clone(), id);
                catalog.index.insert(pattern.clone(), index);
                patterns.push(pattern);
            }
            catalog.providers.push(Provider { name: spec.name.as_str().into(), kind, patterns });
        }
        Ok(catalog)
    }

    /// The provider whose most specific pattern `name` matches; `name` in any
    /// case, with or without the trailing dot, Unicode or punycode.
    pub fn lookup(&self, name: &str) -> Option<&Provider> {
        self.lookup_normalized(&normalize(name)?)
    }

    /// [`Catalog::lookup`] of a name already lowercase ASCII without the
    /// trailing dot, as the DNS cache holds names.
    pub fn lookup_normalized(&self, name: &str) -> Option<&Provider> {
        self.index.lookup(name).and_then(|id| self.providers.get(usize::from(id)))
    }

    /// The first of `names` (as the DNS cache holds them) that is a catalog
    /// endpoint, with its provider.
    pub fn first_match<'a>(&self, names: &'a [Arc<str>]) -> Option<(&Provider, &'a Arc<str>)> {
        names.iter().find_map(|name| self.lookup_normalized(name).map(|provider| (provider, name)))
    }

    /// The provider of this name.
    pub fn provider(&self, name: &str) -> Option<&Provider> {
        self.providers.iter().find(|provider| &*provider.name == name)
    }

    /// Every provider, in catalog order.
    pub fn providers(&self) -> &[Provider] {
        &self.providers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: [&str; 15] = [
        "openai",
        "azure-openai",
        "anthropic",
        "google-gemini",
        "google-vertex-ai",
        "aws-bedrock",
        "mistral",
        "cohere",
        "huggingface",
        "replicate",
        "together",
        "groq",
        "deepseek",
        "xai",
        "openrouter",
    ];

    fn named(catalog: &Catalog, name: &str) -> Option<(String, &'static str)> {
        catalog.lookup(name).map(|provider| (provider.name.to_string(), provider.kind.as_str()))
    }

    #[test]
    fn the_shipped_catalog_knows_the_providers_the_docs_promise() {
        let catalog = Catalog::build(&CatalogConfig::default()).expect("the shipped catalog is valid");
        for name in REQUIRED {
            assert!(catalog.provider(name).is_some(), "{name} missing");
        }
        let cases = [
            ("api.openai.com", "openai", "llm-api"),
            ("API.OPENAI.COM.", "openai", "llm-api"),
            ("myco.openai.azure.com", "azure-openai", "llm-api"),
            ("api.anthropic.com", "anthropic", "llm-api"),
            ("generativelanguage.googleapis.com", "google-gemini", "llm-api"),
            ("us-central1-aiplatform.googleapis.com", "google-vertex-ai", "llm-api"),
            ("bedrock-runtime.eu-west-1.amazonaws.com", "aws-bedrock", "llm-api"),
            ("api.mistral.ai", "mistral", "llm-api"),
            ("api.cohere.com", "cohere", "llm-api"),
            ("huggingface.co", "huggingface", "model-hub"),
            ("cdn-lfs.huggingface.co", "huggingface", "model-hub"),
            ("cas-bridge.xethub.hf.co", "huggingface", "model-hub"),
            ("api-inference.huggingface.co", "huggingface-inference", "llm-api"),
            ("api.replicate.com", "replicate", "llm-api"),
            ("api.together.xyz", "together", "llm-api"),
            ("api.groq.com", "groq", "llm-api"),
            ("api.deepseek.com", "deepseek", "llm-api"),
            ("api.x.ai", "xai", "llm-api"),
            ("openrouter.ai", "openrouter", "llm-api"),
        ];
        for (name, provider, kind) in cases {
            assert_eq!(named(&catalog, name), Some((provider.to_owned(), kind)), "{name}");
        }
        for name in ["openai.com", "s3.us-east-1.amazonaws.com", "storage.googleapis.com", "example.com", "ai"] {
            assert_eq!(named(&catalog, name), None, "{name}");
        }
        assert_eq!(Catalog::shipped().providers().len(), catalog.providers().len());
    }

    fn config(text: &str) -> CatalogConfig {
        serde_yaml::from_str(text).expect("config parses")
    }

    #[test]
    fn configuration_extends_or_replaces_the_shipped_catalog() {
        let extended = Catalog::build(&config(
            "providers:\n- {name: acme-llm, kind: llm-api, patterns: [llm.acme.example]}\n- {name: openai, patterns: [\"*.oai.acme.example\"]}\n",
        ))
        .expect("valid");
        assert_eq!(named(&extended, "llm.acme.example"), Some(("acme-llm".into(), "llm-api")));
        assert_eq!(named(&extended, "proxy.oai.acme.example"), Some(("openai".into(), "llm-api")));
        assert_eq!(named(&extended, "api.openai.com"), Some(("openai".into(), "llm-api")), "shipped kept");
        let replaced = Catalog::build(&config(
            "replace: true\nproviders:\n- {name: acme-llm, kind: model-hub, patterns: [llm.acme.example]}\n",
        ))
        .expect("valid");
        assert_eq!(replaced.providers().len(), 1);
        assert_eq!(named(&replaced, "llm.acme.example"), Some(("acme-llm".into(), "model-hub")));
        assert_eq!(named(&replaced, "api.openai.com"), None);
    }

    #[test]
    fn bad_configuration_is_refused_with_the_provider_named() {
        let refused = |text: &str| Catalog::build(&config(text)).expect_err("refused").to_string();
        let error = refused("providers: [{name: acme, patterns: [a.example.com]}]");
        assert!(error.contains("\"acme\"") && error.contains("give its kind"), "{error}");
        let error = refused("providers: [{name: Acme, kind: llm-api, patterns: [a.example.com]}]");
        assert!(error.contains("provider name \"Acme\""), "{error}");
        let error = refused("providers: [{name: acme, kind: llm-api, patterns: [\"*.com\"]}]");
        assert!(error.contains("invalid pattern \"*.com\""), "{error}");
        let error = refused("providers: [{name: acme, kind: llm-api, patterns: [API.openai.com]}]");
        assert!(error.contains("api.openai.com is given to both AI providers \"openai\" and \"acme\""), "{error}");
        let error = refused("replace: true\nproviders: [{name: acme, kind: llm-api}]");
        assert!(error.contains("has no patterns"), "{error}");
        assert!(serde_yaml::from_str::<CatalogConfig>("providers: [{name: a, kind: gpu}]").is_err());
        assert!(serde_yaml::from_str::<CatalogConfig>("replaces: true").is_err());
    }
}
