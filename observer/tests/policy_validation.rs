//! Invalid NetworkPolicies: each is refused with the field and the reason the
//! API server would give, and the valid ones around it still compile.

mod policy_support;

use observer::{
    inventory::model::Protocol,
    policy::{CidrError, Endpoint, PolicyEngine, Problem},
};
use policy_support::{ip, namespace, pod, policy};
use serde_json::{Value, json};

/// The one error compiling a policy with `spec` gives.
fn refused(spec: Value) -> (String, Problem) {
    let (engine, mut errors) = PolicyEngine::compile(&[policy("shop", "bad", spec)], &[namespace("shop", &[])]);
    assert!(engine.is_empty(), "an invalid policy must not compile");
    assert_eq!(errors.len(), 1, "{errors:?}");
    let error = errors.remove(0);
    assert_eq!((error.namespace.as_str(), error.name.as_str(), error.index), ("shop", "bad", 0));
    (error.field, error.problem)
}

fn ingress_from(peer: Value) -> Value {
    json!({"podSelector": {}, "ingress": [{"from": [peer]}]})
}

fn ingress_port(port: Value) -> Value {
    json!({"podSelector": {}, "ingress": [{"ports": [port]}]})
}

#[test]
fn invalid_cidr_is_refused() {
    for (cidr, reason) in [
        ("10.0.0.1", CidrError::MissingPrefix),
        ("10.0.0/8", CidrError::BadAddress),
        ("10.0.0.0/33", CidrError::BadPrefix),
        ("2001:db8::/129", CidrError::BadPrefix),
    ] {
        assert_eq!(
            refused(ingress_from(json!({"ipBlock": {"cidr": cidr}}))),
            (
                "spec.ingress[0].from[0].ipBlock.cidr".to_owned(),
                Problem::InvalidCidr { value: cidr.to_owned(), reason }
            ),
        );
    }
    assert_eq!(
        refused(ingress_from(json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0"]}}))).0,
        "spec.ingress[0].from[0].ipBlock.except[0]"
    );
}

#[test]
fn except_outside_its_cidr_is_refused() {
    for except in ["11.0.0.0/16", "10.0.0.0/8", "10.0.0.0/7", "2001:db8::/64"] {
        assert_eq!(
            refused(ingress_from(json!({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16", except]}}))),
            (
                "spec.ingress[0].from[0].ipBlock.except[1]".to_owned(),
                Problem::ExceptOutsideCidr { cidr: "10.0.0.0/8".to_owned(), except: except.to_owned() }
            ),
        );
    }
}

#[test]
fn cidr_with_host_bits_is_accepted_as_its_network() {
    let policy = policy(
        "shop",
        "host-bits",
        json!({"podSelector": {}, "policyTypes": ["Egress"], "egress": [{"to": [{"ipBlock": {"cidr": "203.0.113.77/24"}}]}]}),
    );
    let (engine, errors) = PolicyEngine::compile(&[policy], &[]);
    assert!(errors.is_empty(), "{errors:?}");
    let web = pod("shop", "web").build();
    assert!(engine.verdict(Endpoint::pod(&web), Endpoint::External(ip("203.0.113.1")), 80, Protocol::TCP).allowed);
    assert!(!engine.verdict(Endpoint::pod(&web), Endpoint::External(ip("203.0.114.1")), 80, Protocol::TCP).allowed);
}

#[test]
fn end_port_below_port_is_refused() {
    assert_eq!(
        refused(ingress_port(json!({"port": 8080, "endPort": 8000}))),
        ("spec.ingress[0].ports[0].endPort".to_owned(), Problem::EndPortBelowPort { port: 8080, end_port: 8000 }),
    );
}

#[test]
fn end_port_needs_a_numeric_port() {
    for port in [json!({"endPort": 8000}), json!({"port": "http", "endPort": 8000})] {
        assert_eq!(
            refused(ingress_port(port)),
            ("spec.ingress[0].ports[0].endPort".to_owned(), Problem::EndPortWithoutNumericPort),
        );
    }
}

#[test]
fn port_numbers_outside_1_to_65535_are_refused() {
    assert_eq!(
        refused(ingress_port(json!({"port": 0}))),
        ("spec.ingress[0].ports[0].port".to_owned(), Problem::PortOutOfRange { value: 0 }),
    );
    assert_eq!(
        refused(ingress_port(json!({"port": 65536}))),
        ("spec.ingress[0].ports[0].port".to_owned(), Problem::PortOutOfRange { value: 65536 }),
    );
    assert_eq!(
        refused(ingress_port(json!({"port": 65000, "endPort": 70000}))),
        ("spec.ingress[0].ports[0].endPort".to_owned(), Problem::PortOutOfRange { value: 70000 }),
    );
}

#[test]
fn invalid_port_names_are_refused() {
    for name in ["HTTP", "web_port", "a-very-long-port-name", "-http"] {
        assert_eq!(
            refused(ingress_port(json!({"port": name}))),
            ("spec.ingress[0].ports[0].port".to_owned(), Problem::InvalidPortName { value: name.to_owned() }),
        );
    }
}

#[test]
fn unsupported_protocol_is_refused() {
    assert_eq!(
        refused(json!({"podSelector": {}, "egress": [{"ports": [{"port": 1, "protocol": "ICMP"}]}]})),
        ("spec.egress[0].ports[0].protocol".to_owned(), Problem::UnsupportedProtocol { value: "ICMP".to_owned() }),
    );
}

#[test]
fn policy_types_are_validated() {
    assert_eq!(
        refused(json!({"podSelector": {}, "policyTypes": ["Ingress", "Outbound"]})),
        ("spec.policyTypes[1]".to_owned(), Problem::UnsupportedPolicyType { value: "Outbound".to_owned() }),
    );
    assert_eq!(
        refused(json!({"podSelector": {}, "policyTypes": ["Ingress", "Egress", "Ingress"]})),
        ("spec.policyTypes".to_owned(), Problem::TooManyPolicyTypes),
    );
}

#[test]
fn peers_are_validated() {
    assert_eq!(refused(ingress_from(json!({}))), ("spec.ingress[0].from[0]".to_owned(), Problem::EmptyPeer));
    assert_eq!(
        refused(ingress_from(json!({"ipBlock": {"cidr": "10.0.0.0/8"}, "namespaceSelector": {}}))),
        ("spec.ingress[0].from[0]".to_owned(), Problem::IpBlockWithSelector),
    );
    assert_eq!(
        refused(
            json!({"podSelector": {}, "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]})
        ),
        ("spec.egress[0].to[0]".to_owned(), Problem::IpBlockWithSelector),
    );
}

#[test]
fn selectors_are_validated() {
    assert_eq!(
        refused(json!({"podSelector": {"matchExpressions": [{"key": "app", "operator": "Equals", "values": ["x"]}]}})),
        ("spec.podSelector".to_owned(), Problem::UnsupportedOperator { operator: "Equals".to_owned() }),
    );
    assert_eq!(
        refused(ingress_from(json!({"namespaceSelector": {"matchExpressions": [{"key": "env", "operator": "In"}]}}))),
        ("spec.ingress[0].from[0].namespaceSelector".to_owned(), Problem::MissingValues { operator: "In".to_owned() }),
    );
}

#[test]
fn rules_of_a_type_the_policy_lacks_are_still_validated() {
    assert_eq!(
        refused(json!({"podSelector": {}, "policyTypes": ["Ingress"], "egress": [{"ports": [{"port": 0}]}]})),
        ("spec.egress[0].ports[0].port".to_owned(), Problem::PortOutOfRange { value: 0 }),
    );
}

#[test]
fn policy_without_a_name_is_refused() {
    let mut nameless = policy("shop", "x", json!({"podSelector": {}}));
    nameless.metadata.name = None;
    let (engine, errors) = PolicyEngine::compile(&[nameless], &[]);
    assert!(engine.is_empty());
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].field.as_str(), &errors[0].problem), ("metadata.name", &Problem::MissingName));
}

#[test]
fn invalid_policies_are_left_out_and_the_rest_compile() {
    let policies = [
        policy("shop", "deny-all", json!({"podSelector": {}})),
        policy("shop", "broken", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 79}]}]})),
        policy("shop", "allow-80", json!({"podSelector": {}, "ingress": [{"ports": [{"port": 80}]}]})),
    ];
    let (engine, errors) = PolicyEngine::compile(&policies, &[namespace("shop", &[])]);
    assert_eq!(engine.len(), 2);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].index, 1);
    assert_eq!(
        errors[0].to_string(),
        "NetworkPolicy shop/broken: spec.ingress[0].ports[0].endPort: endPort 79 must be greater than or equal to port 80"
    );
    let (web, client) = (pod("shop", "web").build(), pod("shop", "client").build());
    assert!(engine.verdict(Endpoint::pod(&client), Endpoint::pod(&web), 80, Protocol::TCP).allowed);
    assert!(!engine.verdict(Endpoint::pod(&client), Endpoint::pod(&web), 79, Protocol::TCP).allowed);
}
