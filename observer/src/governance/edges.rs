//! Recorded flows folded into edges, for the offline commands.
//!
//! In: [`FlowLine`]s from any number of nodes' flow logs, in each node's
//! order. Out: [`Edges`]: per distinct (source, destination, port,
//! protocol) the flows counted once (a flow seen from both ends, or in
//! several records, is one flow), first/last seen, the strongest delivery
//! evidence and the names DNS gave the destination; per pod the identity
//! and labels its records carried. Memory grows with edges, pods and flows
//! open at once, never with records.

use std::{
    collections::{BTreeMap, BTreeSet},
    hash::BuildHasher,
    net::IpAddr,
    sync::Arc,
};

use super::{
    line::{FlowLine, LinePeer, LineService, LineTraffic, parse_time_ms},
    memo::same,
    reader::ReadReport,
};
use crate::{
    FastMap,
    flow::{FlowState, LocalEnd, Traffic},
    inventory::{EndpointKind, WorkloadRef},
};

/// Most DNS names kept per edge.
const MAX_NAMES: usize = 8;

/// Most flows kept open at once (started, not yet ended); past it a flow's
/// later records may count it again, which the summary says.
const MAX_OPEN: usize = 4 << 20;

/// A pod as its records named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSeen {
    /// Its uid.
    pub uid: String,
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its workload.
    pub workload: Option<WorkloadRef>,
    /// The labels the records carried (only the keys the daemon copies).
    pub labels: BTreeMap<String, String>,
    /// The node it ran on.
    pub node: Option<String>,
    /// An address it had.
    pub ip: IpAddr,
}

/// One end of an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EndKey {
    /// A pod, by its index in [`Edges::pods`].
    Pod(u32),
    /// Anything else, by its address (what it is, in [`EdgeStats::kinds`]:
    /// the two ends' nodes may call it differently).
    Address(IpAddr),
}

/// What makes an edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EdgeKey {
    /// The initiator.
    pub src: EndKey,
    /// The responder.
    pub dst: EndKey,
    /// The destination port (none for ICMP).
    pub port: Option<u16>,
    /// IANA protocol number.
    pub protocol: u8,
}

/// The evidence an edge is judged with: that of its most delivered record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeEvidence {
    /// The end that observed it.
    pub local: LocalEnd,
    /// Its state.
    pub state: FlowState,
    /// Traffic each way.
    pub to_dst: Traffic,
    /// Traffic back.
    pub to_src: Traffic,
    rank: u8,
}

impl EdgeEvidence {
    fn of(local: LocalEnd, state: FlowState, to_dst: LineTraffic, to_src: LineTraffic) -> Self {
        // Seen at the receiving socket, then answered, then anything.
        let rank = match (local, state) {
            (LocalEnd::Dst, _) => 3,
            (_, FlowState::Established | FlowState::Closed) => 2,
            _ if to_src.packets > 0 => 2,
            _ => 1,
        };
        let traffic = |t: LineTraffic| Traffic { packets: t.packets, bytes: t.bytes };
        Self { local, state, to_dst: traffic(to_dst), to_src: traffic(to_src), rank }
    }
}

/// A policy a record's verdict cited, with the version it cited.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct CitedPolicy {
    /// `namespace/name`.
    pub policy: String,
    /// Its resourceVersion then.
    pub resource_version: Option<String>,
}

