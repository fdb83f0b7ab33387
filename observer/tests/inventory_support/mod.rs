//! Test support for the inventory: an in-process fake Kubernetes API server
//! and builders of the JSON objects it serves.
//!
//! In: scenarios scripted by a test (apply, delete, bookmark, expire, drop
//! watches, go down). Out: real list and watch HTTP responses on 127.0.0.1,
//! for a kube `Client`, and a log of the requests it got.

#![allow(dead_code, reason = "each test binary uses a different part of the support module")]

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::{body::Frame, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::{net::TcpListener, sync::mpsc};

/// A resource the fake server serves: its collection path, kind and apiVersion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Kind {
    pub path: &'static str,
    pub kind: &'static str,
    pub api_version: &'static str,
}

pub const PODS: Kind = Kind { path: "/api/v1/pods", kind: "Pod", api_version: "v1" };
pub const NAMESPACES: Kind = Kind { path: "/api/v1/namespaces", kind: "Namespace", api_version: "v1" };
pub const SERVICES: Kind = Kind { path: "/api/v1/services", kind: "Service", api_version: "v1" };
pub const NODES: Kind = Kind { path: "/api/v1/nodes", kind: "Node", api_version: "v1" };
pub const POLICIES: Kind = Kind {
    path: "/apis/networking.k8s.io/v1/networkpolicies",
    kind: "NetworkPolicy",
    api_version: "networking.k8s.io/v1",
};
pub const REPLICASETS: Kind = Kind { path: "/apis/apps/v1/replicasets", kind: "ReplicaSet", api_version: "apps/v1" };
pub const JOBS: Kind = Kind { path: "/apis/batch/v1/jobs", kind: "Job", api_version: "batch/v1" };
pub const ENDPOINTSLICES: Kind = Kind {
    path: "/apis/discovery.k8s.io/v1/endpointslices",
    kind: "EndpointSlice",
    api_version: "discovery.k8s.io/v1",
};
pub const CLUSTER_POLICIES: Kind = Kind {
    path: "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies",
    kind: "ClusterNetworkPolicy",
    api_version: "policy.networking.k8s.io/v1alpha2",
};
pub const FLOW_INTENTS: Kind = Kind {
    path: "/apis/ai.governance/v1alpha1/flowintents",
    kind: "FlowIntent",
    api_version: "ai.governance/v1alpha1",
};
const KINDS: [Kind; 10] =
    [PODS, NAMESPACES, SERVICES, NODES, POLICIES, REPLICASETS, JOBS, ENDPOINTSLICES, CLUSTER_POLICIES, FLOW_INTENTS];

/// One request the server got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A list of the collection at `path`.
    List { path: String },
    /// A watch of `path` from `resource_version`, with bookmarks asked for or not.
    Watch { path: String, resource_version: String, bookmarks: bool },
}

type Body = BoxBody<Bytes, Infallible>;

#[derive(Default)]
struct Collection {
    objects: BTreeMap<(String, String), Value>,
    /// Every event with its resourceVersion, for watches that resume.
    history: Vec<(u64, Value)>,
    /// Watches from an older resourceVersion get `410 Gone`.
    oldest: u64,
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Default)]
struct State {
    resource_version: u64,
    collections: HashMap<Kind, Collection>,
    /// Kinds served as `404 Not Found`, as for a CRD that is not installed.
    absent: Vec<Kind>,
    /// Lists of these kinds are answered only after the delay given.
    slow_lists: HashMap<Kind, Duration>,
    down: bool,
    seen: Vec<Seen>,
}

/// The fake API server; stops when dropped.
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    address: SocketAddr,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn line(event_type: &str, object: &Value) -> Bytes {
    let mut text = json!({"type": event_type, "object": object}).to_string();
    text.push('\n');
    Bytes::from(text)
}

fn full(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn status_object(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code})
}

