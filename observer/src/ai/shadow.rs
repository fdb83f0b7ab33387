//! The AI watch of the judge stage: provider egress metrics and `shadow-ai`
//! findings.
//!
//! In: each judged record of a flow to a catalog endpoint (`dst.ai_provider`
//! set by enrich) on the node of its source, with the source end and the
//! tier the judge gave it. Out: the provider egress counted per source
//! workload and provider (tiered or not), and for a workload with no AI tier
//! that configuration does not exempt, a `shadow-ai` [`Finding`] per
//! workload and provider whose evidence (names, direct-IP addresses, pods,
//! connections, bytes each way) accumulates over its connections. Bounded:
//! at most `ai.max_tracked` (workload, provider) pairs are accumulated, the
//! least recently seen forgotten.

use std::{collections::HashSet, sync::Arc};

use super::{AiConfig, AiVia, ExemptConfig};
use crate::{
    anomaly::lru::Lru,
    findings::{AiEvidence, DirectIp, Finding},
    flow::FlowRecord,
    intent::{FlowEnd, Tier},
    inventory::EndpointKind,
    metrics::{Metrics, providers::ProviderLabels},
    policy::{Problem, Selector},
};

/// Most names, addresses and pods kept in one finding's evidence.
const MAX_LISTED: usize = 8;

/// Why the AI watch could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    /// `ai.exempt.pod_selector` is not a valid label selector.
    #[error("ai.exempt.pod_selector: {0}")]
    Selector(#[source] Problem),
}

/// Who is exempt, compiled.
#[derive(Debug, Default)]
struct Exempt {
    namespaces: HashSet<String>,
    workloads: HashSet<(String, String)>,
    pods: Option<Selector>,
}

impl Exempt {
    fn compile(config: &ExemptConfig) -> Result<Self, ShadowError> {
        Ok(Self {
            namespaces: config.namespaces.iter().cloned().collect(),
            workloads: config.workloads.iter().map(|w| (w.namespace.clone(), w.name.clone())).collect(),
            pods: config
                .pod_selector
                .as_ref()
                .map(|selector| Selector::compile(Some(selector)))
                .transpose()
                .map_err(ShadowError::Selector)?,
        })
    }

    fn covers(&self, src: &FlowEnd<'_>) -> bool {
        let namespace = src.namespace.unwrap_or_default();
        self.namespaces.contains(namespace)
            || src
                .workload
                .is_some_and(|workload| self.workloads.contains(&(namespace.to_owned(), workload.name.to_owned())))
            || self.pods.as_ref().is_some_and(|selector| src.pod.is_some_and(|pod| selector.matches(&pod.labels)))
    }
}

/// What the watch says of one record.
#[derive(Debug)]
pub struct ShadowReport {
    /// The workload's finding, with the evidence so far.
    pub finding: Finding,
    /// Whether the record opened a connection (counted in the finding and
    /// in `findings_total`); else it only updates the evidence.
    pub new_connection: bool,
}

/// The watch. One per judge stage.
#[derive(Debug)]
pub struct ShadowAi {
    exempt: Exempt,
    tracked: Lru<(Arc<str>, Arc<str>), AiEvidence>,
}

fn insert_sorted<T: Ord>(list: &mut Vec<T>, item: T) {
    if let Err(at) = list.binary_search(&item)
        && list.len() < MAX_LISTED
    {
        list.insert(at, item);
    }
}

impl ShadowAi {
    /// A watch with the exemptions and bounds of `config`.
    pub fn new(config: &AiConfig) -> Result<Self, ShadowError> {
        Ok(Self { exempt: Exempt::compile(&config.exempt)?, tracked: Lru::new(config.max_tracked) })
    }

