//! `observer policy check`: judge flows against NetworkPolicies in manifest files.
//!
//! In: manifest paths, then one flow from `--from/--to/--port` or JSON lines
//! from `--flows`. Out: a readable explanation or JSON per flow on stdout;
//! documents and policies that fail to parse are reported on stderr with
//! file:line and the rest are used; a path that is missing or cannot be
//! listed or read stops the check (a partial policy set would judge wrongly).
//! `--flows` is read line by line, each line at most [`MAX_LINE_BYTES`], a
//! line too long or not UTF-8 reported like any other bad line.

use std::{
    collections::HashMap,
    fs::File,
    io::{self, BufRead, BufReader, BufWriter, Write},
    net::IpAddr,
    path::PathBuf,
};

use anyhow::Context;
use serde_json::Value;

use super::{Endpoint, PolicyEngine, SideVerdict, Verdict};
use crate::inventory::{
    manifests::{self, Object, Origin},
    model::{Namespace, Node, Pod, Protocol},
};

/// How to print a single verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// A readable explanation.
    Text,
    /// One JSON object, as `--flows` prints per line.
    Json,
}

/// What `observer policy check` judges (from its flags in [`crate::cli::policy`]).
#[derive(Debug)]
pub struct CheckConfig {
    /// Manifest files or folders (YAML or JSON, multi-document) holding
    /// NetworkPolicies, ClusterNetworkPolicies, Namespaces, Nodes and Pods.
    pub manifests: Vec<PathBuf>,
    /// Source: `namespace/pod` or an IP address.
    pub from: Option<String>,
    /// Destination: `namespace/pod` or an IP address.
    pub to: Option<String>,
    /// Destination port and protocol: `N` or `N/PROTO` (TCP, UDP, SCTP; TCP when absent).
    pub port: Option<String>,
    /// JSON lines of flows to judge, `-` for stdin; prints one JSON line per flow.
    pub flows: Option<PathBuf>,
    /// Output of a single verdict (`--flows` always prints JSON lines).
    pub output: OutputFormat,
}

/// Why a flow could not be judged.
#[derive(Debug, thiserror::Error)]
pub enum FlowError {
    /// The line is not JSON.
    #[error("invalid JSON: {source}")]
    Json {
        /// The parser's complaint.
        #[from]
        source: serde_json::Error,
    },
    /// A required field is absent.
    #[error("{field}: missing")]
    Missing {
        /// `src`, `dst` or `port`.
        field: &'static str,
    },
    /// An end that is neither `namespace/pod`, an IP address nor `{"ip": ...}`.
    #[error("{field}: expected \"namespace/pod\", an IP address or {{\"ip\": \"A.B.C.D\"}}, got {value}")]
    BadEndpoint {
        /// `src` or `dst`.
        field: &'static str,
        /// What was given.
        value: String,
    },
    /// A pod the manifests do not hold.
    #[error("{field}: unknown pod {namespace}/{name}")]
    UnknownPod {
        /// `src` or `dst`.
        field: &'static str,
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A port that is not a number from 1 to 65535.
    #[error("port: expected a number from 1 to 65535, got {value}")]
    BadPort {
        /// What was given.
        value: String,
    },
    /// A protocol other than TCP, UDP and SCTP.
    #[error("protocol: expected TCP, UDP or SCTP, got {value}")]
    BadProtocol {
        /// What was given.
        value: String,
    },
    /// The line is not UTF-8 text.
    #[error("not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Where in the line the first invalid byte is.
        offset: usize,
    },
    /// The line is longer than [`MAX_LINE_BYTES`]; the rest of it was skipped.
    #[error("longer than {MAX_LINE_BYTES} bytes, skipped")]
    TooLong,
}

/// Longest `--flows` line read (64 KiB; a flow is a few hundred bytes).
pub const MAX_LINE_BYTES: usize = 64 << 10;

/// One line of `--flows`: its bytes, or how it was too long.
enum Line {
    Text(Vec<u8>),
    TooLong,
}

/// Reads the next line (without its newline) into at most
/// [`MAX_LINE_BYTES`], skipping the rest of a longer one without holding it;
/// `None` at the end of the input.
fn next_line(input: &mut dyn BufRead) -> io::Result<Option<Line>> {
    let mut line = Vec::new();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = match input.fill_buf() {
            Ok(chunk) => chunk,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(error),
        };
        if chunk.is_empty() {
            break;
        }
        any = true;
        let (part, used, done) = match chunk.iter().position(|&byte| byte == b'\n') {
            Some(end) => (&chunk[..end], end + 1, true),
            None => (chunk, chunk.len(), false),
        };
        if !too_long && line.len() + part.len() <= MAX_LINE_BYTES {
            line.extend_from_slice(part);
        } else {
            too_long = true;
            line = Vec::new();
        }
        input.consume(used);
        if done {
            break;
        }
    }
    Ok(match (any, too_long) {
        (false, _) => None,
        (true, true) => Some(Line::TooLong),
        (true, false) => Some(Line::Text(line)),
    })
}

