//! `observer run`: the daemon. Wires the stages (capture → enrich → export,
//! with DNS messages from capture to the name cache and the DNS log), handles
//! SIGINT/SIGTERM, and detaches everything on the way out.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::Args;
use tokio::sync::{mpsc, watch};

use crate::{
    ai::{AiEndpoints, Catalog},
    api,
    backends::Backends,
    capture::{Capture, CaptureConfig, CaptureHealth, loader, loader::LoadOptions, table::TableConfig},
    config::ObserverConfig,
    dns::{DnsConfig, DnsTracker, DnsView},
    enrich,
    export::{
        dnslog, flowlog,
        logs::{Logs, RotationArgs},
        sink::Reopen,
    },
    intent,
    inventory::{self, Inventory, InventoryArgs, InventoryError},
    judge::stage::{IntentSource, JudgeStage, StageSetup},
    metrics::{Metrics, MetricsArgs, flows},
    node::NodeAddresses,
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

/// Longest duration a flag takes: 30 days (timers and `poll_interval * 10`
/// stay far from overflowing).
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 86_400);

/// Parses `500ms`, `2s`, `5m`, `1h`: more than zero, at most [`MAX_DURATION`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let too_long = || format!("{text} is longer than the 30 days a duration may be");
    let number: u64 = match number.parse() {
        Ok(number) => number,
        Err(error) if matches!(error.kind(), std::num::IntErrorKind::PosOverflow) => return Err(too_long()),
        Err(_) => return Err(format!("{text:?} is not a duration like 500ms, 2s, 5m or 1h")),
    };
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return Err(format!("{text:?} has no unit: use ms, s, m or h")),
    };
    let duration = number.checked_mul(millis_per_unit).map(Duration::from_millis).ok_or_else(too_long)?;
    if duration.is_zero() {
        return Err("a duration must be more than zero".to_owned());
    }
    if duration > MAX_DURATION {
        return Err(too_long());
    }
    Ok(duration)
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

fn parse_cache_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(size) if (1..=1 << 22).contains(&size) => Ok(size),
        _ => Err(format!("{text:?} is not a number of entries from 1 to 4194304")),
    }
}

