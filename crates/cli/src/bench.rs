//! `cascade bench`: the cluster benchmark in one command. It starts Redis, the four
//! service binaries (as separate processes, from next to this binary) on a configuration
//! of `--rules` selling rules and mediated bids plus a mediated chain of
//! `--chain-depth` networks, and an echo chain with as many sequential gRPC hops as one
//! decision makes; it finds each one's maximum throughput (closed loop), measures
//! latency at half of it (open loop), counts Redis commands per decision from
//! `INFO commandstats`, reads each service's resident memory, and prints every figure
//! as a ratio to the echo chain measured in the same run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use cascade_core::config::{MediatedBid, Network, SellingRule};
use cascade_core::money::Micros;
use cascade_core::targeting::{Filter, Targeting};
use cascade_sandbox::{Behaviour, FakeNetworks, RedisServer, ServiceProcess};
use cascade_state::Store;

use crate::load::{LoadArgs, LoadResult, parse_duration};

const DEMO_CONFIGURATION: &str = include_str!("../../../examples/demo.toml");
/// The ad unit the load targets: its mediated chain is the benchmark's.
const BENCH_TAGID: &str = "bench-top";
/// Sequential round trips of one decision besides its networks: gateway to bid-intake,
/// bid-intake to targeting-evaluation, auction and network-caller in turn, and the
/// selection write to Redis. Each network of the chain adds one.
const DECISION_HOPS_WITHOUT_NETWORKS: usize = 5;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// How long each measurement runs.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Selling rules plus mediated bids loaded (half each), besides the chain.
    #[arg(long, default_value_t = 10_000)]
    rules: usize,
    /// Mediated networks one decision walks: all but the last have no ad.
    #[arg(long, default_value_t = 2)]
    chain_depth: usize,
    /// How long each network of the chain takes to answer, in milliseconds.
    #[arg(long, default_value_t = 0)]
    network_latency_ms: u64,
    /// Impressions per decision request.
    #[arg(long, default_value_t = 1)]
    imps: usize,
    /// Exchange bids per impression.
    #[arg(long, default_value_t = 2)]
    exchange_bids: usize,
    /// Calls in flight while looking for the maximum throughput.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

/// The service binaries next to the running `cascade`.
fn service_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name(name);
    if !path.exists() {
        bail!(
            "{} is missing: build the services too (cargo build --release --workspace --bins)",
            path.display()
        );
    }
    Ok(path)
}

/// The demo configuration plus `rules` generated entities on publisher 8953 and the
/// benchmark chain of `depth` networks on [`BENCH_TAGID`].
fn configuration(
    networks: &FakeNetworks,
    rules: usize,
    depth: usize,
) -> anyhow::Result<cascade_core::config::Configuration> {
    let demo_network = networks.addr().to_string();
    let demo_grpc = networks.grpc_addr().to_string();
    let mut configuration = cascade_state::parse_configuration(&cascade_state::fill_placeholders(
        DEMO_CONFIGURATION,
        &[
            ("DEMO_NETWORK", &demo_network),
            ("DEMO_GRPC_NETWORK", &demo_grpc),
        ],
    ))?;
    let units = |i: usize| Targeting {
        ad_units: Filter {
            include: vec![format!("unit-{}", i % 1_000)],
            exclude: vec![],
        },
        ..Default::default()
    };
    // 8953 gets rules of its own, so it no longer inherits the container's: one that
    // sells everything (the benchmark's ad unit included) and the generated ones.
    configuration.selling_rules.push(SellingRule {
        id: "bench-default".into(),
        account_id: "8953".into(),
        enabled: true,
        floor: Micros(500_000),
        ..Default::default()
    });
    for i in 0..rules / 2 {
        configuration.selling_rules.push(SellingRule {
            id: format!("bench-rule-{i}"),
            account_id: "8953".into(),
            enabled: true,
            floor: Micros(100_000 + (i as i64 % 50) * 10_000),
            targeting: units(i),
            ..Default::default()
        });
        configuration.mediated_bids.push(MediatedBid {
            id: format!("bench-bid-{i}"),
            account_id: "8953".into(),
            network_id: "coolads".into(),
            cpm: Micros(500_000 + (i as i64 % 300) * 10_000),
            targeting: units(i),
            active: true,
            ..Default::default()
        });
    }
    for k in 0..depth.max(1) {
        let id = format!("bench-net-{k}");
        configuration.networks.push(Network {
            id: id.clone(),
            account_id: "demo-network".into(),
            name: format!("Benchmark network {k}"),
            endpoint: format!("http://{demo_network}/openrtb/{id}"),
            timeout_ms: 200,
            ..Default::default()
        });
        configuration.mediated_bids.push(MediatedBid {
            id: id.clone(),
            account_id: "8953".into(),
            network_id: id,
            cpm: Micros(9_000_000 - k as i64 * 100_000),
            targeting: Targeting {
                ad_units: Filter {
                    include: vec![BENCH_TAGID.into()],
                    exclude: vec![],
                },
                ..Default::default()
            },
            active: true,
            ..Default::default()
        });
    }
    configuration.validate()?;
    Ok(configuration)
}

