//! Issue 24 end to end: AI provider egress and `shadow-ai` findings on a lab built like a real
//! node (kube-dns behind its ClusterIP with kube-proxy DNAT, the observer in the node's network
//! namespace). kube-dns answers catalog names with addresses of the lab's internet namespace
//! (203.0.113.0/24), where an HTTPS-port server answers. Exact assertions on the flow log, the
//! findings log and `/metrics`:
//!
//! - an untiered pod that resolves and calls `api.openai.com` (twice) is one `shadow-ai` finding,
//!   provider `openai`, counted per connection;
//! - an agent-tier pod whose FlowIntent allows `provider: openai` makes none (and breaks no intent);
//! - an untiered pod connecting straight to the address another pod resolved for `api.openai.com`
//!   is caught (`ai_via: address`);
//! - a provider added by configuration (`acme-llm`) is named and found;
//! - a pod in an exempted namespace is counted in the provider metrics but makes no finding.
//!
//! Root only; one thread:
//! `cargo test -p observer-tests --test shadow_ai -- --test-threads=1`

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    time::{Duration, Instant},
};

use observer_tests::{
    Endpoint, KUBE_DNS_IP_V4, KubeProxy, Lab, NodeRunDir, ObserverProcess, Pod, Proc, Service, TcpClientOpts,
    TcpServerOpts,
    dns::{DnsQueryOpts, Zone},
    manifests::{self, PodSpec},
    root_or_skip,
};
use serde_json::{Value, json};

const TRAFFIC: &str = env!("CARGO_BIN_EXE_lab-traffic");
const TIER: &str = "ai.governance/tier";
/// Bytes of each call: request, reply.
const CALL: (u64, u64) = (40, 200);

/// The lab: kube-dns with the catalog names, the observer's files.
struct Cluster {
    lab: Lab,
    run: NodeRunDir,
    openai: Ipv4Addr,
    acme: Ipv4Addr,
    _proxy: KubeProxy,
    _servers: Vec<Proc>,
}

