//! The log files' options and their opening at start.
//!
//! In: `--flow-log`, `--findings-log`, `--dns-log` and their rotation
//! options. Out: the opened [`LineSink`]s (a path that cannot be written
//! stops the start, naming the path and the reason), sharing one [`Reopen`]
//! for SIGHUP.

use std::path::PathBuf;

use super::sink::{LineSink, Reopen, Rotation, SinkError, SinkHealth, SinkName, Target};
use crate::findings::FindingsWriter;

/// Size-based rotation of the log files (not of a flow log on stdout).
#[derive(Clone, Debug)]
pub struct RotationConfig {
    /// Rotate the flow log file before it grows past this size (`100MiB`,
    /// `512KiB`, `1GiB`, bytes; `0`: never). Not applied to stdout.
    pub flow_log_max_size: u64,
    /// Files the flow log keeps, the one being written included
    /// (`<file>`, `<file>.1`…; the oldest is removed).
    pub flow_log_max_files: u32,
    /// Rotate the findings log before it grows past this size (`0`: never).
    pub findings_log_max_size: u64,
    /// Files the findings log keeps, the one being written included.
    pub findings_log_max_files: u32,
    /// Rotate the DNS log before it grows past this size (`0`: never).
    pub dns_log_max_size: u64,
    /// Files the DNS log keeps, the one being written included.
    pub dns_log_max_files: u32,
}

/// Parses `4096`, `64KiB`, `100MiB`, `1GiB` into bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| format!("{text:?} is not a size like 4096, 64KiB, 100MiB or 1GiB"))?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(format!("{text:?}: the unit must be B, KiB, MiB or GiB")),
    };
    number.checked_mul(scale).ok_or_else(|| format!("{text:?} is too large"))
}

/// The log files, opened.
#[derive(Debug)]
pub struct Logs {
    /// The flow log (stdout unless `--flow-log`).
    pub flow: LineSink,
    /// The findings log, if asked for.
    pub findings: Option<FindingsWriter>,
    /// The DNS log, if asked for.
    pub dns: Option<LineSink>,
    /// Every sink's health, for `/healthz` and the metrics.
    pub health: Vec<std::sync::Arc<SinkHealth>>,
}

impl Logs {
    /// Opens every log asked for; the first that cannot be opened is the error.
    pub fn open(
        flow_log: Option<&PathBuf>,
        findings_log: Option<&PathBuf>,
        dns_log: Option<&PathBuf>,
        rotation: &RotationConfig,
        reopen: &Reopen,
    ) -> Result<Self, SinkError> {
        let file = |name, path: &PathBuf, max_bytes, max_files| {
            LineSink::open(name, Target::File(path.clone()), Rotation { max_bytes, max_files }, reopen.clone())
        };
        let flow = match flow_log {
            Some(path) => file(SinkName::FlowLog, path, rotation.flow_log_max_size, rotation.flow_log_max_files)?,
            None => LineSink::open(SinkName::FlowLog, Target::Stdout, Rotation::OFF, reopen.clone())?,
        };
        let findings = findings_log
            .map(|path| {
                file(SinkName::FindingsLog, path, rotation.findings_log_max_size, rotation.findings_log_max_files)
            })
            .transpose()?;
        let dns = dns_log
            .map(|path| file(SinkName::DnsLog, path, rotation.dns_log_max_size, rotation.dns_log_max_files))
            .transpose()?;
        let health = std::iter::once(flow.health())
            .chain(findings.iter().map(LineSink::health))
            .chain(dns.iter().map(LineSink::health))
            .collect();
        Ok(Self { flow, findings: findings.map(FindingsWriter::new), dns, health })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("100MiB"), Ok(100 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert!(parse_size("10MB").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }
}
