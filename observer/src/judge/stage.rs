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
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use kube::runtime::reflector;
use tokio::sync::{Notify, mpsc, watch};

use prometheus_client::metrics::counter::Counter;

use super::{Delivery, FlowVerdict, Judge, JudgeInput, VerdictKind, delivery::Proof};
use crate::{
    FastMap,
    anomaly::{EdgeHandle, EdgeKey, Spike, SpikeDetector},
    capture::CaptureHealth,
    config::ObserverConfig,
    findings::{CoverageTracker, EntryHandle, Evidence, Finding, FindingsLog, FindingsWriter, Workload},
    flow::{FlowRecord, LocalEnd},
    intent::{EndKind, FlowEnd, FlowIntent, IntentIndex, LoadedIntents, Tiers},
    inventory::{Endpoint, EndpointKind, Inventory, Snapshot},
    metrics::{FindingLabels, Metrics, WorkloadLabels, bounded::Series, flows::EdgeOf},
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
    /// Verdicts and findings of pairs of ends, for the flows judged alike.
    pairs: FastMap<PairKey, Pair>,
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
            pairs: FastMap::default(),
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
        self.pairs.clear();
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
            metrics.record_finding(&finding_labels(&finding));
        }
        self.findings.record(finding, at);
    }

    /// Judges every enriched record of a batch in place (what [`JudgeStage::run`]
    /// does with each batch before passing it on); public so the pipeline
    /// benchmark drives the real stage without a runtime.
    pub fn judge_batch(&mut self, batch: &mut [FlowRecord]) {
        let snapshot = Arc::clone(&self.snapshot);
        for record in batch.iter_mut() {
            let Some(dst_end) = record.dst.endpoint.as_ref().filter(|_| record.src.endpoint.is_some()) else {
                continue;
            };
            // The initiator's node counts the connection; the receiver's
            // record of the same flow is judged but not counted again.
            let counted = record.local == LocalEnd::Src;
            let new_flow = record.progress.first && counted;
            let proof = Proof::of(record.local, dst_end.kind == EndpointKind::Pod, record.state, record.to_src);
            let key = PairKey::of(record);
            let reused = key.as_ref().and_then(|key| self.reuse(key, proof, new_flow, record));
            let Some(verdict) = reused.or_else(|| self.judge_anew(&snapshot, record, key, proof, new_flow)) else {
                continue;
            };
            if counted {
                let delta = record.progress.new_to_dst.bytes + record.progress.new_to_src.bytes;
                let (now, new) = (record.time, u64::from(new_flow));
                let spike = match key.as_ref().and_then(|key| self.pairs.get_mut(key)) {
                    Some(pair) => self.spikes.observe_held(&mut pair.spike, &pair.edge, now, new, delta),
                    None => flow_ends(&snapshot, record)
                        .and_then(|(src, dst)| self.spikes.observe(&EdgeKey::between(&src, &dst), now, new, delta)),
                };
                if let Some(spike) = spike {
                    self.report_spike(&snapshot, record, &spike, &verdict);
                }
            }
            record.verdict = Some(verdict);
        }
    }

    /// The verdict a flow judged alike before got, counted and its finding
    /// recorded again with this record's evidence; `None` when there is none
    /// to reuse (a new pair of ends, new evidence, or a new connection that
    /// counts against a rate limit).
    fn reuse(&mut self, key: &PairKey, proof: Proof, new_flow: bool, record: &FlowRecord) -> Option<Arc<FlowVerdict>> {
        let pair = self.pairs.get_mut(key)?;
        if new_flow && pair.rate_limited {
            return None;
        }
        let outcome = pair.outcomes[proof as usize].as_mut()?;
        self.judge.count(outcome.kind, outcome.intent_breach);
        if let Some(finding) = &mut outcome.finding {
            let evidence = Evidence {
                state: Some(record.state),
                delivery: Some(outcome.delivery),
                to_dst: Some(record.to_dst),
                to_src: Some(record.to_src),
                ..Evidence::default()
            };
            if let Some(metrics) = &self.setup.metrics {
                metrics.count_finding(&mut finding.series, || finding_labels(&finding.finding));
            }
            self.findings.record_held(&mut finding.entry, &finding.finding, evidence, record.time);
        }
        Some(Arc::clone(&outcome.verdict))
    }

    /// Judges a flow from its ends, records its finding, and keeps both for
    /// the flows of the same pair of ends when they may be reused.
    fn judge_anew(
        &mut self,
        snapshot: &Snapshot,
        record: &FlowRecord,
        key: Option<PairKey>,
        proof: Proof,
        new_flow: bool,
    ) -> Option<Arc<FlowVerdict>> {
        let (src, dst) = flow_ends(snapshot, record)?;
        let input = JudgeInput::from_record(record, src, dst, new_flow);
        let verdict = Arc::new(match dst.kind {
            // Its backend unknown: judged at each ready backend.
            EndKind::Service => {
                let backends = service_backends(snapshot, record);
                let ends = backend_ends(snapshot, &backends);
                self.judge.flow_to_backends(&input, &ends)
            }
            _ => self.judge.flow(&input),
        });
        let finding = Finding::from_flow(&verdict, &input).map(Arc::new);
        let (mut series, mut entry) = (None, None);
        if let Some(finding) = &finding {
            if let Some(metrics) = &self.setup.metrics {
                metrics.count_finding(&mut series, || finding_labels(finding));
            }
            self.findings.record_held(&mut entry, finding, finding.evidence.clone(), record.time);
        }
        let Some(key) = key else { return Some(verdict) };
        if self.pairs.len() >= MAX_PAIRS && !self.pairs.contains_key(&key) {
            self.pairs.clear();
        }
        let intents = self.judge.intents();
        let pair = self.pairs.entry(key).or_insert_with(|| Pair {
            _ends: [&record.src, &record.dst].map(|peer| peer.endpoint.clone()),
            rate_limited: src
                .pod
                .filter(|_| src.kind == EndKind::Pod)
                .is_some_and(|pod| !intents.rate_limits(pod).is_empty()),
            edge: EdgeKey::between(&src, &dst),
            spike: None,
            outcomes: Default::default(),
        });
        if !(new_flow && pair.rate_limited) {
            let finding = finding.map(|finding| SharedFinding { finding, series, entry });
            pair.outcomes[proof as usize] = Some(Outcome::new(Arc::clone(&verdict), finding));
        }
        Some(verdict)
    }

    /// Records the finding of a spike a record set off.
    fn report_spike(&mut self, snapshot: &Snapshot, record: &FlowRecord, spike: &Spike, verdict: &FlowVerdict) {
        let Some((src, dst)) = flow_ends(snapshot, record) else { return };
        let finding = Finding::spike(spike, &src, &dst, (verdict.src_tier.clone(), verdict.dst_tier.clone()));
        if let Some(metrics) = &self.setup.metrics {
            metrics.record_spike(&EdgeOf::new(metrics.allowlist().clone()).edge(record));
        }
        self.record_finding(finding, record.time);
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

/// The labels a finding is counted under.
fn finding_labels(finding: &Finding) -> FindingLabels {
    let kind = serde_json::to_value(finding.kind).ok();
    let source = &finding.source;
    FindingLabels::new(
        kind.as_ref().and_then(serde_json::Value::as_str).unwrap_or("unknown"),
        source.tier.as_ref().map_or("", |tier| tier.as_str()),
        source.namespace.as_deref().unwrap_or(""),
        source.workload.as_ref().map_or("", |workload| workload.name.as_str()),
    )
}

/// Both ends of a record as the judge sees them, with their pods from
/// `snapshot`; `None` unless enrichment resolved both. A destination that
/// enrichment resolved to a Service's backend is that backend, at its own
/// address and port.
fn flow_ends<'a>(snapshot: &'a Snapshot, record: &'a FlowRecord) -> Option<(FlowEnd<'a>, FlowEnd<'a>)> {
    let (Some(src_end), Some(dst_end)) = (&record.src.endpoint, &record.dst.endpoint) else { return None };
    let src_pod = src_end.uid.as_deref().and_then(|uid| snapshot.pod(uid));
    let dst_pod = dst_end.uid.as_deref().and_then(|uid| snapshot.pod(uid));
    let src = FlowEnd::from_endpoint(src_end, src_pod, record.src.ip, record.src.port);
    let (dst_ip, dst_port) = match &record.dst.backend {
        Some(backend) => (backend.ip, Some(backend.port)),
        None => (record.dst.ip, record.dst.port),
    };
    // The names the source pod resolved for the destination, for `fqdn` peers.
    let dst = FlowEnd::from_endpoint(dst_end, dst_pod, dst_ip, dst_port).with_dns(record.dst.dns.as_ref());
    Some((src, dst))
}

