//! Runs `observer run` as a child process for tests, the demo and benchmarks.
//!
//! In: extra command-line options. Out: a guard that waits until the kernel
//! programs are attached, and on [`ObserverProcess::stop`] sends SIGTERM and
//! returns the flow-log records and the final capture health. The child is
//! killed on drop, so a failing test never leaves it attached.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

/// Environment variable naming the observer binary.
pub const OBSERVER_BIN_ENV: &str = "OBSERVER_BIN";

/// Why the observer could not be run.
#[derive(Debug, thiserror::Error)]
pub enum ObserverError {
    /// The binary was not found.
    #[error(
        "observer binary not found (looked at {looked_at}); build it with `cargo build -p observer` or set {OBSERVER_BIN_ENV}"
    )]
    Binary {
        /// Paths tried.
        looked_at: String,
    },
    /// A file operation failed.
    #[error("{what} {path}")]
    Io {
        /// What was attempted.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// It did not report its programs attached in time.
    #[error("observer did not attach within {waited:?}; its log ends with:\n{log_tail}")]
    NotReady {
        /// How long we waited.
        waited: Duration,
        /// The end of its stderr.
        log_tail: String,
    },
    /// An HTTP request to its endpoints failed.
    #[error("GET {path} from the observer: {detail}")]
    Http {
        /// The request path.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// It exited badly or did not stop.
    #[error("observer {what}; its log ends with:\n{log_tail}")]
    Exit {
        /// What happened.
        what: String,
        /// The end of its stderr.
        log_tail: String,
    },
}

/// What a stopped observer left.
#[derive(Debug)]
pub struct ObserverRun {
    /// Every flow-log record, in order.
    pub records: Vec<Value>,
    /// The `health` object of the final `capture stopped` log line.
    pub health: Value,
    /// Its stderr (JSON log lines).
    pub log: String,
    /// Its `/metrics` just before it was told to stop (empty with
    /// `--metrics-addr off`).
    pub metrics: String,
}

/// A running `observer run`.
#[derive(Debug)]
pub struct ObserverProcess {
    child: Child,
    dir: PathBuf,
    flow_log: PathBuf,
    /// The network namespace it runs in, when not the caller's (its HTTP endpoints are there).
    netns: Option<PathBuf>,
}

/// The observer binary: `$OBSERVER_BIN`, else `observer` next to (or one
/// folder above) the current executable, as cargo lays out test binaries.
pub fn observer_binary() -> Result<PathBuf, ObserverError> {
    if let Some(path) = std::env::var_os(OBSERVER_BIN_ENV).filter(|value| !value.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(|source| ObserverError::Io {
        what: "locating",
        path: PathBuf::from("/proc/self/exe"),
        source,
    })?;
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(|dir| dir.join("observer")).collect();
    candidates.iter().find(|path| path.is_file()).cloned().ok_or_else(|| ObserverError::Binary {
        looked_at: candidates.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

impl ObserverProcess {
    /// Starts `observer run --flow-log <tmp> --log-format json <args>` and
    /// waits (at most 30 s) until its programs are attached. Unless `args`
    /// say otherwise, the HTTP endpoints listen on a free loopback port
    /// ([`ObserverProcess::metrics_addr`]), so runs never collide, and the
    /// flow log is `flows.jsonl` in a fresh folder ([`ObserverProcess::flow_log`]).
    pub fn start(args: &[&str]) -> Result<Self, ObserverError> {
        Self::start_with(args, |_| {})
    }

    /// Like [`ObserverProcess::start`], but the observer runs inside the
    /// network namespace at `netns_path` (the lab node's, as a hostNetwork
    /// DaemonSet pod runs in its node's: conntrack is per namespace). It
    /// enters with setns(CLONE_NEWNET) before exec, which keeps the mount
    /// namespace and so `/sys/fs/cgroup` (`ip netns exec` would remount
    /// `/sys`). Its `/metrics` then answers only in that namespace:
    /// [`ObserverProcess::get`] goes there.
    pub fn start_in_netns(netns_path: &Path, args: &[&str]) -> Result<Self, ObserverError> {
        Self::start_with_netns(args, Some(netns_path), |_| {})
    }

    /// Like [`ObserverProcess::start`], `prepare` changing the command
    /// first (see [`crate::seccomp`]).
    pub fn start_with(args: &[&str], prepare: impl FnOnce(&mut Command)) -> Result<Self, ObserverError> {
        Self::start_with_netns(args, None, prepare)
    }

    fn start_with_netns(
        args: &[&str],
        netns: Option<&Path>,
        prepare: impl FnOnce(&mut Command),
    ) -> Result<Self, ObserverError> {
        let binary = observer_binary()?;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let serial = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("observer-run-{}-{serial}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|source| ObserverError::Io { what: "creating", path: dir.clone(), source })?;
        let log_path = dir.join("observer.log");
        let log = fs::File::create(&log_path).map_err(|source| ObserverError::Io {
            what: "creating",
            path: log_path.clone(),
            source,
        })?;
        let given_flow_log = args.iter().position(|arg| *arg == "--flow-log").and_then(|at| args.get(at + 1));
        let flow_log = given_flow_log.map_or_else(|| dir.join("flows.jsonl"), PathBuf::from);
        let mut command = Command::new(&binary);
        if let Some(netns) = netns {
            crate::exec::enter(&mut command, netns, None);
        }
        prepare(&mut command);
        command.args(["--log-format", "json", "run"]);
        if given_flow_log.is_none() {
            command.arg("--flow-log").arg(&flow_log);
        }
        let child = command
            .args(args)
            .args(if args.iter().any(|arg| arg.starts_with("--metrics-addr")) {
                &[][..]
            } else {
                &["--metrics-addr", "127.0.0.1:0"][..]
            })
            // An error that stops the start is one line; with RUST_BACKTRACE
            // set (as in CI) anyhow would bury it under its backtrace, past
            // the log tail a failure shows. Panics keep their backtraces.
            .env("RUST_LIB_BACKTRACE", "0")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|source| ObserverError::Io { what: "starting", path: binary.clone(), source })?;
        let mut process = Self { child, dir, flow_log, netns: netns.map(Path::to_owned) };
        process.wait_attached(Duration::from_secs(30))?;
        Ok(process)
    }

    /// Process id of the observer.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The folder holding the flow log and the observer's log.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The flow log written so far.
    pub fn flow_log(&self) -> PathBuf {
        self.flow_log.clone()
    }

    /// Sends `signal` (`libc::SIGHUP`…) to the observer.
    pub fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, signal) };
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Its log so far (JSON lines on stderr).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.join("observer.log")).unwrap_or_default()
    }

    fn wait_attached(&mut self, limit: Duration) -> Result<(), ObserverError> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if self.log().contains("kernel programs attached") {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(ObserverError::Exit {
                    what: format!("exited with {status} while starting"),
                    log_tail: tail(&self.log()),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(ObserverError::NotReady { waited: limit, log_tail: tail(&self.log()) })
    }

    /// Where `/metrics`, `/healthz` and `/readyz` answer, from the
    /// observer's `serving` log line.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        parse_lines(&self.log())
            .iter()
            .find(|line| line.get("message").and_then(Value::as_str).is_some_and(|m| m.starts_with("serving /metrics")))
            .and_then(|line| line.get("addr").and_then(Value::as_str).and_then(|addr| addr.parse().ok()))
    }

    /// `GET path` from its HTTP endpoints (`/metrics`, `/healthz`, …),
    /// made from inside its network namespace: status and body.
    pub fn get(&self, path: &str) -> Result<(u16, String), ObserverError> {
        let http = |detail: String| ObserverError::Http { path: path.to_owned(), detail };
        let addr = self.metrics_addr().ok_or_else(|| http("no `serving /metrics` line in its log".to_owned()))?;
        let get = || crate::http_get(addr, path).map_err(|e| http(e.to_string()));
        match &self.netns {
            None => get(),
            Some(netns) => crate::exec::in_netns(netns, || Ok(get()))
                .unwrap_or_else(|e| Err(http(format!("entering {}: {e}", netns.display())))),
        }
    }

    /// Waits, at most `limit`, until the flow log written so far satisfies
    /// `done`; returns whether it did (the caller's assertions say why not).
    pub fn wait_for_records(&self, limit: Duration, done: impl Fn(&[Value]) -> bool) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if done(&self.records()) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Records written so far.
    pub fn records(&self) -> Vec<Value> {
        parse_lines(&fs::read_to_string(self.flow_log()).unwrap_or_default())
    }

    /// Sends SIGTERM, waits (at most 30 s) for a clean exit, and returns what
    /// it wrote.
    pub fn stop(self) -> Result<ObserverRun, ObserverError> {
        let mut records = Vec::new();
        let mut run = self.stop_streaming(|line| records.extend(serde_json::from_str::<Value>(line).ok()))?;
        run.records = records;
        Ok(run)
    }

    /// Like [`ObserverProcess::stop`], but hands each flow-log line to
    /// `on_line` instead of keeping parsed records (for runs of hundreds of
    /// thousands of flows); `records` of the result is empty.
    pub fn stop_streaming(mut self, mut on_line: impl FnMut(&str)) -> Result<ObserverRun, ObserverError> {
        let metrics = self.get("/metrics").map(|(_, body)| body).unwrap_or_default();
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(0);
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let start = Instant::now();
        let status = loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                break status;
            }
            if start.elapsed() > Duration::from_secs(30) {
                return Err(ObserverError::Exit {
                    what: "did not stop within 30 s of SIGTERM".to_owned(),
                    log_tail: tail(&self.log()),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let log = self.log();
        if !status.success() {
            return Err(ObserverError::Exit { what: format!("exited with {status}"), log_tail: tail(&log) });
        }
        let health = parse_lines(&log)
            .into_iter()
            .find(|line| line.get("message").and_then(Value::as_str) == Some("capture stopped"))
            .and_then(|line| {
                line.get("health").and_then(Value::as_str).and_then(|text| serde_json::from_str(text).ok())
            })
            .unwrap_or(Value::Null);
        // A pipe or FIFO given as the flow log is the test's to read:
        // opening it here would wait for a writer that has gone.
        let regular = fs::metadata(self.flow_log()).is_ok_and(|meta| meta.is_file());
        if let Some(file) = regular.then(|| fs::File::open(self.flow_log()).ok()).flatten() {
            use std::io::BufRead as _;
            for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
                on_line(&line);
            }
        }
        Ok(ObserverRun { records: Vec::new(), health, log, metrics })
    }
}

fn parse_lines(text: &str) -> Vec<Value> {
    text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

impl Drop for ObserverProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}
