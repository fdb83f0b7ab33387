//! The offline commands with `--kubeconfig`: the inventory, NetworkPolicies
//! (with their annotations), ClusterNetworkPolicies and FlowIntents come
//! from the API server (the in-process fake, real list and watch), listed
//! once, and the verdicts are those of the same objects given as manifests.

mod inventory_support;

use std::path::{Path, PathBuf};

use inventory_support::{
    CLUSTER_POLICIES, ENDPOINTSLICES, FakeApi, JOBS, NAMESPACES, NODES, PODS, POLICIES, SERVICES, endpoint_slice,
    namespace, node, pod, service_port,
};
use observer::governance::{
    replay::Recorded,
    report::{ReportConfig, ReportFormat, report},
    simulate::{Format, SimulateConfig, simulate},
};
use serde_json::json;

/// A flow-log line of a delivered TCP flow from `src` to `dst`, recorded at the source.
fn record(src: (&str, &str, &str), dst_ip: &str, dst: Option<(&str, &str, &str)>, port: u16) -> String {
    let end = |(name, uid, ip): (&str, &str, &str), port: u16| {
        json!({"ip": ip, "port": port, "kind": "pod", "namespace": "shop", "pod": name, "uid": uid,
            "node": "node-1", "labels": {"app": name.trim_end_matches("-1")}})
    };
    let dst = match dst {
        Some(pod) => end(pod, port),
        None => json!({"ip": dst_ip, "port": port, "kind": "world"}),
    };
    json!({"time": "2026-01-01T00:00:09.000Z", "event": "end", "node": "node-1", "protocol": "tcp",
        "src": end(src, 40_000), "dst": dst, "local": "src", "state": "closed",
        "to_dst": {"packets": 4, "bytes": 300}, "to_src": {"packets": 3, "bytes": 900},
        "first_seen": "2026-01-01T00:00:01.000Z", "last_seen": "2026-01-01T00:00:02.000Z"})
    .to_string()
}

const WEB: (&str, &str, &str) = ("web-1", "uid-web", "198.18.0.10");
const API: (&str, &str, &str) = ("api-1", "uid-api", "198.18.0.11");

fn kubeconfig(dir: &Path, url: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {url}\nusers:\n- name: me\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: me\ncurrent-context: fake\n"
        ),
    )
    .expect("kubeconfig");
    path
}

async fn cluster() -> FakeApi {
    let api = FakeApi::start().await;
    api.apply(NAMESPACES, namespace("shop"));
    api.apply(NODES, node("node-1", "10.0.0.1"));
    api.apply(PODS, pod("web-1").ns("shop").uid("uid-web").ip("198.18.0.10").label("app", "web").json());
    api.apply(PODS, pod("api-1").ns("shop").uid("uid-api").ip("198.18.0.11").label("app", "api").json());
    api.apply(PODS, pod("web-2").ns("shop").uid("uid-web2").ip("198.18.0.12").label("app", "web").json());
    api.apply(SERVICES, service_port("shop", "api", "10.96.0.10", "http", 80));
    api.apply(ENDPOINTSLICES, endpoint_slice("shop", "api", "api-x1", ("http", 8080), &[("198.18.0.11", true)]));
    api.apply(
        POLICIES,
        json!({"metadata": {"name": "api-ingress", "namespace": "shop", "uid": "uid-np-api",
                "annotations": {"ai.governance/owner": "team-api"}},
            "spec": {"podSelector": {"matchLabels": {"app": "api"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "web"}}}], "ports": [{"port": 8080}]},
                            {"from": [{"podSelector": {"matchLabels": {"app": "db"}}}]}]}}),
    );
    api.apply(
        CLUSTER_POLICIES,
        json!({"metadata": {"name": "no-world"},
            "spec": {"tier": "Admin", "priority": 10, "subject": {"namespaces": {}},
                "egress": [{"action": "Deny", "to": [{"networks": ["203.0.113.0/24"]}]}]}}),
    );
    api
}

