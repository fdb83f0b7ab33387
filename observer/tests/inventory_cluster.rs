//! The cluster source against a fake API server: list, watch, bookmarks,
//! `410 Gone`, dropped watches, outages, and what the resolver says meanwhile.

mod inventory_support;

use std::{
    net::IpAddr,
    time::{Duration, SystemTime},
};

use inventory_support::{
    ENDPOINTSLICES, FakeApi, JOBS, NAMESPACES, NODES, PODS, POLICIES, REPLICASETS, SERVICES, controller, deny_all,
    endpoint_slice, eventually, namespace, node, pod, service, service_port,
};
use observer::inventory::{Endpoint, EndpointKind, Inventory, InventoryConfig, Resolver, Resource};

fn ip(text: &str) -> IpAddr {
    text.parse().expect("ip")
}

fn pod_name(endpoint: &Endpoint) -> Option<String> {
    endpoint.pod.clone()
}

fn remote(resolver: &Resolver, address: &str) -> Endpoint {
    resolver.resolve_remote(ip(address), SystemTime::now())
}

/// A server holding one namespace, one pod, a service, a node and a policy.
async fn seeded() -> FakeApi {
    let api = FakeApi::start().await;
    api.apply(NAMESPACES, namespace("shop"));
    api.apply(PODS, pod("web-1").ns("shop").ip("198.18.0.5").label("app", "web").json());
    api.apply(SERVICES, service("shop", "web", "10.96.0.10"));
    api.apply(NODES, node("node-1", "10.0.0.1"));
    api.apply(POLICIES, deny_all("shop", "deny-all"));
    api
}

fn config() -> InventoryConfig {
    InventoryConfig { stale_after: Duration::from_millis(500), ..InventoryConfig::default() }
}

/// Starts the cluster inventory on `api` and waits for its first sync.
async fn synced(api: &FakeApi) -> (Inventory, tokio::task::JoinHandle<()>) {
    let (inventory, task) = Inventory::cluster(api.client(), config());
    let task = tokio::spawn(task);
    tokio::time::timeout(Duration::from_secs(10), inventory.ready()).await.expect("synced within 10 s");
    (inventory, task)
}

#[tokio::test]
async fn syncs_then_follows_adds_relabels_and_deletes_within_a_second() {
    let api = seeded().await;
    let (inventory, task) = synced(&api).await;
    let resolver = inventory.resolver();

    let web = remote(&resolver, "198.18.0.5");
    assert_eq!(
        (web.kind, pod_name(&web).as_deref(), web.namespace.as_deref()),
        (EndpointKind::Pod, Some("web-1"), Some("shop"))
    );
    assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(remote(&resolver, "10.96.0.10").service.clone().map(|service| service.name).as_deref(), Some("web"));
    assert_eq!(remote(&resolver, "10.0.0.1").kind, EndpointKind::Node);
    assert_eq!(remote(&resolver, "203.0.113.7").kind, EndpointKind::World);

    // The policy engine's view from the same snapshot.
    let snapshot = inventory.snapshot();
    assert_eq!(snapshot.namespace("shop").and_then(|ns| ns.labels.get("team")).map(String::as_str), Some("t"));
    let policies: Vec<_> = snapshot.network_policies().collect();
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0].metadata.annotations, None, "bulky annotations are trimmed");
    assert_eq!(snapshot.pods().count(), 1);

    let status = inventory.status();
    assert!(status.synced && !status.stale, "{status:?}");
    assert_eq!(status.resources[&Resource::Pods].objects, 1);

    // Add.
    api.apply(PODS, pod("api-1").ns("shop").ip("198.18.0.6").json());
    eventually(Duration::from_secs(1), "new pod resolves", || {
        pod_name(&remote(&resolver, "198.18.0.6")).as_deref() == Some("api-1")
    })
    .await;
    // Relabel.
    api.apply(PODS, pod("web-1").ns("shop").ip("198.18.0.5").label("app", "storefront").json());
    eventually(Duration::from_secs(1), "relabel shows", || {
        remote(&resolver, "198.18.0.5").labels.get("app").map(String::as_str) == Some("storefront")
    })
    .await;
    // Delete: gone now, but a flow from before the deletion still names it.
    let before_delete = SystemTime::now();
    api.delete(PODS, pod("web-1").ns("shop").ip("198.18.0.5").json());
    eventually(Duration::from_secs(1), "deleted pod no longer resolves", || {
        remote(&resolver, "198.18.0.5").kind == EndpointKind::World
    })
    .await;
    assert_eq!(pod_name(&resolver.resolve_remote(ip("198.18.0.5"), before_delete)).as_deref(), Some("web-1"));

    // The reflector asked for bookmarks and listed each resource once.
    assert!(api.watches(PODS).iter().all(|(_, bookmarks)| *bookmarks));
    assert_eq!(api.lists(PODS), 1);
    task.abort();
}

