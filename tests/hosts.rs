//! Faults between hosts, which loopback cannot show: an auction replica, or Redis, on a
//! host of its own (a network namespace joined to the test's by a veth pair, made by the
//! test with iproute2), whose packets are then made to vanish — no reset, no refusal,
//! connections left open on both sides: a dead node or a partition.
//!
//! Skipped, saying why, where the machine cannot make namespaces (they need root). The
//! kernel here has no `sch_netem`: latency to Redis is added by a relay in user space
//! instead (`DelayProxy`, which needs no namespace).

use std::net::Ipv4Addr;
use std::time::Duration;

use cascade_proto::decision::v1::bid_intake_client::BidIntakeClient;
use cascade_proto::decision::v1::{EventType, ReportEventRequest};
use cascade_testkit::{
    DelayProxy, FakeDns, FakeNetworks, Host, RedisOptions, RedisServer, ServiceProcess,
    port_free_on_every_loopback_host,
};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::faults::request;
use crate::support::demo_configuration;

const RATE: u32 = 80;
const DEADLINE: Duration = Duration::from_millis(250);
const LATE_AFTER: Duration = Duration::from_millis(300);

/// Runs `test` once more if it fails, as the fault matrix does with a row: these tests
/// measure lateness on a machine others share, and a fault is taken as not absorbed only
/// when it fails twice in a row (both runs print what they measured).
async fn once_more_if_failing<F, Fut>(name: &str, test: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    if tokio::spawn(test()).await.is_ok() {
        return;
    }
    println!("{name}: failed; running it once more");
    if let Err(failed) = tokio::spawn(test()).await {
        std::panic::resume_unwind(failed.into_panic());
    }
}

/// Whether the test can run here; prints why not.
fn hosts_available(test: &str) -> bool {
    match Host::unavailable() {
        None => true,
        Some(reason) => {
            println!("{test}: skipped: {reason}");
            false
        }
    }
}

/// Service settings: listening on `listen`, admission off (a debug build on a test
/// machine is overloaded by construction), on `redis` when given.
fn settings(listen: &str, redis: Option<&str>) -> String {
    let mut settings = format!(
        "grpc.listen = \"{listen}\"\ngrpc.metrics_listen = \"127.0.0.1:0\"\n\
         grpc.admission.enabled = false\n"
    );
    if let Some(url) = redis {
        settings.push_str(&format!(
            "[state]\nredis_url = \"{url}\"\nreport_flush_interval_ms = 50\n"
        ));
    }
    settings
}

async fn configure(redis_url: &str, networks: &FakeNetworks) {
    use cascade_state::Store as _;
    cascade_state::RedisStore::connect(redis_url)
        .unwrap()
        .apply_configuration(demo_configuration(networks), None)
        .await
        .unwrap();
}

/// targeting-evaluation, auction and network-caller on loopback, on one Redis.
struct Backends {
    targeting: ServiceProcess,
    auction: ServiceProcess,
    network_caller: ServiceProcess,
}

impl Backends {
    async fn start(redis_url: &str) -> Backends {
        let stateful = settings("127.0.0.1:0", Some(redis_url));
        let stateless = settings("127.0.0.1:0", None);
        let (targeting, auction, network_caller) = tokio::join!(
            ServiceProcess::start("targeting-evaluation", &stateful),
            ServiceProcess::start("auction", &stateless),
            ServiceProcess::start("network-caller", &stateful),
        );
        Backends {
            targeting: targeting.unwrap(),
            auction: auction.unwrap(),
            network_caller: network_caller.unwrap(),
        }
    }

    /// The settings of a bid-intake calling them, on `redis_url`, with `extra` (top-level
    /// keys).
    fn bid_intake(&self, redis_url: &str, extra: &str) -> String {
        format!(
            "targeting_evaluation_addr = \"{}\"\nauction_addr = \"{}\"\n\
             network_caller_addr = \"{}\"\n{extra}{}",
            self.targeting.addr,
            self.auction.addr,
            self.network_caller.addr,
            settings("127.0.0.1:0", Some(redis_url)),
        )
    }
}

/// What a steady load came to.
#[derive(Debug, Default)]
struct Load {
    sent: usize,
    /// How long each answered call took.
    latencies: Vec<Duration>,
    errors: Vec<(Duration, tonic::Code)>,
    late: Vec<(Duration, Duration)>,
    selections: Vec<String>,
}

