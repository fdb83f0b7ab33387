//! One test per rule of NetworkPolicy semantics, as the Kubernetes
//! documentation states them.

mod policy_support;

use observer::{
    inventory::model::{Namespace, Pod, Protocol},
    policy::{Endpoint, PolicyEngine, SideVerdict},
};
use policy_support::{engine, ip, names, namespace, pod, policy, tcp};
use serde_json::json;

struct World {
    namespaces: Vec<Namespace>,
    web: Pod,
    api: Pod,
    db: Pod,
    tool: Pod,
}

fn world() -> World {
    World {
        namespaces: vec![
            namespace("shop", &[("team", "shop"), ("env", "prod")]),
            namespace("data", &[("team", "data"), ("env", "prod")]),
            namespace("dev", &[("env", "dev")]),
        ],
        web: pod("shop", "web").label("app", "web").ip("198.18.0.10").port("http", 8080, Protocol::TCP).build(),
        api: pod("shop", "api").label("app", "api").ip("198.18.0.11").port("http", 9090, Protocol::TCP).build(),
        db: pod("data", "db").label("app", "db").ip("198.18.1.10").port("pg", 5432, Protocol::TCP).build(),
        tool: pod("dev", "tool").label("app", "tool").ip("198.18.2.10").build(),
    }
}

fn compiled(world: &World, policies: &[k8s_openapi::api::networking::v1::NetworkPolicy]) -> PolicyEngine {
    engine(policies, &world.namespaces)
}

fn open() -> SideVerdict {
    SideVerdict { isolated: false, allowed: true, policies: Vec::new(), ..SideVerdict::default() }
}

#[test]
fn pod_that_no_policy_selects_is_not_isolated() {
    let w = world();
    let engine = compiled(&w, &[policy("shop", "web-only", json!({"podSelector": {"matchLabels": {"app": "web"}}}))]);
    let verdict = tcp(&engine, &w.api, &w.db, 5432);
    assert!(verdict.allowed);
    assert_eq!(verdict.egress, open());
    assert_eq!(verdict.ingress, open());
}

#[test]
fn ingress_policy_isolates_the_pods_it_selects() {
    let w = world();
    let engine = compiled(&w, &[policy("shop", "web-only", json!({"podSelector": {"matchLabels": {"app": "web"}}}))]);
    let verdict = tcp(&engine, &w.api, &w.web, 8080);
    assert!(!verdict.allowed);
    assert!(verdict.ingress.isolated);
    assert!(!verdict.ingress.allowed);
    assert!(verdict.ingress.policies.is_empty());
    assert!(tcp(&engine, &w.web, &w.api, 9090).allowed, "api is not selected");
}

#[test]
fn policies_are_additive() {
    let w = world();
    let engine = compiled(
        &w,
        &[
            policy("shop", "deny-all", json!({"podSelector": {}})),
            policy(
                "shop",
                "from-api",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]}),
            ),
            policy(
                "shop",
                "from-data",
                json!({"podSelector": {"matchLabels": {"app": "web"}},
                    "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "data"}}}]}]}),
            ),
            policy("shop", "web-any-8080", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 8080}]}]})),
        ],
    );
    let from_api = tcp(&engine, &w.api, &w.web, 8080);
    assert!(from_api.allowed);
    assert_eq!(names(&from_api.ingress.policies), ["shop/from-api", "shop/web-any-8080"]);
    let from_db = tcp(&engine, &w.db, &w.web, 80);
    assert!(from_db.allowed);
    assert_eq!(names(&from_db.ingress.policies), ["shop/from-data"]);
    let from_tool = tcp(&engine, &w.tool, &w.web, 80);
    assert!(!from_tool.allowed, "no policy allows dev on port 80; a deny-all never subtracts");
    assert!(tcp(&engine, &w.tool, &w.web, 8080).allowed);
}

#[test]
fn isolation_is_per_direction() {
    let w = world();
    let engine = compiled(&w, &[policy("shop", "in", json!({"podSelector": {}, "policyTypes": ["Ingress"]}))]);
    let out = tcp(&engine, &w.web, &w.db, 5432);
    assert!(out.allowed);
    assert!(!out.egress.isolated, "an Ingress policy does not isolate egress");
    let engine = compiled(&w, &[policy("shop", "out", json!({"podSelector": {}, "policyTypes": ["Egress"]}))]);
    assert!(!tcp(&engine, &w.web, &w.db, 5432).allowed);
    let into = tcp(&engine, &w.db, &w.web, 8080);
    assert!(into.allowed);
    assert!(!into.ingress.isolated, "an Egress policy does not isolate ingress");
}

