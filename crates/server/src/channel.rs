//! Channels to the other services: discovery (DNS and health) feeding tower's balancer.
//!
//! gRPC multiplexes every call over one long-lived HTTP/2 connection, so behind a
//! Kubernetes ClusterIP Service a client would stay pinned to the one pod it first
//! reached. The internal Services are headless instead — their name resolves to the
//! address of every ready pod — and [`BalancedChannel`] spreads calls over all of them.
//! It is tower's power-of-two-choices balancer fed by our own discovery:
//!
//! ```text
//! call ─ deadline ─ [hedge] ─ Retry (a request that never left) ─ Buffer ─ p2c::Balance ─ PendingRequests<Member> per address
//!                                                                              ▲
//!                                  Discovery: DNS every refresh + grpc.health.v1 per address
//! ```
//!
//! - Discovery resolves the target's host name at start and every `refresh_interval`,
//!   keeping one lazily connected channel per address, and asks each address
//!   `grpc.health.v1.Health/Check`: the SERVING ones are in the balancer, anything else —
//!   a pod draining before it stops, one that is gone — is out. When none is SERVING,
//!   every resolved address is in, so a wrong health answer can slow a client down but
//!   never cut it off. A failed or empty resolution keeps the last addresses.
//! - Each call goes to the less loaded (fewer calls in flight) of two addresses picked at
//!   random.
//! - An address whose call fails at the transport level leaves the balancer at once and
//!   wakes discovery, which probes it again — unless it is the last one in rotation: a
//!   failure never leaves a service with no instance (the calls of a last instance that
//!   is gone fail at once instead of waiting for one). If the connection could not be made (the
//!   request never left), the call is retried once, on another address when there is
//!   one: a killed pod costs no decision.
//! - A hedged channel (for services whose calls are pure: targeting, auction; with at
//!   least two instances in rotation) sends a second copy of a call unanswered after the last second's 95th percentile latency,
//!   and takes the first answer ([`crate::hedge`]): an instance that is stopped, not
//!   gone, costs a few milliseconds instead of every call it was sent.
//! - The buffer bounds the calls waiting for an address; the call's deadline covers that
//!   wait, the first resolution and the retry, not only the time on the wire.

use std::collections::{BTreeMap, BTreeSet};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{NameServerConfig, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use http_body_util::{BodyExt, Full};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::Code;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::balance::p2c::Balance;
use tower::buffer::Buffer;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PendingRequests};
use tower::retry::{Policy, Retry};
use tower::util::BoxService;
use tower::{Service, ServiceExt};

use crate::hedge::Hedging;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an endpoint may take to answer its health check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long making a connection to an endpoint may take. Between pods a connection is
/// made in well under a millisecond; one not made in 200 ms is to an instance that is
/// gone without a word (its packets dropped), and the call moves to another while the
/// decision's budget still allows it.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(200);
/// How often an HTTP/2 connection is pinged, and how long the answer may take before the
/// connection is closed (and its calls fail, so the address leaves the rotation).
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long sent bytes may go unacknowledged before the kernel closes the connection
/// (`TCP_USER_TIMEOUT`, as gRPC sets it: the keepalive timeout). A peer whose packets
/// vanish while calls are being sent is found this way, without waiting for a ping.
const TCP_USER_TIMEOUT: Duration = KEEPALIVE_TIMEOUT;
/// How many calls may wait for an address to take them before callers wait to send.
const CALL_QUEUE: usize = 1024;
/// The least time between two refreshes, so that a run of failed calls does not turn into
/// a run of DNS queries and probes.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(25);

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
    /// Call the services over TLS, trusting this CA (PEM); unset: plaintext.
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// The certificate and key presented to services that require one (mTLS).
    pub tls_cert_file: Option<std::path::PathBuf>,
    pub tls_key_file: Option<std::path::PathBuf>,
    /// The name the services' certificates are checked against; unset: each target's
    /// host (its name, or its address for a literal address).
    pub tls_server_name: Option<String>,
}

