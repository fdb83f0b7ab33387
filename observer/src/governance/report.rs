//! `observer report`: the evidence record of each NetworkPolicy and AI-tier
//! workload, from recorded traffic.
//!
//! In: the manifests (policies, pods, FlowIntents), flow logs, and
//! optionally findings logs. Out: a [`Report`] (the stable JSON documented
//! in `docs/governance.md`), rendered as JSON, Markdown or one
//! self-contained HTML file. Rule usage comes from judging the recorded
//! flows with the daemon's judge; each rule is also compiled alone (a
//! policy of that one rule) so the same engine says which rules let each
//! flow through.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{self, BufRead, Write},
    path::PathBuf,
};

use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicySpec};
use serde::Serialize;
use serde_json::Value;

use super::{
    edges::{EdgeKey, EdgeStats, Edges, EndKey},
    output::{EndOut, time},
    reader::ReadReport,
    replay::{Cluster, Judged, PolicySet, Recorded},
};
use crate::{
    inventory::{ObjectRef, WorkloadRef},
    judge::VerdictKind,
    policy::{Endpoint, cnp::ClusterNetworkPolicy},
};

/// The annotation naming who owns a policy or workload.
pub const OWNER_ANNOTATION: &str = "ai.governance/owner";

/// What `observer report` reads and writes (from its flags in [`crate::cli::report`]).
#[derive(Debug)]
pub struct ReportConfig {
    /// The cluster and the flow logs.
    pub recorded: Recorded,
    /// Findings logs written by `observer run --findings-log`.
    pub findings: Vec<PathBuf>,
    /// Output format.
    pub format: ReportFormat,
    /// Where to write it (stdout when absent).
    pub output: Option<PathBuf>,
}

/// Report formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// For people, in a repository or a ticket.
    Markdown,
    /// The stable, documented format.
    Json,
    /// One self-contained page, readable offline.
    Html,
}

/// Flows, edges and when, for a rule or a kind of verdict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    /// Flows (each counted once).
    pub flows: u64,
    /// Distinct edges.
    pub edges: u64,
    /// First packet of the first flow.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_seen: Option<String>,
    /// Latest packet.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<String>,
    #[serde(skip)]
    span: Option<(u64, u64)>,
}

impl Usage {
    fn add(&mut self, stats: &EdgeStats) {
        self.flows += stats.flows();
        self.edges += 1;
        let span = self.span.get_or_insert((stats.first_ms, stats.last_ms));
        span.0 = span.0.min(stats.first_ms);
        span.1 = span.1.max(stats.last_ms);
        self.first_seen = Some(time(span.0));
        self.last_seen = Some(time(span.1));
    }
}

/// One rule of a policy and what used it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RuleOut {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// Its position in the policy's list.
    pub index: usize,
    /// `from`/`to` as declared (empty: every peer).
    pub peers: Value,
    /// `ports` as declared (empty: every port).
    pub ports: Value,
    /// The recorded flows it allowed.
    pub flows: u64,
    /// Their edges, first and last seen.
    pub usage: Usage,
    /// No recorded flow used it: a candidate to tighten.
    pub unused: bool,
}

/// A pod a policy selects.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct SelectedPod {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub pod: String,
    /// Its workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
}

/// A version of a policy that records cited, other than the current one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecordedVersion {
    /// The resourceVersion the records cite.
    pub resource_version: Option<String>,
    /// Edges whose records cite it.
    pub edges: u64,
}

/// The evidence record of one NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PolicyReport {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// `metadata.creationTimestamp`.
    pub created: Option<String>,
    /// Who owns it (see `owner_source`).
    pub owner: Option<String>,
    /// Where the owner came from: `annotation`, `label:<key>`, or `none`.
    pub owner_source: String,
    /// The pods it selects.
    pub selected: Vec<SelectedPod>,
    /// Their workloads.
    pub workloads: Vec<WorkloadRef>,
    /// `Ingress`, `Egress`.
    pub policy_types: Vec<String>,
    /// Each rule and the flows it allowed.
    pub rules: Vec<RuleOut>,
    /// Flows it allowed (any rule).
    pub allowed: Usage,
    /// Flows it denied that were not delivered.
    pub denied_attempts: Usage,
    /// Flows it denied that were delivered anyway.
    pub enforcement_gaps: Usage,
    /// Versions of it the records' own verdicts cite, other than this one:
    /// those flows were judged when it was different.
    pub recorded_versions: Vec<RecordedVersion>,
}

/// An observed peer of a workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeerOut {
    /// `egress` (the workload connected) or `ingress`.
    pub direction: &'static str,
    /// The other end.
    pub peer: EndOut,
    /// Destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Protocol.
    pub protocol: String,
    /// Flows.
    pub flows: u64,
    /// The judge's verdict now.
    pub verdict: &'static str,
}

