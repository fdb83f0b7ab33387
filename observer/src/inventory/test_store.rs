//! An inventory store for unit tests of what reads snapshots: pods listed,
//! then changed, each at a given time, with the images they run.

use super::model::Pod;
/// An inventory store for tests of what reads snapshots: a first full list,
/// then changes, each at a given time.
pub struct TestStore(super::store::Store);

impl TestStore {
    /// Every required resource listed at `at`, with `pods` running `images`.
    pub fn listed(pods: Vec<(Pod, &[&str])>, at: std::time::SystemTime) -> Self {
        use super::{resource::Resource, store::Update};
        let mut store = super::store::Store::new(&super::InventoryConfig::default());
        for resource in Resource::REQUIRED {
            store.apply(Update::Init(resource), at);
            if resource == Resource::Pods {
                for (pod, images) in &pods {
                    store.apply(Update::InitApply(pod_item(pod.clone(), images)), at);
                }
            }
            store.apply(Update::InitDone(resource), at);
        }
        Self(store)
    }

    /// Adds or changes `pod`, running `images`, at `at`.
    pub fn apply(&mut self, pod: Pod, images: &[&str], at: std::time::SystemTime) {
        self.0.apply(super::store::Update::Apply(pod_item(pod, images)), at);
    }

    /// The snapshot at `at`.
    pub fn snapshot(&mut self, at: std::time::SystemTime) -> super::Snapshot {
        self.0.snapshot(at)
    }
}

fn pod_item(pod: Pod, images: &[&str]) -> super::store::Item {
    let images = images.iter().map(|image| (*image).to_owned()).collect();
    super::store::Item::Pod(Box::new(super::store::PodItem { pod, mirror_uid: None, images }))
}
