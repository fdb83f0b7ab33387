//! The flow table: turns kernel events and polled counters into flow records.
//!
//! In: ring-buffer [`Event`]s (new flows, TCP state changes) and periodic
//! snapshots of the kernel flow map, all stamped with CLOCK_MONOTONIC
//! nanoseconds. Out: [`Emission`]s (start, update, end of a flow with its
//! counters, state, connection handle and the counters its previous record
//! reported) and the flow-map keys the caller must delete because their flows
//! ended. Pure logic: no kernel, no clock of its own.
//!
//! Memory follows the number of live flows, so an entry is kept small: flows
//! are keyed by their tuple (a socket's cgroup is fixed, so a tuple is almost
//! always one flow), times that only ever need millisecond precision are
//! stored as 32-bit milliseconds, and rare state (the base counters of a
//! reused tuple, flows sharing a tuple, TCP states waiting for their flow)
//! lives in side maps.
//!
//! The kernel map is an LRU hash: when it is full, an insert silently evicts
//! another flow's entry, and a later packet of that flow creates a new one,
//! counting from zero, its initiator only guessed. So a flow's initiator is
//! the one its first new-flow event carried, never a later entry's; an entry
//! gone from a poll, or one polled with a later creation time, was evicted,
//! and the counters it had last are kept aside and added to what the flow's
//! next entry counts (a socket's counters, being totals, are not added but
//! replaced). Such a flow stays one flow (one handle, one end) and ends
//! `evicted` with the counters known (what its entries counted between the
//! last poll and their eviction is lost), unless its socket's close brings
//! the final counters, which lose nothing.

use observer_common::{
    COUNTED_SOCKET, EVENT_NEW_FLOW, EVENT_TCP_STATE, Event, FlowKey, FlowStats, INITIATOR_LOCAL, INITIATOR_REMOTE,
    PROTO_TCP, tcp_flags, tcp_state,
};

use crate::{
    FastMap,
    flow::{FlowState, RecordEvent},
};

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

/// Packets and bytes a flow's local end sent and received.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets sent by the local end.
    pub packets_out: u64,
    /// Bytes sent by the local end.
    pub bytes_out: u64,
    /// Packets received by the local end.
    pub packets_in: u64,
    /// Bytes received by the local end.
    pub bytes_in: u64,
}

impl Counters {
    /// The counters of `stats`.
    pub fn of(stats: &FlowStats) -> Self {
        Self {
            packets_out: stats.packets_out,
            bytes_out: stats.bytes_out,
            packets_in: stats.packets_in,
            bytes_in: stats.bytes_in,
        }
    }

    /// What was added since `before`.
    pub fn since(self, before: Self) -> Self {
        Self {
            packets_out: self.packets_out.saturating_sub(before.packets_out),
            bytes_out: self.bytes_out.saturating_sub(before.bytes_out),
            packets_in: self.packets_in.saturating_sub(before.packets_in),
            bytes_in: self.bytes_in.saturating_sub(before.bytes_in),
        }
    }
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
    /// The connection's handle: the same on each of its records, never
    /// reused while the table lives (a connection reusing a tuple gets its own).
    pub flow: u64,
    /// The counters of the connection's previous record; `None` on its first.
    pub reported: Option<Counters>,
}

/// Counts of what the table did, for health reporting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableStats {
    /// Flows the table started tracking.
    pub flows_tracked: u64,
    /// Flows that ended (any reason).
    pub flows_ended: u64,
    /// Flows that ended `evicted`: the kernel map evicted an entry of theirs
    /// and no final counters made up for what it held.
    pub flows_evicted: u64,
    /// Flows found without a new-flow event: by polling (the event was lost,
    /// or was still on the ring when a burst's flow was polled: its event
    /// then changes nothing), or at their close (a TCP connection no packet
    /// put in the flow map).
    pub flows_discovered: u64,
    /// TCP state changes that matched no flow in time.
    pub states_unmatched: u64,
    /// Connections that reused the tuple of a flow not yet reported.
    pub tuples_reused: u64,
}

/// CLOCK_MONOTONIC milliseconds, wrapping every 49 days: enough for the
/// intervals the table measures (at most the pending and update timeouts),
/// and half the size of nanoseconds in every entry.
type Millis = u32;

/// `ns` in milliseconds, rounded up: a stored time is never earlier than the
/// event, so an interval measured from it is never overestimated.
fn millis(ns: u64) -> Millis {
    ns.div_ceil(1_000_000) as Millis
}

/// Nanoseconds from `then` to `now_ns` (zero if `then` is later).
fn since_ns(now_ns: u64, then: Millis) -> u64 {
    let now = (now_ns / 1_000_000) as Millis;
    // Differences within ±24 days are exact despite the wrapping.
    u64::try_from(now.wrapping_sub(then) as i32).map_or(0, |elapsed| elapsed * 1_000_000)
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
        at: Millis,
        from: u8,
    },
}

impl Phase {
    /// The connection completed its handshake.
    fn synchronized(self) -> bool {
        match self {
            Self::Established => true,
            Self::Closed { from, .. } => tcp_state::is_synchronized(from),
            Self::None | Self::Attempted => false,
        }
    }
}

/// A flow key without its cgroup: what TCP state events carry and the table
/// is keyed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tuple {
    local_addr: [u8; 16],
    remote_addr: [u8; 16],
    local_port: u16,
    remote_port: u16,
    protocol: u8,
    family: u8,
}

impl Tuple {
    fn of(key: &FlowKey) -> Self {
        Self {
            local_addr: key.local_addr,
            remote_addr: key.remote_addr,
            local_port: key.local_port,
            remote_port: key.remote_port,
            protocol: key.protocol,
            family: key.family,
        }
    }

    fn key(&self, cgroup_id: u64) -> FlowKey {
        FlowKey {
            cgroup_id,
            local_addr: self.local_addr,
            remote_addr: self.remote_addr,
            local_port: self.local_port,
            remote_port: self.remote_port,
            protocol: self.protocol,
            family: self.family,
            _pad: [0; 2],
        }
    }
}

