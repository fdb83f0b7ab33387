//! `cargo xtask bench capture`: what the observer costs the traffic it
//! watches, measured side by side with no observer and with bpftrace on the
//! same tracepoint, interleaved over rounds on a lab of two pods, with medians.
//! Results are printed and written into BENCHMARKS.md between markers.

use std::{fmt::Write as _, fs, process::Command, time::Duration};

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use observer_tests::{BurstOpts, Endpoint, Lab, ObserverProcess, Pod, Proc, TcpServerOpts};
use serde_json::Value;

use crate::{
    command::{output, run as run_command, step, workspace_root},
    interrupt,
};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Kernel-side overhead: connection rate, throughput and in-kernel time per connection.
    Capture(CaptureArgs),
}

/// Options of `bench capture`.
#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Rounds; each runs every variant once, in rotated order.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Short connections per connection-rate run.
    #[arg(long, default_value_t = 5000)]
    connections: u64,
    /// Seconds per iperf3 run.
    #[arg(long, default_value_t = 3)]
    iperf_seconds: u64,
    /// Do not update BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
}

/// The bpftrace program a user would reach for: count TCP state changes.
const BPFTRACE_PROGRAM: &str = "tracepoint:sock:inet_sock_set_state { @[args->newstate] = count(); }";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Variant {
    Baseline,
    Observer,
    Bpftrace,
}

impl Variant {
    const ALL: [Self; 3] = [Self::Baseline, Self::Observer, Self::Bpftrace];

    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "no observer",
            Self::Observer => "observer",
            Self::Bpftrace => "bpftrace (counts state changes)",
        }
    }
}

/// One variant's measurements in one round.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    conn_per_sec: f64,
    gbit_per_sec: f64,
    /// In-kernel ns per connection (all of the variant's programs).
    kernel_ns_per_conn: Option<f64>,
    /// In-kernel ns per packet of the cgroup_skb programs during iperf3.
    kernel_ns_per_packet: Option<f64>,
    /// The observer's own CPU ms per 1,000 connections.
    cpu_ms_per_1k_conn: Option<f64>,
}

/// Runs a benchmark.
pub fn run(cmd: BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Capture(args) => capture(&args),
    }
}

fn capture(args: &CaptureArgs) -> anyhow::Result<()> {
    interrupt::install();
    crate::setup::run()?;
    step("building release binaries");
    run_command(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--release",
        "-p",
        "observer",
        "-p",
        "observer-tests",
        "--bins",
    ]))?;
    let target = workspace_root().join("target/release");
    // SAFETY: single-threaded here; children read these.
    unsafe {
        std::env::set_var(observer_tests::OBSERVER_BIN_ENV, target.join("observer"));
        std::env::set_var(observer_tests::TRAFFIC_BIN_ENV, target.join("lab-traffic"));
    }
    let stats_enabled = fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").unwrap_or_default();
    fs::write("/proc/sys/kernel/bpf_stats_enabled", "1").context("enabling kernel.bpf_stats_enabled (needs root)")?;
    let result = measure(args);
    let _ = fs::write("/proc/sys/kernel/bpf_stats_enabled", stats_enabled.trim());
    let samples = result?;
    let report = report(args, &samples);
    println!("\n{report}");
    if !args.no_write {
        write_section("capture", &report)?;
        step("BENCHMARKS.md updated");
    }
    Ok(())
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
                "    {:.0} conn/s, {:.2} Gbit/s, kernel {} ns/conn",
                sample.conn_per_sec,
                sample.gbit_per_sec,
                sample.kernel_ns_per_conn.map_or("-".to_owned(), |ns| format!("{ns:.0}"))
            );
            samples.push((variant, sample));
        }
    }
    Ok(samples)
}

/// Keeps whatever the variant runs alive while it is measured (bpftrace is
/// stopped when its guard drops).
enum Running {
    Nothing,
    Observer(ObserverProcess),
    Bpftrace(#[expect(dead_code, reason = "held only so that dropping it stops bpftrace")] Proc),
}

fn start(variant: Variant) -> anyhow::Result<Running> {
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
    })
}

