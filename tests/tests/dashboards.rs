//! Every dashboard panel's value, through a real Prometheus. Two observers
//! play two nodes: `node-a` attached at the cgroup of the agent pod,
//! `node-b` at the model server's, so the agent → model-server edge is
//! reported by both (`reporter` `src` and `dst`), as two nodes would. Known
//! lab traffic in two phases (the first creates every series, the second is
//! what rate panels measure); then each panel's queries, read from
//! `deploy/grafana/*.json` with `$__range`, `$__rate_interval` and
//! `$namespace` substituted as Grafana would, are evaluated and their values
//! compared with what the traffic implies: bytes and flows per edge counted
//! once, verdicts per flow, unprotected pods summed over nodes, the node
//! graph's fields as Grafana reads them. A panel without an expectation here
//! fails the test. The shipped alert rules (hold times zeroed) run on the
//! same series: one alert per edge, unprotected pods summed over the nodes.
//! Root only; hold the kernel lock.

use std::{
    collections::BTreeMap,
    fs,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use observer_tests::{
    Endpoint, INTERNET_HOST_V4, Lab, ObserverProcess, PrometheusServer, ScrapeTarget, TcpClientOpts, TcpServerOpts,
    http_get, manifests, root_or_skip,
};
use serde_json::{Value, json};

const SCRAPE: Duration = Duration::from_millis(500);
/// Connections from the agent to the model server, per phase.
const CALLS: [u64; 2] = [2, 6];
/// Connections refused by the model server's pod (nothing on port 9).
const REFUSED: [u64; 2] = [1, 2];
/// Connections from the agent to the internet.
const EGRESS: [u64; 2] = [1, 3];
/// Bytes of each call: request, reply.
const CALL_BYTES: (u64, u64) = (1000, 5000);
/// Bytes of each connection to the internet: request, reply.
const EGRESS_BYTES: (u64, u64) = (2000, 100);

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// The shipped rules with every `for:` at zero: the expressions are what is
/// tested here, the hold times by `promtool test rules`.
fn rules_without_hold_times() -> String {
    let rules = fs::read_to_string(deploy().join("prometheus/rules.yaml")).expect("rules.yaml");
    rules.lines().filter(|line| !line.trim_start().starts_with("for: ")).collect::<Vec<_>>().join("\n")
}

/// One query of a panel, as the dashboard JSON has it.
#[derive(Debug)]
struct Query {
    dashboard: String,
    panel: String,
    transformations: Value,
    ref_id: String,
    expr: String,
    targets: usize,
}

fn queries() -> Vec<Query> {
    let mut files: Vec<PathBuf> = fs::read_dir(deploy().join("grafana"))
        .expect("deploy/grafana")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "json"))
        .collect();
    files.sort();
    let mut queries = Vec::new();
    for file in files {
        let dashboard: Value = serde_json::from_str(&fs::read_to_string(&file).expect("read")).expect("json");
        for panel in dashboard["panels"].as_array().expect("panels") {
            let targets = panel["targets"].as_array().expect("targets");
            for target in targets {
                queries.push(Query {
                    dashboard: dashboard["uid"].as_str().unwrap_or_default().to_owned(),
                    panel: panel["title"].as_str().unwrap_or_default().to_owned(),
                    transformations: panel["transformations"].clone(),
                    ref_id: target["refId"].as_str().unwrap_or_default().to_owned(),
                    expr: target["expr"].as_str().unwrap_or_default().to_owned(),
                    targets: targets.len(),
                });
            }
        }
    }
    queries
}

/// One sample of a result: labels and value.
type Row = (BTreeMap<String, String>, f64);

