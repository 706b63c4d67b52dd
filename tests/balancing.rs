//! Client-side balancing, end to end: bid-intake reaches targeting-evaluation through one
//! DNS name that resolves to several instances (as a Kubernetes headless Service does),
//! spreads its calls over all of them, keeps deciding when one is killed, follows the
//! name when it changes, and stops calling an instance that is shutting down before it
//! stops listening.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::{banner_request, decide_at, demo_state, sample, winner};
use cascade_testkit::{
    FakeDns, FakeNetworks, LOOPBACK_HOSTS, ServiceProcess, port_free_on_every_loopback_host,
};
use serde_json::json;

const NAME: &str = "targeting-evaluation.cascade.test";
const HOSTS: [Ipv4Addr; 3] = LOOPBACK_HOSTS;

/// Admission off: a debug build on a loaded test machine is overloaded by construction,
/// and balancing, not admission, is under test here.
const NO_ADMISSION: &str = "grpc.admission.enabled = false\n";

async fn targeting_instance(host: Ipv4Addr, port: u16, state: &str) -> ServiceProcess {
    let settings = format!(
        "grpc.listen = \"{host}:{port}\"\ngrpc.metrics_listen = \"127.0.0.1:0\"\n\
         grpc.shutdown_delay_ms = 1000\n{NO_ADMISSION}{state}"
    );
    ServiceProcess::start("targeting-evaluation", &settings)
        .await
        .unwrap()
}

/// How many Evaluate calls `instance` has answered.
async fn evaluations(instance: &ServiceProcess) -> u64 {
    let metrics = instance.metrics().await.unwrap();
    sample(
        &metrics,
        "cascade_grpc_server_requests_total",
        &[("rpc_method", "Evaluate"), ("grpc_code", "OK")],
    )
    .unwrap_or(0.0) as u64
}

async fn decide(bid_intake: SocketAddr) {
    let response = decide_at(bid_intake, &banner_request(json!([]))).await;
    assert_eq!(
        winner(&response)["source"],
        "SOURCE_KIND_MEDIATED_NETWORK",
        "{response}"
    );
}

/// bid-intake (with auction and network-caller) calling targeting-evaluation by `NAME`,
/// which first resolves to instances on the first two hosts.
struct Setup {
    dns: FakeDns,
    port: u16,
    state: String,
    bid_intake: ServiceProcess,
    instances: Vec<ServiceProcess>,
    _rest: (
        FakeNetworks,
        ServiceProcess,
        ServiceProcess,
        tempfile::NamedTempFile,
    ),
}

impl Setup {
    async fn start(refresh_interval_ms: u64) -> Setup {
        let (networks, state, configuration) = demo_state().await;
        let dns = FakeDns::start().await.unwrap();
        let port = port_free_on_every_loopback_host();
        let (first, second) = tokio::join!(
            targeting_instance(HOSTS[0], port, &state),
            targeting_instance(HOSTS[1], port, &state),
        );
        dns.set(NAME, &HOSTS[..2]);
        let network_caller_settings = format!("{NO_ADMISSION}{state}");
        let (auction, network_caller) = tokio::join!(
            ServiceProcess::start("auction", NO_ADMISSION),
            ServiceProcess::start("network-caller", &network_caller_settings),
        );
        let (auction, network_caller) = (auction.unwrap(), network_caller.unwrap());
        let bid_intake = ServiceProcess::start(
            "bid-intake",
            &format!(
                "{NO_ADMISSION}targeting_evaluation_addr = \"{NAME}:{port}\"\n\
                 auction_addr = \"{}\"\nnetwork_caller_addr = \"{}\"\n\
                 resolver.nameserver = \"{}\"\n\
                 resolver.refresh_interval_ms = {refresh_interval_ms}\n{state}",
                auction.addr,
                network_caller.addr,
                dns.addr()
            ),
        )
        .await
        .unwrap();
        Setup {
            dns,
            port,
            state,
            bid_intake,
            instances: vec![first, second],
            _rest: (networks, auction, network_caller, configuration),
        }
    }

    async fn decide(&self, times: usize) {
        for _ in 0..times {
            decide(self.bid_intake.addr).await;
        }
    }
}

#[tokio::test]
async fn calls_spread_over_every_instance_and_survive_one_killed() {
    // No refresh during the test: the killed instance stays in DNS and in rotation
    // until a call finds it dead.
    let mut setup = Setup::start(600_000).await;
    setup.decide(40).await;
    let (first, second) = (&setup.instances[0], &setup.instances[1]);
    let (on_first, on_second) = (evaluations(first).await, evaluations(second).await);
    // A call slower than the last second's p95 may be hedged to the other instance
    // (hedges are capped at a fifth of the calls).
    assert!(
        (40..=48).contains(&(on_first + on_second)),
        "{on_first} + {on_second} evaluations for 40 decisions"
    );
    assert!(
        on_first >= 10 && on_second >= 10,
        "calls not spread: {on_first} and {on_second}"
    );

    // Killed without warning: the call that finds it dead is retried on the other
    // instance, which takes every call from then on; not one decision fails. A call
    // slower than the last second's p95 may also be hedged, to the one instance left
    // (hedges are capped at a fifth of the calls).
    setup.instances.remove(1).kill().await.unwrap();
    setup.decide(30).await;
    let taken = evaluations(&setup.instances[0]).await - on_first;
    assert!(
        (30..=36).contains(&taken),
        "{taken} evaluations for 30 decisions"
    );
}

#[tokio::test]
async fn bid_intake_follows_the_name_and_lets_instances_drain() {
    let mut setup = Setup::start(100).await;
    setup.decide(4).await;

    // The name changes: a new instance gets calls once bid-intake resolves it again.
    let third = targeting_instance(HOSTS[2], setup.port, &setup.state).await;
    setup.dns.set(NAME, &[HOSTS[0], HOSTS[2]]);
    support::eventually(
        Duration::from_secs(10),
        "the new instance to get a call",
        || {
            let (setup, third) = (&setup, &third);
            async move {
                setup.decide(1).await;
                evaluations(third).await > 0
            }
        },
    )
    .await;
    let removed = setup.instances.remove(1);
    let on_removed = evaluations(&removed).await;
    setup.decide(10).await;
    assert_eq!(
        evaluations(&removed).await,
        on_removed,
        "an instance no longer behind the name still gets calls"
    );

    // A graceful stop: the instance reports NOT_SERVING for its shutdown delay, clients
    // take it out of rotation, and no decision fails while it goes.
    let on_third = evaluations(&third).await;
    let mut stopping_instance = setup.instances.remove(0);
    let stopping = tokio::spawn(async move { stopping_instance.terminate().await });
    let started = Instant::now();
    let mut during = 0;
    while !stopping.is_finished() {
        setup.decide(1).await;
        during += 1;
    }
    let status = stopping.await.unwrap().unwrap();
    assert!(
        status.success(),
        "targeting-evaluation exited with {status}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "the shutdown delay was not kept"
    );
    setup.decide(10).await;
    assert!(
        evaluations(&third).await >= on_third + 10 + during / 2,
        "calls did not move to the remaining instance"
    );
}