/// The pods, by name and by address, and the compiled policies.
struct Cluster {
    pods: HashMap<(String, String), Pod>,
    pod_by_ip: HashMap<IpAddr, (String, String)>,
    engine: PolicyEngine,
}

/// An end of a flow as given, before it is looked up.
enum EndSpec {
    Pod { namespace: String, name: String },
    Ip(IpAddr),
}

impl Cluster {
    /// Loads the manifests, reporting what failed on stderr; a path that
    /// could not be found, listed or read is an error.
    fn load(paths: &[PathBuf]) -> anyhow::Result<Self> {
        let loaded = manifests::load(paths);
        for error in &loaded.errors {
            eprintln!("{error}");
        }
        for skipped in &loaded.skipped {
            eprintln!("{}: skipped: {}", skipped.origin, skipped.what);
        }
        let unread = loaded.errors.iter().filter(|error| !matches!(error.reason, "invalid" | "limits")).count();
        if unread > 0 {
            anyhow::bail!(
                "{unread} manifest paths or files could not be read; not judging with part of the policy set"
            );
        }
        let mut pods = HashMap::new();
        let mut namespaces = Vec::new();
        let mut policies = Vec::new();
        let mut policy_origins: Vec<&Origin> = Vec::new();
        let mut cluster_policies = Vec::new();
        let mut cluster_origins: Vec<&Origin> = Vec::new();
        let mut nodes = Vec::new();
        for object in &loaded.objects {
            match &object.object {
                Object::Pod(pod) => {
                    let pod = Pod::from(&**pod);
                    pods.insert((pod.namespace.clone(), pod.name.clone()), pod);
                }
                Object::Namespace(namespace) => namespaces.push(Namespace::from(&**namespace)),
                Object::NetworkPolicy(policy) => {
                    policies.push((**policy).clone());
                    policy_origins.push(&object.origin);
                }
                Object::ClusterNetworkPolicy(policy) => {
                    cluster_policies.push((**policy).clone());
                    cluster_origins.push(&object.origin);
                }
                Object::Node(node) => nodes.push(Node::from(&**node)),
                Object::Service(_) | Object::EndpointSlice(_) | Object::Workload(_) | Object::FlowIntent(_) => {}
            }
        }
        let (engine, errors) = PolicyEngine::compile(&policies, &namespaces);
        for error in errors {
            match policy_origins.get(error.index) {
                Some(origin) => eprintln!("{origin}: {error}"),
                None => eprintln!("{error}"),
            }
        }
        let (engine, errors) = engine.with_cluster_policies(&cluster_policies, &nodes);
        for error in errors {
            match cluster_origins.get(error.index) {
                Some(origin) => eprintln!("{origin}: {error}"),
                None => eprintln!("{error}"),
            }
        }
        // Host-network pods share their node's address: an address names a pod
        // only when it is the pod's own.
        let pod_by_ip = pods
            .iter()
            .filter(|(_, pod)| !pod.host_network)
            .flat_map(|(key, pod)| pod.ips.iter().map(move |ip| (*ip, key.clone())))
            .collect();
        Ok(Self { pods, pod_by_ip, engine })
    }

    fn endpoint(&self, field: &'static str, spec: EndSpec) -> Result<Endpoint<'_>, FlowError> {
        match spec {
            EndSpec::Pod { namespace, name } => {
                let key = (namespace, name);
                match self.pods.get(&key) {
                    Some(pod) => Ok(Endpoint::pod(pod)),
                    None => Err(FlowError::UnknownPod { field, namespace: key.0, name: key.1 }),
                }
            }
            EndSpec::Ip(ip) => Ok(match self.pod_by_ip.get(&ip).and_then(|key| self.pods.get(key)) {
                Some(pod) => Endpoint::Pod { pod, ip: Some(ip) },
                None => Endpoint::External(ip),
            }),
        }
    }
}

fn parse_end(field: &'static str, text: &str) -> Result<EndSpec, FlowError> {
    if let Ok(ip) = text.parse() {
        return Ok(EndSpec::Ip(ip));
    }
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok(EndSpec::Pod { namespace: namespace.to_owned(), name: name.to_owned() })
        }
        _ => Err(FlowError::BadEndpoint { field, value: format!("{text:?}") }),
    }
}

