//! The JSON DNS log.
//!
//! In: [`DnsLogEntry`]s from the DNS tracker (one per query: answered,
//! unanswered or an unmatched answer) and the inventory's resolver. Out: one
//! JSON object per line appended to a file, the client end named like a flow's
//! local end (pod, workload, labels). Flushed whenever the channel runs dry,
//! so the name an agent tried is on disk within moments, even if it was refused.

use std::path::PathBuf;

use tokio::{
    io::{AsyncWriteExt, BufWriter},
    sync::mpsc,
};

use crate::{dns::DnsLogEntry, inventory::Resolver};

/// Why the DNS log stopped.
#[derive(Debug, thiserror::Error)]
pub enum DnsLogError {
    /// The file cannot be opened.
    #[error("cannot open DNS log {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing failed (disk full, closed pipe).
    #[error("writing the DNS log failed")]
    Write(#[source] std::io::Error),
}

/// Writes every entry received until the channel closes; returns how many.
pub async fn write(
    path: PathBuf,
    resolver: Option<Resolver>,
    mut entries: mpsc::Receiver<DnsLogEntry>,
) -> Result<u64, DnsLogError> {
    let file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .map_err(|source| DnsLogError::Open { path: path.clone(), source })?;
    let mut writer = BufWriter::with_capacity(1 << 16, file);
    let mut written = 0u64;
    let mut line = Vec::with_capacity(512);
    while let Some(mut entry) = entries.recv().await {
        loop {
            if let Some(resolver) = &resolver {
                entry.client.endpoint =
                    Some(resolver.resolve_local(entry.cgroup.path.as_deref(), entry.client.ip, entry.time));
                entry.server.endpoint = Some(resolver.resolve_remote(entry.server.ip, entry.time));
            }
            line.clear();
            // Serializing plain data to a Vec cannot fail.
            if serde_json::to_writer(&mut line, &entry).is_ok() {
                line.push(b'\n');
                writer.write_all(&line).await.map_err(DnsLogError::Write)?;
                written += 1;
            }
            match entries.try_recv() {
                Ok(next) => entry = next,
                Err(_) => break,
            }
        }
        writer.flush().await.map_err(DnsLogError::Write)?;
    }
    writer.flush().await.map_err(DnsLogError::Write)?;
    Ok(written)
}
