//! The judge stage of the daemon.
//!
//! In: enriched flow records, inventory snapshots (with the NetworkPolicies,
//! ClusterNetworkPolicies and FlowIntents they hold, recompiled at each new
//! snapshot, in both inventory modes alike), and capture's health counters
//! and every stage's drops (for coverage, from the daemon's [`Health`]). Out:
//! the same records, each with its verdict (the pipeline's judge stage,
//! [`crate::pipeline`], drives it and hands them on); findings (flows that
//! break policy or intent, unprotected AI-tier pods, spikes)
//! deduplicated and written to the findings log with the coverage they were
//! observed under.
//!
//! A flow keeps the verdict of the policies in effect when its first record
//! was judged: after a policy change, each open flow is checked once, at its
//! next record, against the new policies (lazily: the record brings the ends
//! and evidence a re-judgement needs, so nothing is kept per flow but the
//! outcome it started under, and a flow with no further record costs
//! nothing). When they decide it otherwise, its records carry `verdict_now`
//! beside the verdict it keeps, and a connection the new policies deny is an
//! `outlived-policy` finding, not an enforcement gap. A flow whose first
//! record the judge never saw (it started before the observer) is judged
//! under the policies in effect at its first record judged.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::sync::watch;

use prometheus_client::metrics::counter::Counter;

use super::{
    Delivery, FlowVerdict, Judge, JudgeInput, VerdictKind,
    delivery::Proof,
    open::{OpenFlows, Outlived, Policy, same_decision},
    outcome::Decision,
};
use crate::{
    FastMap,
    ai::{Catalog, shadow::ShadowAi},
    anomaly::{self, EdgeHandle, EdgeKey, Spike, SpikeDetector},
    config::ObserverConfig,
    findings::{CoverageTracker, EntryHandle, Evidence, Finding, FindingsLog, FindingsWriter},
    flow::{FlowRecord, LocalEnd, RecordEvent},
    health::Health,
    intent::{FlowEnd, IntentIndex, Tiers},
    inventory::{Endpoint, EndpointKind, Inventory, Snapshot},
    metrics::{FindingLabels, Metrics, WorkloadLabels, bounded::Series, flows::EdgeOf},
    policy::PolicyEngine,
};

/// What the stage needs.
pub struct StageSetup {
    /// The inventory (snapshots for policies, intents, pods and namespaces).
    pub inventory: Inventory,
    /// The configuration file's settings.
    pub config: ObserverConfig,
    /// Where findings are written, if anywhere (opened at start).
    pub findings_log: Option<FindingsWriter>,
    /// Only pods on this node are checked for protection (`None`: every pod,
    /// as in standalone mode).
    pub node: Option<String>,
    /// The daemon's health: every loss so far, for coverage; where the
    /// flows the judge cannot track are counted.
    pub health: Health,
    /// Where findings, spikes, unprotected pods and loaded counts are counted.
    pub metrics: Option<Metrics>,
    /// The edge labels spikes are counted under: the meter's, so that both
    /// name an edge alike (a named destination by its domain).
    pub edges: EdgeOf,
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
    /// Counts up with every recompilation of policies and intents.
    generation: u64,
    /// Open flows, with the policy outcome each started under.
    open: OpenFlows,
    /// Provider egress and `shadow-ai` findings.
    shadow: ShadowAi,
    /// The AI endpoint catalog `provider` peers of intents name.
    catalog: Catalog,
    /// The AI-tier pods no policy isolates, by uid, with what was counted of
    /// each: a pod is counted once per change of its state, not at every
    /// rebuild.
    unprotected: FastMap<String, UnprotectedState>,
}

/// What makes an unprotected pod's finding another one.
#[derive(Clone, Debug, PartialEq, Eq)]
struct UnprotectedState {
    tier: String,
    ingress_isolated: bool,
    egress_isolated: bool,
}

