//! The embedded sink: segment files in a directory. A segment is a gzip file of
//! length-delimited [`LogEntry`] protobufs; each batch is appended as one complete gzip
//! member and synced, so a crash loses at most the batch being written and every
//! segment stays readable with `zcat` up to its last whole member. Segments are named by
//! the time they were opened, so their names sort in time order; one is closed and the
//! next opened by size or age, and those older than the retention are deleted.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;
use prost::Message as _;

use crate::schema::LogEntry;
use crate::{LogError, LogSettings, LogSink, Record, now_unix_millis};

pub const SEGMENT_SUFFIX: &str = ".log.gz";
const SEGMENT_PREFIX: &str = "segment-";
/// No one entry is larger than this; a length above it means the data is not a log.
const MAX_ENTRY_BYTES: u64 = 16 * 1024 * 1024;

pub struct FileSink {
    files: Arc<SegmentFiles>,
}

/// The directory and the segment being written, shared with the blocking writes.
struct SegmentFiles {
    directory: PathBuf,
    max_bytes: u64,
    max_age: Duration,
    retention: Duration,
    current: parking_lot::Mutex<Option<Segment>>,
}

struct Segment {
    path: PathBuf,
    file: File,
    opened: Instant,
    bytes: u64,
}

impl FileSink {
    pub fn open(settings: &LogSettings) -> Result<Self, LogError> {
        let directory = settings.directory.clone();
        std::fs::create_dir_all(&directory).map_err(|source| io_error(&directory, source))?;
        let files = SegmentFiles {
            directory,
            max_bytes: settings.segment_max_bytes,
            max_age: Duration::from_secs(settings.segment_max_secs),
            retention: Duration::from_secs(settings.retention_hours.saturating_mul(3_600)),
            current: parking_lot::Mutex::new(None),
        };
        Ok(Self {
            files: Arc::new(files),
        })
    }
}

impl SegmentFiles {
    fn append(&self, member: &[u8]) -> Result<(), LogError> {
        let mut current = self.current.lock();
        let rotate = current
            .as_ref()
            .is_none_or(|s| s.bytes >= self.max_bytes || s.opened.elapsed() >= self.max_age);
        if rotate {
            *current = None;
            *current = Some(self.new_segment()?);
            self.delete_expired(current.as_ref().map(|s| s.path.as_path()));
        }
        let segment = current.as_mut().expect("a segment was just opened");
        let written = segment
            .file
            .write_all(member)
            .and_then(|()| segment.file.sync_data());
        match written {
            Ok(()) => {
                segment.bytes += member.len() as u64;
                Ok(())
            }
            Err(source) => {
                let path = segment.path.clone();
                // The next batch starts a new segment; this one ends at its last whole member.
                *current = None;
                Err(io_error(&path, source))
            }
        }
    }

    fn new_segment(&self) -> Result<Segment, LogError> {
        let now = now_unix_millis();
        for sequence in 0..10_000u32 {
            let path = self.directory.join(format!(
                "{SEGMENT_PREFIX}{now:016}-{sequence:04}{SEGMENT_SUFFIX}"
            ));
            match File::options().create_new(true).append(true).open(&path) {
                Ok(file) => {
                    return Ok(Segment {
                        path,
                        file,
                        opened: Instant::now(),
                        bytes: 0,
                    });
                }
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(source) => return Err(io_error(&path, source)),
            }
        }
        Err(io_error(
            &self.directory,
            std::io::Error::other("no free segment name"),
        ))
    }

    /// Deletes the segments last written before the retention window (never `keep`).
    fn delete_expired(&self, keep: Option<&Path>) {
        let Some(horizon) = SystemTime::now().checked_sub(self.retention) else {
            return;
        };
        let Ok(paths) = segments(&self.directory) else {
            return;
        };
        for path in paths {
            if Some(path.as_path()) == keep {
                continue;
            }
            let expired = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified < horizon);
            if expired {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        tracing::info!(segment = %path.display(), "decision log segment past retention deleted")
                    }
                    Err(error) => {
                        tracing::warn!(segment = %path.display(), %error, "cannot delete an expired log segment")
                    }
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl LogSink for FileSink {
    async fn write(&self, batch: &[Record]) -> Result<(), LogError> {
        // Compressing and syncing are blocking work: off the runtime's threads, which
        // serve decisions.
        let payloads: Vec<bytes::Bytes> = batch.iter().map(|r| r.bytes.clone()).collect();
        let files = self.files.clone();
        tokio::task::spawn_blocking(move || {
            let member =
                gzip_member(&payloads).map_err(|source| io_error(&files.directory, source))?;
            files.append(&member)
        })
        .await
        .map_err(|error| io_error(&self.files.directory, std::io::Error::other(error)))?
    }

    fn describe(&self) -> String {
        format!("file:{}", self.files.directory.display())
    }
}

/// One batch as one gzip member of length-delimited entries.
fn gzip_member(payloads: &[bytes::Bytes]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    let mut length = Vec::with_capacity(10);
    for payload in payloads {
        length.clear();
        prost::encoding::encode_varint(payload.len() as u64, &mut length);
        encoder.write_all(&length)?;
        encoder.write_all(payload)?;
    }
    encoder.finish()
}

fn io_error(path: &Path, source: std::io::Error) -> LogError {
    LogError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The segment files of `directory`, oldest first.
pub fn segments(directory: &Path) -> Result<Vec<PathBuf>, LogError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(directory)
        .map_err(|source| io_error(directory, source))?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(SEGMENT_PREFIX) && n.ends_with(SEGMENT_SUFFIX))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// Calls `visit` with every entry of the segment at `path`, in order, until it returns
/// false. A segment whose end is cut short (being written, or a crash mid-batch) ends at
/// its last whole entry.
pub(crate) fn read_segment(
    path: &Path,
    visit: &mut dyn FnMut(LogEntry) -> bool,
) -> Result<(), LogError> {
    let file = File::open(path).map_err(|source| io_error(path, source))?;
    let mut reader = BufReader::new(MultiGzDecoder::new(BufReader::new(file)));
    let mut buffer = Vec::new();
    let corrupt = |message: String| LogError::Corrupt {
        at: path.display().to_string(),
        message,
    };
    loop {
        let length = match read_varint(&mut reader) {
            Ok(Some(length)) => length,
            Ok(None) => return Ok(()),
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(corrupt(error.to_string())),
        };
        if length > MAX_ENTRY_BYTES {
            return Err(corrupt(format!("entry of {length} bytes")));
        }
        buffer.resize(length as usize, 0);
        match reader.read_exact(&mut buffer) {
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(error) => return Err(corrupt(error.to_string())),
        }
        let entry = LogEntry::decode(buffer.as_slice()).map_err(|e| corrupt(e.to_string()))?;
        if !visit(entry) {
            return Ok(());
        }
    }
}

/// A protobuf varint, or `None` at a clean end of the stream.
fn read_varint(reader: &mut impl Read) -> std::io::Result<Option<u64>> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let mut byte = [0u8];
        if reader.read(&mut byte)? == 0 {
            return if shift == 0 {
                Ok(None)
            } else {
                Err(std::io::ErrorKind::UnexpectedEof.into())
            };
        }
        value |= u64::from(byte[0] & 0x7f) << shift;
        if byte[0] & 0x80 == 0 {
            return Ok(Some(value));
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        "length varint too long",
    ))
}
