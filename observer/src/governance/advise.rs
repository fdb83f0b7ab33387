//! `observer policy advise`: least-privilege NetworkPolicies from recorded
//! traffic, verified by replaying it.
//!
//! In: the manifests (pods and their labels, current policies) and flow
//! logs. Out: one NetworkPolicy per workload seen (ingress and egress, exact
//! ports and protocols, peers by stable workload labels, addresses outside
//! the cluster as /32 or /128 ipBlocks with their DNS names in comments),
//! as YAML on stdout or one file per workload; only flows the current
//! policies and intents allow are allowed, and the rest is listed instead.
//! Before anything is written, every recorded allowed flow is replayed
//! against the advice by the daemon's judge and must stay allowed.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{self, Write},
    path::PathBuf,
};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::{Value, json};

use super::{
    edges::{EdgeKey, EdgeStats, Edges, EndKey},
    output::EdgeOut,
    replay::{Cluster, Recorded},
};
use crate::{flow::Protocol, inventory::EndpointKind, judge::VerdictKind};

/// Label keys tried, in order, to select a workload's pods: the first that
/// every pod of the workload carries with one value. Never pod names, never
/// per-pod labels (`pod-template-hash`, ...).
pub const STABLE_KEYS: [&str; 5] =
    ["app.kubernetes.io/name", "app", "app.kubernetes.io/instance", "app.kubernetes.io/component", "k8s-app"];

/// What `observer policy advise` reads and writes (from its flags in [`crate::cli::policy`]).
#[derive(Debug)]
pub struct AdviseConfig {
    /// The cluster and the flow logs.
    pub recorded: Recorded,
    /// Write one file per workload here (`<namespace>.<workload>.yaml`) instead of stdout.
    pub output_dir: Option<PathBuf>,
    /// Also write, per FlowIntent with `egress.forbid`, an Admin-tier
    /// ClusterNetworkPolicy denying its forbidden peers (a guardrail
    /// namespace owners cannot override).
    pub guardrails: bool,
    /// Only workloads of these namespaces.
    pub namespace: Vec<String>,
}

/// A workload: namespace, kind, name.
type WorkloadKey = (String, String, String);

/// One advised policy.
#[derive(Clone, Debug)]
pub struct Advice {
    /// The workload it is for.
    pub workload: WorkloadKey,
    /// The policy.
    pub policy: NetworkPolicy,
    /// The YAML document, with its explaining comments.
    pub yaml: String,
}

/// What advise found.
#[derive(Clone, Debug, Default)]
pub struct Advised {
    /// Policies, sorted by namespace and workload.
    pub policies: Vec<Advice>,
    /// Recorded edges it does not allow (not allowed now: gaps, denied
    /// attempts, intent violations), described.
    pub refused: Vec<String>,
    /// Recorded allowed edges the advice would not allow (must be empty).
    pub unverified: Vec<String>,
    /// Admin-tier guardrails for FlowIntents' forbidden peers (`--guardrails`).
    pub guardrails: Vec<super::guardrail::Guardrail>,
}

