//! The flow table: turns kernel events and polled counters into flow records.
//!
//! In: ring-buffer [`Event`]s (new flows, TCP state changes) and periodic
//! snapshots of the kernel flow map, all stamped with CLOCK_MONOTONIC
//! nanoseconds. Out: [`Emission`]s (start, update, end of a flow with its
//! counters and state) and the flow-map keys the caller must delete because
//! their flows ended. Pure logic: no kernel, no clock of its own.

use std::collections::HashMap;

use observer_common::{
    COUNTED_SOCKET, EVENT_NEW_FLOW, EVENT_TCP_STATE, Event, FlowKey, FlowStats, INITIATOR_LOCAL, PROTO_TCP, tcp_flags,
    tcp_state,
};

use crate::flow::{FlowState, RecordEvent};

/// Timing of the table, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct TableConfig {
    /// Minimum time between two update records of one flow.
    pub update_interval_ns: u64,
    /// A UDP, SCTP or ICMP flow with no packet for this long has ended.
    pub idle_timeout_ns: u64,
    /// A TCP flow with no packet and no close for this long is expired.
    pub tcp_idle_timeout_ns: u64,
    /// How long after a TCP close the final counters are read, so the last
    /// packets are counted.
    pub close_linger_ns: u64,
    /// TCP state changes whose flow never showed up are dropped after this.
    pub pending_timeout_ns: u64,
}

/// One record to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Emission {
    /// The flow.
    pub key: FlowKey,
    /// Its counters.
    pub stats: FlowStats,
    /// Start, update or end.
    pub event: RecordEvent,
    /// Its state.
    pub state: FlowState,
}

/// Counts of what the table did, for health reporting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Flows the table started tracking.
    pub flows_tracked: u64,
    /// Flows that ended (any reason).
    pub flows_ended: u64,
    /// Flows the kernel map evicted before they ended.
    pub flows_evicted: u64,
    /// Flows found by polling whose new-flow event never arrived.
    pub flows_discovered: u64,
    /// TCP state changes that matched no flow in time.
    pub states_unmatched: u64,
    /// Connections that reused the tuple of a flow not yet reported.
    pub tuples_reused: u64,
}

/// TCP progress of a flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Not TCP.
    None,
    Attempted,
    Established,
    /// Closed at `at`; `from` is the state it left.
    Closed {
        at: u64,
        from: u8,
    },
}

#[derive(Clone, Debug)]
struct Tracked {
    /// Counters of the kernel entry, as last polled.
    stats: FlowStats,
    /// Counters the entry held when this connection took it over from an
    /// earlier one with the same tuple (zero otherwise): subtracted in records.
    base: FlowStats,
    /// When this connection started, if it took over a reused entry.
    started_ns: u64,
    phase: Phase,
    /// Counters and state of the last record, if one was written.
    reported: Option<(FlowStats, FlowState)>,
    last_report_ns: u64,
    /// The packet and byte counters are a closed socket's final ones (from
    /// its close event): polls no longer replace them.
    final_counters: bool,
}

impl Tracked {
    /// The counters of this connection: the entry's minus what an earlier
    /// connection on the same tuple left in it.
    fn view(&self) -> FlowStats {
        if self.started_ns == 0 {
            return self.stats;
        }
        let minus = |now: u64, base: u64| now.saturating_sub(base);
        FlowStats {
            first_seen_ns: self.started_ns,
            last_seen_ns: self.stats.last_seen_ns.max(self.started_ns),
            packets_out: minus(self.stats.packets_out, self.base.packets_out),
            bytes_out: minus(self.stats.bytes_out, self.base.bytes_out),
            packets_in: minus(self.stats.packets_in, self.base.packets_in),
            bytes_in: minus(self.stats.bytes_in, self.base.bytes_in),
            ..self.stats
        }
    }
}

/// A TCP state change that arrived before its flow (the tracepoint fires
/// before the SYN passes the egress hook).
#[derive(Clone, Copy, Debug)]
struct Pending {
    phase: Phase,
    at: u64,
}

