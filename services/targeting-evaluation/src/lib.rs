//! targeting-evaluation: for each impression of a publisher, the selling rule that
//! applies (and where it was inherited from), the floor, and the eligible mediated
//! bids, answered from the in-memory configuration snapshot with no store read.

use std::sync::Arc;

use cascade_core::Micros;
use cascade_core::config::{AuctionType as CoreAuctionType, LineItemClass, MediatedBid};
use cascade_core::money::Factor;
use cascade_core::snapshot::{ImpEvaluation as CoreEvaluation, Snapshot};
use cascade_core::targeting::{ImpressionKeys, MediaType as CoreMediaType, Size as CoreSize};
use cascade_proto::auction::v1::AuctionType;
use cascade_proto::decision::v1::ExcludedEntity;
use cascade_proto::targeting::v1::targeting_evaluation_server::{
    TargetingEvaluation, TargetingEvaluationServer,
};
use cascade_proto::targeting::v1::{
    AppliedRule, EligibleLineItem, EligibleMediatedBid, EvaluateRequest, EvaluateResponse,
    ImpContext, ImpEvaluation, MediaType, RequestContext, SeatAdjustment,
};
use cascade_server::settings::GrpcSettings;
use cascade_server::{GrpcServer, ServeError};
use cascade_state::{SnapshotCell, StateError, StateSettings, Store, watch_snapshot};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

/// Most impressions one evaluation may carry (bid-intake enforces the same on requests).
pub const MAX_IMPS: usize = 64;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub grpc: GrpcSettings,
    pub state: StateSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the configuration: {0}")]
    State(#[from] StateError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    #[error("configuration snapshot not loaded yet")]
    NotReady,
    #[error("imps: at most {MAX_IMPS} impressions, got {0}")]
    TooManyImps(usize),
    #[error("imps[{0}].request_floor_micros: must be between 0 and 1e12")]
    InvalidFloor(usize),
}

impl cascade_core::settings::Validate for Settings {
    fn validate(&self) -> Result<(), cascade_core::settings::InvalidSetting> {
        self.grpc.validate_under("grpc")?;
        self.state.validate_under("state")
    }
}

impl From<EvaluateError> for Status {
    fn from(error: EvaluateError) -> Self {
        match error {
            EvaluateError::NotReady => Status::unavailable(error.to_string()),
            EvaluateError::TooManyImps(_) | EvaluateError::InvalidFloor(_) => {
                cascade_server::status::invalid_argument(&error)
            }
        }
    }
}

/// Loads the snapshot, keeps it fresh, and serves until `shutdown` resolves.
pub async fn serve(
    settings: Settings,
    store: Arc<dyn Store>,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let watch = watch_snapshot(store, settings.state.poll_interval()).await;
    let snapshot = watch.cell();
    let service = TargetingEvaluationServer::new(TargetingService { snapshot });
    let routes = tonic::service::Routes::new(service);
    let server = GrpcServer::new(
        routes,
        &[TargetingEvaluationServer::<TargetingService>::NAME],
    )
    .reporting_staleness(watch.staleness())
    .ready_when(watch.readiness());
    server.serve(listener, &settings.grpc, shutdown).await?;
    Ok(())
}

pub struct TargetingService {
    snapshot: Arc<SnapshotCell>,
}

#[tonic::async_trait]
impl TargetingEvaluation for TargetingService {
    async fn evaluate(
        &self,
        request: Request<EvaluateRequest>,
    ) -> Result<Response<EvaluateResponse>, Status> {
        let request = request.into_inner();
        let snapshot = self.snapshot.load().ok_or(EvaluateError::NotReady)?;
        let now = jiff::Timestamp::now().as_second();
        Ok(Response::new(evaluate(&snapshot, &request, now)?))
    }
}

/// Everything targeting decides about a request's impressions at `unix_seconds`: the
/// whole of the service, with no I/O, so that `cascade replay` evaluates as it does.
pub fn evaluate(
    snapshot: &Snapshot,
    request: &EvaluateRequest,
    unix_seconds: i64,
) -> Result<EvaluateResponse, EvaluateError> {
    if request.imps.len() > MAX_IMPS {
        return Err(EvaluateError::TooManyImps(request.imps.len()));
    }
    let account_known = snapshot.has_account(&request.account_id);
    let context = request.context.clone().unwrap_or_default();
    let mut imps = Vec::with_capacity(request.imps.len());
    for (i, imp) in request.imps.iter().enumerate() {
        let floor = Micros::checked(imp.request_floor_micros)
            .map_err(|_| EvaluateError::InvalidFloor(i))?;
        let mut keys = impression_keys(imp, &context);
        snapshot.complete_keys(&request.account_id, &mut keys, unix_seconds);
        let evaluation = snapshot.evaluate(&request.account_id, &keys, floor, request.debug);
        imps.push(to_wire(snapshot, &imp.impid, evaluation, unix_seconds));
    }
    Ok(EvaluateResponse {
        config_version: snapshot.version(),
        account_known,
        imps,
        seat_adjustments: snapshot
            .seat_adjustments(&request.account_id)
            .into_iter()
            .map(|(seat, factor)| SeatAdjustment {
                seat,
                factor_ppm: factor.0,
            })
            .collect(),
    })
}

