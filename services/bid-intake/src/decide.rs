//! The decision flow: normalise, evaluate targeting, rank, walk the waterfall (or hand
//! the chain to the client), store the selections, answer.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cascade_core::notice::loss;
use cascade_core::report::{Metric, counts_at};
use cascade_networks::notices::{NoticeKind, Notifier};
use cascade_proto::auction::v1::auction_client::AuctionClient;
use cascade_proto::auction::v1::{AdQuality, AuctionImp, Candidate, RankRequest, RankedCandidate};
use cascade_proto::decision::v1::bid_intake_server::BidIntake;
use cascade_proto::decision::v1::{
    Attempt, AttemptOutcome, ChainNode, DecideRequest, DecideResponse, DroppedCandidate,
    ExecutionMode, Explanation, ImpDecision, NoFillReason, ReportEventRequest, ReportEventResponse,
    SourceKind, Winner,
};
use cascade_proto::networkcaller::v1::network_caller_client::NetworkCallerClient;
use cascade_proto::networkcaller::v1::{CollectBidsRequest, RunWaterfallRequest, WaterfallImp};
use cascade_proto::openrtb::v1::{BidRequest, SupplyChainNode};

use crate::notices::{self, BidNotices, NoticeSettings};
use crate::outcomes::{self, Outcome};
use crate::plan;
use crate::record::{self, Decided, ImpRecord};
use cascade_log::DecisionLog;

/// What network-caller builds every network's request from.
struct NetworkEdge {
    /// Under overload no network is called: the demand in hand serves.
    degraded: bool,
    /// The request as the OpenRTB JSON document the gateway sent (members outside 2.6
    /// kept); empty when it came typed.
    openrtb_json: bytes::Bytes,
    /// The account's supply-chain node, when it appends one.
    schain_node: Option<SupplyChainNode>,
    /// The request's privacy signals, decoded once here: network-caller is sent each
    /// network's verdict, never the strings.
    signals: cascade_core::privacy::Signals,
    /// The configuration the decision runs on (the networks' GVL ids).
    snapshot: Arc<cascade_core::snapshot::Snapshot>,
}

impl NetworkEdge {
    /// What the network `network_id` may be sent, by its GVL id.
    fn verdict(&self, network_id: &str) -> cascade_core::privacy::Verdict {
        let gvl_id = self
            .snapshot
            .network(network_id)
            .and_then(|network| network.gvl_id);
        self.signals.permissions(gvl_id)
    }

    /// The privacy verdict of each of `networks` (by id), for network-caller.
    fn privacy<'a>(
        &self,
        networks: impl IntoIterator<Item = &'a str>,
    ) -> HashMap<String, cascade_proto::decision::v1::PrivacyVerdict> {
        let mut verdicts = HashMap::new();
        for id in networks {
            if verdicts.contains_key(id) {
                continue;
            }
            verdicts.insert(
                id.to_string(),
                cascade_server::wire::privacy_verdict(&self.verdict(id)),
            );
        }
        verdicts
    }
}
use cascade_proto::prost::Message as _;
use cascade_proto::targeting::v1::targeting_evaluation_client::TargetingEvaluationClient;
use cascade_proto::targeting::v1::{EvaluateRequest, EvaluateResponse, ImpEvaluation};
use cascade_server::admission::{Admission, Judged, Verdict};
use cascade_server::channel::BalancedChannel;
use cascade_server::deadline::{CallTiming, Deadline};
use cascade_server::telemetry::Traced;
use cascade_state::{
    Answer, AnswerKey, ReportRecorder, Selection, SelectionWriter, SnapshotCell, Store,
};
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
    pub(crate) selection_write_wait: Duration,
    pub(crate) fallback_reserve: Duration,
    pub(crate) selection_ttl: Duration,
    /// The longest a selection is kept, whatever the ad's `exp`.
    pub(crate) max_selection_ttl: Duration,
    pub(crate) notifier: Notifier,
    pub(crate) notices: NoticeSettings,
    /// The record of every decision and event.
    pub(crate) log: DecisionLog,
    /// Whether to decide, degrade or shed a decision, by its publisher's share.
    pub(crate) admission: Admission,
}

#[tonic::async_trait]
impl BidIntake for DecisionService {
    async fn decide(
        &self,
        request: Request<DecideRequest>,
    ) -> Result<Response<DecideResponse>, Status> {
        use tracing::Instrument as _;
        // The caller's clock (and the deadline layer's) runs from the call's arrival, not
        // from when the request has been read and normalized.
        let timing = CallTiming::of(&request);
        let retry = is_retry(request.metadata());
        let judged = request.extensions().get::<Judged>().copied();
        let mut request = request.into_inner();
        let openrtb_json = match crate::normalize::openrtb_document(&mut request) {
            Ok(openrtb_json) => openrtb_json,
            Err(error) => {
                outcomes::count(Outcome::Invalid);
                return Err(error.into());
            }
        };
        // Shed before any work (unless judged in front already, by the publisher the
        // gateway named); degraded, the decision calls no network.
        let verdict = match judged {
            Some(Judged(verdict)) => verdict,
            None => self.admission.verdict(publisher_id(&request)),
        };
        let degraded = match verdict {
            Verdict::Shed => {
                outcomes::count(Outcome::Shed);
                return Err(cascade_server::admission::overloaded());
            }
            Verdict::Degrade => true,
            Verdict::Admit => false,
        };
        let span = decision_span(&request);
        // Kept to log a decision that fails.
        let identity = self.log.enabled().then(|| {
            let request_id = request.request.as_ref().map(|r| r.id.clone());
            (
                request_id.unwrap_or_default(),
                publisher_id(&request).to_string(),
            )
        });
        let response = self
            .decide(
                request,
                openrtb_json,
                Asked {
                    received: timing.arrived,
                    caller_budget: timing.caller_budget(),
                    degraded,
                    retry,
                },
            )
            .instrument(span.clone())
            .await;
        record_outcome(&span, &response);
        match response {
            Ok(Answered::Decided(response)) => {
                outcomes::count_answer(&response);
                Ok(Response::new(response))
            }
            Ok(Answered::Replayed(response)) => {
                outcomes::count(Outcome::Replayed);
                Ok(Response::new(response))
            }
            Err(error) => {
                let status = Status::from(error);
                outcomes::count(Outcome::of_refusal(status.code()));
                if let Some((request_id, account_id)) = identity {
                    self.log.append(record::failed_decision_entry(
                        request_id, account_id, &status,
                    ));
                }
                Err(status)
            }
        }
    }