/// | lab pod | Pod object | namespace | labels |
/// | --- | --- | --- | --- |
/// | pod0 | billing-0 | shop | app=billing (no tier) |
/// | pod1 | agent-0 | ai | app=agent, tier agent |
/// | pod2 | hardcoded-0 | shop | app=hardcoded (no tier) |
/// | pod3 | coredns-0 | kube-system | k8s-app=kube-dns |
/// | pod4 | acme-0 | shop | app=acme (no tier) |
/// | pod5 | notebook-0 | research | app=notebook (no tier, namespace exempted) |
/// A lab pod's namespace, Pod name and labels.
type PodRow = (&'static str, &'static str, &'static [(&'static str, &'static str)]);

const PODS: [PodRow; 6] = [
    ("shop", "billing-0", &[("app", "billing")]),
    ("ai", "agent-0", &[("app", "agent"), (TIER, "agent")]),
    ("shop", "hardcoded-0", &[("app", "hardcoded")]),
    ("kube-system", "coredns-0", &[("k8s-app", "kube-dns")]),
    ("shop", "acme-0", &[("app", "acme")]),
    ("research", "notebook-0", &[("app", "notebook")]),
];

impl Cluster {
    fn build() -> Self {
        let lab =
            Lab::builder().pods(6).ipv6(false).internet(true).node(true).traffic_bin(TRAFFIC).build().expect("lab");
        let internet = lab.internet().expect("internet");
        let (openai, acme) =
            (internet.add_host_address().expect("address"), internet.add_host_address().expect("address"));
        let https = internet
            .tcp_server("0.0.0.0:443".parse().expect("addr"), &TcpServerOpts { reply: CALL.1, ..Default::default() })
            .expect("provider server");
        let dns = Service::kube_dns(lab.pod(3), "coredns-0", false);
        let proxy = lab.kube_proxy(vec![dns.clone()]).expect("kube-proxy");
        let zone =
            Zone::default().with("api.openai.com", &[openai.into()], 300).with("llm.acme.example", &[acme.into()], 300);
        let coredns = lab.pod(3);
        let dns_server = coredns.dns_server(coredns.addr_v4(53), &zone).expect("DNS server");
        let run = NodeRunDir::create("shadow-ai");
        let ns = |name: &str| manifests::namespace(name, &[("kubernetes.io/metadata.name", name)]);
        let mut items = vec![ns("shop"), ns("ai"), ns("kube-system"), ns("research")];
        for (index, (namespace, name, labels)) in PODS.iter().enumerate() {
            let spec =
                PodSpec { pod: lab.pod(index), namespace, name, labels: labels.to_vec(), owner: None, ports: vec![] };
            items.push(manifests::pod(&spec));
        }
        items.push(manifests::node(lab.node().expect("node")));
        items.extend(manifests::service_objects(&dns));
        // The agent may call OpenAI and kube-dns, nothing else.
        items.push(json!({
            "apiVersion": "ai.governance/v1alpha1", "kind": "FlowIntent",
            "metadata": {"name": "agents", "namespace": "ai", "resourceVersion": "1"},
            "spec": {"subject": {"tiers": ["agent"]}, "egress": {"allow": [
                {"provider": "openai", "ports": [{"port": 443}]},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                 "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}},
            ]}},
        }));
        manifests::write_list(&run.manifests().join("cluster.json"), items).expect("manifests");
        std::fs::write(
            run.config(),
            "findings: {flush_interval_seconds: 1}\nspikes: {min_connections: 100000}\n\
             ai:\n  catalog:\n    providers: [{name: acme-llm, kind: llm-api, patterns: [llm.acme.example]}]\n  \
             exempt: {namespaces: [research]}\n",
        )
        .expect("config");
        Self { lab, run, openai, acme, _proxy: proxy, _servers: vec![https, dns_server] }
    }

    fn pod(&self, name: &str) -> &Pod {
        let index = PODS.iter().position(|(_, pod, _)| *pod == name).expect("a lab pod");
        self.lab.pod(index)
    }

    /// Starts the observer in the node's network namespace, as a hostNetwork DaemonSet pod.
    fn observer(&self) -> ObserverProcess {
        self.run.start_observer(&self.lab, &[])
    }

    /// The last version of each finding in the findings log.
    fn findings(&self) -> Vec<Value> {
        self.run.findings_by(|finding| format!("{}|{}|{}", finding["kind"], finding["rule"], finding["source"]["pod"]))
    }
}

/// Resolves `name` through kube-dns from `pod`; the one address it answers.
fn resolve(pod: &Pod, name: &str) -> IpAddr {
    let answer = pod.dns_query((KUBE_DNS_IP_V4, 53).into(), &DnsQueryOpts::a(name)).expect("query");
    assert_eq!(answer.rcode, "NOERROR", "{name}: {answer:?}");
    assert_eq!(answer.addrs.len(), 1, "{name}: {answer:?}");
    answer.addrs[0]
}

/// `count` HTTPS-port calls from `pod` to `to`, each answered.
fn call(pod: &Pod, to: Ipv4Addr, count: u64) {
    let opts =
        TcpClientOpts { count, send: CALL.0, expect: CALL.1, timeout: Duration::from_secs(2), ..Default::default() };
    let report = pod.tcp_client((to, 443).into(), &opts).expect("client runs");
    assert_eq!(report.complete, count, "{report:?}");
}

/// End records written at `pod`'s socket for flows to `to`:443.
fn ends(records: &[Value], pod: &Pod, to: Ipv4Addr) -> Vec<Value> {
    let dst = SocketAddr::from((to, 443));
    records
        .iter()
        .filter(|r| r["event"] == "end" && r["cgroup"]["id"].as_u64() == Some(pod.cgroup_id()))
        .filter(|r| r["dst"]["ip"] == dst.ip().to_string() && r["dst"]["port"] == 443)
        .cloned()
        .collect()
}

/// The sum of a counter's samples whose labels contain every one of `labels`.
fn metric_sum(metrics: &str, name: &str, labels: &[&str]) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|label| l.contains(label)))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[test]
fn untiered_callers_of_ai_providers_are_shadow_ai_and_declared_agents_are_not() {
    if !root_or_skip("untiered_callers_of_ai_providers_are_shadow_ai_and_declared_agents_are_not") {
        return;
    }
    let cluster = Cluster::build();
    let observer = cluster.observer();
    let (billing, agent, hardcoded, acme, notebook) = (
        cluster.pod("billing-0"),
        cluster.pod("agent-0"),
        cluster.pod("hardcoded-0"),
        cluster.pod("acme-0"),
        cluster.pod("notebook-0"),
    );
    assert_eq!(resolve(billing, "api.openai.com"), IpAddr::from(cluster.openai));
    call(billing, cluster.openai, 2);
    assert_eq!(resolve(agent, "api.openai.com"), IpAddr::from(cluster.openai));
    call(agent, cluster.openai, 1);
    // Never resolved by this pod: the address billing resolved for api.openai.com.
    call(hardcoded, cluster.openai, 1);
    // A provider only the configuration's catalog knows.
    assert_eq!(resolve(acme, "llm.acme.example"), IpAddr::from(cluster.acme));
    call(acme, cluster.acme, 1);
    assert_eq!(resolve(notebook, "api.openai.com"), IpAddr::from(cluster.openai));
    call(notebook, cluster.openai, 1);
    let expected = [(billing, cluster.openai, 2), (agent, cluster.openai, 1), (hardcoded, cluster.openai, 1)]
        .into_iter()
        .chain([(acme, cluster.acme, 1), (notebook, cluster.openai, 1)]);
    let expected: Vec<(&Pod, Ipv4Addr, usize)> = expected.collect();
    let all_ended = observer.wait_for_records(Duration::from_secs(20), |records| {
        expected.iter().all(|(pod, to, count)| ends(records, pod, *to).len() >= *count)
    });
    assert!(all_ended, "not every call ended in the flow log:\n{}", observer.log());
    // Findings are counted as the judge sees the connections; scrape until all four show.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let metrics = observer.get("/metrics").expect("metrics from inside the node namespace").1;
        let counted = metric_sum(&metrics, "flow_observer_findings_total", &["kind=\"shadow-ai\""]);
        if counted >= 4.0 || Instant::now() >= deadline {
            break metrics;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The findings log is flushed every second: wait for the three findings there.
    let deadline = Instant::now() + Duration::from_secs(10);
    while cluster.findings().iter().filter(|f| f["kind"] == "shadow-ai").count() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let run = observer.stop().expect("observer stops");

    // Flow records name the provider, and how it was known.
    for (pod, to, count) in &expected {
        let records = ends(&run.records, pod, *to);
        assert_eq!(records.len(), *count, "{records:#?}");
        for record in &records {
            let dst = &record["dst"];
            let provider = if *to == cluster.acme { "acme-llm" } else { "openai" };
            assert_eq!(
                (dst["ai_provider"].as_str(), dst["ai_kind"].as_str()),
                (Some(provider), Some("llm-api")),
                "{record}"
            );
            if std::ptr::eq(*pod, hardcoded) {
                assert_eq!(dst["ai_via"], "address", "{record}");
                assert_eq!(dst["ai_name"], "api.openai.com", "{record}");
                assert_eq!(dst["dns"], json!({"resolved": false}), "{record}");
            } else {
                assert_eq!(dst["ai_via"], "dns", "{record}");
                assert!(dst.get("ai_name").is_none(), "{record}");
            }
        }
    }
    // The agent's call is what its intent allows.
    for record in ends(&run.records, agent, cluster.openai) {
        assert_eq!(record["verdict"]["verdict"], "allowed", "{record}");
    }

    let findings = cluster.findings();
    let mut shadow: Vec<&Value> = findings.iter().filter(|f| f["kind"] == "shadow-ai").collect();
    shadow.sort_by_key(|f| f["source"]["pod"].as_str().map(str::to_owned));
    let summary: Vec<(&str, &str, u64)> = shadow
        .iter()
        .map(|f| {
            (
                f["source"]["pod"].as_str().unwrap_or_default(),
                f["evidence"]["ai"]["provider"].as_str().unwrap_or_default(),
                f["count"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("acme-0", "acme-llm", 1), ("billing-0", "openai", 2), ("hardcoded-0", "openai", 1)],
        "one finding per untiered workload and provider, counted per connection:\n{findings:#?}"
    );
    let billing_finding = shadow[1];
    assert_eq!(billing_finding["rule"], "shadow-ai:openai");
    assert_eq!(billing_finding["source"]["workload"], json!({"kind": "Pod", "name": "billing-0"}));
    let evidence = &billing_finding["evidence"]["ai"];
    assert_eq!(evidence["names"], json!(["api.openai.com"]), "{billing_finding}");
    assert_eq!(evidence["pods"], json!(["billing-0"]), "{billing_finding}");
    assert_eq!(
        (evidence["connections"].as_u64(), evidence["bytes_sent"].as_u64(), evidence["bytes_received"].as_u64()),
        (Some(2), Some(2 * CALL.0), Some(2 * CALL.1)),
        "{billing_finding}"
    );
    assert!(billing_finding["first_seen"].is_string() && billing_finding["last_seen"].is_string());
    let direct = &shadow[2]["evidence"]["ai"];
    assert_eq!(direct["direct_ip"], json!([{"ip": cluster.openai.to_string(), "name": "api.openai.com"}]), "{direct}");
    assert!(
        !findings.iter().any(|f| f["kind"] == "intent-violation" && f["source"]["pod"] == "agent-0"),
        "the agent's intent allows openai:\n{findings:#?}"
    );

    assert_eq!(metric_sum(&metrics, "flow_observer_findings_total", &["kind=\"shadow-ai\""]), 4.0, "{metrics}");
    let connections = |namespace: &str, workload: &str, tier: &str, provider: &str| {
        let labels = [
            format!("namespace=\"{namespace}\""),
            format!("workload=\"{workload}\""),
            format!("tier=\"{tier}\""),
            format!("provider=\"{provider}\""),
        ];
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        metric_sum(&metrics, "flow_observer_ai_provider_connections_total", &labels)
    };
    assert_eq!(connections("shop", "billing-0", "", "openai"), 2.0, "{metrics}");
    assert_eq!(connections("ai", "agent-0", "agent", "openai"), 1.0, "{metrics}");
    assert_eq!(connections("shop", "hardcoded-0", "", "openai"), 1.0, "{metrics}");
    assert_eq!(connections("shop", "acme-0", "", "acme-llm"), 1.0, "{metrics}");
    assert_eq!(connections("research", "notebook-0", "", "openai"), 1.0, "exempt, still counted: {metrics}");
    assert_eq!(metric_sum(&metrics, "flow_observer_ai_provider_connections_total", &[]), 6.0, "{metrics}");
    let sent = ["workload=\"billing-0\"", "direction=\"sent\""];
    assert_eq!(metric_sum(&metrics, "flow_observer_ai_provider_bytes_total", &sent), (2 * CALL.0) as f64, "{metrics}");
}