impl FakeApi {
    /// Starts serving on 127.0.0.1 with every collection empty.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("local address");
        let state = Arc::new(Mutex::new(State { resource_version: 1, ..State::default() }));
        {
            let mut guard = state.lock().expect("fresh lock");
            for kind in KINDS {
                guard.collections.insert(kind, Collection::default());
            }
        }
        let shared = Arc::clone(&state);
        let server = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = Arc::clone(&shared);
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let state = Arc::clone(&state);
                        async move {
                            if let Some(delay) = list_delay(&state, &request) {
                                tokio::time::sleep(delay).await;
                            }
                            Ok::<_, Infallible>(handle(&state, &request))
                        }
                    });
                    // A client that goes away mid-stream is not the test's concern.
                    let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Self { state, address, server }
    }

    /// The URL to give `kube::Config::new`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// A kube client talking plain HTTP to this server.
    pub fn client(&self) -> kube::Client {
        let config = kube::Config::new(self.url().parse().expect("valid url"));
        observer::inventory::client_from_config(config).expect("client")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or replaces an object (`ADDED` or `MODIFIED` to every watch).
    pub fn apply(&self, kind: Kind, object: Value) {
        self.change(kind, object, true, false);
    }

    /// Deletes an object (`DELETED` to every watch).
    pub fn delete(&self, kind: Kind, object: Value) {
        self.change(kind, object, true, true);
    }

    /// Changes an object without telling any watch, as if the event had been
    /// compacted away: only a relist can find out.
    pub fn apply_unseen(&self, kind: Kind, object: Value) {
        self.change(kind, object, false, false);
    }

    /// Deletes an object without telling any watch.
    pub fn delete_unseen(&self, kind: Kind, object: Value) {
        self.change(kind, object, false, true);
    }

    fn change(&self, kind: Kind, mut object: Value, announce: bool, delete: bool) {
        let mut state = self.lock();
        state.resource_version += 1;
        let resource_version = state.resource_version;
        object["apiVersion"] = json!(kind.api_version);
        object["kind"] = json!(kind.kind);
        object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        let key = (
            object["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(),
            object["metadata"]["name"].as_str().expect("object has a name").to_owned(),
        );
        let collection = state.collections.get_mut(&kind).expect("known kind");
        let event_type = match (delete, collection.objects.contains_key(&key)) {
            (true, _) => "DELETED",
            (false, true) => "MODIFIED",
            (false, false) => "ADDED",
        };
        if delete {
            collection.objects.remove(&key);
        } else {
            collection.objects.insert(key, object.clone());
        }
        if announce {
            let event = json!({"type": event_type, "object": object});
            collection.history.push((resource_version, event));
            let bytes = line(event_type, &object);
            collection.watchers.retain(|watcher| watcher.send(bytes.clone()).is_ok());
        } else {
            // Nobody may resume from before this change.
            collection.oldest = resource_version;
        }
    }

    /// Sends a `BOOKMARK` at the current resourceVersion to every watch of `kind`.
    pub fn bookmark(&self, kind: Kind) -> u64 {
        let mut state = self.lock();
        let resource_version = state.resource_version;
        let collection = state.collections.get_mut(&kind).expect("known kind");
        let object = json!({"kind": kind.kind, "apiVersion": kind.api_version,
            "metadata": {"resourceVersion": resource_version.to_string()}});
        let bytes = line("BOOKMARK", &object);
        collection.watchers.retain(|watcher| watcher.send(bytes.clone()).is_ok());
        resource_version
    }

    /// Ends every watch of `kind` with an `ERROR` event `410 Gone`, and makes
    /// resuming from any earlier version fail the same way.
    pub fn expire(&self, kind: Kind) {
        let mut state = self.lock();
        let resource_version = state.resource_version;
        let collection = state.collections.get_mut(&kind).expect("known kind");
        // A relist at the current version may watch on from it.
        collection.oldest = collection.oldest.max(resource_version);
        let bytes = line("ERROR", &status_object(410, "Expired", "too old resource version"));
        for watcher in collection.watchers.drain(..) {
            let _ = watcher.send(bytes.clone());
        }
    }

    /// Closes every open watch connection of `kind`, as a load balancer would.
    pub fn drop_watches(&self, kind: Kind) {
        self.lock().collections.get_mut(&kind).expect("known kind").watchers.clear();
    }

    /// While down, every request gets `503 Service Unavailable` and open watches close.
    pub fn set_down(&self, down: bool) {
        let mut state = self.lock();
        state.down = down;
        if down {
            for collection in state.collections.values_mut() {
                collection.watchers.clear();
            }
        }
    }

    /// While absent, `kind` is `404 Not Found`, as a CRD not installed, and its watches close.
    pub fn set_absent(&self, kind: Kind, absent: bool) {
        let mut state = self.lock();
        state.absent.retain(|other| *other != kind);
        if absent {
            state.absent.push(kind);
            state.collections.get_mut(&kind).expect("known kind").watchers.clear();
        }
    }

    /// Answers every later list of `kind` only after `delay` (its watches
    /// are not delayed), as a large collection or a busy API server would.
    pub fn set_list_delay(&self, kind: Kind, delay: Duration) {
        self.lock().slow_lists.insert(kind, delay);
    }

    /// The requests served so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.lock().seen.clone()
    }

    /// How many lists of `kind` were served.
    pub fn lists(&self, kind: Kind) -> usize {
        self.seen().iter().filter(|seen| matches!(seen, Seen::List { path } if path == kind.path)).count()
    }

    /// The watches of `kind` served, in order.
    pub fn watches(&self, kind: Kind) -> Vec<(String, bool)> {
        self.seen()
            .into_iter()
            .filter_map(|seen| match seen {
                Seen::Watch { path, resource_version, bookmarks } if path == kind.path => {
                    Some((resource_version, bookmarks))
                }
                _ => None,
            })
            .collect()
    }
}