#[derive(Clone, Debug)]
struct Tracked {
    cgroup_id: u64,
    /// The connection's handle.
    id: u64,
    /// Counters of the kernel entry, as last polled.
    stats: FlowStats,
    /// This connection's counters in its last record (zero before one).
    reported_counters: Counters,
    /// State of the last record, if one was written.
    reported: Option<FlowState>,
    /// When the last record was written (or tracking began).
    last_report: Millis,
    phase: Phase,
    /// This connection took over a kernel entry from an earlier one with the
    /// same tuple: its [`Base`] is in the side map.
    reused: bool,
    /// The parity of the last poll whose snapshot held the entry.
    polled: bool,
    /// The packet and byte counters are a closed socket's final ones (from
    /// its close event): polls no longer replace them.
    final_counters: bool,
}

// Every live flow has one: the userspace budget is 256 bytes per flow, in
// whose map this sits beside its 38-byte key.
const _: () = assert!(size_of::<Tracked>() == 120);

/// What an earlier connection on the same tuple left in a kernel entry that a
/// new connection took over: subtracted in the new one's records.
#[derive(Clone, Copy, Debug)]
struct Base {
    counters: Counters,
    /// When the new connection started.
    started_ns: u64,
}

/// What the kernel entries of a flow held when the map evicted them: added
/// to what its current entry counts.
#[derive(Clone, Copy, Debug)]
struct Lost {
    /// The evicted entries' counters of this connection, as last polled.
    counters: Counters,
    /// When the flow's first entry was created.
    first_seen_ns: u64,
    /// The flags the evicted entries had seen.
    tcp_flags_out: u8,
    tcp_flags_in: u8,
}

impl Counters {
    fn plus(self, other: Self) -> Self {
        Self {
            packets_out: self.packets_out + other.packets_out,
            bytes_out: self.bytes_out + other.bytes_out,
            packets_in: self.packets_in + other.packets_in,
            bytes_in: self.bytes_in + other.bytes_in,
        }
    }
}

fn with_counters(stats: FlowStats, counters: Counters) -> FlowStats {
    FlowStats {
        packets_out: counters.packets_out,
        bytes_out: counters.bytes_out,
        packets_in: counters.packets_in,
        bytes_in: counters.bytes_in,
        ..stats
    }
}

/// The counters of a connection: the entry's minus what an earlier connection
/// on the same tuple left in it, plus what its evicted entries held.
fn view(flow: &Tracked, base: Option<&Base>, lost: Option<&Lost>) -> FlowStats {
    let mut stats = flow.stats;
    if let Some(base) = base {
        stats = FlowStats {
            first_seen_ns: base.started_ns,
            last_seen_ns: flow.stats.last_seen_ns.max(base.started_ns),
            ..with_counters(stats, Counters::of(&flow.stats).since(base.counters))
        };
    }
    if let Some(lost) = lost {
        stats = FlowStats {
            first_seen_ns: lost.first_seen_ns,
            tcp_flags_out: stats.tcp_flags_out | lost.tcp_flags_out,
            tcp_flags_in: stats.tcp_flags_in | lost.tcp_flags_in,
            ..with_counters(stats, Counters::of(&stats).plus(lost.counters))
        };
    }
    stats
}

/// The side state of `flow` (of `key`): its reuse base and what its evicted
/// entries held. Both maps are empty unless tuples were reused or entries
/// evicted, and are only looked up then.
fn sides<'a>(
    key: &FlowKey,
    flow: &Tracked,
    bases: &'a FastMap<FlowKey, Base>,
    lost: &'a FastMap<FlowKey, Lost>,
) -> (Option<&'a Base>, Option<&'a Lost>) {
    let base = if flow.reused { bases.get(key) } else { None };
    let lost = if lost.is_empty() { None } else { lost.get(key) };
    (base, lost)
}

/// The kernel map evicted `flow`'s entry (gone from a poll, or found again
/// with a later creation time): what it last held of this connection moves
/// into `lost`, and the flow counts from zero on whatever entry comes next.
/// A socket's counters are totals, not counts since the entry began: they
/// stay as the best known until a later entry (or the close) brings newer.
fn lose(key: FlowKey, flow: &mut Tracked, bases: &mut FastMap<FlowKey, Base>, lost: &mut FastMap<FlowKey, Lost>) {
    let base = if flow.reused { bases.remove(&key) } else { None };
    let had = view(flow, base.as_ref(), None);
    let socket = flow.stats.counted == COUNTED_SOCKET;
    let kept = lost.entry(key).or_insert(Lost {
        counters: Counters::default(),
        first_seen_ns: had.first_seen_ns,
        tcp_flags_out: 0,
        tcp_flags_in: 0,
    });
    kept.tcp_flags_out |= had.tcp_flags_out;
    kept.tcp_flags_in |= had.tcp_flags_in;
    flow.reused = false;
    if !socket {
        kept.counters = kept.counters.plus(Counters::of(&had));
        flow.stats = with_counters(flow.stats, Counters::default());
    }
}

/// A record of `flow` (of `key`) as it stands.
fn emission(
    key: FlowKey,
    flow: &Tracked,
    (base, lost): (Option<&Base>, Option<&Lost>),
    event: RecordEvent,
    state: FlowState,
) -> Emission {
    let mut stats = view(flow, base, lost);
    if flow.phase.synchronized() {
        // A completed handshake sent and received SYN and ACK each way,
        // though its last ACK takes the kernel's fast path at both ends.
        let handshake = tcp_flags::SYN | tcp_flags::ACK;
        stats.tcp_flags_out |= handshake;
        stats.tcp_flags_in |= handshake;
    }
    Emission { key, stats, event, state, flow: flow.id, reported: flow.reported.map(|_| flow.reported_counters) }
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
    /// One flow per tuple: the first tracked.
    flows: FastMap<Tuple, Tracked>,
    /// Further flows whose tuple a flow of another cgroup holds in `flows`
    /// (host processes pinging the same address, a tuple reused across
    /// cgroups): rare, and only ever beside an entry of `flows`.
    shared: FastMap<Tuple, Vec<Tracked>>,
    /// Base counters of connections that reused a kernel entry.
    bases: FastMap<FlowKey, Base>,
    /// What the evicted kernel entries of live flows held.
    lost: FastMap<FlowKey, Lost>,
    pending: FastMap<Tuple, Pending>,
    /// Handle of the latest connection.
    last_id: u64,
    /// Flipped by every poll, so a poll finds the flows its snapshot missed
    /// without a set of the keys it held.
    parity: bool,
    stats: TableStats,
}

