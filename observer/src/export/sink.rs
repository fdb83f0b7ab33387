//! A JSON-lines sink: the flow, findings or DNS log as a file (or stdout)
//! that is only ever written whole lines, says when it cannot write, and
//! recovers by itself.
//!
//! In: buffers of whole lines (each ending in `\n`) with their count, a
//! reopen request (SIGHUP) and the rotation settings. Out: the lines appended
//! to the file, rotated by size to `<file>.1`, `<file>.2`…; the sink's health
//! ([`SinkHealth`]: up or failing with the reason, lines written and dropped)
//! for `/healthz` and the metrics.
//!
//! A write that fails (disk full, I/O error) drops the lines it could not
//! write, counts them, logs the reason once per kind of error and marks the
//! sink failing; the next write tries again, so writing resumes when space
//! returns. A line written in part is never left cut while the process runs:
//! its rest is written first when writing resumes (a log shipper tailing the
//! file waits for the newline, and sees no truncation it would take for a new
//! file); only when the file is closed or reopened while still failing is it
//! truncated back to its last whole line.

use std::{
    collections::HashSet,
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::fd::AsFd as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

/// Which log a sink writes, as named in metrics (`sink` label) and messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SinkName {
    /// `--flow-log` (or stdout).
    FlowLog,
    /// `--findings-log`.
    FindingsLog,
    /// `--dns-log`.
    DnsLog,
}

impl SinkName {
    /// The `sink` label value: `flow_log`, `findings_log`, `dns_log`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FlowLog => "flow_log",
            Self::FindingsLog => "findings_log",
            Self::DnsLog => "dns_log",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Self::FlowLog => "flow log",
            Self::FindingsLog => "findings log",
            Self::DnsLog => "DNS log",
        }
    }
}

impl std::fmt::Display for SinkName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

/// Where a sink writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Standard output (never rotated or reopened).
    Stdout,
    /// A file, created if missing and appended to.
    File(PathBuf),
}

/// Size-based rotation of a file sink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate before the file would grow past this many bytes; 0: never.
    pub max_bytes: u64,
    /// Files kept, the one written included: `<file>` and `<file>.1` to
    /// `<file>.<max_files - 1>`, the oldest removed. At least 1.
    pub max_files: u32,
}

impl Rotation {
    /// No rotation.
    pub const OFF: Self = Self { max_bytes: 0, max_files: 1 };
}

