//! `observer run`: the daemon. Opens the logs, starts the inventory, the HTTP
//! server and capture (with DNS messages from capture to the name cache and
//! the DNS log), hands capture's records to the [`crate::pipeline`], owns the
//! daemon's [`Health`], handles SIGINT/SIGTERM, and detaches everything on
//! the way out.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::sync::{mpsc, watch};

use crate::{
    ai::{AiEndpoints, Catalog},
    api::{self, HttpLimits},
    backends::Backends,
    capture::{Capture, CaptureConfig, CaptureHealth, loader, loader::LoadOptions, table::TableConfig},
    config::ObserverConfig,
    dns::{DnsConfig, DnsTracker, DnsView},
    export::{
        dnslog,
        logs::{Logs, RotationConfig},
        sink::Reopen,
    },
    health::{Health, StallLimits},
    inventory::{Inventory, InventoryError, InventoryOptions},
    judge::stage::{JudgeStage, StageSetup},
    metrics::{Metrics, MetricsOptions, flows},
    node::NodeAddresses,
    pipeline,
};

/// What `observer run` is told to do (from [`crate::cli::run::RunConfig`]).
#[derive(Debug)]
pub struct RunConfig {
    /// Write the JSON flow log to this file (appended) instead of stdout.
    pub flow_log: Option<PathBuf>,
    /// Size-based rotation of the flow, findings and DNS log files.
    pub rotation: RotationConfig,
    /// cgroup v2 root to attach at, or a host's cgroup folder whose `unified` child is the v2 root (hybrid hosts)
    /// [default: /sys/fs/cgroup, or /sys/fs/cgroup/unified on hybrid hosts].
    pub cgroup_root: Option<PathBuf>,
    /// How often the kernel flow map is read and records are written.
    pub poll_interval: Duration,
    /// Minimum time between two update records of one flow.
    pub update_interval: Duration,
    /// A UDP, SCTP or ICMP flow idle this long has ended.
    pub idle_timeout: Duration,
    /// A TCP flow counted per packet (`--tcp-per-packet`, no kernel BTF, or before Linux 5.9) idle this long with no
    /// close seen is expired; connections counted from their socket end with their close.
    pub tcp_idle_timeout: Duration,
    /// Capacity of the kernel flow map (entries; about 200 bytes each; 16 to 4194304).
    pub flow_map_size: u32,
    /// Size of the kernel event ring buffer in bytes (a power of two, 4096 to 256 MiB).
    pub ring_buffer_bytes: u32,
    /// Also observe loopback traffic (127.0.0.0/8, ::1).
    pub include_loopback: bool,
    /// Count TCP packet by packet instead of from each socket's own counters,
    /// and take TCP state changes from the tracepoint instead of the BTF
    /// tracepoint (what happens anyway without kernel BTF or before Linux 5.9).
    pub tcp_per_packet: bool,
    /// Forward the kernel programs' diagnostics (aya-log) to the log at debug level.
    pub ebpf_log: bool,
    /// Also write a JSON lines log of every DNS query pods send and what came of it (appended).
    pub dns_log: Option<PathBuf>,
    /// Most (pod, address) entries in the DNS name cache (least recently used evicted; 1 to 4194304).
    pub dns_cache_size: usize,
    /// How long past its TTL a resolved name still names new connections.
    pub dns_grace: Duration,
    /// Write findings (policy and intent breaches, unprotected AI-tier pods,
    /// spikes), deduplicated, as JSON lines to this file (appended).
    pub findings_log: Option<PathBuf>,
    /// Batches each pipeline stage may queue for the next before it drops
    /// (and counts) what does not fit: bounds the memory a stalled stage or
    /// flow-log reader can take (1 to 65536).
    pub stage_queue_batches: usize,
    /// Configuration file (YAML or JSON): AI tiers, judge, spike detector and
    /// findings settings; see `docs/intents.md`.
    pub config: Option<PathBuf>,
    /// Where pods, namespaces and policies come from.
    pub inventory: InventoryOptions,
    /// Metrics and HTTP endpoints.
    pub metrics: MetricsOptions,
    /// How many HTTP clients are served at a time and for how long.
    pub http: HttpLimits,
}

