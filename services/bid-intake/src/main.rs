use clap::Parser;

/// bid-intake: the decision API's front door.
#[derive(Parser)]
struct Args {
    /// Settings file (TOML); `CASCADE__SECTION__KEY` environment variables override it.
    #[arg(long, env = "CASCADE_SETTINGS")]
    settings: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings: cascade_bid_intake::Settings =
        cascade_server::settings::load(args.settings.as_deref())?;
    cascade_server::telemetry::init();
    let store = settings.state.open()?;
    let listener = cascade_server::grpc::bind(&settings.grpc).await?;
    println!("bid-intake listening on {}", listener.local_addr()?);
    cascade_bid_intake::serve(
        settings,
        store,
        listener,
        cascade_server::shutdown::signal(),
    )
    .await?;
    Ok(())
}