/// Why a sink cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The file's directory does not exist.
    #[error("cannot open the {sink} {path}: directory {dir} does not exist")]
    MissingDirectory {
        /// The log.
        sink: SinkName,
        /// The file.
        path: PathBuf,
        /// Its directory.
        dir: PathBuf,
    },
    /// The file cannot be opened for appending (read-only file or file
    /// system, no permission, a directory).
    #[error("cannot open the {sink} {path} for appending: {source}")]
    Open {
        /// The log.
        sink: SinkName,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Standard output cannot be duplicated.
    #[error("cannot write the {sink} to stdout: {source}")]
    Stdout {
        /// The log.
        sink: SinkName,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// A sink's state, shared with `/healthz` and the metrics.
#[derive(Debug)]
pub struct SinkHealth {
    name: SinkName,
    target: Target,
    up: AtomicBool,
    written: AtomicU64,
    dropped: AtomicU64,
    rotations: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds at which the write in progress started;
    /// 0 between writes.
    write_started_ns: AtomicU64,
    /// The latest failure and since when the sink has been failing.
    failure: Mutex<Option<(String, Instant)>>,
}

impl SinkHealth {
    fn new(name: SinkName, target: Target) -> Self {
        Self {
            name,
            target,
            up: AtomicBool::new(true),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            rotations: AtomicU64::new(0),
            write_started_ns: AtomicU64::new(0),
            failure: Mutex::new(None),
        }
    }

    /// Which log.
    pub fn name(&self) -> SinkName {
        self.name
    }

    /// False from a failed write until a write succeeds again.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// Lines written.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Lines that could not be written.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Times the file was rotated for its size.
    pub fn rotations(&self) -> u64 {
        self.rotations.load(Ordering::Relaxed)
    }

    /// How long the write in progress has been blocked; `None` between
    /// writes.
    pub fn blocked_for(&self) -> Option<std::time::Duration> {
        let started = self.write_started_ns.load(Ordering::Relaxed);
        (started != 0)
            .then(|| std::time::Duration::from_nanos(crate::capture::clock::monotonic_ns().saturating_sub(started)))
    }

    /// Why it is failing and for how long; `None` while up.
    pub fn failure(&self) -> Option<(String, std::time::Duration)> {
        if self.is_up() {
            return None;
        }
        let failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        failure.as_ref().map(|(reason, since)| (reason.clone(), since.elapsed()))
    }

    /// Marks the sink failing for `reason` (kept since the first failure).
    pub(crate) fn fail(&self, reason: String) {
        let mut failure = self.failure.lock().unwrap_or_else(PoisonError::into_inner);
        let since = match failure.take() {
            Some((_, since)) if !self.is_up() => since,
            _ => Instant::now(),
        };
        *failure = Some((reason, since));
        self.up.store(false, Ordering::Relaxed);
    }

    /// The sink as one line for `/healthz`: `flow_log /var/log/flows.jsonl`.
    pub fn describe(&self) -> String {
        match &self.target {
            Target::Stdout => format!("{} (stdout)", self.name.as_str()),
            Target::File(path) => format!("{} {}", self.name.as_str(), path.display()),
        }
    }
}

/// Asks every sink sharing it to reopen its file before its next write
/// (SIGHUP, after an outside tool moved the file away).
#[derive(Clone, Debug, Default)]
pub struct Reopen(Arc<AtomicU64>);

impl Reopen {
    /// Requests a reopen of every sink.
    pub fn request(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    fn generation(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A line written in part before a write failed.
#[derive(Debug)]
struct Partial {
    /// The whole line, newline included.
    line: Vec<u8>,
    /// How much of it is in the file.
    written: usize,
}

/// An open sink.
#[derive(Debug)]
pub struct LineSink {
    health: Arc<SinkHealth>,
    rotation: Rotation,
    file: File,
    /// Bytes in the file as far as this sink knows (checked against the
    /// file before rotating, in case another tool truncated it).
    size: u64,
    partial: Option<Partial>,
    reopen: Reopen,
    reopen_seen: u64,
    /// A reopen that failed, to try again before the next write.
    reopen_pending: bool,
    /// Kinds of error logged since the sink last worked.
    logged: HashSet<io::ErrorKind>,
}

fn open_append(name: SinkName, path: &Path) -> Result<File, SinkError> {
    OpenOptions::new().create(true).append(true).open(path).map_err(|source| {
        let dir = path.parent().filter(|dir| !dir.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if source.kind() == io::ErrorKind::NotFound && !dir.is_dir() {
            SinkError::MissingDirectory { sink: name, path: path.to_owned(), dir: dir.to_owned() }
        } else {
            SinkError::Open { sink: name, path: path.to_owned(), source }
        }
    })
}

/// `<file>.<n>`.
pub fn rotated_path(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// Counts the lines in `bytes`.
fn lines_in(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&byte| byte == b'\n').count() as u64
}

impl LineSink {
    /// Opens `target` for appending: a missing directory or a file that
    /// cannot be written is an error here, at start, rather than later.
    pub fn open(name: SinkName, target: Target, rotation: Rotation, reopen: Reopen) -> Result<Self, SinkError> {
        let (file, rotation) = match &target {
            Target::Stdout => {
                // A duplicate of fd 1, written unbuffered, so that a short
                // write is seen as such and not hidden in a line buffer.
                let fd = io::stdout()
                    .as_fd()
                    .try_clone_to_owned()
                    .map_err(|source| SinkError::Stdout { sink: name, source })?;
                (File::from(fd), Rotation::OFF)
            }
            Target::File(path) => {
                let file = open_append(name, path)?;
                // A pipe or device (`/dev/stdout`, a FIFO) is never renamed.
                let regular = file.metadata().is_ok_and(|meta| meta.is_file());
                (file, if regular { rotation } else { Rotation::OFF })
            }
        };
        let size = file.metadata().map(|meta| meta.len()).unwrap_or(0);
        let reopen_seen = reopen.generation();
        Ok(Self {
            health: Arc::new(SinkHealth::new(name, target)),
            rotation,
            file,
            size,
            partial: None,
            reopen,
            reopen_seen,
            reopen_pending: false,
            logged: HashSet::new(),
        })
    }

    /// The sink's health, for `/healthz` and the metrics.
    pub fn health(&self) -> Arc<SinkHealth> {
        Arc::clone(&self.health)
    }

    fn path(&self) -> Option<&Path> {
        match &self.health.target {
            Target::Stdout => None,
            Target::File(path) => Some(path),
        }
    }

    /// Appends `lines` (`count` whole lines, each ending in `\n`); what
    /// cannot be written is counted as dropped and the sink marked failing.
    /// Returns how many lines this call dropped (the last ones of `lines`,
    /// or a line an earlier write cut and this one could not finish). While
    /// it runs the sink counts as blocked ([`SinkHealth::blocked_for`]), so
    /// a write that never returns shows as a stalled sink.
    pub fn write(&mut self, lines: &[u8], count: u64) -> u64 {
        if lines.is_empty() {
            return 0;
        }
        let before = self.health.dropped();
        self.health.write_started_ns.store(crate::capture::clock::monotonic_ns().max(1), Ordering::Relaxed);
        self.write_lines(lines, count);
        self.health.write_started_ns.store(0, Ordering::Relaxed);
        self.health.dropped().saturating_sub(before)
    }

    fn write_lines(&mut self, lines: &[u8], count: u64) {
        self.reopen_if_asked();
        if let Err(error) = self.finish_partial() {
            self.dropped(count, &error, "writing");
            return;
        }
        let mut rest = lines;
        while !rest.is_empty() {
            let chunk = self.next_chunk(rest);
            if let Err(error) = self.write_chunk(&rest[..chunk]) {
                // Lines after the failed chunk were never tried; a line cut
                // is neither written nor dropped until it is finished.
                let dropped = error.dropped + lines_in(&rest[chunk..]);
                self.dropped(dropped, &error.source, "writing");
                let cut = u64::from(self.partial.is_some());
                self.add_written(count.saturating_sub(dropped + cut));
                return;
            }
            rest = &rest[chunk..];
        }
        self.add_written(count);
        self.recovered();
    }

    fn add_written(&self, lines: u64) {
        self.health.written.fetch_add(lines, Ordering::Relaxed);
    }

    /// The length of the next part of `rest` to write into the current
    /// file: the whole lines that fit under the size limit, rotating the
    /// file first when not one does; one line alone when it is longer than
    /// the limit.
    fn next_chunk(&mut self, rest: &[u8]) -> usize {
        if self.rotation.max_bytes == 0 {
            return rest.len();
        }
        if let Some(fit) = self.fitting(rest) {
            return fit;
        }
        if self.size > 0 {
            // Another tool may have truncated the file (logrotate's copytruncate).
            self.size = self.file.metadata().map_or(self.size, |meta| meta.len());
            if let Some(fit) = self.fitting(rest) {
                return fit;
            }
            self.rotate();
            if let Some(fit) = self.fitting(rest) {
                return fit;
            }
        }
        rest.iter().position(|&byte| byte == b'\n').map_or(rest.len(), |end| end + 1)
    }

    /// The length of the whole lines of `rest` that fit in the current file.
    fn fitting(&self, rest: &[u8]) -> Option<usize> {
        let room = usize::try_from(self.rotation.max_bytes.saturating_sub(self.size)).unwrap_or(usize::MAX);
        if rest.len() <= room {
            return Some(rest.len());
        }
        rest[..room].iter().rposition(|&byte| byte == b'\n').map(|end| end + 1)
    }

    /// Writes `chunk` (whole lines); on failure, the line cut by it is kept
    /// as [`Partial`] and the error says how many whole lines were lost.
    fn write_chunk(&mut self, chunk: &[u8]) -> Result<(), ChunkError> {
        let mut done = 0;
        while done < chunk.len() {
            match self.file.write(&chunk[done..]) {
                Ok(0) => {
                    return Err(self.cut(chunk, done, io::Error::new(io::ErrorKind::WriteZero, "nothing written")));
                }
                Ok(n) => {
                    done += n;
                    self.size += n as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(self.cut(chunk, done, error)),
            }
        }
        Ok(())
    }

    /// What a write of `chunk` that stopped after `done` bytes left behind.
    fn cut(&mut self, chunk: &[u8], done: usize, source: io::Error) -> ChunkError {
        let line_start = chunk[..done].iter().rposition(|&byte| byte == b'\n').map_or(0, |end| end + 1);
        let mut rest_start = line_start;
        if line_start < done {
            let line_end =
                chunk[done..].iter().position(|&byte| byte == b'\n').map_or(chunk.len(), |end| done + end + 1);
            self.partial = Some(Partial { line: chunk[line_start..line_end].to_vec(), written: done - line_start });
            rest_start = line_end;
        }
        ChunkError { dropped: lines_in(&chunk[rest_start..]), source }
    }

    /// Writes the rest of a line cut by an earlier failure.
    fn finish_partial(&mut self) -> io::Result<()> {
        let Some(partial) = &mut self.partial else { return Ok(()) };
        while partial.written < partial.line.len() {
            match self.file.write(&partial.line[partial.written..]) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::WriteZero, "nothing written")),
                Ok(n) => {
                    partial.written += n;
                    self.size += n as u64;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        self.partial = None;
        self.add_written(1);
        Ok(())
    }

    /// Cuts the file back to its last whole line when a line written in
    /// part cannot be finished; returns the line, to write elsewhere.
    fn abandon_partial(&mut self) -> Option<Vec<u8>> {
        let partial = self.partial.take()?;
        if let Ok(meta) = self.file.metadata() {
            let whole = meta.len().saturating_sub(partial.written as u64);
            if let Err(error) = self.file.set_len(whole) {
                tracing::warn!(sink = %self.health.describe(), %error, "cannot cut a half-written line off the log");
            }
            self.size = whole;
        }
        Some(partial.line)
    }

    fn dropped(&mut self, lines: u64, error: &io::Error, doing: &str) {
        self.health.dropped.fetch_add(lines, Ordering::Relaxed);
        let reason = format!("{doing} failed: {error}");
        if self.logged.insert(error.kind()) {
            tracing::warn!(
                sink = %self.health.describe(),
                error = %error,
                lines,
                "cannot write the {}: lines dropped and counted until writing works again (each kind of error logged once)",
                self.health.name
            );
        }
        self.health.fail(reason);
    }

    fn recovered(&mut self) {
        // Writing the old file after a failed reopen is not recovery.
        if !self.health.is_up() && !self.reopen_pending {
            tracing::info!(
                sink = %self.health.describe(),
                dropped_total = self.health.dropped(),
                "the {} is written again",
                self.health.name
            );
            self.health.up.store(true, Ordering::Relaxed);
            self.logged.clear();
        }
    }

    /// Reopens the file by its path if a reopen was asked for since the last
    /// write (or the last attempt failed).
    fn reopen_if_asked(&mut self) {
        let generation = self.reopen.generation();
        if generation == self.reopen_seen && !self.reopen_pending {
            return;
        }
        self.reopen_seen = generation;
        let Some(path) = self.path().map(Path::to_owned) else { return };
        self.replace_file(&path, "reopening");
    }

    /// Moves every rotated file one number up (the oldest falls off),
    /// the file itself to `<file>.1`, and starts a new file.
    fn rotate(&mut self) {
        let Some(path) = self.path().map(Path::to_owned) else { return };
        // After a failed reopen the file written is no longer at `path`:
        // shifting the numbered files again would only churn them.
        if self.reopen_pending {
            return;
        }
        let kept = self.rotation.max_files.saturating_sub(1);
        let moved = if kept == 0 {
            std::fs::remove_file(&path)
        } else {
            (1..kept)
                .rev()
                .try_for_each(|n| match std::fs::rename(rotated_path(&path, n), rotated_path(&path, n + 1)) {
                    Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
                    other => other,
                })
                .and_then(|()| std::fs::rename(&path, rotated_path(&path, 1)))
        };
        match moved {
            Ok(()) => {
                self.health.rotations.fetch_add(1, Ordering::Relaxed);
                self.replace_file(&path, "rotating");
            }
            Err(error) => {
                // Keep writing the current file past its limit rather than lose lines.
                if self.logged.insert(error.kind()) {
                    tracing::warn!(sink = %self.health.describe(), %error, "cannot rotate the log; it grows past its limit");
                }
            }
        }
    }

    /// Opens `path` anew and writes there from now on; a line cut in the old
    /// file is finished there, or cut off and written whole in the new one.
    /// On failure the old file stays in use and the reopen is tried again
    /// before the next write.
    fn replace_file(&mut self, path: &Path, doing: &str) {
        let file = match open_append(self.health.name, path) {
            Ok(file) => file,
            Err(error) => {
                self.reopen_pending = true;
                if self.logged.insert(io::ErrorKind::Other) {
                    tracing::warn!(sink = %self.health.describe(), error = %error, "{doing} failed; still writing the old file");
                }
                self.health.fail(format!("{doing} failed: {error}"));
                return;
            }
        };
        self.reopen_pending = false;
        let carried = if self.finish_partial().is_err() { self.abandon_partial() } else { None };
        self.file = file;
        self.size = self.file.metadata().map_or(0, |meta| meta.len());
        tracing::info!(sink = %self.health.describe(), "{doing}: writing a new file");
        if let Some(line) = carried {
            if let Err(error) = self.write_chunk(&line) {
                self.dropped(error.dropped, &error.source, "writing");
            } else {
                self.add_written(1);
            }
        }
    }

    /// Flushes nothing (every write goes straight to the file) but finishes
    /// or cuts off a half-written line, so the file ends with a whole line.
    pub fn close(mut self) {
        if self.finish_partial().is_err() && self.abandon_partial().is_some() {
            self.health.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A failed write of a chunk.
#[derive(Debug)]
struct ChunkError {
    /// Whole lines of the chunk not written (a line cut is kept, not counted).
    dropped: u64,
    source: io::Error,
}

#[cfg(test)]
mod tests;
