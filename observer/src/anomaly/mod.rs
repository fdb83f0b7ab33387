//! Spike detection per edge: new-connection and byte rates against a learned baseline.
//!
//! In: per flow event, the edge (source workload → destination, port), the
//! new connections and bytes it adds, and when. Out: a [`Spike`] when an
//! edge's rate in the running window leaves its baseline; counts of edges,
//! evictions and spikes for metrics. See `docs/bench-anomaly.md` for the
//! maths and the measured precision and recall.

mod baseline;
mod detector;
pub(crate) mod lru;

pub(crate) use detector::EdgeHandle;
pub use detector::{EdgeKey, Signal, Spike, SpikeConfig, SpikeDetector, SpikeStats};
