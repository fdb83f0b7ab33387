//! Flows to Services judged at their backends: the backend conntrack named,
//! else every ready backend from EndpointSlices (agree: one verdict;
//! disagree: ambiguous; none: ambiguous, never a guessed gap), and intents
//! that see both the address asked for and the end reached.

mod judge_fixtures;

use judge_fixtures::{SERVICE_POLICIES as POLICIES, flow, ip, judge, namespace, pod};
use observer::{
    flow::FlowState,
    intent::FlowEnd,
    inventory::{EndpointKind, model::Pod},
    judge::VerdictKind,
};

struct Pods {
    client: Pod,
    dns: [Pod; 2],
    web: Pod,
    locked: Pod,
}

fn pods() -> Pods {
    let dns = |name: &str, address: &str| pod(name).ns("kube-system").label("k8s-app", "kube-dns").ip(address).build();
    Pods {
        client: pod("client-1").label("app", "client").tier("agent").ip("198.18.0.10").build(),
        dns: [dns("coredns-1", "198.18.0.53"), dns("coredns-2", "2001:db8::54")],
        web: pod("web-1").label("app", "web").ip("198.18.0.60").build(),
        locked: pod("web-2").label("app", "web").label("locked", "true").ip("198.18.0.61").build(),
    }
}

fn namespaces() -> Vec<observer::inventory::model::Namespace> {
    vec![namespace("ai", &[]), namespace("kube-system", &[])]
}

fn at(pod: &Pod, port: u16) -> FlowEnd<'_> {
    FlowEnd::pod(pod, pod.ips[0], Some(port))
}

fn client(pods: &Pods) -> FlowEnd<'_> {
    FlowEnd::pod(&pods.client, pods.client.ips[0], Some(40000))
}

#[test]
fn a_backend_conntrack_named_is_judged_by_its_pod_and_port() {
    let pods = pods();
    let mut judge = judge(POLICIES, "", &namespaces());
    let service = FlowEnd::service("kube-system", "kube-dns", ip("198.19.0.10"), Some(53));
    let verdict = judge.flow(&flow(client(&pods), at(&pods.dns[0], 53)).asked(service).udp(1).build());
    assert_eq!(verdict.verdict, VerdictKind::Allowed, "{}", verdict.reason);
    assert!(!verdict.ambiguous);
    assert_eq!(verdict.dst_uid.as_deref(), Some("uid-coredns-1"));
    // The same Service port sent to a backend on a port the policy does not allow.
    let verdict = judge.flow(&flow(client(&pods), at(&pods.dns[0], 5353)).asked(service).udp(1).build());
    assert_eq!(verdict.verdict, VerdictKind::EnforcementGap, "{}", verdict.reason);
    assert!(verdict.reason.contains("egress of ai/client-1 is isolated by ai/client-egress"), "{}", verdict.reason);
}

#[test]
fn backends_that_agree_give_one_verdict() {
    let pods = pods();
    let mut judge = judge(POLICIES, "", &namespaces());
    let service = FlowEnd::service("kube-system", "kube-dns", ip("198.19.0.10"), Some(53));
    let backends = [at(&pods.dns[0], 53), at(&pods.dns[1], 53)];
    let verdict = judge.flow_to_backends(&flow(client(&pods), service).udp(1).build(), &backends);
    assert_eq!(verdict.verdict, VerdictKind::Allowed, "{}", verdict.reason);
    assert!(!verdict.ambiguous && verdict.backends.is_empty());
    assert!(verdict.reason.contains("every ready backend of Service kube-system/kube-dns"), "{}", verdict.reason);
    assert_eq!(verdict.dst_uid, None, "the destination is the Service, not one backend");
    // Both on a port the client may not use: both deny, so the gap is no guess.
    let backends = [at(&pods.dns[0], 54), at(&pods.dns[1], 54)];
    let verdict = judge.flow_to_backends(&flow(client(&pods), service).udp(1).build(), &backends);
    assert_eq!((verdict.verdict, verdict.ambiguous), (VerdictKind::EnforcementGap, false), "{}", verdict.reason);
    assert_eq!(judge.stats().allowed, 1);
    assert_eq!(judge.stats().enforcement_gaps, 1);
}

