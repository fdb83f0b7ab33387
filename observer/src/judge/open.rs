//! Open flows and the policy state each started under.
//!
//! In: each judged record's flow id, event and time, and the policy outcome
//! its flow got when first judged. Out: per open flow, that outcome and the
//! policy generation it is known to hold for, so that a flow keeps the
//! verdict it started with across policy changes. Entries go at the flow's
//! end record; the map is bounded ([`MAX_OPEN_FLOWS`]): when full, entries
//! not seen for [`STALE_AFTER`] (flows whose end record was lost) go (at
//! most once a minute), and if it is still full a new flow is not tracked
//! (counted once, at its first record, and logged): it is judged with the
//! current policies at every record, as if it had started then, and is
//! tracked from a later record if room is made by then.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{FlowVerdict, delivery::Proof, outcome::PolicyOutcome};
use crate::FastMap;

/// Open flows tracked at most (about 50 bytes each).
pub(crate) const MAX_OPEN_FLOWS: usize = 262_144;

/// A tracked flow with no record for this long has ended unseen: capture
/// ends idle flows well before (TCP included, as expired).
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(3600);

/// Least time between two sweeps of a full map.
const SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// What policies a flow started under, and how they judge it now.
pub(crate) type Policy = Option<Arc<PolicyOutcome>>;

/// One open flow.
pub(crate) struct OpenFlow {
    /// The policy generation the flow was last checked against.
    pub(crate) generation: u64,
    /// The policy outcome it started under (`None`: policies do not apply).
    pub(crate) start: Policy,
    /// Its latest record's time.
    pub(crate) seen: SystemTime,
    /// Set while the current policies judge it otherwise than `start`.
    pub(crate) outlived: Option<Box<Outlived>>,
}

/// A flow the current policies judge otherwise than those it started under.
pub(crate) struct Outlived {
    /// The current policies' outcome.
    pub(crate) now: Policy,
    /// The verdicts (at start, now) its latest record got, by proof: reused
    /// while the evidence stays the same.
    pub(crate) last: Option<(Proof, Arc<FlowVerdict>, Arc<FlowVerdict>)>,
}

/// Open flows by capture's flow id.
#[derive(Default)]
pub(crate) struct OpenFlows {
    flows: FastMap<u64, OpenFlow>,
    /// New flows not tracked because the map was full (each counted at
    /// its first record).
    untracked: u64,
    /// No sweep for stale entries before this (a sweep reads every entry).
    next_sweep: Option<SystemTime>,
}

impl OpenFlows {
    /// The entry of flow `id`.
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut OpenFlow> {
        self.flows.get_mut(&id)
    }

    /// Starts tracking flow `id`, judged at `generation` with `start`;
    /// returns whether it is tracked. `first`: this is the flow's first
    /// record; a flow refused then is counted untracked, and its later
    /// records, refused again while the map stays full, are not counted again.
    pub(crate) fn insert(&mut self, id: u64, generation: u64, start: Policy, seen: SystemTime, first: bool) -> bool {
        if self.flows.len() >= MAX_OPEN_FLOWS {
            if self.next_sweep.is_none_or(|next| seen >= next) {
                self.flows.retain(|_, flow| seen.duration_since(flow.seen).unwrap_or_default() < STALE_AFTER);
                self.next_sweep = Some(seen + SWEEP_INTERVAL);
            }
            if self.flows.len() >= MAX_OPEN_FLOWS {
                if !first {
                    return false;
                }
                self.untracked += 1;
                if self.untracked.is_power_of_two() {
                    tracing::warn!(
                        untracked = self.untracked,
                        "too many open flows: new flows are judged with the current policies at each record"
                    );
                }
                return false;
            }
        }
        self.flows.insert(id, OpenFlow { generation, start, seen, outlived: None });
        true
    }

    /// Forgets flow `id` (its end record was judged).
    pub(crate) fn remove(&mut self, id: u64) {
        self.flows.remove(&id);
    }

    /// How many flows are tracked.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.flows.len()
    }

    /// New flows not tracked because the map was full.
    pub(crate) fn untracked(&self) -> u64 {
        self.untracked
    }
}

/// Whether two policy outcomes decide a flow alike (the versions cited may differ).
pub(crate) fn same_decision(a: &Policy, b: &Policy) -> bool {
    a.as_ref().map(|outcome| outcome.decision) == b.as_ref().map(|outcome| outcome.decision)
}

#[cfg(test)]
mod tests {
    use super::{super::outcome::Decision, *};

    #[test]
    fn a_full_map_sweeps_stale_flows_then_refuses_new_ones() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut open = OpenFlows::default();
        for id in 0..MAX_OPEN_FLOWS as u64 {
            assert!(open.insert(id, 1, None, start, true));
        }
        // Full of flows seen just now: the new one is not tracked.
        assert!(!open.insert(u64::MAX, 1, None, start + Duration::from_secs(1), true));
        assert_eq!((open.len(), open.untracked()), (MAX_OPEN_FLOWS, 1));
        // Its next record finds the map full again: the same flow, not counted again.
        assert!(!open.insert(u64::MAX, 1, None, start + Duration::from_secs(2), false));
        assert_eq!((open.len(), open.untracked()), (MAX_OPEN_FLOWS, 1));
        // One is seen again later; the rest have had no record for an hour:
        // the next sweep (a minute after the last) drops them.
        if let Some(flow) = open.get_mut(7) {
            flow.seen = start + STALE_AFTER;
        }
        assert!(!open.insert(u64::MAX, 1, None, start + Duration::from_secs(30), true), "no sweep before a minute");
        assert!(open.insert(u64::MAX, 1, None, start + STALE_AFTER + Duration::from_secs(1), true));
        assert_eq!(open.len(), 2);
        assert!(open.get_mut(7).is_some() && open.get_mut(u64::MAX).is_some());
        open.remove(7);
        assert_eq!(open.len(), 1);
        assert_eq!(open.untracked(), 2);
    }

    #[test]
    fn outcomes_decide_alike_by_allowing_or_not() {
        let outcome = |allowed: bool, reason: &str| {
            let decision = if allowed { Decision::Allowed } else { Decision::Denied };
            Some(Arc::new(PolicyOutcome { decision, policies: Vec::new(), reason: reason.to_owned() }))
        };
        assert!(same_decision(&outcome(true, "a"), &outcome(true, "b")), "other versions, same decision");
        assert!(!same_decision(&outcome(true, "a"), &outcome(false, "a")));
        assert!(!same_decision(&outcome(true, "a"), &None));
        assert!(same_decision(&None, &None));
    }
}
