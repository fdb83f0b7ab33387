//! Verdict throughput at cluster scale: 10,000 pods, 1,000 policies, 100 namespaces;
//! then the same with 100 ClusterNetworkPolicies (50 Admin, 50 Baseline) on top.
//!
//! `verdict_indexed_*` is the daemon's path (the engine indexes the inventory's
//! pods when it is compiled); `verdict_*` judges the same flows from the pods'
//! fields, as for pods the index does not know.
//!
//! Run: `AYA_BUILD_SKIP=1 cargo bench -p observer --bench policy`.

use std::{hint::black_box, net::IpAddr, sync::Arc};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use observer::{
    inventory::model::{ContainerPort, Labels, Namespace, Pod, Protocol},
    policy::{Endpoint, PolicyEngine, cnp::ClusterNetworkPolicy},
};
use serde_json::json;

const NAMESPACES: usize = 100;
const PODS_PER_NAMESPACE: usize = 100;
const POLICIES_PER_NAMESPACE: usize = 10;
const FLOWS: usize = 4096;

fn labels(pairs: &[(&str, String)]) -> Labels {
    pairs.iter().map(|(key, value)| ((*key).to_owned(), value.clone())).collect()
}

fn namespaces() -> Vec<Namespace> {
    (0..NAMESPACES)
        .map(|index| {
            let name = format!("ns{index}");
            Namespace {
                labels: labels(&[
                    ("kubernetes.io/metadata.name", name.clone()),
                    ("team", format!("t{}", index % 10)),
                    ("env", if index % 3 == 0 { "dev" } else { "prod" }.to_owned()),
                ]),
                name,
                resource_version: Some("1".to_owned()),
            }
        })
        .collect()
}

fn pods() -> Vec<Arc<Pod>> {
    (0..NAMESPACES * PODS_PER_NAMESPACE)
        .map(|index| {
            let namespace = index / PODS_PER_NAMESPACE;
            let app = index % 10;
            Arc::new(Pod {
                uid: format!("uid-{index}"),
                namespace: format!("ns{namespace}"),
                name: format!("pod-{index}"),
                labels: labels(&[
                    ("app", format!("a{app}")),
                    ("tier", if app < 5 { "front" } else { "back" }.to_owned()),
                    ("pod-template-hash", format!("{:x}", index * 7919)),
                ]),
                resource_version: Some("1".to_owned()),
                owner: None,
                ips: vec![IpAddr::from([198, 18, (index / 256) as u8, (index % 256) as u8])],
                host_network: false,
                node_name: None,
                container_ports: vec![
                    ContainerPort {
                        name: Some("http".to_owned()),
                        port: 8080 + (app % 2) as u16,
                        protocol: Protocol::TCP,
                    },
                    ContainerPort { name: Some("metrics".to_owned()), port: 9090, protocol: Protocol::TCP },
                ],
                container_ids: Vec::new(),
                phase: Some("Running".to_owned()),
            })
        })
        .collect()
}

/// Ten policies per namespace, in the shapes real clusters use.
fn policies() -> Vec<NetworkPolicy> {
    let mut policies = Vec::new();
    for namespace in 0..NAMESPACES {
        let ns = format!("ns{namespace}");
        let mut add = |name: String, spec: serde_json::Value| {
            policies.push(
                serde_json::from_value(json!({
                    "metadata": {"namespace": ns, "name": name, "resourceVersion": "7", "generation": 1},
                    "spec": spec,
                }))
                .expect("valid policy"),
            );
        };
        add("default-deny".to_owned(), json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}));
        add(
            "allow-dns".to_owned(),
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
                "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns0"}}}],
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
            }]}),
        );
        for app in 1..7 {
            add(
                format!("a{app}-from-a{}", app - 1),
                json!({"podSelector": {"matchLabels": {"app": format!("a{app}")}}, "ingress": [{
                    "from": [{"podSelector": {"matchLabels": {"app": format!("a{}", app - 1)}}}],
                    "ports": [{"port": "http"}]
                }]}),
            );
        }
        add(
            "front-from-team".to_owned(),
            json!({"podSelector": {"matchLabels": {"tier": "front"}}, "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"team": format!("t{}", namespace % 10)}},
                          "podSelector": {"matchExpressions": [{"key": "tier", "operator": "In", "values": ["front"]}]}}],
                "ports": [{"port": 8080, "endPort": 8090}]
            }]}),
        );
        add(
            "egress-out".to_owned(),
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a9"]}]},
            "egress": [
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["198.18.0.0/15", "10.0.0.0/8"]}}], "ports": [{"port": 443}]},
                {"to": [{"namespaceSelector": {"matchLabels": {"env": "prod"}},
                         "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["a1", "a2", "a3"]}]}}]}
            ]}),
        );
    }
    assert_eq!(policies.len(), NAMESPACES * POLICIES_PER_NAMESPACE);
    policies
}

