//! `observer report` on fixed manifests, two nodes' flow logs and a findings
//! log: the JSON is compared whole with a golden file (set
//! `UPDATE_GOLDEN=1` to rewrite it after a deliberate change), and the
//! Markdown and HTML renderings carry its facts.

use std::path::PathBuf;

use observer::governance::{
    replay::Recorded,
    report::{Report, ReportConfig, ReportFormat, html, markdown, report},
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/governance_fixtures").join(name)
}

fn args() -> ReportConfig {
    ReportConfig {
        recorded: Recorded {
            manifests: vec![fixture("cluster.yaml")],
            kubeconfig: None,
            flows: vec![fixture("node-a.jsonl"), fixture("node-b.jsonl")],
            config: None,
        },
        findings: vec![fixture("findings.jsonl")],
        format: ReportFormat::Json,
        output: None,
    }
}

#[test]
fn report_json_matches_the_golden_file() {
    let made = report(&args()).expect("report");
    let json = serde_json::to_string_pretty(&made).expect("json") + "\n";
    let golden = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/report.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden, &json).expect("write golden");
    }
    let expected = std::fs::read_to_string(&golden).expect("golden file");
    assert_eq!(json, expected, "report JSON differs from tests/golden/report.json");
}

#[test]
fn markdown_and_html_render_the_same_facts() {
    let made = report(&args()).expect("report");
    let md = markdown(&made);
    assert!(md.contains("### ai/model-ingress\n"), "{md}");
    assert!(md.contains("- Owner: ml-platform (annotation)"), "{md}");
    assert!(md.contains("- Owner: data (label:team)"), "{md}");
    assert!(md.contains("| ingress[1] | `[{\"podSelector\":{\"matchLabels\":{\"app\":\"db\"}}}]` | `[{\"port\":9000}]` | **unused** |"), "{md}");
    assert!(md.contains("- **Cannot vouch for everything:**"), "{md}");
    let page = html(&made);
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(!page.contains("<script") && !page.contains("href=") && !page.contains("src="), "self-contained");
    assert!(page.contains("<h3>ai/model-ingress</h3>"));
    assert!(page.contains("<td>unused</td>") || page.contains("<td>**unused**</td>"), "{page}");
}

/// An Admin ClusterNetworkPolicy whose egress accepts `api.example.com` by
/// name, denies the rest of 203.0.113.0/24, and accepts a name no flow went
/// to.
const DOMAIN_GUARDRAIL: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ai}
---
apiVersion: v1
kind: Pod
metadata: {name: agent-0, namespace: ai, uid: uid-agent-0, labels: {app: agent}}
spec: {nodeName: node-a, containers: [{name: main, image: agent}]}
status: {phase: Running, podIP: 198.18.0.10, podIPs: [{ip: 198.18.0.10}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: agent-egress, resourceVersion: "3"}
spec:
  tier: Admin
  priority: 5
  subject: {namespaces: {}}
  egress:
    - {name: api, action: Accept, to: [{domainNames: [api.example.com]}]}
    - {name: never, action: Accept, to: [{domainNames: [never.example.com]}]}
    - {name: world, action: Deny, to: [{networks: [203.0.113.0/24]}]}
"#;

/// One `end` record of agent-0 to `ip`:443, with the names its DNS gave
/// (`None`: the address was never resolved).
/// The JSON report of one manifest file and one flow log, without findings.
fn report_of(manifests: PathBuf, flows: PathBuf) -> Report {
    report(&ReportConfig {
        recorded: Recorded { manifests: vec![manifests], kubeconfig: None, flows: vec![flows], config: None },
        findings: Vec::new(),
        format: ReportFormat::Json,
        output: None,
    })
    .expect("report")
}

fn world_flow(sport: u16, ip: &str, names: Option<&[&str]>) -> String {
    tagged_world_flow(sport, ip, names, None)
}

/// [`world_flow`], its destination tagged with an AI provider as the daemon tags it.
fn tagged_world_flow(sport: u16, ip: &str, names: Option<&[&str]>, provider: Option<&str>) -> String {
    let mut dst = serde_json::json!({"ip": ip, "port": 443, "kind": "world"});
    if let Some(names) = names {
        dst["dns"] = serde_json::json!({"names": names, "source": "answer"});
    }
    if let Some(provider) = provider {
        dst["ai_provider"] = provider.into();
        dst["ai_kind"] = "api".into();
        dst["ai_via"] = "dns".into();
    }
    serde_json::json!({"event": "end", "node": "node-a", "protocol": "tcp",
        "src": {"ip": "198.18.0.10", "port": sport, "kind": "pod", "namespace": "ai", "pod": "agent-0",
            "uid": "uid-agent-0", "labels": {"app": "agent"}},
        "dst": dst, "local": "src", "state": "closed",
        "to_dst": {"packets": 3, "bytes": 100}, "to_src": {"packets": 3, "bytes": 200},
        "first_seen": format!("2026-03-01T10:00:{:02}.000Z", sport - 40_000), "last_seen": "2026-03-01T10:01:00.000Z"})
    .to_string()
}

#[test]
fn domain_name_rules_count_the_flows_their_names_decided() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("cluster.yaml");
    std::fs::write(&manifests, DOMAIN_GUARDRAIL).expect("write");
    let flows = dir.path().join("node-a.jsonl");
    let lines = [
        // Two flows to the named API: the domainNames rule decides them.
        world_flow(40_001, "203.0.113.10", Some(&["api.example.com"])),
        world_flow(40_002, "203.0.113.10", Some(&["api.example.com"])),
        // Another name: the Deny decides it.
        world_flow(40_003, "203.0.113.11", Some(&["other.example.org"])),
        // Never resolved: the name rule cannot say, and counts nothing.
        world_flow(40_004, "203.0.113.12", None),
    ];
    std::fs::write(&flows, lines.join("\n") + "\n").expect("write");
    let made = report_of(manifests, flows);
    assert_eq!(made.coverage.input.records, 4, "{:?}", made.coverage.input.problems);
    assert_eq!(made.cluster_policies.len(), 1);
    let rules: Vec<_> = made.cluster_policies[0]
        .rules
        .iter()
        .map(|rule| (rule.index, rule.name.as_deref(), rule.action.as_str(), rule.flows, rule.unused))
        .collect();
    assert_eq!(
        rules,
        [
            (0, Some("api"), "Accept", 2, false),
            (1, Some("never"), "Accept", 0, true),
            (2, Some("world"), "Deny", 1, false),
        ]
    );
    let api = &made.cluster_policies[0].rules[0].usage;
    assert_eq!(
        (api.first_seen.as_deref(), api.last_seen.as_deref()),
        (Some("2026-03-01T10:00:01.000Z"), Some("2026-03-01T10:01:00.000Z"))
    );
}

