//! Userspace pipeline throughput on one thread: records per CPU-second
//! through decode → flow table → `build_record` → `enrich` → judge → metrics
//! meter, the stages of `observer run` between the kernel and the flow log;
//! then, apart from that rate, the flow log's JSON of the same records, by
//! the flow log's encoder and, as the baseline, by `serde_json`.
//!
//! In: a generated cluster (10,000 pods, 1,000 namespaces, 1,000
//! NetworkPolicies) and 4,096 pod pairs making short TCP connections, in
//! batches of 1,024 (one poll each). Out: one `pipeline-result {json}` line
//! with the median over rounds of records and ring-buffer events per second
//! of this thread's CPU time, the wall-clock rate, and ns of this thread's
//! CPU time per record per stage and per JSON line. The kernel's own work
//! (ring-buffer reads, map iteration and deletes) and the flow log's write
//! are not in it.
//!
//! With the argument `services`, every other pod pair talks through a
//! Service in front of its server (two ready backends each): half the
//! connections go to a ClusterIP, and the enrich stage asks this network
//! namespace's real conntrack table for each (when it can be opened: root),
//! then falls back to the EndpointSlices, and the judge weighs both
//! backends. The line is then `pipeline-services-result {json}`, with the
//! lookup counts.
//!
//! Run: `cargo bench -p observer --bench pipeline` (`cargo xtask bench
//! pipeline` runs it and writes BENCHMARKS.md); `cargo bench -p observer
//! --bench pipeline -- services` for the Services variant.

mod common;

use std::time::{Duration, Instant};

use common::{Connections, EVENTS_PER_CONNECTION, Pipeline, check, pod_pairs, table_stage};
use observer::{backends::Backends, export::encode, flow::FlowRecord, metrics::services::ServiceCounters};
use observer_tests::manifests::ClusterSize;
use serde_json::json;

const PAIRS: usize = 4096;
const BATCH: usize = 1024;
const ROUNDS: usize = 5;
const ROUND_TIME: Duration = Duration::from_secs(2);

/// CPU time this thread has used.
fn thread_cpu() -> Duration {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid clock id and output pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(u64::try_from(now.tv_sec).unwrap_or(0), u32::try_from(now.tv_nsec).unwrap_or(0))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) { (values[middle - 1] + values[middle]) / 2.0 } else { values[middle] }
}

#[derive(Default, Clone, Copy)]
struct Stages {
    table: Duration,
    build: Duration,
    enrich: Duration,
    judge: Duration,
    meter: Duration,
}

