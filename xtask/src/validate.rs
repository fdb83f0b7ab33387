//! Offline checks of `deploy/`, run by `cargo xtask test`:
//!
//! 1. the generated files (dashboards, ConfigMaps, PrometheusRule) match
//!    their sources;
//! 2. `promtool test rules` on the alert rules' unit tests, and `promtool
//!    check rules` on the PrometheusRule's embedded copy;
//! 3. `kubectl kustomize deploy/` renders, and every built-in kind validates
//!    against the Kubernetes 1.33 OpenAPI schemas with `kubernetes-validate
//!    --strict` (unknown fields are errors);
//! 4. the custom kinds that tool has no schema for (ServiceMonitor,
//!    PrometheusRule) and the decisions the manifests encode (least
//!    privilege, read-only RBAC, probes on the metrics port, selectors that
//!    match) are checked here, one by one.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};
use serde_json::Value;

use crate::command::{output, run as run_command, step, workspace_root};

/// Kubernetes version whose schemas the manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.33.0";
/// The kubernetes-validate release installed by `cargo xtask setup`.
pub const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// The venv holding kubernetes-validate.
pub fn venv() -> PathBuf {
    workspace_root().join("target/tools/venv")
}

/// Runs every check.
pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let deploy = root.join("deploy");
    crate::deploy::check()?;
    step("promtool: alert rule unit tests");
    run_command(Command::new("promtool").arg("test").arg("rules").arg(deploy.join("prometheus/rules.test.yaml")))?;
    let rendered = render(&deploy)?;
    let work = root.join("target/tools/deploy-check");
    fs::create_dir_all(&work)?;
    let bundle = work.join("bundle.yaml");
    fs::write(&bundle, &rendered)?;
    step(&format!("kubernetes-validate --strict against Kubernetes {KUBERNETES_VERSION}"));
    run_command(
        Command::new(venv().join("bin/kubernetes-validate"))
            .args(["--strict", "--quiet", "-k", KUBERNETES_VERSION])
            .arg(&bundle),
    )?;
    let objects = documents(&rendered)?;
    check_objects(&objects, &work)?;
    step(&format!("deploy/: {} objects valid", objects.len()));
    Ok(())
}

/// `kubectl kustomize deploy/`.
fn render(deploy: &Path) -> anyhow::Result<String> {
    step("kubectl kustomize deploy/");
    output(Command::new("kubectl").arg("kustomize").arg(deploy))
        .with_context(|| format!("`kubectl kustomize {}` failed (run it to see why)", deploy.display()))
}

/// Every YAML document of a stream, as JSON values.
fn documents(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut objects = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value: Value = serde::Deserialize::deserialize(document).context("parsing the rendered bundle")?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> String {
    format!("{}/{}", kind(object), object["metadata"]["name"].as_str().unwrap_or("?"))
}

fn strings(value: &Value) -> BTreeSet<String> {
    value.as_array().into_iter().flatten().filter_map(|item| item.as_str().map(str::to_owned)).collect()
}

/// `selector` (a map of labels) is contained in `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    selector.as_object().is_some_and(|selector| {
        !selector.is_empty() && selector.iter().all(|(key, value)| labels.get(key) == Some(value))
    })
}

fn one<'a>(objects: &'a [Value], wanted: &str) -> anyhow::Result<&'a Value> {
    let found: Vec<&Value> = objects.iter().filter(|object| kind(object) == wanted).collect();
    match found.as_slice() {
        [object] => Ok(object),
        _ => bail!("expected one {wanted}, found {}", found.len()),
    }
}

/// The checks the schemas cannot make.
fn check_objects(objects: &[Value], work: &Path) -> anyhow::Result<()> {
    let mut problems = Vec::new();
    let cluster_scoped = ["Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"];
    for object in objects {
        let namespace = object["metadata"]["namespace"].as_str();
        if !cluster_scoped.contains(&kind(object)) && namespace != Some("flow-observer") {
            problems.push(format!("{} is in namespace {namespace:?}, not flow-observer", name(object)));
        }
    }
    check_rbac(one(objects, "ClusterRole")?, &mut problems);
    let daemonset = one(objects, "DaemonSet")?;
    check_daemonset(daemonset, &mut problems);
    let pod = &daemonset["spec"]["template"];
    let service = one(objects, "Service")?;
    if !selects(&service["spec"]["selector"], &pod["metadata"]["labels"]) {
        problems.push("the Service does not select the DaemonSet's pods".to_owned());
    }
    let container_ports = strings(&Value::Array(
        pod["spec"]["containers"][0]["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|port| port["name"].clone())
            .collect(),
    ));
    let service_ports: BTreeSet<String> = service["spec"]["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|port| {
            if !port["targetPort"].as_str().is_some_and(|target| container_ports.contains(target)) {
                return None;
            }
            port["name"].as_str().map(str::to_owned)
        })
        .collect();
    let monitor = one(objects, "ServiceMonitor")?;
    if !selects(&monitor["spec"]["selector"]["matchLabels"], &service["metadata"]["labels"]) {
        problems.push("the ServiceMonitor does not select the Service".to_owned());
    }
    for endpoint in monitor["spec"]["endpoints"].as_array().into_iter().flatten() {
        if !endpoint["port"].as_str().is_some_and(|port| service_ports.contains(port)) {
            problems
                .push(format!("ServiceMonitor endpoint port {} is no Service port to the container", endpoint["port"]));
        }
    }
    let rule = one(objects, "PrometheusRule")?;
    let rules_file = work.join("prometheusrule-spec.yaml");
    fs::write(&rules_file, serde_yaml::to_string(&rule["spec"])?)?;
    step("promtool check rules (PrometheusRule spec)");
    run_command(Command::new("promtool").arg("check").arg("rules").arg(&rules_file))?;
    let dashboards: Vec<&Value> = objects
        .iter()
        .filter(|object| kind(object) == "ConfigMap" && object["metadata"]["labels"]["grafana_dashboard"] == "1")
        .collect();
    if dashboards.len() != crate::deploy::dashboards().len() {
        problems.push(format!(
            "{} dashboard ConfigMaps, expected {}",
            dashboards.len(),
            crate::deploy::dashboards().len()
        ));
    }
    for configmap in dashboards {
        for (key, text) in configmap["data"].as_object().into_iter().flatten() {
            let parsed: Result<Value, _> = serde_json::from_str(text.as_str().unwrap_or_default());
            if !parsed.is_ok_and(|dashboard| dashboard["uid"].is_string() && dashboard["panels"].is_array()) {
                problems.push(format!("{} {key} is not a Grafana dashboard", name(configmap)));
            }
        }
    }
    if !problems.is_empty() {
        bail!("deploy/ problems:\n  - {}", problems.join("\n  - "));
    }
    Ok(())
}