fn measure_variant(variant: Variant, client: &Pod, server: &Pod, args: &CaptureArgs) -> anyhow::Result<Sample> {
    let existing = program_ids()?;
    let running = start(variant)?;
    // The variant's programs are the ones that appeared when it started
    // (Debian's bpftool cannot name the process that holds a program).
    let ours: Vec<u64> = program_ids()?.into_iter().filter(|id| !existing.contains(id)).collect();
    if variant != Variant::Baseline && ours.is_empty() {
        bail!("{} attached no eBPF program", variant.name());
    }
    let ids = (!ours.is_empty()).then_some(ours.as_slice());
    let observer_pid = match &running {
        Running::Observer(observer) => Some(observer.pid()),
        _ => None,
    };
    let before = ids.map(program_stats).transpose()?;
    let cpu_before = observer_pid.map(cpu_ms).transpose()?;
    let burst = client.burst(
        server.addr_v4(8080),
        &BurstOpts { count: args.connections, threads: 2, send: 16, timeout: Duration::from_secs(5) },
    )?;
    if burst.completed != args.connections {
        bail!("only {} of {} connections completed: {burst:?}", burst.completed, args.connections);
    }
    // Let the observer's poll read what the burst left before reading its CPU.
    let after = ids.map(program_stats).transpose()?;
    let cpu_after = observer_pid.map(cpu_ms).transpose()?;
    let connections = burst.completed as f64;
    let conn_per_sec = connections / Duration::from_millis(burst.elapsed_ms.max(1)).as_secs_f64();
    let kernel_ns_per_conn =
        before.zip(after).map(|(before, after)| (after.all_ns - before.all_ns) as f64 / connections);
    let cpu_ms_per_1k_conn =
        cpu_before.zip(cpu_after).map(|(before, after)| (after - before) as f64 / connections * 1000.0);
    let before_iperf = ids.map(program_stats).transpose()?;
    let iperf = client.run(
        "iperf3",
        ["-c", &server.ipv4().to_string(), "-t", &args.iperf_seconds.to_string(), "-J"],
        Duration::from_secs(args.iperf_seconds + 30),
    )?;
    let after_iperf = ids.map(program_stats).transpose()?;
    let json: Value = serde_json::from_slice(&iperf.stdout).context("iperf3 -J output")?;
    let bits = json
        .pointer("/end/sum_received/bits_per_second")
        .and_then(Value::as_f64)
        .with_context(|| format!("no throughput in iperf3 output: {json}"))?;
    let kernel_ns_per_packet = match (&running, before_iperf, after_iperf) {
        (Running::Observer(_), Some(before), Some(after)) if after.skb_runs > before.skb_runs => {
            Some((after.skb_ns - before.skb_ns) as f64 / (after.skb_runs - before.skb_runs) as f64)
        }
        _ => None,
    };
    if let Running::Observer(observer) = running {
        observer.stop()?;
    }
    Ok(Sample { conn_per_sec, gbit_per_sec: bits / 1e9, kernel_ns_per_conn, kernel_ns_per_packet, cpu_ms_per_1k_conn })
}

/// Cumulative `bpf_stats` of the programs a process holds.
#[derive(Clone, Copy, Debug)]
struct ProgramStats {
    all_ns: u64,
    skb_ns: u64,
    skb_runs: u64,
}

fn bpftool_programs() -> anyhow::Result<Vec<Value>> {
    let text = output(Command::new("bpftool").args(["prog", "show", "--json"])).context("bpftool prog show")?;
    serde_json::from_str(&text).context("bpftool JSON")
}

fn program_ids() -> anyhow::Result<Vec<u64>> {
    Ok(bpftool_programs()?.iter().filter_map(|program| program["id"].as_u64()).collect())
}

fn program_stats(ids: &[u64]) -> anyhow::Result<ProgramStats> {
    let mut stats = ProgramStats { all_ns: 0, skb_ns: 0, skb_runs: 0 };
    for program in bpftool_programs()? {
        if !program["id"].as_u64().is_some_and(|id| ids.contains(&id)) {
            continue;
        }
        let ns = program["run_time_ns"].as_u64().unwrap_or(0);
        stats.all_ns += ns;
        if program["type"] == "cgroup_skb" {
            stats.skb_ns += ns;
            stats.skb_runs += program["run_cnt"].as_u64().unwrap_or(0);
        }
    }
    Ok(stats)
}

/// User + system CPU time of a process in milliseconds.
fn cpu_ms(pid: u32) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    Ok(ticks * 1000 / per_second)
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len().is_multiple_of(2) { (values[middle - 1] + values[middle]) / 2.0 } else { values[middle] })
}

