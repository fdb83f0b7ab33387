//! Capture: the kernel side of the observer, seen from userspace.
//!
//! In: the attached kernel programs' ring buffer (new flows, TCP state
//! changes, captured DNS messages), their flow map (polled every
//! `poll_interval`) and their per-CPU counters. Out: batches of
//! [`FlowRecord`]s on a bounded channel, DNS messages to the
//! [`DnsTracker`] (which fills the name cache before the flows read in the
//! same pass go on), and [`CaptureHealth`] counters. A full channel drops
//! the batch and counts it.

pub mod btf;
pub mod cgroups;
pub mod clock;
pub mod load_options;
pub mod loader;
pub mod map_batch;
pub mod preflight;
pub mod table;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf},
};
use observer_common::{
    COUNTED_SOCKET, Counter, DnsEvent, EVENT_DNS, Event, FlowKey, FlowStats, INITIATOR_LOCAL, names, tcp_flags,
};
use tokio::{io::unix::AsyncFd, sync::watch};

use crate::dns::DnsTracker;
use crate::error_chain;
use crate::flow::{
    Cgroup, Family, FlagSet, FlowRecord, Icmp, LocalEnd, Peer, Progress, Protocol, TcpFlags, Traffic, key_addrs,
};
use cgroups::CgroupPaths;
use clock::{Clock, monotonic_ns};
use loader::{LoadError, LoadOptions, TcpCounting};
use map_batch::BatchedHashMap;
use table::{Counters, Emission, FlowTable, TableConfig};

/// How often the ring buffer is drained when the kernel does not wake us
/// (it does once a quarter of the ring is pending). Records leave at the
/// poll, so draining more often only costs wakeups: an idle observer took
/// 0.59 % of a core draining every 20 ms, 0.19 % every 100 ms.
const RING_DRAIN_INTERVAL: Duration = Duration::from_millis(100);
/// Flow-map entries the poll buffer keeps room for however few the map holds.
const SNAPSHOT_KEPT: usize = 1024;
/// Least time between two warnings that the flow map is full (each says how
/// many entries were evicted since the last).
const MAP_FULL_WARNING_INTERVAL: Duration = Duration::from_secs(60);

/// Settings of the capture stage.
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// How to load the kernel programs.
    pub load: LoadOptions,
    /// How often the flow map is read and records are written.
    pub poll_interval: Duration,
    /// Flow table timing.
    pub table: TableConfig,
    /// Name of this node, written in every record.
    pub node: Arc<str>,
    /// Forward kernel diagnostics (aya-log) to the log.
    pub kernel_log: bool,
}

/// Errors of the capture stage.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// Loading or attaching failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// A map the programs define is missing or of the wrong type.
    #[error("eBPF map {name} is unusable")]
    Map {
        /// Map name.
        name: &'static str,
        /// Cause.
        #[source]
        source: MapError,
    },
    /// The ring buffer cannot be polled.
    #[error("cannot poll the event ring buffer")]
    RingPoll(#[source] std::io::Error),
}

/// Health counters of capture, shared with metrics and the health report.
#[derive(Debug, Default)]
pub struct CaptureHealth {
    /// Ring-buffer events the kernel could not queue (kernel counter).
    pub events_lost: AtomicU64,
    /// Flow-map inserts that failed in the kernel.
    pub flow_inserts_failed: AtomicU64,
    /// Packets the kernel could not parse.
    pub packets_unparsed: AtomicU64,
    /// Flows the kernel created.
    pub kernel_flows_created: AtomicU64,
    /// Flows the table tracked.
    pub flows_tracked: AtomicU64,
    /// Flows that ended.
    pub flows_ended: AtomicU64,
    /// Flows that ended `evicted`: the kernel map evicted an entry of theirs
    /// and the counters it held since the last poll are lost.
    pub flows_evicted: AtomicU64,
    /// Entries the kernel map evicted to make room (it was full): the entries
    /// it created, less those the observer deleted and those it holds.
    pub flow_map_evictions: AtomicU64,
    /// Flows found without a new-flow event: by polling (the event was
    /// lost), or at their close (a connection older than the observer).
    pub flows_discovered: AtomicU64,
    /// Connections that reused the tuple of a flow not yet reported.
    pub tuples_reused: AtomicU64,
    /// TCP state changes that never found their flow.
    pub states_unmatched: AtomicU64,
    /// Flows tracked right now.
    pub flows_active: AtomicU64,
    /// Entries in the kernel flow map at the last poll.
    pub flow_map_entries: AtomicU64,
    /// Capacity of the kernel flow map.
    pub flow_map_capacity: AtomicU64,
    /// 1 when TCP is counted from each socket's own counters, 0 when per
    /// packet (asked for, or the kernel's BTF lacked the offsets).
    pub tcp_socket_counters: AtomicU64,
    /// 1 while the flow map is read and pruned with batch commands, 0 once
    /// the kernel refused them and it is done entry by entry.
    pub flow_map_batched: AtomicU64,
    /// Ring-buffer events read.
    pub events_read: AtomicU64,
    /// DNS records read off the ring buffer.
    pub dns_records_read: AtomicU64,
    /// Records dropped because the next stage was full.
    pub records_dropped: AtomicU64,
    /// Records handed to the next stage.
    pub records_sent: AtomicU64,
    /// Completed reads of the flow map.
    pub polls: AtomicU64,
    /// CLOCK_MONOTONIC nanoseconds of the latest completed read of the flow
    /// map (0 before the first): `/healthz` fails when it stops moving.
    pub last_poll_ns: AtomicU64,
}

