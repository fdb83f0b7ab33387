//! `cargo xtask demo`: the observer on a lab "cluster" of AI-tier pods.
//!
//! Sets up what is missing, builds, brings up lab pods (an API gateway, a
//! model server, an agent, a tool server, a vector store, an egress gateway)
//! and an internet namespace, writes their manifests with NetworkPolicies and
//! FlowIntents, runs `observer run` in standalone mode on them, and drives a
//! scripted story: normal traffic, an agent calling out directly, an
//! enforcement gap, a blocked attempt, a spike and a shadow AI workload (the
//! untiered API gateway resolving and calling `api.openai.com`, which the
//! internet's DNS server answers), showing a live summary of flows by
//! verdict and findings. Cleans up on exit or Ctrl-C.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use observer_tests::{
    Endpoint, INTERNET_HOST_V4, Lab, ObserverProcess, Pod, TcpClientOpts, TcpServerOpts,
    dns::{DnsQueryOpts, Zone},
    manifests::{self, PodSpec},
};
use serde_json::{Value, json};

use crate::{
    binaries::{Profile, build_lab_binaries},
    command::step,
    interrupt,
};

const TIER: &str = "ai.governance/tier";

/// The demo's pods: (name, app, tier, workload kind).
const PODS: [(&str, &str, Option<&str>, &str); 6] = [
    ("api-gateway", "api-gateway", None, "Deployment"),
    ("model-server", "model-server", Some("model-serving"), "Deployment"),
    ("agent", "agent", Some("agent"), "Deployment"),
    ("tool-server", "tool-server", Some("tool-server"), "Deployment"),
    ("vector-store", "vector-store", Some("vector-store"), "StatefulSet"),
    ("egress-gateway", "egress-gateway", None, "Deployment"),
];

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    interrupt::install();
    build_lab_binaries(Profile::Debug)?;
    interrupt::check()?;
    step("bringing up the lab: six AI-tier pods and an internet namespace");
    let lab = Lab::builder().pods(PODS.len()).ipv6(false).internet(true).build().context("bringing up the lab")?;
    let dir = std::env::temp_dir().join(format!("observer-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = story(&lab, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    step("cleaning up the lab");
    drop(lab);
    result?;
    step("done");
    Ok(())
}

fn story(lab: &Lab, dir: &Path) -> anyhow::Result<()> {
    let pod = |name: &str| -> &Pod {
        let index = PODS.iter().position(|(pod, ..)| *pod == name).unwrap_or(0);
        lab.pod(index)
    };
    for (index, (name, _, tier, _)) in PODS.iter().enumerate() {
        println!("    {:<15} {:<14} tier {}", name, lab.pod(index).ipv4(), tier.unwrap_or("-"));
    }
    write_manifests(lab, dir)?;
    println!("    manifests (pods, 5 NetworkPolicies, 2 FlowIntents): {}", dir.join("ai.json").display());
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        "spikes: {window_seconds: 2, warmup_windows: 4, min_connections: 10, seasonal_buckets: 0}\n\
         findings: {flush_interval_seconds: 1}\n",
    )?;
    let findings = dir.join("findings.jsonl");
    let internet = lab.internet().context("the lab has an internet namespace")?;
    let _servers = [
        pod("model-server")
            .tcp_server(pod("model-server").addr_v4(8080), &TcpServerOpts { reply: 4096, ..Default::default() })?,
        pod("tool-server")
            .tcp_server(pod("tool-server").addr_v4(9000), &TcpServerOpts { reply: 512, ..Default::default() })?,
        pod("vector-store")
            .tcp_server(pod("vector-store").addr_v4(6333), &TcpServerOpts { reply: 2048, ..Default::default() })?,
        pod("egress-gateway")
            .tcp_server(pod("egress-gateway").addr_v4(3128), &TcpServerOpts { reply: 1024, ..Default::default() })?,
        internet.tcp_server((INTERNET_HOST_V4, 443).into(), &TcpServerOpts { reply: 1024, ..Default::default() })?,
        // The internet's resolver: api.openai.com is the lab's internet host.
        internet.dns_server(
            (INTERNET_HOST_V4, 53).into(),
            &Zone::default().with("api.openai.com", &[INTERNET_HOST_V4.into()], 300),
        )?,
    ];
    step("starting the observer (standalone mode on those manifests)");
    let args = [dir.display().to_string(), config.display().to_string(), findings.display().to_string()];
    let observer = ObserverProcess::start(&[
        "--poll-interval",
        "500ms",
        "--manifests",
        &args[0],
        "--config",
        &args[1],
        "--findings-log",
        &args[2],
    ])?;
    println!("    flow log: {}\n    findings: {}", observer.flow_log().display(), findings.display());
    if let Some(addr) = observer.metrics_addr() {
        println!("    metrics:  http://{addr}/metrics (and /healthz, /readyz) while the demo runs");
    }
    let ask = |send: u64, expect: u64| TcpClientOpts { send, expect, ..Default::default() };

    chapter("1. normal traffic: gateway → model server → tool server and vector store (allowed)");
    for _ in 0..5 {
        interrupt::check()?;
        pod("api-gateway").tcp_client(pod("model-server").addr_v4(8080), &ask(600, 4096))?;
        pod("agent").tcp_client(pod("model-server").addr_v4(8080), &TcpClientOpts { count: 2, ..ask(300, 4096) })?;
        pod("agent").tcp_client(pod("tool-server").addr_v4(9000), &ask(200, 512))?;
        pod("agent").tcp_client(pod("vector-store").addr_v4(6333), &ask(100, 2048))?;
        pod("agent").tcp_client(pod("egress-gateway").addr_v4(3128), &ask(300, 1024))?;
        summary(&observer, &findings);
        std::thread::sleep(Duration::from_millis(1500));
    }
    interrupt::check()?;
    chapter("2. the agent calls 203.0.113.10:443 directly, past its egress gateway (intent violation)");
    pod("agent").tcp_client((INTERNET_HOST_V4, 443).into(), &ask(300, 1024))?;
    pause(&observer, &findings)?;
    chapter("3. the tool server reads the vector store: policy says no, the lab's CNI delivers (enforcement gap)");
    pod("tool-server").tcp_client(pod("vector-store").addr_v4(6333), &ask(100, 2048))?;
    pause(&observer, &findings)?;
    chapter("4. the model server tries the agent's admin port: denied and dropped (denied attempt)");
    {
        let _drop = pod("agent").drop_inbound_tcp_syn(7000)?;
        pod("model-server").tcp_client(
            pod("agent").addr_v4(7000),
            &TcpClientOpts { timeout: Duration::from_millis(1500), ..ask(10, 0) },
        )?;
    }
    pause(&observer, &findings)?;
    chapter("5. the agent floods the model server: sixty connections at once (spike)");
    pod("agent").tcp_client(pod("model-server").addr_v4(8080), &TcpClientOpts { count: 60, ..ask(300, 4096) })?;
    pause(&observer, &findings)?;
    pause(&observer, &findings)?;
    chapter("6. the API gateway, no AI tier, resolves api.openai.com and calls it (shadow AI, provider openai)");
    let answer = pod("api-gateway").dns_query((INTERNET_HOST_V4, 53).into(), &DnsQueryOpts::a("api.openai.com"))?;
    println!("    api.openai.com → {:?} ({})", answer.addrs, answer.rcode);
    pod("api-gateway").tcp_client((INTERNET_HOST_V4, 443).into(), &TcpClientOpts { count: 3, ..ask(400, 1024) })?;
    pause(&observer, &findings)?;
    step("stopping the observer");
    let run = observer.stop()?;
    println!();
    print_findings(&findings)?;
    println!("\ncapture health: {}", run.health);
    Ok(())
}