impl cascade_core::settings::Validate for ResolverSettings {
    fn validate(&self) -> Result<(), cascade_core::settings::InvalidSetting> {
        use cascade_core::settings::{InvalidSetting, at_least};
        at_least("refresh_interval_ms", self.refresh_interval_ms, 50)?;
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(InvalidSetting::new(
                "tls_key_file",
                "tls_cert_file and tls_key_file go together",
            ));
        }
        if self.tls_ca_file.is_none()
            && (self.tls_cert_file.is_some() || self.tls_server_name.is_some())
        {
            return Err(InvalidSetting::new(
                "tls_ca_file",
                "required with tls_cert_file or tls_server_name: it turns TLS on",
            ));
        }
        Ok(())
    }
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            refresh_interval_ms: 5_000,
            nameserver: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_server_name: None,
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
    /// The TLS every channel speaks, and the name certificates are checked against.
    tls: Option<(tonic::transport::ClientTlsConfig, Option<String>)>,
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
        let tls = settings
            .tls_ca_file
            .as_deref()
            .map(|ca| {
                crate::tls::client(
                    Some(ca),
                    crate::tls::pair(
                        settings.tls_cert_file.as_deref(),
                        settings.tls_key_file.as_deref(),
                    ),
                )
            })
            .transpose()
            .map_err(|e| ResolverError(e.to_string()))?
            .map(|config| (config, settings.tls_server_name.clone()));
        // Certificates that do not parse are refused here, at start, and never when a
        // channel is made.
        if let Some((config, _)) = &tls {
            Endpoint::from_static("https://localhost")
                .tls_config(config.clone())
                .map_err(|e| ResolverError(format!("invalid client TLS files: {e}")))?;
        }
        Ok(Self {
            dns,
            refresh_interval: Duration::from_millis(settings.refresh_interval_ms),
            tls,
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
        self.balanced(target, None)
    }

    /// A channel as [`Resolver::channel`] that also hedges (see [`crate::hedge`]): only
    /// for a service whose calls are pure functions of their request, which a second copy
    /// cannot make do anything twice.
    pub fn hedged_channel(&self, target: Target) -> BalancedChannel {
        self.balanced(target, Some(Arc::new(Hedging::new(Instant::now()))))
    }

    fn balanced(&self, target: Target, hedging: Option<Arc<Hedging>>) -> BalancedChannel {
        let (changes, discovered) = mpsc::unbounded_channel();
        let (resolution, _) = watch::channel(Resolution::Pending);
        let discovery = Arc::new(Discovery {
            target,
            resolver: self.clone(),
            changes,
            known: Mutex::new(BTreeMap::new()),
            resolution,
            wake: Arc::new(Notify::new()),
            failures: AtomicU64::new(0),
            healthy: AtomicUsize::new(0),
        });
        let balance: Balance<_, http::Request<Body>> =
            Balance::new(UnboundedReceiverStream::new(discovered));
        let calls = BoxService::new(balance.map_request(|request: http::Request<Bytes>| {
            request.map(|body| Body::new(Full::new(body)))
        }));
        let (buffer, worker) = Buffer::pair(calls, CALL_QUEUE);
        tokio::spawn(worker);
        tokio::spawn(refresh_forever(Arc::downgrade(&discovery)));
        BalancedChannel {
            discovery,
            calls: Retry::new(RetryNeverSent { retries_left: 1 }, buffer),
            hedging,
        }
    }
}

type Discovered = Result<Change<SocketAddr, PendingRequests<Member>>, Infallible>;

/// What a call needs to know of discovery before it is sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Resolution {
    /// The first refresh has not finished: wait for it.
    Pending,
    /// The target has never resolved to an address: fail at once.
    NoAddress,
    /// Addresses are known; the balancer has them.
    Addresses,
}

