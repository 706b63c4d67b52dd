//! The Redis implementation of [`Store`], and the key schema: this module is the only
//! place in Cascade that knows how state is laid out in Redis.
//!
//! Layout (hash tags in braces, so every multi-key operation stays in one cluster slot):
//! - `{cascade:config}:document`: the whole configuration, JSON; `{cascade:config}:version`
//!   its version.
//! - `cascade:selection:{cs:NN}:ID`: one selection, JSON, with its TTL, where NN is the
//!   selection's shard (a stable hash of its id, 0 to [`SHARDS`]-1);
//!   `cascade:selection:{cs:NN}:ID:event:KIND` marks an event recorded for it (same
//!   remaining TTL; its value is the event's detail, e.g. a node result's outcome).
//! - `cascade:event-counters:{cs:NN}`: the event counts of the shard's selections, one
//!   hash field per counter. Recording an event touches only its shard's slot.
//! - `cascade:report:{cs:NN}:DAY`: the network performance report's counters of the
//!   shard for one UTC day, one hash field per cell (hour, network, mediated bid,
//!   metric); kept [`REPORT_TTL_SECS`]. An impression's cells live in its selection's
//!   shard, so recording the event stays one script in one slot.
//! - `cascade:report-revenue:DAY`: network id -> the revenue it reported for the day.
//! - channel `cascade:config:changed`: the new version, published by every apply (a
//!   cluster forwards a publish to every node).

use std::sync::Arc;

use async_trait::async_trait;
use cascade_core::auction::DemandKind;
use cascade_core::config::Configuration;
use cascade_core::report::ReportCell;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;

use crate::cluster_link::{ClusterLink, LinkHealth};

use crate::{
    BillingNotice, Event, EventCounter, EventKind, EventRecorded, Selection, StateError, Store,
};

/// How many shards selections and event counters are spread over. Each shard is one
/// cluster slot; 16 spread them over any realistic number of masters.
pub const SHARDS: u32 = 16;

pub mod keys {
    pub const CONFIG_DOCUMENT: &str = "{cascade:config}:document";
    pub const CONFIG_VERSION: &str = "{cascade:config}:version";
    pub const CONFIG_CHANNEL: &str = "cascade:config:changed";

    /// The shard of a selection: FNV-1a of its id, stable across processes and builds.
    pub fn shard(selection_id: &str) -> u32 {
        let hash = selection_id.bytes().fold(0x811c_9dc5_u32, |hash, byte| {
            (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193)
        });
        hash % super::SHARDS
    }

    pub fn selection(id: &str) -> String {
        format!("cascade:selection:{{cs:{:02}}}:{id}", shard(id))
    }

    /// A decision's answer, by publisher and request id (the publisher's length first,
    /// so that no two pairs make one key), sharded by the request id.
    pub fn answer(key: &crate::AnswerKey) -> String {
        format!(
            "cascade:answer:{{cs:{:02}}}:{}:{}:{}",
            shard(&key.request_id),
            key.publisher_id.len(),
            key.publisher_id,
            key.request_id
        )
    }

    pub fn event(selection_id: &str, kind: &str) -> String {
        format!("{}:event:{kind}", selection(selection_id))
    }

    pub fn event_counters(shard: u32) -> String {
        format!("cascade:event-counters:{{cs:{shard:02}}}")
    }

    /// The report counters of one shard for one day (`YYYY-MM-DD`).
    pub fn report(shard: u32, day: &str) -> String {
        format!("cascade:report:{{cs:{shard:02}}}:{day}")
    }

    /// Billing notices of one shard: when each is next due (a sorted set of selection
    /// ids), and the notices themselves (selection id -> JSON).
    pub fn billing_due(shard: u32) -> String {
        format!("cascade:billing:{{cs:{shard:02}}}:due")
    }

    pub fn billing_notices(shard: u32) -> String {
        format!("cascade:billing:{{cs:{shard:02}}}:notices")
    }

