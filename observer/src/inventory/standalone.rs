//! The standalone source: manifest files instead of an API server.
//!
//! In: files or folders of manifests, checked for changes (modification time,
//! size, files added or removed) every reload interval. Out: on each change, a
//! full list of every resource to the [`Writer`], exactly as a cluster relist
//! would send it, so everything downstream behaves the same in both modes.
//! Bad documents are logged with file and line and the rest still loads.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::PathBuf,
    time::SystemTime,
};

use k8s_openapi::api::core::v1 as core;

use super::{
    super::intent::LoadedIntents,
    convert,
    manifests::{self, Manifests, Object},
    store::{Item, Resource, Update},
    writer::Writer,
};

/// Every resource manifests can hold.
pub(crate) const RESOURCES: [Resource; 8] = [
    Resource::Pods,
    Resource::Namespaces,
    Resource::NetworkPolicies,
    Resource::Services,
    Resource::Nodes,
    Resource::ReplicaSets,
    Resource::Jobs,
    Resource::Controllers,
];

/// What the files looked like at one check: path, modification time, size.
pub(crate) type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The current fingerprint of every manifest file under `paths`.
pub(crate) fn fingerprint(paths: &[PathBuf]) -> Fingerprint {
    let mut ignored = Vec::new();
    paths
        .iter()
        .flat_map(|path| manifests::files_under(path, &mut ignored))
        .map(|file| {
            let meta = fs::metadata(&file).ok();
            let modified = meta.as_ref().and_then(|meta| meta.modified().ok());
            let len = meta.map_or(0, |meta| meta.len());
            (file, modified, len)
        })
        .collect()
}

/// Reads every path and hands the writer a full list of each resource.
pub(crate) fn load(paths: &[PathBuf], writer: &mut Writer) {
    let mut items: BTreeMap<Resource, Vec<Item>> = BTreeMap::new();
    let mut declared = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut intents = LoadedIntents::default();
    // Each object is converted as soon as it is read: the typed objects of a
    // large cluster are several times the size of what the store keeps.
    let Manifests { errors, skipped, .. } = manifests::load_each(paths, &mut |loaded| {
        let item = match loaded.object {
            Object::Pod(pod) => {
                used.insert(pod.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()));
                convert::pod(&pod)
            }
            Object::Namespace(namespace) => {
                declared.insert(namespace.metadata.name.clone().unwrap_or_default());
                convert::namespace(&namespace)
            }
            Object::NetworkPolicy(policy) => convert::network_policy(*policy),
            Object::Service(service) => convert::service(&service),
            Object::Node(node) => convert::node(&node),
            Object::Workload(workload) => Item::Workload(workload),
            // Held for the judge, which compiles them (`Inventory::intents`).
            Object::FlowIntent(intent) => {
                intents.intents.push(*intent);
                intents.origins.push(loaded.origin);
                return;
            }
            // Likewise: the judge compiles them with the NetworkPolicies.
            Object::ClusterNetworkPolicy(policy) => {
                intents.cluster_policies.push(*policy);
                intents.cluster_origins.push(loaded.origin);
                return;
            }
        };
        items.entry(item.resource()).or_default().push(item);
    });
    for error in &errors {
        tracing::warn!(%error, "manifest document not loaded");
    }
    for skipped in &skipped {
        tracing::warn!(origin = %skipped.origin, what = %skipped.what, "manifest object of a kind the observer does not use, skipped");
    }
    writer.set_manifest_errors(errors.iter().map(ToString::to_string).collect());
    // The API server would hold every namespace a pod is in: so does the
    // standalone inventory, labelled only with its name.
    for name in used.difference(&declared) {
        let namespace = core::Namespace {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(name.clone()),
                ..Default::default()
            },
            ..Default::default()
        };
        items.entry(Resource::Namespaces).or_default().push(convert::namespace(&namespace));
    }
    for resource in RESOURCES {
        writer.record(resource, Update::Init(resource));
        for item in items.remove(&resource).unwrap_or_default() {
            writer.record(resource, Update::InitApply(item));
        }
        writer.record(resource, Update::InitDone(resource));
    }
    writer.set_intents(intents);
    writer.publish();
}

/// Reloads the manifests whenever they change, forever.
pub(crate) async fn run(
    paths: Vec<PathBuf>,
    mut writer: Writer,
    reload_interval: std::time::Duration,
    mut seen: Fingerprint,
) {
    let mut interval = tokio::time::interval(reload_interval);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let now = fingerprint(&paths);
        if now != seen {
            tracing::info!(files = now.len(), "manifests changed, reloading");
            load(&paths, &mut writer);
            seen = now;
        }
        writer.tick();
    }
}
