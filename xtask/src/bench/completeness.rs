//! `cargo xtask bench completeness`: bursts of short TCP connections across
//! several pod pairs at once, while `observer run` watches; every connection
//! must come out as a flow-log `end` record from its client's cgroup or be
//! counted lost by the capture health counters.
//!
//! In: burst sizes and pairs. Out: per burst, made (connections tried),
//! reported (client-side `end` records), counted lost (events_lost +
//! flow_inserts_failed + flows_evicted + records_dropped + states_unmatched), written into
//! BENCHMARKS.md between markers.

use std::{collections::HashMap, fmt::Write as _, time::Duration};

use anyhow::{Context as _, bail};
use clap::Args;
use observer_tests::{BurstOpts, BurstReport, Endpoint, Lab, ObserverProcess, TcpServerOpts};
use serde::Deserialize;
use serde_json::Value;

use super::{build_release, cpu_ms, machine_facts, publish};
use crate::{command::step, interrupt};

/// Options of `bench completeness`.
#[derive(Debug, Args)]
pub struct CompletenessArgs {
    /// Connections per burst, over all pairs (comma separated).
    #[arg(long, value_delimiter = ',', default_values_t = [10_000u64, 50_000, 100_000])]
    pub bursts: Vec<u64>,
    /// Client → server pod pairs bursting in parallel (2 × pairs pods).
    #[arg(long, default_value_t = 4)]
    pub pairs: usize,
    /// Client threads per pair.
    #[arg(long, default_value_t = 2)]
    pub threads: u64,
    /// Extra `observer run` options, e.g. `--flow-map-size 262144` (default: none, the observer's defaults).
    #[arg(long, allow_hyphen_values = true, num_args = 1.., value_name = "OPTION")]
    pub observer_args: Vec<String>,
    /// Do not update BENCHMARKS.md.
    #[arg(long)]
    pub no_write: bool,
}

impl Default for CompletenessArgs {
    /// The command-line defaults.
    fn default() -> Self {
        Self { bursts: vec![10_000, 50_000, 100_000], pairs: 4, threads: 2, observer_args: Vec::new(), no_write: false }
    }
}

/// The port the servers listen on (below the lab's ephemeral range).
const PORT: u16 = 8082;

/// The counters whose sum is what the observer knows it lost.
/// (the same as `tests/tests/capture.rs` uses).
const LOST: [&str; 5] = ["events_lost", "flow_inserts_failed", "flows_evicted", "records_dropped", "states_unmatched"];

/// One burst's result.
#[derive(Debug)]
struct Outcome {
    made: u64,
    completed: u64,
    reported: u64,
    reported_closed: u64,
    /// `end` records from the client cgroups not oriented client → server
    /// (for example a flow whose first packet seen was the server's).
    other_client_ends: u64,
    lost: u64,
    /// The observer's final capture health.
    health: Value,
    elapsed_ms: u64,
    observer_cpu_ms: u64,
}

/// The few fields of a flow-log record this part reads.
#[derive(Deserialize)]
struct Record {
    event: String,
    state: String,
    cgroup: RecordCgroup,
    dst: RecordPeer,
}

#[derive(Deserialize)]
struct RecordCgroup {
    id: u64,
}

#[derive(Deserialize)]
struct RecordPeer {
    ip: String,
    port: Option<u16>,
}