/// The evidence record of an AI-tier workload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkloadReport {
    /// Its namespace.
    pub namespace: String,
    /// `Deployment`, ... or `Pod`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its AI tier.
    pub tier: String,
    /// Its pods.
    pub pods: Vec<String>,
    /// The policies isolating it, by direction (empty: not isolated).
    pub isolation: BTreeMap<&'static str, Vec<String>>,
    /// FlowIntents that require isolation of it (`namespace/name`).
    pub intents: Vec<String>,
    /// Who it talked to.
    pub peers: Vec<PeerOut>,
    /// Findings about it in the findings logs, by kind.
    pub findings: BTreeMap<String, u64>,
}

/// What the report can vouch for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Coverage {
    /// First packet in the records.
    pub from: Option<String>,
    /// Latest packet.
    pub to: Option<String>,
    /// Nodes that wrote records, with how many.
    pub nodes: BTreeMap<String, u64>,
    /// Flows and edges judged.
    pub flows: u64,
    /// Edges judged.
    pub edges: u64,
    /// What was read and left out.
    pub input: ReadReport,
    /// Findings written while events or records were lost (their time and coverage).
    pub degraded_windows: Vec<Value>,
    /// Pods in the records the manifests no longer hold.
    pub gone_pods: Vec<String>,
    /// Whether nothing was left out or lost.
    pub complete: bool,
    /// Why it is not complete, in words.
    pub notes: Vec<String>,
}

/// One rule of a ClusterNetworkPolicy and the flows it matched.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterRuleOut {
    /// `ingress` or `egress`.
    pub direction: &'static str,
    /// Its position in the policy's list.
    pub index: usize,
    /// Its `name`, if given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `Accept`, `Deny` or `Pass`.
    pub action: String,
    /// `from`/`to` as declared.
    pub peers: Value,
    /// `protocols` as declared (absent: every port).
    pub protocols: Value,
    /// Recorded flows it matched (a `Pass` included).
    pub flows: u64,
    /// Their edges, first and last seen.
    pub usage: Usage,
    /// No recorded flow matched it: a candidate to tighten, or a guardrail
    /// nothing tested.
    pub unused: bool,
}

/// The evidence record of one ClusterNetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClusterPolicyReport {
    /// Its name (cluster-scoped).
    pub name: String,
    /// `metadata.uid`.
    pub uid: Option<String>,
    /// `metadata.resourceVersion`.
    pub resource_version: Option<String>,
    /// `metadata.creationTimestamp`.
    pub created: Option<String>,
    /// Who owns it (as for NetworkPolicies).
    pub owner: Option<String>,
    /// Where the owner came from: `annotation`, `label:<key>`, or `none`.
    pub owner_source: String,
    /// `Admin` or `Baseline`.
    pub tier: String,
    /// `spec.priority`.
    pub priority: Option<i64>,
    /// `spec.subject` as declared.
    pub subject: Value,
    /// Each rule and the flows it matched.
    pub rules: Vec<ClusterRuleOut>,
}

/// The report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// One per NetworkPolicy, sorted by namespace and name.
    pub policies: Vec<PolicyReport>,
    /// One per ClusterNetworkPolicy, sorted by tier, priority and name.
    pub cluster_policies: Vec<ClusterPolicyReport>,
    /// One per AI-tier workload, sorted.
    pub workloads: Vec<WorkloadReport>,
    /// What it covers.
    pub coverage: Coverage,
}