#[test]
fn backends_that_disagree_make_the_flow_ambiguous_never_a_gap() {
    let pods = pods();
    let mut judge = judge(POLICIES, "", &namespaces());
    let service = FlowEnd::service("ai", "web", ip("198.19.0.20"), Some(80));
    let backends = [at(&pods.web, 8080), at(&pods.locked, 8080)];
    let verdict = judge.flow_to_backends(&flow(client(&pods), service).build(), &backends);
    assert_eq!(verdict.verdict, VerdictKind::Allowed, "{}", verdict.reason);
    assert!(verdict.ambiguous);
    let json = serde_json::to_value(&verdict).expect("serializes");
    assert_eq!(json["ambiguous"], true);
    assert_eq!(
        json["backends"],
        serde_json::json!([
            {"namespace": "ai", "pod": "web-1", "verdict": "allowed",
             "policies": [{"namespace": "ai", "name": "client-egress"}]},
            {"namespace": "ai", "pod": "web-2", "verdict": "enforcement-gap",
             "policies": [{"namespace": "ai", "name": "web-locked"}]},
        ])
    );
    assert!(verdict.reason.starts_with("ambiguous: "), "{}", verdict.reason);
    assert_eq!((judge.stats().allowed, judge.stats().enforcement_gaps), (1, 0), "counted once, as allowed");
    // Refused by both: a denied attempt and an allowed attempt; still the mildest.
    let verdict = judge.flow_to_backends(&flow(client(&pods), service).state(FlowState::Refused).build(), &backends);
    assert_eq!((verdict.verdict, verdict.ambiguous), (VerdictKind::Allowed, true));
    assert_eq!(verdict.backends[1].verdict, VerdictKind::DeniedAttempt);
}

#[test]
fn a_service_with_no_known_backend_is_ambiguous_and_judged_by_intents_only() {
    let pods = pods();
    let intents = r#"
apiVersion: ai.governance/v1alpha1
kind: FlowIntent
metadata: {name: agents, namespace: ai}
spec:
  subject: {tiers: [agent]}
  egress:
    forbid: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: vault}}}]
"#;
    let mut judge = judge(POLICIES, intents, &[namespace("ai", &[]), namespace("vault", &[])]);
    let service = FlowEnd::service("ai", "web", ip("198.19.0.20"), Some(80));
    // Delivered, and no policy allows the ClusterIP as an address: still no gap.
    for verdict in [
        judge.flow_to_backends(&flow(client(&pods), service).build(), &[]),
        judge.flow(&flow(client(&pods), service).build()),
    ] {
        assert_eq!((verdict.verdict, verdict.ambiguous), (VerdictKind::Allowed, true), "{}", verdict.reason);
        assert!(verdict.backends.is_empty() && verdict.policies.is_empty());
        assert!(verdict.reason.contains("no ready backend of Service ai/web is known"), "{}", verdict.reason);
    }
    let vault = FlowEnd::service("vault", "vault", ip("198.19.0.30"), Some(8200));
    let verdict = judge.flow_to_backends(&flow(client(&pods), vault).build(), &[]);
    assert_eq!((verdict.verdict, verdict.ambiguous), (VerdictKind::IntentViolation, true), "{}", verdict.reason);
    assert_eq!(judge.stats().enforcement_gaps, 0);
}

const TIER_INTENTS: &str = r#"
apiVersion: ai.governance/v1alpha1
kind: FlowIntent
metadata: {name: agents, namespace: ai}
spec:
  subject: {tiers: [agent]}
  egress:
    forbid: [{metadataService: true}]
    allow:
      - {namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}, ports: [{port: 53, protocol: UDP}]}
      - {world: true}
"#;

#[test]
fn intents_match_the_backend_behind_a_service_and_the_address_asked_for() {
    let pods = pods();
    let mut judge = judge("", TIER_INTENTS, &namespaces());
    // The allow rule names kube-dns pods: it matches the backend behind the Service.
    let service = FlowEnd::service("kube-system", "kube-dns", ip("198.19.0.10"), Some(53));
    let verdict = judge.flow(&flow(client(&pods), at(&pods.dns[0], 53)).asked(service).udp(1).build());
    assert_eq!(verdict.verdict, VerdictKind::Allowed, "{}", verdict.reason);
    // Not a Service's other pods: the web backend is no kube-dns pod.
    let web = FlowEnd::service("ai", "web", ip("198.19.0.20"), Some(80));
    let verdict = judge.flow(&flow(client(&pods), at(&pods.web, 8080)).asked(web).build());
    assert_eq!(verdict.verdict, VerdictKind::IntentViolation, "{}", verdict.reason);
    assert!(verdict.reason.contains("ai/web:80 (service) (sent to ai/web-1:8080)"), "{}", verdict.reason);
    // The metadata address, DNATed by the node to a host-network pod (the node):
    // forbidden by what the pod connected to.
    let metadata = FlowEnd::world(ip("169.254.169.254"), Some(80));
    let node = FlowEnd::address(EndpointKind::Node, ip("198.18.255.10"), Some(988));
    let verdict = judge.flow(&flow(client(&pods), node).asked(metadata).build());
    assert_eq!(verdict.verdict, VerdictKind::IntentViolation, "{}", verdict.reason);
    assert_eq!(verdict.intent.as_ref().map(|intent| &*intent.rule), Some("spec.egress.forbid[0]"));
}
