//! ClusterNetworkPolicies watched from the API server (the in-process fake,
//! real list and watch) by the cluster inventory: a missing CRD is told apart
//! from a failure (held as none, the inventory ready and not failing), and
//! once installed, policies arrive in the snapshot and compile.

mod inventory_support;

use std::time::Duration;

use inventory_support::{CLUSTER_POLICIES, FakeApi, eventually};
use observer::{
    inventory::{Inventory, InventoryConfig, Resource},
    policy::PolicyEngine,
};
use serde_json::json;

fn guardrail(name: &str, priority: i64) -> serde_json::Value {
    json!({
        "metadata": {"name": name},
        "spec": {"tier": "Admin", "priority": priority, "subject": {"namespaces": {}},
            "egress": [{"action": "Deny", "to": [{"networks": ["169.254.169.254/32"]}]}]},
    })
}

fn config() -> InventoryConfig {
    InventoryConfig { stale_after: Duration::from_millis(500), ..InventoryConfig::default() }
}

#[tokio::test]
async fn a_missing_crd_is_told_apart_then_policies_arrive_once_installed() {
    let api = FakeApi::start().await;
    api.set_absent(CLUSTER_POLICIES, true);
    let (inventory, task) = Inventory::cluster(api.client(), config());
    let task = tokio::spawn(task);
    tokio::time::timeout(Duration::from_secs(10), inventory.ready()).await.expect("synced without the CRD");
    eventually(Duration::from_secs(10), "the missing CRD held as no policies", || {
        inventory.status().resources.get(&Resource::ClusterNetworkPolicies).is_some_and(|policies| policies.listed)
    })
    .await;
    let status = inventory.status();
    let policies = &status.resources[&Resource::ClusterNetworkPolicies];
    assert_eq!((policies.objects, policies.errors, policies.stale), (0, 0, false), "not a failure: {policies:?}");
    assert!(!status.stale, "{status:?}");

    api.set_absent(CLUSTER_POLICIES, false);
    api.apply(CLUSTER_POLICIES, guardrail("no-metadata", 1));
    api.apply(CLUSTER_POLICIES, guardrail("bad", 5000));
    // The watch retries with backoff (up to 30 s apart).
    eventually(Duration::from_secs(40), "both policies in the snapshot", || {
        inventory.snapshot().intents().cluster_policies.len() == 2
    })
    .await;
    let policies = inventory.snapshot().intents().cluster_policies;
    let (engine, errors) = PolicyEngine::compile(&[], &[]).0.with_cluster_policies(&policies, &[]);
    assert_eq!(engine.cluster_len(), 1);
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].name, "bad");
    assert_eq!(errors[0].field, "spec.priority");
    task.abort();
}

#[tokio::test]
async fn other_watch_errors_are_not_taken_for_a_missing_crd() {
    let api = FakeApi::start().await;
    api.set_down(true);
    let (inventory, task) = Inventory::cluster(api.client(), config());
    let task = tokio::spawn(task);
    eventually(Duration::from_secs(10), "the failure counted", || {
        inventory.status().resources.get(&Resource::ClusterNetworkPolicies).is_some_and(|policies| policies.errors >= 1)
    })
    .await;
    let status = inventory.status();
    let policies = &status.resources[&Resource::ClusterNetworkPolicies];
    assert!(!policies.listed, "a server that is down is not a missing CRD: {policies:?}");
    assert!(policies.last_error.as_deref().is_some_and(|error| error.contains("503")), "{policies:?}");
    task.abort();
}
