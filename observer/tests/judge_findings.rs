//! Findings: from verdicts, unprotected pods and spikes to deduplicated JSON lines with coverage.

mod judge_fixtures;

use std::time::Duration;

use judge_fixtures::{flow, judge, namespace, pod, time};
use observer::{
    anomaly::{EdgeKey, SpikeConfig, SpikeDetector},
    findings::{CoverageTracker, Finding, FindingsConfig, FindingsLog, FindingsWriter},
    intent::FlowEnd,
    inventory::{WorkloadRef, model::Pod},
};
use serde_json::Value;

const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: store-ingress, namespace: ai, resourceVersion: "41"}
spec:
  podSelector: {matchLabels: {ai.governance/tier: vector-store}}
  policyTypes: [Ingress]
"#;

fn pods() -> (Pod, Pod) {
    (
        pod("agent-1").tier("agent").owner("Deployment", "agent").ip("198.18.0.10").build(),
        pod("qdrant-0").tier("vector-store").owner("StatefulSet", "qdrant").ip("198.18.0.31").build(),
    )
}

fn lines(bytes: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(bytes).lines().map(|line| serde_json::from_str(line).expect("JSON line")).collect()
}

fn tracker() -> CoverageTracker {
    CoverageTracker::new(Duration::from_secs(1), 1024)
}

/// An enforcement-gap finding from agent to store on `port`.
fn gap(agent: &Pod, store: &Pod, port: u16) -> Finding {
    let mut judge = judge(POLICIES, "", &[namespace("ai", &[])]);
    let input =
        flow(FlowEnd::pod(agent, agent.ips[0], Some(41000)), FlowEnd::pod(store, store.ips[0], Some(port))).build();
    Finding::from_flow(&judge.flow(&input), &input).expect("a finding")
}

#[test]
fn repeats_raise_the_count_instead_of_flooding() {
    let (agent, store) = pods();
    let mut log = FindingsLog::new(&FindingsConfig::default());
    assert!(log.record(gap(&agent, &store, 6333), time(10)));
    assert!(!log.record(gap(&agent, &store, 6333), time(20)));
    assert!(!log.record(gap(&agent, &store, 6333), time(15)));
    assert!(log.record(gap(&agent, &store, 6334), time(30)), "another port is another finding");
    let mut out = Vec::new();
    assert_eq!(log.flush(&mut out, time(40), &tracker()).expect("flush"), 2);
    let written = lines(&out);
    assert_eq!(written[0]["count"], 3);
    assert_eq!(written[0]["first_seen"], "2023-11-14T22:13:30.000Z");
    assert_eq!(written[0]["last_seen"], "2023-11-14T22:13:40.000Z");
    assert_eq!(written[1]["port"], 6334);
    // Nothing new: nothing written. A repeat: one line with the running count.
    out.clear();
    assert_eq!(log.flush(&mut out, time(50), &tracker()).expect("flush"), 0);
    log.record(gap(&agent, &store, 6333), time(60));
    log.flush(&mut out, time(70), &tracker()).expect("flush");
    let written = lines(&out);
    assert_eq!((written.len(), written[0]["count"].as_u64()), (1, Some(4)));
    assert_eq!(log.stats().recorded, 5);
}

#[test]
fn a_line_names_pods_workloads_tiers_rule_and_evidence() {
    let (agent, store) = pods();
    let mut log = FindingsLog::new(&FindingsConfig::default());
    log.record(gap(&agent, &store, 6333), time(10));
    let mut out = Vec::new();
    log.flush(&mut out, time(11), &tracker()).expect("flush");
    let mut line = lines(&out).remove(0);
    line.as_object_mut().expect("object").remove("reason");
    assert_eq!(
        line,
        serde_json::json!({
            "time": "2023-11-14T22:13:31.000Z",
            "kind": "enforcement-gap",
            "rule": "ai/store-ingress",
            "source": {"kind": "pod", "namespace": "ai", "pod": "agent-1", "uid": "uid-agent-1",
                "workload": {"kind": "Deployment", "name": "agent"}, "ip": "198.18.0.10", "tier": "agent"},
            "destination": {"kind": "pod", "namespace": "ai", "pod": "qdrant-0", "uid": "uid-qdrant-0",
                "workload": {"kind": "StatefulSet", "name": "qdrant"}, "ip": "198.18.0.31", "tier": "vector-store"},
            "port": 6333,
            "protocol": "tcp",
            "policies": [{"namespace": "ai", "name": "store-ingress", "resourceVersion": "41"}],
            "evidence": {"state": "established", "delivery": "delivered",
                "to_dst": {"packets": 5, "bytes": 900}, "to_src": {"packets": 4, "bytes": 4000}},
            "count": 1,
            "first_seen": "2023-11-14T22:13:30.000Z",
            "last_seen": "2023-11-14T22:13:30.000Z",
            "coverage": "complete"
        })
    );
}