/// Which addresses of one target are in the balancer, and why.
struct Discovery {
    target: Target,
    resolver: Resolver,
    /// Into the balancer.
    changes: mpsc::UnboundedSender<Discovered>,
    known: Mutex<BTreeMap<SocketAddr, Known>>,
    /// Set by every refresh; read (not locked) by every call.
    resolution: watch::Sender<Resolution>,
    /// Wakes the refresh loop early: a member failed.
    wake: Arc<Notify>,
    /// How many members have failed so far: a refresh whose probes began before a
    /// failure must not put that member back on their word.
    failures: AtomicU64,
    /// Members in the balancer not known to have failed: read (not locked) by every
    /// hedged call, and before a member is taken out for losing races.
    healthy: AtomicUsize,
}

/// A resolved address: its connection, and whether (and as which member) it is in the
/// balancer.
struct Known {
    channel: Channel,
    /// The `failed` flag of the member in the balancer, if there is one.
    member: Option<Arc<AtomicBool>>,
}

impl Known {
    /// A lazy connection to `addr`, over `tls` when set (certificates checked against its
    /// server name, else `host`). HTTP/2 pings find a connection whose packets vanish.
    fn new(
        addr: SocketAddr,
        tls: Option<&(tonic::transport::ClientTlsConfig, Option<String>)>,
        host: &str,
    ) -> Self {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .expect("a socket address is a valid URI authority")
            .tcp_nodelay(true)
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        if let Some((config, server_name)) = tls {
            let name = server_name.as_deref().unwrap_or(host).to_string();
            endpoint = endpoint
                .tls_config(config.clone().domain_name(name))
                .expect("the TLS configuration was checked when the resolver was made");
        }
        Self {
            channel: endpoint.connect_with_connector_lazy(tcp_connector()),
            member: None,
        }
    }

    /// Put in the balancer, and failed since.
    fn has_failed(&self) -> bool {
        self.member
            .as_ref()
            .is_some_and(|failed| failed.load(Ordering::Relaxed))
    }

    /// In the balancer and not known to have failed since.
    fn is_healthy_member(&self) -> bool {
        self.member
            .as_ref()
            .is_some_and(|failed| !failed.load(Ordering::Relaxed))
    }
}

impl Discovery {
    /// Resolves the target again, asks every address for its health and puts the
    /// SERVING ones in the balancer (every one, when none is SERVING).
    async fn refresh(self: &Arc<Self>) {
        let failures_before = self.failures.load(Ordering::Acquire);
        let resolved = match self.resolver.resolve(&self.target).await {
            Ok(addrs) if !addrs.is_empty() => Some(addrs),
            Ok(_) => {
                tracing::warn!(target = %self.target, "resolves to no address; keeping the last ones");
                None
            }
            Err(error) => {
                tracing::warn!(target = %self.target, %error, "cannot resolve; keeping the last addresses");
                None
            }
        };
        let to_probe: Vec<(SocketAddr, Channel)> = {
            let mut known = self.known.lock();
            if let Some(addrs) = resolved {
                known.retain(|addr, entry| {
                    let still_resolved = addrs.contains(addr);
                    if !still_resolved && entry.member.is_some() {
                        self.send(Change::Remove(*addr));
                    }
                    still_resolved
                });
                for addr in addrs {
                    known.entry(addr).or_insert_with(|| {
                        Known::new(addr, self.resolver.tls.as_ref(), self.target.host())
                    });
                }
            }
            known
                .iter()
                .map(|(addr, entry)| (*addr, entry.channel.clone()))
                .collect()
        };
        let answers =
            futures::future::join_all(to_probe.iter().map(|(_, channel)| is_serving(channel)))
                .await;
        let serving: BTreeSet<SocketAddr> = to_probe
            .iter()
            .zip(answers)
            .filter_map(|((addr, _), serving)| serving.then_some(*addr))
            .collect();
        let failed_since = self.failures.load(Ordering::Acquire) != failures_before;
        let known_any = self.apply(&serving, failed_since);
        let resolution = if known_any {
            Resolution::Addresses
        } else {
            Resolution::NoAddress
        };
        self.resolution.send_if_modified(|current| {
            let changed = *current != resolution;
            *current = resolution;
            changed
        });
    }

