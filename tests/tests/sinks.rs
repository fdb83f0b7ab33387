//! End-to-end: the log files and the HTTP server under failing and hostile
//! conditions. A log that cannot be opened stops the start; a full disk is
//! counted, reported by `/healthz` and recovered from without a cut line;
//! SIGHUP reopens the files; rotation bounds them; idle HTTP clients cannot
//! take the observer's descriptors. Root only; run with one thread (`cargo
//! xtask test`), holding the kernel lock when another lab may run.

use std::{
    fs,
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use observer_tests::{
    Endpoint as _, Lab, ObserverError, ObserverProcess, Pod, Proc, TcpClientOpts, TcpServerOpts, Tmpfs, http_get,
    root_or_skip,
};
use serde_json::Value;

/// Poll often so the tests do not wait long for records.
const FAST: [&str; 2] = ["--poll-interval", "200ms"];
const PORT: u16 = 8090;

fn lab() -> Lab {
    Lab::builder().pods(2).ipv6(false).internet(false).build().expect("lab")
}

/// `count` connections from pod 0 to the server on pod 1.
fn connect(lab: &Lab, count: u64) {
    let report = lab
        .pod(0)
        .tcp_client(lab.pod(1).addr_v4(PORT), &TcpClientOpts { count, send: 10, expect: 10, ..Default::default() })
        .expect("client");
    assert_eq!(report.complete, count, "{report:?}");
}

fn server(pod: &Pod) -> Proc {
    pod.tcp_server(pod.addr_v4(PORT), &TcpServerOpts { reply: 10, ..Default::default() }).expect("server")
}

/// Every line of `path`, each of which must be whole JSON.
fn lines(path: &Path) -> Vec<Value> {
    let text = fs::read_to_string(path).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "{} ends in a cut line", path.display());
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|error| panic!("cut line in {}: {line:?}: {error}", path.display()))
        })
        .collect()
}

/// Client-side `end` records of connections from pod 0 to the server.
fn client_ends(records: &[Value], lab: &Lab) -> Vec<u64> {
    let target = lab.pod(1).addr_v4(PORT);
    records
        .iter()
        .filter(|record| record["event"] == "end" && record["cgroup"]["id"].as_u64() == Some(lab.pod(0).cgroup_id()))
        .filter(|record| record["dst"]["ip"].as_str() == Some(&target.ip().to_string()))
        .filter_map(|record| record["src"]["port"].as_u64())
        .collect()
}

/// The value of the sample `series` (name and labels) in `/metrics`.
fn sample(addr: SocketAddr, series: &str) -> Option<f64> {
    let (_, body) = http_get(addr, "/metrics").ok()?;
    body.lines().find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
}

