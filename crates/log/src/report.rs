//! The network performance report rebuilt from the log: each logged fact adds to the
//! same cells, by the same rules ([`cascade_core::report`]), as the counters the
//! services keep while they run; so for the same traffic the two agree.

use std::collections::HashMap;

use cascade_core::report::{
    CallAnswer, Granularity, Metric, ReportCell, ReportRow, build_report, call_counts, counts_at,
    impression_counts, node_result_counts,
};

use cascade_proto::decision::v1::{AttemptOutcome, SourceKind};

use crate::schema::{Decision, Event, LogEntry};

/// The report's counters, added up from log entries one at a time: reading a month of
/// log costs the cells it fills, not the entries it holds.
#[derive(Default)]
pub struct Rebuilt {
    counts: HashMap<ReportCell, u64>,
}

impl Rebuilt {
    pub fn add(&mut self, entry: &LogEntry) {
        let unix_seconds = entry.time_unix_ms.div_euclid(1_000);
        let mut facts = Vec::new();
        if let Some(decision) = &entry.decision {
            decision_counts(decision, unix_seconds, &mut facts);
        }
        if let Some(event) = &entry.event {
            event_counts(event, unix_seconds, &mut facts);
        }
        for (cell, count) in facts {
            *self.counts.entry(cell).or_default() += count;
        }
    }

    /// The report, by hour or by day (without what networks reported paying, which is
    /// not in the log).
    pub fn rows(&self, granularity: Granularity) -> Vec<ReportRow> {
        let counts: Vec<(ReportCell, u64)> =
            self.counts.iter().map(|(c, n)| (c.clone(), *n)).collect();
        build_report(&counts, &[], granularity)
    }
}

fn decision_counts(decision: &Decision, unix_seconds: i64, counts: &mut Vec<(ReportCell, u64)>) {
    if decision.test {
        return;
    }
    for imp in &decision.imps {
        for attempt in imp.attempts.iter().filter(|a| a.called) {
            let answer = match attempt.outcome() {
                AttemptOutcome::Filled => CallAnswer::Accepted,
                AttemptOutcome::NoFill if attempt.reason == "blocked_ad" => CallAnswer::Blocked,
                AttemptOutcome::Timeout => CallAnswer::Timeout,
                AttemptOutcome::Error => CallAnswer::Error,
                _ => CallAnswer::NoAd,
            };
            counts.extend(call_counts(
                unix_seconds,
                &attempt.network_id,
                &attempt.bid_id,
                answer,
                attempt.live_bid,
                u64::from(attempt.latency_us),
            ));
        }
        if let Some(winner) = &imp.winner
            && !winner.network_id.is_empty()
            && winner.source() != SourceKind::ChainedOutcome
        {
            counts.extend(counts_at(
                unix_seconds,
                &winner.network_id,
                &winner.bid_id,
                [(Metric::Wins, 1)],
            ));
        }
    }
}

fn event_counts(event: &Event, unix_seconds: i64, counts: &mut Vec<(ReportCell, u64)>) {
    if event.duplicate || event.test || event.network_id.is_empty() {
        return;
    }
    match event.kind.as_str() {
        "impression" => counts.extend(impression_counts(
            unix_seconds,
            &event.network_id,
            &event.bid_id,
            event.price_micros,
        )),
        "node_result" => counts.extend(node_result_counts(
            unix_seconds,
            &event.network_id,
            &event.bid_id,
            &event.node_outcome,
            event.node_latency_ms,
        )),
        _ => {}
    }
}
