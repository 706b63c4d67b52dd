//! The shared state of the cluster. [`Store`] is the one interface every service uses;
//! [`MemoryStore`] is the embedded implementation (`cascade up`, tests of the services),
//! and a Redis implementation slots in behind the same trait. Nothing outside this crate
//! knows how state is laid out.

mod cluster_link;
mod memory;
mod redis_store;
mod report_recorder;
mod selection;
mod selection_writer;
mod watcher;

use async_trait::async_trait;
use cascade_core::config::{ConfigError, Configuration};
use cascade_core::report::{ReportCell, impression_counts};

pub use memory::MemoryStore;
pub use redis_store::{RedisStore, RedisTls, keys as redis_keys};
pub use report_recorder::ReportRecorder;
pub use selection::{
    Answer, AnswerKey, BillingNotice, Event, EventCounter, EventKind, EventRecorded, Selection,
};
pub use selection_writer::{SelectionWriter, Written};
pub use watcher::{SnapshotCell, SnapshotWatch, watch_snapshot};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid configuration: {0}")]
    InvalidConfiguration(#[from] ConfigError),
    #[error("configuration version is {actual}, the write expected {expected}")]
    VersionConflict { expected: u64, actual: u64 },
    #[error("cannot read configuration file {path}: {message}")]
    ConfigurationFile { path: String, message: String },
    /// A certificate or key file named for `rediss://` cannot be read.
    #[error("cannot read {setting} {path}")]
    TlsFile {
        setting: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// Redis could not be reached, or failed the command.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] redis::RedisError),
    /// Redis is reachable but holds no configuration while a snapshot of one is held
    /// (it restarted empty): the snapshot is kept until a configuration is applied.
    #[error("the store holds no configuration; keeping version {kept} until one is applied")]
    Emptied { kept: u64 },
    /// The store is down and the selections waiting for it fill the backlog.
    #[error("the store is down and the selection backlog is full ({capacity} selections)")]
    BacklogFull { capacity: usize },
    /// The selection was sold here but still waits in the backlog for the store.
    #[error("selection {id:?} is not stored yet")]
    NotYetStored { id: String },
    /// A value the store holds cannot be read: written by another version or by hand.
    #[error("a stored {what} cannot be read")]
    Corrupt {
        what: &'static str,
        #[source]
        source: Option<serde_json::Error>,
    },
    #[error("cannot encode {what}")]
    Encode {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    /// Redis answered something the protocol does not allow (a missing reply, a refused
    /// unconditional apply).
    #[error("the store answered unexpectedly: {0}")]
    Protocol(&'static str),
}

impl StateError {
    /// Whether the store could not be used right now (retrying later may work), as
    /// opposed to a fault in what was asked or stored.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StateError::Unavailable(_)
                | StateError::BacklogFull { .. }
                | StateError::NotYetStored { .. }
                | StateError::Emptied { .. }
        )
    }
}

/// What the services read and write. Implementations are cheap to clone behind an `Arc`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The whole configuration at its current version.
    async fn configuration(&self) -> Result<Configuration, StateError>;

    /// The current configuration version: cheap, polled by every service.
    async fn configuration_version(&self) -> Result<u64, StateError>;

    /// Replaces the whole configuration atomically after validating it, bumping the
    /// version. With `expected_version`, fails unless the stored version equals it.
    async fn apply_configuration(
        &self,
        configuration: Configuration,
        expected_version: Option<u64>,
    ) -> Result<u64, StateError>;

    /// Stores selections (with their TTL) in one round trip (one per master of a Redis
    /// Cluster), as many as the store takes: for each selection, whether it is stored.
    /// A Redis Cluster with a master down still stores the selections of the other
    /// masters' slots, so that they leave the backlog while it fails over. Fails only
    /// when none is stored.
    async fn put_selections(&self, selections: &[Selection]) -> Result<Vec<bool>, StateError>;

    /// Looks selections up in one round trip; `None` for unknown or expired ids.
    async fn get_selections(&self, ids: &[String]) -> Result<Vec<Option<Selection>>, StateError>;

    /// For a retried decision: the answer stored under `answer`, if the first attempt
    /// stored one, and the selections `ids`, in the same round trip.
    async fn recall(
        &self,
        answer: &AnswerKey,
        ids: &[String],
    ) -> Result<(Option<Vec<u8>>, Vec<Option<Selection>>), StateError>;

    /// Records `event` for a stored selection, once: a repeat changes nothing and says
    /// so. Returns only after the event is durably stored.
    async fn record_event(&self, event: &Event) -> Result<EventRecorded, StateError>;

    /// Every event counter, for reports.
    async fn event_counters(&self) -> Result<Vec<(EventCounter, u64)>, StateError>;

    /// Adds `counts` to the network performance report's counters, in one round trip
    /// (one per shard on a cluster).
    async fn add_report_counts(&self, counts: &[(ReportCell, u64)]) -> Result<(), StateError>;

    /// Every report counter of `days` (`YYYY-MM-DD`).
    async fn report_counts(&self, days: &[String]) -> Result<Vec<(ReportCell, u64)>, StateError>;

    /// Records what `network_id` says it paid on `day`, replacing an earlier figure.
    async fn put_reported_revenue(
        &self,
        day: &str,
        network_id: &str,
        revenue_micros: i64,
    ) -> Result<(), StateError>;

    /// The revenue networks reported for `days`: (day, network, micros).
    async fn reported_revenue(
        &self,
        days: &[String],
    ) -> Result<Vec<(String, String, i64)>, StateError>;

    /// Billing notices due at `now_ms` (at most `limit`), each leased until `lease_until_ms`:
    /// a claim before then does not return it again, so a replica that dies mid-delivery
    /// leaves it to another. A notice is enqueued, atomically with the impression event
    /// that makes it due, by [`Store::record_event`].
    async fn claim_billing_notices(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<BillingNotice>, StateError>;

    /// After an attempt: `retry_at_ms` schedules the next one (with `notice.attempts`
    /// as counted); `None` removes the notice (delivered or expired).
    async fn settle_billing_notice(
        &self,
        notice: &BillingNotice,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StateError>;

    /// Announcements of new configuration versions. Best effort: an announcement can be
    /// lost (a dropped subscription), which is why watchers also poll the version.
    fn configuration_changes(&self) -> tokio::sync::watch::Receiver<u64>;
}

/// The outcome of a node result that filled.
pub const FILLED: &str = "filled";

/// The report cells an impression of `selection` adds to, at `unix_seconds`: one
/// impression and the estimated revenue (the winning CPM / 1000) of its network and
/// mediated bid. `None` for demand that is not a network's.
pub fn impression_cells(
    selection: &Selection,
    unix_seconds: i64,
) -> Option<[(ReportCell, u64); 2]> {
    if selection.network_id.is_empty() || selection.test {
        return None;
    }
    Some(impression_counts(
        unix_seconds,
        &selection.network_id,
        &selection.bid_id,
        selection.price_micros,
    ))
}

pub fn now_unix_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default()
}

pub fn now_unix_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Reads a configuration file (TOML), replacing `${NAME}` placeholders from `vars` first.
pub fn read_configuration_file(
    path: &std::path::Path,
    vars: &[(&str, &str)],
) -> Result<Configuration, StateError> {
    let file_error = |message: String| StateError::ConfigurationFile {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_error(e.to_string()))?;
    parse_configuration(&fill_placeholders(&text, vars)).map_err(|error| match error {
        StateError::ConfigurationFile { message, .. } => file_error(message),
        other => other,
    })
}

/// Replaces every `${NAME}` in `text` by its value in `vars`.
pub fn fill_placeholders(text: &str, vars: &[(&str, &str)]) -> String {
    vars.iter().fold(text.to_string(), |text, (name, value)| {
        text.replace(&format!("${{{name}}}"), value)
    })
}

/// Parses and validates a configuration document (TOML).
pub fn parse_configuration(text: &str) -> Result<Configuration, StateError> {
    let configuration: Configuration =
        toml::from_str(text).map_err(|e| StateError::ConfigurationFile {
            path: "<text>".to_string(),
            message: e.to_string(),
        })?;
    configuration.validate()?;
    Ok(configuration)
}

/// Where a service's state lives.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateSettings {
    /// The configuration file the embedded store starts from.
    pub configuration_file: Option<std::path::PathBuf>,
    /// How often the configuration version is polled for changes.
    pub poll_interval_ms: u64,
    /// `redis://host:port` (or `rediss://`): one Redis holds the shared state.
    pub redis_url: Option<String>,
    /// The seed nodes of a Redis Cluster holding the shared state instead (any of its
    /// nodes; each a `redis://` URL). In the environment: comma-separated.
    pub redis_cluster_nodes: Vec<String>,
    /// For `rediss://`: the CA certificates (PEM) the Redis server's certificate must
    /// chain to, instead of the system's roots (a private CA, as in most clusters).
    pub redis_ca_file: Option<std::path::PathBuf>,
    /// For `rediss://` to a Redis that requires client certificates: the certificate
    /// and its key (PEM). Both or neither.
    pub redis_client_cert_file: Option<std::path::PathBuf>,
    pub redis_client_key_file: Option<std::path::PathBuf>,
    /// How often report counters counted in memory are written to the store.
    pub report_flush_interval_ms: u64,
}