/// Read-only, and only on what the observer reads.
fn check_rbac(role: &Value, problems: &mut Vec<String>) {
    let allowed_verbs: BTreeSet<String> = ["get", "list", "watch"].map(str::to_owned).into();
    let mut resources = BTreeSet::new();
    for rule in role["rules"].as_array().into_iter().flatten() {
        let verbs = strings(&rule["verbs"]);
        if !verbs.is_subset(&allowed_verbs) {
            problems.push(format!("ClusterRole grants {verbs:?}: only get, list, watch"));
        }
        resources.extend(strings(&rule["resources"]));
    }
    let expected: BTreeSet<String> = [
        "pods",
        "namespaces",
        "services",
        "nodes",
        "networkpolicies",
        "endpointslices",
        "replicasets",
        "jobs",
        "flowintents",
    ]
    .map(str::to_owned)
    .into();
    if resources != expected {
        problems.push(format!("ClusterRole covers {resources:?}, expected {expected:?}"));
    }
}

/// Least privilege: capabilities, not privileged; no host PID or IPC (the
/// host network only, for conntrack); read-only root and host paths; only
/// the host paths capture needs; probes and resources set.
fn check_daemonset(daemonset: &Value, problems: &mut Vec<String>) {
    let spec = &daemonset["spec"]["template"]["spec"];
    for field in ["hostPID", "hostIPC"] {
        if spec[field] == true {
            problems.push(format!("DaemonSet sets {field}"));
        }
    }
    // The node's network namespace, for its conntrack table (Service flows).
    if spec["hostNetwork"] != true {
        problems.push("DaemonSet does not set hostNetwork: the node's conntrack table is out of reach".to_owned());
    }
    if !spec["tolerations"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|toleration| toleration["operator"] == "Exists" && toleration.get("key").is_none())
    {
        problems.push("DaemonSet does not tolerate every taint".to_owned());
    }
    let allowed_paths = ["/sys/fs/cgroup", "/sys/kernel/tracing"];
    let mut host_volumes = BTreeSet::new();
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(path) = volume["hostPath"]["path"].as_str() {
            if !allowed_paths.contains(&path) {
                problems.push(format!("DaemonSet mounts host path {path}"));
            }
            host_volumes.insert(volume["name"].as_str().unwrap_or_default().to_owned());
        }
    }
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    for container in &containers {
        let context = &container["securityContext"];
        let who = format!("container {}", container["name"]);
        if context["privileged"] != false {
            problems.push(format!("{who} is not explicitly unprivileged"));
        }
        if context["allowPrivilegeEscalation"] != false {
            problems.push(format!("{who} allows privilege escalation"));
        }
        if context["readOnlyRootFilesystem"] != true {
            problems.push(format!("{who} has a writable root filesystem"));
        }
        if strings(&context["capabilities"]["drop"]) != BTreeSet::from(["ALL".to_owned()]) {
            problems.push(format!("{who} does not drop ALL capabilities"));
        }
        let allowed_caps: BTreeSet<String> = ["BPF", "PERFMON", "NET_ADMIN", "SYS_RESOURCE"].map(str::to_owned).into();
        let added = strings(&context["capabilities"]["add"]);
        if !added.is_subset(&allowed_caps) {
            problems.push(format!("{who} adds {:?} beyond {allowed_caps:?}", added.difference(&allowed_caps)));
        }
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            if host_volumes.contains(mount["name"].as_str().unwrap_or_default()) && mount["readOnly"] != true {
                problems.push(format!("{who} mounts host volume {} writable", mount["name"]));
            }
        }
        let ports = strings(&Value::Array(
            container["ports"].as_array().into_iter().flatten().map(|port| port["name"].clone()).collect(),
        ));
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            let get = &container[probe]["httpGet"];
            if get["path"] != path || !get["port"].as_str().is_some_and(|port| ports.contains(port)) {
                problems.push(format!("{who} {probe} is not GET {path} on a named container port"));
            }
        }
        for side in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                if container["resources"][side][resource].is_null() {
                    problems.push(format!("{who} has no {resource} {side}"));
                }
            }
        }
    }
}
