//! The JSON DNS log.
//!
//! In: [`DnsLogEntry`]s from the DNS tracker (one per query: answered,
//! unanswered or an unmatched answer), the inventory's resolver and the
//! opened [`LineSink`]. Out: one JSON object per line, the client end named
//! like a flow's local end (pod, workload, labels). Written whenever the
//! channel runs dry, so the name an agent tried is on disk within moments,
//! even if it was refused; entries that cannot be written are counted by the sink.

use tokio::sync::mpsc;

use super::sink::LineSink;
use crate::{dns::DnsLogEntry, inventory::Resolver};

/// Writes every entry received until the channel closes, on a blocking
/// thread; returns how many were encoded (written or counted as dropped).
pub async fn write(
    sink: LineSink,
    resolver: Option<Resolver>,
    entries: mpsc::Receiver<DnsLogEntry>,
) -> Result<u64, tokio::task::JoinError> {
    tokio::task::spawn_blocking(move || write_blocking(sink, resolver, entries)).await
}

fn write_blocking(mut sink: LineSink, resolver: Option<Resolver>, mut entries: mpsc::Receiver<DnsLogEntry>) -> u64 {
    let mut encoded = 0u64;
    let mut lines = Vec::with_capacity(1 << 16);
    while let Some(mut entry) = entries.blocking_recv() {
        lines.clear();
        let mut count = 0;
        loop {
            if let Some(resolver) = &resolver {
                entry.client.endpoint =
                    Some(resolver.resolve_local(entry.cgroup.path.as_deref(), entry.client.ip, entry.time));
                entry.server.endpoint = Some(resolver.resolve_remote(entry.server.ip, entry.time));
            }
            // Serializing plain data to a Vec cannot fail; if it did, no
            // part of the entry may stay in the buffer.
            let start = lines.len();
            if serde_json::to_writer(&mut lines, &entry).is_ok() {
                lines.push(b'\n');
                count += 1;
            } else {
                lines.truncate(start);
            }
            match entries.try_recv() {
                Ok(next) => entry = next,
                Err(_) => break,
            }
        }
        sink.write(&lines, count);
        encoded += count;
    }
    sink.close();
    encoded
}
