//! The decision log's entries, built from what a decision or event already holds: the
//! candidates as they reached the auction, the explanation (kept for every decision
//! while the log is on), the winner. Redaction and encoding happen later, in the
//! log's writer, off the hot path.

use std::collections::HashMap;
use std::time::Duration;

use cascade_core::Micros;
use cascade_core::money::Factor;
use cascade_log::schema as log;
use cascade_networks::notices::NoticeKind;
use cascade_proto::auction::v1::Candidate;
use cascade_proto::decision::v1::{Attempt, ExecutionMode, Explanation, ImpDecision, SourceKind};
use cascade_proto::openrtb::v1::{BidRequest, BidResponse};

/// What a decision was about, beside its impressions.
pub(crate) struct Decided {
    pub request_id: String,
    pub account_id: String,
    pub account_path: Vec<String>,
    pub config_version: u64,
    pub client_mode: bool,
    pub test: bool,
    pub budget: Duration,
    pub elapsed: Duration,
    pub request: BidRequest,
    /// What a receiver without a vendor id (the log) may keep of `request`.
    pub unidentified: cascade_proto::decision::v1::PrivacyVerdict,
    pub exchange_bids: Vec<BidResponse>,
    pub key_values: HashMap<String, String>,
    pub chained_selection_ids: Vec<String>,
}

/// One impression as decided: its decision, its explanation, the candidates that reached
/// the auction, and the winning candidate's id.
pub(crate) struct ImpRecord<'a> {
    pub decision: &'a ImpDecision,
    pub explanation: Explanation,
    pub candidates: Vec<log::Candidate>,
    pub winner_candidate_id: &'a str,
}

