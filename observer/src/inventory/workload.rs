//! Finds the workload at the top of a pod's ownerReference chain.
//!
//! In: a pod and the workload controllers known (ReplicaSets, Jobs and the
//! rest, from the cluster or from manifests). Out: a [`WorkloadRef`]: the
//! Deployment of a ReplicaSet, the CronJob of a Job, a StatefulSet or
//! DaemonSet, any other controller as it is named, or the pod itself when bare.

use std::collections::HashMap;

use super::{
    endpoint::WorkloadRef,
    manifests::Workload,
    model::{OwnerRef, Pod},
    resource::Resource,
};

/// How far up a chain to follow before giving up: real chains are two long.
const MAX_DEPTH: usize = 8;

/// Label the Deployment controller puts on its ReplicaSets' pods.
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Workload controllers indexed for ownerReference lookups.
#[derive(Clone, Debug, Default)]
pub struct Workloads {
    by_uid: HashMap<String, Workload>,
    /// For manifests whose objects or ownerReferences carry no real uid.
    by_name: HashMap<(String, String, String), Workload>,
}

impl Workloads {
    /// Adds or replaces a controller.
    pub fn insert(&mut self, workload: Workload) {
        let key = (workload.namespace.clone(), workload.kind.clone(), workload.name.clone());
        if let Some(uid) = workload.uid.clone().filter(|uid| !uid.is_empty()) {
            self.by_uid.insert(uid, workload.clone());
        }
        self.by_name.insert(key, workload);
    }

    /// Removes a controller.
    pub fn remove(&mut self, workload: &Workload) {
        if let Some(uid) = &workload.uid {
            self.by_uid.remove(uid);
        }
        self.by_name.remove(&(workload.namespace.clone(), workload.kind.clone(), workload.name.clone()));
    }

    /// Number of controllers known that are listed under `resource`.
    pub fn count_of(&self, resource: Resource) -> usize {
        self.by_name.values().filter(|workload| Resource::of_workload_kind(&workload.kind) == resource).count()
    }

    /// Forgets every controller listed under `resource` except those `keep`
    /// holds on to, before a full list.
    pub fn clear_of(&mut self, resource: Resource, keep: impl Fn(&Workload) -> bool) {
        let stays = |workload: &Workload| Resource::of_workload_kind(&workload.kind) != resource || keep(workload);
        self.by_uid.retain(|_, workload| stays(workload));
        self.by_name.retain(|_, workload| stays(workload));
    }

    fn find(&self, namespace: &str, owner: &OwnerRef) -> Option<&Workload> {
        self.by_uid
            .get(&owner.uid)
            .filter(|workload| workload.kind == owner.kind)
            .or_else(|| self.by_name.get(&(namespace.to_owned(), owner.kind.clone(), owner.name.clone())))
    }

    /// The top of `pod`'s ownerReference chain.
    pub fn top_of(&self, pod: &Pod) -> WorkloadRef {
        let (kind, name) = self.top(pod);
        WorkloadRef { kind: kind.to_owned(), name: name.to_owned() }
    }

    /// Whether `workload` is the top of `pod`'s chain: [`Self::top_of`]
    /// without building it.
    pub fn is_top_of(&self, pod: &Pod, workload: &WorkloadRef) -> bool {
        self.top(pod) == (workload.kind.as_str(), workload.name.as_str())
    }

    /// The kind and name of the top of `pod`'s chain.
    fn top<'a>(&'a self, pod: &'a Pod) -> (&'a str, &'a str) {
        let Some(mut owner) = pod.owner.as_ref() else {
            return ("Pod", &pod.name);
        };
        for _ in 0..MAX_DEPTH {
            match self.find(&pod.namespace, owner) {
                Some(Workload { owner: Some(next), .. }) => owner = next,
                Some(_) => break,
                None => return guess_unknown_owner(pod, owner),
            }
        }
        (&owner.kind, &owner.name)
    }
}

