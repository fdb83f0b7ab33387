//! The `lab-traffic` contract: options in (turned into its command line), JSON reports out (parsed
//! back), shared by the binary and the lab so the two never disagree; plus where to find the binary.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Environment variable naming the `lab-traffic` binary, overriding the search next to the current executable.
pub const TRAFFIC_BIN_ENV: &str = "OBSERVER_LAB_TRAFFIC";

/// The `lab-traffic` binary: `$OBSERVER_LAB_TRAFFIC`, else next to the running executable or one
/// directory up (test binaries live in `target/<profile>/deps/`, binaries in `target/<profile>/`).
/// Integration tests can pass `env!("CARGO_BIN_EXE_lab-traffic")` to the lab builder instead.
pub fn traffic_binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(TRAFFIC_BIN_ENV).filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe().map_err(Error::io("locating", "/proc/self/exe"))?;
    let candidates: Vec<PathBuf> = exe.ancestors().skip(1).take(2).map(|dir| dir.join("lab-traffic")).collect();
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| Error::TrafficBinary {
        looked_at: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// `tcp-server` options.
#[derive(Debug, Clone, Default)]
pub struct TcpServerOpts {
    /// Bytes to send back on each connection before closing it.
    pub reply: u64,
    /// Stop reading after this many bytes instead of at EOF.
    pub read: Option<u64>,
    /// Exit (printing a `done` line) after this many connections.
    pub max_conns: Option<u64>,
    /// Print a `conn` line per connection.
    pub log_conns: bool,
}

impl TcpServerOpts {
    /// The `lab-traffic` arguments for a server on `listen`.
    pub fn args(&self, listen: SocketAddr) -> Vec<String> {
        let mut args = vec!["tcp-server".into(), "--listen".into(), listen.to_string()];
        args.extend(["--reply".into(), self.reply.to_string()]);
        push_opt(&mut args, "--read", self.read);
        push_opt(&mut args, "--max-conns", self.max_conns);
        if self.log_conns {
            args.push("--log-conns".into());
        }
        args
    }
}

/// `tcp-client` options: `count` sequential connections, each sending `send` bytes, half-closing,
/// then reading the reply until EOF.
#[derive(Debug, Clone)]
pub struct TcpClientOpts {
    /// Connections to make, one after the other.
    pub count: u64,
    /// Bytes to send on each.
    pub send: u64,
    /// Bytes each connection should receive; a connection counts as `complete` when it got exactly this.
    pub expect: u64,
    /// Connect and read timeout per connection.
    pub timeout: Duration,
    /// The local address to connect from (a node with several addresses probing from one of them);
    /// by default the kernel picks it from the route.
    pub bind: Option<std::net::IpAddr>,
    /// How long each connection stays open after sending, before it half-closes (a long-lived
    /// connection that a policy change can overtake).
    pub hold: Duration,
}

impl Default for TcpClientOpts {
    /// One connection, nothing sent or expected, 2 s timeout, source address from the route, no hold.
    fn default() -> Self {
        Self { count: 1, send: 0, expect: 0, timeout: Duration::from_secs(2), bind: None, hold: Duration::ZERO }
    }
}

impl TcpClientOpts {
    /// The `lab-traffic` arguments for connections to `target`.
    pub fn args(&self, target: SocketAddr) -> Vec<String> {
        let mut args = vec!["tcp-client".into(), "--connect".into(), target.to_string()];
        args.extend(["--count".into(), self.count.to_string(), "--send".into(), self.send.to_string()]);
        args.extend(["--expect".into(), self.expect.to_string()]);
        args.extend(["--timeout-ms".into(), self.timeout.as_millis().to_string()]);
        if let Some(bind) = self.bind {
            args.extend(["--bind".into(), bind.to_string()]);
        }
        if !self.hold.is_zero() {
            args.extend(["--hold-ms".into(), self.hold.as_millis().to_string()]);
        }
        args
    }

    /// The most a run can take: every connection timing out on connect and on read, and holding.
    pub fn bound(&self) -> Duration {
        (self.timeout * 2 + self.hold) * u32::try_from(self.count).unwrap_or(u32::MAX) + Duration::from_secs(10)
    }
}

/// `burst` options: many short connections (connect, send, half-close, read to EOF, close) as fast as
/// possible from several threads.
#[derive(Debug, Clone)]
pub struct BurstOpts {
    /// Connections in total.
    pub count: u64,
    /// Client threads sharing them.
    pub threads: u64,
    /// Bytes sent on each.
    pub send: u64,
    /// Connect and read timeout per connection.
    pub timeout: Duration,
}

impl Default for BurstOpts {
    /// 1000 connections over 4 threads, 16 bytes each, 2 s timeout.
    fn default() -> Self {
        Self { count: 1000, threads: 4, send: 16, timeout: Duration::from_secs(2) }
    }
}

impl BurstOpts {
    /// The `lab-traffic` arguments for a burst to `target`.
    pub fn args(&self, target: SocketAddr) -> Vec<String> {
        let mut args = vec!["burst".into(), "--connect".into(), target.to_string()];
        args.extend(["--count".into(), self.count.to_string(), "--threads".into(), self.threads.to_string()]);
        args.extend(["--send".into(), self.send.to_string()]);
        args.extend(["--timeout-ms".into(), self.timeout.as_millis().to_string()]);
        args
    }

    /// A generous bound for a whole burst: 5 ms per connection plus 30 s.
    pub fn bound(&self) -> Duration {
        Duration::from_millis(5 * self.count) + Duration::from_secs(30)
    }
}

/// `udp-server` options.
#[derive(Debug, Clone, Default)]
pub struct UdpServerOpts {
    /// Bytes in each reply datagram.
    pub reply: u64,
    /// Exit (printing a `done` line) after this many requests.
    pub max_requests: Option<u64>,
}

impl UdpServerOpts {
    /// The `lab-traffic` arguments for a server on `listen`.
    pub fn args(&self, listen: SocketAddr) -> Vec<String> {
        let mut args = vec!["udp-server".into(), "--listen".into(), listen.to_string()];
        args.extend(["--reply".into(), self.reply.to_string()]);
        push_opt(&mut args, "--max-requests", self.max_requests);
        args
    }
}

/// `udp-client` options: `count` requests of `send` bytes, each waiting for one reply.
#[derive(Debug, Clone)]
pub struct UdpClientOpts {
    /// Requests to send.
    pub count: u64,
    /// Bytes per request.
    pub send: u64,
    /// Bytes a reply should have; a reply of another size is counted but not as `complete`.
    pub expect: u64,
    /// How long to wait for each reply.
    pub timeout: Duration,
}

impl Default for UdpClientOpts {
    /// One 64-byte request expecting a 64-byte reply, 1 s timeout.
    fn default() -> Self {
        Self { count: 1, send: 64, expect: 64, timeout: Duration::from_secs(1) }
    }
}

impl UdpClientOpts {
    /// The `lab-traffic` arguments for requests to `target`.
    pub fn args(&self, target: SocketAddr) -> Vec<String> {
        let mut args = vec!["udp-client".into(), "--connect".into(), target.to_string()];
        args.extend(["--count".into(), self.count.to_string(), "--send".into(), self.send.to_string()]);
        args.extend(["--expect".into(), self.expect.to_string()]);
        args.extend(["--timeout-ms".into(), self.timeout.as_millis().to_string()]);
        args
    }

    /// The most a run can take: every request timing out.
    pub fn bound(&self) -> Duration {
        self.timeout * u32::try_from(self.count).unwrap_or(u32::MAX) + Duration::from_secs(10)
    }
}

fn push_opt(args: &mut Vec<String>, flag: &str, value: Option<u64>) {
    if let Some(v) = value {
        args.extend([flag.to_owned(), v.to_string()]);
    }
}

/// What `tcp-client` prints (one JSON line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpClientReport {
    /// The address connected to.
    pub target: String,
    /// Connections tried.
    pub attempted: u64,
    /// Connections established.
    pub connected: u64,
    /// Connections refused (RST to the SYN).
    pub refused: u64,
    /// Connects or reads that timed out.
    pub timed_out: u64,
    /// Any other failure.
    pub other_errors: u64,
    /// Connections that received exactly the expected number of bytes.
    pub complete: u64,
    /// Payload bytes written, over all connections.
    pub bytes_sent: u64,
    /// Payload bytes read, over all connections.
    pub bytes_received: u64,
    /// The local port of each established connection, in order.
    pub local_ports: Vec<u16>,
    /// Wall time of the run.
    pub elapsed_ms: u64,
}

