//! Where ClusterNetworkPolicies come from in a cluster: a watch.
//!
//! In: a kube client. Out: a reflector store kept current by a watch, and
//! whether a watch error means the CRD is not installed (then the observer
//! judges without ClusterNetworkPolicies, and says so once).

use futures::Stream;
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, reflector, watcher},
};

use super::api::ClusterNetworkPolicy;

/// Watches every ClusterNetworkPolicy: returns the store to read snapshots
/// from and the stream that keeps it current, to be polled for as long as
/// the store is used; it yields every changed policy.
pub fn watch(
    client: Client,
) -> (reflector::Store<ClusterNetworkPolicy>, impl Stream<Item = Result<ClusterNetworkPolicy, watcher::Error>> + Send) {
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<ClusterNetworkPolicy>::all(client), watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    (reader, stream)
}

/// Whether a watch error says the resource does not exist: the
/// ClusterNetworkPolicy CRD is not installed.
pub fn crd_absent(error: &watcher::Error) -> bool {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.is_not_found(),
        watcher::Error::WatchError(status) => status.is_not_found(),
        _ => false,
    }
}