#[test]
fn policy_types_default_to_ingress_without_egress_rules() {
    let w = world();
    let engine = compiled(&w, &[policy("shop", "plain", json!({"podSelector": {}}))]);
    assert!(tcp(&engine, &w.db, &w.web, 8080).ingress.isolated);
    let out = tcp(&engine, &w.web, &w.db, 5432);
    assert!(!out.egress.isolated);
    assert!(out.allowed);
}

#[test]
fn policy_types_default_adds_egress_when_egress_rules_present() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy(
            "shop",
            "to-db",
            json!({"podSelector": {}, "egress": [{"to": [{"podSelector": {}, "namespaceSelector": {"matchLabels": {"team": "data"}}}]}]}),
        )],
    );
    let to_db = tcp(&engine, &w.web, &w.db, 5432);
    assert!(to_db.egress.isolated);
    assert!(to_db.allowed);
    assert_eq!(names(&to_db.egress.policies), ["shop/to-db"]);
    let to_tool = tcp(&engine, &w.web, &w.tool, 80);
    assert!(!to_tool.allowed);
    assert!(!to_tool.egress.allowed);
    let into = tcp(&engine, &w.db, &w.web, 8080);
    assert!(into.ingress.isolated, "Ingress is always a default policy type");
    assert!(!into.allowed);
}

#[test]
fn empty_egress_list_does_not_default_egress() {
    let w = world();
    let engine = compiled(&w, &[policy("shop", "empty-egress", json!({"podSelector": {}, "egress": []}))]);
    let out = tcp(&engine, &w.web, &w.db, 5432);
    assert!(!out.egress.isolated);
    assert!(out.allowed);
}

#[test]
fn explicit_policy_type_without_rules_denies_that_direction() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy("shop", "deny-egress", json!({"podSelector": {}, "policyTypes": ["Egress", "Ingress"]}))],
    );
    let out = tcp(&engine, &w.web, &w.db, 5432);
    assert!(out.egress.isolated);
    assert!(!out.egress.allowed);
    assert!(!tcp(&engine, &w.db, &w.web, 8080).ingress.allowed);
}

#[test]
fn flow_needs_egress_of_source_and_ingress_of_destination() {
    let w = world();
    let egress_open =
        policy("shop", "egress-open", json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{}]}));
    let db_closed = policy("data", "db-closed", json!({"podSelector": {}}));
    let engine = compiled(&w, &[egress_open.clone(), db_closed]);
    let verdict = tcp(&engine, &w.web, &w.db, 5432);
    assert!(verdict.egress.allowed);
    assert!(!verdict.ingress.allowed);
    assert!(!verdict.allowed);

    let egress_closed = policy("shop", "egress-closed", json!({"podSelector": {}, "policyTypes": ["Egress"]}));
    let db_open = policy("data", "db-open", json!({"podSelector": {}, "ingress": [{}]}));
    let engine = compiled(&w, &[egress_closed, db_open]);
    let verdict = tcp(&engine, &w.web, &w.db, 5432);
    assert!(!verdict.egress.allowed);
    assert!(verdict.ingress.allowed);
    assert!(!verdict.allowed);
}

#[test]
fn end_outside_the_cluster_has_no_side() {
    let w = world();
    let engine =
        compiled(&w, &[policy("shop", "closed", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}))]);
    let internet = Endpoint::External(ip("203.0.113.9"));
    let inbound = engine.verdict(internet, Endpoint::pod(&w.web), 8080, Protocol::TCP);
    assert_eq!(inbound.egress, open(), "the outside source has no egress side");
    assert!(!inbound.ingress.allowed);
    assert!(!inbound.allowed);
    let outbound = engine.verdict(Endpoint::pod(&w.db), internet, 443, Protocol::TCP);
    assert_eq!(outbound.ingress, open(), "the outside destination has no ingress side");
    assert!(outbound.allowed, "db is in an unrestricted namespace");
    let json = serde_json::to_value(&inbound).expect("serializable");
    assert_eq!(json["egress"], json!({"isolated": false, "allowed": true, "policies": []}));
}

