//! The governance loop offline, end to end on the real kernel: lab traffic
//! recorded by `observer run`, its records split into two nodes' logs (one
//! of them gzipped), then replayed by `observer policy simulate` against a
//! proposed change, with exact assertions on what would break and what
//! would be newly allowed; bad input counted with file:line. Root only; one
//! thread.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use observer_tests::{
    Endpoint, INTERNET_HOST_V4, Lab, ObserverProcess, Pod, TcpClientOpts, TcpServerOpts,
    manifests::{self, PodSpec},
    observer_binary, root_or_skip,
};
use serde_json::{Value, json};

fn spec<'a>(pod: &'a Pod, name: &'a str, app: &'a str, owner: (&'a str, &'a str)) -> PodSpec<'a> {
    PodSpec { pod, namespace: "shop", name, labels: vec![("app", app)], owner: Some(owner), ports: vec![] }
}

fn ingress(name: &str, app: &str, from: &[&str], port: u16) -> Value {
    let peers: Vec<Value> = from.iter().map(|from| json!({"podSelector": {"matchLabels": {"app": from}}})).collect();
    json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
           "metadata": {"name": name, "namespace": "shop", "resourceVersion": "3"},
           "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
                    "ingress": [{"from": peers, "ports": [{"port": port}]}]}})
}