/// When the owner itself is not known (not synced yet, or not readable), a
/// ReplicaSet whose name is `<deployment>-<pod-template-hash>` is taken to
/// belong to that Deployment, as the Deployment controller names them so.
fn guess_unknown_owner<'a>(pod: &'a Pod, owner: &'a OwnerRef) -> (&'a str, &'a str) {
    if owner.kind == "ReplicaSet"
        && let Some(hash) = pod.labels.get(POD_TEMPLATE_HASH)
        && let Some(deployment) = owner.name.strip_suffix(hash.as_str()).and_then(|name| name.strip_suffix('-'))
        && !deployment.is_empty()
    {
        return ("Deployment", deployment);
    }
    (&owner.kind, &owner.name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pod;

    fn owner(kind: &str, name: &str, uid: &str) -> OwnerRef {
        OwnerRef { kind: kind.to_owned(), name: name.to_owned(), uid: uid.to_owned() }
    }

    fn controller(kind: &str, name: &str, uid: &str, parent: Option<OwnerRef>) -> Workload {
        Workload {
            kind: kind.to_owned(),
            namespace: "shop".to_owned(),
            name: name.to_owned(),
            uid: Some(uid.to_owned()),
            owner: parent,
        }
    }

    fn top(workloads: &Workloads, pod: &Pod) -> (String, String) {
        let top = workloads.top_of(pod);
        (top.kind, top.name)
    }

    fn pair(kind: &str, name: &str) -> (String, String) {
        (kind.to_owned(), name.to_owned())
    }

    #[test]
    fn chains_resolve_to_their_top() {
        let mut workloads = Workloads::default();
        workloads.insert(controller(
            "ReplicaSet",
            "web-7d9",
            "uid-web-7d9",
            Some(owner("Deployment", "web", "uid-web")),
        ));
        workloads.insert(controller("Deployment", "web", "uid-web", None));
        workloads.insert(controller(
            "Job",
            "backup-2890",
            "uid-backup-2890",
            Some(owner("CronJob", "backup", "uid-backup")),
        ));
        workloads.insert(controller("Job", "migrate", "uid-migrate", None));

        let web = pod("web-7d9-x").ns("shop").owner("ReplicaSet", "web-7d9").build();
        assert_eq!(top(&workloads, &web), pair("Deployment", "web"));
        let backup = pod("backup-2890-q").ns("shop").owner("Job", "backup-2890").build();
        assert_eq!(top(&workloads, &backup), pair("CronJob", "backup"));
        let migrate = pod("migrate-z").ns("shop").owner("Job", "migrate").build();
        assert_eq!(top(&workloads, &migrate), pair("Job", "migrate"));
        let db = pod("db-0").ns("shop").owner("StatefulSet", "db").build();
        assert_eq!(top(&workloads, &db), pair("StatefulSet", "db"));
        let agent = pod("agent-x").ns("shop").owner("DaemonSet", "agent").build();
        assert_eq!(top(&workloads, &agent), pair("DaemonSet", "agent"));
        assert_eq!(top(&workloads, &pod("debug").ns("shop").build()), pair("Pod", "debug"));
    }

    #[test]
    fn manifests_without_uids_match_by_name() {
        let mut workloads = Workloads::default();
        workloads.insert(Workload {
            uid: None,
            ..controller("ReplicaSet", "api-5f", "", Some(owner("Deployment", "api", "")))
        });
        let api = pod("api-5f-a").ns("shop").owner("ReplicaSet", "api-5f").build();
        assert_eq!(top(&workloads, &api), pair("Deployment", "api"));
    }

    #[test]
    fn unknown_replicaset_is_guessed_only_from_its_template_hash() {
        let workloads = Workloads::default();
        let hashed =
            pod("web-7d9-x").ns("shop").owner("ReplicaSet", "web-7d9").label("pod-template-hash", "7d9").build();
        assert_eq!(top(&workloads, &hashed), pair("Deployment", "web"));
        let unhashed = pod("solo-x").ns("shop").owner("ReplicaSet", "solo").build();
        assert_eq!(top(&workloads, &unhashed), pair("ReplicaSet", "solo"));
        // A ReplicaSet known to have no owner is a bare ReplicaSet, whatever its name says.
        let mut known = Workloads::default();
        known.insert(controller("ReplicaSet", "web-7d9", "uid-web-7d9", None));
        assert_eq!(top(&known, &hashed), pair("ReplicaSet", "web-7d9"));
    }

    #[test]
    fn an_ownership_cycle_stops() {
        let mut workloads = Workloads::default();
        workloads.insert(controller("ReplicaSet", "a", "uid-a", Some(owner("ReplicaSet", "b", "uid-b"))));
        workloads.insert(controller("ReplicaSet", "b", "uid-b", Some(owner("ReplicaSet", "a", "uid-a"))));
        let looped = pod("p").ns("shop").owner("ReplicaSet", "a").build();
        assert_eq!(top(&workloads, &looped).0, "ReplicaSet");
    }
}