/// Why the report cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The inventory cannot be used.
    #[error(transparent)]
    Replay(#[from] super::replay::ReplayError),
    /// A findings log cannot be read.
    #[error("cannot read findings log {path}")]
    Findings {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

fn owner(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    annotations: Option<&BTreeMap<String, String>>,
) -> (Option<String>, String) {
    if let Some(owner) = annotations.and_then(|a| a.get(OWNER_ANNOTATION)) {
        return (Some(owner.clone()), "annotation".to_owned());
    }
    for key in ["app.kubernetes.io/managed-by", "owner", "team"] {
        if let Some(owner) = meta.labels.as_ref().and_then(|l| l.get(key)) {
            return (Some(owner.clone()), format!("label:{key}"));
        }
    }
    (None, "none".to_owned())
}

/// One policy per rule, named `name#direction[i]`, so the engine says which
/// rules let a flow through.
fn single_rules(policies: &[NetworkPolicy]) -> Vec<NetworkPolicy> {
    let mut singles = Vec::new();
    for policy in policies {
        let Some(spec) = &policy.spec else { continue };
        let name = policy.metadata.name.clone().unwrap_or_default();
        for (index, rule) in spec.ingress.iter().flatten().enumerate() {
            let mut single = policy.clone();
            single.metadata.name = Some(format!("{name}#ingress[{index}]"));
            single.spec = Some(NetworkPolicySpec {
                pod_selector: spec.pod_selector.clone(),
                policy_types: Some(vec!["Ingress".to_owned()]),
                ingress: Some(vec![rule.clone()]),
                egress: None,
            });
            singles.push(single);
        }
        for (index, rule) in spec.egress.iter().flatten().enumerate() {
            let mut single = policy.clone();
            single.metadata.name = Some(format!("{name}#egress[{index}]"));
            single.spec = Some(NetworkPolicySpec {
                pod_selector: spec.pod_selector.clone(),
                policy_types: Some(vec!["Egress".to_owned()]),
                ingress: None,
                egress: Some(vec![rule.clone()]),
            });
            singles.push(single);
        }
    }
    singles
}

fn policy_types(policy: &NetworkPolicy) -> Vec<String> {
    let Some(spec) = &policy.spec else { return Vec::new() };
    match &spec.policy_types {
        Some(types) => types.clone(),
        // The API server's default: Ingress, plus Egress when egress rules exist.
        None if spec.egress.is_some() => vec!["Ingress".to_owned(), "Egress".to_owned()],
        None => vec!["Ingress".to_owned()],
    }
}

fn key_of(policy: &ObjectRef) -> (String, String) {
    (policy.namespace.clone(), policy.name.clone())
}

/// Makes the report.
pub fn report(args: &ReportConfig) -> Result<Report, ReportError> {
    let mut cluster = args.recorded.cluster()?;
    let (edges, input) = args.recorded.edges();
    cluster.adopt_gone(&edges);
    let mut policies = cluster.policies();
    policies.sort_by_key(|policy| (policy.metadata.namespace.clone(), policy.metadata.name.clone()));
    let (set, _, _) = cluster.compile(&policies, cluster.cluster_policies());
    let (rules_set, _, _) = cluster.compile(&single_rules(&policies), &[]);
    let mut judges = cluster.judges(&set, &edges);

    // The inventory keeps no annotations (it strips what judging does not
    // need): the source kept them aside as it read the policies.
    let annotations = cluster.annotations();
    let mut reports: BTreeMap<(String, String), PolicyReport> = BTreeMap::new();
    let mut rule_usage: BTreeMap<(String, String), Usage> = BTreeMap::new();
    for policy in &policies {
        let meta = &policy.metadata;
        let namespace = meta.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let name = meta.name.clone().unwrap_or_default();
        let (owner, owner_source) = owner(meta, annotations.get(&(namespace.clone(), name.clone())));
        let spec = policy.spec.clone().unwrap_or_default();
        let rule = |direction: &'static str, index: usize, peers: Value, ports: Value| RuleOut {
            direction,
            index,
            peers,
            ports,
            flows: 0,
            usage: Usage::default(),
            unused: true,
        };
        let mut rules = Vec::new();
        for (index, r) in spec.ingress.iter().flatten().enumerate() {
            rules.push(rule(
                "ingress",
                index,
                serde_json::to_value(&r.from).unwrap_or_default(),
                serde_json::to_value(&r.ports).unwrap_or_default(),
            ));
        }
        for (index, r) in spec.egress.iter().flatten().enumerate() {
            rules.push(rule(
                "egress",
                index,
                serde_json::to_value(&r.to).unwrap_or_default(),
                serde_json::to_value(&r.ports).unwrap_or_default(),
            ));
        }
        reports.insert(
            (namespace.clone(), name.clone()),
            PolicyReport {
                namespace,
                name,
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
                created: meta.creation_timestamp.as_ref().map(|t| t.0.to_string()),
                owner,
                owner_source,
                selected: Vec::new(),
                workloads: Vec::new(),
                policy_types: policy_types(policy),
                rules,
                allowed: Usage::default(),
                denied_attempts: Usage::default(),
                enforcement_gaps: Usage::default(),
                recorded_versions: Vec::new(),
            },
        );
    }
    // Selected pods: those each policy isolates in some direction.
    let mut pods: Vec<_> = cluster.snapshot().pods_shared().cloned().collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let workload_of = |pod: &crate::inventory::model::Pod| {
        let endpoint = pod.ips.first().map(|ip| cluster.snapshot().resolve_remote(*ip, std::time::SystemTime::now()));
        endpoint.and_then(|e| e.workload.clone())
    };
    for pod in &pods {
        let isolation = set.engine().isolating(pod);
        let selecting: BTreeSet<_> = isolation.ingress.iter().chain(&isolation.egress).map(|p| key_of(p)).collect();
        for key in selecting {
            if let Some(report) = reports.get_mut(&key) {
                let workload = workload_of(pod);
                if let Some(workload) = &workload
                    && !report.workloads.contains(workload)
                {
                    report.workloads.push(workload.clone());
                }
                report.selected.push(SelectedPod { namespace: pod.namespace.clone(), pod: pod.name.clone(), workload });
            }
        }
    }
    let mut versions: BTreeMap<(String, String), BTreeMap<Option<String>, u64>> = BTreeMap::new();
    let mut cluster_usage: BTreeMap<(String, &'static str, u32), Usage> = BTreeMap::new();
    let mut judged: Vec<(&EdgeKey, &EdgeStats, Judged)> = Vec::new();
    for (key, stats) in edges.sorted() {
        let Some(verdict) = cluster.judge(&mut judges, &edges, key, stats) else { continue };
        for policy in &verdict.verdict.policies {
            if let Some(report) = reports.get_mut(&key_of(&policy.0)) {
                let usage = match verdict.verdict.verdict {
                    VerdictKind::Allowed | VerdictKind::IntentViolation => &mut report.allowed,
                    VerdictKind::DeniedAttempt => &mut report.denied_attempts,
                    VerdictKind::EnforcementGap => &mut report.enforcement_gaps,
                    // Neither allowed nor denied by it: no usage either way.
                    VerdictKind::Undecidable => continue,
                };
                usage.add(stats);
            }
        }
        if verdict.policy_allows() && !verdict.verdict.policies.is_empty() {
            for name in rule_hits(&cluster, &rules_set, &edges, key) {
                rule_usage.entry(name).or_default().add(stats);
            }
        }
        for step in cluster_hits(&cluster, &set, &edges, key, stats) {
            cluster_usage.entry(step).or_default().add(stats);
        }
        for cited in &stats.cited {
            if let Some((namespace, name)) = cited.policy.split_once('/') {
                let key = (namespace.to_owned(), name.to_owned());
                if reports.get(&key).is_some_and(|r| r.resource_version != cited.resource_version) {
                    *versions.entry(key).or_default().entry(cited.resource_version.clone()).or_default() += 1;
                }
            }
        }
        judged.push((key, stats, verdict));
    }
    for ((namespace, single), usage) in rule_usage {
        let Some((name, rule)) = single.rsplit_once('#') else { continue };
        let Some(report) = reports.get_mut(&(namespace, name.to_owned())) else { continue };
        let Some(rule) = report.rules.iter_mut().find(|r| format!("{}[{}]", r.direction, r.index) == rule) else {
            continue;
        };
        rule.flows = usage.flows;
        rule.unused = usage.flows == 0;
        rule.usage = usage;
    }
    for (key, cited) in versions {
        if let Some(report) = reports.get_mut(&key) {
            report.recorded_versions = cited
                .into_iter()
                .map(|(resource_version, edges)| RecordedVersion { resource_version, edges })
                .collect();
        }
    }

    let cluster_policies = cluster_reports(cluster.cluster_policies(), &cluster_usage);
    let findings = read_findings(&args.findings)?;
    let workloads = workloads(&cluster, &edges, &set, &judged, &pods, &findings.by_uid);
    let gone_pods = cluster.gone_pods(&edges);
    let mut notes = Vec::new();
    if input.problem_count() > 0 {
        notes.push(format!("{} input lines or files could not be used", input.problem_count()));
    }
    if input.records == 0 {
        notes.push("no flow records in the input".to_owned());
    }
    if !findings.degraded.is_empty() {
        notes.push(format!("{} findings were written while events or records were lost", findings.degraded.len()));
    }
    if !gone_pods.is_empty() {
        notes.push(format!(
            "{} recorded pods are not in the manifests: judged as their records describe them",
            gone_pods.len()
        ));
    }
    if edges.open_overflow > 0 {
        notes.push(format!(
            "{} records came while too many flows were open: some flows may be counted twice",
            edges.open_overflow
        ));
    }
    let coverage = Coverage {
        from: edges.span.map(|(from, _)| time(from)),
        to: edges.span.map(|(_, to)| time(to)),
        nodes: edges.records_by_node(),
        flows: judged.iter().map(|(_, stats, _)| stats.flows()).sum(),
        edges: judged.len() as u64,
        input,
        degraded_windows: findings.degraded,
        gone_pods,
        complete: notes.is_empty(),
        notes,
    };
    Ok(Report { policies: reports.into_values().collect(), cluster_policies, workloads, coverage })
}

/// The single-rule policies (`namespace`, `name#direction[i]`) that let an edge through.
fn rule_hits(cluster: &Cluster, rules: &PolicySet, edges: &Edges, key: &EdgeKey) -> Vec<(String, String)> {
    let (Some(port), Some(protocol)) = (key.port, crate::flow::Protocol(key.protocol).with_ports()) else {
        return Vec::new();
    };
    let endpoint = |end: &EndKey| match cluster.end_pod(edges, end) {
        (Some(pod), ip) => Endpoint::Pod { pod, ip: Some(ip) },
        (None, ip) => Endpoint::External(ip),
    };
    let verdict = rules.engine().verdict(endpoint(&key.src), endpoint(&key.dst), port, protocol);
    verdict.egress.policies.iter().chain(&verdict.ingress.policies).map(|policy| key_of(policy)).collect()
}

/// The ClusterNetworkPolicy rules (name, direction, index) that matched an
/// edge on either side, `Pass` included, in the engine's evaluation. A
/// `domainNames` peer is matched with the names the source resolved for the
/// destination, as the judge matches it; without names it matches nothing
/// (the judge calls such a flow undecidable), and a side left undecidable
/// counts for none of its rules: a later `Deny` that matched did not decide it.
fn cluster_hits(
    cluster: &Cluster,
    set: &PolicySet,
    edges: &Edges,
    key: &EdgeKey,
    stats: &EdgeStats,
) -> Vec<(String, &'static str, u32)> {
    let (Some(port), Some(protocol)) = (key.port, crate::flow::Protocol(key.protocol).with_ports()) else {
        return Vec::new();
    };
    let endpoint = |end: &EndKey| match cluster.end_pod(edges, end) {
        (Some(pod), ip) => Endpoint::Pod { pod, ip: Some(ip) },
        (None, ip) => Endpoint::External(ip),
    };
    let names = (stats.resolved || !stats.names.is_empty()).then_some(stats.names.as_slice());
    let verdict = set.engine().verdict_named(endpoint(&key.src), endpoint(&key.dst), port, protocol, names);
    fn decided(side: &crate::policy::SideVerdict) -> &[crate::policy::ClusterStep] {
        if side.undecidable.is_some() { &[] } else { &side.cluster }
    }
    let egress = decided(&verdict.egress).iter().map(|step| (step.policy.name.clone(), "egress", step.rule));
    let ingress = decided(&verdict.ingress).iter().map(|step| (step.policy.name.clone(), "ingress", step.rule));
    egress.chain(ingress).collect()
}

/// One report per ClusterNetworkPolicy, its rules' usage from `usage`.
fn cluster_reports(
    policies: &[ClusterNetworkPolicy],
    usage: &BTreeMap<(String, &'static str, u32), Usage>,
) -> Vec<ClusterPolicyReport> {
    let mut reports: Vec<ClusterPolicyReport> = policies
        .iter()
        .map(|policy| {
            let name = policy.metadata.name.clone().unwrap_or_default();
            let (owner, owner_source) = owner(&policy.metadata, policy.metadata.annotations.as_ref());
            let rule = |direction: &'static str,
                        index: usize,
                        rule_name: &Option<String>,
                        action: &str,
                        peers: Value,
                        protocols: Value| {
                let used = u32::try_from(index)
                    .ok()
                    .and_then(|at| usage.get(&(name.clone(), direction, at)))
                    .cloned()
                    .unwrap_or_default();
                ClusterRuleOut {
                    direction,
                    index,
                    name: rule_name.clone(),
                    action: action.to_owned(),
                    peers,
                    protocols,
                    flows: used.flows,
                    unused: used.flows == 0,
                    usage: used,
                }
            };
            let mut rules = Vec::new();
            for (index, r) in policy.spec.ingress.iter().flatten().enumerate() {
                let peers = serde_json::to_value(&r.from).unwrap_or_default();
                let protocols = serde_json::to_value(&r.protocols).unwrap_or_default();
                rules.push(rule("ingress", index, &r.name, &r.action, peers, protocols));
            }
            for (index, r) in policy.spec.egress.iter().flatten().enumerate() {
                let peers = serde_json::to_value(&r.to).unwrap_or_default();
                let protocols = serde_json::to_value(&r.protocols).unwrap_or_default();
                rules.push(rule("egress", index, &r.name, &r.action, peers, protocols));
            }
            ClusterPolicyReport {
                uid: policy.metadata.uid.clone(),
                resource_version: policy.metadata.resource_version.clone(),
                created: policy.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
                owner,
                owner_source,
                tier: policy.spec.tier.clone(),
                priority: policy.spec.priority,
                subject: serde_json::to_value(&policy.spec.subject).unwrap_or_default(),
                rules,
                name,
            }
        })
        .collect();
    // Evaluation order: Admin before Baseline, lower priority first.
    reports.sort_by(|a, b| (a.tier != "Admin", a.priority, &a.name).cmp(&(b.tier != "Admin", b.priority, &b.name)));
    reports
}

struct Findings {
    by_uid: BTreeMap<String, BTreeMap<String, u64>>,
    degraded: Vec<Value>,
}

fn collect_uids(value: &Value, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    ("uid" | "src_uid" | "dst_uid", Value::String(uid)) => {
                        out.insert(uid.clone());
                    }
                    _ => collect_uids(value, out),
                }
            }
        }
        Value::Array(values) => values.iter().for_each(|value| collect_uids(value, out)),
        _ => {}
    }
}

