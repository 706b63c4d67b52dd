//! Before against after, per account and demand, with intervals.
//!
//! The intervals are a bootstrap: each round resamples the log's decisions (each
//! decision counts Poisson(1) times, the streaming form of a resample with replacement)
//! and draws again every answer the log does not hold. The 90% interval of a figure is
//! the spread of its value over the rounds, so it says both how much the traffic at hand
//! could vary and how much rests on guessed answers. Round 0 is the point estimate:
//! every decision once, with the first draws.

use std::collections::HashMap;

use serde::Serialize;

use crate::draw;

/// What one impression came to, in the rows it counts in.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// The row of the demand that served it and the price (USD micros CPM).
    pub served: Option<(u32, i64)>,
    /// The rows of the networks called or asked for it.
    pub asked: Vec<u32>,
}

/// A decision as the summary keeps it: its impressions before and after, and, when its
/// outcome rests on drawn answers, its outcome in every further round.
#[derive(Clone, Debug)]
pub struct Kept {
    pub request_id: String,
    pub account_row: u32,
    /// Per impression: (logged, replayed in round 0).
    pub imps: Vec<(Tally, Tally)>,
    /// Per round from 1, per impression, when a draw was made; empty otherwise.
    pub rounds: Vec<Vec<Tally>>,
}

/// The rows: one per account (all its demand, `demand = "*"`) and per (account,
/// demand), demand being a network id or the kind of the other demand.
#[derive(Clone, Debug, Default)]
pub struct Rows {
    index: HashMap<(String, String), u32>,
    keys: Vec<(String, String)>,
    /// Per row: whether its demand is called (a network's, or an account's total), so
    /// that its requests mean something.
    called: Vec<bool>,
}

/// The demand of an account's own total row.
pub const ALL: &str = "*";

impl Rows {
    pub fn row(&mut self, account_id: &str, demand: &str) -> u32 {
        let key = (account_id.to_string(), demand.to_string());
        if let Some(row) = self.index.get(&key) {
            return *row;
        }
        let row = u32::try_from(self.keys.len()).unwrap_or(u32::MAX);
        self.called.push(demand == ALL);
        self.index.insert(key.clone(), row);
        self.keys.push(key);
        row
    }

    /// The row of a network called or asked for an impression of `account_id`.
    pub fn called_row(&mut self, account_id: &str, network_id: &str) -> u32 {
        let row = self.row(account_id, network_id);
        self.called[row as usize] = true;
        row
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn key(&self, row: u32) -> &(String, String) {
        &self.keys[row as usize]
    }
}

/// One side's sums for one row.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sums {
    requests: u64,
    fills: u64,
    /// The CPM prices of the impressions served, summed (USD micros).
    cpm_micros: i64,
}

impl Sums {
    fn revenue_micros(&self) -> i64 {
        self.cpm_micros / 1_000
    }

    fn ecpm_micros(&self) -> Option<i64> {
        (self.fills > 0).then(|| self.cpm_micros / self.fills as i64)
    }
}

/// One side of a row, as printed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Side {
    /// Impressions (an account's row) or calls and asks (a network's row); `None` for
    /// demand that is never called (exchange bids, line items, chained outcomes).
    pub requests: Option<u64>,
    pub fills: u64,
    /// What the impressions served earned (USD micros).
    pub revenue_micros: i64,
    /// Revenue per thousand impressions served (USD micros).
    pub ecpm_micros: Option<i64>,
    pub fill_rate: Option<f64>,
}

/// A row: before, after, and the change, each uncertain figure with its 90% interval.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub account_id: String,
    pub demand: String,
    pub before: Side,
    pub after: Side,
    pub after_revenue_interval: [i64; 2],
    pub after_fills_interval: [u64; 2],
    pub delta_revenue_micros: i64,
    pub delta_revenue_interval: [i64; 2],
}

