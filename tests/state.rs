//! The shared state in Redis, end to end: the four service binaries on a real
//! `redis-server` (and on a three-master Redis Cluster), changed through the admin API
//! with `cascade admin` and grpcurl, while Redis loses connections, crashes and returns.

use std::time::{Duration, Instant};

use crate::support;
use crate::support::{Cluster, banner_request, cascade_output, demo_configuration, winner};
use cascade_state::{StateSettings, Store};
use cascade_testkit::{
    FakeNetworks, RedisCluster, RedisOptions, RedisServer, ServiceProcess, grpcurl,
};
use serde_json::{Value, json};

const ADMIN_TOKEN: &str = "test-admin-token";

enum Redis {
    Single(Box<RedisServer>),
    Cluster(RedisCluster),
}

impl Redis {
    fn state_settings(&self, poll_interval_ms: u64) -> StateSettings {
        let (redis_url, redis_cluster_nodes) = match self {
            Redis::Single(server) => (Some(server.url()), Vec::new()),
            Redis::Cluster(cluster) => (None, cluster.urls()),
        };
        StateSettings {
            redis_url,
            redis_cluster_nodes,
            poll_interval_ms,
            ..Default::default()
        }
    }

    /// Connections subscribed to configuration announcements, over every node.
    async fn subscribers(&self) -> u64 {
        let nodes: Vec<&RedisServer> = match self {
            Redis::Single(server) => vec![server.as_ref()],
            Redis::Cluster(cluster) => cluster.nodes.iter().collect(),
        };
        let mut subscribers = 0;
        for node in nodes {
            let reply = node
                .cli(&[
                    "pubsub",
                    "numsub",
                    cascade_state::redis_keys::CONFIG_CHANNEL,
                ])
                .await
                .unwrap();
            subscribers += reply
                .lines()
                .nth(1)
                .and_then(|count| count.trim().parse::<u64>().ok())
                .unwrap_or(0);
        }
        subscribers
    }

    fn store(&self) -> cascade_state::RedisStore {
        match self {
            Redis::Single(server) => cascade_state::RedisStore::connect(&server.url()),
            Redis::Cluster(cluster) => cascade_state::RedisStore::connect_cluster(&cluster.urls()),
        }
        .unwrap()
    }
}

/// Redis seeded with the demo configuration, and the four services on it.
async fn start(redis: &Redis, poll_interval_ms: u64) -> Cluster {
    let networks = FakeNetworks::start().await.unwrap();
    redis
        .store()
        .apply_configuration(demo_configuration(&networks), Some(0))
        .await
        .unwrap();
    let cluster = Cluster::builder()
        .networks(networks)
        .state(redis.state_settings(poll_interval_ms))
        .admin_token(ADMIN_TOKEN)
        .processes()
        .start()
        .await;
    // Subscriptions are made in the background: the tests about announcements start
    // once every service that reads the state (three) has one.
    support::eventually(
        Duration::from_secs(10),
        "every service to subscribe",
        || async { redis.subscribers().await >= 3 },
    )
    .await;
    cluster
}

/// A new network, FastAds, with a mediated bid above every other: once a decision is
/// served by it, both targeting-evaluation (the bid) and network-caller (the network's
/// endpoint) have the configuration that added it.
fn fast_ads_yaml(networks: &FakeNetworks) -> String {
    format!(
        "kind: Network\nid: fastads\naccount_id: demo-network\nendpoint: http://{}/openrtb/fastads\n\
         ---\n\
         kind: MediatedBid\nid: fastads-9.00\naccount_id: demo-network\nnetwork_id: fastads\ncpm: \"9.00\"\n",
        networks.addr()
    )
}

