//! `cascade replay`: the decisions of a log decided again under a candidate
//! configuration, to see what a floor, a CPM or a filter would have done to the
//! traffic that really came, before it is applied.
//!
//! Two passes over the log: the first gathers what every network did when called
//! ([`Observed`]); the second decides each decision again ([`Replayer`]) and keeps its
//! outcome before and after; [`Replay::finish`] sums them per account and demand with
//! bootstrap intervals ([`summary`]).

pub mod draw;
pub mod observed;
pub mod redecide;
pub mod summary;

use std::collections::BTreeMap;

use cascade_core::waterfall::WalkLimits;
use cascade_log::schema::LogEntry;
use cascade_proto::decision::v1::SourceKind;
use serde::Serialize;

pub use observed::Observed;
pub use redecide::{ImpOutcome, Redecided, Replayer, Served, Unreplayable};
use summary::{Kept, Rows, Tally};

/// How a replay runs.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Bootstrap rounds for the intervals (0: no intervals).
    pub rounds: u32,
    /// How many of the most changed impressions the summary lists.
    pub changes: usize,
    pub limits: WalkLimits,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            rounds: 200,
            changes: 10,
            limits: WalkLimits::default(),
        }
    }
}

/// One impression, as logged and as replayed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Compared {
    pub request_id: String,
    pub impid: String,
    pub before: ImpOutcome,
    pub after: ImpOutcome,
    /// Another demand serves, or at another price, or one serves where none did.
    pub changed: bool,
}

/// A changed impression, in the summary's list of the largest changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Change {
    pub request_id: String,
    pub impid: String,
    pub before: Option<Served>,
    pub after: Option<Served>,
    /// What it earns after less what it earned (USD micros).
    pub revenue_delta_micros: i64,
    pub guessed: bool,
}

/// What a replay found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub configuration_version: u64,
    pub rounds: u32,
    pub decisions_read: u64,
    pub decisions_replayed: u64,
    /// Decisions not replayed, by why (`failed`, `client_mode`, `test`,
    /// `request_not_logged`, `refused`).
    pub decisions_skipped: BTreeMap<&'static str, u64>,
    /// Why the first refused decision was refused (its request id and the error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_refusal: Option<String>,
    pub impressions_replayed: u64,
    pub impressions_changed: u64,
    /// Impressions whose outcome rests on at least one drawn answer.
    pub impressions_guessed: u64,
    /// Impressions replayed from a request the log keeps redacted: targeting on what was
    /// withheld (user segments, precise location) cannot be replayed for them.
    pub impressions_from_redacted_requests: u64,
    /// Network answers drawn from the network's record rather than logged.
    pub calls_guessed: u64,
    /// Of those, calls to networks the log never saw called, taken as no ad.
    pub calls_unobserved: u64,
    /// The share of the replayed revenue earned by impressions whose outcome rests on a
    /// drawn answer.
    pub guessed_revenue_share: f64,
    pub rows: Vec<summary::Row>,
    pub largest_changes: Vec<Change>,
}

/// A replay in progress: decisions go in one at a time ([`Replay::add`]).
pub struct Replay<'a> {
    replayer: Replayer<'a>,
    settings: Settings,
    rows: Rows,
    kept: Vec<Kept>,
    changes: Vec<Change>,
    decisions_read: u64,
    skipped: BTreeMap<&'static str, u64>,
    first_refusal: Option<String>,
    impressions_changed: u64,
    impressions_guessed: u64,
    impressions_redacted: u64,
    calls_guessed: u64,
    calls_unobserved: u64,
    revenue_after: i64,
    revenue_guessed: i64,
}

impl<'a> Replay<'a> {
    pub fn new(replayer: Replayer<'a>, settings: Settings) -> Self {
        Self {
            replayer,
            settings,
            rows: Rows::default(),
            kept: Vec::new(),
            changes: Vec::new(),
            decisions_read: 0,
            skipped: BTreeMap::new(),
            first_refusal: None,
            impressions_changed: 0,
            impressions_guessed: 0,
            impressions_redacted: 0,
            calls_guessed: 0,
            calls_unobserved: 0,
            revenue_after: 0,
            revenue_guessed: 0,
        }
    }