impl FlowTable {
    /// An empty table.
    pub fn new(config: TableConfig) -> Self {
        Self {
            config,
            flows: FastMap::default(),
            shared: FastMap::default(),
            bases: FastMap::default(),
            lost: FastMap::default(),
            pending: FastMap::default(),
            last_id: 0,
            parity: false,
            stats: TableStats::default(),
        }
    }

    /// What the table did so far.
    pub fn stats(&self) -> TableStats {
        self.stats
    }

    /// Flows tracked now.
    pub fn len(&self) -> usize {
        self.flows.len() + self.shared.values().map(Vec::len).sum::<usize>()
    }

    /// Whether no flow is tracked.
    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Whether a flow with `key`'s tuple is tracked, of any cgroup (what a
    /// TCP state event applies to).
    fn has_tuple(&self, key: &FlowKey) -> bool {
        self.flows.contains_key(&Tuple::of(key))
    }

    fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    fn get_mut(&mut self, key: &FlowKey) -> Option<&mut Tracked> {
        find_mut(&mut self.flows, &mut self.shared, key)
    }

    fn insert(&mut self, tuple: Tuple, flow: Tracked) {
        match self.flows.get(&tuple) {
            Some(_) => self.shared.entry(tuple).or_default().push(flow),
            None => {
                self.flows.insert(tuple, flow);
            }
        }
    }

    fn remove(&mut self, key: &FlowKey) -> Option<Tracked> {
        let tuple = Tuple::of(key);
        if self.flows.get(&tuple).is_some_and(|flow| flow.cgroup_id == key.cgroup_id) {
            let removed = self.flows.remove(&tuple);
            // Another flow of the tuple takes its place.
            if let Some(others) = self.shared.get_mut(&tuple)
                && let Some(next) = others.pop()
            {
                if others.is_empty() {
                    self.shared.remove(&tuple);
                }
                self.flows.insert(tuple, next);
            }
            return removed;
        }
        let others = self.shared.get_mut(&tuple)?;
        let index = others.iter().position(|flow| flow.cgroup_id == key.cgroup_id)?;
        let removed = others.swap_remove(index);
        if others.is_empty() {
            self.shared.remove(&tuple);
        }
        Some(removed)
    }

    /// Applies one ring-buffer event. Adds the records that must be written at
    /// once (a flow whose tuple a new connection reused) to `out`.
    pub fn on_event(&mut self, event: &Event, out: &mut Vec<Emission>) {
        match event.kind {
            EVENT_NEW_FLOW => {
                let at = event.timestamp_ns;
                let stats = FlowStats {
                    first_seen_ns: at,
                    last_seen_ns: at,
                    initiator: event.initiator,
                    ..FlowStats::default()
                };
                self.track(event.key, stats, at);
            }
            EVENT_TCP_STATE => self.on_tcp_state(event, out),
            _ => {}
        }
    }

    fn track(&mut self, key: FlowKey, stats: FlowStats, now: u64) {
        if self.get_mut(&key).is_some() {
            return;
        }
        let tuple = Tuple::of(&key);
        let is_tcp = key.protocol == PROTO_TCP;
        let mut phase = if is_tcp { Phase::Attempted } else { Phase::None };
        if is_tcp && let Some(pending) = self.pending.remove(&tuple) {
            phase = pending.phase;
        }
        self.start(key, stats, phase, now, false);
    }

    /// Starts tracking a new connection of `key` at `now`.
    fn start(&mut self, key: FlowKey, stats: FlowStats, phase: Phase, now: u64, final_counters: bool) {
        let flow = Tracked {
            cgroup_id: key.cgroup_id,
            id: self.next_id(),
            stats,
            reported_counters: Counters::default(),
            reported: None,
            last_report: millis(now),
            phase,
            reused: false,
            polled: self.parity,
            final_counters,
        };
        self.insert(Tuple::of(&key), flow);
        self.stats.flows_tracked += 1;
    }

    /// Tracks the connection of a close event that found no flow, from the
    /// event alone: its final counters and FINs, first seen at the close.
    fn track_closed(&mut self, event: &Event, phase: Phase) {
        let key = event.key;
        let at = event.timestamp_ns;
        // As the kernel guesses for a connection first seen after its
        // handshake: the end with the higher (ephemeral) port connected.
        let initiator = if key.local_port > key.remote_port { INITIATOR_LOCAL } else { INITIATOR_REMOTE };
        let stats = FlowStats { first_seen_ns: at, last_seen_ns: at, initiator, ..FlowStats::default() };
        self.start(key, with_final_counters(stats, event), phase, at, true);
        self.stats.flows_discovered += 1;
    }

