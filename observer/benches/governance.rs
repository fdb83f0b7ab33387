//! Offline governance throughput: records per second per core for `observer
//! policy simulate` and `observer report` on a generated flow log, and the
//! memory they hold, which grows with edges, not records.
//!
//! In: a generated cluster (10,000 pods, 1,000 NetworkPolicies, as the other
//! benches) and a flow log over its pods, generated into a named pipe while
//! the command reads it (10 million records are 12 GB: never stored): each
//! flow between two pods is one `end` record from each end's node (so every
//! flow is also deduplicated), over a fixed set of edges (each pod talking
//! to 4 peers). Out: one
//! `governance-result {json}` line per run size: records, edges, CPU
//! seconds (this process, one thread), records/s per core for each command,
//! and the peak live heap, for a log and for one four times longer with the
//! same edges; then, from a 400,000-record file, the reader alone and the
//! reader folding records into edges (`governance-reading {json}`, ns per
//! record).
//!
//! Run: `AYA_BUILD_SKIP=1 cargo bench -p observer --bench governance`
//! (`GOVERNANCE_BENCH_RECORDS`, default 10,000,000, sets the larger log; the
//! smaller is a quarter of it). CPU time is the reading thread's alone (the
//! generator runs on another thread).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::Instant,
};

use observer::governance::{
    edges::Edges,
    reader,
    replay::Recorded,
    report::{ReportConfig, ReportFormat, report},
    simulate::{Format, SimulateConfig, simulate},
};
use observer::inventory::{EndpointInfo, EndpointKind, WorkloadRef};
use observer_tests::manifests::{ClusterSize, cluster, cluster_container_id, cluster_pod_ip, cluster_uid};
use serde_json::json;

/// Counts live and peak heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: same layout.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same pointer and layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const PEERS: usize = 4;

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// One end of a record as the daemon writes it (`ip`, `port`, then the
/// endpoint's fields as `observer run` serialises them), split around its
/// port.
fn end(size: &ClusterSize, index: usize) -> (String, String) {
    let app = format!("app-{}", index % size.replicasets);
    let info = EndpointInfo {
        kind: EndpointKind::Pod,
        namespace: Some(format!("ns-{}", index % size.namespaces)),
        pod: Some(format!("{app}-7d9f8c6b5-{index:05}")),
        uid: Some(cluster_uid(1, index)),
        service: None,
        node: Some(format!("node-{}", index % size.nodes)),
        workload: Some(WorkloadRef { kind: "Deployment".to_owned(), name: app.clone() }),
        labels: BTreeMap::from([
            ("app".to_owned(), app.clone()),
            ("app.kubernetes.io/component".to_owned(), "server".to_owned()),
            ("app.kubernetes.io/name".to_owned(), app),
        ]),
    };
    let fields = serde_json::to_string(&info).expect("endpoint");
    (format!("{{\"ip\":\"{}\",\"port\":", cluster_pod_ip(index)), format!(",{}", &fields[1..]))
}

/// A pod's container cgroup as the daemon resolves it on a systemd node.
fn cgroup(index: usize) -> String {
    let pod = cluster_uid(1, index).replace('-', "_");
    json!({"id": 100_000 + index, "path": format!(
        "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod}.slice/cri-containerd-{}.scope",
        cluster_container_id(index, 0))})
    .to_string()
}

/// Writes `records` flow-log lines to `out`: each flow between two pods is
/// one `end` record from each end's node (with that end's container
/// cgroup), over `pods * PEERS` edges, each edge's verdict citing the two
/// ends' policies. The lines are assembled from per-pod pieces made before,
/// so the generator allocates nothing while it writes.
struct Generator {
    ends: Vec<(String, String)>,
    cgroups: Vec<String>,
    size: ClusterSize,
}

impl Generator {
    fn new(size: &ClusterSize) -> Self {
        Self {
            ends: (0..size.pods).map(|index| end(size, index)).collect(),
            cgroups: (0..size.pods).map(cgroup).collect(),
            size: *size,
        }
    }