/// Tracks every live flow on the node.
#[derive(Debug)]
pub struct FlowTable {
    config: TableConfig,
    flows: HashMap<FlowKey, Tracked>,
    /// TCP tuple (key without cgroup) → flows with that tuple.
    by_tuple: HashMap<FlowKey, Vec<FlowKey>>,
    pending: HashMap<FlowKey, Pending>,
    stats: TableStats,
}

fn tuple(key: &FlowKey) -> FlowKey {
    FlowKey { cgroup_id: 0, ..*key }
}

impl FlowTable {
    /// An empty table.
    pub fn new(config: TableConfig) -> Self {
        Self {
            config,
            flows: HashMap::new(),
            by_tuple: HashMap::new(),
            pending: HashMap::new(),
            stats: TableStats::default(),
        }
    }

    /// What the table did so far.
    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.flows.len()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Applies one ring-buffer event. Adds the records that must be written at
    /// once (a flow whose tuple a new connection reused) to `out`.
    pub fn on_event(&mut self, event: &Event, out: &mut Vec<Emission>) {
        match event.kind {
            EVENT_NEW_FLOW => self.track(event.key, None, event.timestamp_ns),
            EVENT_TCP_STATE => self.on_tcp_state(event, out),
            _ => {}
        }
    }

    fn track(&mut self, key: FlowKey, stats: Option<FlowStats>, now: u64) {
        if self.flows.contains_key(&key) {
            return;
        }
        let is_tcp = key.protocol == PROTO_TCP;
        let mut phase = if is_tcp { Phase::Attempted } else { Phase::None };
        if is_tcp && let Some(pending) = self.pending.remove(&tuple(&key)) {
            phase = pending.phase;
        }
        let stats = stats.unwrap_or(FlowStats { first_seen_ns: now, last_seen_ns: now, ..FlowStats::default() });
        if is_tcp {
            self.by_tuple.entry(tuple(&key)).or_default().push(key);
        }
        self.flows.insert(
            key,
            Tracked {
                stats,
                base: FlowStats::default(),
                started_ns: 0,
                phase,
                reported: None,
                last_report_ns: now,
                final_counters: false,
            },
        );
        self.stats.flows_tracked += 1;
    }

    fn on_tcp_state(&mut self, event: &Event, out: &mut Vec<Emission>) {
        let at = event.timestamp_ns;
        let phase = match event.new_state {
            tcp_state::SYN_SENT => Phase::Attempted,
            tcp_state::ESTABLISHED => Phase::Established,
            tcp_state::CLOSE => Phase::Closed { at, from: event.old_state },
            _ => return,
        };
        let tuple = tuple(&event.key);
        let keys = self.by_tuple.get(&tuple).cloned().unwrap_or_default();
        if keys.is_empty() {
            self.pending.insert(tuple, Pending { phase, at });
            return;
        }
        for key in keys {
            let Some(flow) = self.flows.get_mut(&key) else { continue };
            if matches!(flow.phase, Phase::Closed { .. }) && matches!(phase, Phase::Attempted | Phase::Established) {
                // A new connection reused the tuple (an ephemeral port freed
                // by tcp_tw_reuse) before the old one was reported. Its
                // packets already count on the same kernel entry, so the entry
                // stays: the old connection ends with the counters last
                // polled (or its socket's final ones), and the new one carries
                // on from them as its base; socket counters start again
                // from zero instead.
                out.push(Emission { key, stats: flow.view(), event: RecordEvent::End, state: closed_state(flow) });
                self.stats.flows_ended += 1;
                self.stats.flows_tracked += 1;
                self.stats.tuples_reused += 1;
                let (stats, base) = if flow.stats.counted == COUNTED_SOCKET {
                    let zero = FlowStats { packets_out: 0, bytes_out: 0, packets_in: 0, bytes_in: 0, ..flow.stats };
                    (zero, FlowStats::default())
                } else {
                    (flow.stats, flow.stats)
                };
                *flow = Tracked {
                    stats,
                    base,
                    started_ns: at,
                    phase,
                    reported: None,
                    last_report_ns: at,
                    final_counters: false,
                };
                continue;
            }
            if !matches!(flow.phase, Phase::Closed { .. }) {
                flow.phase = phase;
                if event.has_counters != 0 {
                    flow.stats = with_final_counters(flow.stats, event);
                    flow.final_counters = true;
                }
            }
        }
    }

