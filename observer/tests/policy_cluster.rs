//! ClusterNetworkPolicy semantics (network-policy-api v0.2.0): tier order,
//! priorities and ties, Pass chains, Baseline under NetworkPolicy, peers,
//! protocols, domainNames, and the CRD's validation.

mod policy_support;

use std::sync::Arc;

use observer::{
    inventory::model::{Namespace, Node, Pod, Protocol},
    policy::{
        Action, Endpoint, PolicyEngine, Tier, Verdict,
        cnp::{ClusterNetworkPolicy, CnpError, CnpProblem},
    },
};
use policy_support::{ip, namespace, pod, policy};
use proptest::{collection::vec, prelude::*, sample::select};
use serde_json::{Value, json};

fn cnp(name: &str, tier: &str, priority: i64, spec: Value) -> ClusterNetworkPolicy {
    let mut spec = spec;
    spec["tier"] = json!(tier);
    spec["priority"] = json!(priority);
    serde_json::from_value(json!({"metadata": {"name": name, "resourceVersion": "7"}, "spec": spec}))
        .expect("ClusterNetworkPolicy shape")
}

fn namespaces() -> Vec<Namespace> {
    vec![namespace("ai", &[("tier", "ai")]), namespace("gw", &[("role", "gateway")]), namespace("dev", &[])]
}

fn model() -> Pod {
    pod("ai", "model").label("app", "model").ip("198.18.0.10").port("grpc", 9000, Protocol::TCP).build()
}

fn gateway() -> Pod {
    pod("gw", "gateway").label("app", "gateway").ip("198.18.1.10").build()
}

fn tool() -> Pod {
    pod("dev", "tool").label("app", "tool").ip("198.18.2.10").build()
}

fn build(
    networks: &[k8s_openapi::api::networking::v1::NetworkPolicy],
    cluster: &[ClusterNetworkPolicy],
) -> (PolicyEngine, Vec<CnpError>) {
    let (engine, errors) = PolicyEngine::compile(networks, &namespaces());
    assert!(errors.is_empty(), "{errors:?}");
    engine.with_cluster_policies(cluster, &[])
}

fn engine(
    networks: &[k8s_openapi::api::networking::v1::NetworkPolicy],
    cluster: &[ClusterNetworkPolicy],
) -> PolicyEngine {
    let (engine, errors) = build(networks, cluster);
    assert!(errors.is_empty(), "{errors:?}");
    engine
}

fn tcp(engine: &PolicyEngine, source: &Pod, destination: &Pod, port: u16) -> Verdict {
    engine.verdict(Endpoint::pod(source), Endpoint::pod(destination), port, Protocol::TCP)
}

fn ingress_to_ai(action: &str, from: Value) -> Value {
    json!({"subject": {"namespaces": {"matchLabels": {"tier": "ai"}}}, "ingress": [{"action": action, "from": [from]}]})
}

fn steps(verdict: &Verdict) -> Vec<String> {
    verdict.ingress.cluster.iter().map(ToString::to_string).collect()
}

#[test]
fn admin_deny_overrides_a_networkpolicy_allow() {
    let allow_all = policy("ai", "allow-all", json!({"podSelector": {}, "ingress": [{}]}));
    let deny = cnp("no-dev", "Admin", 10, ingress_to_ai("Deny", json!({"namespaces": {}})));
    let verdict = tcp(&engine(&[allow_all], &[deny]), &tool(), &model(), 9000);
    assert!(!verdict.allowed);
    assert_eq!(steps(&verdict), ["cnp/no-dev@7 rule 0 (Admin, priority 10): Deny"]);
    assert!(!verdict.ingress.isolated, "NetworkPolicies are not consulted after an Admin decision");
    assert!(verdict.egress.allowed);
}