pub(crate) fn decision_entry<'a>(
    decided: Decided,
    imps: impl Iterator<Item = ImpRecord<'a>>,
) -> log::LogEntry {
    let mode = if decided.client_mode {
        ExecutionMode::Client
    } else {
        ExecutionMode::Server
    } as i32;
    let imps: Vec<log::Imp> = imps.map(imp).collect();
    let networks = imps
        .iter()
        .flat_map(|imp| &imp.attempts)
        .filter_map(|attempt| {
            if attempt.reason == "no_consent" {
                Some(log::NetworkPrivacy {
                    network_id: attempt.network_id.clone(),
                    skipped: true,
                    detail: attempt.detail.clone(),
                })
            } else if !attempt.withheld.is_empty() {
                Some(log::NetworkPrivacy {
                    network_id: attempt.network_id.clone(),
                    skipped: false,
                    detail: format!("withheld {}", attempt.withheld.join(", ")),
                })
            } else {
                None
            }
        })
        .collect();
    log::LogEntry {
        decision: Some(log::Decision {
            request_id: decided.request_id,
            account_id: decided.account_id,
            account_path: decided.account_path,
            config_version: decided.config_version,
            mode,
            test: decided.test,
            budget_ms: millis(decided.budget),
            elapsed_us: u32::try_from(decided.elapsed.as_micros()).unwrap_or(u32::MAX),
            privacy: Some(log::Privacy {
                networks,
                unidentified: Some(decided.unidentified),
                ..Default::default()
            }),
            imps,
            request: Some(decided.request),
            exchange_bids: decided.exchange_bids,
            key_values: decided.key_values,
            chained_selection_ids: decided.chained_selection_ids,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A decision that failed: what the caller was told.
pub(crate) fn failed_decision_entry(
    request_id: String,
    account_id: String,
    status: &tonic::Status,
) -> log::LogEntry {
    log::LogEntry {
        decision: Some(log::Decision {
            request_id,
            account_id,
            error_code: format!("{:?}", status.code()),
            error: status.message().to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A notice Cascade fires, its result to be filled in: the decision's request and
/// impression, and the host it went to (the URL itself may carry ids; the host names
/// the receiver).
pub(crate) fn notice_entry(
    kind: NoticeKind,
    url: &str,
    request_id: &str,
    impid: &str,
) -> log::LogEntry {
    log::LogEntry {
        event: Some(log::Event {
            kind: format!("{}_notice", kind.name()),
            request_id: request_id.to_string(),
            impid: impid.to_string(),
            notice_host: notice_host(url),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The host of a notice URL, or the empty string for one that does not parse.
pub(crate) fn notice_host(url: &str) -> String {
    url.split_once("://")
        .map(|(_, rest)| rest)
        .and_then(|rest| rest.split(['/', '?', '#']).next())
        .map(|authority| {
            authority
                .rsplit('@')
                .next()
                .unwrap_or(authority)
                .to_string()
        })
        .unwrap_or_default()
}

/// Every candidate of an impression as it reached the auction.
pub(crate) fn candidates(candidates: &[Candidate]) -> Vec<log::Candidate> {
    candidates
        .iter()
        .map(|c| {
            let factor = Factor::from_adjustment_ppm(c.bid_adjustment_ppm);
            // Stated in its own currency, or (configured demand, a chained outcome's
            // stored price) in USD.
            let (original_price_micros, original_cur, rate_micros) = match c.original_price_micros {
                Some(stated) => (stated, c.original_cur.clone(), c.rate_micros),
                None => (c.bid_micros, String::new(), 0),
            };
            log::Candidate {
                id: c.id.clone(),
                source: c.source,
                seat: c.seat.clone(),
                network_id: c.network_id.clone(),
                bid_id: c.bid_id.clone(),
                dealid: c.dealid.clone(),
                crid: c.crid.clone(),
                adomain: c.adomain.clone(),
                original_price_micros,
                original_cur,
                rate_micros,
                price_micros: c.bid_micros,
                bid_adjustment_ppm: c.bid_adjustment_ppm,
                adjusted_price_micros: factor.apply(Micros(c.bid_micros)).0,
                cat: c.cat.clone(),
                attr: c.attr.clone(),
                unfilled: c.unfilled,
                dsa: c.dsa,
            }
        })
        .collect()
}

fn imp(record: ImpRecord<'_>) -> log::Imp {
    let decision = record.decision;
    let explanation = record.explanation;
    log::Imp {
        impid: decision.impid.clone(),
        applied_rule_id: explanation.applied_rule_id,
        rule_account_id: explanation.rule_account_id,
        rule_inherited: explanation.rule_inherited,
        matched_rule_ids: explanation.matched_rule_ids,
        floor_micros: explanation.floor_micros,
        candidates: record.candidates,
        drops: explanation
            .dropped
            .into_iter()
            .map(|d| log::Drop {
                source: d.source,
                candidate_id: d.candidate_id,
                price_micros: d.price_micros,
                reason: d.reason,
                detail: d.detail,
                loss_code: d.loss_code,
            })
            .collect(),
        attempts: explanation.attempts.into_iter().map(attempt).collect(),
        excluded: explanation
            .excluded
            .into_iter()
            .map(|e| log::Excluded {
                id: e.id,
                reason: e.reason,
            })
            .collect(),
        winner: decision.winner.as_ref().map(|w| log::Winner {
            selection_id: w.selection_id.clone(),
            candidate_id: record.winner_candidate_id.to_string(),
            source: w.source,
            seat: w.seat.clone(),
            network_id: w.network_id.clone(),
            bid_id: w.bid_id.clone(),
            crid: w.crid.clone(),
            dealid: w.dealid.clone(),
            adomain: w.adomain.clone(),
            price_micros: w.price_micros,
            cur: w.cur.clone(),
            original_cur: w.original_cur.clone(),
            rate_micros: w.rate_micros,
            cat: w.cat.clone(),
            attr: w.attr.clone(),
        }),
        no_fill_reason: decision.no_fill_reason,
        chain: decision
            .chain
            .iter()
            .map(|node| log::ChainNode {
                selection_id: node.selection_id.clone(),
                source: node.source,
                network_id: node.network_id.clone(),
                bid_id: node.bid_id.clone(),
                price_micros: node.price_micros,
                floor_micros: node.floor_micros,
            })
            .collect(),
    }
}

fn attempt(attempt: Attempt) -> log::Attempt {
    log::Attempt {
        source: attempt.source,
        live_bid: attempt.source() == SourceKind::BiddingNetwork,
        outcome: attempt.outcome,
        candidate_id: attempt.candidate_id,
        network_id: attempt.network_id,
        bid_id: attempt.bid_id,
        reason: attempt.reason,
        detail: attempt.detail,
        latency_us: attempt.latency_us,
        floor_micros: attempt.floor_micros,
        price_micros: attempt.price_micros,
        nbr: attempt.nbr,
        called: attempt.called,
        withheld: attempt.withheld,
    }
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::notice_host;

    #[test]
    fn a_notice_is_logged_by_its_host_not_its_url() {
        assert_eq!(
            notice_host("https://user:pw@win.example:8443/n?price=${AUCTION_PRICE}"),
            "win.example:8443"
        );
        assert_eq!(notice_host("http://10.0.0.1/win#x"), "10.0.0.1");
        assert_eq!(notice_host("not a url"), "");
    }
}
