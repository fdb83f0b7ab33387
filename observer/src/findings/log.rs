//! The findings log: findings counted once per key and written as JSON lines.
//!
//! In: findings as they happen, with their time; then, on an interval and at
//! shutdown, a flush. Out: one JSON line per finding that is new or repeated
//! since the previous flush, carrying its count, first and last seen and the
//! coverage of that span; and a `coverage` line for every flush interval in
//! which events were lost, so silence is never mistaken for a clean bill.
//! A repeat raises the count and last seen instead of writing again. Memory is
//! bounded: past the cap the least recently seen finding is forgotten and
//! counted.

use std::{
    io::{self, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use serde::{Serialize, Serializer};

use super::{
    coverage::{Coverage, CoverageTracker},
    finding::{Evidence, Finding, FindingKey},
};
use crate::{
    anomaly::lru::{Handle, Lru},
    export::sink::{LineSink, Reopen, Rotation, SinkError, SinkName, Target},
    flow::rfc3339,
};

/// Settings of the findings log.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FindingsConfig {
    /// Most distinct findings remembered; the least recently seen are
    /// forgotten (and would be written anew if they recur). Default: 10000.
    pub max_findings: usize,
    /// Seconds between two flushes, for the caller's timer. Default: 10.
    pub flush_interval_seconds: u64,
}

impl Default for FindingsConfig {
    fn default() -> Self {
        Self { max_findings: 10_000, flush_interval_seconds: 10 }
    }
}

/// Why the findings log could not be written.
#[derive(Debug, thiserror::Error)]
pub enum FindingsError {
    /// The file could not be opened.
    #[error("cannot open findings log {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SinkError,
    },
    /// A line could not be serialized.
    #[error("cannot serialize a findings log line")]
    Write {
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// Counts for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FindingsStats {
    /// Distinct findings remembered now.
    pub findings: usize,
    /// Findings recorded, repeats included.
    pub recorded: u64,
    /// Lines written.
    pub written: u64,
    /// Findings forgotten because the cap was reached.
    pub evicted: u64,
    /// Of those, forgotten before their latest repeat was written.
    pub evicted_unwritten: u64,
}

/// Where the log keeps a finding's entry, for a caller that records the
/// same finding often ([`FindingsLog::record_held`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct EntryHandle(Handle);

#[derive(Clone, Debug)]
struct Entry {
    /// The latest occurrence, shared with whoever built it (its evidence
    /// is `evidence`).
    finding: Arc<Finding>,
    /// What the latest occurrence observed.
    evidence: Evidence,
    count: u64,
    first_seen: SystemTime,
    last_seen: SystemTime,
    /// Changed since it was last written.
    dirty: bool,
    /// When it was last written.
    written_at: Option<SystemTime>,
}

/// Distinct findings with their counts.
#[derive(Debug)]
pub struct FindingsLog {
    entries: Lru<FindingKey, Entry>,
    last_flush: Option<SystemTime>,
    stats: FindingsStats,
}

fn time<S: Serializer>(time: &SystemTime, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&rfc3339(*time))
}

#[derive(Serialize)]
struct FindingLine<'a> {
    #[serde(serialize_with = "time")]
    time: SystemTime,
    #[serde(flatten)]
    finding: &'a Finding,
    count: u64,
    #[serde(serialize_with = "time")]
    first_seen: SystemTime,
    #[serde(serialize_with = "time")]
    last_seen: SystemTime,
    coverage: Coverage,
}

#[derive(Serialize)]
struct CoverageLine {
    #[serde(serialize_with = "time")]
    time: SystemTime,
    kind: &'static str,
    coverage: Coverage,
    #[serde(serialize_with = "time")]
    from: SystemTime,
    #[serde(serialize_with = "time")]
    to: SystemTime,
    lost_events: u64,
}

impl FindingsLog {
    /// An empty log.
    pub fn new(config: &FindingsConfig) -> Self {
        Self { entries: Lru::new(config.max_findings), last_flush: None, stats: FindingsStats::default() }
    }

    /// Counts for metrics.
    pub fn stats(&self) -> FindingsStats {
        FindingsStats { findings: self.entries.len(), ..self.stats }
    }

    /// Records a finding seen at `at`; returns whether it is new (not a repeat).
    pub fn record(&mut self, finding: Finding, at: SystemTime) -> bool {
        let evidence = finding.evidence.clone();
        self.record_shared(&Arc::new(finding), evidence, at)
    }

    /// Records a finding seen at `at` with what this occurrence observed, the
    /// rest of it built once and shared by its repeats (the judge keeps one
    /// per pair of ends); returns whether it is new (not a repeat).
    pub fn record_shared(&mut self, finding: &Arc<Finding>, evidence: Evidence, at: SystemTime) -> bool {
        self.record_held(&mut None, finding, evidence, at)
    }

