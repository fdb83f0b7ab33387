//! Flow verdicts with ClusterNetworkPolicies: the judge's reasons name the
//! deciding rule and the chain, and its cites carry the tier.

mod judge_fixtures;

use std::sync::Arc;

use judge_fixtures::{documents, flow, intents, ip, namespace, pod, policies};
use observer::{
    findings::Finding,
    flow::FlowState,
    intent::FlowEnd,
    inventory::EndpointKind,
    judge::{Judge, JudgeConfig, VerdictKind},
    policy::cnp::ClusterNetworkPolicy,
};

const NETWORK: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-gateway, namespace: ai, resourceVersion: "11"}
spec:
  podSelector: {matchLabels: {app: model}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {app: gateway}}}]
"#;

const CLUSTER: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: no-metadata, resourceVersion: "5"}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  egress:
    - {name: metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}
    - {action: Accept, to: [{domainNames: [api.example.com]}]}
    - {action: Pass, to: [{namespaces: {}}]}
    - {action: Deny, to: [{networks: [203.0.113.0/24]}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: baseline-deny, resourceVersion: "6"}
spec:
  tier: Baseline
  priority: 100
  subject: {namespaces: {}}
  ingress:
    - {action: Deny, from: [{namespaces: {}}]}
"#;

fn judge() -> Judge {
    let namespaces = [namespace("ai", &[])];
    let cluster: Vec<ClusterNetworkPolicy> = documents(CLUSTER);
    let (engine, errors) = policies(NETWORK, &namespaces).with_cluster_policies(&cluster, &[]);
    assert!(errors.is_empty(), "{errors:?}");
    let (index, errors) = intents("", &namespaces);
    assert!(errors.is_empty());
    Judge::new(Arc::new(engine), Arc::new(index), JudgeConfig::default())
}

#[test]
fn an_admin_deny_that_was_delivered_is_a_gap_citing_the_rule_and_tier() {
    let agent = pod("agent").label("app", "agent").ip("198.18.0.10").build();
    let mut judge = judge();
    let metadata = FlowEnd::address(EndpointKind::World, ip("169.254.169.254"), Some(80));
    let verdict = judge.flow(&flow(FlowEnd::pod(&agent, agent.ips[0], None), metadata).build());
    assert_eq!(verdict.verdict, VerdictKind::EnforcementGap, "{}", verdict.reason);
    assert!(
        verdict.reason.contains(
            "egress of ai/agent: cnp/no-metadata@5 rule 0 (\"metadata\") (Admin, priority 1): Deny; but it was delivered"
        ),
        "{}",
        verdict.reason
    );
    let json = serde_json::to_value(&verdict).expect("serializes");
    assert_eq!(
        json["policies"],
        serde_json::json!([{"kind": "ClusterNetworkPolicy", "name": "no-metadata", "tier": "Admin", "priority": 1, "resourceVersion": "5"}])
    );
    let refused = FlowEnd::address(EndpointKind::World, ip("169.254.169.254"), Some(80));
    let attempt =
        judge.flow(&flow(FlowEnd::pod(&agent, agent.ips[0], None), refused).state(FlowState::Refused).build());
    assert_eq!(attempt.verdict, VerdictKind::DeniedAttempt, "{}", attempt.reason);
}

#[test]
fn a_baseline_deny_overridden_by_a_networkpolicy_allow_is_allowed() {
    let gateway = pod("gateway").label("app", "gateway").ip("198.18.0.20").build();
    let model = pod("model").label("app", "model").ip("198.18.0.30").build();
    let tool = pod("tool").label("app", "tool").ip("198.18.0.40").build();
    let mut judge = judge();
    let allowed = judge.flow(
        &flow(FlowEnd::pod(&gateway, gateway.ips[0], None), FlowEnd::pod(&model, model.ips[0], Some(9000))).build(),
    );
    assert_eq!(allowed.verdict, VerdictKind::Allowed, "{}", allowed.reason);
    assert!(
        allowed.reason.contains(
            "egress of ai/gateway: passed by cnp/no-metadata@5 rule 2 (Admin, priority 1): Pass, then no policy decides: allowed by default"
        ),
        "{}",
        allowed.reason
    );
    assert!(
        allowed.reason.contains("ingress of ai/model: allowed by networkpolicy ai/from-gateway"),
        "{}",
        allowed.reason
    );
    // tool is selected by no NetworkPolicy: the Baseline Deny decides its ingress.
    let denied = judge
        .flow(&flow(FlowEnd::pod(&gateway, gateway.ips[0], None), FlowEnd::pod(&tool, tool.ips[0], Some(80))).build());
    assert_eq!(denied.verdict, VerdictKind::EnforcementGap, "{}", denied.reason);
    assert!(
        denied.reason.contains("ingress of ai/tool: cnp/baseline-deny@6 rule 0 (Baseline, priority 100): Deny"),
        "{}",
        denied.reason
    );
}

#[test]
fn domain_names_are_judged_with_dns_names_and_undecidable_without() {
    let agent = pod("agent").label("app", "agent").ip("198.18.0.10").build();
    let mut judge = judge();
    let names: Vec<Arc<str>> = vec![Arc::from("api.example.com")];
    let named = FlowEnd::address(EndpointKind::World, ip("203.0.113.7"), Some(443)).with_names(&names);
    let verdict = judge.flow(&flow(FlowEnd::pod(&agent, agent.ips[0], None), named).build());
    assert_eq!(verdict.verdict, VerdictKind::Allowed, "{}", verdict.reason);
    assert!(verdict.reason.contains("cnp/no-metadata@5 rule 1 (Admin, priority 1): Accept"), "{}", verdict.reason);
    let other: Vec<Arc<str>> = vec![Arc::from("evil.example.net")];
    let elsewhere = FlowEnd::address(EndpointKind::World, ip("203.0.113.7"), Some(443)).with_names(&other);
    let verdict = judge.flow(&flow(FlowEnd::pod(&agent, agent.ips[0], None), elsewhere).build());
    assert_eq!(verdict.verdict, VerdictKind::EnforcementGap, "{}", verdict.reason);
    let unnamed = FlowEnd::address(EndpointKind::World, ip("203.0.113.7"), Some(443));
    let before = judge.stats();
    let input = flow(FlowEnd::pod(&agent, agent.ips[0], None), unnamed).build();
    let verdict = judge.flow(&input);
    assert_eq!(verdict.verdict, VerdictKind::Undecidable, "never guessed as a gap: {}", verdict.reason);
    assert_eq!(verdict.delivery, observer::judge::Delivery::Delivered, "delivered, and still no gap");
    assert!(
        verdict.reason.starts_with("undecidable: egress of ai/agent: cnp/no-metadata@5 rule 3"),
        "{}",
        verdict.reason
    );
    assert!(verdict.reason.contains("rule 1 (Admin, priority 1) accepts by domainNames"), "{}", verdict.reason);
    assert_eq!(serde_json::to_value(&verdict).expect("serializes")["verdict"], "undecidable");
    assert!(Finding::from_flow(&verdict, &input).is_none(), "no finding: nothing is known to be broken");
    let refused = flow(FlowEnd::pod(&agent, agent.ips[0], None), unnamed).state(FlowState::Refused).build();
    let verdict = judge.flow(&refused);
    assert_eq!(verdict.verdict, VerdictKind::Undecidable, "no denied-attempt either: {}", verdict.reason);
    let after = judge.stats();
    assert_eq!(after.undecidable - before.undecidable, 2);
    assert_eq!(
        (after.allowed, after.denied_attempts, after.enforcement_gaps),
        (before.allowed, before.denied_attempts, before.enforcement_gaps)
    );
}

/// Rules that restrict nothing for `ai` pods: an Accept, a Pass, and a Deny for another namespace.
const LOOSE: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: loose, resourceVersion: "1"}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  ingress:
    - {action: Accept, from: [{namespaces: {}}]}
  egress:
    - {action: Pass, to: [{namespaces: {}}]}
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: dev-only, resourceVersion: "1"}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {matchLabels: {kubernetes.io/metadata.name: dev}}}
  ingress:
    - {action: Deny, from: [{namespaces: {}}]}