/// Every row over every round.
pub fn rows(rows: &Rows, kept: &[Kept], rounds: u32) -> Vec<Row> {
    let point = sums(rows.len(), kept, 0);
    let mut after_revenue = vec![Vec::new(); rows.len()];
    let mut after_fills = vec![Vec::new(); rows.len()];
    let mut delta_revenue = vec![Vec::new(); rows.len()];
    for round in 1..=rounds {
        for (row, [before, after]) in sums(rows.len(), kept, round).into_iter().enumerate() {
            after_revenue[row].push(after.revenue_micros());
            after_fills[row].push(after.fills);
            delta_revenue[row].push(after.revenue_micros() - before.revenue_micros());
        }
    }
    let mut out: Vec<Row> = point
        .into_iter()
        .enumerate()
        .map(|(row, [before, after])| {
            let (account_id, demand) = rows.key(row as u32).clone();
            let called = rows.called[row];
            let side = |sums: Sums| Side {
                requests: called.then_some(sums.requests),
                fills: sums.fills,
                revenue_micros: sums.revenue_micros(),
                ecpm_micros: sums.ecpm_micros(),
                fill_rate: (called && sums.requests > 0)
                    .then(|| sums.fills as f64 / sums.requests as f64),
            };
            let delta = after.revenue_micros() - before.revenue_micros();
            Row {
                account_id,
                demand,
                after_revenue_interval: interval(&mut after_revenue[row], after.revenue_micros()),
                after_fills_interval: interval(&mut after_fills[row], after.fills),
                delta_revenue_micros: delta,
                delta_revenue_interval: interval(&mut delta_revenue[row], delta),
                before: side(before),
                after: side(after),
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (&a.account_id, a.demand != ALL, &a.demand).cmp(&(
            &b.account_id,
            b.demand != ALL,
            &b.demand,
        ))
    });
    out
}

/// Before and after, per row, in one round.
fn sums(rows: usize, kept: &[Kept], round: u32) -> Vec<[Sums; 2]> {
    let mut sums = vec![[Sums::default(); 2]; rows];
    for decision in kept {
        let weight = if round == 0 {
            1
        } else {
            draw::poisson_one(draw::key(u64::from(round), &[&decision.request_id]))
        };
        if weight == 0 {
            continue;
        }
        let drawn = (round > 0)
            .then(|| decision.rounds.get(round as usize - 1))
            .flatten();
        for (index, (before, after)) in decision.imps.iter().enumerate() {
            let after = drawn.and_then(|imps| imps.get(index)).unwrap_or(after);
            for (side, tally) in [(0, before), (1, after)] {
                add(&mut sums, side, decision.account_row, tally, weight);
            }
        }
    }
    sums
}

fn add(sums: &mut [[Sums; 2]], side: usize, account_row: u32, tally: &Tally, weight: u64) {
    sums[account_row as usize][side].requests += weight;
    for row in &tally.asked {
        sums[*row as usize][side].requests += weight;
    }
    if let Some((row, price)) = tally.served {
        let price = price.saturating_mul(weight as i64);
        for row in [account_row, row] {
            let cell = &mut sums[row as usize][side];
            cell.fills += weight;
            cell.cpm_micros = cell.cpm_micros.saturating_add(price);
        }
    }
}

/// The 5th and 95th percentiles of `values`; `point` alone when there are none.
fn interval<T: Copy + Ord>(values: &mut [T], point: T) -> [T; 2] {
    if values.is_empty() {
        return [point, point];
    }
    values.sort_unstable();
    let last = values.len() - 1;
    let low = (last as f64 * 0.05).floor() as usize;
    let high = (last as f64 * 0.95).ceil() as usize;
    [values[low], values[high]]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: &str, account_row: u32, imps: Vec<(Tally, Tally)>) -> Kept {
        Kept {
            request_id: id.into(),
            account_row,
            imps,
            rounds: Vec::new(),
        }
    }

    fn served(row: u32, price: i64) -> Tally {
        Tally {
            served: Some((row, price)),
            asked: vec![row],
        }
    }

    #[test]
    fn an_unchanged_replay_has_no_change_and_no_spread_in_it() {
        let mut rows = Rows::default();
        let account = rows.row("pub", ALL);
        let network = rows.called_row("pub", "net");
        let kept: Vec<Kept> = (0..50)
            .map(|i| {
                let tally = served(network, 1_000_000 + i * 10_000);
                decision(&format!("r{i}"), account, vec![(tally.clone(), tally)])
            })
            .collect();
        let out = rows_of(&rows, &kept, 100);
        for row in &out {
            assert_eq!(row.before, row.after);
            assert_eq!(row.delta_revenue_micros, 0);
            assert_eq!(row.delta_revenue_interval, [0, 0], "paired rounds");
        }
        let total = out.iter().find(|r| r.demand == ALL).unwrap();
        assert_eq!(total.before.requests, Some(50));
        assert_eq!(total.before.fills, 50);
        // 50 impressions at 1.00..1.49 CPM: 62.25 CPM summed, 0.06225 earned.
        assert_eq!(total.before.revenue_micros, 62_250);
        assert_eq!(total.before.ecpm_micros, Some(1_245_000));
        let [low, high] = total.after_revenue_interval;
        assert!(low < 62_250 && 62_250 < high, "{low}..{high}");
    }

    #[test]
    fn a_lost_sale_shows_in_the_delta_and_drawn_rounds_widen_it() {
        let mut rows = Rows::default();
        let account = rows.row("pub", ALL);
        let network = rows.called_row("pub", "net");
        let lost = Tally {
            served: None,
            asked: vec![network],
        };
        let mut kept: Vec<Kept> = (0..40)
            .map(|i| {
                decision(
                    &format!("r{i}"),
                    account,
                    vec![(served(network, 2_000_000), lost.clone())],
                )
            })
            .collect();
        // One decision whose outcome was drawn: it fills in half the rounds.
        let mut guessed = decision("g", account, vec![(Tally::default(), Tally::default())]);
        guessed.rounds = (0..200)
            .map(|round| {
                vec![if round % 2 == 0 {
                    served(network, 2_000_000)
                } else {
                    Tally::default()
                }]
            })
            .collect();
        kept.push(guessed);
        let out = rows_of(&rows, &kept, 200);
        let net = out.iter().find(|r| r.demand == "net").unwrap();
        assert_eq!(net.before.fills, 40);
        assert_eq!(net.after.fills, 0);
        assert_eq!(net.delta_revenue_micros, -80_000);
        assert_eq!(net.after.fill_rate, Some(0.0));
        let [low, high] = net.after_fills_interval;
        assert_eq!(low, 0);
        assert!(high >= 1, "the drawn fill shows in the interval");
    }

    fn rows_of(rows: &Rows, kept: &[Kept], rounds: u32) -> Vec<Row> {
        super::rows(rows, kept, rounds)
    }
}