fn parse_protocol(text: &str) -> Result<Protocol, FlowError> {
    Protocol::from_k8s(Some(text.to_ascii_uppercase().as_str()))
        .ok_or_else(|| FlowError::BadProtocol { value: format!("{text:?}") })
}

fn parse_port(text: &str) -> Result<u16, FlowError> {
    text.parse().ok().filter(|port| *port != 0).ok_or_else(|| FlowError::BadPort { value: format!("{text:?}") })
}

/// A flow as given on the command line or in a JSON line.
struct FlowSpec {
    source: EndSpec,
    destination: EndSpec,
    port: u16,
    protocol: Protocol,
}

fn parse_json_end(field: &'static str, value: Option<&Value>) -> Result<EndSpec, FlowError> {
    match value {
        None => Err(FlowError::Missing { field }),
        Some(Value::String(text)) => parse_end(field, text),
        Some(Value::Object(object)) if object.len() == 1 => match object.get("ip").and_then(Value::as_str) {
            Some(text) => text
                .parse()
                .map(EndSpec::Ip)
                .map_err(|_| FlowError::BadEndpoint { field, value: Value::Object(object.clone()).to_string() }),
            None => Err(FlowError::BadEndpoint { field, value: Value::Object(object.clone()).to_string() }),
        },
        Some(other) => Err(FlowError::BadEndpoint { field, value: other.to_string() }),
    }
}

fn parse_flow_line(line: &str) -> Result<FlowSpec, FlowError> {
    let value: Value = serde_json::from_str(line)?;
    let source = parse_json_end("src", value.get("src"))?;
    let destination = parse_json_end("dst", value.get("dst"))?;
    let port = match value.get("port") {
        None => return Err(FlowError::Missing { field: "port" }),
        Some(port) => port
            .as_u64()
            .and_then(|port| u16::try_from(port).ok())
            .filter(|port| *port != 0)
            .ok_or_else(|| FlowError::BadPort { value: port.to_string() })?,
    };
    let protocol = match value.get("protocol") {
        None | Some(Value::Null) => Protocol::TCP,
        Some(Value::String(text)) => parse_protocol(text)?,
        Some(other) => return Err(FlowError::BadProtocol { value: other.to_string() }),
    };
    Ok(FlowSpec { source, destination, port, protocol })
}

/// A side as `--flows` prints it: policies as `namespace/name`; the
/// ClusterNetworkPolicy rules that matched, when any, as `cluster`, and why
/// the side cannot be judged, when it cannot, as `undecidable`.
fn side_json(side: &SideVerdict) -> Value {
    let mut json = serde_json::json!({
        "isolated": side.isolated,
        "allowed": side.allowed,
        "policies": side.policies.iter().map(ToString::to_string).collect::<Vec<_>>(),
    });
    if !side.cluster.is_empty() {
        json["cluster"] = side.cluster.iter().map(ToString::to_string).collect();
    }
    if let Some(why) = &side.undecidable {
        json["undecidable"] = Value::from(why.as_str());
    }
    json
}

fn verdict_json(verdict: &Verdict) -> Value {
    let mut json = serde_json::json!({
        "allowed": verdict.allowed,
        "egress": side_json(&verdict.egress),
        "ingress": side_json(&verdict.ingress),
    });
    if verdict.undecidable().is_some() {
        // Neither allowed nor denied: its own outcome, never read as a denial.
        json["allowed"] = Value::Null;
        json["undecidable"] = Value::Bool(true);
    }
    json
}

fn describe(endpoint: &Endpoint<'_>) -> String {
    match endpoint {
        Endpoint::Pod { pod, .. } if pod.host_network => format!("{}/{} (host network)", pod.namespace, pod.name),
        Endpoint::Pod { pod, .. } => format!("{}/{}", pod.namespace, pod.name),
        Endpoint::External(ip) => ip.to_string(),
    }
}

fn has_side(endpoint: &Endpoint<'_>) -> bool {
    matches!(endpoint, Endpoint::Pod { pod, .. } if !pod.host_network)
}

fn explain_side(engine: &PolicyEngine, direction: &str, endpoint: &Endpoint<'_>, side: &SideVerdict) -> String {
    let who = describe(endpoint);
    let judgement = if let Endpoint::Pod { pod, .. } = endpoint
        && has_side(endpoint)
        && (!side.cluster.is_empty() || side.undecidable.is_some() || engine.cluster_len() > 0)
    {
        // With ClusterNetworkPolicies, the whole chain through the tiers.
        let isolation = engine.isolating(pod);
        let isolating = if direction == "egress" { isolation.egress } else { isolation.ingress };
        super::cnp::explain::chain(side, &isolating)
    } else if !has_side(endpoint) {
        "outside the pod network, no policy applies".to_owned()
    } else if !side.isolated {
        format!("not isolated for {direction}, allowed")
    } else if side.policies.is_empty() {
        format!("isolated for {direction}, no policy allows it")
    } else {
        let names: Vec<String> = side.policies.iter().map(ToString::to_string).collect();
        format!("isolated for {direction}, allowed by {}", names.join(", "))
    };
    format!("  {direction} of {who}: {judgement}")
}

