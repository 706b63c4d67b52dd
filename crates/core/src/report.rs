//! The network performance report: what publishers look at to keep mediated bids
//! honest. Services count facts into [`ReportCell`]s (a day, an hour, a network, a
//! mediated bid, a metric); [`build_report`] turns the counts, and the revenue networks
//! report for themselves, into rows per hour or per day.

use std::collections::BTreeMap;

/// Upper bounds of the latency buckets, in milliseconds; the last bucket is open.
pub const LATENCY_BUCKETS_MS: [u32; 14] = [
    1, 2, 5, 10, 20, 50, 100, 150, 200, 300, 500, 1_000, 2_000, 5_000,
];

/// What one counter counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// Calls made to the network.
    Requests,
    /// Answers with a bid (bidding networks).
    Bids,
    /// Answers with an ad (waterfall networks).
    Fills,
    NoFills,
    /// Answers with an ad the impression's ad-quality filters refused: neither a fill
    /// nor a no fill of the network, and never a failure.
    Blocked,
    Timeouts,
    Errors,
    /// Decisions the network's demand won.
    Wins,
    Impressions,
    /// Sum over impressions of the winning CPM / 1000, in micros.
    EstimatedRevenueMicros,
    /// Calls whose latency fell in this bucket of [`LATENCY_BUCKETS_MS`] (the index;
    /// one past the last bound for slower calls).
    Latency(u8),
}

impl Metric {
    fn name(self) -> String {
        match self {
            Metric::Requests => "requests".into(),
            Metric::Bids => "bids".into(),
            Metric::Fills => "fills".into(),
            Metric::NoFills => "no_fills".into(),
            Metric::Blocked => "blocked".into(),
            Metric::Timeouts => "timeouts".into(),
            Metric::Errors => "errors".into(),
            Metric::Wins => "wins".into(),
            Metric::Impressions => "impressions".into(),
            Metric::EstimatedRevenueMicros => "estimated_revenue_micros".into(),
            Metric::Latency(bucket) => format!("latency_{bucket}"),
        }
    }

    fn parse(name: &str) -> Option<Metric> {
        Some(match name {
            "requests" => Metric::Requests,
            "bids" => Metric::Bids,
            "fills" => Metric::Fills,
            "no_fills" => Metric::NoFills,
            "blocked" => Metric::Blocked,
            "timeouts" => Metric::Timeouts,
            "errors" => Metric::Errors,
            "wins" => Metric::Wins,
            "impressions" => Metric::Impressions,
            "estimated_revenue_micros" => Metric::EstimatedRevenueMicros,
            other => Metric::Latency(other.strip_prefix("latency_")?.parse().ok()?),
        })
    }

    /// The latency bucket of a call that took `latency_us`.
    pub fn latency(latency_us: u64) -> Metric {
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|bound| latency_us <= u64::from(*bound) * 1_000)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        Metric::Latency(bucket as u8)
    }
}

/// Separates the parts of a cell's field.
const SEPARATOR: char = '\u{1f}';

/// One counter: a metric of a network (and mediated bid) in an hour of a day (UTC).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReportCell {
    /// `YYYY-MM-DD`.
    pub day: String,
    /// 0 to 23.
    pub hour: u8,
    pub network_id: String,
    /// Empty when the fact is not about one mediated bid.
    pub mediated_bid_id: String,
    pub metric: Metric,
}

impl ReportCell {
    /// The cell's name within its day: hour, network, mediated bid, metric.
    pub fn field(&self) -> String {
        format!(
            "{:02}{SEPARATOR}{}{SEPARATOR}{}{SEPARATOR}{}",
            self.hour,
            self.network_id,
            self.mediated_bid_id,
            self.metric.name()
        )
    }

    /// The cell of `day` named `field`; `None` for a field this version cannot read.
    pub fn parse(day: &str, field: &str) -> Option<ReportCell> {
        let mut parts = field.split(SEPARATOR);
        let hour = parts.next()?.parse().ok().filter(|h| *h < 24)?;
        Some(ReportCell {
            day: day.to_string(),
            hour,
            network_id: parts.next()?.to_string(),
            mediated_bid_id: parts.next()?.to_string(),
            metric: Metric::parse(parts.next()?)?,
        })
    }
}

