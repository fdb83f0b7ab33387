//! Metrics: every Prometheus series the observer exposes, in one registry.
//!
//! In: flow deltas on workload-level edges, verdicts, findings, spikes,
//! inventory and policy state from the pipeline, and the daemon's
//! [`Health`] (capture's counters, the log files, every stage's drops; read
//! at scrape time). Out: the OpenMetrics text of `flow_observer_*` for
//! `/metrics`. Readiness is not kept here: it is [`Health`]'s.
//!
//! Cardinality is bounded three ways: labels are workload-level (never an IP,
//! port or pod name) plus an operator-chosen allowlist of pod labels; each
//! edge, verdict, finding and workload family holds at most
//! `max_series_per_family` series and sends the rest to one `__overflow__`
//! series, counted in `flow_observer_series_overflow_total{family}`; and a
//! series untouched for `series_grace` is removed (edges of flows still
//! open are kept alive by [`FlowMeter`]). `docs/operations.md` has the
//! reference and the series count at 1,000 workloads.

pub mod bounded;
pub mod capture;
pub mod edge_cells;
pub mod edge_exposition;
pub mod flows;
pub mod labels;
pub mod providers;
pub mod services;
pub mod sinks;

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError, atomic::AtomicU64},
    time::{Duration, Instant, SystemTime},
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge, info::Info},
    registry::Registry,
};

use crate::health::Health;
use bounded::{BoundedFamily, Series, SeriesAccounting};
use edge_cells::EdgeCells;
pub use flows::{FlowDelta, FlowMeter};
pub use labels::{
    BuildLabels, Direction, EdgeLabels, EndLabels, FindingLabels, KindLabels, LabelAllowlist, OVERFLOW, Outcome,
    Reporter, ResourceLabels, SourceErrorLabels, SourceLabels, WorkloadLabels,
};

/// The prefix of every exposed name.
pub const PREFIX: &str = "flow_observer";

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Settings of the metrics.
#[derive(Clone, Debug)]
pub struct MetricsConfig {
    /// Most series one bounded family holds before new label sets go to its
    /// `__overflow__` series.
    pub max_series_per_family: usize,
    /// A series untouched this long is removed (the edges of deleted pods and
    /// workloads, findings no longer reported).
    pub series_grace: Duration,
    /// Pod labels exposed on edges as `src_<name>` and `dst_<name>`.
    pub label_allowlist: LabelAllowlist,
}

impl Default for MetricsConfig {
    /// 10,000 series per family, a 10-minute grace, no pod labels.
    fn default() -> Self {
        Self {
            max_series_per_family: 10_000,
            series_grace: Duration::from_secs(600),
            label_allowlist: LabelAllowlist::default(),
        }
    }
}

/// What the inventory reports, for the inventory gauges (and, through the
/// pipeline, [`Health`]'s readiness).
#[derive(Clone, Debug, Default)]
pub struct InventoryState {
    /// `cluster` or `standalone`.
    pub source: String,
    /// Every required resource has had its first full sync.
    pub synced: bool,
    /// A watch has been failing for longer than the threshold.
    pub stale: bool,
    /// When the latest change was published.
    pub updated_at: Option<SystemTime>,
    /// Objects held per resource (`pods`, `namespaces`…).
    pub objects: Vec<(String, usize)>,
    /// Errors of the source since start, by reason.
    pub source_errors: Vec<(&'static str, u64)>,
}

impl From<&crate::inventory::status::Status> for InventoryState {
    fn from(status: &crate::inventory::status::Status) -> Self {
        Self {
            source: status.source.to_owned(),
            synced: status.synced,
            stale: status.stale,
            updated_at: status.updated_at,
            objects: status
                .resources
                .iter()
                .map(|(resource, state)| (resource.name().to_owned(), state.objects))
                .collect(),
            source_errors: status.source_errors.iter().map(|(reason, count)| (*reason, *count)).collect(),
        }
    }
}

/// The observer's metrics: cheap to clone, shared by every stage and the
/// HTTP server.
#[derive(Clone, Debug)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    registry: Registry,
    config: MetricsConfig,
    /// The edge and verdict families, encoded by their collector.
    edges: Arc<Mutex<EdgeCells>>,
    spikes: BoundedFamily<EdgeLabels, Counter>,
    findings: BoundedFamily<FindingLabels, Counter>,
    unprotected: BoundedFamily<WorkloadLabels, Gauge>,
    inventory_synced: Family<SourceLabels, Gauge>,
    inventory_stale: Family<SourceLabels, Gauge>,
    inventory_updated: Family<SourceLabels, Gauge<f64, AtomicU64>>,
    inventory_objects: Family<ResourceLabels, Gauge>,
    inventory_source_errors: Family<SourceErrorLabels, Counter>,
    policies_loaded: Family<KindLabels, Gauge>,
    intents_loaded: Gauge,
    objects_invalid: Gauge,
    rollouts: Counter,
    services: services::ServiceCounters,
    providers: providers::ProviderFamilies,
}

