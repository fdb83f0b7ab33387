//! The observer's configuration file (`--config FILE`, YAML or JSON): the
//! settings that are structures rather than flags. Every section and field is
//! optional; an absent one takes its documented default.
//!
//! ```yaml
//! intents:
//!   tiers: {label_key: ai.governance/tier}
//!   metadata_addresses: [169.254.169.254]
//! judge: {max_rate_trackers: 65536}
//! spikes: {window_seconds: 60, warmup_windows: 15, sensitivity: 4}
//! findings: {max_findings: 10000, flush_interval_seconds: 10}
//! ```

use std::path::{Path, PathBuf};

use crate::{anomaly::SpikeConfig, findings::FindingsConfig, intent::IntentConfig, judge::JudgeConfig};

/// Everything the configuration file can set.
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObserverConfig {
    /// AI tiers and the addresses intents name (metadata service, API server).
    pub intents: IntentConfig,
    /// How flows and pods are judged.
    pub judge: JudgeConfig,
    /// The spike detector.
    pub spikes: SpikeConfig,
    /// The findings log.
    pub findings: FindingsConfig,
}

/// Why the configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// It cannot be read.
    #[error("cannot read configuration {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It is not valid.
    #[error("invalid configuration {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why, with line and column.
        #[source]
        source: serde_yaml::Error,
    },
}

impl ObserverConfig {
    /// Reads a YAML or JSON file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_all_defaults_and_unknown_keys_are_refused() {
        let config: ObserverConfig = serde_yaml::from_str("{}").expect("empty");
        assert_eq!(config, ObserverConfig::default());
        let partial: ObserverConfig = serde_yaml::from_str("spikes: {window_seconds: 5}").expect("partial");
        assert_eq!(partial.spikes.window_seconds, 5);
        assert_eq!(partial.findings, FindingsConfig::default());
        assert!(serde_yaml::from_str::<ObserverConfig>("spikez: {}").is_err());
    }

    #[test]
    fn the_shipped_configmap_holds_the_defaults() {
        let text = include_str!("../../deploy/config/observer.yaml");
        let shipped: ObserverConfig = serde_yaml::from_str(text).expect("deploy/config/observer.yaml parses");
        assert_eq!(shipped, ObserverConfig::default());
    }
}