#[test]
fn empty_pod_selector_selects_every_pod_of_its_namespace_only() {
    let w = world();
    let engine = compiled(&w, &[policy("shop", "all-of-shop", json!({"podSelector": {}}))]);
    assert!(tcp(&engine, &w.db, &w.web, 8080).ingress.isolated);
    assert!(tcp(&engine, &w.db, &w.api, 9090).ingress.isolated);
    assert!(!tcp(&engine, &w.web, &w.db, 5432).ingress.isolated, "a policy never selects pods of another namespace");
}

#[test]
fn absent_pod_selector_selects_every_pod_of_its_namespace() {
    let w = world();
    let engine = compiled(&w, &[policy("shop", "no-selector", json!({"policyTypes": ["Ingress"]}))]);
    assert!(tcp(&engine, &w.db, &w.web, 8080).ingress.isolated);
    assert!(tcp(&engine, &w.db, &w.api, 9090).ingress.isolated);
}

#[test]
fn peer_pod_selector_alone_means_pods_of_the_policy_namespace() {
    let w = world();
    let db_like_tool = pod("dev", "fake-api").label("app", "api").build();
    let engine = compiled(
        &w,
        &[policy(
            "shop",
            "from-api",
            json!({"podSelector": {"matchLabels": {"app": "web"}},
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "api"}}}]}]}),
        )],
    );
    assert!(tcp(&engine, &w.api, &w.web, 8080).allowed);
    assert!(!tcp(&engine, &db_like_tool, &w.web, 8080).allowed, "same labels in another namespace do not match");
}

#[test]
fn peer_namespace_selector_alone_means_every_pod_of_the_selected_namespaces() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy(
            "data",
            "from-prod",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"env": "prod"}}}]}]}),
        )],
    );
    assert!(tcp(&engine, &w.web, &w.db, 5432).allowed);
    assert!(tcp(&engine, &w.api, &w.db, 5432).allowed);
    assert!(!tcp(&engine, &w.tool, &w.db, 5432).allowed);
    let outside = engine.verdict(Endpoint::External(ip("203.0.113.9")), Endpoint::pod(&w.db), 5432, Protocol::TCP);
    assert!(!outside.allowed, "a namespace selector never matches an outside address");
}

#[test]
fn peer_with_namespace_and_pod_selector_needs_both() {
    let w = world();
    let dev_api = pod("dev", "api").label("app", "api").build();
    let engine = compiled(
        &w,
        &[policy(
            "data",
            "prod-api",
            json!({"podSelector": {}, "ingress": [{"from": [{
                "namespaceSelector": {"matchLabels": {"env": "prod"}},
                "podSelector": {"matchLabels": {"app": "api"}}
            }]}]}),
        )],
    );
    assert!(tcp(&engine, &w.api, &w.db, 5432).allowed);
    assert!(!tcp(&engine, &w.web, &w.db, 5432).allowed, "right namespace, wrong pod");
    assert!(!tcp(&engine, &dev_api, &w.db, 5432).allowed, "right pod, wrong namespace");
}

#[test]
fn separate_peers_mean_either() {
    let w = world();
    let dev_api = pod("dev", "api").label("app", "api").build();
    let engine = compiled(
        &w,
        &[policy(
            "data",
            "prod-or-api",
            json!({"podSelector": {}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"team": "shop"}}},
                {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "api"}}}
            ]}]}),
        )],
    );
    assert!(tcp(&engine, &w.web, &w.db, 5432).allowed);
    assert!(tcp(&engine, &dev_api, &w.db, 5432).allowed);
    assert!(!tcp(&engine, &w.tool, &w.db, 5432).allowed);
}

#[test]
fn empty_namespace_selector_means_every_namespace_but_no_outside_address() {
    let w = world();
    let stranger = pod("undeclared", "x").build();
    let engine = compiled(
        &w,
        &[policy(
            "shop",
            "cluster-only",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}),
        )],
    );
    for source in [&w.api, &w.db, &w.tool, &stranger] {
        assert!(tcp(&engine, source, &w.web, 8080).allowed, "{}/{}", source.namespace, source.name);
    }
    let outside = engine.verdict(Endpoint::External(ip("203.0.113.9")), Endpoint::pod(&w.web), 8080, Protocol::TCP);
    assert!(!outside.allowed);
}

