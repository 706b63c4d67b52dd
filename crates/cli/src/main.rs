//! The `cascade` command.

mod up;

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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    cascade_server::telemetry::init();
    match cli.command {
        Command::Up(args) => up::run(args).await,
    }
}
