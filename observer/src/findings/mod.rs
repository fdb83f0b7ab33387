//! Findings: what the judge and the spike detector flag, deduplicated and
//! written as JSON lines, with the coverage they were observed under.
//!
//! In: flow verdicts, unprotected pods and spikes ([`Finding`]), and capture's
//! lost-event counts ([`CoverageTracker`]). Out: JSON lines in the findings
//! log (`--findings-log`), one per distinct finding and flush, each naming
//! pods, workloads, tier, rule and evidence, with a count, first and last
//! seen, and `"coverage": "incomplete"` when events were lost meanwhile.

mod coverage;
mod finding;
mod log;

pub use coverage::{Coverage, CoverageStatus, CoverageTracker};
pub use finding::{AiEvidence, DirectIp, Evidence, Finding, FindingKind, Isolated, Party, SpikeEvidence};
pub(crate) use log::EntryHandle;
pub use log::{FindingsConfig, FindingsError, FindingsLog, FindingsStats, FindingsWriter};
