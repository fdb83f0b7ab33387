//! FlowIntents: loading, validation, and which flows break which rule.

mod judge_fixtures;

use std::{fs, path::PathBuf};

use judge_fixtures::{intents, ip, namespace, pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use observer::{
    intent::{
        FlowEnd, GROUP, IntentConfig, IntentIndex, IntentProblem, KIND, LoadedIntents, PLURAL, TierConfig, Tiers,
        VERSION,
    },
    inventory::{manifests, model::Protocol},
};

const AGENTS: &str = r#"
apiVersion: ai.governance/v1alpha1
kind: FlowIntent
metadata: {name: agents, namespace: ai, generation: 3, resourceVersion: "812"}
spec:
  subject: {tiers: [agent]}
  egress:
    forbid:
      - metadataService: true
      - apiServer: true
      - cidr: 10.0.0.0/8
        except: [10.1.0.0/16]
        ports: [{port: 5432}]
    onlyThrough:
      podSelector: {matchLabels: {app: egress-gateway}}
"#;

const MODEL_SERVING: &str = r#"
apiVersion: ai.governance/v1alpha1
kind: FlowIntent
metadata: {name: model-serving, namespace: ai}
spec:
  subject: {tiers: [model-serving]}
  egress:
    allow:
      - tiers: [vector-store]
        ports: [{port: 6333}]
      - namespaceSelector: {matchLabels: {team: shared}}
"#;

fn check(index: &IntentIndex, src: &FlowEnd<'_>, dst: &FlowEnd<'_>) -> Option<String> {
    index.check_egress(src, dst, Some(Protocol::TCP)).map(|violation| violation.rule.to_string())
}

#[test]
fn forbidden_peers_are_violations_with_rule_and_version() {
    let (index, errors) = intents(AGENTS, &[]);
    assert!(errors.is_empty(), "{errors:?}");
    let agent = pod("agent-1").tier("agent").ip("198.18.0.10").build();
    let src = FlowEnd::pod(&agent, ip("198.18.0.10"), Some(40000));
    let metadata = FlowEnd::world(ip("169.254.169.254"), Some(80));
    let violation = index.check_egress(&src, &metadata, Some(Protocol::TCP)).expect("metadata is forbidden");
    assert_eq!(&*violation.rule, "spec.egress.forbid[0]");
    assert_eq!((violation.intent.name.as_str(), violation.intent.generation), ("agents", Some(3)));
    assert_eq!(violation.intent.resource_version.as_deref(), Some("812"));
    assert!(violation.reason.contains("ai/agent-1 -> 169.254.169.254:80"), "{}", violation.reason);

    let api = FlowEnd::service("default", "kubernetes", ip("10.96.0.1"), Some(443));
    assert_eq!(check(&index, &src, &api).as_deref(), Some("spec.egress.forbid[1]"));
    // The CIDR rule holds only on its port and outside its exception.
    let db = |addr: &str, port| FlowEnd::address(observer::inventory::EndpointKind::Node, ip(addr), Some(port));
    assert_eq!(check(&index, &src, &db("10.2.0.5", 5432)).as_deref(), Some("spec.egress.forbid[2]"));
    assert_eq!(check(&index, &src, &db("10.2.0.5", 5433)), None);
    assert_eq!(check(&index, &src, &db("10.1.0.5", 5432)), None);
}

#[test]
fn egress_only_through_the_gateway() {
    let (index, _) = intents(AGENTS, &[]);
    let agent = pod("agent-1").tier("agent").build();
    let gateway = pod("gw-1").tier("agent").label("app", "egress-gateway").build();
    let src = FlowEnd::pod(&agent, ip("198.18.0.10"), None);
    let internet = FlowEnd::world(ip("203.0.113.7"), Some(443));
    assert_eq!(check(&index, &src, &internet).as_deref(), Some("spec.egress.onlyThrough"));
    let to_gateway = FlowEnd::pod(&gateway, ip("198.18.0.20"), Some(3128));
    assert_eq!(check(&index, &src, &to_gateway), None);
    // The gateway itself goes out, even though it is in the subject tier.
    let from_gateway = FlowEnd::pod(&gateway, ip("198.18.0.20"), None);
    assert_eq!(check(&index, &from_gateway, &internet), None);
}

#[test]
fn allow_lists_name_peers_by_tier_namespace_and_port() {
    let namespaces = [namespace("ai", &[]), namespace("shared", &[("team", "shared")]), namespace("other", &[])];
    let (index, _) = intents(MODEL_SERVING, &namespaces);
    let server = pod("llm-0").tier("model-serving").build();
    let store = pod("qdrant-0").tier("vector-store").build();
    let foreign_store = pod("qdrant-0").ns("other").tier("vector-store").build();
    let shared = pod("cache-0").ns("shared").build();
    let src = FlowEnd::pod(&server, ip("198.18.0.30"), None);
    assert_eq!(check(&index, &src, &FlowEnd::pod(&store, ip("198.18.0.31"), Some(6333))), None);
    assert_eq!(
        check(&index, &src, &FlowEnd::pod(&store, ip("198.18.0.31"), Some(22))).as_deref(),
        Some("spec.egress.allow")
    );
    // A tier peer without namespaceSelector is in the intent's namespace only.
    assert_eq!(
        check(&index, &src, &FlowEnd::pod(&foreign_store, ip("198.18.0.32"), Some(6333))).as_deref(),
        Some("spec.egress.allow")
    );
    assert_eq!(check(&index, &src, &FlowEnd::pod(&shared, ip("198.18.0.33"), Some(11211))), None);
    assert_eq!(check(&index, &src, &FlowEnd::service("shared", "cache", ip("10.96.3.3"), Some(11211))), None);
    assert_eq!(
        check(&index, &src, &FlowEnd::world(ip("203.0.113.9"), Some(443))).as_deref(),
        Some("spec.egress.allow")
    );
    // An end the inventory could not resolve is not judged against an allow list.
    let unknown = FlowEnd::address(observer::inventory::EndpointKind::Unknown, ip("198.18.9.9"), Some(80));
    assert_eq!(check(&index, &src, &unknown), None);
}

#[test]
fn subjects_are_scoped_by_tier_and_namespace() {
    let namespaces = [namespace("ai", &[]), namespace("lab", &[("ai.governance/tier", "agent")])];
    let (index, _) = intents(AGENTS, &namespaces);
    let internet = FlowEnd::world(ip("203.0.113.7"), Some(443));
    let web = pod("web-1").build();
    assert_eq!(check(&index, &FlowEnd::pod(&web, ip("198.18.0.1"), None), &internet), None, "no tier");
    // The namespace declares the tier, but the intent without namespaceSelector covers its own namespace only.
    let lab_agent = pod("agent-9").ns("lab").build();
    assert_eq!(index.tier_of(&lab_agent).map(|tier| tier.to_string()).as_deref(), Some("agent"));
    assert_eq!(check(&index, &FlowEnd::pod(&lab_agent, ip("198.18.0.2"), None), &internet), None);
    let everywhere = AGENTS.replace("subject: {tiers: [agent]}", "subject: {tiers: [agent], namespaceSelector: {}}");
    let (index, _) = intents(&everywhere, &namespaces);
    assert_eq!(
        check(&index, &FlowEnd::pod(&lab_agent, ip("198.18.0.2"), None), &internet).as_deref(),
        Some("spec.egress.onlyThrough")
    );
}

#[test]
fn configured_selectors_give_tiers() {
    let config: IntentConfig = serde_yaml::from_str(
        "tiers:\n  label_key: example.com/ai\n  selectors:\n  - tier: agent\n    pod_selector: {matchLabels: {app: langgraph}}\n",
    )
    .expect("valid config");
    let tiers = Tiers::new(&config.tiers).expect("valid tiers");
    let (index, errors) = IntentIndex::compile(&judge_fixtures::documents(AGENTS), &[], tiers, &config);
    assert!(errors.is_empty());
    let by_selector = pod("lg-1").label("app", "langgraph").build();
    let by_label = pod("x-1").label("example.com/ai", "agent").build();
    let default_label_ignored = pod("y-1").tier("agent").build();
    let internet = FlowEnd::world(ip("203.0.113.7"), Some(443));
    for (pod, expected) in [(&by_selector, true), (&by_label, true), (&default_label_ignored, false)] {
        let violation = index.check_egress(&FlowEnd::pod(pod, ip("198.18.0.1"), None), &internet, None);
        assert_eq!(violation.is_some(), expected, "{}", pod.name);
    }
    assert_eq!(TierConfig::default().label_key, "ai.governance/tier");
}

#[test]
fn invalid_intents_are_reported_by_field_and_the_rest_apply() {
    let yaml = format!(
        "{AGENTS}\n---\n{}\n---\n{}\n---\n{}\n---\n{}\n---\n{}\n---\n{}",
        "apiVersion: ai.governance/v1alpha1\nkind: FlowIntent\nmetadata: {name: bad-cidr, namespace: ai}\nspec:\n  egress:\n    forbid: [{cidr: 10.0.0.0/40}]",
        "apiVersion: ai.governance/v1alpha1\nkind: FlowIntent\nmetadata: {name: mixed, namespace: ai}\nspec:\n  egress:\n    allow: [{world: true, cidr: 1.2.3.0/24}]",
        "apiVersion: ai.governance/v1alpha1\nkind: FlowIntent\nmetadata: {name: empty, namespace: ai}\nspec:\n  subject: {tiers: [agent]}",
        "apiVersion: ai.governance/v1alpha1\nkind: FlowIntent\nmetadata: {name: fqdn, namespace: ai}\nspec:\n  egress:\n    allow: [{fqdn: 'api.*.com'}]",
        "apiVersion: ai.governance/v1alpha1\nkind: FlowIntent\nmetadata: {name: bad-op, namespace: ai}\nspec:\n  subject:\n    podSelector: {matchExpressions: [{key: a, operator: Gt, values: ['1']}]}\n  isolation: {ingress: true}",
        "apiVersion: ai.governance/v1alpha1\nkind: FlowIntent\nmetadata: {name: gateway, namespace: ai}\nspec:\n  egress:\n    onlyThrough: {world: true}",
    );
    let (index, errors) = intents(&yaml, &[]);
    assert_eq!(index.len(), 1);
    let found: Vec<(String, String)> = errors.iter().map(|error| (error.name.clone(), error.field.clone())).collect();
    assert_eq!(
        found,
        [
            ("bad-cidr", "spec.egress.forbid[0].cidr"),
            ("mixed", "spec.egress.allow[0]"),
            ("empty", "spec"),
            ("fqdn", "spec.egress.allow[0].fqdn"),
            ("bad-op", "spec.subject.podSelector"),
            ("gateway", "spec.egress.onlyThrough"),
        ]
        .map(|(name, field)| (name.to_owned(), field.to_owned()))
    );
    assert!(matches!(errors[1].problem, IntentProblem::MixedPeer { .. }));
    assert_eq!(errors[2].problem, IntentProblem::NoRule);
    assert!(matches!(&errors[3].problem, IntentProblem::Fqdn { value, .. } if value == "api.*.com"));
    assert_eq!(
        errors[0].to_string(),
        "FlowIntent ai/bad-cidr: spec.egress.forbid[0].cidr: invalid CIDR \"10.0.0.0/40\": prefix length must be 0-32 for IPv4 or 0-128 for IPv6"
    );
}

#[test]
fn intents_load_from_manifests_with_file_and_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("intents.yaml");
    let text = format!(
        "{}\n---\n{}\n---\n{}\n",
        AGENTS.trim(),
        "apiVersion: ai.governance/v1alpha1\nkind: FlowIntent\nmetadata: {name: typo, namespace: ai}\nspec:\n  egres: {}",
        "apiVersion: ai.governance/v1alpha1\nkind: FlowIntent\nmetadata: {name: zero, namespace: ai}\nspec:\n  maxNewConnectionsPerMinute: 0",
    );
    fs::write(&file, &text).expect("write");
    // Documents start two lines above their metadata (positions count from 0, lines from 1).
    let start = |name: &str| text.lines().position(|line| line.contains(name)).expect("present") - 1;
    let loaded = manifests::load(&[file]);
    // A misspelt field is refused when parsing, naming the document.
    assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
    assert!(loaded.errors[0].message.contains("unknown field `egres`"), "{}", loaded.errors[0]);
    assert_eq!(loaded.errors[0].origin.line, start("name: typo"));
    let intents = LoadedIntents::from_manifests(&loaded);
    let (index, errors) = IntentIndex::compile(&intents.intents, &[], Tiers::default(), &IntentConfig::default());
    assert_eq!(index.len(), 1);
    let origin = intents.origin(errors[0].index).expect("origin");
    assert_eq!((origin.line, errors[0].field.as_str()), (start("name: zero"), "spec.maxNewConnectionsPerMinute"));
}

