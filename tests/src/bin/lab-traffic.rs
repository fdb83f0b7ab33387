//! `lab-traffic`: the lab's traffic tool, run inside pods. A mode and `--flag value` options in; one
//! JSON line per event (servers) or one JSON summary line (clients) out on stdout.
//!
//! ```text
//! lab-traffic tcp-server --listen ADDR:PORT [--reply BYTES] [--read BYTES] [--max-conns N] [--log-conns]
//! lab-traffic tcp-client --connect ADDR:PORT [--bind IP] [--hold-ms MS] [--count K] [--send BYTES] [--expect BYTES] [--timeout-ms MS]
//! lab-traffic burst      --connect ADDR:PORT [--count N] [--threads T] [--send BYTES] [--timeout-ms MS]
//! lab-traffic udp-server --listen ADDR:PORT [--reply BYTES] [--max-requests N]
//! lab-traffic udp-client --connect ADDR:PORT [--count K] [--send BYTES] [--expect BYTES] [--timeout-ms MS]
//! lab-traffic ping       --dest ADDR [--count K] [--timeout-ms MS] [--socket auto|raw|dgram]
//! lab-traffic dns-server --listen ADDR:PORT --zone 'name=ip,ip/ttl;!refused-name;…'   (UDP and TCP)
//! lab-traffic dns-query  --server ADDR:PORT --name NAME [--type A|AAAA] [--tcp] [--timeout-ms MS]
//! ```

use std::{
    collections::HashMap,
    io::{ErrorKind, Read, Write},
    net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use observer_tests::{
    BurstReport, PingReport, ServerEvent, TcpClientReport, UdpClientReport, allowed_destination,
    dns::{self, DnsQueryReport, Zone},
};

/// How long a server waits on one peer before giving up on it.
const SERVER_IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Cap on connection threads a TCP server runs at once; beyond it, connections are served inline.
const MAX_HANDLER_THREADS: u64 = 512;
/// Flags that take no value.
const SWITCHES: [&str; 2] = ["log-conns", "tcp"];
/// Pause between echo requests.
const PING_INTERVAL: Duration = Duration::from_millis(100);

fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let mode = argv.next().unwrap_or_default();
    let args = Args::parse(argv)?;
    match mode.as_str() {
        "tcp-server" => tcp_server(&args),
        "tcp-client" => tcp_client(&args),
        "burst" => burst(&args),
        "udp-server" => udp_server(&args),
        "udp-client" => udp_client(&args),
        "ping" => ping(&args),
        "dns-server" => dns_server(&args),
        "dns-query" => dns_query(&args),
        _ => bail!(
            "usage: lab-traffic tcp-server|tcp-client|burst|udp-server|udp-client|ping|dns-server|dns-query [--option value]… \
             (see the module docs in tests/src/bin/lab-traffic.rs)"
        ),
    }
}

/// `--name value` options and `--switch` flags.
struct Args(HashMap<String, String>);

impl Args {
    fn parse(mut argv: impl Iterator<Item = String>) -> anyhow::Result<Self> {
        let mut map = HashMap::new();
        while let Some(arg) = argv.next() {
            let Some(name) = arg.strip_prefix("--") else { bail!("unexpected argument {arg:?}") };
            let value = if SWITCHES.contains(&name) {
                String::new()
            } else {
                argv.next().with_context(|| format!("--{name} needs a value"))?
            };
            map.insert(name.to_owned(), value);
        }
        Ok(Self(map))
    }

    fn has(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }

    fn addr(&self, name: &str) -> anyhow::Result<SocketAddr> {
        let v = self.0.get(name).with_context(|| format!("--{name} ADDR:PORT is required"))?;
        v.parse().with_context(|| format!("--{name} {v:?}: expected ADDR:PORT or [V6ADDR]:PORT"))
    }

    fn num(&self, name: &str, default: u64) -> anyhow::Result<u64> {
        self.0
            .get(name)
            .map_or(Ok(default), |v| v.parse().with_context(|| format!("--{name} {v:?}: expected a number")))
    }

    fn opt(&self, name: &str) -> anyhow::Result<Option<u64>> {
        self.0.get(name).map(|v| v.parse().with_context(|| format!("--{name} {v:?}: expected a number"))).transpose()
    }