fn node_name(args: &RunArgs) -> String {
    if let Some(name) = &args.inventory.node_name {
        return name.clone();
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_owned())
        .unwrap_or_else(|_| "unknown".to_owned())
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

impl RunArgs {
    fn capture_config(&self) -> anyhow::Result<CaptureConfig> {
        let cgroup_root = match &self.cgroup_root {
            // A container mounts the host's /sys/fs/cgroup whole: on a
            // hybrid host the v2 root is its `unified` child. Neither being
            // v2 is the preflight's to report.
            Some(root) => loader::cgroup2_under(root).unwrap_or_else(|| root.clone()),
            None => loader::detect_cgroup_root().context(
                "no cgroup v2 mount at /sys/fs/cgroup or /sys/fs/cgroup/unified; mount cgroup2 or pass --cgroup-root",
            )?,
        };
        Ok(CaptureConfig {
            load: LoadOptions {
                cgroup_root,
                flow_map_size: self.flow_map_size,
                ring_buffer_bytes: self.ring_buffer_bytes,
                skip_loopback: !self.include_loopback,
                // aya-log levels: 0 disables every statement, 4 is debug.
                kernel_log_level: if self.ebpf_log { 4 } else { 0 },
                tcp_per_packet: self.tcp_per_packet,
            },
            poll_interval: self.poll_interval,
            table: TableConfig {
                update_interval_ns: nanos(self.update_interval),
                idle_timeout_ns: nanos(self.idle_timeout),
                tcp_idle_timeout_ns: nanos(self.tcp_idle_timeout),
                close_linger_ns: nanos(self.poll_interval.min(Duration::from_millis(200))),
                pending_timeout_ns: nanos(Duration::from_secs(10)),
            },
            node: Arc::from(node_name(self)),
            kernel_log: self.ebpf_log,
        })
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: RunArgs) -> anyhow::Result<()> {
    let config = args.capture_config()?;
    let observer_config = match &args.config {
        Some(path) => ObserverConfig::read(path)?,
        None => ObserverConfig::default(),
    };
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // SIGHUP reopens the log files (after logrotate moved them) instead of
    // ending the process; handled from before they are opened.
    let reopen = Reopen::default();
    let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).context("handling SIGHUP")?;
    tokio::spawn(reopen_on_hangup(hangup, reopen.clone(), shutdown_rx.clone()));
    // Every log file is opened now: one that cannot be written stops the start.
    let logs =
        Logs::open(args.flow_log.as_ref(), args.findings_log.as_ref(), args.dns_log.as_ref(), &args.rotation, &reopen)?;
    let metrics = Metrics::new(args.metrics.config());
    metrics.attach_sinks(logs.health.clone());
    let flow_log_health = logs.flow.health();
    let Logs { flow: flow_sink, findings: findings_writer, dns: dns_sink, .. } = logs;
    if let Some(addr) = args.metrics.metrics_addr.0 {
        let listener = api::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics, /healthz, /readyz");
        // Capture that has not read the flow map for 10 polls (at least 30 s) is stuck.
        let stall_after = (args.poll_interval * 10).max(Duration::from_secs(30));
        tokio::spawn(api::serve(
            listener,
            api::ApiState { metrics: metrics.clone(), stall_after },
            args.metrics.http,
            shutdown_rx.clone(),
        ));
    }
    tokio::spawn(metrics.clone().run_gc(shutdown_rx.clone()));
    let inventory_args = flows::with_metric_label_keys(&args.inventory, metrics.allowlist());
    let inventory = start_inventory(&inventory_args, shutdown_rx.clone()).await?;
    if let Some(inventory) = &inventory {
        metrics.expect_inventory();
        tokio::spawn(metrics.clone().follow_inventory(inventory.clone(), shutdown_rx.clone()));
    }
    let resolver = inventory.as_ref().map(Inventory::resolver);
    let node = Arc::clone(&config.node);
    let mut capture = Capture::start(config).context("starting capture")?;
    metrics.attach_capture(capture.health());
    let dns_config = DnsConfig { cache_capacity: args.dns_cache_size, grace: args.dns_grace, ..DnsConfig::default() };
    let catalog = Catalog::build(&observer_config.ai.catalog).context("building the AI endpoint catalog")?;
    let ai = AiEndpoints::new(Arc::new(catalog), observer_config.ai.max_addresses, args.dns_grace);
    let dns = DnsView::new(&dns_config).with_ai(Arc::new(ai));
    let dns_writer = match dns_sink {
        Some(sink) => {
            let (dns_tx, dns_rx) = mpsc::channel(DNS_LOG_CAPACITY);
            capture.set_dns(DnsTracker::new(dns.clone(), dns_config, node, Some(dns_tx)));
            Some(tokio::spawn(dnslog::write(sink, resolver.clone(), dns_rx)))
        }
        None => {
            capture.set_dns(DnsTracker::new(dns.clone(), dns_config, node, None));
            None
        }
    };
    let (captured_tx, captured_rx) = mpsc::channel(STAGE_CAPACITY);
    let (enriched_tx, enriched_rx) = mpsc::channel(STAGE_CAPACITY);
    let (judged_tx, judged_rx) = mpsc::channel(STAGE_CAPACITY);
    let (metered_tx, metered_rx) = mpsc::channel(STAGE_CAPACITY);
    let enrich_health = Arc::new(enrich::EnrichHealth::default());
    let name_labels = Arc::clone(dns.labels());
    let node_addresses = match NodeAddresses::watch(shutdown_rx.clone()) {
        Ok((addresses, task)) => {
            tokio::spawn(task);
            addresses
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the node's addresses: traffic with them is judged as with the world");
            NodeAddresses::default()
        }
    };
    // Opened here, in the observer's own network namespace: conntrack is per
    // namespace, and a node agent runs in the node's.
    let backends = Backends::open(observer_config.intents.metadata_addresses.clone(), metrics.service_counters());
    let enricher = tokio::spawn(enrich::run(
        resolver,
        node_addresses,
        Some(dns),
        backends,
        captured_rx,
        enriched_tx,
        Arc::clone(&enrich_health),
    ));
    let judge = match inventory {
        Some(inventory) => {
            let setup = StageSetup {
                intents: intent_source(&args.inventory, shutdown_rx.clone()).await?,
                inventory,
                config: observer_config,
                findings_log: findings_writer,
                // Manifests describe the whole cluster: only an explicit
                // --node-name says which of their pods run here.
                node: match (&args.inventory.node_name, args.inventory.manifests.is_empty()) {
                    (Some(name), _) => Some(name.clone()),
                    (None, true) => Some(node_name(&args)),
                    (None, false) => None,
                },
                capture_health: capture.health(),
                metrics: Some(metrics.clone()),
            };
            let stage = JudgeStage::new(setup).context("starting the judge")?;
            tokio::spawn(stage.run(enriched_rx, judged_tx))
        }
        None => {
            if findings_writer.is_some() {
                tracing::warn!("no inventory, so nothing is judged: the findings log stays empty");
            }
            tokio::spawn(pass_through(enriched_rx, judged_tx))
        }
    };
    let edges = flows::EdgeOf::new(metrics.allowlist().clone()).with_names(name_labels);
    let meter = tokio::spawn(flows::meter(metrics, edges, judged_rx, metered_tx));
    let writer = tokio::spawn(flowlog::write(flow_sink, metered_rx));
    tokio::spawn(async move {
        match shutdown_signal().await {
            Ok(signal) => tracing::info!(signal, "stopping"),
            Err(error) => tracing::error!(%error, "cannot wait for signals; stopping"),
        }
        let _ = shutdown_tx.send(true);
    });
    let health: Arc<CaptureHealth> = capture.health();
    capture.run(captured_tx, shutdown_rx).await;
    enricher.await.context("enrich task panicked")?;
    judge.await.context("judge task panicked")?;
    meter.await.context("metering task panicked")?;
    let written = writer.await.context("flow log task panicked")?.context("flow log writer panicked")?;
    if let Some(dns_writer) = dns_writer {
        let entries = dns_writer.await.context("DNS log task panicked")?.context("DNS log writer panicked")?;
        tracing::info!(entries, "DNS log closed");
    }
    tracing::info!(
        records = written,
        records_dropped = flow_log_health.dropped(),
        events_lost = health.events_lost.load(std::sync::atomic::Ordering::Relaxed),
        "flow log closed; kernel programs detached"
    );
    Ok(())
}

/// Without an inventory there is nothing to judge: records go straight on.
async fn pass_through(
    mut input: mpsc::Receiver<Vec<crate::flow::FlowRecord>>,
    output: mpsc::Sender<Vec<crate::flow::FlowRecord>>,
) {
    while let Some(batch) = input.recv().await {
        if output.send(batch).await.is_err() {
            return;
        }
    }
}

/// FlowIntents and ClusterNetworkPolicies from the manifests in standalone
/// mode, else watches of the cluster's. A cluster without the
/// ClusterNetworkPolicy CRD is said so once; the watch keeps retrying, so
/// installing the CRD later is picked up.
async fn intent_source(args: &InventoryArgs, mut shutdown: watch::Receiver<bool>) -> anyhow::Result<IntentSource> {
    if !args.manifests.is_empty() {
        return Ok(IntentSource::Inventory);
    }
    let client = inventory::client(args.kubeconfig.clone()).await.context("connecting to watch FlowIntents")?;
    let (store, stream) = intent::watch(client.clone());
    let mut cnp_shutdown = shutdown.clone();
    let changed = Arc::new(tokio::sync::Notify::new());
    let notify = Arc::clone(&changed);
    tokio::spawn(async move {
        use futures::StreamExt as _;
        let mut stream = std::pin::pin!(stream);
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(_)) => notify.notify_one(),
                    Some(Err(error)) => tracing::warn!(%error, "FlowIntent watch failed; retrying with backoff"),
                    None => return,
                },
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
        }
    });
    let (cluster_policies, cnp_stream) = crate::policy::cnp::source::watch(client.clone());
    let notify = Arc::clone(&changed);
    tokio::spawn(async move {
        use futures::StreamExt as _;
        let mut stream = std::pin::pin!(cnp_stream);
        let mut said_absent = false;
        loop {
            tokio::select! {
                item = stream.next() => match item {
                    Some(Ok(_)) => notify.notify_one(),
                    Some(Err(error)) if crate::policy::cnp::source::crd_absent(&error) => {
                        if !said_absent {
                            said_absent = true;
                            tracing::warn!(
                                "the ClusterNetworkPolicy CRD (policy.networking.k8s.io/v1alpha2) is not installed: judging without ClusterNetworkPolicies"
                            );
                        }
                    }
                    Some(Err(error)) => tracing::warn!(%error, "ClusterNetworkPolicy watch failed; retrying with backoff"),
                    None => return,
                },
                _ = cnp_shutdown.wait_for(|stop| *stop) => return,
            }
        }
    });
    Ok(IntentSource::Cluster { store, cluster_policies, changed })
}

