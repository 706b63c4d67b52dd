//! A Redis Cluster connection that replaces itself when its view of the cluster has gone
//! stale.
//!
//! redis-rs refreshes its slot map when a node answers MOVED or READONLY, but when a
//! master dies its routes are repaired only as far as the node it still believes in: a
//! slot map read while the dead master was still listed can keep failing every command
//! for that master's slots long after its replica took over (seen in `cascade bench`: the
//! selection backlog never drained after a failover in two runs of seven). Lettuce and
//! Jedis answer the same problem with "adaptive refresh": when commands keep failing,
//! rediscover the cluster from the seed nodes. So does this link: when commands have
//! failed for [`STALE_AFTER`] with no success between, the next caller makes a fresh
//! connection (a full topology discovery) while the others go on with the old one, and
//! the fresh one replaces it once it is up. At most one renewal a [`STALE_AFTER`].

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// How long commands must fail without a success between before the link is renewed.
const STALE_AFTER: Duration = Duration::from_secs(1);

pub(crate) struct ClusterLink {
    client: ClusterClient,
    current: ArcSwapOption<ClusterConnection>,
    /// Held while the first connection is made: callers before it wait for it.
    first: tokio::sync::Mutex<()>,
    health: Arc<LinkHealth>,
    /// Fresh connections that replaced the current one.
    renewals: AtomicU64,
}

impl ClusterLink {
    pub(crate) fn new(client: ClusterClient) -> Self {
        metrics::counter!("cascade_redis_cluster_renewals_total").absolute(0);
        Self {
            client,
            current: ArcSwapOption::empty(),
            first: tokio::sync::Mutex::new(()),
            health: Arc::new(LinkHealth::new()),
            renewals: AtomicU64::new(0),
        }
    }

    /// The connection to use now, with the health its commands report to. When the
    /// link is stale a fresh one is made in the background: no caller waits for a
    /// discovery of the cluster, and the next callers get the fresh connection once it
    /// is up.
    pub(crate) async fn connection(
        self: &Arc<Self>,
    ) -> Result<(ClusterConnection, Arc<LinkHealth>), RedisError> {
        let current = match self.current.load_full() {
            Some(current) => current,
            None => self.first_connection().await?,
        };
        if self.health.claim_renewal() {
            tokio::spawn(Arc::clone(self).renew());
        }
        Ok(((*current).clone(), self.health.clone()))
    }

    async fn first_connection(&self) -> Result<Arc<ClusterConnection>, RedisError> {
        let _first = self.first.lock().await;
        if let Some(current) = self.current.load_full() {
            return Ok(current);
        }
        let connection = Arc::new(self.client.get_async_connection().await?);
        self.health.renewed_now();
        self.current.store(Some(connection.clone()));
        Ok(connection)
    }

    /// Rediscovers the cluster from its seed nodes and replaces the current connection.
    async fn renew(self: Arc<Self>) {
        match self.client.get_async_connection().await {
            Ok(fresh) => {
                tracing::warn!(
                    "redis cluster commands kept failing: rediscovered the cluster from its seed nodes"
                );
                self.current.store(Some(Arc::new(fresh)));
                self.renewals.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("cascade_redis_cluster_renewals_total").increment(1);
            }
            // Claimed again once the commands have failed for another while.
            Err(error) => tracing::debug!(%error, "the redis cluster cannot be rediscovered yet"),
        }
    }
}

/// What the commands of a link report: since when they have been failing, and when the
/// link was last renewed (milliseconds since `epoch`; 0: not failing).
pub(crate) struct LinkHealth {
    epoch: Instant,
    failing_since_ms: AtomicU64,
    renewed_at_ms: AtomicU64,
}

