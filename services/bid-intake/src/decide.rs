//! The decision flow: normalise, evaluate targeting, rank, walk the waterfall (or hand
//! the chain to the client), store the selections, answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cascade_core::report::{Metric, counts_at};
use cascade_proto::auction::v1::auction_client::AuctionClient;
use cascade_proto::auction::v1::{AuctionImp, Candidate, RankRequest, RankedCandidate};
use cascade_proto::decision::v1::bid_intake_server::BidIntake;
use cascade_proto::decision::v1::{
    Attempt, ChainNode, DecideRequest, DecideResponse, ExecutionMode, Explanation, ImpDecision,
    NoFillReason, ReportEventRequest, ReportEventResponse, SourceKind, Winner,
};
use cascade_proto::networkcaller::v1::network_caller_client::NetworkCallerClient;
use cascade_proto::networkcaller::v1::{
    BidAsk, BiddingImp, CollectBidsRequest, RunWaterfallRequest, WaterfallImp,
};
use cascade_proto::openrtb::v1::BidRequest;
use cascade_proto::targeting::v1::targeting_evaluation_client::TargetingEvaluationClient;
use cascade_proto::targeting::v1::{
    EligibleLineItem, EligibleMediatedBid, EvaluateRequest, EvaluateResponse, ImpEvaluation,
};
use cascade_server::balance::BalancedChannel;
use cascade_server::deadline::{Deadline, caller_timeout};
use cascade_server::telemetry::Traced;
use cascade_state::{ReportRecorder, Selection, SelectionWriter, SnapshotCell, Store};
use tonic::{Request, Response, Status};

use crate::error::DecideError;
use crate::normalize::{Normalized, normalize};

const AUCTION_CURRENCY: &str = cascade_core::money::AUCTION_CURRENCY;

pub struct DecisionService {
    pub(crate) snapshot: Arc<SnapshotCell>,
    pub(crate) store: Arc<dyn Store>,
    /// Where selections are written: the store, or its backlog while it is down.
    pub(crate) selections: Arc<SelectionWriter>,
    /// Wins of network demand, for the network performance report.
    pub(crate) report: Arc<ReportRecorder>,
    pub(crate) targeting: TargetingEvaluationClient<Traced<BalancedChannel>>,
    pub(crate) auction: AuctionClient<Traced<BalancedChannel>>,
    pub(crate) network_caller: NetworkCallerClient<Traced<BalancedChannel>>,
    pub(crate) default_budget: Duration,
    pub(crate) max_budget: Duration,
    pub(crate) bidding_budget: Duration,
    pub(crate) response_reserve: Duration,
    pub(crate) selection_ttl: Duration,
}

#[tonic::async_trait]
impl BidIntake for DecisionService {
    async fn decide(
        &self,
        request: Request<DecideRequest>,
    ) -> Result<Response<DecideResponse>, Status> {
        use tracing::Instrument as _;
        let caller_timeout = caller_timeout(request.metadata());
        let request = request.into_inner();
        let span = decision_span(&request);
        let response = self
            .decide(request, caller_timeout)
            .instrument(span.clone())
            .await;
        record_outcome(&span, &response);
        Ok(Response::new(response?))
    }

    async fn report_event(
        &self,
        request: Request<ReportEventRequest>,
    ) -> Result<Response<ReportEventResponse>, Status> {
        let response =
            crate::events::report_event(self.store.as_ref(), request.into_inner()).await?;
        Ok(Response::new(response))
    }
}

/// The span of one decision, with its key facts; disabled when traces are not exported.
fn decision_span(request: &DecideRequest) -> tracing::Span {
    if !cascade_server::telemetry::exporting() {
        return tracing::Span::none();
    }
    let bid_request = request.request.as_ref();
    let publisher = bid_request
        .and_then(|r| {
            r.site
                .as_ref()
                .and_then(|s| s.publisher.as_ref())
                .or_else(|| r.app.as_ref().and_then(|a| a.publisher.as_ref()))
        })
        .map(|p| p.id.as_str())
        .unwrap_or_default();
    tracing::info_span!(
        "decide",
        request.id = bid_request.map(|r| r.id.as_str()).unwrap_or_default(),
        account.id = publisher,
        imps = bid_request.map_or(0, |r| r.imp.len()),
        exchange_bids = request.exchange_bids.len(),
        chained_selections = request.chained_selection_ids.len(),
        config.version = tracing::field::Empty,
        winners = tracing::field::Empty,
        winning_sources = tracing::field::Empty,
        error = tracing::field::Empty,
    )
}

