//! The four services in this process, each on its own loopback listener and still
//! talking gRPC to the others, sharing one store: what `cascade up` runs and what most
//! end-to-end tests start (quicker than four processes, and the same `serve` functions
//! the binaries run).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use cascade_state::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long the services may take to turn SERVING (their first snapshot loaded).
const READY_WITHIN: Duration = Duration::from_secs(15);

/// What each service runs with. Where bid-intake finds the others is set by
/// [`InProcessCluster::start`] to the ports they got.
#[derive(Clone, Debug)]
pub struct ClusterSettings {
    pub targeting_evaluation: cascade_targeting_evaluation::Settings,
    pub auction: cascade_auction::Settings,
    pub network_caller: cascade_network_caller::Settings,
    pub bid_intake: cascade_bid_intake::Settings,
}

impl Default for ClusterSettings {
    /// Each service's defaults, but for the outbound guard: a cluster on one machine
    /// talks to networks (and takes notices) on loopback, so loopback is allowed.
    fn default() -> Self {
        let outbound = cascade_network_caller::OutboundSettings::allowing_loopback();
        ClusterSettings {
            targeting_evaluation: Default::default(),
            auction: Default::default(),
            network_caller: cascade_network_caller::Settings {
                outbound: outbound.clone(),
                ..Default::default()
            },
            bid_intake: cascade_bid_intake::Settings {
                outbound,
                ..Default::default()
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{service} failed")]
    Service {
        service: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{service} stopped on its own")]
    Stopped { service: &'static str },
    #[error("{service} is not SERVING")]
    NotServing {
        service: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The four services running in this process. Dropping it stops them at once; call
/// [`InProcessCluster::shutdown`] for a graceful stop.
pub struct InProcessCluster {
    pub targeting_evaluation: SocketAddr,
    pub auction: SocketAddr,
    pub network_caller: SocketAddr,
    pub bid_intake: SocketAddr,
    stop: watch::Sender<bool>,
    services: JoinSet<Result<&'static str, ClusterError>>,
}

impl InProcessCluster {
    /// Starts the services on `store`, bid-intake listening on `bid_intake_listen` (port
    /// 0: any free one), the others on free loopback ports, and returns once every one
    /// answers health SERVING.
    pub async fn start(
        mut settings: ClusterSettings,
        store: Arc<dyn Store>,
        bid_intake_listen: SocketAddr,
    ) -> Result<Self, ClusterError> {
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let (targeting_listener, targeting_evaluation) = bind(any_port).await?;
        let (auction_listener, auction) = bind(any_port).await?;
        let (network_caller_listener, network_caller) = bind(any_port).await?;
        let (bid_intake_listener, bid_intake) = bind(bid_intake_listen).await?;
        settings.bid_intake.targeting_evaluation_addr = targeting_evaluation.into();
        settings.bid_intake.auction_addr = auction.into();
        settings.bid_intake.network_caller_addr = network_caller.into();

        let (stop, stopped) = watch::channel(false);
        let shutdown = move || {
            let mut stopped = stopped.clone();
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            }
        };
        let mut services = JoinSet::new();
        services.spawn(run(
            "targeting-evaluation",
            cascade_targeting_evaluation::serve(
                settings.targeting_evaluation,
                store.clone(),
                targeting_listener,
                shutdown(),
            ),
        ));
        services.spawn(run(
            "auction",
            cascade_auction::serve(settings.auction, auction_listener, shutdown()),
        ));
        services.spawn(run(
            "network-caller",
            cascade_network_caller::serve(
                settings.network_caller,
                store.clone(),
                network_caller_listener,
                shutdown(),
            ),
        ));
        services.spawn(run(
            "bid-intake",
            cascade_bid_intake::serve(settings.bid_intake, store, bid_intake_listener, shutdown()),
        ));
        let mut cluster = Self {
            targeting_evaluation,
            auction,
            network_caller,
            bid_intake,
            stop,
            services,
        };
        let addresses = cluster.addresses();
        let all_serving = async {
            for (service, addr) in addresses {
                crate::wait_until_serving(addr, "", READY_WITHIN)
                    .await
                    .map_err(|source| ClusterError::NotServing { service, source })?;
            }
            Ok(())
        };
        tokio::select! {
            serving = all_serving => serving?,
            stopped = cluster.stopped() => return Err(stopped),
        }
        Ok(cluster)
    }

    /// Each service with its address.
    pub fn addresses(&self) -> [(&'static str, SocketAddr); 4] {
        [
            ("targeting-evaluation", self.targeting_evaluation),
            ("auction", self.auction),
            ("network-caller", self.network_caller),
            ("bid-intake", self.bid_intake),
        ]
    }

    /// Resolves when a service stops, which it does only on an error: that error.
    pub async fn stopped(&mut self) -> ClusterError {
        match self.services.join_next().await.map(joined) {
            Some(Ok(service)) => ClusterError::Stopped { service },
            Some(Err(error)) => error,
            None => ClusterError::Stopped {
                service: "every service",
            },
        }
    }

    /// Stops every service gracefully (health NOT_SERVING, drain) and waits for them.
    pub async fn shutdown(mut self) -> Result<(), ClusterError> {
        let _ = self.stop.send(true);
        while let Some(result) = self.services.join_next().await {
            joined(result)?;
        }
        Ok(())
    }
}

/// A service's task, joined: the service that stopped, or why it failed (a panic too).
fn joined(
    result: Result<Result<&'static str, ClusterError>, tokio::task::JoinError>,
) -> Result<&'static str, ClusterError> {
    result.map_err(|panicked| ClusterError::Service {
        service: "a service",
        source: Box::new(panicked),
    })?
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), ClusterError> {
    let listen = |source| ClusterError::Listen { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(listen)?;
    let local = listener.local_addr().map_err(listen)?;
    Ok((listener, local))
}

async fn run<E>(
    service: &'static str,
    served: impl Future<Output = Result<(), E>>,
) -> Result<&'static str, ClusterError>
where
    E: std::error::Error + Send + Sync + 'static,
{
    served.await.map_err(|source| ClusterError::Service {
        service,
        source: Box::new(source),
    })?;
    Ok(service)
}
