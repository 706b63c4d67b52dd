//! One logged decision decided again under another configuration. Every rule is the
//! services' own function — bid-intake's normalisation and plan, targeting-evaluation's
//! evaluation, the auction's ranking, the core's waterfall walk and answer judgement —
//! so the replay cannot drift from what the cluster does. Only the networks are not
//! called: a network asked in the log answers as it did (its ad judged again under the
//! new floor and filters); one the original decision never asked answers by a draw
//! from what it did elsewhere in the log ([`Observed`]).
//!
//! Time is replayed as the log shows it spent: a call the original walk did not make —
//! skipped for time, for a network's health, or lost with a network-caller that did not
//! answer — is not made again. The replayed walk applies its own call cap, and a
//! network the original walk never reached (below the demand in hand, past the cap, or
//! newly eligible) answers by a draw.

use std::collections::HashMap;
use std::time::Duration;

use cascade_bid_intake::{normalize, plan};
use cascade_core::Micros;
use cascade_core::ad_quality::{AdQuality as Filters, Creative};
use cascade_core::snapshot::Snapshot;
use cascade_core::waterfall::{self, Answer, Node, Step, Verdict, Walk, WalkLimits};
use cascade_log::schema as log;
use cascade_proto::auction::v1::{AdQuality, Candidate, RankRequest, RankedCandidate};
use cascade_proto::decision::v1::{
    AttemptOutcome, DecideRequest, ExecutionMode, NoFillReason, SourceKind,
};
use cascade_proto::targeting::v1::EvaluateRequest;
use cascade_server::wire::{self, adjustment};
use serde::Serialize;

use crate::draw;
use crate::observed::{self, Guess, Observed};

/// Who served one impression, at what price (USD micros CPM).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Served {
    pub candidate_id: String,
    /// The decision API's `SourceKind` name.
    pub source: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub network_id: String,
    pub bid_id: String,
    pub price_micros: i64,
}

impl Served {
    fn of(ranked: &RankedCandidate, price_micros: i64) -> Option<Served> {
        let candidate = ranked.candidate.as_ref()?;
        Some(Served {
            candidate_id: candidate.id.clone(),
            source: candidate.source().as_str_name().to_string(),
            network_id: candidate.network_id.clone(),
            bid_id: candidate.bid_id.clone(),
            price_micros,
        })
    }
}

/// What one impression came to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ImpOutcome {
    pub impid: String,
    pub served: Option<Served>,
    /// The decision API's `NoFillReason` name, when none served.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub no_fill_reason: String,
    /// The networks called or asked for a live bid for it.
    #[serde(skip)]
    pub asked: Vec<String>,
    /// Some answer its outcome rests on was drawn, not logged.
    pub guessed: bool,
}

impl ImpOutcome {
    fn unfilled(&mut self, reason: NoFillReason) {
        self.served = None;
        self.no_fill_reason = reason.as_str_name().to_string();
    }

    /// The same demand served at the same price, or none served. A no-fill is a
    /// no-fill whatever its reason: time and transport faults are not replayed.
    pub fn same_sale(&self, other: &ImpOutcome) -> bool {
        self.served == other.served
    }
}

/// A logged decision decided again.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Redecided {
    pub imps: Vec<ImpOutcome>,
    /// Network answers drawn rather than logged.
    pub guessed_calls: u32,
    /// Of those, calls to a network the log never saw called: assumed no ad.
    pub unobserved_calls: u32,
}

/// Why a logged decision is not replayed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unreplayable {
    /// It failed with an error: there is no sale to compare.
    Failed,
    /// Its chain was handed to the client, which decided the sale.
    ClientMode,
    /// A test request, which counts in no report.
    Test,
    /// Its request was over the log's size cap, or could not be redacted.
    RequestNotLogged,
    /// The configuration refuses it now (an unknown currency, a bad floor).
    Refused(String),
}

impl Unreplayable {
    pub fn code(&self) -> &'static str {
        match self {
            Unreplayable::Failed => "failed",
            Unreplayable::ClientMode => "client_mode",
            Unreplayable::Test => "test",
            Unreplayable::RequestNotLogged => "request_not_logged",
            Unreplayable::Refused(_) => "refused",
        }
    }
}