fn repo_path(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

#[test]
fn crd_matches_the_resource_and_examples_are_valid() {
    let text = fs::read_to_string(repo_path("deploy/crds/flowintent.yaml")).expect("CRD file");
    assert_eq!(
        text,
        observer::intent::crd_yaml().expect("renders"),
        "deploy/crds/flowintent.yaml is not what the Rust type generates: run `cargo xtask deploy`"
    );
    let crd: CustomResourceDefinition = serde_yaml::from_str(&text).expect("a CustomResourceDefinition");
    assert_eq!(crd.spec.group, GROUP);
    assert_eq!(crd.spec.names.kind, KIND);
    assert_eq!(crd.spec.names.plural, PLURAL);
    assert_eq!(crd.spec.versions[0].name, VERSION);
    assert_eq!(crd.metadata.name.as_deref(), Some(format!("{PLURAL}.{GROUP}").as_str()));
    let schema = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
    let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
    for field in ["subject", "egress", "isolation", "maxNewConnectionsPerMinute", "description"] {
        assert!(spec.get(field).is_some(), "schema lacks spec.{field}");
    }
    let peer = &spec["egress"]["properties"]["forbid"]["items"]["properties"];
    for field in [
        "podSelector",
        "namespaceSelector",
        "tiers",
        "cidr",
        "except",
        "fqdn",
        "provider",
        "world",
        "metadataService",
        "apiServer",
        "ports",
    ] {
        assert!(peer.get(field).is_some(), "schema lacks peer.{field}");
    }
    assert!(!schema.to_string().contains("$ref"), "structural schemas may not use $ref");
    // What the hand-written CRD validated stays validated.
    let version = &crd.spec.versions[0];
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["fi".to_owned()][..]));
    let columns: Vec<(&str, &str)> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|column| (column.name.as_str(), column.json_path.as_str()))
        .collect();
    assert_eq!(columns, [("Tiers", ".spec.subject.tiers"), ("Age", ".metadata.creationTimestamp")]);
    let root = &schema["openAPIV3Schema"];
    assert_eq!(root["required"], serde_json::json!(["spec"]));
    assert_eq!(
        root["properties"]["spec"]["anyOf"],
        serde_json::json!([{"required": ["egress"]}, {"required": ["isolation"]}, {"required": ["maxNewConnectionsPerMinute"]}])
    );
    assert_eq!(spec["maxNewConnectionsPerMinute"]["minimum"], 1.0);
    assert_eq!(spec["subject"]["properties"]["tiers"]["items"]["maxLength"], 63);
    assert_eq!(peer["fqdn"]["maxLength"], 253);
    assert!(peer["fqdn"]["pattern"].is_string());
    assert_eq!(peer["world"]["enum"], serde_json::json!([true]));
    assert_eq!(peer["ports"]["items"]["properties"]["port"]["maximum"], 65535.0);
    assert_eq!(peer["ports"]["items"]["properties"]["protocol"]["enum"], serde_json::json!(["TCP", "UDP", "SCTP"]));
    let operator = &peer["podSelector"]["properties"]["matchExpressions"]["items"]["properties"]["operator"];
    assert_eq!(operator["enum"], serde_json::json!(["In", "NotIn", "Exists", "DoesNotExist"]));
    assert_eq!(peer["podSelector"]["x-kubernetes-map-type"], "atomic");

    let loaded = manifests::load(&[repo_path("deploy/examples/intents")]);
    assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    let intents = LoadedIntents::from_manifests(&loaded);
    let (index, errors) = IntentIndex::compile(&intents.intents, &[], Tiers::default(), &IntentConfig::default());
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(index.len(), 3);
}

