//! Flow verdicts: policies, delivery evidence and intents combined, and unprotected AI-tier pods.

mod judge_fixtures;

use judge_fixtures::{flow, ip, judge, namespace, pod};
use observer::{
    flow::{FlowState, Protocol},
    intent::FlowEnd,
    judge::{Delivery, VerdictKind},
};

const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: store-ingress, namespace: ai, resourceVersion: "41", generation: 2}
spec:
  podSelector: {matchLabels: {ai.governance/tier: vector-store}}
  policyTypes: [Ingress]
  ingress:
    - from: [{podSelector: {matchLabels: {ai.governance/tier: model-serving}}}]
      ports: [{port: 6333}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: agents-egress, namespace: ai, resourceVersion: "42"}
spec:
  podSelector: {matchLabels: {ai.governance/tier: agent}}
  policyTypes: [Egress, Ingress]
  egress:
    - to: [{podSelector: {matchLabels: {app: egress-gateway}}}]
"#;

const INTENTS: &str = r#"
apiVersion: ai.governance/v1alpha1
kind: FlowIntent
metadata: {name: agents, namespace: ai, generation: 7, resourceVersion: "90"}
spec:
  subject: {tiers: [agent]}
  egress:
    forbid: [{metadataService: true}]
  isolation: {ingress: true, egress: true}
  maxNewConnectionsPerMinute: 5
---
apiVersion: ai.governance/v1alpha1
kind: FlowIntent
metadata: {name: model-serving, namespace: ai, generation: 1}
spec:
  subject: {tiers: [model-serving]}
  egress:
    allow: [{tiers: [vector-store]}]
  isolation: {ingress: true}
"#;

struct Pods {
    model: observer::inventory::model::Pod,
    store: observer::inventory::model::Pod,
    agent: observer::inventory::model::Pod,
    gateway: observer::inventory::model::Pod,
}

fn pods() -> Pods {
    Pods {
        model: pod("llm-0").tier("model-serving").owner("StatefulSet", "llm").ip("198.18.0.30").build(),
        store: pod("qdrant-0").tier("vector-store").owner("StatefulSet", "qdrant").ip("198.18.0.31").build(),
        agent: pod("agent-1").tier("agent").owner("ReplicaSet", "agent-7d9").ip("198.18.0.10").build(),
        gateway: pod("gw-1").label("app", "egress-gateway").ip("198.18.0.20").build(),
    }
}

fn end(pod: &observer::inventory::model::Pod, port: Option<u16>) -> FlowEnd<'_> {
    FlowEnd::pod(pod, pod.ips[0], port)
}

#[test]
fn allowed_flow_names_the_allowing_policy_and_both_uids() {
    let pods = pods();
    let mut judge = judge(POLICIES, INTENTS, &[namespace("ai", &[])]);
    let verdict = judge.flow(&flow(end(&pods.model, None), end(&pods.store, Some(6333))).build());
    assert_eq!(verdict.verdict, VerdictKind::Allowed, "{}", verdict.reason);
    assert_eq!(
        serde_json::to_value(&verdict).expect("serializes"),
        serde_json::json!({
            "verdict": "allowed",
            "reason": "allowed: ingress allowed by ai/store-ingress",
            "delivery": "delivered",
            "policies": [{"namespace": "ai", "name": "store-ingress", "resourceVersion": "41", "generation": 2}],
            "src_uid": "uid-llm-0",
            "dst_uid": "uid-qdrant-0",
            "src_tier": "model-serving",
            "dst_tier": "vector-store"
        })
    );
}

#[test]
fn denied_and_not_delivered_is_a_denied_attempt() {
    let pods = pods();
    let mut judge = judge(POLICIES, "", &[namespace("ai", &[])]);
    for state in [FlowState::Refused, FlowState::Unanswered, FlowState::Attempted] {
        let verdict = judge.flow(&flow(end(&pods.agent, None), end(&pods.store, Some(6333))).state(state).build());
        assert_eq!(verdict.verdict, VerdictKind::DeniedAttempt, "{state:?}: {}", verdict.reason);
        assert_ne!(verdict.delivery, Delivery::Delivered);
        // Both sides deny: the agent's egress and the store's ingress policies decide.
        let names: Vec<&str> = verdict.policies.iter().map(|policy| policy.0.name.as_str()).collect();
        assert_eq!(names, ["agents-egress", "store-ingress"]);
    }
    // UDP with no reply is not proven delivered.
    let verdict = judge.flow(&flow(end(&pods.agent, None), end(&pods.store, Some(6333))).udp(0).build());
    assert_eq!((verdict.verdict, verdict.delivery), (VerdictKind::DeniedAttempt, Delivery::Unproven));
}

#[test]
fn denied_and_delivered_is_an_enforcement_gap() {
    let pods = pods();
    let mut judge = judge(POLICIES, "", &[namespace("ai", &[])]);
    let agent_to_store = || flow(end(&pods.agent, None), end(&pods.store, Some(6333)));
    let cases = [
        ("handshake", agent_to_store().build()),
        ("udp reply", agent_to_store().udp(2).build()),
        ("seen at receiver", agent_to_store().state(FlowState::Attempted).at_receiver().build()),
        ("refused but seen at receiver", agent_to_store().state(FlowState::Refused).at_receiver().build()),
    ];
    for (case, input) in cases {
        let verdict = judge.flow(&input);
        assert_eq!(verdict.verdict, VerdictKind::EnforcementGap, "{case}: {}", verdict.reason);
        assert!(verdict.reason.contains("isolated by ai/store-ingress"), "{}", verdict.reason);
    }
    assert_eq!(judge.stats().enforcement_gaps, 4);
}

