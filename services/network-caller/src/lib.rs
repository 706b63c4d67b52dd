//! network-caller: talks to the outside world. `RunWaterfall` walks each impression's
//! ranked candidates in order until one fills: an exchange bid fills by itself, a
//! mediated bid's network is asked for an ad under its own timeout, bounded by what is
//! left of the caller's deadline. Impressions are walked concurrently; every step is
//! recorded.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use cascade_core::Micros;
use cascade_core::ad_quality::{AdQuality, Creative};
use cascade_core::config::NetworkMode;
use cascade_core::config::{Network, NetworkProtocol};
use cascade_core::money::Rates;
use cascade_core::report::{CallAnswer, ReportCell, call_counts};
use cascade_core::settings::{InvalidSetting, Validate, at_least, require};
use cascade_core::snapshot::Snapshot;
use cascade_core::waterfall::{self, Answer, Node, SkipReason, Step, Verdict, Walk, WalkLimits};
pub use cascade_networks::guard::OutboundSettings;
use cascade_networks::health::{BreakerPolicy, NetworkHealth, Skip as HealthSkip};
use cascade_networks::outbound::{self, Rewrites};
use cascade_networks::{Ad, AdCall, AdOutcome, Adapters};
use cascade_proto::auction::v1::Candidate;
use cascade_proto::decision::v1::PrivacyVerdict;
use cascade_proto::decision::v1::{Attempt, AttemptOutcome, SourceKind};
use cascade_proto::networkcaller::v1::network_caller_server::{NetworkCaller, NetworkCallerServer};
use cascade_proto::networkcaller::v1::{
    BidAsk, BiddingImp, BiddingResult, CollectBidsRequest, CollectBidsResponse,
    RunWaterfallRequest, RunWaterfallResponse, WaterfallImp, WaterfallResult,
};
use cascade_proto::openrtb::v1::{BidRequest, SupplyChainNode};
use cascade_server::deadline::{CallTiming, Deadline};
use cascade_server::settings::GrpcSettings;
use cascade_server::wire::adjustment;
use cascade_server::{GrpcServer, ServeError};
use cascade_state::{
    ReportRecorder, SnapshotCell, StateError, StateSettings, Store, watch_snapshot,
};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