async fn winning_network(cluster: &Cluster) -> String {
    let response = cluster.decide(&banner_request(json!([]))).await;
    winner(&response)["networkId"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Decides until FastAds serves; returns how long that took.
async fn time_until_fast_ads_serves(cluster: &Cluster, limit: Duration) -> Duration {
    let start = Instant::now();
    while winning_network(cluster).await != "fastads" {
        assert!(
            start.elapsed() < limit,
            "the change never reached the services"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

/// Runs `cascade admin ARGS…` against the cluster's bid-intake.
async fn cascade_admin(cluster: &Cluster, args: &[&str]) -> std::process::Output {
    let target = format!("http://{}", cluster.bid_intake);
    let args: Vec<&str> = ["admin", "--target", &target]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    cascade_output(&args, &[("CASCADE_ADMIN_TOKEN", ADMIN_TOKEN)]).await
}

async fn admin_call(cluster: &Cluster, method: &str, data: &Value) -> grpcurl::Output {
    let authorization = format!("authorization: Bearer {ADMIN_TOKEN}");
    grpcurl::call(
        cluster.bid_intake,
        &format!("cascade.admin.v1.Admin/{method}"),
        data,
        &["-H", &authorization],
    )
    .await
    .unwrap()
}

/// `cascade admin apply` reaches every service within a second (the poll interval is a
/// minute: the announcement does it), and of concurrent applies expecting the same
/// version exactly one goes through.
async fn check_apply(redis: Redis) {
    let cluster = start(&redis, 60_000).await;
    assert_eq!(winning_network(&cluster).await, "coolads");

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), fast_ads_yaml(&cluster.networks)).unwrap();
    let path = file.path().to_str().unwrap();
    let diff = cascade_admin(&cluster, &["diff", "-f", path]).await;
    // Each entity, then (indented) the fields it would bring.
    let shown = String::from_utf8_lossy(&diff.stdout);
    let entities: Vec<&str> = shown.lines().filter(|l| !l.starts_with("    ")).collect();
    assert_eq!(
        entities,
        ["+ network fastads", "+ mediated_bid fastads-9.00"],
        "{shown}"
    );
    assert!(shown.contains("    + cpm: \"9.00\""), "{shown}");
    assert_eq!(
        diff.status.code(),
        Some(1),
        "diff exits 1 when apply would change something"
    );
    let applied = cascade_admin(&cluster, &["apply", "-f", path]).await;
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    let took = time_until_fast_ads_serves(&cluster, Duration::from_secs(10)).await;
    eprintln!("the apply reached the services in {took:?}");
    assert!(
        took < Duration::from_secs(1),
        "the apply took {took:?} to reach the services"
    );

    // Eight writers read version V and each add their own currency, expecting V.
    let current = admin_call(&cluster, "GetConfiguration", &json!({}))
        .await
        .json();
    let version = current["version"].as_str().unwrap().to_string();
    let applies = (0..8u8).map(|i| {
        let mut configuration = current.clone();
        let currencies = configuration["currencyRates"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let mut currencies = currencies;
        currencies.push(
            json!({"currency": format!("XA{}", char::from(b'A' + i)), "usdMicros": "1000000"}),
        );
        configuration["currencyRates"] = Value::Array(currencies);
        let request = json!({"configuration": configuration, "expectedVersion": version});
        let cluster = &cluster;
        async move { admin_call(cluster, "ApplyConfiguration", &request).await }
    });
    let outcomes = futures::future::join_all(applies).await;
    let accepted = outcomes.iter().filter(|o| o.success).count();
    let aborted = outcomes
        .iter()
        .filter(|o| o.stderr.contains("Aborted"))
        .count();
    assert_eq!((accepted, aborted), (1, 7), "{outcomes:?}");
    let after = admin_call(&cluster, "GetConfiguration", &json!({}))
        .await
        .json();
    assert_eq!(
        after["currencyRates"].as_array().map(Vec::len),
        Some(current["currencyRates"].as_array().map_or(0, Vec::len) + 1)
    );
}

#[tokio::test]
async fn on_a_single_redis_applies_reach_every_service_and_race_safely() {
    check_apply(Redis::Single(Box::new(RedisServer::start().await.unwrap()))).await;
}

#[tokio::test]
async fn on_a_redis_cluster_applies_reach_every_service_and_race_safely() {
    check_apply(Redis::Cluster(RedisCluster::start().await.unwrap())).await;
}

async fn state_health(service: &ServiceProcess) -> String {
    let output = grpcurl::call(
        service.addr,
        "grpc.health.v1.Health/Check",
        &json!({"service": cascade_server::STATE_HEALTH_NAME}),
        &[],
    )
    .await
    .unwrap();
    output.json()["status"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Waits until every service that reads the state reports `status` for it.
async fn wait_for_state_health(cluster: &Cluster, status: &str) {
    let services: Vec<&ServiceProcess> = std::iter::once(&cluster.processes().bid_intake)
        .chain(
            cluster
                .processes()
                .others
                .iter()
                .filter(|s| s.name != "auction"),
        )
        .collect();
    for service in services {
        let what = format!("{} to report {status}", service.name);
        support::eventually(Duration::from_secs(15), &what, || async {
            state_health(service).await == status
        })
        .await;
    }
}

/// Redis crashes: decisions go on from the last snapshot, their selections wait in
/// bid-intake's backlog, health says the state is stale. Redis returns: the backlog is
/// flushed, health recovers, and the next apply reaches every service.
#[tokio::test]
async fn redis_killed_and_restarted_leaves_no_service_on_a_stale_snapshot() {
    let mut server = RedisServer::start_with(RedisOptions {
        durable: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let redis_url = server.url();
    let networks = FakeNetworks::start().await.unwrap();
    let store = cascade_state::RedisStore::connect(&redis_url).unwrap();
    store
        .apply_configuration(demo_configuration(&networks), Some(0))
        .await
        .unwrap();
    let cluster = Cluster::builder()
        .networks(networks)
        .state(StateSettings {
            redis_url: Some(redis_url),
            poll_interval_ms: 200,
            ..Default::default()
        })
        .processes()
        .start()
        .await;
    wait_for_state_health(&cluster, "SERVING").await;

    server.kill().await.unwrap();
    wait_for_state_health(&cluster, "NOT_SERVING").await;
    let response = cluster.decide(&banner_request(json!([]))).await;
    assert_eq!(winner(&response)["networkId"], "coolads", "{response}");
    let selection_id = winner(&response)["selectionId"]
        .as_str()
        .unwrap()
        .to_string();

    server.restart().await.unwrap();
    wait_for_state_health(&cluster, "SERVING").await;
    support::eventually(
        Duration::from_secs(10),
        "the buffered selection to reach Redis",
        || {
            let (store, selection_id) = (&store, &selection_id);
            async move {
                store
                    .get_selections(std::slice::from_ref(selection_id))
                    .await
                    .is_ok_and(|stored| stored[0].is_some())
            }
        },
    )
    .await;

    let mut configuration = store.configuration().await.unwrap();
    let file = fast_ads_yaml(&cluster.networks);
    for document in file.split("---\n") {
        configuration.put_entity(yaml_entity(document));
    }
    store
        .apply_configuration(configuration, None)
        .await
        .unwrap();
    let took = time_until_fast_ads_serves(&cluster, Duration::from_secs(10)).await;
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

fn yaml_entity(document: &str) -> cascade_core::entity::Entity {
    // The entity documents are simple enough to read as JSON-compatible key: value
    // pairs; the CLI's own YAML reader is tested in the CLI.
    let mut object = serde_json::Map::new();
    for line in document.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line.split_once(": ").unwrap();
        object.insert(key.into(), Value::String(value.trim_matches('"').into()));
    }
    serde_json::from_value(Value::Object(object)).unwrap()
}

/// Every subscription is killed and a new configuration is written without any
/// announcement: only the version poll can bring it, within its interval.
#[tokio::test]
async fn a_lost_announcement_is_caught_by_the_poll() {
    let server = RedisServer::start().await.unwrap();
    let redis = Redis::Single(Box::new(server));
    let cluster = start(&redis, 300).await;
    let Redis::Single(server) = &redis else {
        unreachable!()
    };
    let killed: u32 = server
        .cli(&["client", "kill", "type", "pubsub"])
        .await
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(
        killed >= 3,
        "one subscription per service that reads the state, got {killed}"
    );

    let store = redis.store();
    let mut configuration = store.configuration().await.unwrap();
    for document in fast_ads_yaml(&cluster.networks).split("---\n") {
        configuration.put_entity(yaml_entity(document));
    }
    configuration.version = 0;
    let document = serde_json::to_string(&configuration).unwrap();
    server
        .cli(&["set", cascade_state::redis_keys::CONFIG_DOCUMENT, &document])
        .await
        .unwrap();
    server
        .cli(&["incr", cascade_state::redis_keys::CONFIG_VERSION])
        .await
        .unwrap();
    let took = time_until_fast_ads_serves(&cluster, Duration::from_secs(10)).await;
    assert!(
        took < Duration::from_secs(2),
        "took {took:?} with a 300 ms poll"
    );
}

/// A service started while Redis is down does not exit (Kubernetes would crash-loop
/// it): it listens, answers health NOT_SERVING while it has no snapshot, keeps trying,
/// and turns SERVING once Redis is up.
#[tokio::test]
async fn a_service_started_before_redis_turns_serving_once_redis_is_up() {
    let mut redis = RedisServer::start().await.unwrap();
    redis.kill().await.unwrap();
    let settings = format!(
        "[state]\nredis_url = \"{}\"\npoll_interval_ms = 50\n",
        redis.url()
    );
    let service = ServiceProcess::spawn("targeting-evaluation", &settings)
        .await
        .unwrap();
    let health = grpcurl::call(service.addr, "grpc.health.v1.Health/Check", &json!({}), &[])
        .await
        .unwrap();
    assert_eq!(health.json()["status"], "NOT_SERVING", "{}", health.stderr);
    redis.restart().await.unwrap();
    cascade_testkit::wait_until_serving(service.addr, "", Duration::from_secs(10))
        .await
        .unwrap();
}

/// bid-intake stopped (SIGTERM) while Redis is down: before it exits it waits for Redis
/// to take the selections it sold meanwhile, so none is lost with the process.
#[tokio::test]
async fn a_stop_during_a_redis_outage_stores_the_backlog_first() {
    let mut redis = RedisServer::start_with(RedisOptions {
        durable: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let mut cluster = Cluster::builder()
        .on_redis(&redis.url())
        .processes()
        .start()
        .await;
    redis.kill().await.unwrap();
    let response = cluster.decide(&banner_request(json!([]))).await;
    let sold = winner(&response)["selectionId"]
        .as_str()
        .unwrap_or_else(|| panic!("{response}"))
        .to_string();
    let back_later = async {
        tokio::time::sleep(Duration::from_millis(1_500)).await;
        redis.restart().await.unwrap();
    };
    let (status, ()) = tokio::join!(cluster.terminate_bid_intake(), back_later);
    assert!(status.success(), "bid-intake exited with {status}");
    let stored = cascade_state::RedisStore::connect(&redis.url())
        .unwrap()
        .get_selections(std::slice::from_ref(&sold))
        .await
        .unwrap();
    assert!(stored[0].is_some(), "selection {sold} lost with bid-intake");
}
