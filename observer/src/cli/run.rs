//! Flags of `observer run`: the daemon's options, the log rotation, the
//! inventory, the metrics and the HTTP endpoints. In: the command line.
//! Out: a [`RunConfig`] for [`crate::run::run`] (through `From`), the
//! flags' ranges checked while parsing.

use std::{path::PathBuf, time::Duration};

use clap::Args;

use crate::{
    api::HttpLimits,
    duration::parse_duration,
    export::logs::{RotationConfig, parse_size},
    inventory::config::{InventoryOptions, SECONDS_RANGE},
    metrics::{MetricsAddr, MetricsOptions},
    pipeline,
    run::RunConfig,
};

/// Options of `observer run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Write the JSON flow log to this file (appended) instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub flow_log: Option<PathBuf>,
    /// Size-based rotation of the flow, findings and DNS log files.
    #[command(flatten)]
    pub rotation: RotationArgs,
    /// cgroup v2 root to attach at, or a host's cgroup folder whose `unified` child is the v2 root (hybrid hosts)
    /// [default: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts].
    #[arg(long, value_name = "PATH")]
    pub cgroup_root: Option<PathBuf>,
    /// How often the kernel flow map is read and records are written.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// Minimum time between two update records of one flow.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub update_interval: Duration,
    /// A UDP, SCTP or ICMP flow idle this long has ended.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// A TCP flow counted per packet (`--tcp-per-packet`, no kernel BTF, or before Linux 5.9) idle this long with no
    /// close seen is expired; connections counted from their socket end with their close.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub tcp_idle_timeout: Duration,
    /// Capacity of the kernel flow map (entries; about 200 bytes each; 16 to 4194304).
    #[arg(long, default_value_t = 131_072, value_parser = clap::value_parser!(u32).range(16..=4_194_304))]
    pub flow_map_size: u32,
    /// Size of the kernel event ring buffer in bytes (a power of two, 4096 to 256 MiB).
    #[arg(long, default_value_t = 8 << 20, value_parser = parse_ring_size)]
    pub ring_buffer_bytes: u32,
    /// Also observe loopback traffic (127.0.0.0/8, ::1).
    #[arg(long)]
    pub include_loopback: bool,
    /// Count TCP packet by packet instead of from each socket's own counters,
    /// and take TCP state changes from the tracepoint instead of the BTF
    /// tracepoint (what happens anyway without kernel BTF or before Linux 5.9).
    #[arg(long)]
    pub tcp_per_packet: bool,
    /// Forward the kernel programs' diagnostics (aya-log) to the log at debug level.
    #[arg(long)]
    pub ebpf_log: bool,
    /// Also write a JSON lines log of every DNS query pods send and what came of it (appended).
    #[arg(long, value_name = "FILE")]
    pub dns_log: Option<PathBuf>,
    /// Most (pod, address) entries in the DNS name cache (least recently used evicted; 1 to 4194304).
    #[arg(long, default_value_t = 65_536, value_parser = parse_cache_size)]
    pub dns_cache_size: usize,
    /// How long past its TTL a resolved name still names new connections.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub dns_grace: Duration,
    /// Write findings (policy and intent breaches, unprotected AI-tier pods,
    /// spikes), deduplicated, as JSON lines to this file (appended).
    #[arg(long, value_name = "FILE")]
    pub findings_log: Option<PathBuf>,
    /// Batches each pipeline stage may queue for the next before it drops
    /// (and counts) what does not fit: bounds the memory a stalled stage or
    /// flow-log reader can take (1 to 65536).
    #[arg(long, default_value_t = pipeline::STAGE_CAPACITY, value_parser = parse_queue_batches)]
    pub stage_queue_batches: usize,
    /// Configuration file (YAML or JSON): AI tiers, judge, spike detector and
    /// findings settings; see `docs/intents.md`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where pods, namespaces and policies come from.
    #[command(flatten)]
    pub inventory: InventoryArgs,
    /// Metrics and HTTP endpoints.
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

/// Size-based rotation of the log files (not of a flow log on stdout).
#[derive(Clone, Debug, Args)]
pub struct RotationArgs {
    /// Rotate the flow log file before it grows past this size (`100MiB`,
    /// `512KiB`, `1GiB`, bytes; `0`: never). Not applied to stdout.
    #[arg(long, default_value = "100MiB", value_parser = parse_max_size, value_name = "SIZE")]
    pub flow_log_max_size: u64,
    /// Files the flow log keeps, the one being written included
    /// (`<file>`, `<file>.1`…; the oldest is removed).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "N")]
    pub flow_log_max_files: u32,
    /// Rotate the findings log before it grows past this size (`0`: never).
    #[arg(long, default_value = "100MiB", value_parser = parse_max_size, value_name = "SIZE")]
    pub findings_log_max_size: u64,
    /// Files the findings log keeps, the one being written included.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "N")]
    pub findings_log_max_files: u32,
    /// Rotate the DNS log before it grows past this size (`0`: never).
    #[arg(long, default_value = "100MiB", value_parser = parse_max_size, value_name = "SIZE")]
    pub dns_log_max_size: u64,
    /// Files the DNS log keeps, the one being written included.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), value_name = "N")]
    pub dns_log_max_files: u32,
}