    fn timeout(&self, default_ms: u64) -> anyhow::Result<Duration> {
        Ok(Duration::from_millis(self.num("timeout-ms", default_ms)?.max(1)))
    }
}

/// Refuses destinations outside the lab's ranges: test traffic never leaves the lab.
fn target(args: &Args, name: &str) -> anyhow::Result<SocketAddr> {
    let addr = args.addr(name)?;
    if !allowed_destination(addr.ip()) {
        bail!("{addr} is outside the lab ranges (198.18.0.0/15, 203.0.113.0/24, 2001:db8::/32, loopback)");
    }
    Ok(addr)
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string(value)?);
    Ok(())
}

fn millis(since: Instant) -> u64 {
    since.elapsed().as_millis().try_into().unwrap_or(u64::MAX)
}

/// Writes `n` bytes of filler; returns how many went out.
fn write_n(w: &mut impl Write, n: u64) -> u64 {
    let buf = [b'x'; 16 * 1024];
    let mut sent = 0;
    while sent < n {
        let chunk = (n - sent).min(buf.len() as u64) as usize;
        match w.write(&buf[..chunk]) {
            Ok(0) | Err(_) => break,
            Ok(k) => sent += k as u64,
        }
    }
    sent
}

/// Reads until EOF, `limit` bytes, or an error; returns the count and whether it stopped on a timeout.
fn read_n(r: &mut impl Read, limit: Option<u64>) -> (u64, bool) {
    let mut buf = [0u8; 16 * 1024];
    let mut got = 0;
    while limit.is_none_or(|l| got < l) {
        let want = limit.map_or(buf.len() as u64, |l| (l - got).min(buf.len() as u64)) as usize;
        match r.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(k) => got += k as u64,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return (got, matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        }
    }
    (got, false)
}

#[derive(Default)]
struct Totals {
    served: AtomicU64,
    received: AtomicU64,
    sent: AtomicU64,
    in_flight: AtomicU64,
}

fn tcp_server(args: &Args) -> anyhow::Result<()> {
    let listen = args.addr("listen")?;
    let reply = args.num("reply", 0)?;
    let read_limit = args.opt("read")?;
    let max_conns = args.opt("max-conns")?;
    let log = args.has("log-conns");
    let listener = TcpListener::bind(listen).with_context(|| format!("binding {listen}"))?;
    print_json(&ServerEvent::Ready { listen: listener.local_addr()?.to_string() })?;
    let totals = Arc::new(Totals::default());
    let serve = move |mut stream: TcpStream, totals: &Totals| {
        let _ = stream.set_read_timeout(Some(SERVER_IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(SERVER_IO_TIMEOUT));
        let (received, _) = read_n(&mut stream, read_limit);
        let sent = write_n(&mut stream, reply);
        totals.received.fetch_add(received, Relaxed);
        totals.sent.fetch_add(sent, Relaxed);
        totals.served.fetch_add(1, Relaxed);
        if log {
            let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
            let _ = print_json(&ServerEvent::Conn { peer, bytes_received: received, bytes_sent: sent });
        }
    };
    let mut accepted = 0;
    while max_conns.is_none_or(|m| accepted < m) {
        let Ok((stream, _)) = listener.accept() else {
            // Out of file descriptors and the like: back off instead of spinning.
            thread::sleep(Duration::from_millis(10));
            continue;
        };
        accepted += 1;
        if totals.in_flight.load(Relaxed) >= MAX_HANDLER_THREADS {
            serve(stream, &totals);
            continue;
        }
        totals.in_flight.fetch_add(1, Relaxed);
        let totals = Arc::clone(&totals);
        thread::spawn(move || {
            serve(stream, &totals);
            totals.in_flight.fetch_sub(1, Relaxed);
        });
    }
    // Handlers are bounded by their I/O timeouts; wait a little longer than one of them.
    let deadline = Instant::now() + SERVER_IO_TIMEOUT * 2;
    while totals.in_flight.load(Relaxed) > 0 && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(5));
    }
    print_json(&ServerEvent::Done {
        served: totals.served.load(Relaxed),
        bytes_received: totals.received.load(Relaxed),
        bytes_sent: totals.sent.load(Relaxed),
    })
}

