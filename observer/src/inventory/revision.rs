//! Workload revisions: which version of each workload runs, and when it changed.
//!
//! In: every change of a pod the store holds (added, changed, deleted): its
//! workload, its revision label (`pod-template-hash`, which the Deployment
//! controller puts on its ReplicaSets' pods, or `controller-revision-hash`,
//! which StatefulSets and DaemonSets put on theirs) and its containers'
//! images, with the time the store saw it. Out: per workload, the revision it
//! runs now with its images and the latest [`Rollout`] (from, to, images,
//! when), and a count of rollouts since start.
//!
//! A workload rolls out when, after the first full list of pods, a pod
//! appears (or is relabelled) with a revision none of the workload's pods
//! has, while the workload runs another: the first pod of a new ReplicaSet or
//! controller revision, or of an old one rolled back to once its pods were
//! gone. Pods of the first list set the revision without a rollout (nothing
//! says when they came). When every pod of the current revision is gone while
//! others remain (a rollout under way when the observer started, or rolled
//! back before it finished), the revision with the most pods becomes current,
//! without a rollout. A workload with no pods left keeps its revision for an
//! hour, so a rollout that deletes the old pods before it creates the new
//! ones (strategy `Recreate`, or one replica with `maxSurge: 0`) is still
//! seen; then it is forgotten, so memory follows the workloads running.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Serialize, Serializer};

use super::{endpoint::WorkloadRef, model::Labels};
use crate::FastMap;

/// The label the Deployment controller puts on its ReplicaSets' pods.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The label StatefulSets and DaemonSets put on their pods.
pub const CONTROLLER_REVISION_HASH: &str = "controller-revision-hash";

/// How long a workload with no pods keeps its revision.
pub const EMPTY_RETENTION: Duration = Duration::from_secs(3600);

/// A pod's revision from its labels: `pod-template-hash`, else
/// `controller-revision-hash`; `None` when neither is set (a bare pod, a Job's).
pub fn revision_of(labels: &Labels) -> Option<&str> {
    labels
        .get(POD_TEMPLATE_HASH)
        .or_else(|| labels.get(CONTROLLER_REVISION_HASH))
        .map(String::as_str)
        .filter(|revision| !revision.is_empty())
}

/// The key a workload's revisions are found under: `namespace/Kind/name`,
/// the way spike edges name a pod's end.
pub fn workload_key(namespace: &str, kind: &str, name: &str) -> String {
    format!("{namespace}/{kind}/{name}")
}

fn rfc3339<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::flow::rfc3339(*time))
}

/// A change of a workload's revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Rollout {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload.
    pub workload: WorkloadRef,
    /// The revision it ran before.
    pub from: String,
    /// The revision it runs now.
    pub to: String,
    /// The container images of the new revision's first pod, in the pod's order.
    pub images: Vec<String>,
    /// When the inventory saw the new revision's first pod (RFC 3339).
    #[serde(serialize_with = "rfc3339")]
    pub at: SystemTime,
}

/// One revision with pods.
#[derive(Clone, Debug)]
struct Live {
    name: Arc<str>,
    images: Arc<[String]>,
    pods: u32,
}

/// What the inventory knows of one workload's revisions.
#[derive(Clone, Debug, Default)]
pub struct WorkloadRevisions {
    /// The revision it runs now, with its images.
    current: Option<(Arc<str>, Arc<[String]>)>,
    /// Revisions with pods now.
    live: Vec<Live>,
    /// The latest rollout.
    latest: Option<Arc<Rollout>>,
    /// When its last pod went; `None` while it has pods.
    empty_since: Option<SystemTime>,
}

impl WorkloadRevisions {
    /// The revision it runs now.
    pub fn current(&self) -> Option<&str> {
        self.current.as_ref().map(|(revision, _)| revision.as_ref())
    }

    /// The images of the revision it runs now.
    pub fn images(&self) -> &[String] {
        self.current.as_ref().map_or(&[], |(_, images)| images.as_ref())
    }

    /// The latest rollout seen, if any.
    pub fn latest_rollout(&self) -> Option<&Rollout> {
        self.latest.as_deref()
    }

    /// Revisions with pods now, and how many pods each has, in no order.
    pub fn live(&self) -> impl Iterator<Item = (&str, u32)> {
        self.live.iter().map(|live| (live.name.as_ref(), live.pods))
    }

