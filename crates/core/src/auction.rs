//! The auction: filters candidates by ad quality and floor, ranks the rest, and prices
//! each one for the case that it ends up serving (the waterfall may skip the leaders).
//!
//! It works on any candidate type through [`Bidder`], so services rank their wire types
//! in place and get back indices, with no copy per candidate.

use std::cmp::Ordering;
use std::fmt;

use crate::config::AuctionType;
use crate::money::{Factor, Micros};
pub use crate::targeting::domain_is_within;

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
}

/// The selling rule's side of the auction.
#[derive(Clone, Debug, Default)]
pub struct AuctionRules<'a> {
    pub floor: Micros,
    pub auction_type: AuctionType,
    pub blocked_adomains: &'a [String],
    pub blocked_categories: &'a [String],
    pub blocked_seats: &'a [String],
    pub blocked_attributes: &'a [i32],
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DropReason {
    NonPositiveBid,
    BelowFloor { floor: Micros },
    BlockedAdomain(String),
    BlockedCategory(String),
    BlockedSeat(String),
    BlockedAttribute(i32),
}

impl DropReason {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            DropReason::NonPositiveBid => "non_positive_bid",
            DropReason::BelowFloor { .. } => "below_floor",
            DropReason::BlockedAdomain(_) => "blocked_adomain",
            DropReason::BlockedCategory(_) => "blocked_category",
            DropReason::BlockedSeat(_) => "blocked_seat",
            DropReason::BlockedAttribute(_) => "blocked_attribute",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::NonPositiveBid => f.write_str("bid is zero"),
            DropReason::BelowFloor { floor } => write!(f, "bid is below the floor of {floor}"),
            DropReason::BlockedAdomain(domain) => {
                write!(f, "advertiser domain {domain} is blocked")
            }
            DropReason::BlockedCategory(cat) => write!(f, "category {cat} is blocked"),
            DropReason::BlockedSeat(seat) => write!(f, "buyer seat {seat} is blocked"),
            DropReason::BlockedAttribute(attr) => write!(f, "creative attribute {attr} is blocked"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ranked {
    /// Index into the candidates given to [`rank`].
    pub index: usize,
    /// What the candidate pays if it serves.
    pub clearing_price: Micros,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ranking {
    /// Best first.
    pub ranked: Vec<Ranked>,
    pub dropped: Vec<(usize, DropReason)>,
}

/// Ranks `candidates` under `rules`.
///
/// Every candidate competes with its effective bid: its bid times its bid adjustment
/// (line items and chained outcomes are not adjusted). Order: guaranteed line items
/// first (priority, then CPM); then by effective bid, equal bids going to a
/// non-guaranteed line item, then a chained outcome, then an exchange bid, then a
/// mediated bid; then the smaller id. It is a total order, so the ranking never depends
/// on input order. Clearing price: a line item or chained outcome pays its own price;
/// otherwise first price pays the effective bid, and second price the larger of the
/// floor and the next effective bid in rank order, never more than its own.
pub fn rank<B: Bidder>(candidates: &[B], rules: &AuctionRules<'_>) -> Ranking {
    let effective: Vec<Micros> = candidates.iter().map(effective_bid).collect();
    let mut ranking = Ranking::default();
    let mut eligible: Vec<usize> = Vec::with_capacity(candidates.len());
    for (index, candidate) in candidates.iter().enumerate() {
        match drop_reason(candidate, effective[index], rules) {
            Some(reason) => ranking.dropped.push((index, reason)),
            None => eligible.push(index),
        }
    }
    let key = |index: usize| {
        (
            candidates[index].source(),
            effective[index],
            candidates[index].id(),
        )
    };
    eligible.sort_by(|&a, &b| compare(key(a), key(b)));
    ranking.ranked = eligible
        .iter()
        .enumerate()
        .map(|(position, &index)| {
            let bid = effective[index];
            let clearing_price = match rules.auction_type {
                _ if candidates[index].source().is_fixed_price() => bid,
                AuctionType::FirstPrice => bid,
                AuctionType::SecondPrice => {
                    let next_bid = eligible
                        .get(position + 1)
                        .map_or(Micros::ZERO, |&next| effective[next]);
                    next_bid.max(rules.floor).min(bid)
                }
            };
            Ranked {
                index,
                clearing_price,
            }
        })
        .collect();
    ranking
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

fn drop_reason<B: Bidder>(
    candidate: &B,
    effective: Micros,
    rules: &AuctionRules<'_>,
) -> Option<DropReason> {
    if effective <= Micros::ZERO {
        return Some(DropReason::NonPositiveBid);
    }
    if effective < rules.floor && !candidate.source().is_fixed_price() {
        return Some(DropReason::BelowFloor { floor: rules.floor });
    }
    let seat = candidate.seat();
    if !seat.is_empty() && rules.blocked_seats.iter().any(|s| s == seat) {
        return Some(DropReason::BlockedSeat(seat.to_string()));
    }
    if let Some(attribute) = candidate
        .attributes()
        .iter()
        .find(|a| rules.blocked_attributes.contains(a))
    {
        return Some(DropReason::BlockedAttribute(*attribute));
    }
    if let Some(domain) = candidate.adomains().iter().find(|d| {
        rules
            .blocked_adomains
            .iter()
            .any(|b| domain_is_within(d, b))
    }) {
        return Some(DropReason::BlockedAdomain(domain.clone()));
    }
    if let Some(category) = candidate.categories().iter().find(|c| {
        rules
            .blocked_categories
            .iter()
            .any(|b| category_is_within(c, b))
    }) {
        return Some(DropReason::BlockedCategory(category.clone()));
    }
    None
}

/// IAB content categories nest by suffix: `IAB2-3` is within `IAB2`.
pub fn category_is_within(category: &str, blocked: &str) -> bool {
    category.eq_ignore_ascii_case(blocked)
        || (category.len() > blocked.len()
            && category.as_bytes()[blocked.len()] == b'-'
            && category[..blocked.len()].eq_ignore_ascii_case(blocked))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            blocked_adomains: &blocked_adomains,
            blocked_categories: &blocked_categories,
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
            blocked_seats: &blocked_seats,
            blocked_attributes: &[3],
            ..Default::default()
        };
        let ranking = rank(&candidates, &rules);
        assert_eq!(ids(&candidates, &ranking), ["ok"]);
        let reasons: Vec<_> = ranking.dropped.iter().map(|(_, r)| r.clone()).collect();
        assert_eq!(
            reasons,
            [
                DropReason::BlockedSeat("bad-seat".into()),
                DropReason::BlockedAttribute(3)
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
        }
    }
}
