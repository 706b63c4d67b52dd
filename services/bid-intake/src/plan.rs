//! The decision's rules between the services' answers, with no I/O: what each
//! impression brings to the auction, what bidding networks are asked, what the waterfall
//! must call and who wins when none fills. `decide` runs them around its calls;
//! `cascade replay` runs the very same functions on logged decisions.

use cascade_core::Micros;
use cascade_core::waterfall::network_floor;
use cascade_proto::auction::v1::{AdQuality, AuctionImp, Candidate, RankedCandidate};
use cascade_proto::decision::v1::{NoFillReason, SourceKind, Winner};
use cascade_proto::networkcaller::v1::{BidAsk, BiddingImp};
use cascade_proto::targeting::v1::{
    EligibleLineItem, EligibleMediatedBid, EvaluateResponse, ImpEvaluation, SeatAdjustment,
};
use cascade_server::wire::adjustment;

use crate::normalize::Normalized;

const AUCTION_CURRENCY: &str = cascade_core::money::AUCTION_CURRENCY;

/// The filters of every impression of `evaluation`, in its order (see [`ad_quality`]).
pub fn ad_qualities(evaluation: &EvaluateResponse, normalized: &Normalized) -> Vec<AdQuality> {
    evaluation
        .imps
        .iter()
        .enumerate()
        .map(|(index, imp)| ad_quality(imp.applied_rule.as_ref(), normalized, index))
        .collect()
}

/// The bidding networks each impression asks for a live bid, with the floor each is
/// sent: only under a selling rule, and under a private auction too (a bidding network
/// is sent the deals and its bid serves if it names one that admits its seat).
pub fn bidding_imps(evaluation: &EvaluateResponse, qualities: &[AdQuality]) -> Vec<BiddingImp> {
    evaluation
        .imps
        .iter()
        .zip(qualities)
        .filter_map(|(imp, quality)| {
            let rule = imp.applied_rule.as_ref()?;
            let asks: Vec<BidAsk> = imp
                .bidding_bids
                .iter()
                .map(|bid| BidAsk {
                    bid_id: bid.bid_id.clone(),
                    network_id: bid.network_id.clone(),
                    placement_id: bid.placement_id.clone(),
                    floor_micros: network_floor(
                        Micros(bid.cpm_micros),
                        Micros(rule.floor_micros),
                        adjustment(bid.bid_adjustment_ppm),
                    )
                    .0,
                    bid_adjustment_ppm: bid.bid_adjustment_ppm,
                })
                .collect();
            (!asks.is_empty()).then(|| BiddingImp {
                impid: imp.impid.clone(),
                asks,
                ad_quality: Some(quality.clone()),
            })
        })
        .collect()
}

/// The account's bid adjustment per buyer seat, put on the exchange bids of its seats.
fn adjust_seats(adjustments: &[SeatAdjustment], exchange: &mut [Candidate]) {
    if adjustments.is_empty() {
        return;
    }
    for candidate in exchange {
        if let Some(adjustment) = adjustments.iter().find(|a| a.seat == candidate.seat) {
            candidate.bid_adjustment_ppm = adjustment.factor_ppm;
        }
    }
}

/// The demand one impression holds before the auction, whatever its source.
#[derive(Debug, Default)]
pub struct ImpDemand {
    /// The exchange bids of the request (their seats' adjustments not yet applied).
    pub exchange: Vec<Candidate>,
    /// The bidding networks' live bids.
    pub live_bids: Vec<Candidate>,
    /// Earlier selections chained into this request.
    pub chained: Vec<Candidate>,
}

/// Splits an impression's ranked list where its first demand in hand stands: the
/// waterfall networks ranked above it, which must be called in order, and that demand,
/// which serves when none of them fills.
pub fn split_at_in_hand(
    mut ranked: Vec<RankedCandidate>,
) -> (Vec<RankedCandidate>, Option<RankedCandidate>) {
    let first_in_hand = ranked
        .iter()
        .position(|r| !needs_call(r))
        .unwrap_or(ranked.len());
    let in_hand = ranked.drain(first_in_hand..).next();
    (ranked, in_hand)
}
/// What one impression brings to the auction, or why it has nothing to bring. With a
/// selling rule: exchange bids, live bids, mediated bids, line items and chained
/// outcomes under the rule's floor, the impression's deals, and the filters. Without
/// one, no auction demand may serve: only line items and chained outcomes, under the
/// request's filters.
pub fn auction_imp(
    account_known: bool,
    seat_adjustments: &[SeatAdjustment],
    evaluated: ImpEvaluation,
    demand: ImpDemand,
    normalized: &Normalized,
    quality: AdQuality,
    index: usize,
) -> Result<AuctionImp, NoFillReason> {
    if !account_known {
        return Err(NoFillReason::UnknownAccount);
    }
    let ImpDemand {
        mut exchange,
        live_bids,
        chained,
    } = demand;
    let line_items = evaluated
        .line_items
        .into_iter()
        .map(line_item_candidate)
        .chain(chained);
    let (deals, private_auction) = normalized.deals[index].clone();
    match evaluated.applied_rule {
        Some(rule) => {
            adjust_seats(seat_adjustments, &mut exchange);
            let mut candidates = exchange;
            candidates.extend(live_bids);
            candidates.extend(evaluated.mediated_bids.into_iter().map(mediated_candidate));
            candidates.extend(line_items);
            Ok(AuctionImp {
                impid: evaluated.impid,
                floor_micros: rule.floor_micros,
                auction_type: rule.auction_type,
                mediated_sets_second_price: rule.mediated_sets_second_price,
                ad_quality: Some(quality),
                deals,
                private_auction,
                candidates,
            })
        }
        None => {
            let candidates: Vec<Candidate> = line_items.collect();
            if candidates.is_empty() {
                return Err(NoFillReason::NoMatchingRule);
            }
            Ok(AuctionImp {
                impid: evaluated.impid,
                ad_quality: Some(quality),
                candidates,
                ..Default::default()
            })
        }
    }
}

