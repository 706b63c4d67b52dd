//! The write policy for selections while the store is down: decisions keep being made,
//! their selections wait in a bounded in-memory backlog that a background task flushes
//! to the store in batches as soon as it answers again, and once the backlog is full,
//! writes are refused (the decision fails UNAVAILABLE) rather than silently dropped.
//!
//! The same backlog writes behind when asked (a zero wait): decisions answer at once and
//! the flushing task stores their selections, many decisions' in one round trip, so that
//! a store far away costs decisions nothing — at the price of the few selections in
//! flight when the process is killed.
//!
//! A selection waiting in the backlog is not in the store yet: [`SelectionWriter::waiting`]
//! finds it for a request chaining it on this replica, and [`SelectionWriter::stored`]
//! lets an event reported for it wait for it; other replicas find it once it is flushed.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};

use parking_lot::Mutex;
use std::time::Duration;

use crate::{Selection, StateError, Store};

/// Most selections one flush writes in one round trip.
const FLUSH_BATCH: usize = 512;

/// The wait after a first failed flush; it doubles with every failure in a row.
const FIRST_RETRY: Duration = Duration::from_millis(10);

/// How often a wait for the backlog looks again.
const POLL: Duration = Duration::from_millis(5);

/// Where a write went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    /// In the store.
    Stored,
    /// In the backlog, to be flushed when the store answers again.
    Buffered,
}

pub struct SelectionWriter {
    store: Arc<dyn Store>,
    backlog: Mutex<VecDeque<Selection>>,
    capacity: usize,
    flush: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for SelectionWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SelectionWriter")
            .field("capacity", &self.capacity)
            .field("backlog", &self.backlog_len())
            .finish_non_exhaustive()
    }
}

impl SelectionWriter {
    /// A writer to `store` holding at most `capacity` selections while it is down. A
    /// failed flush is retried after `FIRST_RETRY`, then twice as long each time up to
    /// `retry_interval`; a store that answers again is written to within that. The
    /// flushing task ends when the writer is dropped.
    pub fn new(store: Arc<dyn Store>, capacity: usize, retry_interval: Duration) -> Arc<Self> {
        metrics::gauge!("cascade_selection_backlog").set(0.0);
        let writer = Arc::new(Self {
            store,
            backlog: Mutex::default(),
            capacity,
            flush: Arc::default(),
        });
        tokio::spawn(flush_backlog(Arc::downgrade(&writer), retry_interval));
        writer
    }

    /// Stores `selections` within `timeout`, or keeps them in the backlog when the store
    /// is down, slow, or already behind; a zero `timeout` writes behind, through the
    /// backlog. Fails only when the backlog has no room.
    pub async fn write(
        &self,
        mut selections: Vec<Selection>,
        timeout: Duration,
    ) -> Result<Written, StateError> {
        // While a backlog waits, the store is known to be in trouble: do not spend the
        // decision's time on it, and keep the order of writes.
        if !timeout.is_zero() && self.backlog_len() == 0 {
            let written = self.store.put_selections(&selections);
            match tokio::time::timeout(timeout, written).await {
                Ok(Ok(stored)) if !stored.contains(&false) => return Ok(Written::Stored),
                Ok(Ok(stored)) => {
                    tracing::warn!("part of the store is down: its selections go to the backlog");
                    selections = unstored(selections, &stored);
                }
                Ok(Err(error)) => tracing::warn!(%error, "selections go to the backlog"),
                Err(_) => tracing::warn!("the store is slow: selections go to the backlog"),
            }
        }
        self.buffer(selections)?;
        Ok(Written::Buffered)
    }

    fn buffer(&self, selections: Vec<Selection>) -> Result<(), StateError> {
        let mut backlog = self.backlog.lock();
        if backlog.len() + selections.len() > self.capacity {
            return Err(StateError::BacklogFull {
                capacity: self.capacity,
            });
        }
        backlog.extend(selections);
        metrics::gauge!("cascade_selection_backlog").set(backlog.len() as f64);
        drop(backlog);
        self.flush.notify_one();
        Ok(())
    }

    /// Selections waiting for the store.
    pub fn backlog_len(&self) -> usize {
        self.backlog.lock().len()
    }

