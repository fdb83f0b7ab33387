//! Settings of the inventory.
//!
//! In: defaults, or values from the command line ([`InventoryOptions`]). Out: an
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

/// Where the inventory comes from and how it is kept (from `observer run`'s flags).
#[derive(Clone, Debug, Default)]
pub struct InventoryOptions {
    /// Read the inventory from these manifest files or folders (YAML or JSON,
    /// multi-document, `List` kinds) instead of the API server; reloaded when they change.
    pub manifests: Vec<PathBuf>,
    /// Kubeconfig to reach the API server with; without it `~/.kube/config`
    /// if present, else the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name (the Downward API's `spec.nodeName`).
    pub node_name: Option<String>,
    /// Pod label keys copied into flow records (comma separated).
    pub flow_label_keys: Option<Vec<String>>,
    /// Seconds between checks of the manifest files for changes (0.01 to
    /// 86400); a changed file is read once it has not changed for one interval.
    pub manifest_reload_interval: f64,
    /// Seconds a failing watch, or manifests that do not read cleanly, may
    /// last before the inventory is reported stale and /readyz fails (0.01 to 86400).
    pub inventory_stale_after: f64,
}

/// Shortest and longest time a seconds flag takes.
pub const SECONDS_RANGE: std::ops::RangeInclusive<f64> = 0.01..=86_400.0;

impl InventoryOptions {
    /// The configuration these flags describe.
    pub fn config(&self) -> InventoryConfig {
        let defaults = InventoryConfig::default();
        // Flags are range-checked when parsed; a value built in code without
        // them (`InventoryOptions::default()` holds zeros) takes the default.
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
