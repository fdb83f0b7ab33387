//! `observer policy advise --guardrails`: a FlowIntent's forbidden peers as
//! an Admin-tier ClusterNetworkPolicy, which namespace owners cannot
//! override.
//!
//! In: FlowIntents (as declared) and the tier label key. Out: per intent
//! with `egress.forbid`, one ClusterNetworkPolicy (`policy.networking.k8s.io/v1alpha2`)
//! whose subject is the intent's subject and whose egress rules `Deny` each
//! forbidden peer that the API can name (pods by selectors and tiers,
//! namespaces, CIDRs, the metadata service), with ports; the peers it
//! cannot deny (`world`, `apiServer`, `fqdn`, a CIDR with `except`) are
//! listed instead. The caller validates the objects with the engine (the
//! CRD's schema and CEL rules) before writing anything.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use serde_json::{Value, json};

use crate::{
    intent::{FlowIntent, IntentPeer},
    policy::cnp::ClusterNetworkPolicy,
};

/// The priority guardrails get in the Admin tier (0 is evaluated first).
pub const PRIORITY: i64 = 100;

/// The addresses of the cloud metadata service, as FlowIntents mean them.
const METADATA_NETWORKS: [&str; 2] = ["169.254.169.254/32", "fd00:ec2::254/128"];

/// One guardrail and what it could not say.
#[derive(Clone, Debug)]
pub struct Guardrail {
    /// The FlowIntent's `namespace/name`.
    pub intent: String,
    /// The policy.
    pub policy: ClusterNetworkPolicy,
    /// Its YAML, with a comment naming the intent and what was left out.
    pub yaml: String,
    /// Forbidden peers the API cannot name, and why.
    pub left_out: Vec<String>,
}

/// `selector` narrowed to pods whose `label_key` is one of `tiers`.
fn with_tiers(selector: Option<&LabelSelector>, tiers: Option<&Vec<String>>, label_key: &str) -> LabelSelector {
    let mut selector = selector.cloned().unwrap_or_default();
    if let Some(tiers) = tiers {
        selector.match_expressions.get_or_insert_with(Vec::new).push(LabelSelectorRequirement {
            key: label_key.to_owned(),
            operator: "In".to_owned(),
            values: Some(tiers.clone()),
        });
    }
    selector
}

/// Absent: the intent's own namespace, as in a NetworkPolicy.
fn namespaces(selector: Option<&LabelSelector>, own: &str) -> LabelSelector {
    selector.cloned().unwrap_or_else(|| LabelSelector {
        match_labels: Some(BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), own.to_owned())])),
        match_expressions: None,
    })
}

/// The CNP `protocols` of an intent peer's ports; `None` when there are none (every port).
fn protocols(peer: &IntentPeer) -> Result<Option<Value>, String> {
    let Some(ports) = &peer.ports else { return Ok(None) };
    let mut out = Vec::new();
    for port in ports {
        let protocol = port.protocol.as_deref().unwrap_or("TCP").to_lowercase();
        let Some(number) = port.port else {
            return Err(format!("a port of any number of {protocol} is not a destination port the API can name"));
        };
        let destination = match port.end_port {
            Some(end) => json!({"range": {"start": number, "end": end}}),
            None => json!({"number": number}),
        };
        out.push(json!({protocol: {"destinationPort": destination}}));
    }
    Ok(Some(Value::Array(out)))
}

/// The CNP egress peer of one forbidden intent peer, or why there is none.
fn peer(peer: &IntentPeer, own: &str, label_key: &str) -> Result<Value, &'static str> {
    if peer.world == Some(true) {
        return Err("world: the API has no peer for everything outside the cluster");
    }
    if peer.api_server == Some(true) {
        return Err("apiServer: the API has no peer for the API server");
    }
    if peer.metadata_service == Some(true) {
        return Ok(json!({"networks": METADATA_NETWORKS}));
    }
    if let Some(cidr) = &peer.cidr {
        if peer.except.as_ref().is_some_and(|except| !except.is_empty()) {
            return Err("cidr with except: the API's networks have no exceptions");
        }
        return Ok(json!({"networks": [cidr]}));
    }
    if peer.fqdn.is_some() {
        return Err("fqdn: the API allows domainNames in Accept rules only, not in Deny");
    }
    if peer.pod_selector.is_none() && peer.tiers.is_none() {
        return Ok(json!({"namespaces": namespaces(peer.namespace_selector.as_ref(), own)}));
    }
    Ok(json!({"pods": {
        "namespaceSelector": namespaces(peer.namespace_selector.as_ref(), own),
        "podSelector": with_tiers(peer.pod_selector.as_ref(), peer.tiers.as_ref(), label_key),
    }}))
}

