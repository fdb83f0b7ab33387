//! Health of the inventory, for `/health`, metrics and logs.
//!
//! In: successes and errors of each source resource, and the store's counts.
//! Out: a [`Status`]: synced or not, stale or not, object and error counts per
//! resource. A watch that keeps failing makes the inventory stale; that is
//! reported here and logged, never hidden behind the last good state.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use serde::{Serialize, Serializer};

use super::resource::Resource;

/// kube's watcher retries at most 30 s apart (its default backoff): errors
/// further apart than this belong to different outages, and a resource
/// that stopped reporting errors for this long has reconnected.
const OUTAGE_GAP: Duration = Duration::from_secs(65);

fn unix_seconds<S: Serializer>(time: &Option<SystemTime>, serializer: S) -> Result<S::Ok, S::Error> {
    match time.and_then(|time| time.duration_since(SystemTime::UNIX_EPOCH).ok()) {
        Some(since_epoch) => serializer.serialize_some(&since_epoch.as_secs_f64()),
        None => serializer.serialize_none(),
    }
}

/// Health of one resource.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ResourceStatus {
    /// Whether its first full list has been applied.
    pub listed: bool,
    /// Objects held.
    pub objects: usize,
    /// Errors since start (failed lists and watches, `410 Gone`, unreadable manifests).
    pub errors: u64,
    /// The latest error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Start of the current run of failures (Unix seconds), if failing.
    #[serde(serialize_with = "unix_seconds", skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<SystemTime>,
    /// Failing for longer than the configured threshold.
    pub stale: bool,
}

/// Health of the whole inventory.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Status {
    /// `cluster` or `standalone`.
    pub source: &'static str,
    /// Every required resource has had its first full sync: ends resolve.
    pub synced: bool,
    /// Some resource has been failing for longer than the threshold: what is
    /// served may be out of date.
    pub stale: bool,
    /// Generation of the latest snapshot.
    pub generation: u64,
    /// When the first full sync completed (Unix seconds).
    #[serde(serialize_with = "unix_seconds")]
    pub synced_at: Option<SystemTime>,
    /// When the latest change was published (Unix seconds).
    #[serde(serialize_with = "unix_seconds")]
    pub updated_at: Option<SystemTime>,
    /// Per resource.
    pub resources: BTreeMap<Resource, ResourceStatus>,
    /// What the manifests hold that could not be read at the latest check,
    /// `file:line: message`; the last good version of each stays in force.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub manifest_errors: Vec<String>,
    /// Since when the manifests have not all read cleanly (Unix seconds).
    #[serde(serialize_with = "unix_seconds", skip_serializing_if = "Option::is_none")]
    pub manifests_failing_since: Option<SystemTime>,
    /// Errors of the source since start by reason (`watch`, `missing`,
    /// `unlistable`, `unreadable`, `too_large`, `changing`, `invalid`, `limits`).
    pub source_errors: BTreeMap<&'static str, u64>,
}

/// Error bookkeeping of one resource.
#[derive(Clone, Debug, Default)]
pub(crate) struct Failures {
    errors: u64,
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
    failing_since: Option<SystemTime>,
}

impl Failures {
    /// A list or watch event arrived.
    pub fn ok(&mut self) {
        self.failing_since = None;
    }

    /// A list or watch failed at `now`.
    pub fn error(&mut self, message: String, now: SystemTime) {
        self.errors += 1;
        let same_outage =
            self.last_error_at.is_some_and(|last| now.duration_since(last).unwrap_or_default() <= OUTAGE_GAP);
        if self.failing_since.is_none() || !same_outage {
            self.failing_since = Some(now);
        }
        self.last_error = Some(message);
        self.last_error_at = Some(now);
    }

    /// Start of the outage going on at `now`, if any.
    fn failing_since(&self, now: SystemTime) -> Option<SystemTime> {
        let recent = self.last_error_at.is_some_and(|last| now.duration_since(last).unwrap_or_default() <= OUTAGE_GAP);
        self.failing_since.filter(|_| recent)
    }

    /// The status of a resource holding `objects`.
    pub fn status(&self, listed: bool, objects: usize, stale_after: Duration, now: SystemTime) -> ResourceStatus {
        let failing_since = self.failing_since(now);
        ResourceStatus {
            listed,
            objects,
            errors: self.errors,
            last_error: self.last_error.clone(),
            failing_since,
            stale: failing_since.is_some_and(|since| now.duration_since(since).unwrap_or_default() >= stale_after),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000 + seconds)
    }

    #[test]
    fn a_run_of_failures_turns_stale_and_recovers() {
        let stale_after = Duration::from_secs(30);
        let mut failures = Failures::default();
        failures.error("connection refused".to_owned(), at(0));
        assert!(!failures.status(true, 1, stale_after, at(10)).stale);
        failures.error("connection refused".to_owned(), at(20));
        let status = failures.status(true, 1, stale_after, at(31));
        assert!(status.stale);
        assert_eq!(status.errors, 2);
        assert_eq!(status.failing_since, Some(at(0)));
        // Events flow again.
        failures.ok();
        assert!(!failures.status(true, 1, stale_after, at(32)).stale);
    }

    #[test]
    fn a_silent_reconnect_ends_the_outage() {
        let mut failures = Failures::default();
        failures.error("watch dropped".to_owned(), at(0));
        // No error for longer than kube's longest backoff: the watch is back.
        let status = failures.status(true, 1, Duration::from_secs(30), at(100));
        assert!(!status.stale);
        assert_eq!(status.failing_since, None);
        // A new failure much later starts a new outage.
        failures.error("watch dropped".to_owned(), at(200));
        assert_eq!(failures.status(true, 1, Duration::from_secs(30), at(201)).failing_since, Some(at(200)));
    }
}