/// What `burst` prints (one JSON line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BurstReport {
    /// The address connected to.
    pub target: String,
    /// Client threads used.
    pub threads: u64,
    /// Connections tried.
    pub attempted: u64,
    /// Connections that went through connect, send, half-close and the server's close.
    pub completed: u64,
    /// Connections refused.
    pub refused: u64,
    /// Connects or reads that timed out.
    pub timed_out: u64,
    /// Any other failure (for example no free local port).
    pub other_errors: u64,
    /// Payload bytes written.
    pub bytes_sent: u64,
    /// Wall time of the run.
    pub elapsed_ms: u64,
}

/// What `udp-client` prints (one JSON line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UdpClientReport {
    /// The address sent to.
    pub target: String,
    /// Requests sent.
    pub sent: u64,
    /// Replies received.
    pub replies: u64,
    /// Replies of exactly the expected size.
    pub complete: u64,
    /// Requests whose reply did not come in time.
    pub timed_out: u64,
    /// Requests answered with ICMP port unreachable (nothing listening).
    pub refused: u64,
    /// Payload bytes sent.
    pub bytes_sent: u64,
    /// Payload bytes received.
    pub bytes_received: u64,
    /// The client's local port (one socket for all requests).
    pub local_port: u16,
    /// Wall time of the run.
    pub elapsed_ms: u64,
}

