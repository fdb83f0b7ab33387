//! AI governance end to end on the real kernel: lab pods as an AI "cluster"
//! (agent, model servers, vector store, egress gateway) described by
//! standalone manifests with NetworkPolicies and a FlowIntent, traffic that
//! earns every verdict, and exact assertions on the flow log and findings.
//! Root only; one thread.

use std::{collections::HashMap, time::Duration};

use observer_tests::{
    Endpoint, INTERNET_HOST_V4, Lab, ObserverProcess, Pod, TcpClientOpts, TcpServerOpts,
    manifests::{self, PodSpec},
    root_or_skip,
};
use serde_json::{Value, json};

const TIER: &str = "ai.governance/tier";

fn spec<'a>(
    pod: &'a Pod,
    name: &'a str,
    app: &'a str,
    tier: Option<&'a str>,
    owner: (&'a str, &'a str),
) -> PodSpec<'a> {
    let mut labels = vec![("app", app)];
    if let Some(tier) = tier {
        labels.push((TIER, tier));
    }
    PodSpec { pod, namespace: "ai", name, labels, owner: Some(owner), ports: vec![] }
}

fn policy(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": "ai", "resourceVersion": "7"}, "spec": spec})
}

fn app(name: &str) -> Value {
    json!({"podSelector": {"matchLabels": {"app": name}}})
}

/// The verdicts of `end` records seen from one cgroup towards one port.
fn verdicts(records: &[Value], cgroup_id: u64, port: u64) -> Vec<String> {
    records
        .iter()
        .filter(|record| record["event"] == "end" && record["cgroup"]["id"].as_u64() == Some(cgroup_id))
        .filter(|record| record["dst"]["port"].as_u64() == Some(port))
        .map(|record| record["verdict"]["verdict"].as_str().unwrap_or("none").to_owned())
        .collect()
}