    /// Puts in (and takes out of) the balancer what `serving` says; whether any address
    /// is known.
    ///
    /// With `failed_since`, a member failed while the probes were out: one that is marked
    /// failed stays out (its probe may predate its death); the refresh its failure woke
    /// probes it again.
    fn apply(self: &Arc<Self>, serving: &BTreeSet<SocketAddr>, failed_since: bool) -> bool {
        let mut known = self.known.lock();
        let none_serving = serving.is_empty();
        for (addr, entry) in known.iter_mut() {
            let wanted = none_serving || serving.contains(addr);
            let failed_after_probe = failed_since && entry.has_failed();
            if wanted && !entry.is_healthy_member() && !failed_after_probe {
                let failed = Arc::new(AtomicBool::new(false));
                let member = Member {
                    addr: *addr,
                    channel: entry.channel.clone(),
                    failed: failed.clone(),
                    races_lost: Arc::new(AtomicU32::new(0)),
                    discovery: Arc::downgrade(self),
                };
                self.send(Change::Insert(
                    *addr,
                    PendingRequests::new(member, CompleteOnResponse::default()),
                ));
                entry.member = Some(failed);
            } else if !wanted && entry.member.take().is_some() {
                self.send(Change::Remove(*addr));
            }
            let in_rotation = serving.contains(addr);
            tracing::debug!(target = %self.target, %addr, in_rotation, "probed");
        }
        let healthy = known
            .values()
            .filter(|entry| entry.is_healthy_member())
            .count();
        self.healthy.store(healthy, Ordering::Release);
        let target = self.target.to_string();
        metrics::gauge!("cascade_client_endpoints", "target" => target.clone(), "state" => "in_rotation")
            .set(serving.len() as f64);
        metrics::gauge!("cascade_client_endpoints", "target" => target, "state" => "out_of_rotation")
            .set((known.len() - serving.len()) as f64);
        !known.is_empty()
    }

    fn send(&self, change: Change<SocketAddr, PendingRequests<Member>>) {
        match &change {
            Change::Insert(addr, _) => {
                tracing::info!(target = %self.target, %addr, "endpoint in rotation");
            }
            Change::Remove(addr) => {
                tracing::info!(target = %self.target, %addr, "endpoint out of rotation");
            }
        }
        // The balancer is gone only when the channel is: nothing is left to tell.
        let _ = self.changes.send(Ok(change));
    }

    /// Whether a call can be sent: waits for the first refresh only while it is pending.
    async fn resolved(&self) -> Resolution {
        let current = *self.resolution.borrow();
        if current != Resolution::Pending {
            return current;
        }
        let mut resolution = self.resolution.subscribe();
        match resolution.wait_for(|r| *r != Resolution::Pending).await {
            Ok(resolved) => *resolved,
            // The sender, and with it the channel, is gone.
            Err(_) => Resolution::NoAddress,
        }
    }
}

/// TCP as tonic makes it (no Nagle), plus [`TCP_USER_TIMEOUT`]; tonic layers TLS and the
/// connect timeout over it.
fn tcp_connector() -> hyper_util::client::legacy::connect::HttpConnector {
    let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT));
    tcp
}

async fn is_serving(channel: &Channel) -> bool {
    let mut client = HealthClient::new(channel.clone());
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    matches!(
        tokio::time::timeout(PROBE_TIMEOUT, check).await,
        Ok(Ok(response)) if response.get_ref().status() == ServingStatus::Serving
    )
}