#[test]
fn undeclared_namespace_carries_only_its_name_label() {
    let w = world();
    let stranger = pod("undeclared", "x").build();
    let engine = compiled(
        &w,
        &[policy(
            "shop",
            "by-name",
            json!({"podSelector": {}, "ingress": [{"from": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "undeclared"}}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "dev"}}}
            ]}]}),
        )],
    );
    assert!(tcp(&engine, &stranger, &w.web, 8080).allowed);
    assert!(tcp(&engine, &w.tool, &w.web, 8080).allowed);
    assert!(!tcp(&engine, &w.db, &w.web, 8080).allowed);
}

#[test]
fn match_expressions_select_pods_and_namespaces() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy(
            "data",
            "expressions",
            json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["db", "cache"]}]},
            "ingress": [{"from": [{
                "namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "NotIn", "values": ["dev"]}]},
                "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}, {"key": "debug", "operator": "DoesNotExist"}]}
            }]}]}),
        )],
    );
    assert!(tcp(&engine, &w.web, &w.db, 5432).allowed);
    assert!(!tcp(&engine, &w.tool, &w.db, 5432).allowed, "NotIn dev");
    let debug_web = pod("shop", "debug").label("app", "web").label("debug", "1").build();
    assert!(!tcp(&engine, &debug_web, &w.db, 5432).allowed, "DoesNotExist debug");
    let unlabelled = pod("shop", "bare").build();
    assert!(!tcp(&engine, &unlabelled, &w.db, 5432).allowed, "Exists app");
}

#[test]
fn ip_block_allows_its_cidr_except_the_exceptions() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy(
            "shop",
            "egress-web",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [
                {"ipBlock": {"cidr": "203.0.113.0/24", "except": ["203.0.113.128/25", "203.0.113.7/32"]}}
            ]}]}),
        )],
    );
    let to = |address: &str| engine.verdict(Endpoint::pod(&w.web), Endpoint::External(ip(address)), 443, Protocol::TCP);
    assert!(to("203.0.113.1").allowed);
    assert!(to("203.0.113.127").allowed);
    assert!(!to("203.0.113.7").allowed);
    assert!(!to("203.0.113.128").allowed);
    assert!(!to("203.0.114.1").allowed);
    assert!(!to("2001:db8::1").allowed, "an IPv4 block never matches IPv6");
    assert!(!tcp(&engine, &w.web, &w.db, 5432).allowed, "a pod outside the block");
}

#[test]
fn ip_block_matches_pod_addresses_by_the_address_the_flow_used() {
    let w = world();
    let dual = pod("data", "dual").ip("198.18.1.20").ip("2001:db8:1::20").build();
    let engine = compiled(
        &w,
        &[policy(
            "shop",
            "to-data-v6",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "2001:db8:1::/64"}}]}]}),
        )],
    );
    let v6 = engine.verdict(
        Endpoint::pod(&w.web),
        Endpoint::Pod { pod: &dual, ip: Some(ip("2001:db8:1::20")) },
        80,
        Protocol::TCP,
    );
    assert!(v6.allowed);
    let v4 = engine.verdict(
        Endpoint::pod(&w.web),
        Endpoint::Pod { pod: &dual, ip: Some(ip("198.18.1.20")) },
        80,
        Protocol::TCP,
    );
    assert!(!v4.allowed);
    assert!(tcp(&engine, &w.web, &dual, 80).allowed, "without the flow's address any of the pod's may match");
    assert!(!tcp(&engine, &w.web, &w.db, 80).allowed);
}

#[test]
fn numbered_port_allows_only_that_port() {
    let w = world();
    let engine =
        compiled(&w, &[policy("data", "pg", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 5432}]}]}))]);
    assert!(tcp(&engine, &w.web, &w.db, 5432).allowed);
    assert!(!tcp(&engine, &w.web, &w.db, 5433).allowed);
}

#[test]
fn named_port_resolves_on_each_destination_pod() {
    let w = world();
    let engine =
        compiled(&w, &[policy("shop", "http", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "http"}]}]}))]);
    assert!(tcp(&engine, &w.db, &w.web, 8080).allowed);
    assert!(!tcp(&engine, &w.db, &w.web, 9090).allowed);
    assert!(tcp(&engine, &w.db, &w.api, 9090).allowed);
    assert!(!tcp(&engine, &w.db, &w.api, 8080).allowed);
}

