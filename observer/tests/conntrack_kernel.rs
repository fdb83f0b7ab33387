//! The conntrack lookup against the kernel's own table: a network namespace
//! of the test's own (unshared in a thread, gone when the thread ends) with
//! kube-proxy-like DNAT rules, real TCP and UDP traffic through them, and the
//! lookup asked from inside. Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and
//! `nft`; skipped with a message otherwise, never under `CI=true`.
//!
//! Run: `flock /tmp/flow-observer-kernel.lock cargo test -p observer --test conntrack_kernel -- --test-threads=1`

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    process::{Command, Stdio},
    time::Duration,
};

use observer::conntrack::{Conntrack, Tuple};

/// The ruleset: ClusterIPs DNATed to backends, as kube-proxy's chains do.
const RULES: &str = r#"
table ip observer_ct_test {
    chain output {
        type nat hook output priority -100;
        ip daddr 198.19.0.10 tcp dport 80 dnat to 198.18.0.53:8080
        ip daddr 198.19.0.10 udp dport 53 dnat to 198.18.0.53:5353
    }
}
table ip6 observer_ct_test {
    chain output {
        type nat hook output priority -100;
        ip6 daddr 2001:db8:198:19::10 tcp dport 80 dnat to [2001:db8::53]:8080
    }
}
"#;

/// Whether this test can run here; `false` (after saying why) when it
/// cannot and may skip; panics under CI, where nothing skips.
fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let nft = Command::new("nft").arg("--version").stdout(Stdio::null()).status().is_ok_and(|status| status.success());
    if root && nft {
        return true;
    }
    let why = if root { "nft is not installed" } else { "not root (needs CAP_NET_ADMIN and CAP_SYS_ADMIN)" };
    assert!(std::env::var("CI").as_deref() != Ok("true"), "conntrack_kernel cannot run under CI: {why}");
    eprintln!("SKIPPED conntrack_kernel: {why}");
    false
}

fn run(program: &str, args: &[&str], input: Option<&str>) {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .unwrap_or_else(|error| panic!("{program}: {error}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(input.as_bytes()).expect("write stdin");
    }
    let status = child.wait().expect("wait");
    assert!(status.success(), "{program} {args:?}: {status}");
}

/// Runs `test` in a thread of its own, in a new network namespace set up with
/// the test's addresses, routes and DNAT rules. The namespace has no other
/// holder: it goes away with the thread, rules and all, even when `test` panics.
fn in_own_netns(test: impl FnOnce() + Send + 'static) {
    let thread = std::thread::spawn(move || {
        // SAFETY: unshare only changes this thread's namespaces.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare(CLONE_NEWNET): {}", std::io::Error::last_os_error());
        // Child processes start in this thread's (new) namespace.
        run("ip", &["link", "set", "lo", "up"], None);
        for address in ["198.18.0.10/32", "198.18.0.53/32"] {
            run("ip", &["addr", "add", address, "dev", "lo"], None);
        }
        for address in ["2001:db8::10/128", "2001:db8::53/128"] {
            run("ip", &["-6", "addr", "add", address, "dev", "lo", "nodad"], None);
        }
        run("ip", &["route", "add", "198.19.0.0/24", "dev", "lo"], None);
        run("ip", &["-6", "route", "add", "2001:db8:198:19::/112", "dev", "lo"], None);
        run("nft", &["-f", "-"], Some(RULES));
        test();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap_or_else(|error| panic!("{text}: {error}"))
}

/// A TCP connection from `client` to `service`, which the rules send to
/// `backend`; returns the client's address (its port is the kernel's pick).
fn connect_through(client: &str, service: &str, backend: &str) -> (SocketAddr, TcpStream, TcpStream) {
    let listener = TcpListener::bind(addr(backend)).expect("listen on the backend");
    let socket = socket2_connect(addr(client), addr(service));
    let (mut accepted, _) = listener.accept().expect("the backend accepts");
    let mut stream = socket;
    stream.write_all(b"ping").expect("send");
    let mut buf = [0; 4];
    accepted.read_exact(&mut buf).expect("the backend receives");
    assert_eq!(&buf, b"ping");
    let local = stream.local_addr().expect("local address");
    (local, stream, accepted)
}

/// A TCP socket bound to `from` (port picked by the kernel) and connected to `to`.
fn socket2_connect(from: SocketAddr, to: SocketAddr) -> TcpStream {
    let family = if from.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: plain socket(2); the result is checked and owned below.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor nothing else owns.
    let stream = unsafe { <TcpStream as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let (storage, len) = sockaddr(from);
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    let rc = unsafe { libc::bind(fd, (&raw const storage).cast(), len) };
    assert_eq!(rc, 0, "bind {from}: {}", std::io::Error::last_os_error());
    let (storage, len) = sockaddr(to);
    // SAFETY: as above.
    let rc = unsafe { libc::connect(fd, (&raw const storage).cast(), len) };
    assert_eq!(rc, 0, "connect {to}: {}", std::io::Error::last_os_error());
    stream
}

fn sockaddr(at: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match at {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&raw mut storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

#[test]
fn a_dnated_tcp_connection_names_its_backend_ipv4_and_ipv6() {
    if !can_run() {
        return;
    }
    in_own_netns(|| {
        let mut conntrack = Conntrack::open().expect("a ctnetlink socket in the test's namespace");
        for (client, service, backend) in [
            ("198.18.0.10:0", "198.19.0.10:80", "198.18.0.53:8080"),
            ("[2001:db8::10]:0", "[2001:db8:198:19::10]:80", "[2001:db8::53]:8080"),
        ] {
            let (local, _client, _server) = connect_through(client, service, backend);
            let tuple = Tuple::new(6, local, addr(service)).expect("same family");
            assert_eq!(conntrack.lookup(&tuple).expect("lookup"), Some(addr(backend)), "{service}");
            // Another source port: no such connection.
            let other = Tuple::new(6, SocketAddr::new(local.ip(), local.port() ^ 1), addr(service)).expect("tuple");
            assert_eq!(conntrack.lookup(&other).expect("lookup"), None, "{service}, other port");
        }
    });
}

#[test]
fn udp_through_a_dnat_and_a_direct_connection() {
    if !can_run() {
        return;
    }
    in_own_netns(|| {
        let mut conntrack = Conntrack::open().expect("a ctnetlink socket in the test's namespace");
        let backend = UdpSocket::bind("198.18.0.53:5353").expect("bind the backend");
        backend.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let client = UdpSocket::bind("198.18.0.10:0").expect("bind the client");
        client.send_to(b"query", "198.19.0.10:53").expect("send");
        let mut buf = [0; 16];
        let (len, from) = backend.recv_from(&mut buf).expect("the backend receives the query");
        assert_eq!((&buf[..len], from), (&b"query"[..], client.local_addr().expect("local")));
        let tuple = Tuple::new(17, client.local_addr().expect("local"), addr("198.19.0.10:53")).expect("tuple");
        assert_eq!(conntrack.lookup(&tuple).expect("lookup"), Some(addr("198.18.0.53:5353")));
        // Straight to a pod: conntrack knows it, unrewritten.
        let (local, _client, _server) = connect_through("198.18.0.10:0", "198.18.0.53:9090", "198.18.0.53:9090");
        let direct = Tuple::new(6, local, addr("198.18.0.53:9090")).expect("tuple");
        assert_eq!(conntrack.lookup(&direct).expect("lookup"), Some(addr("198.18.0.53:9090")));
    });
}
