//! End-to-end: no record goes uncounted. A flow log on a FIFO whose reader
//! drains slowly while a burst of 20,000 connections runs makes the
//! pipeline drop; every flow that ended must then have its `end` record in
//! the flow log or counted as dropped by a stage, exactly. Root only; run
//! with one thread, holding the kernel lock when another lab may run.

use std::{
    ffi::CString,
    fs,
    io::Read as _,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use observer_tests::{BurstOpts, Endpoint as _, Lab, ObserverProcess, TcpServerOpts, root_or_skip};
use serde_json::Value;

/// Reads the FIFO until its writer closes it: slowly (16 KiB every 20 ms,
/// under 1 MB/s) while `slow` is set, then as fast as it can. Returns the
/// `end` lines read and the lines read in all.
fn read_fifo(path: &Path, slow: &AtomicBool) -> (u64, u64) {
    // Blocks until the observer opens the FIFO for writing.
    let mut fifo = fs::File::open(path).expect("open the FIFO for reading");
    let (mut ends, mut lines) = (0u64, 0u64);
    let mut pending = Vec::new();
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let read = fifo.read(&mut buf).expect("read the FIFO");
        if read == 0 {
            break;
        }
        pending.extend_from_slice(&buf[..read]);
        let whole = pending.iter().rposition(|byte| *byte == b'\n').map_or(0, |at| at + 1);
        for line in pending[..whole].split(|byte| *byte == b'\n').filter(|line| !line.is_empty()) {
            let record: Value = serde_json::from_slice(line).expect("every line is whole JSON");
            lines += 1;
            if record["event"] == "end" {
                ends += 1;
            }
        }
        pending.drain(..whole);
        if slow.load(Ordering::Relaxed) {
            thread::sleep(Duration::from_millis(20));
        }
    }
    assert!(pending.is_empty(), "the flow log ended in a cut line");
    (ends, lines)
}

/// The sum of every sample of `/metrics` text whose series starts with `prefix`.
fn sum_samples(metrics: &str, prefix: &str) -> u64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|value| value as u64)
        .sum()
}

#[test]
fn every_ended_flow_is_written_or_counted_dropped_under_a_slow_reader() {
    if !root_or_skip("every_ended_flow_is_written_or_counted_dropped_under_a_slow_reader") {
        return;
    }
    let lab = Lab::builder().pods(2).ipv6(false).internet(false).build().expect("lab");
    let (client, server) = (lab.pod(0), lab.pod(1));
    let target = server.addr_v4(8083);
    let _listener = server.tcp_server(target, &TcpServerOpts::default()).expect("server");
    let dir = tempfile::tempdir().expect("tempdir");
    let fifo = dir.path().join("flows.fifo");
    let path = CString::new(fifo.to_str().expect("utf-8")).expect("path");
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0, "mkfifo");
    let slow = Arc::new(AtomicBool::new(true));
    let reader = {
        let (fifo, slow) = (fifo.clone(), Arc::clone(&slow));
        thread::spawn(move || read_fifo(&fifo, &slow))
    };
    let fifo_text = fifo.display().to_string();
    // A short queue between stages, so that a reader behind by a few
    // polls makes the pipeline drop rather than buffer minutes of records.
    let observer =
        ObserverProcess::start(&["--poll-interval", "200ms", "--flow-log", &fifo_text, "--stage-queue-batches", "2"])
            .expect("observer starts");
    let burst = client
        .burst(target, &BurstOpts { count: 20_000, threads: 4, send: 16, timeout: Duration::from_secs(5) })
        .expect("burst");
    assert_eq!(burst.attempted, 20_000, "{burst:?}");
    // Every connection of the burst has ended in the kernel's view once
    // capture has seen its close; a few polls more and all are handed on.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let dropped_end = |metrics: &str| sum_samples(metrics, "flow_observer_records_dropped_total{") > 0;
    let metrics = loop {
        let (_, metrics) = observer.get("/metrics").expect("metrics");
        if dropped_end(&metrics) || std::time::Instant::now() > deadline {
            break metrics;
        }
        thread::sleep(Duration::from_millis(200));
    };
    assert!(dropped_end(&metrics), "the slow reader made no stage drop:\n{metrics}");
    let (status, _) = observer.get("/healthz").expect("healthz");
    assert!(status == 200 || status == 503, "{status}");
    slow.store(false, Ordering::Relaxed);
    let run = observer.stop().expect("observer stops cleanly");
    let (ends_written, lines) = reader.join().expect("reader");
    let flows_ended = run.health["flows_ended"].as_u64().unwrap_or_else(|| panic!("flows_ended in {}", run.health));
    let closed = run
        .log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|line| line["message"] == "flow log closed; kernel programs detached")
        .unwrap_or_else(|| panic!("no stop line in {}", run.log));
    let drops: Value = serde_json::from_str(closed["records_dropped"].as_str().expect("records_dropped"))
        .unwrap_or_else(|error| panic!("records_dropped in {closed}: {error}"));
    let ends_dropped: u64 =
        ["capture", "enrich", "judge", "export"].iter().map(|stage| drops[stage]["end"].as_u64().expect("count")).sum();
    assert!(ends_dropped > 0, "nothing dropped: {drops}");
    assert!(
        flows_ended >= 40_000,
        "both ends of 20,000 connections are on this node: {flows_ended} flows ended; health {}",
        run.health
    );
    assert_eq!(
        flows_ended,
        ends_written + ends_dropped,
        "flows ended {flows_ended} != end records written {ends_written} + counted dropped {ends_dropped} \
         ({lines} lines read; drops {drops}; health {})",
        run.health
    );
    // What /metrics said while running is part of the final count.
    let scraped_end = |stage: &str| {
        sum_samples(&metrics, &format!("flow_observer_records_dropped_total{{stage=\"{stage}\",event=\"end\"}}"))
    };
    for stage in ["capture", "enrich", "judge", "export"] {
        assert!(scraped_end(stage) <= drops[stage]["end"].as_u64().expect("count"), "{stage}: {drops}");
    }
}