/// Reads findings logs: the last line of each finding counts (the log
/// rewrites a finding as its count grows), by the pods it names.
fn read_findings(paths: &[PathBuf]) -> Result<Findings, ReportError> {
    let mut last: BTreeMap<String, Value> = BTreeMap::new();
    for path in paths {
        let file = std::fs::File::open(path).map_err(|source| ReportError::Findings { path: path.clone(), source })?;
        for line in io::BufReader::new(file).lines() {
            let line = line.map_err(|source| ReportError::Findings { path: path.clone(), source })?;
            let Ok(finding) = serde_json::from_str::<Value>(&line) else { continue };
            let key = format!(
                "{}|{}|{}|{}|{}",
                finding["kind"], finding["rule"], finding["source"], finding["destination"], finding["pod"]
            );
            last.insert(key, finding);
        }
    }
    let mut findings = Findings { by_uid: BTreeMap::new(), degraded: Vec::new() };
    for finding in last.values() {
        let kind = finding["kind"].as_str().unwrap_or("unknown").to_owned();
        let mut uids = BTreeSet::new();
        collect_uids(finding, &mut uids);
        for uid in uids {
            *findings.by_uid.entry(uid).or_default().entry(kind.clone()).or_default() += 1;
        }
        if finding.get("coverage").is_some_and(|coverage| coverage != "complete") {
            findings.degraded.push(serde_json::json!({
                "time": finding.get("last_seen").or(finding.get("time")).cloned().unwrap_or(Value::Null),
                "kind": kind,
                "coverage": finding["coverage"].clone(),
            }));
        }
    }
    Ok(findings)
}

