//! `cascade replay`: the decisions of a log decided again under a configuration file,
//! before against after per account and demand.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use cascade_core::snapshot::Snapshot;
use cascade_core::waterfall::WalkLimits;
use cascade_log::EntryKind;
use cascade_log::read;
use cascade_replay::summary::Row;
use cascade_replay::{Observed, Replay, Replayer, Served, Settings, Summary};

use crate::log::{FilterArgs, SourceArgs};
use crate::report::{aligned, money};

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// The candidate configuration (TOML, as `cascade up --configuration` reads).
    #[arg(long, value_name = "FILE")]
    configuration: PathBuf,
    #[command(flatten)]
    source: SourceArgs,
    #[command(flatten)]
    filter: FilterArgs,
    /// Bootstrap rounds behind the 90% intervals (0: none).
    #[arg(long, default_value_t = 200)]
    rounds: u32,
    /// Most networks one impression's waterfall calls (network-caller's
    /// `max_network_calls_per_waterfall`).
    #[arg(long, default_value_t = 5)]
    max_calls: usize,
    /// How many of the most changed impressions to list.
    #[arg(long, default_value_t = 10)]
    changes: usize,
    /// The summary as one JSON document instead of tables.
    #[arg(long, conflicts_with = "impressions")]
    json: bool,
    /// Every replayed impression as a JSON line (logged and replayed outcome), then
    /// nothing else.
    #[arg(long)]
    impressions: bool,
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    // The replay calls no network: a placeholder endpoint only has to parse.
    let placeholders = [
        ("DEMO_NETWORK", "127.0.0.1:9"),
        ("DEMO_GRPC_NETWORK", "127.0.0.1:9"),
    ];
    let configuration = cascade_state::read_configuration_file(&args.configuration, &placeholders)
        .with_context(|| format!("--configuration {}", args.configuration.display()))?;
    let snapshot = Snapshot::build(configuration)
        .with_context(|| format!("--configuration {}", args.configuration.display()))?;
    let source = args.source.source();
    let mut filter = args.filter.filter()?;
    filter.kind = Some(EntryKind::Decision);

    let mut observed = Observed::default();
    read::scan(&source, &filter, &mut |entry| {
        if let Some(decision) = &entry.decision {
            observed.add(decision);
        }
        true
    })
    .await?;

    let replayer = Replayer {
        snapshot: &snapshot,
        observed: &observed,
        limits: WalkLimits {
            max_calls: args.max_calls.max(1),
            ..WalkLimits::default()
        },
    };
    let settings = Settings {
        rounds: args.rounds,
        changes: args.changes,
        limits: replayer.limits,
    };
    let mut replay = Replay::new(replayer, settings);
    let mut out = std::io::stdout().lock();
    let mut write_failed = None;
    read::scan(&source, &filter, &mut |entry| {
        let Ok(compared) = replay.add(&entry) else {
            return true;
        };
        if args.impressions {
            for imp in compared {
                let line = serde_json::to_string(&imp).unwrap_or_default();
                if let Err(error) = writeln!(out, "{line}") {
                    write_failed = Some(error);
                    return false;
                }
            }
        }
        true
    })
    .await?;
    if let Some(error) = write_failed {
        // A closed pipe (`| head`) ends the listing.
        if error.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(error.into());
        }
        return Ok(());
    }
    if args.impressions {
        return Ok(());
    }
    let summary = replay.finish();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        write!(out, "{}", shown(&summary, &args.configuration))?;
    }
    Ok(())
}