    /// What networks reported they paid on `day`: network id -> micros.
    pub fn reported_revenue(day: &str) -> String {
        format!("cascade:report-revenue:{day}")
    }
}

/// How long report counters are kept: thirteen months, for year-over-year views.
pub const REPORT_TTL_SECS: u64 = 400 * 24 * 3600;

/// Separates the parts of an event counter's field.
const FIELD_SEPARATOR: char = '\u{1f}';

/// Checks the expected version, stores the document, bumps the version and announces
/// it, atomically. Returns {1, new version} or {0, current version} on a conflict.
const APPLY_SCRIPT: &str = include_str!("lua/apply.lua");

/// Records an event once for a live selection and counts it; an impression of a
/// network's demand also counts in the report (KEYS[4], hour ARGV[4]), and enqueues the
/// selection's billing notice (KEYS[5] due set, KEYS[6] notices, now ARGV[6] in ms).
/// A test request's selection counts in no report and bills nothing. Returns {0} for an
/// unknown or expired selection, {1, selection} when recorded, {2} for a duplicate (with
/// a nil second element, so every reply has two).
const RECORD_EVENT_SCRIPT: &str = include_str!("lua/record_event.lua");

/// Claims the due billing notices of one shard (KEYS[1] due set, KEYS[2] notices): at
/// most ARGV[3] due at ARGV[1], each leased until ARGV[2]. Ids whose notice is gone are
/// dropped from the due set.
const CLAIM_BILLING_SCRIPT: &str = include_str!("lua/claim_billing.lua");

/// Each slot group of a pipelined call: the indexes of its items, and its replies or
/// its error.
type SlotOutcomes<R> = Vec<(Vec<usize>, redis::RedisResult<Vec<R>>)>;

/// One key to `SET` with a TTL, in the slot of `shard`.
struct KeyWrite {
    shard: u32,
    key: String,
    value: Vec<u8>,
    ttl_ms: u64,
}

/// A connection to a single Redis or to a Redis Cluster; commands are the same. A
/// cluster command's outcome is reported to the health of its link.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection, Arc<LinkHealth>),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c, health) => Box::pin(async move {
                let result = c.req_packed_command(cmd).await;
                health.observe(&result);
                result
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c, health) => Box::pin(async move {
                let result = c.req_packed_commands(pipeline, offset, count).await;
                health.observe(&result);
                result
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c, _) => c.get_db(),
        }
    }
}

/// How the store reaches Redis: a single node's self-reconnecting connection, or a
/// cluster link whose connection is made on first use (so a service can start while
/// the cluster is down), reconnects to nodes on its own and rediscovers the cluster
/// when its commands keep failing.
#[derive(Clone)]
enum Target {
    Single(ConnectionManager),
    Cluster(Arc<ClusterLink>),
}