/// Refreshes every `refresh_interval`, and soon after a member fails, until the channel
/// is dropped (the balancer, which receives the changes, is gone).
async fn refresh_forever(discovery: Weak<Discovery>) {
    loop {
        let Some(strong) = discovery.upgrade() else {
            return;
        };
        strong.refresh().await;
        let interval = strong.resolver.refresh_interval;
        let wake = strong.wake.clone();
        let changes = strong.changes.clone();
        drop(strong);
        tokio::time::sleep(MIN_REFRESH_GAP).await;
        tokio::select! {
            _ = tokio::time::sleep(interval.saturating_sub(MIN_REFRESH_GAP)) => {}
            _ = wake.notified() => {}
            _ = changes.closed() => return,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("endpoint {0} failed; out of rotation until it answers its health check")]
struct MemberFailed(SocketAddr);

/// Calls to one member that in a row ended without its answer — cancelled because a
/// hedged copy answered first, or run out of their own deadline — after which it leaves
/// the rotation until its health check passes (Envoy's consecutive gateway failures,
/// which count timeouts). A stopped or blackholed instance answers nothing; a healthy
/// one answers nearly every call itself, in time (only the slowest few are hedged or
/// late), so three in a row without an answer between them is a sign, not chance. One
/// late call alone says nothing of the instance: its caller may have had little time.
const RACES_LOST_TO_LEAVE: u32 = 3;

/// How close to its deadline a call dropped unanswered counts as having run out of it.
const DEADLINE_SLACK: Duration = Duration::from_millis(5);

/// Set on every copy of a hedged call once one of them has answered: a copy dropped
/// then lost the race.
#[derive(Clone, Debug, Default)]
struct RaceLost(Arc<AtomicBool>);

/// One address in the balancer. After a transport failure, or [`RACES_LOST_TO_LEAVE`]
/// calls in a row without its answer, it refuses to be ready, which makes the balancer drop it;
/// discovery puts a new member in once it is healthy again.
struct Member {
    addr: SocketAddr,
    channel: Channel,
    failed: Arc<AtomicBool>,
    races_lost: Arc<AtomicU32>,
    discovery: Weak<Discovery>,
}

/// Takes the member at `addr` out of the rotation (once) and has discovery probe it —
/// unless it is the last healthy member. As with a health check that no instance passes
/// (every resolved address stays in), a failure must never leave the service with no
/// instance at all: an overloaded or briefly broken connection to the only instance there
/// is would otherwise park every call in the buffer until its deadline (outlier
/// ejection's "max ejection percent" of Envoy and gRPC). A last instance that is really
/// gone fails its calls at once instead, which a caller can act on.
fn leave_rotation(
    discovery: &Weak<Discovery>,
    failed: &AtomicBool,
    addr: SocketAddr,
    why: &dyn fmt::Display,
) {
    let Some(discovery) = discovery.upgrade() else {
        return;
    };
    if failed.load(Ordering::Acquire) {
        return;
    }
    let others_remain = discovery
        .healthy
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n > 1).then(|| n - 1)
        })
        .is_ok();
    if !others_remain {
        tracing::debug!(target = %discovery.target, %addr, %why, "the last endpoint in rotation stays in");
        return;
    }
    // Counted before the member is marked, so that a refresh that sees it marked also
    // sees it counted.
    discovery.failures.fetch_add(1, Ordering::AcqRel);
    if failed.swap(true, Ordering::AcqRel) {
        // Another call marked it first and took its own count off.
        discovery.healthy.fetch_add(1, Ordering::AcqRel);
        return;
    }
    tracing::warn!(target = %discovery.target, %addr, %why, "endpoint out of rotation until healthy");
    metrics::counter!("cascade_client_endpoint_failures_total", "target" => discovery.target.to_string())
        .increment(1);
    discovery.wake.notify_one();
}

/// Counts, on drop, a call that ended without an answer because a copy elsewhere won or
/// because its deadline passed (the caller's own timer, or the channel's, dropped it).
struct RaceWatch {
    race: Option<RaceLost>,
    /// When the call's `grpc-timeout` runs out.
    deadline: Option<Instant>,
    answered: bool,
    addr: SocketAddr,
    races_lost: Arc<AtomicU32>,
    failed: Arc<AtomicBool>,
    discovery: Weak<Discovery>,
}

impl Drop for RaceWatch {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let lost = self
            .race
            .as_ref()
            .is_some_and(|race| race.0.load(Ordering::Acquire));
        // A few milliseconds of slack: the timer that dropped the call may run a little
        // ahead of the deadline read here.
        let late = self
            .deadline
            .is_some_and(|deadline| Instant::now() + DEADLINE_SLACK >= deadline);
        let what = match (lost, late) {
            (true, _) => "hedged calls lost",
            (false, true) => "calls past their deadline",
            (false, false) => return,
        };
        unanswered(
            &self.races_lost,
            &self.discovery,
            &self.failed,
            self.addr,
            what,
        );
    }
}