/// How one connection ended.
enum Outcome {
    Refused,
    TimedOut,
    Failed,
    /// Established: local port, bytes sent, bytes received, whether the read timed out.
    Done(u16, u64, u64, bool),
}

/// Connects to `target` from the local address `source` (port chosen by the kernel), as a prober
/// on a node with several addresses does; the connect gives up after `timeout`.
fn connect_from(source: IpAddr, target: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let domain = if target.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket(2) has no memory preconditions.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let (local, local_len) = sockaddr(source);
    // SAFETY: `local` is a valid sockaddr of `local_len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const local).cast(), local_len) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // A blocking connect gives up after SO_SNDTIMEO (with EINPROGRESS).
    set_timeout(&fd, libc::SO_SNDTIMEO, timeout)?;
    let (mut remote, remote_len) = sockaddr(target.ip());
    // Both sockaddr_in and sockaddr_in6 keep the port at the same offset, in network order.
    let port = (&raw mut remote).cast::<libc::sockaddr_in>();
    // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
    unsafe { (*port).sin_port = target.port().to_be() };
    // SAFETY: `remote` is a valid sockaddr of `remote_len` bytes.
    if unsafe { libc::connect(fd.as_raw_fd(), (&raw const remote).cast(), remote_len) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EINPROGRESS) { ErrorKind::TimedOut.into() } else { err });
    }
    Ok(TcpStream::from(fd))
}

/// One connection (from `source` when given): connect, send `send` bytes, keep the connection open
/// for `hold`, half-close, read to EOF.
fn one_connection(source: Option<IpAddr>, target: SocketAddr, send: u64, hold: Duration, timeout: Duration) -> Outcome {
    let connected = match source {
        Some(source) => connect_from(source, target, timeout),
        None => TcpStream::connect_timeout(&target, timeout),
    };
    let mut stream = match connected {
        Ok(s) => s,
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Outcome::Refused,
        Err(e) if matches!(e.kind(), ErrorKind::TimedOut | ErrorKind::WouldBlock) => return Outcome::TimedOut,
        Err(_) => return Outcome::Failed,
    };
    let port = stream.local_addr().map(|a| a.port()).unwrap_or(0);
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let sent = write_n(&mut stream, send);
    thread::sleep(hold);
    let _ = stream.shutdown(Shutdown::Write);
    let (received, timed_out) = read_n(&mut stream, None);
    Outcome::Done(port, sent, received, timed_out)
}

fn tcp_client(args: &Args) -> anyhow::Result<()> {
    let target = target(args, "connect")?;
    let source: Option<IpAddr> =
        args.0.get("bind").map(|v| v.parse().with_context(|| format!("--bind {v:?}: expected an IP"))).transpose()?;
    let (count, send, expect) = (args.num("count", 1)?, args.num("send", 0)?, args.num("expect", 0)?);
    let timeout = args.timeout(2000)?;
    let hold = Duration::from_millis(args.num("hold-ms", 0)?);
    let start = Instant::now();
    let mut r = TcpClientReport { target: target.to_string(), ..Default::default() };
    for _ in 0..count {
        r.attempted += 1;
        match one_connection(source, target, send, hold, timeout) {
            Outcome::Refused => r.refused += 1,
            Outcome::TimedOut => r.timed_out += 1,
            Outcome::Failed => r.other_errors += 1,
            Outcome::Done(port, sent, received, timed_out) => {
                r.connected += 1;
                r.local_ports.push(port);
                r.bytes_sent += sent;
                r.bytes_received += received;
                r.timed_out += u64::from(timed_out);
                r.complete += u64::from(sent == send && received == expect && !timed_out);
            }
        }
    }
    r.elapsed_ms = millis(start);
    print_json(&r)
}

