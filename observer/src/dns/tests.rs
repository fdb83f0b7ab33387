//! The tracker with plain values: captured packets in, cache and log entries out.

use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, UNIX_EPOCH},
};

use observer_common::{DIRECTION_EGRESS, DIRECTION_INGRESS, EVENT_DNS, FAMILY_IPV4, FlowKey, PROTO_TCP, PROTO_UDP};

use super::{message::wire, *};

const POD: &str = "/kubepods/besteffort/pod3f6c1c2e-1111-4222-8333-444455556666/0123456789abcdef";
const A: u16 = 1;

fn t(millis: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_000_000) + Duration::from_millis(millis)
}

fn header(direction: u8, protocol: u8, local_port: u16, payload: &[u8]) -> DnsEvent {
    let mut key =
        FlowKey { cgroup_id: 42, local_port, remote_port: 53, protocol, family: FAMILY_IPV4, ..FlowKey::default() };
    key.local_addr[..4].copy_from_slice(&[198, 18, 0, 10]);
    key.remote_addr[..4].copy_from_slice(&[203, 0, 113, 53]);
    DnsEvent {
        kind: EVENT_DNS,
        direction,
        captured_len: payload.len() as u16,
        original_len: payload.len() as u32,
        key,
        ..DnsEvent::default()
    }
}

struct Harness {
    tracker: DnsTracker,
    log: mpsc::Receiver<DnsLogEntry>,
}

impl Harness {
    fn new(config: DnsConfig) -> Self {
        let (tx, log) = mpsc::channel(16);
        let view = DnsView::new(&config);
        Self { tracker: DnsTracker::new(view, config, Arc::from("node-1"), Some(tx)), log }
    }

    fn packet(&mut self, direction: u8, protocol: u8, port: u16, payload: &[u8], at: SystemTime) {
        let header = header(direction, protocol, port, payload);
        self.tracker.on_packet(&header, payload, Some(Arc::from(POD)), at);
    }

    fn entries(&mut self) -> Vec<DnsLogEntry> {
        std::iter::from_fn(|| self.log.try_recv().ok()).collect()
    }

    fn names(&self, ip: IpAddr, at: SystemTime) -> Vec<Arc<str>> {
        self.tracker.view().names(&Owner::of(42, Some(POD)), ip, at)
    }
}

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, last))
}

#[test]
fn answered_query_fills_the_pod_cache_and_logs_one_entry() {
    let mut lab = Harness::new(DnsConfig::default());
    lab.packet(DIRECTION_EGRESS, PROTO_UDP, 40000, &wire::query(7, "api.example.com", A), t(0));
    let answer = wire::response(
        7,
        "api.example.com",
        A,
        0,
        &[wire::Rr::Alias("api.example.com", 60, "edge.example.net"), wire::Rr::Addr("edge.example.net", 60, ip(20))],
    );
    lab.packet(DIRECTION_INGRESS, PROTO_UDP, 40000, &answer, t(3));
    assert_eq!(lab.names(ip(20), t(10)), vec![Arc::from("api.example.com"), Arc::from("edge.example.net")]);
    // Another container of the same pod shares the names.
    let sibling = POD.replace("0123456789abcdef", "fedcba9876543210");
    assert_eq!(lab.tracker.view().names(&Owner::of(99, Some(&sibling)), ip(20), t(10)).len(), 2);
    let entries = lab.entries();
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let entry = serde_json::to_value(&entries[0]).expect("json");
    assert_eq!(entry["event"], "answer");
    assert_eq!(entry["name"], "api.example.com");
    assert_eq!(entry["type"], "A");
    assert_eq!(entry["rcode"], "NOERROR");
    assert_eq!(entry["client"], serde_json::json!({"ip": "198.18.0.10", "port": 40000}));
    assert_eq!(entry["server"], serde_json::json!({"ip": "203.0.113.53", "port": 53}));
    assert_eq!(
        entry["answers"][1],
        serde_json::json!({"name": "edge.example.net", "type": "A", "ttl": 60, "data": "203.0.113.20"})
    );
    assert_eq!(entry["latency_ms"], 3.0);
    let health = lab.tracker.view().health();
    assert_eq!((health.queries(), health.answers(), health.cache().entries), (1, 1, 1));
}