impl CaptureHealth {
    /// A JSON object of every counter, for logs and tests.
    pub fn snapshot(&self) -> serde_json::Value {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        serde_json::json!({
            "events_lost": get(&self.events_lost),
            "flow_inserts_failed": get(&self.flow_inserts_failed),
            "packets_unparsed": get(&self.packets_unparsed),
            "kernel_flows_created": get(&self.kernel_flows_created),
            "flows_tracked": get(&self.flows_tracked),
            "flows_ended": get(&self.flows_ended),
            "flows_evicted": get(&self.flows_evicted),
            "flow_map_evictions": get(&self.flow_map_evictions),
            "flows_discovered": get(&self.flows_discovered),
            "tuples_reused": get(&self.tuples_reused),
            "states_unmatched": get(&self.states_unmatched),
            "flows_active": get(&self.flows_active),
            "flow_map_entries": get(&self.flow_map_entries),
            "flow_map_capacity": get(&self.flow_map_capacity),
            "tcp_socket_counters": get(&self.tcp_socket_counters),
            "flow_map_batched": get(&self.flow_map_batched),
            "events_read": get(&self.events_read),
            "dns_records_read": get(&self.dns_records_read),
            "records_dropped": get(&self.records_dropped),
            "records_sent": get(&self.records_sent),
            "polls": get(&self.polls),
        })
    }
}