/// The delay set for a list (not a watch) of the collection `request` asks for.
fn list_delay(state: &Mutex<State>, request: &Request<hyper::body::Incoming>) -> Option<Duration> {
    if request.uri().query().unwrap_or_default().contains("watch=true") {
        return None;
    }
    let state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let kind = KINDS.into_iter().find(|kind| kind.path == request.uri().path())?;
    state.slow_lists.get(&kind).copied()
}

fn handle(state: &Mutex<State>, request: &Request<hyper::body::Incoming>) -> Response<Body> {
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    if state.down {
        return full(StatusCode::SERVICE_UNAVAILABLE, status_object(503, "ServiceUnavailable", "down for the test"));
    }
    let path = request.uri().path().to_owned();
    let query: HashMap<String, String> = request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect();
    let Some(kind) = KINDS.into_iter().find(|kind| kind.path == path && !state.absent.contains(kind)) else {
        return full(StatusCode::NOT_FOUND, status_object(404, "NotFound", &format!("no {path} here")));
    };
    let current = state.resource_version;
    if query.get("watch").map(String::as_str) == Some("true") {
        let from: u64 = query.get("resourceVersion").and_then(|version| version.parse().ok()).unwrap_or(0);
        state.seen.push(Seen::Watch {
            path: path.clone(),
            resource_version: from.to_string(),
            bookmarks: query.get("allowWatchBookmarks").map(String::as_str) == Some("true"),
        });
        let collection = state.collections.get_mut(&kind).expect("known kind");
        let (sender, mut receiver) = mpsc::unbounded_channel::<Bytes>();
        if from < collection.oldest {
            let _ = sender.send(line("ERROR", &status_object(410, "Expired", "too old resource version")));
        } else {
            for (version, event) in &collection.history {
                if *version > from {
                    let mut text = event.to_string();
                    text.push('\n');
                    let _ = sender.send(Bytes::from(text));
                }
            }
            collection.watchers.push(sender);
        }
        let frames = futures::stream::poll_fn(move |context| {
            receiver.poll_recv(context).map(|bytes| bytes.map(|bytes| Ok::<_, Infallible>(Frame::data(bytes))))
        });
        let mut response = Response::new(StreamBody::new(frames).boxed());
        response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        return response;
    }
    state.seen.push(Seen::List { path });
    let collection = state.collections.get(&kind).expect("known kind");
    let items: Vec<&Value> = collection.objects.values().collect();
    full(
        StatusCode::OK,
        json!({"apiVersion": kind.api_version, "kind": format!("{}List", kind.kind),
            "metadata": {"resourceVersion": current.to_string()}, "items": items}),
    )
}

