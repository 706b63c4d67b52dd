//! `cascade bench`: the cluster benchmark in one command. It starts Redis, the four
//! service binaries (as separate processes, from next to this binary) on a configuration
//! of `--rules` selling rules and mediated bids plus a mediated chain of
//! `--chain-depth` networks, and an echo chain with as many sequential gRPC hops as one
//! decision makes; it finds each one's maximum throughput (closed loop), measures
//! latency at half of it (open loop), counts Redis commands per decision from
//! `INFO commandstats`, reads each service's resident memory and CPU (/proc), then loads
//! it open loop at 3x and 10x its maximum with a gateway's deadline (goodput, what was
//! shed and how fast, recovery after), and prints every figure it can as a ratio to the
//! echo chain measured in the same run.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use cascade_core::config::{MediatedBid, Network, SellingRule};
use cascade_core::money::Micros;
use cascade_core::targeting::{Filter, Targeting};
use cascade_sandbox::{Behaviour, FakeNetworks, RedisCluster, RedisServer, ServiceProcess};
use cascade_state::Store;

use crate::load::{LoadArgs, LoadResult, Workload, parse_duration};

const DEMO_CONFIGURATION: &str = include_str!("../../../examples/demo.toml");
/// The ad unit the load targets: its mediated chain is the benchmark's.
const BENCH_TAGID: &str = "bench-top";
/// Sequential round trips of one decision besides its networks: gateway to bid-intake,
/// bid-intake to targeting-evaluation, auction and network-caller in turn, and the
/// selection write to Redis. Each network of the chain adds one.
const DECISION_HOPS_WITHOUT_NETWORKS: usize = 5;
/// The deadline calls carry past the maximum, as a gateway's would.
const OVERLOAD_DEADLINE: Duration = Duration::from_millis(250);
/// How long the run after the overload lasts: recovery is wanted within it.
const RECOVERY_RUN: Duration = Duration::from_secs(2);

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
    /// `toy`: small requests, networks as `--network-latency-ms` says, then overload,
    /// Redis outage and failover runs. `realistic`: 3–8 KB requests (see `cascade load
    /// --workload`), networks answering in 50–300 ms with some timing out, the maximum
    /// and half of it only (run it with `--concurrency 2000`: thousands in flight).
    #[arg(long, value_enum, default_value_t = Workload::Toy)]
    workload: Workload,
    /// The cluster (services, Redis, the echo chain) on the first CPU, this generator and
    /// the fake networks on the others (`taskset`; at least 2 CPUs): the generator cannot
    /// starve the cluster, so overload figures are about the cluster alone, on one core.
    #[arg(long)]
    pin: bool,
}

/// `--pin`: the cluster on [`Pinning::CLUSTER_CPUS`], this generator on the other CPUs.
struct Pinning;

impl Pinning {
    const CLUSTER_CPUS: &str = "0";

    /// Whether to pin, with this process (the generator) pinned already when asked.
    fn start(asked: bool) -> anyhow::Result<Option<Pinning>> {
        if !asked {
            return Ok(None);
        }
        let cpus = std::thread::available_parallelism().map_or(1, usize::from);
        anyhow::ensure!(
            cpus >= 2,
            "--pin needs at least 2 CPUs, this machine has {cpus}"
        );
        taskset(std::process::id(), &format!("1-{}", cpus - 1))?;
        Ok(Some(Pinning))
    }

    /// Every thread of process `pid` onto the cluster's CPU, when pinning.
    fn cluster(pinning: &Option<Pinning>, pid: Option<u32>) -> anyhow::Result<()> {
        match (pinning, pid) {
            (Some(Pinning), Some(pid)) => taskset(pid, Self::CLUSTER_CPUS),
            _ => Ok(()),
        }
    }
}

