//! `cascade up`: the four services in one process, still talking gRPC to each other over
//! loopback, sharing one embedded store loaded with the demo configuration, plus a demo
//! OpenRTB ad network.

use cascade_bid_intake::{LogSettings, SinkKind};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use cascade_network_caller::OutboundSettings;
use cascade_sandbox::{Behaviour, ClusterSettings, FakeNetworks, InProcessCluster};
use cascade_server::settings::GrpcSettings;
use cascade_state::{MemoryStore, StateError, StateSettings, Store};

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
    /// How a demo network answers: NAME=fill|no-fill|empty|error|malformed|huge|reset|slow
    /// (an ad; no bid; an empty seatbid; HTTP 500; a body that is not OpenRTB; a body over
    /// the size limit; the connection reset mid-answer; an ad after 400 ms). Repeatable;
    /// networks not named fill.
    #[arg(long = "demo-network", value_name = "NAME=BEHAVIOUR")]
    demo_networks: Vec<String>,
    /// Use Redis (`redis://HOST:PORT`) as the shared state instead of the embedded
    /// store; the demo configuration is written to it when it holds none yet.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// Use a Redis Cluster instead, reached through these seed nodes (`redis://HOST:PORT`,
    /// repeatable or comma-separated).
    #[arg(
        long,
        value_name = "URL",
        value_delimiter = ',',
        conflicts_with = "redis"
    )]
    redis_cluster: Vec<String>,
    /// Where to serve Prometheus metrics of the whole process (port 0: any free one;
    /// the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics_listen: SocketAddr,
    /// Where the decision log's segment files go (read them with `cascade log tail`).
    #[arg(long, default_value = "cascade-log", value_name = "DIR")]
    log_dir: PathBuf,
    /// Write the decision log to this NATS JetStream server instead of files.
    #[arg(long, value_name = "URL", conflicts_with = "no_log")]
    log_nats: Option<String>,
    /// Keep no decision log.
    #[arg(long)]
    no_log: bool,
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
                    "--demo-network {spec:?}: expected NAME={}",
                    Behaviour::NAMES.join("|")
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
    let redis = StateSettings {
        redis_url: args.redis.clone(),
        redis_cluster_nodes: args.redis_cluster.clone(),
        ..Default::default()
    };
    let redis_description = match (&args.redis, args.redis_cluster.as_slice()) {
        (Some(url), _) => Some(format!("Redis at {url}")),
        (None, []) => None,
        (None, nodes) => Some(format!("the Redis Cluster at {}", nodes.join(", "))),
    };
    let store: Arc<dyn Store> = match &redis_description {
        None => Arc::new(MemoryStore::with_configuration(configuration)?),
        Some(description) => {
            cascade_core::settings::Validate::validate(&redis)
                .context("--redis / --redis-cluster")?;
            let store = redis.open()?;
            let version = store
                .configuration_version()
                .await
                .with_context(|| format!("cannot reach {description}"))?;
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
    let state_description = match redis_description {
        None => "embedded state".to_string(),
        Some(redis) => format!("state in {redis}"),
    };

    let grpc = GrpcSettings::default();
    let state = StateSettings {
        poll_interval_ms: 1_000,
        ..Default::default()
    };
    let settings = ClusterSettings {
        targeting_evaluation: cascade_targeting_evaluation::Settings {
            grpc: grpc.clone(),
            state: state.clone(),
        },
        auction: cascade_auction::Settings { grpc: grpc.clone() },
        network_caller: cascade_network_caller::Settings {
            grpc: grpc.clone(),
            state: state.clone(),
            // The demo networks answer on loopback.
            outbound: OutboundSettings::allowing_loopback(),
            ..Default::default()
        },
        bid_intake: cascade_bid_intake::Settings {
            // The four services share this process and so its metrics: one endpoint.
            grpc: GrpcSettings {
                metrics_listen: Some(args.metrics_listen),
                ..grpc
            },
            state,
            admin_token: Some(admin_token.clone()),
            log: log_settings(&args),
            outbound: OutboundSettings::allowing_loopback(),
            ..Default::default()
        },
    };
    let log_description = describe_log(&settings.bid_intake.log);
    let mut cluster = InProcessCluster::start(settings, store, args.listen).await?;
    println!("cascade is up ({state_description}; {log_description})");
    print_banner(&cluster, &demo_network, &admin_token);

    tokio::select! {
        () = cascade_server::shutdown::signal() => {}
        stopped = cluster.stopped() => return Err(stopped.into()),
    }
    cluster.shutdown().await?;
    Ok(())
}

fn log_settings(args: &UpArgs) -> LogSettings {
    let mut log = LogSettings::default();
    match (&args.log_nats, args.no_log) {
        (_, true) => log.sink = SinkKind::None,
        (Some(url), false) => {
            log.sink = SinkKind::Jetstream;
            log.nats_url = url.clone();
        }
        (None, false) => {
            log.sink = SinkKind::File;
            log.directory = args.log_dir.clone();
        }
    }
    log
}

fn describe_log(log: &LogSettings) -> String {
    match log.sink {
        SinkKind::None => "no decision log".into(),
        SinkKind::File => format!("decision log in {}", log.directory.display()),
        SinkKind::Jetstream => format!(
            "decision log in JetStream {} at {}",
            log.stream, log.nats_url
        ),
    }
}

/// A decision request for the demo configuration: a 300x250 banner on foobar.com
/// (publisher 8953, which inherits the container's rules), with one exchange bid at $1.50
/// competing against the mediated bids (CoolAds at $2.00, BetaAds at $1.20).
pub const DEMO_REQUEST: &str = r#"{"request":{"id":"demo-1","imp":[{"id":"1","tagid":"home-top","banner":{"w":300,"h":250}}],"site":{"domain":"www.foobar.com","publisher":{"id":"8953"}},"device":{"devicetype":2,"geo":{"country":"DEU"}}},"exchange_bids":[{"cur":"USD","seatbid":[{"seat":"dsp-1","bid":[{"id":"b1","impid":"1","price":1.5,"adomain":["shoes.example"],"adm":"<div>exchange ad</div>"}]}]}],"debug":true}"#;

fn print_banner(cluster: &InProcessCluster, demo_network: &str, admin_token: &str) {
    let InProcessCluster {
        bid_intake,
        targeting_evaluation: targeting,
        auction,
        network_caller,
        ..
    } = cluster;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_network_help_names_every_behaviour() {
        let command = <UpArgs as clap::Args>::augment_args(clap::Command::new("up"));
        let help = command
            .get_arguments()
            .find(|arg| arg.get_id() == "demo_networks")
            .and_then(|arg| arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        for name in Behaviour::NAMES {
            assert!(help.contains(name), "{name} missing from: {help}");
            assert!(Behaviour::parse(name).is_some(), "{name}");
        }
    }
}
