//! `cargo xtask bench capture`: what the observer costs the traffic it
//! watches, measured side by side with no observer, with bpftrace on the
//! same tracepoint and with `conntrack -E` event logging (the peers a user
//! would pick instead), interleaved over rounds on a lab of two pods, with
//! medians. Results are printed and written into BENCHMARKS.md between markers.

use std::{
    fmt::Write as _,
    fs,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::Args;
use observer_tests::{BurstOpts, BurstReport, Endpoint, Lab, ObserverProcess, Pod, Proc, TcpServerOpts};
use serde_json::Value;

use super::{build_release, cpu_ms, machine_busy_ms, machine_facts, median, publish};
use crate::{
    command::{output, run as run_command, step},
    interrupt,
};

/// Options of `bench capture`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Rounds; each runs every variant once, in rotated order.
    #[arg(long, default_value_t = 5)]
    pub rounds: usize,
    /// Short connections per connection-rate run.
    #[arg(long, default_value_t = 15000)]
    pub connections: u64,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 3)]
    pub iperf_seconds: u64,
    /// Do not update BENCHMARKS.md.
    #[arg(long)]
    pub no_write: bool,
}

impl Default for CaptureArgs {
    /// The command-line defaults.
    fn default() -> Self {
        Self { rounds: 5, connections: 15000, iperf_seconds: 3, no_write: false }
    }
}

/// How long after a burst its tools' CPU is still charged to it: the
/// observer's default poll interval plus half a second.
const SETTLE: Duration = Duration::from_millis(1500);

/// The bpftrace program a user would reach for: count TCP state changes.
const BPFTRACE_PROGRAM: &str = "tracepoint:sock:inet_sock_set_state { @[args->newstate] = count(); }";

/// The nftables table that turns conntrack on in a pod namespace for the
/// conntrack variant: a `ct state` rule makes the kernel register
/// nf_conntrack's hooks in that namespace (nothing is dropped).
const CONNTRACK_TABLE: &str = "inet obsbench";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Baseline,
    Observer,
    Bpftrace,
    Conntrack,
}

impl Variant {
    const ALL: [Self; 4] = [Self::Baseline, Self::Observer, Self::Bpftrace, Self::Conntrack];

    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "no observer",
            Self::Observer => "observer",
            Self::Bpftrace => "bpftrace (counts state changes)",
            Self::Conntrack => "conntrack -E -e NEW,DESTROY",
        }
    }
}

/// One variant's measurements in one round.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    conn_per_sec: f64,
    gbit_per_sec: f64,
    /// In-kernel ns per connection (all of the variant's eBPF programs).
    kernel_ns_per_conn: Option<f64>,
    /// In-kernel ns of the variant's eBPF programs during iperf3 per packet
    /// on the client's link (both directions).
    kernel_ns_per_packet: Option<f64>,
    /// In-kernel ns per run of the cgroup_skb programs during iperf3.
    kernel_ns_per_skb_run: Option<f64>,
    /// The variant's eBPF programs' time during iperf3 as a share of one
    /// core over the run's duration.
    kernel_core_share_iperf: Option<f64>,
    /// The tool's own CPU ms (user + system) per 1,000 connections.
    cpu_ms_per_1k_conn: Option<f64>,
    /// CPU µs the whole machine was busy per connection, from the burst's
    /// start until the tool had read what it left.
    machine_us_per_conn: f64,
    /// conntrack NEW events logged per connection (both namespaces).
    conntrack_events_per_conn: Option<f64>,
}

/// Runs the part.
pub fn run(args: &CaptureArgs) -> anyhow::Result<()> {
    build_release()?;
    let machine = machine_facts();
    let samples = measure(args)?;
    publish("capture", &report(args, &machine, &samples), args.no_write)
}