#[test]
fn enriched_endpoints_map_to_flow_ends() {
    let (index, _) = intents(AGENTS, &[]);
    let agent = pod("agent-1").tier("agent").owner("ReplicaSet", "agent-7d9").build();
    let endpoint = agent
        .endpoint(observer::inventory::WorkloadRef { kind: "Deployment".to_owned(), name: "agent".to_owned() }, &[]);
    let src = FlowEnd::from_endpoint(&endpoint, Some(&agent), ip("198.18.0.10"), Some(40000));
    assert_eq!(src.workload.map(|workload| workload.kind), Some("Deployment"));
    let world = observer::inventory::Endpoint::world();
    let dst = FlowEnd::from_endpoint(&world, None, ip("203.0.113.7"), Some(443));
    assert_eq!(check(&index, &src, &dst).as_deref(), Some("spec.egress.onlyThrough"));
}

const FQDN_AGENTS: &str = r#"
apiVersion: ai.governance/v1alpha1
kind: FlowIntent
metadata: {name: agent-apis, namespace: ai}
spec:
  subject: {tiers: [agent]}
  egress:
    forbid:
      - fqdn: uploads.example.com
    allow:
      - fqdn: "*.example.com"
        ports: [{port: 443}]
      - fqdn: API.Partner.net.
