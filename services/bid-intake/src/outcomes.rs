//! The decision-level metrics: every Decide counted once by how it ended, every
//! impression of an answered one by the kind of demand that won it (and at what price)
//! or by why nothing did. Every series exists from the start, at zero, so that an alert
//! sees the first failure as an increase. Labels are bounded enumerations: no account,
//! publisher or ad unit.

use cascade_proto::decision::v1::{DecideResponse, NoFillReason, SourceKind};
use tonic::Code;

/// How a Decide ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Answered, at least one impression sold.
    Filled,
    /// Answered, nothing sold.
    Unfilled,
    /// A retry, given the first attempt's answer again (counted once, there).
    Replayed,
    /// Refused: the caller's mistake (`INVALID_ARGUMENT`, `NOT_FOUND`).
    Invalid,
    /// Refused under overload (`RESOURCE_EXHAUSTED`).
    Shed,
    /// Anything else: a deadline, a service or the store unavailable, a fault of ours.
    Failed,
}

const OUTCOMES: [Outcome; 6] = [
    Outcome::Filled,
    Outcome::Unfilled,
    Outcome::Replayed,
    Outcome::Invalid,
    Outcome::Shed,
    Outcome::Failed,
];

impl Outcome {
    fn name(self) -> &'static str {
        match self {
            Outcome::Filled => "filled",
            Outcome::Unfilled => "unfilled",
            Outcome::Replayed => "replayed",
            Outcome::Invalid => "invalid",
            Outcome::Shed => "shed",
            Outcome::Failed => "failed",
        }
    }

    /// The outcome of a Decide refused with `code`.
    pub(crate) fn of_refusal(code: Code) -> Self {
        match code {
            Code::InvalidArgument | Code::NotFound => Outcome::Invalid,
            Code::ResourceExhausted => Outcome::Shed,
            _ => Outcome::Failed,
        }
    }
}

const SOURCES: [SourceKind; 6] = [
    SourceKind::Unspecified,
    SourceKind::Exchange,
    SourceKind::MediatedNetwork,
    SourceKind::BiddingNetwork,
    SourceKind::LineItem,
    SourceKind::ChainedOutcome,
];

const REASONS: [NoFillReason; 8] = [
    NoFillReason::Unspecified,
    NoFillReason::UnknownAccount,
    NoFillReason::NoMatchingRule,
    NoFillReason::NoEligibleDemand,
    NoFillReason::WaterfallExhausted,
    NoFillReason::DeadlineExceeded,
    NoFillReason::NetworksUnreachable,
    NoFillReason::Overloaded,
];

/// `SOURCE_KIND_LINE_ITEM` → `line_item`.
fn source_label(source: SourceKind) -> &'static str {
    match source {
        SourceKind::Unspecified => "unspecified",
        SourceKind::Exchange => "exchange",
        SourceKind::MediatedNetwork => "mediated_network",
        SourceKind::BiddingNetwork => "bidding_network",
        SourceKind::LineItem => "line_item",
        SourceKind::ChainedOutcome => "chained_outcome",
    }
}

fn reason_label(reason: NoFillReason) -> &'static str {
    match reason {
        NoFillReason::Unspecified => "unspecified",
        NoFillReason::UnknownAccount => "unknown_account",
        NoFillReason::NoMatchingRule => "no_matching_rule",
        NoFillReason::NoEligibleDemand => "no_eligible_demand",
        NoFillReason::WaterfallExhausted => "waterfall_exhausted",
        NoFillReason::DeadlineExceeded => "deadline_exceeded",
        NoFillReason::NetworksUnreachable => "networks_unreachable",
        NoFillReason::Overloaded => "overloaded",
    }
}

/// Registers every series an alert may use at zero.
pub(crate) fn register() {
    for outcome in OUTCOMES {
        metrics::counter!("cascade_decisions_total", "outcome" => outcome.name()).absolute(0);
    }
    for source in SOURCES {
        let source = source_label(source);
        metrics::counter!("cascade_impressions_filled_total", "source" => source).absolute(0);
        metrics::counter!("cascade_impressions_filled_price_micros_total", "source" => source)
            .absolute(0);
    }
    for reason in REASONS {
        metrics::counter!("cascade_impressions_unfilled_total", "reason" => reason_label(reason))
            .absolute(0);
    }
}

pub(crate) fn count(outcome: Outcome) {
    metrics::counter!("cascade_decisions_total", "outcome" => outcome.name()).increment(1);
}

/// Counts a decision answered (not replayed): its outcome and each impression's.
pub(crate) fn count_answer(response: &DecideResponse) {
    let mut filled = false;
    for decision in &response.decisions {
        match &decision.winner {
            Some(winner) => {
                filled = true;
                let source = source_label(winner.source());
                metrics::counter!("cascade_impressions_filled_total", "source" => source)
                    .increment(1);
                // Winners are priced in the auction's currency (USD), whatever their
                // source bid in.
                metrics::counter!("cascade_impressions_filled_price_micros_total", "source" => source)
                    .increment(u64::try_from(winner.price_micros).unwrap_or(0));
            }
            // A client-mode decision hands its chain to the client: nothing is sold here
            // yet, and nothing is counted as unfilled either.
            None if !decision.chain.is_empty() => {}
            None => {
                let reason = reason_label(decision.no_fill_reason());
                metrics::counter!("cascade_impressions_unfilled_total", "reason" => reason)
                    .increment(1);
            }
        }
    }
    count(if filled {
        Outcome::Filled
    } else {
        Outcome::Unfilled
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_split_the_callers_mistakes_from_overload_and_failures() {
        assert_eq!(Outcome::of_refusal(Code::InvalidArgument), Outcome::Invalid);
        assert_eq!(Outcome::of_refusal(Code::NotFound), Outcome::Invalid);
        assert_eq!(Outcome::of_refusal(Code::ResourceExhausted), Outcome::Shed);
        assert_eq!(Outcome::of_refusal(Code::DeadlineExceeded), Outcome::Failed);
        assert_eq!(Outcome::of_refusal(Code::Unavailable), Outcome::Failed);
    }

    #[test]
    fn every_label_value_is_listed() {
        // A variant added to the proto enums must be added to the lists registered at
        // zero; the labels are distinct.
        let sources: std::collections::BTreeSet<_> = SOURCES.map(source_label).into();
        assert_eq!(sources.len(), SOURCES.len());
        let reasons: std::collections::BTreeSet<_> = REASONS.map(reason_label).into();
        assert_eq!(reasons.len(), REASONS.len());
        assert!(NoFillReason::try_from(REASONS.len() as i32).is_err());
        assert!(SourceKind::try_from(SOURCES.len() as i32).is_err());
    }
}
