//! The auction: filters candidates by ad quality and by the floor that applies to each,
//! ranks the rest, and prices each one for the case that it ends up serving (the
//! waterfall may skip the leaders).
//!
//! It works on any candidate type through [`Bidder`], so services rank their wire types
//! in place and get back indices, with no copy per candidate.

use std::cmp::Ordering;
use std::fmt;

pub use crate::ad_quality::category_is_within;
use crate::ad_quality::{AdQuality, Creative, Refusal};
use crate::config::AuctionType;
use crate::money::{Factor, Micros};
pub use crate::targeting::domain_is_within;
use crate::waterfall::network_floor;

/// Kinds of demand.
///
/// Guaranteed line items rank above everything else, among themselves by priority (1
/// first) then CPM. Everything else ranks by bid; on equal bids the variants win in the
/// order listed: a non-guaranteed line item is beaten only by a higher bid, a chained
/// outcome has already won an earlier selection, an exchange bid and a bidding
/// network's live bid are money in hand, a mediated bid still has to be fetched from its
/// network.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    GuaranteedLineItem { priority: u32 },
    NonGuaranteedLineItem,
    ChainedOutcome,
    Exchange,
    BiddingNetwork,
    MediatedNetwork,
}

impl Source {
    /// Line items (the publisher's own demand) and chained outcomes (already priced by
    /// an earlier selection) pay their fixed price, and the floor does not apply to them.
    pub fn is_fixed_price(self) -> bool {
        matches!(
            self,
            Source::GuaranteedLineItem { .. }
                | Source::NonGuaranteedLineItem
                | Source::ChainedOutcome
        )
    }

    /// Mediated networks, waterfall or bidding, pay what they pay: never a second price.
    pub fn is_network(self) -> bool {
        matches!(self, Source::BiddingNetwork | Source::MediatedNetwork)
    }
}

/// The kind of demand that served, as a selection keeps it and counters are kept by: the
/// decision API's `SourceKind`, stored under its name (`SOURCE_KIND_EXCHANGE`, …).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub enum DemandKind {
    #[default]
    #[serde(rename = "SOURCE_KIND_UNSPECIFIED")]
    Unspecified,
    #[serde(rename = "SOURCE_KIND_EXCHANGE")]
    Exchange,
    #[serde(rename = "SOURCE_KIND_MEDIATED_NETWORK")]
    MediatedNetwork,
    #[serde(rename = "SOURCE_KIND_BIDDING_NETWORK")]
    BiddingNetwork,
    #[serde(rename = "SOURCE_KIND_LINE_ITEM")]
    LineItem,
    #[serde(rename = "SOURCE_KIND_CHAINED_OUTCOME")]
    ChainedOutcome,
}

impl DemandKind {
    const ALL: [DemandKind; 6] = [
        DemandKind::Unspecified,
        DemandKind::Exchange,
        DemandKind::MediatedNetwork,
        DemandKind::BiddingNetwork,
        DemandKind::LineItem,
        DemandKind::ChainedOutcome,
    ];

    /// The name it is stored under.
    pub fn as_str(self) -> &'static str {
        match self {
            DemandKind::Unspecified => "SOURCE_KIND_UNSPECIFIED",
            DemandKind::Exchange => "SOURCE_KIND_EXCHANGE",
            DemandKind::MediatedNetwork => "SOURCE_KIND_MEDIATED_NETWORK",
            DemandKind::BiddingNetwork => "SOURCE_KIND_BIDDING_NETWORK",
            DemandKind::LineItem => "SOURCE_KIND_LINE_ITEM",
            DemandKind::ChainedOutcome => "SOURCE_KIND_CHAINED_OUTCOME",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

/// What the auction needs to know about a candidate.
pub trait Bidder {
    /// Unique within the impression; the last tie-break.
    fn id(&self) -> &str;
    fn source(&self) -> Source;
    /// The bid, USD micros.
    fn bid(&self) -> Micros;
    fn adomains(&self) -> &[String];
    fn categories(&self) -> &[String];
    /// The buyer seat (exchange bids); empty otherwise.
    fn seat(&self) -> &str;
    /// OpenRTB creative attribute codes.
    fn attributes(&self) -> &[i32];
    /// The multiplier on this candidate's bid (its network's or seat's adjustment).
    fn adjustment(&self) -> Factor {
        Factor::ONE
    }
    /// The deal the bid says it is made under; empty for an open-auction bid.
    fn dealid(&self) -> &str {
        ""
    }
    /// The least this candidate may bid whatever the floor: for a bidding network's live
    /// bid, the mediated bid's CPM.
    fn minimum(&self) -> Micros {
        Micros::ZERO
    }
    /// False for a chained outcome that selected no ad (a client-side chain node the
    /// client reported as no fill, or never reported as filled).
    fn filled(&self) -> bool {
        true
    }
    /// Whether the ad carries DSA transparency (`bid.ext.dsa`). Line items (the
    /// publisher's own) and chained outcomes (judged when they were selected) count as
    /// declaring it.
    fn dsa_declared(&self) -> bool {
        self.source().is_fixed_price()
    }
}

/// How a deal is priced (OpenRTB `deal.at`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DealPricing {
    /// The rule's auction type (`at` unset).
    #[default]
    Inherit,
    FirstPrice,
    SecondPrice,
    /// `at = 3`: the deal's floor is the agreed price, paid by any bid at or above it.
    Fixed,
}

impl DealPricing {
    pub fn from_openrtb(at: i32) -> Self {
        match at {
            1 => DealPricing::FirstPrice,
            2 => DealPricing::SecondPrice,
            3 => DealPricing::Fixed,
            _ => DealPricing::Inherit,
        }
    }
}

/// A deal the impression is offered under (`imp.pmp.deals[]`), its floor in USD micros.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deal {
    pub id: String,
    pub floor: Micros,
    pub pricing: DealPricing,
    /// Buyer seats allowed to bid on the deal; empty allows every seat.
    pub wseats: Vec<String>,
    /// Advertiser domains allowed on the deal; empty allows every advertiser.
    pub wadomains: Vec<String>,
}

