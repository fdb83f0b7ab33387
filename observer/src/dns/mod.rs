//! DNS: which names each pod resolved, so egress flows can be named.
//!
//! In: DNS messages the kernel captured (queries pods sent, answers they
//! received, UDP and TCP port 53; see `observer-ebpf/src/dns.rs`), handed
//! over by capture as they are read off the ring buffer. Out: a per-pod
//! [`NameCache`] that enrich reads to name the `world` end of a flow, one
//! [`DnsLogEntry`] per query on a bounded channel for the optional DNS log
//! (answered, refused, NXDOMAIN or never answered: the name asked for is
//! always recorded), [`DnsHealth`] counters, bounded metric labels
//! ([`NameLabels`]) and FQDN patterns ([`FqdnPattern`], [`FqdnRules`]).
//!
//! Messages are parsed in capture's task, before the flows read in the same
//! pass are handed on, so an answer is in the cache before the connection
//! that follows it is enriched. Everything is bounded: the cache (LRU,
//! evictions counted), the queries awaiting an answer (oldest dropped,
//! counted), the log channel (full: entry dropped, counted).

pub mod cache;
pub mod label;
pub mod message;
pub mod pattern;
mod record;

use std::{
    collections::VecDeque,
    net::IpAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use observer_common::{DIRECTION_INGRESS, DnsEvent, PROTO_TCP};
use tokio::sync::mpsc;

pub use cache::{CacheStats, MAX_NAMES, NameCache, Owner};
pub use label::{DIRECT_IP, NameLabels, OTHER};
pub use message::{DnsMessage, ParseError, Transport};
pub use pattern::{FqdnPattern, FqdnRules, FqdnVerdict, PatternError};
pub use record::{DnsLogEntry, DnsLogEvent, LoggedAnswer};

use crate::{
    FastMap,
    ai::AiEndpoints,
    flow::{Cgroup, Protocol, key_addrs},
};

/// Settings of the DNS path.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// Most (pod, address) entries in the name cache.
    pub cache_capacity: usize,
    /// How long past its TTL a name still names new flows (and how long a
    /// matched entry is kept after each lookup).
    pub grace: Duration,
    /// TTLs above this are cut to it, so a hostile answer cannot pin an entry.
    pub max_ttl: Duration,
    /// Queries awaiting an answer, at most.
    pub pending_capacity: usize,
    /// A query unanswered this long is logged as `unanswered`.
    pub answer_timeout: Duration,
    /// Distinct domains admitted as metric label values.
    pub label_capacity: usize,
}

impl Default for DnsConfig {
    /// 65 536 cache entries (about 10 MiB at most), 2 min grace, TTLs cut to
    /// a day, 16 384 pending queries, 5 s answer timeout, 200 label domains.
    fn default() -> Self {
        Self {
            cache_capacity: 65_536,
            grace: Duration::from_secs(120),
            max_ttl: Duration::from_secs(86_400),
            pending_capacity: 16_384,
            answer_timeout: Duration::from_secs(5),
            label_capacity: 200,
        }
    }
}

/// Counters of the DNS path; read them through the accessor methods.
#[derive(Debug, Default)]
pub struct DnsHealth {
    messages: AtomicU64,
    parse_errors: AtomicU64,
    partial: AtomicU64,
    queries: AtomicU64,
    answers: AtomicU64,
    answers_unmatched: AtomicU64,
    unanswered: AtomicU64,
    nxdomain: AtomicU64,
    refused: AtomicU64,
    other_errors: AtomicU64,
    pending_dropped: AtomicU64,
    log_dropped: AtomicU64,
    kernel_captured: AtomicU64,
    kernel_truncated: AtomicU64,
    kernel_lost: AtomicU64,
    cache: Mutex<CacheStats>,
}

fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl DnsHealth {
    /// DNS messages read off the ring buffer.
    pub fn messages(&self) -> u64 {
        get(&self.messages)
    }
    /// Messages that were not DNS (or had no readable question).
    pub fn parse_errors(&self) -> u64 {
        get(&self.parse_errors)
    }
    /// Messages decoded only in part (cut by the capture limit or malformed after the question).
    pub fn partial(&self) -> u64 {
        get(&self.partial)
    }
    /// Queries pods sent.
    pub fn queries(&self) -> u64 {
        get(&self.queries)
    }
    /// Answers pods received.
    pub fn answers(&self) -> u64 {
        get(&self.answers)
    }
    /// Answers matching no query seen (not used for names).
    pub fn answers_unmatched(&self) -> u64 {
        get(&self.answers_unmatched)
    }
    /// Queries that got no answer within the timeout.
    pub fn unanswered(&self) -> u64 {
        get(&self.unanswered)
    }
    /// Answers with NXDOMAIN.
    pub fn nxdomain(&self) -> u64 {
        get(&self.nxdomain)
    }
    /// Answers with REFUSED.
    pub fn refused(&self) -> u64 {
        get(&self.refused)
    }
    /// Answers with any other error code (SERVFAIL, FORMERR, …).
    pub fn other_errors(&self) -> u64 {
        get(&self.other_errors)
    }
    /// Queries forgotten before their answer because too many were pending.
    pub fn pending_dropped(&self) -> u64 {
        get(&self.pending_dropped)
    }
    /// DNS log entries dropped because the log writer was not keeping up.
    pub fn log_dropped(&self) -> u64 {
        get(&self.log_dropped)
    }
    /// DNS packets the kernel captured (kernel counter).
    pub fn kernel_captured(&self) -> u64 {
        get(&self.kernel_captured)
    }
    /// DNS packets the kernel cut at 512 bytes (kernel counter).
    pub fn kernel_truncated(&self) -> u64 {
        get(&self.kernel_truncated)
    }
    /// DNS packets the kernel could not queue (kernel counter).
    pub fn kernel_lost(&self) -> u64 {
        get(&self.kernel_lost)
    }
    /// The name cache's counters at the last update.
    pub fn cache(&self) -> CacheStats {
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stores the kernel's counters (totals over CPUs).
    pub fn set_kernel(&self, captured: u64, truncated: u64, lost: u64) {
        self.kernel_captured.store(captured, Ordering::Relaxed);
        self.kernel_truncated.store(truncated, Ordering::Relaxed);
        self.kernel_lost.store(lost, Ordering::Relaxed);
    }

    /// A JSON object of every counter, for logs and tests.
    pub fn snapshot(&self) -> serde_json::Value {
        let cache = self.cache();
        serde_json::json!({
            "messages": self.messages(),
            "parse_errors": self.parse_errors(),
            "partial": self.partial(),
            "queries": self.queries(),
            "answers": self.answers(),
            "answers_unmatched": self.answers_unmatched(),
            "unanswered": self.unanswered(),
            "nxdomain": self.nxdomain(),
            "refused": self.refused(),
            "other_errors": self.other_errors(),
            "pending_dropped": self.pending_dropped(),
            "log_dropped": self.log_dropped(),
            "kernel_captured": self.kernel_captured(),
            "kernel_truncated": self.kernel_truncated(),
            "kernel_lost": self.kernel_lost(),
            "cache_entries": cache.entries,
            "cache_evicted": cache.evicted,
            "cache_expired": cache.expired,
            "cache_names_displaced": cache.names_displaced,
        })
    }
}

/// What enrich, metrics and the API read: the name cache, the counters and
/// the metric labels. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DnsView {
    cache: Arc<Mutex<NameCache>>,
    health: Arc<DnsHealth>,
    labels: Arc<NameLabels>,
    /// The AI endpoint catalog and the addresses answers gave its names.
    ai: Option<Arc<AiEndpoints>>,
}

impl DnsView {
    /// A view over an empty cache.
    pub fn new(config: &DnsConfig) -> Self {
        Self {
            cache: Arc::new(Mutex::new(NameCache::new(config.cache_capacity, config.grace))),
            health: Arc::new(DnsHealth::default()),
            labels: Arc::new(NameLabels::new(config.label_capacity)),
            ai: None,
        }
    }

    /// The same view also learning, node-wide, the addresses answers give
    /// to names of `ai`'s catalog (for direct-IP connections to them).
    pub fn with_ai(mut self, ai: Arc<AiEndpoints>) -> Self {
        self.ai = Some(ai);
        self
    }

    /// The AI endpoints, when the view learns them.
    pub fn ai(&self) -> Option<&Arc<AiEndpoints>> {
        self.ai.as_ref()
    }