/// What is known of one edge.
#[derive(Clone, Debug)]
pub struct EdgeStats {
    /// Flows counted from the source's node.
    pub flows_src: u64,
    /// Flows counted from the destination's node.
    pub flows_dst: u64,
    /// Records.
    pub records: u64,
    /// First packet of its first flow (ms since the epoch).
    pub first_ms: u64,
    /// Latest packet (ms since the epoch).
    pub last_ms: u64,
    /// What it is judged with.
    pub evidence: EdgeEvidence,
    /// The node of the record that gave the evidence.
    pub node: u16,
    /// Names the source resolved for the destination.
    pub names: Vec<Arc<str>>,
    /// Whether the source resolved the destination's address at all.
    pub resolved: bool,
    /// The AI provider the daemon tagged the destination with.
    pub ai_provider: Option<Arc<str>>,
    /// The Service the destination was reached through.
    pub service: Option<(Arc<str>, Arc<str>)>,
    /// The address and port the source asked for, when the destination is
    /// the backend a Service sent the flow to.
    pub asked: Option<(IpAddr, Option<u16>)>,
    /// What the source and destination are, as the initiator's node saw
    /// them when it recorded the edge (else as the responder's did).
    pub kinds: (EndpointKind, EndpointKind),
    kinds_from_src: bool,
    /// Verdicts the records carried, with how many records each.
    pub recorded: BTreeMap<Arc<str>, u64>,
    /// Policies the records' verdicts cited.
    pub cited: BTreeSet<CitedPolicy>,
    /// The text of the policies the edge's latest record cited.
    cited_raw: Box<str>,
}

impl EdgeStats {
    /// Flows, each counted once: the larger of the counts from each end (an
    /// end's node may have lost records, or not run an observer).
    pub fn flows(&self) -> u64 {
        self.flows_src.max(self.flows_dst)
    }
}

/// Every edge of the input.
#[derive(Debug, Default)]
pub struct Edges {
    /// Pods, by [`EndKey::Pod`] index.
    pub pods: Vec<PodSeen>,
    pod_ids: FastMap<UidKey, u32>,
    /// Edges.
    pub edges: FastMap<EdgeKey, EdgeStats>,
    /// Nodes that wrote records, by index.
    pub nodes: Vec<String>,
    node_ids: FastMap<String, u16>,
    last_node: u16,
    names: FastMap<Arc<str>, ()>,
    open: FastMap<u64, ()>,
    /// Flows whose later records may have been counted again because too
    /// many were open at once.
    pub open_overflow: u64,
    /// First and last time in the records (ms).
    pub span: Option<(u64, u64)>,
    /// Records per node, by index.
    node_records: Vec<u64>,
}

