//! The writer task: takes entries off the queue in batches, prepares and encodes them
//! (off the hot path), and writes each batch until its sink takes it.

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
        let mut batch = Vec::with_capacity(self.batch_max_entries);
        loop {
            let first = tokio::select! {
                biased;
                entry = self.receiver.recv() => entry,
                () = self.closing.wait() => None,
            };
            let Some(first) = first else {
                // Closed: what is still queued is written before the writer stops.
                while let Ok(entry) = self.receiver.try_recv() {
                    batch.push(self.record(entry));
                    if batch.len() == self.batch_max_entries {
                        self.write(&mut batch).await;
                    }
                }
                self.write(&mut batch).await;
                return;
            };
            batch.push(self.record(first));
            while batch.len() < self.batch_max_entries {
                match self.receiver.try_recv() {
                    Ok(entry) => batch.push(self.record(entry)),
                    Err(_) => break,
                }
            }
            self.write(&mut batch).await;
        }
    }

    fn record(&self, mut entry: LogEntry) -> Record {
        if let Some(decision) = entry.decision.as_mut() {
            redact::prepare(decision, self.max_request_bytes);
        }
        encode(&entry)
    }

    /// Writes `batch` until the sink takes it, backing off between attempts; once the log
    /// is closing, a refused batch is given up and counted `failed`.
    async fn write(&self, batch: &mut Vec<Record>) {
        if batch.is_empty() {
            return;
        }
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.sink.write(batch).await {
                Ok(()) => {
                    count("written", batch.len() as u64);
                    break;
                }
                Err(error) => {
                    count("retried", batch.len() as u64);
                    tracing::warn!(sink = %self.sink.describe(), %error, entries = batch.len(), "decision log write failed; retrying");
                    if self.closing.requested() {
                        count("failed", batch.len() as u64);
                        break;
                    }
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = self.closing.wait() => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        batch.clear();
    }
}
