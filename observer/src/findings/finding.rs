//! One finding: something about AI-tier traffic that someone should look at.
//!
//! In: a flow's [`FlowVerdict`] with its [`JudgeInput`], an [`Unprotected`]
//! pod, or a [`Spike`] with the flow that set it off. Out: a [`Finding`] that
//! names the pods, workloads, tier, rule and evidence in owned, serializable
//! form, and the key under which repeats of it are counted.

use std::{net::IpAddr, sync::Arc};

use crate::{
    anomaly::{AfterRollout, Baseline, EdgeKey, Signal, Spike},
    flow::{FlowState, Traffic},
    intent::{FlowEnd, Tier, WorkloadName},
    inventory::{EndpointKind, WorkloadRef},
    judge::{Delivery, FlowVerdict, IntentCite, JudgeInput, PolicyCite, Unprotected, VerdictKind},
};

/// What kind of finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FindingKind {
    /// Policies deny a flow that was never delivered.
    DeniedAttempt,
    /// Policies deny a flow that was delivered.
    EnforcementGap,
    /// An intent forbids a flow that policies allow.
    IntentViolation,
    /// An AI-tier pod that policies do not isolate as required.
    Unprotected,
    /// An edge whose rate left its baseline.
    Spike,
    /// A connection allowed when it opened, still open after a policy change
    /// that denies it: most network plugins keep established connections.
    OutlivedPolicy,
    /// A workload with no AI tier (and not exempted) that calls an AI
    /// provider API or model hub of the catalog.
    ShadowAi,
}

/// One end named in a finding.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Party {
    /// What is there.
    pub kind: EndpointKind,
    /// Namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Pod name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Pod uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// Workload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
    /// Service name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// AI tier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<Tier>,
}

impl Party {
    /// A flow end with its tier.
    pub fn of(end: &FlowEnd<'_>, tier: Option<Tier>) -> Self {
        Self {
            kind: end.kind,
            namespace: end.namespace.map(str::to_owned),
            pod: end.pod_name.map(str::to_owned),
            uid: end.uid.map(str::to_owned),
            workload: end.workload.map(WorkloadName::to_ref),
            service: end.service.map(str::to_owned),
            ip: Some(end.ip),
            tier,
        }
    }
}

/// The spike part of the evidence.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct SpikeEvidence {
    /// Which signal.
    pub signal: Signal,
    /// Count in the window.
    pub observed: u64,
    /// What the recent baseline expected.
    pub expected: f64,
    /// What the seasonal baseline expected, when it took part.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seasonal_expected: Option<f64>,
    /// Standard deviations above the recent baseline (log scale).
    pub score: f64,
    /// Window length in seconds.
    pub window_seconds: u64,
    /// Which recent baseline: `own`, or `previous-revision` while the
    /// revisions running now have not warmed up their own.
    pub baseline: Baseline,
}

/// What was observed, as of the latest occurrence.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Evidence {
    /// The flow's state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<FlowState>,
    /// Whether it was delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// Traffic from source to destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_dst: Option<Traffic>,
    /// Traffic back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_src: Option<Traffic>,
    /// Isolation of an unprotected pod: `{ingress, egress}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub isolated: Option<Isolated>,
    /// The spike.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub spike: Option<SpikeEvidence>,
    /// When the flow started (RFC 3339): for a connection that outlived a policy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flow_started: Option<String>,
    /// The rollout of the source or destination workload a spike followed
    /// within `spikes.after_rollout_seconds`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_rollout: Option<AfterRollout>,
    /// The AI provider a `shadow-ai` workload called, and what it sent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ai: Option<AiEvidence>,
}

/// What a workload did with an AI provider, accumulated over its
/// connections while the finding is remembered.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct AiEvidence {
    /// The catalog provider.
    pub provider: Arc<str>,
    /// `llm-api` or `model-hub`.
    pub kind: &'static str,
    /// The catalog names its pods resolved and connected to (at most 8).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<Arc<str>>,
    /// Addresses it connected to directly, never resolving them, that
    /// another pod had resolved for a catalog name (at most 8), with that name.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub direct_ip: Vec<DirectIp>,
    /// Its pods that did (at most 8).
    pub pods: Vec<String>,
    /// Connections opened.
    pub connections: u64,
    /// Payload bytes sent to the provider.
    pub bytes_sent: u64,
    /// Payload bytes received from it.
    pub bytes_received: u64,
}

