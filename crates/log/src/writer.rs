//! The writer task: takes entries off the queue in batches, prepares and encodes them on
//! a blocking thread (off the runtime that serves decisions), and writes each batch
//! until its sink takes it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::schema::LogEntry;
use crate::{Closing, LogSink, Record, count, encode, redact};

pub(crate) struct Writer {
    pub sink: Arc<dyn LogSink>,
    pub receiver: mpsc::Receiver<LogEntry>,
    pub batch_max_entries: usize,
    pub max_request_bytes: usize,
    pub closing: Arc<Closing>,
}

/// The longest wait between two attempts at a batch the sink refused.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Writer {
    pub async fn run(mut self) {
        loop {
            let first = tokio::select! {
                biased;
                entry = self.receiver.recv() => entry,
                () = self.closing.wait() => None,
            };
            let Some(first) = first else {
                // Closed: what is still queued is written before the writer stops.
                loop {
                    let batch = self.take_batch(None);
                    if batch.is_empty() {
                        return;
                    }
                    self.write(batch).await;
                }
            };
            let batch = self.take_batch(Some(first));
            self.write(batch).await;
        }
    }

    /// `first` and what else is queued, up to a batch.
    fn take_batch(&mut self, first: Option<LogEntry>) -> Vec<LogEntry> {
        let mut batch = Vec::with_capacity(self.batch_max_entries);
        batch.extend(first);
        while batch.len() < self.batch_max_entries {
            match self.receiver.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        batch
    }

    /// Prepares and encodes `entries`, then writes them until the sink takes them,
    /// backing off between attempts; once the log is closing, a refused batch is given
    /// up and counted `failed`.
    async fn write(&self, entries: Vec<LogEntry>) {
        let max_request_bytes = self.max_request_bytes;
        let size = entries.len() as u64;
        let encoded = tokio::task::spawn_blocking(move || {
            entries
                .into_iter()
                .map(|mut entry| {
                    if let Some(decision) = entry.decision.as_mut() {
                        redact::prepare(decision, max_request_bytes);
                    }
                    encode(entry)
                })
                .collect::<Vec<Record>>()
        })
        .await;
        let batch = match encoded {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(%error, "decision log: a batch could not be encoded");
                count("failed", size);
                return;
            }
        };
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.sink.write(&batch).await {
                Ok(()) => {
                    count("written", batch.len() as u64);
                    return;
                }
                Err(error) => {
                    count("retried", batch.len() as u64);
                    tracing::warn!(sink = %self.sink.describe(), %error, entries = batch.len(), "decision log write failed; retrying");
                    if self.closing.requested() {
                        count("failed", batch.len() as u64);
                        return;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.closing.wait() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
