//! `cascade up`: the four services in one process, still talking gRPC to each other over
//! loopback, sharing one embedded store loaded with the demo configuration, plus a demo
//! OpenRTB ad network.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cascade_sandbox::{Behaviour, FakeNetworks};
use cascade_server::settings::GrpcSettings;
use cascade_state::{MemoryStore, StateError, StateSettings, Store};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// The demo configuration, built into the binary so `cascade up` works from anywhere.
const DEMO_CONFIGURATION: &str = include_str!("../../../examples/demo.toml");

#[derive(clap::Args)]
pub struct UpArgs {
    /// Address of the decision API (bid-intake); the other services take free ports.
    #[arg(long, default_value = "127.0.0.1:50051")]
    listen: SocketAddr,
    /// Configuration file to load instead of the built-in demo (`${DEMO_NETWORK}` in it
    /// is replaced by the demo network's address).
    #[arg(long)]
    configuration: Option<PathBuf>,
    /// How a demo network answers: NAME=fill|no-fill|empty|error|malformed|slow.
    /// Repeatable; networks not named fill.
    #[arg(long = "demo-network", value_name = "NAME=BEHAVIOUR")]
    demo_networks: Vec<String>,
    /// Use Redis (`redis://HOST:PORT`) as the shared state instead of the embedded
    /// store; the demo configuration is written to it when it holds none yet.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// `--redis` names nodes of a Redis Cluster (comma-separated).
    #[arg(long, requires = "redis")]
    redis_cluster: bool,
    /// Where to serve Prometheus metrics of the whole process (port 0: any free one;
    /// the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
    /// The admin API's bearer token; a random one is made (and printed) when unset.
    #[arg(long, env = "CASCADE_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let admin_token = args
        .admin_token
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let networks = FakeNetworks::start()
        .await
        .context("starting the demo ad network")?;
    for spec in &args.demo_networks {
        let (name, behaviour) = spec
            .split_once('=')
            .and_then(|(name, behaviour)| Some((name, Behaviour::parse(behaviour)?)))
            .with_context(|| {
                format!(
                    "--demo-network {spec:?}: expected NAME=fill|no-fill|empty|error|malformed|slow"
                )
            })?;
        networks.set(name, behaviour);
    }
    let demo_network = networks.addr().to_string();
    let demo_grpc_network = networks.grpc_addr().to_string();
    let placeholders = [
        ("DEMO_NETWORK", demo_network.as_str()),
        ("DEMO_GRPC_NETWORK", demo_grpc_network.as_str()),
    ];
    let configuration = match &args.configuration {
        Some(path) => cascade_state::read_configuration_file(path, &placeholders)?,
        None => cascade_state::parse_configuration(&cascade_state::fill_placeholders(
            DEMO_CONFIGURATION,
            &placeholders,
        ))
        .context("the built-in demo configuration")?,
    };
    let store: Arc<dyn Store> = match &args.redis {
        None => Arc::new(MemoryStore::with_configuration(configuration)?),
        Some(url) => {
            let store = StateSettings {
                redis_url: Some(url.clone()),
                redis_cluster: args.redis_cluster,
                ..Default::default()
            }
            .open()?;
            let version = store
                .configuration_version()
                .await
                .with_context(|| format!("cannot reach Redis at {url}"))?;
            if version == 0 {
                // Expecting version 0: a concurrent seeder wins and ours is refused.
                match store.apply_configuration(configuration, Some(0)).await {
                    Ok(_) | Err(StateError::VersionConflict { .. }) => {}
                    Err(error) => return Err(error.into()),
                }
            }
            store
        }
    };
    let state_description = match &args.redis {
        None => "embedded state".to_string(),
        Some(url) => format!("state in Redis at {url}"),
    };

    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))
    };
    let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
    let targeting_listener = bind(any_port).await?;
    let auction_listener = bind(any_port).await?;
    let network_caller_listener = bind(any_port).await?;
    let bid_intake_listener = bind(args.listen).await?;
    let targeting_addr = targeting_listener.local_addr()?;
    let auction_addr = auction_listener.local_addr()?;
    let network_caller_addr = network_caller_listener.local_addr()?;
    let bid_intake_addr = bid_intake_listener.local_addr()?;

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let grpc = GrpcSettings::default();
    let state = StateSettings {
        poll_interval_ms: 1_000,
        ..Default::default()
    };
    let mut services: tokio::task::JoinSet<anyhow::Result<()>> = tokio::task::JoinSet::new();
    let targeting_settings = cascade_targeting_evaluation::Settings {
        grpc: grpc.clone(),
        state: state.clone(),
    };
    let (targeting_store, targeting_shutdown) = (store.clone(), shutdown());
    services.spawn(async move {
        cascade_targeting_evaluation::serve(
            targeting_settings,
            targeting_store,
            targeting_listener,
            targeting_shutdown,
        )
        .await?;
        Ok(())
    });
    let auction_settings = cascade_auction::Settings { grpc: grpc.clone() };
    let auction_shutdown = shutdown();
    services.spawn(async move {
        cascade_auction::serve(auction_settings, auction_listener, auction_shutdown).await?;
        Ok(())
    });
    let network_caller_settings = cascade_network_caller::Settings {
        grpc: grpc.clone(),
        state: state.clone(),
        ..Default::default()
    };
    let (network_caller_store, network_caller_shutdown) = (store.clone(), shutdown());
    services.spawn(async move {
        cascade_network_caller::serve(
            network_caller_settings,
            network_caller_store,
            network_caller_listener,
            network_caller_shutdown,
        )
        .await?;
        Ok(())
    });
    let bid_intake_settings = cascade_bid_intake::Settings {
        // The four services share this process and so its metrics: one endpoint.
        grpc: GrpcSettings {
            metrics_listen: Some(args.metrics_listen),
            ..grpc
        },
        state,
        targeting_evaluation_addr: targeting_addr.into(),
        auction_addr: auction_addr.into(),
        network_caller_addr: network_caller_addr.into(),
        admin_token: Some(admin_token.clone()),
        ..Default::default()
    };
    let (bid_intake_store, bid_intake_shutdown) = (store.clone(), shutdown());
    services.spawn(async move {
        cascade_bid_intake::serve(
            bid_intake_settings,
            bid_intake_store,
            bid_intake_listener,
            bid_intake_shutdown,
        )
        .await?;
        Ok(())
    });

    for addr in [
        targeting_addr,
        auction_addr,
        network_caller_addr,
        bid_intake_addr,
    ] {
        cascade_sandbox::wait_until_serving(addr, "", std::time::Duration::from_secs(10)).await?;
    }
    println!("cascade is up ({state_description})");
    print_banner(
        bid_intake_addr,
        targeting_addr,
        auction_addr,
        network_caller_addr,
        &demo_network,
        &admin_token,
    );

    tokio::select! {
        () = cascade_server::shutdown::signal() => {}
        Some(result) = services.join_next() => {
            result??;
            anyhow::bail!("a service stopped on its own");
        }
    }
    let _ = shutdown_tx.send(true);
    while let Some(result) = services.join_next().await {
        result??;
    }
    Ok(())
}

