//! The governance loop, offline: recorded flow logs replayed against policies.
//!
//! In: flow logs written by `observer run` (any number, any nodes, gzip or
//! plain, streamed) and the inventory from manifests. Out: `observer policy
//! simulate` (what a policy change would break or newly allow) and
//! `observer report` (the evidence record per policy and AI-tier workload). The reader
//! and edge table are shared by every offline command.

pub mod advise;
pub mod edges;
pub mod guardrail;
pub mod line;
mod memo;
pub mod output;
pub mod reader;
pub mod replay;
pub mod report;
mod scan;
pub mod simulate;
