//! Properties of verdicts over random small clusters and policies.

mod policy_support;

use std::{collections::BTreeMap, sync::Arc};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use observer::{
    inventory::model::{ContainerPort, Namespace, Pod, Protocol},
    policy::{Endpoint, PolicyEngine, SideVerdict, Verdict},
};
use policy_support::{ip, namespace, pod, policy};
use proptest::{collection::vec, option, prelude::*, sample::select};
use serde_json::{Value, json};

const NAMESPACES: [&str; 4] = ["ns0", "ns1", "ns2", "undeclared"];

/// What a generated policy selects, kept to matchLabels so the test can tell
/// which pods it selects without the engine.
#[derive(Clone, Debug)]
struct PolicySpec {
    namespace: &'static str,
    selector: BTreeMap<&'static str, &'static str>,
    spec: Value,
}

impl PolicySpec {
    fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace
            && self.selector.iter().all(|(key, value)| pod.labels.get(*key).map(String::as_str) == Some(*value))
    }

    fn build(&self, index: usize) -> NetworkPolicy {
        policy(self.namespace, &format!("p{index}"), self.spec.clone())
    }
}

fn labels() -> impl Strategy<Value = BTreeMap<&'static str, &'static str>> {
    proptest::collection::btree_map(select(vec!["app", "tier"]), select(vec!["x", "y"]), 0..=2)
}

fn peer() -> impl Strategy<Value = Value> {
    prop_oneof![
        labels().prop_map(|pods| json!({"podSelector": {"matchLabels": pods}})),
        labels().prop_map(|namespaces| json!({"namespaceSelector": {"matchLabels": namespaces}})),
        (labels(), labels()).prop_map(|(namespaces, pods)| json!({
            "namespaceSelector": {"matchLabels": namespaces}, "podSelector": {"matchLabels": pods}
        })),
        select(vec!["198.18.0.0/30", "198.18.0.0/29", "203.0.113.0/24", "0.0.0.0/0"])
            .prop_map(|cidr| json!({"ipBlock": {"cidr": cidr}})),
        Just(json!({"ipBlock": {"cidr": "198.18.0.0/24", "except": ["198.18.0.0/31"]}})),
    ]
}

fn port() -> impl Strategy<Value = Value> {
    let protocol = select(vec!["TCP", "UDP"]);
    prop_oneof![
        (select(vec![80, 81]), protocol.clone())
            .prop_map(|(port, protocol)| json!({"port": port, "protocol": protocol})),
        protocol.clone().prop_map(|protocol| json!({"port": "p", "protocol": protocol})),
        protocol.clone().prop_map(|protocol| json!({"port": 80, "endPort": 81, "protocol": protocol})),
        protocol.prop_map(|protocol| json!({"protocol": protocol})),
    ]
}

/// The peers and ports of a generated rule, each list absent or present.
type RuleParts = (Option<Vec<Value>>, Option<Vec<Value>>);

fn rule() -> impl Strategy<Value = RuleParts> {
    (option::of(vec(peer(), 0..3)), option::of(vec(port(), 0..3)))
}

fn policy_spec() -> impl Strategy<Value = PolicySpec> {
    let types = select(vec![None, Some(vec!["Ingress"]), Some(vec!["Egress"]), Some(vec!["Ingress", "Egress"])]);
    (select(NAMESPACES[..3].to_vec()), labels(), types, option::of(vec(rule(), 0..3)), option::of(vec(rule(), 0..3)))
        .prop_map(|(namespace, selector, types, ingress, egress)| {
            let rules = |rules: Option<Vec<RuleParts>>, peers: &str| {
                rules.map(|rules| {
                    rules
                        .into_iter()
                        .map(|(peer_list, ports)| {
                            let mut rule = serde_json::Map::new();
                            if let Some(peer_list) = peer_list {
                                rule.insert(peers.to_owned(), Value::from(peer_list));
                            }
                            if let Some(ports) = ports {
                                rule.insert("ports".to_owned(), Value::from(ports));
                            }
                            Value::Object(rule)
                        })
                        .collect::<Vec<_>>()
                })
            };
            let mut spec = serde_json::Map::new();
            spec.insert("podSelector".to_owned(), json!({"matchLabels": selector}));
            if let Some(types) = types {
                spec.insert("policyTypes".to_owned(), json!(types));
            }
            if let Some(ingress) = rules(ingress, "from") {
                spec.insert("ingress".to_owned(), Value::from(ingress));
            }
            if let Some(egress) = rules(egress, "to") {
                spec.insert("egress".to_owned(), Value::from(egress));
            }
            PolicySpec { namespace, selector, spec: Value::Object(spec) }
        })
}