impl Metrics {
    /// Builds the registry; every group registers itself. The health
    /// families read `health` at each scrape.
    pub fn new(config: MetricsConfig, health: &Health) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let accounting = SeriesAccounting::default();
        let cap = config.max_series_per_family;
        // The judge's handles write the shared "last used" stamp at most
        // this often: a series may go 1/64 of the grace early.
        let refresh = (config.series_grace / 64).min(Duration::from_secs(1));
        let inner = Inner {
            edges: Arc::new(Mutex::new(EdgeCells::new(cap, &accounting))),
            spikes: BoundedFamily::new("edge_spikes", cap, accounting.clone()).with_stamp_refresh(refresh),
            findings: BoundedFamily::new("findings", cap, accounting.clone()).with_stamp_refresh(refresh),
            unprotected: BoundedFamily::new("unprotected_pods", cap, accounting.clone()),
            inventory_synced: Family::default(),
            inventory_stale: Family::default(),
            inventory_updated: Family::default(),
            inventory_objects: Family::default(),
            inventory_source_errors: Family::default(),
            policies_loaded: Family::default(),
            intents_loaded: Gauge::default(),
            objects_invalid: Gauge::default(),
            rollouts: Counter::default(),
            services: services::ServiceCounters::register(&mut registry),
            providers: providers::ProviderFamilies::register(&mut registry, cap, &accounting),
            registry: Registry::default(),
            config,
        };
        register_build(&mut registry);
        register_judgement(&mut registry, &inner);
        register_inventory(&mut registry, &inner);
        register_series(&mut registry, &accounting);
        registry.register_collector(Box::new(edge_exposition::EdgeCollector::new(Arc::clone(&inner.edges))));
        registry.register_collector(Box::new(capture::CaptureCollector::new(health.clone())));
        registry.register_collector(Box::new(sinks::SinkCollector::new(health.clone())));
        Self { inner: Arc::new(Inner { registry, ..inner }) }
    }

    /// The settings.
    pub fn config(&self) -> &MetricsConfig {
        &self.inner.config
    }

    /// The pod-label allowlist, to build [`EndLabels::extra`] with
    /// [`LabelAllowlist::pick`].
    pub fn allowlist(&self) -> &LabelAllowlist {
        &self.inner.config.label_allowlist
    }

    /// The OpenMetrics exposition of every series.
    pub fn encode(&self) -> String {
        let mut text = String::with_capacity(16 * 1024);
        // Writing to a String cannot fail.
        let _ = encode(&mut text, &self.inner.registry);
        text
    }

    /// The counters of Service flows resolved to their backends.
    pub fn service_counters(&self) -> services::ServiceCounters {
        self.inner.services.clone()
    }

    /// The edge and verdict counters, locked: the meter counts a batch on
    /// them at a time.
    pub fn edge_cells(&self) -> MutexGuard<'_, EdgeCells> {
        // The cells hold plain counts: a panic elsewhere cannot leave them
        // inconsistent, so a poisoned lock is still usable.
        self.inner.edges.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts traffic on an edge by its labels: bytes and packets each way,
    /// and the flow itself when `delta.ended` says how it ended (the meter
    /// counts on interned cells instead).
    #[cfg(test)]
    pub fn observe_flow(&self, edge: &EdgeLabels, delta: &FlowDelta) {
        let mut cells = self.edge_cells();
        let stamp = cells.stamp(Instant::now());
        cells.with_edge(edge, |cells, cell| cells.count_traffic(cell, delta, stamp));
    }

    /// Counts a flow's verdict on an edge by its labels.
    #[cfg(test)]
    pub fn record_verdict(&self, edge: &EdgeLabels, verdict: crate::judge::VerdictKind) {
        let mut cells = self.edge_cells();
        let stamp = cells.stamp(Instant::now());
        cells.with_edge(edge, |cells, cell| cells.count_verdict(cell, verdict, stamp));
    }

    /// Counts a finding of a kind about a workload in an AI tier.
    pub fn record_finding(&self, labels: &FindingLabels) {
        self.inner.findings.with(labels, Instant::now(), |counter| {
            counter.inc();
        });
    }

    /// Counts a finding through a held series of its labels, as
    /// [`Metrics::record_finding`] does.
    pub fn count_finding(&self, held: &mut Option<Series<Counter>>, labels: impl FnOnce() -> FindingLabels) {
        self.inner.findings.update(held, labels, Instant::now(), |counter| {
            counter.inc();
        });
    }

    /// Counts egress of a workload to an AI provider: bytes `sent` and
    /// `received` since the flow's previous record, and a new connection
    /// when `new`.
    pub fn record_provider_egress(&self, labels: &providers::ProviderLabels, sent: u64, received: u64, new: bool) {
        self.inner.providers.count(labels, sent, received, new);
    }

    /// Counts an edge whose rate left its learned baseline.
    pub fn record_spike(&self, edge: &EdgeLabels) {
        self.inner.spikes.with(edge, Instant::now(), |counter| {
            counter.inc();
        });
    }

    /// Replaces the set of AI-tier workloads with pods that no policy
    /// isolates, with their number of such pods; workloads left out are
    /// removed at once.
    pub fn set_unprotected(&self, workloads: &[(WorkloadLabels, u64)]) {
        let values: Vec<(WorkloadLabels, i64)> =
            workloads.iter().map(|(labels, pods)| (labels.clone(), i64::try_from(*pods).unwrap_or(i64::MAX))).collect();
        self.inner.unprotected.replace(&values, Instant::now());
    }

    /// Publishes the inventory's gauges (call on every change and
    /// periodically: staleness changes without events).
    pub fn set_inventory(&self, state: &InventoryState) {
        let inner = &self.inner;
        let source = SourceLabels { source: state.source.clone() };
        inner.inventory_synced.get_or_create(&source).set(i64::from(state.synced));
        inner.inventory_stale.get_or_create(&source).set(i64::from(state.stale));
        if let Some(updated) = state.updated_at.and_then(|at| at.duration_since(SystemTime::UNIX_EPOCH).ok()) {
            inner.inventory_updated.get_or_create(&source).set(updated.as_secs_f64());
        }
        for (resource, count) in &state.objects {
            inner
                .inventory_objects
                .get_or_create(&ResourceLabels { resource: resource.clone() })
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        for (reason, count) in &state.source_errors {
            let counter = inner
                .inventory_source_errors
                .get_or_create(&SourceErrorLabels { source: state.source.clone(), reason });
            // The status holds totals since start; the counter catches up.
            counter.inc_by(count.saturating_sub(counter.get()));
        }
    }

    /// Policies of `kind` (`NetworkPolicy`, `ClusterNetworkPolicy`) compiled into the engine.
    pub fn set_policies_loaded(&self, kind: &str, count: usize) {
        let labels = KindLabels { kind: kind.to_owned() };
        self.inner.policies_loaded.get_or_create(&labels).set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Workload rollouts the inventory has seen since start (a total: the
    /// counter catches up).
    pub fn set_rollouts(&self, total: u64) {
        let counter = &self.inner.rollouts;
        counter.inc_by(total.saturating_sub(counter.get()));
    }

    /// FlowIntents loaded.
    pub fn set_intents_loaded(&self, count: usize) {
        self.inner.intents_loaded.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// NetworkPolicies, ClusterNetworkPolicies and FlowIntents the last
    /// compile left out as invalid.
    pub fn set_objects_invalid(&self, count: usize) {
        self.inner.objects_invalid.set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// Removes every series untouched for the grace period; returns how many.
    pub fn collect_garbage(&self, now: Instant) -> usize {
        let inner = &self.inner;
        let grace = inner.config.series_grace;
        // Its own statement, so the meter waits only for the edges' part.
        let edges = self.edge_cells().collect_garbage(now, grace);
        edges
            + inner.spikes.collect_garbage(now, grace)
            + inner.findings.collect_garbage(now, grace)
            + inner.providers.collect_garbage(now, grace)
    }

    /// Collects garbage every quarter of the grace period (at most every
    /// minute) until `shutdown` turns true.
    pub async fn run_gc(self, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let period = (self.inner.config.series_grace / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
                _ = tick.tick() => {
                    let removed = self.collect_garbage(Instant::now());
                    if removed > 0 {
                        tracing::debug!(removed, "idle metric series removed");
                    }
                }
            }
        }
    }
}

fn register_build(registry: &mut Registry) {
    registry.register(
        "build",
        "Version of the running observer",
        Info::new(BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            revision: env!("OBSERVER_GIT_REVISION"),
            arch: std::env::consts::ARCH,
        }),
    );
}

fn register_judgement(registry: &mut Registry, inner: &Inner) {
    registry.register("edge_spikes", "Times an edge's rate left its learned baseline", inner.spikes.family());
    registry.register("findings", "Findings by kind, AI tier and workload", inner.findings.family());
    registry.register(
        "unprotected_pods",
        "Pods of an AI-tier workload that no NetworkPolicy isolates",
        inner.unprotected.family(),
    );
    registry.register(
        "policies_loaded",
        "Policies compiled into the policy engine, by kind (NetworkPolicy, ClusterNetworkPolicy)",
        inner.policies_loaded.clone(),
    );
    registry.register("intents_loaded", "FlowIntents loaded", inner.intents_loaded.clone());
    registry.register(
        "objects_invalid",
        "NetworkPolicies, ClusterNetworkPolicies and FlowIntents left out of the last compile as invalid (the log names each with its reason)",
        inner.objects_invalid.clone(),
    );
    registry.register(
        "workload_rollouts",
        "Workload revision changes the inventory has seen (a new pod-template-hash or controller-revision-hash)",
        inner.rollouts.clone(),
    );
}

fn register_inventory(registry: &mut Registry, inner: &Inner) {
    registry.register(
        "inventory_synced",
        "1 once every required inventory resource has had its first full sync",
        inner.inventory_synced.clone(),
    );
    registry.register(
        "inventory_stale",
        "1 while an inventory watch has been failing, or manifests have not read cleanly, for longer than the stale threshold",
        inner.inventory_stale.clone(),
    );
    registry.register(
        "inventory_last_update_timestamp_seconds",
        "When the inventory last published a change (Unix time)",
        inner.inventory_updated.clone(),
    );
    registry.register("inventory_objects", "Objects the inventory holds, by resource", inner.inventory_objects.clone());
    registry.register(
        "inventory_source_errors",
        "Failures of the inventory source by reason: watch errors, manifests missing, unlistable, unreadable, too large, changing while read, invalid or beyond the parser's limits",
        inner.inventory_source_errors.clone(),
    );
}

fn register_series(registry: &mut Registry, accounting: &SeriesAccounting) {
    registry.register("series", "Series held by a bounded metric family", accounting.series.clone());
    registry.register(
        "series_overflow",
        "Observations sent to a family's __overflow__ series because it held max-series series",
        accounting.overflow.clone(),
    );
    registry.register(
        "series_removed",
        "Series removed after going untouched for the grace period",
        accounting.removed.clone(),
    );
}

/// Options of the metrics and the HTTP endpoints.
#[derive(Clone, Debug)]
pub struct MetricsOptions {
    /// Serve /metrics, /healthz and /readyz on this address (`off` to disable); `[::]` is IPv6 and IPv4.
    pub metrics_addr: MetricsAddr,
    /// Most series one edge, verdict, finding or workload family holds; new
    /// label sets past it are counted in a `__overflow__` series.
    pub metrics_max_series: usize,
    /// A series untouched this long is removed (deleted pods and workloads).
    pub metrics_series_grace: Duration,
    /// Pod label exposed on edge series as `src_<key>`/`dst_<key>` (repeat;
    /// keep to labels with few values, such as `team` or `app.kubernetes.io/part-of`).
    pub metrics_pod_labels: Vec<String>,
}

impl MetricsOptions {
    /// The metrics settings these options say.
    pub fn config(&self) -> MetricsConfig {
        MetricsConfig {
            max_series_per_family: self.metrics_max_series,
            series_grace: self.metrics_series_grace,
            label_allowlist: LabelAllowlist::new(self.metrics_pod_labels.iter().cloned()),
        }
    }
}

/// The address of the HTTP endpoints, or none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MetricsAddr(pub Option<std::net::SocketAddr>);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        capture::CaptureHealth,
        flow::{RecordEvent, Traffic},
        health::StageName,
    };
    use std::sync::atomic::Ordering;

    fn edge(src: &str, dst: &str) -> EdgeLabels {
        EdgeLabels {
            src: EndLabels::new("Deployment", "shop", src).tier("agent"),
            dst: EndLabels::new("StatefulSet", "shop", dst),
            protocol: Arc::from("tcp"),
            reporter: Reporter::Src,
        }
    }

    fn delta(bytes: u64, ended: Option<Outcome>) -> FlowDelta {
        FlowDelta { to_dst: Traffic { packets: 1, bytes }, to_src: Traffic { packets: 2, bytes: bytes * 10 }, ended }
    }

    /// Sample lines of the exposition whose name starts with `name`.
    fn samples<'a>(text: &'a str, name: &str) -> Vec<&'a str> {
        text.lines().filter(|line| !line.starts_with('#') && line.starts_with(name)).collect()
    }

    #[test]
    fn edges_are_exposed_at_workload_level_with_the_documented_names() {
        let metrics = Metrics::new(MetricsConfig::default(), &Health::default());
        metrics.observe_flow(&edge("agent", "db"), &delta(100, None));
        metrics.observe_flow(&edge("agent", "db"), &delta(50, Some(Outcome::Completed)));
        let text = metrics.encode();
        let labels = r#"src_namespace="shop",src_workload="agent",src_kind="Deployment",src_tier="agent",dst_namespace="shop",dst_workload="db",dst_kind="StatefulSet",dst_tier="",protocol="tcp",reporter="src""#;
        assert!(
            text.contains(&format!("flow_observer_edge_bytes_total{{{labels},direction=\"to_dst\"}} 150\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("flow_observer_edge_bytes_total{{{labels},direction=\"to_src\"}} 1500\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("flow_observer_edge_packets_total{{{labels},direction=\"to_src\"}} 4\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!("flow_observer_edge_flows_total{{{labels},outcome=\"completed\"}} 1\n")),
            "{text}"
        );
        assert!(text.contains("flow_observer_build_info{version=\""), "{text}");
        let revision = concat!("revision=\"", env!("OBSERVER_GIT_REVISION"), "\"");
        assert!(text.contains(revision), "{text}");
        // Capture's series appear only once capture is attached.
        assert!(!text.contains("flow_observer_ringbuf_events_lost_total"), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn capture_health_is_read_at_scrape_time() {
        let daemon = Health::default();
        let metrics = Metrics::new(MetricsConfig::default(), &daemon);
        let health = Arc::new(CaptureHealth::default());
        daemon.attach_capture(Arc::clone(&health));
        health.events_lost.store(7, Ordering::Relaxed);
        health.flow_map_entries.store(900, Ordering::Relaxed);
        health.flow_map_capacity.store(1000, Ordering::Relaxed);
        health.flow_map_evictions.store(5, Ordering::Relaxed);
        health.flows_active.store(3, Ordering::Relaxed);
        health.tcp_socket_counters.store(1, Ordering::Relaxed);
        let text = metrics.encode();
        for line in [
            "flow_observer_ringbuf_events_lost_total 7\n",
            "flow_observer_flow_map_entries 900\n",
            "flow_observer_flow_map_capacity 1000\n",
            "flow_observer_flows_active 3\n",
            "flow_observer_flows_started_total 0\n",
            "flow_observer_flow_map_inserts_failed_total 0\n",
            "flow_observer_flow_map_evictions_total 5\n",
            "flow_observer_tcp_socket_counters 1\n",
            "flow_observer_flow_map_batched 0\n",
        ] {
            assert!(text.contains(line), "{line} missing in {text}");
        }
    }

    #[test]
    fn log_files_and_export_drops_have_their_series() {
        use crate::export::sink::{LineSink, Reopen, Rotation, SinkName, Target};
        let daemon = Health::default();
        let metrics = Metrics::new(MetricsConfig::default(), &daemon);
        daemon.attach_capture(Arc::new(CaptureHealth::default()));
        daemon.drops().count_event(StageName::Capture, RecordEvent::End, 4);
        daemon.drops().count_event(StageName::Enrich, RecordEvent::Start, 2);
        daemon.drops().count_event(StageName::Judge, RecordEvent::Update, 3);
        daemon.set_flows_untracked(5);
        let dir = tempfile::tempdir().expect("tempdir");
        let open = |name, file: &str| {
            LineSink::open(name, Target::File(dir.path().join(file)), Rotation::OFF, Reopen::default()).expect("opens")
        };
        let (mut flow, findings) = (open(SinkName::FlowLog, "flows.jsonl"), open(SinkName::FindingsLog, "f.jsonl"));
        flow.write(b"{}\n{}\n", 2);
        daemon.attach_sinks(vec![flow.health(), findings.health()]);
        findings.health().fail("writing failed: Input/output error".to_owned());
        let text = metrics.encode();
        for expected in [
            "flow_observer_records_dropped_total{stage=\"capture\",event=\"end\"} 4\n",
            "flow_observer_records_dropped_total{stage=\"capture\",event=\"start\"} 0\n",
            "flow_observer_records_dropped_total{stage=\"enrich\",event=\"start\"} 2\n",
            "flow_observer_records_dropped_total{stage=\"judge\",event=\"update\"} 3\n",
            "flow_observer_records_dropped_total{stage=\"export\",event=\"end\"} 0\n",
            "flow_observer_judge_flows_untracked_total 5\n",
            "flow_observer_sink_write_blocked_seconds{sink=\"flow_log\"} 0.0\n",
            "flow_observer_sink_up{sink=\"flow_log\"} 1\n",
            "flow_observer_sink_up{sink=\"findings_log\"} 0\n",
            "flow_observer_sink_lines_written_total{sink=\"flow_log\"} 2\n",
            "flow_observer_sink_lines_dropped_total{sink=\"findings_log\"} 0\n",
            "flow_observer_sink_rotations_total{sink=\"flow_log\"} 0\n",
        ] {
            assert!(text.contains(expected), "{expected} missing in {text}");
        }
    }

    #[test]
    fn allowlisted_pod_labels_become_src_and_dst_labels() {
        let config = MetricsConfig { label_allowlist: LabelAllowlist::new(["team"]), ..Default::default() };
        let metrics = Metrics::new(config, &Health::default());
        let pod = BTreeMap::from([("team".to_owned(), "search".to_owned()), ("pod-hash".to_owned(), "x".to_owned())]);
        let mut edge = edge("agent", "db");
        edge.src.extra = metrics.allowlist().pick(&pod);
        edge.dst.extra = metrics.allowlist().pick(&BTreeMap::new());
        metrics.observe_flow(&edge, &delta(1, None));
        let text = metrics.encode();
        let line = samples(&text, "flow_observer_edge_bytes_total").into_iter().next().expect("a sample");
        assert!(line.contains(r#"src_tier="agent",src_team="search",dst_namespace"#), "{line}");
        assert!(line.contains(r#"dst_tier="",dst_team="",protocol"#), "{line}");
        assert!(!line.contains("pod_hash"), "{line}");
    }

    #[test]
    fn overflow_is_counted_per_family_and_series_are_collected() {
        let config = MetricsConfig { max_series_per_family: 4, ..Default::default() };
        let grace = config.series_grace;
        let metrics = Metrics::new(config, &Health::default());
        for i in 0..5 {
            metrics.observe_flow(&edge("agent", &format!("db-{i}")), &delta(1, None));
        }
        let text = metrics.encode();
        // Two directions per edge: two edges fit, the other three overflow both ways.
        assert_eq!(samples(&text, "flow_observer_edge_bytes_total").len(), 5, "{text}");
        assert!(text.contains(r#"src_workload="__overflow__""#), "{text}");
        assert!(text.contains("flow_observer_series_overflow_total{family=\"edge_bytes\"} 6\n"), "{text}");
        assert!(text.contains("flow_observer_series{family=\"edge_bytes\"} 5\n"), "{text}");
        let removed = metrics.collect_garbage(Instant::now() + grace + Duration::from_secs(1));
        assert_eq!(removed, 10, "bytes and packets, 5 series each");
        let text = metrics.encode();
        assert!(samples(&text, "flow_observer_edge_bytes_total").is_empty(), "{text}");
        assert!(text.contains("flow_observer_series_removed_total{family=\"edge_bytes\"} 5\n"), "{text}");
    }

    #[test]
    fn verdicts_findings_spikes_and_state_have_their_series() {
        let metrics = Metrics::new(MetricsConfig::default(), &Health::default());
        metrics.record_verdict(&edge("agent", "db"), crate::judge::VerdictKind::EnforcementGap);
        metrics.record_finding(&FindingLabels::new("intent-violation", "agent", "shop", "agent"));
        metrics.record_spike(&edge("agent", "db"));
        let provider = providers::ProviderLabels {
            namespace: "shop".into(),
            workload: "billing".into(),
            tier: "".into(),
            provider: "openai".into(),
        };
        metrics.record_provider_egress(&provider, 300, 5000, true);
        metrics.record_provider_egress(&provider, 0, 700, false);
        metrics.set_unprotected(&[(WorkloadLabels::new("Deployment", "ml", "vllm", "model-server"), 2)]);
        metrics.set_policies_loaded("NetworkPolicy", 12);
        metrics.set_policies_loaded("ClusterNetworkPolicy", 2);
        metrics.set_intents_loaded(3);
        metrics.set_inventory(&InventoryState {
            source: "cluster".into(),
            synced: true,
            stale: false,
            updated_at: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            objects: vec![("pods".into(), 42)],
            source_errors: vec![("watch", 3)],
        });
        // Totals from the status: the counter catches up, never counts twice.
        metrics.set_inventory(&InventoryState {
            source: "cluster".into(),
            synced: true,
            source_errors: vec![("watch", 5)],
            ..InventoryState::default()
        });
        let text = metrics.encode();
        for expected in [
            r#"verdict="enforcement-gap"} 1"#,
            r#"flow_observer_inventory_source_errors_total{source="cluster",reason="watch"} 5"#,
            r#"flow_observer_findings_total{kind="intent-violation",tier="agent",namespace="shop",workload="agent"} 1"#,
            r#"flow_observer_edge_spikes_total{src_namespace="shop""#,
            r#"flow_observer_unprotected_pods{namespace="ml",workload="vllm",kind="Deployment",tier="model-server"} 2"#,
            "flow_observer_policies_loaded{kind=\"NetworkPolicy\"} 12\n",
            "flow_observer_policies_loaded{kind=\"ClusterNetworkPolicy\"} 2\n",
            "flow_observer_intents_loaded 3\n",
            r#"flow_observer_ai_provider_connections_total{namespace="shop",workload="billing",tier="",provider="openai"} 1"#,
            r#"flow_observer_ai_provider_bytes_total{namespace="shop",workload="billing",tier="",provider="openai",direction="sent"} 300"#,
            r#"flow_observer_ai_provider_bytes_total{namespace="shop",workload="billing",tier="",provider="openai",direction="received"} 5700"#,
            r#"flow_observer_inventory_synced{source="cluster"} 1"#,
            r#"flow_observer_inventory_stale{source="cluster"} 0"#,
            r#"flow_observer_inventory_last_update_timestamp_seconds{source="cluster"} 1700000000"#,
            r#"flow_observer_inventory_objects{resource="pods"} 42"#,
        ] {
            assert!(text.contains(expected), "{expected} missing in {text}");
        }
    }

    /// The number documented in docs/operations.md ("Series at 1,000
    /// workloads"): 1,000 single-replica workloads on 20 nodes; each calls 3
    /// others over TCP and DNS over UDP, one in five also calls the internet.
    /// A pod-to-pod edge is reported by the node of each end, an internet edge
    /// by the source's node only; each reported edge has bytes and packets
    /// both ways, its completed flows and its `allowed` verdicts.
    #[test]
    fn series_at_1000_workloads() {
        const NODES: usize = 20;
        let nodes: Vec<Metrics> = (0..NODES)
            .map(|_| {
                let daemon = Health::default();
                let metrics = Metrics::new(MetricsConfig::default(), &daemon);
                let health = Arc::new(CaptureHealth::default());
                health.last_poll_ns.store(crate::capture::clock::monotonic_ns(), Ordering::Relaxed);
                daemon.attach_capture(health);
                metrics.set_policies_loaded("NetworkPolicy", 0);
                metrics
            })
            .collect();
        let workload = |i: usize| EndLabels::new("Deployment", &format!("ns-{}", i % 50), &format!("app-{i}"));
        let mut reports = 0;
        let mut report = |node: usize, edge: EdgeLabels| {
            nodes[node].observe_flow(&edge, &delta(100, Some(Outcome::Completed)));
            nodes[node].record_verdict(&edge, crate::judge::VerdictKind::Allowed);
            reports += 1;
        };
        // coredns is workload 1000, on node 0.
        let dns = EndLabels::new("Deployment", "kube-system", "coredns");
        for i in 0..1000 {
            let tcp =
                |dst: EndLabels, reporter| EdgeLabels { src: workload(i), dst, protocol: Arc::from("tcp"), reporter };
            for peer in 1..=3 {
                let j = (i + peer * 7) % 1000;
                report(i % NODES, tcp(workload(j), Reporter::Src));
                report(j % NODES, tcp(workload(j), Reporter::Dst));
            }
            for reporter in [Reporter::Src, Reporter::Dst] {
                let node = if reporter == Reporter::Src { i % NODES } else { 0 };
                report(node, EdgeLabels { src: workload(i), dst: dns.clone(), protocol: Arc::from("udp"), reporter });
            }
            if i % 5 == 0 {
                report(i % NODES, tcp(EndLabels::world(), Reporter::Src));
            }
        }
        assert_eq!(reports, 8200);
        let edge_families = [
            "flow_observer_edge_bytes_total",
            "flow_observer_edge_packets_total",
            "flow_observer_edge_flows_total",
            "flow_observer_verdicts_total",
        ];
        let (mut edge_series, mut other_series, mut busiest) = (0, 0, 0);
        for node in &nodes {
            let text = node.encode();
            assert!(
                !text.contains(&format!("=\"{OVERFLOW}\"")),
                "10,000 series per family is room enough for one node"
            );
            let all = text.lines().filter(|line| !line.starts_with('#')).count();
            let edges: usize = edge_families.iter().map(|name| samples(&text, name).len()).sum();
            edge_series += edges;
            other_series += all - edges;
            busiest = busiest.max(all);
        }
        assert_eq!(edge_series, 8200 * 6);
        // Per node: build info, 17 capture series, 12 dropped-record series
        // (capture, enrich, judge, export × start, update, end), the judge's
        // untracked flows, 9 bounded families × 3 accounting series (series,
        // overflow, removed), 2 loaded gauges, the invalid objects gauge, the
        // rollouts counter, 3 conntrack lookup results and 3 Service backend
        // sources.
        assert_eq!(other_series, NODES * 68);
        // Node 0 also runs coredns: its 50 workloads' 150 calls out, 150 in,
        // 50 DNS and 50 internet edges, plus 1,000 DNS edges in.
        assert_eq!(busiest, 68 + (150 + 150 + 50 + 50 + 1000) * 6);
    }
}