    /// Counts one pod of `pod`'s revision; returns the rollout it starts.
    fn add(
        &mut self,
        pod: &PodRevision,
        images: impl FnOnce() -> Arc<[String]>,
        now: SystemTime,
        detect: bool,
    ) -> Option<Arc<Rollout>> {
        self.empty_since = None;
        if let Some(live) = self.live.iter_mut().find(|live| *live.name == *pod.revision) {
            live.pods += 1;
            return None;
        }
        let name: Arc<str> = Arc::from(pod.revision.as_str());
        let images = images();
        self.live.push(Live { name: Arc::clone(&name), images: Arc::clone(&images), pods: 1 });
        let from = match &self.current {
            None => {
                self.current = Some((name, images));
                return None;
            }
            Some((current, _)) if *current == name || !detect => return None,
            Some((current, _)) => current.to_string(),
        };
        let rollout = Arc::new(Rollout {
            namespace: pod.namespace.clone(),
            workload: pod.workload.clone(),
            from,
            to: pod.revision.clone(),
            images: images.to_vec(),
            at: now,
        });
        self.current = Some((name, images));
        self.latest = Some(Arc::clone(&rollout));
        Some(rollout)
    }

    /// Uncounts one pod of `revision`.
    fn remove(&mut self, revision: &str, now: SystemTime) {
        if let Some(index) = self.live.iter().position(|live| *live.name == *revision) {
            self.live[index].pods -= 1;
            if self.live[index].pods == 0 {
                self.live.swap_remove(index);
            }
        }
        if self.live.is_empty() {
            self.empty_since = Some(now);
            return;
        }
        let current_live = self.current().is_some_and(|current| self.live.iter().any(|live| *live.name == *current));
        if !current_live && let Some(most) = self.live.iter().max_by_key(|live| live.pods) {
            self.current = Some((Arc::clone(&most.name), Arc::clone(&most.images)));
        }
    }

    fn images_of(&self, revision: &str) -> Option<Arc<[String]>> {
        self.live.iter().find(|live| *live.name == *revision).map(|live| Arc::clone(&live.images))
    }
}

/// Where one pod counts: its workload and revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodRevision {
    namespace: String,
    workload: WorkloadRef,
    revision: String,
}

impl PodRevision {
    /// Where a pod of `namespace` with `labels` and `workload` counts;
    /// `None` for a bare pod or a pod without a revision label.
    pub(crate) fn of(namespace: &str, labels: &Labels, workload: Option<&WorkloadRef>) -> Option<Self> {
        let workload = workload.filter(|workload| workload.kind != "Pod")?;
        let revision = revision_of(labels)?;
        Some(Self { namespace: namespace.to_owned(), workload: workload.clone(), revision: revision.to_owned() })
    }

    fn key(&self) -> String {
        workload_key(&self.namespace, &self.workload.kind, &self.workload.name)
    }
}

/// The revisions of every workload with pods, shared with snapshots (copied
/// on the first change after one was taken).
#[derive(Clone, Debug, Default)]
pub(crate) struct Revisions {
    workloads: Arc<FastMap<Arc<str>, WorkloadRevisions>>,
    rollouts: u64,
}

impl Revisions {
    /// A pod that counted at `old` now counts at `new` (either absent: added,
    /// deleted, or without a revision), its containers running `images` (not
    /// known when the pod itself did not change: then those its old revision
    /// had). Rollouts are detected once `listed` (the first full list of pods
    /// is in), for a pod new to the store or relabelled within its workload;
    /// a pod that only changed workload (its owner became known) moves
    /// without one. Returns the rollout it starts.
    pub(crate) fn change(
        &mut self,
        old: Option<&PodRevision>,
        new: Option<&PodRevision>,
        images: Option<&[String]>,
        known: bool,
        listed: bool,
        now: SystemTime,
    ) -> Option<Arc<Rollout>> {
        if old == new {
            return None;
        }
        let detect = listed && (!known || old.zip(new).is_some_and(|(old, new)| old.key() == new.key()));
        let old_images = old.and_then(|old| self.workloads.get(old.key().as_str())?.images_of(&old.revision));
        let workloads = Arc::make_mut(&mut self.workloads);
        let mut rollout = None;
        if let Some(new) = new {
            let key = new.key();
            let images = || match images {
                Some(images) => Arc::from(images),
                None => old_images.unwrap_or_default(),
            };
            let entry = match workloads.get_mut(key.as_str()) {
                Some(entry) => entry,
                None => workloads.entry(Arc::from(key)).or_default(),
            };
            rollout = entry.add(new, images, now, detect);
        }
        if let Some(old) = old
            && let Some(entry) = workloads.get_mut(old.key().as_str())
        {
            entry.remove(&old.revision, now);
        }
        if let Some(rollout) = &rollout {
            self.rollouts += 1;
            tracing::info!(
                namespace = rollout.namespace,
                kind = rollout.workload.kind,
                workload = rollout.workload.name,
                from = rollout.from,
                to = rollout.to,
                images = ?rollout.images,
                "workload revision changed"
            );
        }
        rollout
    }