    fn write(&self, out: &mut impl Write, records: usize) -> std::io::Result<()> {
        let pods = self.ends.len();
        let edges = pods * PEERS;
        let mut line = Vec::with_capacity(4096);
        let mut number = itoa::Buffer::new();
        for flow in 0..records / 2 {
            let edge = flow % edges;
            let (src, dst) = (edge / PEERS, (edge / PEERS + 1 + (edge % PEERS) * 997) % pods);
            let sport = 10_000 + (flow / edges % 50_000) as u16;
            let ms = 1_700_000_000_000_u64 + flow as u64;
            let at = observer::flow::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
            for (local, node) in [("src", src), ("dst", dst)] {
                line.clear();
                line.extend_from_slice(b"{\"time\":\"");
                line.extend_from_slice(at.as_bytes());
                line.extend_from_slice(b"\",\"event\":\"end\",\"node\":\"node-");
                line.extend_from_slice(number.format(node % self.size.nodes).as_bytes());
                line.extend_from_slice(b"\",\"protocol\":\"tcp\",\"family\":\"ipv4\",\"src\":");
                line.extend_from_slice(self.ends[src].0.as_bytes());
                line.extend_from_slice(number.format(sport).as_bytes());
                line.extend_from_slice(self.ends[src].1.as_bytes());
                line.extend_from_slice(b",\"dst\":");
                line.extend_from_slice(self.ends[dst].0.as_bytes());
                line.extend_from_slice(b"8080");
                line.extend_from_slice(self.ends[dst].1.as_bytes());
                line.extend_from_slice(b",\"local\":\"");
                line.extend_from_slice(local.as_bytes());
                line.extend_from_slice(b"\",\"cgroup\":");
                line.extend_from_slice(self.cgroups[node].as_bytes());
                line.extend_from_slice(
                    b",\"state\":\"closed\",\"to_dst\":{\"packets\":6,\"bytes\":420},\"to_src\":{\"packets\":5,\"bytes\":1337},\"tcp_flags\":{\"to_dst\":[\"SYN\",\"ACK\",\"FIN\"],\"to_src\":[\"SYN\",\"ACK\",\"FIN\"]},\"first_seen\":\"",
                );
                line.extend_from_slice(at.as_bytes());
                line.extend_from_slice(b"\",\"last_seen\":\"");
                line.extend_from_slice(at.as_bytes());
                let (from, to) = (src % self.size.policies, dst % self.size.policies);
                write!(
                    line,
                    "\",\"duration_ms\":3,\"verdict\":{{\"verdict\":\"allowed\",\"reason\":\"allowed: egress allowed by ns-{from}/allow-{from}, ingress allowed by ns-{to}/allow-{to}\",\"delivery\":\"delivered\",\"policies\":[{{\"namespace\":\"ns-{from}\",\"name\":\"allow-{from}\",\"resourceVersion\":\"7\"}},{{\"namespace\":\"ns-{to}\",\"name\":\"allow-{to}\",\"resourceVersion\":\"7\"}}]}}}}"
                )?;
                line.push(b'\n');
                out.write_all(&line)?;
            }
        }
        out.flush()
    }
}

/// A named pipe that a thread fills with `records` generated lines, so a
/// log of any size is read without being stored.
struct Fifo {
    path: PathBuf,
    writer: Option<std::thread::JoinHandle<u64>>,
}

impl Fifo {
    fn new(dir: &Path, name: &str, generator: &std::sync::Arc<Generator>, records: usize) -> Self {
        let path = dir.join(name);
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo {}", path.display());
        let generator = std::sync::Arc::clone(generator);
        let target = path.clone();
        let writer = std::thread::spawn(move || {
            let file = std::fs::OpenOptions::new().write(true).open(&target).expect("open fifo");
            let mut counting = Tally(BufWriter::with_capacity(1 << 20, file), 0);
            generator.write(&mut counting, records).expect("generate");
            counting.1
        });
        Self { path, writer: Some(writer) }
    }

    /// Bytes written, once the reader has read them all.
    fn finish(mut self) -> u64 {
        let bytes = self.writer.take().map(|writer| writer.join().expect("generator")).unwrap_or(0);
        std::fs::remove_file(&self.path).expect("remove fifo");
        bytes
    }
}

/// Counts bytes on their way to the pipe.
struct Tally<W>(W, u64);