fn workloads(
    cluster: &Cluster,
    edges: &Edges,
    set: &PolicySet,
    judged: &[(&EdgeKey, &EdgeStats, Judged)],
    pods: &[std::sync::Arc<crate::inventory::model::Pod>],
    findings: &BTreeMap<String, BTreeMap<String, u64>>,
) -> Vec<WorkloadReport> {
    let mut out: BTreeMap<(String, String, String), WorkloadReport> = BTreeMap::new();
    let mut uids: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    for pod in pods {
        let Some(tier) = cluster.intents().tier_of(pod) else { continue };
        let endpoint = pod.ips.first().map(|ip| cluster.snapshot().resolve_remote(*ip, std::time::SystemTime::now()));
        let (kind, name) = endpoint
            .and_then(|e| e.workload.clone())
            .map_or(("Pod".to_owned(), pod.name.clone()), |w| (w.kind, w.name));
        let key = (pod.namespace.clone(), kind.clone(), name.clone());
        let isolation = set.engine().isolating(pod);
        let report = out.entry(key.clone()).or_insert_with(|| WorkloadReport {
            namespace: pod.namespace.clone(),
            kind,
            name,
            tier: tier.as_str().to_owned(),
            pods: Vec::new(),
            isolation: BTreeMap::new(),
            intents: Vec::new(),
            peers: Vec::new(),
            findings: BTreeMap::new(),
        });
        report.pods.push(pod.name.clone());
        for (direction, policies) in [("ingress", &isolation.ingress), ("egress", &isolation.egress)] {
            let names = report.isolation.entry(direction).or_default();
            for policy in policies {
                let name = policy.to_string();
                if !names.contains(&name) {
                    names.push(name);
                }
            }
            names.sort();
        }
        for requirement in cluster.intents().required_isolation(pod) {
            let name = format!("{}/{}", requirement.intent.namespace, requirement.intent.name);
            if !report.intents.contains(&name) {
                report.intents.push(name);
            }
        }
        uids.entry(key).or_default().insert(pod.uid.clone());
    }
    for (key, report) in &mut out {
        let Some(own) = uids.get(key) else { continue };
        let is_own = |end: &EndKey| match end {
            EndKey::Pod(id) => edges.pod(*id).is_some_and(|pod| own.contains(&pod.uid)),
            EndKey::Address(_) => false,
        };
        for (edge, stats, verdict) in judged {
            let (direction, other, kind, dns) = if is_own(&edge.src) {
                ("egress", &edge.dst, stats.kinds.1, stats.names.iter().map(ToString::to_string).collect())
            } else if is_own(&edge.dst) {
                ("ingress", &edge.src, stats.kinds.0, Vec::new())
            } else {
                continue;
            };
            report.peers.push(PeerOut {
                direction,
                peer: EndOut::of(cluster, edges, other, kind, dns),
                port: edge.port,
                protocol: crate::flow::Protocol(edge.protocol).name().into_owned(),
                flows: stats.flows(),
                verdict: verdict.verdict.verdict.as_str(),
            });
        }
        for uid in own {
            for (kind, count) in findings.get(uid).into_iter().flatten() {
                *report.findings.entry(kind.clone()).or_default() += count;
            }
        }
    }
    out.into_values().collect()
}

