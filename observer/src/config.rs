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
//! ai:
//!   catalog: {replace: false, providers: [{name: acme-llm, kind: llm-api, patterns: [llm.acme.example]}]}
//!   exempt: {namespaces: [ml-platform]}
//! ```

use std::path::{Path, PathBuf};

use crate::{
    ai::{AiConfig, Catalog, CatalogError},
    anomaly::SpikeConfig,
    findings::FindingsConfig,
    intent::IntentConfig,
    judge::JudgeConfig,
};

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
    /// The AI endpoint catalog and `shadow-ai` exemptions (`docs/ai.md`).
    pub ai: AiConfig,
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
    /// The AI endpoint catalog (`ai.catalog`) is not valid.
    #[error("invalid configuration {path}: ai.catalog")]
    Catalog {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: CatalogError,
    },
    /// A value is outside the range the observer accepts.
    #[error("invalid configuration {path}: {field} is {value}, expected {expected}")]
    OutOfRange {
        /// The file.
        path: PathBuf,
        /// `section.field`.
        field: &'static str,
        /// What was given.
        value: String,
        /// The accepted range.
        expected: &'static str,
    },
}

/// A field outside its range: `(field, value, expected)`.
type Refusal = (&'static str, String, &'static str);

fn within<T: PartialOrd + std::fmt::Display>(
    field: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
    expected: &'static str,
) -> Result<(), Refusal> {
    // NaN is in no range.
    if range.contains(&value) { Ok(()) } else { Err((field, value.to_string(), expected)) }
}

impl ObserverConfig {
    /// Reads a YAML or JSON file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let config: Self =
            serde_yaml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.to_owned(), source })?;
        config.check().map_err(|(field, value, expected)| ConfigError::OutOfRange {
            path: path.to_owned(),
            field,
            value,
            expected,
        })?;
        Catalog::build(&config.ai.catalog).map_err(|source| ConfigError::Catalog { path: path.to_owned(), source })?;
        Ok(config)
    }

    /// Refuses values that would divide by zero, allocate without bound or
    /// are not numbers (`.nan`, `.inf`): the ranges are wide enough for any
    /// real setting, and documented in `docs/operations.md`.
    fn check(&self) -> Result<(), Refusal> {
        let spikes = &self.spikes;
        within("spikes.window_seconds", spikes.window_seconds, 1..=86_400, "1 to 86400")?;
        within("spikes.alpha", spikes.alpha, 1e-6..=1.0, "a number from 0.000001 to 1")?;
        within("spikes.warmup_windows", spikes.warmup_windows, 0..=100_000, "0 to 100000")?;
        within("spikes.sensitivity", spikes.sensitivity, 0.0..=1_000.0, "a number from 0 to 1000")?;
        within("spikes.min_ratio", spikes.min_ratio, 1.0..=1_000_000.0, "a number from 1 to 1000000")?;
        within("spikes.cooldown_windows", spikes.cooldown_windows, 0..=100_000, "0 to 100000")?;
        // Each tracked edge holds one baseline per bucket.
        within("spikes.seasonal_buckets", spikes.seasonal_buckets, 0..=168, "0 to 168 (hourly for a week)")?;
        within(
            "spikes.seasonal_period_seconds",
            spikes.seasonal_period_seconds,
            1..=31 * 86_400,
            "1 to 2678400 (31 days)",
        )?;
        within("spikes.max_idle_windows", spikes.max_idle_windows, 1..=1_000_000, "1 to 1000000")?;
        within("spikes.max_edges", spikes.max_edges, 1..=1 << 20, "1 to 1048576")?;
        within("spikes.after_rollout_seconds", spikes.after_rollout_seconds, 0..=7 * 86_400, "0 to 604800 (a week)")?;
        within("findings.max_findings", self.findings.max_findings, 1..=1 << 20, "1 to 1048576")?;
        within("findings.flush_interval_seconds", self.findings.flush_interval_seconds, 1..=3_600, "1 to 3600")?;
        within("judge.max_rate_trackers", self.judge.max_rate_trackers, 1..=1 << 22, "1 to 4194304")?;
        within("ai.max_addresses", self.ai.max_addresses, 1..=1 << 22, "1 to 4194304")?;
        within("ai.max_tracked", self.ai.max_tracked, 1..=1 << 20, "1 to 1048576")?;
        Ok(())
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

    fn read_text(text: &str) -> Result<ObserverConfig, ConfigError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, text).expect("write");
        ObserverConfig::read(&path)
    }

    #[test]
    fn each_out_of_range_value_is_refused_by_name() {
        let cases = [
            ("spikes: {seasonal_buckets: 100000000}", "spikes.seasonal_buckets"),
            ("spikes: {seasonal_buckets: 169}", "spikes.seasonal_buckets"),
            ("spikes: {alpha: .nan}", "spikes.alpha"),
            ("spikes: {sensitivity: .nan}", "spikes.sensitivity"),
            ("spikes: {sensitivity: .inf}", "spikes.sensitivity"),
            ("spikes: {min_ratio: -1}", "spikes.min_ratio"),
            ("spikes: {window_seconds: 0}", "spikes.window_seconds"),
            ("spikes: {seasonal_period_seconds: 0}", "spikes.seasonal_period_seconds"),
            ("spikes: {warmup_windows: 4000000000}", "spikes.warmup_windows"),
            ("spikes: {cooldown_windows: 4000000000}", "spikes.cooldown_windows"),
            ("spikes: {max_idle_windows: 0}", "spikes.max_idle_windows"),
            ("spikes: {max_edges: 0}", "spikes.max_edges"),
            ("spikes: {max_edges: 18446744073709551615}", "spikes.max_edges"),
            ("spikes: {after_rollout_seconds: 604801}", "spikes.after_rollout_seconds"),
            ("findings: {max_findings: 1000000000000}", "findings.max_findings"),
            ("findings: {flush_interval_seconds: 0}", "findings.flush_interval_seconds"),
            ("judge: {max_rate_trackers: 1000000000000}", "judge.max_rate_trackers"),
            ("ai: {max_addresses: 0}", "ai.max_addresses"),
            ("ai: {max_tracked: 0}", "ai.max_tracked"),
        ];
        for (text, field) in cases {
            match read_text(text) {
                Err(ConfigError::OutOfRange { field: refused, .. }) => assert_eq!(refused, field, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        let error = read_text("spikes: {alpha: .nan}").expect_err("nan").to_string();
        assert!(error.contains("spikes.alpha is NaN, expected a number from 0.000001 to 1"), "{error}");
        assert_eq!(read_text("{}").expect("defaults"), ObserverConfig::default());
        let catalog = read_text("ai: {catalog: {providers: [{name: acme, patterns: [llm.acme.example]}]}}")
            .expect_err("a new provider needs its kind");
        assert!(matches!(catalog, ConfigError::Catalog { .. }), "{catalog:?}");
        let chain = crate::error_chain(&catalog);
        assert!(chain.contains("ai.catalog: AI provider \"acme\" is not in the shipped catalog"), "{chain}");
        let edges = read_text("spikes: {seasonal_buckets: 168, max_edges: 1048576}").expect("at the limits");
        assert_eq!(edges.spikes.seasonal_buckets, 168);
        let rollouts = read_text("spikes: {after_rollout_seconds: 0}").expect("turned off");
        assert_eq!(rollouts.spikes.after_rollout_seconds, 0);
        assert_eq!(ObserverConfig::default().spikes.after_rollout_seconds, 900);
    }
}