fn burst(args: &Args) -> anyhow::Result<()> {
    let target = target(args, "connect")?;
    let (count, threads, send) =
        (args.num("count", 1000)?, args.num("threads", 4)?.clamp(1, 64), args.num("send", 16)?);
    let timeout = args.timeout(2000)?;
    let next = AtomicU64::new(0);
    let [completed, refused, timed_out, failed, bytes] = std::array::from_fn(|_| AtomicU64::new(0));
    let start = Instant::now();
    thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                while next.fetch_add(1, Relaxed) < count {
                    let counter = match one_connection(None, target, send, Duration::ZERO, timeout) {
                        Outcome::Refused => &refused,
                        Outcome::TimedOut | Outcome::Done(_, _, _, true) => &timed_out,
                        Outcome::Failed => &failed,
                        Outcome::Done(_, sent, _, false) => {
                            bytes.fetch_add(sent, Relaxed);
                            if sent == send { &completed } else { &failed }
                        }
                    };
                    counter.fetch_add(1, Relaxed);
                }
            });
        }
    });
    print_json(&BurstReport {
        target: target.to_string(),
        threads,
        attempted: count,
        completed: completed.into_inner(),
        refused: refused.into_inner(),
        timed_out: timed_out.into_inner(),
        other_errors: failed.into_inner(),
        bytes_sent: bytes.into_inner(),
        elapsed_ms: millis(start),
    })
}

fn dns_server(args: &Args) -> anyhow::Result<()> {
    let listen = args.addr("listen")?;
    let zone = Zone::parse(args.0.get("zone").map_or("", String::as_str)).map_err(anyhow::Error::msg)?;
    let zone = Arc::new(zone);
    let udp = UdpSocket::bind(listen).with_context(|| format!("binding UDP {listen}"))?;
    let tcp = TcpListener::bind(listen).with_context(|| format!("binding TCP {listen}"))?;
    let tcp_zone = Arc::clone(&zone);
    thread::spawn(move || {
        for stream in tcp.incoming() {
            let Ok(mut stream) = stream else { continue };
            let zone = Arc::clone(&tcp_zone);
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(SERVER_IO_TIMEOUT));
                // One message per connection is all the lab's clients send.
                let mut prefix = [0u8; 2];
                if stream.read_exact(&mut prefix).is_err() {
                    return;
                }
                let mut query = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
                if stream.read_exact(&mut query).is_err() {
                    return;
                }
                if let Some(answer) = zone.answer(&query) {
                    let mut framed = (answer.len() as u16).to_be_bytes().to_vec();
                    framed.extend_from_slice(&answer);
                    let _ = stream.write_all(&framed);
                }
            });
        }
    });
    print_json(&ServerEvent::Ready { listen: udp.local_addr()?.to_string() })?;
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, peer)) = udp.recv_from(&mut buf) else { continue };
        if let Some(answer) = zone.answer(&buf[..n]) {
            let _ = udp.send_to(&answer, peer);
        }
    }
}

fn dns_query(args: &Args) -> anyhow::Result<()> {
    let server = target(args, "server")?;
    let name = args.0.get("name").context("--name NAME is required")?.clone();
    let qtype = match args.0.get("type").map_or("A", String::as_str) {
        "A" => dns::TYPE_A,
        "AAAA" => dns::TYPE_AAAA,
        other => bail!("--type {other:?}: expected A or AAAA"),
    };
    let timeout = args.timeout(2000)?;
    let id = (std::process::id() & 0xffff) as u16;
    let query = dns::query(id, &name, qtype);
    let mut report = DnsQueryReport { name, rcode: "TIMEOUT".to_owned(), ..Default::default() };
    let answer = if args.has("tcp") {
        let mut stream = TcpStream::connect_timeout(&server, timeout).context("connecting")?;
        stream.set_read_timeout(Some(timeout))?;
        report.local_port = stream.local_addr()?.port();
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        stream.write_all(&framed)?;
        let mut prefix = [0u8; 2];
        match stream.read_exact(&mut prefix) {
            Ok(()) => {
                let mut answer = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
                stream.read_exact(&mut answer).ok().map(|()| answer)
            }
            Err(_) => None,
        }
    } else {
        let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
        let socket = UdpSocket::bind(bind)?;
        socket.connect(server)?;
        socket.set_read_timeout(Some(timeout))?;
        report.local_port = socket.local_addr()?.port();
        socket.send(&query)?;
        let mut buf = vec![0u8; 65_536];
        socket.recv(&mut buf).ok().map(|n| buf[..n].to_vec())
    };
    if let Some((rcode, addrs)) = answer.as_deref().and_then(dns::parse_answer) {
        report.rcode = dns::rcode_name(rcode);
        report.addrs = addrs;
    }
    print_json(&report)
}

