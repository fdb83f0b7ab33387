//! Reads Kubernetes manifests from files and folders.
//!
//! In: paths to YAML or JSON files, or folders of them (walked recursively,
//! `.yaml`, `.yml` and `.json`, in name order), each file holding one or more
//! documents or `List` kinds. Out: the objects the observer understands, each
//! with the file and line it came from, plus an error per document that did not
//! parse (file and line named) and a note per object of a kind it does not use.
//! One bad document never stops the rest from loading.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{core::v1 as core, networking::v1::NetworkPolicy};
use serde_json::{Value, value::RawValue};

use super::model::OwnerRef;

/// Where a document starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file.
    pub file: PathBuf,
    /// 1-based line of the document's first line.
    pub line: usize,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// A workload object that pods point at through ownerReferences
/// (ReplicaSet, Deployment, StatefulSet, DaemonSet, Job, CronJob).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Workload {
    /// `kind`.
    pub kind: String,
    /// `metadata.namespace`.
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.uid`, if the manifest sets one.
    pub uid: Option<String>,
    /// Its own controller ownerReference (a ReplicaSet's Deployment).
    pub owner: Option<OwnerRef>,
}

/// An object the observer uses.
#[derive(Clone, Debug)]
pub enum Object {
    /// A Pod.
    Pod(Box<core::Pod>),
    /// A Namespace.
    Namespace(Box<core::Namespace>),
    /// A NetworkPolicy.
    NetworkPolicy(Box<NetworkPolicy>),
    /// A Service.
    Service(Box<core::Service>),
    /// A Node.
    Node(Box<core::Node>),
    /// A workload controller.
    Workload(Workload),
    /// An AI-tier FlowIntent.
    FlowIntent(Box<crate::intent::FlowIntent>),
    /// A ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`).
    ClusterNetworkPolicy(Box<crate::policy::cnp::ClusterNetworkPolicy>),
}

/// Kinds read as [`Object::Workload`].
const WORKLOAD_KINDS: [&str; 6] = ["ReplicaSet", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"];

/// One loaded object and where it came from.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The object.
    pub object: Object,
    /// Its document.
    pub origin: Origin,
}

/// A document or file that could not be read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{origin}: {message}")]
pub struct ManifestError {
    /// Where.
    pub origin: Origin,
    /// What is wrong.
    pub message: String,
}

/// An object of a kind the observer does not use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// Where.
    pub origin: Origin,
    /// `apiVersion/kind` and name.
    pub what: String,
}

/// Everything read from a set of paths.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    /// Objects, in file and document order.
    pub objects: Vec<Loaded>,
    /// Documents that failed.
    pub errors: Vec<ManifestError>,
    /// Objects of kinds the observer ignores.
    pub skipped: Vec<Skipped>,
}

/// Reads every path (file or folder).
pub fn load(paths: &[PathBuf]) -> Manifests {
    let mut objects = Vec::new();
    let mut manifests = load_each(paths, &mut |loaded| objects.push(loaded));
    manifests.objects = objects;
    manifests
}

/// Reads every path, handing each object to `each` as soon as it is read, so
/// a large cluster's typed objects are never all held at once; returns the
/// errors and skipped objects (`objects` stays empty).
pub fn load_each(paths: &[PathBuf], each: &mut dyn FnMut(Loaded)) -> Manifests {
    let mut manifests = Manifests::default();
    for path in paths {
        for file in files_under(path, &mut manifests.errors) {
            match fs::read_to_string(&file) {
                Ok(text) => parse_file(&file, &text, &mut Out { each: &mut *each, manifests: &mut manifests }),
                Err(error) => manifests.errors.push(ManifestError {
                    origin: Origin { file: file.clone(), line: 0 },
                    message: format!("cannot read: {error}"),
                }),
            }
        }
    }
    manifests
}

/// Where a parse puts what it finds: objects to `each`, the rest to `manifests`.
struct Out<'a> {
    each: &'a mut dyn FnMut(Loaded),
    manifests: &'a mut Manifests,
}