#[test]
fn named_port_in_egress_resolves_on_the_destination() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy(
            "shop",
            "to-http",
            json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"ports": [{"port": "http"}]}]}),
        )],
    );
    assert!(tcp(&engine, &w.web, &w.api, 9090).allowed);
    assert!(!tcp(&engine, &w.web, &w.api, 8080).allowed, "8080 is http on web, not on api");
    assert!(tcp(&engine, &w.api, &w.web, 8080).allowed);
    let outside = engine.verdict(Endpoint::pod(&w.web), Endpoint::External(ip("203.0.113.9")), 8080, Protocol::TCP);
    assert!(!outside.allowed, "a named port never resolves outside the cluster");
}

#[test]
fn named_port_needs_the_protocol_it_was_declared_with() {
    let w = world();
    let dns = pod("shop", "dns").port("dns", 53, Protocol::UDP).port("dns-tcp", 53, Protocol::TCP).build();
    let engine = compiled(
        &w,
        &[policy(
            "shop",
            "dns",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": "dns", "protocol": "UDP"}]}]}),
        )],
    );
    assert!(engine.verdict(Endpoint::pod(&w.web), Endpoint::pod(&dns), 53, Protocol::UDP).allowed);
    assert!(!engine.verdict(Endpoint::pod(&w.web), Endpoint::pod(&dns), 53, Protocol::TCP).allowed);
    let tcp_named =
        compiled(&w, &[policy("shop", "dns", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "dns"}]}]}))]);
    assert!(
        !tcp_named.verdict(Endpoint::pod(&w.web), Endpoint::pod(&dns), 53, Protocol::UDP).allowed,
        "absent protocol means TCP, and the UDP port named dns is not TCP"
    );
    assert!(!tcp_named.verdict(Endpoint::pod(&w.web), Endpoint::pod(&dns), 53, Protocol::TCP).allowed);
}

#[test]
fn unknown_named_port_matches_nothing() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy("data", "metrics", json!({"podSelector": {}, "ingress": [{"ports": [{"port": "metrics"}]}]}))],
    );
    for port in [1, 5432, 9090, 65535] {
        assert!(!tcp(&engine, &w.web, &w.db, port).allowed, "{port}");
    }
}

#[test]
fn end_port_allows_an_inclusive_range() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy(
            "data",
            "range",
            json!({"podSelector": {}, "ingress": [{"ports": [{"port": 32000, "endPort": 32768}]}]}),
        )],
    );
    assert!(!tcp(&engine, &w.web, &w.db, 31999).allowed);
    assert!(tcp(&engine, &w.web, &w.db, 32000).allowed);
    assert!(tcp(&engine, &w.web, &w.db, 32400).allowed);
    assert!(tcp(&engine, &w.web, &w.db, 32768).allowed);
    assert!(!tcp(&engine, &w.web, &w.db, 32769).allowed);
}

#[test]
fn protocols_tcp_udp_and_sctp_are_told_apart() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy(
            "data",
            "protocols",
            json!({"podSelector": {}, "ingress": [{"ports": [
                {"port": 1000},
                {"port": 2000, "protocol": "UDP"},
                {"port": 3000, "protocol": "SCTP"}
            ]}]}),
        )],
    );
    let at = |port, protocol| engine.verdict(Endpoint::pod(&w.web), Endpoint::pod(&w.db), port, protocol).allowed;
    assert!(at(1000, Protocol::TCP));
    assert!(!at(1000, Protocol::UDP));
    assert!(at(2000, Protocol::UDP));
    assert!(!at(2000, Protocol::TCP));
    assert!(at(3000, Protocol::SCTP));
    assert!(!at(3000, Protocol::UDP));
}

#[test]
fn port_entry_without_a_port_allows_every_port_of_its_protocol() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy("data", "all-udp", json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "UDP"}]}]}))],
    );
    assert!(engine.verdict(Endpoint::pod(&w.web), Endpoint::pod(&w.db), 1, Protocol::UDP).allowed);
    assert!(engine.verdict(Endpoint::pod(&w.web), Endpoint::pod(&w.db), 65535, Protocol::UDP).allowed);
    assert!(!tcp(&engine, &w.web, &w.db, 5432).allowed);
}