impl Edges {
    /// Folds one record in; a record it cannot use is a problem in `report`.
    pub fn add(&mut self, line: &FlowLine<'_>, file: &str, number: u64, report: &mut ReadReport) {
        use super::reader::ProblemKind::Unusable;
        let (Some(state), Some(protocol)) = (line.flow_state(), line.protocol_number()) else {
            report.problem(
                Unusable,
                file,
                number,
                format!("unknown state {:?} or protocol {:?}", line.state, line.protocol),
            );
            return;
        };
        let (Some(first_ms), Some(last_ms)) = (parse_time_ms(&line.first_seen), parse_time_ms(&line.last_seen)) else {
            report.problem(Unusable, file, number, format!("first_seen/last_seen not RFC 3339: {:?}", line.first_seen));
            return;
        };
        let node = self.node(&line.node);
        let (src, src_kind) = self.end(&line.src);
        let (dst, dst_kind) = self.end(&line.dst);
        // A Service flow sent to a backend is judged at the backend, on the
        // port the backend took it on, as the daemon judges it (and as the
        // backend's own node records it, so both ends' records meet).
        let port = line.dst.backend.map_or(line.dst.port, |backend| Some(backend.port));
        let key = EdgeKey { src, dst, port, protocol };
        let local = line.local_end();
        let evidence = EdgeEvidence::of(local, state, line.to_dst, line.to_src);
        let new_flow = self.count_flow(line, local, first_ms);
        let stats = self.edges.entry(key).or_insert_with(|| EdgeStats {
            flows_src: 0,
            flows_dst: 0,
            records: 0,
            first_ms,
            last_ms,
            evidence,
            node,
            names: Vec::new(),
            resolved: false,
            ai_provider: None,
            service: None,
            asked: None,
            kinds: (src_kind, dst_kind),
            kinds_from_src: local == LocalEnd::Src,
            recorded: BTreeMap::new(),
            cited: BTreeSet::new(),
            cited_raw: Box::default(),
        });
        stats.records += 1;
        if local == LocalEnd::Src && !stats.kinds_from_src {
            stats.kinds = (src_kind, dst_kind);
            stats.kinds_from_src = true;
        }
        if new_flow {
            match local {
                LocalEnd::Src => stats.flows_src += 1,
                LocalEnd::Dst => stats.flows_dst += 1,
            }
        }
        stats.first_ms = stats.first_ms.min(first_ms);
        stats.last_ms = stats.last_ms.max(last_ms);
        if evidence.rank > stats.evidence.rank {
            stats.evidence = evidence;
            stats.node = node;
        }
        if let Some(dns) = &line.dst.dns {
            stats.resolved |= !dns.names.is_empty();
            for name in &dns.names {
                if stats.names.len() < MAX_NAMES && !stats.names.iter().any(|known| **known == **name) {
                    let name = intern(&mut self.names, name);
                    stats.names.push(name);
                    stats.names.sort();
                }
            }
        }
        if stats.ai_provider.is_none()
            && let Some(provider) = &line.dst.ai_provider
        {
            stats.ai_provider = Some(intern(&mut self.names, provider));
        }
        if stats.asked.is_none() && line.dst.backend.is_some() {
            stats.asked = Some((line.dst.ip, line.dst.port));
        }
        if stats.service.is_none()
            && let Some(service) = &line.dst.service
        {
            let (namespace, name) = match service {
                LineService::Object { namespace, name } => (namespace.as_ref(), name.as_ref()),
                LineService::Name(name) => (line.dst.namespace.as_deref().unwrap_or_default(), name.as_ref()),
            };
            stats.service = Some((intern(&mut self.names, namespace), intern(&mut self.names, name)));
        }
        if let Some(verdict) = &line.verdict {
            if let Some(count) = stats.recorded.get_mut(&*verdict.verdict) {
                *count += 1;
            } else {
                stats.recorded.insert(intern(&mut self.names, &verdict.verdict), 1);
            }
            // Most records cite what the edge's previous one did: read only new text.
            let raw = verdict.policies.text();
            let policies = if same(stats.cited_raw.as_bytes(), raw.as_bytes()) {
                Vec::new()
            } else {
                stats.cited_raw = raw.into();
                verdict.policies.to_vec()
            };
            for policy in &policies {
                let known = stats.cited.iter().any(|cited| {
                    cited.resource_version.as_deref() == policy.resource_version.as_deref()
                        && cited.policy.split_once('/') == Some((&*policy.namespace, &*policy.name))
                });
                if !known && stats.cited.len() < 16 {
                    stats.cited.insert(CitedPolicy {
                        policy: format!("{}/{}", policy.namespace, policy.name),
                        resource_version: policy.resource_version.as_deref().map(str::to_owned),
                    });
                }
            }
        }
        let span = self.span.get_or_insert((first_ms, last_ms));
        span.0 = span.0.min(first_ms);
        span.1 = span.1.max(last_ms);
        if let Some(count) = self.node_records.get_mut(usize::from(node)) {
            *count += 1;
        }
    }

    /// Whether this record is the first its node wrote of its flow: a
    /// `start`, or the first `update` or `end` of a flow whose start is not
    /// in the input.
    fn count_flow(&mut self, line: &FlowLine<'_>, local: LocalEnd, first_ms: u64) -> bool {
        let id = foldhash::fast::FixedState::with_seed(0x5eed).hash_one((
            &*line.node,
            local == LocalEnd::Src,
            line.src.ip,
            line.src.port,
            line.dst.ip,
            line.dst.port,
            &*line.protocol,
            first_ms,
        ));
        match &*line.event {
            "end" => self.open.remove(&id).is_none(),
            _ => {
                if self.open.len() >= MAX_OPEN {
                    self.open_overflow += 1;
                    return !matches!(&*line.event, "update");
                }
                self.open.insert(id, ()).is_none()
            }
        }
    }

