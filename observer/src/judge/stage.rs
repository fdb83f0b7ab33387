//! The judge stage of the daemon.
//!
//! In: enriched flow records, inventory snapshots and FlowIntents (policies
//! and intents are recompiled when either changes), and capture's health
//! counters (for coverage). Out: the same records, each with its verdict, on a
//! bounded channel (a full one drops the batch and counts it); findings (flows
//! that break policy or intent, unprotected AI-tier pods, spikes)
//! deduplicated and written to the findings log with the coverage they were
//! observed under.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use kube::runtime::reflector;
use tokio::sync::{Notify, mpsc, watch};

use super::{Judge, JudgeInput};
use crate::{
    anomaly::{EdgeKey, SpikeDetector},
    capture::CaptureHealth,
    config::ObserverConfig,
    findings::{CoverageTracker, Finding, FindingsLog, FindingsWriter, Workload},
    flow::{FlowRecord, LocalEnd, RecordEvent},
    intent::{FlowEnd, FlowIntent, IntentIndex, LoadedIntents, Tiers},
    inventory::{Inventory, Snapshot},
    metrics::{FindingLabels, Metrics, WorkloadLabels, flows::EdgeOf},
    policy::PolicyEngine,
};

/// Where FlowIntents come from.
#[derive(Clone)]
pub enum IntentSource {
    /// The standalone inventory's manifests: the FlowIntents it loaded with
    /// everything else ([`Inventory::intents`]), current with each reload.
    Inventory,
    /// A watch of the cluster's FlowIntents; `changed` is notified on every change.
    Cluster {
        /// The reflector store.
        store: reflector::Store<FlowIntent>,
        /// Notified when the store changes.
        changed: Arc<Notify>,
    },
}

/// What the stage needs.
pub struct StageSetup {
    /// The inventory (snapshots for policies, pods and namespaces).
    pub inventory: Inventory,
    /// Where intents come from.
    pub intents: IntentSource,
    /// The configuration file's settings.
    pub config: ObserverConfig,
    /// Where findings are written, if anywhere.
    pub findings_log: Option<PathBuf>,
    /// Only pods on this node are checked for protection (`None`: every pod,
    /// as in standalone mode).
    pub node: Option<String>,
    /// Capture's counters, for coverage.
    pub capture_health: Arc<CaptureHealth>,
    /// Where findings, spikes, unprotected pods and loaded counts are counted.
    pub metrics: Option<Metrics>,
}

/// Counters of the stage.
#[derive(Debug, Default)]
pub struct JudgeHealth {
    /// Records judged.
    pub records: AtomicU64,
    /// Records dropped because export was full.
    pub records_dropped: AtomicU64,
    /// Policies compiled at the last rebuild.
    pub policies: AtomicU64,
    /// Intents compiled at the last rebuild.
    pub intents: AtomicU64,
    /// Policies and intents refused at the last rebuild.
    pub invalid: AtomicU64,
    /// Findings written.
    pub findings_written: AtomicU64,
}

/// Flows whose first record was judged, with the bytes seen so far; past this
/// many the table is cleared (and counted) rather than grown.
const MAX_TRACKED_FLOWS: usize = 262_144;

/// A flow's identity across its records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FlowId {
    cgroup: u64,
    src: (IpAddr, Option<u16>),
    dst: (IpAddr, Option<u16>),
    protocol: u8,
    first_seen: SystemTime,
}

impl FlowId {
    fn of(record: &FlowRecord) -> Self {
        Self {
            cgroup: record.cgroup.id,
            src: (record.src.ip, record.src.port),
            dst: (record.dst.ip, record.dst.port),
            protocol: record.protocol.0,
            first_seen: record.first_seen,
        }
    }
}

/// The running stage.
pub struct JudgeStage {
    setup: StageSetup,
    tiers: Tiers,
    judge: Judge,
    snapshot: Arc<Snapshot>,
    spikes: SpikeDetector,
    findings: FindingsLog,
    writer: Option<FindingsWriter>,
    coverage: CoverageTracker,
    lost_seen: u64,
    flows: HashMap<FlowId, u64>,
    health: Arc<JudgeHealth>,
}