/// A rule's Flows, First seen and Last seen cells of a Markdown table.
fn usage_cells(unused: bool, flows: u64, usage: &Usage) -> String {
    let flows = if unused { "**unused**".to_owned() } else { flows.to_string() };
    let seen = |time: &Option<String>| time.as_deref().unwrap_or("-").to_owned();
    format!("{flows} | {} | {}", seen(&usage.first_seen), seen(&usage.last_seen))
}

/// Renders the report as Markdown.
pub fn markdown(report: &Report) -> String {
    let mut md = String::from("# Network policy evidence report\n\n");
    let c = &report.coverage;
    let _ = writeln!(md, "## Coverage\n");
    let _ = writeln!(md, "- Time range: {} .. {}", c.from.as_deref().unwrap_or("-"), c.to.as_deref().unwrap_or("-"));
    let nodes: Vec<String> = c.nodes.iter().map(|(node, records)| format!("{node} ({records} records)")).collect();
    let _ = writeln!(md, "- Nodes: {}", if nodes.is_empty() { "none".to_owned() } else { nodes.join(", ") });
    let _ = writeln!(md, "- Flows judged: {} in {} edges", c.flows, c.edges);
    if c.complete {
        let _ = writeln!(md, "- Complete: nothing was left out or lost");
    } else {
        let _ = writeln!(md, "- **Cannot vouch for everything:**");
        for note in &c.notes {
            let _ = writeln!(md, "  - {note}");
        }
    }
    let _ = writeln!(md, "\n## NetworkPolicies\n");
    for policy in &report.policies {
        let _ = writeln!(md, "### {}/{}\n", policy.namespace, policy.name);
        let _ = writeln!(
            md,
            "- uid: `{}`, resourceVersion: `{}`, created: {}",
            policy.uid.as_deref().unwrap_or("-"),
            policy.resource_version.as_deref().unwrap_or("-"),
            policy.created.as_deref().unwrap_or("-")
        );
        let _ = writeln!(md, "- Owner: {} ({})", policy.owner.as_deref().unwrap_or("unknown"), policy.owner_source);
        let _ = writeln!(md, "- Policy types: {}", policy.policy_types.join(", "));
        let selected: Vec<String> = policy.selected.iter().map(|p| format!("{}/{}", p.namespace, p.pod)).collect();
        let _ =
            writeln!(md, "- Selects: {}", if selected.is_empty() { "no pod".to_owned() } else { selected.join(", ") });
        let _ = writeln!(
            md,
            "- Allowed {} flows; denied attempts {}; enforcement gaps {}",
            policy.allowed.flows, policy.denied_attempts.flows, policy.enforcement_gaps.flows
        );
        for version in &policy.recorded_versions {
            let _ = writeln!(
                md,
                "- Records of {} edges cite resourceVersion `{}`, not this one",
                version.edges,
                version.resource_version.as_deref().unwrap_or("-")
            );
        }
        let _ = writeln!(md, "\n| Rule | Peers | Ports | Flows | First seen | Last seen |\n|---|---|---|---|---|---|");
        for rule in &policy.rules {
            let used = usage_cells(rule.unused, rule.flows, &rule.usage);
            let _ =
                writeln!(md, "| {}[{}] | `{}` | `{}` | {used} |", rule.direction, rule.index, rule.peers, rule.ports);
        }
        md.push('\n');
    }
    if !report.cluster_policies.is_empty() {
        let _ = writeln!(md, "## ClusterNetworkPolicies\n");
    }
    for policy in &report.cluster_policies {
        let _ = writeln!(md, "### cnp/{}\n", policy.name);
        let _ = writeln!(
            md,
            "- Tier: {}, priority: {}; uid: `{}`, resourceVersion: `{}`, created: {}",
            policy.tier,
            policy.priority.map_or_else(|| "-".to_owned(), |p| p.to_string()),
            policy.uid.as_deref().unwrap_or("-"),
            policy.resource_version.as_deref().unwrap_or("-"),
            policy.created.as_deref().unwrap_or("-")
        );
        let _ = writeln!(md, "- Owner: {} ({})", policy.owner.as_deref().unwrap_or("unknown"), policy.owner_source);
        let _ = writeln!(md, "- Subject: `{}`", policy.subject);
        let _ = writeln!(
            md,
            "\n| Rule | Action | Peers | Protocols | Flows | First seen | Last seen |\n|---|---|---|---|---|---|---|"
        );
        for rule in &policy.rules {
            let used = usage_cells(rule.unused, rule.flows, &rule.usage);
            let _ = writeln!(
                md,
                "| {}[{}]{} | {} | `{}` | `{}` | {used} |",
                rule.direction,
                rule.index,
                rule.name.as_deref().map_or_else(String::new, |name| format!(" {name}")),
                rule.action,
                rule.peers,
                rule.protocols,
            );
        }
        md.push('\n');
    }
    let _ = writeln!(md, "## AI-tier workloads\n");
    for workload in &report.workloads {
        let _ =
            writeln!(md, "### {}/{} ({}, tier {})\n", workload.namespace, workload.name, workload.kind, workload.tier);
        for (direction, policies) in &workload.isolation {
            let _ = writeln!(
                md,
                "- {direction} isolation: {}",
                if policies.is_empty() { "**none**".to_owned() } else { policies.join(", ") }
            );
        }
        let _ = writeln!(
            md,
            "- Intents: {}",
            if workload.intents.is_empty() { "none".to_owned() } else { workload.intents.join(", ") }
        );
        let findings: Vec<String> = workload.findings.iter().map(|(kind, count)| format!("{kind}: {count}")).collect();
        let _ =
            writeln!(md, "- Findings: {}", if findings.is_empty() { "none".to_owned() } else { findings.join(", ") });
        for peer in &workload.peers {
            let port = peer.port.map_or_else(String::new, |port| format!(" {port}"));
            let _ = writeln!(
                md,
                "- {} {}{port}/{}: {} flows, {}",
                peer.direction,
                peer.peer.describe(),
                peer.protocol,
                peer.flows,
                peer.verdict
            );
        }
        md.push('\n');
    }
    md
}