/// A direct-IP connection to an address resolved elsewhere for a catalog name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct DirectIp {
    /// The address.
    pub ip: IpAddr,
    /// The catalog name another pod resolved to it.
    pub name: Arc<str>,
}

/// Which directions a pod is isolated for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Isolated {
    /// By an Ingress policy.
    pub ingress: bool,
    /// By an Egress policy.
    pub egress: bool,
}

/// A finding.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Finding {
    /// What kind.
    pub kind: FindingKind,
    /// The rule: the deciding policies (`ns/name,...`), the intent rule
    /// (`ns/name spec.egress.forbid[0]`), `isolation`, or the spike's signal.
    pub rule: String,
    /// Why, in words.
    pub reason: String,
    /// The source pod, or the unprotected pod.
    pub source: Party,
    /// The destination; absent for an unprotected pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Party>,
    /// Destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Transport protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// The deciding policies with their versions.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyCite>,
    /// The intent rule with its version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentCite>,
    /// What was observed.
    pub evidence: Evidence,
    /// Key under which repeats are counted.
    #[serde(skip)]
    pub(crate) key: FindingKey,
}

/// What makes two findings the same: kind, rule, source workload, destination, port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct FindingKey {
    kind: FindingKind,
    rule: Arc<str>,
    edge: EdgeKey,
}

fn intent_rule(intent: &IntentCite) -> String {
    format!("{} {}", intent.intent, intent.rule)
}

impl Finding {
    /// The finding a flow verdict makes; `None` for an allowed flow and for
    /// an undecidable one (the policies neither allow nor deny it, so there
    /// is nothing to act on; its verdict and the `verdicts` metric say so).
    pub fn from_flow(verdict: &FlowVerdict, input: &JudgeInput<'_>) -> Option<Self> {
        let kind = match verdict.verdict {
            VerdictKind::Allowed | VerdictKind::Undecidable => return None,
            VerdictKind::DeniedAttempt => FindingKind::DeniedAttempt,
            VerdictKind::EnforcementGap => FindingKind::EnforcementGap,
            VerdictKind::IntentViolation => FindingKind::IntentViolation,
        };
        let rule = match (kind, &verdict.intent) {
            (FindingKind::IntentViolation, Some(intent)) => intent_rule(intent),
            _ => {
                let names: Vec<String> = verdict.policies.iter().map(|policy| policy.0.to_string()).collect();
                names.join(",")
            }
        };
        let edge = EdgeKey::between(&input.src, &input.dst);
        Some(Self {
            key: FindingKey { kind, rule: rule.as_str().into(), edge },
            kind,
            rule,
            reason: verdict.reason.clone(),
            source: Party::of(&input.src, verdict.src_tier.clone()),
            destination: Some(Party::of(&input.dst, verdict.dst_tier.clone())),
            port: input.dst.port,
            protocol: Some(input.protocol.name().into_owned()),
            policies: verdict.policies.clone(),
            intent: verdict.intent.clone(),
            evidence: Evidence {
                state: Some(input.state),
                delivery: Some(verdict.delivery),
                to_dst: Some(input.to_dst),
                to_src: Some(input.to_src),
                ..Evidence::default()
            },
        })
    }

    /// The finding of a flow that started under policies allowing it and is
    /// still open under policies that deny it (`now`, with the policies that
    /// now deny it): one per edge and set of denying policy versions.
    pub fn outlived(now: &FlowVerdict, input: &JudgeInput<'_>) -> Self {
        let names: Vec<String> = now.policies.iter().map(|policy| policy.0.to_string()).collect();
        let rule = names.join(",");
        // Another change of the denying policies is another finding.
        let versions: Vec<String> = now
            .policies
            .iter()
            .map(|policy| format!("{}@{}", policy.0, policy.0.resource_version.as_deref().unwrap_or("")))
            .collect();
        let edge = EdgeKey::between(&input.src, &input.dst);
        let started = crate::flow::rfc3339(input.first_seen);
        Self {
            key: FindingKey { kind: FindingKind::OutlivedPolicy, rule: versions.join(",").into(), edge },
            kind: FindingKind::OutlivedPolicy,
            reason: format!(
                "a connection allowed when it started ({started}) is still open after a policy change that denies it ({rule}): {}",
                now.reason
            ),
            rule,
            source: Party::of(&input.src, now.src_tier.clone()),
            destination: Some(Party::of(&input.dst, now.dst_tier.clone())),
            port: input.dst.port,
            protocol: Some(input.protocol.name().into_owned()),
            policies: now.policies.clone(),
            intent: None,
            evidence: Evidence {
                state: Some(input.state),
                delivery: Some(now.delivery),
                to_dst: Some(input.to_dst),
                to_src: Some(input.to_src),
                flow_started: Some(started),
                ..Evidence::default()
            },
        }
    }