    async fn report_event(
        &self,
        request: Request<ReportEventRequest>,
    ) -> Result<Response<ReportEventResponse>, Status> {
        let response = crate::events::report_event(
            self.store.as_ref(),
            &self.selections,
            &self.report,
            &self.log,
            request.into_inner(),
        )
        .await?;
        Ok(Response::new(response))
    }
}

/// The span of one decision, with its key facts; disabled when traces are not exported.
fn decision_span(request: &DecideRequest) -> tracing::Span {
    if !cascade_server::telemetry::exporting() {
        return tracing::Span::none();
    }
    let bid_request = request.request.as_ref();
    let publisher = publisher_id(request);
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    tracing::info_span!(
        "decide",
        otel.status_code = tracing::field::Empty,
        otel.status_description = tracing::field::Empty,
        cascade.request.id = bid_request.map(|r| r.id.as_str()).unwrap_or_default(),
        cascade.account.id = publisher,
        cascade.imps = count(bid_request.map_or(0, |r| r.imp.len())),
        cascade.exchange_bids = count(request.exchange_bids.len()),
        cascade.chained_selections = count(request.chained_selection_ids.len()),
        cascade.config.version = tracing::field::Empty,
        cascade.budget_ms = tracing::field::Empty,
        cascade.winners = tracing::field::Empty,
        cascade.winning_sources = tracing::field::Empty,
    )
}

/// Whether this call retries an earlier one: gRPC's own retries say so with
/// `grpc-previous-rpc-attempts` (gRFC A6); a gateway retrying by hand sets
/// `cascade-retry`.
fn is_retry(metadata: &tonic::metadata::MetadataMap) -> bool {
    metadata.get(RETRY_HEADER).is_some()
        || metadata
            .get("grpc-previous-rpc-attempts")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u32>().ok())
            .is_some_and(|attempts| attempts > 0)
}

/// The header a gateway sets on a Decide it retries by hand.
pub const RETRY_HEADER: &str = "cascade-retry";

/// The publisher account a request names (site or app `publisher.id`), as sent.
fn publisher_id(request: &DecideRequest) -> &str {
    (request.request.as_ref()).map_or("", cascade_proto::openrtb_json::publisher_id)
}

fn record_outcome(span: &tracing::Span, response: &Result<Answered, DecideError>) {
    if span.is_disabled() {
        return;
    }
    match response {
        Ok(Answered::Decided(response) | Answered::Replayed(response)) => {
            let winners: Vec<String> = response
                .decisions
                .iter()
                .filter_map(|d| d.winner.as_ref())
                .map(|w| format!("{}:{}", w.source().as_str_name(), w.price_micros))
                .collect();
            span.record(
                "cascade.config.version",
                i64::try_from(response.config_version).unwrap_or(i64::MAX),
            );
            span.record(
                "cascade.winners",
                i64::try_from(winners.len()).unwrap_or(i64::MAX),
            );
            span.record("cascade.winning_sources", winners.join(",").as_str());
        }
        // The decision failed, whoever's fault: an error of this operation (the server
        // span's status follows the RPC conventions instead).
        Err(error) => {
            span.record("otel.status_code", "error");
            span.record("otel.status_description", error.to_string().as_str());
        }
    }
}

/// Where one impression stands while the decision is made.
struct Slot {
    decision: ImpDecision,
    /// The notices of the winner, once there is one.
    won: Option<BidNotices>,
    /// The live bids of bidding networks that gave a loss notice URL.
    live_bids: Vec<BidNotices>,
    /// What the auction dropped, and why (its OpenRTB loss code among it).
    dropped: Vec<DroppedCandidate>,
    /// The winner's billing notice Cascade keeps for the impression.
    burl: String,
    /// Set once the auction ranked its candidates and it still needs the waterfall.
    ranked: Vec<RankedCandidate>,
    /// The ad-quality filters every ad of this impression must pass.
    quality: AdQuality,
    /// The candidates as they reached the auction, for the log.
    logged_candidates: Vec<cascade_log::schema::Candidate>,
}

/// What a Decide answers: a decision made now, or a retry's first answer again.
enum Answered {
    Decided(DecideResponse),
    Replayed(DecideResponse),
}

