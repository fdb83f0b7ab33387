//! Flow records to edge metrics.
//!
//! In: flow records (cumulative counters per flow) and the edge each one is
//! on, already resolved to workloads. Out: per-record deltas counted on the
//! edge's series through [`Metrics::observe_flow`], and the edges of open
//! flows kept alive so quiet long-lived connections keep their series; each
//! flow counted once per verdict it reaches (a flow first `denied-attempt`
//! then `enforcement-gap` counts once in each).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use super::{EdgeLabels, EndLabels, LabelAllowlist, Metrics, Outcome, Reporter, VerdictLabels};
use crate::{
    dns::NameLabels,
    flow::{FlowRecord, FlowState, LocalEnd, Peer, RecordEvent, Traffic},
    inventory::{
        InventoryArgs,
        config::DEFAULT_LABEL_KEYS,
        endpoint::{Endpoint, EndpointKind},
    },
    judge::VerdictKind,
};

/// The pod label that names a workload's AI tier (`model-serving`, `agent`…).
pub const TIER_LABEL: &str = crate::intent::DEFAULT_TIER_LABEL;

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

/// Identifies a flow across its records.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct FlowId {
    cgroup: u64,
    src: (IpAddr, Option<u16>),
    dst: (IpAddr, Option<u16>),
    protocol: u8,
    icmp: Option<(u8, u8)>,
}

impl FlowId {
    fn of(record: &FlowRecord) -> Self {
        Self {
            cgroup: record.cgroup.id,
            src: (record.src.ip, record.src.port),
            dst: (record.dst.ip, record.dst.port),
            protocol: record.protocol.0,
            icmp: record.icmp.map(|icmp| (icmp.kind, icmp.code)),
        }
    }
}

#[derive(Debug)]
struct Open {
    to_dst: Traffic,
    to_src: Traffic,
    edge: EdgeLabels,
    /// The verdict last counted for this flow.
    verdict: Option<VerdictKind>,
}