impl LinkHealth {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            failing_since_ms: AtomicU64::new(0),
            renewed_at_ms: AtomicU64::new(0),
        }
    }

    /// Milliseconds since the epoch, never 0 (0 means "not failing").
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    /// Counts what a command came to.
    pub(crate) fn observe<T>(&self, result: &Result<T, RedisError>) {
        match result {
            Ok(_) => {
                if self.failing_since_ms.load(Ordering::Relaxed) != 0 {
                    self.failing_since_ms.store(0, Ordering::Relaxed);
                }
            }
            Err(error) if is_route_failure(error) => {
                let _ = self.failing_since_ms.compare_exchange(
                    0,
                    self.now_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
            }
            // The command's own fault (a script error, a wrong type): the route is fine.
            Err(_) => {}
        }
    }

    fn renewed_now(&self) {
        self.renewed_at_ms.store(self.now_ms(), Ordering::Relaxed);
        self.failing_since_ms.store(0, Ordering::Relaxed);
    }

    /// Whether the caller is to renew the link now: commands have failed for
    /// [`STALE_AFTER`] with no success, and nobody renewed it in that time. Only one
    /// caller wins the claim.
    fn claim_renewal(&self) -> bool {
        self.claim_renewal_at(self.now_ms())
    }

    fn claim_renewal_at(&self, now: u64) -> bool {
        let failing_since = self.failing_since_ms.load(Ordering::Relaxed);
        if failing_since == 0 {
            return false;
        }
        let stale_ms = STALE_AFTER.as_millis() as u64;
        let renewed_at = self.renewed_at_ms.load(Ordering::Relaxed);
        if now.saturating_sub(failing_since) < stale_ms || now.saturating_sub(renewed_at) < stale_ms
        {
            return false;
        }
        let claimed = self
            .renewed_at_ms
            .compare_exchange(renewed_at, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if claimed {
            // The fresh connection is judged from scratch.
            self.failing_since_ms.store(0, Ordering::Relaxed);
        }
        claimed
    }
}

/// Whether `error` says the command could not reach the node serving its slot (as
/// opposed to the node refusing the command itself).
fn is_route_failure(error: &RedisError) -> bool {
    matches!(
        error.kind(),
        ErrorKind::Io
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::Server(
                ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ReadOnly
                    | ServerErrorKind::Moved
                    | ServerErrorKind::Ask
            )
    ) || error.is_timeout()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused() -> RedisError {
        RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused))
    }

    /// Now, for the tests: 100 s into the link's life.
    const NOW: u64 = 100_000;

    fn health_at(failing_for: Duration, renewed_ago: Duration) -> LinkHealth {
        let health = LinkHealth::new();
        let ms = |d: Duration| d.as_millis() as u64;
        (health.failing_since_ms).store(NOW - ms(failing_for), Ordering::Relaxed);
        (health.renewed_at_ms).store(NOW - ms(renewed_ago), Ordering::Relaxed);
        health
    }

    #[tokio::test]
    async fn a_stale_link_is_replaced_by_a_fresh_connection_to_the_same_cluster() {
        let cluster = cascade_testkit::RedisCluster::start().await.unwrap();
        let client = redis::cluster::ClusterClientBuilder::new(cluster.urls())
            .build()
            .unwrap();
        let link = Arc::new(ClusterLink::new(client));
        let ping = |link: Arc<ClusterLink>| async move {
            let (mut connection, health) = link.connection().await.unwrap();
            let answer = redis::cmd("PING")
                .query_async::<String>(&mut connection)
                .await;
            health.observe(&answer);
            answer
        };
        assert_eq!(ping(link.clone()).await.unwrap(), "PONG");
        let first = link.current.load_full().unwrap();

        // A command that could not reach its node, and none answered for a second.
        link.health.observe(&Err::<(), _>(refused()));
        tokio::time::sleep(STALE_AFTER + Duration::from_millis(100)).await;
        // The caller that notices is served at once, by the connection it had.
        link.connection().await.unwrap();
        let until = tokio::time::Instant::now() + Duration::from_secs(10);
        while link.renewals.load(Ordering::Relaxed) == 0 {
            assert!(tokio::time::Instant::now() < until, "never renewed");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let fresh = link.current.load_full().unwrap();
        assert!(
            !Arc::ptr_eq(&first, &fresh),
            "the connection was not replaced"
        );
        assert_eq!(ping(link.clone()).await.unwrap(), "PONG");
        // Commands that succeed renew nothing more.
        tokio::time::sleep(STALE_AFTER + Duration::from_millis(100)).await;
        assert_eq!(ping(link.clone()).await.unwrap(), "PONG");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(link.renewals.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn failures_without_a_success_for_a_while_make_one_caller_renew() {
        let health = health_at(Duration::from_millis(1_500), Duration::from_secs(10));
        assert!(health.claim_renewal_at(NOW));
        assert!(
            !health.claim_renewal_at(NOW),
            "a second caller must not renew too"
        );
    }

    #[test]
    fn a_fresh_failure_or_a_recent_renewal_renews_nothing() {
        let failing_briefly = health_at(Duration::from_millis(200), Duration::from_secs(10));
        assert!(!failing_briefly.claim_renewal_at(NOW));
        let just_renewed = health_at(Duration::from_secs(5), Duration::from_millis(300));
        assert!(!just_renewed.claim_renewal_at(NOW));
    }

    #[test]
    fn a_success_clears_the_failures_and_a_command_error_is_not_one() {
        let health = health_at(Duration::from_secs(5), Duration::from_secs(10));
        health.observe(&Ok::<_, RedisError>(()));
        assert!(!health.claim_renewal_at(NOW));

        let health = LinkHealth::new();
        let script_error = RedisError::from((ErrorKind::Client, "wrong type"));
        health.observe(&Err::<(), _>(script_error));
        assert_eq!(health.failing_since_ms.load(Ordering::Relaxed), 0);
        health.observe(&Err::<(), _>(refused()));
        assert_ne!(health.failing_since_ms.load(Ordering::Relaxed), 0);
    }
}