/// The manifest files a path names, in a stable order.
pub fn files_under(path: &Path, errors: &mut Vec<ManifestError>) -> Vec<PathBuf> {
    let is_manifest = |path: &Path| {
        path.extension().and_then(|ext| ext.to_str()).is_some_and(|ext| matches!(ext, "yaml" | "yml" | "json"))
    };
    if !path.is_dir() {
        if !path.exists() {
            errors.push(ManifestError {
                origin: Origin { file: path.to_owned(), line: 0 },
                message: "no such file or folder".to_owned(),
            });
            return Vec::new();
        }
        return vec![path.to_owned()];
    }
    let mut entries = match fs::read_dir(path) {
        Ok(entries) => entries.filter_map(Result::ok).map(|entry| entry.path()).collect::<Vec<_>>(),
        Err(error) => {
            errors.push(ManifestError {
                origin: Origin { file: path.to_owned(), line: 0 },
                message: format!("cannot list folder: {error}"),
            });
            return Vec::new();
        }
    };
    entries.sort();
    entries
        .into_iter()
        .flat_map(|entry| {
            if entry.is_dir() {
                files_under(&entry, errors)
            } else if is_manifest(&entry) {
                vec![entry]
            } else {
                Vec::new()
            }
        })
        .collect()
}

/// Splits YAML text into documents with their 1-based first line.
fn documents(text: &str) -> Vec<(usize, String)> {
    let mut documents = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (index, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            documents.push((start, std::mem::take(&mut current)));
            start = index + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    documents.push((start, current));
    documents
}

fn parse_file(file: &Path, text: &str, out: &mut Out<'_>) {
    if file.extension().is_some_and(|ext| ext == "json") {
        parse_json(file, text, out);
        return;
    }
    for (line, document) in documents(text) {
        let origin = Origin { file: file.to_owned(), line };
        let value: Value = match serde_yaml::from_str::<serde_yaml::Value>(&document).map_err(|error| {
            let at = error.location().map_or(line, |location| line + location.line() - 1);
            (at, error)
        }) {
            Ok(yaml) => match serde_json::to_value(yaml) {
                Ok(value) => value,
                Err(error) => {
                    out.manifests
                        .errors
                        .push(ManifestError { origin, message: format!("not representable as JSON: {error}") });
                    continue;
                }
            },
            Err((at, error)) => {
                out.manifests.errors.push(ManifestError {
                    origin: Origin { file: file.to_owned(), line: at },
                    // serde_yaml's own positions count from the document's start.
                    message: format!("invalid YAML in the document starting at line {line}: {error}"),
                });
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        add_value(value, &origin, out);
    }
}

/// A `.json` file: one document, read by the JSON parser. A `List`'s items
/// are parsed one at a time from the text, so only one item's tree is ever
/// held: `kubectl get -o json` of a large cluster is tens of megabytes, and
/// as one tree (or through serde_yaml, which holds every event of a document)
/// it would cost many times that, most of it left fragmented on the heap.
fn parse_json(file: &Path, text: &str, out: &mut Out<'_>) {
    let origin = Origin { file: file.to_owned(), line: 1 };
    let invalid = |error: serde_json::Error| ManifestError {
        origin: Origin { file: file.to_owned(), line: error.line() },
        message: format!("invalid JSON: {error}"),
    };
    /// Just enough of a document to tell a `List` from one object.
    #[derive(serde::Deserialize)]
    struct Outline<'a> {
        #[serde(borrow, default)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        items: Option<Vec<&'a RawValue>>,
    }
    let items = match serde_json::from_str::<Outline<'_>>(text) {
        Ok(Outline { kind: Some(kind), items: Some(items) }) if kind.ends_with("List") => items,
        // Not a list (or not an object at all): read it whole.
        Ok(_) | Err(_) => {
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Null) => {}
                Ok(value) => add_value(value, &origin, out),
                Err(error) => out.manifests.errors.push(invalid(error)),
            }
            return;
        }
    };
    for item in items {
        match serde_json::from_str::<Value>(item.get()) {
            Ok(value) => add_value(value, &origin, out),
            Err(error) => out.manifests.errors.push(invalid(error)),
        }
    }
}