fn udp_server(args: &Args) -> anyhow::Result<()> {
    let listen = args.addr("listen")?;
    let reply = usize::try_from(args.num("reply", 0)?)?.min(65_507);
    let max = args.opt("max-requests")?;
    let socket = UdpSocket::bind(listen).with_context(|| format!("binding {listen}"))?;
    print_json(&ServerEvent::Ready { listen: socket.local_addr()?.to_string() })?;
    let payload = vec![b'y'; reply];
    let mut buf = vec![0u8; 65_536];
    let (mut served, mut received, mut sent) = (0, 0, 0);
    while max.is_none_or(|m| served < m) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else { continue };
        served += 1;
        received += n as u64;
        sent += socket.send_to(&payload, peer).map_or(0, |k| k as u64);
    }
    print_json(&ServerEvent::Done { served, bytes_received: received, bytes_sent: sent })
}

fn udp_client(args: &Args) -> anyhow::Result<()> {
    let target = target(args, "connect")?;
    let (count, expect) = (args.num("count", 1)?, args.num("expect", 64)?);
    let send = usize::try_from(args.num("send", 64)?)?.min(65_507);
    let timeout = args.timeout(1000)?;
    let bind: SocketAddr = if target.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse()?;
    let socket = UdpSocket::bind(bind)?;
    socket.connect(target)?;
    socket.set_read_timeout(Some(timeout))?;
    let start = Instant::now();
    let mut r =
        UdpClientReport { target: target.to_string(), local_port: socket.local_addr()?.port(), ..Default::default() };
    let payload = vec![b'x'; send];
    let mut buf = vec![0u8; 65_536];
    for _ in 0..count {
        match socket.send(&payload) {
            Ok(n) => {
                r.sent += 1;
                r.bytes_sent += n as u64;
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                // The ICMP error of an earlier request surfaces on this send.
                r.refused += 1;
                continue;
            }
            Err(e) => return Err(e).context("sending"),
        }
        match socket.recv(&mut buf) {
            Ok(n) => {
                r.replies += 1;
                r.bytes_received += n as u64;
                r.complete += u64::from(n as u64 == expect);
            }
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => r.refused += 1,
            Err(_) => r.timed_out += 1,
        }
    }
    r.elapsed_ms = millis(start);
    print_json(&r)
}

/// An ICMP socket and how it was opened.
struct IcmpSocket {
    fd: OwnedFd,
    /// Raw sockets see every ICMP packet (and IPv4 ones with the IP header); datagram ones only ours.
    raw: bool,
}

