//! One conntrack lookup: what the enrich stage pays per new Service flow.
//!
//! In: a network namespace of the bench's own (unshared in a thread, gone
//! with it) with a kube-proxy-like DNAT rule and one real TCP connection
//! through it. Out: one `conntrack-result {json}` line with the median over
//! rounds of ns per lookup, in this thread's CPU time and in wall time, for
//! a hit (the DNATed connection: the reply tuple read back) and a miss (no
//! such connection: `ENOENT`). Needs root and `nft`; says so and exits
//! otherwise.
//!
//! Run: `cargo bench -p observer --bench conntrack`.

use std::{
    io::Write,
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use observer::conntrack::{Conntrack, Tuple};
use serde_json::json;

const ROUNDS: usize = 5;
const LOOKUPS: usize = 200_000;

const RULES: &str = "table ip observer_ct_bench {
    chain output {
        type nat hook output priority -100;
        ip daddr 198.19.0.10 tcp dport 80 dnat to 198.18.0.53:8080
    }
}";

fn thread_cpu() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and output pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
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

/// ns per lookup of `tuple` (thread CPU, wall), medians over the rounds.
fn time_lookups(conntrack: &mut Conntrack, tuple: &Tuple, expect: Option<SocketAddr>) -> (f64, f64) {
    let (mut cpu, mut wall) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (cpu_start, wall_start) = (thread_cpu(), Instant::now());
        for _ in 0..LOOKUPS {
            let found = conntrack.lookup(std::hint::black_box(tuple)).expect("lookup");
            assert_eq!(found, expect);
        }
        cpu.push((thread_cpu() - cpu_start).as_nanos() as f64 / LOOKUPS as f64);
        wall.push(wall_start.elapsed().as_nanos() as f64 / LOOKUPS as f64);
    }
    (median(cpu), median(wall))
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("conntrack bench: needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN); not run");
        return;
    }
    let bench = std::thread::spawn(|| {
        // SAFETY: unshare only changes this thread's namespaces.
        let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "unshare: {}", std::io::Error::last_os_error());
        run("ip", &["link", "set", "lo", "up"], None);
        run("ip", &["addr", "add", "198.18.0.53/32", "dev", "lo"], None);
        run("ip", &["route", "add", "198.19.0.0/24", "dev", "lo"], None);
        run("nft", &["-f", "-"], Some(RULES));
        let listener = TcpListener::bind("198.18.0.53:8080").expect("listen");
        let client = TcpStream::connect("198.19.0.10:80").expect("connect through the DNAT");
        let (_server, _) = listener.accept().expect("accept");
        let local = client.local_addr().expect("local address");
        let service: SocketAddr = "198.19.0.10:80".parse().expect("address");
        let mut conntrack = Conntrack::open().expect("ctnetlink socket");
        let hit = Tuple::new(6, local, service).expect("tuple");
        let miss = Tuple::new(6, SocketAddr::new(local.ip(), local.port() ^ 1), service).expect("tuple");
        let backend: SocketAddr = "198.18.0.53:8080".parse().expect("address");
        let (hit_cpu, hit_wall) = time_lookups(&mut conntrack, &hit, Some(backend));
        let (miss_cpu, miss_wall) = time_lookups(&mut conntrack, &miss, None);
        json!({"lookups_per_round": LOOKUPS, "rounds": ROUNDS,
               "hit": {"cpu_ns": hit_cpu, "wall_ns": hit_wall},
               "miss": {"cpu_ns": miss_cpu, "wall_ns": miss_wall}})
    });
    let result = bench.join().expect("bench thread");
    println!("conntrack-result {result}");
}
