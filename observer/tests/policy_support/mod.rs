//! Builder fixtures shared by the policy tests: pods, namespaces and policies
//! as plain values.

#![allow(dead_code, unused_imports, reason = "each test crate uses a different part of the fixtures")]

use k8s_openapi::api::networking::v1::NetworkPolicy;
use observer::{
    inventory::model::{Namespace, Pod, Protocol},
    policy::{Endpoint, PolicyEngine, Verdict},
};

pub use observer::testing::{PodBuilder, ip, namespace, policy};

/// A pod builder: `pod("shop", "web").label("app", "web").ip("198.18.0.5")`,
/// uid `<namespace>-<name>`.
pub fn pod(namespace: &str, name: &str) -> PodBuilder {
    observer::testing::pod(name).ns(namespace).uid(&format!("{namespace}-{name}"))
}

/// Compiles policies that must all be valid.
pub fn engine(policies: &[NetworkPolicy], namespaces: &[Namespace]) -> PolicyEngine {
    let (engine, errors) = PolicyEngine::compile(policies, namespaces);
    assert!(errors.is_empty(), "unexpected policy errors: {errors:?}");
    assert_eq!(engine.len(), policies.len());
    engine
}

/// A TCP verdict between two pods; the same verdict, checked, as with the
/// engine's pod index (the daemon's path).
pub fn tcp(engine: &PolicyEngine, source: &Pod, destination: &Pod, port: u16) -> Verdict {
    let verdict = engine.verdict(Endpoint::pod(source), Endpoint::pod(destination), port, Protocol::TCP);
    let (source, destination) = (std::sync::Arc::new(source.clone()), std::sync::Arc::new(destination.clone()));
    let mut indexed = engine.clone();
    indexed.index_pods([source.clone(), destination.clone()]);
    assert_eq!(indexed.indexed_pods(), 2);
    let with_index = indexed.verdict(Endpoint::pod(&source), Endpoint::pod(&destination), port, Protocol::TCP);
    assert_eq!(with_index, verdict, "the pod index changes no verdict");
    verdict
}

/// `namespace/name` of each policy that allowed a side.
pub fn names(policies: &[std::sync::Arc<observer::inventory::ObjectRef>]) -> Vec<String> {
    policies.iter().map(ToString::to_string).collect()
}