/// Runs the observer binary with `args`.
fn observer(args: &[&str]) -> Output {
    Command::new(observer_binary().expect("observer binary"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("observer runs")
}

fn json_of(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
        panic!(
            "stdout is not JSON ({error}): {}\nstderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Writes records as JSON lines, `gzip` compressing when the name ends in `.gz`.
fn write_log(path: &Path, records: &[Value]) {
    let mut text = Vec::new();
    for record in records {
        serde_json::to_writer(&mut text, record).expect("record");
        text.push(b'\n');
    }
    if path.extension().is_some_and(|ext| ext == "gz") {
        let mut gzip =
            Command::new("gzip").arg("-c").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("gzip");
        gzip.stdin.take().expect("stdin").write_all(&text).expect("gzip input");
        let out = gzip.wait_with_output().expect("gzip output");
        assert!(out.status.success());
        std::fs::write(path, out.stdout).expect("write gz");
    } else {
        std::fs::write(path, text).expect("write log");
    }
}

/// The edges of a simulation list as `src -> dst:port (flows) before/after`.
fn changes(list: &Value) -> Vec<String> {
    list.as_array()
        .expect("list")
        .iter()
        .map(|edge| {
            let end = |end: &Value| match end["pod"].as_str() {
                Some(pod) => format!(
                    "{}/{}({})",
                    end["namespace"].as_str().unwrap_or("?"),
                    pod,
                    end["workload"]["name"].as_str().unwrap_or("?")
                ),
                None => end["ip"].as_str().unwrap_or("?").to_owned(),
            };
            format!(
                "{} -> {}:{}/{} flows={} {}{} -> {}{}",
                end(&edge["src"]),
                end(&edge["dst"]),
                edge["port"],
                edge["protocol"].as_str().unwrap_or("?"),
                edge["flows"],
                edge["before"]["verdict"].as_str().unwrap_or("?"),
                edge["before"]["policies"],
                edge["after"]["verdict"].as_str().unwrap_or("?"),
                edge["after"]["policies"],
            )
        })
        .collect()
}

struct Recorded {
    dir: PathBuf,
    logs: Vec<String>,
    manifests: String,
}

impl Drop for Recorded {
    fn drop(&mut self) {
        // Removed even when an assertion failed.
        if std::env::var_os("KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Records the lab's traffic once and splits it into two nodes' logs.
fn record(lab: &Lab) -> Recorded {
    let (web, api, db) = (lab.pod(0), lab.pod(1), lab.pod(2));
    let dir = std::env::temp_dir().join(format!("policy-replay-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("manifests")).expect("dir");
    manifests::write_list(
        &dir.join("manifests/shop.json"),
        vec![
            manifests::namespace("shop", &[]),
            manifests::workload("ReplicaSet", "shop", "web-7d9f", Some(("Deployment", "web"))),
            manifests::workload("ReplicaSet", "shop", "api-5c8d", Some(("Deployment", "api"))),
            manifests::pod(&spec(web, "web-7d9f-a", "web", ("ReplicaSet", "web-7d9f"))),
            manifests::pod(&spec(api, "api-5c8d-b", "api", ("ReplicaSet", "api-5c8d"))),
            manifests::pod(&spec(db, "db-0", "db", ("StatefulSet", "db"))),
            ingress("api-ingress", "api", &["web"], 8080),
            ingress("db-ingress", "db", &["api"], 5432),
        ],
    )
    .expect("manifests");
    let internet = lab.internet().expect("internet");
    let _api = api.tcp_server(api.addr_v4(8080), &TcpServerOpts { reply: 100, ..Default::default() });
    let _db = db.tcp_server(db.addr_v4(5432), &TcpServerOpts { reply: 100, ..Default::default() });
    let _world =
        internet.tcp_server((INTERNET_HOST_V4, 443).into(), &TcpServerOpts { reply: 100, ..Default::default() });
    let manifests_arg = dir.join("manifests").display().to_string();
    let run = ObserverProcess::start(&["--poll-interval", "200ms", "--manifests", &manifests_arg]).expect("observer");
    let one = TcpClientOpts { send: 10, expect: 100, ..Default::default() };
    let times = |count| TcpClientOpts { count, ..one.clone() };
    assert_eq!(web.tcp_client(api.addr_v4(8080), &times(3)).expect("web->api").complete, 3);
    assert_eq!(api.tcp_client(db.addr_v4(5432), &times(2)).expect("api->db").complete, 2);
    assert_eq!(web.tcp_client(db.addr_v4(5432), &times(1)).expect("web->db").complete, 1);
    assert_eq!(web.tcp_client((INTERNET_HOST_V4, 443).into(), &times(1)).expect("web->world").complete, 1);
    let ends = |records: &[Value], local: &str, port: u64| {
        records.iter().filter(|r| r["event"] == "end" && r["local"] == local && r["dst"]["port"] == port).count()
    };
    let done = run.wait_for_records(std::time::Duration::from_secs(30), |records| {
        ends(records, "src", 8080) == 3
            && ends(records, "dst", 8080) == 3
            && ends(records, "src", 5432) == 3
            && ends(records, "dst", 5432) == 3
            && ends(records, "src", 443) == 1
    });
    assert!(done, "every connection ended at both ends");
    let run = run.stop().expect("observer stops");
    // Two nodes: the initiators' records on one, the responders' on the other.
    let node = |local: &str, name: &str| -> Vec<Value> {
        run.records
            .iter()
            // The lab's own noise (the host's IPv6 multicast listener reports) is no pod's.
            .filter(|record| {
                record["local"] == local && (record["src"]["kind"] == "pod" || record["dst"]["kind"] == "pod")
            })
            .map(|record| {
                let mut record = record.clone();
                record["node"] = json!(name);
                record
            })
            .collect()
    };
    let (a, b) = (dir.join("node-a.jsonl.gz"), dir.join("node-b.jsonl"));
    write_log(&a, &node("src", "node-a"));
    write_log(&b, &node("dst", "node-b"));
    Recorded { logs: vec![a.display().to_string(), b.display().to_string()], manifests: manifests_arg, dir }
}

#[test]
fn simulate_names_what_a_policy_change_breaks_and_allows() {
    if !root_or_skip("simulate_names_what_a_policy_change_breaks_and_allows") {
        return;
    }
    let lab = Lab::builder().pods(3).ipv6(false).internet(true).build().expect("lab");
    let recorded = record(&lab);
    let proposed = recorded.dir.join("proposed.json");
    manifests::write_list(
        &proposed,
        vec![ingress("api-ingress", "api", &["web"], 9090), ingress("db-ingress", "db", &["api", "web"], 5432)],
    )
    .expect("proposed");
    let proposed_arg = proposed.display().to_string();
    let mut args = vec!["policy", "simulate", "--manifests", &recorded.manifests, "--proposed", &proposed_arg];
    args.push("--flows");
    args.extend(recorded.logs.iter().map(String::as_str));
    let mut json_args = args.clone();
    json_args.extend(["--output", "json"]);

    let output = observer(&json_args);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let simulation = json_of(&output);
    // web->api 3, api->db 2, web->db 1, web->world 1: each once, though the
    // pod-to-pod ones are in both nodes' logs.
    assert_eq!(simulation["flows"], 7, "{simulation:#}");
    assert_eq!(simulation["edges"], 4);
    assert_eq!(simulation["unchanged"], 2);
    assert_eq!(
        changes(&simulation["would_break"]),
        vec![
            r#"shop/web-7d9f-a(web) -> shop/api-5c8d-b(api):8080/tcp flows=3 allowed["shop/api-ingress"] -> enforcement-gap["shop/api-ingress"]"#
        ]
    );
    assert_eq!(
        changes(&simulation["newly_allowed"]),
        vec![
            r#"shop/web-7d9f-a(web) -> shop/db-0(db):5432/tcp flows=1 enforcement-gap["shop/db-ingress"] -> allowed["shop/db-ingress"]"#
        ]
    );
    let broken = &simulation["would_break"][0];
    assert_eq!(broken["src"]["workload"], json!({"kind": "Deployment", "name": "web"}));
    assert!(broken["first_seen"].as_str() <= broken["last_seen"].as_str());
    assert_eq!(simulation["gone_pods"], json!([]));
    assert_eq!(simulation["input"]["counts"], json!({}));

    // --fail-on-break gates the change; text output names the edge.
    let mut gate = args.clone();
    gate.push("--fail-on-break");
    let output = observer(&gate);
    assert_eq!(output.status.code(), Some(1), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.starts_with("judged 7 flows in 4 edges: 2 unchanged, 1 would break, 1 newly allowed\n"), "{text}");
    assert!(
        text.contains("shop/web-7d9f-a (Deployment/web) -> shop/api-5c8d-b (Deployment/api) 8080/tcp: 3 flows"),
        "{text}"
    );

    // Removing db-ingress allows web->db; nothing breaks, status 0 even with --fail-on-break.
    let mut remove = vec!["policy", "simulate", "--manifests", &recorded.manifests, "--remove", "shop/db-ingress"];
    remove.extend(["--output", "json", "--fail-on-break", "--flows"]);
    remove.extend(recorded.logs.iter().map(String::as_str));
    let output = observer(&remove);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let simulation = json_of(&output);
    assert_eq!(simulation["would_break"], json!([]));
    assert_eq!(
        changes(&simulation["newly_allowed"]),
        vec![
            r#"shop/web-7d9f-a(web) -> shop/db-0(db):5432/tcp flows=1 enforcement-gap["shop/db-ingress"] -> allowed[]"#
        ]
    );

    // A pod gone from the manifests is judged by its records' labels, and named.
    let shrunk = recorded.dir.join("shrunk");
    std::fs::create_dir_all(&shrunk).expect("dir");
    let full: Value =
        serde_json::from_slice(&std::fs::read(recorded.dir.join("manifests/shop.json")).expect("read")).expect("json");
    let items: Vec<Value> = full["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter(|item| item["metadata"]["name"] != "db-0")
        .cloned()
        .collect();
    manifests::write_list(&shrunk.join("shop.json"), items).expect("write");
    let shrunk_arg = shrunk.display().to_string();
    let mut gone = json_args.clone();
    gone[3] = &shrunk_arg;
    let output = observer(&gone);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let simulation = json_of(&output);
    assert_eq!(simulation["gone_pods"], json!(["shop/db-0"]));
    assert_eq!(simulation["newly_allowed"][0]["dst"]["gone"], true);
    assert_eq!(simulation["flows"], 7);

    // Bad input: counted with file:line, the rest used.
    let bad = recorded.dir.join("bad.jsonl");
    std::fs::write(&bad, "not json\n{\"kind\":\"spike\"}\n\n").expect("bad");
    let truncated = recorded.dir.join("truncated.jsonl.gz");
    let whole = std::fs::read(&recorded.logs[0]).expect("gz");
    std::fs::write(&truncated, &whole[..whole.len() / 2]).expect("truncated");
    let (bad_arg, truncated_arg) = (bad.display().to_string(), truncated.display().to_string());
    let mut with_bad = args.clone();
    with_bad.extend([bad_arg.as_str(), truncated_arg.as_str(), "--output", "json"]);
    let output = observer(&with_bad);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("{bad_arg}:1: malformed")), "{stderr}");
    assert!(stderr.contains(&format!("{bad_arg}:2: other-schema")), "{stderr}");
    assert!(stderr.contains(&format!("{truncated_arg}:")) && stderr.contains("truncated"), "{stderr}");
    let simulation = json_of(&output);
    assert_eq!(simulation["input"]["counts"]["malformed"], 1);
    assert_eq!(simulation["input"]["counts"]["other-schema"], 1);
    assert_eq!(simulation["input"]["counts"]["truncated"], 1);
    assert_eq!(simulation["flows"], 7, "the truncated copy's flows were already counted");

    // A proposal that does not validate stops the simulation, with file:line.
    let invalid = recorded.dir.join("invalid.yaml");
    std::fs::write(
        &invalid,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: ok, namespace: shop}\nspec: {podSelector: {}}\n---\n\
         apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: bad, namespace: shop}\n\
         spec: {podSelector: {}, ingress: [{ports: [{port: 70000}]}]}\n",
    )
    .expect("invalid");
    let invalid_arg = invalid.display().to_string();
    let mut refused = args.clone();
    refused[5] = &invalid_arg;
    let output = observer(&refused);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("{invalid_arg}:6: NetworkPolicy shop/bad: spec.ingress[0].ports[0].port")),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "nothing simulated");

    // The evidence record of the same traffic: which rule allowed what, and the gap.
    let mut report_args = vec!["report", "--manifests", &recorded.manifests, "--format", "json", "--flows"];
    report_args.extend(recorded.logs.iter().map(String::as_str));
    let output = observer(&report_args);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let report = json_of(&output);
    let policy = |name: &str| {
        report["policies"].as_array().expect("policies").iter().find(|p| p["name"] == name).cloned().expect(name)
    };
    let (api, db) = (policy("api-ingress"), policy("db-ingress"));
    assert_eq!(
        api["selected"],
        json!([{"namespace": "shop", "pod": "api-5c8d-b", "workload": {"kind": "Deployment", "name": "api"}}])
    );
    assert_eq!((api["rules"][0]["flows"].clone(), api["rules"][0]["unused"].clone()), (json!(3), json!(false)));
    assert_eq!((db["rules"][0]["flows"].clone(), db["allowed"]["flows"].clone()), (json!(2), json!(2)));
    assert_eq!(
        (db["enforcement_gaps"]["flows"].clone(), db["enforcement_gaps"]["edges"].clone()),
        (json!(1), json!(1))
    );
    assert_eq!(report["coverage"]["flows"], 7);
    assert_eq!(report["coverage"]["complete"], true, "{:#}", report["coverage"]);
    assert_eq!(report["coverage"]["nodes"].as_object().map(|nodes| nodes.len()), Some(2));

    // Advice from the same traffic: one policy per workload; added to the
    // current policies it breaks nothing recorded and allows nothing new
    // (web -> db, the gap, stays denied), and it names the gap it refused.
    let advice = recorded.dir.join("advice");
    let advice_arg = advice.display().to_string();
    let mut advise_args =
        vec!["policy", "advise", "--manifests", &recorded.manifests, "--output-dir", &advice_arg, "--flows"];
    advise_args.extend(recorded.logs.iter().map(String::as_str));
    let output = observer(&advise_args);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("not allowed by the advice (it happened, but is not allowed now): shop/web-7d9f-a (Deployment/web) -> shop/db-0 (StatefulSet/db) 5432/tcp: enforcement-gap (1 flows)"),
        "{stderr}"
    );
    let mut files: Vec<String> = std::fs::read_dir(&advice)
        .expect("advice dir")
        .map(|entry| entry.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, vec!["shop.api.yaml", "shop.db.yaml", "shop.web.yaml"]);
    let web = std::fs::read_to_string(advice.join("shop.web.yaml")).expect("web advice");
    assert!(web.contains("cidr: 203.0.113.10/32"), "{web}");
    let mut replay = vec!["policy", "simulate", "--manifests", &recorded.manifests, "--proposed", &advice_arg];
    replay.extend(["--output", "json", "--fail-on-break", "--flows"]);
    replay.extend(recorded.logs.iter().map(String::as_str));
    let output = observer(&replay);
    assert!(output.status.success(), "stderr: {}", String::from_utf8_lossy(&output.stderr));
    let simulation = json_of(&output);
    assert_eq!((simulation["would_break"].clone(), simulation["newly_allowed"].clone()), (json!([]), json!([])));
    assert_eq!((simulation["edges"].clone(), simulation["unchanged"].clone()), (json!(4), json!(4)));

    // An empty input says so.
    let empty = recorded.dir.join("empty.jsonl");
    std::fs::write(&empty, "").expect("empty");
    let empty_arg = empty.display().to_string();
    let output = observer(&[
        "policy",
        "simulate",
        "--manifests",
        &recorded.manifests,
        "--remove",
        "shop/db-ingress",
        "--flows",
        &empty_arg,
    ]);
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("no flow records in the input"));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("judged 0 flows in 0 edges"));
}