/// Counts one more call in a row that `addr` did not answer (`what` they were), and takes
/// it out of the rotation at [`RACES_LOST_TO_LEAVE`].
fn unanswered(
    in_a_row: &AtomicU32,
    discovery: &Weak<Discovery>,
    failed: &AtomicBool,
    addr: SocketAddr,
    what: &str,
) {
    let count = in_a_row.fetch_add(1, Ordering::AcqRel) + 1;
    if count >= RACES_LOST_TO_LEAVE {
        let why = format!("{count} calls in a row without its answer ({what})");
        leave_rotation(discovery, failed, addr, &why);
    }
}

impl Service<http::Request<Body>> for Member {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.failed.load(Ordering::Relaxed) {
            return Poll::Ready(Err(MemberFailed(self.addr).into()));
        }
        self.channel.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let deadline = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(crate::deadline::parse_grpc_timeout)
            .map(|timeout| Instant::now() + timeout);
        let mut watch = RaceWatch {
            race: request.extensions().get::<RaceLost>().cloned(),
            deadline,
            answered: false,
            addr: self.addr,
            races_lost: self.races_lost.clone(),
            failed: self.failed.clone(),
            discovery: self.discovery.clone(),
        };
        let response = self.channel.call(request);
        Box::pin(async move {
            let answer = response.await;
            watch.answered = true;
            match answer {
                Ok(response) => {
                    watch.races_lost.store(0, Ordering::Release);
                    Ok(response)
                }
                Err(error) => {
                    let error: BoxError = error.into();
                    match timed_out(&*error) {
                        true => unanswered(
                            &watch.races_lost,
                            &watch.discovery,
                            &watch.failed,
                            watch.addr,
                            "calls past their deadline",
                        ),
                        false => {
                            leave_rotation(&watch.discovery, &watch.failed, watch.addr, &error)
                        }
                    }
                    Err(error)
                }
            }
        })
    }
}

/// Retries, once, a call whose connection could not be made: the request never left, so
/// sending it again cannot do anything twice.
#[derive(Clone)]
struct RetryNeverSent {
    retries_left: u8,
}

impl Policy<http::Request<Bytes>, http::Response<Body>, BoxError> for RetryNeverSent {
    type Future = std::future::Ready<()>;

    fn retry(
        &mut self,
        _: &mut http::Request<Bytes>,
        result: &mut Result<http::Response<Body>, BoxError>,
    ) -> Option<Self::Future> {
        match result {
            Err(error) if self.retries_left > 0 && never_sent(&**error) => {
                self.retries_left -= 1;
                Some(std::future::ready(()))
            }
            _ => None,
        }
    }

    fn clone_request(&mut self, request: &http::Request<Bytes>) -> Option<http::Request<Bytes>> {
        Some(copy_request(request))
    }
}

fn copy_request(request: &http::Request<Bytes>) -> http::Request<Bytes> {
    let mut copy = http::Request::new(request.body().clone());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    copy
}

/// Whether the request failed before it could be sent: the connection was never made.
fn never_sent(error: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<tonic::ConnectError>(error)
}

type Calls = Retry<
    RetryNeverSent,
    Buffer<http::Request<Bytes>, BoxFuture<'static, Result<http::Response<Body>, BoxError>>>,
>;

/// Boxed outside the caller's `async` block, whose `Send` check cannot see through the
/// retry future's bounds.
fn send(
    calls: Calls,
    request: http::Request<Bytes>,
) -> BoxFuture<'static, Result<http::Response<Body>, BoxError>> {
    Box::pin(calls.oneshot(request))
}

/// Most copies of one hedged call, the first included. The balancer picks the less
/// loaded of two instances for each copy, and a stopped instance holding the first copy
/// can still tie; a third copy makes losing the call to it unlikely.
const MAX_COPIES: usize = 3;