/// Renders the report as one self-contained HTML page (no scripts, no
/// links out): the Markdown's content, escaped, in a styled page.
pub fn html(report: &Report) -> String {
    let escape = |text: &str| text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let mut body = String::new();
    let mut in_table = false;
    for line in markdown(report).lines() {
        if let Some(cells) = line.strip_prefix('|') {
            if line.starts_with("|---") {
                continue;
            }
            if !in_table {
                body.push_str("<table>\n");
                in_table = true;
            }
            body.push_str("<tr>");
            for cell in cells.trim_end_matches('|').split(" | ") {
                let _ = write!(body, "<td>{}</td>", escape(cell.trim()));
            }
            body.push_str("</tr>\n");
            continue;
        }
        if in_table {
            body.push_str("</table>\n");
            in_table = false;
        }
        if let Some(title) = line.strip_prefix("### ") {
            let _ = writeln!(body, "<h3>{}</h3>", escape(title));
        } else if let Some(title) = line.strip_prefix("## ") {
            let _ = writeln!(body, "<h2>{}</h2>", escape(title));
        } else if let Some(title) = line.strip_prefix("# ") {
            let _ = writeln!(body, "<h1>{}</h1>", escape(title));
        } else if let Some(item) = line.trim_start().strip_prefix("- ") {
            let _ = writeln!(body, "<p class=\"item\">{}</p>", escape(item).replace("**", ""));
        }
    }
    if in_table {
        body.push_str("</table>\n");
    }
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Network policy evidence report</title>\n<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto}}table{{border-collapse:collapse}}td{{border:1px solid #ccc;padding:2px 6px;font-size:90%}}.item{{margin:2px 0}}</style></head><body>\n{body}</body></html>\n"
    )
}

/// The command.
pub fn run(args: &ReportConfig) -> anyhow::Result<()> {
    let report = report(args)?;
    report.coverage.input.describe(&mut io::stderr().lock())?;
    let text = match args.format {
        ReportFormat::Json => serde_json::to_string_pretty(&report)? + "\n",
        ReportFormat::Markdown => markdown(&report),
        ReportFormat::Html => html(&report),
    };
    match &args.output {
        Some(path) => std::fs::write(path, text)?,
        None => io::stdout().lock().write_all(text.as_bytes())?,
    }
    Ok(())
}
