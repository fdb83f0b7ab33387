//! The FlowIntents and ClusterNetworkPolicies the judge compiles, as one
//! value.
//!
//! In: loaded manifests, or an inventory snapshot (which holds them in both
//! modes: read from manifests, or watched on the API server). Out: the
//! objects, with the file and line each came from when a manifest declared
//! it, so an invalid one is reported where it was written.

use super::resource::FlowIntent;
use crate::{
    inventory::manifests::{Manifests, Object, Origin},
    policy::cnp::api::ClusterNetworkPolicy,
};

/// The FlowIntents of a set of manifests, in file and document order.
#[derive(Clone, Debug, Default)]
pub struct LoadedIntents {
    /// The intents, to compile.
    pub intents: Vec<FlowIntent>,
    /// Where each came from, by the same position (empty when they came
    /// from the API server).
    pub origins: Vec<Origin>,
    /// The ClusterNetworkPolicies of the same manifests: like intents, the
    /// judge compiles them itself (with the NetworkPolicies).
    pub cluster_policies: Vec<ClusterNetworkPolicy>,
    /// Where each came from, by the same position (empty when they came
    /// from the API server).
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

    /// The file and line of the intent at `index` (an
    /// [`super::IntentError`]'s `index`), when a manifest declared it.
    pub fn origin(&self, index: usize) -> Option<&Origin> {
        (self.origins.len() == self.intents.len()).then(|| self.origins.get(index)).flatten()
    }
}
