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
}

impl SnapshotWatch {
    /// The snapshot this watch keeps current.
    pub fn cell(&self) -> Arc<SnapshotCell> {
        self.cell.clone()
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
/// configuration that fails to build leaves the last good snapshot in place. Fails only
/// when the first load fails: a service is not ready without a snapshot.
pub async fn watch_snapshot(
    store: Arc<dyn Store>,
    poll_interval: Duration,
) -> Result<SnapshotWatch, crate::StateError> {
    let cell = Arc::new(SnapshotCell::default());
    refresh(store.as_ref(), &cell).await?;
    let polled = cell.clone();
    let mut announcements = Some(store.configuration_changes());
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
            if let Err(error) = refresh(store.as_ref(), &polled).await {
                tracing::warn!(%error, "configuration refresh failed; serving the last snapshot");
            }
        }
    });
    Ok(SnapshotWatch { cell, poller })
}

async fn refresh(store: &dyn Store, cell: &SnapshotCell) -> Result<(), crate::StateError> {
    let version = store.configuration_version().await?;
    if cell.version() == Some(version) {
        return Ok(());
    }
    let configuration = store.configuration().await?;
    let snapshot = Snapshot::build(configuration)?;
    tracing::info!(
        version = snapshot.version(),
        "configuration snapshot loaded"
    );
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
        let watch = watch_snapshot(store.clone(), Duration::from_millis(5))
            .await
            .unwrap();
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