/// The loaded and attached kernel programs and the state that reads them.
pub struct Capture {
    // Owns the programs and their links: dropping it detaches everything.
    _ebpf: Ebpf,
    flows: BatchedHashMap<FlowKey, FlowStats>,
    /// The latest poll's entries, kept for the next poll's.
    snapshot: Vec<(FlowKey, FlowStats)>,
    events: AsyncFd<RingBuf<MapData>>,
    counters: PerCpuArray<MapData, u64>,
    logger: Option<AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>>,
    table: FlowTable,
    cgroups: CgroupPaths,
    clock: Clock,
    config: CaptureConfig,
    health: Arc<CaptureHealth>,
    dns: Option<DnsTracker>,
    /// Flow-map entries the observer deleted (ended flows).
    deleted: u64,
    /// Evictions counted at the last "flow map full" warning, and when.
    warned: (u64, Option<std::time::Instant>),
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<aya::maps::Map, CaptureError> {
    ebpf.take_map(name).ok_or(CaptureError::Map { name, source: MapError::InvalidName { name: name.to_owned() } })
}

impl Capture {
    /// Loads and attaches the kernel programs. Must run inside a tokio runtime.
    pub fn start(config: CaptureConfig) -> Result<Self, CaptureError> {
        let (mut ebpf, tcp_counting) = loader::load(&config.load)?;
        let logger = if config.kernel_log {
            match aya_log::EbpfLogger::init(&mut ebpf) {
                Ok(logger) => Some(register(logger)?),
                Err(error) => {
                    tracing::warn!(%error, "kernel log unavailable");
                    None
                }
            }
        } else {
            None
        };
        let flows = BpfHashMap::try_from(take_map(&mut ebpf, names::FLOWS)?)
            .map(BatchedHashMap::new)
            .map_err(|source| CaptureError::Map { name: names::FLOWS, source })?;
        let events = RingBuf::try_from(take_map(&mut ebpf, names::EVENTS)?)
            .map_err(|source| CaptureError::Map { name: names::EVENTS, source })?;
        let counters = PerCpuArray::try_from(take_map(&mut ebpf, names::COUNTERS)?)
            .map_err(|source| CaptureError::Map { name: names::COUNTERS, source })?;
        let health = Arc::new(CaptureHealth::default());
        health.flow_map_capacity.store(u64::from(config.load.flow_map_size), Ordering::Relaxed);
        health.flow_map_batched.store(1, Ordering::Relaxed);
        match &tcp_counting {
            TcpCounting::Socket => health.tcp_socket_counters.store(1, Ordering::Relaxed),
            TcpCounting::PerPacketAsked => tracing::info!("counting TCP per packet, as asked"),
            TcpCounting::PerPacketNoBtf(reason) => tracing::warn!(
                %reason,
                "cannot count TCP from sockets: counting it per packet (every TCP packet updates the flow map)"
            ),
            TcpCounting::PerPacketNoBtfTracepoint(reason) => tracing::warn!(
                %reason,
                "cannot count TCP from sockets without the BTF tracepoint, the only program that reads a closing \
                 socket's counters: counting it per packet (every TCP packet updates the flow map)"
            ),
        }
        tracing::info!(
            cgroup_root = %config.load.cgroup_root.display(),
            flow_map_size = config.load.flow_map_size,
            ring_buffer_bytes = config.load.ring_buffer_bytes,
            "kernel programs attached"
        );
        Ok(Self {
            _ebpf: ebpf,
            flows,
            snapshot: Vec::new(),
            events: register(events)?,
            counters,
            logger,
            table: FlowTable::new(config.table),
            cgroups: CgroupPaths::new(config.load.cgroup_root.clone(), Duration::from_secs(1)),
            clock: Clock::new(),
            config,
            health,
            dns: None,
            deleted: 0,
            warned: (0, None),
        })
    }

    /// Hands captured DNS messages to `tracker` from now on; without one they
    /// are read and discarded.
    pub fn set_dns(&mut self, tracker: DnsTracker) {
        self.dns = Some(tracker);
    }

    /// Health counters, updated while [`Capture::run`] runs.
    pub fn health(&self) -> Arc<CaptureHealth> {
        Arc::clone(&self.health)
    }

    /// Reads events and polls the flow map until `shutdown` turns true, then
    /// ends every flow and returns; each poll's records go to `sink`, which
    /// says whether the next stage took them (the pipeline's hand-off, which
    /// drops and counts by event when it cannot). Dropping `self` afterwards
    /// detaches.
    pub async fn run(
        mut self,
        mut sink: impl FnMut(Vec<FlowRecord>) -> bool + Send,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut tick = tokio::time::interval(self.config.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The kernel wakes us only when the ring is a quarter full; below
        // that, events wait for this drain.
        let mut drain = tokio::time::interval(RING_DRAIN_INTERVAL);
        drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut out = Vec::new();
        let mut delete = Vec::new();
        loop {
            tokio::select! {
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                }
                guard = self.events.readable_mut() => {
                    match guard {
                        Ok(mut guard) => {
                            guard.clear_ready();
                            self.read_events(&mut out);
                        }
                        Err(error) => {
                            tracing::error!(%error, "ring buffer poll failed; stopping capture");
                            break;
                        }
                    }
                }
                _ = drain.tick() => self.read_events(&mut out),
                Some(guard) = maybe_readable(&mut self.logger) => {
                    if let Ok(mut guard) = guard {
                        guard.get_inner_mut().flush();
                        guard.clear_ready();
                    }
                }
                _ = tick.tick() => {
                    // DNS answers waiting on the ring go into the name cache
                    // before the flows that follow them are handed on.
                    self.read_events(&mut out);
                    self.poll();
                    self.table.flush(monotonic_ns(), &mut out, &mut delete);
                    self.finish_batch(&mut sink, &mut out, &mut delete);
                    if let Some(dns) = &mut self.dns {
                        dns.tick(std::time::SystemTime::now());
                    }
                }
            }
        }
        self.read_events(&mut out);
        self.poll();
        self.table.flush(monotonic_ns(), &mut out, &mut delete);
        self.table.drain(&mut out);
        self.finish_batch(&mut sink, &mut out, &mut delete);
        let dns = self.dns.take().map(|mut dns| {
            dns.finish();
            dns.view().health().snapshot()
        });
        tracing::info!(
            health = %self.health.snapshot(),
            dns = %dns.unwrap_or(serde_json::Value::Null),
            "capture stopped"
        );
    }

