//! The cluster source: watches of the API server.
//!
//! In: a kube [`Client`]. Out: the [`Writer`] gets every watch event of Pods
//! (cluster-wide: a remote end can be anywhere), Namespaces, NetworkPolicies,
//! Services, EndpointSlices and Nodes, plus ReplicaSet and Job metadata for
//! workload names, and the FlowIntents and ClusterNetworkPolicies the judge
//! compiles, each trimmed on arrival so no full object is kept. kube's watcher
//! lists, watches, rewatches dropped connections from the last resourceVersion
//! and relists after `410 Gone`; its errors are retried with the default
//! backoff and reported in the status. A custom resource whose CRD is not
//! installed is held as an empty list (said once in the log), not as a
//! failure: its watch keeps retrying, so installing the CRD later is picked up.

use std::{collections::BTreeSet, fmt::Debug};

use futures::{
    StreamExt,
    stream::{self, BoxStream},
};
use k8s_openapi::api::{
    apps::v1::ReplicaSet, batch::v1::Job, core::v1 as core, discovery::v1 as discovery, networking::v1::NetworkPolicy,
};
use kube::{
    Api, Client,
    runtime::{
        WatchStreamExt,
        watcher::{self, Event, watcher},
    },
};

use super::{
    convert,
    resource::Resource,
    store::{Item, Update},
    writer::Writer,
};
use crate::{error_chain, intent::resource::FlowIntent, policy::cnp::api::ClusterNetworkPolicy};

/// Every resource the cluster source watches.
pub(crate) const RESOURCES: [Resource; 10] = [
    Resource::Pods,
    Resource::Namespaces,
    Resource::NetworkPolicies,
    Resource::Services,
    Resource::EndpointSlices,
    Resource::Nodes,
    Resource::ReplicaSets,
    Resource::Jobs,
    Resource::FlowIntents,
    Resource::ClusterNetworkPolicies,
];

/// The custom resources of [`RESOURCES`], with the CRD each needs.
const CUSTOM: [(Resource, &str); 2] = [
    (Resource::FlowIntents, "the FlowIntent CRD (ai.governance/v1alpha1): judging without FlowIntents"),
    (
        Resource::ClusterNetworkPolicies,
        "the ClusterNetworkPolicy CRD (policy.networking.k8s.io/v1alpha2): judging without ClusterNetworkPolicies",
    ),
];

type Events = BoxStream<'static, (Resource, Result<Update, watcher::Error>)>;

/// Turns a watcher stream of `K` into store updates of `resource`.
fn updates<K, S>(resource: Resource, events: S, item: impl Fn(K) -> Item + Send + 'static) -> Events
where
    S: futures::Stream<Item = Result<Event<K>, watcher::Error>> + Send + 'static,
    K: Send + 'static,
{
    events
        .map(move |event| {
            let update = event.map(|event| match event {
                Event::Init => Update::Init(resource),
                Event::InitApply(object) => Update::InitApply(item(object)),
                Event::InitDone => Update::InitDone(resource),
                Event::Apply(object) => Update::Apply(item(object)),
                Event::Delete(object) => Update::Delete(item(object)),
            });
            (resource, update)
        })
        .boxed()
}

fn config() -> watcher::Config {
    // Lists may be served from the API server's watch cache: cheaper for it,
    // and the watch that follows brings the store up to date anyway.
    watcher::Config::default().any_semantic()
}

fn watch<K>(client: &Client, resource: Resource, item: impl Fn(K) -> Item + Send + 'static) -> Events
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
{
    updates(resource, watcher(Api::<K>::all(client.clone()), config()).default_backoff(), item)
}

fn watch_metadata<K>(client: &Client, resource: Resource, kind: &'static str) -> Events
where
    K: kube::Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + Debug + Send + 'static,
{
    // Metadata-only requests: the ownerReferences are all that is needed.
    let api = Api::<kube::core::PartialObjectMeta<K>>::all(client.clone());
    updates(resource, watcher(api, config()).default_backoff(), move |object: kube::core::PartialObjectMeta<K>| {
        convert::workload(kind, &object.metadata)
    })
}

/// Applies every watch event to the writer, forever.
pub(crate) async fn run(client: Client, mut writer: Writer) {
    let mut events = stream::select_all([
        watch::<core::Pod>(&client, Resource::Pods, convert::pod),
        watch::<core::Namespace>(&client, Resource::Namespaces, |namespace| convert::namespace(&namespace)),
        watch::<NetworkPolicy>(&client, Resource::NetworkPolicies, convert::network_policy),
        watch::<core::Service>(&client, Resource::Services, |service| convert::service(&service)),
        watch::<discovery::EndpointSlice>(&client, Resource::EndpointSlices, |slice| convert::endpoint_slice(&slice)),
        watch::<core::Node>(&client, Resource::Nodes, |node| convert::node(&node)),
        watch_metadata::<ReplicaSet>(&client, Resource::ReplicaSets, "ReplicaSet"),
        watch_metadata::<Job>(&client, Resource::Jobs, "Job"),
        watch::<FlowIntent>(&client, Resource::FlowIntents, |intent| convert::flow_intent(intent, None)),
        watch::<ClusterNetworkPolicy>(&client, Resource::ClusterNetworkPolicies, |policy| {
            convert::cluster_network_policy(policy, None)
        }),
    ]);
    // Custom resources whose CRD was found missing, until their watch works.
    let mut absent: BTreeSet<Resource> = BTreeSet::new();
    let mut tick = tokio::time::interval(writer.publish_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some((resource, Ok(update))) => {
                    if absent.remove(&resource) {
                        tracing::info!(resource = resource.name(), "custom resource installed: watching it");
                    }
                    writer.apply(resource, update);
                }
                Some((resource, Err(error))) => match CUSTOM.iter().find(|(custom, _)| *custom == resource) {
                    Some((_, missing)) if crd_absent(&error) => {
                        if absent.insert(resource) {
                            tracing::warn!("not installed: {missing}");
                            // What the API server does not serve, the cluster has none of.
                            writer.apply(resource, Update::Init(resource));
                            writer.apply(resource, Update::InitDone(resource));
                        }
                    }
                    _ => writer.error(resource, error_chain(&error)),
                },
                // The watchers never end; if they did there would be nothing left to do.
                None => return,
            },
            _ = tick.tick() => writer.tick(),
        }
    }
}

/// Whether a watch error says the resource does not exist: its CRD is not
/// installed.
fn crd_absent(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.is_not_found(),
        watcher::Error::WatchError(status) => status.is_not_found(),
        _ => false,
    }
}
