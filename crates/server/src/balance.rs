//! Client-side load balancing for the calls between services.
//!
//! gRPC multiplexes every call over one long-lived HTTP/2 connection, so behind a
//! Kubernetes ClusterIP Service a client would stay pinned to the one pod it first
//! reached. The internal Services are headless instead — their name resolves to the
//! address of every ready pod — and [`BalancedChannel`] spreads calls over all of them:
//!
//! - it resolves the target's host name through DNS at start and every
//!   `refresh_interval`, keeping one lazily connected channel per address;
//! - calls go round-robin over the endpoints in rotation;
//! - an endpoint whose call fails at the transport level leaves the rotation at once; if
//!   the failure was a connection that could not be made (the request was never sent),
//!   the call is retried once on another endpoint, so a killed pod costs no decision;
//! - on every refresh each endpoint is asked `grpc.health.v1.Health/Check`: SERVING puts
//!   it (back) in rotation, anything else — a pod draining before it stops, one that is
//!   gone — keeps it out.
//!
//! When no endpoint is in rotation the calls still try the resolved ones, so a wrong
//! health answer can slow a client down but never cut it off.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::{Service, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an endpoint may take to answer its health check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long making a connection to an endpoint may take. Between pods a connection is
/// made in well under a millisecond; one not made in 200 ms is to an instance that is
/// gone without a word (its packets dropped), and the call moves to another while the
/// decision's budget still allows it.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);

/// Where a service is reached: `host:port`, the host an IP address or a DNS name
/// (a Kubernetes headless Service, say) resolving to every instance.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Target {
    host: String,
    port: u16,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid target {0:?}: expected host:port")]
pub struct InvalidTarget(String);

impl Target {
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address, when the host is an IP address rather than a name.
    fn literal(&self) -> Option<SocketAddr> {
        self.host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

impl FromStr for Target {
    type Err = InvalidTarget;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidTarget(text.to_string());
        let (host, port) = text.rsplit_once(':').ok_or_else(invalid)?;
        let port: u16 = port.parse().map_err(|_| invalid())?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let is_name = !bare.is_empty()
            && bare
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
        if port == 0 || (!is_name && bare.parse::<IpAddr>().is_err()) {
            return Err(invalid());
        }
        Ok(Self {
            host: host.to_string(),
            port,
        })
    }
}

impl TryFrom<String> for Target {
    type Error = InvalidTarget;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        text.parse()
    }
}

impl From<Target> for String {
    fn from(target: Target) -> Self {
        target.to_string()
    }
}