    fn read_events(&mut self, out: &mut Vec<Emission>) {
        let ring = self.events.get_mut();
        let mut read = 0u64;
        let mut dns_read = 0u64;
        while let Some(item) = ring.next() {
            read += 1;
            if item.first() == Some(&EVENT_DNS) {
                dns_read += 1;
                if item.len() < size_of::<DnsEvent>() {
                    continue;
                }
                // SAFETY: the kernel wrote a `DnsEvent` header (repr(C), any bit pattern valid).
                let header = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<DnsEvent>()) };
                let end = (size_of::<DnsEvent>() + usize::from(header.captured_len)).min(item.len());
                if let Some(dns) = &mut self.dns {
                    let path = self.cgroups.path(header.key.cgroup_id);
                    dns.on_packet(
                        &header,
                        &item[size_of::<DnsEvent>()..end],
                        path,
                        self.clock.wall(header.timestamp_ns),
                    );
                }
                continue;
            }
            if item.len() < size_of::<Event>() {
                continue;
            }
            // SAFETY: the kernel wrote an `Event` (repr(C), any bit pattern valid).
            let mut event = unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<Event>()) };
            drop(item);
            // A close names its socket's cgroup so that it can report a
            // connection never seen before; the tracepoint sees every socket
            // on the node, the flow log only those under the cgroup root. (A
            // close of a tracked flow is matched by its tuple alone.)
            if event.has_counters != 0 && event.key.cgroup_id != 0 && !self.cgroups.contains(event.key.cgroup_id) {
                event.key.cgroup_id = 0;
            }
            self.table.on_event(&event, out);
        }
        self.health.events_read.fetch_add(read, Ordering::Relaxed);
        self.health.dns_records_read.fetch_add(dns_read, Ordering::Relaxed);
    }

    fn poll(&mut self) {
        let taken = monotonic_ns();
        // Read before the walk: an entry created during it may be in it but
        // not in this count, so evictions are never overcounted.
        let created = self.sum(Counter::FlowsCreated);
        self.snapshot.clear();
        let read = self.flows.read_all(&mut self.snapshot);
        self.health.flow_map_batched.store(u64::from(self.flows.is_batched()), Ordering::Relaxed);
        if let Err(error) = read {
            tracing::warn!(error = %error_chain(&error), "reading the flow map failed; will retry next poll");
            return;
        }
        self.health.flow_map_entries.store(self.snapshot.len() as u64, Ordering::Relaxed);
        self.count_evictions(created);
        self.table.on_poll(&self.snapshot, taken);
        // Kept for the next poll, but not at the size of a burst long gone.
        if self.snapshot.capacity() > 4 * self.snapshot.len().max(SNAPSHOT_KEPT) {
            self.snapshot.shrink_to(2 * self.snapshot.len().max(SNAPSHOT_KEPT));
        }
        self.read_counters();
        self.health.polls.fetch_add(1, Ordering::Relaxed);
        self.health.last_poll_ns.store(taken, Ordering::Relaxed);
    }

    /// The per-CPU kernel counter `counter`, summed.
    fn sum(&self, counter: Counter) -> u64 {
        self.counters.get(&(counter as u32), 0).map(|values| values.iter().copied().sum()).unwrap_or(0)
    }

    /// The LRU map evicts silently, but every entry it holds was created by
    /// the kernel (counted) and leaves by the observer's delete (counted) or
    /// by an eviction: so evictions are what was created and is neither
    /// deleted nor in the walk just read. An entry evicted during the walk
    /// but read before may count a poll late; the count never goes down. (A
    /// delete that fails entry by entry does not say how many it did before:
    /// those would count as evicted. The failure is logged.)
    fn count_evictions(&mut self, created: u64) {
        let evictions = created.saturating_sub(self.deleted + self.snapshot.len() as u64);
        let previous = self.health.flow_map_evictions.fetch_max(evictions, Ordering::Relaxed);
        if evictions <= previous {
            return;
        }
        let (warned_at, when) = self.warned;
        if when.is_some_and(|when| when.elapsed() < MAP_FULL_WARNING_INTERVAL) {
            return;
        }
        tracing::warn!(
            evicted = evictions - warned_at,
            total = evictions,
            capacity = self.config.load.flow_map_size,
            "flow map full: the kernel evicted entries of live flows to make room; such a flow ends `evicted` with \
             the counters read before, unless its socket's close brings the final ones (raise --flow-map-size)"
        );
        self.warned = (evictions, Some(std::time::Instant::now()));
    }

    fn read_counters(&mut self) {
        let sum = |counter: Counter| self.sum(counter);
        let lost = sum(Counter::EventsLost);
        let previous_lost = self.health.events_lost.swap(lost, Ordering::Relaxed);
        if lost > previous_lost {
            tracing::warn!(lost = lost - previous_lost, total = lost, "kernel ring buffer full: events lost");
        }
        let failed = sum(Counter::FlowInsertFailed);
        let previous_failed = self.health.flow_inserts_failed.swap(failed, Ordering::Relaxed);
        if failed > previous_failed {
            tracing::warn!(failed = failed - previous_failed, total = failed, "flow map inserts failed");
        }
        self.health.packets_unparsed.store(sum(Counter::PacketsUnparsed), Ordering::Relaxed);
        self.health.kernel_flows_created.store(sum(Counter::FlowsCreated), Ordering::Relaxed);
        if let Some(dns) = &self.dns {
            let lost = sum(Counter::DnsLost);
            let previous = dns.view().health().kernel_lost();
            if lost > previous {
                tracing::warn!(lost = lost - previous, total = lost, "DNS messages lost in the kernel");
            }
            dns.view().health().set_kernel(sum(Counter::DnsCaptured), sum(Counter::DnsTruncated), lost);
        }
    }

    fn finish_batch(
        &mut self,
        sink: &mut impl FnMut(Vec<FlowRecord>) -> bool,
        out: &mut Vec<Emission>,
        delete: &mut Vec<FlowKey>,
    ) {
        // Keys already gone (evicted) are skipped.
        match self.flows.delete(delete) {
            Ok(deleted) => self.deleted += deleted as u64,
            Err(error) => {
                if let map_batch::MapBatchError::Batch { done, .. } = &error {
                    self.deleted += *done as u64;
                }
                tracing::warn!(error = %error_chain(&error), "deleting ended flows from the flow map failed");
            }
        }
        self.health.flow_map_batched.store(u64::from(self.flows.is_batched()), Ordering::Relaxed);
        delete.clear();
        let stats = self.table.stats();
        let health = Arc::clone(&self.health);
        health.flows_tracked.store(stats.flows_tracked, Ordering::Relaxed);
        health.flows_ended.store(stats.flows_ended, Ordering::Relaxed);
        health.flows_evicted.store(stats.flows_evicted, Ordering::Relaxed);
        health.flows_discovered.store(stats.flows_discovered, Ordering::Relaxed);
        health.tuples_reused.store(stats.tuples_reused, Ordering::Relaxed);
        health.states_unmatched.store(stats.states_unmatched, Ordering::Relaxed);
        health.flows_active.store(self.table.len() as u64, Ordering::Relaxed);
        if out.is_empty() {
            return;
        }
        let time = SystemTime::now();
        let batch: Vec<FlowRecord> = out.drain(..).map(|emission| self.record(&emission, time)).collect();
        let count = batch.len() as u64;
        if sink(batch) {
            health.records_sent.fetch_add(count, Ordering::Relaxed);
        } else {
            health.records_dropped.fetch_add(count, Ordering::Relaxed);
        }
    }

    fn record(&mut self, emission: &Emission, time: SystemTime) -> FlowRecord {
        build_record(emission, time, &self.clock, self.cgroups.path(emission.key.cgroup_id), &self.config.node)
    }
}