/// The UTC day (`YYYY-MM-DD`) and hour of `unix_seconds`.
pub fn period_of(unix_seconds: i64) -> (String, u8) {
    let zoned = jiff::Timestamp::from_second(unix_seconds)
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
        .to_zoned(jiff::tz::TimeZone::UTC);
    (zoned.date().to_string(), zoned.hour() as u8)
}

/// `counts` of metrics of one network (and mediated bid, or `""`) in the hour of
/// `unix_seconds`: the cells a fact adds to.
pub fn counts_at<const N: usize>(
    unix_seconds: i64,
    network_id: &str,
    mediated_bid_id: &str,
    counts: [(Metric, u64); N],
) -> [(ReportCell, u64); N] {
    let (day, hour) = period_of(unix_seconds);
    counts.map(|(metric, count)| {
        let cell = ReportCell {
            day: day.clone(),
            hour,
            network_id: network_id.to_string(),
            mediated_bid_id: mediated_bid_id.to_string(),
            metric,
        };
        (cell, count)
    })
}

/// How a call to a network ended, as the report counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallAnswer {
    /// An ad (or live bid) the impression's filters and floor accepted.
    Accepted,
    /// An ad the ad-quality filters refused.
    Blocked,
    /// No ad, a refused price, a no-bid reason.
    NoAd,
    Timeout,
    Error,
}

/// What one call to a network adds to the report: a request, its answer (a bid for a
/// live bid, a fill for a waterfall call), and its latency. Counted by network-caller as
/// it calls, and again from the decision log when the report is rebuilt from it.
pub fn call_counts(
    unix_seconds: i64,
    network_id: &str,
    mediated_bid_id: &str,
    answer: CallAnswer,
    live_bid: bool,
    latency_us: u64,
) -> [(ReportCell, u64); 3] {
    let answered = match answer {
        CallAnswer::Accepted if live_bid => Metric::Bids,
        CallAnswer::Accepted => Metric::Fills,
        CallAnswer::Blocked => Metric::Blocked,
        CallAnswer::NoAd => Metric::NoFills,
        CallAnswer::Timeout => Metric::Timeouts,
        CallAnswer::Error => Metric::Errors,
    };
    counts_at(
        unix_seconds,
        network_id,
        mediated_bid_id,
        [
            (Metric::Requests, 1),
            (answered, 1),
            (Metric::latency(latency_us), 1),
        ],
    )
}

/// What a client-side node result adds: like a call (a filled node also a win); a node
/// the client skipped, or an outcome this version does not know, adds nothing.
pub fn node_result_counts(
    unix_seconds: i64,
    network_id: &str,
    mediated_bid_id: &str,
    outcome: &str,
    latency_ms: u32,
) -> Vec<(ReportCell, u64)> {
    let answer = match outcome {
        "filled" => CallAnswer::Accepted,
        "no_fill" => CallAnswer::NoAd,
        "timeout" => CallAnswer::Timeout,
        "error" => CallAnswer::Error,
        _ => return Vec::new(),
    };
    let latency_us = u64::from(latency_ms) * 1_000;
    let mut counts = call_counts(
        unix_seconds,
        network_id,
        mediated_bid_id,
        answer,
        false,
        latency_us,
    )
    .to_vec();
    if answer == CallAnswer::Accepted {
        counts.extend(counts_at(
            unix_seconds,
            network_id,
            mediated_bid_id,
            [(Metric::Wins, 1)],
        ));
    }
    counts
}