fn icmp_socket(v6: bool, raw: bool) -> std::io::Result<IcmpSocket> {
    let (domain, proto) = if v6 { (libc::AF_INET6, libc::IPPROTO_ICMPV6) } else { (libc::AF_INET, libc::IPPROTO_ICMP) };
    let kind = if raw { libc::SOCK_RAW } else { libc::SOCK_DGRAM };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(domain, kind | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(IcmpSocket { fd: unsafe { OwnedFd::from_raw_fd(fd) }, raw })
}

/// Opens an ICMP socket: raw first (root in any namespace), else an unprivileged ping socket
/// (needs the namespace's `ping_group_range` to include our group; off by default in new namespaces).
fn open_icmp(v6: bool, how: &str) -> anyhow::Result<IcmpSocket> {
    match how {
        "raw" => icmp_socket(v6, true).context("opening a raw ICMP socket"),
        "dgram" => icmp_socket(v6, false).context("opening an ICMP datagram socket"),
        "auto" => icmp_socket(v6, true)
            .or_else(|_| icmp_socket(v6, false))
            .context("opening an ICMP socket (raw needs root or CAP_NET_RAW; dgram needs net.ipv4.ping_group_range)"),
        other => bail!("--socket {other:?}: expected auto, raw or dgram"),
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sockaddr(ip: IpAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: an all-zero sockaddr_storage is valid; it is then filled as the matching family.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match ip {
        IpAddr::V4(v4) => {
            let sin = (&raw mut ss).cast::<libc::sockaddr_in>();
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in.
            unsafe {
                (*sin).sin_family = libc::AF_INET as libc::sa_family_t;
                (*sin).sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
            }
            size_of::<libc::sockaddr_in>()
        }
        IpAddr::V6(v6) => {
            let sin6 = (&raw mut ss).cast::<libc::sockaddr_in6>();
            // SAFETY: sockaddr_storage is large and aligned enough for sockaddr_in6.
            unsafe {
                (*sin6).sin6_family = libc::AF_INET6 as libc::sa_family_t;
                (*sin6).sin6_addr.s6_addr = v6.octets();
            }
            size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// Sets the socket timeout `opt` (`SO_RCVTIMEO` or `SO_SNDTIMEO`) of `fd` to `t`.
fn set_timeout(fd: &OwnedFd, opt: libc::c_int, t: Duration) -> std::io::Result<()> {
    let tv = libc::timeval { tv_sec: t.as_secs() as libc::time_t, tv_usec: t.subsec_micros() as libc::suseconds_t };
    // SAFETY: a valid fd and a timeval of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            opt,
            (&raw const tv).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

fn ping(args: &Args) -> anyhow::Result<()> {
    let dest: IpAddr =
        args.0.get("dest").context("--dest ADDR is required")?.parse().context("--dest: expected an IP")?;
    if !allowed_destination(dest) {
        bail!("{dest} is outside the lab ranges");
    }
    let count = args.num("count", 3)?;
    let timeout = args.timeout(1000)?;
    let v6 = dest.is_ipv6();
    let sock = open_icmp(v6, args.0.get("socket").map_or("auto", String::as_str))?;
    let (request, reply) = if v6 { (128u8, 129u8) } else { (8u8, 0u8) };
    let ident = (std::process::id() & 0xffff) as u16;
    let (addr, addr_len) = sockaddr(dest);
    let mut report = PingReport {
        dest: dest.to_string(),
        method: if sock.raw { "raw" } else { "dgram" }.into(),
        ..Default::default()
    };
    let mut buf = [0u8; 2048];
    for seq in 1..=count as u16 {
        let mut pkt = vec![request, 0, 0, 0];
        pkt.extend(ident.to_be_bytes());
        pkt.extend(seq.to_be_bytes());
        pkt.extend(b"observer-lab-ping-payload-32byte");
        // The kernel fills the checksum for ICMPv6 and for datagram sockets.
        if !v6 && sock.raw {
            let c = checksum(&pkt);
            pkt[2..4].copy_from_slice(&c.to_be_bytes());
        }
        // SAFETY: valid fd, buffer and address of the given lengths.
        let n = unsafe {
            libc::sendto(sock.fd.as_raw_fd(), pkt.as_ptr().cast(), pkt.len(), 0, (&raw const addr).cast(), addr_len)
        };
        if n < 0 {
            // Unreachable destinations fail here; count the request as lost.
            report.sent += 1;
            continue;
        }
        report.sent += 1;
        let deadline = Instant::now() + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) {
            let _ = set_timeout(&sock.fd, libc::SO_RCVTIMEO, left);
            // SAFETY: valid fd and buffer of the given length.
            let n = unsafe { libc::recv(sock.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                break;
            }
            let mut icmp = &buf[..n as usize];
            if !v6 && sock.raw {
                let ihl = usize::from(icmp.first().map_or(0, |b| b & 0x0f)) * 4;
                icmp = icmp.get(ihl..).unwrap_or_default();
            }
            if icmp.len() < 8 || icmp[0] != reply || u16::from_be_bytes([icmp[6], icmp[7]]) != seq {
                continue;
            }
            // Datagram sockets rewrite the identifier and only deliver our own replies.
            if sock.raw && u16::from_be_bytes([icmp[4], icmp[5]]) != ident {
                continue;
            }
            report.received += 1;
            break;
        }
        if u64::from(seq) < count {
            thread::sleep(PING_INTERVAL);
        }
    }
    print_json(&report)
}