/// `kernel.bpf_stats_enabled` on while this lives, back to what it was when
/// dropped. Only the in-kernel pass runs with it: the accounting itself
/// costs every program run two clock reads, more for a tool with more runs.
struct BpfStats {
    previous: String,
}

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";

    fn enable() -> anyhow::Result<Self> {
        let previous = fs::read_to_string(Self::PATH).unwrap_or_default().trim().to_owned();
        fs::write(Self::PATH, "1").context("enabling kernel.bpf_stats_enabled (needs root)")?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let previous = if self.previous.is_empty() { "0" } else { &self.previous };
        let _ = fs::write(Self::PATH, previous);
    }
}

fn measure(args: &CaptureArgs) -> anyhow::Result<Vec<(Variant, Sample)>> {
    step("bringing up a lab of two pods");
    let lab = Lab::builder().pods(2).ipv6(false).internet(false).build()?;
    let (client, server) = (lab.pod(0), lab.pod(1));
    let _listener = server.tcp_server(server.addr_v4(8080), &TcpServerOpts::default())?;
    let mut iperf_server = server.spawn("iperf3", ["-s", "--forceflush", "-B", &server.ipv4().to_string()])?;
    iperf_server.wait_for_line(Duration::from_secs(10), |line| line.contains("Server listening"))?;
    let mut samples = Vec::new();
    for round in 0..args.rounds {
        for offset in 0..Variant::ALL.len() {
            interrupt::check()?;
            let variant = Variant::ALL[(round + offset) % Variant::ALL.len()];
            step(&format!("round {}/{}: {}", round + 1, args.rounds, variant.name()));
            let sample = measure_variant(variant, client, server, args)?;
            println!(
                "    {:.0} conn/s ({:.0} µs of machine CPU each), {:.2} Gbit/s, kernel {} ns/conn, {} ns/packet, {}% of a core during iperf3, \
                 tool CPU {} ms/1k conn",
                sample.conn_per_sec,
                sample.machine_us_per_conn,
                sample.gbit_per_sec,
                optional(sample.kernel_ns_per_conn, 0),
                optional(sample.kernel_ns_per_packet, 0),
                optional(sample.kernel_core_share_iperf.map(|share| share * 100.0), 2),
                optional(sample.cpu_ms_per_1k_conn, 1),
            );
            samples.push((variant, sample));
        }
    }
    Ok(samples)
}

/// The share of the baseline's connection rate a variant would keep if it
/// cost the machine only its measured own CPU per connection: baseline µs
/// per connection over that plus the variant's in-kernel and process µs.
fn own_cost_rate(sample: &Sample, base: &Sample) -> Option<f64> {
    let kernel_us = sample.kernel_ns_per_conn? / 1000.0;
    let process_us = sample.cpu_ms_per_1k_conn.unwrap_or(0.0);
    Some(base.machine_us_per_conn / (base.machine_us_per_conn + kernel_us + process_us))
}

fn optional(value: Option<f64>, digits: usize) -> String {
    value.map_or("-".to_owned(), |value| format!("{value:.digits$}"))
}

/// Keeps whatever the variant runs alive while it is measured (each guard
/// stops its tool when dropped).
enum Running {
    Nothing,
    Observer(ObserverProcess),
    Bpftrace(Proc),
    Conntrack(ConntrackLogging),
}

impl Running {
    /// The processes whose CPU time the variant costs.
    fn pids(&self) -> Vec<u32> {
        match self {
            Self::Nothing => Vec::new(),
            Self::Observer(observer) => vec![observer.pid()],
            Self::Bpftrace(bpftrace) => vec![bpftrace.pid()],
            Self::Conntrack(conntrack) => conntrack.listeners.iter().map(|(listener, _)| listener.pid()).collect(),
        }
    }
}

/// `conntrack -E` in each pod namespace, with conntrack turned on there by an
/// nftables `ct state` rule; both undone on drop.
struct ConntrackLogging {
    /// Each listener and the file its events go to.
    listeners: Vec<(Proc, PathBuf)>,
    netns: Vec<String>,
}