pub const MAX_IMPS: usize = 64;
/// Most candidates one impression's walk may hold.
pub const MAX_CHAIN_LENGTH: usize = 2_000;
/// Most bidding networks asked for one impression.
pub const MAX_ASKS_PER_IMP: usize = 50;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub grpc: GrpcSettings,
    pub state: StateSettings,
    /// Budget of a walk whose caller set no deadline.
    pub default_budget_ms: u64,
    /// Most networks one impression's waterfall calls; later mediated candidates are
    /// skipped (demand in hand below them can still fill).
    pub max_network_calls_per_waterfall: u32,
    /// Consecutive failures (timeouts, errors) that open a network's circuit breaker.
    pub breaker_failures_to_open: u32,
    /// How long an open breaker skips its network before one probe call.
    pub breaker_open_ms: u64,
    /// Time kept back from every network call to answer the caller once it returns.
    pub answer_reserve_ms: u64,
    /// A network call that could wait less than this is skipped (`deadline`).
    pub min_call_ms: u64,
    /// Where network calls and the markup fetched from `nurl` may go.
    pub outbound: OutboundSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            grpc: GrpcSettings::default(),
            state: StateSettings::default(),
            default_budget_ms: 1_000,
            max_network_calls_per_waterfall: 5,
            breaker_failures_to_open: 5,
            breaker_open_ms: 5_000,
            answer_reserve_ms: 5,
            min_call_ms: 5,
            outbound: OutboundSettings::default(),
        }
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), InvalidSetting> {
        self.grpc.validate_under("grpc")?;
        self.state.validate_under("state")?;
        self.outbound.validate_under("outbound")?;
        at_least("default_budget_ms", self.default_budget_ms, 1)?;
        at_least(
            "max_network_calls_per_waterfall",
            u64::from(self.max_network_calls_per_waterfall),
            1,
        )?;
        at_least(
            "breaker_failures_to_open",
            u64::from(self.breaker_failures_to_open),
            1,
        )?;
        at_least("breaker_open_ms", self.breaker_open_ms, 1)?;
        require(
            self.answer_reserve_ms + self.min_call_ms < self.default_budget_ms,
            "answer_reserve_ms",
            || {
                format!(
                    "answer_reserve_ms + min_call_ms must be under default_budget_ms ({}), or no call is ever made",
                    self.default_budget_ms
                )
            },
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the configuration: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Serve(#[from] ServeError),
    #[error(transparent)]
    Settings(InvalidSetting),
}

#[derive(Debug, thiserror::Error)]
enum WaterfallError {
    #[error("configuration snapshot not loaded yet")]
    NotReady,
    #[error("{field}: at most {max} entries, got {got}")]
    TooLong {
        field: String,
        max: usize,
        got: usize,
    },
    #[error("request: required")]
    MissingRequest,
    #[error("openrtb_json: not an OpenRTB request document ({0})")]
    Document(String),
}

impl From<WaterfallError> for Status {
    fn from(error: WaterfallError) -> Self {
        match error {
            WaterfallError::NotReady => Status::unavailable(error.to_string()),
            _ => cascade_server::status::invalid_argument(&error),
        }
    }
}

/// Loads the snapshot (network definitions), keeps it fresh, serves until `shutdown`.
pub async fn serve(
    settings: Settings,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let watch = watch_snapshot(store.clone(), settings.state.poll_interval()).await;
    let snapshot = watch.cell();
    let report = ReportRecorder::new(store, settings.state.report_flush_interval());
    let guard = settings.outbound.guard().map_err(Error::Settings)?;
    let service = NetworkCallerService {
        snapshot,
        report: report.clone(),
        adapters: Adapters::new(&guard),
        default_budget: Duration::from_millis(settings.default_budget_ms),
        limits: WalkLimits {
            max_calls: settings.max_network_calls_per_waterfall as usize,
            answer_reserve: Duration::from_millis(settings.answer_reserve_ms),
            min_call: Duration::from_millis(settings.min_call_ms),
        },
        breaker_policy: BreakerPolicy {
            failures_to_open: settings.breaker_failures_to_open,
            open_for: Duration::from_millis(settings.breaker_open_ms),
        },
        health: Mutex::default(),
    };
    let routes = tonic::service::Routes::new(NetworkCallerServer::new(service));
    GrpcServer::new(routes, &[NetworkCallerServer::<NetworkCallerService>::NAME])
        .reporting_staleness(watch.staleness())
        .ready_when(watch.readiness())
        .serve(listener, &settings.grpc, shutdown)
        .await?;
    report.flush().await;
    Ok(())
}

pub struct NetworkCallerService {
    snapshot: Arc<SnapshotCell>,
    /// Every attempt's outcome and latency, for the network performance report.
    report: Arc<ReportRecorder>,
    adapters: Adapters,
    default_budget: Duration,
    /// The call cap and the time rules of every walk.
    limits: WalkLimits,
    breaker_policy: BreakerPolicy,
    /// Per network id: its breaker, recent latencies and in-flight limit.
    health: Mutex<HashMap<String, Arc<NetworkHealth>>>,
}

#[tonic::async_trait]
impl NetworkCaller for NetworkCallerService {
    async fn collect_bids(
        &self,
        request: Request<CollectBidsRequest>,
    ) -> Result<Response<CollectBidsResponse>, Status> {
        let deadline = CallTiming::of(&request).deadline_or(self.default_budget);
        let request = request.into_inner();
        check_sizes(
            request.imps.iter().map(|imp| imp.asks.len()),
            "asks",
            MAX_ASKS_PER_IMP,
        )?;
        let bid_request = request.request.ok_or(WaterfallError::MissingRequest)?;
        let edge = Edge::new(
            &bid_request,
            &request.openrtb_json,
            request.schain_node,
            request.privacy,
        )?;
        let snapshot = self.snapshot.load().ok_or(WaterfallError::NotReady)?;
        let asks = request.imps.iter().map(|imp| {
            let snapshot = &snapshot;
            let edge = &edge;
            async move {
                let quality = imp.ad_quality.clone().unwrap_or_default();
                let quality = cascade_server::wire::ad_quality(&quality);
                let asks = imp
                    .asks
                    .iter()
                    .map(|ask| self.ask_for_bid(snapshot, edge, imp, ask, &quality, deadline));
                let (bids, attempts): (Vec<_>, Vec<_>) =
                    futures::future::join_all(asks).await.into_iter().unzip();
                BiddingResult {
                    impid: imp.impid.clone(),
                    bids: bids.into_iter().flatten().collect(),
                    attempts,
                }
            }
        });
        let imps = futures::future::join_all(asks).await;
        Ok(Response::new(CollectBidsResponse { imps }))
    }

    async fn run_waterfall(
        &self,
        request: Request<RunWaterfallRequest>,
    ) -> Result<Response<RunWaterfallResponse>, Status> {
        let deadline = CallTiming::of(&request).deadline_or(self.default_budget);
        let request = request.into_inner();
        check_sizes(
            request.imps.iter().map(|imp| imp.ranked.len()),
            "ranked",
            MAX_CHAIN_LENGTH,
        )?;
        let bid_request = request.request.ok_or(WaterfallError::MissingRequest)?;
        let edge = Edge::new(
            &bid_request,
            &request.openrtb_json,
            request.schain_node,
            request.privacy,
        )?;
        let snapshot = self.snapshot.load().ok_or(WaterfallError::NotReady)?;
        let walks = request
            .imps
            .into_iter()
            .map(|imp| self.walk(&snapshot, &edge, imp, deadline));
        let imps = futures::future::join_all(walks).await;
        Ok(Response::new(RunWaterfallResponse { imps }))
    }
}

/// Checks the number of impressions and, for each, the length of its `list`.
fn check_sizes(
    per_imp: impl ExactSizeIterator<Item = usize>,
    list: &str,
    max_per_imp: usize,
) -> Result<(), WaterfallError> {
    if per_imp.len() > MAX_IMPS {
        return Err(WaterfallError::TooLong {
            field: "imps".into(),
            max: MAX_IMPS,
            got: per_imp.len(),
        });
    }
    for (i, len) in per_imp.enumerate() {
        if len > max_per_imp {
            return Err(WaterfallError::TooLong {
                field: format!("imps[{i}].{list}"),
                max: max_per_imp,
                got: len,
            });
        }
    }
    Ok(())
}

/// What every network call of one request starts from: the request document as the
/// gateway sent it, each network's privacy verdict (decided by bid-intake), and whose
/// request it is.
struct Edge {
    document: serde_json::Value,
    privacy: HashMap<String, PrivacyVerdict>,
    account_id: String,
    schain_node: Option<serde_json::Value>,
    /// A `test = 1` request: its calls count in no report.
    test: bool,
}

impl Edge {
    fn new(
        request: &BidRequest,
        openrtb_json: &[u8],
        schain_node: Option<SupplyChainNode>,
        privacy: HashMap<String, PrivacyVerdict>,
    ) -> Result<Edge, WaterfallError> {
        let document = if openrtb_json.is_empty() {
            serde_json::to_value(request).map_err(|e| WaterfallError::Document(e.to_string()))?
        } else {
            serde_json::from_slice(openrtb_json)
                .map_err(|e| WaterfallError::Document(e.to_string()))?
        };
        let publisher = request
            .site
            .as_ref()
            .and_then(|s| s.publisher.as_ref())
            .or_else(|| request.app.as_ref().and_then(|a| a.publisher.as_ref()));
        Ok(Edge {
            document,
            privacy,
            account_id: publisher.map(|p| p.id.clone()).unwrap_or_default(),
            schain_node: schain_node.map(|node| serde_json::to_value(node).unwrap_or_default()),
            test: request.test() == 1,
        })
    }
}

/// One network asked for one impression.
struct NetworkCall<'a> {
    network: &'a Network,
    /// The mediated bid the call is made for.
    bid_id: &'a str,
    placement_id: &'a str,
    /// The floor it is sent and held to, USD micros.
    floor: Micros,
    edge: &'a Edge,
    impid: &'a str,
    /// A bidding network's live bid, which may still lose the auction (its markup is
    /// not fetched from `nurl`).
    live_bid: bool,
}

/// What one attempt at a network came to.
enum Called {
    /// Its health guard refused the call: it was not made.
    NotMade,
    /// It was made and brought nothing that may serve.
    NoAd,
    Served(Box<Accepted>),
}

/// A network's answer that may serve, and the price it is booked at (USD micros,
/// before the network's bid adjustment) with the currency and rate it converted from.
struct Accepted {
    ad: Ad,
    price: Micros,
    /// The price as the network stated it, in its currency.
    stated: Micros,
    original_cur: String,
    rate_micros: i64,
}

impl Accepted {
    /// Puts the network's ad, and the currency and rate its price converted from, on
    /// `candidate`; returns the price (USD micros, before adjustment).
    fn fill(self, candidate: &mut Candidate) -> Micros {
        let Accepted {
            ad,
            price,
            stated,
            original_cur,
            rate_micros,
        } = self;
        candidate.adm = ad.adm;
        candidate.nurl = ad.nurl;
        candidate.burl = ad.burl;
        candidate.lurl = ad.lurl;
        candidate.nurl_fired = ad.nurl_fired;
        candidate.exp_seconds = ad.exp.unwrap_or_default();
        candidate.adid = ad.adid;
        candidate.response_bid_id = ad.bid_id;
        candidate.dsa = ad.dsa;
        candidate.adomain = ad.adomain;
        candidate.cat = ad.cat;
        candidate.attr = ad.attr;
        candidate.crid = ad.crid;
        if !ad.dealid.is_empty() {
            candidate.dealid = ad.dealid;
        }
        if !ad.seat.is_empty() {
            candidate.seat = ad.seat;
        }
        candidate.original_cur = original_cur;
        candidate.rate_micros = rate_micros;
        candidate.original_price_micros = Some(stated.0);
        price
    }
}

impl NetworkCallerService {
    /// The health record of `network`, created on first use with the network's
    /// in-flight limit (a limit changed later applies after a restart).
    fn health_of(&self, network: &Network) -> Arc<NetworkHealth> {
        let mut health = self.health.lock();
        // Looked up by reference: the id is copied only when the record is created.
        if let Some(existing) = health.get(&network.id) {
            return existing.clone();
        }
        let created = Arc::new(NetworkHealth::new(
            self.breaker_policy,
            network.max_concurrent_calls as usize,
        ));
        health.insert(network.id.clone(), created.clone());
        created
    }

    /// Calls a network through its health guard, waiting at most `timeout`, and
    /// judges its answer against the call's floor and the impression's filters.
    /// Records everything in `attempt` and the report.
    async fn call(
        &self,
        snapshot: &Snapshot,
        call: &NetworkCall<'_>,
        timeout: Duration,
        quality: &AdQuality<'_>,
        attempt: &mut Attempt,
    ) -> Called {
        let verdict = call.edge.privacy.get(&call.network.id);
        let permissions = cascade_server::wire::permissions_of(verdict);
        if !permissions.call {
            skip(
                attempt,
                "no_consent",
                &cascade_server::wire::describe_verdict(verdict),
            );
            metrics::counter!("cascade_network_calls_total", "network" => call.network.id.clone(), "outcome" => "no_consent")
                .increment(1);
            return Called::NotMade;
        }
        let health = self.health_of(call.network);
        let permit = match health.try_call(timeout + self.limits.answer_reserve) {
            Ok(permit) => permit,
            Err(skip) => {
                attempt.outcome = AttemptOutcome::Skipped as i32;
                attempt.reason = skip_code(&skip).to_string();
                attempt.detail = skip.to_string();
                record_call_metrics(&call.network.id, "skipped", None, &health);
                return Called::NotMade;
            }
        };
        attempt.floor_micros = call.floor.0;
        let currency = call.network.currency.as_deref().unwrap_or_default();
        let rates = snapshot.rates().at(cascade_state::now_unix_seconds());
        let floor = match rates.from_usd(call.floor, currency) {
            Ok(floor) => floor,
            Err(error) => {
                attempt.outcome = AttemptOutcome::Error as i32;
                attempt.detail = format!("cannot convert the floor: {error}");
                return Called::NoAd;
            }
        };
        let params = snapshot.mediated_bid(call.bid_id).map(|bid| &bid.params);
        let eid_allowed =
            |source: &str| snapshot.eid_allowed(&call.edge.account_id, source, &call.network.id);
        let (document, withheld) = outbound::network_request(
            &call.edge.document,
            &Rewrites {
                impid: call.impid,
                placement_id: call.placement_id,
                floor: floor.0 as f64 / cascade_core::money::MICROS_PER_UNIT as f64,
                currency: if currency.is_empty() {
                    cascade_core::money::AUCTION_CURRENCY
                } else {
                    currency
                },
                tmax_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                quality,
                params,
                params_at: &call.network.params_at,
                schain_node: call.edge.schain_node.as_ref(),
                permissions: &permissions,
                keep_deals: call.live_bid,
                eid_allowed: &eid_allowed,
            },
        );
        let ad_call = AdCall {
            endpoint: &call.network.endpoint,
            placement_id: call.placement_id,
            floor,
            currency,
            request: &document,
            impid: call.impid,
            timeout,
            markup_from_nurl: !call.live_bid,
        };
        let span = attempt_span(call, timeout);
        let started = Instant::now();
        let outcome = self
            .adapters
            .request_ad(call.network.protocol, &ad_call)
            .instrument(span.clone())
            .await;
        let latency = started.elapsed();
        if !span.is_disabled() {
            span.record("cascade.outcome", outcome.name());
            span.record(
                "cascade.latency_us",
                i64::try_from(latency.as_micros()).unwrap_or(i64::MAX),
            );
            // A network that failed (an error, a timeout) is an error of the call; no ad,
            // or an ad the filters refuse, is an answer.
            if matches!(outcome, AdOutcome::Error(_) | AdOutcome::Timeout) {
                span.record("otel.status_code", "error");
                span.record("otel.status_description", outcome.name());
            }
        }
        record_call_metrics(&call.network.id, outcome.name(), Some(latency), &health);
        // A refused or cheap answer is still an answer: it never counts toward the breaker.
        permit.finish(
            matches!(
                outcome,
                AdOutcome::Filled(_) | AdOutcome::NoFill | AdOutcome::Declined(_)
            ),
            latency,
        );
        attempt.latency_us = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        tracing::debug!(network = %call.network.id, ?outcome, latency_us = attempt.latency_us, "network attempt");
        let answered = match outcome {
            AdOutcome::Filled(ad) => {
                let judged = judge(&rates, *ad, call.floor, quality, attempt);
                // What the network asked, whether or not the floor and filters took it:
                // over its filled calls, the network's eCPM.
                metrics::counter!("cascade_network_filled_price_micros_total", "network" => call.network.id.clone())
                    .increment(u64::try_from(attempt.price_micros).unwrap_or(0));
                Some(judged)
            }
            AdOutcome::NoFill => {
                attempt.outcome = AttemptOutcome::NoFill as i32;
                None
            }
            AdOutcome::Declined(nbr) => {
                attempt.outcome = AttemptOutcome::NoFill as i32;
                attempt.reason = format!("nbr_{nbr}");
                attempt.nbr = nbr;
                attempt.detail = format!("the network declined with no-bid reason {nbr}");
                None
            }
            AdOutcome::Timeout => {
                attempt.outcome = AttemptOutcome::Timeout as i32;
                attempt.reason = "timeout".to_string();
                attempt.detail = format!("no answer within {} ms", timeout.as_millis());
                None
            }
            AdOutcome::Error(detail) => {
                attempt.outcome = AttemptOutcome::Error as i32;
                attempt.detail = detail;
                None
            }
        };
        let accepted = answered.flatten();
        if !withheld.is_empty() {
            attempt.withheld = withheld.iter().map(|w| w.to_string()).collect();
            let note = format!(
                "withheld {} ({})",
                withheld.join(", "),
                cascade_server::wire::describe_verdict(verdict)
            );
            attempt.detail = if attempt.detail.is_empty() {
                note
            } else {
                format!("{}; {note}", attempt.detail)
            };
        }
        attempt.called = true;
        if !call.edge.test {
            self.report
                .count(report_cells(call, attempt, accepted.is_some(), latency));
        }
        accepted.map_or(Called::NoAd, |accepted| Called::Served(Box::new(accepted)))
    }

    /// Asks one bidding network for a live bid: a candidate when it bids at or above
    /// its floor with an ad the filters accept.
    async fn ask_for_bid(
        &self,
        snapshot: &Snapshot,
        edge: &Edge,
        imp: &BiddingImp,
        ask: &BidAsk,
        quality: &AdQuality<'_>,
        deadline: Deadline,
    ) -> (Option<Candidate>, Attempt) {
        let candidate_id = format!("bidding:{}", ask.bid_id);
        let mut attempt = Attempt {
            candidate_id: candidate_id.clone(),
            source: SourceKind::BiddingNetwork as i32,
            network_id: ask.network_id.clone(),
            bid_id: ask.bid_id.clone(),
            ..Default::default()
        };
        let Some(network) = snapshot.network(&ask.network_id) else {
            skip(&mut attempt, "unknown_network", "network is not configured");
            return (None, attempt);
        };
        // One node, so the walk's rules (reserve, minimum call time) decide the timeout.
        let node = [Node::Network {
            timeout: Duration::from_millis(u64::from(network.timeout_ms)),
        }];
        let timeout = match Walk::new(self.limits).step(&node, deadline.remaining()) {
            Step::Call { timeout, .. } => timeout,
            Step::Skip { reason, .. } => {
                skip(&mut attempt, reason.code(), &reason.to_string());
                return (None, attempt);
            }
            Step::Serve(_) | Step::Exhausted => return (None, attempt),
        };
        let call = NetworkCall {
            network,
            bid_id: &ask.bid_id,
            placement_id: &ask.placement_id,
            floor: Micros(ask.floor_micros),
            edge,
            impid: &imp.impid,
            live_bid: true,
        };
        let Called::Served(accepted) = self
            .call(snapshot, &call, timeout, quality, &mut attempt)
            .await
        else {
            return (None, attempt);
        };
        let mut candidate = Candidate {
            id: candidate_id,
            source: SourceKind::BiddingNetwork as i32,
            minimum_micros: ask.floor_micros,
            network_id: ask.network_id.clone(),
            placement_id: ask.placement_id.clone(),
            bid_id: ask.bid_id.clone(),
            bid_adjustment_ppm: ask.bid_adjustment_ppm,
            ..Default::default()
        };
        // A live bid ranks at the network's own price.
        candidate.bid_micros = accepted.fill(&mut candidate).0;
        (Some(candidate), attempt)
    }

    /// Walks one impression's networks in rank order, as the core's walk says, until
    /// one fills; demand in hand in the list serves without a call.
    async fn walk(
        &self,
        snapshot: &Snapshot,
        edge: &Edge,
        imp: WaterfallImp,
        deadline: Deadline,
    ) -> WaterfallResult {
        let mut result = WaterfallResult {
            impid: imp.impid,
            ..Default::default()
        };
        let quality = imp.ad_quality.unwrap_or_default();
        let quality = cascade_server::wire::ad_quality(&quality);
        let mut ranked = imp.ranked;
        let nodes: Vec<Node> = ranked
            .iter()
            .map(|ranked| match &ranked.candidate {
                Some(c) if c.source() != SourceKind::MediatedNetwork => Node::InHand,
                Some(c) => snapshot
                    .network(&c.network_id)
                    .map_or(Node::Unreachable, |network| Node::Network {
                        timeout: Duration::from_millis(u64::from(network.timeout_ms)),
                    }),
                None => Node::Unreachable,
            })
            .collect();
        let mut walk = Walk::new(self.limits);
        loop {
            let step = walk.step(&nodes, deadline.remaining());
            let index = match step {
                Step::Exhausted => break,
                Step::Serve(index) | Step::Call { index, .. } | Step::Skip { index, .. } => index,
            };
            let Some(candidate) = ranked[index].candidate.as_ref() else {
                continue;
            };
            let mut attempt = Attempt {
                candidate_id: candidate.id.clone(),
                source: candidate.source,
                network_id: candidate.network_id.clone(),
                bid_id: candidate.bid_id.clone(),
                ..Default::default()
            };
            match step {
                Step::Serve(_) => {
                    attempt.outcome = AttemptOutcome::Filled as i32;
                    attempt.detail = "bid in hand, no call needed".to_string();
                    result.attempts.push(attempt);
                    result.winner = Some(std::mem::take(&mut ranked[index]));
                    break;
                }
                Step::Skip { reason, .. } => {
                    let detail = match &reason {
                        SkipReason::Unreachable => "network is not configured".to_string(),
                        other => other.to_string(),
                    };
                    skip(&mut attempt, reason.code(), &detail);
                    result.attempts.push(attempt);
                }
                Step::Call { timeout, .. } => {
                    let Some(network) = snapshot.network(&candidate.network_id) else {
                        continue;
                    };
                    let call = NetworkCall {
                        network,
                        bid_id: &candidate.bid_id,
                        placement_id: &candidate.placement_id,
                        floor: Micros(ranked[index].floor_micros.max(candidate.bid_micros)),
                        edge,
                        impid: &result.impid,
                        live_bid: false,
                    };
                    let called = self
                        .call(snapshot, &call, timeout, &quality, &mut attempt)
                        .await;
                    result.attempts.push(attempt);
                    if matches!(called, Called::NotMade) {
                        continue;
                    }
                    walk.called();
                    if let Called::Served(accepted) = called {
                        walk.filled();
                        let mut winner = std::mem::take(&mut ranked[index]);
                        if let Some(candidate) = winner.candidate.as_mut() {
                            let price = accepted.fill(candidate);
                            // Booked at the network's own price, adjusted like its CPM.
                            winner.clearing_price_micros =
                                adjustment(candidate.bid_adjustment_ppm).apply(price).0;
                        }
                        result.winner = Some(winner);
                        break;
                    }
                }
                Step::Exhausted => break,
            }
        }
        result.deadline_exceeded = walk.ran_out_of_time();
        result
    }
}

/// Whether a network's ad may serve: its price converted to USD, then the one rule
/// of the core for every network answer.
fn judge(
    rates: &Rates<'_>,
    ad: Ad,
    floor: Micros,
    quality: &AdQuality<'_>,
    attempt: &mut Attempt,
) -> Option<Accepted> {
    let price = match ad.price.map(|p| rates.to_usd(p, &ad.cur)).transpose() {
        Ok(price) => price,
        Err(error) => {
            attempt.outcome = AttemptOutcome::Error as i32;
            attempt.detail = format!("cannot convert the answer's price: {error}");
            return None;
        }
    };
    attempt.price_micros = price.map_or(0, |p| p.0);
    let answer = Answer {
        price,
        creative: Creative {
            adomains: &ad.adomain,
            categories: &ad.cat,
            seat: &ad.seat,
            attributes: &ad.attr,
            dsa_declared: ad.dsa,
        },
    };
    let verdict = waterfall::judge(&answer, floor, quality);
    match verdict {
        Verdict::Accept { price } => {
            attempt.outcome = AttemptOutcome::Filled as i32;
            attempt.detail = verdict.to_string();
            let usd = ad.cur.is_empty()
                || ad
                    .cur
                    .eq_ignore_ascii_case(cascade_core::money::AUCTION_CURRENCY);
            let (original_cur, rate_micros) = if usd {
                (String::new(), 0)
            } else {
                (
                    ad.cur.to_ascii_uppercase(),
                    rates.rate(&ad.cur).unwrap_or_default(),
                )
            };
            Some(Accepted {
                stated: ad.price.unwrap_or(price),
                ad,
                price,
                original_cur,
                rate_micros,
            })
        }
        Verdict::BelowFloor { .. } | Verdict::Refused(_) => {
            attempt.outcome = AttemptOutcome::NoFill as i32;
            attempt.reason = verdict.code().to_string();
            attempt.detail = verdict.to_string();
            None
        }
    }
}

fn skip(attempt: &mut Attempt, reason: &str, detail: &str) {
    attempt.outcome = AttemptOutcome::Skipped as i32;
    attempt.reason = reason.to_string();
    attempt.detail = detail.to_string();
}

fn skip_code(skip: &HealthSkip) -> &'static str {
    match skip {
        HealthSkip::BreakerOpen => "breaker_open",
        HealthSkip::AtConcurrencyLimit(_) => "concurrency_limit",
        HealthSkip::TooSlow { .. } => "too_slow",
    }
}