/// Calls per command since the server started, from `INFO commandstats`.
async fn command_calls(redis: &RedisServer) -> anyhow::Result<BTreeMap<String, u64>> {
    let info = redis.cli(&["info", "commandstats"]).await?;
    Ok(info
        .lines()
        .filter_map(|line| {
            let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
            Some((name.to_string(), calls.parse().ok()?))
        })
        .collect())
}

const READ_COMMANDS: &[&str] = &[
    "get", "mget", "hget", "hmget", "hgetall", "exists", "pttl", "ttl", "scan", "keys",
];

/// Resident memory of a process, in MiB, from /proc.
fn resident_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

async fn measure(label: &str, args: &LoadArgs) -> anyhow::Result<LoadResult> {
    let result = crate::load::run(args).await?;
    result.print(label);
    Ok(result)
}

/// A second of warm-up, closed loop at `concurrency` for the maximum, then open loop at
/// half of it; every run's result, in that order.
async fn max_then_half(label: &str, args: LoadArgs) -> anyhow::Result<[LoadResult; 3]> {
    let warm_up = LoadArgs {
        duration: Duration::from_secs(1),
        quiet: true,
        ..args.clone()
    };
    let warm_up = crate::load::run(&warm_up).await?;
    let max = measure(&format!("{label}, closed loop"), &args).await?;
    let half_rate = (max.throughput() / 2.0).max(1.0) as u64;
    let half = measure(
        &format!("{label}, open loop at {half_rate}/s"),
        &LoadArgs {
            rate: Some(half_rate),
            ..args
        },
    )
    .await?;
    Ok([warm_up, max, half])
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let binaries = [
        "targeting-evaluation",
        "auction",
        "network-caller",
        "bid-intake",
    ]
    .map(service_binary);
    let [
        targeting_bin,
        auction_bin,
        network_caller_bin,
        bid_intake_bin,
    ] = binaries;
    let redis = RedisServer::start()
        .await
        .context("starting redis-server")?;
    let networks = FakeNetworks::start().await?;
    let depth = args.chain_depth.max(1);
    for k in 0..depth {
        let answer = if k + 1 < depth {
            Behaviour::NoFill
        } else {
            Behaviour::Fill
        };
        let behaviour = match args.network_latency_ms {
            0 => answer,
            ms => Behaviour::Slow(Duration::from_millis(ms), Box::new(answer)),
        };
        networks.set(&format!("bench-net-{k}"), behaviour);
    }
    let configuration = configuration(&networks, args.rules, args.chain_depth)?;
    let entities = configuration.selling_rules.len() + configuration.mediated_bids.len();
    cascade_state::RedisStore::connect(&redis.url())?
        .apply_configuration(configuration, None)
        .await?;

    // A long poll interval: the figures count what decisions do, not what polls do.
    let state = format!(
        "[state]\nredis_url = \"{}\"\npoll_interval_ms = 60000\n",
        redis.url()
    );
    let quiet = [("RUST_LOG", "error")];
    let targeting = ServiceProcess::start_binary(&targeting_bin?, &state, &quiet).await?;
    let auction = ServiceProcess::start_binary(&auction_bin?, "", &quiet).await?;
    let network_caller = ServiceProcess::start_binary(&network_caller_bin?, &state, &quiet).await?;
    let bid_intake_bin = bid_intake_bin?;
    let bid_intake_settings = format!(
        "targeting_evaluation_addr = \"{}\"\nauction_addr = \"{}\"\nnetwork_caller_addr = \"{}\"\n{state}",
        targeting.addr, auction.addr, network_caller.addr
    );
    let bid_intake =
        ServiceProcess::start_binary(&bid_intake_bin, &bid_intake_settings, &quiet).await?;
    // A second bid-intake, the same in all but its decision log (segment files), for the
    // cost of the log measured in the same run.
    let log_dir = std::env::temp_dir().join(format!(
        "cascade-bench-log-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let logged_bid_intake = ServiceProcess::start_binary(
        &bid_intake_bin,
        &format!(
            "{bid_intake_settings}\n[log]\nsink = \"file\"\ndirectory = {:?}\n",
            log_dir.display().to_string()
        ),
        &quiet,
    )
    .await?;
    let hops = DECISION_HOPS_WITHOUT_NETWORKS + args.chain_depth.max(1);
    let echo = EchoChain::start(hops).await?;

    let load = LoadArgs {
        target: format!("http://{}", bid_intake.addr),
        duration: args.duration,
        concurrency: args.concurrency,
        rate: None,
        connections: 2,
        imps: args.imps,
        exchange_bids: args.exchange_bids,
        tagid: BENCH_TAGID.into(),
        publisher: "8953".into(),
        echo: false,
        quiet: false,
    };
    println!(
        "cascade bench: {entities} selling rules and mediated bids, a chain of {} networks answering in {} ms, {} impression(s) x {} exchange bid(s), {} s per run",
        args.chain_depth,
        args.network_latency_ms,
        args.imps,
        args.exchange_bids,
        args.duration.as_secs()
    );
    let [_, echo_max, echo_half] = max_then_half(
        &format!("echo chain ({hops} hops)"),
        LoadArgs {
            target: format!("http://{}", echo.addr),
            echo: true,
            ..load.clone()
        },
    )
    .await?;
    let before = command_calls(&redis).await?;
    let decide_runs = max_then_half("decisions", load.clone()).await?;
    let after = command_calls(&redis).await?;
    let decisions = decide_runs
        .iter()
        .map(|run| run.completed() + run.errors.values().sum::<u64>())
        .sum::<u64>() as f64;
    let [_, decide_max, decide_half] = decide_runs;
    let [logged_warm_up, logged_max, logged_half] = max_then_half(
        "decisions with the decision log",
        LoadArgs {
            target: format!("http://{}", logged_bid_intake.addr),
            ..load.clone()
        },
    )
    .await?;
    // Once more without, so that the log's run sits between two without it.
    let [_, after_max, after_half] =
        max_then_half("decisions without the log, again", load.clone()).await?;
    let log_bytes: u64 = cascade_log::segments(&log_dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|path| std::fs::metadata(path).ok())
        .map(|metadata| metadata.len())
        .sum();
    let _ = std::fs::remove_dir_all(&log_dir);
    let delta =
        |name: &str| after.get(name).copied().unwrap_or(0) - before.get(name).copied().unwrap_or(0);
    let reads: u64 = READ_COMMANDS.iter().map(|c| delta(c)).sum();
    let sets = delta("set");
    let report_writes = delta("hincrby") + delta("expire");

    println!();
    println!("| figure | decisions | echo chain | ratio | target |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| max throughput (closed loop, {} in flight) | {:.0}/s | {:.0}/s | {:.2} | >= 0.40 |",
        args.concurrency,
        decide_max.throughput(),
        echo_max.throughput(),
        decide_max.throughput() / echo_max.throughput()
    );
    for (name, quantile, target) in [("p50", 0.5, "<= 1.5"), ("p99", 0.99, "<= 2.0")] {
        println!(
            "| {name} at half the max (open loop) | {:.3} ms | {:.3} ms | {:.2} | {target} |",
            decide_half.latency_ms(quantile),
            echo_half.latency_ms(quantile),
            decide_half.latency_ms(quantile) / echo_half.latency_ms(quantile)
        );
    }
    println!();
    println!(
        "| the decision log's cost | log on | log off (before, after) | ratio to the mean off |"
    );
    println!("|---|---:|---:|---:|");
    let off_max = (decide_max.throughput() + after_max.throughput()) / 2.0;
    println!(
        "| max throughput (closed loop) | {:.0}/s | {:.0}/s, {:.0}/s | {:.2} |",
        logged_max.throughput(),
        decide_max.throughput(),
        after_max.throughput(),
        logged_max.throughput() / off_max
    );
    for (name, quantile) in [("p50", 0.5), ("p99", 0.99)] {
        let off = (decide_half.latency_ms(quantile) + after_half.latency_ms(quantile)) / 2.0;
        println!(
            "| {name} at half the max (open loop) | {:.3} ms | {:.3} ms, {:.3} ms | {:.2} |",
            logged_half.latency_ms(quantile),
            decide_half.latency_ms(quantile),
            after_half.latency_ms(quantile),
            logged_half.latency_ms(quantile) / off
        );
    }
    let logged_decisions =
        (logged_warm_up.completed() + logged_max.completed() + logged_half.completed()) as f64;
    println!(
        "The log took {:.0} bytes per decision on disk (compressed segments).",
        log_bytes as f64 / logged_decisions.max(1.0)
    );
    println!();
    println!(
        "Redis during the decision runs ({decisions:.0} decisions): {reads} reads ({:.3} per decision), {sets} SETs ({:.3} per decision, one pipeline each), {report_writes} report counter writes (background flushes, once a second)",
        reads as f64 / decisions.max(1.0),
        sets as f64 / decisions.max(1.0),
    );
    println!();
    println!("| service | resident memory |");
    println!("|---|---:|");
    for service in [&bid_intake, &targeting, &auction, &network_caller] {
        let rss = service.pid().and_then(resident_mib);
        println!(
            "| {} | {} |",
            service.name,
            rss.map_or("?".to_string(), |mib| format!("{mib:.1} MiB"))
        );
    }
    Ok(())
}

/// `cascade echo-chain` as a child process of this one.
struct EchoChain {
    addr: std::net::SocketAddr,
    _child: tokio::process::Child,
}

impl EchoChain {
    async fn start(hops: usize) -> anyhow::Result<Self> {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["echo-chain", "--hops", &hops.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(addr) = line.strip_prefix("echo chain listening on ") {
                    return Ok(addr.trim().parse()?);
                }
            }
            anyhow::bail!("the echo chain exited before listening")
        })
        .await
        .context("the echo chain did not start in 10 s")??;
        Ok(Self {
            addr,
            _child: child,
        })
    }
}
