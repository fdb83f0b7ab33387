//! `cargo xtask bench pipeline` and `cargo xtask bench memory`: the
//! observer's userspace cost.
//!
//! Pipeline: runs `cargo bench -p observer --bench pipeline` (records through
//! decode → flow table → build_record → enrich → judge → metrics meter on one
//! thread) and `--bench policy` (verdicts per second), and reports both.
//! Memory: runs `--bench flow_memory` (heap bytes per tracked flow at 100k
//! flows) and reads the RSS of `observer run --manifests` with a generated
//! 10,000-pod cluster once its inventory is loaded and its policies compiled.

use std::{
    fmt::Write as _,
    fs,
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Args;
use observer_tests::{
    ObserverProcess,
    manifests::{ClusterSize, cluster, write_list},
};
use serde_json::Value;

use super::{build_release, load_average, machine_facts, publish};
use crate::command::{step, workspace_root};

/// Options of `bench pipeline`.
#[derive(Debug, Default, Args)]
pub struct PipelineArgs {
    /// Do not update BENCHMARKS.md.
    #[arg(long)]
    pub no_write: bool,
}

/// Options of `bench memory`.
#[derive(Debug, Default, Args)]
pub struct MemoryArgs {
    /// Do not update BENCHMARKS.md.
    #[arg(long)]
    pub no_write: bool,
}

/// Target of the pipeline: ring-buffer events per second on one core.
const PIPELINE_TARGET: f64 = 1_000_000.0;
/// Target of memory: bytes per tracked flow in userspace.
const BYTES_PER_FLOW_TARGET: f64 = 256.0;

/// Runs `cargo bench -p observer --bench NAME`, echoing its output, and
/// returns its stdout.
fn cargo_bench(name: &str) -> anyhow::Result<String> {
    step(&format!("cargo bench -p observer --bench {name}"));
    let output = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["bench", "-p", "observer", "--bench", name])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running the {name} bench"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    print!("{stdout}");
    if !output.status.success() {
        bail!("cargo bench --bench {name} failed with {}", output.status);
    }
    Ok(stdout)
}

/// The JSON after `prefix` on a line of `text`.
fn result_line(text: &str, prefix: &str) -> anyhow::Result<Value> {
    let line = text
        .lines()
        .find_map(|line| line.strip_prefix(prefix))
        .with_context(|| format!("no `{prefix}` line in the bench output"))?;
    serde_json::from_str(line.trim()).context("bench result JSON")
}

fn number(value: &Value, pointer: &str) -> f64 {
    value.pointer(pointer).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// Criterion's throughput line after the verdict benchmark: low, estimate,
/// high in elements per second.
fn criterion_throughput(text: &str, bench: &str) -> Option<[f64; 3]> {
    let mut lines = text.lines().skip_while(|line| !line.contains(bench));
    let line = lines.find(|line| line.contains("thrpt:"))?;
    let inside = line.split_once('[')?.1.split_once(']')?.0;
    let words: Vec<&str> = inside.split_whitespace().collect();
    let mut values = [0.0; 3];
    for (index, pair) in words.chunks(2).take(3).enumerate() {
        let scale = match pair.get(1).copied().unwrap_or("") {
            "Gelem/s" => 1e9,
            "Melem/s" => 1e6,
            "Kelem/s" => 1e3,
            _ => 1.0,
        };
        values[index] = pair.first()?.parse::<f64>().ok()? * scale;
    }
    Some(values)
}

fn met(yes: bool) -> &'static str {
    if yes { "met" } else { "**not met**" }
}