/// Batches a stage may queue for the next one before dropping.
const STAGE_CAPACITY: usize = 1024;
/// DNS log entries queued for the writer before dropping.
const DNS_LOG_CAPACITY: usize = 8192;

/// Starts the inventory the flags choose and returns it. With no
/// `--manifests` and no Kubernetes configuration at all, the observer still
/// captures, and says that flows will carry addresses only.
async fn start_inventory(
    args: &InventoryArgs,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<Inventory>> {
    let (inventory, task) = match Inventory::from_args(args).await {
        Ok(started) => started,
        Err(InventoryError::InferConfig { source }) => {
            tracing::warn!(
                error = %source,
                "no --manifests and no Kubernetes configuration: flows carry addresses only, not pods, workloads or verdicts"
            );
            return Ok(None);
        }
        Err(error) => return Err(error).context("starting the inventory"),
    };
    tokio::spawn(async move {
        tokio::select! {
            () = task => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
        }
    });
    let mode = if args.manifests.is_empty() { "cluster" } else { "standalone" };
    tracing::info!(mode, "inventory started");
    Ok(Some(inventory))
}

/// Asks every log file to reopen on each SIGHUP until `shutdown`.
async fn reopen_on_hangup(
    mut hangup: tokio::signal::unix::Signal,
    reopen: Reopen,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            received = hangup.recv() => {
                if received.is_none() {
                    return;
                }
                reopen.request();
                tracing::info!("SIGHUP: log files are reopened before their next write");
            }
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = terminate.recv() => "SIGTERM",
        _ = interrupt.recv() => "SIGINT",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_only() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_size("8388608"), Ok(8 << 20));
        assert!(parse_ring_size("5000").is_err());
    }

    #[test]
    fn huge_values_are_refused_not_wrapped() {
        for text in ["99999999999999999999s", "307445734561825861m", "5124095576030432h", "31d", "721h", "2592001s"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(parse_duration("720h"), Ok(MAX_DURATION));
        assert!(parse_duration("99999999999999999999s").is_err_and(|error| error.contains("30 days")));
        assert!(parse_ring_size("2147483648").is_err(), "2 GiB ring");
        assert_eq!(parse_ring_size("268435456"), Ok(MAX_RING_BYTES));
        assert!(parse_cache_size("0").is_err());
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
}