    /// Counts a record of a flow from `src` to `dst`, the source's tier
    /// being `tier`, in `metrics`; returns the `shadow-ai` finding it makes.
    /// Records without `dst.ai_provider`, from anything but a pod, or not
    /// on the source's node are left alone.
    pub fn observe(
        &mut self,
        record: &FlowRecord,
        src: &FlowEnd<'_>,
        dst: &FlowEnd<'_>,
        tier: Option<&Tier>,
        metrics: Option<&Metrics>,
    ) -> Option<ShadowReport> {
        let ai = record.dst.ai.as_ref()?;
        let (EndpointKind::Pod, Some(namespace), Some(workload)) = (src.kind, src.namespace, src.workload) else {
            return None;
        };
        let new_connection = record.progress.first;
        let (sent, received) = (record.progress.new_to_dst.bytes, record.progress.new_to_src.bytes);
        if let Some(metrics) = metrics {
            let labels = ProviderLabels {
                namespace: namespace.into(),
                workload: workload.name.into(),
                tier: tier.map_or("", |tier| tier.as_str()).into(),
                provider: Arc::clone(&ai.provider),
            };
            metrics.record_provider_egress(&labels, sent, received, new_connection);
        }
        if tier.is_some() || self.exempt.covers(src) {
            return None;
        }
        let source: Arc<str> = format!("{namespace}/{}/{}", workload.kind, workload.name).into();
        let key = (Arc::clone(&source), Arc::clone(&ai.provider));
        let make =
            || AiEvidence { provider: Arc::clone(&ai.provider), kind: ai.kind.as_str(), ..AiEvidence::default() };
        let evidence = self.tracked.get_or_insert_with(&key, make)?.value;
        evidence.connections += u64::from(new_connection);
        evidence.bytes_sent += sent;
        evidence.bytes_received += received;
        if let Some(pod) = src.pod_name {
            insert_sorted(&mut evidence.pods, pod.to_owned());
        }
        let reached = match (ai.via, &ai.name, &record.dst.dns) {
            (AiVia::Address, Some(name), _) => {
                insert_sorted(&mut evidence.direct_ip, DirectIp { ip: record.dst.ip, name: Arc::clone(name) });
                format!(
                    "connected directly to {}, an address another pod on the node resolved for {name}",
                    record.dst.ip
                )
            }
            (_, _, Some(dns)) => {
                for name in &dns.names {
                    insert_sorted(&mut evidence.names, Arc::clone(name));
                }
                let names: Vec<&str> = dns.names.iter().map(|name| &**name).collect();
                format!("called {}", names.join("|"))
            }
            _ => format!("called {}", record.dst.ip),
        };
        let reason = format!(
            "{source} has no AI tier and {reached} ({} {}): {} connections, {} bytes sent, {} received so far",
            ai.provider,
            ai.kind.as_str(),
            evidence.connections,
            evidence.bytes_sent,
            evidence.bytes_received
        );
        let finding = Finding::shadow_ai(src, dst, evidence.clone(), reason);
        Some(ShadowReport { finding, new_connection })
    }
}

#[cfg(test)]
mod tests {
    use std::{net::IpAddr, time::SystemTime};

    use super::*;
    use crate::{
        ai::{AiDestination, AiKind},
        flow::{PeerDns, Progress, RecordEvent, Traffic},
        inventory::model::Pod,
        metrics::MetricsConfig,
        testing as fixtures,
    };

    fn pod(name: &str, namespace: &str, labels: &[(&str, &str)]) -> Pod {
        let mut pod = fixtures::pod(name).ns(namespace).ip("198.18.0.10").owner("Deployment", "billing");
        for (key, value) in labels {
            pod = pod.label(key, value);
        }
        pod.build()
    }

    fn record(first: bool, via: AiVia, sent: u64, received: u64) -> FlowRecord {
        let (dns, name) = match via {
            AiVia::Dns => (PeerDns { names: vec![Arc::from("api.openai.com")], resolved: true }, None),
            AiVia::Address => (PeerDns { names: Vec::new(), resolved: false }, Some(Arc::from("api.openai.com"))),
        };
        let event = if first { RecordEvent::Start } else { RecordEvent::Update };
        let mut record = fixtures::tcp_record("198.18.0.10:40000", "203.0.113.10:443", event, SystemTime::now());
        record.dst.dns = Some(dns);
        record.dst.ai = Some(AiDestination { provider: Arc::from("openai"), kind: AiKind::LlmApi, via, name });
        record.progress = Progress {
            flow: 1,
            first,
            new_to_dst: Traffic { packets: 1, bytes: sent },
            new_to_src: Traffic { packets: 1, bytes: received },
        };
        record
    }

