//! Where FlowIntents come from: manifest files, or the API server.
//!
//! In: loaded manifests (standalone mode) or a kube client (in a cluster).
//! Out: the FlowIntents with the file and line each came from, so an invalid
//! one is reported where it was written; or a reflector store kept current by
//! a watch, whose snapshot is compiled the same way.

use futures::Stream;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};

use super::{compile::IntentError, resource::FlowIntent};
use crate::{
    inventory::manifests::{Manifests, Object, Origin},
    policy::cnp::ClusterNetworkPolicy,
};

/// The FlowIntents of a set of manifests, in file and document order.
#[derive(Clone, Debug, Default)]
pub struct LoadedIntents {
    /// The intents, to compile.
    pub intents: Vec<FlowIntent>,
    /// Where each came from, by the same position.
    pub origins: Vec<Origin>,
    /// The ClusterNetworkPolicies of the same manifests: like intents, the
    /// judge compiles them itself (with the NetworkPolicies).
    pub cluster_policies: Vec<ClusterNetworkPolicy>,
    /// Where each came from, by the same position.
    pub cluster_origins: Vec<Origin>,
}

impl LoadedIntents {
    /// Picks the FlowIntents out of loaded manifests.
    pub fn from_manifests(manifests: &Manifests) -> Self {
        let mut loaded = Self::default();
        for object in &manifests.objects {
            match &object.object {
                Object::FlowIntent(intent) => {
                    loaded.intents.push((**intent).clone());
                    loaded.origins.push(object.origin.clone());
                }
                Object::ClusterNetworkPolicy(policy) => {
                    loaded.cluster_policies.push((**policy).clone());
                    loaded.cluster_origins.push(object.origin.clone());
                }
                _ => {}
            }
        }
        loaded
    }

    /// The file and line of the intent an error is about.
    pub fn origin(&self, error: &IntentError) -> Option<&Origin> {
        self.origins.get(error.index)
    }
}

/// Watches every FlowIntent in the cluster: returns the store to read
/// snapshots from (`store.state()`) and the stream that keeps it current, to
/// be polled for as long as the store is used; it yields every changed intent.
pub fn watch(
    client: Client,
) -> (reflector::Store<FlowIntent>, impl Stream<Item = Result<FlowIntent, watcher::Error>> + Send) {
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<FlowIntent>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    (reader, stream)
}
