//! The JSON flow log.
//!
//! In: batches of [`FlowRecord`]s. Out: one JSON object per line on stdout or
//! appended to a file, flushed after every batch so a reader (`tail -f`, a log
//! shipper) sees records as soon as they are made.

use std::path::PathBuf;

use tokio::{
    io::{AsyncWrite, AsyncWriteExt, BufWriter},
    sync::mpsc,
};

use super::encode;
use crate::flow::FlowRecord;

/// Where the flow log goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// Standard output.
    Stdout,
    /// A file, created if missing and appended to.
    File(PathBuf),
}

/// Why the flow log stopped.
#[derive(Debug, thiserror::Error)]
pub enum FlowLogError {
    /// The file cannot be opened.
    #[error("cannot open flow log {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Writing failed (disk full, closed pipe).
    #[error("writing the flow log failed")]
    Write(#[source] std::io::Error),
}

/// Writes every batch received until the channel closes; returns the number
/// of records written.
pub async fn write(target: Target, mut batches: mpsc::Receiver<Vec<FlowRecord>>) -> Result<u64, FlowLogError> {
    let writer: Box<dyn AsyncWrite + Unpin + Send> = match &target {
        Target::Stdout => Box::new(tokio::io::stdout()),
        Target::File(path) => Box::new(
            tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .await
                .map_err(|source| FlowLogError::Open { path: path.clone(), source })?,
        ),
    };
    let mut writer = BufWriter::with_capacity(1 << 16, writer);
    let mut written = 0u64;
    // A batch's lines are serialized together and written in one call.
    let mut lines = Vec::with_capacity(1 << 16);
    while let Some(batch) = batches.recv().await {
        lines.clear();
        written += encode::lines(&batch, &mut lines);
        writer.write_all(&lines).await.map_err(FlowLogError::Write)?;
        writer.flush().await.map_err(FlowLogError::Write)?;
    }
    writer.flush().await.map_err(FlowLogError::Write)?;
    Ok(written)
}