/// The shared state in Redis. Reconnects on its own; a command during an outage fails
/// with [`StateError::Unavailable`] rather than hang or vanish.
#[derive(Clone)]
pub struct RedisStore {
    target: Target,
    changes: Arc<tokio::sync::watch::Sender<u64>>,
    apply: redis::Script,
    record_event: redis::Script,
    claim_billing: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

const CONNECTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
const RESPONSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Forwards every version announced on the configuration channel to `changes`,
/// resubscribing (to the next node, for a cluster) after a lost connection, until the
/// store is dropped.
async fn follow_announcements(
    clients: Vec<redis::Client>,
    changes: std::sync::Weak<tokio::sync::watch::Sender<u64>>,
) {
    use futures::StreamExt;
    for client in clients.iter().cycle() {
        if changes.strong_count() == 0 {
            return;
        }
        let subscribed = async {
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(keys::CONFIG_CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        match tokio::time::timeout(CONNECTION_TIMEOUT, subscribed).await {
            Ok(Ok(pubsub)) => {
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
            Ok(Err(error)) => {
                tracing::debug!(%error, "cannot subscribe to configuration announcements")
            }
            Err(_) => tracing::debug!("subscribing to configuration announcements timed out"),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// What a `rediss://` connection trusts and presents, read from PEM files at start.
#[derive(Clone, Debug, Default)]
pub struct RedisTls {
    /// CA certificates the server's certificate must chain to; the system's roots when
    /// `None`.
    pub ca_pem: Option<Vec<u8>>,
    /// A client certificate and key, for a Redis that requires them
    /// (`tls-auth-clients yes`).
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl RedisTls {
    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca_pem.clone(),
        }
    }
}

/// A client for `url`: with `tls`'s certificates when it is `rediss://` and some are set.
fn open_client(url: &str, tls: Option<&RedisTls>) -> Result<redis::Client, StateError> {
    match tls {
        Some(tls) if url.starts_with("rediss://") => {
            redis::Client::build_with_tls(url, tls.certificates()).map_err(unavailable)
        }
        _ => redis::Client::open(url).map_err(unavailable),
    }
}

fn unavailable(error: redis::RedisError) -> StateError {
    count_error();
    StateError::Unavailable(error)
}

fn count_error() {
    metrics::counter!("cascade_redis_errors_total").increment(1);
}

impl RedisStore {
    /// Connects lazily to a single Redis at `url` (`redis://host:port[/db]`): the first
    /// command connects, and a lost connection is re-established in the background.
    /// Needs a tokio runtime (it subscribes to configuration announcements).
    pub fn connect(url: &str) -> Result<Self, StateError> {
        Self::connect_with(url, None)
    }

    /// As [`RedisStore::connect`]; a `rediss://` URL is verified against `tls`'s CA
    /// (the system's roots without one) and presents its client certificate, if any.
    pub fn connect_with(url: &str, tls: Option<&RedisTls>) -> Result<Self, StateError> {
        let client = open_client(url, tls)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECTION_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_number_of_retries(2);
        let connection = client
            .get_connection_manager_lazy(config)
            .map_err(unavailable)?;
        Ok(Self::new(Target::Single(connection), vec![client]))
    }

    /// Connects lazily to the Redis Cluster that `seed_urls` are nodes of.
    pub fn connect_cluster(seed_urls: &[String]) -> Result<Self, StateError> {
        Self::connect_cluster_with(seed_urls, None)
    }

    /// As [`RedisStore::connect_cluster`], with `rediss://` nodes verified as
    /// [`RedisStore::connect_with`] does.
    pub fn connect_cluster_with(
        seed_urls: &[String],
        tls: Option<&RedisTls>,
    ) -> Result<Self, StateError> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(seed_urls.to_vec())
            .connection_timeout(CONNECTION_TIMEOUT)
            .response_timeout(RESPONSE_TIMEOUT)
            .retries(2);
        if let Some(tls) = tls {
            builder = builder.certs(tls.certificates());
        }
        let client = builder.build().map_err(unavailable)?;
        let subscribers = seed_urls
            .iter()
            .map(|url| open_client(url, tls))
            .collect::<Result<Vec<_>, _>>()?;
        let target = Target::Cluster(Arc::new(ClusterLink::new(client)));
        Ok(Self::new(target, subscribers))
    }

    fn new(target: Target, subscribers: Vec<redis::Client>) -> Self {
        metrics::counter!("cascade_redis_errors_total").absolute(0);
        let changes = Arc::new(tokio::sync::watch::Sender::new(0));
        tokio::spawn(follow_announcements(subscribers, Arc::downgrade(&changes)));
        Self {
            target,
            changes,
            apply: redis::Script::new(APPLY_SCRIPT),
            record_event: redis::Script::new(RECORD_EVENT_SCRIPT),
            claim_billing: redis::Script::new(CLAIM_BILLING_SCRIPT),
        }
    }

    async fn connection(&self) -> Result<Connection, StateError> {
        match &self.target {
            Target::Single(connection) => Ok(Connection::Single(connection.clone())),
            Target::Cluster(link) => link
                .connection()
                .await
                .map(|(connection, health)| Connection::Cluster(connection, health))
                .map_err(unavailable),
        }
    }

    /// Runs one pipeline per group of keys that share a slot (one pipeline in all on a
    /// single node), concurrently, returning the replies in the order of `items`.
    async fn pipelined<T, R: redis::FromRedisValue>(
        &self,
        items: &[T],
        shard_of: impl Fn(&T) -> u32,
        add: impl Fn(&mut redis::Pipeline, &T),
    ) -> Result<Vec<R>, StateError> {
        let mut ordered: Vec<Option<R>> = (0..items.len()).map(|_| None).collect();
        for (group, replies) in self.pipelined_by_slot(items, shard_of, add).await? {
            for (i, reply) in group.into_iter().zip(replies.map_err(unavailable)?) {
                ordered[i] = Some(reply);
            }
        }
        ordered
            .into_iter()
            .map(|reply| reply.ok_or(StateError::Protocol("a pipeline reply is missing")))
            .collect()
    }

    /// As [`RedisStore::pipelined`], with each slot group's outcome on its own.
    async fn pipelined_by_slot<T, R: redis::FromRedisValue>(
        &self,
        items: &[T],
        shard_of: impl Fn(&T) -> u32,
        add: impl Fn(&mut redis::Pipeline, &T),
    ) -> Result<SlotOutcomes<R>, StateError> {
        let connection = self.connection().await?;
        let groups: Vec<Vec<usize>> = match connection {
            Connection::Single(_) => vec![(0..items.len()).collect()],
            Connection::Cluster(..) => {
                let mut by_shard = std::collections::BTreeMap::<u32, Vec<usize>>::new();
                for (i, item) in items.iter().enumerate() {
                    by_shard.entry(shard_of(item)).or_default().push(i);
                }
                by_shard.into_values().collect()
            }
        };
        let replies = futures::future::join_all(groups.iter().map(|group| {
            let mut pipeline = redis::pipe();
            for &i in group {
                add(&mut pipeline, &items[i]);
            }
            let mut connection = connection.clone();
            async move { pipeline.query_async::<Vec<R>>(&mut connection).await }
        }))
        .await;
        Ok(groups.into_iter().zip(replies).collect())
    }

    /// Adds the keys selection number `owner` is written to (itself, and the answer it
    /// carries for a retried decision) to `writes`.
    fn add_selection_writes(
        owner: usize,
        selection: &Selection,
        writes: &mut Vec<(usize, KeyWrite)>,
    ) -> Result<(), StateError> {
        let value = serde_json::to_vec(selection).map_err(|source| StateError::Encode {
            what: "a selection",
            source,
        })?;
        let ttl_ms = u64::try_from(selection.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let write = KeyWrite {
            shard: keys::shard(&selection.id),
            key: keys::selection(&selection.id),
            value,
            ttl_ms,
        };
        writes.push((owner, write));
        if let Some(answer) = &selection.answer {
            let write = KeyWrite {
                shard: keys::shard(&answer.key.request_id),
                key: keys::answer(&answer.key),
                value: answer.response.clone(),
                ttl_ms,
            };
            writes.push((owner, write));
        }
        Ok(())
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn configuration(&self) -> Result<Configuration, StateError> {
        let mut connection = self.connection().await?;
        let (document, version): (Option<String>, Option<u64>) = redis::cmd("MGET")
            .arg(keys::CONFIG_DOCUMENT)
            .arg(keys::CONFIG_VERSION)
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        let mut configuration = match document {
            Some(document) => {
                serde_json::from_str(&document).map_err(|source| StateError::Corrupt {
                    what: "configuration",
                    source: Some(source),
                })?
            }
            None => Configuration::default(),
        };
        configuration.version = version.unwrap_or(0);
        Ok(configuration)
    }

    async fn configuration_version(&self) -> Result<u64, StateError> {
        let mut connection = self.connection().await?;
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
        let document =
            serde_json::to_string(&configuration).map_err(|source| StateError::Encode {
                what: "the configuration",
                source,
            })?;
        let mut connection = self.connection().await?;
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
            (_, None) => Err(StateError::Protocol("an unconditional apply was refused")),
        }
    }

    async fn put_selections(&self, selections: &[Selection]) -> Result<Vec<bool>, StateError> {
        // Every key to write, with the index of the selection it belongs to.
        let mut writes = Vec::with_capacity(selections.len() + 1);
        for (owner, selection) in selections.iter().enumerate() {
            Self::add_selection_writes(owner, selection, &mut writes)?;
        }
        let outcomes = self
            .pipelined_by_slot::<_, redis::Value>(
                &writes,
                |(_, write)| write.shard,
                |pipeline, (_, write)| {
                    pipeline
                        .cmd("SET")
                        .arg(&write.key)
                        .arg(&write.value)
                        .arg("PX")
                        .arg(write.ttl_ms);
                },
            )
            .await?;
        let mut stored = vec![true; selections.len()];
        let mut first_error = None;
        for (group, replies) in outcomes {
            if let Err(error) = replies {
                for i in group {
                    stored[writes[i].0] = false;
                }
                first_error.get_or_insert(error);
            }
        }
        match first_error {
            Some(error) if !stored.contains(&true) => Err(unavailable(error)),
            Some(error) => {
                // Part of the cluster is down: what it refused waits in the caller's
                // backlog, and the failure is counted like any other.
                tracing::debug!(%error, "part of the cluster refused selections");
                count_error();
                Ok(stored)
            }
            None => Ok(stored),
        }
    }

    async fn recall(
        &self,
        answer: &crate::AnswerKey,
        ids: &[String],
    ) -> Result<(Option<Vec<u8>>, Vec<Option<Selection>>), StateError> {
        // The answer's GET first, then each selection's MGET: one pipeline per shard.
        let mut reads = vec![(keys::shard(&answer.request_id), vec![keys::answer(answer)])];
        reads.extend(ids.iter().map(|id| {
            (
                keys::shard(id),
                vec![
                    keys::selection(id),
                    keys::event(id, crate::EventKind::NodeResult.as_str()),
                ],
            )
        }));
        let mut values: Vec<Vec<Option<Vec<u8>>>> = self
            .pipelined(
                &reads,
                |(shard, _)| *shard,
                |pipeline, (_, keys)| {
                    pipeline.cmd("MGET").arg(keys);
                },
            )
            .await?;
        let stored = values.first_mut().and_then(|v| v.pop()).flatten();
        let selections = values
            .into_iter()
            .skip(1)
            .map(|pair| {
                let mut pair = pair.into_iter();
                let selection = pair.next().flatten()?;
                let node_outcome = pair
                    .next()
                    .flatten()
                    .and_then(|outcome| String::from_utf8(outcome).ok());
                let selection: Selection = serde_json::from_slice(&selection).ok()?;
                Some(Selection {
                    node_outcome,
                    ..selection
                })
            })
            .collect();
        Ok((stored, selections))
    }

    async fn get_selections(&self, ids: &[String]) -> Result<Vec<Option<Selection>>, StateError> {
        // The selection and its node-result mark share a hash tag: one MGET each.
        let values: Vec<Vec<Option<String>>> = self
            .pipelined(
                ids,
                |id| keys::shard(id),
                |pipeline, id| {
                    pipeline
                        .cmd("MGET")
                        .arg(keys::selection(id))
                        .arg(keys::event(id, crate::EventKind::NodeResult.as_str()));
                },
            )
            .await?;
        Ok(values
            .into_iter()
            .map(|mut pair| {
                let node_outcome = pair.get_mut(1).and_then(Option::take);
                let selection: Selection = serde_json::from_str(pair.first()?.as_deref()?).ok()?;
                Some(Selection {
                    node_outcome,
                    ..selection
                })
            })
            .collect())
    }

    async fn record_event(&self, event: &Event) -> Result<EventRecorded, StateError> {
        let (day, hour) = cascade_core::report::period_of(crate::now_unix_seconds());
        let mut connection = self.connection().await?;
        let (outcome, selection): (u8, Option<String>) = self
            .record_event
            .key(keys::selection(&event.selection_id))
            .key(keys::event(&event.selection_id, event.kind.as_str()))
            .key(keys::event_counters(keys::shard(&event.selection_id)))
            .key(keys::report(keys::shard(&event.selection_id), &day))
            .key(keys::billing_due(keys::shard(&event.selection_id)))
            .key(keys::billing_notices(keys::shard(&event.selection_id)))
            .arg(event.kind.as_str())
            .arg(&event.detail)
            .arg(FIELD_SEPARATOR.to_string())
            .arg(format!("{hour:02}"))
            .arg(REPORT_TTL_SECS)
            .arg(crate::now_unix_millis())
            .invoke_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(match outcome {
            1 => {
                let selection = selection
                    .and_then(|s| serde_json::from_str(&s).ok())
                    .ok_or_else(|| StateError::Corrupt {
                        what: "selection",
                        source: None,
                    })?;
                EventRecorded::New(Box::new(selection))
            }
            2 => EventRecorded::Duplicate,
            _ => EventRecorded::UnknownSelection,
        })
    }

    async fn claim_billing_notices(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<BillingNotice>, StateError> {
        let mut connection = self.connection().await?;
        let mut claimed = Vec::new();
        for shard in 0..SHARDS {
            if claimed.len() >= limit {
                break;
            }
            let notices: Vec<String> = self
                .claim_billing
                .key(keys::billing_due(shard))
                .key(keys::billing_notices(shard))
                .arg(now_ms)
                .arg(lease_until_ms)
                .arg(limit - claimed.len())
                .invoke_async(&mut connection)
                .await
                .map_err(unavailable)?;
            for notice in notices {
                match serde_json::from_str::<BillingNotice>(&notice) {
                    Ok(notice) => claimed.push(notice),
                    Err(error) => tracing::error!(%error, "a stored billing notice cannot be read"),
                }
            }
        }
        Ok(claimed)
    }

    async fn settle_billing_notice(
        &self,
        notice: &BillingNotice,
        retry_at_ms: Option<i64>,
    ) -> Result<(), StateError> {
        let shard = keys::shard(&notice.id);
        let mut pipeline = redis::pipe();
        pipeline.atomic();
        match retry_at_ms {
            Some(due) => {
                let value = serde_json::to_string(notice).map_err(|source| StateError::Encode {
                    what: "a billing notice",
                    source,
                })?;
                pipeline
                    .cmd("HSET")
                    .arg(keys::billing_notices(shard))
                    .arg(&notice.id)
                    .arg(value)
                    .ignore()
                    .cmd("ZADD")
                    .arg(keys::billing_due(shard))
                    .arg(due)
                    .arg(&notice.id)
                    .ignore();
            }
            None => {
                pipeline
                    .cmd("HDEL")
                    .arg(keys::billing_notices(shard))
                    .arg(&notice.id)
                    .ignore()
                    .cmd("ZREM")
                    .arg(keys::billing_due(shard))
                    .arg(&notice.id)
                    .ignore();
            }
        }
        let mut connection = self.connection().await?;
        let () = pipeline
            .query_async(&mut connection)
            .await
            .map_err(unavailable)?;
        Ok(())
    }

    fn configuration_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    async fn add_report_counts(&self, counts: &[(ReportCell, u64)]) -> Result<(), StateError> {
        let _: Vec<redis::Value> = self
            .pipelined(
                counts,
                |(cell, _)| keys::shard(&cell.network_id),
                |pipeline, (cell, count)| {
                    let key = keys::report(keys::shard(&cell.network_id), &cell.day);
                    pipeline
                        .cmd("HINCRBY")
                        .arg(&key)
                        .arg(cell.field())
                        .arg(*count)
                        .ignore()
                        .cmd("EXPIRE")
                        .arg(&key)
                        .arg(REPORT_TTL_SECS);
                },
            )
            .await?;
        Ok(())
    }

    async fn report_counts(&self, days: &[String]) -> Result<Vec<(ReportCell, u64)>, StateError> {
        let hashes: Vec<(&String, u32)> = days
            .iter()
            .flat_map(|day| (0..SHARDS).map(move |shard| (day, shard)))
            .collect();
        let fields: Vec<Vec<(String, u64)>> = self
            .pipelined(
                &hashes,
                |(_, shard)| *shard,
                |pipeline, (day, shard)| {
                    pipeline.cmd("HGETALL").arg(keys::report(*shard, day));
                },
            )
            .await?;
        Ok(hashes
            .iter()
            .zip(fields)
            .flat_map(|((day, _), fields)| {
                fields
                    .into_iter()
                    .filter_map(|(field, count)| Some((ReportCell::parse(day, &field)?, count)))
            })
            .collect())
    }

    async fn put_reported_revenue(
        &self,
        day: &str,
        network_id: &str,
        revenue_micros: i64,
    ) -> Result<(), StateError> {
        let mut connection = self.connection().await?;
        redis::pipe()
            .cmd("HSET")
            .arg(keys::reported_revenue(day))
            .arg(network_id)
            .arg(revenue_micros)
            .ignore()
            .cmd("EXPIRE")
            .arg(keys::reported_revenue(day))
            .arg(REPORT_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut connection)
            .await
            .map_err(unavailable)
    }

    async fn reported_revenue(
        &self,
        days: &[String],
    ) -> Result<Vec<(String, String, i64)>, StateError> {
        let mut reported = Vec::new();
        for day in days {
            let mut connection = self.connection().await?;
            let networks: Vec<(String, i64)> = redis::cmd("HGETALL")
                .arg(keys::reported_revenue(day))
                .query_async(&mut connection)
                .await
                .map_err(unavailable)?;
            reported.extend(
                networks
                    .into_iter()
                    .map(|(network, micros)| (day.clone(), network, micros)),
            );
        }
        Ok(reported)
    }

    async fn event_counters(&self) -> Result<Vec<(EventCounter, u64)>, StateError> {
        let shards: Vec<u32> = (0..SHARDS).collect();
        let hashes: Vec<Vec<(String, u64)>> = self
            .pipelined(
                &shards,
                |shard| *shard,
                |pipeline, shard| {
                    pipeline.cmd("HGETALL").arg(keys::event_counters(*shard));
                },
            )
            .await?;
        let mut totals = std::collections::BTreeMap::<EventCounter, u64>::new();
        for (field, count) in hashes.into_iter().flatten() {
            let mut parts = field.split(FIELD_SEPARATOR).map(String::from);
            let counter = (|| {
                Some(EventCounter {
                    account_id: parts.next()?,
                    source: DemandKind::from_name(&parts.next()?)?,
                    demand: parts.next()?,
                    kind: EventKind::from_name(&parts.next()?)?,
                    detail: parts.next()?,
                })
            })();
            if let Some(counter) = counter {
                *totals.entry(counter).or_default() += count;
            }
        }
        Ok(totals.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::keys;

    #[test]
    fn a_selection_and_its_events_share_a_hash_tag() {
        let selection = keys::selection("sel-42");
        let tag = |key: &str| key[key.find('{').unwrap()..=key.find('}').unwrap()].to_string();
        assert_eq!(tag(&selection), tag(&keys::event("sel-42", "impression")));
        assert_eq!(
            tag(&selection),
            tag(&keys::event_counters(keys::shard("sel-42")))
        );
        assert!(keys::shard("sel-42") < super::SHARDS);
    }
}
