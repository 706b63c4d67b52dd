//! The Redis implementation of [`Store`], and the key schema: this module is the only
//! place in Cascade that knows how state is laid out in Redis.
//!
//! Layout (hash tags in braces):
//! - `{cascade:config}:document`: the whole configuration, JSON; `{cascade:config}:version`
//!   its version. Both share a hash tag, so the apply script touches one slot.
//! - `cascade:selection:{ID}`: one selection, JSON, with its TTL; `cascade:selection:{ID}:event:KIND`
//!   marks an event recorded for it (same slot, same remaining TTL).
//! - `cascade:event-counters`: a hash of event counts, one field per counter.
//! - channel `cascade:config:changed`: the new version, published by every apply.
//!
//! Limitation: recording an event updates the counter hash in the same script as the
//! selection's keys, which a Redis Cluster refuses (different slots); cluster support
//! shards the counters per slot (issue 5).

use async_trait::async_trait;
use cascade_core::config::Configuration;
use redis::aio::ConnectionManager;

use crate::{Event, EventCounter, EventRecorded, Selection, StateError, Store};

pub mod keys {
    pub const CONFIG_DOCUMENT: &str = "{cascade:config}:document";
    pub const CONFIG_VERSION: &str = "{cascade:config}:version";
    pub const CONFIG_CHANNEL: &str = "cascade:config:changed";
    pub const EVENT_COUNTERS: &str = "cascade:event-counters";

    pub fn selection(id: &str) -> String {
        format!("cascade:selection:{{{id}}}")
    }

    pub fn event(selection_id: &str, kind: &str) -> String {
        format!("cascade:selection:{{{selection_id}}}:event:{kind}")
    }
}

/// Separates the parts of an event counter's field.
const FIELD_SEPARATOR: char = '\u{1f}';

/// Checks the expected version, stores the document, bumps the version and announces
/// it, atomically. Returns {1, new version} or {0, current version} on a conflict.
const APPLY_SCRIPT: &str = r"
local current = tonumber(redis.call('GET', KEYS[2]) or '0')
if ARGV[1] ~= '' and tonumber(ARGV[1]) ~= current then
  return {0, current}
end
redis.call('SET', KEYS[1], ARGV[2])
local version = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[3], version)
return {1, version}
";

/// Records an event once for a live selection and counts it. Returns 0 for an unknown
/// or expired selection, 1 when recorded, 2 for a duplicate.
const RECORD_EVENT_SCRIPT: &str = r"
local selection = redis.call('GET', KEYS[1])
if not selection then
  return 0
end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 1 then ttl = 1 end
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ttl) then
  return 2
end
local s = cjson.decode(selection)
local demand = s.network_id
if demand == '' then demand = s.seat end
local sep = ARGV[3]
redis.call('HINCRBY', KEYS[3], s.account_id .. sep .. s.source .. sep .. demand .. sep .. ARGV[1] .. sep .. ARGV[2], 1)
return 1
";