/// Sends `request`; every time `hedging`'s delay passes without an answer, or at once
/// when a copy fails, sends another copy (the balancer takes the less loaded instance,
/// and the copies still waiting count against the ones they went to), up to
/// [`MAX_COPIES`]. The first answer wins; the other copies are cancelled.
async fn send_hedged(
    calls: Calls,
    mut request: http::Request<Bytes>,
    hedging: &Hedging,
    target: &Target,
    timeout: Option<Duration>,
) -> Result<http::Response<Body>, BoxError> {
    use futures::StreamExt as _;
    let sent = Instant::now();
    let Some(delay) = hedging.call_started(sent) else {
        return answered(hedging, sent, send(calls, request).await);
    };
    // However slow the service has been, a call keeps time for its copies.
    let delay = timeout.map_or(delay, |timeout| {
        delay.min(timeout / (MAX_COPIES as u32 + 1))
    });
    let race = RaceLost::default();
    request.extensions_mut().insert(race.clone());
    let timed = |copy: http::Request<Bytes>| {
        let started = Instant::now();
        let call = send(calls.clone(), copy);
        async move { (started, call.await) }
    };
    let mut copies = futures::stream::FuturesUnordered::new();
    copies.push(timed(copy_request(&request)));
    let mut made = 1;
    loop {
        let hedge_at = tokio::time::sleep(delay);
        tokio::select! {
            Some((started, answer)) = copies.next() => match answer {
                Ok(response) => {
                    // The copies still out are dropped on return: they lost.
                    race.0.store(true, Ordering::Release);
                    return answered(hedging, started, Ok(response));
                }
                Err(error) if copies.is_empty() && made == MAX_COPIES => return Err(error),
                // The connection broke under the copy (an instance killed): another
                // goes now, to an instance still in rotation.
                Err(error) => {
                    tracing::debug!(target = %target, %error, "a copy of a call failed");
                    if made < MAX_COPIES {
                        copies.push(timed(copy_request(&request)));
                        made += 1;
                    }
                }
            },
            () = hedge_at, if made < MAX_COPIES => {
                if hedging.may_hedge(Instant::now()) {
                    metrics::counter!("cascade_client_hedges_total", "target" => target.to_string())
                        .increment(1);
                    copies.push(timed(copy_request(&request)));
                    made += 1;
                }
            }
        }
    }
}

/// Records the latency of an answer (not of a failure) and passes it on.
fn answered(
    hedging: &Hedging,
    sent: Instant,
    answer: Result<http::Response<Body>, BoxError>,
) -> Result<http::Response<Body>, BoxError> {
    if answer.is_ok() {
        hedging.answered(Instant::now(), sent.elapsed());
    }
    answer
}

/// A gRPC channel over every instance of one service (see the module documentation).
/// Cheap to clone; discovery stops when the last clone is dropped.
#[derive(Clone)]
pub struct BalancedChannel {
    discovery: Arc<Discovery>,
    calls: Calls,
    /// Set for a service whose calls may be sent twice (see [`Resolver::hedged_channel`]).
    hedging: Option<Arc<Hedging>>,
}

impl fmt::Debug for BalancedChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalancedChannel")
            .field("target", &self.discovery.target)
            .finish_non_exhaustive()
    }
}

impl Service<http::Request<Body>> for BalancedChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness — room in the buffer, an address in the balancer — is awaited inside
        // the call, where the call's deadline bounds it; tonic's clients await
        // `poll_ready` before any deadline applies.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let timeout = request
            .headers()
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(crate::deadline::parse_grpc_timeout);
        let discovery = self.discovery.clone();
        let calls = self.calls.clone();
        let hedging = self.hedging.clone();
        let dispatch = async move {
            if discovery.resolved().await == Resolution::NoAddress {
                return Err(tonic::Status::unavailable(format!(
                    "no reachable address for {}",
                    discovery.target
                ))
                .into());
            }
            // A unary request body is one small message: kept, so that a request that
            // never left can be sent again.
            let (parts, body) = request.into_parts();
            let body = match body.collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(status) => return Err(BoxError::from(status)),
            };
            let request = http::Request::from_parts(parts, body);
            // A copy to the one instance there is would only double its work.
            let others = discovery.healthy.load(Ordering::Acquire) > 1;
            match hedging {
                Some(hedging) if others => {
                    send_hedged(calls, request, &hedging, &discovery.target, timeout).await
                }
                _ => send(calls, request).await,
            }
        };
        Box::pin(async move {
            let answer = match timeout {
                None => dispatch.await,
                Some(timeout) => tokio::time::timeout(timeout, dispatch)
                    .await
                    .unwrap_or_else(|_| {
                        Err(tonic::Status::deadline_exceeded("deadline exceeded").into())
                    }),
            };
            answer.map_err(transport_status)
        })
    }
}