/// How a decision was asked for, beyond its request.
struct Asked {
    /// When the call arrived: its budget runs from then.
    received: tokio::time::Instant,
    /// What the caller's `grpc-timeout` leaves, from `received` (see `CallTiming`).
    caller_budget: Option<Duration>,
    /// Under pressure: call no network.
    degraded: bool,
    /// A retry, which may get the first attempt's answer back.
    retry: bool,
}

impl DecisionService {
    /// Counts a call to targeting-evaluation or auction, asked at `asked`, for admission:
    /// they only compute, so what the call took beyond what they say they spent on it
    /// waited in a queue. A call that failed waited all it took.
    fn count_downstream<T>(
        &self,
        asked: std::time::Instant,
        answer: &Result<tonic::Response<T>, Status>,
    ) {
        let metadata = match answer {
            Ok(response) => response.metadata(),
            Err(status) => status.metadata(),
        };
        self.admission.downstream_took(asked.elapsed(), metadata);
    }

    async fn decide(
        &self,
        mut request: DecideRequest,
        openrtb_json: Vec<u8>,
        asked: Asked,
    ) -> Result<Answered, DecideError> {
        let Asked {
            received,
            caller_budget,
            degraded,
            retry,
        } = asked;
        let started = std::time::Instant::now();
        let snapshot = self.snapshot.load().ok_or(DecideError::NotReady)?;
        // Every price of this decision converts at the rates in force now.
        let rates = snapshot.rates().at(cascade_state::now_unix_seconds());
        let mut normalized = normalize(&request, &rates)?;
        let budget = [caller_budget, normalized.tmax_ms.map(Duration::from_millis)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(self.default_budget)
            .min(self.max_budget);
        let deadline = Deadline::after_from(received, budget.saturating_sub(self.response_reserve));
        if cascade_server::telemetry::exporting() {
            // A decision that ran past its budget is kept whatever the sampling ratio.
            tracing::Span::current().record(
                cascade_server::sampling::BUDGET_ATTRIBUTE,
                i64::try_from(budget.as_millis()).unwrap_or(i64::MAX),
            );
        }
        let answer_key = AnswerKey {
            publisher_id: publisher_id(&request).to_string(),
            request_id: request
                .request
                .as_ref()
                .map(|r| r.id.clone())
                .unwrap_or_default(),
        };
        // Only a retry looks for a first answer, in the round trip that reads the chained
        // selections: a first attempt pays nothing for it.
        let recalled = if retry {
            let (first_answer, selections) = self
                .store
                .recall(&answer_key, &request.chained_selection_ids)
                .await?;
            if let Some(first_answer) = first_answer {
                match DecideResponse::decode(first_answer.as_slice()) {
                    Ok(first_answer) => return Ok(Answered::Replayed(first_answer)),
                    Err(error) => {
                        tracing::warn!(%error, "a stored answer does not decode; deciding again")
                    }
                }
            }
            Some(selections)
        } else {
            None
        };
        let mut chained = self
            .chained_candidates(&request.chained_selection_ids, &normalized, recalled)
            .await?;
        let debug = request.debug;
        // The log keeps every decision's explanation; the caller gets it with `debug`.
        let explain = debug || self.log.enabled();
        let client_mode = request.mode() == ExecutionMode::Client;
        let bid_request = request.request.unwrap_or_default();
        // A test request is decided as any other, but fires no notice and counts in no
        // report.
        let test = bid_request.test() == 1;
        let edge = NetworkEdge {
            degraded,
            signals: cascade_core::privacy::Signals::read(
                &cascade_networks::outbound::request_signals(&bid_request),
            ),
            snapshot: snapshot.clone(),
            openrtb_json: openrtb_json.into(),
            schain_node: snapshot
                .supply_chain_node(&normalized.account_id)
                .map(|node| SupplyChainNode {
                    asi: node.asi.clone(),
                    sid: node.seller_id.clone(),
                    hp: Some(1),
                    ..Default::default()
                }),
        };

        let asked = std::time::Instant::now();
        let evaluated = self
            .targeting
            .clone()
            .evaluate(deadline.request(EvaluateRequest {
                account_id: normalized.account_id.clone(),
                imps: std::mem::take(&mut normalized.imps),
                context: Some(std::mem::take(&mut normalized.context)),
                debug,
            }))
            .await;
        self.count_downstream(asked, &evaluated);
        let evaluation = evaluated
            .map_err(|status| DecideError::downstream("targeting-evaluation", status))?
            .into_inner();

        let qualities = plan::ad_qualities(&evaluation, &normalized);
        let mut live_bids = self
            .collect_live_bids(&evaluation, &qualities, &bid_request, &edge, deadline)
            .await;
        let mut slots: Vec<Slot> = Vec::with_capacity(evaluation.imps.len());
        let mut auction_imps = Vec::new();
        let mut auction_slots = Vec::new();
        let exchange_candidates = std::mem::take(&mut normalized.exchange_candidates);
        for (index, ((mut evaluated, exchange), quality)) in evaluation
            .imps
            .into_iter()
            .zip(exchange_candidates)
            .zip(qualities)
            .enumerate()
        {
            let (bidding, bidding_attempts) =
                live_bids.remove(&evaluated.impid).unwrap_or_default();
            let live_bids = bidding
                .iter()
                .filter(|c| !c.lurl.is_empty())
                .map(BidNotices::of)
                .collect();
            let mut decision = ImpDecision {
                impid: evaluated.impid.clone(),
                ..Default::default()
            };
            if explain {
                decision.explanation = Some(explanation(&mut evaluated, bidding_attempts, budget));
            }
            let demand = plan::ImpDemand {
                exchange,
                live_bids: bidding,
                chained: std::mem::take(&mut chained[index]),
            };
            match plan::auction_imp(
                evaluation.account_known,
                &evaluation.seat_adjustments,
                evaluated,
                demand,
                &normalized,
                quality.clone(),
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
                won: None,
                live_bids,
                dropped: Vec::new(),
                burl: String::new(),
                ranked: Vec::new(),
                quality,
                logged_candidates: Vec::new(),
            });
        }
        if self.log.enabled() {
            for (index, imp) in auction_slots.iter().zip(&auction_imps) {
                slots[*index].logged_candidates = record::candidates(&imp.candidates);
            }
        }

        self.rank(&mut slots, auction_imps, auction_slots, deadline)
            .await?;

        let mut selections = Vec::new();
        if client_mode {
            for slot in &mut slots {
                self.hand_chain_to_client(
                    slot,
                    &edge,
                    &bid_request,
                    &normalized.account_id,
                    Kept {
                        markup: request.keep_markup,
                        test,
                    },
                    &mut selections,
                );
            }
        } else {
            self.walk_waterfalls(&mut slots, &bid_request, &edge, deadline)
                .await;
            self.send_notices(&mut slots, &bid_request.id, test);
            selections = self.record_winners(
                &mut slots,
                &bid_request,
                &normalized.account_id,
                request.keep_markup,
                test,
            );
        }
        // The loss notices are out: what the auction dropped now only explains.
        for slot in &mut slots {
            if let Some(explanation) = slot.decision.explanation.as_mut() {
                explanation.dropped = std::mem::take(&mut slot.dropped);
            }
        }
        // Built for the log: the caller gets them only if it asked (`debug`).
        let explanations: Vec<Option<Explanation>> = slots
            .iter_mut()
            .map(|slot| {
                if debug {
                    slot.decision.explanation.clone()
                } else {
                    slot.decision.explanation.take()
                }
            })
            .collect();
        let response = DecideResponse {
            id: bid_request.id.clone(),
            decisions: slots
                .iter_mut()
                .map(|slot| std::mem::take(&mut slot.decision))
                .collect(),
            config_version: evaluation.config_version,
        };
        if degraded && !retry && request.chained_selection_ids.is_empty() {
            // Decided without a network or a read of the store: all it waited for was CPU.
            self.admission.unhindered_call_took(received.elapsed());
        }
        if let Some(first) = selections.first_mut() {
            // What sold is what a retry must get back, not a second sale.
            first.answer = Some(Answer {
                key: answer_key,
                response: response.encode_to_vec(),
            });
            let wait = deadline.remaining().min(self.selection_write_wait);
            self.selections.write(selections, wait).await?;
        }
        if self.log.enabled() {
            let decided = Decided {
                request_id: bid_request.id.clone(),
                account_id: normalized.account_id.clone(),
                account_path: snapshot
                    .account_path(&normalized.account_id)
                    .map(String::from)
                    .collect(),
                config_version: evaluation.config_version,
                client_mode,
                test,
                budget,
                elapsed: started.elapsed(),
                request: bid_request,
                unidentified: cascade_server::wire::privacy_verdict(
                    &edge.signals.permissions(None),
                ),
                exchange_bids: std::mem::take(&mut request.exchange_bids),
                key_values: std::mem::take(&mut request.key_values),
                chained_selection_ids: std::mem::take(&mut request.chained_selection_ids),
            };
            let imps = slots
                .iter_mut()
                .zip(&response.decisions)
                .zip(explanations)
                .map(|((slot, decision), explanation)| ImpRecord {
                    explanation: explanation.unwrap_or_default(),
                    decision,
                    candidates: std::mem::take(&mut slot.logged_candidates),
                    winner_candidate_id: slot.won.as_ref().map_or("", |w| w.candidate_id.as_str()),
                });
            self.log.append(record::decision_entry(decided, imps));
        }
        Ok(Answered::Decided(response))
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
        let asked = std::time::Instant::now();
        let ranked = self
            .auction
            .clone()
            .rank(deadline.request(RankRequest { imps: auction_imps }))
            .await;
        self.count_downstream(asked, &ranked);
        let ranking = ranked
            .map_err(|status| DecideError::downstream("auction", status))?
            .into_inner();
        for (slot_index, ranked_imp) in auction_slots.into_iter().zip(ranking.imps) {
            let slot = &mut slots[slot_index];
            // Moved into the explanation once the loss notices are out.
            slot.dropped = ranked_imp.dropped;
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
        bid_request: &BidRequest,
        account_id: &str,
        keep_markup: bool,
        test: bool,
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
            let mut selection = self.selection(
                &bid_request.id,
                &slot.decision.impid,
                account_id,
                winner,
                keep_markup,
            );
            let imp_exp = bid_request
                .imp
                .iter()
                .find(|imp| imp.id == slot.decision.impid)
                .and_then(|imp| imp.exp);
            selection.ttl = selection_lifetime(
                self.selection_ttl,
                self.max_selection_ttl,
                slot.won.as_ref().map(|won| won.exp_seconds),
                imp_exp,
            );
            selection.test = test;
            if !test && !slot.burl.is_empty() {
                selection.burl = std::mem::take(&mut slot.burl);
                selection.burl_expires_at_ms = cascade_state::now_unix_millis()
                    + i64::try_from(self.notices.billing_ttl_secs.saturating_mul(1_000))
                        .unwrap_or(i64::MAX / 2);
            }
            winner.selection_id = selection.id.clone();
            if !selection.network_id.is_empty() && !test {
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

    /// Every winner's macros substituted and its notices fired or kept; every live bid
    /// that lost told so. A test request fires none.
    fn send_notices(&self, slots: &mut [Slot], auction_id: &str, test: bool) {
        for slot in slots {
            let won = slot.won.take();
            let winning_price = slot.decision.winner.as_ref().map(|w| w.price_micros);
            if let (Some(won), Some(winner)) = (won.as_ref(), slot.decision.winner.as_mut()) {
                let settled = notices::settle(
                    auction_id,
                    &slot.decision.impid,
                    won,
                    winner,
                    self.notices.exchange,
                );
                if !test && let Some(nurl) = settled.fire_nurl {
                    self.fire_notice(NoticeKind::Win, nurl, auction_id, &slot.decision.impid);
                }
                slot.burl = settled.keep_burl;
            }
            let winner_id = won.as_ref().map(|w| w.candidate_id.as_str());
            for lost in &slot.live_bids {
                if Some(lost.candidate_id.as_str()) == winner_id || test {
                    continue;
                }
                // A live bid the auction did not drop was outranked.
                let reason = slot
                    .dropped
                    .iter()
                    .find(|dropped| dropped.candidate_id == lost.candidate_id)
                    .map_or(loss::LOST_TO_HIGHER_BID, |dropped| dropped.loss_code);
                if let Some(url) = notices::loss_notice(
                    auction_id,
                    &slot.decision.impid,
                    lost,
                    reason,
                    winning_price,
                ) {
                    self.fire_notice(NoticeKind::Loss, url, auction_id, &slot.decision.impid);
                }
            }
            slot.won = won;
        }
    }

    /// Fires a win or loss notice; the log records how it went.
    fn fire_notice(&self, kind: NoticeKind, url: String, request_id: &str, impid: &str) {
        if !self.log.enabled() {
            self.notifier.fire(kind, url);
            return;
        }
        let log = self.log.clone();
        let entry = record::notice_entry(kind, &url, request_id, impid);
        self.notifier.fire_then(kind, url, move |result| {
            let mut entry = entry;
            if let Some(event) = entry.event.as_mut() {
                event.notice_result = result.to_string();
            }
            log.append(entry);
        });
    }

    /// Walks every impression's ranked list: the waterfall networks ranked above its
    /// best demand in hand are asked by network-caller (one call for all impressions,
    /// skipped when none needs it); when none of them fills, or network-caller cannot
    /// answer in time or at all, the demand in hand serves.
    async fn walk_waterfalls(
        &self,
        slots: &mut [Slot],
        bid_request: &cascade_proto::openrtb::v1::BidRequest,
        edge: &NetworkEdge,
        deadline: Deadline,
    ) {
        let mut waterfall_imps = Vec::new();
        let mut waterfall_slots = Vec::new();
        // Per slot: its best demand in hand, which serves when no network above it fills.
        let mut in_hand: Vec<Option<RankedCandidate>> = Vec::with_capacity(slots.len());
        for (index, slot) in slots.iter_mut().enumerate() {
            let (networks, best) = plan::split_at_in_hand(std::mem::take(&mut slot.ranked));
            in_hand.push(best);
            if !networks.is_empty() {
                waterfall_slots.push(index);
                waterfall_imps.push(WaterfallImp {
                    impid: slot.decision.impid.clone(),
                    ranked: networks,
                    // The filters are not needed here after the walk.
                    ad_quality: Some(std::mem::take(&mut slot.quality)),
                });
            }
        }
        if !waterfall_imps.is_empty() {
            // Kept to explain the attempts, should network-caller not answer.
            let asked: Vec<Vec<Attempt>> = waterfall_imps
                .iter()
                .map(|imp| {
                    imp.ranked
                        .iter()
                        .filter_map(|r| r.candidate.as_ref())
                        .map(|c| Attempt {
                            candidate_id: c.id.clone(),
                            source: SourceKind::MediatedNetwork as i32,
                            network_id: c.network_id.clone(),
                            bid_id: c.bid_id.clone(),
                            ..Default::default()
                        })
                        .collect()
                })
                .collect();
            let answer = if edge.degraded {
                Err(Unanswered::OVERLOADED)
            } else {
                let call_deadline = deadline.less(self.fallback_reserve);
                let mut network_caller = self.network_caller.clone();
                let call = network_caller.run_waterfall(
                    call_deadline.request(RunWaterfallRequest {
                        request: Some(bid_request.clone()),
                        privacy: edge.privacy(
                            waterfall_imps
                                .iter()
                                .flat_map(|imp| &imp.ranked)
                                .filter_map(|r| r.candidate.as_ref())
                                .map(|c| c.network_id.as_str())
                                .filter(|id| !id.is_empty()),
                        ),
                        imps: waterfall_imps,
                        openrtb_json: edge.openrtb_json.clone(),
                        schain_node: edge.schain_node.clone(),
                    }),
                );
                // network-caller is told to finish `fallback_reserve` early; the wait runs
                // to the decision's own deadline, so an answer delayed in transit still
                // counts.
                let answer = tokio::time::timeout_at(deadline.instant(), call).await;
                Unanswered::classify("network-caller", answer)
            };
            match answer {
                Ok(results) => {
                    for (index, result) in waterfall_slots.into_iter().zip(results.imps) {
                        let slot = &mut slots[index];
                        if let Some(candidate) =
                            result.winner.as_ref().and_then(|w| w.candidate.as_ref())
                        {
                            slot.won = Some(BidNotices::of(candidate));
                        }
                        let decision = &mut slot.decision;
                        if let Some(explanation) = decision.explanation.as_mut() {
                            explanation.attempts.extend(result.attempts);
                        }
                        if let Some(winner) = result.winner {
                            decision.winner = Some(plan::winner_from(winner));
                            in_hand[index] = None;
                        } else if in_hand[index].is_none() && result.deadline_exceeded {
                            decision.no_fill_reason = NoFillReason::DeadlineExceeded as i32;
                        }
                    }
                }
                Err(unanswered) => {
                    for (index, asked) in waterfall_slots.into_iter().zip(asked) {
                        let decision = &mut slots[index].decision;
                        if let Some(explanation) = decision.explanation.as_mut() {
                            explanation
                                .attempts
                                .extend(asked.into_iter().map(|a| unanswered.attempt(a)));
                        }
                        if in_hand[index].is_none() {
                            decision.no_fill_reason = unanswered.no_fill as i32;
                        }
                    }
                }
            }
        }
        for (slot, best) in slots.iter_mut().zip(in_hand) {
            if slot.decision.winner.is_none()
                && let Some(candidate) = best.as_ref().and_then(|b| b.candidate.as_ref())
            {
                slot.won = Some(BidNotices::of(candidate));
            }
            let decision = &mut slot.decision;
            match best {
                Some(best) if decision.winner.is_none() => {
                    if let (Some(explanation), Some(candidate)) =
                        (decision.explanation.as_mut(), best.candidate.as_ref())
                    {
                        explanation.attempts.push(Attempt {
                            candidate_id: candidate.id.clone(),
                            source: candidate.source,
                            network_id: candidate.network_id.clone(),
                            outcome: AttemptOutcome::Filled as i32,
                            detail: "bid in hand, no call needed".to_string(),
                            ..Default::default()
                        });
                    }
                    decision.no_fill_reason = NoFillReason::Unspecified as i32;
                    decision.winner = Some(plan::winner_from(best));
                }
                _ if decision.winner.is_none()
                    && decision.no_fill_reason == NoFillReason::Unspecified as i32 =>
                {
                    decision.no_fill_reason = NoFillReason::WaterfallExhausted as i32;
                }
                _ => {}
            }
        }
    }

    /// CLIENT mode: the ranked chain, each node with its own selection id so the client
    /// can report what happened at it.
    fn hand_chain_to_client(
        &self,
        slot: &mut Slot,
        edge: &NetworkEdge,
        bid_request: &BidRequest,
        account_id: &str,
        kept: Kept,
        selections: &mut Vec<Selection>,
    ) {
        let imp_exp = bid_request
            .imp
            .iter()
            .find(|imp| imp.id == slot.decision.impid)
            .and_then(|imp| imp.exp);
        for ranked in std::mem::take(&mut slot.ranked) {
            let Some(candidate) = ranked.candidate else {
                continue;
            };
            let chained_selection = (candidate.source() == SourceKind::ChainedOutcome)
                .then(|| candidate.bid_id.clone());
            // The client calls a mediated network itself: it is held to the verdict a
            // server-side call is, and one that may not be called is not handed over.
            let privacy = if candidate.source() == SourceKind::MediatedNetwork {
                let verdict = edge.verdict(&candidate.network_id);
                if !verdict.permissions.call {
                    if let Some(explanation) = slot.decision.explanation.as_mut() {
                        explanation.attempts.push(Attempt {
                            candidate_id: candidate.id.clone(),
                            source: candidate.source,
                            network_id: candidate.network_id.clone(),
                            bid_id: candidate.bid_id.clone(),
                            outcome: AttemptOutcome::Skipped as i32,
                            reason: "no_consent".to_string(),
                            detail: verdict.describe(),
                            ..Default::default()
                        });
                    }
                    continue;
                }
                (verdict.permissions != cascade_core::privacy::Permissions::ALL)
                    .then(|| cascade_server::wire::privacy_verdict(&verdict))
            } else {
                None
            };
            let mut node = ChainNode {
                privacy,
                source: candidate.source,
                timeout_ms: edge
                    .snapshot
                    .network(&candidate.network_id)
                    .map_or(0, |n| n.timeout_ms),
                network_id: candidate.network_id,
                bid_id: candidate.bid_id,
                placement_id: candidate.placement_id,
                price_micros: ranked.clearing_price_micros,
                floor_micros: ranked.floor_micros,
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
                request_id: bid_request.id.clone(),
                impid: slot.decision.impid.clone(),
                account_id: account_id.to_string(),
                source: demand_kind(node.source()),
                network_id: node.network_id.clone(),
                seat: candidate.seat,
                bid_id: node.bid_id.clone(),
                price_micros: node.price_micros,
                adomain: candidate.adomain,
                cat: candidate.cat,
                attr: candidate.attr,
                original_cur: candidate.original_cur,
                rate_micros: candidate.rate_micros,
                adm: kept_markup(kept.markup, &node.adm),
                client_node: true,
                // As a server-side winner's: as long as the ad may render, and a test
                // request's node counts in no report.
                ttl: selection_lifetime(
                    self.selection_ttl,
                    self.max_selection_ttl,
                    Some(candidate.exp_seconds),
                    imp_exp,
                ),
                test: kept.test,
                ..Default::default()
            };
            node.selection_id = selection.id.clone();
            selections.push(selection);
            slot.decision.chain.push(node);
        }
    }

    /// Asks the bidding networks of every impression that has some for a live bid, in
    /// one call to network-caller, within the bidding budget. Returns, per impression id,
    /// the bids (candidates with their ads) and the attempts. When network-caller cannot
    /// answer, the decision goes on without live bids and the attempts say why.
    async fn collect_live_bids(
        &self,
        evaluation: &EvaluateResponse,
        qualities: &[AdQuality],
        bid_request: &BidRequest,
        edge: &NetworkEdge,
        deadline: Deadline,
    ) -> HashMap<String, (Vec<Candidate>, Vec<Attempt>)> {
        let imps = plan::bidding_imps(evaluation, qualities);
        if imps.is_empty() {
            return HashMap::new();
        }
        let bidding_deadline = Deadline::after(
            deadline
                .less(self.fallback_reserve)
                .remaining()
                .min(self.bidding_budget),
        );
        // As for the waterfall: told to finish early, waited for a little longer.
        let wait_until =
            (bidding_deadline.instant() + self.fallback_reserve).min(deadline.instant());
        let unanswered: Vec<(String, Vec<Attempt>)> = imps
            .iter()
            .map(|imp| {
                let attempts = imp
                    .asks
                    .iter()
                    .map(|ask| Attempt {
                        candidate_id: format!("bidding:{}", ask.bid_id),
                        source: SourceKind::BiddingNetwork as i32,
                        network_id: ask.network_id.clone(),
                        bid_id: ask.bid_id.clone(),
                        floor_micros: ask.floor_micros,
                        ..Default::default()
                    })
                    .collect();
                (imp.impid.clone(), attempts)
            })
            .collect();
        let unanswered_because = if edge.degraded {
            Unanswered::OVERLOADED
        } else {
            let mut network_caller = self.network_caller.clone();
            let call = network_caller.collect_bids(
                bidding_deadline.request(CollectBidsRequest {
                    request: Some(bid_request.clone()),
                    privacy: edge.privacy(
                        imps.iter()
                            .flat_map(|imp| &imp.asks)
                            .map(|ask| ask.network_id.as_str()),
                    ),
                    imps,
                    openrtb_json: edge.openrtb_json.clone(),
                    schain_node: edge.schain_node.clone(),
                }),
            );
            match Unanswered::classify(
                "network-caller (bidding)",
                tokio::time::timeout_at(wait_until, call).await,
            ) {
                Ok(response) => {
                    return response
                        .imps
                        .into_iter()
                        .map(|imp| (imp.impid, (imp.bids, imp.attempts)))
                        .collect();
                }
                Err(unanswered) => unanswered,
            }
        };
        unanswered
            .into_iter()
            .map(|(impid, attempts)| {
                let attempts = attempts
                    .into_iter()
                    .map(|a| unanswered_because.attempt(a))
                    .collect();
                (impid, (Vec::new(), attempts))
            })
            .collect()
    }

    /// The chained selections as candidates of the impressions they were made for, read
    /// in one batched round trip. Their price is the stored one, never the client's.
    async fn chained_candidates(
        &self,
        ids: &[String],
        normalized: &Normalized,
        read_already: Option<Vec<Option<Selection>>>,
    ) -> Result<Vec<Vec<Candidate>>, DecideError> {
        let mut per_imp = vec![Vec::new(); normalized.imps.len()];
        if ids.is_empty() {
            return Ok(per_imp);
        }
        let mut selections = match read_already {
            Some(selections) => selections,
            None => self.store.get_selections(ids).await?,
        };
        // Sold here moments ago (writing behind) or while the store is down: not stored
        // yet, but known.
        if selections.iter().any(Option::is_none) {
            for (read, waiting) in selections.iter_mut().zip(self.selections.waiting(ids)) {
                if read.is_none() {
                    *read = waiting;
                }
            }
        }
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
            // A client-side chain node is an outcome only once the client reported it
            // filled; the auction drops it otherwise, saying why.
            let unfilled = selection.client_node
                && selection.node_outcome.as_deref() != Some(cascade_state::FILLED);
            per_imp[imp].push(Candidate {
                id: format!("chained:{}", selection.id),
                source: SourceKind::ChainedOutcome as i32,
                bid_micros: selection.price_micros,
                seat: selection.seat,
                network_id: selection.network_id,
                bid_id: selection.id,
                adomain: selection.adomain,
                cat: selection.cat,
                attr: selection.attr,
                original_cur: selection.original_cur,
                rate_micros: selection.rate_micros,
                adm: selection.adm,
                unfilled,
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
        keep_markup: bool,
    ) -> Selection {
        Selection {
            id: new_selection_id(),
            request_id: request_id.to_string(),
            impid: impid.to_string(),
            account_id: account_id.to_string(),
            source: demand_kind(winner.source()),
            network_id: winner.network_id.clone(),
            seat: winner.seat.clone(),
            bid_id: winner.bid_id.clone(),
            price_micros: winner.price_micros,
            adomain: winner.adomain.clone(),
            cat: winner.cat.clone(),
            attr: winner.attr.clone(),
            original_cur: winner.original_cur.clone(),
            rate_micros: winner.rate_micros,
            adm: kept_markup(keep_markup, &winner.adm),
            ttl: self.selection_ttl,
            ..Default::default()
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

/// What a request asks its selections to keep: the markup (`keep_markup`), and that they
/// come from a test request.
#[derive(Clone, Copy)]
struct Kept {
    markup: bool,
    test: bool,
}

/// Largest markup a selection keeps when the request asks for it (`keep_markup`):
/// keeping every winner's markup for an hour would cost the store more than all else.
pub const MAX_KEPT_MARKUP_BYTES: usize = 16 * 1024;

/// The markup to keep with a selection: none unless asked for and within the cap.
fn kept_markup(keep: bool, adm: &str) -> String {
    if keep && adm.len() <= MAX_KEPT_MARKUP_BYTES {
        adm.to_string()
    } else {
        String::new()
    }
}

fn new_selection_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Why network-caller gave no answer to use: it ran out of time, or could not be
/// reached. The decision goes on with what it holds; the attempts and the impression say
/// which.
struct Unanswered {
    reason: &'static str,
    detail: &'static str,
    no_fill: NoFillReason,
}

impl Unanswered {
    const LATE: Unanswered = Unanswered {
        reason: "deadline",
        detail: "network-caller did not answer within the deadline",
        no_fill: NoFillReason::DeadlineExceeded,
    };
    const UNREACHABLE: Unanswered = Unanswered {
        reason: "unreachable",
        detail: "network-caller is unavailable",
        no_fill: NoFillReason::NetworksUnreachable,
    };
    /// Under overload networks are the first thing given up: bid-intake's own, or
    /// network-caller's, which sheds the call.
    const OVERLOADED: Unanswered = Unanswered {
        reason: "overload",
        detail: "under overload no network is called",
        no_fill: NoFillReason::Overloaded,
    };

    /// The answer of a call to network-caller waited for until a deadline.
    fn classify<T>(
        stage: &'static str,
        answer: Result<Result<Response<T>, Status>, tokio::time::error::Elapsed>,
    ) -> Result<T, Unanswered> {
        match answer {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Err(_) => Err(Unanswered::LATE),
            Ok(Err(status)) => {
                let error = DecideError::downstream(stage, status);
                tracing::warn!(%error, "network-caller gave no answer; deciding with the demand in hand");
                match error {
                    DecideError::DeadlineExceeded { .. } => Err(Unanswered::LATE),
                    DecideError::Overloaded { .. } => Err(Unanswered::OVERLOADED),
                    _ => Err(Unanswered::UNREACHABLE),
                }
            }
        }
    }

    /// `attempt` marked as skipped for this reason.
    fn attempt(&self, attempt: Attempt) -> Attempt {
        Attempt {
            outcome: AttemptOutcome::Skipped as i32,
            reason: self.reason.to_string(),
            detail: self.detail.to_string(),
            ..attempt
        }
    }
}

/// How long a selection is kept: as long as its ad may still render — the bid's `exp`,
/// else the impression's — when that is longer than `default`, never beyond `max`.
fn selection_lifetime(
    default: Duration,
    max: Duration,
    bid_exp: Option<u32>,
    imp_exp: Option<i32>,
) -> Duration {
    let exp = bid_exp
        .filter(|&exp| exp > 0)
        .map(u64::from)
        .or(imp_exp.and_then(|exp| u64::try_from(exp).ok()))
        .map(Duration::from_secs)
        .unwrap_or_default();
    default.max(exp).min(max)
}

/// The kind of demand a selection keeps, from the decision API's.
fn demand_kind(source: SourceKind) -> cascade_core::auction::DemandKind {
    use cascade_core::auction::DemandKind;
    match source {
        SourceKind::Unspecified => DemandKind::Unspecified,
        SourceKind::Exchange => DemandKind::Exchange,
        SourceKind::MediatedNetwork => DemandKind::MediatedNetwork,
        SourceKind::BiddingNetwork => DemandKind::BiddingNetwork,
        SourceKind::LineItem => DemandKind::LineItem,
        SourceKind::ChainedOutcome => DemandKind::ChainedOutcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selection_lives_as_long_as_its_ad_may_render_within_the_cap() {
        let hour = Duration::from_secs(3_600);
        let day = Duration::from_secs(86_400);
        let lifetime = |bid, imp| selection_lifetime(hour, day, bid, imp);
        assert_eq!(lifetime(None, None), hour);
        assert_eq!(
            lifetime(Some(7_200), Some(60)),
            Duration::from_secs(7_200),
            "the bid's exp first"
        );
        assert_eq!(
            lifetime(Some(0), Some(10_800)),
            Duration::from_secs(10_800),
            "then the impression's"
        );
        assert_eq!(
            lifetime(Some(60), None),
            hour,
            "never shorter than the default"
        );
        assert_eq!(lifetime(None, Some(-5)), hour);
        assert_eq!(lifetime(Some(u32::MAX), None), day, "capped");
    }
}