impl From<SocketAddr> for Target {
    fn from(addr: SocketAddr) -> Self {
        let host = match addr.ip() {
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        Self {
            host,
            port: addr.port(),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// How clients find and watch the instances of the services they call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResolverSettings {
    /// How often names are resolved again and endpoints health-checked (at least 50 ms:
    /// each refresh is a DNS query and a health check per endpoint).
    pub refresh_interval_ms: u64,
    /// The DNS server to ask; unset: the system's (`/etc/resolv.conf`, `/etc/hosts`).
    pub nameserver: Option<SocketAddr>,
}

impl cascade_core::settings::Validate for ResolverSettings {
    fn validate(&self) -> Result<(), cascade_core::settings::InvalidSetting> {
        cascade_core::settings::at_least("refresh_interval_ms", self.refresh_interval_ms, 50)
    }
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            refresh_interval_ms: 5_000,
            nameserver: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot set up the DNS resolver: {0}")]
pub struct ResolverError(String);

/// Resolves targets' host names; one per process, shared by its channels.
#[derive(Clone)]
pub struct Resolver {
    dns: TokioResolver,
    refresh_interval: Duration,
}

impl Resolver {
    pub fn new(settings: &ResolverSettings) -> Result<Self, ResolverError> {
        let builder = match settings.nameserver {
            Some(nameserver) => {
                let mut server = NameServerConfig::udp(nameserver.ip());
                for connection in &mut server.connections {
                    connection.port = nameserver.port();
                }
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(vec![server]),
                    TokioRuntimeProvider::default(),
                )
            }
            None => TokioResolver::builder_tokio().map_err(|e| ResolverError(e.to_string()))?,
        };
        let dns = builder.build().map_err(|e| ResolverError(e.to_string()))?;
        Ok(Self {
            dns,
            refresh_interval: Duration::from_millis(settings.refresh_interval_ms),
        })
    }

    async fn resolve(&self, target: &Target) -> Result<Vec<SocketAddr>, String> {
        if let Some(addr) = target.literal() {
            return Ok(vec![addr]);
        }
        let lookup = self
            .dns
            .lookup_ip(target.host())
            .await
            .map_err(|e| e.to_string())?;
        let mut addrs: Vec<SocketAddr> = lookup
            .iter()
            .map(|ip| SocketAddr::new(ip, target.port()))
            .collect();
        addrs.sort_unstable();
        addrs.dedup();
        Ok(addrs)
    }

    /// A channel balancing over every address `target` resolves to. Resolution starts
    /// in the background; a call made before it has finished waits for it.
    pub fn channel(&self, target: Target) -> BalancedChannel {
        let shared = Arc::new(Shared {
            target,
            resolver: self.clone(),
            endpoints: ArcSwap::from_pointee(Vec::new()),
            next: AtomicUsize::new(0),
            refreshing: tokio::sync::Mutex::new(()),
        });
        tokio::spawn(refresh_forever(Arc::downgrade(&shared)));
        BalancedChannel { shared }
    }
}

/// One address of a target, with its own connection.
struct Backend {
    addr: SocketAddr,
    channel: Channel,
    in_rotation: AtomicBool,
}

impl Backend {
    fn new(addr: SocketAddr) -> Self {
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("a socket address is a valid URI authority")
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .connect_lazy();
        Self {
            addr,
            channel,
            in_rotation: AtomicBool::new(true),
        }
    }

    async fn is_serving(&self) -> bool {
        let mut client = HealthClient::new(self.channel.clone());
        let check = client.check(HealthCheckRequest {
            service: String::new(),
        });
        matches!(
            tokio::time::timeout(PROBE_TIMEOUT, check).await,
            Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving
        )
    }
}

struct Shared {
    target: Target,
    resolver: Resolver,
    endpoints: ArcSwap<Vec<Arc<Backend>>>,
    next: AtomicUsize,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

impl Shared {
    /// Resolves the target again and health-checks every endpoint. A failed or empty
    /// resolution keeps the endpoints known so far: better a stale list than none.
    async fn refresh(&self) {
        let _one_at_a_time = self.refreshing.lock().await;
        let addrs = match self.resolver.resolve(&self.target).await {
            Ok(addrs) if !addrs.is_empty() => addrs,
            Ok(_) => {
                tracing::warn!(target = %self.target, "resolves to no address; keeping the last ones");
                return self.probe(self.endpoints.load_full()).await;
            }
            Err(error) => {
                tracing::warn!(target = %self.target, %error, "cannot resolve; keeping the last addresses");
                return self.probe(self.endpoints.load_full()).await;
            }
        };
        let current = self.endpoints.load_full();
        let endpoints: Vec<Arc<Backend>> = addrs
            .into_iter()
            .map(|addr| {
                current
                    .iter()
                    .find(|backend| backend.addr == addr)
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Backend::new(addr)))
            })
            .collect();
        self.probe(Arc::new(endpoints)).await;
    }

    async fn probe(&self, endpoints: Arc<Vec<Arc<Backend>>>) {
        let serving =
            futures::future::join_all(endpoints.iter().map(|backend| backend.is_serving())).await;
        for (backend, serving) in endpoints.iter().zip(serving) {
            if backend.in_rotation.swap(serving, Ordering::Relaxed) != serving {
                tracing::info!(target = %self.target, addr = %backend.addr, serving, "endpoint rotation changed");
            }
        }
        let in_rotation = endpoints
            .iter()
            .filter(|backend| backend.in_rotation.load(Ordering::Relaxed))
            .count();
        let target = self.target.to_string();
        metrics::gauge!("cascade_client_endpoints", "target" => target.clone(), "state" => "in_rotation")
            .set(in_rotation as f64);
        metrics::gauge!("cascade_client_endpoints", "target" => target, "state" => "out_of_rotation")
            .set((endpoints.len() - in_rotation) as f64);
        self.endpoints.store(endpoints);
    }

    /// The next endpoint in rotation other than `excluded`, round-robin; when none is in
    /// rotation, any other than `excluded`.
    fn pick(&self, excluded: Option<SocketAddr>) -> Option<Arc<Backend>> {
        let endpoints = self.endpoints.load();
        let count = endpoints.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let candidates = (0..count)
            .map(|offset| &endpoints[(start + offset) % count])
            .filter(|backend| Some(backend.addr) != excluded);
        candidates
            .clone()
            .find(|backend| backend.in_rotation.load(Ordering::Relaxed))
            .or_else(|| candidates.clone().next())
            .cloned()
    }

    fn take_out_of_rotation(&self, backend: &Backend, error: &BoxError) {
        if backend.in_rotation.swap(false, Ordering::Relaxed) {
            tracing::warn!(target = %self.target, addr = %backend.addr, %error, "endpoint failed; out of rotation until healthy");
            metrics::counter!("cascade_client_endpoint_failures_total", "target" => self.target.to_string())
                .increment(1);
        }
    }
}

async fn refresh_forever(shared: Weak<Shared>) {
    loop {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.refresh().await;
        let interval = shared.resolver.refresh_interval;
        drop(shared);
        tokio::time::sleep(interval).await;
    }
}

/// A gRPC channel over every instance of one service (see the module documentation).
/// Cheap to clone; the background refresh stops when the last clone is dropped.
#[derive(Clone)]
pub struct BalancedChannel {
    shared: Arc<Shared>,
}

impl fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedChannel")
            .field("target", &self.shared.target)
            .finish_non_exhaustive()
    }
}