/// Why advise cannot run.
#[derive(Debug, thiserror::Error)]
pub enum AdviseError {
    /// The inventory cannot be used.
    #[error(transparent)]
    Replay(#[from] super::replay::ReplayError),
    /// The advice would deny recorded allowed flows.
    #[error("the advice would deny recorded allowed flows; nothing written:\n{}", .0.join("\n"))]
    Unverified(Vec<String>),
    /// A file cannot be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
}

struct Selector {
    labels: BTreeMap<String, String>,
    why: String,
}

fn workload_of(edges: &Edges, id: u32) -> Option<WorkloadKey> {
    let pod = edges.pod(id)?;
    let (kind, name) = pod.workload.clone().map_or_else(|| ("Pod".to_owned(), pod.name.clone()), |w| (w.kind, w.name));
    Some((pod.namespace.clone(), kind, name))
}

/// The labels that select a workload's pods.
fn selector(cluster: &Cluster, edges: &Edges, ids: &BTreeSet<u32>) -> Option<Selector> {
    let labels: Vec<_> = ids.iter().filter_map(|id| cluster.pod(edges, *id)).map(|pod| &pod.labels).collect();
    for key in STABLE_KEYS {
        let values: BTreeSet<_> = labels.iter().map(|labels| labels.get(key)).collect();
        if let [Some(value)] = values.into_iter().collect::<Vec<_>>()[..] {
            return Some(Selector {
                labels: BTreeMap::from([(key.to_owned(), value.clone())]),
                why: format!(
                    "`{key}` is the first of {} that all its pods carry with one value",
                    STABLE_KEYS.join(", ")
                ),
            });
        }
    }
    // Else every label its pods share, but the per-pod ones.
    let first = labels.first()?;
    let common: BTreeMap<String, String> = first
        .iter()
        .filter(|(key, value)| {
            !matches!(
                key.as_str(),
                "pod-template-hash" | "controller-revision-hash" | "statefulset.kubernetes.io/pod-name"
            ) && labels.iter().all(|labels| labels.get(*key) == Some(value))
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    (!common.is_empty()).then(|| Selector {
        labels: common,
        why: "no stable key is shared: every label its pods share but the per-pod ones".to_owned(),
    })
}

/// Who is at the other end of a rule.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Peer {
    Pods { namespace: String, labels: BTreeMap<String, String> },
    Address(std::net::IpAddr),
}

fn peer_json(peer: &Peer, own_namespace: &str) -> Value {
    match peer {
        Peer::Pods { namespace, labels } if namespace == own_namespace => {
            json!({"podSelector": {"matchLabels": labels}})
        }
        Peer::Pods { namespace, labels } => json!({
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
            "podSelector": {"matchLabels": labels}
        }),
        Peer::Address(ip) => {
            let bits = if ip.is_ipv4() { 32 } else { 128 };
            json!({"ipBlock": {"cidr": format!("{ip}/{bits}")}})
        }
    }
}

/// Makes the advice and verifies it.
pub fn advise(args: &AdviseConfig) -> Result<Advised, AdviseError> {
    let mut cluster = args.recorded.cluster()?;
    let (edges, input) = args.recorded.edges();
    input.describe(&mut io::stderr().lock()).ok();
    cluster.adopt_gone(&edges);
    let (current, _, _) = cluster.compile(&cluster.policies(), cluster.cluster_policies());
    let mut judges = cluster.judges(&current, &edges);
    let mut allowed: Vec<(&EdgeKey, &EdgeStats)> = Vec::new();
    let mut advised = Advised::default();
    for (key, stats) in edges.sorted() {
        let Some(judged) = cluster.judge(&mut judges, &edges, key, stats) else { continue };
        if judged.verdict.verdict == VerdictKind::Allowed {
            allowed.push((key, stats));
        } else {
            let edge = EdgeOut::of(&cluster, &edges, key, stats);
            advised.refused.push(format!(
                "{}: {} ({} flows): {}",
                edge.describe(),
                judged.verdict.verdict.as_str(),
                edge.flows,
                judged.verdict.reason
            ));
        }
    }
    // The pods of each workload seen.
    let mut pods: BTreeMap<WorkloadKey, BTreeSet<u32>> = BTreeMap::new();
    for (key, _) in &allowed {
        for end in [key.src, key.dst] {
            if let EndKey::Pod(id) = end
                && let Some(workload) = workload_of(&edges, id)
            {
                pods.entry(workload).or_default().insert(id);
            }
        }
    }
    let selectors: BTreeMap<&WorkloadKey, Option<Selector>> =
        pods.iter().map(|(workload, ids)| (workload, selector(&cluster, &edges, ids))).collect();
    let peer_of = |end: &EndKey, kind: EndpointKind| -> Option<Peer> {
        match end {
            EndKey::Pod(id) => {
                let workload = workload_of(&edges, *id)?;
                let selector = selectors.get(&workload)?.as_ref()?;
                Some(Peer::Pods { namespace: workload.0, labels: selector.labels.clone() })
            }
            // The node's own traffic is always allowed: it needs no rule.
            EndKey::Address(_) if matches!(kind, EndpointKind::Host) => None,
            EndKey::Address(ip) => Some(Peer::Address(*ip)),
        }
    };
    type Rules = BTreeMap<Peer, BTreeSet<(String, u16)>>;
    let mut ingress: BTreeMap<WorkloadKey, Rules> = BTreeMap::new();
    let mut egress: BTreeMap<WorkloadKey, Rules> = BTreeMap::new();
    let mut names: BTreeMap<std::net::IpAddr, BTreeSet<String>> = BTreeMap::new();
    for (key, stats) in &allowed {
        let (Some(port), Some(protocol)) = (key.port, Protocol(key.protocol).k8s_name()) else {
            continue;
        };
        let protocol = protocol.to_owned();
        if let EndKey::Address(ip) = key.dst {
            names.entry(ip).or_default().extend(stats.names.iter().map(ToString::to_string));
        }
        if let (EndKey::Pod(id), Some(peer)) = (key.dst, peer_of(&key.src, stats.kinds.0))
            && let Some(workload) = workload_of(&edges, id)
        {
            ingress.entry(workload).or_default().entry(peer).or_default().insert((protocol.clone(), port));
        }
        if let (EndKey::Pod(id), Some(peer)) = (key.src, peer_of(&key.dst, stats.kinds.1))
            && let Some(workload) = workload_of(&edges, id)
        {
            egress.entry(workload).or_default().entry(peer).or_default().insert((protocol, port));
        }
    }
    for (workload, selector) in &selectors {
        if !args.namespace.is_empty() && !args.namespace.contains(&workload.0) {
            continue;
        }
        let Some(selector) = selector else {
            advised.refused.push(format!(
                "{}/{} {}: its pods share no label to select them by",
                workload.0, workload.1, workload.2
            ));
            continue;
        };
        let rules = |rules: Option<&Rules>, peers_key: &str| -> Vec<Value> {
            rules
                .into_iter()
                .flatten()
                .map(|(peer, ports)| {
                    let ports: Vec<Value> =
                        ports.iter().map(|(protocol, port)| json!({"protocol": protocol, "port": port})).collect();
                    json!({peers_key: [peer_json(peer, &workload.0)], "ports": ports})
                })
                .collect()
        };
        let name = format!("{}-least-privilege", workload.2.to_lowercase());
        let value = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": workload.0,
                         "labels": {"app.kubernetes.io/managed-by": "observer-policy-advise"}},
            "spec": {
                "podSelector": {"matchLabels": selector.labels},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": rules(ingress.get(*workload), "from"),
                "egress": rules(egress.get(*workload), "to"),
            }
        });
        let Ok(policy) = serde_json::from_value::<NetworkPolicy>(value.clone()) else { continue };
        let mut yaml = format!(
            "# Least-privilege policy for {} {}/{}, from recorded traffic (observer policy advise).\n# Pods selected by {}: {}.\n",
            workload.1,
            workload.0,
            workload.2,
            serde_json::to_string(&selector.labels).unwrap_or_default(),
            selector.why
        );
        for (peer, _) in egress.get(*workload).into_iter().flatten() {
            if let Peer::Address(ip) = peer
                && let Some(dns) = names.get(ip).filter(|names| !names.is_empty())
            {
                let _ = writeln!(
                    yaml,
                    "# {ip}: {} (NetworkPolicy has no FQDN peers; a FlowIntent egress rule can name them)",
                    dns.iter().cloned().collect::<Vec<_>>().join(", ")
                );
            }
        }
        yaml.push_str(&serde_yaml::to_string(&value).unwrap_or_default());
        let tier =
            pods.get(*workload).into_iter().flatten().find_map(|id| {
                cluster.pod(&edges, *id)?.labels.get(&cluster.config().intents.tiers.label_key).cloned()
            });
        if let Some(tier) = tier {
            yaml.push_str(&suggested_intent(workload, &tier, selector, egress.get(*workload), &names));
        }
        advised.policies.push(Advice { workload: (*workload).clone(), policy, yaml });
    }
    // Verify: every recorded allowed flow stays allowed under the advice alone.
    let advice: Vec<NetworkPolicy> = advised.policies.iter().map(|advice| advice.policy.clone()).collect();
    // The advice alone: NetworkPolicies must allow it whatever the ClusterNetworkPolicies say.
    let (set, errors, _) = cluster.compile(&advice, &[]);
    for error in errors {
        advised.unverified.push(format!("advised policy refused: {error}"));
    }
    let mut judges = cluster.judges(&set, &edges);
    for (key, stats) in &allowed {
        let in_scope = |end: &EndKey| match end {
            EndKey::Pod(id) => workload_of(&edges, *id)
                .is_some_and(|workload| args.namespace.is_empty() || args.namespace.contains(&workload.0)),
            EndKey::Address(_) => false,
        };
        if !in_scope(&key.src) && !in_scope(&key.dst) {
            continue;
        }
        let judged = cluster.judge(&mut judges, &edges, key, stats);
        if !judged.as_ref().is_some_and(super::replay::Judged::policy_allows) {
            let edge = EdgeOut::of(&cluster, &edges, key, stats);
            advised.unverified.push(format!("{} ({} {})", edge.describe(), Protocol(key.protocol).name(), edge.flows));
        }
    }
    if args.guardrails {
        let label_key = &cluster.config().intents.tiers.label_key;
        advised.guardrails = super::guardrail::guardrails(cluster.declared_intents(), label_key);
        // Validated as the API server would (the CRD's schema and CEL rules).
        let cnps: Vec<_> = advised.guardrails.iter().map(|guardrail| guardrail.policy.clone()).collect();
        let (_, errors) = cluster.validate(&[], &cnps);
        for error in errors {
            advised.unverified.push(format!("guardrail refused: {error}"));
        }
    }
    Ok(advised)
}

