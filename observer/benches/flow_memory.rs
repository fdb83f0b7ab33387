//! Userspace memory per tracked flow: heap bytes the pipeline of `observer
//! run` holds for each open flow (flow table, judge state, metrics meter, and
//! whatever metric series and findings the flows add).
//!
//! In: a generated cluster (10,000 pods, 1,000 NetworkPolicies) and 100,000
//! established TCP connections over 64 pod pairs, each through decode, the
//! flow table, `build_record`, `enrich`, the judge stage and the meter (a
//! `start` record each), the records then dropped as the flow log would.
//! Out: one `flow-memory-result {json}` line: live heap bytes after minus
//! before (a counting global allocator), per flow, with the table's and the
//! meter's shares (the bytes freed when each is dropped).
//!
//! Run: `cargo bench -p observer --bench flow_memory` (`cargo xtask bench
//! memory` runs it and writes BENCHMARKS.md).

mod common;

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering},
};

use common::{Connections, Pipeline, check, pod_pairs, table_stage};
use observer_tests::manifests::ClusterSize;
use serde_json::json;

const FLOWS: usize = 100_000;
const PAIRS: usize = 64;
const BATCH: usize = 1024;

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only a counter is added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

fn main() {
    let size = ClusterSize::BENCH;
    let mut pipeline = Pipeline::new(&size);
    let mut connections = Connections::new(pod_pairs(&size, PAIRS));
    let before = live();
    // The kernel side: every connection's events, then one poll of the map
    // holding all of them (a poll that missed some would end them as evicted).
    let mut ring = Vec::new();
    let mut snapshot = Vec::new();
    let mut poll_ns = 0;
    for _ in 0..FLOWS.div_ceil(BATCH) {
        let batch = connections.batch(BATCH.min(FLOWS - snapshot.len()), false);
        ring.extend_from_slice(&batch.ring);
        snapshot.extend_from_slice(&batch.snapshot);
        poll_ns = batch.poll_ns;
    }
    let kernel = common::KernelBatch { ring, snapshot, poll_ns };
    let transient = live();
    let (mut out, mut delete) = (Vec::new(), Vec::new());
    table_stage(&mut pipeline.table, &kernel, &mut out, &mut delete);
    assert_eq!(pipeline.table.len(), FLOWS, "every flow tracked");
    assert_eq!(out.len(), FLOWS, "one start record each");
    drop(kernel);
    let (mut pods, mut denied) = (0, 0);
    for emissions in out.chunks(BATCH) {
        let mut records = pipeline.build(emissions);
        pipeline.enrich(&mut records);
        pipeline.judge.judge_batch(&mut records);
        pipeline.meter(&records);
        let (p, d) = check(&records);
        pods += p;
        denied += d;
    }
    drop(out);
    drop(delete);
    assert_eq!(pipeline.meter.open_flows(), FLOWS, "every flow open in the meter");
    let held = live().saturating_sub(before);
    let table_before = live();
    let table = std::mem::replace(&mut pipeline.table, observer::capture::table::FlowTable::new(test_config()));
    drop(table);
    let table_bytes = table_before.saturating_sub(live());
    let meter_before = live();
    let empty = observer::metrics::flows::FlowMeter::new(
        pipeline.metrics.clone(),
        observer::metrics::flows::EdgeOf::new(pipeline.metrics.allowlist().clone()),
    );
    let meter = std::mem::replace(&mut pipeline.meter, empty);
    drop(meter);
    let meter_bytes = meter_before.saturating_sub(live());
    let rest = held.saturating_sub(table_bytes + meter_bytes);
    let result = json!({
        "flows": FLOWS, "pairs": PAIRS, "pods": size.pods, "policies": size.policies,
        "held_bytes": held,
        "bytes_per_flow": held as f64 / FLOWS as f64,
        "table_bytes_per_flow": table_bytes as f64 / FLOWS as f64,
        "meter_bytes_per_flow": meter_bytes as f64 / FLOWS as f64,
        "judge_and_series_bytes_per_flow": rest as f64 / FLOWS as f64,
        "kernel_side_input_bytes": transient - before,
        "both_ends_pods_fraction": pods as f64 / FLOWS as f64,
        "not_allowed_fraction": denied as f64 / FLOWS as f64,
    });
    println!("flow-memory-result {result}");
}

fn test_config() -> observer::capture::table::TableConfig {
    observer::capture::table::TableConfig {
        update_interval_ns: 1,
        idle_timeout_ns: 1,
        tcp_idle_timeout_ns: 1,
        close_linger_ns: 1,
        pending_timeout_ns: 1,
    }
}