#[test]
fn admin_accept_overrides_a_networkpolicy_deny() {
    let deny_all = policy("ai", "deny-all", json!({"podSelector": {}}));
    let accept = cnp(
        "from-gw",
        "Admin",
        5,
        ingress_to_ai("Accept", json!({"namespaces": {"matchLabels": {"role": "gateway"}}})),
    );
    let engine = engine(&[deny_all], &[accept]);
    assert!(tcp(&engine, &gateway(), &model(), 9000).allowed);
    let other = tcp(&engine, &tool(), &model(), 9000);
    assert!(!other.allowed, "the Admin rule does not match: the NetworkPolicy decides");
    assert!(other.ingress.isolated);
    assert!(other.ingress.cluster.is_empty());
}

#[test]
fn pass_hands_the_flow_to_networkpolicy_and_skips_the_rest_of_the_tier() {
    let allow_gw = policy(
        "ai",
        "from-gw",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"role": "gateway"}}}]}]}),
    );
    let pass = cnp("pass-all", "Admin", 1, ingress_to_ai("Pass", json!({"namespaces": {}})));
    let deny = cnp("deny-all", "Admin", 2, ingress_to_ai("Deny", json!({"namespaces": {}})));
    let engine = engine(&[allow_gw], &[deny, pass]);
    let verdict = tcp(&engine, &gateway(), &model(), 9000);
    assert!(verdict.allowed, "Pass at priority 1 skips the Deny at priority 2");
    assert_eq!(steps(&verdict), ["cnp/pass-all@7 rule 0 (Admin, priority 1): Pass"]);
    assert_eq!(verdict.ingress.policies.len(), 1);
    assert!(verdict.ingress.isolated);
    assert!(!tcp(&engine, &tool(), &model(), 9000).allowed, "then the NetworkPolicy denies tool");
}

#[test]
fn baseline_applies_only_where_no_networkpolicy_isolates() {
    let deny = cnp("baseline-deny", "Baseline", 0, ingress_to_ai("Deny", json!({"namespaces": {}})));
    let alone = engine(&[], std::slice::from_ref(&deny));
    let verdict = tcp(&alone, &gateway(), &model(), 9000);
    assert!(!verdict.allowed);
    assert_eq!(steps(&verdict), ["cnp/baseline-deny@7 rule 0 (Baseline, priority 0): Deny"]);
    let allow_gw = policy(
        "ai",
        "from-gw",
        json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"role": "gateway"}}}]}]}),
    );
    let with_np = engine(&[allow_gw], &[deny]);
    let verdict = tcp(&with_np, &gateway(), &model(), 9000);
    assert!(verdict.allowed, "a NetworkPolicy allow overrides a Baseline Deny");
    assert!(verdict.ingress.cluster.is_empty());
}

#[test]
fn pass_in_admin_reaches_baseline_when_no_networkpolicy_isolates() {
    let pass = cnp("pass", "Admin", 0, ingress_to_ai("Pass", json!({"namespaces": {}})));
    let deny = cnp("deny", "Baseline", 0, ingress_to_ai("Deny", json!({"namespaces": {}})));
    let verdict = tcp(&engine(&[], &[pass, deny]), &gateway(), &model(), 9000);
    assert!(!verdict.allowed);
    assert_eq!(
        steps(&verdict),
        ["cnp/pass@7 rule 0 (Admin, priority 0): Pass", "cnp/deny@7 rule 0 (Baseline, priority 0): Deny"]
    );
}

