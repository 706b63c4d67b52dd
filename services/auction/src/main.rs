use clap::Parser;

/// auction: ranks every impression's candidates.
#[derive(Parser)]
struct Args {
    /// Settings file (TOML); `CASCADE__SECTION__KEY` environment variables override it.
    #[arg(long, env = "CASCADE_SETTINGS")]
    settings: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings: cascade_auction::Settings =
        cascade_server::settings::load(args.settings.as_deref())?;
    cascade_server::telemetry::init();
    let listener = cascade_server::grpc::bind(&settings.grpc).await?;
    println!("auction listening on {}", listener.local_addr()?);
    cascade_auction::serve(settings, listener, cascade_server::shutdown::signal()).await?;
    Ok(())
}