    fn node(&mut self, name: &str) -> u16 {
        // A node's log is all its own records: most are the last one's node.
        if let Some(last) = self.nodes.get(usize::from(self.last_node))
            && same(last.as_bytes(), name.as_bytes())
        {
            return self.last_node;
        }
        if let Some(id) = self.node_ids.get(name) {
            self.last_node = *id;
            return *id;
        }
        let id = u16::try_from(self.nodes.len()).unwrap_or(u16::MAX);
        self.nodes.push(name.to_owned());
        self.node_records.push(0);
        self.node_ids.insert(name.to_owned(), id);
        self.last_node = id;
        id
    }

    fn end(&mut self, peer: &LinePeer<'_>) -> (EndKey, EndpointKind) {
        let kind = EndpointKind::from_record(peer.kind.as_deref());
        let (Some(uid), Some(namespace), Some(name)) = (&peer.uid, &peer.namespace, &peer.pod) else {
            return (EndKey::Address(peer.ip), kind);
        };
        if kind != EndpointKind::Pod {
            return (EndKey::Address(peer.ip), kind);
        }
        let key = UidKey::of(uid);
        if let Some(id) = self.pod_ids.get(&key) {
            return (EndKey::Pod(*id), kind);
        }
        let id = u32::try_from(self.pods.len()).unwrap_or(u32::MAX);
        self.pods.push(PodSeen {
            uid: uid.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
            workload: peer
                .workload
                .as_ref()
                .map(|w| WorkloadRef { kind: w.kind.to_string(), name: w.name.to_string() }),
            labels: peer.labels.to_map(),
            node: peer.node.as_deref().map(str::to_owned),
            // A Service's backend: the pod's own address, not the one asked for.
            ip: peer.backend.map_or(peer.ip, |backend| backend.ip),
        });
        self.pod_ids.insert(key, id);
        (EndKey::Pod(id), kind)
    }

    /// Records per node.
    pub fn records_by_node(&self) -> BTreeMap<String, u64> {
        self.nodes.iter().cloned().zip(self.node_records.iter().copied()).collect()
    }

    /// The pod behind an index.
    pub fn pod(&self, id: u32) -> Option<&PodSeen> {
        self.pods.get(id as usize)
    }

    /// Flows in every edge.
    pub fn flows(&self) -> u64 {
        self.edges.values().map(EdgeStats::flows).sum()
    }

    /// Edges sorted by key, for deterministic output.
    pub fn sorted(&self) -> Vec<(&EdgeKey, &EdgeStats)> {
        let mut edges: Vec<_> = self.edges.iter().collect();
        edges.sort_by_cached_key(|(key, _)| self.order(key));
        edges
    }

    /// A key sorting edges by names, not by the order pods were first seen.
    fn order(&self, key: &EdgeKey) -> (String, String, Option<u16>, u8) {
        let end = |end: &EndKey| match end {
            EndKey::Pod(id) => self.pod(*id).map(|pod| format!("0/{}/{}", pod.namespace, pod.name)).unwrap_or_default(),
            EndKey::Address(ip) => format!("1/{ip}"),
        };
        (end(&key.src), end(&key.dst), key.port, key.protocol)
    }
}

/// A pod's uid as a map key: a UUID (as Kubernetes makes them) as its 128
/// bits, so that finding a pod compares two numbers rather than two
/// strings in memory far from the map's own.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum UidKey {
    Uuid(u128),
    Other(Box<str>),
}

impl UidKey {
    fn of(uid: &str) -> Self {
        Self::uuid(uid).map_or_else(|| Self::Other(uid.into()), Self::Uuid)
    }

    /// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase hex (another
    /// spelling of the same number is another uid).
    fn uuid(uid: &str) -> Option<u128> {
        let bytes = uid.as_bytes();
        if bytes.len() != 36 {
            return None;
        }
        let mut value = 0_u128;
        for (at, &byte) in bytes.iter().enumerate() {
            let digit = match byte {
                b'-' if matches!(at, 8 | 13 | 18 | 23) => continue,
                b'0'..=b'9' if !matches!(at, 8 | 13 | 18 | 23) => byte - b'0',
                b'a'..=b'f' if !matches!(at, 8 | 13 | 18 | 23) => byte - b'a' + 10,
                _ => return None,
            };
            value = value << 4 | u128::from(digit);
        }
        Some(value)
    }
}