impl ConntrackLogging {
    fn start(pods: [&Pod; 2]) -> anyhow::Result<Self> {
        let mut logging = Self { listeners: Vec::new(), netns: Vec::new() };
        for pod in pods {
            let netns = pod.netns().to_owned();
            let script = format!(
                "add table {CONNTRACK_TABLE}\n\
                 add chain {CONNTRACK_TABLE} input {{ type filter hook input priority 0; policy accept; }}\n\
                 add chain {CONNTRACK_TABLE} output {{ type filter hook output priority 0; policy accept; }}\n\
                 add rule {CONNTRACK_TABLE} input ct state established accept\n\
                 add rule {CONNTRACK_TABLE} output ct state established accept\n"
            );
            let mut nft = Command::new("ip")
                .args(["netns", "exec", &netns, "nft", "-f", "-"])
                .stdin(Stdio::piped())
                .spawn()
                .context("starting nft")?;
            if let Some(mut stdin) = nft.stdin.take() {
                use std::io::Write as _;
                stdin.write_all(script.as_bytes()).context("writing the nft script")?;
            }
            if !nft.wait().context("waiting for nft")?.success() {
                bail!("nft could not add the conntrack rule in {netns}");
            }
            logging.netns.push(netns.clone());
            let file =
                std::env::temp_dir().join(format!("observer-bench-conntrack-{}-{netns}.log", std::process::id()));
            let listener = Proc::spawn(Command::new("ip").args([
                "netns",
                "exec",
                &netns,
                "sh",
                "-c",
                &format!("exec conntrack -E -e NEW,DESTROY >{} 2>&1", file.display()),
            ]))?;
            logging.listeners.push((listener, file));
        }
        // conntrack prints nothing when it has subscribed; give it time to.
        std::thread::sleep(Duration::from_millis(500));
        Ok(logging)
    }

    /// NEW events logged so far, and any ENOBUFS overrun warnings.
    fn events(&self) -> (u64, u64) {
        let mut new = 0;
        let mut overruns = 0;
        for (_, file) in &self.listeners {
            let text = fs::read_to_string(file).unwrap_or_default();
            new += text.lines().filter(|line| line.contains("[NEW]")).count() as u64;
            overruns += text.lines().filter(|line| line.contains("ENOBUFS")).count() as u64;
        }
        (new, overruns)
    }
}

impl Drop for ConntrackLogging {
    fn drop(&mut self) {
        for (mut listener, file) in self.listeners.drain(..) {
            listener.kill();
            let _ = fs::remove_file(file);
        }
        for netns in &self.netns {
            let _ = run_command(Command::new("ip").args([
                "netns",
                "exec",
                netns,
                "nft",
                "delete",
                "table",
                CONNTRACK_TABLE,
            ]));
        }
    }
}

fn start(variant: Variant, client: &Pod, server: &Pod) -> anyhow::Result<Running> {
    Ok(match variant {
        Variant::Baseline => Running::Nothing,
        Variant::Observer => Running::Observer(ObserverProcess::start(&[])?),
        Variant::Bpftrace => {
            let mut bpftrace = Proc::spawn(Command::new("bpftrace").args(["-e", BPFTRACE_PROGRAM]))?;
            bpftrace.wait_for_line(Duration::from_secs(60), |line| line.contains("Attaching"))?;
            // "Attaching" is printed just before the attach completes.
            std::thread::sleep(Duration::from_millis(500));
            Running::Bpftrace(bpftrace)
        }
        Variant::Conntrack => Running::Conntrack(ConntrackLogging::start([client, server])?),
    })
}

/// Packets sent plus received on the pod's eth0.
fn link_packets(pod: &Pod) -> anyhow::Result<u64> {
    let text = output(Command::new("ip").args(["-n", pod.netns(), "-s", "-j", "link", "show", "dev", "eth0"]))
        .context("ip -s link show")?;
    let json: Value = serde_json::from_str(&text).context("ip -j output")?;
    let stats = &json[0]["stats64"];
    Ok(stats["rx"]["packets"].as_u64().unwrap_or(0) + stats["tx"]["packets"].as_u64().unwrap_or(0))
}

