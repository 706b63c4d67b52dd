//! `cascade log`: the decision log as JSON lines (`tail`, `query`), and the network
//! performance report rebuilt from it (`report`).

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use cascade_core::report::Granularity;
use cascade_log::EntryKind;
use cascade_log::read::{self, Filter, Source};
use cascade_log::report::Rebuilt;
use cascade_log::schema::LogEntry;

use crate::report::{By, RowsArgs};

#[derive(clap::Args)]
pub struct LogArgs {
    #[command(subcommand)]
    command: LogCommand,
}

#[derive(clap::Subcommand)]
enum LogCommand {
    /// The last entries, oldest first; with `--follow`, then every new one.
    Tail {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only decisions, or only events.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// How many of the last entries.
        #[arg(short = 'n', long, default_value_t = 20)]
        lines: usize,
        /// Keep printing entries as they are written.
        #[arg(short, long)]
        follow: bool,
    },
    /// Every entry that matches, oldest first.
    Query {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        filter: FilterArgs,
        /// Only decisions, or only events.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
    },
    /// The network performance report rebuilt from the log (what the counters of
    /// `cascade report` say, for the same traffic).
    Report {
        #[command(flatten)]
        source: SourceArgs,
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        rows: RowsArgs,
    },
}

#[derive(clap::Args)]
pub struct SourceArgs {
    /// The directory of segment files (`cascade up --log-dir`, `log.directory`).
    #[arg(long, default_value = "cascade-log", value_name = "DIR")]
    dir: PathBuf,
    /// Read a NATS JetStream stream instead (`nats://HOST:PORT`).
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// The stream (`log.stream`).
    #[arg(long, default_value = "CASCADE_LOG")]
    stream: String,
}

impl SourceArgs {
    pub(crate) fn source(&self) -> Source {
        match &self.nats {
            Some(url) => Source::JetStream {
                url: url.clone(),
                stream: self.stream.clone(),
            },
            None => Source::Directory(self.dir.clone()),
        }
    }
}

#[derive(clap::Args)]
pub struct FilterArgs {
    /// Only entries of this publisher account.
    #[arg(long)]
    account: Option<String>,
    /// Only the decision of this request id and its events.
    #[arg(long)]
    request_id: Option<String>,
    /// Only decisions that asked or were won by this network, and its events.
    #[arg(long)]
    network: Option<String>,
    /// From this time: RFC 3339 (`2026-12-02T10:00:00Z`) or Unix milliseconds.
    #[arg(long)]
    since: Option<String>,
    /// Up to (not including) this time.
    #[arg(long)]
    until: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    Decision,
    Event,
}

impl Kind {
    fn of(kind: Option<Kind>) -> Option<EntryKind> {
        kind.map(|kind| match kind {
            Kind::Decision => EntryKind::Decision,
            Kind::Event => EntryKind::Event,
        })
    }
}

impl FilterArgs {
    pub(crate) fn filter(&self) -> anyhow::Result<Filter> {
        Ok(Filter {
            kind: None,
            account_id: self.account.clone(),
            request_id: self.request_id.clone(),
            network_id: self.network.clone(),
            since_ms: self
                .since
                .as_deref()
                .map(unix_millis)
                .transpose()
                .context("--since")?,
            until_ms: self
                .until
                .as_deref()
                .map(unix_millis)
                .transpose()
                .context("--until")?,
        })
    }
}

/// RFC 3339 or Unix milliseconds.
fn unix_millis(text: &str) -> anyhow::Result<i64> {
    if let Ok(millis) = text.parse::<i64>() {
        return Ok(millis);
    }
    let timestamp: jiff::Timestamp = text
        .parse()
        .with_context(|| format!("{text:?} is neither RFC 3339 nor Unix milliseconds"))?;
    Ok(timestamp.as_millisecond())
}

pub async fn run(args: LogArgs) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    let mut print = |entry: LogEntry| match serde_json::to_string(&entry) {
        // A closed pipe (`| head`) ends the listing.
        Ok(line) => writeln!(out, "{line}").is_ok(),
        Err(error) => {
            eprintln!("error: an entry cannot be shown as JSON: {error}");
            true
        }
    };
    match args.command {
        LogCommand::Tail {
            source,
            filter,
            kind,
            lines,
            follow,
        } => {
            read::tail(
                &source.source(),
                &Filter {
                    kind: Kind::of(kind),
                    ..filter.filter()?
                },
                lines,
                follow,
                &mut print,
            )
            .await?;
        }
        LogCommand::Query {
            source,
            filter,
            kind,
        } => {
            let filter = Filter {
                kind: Kind::of(kind),
                ..filter.filter()?
            };
            read::scan(&source.source(), &filter, &mut print).await?;
        }
        LogCommand::Report {
            source,
            filter,
            rows,
        } => {
            let mut rebuilt = Rebuilt::default();
            read::scan(&source.source(), &filter.filter()?, &mut |entry| {
                rebuilt.add(&entry);
                true
            })
            .await?;
            let granularity = match rows.by {
                By::Day => Granularity::Day,
                By::Hour => Granularity::Hour,
            };
            let report: Vec<_> = rebuilt
                .rows(granularity)
                .into_iter()
                .map(cascade_admin::row_to_proto)
                .collect();
            write!(out, "{}", rows.show(&report))?;
        }
    }
    Ok(())
}
