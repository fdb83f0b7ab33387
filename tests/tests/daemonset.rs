//! The shipped DaemonSet, run the way a kubelet runs it: `kubectl kustomize
//! deploy/` rendered, its pod template's init container and observer
//! container run under podman (runc) with exactly what they declare
//! (capabilities, read-only root, no privilege escalation, seccomp profile,
//! host paths, the ConfigMap, args, env), in a lab pod's network namespace.
//! Two things stand in for a cluster: the lab's standalone manifests are
//! mounted in (there is no API server), and the node's writable folders
//! (kubelet's seccomp folder, the log folder) are folders of the test.
//! Root only; one thread; needs the image (`cargo xtask image`, which
//! `cargo xtask test` builds first).

use std::{
    collections::{BTreeMap, HashSet},
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use observer_tests::{
    Endpoint, Lab, NETNS_DIR, Pod, TcpClientOpts, TcpServerOpts, http_get_in,
    manifests::{self, PodSpec},
    podman::{self, PodContainer, PodSetup, Seccomp},
    root_or_skip,
};
use serde_json::Value;

/// The observer's metrics port, as the DaemonSet declares it.
const METRICS_PORT: u16 = 9811;
/// Our programs' names, as `bpftool prog` shows them.
const PROGRAMS: [&str; 4] = ["flow_ingress", "flow_egress", "tcp_state", "tcp_state_btf"];

fn workspace() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).to_owned()
}

