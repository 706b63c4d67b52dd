//! The balanced channel's edges, against a real DNS server over UDP: a name that does
//! not resolve fails fast and clearly, and a DNS server that never answers cannot hold a
//! call past its deadline.

use std::time::{Duration, Instant};

use cascade_server::balance::{Resolver, ResolverSettings};
use cascade_testkit::FakeDns;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn resolver(nameserver: std::net::SocketAddr) -> Resolver {
    Resolver::new(&ResolverSettings {
        refresh_interval_ms: 60_000,
        nameserver: Some(nameserver),
    })
    .unwrap()
}

fn health_check(timeout: Duration) -> tonic::Request<HealthCheckRequest> {
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request.set_timeout(timeout);
    request
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_unavailable() {
    let dns = FakeDns::start().await.unwrap();
    let channel = resolver(dns.addr()).channel("nowhere.cascade.test:50051".parse().unwrap());
    let status = HealthClient::new(channel)
        .check(health_check(Duration::from_secs(5)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("nowhere.cascade.test:50051"),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_silent_dns_server_cannot_hold_a_call_past_its_deadline() {
    // Receives queries, never answers.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let channel =
        resolver(silent.local_addr().unwrap()).channel("slow.cascade.test:50051".parse().unwrap());
    let started = Instant::now();
    let status = HealthClient::new(channel)
        .check(health_check(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
}
