//! `observer policy advise`: the advice, replayed by the daemon's judge,
//! allows every recorded allowed flow and denies pairs that were not seen
//! (a property over generated traffic), refuses what is not allowed now,
//! and is deterministic.

use std::{collections::BTreeSet, io::Write as _, path::PathBuf};

use observer::governance::{
    advise::{AdviseConfig, advise},
    replay::Recorded,
};
use proptest::prelude::*;
use serde::Deserialize;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/governance_fixtures").join(name)
}

#[test]
fn advice_on_the_fixture_keeps_allowed_flows_and_refuses_the_gap() {
    let args = AdviseConfig {
        recorded: Recorded {
            manifests: vec![fixture("cluster.yaml")],
            kubeconfig: None,
            flows: vec![fixture("node-a.jsonl"), fixture("node-b.jsonl")],
            config: None,
        },
        output_dir: None,
        guardrails: false,
        namespace: Vec::new(),
    };
    let advised = advise(&args).expect("advise");
    assert_eq!(advised.unverified, Vec::<String>::new());
    assert_eq!(advised.refused.len(), 1, "{:?}", advised.refused);
    assert!(
        advised.refused[0].starts_with(
            "ai/agent-0 (StatefulSet/agent) -> ai/db-0 (StatefulSet/db) 5432/tcp: enforcement-gap (1 flows)"
        ),
        "{}",
        advised.refused[0]
    );
    let yaml: Vec<&str> = advised.policies.iter().map(|advice| advice.yaml.as_str()).collect();
    let again = advise(&args).expect("advise");
    assert_eq!(yaml, again.policies.iter().map(|advice| advice.yaml.as_str()).collect::<Vec<_>>(), "deterministic");
    let agent = advised.policies.iter().find(|advice| advice.workload.2 == "agent").expect("agent");
    assert!(agent.yaml.contains("# Pods selected by {\"app\":\"agent\"}: `app` is the first of"), "{}", agent.yaml);
    assert!(agent.yaml.contains("# 203.0.113.10: api.example.com (NetworkPolicy has no FQDN peers"), "{}", agent.yaml);
    assert!(agent.yaml.contains("cidr: 203.0.113.10/32"), "{}", agent.yaml);
    assert!(!agent.yaml.contains("5432"), "the gap is not allowed: {}", agent.yaml);
    // The file is one NetworkPolicy to apply; the FlowIntent is a commented-out suggestion.
    let documents: Vec<serde_yaml::Value> = serde_yaml::Deserializer::from_str(&agent.yaml)
        .map(|document| serde_yaml::Value::deserialize(document).expect("yaml"))
        .collect();
    assert_eq!(documents.len(), 1);
    assert_eq!(documents[0]["kind"].as_str(), Some("NetworkPolicy"));
    let (_, suggested) = agent.yaml.split_once("# ---\n").expect("a suggested FlowIntent");
    let intent: String =
        suggested.lines().map(|line| line.strip_prefix("# ").expect("commented out").to_owned() + "\n").collect();
    let parsed: observer::intent::FlowIntent = serde_yaml::from_str(&intent).expect("a FlowIntent");
    assert_eq!(parsed.spec.subject.tiers, Some(vec!["agent".to_owned()]));
    let allow = serde_json::to_value(parsed.spec.egress.and_then(|egress| egress.allow)).expect("json");
    assert!(
        allow
            .as_array()
            .expect("allow")
            .contains(&serde_json::json!({"fqdn": "api.example.com", "ports": [{"port": 443, "protocol": "TCP"}]})),
        "{allow}"
    );
    // Applied, it allows every recorded egress the advice allows: none is an intent violation.
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = std::fs::read_to_string(fixture("cluster.yaml")).expect("fixture") + "---\n" + &intent;
    std::fs::write(dir.path().join("cluster.yaml"), cluster).expect("write");
    let with_intent = AdviseConfig {
        recorded: Recorded { manifests: vec![dir.path().join("cluster.yaml")], ..args.recorded.clone() },
        output_dir: None,
        guardrails: false,
        namespace: Vec::new(),
    };
    let replayed = advise(&with_intent).expect("advise with the intent");
    // Only the edge the advice refused is refused again, now also against the intent.
    assert_eq!(replayed.refused.len(), 1, "{:?}", replayed.refused);
    assert!(replayed.refused[0].starts_with(&advised.refused[0]), "{}", replayed.refused[0]);
    assert!(replayed.refused[0].ends_with("(FlowIntent ai/agent-egress spec.egress.allow)"), "{}", replayed.refused[0]);
    let model = advised.policies.iter().find(|advice| advice.workload.2 == "model").expect("model");
    assert!(!model.yaml.contains("FlowIntent"), "no world egress, no suggestion: {}", model.yaml);
}

