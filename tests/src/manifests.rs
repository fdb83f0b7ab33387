//! Kubernetes manifests that describe lab pods, for standalone-mode tests and
//! the demo: the pods keep their real UIDs, IPs and container ids, so the
//! observer's inventory resolves lab traffic as it would a cluster's.
//!
//! In: lab pods and what they should look like (namespace, name, labels,
//! owner). Out: JSON objects and a `List` file the observer's `--manifests` reads.

use std::path::Path;

use serde_json::{Value, json};

use crate::Pod;

/// A lab pod as the cluster should see it.
#[derive(Debug, Clone)]
pub struct PodSpec<'a> {
    /// The lab pod.
    pub pod: &'a Pod,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its labels.
    pub labels: Vec<(&'a str, &'a str)>,
    /// Its controller: `(kind, name)`, e.g. `("ReplicaSet", "web-7d9f")`.
    pub owner: Option<(&'a str, &'a str)>,
    /// Named container ports: `(name, port)`.
    pub ports: Vec<(&'a str, u16)>,
}

fn labels(pairs: &[(&str, &str)]) -> Value {
    Value::Object(pairs.iter().map(|(key, value)| ((*key).to_owned(), Value::from(*value))).collect())
}

/// A Pod object with the lab pod's uid, IPs and container id.
pub fn pod(spec: &PodSpec<'_>) -> Value {
    let mut ips = vec![json!({"ip": spec.pod.ipv4().to_string()})];
    if let Some(v6) = spec.pod.ipv6() {
        ips.push(json!({"ip": v6.to_string()}));
    }
    let owners: Vec<Value> = spec
        .owner
        .iter()
        .map(|(kind, name)| {
            let api_version = if *kind == "Job" { "batch/v1" } else { "apps/v1" };
            json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true})
        })
        .collect();
    let ports: Vec<Value> =
        spec.ports.iter().map(|(name, port)| json!({"name": name, "containerPort": port, "protocol": "TCP"})).collect();
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": spec.name,
            "namespace": spec.namespace,
            "uid": spec.pod.uid(),
            "labels": labels(&spec.labels),
            "ownerReferences": owners,
        },
        "spec": {"nodeName": "lab-node", "containers": [{"name": "main", "image": "lab", "ports": ports}]},
        "status": {
            "phase": "Running",
            "podIP": spec.pod.ipv4().to_string(),
            "podIPs": ips,
            "containerStatuses": [{
                "name": "main", "image": "lab", "imageID": "", "ready": true, "restartCount": 0,
                "containerID": format!("containerd://{}", spec.pod.container_id()),
            }],
        },
    })
}

/// A Namespace object.
pub fn namespace(name: &str, label_pairs: &[(&str, &str)]) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels(label_pairs)}})
}

/// A workload controller object (ReplicaSet, Deployment, StatefulSet, Job, …)
/// with an optional controller of its own.
pub fn workload(kind: &str, namespace: &str, name: &str, owner: Option<(&str, &str)>) -> Value {
    let api_version = if matches!(kind, "Job" | "CronJob") { "batch/v1" } else { "apps/v1" };
    let owners: Vec<Value> = owner
        .iter()
        .map(|(kind, name)| json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("uid-{name}"), "controller": true}))
        .collect();
    json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}"), "ownerReferences": owners},
    })
}

/// Writes objects as one `List` JSON file.
pub fn write_list(path: &Path, items: Vec<Value>) -> std::io::Result<()> {
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    std::fs::write(path, serde_json::to_vec_pretty(&list).map_err(std::io::Error::other)?)
}
