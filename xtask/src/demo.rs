//! `cargo xtask demo`: the observer on a lab of pods and scripted traffic.
//! Sets up what is missing, builds, brings up the lab, runs `observer run`,
//! drives each kind of flow, shows what the flow log says, and cleans up on
//! exit or Ctrl-C.

use std::{collections::HashMap, net::IpAddr, process::Command, time::Duration};

use anyhow::Context as _;
use observer_tests::{
    Endpoint, INTERNET_HOST_V4, Lab, ObserverProcess, TcpClientOpts, TcpServerOpts, UdpClientOpts, UdpServerOpts,
};
use serde_json::Value;

use crate::{
    command::{run as run_command, step, workspace_root},
    interrupt,
};

/// Runs the demo.
pub fn run() -> anyhow::Result<()> {
    interrupt::install();
    crate::setup::run()?;
    step("building the observer and the lab traffic tool");
    run_command(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "-p",
        "observer",
        "-p",
        "observer-tests",
        "--bins",
    ]))?;
    let target = workspace_root().join("target/debug");
    // SAFETY: single-threaded at this point; the variables are read by children.
    unsafe {
        std::env::set_var(observer_tests::OBSERVER_BIN_ENV, target.join("observer"));
        std::env::set_var(observer_tests::TRAFFIC_BIN_ENV, target.join("lab-traffic"));
    }
    interrupt::check()?;
    step("bringing up the lab: 3 pods and an internet namespace");
    let lab = Lab::builder().pods(3).ipv6(true).internet(true).build().context("bringing up the lab")?;
    for pod in lab.pods() {
        println!("    {:<6} {:<14} cgroup {}", pod.name(), pod.ipv4(), pod.cgroup_path());
    }
    let internet = lab.internet().context("the lab has an internet namespace")?;
    step("starting the observer");
    let observer = ObserverProcess::start(&["--poll-interval", "500ms", "--idle-timeout", "2s"])?;
    println!("    flow log: {}", observer.flow_log().display());
    let (web, api, worker) = (lab.pod(0), lab.pod(1), lab.pod(2));
    let _http = api.tcp_server(api.addr_v4(8080), &TcpServerOpts { reply: 8192, ..Default::default() })?;
    let _dns = api.udp_server(api.addr_v4(5353), &UdpServerOpts { reply: 120, ..Default::default() })?;
    let _https =
        internet.tcp_server((INTERNET_HOST_V4, 443).into(), &TcpServerOpts { reply: 4096, ..Default::default() })?;
    let _v6 = worker
        .tcp_server(worker.addr_v6(9000).context("IPv6")?, &TcpServerOpts { reply: 512, ..Default::default() })?;

    interrupt::check()?;
    step("pod0 → pod1:8080, three TCP connections (1 KiB up, 8 KiB down)");
    web.tcp_client(api.addr_v4(8080), &TcpClientOpts { count: 3, send: 1024, expect: 8192, ..Default::default() })?;
    interrupt::check()?;
    step("pod0 → pod1:9, nothing listens: refused");
    web.tcp_client(api.addr_v4(9), &TcpClientOpts::default())?;
    interrupt::check()?;
    step("pod0 → pod1:8443, pod1 drops the SYN: unanswered (1.5 s)");
    {
        let _listener = api.tcp_server(api.addr_v4(8443), &TcpServerOpts::default())?;
        let _rule = api.drop_inbound_tcp_syn(8443)?;
        web.tcp_client(
            api.addr_v4(8443),
            &TcpClientOpts { timeout: Duration::from_millis(1500), ..Default::default() },
        )?;
    }
    interrupt::check()?;
    step("pod2 → pod1:5353, UDP request and reply, twice");
    worker.udp_client(api.addr_v4(5353), &UdpClientOpts { count: 2, send: 40, expect: 120, ..Default::default() })?;
    interrupt::check()?;
    step("pod2 → 203.0.113.10:443, egress to the internet");
    worker
        .tcp_client((INTERNET_HOST_V4, 443).into(), &TcpClientOpts { send: 300, expect: 4096, ..Default::default() })?;
    interrupt::check()?;
    step("pod0 pings 203.0.113.10 three times");
    web.ping(INTERNET_HOST_V4.into(), 3)?;
    interrupt::check()?;
    step("pod0 → pod2 over IPv6");
    web.tcp_client(
        worker.addr_v6(9000).context("IPv6")?,
        &TcpClientOpts { send: 64, expect: 512, ..Default::default() },
    )?;
    step("waiting for the last flows to end, then stopping the observer");
    std::thread::sleep(Duration::from_millis(2600));
    let run = observer.stop()?;

    let mut names: HashMap<IpAddr, String> = HashMap::new();
    for pod in lab.pods() {
        names.insert(pod.ipv4().into(), pod.name().to_owned());
        if let Some(v6) = pod.ipv6() {
            names.insert(v6.into(), pod.name().to_owned());
        }
    }
    names.insert(INTERNET_HOST_V4.into(), "internet".to_owned());
    let lab_cgroups: Vec<u64> = lab.pods().iter().map(|pod| pod.cgroup_id()).chain([internet.cgroup_id()]).collect();
    print_flows(&run.records, &names, &lab_cgroups);
    println!("\ncapture health: {}", run.health);
    step("cleaning up the lab");
    drop(lab);
    step("done");
    Ok(())
}

fn print_flows(records: &[Value], names: &HashMap<IpAddr, String>, cgroups: &[u64]) {
    let name = |end: &Value| -> String {
        let ip = end["ip"].as_str().unwrap_or("?");
        let who = ip.parse().ok().and_then(|ip: IpAddr| names.get(&ip).cloned()).unwrap_or_else(|| ip.to_owned());
        match end["port"].as_u64() {
            Some(port) => format!("{who}:{port}"),
            None => who,
        }
    };
    println!("\nflows seen from the lab's pods (end records; same-node flows appear once per end):");
    println!(
        "    {:<16} {:<16} {:<7} {:<5} {:<11} {:>12} {:>12}",
        "src", "dst", "proto", "local", "state", "bytes→", "←bytes"
    );
    for record in records.iter().filter(|record| record["event"] == "end") {
        let cgroup = record["cgroup"]["id"].as_u64().unwrap_or(0);
        if !cgroups.contains(&cgroup) || record["protocol"] == "icmpv6" {
            continue;
        }
        let mut src = name(&record["src"]);
        if let Some(port) = record["src"]["port"].as_u64().filter(|port| *port >= 10_000) {
            // Ephemeral ports only clutter the table.
            src = src.trim_end_matches(&format!(":{port}")).to_owned();
        }
        println!(
            "    {:<16} {:<16} {:<7} {:<5} {:<11} {:>12} {:>12}",
            src,
            name(&record["dst"]),
            record["protocol"].as_str().unwrap_or("?"),
            record["local"].as_str().unwrap_or("?"),
            record["state"].as_str().unwrap_or("?"),
            record["to_dst"]["bytes"].as_u64().unwrap_or(0),
            record["to_src"]["bytes"].as_u64().unwrap_or(0),
        );
    }
}