/// 100 ClusterNetworkPolicies: 50 Admin, 50 Baseline, subjects by team
/// namespaces or by app in prod namespaces; ingress Pass within the team and
/// Deny from dev back-ends on a port range, egress Deny to metadata and
/// private ranges and Accept to the next team on 8080.
fn cluster_policies() -> Vec<ClusterNetworkPolicy> {
    (0..100)
        .map(|index| {
            let subject = if index % 2 == 0 {
                json!({"namespaces": {"matchLabels": {"team": format!("t{}", index % 10)}}})
            } else {
                json!({"pods": {"namespaceSelector": {"matchLabels": {"env": "prod"}},
                    "podSelector": {"matchLabels": {"app": format!("a{}", index % 10)}}}})
            };
            serde_json::from_value(json!({
                "metadata": {"name": format!("cnp-{index}"), "resourceVersion": "1"},
                "spec": {
                    "tier": if index < 50 { "Admin" } else { "Baseline" },
                    "priority": (index % 50) * 10,
                    "subject": subject,
                    "ingress": [
                        {"action": "Pass", "from": [{"namespaces": {"matchLabels": {"team": format!("t{}", index % 10)}}}]},
                        {"action": "Deny", "from": [{"pods": {"namespaceSelector": {"matchLabels": {"env": "dev"}},
                            "podSelector": {"matchLabels": {"tier": "back"}}}}],
                         "protocols": [{"tcp": {"destinationPort": {"range": {"start": 9000, "end": 9100}}}}]},
                    ],
                    "egress": [
                        {"action": "Deny", "to": [{"networks": ["169.254.169.254/32", "10.0.0.0/8"]}]},
                        {"action": "Accept", "to": [{"namespaces": {"matchLabels": {"team": format!("t{}", (index + 1) % 10)}}}],
                         "protocols": [{"tcp": {"destinationPort": {"number": 8080}}}]},
                    ],
                },
            }))
            .expect("valid ClusterNetworkPolicy")
        })
        .collect()
}

/// A small deterministic generator, so every run judges the same flows.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, bound: usize) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 33) as usize) % bound
    }
}

fn flows(pods: &[Arc<Pod>]) -> Vec<(Endpoint<'_>, Endpoint<'_>, u16, Protocol)> {
    let mut random = Lcg(42);
    let ports = [
        (8080, Protocol::TCP),
        (8081, Protocol::TCP),
        (9090, Protocol::TCP),
        (443, Protocol::TCP),
        (53, Protocol::UDP),
    ];
    (0..FLOWS)
        .map(|_| {
            let source = &*pods[random.next(pods.len())];
            // Half the flows stay in their namespace, as most traffic does.
            let destination = if random.next(2) == 0 {
                let namespace = pods.iter().position(|pod| pod.namespace == source.namespace).unwrap_or_default();
                &*pods[namespace + random.next(PODS_PER_NAMESPACE)]
            } else {
                &*pods[random.next(pods.len())]
            };
            let (port, protocol) = ports[random.next(ports.len())];
            let outside = Endpoint::External(IpAddr::from([203, 0, 113, random.next(256) as u8]));
            match random.next(10) {
                0 => (Endpoint::pod(source), outside, port, protocol),
                1 => (outside, Endpoint::pod(destination), port, protocol),
                _ => (Endpoint::pod(source), Endpoint::pod(destination), port, protocol),
            }
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let (namespaces, pods, policies) = (namespaces(), pods(), policies());
    let (engine, errors) = PolicyEngine::compile(&policies, &namespaces);
    assert!(errors.is_empty(), "{errors:?}");
    let mut indexed = engine.clone();
    indexed.index_pods(pods.iter().cloned());
    let flows = flows(&pods);
    let allowed = flows.iter().filter(|flow| engine.verdict(flow.0, flow.1, flow.2, flow.3).allowed).count();
    assert!(allowed > 0 && allowed < FLOWS, "a mix of verdicts: {allowed} of {FLOWS} allowed");
    for flow in &flows {
        assert_eq!(engine.verdict(flow.0, flow.1, flow.2, flow.3), indexed.verdict(flow.0, flow.1, flow.2, flow.3));
    }
    println!("{allowed} of {FLOWS} benchmark flows allowed");
    let (cluster, errors) = indexed.clone().with_cluster_policies(&cluster_policies(), &[]);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(cluster.cluster_len(), 100);
    // The per-pod subject index changes the work, not the verdicts.
    let (unindexed_cluster, _) = engine.clone().with_cluster_policies(&cluster_policies(), &[]);
    for flow in &flows {
        assert_eq!(
            cluster.verdict(flow.0, flow.1, flow.2, flow.3),
            unindexed_cluster.verdict(flow.0, flow.1, flow.2, flow.3)
        );
    }
    let decided = flows
        .iter()
        .filter(|flow| {
            let verdict = cluster.verdict(flow.0, flow.1, flow.2, flow.3);
            !verdict.egress.cluster.is_empty() || !verdict.ingress.cluster.is_empty()
        })
        .count();
    let allowed_cluster = flows.iter().filter(|flow| cluster.verdict(flow.0, flow.1, flow.2, flow.3).allowed).count();
    assert!(decided > 0 && allowed_cluster > 0 && allowed_cluster < FLOWS, "{decided} {allowed_cluster}");
    println!(
        "with 100 ClusterNetworkPolicies: {decided} of {FLOWS} flows matched a CNP rule, {allowed_cluster} allowed"
    );

    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(FLOWS as u64));
    for (name, engine) in [
        ("verdict_indexed_10k_pods_1k_policies_100_namespaces", &indexed),
        ("verdict_10k_pods_1k_policies_100_namespaces", &engine),
        ("verdict_indexed_10k_pods_1k_policies_100_cnps", &cluster),
    ] {
        group.bench_function(name, |bencher| {
            bencher.iter(|| {
                for (source, destination, port, protocol) in &flows {
                    black_box(engine.verdict(black_box(*source), black_box(*destination), *port, *protocol));
                }
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("policy");
    group.sample_size(20);
    group.bench_function("compile_1k_policies_100_namespaces", |bencher| {
        bencher.iter(|| black_box(PolicyEngine::compile(black_box(&policies), &namespaces)));
    });
    group.bench_function("index_10k_pods", |bencher| {
        bencher.iter_batched(
            || engine.clone(),
            |mut engine| {
                engine.index_pods(black_box(&pods).iter().cloned());
                engine
            },
            BatchSize::LargeInput,
        );
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
