//! The flow observer: capture connections with eBPF, say who is at each end,
//! judge them against declared intent, and export what was seen.
//!
//! Stages, in the order a flow passes them: [`capture`] → enrich
//! ([`inventory`]) → judge → export. See `ARCHITECTURE.md` in the shared docs.

pub mod cli;
pub mod inventory;
pub mod policy;