impl Default for StateSettings {
    fn default() -> Self {
        Self {
            configuration_file: None,
            poll_interval_ms: 1_000,
            redis_url: None,
            redis_cluster_nodes: Vec::new(),
            redis_ca_file: None,
            redis_client_cert_file: None,
            redis_client_key_file: None,
            report_flush_interval_ms: 1_000,
        }
    }
}

impl cascade_core::settings::Validate for StateSettings {
    fn validate(&self) -> Result<(), cascade_core::settings::InvalidSetting> {
        use cascade_core::settings::{at_least, require};
        // Faster polling than this is load on Redis, not freshness.
        at_least("poll_interval_ms", self.poll_interval_ms, 10)?;
        at_least(
            "report_flush_interval_ms",
            self.report_flush_interval_ms,
            10,
        )?;
        let is_redis_url = |url: &str| url.starts_with("redis://") || url.starts_with("rediss://");
        if let Some(url) = &self.redis_url {
            require(is_redis_url(url), "redis_url", || {
                format!("{url:?} is not a redis:// or rediss:// URL")
            })?;
            require(
                self.redis_cluster_nodes.is_empty(),
                "redis_cluster_nodes",
                || {
                    "set either redis_url (one Redis) or redis_cluster_nodes (a Redis Cluster), not both"
                    .to_string()
                },
            )?;
        }
        for node in &self.redis_cluster_nodes {
            require(is_redis_url(node), "redis_cluster_nodes", || {
                format!("{node:?} is not a redis:// or rediss:// URL")
            })?;
        }
        require(
            self.redis_client_cert_file.is_some() == self.redis_client_key_file.is_some(),
            "redis_client_key_file",
            || "set both redis_client_cert_file and redis_client_key_file, or neither".to_string(),
        )?;
        Ok(())
    }
}

