//! Flow records to edge metrics.
//!
//! In: flow records (each with the traffic its connection added since its
//! previous record, see [`Progress`]), resolved to workloads. Out: those
//! deltas counted on the edge's cell in [`EdgeCells`], and the edges of open
//! flows kept alive so quiet long-lived connections keep their series; each
//! flow counted once per verdict it reaches (a flow first `denied-attempt`
//! then `enforcement-gap` counts once in each).
//!
//! Edges are interned: the label set of a pair of resolved ends is built
//! once, given its cell, and found again by the identity of the ends, so a
//! record costs no label building, hashing of label strings or family
//! lookups. A batch is counted under one lock of the cells. Per open flow the
//! meter keeps only its edge's slot and the verdict last counted.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    EdgeLabels, EndLabels, LabelAllowlist, Metrics, Outcome, Reporter,
    edge_cells::{EdgeCells, Stamp},
};
use crate::{
    FastMap,
    dns::NameLabels,
    flow::{FlowRecord, FlowState, LocalEnd, Peer, Progress, RecordEvent, Traffic},
    inventory::{
        InventoryOptions,
        config::DEFAULT_LABEL_KEYS,
        endpoint::{Endpoint, EndpointKind},
    },
    judge::VerdictKind,
};

/// The pod label that names a workload's AI tier (`model-serving`, `agent`…).
pub const TIER_LABEL: &str = crate::intent::DEFAULT_TIER_LABEL;

/// Interned edges past this many are forgotten (the slots of edges with open
/// flows stay until those end): endpoints are rebuilt when the inventory
/// changes, so old pairs would otherwise pile up.
const MAX_INTERNED_EDGES: usize = 65_536;

/// What one record adds to its edge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowDelta {
    /// Traffic from the source since the flow's previous record.
    pub to_dst: Traffic,
    /// Traffic from the destination since the flow's previous record.
    pub to_src: Traffic,
    /// How the flow ended, on its last record.
    pub ended: Option<Outcome>,
}

/// How a flow that ended in `record.state` counts.
pub fn outcome(record: &FlowRecord) -> Outcome {
    match record.state {
        FlowState::Refused => Outcome::Refused,
        FlowState::Unanswered | FlowState::Attempted => Outcome::Unanswered,
        FlowState::Evicted => Outcome::Evicted,
        FlowState::Closed => Outcome::Completed,
        FlowState::Established | FlowState::Active | FlowState::Expired => {
            if record.to_src.packets == 0 {
                Outcome::Unanswered
            } else {
                Outcome::Completed
            }
        }
    }
}

/// One end of an edge as the interning knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum EndId {
    /// A resolved end, by the identity of its endpoint.
    Resolved(usize),
    /// Not resolved, local, in a pod.
    LocalPod,
    /// Not resolved, local, outside any pod.
    LocalHost,
    /// Not resolved, remote.
    Remote,
}

/// What an edge's labels follow from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct EdgeId {
    src: EndId,
    dst: EndId,
    protocol: u8,
    reporter: Reporter,
    /// The DNS label of a `world` destination, when names are in use.
    world_name: Option<Box<str>>,
}

/// An interned edge.
#[derive(Debug)]
struct EdgeSlot {
    /// Its cell, held while the slot is.
    cell: u32,
    /// Open flows on the edge.
    open: u32,
    /// Whether the interning index points here.
    indexed: bool,
    /// The resolved ends the index names by identity, held so that identity
    /// cannot pass to another endpoint.
    _ends: [Option<Endpoint>; 2],
}

/// An interned edge's slot and cell.
#[derive(Clone, Copy, Debug)]
struct Interned {
    slot: u32,
    cell: u32,
}

/// Edges by what their labels follow from, in reusable slots.
#[derive(Debug, Default)]
struct Edges {
    slots: Vec<Option<EdgeSlot>>,
    free: Vec<u32>,
    /// With the cell, so that counting on an edge needs no slot.
    index: FastMap<EdgeId, Interned>,
}