fn record_outcome(span: &tracing::Span, response: &Result<DecideResponse, DecideError>) {
    if span.is_disabled() {
        return;
    }
    match response {
        Ok(response) => {
            let winners: Vec<String> = response
                .decisions
                .iter()
                .filter_map(|d| d.winner.as_ref())
                .map(|w| format!("{}:{}", w.source().as_str_name(), w.price_micros))
                .collect();
            span.record("config.version", response.config_version);
            span.record("winners", winners.len());
            span.record("winning_sources", winners.join(",").as_str());
        }
        Err(error) => {
            span.record("error", error.to_string().as_str());
        }
    }
}

/// Where one impression stands while the decision is made.
struct Slot {
    decision: ImpDecision,
    /// Set once the auction ranked its candidates and it still needs the waterfall.
    ranked: Vec<RankedCandidate>,
}

impl DecisionService {
    async fn decide(
        &self,
        request: DecideRequest,
        caller_timeout: Option<Duration>,
    ) -> Result<DecideResponse, DecideError> {
        let snapshot = self.snapshot.load().ok_or(DecideError::NotReady)?;
        let mut normalized = normalize(&request, snapshot.rates())?;
        let budget = [
            caller_timeout,
            normalized.tmax_ms.map(Duration::from_millis),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(self.default_budget)
        .min(self.max_budget);
        let deadline = Deadline::after(budget.saturating_sub(self.response_reserve));
        let mut chained = self
            .chained_candidates(&request.chained_selection_ids, &normalized)
            .await?;
        let debug = request.debug;
        let client_mode = request.mode() == ExecutionMode::Client;
        let bid_request = request.request.unwrap_or_default();

        let evaluation = self
            .targeting
            .clone()
            .evaluate(deadline.request(EvaluateRequest {
                account_id: normalized.account_id.clone(),
                imps: std::mem::take(&mut normalized.imps),
                context: Some(std::mem::take(&mut normalized.context)),
                debug,
            }))
            .await
            .map_err(|status| DecideError::downstream("targeting-evaluation", status))?
            .into_inner();

        let mut live_bids = self
            .collect_live_bids(&evaluation, &bid_request, deadline)
            .await?;
        let seat_adjustments: HashMap<&str, i64> = evaluation
            .seat_adjustments
            .iter()
            .map(|a| (a.seat.as_str(), a.factor_ppm))
            .collect();
        let mut slots: Vec<Slot> = Vec::with_capacity(evaluation.imps.len());
        let mut auction_imps = Vec::new();
        let mut auction_slots = Vec::new();
        let exchange_candidates = std::mem::take(&mut normalized.exchange_candidates);
        for (index, (mut evaluated, mut exchange)) in evaluation
            .imps
            .into_iter()
            .zip(exchange_candidates)
            .enumerate()
        {
            for candidate in &mut exchange {
                if let Some(ppm) = seat_adjustments.get(candidate.seat.as_str()) {
                    candidate.bid_adjustment_ppm = *ppm;
                }
            }
            let (bidding, bidding_attempts) =
                live_bids.remove(&evaluated.impid).unwrap_or_default();
            exchange.extend(bidding);
            let mut decision = ImpDecision {
                impid: evaluated.impid.clone(),
                ..Default::default()
            };
            if debug {
                decision.explanation = Some(explanation(&mut evaluated, bidding_attempts, budget));
            }
            let chained = std::mem::take(&mut chained[index]);
            match auction_imp(
                evaluation.account_known,
                evaluated,
                exchange,
                chained,
                &normalized,
                index,
            ) {
                Ok(imp) => {
                    auction_slots.push(slots.len());
                    auction_imps.push(imp);
                }
                Err(reason) => decision.no_fill_reason = reason as i32,
            }
            slots.push(Slot {
                decision,
                ranked: Vec::new(),
            });
        }

        self.rank(&mut slots, auction_imps, auction_slots, deadline)
            .await?;

        let mut selections = Vec::new();
        if client_mode {
            for slot in &mut slots {
                self.hand_chain_to_client(
                    slot,
                    &snapshot,
                    &bid_request.id,
                    &normalized.account_id,
                    &mut selections,
                );
            }
        } else {
            self.walk_waterfalls(&mut slots, &bid_request, deadline)
                .await?;
            selections = self.record_winners(&mut slots, &bid_request.id, &normalized.account_id);
        }
        if !selections.is_empty() {
            self.selections
                .write(selections, deadline.remaining())
                .await?;
        }
        Ok(DecideResponse {
            id: bid_request.id,
            decisions: slots.into_iter().map(|slot| slot.decision).collect(),
            config_version: evaluation.config_version,
        })
    }

    /// Ranks every impression that has candidates, in one call to the auction.
    async fn rank(
        &self,
        slots: &mut [Slot],
        auction_imps: Vec<AuctionImp>,
        auction_slots: Vec<usize>,
        deadline: Deadline,
    ) -> Result<(), DecideError> {
        if auction_imps.is_empty() {
            return Ok(());
        }
        let ranking = self
            .auction
            .clone()
            .rank(deadline.request(RankRequest { imps: auction_imps }))
            .await
            .map_err(|status| DecideError::downstream("auction", status))?
            .into_inner();
        for (slot_index, ranked_imp) in auction_slots.into_iter().zip(ranking.imps) {
            let slot = &mut slots[slot_index];
            if let Some(explanation) = slot.decision.explanation.as_mut() {
                explanation.dropped = ranked_imp.dropped;
            }
            if ranked_imp.ranked.is_empty() {
                slot.decision.no_fill_reason = NoFillReason::NoEligibleDemand as i32;
            }
            slot.ranked = ranked_imp.ranked;
        }
        Ok(())
    }

    /// A selection for every new winner. A chained outcome that won keeps its own.
    fn record_winners(
        &self,
        slots: &mut [Slot],
        request_id: &str,
        account_id: &str,
    ) -> Vec<Selection> {
        let mut selections = Vec::new();
        for slot in slots {
            let Some(winner) = slot.decision.winner.as_mut() else {
                continue;
            };
            if winner.source() == SourceKind::ChainedOutcome {
                winner.selection_id = winner.bid_id.clone();
                continue;
            }
            let selection = self.selection(request_id, &slot.decision.impid, account_id, winner);
            winner.selection_id = selection.id.clone();
            if !selection.network_id.is_empty() {
                self.report.count(counts_at(
                    cascade_state::now_unix_seconds(),
                    &selection.network_id,
                    &selection.bid_id,
                    [(Metric::Wins, 1)],
                ));
            }
            selections.push(selection);
        }
        selections
    }

    /// Fills every impression whose best candidate is demand in hand directly, and asks
    /// network-caller to walk the others (one call for all, skipped when none needs it).
    async fn walk_waterfalls(
        &self,
        slots: &mut [Slot],
        bid_request: &cascade_proto::openrtb::v1::BidRequest,
        deadline: Deadline,
    ) -> Result<(), DecideError> {
        let mut waterfall_imps = Vec::new();
        let mut waterfall_slots = Vec::new();
        for (index, slot) in slots.iter_mut().enumerate() {
            let Some(best) = slot.ranked.first() else {
                continue;
            };
            let needs_call = best
                .candidate
                .as_ref()
                .is_some_and(|c| c.source() == SourceKind::MediatedNetwork);
            if needs_call {
                waterfall_slots.push(index);
                waterfall_imps.push(WaterfallImp {
                    impid: slot.decision.impid.clone(),
                    ranked: std::mem::take(&mut slot.ranked),
                });
            } else {
                let best = slot.ranked.swap_remove(0);
                slot.decision.winner = Some(winner_from(best));
            }
        }
        if waterfall_imps.is_empty() {
            return Ok(());
        }
        let results = self
            .network_caller
            .clone()
            .run_waterfall(deadline.request(RunWaterfallRequest {
                request: Some(bid_request.clone()),
                imps: waterfall_imps,
            }))
            .await
            .map_err(|status| DecideError::downstream("network-caller", status))?
            .into_inner();
        for (index, result) in waterfall_slots.into_iter().zip(results.imps) {
            let decision = &mut slots[index].decision;
            if let Some(explanation) = decision.explanation.as_mut() {
                explanation.attempts.extend(result.attempts);
            }
            match result.winner {
                Some(winner) => decision.winner = Some(winner_from(winner)),
                None if result.deadline_exceeded => {
                    decision.no_fill_reason = NoFillReason::DeadlineExceeded as i32;
                }
                None => decision.no_fill_reason = NoFillReason::WaterfallExhausted as i32,
            }
        }
        Ok(())
    }

    /// CLIENT mode: the ranked chain, each node with its own selection id so the client
    /// can report what happened at it.
    fn hand_chain_to_client(
        &self,
        slot: &mut Slot,
        snapshot: &cascade_core::snapshot::Snapshot,
        request_id: &str,
        account_id: &str,
        selections: &mut Vec<Selection>,
    ) {
        for ranked in std::mem::take(&mut slot.ranked) {
            let Some(candidate) = ranked.candidate else {
                continue;
            };
            let chained_selection = (candidate.source() == SourceKind::ChainedOutcome)
                .then(|| candidate.bid_id.clone());
            let mut node = ChainNode {
                source: candidate.source,
                timeout_ms: snapshot
                    .network(&candidate.network_id)
                    .map_or(0, |n| n.timeout_ms),
                network_id: candidate.network_id,
                bid_id: candidate.bid_id,
                placement_id: candidate.placement_id,
                price_micros: ranked.clearing_price_micros,
                cur: AUCTION_CURRENCY.to_string(),
                adm: candidate.adm,
                nurl: candidate.nurl,
                ..Default::default()
            };
            if let Some(selection_id) = chained_selection {
                node.selection_id = selection_id;
                slot.decision.chain.push(node);
                continue;
            }
            let selection = Selection {
                id: new_selection_id(),
                request_id: request_id.to_string(),
                impid: slot.decision.impid.clone(),
                account_id: account_id.to_string(),
                source: node.source().as_str_name().to_string(),
                network_id: node.network_id.clone(),
                seat: candidate.seat,
                bid_id: node.bid_id.clone(),
                price_micros: node.price_micros,
                ttl: self.selection_ttl,
            };
            node.selection_id = selection.id.clone();
            selections.push(selection);
            slot.decision.chain.push(node);
        }
    }

    /// Asks the bidding networks of every impression that has some for a live bid, in
    /// one call to network-caller, within the bidding budget. Returns, per impression id,
    /// the bids (candidates with their ads) and the attempts.
    async fn collect_live_bids(
        &self,
        evaluation: &EvaluateResponse,
        bid_request: &BidRequest,
        deadline: Deadline,
    ) -> Result<HashMap<String, (Vec<Candidate>, Vec<Attempt>)>, DecideError> {
        let imps: Vec<BiddingImp> = evaluation
            .imps
            .iter()
            .filter_map(|imp| {
                let rule = imp.applied_rule.as_ref()?;
                let asks: Vec<BidAsk> = imp
                    .bidding_bids
                    .iter()
                    .map(|bid| BidAsk {
                        bid_id: bid.bid_id.clone(),
                        network_id: bid.network_id.clone(),
                        placement_id: bid.placement_id.clone(),
                        floor_micros: bid.cpm_micros.max(rule.floor_micros),
                        bid_adjustment_ppm: bid.bid_adjustment_ppm,
                    })
                    .collect();
                (!asks.is_empty()).then(|| BiddingImp {
                    impid: imp.impid.clone(),
                    asks,
                })
            })
            .collect();
        if imps.is_empty() {
            return Ok(HashMap::new());
        }
        let bidding_deadline = Deadline::after(deadline.remaining().min(self.bidding_budget));
        let response = self
            .network_caller
            .clone()
            .collect_bids(bidding_deadline.request(CollectBidsRequest {
                request: Some(bid_request.clone()),
                imps,
            }))
            .await
            .map_err(|status| DecideError::downstream("network-caller (bidding)", status))?
            .into_inner();
        Ok(response
            .imps
            .into_iter()
            .map(|imp| (imp.impid, (imp.bids, imp.attempts)))
            .collect())
    }

    /// The chained selections as candidates of the impressions they were made for, read
    /// in one batched round trip. Their price is the stored one, never the client's.
    async fn chained_candidates(
        &self,
        ids: &[String],
        normalized: &Normalized,
    ) -> Result<Vec<Vec<Candidate>>, DecideError> {
        let mut per_imp = vec![Vec::new(); normalized.imps.len()];
        if ids.is_empty() {
            return Ok(per_imp);
        }
        let selections = self.store.get_selections(ids).await?;
        for (i, selection) in selections.into_iter().enumerate() {
            let field = format!("chained_selection_ids[{i}]");
            let Some(selection) = selection else {
                return Err(DecideError::NotFound {
                    field,
                    message: format!("no selection {:?} (unknown or expired)", ids[i]),
                });
            };
            if selection.account_id != normalized.account_id {
                return Err(DecideError::invalid(
                    field,
                    "the selection belongs to another publisher",
                ));
            }
            let imp = match normalized
                .imps
                .iter()
                .position(|imp| imp.impid == selection.impid)
            {
                Some(imp) => imp,
                None if normalized.imps.len() == 1 => 0,
                None => {
                    return Err(DecideError::invalid(
                        field,
                        format!(
                            "the selection was made for impression {:?}, which this request does not have",
                            selection.impid
                        ),
                    ));
                }
            };
            per_imp[imp].push(Candidate {
                id: format!("chained:{}", selection.id),
                source: SourceKind::ChainedOutcome as i32,
                bid_micros: selection.price_micros,
                seat: selection.seat,
                network_id: selection.network_id,
                bid_id: selection.id,
                ..Default::default()
            });
        }
        Ok(per_imp)
    }

    fn selection(
        &self,
        request_id: &str,
        impid: &str,
        account_id: &str,
        winner: &Winner,
    ) -> Selection {
        Selection {
            id: new_selection_id(),
            request_id: request_id.to_string(),
            impid: impid.to_string(),
            account_id: account_id.to_string(),
            source: winner.source().as_str_name().to_string(),
            network_id: winner.network_id.clone(),
            seat: winner.seat.clone(),
            bid_id: winner.bid_id.clone(),
            price_micros: winner.price_micros,
            ttl: self.selection_ttl,
        }
    }
}

/// What targeting and the bidding phase say about an impression, for `debug`.
fn explanation(
    evaluated: &mut ImpEvaluation,
    bidding_attempts: Vec<Attempt>,
    budget: Duration,
) -> Explanation {
    let rule = evaluated.applied_rule.as_ref();
    Explanation {
        applied_rule_id: rule.map(|r| r.rule_id.clone()).unwrap_or_default(),
        rule_account_id: rule.map(|r| r.account_id.clone()).unwrap_or_default(),
        rule_inherited: rule.is_some_and(|r| r.inherited),
        floor_micros: rule.map_or(0, |r| r.floor_micros),
        matched_rule_ids: std::mem::take(&mut evaluated.matched_rule_ids),
        excluded: std::mem::take(&mut evaluated.excluded),
        attempts: bidding_attempts,
        budget_ms: u32::try_from(budget.as_millis()).unwrap_or(u32::MAX),
        ..Default::default()
    }
}

fn new_selection_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// What one impression brings to the auction, or why it has nothing to bring. With a
/// selling rule: exchange bids, mediated bids, line items and chained outcomes under the
/// rule's floor and filters plus the request's own. Without one, no auction demand may
/// serve: only line items and chained outcomes, under the request's filters.
fn auction_imp(
    account_known: bool,
    evaluated: ImpEvaluation,
    exchange: Vec<Candidate>,
    chained: Vec<Candidate>,
    normalized: &Normalized,
    index: usize,
) -> Result<AuctionImp, NoFillReason> {
    if !account_known {
        return Err(NoFillReason::UnknownAccount);
    }
    let line_items = evaluated
        .line_items
        .into_iter()
        .map(line_item_candidate)
        .chain(chained);
    let imp_blocked_attributes = &normalized.blocked_attributes[index];
    match evaluated.applied_rule {
        Some(rule) => {
            let mut candidates = exchange;
            candidates.extend(evaluated.mediated_bids.into_iter().map(mediated_candidate));
            candidates.extend(line_items);
            Ok(AuctionImp {
                impid: evaluated.impid,
                floor_micros: rule.floor_micros,
                auction_type: rule.auction_type,
                blocked_adomains: merged(rule.blocked_adomains, &normalized.blocked_adomains),
                blocked_categories: merged(rule.blocked_categories, &normalized.blocked_categories),
                blocked_seats: merged(rule.blocked_seats, &normalized.blocked_seats),
                blocked_attributes: merged(rule.blocked_attributes, imp_blocked_attributes),
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
                blocked_adomains: normalized.blocked_adomains.clone(),
                blocked_categories: normalized.blocked_categories.clone(),
                blocked_seats: normalized.blocked_seats.clone(),
                blocked_attributes: imp_blocked_attributes.clone(),
                candidates,
                ..Default::default()
            })
        }
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

fn winner_from(ranked: RankedCandidate) -> Winner {
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
    }
}

/// The rule's filters plus the request's own (`bcat`, `badv`, `bseat`, `battr`).
fn merged<T: Clone>(mut from_rule: Vec<T>, from_request: &[T]) -> Vec<T> {
    from_rule.extend(from_request.iter().cloned());
    from_rule
}