/// Pods `p0..pN` in namespace `ns`, each its own Deployment `w<i>` with label `app: w<i>`.
fn manifests(pods: usize) -> String {
    let mut text = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: ns}\n");
    for index in 0..pods {
        text.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{index}, namespace: ns, uid: u{index}, labels: {{app: w{index}}}}}\n\
             spec: {{containers: [{{name: c, image: i}}]}}\nstatus: {{phase: Running, podIP: 198.18.0.{}, podIPs: [{{ip: 198.18.0.{}}}]}}\n",
            10 + index,
            10 + index
        ));
    }
    text
}

fn record(src: usize, dst: usize, port: u16, sport: u16) -> String {
    let end = |index: usize, port: u16| {
        format!(
            r#"{{"ip":"198.18.0.{}","port":{port},"kind":"pod","namespace":"ns","pod":"p{index}","uid":"u{index}","workload":{{"kind":"Deployment","name":"w{index}"}},"labels":{{"app":"w{index}"}}}}"#,
            10 + index
        )
    };
    format!(
        r#"{{"time":"2026-01-01T00:00:01.000Z","event":"end","node":"n","protocol":"tcp","family":"ipv4","src":{},"dst":{},"local":"src","cgroup":{{"id":1,"path":null}},"state":"closed","to_dst":{{"packets":3,"bytes":1}},"to_src":{{"packets":3,"bytes":1}},"first_seen":"2026-01-01T00:00:00.000Z","last_seen":"2026-01-01T00:00:01.000Z","duration_ms":1000}}"#,
        end(src, sport),
        end(dst, port)
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn advice_replayed_allows_what_was_seen_and_denies_unseen_pairs(
        pods in 2_usize..6,
        flows in proptest::collection::vec((0_usize..6, 0_usize..6, prop::sample::select(vec![80_u16, 443, 5432, 8080])), 1..12),
        probe in (0_usize..6, 0_usize..6, prop::sample::select(vec![80_u16, 443, 5432, 8080, 9090])),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("cluster.yaml"), manifests(pods)).expect("manifests");
        let seen: BTreeSet<(usize, usize, u16)> =
            flows.iter().map(|(src, dst, port)| (src % pods, dst % pods, *port)).filter(|(src, dst, _)| src != dst).collect();
        prop_assume!(!seen.is_empty());
        let mut log = std::fs::File::create(dir.path().join("flows.jsonl")).expect("log");
        for (index, (src, dst, port)) in seen.iter().enumerate() {
            writeln!(log, "{}", record(*src, *dst, *port, 30_000 + index as u16)).expect("write");
        }
        let args = AdviseConfig {
            recorded: Recorded { manifests: vec![dir.path().join("cluster.yaml")], kubeconfig: None, flows: vec![dir.path().join("flows.jsonl")], config: None },
            output_dir: None,
            guardrails: false,
            namespace: Vec::new(),
        };
        let advised = advise(&args).expect("advise");
        // Every recorded allowed flow (no policy exists: all are) stays allowed.
        prop_assert_eq!(advised.unverified.clone(), Vec::<String>::new());
        prop_assert!(advised.refused.is_empty());
        // An unseen pair is denied by the advice (replayed with the advice as the policies).
        let (src, dst, port) = (probe.0 % pods, probe.1 % pods, probe.2);
        prop_assume!(src != dst && !seen.contains(&(src, dst, port)));
        // Advice is for the workloads seen: a pair of two pods that never
        // sent or received a flow has no policy selecting either end.
        let observed = |pod: usize| seen.iter().any(|(from, to, _)| *from == pod || *to == pod);
        prop_assume!(observed(src) || observed(dst));
        let advice_dir = tempfile::tempdir().expect("tempdir");
        let mut text = manifests(pods);
        for advice in &advised.policies {
            text.push_str("---\n");
            text.push_str(&advice.yaml);
        }
        std::fs::write(advice_dir.path().join("cluster.yaml"), text).expect("advised cluster");
        std::fs::write(advice_dir.path().join("probe.jsonl"), record(src, dst, port, 40_000) + "\n").expect("probe");
        let probe_args = AdviseConfig {
            recorded: Recorded { manifests: vec![advice_dir.path().join("cluster.yaml")], kubeconfig: None, flows: vec![advice_dir.path().join("probe.jsonl")], config: None },
            output_dir: None,
            guardrails: false,
            namespace: Vec::new(),
        };
        let probed = advise(&probe_args).expect("advise probe");
        prop_assert_eq!(probed.refused.len(), 1, "unseen {}->{}:{} should be denied by the advice", src, dst, port);
        prop_assert!(probed.refused[0].contains("enforcement-gap"), "{}", probed.refused[0]);
    }
}