fn report(args: &CaptureArgs, samples: &[(Variant, Sample)]) -> String {
    let of = |variant: Variant, pick: fn(&Sample) -> Option<f64>| {
        median(samples.iter().filter(|(v, _)| *v == variant).filter_map(|(_, sample)| pick(sample)).collect())
    };
    let base_rate = of(Variant::Baseline, |s| Some(s.conn_per_sec)).unwrap_or(f64::NAN);
    let base_gbit = of(Variant::Baseline, |s| Some(s.gbit_per_sec)).unwrap_or(f64::NAN);
    let mut text = String::new();
    let _ = writeln!(text, "### Capture overhead (`cargo xtask bench capture`)\n");
    let _ = writeln!(
        text,
        "Command: `cargo xtask bench capture --rounds {} --connections {} --iperf-seconds {}` (release build, as root).  ",
        args.rounds, args.connections, args.iperf_seconds
    );
    let _ = writeln!(text, "Machine: {}.  ", machine_facts());
    let _ = writeln!(
        text,
        "Two lab pods on one bridge; each round runs every variant once in rotated order; medians over {} rounds. \
         Connection rate: {} short TCP connections (16 bytes each, 2 client threads). Throughput: one iperf3 stream. \
         In-kernel time from `kernel.bpf_stats_enabled=1` (`run_time_ns` of every program the process holds, via bpftool), \
         divided by connections; both ends of each connection are on this node, so it covers two sockets.\n",
        args.rounds, args.connections
    );
    let _ = writeln!(
        text,
        "| variant | conn/s | vs baseline | Gbit/s | vs baseline | kernel ns/conn | kernel ns/packet | observer CPU ms per 1k conn |"
    );
    let _ = writeln!(text, "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for variant in Variant::ALL {
        let rate = of(variant, |s| Some(s.conn_per_sec)).unwrap_or(f64::NAN);
        let gbit = of(variant, |s| Some(s.gbit_per_sec)).unwrap_or(f64::NAN);
        let optional =
            |value: Option<f64>, digits: usize| value.map_or("-".to_owned(), |value| format!("{value:.digits$}"));
        let _ = writeln!(
            text,
            "| {} | {:.0} | {:.1}% | {:.2} | {:.1}% | {} | {} | {} |",
            variant.name(),
            rate,
            rate / base_rate * 100.0,
            gbit,
            gbit / base_gbit * 100.0,
            optional(of(variant, |s| s.kernel_ns_per_conn), 0),
            optional(of(variant, |s| s.kernel_ns_per_packet), 0),
            optional(of(variant, |s| s.cpu_ms_per_1k_conn), 1),
        );
    }
    let _ = writeln!(text, "\nEvery round, in order run:\n");
    let _ = writeln!(text, "| round | variant | conn/s | Gbit/s | kernel ns/conn |");
    let _ = writeln!(text, "| ---: | --- | ---: | ---: | ---: |");
    for (index, (variant, sample)) in samples.iter().enumerate() {
        let _ = writeln!(
            text,
            "| {} | {} | {:.0} | {:.2} | {} |",
            index / Variant::ALL.len() + 1,
            variant.name(),
            sample.conn_per_sec,
            sample.gbit_per_sec,
            sample.kernel_ns_per_conn.map_or("-".to_owned(), |ns| format!("{ns:.0}"))
        );
    }
    text
}

fn machine_facts() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let kernel = output(Command::new("uname").arg("-r")).unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{cores} cores ({cpu}), Linux {}", kernel.trim())
}

/// Replaces the text between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->`
/// in BENCHMARKS.md, appending the section if it is not there yet.
pub fn write_section(name: &str, body: &str) -> anyhow::Result<()> {
    let path = workspace_root().join("BENCHMARKS.md");
    let text = fs::read_to_string(&path).unwrap_or_else(|_| "# Benchmarks\n".to_owned());
    let begin = format!("<!-- bench:{name}:begin -->");
    let end = format!("<!-- bench:{name}:end -->");
    let section = format!("{begin}\n{body}{end}");
    let updated = match (text.find(&begin), text.find(&end)) {
        (Some(start), Some(stop)) if stop > start => {
            format!("{}{section}{}", &text[..start], &text[stop + end.len()..])
        }
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    fs::write(&path, updated).with_context(|| format!("writing {}", path.display()))
}