/// Command-line flags of the inventory, to `#[command(flatten)]` into a subcommand.
#[derive(Clone, Debug, Args)]
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

/// Command-line options of the metrics and the HTTP endpoints.
#[derive(Clone, Debug, Args)]
pub struct MetricsArgs {
    /// Serve /metrics, /healthz and /readyz on this address (`off` to disable); `[::]` is IPv6 and IPv4.
    #[arg(long, default_value = "[::]:9811", value_parser = parse_addr, env = "OBSERVER_METRICS_ADDR")]
    pub metrics_addr: MetricsAddr,
    /// Most series one edge, verdict, finding or workload family holds; new
    /// label sets past it are counted in a `__overflow__` series.
    #[arg(long, default_value_t = 10_000)]
    pub metrics_max_series: usize,
    /// A series untouched this long is removed (deleted pods and workloads).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub metrics_series_grace: Duration,
    /// Pod label exposed on edge series as `src_<key>`/`dst_<key>` (repeat;
    /// keep to labels with few values, such as `team` or `app.kubernetes.io/part-of`).
    #[arg(long = "metrics-pod-label", value_name = "KEY")]
    pub metrics_pod_labels: Vec<String>,
    /// How many HTTP clients are served at a time and for how long.
    #[command(flatten)]
    pub http: HttpArgs,
}

/// How many clients the server takes and for how long (`observer run` options).
#[derive(Clone, Copy, Debug, Args)]
pub struct HttpArgs {
    /// Most HTTP connections served at a time; more wait in the kernel's
    /// accept queue until one closes.
    #[arg(
        id = "metrics_max_connections",
        long = "metrics-max-connections",
        default_value_t = 64,
        value_parser = clap::value_parser!(u32).range(1..=65_536)
    )]
    pub max_connections: u32,
    /// An HTTP connection is closed when no complete request head arrives
    /// within this time (a new connection, or an idle keep-alive one) or
    /// when its answer is not taken within it.
    #[arg(
        id = "metrics_idle_timeout",
        long = "metrics-idle-timeout",
        default_value = "10s",
        value_parser = parse_idle_timeout
    )]
    pub idle_timeout: Duration,
}

impl From<RunArgs> for RunConfig {
    fn from(args: RunArgs) -> Self {
        Self {
            flow_log: args.flow_log,
            rotation: args.rotation.into(),
            cgroup_root: args.cgroup_root,
            poll_interval: args.poll_interval,
            update_interval: args.update_interval,
            idle_timeout: args.idle_timeout,
            tcp_idle_timeout: args.tcp_idle_timeout,
            flow_map_size: args.flow_map_size,
            ring_buffer_bytes: args.ring_buffer_bytes,
            include_loopback: args.include_loopback,
            tcp_per_packet: args.tcp_per_packet,
            ebpf_log: args.ebpf_log,
            dns_log: args.dns_log,
            dns_cache_size: args.dns_cache_size,
            dns_grace: args.dns_grace,
            findings_log: args.findings_log,
            stage_queue_batches: args.stage_queue_batches,
            config: args.config,
            inventory: args.inventory.into(),
            http: args.metrics.http.into(),
            metrics: args.metrics.into(),
        }
    }
}

impl From<RotationArgs> for RotationConfig {
    fn from(args: RotationArgs) -> Self {
        let RotationArgs {
            flow_log_max_size,
            flow_log_max_files,
            findings_log_max_size,
            findings_log_max_files,
            dns_log_max_size,
            dns_log_max_files,
        } = args;
        Self {
            flow_log_max_size,
            flow_log_max_files,
            findings_log_max_size,
            findings_log_max_files,
            dns_log_max_size,
            dns_log_max_files,
        }
    }
}

impl From<InventoryArgs> for InventoryOptions {
    fn from(args: InventoryArgs) -> Self {
        let InventoryArgs {
            manifests,
            kubeconfig,
            node_name,
            flow_label_keys,
            manifest_reload_interval,
            inventory_stale_after,
        } = args;
        Self { manifests, kubeconfig, node_name, flow_label_keys, manifest_reload_interval, inventory_stale_after }
    }
}

impl From<MetricsArgs> for MetricsOptions {
    fn from(args: MetricsArgs) -> Self {
        Self {
            metrics_addr: args.metrics_addr,
            metrics_max_series: args.metrics_max_series,
            metrics_series_grace: args.metrics_series_grace,
            metrics_pod_labels: args.metrics_pod_labels,
        }
    }
}

impl From<HttpArgs> for HttpLimits {
    fn from(args: HttpArgs) -> Self {
        let HttpArgs { max_connections, idle_timeout } = args;
        Self { max_connections, idle_timeout }
    }
}

/// Largest event ring buffer (256 MiB): beyond it the kernel's refusal
/// would read like a missing feature.
const MAX_RING_BYTES: u32 = 256 << 20;

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let bytes: u32 = text.parse().map_err(|_| format!("{text:?} is not a number of bytes up to {MAX_RING_BYTES}"))?;
    if !bytes.is_power_of_two() || !(4096..=MAX_RING_BYTES).contains(&bytes) {
        return Err(format!("{bytes} must be a power of two from 4096 to {MAX_RING_BYTES}"));
    }
    Ok(bytes)
}

