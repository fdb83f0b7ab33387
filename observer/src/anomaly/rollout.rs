//! Rollouts as the spike detector sees them.
//!
//! In: an edge and the inventory snapshot (each workload's revision and
//! latest rollout). Out: the edge's version, a number that changes when the
//! revision its source or destination workload runs does (what per-revision
//! baselines are kept by), and for a spike, the [`AfterRollout`] that names
//! the latest rollout of either end within `after_rollout_seconds` before it.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    time::{Duration, SystemTime},
};

use super::detector::EdgeKey;
use crate::inventory::{Rollout, Snapshot};

/// Which end of an edge rolled out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum End {
    /// The source workload.
    Source,
    /// The destination workload.
    Destination,
}

/// The rollout a spike followed, for its finding (`evidence.after_rollout`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AfterRollout {
    /// The end whose workload rolled out.
    pub end: End,
    /// `namespace`, `workload: {kind, name}`, `from`, `to`, `images` and `at`.
    #[serde(flatten)]
    pub rollout: Rollout,
}

/// The version of `edge`'s ends in `snapshot`: 0 when neither end is a
/// workload with a revision, else a hash of the revisions both run. Pod ends
/// are named `namespace/Kind/name` in edges, the key the inventory keeps
/// revisions under.
pub fn edge_version(snapshot: &Snapshot, edge: &EdgeKey) -> u64 {
    let current = |name: &str| snapshot.workload_revisions(name).and_then(|revisions| revisions.current());
    let (source, destination) = (current(&edge.source), current(&edge.destination));
    if source.is_none() && destination.is_none() {
        return 0;
    }
    // The same on every run and node: SipHash with fixed keys.
    let mut hasher = DefaultHasher::new();
    (source, destination).hash(&mut hasher);
    hasher.finish().max(1)
}

/// The latest rollout of `edge`'s source or destination workload at most
/// `within` before `at` (and not after it); `None` when neither rolled out
/// then, or `within` is zero.
pub fn after_rollout(snapshot: &Snapshot, edge: &EdgeKey, at: SystemTime, within: Duration) -> Option<AfterRollout> {
    if within.is_zero() {
        return None;
    }
    let recent = |end: End, name: &str| {
        let rollout = snapshot.workload_revisions(name)?.latest_rollout()?;
        let since = at.duration_since(rollout.at).ok()?;
        (since <= within).then_some((end, rollout))
    };
    let (end, rollout) = [recent(End::Source, &edge.source), recent(End::Destination, &edge.destination)]
        .into_iter()
        .flatten()
        .max_by_key(|(_, rollout)| rollout.at)?;
    Some(AfterRollout { end, rollout: rollout.clone() })
}

#[cfg(test)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::{inventory::test_store::TestStore, testing::pod};

    fn t(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
    }

    fn model(hash: &str) -> crate::inventory::model::Pod {
        pod("model-x").ns("ai").owner("ReplicaSet", &format!("model-{hash}")).label("pod-template-hash", hash).build()
    }

    fn edge(source: &str, destination: &str) -> EdgeKey {
        EdgeKey { source: source.into(), destination: destination.into(), port: 8080 }
    }

    #[test]
    fn the_edge_version_follows_the_revisions_of_its_ends() {
        let agent = pod("agent").ns("ai").build();
        let mut store = TestStore::listed(vec![(agent, &["agent:1"]), (model("7d9f"), &["model:1"])], t(0));
        let to_model = edge("ai/Pod/agent", "ai/Deployment/model");
        let before = store.snapshot(t(1));
        let v1 = edge_version(&before, &to_model);
        assert_ne!(v1, 0);
        assert_eq!(edge_version(&before, &to_model), v1, "the same revisions, the same version");
        assert_eq!(edge_version(&before, &edge("ai/Pod/agent", "203.0.113.7")), 0, "no end with a revision");
        let from_model = edge("ai/Deployment/model", "ai/Pod/agent");
        assert_ne!(edge_version(&before, &from_model), 0);
        store.apply(model("5c8d"), &["model:2"], t(100));
        let after = store.snapshot(t(101));
        let v2 = edge_version(&after, &to_model);
        assert!(v2 != v1 && v2 != 0, "{v1} {v2}");
    }

    #[test]
    fn a_spike_within_the_window_after_a_rollout_names_it() {
        let agent = pod("agent").ns("ai").build();
        let mut store = TestStore::listed(vec![(agent, &["agent:1"]), (model("7d9f"), &["model:1"])], t(0));
        store.apply(model("5c8d"), &["registry.example/model:2", "registry.example/proxy:2"], t(100));
        let snapshot = store.snapshot(t(101));
        let to_model = edge("ai/Pod/agent", "ai/Deployment/model");
        let within = Duration::from_secs(900);
        let after = after_rollout(&snapshot, &to_model, t(160), within).expect("a minute after the rollout");
        assert_eq!(
            serde_json::to_value(&after).expect("json"),
            serde_json::json!({"end": "destination", "namespace": "ai",
                "workload": {"kind": "Deployment", "name": "model"}, "from": "7d9f", "to": "5c8d",
                "images": ["registry.example/model:2", "registry.example/proxy:2"],
                "at": "2023-11-14T22:15:00.000Z"})
        );
        let reverse = after_rollout(&snapshot, &edge("ai/Deployment/model", "ai/Pod/agent"), t(160), within);
        assert_eq!(reverse.map(|after| after.end), Some(End::Source));
        assert!(after_rollout(&snapshot, &to_model, t(1000), within).is_some(), "900 s after: still within");
        assert_eq!(after_rollout(&snapshot, &to_model, t(1001), within), None, "901 s after");
        assert_eq!(after_rollout(&snapshot, &to_model, t(99), within), None, "before the rollout");
        assert_eq!(after_rollout(&snapshot, &to_model, t(160), Duration::ZERO), None, "turned off");
        assert_eq!(after_rollout(&snapshot, &edge("ai/Pod/agent", "203.0.113.7"), t(160), within), None);
    }
}