/// For an AI-tier workload that reached world addresses with DNS names: a
/// FlowIntent allowing its recorded egress, the world by `fqdn` (what
/// NetworkPolicy cannot say), as a commented-out YAML document, so the
/// advised file stays one `kubectl apply`-able NetworkPolicy; empty
/// otherwise.
fn suggested_intent(
    workload: &WorkloadKey,
    tier: &str,
    selector: &Selector,
    egress: Option<&BTreeMap<Peer, BTreeSet<(String, u16)>>>,
    names: &BTreeMap<std::net::IpAddr, BTreeSet<String>>,
) -> String {
    let egress: Vec<_> = egress.into_iter().flatten().collect();
    let named = |peer: &Peer| match peer {
        Peer::Address(ip) => names.get(ip).filter(|names| !names.is_empty()),
        Peer::Pods { .. } => None,
    };
    if !egress.iter().any(|(peer, _)| named(peer).is_some()) {
        return String::new();
    }
    // An allow list admits only what it names: every recorded egress is in it.
    let mut allow = Vec::new();
    for (peer, ports) in egress {
        let ports: Vec<Value> =
            ports.iter().map(|(protocol, port)| json!({"protocol": protocol, "port": port})).collect();
        match (peer, named(peer)) {
            (_, Some(fqdns)) => {
                allow.extend(fqdns.iter().map(|fqdn| json!({"fqdn": fqdn, "ports": ports})));
            }
            (Peer::Address(ip), None) => {
                let bits = if ip.is_ipv4() { 32 } else { 128 };
                allow.push(json!({"cidr": format!("{ip}/{bits}"), "ports": ports}));
            }
            (Peer::Pods { namespace, labels }, None) => {
                let mut rule = json!({"podSelector": {"matchLabels": labels}, "ports": ports});
                if *namespace != workload.0 {
                    rule["namespaceSelector"] = json!({"matchLabels": {"kubernetes.io/metadata.name": namespace}});
                }
                allow.push(rule);
            }
        }
    }
    let intent = json!({
        "apiVersion": "ai.governance/v1alpha1",
        "kind": "FlowIntent",
        "metadata": {"name": format!("{}-egress", workload.2.to_lowercase()), "namespace": workload.0},
        "spec": {
            "description": format!("Recorded egress of {} {}/{} (observer policy advise).", workload.1, workload.0, workload.2),
            "subject": {"tiers": [tier], "podSelector": {"matchLabels": selector.labels}},
            "egress": {"allow": allow},
        }
    });
    let mut text = format!(
        "# Suggested FlowIntent for this {tier}-tier workload: NetworkPolicy has no FQDN peers, a\n\
         # FlowIntent can name the world by DNS name (docs/intents.md). Its allow list is\n\
         # the recorded egress above. Review, then uncomment to apply.\n# ---\n"
    );
    for line in serde_yaml::to_string(&intent).unwrap_or_default().lines() {
        let _ = writeln!(text, "# {line}");
    }
    text
}

