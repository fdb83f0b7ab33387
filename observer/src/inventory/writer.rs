//! Applies a source's updates to the store and publishes snapshots and status.
//!
//! In: [`Update`]s and errors from one source (cluster watches or manifests).
//! Out: snapshots published to every [`Resolver`](super::Resolver) (at most
//! one per publish interval, so a burst of events costs one), and a
//! [`Status`] refreshed on every publish and tick, with stale resources logged.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Instant, SystemTime},
};

use super::{
    config::InventoryConfig,
    resolver::Shared,
    resource::Resource,
    status::{Failures, Status},
    store::{Store, Update},
};

/// The single owner of the inventory's state.
#[derive(Debug)]
pub(crate) struct Writer {
    store: Store,
    shared: Arc<Shared>,
    config: InventoryConfig,
    source: &'static str,
    failures: BTreeMap<Resource, Failures>,
    /// Resources this source provides.
    resources: Vec<Resource>,
    last_publish: Option<Instant>,
    synced_at: Option<SystemTime>,
    updated_at: Option<SystemTime>,
    manifest_errors: Vec<String>,
    /// Since when the manifests have not all read cleanly.
    source_failing_since: Option<SystemTime>,
    /// Errors by reason since start, for `inventory_source_errors_total`.
    source_errors: BTreeMap<&'static str, u64>,
    stale: bool,
}

impl Writer {
    /// A writer with an empty, unsynced store.
    pub fn new(source: &'static str, resources: Vec<Resource>, config: InventoryConfig) -> Self {
        let mut store = Store::new(&config);
        let snapshot = store.snapshot(SystemTime::now());
        let shared = Arc::new(Shared::new(snapshot, Status { source, ..Status::default() }));
        Self {
            store,
            shared,
            config,
            source,
            failures: BTreeMap::new(),
            resources,
            last_publish: None,
            synced_at: None,
            updated_at: None,
            manifest_errors: Vec::new(),
            source_failing_since: None,
            source_errors: BTreeMap::new(),
            stale: false,
        }
    }

    /// What readers share with this writer.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// How often [`Writer::tick`] should run.
    pub fn publish_interval(&self) -> std::time::Duration {
        self.config.publish_interval
    }

    /// Applies one update without publishing, for a source that publishes
    /// once its whole batch is in (a manifest reload).
    pub fn record(&mut self, resource: Resource, update: Update) {
        self.failures.entry(resource).or_default().ok();
        self.store.apply(update, SystemTime::now());
    }

    /// Applies one update; publishes at once when it completes the first sync,
    /// else when the publish interval has passed.
    pub fn apply(&mut self, resource: Resource, update: Update) {
        let was_synced = self.store.synced();
        self.record(resource, update);
        if !was_synced && self.store.synced() {
            self.publish();
        } else if self.last_publish.is_none_or(|last| last.elapsed() >= self.config.publish_interval) {
            self.publish_if_changed();
        }
    }

    /// Records a failed list or watch of `resource`.
    pub fn error(&mut self, resource: Resource, message: String) {
        tracing::warn!(resource = resource.name(), error = %message, "inventory source failed; retrying with backoff");
        *self.source_errors.entry("watch").or_default() += 1;
        self.failures.entry(resource).or_default().error(message, SystemTime::now());
        self.refresh_status();
    }

    /// Records what the manifests hold that could not be read at the latest
    /// check, as `(reason, "file:line: message")`; empty once all read
    /// cleanly. Errors not seen at the previous check are counted and logged;
    /// the source is failing while any remain, and stale after the threshold.
    pub fn set_manifest_errors(&mut self, errors: Vec<(&'static str, String)>) {
        let now = SystemTime::now();
        let before: std::collections::HashSet<&String> = self.manifest_errors.iter().collect();
        for (reason, message) in &errors {
            if !before.contains(message) {
                *self.source_errors.entry(reason).or_default() += 1;
                tracing::warn!(reason, error = %message, "manifest not loaded; what it held before stays in force");
            }
        }
        match (self.source_failing_since, errors.is_empty()) {
            (None, false) => self.source_failing_since = Some(now),
            (Some(since), true) => {
                let failed_for = now.duration_since(since).unwrap_or_default();
                tracing::info!(failed_for = ?failed_for, "manifests read cleanly again");
                self.source_failing_since = None;
            }
            _ => {}
        }
        self.manifest_errors = errors.into_iter().map(|(_, message)| message).collect();
        self.refresh_status();
    }

    /// Publishes pending changes and refreshes the status; run every publish interval.
    pub fn tick(&mut self) {
        self.publish_if_changed();
        self.refresh_status();
    }

    fn publish_if_changed(&mut self) {
        if self.store.changed() {
            self.publish();
        }
    }

    /// Publishes a snapshot of the store now.
    pub fn publish(&mut self) {
        let now = SystemTime::now();
        let snapshot = self.store.snapshot(now);
        if snapshot.synced() && self.synced_at.is_none() {
            self.synced_at = Some(now);
            tracing::info!(source = self.source, pods = snapshot.pod_count(), "inventory synced");
        }
        self.shared.publish(snapshot);
        self.last_publish = Some(Instant::now());
        self.updated_at = Some(now);
        self.refresh_status();
    }

    fn refresh_status(&mut self) {
        let now = SystemTime::now();
        let resources: BTreeMap<Resource, _> = self
            .resources
            .iter()
            .map(|&resource| {
                let failures = self.failures.get(&resource).cloned().unwrap_or_default();
                let status = failures.status(
                    self.store.listed(resource),
                    self.store.count(resource),
                    self.config.stale_after,
                    now,
                );
                (resource, status)
            })
            .collect();
        let source_stale = self
            .source_failing_since
            .is_some_and(|since| now.duration_since(since).unwrap_or_default() >= self.config.stale_after);
        let stale = source_stale || resources.values().any(|status| status.stale);
        if stale != self.stale {
            let failing: Vec<&str> =
                resources.iter().filter(|(_, status)| status.stale).map(|(resource, _)| resource.name()).collect();
            if source_stale {
                tracing::error!(
                    errors = ?self.manifest_errors,
                    "inventory is stale: manifests have not read cleanly for longer than the threshold; the last good state of each stays in force"
                );
            } else if stale {
                tracing::error!(
                    ?failing,
                    "inventory is stale: its watches have been failing; enrichment may be out of date"
                );
            } else {
                tracing::info!("inventory is no longer stale");
            }
            self.stale = stale;
        }
        self.shared.set_status(Status {
            source: self.source,
            synced: self.store.synced(),
            stale,
            generation: self.shared.snapshot().generation(),
            synced_at: self.synced_at,
            updated_at: self.updated_at,
            resources,
            manifest_errors: self.manifest_errors.clone(),
            manifests_failing_since: self.source_failing_since,
            source_errors: self.source_errors.clone(),
        });
    }
}
