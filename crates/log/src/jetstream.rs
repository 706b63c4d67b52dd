//! The fleet sink: a NATS JetStream stream, one message per entry on
//! `<prefix>.decision` or `<prefix>.event`, each published with its entry id as
//! `Nats-Msg-Id` and awaited until the stream acknowledges it. A batch sent again after
//! a lost acknowledgement is deduplicated by the stream (within its duplicate window), so
//! delivery is at least once and, in practice, once.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage, stream};

use crate::{LogError, LogSettings, LogSink, Record};

pub struct JetStreamSink {
    context: jetstream::Context,
    stream: String,
    subject_prefix: String,
}

/// The stream the log is kept in: file storage, the retention as `max_age`, a duplicate
/// window long enough for the writer's retries.
pub fn stream_config(settings: &LogSettings) -> stream::Config {
    stream::Config {
        name: settings.stream.clone(),
        subjects: vec![format!("{}.>", settings.subject_prefix)],
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(settings.retention_hours.saturating_mul(3_600)),
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

pub(crate) fn jetstream_error(what: &'static str, error: impl std::fmt::Display) -> LogError {
    LogError::JetStream {
        what,
        message: error.to_string(),
    }
}

/// A client that keeps reconnecting for as long as it lives.
pub(crate) async fn connect(url: &str) -> Result<async_nats::Client, LogError> {
    async_nats::ConnectOptions::new()
        .name("cascade-decision-log")
        .connect(url)
        .await
        .map_err(|error| jetstream_error("connect", format!("{url}: {error}")))
}

impl JetStreamSink {
    /// Connects and creates the stream when it does not exist yet.
    pub async fn connect(settings: &LogSettings) -> Result<Self, LogError> {
        let context = jetstream::new(connect(&settings.nats_url).await?);
        context
            .get_or_create_stream(stream_config(settings))
            .await
            .map_err(|error| jetstream_error("stream", error))?;
        Ok(Self {
            context,
            stream: settings.stream.clone(),
            subject_prefix: settings.subject_prefix.clone(),
        })
    }
}

#[async_trait::async_trait]
impl LogSink for JetStreamSink {
    async fn write(&self, batch: &[Record]) -> Result<(), LogError> {
        let mut acks = Vec::with_capacity(batch.len());
        for record in batch {
            let subject = format!("{}.{}", self.subject_prefix, record.kind.name());
            let message = PublishMessage::build()
                .payload(record.bytes.clone())
                .message_id(&record.entry_id);
            let ack = self
                .context
                .send_publish(subject, message)
                .await
                .map_err(|error| jetstream_error("publish", error))?;
            acks.push(ack);
        }
        for ack in acks {
            ack.await.map_err(|error| jetstream_error("ack", error))?;
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("jetstream:{}", self.stream)
    }
}