fn protocol_name(protocol: Protocol) -> std::borrow::Cow<'static, str> {
    protocol.k8s_name().map_or_else(|| protocol.name(), std::borrow::Cow::Borrowed)
}

fn explain(
    engine: &PolicyEngine,
    source: &Endpoint<'_>,
    destination: &Endpoint<'_>,
    port: u16,
    protocol: Protocol,
    verdict: &Verdict,
) -> String {
    format!(
        "{} -> {} {port}/{}: {}\n{}\n{}\n",
        describe(source),
        describe(destination),
        protocol_name(protocol),
        match (verdict.undecidable(), verdict.allowed) {
            (Some(_), _) => "UNDECIDABLE",
            (None, true) => "ALLOWED",
            (None, false) => "DENIED",
        },
        explain_side(engine, "egress", source, &verdict.egress),
        explain_side(engine, "ingress", destination, &verdict.ingress),
    )
}

/// Runs `observer policy check`.
pub fn check(args: CheckConfig) -> anyhow::Result<()> {
    let cluster = Cluster::load(&args.manifests)?;
    match (args.flows, args.from, args.to, args.port) {
        (Some(path), ..) => check_lines(&cluster, &path),
        (None, Some(from), Some(to), Some(port)) => {
            let (port, protocol) = match port.split_once('/') {
                Some((port, protocol)) => (parse_port(port)?, parse_protocol(protocol)?),
                None => (parse_port(&port)?, Protocol::TCP),
            };
            let flow =
                FlowSpec { source: parse_end("--from", &from)?, destination: parse_end("--to", &to)?, port, protocol };
            check_one(&cluster, flow, args.output)
        }
        _ => anyhow::bail!("give --from, --to and --port, or --flows"),
    }
}

fn check_one(cluster: &Cluster, flow: FlowSpec, output: OutputFormat) -> anyhow::Result<()> {
    let FlowSpec { source, destination, port, protocol } = flow;
    let source = cluster.endpoint("--from", source)?;
    let destination = cluster.endpoint("--to", destination)?;
    let verdict = cluster.engine.verdict(source, destination, port, protocol);
    let text = match output {
        OutputFormat::Json => format!("{}\n", verdict_json(&verdict)),
        OutputFormat::Text => explain(&cluster.engine, &source, &destination, port, protocol, &verdict),
    };
    io::stdout().lock().write_all(text.as_bytes()).context("cannot write to stdout")
}

fn judge_line(cluster: &Cluster, line: &[u8]) -> Result<Verdict, FlowError> {
    let line = std::str::from_utf8(line).map_err(|error| FlowError::NotUtf8 { offset: error.valid_up_to() })?;
    let flow = parse_flow_line(line)?;
    let source = cluster.endpoint("src", flow.source)?;
    let destination = cluster.endpoint("dst", flow.destination)?;
    Ok(cluster.engine.verdict(source, destination, flow.port, flow.protocol))
}

fn check_lines(cluster: &Cluster, path: &PathBuf) -> anyhow::Result<()> {
    let mut input: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(io::stdin().lock())
    } else {
        Box::new(BufReader::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?))
    };
    let mut out = BufWriter::new(io::stdout().lock());
    let (mut judged, mut failed) = (0_usize, 0_usize);
    let mut index = 0_usize;
    while let Some(line) = next_line(&mut input).with_context(|| format!("cannot read {}", path.display()))? {
        index += 1;
        let verdict = match line {
            Line::TooLong => Err(FlowError::TooLong),
            Line::Text(line) if line.trim_ascii().is_empty() => continue,
            Line::Text(line) => judge_line(cluster, &line),
        };
        judged += 1;
        let output = match verdict {
            Ok(verdict) => verdict_json(&verdict),
            Err(error) => {
                failed += 1;
                serde_json::json!({"error": format!("line {index}: {error}")})
            }
        };
        writeln!(out, "{output}").context("cannot write to stdout")?;
    }
    out.flush().context("cannot write to stdout")?;
    if failed > 0 {
        anyhow::bail!("{failed} of {judged} flows could not be judged");
    }
    Ok(())
}