fn main() {
    let size = ClusterSize::BENCH;
    let services = std::env::args().any(|arg| arg == "services");
    let setup_started = Instant::now();
    let pairs = pod_pairs(&size, PAIRS);
    let counters = ServiceCounters::default();
    let (mut pipeline, mut connections) = if services {
        let servers: Vec<usize> = pairs.iter().step_by(2).map(|(_, server)| *server).collect();
        let backends = Backends::open(Vec::new(), counters.clone());
        (Pipeline::with_services(&size, &servers, backends), Connections::through_services(pairs))
    } else {
        (Pipeline::new(&size), Connections::new(pairs))
    };
    eprintln!("pipeline: cluster loaded and policies compiled in {:.1?}", setup_started.elapsed());
    let (mut out, mut delete) = (Vec::new(), Vec::new());
    let mut run_batch = |pipeline: &mut Pipeline, stages: &mut Stages| -> Vec<FlowRecord> {
        let batch = connections.batch(BATCH, true);
        // Stages are timed in this thread's CPU time, as the rate is, so a
        // busy machine does not charge its other work to them.
        let started = thread_cpu();
        table_stage(&mut pipeline.table, &batch, &mut out, &mut delete);
        let built = thread_cpu();
        let mut records = pipeline.build(&out);
        out.clear();
        let enriched = thread_cpu();
        pipeline.enrich(&mut records);
        let judged = thread_cpu();
        pipeline.judge.judge_batch(&mut records);
        let metered = thread_cpu();
        pipeline.meter(&records);
        let done = thread_cpu();
        stages.table += built - started;
        stages.build += enriched - built;
        stages.enrich += judged - enriched;
        stages.judge += metered - judged;
        stages.meter += done - metered;
        records
    };
    // Warm-up: every pair once, so edges and series exist as in a steady state.
    let mut warm = Stages::default();
    for _ in 0..PAIRS.div_ceil(BATCH) * 2 {
        run_batch(&mut pipeline, &mut warm);
    }
    let mut rounds = Vec::new();
    let (mut records_total, mut pods_total, mut denied_total) = (0usize, 0usize, 0usize);
    let lookups_before =
        counters.conntrack_hits.get() + counters.conntrack_misses.get() + counters.conntrack_errors.get();
    for round in 0..ROUNDS {
        let mut stages = Stages::default();
        let (wall_start, cpu_start) = (Instant::now(), thread_cpu());
        let mut records = 0usize;
        while wall_start.elapsed() < ROUND_TIME {
            let batch = run_batch(&mut pipeline, &mut stages);
            let (pods, denied) = check(&batch);
            records += batch.len();
            pods_total += pods;
            denied_total += denied;
        }
        let (wall, cpu) = (wall_start.elapsed(), thread_cpu() - cpu_start);
        records_total += records;
        let per_record = |time: Duration| time.as_nanos() as f64 / records as f64;
        let result = json!({
            "round": round + 1,
            "records": records,
            "cpu_s": cpu.as_secs_f64(),
            "wall_s": wall.as_secs_f64(),
            "records_per_cpu_s": records as f64 / cpu.as_secs_f64(),
            "records_per_wall_s": records as f64 / wall.as_secs_f64(),
            "ns_per_record": {
                "decode_table": per_record(stages.table), "build": per_record(stages.build),
                "enrich": per_record(stages.enrich), "judge": per_record(stages.judge), "meter": per_record(stages.meter),
            },
        });
        eprintln!("pipeline round {}: {result}", round + 1);
        rounds.push(result);
    }
    let lookups = counters.conntrack_hits.get() + counters.conntrack_misses.get() + counters.conntrack_errors.get()
        - lookups_before;
    let json = json_lines(|| run_batch(&mut pipeline, &mut Stages::default()));
    let pick = |path: &str| median(rounds.iter().filter_map(|round| round.pointer(path)?.as_f64()).collect());
    let records_per_cpu_s = pick("/records_per_cpu_s");
    let summary = json!({
        "pods": size.pods, "namespaces": size.namespaces, "policies": size.policies,
        "pairs": PAIRS, "batch": BATCH, "rounds": ROUNDS, "round_seconds": ROUND_TIME.as_secs_f64(),
        "events_per_record": EVENTS_PER_CONNECTION,
        "records_per_cpu_s": records_per_cpu_s,
        "events_per_cpu_s": records_per_cpu_s * EVENTS_PER_CONNECTION as f64,
        "records_per_wall_s": pick("/records_per_wall_s"),
        "cpu_share": pick("/cpu_s") / pick("/wall_s"),
        "ns_per_record": {
            "decode_table": pick("/ns_per_record/decode_table"), "build": pick("/ns_per_record/build"),
            "enrich": pick("/ns_per_record/enrich"), "judge": pick("/ns_per_record/judge"),
            "meter": pick("/ns_per_record/meter"),
        },
        "json": json,
        "both_ends_pods_fraction": pods_total as f64 / records_total.max(1) as f64,
        "not_allowed_fraction": denied_total as f64 / records_total.max(1) as f64,
        "open_flows_after": pipeline.meter.open_flows() + pipeline.table.len(),
        "rounds_detail": rounds,
    });
    if services {
        let mut summary = summary;
        summary["service_flows_fraction"] = json!(0.5);
        summary["conntrack_lookups_per_record"] = json!(lookups as f64 / records_total.max(1) as f64);
        summary["conntrack"] = json!({"hits": counters.conntrack_hits.get(), "misses": counters.conntrack_misses.get(),
            "errors": counters.conntrack_errors.get()});
        summary["backends_by"] = json!({"conntrack": counters.by_conntrack.get(),
            "endpointslices": counters.by_endpointslices.get(), "unknown": counters.unresolved.get()});
        println!("pipeline-services-result {summary}");
    } else {
        println!("pipeline-result {summary}");
    }
}

/// CPU ns per record of the flow log's JSON lines, by its encoder and by
/// `serde_json`, taking turns on the same batches (`batches` makes them)
/// for `ROUNDS` rounds of `ROUND_TIME` each; the medians, and the line size.
fn json_lines(mut batches: impl FnMut() -> Vec<FlowRecord>) -> serde_json::Value {
    let (mut lines, mut expected) = (Vec::new(), Vec::new());
    let (mut encoder_ns, mut serde_ns) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let (mut encoder_time, mut serde_time, mut records) = (Duration::ZERO, Duration::ZERO, 0usize);
        let started = Instant::now();
        while started.elapsed() < ROUND_TIME {
            let batch = batches();
            lines.clear();
            expected.clear();
            let before = thread_cpu();
            encode::lines(&batch, &mut lines);
            let between = thread_cpu();
            for record in &batch {
                serde_json::to_writer(&mut expected, record).expect("serializes");
                expected.push(b'\n');
            }
            serde_time += thread_cpu() - between;
            encoder_time += between - before;
            records += batch.len();
            assert!(lines == expected, "the encoder's lines differ from serde_json's");
        }
        encoder_ns.push(encoder_time.as_nanos() as f64 / records as f64);
        serde_ns.push(serde_time.as_nanos() as f64 / records as f64);
    }
    let (encoder_ns, serde_ns) = (median(encoder_ns), median(serde_ns));
    eprintln!("pipeline: flow log JSON {encoder_ns:.0} ns per record (serde_json {serde_ns:.0})");
    json!({"encoder_ns_per_record": encoder_ns, "serde_json_ns_per_record": serde_ns,
           "bytes_per_line": lines.len() / BATCH})
}