#[tokio::test]
async fn a_reused_ip_is_given_to_the_pod_that_held_it_at_the_time_of_the_flow() {
    let api = seeded().await;
    let (inventory, task) = synced(&api).await;
    let resolver = inventory.resolver();
    let while_old = SystemTime::now();
    api.delete(PODS, pod("web-1").ns("shop").ip("198.18.0.5").json());
    eventually(Duration::from_secs(1), "old pod gone", || remote(&resolver, "198.18.0.5").kind == EndpointKind::World)
        .await;
    api.apply(PODS, pod("web-2").ns("shop").uid("uid-web-2").ip("198.18.0.5").json());
    eventually(Duration::from_secs(1), "new pod holds the IP", || {
        pod_name(&remote(&resolver, "198.18.0.5")).as_deref() == Some("web-2")
    })
    .await;
    assert_eq!(pod_name(&resolver.resolve_remote(ip("198.18.0.5"), while_old)).as_deref(), Some("web-1"));
    task.abort();
}

#[tokio::test]
async fn a_dropped_watch_resumes_from_the_last_bookmark_without_relisting() {
    let api = seeded().await;
    let (inventory, task) = synced(&api).await;
    let resolver = inventory.resolver();
    eventually(Duration::from_secs(2), "pods watch open", || !api.watches(PODS).is_empty()).await;
    // Other resources move the resourceVersion on; a bookmark tells the pods watch.
    api.apply(NAMESPACES, namespace("other"));
    let bookmark = api.bookmark(PODS);
    // Let the bookmark arrive before the connection goes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    api.drop_watches(PODS);
    eventually(Duration::from_secs(2), "pods rewatched", || api.watches(PODS).len() == 2).await;
    assert_eq!(api.watches(PODS)[1].0, bookmark.to_string(), "resumed from the bookmark");
    api.apply(PODS, pod("api-1").ns("shop").ip("198.18.0.6").json());
    eventually(Duration::from_secs(1), "pod added after the rewatch resolves", || {
        remote(&resolver, "198.18.0.6").kind == EndpointKind::Pod
    })
    .await;
    assert_eq!(api.lists(PODS), 1, "no relist after a dropped connection");
    task.abort();
}

#[tokio::test]
async fn gone_relists_and_catches_up_on_what_the_watch_missed() {
    let api = seeded().await;
    let (inventory, task) = synced(&api).await;
    let resolver = inventory.resolver();
    eventually(Duration::from_secs(2), "pods watch open", || !api.watches(PODS).is_empty()).await;
    // Changes whose events were compacted away: only a relist shows them.
    api.delete_unseen(PODS, pod("web-1").ns("shop").ip("198.18.0.5").json());
    api.apply_unseen(PODS, pod("late-1").ns("shop").ip("198.18.0.9").json());
    api.expire(PODS);
    eventually(Duration::from_secs(5), "relisted after 410", || {
        remote(&resolver, "198.18.0.9").kind == EndpointKind::Pod
            && remote(&resolver, "198.18.0.5").kind == EndpointKind::World
    })
    .await;
    assert_eq!(api.lists(PODS), 2);
    assert_eq!(inventory.status().resources[&Resource::Pods].errors, 1, "the 410 is counted");
    assert!(inventory.snapshot().synced(), "a relist does not make the inventory unready");
    task.abort();
}