/// Polls `condition` every 10 ms until it holds or `within` passes; returns how long it took.
pub async fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Starts a pod named `name` in namespace `default`.
pub fn pod(name: &str) -> PodJson {
    PodJson(json!({
        "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"), "labels": {}},
        "spec": {"containers": [{"name": "main", "image": "registry.example/app:1"}], "nodeName": "node-1"},
        "status": {"phase": "Running"}
    }))
}

/// Builds the JSON of a pod.
pub struct PodJson(Value);

impl PodJson {
    pub fn ns(mut self, namespace: &str) -> Self {
        self.0["metadata"]["namespace"] = json!(namespace);
        self
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.0["metadata"]["uid"] = json!(uid);
        self
    }

    pub fn ip(mut self, ip: &str) -> Self {
        self.0["status"]["podIP"] = json!(ip);
        self.0["status"]["podIPs"] = json!([{"ip": ip}]);
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.0["metadata"]["labels"][key] = json!(value);
        self
    }

    /// The controller ownerReference, uid `uid-<name>`.
    pub fn owner(mut self, kind: &str, name: &str) -> Self {
        self.0["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": name,
            "uid": format!("uid-{name}"), "controller": true}]);
        self
    }

    pub fn json(self) -> Value {
        self.0
    }
}

/// A namespace.
pub fn namespace(name: &str) -> Value {
    json!({"metadata": {"name": name, "uid": format!("uid-ns-{name}"), "labels": {"team": "t"}}})
}

/// A ClusterIP service.
pub fn service(namespace: &str, name: &str, cluster_ip: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": namespace, "uid": format!("uid-svc-{name}")},
        "spec": {"clusterIP": cluster_ip, "clusterIPs": [cluster_ip], "selector": {"app": name}}})
}

/// A ClusterIP service with one named TCP port.
pub fn service_port(namespace: &str, name: &str, cluster_ip: &str, port_name: &str, port: u16) -> Value {
    let mut object = service(namespace, name, cluster_ip);
    object["spec"]["ports"] = json!([{"name": port_name, "port": port, "protocol": "TCP"}]);
    object
}

/// An EndpointSlice `name` of Service `namespace/service`: port `port_name`
/// at `port`, one endpoint per address, ready or not.
pub fn endpoint_slice(
    namespace: &str,
    service: &str,
    name: &str,
    (port_name, port): (&str, u16),
    endpoints: &[(&str, bool)],
) -> Value {
    let endpoints: Vec<Value> =
        endpoints.iter().map(|(ip, ready)| json!({"addresses": [ip], "conditions": {"ready": ready}})).collect();
    json!({"metadata": {"name": name, "namespace": namespace, "uid": format!("uid-eps-{name}"),
            "labels": {"kubernetes.io/service-name": service},
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update"}]},
        "addressType": "IPv4",
        "ports": [{"name": port_name, "port": port, "protocol": "TCP"}],
        "endpoints": endpoints})
}

/// A node with one InternalIP.
pub fn node(name: &str, ip: &str) -> Value {
    json!({"metadata": {"name": name, "uid": format!("uid-node-{name}")},
        "status": {"addresses": [{"type": "InternalIP", "address": ip}, {"type": "Hostname", "address": name}]}})
}

/// A NetworkPolicy isolating every pod of its namespace.
pub fn deny_all(namespace: &str, name: &str) -> Value {
    json!({"metadata": {"name": name, "namespace": namespace, "uid": format!("uid-np-{name}"),
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{\"big\": true}"}},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}})
}

/// A workload controller `kind/name` (uid `uid-<name>`), owned by `owner` if given.
pub fn controller(namespace: &str, name: &str, owner: Option<(&str, &str)>) -> Value {
    let mut object =
        json!({"metadata": {"name": name, "namespace": namespace, "uid": format!("uid-{name}")}, "spec": {}});
    if let Some((kind, owner)) = owner {
        object["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": owner, "uid": format!("uid-{owner}"), "controller": true}]);
    }
    object
}