#[test]
fn every_verdict_and_finding_shows_up_exactly() {
    if !root_or_skip("every_verdict_and_finding_shows_up_exactly") {
        return;
    }
    let lab = Lab::builder().pods(5).ipv6(false).internet(true).build().expect("lab");
    let (agent, model_a, qdrant, gateway, model_b) = (lab.pod(0), lab.pod(1), lab.pod(2), lab.pod(3), lab.pod(4));
    let dir = std::env::temp_dir().join(format!("governance-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("manifest dir");
    manifests::write_list(
        &dir.join("ai.json"),
        vec![
            manifests::namespace("ai", &[]),
            manifests::workload("ReplicaSet", "ai", "agent-5c8d", Some(("Deployment", "agent"))),
            manifests::pod(&spec(agent, "agent-5c8d-a1", "agent", Some("agent"), ("ReplicaSet", "agent-5c8d"))),
            manifests::pod(&spec(model_a, "model-a-0", "model-a", Some("model-serving"), ("StatefulSet", "model-a"))),
            manifests::pod(&spec(qdrant, "qdrant-0", "qdrant", Some("vector-store"), ("StatefulSet", "qdrant"))),
            manifests::pod(&spec(
                gateway,
                "egress-gateway-0",
                "egress-gateway",
                None,
                ("StatefulSet", "egress-gateway"),
            )),
            manifests::pod(&spec(model_b, "model-b-0", "model-b", Some("model-serving"), ("StatefulSet", "model-b"))),
            policy(
                "agent-egress",
                json!({"podSelector": {"matchLabels": {"app": "agent"}}, "policyTypes": ["Egress"], "egress": [
                    {"to": [app("model-a")], "ports": [{"port": 8080}]},
                    {"to": [app("egress-gateway")], "ports": [{"port": 3128}]},
                    {"to": [app("qdrant")]},
                    {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}]},
                ]}),
            ),
            policy(
                "agent-ingress",
                json!({"podSelector": {"matchLabels": {"app": "agent"}}, "policyTypes": ["Ingress"]}),
            ),
            policy(
                "model-a-ingress",
                json!({"podSelector": {"matchLabels": {"app": "model-a"}},
                       "ingress": [{"from": [app("agent")], "ports": [{"port": 8080}]}]}),
            ),
            policy(
                "qdrant-ingress",
                json!({"podSelector": {"matchLabels": {"app": "qdrant"}},
                       "ingress": [{"from": [app("agent")], "ports": [{"port": 6333}]}]}),
            ),
            json!({"apiVersion": "ai.governance/v1alpha1", "kind": "FlowIntent",
                   "metadata": {"name": "agents", "namespace": "ai", "generation": 3},
                   "spec": {"subject": {"tiers": ["agent"]},
                            "egress": {"forbid": [{"metadataService": true}],
                                       "onlyThrough": {"podSelector": {"matchLabels": {"app": "egress-gateway"}}}},
                            "isolation": {"ingress": true, "egress": true}}}),
        ],
    )
    .expect("manifests");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "spikes: {window_seconds: 1, warmup_windows: 4, min_connections: 10, seasonal_buckets: 0, cooldown_windows: 60}\n\
         findings: {flush_interval_seconds: 1}\n",
    )
    .expect("config");
    let findings_path = dir.join("findings.jsonl");
    let internet = lab.internet().expect("internet");
    let _model = model_a.tcp_server(model_a.addr_v4(8080), &TcpServerOpts { reply: 200, ..Default::default() });
    let _store = qdrant.tcp_server(qdrant.addr_v4(6333), &TcpServerOpts { reply: 200, ..Default::default() });
    let _api = internet.tcp_server((INTERNET_HOST_V4, 443).into(), &TcpServerOpts { reply: 200, ..Default::default() });
    let _blocked = qdrant.drop_inbound_tcp_syn(7000).expect("nft");
    let (manifests_arg, config_arg, findings_arg) =
        (dir.display().to_string(), config.display().to_string(), findings_path.display().to_string());
    let observer = ObserverProcess::start(&[
        "--poll-interval",
        "200ms",
        "--manifests",
        &manifests_arg,
        "--config",
        &config_arg,
        "--findings-log",
        &findings_arg,
    ])
    .expect("observer starts");

    let one = TcpClientOpts { send: 10, expect: 200, ..Default::default() };
    // Allowed, and the baseline of the agent → model-a edge: two a second.
    for _ in 0..6 {
        let report =
            agent.tcp_client(model_a.addr_v4(8080), &TcpClientOpts { count: 2, ..one.clone() }).expect("model");
        assert_eq!(report.complete, 2);
        std::thread::sleep(Duration::from_millis(1000));
    }
    // Intent violation: straight to the internet, past the egress gateway.
    assert_eq!(agent.tcp_client((INTERNET_HOST_V4, 443).into(), &one).expect("internet").complete, 1);
    // Enforcement gap: qdrant's policy admits only the agent; the lab delivers anyway.
    assert_eq!(model_a.tcp_client(qdrant.addr_v4(6333), &one).expect("store").complete, 1);
    // Denied attempt: the policy denies port 7000 and the lab drops the SYN.
    let attempt = agent
        .tcp_client(qdrant.addr_v4(7000), &TcpClientOpts { timeout: Duration::from_millis(1200), ..one.clone() })
        .expect("attempt");
    assert_eq!(attempt.timed_out, 1);
    // Spike: forty connections in about a second, twenty times the baseline.
    let burst = agent.tcp_client(model_a.addr_v4(8080), &TcpClientOpts { count: 40, ..one.clone() }).expect("burst");
    assert_eq!(burst.complete, 40);
    // Every connection to the model server has ended at both sockets.
    observer.wait_for_records(Duration::from_secs(30), |records| {
        verdicts(records, agent.cgroup_id(), 8080).len() == 52
            && verdicts(records, model_a.cgroup_id(), 8080).len() == 52
    });
    let run = observer.stop().expect("observer stops");

    assert_eq!(verdicts(&run.records, agent.cgroup_id(), 8080), vec!["allowed"; 52]);
    assert_eq!(verdicts(&run.records, model_a.cgroup_id(), 8080), vec!["allowed"; 52], "seen at model-a too");
    assert_eq!(verdicts(&run.records, agent.cgroup_id(), 443), vec!["intent-violation"]);
    assert_eq!(verdicts(&run.records, model_a.cgroup_id(), 6333), vec!["enforcement-gap"]);
    assert_eq!(verdicts(&run.records, qdrant.cgroup_id(), 6333), vec!["enforcement-gap"], "delivered: seen at qdrant");
    assert_eq!(verdicts(&run.records, agent.cgroup_id(), 7000), vec!["denied-attempt"]);
    let violation = run
        .records
        .iter()
        .find(|record| {
            record["dst"]["port"] == 443 && record["event"] == "end" && record["cgroup"]["id"] == agent.cgroup_id()
        })
        .expect("violation record");
    assert_eq!(violation["verdict"]["intent"]["name"], "agents");
    assert_eq!(violation["verdict"]["src_uid"], agent.uid());
    assert_eq!(violation["verdict"]["src_tier"], "agent");

    // The findings log is rewritten as counts grow: keep the last line of each finding.
    let text = std::fs::read_to_string(&findings_path).expect("findings log");
    let mut findings: HashMap<String, Value> = HashMap::new();
    for line in text.lines() {
        let finding: Value = serde_json::from_str(line).expect("finding is JSON");
        let key =
            format!("{}|{}|{}|{}", finding["kind"], finding["rule"], finding["source"]["pod"], finding["destination"]);
        findings.insert(key, finding);
    }
    let mut kinds: Vec<(String, String)> = findings
        .values()
        .map(|finding| {
            let who = finding["source"]["pod"].as_str().or(finding["pod"]["pod"].as_str()).unwrap_or("?").to_owned();
            (finding["kind"].as_str().unwrap_or("?").to_owned(), who)
        })
        .collect();
    kinds.sort();
    let expected = [
        ("denied-attempt", "agent-5c8d-a1"),
        ("enforcement-gap", "model-a-0"),
        ("intent-violation", "agent-5c8d-a1"),
        ("spike", "agent-5c8d-a1"),
        ("unprotected", "model-b-0"),
    ];
    assert_eq!(
        kinds,
        expected.iter().map(|(kind, who)| ((*kind).to_owned(), (*who).to_owned())).collect::<Vec<_>>(),
        "findings log:\n{text}"
    );
    let gap = findings.values().find(|finding| finding["kind"] == "enforcement-gap").expect("gap");
    assert_eq!(gap["count"], 2, "seen from both ends, one finding: {gap}");
    assert_eq!(gap["policies"], json!([{"namespace": "ai", "name": "qdrant-ingress", "resourceVersion": "7"}]));
    assert!(findings.values().all(|finding| finding["coverage"] == "complete"), "nothing was lost");
    std::fs::remove_dir_all(&dir).expect("cleanup");
}