impl Deal {
    /// Whether a bid with this seat and these advertiser domains may use the deal.
    pub fn admits(&self, seat: &str, adomains: &[String]) -> bool {
        let seat_ok =
            self.wseats.is_empty() || self.wseats.iter().any(|w| w.eq_ignore_ascii_case(seat));
        let adomain_ok = self.wadomains.is_empty()
            || (!adomains.is_empty()
                && adomains
                    .iter()
                    .all(|d| self.wadomains.iter().any(|w| domain_is_within(d, w))));
        seat_ok && adomain_ok
    }
}

/// The selling rule's and the request's side of the auction of one impression.
#[derive(Clone, Debug, Default)]
pub struct AuctionRules<'a> {
    /// max(rule floor, imp floor): the floor of open-auction demand.
    pub floor: Micros,
    pub auction_type: AuctionType,
    pub ad_quality: AdQuality<'a>,
    pub deals: &'a [Deal],
    /// `imp.pmp.private_auction = 1`: only bids under one of `deals` may serve among
    /// auction demand (line items and chained outcomes keep their exemption).
    pub private_auction: bool,
    /// Whether a waterfall network's CPM (a publisher's estimate, not a bid) may set
    /// the second price an exchange winner pays; by default it does not.
    pub mediated_sets_second_price: bool,
}

/// The terms one candidate competes under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Terms<'d> {
    /// Line items and chained outcomes: their own price, no floor.
    Fixed,
    /// The open auction, under the rule and imp floor.
    Open,
    /// One of the impression's deals, under its floor.
    Deal(&'d Deal),
}

impl Terms<'_> {
    /// The floor the candidate's effective bid must meet; `None` when exempt.
    pub fn floor(&self, rules: &AuctionRules<'_>) -> Option<Micros> {
        match self {
            Terms::Fixed => None,
            Terms::Open => Some(rules.floor),
            Terms::Deal(deal) => Some(deal.floor),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    NonPositiveBid,
    BelowFloor {
        floor: Micros,
    },
    Refused(Refusal),
    /// Under `private_auction`, a bid that is not under one of the impression's deals.
    PrivateAuction,
    /// A chained outcome that selected no ad.
    UnfilledOutcome,
}

impl DropReason {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            DropReason::NonPositiveBid => "non_positive_bid",
            DropReason::BelowFloor { .. } => "below_floor",
            DropReason::Refused(refusal) => refusal.code(),
            DropReason::PrivateAuction => "private_auction",
            DropReason::UnfilledOutcome => "unfilled_outcome",
        }
    }

    /// The OpenRTB loss reason a bid dropped so is told (its `lurl`'s `${AUCTION_LOSS}`).
    pub fn loss_code(&self) -> i32 {
        use crate::notice::loss;
        match self {
            DropReason::NonPositiveBid => loss::INVALID_BID_RESPONSE,
            DropReason::BelowFloor { .. } => loss::BELOW_FLOOR,
            DropReason::Refused(refusal) => refusal.loss_code(),
            DropReason::PrivateAuction => loss::LOST_TO_DEAL,
            DropReason::UnfilledOutcome => loss::INTERNAL_ERROR,
        }
    }
}