/// Whether a logged decision can be replayed at all.
pub fn replayable(decision: &log::Decision) -> Result<(), Unreplayable> {
    if !decision.error_code.is_empty() {
        Err(Unreplayable::Failed)
    } else if decision.mode() == ExecutionMode::Client {
        Err(Unreplayable::ClientMode)
    } else if decision.test {
        Err(Unreplayable::Test)
    } else if decision.request_omitted || decision.request.is_none() {
        Err(Unreplayable::RequestNotLogged)
    } else {
        Ok(())
    }
}

/// What the log says each impression of a decision came to.
pub fn logged(decision: &log::Decision) -> Vec<ImpOutcome> {
    decision
        .imps
        .iter()
        .map(|imp| {
            let served = imp.winner.as_ref().map(|w| Served {
                candidate_id: w.candidate_id.clone(),
                source: w.source().as_str_name().to_string(),
                network_id: w.network_id.clone(),
                bid_id: w.bid_id.clone(),
                price_micros: w.price_micros,
            });
            ImpOutcome {
                impid: imp.impid.clone(),
                no_fill_reason: if served.is_none() {
                    imp.no_fill_reason().as_str_name().to_string()
                } else {
                    String::new()
                },
                served,
                asked: imp
                    .attempts
                    .iter()
                    .filter(|a| a.called)
                    .map(|a| a.network_id.clone())
                    .collect(),
                guessed: false,
            }
        })
        .collect()
}

/// What a replay decides with.
pub struct Replayer<'a> {
    pub snapshot: &'a Snapshot,
    pub observed: &'a Observed,
    /// The waterfall's call cap (network-caller's `max_calls`).
    pub limits: WalkLimits,
}

/// No deadline stops a replayed walk (see the module's note).
const UNHURRIED: Duration = Duration::from_secs(3_600);

