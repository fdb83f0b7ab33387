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

use super::{line::FlowLine, scan::Scanner};

/// Longest line read; a longer one is counted as malformed and skipped.
pub const MAX_LINE: usize = 1 << 20;

/// Read buffer: lines are read where they lie in it, so the larger it is
/// the fewer straddle two fills and are copied.
const BUFFER: usize = 1 << 18;

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
    // One scanner for every input: the nodes' logs name the same pods.
    let mut scanner = Scanner::default();
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
        let mut buffered = BufReader::with_capacity(BUFFER, raw);
        let gzip = match buffered.fill_buf() {
            Ok(head) => head.starts_with(&[0x1f, 0x8b]),
            Err(error) => {
                report.problem(ProblemKind::Unreadable, &name, 0, format!("cannot read: {error}"));
                continue;
            }
        };
        if gzip {
            let decoded = BufReader::with_capacity(BUFFER, MultiGzDecoder::new(buffered));
            read_lines(decoded, &name, true, &mut scanner, &mut report, each);
        } else {
            read_lines(buffered, &name, false, &mut scanner, &mut report, each);
        }
    }
    report
}

/// Reads `reader` line by line. A line that lies whole in the reader's
/// buffer (nearly all of them: the buffer holds hundreds) is read where it
/// lies; only a line that straddles two fills is copied, into `carry`.
fn read_lines(
    mut reader: impl BufRead,
    name: &str,
    gzip: bool,
    scanner: &mut Scanner,
    report: &mut ReadReport,
    each: &mut dyn FnMut(&FlowLine<'_>, &str, u64, &mut ReadReport),
) {
    let mut carry = Vec::new();
    // In an overlong line: everything up to its end is dropped.
    let mut overlong = false;
    let mut number = 0_u64;
    loop {
        let buffer = match reader.fill_buf() {
            Ok(buffer) => buffer,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
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
        };
        if buffer.is_empty() {
            // The last line, when it has no newline.
            if !carry.is_empty() || overlong {
                number += 1;
                report.lines += 1;
                if !overlong {
                    read_line(&carry, name, number, scanner, report, each);
                }
            }
            return;
        }
        let mut used = 0;
        for end in memchr::memchr_iter(b'\n', buffer) {
            let piece = &buffer[used..end];
            used = end + 1;
            number += 1;
            report.lines += 1;
            if overlong {
                overlong = false;
            } else if carry.is_empty() {
                read_line(piece, name, number, scanner, report, each);
            } else if carry.len() + piece.len() > MAX_LINE {
                carry.clear();
                report.problem(ProblemKind::Malformed, name, number, format!("line longer than {MAX_LINE} bytes"));
            } else {
                carry.extend_from_slice(piece);
                read_line(&carry, name, number, scanner, report, each);
                carry.clear();
            }
        }
        let rest = &buffer[used..];
        if !overlong {
            if carry.len() + rest.len() > MAX_LINE {
                carry.clear();
                overlong = true;
                report.problem(ProblemKind::Malformed, name, number + 1, format!("line longer than {MAX_LINE} bytes"));
            } else {
                carry.extend_from_slice(rest);
            }
        }
        let len = buffer.len();
        reader.consume(len);
    }
}

/// Reads one line (without its newline), blank lines skipped.
fn read_line(
    line: &[u8],
    name: &str,
    number: u64,
    scanner: &mut Scanner,
    report: &mut ReadReport,
    each: &mut dyn FnMut(&FlowLine<'_>, &str, u64, &mut ReadReport),
) {
    if line.len() > MAX_LINE {
        report.problem(ProblemKind::Malformed, name, number, format!("line longer than {MAX_LINE} bytes"));
        return;
    }
    let text = line.strip_suffix(b"\r").unwrap_or(line);
    if text.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    // The scanner reads daemon-written lines; serde_json has the last word on the rest.
    let parsed = match scanner.line(text) {
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

#[cfg(test)]
mod tests {
    use super::*;

    const RECORD: &str = r#"{"event":"end","node":"a","protocol":"tcp","src":{"ip":"198.18.0.10","port":1000},"dst":{"ip":"198.18.0.11","port":80},"local":"src","state":"closed","to_dst":{"packets":1,"bytes":2},"to_src":{"packets":3,"bytes":4},"first_seen":"2026-01-01T00:00:01.000Z","last_seen":"2026-01-01T00:00:02.000Z"}"#;

    /// Reads `text` through a buffer of `capacity` bytes; the nodes of the records read.
    fn lines(text: &[u8], capacity: usize) -> (ReadReport, Vec<(u64, String)>) {
        let mut report = ReadReport::default();
        let mut seen = Vec::new();
        let reader = BufReader::with_capacity(capacity, text);
        read_lines(reader, "f", false, &mut Scanner::default(), &mut report, &mut |line, _, number, _| {
            seen.push((number, line.node.to_string()));
        });
        (report, seen)
    }

    #[test]
    fn lines_across_buffer_fills_and_overlong_lines_are_read_as_lines() {
        let record = |node: &str| RECORD.replace(r#""node":"a""#, &format!(r#""node":"{node}""#));
        let overlong = "x".repeat(MAX_LINE + 1);
        let text = [record("1"), overlong.clone(), record("3"), "{garbage".to_owned(), String::new(), record("6")]
            .join("\n")
            + "\r\n"
            + &overlong
            + "\n"
            + &record("8");
        // Buffers smaller than a line, about a line, and larger than the whole text.
        for capacity in [7, RECORD.len(), RECORD.len() + 1, 1 << 21] {
            let (report, seen) = lines(text.as_bytes(), capacity);
            assert_eq!(
                seen,
                vec![(1, "1".to_owned()), (3, "3".to_owned()), (6, "6".to_owned()), (8, "8".to_owned())],
                "{capacity}"
            );
            assert_eq!((report.lines, report.records), (8, 4), "{capacity}");
            let problems: Vec<(&str, u64)> = report.problems.iter().map(|p| (p.kind.as_str(), p.line)).collect();
            assert_eq!(problems, vec![("malformed", 2), ("malformed", 4), ("malformed", 7)], "{capacity}");
        }
    }

    #[test]
    fn a_line_of_max_line_bytes_is_not_overlong() {
        let padded = RECORD.replacen('{', &format!("{{{}", " ".repeat(MAX_LINE - RECORD.len())), 1);
        assert_eq!(padded.len(), MAX_LINE);
        let (report, seen) = lines(format!("{padded}\n{padded}").as_bytes(), 1 << 16);
        assert_eq!((report.lines, seen.len(), report.problem_count()), (2, 2, 0));
    }
}