impl BalancedChannel {
    async fn dispatch(
        self,
        request: http::Request<Body>,
    ) -> Result<http::Response<Body>, BoxError> {
        if self.shared.endpoints.load().is_empty() {
            self.shared.refresh().await;
        }
        // A unary request body is one small message: kept, so that a request that never
        // left can be sent again.
        let (parts, body) = request.into_parts();
        let body = body.collect().await?.to_bytes();
        let mut excluded = None;
        loop {
            let Some(backend) = self.shared.pick(excluded) else {
                return Err(tonic::Status::unavailable(format!(
                    "no reachable address for {}",
                    self.shared.target
                ))
                .into());
            };
            let request = rebuild(&parts, body.clone());
            match backend.channel.clone().oneshot(request).await {
                Ok(response) => return Ok(response),
                Err(error) => {
                    let error: BoxError = error.into();
                    self.shared.take_out_of_rotation(&backend, &error);
                    if excluded.is_some() || !never_sent(&*error) {
                        return Err(error);
                    }
                    excluded = Some(backend.addr);
                }
            }
        }
    }
}

/// Whether the request failed before it could be sent: the connection was never made.
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        source = error.source();
    }
    false
}

fn rebuild(parts: &http::request::Parts, body: Bytes) -> http::Request<Body> {
    let mut request = http::Request::new(Body::new(http_body_util::Full::new(body)));
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    *request.extensions_mut() = parts.extensions.clone();
    request
}

impl Service<http::Request<Body>> for BalancedChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Each call picks its endpoint and waits for that endpoint's readiness.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        // The call's deadline covers everything here, waiting for the first resolution
        // and a retry included, not only the time on the wire.
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(crate::deadline::parse_grpc_timeout);
        let dispatch = self.clone().dispatch(request);
        Box::pin(async move {
            match timeout {
                None => dispatch.await,
                Some(timeout) => tokio::time::timeout(timeout, dispatch)
                    .await
                    .unwrap_or_else(|_| {
                        Err(tonic::Status::deadline_exceeded("deadline exceeded").into())
                    }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_names_and_addresses() {
        let named: Target = "targeting-evaluation.cascade.svc:50051".parse().unwrap();
        assert_eq!(named.host(), "targeting-evaluation.cascade.svc");
        assert_eq!(named.port(), 50051);
        assert_eq!(named.literal(), None);
        let v4: Target = "127.0.0.1:50052".parse().unwrap();
        assert_eq!(v4.literal(), Some("127.0.0.1:50052".parse().unwrap()));
        let v6: Target = "[::1]:50052".parse().unwrap();
        assert_eq!(v6.literal(), Some("[::1]:50052".parse().unwrap()));
        assert_eq!(Target::from(v6.literal().unwrap()), v6);
        assert_eq!(v6.to_string(), "[::1]:50052");
        for bad in [
            "",
            "auction",
            "auction:",
            "auction:0",
            "auction:70000",
            "a b:1",
            "http://x:1",
        ] {
            assert_eq!(
                bad.parse::<Target>(),
                Err(InvalidTarget(bad.to_string())),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_connection_refused_is_a_request_never_sent() {
        let refused = tonic::ConnectError(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )));
        let wrapped: BoxError = Box::new(tonic::Status::from_error(Box::new(refused)));
        assert!(never_sent(&*wrapped));
        let reset: BoxError = Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!never_sent(&*reset));
    }
}
