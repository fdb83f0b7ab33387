//! ClusterNetworkPolicies watched from the API server (the in-process fake,
//! real list and watch): a missing CRD is recognized as such, and once
//! installed, policies arrive and compile.

mod inventory_support;

use std::time::Duration;

use futures::StreamExt as _;
use inventory_support::{CLUSTER_POLICIES, FakeApi, eventually};
use observer::policy::{PolicyEngine, cnp::source};
use serde_json::json;

fn guardrail(name: &str, priority: i64) -> serde_json::Value {
    json!({
        "metadata": {"name": name},
        "spec": {"tier": "Admin", "priority": priority, "subject": {"namespaces": {}},
            "egress": [{"action": "Deny", "to": [{"networks": ["169.254.169.254/32"]}]}]},
    })
}

#[tokio::test]
async fn a_missing_crd_is_told_apart_then_policies_arrive_once_installed() {
    let api = FakeApi::start().await;
    api.set_absent(CLUSTER_POLICIES, true);
    let (store, stream) = source::watch(api.client());
    let mut stream = Box::pin(stream);
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("the watch answers");
    let error = first.expect("the stream goes on").expect_err("no CRD: the list fails");
    assert!(source::crd_absent(&error), "{error}");

    api.set_absent(CLUSTER_POLICIES, false);
    api.apply(CLUSTER_POLICIES, guardrail("no-metadata", 1));
    api.apply(CLUSTER_POLICIES, guardrail("bad", 5000));
    // The watch retries with backoff; poll it while waiting for the store.
    let polled = tokio::spawn(async move { while stream.next().await.is_some() {} });
    eventually(Duration::from_secs(30), "both policies in the store", || store.state().len() == 2).await;
    let policies: Vec<_> = store.state().iter().map(|policy| (**policy).clone()).collect();
    let (engine, errors) = PolicyEngine::compile(&[], &[]).0.with_cluster_policies(&policies, &[]);
    assert_eq!(engine.cluster_len(), 1);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].name, "bad");
    assert_eq!(errors[0].field, "spec.priority");
    polled.abort();
}

#[tokio::test]
async fn other_watch_errors_are_not_taken_for_a_missing_crd() {
    let api = FakeApi::start().await;
    api.set_down(true);
    let (_store, stream) = source::watch(api.client());
    let mut stream = std::pin::pin!(stream);
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("the watch answers");
    let error = first.expect("the stream goes on").expect_err("the server is down");
    assert!(!source::crd_absent(&error), "{error}");
}