"#;

#[test]
fn fqdn_rules_judge_egress_by_the_names_the_pod_resolved() {
    let (index, errors) = intents(FQDN_AGENTS, &[]);
    assert!(errors.is_empty(), "{errors:?}");
    let agent = pod("agent-1").tier("agent").ip("198.18.0.10").build();
    let src = FlowEnd::pod(&agent, ip("198.18.0.10"), Some(40000));
    let names = |list: &[&str]| -> Vec<std::sync::Arc<str>> { list.iter().map(|name| (*name).into()).collect() };
    let world = |port| FlowEnd::world(ip("203.0.113.20"), Some(port));
    let (api, partner, uploads, other) =
        (names(&["api.example.com"]), names(&["api.partner.net"]), names(&["uploads.example.com"]), names(&["x.org"]));
    assert_eq!(check(&index, &src, &world(443).with_names(&api)), None);
    assert_eq!(check(&index, &src, &world(80).with_names(&partner)), None);
    // The allow rule holds on its port only.
    assert_eq!(check(&index, &src, &world(80).with_names(&api)).as_deref(), Some("spec.egress.allow"));
    // Deny wins over allow.
    let denied = index.check_egress(&src, &world(443).with_names(&uploads), None).expect("forbidden");
    assert_eq!(&*denied.rule, "spec.egress.forbid[0]");
    assert!(denied.reason.contains("fqdn uploads.example.com"), "{}", denied.reason);
    assert!(denied.reason.contains("uploads.example.com)"), "{}", denied.reason);
    assert_eq!(check(&index, &src, &world(443).with_names(&other)).as_deref(), Some("spec.egress.allow"));
    // Never resolved: a direct-IP connection, said so in the reason.
    let direct = index.check_egress(&src, &world(443).with_names(&[]), None).expect("direct-IP is not allowed");
    assert!(direct.reason.contains("never resolved by name (direct-IP)"), "{}", direct.reason);
    // The flow record's `dns` field maps onto the end.
    let record_dns = observer::flow::PeerDns { names: api.clone(), resolved: true };
    assert_eq!(check(&index, &src, &world(443).with_dns(Some(&record_dns))), None);
}

