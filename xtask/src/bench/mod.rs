//! `cargo xtask bench`: every benchmark in one run (or one part with a
//! subcommand), each part writing its own marked section of BENCHMARKS.md
//! with the exact command, the machine (cores, CPU, kernel, load average at
//! its start) and the results.
//!
//! Parts: `capture` (kernel-side overhead against no observer, bpftrace and
//! `conntrack -E`), `completeness` (bursts of short connections, every one
//! reported or counted lost), `pipeline` (userspace records per CPU-second,
//! policy verdicts per second), `memory` (bytes per tracked flow, RSS at
//! 10,000 pods).

mod capture;
mod completeness;
mod userspace;

use std::{fs, process::Command};

use anyhow::Context as _;
use clap::{Args, Subcommand};

use crate::{
    binaries::{Profile, build_lab_binaries},
    command::{output, step, workspace_root},
};

/// `cargo xtask bench [PART]`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The part to run; every part when left out.
    #[command(subcommand)]
    part: Option<BenchCmd>,
}

/// Benchmark parts.
#[derive(Debug, Subcommand)]
pub enum BenchCmd {
    /// Every part below, in order, with its defaults.
    All(AllArgs),
    /// Kernel-side overhead: connection rate, throughput, in-kernel time, against no observer, bpftrace, conntrack -E.
    Capture(capture::CaptureArgs),
    /// Bursts of 10k, 50k and 100k short connections over 4 pod pairs: made, reported, counted lost.
    Completeness(completeness::CompletenessArgs),
    /// Userspace pipeline records per CPU-second (one thread) and policy verdicts per second.
    Pipeline(userspace::PipelineArgs),
    /// Userspace bytes per tracked flow at 100k flows, and RSS of `observer run` at 10,000 pods.
    Memory(userspace::MemoryArgs),
}

/// Options of `bench all`.
#[derive(Debug, Default, Args)]
pub struct AllArgs {
    /// Do not update BENCHMARKS.md.
    #[arg(long)]
    no_write: bool,
}

/// Runs the benchmarks.
pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    crate::interrupt::install();
    match args.part.unwrap_or(BenchCmd::All(AllArgs::default())) {
        BenchCmd::All(all) => {
            capture::run(&capture::CaptureArgs { no_write: all.no_write, ..Default::default() })?;
            completeness::run(&completeness::CompletenessArgs { no_write: all.no_write, ..Default::default() })?;
            userspace::pipeline(&userspace::PipelineArgs { no_write: all.no_write })?;
            userspace::memory(&userspace::MemoryArgs { no_write: all.no_write })
        }
        BenchCmd::Capture(args) => capture::run(&args),
        BenchCmd::Completeness(args) => completeness::run(&args),
        BenchCmd::Pipeline(args) => userspace::pipeline(&args),
        BenchCmd::Memory(args) => userspace::memory(&args),
    }
}

/// Builds the release binaries the lab parts run and points the lab helpers at them.
fn build_release() -> anyhow::Result<()> {
    build_lab_binaries(Profile::Release)
}

/// The 1-minute load average now.
fn load_average() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|text| text.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".to_owned())
}

/// Cores, CPU model, kernel, and the load average (1, 5, 15 min) now.
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
    format!("{cores} cores ({cpu}), Linux {}, load average {} at start", kernel.trim(), load_average())
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    Some(if values.len().is_multiple_of(2) { (values[middle - 1] + values[middle]) / 2.0 } else { values[middle] })
}

/// User + system CPU time of a process in milliseconds.
fn cpu_ms(pid: u32) -> anyhow::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("").split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    Ok(ticks_to_ms(ticks))
}

/// Clock ticks (the unit of /proc CPU times) in milliseconds.
fn ticks_to_ms(ticks: u64) -> u64 {
    // SAFETY: sysconf has no preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).unwrap_or(100).max(1);
    ticks * 1000 / per_second
}

/// CPU ms the whole machine has spent busy since boot, all cores together:
/// user, nice, system, irq and softirq time from /proc/stat (not idle,
/// iowait, or steal, the time the hypervisor gave to others).
fn machine_busy_ms() -> anyhow::Result<u64> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().find(|line| line.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
    let ticks: Vec<u64> = line.split_whitespace().skip(1).map(|field| field.parse().unwrap_or(0)).collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6].iter().map(|&index| ticks.get(index).copied().unwrap_or(0)).sum::<u64>();
    Ok(ticks_to_ms(busy))
}

/// Replaces the text between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->`
/// in BENCHMARKS.md, appending the section if it is not there yet.
fn write_section(name: &str, body: &str) -> anyhow::Result<()> {
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

/// Prints a part's report and writes it into its section unless told not to.
fn publish(name: &str, report: &str, no_write: bool) -> anyhow::Result<()> {
    println!("\n{report}");
    if !no_write {
        write_section(name, report)?;
        step(&format!("BENCHMARKS.md section {name} updated"));
    }
    Ok(())
}