/// A decision request for the demo configuration: a 300x250 banner on foobar.com
/// (publisher 8953, which inherits the container's rules), with one exchange bid at $1.50
/// competing against the mediated bids (CoolAds at $2.00, BetaAds at $1.20).
pub const DEMO_REQUEST: &str = r#"{"request":{"id":"demo-1","imp":[{"id":"1","tagid":"home-top","banner":{"w":300,"h":250}}],"site":{"domain":"www.foobar.com","publisher":{"id":"8953"}},"device":{"devicetype":2,"geo":{"country":"DEU"}}},"exchange_bids":[{"cur":"USD","seatbid":[{"seat":"dsp-1","bid":[{"id":"b1","impid":"1","price":1.5,"adomain":["shoes.example"],"adm":"<div>exchange ad</div>"}]}]}],"debug":true}"#;

fn print_banner(
    bid_intake: SocketAddr,
    targeting: SocketAddr,
    auction: SocketAddr,
    network_caller: SocketAddr,
    demo_network: &str,
    admin_token: &str,
) {
    println!(
        "  bid-intake            {bid_intake}   (decision API: cascade.decision.v1.BidIntake)"
    );
    println!("  targeting-evaluation  {targeting}");
    println!("  auction               {auction}");
    println!("  network-caller        {network_caller}");
    println!("  demo ad network       http://{demo_network}/openrtb/{{coolads,betaads}}");
    println!();
    println!("Get a decision (paste into another terminal):");
    println!();
    println!(
        "grpcurl -plaintext -d '{DEMO_REQUEST}' {bid_intake} cascade.decision.v1.BidIntake/Decide"
    );
    println!();
    println!("Read and change the configuration (admin API):");
    println!();
    println!("export CASCADE_ADMIN_TOKEN={admin_token} CASCADE_ADMIN_TARGET=http://{bid_intake}");
    println!("cascade admin get networks");
    println!();
    println!("Stop with Ctrl-C.");
}
