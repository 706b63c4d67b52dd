//! auction: pure ranking. Filters each impression's candidates by ad quality and floor,
//! ranks the rest and prices them, returning a reason for every candidate it dropped.
//! It holds no state: everything it needs comes in the request.

use cascade_core::Micros;
use cascade_core::ad_quality::BlockIndex;
use cascade_core::auction::{self, AuctionRules, Bidder, Deal, DealPricing, Source};
use cascade_core::config::AuctionType as CoreAuctionType;
use cascade_core::money::Factor;
use cascade_proto::auction::v1::auction_server::{Auction, AuctionServer};
use cascade_proto::auction::v1::{
    AuctionImp, AuctionType, Candidate, ImpRanking, RankRequest, RankResponse, RankedCandidate,
};
use cascade_proto::decision::v1::{DroppedCandidate, SourceKind};
use cascade_server::settings::GrpcSettings;
use cascade_server::{GrpcServer, ServeError};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tonic::server::NamedService;
use tonic::{Request, Response, Status};

pub const MAX_IMPS: usize = 64;
/// Most candidates one impression may carry.
pub const MAX_CANDIDATES_PER_IMP: usize = 2_000;
/// Most deals one impression may carry.
pub const MAX_DEALS_PER_IMP: usize = 100;
/// Largest bid adjustment: 10x.
const MAX_ADJUSTMENT_PPM: i64 = 10_000_000;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub grpc: GrpcSettings,
}

#[derive(Debug, thiserror::Error)]
pub enum RankError {
    #[error("imps: at most {MAX_IMPS} impressions, got {0}")]
    TooManyImps(usize),
    #[error("imps[{0}].candidates: at most {MAX_CANDIDATES_PER_IMP} candidates, got {1}")]
    TooManyCandidates(usize, usize),
    #[error("imps[{0}].floor_micros: must be between 0 and 1e12")]
    InvalidFloor(usize),
    #[error("imps[{0}].candidates[{1}].bid_micros: must be between 0 and 1e12")]
    InvalidBid(usize, usize),
    #[error("imps[{0}].deals: at most {MAX_DEALS_PER_IMP} deals, got {1}")]
    TooManyDeals(usize, usize),
    #[error("imps[{0}].deals[{1}].floor_micros: must be between 0 and 1e12")]
    InvalidDealFloor(usize, usize),
    #[error("imps[{0}].candidates[{1}].minimum_micros: must be between 0 and 1e12")]
    InvalidMinimum(usize, usize),
    #[error("imps[{0}].candidates[{1}].bid_adjustment_ppm: must be between 0 and 10000000")]
    InvalidAdjustment(usize, usize),
    #[error("imps[{0}].candidates[{1}].source: {2:?} cannot be ranked")]
    UnsupportedSource(usize, usize, SourceKind),
}

impl cascade_core::settings::Validate for Settings {
    fn validate(&self) -> Result<(), cascade_core::settings::InvalidSetting> {
        self.grpc.validate_under("grpc")
    }
}

impl From<RankError> for Status {
    fn from(error: RankError) -> Self {
        cascade_server::status::invalid_argument(&error)
    }
}

/// Serves until `shutdown` resolves.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let routes = tonic::service::Routes::new(AuctionServer::new(AuctionService));
    GrpcServer::new(routes, &[AuctionServer::<AuctionService>::NAME])
        .serve(listener, &settings.grpc, shutdown)
        .await
}

pub struct AuctionService;

#[tonic::async_trait]
impl Auction for AuctionService {
    async fn rank(&self, request: Request<RankRequest>) -> Result<Response<RankResponse>, Status> {
        Ok(Response::new(rank(request.into_inner())?))
    }
}

/// Ranks every impression of `request`: the whole of the auction, with no I/O, so that
/// `cascade replay` ranks as the service does.
pub fn rank(request: RankRequest) -> Result<RankResponse, RankError> {
    if request.imps.len() > MAX_IMPS {
        return Err(RankError::TooManyImps(request.imps.len()));
    }
    let imps = request
        .imps
        .into_iter()
        .enumerate()
        .map(|(i, imp)| rank_imp(i, imp))
        .collect::<Result<_, _>>()?;
    Ok(RankResponse { imps })
}

/// A wire candidate as the core auction sees it, validated.
struct Wire<'a> {
    candidate: &'a Candidate,
    source: Source,
    bid: Micros,
    minimum: Micros,
    adjustment: Factor,
}

