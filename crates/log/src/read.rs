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
    /// True when it admits every entry.
    pub fn is_empty(&self) -> bool {
        self.kind.is_none()
            && self.account_id.is_none()
            && self.request_id.is_none()
            && self.network_id.is_none()
            && self.since_ms.is_none()
            && self.until_ms.is_none()
    }

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
            scan_stream(url, stream, filter.since_ms, &mut visit).await
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

/// The stream named `name` and the sequence of its last message (0 when empty).
async fn open_stream(url: &str, name: &str) -> Result<(jetstream::stream::Stream, u64), LogError> {
    let context = jetstream::new(connect(url).await?);
    let mut stream = context
        .get_stream(name)
        .await
        .map_err(|error| jetstream_error("stream", error))?;
    let info = stream
        .info()
        .await
        .map_err(|error| jetstream_error("stream info", error))?;
    let last_sequence = if info.state.messages == 0 {
        0
    } else {
        info.state.last_sequence
    };
    Ok((stream, last_sequence))
}

/// Reads the stream from `since_ms` up to what it held when the scan began.
async fn scan_stream(
    url: &str,
    name: &str,
    since_ms: Option<i64>,
    visit: &mut dyn FnMut(LogEntry) -> bool,
) -> Result<(), LogError> {
    let (stream, last_sequence) = open_stream(url, name).await?;
    if last_sequence == 0 {
        return Ok(());
    }
    let start = match since_ms {
        Some(since) => consumer::DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(since) * 1_000_000,
            )
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
        None => consumer::DeliverPolicy::All,
    };
    read_stream(&stream, start, Some(last_sequence), visit).await
}

/// Delivers the stream's messages from `start` until `visit` returns false, the
/// message at `last_sequence` has been read, or (with an end) nothing more is pending;
/// with no end it follows the stream for ever.
async fn read_stream(
    stream: &jetstream::stream::Stream,
    start: consumer::DeliverPolicy,
    last_sequence: Option<u64>,
    visit: &mut dyn FnMut(LogEntry) -> bool,
) -> Result<(), LogError> {
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            deliver_policy: start,
            ..Default::default()
        })
        .await
        .map_err(|error| jetstream_error("consumer", error))?;
    // A start past the last message (a `--since` after it) delivers nothing: waiting for
    // a first message would never end.
    if last_sequence.is_some() && consumer.cached_info().num_pending == 0 {
        return Ok(());
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|error| jetstream_error("consume", error))?;
    while let Some(message) = messages.next().await {
        let message = message.map_err(|error| jetstream_error("consume", error))?;
        let (sequence, pending) = message
            .info()
            .map(|info| (info.stream_sequence, info.pending))
            .unwrap_or_default();
        let entry =
            LogEntry::decode(message.payload.as_ref()).map_err(|error| LogError::Corrupt {
                at: format!("stream sequence {sequence}"),
                message: error.to_string(),
            })?;
        let at_end = last_sequence.is_some_and(|last| sequence >= last || pending == 0);
        if !visit(entry) || at_end {
            break;
        }
    }
    Ok(())
}

/// Prints (through `visit`) the last `count` entries `filter` admits, oldest first,
/// then, with `follow`, every new one as it is written, until `visit` returns false.
pub async fn tail(
    source: &Source,
    filter: &Filter,
    count: usize,
    follow: bool,
    visit: &mut dyn FnMut(LogEntry) -> bool,
) -> Result<(), LogError> {
    match source {
        Source::Directory(directory) => {
            tail_directory(directory, filter, count, follow, visit).await
        }
        Source::JetStream { url, stream } => {
            let (stream, last_sequence) = open_stream(url, stream).await?;
            let mut last = LastEntries::new(count);
            if last_sequence > 0 {
                // Without a filter the last `count` messages are the answer; with one,
                // the whole stream is read for them.
                let start = if filter.is_empty() {
                    consumer::DeliverPolicy::ByStartSequence {
                        start_sequence: last_sequence.saturating_sub(count as u64) + 1,
                    }
                } else {
                    consumer::DeliverPolicy::All
                };
                read_stream(&stream, start, Some(last_sequence), &mut |entry| {
                    last.offer(filter, entry);
                    true
                })
                .await?;
            }
            if !last.show(visit) || !follow {
                return Ok(());
            }
            let next = consumer::DeliverPolicy::ByStartSequence {
                start_sequence: last_sequence + 1,
            };
            let mut visit = |entry: LogEntry| !filter.matches(&entry) || visit(entry);
            read_stream(&stream, next, None, &mut visit).await
        }
    }
}

/// The last `count` entries a filter admits, as they are offered in order.
struct LastEntries {
    count: usize,
    entries: std::collections::VecDeque<LogEntry>,
}

impl LastEntries {
    fn new(count: usize) -> Self {
        Self {
            count,
            entries: std::collections::VecDeque::with_capacity(count.min(4_096)),
        }
    }

    fn offer(&mut self, filter: &Filter, entry: LogEntry) {
        if self.count == 0 || !filter.matches(&entry) {
            return;
        }
        if self.entries.len() == self.count {
            self.entries.pop_front();
        }
        self.entries.push_back(entry);
    }

    fn full(&self) -> bool {
        self.entries.len() == self.count
    }

    /// Shows them, oldest first; false when `visit` wants no more.
    fn show(self, visit: &mut dyn FnMut(LogEntry) -> bool) -> bool {
        self.entries.into_iter().all(visit)
    }
}

/// A directory's tail: segments are read newest first until they hold `count` wanted
/// entries, so a long log costs what its last segments hold; following re-reads only
/// the segment being written and those opened since.
async fn tail_directory(
    directory: &Path,
    filter: &Filter,
    count: usize,
    follow: bool,
    visit: &mut dyn FnMut(LogEntry) -> bool,
) -> Result<(), LogError> {
    let paths = segments(directory)?;
    let mut shown = LastEntries::new(count);
    for path in paths.iter().rev() {
        if shown.full() {
            break;
        }
        let mut in_segment = LastEntries::new(count);
        read_segment(path, &mut |entry| {
            in_segment.offer(filter, entry);
            true
        })?;
        // Older entries go before the ones already kept.
        for entry in std::mem::replace(&mut shown, in_segment).entries {
            shown.offer(filter, entry);
        }
    }
    if !shown.show(visit) || !follow {
        return Ok(());
    }
    // Where following starts: the last segment, after the entries it holds now.
    let mut current = paths.last().cloned();
    let mut seen_in_current = match &current {
        Some(path) => {
            let mut entries = 0usize;
            read_segment(path, &mut |_| {
                entries += 1;
                true
            })?;
            entries
        }
        None => 0,
    };
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let newer: Vec<PathBuf> = segments(directory)?
            .into_iter()
            .filter(|path| current.as_ref().is_none_or(|c| path >= c))
            .collect();
        for path in newer {
            if current.as_ref() != Some(&path) {
                current = Some(path.clone());
                seen_in_current = 0;
            }
            let mut index = 0usize;
            let mut more = true;
            read_segment(&path, &mut |entry| {
                index += 1;
                if index > seen_in_current {
                    seen_in_current = index;
                    more = !filter.matches(&entry) || visit(entry);
                }
                more
            })?;
            if !more {
                return Ok(());
            }
        }
    }
}
