//! The standalone source: manifest folders, bad documents, reload on change.

use std::{
    fs,
    path::Path,
    time::{Duration, Instant, SystemTime},
};

use observer::{
    inventory::{EndpointKind, Inventory, InventoryConfig},
    testing::{ManifestDir, ip},
};

const WEB_UID: &str = "5e0c9a1e-0000-4000-8000-000000000001";
const AGENT_UID: &str = "5e0c9a1e-0000-4000-8000-000000000002";

fn web(label: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web-1\n  namespace: shop\n  uid: {WEB_UID}\n  labels:\n    app: {label}\n    pod-template-hash: 7d9\n  ownerReferences:\n  - apiVersion: apps/v1\n    kind: ReplicaSet\n    name: web-7d9\n    uid: rs-uid\n    controller: true\nspec:\n  containers:\n  - name: c\n    image: i\nstatus:\n  podIP: 198.18.0.5\n"
    )
}

const AGENT_AND_BROKEN: &str = "apiVersion: v1
kind: Pod
metadata:
  name: node-agent
  namespace: kube-system
  uid: 5e0c9a1e-0000-4000-8000-000000000002
spec:
  hostNetwork: true
  containers:
  - name: c
    image: i
status:
  podIP: 10.0.0.1
---
apiVersion: v1
kind: Pod
metadata: [unclosed
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
";

const LIST_JSON: &str = r#"{"apiVersion": "v1", "kind": "List", "items": [
  {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"},
   "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}},
  {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": "shop"},
   "spec": {"clusterIP": "10.96.0.10", "selector": {"app": "web"}}},
  {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "shop"},
   "spec": {"podSelector": {}}}
]}"#;

fn config() -> InventoryConfig {
    InventoryConfig { reload_interval: Duration::from_millis(50), ..InventoryConfig::default() }
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < Duration::from_secs(2), "not within 2 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_folder_loads_whole_except_the_bad_document_which_is_named() {
    let dir = ManifestDir::new("standalone-load");
    dir.write("apps/web.yaml", &web("web"));
    let broken = dir.write("system/agent.yml", AGENT_AND_BROKEN);
    dir.write("cluster.json", LIST_JSON);
    dir.write("README.md", "not a manifest");
    let (inventory, _reload) = Inventory::standalone(vec![dir.path().to_owned()], config());
    let snapshot = inventory.snapshot();
    assert!(snapshot.synced(), "ready as soon as it is built");
    let resolver = inventory.resolver();
    let now = SystemTime::now();

    let web = resolver.resolve_remote(ip("198.18.0.5"), now);
    assert_eq!((web.kind, web.pod.as_deref()), (EndpointKind::Pod, Some("web-1")));
    let workload = web.workload.clone().expect("workload");
    assert_eq!((workload.kind.as_str(), workload.name.as_str()), ("Deployment", "web"), "from the template hash");
    // The lab's cgroup shape finds the pod, and the host-network agent too.
    let local = resolver.resolve_local(Some(&format!("kubepods/besteffort/pod{WEB_UID}/web")), ip("198.18.0.5"), now);
    assert_eq!(local.pod.as_deref(), Some("web-1"));
    let agent = resolver.resolve_local(Some(&format!("/kubepods/pod{AGENT_UID}/c")), ip("10.0.0.1"), now);
    assert_eq!(agent.pod.as_deref(), Some("node-agent"));
    assert_eq!(resolver.resolve_remote(ip("10.0.0.1"), now).kind, EndpointKind::Node, "not the host-network pod");
    assert_eq!(
        resolver.resolve_remote(ip("10.96.0.10"), now).service.clone().map(|service| service.name).as_deref(),
        Some("web")
    );

    // Namespaces no manifest declares exist all the same, as in a cluster.
    let namespaces: Vec<&str> = snapshot.namespaces().map(|namespace| namespace.name.as_str()).collect();
    assert_eq!(namespaces, ["kube-system", "shop"]);
    assert_eq!(snapshot.network_policies().count(), 1);

    let status = inventory.status();
    assert_eq!(status.manifest_errors.len(), 1, "{status:?}");
    assert!(
        status.manifest_errors[0].starts_with(&format!("{}:18:", broken.display())),
        "names file and line: {}",
        status.manifest_errors[0]
    );
    assert!(status.synced && !status.stale);
}

#[tokio::test]
async fn changed_added_and_removed_files_are_reloaded() {
    let dir = ManifestDir::new("standalone-reload");
    let web_file = dir.write("web.yaml", &web("web"));
    let (inventory, reload) = Inventory::standalone(vec![dir.path().to_owned()], config());
    let task = tokio::spawn(reload);
    let resolver = inventory.resolver();
    let remote = |address: &str| resolver.resolve_remote(ip(address), SystemTime::now());

    dir.write("web.yaml", &web("storefront"));
    eventually("relabel reloaded", || remote("198.18.0.5").labels.get("app").map(String::as_str) == Some("storefront"))
        .await;

    dir.write("cluster.json", LIST_JSON);
    eventually("added file loaded", || remote("10.96.0.10").kind == EndpointKind::Service).await;

    let before_removal = SystemTime::now();
    fs::remove_file(&web_file).expect("remove");
    eventually("removed pod gone", || remote("198.18.0.5").kind == EndpointKind::World).await;
    assert_eq!(resolver.resolve_remote(ip("198.18.0.5"), before_removal).pod.as_deref(), Some("web-1"), "history kept");
    assert!(inventory.snapshot().generation() > 1);
    task.abort();
}