const PROVIDER_AGENTS: &str = r#"
apiVersion: ai.governance/v1alpha1
kind: FlowIntent
metadata: {name: agent-providers, namespace: ai}
spec:
  subject: {tiers: [agent]}
  egress:
    forbid:
      - provider: deepseek
    allow:
      - provider: openai
        ports: [{port: 443}]
      - provider: acme-llm
"#;

#[test]
fn provider_rules_judge_egress_by_the_catalog_provider() {
    use observer::ai::{AiDestination, AiKind, AiVia, Catalog, CatalogConfig};

    let intents: Vec<observer::intent::FlowIntent> = judge_fixtures::documents(PROVIDER_AGENTS);
    // The shipped catalog has no `acme-llm`: refused, naming the field and the providers known.
    let (index, errors) = IntentIndex::compile(&intents, &[], Tiers::default(), &IntentConfig::default());
    assert_eq!((index.len(), errors.len()), (0, 1), "{errors:?}");
    assert_eq!(errors[0].field, "spec.egress.allow[1].provider");
    let message = errors[0].to_string();
    assert!(message.contains("unknown AI provider \"acme-llm\": the catalog knows openai, azure-openai"), "{message}");
    // A catalog extended by configuration knows it.
    let config: CatalogConfig =
        serde_yaml::from_str("providers: [{name: acme-llm, kind: llm-api, patterns: [llm.acme.example]}]")
            .expect("yaml");
    let catalog = Catalog::build(&config).expect("catalog");
    let (index, errors) =
        IntentIndex::compile_with_catalog(&intents, &[], Tiers::default(), &IntentConfig::default(), &catalog);
    assert!(errors.is_empty(), "{errors:?}");
    let agent = pod("agent-1").tier("agent").ip("198.18.0.10").build();
    let src = FlowEnd::pod(&agent, ip("198.18.0.10"), Some(40000));
    let names: Vec<std::sync::Arc<str>> = vec!["api.openai.com".into()];
    let to = |provider: &str, via| AiDestination { provider: provider.into(), kind: AiKind::LlmApi, via, name: None };
    let (openai, deepseek, direct) =
        (to("openai", AiVia::Dns), to("deepseek", AiVia::Dns), to("openai", AiVia::Address));
    let world = |port| FlowEnd::world(ip("203.0.113.20"), Some(port));
    assert_eq!(check(&index, &src, &world(443).with_names(&names).with_ai(Some(&openai))), None);
    // Reached directly at an address resolved for an openai name: still openai.
    assert_eq!(check(&index, &src, &world(443).with_names(&[]).with_ai(Some(&direct))), None);
    // The allow rule holds on its port only.
    assert_eq!(
        check(&index, &src, &world(80).with_names(&names).with_ai(Some(&openai))).as_deref(),
        Some("spec.egress.allow")
    );
    let forbidden = index.check_egress(&src, &world(443).with_ai(Some(&deepseek)), None).expect("forbidden");
    assert_eq!(&*forbidden.rule, "spec.egress.forbid[0]");
    assert!(forbidden.reason.contains("AI provider deepseek"), "{}", forbidden.reason);
    // A world end that is no catalog endpoint is no provider.
    assert_eq!(check(&index, &src, &world(443).with_names(&names)).as_deref(), Some("spec.egress.allow"));
}
