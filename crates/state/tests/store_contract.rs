//! The Store contract, checked against every implementation: the embedded store, and
//! Redis through a real `redis-server` started for the test.

use std::time::Duration;

use cascade_core::config::{Account, Configuration};
use cascade_state::{Event, EventRecorded, MemoryStore, RedisStore, Selection, StateError, Store};
use cascade_testkit::RedisServer;

fn configuration(account: &str) -> Configuration {
    Configuration {
        accounts: vec![Account {
            id: account.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn selection(id: &str, ttl: Duration) -> Selection {
    Selection {
        id: id.into(),
        request_id: "r".into(),
        impid: "1".into(),
        account_id: "pub".into(),
        source: "SOURCE_KIND_MEDIATED_NETWORK".into(),
        network_id: "coolads".into(),
        seat: String::new(),
        bid_id: "coolads-2.00".into(),
        price_micros: 2_000_000,
        ttl,
    }
}

fn event(selection_id: &str, kind: &str) -> Event {
    Event {
        selection_id: selection_id.into(),
        kind: kind.into(),
        detail: String::new(),
    }
}

async fn check_contract(store: &dyn Store) {
    // Configuration: applies bump the version; the expected version guards writes; an
    // invalid configuration changes nothing.
    let start = store.configuration_version().await.unwrap();
    let version = store
        .apply_configuration(configuration("a"), Some(start))
        .await
        .unwrap();
    assert_eq!(version, start + 1);
    let conflict = store
        .apply_configuration(configuration("b"), Some(start))
        .await;
    assert!(
        matches!(conflict, Err(StateError::VersionConflict { actual, .. }) if actual == version)
    );
    let invalid = store.apply_configuration(configuration(""), None).await;
    assert!(matches!(invalid, Err(StateError::InvalidConfiguration(_))));
    let stored = store.configuration().await.unwrap();
    assert_eq!(
        (stored.version, stored.accounts[0].id.as_str()),
        (version, "a")
    );

    // Selections: one batched write, one batched read; they expire.
    store
        .put_selections(&[
            selection("kept", Duration::from_secs(60)),
            selection("brief", Duration::from_millis(50)),
        ])
        .await
        .unwrap();
    let found = store
        .get_selections(&["kept".into(), "never".into()])
        .await
        .unwrap();
    assert_eq!(found[0].as_ref().map(|s| s.price_micros), Some(2_000_000));
    assert!(found[1].is_none());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while store.get_selections(&["brief".into()]).await.unwrap()[0].is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the selection never expired"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // Events: once per selection and kind, counted once; unknown selections refused.
    assert_eq!(
        store
            .record_event(&event("kept", "impression"))
            .await
            .unwrap(),
        EventRecorded::New
    );
    assert_eq!(
        store
            .record_event(&event("kept", "impression"))
            .await
            .unwrap(),
        EventRecorded::Duplicate
    );
    assert_eq!(
        store.record_event(&event("kept", "click")).await.unwrap(),
        EventRecorded::New
    );
    assert_eq!(
        store
            .record_event(&event("brief", "impression"))
            .await
            .unwrap(),
        EventRecorded::UnknownSelection
    );
    let counters = store.event_counters().await.unwrap();
    let counted: Vec<(&str, &str, &str, u64)> = counters
        .iter()
        .map(|(c, n)| {
            (
                c.account_id.as_str(),
                c.demand.as_str(),
                c.kind.as_str(),
                *n,
            )
        })
        .collect();
    assert_eq!(
        counted,
        [
            ("pub", "coolads", "click", 1),
            ("pub", "coolads", "impression", 1)
        ]
    );
}

#[tokio::test]
async fn the_embedded_store_keeps_the_contract() {
    check_contract(&MemoryStore::default()).await;
}

#[tokio::test]
async fn the_redis_store_keeps_the_contract() {
    let redis = RedisServer::start().await.unwrap();
    let store = RedisStore::connect(&redis.url()).unwrap();
    check_contract(&store).await;
}

#[tokio::test]
async fn the_redis_store_fails_loudly_while_redis_is_down_and_recovers() {
    let redis = RedisServer::start().await.unwrap();
    let url = redis.url();
    let store = RedisStore::connect(&url).unwrap();
    store
        .apply_configuration(configuration("a"), None)
        .await
        .unwrap();
    redis.kill().await.unwrap();
    let write = store
        .put_selections(&[selection("s", Duration::from_secs(60))])
        .await;
    assert!(
        matches!(write, Err(StateError::Unavailable(_))),
        "{write:?}"
    );
    assert!(matches!(
        store.configuration_version().await,
        Err(StateError::Unavailable(_))
    ));

    // Back on the same port, the same store reconnects by itself (this server keeps
    // nothing on disk, so the state starts empty).
    let port = url.rsplit(':').next().unwrap().parse().unwrap();
    let _restarted = RedisServer::start_on(port).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match store
            .put_selections(&[selection("s", Duration::from_secs(60))])
            .await
        {
            Ok(()) => break,
            Err(error) => assert!(
                tokio::time::Instant::now() < deadline,
                "never reconnected: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.get_selections(&["s".into()]).await.unwrap()[0].is_some());
}

/// Announced versions reach a watcher at once; its poll interval here is a minute, so
/// only the announcement can explain a quick refresh.
async fn check_announcements(store: std::sync::Arc<dyn Store>) {
    let watch = cascade_state::watch_snapshot(store.clone(), Duration::from_secs(60))
        .await
        .unwrap();
    let cell = watch.cell();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // Re-applied until the subscription is up: announcements are best effort.
        let version = store
            .apply_configuration(configuration("z"), None)
            .await
            .unwrap();
        let refreshed = tokio::time::timeout(Duration::from_millis(300), async {
            while cell.load().map(|s| s.version()) != Some(version) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        if refreshed.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no announcement reached the watcher"
        );
    }
    assert!(cell.load().unwrap().has_account("z"));
}

#[tokio::test]
async fn the_embedded_store_announces_new_versions() {
    check_announcements(std::sync::Arc::new(MemoryStore::default())).await;
}

#[tokio::test]
async fn the_redis_store_announces_new_versions() {
    let redis = RedisServer::start().await.unwrap();
    check_announcements(std::sync::Arc::new(
        RedisStore::connect(&redis.url()).unwrap(),
    ))
    .await;
}