    /// Applies a snapshot of the kernel flow map taken starting at `taken_ns`.
    /// Flows missing from it that existed before it was taken were evicted.
    pub fn on_poll(&mut self, snapshot: &[(FlowKey, FlowStats)], taken_ns: u64, out: &mut Vec<Emission>) {
        let mut seen = std::collections::HashSet::with_capacity(snapshot.len());
        for (key, stats) in snapshot {
            seen.insert(*key);
            match self.flows.get_mut(key) {
                Some(flow) if flow.final_counters => {
                    let last_seen_ns = flow.stats.last_seen_ns.max(stats.last_seen_ns);
                    flow.stats = FlowStats {
                        packets_out: flow.stats.packets_out,
                        bytes_out: flow.stats.bytes_out,
                        packets_in: flow.stats.packets_in,
                        bytes_in: flow.stats.bytes_in,
                        counted: flow.stats.counted,
                        last_seen_ns,
                        ..*stats
                    };
                }
                Some(flow) => flow.stats = *stats,
                None => {
                    self.track(*key, Some(*stats), stats.first_seen_ns);
                    self.stats.flows_discovered += 1;
                }
            }
        }
        let evicted: Vec<FlowKey> = self
            .flows
            .iter()
            .filter(|(key, flow)| !seen.contains(*key) && flow.stats.first_seen_ns < taken_ns)
            .map(|(key, _)| *key)
            .collect();
        for key in evicted {
            if let Some(flow) = self.flows.get(&key) {
                out.push(Emission { key, stats: flow.view(), event: RecordEvent::End, state: FlowState::Evicted });
                self.stats.flows_evicted += 1;
                self.forget(&key);
            }
        }
    }

    /// Decides what to report at `now`: starts, updates and ends. Keys of
    /// ended flows go to `delete`.
    pub fn flush(&mut self, now: u64, out: &mut Vec<Emission>, delete: &mut Vec<FlowKey>) {
        let config = self.config;
        let pending_before = self.pending.len();
        self.pending.retain(|_, pending| now.saturating_sub(pending.at) < config.pending_timeout_ns);
        self.stats.states_unmatched += (pending_before - self.pending.len()) as u64;
        let mut ended = Vec::new();
        for (key, flow) in &mut self.flows {
            let idle = now.saturating_sub(flow.stats.last_seen_ns);
            let end_state = match flow.phase {
                Phase::Closed { at, .. } if now.saturating_sub(at) >= config.close_linger_ns => {
                    Some(closed_state(flow))
                }
                Phase::Closed { .. } => None,
                Phase::None if idle >= config.idle_timeout_ns => Some(FlowState::Expired),
                Phase::Attempted | Phase::Established if idle >= config.tcp_idle_timeout_ns => Some(FlowState::Expired),
                _ => None,
            };
            if let Some(state) = end_state {
                out.push(Emission { key: *key, stats: flow.view(), event: RecordEvent::End, state });
                ended.push(*key);
                continue;
            }
            if matches!(flow.phase, Phase::Closed { .. }) {
                // Ends within the linger: one end record says it all.
                continue;
            }
            let state = live_state(flow);
            let event = match flow.reported {
                None => Some(RecordEvent::Start),
                Some((_, reported_state)) if reported_state != state => Some(RecordEvent::Update),
                Some((reported, _))
                    if counters_changed(&reported, &flow.stats)
                        && now.saturating_sub(flow.last_report_ns) >= config.update_interval_ns =>
                {
                    Some(RecordEvent::Update)
                }
                Some(_) => None,
            };
            if let Some(event) = event {
                out.push(Emission { key: *key, stats: flow.view(), event, state });
                flow.reported = Some((flow.stats, state));
                flow.last_report_ns = now;
            }
        }
        for key in ended {
            self.forget(&key);
            delete.push(key);
        }
    }