    fn on_tcp_state(&mut self, event: &Event, out: &mut Vec<Emission>) {
        let at = event.timestamp_ns;
        let phase = match event.new_state {
            tcp_state::SYN_SENT => Phase::Attempted,
            tcp_state::ESTABLISHED => Phase::Established,
            tcp_state::CLOSE => Phase::Closed { at: millis(at), from: event.old_state },
            _ => return,
        };
        let tuple = Tuple::of(&event.key);
        if !self.has_tuple(&event.key) {
            if event.has_counters != 0 && event.key.cgroup_id != 0 {
                // A connection no packet put in the flow map (older than the
                // observer, its FIN on the fast path): its close, naming the
                // socket's cgroup, starts and ends it.
                self.pending.remove(&tuple);
                self.track_closed(event, phase);
                return;
            }
            self.pending.insert(tuple, Pending { phase, at });
            return;
        }
        let flows = self.flows.get_mut(&tuple).into_iter().chain(self.shared.get_mut(&tuple).into_iter().flatten());
        for flow in flows {
            let key = tuple.key(flow.cgroup_id);
            if matches!(flow.phase, Phase::Closed { .. }) && matches!(phase, Phase::Attempted | Phase::Established) {
                // A new connection reused the tuple (an ephemeral port freed
                // by tcp_tw_reuse) before the old one was reported. Its
                // packets already count on the same kernel entry, so the entry
                // stays: the old connection ends with the counters last
                // polled (or its socket's final ones), and the new one
                // carries on from them as its base; socket counters start
                // again from zero instead.
                let sides = sides(&key, flow, &self.bases, &self.lost);
                let state = end_state(flow, sides.1, closed_state(flow));
                out.push(emission(key, flow, sides, RecordEvent::End, state));
                self.stats.flows_evicted += u64::from(state == FlowState::Evicted);
                // The new connection's counts start on the entry as it is.
                self.lost.remove(&key);
                self.stats.flows_ended += 1;
                self.stats.flows_tracked += 1;
                self.stats.tuples_reused += 1;
                let socket = flow.stats.counted == COUNTED_SOCKET;
                let stats = if socket {
                    self.bases.remove(&key);
                    FlowStats { packets_out: 0, bytes_out: 0, packets_in: 0, bytes_in: 0, ..flow.stats }
                } else {
                    self.bases.insert(key, Base { counters: Counters::of(&flow.stats), started_ns: at });
                    flow.stats
                };
                self.last_id += 1;
                *flow = Tracked {
                    id: self.last_id,
                    stats,
                    reported_counters: Counters::default(),
                    reported: None,
                    last_report: millis(at),
                    phase,
                    reused: !socket,
                    final_counters: false,
                    ..*flow
                };
                continue;
            }
            if !matches!(flow.phase, Phase::Closed { .. }) {
                flow.phase = phase;
                if event.has_counters != 0 {
                    flow.stats = with_final_counters(flow.stats, event);
                    flow.final_counters = true;
                    // The socket's totals include whatever evicted entries held.
                    if let Some(lost) = self.lost.get_mut(&key) {
                        lost.counters = Counters::default();
                    }
                }
            }
        }
    }

