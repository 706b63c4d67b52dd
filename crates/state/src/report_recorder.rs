//! Report counters off the hot path: services count facts in memory, and a background
//! task adds them to the store in one batched write per interval. A store that is down
//! keeps them pending (up to a bound) until it answers again.

use std::collections::HashMap;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::time::Duration;

use cascade_core::report::ReportCell;

use crate::Store;

/// Distinct cells held while the store is down; beyond it, new counts are dropped and
/// counted in `cascade_report_counts_dropped_total`.
const MAX_PENDING_CELLS: usize = 100_000;

pub struct ReportRecorder {
    store: Arc<dyn Store>,
    pending: Mutex<HashMap<ReportCell, u64>>,
}

impl std::fmt::Debug for ReportRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportRecorder").finish_non_exhaustive()
    }
}

impl ReportRecorder {
    /// A recorder writing to `store` every `flush_interval`, until it is dropped.
    pub fn new(store: Arc<dyn Store>, flush_interval: Duration) -> Arc<Self> {
        metrics::counter!("cascade_report_counts_dropped_total").absolute(0);
        let recorder = Arc::new(Self {
            store,
            pending: Mutex::default(),
        });
        tokio::spawn(flush_periodically(
            Arc::downgrade(&recorder),
            flush_interval,
        ));
        recorder
    }

    /// Counts `cells`; they reach the store with the next flush.
    pub fn count(&self, cells: impl IntoIterator<Item = (ReportCell, u64)>) {
        let mut pending = self.pending.lock();
        for (cell, count) in cells {
            if let Some(total) = pending.get_mut(&cell) {
                *total += count;
            } else if pending.len() < MAX_PENDING_CELLS {
                pending.insert(cell, count);
            } else {
                metrics::counter!("cascade_report_counts_dropped_total").increment(count);
            }
        }
    }

    /// Writes everything counted so far; on failure it stays pending for the next try.
    pub async fn flush(&self) {
        let batch: Vec<(ReportCell, u64)> = self.pending.lock().drain().collect();
        if batch.is_empty() {
            return;
        }
        if let Err(error) = self.store.add_report_counts(&batch).await {
            tracing::warn!(%error, "report counts stay pending until the store answers");
            self.count(batch);
        }
    }
}

async fn flush_periodically(recorder: Weak<ReportRecorder>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        let Some(recorder) = recorder.upgrade() else {
            return;
        };
        recorder.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use cascade_core::report::Metric;

    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn counts_are_summed_in_memory_and_written_on_flush() {
        let store = Arc::new(MemoryStore::default());
        let recorder = ReportRecorder::new(store.clone(), Duration::from_secs(3600));
        let cell = ReportCell {
            day: "2026-11-22".into(),
            hour: 3,
            network_id: "n".into(),
            mediated_bid_id: "b".into(),
            metric: Metric::Requests,
        };
        recorder.count([(cell.clone(), 2)]);
        recorder.count([(cell.clone(), 3)]);
        let days = ["2026-11-22".to_string()];
        assert!(store.report_counts(&days).await.unwrap().is_empty());
        recorder.flush().await;
        assert_eq!(store.report_counts(&days).await.unwrap(), [(cell, 5)]);
    }
}