#[test]
fn lower_priority_value_goes_first_and_rules_in_order() {
    let accept = cnp(
        "accept",
        "Admin",
        3,
        json!({"subject": {"namespaces": {}}, "ingress": [
            {"action": "Deny", "from": [{"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "nobody"}}}}]},
            {"name": "gateway", "action": "Accept", "from": [{"namespaces": {"matchLabels": {"role": "gateway"}}}]},
            {"action": "Deny", "from": [{"namespaces": {}}]},
        ]}),
    );
    let deny = cnp("deny", "Admin", 4, ingress_to_ai("Deny", json!({"namespaces": {}})));
    let verdict = tcp(&engine(&[], &[deny, accept]), &gateway(), &model(), 9000);
    assert!(verdict.allowed);
    assert_eq!(steps(&verdict), ["cnp/accept@7 rule 1 (\"gateway\") (Admin, priority 3): Accept"]);
}

#[test]
fn equal_priorities_go_by_name_and_a_disagreeing_tie_is_named() {
    let b_deny = cnp("b-deny", "Admin", 5, ingress_to_ai("Deny", json!({"namespaces": {}})));
    let a_accept = cnp("a-accept", "Admin", 5, ingress_to_ai("Accept", json!({"namespaces": {}})));
    let verdict = tcp(&engine(&[], &[b_deny, a_accept]), &gateway(), &model(), 9000);
    assert!(verdict.allowed);
    let step = &verdict.ingress.cluster[0];
    assert_eq!(step.policy.name, "a-accept");
    assert_eq!(step.tied_with.as_ref().map(|policy| policy.name.as_str()), Some("b-deny"));
    assert!(steps(&verdict)[0].contains("tied at the same priority with cnp/b-deny"));
}

#[test]
fn protocols_ports_ranges_and_named_ports() {
    let rule = |protocols: Value| {
        cnp(
            "deny",
            "Admin",
            0,
            json!({"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}], "protocols": protocols}]}),
        )
    };
    let judged = |protocols: Value, port| tcp(&engine(&[], &[rule(protocols)]), &gateway(), &model(), port).allowed;
    assert!(!judged(json!([{"tcp": {"destinationPort": {"number": 9000}}}]), 9000));
    assert!(judged(json!([{"tcp": {"destinationPort": {"number": 9000}}}]), 9001));
    assert!(judged(json!([{"udp": {"destinationPort": {"number": 9000}}}]), 9000));
    assert!(!judged(json!([{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 9000}}}}]), 9000));
    assert!(judged(json!([{"tcp": {"destinationPort": {"range": {"start": 8000, "end": 8999}}}}]), 9000));
    assert!(!judged(json!([{"destinationNamedPort": "grpc"}]), 9000));
    assert!(judged(json!([{"destinationNamedPort": "http"}]), 9000));
}

#[test]
fn egress_networks_nodes_and_domain_names() {
    let egress = |to: Value, action: &str| {
        cnp(
            "out",
            "Admin",
            0,
            json!({"subject": {"pods": {"namespaceSelector": {"matchLabels": {"tier": "ai"}}, "podSelector": {}}}, "egress": [{"action": action, "to": [to]}]}),
        )
    };
    let deny_rest = cnp(
        "rest",
        "Admin",
        9,
        json!({"subject": {"namespaces": {}}, "egress": [{"action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}),
    );
    let model = model();
    let out = |engine: &PolicyEngine, to: &str, names: Option<&[Arc<str>]>| {
        engine.verdict_named(Endpoint::pod(&model), Endpoint::External(ip(to)), 443, Protocol::TCP, names)
    };
    let metadata = engine(&[], &[egress(json!({"networks": ["169.254.169.254/32"]}), "Deny")]);
    assert!(!out(&metadata, "169.254.169.254", None).allowed);
    assert!(out(&metadata, "203.0.113.5", None).allowed);

    let node = Node {
        name: "node-b".to_owned(),
        ips: vec![ip("203.0.113.200")],
        labels: [("zone".to_owned(), "b".to_owned())].into(),
    };
    let (nodes, errors) = PolicyEngine::compile(&[], &namespaces());
    assert!(errors.is_empty());
    let (nodes, errors) =
        nodes.with_cluster_policies(&[egress(json!({"nodes": {"matchLabels": {"zone": "b"}}}), "Deny")], &[node]);
    assert!(errors.is_empty());
    assert!(!out(&nodes, "203.0.113.200", None).allowed);
    assert!(out(&nodes, "203.0.113.201", None).allowed);

    let domains = engine(&[], &[egress(json!({"domainNames": ["*.example.com"]}), "Accept"), deny_rest]);
    let api: Vec<Arc<str>> = vec![Arc::from("api.example.com.")];
    let other: Vec<Arc<str>> = vec![Arc::from("example.com")];
    assert!(out(&domains, "203.0.113.9", Some(&api)).allowed);
    let denied = out(&domains, "203.0.113.9", Some(&other));
    assert!(!denied.allowed && denied.undecidable().is_none(), "*. needs at least one label before");
    let unknown = out(&domains, "203.0.113.9", None);
    assert!(!unknown.allowed);
    let why = unknown.undecidable().expect("no name: undecidable, not guessed");
    assert!(why.contains("cnp/out@7 rule 0 (Admin, priority 0) accepts by domainNames"), "{why}");
}

#[test]
fn host_network_pods_are_neither_subject_nor_pod_peers() {
    let deny = cnp(
        "deny",
        "Admin",
        0,
        json!({"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}]}),
    );
    let engine = engine(&[], &[deny]);
    let host = pod("ai", "agent").ip("203.0.113.1").host_network().build();
    assert!(tcp(&engine, &host, &model(), 9000).allowed, "a host-network source is no pod peer");
    assert!(tcp(&engine, &model(), &host, 9000).allowed, "a host-network pod is no subject");
}

#[test]
fn validation_follows_the_crd() {
    let problem = |policy: ClusterNetworkPolicy| {
        let (_, errors) = build(&[], &[policy]);
        assert_eq!(errors.len(), 1, "{errors:?}");
        (errors[0].field.clone(), errors[0].problem.clone())
    };
    let ingress = ingress_to_ai("Deny", json!({"namespaces": {}}));
    assert_eq!(
        problem(cnp("p", "Middle", 0, ingress.clone())).1,
        CnpProblem::UnsupportedTier { value: "Middle".into() }
    );
    assert_eq!(problem(cnp("p", "Admin", 1001, ingress.clone())).1, CnpProblem::PriorityOutOfRange { value: 1001 });
    let mut both = ingress.clone();
    both["subject"]["pods"] = json!({"podSelector": {}});
    assert_eq!(problem(cnp("p", "Admin", 0, both)).0, "spec.subject");
    let two_peers = ingress_to_ai("Deny", json!({"namespaces": {}, "pods": {"podSelector": {}}}));
    assert_eq!(problem(cnp("p", "Admin", 0, two_peers)).0, "spec.ingress[0].from[0]");
    let no_from = json!({"subject": {"namespaces": {}}, "ingress": [{"action": "Deny", "from": []}]});
    assert_eq!(problem(cnp("p", "Admin", 0, no_from)).1, CnpProblem::ItemCount { min: 1, max: 25, count: 0 });
    let bad_action = ingress_to_ai("Allow", json!({"namespaces": {}}));
    assert_eq!(problem(cnp("p", "Admin", 0, bad_action)).0, "spec.ingress[0].action");
    let range = json!({"subject": {"namespaces": {}}, "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}],
        "protocols": [{"tcp": {"destinationPort": {"range": {"start": 90, "end": 90}}}}]}]});
    assert_eq!(problem(cnp("p", "Admin", 0, range)).0, "spec.egress[0].protocols[0].tcp.destinationPort.range");
    let cidr =
        json!({"subject": {"namespaces": {}}, "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0.0/33"]}]}]});
    assert_eq!(problem(cnp("p", "Admin", 0, cidr)).0, "spec.egress[0].to[0].networks[0]");
    let deny_domain = json!({"subject": {"namespaces": {}}, "egress": [{"action": "Deny", "to": [{"domainNames": ["example.com"]}]}]});
    assert_eq!(problem(cnp("p", "Admin", 0, deny_domain)).1, CnpProblem::DomainNamesWithoutAccept);
    let bad_domain =
        json!({"subject": {"namespaces": {}}, "egress": [{"action": "Accept", "to": [{"domainNames": ["a.*.com"]}]}]});
    assert_eq!(problem(cnp("p", "Admin", 0, bad_domain)).0, "spec.egress[0].to[0].domainNames[0]");
    let named = json!({"subject": {"namespaces": {}}, "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}],
        "protocols": [{"destinationNamedPort": "http"}]}]});
    assert_eq!(problem(cnp("p", "Admin", 0, named)).1, CnpProblem::NamedPortWithoutPods);
    // The valid ones are still used.
    let (engine, errors) = build(&[], &[cnp("bad", "Admin", -1, ingress.clone()), cnp("good", "Admin", 0, ingress)]);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].index, 0);
    assert_eq!(engine.cluster_len(), 1);
    assert!(!tcp(&engine, &gateway(), &model(), 9000).allowed);
}