    /// Applies a snapshot of the kernel flow map taken starting at `taken_ns`.
    /// A flow whose entry is missing from it (and existed before it was
    /// taken), or was created again since the last one, lost that entry to
    /// an eviction: see the module's documentation.
    pub fn on_poll(&mut self, snapshot: &[(FlowKey, FlowStats)], taken_ns: u64) {
        self.parity = !self.parity;
        let parity = self.parity;
        for (key, stats) in snapshot {
            let Some(flow) = find_mut(&mut self.flows, &mut self.shared, key) else {
                self.track(*key, *stats, stats.first_seen_ns);
                self.stats.flows_discovered += 1;
                continue;
            };
            flow.polled = parity;
            // What the kernel saw first decides; an entry created again
            // after an eviction only guessed.
            let initiator = match flow.stats.initiator {
                0 => stats.initiator,
                known => known,
            };
            if flow.final_counters {
                // The close's counters are final; the map adds only times
                // and flags (its own only ever grow).
                flow.stats.last_seen_ns = flow.stats.last_seen_ns.max(stats.last_seen_ns);
                flow.stats.tcp_flags_out |= stats.tcp_flags_out;
                flow.stats.tcp_flags_in |= stats.tcp_flags_in;
                continue;
            }
            // A later creation time: the flow's entry was evicted and a
            // packet of it made a new one since the last poll.
            if stats.first_seen_ns > flow.stats.first_seen_ns {
                lose(*key, flow, &mut self.bases, &mut self.lost);
            }
            flow.stats = FlowStats { initiator, ..*stats };
        }
        // A flow whose close brought its final counters has nothing left in
        // the map to lose (and one tracked from its close was never there).
        let gone: Vec<FlowKey> = self
            .iter()
            .filter(|(_, flow)| flow.polled != parity && flow.stats.first_seen_ns < taken_ns && !flow.final_counters)
            .map(|(tuple, flow)| tuple.key(flow.cgroup_id))
            .collect();
        for key in gone {
            if let Some(flow) = find_mut(&mut self.flows, &mut self.shared, &key) {
                lose(key, flow, &mut self.bases, &mut self.lost);
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&Tuple, &Tracked)> {
        self.flows
            .iter()
            .chain(self.shared.iter().flat_map(|(tuple, flows)| flows.iter().map(move |flow| (tuple, flow))))
    }

    /// Decides what to report at `now`: starts, updates and ends. Keys of
    /// ended flows go to `delete`.
    pub fn flush(&mut self, now: u64, out: &mut Vec<Emission>, delete: &mut Vec<FlowKey>) {
        let config = self.config;
        let pending_before = self.pending.len();
        self.pending.retain(|_, pending| now.saturating_sub(pending.at) < config.pending_timeout_ns);
        self.stats.states_unmatched += (pending_before - self.pending.len()) as u64;
        let mut ended = Vec::new();
        let (bases, lost) = (&self.bases, &self.lost);
        let shared = self.shared.iter_mut().flat_map(|(tuple, flows)| flows.iter_mut().map(move |flow| (tuple, flow)));
        for (tuple, flow) in self.flows.iter_mut().chain(shared) {
            let key = tuple.key(flow.cgroup_id);
            let sides = sides(&key, flow, bases, lost);
            let idle = now.saturating_sub(flow.stats.last_seen_ns);
            let end = match flow.phase {
                Phase::Closed { at, .. } if since_ns(now, at) >= config.close_linger_ns => Some(closed_state(flow)),
                Phase::Closed { .. } => None,
                Phase::None if idle >= config.idle_timeout_ns => Some(FlowState::Expired),
                // A connection counted from its socket ends with its close
                // event, however quiet: between sampling points its packets
                // never touch the map, so `last_seen` says nothing of it,
                // and its entry, idle, is the first a full map evicts. (A
                // close lost to a full ring buffer is counted in
                // events_lost; the flow then ends when the observer stops.)
                Phase::Established if flow.stats.counted == COUNTED_SOCKET => None,
                Phase::Attempted | Phase::Established if idle >= config.tcp_idle_timeout_ns => Some(FlowState::Expired),
                _ => None,
            };
            if let Some(state) = end {
                let state = end_state(flow, sides.1, state);
                out.push(emission(key, flow, sides, RecordEvent::End, state));
                self.stats.flows_evicted += u64::from(state == FlowState::Evicted);
                ended.push(key);
                continue;
            }
            if matches!(flow.phase, Phase::Closed { .. }) {
                // Ends within the linger: one end record says it all.
                continue;
            }
            let state = live_state(flow);
            let event = match flow.reported {
                None => Some(RecordEvent::Start),
                Some(reported_state) if reported_state != state => Some(RecordEvent::Update),
                Some(_)
                    if counters_changed(&flow.reported_counters, &view(flow, sides.0, sides.1))
                        && since_ns(now, flow.last_report) >= config.update_interval_ns =>
                {
                    Some(RecordEvent::Update)
                }
                Some(_) => None,
            };
            if let Some(event) = event {
                let record = emission(key, flow, sides, event, state);
                out.push(record);
                flow.reported_counters = Counters::of(&record.stats);
                flow.reported = Some(state);
                flow.last_report = millis(now);
            }
        }
        for key in ended {
            if self.remove(&key).is_some() {
                self.ended(&key);
            }
            delete.push(key);
        }
    }

    /// Ends every flow (the observer is stopping), reporting its state as it
    /// stands.
    pub fn drain(&mut self, out: &mut Vec<Emission>) {
        let mut evicted = 0;
        for (tuple, flow) in self.iter() {
            let key = tuple.key(flow.cgroup_id);
            let sides = sides(&key, flow, &self.bases, &self.lost);
            let state = match flow.phase {
                Phase::Closed { .. } => closed_state(flow),
                _ => live_state(flow),
            };
            let state = end_state(flow, sides.1, state);
            out.push(emission(key, flow, sides, RecordEvent::End, state));
            evicted += u64::from(state == FlowState::Evicted);
        }
        self.stats.flows_evicted += evicted;
        self.stats.flows_ended += self.len() as u64;
        self.flows.clear();
        self.shared.clear();
        self.bases.clear();
        self.lost.clear();
        // State changes still waiting for their flow never found it.
        self.stats.states_unmatched += self.pending.len() as u64;
        self.pending.clear();
    }

    /// Counts a flow removed from the maps as ended and drops its side state.
    fn ended(&mut self, key: &FlowKey) {
        self.stats.flows_ended += 1;
        self.bases.remove(key);
        self.lost.remove(key);
    }

    /// Counts TCP state changes that never found their flow; call after
    /// `flush` drops stale pending entries.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// The flow `tuple_key` names among `flows` and `shared` (see
/// [`FlowTable`]), borrowing only those two maps.
fn find_mut<'a>(
    flows: &'a mut FastMap<Tuple, Tracked>,
    shared: &'a mut FastMap<Tuple, Vec<Tracked>>,
    key: &FlowKey,
) -> Option<&'a mut Tracked> {
    let tuple = Tuple::of(key);
    if shared.is_empty() {
        return flows.get_mut(&tuple).filter(|flow| flow.cgroup_id == key.cgroup_id);
    }
    if flows.get(&tuple).is_some_and(|flow| flow.cgroup_id == key.cgroup_id) {
        return flows.get_mut(&tuple);
    }
    shared.get_mut(&tuple)?.iter_mut().find(|flow| flow.cgroup_id == key.cgroup_id)
}

/// How a flow that ends in `state` is reported: `evicted` when an entry of
/// its went with the counters it held since the last poll, and no socket's
/// final counters made up for them.
fn end_state(flow: &Tracked, lost: Option<&Lost>, state: FlowState) -> FlowState {
    if lost.is_some() && !flow.final_counters { FlowState::Evicted } else { state }
}

fn counters_changed(before: &Counters, now: &FlowStats) -> bool {
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

/// A closing socket's counters (carried by its close event) replace the
/// packet and byte counters: they are final and exact, where the flow map
/// holds only what the last sampled packet wrote. The FINs it sent and
/// received join the flags (the FINs of a connected socket take the
/// kernel's fast path).
fn with_final_counters(stats: FlowStats, event: &Event) -> FlowStats {
    let counters = event.counters;
    FlowStats {
        packets_out: counters.packets_out,
        bytes_out: counters.bytes_out,
        packets_in: counters.packets_in,
        bytes_in: counters.bytes_in,
        tcp_flags_out: stats.tcp_flags_out | event.tcp_flags_out,
        tcp_flags_in: stats.tcp_flags_in | event.tcp_flags_in,
        counted: COUNTED_SOCKET,
        last_seen_ns: stats.last_seen_ns.max(event.timestamp_ns),
        ..stats
    }
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
    use observer_common::{FAMILY_IPV4, PROTO_UDP, SocketCounters};

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
            self.table.on_poll(snapshot, at);
        }
        fn flush(&mut self, at: u64) -> Vec<Emission> {
            self.table.flush(at, &mut self.out, &mut self.delete);
            std::mem::take(&mut self.out)
        }
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
        let end: Vec<_> = end.iter().filter(|emission| emission.event == RecordEvent::End).collect();
        assert_eq!(end.len(), 1, "{end:?}");
        let stats = end[0].stats;
        assert_eq!(end[0].state, FlowState::Closed);
        assert_eq!((stats.packets_out, stats.bytes_out, stats.packets_in, stats.bytes_in), (6, 1000, 4, 5000));
        assert_eq!((stats.counted, stats.last_seen_ns), (COUNTED_SOCKET, 4 * MS));
    }

