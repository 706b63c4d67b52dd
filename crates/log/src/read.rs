//! Reading the log back: every entry of a directory of segments or of a JetStream
//! stream, in the order written, filtered; and following it as it grows.

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt as _;
use prost::Message as _;

use crate::file::{read_segment, segments};
use crate::jetstream::{connect, jetstream_error};
use crate::schema::LogEntry;
use crate::{EntryKind, LogError};

/// Where a log is read from.
#[derive(Clone, Debug)]
pub enum Source {
    Directory(PathBuf),
    JetStream { url: String, stream: String },
}

/// Which entries a query wants; every set condition must hold.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub kind: Option<EntryKind>,
    pub account_id: Option<String>,
    pub request_id: Option<String>,
    /// A decision that asked or was won by the network, an event about it.
    pub network_id: Option<String>,
    /// Unix milliseconds, `since` included, `until` excluded.
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
}

impl Filter {
    pub fn matches(&self, entry: &LogEntry) -> bool {
        let kind = if entry.decision.is_some() {
            EntryKind::Decision
        } else {
            EntryKind::Event
        };
        let wanted =
            |wanted: &Option<String>, actual: &str| wanted.as_deref().is_none_or(|w| w == actual);
        self.kind.is_none_or(|k| k == kind)
            && self
                .since_ms
                .is_none_or(|since| entry.time_unix_ms >= since)
            && self.until_ms.is_none_or(|until| entry.time_unix_ms < until)
            && match (&entry.decision, &entry.event) {
                (Some(decision), _) => {
                    wanted(&self.account_id, &decision.account_id)
                        && wanted(&self.request_id, &decision.request_id)
                        && self.network_id.as_deref().is_none_or(|network| {
                            decision.imps.iter().any(|imp| {
                                imp.attempts.iter().any(|a| a.network_id == network)
                                    || imp.winner.as_ref().is_some_and(|w| w.network_id == network)
                                    || imp.chain.iter().any(|n| n.network_id == network)
                            })
                        })
                }
                (None, Some(event)) => {
                    wanted(&self.account_id, &event.account_id)
                        && wanted(&self.request_id, &event.request_id)
                        && wanted(&self.network_id, &event.network_id)
                }
                (None, None) => false,
            }
    }
}

/// Calls `visit` with every entry of `source` that `filter` admits, oldest first, until
/// it returns false.
pub async fn scan(
    source: &Source,
    filter: &Filter,
    visit: &mut dyn FnMut(LogEntry) -> bool,
) -> Result<(), LogError> {
    let mut visit = |entry: LogEntry| !filter.matches(&entry) || visit(entry);
    match source {
        Source::Directory(directory) => scan_directory(directory, filter.since_ms, &mut visit),
        Source::JetStream { url, stream } => {
            scan_stream(url, stream, filter.since_ms, None, &mut visit).await
        }
    }
}

/// Every entry `filter` admits, oldest first.
pub async fn collect(source: &Source, filter: &Filter) -> Result<Vec<LogEntry>, LogError> {
    let mut entries = Vec::new();
    scan(source, filter, &mut |entry| {
        entries.push(entry);
        true
    })
    .await?;
    Ok(entries)
}