    /// Ends every flow (the observer is stopping), reporting its state as it
    /// stands.
    pub fn drain(&mut self, out: &mut Vec<Emission>) {
        for (key, flow) in &self.flows {
            let state = match flow.phase {
                Phase::Closed { .. } => closed_state(flow),
                _ => live_state(flow),
            };
            out.push(Emission { key: *key, stats: flow.view(), event: RecordEvent::End, state });
        }
        self.stats.flows_ended += self.flows.len() as u64;
        self.flows.clear();
        self.by_tuple.clear();
        self.pending.clear();
    }

    fn forget(&mut self, key: &FlowKey) {
        if self.flows.remove(key).is_some() {
            self.stats.flows_ended += 1;
        }
        let tuple = tuple(key);
        if let Some(keys) = self.by_tuple.get_mut(&tuple) {
            keys.retain(|other| other != key);
            if keys.is_empty() {
                self.by_tuple.remove(&tuple);
            }
        }
    }

    /// Counts TCP state changes that never found their flow; call after
    /// `flush` drops stale pending entries.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// A closing socket's counters (carried by its close event) replace the
/// packet and byte counters: they are final and exact, where the flow map
/// holds only what the last sampled packet wrote.
fn with_final_counters(stats: FlowStats, event: &Event) -> FlowStats {
    let counters = event.counters;
    FlowStats {
        packets_out: counters.packets_out,
        bytes_out: counters.bytes_out,
        packets_in: counters.packets_in,
        bytes_in: counters.bytes_in,
        counted: COUNTED_SOCKET,
        last_seen_ns: stats.last_seen_ns.max(event.timestamp_ns),
        ..stats
    }
}

fn counters_changed(before: &FlowStats, now: &FlowStats) -> bool {
    before.packets_in != now.packets_in || before.packets_out != now.packets_out
}

fn handshake_seen(stats: &FlowStats) -> bool {
    let both = stats.tcp_flags_in & stats.tcp_flags_out;
    if both & tcp_flags::SYN != 0 && both & tcp_flags::ACK != 0 {
        return true;
    }
    // A socket that has segments both ways and no reset is connected, even
    // when its handshake came before the observer did.
    let reset = (stats.tcp_flags_in | stats.tcp_flags_out) & tcp_flags::RST != 0;
    stats.counted == COUNTED_SOCKET && stats.packets_in > 0 && stats.packets_out > 0 && !reset
}

fn live_state(flow: &Tracked) -> FlowState {
    match flow.phase {
        Phase::None => FlowState::Active,
        // The packets show a handshake even when the state event was lost.
        Phase::Attempted if handshake_seen(&flow.stats) => FlowState::Established,
        Phase::Attempted => FlowState::Attempted,
        Phase::Closed { from, .. } if from == tcp_state::SYN_SENT || from == tcp_state::SYN_RECV => {
            FlowState::Attempted
        }
        Phase::Established | Phase::Closed { .. } => FlowState::Established,
    }
}

fn closed_state(flow: &Tracked) -> FlowState {
    let Phase::Closed { from, .. } = flow.phase else { return live_state(flow) };
    if from != tcp_state::SYN_SENT && from != tcp_state::SYN_RECV {
        return FlowState::Closed;
    }
    let reset = if flow.stats.initiator == INITIATOR_LOCAL {
        flow.stats.tcp_flags_in & tcp_flags::RST != 0
    } else {
        flow.stats.tcp_flags_out & tcp_flags::RST != 0
    };
    if reset { FlowState::Refused } else { FlowState::Unanswered }
}

#[cfg(test)]
mod tests {
    use super::*;
    use observer_common::{FAMILY_IPV4, INITIATOR_REMOTE, PROTO_UDP, SocketCounters};

    const MS: u64 = 1_000_000;