/// What an impression of network demand adds: the impression and its estimated revenue
/// (the clearing CPM / 1000, whole micros).
pub fn impression_counts(
    unix_seconds: i64,
    network_id: &str,
    mediated_bid_id: &str,
    price_micros: i64,
) -> [(ReportCell, u64); 2] {
    let revenue = u64::try_from(price_micros / 1_000).unwrap_or(0);
    counts_at(
        unix_seconds,
        network_id,
        mediated_bid_id,
        [
            (Metric::Impressions, 1),
            (Metric::EstimatedRevenueMicros, revenue),
        ],
    )
}

/// The days from `from` to `to` (`YYYY-MM-DD`, both included), at most `limit` of them.
pub fn days_between(from: &str, to: &str, limit: usize) -> Result<Vec<String>, String> {
    let parse = |text: &str| {
        text.parse::<jiff::civil::Date>()
            .map_err(|e| format!("{text:?} is not a date (YYYY-MM-DD): {e}"))
    };
    let (mut day, last) = (parse(from)?, parse(to)?);
    let mut days = Vec::new();
    while day <= last {
        if days.len() == limit {
            return Err(format!("more than {limit} days"));
        }
        days.push(day.to_string());
        day = day.tomorrow().map_err(|e| e.to_string())?;
    }
    Ok(days)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Granularity {
    Hour,
    Day,
}

/// One line of the report: a network's totals (empty `mediated_bid_id`) or one of its
/// mediated bids', over one hour (`2026-11-22T13`) or one day (`2026-11-22`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportRow {
    pub period: String,
    pub network_id: String,
    pub mediated_bid_id: String,
    pub requests: u64,
    pub bids: u64,
    pub fills: u64,
    pub no_fills: u64,
    pub blocked: u64,
    pub timeouts: u64,
    pub errors: u64,
    pub wins: u64,
    pub impressions: u64,
    pub estimated_revenue_micros: i64,
    /// What the network says it paid; daily network rows only.
    pub reported_revenue_micros: Option<i64>,
    latency_buckets: BTreeMap<u8, u64>,
}

impl ReportRow {
    /// (bids + fills) / requests, in millionths.
    pub fn fill_rate_ppm(&self) -> Option<u64> {
        (self.requests > 0).then(|| (self.bids + self.fills) * 1_000_000 / self.requests)
    }

    /// The eCPM the bid CPMs promised: estimated revenue per thousand impressions.
    pub fn estimated_ecpm_micros(&self) -> Option<i64> {
        ecpm(self.estimated_revenue_micros, self.impressions)
    }

    /// The eCPM the network really paid.
    pub fn realized_ecpm_micros(&self) -> Option<i64> {
        ecpm(self.reported_revenue_micros?, self.impressions)
    }

    /// Bid CPM minus realized eCPM: how much the mediated bids overstate the network.
    pub fn ecpm_gap_micros(&self) -> Option<i64> {
        Some(self.estimated_ecpm_micros()? - self.realized_ecpm_micros()?)
    }

    /// The upper bound of the latency bucket holding the `percentile`th call, in ms;
    /// `None` without calls or when it is beyond the last bound.
    pub fn latency_percentile_ms(&self, percentile: u64) -> Option<u32> {
        let total: u64 = self.latency_buckets.values().sum();
        if total == 0 {
            return None;
        }
        let rank = (total * percentile).div_ceil(100).max(1);
        let mut seen = 0;
        for (bucket, count) in &self.latency_buckets {
            seen += count;
            if seen >= rank {
                return LATENCY_BUCKETS_MS.get(usize::from(*bucket)).copied();
            }
        }
        None
    }

    fn add(&mut self, metric: Metric, count: u64) {
        let count_i64 = i64::try_from(count).unwrap_or(i64::MAX);
        match metric {
            Metric::Requests => self.requests += count,
            Metric::Bids => self.bids += count,
            Metric::Fills => self.fills += count,
            Metric::NoFills => self.no_fills += count,
            Metric::Blocked => self.blocked += count,
            Metric::Timeouts => self.timeouts += count,
            Metric::Errors => self.errors += count,
            Metric::Wins => self.wins += count,
            Metric::Impressions => self.impressions += count,
            Metric::EstimatedRevenueMicros => {
                self.estimated_revenue_micros =
                    self.estimated_revenue_micros.saturating_add(count_i64)
            }
            Metric::Latency(bucket) => *self.latency_buckets.entry(bucket).or_default() += count,
        }
    }
}