fn minus(now: Traffic, before: Traffic) -> Traffic {
    Traffic { packets: now.packets.saturating_sub(before.packets), bytes: now.bytes.saturating_sub(before.bytes) }
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

/// Turns each flow's cumulative counters into deltas on its edge. Holds one
/// entry per open flow that has had a record.
#[derive(Debug)]
pub struct FlowMeter {
    metrics: Metrics,
    open: HashMap<FlowId, Open>,
    last_keep: Instant,
}

impl FlowMeter {
    /// A meter counting into `metrics`.
    pub fn new(metrics: Metrics) -> Self {
        Self { metrics, open: HashMap::new(), last_keep: Instant::now() }
    }

    /// Flows open now (seen, not ended).
    pub fn open_flows(&self) -> usize {
        self.open.len()
    }

    /// Counts one record on `edge`.
    pub fn record(&mut self, record: &FlowRecord, edge: EdgeLabels) {
        let id = FlowId::of(record);
        let (before_dst, before_src, counted) = match self.open.get(&id) {
            Some(open) => (open.to_dst, open.to_src, open.verdict),
            None => (Traffic::default(), Traffic::default(), None),
        };
        let verdict = record.verdict.as_ref().map(|verdict| verdict.verdict);
        if let Some(kind) = verdict.filter(|kind| Some(*kind) != counted) {
            self.metrics.record_verdict(&VerdictLabels { edge: edge.clone(), verdict: kind.as_str().into() });
        }
        let ended = record.event == RecordEvent::End;
        let delta = FlowDelta {
            to_dst: minus(record.to_dst, before_dst),
            to_src: minus(record.to_src, before_src),
            ended: ended.then(|| outcome(record)),
        };
        self.metrics.observe_flow(&edge, &delta);
        if ended {
            self.open.remove(&id);
        } else {
            self.open
                .insert(id, Open { to_dst: record.to_dst, to_src: record.to_src, edge, verdict: verdict.or(counted) });
        }
        self.keep_open_edges(Instant::now());
    }

    /// Marks the edges of open flows used, at most every quarter of the
    /// grace period.
    fn keep_open_edges(&mut self, now: Instant) {
        let period = self.metrics.config().series_grace / 4;
        if now.saturating_duration_since(self.last_keep) < period.max(Duration::from_secs(1)) {
            return;
        }
        self.last_keep = now;
        for open in self.open.values() {
            self.metrics.keep_edge(&open.edge, now);
        }
    }
}

/// The inventory flags with the pod label keys metrics need added: the tier
/// label and the `--metrics-pod-label` keys, so that enrichment copies them
/// into each end.
pub fn with_metric_label_keys(args: &InventoryArgs, allowlist: &LabelAllowlist) -> InventoryArgs {
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
        EndpointKind::Service => EndLabels::new("Service", namespace, endpoint.service.as_deref().unwrap_or("unknown")),
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

    /// The edge of a record.
    pub fn edge(&self, record: &FlowRecord) -> EdgeLabels {
        let mut edge = unresolved_edge(record);
        let end = |peer: &Peer, fallback: EndLabels| match &peer.endpoint {
            Some(endpoint) => end_labels(endpoint, &self.allowlist),
            None => fallback,
        };
        edge.src = end(&record.src, edge.src);
        edge.dst = end(&record.dst, edge.dst);
        let world = record.dst.endpoint.as_ref().is_some_and(|endpoint| endpoint.kind == EndpointKind::World);
        if let (true, Some(names), Some(dns)) = (world, &self.names, &record.dst.dns) {
            let resolved: &[Arc<str>] = if dns.resolved { &dns.names } else { &[] };
            edge.dst = EndLabels::new("World", "", &names.label(resolved));
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

/// Counts every record of every batch on the edge `edge_of` gives it, then
/// passes the batch on unchanged. Waits when the next stage is full, so
/// back-pressure reaches capture, which drops and counts.
pub async fn meter(
    metrics: Metrics,
    edge_of: impl Fn(&FlowRecord) -> EdgeLabels + Send,
    mut input: mpsc::Receiver<Vec<FlowRecord>>,
    output: mpsc::Sender<Vec<FlowRecord>>,
) {
    let mut meter = FlowMeter::new(metrics);
    while let Some(batch) = input.recv().await {
        for record in &batch {
            meter.record(record, edge_of(record));
        }
        if output.send(batch).await.is_err() {
            tracing::warn!("flow log stopped; metering continues without it");
            break;
        }
    }
    while let Some(batch) = input.recv().await {
        for record in &batch {
            meter.record(record, edge_of(record));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::SystemTime};

    use super::*;
    use crate::{
        flow::{Cgroup, Family, Protocol},
        metrics::MetricsConfig,
    };

    fn record(event: RecordEvent, state: FlowState, sent: u64, received: u64) -> FlowRecord {
        FlowRecord {
            time: SystemTime::now(),
            event,
            node: Arc::from("node-1"),
            protocol: Protocol(observer_common::PROTO_TCP),
            family: Family::Ipv4,
            src: Peer { ip: "198.18.0.10".parse().expect("ip"), port: Some(40000), endpoint: None, dns: None },
            dst: Peer { ip: "198.18.0.11".parse().expect("ip"), port: Some(8080), endpoint: None, dns: None },
            local: LocalEnd::Src,
            icmp: None,
            cgroup: Cgroup { id: 7, path: Some(Arc::from("/kubepods/besteffort/podabc/123")) },
            state,
            to_dst: Traffic { packets: sent / 100, bytes: sent },
            to_src: Traffic { packets: received / 100, bytes: received },
            tcp_flags: None,
            first_seen: SystemTime::now(),
            last_seen: SystemTime::now(),
            duration_ms: 0,
            verdict: None,
        }
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
        let metrics = Metrics::new(MetricsConfig::default());
        let mut meter = FlowMeter::new(metrics.clone());
        let first = record(RecordEvent::Start, FlowState::Established, 300, 1000);
        let edge = unresolved_edge(&first);
        meter.record(&first, edge.clone());
        meter.record(&record(RecordEvent::Update, FlowState::Established, 500, 1000), edge.clone());
        assert_eq!(meter.open_flows(), 1);
        meter.record(&record(RecordEvent::End, FlowState::Closed, 600, 1200), edge.clone());
        assert_eq!(meter.open_flows(), 0);
        assert_eq!(bytes_to_dst(&metrics).as_deref(), Some("600"));
        // A flow seen only at its end counts in full.
        meter.record(&record(RecordEvent::End, FlowState::Refused, 60, 40), edge);
        assert_eq!(bytes_to_dst(&metrics).as_deref(), Some("660"));
        let text = metrics.encode();
        assert!(text.contains(r#"outcome="completed"} 1"#), "{text}");
        assert!(text.contains(r#"outcome="refused"} 1"#), "{text}");
        assert!(text.contains(r#"src_kind="Pod",src_tier="",dst_namespace="",dst_workload="unknown""#), "{text}");
    }

    #[test]
    fn world_destinations_are_named_by_the_domain_the_source_resolved() {
        use crate::{
            flow::PeerDns,
            inventory::endpoint::{EndpointInfo, EndpointKind},
        };

        let world = Endpoint::from(EndpointInfo {
            kind: EndpointKind::World,
            namespace: None,
            pod: None,
            uid: None,
            service: None,
            node: None,
            workload: None,
            labels: Default::default(),
        });
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
        let args = with_metric_label_keys(&InventoryArgs::default(), &LabelAllowlist::new(["team", "app"]));
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