#[test]
fn intent_violation_outranks_allowed() {
    let pods = pods();
    let mut judge = judge(POLICIES, INTENTS, &[namespace("ai", &[])]);
    // No policy isolates the model server's egress; its intent allows only the vector store.
    let verdict = judge.flow(&flow(end(&pods.model, None), FlowEnd::world(ip("203.0.113.7"), Some(443))).build());
    assert_eq!(verdict.verdict, VerdictKind::IntentViolation);
    let intent = verdict.intent.as_ref().expect("intent named");
    assert_eq!((intent.intent.name.as_str(), &*intent.rule), ("model-serving", "spec.egress.allow"));
    assert_eq!(
        serde_json::to_value(intent).expect("serializes"),
        serde_json::json!({"namespace": "ai", "name": "model-serving", "rule": "spec.egress.allow", "generation": 1})
    );
}

#[test]
fn a_gap_that_also_breaks_an_intent_reports_the_gap_and_keeps_the_intent() {
    let pods = pods();
    let mut judge = judge(POLICIES, INTENTS, &[namespace("ai", &[])]);
    let metadata = FlowEnd::world(ip("169.254.169.254"), Some(80));
    let verdict = judge.flow(&flow(end(&pods.agent, None), metadata).build());
    assert_eq!(verdict.verdict, VerdictKind::EnforcementGap);
    assert_eq!(verdict.intent.as_ref().map(|intent| &*intent.rule), Some("spec.egress.forbid[0]"));
    assert!(verdict.reason.contains("egress of ai/agent-1 is isolated by ai/agents-egress"), "{}", verdict.reason);
    assert!(verdict.reason.contains("it also breaks an intent"), "{}", verdict.reason);
    // The same attempt, refused: enforcement held, the intent is still named.
    let verdict = judge.flow(&flow(end(&pods.agent, None), metadata).state(FlowState::Unanswered).build());
    assert_eq!(verdict.verdict, VerdictKind::DeniedAttempt);
    assert!(verdict.intent.is_some());
    assert_eq!(judge.stats().intent_breaches, 2);
}

#[test]
fn new_connections_above_the_intent_rate_are_violations() {
    let pods = pods();
    let mut judge = judge(POLICIES, INTENTS, &[namespace("ai", &[])]);
    let to_gateway = |second| flow(end(&pods.agent, None), end(&pods.gateway, Some(3128))).at(second);
    for second in 0..5 {
        assert_eq!(judge.flow(&to_gateway(second).build()).verdict, VerdictKind::Allowed);
    }
    // Later records of flows already counted do not count again.
    let mut repeat = to_gateway(6).build();
    repeat.new_flow = false;
    assert_eq!(judge.flow(&repeat).verdict, VerdictKind::Allowed);
    let verdict = judge.flow(&to_gateway(7).build());
    assert_eq!(verdict.verdict, VerdictKind::IntentViolation, "{}", verdict.reason);
    assert_eq!(verdict.intent.as_ref().map(|intent| &*intent.rule), Some("spec.maxNewConnectionsPerMinute"));
    // Two minutes later the window has slid past them.
    assert_eq!(judge.flow(&to_gateway(200).build()).verdict, VerdictKind::Allowed);
}

#[test]
fn flows_policies_cannot_name_are_judged_by_intents_only() {
    let pods = pods();
    let mut judge = judge(POLICIES, INTENTS, &[namespace("ai", &[])]);
    let mut ping = flow(end(&pods.model, None), FlowEnd::world(ip("203.0.113.7"), None)).build();
    ping.protocol = Protocol(1);
    let verdict = judge.flow(&ping);
    assert_eq!(verdict.verdict, VerdictKind::IntentViolation);
    assert!(verdict.reason.contains("NetworkPolicies do not apply to icmp flows"), "{}", verdict.reason);
    assert!(verdict.policies.is_empty());
}

#[test]
fn ai_tier_pods_without_required_isolation_are_unprotected() {
    let pods = pods();
    let judge = judge(POLICIES, INTENTS, &[namespace("ai", &[])]);
    // Agents are isolated both ways by agents-egress, as their intent requires.
    assert_eq!(judge.unprotected(&pods.agent), None);
    // The model server's intent requires ingress isolation it lacks.
    let model = judge.unprotected(&pods.model).expect("unprotected");
    assert_eq!((model.ingress_isolated, model.egress_isolated), (false, false));
    assert_eq!(model.required_by.iter().map(|intent| intent.name.as_str()).collect::<Vec<_>>(), ["model-serving"]);
    // The store is isolated for ingress and nothing requires more.
    assert_eq!(judge.unprotected(&pods.store), None);
    // A tier pod no policy isolates at all is unprotected even without an intent.
    let trainer = pod("train-0").tier("training").build();
    let finding = judge.unprotected(&trainer).expect("unprotected");
    assert_eq!(finding.reason, "ai/train-0 (tier training) is not isolated by any NetworkPolicy");
    assert!(finding.required_by.is_empty());
    // Pods without a tier, and finished pods, are not reported.
    assert_eq!(judge.unprotected(&pods.gateway), None);
    let mut done = trainer.clone();
    done.phase = Some("Succeeded".to_owned());
    assert_eq!(judge.unprotected(&done), None);
    let host = pod("agent-host").tier("agent").host_network().build();
    assert!(judge.unprotected(&host).expect("unprotected").reason.contains("host network"));
}