/// A generated policy: tier, priority, and one ingress rule from every namespace.
#[derive(Clone, Debug)]
struct Generated {
    tier: Tier,
    priority: i64,
    action: Action,
}

fn generated() -> impl Strategy<Value = Generated> {
    (select(vec![Tier::Admin, Tier::Baseline]), 0_i64..4, select(vec![Action::Accept, Action::Deny, Action::Pass]))
        .prop_map(|(tier, priority, action)| Generated { tier, priority, action })
}

/// The model of the tiers: the first Accept or Deny in (priority, name)
/// order of Admin decides, a Pass ends Admin; then a NetworkPolicy if one
/// isolates; then the same for Baseline; then allow.
fn expected(policies: &[Generated], network: Option<bool>) -> bool {
    let tier = |tier: Tier| {
        let mut sorted: Vec<(usize, &Generated)> =
            policies.iter().enumerate().filter(|(_, policy)| policy.tier == tier).collect();
        sorted.sort_by_key(|(index, policy)| (policy.priority, format!("p{index:02}")));
        sorted.first().map(|(_, policy)| policy.action)
    };
    match tier(Tier::Admin) {
        Some(Action::Accept) => return true,
        Some(Action::Deny) => return false,
        Some(Action::Pass) | None => {}
    }
    if let Some(allowed) = network {
        return allowed;
    }
    !matches!(tier(Tier::Baseline), Some(Action::Deny))
}