/// What `ping` prints (one JSON line), and what the lab's ping helper returns whichever tool it used.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingReport {
    /// The address pinged.
    pub dest: String,
    /// `raw` or `dgram` (lab-traffic's socket kind) or `iputils` (the system ping).
    pub method: String,
    /// Echo requests sent.
    pub sent: u64,
    /// Matching echo replies received.
    pub received: u64,
}

/// A line printed by `tcp-server` or `udp-server`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum ServerEvent {
    /// Listening; printed once, first.
    Ready {
        /// The bound address.
        listen: String,
    },
    /// One TCP connection served (with `--log-conns`).
    Conn {
        /// The client's address.
        peer: String,
        /// Bytes read from it.
        bytes_received: u64,
        /// Bytes written to it.
        bytes_sent: u64,
    },
    /// `--max-conns` / `--max-requests` reached; the server exits after this line.
    Done {
        /// Connections (TCP) or requests (UDP) served.
        served: u64,
        /// Bytes read in total.
        bytes_received: u64,
        /// Bytes written in total.
        bytes_sent: u64,
    },
}

impl ServerEvent {
    /// Parses one output line; `None` for anything else.
    pub fn parse(line: &str) -> Option<Self> {
        serde_json::from_str(line).ok()
    }
}

/// Parses the summary `lab-traffic` printed as its last stdout line.
pub(crate) fn parse_report<T: for<'de> Deserialize<'de>>(command: &str, stdout: &[u8]) -> Result<T> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    serde_json::from_str(line)
        .map_err(|e| Error::Output { command: command.to_owned(), detail: format!("{e} in {line:?}") })
}

/// Parses iputils `ping` output ("N packets transmitted, M received") into a report.
pub(crate) fn parse_iputils_ping(dest: &str, stdout: &str) -> Option<PingReport> {
    let line = stdout.lines().find(|l| l.contains("packets transmitted"))?;
    let mut numbers = line.split(',').map(|part| part.split_whitespace().next().and_then(|n| n.parse().ok()));
    let sent = numbers.next()??;
    let received = numbers.next()??;
    Some(PingReport { dest: dest.to_owned(), method: "iputils".into(), sent, received })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iputils_summary() {
        let out = "PING 198.18.0.11 (198.18.0.11) 56(84) bytes of data.\n\n--- 198.18.0.11 ping statistics ---\n\
                   3 packets transmitted, 2 received, 33.3333% packet loss, time 2003ms\n";
        let report = parse_iputils_ping("198.18.0.11", out).expect("parsed");
        assert_eq!((report.sent, report.received), (3, 2));
        assert_eq!(parse_iputils_ping("x", "garbage"), None);
    }

    #[test]
    fn server_events_round_trip() {
        let ready = ServerEvent::Ready { listen: "[2001:db8:198:18::10]:80".into() };
        let line = serde_json::to_string(&ready).expect("serializes");
        assert_eq!(line, r#"{"event":"ready","listen":"[2001:db8:198:18::10]:80"}"#);
        assert_eq!(ServerEvent::parse(&line), Some(ready));
        assert_eq!(ServerEvent::parse("not json"), None);
    }

    #[test]
    fn report_is_last_line() {
        let out = b"noise\n{\"target\":\"t\",\"sent\":1,\"replies\":1,\"complete\":1,\"timed_out\":0,\"refused\":0,\"bytes_sent\":1,\
                    \"bytes_received\":1,\"local_port\":5,\"elapsed_ms\":0}\n";
        let r: UdpClientReport = parse_report("udp-client", out).expect("parsed");
        assert_eq!(r.local_port, 5);
    }
}
