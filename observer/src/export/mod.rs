//! Export: where records leave the observer.

pub mod dnslog;
pub mod encode;
pub mod flowlog;
pub mod logs;
pub mod sink;