    /// Each of `ids` still waiting in the backlog, or `None`: what this replica sold
    /// moments ago (writing behind) or while the store was down.
    pub fn waiting(&self, ids: &[String]) -> Vec<Option<Selection>> {
        let backlog = self.backlog.lock();
        if backlog.is_empty() {
            return vec![None; ids.len()];
        }
        ids.iter()
            .map(|id| backlog.iter().find(|waiting| &waiting.id == id).cloned())
            .collect()
    }

    /// Waits up to `timeout` for the selection `id` to leave the backlog for the store;
    /// whether it did (or never waited).
    pub async fn stored(&self, id: &str, timeout: Duration) -> bool {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let waits = self.backlog.lock().iter().any(|waiting| waiting.id == id);
            if !waits {
                return true;
            }
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits up to `timeout` for the backlog to be flushed, before the process stops:
    /// how many selections it could not store (lost with the process).
    pub async fn drain(&self, timeout: Duration) -> usize {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let left = self.backlog_len();
            if left == 0 || tokio::time::Instant::now() >= until {
                if left > 0 {
                    tracing::error!(left, "stopping with selections the store never took");
                }
                return left;
            }
            self.flush.notify_one();
            tokio::time::sleep(POLL).await;
        }
    }

    /// Writes the oldest batch of the backlog.
    async fn flush_once(&self) -> Flushed {
        let batch: Vec<Selection> = self
            .backlog
            .lock()
            .iter()
            .take(FLUSH_BATCH)
            .cloned()
            .collect();
        if batch.is_empty() {
            return Flushed::Drained;
        }
        match self.store.put_selections(&batch).await {
            Ok(stored) => {
                let mut backlog = self.backlog.lock();
                // Only this task takes from the front: the batch is still there.
                let taken = batch.len().min(backlog.len());
                let flushed: Vec<Selection> = backlog.drain(..taken).collect();
                // The selections of a part of the store that did not answer (a master
                // failing over) go to the back, so that the next batch is the others'.
                backlog.extend(unstored(flushed, &stored));
                metrics::gauge!("cascade_selection_backlog").set(backlog.len() as f64);
                if backlog.is_empty() {
                    tracing::info!("selection backlog flushed");
                    Flushed::Drained
                } else {
                    Flushed::More
                }
            }
            Err(error) => {
                tracing::debug!(%error, "selection backlog still waiting for the store");
                Flushed::Failed
            }
        }
    }
}

/// The selections of `selections` not `stored`.
fn unstored(selections: Vec<Selection>, stored: &[bool]) -> Vec<Selection> {
    selections
        .into_iter()
        .zip(stored)
        .filter(|(_, stored)| !**stored)
        .map(|(selection, _)| selection)
        .collect()
}

/// What one flush came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flushed {
    Drained,
    /// A batch written, more waiting: flush again at once, so that the backlog drains
    /// as fast as the store takes batches, far faster than decisions arrive.
    More,
    /// The store refused: wait before trying again.
    Failed,
}

