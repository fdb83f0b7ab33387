//! Flows to a Service whose backend is not known, judged at each backend
//! they may have reached.
//!
//! In: a [`JudgeInput`] whose destination is still a Service (neither
//! conntrack nor a single ready backend said where it went) and the ends of
//! the Service's ready backends from its EndpointSlices. Out: one verdict
//! when every backend is judged alike; otherwise `ambiguous: true`, each
//! backend's verdict listed, and the mildest of them as the flow's: the
//! flow may have reached a backend that allows it, so a gap is never
//! guessed. With no backend known NetworkPolicies cannot be applied (they
//! select pods, not ClusterIPs): the flow is ambiguous and only intents
//! judge it.

use std::fmt::Write as _;

use super::{
    Judge, JudgeInput,
    delivery::delivery,
    verdict::{BackendVerdict, FlowVerdict, IntentCite, VerdictKind},
};
use crate::{intent::FlowEnd, rendered::RenderedJson};

/// Verdicts from mildest to gravest: an ambiguous flow gets the mildest of
/// its backends'.
fn gravity(verdict: VerdictKind) -> u8 {
    match verdict {
        VerdictKind::Allowed => 0,
        // It may be allowed: milder than anything known to break a rule.
        VerdictKind::Undecidable => 1,
        VerdictKind::IntentViolation => 2,
        VerdictKind::DeniedAttempt => 3,
        VerdictKind::EnforcementGap => 4,
    }
}

/// How the Service end reads in reasons.
fn service_name(end: &FlowEnd<'_>) -> String {
    match (end.namespace, end.service) {
        (Some(namespace), Some(name)) => format!("Service {namespace}/{name}"),
        _ => format!("Service at {}", end.ip),
    }
}

impl Judge {
    /// Judges a flow to the Service `input.dst` at each of `backends` (its
    /// ready backends, as ends with their own address and port), and
    /// counts the one verdict it gives.
    pub fn flow_to_backends(&mut self, input: &JudgeInput<'_>, backends: &[FlowEnd<'_>]) -> FlowVerdict {
        // The connection counts once against a rate, whichever backend it reached.
        let rate = self.rate_violation(input);
        let service = input.dst;
        let mut verdicts: Vec<FlowVerdict> = backends
            .iter()
            .map(|backend| {
                let at_backend = JudgeInput { dst: *backend, asked: Some(service), ..*input };
                let policy = self.policy(&at_backend);
                self.decide(&at_backend, policy, rate.clone())
            })
            .collect();
        let verdict = match verdicts.first().map(|first| first.verdict) {
            None => self.no_backend(input, rate),
            Some(kind) if verdicts.iter().all(|verdict| verdict.verdict == kind) => {
                let mut one = verdicts.swap_remove(0);
                let _ = write!(one.reason, " (every ready backend of {} is judged alike)", service_name(&service));
                // The record's destination is the Service, not that backend.
                one.dst_uid = None;
                one.dst_tier = None;
                one.json = RenderedJson::default();
                one
            }
            Some(_) => ambiguous(&service, backends, verdicts).unwrap_or_else(|| self.no_backend(input, rate)),
        };
        self.count(verdict.verdict, verdict.intent.is_some());
        verdict
    }

    /// A Service flow with no backend known: intents only.
    fn no_backend(&self, input: &JudgeInput<'_>, rate: Option<crate::intent::IntentViolation>) -> FlowVerdict {
        let protocol = input.protocol.with_ports();
        let (delivery, _) = delivery(input);
        let intent = self.intents().check_egress_asked(&input.src, &input.dst, input.asked.as_ref(), protocol).or(rate);
        let why = format!(
            "no ready backend of {} is known (no conntrack entry, no EndpointSlice lists one): NetworkPolicies apply at backends",
            service_name(&input.dst)
        );
        let (verdict, reason) = match &intent {
            Some(violation) => (VerdictKind::IntentViolation, format!("{}; {why}", violation.reason)),
            None => (VerdictKind::Allowed, format!("ambiguous: {why}")),
        };
        FlowVerdict {
            verdict,
            reason,
            delivery,
            policies: Vec::new(),
            intent: intent.map(|violation| IntentCite { intent: violation.intent, rule: violation.rule }),
            src_uid: input.src.uid.map(str::to_owned),
            dst_uid: None,
            src_tier: input.src.pod.and_then(|pod| self.intents().tier_of(pod)),
            dst_tier: None,
            ambiguous: true,
            backends: Vec::new(),
            json: RenderedJson::default(),
        }
    }
}

/// The verdict of a flow whose backends are judged differently; `None`
/// without verdicts.
fn ambiguous(service: &FlowEnd<'_>, backends: &[FlowEnd<'_>], verdicts: Vec<FlowVerdict>) -> Option<FlowVerdict> {
    let listed: Vec<BackendVerdict> = backends
        .iter()
        .zip(&verdicts)
        .map(|(backend, verdict)| BackendVerdict {
            namespace: backend.pod_name.and(backend.namespace).map(str::to_owned),
            pod: backend.pod_name.map(str::to_owned),
            ip: backend.pod_name.is_none().then_some(backend.ip),
            verdict: verdict.verdict,
            policies: verdict.policies.clone(),
        })
        .collect();
    let summary: Vec<String> = listed
        .iter()
        .map(|backend| match (&backend.namespace, &backend.pod, backend.ip) {
            (Some(namespace), Some(pod), _) => format!("{namespace}/{pod} {}", backend.verdict.as_str()),
            (_, _, Some(ip)) => format!("{ip} {}", backend.verdict.as_str()),
            _ => backend.verdict.as_str().to_owned(),
        })
        .collect();
    let mut mildest = verdicts.into_iter().min_by_key(|verdict| gravity(verdict.verdict))?;
    mildest.reason = format!(
        "ambiguous: the backend of {} is not known and its ready backends are judged differently ({}); the mildest: {}",
        service_name(service),
        summary.join(", "),
        mildest.reason
    );
    mildest.dst_uid = None;
    mildest.dst_tier = None;
    mildest.ambiguous = true;
    mildest.backends = listed;
    mildest.json = RenderedJson::default();
    Some(mildest)
}