#[tokio::test]
async fn workloads_come_from_replicaset_and_job_owners() {
    let api = seeded().await;
    api.apply(REPLICASETS, controller("shop", "api-5f9c", Some(("Deployment", "api"))));
    api.apply(JOBS, controller("shop", "report-28930", Some(("CronJob", "report"))));
    api.apply(PODS, pod("api-5f9c-x").ns("shop").ip("198.18.0.6").owner("ReplicaSet", "api-5f9c").json());
    api.apply(PODS, pod("report-28930-y").ns("shop").ip("198.18.0.7").owner("Job", "report-28930").json());
    api.apply(PODS, pod("db-0").ns("shop").ip("198.18.0.8").owner("StatefulSet", "db").json());
    let (inventory, task) = synced(&api).await;
    let resolver = inventory.resolver();
    let workload = |address| remote(&resolver, address).workload.clone().map(|workload| (workload.kind, workload.name));
    let expect = |kind: &str, name: &str| Some((kind.to_owned(), name.to_owned()));
    // ReplicaSets and Jobs may sync after the pods.
    eventually(Duration::from_secs(2), "deployment named", || workload("198.18.0.6") == expect("Deployment", "api"))
        .await;
    eventually(Duration::from_secs(2), "cronjob named", || workload("198.18.0.7") == expect("CronJob", "report")).await;
    assert_eq!(workload("198.18.0.8"), expect("StatefulSet", "db"));
    assert_eq!(workload("198.18.0.5"), expect("Pod", "web-1"));
    task.abort();
}

#[tokio::test]
async fn an_unreachable_api_server_is_retried_with_backoff_and_reported_stale() {
    // A port nobody listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let address = listener.local_addr().expect("address");
    drop(listener);
    let kube_config = kube::Config::new(format!("http://{address}").parse().expect("url"));
    let client = observer::inventory::client_from_config(kube_config).expect("client");
    let (inventory, task) = Inventory::cluster(client, config());
    let task = tokio::spawn(task);
    let resolver = inventory.resolver();
    eventually(Duration::from_secs(5), "retried and reported stale", || {
        let status = inventory.status();
        status.stale && status.resources[&Resource::Pods].errors >= 2
    })
    .await;
    let status = inventory.status();
    assert!(!status.synced);
    let pods = &status.resources[&Resource::Pods];
    assert!(pods.last_error.as_deref().is_some_and(|error| error.contains("onnect")), "{pods:?}");
    // Backoff, not a busy loop: a handful of attempts in this time, not thousands.
    assert!(pods.errors < 10, "{pods:?}");
    assert_eq!(resolver.resolve_remote(ip("198.18.0.5"), SystemTime::now()).kind, EndpointKind::Unknown);
    // What /health serves.
    let json = serde_json::to_value(inventory.status()).expect("status serializes");
    assert_eq!(json["stale"], true);
    assert!(json["resources"]["pods"]["errors"].as_u64().is_some_and(|errors| errors >= 2), "{json}");
    task.abort();
}

#[tokio::test]
async fn an_outage_turns_stale_and_recovery_syncs() {
    let api = seeded().await;
    api.set_down(true);
    let (inventory, task) = Inventory::cluster(api.client(), config());
    let task = tokio::spawn(task);
    eventually(Duration::from_secs(5), "stale while down", || inventory.status().stale).await;
    assert!(!inventory.snapshot().synced());
    api.set_down(false);
    // The default backoff may wait a few seconds before the next try.
    tokio::time::timeout(Duration::from_secs(15), inventory.ready()).await.expect("synced after recovery");
    eventually(Duration::from_secs(2), "no longer stale", || !inventory.status().stale).await;
    assert_eq!(inventory.resolver().resolve_remote(ip("198.18.0.5"), SystemTime::now()).pod.as_deref(), Some("web-1"));
    task.abort();
}

