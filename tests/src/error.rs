//! Lab errors: every failure the lab can report, from a missing tool to a command that timed out.

use std::{io, path::PathBuf, time::Duration};

/// Result of a lab operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process is not root.
    #[error("the lab needs root (network namespaces, cgroups): run as root")]
    NotRoot,
    /// A program the lab shells out to is not installed.
    #[error("`{tool}` not found in PATH: install the Debian package `{package}` (apt-get install {package})")]
    MissingTool {
        /// The program, e.g. `nft`.
        tool: &'static str,
        /// The Debian package that ships it.
        package: &'static str,
    },
    /// Neither candidate mount point holds a cgroup v2 hierarchy.
    #[error("no cgroup v2 hierarchy at {looked_at}: mount one or set OBSERVER_CGROUP_ROOT")]
    NoCgroup2 {
        /// The paths that were checked.
        looked_at: String,
    },
    /// `OBSERVER_CGROUP_ROOT` points somewhere that is not a cgroup v2 mount.
    #[error("OBSERVER_CGROUP_ROOT={path} is not a cgroup v2 directory")]
    NotCgroup2 {
        /// The configured path.
        path: PathBuf,
    },
    /// A file system operation failed.
    #[error("{what} {path}")]
    Io {
        /// What the lab was doing.
        what: &'static str,
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A child process could not be started.
    #[error("starting `{command}`")]
    Spawn {
        /// The command line.
        command: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// How it exited.
        status: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A command did not finish in time and was killed.
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout {
        /// The command line.
        command: String,
        /// The time it was given.
        timeout: Duration,
    },
    /// A server did not report readiness in time.
    #[error("`{command}` printed no ready line within {timeout:?}; stderr: {stderr}")]
    NotReady {
        /// The command line.
        command: String,
        /// The time it was given.
        timeout: Duration,
        /// What it wrote to stderr so far.
        stderr: String,
    },
    /// A line could not be written to a child process's stdin.
    #[error("writing to the stdin of `{command}`")]
    Stdin {
        /// The command line.
        command: String,
        /// The underlying error (the process closed its stdin or exited).
        #[source]
        source: io::Error,
    },
    /// A command's output could not be understood.
    #[error("unexpected output from `{command}`: {detail}")]
    Output {
        /// The command line.
        command: String,
        /// What was wrong with it.
        detail: String,
    },
    /// The lab state file could not be parsed.
    #[error("lab state file {path} is not valid")]
    State {
        /// The state file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// An address outside the ranges the lab may use.
    #[error("{addr} is outside {allowed}: the lab only uses its own test ranges")]
    AddressOutOfRange {
        /// The rejected address.
        addr: std::net::IpAddr,
        /// The ranges that are allowed here.
        allowed: &'static str,
    },
    /// The builder was asked for something the address plan cannot hold.
    #[error("{pods} pods requested: the lab supports 1 to {max}")]
    PodCount {
        /// How many were requested.
        pods: usize,
        /// The maximum.
        max: usize,
    },
    /// `lab up` while a persistent lab exists.
    #[error("a persistent lab is already up (state in {path}): run `cargo xtask lab down` first")]
    AlreadyUp {
        /// Its state file.
        path: PathBuf,
    },
    /// A node feature (Services, probes, host-network pods) was asked of a lab built without it.
    #[error("the lab was built without its node network: use `Lab::builder().node(true)`")]
    NoNode,
    /// The lab-traffic binary could not be found.
    #[error("lab-traffic binary not found (looked at {looked_at}): build it or set OBSERVER_LAB_TRAFFIC")]
    TrafficBinary {
        /// The paths that were checked.
        looked_at: String,
    },
}

impl Error {
    /// An [`Error::Io`] for `path`.
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }
}