impl Replayer<'_> {
    /// `decision`, logged at `time_unix_ms`, decided again; `seed` picks the draws for
    /// the answers the log does not hold.
    pub fn redecide(
        &self,
        decision: &log::Decision,
        time_unix_ms: i64,
        seed: u64,
    ) -> Result<Redecided, Unreplayable> {
        replayable(decision)?;
        let snapshot = self.snapshot;
        let unix_seconds = time_unix_ms.div_euclid(1_000);
        let request = DecideRequest {
            request: decision.request.clone(),
            exchange_bids: decision.exchange_bids.clone(),
            key_values: decision.key_values.clone(),
            chained_selection_ids: decision.chained_selection_ids.clone(),
            mode: decision.mode,
            ..Default::default()
        };
        let rates = snapshot.rates().at(unix_seconds);
        let mut normalized =
            normalize(&request, &rates).map_err(|e| Unreplayable::Refused(e.to_string()))?;
        let evaluation = cascade_targeting_evaluation::evaluate(
            snapshot,
            &EvaluateRequest {
                account_id: normalized.account_id.clone(),
                imps: std::mem::take(&mut normalized.imps),
                context: Some(std::mem::take(&mut normalized.context)),
                debug: false,
            },
            unix_seconds,
        )
        .map_err(|e| Unreplayable::Refused(e.to_string()))?;
        let logged_imps: HashMap<&str, &log::Imp> = decision
            .imps
            .iter()
            .map(|imp| (imp.impid.as_str(), imp))
            .collect();
        let mut answers = Answers {
            observed: self.observed,
            seed,
            request_id: &decision.request_id,
            guessed_calls: 0,
            unobserved_calls: 0,
        };

        let qualities = plan::ad_qualities(&evaluation, &normalized);
        let mut live_bids: HashMap<String, (Vec<Candidate>, ImpOutcome)> = HashMap::new();
        for bidding in plan::bidding_imps(&evaluation, &qualities) {
            let logged = logged_imps.get(bidding.impid.as_str()).copied();
            let quality = bidding.ad_quality.unwrap_or_default();
            let filters = wire::ad_quality(&quality);
            let mut outcome = ImpOutcome::default();
            let mut bids = Vec::new();
            for ask in &bidding.asks {
                // network-caller asks no network it does not know.
                if snapshot.network(&ask.network_id).is_none() {
                    continue;
                }
                let candidate_id = format!("{LIVE_BID}{}", ask.bid_id);
                let ad = match answers.of(
                    logged,
                    &mut outcome,
                    &bidding.impid,
                    (&candidate_id, &ask.bid_id),
                    &ask.network_id,
                ) {
                    Call::Skipped => continue,
                    Call::Answered(ad) => ad,
                };
                outcome.asked.push(ask.network_id.clone());
                let Some((price, creative)) =
                    ad.and_then(|ad| ad.accepted(ask.floor_micros, &filters))
                else {
                    continue;
                };
                bids.push(Candidate {
                    id: candidate_id,
                    source: SourceKind::BiddingNetwork as i32,
                    minimum_micros: ask.floor_micros,
                    network_id: ask.network_id.clone(),
                    placement_id: ask.placement_id.clone(),
                    bid_id: ask.bid_id.clone(),
                    bid_adjustment_ppm: ask.bid_adjustment_ppm,
                    // A live bid ranks at the network's own price.
                    bid_micros: price.0,
                    seat: creative.seat,
                    adomain: creative.adomain,
                    cat: creative.cat,
                    attr: creative.attr,
                    crid: creative.crid,
                    dealid: creative.dealid,
                    dsa: creative.dsa,
                    original_cur: creative.original_cur,
                    rate_micros: creative.rate_micros,
                    original_price_micros: Some(creative.original_price_micros.unwrap_or(price.0)),
                    ..Default::default()
                });
            }
            live_bids.insert(bidding.impid, (bids, outcome));
        }

        let mut outcomes = Vec::with_capacity(evaluation.imps.len());
        let mut auction_imps = Vec::new();
        let mut auctioned = Vec::new();
        let exchange_candidates = std::mem::take(&mut normalized.exchange_candidates);
        for (index, ((evaluated, exchange), quality)) in evaluation
            .imps
            .into_iter()
            .zip(exchange_candidates)
            .zip(qualities)
            .enumerate()
        {
            let (bids, mut outcome) = live_bids.remove(&evaluated.impid).unwrap_or_default();
            outcome.impid = evaluated.impid.clone();
            let logged = logged_imps.get(evaluated.impid.as_str()).copied();
            let demand = plan::ImpDemand {
                exchange,
                live_bids: bids,
                chained: logged.map(chained_candidates).unwrap_or_default(),
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
                    auctioned.push((outcomes.len(), quality));
                    auction_imps.push(imp);
                }
                Err(reason) => outcome.unfilled(reason),
            }
            outcomes.push(outcome);
        }
        if !auction_imps.is_empty() {
            let ranking = cascade_auction::rank(RankRequest { imps: auction_imps })
                .map_err(|e| Unreplayable::Refused(e.to_string()))?;
            for ((index, quality), ranked) in auctioned.into_iter().zip(ranking.imps) {
                let outcome = &mut outcomes[index];
                if ranked.ranked.is_empty() {
                    outcome.unfilled(NoFillReason::NoEligibleDemand);
                    continue;
                }
                let logged = logged_imps.get(outcome.impid.as_str()).copied();
                self.walk(ranked.ranked, &quality, logged, &mut answers, outcome);
            }
        }
        Ok(Redecided {
            imps: outcomes,
            guessed_calls: answers.guessed_calls,
            unobserved_calls: answers.unobserved_calls,
        })
    }

    /// The waterfall over one impression's ranking, as bid-intake and network-caller
    /// walk it: the networks above the best demand in hand, called in rank order until
    /// one fills; else that demand.
    fn walk(
        &self,
        ranked: Vec<RankedCandidate>,
        quality: &AdQuality,
        logged: Option<&log::Imp>,
        answers: &mut Answers<'_>,
        outcome: &mut ImpOutcome,
    ) {
        let filters = wire::ad_quality(quality);
        let (networks, in_hand) = plan::split_at_in_hand(ranked);
        let nodes: Vec<Node> = networks
            .iter()
            .map(|ranked| {
                ranked
                    .candidate
                    .as_ref()
                    .and_then(|c| self.snapshot.network(&c.network_id))
                    .map_or(Node::Unreachable, |network| Node::Network {
                        timeout: Duration::from_millis(u64::from(network.timeout_ms)),
                    })
            })
            .collect();
        let impid = outcome.impid.clone();
        let mut walk = Walk::new(self.limits);
        loop {
            let index = match walk.step(&nodes, UNHURRIED) {
                Step::Exhausted => break,
                Step::Serve(_) | Step::Skip { .. } => continue,
                Step::Call { index, .. } => index,
            };
            let ranked = &networks[index];
            let Some(candidate) = ranked.candidate.as_ref() else {
                continue;
            };
            let ad = match answers.of(
                logged,
                outcome,
                &impid,
                (&candidate.id, &candidate.bid_id),
                &candidate.network_id,
            ) {
                Call::Skipped => continue,
                Call::Answered(ad) => ad,
            };
            walk.called();
            outcome.asked.push(candidate.network_id.clone());
            // The floor network-caller sends: the auction's, never under the bid's CPM.
            let floor = ranked.floor_micros.max(candidate.bid_micros);
            if let Some((price, _)) = ad.and_then(|ad| ad.accepted(floor, &filters)) {
                // Booked at the network's own price, adjusted like its CPM.
                let booked = adjustment(candidate.bid_adjustment_ppm).apply(price).0;
                outcome.served = Served::of(ranked, booked);
                return;
            }
        }
        match in_hand
            .as_ref()
            .and_then(|best| Served::of(best, best.clearing_price_micros))
        {
            Some(served) => outcome.served = Some(served),
            None => outcome.unfilled(NoFillReason::WaterfallExhausted),
        }
    }
}