/// `RATE` decisions a second for `duration`, each with `DEADLINE`.
async fn load(client: BidIntakeClient<Channel>, run: &str, duration: Duration) -> Load {
    load_at(RATE, client, run, duration).await
}

/// `rate` decisions a second for `duration`, each with `DEADLINE`.
async fn load_at(
    rate: u32,
    client: BidIntakeClient<Channel>,
    run: &str,
    duration: Duration,
) -> Load {
    let started = Instant::now();
    let total = (duration.as_secs_f64() * f64::from(rate)) as u32;
    let mut calls = Vec::new();
    for n in 0..total {
        tokio::time::sleep_until(started + Duration::from_secs(1) / rate * n).await;
        let mut client = client.clone();
        let mut call = tonic::Request::new(request(run, n));
        call.set_timeout(DEADLINE);
        calls.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answer = client.decide(call).await;
            (sent - started, sent.elapsed(), answer)
        }));
    }
    let mut load = Load::default();
    for call in calls {
        let (sent_at, took, answer) = call.await.unwrap();
        load.sent += 1;
        if took > LATE_AFTER {
            load.late.push((sent_at, took));
        }
        match answer {
            Ok(response) => {
                load.latencies.push(took);
                load.selections.extend(
                    response
                        .into_inner()
                        .decisions
                        .into_iter()
                        .filter_map(|d| d.winner)
                        .map(|w| w.selection_id),
                )
            }
            Err(status) => load.errors.push((sent_at, status.code())),
        }
    }
    load
}

/// The number of `target`'s endpoints bid-intake has in rotation, from its metrics.
async fn in_rotation(bid_intake: &ServiceProcess, target: &str) -> Option<f64> {
    let metrics = bid_intake.metrics().await.ok()?;
    metrics
        .lines()
        .filter(|line| line.starts_with("cascade_client_endpoints{"))
        .filter(|line| line.contains(&format!("target=\"{target}\"")))
        .filter(|line| line.contains("state=\"in_rotation\""))
        .find_map(|line| line.rsplit(' ').next()?.parse().ok())
}

/// Two auction replicas behind one name, one of them on a host of its own, and the rest
/// of a cluster on loopback, warm: both replicas in rotation.
struct AuctionAway {
    host: Host,
    auction_name: String,
    bid_intake: ServiceProcess,
    client: BidIntakeClient<Channel>,
    _running: (FakeNetworks, RedisServer, FakeDns, [ServiceProcess; 4]),
}