/// The ready backends of the Service a record's destination is, with the
/// endpoint each resolves to at the flow's start.
fn service_backends(snapshot: &Snapshot, record: &FlowRecord) -> Vec<(Endpoint, SocketAddr)> {
    let Some(port) = record.dst.port else { return Vec::new() };
    let Some(service) = snapshot.service_backends(record.dst.ip, port, record.protocol.0) else { return Vec::new() };
    service
        .backends
        .iter()
        .map(|backend| (snapshot.resolve_remote(backend.ip(), record.first_seen), *backend))
        .collect()
}

/// The backends as ends to judge, with their pods from `snapshot`.
fn backend_ends<'a>(snapshot: &'a Snapshot, backends: &'a [(Endpoint, SocketAddr)]) -> Vec<FlowEnd<'a>> {
    backends
        .iter()
        .map(|(endpoint, at)| {
            let pod = endpoint.uid.as_deref().and_then(|uid| snapshot.pod(uid));
            FlowEnd::from_endpoint(endpoint, pod, at.ip(), Some(at.port()))
        })
        .collect()
}

/// Pairs of ends whose verdicts are kept at most; past it they are forgotten
/// and made again.
const MAX_PAIRS: usize = 16_384;

/// What makes flows judged alike: the same two resolved ends (by identity,
/// within one inventory snapshot), addresses, destination port and protocol.
/// The source port is left out: no verdict, finding or edge depends on it.
/// Flows whose destination carries DNS names are not keyed (intents match
/// the names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PairKey {
    src: usize,
    dst: usize,
    src_ip: IpAddr,
    dst_ip: IpAddr,
    dst_port: Option<u16>,
    protocol: u8,
    /// Where a Service flow went, when enrichment knows.
    backend: Option<SocketAddr>,
}