proptest! {
    #[test]
    fn tiers_decide_in_order(policies in vec(generated(), 0..6), network in prop::option::of(any::<bool>())) {
        let cluster: Vec<ClusterNetworkPolicy> = policies
            .iter()
            .enumerate()
            .map(|(index, policy)| {
                cnp(&format!("p{index:02}"), policy.tier.as_str(), policy.priority, ingress_to_ai(policy.action.as_str(), json!({"namespaces": {}})))
            })
            .collect();
        let networks = match network {
            None => vec![],
            Some(true) => vec![policy("ai", "np", json!({"podSelector": {}, "ingress": [{}]}))],
            Some(false) => vec![policy("ai", "np", json!({"podSelector": {}}))],
        };
        let verdict = tcp(&engine(&networks, &cluster), &gateway(), &model(), 9000);
        prop_assert_eq!(verdict.allowed, expected(&policies, network));
        // The pod index (built after the policies, or before them and redone)
        // walks only the policies selecting each pod, with the same verdict.
        let (model, gateway) = (Arc::new(model()), Arc::new(gateway()));
        let mut after = engine(&networks, &cluster);
        after.index_pods([Arc::clone(&model), Arc::clone(&gateway)]);
        prop_assert_eq!(&tcp(&after, &gateway, &model, 9000), &verdict);
        let (mut before, errors) = PolicyEngine::compile(&networks, &namespaces());
        prop_assert!(errors.is_empty());
        before.index_pods([Arc::clone(&model), Arc::clone(&gateway)]);
        let (before, errors) = before.with_cluster_policies(&cluster, &[]);
        prop_assert!(errors.is_empty());
        prop_assert_eq!(before.indexed_pods(), 2);
        prop_assert_eq!(&tcp(&before, &gateway, &model, 9000), &verdict);
        // Every step before the last is a Pass, and at most one per tier.
        let chain = &verdict.ingress.cluster;
        prop_assert!(chain.len() <= 2);
        for step in chain.iter().rev().skip(1) {
            prop_assert_eq!(step.action, Action::Pass);
        }
    }
}
