use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use cascade_core::snapshot::Snapshot;

use crate::Store;

/// The current configuration snapshot of a service: read lock-free on every request,
/// swapped whole when a new version is built. Empty until the first load.
#[derive(Debug, Default)]
pub struct SnapshotCell(ArcSwapOption<Snapshot>);

impl SnapshotCell {
    pub fn load(&self) -> Option<Arc<Snapshot>> {
        self.0.load_full()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.0.store(Some(Arc::new(snapshot)));
    }

    fn version(&self) -> Option<u64> {
        self.0.load().as_ref().map(|s| s.version())
    }
}

/// The polling that keeps a service's snapshot current; it stops when this is dropped.
#[derive(Debug)]
pub struct SnapshotWatch {
    cell: Arc<SnapshotCell>,
    poller: tokio::task::JoinHandle<()>,
    stale: tokio::sync::watch::Receiver<bool>,
    ready: tokio::sync::watch::Receiver<bool>,
}

impl SnapshotWatch {
    /// The snapshot this watch keeps current.
    pub fn cell(&self) -> Arc<SnapshotCell> {
        self.cell.clone()
    }

    /// True while the snapshot may be out of date: the last refresh could not read the
    /// store (or the store had lost its configuration). The service keeps serving from
    /// the last snapshot meanwhile; health reports it.
    pub fn staleness(&self) -> tokio::sync::watch::Receiver<bool> {
        self.stale.clone()
    }

    /// True once a snapshot is loaded: until then the service cannot decide, and its
    /// health says NOT_SERVING.
    pub fn readiness(&self) -> tokio::sync::watch::Receiver<bool> {
        self.ready.clone()
    }
}

impl Drop for SnapshotWatch {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// Loads the store's configuration into a new snapshot now, then rebuilds it whenever
/// the store announces a new version, and polls the version every `poll_interval` so a
/// lost announcement costs at most one interval. A store that is down or a
/// configuration that fails to build leaves the last good snapshot in place. When the
/// first load fails (Redis not up yet), the service still starts: the snapshot stays
/// empty, [`SnapshotWatch::readiness`] false, and every poll tries again.
pub async fn watch_snapshot(store: Arc<dyn Store>, poll_interval: Duration) -> SnapshotWatch {
    let cell = Arc::new(SnapshotCell::default());
    let first = refresh(store.as_ref(), &cell).await;
    if let Err(error) = &first {
        tracing::error!(%error, "cannot load the configuration yet; not ready, retrying every poll");
    }
    metrics::gauge!("cascade_state_stale").set(if first.is_ok() { 0.0 } else { 1.0 });
    let polled = cell.clone();
    let mut announcements = Some(store.configuration_changes());
    let (stale_tx, stale) = tokio::sync::watch::channel(first.is_err());
    let (ready_tx, ready) = tokio::sync::watch::channel(first.is_ok());
    let poller = tokio::spawn(async move {
        // The first load just happened: the first poll is one interval away.
        let mut ticker =
            tokio::time::interval_at(tokio::time::Instant::now() + poll_interval, poll_interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let announced = async {
                match announcements.as_mut() {
                    Some(announcements) => announcements.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = ticker.tick() => {}
                still_announcing = announced => {
                    if !still_announcing {
                        // The store stopped announcing: polling alone goes on.
                        announcements = None;
                        continue;
                    }
                }
            }
            match refresh(store.as_ref(), &polled).await {
                Ok(()) => {
                    metrics::gauge!("cascade_state_stale").set(0.0);
                    if !ready_tx.send_replace(true) {
                        tracing::info!("configuration loaded; ready");
                    }
                    if stale_tx.send_replace(false) {
                        tracing::info!("configuration store reachable again");
                    }
                }
                Err(error) => {
                    metrics::gauge!("cascade_state_stale").set(1.0);
                    if !stale_tx.send_replace(true) {
                        tracing::error!(%error, "configuration refresh failed; serving the last snapshot until it succeeds");
                    }
                }
            }
        }
    });
    SnapshotWatch {
        cell,
        poller,
        stale,
        ready,
    }
}

async fn refresh(store: &dyn Store, cell: &SnapshotCell) -> Result<(), crate::StateError> {
    let version = store.configuration_version().await?;
    match cell.version() {
        Some(current) if current == version => return Ok(()),
        // A store that lost everything (Redis restarted without persistence) must not
        // empty every service: keep the last snapshot until a configuration is applied.
        Some(current) if version == 0 => {
            return Err(crate::StateError::Emptied { kept: current });
        }
        _ => {}
    }
    let configuration = store.configuration().await?;
    let snapshot = Snapshot::build(configuration)?;
    tracing::info!(
        version = snapshot.version(),
        "configuration snapshot loaded"
    );
    metrics::gauge!("cascade_snapshot_version").set(snapshot.version() as f64);
    let loaded_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!("cascade_snapshot_loaded_timestamp_seconds").set(loaded_at.as_secs_f64());
    cell.store(snapshot);
    Ok(())
}

#[cfg(test)]
mod tests {
    use cascade_core::config::{Account, Configuration};

    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn follows_applied_versions() {
        let account = |id: &str| Configuration {
            accounts: vec![Account {
                id: id.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let store = Arc::new(MemoryStore::with_configuration(account("a")).unwrap());
        let watch = watch_snapshot(store.clone(), Duration::from_millis(5)).await;
        let cell = watch.cell();
        assert!(cell.load().unwrap().has_account("a"));

        store.apply_configuration(account("b"), None).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !cell.load().unwrap().has_account("b") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "snapshot never refreshed"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(cell.load().unwrap().version(), 2);
        drop(watch);
    }
}