impl<W: Write> Write for Tally<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let written = self.0.write(buf)?;
        self.1 += written as u64;
        Ok(written)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn main() {
    let size = ClusterSize::BENCH;
    let dir = std::env::temp_dir().join(format!("governance-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let manifests = dir.join("cluster.json");
    std::fs::write(&manifests, serde_json::to_vec(&cluster(&size)).expect("cluster")).expect("manifests");
    let proposed = dir.join("proposed.json");
    std::fs::write(
        &proposed,
        serde_json::to_vec(&json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "allow-1", "namespace": "ns-1"},
            "spec": {"podSelector": {"matchLabels": {"app": "app-1"}}, "policyTypes": ["Ingress"]}}))
        .expect("json"),
    )
    .expect("proposed");
    let large: usize =
        std::env::var("GOVERNANCE_BENCH_RECORDS").ok().and_then(|text| text.parse().ok()).unwrap_or(10_000_000);
    let generator = std::sync::Arc::new(Generator::new(&size));
    for records in [large / 4, large] {
        let edges = (size.pods * PEERS).min(records / 2);
        let fifo = Fifo::new(&dir, "simulate.jsonl", &generator, records);
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let (cpu, wall) = (cpu_seconds(), Instant::now());
        let simulation = simulate(&SimulateConfig {
            recorded: Recorded {
                manifests: vec![manifests.clone()],
                kubeconfig: None,
                flows: vec![fifo.path.clone()],
                config: None,
            },
            proposed: vec![proposed.clone()],
            remove: Vec::new(),
            output: Format::Json,
            fail_on_break: false,
        })
        .expect("simulate");
        let (simulate_cpu, simulate_wall) = (cpu_seconds() - cpu, wall.elapsed().as_secs_f64());
        let simulate_peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        let bytes = fifo.finish();
        assert_eq!(simulation.input.records, records as u64);
        assert_eq!(simulation.flows, (records / 2) as u64, "each flow once, from both ends");
        assert_eq!(simulation.edges, edges as u64);
        drop(simulation);
        let fifo = Fifo::new(&dir, "report.jsonl", &generator, records);
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let (cpu, wall) = (cpu_seconds(), Instant::now());
        let made = report(&ReportConfig {
            recorded: Recorded {
                manifests: vec![manifests.clone()],
                kubeconfig: None,
                flows: vec![fifo.path.clone()],
                config: None,
            },
            findings: Vec::new(),
            format: ReportFormat::Json,
            output: None,
        })
        .expect("report");
        let (report_cpu, report_wall) = (cpu_seconds() - cpu, wall.elapsed().as_secs_f64());
        let report_peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        fifo.finish();
        assert_eq!(made.coverage.flows, (records / 2) as u64);
        drop(made);
        let result = json!({
            "records": records, "log_bytes": bytes, "pods": size.pods, "edges": edges,
            "simulate": {"cpu_s": simulate_cpu, "wall_s": simulate_wall, "records_per_s_per_core": records as f64 / simulate_cpu,
                         "peak_heap_bytes": simulate_peak},
            "report": {"cpu_s": report_cpu, "wall_s": report_wall, "records_per_s_per_core": records as f64 / report_cpu,
                       "peak_heap_bytes": report_peak},
        });
        println!("governance-result {result}");
    }
    reading(&dir, &generator);
    std::fs::remove_dir_all(&dir).expect("cleanup");
}

/// Records read from a file (in the page cache, as an operator's logs
/// are), without the cluster and the pipe: the reader alone, then the
/// reader folding records into edges, three rounds each, in ns per record.
fn reading(dir: &Path, generator: &Generator) {
    const RECORDS: usize = 400_000;
    let path = dir.join("reading.jsonl");
    let mut file = BufWriter::new(std::fs::File::create(&path).expect("create"));
    generator.write(&mut file, RECORDS).expect("generate");
    drop(file);
    let paths = [path];
    let per_record = |cpu: f64| (cpu * 1e9 / RECORDS as f64).round();
    let (mut read, mut fold) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let mut ports = 0_u64;
        let cpu = cpu_seconds();
        let input = reader::read(&paths, &mut |line, _, _, _| ports += u64::from(line.src.port.unwrap_or(0)));
        read.push(per_record(cpu_seconds() - cpu));
        assert_eq!((input.records, ports > 0), (RECORDS as u64, true));
        let mut edges = Edges::default();
        let cpu = cpu_seconds();
        reader::read(&paths, &mut |line, file, number, report| edges.add(line, file, number, report));
        fold.push(per_record(cpu_seconds() - cpu));
    }
    println!(
        "governance-reading {}",
        json!({"records": RECORDS, "read_ns_per_record": read, "read_and_fold_ns_per_record": fold})
    );
}
