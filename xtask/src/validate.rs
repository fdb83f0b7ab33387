//! Offline checks of `deploy/`, run by `cargo xtask test`:
//!
//! 1. the generated files (dashboards, ConfigMaps, PrometheusRule, the
//!    FlowIntent CRD) match their sources;
//! 2. `promtool test rules` on the alert rules' unit tests, and `promtool
//!    check rules` on the PrometheusRule's embedded copy; every alert has
//!    a unit test where it fires and one where it stays quiet, and a
//!    `runbook_url` to its section of `docs/runbooks.md`;
//! 3. `kubectl kustomize deploy/` renders without the Prometheus Operator's
//!    kinds, and with the `monitoring` component (an overlay written under
//!    `target/`, as users add it) renders with them; every built-in kind
//!    validates against the Kubernetes 1.33 OpenAPI schemas with
//!    `kubernetes-validate --strict` (unknown fields are errors);
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

use crate::{
    command::{output, run as run_command, step, workspace_root},
    setup::venv,
};

/// Kubernetes version whose schemas the manifests are validated against.
pub const KUBERNETES_VERSION: &str = "1.33.0";
/// Runs every check.
pub fn run() -> anyhow::Result<()> {
    let root = workspace_root();
    let deploy = root.join("deploy");
    crate::deploy::check()?;
    step("promtool: alert rule unit tests");
    run_command(Command::new("promtool").arg("test").arg("rules").arg(deploy.join("prometheus/rules.test.yaml")))?;
    check_alerts(&deploy, &root.join("docs/runbooks.md"))?;
    let work = root.join("target/tools/deploy-check");
    fs::create_dir_all(&work)?;
    let base = documents(&render(&deploy)?)?;
    let operator_kinds: Vec<String> =
        base.iter().filter(|object| api_group(object) == "monitoring.coreos.com").map(name).collect();
    if !operator_kinds.is_empty() {
        bail!(
            "deploy/ (without the monitoring component) holds {operator_kinds:?}: it must apply without the Prometheus Operator"
        );
    }
    let overlay = monitoring_overlay(&work, &deploy)?;
    let rendered = render(&overlay)?;
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
    step(&format!("deploy/: {} objects, {} with the monitoring component, valid", base.len(), objects.len()));
    Ok(())
}

/// Every alert of `prometheus/rules.yaml` has a runbook section and a
/// promtool test case where it fires and one where it is quiet.
fn check_alerts(deploy: &Path, runbooks: &Path) -> anyhow::Result<()> {
    let read = |path: &Path| fs::read_to_string(path).with_context(|| format!("reading {}", path.display()));
    let rules: Value = serde_yaml::from_str(&read(&deploy.join("prometheus/rules.yaml"))?)?;
    let tests: Value = serde_yaml::from_str(&read(&deploy.join("prometheus/rules.test.yaml"))?)?;
    let problems = alert_problems(&rules, &tests, &read(runbooks)?);
    if !problems.is_empty() {
        bail!("alert rules:\n  - {}", problems.join("\n  - "));
    }
    step("every alert has a runbook section and fires and stays quiet in a unit test");
    Ok(())
}