impl From<Refusal> for DropReason {
    fn from(refusal: Refusal) -> Self {
        DropReason::Refused(refusal)
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::NonPositiveBid => f.write_str("bid is zero"),
            DropReason::BelowFloor { floor } => write!(f, "bid is below the floor of {floor}"),
            DropReason::Refused(refusal) => refusal.fmt(f),
            DropReason::PrivateAuction => f.write_str(
                "private auction: the bid names no deal of this impression that admits its seat and advertiser",
            ),
            DropReason::UnfilledOutcome => {
                f.write_str("the chained selection selected no ad (its node was not reported filled)")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranked {
    /// Index into the candidates given to [`rank`].
    pub index: usize,
    /// What the candidate pays if it serves.
    pub clearing_price: Micros,
    /// The floor the candidate is held to, before its adjustment: for a network, the
    /// floor it is sent and whose answer must meet it ([`network_floor`]); zero for a
    /// line item or chained outcome.
    pub floor: Micros,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranking {
    /// Best first.
    pub ranked: Vec<Ranked>,
    pub dropped: Vec<(usize, DropReason)>,
}

/// The terms a candidate competes under: a line item or chained outcome its fixed
/// price; a bid naming one of the impression's deals that admits its seat and
/// advertiser, that deal; anything else the open auction, which `private_auction`
/// closes to auction demand.
pub fn terms_of<'d, B: Bidder>(
    candidate: &B,
    rules: &AuctionRules<'d>,
) -> Result<Terms<'d>, DropReason> {
    if candidate.source().is_fixed_price() {
        return Ok(Terms::Fixed);
    }
    let dealid = candidate.dealid();
    let deal = (!dealid.is_empty())
        .then(|| rules.deals.iter().find(|d| d.id == dealid))
        .flatten()
        .filter(|d| d.admits(candidate.seat(), candidate.adomains()));
    match deal {
        Some(deal) => Ok(Terms::Deal(deal)),
        None if rules.private_auction => Err(DropReason::PrivateAuction),
        None => Ok(Terms::Open),
    }
}

/// Why `candidate` may not compete, or the terms it competes under.
pub fn admit<'d, B: Bidder>(
    candidate: &B,
    rules: &AuctionRules<'d>,
) -> Result<Terms<'d>, DropReason> {
    let effective = effective_bid(candidate);
    if effective <= Micros::ZERO {
        return Err(DropReason::NonPositiveBid);
    }
    if !candidate.filled() {
        return Err(DropReason::UnfilledOutcome);
    }
    let terms = terms_of(candidate, rules)?;
    if let Some(floor) = terms.floor(rules)
        && effective < floor
    {
        return Err(DropReason::BelowFloor { floor });
    }
    if candidate.bid() < candidate.minimum() {
        return Err(DropReason::BelowFloor {
            floor: candidate.minimum(),
        });
    }
    // A waterfall network's ad is not known until it is called: its answer is judged
    // then, by the same filters (`waterfall::judge`).
    if candidate.source() == Source::MediatedNetwork {
        return Ok(terms);
    }
    let creative = Creative {
        adomains: candidate.adomains(),
        categories: candidate.categories(),
        seat: candidate.seat(),
        attributes: candidate.attributes(),
        dsa_declared: candidate.dsa_declared(),
    };
    if let Some(refusal) = rules.ad_quality.check(&creative) {
        return Err(refusal.into());
    }
    Ok(terms)
}