#[test]
fn nxdomain_and_refused_are_logged_with_the_name_and_learn_nothing() {
    let mut lab = Harness::new(DnsConfig::default());
    lab.packet(DIRECTION_EGRESS, PROTO_UDP, 40001, &wire::query(1, "exfil.evil.example", A), t(0));
    lab.packet(DIRECTION_INGRESS, PROTO_UDP, 40001, &wire::response(1, "exfil.evil.example", A, 3, &[]), t(1));
    lab.packet(DIRECTION_EGRESS, PROTO_UDP, 40002, &wire::query(2, "blocked.example", A), t(2));
    lab.packet(DIRECTION_INGRESS, PROTO_UDP, 40002, &wire::response(2, "blocked.example", A, 5, &[]), t(3));
    let entries = lab.entries();
    let summary: Vec<(DnsLogEvent, Option<&str>, Option<&str>)> =
        entries.iter().map(|entry| (entry.event, entry.name.as_deref(), entry.rcode.as_deref())).collect();
    assert_eq!(
        summary,
        vec![
            (DnsLogEvent::Answer, Some("exfil.evil.example"), Some("NXDOMAIN")),
            (DnsLogEvent::Answer, Some("blocked.example"), Some("REFUSED"))
        ]
    );
    let health = lab.tracker.view().health();
    assert_eq!((health.nxdomain(), health.refused(), health.cache().entries), (1, 1, 0));
}

#[test]
fn a_query_never_answered_is_logged_after_the_timeout_and_at_shutdown() {
    let mut lab = Harness::new(DnsConfig { answer_timeout: Duration::from_secs(5), ..DnsConfig::default() });
    lab.packet(DIRECTION_EGRESS, PROTO_UDP, 40003, &wire::query(3, "dropped.example", A), t(0));
    // A retransmission of the same query is still one query.
    lab.packet(DIRECTION_EGRESS, PROTO_UDP, 40003, &wire::query(3, "dropped.example", A), t(1000));
    lab.tracker.tick(t(4000));
    assert!(lab.entries().is_empty());
    lab.tracker.tick(t(6500));
    let entries = lab.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].event, entries[0].name.as_deref()), (DnsLogEvent::Unanswered, Some("dropped.example")));
    lab.packet(DIRECTION_EGRESS, PROTO_UDP, 40004, &wire::query(4, "late.example", A), t(7000));
    lab.tracker.finish();
    assert_eq!(lab.entries()[0].name.as_deref(), Some("late.example"));
    assert_eq!(lab.tracker.view().health().unanswered(), 2);
}

#[test]
fn an_answer_to_no_query_seen_is_logged_but_not_learned() {
    let mut lab = Harness::new(DnsConfig::default());
    lab.packet(DIRECTION_EGRESS, PROTO_UDP, 40005, &wire::query(5, "real.example", A), t(0));
    // Wrong transaction id: a spoofed answer the resolver would drop.
    let spoof = wire::response(6, "real.example", A, 0, &[wire::Rr::Addr("real.example", 60, ip(66))]);
    lab.packet(DIRECTION_INGRESS, PROTO_UDP, 40005, &spoof, t(1));
    assert!(lab.names(ip(66), t(2)).is_empty());
    assert_eq!(lab.entries()[0].event, DnsLogEvent::Unmatched);
    assert_eq!(lab.tracker.view().health().answers_unmatched(), 1);
}