/// The problems [`check_alerts`] reports, from the rules, their tests and the
/// runbook page.
fn alert_problems(rules: &Value, tests: &Value, runbooks: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let cases: Vec<&Value> = tests["tests"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|test| test["alert_rule_test"].as_array().into_iter().flatten())
        .collect();
    let alerts = rules["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|group| group["rules"].as_array().into_iter().flatten())
        .filter_map(|rule| rule["alert"].as_str().map(|alert| (alert, rule)));
    for (alert, rule) in alerts {
        let anchor = alert.to_lowercase();
        if rule["annotations"]["runbook_url"] != format!("docs/runbooks.md#{anchor}").as_str() {
            problems.push(format!("{alert}: runbook_url is not docs/runbooks.md#{anchor}"));
        }
        if !runbooks.lines().any(|line| line.trim() == format!("## {alert}")) {
            problems.push(format!("{alert}: docs/runbooks.md has no section `## {alert}`"));
        }
        let mine: Vec<&&Value> = cases.iter().filter(|case| case["alertname"] == alert).collect();
        let empty = |case: &&&Value| case["exp_alerts"].as_array().is_none_or(Vec::is_empty);
        if !mine.iter().any(empty) {
            problems.push(format!("{alert}: no promtool case where it stays quiet"));
        }
        if mine.iter().all(empty) {
            problems.push(format!("{alert}: no promtool case where it fires"));
        }
    }
    problems
}

fn api_group(object: &Value) -> &str {
    object["apiVersion"].as_str().and_then(|version| version.split_once('/')).map_or("", |(group, _)| group)
}

/// A kustomization outside `deploy/` (kustomize refuses one inside the
/// base it includes) that adds the `monitoring` component, as
/// docs/install.md tells users to.
fn monitoring_overlay(work: &Path, deploy: &Path) -> anyhow::Result<PathBuf> {
    let overlay = work.join("with-monitoring");
    fs::create_dir_all(&overlay)?;
    // Relative paths: kustomize resolves them from the overlay.
    let up = "../".repeat(overlay.strip_prefix(workspace_root()).map_or(0, |relative| relative.components().count()));
    let relative = deploy.strip_prefix(workspace_root()).context("deploy/ outside the workspace")?;
    let text = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {up}{base}\ncomponents:\n  - {up}{base}/monitoring\n",
        base = relative.display()
    );
    fs::write(overlay.join("kustomization.yaml"), text)?;
    Ok(overlay)
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
    let cluster_scoped =
        ["Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass"];
    for object in objects {
        let namespace = object["metadata"]["namespace"].as_str();
        if !cluster_scoped.contains(&kind(object)) && namespace != Some("flow-observer") {
            problems.push(format!("{} is in namespace {namespace:?}, not flow-observer", name(object)));
        }
    }
    check_rbac(one(objects, "ClusterRole")?, &mut problems);
    let daemonset = one(objects, "DaemonSet")?;
    check_daemonset(daemonset, &mut problems);
    check_install_path(objects, daemonset, &mut problems)?;
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
        "clusternetworkpolicies",
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
    // Read-only: what capture reads. Writable: the observer's own folders.
    let read_only_paths = ["/sys/fs/cgroup", "/sys/kernel/tracing"];
    let writable_paths = ["/var/log/flow-observer", SECCOMP_DIR];
    let mut read_only_volumes = BTreeSet::new();
    for volume in spec["volumes"].as_array().into_iter().flatten() {
        if let Some(path) = volume["hostPath"]["path"].as_str() {
            if read_only_paths.contains(&path) {
                read_only_volumes.insert(volume["name"].as_str().unwrap_or_default().to_owned());
            } else if !writable_paths.contains(&path) {
                problems.push(format!("DaemonSet mounts host path {path}"));
            }
        }
    }
    if spec["nodeSelector"]["kubernetes.io/os"] != "linux" {
        problems.push("DaemonSet does not select kubernetes.io/os: linux nodes".to_owned());
    }
    let init_containers = spec["initContainers"].as_array().cloned().unwrap_or_default();
    for container in &init_containers {
        if !container["securityContext"]["capabilities"]["add"].is_null() {
            problems.push(format!("init container {} adds capabilities", container["name"]));
        }
        check_container_context(container, &read_only_volumes, problems);
    }
    let containers = spec["containers"].as_array().cloned().unwrap_or_default();
    for container in &containers {
        check_container_context(container, &read_only_volumes, problems);
        let who = format!("container {}", container["name"]);
        let allowed_caps: BTreeSet<String> = ["BPF", "PERFMON", "NET_ADMIN"].map(str::to_owned).into();
        let added = strings(&container["securityContext"]["capabilities"]["add"]);
        if !added.is_subset(&allowed_caps) {
            problems.push(format!("{who} adds {:?} beyond {allowed_caps:?}", added.difference(&allowed_caps)));
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
    }
    for container in init_containers.iter().chain(&containers) {
        let who = format!("container {}", container["name"]);
        for side in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                if container["resources"][side][resource].is_null() {
                    problems.push(format!("{who} has no {resource} {side}"));
                }
            }
        }
    }
}

/// Unprivileged, no escalation, read-only root, ALL dropped, host paths
/// capture reads mounted read-only.
fn check_container_context(container: &Value, read_only_volumes: &BTreeSet<String>, problems: &mut Vec<String>) {
    let context = &container["securityContext"];
    let who = format!("container {}", container["name"]);
    {
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
        for mount in container["volumeMounts"].as_array().into_iter().flatten() {
            if read_only_volumes.contains(mount["name"].as_str().unwrap_or_default()) && mount["readOnly"] != true {
                problems.push(format!("{who} mounts host volume {} writable", mount["name"]));
            }
        }
    }
}

/// The kubelet's folder of `Localhost` seccomp profiles, and ours in it.
const SECCOMP_ROOT: &str = "/var/lib/kubelet/seccomp";
const SECCOMP_DIR: &str = "/var/lib/kubelet/seccomp/flow-observer";