fn pods() -> impl Strategy<Value = Vec<Pod>> {
    vec((select(NAMESPACES.to_vec()), labels(), select(vec![80_u16, 81, 82]), any::<bool>()), 1..7).prop_map(|pods| {
        pods.into_iter()
            .enumerate()
            .map(|(index, (namespace, labels, named_port, udp))| {
                let protocol = if udp { Protocol::UDP } else { Protocol::TCP };
                let builder = pod(namespace, &format!("pod{index}")).ip(&format!("198.18.0.{index}"));
                labels
                    .into_iter()
                    .fold(builder, |builder, (key, value)| builder.label(key, value))
                    .port("p", named_port, protocol)
                    .build()
            })
            .collect()
    })
}

/// Pods as [`pods`] makes them, some on the host network, some with a port
/// name no policy uses; shared, for the engine's pod index.
fn shared_pods() -> impl Strategy<Value = Vec<Arc<Pod>>> {
    (pods(), vec((any::<bool>(), any::<bool>()), 7)).prop_map(|(pods, flags)| {
        pods.into_iter()
            .zip(flags)
            .map(|(mut pod, (host_network, other_port))| {
                pod.host_network = host_network && pod.namespace != "ns0";
                if other_port {
                    pod.container_ports.push(ContainerPort {
                        name: Some("q".to_owned()),
                        port: 81,
                        protocol: Protocol::TCP,
                    });
                }
                Arc::new(pod)
            })
            .collect()
    })
}

/// Peers with expressions as well as the shapes of [`peer`], for the index's
/// interned selectors.
fn indexed_policy_spec() -> impl Strategy<Value = PolicySpec> {
    let expression = (select(vec!["app", "tier"]), select(vec!["In", "NotIn", "Exists", "DoesNotExist"])).prop_map(
        |(key, operator)| {
            let values = if matches!(operator, "In" | "NotIn") { json!(["x"]) } else { json!(null) };
            json!({"podSelector": {"matchExpressions": [{"key": key, "operator": operator, "values": values}]}})
        },
    );
    (policy_spec(), vec(expression, 0..3), any::<bool>()).prop_map(|(mut spec, peers, ingress)| {
        if !peers.is_empty() {
            let (list, key) = if ingress { ("ingress", "from") } else { ("egress", "to") };
            let rules = spec.spec.as_object_mut().and_then(|spec| spec.get_mut(list)).and_then(Value::as_array_mut);
            if let Some(rule) = rules.and_then(|rules| rules.first_mut()).and_then(Value::as_object_mut) {
                rule.insert(key.to_owned(), Value::from(peers));
            }
        }
        spec
    })
}

fn namespaces() -> impl Strategy<Value = Vec<Namespace>> {
    vec(labels(), 3).prop_map(|labels| {
        labels
            .into_iter()
            .enumerate()
            .map(|(index, labels)| namespace(NAMESPACES[index], &labels.into_iter().collect::<Vec<_>>()))
            .collect()
    })
}

fn compile(specs: &[PolicySpec], namespaces: &[Namespace]) -> PolicyEngine {
    let policies: Vec<NetworkPolicy> = specs.iter().enumerate().map(|(index, spec)| spec.build(index)).collect();
    let (engine, errors) = PolicyEngine::compile(&policies, namespaces);
    assert!(errors.is_empty(), "generated policies are valid: {errors:?}");
    engine
}

/// Every flow among the pods and two outside addresses, on a few ports.
fn flows(pods: &[Pod]) -> Vec<(Endpoint<'_>, Endpoint<'_>, u16, Protocol)> {
    let mut ends: Vec<Endpoint<'_>> = pods.iter().map(Endpoint::pod).collect();
    ends.push(Endpoint::External(ip("203.0.113.5")));
    ends.push(Endpoint::External(ip("192.0.2.1")));
    let mut flows = Vec::new();
    for source in &ends {
        for destination in &ends {
            for port in [80, 81, 82] {
                for protocol in [Protocol::TCP, Protocol::UDP] {
                    flows.push((*source, *destination, port, protocol));
                }
            }
        }
    }
    flows
}

fn pod_of<'a>(endpoint: &Endpoint<'a>) -> Option<&'a Pod> {
    match endpoint {
        Endpoint::Pod { pod, .. } => Some(pod),
        Endpoint::External(_) => None,
    }
}

fn open() -> SideVerdict {
    SideVerdict { isolated: false, allowed: true, policies: Vec::new(), ..SideVerdict::default() }
}