async fn flush_backlog(writer: Weak<SelectionWriter>, retry_interval: Duration) {
    let mut backoff = FIRST_RETRY.min(retry_interval);
    loop {
        let Some(strong) = writer.upgrade() else {
            return;
        };
        let flush = strong.flush.clone();
        let notified = flush.notified();
        tokio::pin!(notified);
        // Interest is registered before flushing, so a write buffered meanwhile still
        // wakes this task.
        notified.as_mut().enable();
        let flushed = strong.flush_once().await;
        drop(strong);
        match flushed {
            // Nothing to do until something is buffered; check now and then that the
            // writer still exists.
            Flushed::Drained => {
                backoff = FIRST_RETRY.min(retry_interval);
                let _ = tokio::time::timeout(Duration::from_secs(5), notified).await;
            }
            Flushed::More => {
                backoff = FIRST_RETRY.min(retry_interval);
                tokio::task::yield_now().await;
            }
            // A store that just came back may fail a flush or two (a connection being
            // made again): the first retries come soon, the later ones less often.
            Flushed::Failed => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(retry_interval);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryStore;

    fn selection(id: &str) -> Selection {
        Selection {
            id: id.into(),
            request_id: "r".into(),
            impid: "1".into(),
            account_id: "a".into(),
            source: cascade_core::auction::DemandKind::Exchange,
            network_id: String::new(),
            seat: "s".into(),
            bid_id: "b".into(),
            price_micros: 1,
            ttl: Duration::from_secs(60),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_reachable_store_gets_writes_directly() {
        let store = Arc::new(MemoryStore::default());
        let writer = SelectionWriter::new(store.clone(), 10, Duration::from_millis(5));
        let written = writer
            .write(vec![selection("x")], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(written, Written::Stored);
        assert!(store.get_selections(&["x".into()]).await.unwrap()[0].is_some());
    }

    /// A store nothing listens for.
    fn down_store() -> Arc<dyn Store> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        Arc::new(crate::RedisStore::connect(&format!("redis://127.0.0.1:{port}")).unwrap())
    }

    #[tokio::test]
    async fn writing_behind_answers_at_once_and_the_flush_stores() {
        let store = Arc::new(MemoryStore::default());
        let writer = SelectionWriter::new(store.clone(), 10, Duration::from_millis(5));
        let written = writer
            .write(vec![selection("x")], Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(written, Written::Buffered);
        assert!(writer.stored("x", Duration::from_secs(5)).await);
        assert!(store.get_selections(&["x".into()]).await.unwrap()[0].is_some());
        assert_eq!(writer.waiting(&["x".into()]), vec![None]);
    }

    #[tokio::test]
    async fn what_waits_for_a_down_store_is_found_here_and_counted_at_a_stop() {
        let writer = SelectionWriter::new(down_store(), 10, Duration::from_millis(5));
        writer
            .write(vec![selection("a"), selection("b")], Duration::ZERO)
            .await
            .unwrap();
        let found = writer.waiting(&["b".into(), "nope".into()]);
        assert_eq!(found[0].as_ref().map(|s| s.id.as_str()), Some("b"));
        assert!(found[1].is_none());
        assert!(!writer.stored("a", Duration::from_millis(30)).await);
        assert_eq!(writer.drain(Duration::from_millis(30)).await, 2);
    }

    #[tokio::test]
    async fn a_stop_waits_for_the_backlog_to_reach_the_store() {
        let store = Arc::new(MemoryStore::default());
        let writer = SelectionWriter::new(store.clone(), 100, Duration::from_millis(5));
        writer
            .write(vec![selection("a"), selection("b")], Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(writer.drain(Duration::from_secs(5)).await, 0);
        let stored = store
            .get_selections(&["a".into(), "b".into()])
            .await
            .unwrap();
        assert!(stored.iter().all(Option::is_some));
    }

    #[tokio::test]
    async fn the_backlog_is_bounded_and_refuses_beyond_it() {
        let writer = SelectionWriter::new(down_store(), 3, Duration::from_millis(5));
        let timeout = Duration::from_millis(200);
        assert_eq!(
            writer
                .write(vec![selection("a"), selection("b")], timeout)
                .await
                .unwrap(),
            Written::Buffered
        );
        assert_eq!(
            writer.write(vec![selection("c")], timeout).await.unwrap(),
            Written::Buffered
        );
        let refused = writer.write(vec![selection("d")], timeout).await;
        assert!(
            matches!(refused, Err(StateError::BacklogFull { .. })),
            "{refused:?}"
        );
        assert_eq!(writer.backlog_len(), 3);
    }

    #[tokio::test]
    async fn a_backlog_drains_batch_after_batch_without_waiting_between_successes() {
        let store = Arc::new(MemoryStore::default());
        // A retry interval no test would wait for: only a failed flush may wait it.
        let writer = SelectionWriter::new(store.clone(), 20_000, Duration::from_secs(3_600));
        let waiting: Vec<Selection> = (0..10 * FLUSH_BATCH)
            .map(|i| selection(&format!("s{i}")))
            .collect();
        writer.buffer(waiting).unwrap();
        let started = std::time::Instant::now();
        while writer.backlog_len() > 0 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{} selections still waiting",
                writer.backlog_len()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let last = format!("s{}", 10 * FLUSH_BATCH - 1);
        assert!(store.get_selections(&[last]).await.unwrap()[0].is_some());
    }
}