fn rows(result: &[Value]) -> Vec<Row> {
    result
        .iter()
        .map(|sample| {
            let labels = sample["metric"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(key, value)| (key.clone(), value.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value = sample["value"][1].as_str().and_then(|text| text.parse().ok()).unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect()
}

/// Samples of the observers' own /metrics: (name, labels, value), the
/// target's `node` label added.
fn exposition(observers: &[(&str, SocketAddr)]) -> Vec<(String, BTreeMap<String, String>, f64)> {
    let mut samples = Vec::new();
    for (node, addr) in observers {
        let (_, body) = http_get(*addr, "/metrics").expect("/metrics");
        for line in body.lines().filter(|line| !line.starts_with('#') && !line.is_empty()) {
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let (name, labels) = series.split_once('{').unwrap_or((series, "}"));
            let mut map = BTreeMap::from([("node".to_owned(), (*node).to_owned())]);
            for pair in labels.trim_end_matches('}').split("\",").filter(|pair| !pair.is_empty()) {
                if let Some((key, value)) = pair.split_once("=\"") {
                    map.insert(key.to_owned(), value.trim_end_matches('"').to_owned());
                }
            }
            samples.push((name.to_owned(), map, value.parse().unwrap_or(f64::NAN)));
        }
    }
    samples
}

/// The sum over the observers of `name`'s samples whose labels include `with`.
fn exposed(samples: &[(String, BTreeMap<String, String>, f64)], name: &str, with: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .filter(|(found, labels, _)| {
            found == name && with.iter().all(|(key, value)| labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|(_, _, value)| value)
        .sum()
}

fn now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs_f64()
}

/// Field names of a Prometheus instant query in table format, as Grafana's
/// data frame has them (`Time`, the labels, `Value` or `Value #<refId>` when
/// the panel has several queries), after the panel's `calculateField` and
/// `organize` steps (a rename sets a display name, not the name).
fn frame_fields(query: &Query, rows: &[Row]) -> Vec<String> {
    let mut fields = vec!["Time".to_owned()];
    let mut labels: Vec<String> = rows.iter().flat_map(|(labels, _)| labels.keys().cloned()).collect();
    labels.sort();
    labels.dedup();
    fields.extend(labels);
    fields.push(if query.targets > 1 { format!("Value #{}", query.ref_id) } else { "Value".to_owned() });
    for step in query.transformations.as_array().into_iter().flatten() {
        let options = &step["options"];
        match step["id"].as_str() {
            Some("calculateField") if options["mode"] == "reduceRow" => {
                if options["replaceFields"] == true {
                    fields.retain(|field| !field.starts_with("Value"));
                }
                fields.push(options["alias"].as_str().unwrap_or_default().to_owned());
            }
            Some("organize") => {
                fields.retain(|field| options["excludeByName"][field.as_str()] != true);
            }
            other => panic!("{}: transformation {other:?} is not emulated here", query.panel),
        }
    }
    fields
}

/// What a panel query must return: rows matched on the listed labels, each
/// with its value, and no other row.
struct Expect<'a> {
    query: &'a Query,
    rows: Vec<Row>,
    problems: Vec<String>,
}

impl Expect<'_> {
    fn fail(&mut self, message: String) {
        self.problems
            .push(format!("{} / {} [{}]: {message}", self.query.dashboard, self.query.panel, self.query.ref_id));
    }

    fn find(&self, labels: &[(&str, &str)]) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|(found, _)| labels.iter().all(|(key, value)| found.get(*key).map(String::as_str) == Some(*value)))
            .collect()
    }

    /// Exactly these rows, each value within `tolerance` of the expected.
    fn rows_within(&mut self, expected: &[(&[(&str, &str)], f64)], tolerance: impl Fn(f64, f64) -> bool) {
        for (labels, value) in expected {
            match self.find(labels).as_slice() {
                [(_, found)] if tolerance(*found, *value) => {}
                [(_, found)] => self.fail(format!("{labels:?} = {found}, expected {value}")),
                found => self.fail(format!("{} rows with {labels:?}, expected 1: {:?}", found.len(), self.rows)),
            }
        }
        if self.rows.len() != expected.len() {
            self.fail(format!("{} rows, expected {}: {:?}", self.rows.len(), expected.len(), self.rows));
        }
    }

    /// Exact values (counted from samples, no extrapolation).
    fn exactly(&mut self, expected: &[(&[(&str, &str)], f64)]) {
        self.rows_within(expected, |found, value| (found - value).abs() < 1e-6);
    }

    /// Rates over a window: `value` events in it. `rate()` extrapolates the
    /// span its samples cover (at least `span` seconds: the targets' scrapes
    /// in the window) to at most the window's edges, never below what the
    /// samples say: value / window ≤ rate ≤ value / span.
    fn per_second(&mut self, window: Window, expected: &[(&[(&str, &str)], f64)]) {
        let expected: Vec<(&[(&str, &str)], f64)> =
            expected.iter().map(|(labels, count)| (*labels, count / window.seconds)).collect();
        self.rows_within(&expected, |found, value| {
            found >= value * (1.0 - 1e-9) && found <= value * window.seconds / window.span + 1e-9
        });
    }
}

/// The rate window and the shortest span the scrapes in it cover.
#[derive(Clone, Copy, Debug)]
struct Window {
    seconds: f64,
    span: f64,
}

#[test]
fn every_dashboard_panel_shows_what_the_traffic_did() {
    if !root_or_skip("every_dashboard_panel_shows_what_the_traffic_did") {
        return;
    }
    let lab = Lab::builder()
        .pods(3)
        .ipv6(false)
        .internet(true)
        .traffic_bin(env!("CARGO_BIN_EXE_lab-traffic"))
        .build()
        .expect("lab");
    let (agent, model, agent_b) = (lab.pod(0), lab.pod(1), lab.pod(2));
    let dir = std::env::temp_dir().join(format!("dashboards-e2e-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("manifest dir");
    let on_node = |mut pod: Value, node: &str| {
        pod["spec"]["nodeName"] = json!(node);
        pod
    };
    let mut declared = manifests::ai_tier();
    declared.extend([
        // The planner has a pod on each node, neither isolated: 2 unprotected pods, 1 per node.
        on_node(manifests::pod(&manifests::planner_pod(agent, "planner-5c8d-q7w2x")), "node-a"),
        on_node(manifests::pod(&manifests::planner_pod(agent_b, "planner-5c8d-x9z4k")), "node-b"),
        on_node(manifests::pod(&manifests::vllm_pod(model)), "node-b"),
    ]);
    manifests::write_list(&dir.join("ai.json"), declared).expect("manifests");
    let target = model.addr_v4(8080);
    let reply = TcpServerOpts { reply: CALL_BYTES.1, ..Default::default() };
    let _listener = model.tcp_server(target, &reply).expect("server");
    let internet = lab.internet().expect("internet");
    let outside: SocketAddr = (INTERNET_HOST_V4, 443).into();
    let _outside = internet
        .tcp_server(outside, &TcpServerOpts { reply: EGRESS_BYTES.1, ..Default::default() })
        .expect("internet server");

    // Each observer sees the pods of its node only: attached at that pod's cgroup.
    let manifests_arg = dir.to_string_lossy().into_owned();
    let start = |node: &str, pod: &observer_tests::Pod| {
        let root = pod.pod_cgroup_dir().to_string_lossy().into_owned();
        ObserverProcess::start(&[
            "--poll-interval",
            "200ms",
            "--manifests",
            &manifests_arg,
            "--node-name",
            node,
            "--cgroup-root",
            &root,
        ])
        .unwrap_or_else(|error| panic!("observer {node} starts: {error}"))
    };
    let observer_a = start("node-a", agent);
    let observer_b = start("node-b", model);
    let nodes = [
        ("node-a", observer_a.metrics_addr().expect("node-a /metrics")),
        ("node-b", observer_b.metrics_addr().expect("node-b /metrics")),
    ];
    let prometheus_start = now();
    let prometheus = PrometheusServer::start(
        &nodes
            .iter()
            .map(|(node, addr)| ScrapeTarget {
                job: "flow-observer".to_owned(),
                addr: *addr,
                labels: vec![("node".to_owned(), (*node).to_owned())],
            })
            .collect::<Vec<_>>(),
        &[("rules.yaml", rules_without_hold_times())],
        SCRAPE,
    )
    .expect("prometheus starts");
    let both_up = prometheus.wait_for(Duration::from_secs(30), |p| {
        p.query(r#"sum(up{job="flow-observer"}) == 2"#).ok().filter(|result| !result.is_empty())
    });
    assert!(both_up.is_some(), "prometheus never scraped both observers: {}", prometheus.log());
    for (node, addr) in nodes {
        let ready = prometheus
            .wait_for(Duration::from_secs(10), |_| http_get(addr, "/readyz").ok().filter(|(status, _)| *status == 200));
        assert!(ready.is_some(), "{node}: /readyz never answered 200");
    }

    // Until Prometheus holds what both observers expose, and they expose
    // every flow of the traffic so far (counted at its end).
    let families = ["edge_bytes_total", "edge_flows_total", "verdicts_total", "findings_total"];
    let settle = |phase: usize| {
        let calls: u64 = CALLS[..=phase].iter().sum();
        let flows_a = calls + REFUSED[..=phase].iter().sum::<u64>() + EGRESS[..=phase].iter().sum::<u64>();
        let settled = prometheus.wait_for(Duration::from_secs(30), |p| {
            let samples = exposition(&nodes);
            let counted = exposed(&samples, "flow_observer_edge_flows_total", &[("node", "node-a")]) == flows_a as f64
                && exposed(&samples, "flow_observer_edge_flows_total", &[("node", "node-b")]) >= calls as f64;
            let scraped = families.iter().all(|family| {
                let name = format!("flow_observer_{family}");
                let stored = p.query(&format!("sum({name})")).ok().map(|result| rows(&result));
                stored.and_then(|rows| rows.first().map(|(_, value)| *value)) == Some(exposed(&samples, &name, &[]))
            });
            (counted && scraped).then_some(samples)
        });
        settled.unwrap_or_else(|| {
            panic!("phase {phase}: the observers or Prometheus never settled: {:#?}", exposition(&nodes))
        })
    };
    let traffic = |phase: usize| {
        let calls = agent
            .tcp_client(
                target,
                &TcpClientOpts { count: CALLS[phase], send: CALL_BYTES.0, expect: CALL_BYTES.1, ..Default::default() },
            )
            .expect("calls");
        assert_eq!(calls.complete, CALLS[phase], "{calls:?}");
        let refused = agent
            .tcp_client(model.addr_v4(9), &TcpClientOpts { count: REFUSED[phase], ..Default::default() })
            .expect("refused");
        assert_eq!(refused.refused, REFUSED[phase], "{refused:?}");
        let egress = agent
            .tcp_client(
                outside,
                &TcpClientOpts {
                    count: EGRESS[phase],
                    send: EGRESS_BYTES.0,
                    expect: EGRESS_BYTES.1,
                    ..Default::default()
                },
            )
            .expect("egress");
        assert_eq!(egress.complete, EGRESS[phase], "{egress:?}");
    };

    traffic(0);
    let before = settle(0);
    // The rate window starts after the first phase's last sample.
    std::thread::sleep(Duration::from_secs(2));
    let phase_two = now();
    std::thread::sleep(Duration::from_secs(1));
    let phase_start = Instant::now();
    traffic(1);
    let after = settle(1);
    // A few more scrapes of the settled counters, so that the window ends flat.
    std::thread::sleep(Duration::from_secs(2).max(Duration::from_secs(6).saturating_sub(phase_start.elapsed())));
    let at = now();
    let end = exposition(&nodes);
    let window = (at - phase_two).floor();
    let range = (at - prometheus_start).ceil() + 60.0;
    // The samples of the counters the rate panels read, in the window.
    let counters =
        r#"{job="flow-observer", __name__=~"flow_observer_(edge_bytes|edge_flows|verdicts|flows_started)_total"}"#;
    let scrapes = prometheus.query_at(&format!("{counters}[{window}s]"), at).expect("scrapes");
    let span = scrapes
        .iter()
        .map(|series| {
            let times: Vec<f64> =
                series["values"].as_array().into_iter().flatten().filter_map(|sample| sample[0].as_f64()).collect();
            times.last().copied().unwrap_or_default() - times.first().copied().unwrap_or_default()
        })
        .fold(f64::INFINITY, f64::min);
    assert!(span > window / 2.0, "scrapes in the window: {scrapes:?}");
    let rate_window = Window { seconds: window, span };
    let sum = |phases: &[u64]| phases.iter().sum::<u64>() as f64;
    let (calls_total, egress_total) = (sum(&CALLS), sum(&EGRESS));
    let (calls_now, refused_now, egress_now) = (CALLS[1] as f64, REFUSED[1] as f64, EGRESS[1] as f64);
    let call_bytes = (CALL_BYTES.0 + CALL_BYTES.1) as f64;
    let egress_bytes = (EGRESS_BYTES.0 + EGRESS_BYTES.1) as f64;
    let to_model = [("src_workload", "planner"), ("dst_workload", "vllm")];
    let to_world = [("src_workload", "planner"), ("dst_workload", "direct-ip")];
    let finding_growth = |kind: &str| {
        exposed(&after, "flow_observer_findings_total", &[("kind", kind)])
            - exposed(&before, "flow_observer_findings_total", &[("kind", kind)])
    };

    let mut problems = Vec::new();
    let mut checked = 0;
    for query in queries() {
        let expr = query
            .expr
            .replace("$__rate_interval", &format!("{window}s"))
            .replace("$__range", &format!("{range}s"))
            .replace("$namespace", ".*");
        let result = prometheus.query_at(&expr, at).unwrap_or_else(|error| panic!("{}: {error}", query.panel));
        let mut expect = Expect { query: &query, rows: rows(&result), problems: Vec::new() };
        match (query.panel.as_str(), query.ref_id.as_str()) {
            ("Flow map", "nodes") => {
                let planner_bytes = calls_total * call_bytes + egress_total * egress_bytes;
                expect.exactly(&[
                    (&[("id", "agents/planner"), ("title", "planner"), ("subtitle", "agents")], planner_bytes),
                    (&[("id", "ml/vllm"), ("title", "vllm"), ("subtitle", "ml")], calls_total * call_bytes),
                    (&[("id", "/direct-ip"), ("title", "direct-ip")], egress_total * egress_bytes),
                ]);
                let fields = frame_fields(&query, &expect.rows);
                if fields != ["id", "subtitle", "title", "mainstat"] {
                    expect.fail(format!("node frame fields {fields:?}"));
                }
            }
            ("Flow map", "edges") => {
                let (model_edge, world_edge) = ("agents/planner->ml/vllm", "agents/planner->/direct-ip");
                expect.exactly(&[
                    (
                        &[("id", model_edge), ("source", "agents/planner"), ("target", "ml/vllm")],
                        calls_total * call_bytes,
                    ),
                    (
                        &[("id", world_edge), ("source", "agents/planner"), ("target", "/direct-ip")],
                        egress_total * egress_bytes,
                    ),
                ]);
                let fields = frame_fields(&query, &expect.rows);
                for field in ["id", "source", "target", "mainstat"] {
                    if !fields.iter().any(|found| found == field) {
                        expect.fail(format!("edge frame without field {field}: {fields:?}"));
                    }
                }
                if !fields.iter().any(|field| field == "source") {
                    expect.fail("Grafana tells the edges frame by its `source` field".to_owned());
                }
            }
            ("Top talkers", _) => {
                expect.exactly(&[(&to_model, calls_total * call_bytes), (&to_world, egress_total * egress_bytes)])
            }
            ("Flows ending, by outcome", _) => expect.per_second(
                rate_window,
                &[(&[("outcome", "completed")], calls_now + egress_now), (&[("outcome", "refused")], refused_now)],
            ),
            ("Refused and unanswered connections, by edge", _) => {
                expect.per_second(rate_window, &[(&to_model, refused_now)])
            }
            ("AI-tier egress, by destination kind", _) => expect.per_second(
                rate_window,
                &[
                    (&[("src_tier", "agent"), ("dst_kind", "StatefulSet")], calls_now * CALL_BYTES.0 as f64),
                    (&[("src_tier", "agent"), ("dst_kind", "World")], egress_now * EGRESS_BYTES.0 as f64),
                ],
            ),
            ("AI-tier workloads reaching the internet", _) => expect.exactly(&[(
                &[("src_tier", "agent"), ("src_namespace", "agents"), ("src_workload", "planner")],
                egress_total * EGRESS_BYTES.0 as f64,
            )]),
            ("Findings over time, by kind and tier", _) => {
                // Findings are about the agent (the flows' source). A flow
                // between two observed pods is a finding on each end's node;
                // the inventory's unprotected pods were found before phase two.
                let expected = [
                    ("enforcement-gap", 2.0 * calls_now),
                    ("intent-violation", egress_now),
                    ("denied-attempt", refused_now),
                    ("unprotected", 0.0),
                ];
                for (kind, count) in expected {
                    if finding_growth(kind) != count {
                        expect.fail(format!(
                            "the observers exposed {} {kind} findings, expected {count}",
                            finding_growth(kind)
                        ));
                    }
                }
                let rows: Vec<(Vec<(&str, &str)>, f64)> =
                    expected.iter().map(|(kind, count)| (vec![("kind", *kind), ("tier", "agent")], *count)).collect();
                let rows: Vec<(&[(&str, &str)], f64)> =
                    rows.iter().map(|(labels, count)| (labels.as_slice(), *count)).collect();
                expect.exactly(&rows);
            }
            ("Verdicts", _) => expect.per_second(
                rate_window,
                &[
                    (&[("verdict", "enforcement-gap")], calls_now),
                    (&[("verdict", "intent-violation")], egress_now),
                    (&[("verdict", "denied-attempt")], refused_now),
                ],
            ),
            ("Enforcement gaps and intent violations", _) => expect.exactly(&[
                (&[("verdict", "enforcement-gap"), ("src_workload", "planner"), ("dst_workload", "vllm")], calls_total),
                (
                    &[("verdict", "intent-violation"), ("src_workload", "planner"), ("dst_workload", "direct-ip")],
                    egress_total,
                ),
            ]),
            ("Unprotected AI-tier workloads", _) => expect.exactly(&[(
                &[("namespace", "agents"), ("workload", "planner"), ("kind", "Deployment"), ("tier", "agent")],
                2.0,
            )]),
            // This lab's traffic calls no AI provider of the catalog (the
            // agent's internet egress is direct-IP to an address no pod
            // resolved): the provider panels stay empty.
            // `tests/tests/shadow_ai.rs` checks the series they read.
            ("AI provider egress per workload", _)
            | ("Connections to AI providers, by provider and workload", _)
            | ("AI provider egress, by provider", _) => expect.exactly(&[]),
            ("Observers up", "A") => expect.exactly(&[(&[], 2.0)]),
            ("Observers up", "B") => expect.exactly(&[(&[], 0.0)]),
            ("Nodes counting TCP per packet", _) => expect.exactly(&[(&[], 0.0)]),
            // Dropped records by node and stage: every stage's series is
            // exposed (at zero) from the start.
            ("Ring-buffer events lost and records dropped", "B") => expect.exactly(&[
                (&[("node", "node-a"), ("stage", "capture")], 0.0),
                (&[("node", "node-a"), ("stage", "enrich")], 0.0),
                (&[("node", "node-a"), ("stage", "judge")], 0.0),
                (&[("node", "node-a"), ("stage", "export")], 0.0),
                (&[("node", "node-b"), ("stage", "capture")], 0.0),
                (&[("node", "node-b"), ("stage", "enrich")], 0.0),
                (&[("node", "node-b"), ("stage", "judge")], 0.0),
                (&[("node", "node-b"), ("stage", "export")], 0.0),
            ]),
            ("Ring-buffer events lost and records dropped", _) | ("Flow map fill", "B") => {
                expect.exactly(&[(&[("node", "node-a")], 0.0), (&[("node", "node-b")], 0.0)])
            }
            ("Flow map fill", "A") => {
                let fill = |node| {
                    exposed(&after, "flow_observer_flow_map_entries", &[("node", node)])
                        / exposed(&after, "flow_observer_flow_map_capacity", &[("node", node)])
                };
                expect.rows_within(
                    &[(&[("node", "node-a")], fill("node-a")), (&[("node", "node-b")], fill("node-b"))],
                    |found, value| (found - value).abs() <= 16.0 / 131_072.0,
                );
            }
            ("Flows active and started", "A") => {
                // The gauge as the observers expose it now: the traffic is
                // over and settled, so the last scrape saw the same.
                let active = |node| exposed(&end, "flow_observer_flows_active", &[("node", node)]);
                expect.exactly(&[(&[("node", "node-a")], active("node-a")), (&[("node", "node-b")], active("node-b"))])
            }
            ("Flows active and started", "B") => {
                let started = |node| {
                    exposed(&after, "flow_observer_flows_started_total", &[("node", node)])
                        - exposed(&before, "flow_observer_flows_started_total", &[("node", node)])
                };
                if started("node-a") < calls_now + refused_now + egress_now {
                    expect.fail(format!("node-a started {} flows in phase two", started("node-a")));
                }
                expect.per_second(
                    rate_window,
                    &[(&[("node", "node-a")], started("node-a")), (&[("node", "node-b")], started("node-b"))],
                );
            }
            ("Capture: seconds since the flow map was read", _) => expect
                .rows_within(&[(&[("node", "node-a")], 0.2), (&[("node", "node-b")], 0.2)], |found, _| {
                    (0.0..=1.0).contains(&found)
                }),
            ("Metric series by family, and overflow", "A") => {
                let mut by_family: BTreeMap<String, f64> = BTreeMap::new();
                for (name, labels, value) in &after {
                    if name == "flow_observer_series" {
                        *by_family.entry(labels["family"].clone()).or_default() += value;
                    }
                }
                let expected: Vec<(Vec<(&str, &str)>, f64)> =
                    by_family.iter().map(|(family, value)| (vec![("family", family.as_str())], *value)).collect();
                let expected: Vec<(&[(&str, &str)], f64)> =
                    expected.iter().map(|(labels, value)| (labels.as_slice(), *value)).collect();
                expect.exactly(&expected);
            }
            ("Metric series by family, and overflow", "B") => {
                let families = expect.rows.len();
                if families < 7 || expect.rows.iter().any(|(_, value)| *value != 0.0) {
                    expect.fail(format!("overflow: {:?}", expect.rows));
                }
            }
            ("Inventory", "A") => expect.exactly(&[(&[], 1.0)]),
            ("Inventory", "B") => expect.exactly(&[(&[], 0.0)]),
            ("Inventory", "C") => {
                let last = ["node-a", "node-b"]
                    .map(|node| {
                        exposed(&after, "flow_observer_inventory_last_update_timestamp_seconds", &[("node", node)])
                    })
                    .into_iter()
                    .fold(f64::INFINITY, f64::min);
                expect.rows_within(&[(&[], at - last)], |found, value| (found - value).abs() < 1.0);
            }
            ("Versions, policies and intents", "A") => {
                let version = after
                    .iter()
                    .find(|(name, ..)| name == "flow_observer_build_info")
                    .map(|(_, labels, _)| labels["version"].clone())
                    .expect("build_info");
                expect.exactly(&[(&[("version", version.as_str())], 2.0)])
            }
            ("Versions, policies and intents", "B" | "C") => {
                expect.exactly(&[(&[("node", "node-a")], 1.0), (&[("node", "node-b")], 1.0)])
            }
            _ => expect.fail("no expectation in this test: add what the traffic implies".to_owned()),
        }
        checked += 1;
        problems.extend(expect.problems);
    }
    assert!(checked > 20, "only {checked} queries found");
    assert!(
        problems.is_empty(),
        "{} panel queries wrong (window {window}s, scrapes span {span}s, range {range}s):\n{}\nexposed:\n{:#?}",
        problems.len(),
        problems.join("\n"),
        after.iter().filter(|(name, ..)| !name.ends_with("_created")).collect::<Vec<_>>()
    );

    // The alerts on the same two nodes: one enforcement gap and one intent
    // violation per edge although both nodes report the gap, the
    // unprotected pods summed over the nodes; nothing about coverage.
    let firing = |p: &PrometheusServer| {
        let alerts = p.alerts().expect("alerts");
        let firing: Vec<Value> = alerts.into_iter().filter(|alert| alert["state"] == "firing").collect();
        Some(firing).filter(|firing| firing.len() >= 3)
    };
    let alerts = prometheus.wait_for(Duration::from_secs(15), firing).unwrap_or_default();
    let named =
        |name: &str| -> Vec<&Value> { alerts.iter().filter(|alert| alert["labels"]["alertname"] == name).collect() };
    let gaps = named("FlowObserverEnforcementGap");
    assert_eq!(gaps.len(), 1, "{alerts:#?}");
    assert_eq!(
        (gaps[0]["labels"]["src_workload"].as_str(), gaps[0]["labels"]["dst_workload"].as_str()),
        (Some("planner"), Some("vllm"))
    );
    let violations = named("FlowObserverIntentViolation");
    assert_eq!(violations.len(), 1, "{alerts:#?}");
    assert_eq!(violations[0]["labels"]["dst_workload"], "direct-ip");
    let unprotected = named("FlowObserverUnprotectedAITierPod");
    assert_eq!(unprotected.len(), 1, "{alerts:#?}");
    assert_eq!(
        unprotected[0]["annotations"]["summary"],
        "2 pod(s) of agent workload agents/planner are not isolated by any NetworkPolicy"
    );
    for quiet in [
        "FlowObserverDown",
        "FlowObserverAbsent",
        "FlowObserverNotOnEveryNode",
        "FlowObserverEventsLost",
        "FlowObserverInventoryStale",
        "FlowObserverEdgeSpike",
    ] {
        assert!(named(quiet).is_empty(), "{quiet}: {alerts:#?}");
    }
    for rule in prometheus.rules().expect("rules") {
        assert_eq!(rule["health"], "ok", "rule {} failed: {}", rule["name"], rule["lastError"]);
    }
    let _ = observer_a.stop();
    let _ = observer_b.stop();
    let _ = fs::remove_dir_all(&dir);
}
