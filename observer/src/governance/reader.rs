//! Streams flow logs written by `observer run` for the offline commands.
//!
//! In: any number of flow-log files (plain or gzip, by their magic bytes) or
//! `-` for stdin. Out: each record as a borrowed [`FlowLine`] (`line.rs`), handed to a
//! callback as soon as it is read (nothing is kept per record), and a
//! [`ReadReport`] that counts what could not be used (malformed lines,
//! records of another schema, truncated gzip, unreadable files) with the
//! file:line of the first ones.

use std::{
    collections::BTreeMap,
    fmt,
    fs::File,
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
};

use flate2::read::MultiGzDecoder;

use super::line::FlowLine;

/// Longest line read; a longer one is counted as malformed and skipped.
pub const MAX_LINE: usize = 1 << 20;

/// Problems kept with their file:line; past it they are only counted.
const MAX_PROBLEMS: usize = 50;

/// What went wrong with one input line or file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProblemKind {
    /// Not JSON, not UTF-8, or longer than [`MAX_LINE`].
    Malformed,
    /// JSON, but not a flow record of this schema (a field missing or of
    /// another type, or a findings or DNS log line).
    OtherSchema,
    /// A gzip file that ends before its end (the rest of it is lost).
    Truncated,
    /// A file that cannot be opened or read.
    Unreadable,
    /// A record the command could not use (its own reason).
    Unusable,
}

impl ProblemKind {
    /// Its name in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::OtherSchema => "other-schema",
            Self::Truncated => "truncated",
            Self::Unreadable => "unreadable",
            Self::Unusable => "unusable",
        }
    }
}

/// One problem, where it was.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// What kind.
    pub kind: ProblemKind,
    /// The file (`-` for stdin).
    pub file: String,
    /// 1-based line (0: the file as a whole).
    pub line: u64,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: {}", self.file, self.line, self.kind.as_str(), self.message)
    }
}

/// What reading the inputs gave.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReadReport {
    /// Files (and stdin) read.
    pub files: u64,
    /// Lines read (blank ones included).
    pub lines: u64,
    /// Records handed on.
    pub records: u64,
    /// Problems by kind.
    pub counts: BTreeMap<&'static str, u64>,
    /// The first problems with their file:line.
    pub problems: Vec<Problem>,
}

impl ReadReport {
    /// Counts a problem and keeps the first ones.
    pub fn problem(&mut self, kind: ProblemKind, file: &str, line: u64, message: String) {
        *self.counts.entry(kind.as_str()).or_default() += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { kind, file: file.to_owned(), line, message });
        }
    }

    /// Problems of every kind.
    pub fn problem_count(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Writes the problems and, when nothing was read, that the input was
    /// empty, to `out` (stderr for the commands).
    pub fn describe(&self, out: &mut dyn io::Write) -> io::Result<()> {
        for problem in &self.problems {
            writeln!(out, "{problem}")?;
        }
        let total = self.problem_count();
        if total > self.problems.len() as u64 {
            writeln!(out, "... and {} more problems", total - self.problems.len() as u64)?;
        }
        if total > 0 {
            let counts: Vec<String> = self.counts.iter().map(|(kind, count)| format!("{count} {kind}")).collect();
            writeln!(out, "flow logs: {} records used; left out: {}", self.records, counts.join(", "))?;
        }
        if self.records == 0 {
            writeln!(out, "flow logs: no flow records in the input ({} files, {} lines)", self.files, self.lines)?;
        }
        Ok(())
    }
}

/// Where records are read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Standard input.
    Stdin,
    /// A file.
    File(PathBuf),
}

impl Input {
    /// `-` is stdin, anything else a file.
    pub fn of(path: &Path) -> Self {
        if path == Path::new("-") { Self::Stdin } else { Self::File(path.to_owned()) }
    }

    fn name(&self) -> String {
        match self {
            Self::Stdin => "-".to_owned(),
            Self::File(path) => path.display().to_string(),
        }
    }
}