/// The ready backends the fake API server's EndpointSlices list for
/// `cluster_ip`:`port` (TCP), as text.
fn backends(inventory: &Inventory, cluster_ip: &str, port: u16) -> Option<Vec<String>> {
    let snapshot = inventory.snapshot();
    snapshot
        .service_backends(ip(cluster_ip), port, 6)
        .map(|service| service.backends.iter().map(ToString::to_string).collect())
}

#[tokio::test]
async fn endpointslices_are_listed_watched_and_give_each_service_port_its_ready_backends() {
    let api = seeded().await;
    api.apply(SERVICES, service_port("shop", "api", "10.96.0.20", "http", 80));
    api.apply(
        ENDPOINTSLICES,
        endpoint_slice("shop", "api", "api-a", ("http", 8080), &[("198.18.0.7", true), ("198.18.0.8", false)]),
    );
    let (inventory, task) = synced(&api).await;
    eventually(Duration::from_secs(2), "the listed slice is indexed", || {
        backends(&inventory, "10.96.0.20", 80) == Some(vec!["198.18.0.7:8080".to_owned()])
    })
    .await;
    // A second slice of the same Service, then the not-ready endpoint turning ready.
    api.apply(ENDPOINTSLICES, endpoint_slice("shop", "api", "api-b", ("http", 8080), &[("198.18.0.9", true)]));
    api.apply(
        ENDPOINTSLICES,
        endpoint_slice("shop", "api", "api-a", ("http", 8080), &[("198.18.0.7", true), ("198.18.0.8", true)]),
    );
    eventually(Duration::from_secs(2), "watched slices are indexed", || {
        backends(&inventory, "10.96.0.20", 80)
            == Some(vec!["198.18.0.7:8080".to_owned(), "198.18.0.8:8080".to_owned(), "198.18.0.9:8080".to_owned()])
    })
    .await;
    assert_eq!(backends(&inventory, "10.96.0.20", 81), None, "no such Service port");
    api.delete(ENDPOINTSLICES, endpoint_slice("shop", "api", "api-a", ("http", 8080), &[]));
    eventually(Duration::from_secs(2), "a deleted slice's backends go", || {
        backends(&inventory, "10.96.0.20", 80) == Some(vec!["198.18.0.9:8080".to_owned()])
    })
    .await;
    let status = inventory.status();
    assert_eq!(status.resources[&Resource::EndpointSlices].objects, 1);
    assert!(!status.stale, "{status:?}");
    assert_eq!(api.lists(ENDPOINTSLICES), 1, "listed once, then watched");
    assert!(!api.watches(ENDPOINTSLICES).is_empty());
    task.abort();
}

/// A watch that fails after the first sync keeps the store as it was (the
/// deny-all policy still judges) and reports the source stale after the
/// threshold with its errors counted. (Recovery: `an_outage_turns_stale_and_recovery_syncs`;
/// a silent rewatch clears once no error has come for kube's longest backoff.)
#[tokio::test]
async fn a_failing_watch_keeps_the_last_good_state_and_says_stale() {
    let api = seeded().await;
    let (inventory, task) = synced(&api).await;
    api.set_down(true);
    eventually(Duration::from_secs(10), "stale while down", || inventory.status().stale).await;
    let status = inventory.status();
    assert!(status.source_errors.get("watch").is_some_and(|errors| *errors > 0), "{status:?}");
    let snapshot = inventory.snapshot();
    assert!(snapshot.synced());
    let policies: Vec<_> = snapshot.network_policies().filter_map(|policy| policy.metadata.name.clone()).collect();
    assert_eq!(policies, ["deny-all"], "the policy set in force is the last good one");
    assert_eq!(snapshot.pods().count(), 1);
    task.abort();
}

/// The current revision of `key` with its images, and its latest rollout as
/// `(from, to, images)`.
type RevisionState = (Option<String>, Vec<String>, Option<(String, String, Vec<String>)>);