fn chapter(title: &str) {
    println!("\n--- {title}");
}

fn pause(observer: &ObserverProcess, findings: &Path) -> anyhow::Result<()> {
    for _ in 0..3 {
        interrupt::check()?;
        std::thread::sleep(Duration::from_millis(700));
    }
    summary(observer, findings);
    Ok(())
}

/// One line: flows by verdict so far, and findings by kind.
fn summary(observer: &ObserverProcess, findings: &Path) {
    let mut verdicts: BTreeMap<String, u64> = BTreeMap::new();
    for record in observer.records().iter().filter(|record| record["event"] == "end") {
        let verdict = record["verdict"]["verdict"].as_str().unwrap_or("unjudged").to_owned();
        *verdicts.entry(verdict).or_default() += 1;
    }
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    for finding in latest_findings(findings).values() {
        *kinds.entry(finding["kind"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    let show = |map: &BTreeMap<String, u64>| {
        map.iter().map(|(key, count)| format!("{key} {count}")).collect::<Vec<_>>().join(", ")
    };
    println!(
        "    flows: {}  |  findings: {}",
        show(&verdicts),
        if kinds.is_empty() { "none".to_owned() } else { show(&kinds) }
    );
}

/// The last line of each finding (the log rewrites a finding as it recurs).
fn latest_findings(path: &Path) -> BTreeMap<String, Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut latest = BTreeMap::new();
    for finding in text.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()) {
        let key = format!(
            "{}|{}|{}|{}|{}",
            finding["kind"],
            finding["rule"],
            finding["source"]["workload"],
            finding["destination"]["ip"],
            finding["port"]
        );
        latest.insert(key, finding);
    }
    latest
}

fn print_findings(path: &Path) -> anyhow::Result<()> {
    println!("findings:");
    for finding in latest_findings(path).values() {
        let name = |party: &Value| party["pod"].as_str().or(party["ip"].as_str()).unwrap_or("?").to_owned();
        let what = match finding["kind"].as_str() {
            Some("unprotected") => name(&finding["source"]),
            _ => format!("{} → {}:{}", name(&finding["source"]), name(&finding["destination"]), finding["port"]),
        };
        println!(
            "    {:<17} {:<38} x{:<3} {}",
            finding["kind"].as_str().unwrap_or("?"),
            what,
            finding["count"],
            finding["rule"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn write_manifests(lab: &Lab, dir: &Path) -> anyhow::Result<PathBuf> {
    let mut items = vec![manifests::namespace("ai", &[("team", "ml-platform")])];
    for (index, (name, app, tier, kind)) in PODS.iter().enumerate() {
        let mut labels = vec![("app", *app)];
        if let Some(tier) = tier {
            labels.push((TIER, *tier));
        }
        let pod_name = format!("{name}-0");
        items.push(manifests::pod(&PodSpec {
            pod: lab.pod(index),
            namespace: "ai",
            name: &pod_name,
            labels,
            owner: Some((kind, name)),
            ports: vec![],
        }));
    }
    let app = |name: &str| json!({"podSelector": {"matchLabels": {"app": name}}});
    let policy = |name: &str, spec: Value| {
        json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
               "metadata": {"name": name, "namespace": "ai", "resourceVersion": "1"}, "spec": spec})
    };
    items.extend([
        policy(
            "model-server-ingress",
            json!({"podSelector": {"matchLabels": {"app": "model-server"}},
            "ingress": [{"from": [app("api-gateway"), app("agent")], "ports": [{"port": 8080}]}]}),
        ),
        policy(
            "agent-egress",
            json!({"podSelector": {"matchLabels": {"app": "agent"}}, "policyTypes": ["Egress"],
            "egress": [{"to": [app("model-server"), app("tool-server"), app("vector-store"), app("egress-gateway")]},
                       {"to": [{"ipBlock": {"cidr": "203.0.113.0/24"}}], "ports": [{"port": 443}]}]}),
        ),
        policy("agent-ingress", json!({"podSelector": {"matchLabels": {"app": "agent"}}, "policyTypes": ["Ingress"]})),
        policy(
            "tool-server-ingress",
            json!({"podSelector": {"matchLabels": {"app": "tool-server"}},
            "ingress": [{"from": [app("agent")]}]}),
        ),
        policy(
            "vector-store-ingress",
            json!({"podSelector": {"matchLabels": {"app": "vector-store"}},
            "ingress": [{"from": [app("agent")], "ports": [{"port": 6333}]}]}),
        ),
        json!({"apiVersion": "ai.governance/v1alpha1", "kind": "FlowIntent",
               "metadata": {"name": "agents", "namespace": "ai", "generation": 1},
               "spec": {"description": "Agents reach the internet only through the egress gateway.",
                        "subject": {"tiers": ["agent"]},
                        "egress": {"forbid": [{"metadataService": true}, {"apiServer": true}],
                                   "onlyThrough": {"podSelector": {"matchLabels": {"app": "egress-gateway"}}}},
                        "isolation": {"ingress": true, "egress": true}}}),
        json!({"apiVersion": "ai.governance/v1alpha1", "kind": "FlowIntent",
               "metadata": {"name": "tool-servers", "namespace": "ai", "generation": 1},
               "spec": {"description": "Tool servers must be isolated both ways.",
                        "subject": {"tiers": ["tool-server"]},
                        "isolation": {"ingress": true, "egress": true}}}),
    ]);
    let path = dir.join("ai.json");
    manifests::write_list(&path, items).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