/// Reads every input in order, handing each record to `each` (the file
/// name and line are given for the commands' own problems); problems are
/// counted in the report and the rest is used.
pub fn read(inputs: &[PathBuf], each: &mut dyn FnMut(&FlowLine<'_>, &str, u64, &mut ReadReport)) -> ReadReport {
    let mut report = ReadReport::default();
    for path in inputs {
        let input = Input::of(path);
        let name = input.name();
        let opened: io::Result<Box<dyn Read>> = match &input {
            Input::Stdin => Ok(Box::new(io::stdin().lock())),
            Input::File(path) => File::open(path).map(|file| Box::new(file) as Box<dyn Read>),
        };
        let raw = match opened {
            Ok(raw) => raw,
            Err(error) => {
                report.problem(ProblemKind::Unreadable, &name, 0, format!("cannot open: {error}"));
                continue;
            }
        };
        report.files += 1;
        let mut buffered = BufReader::with_capacity(1 << 16, raw);
        let gzip = match buffered.fill_buf() {
            Ok(head) => head.starts_with(&[0x1f, 0x8b]),
            Err(error) => {
                report.problem(ProblemKind::Unreadable, &name, 0, format!("cannot read: {error}"));
                continue;
            }
        };
        if gzip {
            let decoded = BufReader::with_capacity(1 << 16, MultiGzDecoder::new(buffered));
            read_lines(decoded, &name, true, &mut report, each);
        } else {
            read_lines(buffered, &name, false, &mut report, each);
        }
    }
    report
}

fn read_lines(
    mut reader: impl BufRead,
    name: &str,
    gzip: bool,
    report: &mut ReadReport,
    each: &mut dyn FnMut(&FlowLine<'_>, &str, u64, &mut ReadReport),
) {
    let mut line = Vec::with_capacity(4096);
    let mut number = 0_u64;
    loop {
        line.clear();
        let read = (&mut reader).take(MAX_LINE as u64 + 1).read_until(b'\n', &mut line);
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) => {
                let kind = if gzip && error.kind() == io::ErrorKind::UnexpectedEof {
                    ProblemKind::Truncated
                } else {
                    ProblemKind::Unreadable
                };
                let what = if kind == ProblemKind::Truncated { "gzip stream ends early" } else { "read failed" };
                report.problem(kind, name, number + 1, format!("{what}: {error}; the rest of the file is lost"));
                return;
            }
        }
        number += 1;
        report.lines += 1;
        if line.len() > MAX_LINE && line.last() != Some(&b'\n') {
            report.problem(ProblemKind::Malformed, name, number, format!("line longer than {MAX_LINE} bytes"));
            if skip_line(&mut reader).is_err() {
                return;
            }
            continue;
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        let text = text.strip_suffix(b"\r").unwrap_or(text);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        // The scanner reads daemon-written lines; serde_json has the last word on the rest.
        let parsed = match super::scan::line(text) {
            Some(record) => Ok(record),
            None => serde_json::from_slice::<FlowLine<'_>>(text),
        };
        match parsed {
            Ok(record) => {
                report.records += 1;
                each(&record, name, number, report);
            }
            Err(error) => {
                // JSON of another shape is another schema; anything else is not JSON.
                let kind = match serde_json::from_slice::<serde::de::IgnoredAny>(text) {
                    Ok(_) => ProblemKind::OtherSchema,
                    Err(_) => ProblemKind::Malformed,
                };
                report.problem(kind, name, number, error.to_string());
            }
        }
    }
}

/// Reads up to the end of an overlong line.
fn skip_line(reader: &mut impl BufRead) -> io::Result<()> {
    loop {
        let buffer = reader.fill_buf()?;
        if buffer.is_empty() {
            return Ok(());
        }
        if let Some(at) = buffer.iter().position(|b| *b == b'\n') {
            reader.consume(at + 1);
            return Ok(());
        }
        let len = buffer.len();
        reader.consume(len);
    }
}