fn ecpm(revenue_micros: i64, impressions: u64) -> Option<i64> {
    let impressions = i64::try_from(impressions).ok().filter(|i| *i > 0)?;
    Some(revenue_micros.saturating_mul(1_000) / impressions)
}

/// The report of `counts`, with the daily revenue networks reported
/// (`(day, network, micros)`), by hour or by day, sorted by period, network, then bid.
pub fn build_report(
    counts: &[(ReportCell, u64)],
    reported: &[(String, String, i64)],
    granularity: Granularity,
) -> Vec<ReportRow> {
    let mut rows: BTreeMap<(String, String, String), ReportRow> = BTreeMap::new();
    for (cell, count) in counts {
        let period = match granularity {
            Granularity::Hour => format!("{}T{:02}", cell.day, cell.hour),
            Granularity::Day => cell.day.clone(),
        };
        let mut bids = vec![String::new()];
        if !cell.mediated_bid_id.is_empty() {
            bids.push(cell.mediated_bid_id.clone());
        }
        for bid in bids {
            let key = (period.clone(), cell.network_id.clone(), bid.clone());
            rows.entry(key)
                .or_insert_with(|| ReportRow {
                    period: period.clone(),
                    network_id: cell.network_id.clone(),
                    mediated_bid_id: bid,
                    ..Default::default()
                })
                .add(cell.metric, *count);
        }
    }
    if granularity == Granularity::Day {
        for (day, network, micros) in reported {
            let key = (day.clone(), network.clone(), String::new());
            let row = rows.entry(key).or_insert_with(|| ReportRow {
                period: day.clone(),
                network_id: network.clone(),
                ..Default::default()
            });
            row.reported_revenue_micros = Some(*micros);
        }
    }
    rows.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(hour: u8, bid: &str, metric: Metric) -> ReportCell {
        ReportCell {
            day: "2026-11-22".into(),
            hour,
            network_id: "coolads".into(),
            mediated_bid_id: bid.into(),
            metric,
        }
    }

    #[test]
    fn a_call_counts_a_request_its_answer_and_its_latency() {
        let metrics = |answer, live_bid| {
            call_counts(0, "coolads", "bid", answer, live_bid, 42_000).map(|(c, n)| (c.metric, n))
        };
        assert_eq!(
            metrics(CallAnswer::Accepted, true),
            [
                (Metric::Requests, 1),
                (Metric::Bids, 1),
                (Metric::latency(42_000), 1)
            ]
        );
        assert_eq!(metrics(CallAnswer::Accepted, false)[1], (Metric::Fills, 1));
        assert_eq!(metrics(CallAnswer::Blocked, false)[1], (Metric::Blocked, 1));
        assert_eq!(metrics(CallAnswer::NoAd, true)[1], (Metric::NoFills, 1));
        assert_eq!(
            metrics(CallAnswer::Timeout, false)[1],
            (Metric::Timeouts, 1)
        );
        assert_eq!(metrics(CallAnswer::Error, false)[1], (Metric::Errors, 1));
    }

    #[test]
    fn a_filled_node_is_a_win_and_a_skipped_one_counts_nothing() {
        let metrics = |outcome| -> Vec<Metric> {
            node_result_counts(0, "coolads", "bid", outcome, 40)
                .into_iter()
                .map(|(c, _)| c.metric)
                .collect()
        };
        assert_eq!(
            metrics("filled"),
            [
                Metric::Requests,
                Metric::Fills,
                Metric::latency(40_000),
                Metric::Wins
            ]
        );
        assert_eq!(metrics("no_fill")[1], Metric::NoFills);
        assert!(metrics("skipped").is_empty());
        let revenue = impression_counts(0, "coolads", "bid", 2_500_999);
        assert_eq!(revenue[1].1, 2_500, "CPM / 1000, whole micros");
    }

    #[test]
    fn cells_survive_their_field_encoding() {
        for metric in [
            Metric::Requests,
            Metric::EstimatedRevenueMicros,
            Metric::latency(42_000),
        ] {
            let cell = cell(7, "coolads-2.00", metric);
            assert_eq!(ReportCell::parse(&cell.day, &cell.field()), Some(cell));
        }
        assert_eq!(ReportCell::parse("2026-11-22", "nonsense"), None);
    }

    #[test]
    fn rows_add_up_per_bid_and_per_network_with_derived_figures() {
        let counts = vec![
            (cell(9, "b1", Metric::Requests), 6),
            (cell(9, "b1", Metric::Fills), 4),
            (cell(9, "b1", Metric::NoFills), 2),
            (cell(10, "b2", Metric::Requests), 2),
            (cell(10, "b2", Metric::Fills), 1),
            (cell(10, "b2", Metric::Timeouts), 1),
            (cell(9, "b1", Metric::Impressions), 3),
            (cell(9, "b1", Metric::EstimatedRevenueMicros), 6_000),
            (cell(9, "b1", Metric::latency(3_000)), 5),
            (cell(10, "b2", Metric::latency(120_000)), 3),
        ];
        let reported = vec![("2026-11-22".to_string(), "coolads".to_string(), 5_000)];

        let daily = build_report(&counts, &reported, Granularity::Day);
        let network = &daily[0];
        assert_eq!(
            (
                network.network_id.as_str(),
                network.mediated_bid_id.as_str()
            ),
            ("coolads", "")
        );
        assert_eq!(
            (
                network.requests,
                network.fills,
                network.no_fills,
                network.timeouts
            ),
            (8, 5, 2, 1)
        );
        assert_eq!(network.fill_rate_ppm(), Some(625_000));
        assert_eq!(network.estimated_ecpm_micros(), Some(2_000_000));
        assert_eq!(network.realized_ecpm_micros(), Some(1_666_666));
        assert_eq!(network.ecpm_gap_micros(), Some(333_334));
        assert_eq!(network.latency_percentile_ms(50), Some(5));
        assert_eq!(network.latency_percentile_ms(95), Some(150));
        assert_eq!(daily.len(), 3, "the network and its two bids");
        assert_eq!(daily[1].mediated_bid_id, "b1");
        assert_eq!(daily[1].reported_revenue_micros, None);

        let hourly = build_report(&counts, &reported, Granularity::Hour);
        let periods: Vec<&str> = hourly.iter().map(|r| r.period.as_str()).collect();
        assert_eq!(
            periods,
            [
                "2026-11-22T09",
                "2026-11-22T09",
                "2026-11-22T10",
                "2026-11-22T10"
            ]
        );
        assert!(hourly.iter().all(|r| r.reported_revenue_micros.is_none()));
    }

    #[test]
    fn periods_and_day_ranges() {
        assert_eq!(period_of(1_795_000_000), ("2026-11-18".to_string(), 11));
        assert_eq!(
            days_between("2026-02-27", "2026-03-01", 10).unwrap(),
            ["2026-02-27", "2026-02-28", "2026-03-01"]
        );
        assert!(days_between("2026-01-01", "2026-12-31", 31).is_err());
        assert!(days_between("yesterday", "2026-12-31", 31).is_err());
    }

    #[test]
    fn a_fact_counts_in_the_cells_of_its_hour() {
        let [(requests, 1), (fills, 1)] = counts_at(
            1_795_000_000,
            "coolads",
            "coolads-2.00",
            [(Metric::Requests, 1), (Metric::Fills, 1)],
        ) else {
            panic!("counts are kept");
        };
        let in_that_hour = |metric| ReportCell {
            day: "2026-11-18".into(),
            ..cell(11, "coolads-2.00", metric)
        };
        assert_eq!(requests, in_that_hour(Metric::Requests));
        assert_eq!(fills, in_that_hour(Metric::Fills));
    }
}
