//! The balanced channel against a real DNS server over UDP and real gRPC servers: a name
//! that does not resolve fails fast and clearly, a DNS server that never answers cannot
//! hold a call past its deadline, calls prefer the instance with fewer in flight, a call
//! that could not connect goes elsewhere, an address whose call failed is probed again
//! at once, instances that all say NOT_SERVING are still called, and a hedged channel
//! gets past an instance that stopped answering and takes it out of the rotation; a call
//! that runs out of time says so (`DEADLINE_EXCEEDED`), not that the instance is gone;
//! a broken connection never takes the last instance out of the rotation.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cascade_server::channel::{Resolver, ResolverSettings};
use cascade_testkit::{FakeDns, LOOPBACK_HOSTS, port_free_on_every_loopback_host};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

fn resolver(nameserver: std::net::SocketAddr) -> Resolver {
    Resolver::new(&ResolverSettings {
        refresh_interval_ms: 60_000,
        nameserver: Some(nameserver),
        ..ResolverSettings::default()
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

/// A health service whose `Check` of the service `"balanced"` is the call under test:
/// counted, answered after `delay`. Probes (the empty service name) get `probe_answer`.
struct Instance {
    calls: Arc<AtomicUsize>,
    delay: Duration,
    probe_answer: ServingStatus,
    /// Set: nothing is answered any more, probes included (a stopped process).
    stopped: Arc<AtomicBool>,
    /// How long a probe waits for its answer.
    probe_delay: Duration,
}

#[tonic::async_trait]
impl Health for Instance {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        if self.stopped.load(Ordering::Relaxed) {
            std::future::pending::<()>().await;
        }
        let status = if request.get_ref().service == "balanced" {
            self.calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(self.delay).await;
            ServingStatus::Serving
        } else {
            tokio::time::sleep(self.probe_delay).await;
            self.probe_answer
        };
        Ok(tonic::Response::new(HealthCheckResponse {
            status: status as i32,
        }))
    }

    type WatchStream = futures::stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Err(tonic::Status::unimplemented("not watched"))
    }
}

const NAME: &str = "balanced.cascade.test";

const HOSTS: [Ipv4Addr; 3] = LOOPBACK_HOSTS;

/// An instance that answers at once and says SERVING; returns its call counter.
async fn healthy(host: Ipv4Addr, port: u16) -> Arc<AtomicUsize> {
    serve(host, port, Duration::ZERO, ServingStatus::Serving).await
}

/// Serves an [`Instance`] on `host:port`; returns its call counter.
async fn serve(
    host: Ipv4Addr,
    port: u16,
    delay: Duration,
    probe_answer: ServingStatus,
) -> Arc<AtomicUsize> {
    serve_stoppable(host, port, delay, probe_answer, Arc::default()).await
}

async fn serve_stoppable(
    host: Ipv4Addr,
    port: u16,
    delay: Duration,
    probe_answer: ServingStatus,
    stopped: Arc<AtomicBool>,
) -> Arc<AtomicUsize> {
    let calls = Arc::new(AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind((host, port)).await.unwrap();
    let instance = Instance {
        calls: calls.clone(),
        delay,
        probe_answer,
        stopped,
        probe_delay: Duration::ZERO,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(instance))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    calls
}

/// The call under test (not a probe), with `timeout`.
fn balanced_request(timeout: Duration) -> tonic::Request<HealthCheckRequest> {
    let mut request = tonic::Request::new(HealthCheckRequest {
        service: "balanced".into(),
    });
    request.set_timeout(timeout);
    request
}

async fn balanced_call(client: &mut HealthClient<cascade_server::channel::BalancedChannel>) {
    client
        .check(balanced_request(Duration::from_secs(5)))
        .await
        .unwrap();
}

async fn client_of(
    dns: &FakeDns,
    port: u16,
) -> HealthClient<cascade_server::channel::BalancedChannel> {
    let channel = resolver(dns.addr()).channel(format!("{NAME}:{port}").parse().unwrap());
    HealthClient::new(channel)
}

#[tokio::test]
async fn calls_go_to_the_instance_with_fewer_in_flight() {
    let port = port_free_on_every_loopback_host();
    let slow = serve(
        HOSTS[0],
        port,
        Duration::from_millis(100),
        ServingStatus::Serving,
    )
    .await;
    let fast = healthy(HOSTS[1], port).await;
    let dns = FakeDns::start().await.unwrap();
    dns.set(NAME, &[HOSTS[0], HOSTS[1]]);
    let client = client_of(&dns, port).await;
    // Four callers, each calling again as soon as its call is answered: round-robin would
    // split the calls evenly; pending-request balancing keeps them off the slow instance
    // while it still holds one.
    let callers = (0..4).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move {
            for _ in 0..25 {
                balanced_call(&mut client).await;
            }
        })
    });
    for caller in futures::future::join_all(callers).await {
        caller.unwrap();
    }
    let (slow, fast) = (slow.load(Ordering::Relaxed), fast.load(Ordering::Relaxed));
    assert_eq!(slow + fast, 100);
    assert!(fast >= 3 * slow, "slow {slow}, fast {fast}");
}

#[tokio::test]
async fn a_call_that_cannot_connect_is_sent_again_elsewhere() {
    let port = port_free_on_every_loopback_host();
    let first = healthy(HOSTS[0], port).await;
    let second = healthy(HOSTS[1], port).await;
    let dns = FakeDns::start().await.unwrap();
    // Nothing listens on the third address: its connections are refused.
    dns.set(NAME, &HOSTS);
    let mut client = client_of(&dns, port).await;
    for _ in 0..30 {
        balanced_call(&mut client).await;
    }
    assert_eq!(
        first.load(Ordering::Relaxed) + second.load(Ordering::Relaxed),
        30
    );
}

