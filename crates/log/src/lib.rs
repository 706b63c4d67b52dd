//! The decision log: the record of every sale. bid-intake appends one entry per decision
//! and per event ([`DecisionLog::append`], which never waits); a writer task takes them
//! off a bounded queue in batches, strips what the request's privacy signals do not let
//! us keep ([`redact`]), and hands them to a [`LogSink`]: rotated, compressed segment
//! files in a directory ([`FileSink`], the embedded default) or a NATS JetStream stream
//! ([`JetStreamSink`], for a fleet). A full queue drops the entry and counts it
//! (`cascade_log_entries_total{outcome="dropped"}`): a decision is never slowed by its
//! record.
//!
//! Reading it back ([`read`]) serves `cascade log tail`/`query`, and [`report`] rebuilds
//! the network performance report from it.

mod file;
mod jetstream;
pub mod read;
pub mod redact;
pub mod report;
mod settings;
mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

pub use cascade_proto::log::v1 as schema;
pub use file::{FileSink, SEGMENT_SUFFIX, segments};
pub use jetstream::{JetStreamSink, stream_config};
use schema::LogEntry;
pub use settings::{LogSettings, SinkKind};
use tokio::sync::{Notify, mpsc};

/// An entry encoded for a sink: its id (for deduplication), what it is, its bytes (the
/// protobuf encoding of a [`LogEntry`]).
#[derive(Clone, Debug)]
pub struct Record {
    pub entry_id: String,
    pub kind: EntryKind,
    pub bytes: bytes::Bytes,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Decision,
    Event,
}

impl EntryKind {
    pub fn name(self) -> &'static str {
        match self {
            EntryKind::Decision => "decision",
            EntryKind::Event => "event",
        }
    }
}

/// Where batches of entries are written. `write` returns once the batch is durable
/// (synced to disk, acknowledged by the stream); an error means none of it may be
/// assumed written, and the writer sends the batch again.
#[async_trait::async_trait]
pub trait LogSink: Send + Sync + 'static {
    async fn write(&self, batch: &[Record]) -> Result<(), LogError>;
    /// What the sink is, for logs: `file:/var/lib/cascade/log`, `jetstream:CASCADE_LOG`.
    fn describe(&self) -> String;
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("log directory {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("JetStream {what}: {message}")]
    JetStream { what: &'static str, message: String },
    #[error("log entry {at}: {message}")]
    Corrupt { at: String, message: String },
}

/// The handle services append to; cheap to clone. A disabled log takes every entry and
/// keeps none.
#[derive(Clone, Default)]
pub struct DecisionLog {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    sender: mpsc::Sender<LogEntry>,
    dropped: AtomicU64,
    closing: Arc<Closing>,
    writer: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

/// Tells the writer to write what is queued and stop. Held apart from the sender, so
/// that the writer waiting for it never keeps the queue open.
#[derive(Default)]
struct Closing {
    requested: AtomicBool,
    notify: Notify,
}

impl Closing {
    fn requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    async fn wait(&self) {
        let notified = self.notify.notified();
        if !self.requested() {
            notified.await;
        }
    }
}

impl DecisionLog {
    /// A log that keeps nothing (`log.sink = "none"`).
    pub fn disabled() -> Self {
        Self::default()
    }

    /// Opens the sink `settings` name and starts the writer; a sink that cannot be
    /// opened (a directory that cannot be created, no JetStream) is an error at start.
    pub async fn open(settings: &LogSettings) -> Result<Self, LogError> {
        let sink: Arc<dyn LogSink> = match settings.sink {
            SinkKind::None => return Ok(Self::disabled()),
            SinkKind::File => Arc::new(FileSink::open(settings)?),
            SinkKind::Jetstream => Arc::new(JetStreamSink::connect(settings).await?),
        };
        tracing::info!(sink = %sink.describe(), "decision log open");
        Ok(Self::with_sink(sink, settings))
    }

    /// A log writing to `sink`, with the queue and batch sizes of `settings`.
    pub fn with_sink(sink: Arc<dyn LogSink>, settings: &LogSettings) -> Self {
        // Every outcome's series exists from the start at zero, so that the first drop is
        // an increase an alert sees (deploy/monitoring/decision-log.rules.yaml).
        for outcome in OUTCOMES {
            count(outcome, 0);
        }
        let (sender, receiver) = mpsc::channel(settings.queue_capacity.max(1));
        let closing = Arc::new(Closing::default());
        let inner = Arc::new(Inner {
            sender,
            dropped: AtomicU64::new(0),
            closing: closing.clone(),
            writer: parking_lot::Mutex::new(None),
        });
        let writer = writer::Writer {
            sink,
            receiver,
            batch_max_entries: settings.batch_max_entries.max(1),
            max_request_bytes: settings.max_request_bytes,
            closing,
        };
        *inner.writer.lock() = Some(tokio::spawn(writer.run()));
        Self { inner: Some(inner) }
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues `entry` for writing, stamped (when unset) with the time; the writer gives it
    /// its id and schema version. Never waits: when the queue is full the entry is
    /// dropped and counted.
    pub fn append(&self, mut entry: LogEntry) {
        let Some(inner) = &self.inner else {
            return;
        };
        if entry.time_unix_ms == 0 {
            entry.time_unix_ms = now_unix_millis();
        }
        match inner.sender.try_send(entry) {
            Ok(()) => count("queued", 1),
            Err(_) => {
                inner.dropped.fetch_add(1, Ordering::Relaxed);
                count("dropped", 1);
            }
        }
    }

    /// Entries dropped because the queue was full (or the log closed).
    pub fn dropped(&self) -> u64 {
        self.inner
            .as_ref()
            .map_or(0, |inner| inner.dropped.load(Ordering::Relaxed))
    }

    /// Writes what is queued and stops the writer; gives up after `within` (what was not
    /// written by then is counted `failed`).
    pub async fn close(&self, within: Duration) {
        let Some(inner) = &self.inner else {
            return;
        };
        inner.closing.requested.store(true, Ordering::Release);
        inner.closing.notify.notify_waiters();
        let writer = inner.writer.lock().take();
        if let Some(writer) = writer
            && tokio::time::timeout(within, writer).await.is_err()
        {
            tracing::warn!("decision log: entries still queued after {within:?} were not written");
        }
    }
}

/// The outcomes `cascade_log_entries_total` counts entries by.
const OUTCOMES: [&str; 5] = ["queued", "dropped", "written", "retried", "failed"];

fn count(outcome: &'static str, entries: u64) {
    metrics::counter!("cascade_log_entries_total", "outcome" => outcome).increment(entries);
}

pub fn now_unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

/// The protobuf encoding of `entry`, as a sink stores it, stamped with this build's schema
/// version and, when it has none, a new id.
pub fn encode(mut entry: LogEntry) -> Record {
    use prost::Message as _;
    entry.schema_version = schema::SCHEMA_VERSION;
    if entry.entry_id.is_empty() {
        entry.entry_id = uuid::Uuid::new_v4().simple().to_string();
    }
    Record {
        kind: if entry.decision.is_some() {
            EntryKind::Decision
        } else {
            EntryKind::Event
        },
        bytes: entry.encode_to_vec().into(),
        entry_id: entry.entry_id,
    }
}