/// The summary for people: what was replayed and how much is guessed, then the rows,
/// then the largest changes.
fn shown(summary: &Summary, configuration: &std::path::Path) -> String {
    let mut text = format!(
        "Replayed {} of {} decisions ({} impressions) under {} (configuration version {}).\n",
        summary.decisions_replayed,
        summary.decisions_read,
        summary.impressions_replayed,
        configuration.display(),
        summary.configuration_version,
    );
    if !summary.decisions_skipped.is_empty() {
        let skipped: Vec<String> = summary
            .decisions_skipped
            .iter()
            .map(|(why, count)| format!("{why} {count}"))
            .collect();
        text += &format!("Not replayed: {}.\n", skipped.join(", "));
    }
    if let Some(refusal) = &summary.first_refusal {
        text += &format!("The configuration refuses some logged requests; the first: {refusal}.\n");
    }
    text += &format!(
        "Changed: {} impressions. Resting on drawn answers: {} impressions, {:.1}% of the revenue after ({} calls drawn, {} to networks never seen called, taken as no ad).\n",
        summary.impressions_changed,
        summary.impressions_guessed,
        summary.guessed_revenue_share * 100.0,
        summary.calls_guessed,
        summary.calls_unobserved,
    );
    if summary.impressions_from_redacted_requests > 0 {
        text += &format!(
            "From redacted requests: {} impressions (targeting on what their consent withheld is not replayed).\n",
            summary.impressions_from_redacted_requests
        );
    }
    text += &format!(
        "Intervals: 90%, over {} bootstrap rounds (resampled decisions, drawn answers drawn again).\n\n",
        summary.rounds
    );
    text += &aligned(&rows_table(&summary.rows));
    if !summary.largest_changes.is_empty() {
        text += "\nLargest changes:\n";
        let mut lines = vec![
            [
                "request",
                "imp",
                "before",
                "after",
                "revenue_change",
                "guessed",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for change in &summary.largest_changes {
            lines.push(vec![
                change.request_id.clone(),
                change.impid.clone(),
                sale(change.before.as_ref()),
                sale(change.after.as_ref()),
                money(change.revenue_delta_micros),
                if change.guessed { "yes" } else { "" }.to_string(),
            ]);
        }
        text += &aligned(&lines);
    }
    text
}

fn rows_table(rows: &[Row]) -> Vec<Vec<String>> {
    let header = [
        "account",
        "demand",
        "requests",
        "fills",
        "fill_rate",
        "revenue",
        "ecpm",
        "revenue_after_90%",
        "revenue_change",
        "change_90%",
    ];
    let pair = |before: String, after: String| {
        if before == after {
            before
        } else {
            format!("{before} -> {after}")
        }
    };
    let optional = |value: Option<String>| value.unwrap_or_else(|| "-".into());
    let rate = |rate: Option<f64>| optional(rate.map(|r| format!("{:.1}%", r * 100.0)));
    let range = |[low, high]: [i64; 2]| format!("{} .. {}", money(low), money(high));
    std::iter::once(header.map(String::from).to_vec())
        .chain(rows.iter().map(|row| {
            vec![
                row.account_id.clone(),
                row.demand.clone(),
                pair(
                    optional(row.before.requests.map(|r| r.to_string())),
                    optional(row.after.requests.map(|r| r.to_string())),
                ),
                pair(row.before.fills.to_string(), row.after.fills.to_string()),
                pair(rate(row.before.fill_rate), rate(row.after.fill_rate)),
                pair(
                    money(row.before.revenue_micros),
                    money(row.after.revenue_micros),
                ),
                pair(
                    optional(row.before.ecpm_micros.map(money)),
                    optional(row.after.ecpm_micros.map(money)),
                ),
                range(row.after_revenue_interval),
                money(row.delta_revenue_micros),
                range(row.delta_revenue_interval),
            ]
        }))
        .collect()
}

fn sale(served: Option<&Served>) -> String {
    match served {
        None => "no fill".into(),
        Some(served) => {
            let source = served
                .source
                .strip_prefix("SOURCE_KIND_")
                .unwrap_or(&served.source)
                .to_ascii_lowercase();
            let who = if served.network_id.is_empty() {
                served.bid_id.clone()
            } else {
                format!("{} {}", served.network_id, served.bid_id)
            };
            format!("{source} {who} at {}", money(served.price_micros))
        }
    }
}
