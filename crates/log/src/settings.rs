use std::path::PathBuf;

use cascade_core::settings::{InvalidSetting, Validate, at_least, require};
use serde::{Deserialize, Serialize};

/// Where the decision log goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Nothing is kept.
    #[default]
    None,
    /// Rotated, compressed segment files in `directory`.
    File,
    /// A NATS JetStream stream (`nats_url`, `stream`).
    Jetstream,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    pub sink: SinkKind,
    /// `file`: the directory segments are written to (created when missing).
    pub directory: PathBuf,
    /// `file`: a segment is closed and a new one started at this size (compressed
    /// bytes) or age, whichever comes first.
    pub segment_max_bytes: u64,
    pub segment_max_secs: u64,
    /// How long entries are kept: segments (`file`) or messages (`jetstream`, the
    /// stream's `max_age`) older than this are deleted.
    pub retention_hours: u64,
    /// `jetstream`: the server, and the stream (created when missing, with subjects
    /// `<subject_prefix>.decision` and `<subject_prefix>.event`).
    pub nats_url: String,
    pub stream: String,
    pub subject_prefix: String,
    /// Entries waiting to be written; beyond this, new entries are dropped and counted.
    pub queue_capacity: usize,
    /// Entries written per batch at most (one gzip member, one round of publish acks).
    pub batch_max_entries: usize,
    /// A decision's request larger than this (encoded) is not logged, only its size.
    pub max_request_bytes: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            sink: SinkKind::None,
            directory: PathBuf::from("cascade-log"),
            segment_max_bytes: 64 * 1024 * 1024,
            segment_max_secs: 3_600,
            retention_hours: 24 * 30,
            nats_url: "nats://127.0.0.1:4222".into(),
            stream: "CASCADE_LOG".into(),
            subject_prefix: "cascade.log".into(),
            queue_capacity: 65_536,
            batch_max_entries: 512,
            max_request_bytes: 32 * 1024,
        }
    }
}

impl Validate for LogSettings {
    fn validate(&self) -> Result<(), InvalidSetting> {
        at_least("segment_max_bytes", self.segment_max_bytes, 4_096)?;
        at_least("segment_max_secs", self.segment_max_secs, 1)?;
        at_least("retention_hours", self.retention_hours, 1)?;
        at_least("queue_capacity", self.queue_capacity as u64, 1)?;
        at_least("batch_max_entries", self.batch_max_entries as u64, 1)?;
        let token = |value: &str, key: &str, allowed_dot: bool| {
            require(
                !value.is_empty()
                    && value.chars().all(|c| {
                        c.is_ascii_alphanumeric()
                            || c == '_'
                            || c == '-'
                            || (allowed_dot && c == '.')
                    }),
                key,
                || {
                    format!(
                        "must be letters, digits, '_' or '-'{}, got {value:?}",
                        if allowed_dot { " or '.'" } else { "" }
                    )
                },
            )
        };
        if self.sink == SinkKind::Jetstream {
            token(&self.stream, "stream", false)?;
            token(&self.subject_prefix, "subject_prefix", true)?;
            require(!self.nats_url.is_empty(), "nats_url", || {
                "required for sink = \"jetstream\"".into()
            })?;
        }
        if self.sink == SinkKind::File {
            require(!self.directory.as_os_str().is_empty(), "directory", || {
                "required for sink = \"file\"".into()
            })?;
        }
        Ok(())
    }
}
