//! A Redis Cluster master dies under a steady stream of selections: once its replica is
//! promoted, the backlog the outage left must drain at once, and every selection
//! acknowledged before, during and after must be in the store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use cascade_state::{RedisStore, Selection, SelectionWriter, Store};
use cascade_testkit::{RedisCluster, RedisServer};

/// Selections written every tick while the test runs: 4 per 5 ms, 800 a second — the
/// rate at which the backlog once stopped draining after a failover.
const PER_TICK: usize = 4;
const TICK: Duration = Duration::from_millis(5);

fn selection(id: String) -> Selection {
    Selection {
        id,
        request_id: "r".into(),
        impid: "1".into(),
        account_id: "pub".into(),
        source: cascade_core::auction::DemandKind::Exchange,
        seat: "seat".into(),
        bid_id: "b".into(),
        price_micros: 1_500_000,
        ttl: Duration::from_secs(600),
        ..Default::default()
    }
}

/// Waits until a survivor flags a node `fail`, then until every survivor says the
/// cluster is ok again (the dead master's replica promoted).
async fn wait_for_promotion(cluster: &RedisCluster, dead: usize) {
    let survivors: Vec<&RedisServer> = (cluster.nodes.iter().enumerate())
        .filter(|(index, _)| *index != dead)
        .map(|(_, node)| node)
        .collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let nodes = survivors[0].cli(&["cluster", "nodes"]).await.unwrap();
        let failed = nodes.lines().any(|line| {
            (line.split_whitespace().nth(2))
                .is_some_and(|flags| flags.split(',').any(|flag| flag == "fail"))
        });
        if failed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the cluster never marked the killed master failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster
        .wait_until_ok(&survivors, Duration::from_secs(30))
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_cluster_master_failover_the_backlog_drains_while_writes_go_on() {
    let mut cluster = RedisCluster::start_with_replicas(1).await.unwrap();
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect_cluster(&cluster.urls()).unwrap());
    let writer = SelectionWriter::new(store.clone(), 1_000_000, Duration::from_millis(200));

    let written = Arc::new(parking_lot::Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let producer = tokio::spawn({
        let writer = writer.clone();
        let written = written.clone();
        let stop = stop.clone();
        async move {
            let mut tick = tokio::time::interval(TICK);
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let batch: Vec<Selection> = (0..PER_TICK)
                    .map(|_| {
                        next += 1;
                        selection(format!("sel-{next}"))
                    })
                    .collect();
                let ids: Vec<String> = batch.iter().map(|s| s.id.clone()).collect();
                // Written behind, as bid-intake does with a zero wait.
                writer.write(batch, Duration::ZERO).await.unwrap();
                written.lock().extend(ids);
            }
        }
    });

    tokio::time::sleep(Duration::from_secs(1)).await;
    let master = cluster.a_master().await.unwrap();
    cluster.nodes[master].kill().await.unwrap();
    wait_for_promotion(&cluster, master).await;
    let promoted = tokio::time::Instant::now();
    let backlog_at_promotion = writer.backlog_len();

    // Writes go on; the backlog must empty soon after the promotion.
    let mut emptied_after = None;
    while promoted.elapsed() < Duration::from_secs(15) {
        if writer.backlog_len() < PER_TICK * 4 {
            emptied_after = Some(promoted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    producer.await.unwrap();
    let emptied_after = emptied_after.unwrap_or_else(|| {
        panic!(
            "the backlog never drained after the promotion: {} waiting (it was {backlog_at_promotion})",
            writer.backlog_len()
        )
    });
    println!(
        "failover: {backlog_at_promotion} selections waiting at the promotion, drained {emptied_after:?} after it"
    );
    assert!(
        emptied_after < Duration::from_secs(5),
        "the backlog took {emptied_after:?} to drain after the promotion"
    );

    assert_eq!(writer.drain(Duration::from_secs(10)).await, 0);
    let ids = written.lock().clone();
    let mut missing = 0;
    for chunk in ids.chunks(500) {
        let found = store.get_selections(chunk).await.unwrap();
        missing += found.iter().filter(|s| s.is_none()).count();
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} selections are not in the store",
        ids.len()
    );
}

/// The backlog flush stores what part of a cluster answers: with one master down (and no
/// replica to take over), the other masters' selections leave the backlog, and the dead
/// master's follow once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_master_down_the_other_masters_selections_leave_the_backlog() {
    let mut cluster = RedisCluster::start().await.unwrap();
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect_cluster(&cluster.urls()).unwrap());
    let writer = SelectionWriter::new(store.clone(), 10_000, Duration::from_millis(50));
    let warm = writer
        .write(vec![selection("warm".into())], Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(warm, cascade_state::Written::Stored);

    cluster.nodes[0].kill().await.unwrap();
    let ids: Vec<String> = (0..300).map(|i| format!("down-{i}")).collect();
    let batch = ids.iter().cloned().map(selection).collect();
    writer.write(batch, Duration::ZERO).await.unwrap();

    // The masters that answer take theirs; the dead one's wait.
    let until = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let waiting = writer.backlog_len();
        if waiting < ids.len() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "nothing left the backlog with two masters of three up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let waiting = writer.waiting(&ids);
    let mut stored_meanwhile = 0;
    for (id, waiting) in ids.iter().zip(&waiting) {
        if waiting.is_none() {
            let found = store
                .get_selections(std::slice::from_ref(id))
                .await
                .unwrap();
            assert!(
                found[0].is_some(),
                "{id} left the backlog but is not stored"
            );
            stored_meanwhile += 1;
        }
    }
    assert!(
        stored_meanwhile > 0 && stored_meanwhile < ids.len(),
        "{stored_meanwhile} of {} stored with a master down",
        ids.len()
    );

    cluster.nodes[0].restart().await.unwrap();
    assert_eq!(writer.drain(Duration::from_secs(20)).await, 0);
    for chunk in ids.chunks(100) {
        let found = store.get_selections(chunk).await.unwrap();
        assert!(found.iter().all(Option::is_some));
    }
}