impl AuctionAway {
    async fn start() -> AuctionAway {
        let networks = FakeNetworks::start().await.unwrap();
        let redis = RedisServer::start().await.unwrap();
        configure(&redis.url(), &networks).await;
        let host = Host::create().unwrap();
        let dns = FakeDns::start().await.unwrap();
        let port = port_free_on_every_loopback_host();
        let auction_name = format!("auction.cascade.test:{port}");
        dns.set("auction.cascade.test", &[host.addr, Ipv4Addr::LOCALHOST]);

        let away = settings(&format!("{}:{port}", host.addr), None);
        let local = settings(&format!("127.0.0.1:{port}"), None);
        let stateful = settings("127.0.0.1:0", Some(&redis.url()));
        let (away, local, targeting, network_caller) = tokio::join!(
            ServiceProcess::start_in(host.netns(), "auction", &away),
            ServiceProcess::start("auction", &local),
            ServiceProcess::start("targeting-evaluation", &stateful),
            ServiceProcess::start("network-caller", &stateful),
        );
        let (away, local) = (away.unwrap(), local.unwrap());
        let (targeting, network_caller) = (targeting.unwrap(), network_caller.unwrap());
        // The default refresh (5 s): a replica must leave on what the connection shows
        // (TCP_USER_TIMEOUT, the HTTP/2 ping, a connect timeout), not on the next probe.
        let bid_intake = ServiceProcess::start(
            "bid-intake",
            &format!(
                "targeting_evaluation_addr = \"{}\"\nauction_addr = \"{auction_name}\"\n\
                 network_caller_addr = \"{}\"\nresolver.nameserver = \"{}\"\n{}",
                targeting.addr,
                network_caller.addr,
                dns.addr(),
                settings("127.0.0.1:0", Some(&redis.url())),
            ),
        )
        .await
        .unwrap();
        let client = BidIntakeClient::connect(format!("http://{}", bid_intake.addr))
            .await
            .unwrap();
        // Both replicas in rotation and warm, and a second of latencies to hedge on.
        let warm = load(client.clone(), "warm", Duration::from_secs(2)).await;
        assert!(warm.errors.is_empty(), "{:?}", warm.errors);
        assert_eq!(in_rotation(&bid_intake, &auction_name).await, Some(2.0));
        AuctionAway {
            host,
            auction_name,
            bid_intake,
            client,
            _running: (
                networks,
                redis,
                dns,
                [away, local, targeting, network_caller],
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures lateness, so scripts/test runs it alone after the other tests"]
async fn a_replica_whose_packets_vanish_leaves_the_rotation_without_costing_a_decision() {
    once_more_if_failing(
        "a_replica_whose_packets_vanish_leaves_the_rotation_without_costing_a_decision",
        a_replica_whose_packets_vanish_leaves_the_rotation_without_costing_a_decision_once,
    )
    .await;
}

async fn a_replica_whose_packets_vanish_leaves_the_rotation_without_costing_a_decision_once() {
    if !hosts_available("a_replica_whose_packets_vanish") {
        return;
    }
    let AuctionAway {
        host,
        auction_name,
        bid_intake,
        client,
        _running,
    } = AuctionAway::start().await;

    let strike_at = Duration::from_secs(1);
    let under_load = tokio::spawn(load(client.clone(), "blackhole", Duration::from_secs(5)));
    tokio::time::sleep(strike_at).await;
    host.blackhole().unwrap();
    let struck = Instant::now();
    let left_after = loop {
        if in_rotation(&bid_intake, &auction_name).await == Some(1.0) {
            break struck.elapsed();
        }
        assert!(
            struck.elapsed() < Duration::from_secs(10),
            "the blackholed replica is still in rotation after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let under_load = under_load.await.unwrap();
    println!(
        "blackholed auction replica: out of rotation {} ms after; {} calls, {} errors, {} late",
        left_after.as_millis(),
        under_load.sent,
        under_load.errors.len(),
        under_load.late.len()
    );
    assert!(under_load.errors.is_empty(), "{:?}", under_load.errors);
    assert!(under_load.late.is_empty(), "{:?}", under_load.late);
    // TCP_USER_TIMEOUT (2 s) closes the connection with unacknowledged calls on it; the
    // next call fails to connect (200 ms) and takes the member out.
    assert!(
        left_after < Duration::from_millis(3_500),
        "out of rotation only after {left_after:?}"
    );
}

/// A lossy link to one auction replica (5% of its packets dropped each way): TCP's
/// retransmissions slow the calls that lose a packet by its 200 ms minimum timeout, and
/// hedging sends them to the other replica meanwhile; no decision is late or fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures lateness, so scripts/test runs it alone after the other tests"]
async fn a_lossy_link_to_a_replica_costs_no_decision() {
    once_more_if_failing(
        "a_lossy_link_to_a_replica_costs_no_decision",
        a_lossy_link_to_a_replica_costs_no_decision_once,
    )
    .await;
}

async fn a_lossy_link_to_a_replica_costs_no_decision_once() {
    if !hosts_available("a_lossy_link_to_a_replica") {
        return;
    }
    if let Some(reason) = Host::loss_unavailable() {
        println!("a_lossy_link_to_a_replica: skipped: {reason}");
        return;
    }
    let away = AuctionAway::start().await;
    away.host.lose(5).unwrap();
    let lossy = load(away.client.clone(), "lossy", Duration::from_secs(4)).await;
    away.host.heal().unwrap();
    let mut latencies = lossy.latencies.clone();
    latencies.sort();
    let p99 = latencies
        .get(latencies.len() * 99 / 100)
        .copied()
        .unwrap_or_default();
    println!(
        "5% loss to an auction replica: {} calls, p50 {:.1} ms, p99 {:.1} ms, {} errors, {} late, {} replicas in rotation after",
        lossy.sent,
        median(&lossy.latencies).as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3,
        lossy.errors.len(),
        lossy.late.len(),
        in_rotation(&away.bid_intake, &away.auction_name)
            .await
            .unwrap_or(0.0),
    );
    assert!(lossy.errors.is_empty(), "{:?}", lossy.errors);
    assert!(lossy.late.is_empty(), "{:?}", lossy.late);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures lateness, so scripts/test runs it alone after the other tests"]
async fn a_partition_from_redis_is_the_outage_policy() {
    once_more_if_failing(
        "a_partition_from_redis_is_the_outage_policy",
        a_partition_from_redis_is_the_outage_policy_once,
    )
    .await;
}

async fn a_partition_from_redis_is_the_outage_policy_once() {
    if !hosts_available("a_partition_from_redis") {
        return;
    }
    let networks = FakeNetworks::start().await.unwrap();
    let host = Host::create().unwrap();
    let redis = RedisServer::start_in(
        host.netns(),
        host.addr,
        RedisOptions {
            durable: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let url = redis.url();
    configure(&url, &networks).await;
    let backends = Backends::start(&url).await;
    let bid_intake = ServiceProcess::start("bid-intake", &backends.bid_intake(&url, ""))
        .await
        .unwrap();
    let mut client = BidIntakeClient::connect(format!("http://{}", bid_intake.addr))
        .await
        .unwrap();
    let warm = load(client.clone(), "warm", Duration::from_secs(1)).await;
    assert!(warm.errors.is_empty(), "{:?}", warm.errors);

    let under_load = tokio::spawn(load(client.clone(), "partition", Duration::from_secs(4)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    host.blackhole().unwrap();
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    host.heal().unwrap();
    let under_load = under_load.await.unwrap();
    println!(
        "partition from Redis for 1.5 s: {} calls, {} errors, {} late, {} selections",
        under_load.sent,
        under_load.errors.len(),
        under_load.late.len(),
        under_load.selections.len()
    );
    assert!(under_load.errors.is_empty(), "{:?}", under_load.errors);
    assert!(under_load.late.is_empty(), "{:?}", under_load.late);

    // Every selection sold during the partition reaches Redis once it is back, and takes
    // its impression (reporters retry NOT_FOUND a while).
    let lost = impressions_refused(&mut client, &under_load.selections).await;
    assert!(lost.is_empty(), "selections lost: {lost:?}");
}

/// The selections among `selections` that do not take an impression report within 15 s
/// (retried as a reporter does), with the last refusal's code.
async fn impressions_refused(
    client: &mut BidIntakeClient<Channel>,
    selections: &[String],
) -> Vec<(String, tonic::Code)> {
    let mut lost = Vec::new();
    for selection in selections {
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            let mut report = tonic::Request::new(ReportEventRequest {
                selection_id: selection.clone(),
                r#type: EventType::Impression.into(),
                ..Default::default()
            });
            report.set_timeout(Duration::from_secs(2));
            match client.report_event(report).await {
                Ok(_) => break,
                Err(_) if Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(100)).await
                }
                Err(status) => {
                    lost.push((selection.clone(), status.code()));
                    break;
                }
            }
        }
    }
    lost
}

/// The median of `latencies`.
fn median(latencies: &[Duration]) -> Duration {
    let mut sorted = latencies.to_vec();
    sorted.sort();
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// Redis in another zone: 20 ms each way, added by a relay (no `sch_netem` here), so no
/// namespace is needed. A decision's only wait for Redis is its selection write, so the
/// added latency costs a durable bid-intake (the default) one round trip at most, within
/// `selection_write_wait_ms`, and one writing behind (`selection_write_wait_ms = 0`)
/// nothing; neither answers late, and every selection of both takes its impression.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures lateness, so scripts/test runs it alone after the other tests"]
async fn latency_to_redis_costs_a_decision_one_round_trip_at_most() {
    once_more_if_failing(
        "latency_to_redis_costs_a_decision_one_round_trip_at_most",
        latency_to_redis_costs_a_decision_one_round_trip_at_most_once,
    )
    .await;
}

async fn latency_to_redis_costs_a_decision_one_round_trip_at_most_once() {
    const ONE_WAY: Duration = Duration::from_millis(20);
    let networks = FakeNetworks::start().await.unwrap();
    let redis = RedisServer::start_with(RedisOptions {
        durable: true,
        ..Default::default()
    })
    .await
    .unwrap();
    configure(&redis.url(), &networks).await;
    let far = DelayProxy::start(([127, 0, 0, 1], redis.port()).into())
        .await
        .unwrap();
    let url = format!("redis://{}", far.addr);
    let backends = Backends::start(&url).await;
    let (durable_settings, behind_settings) = (
        backends.bid_intake(&url, "selection_write_wait_ms = 50\n"),
        backends.bid_intake(&url, "selection_write_wait_ms = 0\n"),
    );
    let (durable, behind) = tokio::join!(
        ServiceProcess::start("bid-intake", &durable_settings),
        ServiceProcess::start("bid-intake", &behind_settings),
    );
    let (durable, behind) = (durable.unwrap(), behind.unwrap());
    let connect =
        |process: &ServiceProcess| BidIntakeClient::connect(format!("http://{}", process.addr));
    let (mut durable, mut behind) = (
        connect(&durable).await.unwrap(),
        connect(&behind).await.unwrap(),
    );
    // Both at once, each at half the rate, near and then far.
    let both =
        |run: &str, durable: &BidIntakeClient<Channel>, behind: &BidIntakeClient<Channel>| {
            let (durable, behind) = (durable.clone(), behind.clone());
            let (durable_run, behind_run) = (format!("{run}-durable"), format!("{run}-behind"));
            async move {
                tokio::join!(
                    load_at(RATE / 2, durable, &durable_run, Duration::from_secs(4)),
                    load_at(RATE / 2, behind, &behind_run, Duration::from_secs(4)),
                )
            }
        };
    let _ = both("warm", &durable, &behind).await;
    let (near_durable, near_behind) = both("near", &durable, &behind).await;
    far.set_delay(ONE_WAY);
    let (far_durable, far_behind) = both("far", &durable, &behind).await;
    for (run, load) in [
        ("near, durable", &near_durable),
        ("near, writing behind", &near_behind),
        ("far, durable", &far_durable),
        ("far, writing behind", &far_behind),
    ] {
        println!(
            "Redis {run}: {} calls, p50 {:.1} ms, {} errors, {} late",
            load.sent,
            median(&load.latencies).as_secs_f64() * 1e3,
            load.errors.len(),
            load.late.len()
        );
        assert!(load.errors.is_empty(), "{run}: {:?}", load.errors);
        assert!(load.late.is_empty(), "{run}: {:?}", load.late);
    }
    let round_trip = 2 * ONE_WAY;
    let cost =
        |near: &Load, far: &Load| median(&far.latencies).saturating_sub(median(&near.latencies));
    let (durable_cost, behind_cost) = (
        cost(&near_durable, &far_durable),
        cost(&near_behind, &far_behind),
    );
    assert!(
        durable_cost < round_trip + ONE_WAY / 2,
        "a far Redis cost a durable decision {durable_cost:?}, more than its one round trip"
    );
    assert!(
        behind_cost < ONE_WAY / 2,
        "a far Redis cost a decision writing behind {behind_cost:?}"
    );
    // An impression reported the moment its decision answers, to the replica that sold
    // it, waits for its selection on the way to the store.
    let mut call = tonic::Request::new(crate::faults::request("at-once", 0));
    call.set_timeout(DEADLINE);
    let answer = behind.decide(call).await.unwrap().into_inner();
    let sold = answer.decisions[0]
        .winner
        .as_ref()
        .unwrap()
        .selection_id
        .clone();
    let report = behind
        .report_event(ReportEventRequest {
            selection_id: sold,
            r#type: EventType::Impression.into(),
            ..Default::default()
        })
        .await;
    assert!(report.is_ok(), "{report:?}");

    // Every selection sold takes its impression.
    let sold_behind: Vec<String> = [&near_behind, &far_behind]
        .iter()
        .flat_map(|load| load.selections.clone())
        .collect();
    let sold_durable: Vec<String> = [&near_durable, &far_durable]
        .iter()
        .flat_map(|load| load.selections.clone())
        .collect();
    assert!(
        impressions_refused(&mut behind, &sold_behind)
            .await
            .is_empty()
    );
    assert!(
        impressions_refused(&mut durable, &sold_durable)
            .await
            .is_empty()
    );
}
