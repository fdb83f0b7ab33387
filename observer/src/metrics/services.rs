//! How Service flows were resolved to their backends.
//!
//! In: the counts the enrich stage makes as it resolves Service flows. Out:
//! `flow_observer_conntrack_lookups_total{result="hit|miss|error"}` (one per
//! new Service flow while conntrack can be asked) and
//! `flow_observer_service_flows_total{backend="conntrack|endpointslices|unknown"}`
//! (how each new Service flow's backend was learned, or that it was not).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};

/// The `result` label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

/// The `backend` label.
#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
}

/// The counters, each a handle on its series: cheap to clone and to count.
/// A default value counts without being exported (no metrics configured).
#[derive(Clone, Debug, Default)]
pub struct ServiceCounters {
    /// Conntrack knew the connection.
    pub conntrack_hits: Counter,
    /// Conntrack did not know it.
    pub conntrack_misses: Counter,
    /// Conntrack could not be asked or its answer not read.
    pub conntrack_errors: Counter,
    /// The backend came from conntrack.
    pub by_conntrack: Counter,
    /// The backend came from the Service's EndpointSlices (its only ready one).
    pub by_endpointslices: Counter,
    /// No single backend is known (none ready, or several and no conntrack entry).
    pub unresolved: Counter,
}

impl ServiceCounters {
    /// Registers both families in `registry` and returns their handles.
    pub fn register(registry: &mut Registry) -> Self {
        let lookups = Family::<ResultLabels, Counter>::default();
        let flows = Family::<BackendLabels, Counter>::default();
        registry.register(
            "conntrack_lookups",
            "Conntrack lookups of new Service flows, by result (hit, miss, error)",
            lookups.clone(),
        );
        registry.register(
            "service_flows",
            "New flows to a Service, by where their backend was learned (conntrack, endpointslices, unknown)",
            flows.clone(),
        );
        let lookup = |result| lookups.get_or_create(&ResultLabels { result }).clone();
        let flow = |backend| flows.get_or_create(&BackendLabels { backend }).clone();
        Self {
            conntrack_hits: lookup("hit"),
            conntrack_misses: lookup("miss"),
            conntrack_errors: lookup("error"),
            by_conntrack: flow("conntrack"),
            by_endpointslices: flow("endpointslices"),
            unresolved: flow("unknown"),
        }
    }
}
