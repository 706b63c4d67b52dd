//! The `cascade` command.

/// The allocator the services use (see services/bid-intake/src/main.rs): `cascade up`
/// runs them in this process.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod admin;
mod bench;
mod echo;
mod load;
mod log;
mod replay;
mod report;
mod target;
mod up;
mod workload;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cascade",
    version,
    about = "Cascade: the SSP decisioning cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the whole cluster in this process: the four services on loopback ports, the
    /// demo configuration in the embedded store, and a demo ad network.
    Up(up::UpArgs),
    /// Get, apply, diff and delete configuration entities as YAML (kubectl style).
    Admin(admin::AdminArgs),
    /// The network performance report (table or CSV); `ingest` records a network's own
    /// daily revenue.
    Report(report::ReportArgs),
    /// Read the decision log: `tail` (the last entries, `--follow` for new ones),
    /// `query` (by account, request id, network, time), `report` (the network performance
    /// report rebuilt from it). Entries print as JSON lines.
    Log(log::LogArgs),
    /// Decide the logged decisions again under a configuration file, with the logged
    /// network answers (drawn from each network's record where the log holds none), and
    /// print before against after per account and demand, with 90% intervals.
    Replay(replay::ReplayArgs),
    /// Load a decision API (or an echo chain) over gRPC and report throughput, latency
    /// percentiles and errors.
    Load(load::LoadArgs),
    /// The benchmark baseline: a chain of bare tonic echo servers.
    EchoChain(echo::EchoChainArgs),
    /// The cluster benchmark: Redis, the four services and the echo chain baseline,
    /// every figure a ratio to the baseline measured in the same run.
    Bench(bench::BenchArgs),
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Up(args) => {
            // One process for the four services: spans tell them apart by their
            // `rpc.service` attribute.
            match cascade_server::telemetry::init("cascade") {
                Ok(_telemetry) => up::run(args).await.map(|()| 0),
                Err(error) => Err(error.into()),
            }
        }
        Command::Admin(args) => admin::run(args).await,
        Command::Report(args) => report::run(args).await,
        Command::Log(args) => log::run(args).await.map(|()| 0),
        Command::Replay(args) => replay::run(args).await.map(|()| 0),
        Command::Load(args) => load::run(&args).await.map(|result| {
            let label = if args.echo { "echo chain" } else { "decisions" };
            match args.output {
                load::Output::Text => result.print(label),
                load::Output::Json => println!("{}", result.to_json(label)),
            }
            0
        }),
        Command::EchoChain(args) => echo::run(args).await.map(|()| 0),
        Command::Bench(args) => bench::run(args).await.map(|()| 0),
    };
    match outcome {
        Ok(code) => std::process::ExitCode::from(code),
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