impl PairKey {
    fn of(record: &FlowRecord) -> Option<Self> {
        let (Some(src), Some(dst)) = (&record.src.endpoint, &record.dst.endpoint) else { return None };
        if record.dst.dns.is_some() {
            return None;
        }
        Some(Self {
            src: src.identity(),
            dst: dst.identity(),
            src_ip: record.src.ip,
            dst_ip: record.dst.ip,
            dst_port: record.dst.port,
            protocol: record.protocol.0,
            backend: record.dst.backend.as_ref().map(|backend| SocketAddr::new(backend.ip, backend.port)),
        })
    }
}

/// What the stage keeps for a pair of ends until policies, intents or the
/// inventory change.
struct Pair {
    /// Held so that the identities in the key stay theirs.
    _ends: [Option<Endpoint>; 2],
    /// Whether the source is under an intent's new-connection rate limit:
    /// its new connections are judged anew.
    rate_limited: bool,
    /// The edge the spike detector watches.
    edge: EdgeKey,
    /// Where the spike detector keeps the edge, once it has.
    spike: Option<EdgeHandle>,
    /// By delivery proof.
    outcomes: [Option<Outcome>; Proof::KINDS],
}

/// A verdict kept for reuse, with the finding it makes.
struct Outcome {
    verdict: Arc<FlowVerdict>,
    /// What each reuse reads of the verdict, kept beside it: the verdict's
    /// own fields lie on cache lines a reuse would otherwise load.
    kind: VerdictKind,
    intent_breach: bool,
    delivery: Delivery,
    finding: Option<SharedFinding>,
}

impl Outcome {
    fn new(verdict: Arc<FlowVerdict>, finding: Option<SharedFinding>) -> Self {
        let (kind, intent_breach, delivery) = (verdict.verdict, verdict.intent.is_some(), verdict.delivery);
        Self { verdict, kind, intent_breach, delivery, finding }
    }
}

/// A finding shared by its repeats, with the handles of its metric series
/// and of its entry in the findings log.
struct SharedFinding {
    finding: Arc<Finding>,
    series: Option<Series<Counter>>,
    entry: Option<EntryHandle>,
}