/// Every thread of process `pid` onto the CPUs `cpus` (a `taskset` list).
fn taskset(pid: u32, cpus: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("taskset")
        .args(["--all-tasks", "--pid", "--cpu-list", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (util-linux) for --pin")?;
    anyhow::ensure!(
        status.success(),
        "taskset could not pin process {pid} to CPUs {cpus}"
    );
    Ok(())
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

/// CPU time (user + system, every thread) of the processes `pids`, from /proc.
fn cpu_time(pids: &[u32]) -> Duration {
    // /proc counts in USER_HZ ticks, 100 a second on every Linux ABI.
    const TICKS_PER_SECOND: u64 = 100;
    let ticks: u64 = pids
        .iter()
        .filter_map(|pid| std::fs::read_to_string(format!("/proc/{pid}/stat")).ok())
        .filter_map(|stat| {
            // Fields after the command name, which may hold spaces, in parentheses.
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            let user: u64 = fields.get(11)?.parse().ok()?;
            let system: u64 = fields.get(12)?.parse().ok()?;
            Some(user + system)
        })
        .sum();
    Duration::from_millis(ticks * 1_000 / TICKS_PER_SECOND)
}

/// Runs `run` and returns what it measured with the CPU time `pids` spent meanwhile.
async fn with_cpu<T>(
    pids: &[u32],
    run: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Duration)> {
    let before = cpu_time(pids);
    let result = run.await?;
    Ok((result, cpu_time(pids).saturating_sub(before)))
}

/// The value of an unlabelled series in Prometheus text.
fn metric_value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
}

/// The sum of the series of `name` whose labels include `label` (`outcome="filled"`).
fn metric_sum(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter_map(|line| line.strip_prefix(name)?.strip_prefix('{'))
        .filter(|rest| rest.contains(label))
        .filter_map(|rest| rest.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// The seconds spent answering and the calls answered, over every method and code, of a
/// service's `cascade_grpc_server_request_duration_seconds`.
fn time_in_service(text: &str) -> (f64, f64) {
    let total = |suffix: &str| -> f64 {
        text.lines()
            .filter(|line| {
                line.starts_with(&format!(
                    "cascade_grpc_server_request_duration_seconds_{suffix}{{"
                )) && !line.contains("grpc.health")
            })
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    (total("sum"), total("count"))
}

/// bid-intake's own time to answer the calls it shed, as the cumulative buckets (upper
/// bound in seconds, count) of its `cascade_grpc_server_request_duration_seconds` for
/// `RESOURCE_EXHAUSTED`.
fn shed_buckets(text: &str) -> Vec<(f64, f64)> {
    text.lines()
        .filter(|line| {
            line.starts_with("cascade_grpc_server_request_duration_seconds_bucket{")
                && line.contains("rpc_method=\"Decide\"")
                && line.contains("grpc_code=\"RESOURCE_EXHAUSTED\"")
        })
        .filter_map(|line| {
            let le = line.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, line.rsplit(' ').next()?.parse().ok()?))
        })
        .collect()
}

/// The `quantile` of the calls bid-intake shed between two readings of
/// [`shed_buckets`], in seconds: the upper bound of the bucket it falls in.
fn shed_quantile(before: &[(f64, f64)], after: &[(f64, f64)], quantile: f64) -> Option<f64> {
    let buckets: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, count)| {
            let earlier = (before.iter())
                .find(|(bound, _)| bound == le)
                .map_or(0.0, |(_, count)| *count);
            (*le, count - earlier)
        })
        .collect();
    let total = buckets.iter().map(|(_, count)| *count).fold(0.0, f64::max);
    if total == 0.0 {
        return None;
    }
    buckets
        .iter()
        .filter(|(_, count)| *count >= quantile * total)
        .map(|(le, _)| *le)
        .fold(None, |best: Option<f64>, le| {
            Some(best.map_or(le, |b| b.min(le)))
        })
}

/// The selections waiting in `bid_intake`'s backlog now (0 when its metrics cannot be
/// read).
async fn backlog_of(bid_intake: &ServiceProcess) -> f64 {
    let text = bid_intake.metrics().await.unwrap_or_default();
    metric_value(&text, "cascade_selection_backlog").unwrap_or(0.0)
}

/// How long Redis hangs in the outage run.
const REDIS_OUTAGE: Duration = Duration::from_secs(3);

/// What the outage run saw.
struct Outage {
    rate: f64,
    result: LoadResult,
    /// Most selections waiting in bid-intake's backlog.
    peak: f64,
    /// From Redis answering again to the backlog being empty.
    emptied_after: Duration,
}

/// Open loop at `rate` for twice the outage and more: Redis hangs (SIGSTOP) after 1 s for
/// `REDIS_OUTAGE`, then answers again; bid-intake's backlog is read every 50 ms.
async fn redis_outage(
    redis: &RedisServer,
    bid_intake: &ServiceProcess,
    load: &LoadArgs,
    rate: f64,
) -> anyhow::Result<Outage> {
    let signal = |name: &str| {
        if let Some(pid) = redis.pid() {
            let _ = std::process::Command::new("kill")
                .args([name, &pid.to_string()])
                .status();
        }
    };
    let args = LoadArgs {
        rate: Some(rate.max(1.0) as u64),
        deadline: Some(OVERLOAD_DEADLINE),
        duration: REDIS_OUTAGE * 3 + Duration::from_secs(2),
        ..load.clone()
    };
    let watch = async {
        let backlog = || backlog_of(bid_intake);
        tokio::time::sleep(Duration::from_secs(1)).await;
        signal("-STOP");
        let resumed_at = tokio::time::Instant::now() + REDIS_OUTAGE;
        let mut peak: f64 = 0.0;
        while tokio::time::Instant::now() < resumed_at {
            peak = peak.max(backlog().await);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        signal("-CONT");
        let resumed = tokio::time::Instant::now();
        loop {
            let waiting = backlog().await;
            peak = peak.max(waiting);
            if waiting == 0.0 || resumed.elapsed() > Duration::from_secs(60) {
                return (peak, resumed.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let label = format!(
        "decisions at {rate:.0}/s, Redis hung for {} s",
        REDIS_OUTAGE.as_secs()
    );
    let (result, (peak, emptied_after)) = tokio::join!(measure(&label, &args), watch);
    Ok(Outage {
        rate,
        result: result?,
        peak,
        emptied_after,
    })
}

/// What the master-failover run saw.
struct Failover {
    rate: f64,
    result: LoadResult,
    /// From the kill to every surviving node saying the cluster is ok (a replica promoted).
    promoted_after: Duration,
    /// Most selections waiting in bid-intake's backlog.
    peak: f64,
    /// From the promotion to the backlog being empty.
    emptied_after: Duration,
}

/// How long the failover run lasts: the kill comes after 1 s, the promotion 2–4 s later
/// (the node timeout is 2 s), and the drain is watched under load after that.
const FAILOVER_RUN: Duration = Duration::from_secs(12);

/// Open loop at `rate` against a bid-intake whose state is `cluster` (three masters, a
/// replica each): after 1 s one master is killed (SIGKILL), the cluster promotes its
/// replica, and bid-intake's backlog is read every 50 ms until it is empty.
async fn cluster_failover(
    cluster: &mut RedisCluster,
    bid_intake: &ServiceProcess,
    load: &LoadArgs,
    rate: f64,
) -> anyhow::Result<Failover> {
    let master = cluster.a_master().await?;
    let args = LoadArgs {
        rate: Some(rate.max(1.0) as u64),
        deadline: Some(OVERLOAD_DEADLINE),
        duration: FAILOVER_RUN,
        target: format!("http://{}", bid_intake.addr),
        ..load.clone()
    };
    let watch = async {
        let backlog = || backlog_of(bid_intake);
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.nodes[master].kill().await?;
        let killed = tokio::time::Instant::now();
        let survivors: Vec<&RedisServer> = (cluster.nodes.iter().enumerate())
            .filter(|(index, _)| *index != master)
            .map(|(_, node)| node)
            .collect();
        // The killed master is seen failed only after the node timeout; until then the
        // others still say ok. Wait for the fail flag, then for every slot served again.
        let mut peak: f64 = 0.0;
        loop {
            peak = peak.max(backlog().await);
            let nodes = survivors[0].cli(&["cluster", "nodes"]).await?;
            let failed = nodes.lines().any(|line| {
                (line.split_whitespace().nth(2))
                    .is_some_and(|flags| flags.split(',').any(|flag| flag == "fail"))
            });
            if failed {
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(30),
                "the cluster never marked the killed master failed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cluster
            .wait_until_ok(&survivors, Duration::from_secs(30))
            .await?;
        let promoted = tokio::time::Instant::now();
        loop {
            let waiting = backlog().await;
            peak = peak.max(waiting);
            if waiting == 0.0 || promoted.elapsed() > Duration::from_secs(60) {
                return anyhow::Ok((promoted - killed, peak, promoted.elapsed()));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let label = format!("decisions at {rate:.0}/s, a Redis Cluster master killed");
    let (result, watched) = tokio::join!(measure(&label, &args), watch);
    let (promoted_after, peak, emptied_after) = watched?;
    Ok(Failover {
        rate,
        result: result?,
        promoted_after,
        peak,
        emptied_after,
    })
}

/// One open-loop run past the maximum.
struct Overload {
    factor: u64,
    /// What sets the run apart from the others at the same factor.
    what: &'static str,
    /// bid-intake's own p99 for the calls it shed in this run (a histogram bucket).
    shed_p99_inside: Option<f64>,
    result: LoadResult,
}

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
    let pinning = Pinning::start(args.pin)?;
    let redis = RedisServer::start()
        .await
        .context("starting redis-server")?;
    Pinning::cluster(&pinning, redis.pid())?;
    let networks = FakeNetworks::start().await?;
    let depth = args.chain_depth.max(1);
    for k in 0..depth {
        let answer = if k + 1 < depth {
            Behaviour::NoFill
        } else {
            Behaviour::Fill
        };
        let behaviour = match (args.workload, args.network_latency_ms) {
            // The chain's networks time out (200 ms) on a fifth of the last one's calls.
            (Workload::Realistic, _) if k + 1 < depth => slow_between(50, 150, answer),
            (Workload::Realistic, _) => slow_between(50, 250, answer),
            (Workload::Toy, 0) => answer,
            (Workload::Toy, ms) => Behaviour::Slow(Duration::from_millis(ms), Box::new(answer)),
        };
        networks.set(&format!("bench-net-{k}"), behaviour);
    }
    if args.workload == Workload::Realistic {
        // The network of the generated placements' mediated bids.
        networks.set("coolads", slow_between(50, 300, Behaviour::Fill));
    }
    let bench_configuration = configuration(&networks, args.rules, args.chain_depth)?;
    let entities =
        bench_configuration.selling_rules.len() + bench_configuration.mediated_bids.len();
    cascade_state::RedisStore::connect(&redis.url())?
        .apply_configuration(bench_configuration.clone(), None)
        .await?;

    // A long poll interval: the figures count what decisions do, not what polls do.
    let state = format!(
        "[state]\nredis_url = \"{}\"\npoll_interval_ms = 60000\n",
        redis.url()
    );
    let quiet = [("RUST_LOG", "error")];
    // Every service serves its metrics: the overload runs read what each one shed.
    let metrics = "\n[grpc]\nmetrics_listen = \"127.0.0.1:0\"\n";
    let targeting =
        ServiceProcess::start_binary(&targeting_bin?, &format!("{state}{metrics}"), &quiet).await?;
    let auction = ServiceProcess::start_binary(&auction_bin?, metrics, &quiet).await?;
    let network_caller =
        ServiceProcess::start_binary(&network_caller_bin?, &format!("{state}{metrics}"), &quiet)
            .await?;
    let bid_intake_bin = bid_intake_bin?;
    let bid_intake_with = |state: &str| {
        format!(
            "targeting_evaluation_addr = \"{}\"\nauction_addr = \"{}\"\nnetwork_caller_addr = \"{}\"\n{state}{metrics}",
            targeting.addr, auction.addr, network_caller.addr
        )
    };
    let bid_intake_settings = bid_intake_with(&state);
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
    for process in [
        &targeting,
        &auction,
        &network_caller,
        &bid_intake,
        &logged_bid_intake,
    ] {
        Pinning::cluster(&pinning, process.pid())?;
    }
    Pinning::cluster(&pinning, echo.child.id())?;

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
        deadline: None,
        quiet: false,
        data_file: None,
        output: crate::load::Output::Text,
        workload: args.workload,
        unnamed_publisher: false,
    };
    match args.workload {
        Workload::Toy => println!(
            "cascade bench: {entities} selling rules and mediated bids, a chain of {} networks answering in {} ms, {} impression(s) x {} exchange bid(s), {} s per run",
            args.chain_depth,
            args.network_latency_ms,
            args.imps,
            args.exchange_bids,
            args.duration.as_secs()
        ),
        Workload::Realistic => println!(
            "cascade bench, realistic workload: {entities} selling rules and mediated bids, a chain of {} networks answering in 50-150 ms (the last 50-250 ms, 200 ms timeout), 3-8 KB requests of 1-4 impressions with 1-3 exchange bids each, {} in flight, {} s per run",
            args.chain_depth,
            args.concurrency,
            args.duration.as_secs()
        ),
    }
    let echo_pids: Vec<u32> = echo.child.id().into_iter().collect();
    let (echo_runs, echo_cpu) = with_cpu(
        &echo_pids,
        max_then_half(
            &format!("echo chain ({hops} hops)"),
            LoadArgs {
                target: format!("http://{}", echo.addr),
                echo: true,
                ..load.clone()
            },
        ),
    )
    .await?;
    let echo_calls = echo_runs.iter().map(LoadResult::answered).sum::<u64>();
    let [_, echo_max, echo_half] = echo_runs;
    let service_pids: Vec<u32> = [&bid_intake, &targeting, &auction, &network_caller]
        .iter()
        .filter_map(|service| service.pid())
        .collect();
    let before = command_calls(&redis).await?;
    let each_before: Vec<Duration> = service_pids.iter().map(|pid| cpu_time(&[*pid])).collect();
    let (decide_runs, decide_cpu) =
        with_cpu(&service_pids, max_then_half("decisions", load.clone())).await?;
    let each: Vec<String> = [&bid_intake, &targeting, &auction, &network_caller]
        .iter()
        .zip(service_pids.iter().zip(&each_before))
        .map(|(service, (pid, before))| {
            format!(
                "{} {:.2} s",
                service.name,
                cpu_time(&[*pid]).saturating_sub(*before).as_secs_f64()
            )
        })
        .collect();
    println!("  CPU of the decision runs: {}", each.join(", "));
    let after = command_calls(&redis).await?;
    let admitted_text = bid_intake.metrics().await.unwrap_or_default();
    println!(
        "  up to the maximum, bid-intake shed {} decisions and degraded {}",
        metric_value(&admitted_text, "cascade_admission_shed_total").unwrap_or(0.0),
        metric_value(&admitted_text, "cascade_admission_degraded_total").unwrap_or(0.0)
    );
    let decisions = decide_runs
        .iter()
        .map(|run| run.completed() + run.errors.values().sum::<u64>())
        .sum::<u64>() as f64;
    let [_, decide_max, decide_half] = decide_runs;
    let cpu_per_decision = decide_cpu.as_secs_f64() / decisions.max(1.0);
    let cpu_per_echo = echo_cpu.as_secs_f64() / (echo_calls as f64).max(1.0);
    let headline = Headline {
        concurrency: args.concurrency,
        decide_max: &decide_max,
        decide_half: &decide_half,
        echo_max: &echo_max,
        echo_half: &echo_half,
        cpu_per_decision,
        cpu_per_echo,
    };
    if args.workload == Workload::Realistic {
        // At the maximum most calls are shed, cheaply; the figure to compare commits by
        // is what a decision served costs, measured where none is shed.
        let half_rate = (decide_max.throughput() / 2.0).max(1.0) as u64;
        let (served, served_cpu) = with_cpu(
            &service_pids,
            measure(
                &format!("decisions, open loop at {half_rate}/s, CPU measured"),
                &LoadArgs {
                    rate: Some(half_rate),
                    ..load.clone()
                },
            ),
        )
        .await?;
        let per_served = served_cpu.as_secs_f64() / (served.completed() as f64).max(1.0);
        println!();
        headline.print();
        println!(
            "CPU per decision served at half the max (open loop, {} ok, {} errors): {:.0} µs, {:.2}x the echo chain's per call",
            served.completed(),
            served.errors.values().sum::<u64>(),
            per_served * 1e6,
            per_served / cpu_per_echo.max(f64::EPSILON)
        );
        let network_text = network_caller.metrics().await.unwrap_or_default();
        println!(
            "network calls during the runs: {:.0} filled, {:.0} no fill, {:.0} timed out; bid-intake shed {:.0}",
            metric_sum(
                &network_text,
                "cascade_network_calls_total",
                "outcome=\"filled\""
            ),
            metric_sum(
                &network_text,
                "cascade_network_calls_total",
                "outcome=\"no_fill\""
            ),
            metric_sum(
                &network_text,
                "cascade_network_calls_total",
                "outcome=\"timeout\""
            ),
            metric_value(&admitted_text, "cascade_admission_shed_total").unwrap_or(0.0),
        );
        return Ok(());
    }
    // Past the maximum, open loop, with the deadline a gateway sets; then back to half
    // the maximum, to see it recover.
    let mut overloads = Vec::new();
    // 3x from idle (a spike: the controller starts from nothing), then sustained (right
    // after), then sustained with calls that do not name their publisher in the metadata
    // (judged once read, not before).
    let runs = [
        (3, false, "a spike from idle"),
        (3, false, "sustained"),
        (3, true, "sustained, publisher not named"),
        (10, false, "sustained"),
    ];
    for (factor, unnamed, what) in runs {
        let rate = (decide_max.throughput() * factor as f64).max(1.0) as u64;
        let shed_before = shed_buckets(&bid_intake.metrics().await.unwrap_or_default());
        let generator_before = cpu_time(&[std::process::id()]);
        // bid-intake's view halfway through: how long work waits, how much it sheds.
        let midway = {
            let duration = load.duration;
            let bid_intake = &bid_intake;
            async move {
                tokio::time::sleep(duration / 2).await;
                let text = bid_intake.metrics().await.unwrap_or_default();
                (
                    metric_value(&text, "cascade_admission_queue_delay_seconds").unwrap_or(0.0),
                    metric_value(&text, "cascade_admission_shed_probability").unwrap_or(0.0),
                )
            }
        };
        let label = format!("decisions, open loop at {factor}x the max ({rate}/s), {what}");
        let overload_args = LoadArgs {
            rate: Some(rate),
            deadline: Some(OVERLOAD_DEADLINE),
            unnamed_publisher: unnamed,
            ..load.clone()
        };
        let services = [&bid_intake, &targeting, &auction, &network_caller];
        let mut time_before = Vec::new();
        for service in services {
            time_before.push(time_in_service(
                &service.metrics().await.unwrap_or_default(),
            ));
        }
        let (measured, (queue_delay, shed_probability)) = tokio::join!(
            with_cpu(&service_pids, measure(&label, &overload_args)),
            midway
        );
        let (result, cpu) = measured?;
        let mut time_in = Vec::new();
        for (service, (seconds_before, calls_before)) in services.iter().zip(time_before) {
            let (seconds, calls) = time_in_service(&service.metrics().await.unwrap_or_default());
            time_in.push(format!(
                "{} {:.1} ms",
                service.name,
                (seconds - seconds_before) * 1e3 / (calls - calls_before).max(1.0)
            ));
        }
        println!(
            "  mean time a call spent in each service: {}",
            time_in.join(", ")
        );
        println!(
            "  halfway: bid-intake's queueing delay {:.1} ms, shedding {:.0}%",
            queue_delay * 1e3,
            shed_probability * 100.0
        );
        let shed_after = shed_buckets(&bid_intake.metrics().await.unwrap_or_default());
        let shed_p99_inside = shed_quantile(&shed_before, &shed_after, 0.99);
        if let Some(p99) = shed_p99_inside {
            println!(
                "  bid-intake answered the calls it shed in this run within {:.2} ms, p99",
                p99 * 1e3
            );
        }
        let mut shed_by = Vec::new();
        for service in [&bid_intake, &targeting, &auction, &network_caller] {
            let text = service.metrics().await.unwrap_or_default();
            shed_by.push(format!(
                "{} {} (degraded {})",
                service.name,
                metric_value(&text, "cascade_admission_shed_total").unwrap_or(0.0),
                metric_value(&text, "cascade_admission_degraded_total").unwrap_or(0.0)
            ));
        }
        println!(
            "  shed so far by {}; this generator took {:.2} s of CPU, the services {:.2} s",
            shed_by.join(", "),
            cpu_time(&[std::process::id()])
                .saturating_sub(generator_before)
                .as_secs_f64(),
            cpu.as_secs_f64()
        );
        overloads.push(Overload {
            factor,
            what,
            shed_p99_inside,
            result,
        });
    }
    let half_rate = (decide_max.throughput() / 2.0).max(1.0) as u64;
    let recovery = measure(
        &format!("decisions, open loop at {half_rate}/s right after"),
        &LoadArgs {
            rate: Some(half_rate),
            deadline: Some(OVERLOAD_DEADLINE),
            duration: RECOVERY_RUN,
            ..load.clone()
        },
    )
    .await?;
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

    let outage = redis_outage(&redis, &bid_intake, &load, decide_max.throughput()).await?;
    let failover = {
        let mut cluster = RedisCluster::start_with_replicas(1)
            .await
            .context("starting a Redis Cluster with replicas")?;
        cascade_state::RedisStore::connect_cluster(&cluster.urls())?
            .apply_configuration(
                configuration(&networks, args.rules, args.chain_depth)?,
                None,
            )
            .await?;
        let state = format!(
            "[state]\nredis_cluster_nodes = {:?}\npoll_interval_ms = 60000\n",
            cluster.urls()
        );
        for node in &cluster.nodes {
            Pinning::cluster(&pinning, node.pid())?;
        }
        let clustered =
            ServiceProcess::start_binary(&bid_intake_bin, &bid_intake_with(&state), &quiet).await?;
        Pinning::cluster(&pinning, clustered.pid())?;
        cluster_failover(&mut cluster, &clustered, &load, decide_max.throughput()).await?
    };

    println!();
    headline.print();
    println!();
    println!(
        "| overload ({} ms deadline) | offered | goodput | goodput / max | shed | shed p99 | shed p99 in bid-intake | deadline exceeded | other errors |",
        OVERLOAD_DEADLINE.as_millis()
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for overload in &overloads {
        let result = &overload.result;
        let shed = result.errors.get("ResourceExhausted").copied().unwrap_or(0);
        let late = result.errors.get("DeadlineExceeded").copied().unwrap_or(0);
        let other = result.errors.values().sum::<u64>() - shed - late;
        let inside = overload
            .shed_p99_inside
            .map_or("-".to_string(), |p99| format!("<= {:.1} ms", p99 * 1e3));
        println!(
            "| {}x the max, {} | {:.0}/s | {:.0}/s | {:.2} | {shed} | {:.3} ms | {inside} | {late} | {other} |",
            overload.factor,
            overload.what,
            result.answered() as f64 / result.elapsed.as_secs_f64().max(f64::EPSILON),
            result.throughput(),
            result.throughput() / decide_max.throughput(),
            result.shed_latency_ms(0.99),
        );
    }
    println!(
        "Right after, at {half_rate}/s for {} s: {} ok, {} errors, p99 {:.3} ms.",
        RECOVERY_RUN.as_secs(),
        recovery.completed(),
        recovery.errors.values().sum::<u64>(),
        recovery.latency_ms(0.99)
    );
    println!(
        "Redis hung (SIGSTOP) for {} s under {:.0} decisions/s: the selection backlog peaked at {:.0}, emptied {:.1} s after Redis came back (draining {:.0} selections/s net of arrivals), {} decisions failed during the run ({} ok).",
        REDIS_OUTAGE.as_secs(),
        outage.rate,
        outage.peak,
        outage.emptied_after.as_secs_f64(),
        outage.peak / outage.emptied_after.as_secs_f64().max(0.001),
        outage.result.errors.values().sum::<u64>(),
        outage.result.completed(),
    );
    println!(
        "A Redis Cluster master killed (SIGKILL) under {:.0} decisions/s: its replica took over {:.1} s after, the selection backlog peaked at {:.0} and emptied {:.1} s after the takeover (draining {:.0} selections/s net of arrivals), {} decisions failed during the run ({} ok).",
        failover.rate,
        failover.promoted_after.as_secs_f64(),
        failover.peak,
        failover.emptied_after.as_secs_f64(),
        failover.peak / failover.emptied_after.as_secs_f64().max(0.001),
        failover.result.errors.values().sum::<u64>(),
        failover.result.completed(),
    );
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

/// The figures every workload reports, each against the echo chain's.
struct Headline<'a> {
    concurrency: usize,
    decide_max: &'a LoadResult,
    decide_half: &'a LoadResult,
    echo_max: &'a LoadResult,
    echo_half: &'a LoadResult,
    cpu_per_decision: f64,
    cpu_per_echo: f64,
}

impl Headline<'_> {
    fn print(&self) {
        println!("| figure | decisions | echo chain | ratio | target |");
        println!("|---|---:|---:|---:|---|");
        println!(
            "| max throughput (closed loop, {} in flight) | {:.0}/s | {:.0}/s | {:.2} | >= 0.40 |",
            self.concurrency,
            self.decide_max.throughput(),
            self.echo_max.throughput(),
            self.decide_max.throughput() / self.echo_max.throughput()
        );
        for (name, quantile, target) in [("p50", 0.5, "<= 1.5"), ("p99", 0.99, "<= 2.0")] {
            println!(
                "| {name} at half the max (open loop) | {:.3} ms | {:.3} ms | {:.2} | {target} |",
                self.decide_half.latency_ms(quantile),
                self.echo_half.latency_ms(quantile),
                self.decide_half.latency_ms(quantile) / self.echo_half.latency_ms(quantile)
            );
        }
        println!(
            "| CPU per call, four services / echo chain | {:.0} µs | {:.0} µs | {:.2} | |",
            self.cpu_per_decision * 1e6,
            self.cpu_per_echo * 1e6,
            self.cpu_per_decision / self.cpu_per_echo.max(f64::EPSILON)
        );
    }
}

fn slow_between(shortest_ms: u64, longest_ms: u64, then: Behaviour) -> Behaviour {
    Behaviour::SlowBetween(
        Duration::from_millis(shortest_ms),
        Duration::from_millis(longest_ms),
        Box::new(then),
    )
}

/// `cascade echo-chain` as a child process of this one.
struct EchoChain {
    addr: std::net::SocketAddr,
    child: tokio::process::Child,
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
        Ok(Self { addr, child })
    }
}