fn add_value(mut value: Value, origin: &Origin, out: &mut Out<'_>) {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned();
    if kind.ends_with("List")
        && let Some(Value::Array(items)) = value.get_mut("items").map(Value::take)
    {
        for item in items {
            add_value(item, origin, out);
        }
        return;
    }
    let name = value.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("<unnamed>").to_owned();
    let what = format!("{kind} {name}");
    let typed = match kind.as_str() {
        "Pod" => serde_json::from_value(value).map(|pod| Object::Pod(Box::new(pod))),
        "Namespace" => serde_json::from_value(value).map(|namespace| Object::Namespace(Box::new(namespace))),
        "NetworkPolicy" => serde_json::from_value(value).map(|policy| Object::NetworkPolicy(Box::new(policy))),
        "Service" => serde_json::from_value(value).map(|service| Object::Service(Box::new(service))),
        "Node" => serde_json::from_value(value).map(|node| Object::Node(Box::new(node))),
        kind if WORKLOAD_KINDS.contains(&kind) => Ok(Object::Workload(workload(kind, &value))),
        crate::intent::KIND => serde_json::from_value(value).map(|intent| Object::FlowIntent(Box::new(intent))),
        crate::policy::cnp::api::KIND => {
            serde_json::from_value(value).map(|policy| Object::ClusterNetworkPolicy(Box::new(policy)))
        }
        "" => {
            out.manifests
                .errors
                .push(ManifestError { origin: origin.clone(), message: "document has no kind".to_owned() });
            return;
        }
        _ => {
            let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
            out.manifests.skipped.push(Skipped { origin: origin.clone(), what: format!("{api_version}/{what}") });
            return;
        }
    };
    match typed {
        Ok(object) => (out.each)(Loaded { object, origin: origin.clone() }),
        Err(error) => {
            out.manifests.errors.push(ManifestError { origin: origin.clone(), message: format!("{what}: {error}") })
        }
    }
}

fn workload(kind: &str, value: &Value) -> Workload {
    let text = |pointer: &str| value.pointer(pointer).and_then(Value::as_str).map(str::to_owned);
    let owner = value
        .pointer("/metadata/ownerReferences")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .find(|owner| owner.get("controller").and_then(Value::as_bool) == Some(true))
        .map(|owner| OwnerRef {
            kind: owner.get("kind").and_then(Value::as_str).unwrap_or_default().to_owned(),
            name: owner.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
            uid: owner.get("uid").and_then(Value::as_str).unwrap_or_default().to_owned(),
        });
    Workload {
        kind: kind.to_owned(),
        namespace: text("/metadata/namespace").unwrap_or_else(|| "default".to_owned()),
        name: text("/metadata/name").unwrap_or_default(),
        uid: text("/metadata/uid"),
        owner,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_named(name: &str, text: &str) -> Manifests {
        let (mut objects, mut manifests) = (Vec::new(), Manifests::default());
        parse_file(
            Path::new(name),
            text,
            &mut Out { each: &mut |loaded| objects.push(loaded), manifests: &mut manifests },
        );
        manifests.objects = objects;
        manifests
    }

    fn parse(text: &str) -> Manifests {
        parse_named("m.yaml", text)
    }

    #[test]
    fn bad_document_names_its_line_and_the_rest_loads() {
        let manifests = parse(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: Pod\nmetadata: [unclosed\n---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: b\n",
        );
        assert_eq!(manifests.objects.len(), 2);
        assert_eq!(manifests.errors.len(), 1);
        // The parser fails where the unclosed sequence should have ended.
        assert_eq!(manifests.errors[0].origin.line, 9, "{}", manifests.errors[0]);
        assert!(manifests.errors[0].message.contains("document starting at line 6"), "{}", manifests.errors[0]);
    }

    #[test]
    fn lists_are_flattened_and_unknown_kinds_skipped() {
        let manifests = parse(
            r#"{"apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}},
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}}]}"#,
        );
        assert_eq!(manifests.objects.len(), 1);
        assert_eq!(manifests.skipped.len(), 1);
        assert_eq!(manifests.skipped[0].what, "v1/ConfigMap c");
    }

    #[test]
    fn json_file_is_read_as_json_with_its_error_line() {
        let text = "{\"apiVersion\": \"v1\", \"kind\": \"List\", \"items\": [\n  {\"apiVersion\": \"v1\", \"kind\": \"Namespace\", \"metadata\": {\"name\": \"a\"}}]}";
        let manifests = parse_named("m.json", text);
        assert_eq!(manifests.objects.len(), 1);
        assert!(manifests.errors.is_empty());
        let broken = parse_named("m.json", "{\"kind\": \"List\",\n \"items\": [\n  {\"kind\": }]}");
        assert_eq!(broken.objects.len(), 0);
        assert_eq!(broken.errors.len(), 1);
        assert_eq!(broken.errors[0].origin.line, 3, "{}", broken.errors[0]);
        assert!(broken.errors[0].message.starts_with("invalid JSON"), "{}", broken.errors[0]);
    }

    #[test]
    fn wrong_field_type_is_an_error_not_a_panic() {
        let manifests = parse("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers: 3\n");
        assert_eq!(manifests.objects.len(), 0);
        assert!(manifests.errors[0].message.starts_with("Pod p:"), "{}", manifests.errors[0]);
    }
}