    /// [`FindingsLog::record_shared`] through the handle `held` of the
    /// finding's entry, which it sets: the finding is looked up by its key
    /// only when the handle is unset or its entry was forgotten since.
    pub(crate) fn record_held(
        &mut self,
        held: &mut Option<EntryHandle>,
        finding: &Arc<Finding>,
        evidence: Evidence,
        at: SystemTime,
    ) -> bool {
        self.stats.recorded += 1;
        let entry = match held.and_then(|handle| self.entries.get_mut_at(handle.0)) {
            Some(entry) => entry,
            None => {
                // A new entry starts at no count and takes this occurrence below.
                let new = || Entry {
                    finding: Arc::clone(finding),
                    evidence: Evidence::default(),
                    count: 0,
                    first_seen: at,
                    last_seen: at,
                    dirty: true,
                    written_at: None,
                };
                let Some(found) = self.entries.get_or_insert_with(&finding.key, new) else { return false };
                if let Some((_, evicted)) = found.evicted {
                    self.stats.evicted += 1;
                    self.stats.evicted_unwritten += u64::from(evicted.dirty);
                }
                *held = Some(EntryHandle(found.handle));
                found.value
            }
        };
        let new = entry.count == 0;
        entry.count += 1;
        entry.first_seen = entry.first_seen.min(at);
        entry.last_seen = entry.last_seen.max(at);
        // The latest occurrence names the pods and evidence (a repeat through
        // a handle is mostly the finding held already).
        if !Arc::ptr_eq(&entry.finding, finding) {
            entry.finding = Arc::clone(finding);
        }
        entry.evidence = evidence;
        entry.dirty = true;
        new
    }

    /// Records a further observation of an occurrence already counted (a
    /// later record of the same connection): its evidence and last seen, not
    /// its count. A finding not held (forgotten, or first seen here) is
    /// recorded as new. Returns whether it was.
    pub fn refresh(&mut self, finding: Finding, at: SystemTime) -> bool {
        let finding = Arc::new(finding);
        let Some(entry) = self.entries.get_mut(&finding.key) else {
            let evidence = finding.evidence.clone();
            return self.record_shared(&finding, evidence, at);
        };
        entry.evidence = finding.evidence.clone();
        entry.finding = finding;
        entry.first_seen = entry.first_seen.min(at);
        entry.last_seen = entry.last_seen.max(at);
        entry.dirty = true;
        false
    }

    /// Writes every finding new or repeated since the last flush, then a
    /// coverage line if events were lost since then; returns the lines written.
    pub fn flush(&mut self, out: &mut impl Write, now: SystemTime, coverage: &CoverageTracker) -> io::Result<usize> {
        let mut dirty: Vec<&mut Entry> =
            self.entries.iter_mut().map(|(_, entry)| entry).filter(|entry| entry.dirty).collect();
        dirty.sort_by(|a, b| (a.first_seen, &a.finding.rule).cmp(&(b.first_seen, &b.finding.rule)));
        let from = self.last_flush.or_else(|| dirty.first().map(|entry| entry.first_seen)).unwrap_or(now);
        let mut lines = 0;
        for entry in dirty {
            let since = entry.written_at.map_or(entry.first_seen, |written| written.max(entry.first_seen));
            let finding = Finding { evidence: entry.evidence.clone(), ..Finding::clone(&entry.finding) };
            let line = FindingLine {
                time: now,
                finding: &finding,
                count: entry.count,
                first_seen: entry.first_seen,
                last_seen: entry.last_seen,
                coverage: coverage.coverage(since, now),
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            entry.dirty = false;
            entry.written_at = Some(now);
            lines += 1;
        }
        if coverage.coverage(from, now) == Coverage::Incomplete {
            let line = CoverageLine {
                time: now,
                kind: "coverage",
                coverage: Coverage::Incomplete,
                from,
                to: now,
                lost_events: coverage.lost_between(from, now),
            };
            serde_json::to_writer(&mut *out, &line)?;
            out.write_all(b"\n")?;
            lines += 1;
        }
        out.flush()?;
        self.last_flush = Some(now);
        self.stats.written += lines as u64;
        Ok(lines)
    }
}

/// The `--findings-log` file: each flush's lines written whole through a
/// [`LineSink`] (which counts what it cannot write, and rotates and reopens
/// the file).
#[derive(Debug)]
pub struct FindingsWriter {
    sink: LineSink,
    buffer: Vec<u8>,
}

impl FindingsWriter {
    /// Writes into `sink`.
    pub fn new(sink: LineSink) -> Self {
        Self { sink, buffer: Vec::with_capacity(1 << 14) }
    }

    /// Opens (creating if needed) `path` for appending, never rotated.
    pub fn open(path: &Path) -> Result<Self, FindingsError> {
        let target = Target::File(path.to_owned());
        let sink = LineSink::open(SinkName::FindingsLog, target, Rotation::OFF, Reopen::default())
            .map_err(|source| FindingsError::Open { path: path.to_owned(), source })?;
        Ok(Self::new(sink))
    }

    /// Flushes `log` into the file; returns the lines made (written, or
    /// counted as dropped by the sink when the file cannot take them).
    pub fn flush(
        &mut self,
        log: &mut FindingsLog,
        now: SystemTime,
        coverage: &CoverageTracker,
    ) -> Result<usize, FindingsError> {
        self.buffer.clear();
        let lines = log.flush(&mut self.buffer, now, coverage).map_err(|source| FindingsError::Write { source })?;
        self.sink.write(&self.buffer, lines as u64);
        Ok(lines)
    }

    /// Finishes or cuts off a half-written line (at shutdown).
    pub fn close(self) {
        self.sink.close();
    }
}