    fn config() -> TableConfig {
        TableConfig {
            update_interval_ns: 10_000 * MS,
            idle_timeout_ns: 30_000 * MS,
            tcp_idle_timeout_ns: 600_000 * MS,
            close_linger_ns: 100 * MS,
            pending_timeout_ns: 10_000 * MS,
        }
    }

    fn key(protocol: u8, cgroup_id: u64) -> FlowKey {
        let mut key = FlowKey {
            cgroup_id,
            protocol,
            family: FAMILY_IPV4,
            local_port: 40_000,
            remote_port: 80,
            ..FlowKey::default()
        };
        key.local_addr[..4].copy_from_slice(&[198, 18, 0, 10]);
        key.remote_addr[..4].copy_from_slice(&[198, 18, 0, 11]);
        key
    }

    fn state_event(key: FlowKey, old: u8, new: u8, at: u64) -> Event {
        Event {
            kind: EVENT_TCP_STATE,
            old_state: old,
            new_state: new,
            timestamp_ns: at,
            key: FlowKey { cgroup_id: 0, ..key },
            ..Event::default()
        }
    }

    fn new_flow(key: FlowKey, at: u64) -> Event {
        Event { kind: EVENT_NEW_FLOW, timestamp_ns: at, key, ..Event::default() }
    }

    fn stats(initiator: u8, flags_out: u8, flags_in: u8, packets: u64, last_seen: u64) -> FlowStats {
        FlowStats {
            first_seen_ns: 1,
            last_seen_ns: last_seen,
            packets_out: packets,
            bytes_out: packets * 60,
            packets_in: packets,
            bytes_in: packets * 60,
            tcp_flags_out: flags_out,
            tcp_flags_in: flags_in,
            initiator,
            counted: 0,
            _pad: [0; 4],
        }
    }

    struct Run {
        table: FlowTable,
        out: Vec<Emission>,
        delete: Vec<FlowKey>,
    }

    impl Run {
        fn new() -> Self {
            Self { table: FlowTable::new(config()), out: Vec::new(), delete: Vec::new() }
        }
        fn event(&mut self, event: Event) {
            self.table.on_event(&event, &mut self.out);
        }
        fn poll(&mut self, snapshot: &[(FlowKey, FlowStats)], at: u64) {
            self.table.on_poll(snapshot, at, &mut self.out);
        }
        fn flush(&mut self, at: u64) -> Vec<Emission> {
            self.table.flush(at, &mut self.out, &mut self.delete);
            std::mem::take(&mut self.out)
        }
    }