/// Why the stage could not start.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The tier configuration is invalid.
    #[error("invalid tier configuration")]
    Tiers(#[source] crate::intent::TierConfigError),
    /// The AI endpoint catalog is invalid.
    #[error("invalid AI endpoint catalog")]
    Catalog(#[source] crate::ai::CatalogError),
    /// The AI watch's configuration is invalid.
    #[error("invalid AI configuration")]
    Ai(#[source] crate::ai::shadow::ShadowError),
}

impl JudgeStage {
    /// Compiles the current policies and intents.
    pub fn new(mut setup: StageSetup) -> Result<Self, StageError> {
        let tiers = Tiers::new(&setup.config.intents.tiers).map_err(StageError::Tiers)?;
        let writer = setup.findings_log.take();
        let flush = Duration::from_secs(setup.config.findings.flush_interval_seconds.max(1));
        let judge =
            Judge::new(Arc::default(), Arc::default(), setup.config.judge.clone()).on_node(setup.node.as_deref());
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
            generation: 0,
            open: OpenFlows::default(),
            unprotected: FastMap::default(),
            shadow: ShadowAi::new(&setup.config.ai).map_err(StageError::Ai)?,
            catalog: Catalog::build(&setup.config.ai.catalog).map_err(StageError::Catalog)?,
            setup,
        };
        stage.rebuild();
        Ok(stage)
    }

    /// What wakes the stage between batches: inventory generations (FlowIntents
    /// and ClusterNetworkPolicies come with the snapshots), and the findings'
    /// flush interval.
    pub(crate) fn wakeups(&self) -> (watch::Receiver<u64>, Duration) {
        let flush = Duration::from_secs(self.setup.config.findings.flush_interval_seconds.max(1));
        (self.setup.inventory.subscribe(), flush)
    }

    /// Flushes the findings one last time and closes their log.
    pub(crate) fn finish(&mut self) {
        self.flush_findings();
        if let Some(writer) = self.writer.take() {
            writer.close();
        }
    }

    /// Recompiles policies and intents from the latest snapshot, and checks
    /// which AI-tier pods policies leave unprotected.
    pub(crate) fn rebuild(&mut self) {
        let snapshot = self.setup.inventory.snapshot();
        let namespaces: Vec<_> = snapshot.namespaces().cloned().collect();
        let policies: Vec<_> = snapshot.network_policies().cloned().collect();
        let (engine, policy_errors) = PolicyEngine::compile(&policies, &namespaces);
        let loaded = snapshot.intents();
        let nodes: Vec<_> = snapshot.nodes().cloned().collect();
        let (mut engine, cluster_errors) = engine.with_cluster_policies(&loaded.cluster_policies, &nodes);
        // Records are judged with pods of this same snapshot (`self.snapshot`).
        engine.index_pods(snapshot.pods_shared().cloned());
        for error in &policy_errors {
            tracing::warn!(%error, "NetworkPolicy left out");
        }
        for error in &cluster_errors {
            match loaded.cluster_origins.get(error.index) {
                Some(origin) => tracing::warn!(%origin, %error, "ClusterNetworkPolicy left out"),
                None => tracing::warn!(%error, "ClusterNetworkPolicy left out"),
            }
        }
        let (index, intent_errors) = IntentIndex::compile_with_catalog(
            &loaded.intents,
            &namespaces,
            self.tiers.clone(),
            &self.setup.config.intents,
            &self.catalog,
        );
        for error in &intent_errors {
            match loaded.origin(error.index) {
                Some(origin) => tracing::warn!(%origin, %error, "FlowIntent left out"),
                None => tracing::warn!(%error, "FlowIntent left out"),
            }
        }
        if let Some(metrics) = &self.setup.metrics {
            metrics.set_rollouts(snapshot.rollouts_seen());
            metrics.set_policies_loaded("NetworkPolicy", engine.len());
            metrics.set_policies_loaded("ClusterNetworkPolicy", engine.cluster_len());
            metrics.set_intents_loaded(index.len());
        }
        let invalid = policy_errors.len() + cluster_errors.len() + intent_errors.len();
        if let Some(metrics) = &self.setup.metrics {
            metrics.set_objects_invalid(invalid);
        }
        tracing::info!(
            generation = snapshot.generation(),
            policies = engine.len(),
            cluster_policies = engine.cluster_len(),
            intents = index.len(),
            invalid,
            "policies and intents compiled"
        );
        self.judge.update(Arc::new(engine), Arc::new(index));
        self.snapshot = snapshot;
        self.pairs.clear();
        self.generation += 1;
        self.check_protection();
    }

    fn check_protection(&mut self) {
        let now = SystemTime::now();
        let resolver = self.setup.inventory.resolver();
        let node = self.setup.node.clone();
        let snapshot = Arc::clone(&self.snapshot);
        let mut unprotected_workloads: HashMap<WorkloadLabels, u64> = HashMap::new();
        let mut unprotected_now = FastMap::default();
        for pod in snapshot.pods().filter(|pod| node.is_none() || pod.node_name == node) {
            let Some(unprotected) = self.judge.unprotected(pod) else { continue };
            let workload = pod.ips.first().and_then(|ip| {
                let endpoint = resolver.resolve_remote(*ip, now);
                endpoint.workload.clone()
            });
            let (kind, name) =
                workload.as_ref().map_or(("Pod", pod.name.as_str()), |w| (w.kind.as_str(), w.name.as_str()));
            *unprotected_workloads
                .entry(WorkloadLabels::new(kind, &pod.namespace, name, unprotected.tier.as_str()))
                .or_default() += 1;
            let state = UnprotectedState {
                tier: unprotected.tier.as_str().to_owned(),
                ingress_isolated: unprotected.ingress_isolated,
                egress_isolated: unprotected.egress_isolated,
            };
            // Counted once per pod and change of its state; the findings log
            // still has it in each flush after a rebuild.
            let changed = self.unprotected.get(&unprotected.uid) != Some(&state);
            let finding = Finding::unprotected(&unprotected, workload);
            if changed && let Some(metrics) = &self.setup.metrics {
                metrics.record_finding(&finding_labels(&finding));
            }
            self.findings.record(finding, now);
            unprotected_now.insert(unprotected.uid.clone(), state);
        }
        self.unprotected = unprotected_now;
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
            let id = record.progress.flow;
            let open = match self.open.get_mut(id).filter(|_| id != 0) {
                None => None,
                Some(flow) => Some(flow.generation == self.generation && flow.outlived.is_none()),
            };
            // A flow last checked under other policies, or one they outlived.
            let outlived = match open {
                Some(false) => self.recheck(&snapshot, record, proof),
                _ => None,
            };
            let verdict = match outlived {
                Some((verdict, now)) => {
                    record.verdict_now = Some(now);
                    verdict
                }
                None => {
                    let reused = key.as_ref().and_then(|key| self.reuse(key, proof, new_flow, record));
                    let Some(verdict) = reused.or_else(|| self.judge_anew(&snapshot, record, key, proof, new_flow))
                    else {
                        continue;
                    };
                    if open.is_none() && id != 0 && record.event != RecordEvent::End {
                        self.track(&snapshot, record, key.as_ref());
                    }
                    verdict
                }
            };
            if record.event == RecordEvent::End && id != 0 {
                self.open.remove(id);
            }
            if counted {
                let delta = record.progress.new_to_dst.bytes + record.progress.new_to_src.bytes;
                let (now, new) = (record.time, u64::from(new_flow));
                let spike = match key.as_ref().and_then(|key| self.pairs.get_mut(key)) {
                    Some(pair) => self.spikes.observe_held(&mut pair.spike, &pair.edge, pair.version, now, new, delta),
                    None => flow_ends(&snapshot, record).and_then(|(src, dst)| {
                        let edge = EdgeKey::between(&src, &dst);
                        let version = anomaly::edge_version(&snapshot, &edge);
                        self.spikes.observe_version(&edge, version, now, new, delta)
                    }),
                };
                if let Some(spike) = spike {
                    self.report_spike(&snapshot, record, &spike, &verdict);
                }
                if record.dst.ai.is_some() {
                    self.watch_ai(&snapshot, record, &verdict);
                }
            }
            record.verdict = Some(verdict);
        }
    }

    /// Starts keeping the policy outcome of a flow judged for the first time.
    fn track(&mut self, snapshot: &Snapshot, record: &FlowRecord, key: Option<&PairKey>) {
        let policy = match key.and_then(|key| self.pairs.get(key)) {
            Some(pair) => pair.policy.clone(),
            None => {
                let Some((src, dst)) = flow_ends(snapshot, record) else { return };
                self.judge.policy(&JudgeInput::from_record(record, src, dst, false)).map(Arc::new)
            }
        };
        if !self.open.insert(record.progress.flow, self.generation, policy, record.time, record.progress.first) {
            self.setup.health.set_flows_untracked(self.open.untracked());
        }
    }

    /// Judges a record of an open flow that was last checked under other
    /// policies than the current ones, or that the current ones judge
    /// otherwise than those it started under. `None` when they decide it
    /// alike (it is then judged as any other flow); else the verdict it
    /// keeps and its verdict now, the first time the current policies deny
    /// it with an `outlived-policy` finding.
    fn recheck(
        &mut self,
        snapshot: &Snapshot,
        record: &FlowRecord,
        proof: Proof,
    ) -> Option<(Arc<FlowVerdict>, Arc<FlowVerdict>)> {
        let (src, dst) = flow_ends(snapshot, record)?;
        let input = JudgeInput::from_record(record, src, dst, false);
        let flow = self.open.get_mut(record.progress.flow)?;
        flow.seen = record.time;
        let mut report = false;
        if flow.generation != self.generation {
            flow.generation = self.generation;
            let now: Policy = self.judge.policy(&input).map(Arc::new);
            if same_decision(&flow.start, &now) {
                // The verdict holds: the flow is judged as the new ones would.
                flow.start = now;
                flow.outlived = None;
                return None;
            }
            let changed = flow.outlived.as_ref().is_none_or(|outlived| outlived.now != now);
            report = changed && now.as_ref().is_some_and(|outcome| outcome.decision == Decision::Denied);
            if changed {
                flow.outlived = Some(Box::new(Outlived { now, last: None }));
            }
        }
        let outlived = flow.outlived.as_mut()?;
        let (verdict, now) = match &outlived.last {
            Some((last, verdict, now)) if *last == proof => (Arc::clone(verdict), Arc::clone(now)),
            _ => {
                let rate = self.judge.rate_violation(&input);
                let verdict = Arc::new(self.judge.decide(&input, flow.start.as_deref().cloned(), rate.clone()));
                let now = Arc::new(self.judge.decide(&input, outlived.now.as_deref().cloned(), rate));
                outlived.last = Some((proof, Arc::clone(&verdict), Arc::clone(&now)));
                (verdict, now)
            }
        };
        self.judge.count(verdict.verdict, verdict.intent.is_some());
        if let Some(finding) = Finding::from_flow(&verdict, &input) {
            self.record_finding(finding, record.time);
        }
        if report {
            // One finding per edge and change of the denying policies: the
            // log counts the connections (and their two sockets, when both
            // ends are on this node), the metric the findings.
            let finding = Finding::outlived(&now, &input);
            let labels = finding_labels(&finding);
            if self.findings.record(finding, record.time)
                && let Some(metrics) = &self.setup.metrics
            {
                metrics.record_finding(&labels);
            }
        }
        Some((verdict, now))
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
        let policy = self.judge.policy(&input);
        let verdict = Arc::new(match dst.kind {
            // Its backend unknown: judged at each ready backend.
            EndpointKind::Service => {
                let backends = service_backends(snapshot, record);
                let ends = backend_ends(snapshot, &backends);
                self.judge.flow_to_backends(&input, &ends)
            }
            _ => {
                // Every new connection counts against the rate, whatever else it breaks.
                let rate = self.judge.rate_violation(&input);
                let verdict = self.judge.decide(&input, policy.clone(), rate);
                self.judge.count(verdict.verdict, verdict.intent.is_some());
                verdict
            }
        });
        let policy = policy.map(Arc::new);
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
        let pair = self.pairs.entry(key).or_insert_with(|| {
            let edge = EdgeKey::between(&src, &dst);
            Pair {
                _ends: [&record.src, &record.dst].map(|peer| peer.endpoint.clone()),
                rate_limited: src
                    .pod
                    .filter(|_| src.kind == EndpointKind::Pod)
                    .is_some_and(|pod| !intents.rate_limits(pod).is_empty()),
                version: anomaly::edge_version(snapshot, &edge),
                edge,
                spike: None,
                policy: None,
                outcomes: Default::default(),
            }
        });
        pair.policy = policy;
        if !(new_flow && pair.rate_limited) {
            let finding = finding.map(|finding| SharedFinding { finding, series, entry });
            pair.outcomes[proof as usize] = Some(Outcome::new(Arc::clone(&verdict), finding));
        }
        Some(verdict)
    }

    /// Records the finding of a spike a record set off.
    fn report_spike(&mut self, snapshot: &Snapshot, record: &FlowRecord, spike: &Spike, verdict: &FlowVerdict) {
        let Some((src, dst)) = flow_ends(snapshot, record) else { return };
        let mut finding = Finding::spike(spike, &src, &dst, (verdict.src_tier.clone(), verdict.dst_tier.clone()));
        let within = Duration::from_secs(self.setup.config.spikes.after_rollout_seconds);
        finding.evidence.after_rollout = anomaly::after_rollout(snapshot, &spike.edge, record.time, within);
        if let Some(metrics) = &self.setup.metrics {
            metrics.record_spike(&self.setup.edges.edge(record));
        }
        self.record_finding(finding, record.time);
    }

    /// Hands a record of a flow to an AI provider, on its source's node, to
    /// the AI watch ([`crate::ai::shadow`]): provider egress metrics and the
    /// `shadow-ai` finding, counted once per connection.
    fn watch_ai(&mut self, snapshot: &Snapshot, record: &FlowRecord, verdict: &FlowVerdict) {
        let Some((src, dst)) = flow_ends(snapshot, record) else { return };
        let metrics = self.setup.metrics.as_ref();
        let Some(report) = self.shadow.observe(record, &src, &dst, verdict.src_tier.as_ref(), metrics) else { return };
        if report.new_connection {
            self.record_finding(report.finding, record.time);
        } else {
            self.findings.refresh(report.finding, record.time);
        }
    }

    /// Writes the findings due, with the coverage of their span: whatever
    /// any stage lost since the last flush makes it incomplete.
    pub(crate) fn flush_findings(&mut self) {
        let now = SystemTime::now();
        let lost = self.setup.health.lost();
        self.coverage.record(now, lost.saturating_sub(self.lost_seen));
        self.lost_seen = lost;
        let Some(writer) = &mut self.writer else { return };
        if let Err(error) = writer.flush(&mut self.findings, now, &self.coverage) {
            tracing::error!(%error, "findings not written");
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
    let dst = FlowEnd::from_endpoint(dst_end, dst_pod, dst_ip, dst_port)
        .with_dns(record.dst.dns.as_ref())
        .with_ai(record.dst.ai.as_ref());
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
    /// The version of its ends (the revisions their workloads run), which
    /// the spike detector keeps baselines by.
    version: u64,
    /// Where the spike detector keeps the edge, once it has.
    spike: Option<EdgeHandle>,
    /// What the policies say of these ends, whatever the evidence.
    policy: Policy,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        flow::{Progress, Traffic},
        inventory::InventoryConfig,
        metrics::MetricsConfig,
        testing::{ManifestDir, tcp_record},
    };

    const PODS: &str = "apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, uid: 00000000-0000-4000-8000-00000000000a, labels: {app: client}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, uid: 00000000-0000-4000-8000-00000000000b, labels: {app: server}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 198.18.0.11}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: shop, uid: 00000000-0000-4000-8000-00000000000c, labels: {app: other}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 198.18.0.12}
";

    /// Denies every ingress of the server.
    const DENY_SERVER: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-server, namespace: shop, resourceVersion: \"7\"}
spec: {podSelector: {matchLabels: {app: server}}, policyTypes: [Ingress]}
";

    const CLIENT: &str = "198.18.0.10";
    const SERVER: &str = "198.18.0.11";
    const OTHER: &str = "198.18.0.12";

    struct Lab {
        dir: ManifestDir,
        stage: JudgeStage,
        metrics: Metrics,
        generations: watch::Receiver<u64>,
        reload: tokio::task::JoinHandle<()>,
    }

    impl Drop for Lab {
        fn drop(&mut self) {
            self.reload.abort();
        }
    }

    impl Lab {
        fn new(name: &str) -> Self {
            let dir = ManifestDir::new(&format!("stage-{name}"));
            dir.write("pods.yaml", PODS);
            let config = InventoryConfig { reload_interval: Duration::from_millis(20), ..InventoryConfig::default() };
            let (inventory, reload) = Inventory::standalone(vec![dir.path().to_owned()], config);
            let generations = inventory.subscribe();
            // One health, as the daemon has: the metrics read what the stage
            // counts (exported beside capture's, which the daemon attaches).
            let health = Health::default();
            health.attach_capture(Arc::new(crate::capture::CaptureHealth::default()));
            let metrics = Metrics::new(MetricsConfig::default(), &health);
            let setup = StageSetup {
                inventory,
                config: ObserverConfig::default(),
                findings_log: None,
                node: None,
                health,
                edges: EdgeOf::new(metrics.allowlist().clone()),
                metrics: Some(metrics.clone()),
            };
            let stage = JudgeStage::new(setup).expect("stage");
            Self { dir, stage, metrics, generations, reload: tokio::spawn(reload) }
        }

        /// Writes `policy` to `file` and waits until the inventory holds
        /// exactly the policies `expect` (`name@resourceVersion`), then
        /// recompiles the stage.
        async fn apply(&mut self, file: &str, policy: &str, expect: &[&str]) {
            self.dir.write(file, policy);
            let held = |inventory: &Inventory| {
                let mut held: Vec<String> = inventory
                    .snapshot()
                    .network_policies()
                    .map(|policy| {
                        let meta = &policy.metadata;
                        format!(
                            "{}@{}",
                            meta.name.as_deref().unwrap_or(""),
                            meta.resource_version.as_deref().unwrap_or("")
                        )
                    })
                    .collect();
                held.sort();
                held
            };
            let mut expect: Vec<String> = expect.iter().map(|name| (*name).to_owned()).collect();
            expect.sort();
            while held(&self.stage.setup.inventory) != expect {
                tokio::time::timeout(Duration::from_secs(10), self.generations.changed())
                    .await
                    .expect("a reload within 10 s")
                    .expect("inventory alive");
            }
            self.stage.rebuild();
        }

        /// Judges one record of flow `flow` from `src` to `dst` port 8080.
        fn judge(&mut self, flow: u64, event: RecordEvent, src: &str, dst: &str) -> FlowRecord {
            let mut record = self.record(flow, event, src, dst);
            self.stage.judge_batch(std::slice::from_mut(&mut record));
            record
        }

        /// One enriched, unjudged record of flow `flow` from `src` to `dst`
        /// port 8080, now.
        fn record(&self, flow: u64, event: RecordEvent, src: &str, dst: &str) -> FlowRecord {
            let at = SystemTime::now();
            let mut record = FlowRecord {
                to_dst: Traffic { packets: 5, bytes: 500 },
                to_src: Traffic { packets: 5, bytes: 500 },
                progress: Progress { flow, first: event == RecordEvent::Start, ..Progress::default() },
                ..tcp_record(&format!("{src}:40000"), &format!("{dst}:8080"), event, at)
            };
            for end in [&mut record.src, &mut record.dst] {
                end.endpoint = Some(self.stage.snapshot.resolve_remote(end.ip, at));
            }
            record
        }

        /// The findings of `kind` written now, with their counts.
        fn findings(&mut self, kind: &str) -> Vec<serde_json::Value> {
            let mut out = Vec::new();
            self.stage.findings.flush(&mut out, SystemTime::now(), &self.stage.coverage).expect("flush");
            String::from_utf8(out)
                .expect("utf-8")
                .lines()
                .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("json"))
                .filter(|line| line["kind"] == kind)
                .collect()
        }
    }

    fn kind(verdict: Option<&Arc<FlowVerdict>>) -> Option<VerdictKind> {
        verdict.map(|verdict| verdict.verdict)
    }

    #[tokio::test]
    async fn a_flow_keeps_the_verdict_it_started_with_and_outlives_a_policy_once() {
        let mut lab = Lab::new("outlived");
        let first = lab.judge(1, RecordEvent::Start, CLIENT, SERVER);
        assert_eq!(kind(first.verdict.as_ref()), Some(VerdictKind::Allowed));
        assert!(first.verdict_now.is_none());
        // Another connection of the same edge, open across the change too.
        lab.judge(4, RecordEvent::Start, CLIENT, SERVER);
        // Open across the change, to a pod the new policy does not select.
        let unaffected = lab.judge(3, RecordEvent::Start, CLIENT, OTHER);
        assert_eq!(kind(unaffected.verdict.as_ref()), Some(VerdictKind::Allowed));

        lab.apply("policy.yaml", DENY_SERVER, &["deny-server@7"]).await;
        for _ in 0..3 {
            let update = lab.judge(1, RecordEvent::Update, CLIENT, SERVER);
            assert_eq!(kind(update.verdict.as_ref()), Some(VerdictKind::Allowed), "the verdict it started with");
            let now = update.verdict_now.as_ref().expect("verdict_now");
            assert_eq!(now.verdict, VerdictKind::EnforcementGap, "{}", now.reason);
            assert_eq!(now.policies.len(), 1);
            assert_eq!(now.policies[0].0.name, "deny-server");
            let json = serde_json::to_value(&update).expect("json");
            assert_eq!(json["verdict"]["verdict"], "allowed");
            assert_eq!(json["verdict_now"]["verdict"], "enforcement-gap");
            assert_eq!(json["verdict_now"]["policies"][0]["resourceVersion"], "7");
        }
        let same_edge = lab.judge(4, RecordEvent::Update, CLIENT, SERVER);
        assert_eq!(kind(same_edge.verdict.as_ref()), Some(VerdictKind::Allowed));
        assert_eq!(kind(same_edge.verdict_now.as_ref()), Some(VerdictKind::EnforcementGap));
        let unaffected = lab.judge(3, RecordEvent::Update, CLIENT, OTHER);
        assert_eq!(kind(unaffected.verdict.as_ref()), Some(VerdictKind::Allowed));
        assert!(unaffected.verdict_now.is_none(), "its verdict did not change");
        let end = lab.judge(1, RecordEvent::End, CLIENT, SERVER);
        assert_eq!(kind(end.verdict.as_ref()), Some(VerdictKind::Allowed));
        assert_eq!(kind(end.verdict_now.as_ref()), Some(VerdictKind::EnforcementGap));
        assert!(lab.stage.open.get_mut(1).is_none(), "forgotten at its end record");

        let outlived = lab.findings("outlived-policy");
        assert_eq!(outlived.len(), 1, "{outlived:?}");
        assert_eq!(outlived[0]["count"], 2, "two connections outlived it");
        assert_eq!(outlived[0]["rule"], "shop/deny-server");
        assert_eq!(outlived[0]["policies"][0]["resourceVersion"], "7");
        assert!(outlived[0]["evidence"]["flow_started"].is_string());
        assert!(lab.findings("enforcement-gap").is_empty(), "an outlived connection is no enforcement gap");
        assert_eq!(lab.stage.judge.stats().enforcement_gaps, 0);
        let exposition = lab.metrics.encode();
        let series: Vec<&str> =
            exposition.lines().filter(|line| line.starts_with("flow_observer_findings_total{")).collect();
        assert_eq!(series.len(), 1, "{series:?}");
        assert!(series[0].starts_with(r#"flow_observer_findings_total{kind="outlived-policy""#), "{series:?}");
        assert!(series[0].ends_with(" 1"), "one finding for the edge: {series:?}");

        // A connection opened after the change is judged by the new policies.
        let second = lab.judge(2, RecordEvent::Start, CLIENT, SERVER);
        assert_eq!(kind(second.verdict.as_ref()), Some(VerdictKind::EnforcementGap));
        assert!(second.verdict_now.is_none());
        assert_eq!(lab.findings("enforcement-gap").len(), 1);
        assert_eq!(lab.stage.judge.stats().enforcement_gaps, 1);
    }

    #[tokio::test]
    async fn each_change_of_the_denying_policies_is_one_more_finding() {
        let mut lab = Lab::new("changed-again");
        lab.judge(1, RecordEvent::Start, CLIENT, SERVER);
        lab.apply("policy.yaml", DENY_SERVER, &["deny-server@7"]).await;
        lab.judge(1, RecordEvent::Update, CLIENT, SERVER);
        assert_eq!(lab.findings("outlived-policy").len(), 1);
        // A change that leaves the flow's verdicts as they are: no new finding.
        let unrelated = DENY_SERVER.replace("deny-server", "deny-other").replace("app: server", "app: other");
        lab.apply("unrelated.yaml", &unrelated, &["deny-server@7", "deny-other@7"]).await;
        let update = lab.judge(1, RecordEvent::Update, CLIENT, SERVER);
        assert_eq!(kind(update.verdict_now.as_ref()), Some(VerdictKind::EnforcementGap));
        let again = lab.findings("outlived-policy");
        assert!(again.is_empty(), "{again:?}");
        // The denying policy edited (a new resourceVersion): one more.
        let edited = DENY_SERVER.replace("\"7\"", "\"8\"");
        lab.apply("policy.yaml", &edited, &["deny-server@8", "deny-other@7"]).await;
        lab.judge(1, RecordEvent::Update, CLIENT, SERVER);
        lab.judge(1, RecordEvent::Update, CLIENT, SERVER);
        let edited = lab.findings("outlived-policy");
        assert_eq!(edited.len(), 1, "{edited:?}");
        assert_eq!(edited[0]["policies"][0]["resourceVersion"], "8");
    }

    /// `findings_total{kind="unprotected"}` of the lab's metrics.
    fn unprotected_counted(lab: &Lab) -> Vec<String> {
        lab.metrics
            .encode()
            .lines()
            .filter(|line| line.starts_with(r#"flow_observer_findings_total{kind="unprotected""#))
            .map(str::to_owned)
            .collect()
    }

    #[tokio::test]
    async fn an_unprotected_pod_is_counted_once_per_change_of_its_state_not_per_rebuild() {
        let mut lab = Lab::new("unprotected");
        // An AI-tier pod that no policy isolates, with a policy about another pod.
        let agent = "apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: shop, uid: 00000000-0000-4000-8000-00000000000d, labels: {app: agent, ai.governance/tier: agent}}
spec: {containers: [{name: c, image: i}]}
status: {podIP: 198.18.0.13}
---
";
        let other = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: other, namespace: shop, resourceVersion: \"1\"}
spec: {podSelector: {matchLabels: {app: other}}, policyTypes: [Ingress]}
";
        lab.apply("agent.yaml", &format!("{agent}{other}"), &["other@1"]).await;
        let counted = unprotected_counted(&lab);
        assert_eq!(counted.len(), 1, "{counted:?}");
        assert!(counted[0].ends_with(" 1"), "{counted:?}");
        // Rebuilds that leave the pod as unprotected as it was count nothing more.
        let edited = other.replace("\"1\"", "\"2\"");
        lab.apply("agent.yaml", &format!("{agent}{edited}"), &["other@2"]).await;
        lab.stage.rebuild();
        assert!(unprotected_counted(&lab)[0].ends_with(" 1"), "{:?}", unprotected_counted(&lab));
        // Isolated, then left unprotected again: a new state, counted once more.
        let isolating = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: isolate-agent, namespace: shop, resourceVersion: \"3\"}
spec: {podSelector: {matchLabels: {app: agent}}, policyTypes: [Ingress]}
";
        lab.apply("isolate.yaml", isolating, &["other@2", "isolate-agent@3"]).await;
        assert!(unprotected_counted(&lab)[0].ends_with(" 1"), "{:?}", unprotected_counted(&lab));
        lab.apply("isolate.yaml", "", &["other@2"]).await;
        lab.stage.rebuild();
        assert!(unprotected_counted(&lab)[0].ends_with(" 2"), "{:?}", unprotected_counted(&lab));
    }

    #[tokio::test]
    async fn spikes_are_counted_under_the_meters_edge_labels() {
        use crate::{dns::NameLabels, flow::PeerDns, metrics::LabelAllowlist};

        let lab = Lab::new("spike-labels");
        let edges = EdgeOf::new(LabelAllowlist::default()).with_names(Arc::new(NameLabels::new(16)));
        let mut record = tcp_record(&format!("{CLIENT}:40000"), "203.0.113.9:443", RecordEvent::End, SystemTime::now());
        record.src.endpoint = Some(lab.stage.snapshot.resolve_remote(record.src.ip, SystemTime::now()));
        record.dst.endpoint = Some(Endpoint::world());
        record.dst.dns = Some(PeerDns { names: vec![Arc::from("api.example.com")], resolved: true });
        let meter_edge = edges.edge(&record);
        assert_eq!(&*meter_edge.dst.workload, "example.com", "the meter names the destination by its domain");
        let mut lab = lab;
        lab.stage.setup.edges = edges;
        lab.stage.judge_batch(std::slice::from_mut(&mut record));
        let verdict = record.verdict.clone().expect("judged");
        let snapshot = Arc::clone(&lab.stage.snapshot);
        let (src, dst) = flow_ends(&snapshot, &record).expect("both ends");
        let spike = crate::anomaly::Spike {
            edge: EdgeKey::between(&src, &dst),
            signal: crate::anomaly::Signal::NewConnections,
            window_start: SystemTime::now(),
            window_seconds: 60,
            observed: 100,
            expected: 1.0,
            seasonal_expected: None,
            score: 9.0,
            baseline: crate::anomaly::Baseline::Own,
        };
        lab.stage.report_spike(&snapshot, &record, &spike, &verdict);
        let exposition = lab.metrics.encode();
        let spikes: Vec<&str> =
            exposition.lines().filter(|line| line.starts_with("flow_observer_edge_spikes_total{")).collect();
        assert_eq!(spikes.len(), 1, "{spikes:?}");
        assert!(spikes[0].contains(r#"dst_workload="example.com""#), "the spike names it alike: {spikes:?}");
    }

    #[tokio::test]
    async fn a_flow_denied_at_its_start_keeps_its_gap_and_is_not_outlived_when_allowed_later() {
        let mut lab = Lab::new("allowed-later");
        lab.apply("policy.yaml", DENY_SERVER, &["deny-server@7"]).await;
        let first = lab.judge(1, RecordEvent::Start, CLIENT, SERVER);
        assert_eq!(kind(first.verdict.as_ref()), Some(VerdictKind::EnforcementGap));
        let other = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: other, namespace: shop, resourceVersion: \"9\"}\nspec: {podSelector: {matchLabels: {app: other}}, policyTypes: [Ingress]}\n";
        lab.apply("policy.yaml", other, &["other@9"]).await;
        let update = lab.judge(1, RecordEvent::Update, CLIENT, SERVER);
        assert_eq!(kind(update.verdict.as_ref()), Some(VerdictKind::EnforcementGap));
        assert_eq!(kind(update.verdict_now.as_ref()), Some(VerdictKind::Allowed));
        assert!(lab.findings("outlived-policy").is_empty(), "only a connection the new policies deny outlived them");
        // A flow the observer first sees mid-way is judged by the policies then.
        let unseen_start = lab.judge(9, RecordEvent::Update, CLIENT, SERVER);
        assert_eq!(kind(unseen_start.verdict.as_ref()), Some(VerdictKind::Allowed));
        assert!(unseen_start.verdict_now.is_none());
    }

    /// `flow_observer_judge_flows_untracked_total` of the lab's metrics.
    fn untracked_counted(lab: &Lab) -> Option<String> {
        lab.metrics
            .encode()
            .lines()
            .find(|line| line.starts_with("flow_observer_judge_flows_untracked_total"))
            .map(str::to_owned)
    }

    #[tokio::test]
    async fn flows_past_the_open_flow_cap_are_judged_counted_once_each_and_judged_by_the_current_policies() {
        const EXTRA: u64 = 3;
        let mut lab = Lab::new("untracked");
        let total = super::super::open::MAX_OPEN_FLOWS as u64 + EXTRA;
        // Every connection of the same edge opens, one record each, in batches
        // as the pipeline hands them on.
        let start = lab.record(0, RecordEvent::Start, CLIENT, SERVER);
        let mut batch = Vec::with_capacity(4096);
        let mut judged = 0;
        for first in (1..=total).step_by(4096) {
            batch.clear();
            batch.extend((first..=total.min(first + 4095)).map(|flow| {
                let mut record = start.clone();
                record.progress.flow = flow;
                record
            }));
            lab.stage.judge_batch(&mut batch);
            for record in &batch {
                assert_eq!(kind(record.verdict.as_ref()), Some(VerdictKind::Allowed), "flow {}", record.progress.flow);
                assert!(record.verdict_now.is_none(), "flow {}", record.progress.flow);
            }
            judged += batch.len() as u64;
        }
        assert_eq!(judged, total, "every record judged, tracked or not");
        assert_eq!(lab.stage.open.len(), super::super::open::MAX_OPEN_FLOWS, "the cache holds its cap");
        assert_eq!(lab.stage.setup.health.flows_untracked(), EXTRA);
        assert_eq!(untracked_counted(&lab).as_deref(), Some("flow_observer_judge_flows_untracked_total 3"));
        // Later records of the untracked flows find the cache as full: the
        // same flows, not counted again.
        for flow in total - EXTRA + 1..=total {
            let update = lab.judge(flow, RecordEvent::Update, CLIENT, SERVER);
            assert_eq!(kind(update.verdict.as_ref()), Some(VerdictKind::Allowed));
        }
        assert_eq!(lab.stage.setup.health.flows_untracked(), EXTRA);
        // A new flow still counts.
        let late = lab.judge(total + 1, RecordEvent::Start, CLIENT, SERVER);
        assert_eq!(kind(late.verdict.as_ref()), Some(VerdictKind::Allowed));
        assert_eq!(untracked_counted(&lab).as_deref(), Some("flow_observer_judge_flows_untracked_total 4"));

        // The policies change: a tracked flow keeps the verdict it started
        // with; an untracked one is judged by the current policies, as if it
        // had started now, and no outlived-policy is seen for it.
        lab.apply("policy.yaml", DENY_SERVER, &["deny-server@7"]).await;
        let untracked = lab.judge(total, RecordEvent::Update, CLIENT, SERVER);
        assert_eq!(kind(untracked.verdict.as_ref()), Some(VerdictKind::EnforcementGap));
        assert!(untracked.verdict_now.is_none());
        let tracked = lab.judge(1, RecordEvent::Update, CLIENT, SERVER);
        assert_eq!(kind(tracked.verdict.as_ref()), Some(VerdictKind::Allowed));
        assert_eq!(kind(tracked.verdict_now.as_ref()), Some(VerdictKind::EnforcementGap));
        assert_eq!(lab.findings("outlived-policy")[0]["count"], 1, "the tracked flow alone");
        // An end record makes room: the untracked flow's next record is tracked
        // from then on (under the policies it was judged by), and nothing more
        // is counted.
        lab.judge(1, RecordEvent::End, CLIENT, SERVER);
        lab.judge(total, RecordEvent::Update, CLIENT, SERVER);
        assert!(lab.stage.open.get_mut(total).is_some());
        assert_eq!(lab.stage.setup.health.flows_untracked(), EXTRA + 1);
    }
}