    /// The finding of an unprotected pod; `workload` names its workload when
    /// enrichment knows it.
    pub fn unprotected(pod: &Unprotected, workload: Option<WorkloadRef>) -> Self {
        let rule = match pod.required_by.first() {
            Some(intent) => format!("{intent} spec.isolation"),
            None => "isolation".to_owned(),
        };
        let source_name = match &workload {
            Some(workload) => format!("{}/{}/{}", pod.namespace, workload.kind, workload.name),
            None => format!("{}/{}", pod.namespace, pod.pod),
        };
        Self {
            key: FindingKey {
                kind: FindingKind::Unprotected,
                rule: rule.as_str().into(),
                edge: EdgeKey { source: source_name.into(), destination: "".into(), port: 0 },
            },
            kind: FindingKind::Unprotected,
            rule,
            reason: pod.reason.clone(),
            source: Party {
                kind: EndpointKind::Pod,
                namespace: Some(pod.namespace.clone()),
                pod: Some(pod.pod.clone()),
                uid: Some(pod.uid.clone()),
                workload,
                service: None,
                ip: None,
                tier: Some(pod.tier.clone()),
            },
            destination: None,
            port: None,
            protocol: None,
            policies: Vec::new(),
            intent: None,
            evidence: Evidence {
                isolated: Some(Isolated { ingress: pod.ingress_isolated, egress: pod.egress_isolated }),
                ..Evidence::default()
            },
        }
    }

    /// The finding of a workload with no AI tier that called an AI provider:
    /// `src` is the latest flow's source, `dst` its destination, `reason`
    /// says what was seen; one per workload and provider.
    pub fn shadow_ai(src: &FlowEnd<'_>, dst: &FlowEnd<'_>, evidence: AiEvidence, reason: String) -> Self {
        let rule = format!("shadow-ai:{}", evidence.provider);
        let source: Arc<str> = match (src.namespace, src.workload) {
            (Some(namespace), Some(workload)) => format!("{namespace}/{}/{}", workload.kind, workload.name).into(),
            _ => src.ip.to_string().into(),
        };
        Self {
            key: FindingKey {
                kind: FindingKind::ShadowAi,
                rule: rule.as_str().into(),
                edge: EdgeKey { source, destination: Arc::clone(&evidence.provider), port: 0 },
            },
            kind: FindingKind::ShadowAi,
            rule,
            reason,
            source: Party::of(src, None),
            destination: Some(Party::of(dst, None)),
            port: dst.port,
            protocol: None,
            policies: Vec::new(),
            intent: None,
            evidence: Evidence { ai: Some(evidence), ..Evidence::default() },
        }
    }

    /// The finding of a spike set off by a flow from `src` to `dst`.
    pub fn spike(spike: &Spike, src: &FlowEnd<'_>, dst: &FlowEnd<'_>, tiers: (Option<Tier>, Option<Tier>)) -> Self {
        let rule = format!("spike:{}", spike.signal.as_str());
        Self {
            key: FindingKey { kind: FindingKind::Spike, rule: rule.as_str().into(), edge: spike.edge.clone() },
            kind: FindingKind::Spike,
            reason: format!(
                "{}: {} {} in {} s, the baseline expects about {:.0}",
                spike.edge,
                spike.observed,
                spike.signal.as_str(),
                spike.window_seconds,
                spike.expected
            ),
            rule,
            source: Party::of(src, tiers.0),
            destination: Some(Party::of(dst, tiers.1)),
            port: dst.port,
            protocol: None,
            policies: Vec::new(),
            intent: None,
            evidence: Evidence {
                spike: Some(SpikeEvidence {
                    signal: spike.signal,
                    observed: spike.observed,
                    expected: spike.expected,
                    seasonal_expected: spike.seasonal_expected,
                    score: spike.score,
                    window_seconds: spike.window_seconds,
                    baseline: spike.baseline,
                }),
                ..Evidence::default()
            },
        }
    }
}