/// Runs the pipeline part.
pub fn pipeline(args: &PipelineArgs) -> anyhow::Result<()> {
    let machine = machine_facts();
    let pipeline = result_line(&cargo_bench("pipeline")?, "pipeline-result ")?;
    let load_between = load_average();
    let policy = cargo_bench("policy")?;
    let indexed = criterion_throughput(&policy, "verdict_indexed_10k_pods_1k_policies_100_namespaces");
    let verdicts = criterion_throughput(&policy, "verdict_10k_pods_1k_policies_100_namespaces");
    let compile = policy
        .lines()
        .skip_while(|line| !line.contains("compile_1k_policies_100_namespaces"))
        .find(|line| line.contains("time:"))
        .and_then(|line| {
            line.split_once('[').and_then(|(_, rest)| rest.split_once(']')).map(|(inside, _)| inside.to_owned())
        })
        .map(|inside| {
            // "3.2 ms 3.4 ms 3.8 ms" → "3.4 ms (3.2–3.8 ms)"
            let words: Vec<&str> = inside.split_whitespace().collect();
            match words.as_slice() {
                [low, _, estimate, unit, high, _] => format!("{estimate} {unit} ({low}–{high} {unit})"),
                _ => inside,
            }
        });

    let records = number(&pipeline, "/records_per_cpu_s");
    let events = number(&pipeline, "/events_per_cpu_s");
    let mut text = String::new();
    let _ = writeln!(text, "### Userspace pipeline (`cargo xtask bench pipeline`)\n");
    let _ = writeln!(
        text,
        "Command: `cargo xtask bench pipeline` (also run by `cargo xtask bench`), which runs \
         `cargo bench -p observer --bench pipeline` and `cargo bench -p observer --bench policy`.  "
    );
    let _ = writeln!(text, "Machine: {machine}; load average {load_between} between the two benches.  ");
    let _ = writeln!(
        text,
        "Pipeline (`observer/benches/pipeline.rs`): one thread drives the real stage functions of `observer run` \
         on synthetic short TCP connections between {} pod pairs of a generated cluster ({} pods, {} namespaces, \
         {} NetworkPolicies, the FlowIntents of the same manifests): each connection's {} ring-buffer events \
         (new flow, ESTABLISHED, CLOSE with the socket's counters, cgroup and FINs; 96 bytes each, decoded as capture does) and its flow-map entry go \
         through the flow table (events, poll, flush: one `end` record), `build_record` (cgroup path from a cache), \
         `enrich` (both ends resolved to pods), the judge stage's `judge_batch` (policy and intent verdict, delivery, \
         findings, spikes) and the metrics meter (edge by workload, deltas, verdict counts), in batches of {} (one poll \
         each). Not included: the kernel's side (ring-buffer reads, map iteration and deletes are syscalls) and the \
         flow log (its own task; its JSON is timed below). Rate = records per second of this thread's CPU time (CLOCK_THREAD_CPUTIME_ID), median of {} \
         rounds of {} s after a warm-up, and each stage's ns per record in the same CPU time; wall-clock rate \
         beside it (the thread had {:.0}% of a core).\n",
        number(&pipeline, "/pairs"),
        number(&pipeline, "/pods"),
        number(&pipeline, "/namespaces"),
        number(&pipeline, "/policies"),
        number(&pipeline, "/events_per_record"),
        number(&pipeline, "/batch"),
        number(&pipeline, "/rounds"),
        number(&pipeline, "/round_seconds"),
        number(&pipeline, "/cpu_share") * 100.0,
    );
    let _ = writeln!(text, "| measure | result | target | status |");
    let _ = writeln!(text, "| --- | ---: | ---: | --- |");
    let _ = writeln!(
        text,
        "| ring-buffer events per second per core (records × {}; the issue's measure) | {:.0} | ≥ 1,000,000 | {} |",
        number(&pipeline, "/events_per_record"),
        events,
        met(events >= PIPELINE_TARGET)
    );
    let _ = writeln!(text, "| records per second per core (all stages) | {records:.0} | | |");
    let _ = writeln!(text, "| records per wall-clock second | {:.0} | | |", number(&pipeline, "/records_per_wall_s"));
    for (stage, name) in [
        ("decode_table", "decode + flow table"),
        ("build", "build_record"),
        ("enrich", "enrich"),
        ("judge", "judge"),
        ("meter", "metrics meter"),
    ] {
        let _ = writeln!(
            text,
            "| ns per record: {name} | {:.0} | | |",
            number(&pipeline, &format!("/ns_per_record/{stage}"))
        );
    }
    let _ = writeln!(
        text,
        "| ns per record: flow log JSON line (the flow log's encoder; {:.0} bytes) | {:.0} | | |",
        number(&pipeline, "/json/bytes_per_line"),
        number(&pipeline, "/json/encoder_ns_per_record"),
    );
    let _ = writeln!(
        text,
        "| ns per record: the same line by `serde_json` (the baseline; byte-identical, checked every batch) | {:.0} | | |",
        number(&pipeline, "/json/serde_json_ns_per_record"),
    );
    let _ = writeln!(
        text,
        "\nSanity: {:.0}% of records had both ends resolved to pods, {:.0}% were judged other than `allowed`.\n",
        number(&pipeline, "/both_ends_pods_fraction") * 100.0,
        number(&pipeline, "/not_allowed_fraction") * 100.0
    );
    let _ = writeln!(
        text,
        "Policy verdicts (`observer/benches/policy.rs`: 10,000 pods, 1,000 policies, 100 namespaces, 4,096 fixed \
         flows, one thread; criterion's interval):\n"
    );
    let _ = writeln!(text, "| measure | result | target | status |");
    let _ = writeln!(text, "| --- | ---: | ---: | --- |");
    for (name, throughput, target) in [
        ("verdicts per second, indexed (the daemon's path)", indexed, true),
        ("verdicts per second, plain", verdicts, false),
    ] {
        let _ = match throughput {
            Some([low, estimate, high]) => writeln!(
                text,
                "| {name} | {:.2} M ({:.2}–{:.2} M) | {} | {} |",
                estimate / 1e6,
                low / 1e6,
                high / 1e6,
                if target { "≥ 2 M" } else { "" },
                if target { met(estimate >= 2e6) } else { "" }
            ),
            None => writeln!(text, "| {name} | (no criterion throughput line found) | | |"),
        };
    }
    if let Some(compile) = compile {
        let _ = writeln!(text, "| compile 1,000 policies | {compile} | | |");
    }
    publish("pipeline", &text, args.no_write)
}