/// The guardrails of `intents`, sorted by intent.
pub fn guardrails(intents: &[FlowIntent], label_key: &str) -> Vec<Guardrail> {
    let mut out = Vec::new();
    for intent in intents {
        let Some(forbid) = intent.spec.egress.as_ref().and_then(|egress| egress.forbid.as_ref()) else { continue };
        let own = intent.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
        let name = intent.metadata.name.clone().unwrap_or_default();
        let mut rules = Vec::new();
        let mut left_out = Vec::new();
        for (index, forbidden) in forbid.iter().enumerate() {
            let to = match peer(forbidden, &own, label_key) {
                Ok(to) => to,
                Err(why) => {
                    left_out.push(format!("forbid[{index}]: {why}"));
                    continue;
                }
            };
            let mut rule = json!({"name": format!("forbid-{index}"), "action": "Deny", "to": [to]});
            match protocols(forbidden) {
                Ok(Some(protocols)) => rule["protocols"] = protocols,
                Ok(None) => {}
                Err(why) => {
                    left_out.push(format!("forbid[{index}]: {why}"));
                    continue;
                }
            }
            rules.push(rule);
        }
        if rules.is_empty() {
            continue;
        }
        let subject = &intent.spec.subject;
        let value = json!({
            "apiVersion": "policy.networking.k8s.io/v1alpha2",
            "kind": "ClusterNetworkPolicy",
            "metadata": {"name": format!("guardrail-{own}-{name}"),
                         "labels": {"app.kubernetes.io/managed-by": "observer-policy-advise"},
                         "annotations": {"ai.governance/flowintent": format!("{own}/{name}")}},
            "spec": {
                "tier": "Admin",
                "priority": PRIORITY,
                "subject": {"pods": {
                    "namespaceSelector": namespaces(subject.namespace_selector.as_ref(), &own),
                    "podSelector": with_tiers(subject.pod_selector.as_ref(), subject.tiers.as_ref(), label_key),
                }},
                "egress": rules,
            }
        });
        let Ok(policy) = serde_json::from_value::<ClusterNetworkPolicy>(value.clone()) else { continue };
        let mut yaml = format!(
            "# Admin-tier guardrail for FlowIntent {own}/{name} (observer policy advise --guardrails): its forbidden peers, denied.\n"
        );
        for note in &left_out {
            yaml.push_str(&format!("# Not expressible, left out: {note}.\n"));
        }
        yaml.push_str(&serde_yaml::to_string(&value).unwrap_or_default());
        out.push(Guardrail { intent: format!("{own}/{name}"), policy, yaml, left_out });
    }
    out.sort_by(|a, b| a.intent.cmp(&b.intent));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyEngine;

    const INTENT: &str = r#"
apiVersion: ai.governance/v1alpha1
kind: FlowIntent
metadata: {name: agents, namespace: ai}
spec:
  subject: {tiers: [agent]}
  egress:
    forbid:
    - metadataService: true
    - podSelector: {matchLabels: {app: db}}
      namespaceSelector: {matchLabels: {team: data}}
      ports: [{port: 5432}, {port: 6000, endPort: 6010, protocol: UDP}]
    - fqdn: "*.pastebin.example"
    - world: true
    - cidr: 203.0.113.0/24
      except: [203.0.113.8/29]
"#;

    #[test]
    fn forbidden_peers_become_an_admin_deny_the_engine_accepts() {
        let intent: FlowIntent = serde_yaml::from_str(INTENT).expect("intent");
        let made = guardrails(&[intent], "ai.governance/tier");
        assert_eq!(made.len(), 1);
        let guardrail = &made[0];
        assert_eq!(guardrail.intent, "ai/agents");
        assert_eq!(
            guardrail.left_out,
            [
                "forbid[2]: fqdn: the API allows domainNames in Accept rules only, not in Deny",
                "forbid[3]: world: the API has no peer for everything outside the cluster",
                "forbid[4]: cidr with except: the API's networks have no exceptions",
            ]
        );
        let value = serde_json::to_value(&guardrail.policy).expect("json");
        assert_eq!(value["metadata"]["name"], "guardrail-ai-agents");
        assert_eq!(value["spec"]["tier"], "Admin");
        assert_eq!(value["spec"]["priority"], PRIORITY);
        assert_eq!(
            value["spec"]["subject"],
            json!({"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ai"}},
                "podSelector": {"matchExpressions": [{"key": "ai.governance/tier", "operator": "In", "values": ["agent"]}]}}})
        );
        assert_eq!(
            value["spec"]["egress"],
            json!([
                {"name": "forbid-0", "action": "Deny", "to": [{"networks": ["169.254.169.254/32", "fd00:ec2::254/128"]}]},
                {"name": "forbid-1", "action": "Deny",
                 "to": [{"pods": {"namespaceSelector": {"matchLabels": {"team": "data"}}, "podSelector": {"matchLabels": {"app": "db"}}}}],
                 "protocols": [{"tcp": {"destinationPort": {"number": 5432}}},
                               {"udp": {"destinationPort": {"range": {"start": 6000, "end": 6010}}}}]},
            ])
        );
        assert!(guardrail.yaml.starts_with("# Admin-tier guardrail for FlowIntent ai/agents"), "{}", guardrail.yaml);
        let reparsed: ClusterNetworkPolicy =
            serde_yaml::from_str(&guardrail.yaml).expect("the YAML is the policy, comments aside");
        assert_eq!(reparsed.spec, guardrail.policy.spec);
        // Schema-valid: the engine validates as the CRD's schema and CEL rules do.
        let (engine, errors) =
            PolicyEngine::compile(&[], &[]).0.with_cluster_policies(std::slice::from_ref(&guardrail.policy), &[]);
        assert_eq!(errors, []);
        assert_eq!(engine.cluster_len(), 1);
    }

    #[test]
    fn an_intent_without_forbidden_peers_gets_no_guardrail() {
        let intent: FlowIntent = serde_yaml::from_str(
            "apiVersion: ai.governance/v1alpha1\nkind: FlowIntent\nmetadata: {name: a, namespace: ai}\nspec:\n  subject: {tiers: [agent]}\n  egress:\n    forbid:\n    - world: true\n",
        )
        .expect("intent");
        assert!(guardrails(&[intent], "ai.governance/tier").is_empty(), "only a peer the API cannot name");
    }
}