#[tokio::test]
async fn when_no_instance_says_serving_calls_still_reach_them() {
    let port = port_free_on_every_loopback_host();
    let only = serve(HOSTS[0], port, Duration::ZERO, ServingStatus::NotServing).await;
    let dns = FakeDns::start().await.unwrap();
    dns.set(NAME, &[HOSTS[0]]);
    let mut client = client_of(&dns, port).await;
    for _ in 0..3 {
        balanced_call(&mut client).await;
    }
    assert_eq!(only.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_failed_address_is_probed_again_at_once_not_at_the_next_refresh() {
    let port = port_free_on_every_loopback_host();
    let dns = FakeDns::start().await.unwrap();
    dns.set(NAME, &[HOSTS[0]]);
    // The resolver refreshes every minute: only a failure's own wake-up brings the
    // instance back within this test.
    let mut client = client_of(&dns, port).await;
    let status = client
        .check(balanced_request(Duration::from_secs(2)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    let calls = healthy(HOSTS[0], port).await;
    let started = Instant::now();
    balanced_call(&mut client).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(calls.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_hedged_channel_gets_past_a_stopped_instance_and_drops_it() {
    let port = port_free_on_every_loopback_host();
    let stopped = Arc::new(AtomicBool::new(false));
    let stopping = serve_stoppable(
        HOSTS[0],
        port,
        Duration::ZERO,
        ServingStatus::Serving,
        stopped.clone(),
    )
    .await;
    let other = healthy(HOSTS[1], port).await;
    let dns = FakeDns::start().await.unwrap();
    dns.set(NAME, &[HOSTS[0], HOSTS[1]]);
    let channel = resolver(dns.addr()).hedged_channel(format!("{NAME}:{port}").parse().unwrap());
    let mut client = HealthClient::new(channel);
    // A second and more of latencies to hedge on.
    let warm_until = Instant::now() + Duration::from_millis(1_200);
    while Instant::now() < warm_until {
        balanced_call(&mut client).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        stopping.load(Ordering::Relaxed) > 0,
        "both instances were called"
    );

    stopped.store(true, Ordering::Relaxed);
    let reached_before = stopping.load(Ordering::Relaxed);
    let mut slowest = Duration::ZERO;
    for _ in 0..40 {
        let started = Instant::now();
        client
            .check(balanced_request(Duration::from_secs(2)))
            .await
            .unwrap();
        slowest = slowest.max(started.elapsed());
    }
    // Each call sent to the stopped instance is hedged after a few milliseconds (a
    // quarter of its deadline at most); three races lost in a row take it out.
    assert!(slowest < Duration::from_millis(500), "{slowest:?}");
    let reached_after = stopping.load(Ordering::Relaxed) - reached_before;
    assert!(reached_after <= 3, "{reached_after} calls reached it");
    assert!(other.load(Ordering::Relaxed) >= 40);
}

#[tokio::test]
async fn a_call_that_runs_out_of_time_is_deadline_exceeded_not_unavailable() {
    let port = port_free_on_every_loopback_host();
    let slow = serve(
        HOSTS[0],
        port,
        Duration::from_millis(300),
        ServingStatus::Serving,
    )
    .await;
    let dns = FakeDns::start().await.unwrap();
    dns.set(NAME, &[HOSTS[0]]);
    let mut client = client_of(&dns, port).await;
    // The connection is open before the short calls, so they fail on their deadline alone.
    balanced_call(&mut client).await;
    for _ in 0..3 {
        let status = client
            .check(balanced_request(Duration::from_millis(40)))
            .await
            .unwrap_err();
        // The caller ran out of time: not an instance to avoid, not a call to retry.
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    }
    assert_eq!(slow.load(Ordering::Relaxed), 4);
}

/// A TCP proxy that can cut every connection through it at once, as an instance's
/// connections break under overload while the instance itself lives on.
struct CuttingProxy {
    connections: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl CuttingProxy {
    async fn start(listen: (Ipv4Addr, u16), upstream: std::net::SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
        let connections: Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let held = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let connection = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                held.lock().push(connection);
            }
        });
        CuttingProxy { connections }
    }

    fn cut(&self) {
        for connection in self.connections.lock().drain(..) {
            connection.abort();
        }
    }
}

/// The one instance of a service whose connection breaks under a call stays in the
/// rotation: taken out, every call would wait for its probe (slow here, as under the
/// overload that broke the connection) and fail on its deadline, though the instance
/// answers at once.
#[tokio::test]
async fn a_broken_connection_never_takes_the_last_instance_out_of_rotation() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let instance = Instance {
        calls: calls.clone(),
        delay: Duration::from_millis(300),
        probe_answer: ServingStatus::Serving,
        stopped: Arc::default(),
        probe_delay: Duration::from_secs(3),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(HealthServer::new(instance))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(upstream)),
    );
    let port = port_free_on_every_loopback_host();
    let proxy = CuttingProxy::start((HOSTS[0], port), upstream_addr).await;
    let dns = FakeDns::start().await.unwrap();
    dns.set(NAME, &[HOSTS[0]]);
    let mut client = client_of(&dns, port).await;

    // The connection breaks under a call in flight.
    let mut in_flight = client.clone();
    let broken = tokio::spawn(async move {
        in_flight
            .check(balanced_request(Duration::from_secs(2)))
            .await
    });
    while calls.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    proxy.cut();
    let status = broken.await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // The next calls reach the instance over a new connection at once.
    let started = Instant::now();
    for _ in 0..3 {
        client
            .check(balanced_request(Duration::from_secs(1)))
            .await
            .unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "{:?}",
        started.elapsed()
    );
}