    /// Forgets workloads without pods for longer than [`EMPTY_RETENTION`].
    pub(crate) fn prune(&mut self, now: SystemTime) {
        let Some(horizon) = now.checked_sub(EMPTY_RETENTION) else { return };
        let expired = |entry: &WorkloadRevisions| entry.empty_since.is_some_and(|since| since < horizon);
        if self.workloads.values().any(expired) {
            Arc::make_mut(&mut self.workloads).retain(|_, entry| !expired(entry));
        }
    }

    /// Every workload's revisions, shared.
    pub(crate) fn shared(&self) -> Arc<FastMap<Arc<str>, WorkloadRevisions>> {
        Arc::clone(&self.workloads)
    }

    /// Rollouts seen since start.
    pub(crate) fn rollouts(&self) -> u64 {
        self.rollouts
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn at(kind: &str, name: &str, revision: &str) -> PodRevision {
        let labels: Labels = [(POD_TEMPLATE_HASH.to_owned(), revision.to_owned())].into();
        let workload = WorkloadRef { kind: kind.to_owned(), name: name.to_owned() };
        PodRevision::of("ai", &labels, Some(&workload)).expect("a revision")
    }

    fn images(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn state(revisions: &Revisions, key: &str) -> Option<(String, Vec<(String, u32)>)> {
        let entry = revisions.workloads.get(key)?;
        let mut live: Vec<(String, u32)> = entry.live().map(|(name, pods)| (name.to_owned(), pods)).collect();
        live.sort();
        Some((entry.current()?.to_owned(), live))
    }

    #[test]
    fn the_revision_comes_from_the_template_hash_else_the_controller_revision() {
        let labels = |pairs: &[(&str, &str)]| -> Labels {
            pairs.iter().map(|(key, value)| ((*key).to_owned(), (*value).to_owned())).collect()
        };
        assert_eq!(revision_of(&labels(&[(POD_TEMPLATE_HASH, "7d9f")])), Some("7d9f"));
        assert_eq!(revision_of(&labels(&[(CONTROLLER_REVISION_HASH, "db-5c8d")])), Some("db-5c8d"));
        assert_eq!(revision_of(&labels(&[(POD_TEMPLATE_HASH, "a"), (CONTROLLER_REVISION_HASH, "b")])), Some("a"));
        assert_eq!(revision_of(&labels(&[(POD_TEMPLATE_HASH, "")])), None);
        assert_eq!(revision_of(&labels(&[("app", "x")])), None);
        let bare = WorkloadRef { kind: "Pod".to_owned(), name: "debug".to_owned() };
        assert_eq!(PodRevision::of("ai", &labels(&[(POD_TEMPLATE_HASH, "a")]), Some(&bare)), None);
    }

    #[test]
    fn a_new_revisions_first_pod_is_a_rollout_with_its_images() {
        let mut revisions = Revisions::default();
        let (old, new) = (at("Deployment", "model", "7d9f"), at("Deployment", "model", "5c8d"));
        let v1 = images(&["registry.example/model:1", "registry.example/proxy:2"]);
        let v2 = images(&["registry.example/model:2", "registry.example/proxy:2"]);
        // The first list: no rollout, even with two revisions in it.
        assert_eq!(revisions.change(None, Some(&old), Some(&v1), false, false, t(0)), None);
        assert_eq!(revisions.change(None, Some(&old), Some(&v1), false, false, t(0)), None);
        let first = revisions.change(None, Some(&new), Some(&v2), false, true, t(10)).expect("a rollout");
        assert_eq!(
            serde_json::to_value(&*first).expect("json"),
            serde_json::json!({"namespace": "ai", "workload": {"kind": "Deployment", "name": "model"},
                "from": "7d9f", "to": "5c8d", "images": v2, "at": "2023-11-14T22:13:30.000Z"})
        );
        // More pods of the new revision, old ones going: no other rollout.
        assert_eq!(revisions.change(None, Some(&new), Some(&v2), false, true, t(11)), None);
        assert_eq!(revisions.change(Some(&old), None, None, true, true, t(12)), None);
        let key = "ai/Deployment/model";
        assert_eq!(
            state(&revisions, key),
            Some(("5c8d".to_owned(), vec![("5c8d".to_owned(), 2), ("7d9f".to_owned(), 1)]))
        );
        assert_eq!(revisions.rollouts(), 1);
        let shared = revisions.shared();
        let entry = shared.get(key).expect("held");
        assert_eq!(entry.images(), v2.as_slice());
        assert_eq!(entry.latest_rollout().map(|rollout| rollout.at), Some(t(10)));
        // A status change of a pod (same place) changes nothing.
        assert_eq!(revisions.change(Some(&new), Some(&new), Some(&v2), true, true, t(13)), None);
        assert!(Arc::ptr_eq(&shared, &revisions.shared()), "nothing copied for no change");
    }

    #[test]
    fn a_relabelled_pod_and_a_recreate_rollout_are_rollouts() {
        let mut revisions = Revisions::default();
        let (a, b, c) =
            (at("StatefulSet", "db", "db-1"), at("StatefulSet", "db", "db-2"), at("StatefulSet", "db", "db-3"));
        let v = images(&["db:1"]);
        revisions.change(None, Some(&a), Some(&v), false, true, t(0));
        // The same pod, its labels now another revision (how manifests model it).
        let relabelled = revisions.change(Some(&a), Some(&b), Some(&v), true, true, t(5)).expect("a rollout");
        assert_eq!((relabelled.from.as_str(), relabelled.to.as_str()), ("db-1", "db-2"));
        // Recreate: the only pod goes, then one of a new revision comes.
        revisions.change(Some(&b), None, None, true, true, t(6));
        assert_eq!(state(&revisions, "ai/StatefulSet/db"), Some(("db-2".to_owned(), vec![])));
        let recreated = revisions.change(None, Some(&c), Some(&v), false, true, t(7)).expect("a rollout");
        assert_eq!((recreated.from.as_str(), recreated.to.as_str(), recreated.at), ("db-2", "db-3", t(7)));
        // A rollback to a revision whose pods are gone is one too.
        revisions.change(None, Some(&a), Some(&v), false, true, t(8)).expect("a rollback");
        assert_eq!(revisions.rollouts(), 3);
    }

    #[test]
    fn a_pod_that_only_changes_workload_moves_without_a_rollout_and_keeps_its_images() {
        let mut revisions = Revisions::default();
        let guessed = at("ReplicaSet", "model-7d9f", "7d9f");
        let known = at("Deployment", "model", "7d9f");
        let other = at("Deployment", "model", "5c8d");
        revisions.change(None, Some(&other), Some(&images(&["m:2"])), false, true, t(0));
        revisions.change(None, Some(&guessed), Some(&images(&["m:1"])), false, true, t(0));
        assert_eq!(revisions.change(Some(&guessed), Some(&known), None, true, true, t(1)), None);
        assert_eq!(revisions.rollouts(), 0);
        let shared = revisions.shared();
        assert_eq!(shared.get("ai/ReplicaSet/model-7d9f").map(|entry| entry.live().count()), Some(0), "moved out");
        let entry = shared.get("ai/Deployment/model").expect("held");
        assert_eq!(entry.current(), Some("5c8d"));
        assert_eq!(entry.images_of("7d9f").as_deref(), Some(images(&["m:1"]).as_slice()));
    }

    #[test]
    fn when_the_current_revisions_pods_are_gone_the_one_left_is_current() {
        let mut revisions = Revisions::default();
        let (old, new) = (at("Deployment", "web", "old"), at("Deployment", "web", "new"));
        // Started mid-rollout: the first list holds both, the first seen is current.
        revisions.change(None, Some(&old), Some(&images(&["w:1"])), false, false, t(0));
        for _ in 0..2 {
            revisions.change(None, Some(&new), Some(&images(&["w:2"])), false, false, t(0));
        }
        assert_eq!(state(&revisions, "ai/Deployment/web").map(|state| state.0), Some("old".to_owned()));
        revisions.change(Some(&old), None, None, true, true, t(5));
        let shared = revisions.shared();
        let entry = shared.get("ai/Deployment/web").expect("held");
        assert_eq!((entry.current(), entry.images()), (Some("new"), images(&["w:2"]).as_slice()));
        assert!(entry.latest_rollout().is_none(), "no rollout was seen");
    }

    #[test]
    fn workloads_without_pods_are_forgotten_after_the_retention() {
        let mut revisions = Revisions::default();
        let pod = at("Deployment", "job", "1");
        revisions.change(None, Some(&pod), Some(&[]), false, true, t(0));
        revisions.change(Some(&pod), None, None, true, true, t(10));
        revisions.prune(t(10) + EMPTY_RETENTION);
        assert!(revisions.shared().contains_key("ai/Deployment/job"), "kept for the retention");
        revisions.prune(t(11) + EMPTY_RETENTION);
        assert!(revisions.shared().is_empty());
    }
}