/// Runs the part.
pub fn run(args: &CompletenessArgs) -> anyhow::Result<()> {
    if args.pairs == 0 || args.bursts.is_empty() {
        bail!("need at least one pair and one burst size");
    }
    build_release()?;
    let machine = machine_facts();
    step(&format!("bringing up a lab of {} pods", args.pairs * 2));
    let lab = Lab::builder().pods(args.pairs * 2).ipv6(false).internet(false).build()?;
    let pairs: Vec<_> = (0..args.pairs).map(|pair| (lab.pod(pair * 2), lab.pod(pair * 2 + 1))).collect();
    let _servers = pairs
        .iter()
        .map(|(_, server)| server.tcp_server(server.addr_v4(PORT), &TcpServerOpts::default()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut outcomes = Vec::new();
    for &total in &args.bursts {
        interrupt::check()?;
        step(&format!("burst of {total} connections over {} pairs", args.pairs));
        let outcome = burst(&pairs, total, args)?;
        println!(
            "    made {}, completed {}, reported {}, lost {}, {:.0} conn/s; health {}",
            outcome.made,
            outcome.completed,
            outcome.reported,
            outcome.lost,
            outcome.made as f64 / (outcome.elapsed_ms.max(1) as f64 / 1000.0),
            outcome.health
        );
        outcomes.push((total, outcome));
    }
    publish("completeness", &report(args, &machine, &outcomes), args.no_write)
}

fn burst(
    pairs: &[(&observer_tests::Pod, &observer_tests::Pod)],
    total: u64,
    args: &CompletenessArgs,
) -> anyhow::Result<Outcome> {
    let observer_args: Vec<&str> = args.observer_args.iter().map(String::as_str).collect();
    let observer = ObserverProcess::start(&observer_args)?;
    let cpu_before = cpu_ms(observer.pid())?;
    let share = total / pairs.len() as u64;
    let counts: Vec<u64> =
        (0..pairs.len()).map(|index| share + u64::from((index as u64) < total % pairs.len() as u64)).collect();
    let started = std::time::Instant::now();
    let reports: Vec<anyhow::Result<BurstReport>> = std::thread::scope(|scope| {
        let handles: Vec<_> = pairs
            .iter()
            .zip(&counts)
            .map(|((client, server), &count)| {
                scope.spawn(move || {
                    let opts = BurstOpts { count, threads: args.threads, send: 16, timeout: Duration::from_secs(5) };
                    client.burst(server.addr_v4(PORT), &opts).map_err(anyhow::Error::from)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap_or_else(|_| Err(anyhow::anyhow!("burst panicked"))))
            .collect()
    });
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let reports = reports.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    // Past the close linger and the next poll, so the last flows are written.
    std::thread::sleep(Duration::from_millis(2500));
    let observer_cpu_ms = cpu_ms(observer.pid())?.saturating_sub(cpu_before);
    let targets: HashMap<u64, (String, u16)> =
        pairs.iter().map(|(client, server)| (client.cgroup_id(), (server.ipv4().to_string(), PORT))).collect();
    let (mut reported, mut reported_closed, mut other_client_ends) = (0u64, 0u64, 0u64);
    let run = observer
        .stop_streaming(|line| {
            if !line.contains(r#""event":"end""#) {
                return;
            }
            let Ok(record) = serde_json::from_str::<Record>(line) else { return };
            let Some((ip, port)) = targets.get(&record.cgroup.id) else { return };
            if record.event != "end" {
                return;
            }
            if record.dst.ip == *ip && record.dst.port == Some(*port) {
                reported += 1;
                reported_closed += u64::from(record.state == "closed");
            } else {
                other_client_ends += 1;
            }
        })
        .context("stopping the observer")?;
    let lost = LOST
        .iter()
        .map(|counter| run.health[counter].as_u64().with_context(|| format!("{counter} missing in {}", run.health)))
        .sum::<anyhow::Result<u64>>()?;
    Ok(Outcome {
        made: reports.iter().map(|report| report.attempted).sum(),
        completed: reports.iter().map(|report| report.completed).sum(),
        reported,
        reported_closed,
        other_client_ends,
        lost,
        health: run.health,
        elapsed_ms,
        observer_cpu_ms,
    })
}

fn report(args: &CompletenessArgs, machine: &str, outcomes: &[(u64, Outcome)]) -> String {
    let mut text = String::new();
    let bursts: Vec<String> = args.bursts.iter().map(u64::to_string).collect();
    let observer = if args.observer_args.is_empty() {
        "defaults: `--flow-map-size 131072 --ring-buffer-bytes 8388608 --poll-interval 1s`".to_owned()
    } else {
        format!("`{}` (other options at their defaults)", args.observer_args.join(" "))
    };
    let _ = writeln!(text, "### Completeness under bursts (`cargo xtask bench completeness`)\n");
    let _ = writeln!(
        text,
        "Command: `cargo xtask bench completeness --bursts {} --pairs {} --threads {}{}` (release build, as root; \
         also run by `cargo xtask bench`).  ",
        bursts.join(","),
        args.pairs,
        args.threads,
        if args.observer_args.is_empty() {
            String::new()
        } else {
            format!(" --observer-args {}", args.observer_args.join(" "))
        }
    );
    let _ = writeln!(text, "Machine: {machine}.  ");
    let _ = writeln!(
        text,
        "{} pods: {} client → server pairs burst at once, each `lab-traffic burst` with {} threads, 16 bytes per \
         connection, to a server on port {PORT}; pods use ephemeral ports 10000-65000 with tcp_tw_reuse. One \
         `observer run` per burst, options: {observer}. Made: connections attempted. Reported: flow-log `end` \
         records from the client pods' cgroups to their server (the server side's records are written too, not \
         counted here). Lost: events_lost + flow_inserts_failed + flows_evicted + records_dropped + states_unmatched from \
         the final capture health (these count both ends' flows). Accounted for when reported + lost ≥ made; unaccounted = \
         made − reported − lost when that is positive. Other client ends: `end` records from the client cgroups \
         that are not oriented client → server (not counted as reported).\n",
        args.pairs * 2,
        args.pairs,
        args.threads
    );
    let _ = writeln!(
        text,
        "| burst | made | completed | reported | reported closed | lost (counted) | unaccounted | other client ends | none lost | conn/s | observer CPU ms per 1k conn |"
    );
    let _ = writeln!(text, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |");
    for (total, outcome) in outcomes {
        let _ = writeln!(
            text,
            "| {total} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.1} |",
            outcome.made,
            outcome.completed,
            outcome.reported,
            outcome.reported_closed,
            outcome.lost,
            outcome.made.saturating_sub(outcome.reported + outcome.lost),
            outcome.other_client_ends,
            if outcome.lost == 0 && outcome.reported == outcome.made { "yes" } else { "**no**" },
            outcome.made as f64 / (outcome.elapsed_ms.max(1) as f64 / 1000.0),
            outcome.observer_cpu_ms as f64 / outcome.made.max(1) as f64 * 1000.0,
        );
    }
    let _ = writeln!(text, "\nFinal capture health of each run:\n");
    for (total, outcome) in outcomes {
        let _ = writeln!(text, "- {total}: `{}`", outcome.health);
    }
    text
}