    /// Replays one entry (events are passed over); returns its impressions compared, or
    /// why it was not replayed.
    pub fn add(&mut self, entry: &LogEntry) -> Result<Vec<Compared>, Unreplayable> {
        let Some(decision) = entry.decision.as_ref() else {
            return Ok(Vec::new());
        };
        self.decisions_read += 1;
        let replayed = self
            .replayer
            .redecide(decision, entry.time_unix_ms, 0)
            .inspect_err(|why| {
                *self.skipped.entry(why.code()).or_default() += 1;
                if let (Unreplayable::Refused(error), None) = (why, &self.first_refusal) {
                    self.first_refusal = Some(format!("{}: {error}", decision.request_id));
                }
            })?;
        let before = redecide::logged(decision);
        let mut rounds = Vec::new();
        if replayed.guessed_calls > 0 {
            for round in 1..=self.settings.rounds {
                // Same input, other draws: a decision replayable once is replayable again.
                let drawn =
                    self.replayer
                        .redecide(decision, entry.time_unix_ms, u64::from(round))?;
                rounds.push(self.tallies(&decision.account_id, &drawn.imps));
            }
        }
        self.calls_guessed += u64::from(replayed.guessed_calls);
        self.calls_unobserved += u64::from(replayed.unobserved_calls);
        let redacted = decision
            .privacy
            .as_ref()
            .is_some_and(|p| !p.withheld.is_empty());
        let account_row = self.rows.row(&decision.account_id, summary::ALL);
        let mut compared = Vec::with_capacity(replayed.imps.len());
        let mut imps = Vec::with_capacity(replayed.imps.len());
        for after in replayed.imps {
            let before = before
                .iter()
                .find(|b| b.impid == after.impid)
                .cloned()
                .unwrap_or_default();
            let changed = !before.same_sale(&after);
            let price =
                |outcome: &ImpOutcome| outcome.served.as_ref().map_or(0, |s| s.price_micros);
            let after_revenue = price(&after) / 1_000;
            self.revenue_after += after_revenue;
            if after.guessed {
                self.impressions_guessed += 1;
                self.revenue_guessed += after_revenue;
            }
            if redacted {
                self.impressions_redacted += 1;
            }
            if changed {
                self.impressions_changed += 1;
                self.changes.push(Change {
                    request_id: decision.request_id.clone(),
                    impid: after.impid.clone(),
                    before: before.served.clone(),
                    after: after.served.clone(),
                    revenue_delta_micros: after_revenue - price(&before) / 1_000,
                    guessed: after.guessed,
                });
                if self.changes.len() > self.settings.changes.max(1) * 8 {
                    self.keep_largest_changes();
                }
            }
            let tallies = self.tallies(&decision.account_id, [&before, &after]);
            imps.push((tallies[0].clone(), tallies[1].clone()));
            compared.push(Compared {
                request_id: decision.request_id.clone(),
                impid: after.impid.clone(),
                before,
                after,
                changed,
            });
        }
        self.kept.push(Kept {
            request_id: decision.request_id.clone(),
            account_row,
            imps,
            rounds,
        });
        Ok(compared)
    }

    /// The tallies of outcomes of `account_id`, their rows created as needed.
    fn tallies<'o>(
        &mut self,
        account_id: &str,
        outcomes: impl IntoIterator<Item = &'o ImpOutcome>,
    ) -> Vec<Tally> {
        outcomes
            .into_iter()
            .map(|outcome| Tally {
                served: outcome.served.as_ref().map(|served| {
                    let demand = demand_of(served);
                    (self.rows.row(account_id, demand), served.price_micros)
                }),
                asked: outcome
                    .asked
                    .iter()
                    .map(|network| self.rows.called_row(account_id, network))
                    .collect(),
            })
            .collect()
    }

    fn keep_largest_changes(&mut self) {
        self.changes.sort_by(|a, b| {
            b.revenue_delta_micros
                .abs()
                .cmp(&a.revenue_delta_micros.abs())
                .then_with(|| (&a.request_id, &a.impid).cmp(&(&b.request_id, &b.impid)))
        });
        self.changes.truncate(self.settings.changes);
    }

    pub fn finish(mut self) -> Summary {
        self.keep_largest_changes();
        let rows = summary::rows(&self.rows, &self.kept, self.settings.rounds);
        let decisions_replayed = self.kept.len() as u64;
        Summary {
            configuration_version: self.replayer.snapshot.version(),
            rounds: self.settings.rounds,
            decisions_read: self.decisions_read,
            decisions_replayed,
            decisions_skipped: self.skipped,
            first_refusal: self.first_refusal,
            impressions_replayed: self.kept.iter().map(|k| k.imps.len() as u64).sum(),
            impressions_changed: self.impressions_changed,
            impressions_guessed: self.impressions_guessed,
            impressions_from_redacted_requests: self.impressions_redacted,
            calls_guessed: self.calls_guessed,
            calls_unobserved: self.calls_unobserved,
            guessed_revenue_share: if self.revenue_after > 0 {
                self.revenue_guessed as f64 / self.revenue_after as f64
            } else {
                0.0
            },
            rows,
            largest_changes: self.changes,
        }
    }
}

/// The row a sale counts in beside its account's: the network's, or (demand that is no
/// network) its `SourceKind` name.
fn demand_of(served: &Served) -> &str {
    match SourceKind::from_str_name(&served.source) {
        Some(SourceKind::MediatedNetwork | SourceKind::BiddingNetwork) => &served.network_id,
        _ => &served.source,
    }
}