fn intern(names: &mut FastMap<Arc<str>, ()>, name: &str) -> Arc<str> {
    if let Some((known, ())) = names.get_key_value(name) {
        return Arc::clone(known);
    }
    let name: Arc<str> = Arc::from(name);
    names.insert(Arc::clone(&name), ());
    name
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;
    use crate::governance::reader;

    #[test]
    fn uuids_are_keyed_by_their_bits_and_other_uids_by_their_text() {
        let uid = "0123abcd-4567-89ef-0123-456789abcdef";
        assert_eq!(UidKey::of(uid), UidKey::Uuid(0x0123abcd_4567_89ef_0123_456789abcdef));
        // Another spelling of the number, or no UUID at all, is its text.
        for other in [
            "0123ABCD-4567-89ef-0123-456789abcdef",
            "0123abcd-4567-89ef-0123-456789abcde-",
            "0123abcd44567-89ef-0123-456789abcdef",
            "u-web",
            "",
        ] {
            assert_eq!(UidKey::of(other), UidKey::Other(other.into()), "{other}");
        }
    }

    fn line(node: &str, event: &str, local: &str, sport: u16, first: &str) -> String {
        format!(
            r#"{{"time":"2026-01-01T00:00:09.000Z","event":"{event}","node":"{node}","protocol":"tcp","family":"ipv4","src":{{"ip":"198.18.0.10","port":{sport},"kind":"pod","namespace":"shop","pod":"web-1","uid":"u-web","workload":{{"kind":"Deployment","name":"web"}},"labels":{{"app":"web"}}}},"dst":{{"ip":"198.18.0.11","port":8080,"kind":"pod","namespace":"shop","pod":"api-1","uid":"u-api","labels":{{"app":"api"}}}},"local":"{local}","cgroup":{{"id":1,"path":null}},"state":"closed","to_dst":{{"packets":3,"bytes":10}},"to_src":{{"packets":3,"bytes":20}},"first_seen":"{first}","last_seen":"2026-01-01T00:00:08.000Z","duration_ms":1}}"#
        )
    }

    fn fold(files: &[Vec<String>]) -> (Edges, ReadReport, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut paths = Vec::new();
        for (index, lines) in files.iter().enumerate() {
            let path = dir.path().join(format!("{index}.jsonl"));
            std::fs::write(&path, lines.join("\n") + "\n").expect("write");
            paths.push(path);
        }
        let mut edges = Edges::default();
        let report = reader::read(&paths, &mut |line, file, number, report| edges.add(line, file, number, report));
        (edges, report, dir)
    }

    #[test]
    fn a_flow_counts_once_across_its_records_and_both_ends() {
        let t1 = "2026-01-01T00:00:01.000Z";
        let t2 = "2026-01-01T00:00:02.000Z";
        let (edges, report, _dir) = fold(&[
            vec![
                line("a", "start", "src", 1000, t1),
                line("a", "update", "src", 1000, t1),
                line("a", "end", "src", 1000, t1),
            ],
            // The other end's node: one flow with all its records, one whose start was lost.
            vec![
                line("b", "start", "dst", 1000, t1),
                line("b", "end", "dst", 1000, t1),
                line("b", "update", "dst", 1001, t2),
                line("b", "end", "dst", 1001, t2),
            ],
        ]);
        assert_eq!(report.records, 7);
        assert_eq!(edges.edges.len(), 1);
        let stats = edges.edges.values().next().expect("edge");
        assert_eq!((stats.flows_src, stats.flows_dst, stats.flows()), (1, 2, 2));
        assert_eq!(stats.records, 7);
        assert_eq!((stats.first_ms, stats.last_ms), (1000 + 1_767_225_600_000, 8000 + 1_767_225_600_000));
        assert_eq!(stats.evidence.local, LocalEnd::Dst, "the receiving socket's record is the strongest evidence");
        assert_eq!(edges.nodes, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(edges.pods.len(), 2);
        assert_eq!(edges.pods[0].labels.get("app").map(String::as_str), Some("web"));
    }

    #[test]
    fn every_version_an_edge_cites_is_kept_though_records_repeat_it() {
        let t1 = "2026-01-01T00:00:01.000Z";
        let cite = |sport: u16, versions: &[&str]| {
            let policies: Vec<String> = versions
                .iter()
                .map(|version| format!(r#"{{"namespace":"shop","name":"api","resourceVersion":"{version}"}}"#))
                .collect();
            line("a", "end", "src", sport, t1).replacen(
                r#""duration_ms":1"#,
                &format!(r#""verdict":{{"verdict":"allowed","policies":[{}]}}"#, policies.join(",")),
                1,
            )
        };
        let (edges, report, _dir) =
            fold(&[vec![cite(1, &["7"]), cite(2, &["7"]), cite(3, &["8", "7"]), cite(4, &[]), cite(5, &["7"])]]);
        assert_eq!(report.records, 5);
        let stats = edges.edges.values().next().expect("edge");
        let cited: Vec<(&str, Option<&str>)> =
            stats.cited.iter().map(|c| (c.policy.as_str(), c.resource_version.as_deref())).collect();
        assert_eq!(cited, vec![("shop/api", Some("7")), ("shop/api", Some("8"))]);
        assert_eq!(stats.recorded.get("allowed"), Some(&5));
    }

    #[test]
    fn bad_lines_are_counted_with_file_and_line_and_the_rest_used() {
        let t1 = "2026-01-01T00:00:01.000Z";
        let (edges, report, dir) = fold(&[vec![
            "{not json".to_owned(),
            r#"{"kind":"spike","count":3}"#.to_owned(),
            String::new(),
            line("a", "end", "src", 1000, t1),
            line("a", "end", "src", 1001, "yesterday"),
        ]]);
        assert_eq!(report.records, 2);
        assert_eq!(report.lines, 5);
        assert_eq!(edges.flows(), 1);
        let file = dir.path().join("0.jsonl").display().to_string();
        let seen: Vec<(ProblemKindName, String, u64)> =
            report.problems.iter().map(|p| (p.kind.as_str(), p.file.clone(), p.line)).collect();
        assert_eq!(
            seen,
            vec![("malformed", file.clone(), 1), ("other-schema", file.clone(), 2), ("unusable", file, 5)]
        );
    }

    type ProblemKindName = &'static str;

    #[test]
    fn gzip_is_read_and_a_truncated_one_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text: String =
            (0..200).map(|port| line("a", "end", "src", 2000 + port, "2026-01-01T00:00:01.000Z") + "\n").collect();
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(text.as_bytes()).expect("gzip");
        let gz = encoder.finish().expect("gzip");
        let (whole, cut) = (dir.path().join("whole.gz"), dir.path().join("cut.jsonl.gz"));
        std::fs::write(&whole, &gz).expect("write");
        std::fs::write(&cut, &gz[..gz.len() * 2 / 3]).expect("write");
        let mut edges = Edges::default();
        let report = reader::read(&[whole], &mut |line, file, number, report| edges.add(line, file, number, report));
        assert_eq!((report.records, edges.flows()), (200, 200));
        let mut edges = Edges::default();
        let report = reader::read(std::slice::from_ref(&cut), &mut |line, file, number, report| {
            edges.add(line, file, number, report)
        });
        assert_eq!(report.counts.get("truncated"), Some(&1));
        assert!(report.records < 200, "{}", report.records);
        assert_eq!(report.problems[0].file, cut.display().to_string());
        assert_eq!(report.problems[0].line, report.lines + 1);
    }

    #[test]
    fn an_empty_input_says_so() {
        let (_, report, _dir) = fold(&[vec![]]);
        let mut out = Vec::new();
        report.describe(&mut out).expect("describe");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "flow logs: no flow records in the input (1 files, 1 lines)\n"
        );
    }
}