/// Why the stage could not start.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The tier configuration is invalid.
    #[error("invalid tier configuration")]
    Tiers(#[source] crate::intent::TierConfigError),
    /// The findings log cannot be opened.
    #[error(transparent)]
    Findings(#[from] crate::findings::FindingsError),
}

impl JudgeStage {
    /// Compiles the current policies and intents.
    pub fn new(setup: StageSetup) -> Result<Self, StageError> {
        let tiers = Tiers::new(&setup.config.intents.tiers).map_err(StageError::Tiers)?;
        let writer = setup.findings_log.as_deref().map(FindingsWriter::open).transpose()?;
        let flush = Duration::from_secs(setup.config.findings.flush_interval_seconds.max(1));
        let judge = Judge::new(Arc::default(), Arc::default(), setup.config.judge.clone());
        let mut stage = Self {
            tiers,
            judge,
            snapshot: setup.inventory.snapshot(),
            spikes: SpikeDetector::new(setup.config.spikes.clone()),
            findings: FindingsLog::new(&setup.config.findings),
            writer,
            coverage: CoverageTracker::new(flush, 1024),
            lost_seen: 0,
            flows: HashMap::new(),
            health: Arc::new(JudgeHealth::default()),
            setup,
        };
        stage.rebuild();
        Ok(stage)
    }

    /// The stage's counters.
    pub fn health(&self) -> Arc<JudgeHealth> {
        Arc::clone(&self.health)
    }

    /// Runs until `input` closes, then flushes the findings.
    pub async fn run(mut self, mut input: mpsc::Receiver<Vec<FlowRecord>>, output: mpsc::Sender<Vec<FlowRecord>>) {
        let mut generations: watch::Receiver<u64> = self.setup.inventory.subscribe();
        let intents_changed = match &self.setup.intents {
            IntentSource::Cluster { changed, .. } => Arc::clone(changed),
            IntentSource::Inventory => Arc::new(Notify::new()),
        };
        let mut tick =
            tokio::time::interval(Duration::from_secs(self.setup.config.findings.flush_interval_seconds.max(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                batch = input.recv() => {
                    let Some(mut batch) = batch else { break };
                    self.judge_batch(&mut batch);
                    let count = batch.len() as u64;
                    match output.try_send(batch) {
                        Ok(()) => { self.health.records.fetch_add(count, Ordering::Relaxed); }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            self.health.records_dropped.fetch_add(count, Ordering::Relaxed);
                            tracing::warn!(records = count, "export is not keeping up: judged records dropped");
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => break,
                    }
                }
                changed = generations.changed() => {
                    if changed.is_ok() { self.rebuild(); }
                }
                () = intents_changed.notified() => self.rebuild(),
                _ = tick.tick() => self.flush_findings(),
            }
        }
        self.flush_findings();
    }

    fn intents(&self) -> Arc<LoadedIntents> {
        match &self.setup.intents {
            IntentSource::Inventory => self.setup.inventory.intents(),
            IntentSource::Cluster { store, .. } => Arc::new(LoadedIntents {
                intents: store.state().iter().map(|intent| (**intent).clone()).collect(),
                origins: Vec::new(),
            }),
        }
    }

    /// Recompiles policies and intents from the latest snapshot, and checks
    /// which AI-tier pods policies leave unprotected.
    fn rebuild(&mut self) {
        let snapshot = self.setup.inventory.snapshot();
        let namespaces: Vec<_> = snapshot.namespaces().cloned().collect();
        let policies: Vec<_> = snapshot.network_policies().cloned().collect();
        let (mut engine, policy_errors) = PolicyEngine::compile(&policies, &namespaces);
        // Records are judged with pods of this same snapshot (`self.snapshot`).
        engine.index_pods(snapshot.pods_shared().cloned());
        for error in &policy_errors {
            tracing::warn!(%error, "NetworkPolicy left out");
        }
        let loaded = self.intents();
        let (index, intent_errors) =
            IntentIndex::compile(&loaded.intents, &namespaces, self.tiers.clone(), &self.setup.config.intents);
        for error in &intent_errors {
            match loaded.origin(error) {
                Some(origin) => tracing::warn!(%origin, %error, "FlowIntent left out"),
                None => tracing::warn!(%error, "FlowIntent left out"),
            }
        }
        if let Some(metrics) = &self.setup.metrics {
            metrics.set_policies_loaded(engine.len());
            metrics.set_intents_loaded(index.len());
        }
        self.health.policies.store(engine.len() as u64, Ordering::Relaxed);
        self.health.intents.store(index.len() as u64, Ordering::Relaxed);
        self.health.invalid.store((policy_errors.len() + intent_errors.len()) as u64, Ordering::Relaxed);
        tracing::info!(
            generation = snapshot.generation(),
            policies = engine.len(),
            intents = index.len(),
            invalid = policy_errors.len() + intent_errors.len(),
            "policies and intents compiled"
        );
        self.judge.update(Arc::new(engine), Arc::new(index));
        self.snapshot = snapshot;
        self.check_protection();
    }

    fn check_protection(&mut self) {
        let now = SystemTime::now();
        let resolver = self.setup.inventory.resolver();
        let node = self.setup.node.clone();
        let snapshot = Arc::clone(&self.snapshot);
        let mut unprotected_workloads: HashMap<WorkloadLabels, u64> = HashMap::new();
        for pod in snapshot.pods().filter(|pod| node.is_none() || pod.node_name == node) {
            let Some(unprotected) = self.judge.unprotected(pod) else { continue };
            let workload = pod.ips.first().and_then(|ip| {
                let endpoint = resolver.resolve_remote(*ip, now);
                endpoint
                    .workload
                    .as_ref()
                    .map(|workload| Workload { kind: workload.kind.clone(), name: workload.name.clone() })
            });
            let (kind, name) =
                workload.as_ref().map_or(("Pod", pod.name.as_str()), |w| (w.kind.as_str(), w.name.as_str()));
            *unprotected_workloads
                .entry(WorkloadLabels::new(kind, &pod.namespace, name, unprotected.tier.as_str()))
                .or_default() += 1;
            self.record_finding(Finding::unprotected(&unprotected, workload), now);
        }
        if let Some(metrics) = &self.setup.metrics {
            let workloads: Vec<_> = unprotected_workloads.into_iter().collect();
            metrics.set_unprotected(&workloads);
        }
    }

    fn record_finding(&mut self, finding: Finding, at: SystemTime) {
        if let Some(metrics) = &self.setup.metrics {
            let kind = serde_json::to_value(finding.kind).ok();
            let source = &finding.source;
            metrics.record_finding(&FindingLabels::new(
                kind.as_ref().and_then(serde_json::Value::as_str).unwrap_or("unknown"),
                source.tier.as_ref().map_or("", |tier| tier.as_str()),
                source.namespace.as_deref().unwrap_or(""),
                source.workload.as_ref().map_or("", |workload| workload.name.as_str()),
            ));
        }
        self.findings.record(finding, at);
    }

    /// Judges every enriched record of a batch in place (what [`JudgeStage::run`]
    /// does with each batch before passing it on); public so the pipeline
    /// benchmark drives the real stage without a runtime.
    pub fn judge_batch(&mut self, batch: &mut [FlowRecord]) {
        let snapshot = Arc::clone(&self.snapshot);
        for record in batch.iter_mut() {
            let (Some(src_end), Some(dst_end)) = (record.src.endpoint.clone(), record.dst.endpoint.clone()) else {
                continue;
            };
            let src_pod = src_end.uid.as_deref().and_then(|uid| snapshot.pod(uid));
            let dst_pod = dst_end.uid.as_deref().and_then(|uid| snapshot.pod(uid));
            let src = FlowEnd::from_endpoint(&src_end, src_pod, record.src.ip, record.src.port);
            // The names the source pod resolved for the destination, for `fqdn` peers.
            let dst_dns = record.dst.dns.clone();
            let dst =
                FlowEnd::from_endpoint(&dst_end, dst_pod, record.dst.ip, record.dst.port).with_dns(dst_dns.as_ref());
            let bytes = record.to_dst.bytes + record.to_src.bytes;
            let id = FlowId::of(record);
            let previous = match record.event {
                RecordEvent::Start | RecordEvent::Update => self.track(id, bytes),
                RecordEvent::End => self.flows.remove(&id),
            };
            // The initiator's node counts the connection; the receiver's
            // record of the same flow is judged but not counted again.
            let counted = record.local == LocalEnd::Src;
            let new_flow = previous.is_none() && counted;
            let input = JudgeInput::from_record(record, src, dst, new_flow);
            let verdict = self.judge.flow(&input);
            let now = record.time;
            if let Some(finding) = Finding::from_flow(&verdict, &input) {
                self.record_finding(finding, now);
            }
            if counted {
                let delta = bytes.saturating_sub(previous.unwrap_or(0));
                if let Some(spike) = self.spikes.observe(&EdgeKey::between(&src, &dst), now, u64::from(new_flow), delta)
                {
                    let finding =
                        Finding::spike(&spike, &src, &dst, (verdict.src_tier.clone(), verdict.dst_tier.clone()));
                    if let Some(metrics) = &self.setup.metrics {
                        metrics.record_spike(&EdgeOf::new(metrics.allowlist().clone()).edge(record));
                    }
                    self.record_finding(finding, now);
                }
            }
            record.verdict = Some(verdict);
        }
    }

    /// Remembers a flow's bytes so far; returns what was remembered before.
    fn track(&mut self, id: FlowId, bytes: u64) -> Option<u64> {
        if self.flows.len() >= MAX_TRACKED_FLOWS && !self.flows.contains_key(&id) {
            tracing::warn!(flows = self.flows.len(), "too many open flows to track: forgetting them");
            self.flows.clear();
        }
        self.flows.insert(id, bytes)
    }

    fn flush_findings(&mut self) {
        let now = SystemTime::now();
        let health = &self.setup.capture_health;
        let lost = [&health.events_lost, &health.flow_inserts_failed, &health.flows_evicted, &health.records_dropped]
            .iter()
            .map(|counter| counter.load(Ordering::Relaxed))
            .sum::<u64>();
        self.coverage.record(now, lost.saturating_sub(self.lost_seen));
        self.lost_seen = lost;
        let Some(writer) = &mut self.writer else { return };
        match writer.flush(&mut self.findings, now, &self.coverage) {
            Ok(lines) => {
                self.health.findings_written.fetch_add(lines as u64, Ordering::Relaxed);
            }
            Err(error) => tracing::error!(%error, "findings not written; will retry"),
        }
    }
}