impl Edges {
    /// The slot and cell of a record's edge, interned on first sight.
    fn of(&mut self, record: &FlowRecord, edge_of: &EdgeOf, cells: &mut EdgeCells) -> Interned {
        let (id, world_name) = edge_of.id(record);
        if let Some(interned) = self.index.get(&id) {
            return *interned;
        }
        if self.index.len() >= MAX_INTERNED_EDGES {
            self.forget_index(cells);
        }
        let cell = cells.intern(&edge_of.edge_named(record, world_name));
        cells.hold(cell);
        let slot = EdgeSlot {
            cell,
            open: 0,
            indexed: true,
            _ends: [record.src.endpoint.clone(), record.dst.endpoint.clone()],
        };
        let index = match self.free.pop() {
            Some(index) => {
                self.slots[index as usize] = Some(slot);
                index
            }
            None => {
                self.slots.push(Some(slot));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let interned = Interned { slot: index, cell };
        self.index.insert(id, interned);
        interned
    }

    fn get_mut(&mut self, index: u32) -> Option<&mut EdgeSlot> {
        self.slots.get_mut(index as usize)?.as_mut()
    }

    /// Drops the index; slots without open flows are freed.
    fn forget_index(&mut self, cells: &mut EdgeCells) {
        self.index.clear();
        for index in 0..self.slots.len() {
            if let Some(slot) = &mut self.slots[index] {
                slot.indexed = false;
            }
            self.release(index as u32, 0, cells);
        }
    }

    /// Takes `count` open flows off a slot; frees it (and lets go of its
    /// cell) when none is left and the index no longer points to it.
    fn release(&mut self, index: u32, count: u32, cells: &mut EdgeCells) {
        let Some(slot) = self.get_mut(index) else { return };
        slot.open = slot.open.saturating_sub(count);
        if slot.open == 0 && !slot.indexed {
            cells.release(slot.cell);
            self.slots[index as usize] = None;
            self.free.push(index);
        }
    }

    /// Lets go of every slot's cell.
    fn release_cells(&mut self, cells: &mut EdgeCells) {
        for slot in self.slots.iter_mut().filter_map(Option::take) {
            cells.release(slot.cell);
        }
        self.index.clear();
        self.free.clear();
    }
}

/// What the meter keeps of an open flow.
#[derive(Clone, Copy, Debug)]
struct Open {
    /// Its edge's slot.
    edge: u32,
    /// The verdict last counted for this flow.
    verdict: Option<VerdictKind>,
}

/// Counts each record's traffic on its edge. Holds one small entry per open
/// flow that has had a record, and one per edge.
#[derive(Debug)]
pub struct FlowMeter {
    metrics: Metrics,
    edge_of: EdgeOf,
    edges: Edges,
    /// By the flow's handle ([`Progress::flow`]).
    open: FastMap<u64, Open>,
    last_keep: Instant,
}

impl FlowMeter {
    /// A meter counting into `metrics` on the edges `edge_of` gives records.
    pub fn new(metrics: Metrics, edge_of: EdgeOf) -> Self {
        Self { metrics, edge_of, edges: Edges::default(), open: FastMap::default(), last_keep: Instant::now() }
    }

    /// Flows open now (seen, not ended).
    pub fn open_flows(&self) -> usize {
        self.open.len()
    }

    /// Counts every record of a batch on its edge, all at one time: the
    /// batch left capture at once.
    pub fn record_batch(&mut self, records: &[FlowRecord]) {
        let now = Instant::now();
        let metrics = self.metrics.clone();
        let mut cells = metrics.edge_cells();
        let stamp = cells.stamp(now);
        for record in records {
            self.record(record, &mut cells, stamp);
        }
        self.keep_open_edges(&mut cells, now);
    }

    /// Counts one record on its edge's cell at `stamp`.
    fn record(&mut self, record: &FlowRecord, cells: &mut EdgeCells, stamp: Stamp) {
        let Interned { slot: edge, cell } = self.edges.of(record, &self.edge_of, cells);
        let Progress { flow, first, new_to_dst, new_to_src } = record.progress;
        let open = if first { None } else { self.open.get(&flow).copied() };
        let counted = open.and_then(|open| open.verdict);
        let verdict = record.verdict.as_ref().map(|verdict| verdict.verdict);
        let ended = record.event == RecordEvent::End;
        if let Some(kind) = verdict.filter(|kind| Some(*kind) != counted) {
            cells.count_verdict(cell, kind, stamp);
        }
        let delta = FlowDelta { to_dst: new_to_dst, to_src: new_to_src, ended: ended.then(|| outcome(record)) };
        cells.count_traffic(cell, &delta, stamp);
        match open {
            Some(before) if ended || before.edge != edge => {
                self.edges.release(before.edge, 1, cells);
            }
            _ => {}
        }
        if ended {
            if open.is_some() {
                self.open.remove(&flow);
            }
        } else {
            if open.is_none_or(|before| before.edge != edge)
                && let Some(slot) = self.edges.get_mut(edge)
            {
                slot.open += 1;
            }
            self.open.insert(flow, Open { edge, verdict: verdict.or(counted) });
        }
    }

    /// Marks the edges of open flows used, at most every quarter of the
    /// grace period.
    fn keep_open_edges(&mut self, cells: &mut EdgeCells, now: Instant) {
        let period = self.metrics.config().series_grace / 4;
        if now.saturating_duration_since(self.last_keep) < period.max(Duration::from_secs(1)) {
            return;
        }
        self.last_keep = now;
        let stamp = cells.stamp(now);
        for slot in self.edges.slots.iter().flatten().filter(|slot| slot.open > 0) {
            cells.keep_traffic(slot.cell, stamp);
        }
    }
}

impl Drop for FlowMeter {
    /// Lets go of the edges' cells, so that those whose series are all
    /// collected can be reused.
    fn drop(&mut self) {
        let metrics = self.metrics.clone();
        self.edges.release_cells(&mut metrics.edge_cells());
    }
}

/// The inventory flags with the pod label keys metrics need added: the tier
/// label and the `--metrics-pod-label` keys, so that enrichment copies them
/// into each end.
pub fn with_metric_label_keys(args: &InventoryOptions, allowlist: &LabelAllowlist) -> InventoryOptions {
    let mut args = args.clone();
    let keys = args.flow_label_keys.get_or_insert_with(|| DEFAULT_LABEL_KEYS.map(str::to_owned).to_vec());
    for key in std::iter::once(TIER_LABEL).chain(allowlist.keys()) {
        if !keys.iter().any(|known| known == key) {
            keys.push(key.to_owned());
        }
    }
    args
}

/// The workload-level labels of an enriched end.
pub fn end_labels(endpoint: &Endpoint, allowlist: &LabelAllowlist) -> EndLabels {
    let namespace = endpoint.namespace.as_deref().unwrap_or_default();
    match endpoint.kind {
        EndpointKind::Pod => {
            let (kind, name) = match &endpoint.workload {
                Some(workload) => (workload.kind.as_str(), workload.name.as_str()),
                None => ("Pod", endpoint.pod.as_deref().unwrap_or("unknown")),
            };
            let tier = endpoint.labels.get(TIER_LABEL).map_or("", String::as_str);
            EndLabels::new(kind, namespace, name).tier(tier).extra(allowlist.pick(&endpoint.labels))
        }
        EndpointKind::Service => EndLabels::new(
            "Service",
            namespace,
            endpoint.service.as_ref().map_or("unknown", |service| service.name.as_str()),
        ),
        EndpointKind::Node => EndLabels::new("Node", "", endpoint.node.as_deref().unwrap_or("unknown")),
        EndpointKind::World => EndLabels::world(),
        EndpointKind::Host => EndLabels::host(),
        EndpointKind::Unknown => EndLabels::unknown(),
    }
}

/// Resolves records to edges: enriched ends by their workload, ends without
/// an inventory as in [`unresolved_edge`].
#[derive(Clone, Debug)]
pub struct EdgeOf {
    allowlist: LabelAllowlist,
    names: Option<Arc<NameLabels>>,
}

impl EdgeOf {
    /// Edges with the pod labels of `allowlist`.
    pub fn new(allowlist: LabelAllowlist) -> Self {
        Self { allowlist, names: None }
    }

    /// Names a `world` destination by the DNS domain its source resolved
    /// (`direct-ip` when it resolved none), from a bounded set of domains
    /// (`other` past its capacity), instead of plain `world`.
    pub fn with_names(mut self, names: Arc<NameLabels>) -> Self {
        self.names = Some(names);
        self
    }

    /// The DNS label of a record's destination, when it is the world and
    /// names are in use.
    fn world_name(&self, record: &FlowRecord) -> Option<String> {
        let world = record.dst.endpoint.as_ref().is_some_and(|endpoint| endpoint.kind == EndpointKind::World);
        let (true, Some(names), Some(dns)) = (world, &self.names, &record.dst.dns) else { return None };
        let resolved: &[Arc<str>] = if dns.resolved { &dns.names } else { &[] };
        Some(names.label(resolved))
    }

    /// What a record's edge labels follow from, without building them, and
    /// the destination's DNS label (to build them with).
    fn id(&self, record: &FlowRecord) -> (EdgeId, Option<String>) {
        let in_pod = || record.cgroup.path.as_deref().is_some_and(|path| path.contains("kubepods"));
        let end = |peer: &Peer, local: bool| match (&peer.endpoint, local) {
            (Some(endpoint), _) => EndId::Resolved(endpoint.identity()),
            (None, true) if in_pod() => EndId::LocalPod,
            (None, true) => EndId::LocalHost,
            (None, false) => EndId::Remote,
        };
        let (reporter, src_local) = match record.local {
            LocalEnd::Src => (Reporter::Src, true),
            LocalEnd::Dst => (Reporter::Dst, false),
        };
        let world_name = self.world_name(record);
        let id = EdgeId {
            src: end(&record.src, src_local),
            dst: end(&record.dst, !src_local),
            protocol: record.protocol.0,
            reporter,
            world_name: world_name.as_deref().map(Box::from),
        };
        (id, world_name)
    }

    /// The edge of a record.
    pub fn edge(&self, record: &FlowRecord) -> EdgeLabels {
        self.edge_named(record, self.world_name(record))
    }

    /// The edge of a record whose destination's DNS label is `world_name`.
    fn edge_named(&self, record: &FlowRecord, world_name: Option<String>) -> EdgeLabels {
        let mut edge = unresolved_edge(record);
        let end = |peer: &Peer, fallback: EndLabels| match &peer.endpoint {
            Some(endpoint) => end_labels(endpoint, &self.allowlist),
            None => fallback,
        };
        edge.src = end(&record.src, edge.src);
        edge.dst = end(&record.dst, edge.dst);
        if let Some(name) = world_name {
            edge.dst = EndLabels::new("World", "", &name);
        }
        edge
    }
}

/// The edge of a record before enrichment: the local end is a pod (cgroup
/// under `kubepods`) or the host, the remote end is not known.
pub fn unresolved_edge(record: &FlowRecord) -> EdgeLabels {
    let in_pod = record.cgroup.path.as_deref().is_some_and(|path| path.contains("kubepods"));
    let local = if in_pod { EndLabels::new("Pod", "", "unresolved") } else { EndLabels::host() };
    let (src, dst, reporter) = match record.local {
        LocalEnd::Src => (local, EndLabels::unknown(), Reporter::Src),
        LocalEnd::Dst => (EndLabels::unknown(), local, Reporter::Dst),
    };
    EdgeLabels { src, dst, protocol: record.protocol.name().as_ref().into(), reporter }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::SystemTime};

    use super::*;
    use crate::{flow::Cgroup, metrics::MetricsConfig, testing::tcp_record};

    fn record(event: RecordEvent, state: FlowState, sent: u64, received: u64) -> FlowRecord {
        FlowRecord {
            state,
            cgroup: Cgroup { id: 7, path: Some(Arc::from("/kubepods/besteffort/podabc/123")) },
            to_dst: Traffic { packets: sent / 100, bytes: sent },
            to_src: Traffic { packets: received / 100, bytes: received },
            ..tcp_record("198.18.0.10:40000", "198.18.0.11:8080", event, SystemTime::now())
        }
    }

    /// `record` as record of connection `flow` whose previous record had
    /// sent and received `before` (`None`: its first record).
    fn of_flow(mut record: FlowRecord, flow: u64, before: Option<(u64, u64)>) -> FlowRecord {
        let (sent, received) = before.unwrap_or_default();
        let new = |now: Traffic, bytes: u64| Traffic { packets: now.packets - bytes / 100, bytes: now.bytes - bytes };
        record.progress = Progress {
            flow,
            first: before.is_none(),
            new_to_dst: new(record.to_dst, sent),
            new_to_src: new(record.to_src, received),
        };
        record
    }

    fn bytes_to_dst(metrics: &Metrics) -> Option<String> {
        metrics
            .encode()
            .lines()
            .find(|line| line.starts_with("flow_observer_edge_bytes_total") && line.contains("to_dst"))
            .map(|line| line.rsplit(' ').next().unwrap_or_default().to_owned())
    }

    #[test]
    fn records_add_only_what_is_new_and_count_the_flow_at_its_end() {
        let metrics = Metrics::new(MetricsConfig::default(), &crate::health::Health::default());
        let mut meter = FlowMeter::new(metrics.clone(), EdgeOf::new(LabelAllowlist::default()));
        meter.record_batch(&[of_flow(record(RecordEvent::Start, FlowState::Established, 300, 1000), 1, None)]);
        let update = record(RecordEvent::Update, FlowState::Established, 500, 1000);
        meter.record_batch(&[of_flow(update, 1, Some((300, 1000)))]);
        assert_eq!(meter.open_flows(), 1);
        meter.record_batch(&[of_flow(record(RecordEvent::End, FlowState::Closed, 600, 1200), 1, Some((500, 1000)))]);
        assert_eq!(meter.open_flows(), 0);
        assert_eq!(bytes_to_dst(&metrics).as_deref(), Some("600"));
        // A flow seen only at its end counts in full.
        meter.record_batch(&[of_flow(record(RecordEvent::End, FlowState::Refused, 60, 40), 2, None)]);
        assert_eq!(bytes_to_dst(&metrics).as_deref(), Some("660"));
        let text = metrics.encode();
        assert!(text.contains(r#"outcome="completed"} 1"#), "{text}");
        assert!(text.contains(r#"outcome="refused"} 1"#), "{text}");
        assert!(text.contains(r#"src_kind="Pod",src_tier="",dst_namespace="",dst_workload="unknown""#), "{text}");
    }

    #[test]
    fn collected_series_of_a_held_edge_count_again_from_zero() {
        let metrics = Metrics::new(MetricsConfig::default(), &crate::health::Health::default());
        let grace = metrics.config().series_grace;
        let mut meter = FlowMeter::new(metrics.clone(), EdgeOf::new(LabelAllowlist::default()));
        meter.record_batch(&[of_flow(record(RecordEvent::End, FlowState::Closed, 300, 100), 1, None)]);
        assert_eq!(bytes_to_dst(&metrics).as_deref(), Some("300"));
        // Bytes and packets both ways, and the completed flow.
        assert_eq!(metrics.collect_garbage(Instant::now() + grace + Duration::from_secs(1)), 5);
        let text = metrics.encode();
        assert!(!text.contains("flow_observer_edge_bytes"), "{text}");
        assert!(text.contains("flow_observer_series_removed_total{family=\"edge_flows\"} 1\n"), "{text}");
        meter.record_batch(&[of_flow(record(RecordEvent::End, FlowState::Closed, 50, 0), 2, None)]);
        assert_eq!(bytes_to_dst(&metrics).as_deref(), Some("50"));
        let text = metrics.encode();
        assert!(text.contains("flow_observer_series{family=\"edge_packets\"} 1\n"), "{text}");
        assert!(!text.contains("direction=\"to_src\""), "{text}");
    }

    #[test]
    fn world_destinations_are_named_by_the_domain_the_source_resolved() {
        use crate::flow::PeerDns;

        let world = Endpoint::world();
        let mut resolved = record(RecordEvent::End, FlowState::Closed, 100, 100);
        resolved.dst.endpoint = Some(world.clone());
        resolved.dst.dns = Some(PeerDns { names: vec![Arc::from("api.openai.example.com")], resolved: true });
        let mut direct = resolved.clone();
        direct.dst.dns = Some(PeerDns { names: Vec::new(), resolved: false });
        let mut third = resolved.clone();
        third.dst.dns = Some(PeerDns { names: vec![Arc::from("pastebin.com")], resolved: true });
        let edges = EdgeOf::new(LabelAllowlist::default()).with_names(Arc::new(NameLabels::new(1)));
        let workload = |record: &FlowRecord| edges.edge(record).dst.workload.to_string();
        assert_eq!(workload(&resolved), "example.com");
        assert_eq!(workload(&direct), "direct-ip");
        assert_eq!(workload(&third), "other", "past the cap of one domain");
        assert_eq!(EdgeOf::new(LabelAllowlist::default()).edge(&resolved).dst.workload.to_string(), "world");
    }

    #[test]
    fn enriched_ends_are_named_by_workload_tier_and_allowed_labels() {
        use std::collections::BTreeMap;

        use crate::inventory::endpoint::{EndpointInfo, WorkloadRef};

        let pod = Endpoint::from(EndpointInfo {
            kind: EndpointKind::Pod,
            namespace: Some("ml".into()),
            pod: Some("vllm-0".into()),
            uid: Some("u-1".into()),
            service: None,
            node: Some("node-1".into()),
            workload: Some(WorkloadRef { kind: "StatefulSet".into(), name: "vllm".into() }),
            labels: BTreeMap::from([
                (TIER_LABEL.to_owned(), "model-serving".to_owned()),
                ("team".to_owned(), "inference".to_owned()),
            ]),
        });
        let allowlist = LabelAllowlist::new(["team"]);
        let mut record = record(RecordEvent::End, FlowState::Closed, 1, 1);
        record.dst.endpoint = Some(pod);
        record.src.endpoint = Some(Endpoint::world());
        record.local = LocalEnd::Dst;
        let edge = EdgeOf::new(allowlist).edge(&record);
        assert_eq!(edge.src, EndLabels::world());
        assert_eq!(edge.reporter, Reporter::Dst);
        let dst = &edge.dst;
        assert_eq!(
            (&*dst.namespace, &*dst.workload, &*dst.kind, &*dst.tier),
            ("ml", "vllm", "StatefulSet", "model-serving")
        );
        assert_eq!(dst.extra.len(), 1);
        assert_eq!((&*dst.extra[0].0, &*dst.extra[0].1), ("team", "inference"));
    }

    #[test]
    fn metric_label_keys_reach_the_inventory() {
        let args = with_metric_label_keys(&InventoryOptions::default(), &LabelAllowlist::new(["team", "app"]));
        let keys = args.flow_label_keys.expect("keys");
        assert!(keys.iter().any(|key| key == TIER_LABEL), "{keys:?}");
        assert_eq!(keys.iter().filter(|key| *key == "app").count(), 1, "{keys:?}");
        assert!(keys.iter().any(|key| key == "team") && keys.iter().any(|key| key == "app.kubernetes.io/name"));
    }

    #[test]
    fn udp_with_no_reply_is_unanswered() {
        let mut silent = record(RecordEvent::End, FlowState::Expired, 100, 0);
        silent.to_src = Traffic::default();
        assert_eq!(outcome(&silent), Outcome::Unanswered);
        assert_eq!(outcome(&record(RecordEvent::End, FlowState::Expired, 100, 100)), Outcome::Completed);
    }
}
