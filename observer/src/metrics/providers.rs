//! AI provider egress per source workload.
//!
//! In: what the judge stage's AI watch ([`crate::ai::shadow`]) counts for
//! each record of a flow to a catalog endpoint, on the node of its source.
//! Out: `flow_observer_ai_provider_bytes_total{namespace, workload, tier,
//! provider, direction}` and `flow_observer_ai_provider_connections_total{
//! namespace, workload, tier, provider}`, bounded like every workload family
//! (at most `max_series_per_family` series each, idle ones collected).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use prometheus_client::{encoding::EncodeLabelSet, metrics::counter::Counter, registry::Registry};

use super::{
    OVERFLOW,
    bounded::{BoundedFamily, SeriesAccounting},
    labels::Overflow,
};

/// A source workload and the provider it called.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProviderLabels {
    /// Namespace of the source workload.
    pub namespace: Arc<str>,
    /// The source workload.
    pub workload: Arc<str>,
    /// Its AI tier (`""`: none).
    pub tier: Arc<str>,
    /// The catalog provider.
    pub provider: Arc<str>,
}

impl Overflow for ProviderLabels {
    fn overflow() -> Self {
        let overflow: Arc<str> = Arc::from(OVERFLOW);
        Self { namespace: overflow.clone(), workload: overflow.clone(), tier: overflow.clone(), provider: overflow }
    }
}

/// [`ProviderLabels`] and a direction: `sent` (to the provider) or `received`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ProviderBytesLabels {
    /// Namespace of the source workload.
    pub namespace: Arc<str>,
    /// The source workload.
    pub workload: Arc<str>,
    /// Its AI tier (`""`: none).
    pub tier: Arc<str>,
    /// The catalog provider.
    pub provider: Arc<str>,
    /// `sent` or `received`.
    pub direction: &'static str,
}

impl Overflow for ProviderBytesLabels {
    fn overflow() -> Self {
        let ProviderLabels { namespace, workload, tier, provider } = ProviderLabels::overflow();
        Self { namespace, workload, tier, provider, direction: OVERFLOW }
    }
}

/// The two families.
#[derive(Debug)]
pub(super) struct ProviderFamilies {
    bytes: BoundedFamily<ProviderBytesLabels, Counter>,
    connections: BoundedFamily<ProviderLabels, Counter>,
}

impl ProviderFamilies {
    /// Both families, registered in `registry`.
    pub(super) fn register(registry: &mut Registry, cap: usize, accounting: &SeriesAccounting) -> Self {
        let families = Self {
            bytes: BoundedFamily::new("ai_provider_bytes", cap, accounting.clone()),
            connections: BoundedFamily::new("ai_provider_connections", cap, accounting.clone()),
        };
        registry.register(
            "ai_provider_bytes",
            "Payload bytes between a workload and an AI provider of the catalog, by direction (sent to it, received)",
            families.bytes.family(),
        );
        registry.register(
            "ai_provider_connections",
            "Connections a workload opened to an AI provider of the catalog",
            families.connections.family(),
        );
        families
    }

    /// Counts `sent` and `received` bytes, and a new connection when `new`.
    pub(super) fn count(&self, labels: &ProviderLabels, sent: u64, received: u64, new: bool) {
        let now = Instant::now();
        if new {
            self.connections.with(labels, now, |counter| {
                counter.inc();
            });
        }
        for (direction, bytes) in [("sent", sent), ("received", received)] {
            if bytes == 0 && !new {
                continue;
            }
            let ProviderLabels { namespace, workload, tier, provider } = labels.clone();
            let labels = ProviderBytesLabels { namespace, workload, tier, provider, direction };
            self.bytes.with(&labels, now, |counter| {
                counter.inc_by(bytes);
            });
        }
    }

    /// Removes the series idle for `grace`; returns how many.
    pub(super) fn collect_garbage(&self, now: Instant, grace: Duration) -> usize {
        self.bytes.collect_garbage(now, grace) + self.connections.collect_garbage(now, grace)
    }
}