impl StateSettings {
    pub fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.poll_interval_ms)
    }

    pub fn report_flush_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.report_flush_interval_ms)
    }

    /// The certificates `rediss://` connections use, read from the files named; `None`
    /// when none is named (the system's roots, no client certificate).
    pub fn redis_tls(&self) -> Result<Option<RedisTls>, StateError> {
        let read = |setting: &'static str, path: &Option<std::path::PathBuf>| {
            path.as_ref()
                .map(|path| {
                    std::fs::read(path).map_err(|source| StateError::TlsFile {
                        setting,
                        path: path.display().to_string(),
                        source,
                    })
                })
                .transpose()
        };
        let ca_pem = read("redis_ca_file", &self.redis_ca_file)?;
        let cert = read("redis_client_cert_file", &self.redis_client_cert_file)?;
        let key = read("redis_client_key_file", &self.redis_client_key_file)?;
        let client = cert.zip(key);
        Ok((ca_pem.is_some() || client.is_some()).then_some(RedisTls { ca_pem, client }))
    }

    /// Opens the configured store: the Redis Cluster or the Redis named (connecting lazily),
    /// otherwise the embedded one, loaded from `configuration_file` (empty without one).
    pub fn open(&self) -> Result<std::sync::Arc<dyn Store>, StateError> {
        let tls = self.redis_tls()?;
        if !self.redis_cluster_nodes.is_empty() {
            let store = RedisStore::connect_cluster_with(&self.redis_cluster_nodes, tls.as_ref())?;
            return Ok(std::sync::Arc::new(store));
        }
        if let Some(url) = &self.redis_url {
            return Ok(std::sync::Arc::new(RedisStore::connect_with(
                url,
                tls.as_ref(),
            )?));
        }
        let configuration = match &self.configuration_file {
            Some(path) => read_configuration_file(path, &[])?,
            None => Configuration::default(),
        };
        Ok(std::sync::Arc::new(MemoryStore::with_configuration(
            configuration,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cascade_core::settings::Validate;

    #[test]
    fn redis_settings_name_one_redis_or_cluster_nodes_never_both() {
        let single = StateSettings {
            redis_url: Some("redis://a:6379".into()),
            ..Default::default()
        };
        assert!(single.validate().is_ok());
        let cluster = StateSettings {
            redis_cluster_nodes: vec!["redis://a:6379".into(), "rediss://b:6380".into()],
            ..Default::default()
        };
        assert!(cluster.validate().is_ok());
        let both = StateSettings {
            redis_url: Some("redis://a:6379".into()),
            ..cluster.clone()
        };
        assert_eq!(both.validate().unwrap_err().key, "redis_cluster_nodes");
        let not_a_url = StateSettings {
            redis_cluster_nodes: vec!["redis://a:6379".into(), "b:6379".into()],
            ..Default::default()
        };
        let error = not_a_url.validate().unwrap_err();
        assert_eq!(error.key, "redis_cluster_nodes");
        assert!(error.to_string().contains("\"b:6379\""), "{error}");
    }
}