/// An agent whose FlowIntent allows egress only to the AI provider `openai`.
const PROVIDER_INTENT: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ai}
---
apiVersion: v1
kind: Pod
metadata: {name: agent-0, namespace: ai, uid: uid-agent-0, labels: {app: agent, ai.governance/tier: agent}}
spec: {nodeName: node-a, containers: [{name: main, image: agent}]}
status: {phase: Running, podIP: 198.18.0.10, podIPs: [{ip: 198.18.0.10}]}
---
apiVersion: ai.governance/v1alpha1
kind: FlowIntent
metadata: {name: agents, namespace: ai, generation: 1}
spec:
  subject: {tiers: [agent]}
  egress:
    allow:
      - provider: openai
        ports: [{port: 443}]
"#;

#[test]
fn a_provider_the_daemon_tagged_is_what_intents_are_judged_with() {
    let dir = tempfile::tempdir().expect("tempdir");
    let manifests = dir.path().join("cluster.yaml");
    std::fs::write(&manifests, PROVIDER_INTENT).expect("write");
    let flows = dir.path().join("node-a.jsonl");
    let lines = [
        // Tagged by the daemon: the intent's `provider: openai` allows it.
        tagged_world_flow(40_001, "203.0.113.20", Some(&["api.openai.com"]), Some("openai")),
        // The same name, untagged (the daemon's catalog did not know it): not the provider.
        world_flow(40_002, "203.0.113.21", Some(&["api.openai.com"])),
    ];
    std::fs::write(&flows, lines.join("\n") + "\n").expect("write");
    let made = report_of(manifests, flows);
    assert_eq!(made.coverage.input.records, 2, "{:?}", made.coverage.input.problems);
    let agent = made.workloads.iter().find(|workload| workload.name == "agent-0" || workload.name == "agent");
    let agent = agent.unwrap_or_else(|| panic!("{:?}", made.workloads));
    let peers: Vec<(String, &str)> = agent
        .peers
        .iter()
        .map(|peer| (serde_json::to_value(&peer.peer).expect("json").to_string(), peer.verdict))
        .collect();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers[0].0.contains("203.0.113.20") && peers[0].1 == "allowed", "{peers:?}");
    assert!(peers[1].0.contains("203.0.113.21") && peers[1].1 == "intent-violation", "{peers:?}");
}
