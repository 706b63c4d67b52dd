//! bid-intake: the front door. Validates and normalises each decision request, owns its
//! deadline budget, asks targeting-evaluation, auction and network-caller in turn, stores
//! the selections and answers the gateway. It also serves the admin API.

mod decide;
mod error;
mod events;
mod normalize;
mod notices;
mod outcomes;
pub mod plan;
mod record;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cascade_admin::{AdminService, ReportService};
use cascade_core::settings::{InvalidSetting, Validate, at_least, require};
use cascade_log::DecisionLog;
pub use cascade_log::{LogSettings, SinkKind};
use cascade_networks::notices::Notifier;
use cascade_proto::admin::v1::admin_server::AdminServer;
use cascade_proto::admin::v1::reports_server::ReportsServer;
use cascade_proto::decision::v1::bid_intake_server::BidIntakeServer;
use cascade_server::admission::Admission;
use cascade_server::channel::{Resolver, ResolverError, ResolverSettings, Target};
use cascade_server::settings::GrpcSettings;
use cascade_server::telemetry::traced;
use cascade_server::{GrpcServer, ServeError};
use cascade_state::{
    ReportRecorder, SelectionWriter, StateError, StateSettings, Store, watch_snapshot,
};
pub use notices::{ExchangeNotices, NoticeSettings};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::server::NamedService;

use cascade_networks::guard::OutboundSettings;
pub use decide::DecisionService;
pub use error::DecideError;
pub use normalize::{Normalized, normalize, openrtb_document};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub grpc: GrpcSettings,
    pub state: StateSettings,
    /// Where the other services are (`host:port`). A name is resolved to every address it
    /// has and calls are balanced over them (in Kubernetes: the headless Services).
    pub targeting_evaluation_addr: Target,
    pub auction_addr: Target,
    pub network_caller_addr: Target,
    /// How those names are resolved and their endpoints watched.
    pub resolver: ResolverSettings,
    /// Budget of a decision whose caller set neither a gRPC deadline nor `tmax`.
    pub default_budget_ms: u64,
    /// Upper bound on any decision's budget, whatever the caller asks for.
    pub max_budget_ms: u64,
    /// Longest the bidding phase (live bids from bidding networks) may take; each
    /// network's own timeout applies within it.
    pub bidding_budget_ms: u64,
    /// Kept back from the budget to build and send the response.
    pub response_reserve_ms: u64,
    /// Kept back from network-caller's share of the budget, so that when it cannot
    /// answer in time the best demand already in hand still serves.
    pub fallback_reserve_ms: u64,
    /// How long a selection is kept for event reports and chaining; longer when the
    /// ad's `exp` (bid or impression) says it may render later, up to
    /// `max_selection_ttl_secs`.
    pub selection_ttl_secs: u64,
    pub max_selection_ttl_secs: u64,
    /// Win, loss and billing notices.
    pub notices: NoticeSettings,
    /// The bearer token the admin API requires (`CASCADE__ADMIN_TOKEN`). Unset: the
    /// admin API refuses every call.
    pub admin_token: Option<String>,
    /// Selections kept in memory while the state store is down, flushed when it is
    /// back; beyond this many, decisions fail UNAVAILABLE rather than lose them.
    pub selection_backlog_capacity: usize,
    /// Longest a decision waits for its selections to be stored; a store slower than
    /// that (hung, or far away) gets them from the backlog instead, and the decision
    /// answers without waiting for it. 0 writes behind: no decision waits for the store
    /// (one far away costs nothing), and the selections of the last moments before a
    /// kill -9 are lost with the process.
    pub selection_write_wait_ms: u64,
    /// The decision log: one entry per decision and event.
    pub log: LogSettings,
    /// Where notices (win, loss, billing) may go.
    pub outbound: OutboundSettings,
}

impl Default for Settings {
    fn default() -> Self {
        let local = |port| Target::from(SocketAddr::from(([127, 0, 0, 1], port)));
        Self {
            grpc: GrpcSettings::default(),
            state: StateSettings::default(),
            targeting_evaluation_addr: local(50052),
            auction_addr: local(50053),
            network_caller_addr: local(50054),
            resolver: ResolverSettings::default(),
            default_budget_ms: 300,
            max_budget_ms: 5_000,
            bidding_budget_ms: 150,
            response_reserve_ms: 2,
            fallback_reserve_ms: 5,
            selection_ttl_secs: 3_600,
            max_selection_ttl_secs: 24 * 3_600,
            notices: NoticeSettings::default(),
            admin_token: None,
            selection_backlog_capacity: 100_000,
            selection_write_wait_ms: 50,
            log: LogSettings::default(),
            outbound: OutboundSettings::default(),
        }
    }
}