/// In `dir`: a kubeconfig for the cluster at `url`, a log of two flows of
/// web-1 (to api-1, and to the world), and the simulation of removing the
/// `no-world` guardrail from that cluster.
fn without_no_world(dir: &Path, url: &str) -> (PathBuf, PathBuf, SimulateConfig) {
    let config = kubeconfig(dir, url);
    let flows = dir.join("flows.jsonl");
    std::fs::write(&flows, [record(WEB, API.2, Some(API), 8080), record(WEB, "203.0.113.5", None, 443)].join("\n"))
        .expect("flows");
    let args = SimulateConfig {
        recorded: Recorded {
            manifests: Vec::new(),
            kubeconfig: Some(config.clone()),
            flows: vec![flows.clone()],
            config: None,
        },
        proposed: Vec::new(),
        remove: vec!["no-world".to_owned()],
        output: Format::Json,
        fail_on_break: false,
    };
    (config, flows, args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulate_and_report_read_the_cluster_once_with_its_cluster_policies() {
    let api = cluster().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (config, flows, args) = without_no_world(dir.path(), &api.url());
    let simulation = tokio::task::spawn_blocking(move || simulate(&args)).await.expect("join").expect("simulate");
    assert_eq!((simulation.flows, simulation.edges, simulation.unchanged), (2, 2, 1));
    assert!(simulation.would_break.is_empty(), "{:?}", simulation.would_break);
    assert_eq!(simulation.newly_allowed.len(), 1);
    let change = &simulation.newly_allowed[0];
    assert_eq!(change.edge.dst.ip.as_deref(), Some("203.0.113.5"));
    assert_eq!(change.edge.src.pod.as_deref(), Some("web-1"));
    assert_eq!((change.before.verdict, change.after.verdict), ("enforcement-gap", "allowed"));
    assert_eq!(change.before.policies, vec!["cnp/no-world".to_owned()]);
    assert!(simulation.gone_pods.is_empty(), "the pods came from the cluster: {:?}", simulation.gone_pods);

    let args = ReportConfig {
        recorded: Recorded { manifests: Vec::new(), kubeconfig: Some(config), flows: vec![flows], config: None },
        findings: Vec::new(),
        format: ReportFormat::Json,
        output: None,
    };
    let made = tokio::task::spawn_blocking(move || report(&args)).await.expect("join").expect("report");
    assert_eq!(made.policies.len(), 1);
    let policy = &made.policies[0];
    assert_eq!((policy.namespace.as_str(), policy.name.as_str()), ("shop", "api-ingress"));
    assert_eq!((policy.owner.as_deref(), policy.owner_source.as_str()), (Some("team-api"), "annotation"));
    assert_eq!(
        (policy.uid.as_deref(), policy.resource_version.as_deref()),
        (Some("uid-np-api"), Some("9")),
        "the fake server numbers its objects"
    );
    assert_eq!(policy.selected.iter().map(|pod| pod.pod.as_str()).collect::<Vec<_>>(), ["api-1"]);
    assert_eq!(policy.rules.iter().map(|rule| (rule.flows, rule.unused)).collect::<Vec<_>>(), [(1, false), (0, true)]);
    assert_eq!((made.coverage.flows, made.coverage.edges), (2, 2));
    // The guardrail and its rule's usage: the one flow to 203.0.113.0/24.
    assert_eq!(made.cluster_policies.len(), 1);
    let guardrail = &made.cluster_policies[0];
    assert_eq!((guardrail.name.as_str(), guardrail.tier.as_str(), guardrail.priority), ("no-world", "Admin", Some(10)));
    let rules: Vec<_> = guardrail
        .rules
        .iter()
        .map(|rule| (rule.direction, rule.index, rule.action.as_str(), rule.flows, rule.unused))
        .collect();
    assert_eq!(rules, [("egress", 0, "Deny", 1, false)]);
    assert_eq!(guardrail.rules[0].usage.first_seen.as_deref(), Some("2026-01-01T00:00:01.000Z"));
    let md = observer::governance::report::markdown(&made);
    assert!(md.contains("### cnp/no-world\n\n- Tier: Admin, priority: 10;"), "{md}");
    // Listed once: one list per resource, and no more once the command is done.
    let lists = api.lists(POLICIES);
    assert_eq!(lists, 4, "two syncs of the inventory's watch and two lists for annotations");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_optional_list_that_does_not_come_is_left_out_after_its_grace_and_the_replay_goes_on() {
    let api = cluster().await;
    // Jobs only name the workload of a Job's pods (none here); their list does not come while
    // the test runs, as for an account that may not list them behind a slow proxy.
    api.set_list_delay(JOBS, std::time::Duration::from_secs(600));
    let dir = tempfile::tempdir().expect("tempdir");
    let (_, _, args) = without_no_world(dir.path(), &api.url());
    let started = std::time::Instant::now();
    let simulation = tokio::task::spawn_blocking(move || simulate(&args)).await.expect("join").expect("simulate");
    let waited = started.elapsed();
    assert_eq!(
        (simulation.flows, simulation.edges, simulation.unchanged, simulation.newly_allowed.len()),
        (2, 2, 1, 1)
    );
    // The optional list's grace (10 s past the required lists) was waited, but not the 60 s a
    // required list gets, nor the list itself.
    assert!(waited >= std::time::Duration::from_secs(10) && waited < std::time::Duration::from_secs(60), "{waited:?}");
    assert_eq!(api.lists(JOBS), 0, "its list never answered while the replay ran");
}

/// A flow of web-2 to the Service `shop/api` at 10.96.0.10:80, sent to
/// api-1:8080: as web-2's node records it (the backend named) and as
/// api-1's node does (the pod's own address).
fn service_flow() -> [String; 2] {
    let web2 = json!({"ip": "198.18.0.12", "port": 41_000, "kind": "pod", "namespace": "shop", "pod": "web-2",
        "uid": "uid-web2", "labels": {"app": "web"}});
    let api = |ip: &str, port: u16| {
        json!({"ip": ip, "port": port, "kind": "pod", "namespace": "shop", "pod": "api-1",
        "uid": "uid-api", "labels": {"app": "api"}})
    };
    let mut asked = api("10.96.0.10", 80);
    asked["service"] = json!({"namespace": "shop", "name": "api"});
    asked["backend"] = json!({"ip": "198.18.0.11", "port": 8080, "via": "conntrack"});
    let line = |node: &str, local: &str, dst: serde_json::Value| {
        json!({"event": "end", "node": node, "protocol": "tcp", "src": web2, "dst": dst, "local": local,
            "state": "closed", "to_dst": {"packets": 4, "bytes": 300}, "to_src": {"packets": 3, "bytes": 900},
            "first_seen": "2026-01-01T00:00:03.000Z", "last_seen": "2026-01-01T00:00:04.000Z"})
        .to_string()
    };
    [line("node-1", "src", asked), line("node-2", "dst", api("198.18.0.11", 8080))]
}

/// web-1 to the Service's address, its backend unknown to the daemon.
fn unresolved_service_flow() -> String {
    let mut text: serde_json::Value = serde_json::from_str(&record(WEB, "10.96.0.10", None, 80)).expect("json");
    text["dst"]["kind"] = json!("service");
    text["dst"]["namespace"] = json!("shop");
    text["dst"]["service"] = json!({"namespace": "shop", "name": "api"});
    text.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_flows_are_judged_at_their_backend_and_shown_with_the_address_asked() {
    let api = cluster().await;
    // EndpointSlices are not among the lists that make the daemon ready: a replay that judged
    // with the first ready snapshot would find no backends while their list is slow to come.
    api.set_list_delay(ENDPOINTSLICES, std::time::Duration::from_millis(400));
    let dir = tempfile::tempdir().expect("tempdir");
    let config = kubeconfig(dir.path(), &api.url());
    let flows = dir.path().join("flows.jsonl");
    let [via_service, at_backend] = service_flow();
    std::fs::write(
        &flows,
        [record(WEB, API.2, Some(API), 8080), via_service, at_backend, unresolved_service_flow()].join("\n"),
    )
    .expect("flows");
    let proposed = dir.path().join("proposed.yaml");
    std::fs::write(
        &proposed,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: api-ingress, namespace: shop}\nspec:\n  podSelector: {matchLabels: {app: api}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{podSelector: {matchLabels: {app: web}}}]\n    ports: [{port: 9090}]\n",
    )
    .expect("proposed");
    let args = SimulateConfig {
        recorded: Recorded { manifests: Vec::new(), kubeconfig: Some(config), flows: vec![flows], config: None },
        proposed: vec![proposed],
        remove: Vec::new(),
        output: Format::Json,
        fail_on_break: false,
    };
    let simulation = tokio::task::spawn_blocking(move || simulate(&args)).await.expect("join").expect("simulate");
    // The Service flow seen from both ends is one flow of one edge, at the backend's port.
    assert_eq!((simulation.flows, simulation.edges, simulation.unchanged), (3, 3, 0));
    let broken: Vec<String> = simulation.would_break.iter().map(|change| change.edge.describe()).collect();
    assert_eq!(
        broken,
        [
            "shop/web-1 -> shop/api-1 8080/tcp",
            "shop/web-1 -> service 10.96.0.10 80/tcp (via Service shop/api)",
            "shop/web-2 -> shop/api-1 8080/tcp (via Service shop/api at 10.96.0.10:80)",
        ]
    );
    for change in &simulation.would_break {
        assert_eq!((change.before.verdict, change.after.verdict), ("allowed", "enforcement-gap"));
        assert_eq!(change.after.policies, vec!["shop/api-ingress".to_owned()]);
        assert_eq!(change.edge.flows, 1);
    }
    let json = serde_json::to_value(&simulation.would_break[2].edge).expect("json");
    assert_eq!(json["asked"], json!({"ip": "10.96.0.10", "port": 80}));
    assert_eq!(json["service"], json!({"namespace": "shop", "name": "api"}));
    assert_eq!(json["port"], json!(8080));
}
