//! Reads Kubernetes manifests from files and folders.
//!
//! In: paths to YAML or JSON files, or folders of them (walked recursively,
//! `.yaml`, `.yml` and `.json`, in name order), each file holding one or more
//! documents or `List` kinds. Out: the objects the observer understands, each
//! with the file and line it came from, plus an error per document that did not
//! parse (file and line named) and a note per object of a kind it does not use.
//! One bad document never stops the rest from loading. Input is bounded:
//! files are found and read by [`walk`](super::walk) (no link loops, regular
//! files only, at most 64 MiB), a YAML document is checked by
//! [`yaml_bounds`](super::yaml_bounds) before it is read into values (as is
//! the size of a JSON document or `List` item), and JSON nests at most 128
//! deep (serde_json's limit).

use std::{
    fmt,
    path::{Path, PathBuf},
};

use k8s_openapi::api::{core::v1 as core, discovery::v1 as discovery, networking::v1::NetworkPolicy};
use serde_json::{Value, value::RawValue};

use super::{
    model::OwnerRef,
    walk::{self, Found, Stamp, WalkError},
    yaml_bounds,
};

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
    /// An EndpointSlice (`discovery.k8s.io/v1`).
    EndpointSlice(Box<discovery::EndpointSlice>),
    /// A workload controller.
    Workload(Workload),
    /// An AI-tier FlowIntent.
    FlowIntent(Box<crate::intent::resource::FlowIntent>),
    /// A ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`).
    ClusterNetworkPolicy(Box<crate::policy::cnp::api::ClusterNetworkPolicy>),
}

/// Kinds read as [`Object::Workload`].
const WORKLOAD_KINDS: [&str; 6] = ["ReplicaSet", "Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"];

/// An object the judge compiles itself (a FlowIntent, a
/// ClusterNetworkPolicy), as the inventory holds it: with the document it
/// was read from when a manifest declared it, so a refused one is reported
/// where it was written.
#[derive(Clone, Debug)]
pub struct Declared<T> {
    /// The object.
    pub object: T,
    /// Its document; `None` for an object of the API server.
    pub origin: Option<Origin>,
}

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
    /// A short stable name of the kind of failure, for metrics: `missing`,
    /// `unlistable`, `unreadable`, `too_large`, `changing` (from
    /// [`WalkError::reason`]), `invalid` (not a valid document or object) or
    /// `limits` (a YAML document beyond the bounds of [`yaml_bounds`]).
    pub reason: &'static str,
}

impl ManifestError {
    fn invalid(origin: Origin, message: String) -> Self {
        Self { origin, message, reason: "invalid" }
    }

    fn walk(file: &Path, error: &WalkError) -> Self {
        Self { origin: Origin { file: file.to_owned(), line: 0 }, message: error.to_string(), reason: error.reason() }
    }

    /// Whether what the path holds cannot be known at all (it is missing
    /// or its folder cannot be listed), rather than one file or document failing.
    pub fn hides_files(&self) -> bool {
        matches!(self.reason, "missing" | "unlistable")
    }
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
    let found = walk::walk(paths);
    problems(&found, &mut manifests);
    for file in &found.files {
        read_file(file, each, &mut manifests);
    }
    manifests
}

/// Turns what the walk could not find or open into errors, and files that
/// are not regular into skipped entries (a warning: they never load).
pub(crate) fn problems(found: &walk::Walk, manifests: &mut Manifests) {
    for (path, error) in &found.problems {
        match error {
            WalkError::NotRegular => manifests
                .skipped
                .push(Skipped { origin: Origin { file: path.clone(), line: 0 }, what: error.to_string() }),
            _ => manifests.errors.push(ManifestError::walk(path, error)),
        }
    }
}