    #[test]
    fn untiered_workloads_make_one_finding_per_provider_with_accumulated_evidence() {
        let metrics = Metrics::new(MetricsConfig::default(), &crate::health::Health::default());
        let mut watch = ShadowAi::new(&AiConfig::default()).expect("watch");
        let (first, second) = (pod("billing-1", "shop", &[]), pod("billing-2", "shop", &[]));
        let world = FlowEnd::world(IpAddr::from([203, 0, 113, 10]), Some(443));
        fn end(pod: &Pod) -> FlowEnd<'_> {
            FlowEnd::pod(pod, pod.ips[0], Some(40_000)).with_workload("Deployment", "billing")
        }
        let opened = watch.observe(&record(true, AiVia::Dns, 100, 1000), &end(&first), &world, None, Some(&metrics));
        let opened = opened.expect("a finding");
        assert!(opened.new_connection);
        assert_eq!(opened.finding.rule, "shadow-ai:openai");
        let later = watch.observe(&record(false, AiVia::Dns, 50, 500), &end(&first), &world, None, Some(&metrics));
        assert!(!later.expect("evidence updated").new_connection);
        let direct = watch.observe(&record(true, AiVia::Address, 10, 20), &end(&second), &world, None, Some(&metrics));
        let direct = direct.expect("a direct-IP connection is caught");
        assert_eq!(direct.finding.key, opened.finding.key, "the same workload and provider");
        let json = serde_json::to_value(&direct.finding).expect("json");
        assert_eq!(json["kind"], "shadow-ai");
        let ai = &json["evidence"]["ai"];
        assert_eq!(ai["provider"], "openai");
        assert_eq!(ai["kind"], "llm-api");
        assert_eq!(ai["names"], serde_json::json!(["api.openai.com"]));
        assert_eq!(ai["direct_ip"], serde_json::json!([{"ip": "203.0.113.10", "name": "api.openai.com"}]));
        assert_eq!(ai["pods"], serde_json::json!(["billing-1", "billing-2"]));
        assert_eq!((ai["connections"].as_u64(), ai["bytes_sent"].as_u64()), (Some(2), Some(160)));
        assert_eq!(ai["bytes_received"], 1520);
        assert!(json["reason"].as_str().is_some_and(|reason| reason.contains("connected directly to 203.0.113.10")));
        let text = metrics.encode();
        let labels = r#"namespace="shop",workload="billing",tier="",provider="openai""#;
        assert!(text.contains(&format!("flow_observer_ai_provider_connections_total{{{labels}}} 2\n")), "{text}");
        assert!(text.contains(&format!("flow_observer_ai_provider_bytes_total{{{labels},direction=\"sent\"}} 160\n")));
    }

    #[test]
    fn tiered_and_exempt_workloads_are_counted_but_no_finding() {
        let metrics = Metrics::new(MetricsConfig::default(), &crate::health::Health::default());
        let config: AiConfig = serde_yaml::from_str(
            "exempt: {namespaces: [research], workloads: [{namespace: shop, name: billing}], pod_selector: {matchLabels: {ai-allowed: \"yes\"}}}",
        )
        .expect("config");
        let mut watch = ShadowAi::new(&config).expect("watch");
        let world = FlowEnd::world(IpAddr::from([203, 0, 113, 10]), Some(443));
        let agent = pod("agent-1", "ai", &[]);
        let tier = Tier::new("agent").expect("tier");
        let agent_end = FlowEnd::pod(&agent, agent.ips[0], None).with_workload("Deployment", "agent");
        let record = record(true, AiVia::Dns, 1, 1);
        assert!(watch.observe(&record, &agent_end, &world, Some(&tier), Some(&metrics)).is_none());
        for (pod, workload) in [
            (pod("nb-1", "research", &[]), "nb"),
            (pod("billing-1", "shop", &[]), "billing"),
            (pod("tool-1", "shop", &[("ai-allowed", "yes")]), "tool"),
        ] {
            let end = FlowEnd::pod(&pod, pod.ips[0], None).with_workload("Deployment", workload);
            assert!(watch.observe(&record, &end, &world, None, Some(&metrics)).is_none(), "{workload} is exempt");
        }
        let other = pod("web-1", "shop", &[]);
        let end = FlowEnd::pod(&other, other.ips[0], None).with_workload("Deployment", "web");
        assert!(watch.observe(&record, &end, &world, None, Some(&metrics)).is_some());
        let text = metrics.encode();
        assert!(text.contains(r#"flow_observer_ai_provider_connections_total{namespace="ai",workload="agent",tier="agent",provider="openai"} 1"#), "{text}");
        assert!(text.contains(r#"flow_observer_ai_provider_connections_total{namespace="research",workload="nb",tier="",provider="openai"} 1"#), "{text}");
        let bad =
            serde_yaml::from_str::<AiConfig>("exempt: {pod_selector: {matchExpressions: [{key: a, operator: Near}]}}")
                .expect("parses");
        assert!(ShadowAi::new(&bad).is_err());
    }
}