    /// The names `owner` had resolved for `ip` when a flow started at
    /// `flow_start` (sorted; empty: never resolved).
    pub fn names(&self, owner: &Owner, ip: IpAddr, flow_start: SystemTime) -> Vec<Arc<str>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner).lookup(owner, ip, flow_start, SystemTime::now())
    }

    /// Counters.
    pub fn health(&self) -> &Arc<DnsHealth> {
        &self.health
    }

    /// The bounded metric label for a world flow resolved to `names`.
    pub fn label(&self, names: &[impl AsRef<str>]) -> String {
        self.labels.label(names)
    }

    /// The label set, for its overflow counter.
    pub fn labels(&self) -> &Arc<NameLabels> {
        &self.labels
    }

    /// The same view over `cache`, for tests of the stages that read it.
    #[cfg(test)]
    pub(crate) fn with_cache_for_tests(self, cache: NameCache) -> Self {
        *self.cache.lock().unwrap_or_else(PoisonError::into_inner) = cache;
        self
    }

    fn with_cache<T>(&self, f: impl FnOnce(&mut NameCache) -> T) -> T {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        let result = f(&mut cache);
        *self.health.cache.lock().unwrap_or_else(PoisonError::into_inner) = cache.stats();
        result
    }
}

/// A query and the socket it came from, awaiting its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct PendingKey {
    cgroup_id: u64,
    local: (IpAddr, u16),
    remote: (IpAddr, u16),
    protocol: u8,
    id: u16,
}

#[derive(Debug)]
struct Pending {
    entry: DnsLogEntry,
    seq: u64,
}

/// Turns captured DNS packets into cache entries and log entries. Owned by
/// capture; see the module documentation.
#[derive(Debug)]
pub struct DnsTracker {
    view: DnsView,
    config: DnsConfig,
    node: Arc<str>,
    pending: FastMap<PendingKey, Pending>,
    order: VecDeque<(SystemTime, u64, PendingKey)>,
    next_seq: u64,
    log: Option<mpsc::Sender<DnsLogEntry>>,
}

impl DnsTracker {
    /// A tracker feeding `view`, and the DNS log when `log` is given.
    pub fn new(view: DnsView, config: DnsConfig, node: Arc<str>, log: Option<mpsc::Sender<DnsLogEntry>>) -> Self {
        Self { view, config, node, pending: FastMap::default(), order: VecDeque::new(), next_seq: 0, log }
    }

    /// The view this tracker feeds.
    pub fn view(&self) -> &DnsView {
        &self.view
    }

    /// One captured packet: `header` as the kernel wrote it, `payload` its
    /// captured bytes, `cgroup_path` the local socket's cgroup, `at` when it passed.
    pub fn on_packet(&mut self, header: &DnsEvent, payload: &[u8], cgroup_path: Option<Arc<str>>, at: SystemTime) {
        let health = Arc::clone(&self.view.health);
        bump(&health.messages);
        let transport = if header.key.protocol == PROTO_TCP { Transport::Tcp } else { Transport::Udp };
        let message = match message::parse(payload, transport) {
            Ok(message) => message,
            Err(error) => {
                bump(&health.parse_errors);
                tracing::debug!(%error, cgroup = header.key.cgroup_id, "unparsable DNS message");
                return;
            }
        };
        if message.partial || usize::from(header.captured_len) < header.original_len as usize {
            bump(&health.partial);
        }
        let (local_ip, remote_ip) = key_addrs(&header.key);
        let key = PendingKey {
            cgroup_id: header.key.cgroup_id,
            local: (local_ip, header.key.local_port),
            remote: (remote_ip, header.key.remote_port),
            protocol: header.key.protocol,
            id: message.id,
        };
        let received = header.direction == DIRECTION_INGRESS;
        if !message.response {
            if !received {
                bump(&health.queries);
                self.on_query(key, &message, header, cgroup_path, at);
            }
            return;
        }
        if !received {
            // An answer this socket sent to port 53 is no answer to it.
            return;
        }
        bump(&health.answers);
        match message.rcode {
            0 => {}
            3 => bump(&health.nxdomain),
            5 => bump(&health.refused),
            _ => bump(&health.other_errors),
        }
        let asked = self.pending.remove(&key).filter(|pending| {
            pending.entry.name.is_some() && pending.entry.name == message.question.as_ref().map(|q| Arc::clone(&q.name))
        });
        let entry = match asked {
            Some(pending) => {
                let owner = Owner::of(header.key.cgroup_id, pending.entry.cgroup.path.as_deref());
                self.learn(&owner, &message, at);
                pending.entry.answered(&message, at)
            }
            None => {
                bump(&health.answers_unmatched);
                DnsLogEntry::unmatched(
                    &self.node,
                    header,
                    (local_ip, remote_ip),
                    Cgroup { id: header.key.cgroup_id, path: cgroup_path },
                    &message,
                    at,
                )
            }
        };
        self.send(entry);
    }