impl Validate for Settings {
    fn validate(&self) -> Result<(), InvalidSetting> {
        self.grpc.validate_under("grpc")?;
        self.state.validate_under("state")?;
        self.resolver.validate_under("resolver")?;
        self.notices.validate_under("notices")?;
        self.log.validate_under("log")?;
        self.outbound.validate_under("outbound")?;
        at_least("default_budget_ms", self.default_budget_ms, 1)?;
        let within_max = |key: &str, value: u64| {
            require(value <= self.max_budget_ms, key, || {
                format!(
                    "must not exceed max_budget_ms ({}), got {value}",
                    self.max_budget_ms
                )
            })
        };
        within_max("default_budget_ms", self.default_budget_ms)?;
        within_max("bidding_budget_ms", self.bidding_budget_ms)?;
        require(
            self.response_reserve_ms + self.fallback_reserve_ms < self.default_budget_ms,
            "response_reserve_ms",
            || {
                format!(
                    "response_reserve_ms + fallback_reserve_ms must be under default_budget_ms ({})",
                    self.default_budget_ms
                )
            },
        )?;
        at_least("selection_ttl_secs", self.selection_ttl_secs, 1)?;
        require(
            self.max_selection_ttl_secs >= self.selection_ttl_secs,
            "max_selection_ttl_secs",
            || {
                format!(
                    "must be at least selection_ttl_secs ({})",
                    self.selection_ttl_secs
                )
            },
        )?;
        at_least(
            "selection_backlog_capacity",
            self.selection_backlog_capacity as u64,
            1,
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
    Resolver(#[from] ResolverError),
    #[error("cannot open the decision log: {0}")]
    Log(#[from] cascade_log::LogError),
    #[error(transparent)]
    Settings(cascade_core::settings::InvalidSetting),
}

/// The longest wait between two failed flushes of the selection backlog.
const SELECTION_RETRY_CAP: Duration = Duration::from_secs(1);

/// How long a stopping bid-intake waits for the selections it sold to be stored.
const BACKLOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a stopping bid-intake waits for the decision log to write what it queued.
const LOG_CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Loads the snapshot, connects to the other services (lazily: they may start after
/// bid-intake; balanced over every address their names resolve to), and serves until
/// `shutdown` resolves.
pub async fn serve(
    settings: Settings,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let log = DecisionLog::open(&settings.log).await?;
    let watch = watch_snapshot(store.clone(), settings.state.poll_interval()).await;
    let snapshot = watch.cell();
    let report = ReportRecorder::new(store.clone(), settings.state.report_flush_interval());
    let resolver = Resolver::new(&settings.resolver)?;
    // Notices go out with the networks' HTTP client: the same TLS roots and User-Agent.
    let guard = settings.outbound.guard().map_err(Error::Settings)?;
    let notifier = Notifier::new(
        &cascade_networks::OpenRtbHttpAdapter::new(&guard),
        settings.notices.max_in_flight,
        Duration::from_millis(settings.notices.timeout_ms),
    );
    let (stop_billing, billing_stopped) = tokio::sync::watch::channel(false);
    let billing = tokio::spawn(notices::deliver_billing_notices(
        store.clone(),
        notifier.clone(),
        settings.notices.clone(),
        log.clone(),
        billing_stopped,
    ));
    let channel = |target: &Target| traced(resolver.channel(target.clone()), target.into());
    // Evaluate and Rank are pure functions of their request: a second copy to another
    // instance cannot do anything twice. RunWaterfall and CollectBids call networks.
    let hedged = |target: &Target| traced(resolver.hedged_channel(target.clone()), target.into());
    outcomes::register();
    let admission = Admission::start(&settings.grpc.admission);
    let selections = SelectionWriter::new(
        store.clone(),
        settings.selection_backlog_capacity,
        // However rarely the configuration is polled, a store that is back is
        // written to within a second.
        settings.state.poll_interval().min(SELECTION_RETRY_CAP),
    );
    let service = DecisionService {
        snapshot,
        store: store.clone(),
        report: report.clone(),
        selections: selections.clone(),
        targeting: cascade_proto::targeting::v1::targeting_evaluation_client::TargetingEvaluationClient::new(
            hedged(&settings.targeting_evaluation_addr),
        ),
        auction: cascade_proto::auction::v1::auction_client::AuctionClient::new(hedged(&settings.auction_addr)),
        network_caller: cascade_proto::networkcaller::v1::network_caller_client::NetworkCallerClient::new(
            channel(&settings.network_caller_addr),
        ),
        default_budget: Duration::from_millis(settings.default_budget_ms),
        max_budget: Duration::from_millis(settings.max_budget_ms),
        bidding_budget: Duration::from_millis(settings.bidding_budget_ms),
        response_reserve: Duration::from_millis(settings.response_reserve_ms),
        fallback_reserve: Duration::from_millis(settings.fallback_reserve_ms),
        selection_write_wait: Duration::from_millis(settings.selection_write_wait_ms),
        selection_ttl: Duration::from_secs(settings.selection_ttl_secs),
        max_selection_ttl: Duration::from_secs(settings.max_selection_ttl_secs),
        notifier,
        notices: settings.notices.clone(),
        log: log.clone(),
        admission: admission.clone(),
    };
    let admin = AdminService::new(store.clone()).into_server(settings.admin_token.clone());
    let reports = ReportService::new(store).into_server(settings.admin_token.clone());
    let routes = tonic::service::Routes::new(BidIntakeServer::new(service))
        .add_service(admin)
        .add_service(reports);
    let served = GrpcServer::new(
        routes,
        &[
            BidIntakeServer::<DecisionService>::NAME,
            AdminServer::<AdminService>::NAME,
            ReportsServer::<ReportService>::NAME,
        ],
    )
    // Decisions are judged by their publisher's share: in front when the gateway names the
    // publisher in the metadata, else by their handler once the request is read.
    // Impression reports and the admin API are never shed.
    .admitting(admission, &[])
    .judging_by_publisher(&[BidIntakeServer::<DecisionService>::NAME], || {
        outcomes::count(outcomes::Outcome::Shed)
    })
    .reporting_staleness(watch.staleness())
    .ready_when(watch.readiness())
    .serve(listener, &settings.grpc, shutdown)
    .await;
    let _ = stop_billing.send(true);
    let _ = billing.await;
    selections.drain(BACKLOG_DRAIN_TIMEOUT).await;
    report.flush().await;
    log.close(LOG_CLOSE_TIMEOUT).await;
    served?;
    Ok(())
}
