//! The Store contract, checked against every implementation: the embedded store, and
//! Redis through a real `redis-server` started for the test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use cascade_core::config::{Account, Configuration};
use cascade_core::report::{Metric, ReportCell, period_of};
use cascade_state::{
    Answer, AnswerKey, BillingNotice, Event, EventKind, EventRecorded, MemoryStore, RedisStore,
    Selection, StateError, Store,
};
use cascade_testkit::{RedisCluster, RedisOptions, RedisServer};

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
        source: cascade_core::auction::DemandKind::MediatedNetwork,
        network_id: "coolads".into(),
        seat: String::new(),
        bid_id: "coolads-2.00".into(),
        price_micros: 2_000_000,
        adomain: vec!["shoes.example".into()],
        cat: vec!["IAB18-3".into()],
        attr: vec![1],
        ttl,
        ..Default::default()
    }
}

fn event(selection_id: &str, kind: &str) -> Event {
    let kind = match kind {
        "impression" => EventKind::Impression,
        "click" => EventKind::Click,
        _ => EventKind::NodeResult,
    };
    Event {
        selection_id: selection_id.into(),
        kind,
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
    // What chaining needs to filter the outcome again is kept.
    let kept = found[0].as_ref().unwrap();
    assert_eq!(
        (
            kept.adomain.as_slice(),
            kept.cat.as_slice(),
            kept.attr.as_slice()
        ),
        (
            &["shoes.example".to_string()][..],
            &["IAB18-3".to_string()][..],
            &[1][..]
        )
    );
    assert_eq!(kept.node_outcome, None);
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
    assert!(matches!(
        store
            .record_event(&event("kept", "impression"))
            .await
            .unwrap(),
        EventRecorded::New(_)
    ));
    assert_eq!(
        store
            .record_event(&event("kept", "impression"))
            .await
            .unwrap(),
        EventRecorded::Duplicate
    );
    assert!(matches!(
        store.record_event(&event("kept", "click")).await.unwrap(),
        EventRecorded::New(_)
    ));
    // A node result is read back with the selection, so chaining can tell a node
    // that selected no ad.
    let node_result = Event {
        detail: "no_fill".into(),
        ..event("kept", "node_result")
    };
    let recorded = store.record_event(&node_result).await.unwrap();
    assert!(
        matches!(&recorded, EventRecorded::New(s) if s.id == "kept" && s.bid_id == "coolads-2.00"),
        "{recorded:?}"
    );
    let found = store.get_selections(&["kept".into()]).await.unwrap();
    assert_eq!(
        found[0].as_ref().and_then(|s| s.node_outcome.as_deref()),
        Some("no_fill")
    );
    assert_eq!(
        store
            .record_event(&event("brief", "impression"))
            .await
            .unwrap(),
        EventRecorded::UnknownSelection
    );
    let counters = store.event_counters().await.unwrap();
    let counted: Vec<(&str, &str, &str, &str, u64)> = counters
        .iter()
        .map(|(c, n)| {
            (
                c.account_id.as_str(),
                c.source.as_str(),
                c.demand.as_str(),
                c.kind.as_str(),
                *n,
            )
        })
        .collect();
    let mediated = "SOURCE_KIND_MEDIATED_NETWORK";
    assert_eq!(
        counted,
        [
            ("pub", mediated, "coolads", "impression", 1),
            ("pub", mediated, "coolads", "click", 1),
            ("pub", mediated, "coolads", "node_result", 1)
        ]
    );

    // The report: the impression counted with its estimated revenue (CPM / 1000), added
    // counts summed, reported revenue replaced, nothing outside the asked days.
    let (today, hour) = period_of(cascade_state::now_unix_seconds());
    let cell = |day: &str, metric| ReportCell {
        day: day.into(),
        hour,
        network_id: "coolads".into(),
        mediated_bid_id: "coolads-2.00".into(),
        metric,
    };
    store
        .add_report_counts(&[
            (cell(&today, Metric::Requests), 2),
            (cell("2020-01-01", Metric::Requests), 9),
        ])
        .await
        .unwrap();
    store
        .add_report_counts(&[(cell(&today, Metric::Requests), 3)])
        .await
        .unwrap();
    let mut counts = store
        .report_counts(std::slice::from_ref(&today))
        .await
        .unwrap();
    counts.sort();
    // A report read at midnight may see the impression under the next day: then only
    // the requests are compared.
    let expected = vec![
        (cell(&today, Metric::Requests), 5),
        (cell(&today, Metric::Impressions), 1),
        (cell(&today, Metric::EstimatedRevenueMicros), 2_000),
    ];
    assert!(counts == expected || counts == expected[..1], "{counts:?}");
    store
        .put_reported_revenue(&today, "coolads", 7)
        .await
        .unwrap();
    store
        .put_reported_revenue(&today, "coolads", 5_000)
        .await
        .unwrap();
    assert_eq!(
        store
            .reported_revenue(&[today.clone(), "2020-01-02".into()])
            .await
            .unwrap(),
        [(today.clone(), "coolads".to_string(), 5_000)]
    );
    check_billing(store).await;
    check_answers(store).await;
}

/// A decision's answer is stored with its selection and recalled, with the selections a
/// retry chains, in one read; it belongs to its publisher and request id only.
async fn check_answers(store: &dyn Store) {
    let key = |publisher: &str, request: &str| AnswerKey {
        publisher_id: publisher.into(),
        request_id: request.into(),
    };
    let mut sold = selection("answered", Duration::from_secs(60));
    sold.answer = Some(Answer {
        key: key("pub", "req-1"),
        response: vec![0, 159, 146, 150, 255],
    });
    store
        .put_selections(&[sold, selection("chained", Duration::from_secs(60))])
        .await
        .unwrap();
    let (answer, selections) = store
        .recall(&key("pub", "req-1"), &["chained".into(), "never".into()])
        .await
        .unwrap();
    assert_eq!(answer, Some(vec![0, 159, 146, 150, 255]));
    assert_eq!(
        selections
            .iter()
            .map(|s| s.as_ref().map(|s| s.id.as_str()))
            .collect::<Vec<_>>(),
        [Some("chained"), None]
    );
    // The answer is not a field of the selection it came with.
    let stored = store.get_selections(&["answered".into()]).await.unwrap();
    assert_eq!(stored[0].as_ref().and_then(|s| s.answer.clone()), None);
    for other in [
        key("pub", "req-2"),
        key("other", "req-1"),
        key("pub:req", "1"),
    ] {
        let (answer, _) = store.recall(&other, &[]).await.unwrap();
        assert_eq!(answer, None, "{other:?}");
    }
}

/// A billing notice is enqueued with its impression, once; claimed under a lease;
/// retried as scheduled; gone once settled. A test request's selection bills nothing.
async fn check_billing(store: &dyn Store) {
    let now = cascade_state::now_unix_millis();
    let billed = Selection {
        burl: "https://n.example/bill?p=2".into(),
        burl_expires_at_ms: now + 60_000,
        ..selection("billed-1", Duration::from_secs(60))
    };
    let test = Selection {
        test: true,
        ..billed.clone()
    };
    let test = Selection {
        id: "billed-test".into(),
        ..test
    };
    store.put_selections(&[billed, test]).await.unwrap();
    assert!(
        store
            .claim_billing_notices(now + 1_000, now + 2_000, 10)
            .await
            .unwrap()
            .is_empty()
    );
    for id in ["billed-1", "billed-test"] {
        store.record_event(&event(id, "impression")).await.unwrap();
    }
    store
        .record_event(&event("billed-1", "click"))
        .await
        .unwrap();
    let later = cascade_state::now_unix_millis() + 1;
    let claimed = store
        .claim_billing_notices(later, later + 10_000, 10)
        .await
        .unwrap();
    assert_eq!(
        claimed,
        [BillingNotice {
            id: "billed-1".into(),
            url: "https://n.example/bill?p=2".into(),
            attempts: 0,
            expires_at_ms: now + 60_000,
        }]
    );
    assert!(
        store
            .claim_billing_notices(later, later + 10_000, 10)
            .await
            .unwrap()
            .is_empty(),
        "leased"
    );
    let retried = BillingNotice {
        attempts: 1,
        ..claimed[0].clone()
    };
    store
        .settle_billing_notice(&retried, Some(later + 5))
        .await
        .unwrap();
    assert!(
        store
            .claim_billing_notices(later, later + 10, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store
            .claim_billing_notices(later + 5, later + 10, 10)
            .await
            .unwrap(),
        std::slice::from_ref(&retried)
    );
    store.settle_billing_notice(&retried, None).await.unwrap();
    // A repeated impression report bills nothing again.
    store
        .record_event(&event("billed-1", "impression"))
        .await
        .unwrap();
    assert!(
        store
            .claim_billing_notices(later + 100_000, later + 200_000, 10)
            .await
            .unwrap()
            .is_empty()
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
async fn a_redis_over_tls_keeps_the_contract_and_refuses_an_untrusted_server() {
    let ca = cascade_testkit::TestCa::new();
    let redis = RedisServer::start_tls(&ca).await.unwrap();
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let settings = cascade_state::StateSettings {
        redis_url: Some(redis.url()),
        redis_ca_file: Some(ca.ca_file().to_path_buf()),
        ..Default::default()
    };
    let store = settings.open().unwrap();
    check_contract(store.as_ref()).await;
    // Another CA's server is not trusted: the store is unavailable, not fooled.
    let other = cascade_testkit::TestCa::new();
    let untrusted = cascade_state::StateSettings {
        redis_ca_file: Some(other.ca_file().to_path_buf()),
        ..settings
    };
    let store = untrusted.open().unwrap();
    let refused = store.configuration_version().await;
    assert!(
        matches!(refused, Err(cascade_state::StateError::Unavailable(_))),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_redis_cluster_store_keeps_the_contract() {
    let cluster = RedisCluster::start().await.unwrap();
    let store = RedisStore::connect_cluster(&cluster.urls()).unwrap();
    check_contract(&store).await;
    // Selections and their counters really are spread over the masters.
    let mut keys_per_node = Vec::new();
    for node in &cluster.nodes {
        let count: u64 = node.cli(&["dbsize"]).await.unwrap().trim().parse().unwrap();
        keys_per_node.push(count);
    }
    assert!(
        keys_per_node.iter().filter(|count| **count > 0).count() >= 2,
        "{keys_per_node:?}"
    );
}

async fn wait_until_reachable(store: &dyn Store) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Err(error) = store.configuration_version().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reconnected: {error}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_redis_store_fails_loudly_while_redis_is_down_and_recovers() {
    let mut redis = RedisServer::start_with(RedisOptions {
        durable: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let store = RedisStore::connect(&redis.url()).unwrap();
    let version = store
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

    // Back on the same port, the same store reconnects by itself and finds what was
    // acknowledged before the crash.
    redis.restart().await.unwrap();
    wait_until_reachable(&store).await;
    assert_eq!(store.configuration_version().await.unwrap(), version);
    store
        .put_selections(&[selection("s", Duration::from_secs(60))])
        .await
        .unwrap();
    assert!(store.get_selections(&["s".into()]).await.unwrap()[0].is_some());
}

/// Events are reported while Redis crashes and comes back: every report is either
/// refused (the reporter retries it) or acknowledged, and every acknowledged one is
/// there afterwards, counted once.
#[tokio::test]
async fn no_acknowledged_event_is_lost_when_redis_crashes() {
    let mut redis = RedisServer::start_with(RedisOptions {
        durable: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let store = std::sync::Arc::new(RedisStore::connect(&redis.url()).unwrap());
    let ids: Vec<String> = (0..400).map(|i| format!("sel-{i}")).collect();
    let selections: Vec<Selection> = ids
        .iter()
        .map(|id| selection(id, Duration::from_secs(600)))
        .collect();
    store.put_selections(&selections).await.unwrap();

    // The reporter goes through every selection once; Redis is killed after its
    // first acknowledgements and restarted after its first refusals.
    let progress = std::sync::Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let reporter = {
        let (store, ids, progress) = (store.clone(), ids.clone(), progress.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for id in &ids {
                match store.record_event(&event(id, "impression")).await {
                    Ok(EventRecorded::New(_)) => {
                        acknowledged.push(id.clone());
                        progress.0.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(other) => panic!("{id}: {other:?}"),
                    Err(_) => {
                        progress.1.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
            acknowledged
        })
    };
    let wait_for = |counter: usize, at_least: usize| {
        let progress = progress.clone();
        async move {
            let count = |p: &(AtomicUsize, AtomicUsize)| match counter {
                0 => p.0.load(Ordering::SeqCst),
                _ => p.1.load(Ordering::SeqCst),
            };
            while count(&progress) < at_least {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    };
    wait_for(0, 20).await;
    redis.kill().await.unwrap();
    wait_for(1, 5).await;
    redis.restart().await.unwrap();
    let acknowledged = reporter.await.unwrap();
    wait_until_reachable(store.as_ref()).await;
    let refused = progress.1.load(Ordering::SeqCst);
    assert_eq!(acknowledged.len() + refused, ids.len());

    assert!(!acknowledged.is_empty());
    for id in &acknowledged {
        assert_eq!(
            store.record_event(&event(id, "impression")).await.unwrap(),
            EventRecorded::Duplicate,
            "acknowledged event of {id} is missing"
        );
    }
    let counted: u64 = store
        .event_counters()
        .await
        .unwrap()
        .iter()
        .map(|(_, count)| count)
        .sum();
    // A report whose reply was lost in the crash may be counted without having been
    // acknowledged; never the other way round.
    assert!(
        counted >= acknowledged.len() as u64,
        "{counted} < {}",
        acknowledged.len()
    );
    assert!(counted <= ids.len() as u64);
}

/// Announced versions reach a watcher at once; its poll interval here is a minute, so
/// only the announcement can explain a quick refresh.
async fn check_announcements(store: std::sync::Arc<dyn Store>) {
    let watch = cascade_state::watch_snapshot(store.clone(), Duration::from_secs(60)).await;
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

#[tokio::test]
async fn a_redis_cluster_store_announces_new_versions() {
    let cluster = RedisCluster::start().await.unwrap();
    check_announcements(std::sync::Arc::new(
        RedisStore::connect_cluster(&cluster.urls()).unwrap(),
    ))
    .await;
}

#[tokio::test]
async fn a_redis_cluster_over_tls_keeps_the_contract() {
    let ca = cascade_testkit::TestCa::new();
    let cluster = RedisCluster::start_tls(&ca).await.unwrap();
    assert!(
        cluster
            .urls()
            .iter()
            .all(|url| url.starts_with("rediss://"))
    );
    let settings = cascade_state::StateSettings {
        redis_cluster_nodes: cluster.urls(),
        redis_ca_file: Some(ca.ca_file().to_path_buf()),
        ..Default::default()
    };
    let store = settings.open().unwrap();
    check_contract(store.as_ref()).await;
}

#[tokio::test]
async fn a_redis_asking_for_client_certificates_takes_ours_and_refuses_none() {
    let ca = cascade_testkit::TestCa::new();
    let redis = RedisServer::start_tls_with(
        &ca,
        RedisOptions {
            client_certificates: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // The test CA's certificate has no extended key usage: it serves as a client's too.
    let settings = cascade_state::StateSettings {
        redis_url: Some(redis.url()),
        redis_ca_file: Some(ca.ca_file().to_path_buf()),
        redis_client_cert_file: Some(ca.server_cert_file().to_path_buf()),
        redis_client_key_file: Some(ca.server_key_file().to_path_buf()),
        ..Default::default()
    };
    check_contract(settings.open().unwrap().as_ref()).await;
    let without_certificate = cascade_state::StateSettings {
        redis_client_cert_file: None,
        redis_client_key_file: None,
        ..settings
    };
    let refused = without_certificate
        .open()
        .unwrap()
        .configuration_version()
        .await;
    assert!(
        matches!(refused, Err(cascade_state::StateError::Unavailable(_))),
        "{refused:?}"
    );
}