/// Registers a map's fd for readiness; only readable interest, and the map
/// owns its fd for as long as the `AsyncFd` lives.
fn register<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>, CaptureError> {
    // SAFETY: `inner` owns a valid fd that is neither closed nor replaced while
    // registered: it is only dropped together with the `AsyncFd`.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }
        .map_err(|error| CaptureError::RingPoll(error.into()))
}

async fn maybe_readable<T: std::os::fd::AsRawFd>(
    fd: &mut Option<AsyncFd<T>>,
) -> Option<std::io::Result<tokio::io::unix::AsyncFdReadyMutGuard<'_, T>>> {
    match fd {
        Some(fd) => Some(fd.readable_mut().await),
        None => std::future::pending().await,
    }
}

/// Orients a kernel flow (local/remote) as a record (initiator/responder).
/// `time` is when the record is written: one clock read per batch.
pub fn build_record(
    emission: &Emission,
    time: SystemTime,
    clock: &Clock,
    cgroup_path: Option<Arc<str>>,
    node: &Arc<str>,
) -> FlowRecord {
    let Emission { key, stats, event, state, flow, reported } = *emission;
    let (local_ip, remote_ip) = key_addrs(&key);
    let protocol = Protocol(key.protocol);
    let (local_port, remote_port, icmp) = if protocol.is_icmp() {
        (None, None, Some(Icmp { kind: key.local_port as u8, code: key.remote_port as u8 }))
    } else if matches!(
        key.protocol,
        observer_common::PROTO_TCP | observer_common::PROTO_UDP | observer_common::PROTO_SCTP
    ) {
        (Some(key.local_port), Some(key.remote_port), None)
    } else {
        (None, None, None)
    };
    let local = Peer { ip: local_ip, port: local_port, endpoint: None, backend: None, dns: None, ai: None };
    let remote = Peer { ip: remote_ip, port: remote_port, endpoint: None, backend: None, dns: None, ai: None };
    let local_initiated = stats.initiator == INITIATOR_LOCAL;
    // The handshake as the socket counted it: an active opener's
    // `bytes_acked` counts its SYN as a byte; a passive opener's SYN-ACK went
    // out before its socket existed. Applied to the totals and to the
    // previous record's counters alike, so deltas stay exact.
    let handshake = |mut counters: Counters| {
        if stats.counted == COUNTED_SOCKET {
            if local_initiated {
                counters.bytes_out = counters.bytes_out.saturating_sub(1);
            } else {
                counters.packets_out += 1;
            }
        }
        counters
    };
    let total = handshake(Counters::of(&stats));
    let sent = Traffic { packets: total.packets_out, bytes: total.bytes_out };
    let received = Traffic { packets: total.packets_in, bytes: total.bytes_in };
    let new = total.since(reported.map(handshake).unwrap_or_default());
    let new_sent = Traffic { packets: new.packets_out, bytes: new.bytes_out };
    let new_received = Traffic { packets: new.packets_in, bytes: new.bytes_in };
    let (src, dst, to_dst, to_src, local_end, new_to_dst, new_to_src) = if local_initiated {
        (local, remote, sent, received, LocalEnd::Src, new_sent, new_received)
    } else {
        (remote, local, received, sent, LocalEnd::Dst, new_received, new_sent)
    };
    let tcp_flags = (key.protocol == observer_common::PROTO_TCP).then(|| {
        let (to_dst, to_src) = if local_initiated {
            (stats.tcp_flags_out, stats.tcp_flags_in)
        } else {
            (stats.tcp_flags_in, stats.tcp_flags_out)
        };
        TcpFlags { to_dst: FlagSet(to_dst & ALL_FLAGS), to_src: FlagSet(to_src & ALL_FLAGS) }
    });
    FlowRecord {
        time,
        event,
        node: Arc::clone(node),
        protocol,
        family: if key.family == observer_common::FAMILY_IPV4 { Family::Ipv4 } else { Family::Ipv6 },
        src,
        dst,
        local: local_end,
        icmp,
        cgroup: Cgroup { id: key.cgroup_id, path: cgroup_path },
        state,
        to_dst,
        to_src,
        tcp_flags,
        first_seen: clock.wall(stats.first_seen_ns),
        last_seen: clock.wall(stats.last_seen_ns),
        duration_ms: stats.last_seen_ns.saturating_sub(stats.first_seen_ns) / 1_000_000,
        verdict: None,
        verdict_now: None,
        progress: Progress { flow, first: reported.is_none(), new_to_dst, new_to_src },
    }
}

const ALL_FLAGS: u8 = tcp_flags::SYN | tcp_flags::ACK | tcp_flags::PSH | tcp_flags::FIN | tcp_flags::RST;