    #[test]
    fn refused_connect_is_reported_once_as_refused() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        // The tracepoint fires before the SYN reaches the egress hook.
        run.event(state_event(key, tcp_state::CLOSE, tcp_state::SYN_SENT, 10));
        run.event(new_flow(key, 11));
        run.event(state_event(key, tcp_state::SYN_SENT, tcp_state::CLOSE, 12));
        let rst_ack = tcp_flags::RST | tcp_flags::ACK;
        run.poll(&[(key, stats(INITIATOR_LOCAL, tcp_flags::SYN, rst_ack, 1, 12))], 20);
        let out = run.flush(200 * MS);
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].event, out[0].state), (RecordEvent::End, FlowState::Refused));
        assert_eq!(run.delete, vec![key]);
        assert!(run.table.is_empty());
    }

    #[test]
    fn connect_without_answer_is_unanswered() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        run.event(new_flow(key, 11));
        run.event(state_event(key, tcp_state::CLOSE, tcp_state::SYN_SENT, 10));
        run.poll(&[(key, stats(INITIATOR_LOCAL, tcp_flags::SYN, 0, 3, 11))], 20);
        let first = run.flush(50 * MS);
        assert_eq!((first[0].event, first[0].state), (RecordEvent::Start, FlowState::Attempted));
        run.event(state_event(key, tcp_state::SYN_SENT, tcp_state::CLOSE, 3_000 * MS));
        run.poll(&[(key, stats(INITIATOR_LOCAL, tcp_flags::SYN, 0, 3, 11))], 3_000 * MS);
        assert!(run.flush(3_050 * MS).is_empty(), "linger not over yet");
        let out = run.flush(3_200 * MS);
        assert_eq!((out[0].event, out[0].state), (RecordEvent::End, FlowState::Unanswered));
    }

    #[test]
    fn established_then_closed_reports_start_update_and_end() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        run.event(new_flow(key, 1));
        let attempt = run.flush(MS);
        assert_eq!(attempt[0].state, FlowState::Attempted);
        run.event(state_event(key, tcp_state::SYN_SENT, tcp_state::ESTABLISHED, 2));
        run.poll(&[(key, stats(INITIATOR_LOCAL, syn_ack, syn_ack, 5, 2 * MS))], 2 * MS);
        let update = run.flush(3 * MS);
        assert_eq!((update[0].event, update[0].state), (RecordEvent::Update, FlowState::Established));
        run.event(state_event(key, tcp_state::ESTABLISHED, tcp_state::CLOSE, 4 * MS));
        run.poll(&[(key, stats(INITIATOR_LOCAL, syn_ack, syn_ack, 9, 4 * MS))], 500 * MS);
        let end = run.flush(500 * MS);
        assert_eq!((end[0].event, end[0].state, end[0].stats.packets_out), (RecordEvent::End, FlowState::Closed, 9));
    }

    #[test]
    fn counter_updates_wait_for_the_update_interval() {
        let mut run = Run::new();
        let key = key(PROTO_UDP, 7);
        run.poll(&[(key, stats(INITIATOR_LOCAL, 0, 0, 1, MS))], MS);
        assert_eq!(run.flush(MS)[0].event, RecordEvent::Start);
        run.poll(&[(key, stats(INITIATOR_LOCAL, 0, 0, 2, 2 * MS))], 2 * MS);
        assert!(run.flush(2 * MS).is_empty());
        run.poll(&[(key, stats(INITIATOR_LOCAL, 0, 0, 3, 10_001 * MS))], 10_001 * MS);
        let update = run.flush(10_002 * MS);
        assert_eq!((update[0].event, update[0].stats.packets_out), (RecordEvent::Update, 3));
        assert_eq!(run.table.stats().flows_discovered, 1);
    }

    #[test]
    fn idle_udp_flow_expires() {
        let mut run = Run::new();
        let key = key(PROTO_UDP, 7);
        run.event(new_flow(key, MS));
        run.poll(&[(key, stats(INITIATOR_REMOTE, 0, 0, 1, MS))], MS);
        run.flush(2 * MS);
        let out = run.flush(31_000 * MS);
        assert_eq!((out[0].event, out[0].state), (RecordEvent::End, FlowState::Expired));
    }

    #[test]
    fn flow_missing_from_the_map_was_evicted_but_not_one_created_after_the_snapshot() {
        let mut run = Run::new();
        let old = key(PROTO_UDP, 7);
        let young = key(PROTO_UDP, 8);
        run.event(new_flow(old, MS));
        run.event(new_flow(young, 5 * MS));
        run.poll(&[], 3 * MS);
        assert_eq!(run.out.len(), 1);
        assert_eq!((run.out[0].key, run.out[0].state), (old, FlowState::Evicted));
        assert_eq!(run.table.len(), 1);
        assert_eq!(run.table.stats().flows_evicted, 1);
    }

    #[test]
    fn reused_tuple_ends_the_old_flow_and_the_new_one_carries_on_from_its_counters() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        run.event(new_flow(key, 1));
        run.poll(&[(key, stats(INITIATOR_LOCAL, syn_ack, syn_ack, 5, 2))], 3);
        run.event(state_event(key, tcp_state::ESTABLISHED, tcp_state::CLOSE, 4));
        run.event(state_event(key, tcp_state::CLOSE, tcp_state::SYN_SENT, 5));
        assert_eq!(run.out.len(), 1);
        assert_eq!((run.out[0].state, run.out[0].stats.packets_out), (FlowState::Closed, 5));
        assert!(run.delete.is_empty(), "the kernel entry now counts the new connection");
        run.out.clear();
        run.event(state_event(key, tcp_state::SYN_SENT, tcp_state::ESTABLISHED, 6));
        run.poll(&[(key, stats(INITIATOR_LOCAL, syn_ack, syn_ack, 9, 7))], 8);
        run.event(state_event(key, tcp_state::ESTABLISHED, tcp_state::CLOSE, 9));
        let out = run.flush(500 * MS);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].state, out[0].stats.packets_out, out[0].stats.packets_in), (FlowState::Closed, 4, 4));
        assert_eq!(out[0].stats.first_seen_ns, 5);
        assert_eq!(run.table.stats().tuples_reused, 1);
        assert_eq!(run.delete, vec![key]);
    }

    fn close_with_counters(key: FlowKey, old: u8, at: u64, counters: SocketCounters) -> Event {
        Event { has_counters: 1, counters, ..state_event(key, old, tcp_state::CLOSE, at) }
    }

    #[test]
    fn a_close_events_socket_counters_are_final_and_outlast_later_polls() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        let sampled = FlowStats { counted: COUNTED_SOCKET, ..stats(INITIATOR_LOCAL, syn_ack, syn_ack, 3, 2 * MS) };
        run.event(new_flow(key, 1));
        run.poll(&[(key, sampled)], 2 * MS);
        let last = SocketCounters { packets_out: 6, bytes_out: 1000, packets_in: 4, bytes_in: 5000 };
        run.event(close_with_counters(key, tcp_state::FIN_WAIT2, 4 * MS, last));
        // The map still holds what the last sampled packet wrote.
        run.poll(&[(key, FlowStats { last_seen_ns: 3 * MS, ..sampled })], 5 * MS);
        let end = run.flush(500 * MS);
        assert_eq!(end.len(), 1, "{end:?}");
        let stats = end[0].stats;
        assert_eq!((end[0].event, end[0].state), (RecordEvent::End, FlowState::Closed));
        assert_eq!((stats.packets_out, stats.bytes_out, stats.packets_in, stats.bytes_in), (6, 1000, 4, 5000));
        assert_eq!((stats.counted, stats.last_seen_ns), (COUNTED_SOCKET, 4 * MS));
    }

    #[test]
    fn a_reused_tuple_counted_from_sockets_starts_again_from_zero() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        run.event(new_flow(key, 1));
        let first = SocketCounters { packets_out: 6, bytes_out: 16, packets_in: 4, bytes_in: 0 };
        run.event(close_with_counters(key, tcp_state::FIN_WAIT2, 4, first));
        run.event(state_event(key, tcp_state::CLOSE, tcp_state::SYN_SENT, 5));
        assert_eq!((run.out.len(), run.out[0].stats.bytes_out), (1, 16));
        run.out.clear();
        let second = SocketCounters { packets_out: 5, bytes_out: 16, packets_in: 4, bytes_in: 0 };
        let polled = FlowStats { counted: COUNTED_SOCKET, ..stats(INITIATOR_LOCAL, syn_ack, syn_ack, 1, 6) };
        run.poll(&[(key, polled)], 7);
        run.event(state_event(key, tcp_state::SYN_SENT, tcp_state::ESTABLISHED, 8));
        run.event(close_with_counters(key, tcp_state::FIN_WAIT2, 9, second));
        let out = run.flush(500 * MS);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].stats.packets_out, out[0].stats.bytes_out, out[0].stats.packets_in), (5, 16, 4));
    }

    #[test]
    fn handshake_in_counters_means_established_when_the_event_was_lost() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        run.poll(&[(key, stats(INITIATOR_REMOTE, syn_ack, syn_ack, 3, MS))], MS);
        assert_eq!(run.flush(MS)[0].state, FlowState::Established);
    }

    #[test]
    fn drain_ends_everything() {
        let mut run = Run::new();
        run.event(new_flow(key(PROTO_TCP, 1), 1));
        run.event(new_flow(key(PROTO_UDP, 2), 1));
        let mut out = Vec::new();
        run.table.drain(&mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|emission| emission.event == RecordEvent::End));
        assert_eq!(run.table.stats().flows_ended, 2);
    }
}