    #[test]
    fn a_reused_tuple_counted_from_sockets_starts_again_from_zero() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        run.event(new_flow(key, MS));
        let first = SocketCounters { packets_out: 6, bytes_out: 16, packets_in: 4, bytes_in: 0 };
        run.event(close_with_counters(key, tcp_state::FIN_WAIT2, 4 * MS, first));
        run.event(state_event(key, tcp_state::CLOSE, tcp_state::SYN_SENT, 5 * MS));
        assert_eq!((run.out.len(), run.out[0].stats.bytes_out), (1, 16));
        let first_handle = run.out[0].flow;
        run.out.clear();
        let second = SocketCounters { packets_out: 5, bytes_out: 16, packets_in: 4, bytes_in: 0 };
        let polled = FlowStats { counted: COUNTED_SOCKET, ..stats(INITIATOR_LOCAL, syn_ack, syn_ack, 1, 6 * MS) };
        run.poll(&[(key, polled)], 7 * MS);
        run.event(state_event(key, tcp_state::SYN_SENT, tcp_state::ESTABLISHED, 8 * MS));
        run.event(close_with_counters(key, tcp_state::FIN_WAIT2, 9 * MS, second));
        let out = run.flush(500 * MS);
        let end: Vec<_> = out.iter().filter(|emission| emission.event == RecordEvent::End).collect();
        assert_eq!(end.len(), 1, "{out:?}");
        assert_eq!((end[0].stats.packets_out, end[0].stats.bytes_out, end[0].stats.packets_in), (5, 16, 4));
        assert_ne!(end[0].flow, first_handle, "a new connection, a new handle");
    }

    #[test]
    fn a_quiet_connection_counted_from_its_socket_waits_for_its_close() {
        let mut run = Run::new();
        let (socket, packets) = (key(PROTO_TCP, 7), key(PROTO_TCP, 8));
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        let per_packet = stats(INITIATOR_LOCAL, syn_ack, syn_ack, 3, MS);
        let counted = FlowStats { counted: COUNTED_SOCKET, ..per_packet };
        for key in [socket, packets] {
            run.event(new_flow(key, MS));
            run.event(state_event(key, tcp_state::SYN_SENT, tcp_state::ESTABLISHED, MS));
        }
        run.poll(&[(socket, counted), (packets, per_packet)], 2 * MS);
        // Far past the TCP idle timeout, with no packet in the map since.
        let out = run.flush(config().tcp_idle_timeout_ns * 10);
        let ended: Vec<_> = out.iter().filter(|emission| emission.event == RecordEvent::End).collect();
        assert_eq!(ended.len(), 1, "{out:?}");
        assert_eq!((ended[0].key, ended[0].state), (packets, FlowState::Expired));
        assert_eq!(run.table.len(), 1, "the socket-counted connection is still open");
    }

    #[test]
    fn a_close_naming_its_cgroup_starts_and_ends_a_connection_never_seen() {
        let mut run = Run::new();
        let key = FlowKey { local_port: 8090, remote_port: 41_000, ..key(PROTO_TCP, 7) };
        let counters = SocketCounters { packets_out: 4, bytes_out: 100, packets_in: 5, bytes_in: 100 };
        let close = Event {
            key,
            tcp_flags_out: tcp_flags::FIN,
            tcp_flags_in: tcp_flags::FIN,
            ..close_with_counters(key, tcp_state::LAST_ACK, 4 * MS, counters)
        };
        run.event(close);
        // Never in the kernel map: not evicted while it lingers.
        run.poll(&[], 5 * MS);
        assert!(run.out.is_empty(), "{:?}", run.out);
        let out = run.flush(500 * MS);
        assert_eq!(out.len(), 1, "{out:?}");
        let (end, stats) = (&out[0], out[0].stats);
        assert_eq!((end.key, end.event, end.state), (key, RecordEvent::End, FlowState::Closed));
        assert_eq!((stats.packets_out, stats.bytes_out, stats.packets_in, stats.bytes_in), (4, 100, 5, 100));
        assert_eq!((stats.counted, stats.initiator, stats.first_seen_ns), (COUNTED_SOCKET, INITIATOR_REMOTE, 4 * MS));
        let all = tcp_flags::SYN | tcp_flags::ACK | tcp_flags::FIN;
        assert_eq!((stats.tcp_flags_out, stats.tcp_flags_in), (all, all));
        let table = run.table.stats();
        assert_eq!((table.flows_discovered, table.flows_evicted, table.states_unmatched), (1, 0, 0));
    }

    #[test]
    fn a_close_naming_no_cgroup_waits_for_its_flow() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        let counters = SocketCounters { packets_out: 4, ..SocketCounters::default() };
        run.event(close_with_counters(key, tcp_state::FIN_WAIT2, MS, counters));
        assert!(run.table.is_empty());
        run.event(new_flow(key, 2 * MS));
        let out = run.flush(500 * MS);
        assert_eq!((out[0].key, out[0].state), (key, FlowState::Closed));
        assert_eq!(run.table.stats().states_unmatched, 0);
    }

    #[test]
    fn an_established_connection_reports_the_handshake_and_the_fins_of_its_close() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        run.event(new_flow(key, MS));
        run.event(state_event(key, tcp_state::SYN_SENT, tcp_state::ESTABLISHED, MS));
        // The kernel map saw only the SYN out and the SYN-ACK in.
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        let polled = FlowStats { counted: COUNTED_SOCKET, ..stats(INITIATOR_LOCAL, tcp_flags::SYN, syn_ack, 1, MS) };
        run.poll(&[(key, polled)], 2 * MS);
        let start = run.flush(2 * MS);
        assert_eq!((start[0].stats.tcp_flags_out, start[0].stats.tcp_flags_in), (syn_ack, syn_ack));
        let counters = SocketCounters { packets_out: 5, ..SocketCounters::default() };
        let close =
            Event { tcp_flags_out: tcp_flags::FIN, ..close_with_counters(key, tcp_state::FIN_WAIT1, 3 * MS, counters) };
        run.event(close);
        run.poll(&[(key, polled)], 4 * MS);
        let end = run.flush(500 * MS);
        assert_eq!(end[0].state, FlowState::Closed);
        assert_eq!((end[0].stats.tcp_flags_out, end[0].stats.tcp_flags_in), (syn_ack | tcp_flags::FIN, syn_ack));
    }

    #[test]
    fn a_state_change_still_waiting_for_its_flow_at_shutdown_is_unmatched() {
        let mut run = Run::new();
        run.event(state_event(key(PROTO_TCP, 7), tcp_state::SYN_SENT, tcp_state::ESTABLISHED, MS));
        assert_eq!(run.table.stats().states_unmatched, 0, "still waiting");
        run.table.drain(&mut run.out);
        assert_eq!(run.table.stats().states_unmatched, 1);
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
        // Each record says what the previous one reported, under one handle.
        assert_eq!(attempt[0].reported, None);
        assert_eq!(update[0].reported, Some(Counters::of(&attempt[0].stats)));
        assert_eq!(end[0].reported, Some(Counters::of(&update[0].stats)));
        assert!(attempt[0].flow == update[0].flow && update[0].flow == end[0].flow);
    }

    #[test]
    fn flows_of_two_cgroups_on_one_tuple_are_tracked_apart() {
        let mut run = Run::new();
        let (first, second) = (key(PROTO_UDP, 7), key(PROTO_UDP, 8));
        run.event(new_flow(first, MS));
        run.event(new_flow(second, MS));
        assert_eq!(run.table.len(), 2);
        run.poll(
            &[(first, stats(INITIATOR_LOCAL, 0, 0, 1, 2 * MS)), (second, stats(INITIATOR_LOCAL, 0, 0, 5, 2 * MS))],
            2 * MS,
        );
        let mut out = run.flush(3 * MS);
        out.sort_by_key(|emission| emission.key.cgroup_id);
        assert_eq!(
            out.iter().map(|emission| (emission.key, emission.stats.packets_out)).collect::<Vec<_>>(),
            [(first, 1), (second, 5)]
        );
        assert_ne!(out[0].flow, out[1].flow);
        // The first one's kernel entry goes: the second stays, found by its
        // own key. The first ends `evicted` when its idle time is up.
        run.poll(&[(second, stats(INITIATOR_LOCAL, 0, 0, 6, 4 * MS))], 4 * MS);
        run.poll(&[(second, stats(INITIATOR_LOCAL, 0, 0, 7, 30_000 * MS))], 30_000 * MS);
        run.out = run.flush(30_002 * MS);
        assert_eq!((run.out[0].key, run.out[0].state), (first, FlowState::Evicted));
        assert_eq!(run.table.len(), 1);
        run.out.clear();
        run.poll(&[(second, stats(INITIATOR_LOCAL, 0, 0, 8, 30_003 * MS))], 30_003 * MS);
        assert!(run.flush(30_004 * MS).is_empty());
        assert_eq!(run.table.stats().flows_evicted, 1);
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
        run.poll(&[(young, stats(INITIATOR_LOCAL, 0, 0, 1, 30_004 * MS))], 30_004 * MS);
        // The evicted one ends when its idle time is up, as it would have.
        let out = run.flush(30_004 * MS);
        let ends: Vec<_> = out.iter().filter(|emission| emission.event == RecordEvent::End).collect();
        assert_eq!(ends.len(), 1, "{out:?}");
        assert_eq!((ends[0].key, ends[0].state), (old, FlowState::Evicted));
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
        let old_flow = run.out[0].flow;
        assert!(run.delete.is_empty(), "the kernel entry now counts the new connection");
        run.out.clear();
        run.event(state_event(key, tcp_state::SYN_SENT, tcp_state::ESTABLISHED, 6));
        run.poll(&[(key, stats(INITIATOR_LOCAL, syn_ack, syn_ack, 9, 7))], 8);
        run.event(state_event(key, tcp_state::ESTABLISHED, tcp_state::CLOSE, 9));
        let out = run.flush(500 * MS);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].state, out[0].stats.packets_out, out[0].stats.packets_in), (FlowState::Closed, 4, 4));
        assert_eq!(out[0].stats.first_seen_ns, 5);
        assert_eq!(out[0].reported, None, "the new connection's first record");
        assert_ne!(out[0].flow, old_flow, "the new connection has its own handle");
        assert_eq!(run.table.stats().tuples_reused, 1);
        assert_eq!(run.delete, vec![key]);
    }

    #[test]
    fn handshake_in_counters_means_established_when_the_event_was_lost() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        run.poll(&[(key, stats(INITIATOR_REMOTE, syn_ack, syn_ack, 3, MS))], MS);
        assert_eq!(run.flush(MS)[0].state, FlowState::Established);
    }

    fn new_flow_from(key: FlowKey, initiator: u8, at: u64) -> Event {
        Event { initiator, ..new_flow(key, at) }
    }

    /// What a record says of a flow: who initiated it and its counters.
    fn summary(emission: &Emission) -> (u8, [u64; 4]) {
        let stats = emission.stats;
        (stats.initiator, [stats.packets_out, stats.bytes_out, stats.packets_in, stats.bytes_in])
    }

    #[test]
    fn an_entry_created_again_after_an_eviction_keeps_the_first_initiator_and_adds_what_the_first_held() {
        let mut run = Run::new();
        let key = key(PROTO_UDP, 7);
        // The request created the entry; polled once, then evicted, and the
        // reply created it again: counting from zero, guessing "remote".
        run.event(new_flow_from(key, INITIATOR_LOCAL, MS));
        let request = FlowStats {
            first_seen_ns: MS,
            last_seen_ns: MS,
            packets_out: 1,
            bytes_out: 32,
            ..stats(INITIATOR_LOCAL, 0, 0, 0, MS)
        };
        run.poll(&[(key, request)], 2 * MS);
        let start = run.flush(2 * MS);
        assert_eq!((start[0].event, summary(&start[0])), (RecordEvent::Start, (INITIATOR_LOCAL, [1, 32, 0, 0])));
        run.event(new_flow_from(key, INITIATOR_REMOTE, 3 * MS));
        let reply = FlowStats {
            first_seen_ns: 3 * MS,
            last_seen_ns: 3 * MS,
            packets_in: 1,
            bytes_in: 64,
            ..stats(INITIATOR_REMOTE, 0, 0, 0, 3 * MS)
        };
        run.poll(&[(key, reply)], 4 * MS);
        assert!(run.flush(4 * MS).is_empty(), "one flow still: no new start");
        let end = run.flush(30_003 * MS);
        assert_eq!(end.len(), 1, "{end:?}");
        assert_eq!((end[0].event, end[0].state), (RecordEvent::End, FlowState::Evicted));
        assert_eq!(summary(&end[0]), (INITIATOR_LOCAL, [1, 32, 1, 64]));
        assert_eq!((end[0].stats.first_seen_ns, end[0].stats.last_seen_ns), (MS, 3 * MS));
        assert_eq!((end[0].flow, end[0].reported), (start[0].flow, Some(Counters::of(&request))));
        assert_eq!((run.table.stats().flows_evicted, run.table.stats().flows_ended), (1, 1));
        assert_eq!(run.delete, vec![key]);
    }

    #[test]
    fn an_entry_evicted_and_created_again_between_two_polls_is_found_by_its_creation_time() {
        let mut run = Run::new();
        let key = key(PROTO_UDP, 7);
        run.event(new_flow_from(key, INITIATOR_REMOTE, MS));
        run.poll(&[(key, FlowStats { first_seen_ns: MS, ..stats(INITIATOR_REMOTE, 0, 0, 2, MS) })], 2 * MS);
        run.event(new_flow_from(key, INITIATOR_LOCAL, 5 * MS));
        run.poll(&[(key, FlowStats { first_seen_ns: 5 * MS, ..stats(INITIATOR_LOCAL, 0, 0, 3, 6 * MS) })], 7 * MS);
        let out = run.flush(8 * MS);
        assert_eq!((out[0].event, out[0].state), (RecordEvent::Start, FlowState::Active));
        assert_eq!(summary(&out[0]), (INITIATOR_REMOTE, [5, 300, 5, 300]));
        let end = run.flush(31_000 * MS);
        assert_eq!((end[0].state, summary(&end[0])), (FlowState::Evicted, (INITIATOR_REMOTE, [5, 300, 5, 300])));
    }

    #[test]
    fn a_connection_whose_entry_went_before_any_poll_is_oriented_by_its_event_and_ends_exact_at_its_close() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        // The SYN made the entry and the event; the full map evicted it
        // before the poll; the close brought the socket's final counters.
        run.event(new_flow_from(key, INITIATOR_LOCAL, MS));
        run.poll(&[], 2 * MS);
        let counters = SocketCounters { packets_out: 5, bytes_out: 17, packets_in: 4, bytes_in: 0 };
        run.event(close_with_counters(key, tcp_state::FIN_WAIT2, 3 * MS, counters));
        run.poll(&[], 4 * MS);
        let end = run.flush(500 * MS);
        assert_eq!(end.len(), 1, "{end:?}");
        assert_eq!((end[0].state, summary(&end[0])), (FlowState::Closed, (INITIATOR_LOCAL, [5, 17, 4, 0])));
        assert_eq!(end[0].stats.first_seen_ns, MS);
        assert_eq!(run.table.stats().flows_evicted, 0, "the socket's counters lost nothing");
    }

    #[test]
    fn a_socket_counted_connection_whose_entry_went_keeps_its_totals_and_waits_for_its_close() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        let socket = |packets: u64, first_seen_ns: u64, last_seen_ns: u64| FlowStats {
            counted: COUNTED_SOCKET,
            first_seen_ns,
            ..stats(INITIATOR_LOCAL, syn_ack, syn_ack, packets, last_seen_ns)
        };
        run.event(new_flow_from(key, INITIATOR_LOCAL, MS));
        run.event(state_event(key, tcp_state::SYN_SENT, tcp_state::ESTABLISHED, MS));
        run.poll(&[(key, socket(3, MS, 2 * MS))], 2 * MS);
        // Quiet, so the full map evicts it first; far past the TCP idle
        // timeout it is still open.
        run.poll(&[], 3 * MS);
        let quiet = config().tcp_idle_timeout_ns * 10;
        let out = run.flush(quiet);
        assert!(out.iter().all(|emission| emission.event != RecordEvent::End), "{out:?}");
        // A sampling point makes a new entry with the socket's totals:
        // totals, not counts to add to the 3 known before.
        run.poll(&[(key, socket(10, quiet, quiet))], quiet + MS);
        let later = quiet + config().update_interval_ns;
        let update = run.flush(later);
        assert_eq!(
            (update[0].event, summary(&update[0])),
            (RecordEvent::Update, (INITIATOR_LOCAL, [10, 600, 10, 600]))
        );
        assert_eq!(update[0].stats.first_seen_ns, MS);
        let counters = SocketCounters { packets_out: 12, bytes_out: 700, packets_in: 11, bytes_in: 650 };
        run.event(close_with_counters(key, tcp_state::FIN_WAIT2, later + MS, counters));
        let end = run.flush(later + 500 * MS);
        assert_eq!((end[0].state, summary(&end[0])), (FlowState::Closed, (INITIATOR_LOCAL, [12, 700, 11, 650])));
        assert_eq!(run.table.stats().flows_evicted, 0);
    }

    #[test]
    fn a_connection_counted_per_packet_whose_entry_went_ends_evicted_with_what_was_polled() {
        let mut run = Run::new();
        let key = key(PROTO_TCP, 7);
        let syn_ack = tcp_flags::SYN | tcp_flags::ACK;
        run.event(new_flow_from(key, INITIATOR_REMOTE, MS));
        run.event(state_event(key, tcp_state::SYN_RECV, tcp_state::ESTABLISHED, MS));
        let polled = FlowStats { first_seen_ns: MS, ..stats(INITIATOR_REMOTE, syn_ack, syn_ack, 3, 2 * MS) };
        run.poll(&[(key, polled)], 2 * MS);
        run.poll(&[], 3 * MS);
        run.poll(&[], 4 * MS);
        run.event(state_event(key, tcp_state::ESTABLISHED, tcp_state::CLOSE, 5 * MS));
        let out = run.flush(500 * MS);
        let end: Vec<_> = out.iter().filter(|emission| emission.event == RecordEvent::End).collect();
        assert_eq!(end.len(), 1, "{out:?}");
        assert_eq!((end[0].state, summary(end[0])), (FlowState::Evicted, (INITIATOR_REMOTE, [3, 180, 3, 180])));
        assert_eq!(run.table.stats().flows_evicted, 1, "counted once, however many polls missed it");
    }

    #[test]
    fn a_flow_discovered_by_a_poll_takes_the_entrys_initiator_and_an_event_after_it_changes_nothing() {
        let mut run = Run::new();
        let key = key(PROTO_UDP, 7);
        run.poll(&[(key, FlowStats { first_seen_ns: MS, ..stats(INITIATOR_REMOTE, 0, 0, 1, MS) })], 2 * MS);
        run.event(new_flow_from(key, INITIATOR_REMOTE, MS));
        run.poll(&[(key, FlowStats { first_seen_ns: MS, ..stats(INITIATOR_REMOTE, 0, 0, 2, 3 * MS) })], 4 * MS);
        let end = run.flush(31_000 * MS);
        assert_eq!((end[0].state, summary(&end[0])), (FlowState::Expired, (INITIATOR_REMOTE, [2, 120, 2, 120])));
        assert_eq!(run.table.stats().flows_evicted, 0);
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