/// The command.
pub fn run(args: &AdviseConfig) -> anyhow::Result<()> {
    let advised = advise(args)?;
    if !advised.unverified.is_empty() {
        return Err(AdviseError::Unverified(advised.unverified).into());
    }
    let mut err = io::stderr().lock();
    for refused in &advised.refused {
        writeln!(err, "not allowed by the advice (it happened, but is not allowed now): {refused}")?;
    }
    for guardrail in &advised.guardrails {
        for note in &guardrail.left_out {
            writeln!(err, "guardrail for FlowIntent {}: not expressible, left out: {note}", guardrail.intent)?;
        }
    }
    let guardrails = advised.guardrails.iter().map(|guardrail| {
        let (namespace, name) = guardrail.intent.split_once('/').unwrap_or(("default", &guardrail.intent));
        (format!("guardrail.{namespace}.{name}.yaml"), &guardrail.yaml)
    });
    let documents: Vec<(String, &String)> = advised
        .policies
        .iter()
        .map(|advice| (format!("{}.{}.yaml", advice.workload.0, advice.workload.2.to_lowercase()), &advice.yaml))
        .chain(guardrails)
        .collect();
    match &args.output_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|source| AdviseError::Write { path: dir.clone(), source })?;
            for (file, yaml) in documents {
                let path = dir.join(file);
                std::fs::write(&path, yaml).map_err(|source| AdviseError::Write { path, source })?;
            }
        }
        None => {
            let mut out = io::stdout().lock();
            for (index, (_, yaml)) in documents.iter().enumerate() {
                if index > 0 {
                    writeln!(out, "---")?;
                }
                out.write_all(yaml.as_bytes())?;
            }
        }
    }
    Ok(())
}