/// The sum of every sample in `/metrics` whose series starts with `prefix`
/// (a family's series over one label's values).
fn sample_sum(addr: SocketAddr, prefix: &str) -> f64 {
    let Ok((_, body)) = http_get(addr, "/metrics") else { return 0.0 };
    body.lines()
        .filter(|line| line.starts_with(prefix))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn start_fails(args: &[&str]) -> String {
    match ObserverProcess::start(args) {
        Ok(process) => {
            drop(process);
            panic!("the observer started with {args:?}");
        }
        Err(error @ ObserverError::Exit { .. }) => error.to_string(),
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn a_log_in_a_missing_directory_stops_the_start() {
    if !root_or_skip("a_log_in_a_missing_directory_stops_the_start") {
        return;
    }
    let dir = std::env::temp_dir().join(format!("observer-sinks-missing-{}", std::process::id()));
    for (flag, name) in [("--flow-log", "flow log"), ("--findings-log", "findings log"), ("--dns-log", "DNS log")] {
        let path = dir.join("nowhere").join("log.jsonl");
        let path_text = path.display().to_string();
        let error = start_fails(&[flag, &path_text]);
        assert!(error.contains("exited with exit status: 1 while starting"), "{flag}: {error}");
        assert!(
            error.contains(&format!(
                "cannot open the {name} {path_text}: directory {} does not exist",
                dir.join("nowhere").display()
            )),
            "{flag}: {error}"
        );
        assert!(!error.contains("kernel programs attached"), "{flag}: refused before attaching: {error}");
    }
}

#[test]
fn a_read_only_log_stops_the_start() {
    if !root_or_skip("a_read_only_log_stops_the_start") {
        return;
    }
    let tmpfs = Tmpfs::mount(64 << 10).expect("tmpfs");
    for file in ["flows.jsonl", "findings.jsonl", "dns.jsonl"] {
        fs::write(tmpfs.path().join(file), "{}\n").expect("write");
    }
    tmpfs.remount_read_only().expect("read-only");
    for (flag, name, file) in [
        ("--flow-log", "flow log", "flows.jsonl"),
        ("--findings-log", "findings log", "findings.jsonl"),
        ("--dns-log", "DNS log", "dns.jsonl"),
    ] {
        let path = tmpfs.path().join(file).display().to_string();
        let error = start_fails(&[flag, &path]);
        assert!(error.contains("exited with exit status: 1 while starting"), "{flag}: {error}");
        assert!(
            error.contains(&format!("cannot open the {name} {path} for appending: Read-only file system")),
            "{flag}: {error}"
        );
    }
}

/// Connects in rounds until `done` (at most 30 s); returns whether it came.
fn connect_until(lab: &Lab, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        connect(lab, 3);
        std::thread::sleep(Duration::from_millis(300));
    }
    done()
}

#[test]
fn a_full_disk_is_counted_reported_and_recovered_from_without_a_cut_line() {
    if !root_or_skip("a_full_disk_is_counted_reported_and_recovered_from_without_a_cut_line") {
        return;
    }
    let lab = lab();
    let _server = server(lab.pod(1));
    let tmpfs = Tmpfs::mount(64 << 10).expect("tmpfs");
    let flow_log = tmpfs.path().join("flows.jsonl");
    let flow_log_text = flow_log.display().to_string();
    let observer = ObserverProcess::start(&[FAST[0], FAST[1], "--flow-log", &flow_log_text]).expect("observer starts");
    let addr = observer.metrics_addr().expect("metrics address");
    connect(&lab, 3);
    assert!(observer.wait_for_records(Duration::from_secs(30), |records| client_ends(records, &lab).len() == 3));
    assert_eq!(http_get(addr, "/healthz").expect("healthz").0, 200);
    let filler = tmpfs.fill("filler").expect("fill");

    let dropped = || sample_sum(addr, "flow_observer_records_dropped_total{stage=\"export\",");
    assert!(connect_until(&lab, || dropped() > 0.0), "no export drop counted on a full disk");
    let (status, body) = http_get(addr, "/healthz").expect("healthz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&format!("flow_log {flow_log_text} failing")), "{body}");
    assert!(body.contains("No space left on device"), "{body}");
    assert_eq!(sample(addr, "flow_observer_sink_up{sink=\"flow_log\"}"), Some(0.0));
    let log = observer.log();
    assert_eq!(
        log.matches("No space left on device").count(),
        1,
        "the reason logged once for its kind of error:\n{log}"
    );

    fs::remove_file(&filler).expect("free the space");
    let before = client_ends(&lines_so_far(&flow_log), &lab).len();
    assert!(
        connect_until(&lab, || http_get(addr, "/healthz").is_ok_and(|(status, _)| status == 200)),
        "writing did not resume once space returned"
    );
    assert_eq!(sample(addr, "flow_observer_sink_up{sink=\"flow_log\"}"), Some(1.0));
    connect(&lab, 3);
    assert!(
        observer.wait_for_records(Duration::from_secs(30), |records| client_ends(records, &lab).len() >= before + 3)
    );
    let written = sample(addr, "flow_observer_sink_lines_written_total{sink=\"flow_log\"}").expect("written");
    let dropped = dropped();
    observer.stop().expect("observer stops cleanly");
    let records = lines(&flow_log);
    assert!(records.len() as f64 >= written, "{} lines in the file, {written} counted written", records.len());
    assert!(dropped > 0.0);
}

/// The lines of a file being written: the last one may still wait for its rest.
fn lines_so_far(path: &Path) -> Vec<Value> {
    fs::read_to_string(path).unwrap_or_default().lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
}

#[test]
fn sighup_reopens_the_flow_log_without_losing_a_record() {
    if !root_or_skip("sighup_reopens_the_flow_log_without_losing_a_record") {
        return;
    }
    let lab = lab();
    let _server = server(lab.pod(1));
    // Outside the harness's folder, which goes with the process.
    let dir = Tmpfs::mount(16 << 20).expect("tmpfs");
    let flow_log = dir.path().join("flows.jsonl");
    let flow_log_text = flow_log.display().to_string();
    let mut observer =
        ObserverProcess::start(&[FAST[0], FAST[1], "--flow-log", &flow_log_text]).expect("observer starts");
    connect(&lab, 5);
    assert!(observer.wait_for_records(Duration::from_secs(30), |records| client_ends(records, &lab).len() == 5));
    let moved = PathBuf::from(format!("{}.moved", flow_log.display()));
    fs::rename(&flow_log, &moved).expect("move the log away");
    observer.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(500));
    assert!(observer.is_running(), "SIGHUP ended the observer:\n{}", observer.log());
    connect(&lab, 5);
    assert!(
        observer.wait_for_records(Duration::from_secs(30), |records| client_ends(records, &lab).len() == 5),
        "the new file did not get the next records"
    );
    let run = observer.stop().expect("exits 0 on SIGTERM after SIGHUP");
    let old = client_ends(&lines(&moved), &lab);
    let new = client_ends(&lines(&flow_log), &lab);
    assert_eq!((old.len(), new.len()), (5, 5), "old {old:?}, new {new:?}");
    let mut ports: Vec<u64> = old.iter().chain(&new).copied().collect();
    ports.sort_unstable();
    ports.dedup();
    assert_eq!(ports.len(), 10, "each connection's end once, in one of the files");
    assert!(run.log.contains("SIGHUP: log files are reopened"), "{}", run.log);
}

#[test]
fn the_flow_log_rotates_at_its_size_and_keeps_max_files() {
    if !root_or_skip("the_flow_log_rotates_at_its_size_and_keeps_max_files") {
        return;
    }
    let lab = lab();
    let _server = server(lab.pod(1));
    let dir = Tmpfs::mount(16 << 20).expect("tmpfs");
    let flow_log = dir.path().join("flows.jsonl");
    let flow_log_text = flow_log.display().to_string();
    let args =
        [FAST[0], FAST[1], "--flow-log", &flow_log_text, "--flow-log-max-size", "8KiB", "--flow-log-max-files", "3"];
    let observer = ObserverProcess::start(&args).expect("observer starts");
    let addr = observer.metrics_addr().expect("metrics address");
    let rotations = || sample(addr, "flow_observer_sink_rotations_total{sink=\"flow_log\"}").unwrap_or(0.0);
    assert!(connect_until(&lab, || rotations() >= 5.0), "fewer than 5 rotations");
    observer.stop().expect("observer stops cleanly");
    let rotated = |n: u32| PathBuf::from(format!("{}.{n}", flow_log.display()));
    assert!(!rotated(3).exists(), "only 3 files are kept");
    for file in [flow_log.clone(), rotated(1), rotated(2)] {
        let size = fs::metadata(&file).unwrap_or_else(|error| panic!("{}: {error}", file.display())).len();
        assert!(size <= 8192, "{} holds {size} bytes", file.display());
        assert!(!lines(&file).is_empty(), "{} is empty", file.display());
    }
    // Rotated files are full but for less than one record.
    for file in [rotated(1), rotated(2)] {
        assert!(fs::metadata(&file).expect("meta").len() > 8192 - 2048, "{}", file.display());
    }
}

fn descriptors(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(Iterator::count).unwrap_or(0)
}

#[test]
fn idle_http_clients_cannot_take_the_descriptors() {
    if !root_or_skip("idle_http_clients_cannot_take_the_descriptors") {
        return;
    }
    let args = [FAST[0], FAST[1], "--metrics-max-connections", "16", "--metrics-idle-timeout", "2s"];
    let observer = ObserverProcess::start(&args).expect("observer starts");
    let addr = observer.metrics_addr().expect("metrics address");
    assert_eq!(http_get(addr, "/healthz").expect("healthz").0, 200);
    let before = descriptors(observer.pid());
    let idle: Vec<TcpStream> =
        (0..100).map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(500));
    let held = descriptors(observer.pid());
    assert!(held <= before + 16, "{before} descriptors before 100 idle clients, {held} with them");
    // Behind 84 waiting idle clients, 16 served every 2 s: answered within
    // about 12 s, never refused.
    let started = Instant::now();
    let (status, body) = http_get(addr, "/metrics").expect("a scrape behind idle clients");
    assert_eq!(status, 200);
    assert!(body.contains("flow_observer_build_info"));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(descriptors(observer.pid()) <= before + 16);
    drop(idle);
    observer.stop().expect("observer stops cleanly");
}
