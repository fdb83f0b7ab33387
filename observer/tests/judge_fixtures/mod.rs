//! Builder fixtures shared by the intent and judge tests.

#![allow(dead_code, unused_imports, reason = "each test file uses a different part")]

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use k8s_openapi::api::networking::v1::NetworkPolicy;
use observer::{
    flow::{FlowState, LocalEnd, Protocol, Traffic},
    intent::{FlowEnd, FlowIntent, IntentConfig, IntentError, IntentIndex, Tiers},
    inventory::model::Namespace,
    judge::{Judge, JudgeConfig, JudgeInput},
    policy::PolicyEngine,
};

pub use observer::testing::{PodBuilder, ip, namespace};

/// The NetworkPolicies of the Service tests (namespace `ai`): the client
/// (`app: client`) may reach only kube-dns pods on UDP 53 and the `web` pods
/// on TCP 8080; `web-locked` lets nobody into pods labelled `locked: "true"`.
pub const SERVICE_POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: client-egress, namespace: ai}
spec:
  podSelector: {matchLabels: {app: client}}
  policyTypes: [Egress]
  egress:
    - to: [{namespaceSelector: {}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]
      ports: [{port: 53, protocol: UDP}]
    - to: [{podSelector: {matchLabels: {app: web}}}]
      ports: [{port: 8080}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-locked, namespace: ai}
spec:
  podSelector: {matchLabels: {locked: "true"}}
  policyTypes: [Ingress]
"#;

/// A pod named `name` in namespace `ai`, on node `node-1`, at resourceVersion 1.
pub fn pod(name: &str) -> PodBuilder {
    observer::testing::pod(name).ns("ai").resource_version("1").node("node-1")
}

/// YAML documents separated by `---`, each parsed as `T`.
pub fn documents<T: serde::de::DeserializeOwned>(yaml: &str) -> Vec<T> {
    yaml.split("\n---\n")
        .filter(|doc| !doc.trim().is_empty())
        .map(|doc| serde_yaml::from_str(doc).expect("valid YAML"))
        .collect()
}

pub fn intents(yaml: &str, namespaces: &[Namespace]) -> (IntentIndex, Vec<IntentError>) {
    let intents: Vec<FlowIntent> = documents(yaml);
    IntentIndex::compile(&intents, namespaces, Tiers::default(), &IntentConfig::default())
}

pub fn policies(yaml: &str, namespaces: &[Namespace]) -> PolicyEngine {
    let policies: Vec<NetworkPolicy> = documents(yaml);
    let (engine, errors) = PolicyEngine::compile(&policies, namespaces);
    assert!(errors.is_empty(), "{errors:?}");
    engine
}

pub fn judge(policy_yaml: &str, intent_yaml: &str, namespaces: &[Namespace]) -> Judge {
    let (index, errors) = intents(intent_yaml, namespaces);
    assert!(errors.is_empty(), "{errors:?}");
    Judge::new(Arc::new(policies(policy_yaml, namespaces)), Arc::new(index), JudgeConfig::default())
}

pub fn time(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

/// A flow from `src` to `dst`, observed at the source, TCP.
pub struct FlowBuilder<'a>(JudgeInput<'a>);

pub fn flow<'a>(src: FlowEnd<'a>, dst: FlowEnd<'a>) -> FlowBuilder<'a> {
    FlowBuilder(JudgeInput {
        src,
        dst,
        protocol: Protocol::TCP,
        state: FlowState::Established,
        to_dst: Traffic { packets: 5, bytes: 900 },
        to_src: Traffic { packets: 4, bytes: 4000 },
        local: LocalEnd::Src,
        first_seen: time(0),
        new_flow: true,
        asked: None,
    })
}

impl<'a> FlowBuilder<'a> {
    pub fn state(mut self, state: FlowState) -> Self {
        self.0.state = state;
        if matches!(state, FlowState::Refused | FlowState::Unanswered | FlowState::Attempted) {
            self.0.to_src = Traffic { packets: u64::from(state == FlowState::Refused), bytes: 0 };
        }
        self
    }

    pub fn udp(mut self, replies: u64) -> Self {
        self.0.protocol = Protocol::UDP;
        self.0.state = FlowState::Active;
        self.0.to_src = Traffic { packets: replies, bytes: replies * 100 };
        self
    }

    pub fn at_receiver(mut self) -> Self {
        self.0.local = LocalEnd::Dst;
        self
    }

    /// The source asked for `asked` (a Service, a redirected address) and
    /// was sent to the builder's `dst`.
    pub fn asked(mut self, asked: FlowEnd<'a>) -> Self {
        self.0.asked = Some(asked);
        self
    }

    pub fn at(mut self, seconds: u64) -> Self {
        self.0.first_seen = time(seconds);
        self
    }

    pub fn build(self) -> JudgeInput<'a> {
        self.0
    }
}