/// The span of one network attempt; disabled when traces are not exported. An OpenRTB
/// attempt is one HTTP POST: the span is its client span. A custom gRPC network's call
/// gets a client span of its own under the attempt.
fn attempt_span(call: &NetworkCall<'_>, timeout: Duration) -> tracing::Span {
    if !cascade_server::telemetry::exporting() {
        return tracing::Span::none();
    }
    let (kind, protocol) = match call.network.protocol {
        NetworkProtocol::OpenrtbHttp => ("client", "openrtb_http"),
        NetworkProtocol::Grpc => ("internal", "grpc"),
    };
    let endpoint = call.network.endpoint.parse::<http::Uri>().ok();
    let authority = endpoint.as_ref().and_then(http::Uri::authority);
    tracing::info_span!(
        "network.attempt",
        otel.kind = kind,
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        server.address = authority.map(|a| a.host()),
        server.port = authority.and_then(|a| a.port_u16()).map(i64::from),
        cascade.network.id = call.network.id.as_str(),
        cascade.network.protocol = protocol,
        cascade.placement.id = call.placement_id,
        cascade.imp.id = call.impid,
        cascade.timeout_ms = i64::try_from(timeout.as_millis()).unwrap_or(i64::MAX),
        cascade.outcome = tracing::field::Empty,
        cascade.latency_us = tracing::field::Empty,
    )
}