fn measure_variant(variant: Variant, client: &Pod, server: &Pod, args: &CaptureArgs) -> anyhow::Result<Sample> {
    let existing = program_ids()?;
    let running = start(variant, client, server)?;
    // The variant's programs are the ones that appeared when it started
    // (Debian's bpftool cannot name the process that holds a program).
    let ours = variant_programs(variant, &existing)?;
    if matches!(variant, Variant::Observer | Variant::Bpftrace) && ours.is_empty() {
        bail!("{} attached no eBPF program", variant.name());
    }
    let pids = running.pids();
    let tool_cpu = || -> anyhow::Result<u64> { pids.iter().map(|pid| cpu_ms(*pid)).sum() };
    let cpu_before = tool_cpu()?;
    let busy_before = machine_busy_ms()?;
    let events_before = match &running {
        Running::Conntrack(conntrack) => conntrack.events().0,
        _ => 0,
    };
    let burst = burst(client, server, args)?;
    // Let the tools read and report what the burst left before reading
    // their CPU: the observer polls its flow map every second and reports a
    // closed connection after the poll that follows its close. Every variant
    // waits as long, so the machine's idle work weighs the same on each.
    std::thread::sleep(SETTLE);
    let cpu_after = tool_cpu()?;
    let busy = machine_busy_ms()?.saturating_sub(busy_before);
    let connections = burst.completed as f64;
    let conn_per_sec = connections / Duration::from_millis(burst.elapsed_ms.max(1)).as_secs_f64();
    let cpu_ms_per_1k_conn =
        (!pids.is_empty()).then(|| cpu_after.saturating_sub(cpu_before) as f64 / connections * 1000.0);
    let conntrack_events_per_conn = match &running {
        Running::Conntrack(conntrack) => {
            let (new, overruns) = conntrack.events();
            if overruns > 0 {
                println!("    conntrack reported {overruns} ENOBUFS overruns (events lost by the listener)");
            }
            Some(new.saturating_sub(events_before) as f64 / connections)
        }
        _ => None,
    };
    let gbit_per_sec = iperf(client, server, args)?;
    let kernel = if ours.is_empty() { None } else { Some(kernel_pass(&ours, client, server, args)?) };
    if let Running::Observer(observer) = running {
        observer.stop()?;
    }
    Ok(Sample {
        conn_per_sec,
        gbit_per_sec,
        kernel_ns_per_conn: kernel.and_then(|kernel| kernel.ns_per_conn),
        kernel_ns_per_packet: kernel.and_then(|kernel| kernel.ns_per_packet),
        kernel_ns_per_skb_run: kernel.and_then(|kernel| kernel.ns_per_skb_run),
        kernel_core_share_iperf: kernel.map(|kernel| kernel.core_share_iperf),
        cpu_ms_per_1k_conn,
        machine_us_per_conn: busy as f64 * 1000.0 / connections,
        conntrack_events_per_conn,
    })
}

/// One connection-rate run: `args.connections` short connections, all of
/// which must complete.
fn burst(client: &Pod, server: &Pod, args: &CaptureArgs) -> anyhow::Result<BurstReport> {
    let burst = client.burst(
        server.addr_v4(8080),
        &BurstOpts { count: args.connections, threads: 2, send: 16, timeout: Duration::from_secs(5) },
    )?;
    if burst.completed != args.connections {
        bail!("only {} of {} connections completed: {burst:?}", burst.completed, args.connections);
    }
    Ok(burst)
}

/// One iperf3 run; its throughput in Gbit/s.
fn iperf(client: &Pod, server: &Pod, args: &CaptureArgs) -> anyhow::Result<f64> {
    let iperf = client.run(
        "iperf3",
        ["-c", &server.ipv4().to_string(), "-t", &args.iperf_seconds.to_string(), "-J"],
        Duration::from_secs(args.iperf_seconds + 30),
    )?;
    let json: Value = serde_json::from_slice(&iperf.stdout).context("iperf3 -J output")?;
    let bits = json
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .with_context(|| format!("no throughput in iperf3 output: {json}"))?;
    Ok(bits / 1e9)
}