/// The pieces of the install path that must agree: the PriorityClass, the
/// ConfigMap behind `--config`, the seccomp profile the init container
/// installs and the observer's container names, the NetworkPolicy.
fn check_install_path(objects: &[Value], daemonset: &Value, problems: &mut Vec<String>) -> anyhow::Result<()> {
    let pod = &daemonset["spec"]["template"];
    let spec = &pod["spec"];
    let priority = one(objects, "PriorityClass")?;
    if spec["priorityClassName"] != priority["metadata"]["name"] {
        problems.push("the DaemonSet does not use the shipped PriorityClass".to_owned());
    }
    let volumes: Vec<&Value> = spec["volumes"].as_array().into_iter().flatten().collect();
    let volume = |name: &str| volumes.iter().find(|volume| volume["name"] == name).copied();
    let observer = &spec["containers"][0];
    let args = strings(&observer["args"]);
    // --config names a file in the mounted ConfigMap, which the bundle has.
    let config_path = args.iter().find_map(|arg| arg.strip_prefix("--config=")).unwrap_or_default();
    let config_mount = observer["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|mount| mount["mountPath"].as_str().is_some_and(|at| config_path.starts_with(&format!("{at}/"))));
    let config_map = config_mount
        .and_then(|mount| volume(mount["name"].as_str().unwrap_or_default()))
        .and_then(|volume| volume["configMap"]["name"].as_str());
    let config_key = config_path.rsplit('/').next().unwrap_or_default();
    let found = objects.iter().any(|object| {
        kind(object) == "ConfigMap"
            && Some(object["metadata"]["name"].as_str().unwrap_or_default()) == config_map
            && object["data"][config_key].is_string()
    });
    if !found {
        problems.push(format!("--config={config_path} is no key of a ConfigMap mounted in the observer's container"));
    }
    // The profile the container runs is the one the init container writes.
    let profile = &observer["securityContext"]["seccompProfile"];
    let wanted = format!("{SECCOMP_ROOT}/{}", profile["localhostProfile"].as_str().unwrap_or_default());
    let installer = &spec["initContainers"][0];
    let install_dir =
        strings(&installer["args"]).iter().find_map(|arg| arg.strip_prefix("--install=").map(str::to_owned));
    let installed = installer["volumeMounts"].as_array().into_iter().flatten().find_map(|mount| {
        let dir = install_dir.as_deref()?;
        if mount["mountPath"] != dir {
            return None;
        }
        let host = volume(mount["name"].as_str()?)?["hostPath"]["path"].as_str()?;
        Some(format!("{host}/observer.json"))
    });
    if profile["type"] != "Localhost" || installed.as_deref() != Some(wanted.as_str()) {
        problems.push(format!("the observer runs seccomp profile {wanted}, the init container installs {installed:?}"));
    }
    let policy = one(objects, "NetworkPolicy")?;
    if !selects(&policy["spec"]["podSelector"]["matchLabels"], &pod["metadata"]["labels"]) {
        problems.push("the NetworkPolicy does not select the DaemonSet's pods".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shipped() -> (Value, Value, String) {
        let deploy = workspace_root().join("deploy/prometheus");
        let read = |name: &str| fs::read_to_string(deploy.join(name)).expect(name);
        (
            serde_yaml::from_str(&read("rules.yaml")).expect("rules"),
            serde_yaml::from_str(&read("rules.test.yaml")).expect("tests"),
            fs::read_to_string(workspace_root().join("docs/runbooks.md")).expect("runbooks"),
        )
    }

    #[test]
    fn every_shipped_alert_has_a_runbook_and_both_unit_tests() {
        let (rules, tests, runbooks) = shipped();
        assert_eq!(alert_problems(&rules, &tests, &runbooks), Vec::<String>::new());
    }

    #[test]
    fn an_alert_without_runbook_or_tests_is_reported() {
        let (mut rules, tests, runbooks) = shipped();
        rules["groups"][0]["rules"][0]["annotations"]["runbook_url"] = Value::Null;
        rules["groups"][0]["rules"]
            .as_array_mut()
            .expect("rules")
            .push(serde_json::json!({"alert": "FlowObserverNew", "expr": "vector(1)"}));
        let problems = alert_problems(&rules, &tests, &runbooks);
        assert_eq!(
            problems,
            [
                "FlowObserverEnforcementGap: runbook_url is not docs/runbooks.md#flowobserverenforcementgap",
                "FlowObserverNew: runbook_url is not docs/runbooks.md#flowobservernew",
                "FlowObserverNew: docs/runbooks.md has no section `## FlowObserverNew`",
                "FlowObserverNew: no promtool case where it stays quiet",
                "FlowObserverNew: no promtool case where it fires",
            ]
        );
    }
}
