//! Fuzzes the DNS path the way hostile packets reach it: a captured payload
//! (first input byte: transport and direction; the rest: the payload as the
//! kernel copied it) goes through the parser, then through the tracker after
//! a query for the same name, so the name cache, the pending-query table and
//! DNS log serialization all see it. Nothing may panic, and every bound must hold.
#![no_main]

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use libfuzzer_sys::fuzz_target;
use observer::dns::{
    DnsConfig, DnsTracker, DnsView, MAX_NAMES, Owner,
    message::{self, MAX_ANSWERS, Transport, wire},
};
use observer_common::{
    DIRECTION_EGRESS, DIRECTION_INGRESS, DNS_MAX_PAYLOAD, DnsEvent, EVENT_DNS, FAMILY_IPV4, FlowKey, PROTO_TCP,
    PROTO_UDP,
};

const POD: &str = "/kubepods/besteffort/pod3f6c1c2e-1111-4222-8333-444455556666/0123456789abcdef";

fn header(direction: u8, protocol: u8, payload: &[u8]) -> DnsEvent {
    let mut key =
        FlowKey { cgroup_id: 7, local_port: 40000, remote_port: 53, protocol, family: FAMILY_IPV4, ..FlowKey::default() };
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

fuzz_target!(|data: &[u8]| {
    let Some((&selector, payload)) = data.split_first() else { return };
    // The kernel never hands over more than this.
    let payload = &payload[..payload.len().min(DNS_MAX_PAYLOAD)];
    let (transport, protocol) =
        if selector & 1 == 0 { (Transport::Udp, PROTO_UDP) } else { (Transport::Tcp, PROTO_TCP) };
    let parsed = message::parse(payload, transport);
    if let Ok(message) = &parsed {
        assert!(message.answers.len() <= MAX_ANSWERS);
        for answer in &message.answers {
            assert!(answer.name.is_ascii());
        }
    }

    let config = DnsConfig { cache_capacity: 8, pending_capacity: 4, ..DnsConfig::default() };
    let view = DnsView::new(&config);
    let (log, mut entries) = tokio::sync::mpsc::channel(16);
    let mut tracker = DnsTracker::new(view.clone(), config, Arc::from("node"), Some(log));
    let at = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let path = Some(Arc::from(POD));
    // A query for the question the payload carries, so an answer matches it.
    if let Ok(message) = &parsed
        && let Some(question) = &message.question
    {
        let mut query = wire::query(message.id, &question.name, question.qtype);
        if transport == Transport::Tcp {
            query = wire::tcp(&query);
        }
        tracker.on_packet(&header(DIRECTION_EGRESS, protocol, &query), &query, path.clone(), at);
    }
    let direction = if selector & 2 == 0 { DIRECTION_INGRESS } else { DIRECTION_EGRESS };
    tracker.on_packet(&header(direction, protocol, payload), payload, path, at + Duration::from_millis(1));
    if let Ok(message) = &parsed {
        let owner = Owner::of(7, Some(POD));
        for (ip, _) in message.addresses() {
            assert!(view.names(&owner, ip, at + Duration::from_millis(2)).len() <= MAX_NAMES);
        }
    }
    tracker.tick(SystemTime::now() + Duration::from_secs(86_400 * 400));
    tracker.finish();
    assert_eq!(view.health().cache().entries, 0, "everything expires");
    while let Ok(entry) = entries.try_recv() {
        let line = serde_json::to_string(&entry).expect("an entry serializes");
        assert!(!line.contains('\n'));
    }
});