impl Bidder for Wire<'_> {
    fn id(&self) -> &str {
        &self.candidate.id
    }
    fn source(&self) -> Source {
        self.source
    }
    fn bid(&self) -> Micros {
        self.bid
    }
    fn adomains(&self) -> &[String] {
        &self.candidate.adomain
    }
    fn categories(&self) -> &[String] {
        &self.candidate.cat
    }
    fn seat(&self) -> &str {
        &self.candidate.seat
    }
    fn attributes(&self) -> &[i32] {
        &self.candidate.attr
    }
    fn adjustment(&self) -> Factor {
        self.adjustment
    }
    fn dealid(&self) -> &str {
        &self.candidate.dealid
    }
    fn minimum(&self) -> Micros {
        self.minimum
    }
    fn filled(&self) -> bool {
        !self.candidate.unfilled
    }
    fn dsa_declared(&self) -> bool {
        self.candidate.dsa || self.source.is_fixed_price()
    }
}

fn rank_imp(i: usize, imp: AuctionImp) -> Result<ImpRanking, RankError> {
    if imp.candidates.len() > MAX_CANDIDATES_PER_IMP {
        return Err(RankError::TooManyCandidates(i, imp.candidates.len()));
    }
    if imp.deals.len() > MAX_DEALS_PER_IMP {
        return Err(RankError::TooManyDeals(i, imp.deals.len()));
    }
    let floor = Micros::checked(imp.floor_micros).map_err(|_| RankError::InvalidFloor(i))?;
    let wire = imp
        .candidates
        .iter()
        .enumerate()
        .map(|(j, candidate)| {
            let source = match candidate.source() {
                SourceKind::Exchange => Source::Exchange,
                SourceKind::MediatedNetwork => Source::MediatedNetwork,
                SourceKind::LineItem if candidate.guaranteed => Source::GuaranteedLineItem {
                    priority: candidate.priority,
                },
                SourceKind::LineItem => Source::NonGuaranteedLineItem,
                SourceKind::BiddingNetwork => Source::BiddingNetwork,
                SourceKind::ChainedOutcome => Source::ChainedOutcome,
                other => return Err(RankError::UnsupportedSource(i, j, other)),
            };
            let bid =
                Micros::checked(candidate.bid_micros).map_err(|_| RankError::InvalidBid(i, j))?;
            let minimum = Micros::checked(candidate.minimum_micros)
                .map_err(|_| RankError::InvalidMinimum(i, j))?;
            let adjustment = match candidate.bid_adjustment_ppm {
                ppm if (0..=MAX_ADJUSTMENT_PPM).contains(&ppm) => Factor::from_adjustment_ppm(ppm),
                _ => return Err(RankError::InvalidAdjustment(i, j)),
            };
            Ok(Wire {
                candidate,
                source,
                bid,
                minimum,
                adjustment,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let deals = imp
        .deals
        .iter()
        .enumerate()
        .map(|(d, deal)| {
            Ok(Deal {
                id: deal.id.clone(),
                floor: Micros::checked(deal.floor_micros)
                    .map_err(|_| RankError::InvalidDealFloor(i, d))?,
                pricing: DealPricing::from_openrtb(deal.at),
                wseats: deal.wseat.clone(),
                wadomains: deal.wadomain.clone(),
            })
        })
        .collect::<Result<Vec<_>, RankError>>()?;
    let quality = imp.ad_quality.clone().unwrap_or_default();
    let mut ad_quality = cascade_server::wire::ad_quality(&quality);
    let index = BlockIndex::pays_for(&ad_quality, imp.candidates.len())
        .then(|| BlockIndex::new(&ad_quality));
    ad_quality.index = index.as_ref();
    let rules = AuctionRules {
        floor,
        auction_type: match imp.auction_type() {
            AuctionType::SecondPrice => CoreAuctionType::SecondPrice,
            AuctionType::FirstPrice | AuctionType::Unspecified => CoreAuctionType::FirstPrice,
        },
        ad_quality,
        deals: &deals,
        private_auction: imp.private_auction,
        mediated_sets_second_price: imp.mediated_sets_second_price,
    };
    let ranking = auction::rank(&wire, &rules);
    let dropped = ranking
        .dropped
        .iter()
        .map(|(index, reason)| {
            let candidate = &imp.candidates[*index];
            DroppedCandidate {
                candidate_id: candidate.id.clone(),
                source: candidate.source,
                price_micros: candidate.bid_micros,
                reason: reason.code().to_string(),
                detail: reason.to_string(),
                loss_code: reason.loss_code(),
            }
        })
        .collect();
    let mut candidates: Vec<Option<Candidate>> = imp.candidates.into_iter().map(Some).collect();
    let ranked = ranking
        .ranked
        .iter()
        .map(|ranked| RankedCandidate {
            candidate: candidates[ranked.index].take(),
            clearing_price_micros: ranked.clearing_price.0,
            floor_micros: ranked.floor.0,
        })
        .collect();
    Ok(ImpRanking {
        impid: imp.impid,
        ranked,
        dropped,
    })
}
