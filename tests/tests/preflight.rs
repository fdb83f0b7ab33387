//! The preflight on the real kernel: the observer started as root but
//! lacking one capability, or under a seccomp filter refusing `bpf(2)`,
//! stops before loading anything and names what is missing. Root only;
//! one thread.

use std::{collections::HashSet, process::Command};

use observer_tests::{ObserverError, ObserverProcess, caps, root_or_skip, seccomp};
use serde_json::Value;

/// Our programs' ids, to check that a refused start loaded none.
fn our_programs() -> HashSet<u64> {
    let output = Command::new("bpftool").args(["prog", "show", "--json"]).output().expect("bpftool");
    let programs: Vec<Value> = serde_json::from_slice(&output.stdout).expect("bpftool JSON");
    programs
        .iter()
        .filter(|program| {
            ["flow_ingress", "flow_egress", "tcp_state", "tcp_state_btf"]
                .iter()
                .any(|name| program["name"].as_str() == Some(name))
        })
        .filter_map(|program| program["id"].as_u64())
        .collect()
}

/// Starts the observer with `prepare` and returns the end of its log, which
/// must say why it did not start.
fn refused_start(prepare: impl FnOnce(&mut Command)) -> String {
    let before = our_programs();
    // No backtrace after the error: the message must be in the log's tail.
    let prepare = |command: &mut Command| {
        command.env("RUST_BACKTRACE", "0");
        prepare(command);
    };
    let error =
        ObserverProcess::start_with(&["--metrics-addr", "off"], prepare).expect_err("the observer refuses to start");
    assert_eq!(our_programs().difference(&before).count(), 0, "nothing loaded");
    match error {
        ObserverError::Exit { log_tail, .. } => log_tail,
        other => panic!("expected an exit while starting, got {other}"),
    }
}

#[test]
fn each_missing_capability_is_named_by_the_preflight() {
    if !root_or_skip("each_missing_capability_is_named_by_the_preflight") {
        return;
    }
    // CAP_SYS_ADMIN would stand in for CAP_BPF and CAP_PERFMON: drop it too.
    for (capability, name, purpose) in [
        (caps::BPF, "CAP_BPF", "create maps and load programs"),
        (caps::PERFMON, "CAP_PERFMON", "load the tracing programs"),
        (caps::NET_ADMIN, "CAP_NET_ADMIN", "load and attach the cgroup_skb programs"),
    ] {
        let log = refused_start(|command| caps::drop_capabilities(command, &[caps::SYS_ADMIN, capability]));
        let expected = format!("missing capability {name} (to {purpose}");
        assert!(log.contains(&expected), "{expected} in:\n{log}");
        assert!(!log.contains("verifier"), "no verifier log:\n{log}");
    }
    let log = refused_start(|command| caps::drop_capabilities(command, &[caps::SYS_ADMIN, caps::BPF, caps::PERFMON]));
    assert!(log.contains("missing capabilities CAP_BPF (to create maps and load programs), CAP_PERFMON"), "{log}");
}

#[test]
fn a_seccomp_filter_refusing_bpf_is_named_as_such() {
    if !root_or_skip("a_seccomp_filter_refusing_bpf_is_named_as_such") {
        return;
    }
    // BPF_MAP_CREATE, the first command the observer would send.
    let log = refused_start(|command| seccomp::deny_bpf_command(command, 0));
    assert!(log.contains("a seccomp filter refuses bpf(2)"), "{log}");
    assert!(log.contains("deploy/seccomp/flow-observer.json"), "{log}");
    assert!(!log.contains("missing capabilit"), "the capabilities are there:\n{log}");
}