/// The answers of the networks to one decision: from the log, or drawn.
struct Answers<'a> {
    observed: &'a Observed,
    seed: u64,
    request_id: &'a str,
    guessed_calls: u32,
    unobserved_calls: u32,
}

/// What became of one call or ask in the replay.
enum Call {
    /// It is not made, as the log shows it was not: skipped for time, health, or
    /// network-caller not answering. The same moment would skip it again; it counts
    /// toward no cap.
    Skipped,
    /// Made; `None` for no ad.
    Answered(Option<Box<Ad>>),
}

/// The reason code of a node the walk skipped for its call cap: the replayed walk
/// applies its own cap, so such a node is one the log does not answer for.
const CALL_CAP: &str = "call_cap";

impl Answers<'_> {
    /// What the network of candidate `candidate_id` (`bid_id`) answers for `impid`: as
    /// logged when the original decision reached it, else a draw.
    fn of(
        &mut self,
        logged: Option<&log::Imp>,
        outcome: &mut ImpOutcome,
        impid: &str,
        candidate: (&str, &str),
        network_id: &str,
    ) -> Call {
        let (candidate_id, bid_id) = candidate;
        let attempt = logged.and_then(|imp| {
            imp.attempts.iter().find(|a| {
                a.candidate_id == candidate_id
                    && (a.called
                        || (a.outcome() == AttemptOutcome::Skipped && a.reason != CALL_CAP))
            })
        });
        if let Some(attempt) = attempt {
            if !attempt.called {
                return Call::Skipped;
            }
            let Some(price) = observed::answered_ad(attempt) else {
                return Call::Answered(None);
            };
            let creative = (attempt.outcome() == AttemptOutcome::Filled)
                .then(|| logged.and_then(|imp| logged_creative(imp, candidate_id)))
                .flatten();
            return Call::Answered(Some(Box::new(Ad { price, creative })));
        }
        self.guessed_calls += 1;
        outcome.guessed = true;
        let drawn = self.observed.guess(
            network_id,
            draw::key(self.seed, &[self.request_id, impid, bid_id]),
        );
        Call::Answered(match drawn {
            Guess::Unobserved => {
                self.unobserved_calls += 1;
                None
            }
            Guess::NoAd => None,
            Guess::Ad(price) => Some(Box::new(Ad {
                price,
                creative: None,
            })),
        })
    }
}