fn impression_keys(imp: &ImpContext, context: &RequestContext) -> ImpressionKeys {
    ImpressionKeys {
        tagid: imp.tagid.clone(),
        media_types: imp
            .media_types()
            .filter_map(|m| match m {
                MediaType::Banner => Some(CoreMediaType::Banner),
                MediaType::Video => Some(CoreMediaType::Video),
                MediaType::Audio => Some(CoreMediaType::Audio),
                MediaType::Native => Some(CoreMediaType::Native),
                MediaType::Unspecified => None,
            })
            .collect(),
        sizes: imp
            .sizes
            .iter()
            .map(|s| CoreSize { w: s.w, h: s.h })
            .collect(),
        interstitial: imp.interstitial,
        deals: imp.deals.clone(),
        country: context.country.clone(),
        region: context.region.clone(),
        metro: context.metro.clone(),
        devicetype: context.devicetype,
        os: context.os.clone(),
        domain: context.domain.clone(),
        bundle: context.bundle.clone(),
        segments: context.segments.clone(),
        key_values: context
            .key_values
            .iter()
            .map(|kv| (kv.key.clone(), kv.value.clone()))
            .collect(),
        ..Default::default()
    }
}

fn eligible_bid(snapshot: &Snapshot, bid: &MediatedBid, unix_seconds: i64) -> EligibleMediatedBid {
    EligibleMediatedBid {
        bid_id: bid.id.clone(),
        network_id: bid.network_id.clone(),
        cpm_micros: snapshot.mediated_cpm(bid, unix_seconds).0,
        placement_id: bid.placement_id.clone(),
        bid_adjustment_ppm: snapshot
            .network(&bid.network_id)
            .map_or(Factor::ONE, |n| n.bid_adjustment)
            .0,
    }
}

fn to_wire(
    snapshot: &Snapshot,
    impid: &str,
    evaluation: CoreEvaluation<'_>,
    unix_seconds: i64,
) -> ImpEvaluation {
    ImpEvaluation {
        impid: impid.to_string(),
        applied_rule: evaluation.applied_rule.map(|applied| AppliedRule {
            rule_id: applied.rule.id.clone(),
            account_id: applied.owner_account_id.to_string(),
            inherited: applied.inherited,
            floor_micros: applied.floor.0,
            auction_type: match applied.rule.auction_type {
                CoreAuctionType::FirstPrice => AuctionType::FirstPrice,
                CoreAuctionType::SecondPrice => AuctionType::SecondPrice,
            } as i32,
            blocked_adomains: applied.rule.blocked_adomains.clone(),
            blocked_categories: applied.rule.blocked_categories.clone(),
            blocked_seats: applied.rule.blocked_seats.clone(),
            blocked_attributes: applied.rule.blocked_attributes.clone(),
            block_unknown_adomain: applied.rule.block_unknown_adomain,
            block_unknown_category: applied.rule.block_unknown_category,
            mediated_sets_second_price: applied.rule.mediated_bids_set_second_price,
        }),
        matched_rule_ids: evaluation
            .matched_rule_ids
            .iter()
            .map(|id| id.to_string())
            .collect(),
        mediated_bids: evaluation
            .mediated_bids
            .iter()
            .map(|bid| eligible_bid(snapshot, bid, unix_seconds))
            .collect(),
        bidding_bids: evaluation
            .bidding_bids
            .iter()
            .map(|bid| eligible_bid(snapshot, bid, unix_seconds))
            .collect(),
        mediation_mode: evaluation.mediation_mode.name().to_string(),
        line_items: evaluation
            .line_items
            .iter()
            .map(|item| EligibleLineItem {
                line_item_id: item.id.clone(),
                cpm_micros: item.cpm.0,
                guaranteed: item.class == LineItemClass::Guaranteed,
                priority: item.priority,
                adm: item.adm.clone(),
                adomain: item.adomain.clone(),
                cat: item.categories.clone(),
                attr: item.attributes.clone(),
            })
            .collect(),
        excluded: evaluation
            .excluded
            .iter()
            .map(|(id, exclusion)| ExcludedEntity {
                id: id.to_string(),
                reason: exclusion.to_string(),
            })
            .collect(),
    }
}