fn verdict_of(engine: &PolicyEngine, flow: &(Endpoint<'_>, Endpoint<'_>, u16, Protocol)) -> Verdict {
    engine.verdict(flow.0, flow.1, flow.2, flow.3)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn pod_that_no_policy_selects_is_not_isolated(
        specs in vec(policy_spec(), 0..6), pods in pods(), namespaces in namespaces()
    ) {
        let engine = compile(&specs, &namespaces);
        for flow in flows(&pods) {
            let verdict = verdict_of(&engine, &flow);
            if pod_of(&flow.0).is_none_or(|source| !specs.iter().any(|spec| spec.selects(source))) {
                prop_assert_eq!(&verdict.egress, &open());
            }
            if pod_of(&flow.1).is_none_or(|destination| !specs.iter().any(|spec| spec.selects(destination))) {
                prop_assert_eq!(&verdict.ingress, &open());
            }
        }
    }

    #[test]
    fn adding_a_policy_that_selects_neither_end_changes_nothing(
        specs in vec(policy_spec(), 0..6), extra in policy_spec(), pods in pods(), namespaces in namespaces()
    ) {
        let before = compile(&specs, &namespaces);
        let mut more = specs.clone();
        more.push(extra.clone());
        let after = compile(&more, &namespaces);
        for flow in flows(&pods) {
            let unrelated = [pod_of(&flow.0), pod_of(&flow.1)].into_iter().flatten().all(|pod| !extra.selects(pod));
            if unrelated {
                prop_assert_eq!(verdict_of(&before, &flow), verdict_of(&after, &flow));
            }
        }
    }

    #[test]
    fn adding_a_policy_never_denies_what_an_isolated_side_allowed(
        specs in vec(policy_spec(), 1..6), extra in policy_spec(), pods in pods(), namespaces in namespaces()
    ) {
        let before = compile(&specs, &namespaces);
        let mut more = specs.clone();
        more.push(extra);
        let after = compile(&more, &namespaces);
        for flow in flows(&pods) {
            let (was, now) = (verdict_of(&before, &flow), verdict_of(&after, &flow));
            for (was, now) in [(&was.egress, &now.egress), (&was.ingress, &now.ingress)] {
                if was.isolated {
                    prop_assert!(now.isolated);
                    prop_assert!(!was.allowed || now.allowed, "additivity broken: {:?} then {:?}", was, now);
                }
            }
        }
    }

    #[test]
    fn verdict_is_consistent_with_its_sides(
        specs in vec(policy_spec(), 0..6), pods in pods(), namespaces in namespaces()
    ) {
        let engine = compile(&specs, &namespaces);
        for flow in flows(&pods) {
            let verdict = verdict_of(&engine, &flow);
            prop_assert_eq!(verdict.allowed, verdict.egress.allowed && verdict.ingress.allowed);
            for side in [&verdict.egress, &verdict.ingress] {
                prop_assert_eq!(side.allowed, !side.isolated || !side.policies.is_empty());
                prop_assert!(side.isolated || side.policies.is_empty());
            }
        }
    }

    #[test]
    fn policy_order_does_not_change_verdicts(
        specs in vec(policy_spec(), 0..6), pods in pods(), namespaces in namespaces()
    ) {
        let forward = compile(&specs, &namespaces);
        // Names follow the spec, not its position, so both engines name policies alike.
        let named: Vec<NetworkPolicy> = specs.iter().enumerate().map(|(index, spec)| spec.build(index)).collect();
        let reversed: Vec<NetworkPolicy> = named.into_iter().rev().collect();
        let (backward, errors) = PolicyEngine::compile(&reversed, &namespaces);
        prop_assert!(errors.is_empty());
        for flow in flows(&pods) {
            let (a, b) = (verdict_of(&forward, &flow), verdict_of(&backward, &flow));
            prop_assert_eq!(a.allowed, b.allowed);
            for (a, b) in [(&a.egress, &b.egress), (&a.ingress, &b.ingress)] {
                prop_assert_eq!(a.isolated, b.isolated);
                let mut a: Vec<String> = a.policies.iter().map(ToString::to_string).collect();
                let mut b: Vec<String> = b.policies.iter().map(ToString::to_string).collect();
                a.sort();
                b.sort();
                prop_assert_eq!(a, b);
            }
        }
    }

    #[test]
    fn indexed_pods_get_the_verdicts_of_plain_pods(
        specs in vec(indexed_policy_spec(), 0..8),
        pods in shared_pods(),
        namespaces in namespaces(),
        indexed in vec(any::<bool>(), 7),
    ) {
        let plain = compile(&specs, &namespaces);
        let mut engine = plain.clone();
        // Some pods stay out of the index: flows between the two kinds must agree too.
        engine.index_pods(pods.iter().zip(&indexed).filter(|(_, indexed)| **indexed).map(|(pod, _)| Arc::clone(pod)));
        let mut ends: Vec<Endpoint<'_>> = pods.iter().map(|pod| Endpoint::pod(pod)).collect();
        ends.extend(pods.iter().map(|pod| Endpoint::Pod { pod, ip: pod.ips.first().copied() }));
        ends.push(Endpoint::External(ip("198.18.0.1")));
        ends.push(Endpoint::External(ip("203.0.113.5")));
        for source in &ends {
            for destination in &ends {
                for port in [80, 81, 82] {
                    for protocol in [Protocol::TCP, Protocol::UDP] {
                        let flow = (*source, *destination, port, protocol);
                        prop_assert_eq!(verdict_of(&engine, &flow), verdict_of(&plain, &flow));
                    }
                }
            }
        }
        for pod in &pods {
            prop_assert_eq!(engine.isolating(pod), plain.isolating(pod));
            // A copy is not the indexed value: it is judged from its fields.
            let copy = Pod::clone(pod);
            prop_assert_eq!(engine.isolating(&copy), plain.isolating(pod));
        }
    }
}