/// The filters of one impression: the applied rule's plus the request's (`badv`,
/// `bcat`, `bseat`, the impression's `battr`), in the request's `cattax`. Without a
/// rule, the request's alone.
pub fn ad_quality(
    rule: Option<&cascade_proto::targeting::v1::AppliedRule>,
    normalized: &Normalized,
    index: usize,
) -> AdQuality {
    let from_rule = |list: fn(&cascade_proto::targeting::v1::AppliedRule) -> &Vec<String>| {
        rule.map(|r| list(r).clone()).unwrap_or_default()
    };
    AdQuality {
        blocked_adomains: merged(
            from_rule(|r| &r.blocked_adomains),
            &normalized.blocked_adomains,
        ),
        blocked_categories: merged(
            from_rule(|r| &r.blocked_categories),
            &normalized.blocked_categories,
        ),
        blocked_seats: merged(from_rule(|r| &r.blocked_seats), &normalized.blocked_seats),
        blocked_attributes: merged(
            rule.map(|r| r.blocked_attributes.clone())
                .unwrap_or_default(),
            &normalized.blocked_attributes[index],
        ),
        cattax: normalized.cattax,
        block_unknown_adomain: rule.is_some_and(|r| r.block_unknown_adomain),
        block_unknown_category: rule.is_some_and(|r| r.block_unknown_category),
        dsa_required: normalized.dsa_required,
    }
}

fn line_item_candidate(item: EligibleLineItem) -> Candidate {
    Candidate {
        id: format!("line_item:{}", item.line_item_id),
        source: SourceKind::LineItem as i32,
        bid_micros: item.cpm_micros,
        bid_id: item.line_item_id,
        adm: item.adm,
        adomain: item.adomain,
        cat: item.cat,
        attr: item.attr,
        guaranteed: item.guaranteed,
        priority: item.priority,
        ..Default::default()
    }
}

fn mediated_candidate(bid: EligibleMediatedBid) -> Candidate {
    Candidate {
        bid_adjustment_ppm: bid.bid_adjustment_ppm,
        id: format!("mediated:{}", bid.bid_id),
        source: SourceKind::MediatedNetwork as i32,
        bid_micros: bid.cpm_micros,
        network_id: bid.network_id,
        placement_id: bid.placement_id,
        bid_id: bid.bid_id,
        ..Default::default()
    }
}

/// Whether a ranked candidate is a waterfall network, which must be called to serve;
/// everything else is demand in hand.
pub fn needs_call(ranked: &RankedCandidate) -> bool {
    ranked
        .candidate
        .as_ref()
        .is_some_and(|c| c.source() == SourceKind::MediatedNetwork)
}

pub fn winner_from(ranked: RankedCandidate) -> Winner {
    let candidate = ranked.candidate.unwrap_or_default();
    Winner {
        selection_id: String::new(),
        source: candidate.source,
        seat: candidate.seat,
        network_id: candidate.network_id,
        bid_id: candidate.bid_id,
        price_micros: ranked.clearing_price_micros,
        cur: AUCTION_CURRENCY.to_string(),
        adm: candidate.adm,
        nurl: candidate.nurl,
        adomain: candidate.adomain,
        crid: candidate.crid,
        dealid: candidate.dealid,
        cat: candidate.cat,
        attr: candidate.attr,
        original_cur: candidate.original_cur,
        rate_micros: candidate.rate_micros,
        burl: candidate.burl,
    }
}

/// The rule's filters plus the request's own (`bcat`, `badv`, `bseat`, `battr`).
fn merged<T: Clone>(mut from_rule: Vec<T>, from_request: &[T]) -> Vec<T> {
    from_rule.extend(from_request.iter().cloned());
    from_rule
}