#[test]
fn missing_paths_are_reported_not_fatal() {
    let (inventory, _reload) = Inventory::standalone(vec![Path::new("/nonexistent/manifests").to_owned()], config());
    assert!(inventory.snapshot().synced());
    assert!(inventory.status().manifest_errors[0].contains("no such file or folder"));
}

const INTENT: &str = "apiVersion: ai.governance/v1alpha1
kind: FlowIntent
metadata:
  name: agents
  namespace: ai
spec:
  subject:
    tiers: [agent]
  maxNewConnectionsPerMinute: 120
";

#[tokio::test]
async fn flow_intents_come_with_each_load_and_reload() {
    let dir = ManifestDir::new("standalone-intents");
    let file = dir.write("ai.yaml", &format!("{}---\n{INTENT}", web("web")));
    let (inventory, reload) = Inventory::standalone(vec![dir.path().to_owned()], config());
    let loaded = inventory.intents();
    assert_eq!(loaded.intents.len(), 1, "the intent is loaded with the pods");
    assert_eq!(loaded.intents[0].metadata.name.as_deref(), Some("agents"));
    assert_eq!(loaded.origins[0].to_string(), format!("{}:23", file.display()), "file and line of its document");
    let mut generations = inventory.subscribe();
    let task = tokio::spawn(reload);

    dir.write("ai.yaml", &web("web"));
    tokio::time::timeout(Duration::from_secs(10), generations.changed())
        .await
        .expect("a reload within 10 s")
        .expect("inventory alive");
    assert!(inventory.intents().intents.is_empty(), "the removed intent is gone with the same reload");
    assert_eq!(inventory.snapshot().pod_count(), 1);
    task.abort();
}

/// `web-1` of the Deployment `web` at revision `hash`, running `image`.
fn web_at(hash: &str, image: &str) -> String {
    web("web")
        .replace("pod-template-hash: 7d9", &format!("pod-template-hash: {hash}"))
        .replace("name: web-7d9", &format!("name: web-{hash}"))
        .replace(
            "    image: i\n",
            &format!("    image: {image}\n  - name: proxy\n    image: registry.example/proxy:2\n"),
        )
}

#[tokio::test]
async fn a_pod_relabelled_to_a_new_template_hash_is_a_rollout_of_its_workload() {
    let dir = ManifestDir::new("standalone-rollout");
    dir.write("web.yaml", &web_at("7d9", "registry.example/web:1"));
    let (inventory, reload) = Inventory::standalone(vec![dir.path().to_owned()], config());
    let task = tokio::spawn(reload);
    let snapshot = inventory.snapshot();
    let first = snapshot.workload_revisions("shop/Deployment/web").expect("revisions");
    assert_eq!(first.current(), Some("7d9"));
    assert_eq!(first.images(), ["registry.example/web:1", "registry.example/proxy:2"]);
    assert!(first.latest_rollout().is_none(), "the first load is no rollout");

    let before = SystemTime::now();
    dir.write("web.yaml", &web_at("5c8", "registry.example/web:2"));
    eventually("the rollout", || inventory.snapshot().rollouts_seen() == 1).await;
    let snapshot = inventory.snapshot();
    let revisions = snapshot.workload_revisions("shop/Deployment/web").expect("revisions");
    assert_eq!(revisions.current(), Some("5c8"));
    let rollout = revisions.latest_rollout().expect("a rollout");
    assert_eq!(
        (rollout.from.as_str(), rollout.to.as_str(), rollout.images.as_slice()),
        ("7d9", "5c8", ["registry.example/web:2".to_owned(), "registry.example/proxy:2".to_owned()].as_slice())
    );
    assert_eq!(
        (rollout.namespace.as_str(), rollout.workload.kind.as_str(), rollout.workload.name.as_str()),
        ("shop", "Deployment", "web")
    );
    assert!(rollout.at >= before, "{:?}", rollout.at);
    // Another change of the pod (a label) is no rollout.
    dir.write("web.yaml", &web_at("5c8", "registry.example/web:2").replace("app: web", "app: storefront"));
    eventually("relabel reloaded", || {
        inventory.resolver().resolve_remote(ip("198.18.0.5"), SystemTime::now()).labels.get("app").map(String::as_str)
            == Some("storefront")
    })
    .await;
    assert_eq!(inventory.snapshot().rollouts_seen(), 1);
    task.abort();
}