/// What a variant's eBPF programs cost in the kernel.
#[derive(Clone, Copy, Debug)]
struct KernelTime {
    ns_per_conn: Option<f64>,
    ns_per_packet: Option<f64>,
    ns_per_skb_run: Option<f64>,
    core_share_iperf: f64,
}

/// The in-kernel pass, after the rates were measured without accounting: the
/// same burst and iperf3 run again with `kernel.bpf_stats_enabled`.
fn kernel_pass(ids: &[u64], client: &Pod, server: &Pod, args: &CaptureArgs) -> anyhow::Result<KernelTime> {
    let _stats = BpfStats::enable()?;
    let before = program_stats(ids)?;
    let burst = burst(client, server, args)?;
    let after = program_stats(ids)?;
    let ns_per_conn = Some(after.since(&before).all_ns as f64 / burst.completed as f64);
    let before_iperf = program_stats(ids)?;
    let packets_before = link_packets(client)?;
    iperf(client, server, args)?;
    let packets = link_packets(client)?.saturating_sub(packets_before);
    let during_iperf = program_stats(ids)?.since(&before_iperf);
    Ok(KernelTime {
        ns_per_conn,
        ns_per_packet: (packets > 0).then(|| during_iperf.all_ns as f64 / packets as f64),
        ns_per_skb_run: (during_iperf.skb_runs > 0).then(|| during_iperf.skb_ns as f64 / during_iperf.skb_runs as f64),
        core_share_iperf: during_iperf.all_ns as f64 / Duration::from_secs(args.iperf_seconds).as_nanos() as f64,
    })
}

/// Cumulative `bpf_stats` of a variant's programs: id → (run_time_ns,
/// run_cnt, is cgroup_skb).
#[derive(Clone, Debug, Default)]
struct ProgramStats(std::collections::HashMap<u64, (u64, u64, bool)>);

/// What the programs present in both snapshots did in between (a program
/// can vanish meanwhile on this shared machine).
#[derive(Clone, Copy, Debug)]
struct StatsDelta {
    all_ns: u64,
    skb_ns: u64,
    skb_runs: u64,
}

impl ProgramStats {
    fn since(&self, before: &Self) -> StatsDelta {
        let mut delta = StatsDelta { all_ns: 0, skb_ns: 0, skb_runs: 0 };
        for (id, &(ns, runs, skb)) in &self.0 {
            let Some(&(ns_before, runs_before, _)) = before.0.get(id) else { continue };
            let ns = ns.saturating_sub(ns_before);
            delta.all_ns += ns;
            if skb {
                delta.skb_ns += ns;
                delta.skb_runs += runs.saturating_sub(runs_before);
            }
        }
        delta
    }
}

fn bpftool_programs() -> anyhow::Result<Vec<Value>> {
    let text = output(Command::new("bpftool").args(["prog", "show", "--json"])).context("bpftool prog show")?;
    serde_json::from_str(&text).context("bpftool JSON")
}

fn program_ids() -> anyhow::Result<Vec<u64>> {
    Ok(bpftool_programs()?.iter().filter_map(|program| program["id"].as_u64()).collect())
}

/// Ids of the programs that appeared since `existing` and are the variant's:
/// the observer's by name, bpftrace's by type (others on this shared machine
/// may load programs meanwhile); none for the variants without eBPF.
fn variant_programs(variant: Variant, existing: &[u64]) -> anyhow::Result<Vec<u64>> {
    let wanted = |program: &Value| match variant {
        Variant::Observer => ["flow_ingress", "flow_egress", "tcp_state", "tcp_state_btf"]
            .iter()
            .any(|name| program["name"].as_str() == Some(name)),
        Variant::Bpftrace => program["type"] == "tracepoint",
        Variant::Baseline | Variant::Conntrack => false,
    };
    Ok(bpftool_programs()?
        .iter()
        .filter(|program| wanted(program))
        .filter_map(|program| program["id"].as_u64())
        .filter(|id| !existing.contains(id))
        .collect())
}