/// `VmRSS` and `VmHWM` of a process, in KiB.
fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// Starts `observer run --manifests FILE`, waits until its policies are
/// compiled and two seconds more, and reads its RSS; returns (RSS, peak RSS,
/// seconds to ready).
fn observer_rss(manifest: &std::path::Path) -> anyhow::Result<(u64, u64, f64)> {
    let started = Instant::now();
    let path = manifest.display().to_string();
    let observer = ObserverProcess::start(&["--manifests", &path])?;
    while !observer.log().contains("policies and intents compiled") {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the observer did not compile policies within 2 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let ready = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(2));
    let (rss, peak) = rss_kib(observer.pid())?;
    observer.stop()?;
    Ok((rss, peak, ready))
}

/// Runs the memory part.
pub fn memory(args: &MemoryArgs) -> anyhow::Result<()> {
    build_release()?;
    let machine = machine_facts();
    let flows = result_line(&cargo_bench("flow_memory")?, "flow-memory-result ")?;
    step("observer run --manifests: RSS with an empty inventory and with 10,000 pods");
    let dir = std::env::temp_dir().join(format!("observer-bench-memory-{}", std::process::id()));
    fs::create_dir_all(&dir).context("temp dir")?;
    let empty = dir.join("empty.json");
    write_list(&empty, Vec::new()).context("writing the empty manifest")?;
    let size = ClusterSize::BENCH;
    let full = dir.join("cluster-10k.json");
    let list = cluster(&size);
    fs::write(&full, list.to_string()).context("writing the 10k-pod manifest")?;
    let manifest_mib = fs::metadata(&full).map_or(0.0, |meta| meta.len() as f64 / (1024.0 * 1024.0));
    let result = observer_rss(&empty).and_then(|empty_rss| Ok((empty_rss, observer_rss(&full)?)));
    let _ = fs::remove_dir_all(&dir);
    let ((empty_rss, empty_peak, _), (rss, peak, ready)) = result?;

    let per_flow = number(&flows, "/bytes_per_flow");
    let mib = |kib: u64| kib as f64 / 1024.0;
    let mut text = String::new();
    let _ = writeln!(text, "### Memory (`cargo xtask bench memory`)\n");
    let _ = writeln!(
        text,
        "Command: `cargo xtask bench memory` (also run by `cargo xtask bench`), which runs \
         `cargo bench -p observer --bench flow_memory` and then `observer run --manifests <file>` (release build, \
         as root).  "
    );
    let _ = writeln!(text, "Machine: {machine}.  ");
    let _ = writeln!(
        text,
        "Per flow (`observer/benches/flow_memory.rs`): a counting global allocator; {} established TCP flows over {} \
         pod pairs of a generated cluster ({} pods, {} NetworkPolicies) each go through decode, the flow table, \
         build_record, enrich, the judge stage and the metrics meter (a `start` record), the records then dropped as \
         the flow log does; live heap bytes after minus before, divided by the flows. The table's and the meter's \
         shares are the bytes freed when each is dropped; the rest is what the judge keeps (per pair of ends) plus \
         the metric series and findings the flows added. RSS: `VmRSS` of `observer run --manifests` 2 s after its \
         log says the policies and intents are compiled, with the generated cluster ({} pods, {} namespaces, {} \
         NetworkPolicies, {} Services, {} ReplicaSets, {} nodes; a {:.1} MiB JSON file) and with an empty one.\n",
        number(&flows, "/flows"),
        number(&flows, "/pairs"),
        number(&flows, "/pods"),
        number(&flows, "/policies"),
        size.pods,
        size.namespaces,
        size.policies,
        size.services,
        size.replicasets,
        size.nodes,
        manifest_mib,
    );
    let _ = writeln!(text, "| measure | result | target | status |");
    let _ = writeln!(text, "| --- | ---: | ---: | --- |");
    let _ = writeln!(
        text,
        "| userspace bytes per tracked flow (at {} flows) | {:.0} | ≤ 256 | {} |",
        number(&flows, "/flows"),
        per_flow,
        met(per_flow <= BYTES_PER_FLOW_TARGET)
    );
    let _ = writeln!(text, "| of which flow table | {:.0} | | |", number(&flows, "/table_bytes_per_flow"));
    let _ = writeln!(text, "| of which metrics meter | {:.0} | | |", number(&flows, "/meter_bytes_per_flow"));
    let _ = writeln!(
        text,
        "| of which judge state, metric series, findings | {:.0} | | |",
        number(&flows, "/judge_and_series_bytes_per_flow")
    );
    let _ = writeln!(
        text,
        "| RSS of `observer run` at {} pods (peak while loading) | {:.1} MiB ({:.1} MiB) | | |",
        size.pods,
        mib(rss),
        mib(peak)
    );
    let _ = writeln!(
        text,
        "| RSS with an empty inventory (peak) | {:.1} MiB ({:.1} MiB) | | |",
        mib(empty_rss),
        mib(empty_peak)
    );
    let _ = writeln!(text, "| start to policies compiled at {} pods | {ready:.1} s | | |", size.pods);
    publish("memory", &text, args.no_write)
}
