//! Settings of the inventory.
//!
//! In: defaults, or values from the command line ([`InventoryArgs`]). Out: an
//! [`InventoryConfig`] for either source.

use std::{path::PathBuf, time::Duration};

/// Pod label keys copied into flow records unless configured otherwise:
/// the well-known names of an application and its part.
pub const DEFAULT_LABEL_KEYS: [&str; 4] =
    ["app", "app.kubernetes.io/name", "app.kubernetes.io/component", "app.kubernetes.io/part-of"];

/// How the inventory behaves, whatever its source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InventoryConfig {
    /// Pod label keys copied into each flow end; never all labels, so records
    /// and memory stay bounded. Default: [`DEFAULT_LABEL_KEYS`].
    pub label_keys: Vec<String>,
    /// This node's name, given to the `host` end (processes outside pods).
    /// Default: none.
    pub node_name: Option<String>,
    /// How long a pod's hold on an IP is remembered after it ended, so a late
    /// flow is still given to the pod that held the IP at the time. Default: 5 min.
    pub ip_history: Duration,
    /// How much earlier than the inventory saw a pod with an IP a flow may be
    /// and still be given to it, when no pod held the IP then (watch events
    /// lag the network). Default: 2 s.
    pub ip_skew: Duration,
    /// A resource whose watch has failed for this long is reported stale.
    /// Default: 30 s.
    pub stale_after: Duration,
    /// How often manifest files are checked for changes. Default: 2 s.
    pub reload_interval: Duration,
    /// Least time between two published snapshots, so a burst of watch events
    /// costs one rebuild. Default: 100 ms.
    pub publish_interval: Duration,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        Self {
            label_keys: DEFAULT_LABEL_KEYS.map(str::to_owned).to_vec(),
            node_name: None,
            ip_history: Duration::from_secs(300),
            ip_skew: Duration::from_secs(2),
            stale_after: Duration::from_secs(30),
            reload_interval: Duration::from_secs(2),
            publish_interval: Duration::from_millis(100),
        }
    }
}

/// Command-line flags of the inventory, to `#[command(flatten)]` into a subcommand.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct InventoryArgs {
    /// Read the inventory from these manifest files or folders (YAML or JSON,
    /// multi-document, `List` kinds) instead of the API server; reloaded when they change.
    #[arg(long, num_args = 1.., value_name = "PATH")]
    pub manifests: Vec<PathBuf>,
    /// Kubeconfig to reach the API server with; without it `~/.kube/config`
    /// if present, else the in-cluster service account.
    #[arg(long, env = "KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the Downward API's `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,
    /// Pod label keys copied into flow records (comma separated).
    #[arg(long, value_delimiter = ',', value_name = "KEY,...")]
    pub flow_label_keys: Option<Vec<String>>,
    /// Seconds between checks of the manifest files for changes (0.01 to
    /// 86400); a changed file is read once it has not changed for one interval.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS", value_parser = parse_seconds)]
    pub manifest_reload_interval: f64,
    /// Seconds a failing watch, or manifests that do not read cleanly, may
    /// last before the inventory is reported stale and /readyz fails (0.01 to 86400).
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS", value_parser = parse_seconds)]
    pub inventory_stale_after: f64,
}

/// Shortest and longest time a seconds flag takes.
const SECONDS_RANGE: std::ops::RangeInclusive<f64> = 0.01..=86_400.0;

/// Parses a number of seconds within [`SECONDS_RANGE`]: zero would make
/// the reload loop spin (tokio refuses a zero period), and a huge value is
/// not a duration at all.
fn parse_seconds(text: &str) -> Result<f64, String> {
    let seconds: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !SECONDS_RANGE.contains(&seconds) {
        return Err(format!(
            "{text} is out of range: give {} to {} seconds",
            SECONDS_RANGE.start(),
            SECONDS_RANGE.end()
        ));
    }
    Ok(seconds)
}

impl InventoryArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> InventoryConfig {
        let defaults = InventoryConfig::default();
        // Flags are range-checked when parsed; a value built in code without
        // them (`InventoryArgs::default()` holds zeros) takes the default.
        let seconds = |value: f64, default: Duration| {
            Some(value).filter(|value| SECONDS_RANGE.contains(value)).map_or(default, Duration::from_secs_f64)
        };
        InventoryConfig {
            label_keys: self.flow_label_keys.clone().unwrap_or(defaults.label_keys),
            node_name: self.node_name.clone(),
            reload_interval: seconds(self.manifest_reload_interval, defaults.reload_interval),
            stale_after: seconds(self.inventory_stale_after, defaults.stale_after),
            ..defaults
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        inventory: InventoryArgs,
    }

    #[test]
    fn flags_reach_the_config() {
        let cli = Cli::parse_from([
            "observer",
            "--manifests",
            "a.yaml",
            "lab/",
            "--flow-label-keys",
            "app,tier",
            "--manifest-reload-interval",
            "0.5",
        ]);
        assert_eq!(cli.inventory.manifests, [PathBuf::from("a.yaml"), PathBuf::from("lab/")]);
        let config = cli.inventory.config();
        assert_eq!(config.label_keys, ["app", "tier"]);
        assert_eq!(config.reload_interval, Duration::from_millis(500));
        assert_eq!(Cli::parse_from(["observer"]).inventory.config().label_keys, DEFAULT_LABEL_KEYS);
    }

    #[test]
    fn zero_nan_and_huge_intervals_are_refused() {
        for value in ["0", "-1", "NaN", "inf", "1e300", "86401", "2s"] {
            for flag in ["--manifest-reload-interval", "--inventory-stale-after"] {
                let error = match Cli::try_parse_from(["observer".to_owned(), format!("{flag}={value}")]) {
                    Ok(_) => panic!("{flag} {value} accepted"),
                    Err(error) => error.to_string(),
                };
                assert!(error.contains("out of range") || error.contains("not a number"), "{flag} {value}: {error}");
            }
        }
        let cli =
            Cli::parse_from(["observer", "--inventory-stale-after", "86400", "--manifest-reload-interval", "0.01"]);
        assert_eq!(cli.inventory.config().stale_after, Duration::from_secs(86_400));
        assert_eq!(cli.inventory.config().reload_interval, Duration::from_millis(10));
    }
}