/// The shared state in Redis. Reconnects on its own; a command during an outage fails
/// with [`StateError::Unavailable`] rather than hang or vanish.
#[derive(Clone)]
pub struct RedisStore {
    connection: ConnectionManager,
    changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
    apply: redis::Script,
    record_event: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

/// Forwards every version announced on the configuration channel to `changes`,
/// resubscribing after a lost connection, until the store is dropped.
async fn follow_announcements(
    client: redis::Client,
    changes: std::sync::Weak<tokio::sync::watch::Sender<u64>>,
) {
    use futures::StreamExt;
    while changes.strong_count() > 0 {
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(keys::CONFIG_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match subscribed.await {
            Ok(pubsub) => {
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Some(changes) = changes.upgrade() else {
                        return;
                    };
                    if let Ok(version) = message.get_payload::<u64>() {
                        changes.send_replace(version);
                    }
                }
                tracing::warn!("configuration announcements lost; resubscribing");
            }
            Err(error) => {
                tracing::debug!(%error, "cannot subscribe to configuration announcements")
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

fn unavailable(error: redis::RedisError) -> StateError {
    StateError::Unavailable(error.to_string())
}

impl RedisStore {
    /// Connects lazily to `url` (and subscribes to configuration announcements, which
    /// needs a tokio runtime) (`redis://host:port[/db]`): the first command connects,
    /// and a lost connection is re-established in the background.
    pub fn connect(url: &str) -> Result<Self, StateError> {
        let client = redis::Client::open(url).map_err(unavailable)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(std::time::Duration::from_secs(1)))
            .set_response_timeout(Some(std::time::Duration::from_secs(2)))
            .set_number_of_retries(2);
        let connection = client
            .get_connection_manager_lazy(config)
            .map_err(unavailable)?;
        let changes = std::sync::Arc::new(tokio::sync::watch::Sender::new(0));
        tokio::spawn(follow_announcements(
            client,
            std::sync::Arc::downgrade(&changes),
        ));
        Ok(Self {
            connection,
            changes,
            apply: redis::Script::new(APPLY_SCRIPT),
            record_event: redis::Script::new(RECORD_EVENT_SCRIPT),
        })
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn configuration(&self) -> Result<Configuration, StateError> {
        let mut connection = self.connection.clone();
        let (document, version): (Option<String>, Option<u64>) = redis::cmd("MGET")
            .arg(keys::CONFIG_DOCUMENT)
            .arg(keys::CONFIG_VERSION)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let mut configuration = match document {
            Some(document) => serde_json::from_str(&document).map_err(|e| {
                StateError::Unavailable(format!("stored configuration is unreadable: {e}"))
            })?,
            None => Configuration::default(),
        };
        configuration.version = version.unwrap_or(0);
        Ok(configuration)
    }

    async fn configuration_version(&self) -> Result<u64, StateError> {
        let mut connection = self.connection.clone();
        let version: Option<u64> = redis::cmd("GET")
            .arg(keys::CONFIG_VERSION)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(version.unwrap_or(0))
    }

    async fn apply_configuration(
        &self,
        mut configuration: Configuration,
        expected_version: Option<u64>,
    ) -> Result<u64, StateError> {
        configuration.validate()?;
        configuration.version = 0;
        let document = serde_json::to_string(&configuration).map_err(|e| {
            StateError::Unavailable(format!("cannot encode the configuration: {e}"))
        })?;
        let mut connection = self.connection.clone();
        let (applied, version): (u8, u64) = self
            .apply
            .key(keys::CONFIG_DOCUMENT)
            .key(keys::CONFIG_VERSION)
            .arg(expected_version.map(|v| v.to_string()).unwrap_or_default())
            .arg(document)
            .arg(keys::CONFIG_CHANNEL)
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        match (applied, expected_version) {
            (1, _) => Ok(version),
            (_, Some(expected)) => Err(StateError::VersionConflict {
                expected,
                actual: version,
            }),
            (_, None) => Err(StateError::Unavailable("apply refused".to_string())),
        }
    }

    async fn put_selections(&self, selections: &[Selection]) -> Result<(), StateError> {
        let mut pipeline = redis::pipe();
        for selection in selections {
            let value = serde_json::to_string(selection)
                .map_err(|e| StateError::Unavailable(format!("cannot encode a selection: {e}")))?;
            let ttl_ms = u64::try_from(selection.ttl.as_millis())
                .unwrap_or(u64::MAX)
                .max(1);
            pipeline
                .cmd("SET")
                .arg(keys::selection(&selection.id))
                .arg(value)
                .arg("PX")
                .arg(ttl_ms)
                .ignore();
        }
        let mut connection = self.connection.clone();
        pipeline
            .query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }

    async fn get_selections(&self, ids: &[String]) -> Result<Vec<Option<Selection>>, StateError> {
        let mut pipeline = redis::pipe();
        for id in ids {
            pipeline.cmd("GET").arg(keys::selection(id));
        }
        let mut connection = self.connection.clone();
        let values: Vec<Option<String>> = pipeline
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(values
            .into_iter()
            .map(|value| value.and_then(|v| serde_json::from_str(&v).ok()))
            .collect())
    }

    async fn record_event(&self, event: &Event) -> Result<EventRecorded, StateError> {
        let mut connection = self.connection.clone();
        let outcome: u8 = self
            .record_event
            .key(keys::selection(&event.selection_id))
            .key(keys::event(&event.selection_id, &event.kind))
            .key(keys::EVENT_COUNTERS)
            .arg(&event.kind)
            .arg(&event.detail)
            .arg(FIELD_SEPARATOR.to_string())
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(match outcome {
            1 => EventRecorded::New,
            2 => EventRecorded::Duplicate,
            _ => EventRecorded::UnknownSelection,
        })
    }

    fn configuration_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn event_counters(&self) -> Result<Vec<(EventCounter, u64)>, StateError> {
        let mut connection = self.connection.clone();
        let fields: Vec<(String, u64)> = redis::cmd("HGETALL")
            .arg(keys::EVENT_COUNTERS)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let mut counters: Vec<(EventCounter, u64)> = fields
            .into_iter()
            .filter_map(|(field, count)| {
                let mut parts = field.split(FIELD_SEPARATOR).map(String::from);
                let counter = EventCounter {
                    account_id: parts.next()?,
                    source: parts.next()?,
                    demand: parts.next()?,
                    kind: parts.next()?,
                    detail: parts.next()?,
                };
                Some((counter, count))
            })
            .collect();
        counters.sort();
        Ok(counters)
    }
}