/// Counts a network call by outcome, its latency, and the network's breaker state
/// (0 closed, 1 half-open, 2 open).
fn record_call_metrics(
    network_id: &str,
    outcome: &'static str,
    latency: Option<Duration>,
    health: &NetworkHealth,
) {
    let network = network_id.to_string();
    metrics::counter!("cascade_network_calls_total", "network" => network.clone(), "outcome" => outcome)
        .increment(1);
    if let Some(latency) = latency {
        metrics::histogram!("cascade_network_call_duration_seconds", "network" => network.clone())
            .record(latency.as_secs_f64());
    }
    let breaker = match health.breaker_state() {
        cascade_networks::health::BreakerState::Closed { .. } => 0.0,
        cascade_networks::health::BreakerState::HalfOpen => 1.0,
        cascade_networks::health::BreakerState::Open { .. } => 2.0,
    };
    metrics::gauge!("cascade_network_breaker_state", "network" => network).set(breaker);
}

/// What one call adds to the network performance report: a request, its outcome (an
/// answer the filters refused counts as blocked, not as a no fill), its latency bucket.
fn report_cells(
    call: &NetworkCall<'_>,
    attempt: &Attempt,
    accepted: bool,
    latency: Duration,
) -> [(ReportCell, u64); 3] {
    let answer = match attempt.outcome() {
        _ if accepted => CallAnswer::Accepted,
        AttemptOutcome::NoFill if attempt.reason == "blocked_ad" => CallAnswer::Blocked,
        AttemptOutcome::Timeout => CallAnswer::Timeout,
        AttemptOutcome::Error => CallAnswer::Error,
        _ => CallAnswer::NoAd,
    };
    call_counts(
        cascade_state::now_unix_seconds(),
        &call.network.id,
        call.bid_id,
        answer,
        call.network.mode == NetworkMode::Bidding,
        u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
    )
}