fn node_name(args: &RunConfig) -> String {
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

impl RunConfig {
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
pub fn run(args: RunConfig) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: RunConfig) -> anyhow::Result<()> {
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
    // Capture that has not read the flow map for 10 polls (at least 30 s) is
    // stuck; so is a log file write blocked as long as 10 polls (at least 5 s).
    let health = Health::new(StallLimits {
        capture: (args.poll_interval * 10).max(Duration::from_secs(30)),
        sink: (args.poll_interval * 10).max(Duration::from_secs(5)),
    });
    let metrics = Metrics::new(args.metrics.config(), &health);
    health.attach_sinks(logs.health.clone());
    let flow_log_health = logs.flow.health();
    let Logs { flow: flow_sink, findings: findings_writer, dns: dns_sink, .. } = logs;
    if let Some(addr) = args.metrics.metrics_addr.0 {
        let listener = api::bind(addr).await?;
        tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics, /healthz, /readyz");
        tokio::spawn(api::serve(
            listener,
            api::ApiState { metrics: metrics.clone(), health: health.clone() },
            args.http,
            shutdown_rx.clone(),
        ));
    }
    tokio::spawn(metrics.clone().run_gc(shutdown_rx.clone()));
    let inventory_args = flows::with_metric_label_keys(&args.inventory, metrics.allowlist());
    let inventory = start_inventory(&inventory_args, shutdown_rx.clone()).await?;
    if let Some(inventory) = &inventory {
        tokio::spawn(pipeline::follow_inventory(
            inventory.clone(),
            metrics.clone(),
            health.clone(),
            shutdown_rx.clone(),
        ));
    }
    let resolver = inventory.as_ref().map(Inventory::resolver);
    let node = Arc::clone(&config.node);
    let mut capture = Capture::start(config).context("starting capture")?;
    health.attach_capture(capture.health());
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
    // One edge-label builder for the meter and the judge's spikes: a named
    // destination by its domain in both.
    let edges = flows::EdgeOf::new(metrics.allowlist().clone()).with_names(Arc::clone(dns.labels()));
    let judge = match inventory {
        Some(inventory) => {
            let setup = StageSetup {
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
                health: health.clone(),
                metrics: Some(metrics.clone()),
                edges: edges.clone(),
            };
            Some(JudgeStage::new(setup).context("starting the judge")?)
        }
        None => {
            if findings_writer.is_some() {
                tracing::warn!("no inventory, so nothing is judged: the findings log stays empty");
            }
            None
        }
    };
    let (captured, stages) = pipeline::start(pipeline::Stages {
        health: health.clone(),
        metrics,
        edges,
        resolver,
        node: node_addresses,
        dns: Some(dns),
        backends,
        judge,
        flow_log: flow_sink,
        queue_batches: args.stage_queue_batches,
    });
    tokio::spawn(async move {
        match shutdown_signal().await {
            Ok(signal) => tracing::info!(signal, "stopping"),
            Err(error) => tracing::error!(%error, "cannot wait for signals; stopping"),
        }
        let _ = shutdown_tx.send(true);
    });
    let capture_health: Arc<CaptureHealth> = capture.health();
    capture.run(captured, shutdown_rx).await;
    let written = stages.join().await?;
    if let Some(dns_writer) = dns_writer {
        let entries = dns_writer.await.context("DNS log task panicked")?.context("DNS log writer panicked")?;
        tracing::info!(entries, "DNS log closed");
    }
    tracing::info!(
        records = written,
        records_dropped = %health.drops().snapshot(),
        lines_dropped = flow_log_health.dropped(),
        events_lost = capture_health.events_lost.load(std::sync::atomic::Ordering::Relaxed),
        "flow log closed; kernel programs detached"
    );
    Ok(())
}

/// DNS log entries queued for the writer before dropping.
const DNS_LOG_CAPACITY: usize = 8192;

/// Starts the inventory the flags choose and returns it. With no
/// `--manifests` and no Kubernetes configuration at all, the observer still
/// captures, and says that flows will carry addresses only.
async fn start_inventory(
    args: &InventoryOptions,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<Option<Inventory>> {
    let (inventory, task) = match Inventory::from_options(args).await {
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