/// Ranks `candidates` under `rules`.
///
/// Every candidate competes with its effective bid: its bid times its bid adjustment
/// (line items and chained outcomes are not adjusted). Order: guaranteed line items
/// first (priority, then CPM); then by effective bid, equal bids going to a
/// non-guaranteed line item, then a chained outcome, then an exchange bid, then a
/// mediated bid; then the smaller id. It is a total order, so the ranking never depends
/// on input order. Clearing price: see [`clearing_price`].
pub fn rank<B: Bidder>(candidates: &[B], rules: &AuctionRules<'_>) -> Ranking {
    let effective: Vec<Micros> = candidates.iter().map(effective_bid).collect();
    let mut ranking = Ranking::default();
    let mut eligible: Vec<(usize, Terms<'_>)> = Vec::with_capacity(candidates.len());
    for (index, candidate) in candidates.iter().enumerate() {
        match admit(candidate, rules) {
            Ok(terms) => eligible.push((index, terms)),
            Err(reason) => ranking.dropped.push((index, reason)),
        }
    }
    let key = |index: usize| {
        (
            candidates[index].source(),
            effective[index],
            candidates[index].id(),
        )
    };
    eligible.sort_by(|&(a, _), &(b, _)| compare(key(a), key(b)));
    ranking.ranked = eligible
        .iter()
        .enumerate()
        .map(|(position, &(index, terms))| {
            // The next bid that may set a second price: a waterfall network's CPM is
            // the publisher's estimate, not a bid, unless the rule says otherwise.
            let next_bid = eligible[position + 1..]
                .iter()
                .find(|(next, _)| {
                    rules.mediated_sets_second_price
                        || candidates[*next].source() != Source::MediatedNetwork
                })
                .map_or(Micros::ZERO, |&(next, _)| effective[next]);
            let candidate = &candidates[index];
            let floor = terms.floor(rules).unwrap_or(Micros::ZERO);
            let floor = match candidate.source() {
                Source::MediatedNetwork => {
                    network_floor(candidate.bid(), floor, candidate.adjustment())
                }
                Source::BiddingNetwork => {
                    network_floor(candidate.minimum(), floor, candidate.adjustment())
                }
                _ => floor,
            };
            Ranked {
                index,
                floor,
                clearing_price: clearing_price(
                    candidates[index].source(),
                    effective[index],
                    terms,
                    next_bid,
                    rules,
                ),
            }
        })
        .collect();
    ranking
}

/// What a candidate pays if it serves. A line item or chained outcome pays its own
/// price, a network (waterfall or bidding) its effective bid, never a second price; a
/// fixed-price deal (`at = 3`) its floor; otherwise first price pays the effective bid,
/// and second price the larger of the candidate's floor and `next_bid`, never more
/// than its own bid.
pub fn clearing_price(
    source: Source,
    effective: Micros,
    terms: Terms<'_>,
    next_bid: Micros,
    rules: &AuctionRules<'_>,
) -> Micros {
    if source.is_fixed_price() || source.is_network() {
        return effective;
    }
    let auction_type = match terms {
        Terms::Deal(deal) => match deal.pricing {
            DealPricing::Fixed => return deal.floor.min(effective),
            DealPricing::FirstPrice => AuctionType::FirstPrice,
            DealPricing::SecondPrice => AuctionType::SecondPrice,
            DealPricing::Inherit => rules.auction_type,
        },
        Terms::Fixed | Terms::Open => rules.auction_type,
    };
    match auction_type {
        AuctionType::FirstPrice => effective,
        AuctionType::SecondPrice => {
            let floor = terms.floor(rules).unwrap_or(Micros::ZERO);
            next_bid.max(floor).min(effective)
        }
    }
}

/// What a candidate competes with: its bid, adjusted unless its price is fixed.
pub fn effective_bid<B: Bidder>(candidate: &B) -> Micros {
    if candidate.source().is_fixed_price() {
        candidate.bid()
    } else {
        candidate.adjustment().apply(candidate.bid())
    }
}

/// The ranking order on (source, effective bid, id); see [`rank`].
fn compare(
    (a_source, a_bid, a_id): (Source, Micros, &str),
    (b_source, b_bid, b_id): (Source, Micros, &str),
) -> Ordering {
    let guaranteed_priority = |source: Source| match source {
        Source::GuaranteedLineItem { priority } => Some(priority),
        _ => None,
    };
    match (guaranteed_priority(a_source), guaranteed_priority(b_source)) {
        (Some(pa), Some(pb)) => pa.cmp(&pb).then_with(|| b_bid.cmp(&a_bid)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => b_bid.cmp(&a_bid).then_with(|| a_source.cmp(&b_source)),
    }
    .then_with(|| a_id.cmp(b_id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_drop_tells_its_openrtb_loss_reason() {
        use crate::ad_quality::Refusal;
        let cases = [
            (DropReason::NonPositiveBid, 3),
            (DropReason::BelowFloor { floor: Micros(1) }, 100),
            (DropReason::PrivateAuction, 103),
            (Refusal::BlockedSeat("s".into()).into(), 104),
            (Refusal::BlockedAdomain("a.example".into()).into(), 205),
            (Refusal::BlockedCategory("IAB25".into()).into(), 209),
            (Refusal::BlockedAttribute(3).into(), 210),
            (Refusal::UnknownAdomain.into(), 6),
            (Refusal::NoDsaTransparency.into(), 200),
        ];
        for (reason, code) in cases {
            assert_eq!(reason.loss_code(), code, "{reason:?}");
        }
    }

    #[test]
    fn a_demand_kind_is_stored_under_its_decision_api_name() {
        for kind in DemandKind::ALL {
            let stored = serde_json::to_string(&kind).unwrap();
            assert_eq!(stored, format!("\"{}\"", kind.as_str()));
            assert_eq!(serde_json::from_str::<DemandKind>(&stored).unwrap(), kind);
            assert_eq!(DemandKind::from_name(kind.as_str()), Some(kind));
        }
        assert_eq!(DemandKind::from_name("exchange"), None);
    }

    #[derive(Clone, Debug)]
    struct Bid {
        id: String,
        source: Source,
        bid: Micros,
        adomains: Vec<String>,
        categories: Vec<String>,
        seat: String,
        attributes: Vec<i32>,
        adjustment: Factor,
        dealid: String,
        minimum: Micros,
        filled: bool,
        dsa: bool,
    }

    impl Bidder for Bid {
        fn id(&self) -> &str {
            &self.id
        }
        fn source(&self) -> Source {
            self.source
        }
        fn bid(&self) -> Micros {
            self.bid
        }
        fn adomains(&self) -> &[String] {
            &self.adomains
        }
        fn categories(&self) -> &[String] {
            &self.categories
        }
        fn seat(&self) -> &str {
            &self.seat
        }
        fn attributes(&self) -> &[i32] {
            &self.attributes
        }
        fn adjustment(&self) -> Factor {
            self.adjustment
        }
        fn dealid(&self) -> &str {
            &self.dealid
        }
        fn minimum(&self) -> Micros {
            self.minimum
        }
        fn filled(&self) -> bool {
            self.filled
        }
        fn dsa_declared(&self) -> bool {
            self.dsa || self.source.is_fixed_price()
        }
    }

    fn bid(id: &str, source: Source, micros: i64) -> Bid {
        Bid {
            id: id.into(),
            source,
            bid: Micros(micros),
            adomains: vec![],
            categories: vec![],
            seat: String::new(),
            attributes: vec![],
            adjustment: Factor::ONE,
            dealid: String::new(),
            minimum: Micros::ZERO,
            filled: true,
            dsa: true,
        }
    }

    fn ids(candidates: &[Bid], ranking: &Ranking) -> Vec<String> {
        ranking
            .ranked
            .iter()
            .map(|r| candidates[r.index].id.clone())
            .collect()
    }

    #[test]
    fn ranks_by_bid_then_exchange_first_then_id() {
        let candidates = vec![
            bid("m-b", Source::MediatedNetwork, 2_000_000),
            bid("x", Source::Exchange, 1_500_000),
            bid("m-a", Source::MediatedNetwork, 2_000_000),
            bid("y", Source::Exchange, 2_000_000),
        ];
        let ranking = rank(&candidates, &AuctionRules::default());
        assert_eq!(ids(&candidates, &ranking), ["y", "m-a", "m-b", "x"]);
        assert!(ranking.dropped.is_empty());
    }

    #[test]
    fn drops_below_floor_and_blocked() {
        let mut blocked_domain = bid("d", Source::Exchange, 5_000_000);
        blocked_domain.adomains = vec!["shop.bad.com".into()];
        let mut blocked_category = bid("c", Source::Exchange, 5_000_000);
        blocked_category.categories = vec!["IAB25-3".into()];
        let candidates = vec![
            bid("low", Source::MediatedNetwork, 400_000),
            blocked_domain,
            blocked_category,
            bid("ok", Source::Exchange, 600_000),
            bid("zero", Source::Exchange, 0),
        ];
        let blocked_adomains = vec!["bad.com".to_string()];
        let blocked_categories = vec!["IAB25".to_string()];
        let rules = AuctionRules {
            floor: Micros(500_000),
            ad_quality: AdQuality {
                blocked_adomains: &blocked_adomains,
                blocked_categories: &blocked_categories,
                ..Default::default()
            },
            ..Default::default()
        };
        let ranking = rank(&candidates, &rules);
        assert_eq!(ids(&candidates, &ranking), ["ok"]);
        let codes: Vec<_> = ranking
            .dropped
            .iter()
            .map(|(i, r)| (*i, r.code()))
            .collect();
        assert_eq!(
            codes,
            [
                (0, "below_floor"),
                (1, "blocked_adomain"),
                (2, "blocked_category"),
                (4, "non_positive_bid")
            ]
        );
    }

    #[test]
    fn second_price_pays_next_bid_or_floor() {
        let candidates = vec![
            bid("a", Source::Exchange, 3_000_000),
            bid("b", Source::Exchange, 2_000_000),
        ];
        let rules = AuctionRules {
            floor: Micros(1_000_000),
            auction_type: AuctionType::SecondPrice,
            ..Default::default()
        };
        let ranking = rank(&candidates, &rules);
        let prices: Vec<_> = ranking.ranked.iter().map(|r| r.clearing_price.0).collect();
        assert_eq!(prices, [2_000_000, 1_000_000]);
    }

    #[test]
    fn networks_pay_their_bid_and_a_mediated_cpm_sets_no_second_price() {
        let candidates = vec![
            bid("mediated-high", Source::MediatedNetwork, 3_000_000),
            bid("exchange", Source::Exchange, 2_000_000),
            bid("mediated-low", Source::MediatedNetwork, 1_500_000),
            bid("exchange-low", Source::Exchange, 1_000_000),
        ];
        let mut rules = AuctionRules {
            floor: Micros(500_000),
            auction_type: AuctionType::SecondPrice,
            ..Default::default()
        };
        let prices: Vec<_> = rank(&candidates, &rules)
            .ranked
            .iter()
            .map(|r| r.clearing_price.0)
            .collect();
        assert_eq!(prices, [3_000_000, 1_000_000, 1_500_000, 500_000]);
        rules.mediated_sets_second_price = true;
        let prices: Vec<_> = rank(&candidates, &rules)
            .ranked
            .iter()
            .map(|r| r.clearing_price.0)
            .collect();
        assert_eq!(prices, [3_000_000, 1_500_000, 1_500_000, 500_000]);
    }

    #[test]
    fn deal_bids_meet_their_deal_floor_and_private_auctions_admit_only_them() {
        let deals = vec![Deal {
            id: "d".into(),
            floor: Micros(2_500_000),
            pricing: DealPricing::Fixed,
            wseats: vec!["agency".into()],
            wadomains: vec![],
        }];
        let on_deal = |id: &str, seat: &str, micros| Bid {
            dealid: "d".into(),
            seat: seat.into(),
            ..bid(id, Source::Exchange, micros)
        };
        let candidates = vec![
            on_deal("under", "agency", 2_000_000),
            on_deal("over", "agency", 2_600_000),
            on_deal("other-seat", "someone", 9_000_000),
            bid("line-item", Source::NonGuaranteedLineItem, 100_000),
        ];
        let rules = AuctionRules {
            floor: Micros(5_000_000),
            deals: &deals,
            private_auction: true,
            ..Default::default()
        };
        let ranking = rank(&candidates, &rules);
        assert_eq!(ids(&candidates, &ranking), ["over", "line-item"]);
        assert_eq!(ranking.ranked[0].clearing_price, Micros(2_500_000));
        let reasons: Vec<_> = ranking.dropped.iter().map(|(_, r)| r.code()).collect();
        assert_eq!(reasons, ["below_floor", "private_auction"]);
    }

    #[test]
    fn guaranteed_line_items_win_outright_and_others_must_outbid_line_items() {
        let candidates = vec![
            bid("exchange-high", Source::Exchange, 9_000_000),
            bid(
                "guaranteed-p2",
                Source::GuaranteedLineItem { priority: 2 },
                5_000_000,
            ),
            bid(
                "guaranteed-p1",
                Source::GuaranteedLineItem { priority: 1 },
                1_000_000,
            ),
            bid("standard", Source::NonGuaranteedLineItem, 3_000_000),
            bid("exchange-tie", Source::Exchange, 3_000_000),
            bid("cheap-line-item", Source::NonGuaranteedLineItem, 100_000),
        ];
        let rules = AuctionRules {
            floor: Micros(500_000),
            auction_type: AuctionType::SecondPrice,
            ..Default::default()
        };
        let ranking = rank(&candidates, &rules);
        assert_eq!(
            ids(&candidates, &ranking),
            [
                "guaranteed-p1",
                "guaranteed-p2",
                "exchange-high",
                "standard",
                "exchange-tie",
                "cheap-line-item"
            ]
        );
        let prices: Vec<_> = ranking.ranked.iter().map(|r| r.clearing_price.0).collect();
        assert_eq!(
            prices,
            [1_000_000, 5_000_000, 3_000_000, 3_000_000, 500_000, 100_000]
        );
    }

    #[test]
    fn bid_adjustments_rank_and_price_on_the_adjusted_bid() {
        let discounted = Bid {
            adjustment: Factor(900_000),
            ..bid("seat-with-shortfall", Source::Exchange, 2_000_000)
        };
        let candidates = vec![
            discounted,
            bid("mediated", Source::MediatedNetwork, 1_900_000),
        ];
        let ranking = rank(&candidates, &AuctionRules::default());
        assert_eq!(
            ids(&candidates, &ranking),
            ["mediated", "seat-with-shortfall"]
        );
        assert_eq!(ranking.ranked[1].clearing_price, Micros(1_800_000));
        let floor = AuctionRules {
            floor: Micros(1_850_000),
            ..Default::default()
        };
        assert_eq!(rank(&candidates, &floor).dropped[0].1.code(), "below_floor");
    }

    #[test]
    fn drops_blocked_seats_and_creative_attributes() {
        let mut seat = bid("seat", Source::Exchange, 2_000_000);
        seat.seat = "bad-seat".into();
        let mut attribute = bid("attr", Source::Exchange, 2_000_000);
        attribute.attributes = vec![1, 3];
        let candidates = vec![seat, attribute, bid("ok", Source::Exchange, 1_000_000)];
        let blocked_seats = vec!["bad-seat".to_string()];
        let rules = AuctionRules {
            ad_quality: AdQuality {
                blocked_seats: &blocked_seats,
                blocked_attributes: &[3],
                ..Default::default()
            },
            ..Default::default()
        };
        let ranking = rank(&candidates, &rules);
        assert_eq!(ids(&candidates, &ranking), ["ok"]);
        let reasons: Vec<_> = ranking.dropped.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(
            reasons,
            [
                DropReason::Refused(Refusal::BlockedSeat("bad-seat".into())),
                DropReason::Refused(Refusal::BlockedAttribute(3))
            ]
        );
    }

    #[test]
    fn domain_and_category_nesting() {
        assert!(domain_is_within("example.com", "example.com"));
        assert!(domain_is_within("ads.Example.com", "example.com"));
        assert!(!domain_is_within("badexample.com", "example.com"));
        assert!(!domain_is_within("example.com", "ads.example.com"));
        assert!(category_is_within("IAB2-3", "IAB2"));
        assert!(category_is_within("IAB2", "IAB2"));
        assert!(!category_is_within("IAB22", "IAB2"));
        assert!(!category_is_within("IAB2", "IAB2-3"));
    }

    mod properties {
        use super::*;
        use crate::ad_quality::{AdQuality, Creative};
        use proptest::prelude::*;

        fn candidates() -> impl Strategy<Value = Vec<Bid>> {
            let source = prop_oneof![
                (1..4u32).prop_map(|priority| Source::GuaranteedLineItem { priority }),
                Just(Source::NonGuaranteedLineItem),
                Just(Source::ChainedOutcome),
                Just(Source::Exchange),
                Just(Source::BiddingNetwork),
                Just(Source::MediatedNetwork),
            ];
            let adjustment = prop_oneof![Just(1_000_000i64), 500_000..1_500_000i64];
            prop::collection::vec((0..20u8, source, 0..5_000_000i64, adjustment), 0..30).prop_map(
                |raw| {
                    raw.into_iter()
                        .enumerate()
                        .map(|(i, (id, source, micros, adjustment))| Bid {
                            adjustment: Factor(adjustment),
                            ..bid(&format!("{id}-{i}"), source, micros)
                        })
                        .collect()
                },
            )
        }

        proptest! {
            #[test]
            fn ranking_is_total_floor_respecting_and_order_independent(
                mut candidates in candidates(),
                floor in 0..3_000_000i64,
                second_price in any::<bool>(),
            ) {
                let rules = AuctionRules {
                    floor: Micros(floor),
                    auction_type: if second_price { AuctionType::SecondPrice } else { AuctionType::FirstPrice },
                    ..Default::default()
                };
                let ranking = rank(&candidates, &rules);
                prop_assert_eq!(ranking.ranked.len() + ranking.dropped.len(), candidates.len());
                let key = |index: usize| {
                    let c = &candidates[index];
                    (c.source, effective_bid(c), c.id.as_str())
                };
                for pair in ranking.ranked.windows(2) {
                    prop_assert_eq!(compare(key(pair[0].index), key(pair[1].index)), Ordering::Less);
                }
                for ranked in &ranking.ranked {
                    let candidate = &candidates[ranked.index];
                    let effective = effective_bid(candidate);
                    prop_assert!(ranked.clearing_price <= effective);
                    if candidate.source.is_fixed_price() {
                        prop_assert_eq!(ranked.clearing_price, candidate.bid);
                    } else {
                        prop_assert!(effective >= rules.floor);
                        prop_assert!(ranked.clearing_price >= rules.floor);
                    }
                }
                // Guaranteed line items rank above everything else; a non-guaranteed
                // one is only ever ranked below a strictly higher bid.
                let sources: Vec<Source> = ranking.ranked.iter().map(|r| candidates[r.index].source).collect();
                let first_other = sources
                    .iter()
                    .position(|s| !matches!(s, Source::GuaranteedLineItem { .. }))
                    .unwrap_or(sources.len());
                let guaranteed_after_others = sources[first_other..]
                    .iter()
                    .any(|s| matches!(s, Source::GuaranteedLineItem { .. }));
                prop_assert!(!guaranteed_after_others);
                // A chained outcome wins exactly when nothing outranks it: no guaranteed
                // line item, and no other candidate with a higher effective bid (or an
                // equal one from a non-guaranteed line item).
                if let Some(first) = ranking.ranked.first() {
                    for candidate in &candidates {
                        if candidate.source != Source::ChainedOutcome || candidate.bid <= Micros::ZERO {
                            continue;
                        }
                        let outranked = ranking.ranked.iter().any(|other| {
                            let other = &candidates[other.index];
                            !std::ptr::eq(other, candidate)
                                && match other.source {
                                    Source::GuaranteedLineItem { .. } => true,
                                    Source::NonGuaranteedLineItem => effective_bid(other) >= candidate.bid,
                                    Source::ChainedOutcome => (effective_bid(other), std::cmp::Reverse(&other.id)) > (candidate.bid, std::cmp::Reverse(&candidate.id)),
                                    _ => effective_bid(other) > candidate.bid,
                                }
                        });
                        let wins = std::ptr::eq(&candidates[first.index], candidate);
                        prop_assert_eq!(wins, !outranked);
                    }
                }
                for (position, ranked) in ranking.ranked.iter().enumerate() {
                    if candidates[ranked.index].source == Source::NonGuaranteedLineItem {
                        for above in &ranking.ranked[first_other..position] {
                            prop_assert!(effective_bid(&candidates[above.index]) > candidates[ranked.index].bid);
                        }
                    }
                }
                let order = ids(&candidates, &ranking);
                candidates.reverse();
                let reversed = rank(&candidates, &rules);
                prop_assert_eq!(order, ids(&candidates, &reversed));
            }

            /// The money-path invariants, whatever the source: no ranked candidate fails
            /// the filters (a waterfall network's ad is judged when it answers), none
            /// serves below the floor of its terms (the deal's for a deal bid), a
            /// private auction ranks only deal bids among auction demand, a network
            /// pays its bid, a live bid is at least its minimum, and a chained outcome
            /// that selected no ad never ranks.
            #[test]
            fn no_ranked_candidate_breaks_a_rule_of_the_publisher(
                raw in prop::collection::vec(
                    (
                        prop_oneof![
                            Just(Source::GuaranteedLineItem { priority: 1 }),
                            Just(Source::NonGuaranteedLineItem),
                            Just(Source::ChainedOutcome),
                            Just(Source::Exchange),
                            Just(Source::BiddingNetwork),
                            Just(Source::MediatedNetwork),
                        ],
                        0..4_000_000i64,
                        prop_oneof![Just(""), Just("bad.example"), Just("x.bad.example"), Just("good.example")],
                        prop_oneof![Just(""), Just("IAB25"), Just("IAB25-3"), Just("IAB2")],
                        prop_oneof![Just(""), Just("d1"), Just("d2"), Just("unknown-deal")],
                        prop_oneof![Just("s1"), Just("s2"), Just("blocked-seat")],
                        (any::<bool>(), 0..3_000_000i64, prop_oneof![Just(1_000_000i64), 500_000..1_500_000i64]),
                    ),
                    0..25,
                ),
                floor in 0..2_000_000i64,
                deal_floors in (0..3_000_000i64, 0..3_000_000i64),
                pricing in prop_oneof![Just(DealPricing::Inherit), Just(DealPricing::FirstPrice), Just(DealPricing::SecondPrice), Just(DealPricing::Fixed)],
                private_auction in any::<bool>(),
                second_price in any::<bool>(),
                mediated_sets_second_price in any::<bool>(),
                block_unknown in any::<bool>(),
                dsa_required in any::<bool>(),
                dsa_of in proptest::collection::vec(any::<bool>(), 25),
            ) {
                let candidates: Vec<Bid> = raw
                    .into_iter()
                    .enumerate()
                    .map(|(i, (source, micros, domain, category, deal, seat, (filled, minimum, adjustment)))| Bid {
                        adomains: if domain.is_empty() { vec![] } else { vec![domain.to_string()] },
                        categories: if category.is_empty() { vec![] } else { vec![category.to_string()] },
                        dealid: deal.to_string(),
                        seat: seat.to_string(),
                        filled: filled || source != Source::ChainedOutcome,
                        minimum: Micros(minimum),
                        adjustment: Factor(adjustment),
                        dsa: dsa_of[i],
                        ..bid(&format!("c{i}"), source, micros)
                    })
                    .collect();
                let deals = vec![
                    Deal { id: "d1".into(), floor: Micros(deal_floors.0), pricing, wseats: vec!["s1".into()], wadomains: vec![] },
                    Deal { id: "d2".into(), floor: Micros(deal_floors.1), pricing: DealPricing::Inherit, wseats: vec![], wadomains: vec!["good.example".into()] },
                ];
                let blocked_adomains = vec!["bad.example".to_string()];
                let blocked_categories = vec!["IAB25".to_string()];
                let blocked_seats = vec!["blocked-seat".to_string()];
                let rules = AuctionRules {
                    floor: Micros(floor),
                    auction_type: if second_price { AuctionType::SecondPrice } else { AuctionType::FirstPrice },
                    ad_quality: AdQuality {
                        blocked_adomains: &blocked_adomains,
                        blocked_categories: &blocked_categories,
                        blocked_seats: &blocked_seats,
                        block_unknown_adomain: block_unknown,
                        dsa_required,
                        ..Default::default()
                    },
                    deals: &deals,
                    private_auction,
                    mediated_sets_second_price,
                };
                let ranking = rank(&candidates, &rules);
                prop_assert_eq!(ranking.ranked.len() + ranking.dropped.len(), candidates.len());
                for ranked in &ranking.ranked {
                    let candidate = &candidates[ranked.index];
                    let source = candidate.source;
                    let effective = effective_bid(candidate);
                    prop_assert!(candidate.filled, "an unfilled outcome ranked");
                    if source != Source::MediatedNetwork {
                        let creative = Creative {
                            adomains: &candidate.adomains,
                            categories: &candidate.categories,
                            seat: &candidate.seat,
                            attributes: &candidate.attributes,
                            dsa_declared: candidate.dsa_declared(),
                        };
                        prop_assert_eq!(rules.ad_quality.check(&creative), None);
                    }
                    let terms = terms_of(candidate, &rules).unwrap();
                    match terms {
                        Terms::Fixed => prop_assert!(source.is_fixed_price()),
                        Terms::Open => prop_assert!(!private_auction, "an open bid ranked in a private auction"),
                        Terms::Deal(deal) => {
                            prop_assert_eq!(&deal.id, &candidate.dealid);
                            prop_assert!(deal.admits(&candidate.seat, &candidate.adomains));
                        }
                    }
                    if let Some(floor) = terms.floor(&rules) {
                        prop_assert!(effective >= floor);
                        prop_assert!(ranked.clearing_price >= floor);
                    }
                    prop_assert!(ranked.clearing_price <= effective);
                    if source.is_network() || source.is_fixed_price() {
                        prop_assert_eq!(ranked.clearing_price, effective);
                    }
                    if source == Source::BiddingNetwork {
                        prop_assert!(candidate.bid >= candidate.minimum);
                        prop_assert!(ranked.floor >= candidate.minimum);
                    }
                    if source.is_network() {
                        // An answer at the floor it is sent meets the floor once adjusted.
                        let floor = terms.floor(&rules).unwrap_or(Micros::ZERO);
                        prop_assert!(candidate.adjustment.apply(ranked.floor) >= floor);
                    }
                }
            }
        }
    }
}