#[test]
fn tcp_answers_are_learned() {
    let mut lab = Harness::new(DnsConfig::default());
    lab.packet(DIRECTION_EGRESS, PROTO_TCP, 40006, &wire::tcp(&wire::query(8, "big.example", A)), t(0));
    let answer = wire::response(8, "big.example", A, 0, &[wire::Rr::Addr("big.example", 30, ip(30))]);
    lab.packet(DIRECTION_INGRESS, PROTO_TCP, 40006, &wire::tcp(&answer), t(2));
    assert_eq!(lab.names(ip(30), t(5)), vec![Arc::from("big.example")]);
}

#[test]
fn pending_queries_are_bounded_and_the_dropped_names_still_logged() {
    let mut lab = Harness::new(DnsConfig { pending_capacity: 2, ..DnsConfig::default() });
    for id in 0..3u16 {
        lab.packet(DIRECTION_EGRESS, PROTO_UDP, 41000 + id, &wire::query(id, &format!("n{id}.example"), A), t(0));
    }
    let entries = lab.entries();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].name.as_deref(), Some("n0.example"));
    assert_eq!(lab.tracker.view().health().pending_dropped(), 1);
}

#[test]
fn garbage_is_counted_not_logged() {
    let mut lab = Harness::new(DnsConfig::default());
    lab.packet(DIRECTION_INGRESS, PROTO_UDP, 40007, &[0xff; 7], t(0));
    assert!(lab.entries().is_empty());
    assert_eq!(lab.tracker.view().health().parse_errors(), 1);
}

#[test]
fn hostile_ttls_are_capped() {
    let mut lab = Harness::new(DnsConfig { max_ttl: Duration::from_secs(60), ..DnsConfig::default() });
    lab.packet(DIRECTION_EGRESS, PROTO_UDP, 40008, &wire::query(9, "sticky.example", A), t(0));
    let answer = wire::response(9, "sticky.example", A, 0, &[wire::Rr::Addr("sticky.example", u32::MAX, ip(9))]);
    lab.packet(DIRECTION_INGRESS, PROTO_UDP, 40008, &answer, t(1));
    lab.tracker.tick(t(60_000 + 120_000 + 10));
    assert_eq!(lab.tracker.view().health().cache().entries, 0);
}

#[test]
fn answers_to_catalog_names_teach_the_node_their_addresses() {
    let config = DnsConfig::default();
    let catalog = Arc::new(crate::ai::Catalog::build(&crate::ai::CatalogConfig::default()).expect("catalog"));
    let ai = Arc::new(crate::ai::AiEndpoints::new(catalog, 16, config.grace));
    let view = DnsView::new(&config).with_ai(Arc::clone(&ai));
    let mut tracker = DnsTracker::new(view, config, Arc::from("node-1"), None);
    let mut packet = |direction, payload: &[u8], at| {
        tracker.on_packet(&header(direction, PROTO_UDP, 40000, payload), payload, Some(Arc::from(POD)), at);
    };
    // A private alias whose chain ends at a catalog name.
    packet(DIRECTION_EGRESS, &wire::query(9, "llm.corp.example", A), t(0));
    let answer = wire::response(
        9,
        "llm.corp.example",
        A,
        0,
        &[wire::Rr::Alias("llm.corp.example", 60, "api.openai.com"), wire::Rr::Addr("api.openai.com", 60, ip(40))],
    );
    packet(DIRECTION_INGRESS, &answer, t(2));
    // And one for a name no provider has.
    packet(DIRECTION_EGRESS, &wire::query(10, "api.example.com", A), t(3));
    packet(
        DIRECTION_INGRESS,
        &wire::response(10, "api.example.com", A, 0, &[wire::Rr::Addr("api.example.com", 60, ip(41))]),
        t(4),
    );
    let learned = ai.lookup(ip(40), t(10)).expect("learned from the alias chain");
    assert_eq!((&*learned.provider, &*learned.name, learned.resolved_at), ("openai", "api.openai.com", t(2)));
    assert!(ai.lookup(ip(41), t(10)).is_none());
    assert_eq!(ai.stats().entries, 1);
}