/// Reads and parses one found file; returns what it looked like when read,
/// or `None` (and an error) when it could not be read.
pub(crate) fn read_file(found: &Found, each: &mut dyn FnMut(Loaded), manifests: &mut Manifests) -> Option<Stamp> {
    match walk::read(found) {
        Ok((text, stamp)) => {
            parse_file(&found.path, &text, &mut Out { each, manifests });
            Some(stamp)
        }
        Err(error) => {
            manifests.errors.push(ManifestError::walk(&found.path, &error));
            None
        }
    }
}

/// Parses the text of one file named `file` (`.json` as JSON, anything
/// else as YAML) as [`load`] does once it has read it.
pub fn parse(file: &Path, text: &str) -> Manifests {
    let (mut objects, mut manifests) = (Vec::new(), Manifests::default());
    parse_file(file, text, &mut Out { each: &mut |loaded| objects.push(loaded), manifests: &mut manifests });
    manifests.objects = objects;
    manifests
}

/// Where a parse puts what it finds: objects to `each`, the rest to `manifests`.
struct Out<'a> {
    each: &'a mut dyn FnMut(Loaded),
    manifests: &'a mut Manifests,
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
        match yaml_bounds::check(&document) {
            // Syntax errors are left to serde_yaml, whose messages and lines the docs show.
            Ok(()) | Err((_, yaml_bounds::BoundError::Invalid(_))) => {}
            Err((at, error)) => {
                out.manifests.errors.push(ManifestError {
                    origin: Origin { file: file.to_owned(), line: line + at.max(1) - 1 },
                    message: format!("document starting at line {line} not read: {error}"),
                    reason: "limits",
                });
                continue;
            }
        }
        let value: Value = match serde_yaml::from_str::<serde_yaml::Value>(&document).map_err(|error| {
            // From the byte offset, not libyaml's line: it also breaks lines
            // at a lone `\r` (and YAML 1.1's Unicode breaks), the file's lines do not.
            let at =
                error.location().map_or(line, |location| line + yaml_bounds::line_of(&document, location.index()) - 1);
            (at, error)
        }) {
            Ok(yaml) => match serde_json::to_value(yaml) {
                Ok(value) => value,
                Err(error) => {
                    out.manifests
                        .errors
                        .push(ManifestError::invalid(origin, format!("not representable as JSON: {error}")));
                    continue;
                }
            },
            Err((at, error)) => {
                out.manifests.errors.push(ManifestError::invalid(
                    Origin { file: file.to_owned(), line: at },
                    // serde_yaml's own positions count from the document's start.
                    format!("invalid YAML in the document starting at line {line}: {error}"),
                ));
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
    let invalid = |error: serde_json::Error| {
        ManifestError::invalid(Origin { file: file.to_owned(), line: error.line() }, format!("invalid JSON: {error}"))
    };
    /// Just enough of a document to tell a `List` from one object.
    #[derive(serde::Deserialize)]
    struct Outline<'a> {
        #[serde(borrow, default)]
        kind: Option<std::borrow::Cow<'a, str>>,
        #[serde(borrow, default)]
        items: Option<Vec<&'a RawValue>>,
    }
    let too_large = |line: usize, len: usize| ManifestError {
        origin: Origin { file: file.to_owned(), line },
        message: yaml_bounds::BoundError::TooLarge(len).to_string(),
        reason: "limits",
    };
    let items = match serde_json::from_str::<Outline<'_>>(text) {
        Ok(Outline { kind: Some(kind), items: Some(items) }) if kind.ends_with("List") => items,
        // Not a list (or not an object at all): read it whole.
        Ok(_) | Err(_) => {
            if text.len() > yaml_bounds::MAX_DOCUMENT_BYTES {
                out.manifests.errors.push(too_large(1, text.len()));
                return;
            }
            match serde_json::from_str::<Value>(text) {
                Ok(Value::Null) => {}
                Ok(value) => add_value(value, &origin, out),
                Err(error) => out.manifests.errors.push(invalid(error)),
            }
            return;
        }
    };
    for item in items {
        if item.get().len() > yaml_bounds::MAX_DOCUMENT_BYTES {
            out.manifests.errors.push(too_large(1, item.get().len()));
            continue;
        }
        if let Some(object) = typed(item.get()) {
            (out.each)(Loaded { object, origin: origin.clone() });
            continue;
        }
        match serde_json::from_str::<Value>(item.get()) {
            Ok(value) => add_value(value, &origin, out),
            Err(error) => out.manifests.errors.push(invalid(error)),
        }
    }
}