#[test]
fn lost_events_mark_findings_and_the_interval_incomplete() {
    let (agent, store) = pods();
    let mut log = FindingsLog::new(&FindingsConfig::default());
    let mut coverage = tracker();
    log.record(gap(&agent, &store, 6333), time(10));
    coverage.record(time(20), 12);
    let mut out = Vec::new();
    log.flush(&mut out, time(30), &coverage).expect("flush");
    let written = lines(&out);
    assert_eq!(written[0]["coverage"], "incomplete");
    assert_eq!(written[1]["kind"], "coverage");
    assert_eq!(written[1]["lost_events"], 12);
    // Even with no finding, an interval with losses says so.
    out.clear();
    coverage.record(time(100), 3);
    assert_eq!(log.flush(&mut out, time(110), &coverage).expect("flush"), 1);
    assert_eq!(lines(&out)[0]["coverage"], "incomplete");
    // A finding first seen in a later, clean interval claims complete coverage;
    // a repeat of the old one does not, since its count grew over the loss.
    out.clear();
    log.record(gap(&agent, &store, 7000), time(300));
    log.record(gap(&agent, &store, 6333), time(300));
    log.flush(&mut out, time(310), &coverage).expect("flush");
    let coverage_of =
        |port: u64| lines(&out).into_iter().find(|line| line["port"] == port).map(|line| line["coverage"].clone());
    assert_eq!(coverage_of(7000), Some(Value::from("complete")));
    assert_eq!(coverage_of(6333), Some(Value::from("incomplete")));
    assert_eq!(lines(&out).len(), 2, "no coverage line for a clean interval");
    assert_eq!(coverage.status().lost_events, 15);
}

#[test]
fn memory_is_capped_and_evictions_counted() {
    let (agent, store) = pods();
    let mut log = FindingsLog::new(&FindingsConfig { max_findings: 2, ..FindingsConfig::default() });
    for port in 1..=5 {
        log.record(gap(&agent, &store, port), time(u64::from(port)));
    }
    let stats = log.stats();
    assert_eq!((stats.findings, stats.evicted, stats.evicted_unwritten), (2, 3, 3));
}

#[test]
fn unprotected_pods_and_spikes_become_findings() {
    let (agent, store) = pods();
    let judge = judge("", "", &[namespace("ai", &[])]);
    let unprotected = judge.unprotected(&agent).expect("no policy isolates it");
    let mut log = FindingsLog::new(&FindingsConfig::default());
    let workload = WorkloadRef { kind: "Deployment".to_owned(), name: "agent".to_owned() };
    log.record(Finding::unprotected(&unprotected, Some(workload.clone())), time(0));
    // Another replica of the same workload is the same finding.
    let replica = pod("agent-2").tier("agent").build();
    log.record(Finding::unprotected(&judge.unprotected(&replica).expect("unprotected"), Some(workload)), time(5));

    let src = FlowEnd::pod(&agent, agent.ips[0], None).with_workload("Deployment", "agent");
    let dst = FlowEnd::pod(&store, store.ips[0], Some(6333));
    let edge = EdgeKey::between(&src, &dst);
    assert_eq!(&*edge.source, "ai/Deployment/agent");
    let mut detector = SpikeDetector::new(SpikeConfig::default());
    let spike = (0..40)
        .find_map(|minute| detector.observe(&edge, time(minute * 60), if minute < 30 { 30 } else { 600 }, 1000))
        .expect("tenfold jump");
    log.record(Finding::spike(&spike, &src, &dst, (None, None)), time(30 * 60));

    let mut out = Vec::new();
    log.flush(&mut out, time(3600), &tracker()).expect("flush");
    let written = lines(&out);
    assert_eq!(written.len(), 2);
    assert_eq!((written[0]["kind"].as_str(), written[0]["count"].as_u64()), (Some("unprotected"), Some(2)));
    assert_eq!(written[0]["evidence"]["isolated"], serde_json::json!({"ingress": false, "egress": false}));
    assert_eq!(written[0]["source"]["pod"], "agent-2", "the latest occurrence names the pod");
    assert_eq!(
        (written[1]["kind"].as_str(), written[1]["rule"].as_str()),
        (Some("spike"), Some("spike:new-connections"))
    );
    assert_eq!(written[1]["evidence"]["spike"]["observed"], 600);
    assert_eq!(written[1]["evidence"]["spike"]["baseline"], "own", "one version: its own baseline");
    assert!(written[1]["evidence"].get("after_rollout").is_none(), "no rollout: no after_rollout");
}

#[test]
fn writer_appends_json_lines_to_the_file() {
    let (agent, store) = pods();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("findings.jsonl");
    let mut log = FindingsLog::new(&FindingsConfig::default());
    for round in 0..2 {
        let mut writer = FindingsWriter::open(&path).expect("opens");
        log.record(gap(&agent, &store, 6333), time(round));
        writer.flush(&mut log, time(round + 1), &tracker()).expect("writes");
    }
    let text = std::fs::read(&path).expect("read");
    let counts: Vec<u64> = lines(&text).iter().filter_map(|line| line["count"].as_u64()).collect();
    assert_eq!(counts, [1, 2]);
    let error = FindingsWriter::open(&dir.path().join("missing/findings.jsonl")).expect_err("no folder");
    assert!(error.to_string().contains("cannot open findings log"));
}