    fn on_query(
        &mut self,
        key: PendingKey,
        message: &DnsMessage,
        header: &DnsEvent,
        cgroup_path: Option<Arc<str>>,
        at: SystemTime,
    ) {
        let entry = DnsLogEntry::query(
            &self.node,
            Protocol(header.key.protocol),
            key.local,
            key.remote,
            Cgroup { id: header.key.cgroup_id, path: cgroup_path },
            message,
            at,
        );
        let seq = self.next_seq;
        self.next_seq += 1;
        // A retransmission replaces the earlier query; its order slot goes stale.
        self.pending.insert(key, Pending { entry, seq });
        self.order.push_back((at, seq, key));
        while self.pending.len() > self.config.pending_capacity {
            let Some((_, seq, oldest)) = self.order.pop_front() else { break };
            if self.pending.get(&oldest).is_some_and(|pending| pending.seq == seq)
                && let Some(pending) = self.pending.remove(&oldest)
            {
                bump(&self.view.health.pending_dropped);
                // Still record the name that was asked for.
                self.send(pending.entry);
            }
        }
    }

    /// Puts the addresses of an answer into the owner's cache, under the
    /// name asked for and the names of the alias chain that led to them.
    fn learn(&self, owner: &Owner, message: &DnsMessage, at: SystemTime) {
        let Some(question) = &message.question else { return };
        let max_ttl = self.config.max_ttl;
        let ai = self.view.ai.as_deref();
        self.view.with_cache(|cache| {
            for (ip, ttl) in message.addresses() {
                let ttl = Duration::from_secs(u64::from(ttl)).min(max_ttl);
                cache.insert(owner.clone(), ip, Arc::clone(&question.name), ttl, at);
                let mut names = vec![Arc::clone(&question.name)];
                for answer in &message.answers {
                    if answer.data == message::AnswerData::Addr(ip) && answer.name != question.name {
                        cache.insert(owner.clone(), ip, Arc::clone(&answer.name), ttl, at);
                        names.push(Arc::clone(&answer.name));
                    }
                }
                if let Some(ai) = ai {
                    ai.learn(ip, &names, ttl, at);
                }
            }
        });
    }

    /// Times out queries that got no answer, and drops cache entries whose
    /// retention ran out. Call about once a second.
    pub fn tick(&mut self, now: SystemTime) {
        while let Some(&(sent, seq, key)) = self.order.front() {
            if sent + self.config.answer_timeout > now {
                break;
            }
            self.order.pop_front();
            if self.pending.get(&key).is_some_and(|pending| pending.seq == seq)
                && let Some(pending) = self.pending.remove(&key)
            {
                bump(&self.view.health.unanswered);
                self.send(pending.entry.unanswered());
            }
        }
        if self.order.len() > self.pending.len().saturating_mul(2) + 64 {
            // Retransmissions leave stale slots behind; keep the queue bounded.
            let pending = &self.pending;
            self.order.retain(|(_, seq, key)| pending.get(key).is_some_and(|p| p.seq == *seq));
        }
        self.view.with_cache(|cache| cache.expire(now));
        if let Some(ai) = &self.view.ai {
            ai.expire(now);
        }
    }

    /// Logs every query still waiting as unanswered (at shutdown).
    pub fn finish(&mut self) {
        let pending: Vec<Pending> = self.pending.drain().map(|(_, pending)| pending).collect();
        self.order.clear();
        for pending in pending {
            bump(&self.view.health.unanswered);
            self.send(pending.entry.unanswered());
        }
    }

    fn send(&self, entry: DnsLogEntry) {
        let Some(log) = &self.log else { return };
        if log.try_send(entry).is_err() {
            bump(&self.view.health.log_dropped);
        }
    }
}

#[cfg(test)]
mod tests;