"#;

const EGRESS_GUARD: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: egress-guard, resourceVersion: "2"}
spec:
  tier: Baseline
  priority: 3
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {ai.governance/tier: training}}}}
  egress:
    - {action: Deny, to: [{networks: [0.0.0.0/0]}]}
"#;

fn judge_with(cluster_yaml: &str, config: JudgeConfig) -> Judge {
    let namespaces = [namespace("ai", &[])];
    let cluster: Vec<ClusterNetworkPolicy> = documents(cluster_yaml);
    let (engine, errors) = policies("", &namespaces).with_cluster_policies(&cluster, &[]);
    assert!(errors.is_empty(), "{errors:?}");
    let (index, errors) = intents("", &namespaces);
    assert!(errors.is_empty());
    Judge::new(Arc::new(engine), Arc::new(index), config)
}

#[test]
fn cluster_network_policy_deny_rules_protect_ai_tier_pods_and_accept_or_pass_rules_do_not() {
    let trainer = pod("train-0").tier("training").build();
    // Admin Deny egress and Baseline Deny ingress rules select every pod: isolated both ways.
    assert_eq!(judge().unprotected(&trainer), None);
    // Accept and Pass restrict nothing; a Deny for another namespace's pods does not select it.
    let loose = judge_with(LOOSE, JudgeConfig::default()).unprotected(&trainer).expect("unprotected");
    assert_eq!((loose.ingress_isolated, loose.egress_isolated), (false, false));
    assert_eq!(
        loose.reason,
        "ai/train-0 (tier training) is not isolated by any NetworkPolicy nor ClusterNetworkPolicy Deny rule"
    );
    // A Deny egress rule selecting it isolates egress: only the ingress the judge requires is missing.
    let both = JudgeConfig {
        required_isolation: observer::intent::IsolationIntent { ingress: true, egress: true },
        ..JudgeConfig::default()
    };
    let guarded = judge_with(EGRESS_GUARD, both.clone()).unprotected(&trainer).expect("unprotected");
    assert_eq!((guarded.ingress_isolated, guarded.egress_isolated), (false, true));
    assert_eq!(guarded.reason, "ai/train-0 (tier training) is not isolated for ingress");
    // A pod of another tier is no subject of that guard.
    let agent = pod("agent-0").tier("agent").build();
    let unguarded = judge_with(EGRESS_GUARD, both).unprotected(&agent).expect("unprotected");
    assert_eq!((unguarded.ingress_isolated, unguarded.egress_isolated), (false, false));
}