fn parse_queue_batches(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(batches) if (1..=65_536).contains(&batches) => Ok(batches),
        _ => Err(format!("{text:?} is not a number of batches from 1 to 65536")),
    }
}

fn parse_cache_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(size) if (1..=1 << 22).contains(&size) => Ok(size),
        _ => Err(format!("{text:?} is not a number of entries from 1 to 4194304")),
    }
}

/// A file size limit: `0` (never rotate) or at least 4 KiB, so that a file
/// holds more than a line or two.
fn parse_max_size(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes != 0 && bytes < 4096 {
        return Err(format!("{text:?} is too small: rotate at 4KiB or more, or 0 for never"));
    }
    Ok(bytes)
}

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

/// `off` disables the endpoints.
fn parse_addr(text: &str) -> Result<MetricsAddr, String> {
    if text == "off" {
        return Ok(MetricsAddr(None));
    }
    text.parse()
        .map(|addr| MetricsAddr(Some(addr)))
        .map_err(|_| format!("{text:?} is not an address like [::]:9811, 0.0.0.0:9811 or 127.0.0.1:0, or off"))
}

/// A duration of at most an hour: longer would let idle clients hold
/// descriptors for good.
fn parse_idle_timeout(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration > Duration::from_secs(3600) {
        return Err(format!("{text:?} is longer than the most, 1h"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::inventory::config::DEFAULT_LABEL_KEYS;

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_size("8388608"), Ok(8 << 20));
        assert!(parse_ring_size("5000").is_err());
    }

    #[test]
    fn huge_values_are_refused_not_wrapped() {
        assert!(parse_ring_size("2147483648").is_err(), "2 GiB ring");
        assert_eq!(parse_ring_size("268435456"), Ok(MAX_RING_BYTES));
        assert!(parse_cache_size("0").is_err());
        assert!(parse_queue_batches("0").is_err());
        assert!(parse_queue_batches("65537").is_err());
        assert_eq!(parse_queue_batches("4"), Ok(4));
        assert!(parse_cache_size("18446744073709551615").is_err());
        let parse = |args: &[&str]| {
            #[derive(clap::Parser)]
            struct Cli {
                #[command(flatten)]
                run: RunArgs,
            }
            <Cli as clap::Parser>::try_parse_from(std::iter::once("observer").chain(args.iter().copied()))
                .map(|cli| cli.run)
        };
        assert!(parse(&["--flow-map-size", "4294967295"]).is_err());
        assert!(parse(&["--flow-map-size", "0"]).is_err());
        assert!(parse(&["--poll-interval", "18446744073709551615ms"]).is_err());
        assert_eq!(parse(&["--flow-map-size", "4194304"]).expect("at the limit").flow_map_size, 4_194_304);
    }

    #[test]
    fn idle_timeouts_are_bounded() {
        assert_eq!(parse_idle_timeout("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_idle_timeout("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_idle_timeout("61m").is_err());
        assert!(parse_idle_timeout("0s").is_err());
    }

    #[test]
    fn rotation_sizes_are_zero_or_at_least_4kib() {
        assert_eq!(parse_max_size("0"), Ok(0));
        assert_eq!(parse_max_size("4KiB"), Ok(4096));
        assert!(parse_max_size("100").is_err());
    }

    #[derive(Parser)]
    struct InventoryCli {
        #[command(flatten)]
        inventory: InventoryArgs,
    }

    #[test]
    fn flags_reach_the_config() {
        let cli = InventoryCli::parse_from([
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
        let config = InventoryOptions::from(cli.inventory).config();
        assert_eq!(config.label_keys, ["app", "tier"]);
        assert_eq!(config.reload_interval, Duration::from_millis(500));
        assert_eq!(
            InventoryOptions::from(InventoryCli::parse_from(["observer"]).inventory).config().label_keys,
            DEFAULT_LABEL_KEYS
        );
    }

    #[test]
    fn zero_nan_and_huge_intervals_are_refused() {
        for value in ["0", "-1", "NaN", "inf", "1e300", "86401", "2s"] {
            for flag in ["--manifest-reload-interval", "--inventory-stale-after"] {
                let error = match InventoryCli::try_parse_from(["observer".to_owned(), format!("{flag}={value}")]) {
                    Ok(_) => panic!("{flag} {value} accepted"),
                    Err(error) => error.to_string(),
                };
                assert!(error.contains("out of range") || error.contains("not a number"), "{flag} {value}: {error}");
            }
        }
        let cli = InventoryCli::parse_from([
            "observer",
            "--inventory-stale-after",
            "86400",
            "--manifest-reload-interval",
            "0.01",
        ]);
        assert_eq!(InventoryOptions::from(cli.inventory.clone()).config().stale_after, Duration::from_secs(86_400));
        assert_eq!(InventoryOptions::from(cli.inventory).config().reload_interval, Duration::from_millis(10));
    }
}