fn program_stats(ids: &[u64]) -> anyhow::Result<ProgramStats> {
    let mut stats = ProgramStats::default();
    for program in bpftool_programs()? {
        let Some(id) = program["id"].as_u64().filter(|id| ids.contains(id)) else { continue };
        let ns = program["run_time_ns"].as_u64().unwrap_or(0);
        let runs = program["run_cnt"].as_u64().unwrap_or(0);
        stats.0.insert(id, (ns, runs, program["type"] == "cgroup_skb"));
    }
    Ok(stats)
}

fn report(args: &CaptureArgs, machine: &str, samples: &[(Variant, Sample)]) -> String {
    let of = |variant: Variant, pick: fn(&Sample) -> Option<f64>| {
        median(samples.iter().filter(|(v, _)| *v == variant).filter_map(|(_, sample)| pick(sample)).collect())
    };
    // Each round's ratio to that round's baseline, then the median of those
    // (the machine drifts between rounds more than within one), with their
    // range.
    let ratio = |variant: Variant, pick: fn(&Sample, &Sample) -> Option<f64>| {
        let rounds = samples.chunks(Variant::ALL.len());
        let ratios: Vec<f64> = rounds
            .filter_map(|round| {
                let base = round.iter().find(|(v, _)| *v == Variant::Baseline)?;
                let this = round.iter().find(|(v, _)| *v == variant)?;
                Some(pick(&this.1, &base.1)? * 100.0)
            })
            .collect();
        let (low, high) = ratios
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(low, high), ratio| (low.min(*ratio), high.max(*ratio)));
        match median(ratios) {
            Some(median) => format!("{median:.1}% ({low:.0}–{high:.0})"),
            None => "-".to_owned(),
        }
    };
    let mut text = String::new();
    let _ = writeln!(text, "### Capture overhead (`cargo xtask bench capture`)\n");
    let _ = writeln!(
        text,
        "Command: `cargo xtask bench capture --rounds {} --connections {} --iperf-seconds {}` (release build, as root; \
         also run by `cargo xtask bench`).  ",
        args.rounds, args.connections, args.iperf_seconds
    );
    let _ = writeln!(text, "Machine: {machine}.  ");
    let _ = writeln!(
        text,
        "Two lab pods on one bridge; each round runs every variant once in rotated order; medians over {} rounds \
         (\"vs baseline\": the median of each round's ratio to that round's baseline, and in brackets the lowest and \
         highest of those ratios). \
         Connection rate: {} short TCP connections (16 bytes each, 2 client threads). Throughput: one iperf3 stream \
         for {} s. Rates and tool CPU are measured with `kernel.bpf_stats_enabled=0` (the accounting costs every \
         program run two clock reads); then, for the variants with eBPF programs, the same burst and iperf3 run \
         again with it on for the in-kernel time (`run_time_ns` of every program that appeared when the variant \
         started, via bpftool), per connection and per packet on the client's link during iperf3 \
         (both directions; each packet passes an egress and an ingress cgroup_skb run, one at each end), and as \
         a share of one core over the iperf3 run (what the programs take from a stream that is bound by the CPU of \
         either end is at most that); \
         machine CPU per connection: the busy time of all cores (user, nice, system, irq, softirq from /proc/stat; \
         not idle, iowait or steal) from the start of the burst until {:.1} s after it, when every tool has read and \
         reported what it left, divided by the connections; \"CPU-bound rate\" is the rate that cost would allow \
         if the machine were saturated: each round's baseline µs per connection over the variant's, median and range \
         as above; \"rate its own CPU allows\" charges the baseline's µs per connection with only what is measured \
         as the tool's own (its in-kernel ns per connection plus its process CPU per connection), not what it costs \
         the kernel around its programs: the best the variant could do, from figures far steadier than the rates \
         (conntrack's cost is in netfilter, not measured here). The cores stay about as busy in every run, so the two columns move together: the swings \
         between runs are in what a connection costs on this VM, not in how the burst was scheduled; \
         both ends of each connection are on this node, so the figures cover two sockets. Tool CPU: user + system \
         time of the observer, bpftrace, or the two `conntrack -E` listeners, from /proc/PID/stat (10 ms ticks). \
         conntrack variant: `conntrack -E -e NEW,DESTROY` runs in each pod's network namespace, and conntrack is \
         turned on there for that variant only by an nftables table `{CONNTRACK_TABLE}` with \
         `ct state established accept` in input and output (removed afterwards); its cost includes nf_conntrack \
         tracking every connection as well as the events. DESTROY events of a closed TCP connection come only when \
         its TIME_WAIT entry expires (2 min), after the run, so each connection costs a NEW event per namespace here.\n",
        args.rounds,
        args.connections,
        args.iperf_seconds,
        SETTLE.as_secs_f64(),
    );
    let _ = writeln!(
        text,
        "| variant | conn/s | vs baseline | machine CPU µs/conn | CPU-bound rate vs baseline | rate its own CPU allows vs baseline | Gbit/s | vs baseline | kernel ns/conn | kernel ns/packet | skb program ns/run | kernel % of a core during iperf3 | tool CPU ms per 1k conn |"
    );
    let _ =
        writeln!(text, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for variant in Variant::ALL {
        let rate = of(variant, |s| Some(s.conn_per_sec)).unwrap_or(f64::NAN);
        let gbit = of(variant, |s| Some(s.gbit_per_sec)).unwrap_or(f64::NAN);
        let _ = writeln!(
            text,
            "| {} | {:.0} | {} | {:.0} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {} |",
            variant.name(),
            rate,
            ratio(variant, |s, base| Some(s.conn_per_sec / base.conn_per_sec)),
            of(variant, |s| Some(s.machine_us_per_conn)).unwrap_or(f64::NAN),
            ratio(variant, |s, base| Some(base.machine_us_per_conn / s.machine_us_per_conn)),
            ratio(variant, own_cost_rate),
            gbit,
            ratio(variant, |s, base| Some(s.gbit_per_sec / base.gbit_per_sec)),
            optional(of(variant, |s| s.kernel_ns_per_conn), 0),
            optional(of(variant, |s| s.kernel_ns_per_packet), 0),
            optional(of(variant, |s| s.kernel_ns_per_skb_run), 0),
            optional(of(variant, |s| s.kernel_core_share_iperf.map(|share| share * 100.0)), 2),
            optional(of(variant, |s| s.cpu_ms_per_1k_conn), 1),
        );
    }
    if let Some(events) = of(Variant::Conntrack, |s| s.conntrack_events_per_conn) {
        let _ = writeln!(text, "\nconntrack NEW events logged per connection (median, both namespaces): {events:.2}.");
    }
    let _ = writeln!(text, "\nEvery round, in order run:\n");
    let _ = writeln!(
        text,
        "| round | variant | conn/s | machine CPU µs/conn | Gbit/s | kernel ns/conn | kernel ns/packet |"
    );
    let _ = writeln!(text, "| ---: | --- | ---: | ---: | ---: | ---: | ---: |");
    for (index, (variant, sample)) in samples.iter().enumerate() {
        let _ = writeln!(
            text,
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} | {} |",
            index / Variant::ALL.len() + 1,
            variant.name(),
            sample.conn_per_sec,
            sample.machine_us_per_conn,
            sample.gbit_per_sec,
            optional(sample.kernel_ns_per_conn, 0),
            optional(sample.kernel_ns_per_packet, 0),
        );
    }
    text
}