/// A JSON object of a core kind read straight into its type: a large
/// cluster's items are mostly pods, and reading each into a [`Value`] tree
/// first costs as much again. `None` for any other kind, and for an object
/// that does not read cleanly: [`add_value`] then reads it as before, with the
/// same result and the same error (a `Value` keeps the last of duplicate keys,
/// where a struct refuses them).
fn typed(text: &str) -> Option<Object> {
    let kind = kind_of(text)?;
    // k8s-openapi refuses an object whose `kind` (the last one) is not its own.
    match kind {
        "Pod" => serde_json::from_str(text).ok().map(|pod| Object::Pod(Box::new(pod))),
        "Namespace" => serde_json::from_str(text).ok().map(|namespace| Object::Namespace(Box::new(namespace))),
        "NetworkPolicy" => serde_json::from_str(text).ok().map(|policy| Object::NetworkPolicy(Box::new(policy))),
        "Service" => serde_json::from_str(text).ok().map(|service| Object::Service(Box::new(service))),
        "Node" => serde_json::from_str(text).ok().map(|node| Object::Node(Box::new(node))),
        "EndpointSlice" => serde_json::from_str(text).ok().map(|slice| Object::EndpointSlice(Box::new(slice))),
        _ => None,
    }
}

/// The first `kind` of a JSON object, read up to that key only (kubectl and
/// the API server write it second, after `apiVersion`); `None` when it is not
/// a plain string before anything malformed.
fn kind_of(text: &str) -> Option<&str> {
    /// Reads map entries until `kind`, into `.0`.
    struct Kind<'a, 'b>(&'b mut Option<&'a str>);
    impl<'de> serde::de::Visitor<'de> for Kind<'de, '_> {
        type Value = ();

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("an object")
        }

        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            while let Some(key) = map.next_key::<&'de str>()? {
                if key == "kind" {
                    *self.0 = Some(map.next_value()?);
                    return Ok(());
                }
                map.next_value::<serde::de::IgnoredAny>()?;
            }
            Ok(())
        }
    }
    let mut kind = None;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    // Stopping at `kind` leaves the object unfinished, which is all the error then says.
    let _unfinished = serde::Deserializer::deserialize_map(&mut deserializer, Kind(&mut kind));
    kind
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
        "EndpointSlice" => serde_json::from_value(value).map(|slice| Object::EndpointSlice(Box::new(slice))),
        kind if WORKLOAD_KINDS.contains(&kind) => Ok(Object::Workload(workload(kind, &value))),
        crate::intent::resource::KIND => {
            serde_json::from_value(value).map(|intent| Object::FlowIntent(Box::new(intent)))
        }
        crate::policy::cnp::api::KIND => {
            serde_json::from_value(value).map(|policy| Object::ClusterNetworkPolicy(Box::new(policy)))
        }
        "" => {
            out.manifests.errors.push(ManifestError::invalid(origin.clone(), "document has no kind".to_owned()));
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
        Err(error) => out.manifests.errors.push(ManifestError::invalid(origin.clone(), format!("{what}: {error}"))),
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
        super::parse(Path::new(name), text)
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

    /// The items of a JSON `List` read straight into their types come out as
    /// they do through a `Value` tree, and what a struct refuses (a duplicate
    /// key) still reads as a `Value` reads it: the last one.
    #[test]
    fn json_items_read_into_their_types_as_through_a_value() {
        let items = [
            r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop", "uid": "u1",
                "labels": {"app": "web"}, "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-1", "uid": "r1", "controller": true}]},
                "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                "ports": [{"name": "http", "containerPort": 8080}]}]},
                "status": {"phase": "Running", "podIP": "198.18.0.5", "podIPs": [{"ip": "198.18.0.5"}]}}"#,
            r#"{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop", "labels": {"team": "a"}}}"#,
            r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "n",
                "namespace": "shop", "annotations": {"ai.governance/owner": "me"}}, "spec": {"podSelector":
                {"matchLabels": {"app": "web"}}, "ingress": [{"ports": [{"port": "http"}, {"port": 53,
                "protocol": "UDP"}]}], "policyTypes": ["Ingress"]}}"#,
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "shop"},
                "spec": {"clusterIP": "10.96.0.1", "ports": [{"port": 80, "targetPort": "http"}]}}"#,
            r#"{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "n1"},
                "status": {"addresses": [{"type": "InternalIP", "address": "10.0.0.1"}]}}"#,
            r#"{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": {"name": "s-1",
                "namespace": "shop", "labels": {"kubernetes.io/service-name": "s"}}, "addressType": "IPv4",
                "endpoints": [{"addresses": ["198.18.0.5"], "conditions": {"ready": true}}],
                "ports": [{"port": 8080}]}"#,
            r#"{"apiVersion": "apps/v1", "kind": "ReplicaSet", "metadata": {"name": "web-1", "namespace": "shop"}}"#,
        ];
        let typed = parse_named("m.json", &format!(r#"{{"kind": "List", "items": [{}]}}"#, items.join(",")));
        assert!(typed.errors.is_empty(), "{:?}", typed.errors);
        let origin = Origin { file: PathBuf::from("m.json"), line: 1 };
        let (mut objects, mut manifests) = (Vec::new(), Manifests::default());
        for item in items {
            let value = serde_json::from_str(item).expect("json");
            add_value(value, &origin, &mut Out { each: &mut |loaded| objects.push(loaded), manifests: &mut manifests });
        }
        assert_eq!(objects.len(), items.len());
        assert_eq!(format!("{:?}", typed.objects), format!("{objects:?}"));

        let duplicated = parse_named(
            "m.json",
            r#"{"kind": "List", "items": [{"kind": "Namespace", "metadata": {"name": "a"}, "metadata": {"name": "b"}}]}"#,
        );
        assert!(duplicated.errors.is_empty(), "{:?}", duplicated.errors);
        let [Loaded { object: Object::Namespace(namespace), .. }] = duplicated.objects.as_slice() else {
            panic!("{:?}", duplicated.objects)
        };
        assert_eq!(namespace.metadata.name.as_deref(), Some("b"));

        // Two kinds: the last one counts, as in a `Value`.
        let twice = parse_named(
            "m.json",
            r#"{"kind": "List", "items": [{"kind": "Pod", "metadata": {"name": "a"}, "kind": "Namespace"}]}"#,
        );
        assert!(twice.errors.is_empty(), "{:?}", twice.errors);
        let [Loaded { object: Object::Namespace(namespace), .. }] = twice.objects.as_slice() else {
            panic!("{:?}", twice.objects)
        };
        assert_eq!(namespace.metadata.name.as_deref(), Some("a"));
    }

    #[test]
    fn wrong_field_type_is_an_error_not_a_panic() {
        let manifests = parse("apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers: 3\n");
        assert_eq!(manifests.objects.len(), 0);
        assert!(manifests.errors[0].message.starts_with("Pod p:"), "{}", manifests.errors[0]);
    }

    #[test]
    fn an_alias_bomb_is_refused_with_its_line_and_the_rest_loads() {
        // 20 KB: a ConfigMap (a kind the observer ignores) whose aliases
        // would expand to millions of nodes, between two namespaces.
        let anchor = format!("  a: &a [{}]\n", vec!["xx"; 1000].join(","));
        let rows = format!("  - [{}]\n", vec!["*a"; 100].join(",")).repeat(10);
        let bomb = format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: bomb}}\ndata:\n{anchor}  b:\n{rows}");
        assert!(bomb.len() < 20_000, "{}", bomb.len());
        let text =
            format!("kind: Namespace\nmetadata: {{name: a}}\n---\n{bomb}---\nkind: Namespace\nmetadata: {{name: b}}\n");
        let manifests = parse(&text);
        assert_eq!(manifests.objects.len(), 2, "both namespaces load");
        assert!(manifests.skipped.is_empty(), "the bomb is refused, not read and skipped");
        assert_eq!(manifests.errors.len(), 1);
        let error = &manifests.errors[0];
        assert_eq!((error.reason, error.origin.line), ("limits", 19), "{error}");
        assert!(error.to_string().contains("nodes once aliases are expanded"), "{error}");
    }

    #[test]
    fn deep_nesting_is_refused_in_yaml_and_json() {
        let yaml =
            parse(&format!("kind: Namespace\nmetadata: {{name: a}}\n---\nkind: Pod\nspec: {}\n", "[".repeat(200_000)));
        assert_eq!(yaml.objects.len(), 1);
        assert_eq!(yaml.errors.len(), 1);
        assert_eq!((yaml.errors[0].reason, yaml.errors[0].origin.line), ("limits", 5), "{}", yaml.errors[0]);
        assert!(yaml.errors[0].message.contains("nested more than 64"), "{}", yaml.errors[0]);
        let deep = "[".repeat(200_000);
        let json = parse_named(
            "m.json",
            &format!(
                "{{\"kind\": \"List\", \"items\": [{{\"kind\": \"Namespace\", \"metadata\": {{\"name\": \"a\"}}}}, {deep}]}}"
            ),
        );
        assert!(json.objects.len() <= 1);
        assert_eq!(json.errors.len(), 1);
        assert!(json.errors[0].message.contains("recursion limit"), "{}", json.errors[0]);
        let alone = parse_named("m.json", &deep);
        assert!(alone.objects.is_empty());
        assert!(alone.errors[0].message.contains("recursion limit"), "{}", alone.errors[0]);
    }

    #[test]
    fn a_document_past_the_size_limit_is_refused_and_the_rest_loads() {
        let big = format!("kind: ConfigMap\ndata: {{a: \"{}\"}}\n", "x".repeat(yaml_bounds::MAX_DOCUMENT_BYTES));
        let yaml = parse(&format!("{big}---\nkind: Namespace\nmetadata: {{name: a}}\n"));
        assert_eq!(yaml.objects.len(), 1);
        assert!(yaml.skipped.is_empty());
        assert_eq!((yaml.errors[0].reason, yaml.errors[0].origin.line), ("limits", 1), "{}", yaml.errors[0]);
        let item = format!(
            "{{\"kind\": \"ConfigMap\", \"data\": {{\"a\": \"{}\"}}}}",
            "x".repeat(yaml_bounds::MAX_DOCUMENT_BYTES)
        );
        let json = parse_named(
            "m.json",
            &format!(
                "{{\"kind\": \"List\", \"items\": [{item}, {{\"kind\": \"Namespace\", \"metadata\": {{\"name\": \"a\"}}}}]}}"
            ),
        );
        assert_eq!(json.objects.len(), 1);
        assert_eq!(json.errors.len(), 1);
        assert!(json.errors[0].message.contains("limit of one document"), "{}", json.errors[0]);
    }

    /// Found by the fuzz target: libyaml counts a lone `\r` as a line break,
    /// which put the error past the file's last line.
    #[test]
    fn error_lines_count_the_file_s_lines() {
        let text = "kind: Namespace\nmetadata: {name: a}\n---\nkind: Pod\r\r\r\rmetadata: {a: b c: d}\n";
        let manifests = parse(text);
        assert_eq!(manifests.errors.len(), 1);
        assert_eq!(manifests.errors[0].origin.line, 4, "{}", manifests.errors[0]);
        assert!(manifests.errors[0].origin.line <= text.lines().count());
    }
}
