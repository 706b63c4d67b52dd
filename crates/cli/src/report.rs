//! `cascade report`: the network performance report as a table or CSV, and
//! `cascade report ingest`: a network's own daily revenue figure.

use anyhow::Context;
use cascade_core::Micros;
use cascade_proto::admin::v1 as pb;
use cascade_proto::admin::v1::reports_client::ReportsClient;

use crate::admin::{ApiArgs, status_error};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct ReportArgs {
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: Option<ReportCommand>,
    #[command(flatten)]
    show: ShowArgs,
}

#[derive(clap::Args)]
struct ShowArgs {
    /// First day, YYYY-MM-DD (UTC); today when unset.
    #[arg(long)]
    from: Option<String>,
    /// Last day, YYYY-MM-DD (UTC); today when unset.
    #[arg(long)]
    to: Option<String>,
    /// Only this network.
    #[arg(long)]
    network: Option<String>,
    #[command(flatten)]
    rows: RowsArgs,
}

/// How report rows are cut and printed (also `cascade log report`).
#[derive(clap::Args)]
pub(crate) struct RowsArgs {
    /// Rows per day or per hour.
    #[arg(long, value_enum, default_value = "day")]
    pub by: By,
    /// Comma-separated values (money in micros) instead of a table.
    #[arg(long)]
    csv: bool,
}

impl RowsArgs {
    pub fn show(&self, rows: &[pb::NetworkReportRow]) -> String {
        if self.csv { csv(rows) } else { table(rows) }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub(crate) enum By {
    Day,
    Hour,
}

#[derive(clap::Subcommand)]
enum ReportCommand {
    /// Record what a network says it paid on a day (its own daily total).
    Ingest {
        #[arg(long)]
        network: String,
        /// YYYY-MM-DD (UTC).
        #[arg(long)]
        date: String,
        /// In the auction currency, as a decimal (`12.34`).
        #[arg(long)]
        revenue: String,
    },
}

pub async fn run(args: ReportArgs) -> anyhow::Result<u8> {
    let mut client = ReportsClient::new(args.api.connect().await?);
    if let Some(ReportCommand::Ingest {
        network,
        date,
        revenue,
    }) = args.command
    {
        let revenue =
            Micros::parse_decimal(&revenue).with_context(|| format!("--revenue {revenue:?}"))?;
        client
            .ingest_network_revenue(pb::IngestNetworkRevenueRequest {
                network_id: network.clone(),
                date: date.clone(),
                revenue_micros: revenue.0,
            })
            .await
            .map_err(status_error)?;
        println!("{network} reported {revenue} for {date}");
        return Ok(0);
    }
    let show = args.show;
    let report = client
        .get_network_report(pb::NetworkReportRequest {
            from_date: show.from.unwrap_or_default(),
            to_date: show.to.unwrap_or_default(),
            granularity: match show.rows.by {
                By::Day => pb::ReportGranularity::Day,
                By::Hour => pb::ReportGranularity::Hour,
            }
            .into(),
            network_id: show.network.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print!("{}", show.rows.show(&report.rows));
    Ok(0)
}

const COLUMNS: [&str; 20] = [
    "period",
    "network",
    "mediated_bid",
    "requests",
    "bids",
    "fills",
    "fill_rate",
    "no_fills",
    "blocked",
    "timeouts",
    "errors",
    "wins",
    "impressions",
    "estimated_revenue",
    "reported_revenue",
    "estimated_ecpm",
    "realized_ecpm",
    "ecpm_gap",
    "latency_p50_ms",
    "latency_p95_ms",
];

/// One row's cells; money through `money`, the fill rate through `rate`.
fn cells(
    row: &pb::NetworkReportRow,
    money: impl Fn(i64) -> String,
    rate: impl Fn(u64) -> String,
) -> Vec<String> {
    let optional = |value: Option<String>| value.unwrap_or_default();
    vec![
        row.period.clone(),
        row.network_id.clone(),
        row.mediated_bid_id.clone(),
        row.requests.to_string(),
        row.bids.to_string(),
        row.fills.to_string(),
        optional(row.fill_rate_ppm.map(&rate)),
        row.no_fills.to_string(),
        row.blocked.to_string(),
        row.timeouts.to_string(),
        row.errors.to_string(),
        row.wins.to_string(),
        row.impressions.to_string(),
        money(row.estimated_revenue_micros),
        optional(row.reported_revenue_micros.map(&money)),
        optional(row.estimated_ecpm_micros.map(&money)),
        optional(row.realized_ecpm_micros.map(&money)),
        optional(row.ecpm_gap_micros.map(&money)),
        optional(row.latency_p50_ms.map(|ms| ms.to_string())),
        optional(row.latency_p95_ms.map(|ms| ms.to_string())),
    ]
}

/// Machine-readable: integers only (money in micros, the fill rate in millionths).
fn csv(rows: &[pb::NetworkReportRow]) -> String {
    let mut out = COLUMNS.join(",") + "\n";
    for row in rows {
        let line = cells(row, |m| m.to_string(), |r| r.to_string());
        let quoted: Vec<String> = line
            .into_iter()
            .map(|cell| {
                if cell.contains([',', '"', '\n']) {
                    format!("\"{}\"", cell.replace('"', "\"\""))
                } else {
                    cell
                }
            })
            .collect();
        out += &(quoted.join(",") + "\n");
    }
    out
}

/// For people: money as decimals, the fill rate as a percentage, aligned columns.
fn table(rows: &[pb::NetworkReportRow]) -> String {
    let rate = |ppm: u64| format!("{}.{}%", ppm / 10_000, ppm % 10_000 / 1_000);
    let lines: Vec<Vec<String>> = std::iter::once(COLUMNS.iter().map(|c| c.to_string()).collect())
        .chain(rows.iter().map(|row| cells(row, money, rate)))
        .collect();
    aligned(&lines)
}

/// USD micros as a decimal amount, signed.
pub(crate) fn money(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    format!("{sign}{}", Micros(micros.saturating_abs()))
}

/// Lines of cells as columns aligned on the widest cell of each.
pub(crate) fn aligned(lines: &[Vec<String>]) -> String {
    let columns = lines.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| {
            lines
                .iter()
                .filter_map(|l| l.get(i))
                .map(String::len)
                .max()
                .unwrap_or(0)
        })
        .collect();
    lines
        .iter()
        .map(|line| {
            let padded: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            padded.join("  ").trim_end().to_string() + "\n"
        })
        .collect()
}