fn revision_state(inventory: &Inventory, key: &str) -> Option<RevisionState> {
    let snapshot = inventory.snapshot();
    let revisions = snapshot.workload_revisions(key)?;
    let rollout =
        revisions.latest_rollout().map(|rollout| (rollout.from.clone(), rollout.to.clone(), rollout.images.clone()));
    Some((revisions.current().map(str::to_owned), revisions.images().to_vec(), rollout))
}

#[tokio::test]
async fn a_new_revisions_pods_are_a_rollout_with_from_to_images_and_time() {
    let api = seeded().await;
    api.apply(REPLICASETS, controller("shop", "model-7d9f", Some(("Deployment", "model"))));
    let model = |name: &str, ip: &str, hash: &str, image: &str| {
        let mut pod = pod(name)
            .ns("shop")
            .ip(ip)
            .owner("ReplicaSet", &format!("model-{hash}"))
            .label("pod-template-hash", hash)
            .json();
        pod["spec"]["containers"] = serde_json::json!([{"name": "main", "image": image},
            {"name": "proxy", "image": "registry.example/proxy:2"}]);
        pod
    };
    api.apply(PODS, model("model-7d9f-a", "198.18.0.20", "7d9f", "registry.example/model:1"));
    api.apply(
        PODS,
        pod("db-0")
            .ns("shop")
            .ip("198.18.0.30")
            .owner("StatefulSet", "db")
            .label("controller-revision-hash", "db-6b4")
            .json(),
    );
    let (inventory, task) = synced(&api).await;
    let v1 = vec!["registry.example/model:1".to_owned(), "registry.example/proxy:2".to_owned()];
    eventually(Duration::from_secs(2), "the first revision", || {
        revision_state(&inventory, "shop/Deployment/model") == Some((Some("7d9f".to_owned()), v1.clone(), None))
    })
    .await;
    assert_eq!(
        revision_state(&inventory, "shop/StatefulSet/db"),
        Some((Some("db-6b4".to_owned()), vec!["registry.example/app:1".to_owned()], None)),
        "a StatefulSet's controller-revision-hash"
    );
    assert_eq!(revision_state(&inventory, "shop/Pod/web-1"), None, "a bare pod has no revision");
    assert_eq!(inventory.snapshot().rollouts_seen(), 0, "the first list is no rollout");

    // The Deployment rolls out: a new ReplicaSet's pod comes, then the old pod goes.
    let before = SystemTime::now();
    api.apply(REPLICASETS, controller("shop", "model-5c8d", Some(("Deployment", "model"))));
    api.apply(PODS, model("model-5c8d-b", "198.18.0.21", "5c8d", "registry.example/model:2"));
    let v2 = vec!["registry.example/model:2".to_owned(), "registry.example/proxy:2".to_owned()];
    let rolled = (Some("5c8d".to_owned()), v2.clone(), Some(("7d9f".to_owned(), "5c8d".to_owned(), v2.clone())));
    eventually(Duration::from_secs(2), "the rollout", || {
        revision_state(&inventory, "shop/Deployment/model").as_ref() == Some(&rolled)
    })
    .await;
    api.delete(PODS, model("model-7d9f-a", "198.18.0.20", "7d9f", "registry.example/model:1"));
    eventually(Duration::from_secs(2), "the old pod gone", || {
        remote(&inventory.resolver(), "198.18.0.20").kind == EndpointKind::World
    })
    .await;
    let snapshot = inventory.snapshot();
    assert_eq!(snapshot.rollouts_seen(), 1, "one rollout, whatever else changed");
    let rollout =
        snapshot.workload_revisions("shop/Deployment/model").and_then(|r| r.latest_rollout()).expect("rollout");
    assert!(rollout.at >= before && rollout.at <= SystemTime::now(), "seen when it came: {:?}", rollout.at);
    assert_eq!(revision_state(&inventory, "shop/Deployment/model"), Some(rolled));
    task.abort();
}