#[test]
fn rule_without_from_allows_every_source_even_outside() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy("data", "pg-from-all", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 5432}]}]}))],
    );
    assert!(tcp(&engine, &w.tool, &w.db, 5432).allowed);
    assert!(engine.verdict(Endpoint::External(ip("203.0.113.9")), Endpoint::pod(&w.db), 5432, Protocol::TCP).allowed);
    let empty_from = compiled(
        &w,
        &[policy(
            "data",
            "empty-from",
            json!({"podSelector": {}, "ingress": [{"from": [], "ports": [{"port": 5432}]}]}),
        )],
    );
    assert!(
        empty_from.verdict(Endpoint::External(ip("203.0.113.9")), Endpoint::pod(&w.db), 5432, Protocol::TCP).allowed
    );
}

#[test]
fn rule_without_ports_allows_every_port_and_protocol() {
    let w = world();
    let engine = compiled(
        &w,
        &[policy(
            "data",
            "from-shop",
            json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "shop"}}}], "ports": []}]}),
        )],
    );
    for (port, protocol) in [(1, Protocol::TCP), (53, Protocol::UDP), (9999, Protocol::SCTP), (65535, Protocol::TCP)] {
        assert!(engine.verdict(Endpoint::pod(&w.web), Endpoint::pod(&w.db), port, protocol).allowed);
    }
    assert!(!tcp(&engine, &w.tool, &w.db, 5432).allowed);
}

#[test]
fn empty_rule_allows_everything_and_empty_rule_list_nothing() {
    let w = world();
    let allow_all = compiled(&w, &[policy("data", "allow-all", json!({"podSelector": {}, "ingress": [{}]}))]);
    let verdict = tcp(&allow_all, &w.tool, &w.db, 1234);
    assert!(verdict.ingress.isolated);
    assert!(verdict.allowed);
    assert_eq!(names(&verdict.ingress.policies), ["data/allow-all"]);
    let deny_all = compiled(&w, &[policy("data", "deny-all", json!({"podSelector": {}, "ingress": []}))]);
    assert!(!tcp(&deny_all, &w.web, &w.db, 5432).allowed);
}

#[test]
fn host_network_pod_is_seen_as_its_address() {
    let w = world();
    let node_agent = pod("shop", "agent").label("app", "web").ip("10.0.0.1").host_network().build();
    let engine = compiled(
        &w,
        &[
            policy("shop", "closed", json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress"]})),
            policy(
                "data",
                "from-web-or-node",
                json!({"podSelector": {}, "ingress": [{"from": [
                    {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}
                ]}]}),
            ),
        ],
    );
    let verdict = tcp(&engine, &node_agent, &w.db, 5432);
    assert_eq!(verdict.egress, open(), "policies do not select host-network pods");
    assert!(!verdict.allowed, "pod selectors do not match host-network pods");
    let by_block = compiled(
        &w,
        &[policy(
            "data",
            "from-nodes",
            json!({"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/24"}}]}]}),
        )],
    );
    assert!(tcp(&by_block, &node_agent, &w.db, 5432).allowed);
}

#[test]
fn explanation_names_every_allowing_policy_with_its_version() {
    let w = world();
    let mut first = policy("data", "a", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 5432}]}]}));
    first.metadata.resource_version = Some("4711".to_owned());
    first.metadata.generation = Some(3);
    first.metadata.uid = Some("uid-a".to_owned());
    let second = policy("data", "b", json!({"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}));
    let unrelated = policy("data", "c", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 1}]}]}));
    let engine = compiled(&w, &[first, second, unrelated]);
    let verdict = tcp(&engine, &w.web, &w.db, 5432);
    assert_eq!(names(&verdict.ingress.policies), ["data/a", "data/b"]);
    let json = serde_json::to_value(&verdict).expect("serializable");
    assert_eq!(
        json["ingress"]["policies"],
        json!([
            {"namespace": "data", "name": "a", "uid": "uid-a", "resource_version": "4711", "generation": 3},
            {"namespace": "data", "name": "b"}
        ])
    );
    assert_eq!(json["allowed"], json!(true));
    let denied = engine.verdict(Endpoint::External(ip("203.0.113.9")), Endpoint::pod(&w.db), 2, Protocol::TCP);
    assert!(denied.ingress.isolated && !denied.ingress.allowed && denied.ingress.policies.is_empty());
}