/// When a segment was opened, from its name (unix milliseconds).
fn segment_start(path: &Path) -> Option<i64> {
    path.file_name()?
        .to_str()?
        .strip_prefix("segment-")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

fn scan_directory(
    directory: &Path,
    since_ms: Option<i64>,
    visit: &mut dyn FnMut(LogEntry) -> bool,
) -> Result<(), LogError> {
    let paths = segments(directory)?;
    for (index, path) in paths.iter().enumerate() {
        // A segment ends where the next one starts: one that ends before `since` holds
        // nothing wanted.
        let ends_before_since = since_ms.is_some_and(|since| {
            paths
                .get(index + 1)
                .and_then(|next| segment_start(next))
                .is_some_and(|next_start| next_start <= since)
        });
        if ends_before_since {
            continue;
        }
        let mut more = true;
        read_segment(path, &mut |entry| {
            more = visit(entry);
            more
        })?;
        if !more {
            break;
        }
    }
    Ok(())
}

/// Reads the stream from `since_ms` (or from sequence `from_sequence`) up to what it
/// held when the scan began; `None` as the end follows it for ever.
async fn scan_stream(
    url: &str,
    stream_name: &str,
    since_ms: Option<i64>,
    from_sequence: Option<u64>,
    visit: &mut dyn FnMut(LogEntry) -> bool,
) -> Result<(), LogError> {
    let context = jetstream::new(connect(url).await?);
    let mut stream = context
        .get_stream(stream_name)
        .await
        .map_err(|error| jetstream_error("stream", error))?;
    let state = stream
        .info()
        .await
        .map_err(|error| jetstream_error("stream info", error))?
        .state
        .clone();
    if state.messages == 0 {
        return Ok(());
    }
    read_stream(
        &stream,
        since_ms,
        from_sequence,
        Some(state.last_sequence),
        visit,
    )
    .await
}

async fn read_stream(
    stream: &jetstream::stream::Stream,
    since_ms: Option<i64>,
    from_sequence: Option<u64>,
    last_sequence: Option<u64>,
    visit: &mut dyn FnMut(LogEntry) -> bool,
) -> Result<(), LogError> {
    let deliver_policy = match (from_sequence, since_ms) {
        (Some(start_sequence), _) => consumer::DeliverPolicy::ByStartSequence { start_sequence },
        (None, Some(since)) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(since) * 1_000_000,
            )
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
        (None, None) => consumer::DeliverPolicy::All,
    };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy,
            ..Default::default()
        })
        .await
        .map_err(|error| jetstream_error("consumer", error))?;
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| jetstream_error("consume", error))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|error| jetstream_error("consume", error))?;
        let sequence = message.info().map(|info| info.stream_sequence).unwrap_or(0);
        let entry =
            LogEntry::decode(message.payload.as_ref()).map_err(|error| LogError::Corrupt {
                at: format!("stream sequence {sequence}"),
                message: error.to_string(),
            })?;
        if !visit(entry) || last_sequence.is_some_and(|last| sequence >= last) {
            break;
        }
    }
    Ok(())
}

/// Prints (through `visit`) the last `count` entries `filter` admits, then, with
/// `follow`, every new one as it is written, until `visit` returns false.
pub async fn tail(
    source: &Source,
    filter: &Filter,
    count: usize,
    follow: bool,
    visit: &mut dyn FnMut(LogEntry) -> bool,
) -> Result<(), LogError> {
    let mut last = std::collections::VecDeque::with_capacity(count.min(4_096));
    let mut seen = 0usize;
    scan(source, &Filter::default(), &mut |entry| {
        seen += 1;
        if filter.matches(&entry) && count > 0 {
            if last.len() == count {
                last.pop_front();
            }
            last.push_back(entry);
        }
        true
    })
    .await?;
    for entry in last {
        if !visit(entry) {
            return Ok(());
        }
    }
    if !follow {
        return Ok(());
    }
    let mut visit = |entry: LogEntry| !filter.matches(&entry) || visit(entry);
    match source {
        Source::Directory(directory) => loop {
            // Entries past the `seen` first are new.
            let mut index = 0usize;
            let mut more = true;
            scan_directory(directory, None, &mut |entry| {
                index += 1;
                if index > seen {
                    seen = index;
                    more = visit(entry);
                }
                more
            })?;
            if !more {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        },
        Source::JetStream { url, stream } => {
            let context = jetstream::new(connect(url).await?);
            let mut stream = context
                .get_stream(stream)
                .await
                .map_err(|error| jetstream_error("stream", error))?;
            let next = stream
                .info()
                .await
                .map_err(|error| jetstream_error("stream info", error))?
                .state
                .last_sequence
                + 1;
            read_stream(&stream, None, Some(next), None, &mut visit).await
        }
    }
}