/// `kubectl kustomize deploy/`, as objects.
fn rendered() -> Vec<Value> {
    let output = Command::new("kubectl").arg("kustomize").arg(workspace().join("deploy")).output().expect("kubectl");
    assert!(output.status.success(), "kubectl kustomize deploy/: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| serde::Deserialize::deserialize(document).expect("a YAML document"))
        .filter(|value: &Value| !value.is_null())
        .collect()
}

fn daemonset_template(objects: &[Value]) -> Value {
    let found: Vec<&Value> = objects.iter().filter(|object| object["kind"] == "DaemonSet").collect();
    assert_eq!(found.len(), 1, "one DaemonSet in deploy/");
    found[0]["spec"]["template"].clone()
}

/// The image to run: `$OBSERVER_IMAGE`, else the one the DaemonSet names
/// (what `cargo xtask image` builds). `None` (skip) outside CI when it is
/// not built.
fn image(template: &Value, test: &str) -> Option<String> {
    let declared = template["spec"]["containers"][0]["image"].as_str().expect("the observer's image").to_owned();
    let image = std::env::var("OBSERVER_IMAGE").ok().filter(|image| !image.is_empty()).unwrap_or(declared);
    if podman::image_exists(&image) {
        return Some(image);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: image {image} is not built: run `cargo xtask image` (CI=true never skips)"
    );
    eprintln!("{test}: skipping: image {image} is not built (run `cargo xtask image`)");
    None
}

/// The node a test runs the pod on: the lab, the stand-ins for the node's
/// writable folders, and the lab's manifests.
struct Node {
    lab: Lab,
    work: tempfile::TempDir,
}

impl Node {
    /// Two pods that talk and a third whose network namespace a pod
    /// template without `hostNetwork` would get; the shipped one runs in the
    /// lab node's, with IPv6 so /metrics is checked on both families.
    fn new() -> Self {
        let lab = Lab::builder().pods(3).ipv6(true).internet(false).build().expect("lab");
        let work = tempfile::tempdir().expect("work folder");
        let specs = [(lab.pod(0), "client-0", "client"), (lab.pod(1), "server-0", "server")];
        let mut objects = vec![manifests::namespace("lab", &[])];
        for (pod, name, app) in specs {
            objects.push(manifests::pod(&PodSpec {
                pod,
                namespace: "lab",
                name,
                labels: vec![("app", app)],
                owner: Some(("StatefulSet", app)),
                ports: vec![],
            }));
        }
        let manifests = work.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifests folder");
        manifests::write_list(&manifests.join("lab.json"), objects).expect("manifests");
        Self { lab, work }
    }

    fn observer_pod(&self) -> &Pod {
        self.lab.pod(2)
    }

    fn setup(&self, image: &str, seccomp: Seccomp) -> PodSetup {
        let work = self.work.path();
        let kubelet_root = work.join("kubelet");
        let host_paths = BTreeMap::from([
            ("/var/lib/kubelet/seccomp/flow-observer".to_owned(), kubelet_root.join("seccomp/flow-observer")),
            ("/var/log/flow-observer".to_owned(), work.join("logs")),
        ]);
        PodSetup {
            image: image.to_owned(),
            netns: self.observer_pod().netns_path(),
            host_netns: self.node_netns(),
            fields: BTreeMap::from([
                ("spec.nodeName".to_owned(), "lab-node".to_owned()),
                ("metadata.name".to_owned(), "flow-observer-lab".to_owned()),
                ("metadata.namespace".to_owned(), "flow-observer".to_owned()),
            ]),
            host_paths,
            kubelet_root,
            work: work.to_owned(),
            seccomp,
            extra_args: vec!["--manifests=/lab/manifests".to_owned()],
            extra_mounts: vec![(work.join("manifests"), "/lab/manifests".to_owned())],
        }
    }

    /// Where kubelet probes come from: the node's namespace.
    fn node_netns(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(self.lab.node_netns())
    }
}

/// Runs the template's init containers to completion, as the kubelet does
/// before it starts the others.
fn run_init_containers(objects: &[Value], template: &Value, setup: &PodSetup) {
    // The lab's stand-in for the API server is the observer's alone.
    let setup = PodSetup { extra_args: Vec::new(), extra_mounts: Vec::new(), ..setup.clone() };
    let setup = &setup;
    for container in template["spec"]["initContainers"].as_array().into_iter().flatten() {
        let name = format!("flow-observer-init-{}", std::process::id());
        let args = podman::run_args(objects, template, container, &name, setup).expect("init container args");
        let (status, output) = podman::run_to_end(&args, Duration::from_secs(60)).expect("init container runs");
        assert!(status.success(), "init container {} failed ({status}): {output}", container["name"]);
    }
}

fn start_observer(objects: &[Value], template: &Value, setup: &PodSetup) -> PodContainer {
    let observer = &template["spec"]["containers"][0];
    let name = format!("flow-observer-e2e-{}", std::process::id());
    let args = podman::run_args(objects, template, observer, &name, setup).expect("observer container args");
    PodContainer::start(&args, &setup.work).expect("podman run")
}

/// Program ids with our names.
fn our_programs() -> HashSet<u64> {
    let output = Command::new("bpftool").args(["prog", "show", "--json"]).output().expect("bpftool");
    let programs: Vec<Value> = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    programs
        .iter()
        .filter(|program| PROGRAMS.iter().any(|name| program["name"].as_str() == Some(name)))
        .filter_map(|program| program["id"].as_u64())
        .collect()
}

/// Program ids attached at the cgroup v2 root.
fn attached_at(root: &Path) -> HashSet<u64> {
    let output = Command::new("bpftool").args(["cgroup", "show"]).arg(root).arg("--json").output().expect("bpftool");
    let attached: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
    attached.iter().filter_map(|entry| entry["id"].as_u64()).collect()
}

fn records(stdout: &str) -> Vec<Value> {
    stdout.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

/// `end` records seen from one cgroup towards `dst`.
fn ends(records: &[Value], cgroup_id: u64, dst: SocketAddr) -> Vec<&Value> {
    records
        .iter()
        .filter(|record| record["event"] == "end" && record["cgroup"]["id"].as_u64() == Some(cgroup_id))
        .filter(|record| {
            record["dst"]["ip"].as_str() == Some(&dst.ip().to_string())
                && record["dst"]["port"].as_u64() == Some(u64::from(dst.port()))
        })
        .collect()
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[test]
fn the_shipped_daemonset_runs_under_podman_captures_lab_traffic_and_stops_clean() {
    let test = "the_shipped_daemonset_runs_under_podman_captures_lab_traffic_and_stops_clean";
    if !root_or_skip(test) {
        return;
    }
    let objects = rendered();
    let template = daemonset_template(&objects);
    let Some(image) = image(&template, test) else { return };
    let node = Node::new();
    let setup = node.setup(&image, Seccomp::Declared);
    let (client, server) = (node.lab.pod(0), node.lab.pod(1));
    let target = server.addr_v4(8080);
    let _listener = server.tcp_server(target, &TcpServerOpts { reply: 5000, ..Default::default() }).expect("server");

    run_init_containers(&objects, &template, &setup);
    let profile = setup.kubelet_root.join("seccomp/flow-observer/observer.json");
    assert!(profile.is_file(), "the init container installed {}", profile.display());

    let before = our_programs();
    let mut observer = start_observer(&objects, &template, &setup);
    // Ready as the kubelet's probe sees it: GET /readyz from the node.
    // hostNetwork: the observer serves in the node's namespace, on [::].
    let metrics_v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, METRICS_PORT));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = observer.try_wait() {
            panic!("the observer exited ({status}) before it was ready:\n{}", tail(&observer.stderr()));
        }
        if http_get_in(&node.node_netns(), metrics_v4, "/readyz").is_ok_and(|(status, _)| status == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "not ready within 60 s:\n{}", tail(&observer.stderr()));
        std::thread::sleep(Duration::from_millis(200));
    }
    let loaded: HashSet<u64> = our_programs().difference(&before).copied().collect();
    assert_eq!(loaded.len(), 3, "three programs while running: {loaded:?}");
    let cgroup_root = node.lab.cgroup_root().to_owned();
    assert_eq!(attached_at(&cgroup_root).intersection(&loaded).count(), 2, "ingress and egress at the cgroup root");

    const K: u64 = 5;
    let opts = TcpClientOpts { count: K, send: 1000, expect: 5000, ..Default::default() };
    let report = client.tcp_client(target, &opts).expect("client");
    assert_eq!(report.complete, K, "{report:?}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let seen = records(&observer.stdout());
        if ends(&seen, client.cgroup_id(), target).len() as u64 >= K
            && ends(&seen, server.cgroup_id(), target).len() as u64 >= K
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }

    // /metrics on both families (the DaemonSet listens on [::]).
    let metrics_v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, METRICS_PORT));
    let (status, metrics) = http_get_in(&node.node_netns(), metrics_v4, "/metrics").expect("GET /metrics over IPv4");
    assert_eq!(status, 200, "{metrics}");
    let (status_v6, _) = http_get_in(&node.node_netns(), metrics_v6, "/metrics").expect("GET /metrics over IPv6");
    assert_eq!(status_v6, 200);
    let revision = podman::image_label(&image, "org.opencontainers.image.revision").expect("image label");
    assert!(!revision.is_empty() && revision != "unknown", "the image names its revision: {revision:?}");
    assert!(
        metrics.contains(&format!("revision=\"{revision}\"")),
        "build_info carries the image's revision {revision}:\n{}",
        metrics.lines().filter(|line| line.contains("build_info")).collect::<Vec<_>>().join("\n")
    );
    let edge = "flow_observer_edge_flows_total{src_namespace=\"lab\",src_workload=\"client\"";
    assert!(metrics.lines().any(|line| line.starts_with(edge)), "{edge} in /metrics:\n{metrics}");

    // Deleted as a kubelet deletes a pod: SIGTERM, then the grace period.
    let grace = Duration::from_secs(template["spec"]["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
    let status = observer.stop("TERM", grace).expect("stops within the grace period");
    let stderr = observer.stderr();
    assert!(status.success(), "exit 0 on SIGTERM, got {status}:\n{}", tail(&stderr));
    assert!(stderr.contains("kernel programs detached"), "{}", tail(&stderr));
    assert!(!stderr.contains("\"level\":\"ERROR\""), "no errors logged:\n{stderr}");

    let seen = records(&observer.stdout());
    let client_side = ends(&seen, client.cgroup_id(), target);
    let server_side = ends(&seen, server.cgroup_id(), target);
    assert_eq!(client_side.len() as u64, K, "client-side flows: {client_side:#?}");
    assert_eq!(server_side.len() as u64, K, "server-side flows: {server_side:#?}");
    let ports: HashSet<u64> = client_side.iter().filter_map(|record| record["src"]["port"].as_u64()).collect();
    let expected: HashSet<u64> = report.local_ports.iter().map(|port| u64::from(*port)).collect();
    assert_eq!(ports, expected, "one record per connection the client made");
    for record in client_side.iter().chain(&server_side) {
        assert_eq!(record["state"], "closed", "{record}");
        assert_eq!((record["to_dst"]["bytes"].as_u64(), record["to_src"]["bytes"].as_u64()), (Some(1000), Some(5000)));
        assert_eq!(
            (record["src"]["pod"].as_str(), record["dst"]["pod"].as_str()),
            (Some("client-0"), Some("server-0"))
        );
        assert_eq!(record["node"], "lab-node", "NODE_NAME from the downward API: {record}");
    }
    // The findings and DNS logs went to the log volume.
    for log in ["findings.jsonl", "dns.jsonl"] {
        assert!(node.work.path().join("logs").join(log).is_file(), "{log} in the log volume");
    }

    // Nothing stays attached: links die with the process (the BTF
    // tracepoint's program is freed after an RCU grace period).
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = loop {
        let left: HashSet<u64> = our_programs().intersection(&loaded).copied().collect();
        if left.is_empty() || Instant::now() >= deadline {
            break left;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(left.is_empty(), "all detached and unloaded within 10 s of the exit, but {left:?} remain");
    assert!(attached_at(&cgroup_root).is_disjoint(&loaded), "nothing of ours at the cgroup root");
}

#[test]
fn under_the_runtimes_default_seccomp_profile_it_stops_naming_seccomp() {
    let test = "under_the_runtimes_default_seccomp_profile_it_stops_naming_seccomp";
    if !root_or_skip(test) {
        return;
    }
    let objects = rendered();
    let template = daemonset_template(&objects);
    let Some(image) = image(&template, test) else { return };
    let node = Node::new();
    let setup = node.setup(&image, Seccomp::RuntimeDefault);
    let before = our_programs();
    let mut observer = start_observer(&objects, &template, &setup);
    let status = observer.wait(Duration::from_secs(60)).expect("the observer exits by itself");
    let stderr = observer.stderr();
    assert!(!status.success(), "podman's default profile refuses bpf(2) without CAP_SYS_ADMIN:\n{stderr}");
    assert!(stderr.contains("a seccomp filter refuses bpf(2)"), "{}", tail(&stderr));
    assert!(
        stderr.contains("deploy/seccomp/flow-observer.json"),
        "the message points to the profile: {}",
        tail(&stderr)
    );
    assert!(!stderr.contains("grant CAP_BPF"), "{}", tail(&stderr));
    assert_eq!(our_programs().difference(&before).count(), 0, "nothing loaded");
}