/// An ad a network answered with.
struct Ad {
    /// The price it stated, USD micros; `None` when it stated none.
    price: Option<Micros>,
    /// What the log holds of its creative; `None` when it holds nothing (a drawn
    /// answer, an ad refused for its price): such an ad is judged by its price alone.
    creative: Option<LoggedCreative>,
}

impl Ad {
    /// The price it serves at when it passes the core's judgement under `floor` (USD
    /// micros) and the filters, with its creative.
    fn accepted(self, floor: i64, filters: &Filters<'_>) -> Option<(Micros, LoggedCreative)> {
        let unjudged = Filters::default();
        let (creative, filters) = match self.creative {
            Some(creative) => (creative, filters),
            None => (LoggedCreative::default(), &unjudged),
        };
        let answer = Answer {
            price: self.price,
            creative: Creative {
                adomains: &creative.adomain,
                categories: &creative.cat,
                seat: &creative.seat,
                attributes: &creative.attr,
                dsa_declared: creative.dsa,
            },
        };
        match waterfall::judge(&answer, Micros(floor), filters) {
            Verdict::Accept { price } => Some((price, creative)),
            Verdict::BelowFloor { .. } | Verdict::Refused(_) => None,
        }
    }
}

/// The creative of an ad as the log holds it.
#[derive(Clone, Debug, Default)]
struct LoggedCreative {
    seat: String,
    adomain: Vec<String>,
    cat: Vec<String>,
    attr: Vec<i32>,
    crid: String,
    dealid: String,
    dsa: bool,
    original_cur: String,
    rate_micros: i64,
    original_price_micros: Option<i64>,
}

/// The creative a filled network answer came with: a live bid's is among the logged
/// candidates; a waterfall network's is the logged winner's (a fill ends the walk).
fn logged_creative(imp: &log::Imp, candidate_id: &str) -> Option<LoggedCreative> {
    if candidate_id.starts_with(LIVE_BID) {
        return imp
            .candidates
            .iter()
            .find(|c| c.id == candidate_id)
            .map(|c| LoggedCreative {
                seat: c.seat.clone(),
                adomain: c.adomain.clone(),
                cat: c.cat.clone(),
                attr: c.attr.clone(),
                crid: c.crid.clone(),
                dealid: c.dealid.clone(),
                dsa: c.dsa,
                original_cur: c.original_cur.clone(),
                rate_micros: c.rate_micros,
                original_price_micros: Some(c.original_price_micros),
            });
    }
    imp.winner
        .as_ref()
        .filter(|w| w.candidate_id == candidate_id)
        .map(|w| LoggedCreative {
            seat: w.seat.clone(),
            adomain: w.adomain.clone(),
            cat: w.cat.clone(),
            attr: w.attr.clone(),
            crid: w.crid.clone(),
            dealid: w.dealid.clone(),
            // It served under the same request, so under its DSA requirement.
            dsa: true,
            original_cur: w.original_cur.clone(),
            rate_micros: w.rate_micros,
            original_price_micros: None,
        })
}

/// How bid-intake and network-caller name a bidding network's live bid: this, then the
/// mediated bid's id.
const LIVE_BID: &str = "bidding:";

/// The chained outcomes an impression competed with, as the log holds them (at their
/// stored price, as bid-intake reads them).
fn chained_candidates(imp: &log::Imp) -> Vec<Candidate> {
    imp.candidates
        .iter()
        .filter(|c| c.source() == SourceKind::ChainedOutcome)
        .map(|c| Candidate {
            id: c.id.clone(),
            source: c.source,
            bid_micros: c.price_micros,
            seat: c.seat.clone(),
            network_id: c.network_id.clone(),
            bid_id: c.bid_id.clone(),
            adomain: c.adomain.clone(),
            cat: c.cat.clone(),
            attr: c.attr.clone(),
            original_cur: c.original_cur.clone(),
            rate_micros: c.rate_micros,
            unfilled: c.unfilled,
            ..Default::default()
        })
        .collect()
}
