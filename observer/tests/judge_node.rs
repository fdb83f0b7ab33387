//! Traffic between a pod and its own node is always allowed; host-network
//! pods are the node; other nodes are judged by `ipBlock` as any address.

mod judge_fixtures;

use judge_fixtures::{flow, ip, judge, namespace, pod};
use observer::{
    intent::FlowEnd,
    inventory::{EndpointKind, model::Pod},
    judge::{Judge, VerdictKind},
};

/// Isolates every pod of `ai` both ways; lets the server in from the lab's
/// node range only by address.
const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: ai, resourceVersion: "3"}
spec:
  podSelector: {}
  policyTypes: [Ingress, Egress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: nodes-to-server, namespace: ai, resourceVersion: "4"}
spec:
  podSelector: {matchLabels: {app: server}}
  policyTypes: [Ingress]
  ingress:
    - from: [{ipBlock: {cidr: 198.18.255.0/24}}]
"#;

fn node_judge(node: Option<&str>) -> Judge {
    judge(POLICIES, "", &[namespace("ai", &[])]).on_node(node)
}

fn end(pod: &Pod, port: Option<u16>) -> FlowEnd<'_> {
    FlowEnd::pod(pod, pod.ips[0], port)
}

fn host(address: &str, port: Option<u16>) -> FlowEnd<'static> {
    FlowEnd::address(EndpointKind::Host, ip(address), port)
}

#[test]
fn a_pod_and_its_own_node_are_allowed_both_ways_at_any_node_address() {
    let web = pod("web-1").label("app", "web").ip("198.18.0.10").build();
    let mut judge = node_judge(Some("node-1"));
    // A probe from the bridge's gateway address and from the node's primary
    // address (neither named by any policy), both ways, v4 and v6.
    for address in ["198.18.0.1", "198.18.255.10", "2001:db8:198:255::10"] {
        let probe = judge.flow(&flow(host(address, None), end(&web, Some(8080))).build());
        assert_eq!(probe.verdict, VerdictKind::Allowed, "{}", probe.reason);
        assert!(probe.reason.contains("own node node-1"), "{}", probe.reason);
        assert!(probe.policies.is_empty());
        let to_node = judge.flow(&flow(end(&web, None), host(address, Some(10250))).build());
        assert_eq!(to_node.verdict, VerdictKind::Allowed, "{}", to_node.reason);
        assert!(to_node.reason.contains("node"), "{}", to_node.reason);
    }
    // Seen at the pod's own socket too.
    let at_pod = judge.flow(&flow(host("198.18.0.1", None), end(&web, Some(8080))).at_receiver().build());
    assert_eq!(at_pod.verdict, VerdictKind::Allowed, "{}", at_pod.reason);
    // Another pod is still denied: the rule is about the node only.
    let peer = pod("peer-1").ip("198.18.0.11").build();
    let denied = judge.flow(&flow(end(&peer, None), end(&web, Some(8080))).build());
    assert_eq!(denied.verdict, VerdictKind::EnforcementGap, "{}", denied.reason);
}

#[test]
fn a_host_network_pod_is_the_node_on_both_ends() {
    let web = pod("web-1").label("app", "web").ip("198.18.0.10").build();
    // Selected by deny-all, yet not isolated by it: it is the node.
    let agent = pod("node-agent").label("app", "agent").ip("198.18.255.10").host_network().build();
    let mut judge = node_judge(Some("node-1"));
    let from_agent = judge.flow(&flow(end(&agent, None), end(&web, Some(8080))).build());
    assert_eq!(from_agent.verdict, VerdictKind::Allowed, "{}", from_agent.reason);
    assert!(from_agent.reason.contains("node"), "{}", from_agent.reason);
    assert!(from_agent.reason.contains("host-network pod ai/node-agent"), "{}", from_agent.reason);
    let to_agent = judge.flow(&flow(end(&web, None), end(&agent, Some(9100))).build());
    assert_eq!(to_agent.verdict, VerdictKind::Allowed, "{}", to_agent.reason);
    assert!(to_agent.reason.contains("node"), "{}", to_agent.reason);
    // Its own traffic to the world is not isolated by the policies selecting it.
    let out = judge.flow(&flow(end(&agent, None), FlowEnd::world(ip("203.0.113.5"), Some(443))).build());
    assert_eq!(out.verdict, VerdictKind::Allowed, "{}", out.reason);
    // Node and host-network pod together: both ends are the node.
    let both = judge.flow(&flow(host("198.18.0.1", None), end(&agent, Some(9100))).build());
    assert_eq!(both.verdict, VerdictKind::Allowed, "{}", both.reason);
    assert!(both.reason.contains("node"), "{}", both.reason);
}

#[test]
fn other_nodes_are_judged_by_ip_block() {
    let web = pod("web-1").label("app", "web").ip("198.18.0.10").build();
    let server = pod("server-1").label("app", "server").ip("198.18.0.20").build();
    let mut elsewhere = pod("web-2").label("app", "web").ip("198.18.1.10").build();
    elsewhere.node_name = Some("node-2".to_owned());
    let mut judge = node_judge(Some("node-1"));
    // This node's process reaching a pod of node-2: no exemption.
    let remote_pod = judge.flow(&flow(host("198.18.255.10", None), end(&elsewhere, Some(8080))).build());
    assert_eq!(remote_pod.verdict, VerdictKind::EnforcementGap, "{}", remote_pod.reason);
    assert_eq!(remote_pod.policies.len(), 1, "{:?}", remote_pod.policies);
    // Another node's address reaching pods of this node: by ipBlock.
    let node_2 = |address: &str| FlowEnd::address(EndpointKind::Node, ip(address), None);
    let denied = judge.flow(&flow(node_2("198.18.254.11"), end(&web, Some(8080))).build());
    assert_eq!(denied.verdict, VerdictKind::EnforcementGap, "{}", denied.reason);
    let by_block = judge.flow(&flow(node_2("198.18.255.11"), end(&server, Some(8080))).build());
    assert_eq!(by_block.verdict, VerdictKind::Allowed, "{}", by_block.reason);
    assert_eq!(by_block.policies[0].0.name, "nodes-to-server");
    let outside_block = judge.flow(&flow(node_2("198.18.254.11"), end(&server, Some(8080))).build());
    assert_eq!(outside_block.verdict, VerdictKind::EnforcementGap, "{}", outside_block.reason);
}

#[test]
fn without_a_node_name_every_pod_is_on_this_node() {
    // Standalone mode: the manifests describe this node.
    let mut elsewhere = pod("web-2").label("app", "web").ip("198.18.1.10").build();
    elsewhere.node_name = Some("node-2".to_owned());
    let mut judge = node_judge(None);
    let probe = judge.flow(&flow(host("198.18.0.1", None), end(&elsewhere, Some(8080))).build());
    assert_eq!(probe.verdict, VerdictKind::Allowed, "{}", probe.reason);
    assert!(probe.reason.contains("own node"), "{}", probe.reason);
}