/// The status of a call that failed under the channel. What the server answered comes
/// back as a response, never as an error here: an error is ours (a `Status` the channel
/// made, kept as it is) or the transport's — a connection refused, reset, or closed under
/// the call by an instance that went away. tonic reports those as `UNKNOWN`, or as
/// `CANCELLED` when hyper gives up the calls of a closed connection; gRPC's own clients
/// report them `UNAVAILABLE`, which is what they are: the call may work on another
/// instance, and the caller may retry (bid-intake tells its gateway the same).
///
/// One exception: tonic's client enforces the request's own `grpc-timeout` and reports
/// it expiring (`TimeoutExpired`) as `CANCELLED`. That is the deadline, not a lost
/// connection, so it is `DEADLINE_EXCEEDED`: the caller ran out of time and must not
/// read it as an instance to avoid or a call to retry.
fn transport_status(error: BoxError) -> BoxError {
    let error = match error.downcast::<tonic::Status>() {
        Ok(status) => return status,
        Err(error) => error,
    };
    if timed_out(&*error) {
        return Box::new(tonic::Status::deadline_exceeded("deadline exceeded"));
    }
    match tonic::Status::try_from_error(error) {
        Ok(status) if !matches!(status.code(), Code::Unknown | Code::Cancelled) => Box::new(status),
        Ok(status) => Box::new(tonic::Status::unavailable(format!(
            "the connection failed under the call: {}",
            status.message()
        ))),
        Err(error) => Box::new(tonic::Status::unavailable(format!(
            "the connection failed under the call: {}",
            crate::status::chain(&*error)
        ))),
    }
}

/// Whether the call's own `grpc-timeout` ended it.
fn timed_out(error: &(dyn std::error::Error + 'static)) -> bool {
    caused_by::<tonic::TimeoutExpired>(error)
}

/// Whether `error` or one of its sources is a `T`.
fn caused_by<T: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(error) = source {
        if error.is::<T>() {
            return true;
        }
        source = error.source();
    }
    false
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

    #[test]
    fn a_transport_failure_is_unavailable_and_our_own_statuses_stay() {
        let code = |error: BoxError| {
            transport_status(error)
                .downcast::<tonic::Status>()
                .expect("a status")
                .code()
        };
        let reset = || Box::new(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(code(reset()), Code::Unavailable);
        assert_eq!(
            code(MemberFailed("127.0.0.1:1".parse().unwrap()).into()),
            Code::Unavailable
        );
        let refused = tonic::ConnectError(reset());
        assert_eq!(code(Box::new(refused)), Code::Unavailable);
        let late: BoxError = tonic::Status::deadline_exceeded("deadline exceeded").into();
        assert_eq!(code(late), Code::DeadlineExceeded);
        let expired: BoxError = Box::new(tonic::TimeoutExpired(()));
        assert_eq!(code(expired), Code::DeadlineExceeded);
        #[derive(Debug, thiserror::Error)]
        #[error("the member's call failed")]
        struct Wrapped(#[source] tonic::TimeoutExpired);
        let expired_inside: BoxError = Box::new(Wrapped(tonic::TimeoutExpired(())));
        assert_eq!(code(expired_inside), Code::DeadlineExceeded);
        let exhausted: BoxError = tonic::Status::resource_exhausted("shed").into();
        assert_eq!(code(exhausted), Code::ResourceExhausted);
    }
}
